//! nginx's own account of each upstream attempt, the ground truth the
//! end-to-end tests compare the probe with: an access log of
//! `$upstream_addr|$upstream_status|$upstream_bytes_sent|$upstream_bytes_received`,
//! summed per upstream address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// `log_format upstreams`: one field per upstream variable, `|`-separated.
pub const LOG_FORMAT: &str =
    "log_format upstreams '$upstream_addr|$upstream_status|$upstream_bytes_sent|$upstream_bytes_received';";

/// What nginx's access log says about one upstream address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSide {
    pub attempts: u64,
    /// `$upstream_status` per attempt (0 where nginx logged none).
    pub statuses: BTreeMap<u16, u64>,
    /// Attempts nginx itself failed (502/504: no test backend sends those).
    pub failed: u64,
    pub sent: u64,
    pub received: u64,
}

/// Sum the log per upstream address. Each field is a list when nginx tried
/// several servers (`a, b`), or went through several groups (`a : b`).
pub fn parse(text: &str) -> Result<BTreeMap<SocketAddr, LogSide>> {
    let list = |field: &str| -> Vec<String> {
        field.split(',').flat_map(|s| s.split(" : ")).map(|s| s.trim().to_owned()).collect()
    };
    let mut out: BTreeMap<SocketAddr, LogSide> = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split('|').collect();
        let [addrs, statuses, sent, received] = fields[..] else {
            bail!("log line with {} fields: {line:?}", fields.len());
        };
        if addrs == "-" {
            continue; // answered by nginx itself (/health, /upstreamtop)
        }
        let (addrs, statuses, sent, received) = (list(addrs), list(statuses), list(sent), list(received));
        if [statuses.len(), sent.len(), received.len()] != [addrs.len(); 3] {
            bail!("upstream lists of different lengths: {line:?}");
        }
        for (i, addr) in addrs.iter().enumerate() {
            let addr: SocketAddr = addr.parse().with_context(|| format!("upstream address in {line:?}"))?;
            let side = out.entry(addr).or_default();
            side.attempts += 1;
            let status: u16 = statuses[i].parse().unwrap_or(0);
            *side.statuses.entry(status).or_insert(0) += 1;
            if matches!(status, 0 | 502 | 504) {
                side.failed += 1;
            }
            side.sent += sent[i].parse::<u64>().unwrap_or(0);
            side.received += received[i].parse::<u64>().unwrap_or(0);
        }
    }
    Ok(out)
}

/// The access log once it holds `lines` proxied lines: a worker logs a
/// request just after its last byte went out, so the client may be a hair
/// ahead of the log.
pub fn read(path: &Path, lines: usize) -> Result<BTreeMap<SocketAddr, LogSide>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let proxied = text.lines().filter(|l| !l.starts_with("-|")).count();
        if proxied >= lines || Instant::now() > deadline {
            ensure!(proxied == lines, "proxied lines in {}: {proxied}, expected {lines}", path.display());
            return parse(&text);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
