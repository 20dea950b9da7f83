//! What a process costs, from /proc: CPU time (utime + stime over all its
//! threads) and memory (VmRSS, VmHWM, and VmRSS split by kind).

use anyhow::{bail, Context, Result};

/// utime + stime of the whole process, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("read /proc/{pid}/stat"))?;
    seconds(parse_stat_ticks(&stat)?)
}

/// Clock ticks (USER_HZ) to seconds.
fn seconds(ticks: u64) -> Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(ticks as f64 / hz as f64)
}

/// CPU seconds all CPUs spent busy since boot (the `cpu` line of
/// /proc/stat minus idle and iowait): what the whole machine worked.
pub fn busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    seconds(parse_busy_ticks(&stat)?)
}

/// user nice system idle iowait irq softirq steal …: all but idle (4th)
/// and iowait (5th), and not steal (8th: time the host took, not spent
/// here).
fn parse_busy_ticks(stat: &str) -> Result<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
    let v: Vec<u64> =
        line.split_whitespace().skip(1).map(|f| f.parse().context("bad tick count")).collect::<Result<_>>()?;
    anyhow::ensure!(v.len() >= 8, "short cpu line in /proc/stat");
    Ok(v[0] + v[1] + v[2] + v[5] + v[6])
}

/// utime (field 14) + stime (field 15). The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_ticks(stat: &str) -> Result<u64> {
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("no ')' in /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    let get = |i: usize| -> Result<u64> {
        fields.get(i).context("short /proc/<pid>/stat")?.parse::<u64>().context("bad tick count")
    };
    Ok(get(11)? + get(12)?)
}

/// Resident memory now and its high-water mark, in MiB, and what the
/// resident pages are (VmRSS = anon + file + shmem).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Memory {
    pub rss_mib: f64,
    pub hwm_mib: f64,
    /// `RssAnon`: heap, stacks, private buffers — what a leak grows.
    pub anon_mib: f64,
    /// `RssFile`: pages of mapped files (the binary, the module, libc) as
    /// they are first executed or read; bounded by the files' sizes.
    pub file_mib: f64,
    /// `RssShmem`: shared anonymous/tmpfs mappings (nginx's shared zones).
    pub shmem_mib: f64,
}

pub fn memory(pid: u32) -> Result<Memory> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("read /proc/{pid}/status"))?;
    parse_status(&status)
}

fn parse_status(status: &str) -> Result<Memory> {
    let kib = |key: &str| -> Result<f64> {
        let line = status.lines().find(|l| l.starts_with(key)).with_context(|| format!("no {key} in status"))?;
        let v: f64 = line[key.len()..]
            .split_whitespace()
            .next()
            .context("empty value")?
            .parse()
            .with_context(|| format!("bad {key}"))?;
        Ok(v / 1024.0)
    };
    Ok(Memory {
        rss_mib: kib("VmRSS:")?,
        hwm_mib: kib("VmHWM:")?,
        // Split since Linux 4.5; older kernels fail here with the key named.
        anon_mib: kib("RssAnon:")?,
        file_mib: kib("RssFile:")?,
        shmem_mib: kib("RssShmem:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_ticks_leave_out_idle_iowait_and_steal() {
        let stat = "cpu  100 2 30 5000 7 1 20 9 0 0\ncpu0 50 1 15 2500 3 0 10 4 0 0\n";
        assert_eq!(parse_busy_ticks(stat).unwrap(), 100 + 2 + 30 + 1 + 20);
        assert!(parse_busy_ticks("cpu0 1 2 3\n").is_err());
    }

    #[test]
    fn stat_ticks_skip_a_command_with_spaces_and_parens() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 3 0 1000 1 1";
        assert_eq!(parse_stat_ticks(stat).unwrap(), 280);
    }

    #[test]
    fn status_gives_rss_hwm_and_kinds() {
        let status = "Name:\tx\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n\
                      RssAnon:\t    6144 kB\nRssFile:\t    3072 kB\nRssShmem:\t    1024 kB\n";
        let m = parse_status(status).unwrap();
        assert_eq!(m, Memory { rss_mib: 10.0, hwm_mib: 20.0, anon_mib: 6.0, file_mib: 3.0, shmem_mib: 1.0 });
        let e = parse_status("VmHWM:\t1 kB\nVmRSS:\t1 kB\n").unwrap_err();
        assert!(e.to_string().contains("RssAnon"), "{e}");
    }

    #[test]
    fn this_process_has_cpu_and_memory() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        let m = memory(pid).unwrap();
        assert!(m.rss_mib > 0.0 && m.anon_mib > 0.0 && m.file_mib > 0.0);
        // The kinds add up to VmRSS (the two reads are one /proc read).
        assert!((m.anon_mib + m.file_mib + m.shmem_mib - m.rss_mib).abs() < 1e-9, "{m:?}");
    }
}
