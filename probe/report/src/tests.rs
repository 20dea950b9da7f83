//! Answers for hand-built snapshots, published to a real table file and
//! rendered the way the module renders them: the configuration join, exact
//! figures, filters, the schema round trip the dashboard relies on, and the
//! golden files that pin the exact text.

use std::net::SocketAddr;

use upstreamtop_table::histogram::{bucket_of, BUCKETS};
use upstreamtop_table::{
    Connections, HistorySample, Latency, PeerStats, ProbeCounters, ProbeMeta, RecentRequest, Responses, RouteStats,
    Snapshot, Window,
};

use serde_json::Value;

use crate::schema::{self as model, Report};
use crate::*;

const SEC: u64 = 1_000_000_000;
const NOW: u64 = 1_700_000_000 * SEC;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn stats(a: &str, requests: u64, rps: f64) -> PeerStats {
    let mut buckets = vec![0u64; BUCKETS];
    // 4 responses at 2 ms, 1 at 20 ms.
    buckets[bucket_of(2_000_000)] = 4;
    buckets[bucket_of(20_000_000)] = 1;
    PeerStats {
        addr: addr(a),
        requests,
        responses: Responses {
            class: [0, requests - 1, 0, 0, 1],
            codes: vec![(200, requests - 1), (502, 1)],
            codes_other: 0,
        },
        no_response: 0,
        sent_bytes: requests * 100,
        received_bytes: requests * 1000,
        conns: Connections { opened: 3, closed: 2, failed: 0, reset: 1, active: 1 },
        latency: Latency { buckets, sum_ns: 28_000_000, count: 5 },
        window: Window {
            requests_per_sec: rps,
            errors_5xx_per_sec: 0.5,
            sent_bytes_per_sec: 0.0,
            received_bytes_per_sec: 0.0,
            latency_avg_ns: 1_500_000,
            latency_p50_ns: 1_000_000,
            latency_p90_ns: 2_000_000,
            latency_p99_ns: 3_000_000,
        },
        history: vec![HistorySample { requests: 4, errors_5xx: 0, conn_failed: 0, latency_p99_us: 2500 }],
        first_seen_unix_ns: NOW - 100 * SEC,
        last_seen_unix_ns: NOW - SEC,
    }
}

fn route(peer: u32, method: &str, path: &str, requests: u64) -> RouteStats {
    RouteStats {
        peer,
        method: method.into(),
        path: path.into(),
        requests,
        responses: Responses { class: [0, requests, 0, 0, 0], codes: vec![(200, requests)], codes_other: 0 },
        latency_sum_ns: requests * 2_000_000,
        latency_count: requests,
        latency_p50_ns: 2_000_000,
        latency_p90_ns: 2_000_000,
        latency_p99_ns: 2_000_000,
        requests_per_sec: requests as f64 / 10.0,
        ..Default::default()
    }
}

fn snapshot() -> Snapshot {
    let mut other = route(0, "", "", 7);
    other.is_other = true;
    Snapshot {
        meta: ProbeMeta {
            pid: 77,
            started_unix_ns: NOW - 100 * SEC,
            published_unix_ns: NOW - SEC / 2,
            interval_ns: SEC,
            publish_seq: 100,
            history_len: 60,
            interfaces: vec!["lo".into()],
            counters: ProbeCounters { events_dropped: 1, route_overflow: 7, ..Default::default() },
        },
        peers: vec![
            stats("127.0.0.1:9001", 10, 3.0),
            stats("[::ffff:127.0.0.1]:9002", 20, 1.0), // mapped: joins 127.0.0.1:9002
            stats("10.9.9.9:80", 5, 0.0),              // unlisted
            stats("127.0.0.1:8080", 1000, 100.0),      // nginx's own listener
        ],
        routes: vec![
            route(0, "GET", "/b", 2),
            route(0, "GET", "/a", 2),
            other,
            route(0, "POST", "/c?secret=1", 6),
            route(1, "GET", "/x", 20),
            route(3, "GET", "/front", 1000),
        ],
        recent: vec![
            RecentRequest {
                unix_ns: NOW - 3 * SEC,
                peer: addr("127.0.0.1:9001"),
                method: "GET".into(),
                path: "/a".into(),
                status: 200,
                latency_ns: 2_000_000,
            },
            RecentRequest {
                unix_ns: NOW - 2 * SEC,
                peer: addr("127.0.0.1:8080"),
                method: "GET".into(),
                path: "/front".into(),
                status: 200,
                latency_ns: 1,
            },
            RecentRequest {
                unix_ns: NOW - SEC,
                peer: addr("10.9.9.9:80"),
                method: "PUT".into(),
                path: "/u".into(),
                status: 0,
                latency_ns: 0,
            },
        ],
    }
}

