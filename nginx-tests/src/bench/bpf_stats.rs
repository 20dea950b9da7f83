//! Cost of the probe's BPF programs per invocation: `run_time_ns / run_cnt`
//! as `bpftool prog show --json` reports them while
//! `kernel.bpf_stats_enabled=1`.
//!
//! Other probes may run on the same machine (other tests), so the programs
//! are picked by name *and* by id: the ids whose file descriptors the probe
//! process under test holds (`/proc/<pid>/fdinfo`, `prog_id:`).
//!
//! bpf_stats' own bookkeeping (two clock reads per run) is part of every
//! figure it gives, and on a VM it is a large part. [`EmptyTcx`] measures
//! it: a program that only returns TCX_NEXT, attached to the same hook
//! next to the probe's, sees exactly the same packets.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
        if !ids.contains(&id) || !(name.starts_with("upstreamtop_") || name.starts_with(EMPTY_PREFIX)) {
            continue;
        }
        let s = by_name.entry(name.to_owned()).or_default();
        // Absent when stats are off: count as zero, the caller sees no runs.
        s.run_time_ns += p["run_time_ns"].as_u64().unwrap_or(0);
        s.run_cnt += p["run_cnt"].as_u64().unwrap_or(0);
    }
    Ok(by_name)
}

/// Names of the empty programs: `empty_egress`, `empty_ingress`.
pub const EMPTY_PREFIX: &str = "empty_";

// Kernel ABI numbers (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// Room for `union bpf_attr` as these commands use it; the kernel wants
/// every byte past the fields it knows to be zero.
const ATTR_LEN: usize = 128;

/// A two-instruction tcx program (`r0 = TCX_NEXT; exit`) attached to one
/// hook of one interface, after the programs already there. Detached when
/// dropped (its link is not pinned).
pub struct EmptyTcx {
    _prog: OwnedFd,
    _link: OwnedFd,
    /// Program id, for [`read`].
    pub id: u64,
}

impl EmptyTcx {
    pub fn attach(ifindex: u32, egress: bool) -> Result<Self> {
        // struct bpf_insn: code, dst/src registers, off, imm.
        let mut insns = [0u8; 16];
        insns[0] = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K, dst r0
        insns[4..8].copy_from_slice(&(-1i32).to_le_bytes()); // TCX_NEXT
        insns[8] = 0x95; // BPF_JMP | BPF_EXIT
        let license = c"GPL";
        let name: &[u8] = if egress { b"empty_egress" } else { b"empty_ingress" };
        let mut attr = [0u8; ATTR_LEN];
        attr[0..4].copy_from_slice(&BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
        attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
        attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        attr[48..48 + name.len()].copy_from_slice(name);
        let prog = bpf(BPF_PROG_LOAD, &attr).context("loading an empty tcx program (BPF_PROG_LOAD)")?;

        let mut attr = [0u8; ATTR_LEN];
        attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        let hook = if egress { BPF_TCX_EGRESS } else { BPF_TCX_INGRESS };
        attr[8..12].copy_from_slice(&hook.to_ne_bytes());
        // flags 0, no relative program: appended after the probe's.
        let link = bpf(BPF_LINK_CREATE, &attr)
            .with_context(|| format!("attaching an empty tcx program to ifindex {ifindex} (BPF_LINK_CREATE)"))?;
        let id = prog_ids_of_fd(&prog)?;
        Ok(EmptyTcx { _prog: prog, _link: link, id })
    }
}

/// One bpf(2) command that returns a new file descriptor.
fn bpf(cmd: libc::c_long, attr: &[u8; ATTR_LEN]) -> Result<OwnedFd> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` image of ATTR_LEN
    // bytes for `cmd`; the pointers it holds (instructions, license) point
    // at buffers that outlive this call; the kernel only reads it.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), ATTR_LEN as libc::c_uint) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("bpf(2) (needs root)");
    }
    // SAFETY: on success these commands return a new file descriptor that
    // nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The id of the program behind `fd` (its fdinfo's `prog_id:`).
fn prog_ids_of_fd(fd: &OwnedFd) -> Result<u64> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("prog_id:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no prog_id in {path}"))
}

/// The index of a network interface.
pub fn ifindex(name: &str) -> Result<u32> {
    let path = format!("/sys/class/net/{name}/ifindex");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    text.trim().parse().with_context(|| format!("parse {path}"))
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
