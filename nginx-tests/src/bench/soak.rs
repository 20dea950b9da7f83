//! `bench soak`: a long mixed-load run (30 minutes by default; never part of
//! the default suite or CI) to show that the nginx workers' and the probe's
//! resident memory stays flat. Real nginx (vendored, with the module, 2
//! workers) in front of keepalive and non-keepalive backends with latency, a
//! few 5xx and a slow route; rate-capped load (so the machine is not
//! starved: growth under starvation would be queueing, not a leak); a
//! client polling the JSON and Prometheus answers once a second; a stream of
//! distinct paths, more than the probe's `--max-routes`, so the overflow
//! path runs all along.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{exactness, procfs};
use crate::backend::{Backend, Profile};
use crate::http::{Client, Request};
use crate::load::{self, LoadSpec, Route, Until};
use crate::nginx::{free_port, Nginx, NginxConf};
use crate::probe::Probe;

/// Memory right after start grows while pools, caches and the route table
/// fill; figures count from the end of this.
pub const WARMUP: Duration = Duration::from_secs(60);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const POLL_EVERY: Duration = Duration::from_secs(1);
const SETTLE: Duration = Duration::from_secs(30);
/// Smaller than the distinct paths sent (see [`DISTINCT_PER_SEC`]).
const MAX_ROUTES: u32 = 256;
const DISTINCT_PER_SEC: f64 = 20.0;
/// Keepalive and non-keepalive client load, req/s. About half of a 2-core
/// machine for nginx, backends, clients and probe together.
const KEEPALIVE_RATE: f64 = 400.0;
const CLOSE_RATE: f64 = 100.0;
/// The "flat" bound, MiB per hour after warm-up. A per-request leak of even
/// 8 bytes at ~500 req/s is ~14 MiB/h, a per-poll leak of 1 KiB ~3.5 MiB/h;
/// RSS moves in 4 KiB pages and allocator arenas settle within the warm-up,
/// so a flat process stays well below 1 MiB/h over 30 minutes.
pub const FLAT_MIB_PER_HOUR: f64 = 1.0;

/// One process's RSS over the run.
#[derive(Debug, Clone)]
struct Series {
    name: String,
    pid: u32,
    /// (seconds since start, VmRSS MiB)
    rss: Vec<(f64, f64)>,
}

impl Series {
    fn after_warmup(&self) -> Vec<(f64, f64)> {
        let w = WARMUP.as_secs_f64();
        self.rss.iter().copied().filter(|(t, _)| *t >= w - 0.5).collect()
    }

    fn summary(&self) -> Value {
        let after = self.after_warmup();
        let start = after.first().map(|s| s.1);
        let end = after.last().map(|s| s.1);
        let max = self.rss.iter().map(|s| s.1).fold(f64::NAN, f64::max);
        let slope = slope_per_hour(&after);
        json!({
            "name": self.name,
            "pid": self.pid,
            "rss_start_mib": start,
            "rss_end_mib": end,
            "rss_max_mib": max,
            "slope_mib_per_hour": slope,
            "flat": slope.map(|s| s < FLAT_MIB_PER_HOUR),
        })
    }
}

/// Least-squares slope of (seconds, MiB) samples, in MiB per hour; `None`
/// with fewer than two distinct times.
pub fn slope_per_hour(samples: &[(f64, f64)]) -> Option<f64> {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return None;
    }
    let mt = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let mv = samples.iter().map(|s| s.1).sum::<f64>() / n;
    let sxx: f64 = samples.iter().map(|s| (s.0 - mt).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = samples.iter().map(|s| (s.0 - mt) * (s.1 - mv)).sum();
    Some(sxy / sxx * 3600.0)
}

fn backend_profile(keepalive: bool) -> Profile {
    Profile::fast()
        .latency_ms(1, 5)
        .statuses(&[(200, 95), (404, 3), (304, 2)])
        .error_rate(0.01)
        .error_statuses(&[500, 503])
        .body_size(300)
        .keepalive(keepalive)
}