fn config() -> NginxConfig {
    let server = |name: &str, a: &str, backup: bool, down: bool, weight: u32| ServerConf {
        name: name.into(),
        addr: addr(a),
        backup,
        down,
        weight,
        nginx: PeerState { max_fails: 1, fail_timeout_s: 10, ..PeerState::default() },
    };
    NginxConfig {
        upstreams: vec![
            UpstreamConf {
                name: "api".into(),
                implicit: false,
                scope: Scope::Worker(4242),
                servers: vec![
                    server("localhost:9001", "127.0.0.1:9001", false, false, 3),
                    server("127.0.0.1:9002", "127.0.0.1:9002", true, false, 1),
                    server("spare:9003", "[::1]:9003", false, false, 1), // no traffic
                    server("gone:9004", "127.0.0.1:9004", false, true, 1), // down
                ],
            },
            UpstreamConf {
                name: "127.0.0.1:9001".into(),
                implicit: true,
                scope: Scope::AllWorkers,
                servers: vec![server("127.0.0.1:9001", "127.0.0.1:9001", false, false, 1)],
            },
        ],
        listen: vec![addr("0.0.0.0:8080")],
        nginx_version: "1.22.1".into(),
    }
}

/// `s` published to a table of its own and rendered for `q` at `now`.
fn answer(s: &Snapshot, conf: &NginxConfig, q: &Query, now: u64) -> String {
    let mut t = Table::new("answer");
    t.writer.publish(s).unwrap();
    let view = t.reader.view_if_new(None).unwrap().unwrap();
    String::from_utf8(render(&view, conf, q, now, Vec::new()).body).expect("answers are UTF-8")
}

/// The JSON answer, parsed into the schema (which checks it round-trips).
fn report(s: &Snapshot, conf: &NginxConfig, q: &Query, now: u64) -> Report {
    let text = answer(s, conf, &Query { format: Format::Json, ..q.clone() }, now);
    parse_round_trip(text.as_bytes())
}

/// The Prometheus answer.
fn prometheus(s: &Snapshot, conf: &NginxConfig, q: &Query) -> String {
    answer(s, conf, &Query { format: Format::Prometheus, ..q.clone() }, NOW)
}

/// The sample snapshot's Prometheus answer, for `prometheus.rs`'s tests.
pub fn sample_prometheus(edit: impl FnOnce(&mut Snapshot, &mut NginxConfig), q: &Query) -> String {
    let (mut s, mut c) = (snapshot(), config());
    edit(&mut s, &mut c);
    prometheus(&s, &c, q)
}

/// Parses a JSON answer into the schema and checks that serializing it
/// gives the same value back: every field the writer writes is in the
/// schema, with the type the schema says, and nothing is lost.
fn parse_round_trip(body: &[u8]) -> Report {
    let report: Report = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("answer does not parse into the schema: {e}\n{}", String::from_utf8_lossy(body)));
    let written: Value = serde_json::from_slice(body).unwrap();
    let back = serde_json::to_value(&report).unwrap();
    assert_eq!(back, written, "the answer round-trips through the schema");
    report
}

#[test]
fn config_join() {
    let r = report(&snapshot(), &config(), &Query::default(), NOW);
    assert_eq!(r.upstreams.keys().collect::<Vec<_>>(), vec!["127.0.0.1:9001", "api"]);
    let api = &r.upstreams["api"];
    assert!(!api.implicit);
    assert!(r.upstreams["127.0.0.1:9001"].implicit);
    let servers: Vec<_> = api.peers.iter().map(|p| (p.server.as_str(), p.name.as_str(), p.state.as_str())).collect();
    assert_eq!(
        servers,
        vec![
            ("127.0.0.1:9001", "localhost:9001", "up"),
            ("127.0.0.1:9002", "127.0.0.1:9002", "up"),
            ("[::1]:9003", "spare:9003", "idle"),
            ("127.0.0.1:9004", "gone:9004", "down"),
        ]
    );
    assert_eq!((api.peers[0].weight, api.peers[1].backup, api.peers[3].down), (3, true, true));
    assert!(api.peers.iter().all(|p| p.configured));
    assert_eq!(api.peers[1].requests, 20, "mapped IPv6 joined with the IPv4 server");
    assert_eq!(api.peers[2].requests, 0);
    assert_eq!(api.peers[2].header_time_total, Default::default());
    assert_eq!((api.requests, api.rps), (30, 4.0));
    // The same address in two groups shows the same wire figures.
    assert_eq!(r.upstreams["127.0.0.1:9001"].peers[0].requests, 10);
    // Unlisted: only the unknown peer; the listener is nowhere.
    assert_eq!(r.unlisted.peers.len(), 1);
    let u = &r.unlisted.peers[0];
    assert_eq!(
        (u.server.as_str(), u.name.as_str(), u.configured, u.requests),
        ("10.9.9.9:80", "10.9.9.9:80", false, 5)
    );
    assert_eq!(u.state, "up");
    let json = answer(&snapshot(), &config(), &Query::default(), NOW);
    assert!(!json.contains("8080") && !json.contains("/front"), "listener leaked: {json}");
}

