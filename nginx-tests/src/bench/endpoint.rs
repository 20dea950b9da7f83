//! Part 4: what the endpoint costs. In-process: read a table of 1,000 peers
//! × 16 routes and render JSON and Prometheus from it, timed over many
//! renders.
//! In nginx: throughput under wrk while a client polls `/upstreamtop` ten
//! times a second vs not — with the real probe's table (part 1's setup: the
//! target), the poller switched on and off in blocks within one wrk run;
//! and with the synthetic 1,000-peer table republished every second, so
//! each poll gets the big answer (the worst case, reported beside it), in
//! interleaved wrk runs.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use upstreamtop_report::{render, Format, NginxConfig, Query};
use upstreamtop_table::{Capacities, TableReader, TableWriter};

use super::alternate::alternate;
use super::figures::{num, Figure, Target};
use super::wrk::{self, WrkSpec};
use super::{median, median_interval95, now_unix_ns, pair_ratios, percentile, proxy_setup, synthetic, Settings};
use crate::nginx::{free_port, Nginx};
use crate::probe::Probe;

pub const PEERS: usize = 1000;
pub const ROUTES_PER_PEER: usize = 16;
const POLL_EVERY: Duration = Duration::from_millis(100);

pub fn run(s: &Settings) -> Vec<Figure> {
    // On tmpfs where there is one, as /run/upstreamtop is (see table_dir).
    let dir = match tempfile::tempdir_in(upstreamtop_report::bench::table_dir()) {
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
    // The three answers side by side, round by round, each paying the full
    // read of the publish (copy, checksum, validation) as after every
    // publish: JSON as a dashboard asks for it (every route), JSON with
    // the default query, and what a Prometheus scrape gets (every route).
    let json16 = all_routes();
    let json10 = Query::default();
    let prom = Query { format: Format::Prometheus, ..Query::default() };
    let (mut times, mut bytes) = ([Vec::new(), Vec::new(), Vec::new()], [0usize; 3]);
    for _ in 0..renders {
        for (k, q) in [&json16, &json10, &prom].into_iter().enumerate() {
            let t = Instant::now();
            let view = reader.view_if_new(None).map_err(|e| anyhow::anyhow!("{e}"))?.context("no publish")?;
            let body = render(&view, &conf, q, now_unix_ns(), Vec::new());
            times[k].push(t.elapsed().as_secs_f64() * 1000.0);
            bytes[k] = body.body.len();
            std::hint::black_box(body);
        }
    }
    let [json16_t, json10_t, prom_t] = &times;

    // What the module itself does per publish (reads the table in place,
    // renders into the buffer of a body it no longer serves; repeated
    // requests within a publish get the cached body).
    let module_table = table.with_extension("module");
    let cost = upstreamtop_report::bench::endpoint_cost(&module_table, PEERS as u32, ROUTES_PER_PEER as u32, renders)
        .context("report::bench::endpoint_cost")?;
    let _ = std::fs::remove_file(&module_table);
    let (fresh50, fresh99) = cost.fresh_p50_p99();
    let (_, cached99) = cost.cached_p50_p99();
    let ms = |us: u64| us as f64 / 1000.0;
    let p = percentile;
    Ok(vec![
        Figure::new(
            4,
            "endpoint.render_p50_ms",
            "JSON render p50, module path (1,000 peers × 16 routes)",
            ms(fresh50),
            "ms",
            Target::AtMost(3.0),
        )
        .note(format!(
            "{renders} fresh publishes: table view read + render into a recycled buffer, ?routes=16, {} KiB JSON",
            cost.body_bytes / 1024
        )),
        Figure::new(
            4,
            "endpoint.render_p99_ms",
            "JSON render p99, module path (1,000 peers × 16 routes)",
            ms(fresh99),
            "ms",
            Target::AtMost(5.0),
        ),
        Figure::new(
            4,
            "endpoint.cached_p99_ms",
            "answer p99 within a publish (module's cached body)",
            ms(cached99),
            "ms",
            Target::None,
        ),
        Figure::new(
            4,
            "endpoint.json16_p99_ms",
            "JSON render p99, ?routes=16, fresh buffer",
            p(json16_t, 0.99),
            "ms",
            Target::None,
        )
        .note(format!(
            "{renders} rounds of the three answers interleaved; p50 {} ms, {} KiB",
            num(p(json16_t, 0.5)),
            bytes[0] / 1024
        )),
        Figure::new(
            4,
            "endpoint.json10_p99_ms",
            "JSON render p99, default query (top 10 routes)",
            p(json10_t, 0.99),
            "ms",
            Target::None,
        )
        .note(format!("p50 {} ms, {} KiB", num(p(json10_t, 0.5)), bytes[1] / 1024)),
        Figure::new(
            4,
            "endpoint.prometheus_p99_ms",
            "Prometheus render p99, every route (1,000 × 16)",
            p(prom_t, 0.99),
            "ms",
            Target::None,
        )
        .note(format!("p50 {} ms, {} KiB of text", num(p(prom_t, 0.5)), bytes[2] / 1024)),
        Figure::new(
            4,
            "endpoint.prometheus_vs_json_p99",
            "Prometheus p99 / JSON ?routes=16 p99 (same rounds)",
            p(prom_t, 0.99) / p(json16_t, 0.99),
            "",
            Target::AtMost(1.0),
        ),
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
    /// Polls answered with the full body (the others got a 304).
    full: u64,
    /// Duration of every poll, ms.
    poll_ms: Vec<f64>,
    /// Why the first few failed polls failed.
    failures: Vec<String>,
}

impl PollRuns {
    fn ratios(&self) -> Vec<f64> {
        pair_ratios(&self.with, &self.without)
    }

    fn ratio(&self) -> f64 {
        median(&self.ratios())
    }

    fn note(&self, pairs: &str, body: &str) -> String {
        format!(
            "median of {pairs}; {:.0} vs {:.0} req/s; {} polls answered ({} with the body, the rest 304), {} not{}; poll p50 {:.1} ms; {body}",
            median(&self.with),
            median(&self.without),
            self.ok,
            self.full,
            self.bad,
            if self.failures.is_empty() { String::new() } else { format!(" ({})", self.failures.join("; ")) },
            median(&self.poll_ms)
        )
    }
}

/// What the poller thread does: GET `/upstreamtop` every [`POLL_EVERY`]
/// (the default query: what the dashboard asks for) while `polling` is
/// set, until `done`, sending back the last `ETag` as a well-behaved
/// poller does (a `304` within a publish, the full answer after one).
fn poller(nginx: &Nginx, polling: &AtomicBool, done: &AtomicBool) -> PollRuns {
    let mut runs = PollRuns::default();
    let mut client = nginx.client();
    let mut etag: Option<String> = None;
    let mut due = Instant::now();
    while !done.load(Ordering::Relaxed) {
        if !polling.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
            due = Instant::now();
            continue;
        }
        let t = Instant::now();
        let mut req = crate::http::Request::get("/upstreamtop");
        if let Some(tag) = &etag {
            req = req.header("If-None-Match", tag);
        }
        let failure = match client.send(&req) {
            Ok(r) if r.status == 200 || r.status == 304 => {
                if r.status == 200 {
                    runs.full += 1;
                }
                etag = r.header("ETag").map(str::to_owned);
                None
            }
            Ok(r) => Some(format!("{} {}", r.status, String::from_utf8_lossy(&r.body[..r.body.len().min(160)]))),
            Err(e) => Some(format!("{e:#}")),
        };
        match failure {
            None => runs.ok += 1,
            Some(why) => {
                runs.bad += 1;
                if runs.failures.len() < 3 {
                    runs.failures.push(why);
                }
            }
        }
        runs.poll_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        due += POLL_EVERY;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    runs
}

/// The polled / not-polled comparison of the target figure: one wrk run,
/// the poller switched on and off in blocks ([`alternate`]), rates from
/// what the backends served.
fn poll_blocks(s: &Settings, nginx: &Nginx, spec: &WrkSpec, served: &dyn Fn() -> u64) -> Result<PollRuns> {
    let (polling, done) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|scope| {
        let client = scope.spawn(|| poller(nginx, &polling, &done));
        let mut set = |on: bool| {
            polling.store(on, Ordering::Relaxed);
            Ok(())
        };
        let blocks = alternate(spec, s.poll_blocks, s.poll_block, served, &mut set);
        done.store(true, Ordering::Relaxed);
        let mut runs = client.join().map_err(|_| anyhow::anyhow!("poller panicked"))?;
        let blocks = blocks?;
        runs.with = blocks.on;
        runs.without = blocks.off;
        Ok(runs)
    })
}

/// `s.pairs` interleaved pairs of wrk runs (A B, B A, …) against `spec`,
/// one of each pair with the poller on.
fn poll_pairs(s: &Settings, nginx: &Nginx, spec: &WrkSpec) -> Result<PollRuns> {
    wrk::run(&WrkSpec { duration: Duration::from_secs(1), ..spec.clone() }).context("warm-up wrk")?;
    let (polling, done) = (AtomicBool::new(true), AtomicBool::new(false));
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let mut runs = std::thread::scope(|scope| -> Result<PollRuns> {
        let client = scope.spawn(|| poller(nginx, &polling, &done));
        let measured = (|| -> Result<()> {
            for pair in 0..s.pairs {
                let order = if pair % 2 == 0 { [true, false] } else { [false, true] };
                for polled in order {
                    super::check_interrupt()?;
                    polling.store(polled, Ordering::Relaxed);
                    let r = wrk::run(spec)?.requests_per_sec;
                    if polled { &mut with } else { &mut without }.push(r);
                }
            }
            Ok(())
        })();
        done.store(true, Ordering::Relaxed);
        let runs = client.join().map_err(|_| anyhow::anyhow!("poller panicked"))?;
        measured?;
        Ok(runs)
    })?;
    runs.with = with;
    runs.without = without;
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
    let (b1, b2, nginx, spec) = proxy_setup(s, port, probe.table_path())?;
    let runs = poll_blocks(s, &nginx, &spec, &|| b1.total() + b2.total())?;
    let body = match nginx.client().get("/upstreamtop") {
        Ok(r) => format!("{} B JSON", r.body.len()),
        Err(e) => format!("last GET failed: {e:#}"),
    };
    drop(nginx);
    drop(probe);
    Ok(Figure::new(
        4,
        "endpoint.poll_ratio",
        "proxy throughput polled 10/s / not polled (probe's table)",
        runs.ratio(),
        "",
        Target::AtLeast(0.99),
    )
    .interval(median_interval95(&runs.ratios()))
    .note(runs.note(
        &format!(
            "{} pairs of {} s blocks in one wrk run, rates from what the backends served",
            s.poll_blocks,
            s.poll_block.as_secs()
        ),
        &format!("probe attached throughout; {body}"),
    )))
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
        .note(runs.note(
            &format!("{} pairs of {} s wrk runs", s.pairs, s.run.as_secs()),
            &format!("worst case: synthetic 1,000 peers × 16 routes republished every second; {body}"),
        )),
        Figure::new(
            4,
            "endpoint.poll_p99_ms",
            "GET /upstreamtop under load, p99, 1,000-peer table",
            percentile(&runs.poll_ms, 0.99),
            "ms",
            Target::AtMost(8.0),
        ),
    ])
}
