//! Part 4: what the endpoint costs. In-process: read a table of 1,000 peers
//! × 16 routes, build the report and render JSON, timed over many renders.
//! In nginx: throughput under wrk while a client polls `/upstreamtop` ten
//! times a second, interleaved with runs without polling — once with the
//! real probe's table (part 1's setup: the target), once with the synthetic
//! 1,000-peer table republished every second, so each poll gets the big
//! answer (the worst case, reported beside it).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use upstreamtop_report::{build_report, render_json, NginxConfig, Query};
use upstreamtop_table::{Capacities, TableReader, TableWriter};

use super::figures::{Figure, Target};
use super::wrk::{self, WrkSpec};
use super::{median, now_unix_ns, percentile, proxy_setup, synthetic, Settings};
use crate::nginx::{free_port, Nginx};
use crate::probe::Probe;

pub const PEERS: usize = 1000;
pub const ROUTES_PER_PEER: usize = 16;
const POLL_EVERY: Duration = Duration::from_millis(100);

pub fn run(s: &Settings) -> Vec<Figure> {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return vec![fail_render(&format!("temp dir: {e}"))],
    };
    let table = dir.path().join("table");
    let mut out = match render_times(&table, s.renders) {
        Ok(f) => f,
        Err(e) => vec![fail_render(&format!("{e:#}"))],
    };
    match polling_probe(s) {
        Ok(f) => out.push(f),
        Err(e) => out.push(Figure::failed(
            4,
            "endpoint.poll_ratio",
            "proxy throughput polled 10/s / not polled (probe's table)",
            "",
            Target::AtLeast(0.99),
            &format!("{e:#}"),
        )),
    }
    match polling_synthetic(s, &table) {
        Ok(f) => out.extend(f),
        Err(e) => out.push(Figure::failed(
            4,
            "endpoint.poll_ratio_1000_peers",
            "proxy throughput polled 10/s / not, 1,000-peer table",
            "",
            Target::None,
            &format!("{e:#}"),
        )),
    }
    out
}

fn fail_render(why: &str) -> Figure {
    Figure::failed(4, "endpoint.render_p99_ms", "render p99 (1,000 peers × 16 routes)", "ms", Target::AtMost(5.0), why)
}

fn caps() -> Capacities {
    Capacities {
        max_peers: PEERS as u32 + 24,
        max_routes: (PEERS * ROUTES_PER_PEER) as u32 + 1024,
        max_recent: synthetic::RECENT as u32,
        history_len: synthetic::HISTORY,
    }
}

/// `?routes=16`: every route of each peer rendered (the default is the
/// top 10).
fn all_routes() -> Query {
    Query { routes: ROUTES_PER_PEER, ..Query::default() }
}