#[test]
fn exact_figures() {
    let r = report(&snapshot(), &config(), &Query { routes: 2, ..Query::default() }, NOW);
    // Totals: the three backends, not nginx's listener.
    assert_eq!(r.totals.requests, 35);
    assert_eq!(r.totals.rps, 4.0);
    assert_eq!(r.totals.errors_rps, 1.5);
    assert_eq!((r.totals.sent, r.totals.received), (3500, 35000));
    assert_eq!(r.totals.responses.c2xx, 32);
    assert_eq!(r.totals.responses.c5xx, 3);
    assert_eq!(r.totals.responses.codes["200"], 32);
    assert_eq!(r.totals.responses.codes["502"], 3);
    assert_eq!(r.totals.responses.total, 35);

    let p = &r.upstreams["api"].peers[0];
    assert_eq!(p.share, 75.0);
    assert_eq!(p.header_time, 1.5);
    assert_eq!(p.header_time_window, model::Percentiles { avg: 1.5, p50: 1.0, p90: 2.0, p99: 3.0 });
    assert_eq!(p.header_time_total.avg, 5.6);
    // p50 falls in the 2 ms bucket (1.8..2.0 ms), p99 in the 20 ms one (18..20 ms).
    assert!(p.header_time_total.p50 > 1.8 && p.header_time_total.p50 <= 2.0, "{:?}", p.header_time_total);
    assert!(p.header_time_total.p99 > 18.0 && p.header_time_total.p99 <= 20.0, "{:?}", p.header_time_total);
    assert_eq!((p.sent, p.received, p.active), (1000, 10000, 1));
    assert_eq!(p.connections, model::Connections { opened: 3, closed: 2, failed: 0, reset: 1 });
    assert_eq!(p.errors_rps, 0.5);
    assert_eq!(p.last_seen, (NOW - SEC) / 1_000_000);
    let h = p.history.as_ref().unwrap();
    assert_eq!((h.rps.clone(), h.errors.clone(), h.p99.clone()), (vec![4.0], vec![0.0], vec![2.5]));
    // Top 2 by requests (ties by path), query string stripped, then "other".
    let routes: Vec<_> = p.routes.iter().map(|r| (r.method.as_str(), r.path.as_str(), r.requests, r.other)).collect();
    assert_eq!(routes, vec![("POST", "/c", 6, false), ("GET", "/a", 2, false), ("", "(other)", 7, true)]);
    assert_eq!(p.routes[0].header_time.avg, 2.0);
    assert_eq!(p.routes[0].rps, 0.6);
    // The cumulative histogram Prometheus gets, at its exact bounds.
    let prom = prometheus(&snapshot(), &config(), &Query::default());
    let l = "upstream=\"api\",server=\"127.0.0.1:9001\"";
    for (le, n) in [("0.0005", 0), ("0.001", 0), ("0.0025", 4), ("0.005", 4), ("0.01", 4), ("0.025", 5), ("+Inf", 5)] {
        let line = format!("upstreamtop_response_header_seconds_bucket{{{l},le=\"{le}\"}} {n}");
        assert!(prom.lines().any(|x| x == line), "{line}");
    }
    assert!(prom.contains(&format!("upstreamtop_response_header_seconds_count{{{l}}} 5\n")));
    assert!(prom.contains(&format!("upstreamtop_response_header_seconds_sum{{{l}}} 0.028\n")));

    // Recent: newest first, listener left out, groups resolved.
    let recent: Vec<_> = r.recent.iter().map(|x| (x.server.as_str(), x.upstream.as_str(), x.status)).collect();
    assert_eq!(recent, vec![("10.9.9.9:80", "", 0), ("127.0.0.1:9001", "api", 200)]);
    assert_eq!(r.recent[1].header_time, 2.0);

    assert_eq!(r.version, SCHEMA_VERSION);
    assert_eq!(r.nginx_version, "1.22.1");
    assert_eq!(r.timestamp, NOW / 1_000_000);
    assert!(r.probe.up && !r.probe.stale);
    assert_eq!((r.probe.pid, r.probe.age_ms, r.probe.interval_ms), (77, 500, 1000));
    assert_eq!(r.probe.drops["events_dropped"], 1);
    assert_eq!(r.probe.overflows["route_overflow"], 7);
}

