//! Command-line flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// A live `top` for nginx upstreams: which backends nginx proxies to, how
/// many requests per second each gets, on which routes, with which status
/// codes and how fast they answer.
#[derive(Debug, Clone, Parser)]
#[command(name = "upstreamtop", version, about)]
pub struct Args {
    /// JSON endpoint of the nginx module (`location /upstreamtop { upstreamtop_status; }`).
    /// Repeat for several nginx hosts. Plain http only. Default:
    /// http://127.0.0.1/upstreamtop (unless --table is given).
    #[arg(long = "url", value_name = "URL", conflicts_with = "table")]
    pub urls: Vec<String>,

    /// Read the probe's table file directly instead of asking nginx (for a
    /// host without the module; upstream group names are then unknown).
    #[arg(long, value_name = "PATH")]
    pub table: Option<PathBuf>,

    /// Run for this many seconds, then exit (default: until `q`).
    #[arg(long, value_name = "N")]
    pub secs: Option<u64>,

    /// Most backends listed on the main screen.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub backends: usize,

    /// Top routes listed under each backend (Enter on a backend shows all).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub routes: usize,

    /// How often to poll: seconds (`2`, `0.5`) or with a unit (`500ms`, `2s`).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,

    /// Initial ranking of backends (`s` cycles it at run time).
    #[arg(long, value_enum, default_value_t = SortKey::Rps)]
    pub sort: SortKey,

    /// Only this upstream group.
    #[arg(long, value_name = "NAME")]
    pub upstream: Option<String>,

    /// Print one plain-text snapshot and exit.
    #[arg(long)]
    pub once: bool,
}

/// How backends are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    /// Requests per second, busiest first.
    Rps,
    /// Latency over the last interval (p99, then average), slowest first.
    Latency,
    /// 5xx per second (then failed exchanges), worst first.
    Errors,
    /// Upstream group, then peer address.
    Name,
}

impl SortKey {
    /// The next key for the `s` key.
    pub fn next(self) -> SortKey {
        match self {
            SortKey::Rps => SortKey::Latency,
            SortKey::Latency => SortKey::Errors,
            SortKey::Errors => SortKey::Name,
            SortKey::Name => SortKey::Rps,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortKey::Rps => "req/s",
            SortKey::Latency => "latency",
            SortKey::Errors => "errors",
            SortKey::Name => "name",
        }
    }
}

/// The endpoint asked when neither `--url` nor `--table` is given.
pub const DEFAULT_URL: &str = "http://127.0.0.1/upstreamtop";

/// Parses `--interval`: a plain number is seconds; `ms`/`s`/`m` suffixes allowed.
/// Bounded to 50ms..1h so a typo can neither hammer nginx nor freeze the screen.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let value: f64 =
        num.trim().parse().map_err(|_| format!("`{text}` is not a duration (try `1`, `0.5`, `500ms`, `2s`)"))?;
    let secs = value * scale;
    if !secs.is_finite() || !(0.05..=3600.0).contains(&secs) {
        return Err(format!("`{text}`: interval must be between 50ms and 1h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_interval("0.25").unwrap(), Duration::from_millis(250));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("fast").is_err());
        assert!(parse_interval("NaN").is_err());
    }

    #[test]
    fn flags_parse() {
        Args::command().debug_assert();
        let a = Args::try_parse_from([
            "upstreamtop",
            "--url",
            "http://a/upstreamtop",
            "--url",
            "http://b:8080/x",
            "--sort",
            "errors",
            "--once",
            "--backends",
            "3",
        ])
        .unwrap();
        assert_eq!(a.urls.len(), 2);
        assert_eq!(a.sort, SortKey::Errors);
        assert!(a.once);
        assert_eq!(a.backends, 3);
        assert!(Args::try_parse_from(["upstreamtop", "--url", "http://a/", "--table", "/t"]).is_err());
    }
}
