//! The benchmark suite behind `./build.sh bench` (the `bench` binary): proxy
//! overhead of the probe, BPF cost per program run (optionally beside a
//! baseline probe binary's), exactness at peak load, endpoint cost, the
//! probe's own CPU and memory, a scale case, and exactness over an impaired
//! link.
//!
//! Every comparison is measured side by side in one run: interleaved pairs
//! (A B, B A, …), reported as the median of the per-pair ratios, so a drift
//! of the (shared, noisy) machine hits both sides alike.

pub mod alternate;
pub mod baseline;
pub mod bpf_stats;
pub mod endpoint;
pub mod exactness;
pub mod figures;
pub mod impaired;
pub mod overhead;
pub mod procfs;
pub mod scale;
pub mod soak;
pub mod synthetic;
pub mod wrk;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use self::wrk::WrkSpec;
use crate::backend::{Backend, Profile};
use crate::nginx::{Nginx, NginxConf};

/// Part 1's setup, shared by parts 1 and 4: nginx (1 worker, the vendored
/// build with the module, reading `table`) on `port`, proxying `/p/app/` to
/// two keepalive loopback backends, and the wrk run against it (realistic
/// headers).
pub(crate) fn proxy_setup(s: &Settings, port: u16, table: &Path) -> Result<(Backend, Backend, Nginx, WrkSpec)> {
    let b1 = Backend::loopback(Profile::fast()).context("backend 1")?;
    let b2 = Backend::loopback(Profile::fast()).context("backend 2")?;
    let conf = NginxConf::vendored_with_module()?
        .port(port)
        .workers(1)
        .table(table)
        .extra_main(s.nginx_main())
        .upstream_servers("app", &[b1.addr(), b2.addr()]);
    let nginx = Nginx::start(conf).context("start nginx")?;
    let mut spec = WrkSpec::new(&nginx.url("/p/app/api/orders"), s.run);
    spec.connections = s.connections;
    spec.cpus = s.wrk_cpus();
    spec.headers = realistic_headers();
    Ok((b1, b2, nginx, spec))
}

/// Set by SIGINT/SIGTERM (see [`catch_interrupts`]).
static STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

/// Turn Ctrl-C / SIGTERM into a flag the parts check between runs, so the
/// fixtures' Drop still stops nginx, deletes namespaces and detaches the
/// probe's pinned programs instead of leaving them on `lo`.
pub fn catch_interrupts() -> Result<()> {
    let flag = STOP.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(flag)).context("install signal handler")?;
    }
    Ok(())
}

/// An error once an interrupt arrived.
pub fn check_interrupt() -> Result<()> {
    if STOP.get().is_some_and(|f| f.load(Ordering::Relaxed)) {
        bail!("interrupted");
    }
    Ok(())
}

/// What part 1's "attached" blocks attach. Anything but the probe is a
/// check of the method, reported without a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attach {
    /// upstreamtop-probe, as users run it.
    Probe,
    /// A two-instruction tcx program on each of lo's hooks: what the hooks
    /// themselves cost, whatever program runs in them.
    Empty,
    /// Nothing: the probe is started and stopped before each "attached"
    /// block (untimed), as in the real case, but nothing is attached
    /// during it. An A/A check: the ratio should come out at 1.
    Nothing,
}

impl Attach {
    /// How the blocks were switched, for the figure's note.
    pub fn switch(self) -> &'static str {
        match self {
            Attach::Probe => "the probe started and stopped between blocks, not timed",
            Attach::Empty => {
                "CHECK: empty tcx programs on lo's two hooks attached and detached between blocks, no probe"
            }
            Attach::Nothing => {
                "A/A CHECK: the probe started and stopped before each \"attached\" block, nothing attached during it"
            }
        }
    }
}

/// How long and how big each part runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    /// Pin nginx's worker to CPU 0 and wrk to CPU 1.
    pub pin: bool,
    /// Interleaved attached/detached pairs (part 1) and not-polled/polled
    /// runs of the worst case (part 4).
    pub pairs: usize,
    /// Attached/detached block pairs within one wrk run (part 1's target
    /// figure), and how long a block lasts.
    pub overhead_blocks: usize,
    pub overhead_block: Duration,
    /// What those "attached" blocks attach.
    pub attach: Attach,
    /// Measure part 1 (its blocks and pairs); off when only parts 2 and 5
    /// of that setup are wanted.
    pub part1: bool,
    /// Polled/not-polled block pairs within one wrk run (part 4's target
    /// figure), and how long a block lasts.
    pub poll_blocks: usize,
    pub poll_block: Duration,
    /// One wrk run of a pair.
    pub run: Duration,
    /// Runs with bpf_stats on and the empty programs attached (part 2),
    /// after part 1's pairs.
    pub instrumented_runs: usize,
    /// Another probe binary whose BPF time part 2 measures beside this
    /// build's instead of those runs: pairs of blocks in one wrk run, and
    /// how long a block lasts.
    pub baseline_probe: Option<PathBuf>,
    pub baseline_blocks: usize,
    pub baseline_block: Duration,
    /// One wrk run of the exactness part.
    pub exact_run: Duration,
    /// In-process renders timed (part 4).
    pub renders: usize,
    /// wrk connections.
    pub connections: u32,
    pub scale_peers: usize,
    pub scale_routes: usize,
    /// Requests per route in the scale case.
    pub scale_repeat: u32,
    /// The probe's `--max-routes` in the scale case (below the route count:
    /// the overflow path is part of what is measured).
    pub scale_max_routes: usize,
    /// Part 7: the impaired link's seed, requests through nginx (a multiple
    /// of 4) and requests of each direct client.
    pub impair_seed: u64,
    pub impair_requests: u64,
    pub impair_direct: usize,
}