fn render_times(table: &Path, renders: usize) -> Result<Vec<Figure>> {
    let mut writer = TableWriter::create(table, caps()).context("create synthetic table")?;
    let snap = synthetic::snapshot(PEERS, ROUTES_PER_PEER, now_unix_ns(), 1);
    let report = writer.publish(&snap).context("publish synthetic table")?;
    anyhow::ensure!(report.peers_truncated + report.routes_truncated == 0, "synthetic table truncated: {report:?}");
    let conf = NginxConfig { nginx_version: "bench".into(), ..Default::default() };
    let mut reader = TableReader::new(table);
    let mut timed = |query: &Query| -> Result<(Vec<f64>, usize)> {
        let (mut times, mut bytes) = (Vec::with_capacity(renders), 0);
        for _ in 0..renders {
            let t = Instant::now();
            // snapshot(), not latest(): every render pays the full read and
            // decode, as after each publish.
            let snap = reader.snapshot().map_err(|e| anyhow::anyhow!("{e}"))?;
            let report = build_report(&snap, &conf, query, now_unix_ns());
            let json = render_json(&report);
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            bytes = json.len();
            std::hint::black_box(json);
        }
        Ok((times, bytes))
    };
    let (times, bytes) = timed(&Query::default())?;
    let (times16, bytes16) = timed(&all_routes())?;
    let what = "TableReader::snapshot + build_report + render_json";

    // What the module itself does per publish (reads the table in place and
    // renders straight from that view; repeated requests within a publish
    // get a cached body): the report crate's own timing of that path.
    let module_table = table.with_extension("module");
    let cost = upstreamtop_report::bench::endpoint_cost(&module_table, PEERS as u32, ROUTES_PER_PEER as u32, renders)
        .context("report::bench::endpoint_cost")?;
    let _ = std::fs::remove_file(&module_table);
    let (fresh50, fresh99) = cost.fresh_p50_p99();
    let (_, cached99) = cost.cached_p50_p99();
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(vec![
        Figure::new(4, "endpoint.render_p50_ms", "render p50, module path (1,000 peers × 16 routes)", ms(fresh50), "ms", Target::None)
            .note(format!(
                "{renders} fresh publishes: table view read + render_view_json, ?routes=16, {} KiB JSON",
                cost.body_bytes / 1024
            )),
        Figure::new(4, "endpoint.render_p99_ms", "render p99, module path (1,000 peers × 16 routes)", ms(fresh99), "ms", Target::AtMost(5.0)),
        Figure::new(4, "endpoint.cached_p99_ms", "answer p99 within a publish (module's cached body)", ms(cached99), "ms", Target::None),
        Figure::new(4, "endpoint.snapshot_render_p50_ms", "render p50, snapshot path (1,000 × 16)", percentile(&times, 0.5), "ms", Target::None)
            .note(format!("{renders} renders: {what}; default query (top 10 routes), {} KiB JSON", bytes / 1024)),
        Figure::new(4, "endpoint.snapshot_render_p99_ms", "render p99, snapshot path (1,000 × 16)", percentile(&times, 0.99), "ms", Target::AtMost(5.0)),
        Figure::new(4, "endpoint.snapshot_render16_p99_ms", "render p99, snapshot path, ?routes=16", percentile(&times16, 0.99), "ms", Target::None)
            .note(format!("{} KiB JSON", bytes16 / 1024)),
    ])
}

/// What interleaved polled / not-polled wrk runs measured.
#[derive(Default)]
struct PollRuns {
    /// req/s of the runs with the poller on, and without, pair by pair.
    with: Vec<f64>,
    without: Vec<f64>,
    ok: u64,
    bad: u64,
    /// Duration of every poll, ms.
    poll_ms: Vec<f64>,
    /// Why the first few failed polls failed.
    failures: Vec<String>,
}

impl PollRuns {
    fn ratio(&self) -> f64 {
        median(&self.with.iter().zip(&self.without).map(|(w, o)| w / o).collect::<Vec<_>>())
    }

    fn note(&self, pairs: usize, body: &str) -> String {
        format!(
            "median of {pairs} pairs; {:.0} vs {:.0} req/s; {} polls answered 200, {} not{}; poll p50 {:.1} ms; {body}",
            median(&self.with),
            median(&self.without),
            self.ok,
            self.bad,
            if self.failures.is_empty() { String::new() } else { format!(" ({})", self.failures.join("; ")) },
            median(&self.poll_ms)
        )
    }
}

/// `s.pairs` interleaved pairs of wrk runs (A B, B A, …) against `spec`,
/// one of each pair with a client GETting `/upstreamtop` every
/// [`POLL_EVERY`] (the default query: what the dashboard asks for).
fn poll_pairs(s: &Settings, nginx: &Nginx, spec: &WrkSpec) -> Result<PollRuns> {
    let mut runs = PollRuns::default();
    wrk::run(&WrkSpec { duration: Duration::from_secs(1), ..spec.clone() }).context("warm-up wrk")?;
    for pair in 0..s.pairs {
        let order = if pair % 2 == 0 { [true, false] } else { [false, true] };
        for polled in order {
            super::check_interrupt()?;
            if !polled {
                runs.without.push(wrk::run(spec)?.requests_per_sec);
                continue;
            }
            let done = AtomicBool::new(false);
            let (r, ok, bad, times, failures) = std::thread::scope(|inner| {
                let poller = inner.spawn(|| {
                    let (mut ok, mut bad, mut times, mut failures) = (0u64, 0u64, Vec::new(), Vec::new());
                    let mut client = nginx.client();
                    let mut due = Instant::now();
                    while !done.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let failure = match client.get("/upstreamtop") {
                            Ok(r) if r.status == 200 => None,
                            Ok(r) => Some(format!("{} {}", r.status, String::from_utf8_lossy(&r.body[..r.body.len().min(160)]))),
                            Err(e) => Some(format!("{e:#}")),
                        };
                        match failure {
                            None => ok += 1,
                            Some(why) => {
                                bad += 1;
                                if failures.len() < 3 {
                                    failures.push(why);
                                }
                            }
                        }
                        times.push(t.elapsed().as_secs_f64() * 1000.0);
                        due += POLL_EVERY;
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    (ok, bad, times, failures)
                });
                let r = wrk::run(spec);
                done.store(true, Ordering::Relaxed);
                let (ok, bad, times, failures) =
                    poller.join().unwrap_or_else(|_| (0, 1, Vec::new(), vec!["poller panicked".into()]));
                (r, ok, bad, times, failures)
            });
            runs.with.push(r?.requests_per_sec);
            runs.ok += ok;
            runs.bad += bad;
            runs.poll_ms.extend(times);
            runs.failures.extend(failures.into_iter().take(3usize.saturating_sub(runs.failures.len())));
        }
    }
    Ok(runs)
}

