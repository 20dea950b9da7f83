//! Cost of the probe's BPF programs per invocation: `run_time_ns / run_cnt`
//! as `bpftool prog show --json` reports them while
//! `kernel.bpf_stats_enabled=1`.
//!
//! Other probes may run on the same machine (other tests), so the programs
//! are picked by name *and* by id: the ids whose file descriptors the probe
//! process under test holds (`/proc/<pid>/fdinfo`, `prog_id:`).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use anyhow::{bail, Context, Result};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns run-time accounting on for as long as it lives; puts the old
/// setting back on drop (only if it was off, so another user who turned it
/// on keeps it).
pub struct StatsEnabled {
    was_off: bool,
}

impl StatsEnabled {
    pub fn on() -> Result<Self> {
        let old = std::fs::read_to_string(SYSCTL).with_context(|| format!("read {SYSCTL}"))?;
        let was_off = old.trim() == "0";
        if was_off {
            std::fs::write(SYSCTL, "1").with_context(|| format!("write 1 to {SYSCTL} (needs root)"))?;
        }
        Ok(StatsEnabled { was_off })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if self.was_off {
            let _ = std::fs::write(SYSCTL, "0");
        }
    }
}

/// Cumulative figures of one program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProgStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Program ids held open by `pid`.
pub fn prog_ids_of(pid: u32) -> Result<BTreeSet<u64>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))?.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Some(id) = text.lines().find_map(|l| l.strip_prefix("prog_id:")) {
            if let Ok(id) = id.trim().parse() {
                ids.insert(id);
            }
        }
    }
    Ok(ids)
}

/// Per program name (`upstreamtop_egress`, `upstreamtop_ingress`), the
/// stats summed over the given ids (one program per attached interface
/// shares a name).
pub fn read(ids: &BTreeSet<u64>) -> Result<BTreeMap<String, ProgStats>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("run bpftool (apt-get install bpftool)")?;
    if !out.status.success() {
        bail!("bpftool prog show: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    parse(&out.stdout, ids)
}

fn parse(json: &[u8], ids: &BTreeSet<u64>) -> Result<BTreeMap<String, ProgStats>> {
    let progs: Vec<serde_json::Value> = serde_json::from_slice(json).context("bpftool JSON")?;
    let mut by_name: BTreeMap<String, ProgStats> = BTreeMap::new();
    for p in progs {
        let (Some(id), Some(name)) = (p["id"].as_u64(), p["name"].as_str()) else {
            continue;
        };
        if !ids.contains(&id) || !name.starts_with("upstreamtop_") {
            continue;
        }
        let s = by_name.entry(name.to_owned()).or_default();
        // Absent when stats are off: count as zero, the caller sees no runs.
        s.run_time_ns += p["run_time_ns"].as_u64().unwrap_or(0);
        s.run_cnt += p["run_cnt"].as_u64().unwrap_or(0);
    }
    Ok(by_name)
}

/// Wait until none of `ids` is loaded any more (detached and unpinned).
pub fn wait_unloaded(ids: &BTreeSet<u64>, timeout: std::time::Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = read(ids)?;
        if left.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("probe programs still loaded {timeout:?} after the probe stopped: {left:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `after - before` per name.
pub fn delta(before: &BTreeMap<String, ProgStats>, after: &BTreeMap<String, ProgStats>) -> BTreeMap<String, ProgStats> {
    after
        .iter()
        .map(|(name, a)| {
            let b = before.get(name).copied().unwrap_or_default();
            let d = ProgStats {
                run_time_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
                run_cnt: a.run_cnt.saturating_sub(b.run_cnt),
            };
            (name.clone(), d)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_only_the_probe_programs_by_id_and_name() {
        let json = br#"[
            {"id":10,"name":"upstreamtop_egress","run_time_ns":1000,"run_cnt":10},
            {"id":11,"name":"upstreamtop_ingress","run_time_ns":600,"run_cnt":20},
            {"id":12,"name":"upstreamtop_egress","run_time_ns":99,"run_cnt":1},
            {"id":13,"name":"other_prog","run_time_ns":5,"run_cnt":5},
            {"id":14,"name":"upstreamtop_egress"}
        ]"#;
        let ids: BTreeSet<u64> = [10, 11, 13, 14].into();
        let got = parse(json, &ids).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got["upstreamtop_egress"], ProgStats { run_time_ns: 1000, run_cnt: 10 });
        assert_eq!(got["upstreamtop_ingress"], ProgStats { run_time_ns: 600, run_cnt: 20 });
        let later = BTreeMap::from([("upstreamtop_egress".to_owned(), ProgStats { run_time_ns: 1500, run_cnt: 15 })]);
        assert_eq!(delta(&got, &later)["upstreamtop_egress"], ProgStats { run_time_ns: 500, run_cnt: 5 });
    }
}