#[test]
fn query_limits_and_filters() {
    let q = Query { routes: 0, recent: 1, history: false, ..Query::default() };
    let r = report(&snapshot(), &config(), &q, NOW);
    let p = &r.upstreams["api"].peers[0];
    assert_eq!(p.routes.len(), 1, "only the other bucket");
    assert!(p.history.is_none());
    assert!(!answer(&snapshot(), &config(), &q, NOW).contains("\"history\""));
    assert_eq!(r.recent.len(), 1);

    let q = Query { upstream: Some("api".into()), ..Query::default() };
    let r = report(&snapshot(), &config(), &q, NOW);
    assert_eq!(r.upstreams.keys().collect::<Vec<_>>(), vec!["api"]);
    assert!(r.unlisted.peers.is_empty());
    assert_eq!(r.totals.requests, 35, "totals stay global");
    assert_eq!(r.recent.iter().map(|x| x.upstream.as_str()).collect::<Vec<_>>(), vec!["api"]);

    let q = Query { upstream: Some(UNLISTED.into()), ..Query::default() };
    let r = report(&snapshot(), &config(), &q, NOW);
    assert!(r.upstreams.is_empty());
    assert_eq!(r.unlisted.peers.len(), 1);
    assert_eq!(r.recent.len(), 1);
    assert_eq!(r.recent[0].server, "10.9.9.9:80");
}

#[test]
fn empty_config_lists_everything_but_nothing_is_dropped() {
    let r = report(&snapshot(), &NginxConfig::default(), &Query::default(), NOW);
    assert!(r.upstreams.is_empty());
    assert_eq!(r.unlisted.peers.len(), 4, "without listen sockets the front door is just a peer");
    assert_eq!(r.unlisted.peers[0].server, "127.0.0.1:8080");
    assert_eq!(r.unlisted.peers[2].server, "127.0.0.1:9001", "sorted by requests, then address");
}

#[test]
fn a_stale_table_says_so() {
    let mut s = snapshot();
    let r = report(&s, &config(), &Query::default(), NOW);
    assert!(r.probe.up && !r.probe.stale);
    s.meta.published_unix_ns = NOW - 5 * SEC - 1;
    let r = report(&s, &config(), &Query::default(), NOW);
    assert!(!r.probe.up && r.probe.stale);
    assert_eq!(r.probe.age_ms, 5000);
}

#[test]
fn json_round_trip() {
    let json = answer(&snapshot(), &config(), &Query::default(), NOW);
    parse_round_trip(json.as_bytes());
    let v: Value = serde_json::from_str(&json).unwrap();
    let peer = &v["upstreams"]["api"]["peers"][0];
    for field in ["server", "requests", "responses", "sent", "received", "header_time", "active", "state"] {
        assert!(peer.get(field).is_some(), "{field} missing");
    }
    assert_eq!(peer["responses"]["5xx"], 1);
    assert_eq!(peer["responses"]["codes"]["200"], 9);
    assert_eq!(peer["history"]["5xx"], serde_json::json!([0.0]), "the history key is 5xx");
}

#[test]
fn hostile_strings_stay_inside_json() {
    let mut s = snapshot();
    s.routes[0].path = "/\"}],\n<script>\u{0}é".into();
    s.recent[0].method = "G\"E\\T".into();
    let json = answer(&s, &config(), &Query::default(), NOW);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["recent"][1]["method"], "G\"E\\T");
    assert!(!json.contains('\n'));
}

#[test]
fn unavailable_body() {
    let body = unavailable_json("probe not running: /run/upstreamtop/table missing", "/run/upstreamtop/table");
    let u: model::Unavailable = serde_json::from_str(&body).unwrap();
    assert_eq!(u.error, "probe not running: /run/upstreamtop/table missing");
    assert_eq!(u.table, "/run/upstreamtop/table");
    assert!(!u.probe.up);
}

/// 1,000 peers × 16 routes, the endpoint's sizing target: built and
/// rendered once here (the bench measures the time).
pub fn big_snapshot() -> Snapshot {
    let mut s = snapshot();
    s.peers =
        (0..1000u32).map(|i| stats(&format!("10.1.{}.{}:8080", i / 250, i % 250), 1000 + u64::from(i), 1.0)).collect();
    s.routes = (0..1000u32)
        .flat_map(|p| (0..16u64).map(move |r| route(p, "GET", &format!("/api/v1/resource{r}/:id"), 10 + r)))
        .collect();
    s.recent.truncate(0);
    s
}

#[test]
fn renders_a_thousand_peers() {
    let v = report(&big_snapshot(), &config(), &Query { routes: 16, ..Query::default() }, NOW);
    assert_eq!(v.unlisted.peers.len(), 1000);
    assert!(v.unlisted.peers.iter().all(|p| p.routes.len() == 16));
    assert_eq!(v.totals.requests, (1000..2000).sum::<u64>());
}