/// The case the target is for: part 1's setup with the real probe
/// attached (its table: the two backends, refreshed every second), polled
/// 10×/s or not. The probe runs through both sides of every pair, so the
/// ratio is the polling's cost alone.
fn polling_probe(s: &Settings) -> Result<Figure> {
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let probe = Probe::start(&["--iface", "lo", "--ignore-port", &port.to_string(), "--interval", "1s"])
        .context("start probe")?;
    let (_b1, _b2, nginx, spec) = proxy_setup(s, port, probe.table_path())?;
    let runs = poll_pairs(s, &nginx, &spec)?;
    let body = match nginx.client().get("/upstreamtop") {
        Ok(r) => format!("{} B JSON", r.body.len()),
        Err(e) => format!("last GET failed: {e:#}"),
    };
    drop(nginx);
    drop(probe);
    Ok(Figure::new(4, "endpoint.poll_ratio", "proxy throughput polled 10/s / not polled (probe's table)", runs.ratio(), "", Target::AtLeast(0.99))
        .note(runs.note(s.pairs, &format!("probe attached throughout; {body}"))))
}

/// The worst case beside it: the synthetic 1,000-peer table (republished
/// every second like a live probe), so every poll gets a body of megabytes
/// and every publish a fresh render.
fn polling_synthetic(s: &Settings, table: &Path) -> Result<Vec<Figure>> {
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let (_b1, _b2, nginx, spec) = proxy_setup(s, port, table)?;
    let stop = AtomicBool::new(false);
    let runs = std::thread::scope(|scope| -> Result<PollRuns> {
        // The "probe": republish every second with a fresh timestamp, so
        // the module re-reads and the answer is not stale.
        let republisher = scope.spawn(|| -> Result<()> {
            let mut writer = TableWriter::create(table, caps()).context("create synthetic table")?;
            let mut seq = 1;
            while !stop.load(Ordering::Relaxed) {
                writer.publish(&synthetic::snapshot(PEERS, ROUTES_PER_PEER, now_unix_ns(), seq))?;
                seq += 1;
                let next = Instant::now() + Duration::from_secs(1);
                while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Ok(())
        });
        let result = poll_pairs(s, &nginx, &spec);
        stop.store(true, Ordering::Relaxed);
        republisher.join().map_err(|_| anyhow::anyhow!("republisher panicked"))??;
        result
    })?;
    let body = match nginx.client().get("/upstreamtop") {
        Ok(r) => format!("{} KiB JSON per poll", r.body.len() / 1024),
        Err(e) => format!("last GET failed: {e:#}"),
    };
    Ok(vec![
        Figure::new(
            4,
            "endpoint.poll_ratio_1000_peers",
            "proxy throughput polled 10/s / not, 1,000-peer table",
            runs.ratio(),
            "",
            Target::None,
        )
        .note(runs.note(s.pairs, &format!("worst case: synthetic 1,000 peers × 16 routes republished every second; {body}"))),
        Figure::new(4, "endpoint.poll_p99_ms", "GET /upstreamtop under load, p99, 1,000-peer table", percentile(&runs.poll_ms, 0.99), "ms", Target::None),
    ])
}
