//! Part 6: scale. Many peers (backends on distinct 127.77.x.y loopback
//! addresses) and many distinct routes, driven directly by an HTTP client
//! (the probe sees any client; nginx is not needed here). The probe's route
//! table is configured smaller than the route count, so the overflow path
//! runs too: per-peer totals must stay exact, the table bounded.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use upstreamtop_report::{render, NginxConfig, Query};
use upstreamtop_table::TableReader;

use super::figures::{Figure, Target};
use super::{now_unix_ns, percentile, procfs, Settings};
use crate::backend::{Backend, Profile};
use crate::http::{Client, Request};
use crate::probe::Probe;

const SETTLE: Duration = Duration::from_secs(30);
const CLIENT_THREADS: usize = 8;
/// Only backends in here are tracked, so other loopback traffic on the
/// machine does not take peer slots.
const NET: &str = "127.77.0.0/16";

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 77, (1 + i / 250) as u8, (1 + i % 250) as u8), 0))
}

pub fn run(s: &Settings) -> Vec<Figure> {
    match measure(s) {
        Ok(f) => f,
        Err(e) => vec![Figure::failed(
            6,
            "scale.peer_diff",
            &format!("per-peer difference, {} peers × {} routes", s.scale_peers, s.scale_routes),
            "",
            Target::Equal(0.0),
            &format!("{e:#}"),
        )],
    }
}