fn routes() -> Vec<Route> {
    vec![
        Route::get("/p/app/api/orders", 40),
        Route::get("/p/app/api/users/42", 25),
        Route::get("/p/app/static/app.js", 20),
        Route::post("/p/app/api/cart", 10, &[b'x'; 512]),
        Route::get("/p/app/slow/report", 2),
    ]
}

/// Whole-machine busy fraction between two /proc/stat readings.
fn cpu_busy() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

pub fn run(minutes: u64, out: &Path) -> Result<()> {
    if Duration::from_secs(minutes * 60) <= WARMUP {
        bail!("--minutes must be more than the {} s warm-up", WARMUP.as_secs());
    }
    let total = Duration::from_secs(minutes * 60);
    // Two keepalive backends and one that closes after each response.
    let backends = [true, true, false]
        .into_iter()
        .map(|ka| {
            Backend::builder(backend_profile(ka))
                .route("/slow", backend_profile(ka).latency_ms(200, 400))
                .start(([127, 0, 0, 1], 0).into())
        })
        .collect::<Result<Vec<_>>>()?;
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let port_s = port.to_string();
    let max_routes = MAX_ROUTES.to_string();
    let probe = Probe::start(&[
        "--iface",
        "lo",
        "--ignore-port",
        &port_s,
        "--max-routes",
        &max_routes,
        "--interval",
        "500ms",
    ])
    .context("start probe")?;
    let addrs: Vec<_> = backends.iter().map(Backend::addr).collect();
    let conf = NginxConf::vendored_with_module()?
        .port(port)
        .workers(2)
        .table(probe.table_path())
        .upstream_servers("app", &addrs);
    let nginx = Nginx::start(conf).context("start nginx")?;
    let workers = nginx.worker_pids();
    if workers.len() != 2 {
        bail!("expected 2 nginx workers, found {workers:?}");
    }
    eprintln!(
        "soak: {minutes} min; nginx :{port} workers {workers:?}, probe pid {}, backends {addrs:?}; warm-up {} s, samples every {} s",
        probe.pid(),
        WARMUP.as_secs(),
        SAMPLE_EVERY.as_secs()
    );

    let mut series: Vec<Series> = workers
        .iter()
        .enumerate()
        .map(|(i, &pid)| Series { name: format!("nginx worker {}", i + 1), pid, rss: Vec::new() })
        .collect();
    series.push(Series { name: "probe".into(), pid: probe.pid(), rss: Vec::new() });
    let mut probe_cpu: Vec<(f64, f64)> = Vec::new();
    let mut machine_busy: Vec<f64> = Vec::new();

    let stop = AtomicBool::new(false);
    let polls = AtomicU64::new(0);
    let poll_errors = AtomicU64::new(0);
    let distinct_sent = AtomicU64::new(0);
    let started = Instant::now();
    let target = nginx.addr();
    let (ka, close, outcome) = std::thread::scope(|scope| {
        let ka = scope.spawn(|| {
            let mut spec = LoadSpec::new(target, routes()).concurrency(16).rate(Some(KEEPALIVE_RATE));
            spec.until = Until::Stopped;
            load::run_until(&spec, &stop)
        });
        let close = scope.spawn(|| {
            let mut spec = LoadSpec::new(target, routes()).concurrency(4).keepalive(false).rate(Some(CLOSE_RATE));
            spec.until = Until::Stopped;
            load::run_until(&spec, &stop)
        });
        scope.spawn(|| {
            let mut c = Client::new(target);
            while !stop.load(Ordering::Relaxed) {
                for q in ["/upstreamtop", "/upstreamtop?format=prometheus"] {
                    match c.get(q) {
                        Ok(r) if r.status == 200 => {}
                        _ => {
                            poll_errors.fetch_add(1, Ordering::Relaxed);
                            c = Client::new(target);
                        }
                    }
                }
                polls.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(POLL_EVERY);
            }
        });
        scope.spawn(|| {
            let mut c = Client::new(target);
            let every = Duration::from_secs_f64(1.0 / DISTINCT_PER_SEC);
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                // Letters around the number: the probe folds numeric and hex
                // segments to `:id`, and these must stay distinct routes.
                if c.send(&Request::get(&format!("/p/app/c/k{n}z"))).is_err() {
                    c = Client::new(target);
                }
                n += 1;
                distinct_sent.store(n, Ordering::Relaxed);
                std::thread::sleep(every);
            }
        });

        let outcome = (|| -> Result<()> {
            let cpu0 = procfs::cpu_seconds(probe.pid())?;
            let mut busy_prev = cpu_busy();
            let mut next = started;
            while started.elapsed() < total + Duration::from_millis(500) {
                if Instant::now() >= next {
                    let t = started.elapsed().as_secs_f64();
                    for s in &mut series {
                        let m = procfs::memory(s.pid).with_context(|| format!("{} (pid {}) is gone", s.name, s.pid))?;
                        s.rss.push((t, m.rss_mib));
                    }
                    probe_cpu.push((t, procfs::cpu_seconds(probe.pid())? - cpu0));
                    let busy = cpu_busy();
                    if let (Some(a), Some(b)) = (busy_prev, busy) {
                        if b.1 > a.1 {
                            machine_busy.push((b.0 - a.0) as f64 / (b.1 - a.1) as f64);
                        }
                    }
                    busy_prev = busy;
                    let line: Vec<String> = series.iter().map(|s| format!("{:.1}", s.rss.last().map_or(0.0, |x| x.1))).collect();
                    eprintln!(
                        "soak: [{t:6.0} s] RSS MiB (workers, probe) {}; machine busy {:.0}%",
                        line.join(" "),
                        machine_busy.last().unwrap_or(&0.0) * 100.0
                    );
                    next += SAMPLE_EVERY;
                }
                super::check_interrupt()?;
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        (ka.join(), close.join(), outcome)
    });
    outcome?;
    let ka = ka.map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    let close = close.map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    let elapsed = started.elapsed().as_secs_f64();

    // Exactness: the endpoint's per-peer requests and codes against what
    // the backends served, once in-flight requests have been accounted.
    let truth = || -> Vec<(String, u64, std::collections::BTreeMap<u16, u64>)> {
        backends.iter().map(|b| (b.addr().to_string(), b.total(), b.by_status())).collect()
    };
    let deadline = Instant::now() + SETTLE;
    let mut client = nginx.client();
    let (diff, detail, want) = loop {
        let want = truth();
        let resp = client.get("/upstreamtop?upstream=app&recent=0&history=0").context("GET /upstreamtop")?;
        let doc: Value = serde_json::from_slice(&resp.body).context("endpoint JSON")?;
        let (diff, detail) = exactness::compare(&doc, &want)?;
        if (diff == 0 && want == truth()) || Instant::now() > deadline {
            break (diff, detail, want);
        }
        super::check_interrupt()?;
        std::thread::sleep(Duration::from_millis(250));
    };
    let served: u64 = want.iter().map(|w| w.1).sum();
    let workers_now = nginx.worker_pids();
    let problems = nginx.error_log_problems();
    let cpu_end = probe_cpu.last().map_or(0.0, |c| c.1);
    let probe_cpu_pct = cpu_end / elapsed * 100.0;
    let busy_avg = machine_busy.iter().sum::<f64>() / machine_busy.len().max(1) as f64;
    drop(nginx);
    drop(probe);

    // Report.
    let procs: Vec<Value> = series.iter().map(Series::summary).collect();
    println!("\nsoak: {minutes} min, samples every {} s, figures after a {} s warm-up", SAMPLE_EVERY.as_secs(), WARMUP.as_secs());
    println!("{:<16} {:>10} {:>10} {:>10} {:>14}  verdict", "process", "start MiB", "end MiB", "max MiB", "slope MiB/h");
    let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.2}"));
    for p in &procs {
        let verdict = match p["flat"].as_bool() {
            Some(true) => "flat",
            Some(false) => "GROWING",
            None => "-",
        };
        println!(
            "{:<16} {:>10} {:>10} {:>10} {:>14}  {verdict} (< {FLAT_MIB_PER_HOUR} MiB/h)",
            p["name"].as_str().unwrap_or(""),
            f(&p["rss_start_mib"]),
            f(&p["rss_end_mib"]),
            f(&p["rss_max_mib"]),
            f(&p["slope_mib_per_hour"])
        );
    }
    let client_resp = ka.responses() + close.responses();
    println!(
        "requests served by backends {served} ({:.0}/s; load clients got {client_resp}, {} errors; {} distinct paths > --max-routes {MAX_ROUTES}; {} polls, {} failed)",
        served as f64 / elapsed,
        ka.errors + close.errors,
        distinct_sent.load(Ordering::Relaxed),
        polls.load(Ordering::Relaxed),
        poll_errors.load(Ordering::Relaxed)
    );
    println!("probe CPU {probe_cpu_pct:.2}% of one core; machine busy {:.0}% on average", busy_avg * 100.0);
    println!(
        "exactness: endpoint − backends per peer (requests and codes) = {diff}{}",
        if detail.is_empty() { String::new() } else { format!(" ({detail})") }
    );
    if workers_now != workers {
        println!("WARNING: nginx workers changed during the run: {workers:?} → {workers_now:?}");
    }
    if !problems.is_empty() {
        println!("WARNING: nginx error log: {problems:?}");
    }

    let doc = json!({
        "date_unix_s": super::now_unix_ns() / 1_000_000_000,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "minutes": minutes,
        "elapsed_s": elapsed,
        "warmup_s": WARMUP.as_secs(),
        "sample_every_s": SAMPLE_EVERY.as_secs(),
        "flat_bound_mib_per_hour": FLAT_MIB_PER_HOUR,
        "load": {
            "keepalive_rate": KEEPALIVE_RATE,
            "close_rate": CLOSE_RATE,
            "distinct_paths_per_s": DISTINCT_PER_SEC,
            "max_routes": MAX_ROUTES,
        },
        "processes": procs,
        "samples": series.iter().map(|s| json!({"name": s.name, "pid": s.pid, "rss_mib": s.rss})).collect::<Vec<_>>(),
        "probe_cpu_seconds": probe_cpu,
        "probe_cpu_percent": probe_cpu_pct,
        "machine_busy_avg": busy_avg,
        "requests_served": served,
        "client_responses": client_resp,
        "client_errors": ka.errors + close.errors,
        "distinct_paths": distinct_sent.load(Ordering::Relaxed),
        "polls": polls.load(Ordering::Relaxed),
        "poll_errors": poll_errors.load(Ordering::Relaxed),
        "exactness_difference": diff,
        "exactness_detail": detail,
        "workers_changed": workers_now != workers,
        "nginx_error_log_problems": problems,
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&doc)? + "\n").with_context(|| format!("write {}", out.display()))?;
    println!("written to {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_is_mib_per_hour() {
        // 0.1 MiB per 10 s = 36 MiB/h.
        let s: Vec<(f64, f64)> = (0..10).map(|i| (i as f64 * 10.0, 50.0 + i as f64 * 0.1)).collect();
        assert!((slope_per_hour(&s).unwrap() - 36.0).abs() < 1e-9);
        assert_eq!(slope_per_hour(&[(60.0, 5.0), (70.0, 5.0)]), Some(0.0));
        assert_eq!(slope_per_hour(&[(1.0, 2.0)]), None);
    }
}
