//! Part 4: what the endpoint costs. In-process: read a table of 1,000 peers
//! × 16 routes, build the report and render JSON, timed over many renders.
//! In nginx: throughput under wrk while a client polls `/upstreamtop` ten
//! times a second, interleaved with runs without polling. The table is the
//! synthetic one (republished every second like a live probe), so each poll
//! renders the big answer: the worst case, not two idle peers.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use upstreamtop_report::{build_report, render_json, NginxConfig, Query};
use upstreamtop_table::{Capacities, TableReader, TableWriter};

use super::figures::{Figure, Target};
use super::wrk::{self, WrkSpec};
use super::{median, now_unix_ns, percentile, synthetic, Settings};
use crate::backend::{Backend, Profile};
use crate::nginx::{free_port, Nginx, NginxConf};

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
    match polling(s, &table) {
        Ok(f) => out.extend(f),
        Err(e) => out.push(Figure::failed(
            4,
            "endpoint.poll_ratio",
            "proxy throughput polled 10/s / not polled",
            "",
            Target::AtLeast(0.99),
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

fn polling(s: &Settings, table: &Path) -> Result<Vec<Figure>> {
    let b1 = Backend::loopback(Profile::fast())?;
    let b2 = Backend::loopback(Profile::fast())?;
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
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
    spec.headers = super::realistic_headers();

    let stop = AtomicBool::new(false);
    let polls_ok = AtomicU64::new(0);
    let polls_bad = AtomicU64::new(0);
    let poll_ms = std::sync::Mutex::new(Vec::new());
    let (mut with, mut without) = (Vec::new(), Vec::new());
    std::thread::scope(|scope| -> Result<()> {
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
        let result = (|| -> Result<()> {
            wrk::run(&WrkSpec { duration: Duration::from_secs(1), ..spec.clone() }).context("warm-up wrk")?;
            for pair in 0..s.pairs {
                let order = if pair % 2 == 0 { [true, false] } else { [false, true] };
                for polled in order {
                    super::check_interrupt()?;
                    if !polled {
                        without.push(wrk::run(&spec)?.requests_per_sec);
                        continue;
                    }
                    let done = AtomicBool::new(false);
                    let r = std::thread::scope(|inner| {
                        inner.spawn(|| {
                            let mut client = nginx.client();
                            let mut due = Instant::now();
                            while !done.load(Ordering::Relaxed) {
                                let t = Instant::now();
                                let r = client.get("/upstreamtop");
                                poll_ms.lock().expect("poll times").push(t.elapsed().as_secs_f64() * 1000.0);
                                match r {
                                    Ok(r) if r.status == 200 => polls_ok.fetch_add(1, Ordering::Relaxed),
                                    _ => polls_bad.fetch_add(1, Ordering::Relaxed),
                                };
                                due += POLL_EVERY;
                                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                    std::thread::sleep(wait);
                                }
                            }
                        });
                        let r = wrk::run(&spec);
                        done.store(true, Ordering::Relaxed);
                        r
                    })?;
                    with.push(r.requests_per_sec);
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        republisher.join().map_err(|_| anyhow::anyhow!("republisher panicked"))??;
        result
    })?;
    let ratio = median(&with.iter().zip(&without).map(|(w, o)| w / o).collect::<Vec<_>>());
    let (ok, bad) = (polls_ok.load(Ordering::Relaxed), polls_bad.load(Ordering::Relaxed));
    let poll_ms = poll_ms.into_inner().expect("poll times");
    Ok(vec![Figure::new(
        4,
        "endpoint.poll_ratio",
        "proxy throughput polled 10/s / not polled",
        ratio,
        "",
        Target::AtLeast(0.99),
    )
    .note(format!(
        "median of {} pairs; {:.0} vs {:.0} req/s; {ok} polls answered 200, {bad} not; poll p50 {:.1} ms",
        s.pairs,
        median(&with),
        median(&without),
        median(&poll_ms)
    )),
    Figure::new(4, "endpoint.poll_p99_ms", "GET /upstreamtop under load, p99", percentile(&poll_ms, 0.99), "ms", Target::None)])
}
