//! `--table` mode: a real table file written with the probe's TableWriter,
//! read back by the binary through TableReader + upstreamtop_report::render.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use upstreamtop_table::histogram::{bucket_of, BUCKETS};
use upstreamtop_table::{
    Capacities, Connections, HistorySample, Latency, PeerStats, ProbeMeta, RecentRequest, Responses, RouteStats,
    Snapshot, TableWriter, Window,
};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("upstreamtop-dash-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn latency(ns: u64, count: u64) -> Latency {
    let mut buckets = vec![0; BUCKETS];
    buckets[bucket_of(ns)] = count;
    Latency { buckets, sum_ns: ns * count, count }
}

fn peer(addr: &str, ok: u64, errors: u64, rps: f64, errs_rps: f64, lat_ns: u64, now: u64) -> PeerStats {
    let mut codes = vec![(200, ok)];
    if errors > 0 {
        codes.push((503, errors));
    }
    PeerStats {
        addr: addr.parse::<SocketAddr>().unwrap(),
        requests: ok + errors,
        responses: Responses { class: [0, ok, 0, 0, errors], codes, codes_other: 0 },
        no_response: 0,
        sent_bytes: (ok + errors) * 300,
        received_bytes: (ok + errors) * 1000,
        conns: Connections { opened: 4, closed: 2, failed: 0, reset: 0, active: 2 },
        latency: latency(lat_ns, ok + errors),
        window: Window {
            requests_per_sec: rps,
            errors_5xx_per_sec: errs_rps,
            sent_bytes_per_sec: 0.0,
            received_bytes_per_sec: 0.0,
            latency_avg_ns: lat_ns,
            latency_p50_ns: lat_ns,
            latency_p90_ns: lat_ns,
            latency_p99_ns: lat_ns,
        },
        history: (1..=4)
            .map(|i| HistorySample { requests: (rps as u32) * i / 4, errors_5xx: 0, conn_failed: 0, latency_p99_us: 0 })
            .collect(),
        first_seen_unix_ns: now - 60_000_000_000,
        last_seen_unix_ns: now - 100_000_000,
    }
}

fn route(peer: u32, method: &str, path: &str, ok: u64, rps: f64) -> RouteStats {
    RouteStats {
        peer,
        is_other: false,
        method: method.into(),
        path: path.into(),
        requests: ok,
        responses: Responses { class: [0, ok, 0, 0, 0], codes: vec![(200, ok)], codes_other: 0 },
        no_response: 0,
        latency_sum_ns: ok * 2_000_000,
        latency_count: ok,
        latency_p50_ns: 2_000_000,
        latency_p90_ns: 2_000_000,
        latency_p99_ns: 2_000_000,
        requests_per_sec: rps,
        errors_5xx_per_sec: 0.0,
    }
}

fn write_table(path: &Path, published_ns: u64) {
    let now = now_ns();
    let snap = Snapshot {
        meta: ProbeMeta {
            pid: 4242,
            started_unix_ns: now - 3_600_000_000_000,
            published_unix_ns: published_ns,
            interval_ns: 1_000_000_000,
            publish_seq: 3600,
            history_len: 4,
            interfaces: vec!["lo".into()],
            counters: Default::default(),
        },
        peers: vec![
            peer("10.0.1.10:8080", 990, 10, 50.0, 0.5, 2_000_000, now),
            peer("[::1]:9000", 200, 0, 10.0, 0.0, 40_000_000, now),
        ],
        routes: vec![route(0, "GET", "/api/orders", 990, 49.5), route(1, "POST", "/checkout", 200, 10.0)],
        recent: vec![RecentRequest {
            unix_ns: now - 200_000_000,
            peer: "[::1]:9000".parse().unwrap(),
            method: "POST".into(),
            path: "/checkout".into(),
            status: 200,
            latency_ns: 40_000_000,
        }],
    };
    let mut w = TableWriter::create(path, Capacities { max_peers: 16, max_routes: 64, max_recent: 16, history_len: 4 })
        .unwrap();
    w.publish(&snap).unwrap();
}

fn run_once(table: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_upstreamtop")).args(["--once", "--table"]).arg(table).output().unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn table_mode_shows_what_the_probe_published() {
    let dir = TempDir::new("fresh");
    let table = dir.0.join("table");
    write_table(&table, now_ns());
    let (code, out) = run_once(&table);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("60.0 req/s"), "{out}");
    assert!(out.contains("probe up"), "{out}");
    let a = out.lines().find(|l| l.contains("unlisted 10.0.1.10:8080")).unwrap_or_else(|| panic!("{out}"));
    for cell in ["50.0", "83%", "2.0ms", "2xx 99% 5xx 1%"] {
        assert!(a.contains(cell), "`{cell}` not in `{a}`");
    }
    let b = out.lines().find(|l| l.contains("unlisted [::1]:9000")).unwrap_or_else(|| panic!("{out}"));
    assert!(b.contains("10.0") && b.contains("17%") && b.contains("2xx 100%"), "{b}");
    assert!(out.find("10.0.1.10:8080").unwrap() < out.find("[::1]:9000").unwrap(), "ranked by req/s");
    assert!(out.contains("GET     /api/orders"), "{out}");
    assert!(out.contains("POST    /checkout"), "{out}");
    assert!(out.contains("→ [::1]:9000 200 40ms"), "{out}");
}

#[test]
fn table_mode_stale_probe_banner() {
    let dir = TempDir::new("stale");
    let table = dir.0.join("table");
    write_table(&table, now_ns() - 120_000_000_000);
    let (code, out) = run_once(&table);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("probe STALE"), "{out}");
    assert!(out.contains("probe stale — last publish"), "{out}");
}

#[test]
fn table_mode_missing_file() {
    let dir = TempDir::new("missing");
    let (code, out) = run_once(&dir.0.join("nope"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("table unreadable"), "{out}");
    assert!(out.contains("nope"), "{out}");
}