/// This thread's CPU time, µs: unlike wall time it ignores other processes
/// competing for the cores.
fn cpu_us() -> u128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u128 * 1_000_000 + ts.tv_nsec as u128 / 1000
}

/// A table file under the temp dir holding one publish; removed on drop.
struct Table {
    dir: std::path::PathBuf,
    writer: upstreamtop_table::TableWriter,
    reader: upstreamtop_table::TableReader,
}

impl Table {
    fn new(name: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("upstreamtop-report-{name}-{}-{n}", std::process::id()));
        let path = dir.join("table");
        let caps =
            upstreamtop_table::Capacities { max_peers: 1000, max_routes: 16_000, max_recent: 100, history_len: 60 };
        let writer = upstreamtop_table::TableWriter::create(&path, caps).unwrap();
        Table { dir, writer, reader: upstreamtop_table::TableReader::new(&path) }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Publishes `s` and renders `q`, checking the JSON against the schema.
fn rendered(t: &mut Table, s: &Snapshot, conf: &NginxConfig, q: &Query, now: u64) -> RenderedBody {
    t.writer.publish(s).unwrap();
    let view = t.reader.view_if_new(None).unwrap().unwrap();
    let body = render(&view, conf, q, now, Vec::new());
    if q.format == Format::Json {
        parse_round_trip(&body.body);
    }
    body
}

fn restamp(j: &RenderedBody, now: u64) -> Vec<u8> {
    j.at(now)
        .iter()
        .flat_map(|p| match p {
            BodyPart::Bytes(b) => b.to_vec(),
            BodyPart::Number(n) => n.to_string().into_bytes(),
        })
        .collect()
}

/// Snapshots, configurations and queries the schema and golden tests
/// cover: hostile strings, codes out of order, several overflow buckets,
/// peers without history, duplicate addresses and groups.
fn report_path_cases() -> (Vec<Snapshot>, Vec<NginxConfig>, Vec<Query>) {
    let mut odd = snapshot();
    // Hostile strings, codes out of order / not three digits / repeated,
    // codes_other, two "other" buckets, a peer without history, and the
    // same backend twice (plain and mapped IPv4).
    odd.routes[0].path = "/\"}],\n<script>\u{1}é?q=1".into();
    odd.recent[0].method = "G\"E\\T".into();
    odd.peers[0].responses.codes = vec![(502, 1), (200, 3), (1000, 2), (99, 1), (200, 1)];
    odd.peers[0].responses.codes_other = 4;
    odd.routes[1].responses.codes = vec![(404, 1), (201, 1)];
    // Every class, rate and count away from the zeros the renderer
    // writes as literals.
    odd.routes[1].responses.class = [2, 0, 7, 1, 1];
    odd.routes[1].errors_5xx_per_sec = 0.3333;
    odd.routes[1].no_response = 12;
    odd.routes[1].requests_per_sec = -0.0;
    let mut other2 = route(0, "", "", 3);
    other2.is_other = true;
    other2.responses.codes = vec![(503, 3)];
    odd.routes.push(other2);
    odd.peers[2].history.clear();
    odd.peers.push(stats("[::ffff:10.9.9.9]:80", 6, 2.0));
    odd.routes.push(route(4, "GET", "/dup", 6));
    let mut dup_group = config();
    dup_group.upstreams.push(UpstreamConf {
        name: "api".into(),
        implicit: true,
        scope: Scope::AllWorkers,
        servers: vec![ServerConf {
            name: "again".into(),
            addr: addr("127.0.0.1:9002"),
            backup: false,
            down: false,
            weight: 2,
            nginx: PeerState {
                fails: 3,
                max_fails: 2,
                fail_timeout_s: 30,
                last_failure_s: NOW / SEC - 4,
                in_flight: 2,
                max_conns: 2,
                unavailable: true,
            },
        }],
    });
    let queries = [
        Query::default(),
        Query { routes: 0, ..Query::default() },
        Query { routes: 1, recent: 1, ..Query::default() },
        Query { routes: 16, history: false, ..Query::default() },
        Query { upstream: Some("api".into()), ..Query::default() },
        Query { upstream: Some(UNLISTED.into()), ..Query::default() },
        Query { upstream: Some("nope".into()), ..Query::default() },
    ];
    // A publish interval other than 1 s: history rates go through floats.
    let mut quarter = snapshot();
    quarter.meta.interval_ns = 250_000_000;
    quarter.peers[0].history.push(HistorySample { requests: 7, errors_5xx: 3, conn_failed: 0, latency_p99_us: 1234 });
    (
        vec![snapshot(), odd, quarter, big_snapshot()],
        vec![config(), NginxConfig::default(), dup_group],
        queries.to_vec(),
    )
}

#[test]
fn every_answer_parses_into_the_schema() {
    let mut t = Table::new("schema");
    let (snaps, confs, queries) = report_path_cases();
    for s in &snaps {
        for conf in &confs {
            for q in &queries {
                rendered(&mut t, s, conf, q, NOW);
            }
        }
    }
}

#[test]
fn a_body_restamps_to_a_later_render() {
    let mut t = Table::new("restamp");
    let later = NOW + 1_234_567_891;
    let j = rendered(&mut t, &snapshot(), &config(), &Query::default(), NOW);
    assert!(!j.clock_dependent);
    t.writer.publish(&snapshot()).unwrap();
    let view = t.reader.view_if_new(None).unwrap().unwrap();
    assert_eq!(restamp(&j, later), render(&view, &config(), &Query::default(), later, Vec::new()).body);
    assert_eq!(restamp(&j, NOW), j.body);
    // Into a recycled buffer (the module hands back old bodies): the same
    // body, whatever the buffer held.
    let dirty = vec![b'x'; j.body.len() * 2 + 17];
    assert_eq!(render(&view, &config(), &Query::default(), NOW, dirty).body, j.body);
    // Prometheus has no clock figures: its parts are the body.
    let prom = Query { format: Format::Prometheus, ..Query::default() };
    let p = render(&view, &config(), &prom, NOW, Vec::new());
    assert_eq!(restamp(&p, later), p.body);
    // A peer without history is judged against the clock: not reusable.
    let mut s = snapshot();
    s.peers[0].history.clear();
    assert!(rendered(&mut t, &s, &config(), &Query::default(), NOW).clock_dependent);
}

#[test]
fn synthetic_snapshot_renders() {
    let mut t = Table::new("synthetic");
    let s = bench::synthetic_snapshot(50, 16);
    assert_eq!((s.peers.len(), s.routes.len(), s.recent.len()), (50, 800, 100));
    let now = s.meta.published_unix_ns + 1000;
    let j = rendered(&mut t, &s, &NginxConfig::default(), &Query { routes: 16, ..Query::default() }, now);
    let v = parse_round_trip(&j.body);
    assert_eq!(v.unlisted.peers.len(), 50);
    assert_eq!(v.totals.requests, s.peers.iter().map(|p| p.requests).sum::<u64>());
}

/// `cargo test --release -p upstreamtop-report endpoint_timing -- --ignored --nocapture`
#[test]
#[ignore]
fn endpoint_timing() {
    let dir = bench::table_dir().join(format!("upstreamtop-endpoint-timing-{}", std::process::id()));
    for routes in [10, 16] {
        let c = bench::endpoint_cost(&dir.join("table"), 1000, routes, 200).unwrap();
        let ((f50, f99), (c50, c99)) = (c.fresh_p50_p99(), c.cached_p50_p99());
        eprintln!(
            "1000 peers × {routes} routes, {} bytes: fresh publish read+render p50 {f50} µs p99 {f99} µs; cached p50 {c50} µs p99 {c99} µs (wall, 200 each)",
            c.body_bytes
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The module's path alone (read + render of fresh publishes), in a loop
/// for `perf record`: `PEERS` (1000) × 16 routes, `?routes=QROUTES` (16),
/// history unless `QHISTORY=0`, `ROUNDS` (300) renders, each after a fresh
/// publish with `PUBLISH=1` (as the benchmark); the table in `TMPDIR`:
/// `cargo test --release -p upstreamtop-report view_profile -- --ignored --nocapture`
#[test]
#[ignore]
fn view_profile() {
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let mut t = Table::new("profile");
    let s = bench::synthetic_snapshot(env("PEERS", 1000) as u32, 16);
    t.writer.publish(&s).unwrap();
    let conf = NginxConfig::default();
    let q = Query { routes: env("QROUTES", 16), history: env("QHISTORY", 1) == 1, ..Query::default() };
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let mut spare = Vec::new();
    let (mut v, mut r) = (u128::MAX, u128::MAX);
    let republish = env("PUBLISH", 0) == 1;
    let mut walls = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        if republish {
            t.writer.publish(&s).unwrap();
        }
        let wall = std::time::Instant::now();
        let a = cpu_us();
        let view = t.reader.view_if_new(None).unwrap().unwrap();
        let b = cpu_us();
        let j = render(&view, &conf, &q, s.meta.published_unix_ns, std::mem::take(&mut spare));
        let c = cpu_us();
        walls.push(wall.elapsed().as_micros());
        v = v.min(b - a);
        r = r.min(c - b);
        spare = j.body;
    }
    walls.sort_unstable();
    let wall = |q: f64| walls[((walls.len() - 1) as f64 * q) as usize];
    eprintln!(
        "view {v} µs + render {r} µs, CPU min of {rounds}; wall p10 {} p50 {} p90 {} p99 {} µs",
        wall(0.1),
        wall(0.5),
        wall(0.9),
        wall(0.99)
    );
}

/// FNV-1a, 64 bits: a short, stable fingerprint of a body for the golden
/// matrix (whole bodies of the bigger cases would be megabytes of fixtures).
fn fnv64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3))
}