fn measure(s: &Settings) -> Result<Vec<Figure>> {
    super::check_interrupt()?;
    let n = s.scale_peers;
    let mut backends = Vec::with_capacity(n);
    for i in 0..n {
        backends.push(Backend::start(addr(i), Profile::fast()).with_context(|| format!("backend {i} on {}", addr(i)))?);
    }
    let max_peers = (n + 24).to_string();
    let max_routes = s.scale_max_routes.to_string();
    let mut probe = Probe::start(&[
        "--iface",
        "lo",
        "--only",
        NET,
        "--max-peers",
        &max_peers,
        "--max-routes",
        &max_routes,
        "--interval",
        "500ms",
    ])
    .context("start probe")?;

    // Route k goes to peer k % n: each peer sees routes/n distinct paths.
    let errors = AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..CLIENT_THREADS {
            let (backends, errors) = (&backends, &errors);
            scope.spawn(move || {
                let mut clients: Vec<Option<Client>> = (0..n).map(|_| None).collect();
                for k in (0..s.scale_routes).filter(|k| (k % n) % CLIENT_THREADS == t) {
                    let peer = k % n;
                    let client = clients[peer].get_or_insert_with(|| Client::new(backends[peer].addr()));
                    for _ in 0..s.scale_repeat {
                        if !matches!(client.send(&Request::get(&format!("/scale/r{k}"))), Ok(r) if r.status == 200) {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let load_s = t0.elapsed().as_secs_f64();
    super::check_interrupt()?;
    let sent = (s.scale_routes as u64) * u64::from(s.scale_repeat);

    let want: Vec<(SocketAddr, u64)> = backends.iter().map(|b| (b.addr(), b.total())).collect();
    let diff_of = |snap: &upstreamtop_table::Snapshot| -> u64 {
        want.iter()
            .map(|(a, total)| {
                let got = snap.peers.iter().find(|p| p.addr == *a).map_or(0, |p| p.requests);
                got.abs_diff(*total)
            })
            .sum()
    };
    let snap = probe.wait_until(SETTLE, |snap| diff_of(snap) == 0)?;
    let diff = diff_of(&snap);
    let mem = procfs::memory(probe.pid())?;
    let parts = resident_parts(probe.pid(), probe.table_path())?;
    let named_routes = snap.routes.iter().filter(|r| !r.is_other).count();
    let c = snap.meta.counters;

    // Render the real table the way the endpoint does.
    let conf = NginxConfig { nginx_version: "bench".into(), ..Default::default() };
    let query = Query { routes: 16, ..Query::default() };
    let mut times = Vec::new();
    let mut bytes = 0;
    let mut reader = TableReader::new(probe.table_path());
    for _ in 0..20 {
        let t = Instant::now();
        let view = reader.view_if_new(None).map_err(|e| anyhow::anyhow!("{e}"))?.context("no publish")?;
        let json = render(&view, &conf, &query, now_unix_ns(), Vec::new());
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        bytes = json.body.len();
    }
    drop(probe);
    stop_all(backends);

    let shape = format!("{n} peers × {} routes", s.scale_routes);
    Ok(vec![
        Figure::new(6, "scale.peer_diff", &format!("per-peer difference, {shape}"), diff as f64, "", Target::Equal(0.0)).note(
            format!(
                "{sent} requests in {load_s:.1} s, {} client errors; route_overflow {}, peer_table_full {}, events_dropped {}",
                errors.load(Ordering::Relaxed),
                c.route_overflow,
                c.peer_table_full,
                c.events_dropped
            ),
        ),
        Figure::new(
            6,
            "scale.routes_kept",
            "named routes kept (bounded by --max-routes)",
            named_routes as f64,
            "",
            Target::AtMost(s.scale_max_routes as f64),
        )
        .note(format!("{} distinct routes sent", s.scale_routes)),
        Figure::new(6, "scale.probe_hwm_mib", &format!("probe VmHWM, {shape}"), mem.hwm_mib, "MiB", Target::AtMost(50.0))
            .note(format!(
                "--max-peers {max_peers} --max-routes {max_routes}; target as in part 5; resident now: {:.1} MiB BPF map mappings \
                 (the events ring's data pages are mapped twice and count twice), {:.1} MiB table file (both slots), {:.1} MiB the rest \
                 (heap, binary, libraries)",
                parts.bpf_maps_mib, parts.table_mib, parts.rest_mib
            )),
        Figure::new(6, "scale.render_p99_ms", &format!("render p99 of that table ({} KiB JSON)", bytes / 1024), percentile(&times, 0.99), "ms", Target::None),
    ])
}

/// Where the probe's resident pages are, from its smaps: most of its
/// footprint is fixed by configuration (ring size, table capacities), the
/// rest is what the daemon holds per peer and route.
struct ResidentParts {
    bpf_maps_mib: f64,
    table_mib: f64,
    rest_mib: f64,
}

fn resident_parts(pid: u32, table: &std::path::Path) -> Result<ResidentParts> {
    let path = format!("/proc/{pid}/smaps");
    let smaps = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let table = table.to_string_lossy();
    let mut parts = ResidentParts { bpf_maps_mib: 0.0, table_mib: 0.0, rest_mib: 0.0 };
    enum Part {
        BpfMaps,
        Table,
        Rest,
    }
    let mut current = Part::Rest;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping header: range perms offset dev inode [name]
            let name = words.nth(4).unwrap_or("");
            current = if name.starts_with("anon_inode:bpf-map") {
                Part::BpfMaps
            } else if name == table {
                Part::Table
            } else {
                Part::Rest
            };
        } else if first == "Rss:" {
            let kib: f64 = words.next().context("Rss without a value")?.parse().context("Rss value")?;
            let mib = kib / 1024.0;
            match current {
                Part::BpfMaps => parts.bpf_maps_mib += mib,
                Part::Table => parts.table_mib += mib,
                Part::Rest => parts.rest_mib += mib,
            }
        }
    }
    Ok(parts)
}

/// Each backend's stop waits up to one accept-poll period; stopping a
/// thousand one after the other would take most of a minute.
fn stop_all(backends: Vec<Backend>) {
    let mut chunks: Vec<Vec<Backend>> = (0..64).map(|_| Vec::new()).collect();
    for (i, b) in backends.into_iter().enumerate() {
        chunks[i % 64].push(b);
    }
    std::thread::scope(|scope| {
        for chunk in chunks {
            scope.spawn(move || drop(chunk));
        }
    });
}