impl Settings {
    pub fn full(pin: bool) -> Self {
        Settings {
            quick: false,
            pin,
            pairs: 5,
            run: Duration::from_secs(10),
            instrumented_runs: 3,
            baseline_probe: None,
            baseline_blocks: 12,
            baseline_block: Duration::from_secs(5),
            overhead_blocks: 12,
            overhead_block: Duration::from_secs(4),
            attach: Attach::Probe,
            part1: true,
            poll_blocks: 20,
            poll_block: Duration::from_secs(2),
            exact_run: Duration::from_secs(5),
            renders: 200,
            connections: 64,
            scale_peers: 1000,
            scale_routes: 10_000,
            scale_repeat: 2,
            scale_max_routes: 4096,
            impair_seed: impaired::random_seed(),
            impair_requests: 12_000,
            impair_direct: 1_000,
        }
    }

    /// A smoke version that finishes in well under a minute.
    pub fn quick(pin: bool) -> Self {
        Settings {
            quick: true,
            pairs: 1,
            run: Duration::from_secs(1),
            instrumented_runs: 1,
            baseline_blocks: 1,
            baseline_block: Duration::from_secs(1),
            overhead_blocks: 1,
            overhead_block: Duration::from_secs(1),
            poll_blocks: 2,
            poll_block: Duration::from_secs(1),
            exact_run: Duration::from_secs(1),
            renders: 5,
            scale_peers: 100,
            scale_routes: 1000,
            scale_repeat: 1,
            scale_max_routes: 512,
            impair_requests: 200,
            impair_direct: 20,
            ..Self::full(pin)
        }
    }

    /// `taskset` CPU list for wrk, when pinning.
    pub fn wrk_cpus(&self) -> Option<String> {
        self.pin.then(|| "1".to_owned())
    }

    /// Main-level nginx directives for pinning.
    pub fn nginx_main(&self) -> &'static str {
        if self.pin {
            "worker_cpu_affinity 01;"
        } else {
            ""
        }
    }
}

/// Headers a browser sends, as `load::Headers::Realistic` sends them, plus a
/// request id: request heads of ~1 KB for wrk.
pub fn realistic_headers() -> Vec<(String, String)> {
    let mut headers = crate::load::realistic_headers();
    headers.push(("X-Request-Id".to_string(), "5f0c9a1e-7d2b-4c1a-9e4f-0b8a6d3c2e1f".to_string()));
    headers
}

/// Median (mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `on[i] / off[i]`, pair by pair.
pub fn pair_ratios(on: &[f64], off: &[f64]) -> Vec<f64> {
    on.iter().zip(off).map(|(a, b)| a / b).collect()
}

/// A distribution-free 95% confidence interval for the median of what
/// `values` were drawn from: the k-th smallest and k-th largest value, k
/// the largest rank with P(Binomial(n, ½) < k) ≤ 2.5% (the sign test's
/// interval). Needs no assumption about the shape of the host's noise,
/// only independent draws. `None` below 6 values, where even the smallest
/// and largest do not cover 95%.
pub fn median_interval95(values: &[f64]) -> Option<(f64, f64)> {
    let n = values.len();
    // ln P(B = i) built up from P(B = 0) = 2^-n, in logs so that a long
    // run cannot underflow.
    let mut ln_pmf = -(n as f64) * std::f64::consts::LN_2;
    let mut below = 0.0; // P(B < k) for the k being tried
    let mut k = 0;
    for i in 0..n {
        let next = below + ln_pmf.exp();
        if next > 0.025 {
            break;
        }
        below = next;
        k = i + 1;
        ln_pmf += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    if k == 0 {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Some((v[k - 1], v[n - k]))
}

/// Nearest-rank percentile (`q` in 0..=1); NaN when empty.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (q * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// Wall-clock now as Unix ns.
pub fn now_unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_interval_is_the_sign_test_one() {
        // n = 12: P(B ≤ 2) = 79/4096 = 1.9%, P(B ≤ 3) = 7.3%: 3rd and 10th
        // values (96.1% coverage). n = 20: 6th and 15th (95.9%).
        let twelve: Vec<f64> = (1..=12).rev().map(f64::from).collect();
        assert_eq!(median_interval95(&twelve), Some((3.0, 10.0)));
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(median_interval95(&twenty), Some((6.0, 15.0)));
        // n = 6: only the extremes (P(B = 0) = 1.6%); n = 5: 3.1%, none.
        let six = [0.9, 1.0, 1.1, 0.95, 1.05, 0.97];
        assert_eq!(median_interval95(&six), Some((0.9, 1.1)));
        assert_eq!(median_interval95(&six[..5]), None);
        assert_eq!(median_interval95(&[]), None);
        // Long runs do not underflow: n = 2000 gives ranks 956 and 1045.
        let long: Vec<f64> = (1..=2000).map(f64::from).collect();
        assert_eq!(median_interval95(&long), Some((956.0, 1045.0)));
    }

    #[test]
    fn median_and_percentile() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 100.0);
        assert_eq!(percentile(&v, 0.99), 198.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn realistic_heads_are_about_a_kilobyte() {
        let bytes: usize = realistic_headers().iter().map(|(n, v)| n.len() + v.len() + 4).sum();
        assert!((600..1500).contains(&bytes), "{bytes}");
    }
}