/// Every body of the report-path matrix, named: `(name, bytes)`.
fn golden_bodies() -> Vec<(String, Vec<u8>)> {
    let mut t = Table::new("golden");
    let (snaps, confs, mut queries) = report_path_cases();
    queries.push(Query { route_labels: false, ..Query::default() });
    let mut out = Vec::new();
    for (si, s) in snaps.iter().enumerate() {
        t.writer.publish(s).unwrap();
        let view = t.reader.view_if_new(None).unwrap().unwrap();
        for (ci, conf) in confs.iter().enumerate() {
            for (qi, q) in queries.iter().enumerate() {
                let name = format!("snap{si}-conf{ci}-query{qi}");
                out.push((format!("{name}.json"), render(&view, conf, q, NOW, Vec::new()).body));
                // A scrape without `?routes=` gets every route.
                let routes = if qi == 0 { usize::MAX } else { q.routes };
                let pq = Query { format: Format::Prometheus, routes, ..q.clone() };
                out.push((format!("{name}.prom"), render(&view, conf, &pq, NOW, Vec::new()).body));
            }
        }
    }
    out
}

/// The answers for the report-path matrix, held to the files in
/// `tests/golden/`: `sample.json` and `sample.prom` in full (the sample
/// table, the sample configuration, default queries) and every case's
/// length and fingerprint in `matrix.txt`. A change to the output is a
/// change to these files, reviewed as such: regenerate them with
/// `UPDATE_GOLDEN=1 cargo test -p upstreamtop-report golden`.
#[test]
fn golden_answers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bodies = golden_bodies();
    let matrix: String = bodies.iter().map(|(n, b)| format!("{n} {} {:016x}\n", b.len(), fnv64(b))).collect();
    let full = |name: &str| bodies.iter().find(|(n, _)| n == name).map(|(_, b)| b.clone()).unwrap();
    let files = [
        ("matrix.txt", matrix.into_bytes()),
        ("sample.json", full("snap0-conf0-query0.json")),
        ("sample.prom", full("snap0-conf0-query0.prom")),
    ];
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (f, b) in &files {
            std::fs::write(dir.join(f), b).unwrap();
        }
    }
    for (f, b) in &files {
        let want = std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e} (UPDATE_GOLDEN=1 writes it)"));
        if *b != want {
            let at = b.iter().zip(&want).position(|(x, y)| x != y).unwrap_or(b.len().min(want.len()));
            panic!(
                "{f} differs at byte {at}:\n got  …{}\n want …{}",
                String::from_utf8_lossy(&b[at.saturating_sub(60)..(at + 60).min(b.len())]),
                String::from_utf8_lossy(&want[at.saturating_sub(60)..(at + 60).min(want.len())])
            );
        }
    }
}

