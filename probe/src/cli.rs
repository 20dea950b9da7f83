//! Command-line interface.

use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Reads nginx's plain-HTTP upstream traffic off the wire with tcx programs
/// and publishes per-backend counters in the upstreamtop table.
#[derive(Debug, Parser)]
#[command(name = "upstreamtop-probe", version)]
pub struct Cli {
    /// Interface to watch (repeatable). Default: every interface that is up,
    /// loopback included, and interfaces that come up later.
    #[arg(long = "iface", value_name = "IF")]
    pub ifaces: Vec<String>,

    /// Where to publish the table (directory created 0755, file 0644).
    #[arg(long, value_name = "PATH", default_value = "/run/upstreamtop/table")]
    pub table: PathBuf,

    /// Publish interval, e.g. 1s, 500ms, 2m (a bare number is seconds).
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Never track connections from or to this TCP port, e.g. nginx's own
    /// listening port on loopback (repeatable, up to 8).
    #[arg(long = "ignore-port", value_name = "P")]
    pub ignore_ports: Vec<u16>,

    /// Only track backends inside this network, e.g. 10.0.0.0/8 or
    /// fd00::/8 (repeatable, up to 8).
    #[arg(long = "only", value_name = "CIDR", value_parser = parse_cidr)]
    pub only: Vec<(Ipv6Addr, u8)>,

    /// Most HTTP backends (IP:port) active at once; a peer takes a slot
    /// with its first HTTP request (never for other TCP) and gives it back
    /// after --peer-idle, its totals kept (for up to 4 x N idle peers);
    /// requests of peers finding no free slot count in peer_table_full.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_peers: u32,

    /// An HTTP backend with no open connection whose counters have not
    /// moved for this long gives its slot back; its totals stay in the
    /// table and continue when it returns.
    #[arg(long, value_name = "DUR", default_value = "10m", value_parser = parse_duration)]
    pub peer_idle: Duration,

    /// Most routes (method + path) kept across all backends; more fold into
    /// each backend's "other" route.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_routes: u32,

    /// History samples (one per interval) kept per backend.
    #[arg(long, value_name = "N", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub history: u32,

    /// Most connections tracked at once (about 300 bytes each); when full,
    /// the least recently active one makes room and is picked up again
    /// with its next request.
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(16..=4_000_000))]
    pub max_conns: u32,

    /// Most peers whose connections carry no HTTP (TLS, databases, ...)
    /// whose connection counts are shown; kept apart from the HTTP backends,
    /// the least recently active forgotten first.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_tcp_peers: u32,

    /// Evict a tracked connection after this long without a request or
    /// response (an exchange still awaiting its response then counts as
    /// no_response).
    #[arg(long, value_name = "DUR", default_value = "5m", value_parser = parse_duration)]
    pub conn_idle: Duration,

    /// bpffs directory where maps and tcx links are pinned, so a restart
    /// or crash of the probe loses no count (programs keep counting while
    /// it is down). /sys/fs/bpf is mounted when missing and the probe may.
    /// Without a writable bpffs the probe runs unpinned (logged).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Pin nothing: programs detach and counters die with the process (a
    /// restart still continues the totals from the table file).
    #[arg(long)]
    pub no_pin: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

pub const DEFAULT_STATE_DIR: &str = "/sys/fs/bpf/upstreamtop";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the current table as JSON (what `upstreamtop_status` serves,
    /// without nginx's configuration).
    Dump {
        /// Table to read.
        #[arg(long, value_name = "PATH", default_value = "/run/upstreamtop/table")]
        table: PathBuf,
    },
    /// Detach the programs a (stopped or killed) probe left attached and
    /// remove its pins. The table file stays.
    Detach {
        /// The probe's --state-dir.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// List the pinned tcx links: link id, program id, interface,
    /// direction, and whether still attached.
    Status {
        /// The probe's --state-dir.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

/// "250ms", "2s", "1m", "1h", or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?} (try 1s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit {unit:?} in {s:?} (use ms, s, m or h)")),
    };
    if !(0.01..=86_400.0).contains(&secs) {
        return Err(format!("duration {s:?} out of range (10ms to 24h)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// "10.0.0.0/8", "fd00::/8", or a bare address (a /32 or /128); IPv4 is
/// returned v4-mapped with the prefix counted over 128 bits.
pub fn parse_cidr(s: &str) -> Result<(Ipv6Addr, u8), String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| format!("invalid address in {s:?}"))?;
    let (v6, max, offset) = match ip {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped(), 32u8, 96u8),
        IpAddr::V6(v6) => (v6, 128u8, 0u8),
    };
    let p = match prefix {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("invalid prefix length in {s:?} (0..={max})"))?,
        None => max,
    };
    Ok((v6, p + offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn cidrs() {
        let (a, p) = parse_cidr("10.200.0.0/16").unwrap();
        assert_eq!((a.to_ipv4_mapped().unwrap().to_string(), p), ("10.200.0.0".into(), 112));
        assert_eq!(parse_cidr("fd00:200::/64").unwrap().1, 64);
        assert_eq!(parse_cidr("127.0.0.1").unwrap().1, 128);
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope/8").is_err());
    }
}