/// Every field name a JSON answer can hold is in `docs/json.md`: the
/// field reference users read cannot fall behind the schema.
#[test]
fn docs_name_every_field() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/json.md")).unwrap();
    // Words inside backticks: `peer responses.{1xx,2xx}` gives responses, 1xx, 2xx.
    let named: std::collections::HashSet<&str> = doc
        .split('`')
        .skip(1)
        .step_by(2)
        .flat_map(|code| code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| !w.is_empty())
        .collect();
    // An answer with every optional field present.
    let (mut snaps, _, _) = report_path_cases();
    let odd = snaps.swap_remove(1);
    let v: Value = serde_json::from_str(&answer(&odd, &config(), &Query::default(), NOW)).unwrap();
    fn walk<'a>(v: &'a Value, data_keys: bool, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if !data_keys {
                        out.push(k);
                    }
                    // Group names and status codes are data, not fields.
                    walk(x, k == "upstreams" || k == "codes", out);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, false, out)),
            _ => {}
        }
    }
    let mut keys = Vec::new();
    walk(&v, false, &mut keys);
    assert!(keys.contains(&"codes_other") && keys.contains(&"history"), "the sample holds the optional fields");
    let missing: std::collections::BTreeSet<_> = keys.into_iter().filter(|k| !named.contains(k)).collect();
    assert!(missing.is_empty(), "docs/json.md does not name {missing:?}");
}

/// A backend listed by two groups is counted once: in the `upstream {}`
/// block, not the implicit group of `proxy_pass http://IP:port`; groups and
/// unlisted add up to the totals, and so do the Prometheus counters.
#[test]
fn sums_count_each_backend_once() {
    let r = report(&snapshot(), &config(), &Query::default(), NOW);
    let groups: u64 = r.upstreams.values().map(|u| u.requests).sum();
    assert_eq!(groups + r.unlisted.requests, r.totals.requests);
    assert_eq!(r.upstreams["api"].requests, 30);
    assert_eq!(r.upstreams["127.0.0.1:9001"].requests, 0, "counted in api");
    let shared = &r.upstreams["127.0.0.1:9001"].peers[0];
    assert_eq!((shared.counted_in.as_str(), shared.requests), ("api", 10), "shown with its figures");
    assert_eq!(r.upstreams["api"].peers[0].counted_in, "api");
    assert_eq!(r.unlisted.peers[0].counted_in, UNLISTED);

    let prom = prometheus(&snapshot(), &config(), &Query::default());
    let sum: u64 = prom
        .lines()
        .filter(|l| l.starts_with("upstreamtop_requests_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(sum, r.totals.requests, "sum(upstreamtop_requests_total)\n{prom}");
    for line in [
        "upstreamtop_upstream_peer{upstream=\"api\",server=\"127.0.0.1:9001\"} 1",
        "upstreamtop_upstream_peer{upstream=\"127.0.0.1:9001\",server=\"127.0.0.1:9001\"} 1",
    ] {
        assert!(prom.lines().any(|l| l == line), "{line}");
    }
    assert!(!prom.contains("upstreamtop_requests_total{upstream=\"127.0.0.1:9001\""), "{prom}");
}

/// nginx's view beside the wire's: state and its side, the balancer's
/// figures, the failures the wire saw in `fail_timeout`, keepalive reuse
/// and the diagnosis.
#[test]
fn nginx_view_beside_the_wire() {
    let (_, confs, _) = report_path_cases();
    let mut s = snapshot();
    s.peers[1].history = vec![HistorySample { requests: 0, errors_5xx: 0, conn_failed: 2, latency_p99_us: 0 }; 3];
    let r = report(&s, &confs[2], &Query::default(), NOW);
    let api = &r.upstreams["api"];
    assert_eq!((api.scope.as_str(), api.worker_pid), ("worker", 4242));
    assert_eq!(r.upstreams["127.0.0.1:9001"].scope, "all_workers");
    assert_eq!(r.unlisted.scope, "none");

    let up = &api.peers[0];
    assert_eq!((up.state.as_str(), up.state_from.as_str()), ("up", "wire"));
    let n = up.nginx.as_ref().unwrap();
    assert_eq!((n.fails, n.max_fails, n.fail_timeout_ms, n.in_flight, n.max_conns), (0, 1, 10_000, 0, 0));
    assert_eq!(up.diagnosis, "");
    // 10 requests over 3 opened connections.
    assert_eq!(up.keepalive, model::Keepalive { requests_per_connection: 3.333, new_connection_pct: 30.0 });

    let down = api.peers.iter().find(|p| p.down).unwrap();
    assert_eq!((down.state.as_str(), down.state_from.as_str()), ("down", "nginx"));
    assert!(down.diagnosis.starts_with("configured down"), "{}", down.diagnosis);

    let out = api.peers.iter().find(|p| p.name == "again").unwrap();
    assert_eq!((out.state.as_str(), out.state_from.as_str()), ("unavail", "nginx"));
    let n = out.nginx.as_ref().unwrap();
    assert_eq!((n.fails, n.max_fails, n.in_flight, n.max_conns), (3, 2, 2, 2));
    assert_eq!(n.last_failure, (NOW / SEC - 4) * 1000);
    assert_eq!(n.wire_failed_connects, 6, "three 1 s intervals within fail_timeout 30 s");
    assert_eq!(
        out.diagnosis,
        "nginx took it out of rotation: 3 failures counted (max_fails 2, fail_timeout 30 s); the wire saw 6 failed \
         connects in the last 30 s, and 1 resets and 0 exchanges without a response since the probe started"
    );
    assert!(r.unlisted.peers[0].nginx.is_none());
    let idle = api.peers.iter().find(|p| p.server == "[::1]:9003").unwrap();
    assert_eq!(idle.diagnosis, "no request seen on the wire yet");

    let prom = prometheus(&s, &confs[2], &Query::default());
    for line in [
        "upstreamtop_peer_state{upstream=\"api\",server=\"127.0.0.1:9001\"} 1",
        "upstreamtop_peer_state{upstream=\"api\",server=\"127.0.0.1:9004\"} 3",
        "upstreamtop_nginx_fails{upstream=\"api\",server=\"127.0.0.1:9001\"} 0",
        "upstreamtop_nginx_max_fails{upstream=\"api\",server=\"127.0.0.1:9001\"} 1",
    ] {
        assert!(prom.lines().any(|l| l == line), "{line}\n{prom}");
    }
}
