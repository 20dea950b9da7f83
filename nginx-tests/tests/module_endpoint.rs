//! The module inside a real (vendored) nginx: the status endpoint, the join
//! with nginx's own upstream configuration, bad tables, bad directives and
//! reloads.
//!
//! The table is written here with `TableWriter` from a hand-built
//! `Snapshot`: its numbers are the ground truth the answer must repeat
//! exactly, and the nginx config around it decides which group each peer
//! lands in. Nothing in nginx is mocked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nginx_tests::http;
use nginx_tests::nginx::{check_config, Nginx, NginxConf};
use serde_json::Value;
use upstreamtop_table::histogram::{bucket_of, BUCKETS};
use upstreamtop_table::{Capacities, Latency, PeerStats, ProbeMeta, Responses, RouteStats, Snapshot, TableWriter};

/// Backend ports in the config; nothing listens there and nothing needs to:
/// the answer is built from the table, not from live traffic.
const APP_1: &str = "127.0.0.1:19101"; // weight 3, traffic
const APP_2: &str = "127.0.0.1:19102"; // configured, no traffic
const APP_BACKUP: &str = "127.0.0.1:19103"; // backup, traffic
const APP_DOWN: &str = "127.0.0.1:19104"; // down
const IMPLICIT: &str = "127.0.0.1:19105"; // proxy_pass http://IP:port
const UNLISTED: &str = "127.0.0.1:19109"; // on the wire, in no group
const V6_PEER: &str = "[::1]:19106"; // second group, IPv6

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn responses(codes: &[(u16, u64)]) -> Responses {
    let mut class = [0u64; 5];
    for &(code, n) in codes {
        class[usize::from(code / 100) - 1] += n;
    }
    Responses { class, codes: codes.to_vec(), codes_other: 0 }
}

fn latency(samples_ms: &[(u64, u64)]) -> Latency {
    let mut buckets = vec![0u64; BUCKETS];
    let (mut sum_ns, mut count) = (0, 0);
    for &(ms, n) in samples_ms {
        buckets[bucket_of(ms * 1_000_000)] += n;
        sum_ns += ms * 1_000_000 * n;
        count += n;
    }
    Latency { buckets, sum_ns, count }
}

fn peer(a: SocketAddr, codes: &[(u16, u64)], now: u64) -> PeerStats {
    let requests = codes.iter().map(|c| c.1).sum();
    PeerStats {
        addr: a,
        requests,
        responses: responses(codes),
        no_response: 0,
        sent_bytes: requests * 100,
        received_bytes: requests * 1000,
        conns: Default::default(),
        latency: latency(&[(5, requests)]),
        window: Default::default(),
        history: Vec::new(),
        first_seen_unix_ns: now - 30_000_000_000,
        last_seen_unix_ns: now - 1_000_000_000,
    }
}

fn route(peer: u32, method: &str, path: &str, codes: &[(u16, u64)]) -> RouteStats {
    RouteStats {
        peer,
        method: method.into(),
        path: path.into(),
        requests: codes.iter().map(|c| c.1).sum(),
        responses: responses(codes),
        ..Default::default()
    }
}

/// The ground truth: what a probe would have seen. `listener` is nginx's
/// own address (a client talking to nginx), which must not show up as a
/// backend anywhere.
fn snapshot(listener: SocketAddr) -> Snapshot {
    let now = now_ns();
    Snapshot {
        meta: ProbeMeta {
            pid: 4242,
            started_unix_ns: now - 60_000_000_000,
            published_unix_ns: now,
            // Long interval: the table must not turn stale while a slow test
            // machine runs the test.
            interval_ns: 300_000_000_000,
            publish_seq: 7,
            history_len: 4,
            interfaces: vec!["lo".into()],
            counters: Default::default(),
        },
        peers: vec![
            peer(addr(APP_1), &[(200, 90), (404, 3), (503, 7)], now),
            peer(addr(APP_BACKUP), &[(200, 4)], now),
            peer(addr(IMPLICIT), &[(201, 5)], now),
            peer(addr(UNLISTED), &[(200, 6), (502, 1)], now),
            peer(listener, &[(200, 11)], now),
            peer(addr(V6_PEER), &[(200, 2)], now),
        ],
        routes: vec![
            route(0, "GET", "/api/orders/:id", &[(200, 60), (503, 7)]),
            route(0, "POST", "/api/orders", &[(200, 30), (404, 3)]),
            route(1, "GET", "/", &[(200, 4)]),
            route(2, "PUT", "/items/:id", &[(201, 5)]),
            route(3, "GET", "/x", &[(200, 6), (502, 1)]),
        ],
        recent: Vec::new(),
    }
}

fn caps() -> Capacities {
    Capacities { max_peers: 32, max_routes: 64, max_recent: 16, history_len: 4 }
}

fn write_table(path: &Path, snap: &Snapshot) {
    let mut writer = TableWriter::create(path, caps()).unwrap();
    writer.publish(snap).unwrap();
}

/// nginx with the module, two explicit groups and one implicit one. The
/// table lives in the returned temp dir (not written yet).
fn start(workers: u32) -> (Nginx, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table");
    let conf = NginxConf::vendored_with_module()
        .unwrap()
        .workers(workers)
        .table(&table)
        .upstream(
            "app",
            &[
                format!("server {APP_1} weight=3"),
                format!("server {APP_2}"),
                format!("server {APP_BACKUP} backup"),
                format!("server {APP_DOWN} down"),
                "zone app 64k".to_owned(),
            ],
        )
        // Other balancers keep the round-robin peer list the module reads.
        .upstream("v6", &[format!("server {V6_PEER}"), "hash $request_uri consistent".into(), "keepalive 8".into()])
        .extra_server(&format!("location /direct/ {{ proxy_pass http://{IMPLICIT}; }}"))
        .extra_server("location = /metrics { upstreamtop_status prometheus; }")
        .extra_server("location = /private { upstreamtop_status; deny all; }")
        .extra_server("location = /metrics-lean { upstreamtop_status prometheus noroutes; }")
        .extra_server("location = /page { upstreamtop_status html; }");
    let nginx = Nginx::start(conf).unwrap();
    (nginx, dir, table)
}

fn get_json(nginx: &Nginx, path: &str) -> (u16, Value, http::Response) {
    let resp = http::get(&nginx.url(path)).unwrap();
    let body: Value = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("{path}: body is not JSON ({e}): {}", resp.text()));
    (resp.status, body, resp)
}

fn find_peer<'a>(group: &'a Value, server: &str) -> Option<&'a Value> {
    group["peers"].as_array()?.iter().find(|p| p["server"] == server)
}

/// Every `server` string anywhere in the answer's groups and unlisted.
fn all_servers(report: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for group in report["upstreams"].as_object().unwrap().values().chain([&report["unlisted"]]) {
        for p in group["peers"].as_array().unwrap() {
            out.push(p["server"].as_str().unwrap().to_owned());
        }
    }
    out
}

fn assert_healthy(nginx: &Nginx) {
    let problems = nginx.error_log_problems();
    assert!(problems.is_empty(), "error log problems: {problems:#?}");
    let health = http::get(&nginx.url("/health")).unwrap();
    assert_eq!(health.status, 200, "another location must keep serving");
}

#[test]
fn json_joins_table_with_upstream_config() {
    let (nginx, _dir, table) = start(1);
    write_table(&table, &snapshot(nginx.addr()));

    let (status, report, resp) = get_json(&nginx, "/upstreamtop");
    assert_eq!(status, 200, "{report}");
    assert_eq!(resp.header("Content-Type"), Some("application/json"));
    assert_eq!(resp.header("Cache-Control"), Some("no-store"));
    assert_eq!(report["nginx_version"], "1.28.3");
    assert_eq!(report["probe"]["pid"], 4242);

    let groups = report["upstreams"].as_object().unwrap();
    let mut names: Vec<&str> = groups.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["127.0.0.1:19105", "app", "v6"], "{report:#}");

    let app = &groups["app"];
    assert_eq!(app["implicit"], false);
    assert_eq!(app["requests"], 104, "APP_1 100 + backup 4");
    let p1 = find_peer(app, APP_1).expect("APP_1 in app");
    assert_eq!(p1["configured"], true);
    assert_eq!(p1["weight"], 3);
    assert_eq!(p1["backup"], false);
    assert_eq!(p1["requests"], 100);
    assert_eq!(p1["responses"]["codes"]["200"], 90);
    assert_eq!(p1["responses"]["codes"]["404"], 3);
    assert_eq!(p1["responses"]["codes"]["503"], 7);
    assert_eq!(p1["responses"]["2xx"], 90);
    assert_eq!(p1["responses"]["5xx"], 7);
    assert_eq!(p1["sent"], 10_000);
    assert_eq!(p1["received"], 100_000);
    let routes = p1["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 2, "{p1:#}");

    let idle = find_peer(app, APP_2).expect("configured server without traffic is listed");
    assert_eq!(idle["configured"], true);
    assert_eq!(idle["requests"], 0);
    assert_eq!(idle["weight"], 1);

    let backup = find_peer(app, APP_BACKUP).expect("backup server listed");
    assert_eq!(backup["backup"], true);
    assert_eq!(backup["requests"], 4);

    let down = find_peer(app, APP_DOWN).expect("down server listed");
    assert_eq!(down["down"], true);
    assert_eq!(down["state"], "down");
    assert_eq!(down["requests"], 0);

    let implicit = &groups["127.0.0.1:19105"];
    assert_eq!(implicit["implicit"], true);
    let ip = find_peer(implicit, IMPLICIT).expect("implicit group's peer");
    assert_eq!(ip["requests"], 5);
    assert_eq!(ip["responses"]["codes"]["201"], 5);
    assert_eq!(ip["weight"], 1);
    assert_eq!(ip["name"], IMPLICIT, "as written in proxy_pass");

    let v6 = find_peer(&groups["v6"], "[::1]:19106").expect("IPv6 peer in v6");
    assert_eq!(v6["requests"], 2);

    let unlisted = find_peer(&report["unlisted"], UNLISTED).expect("unlisted peer kept");
    assert_eq!(unlisted["configured"], false);
    assert_eq!(unlisted["requests"], 7);
    assert_eq!(unlisted["responses"]["codes"]["502"], 1);

    let listener = nginx.addr().to_string();
    assert!(
        !all_servers(&report).contains(&listener),
        "nginx's own listener {listener} must not appear as a backend: {report:#}"
    );
    assert_eq!(report["totals"]["requests"], 100 + 4 + 5 + 7 + 2, "listener traffic excluded");
    assert_healthy(&nginx);
}

#[test]
fn query_arguments_filter_the_answer() {
    let (nginx, _dir, table) = start(1);
    write_table(&table, &snapshot(nginx.addr()));

    let (status, report, _) = get_json(&nginx, "/upstreamtop?upstream=app");
    assert_eq!(status, 200, "{report}");
    let names: Vec<&String> = report["upstreams"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["app"]);

    let (status, report, _) = get_json(&nginx, "/upstreamtop?routes=1");
    assert_eq!(status, 200, "{report}");
    let p1 = find_peer(&report["upstreams"]["app"], APP_1).unwrap();
    let routes = p1["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 1, "{p1:#}");
    assert_eq!(routes[0]["requests"], 67, "the busiest route first: {routes:#?}");

    let (status, report, _) = get_json(&nginx, "/upstreamtop?history=0");
    assert_eq!(status, 200, "{report}");
    let p1 = find_peer(&report["upstreams"]["app"], APP_1).unwrap();
    assert!(p1.get("history").is_none(), "history left out: {p1:#}");
    let (_, report, _) = get_json(&nginx, "/upstreamtop");
    let p1 = find_peer(&report["upstreams"]["app"], APP_1).unwrap();
    assert!(p1.get("history").is_some(), "history by default: {p1:#}");

    let (status, body, _) = get_json(&nginx, "/upstreamtop?routes=lots");
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("routes"), "{body}");
    let (status, body, _) = get_json(&nginx, "/upstreamtop?format=xml");
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("format"), "{body}");
    assert_healthy(&nginx);
}

#[test]
fn prometheus_format_from_query_or_directive() {
    let (nginx, _dir, table) = start(1);
    write_table(&table, &snapshot(nginx.addr()));
    for path in ["/upstreamtop?format=prometheus", "/metrics"] {
        let resp = http::get(&nginx.url(path)).unwrap();
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        assert_eq!(resp.header("Content-Type"), Some("text/plain; version=0.0.4; charset=utf-8"));
        assert_eq!(resp.header("Cache-Control"), Some("no-store"));
        let text = resp.text();
        let line = text
            .lines()
            .find(|l| !l.starts_with('#') && l.contains("127.0.0.1:19101") && l.contains("code=\"503\""))
            .unwrap_or_else(|| panic!("{path}: no 503 series for APP_1:\n{text}"));
        assert!(line.ends_with(" 7"), "{line}");
    }
    // Route series are there by default and gone with `noroutes`.
    let with_routes = http::get(&nginx.url("/metrics")).unwrap().text();
    assert!(with_routes.contains("route=\"/api/orders/:id\""), "{with_routes}");
    let lean = http::get(&nginx.url("/metrics-lean")).unwrap();
    assert_eq!(lean.status, 200);
    assert!(!lean.text().contains("route="), "noroutes: {}", lean.text());
    assert!(lean.text().contains("127.0.0.1:19101"), "peers still there: {}", lean.text());
    // ?format=json overrides the directive's prometheus.
    let (status, _, resp) = get_json(&nginx, "/metrics?format=json");
    assert_eq!(status, 200);
    assert_eq!(resp.header("Content-Type"), Some("application/json"));
}

/// Every answer names its publish in a weak `ETag`; a poller that sends
/// it back gets `304 Not Modified` and no body until the probe publishes
/// again. (One worker: groups without a `zone` show each worker's own
/// balancer state, so two workers may answer different figures and tags.)
#[test]
fn etag_and_if_none_match() {
    let (nginx, _dir, table) = start(1);
    let mut snap = snapshot(nginx.addr());
    write_table(&table, &snap);
    let get = |path: &str, tag: Option<&str>| {
        let mut req = http::Request::get(path);
        if let Some(t) = tag {
            req = req.header("If-None-Match", t);
        }
        http::Client::new(nginx.addr()).send(&req).unwrap()
    };
    for path in ["/upstreamtop", "/metrics", "/upstreamtop?routes=2"] {
        let first = get(path, None);
        assert_eq!(first.status, 200, "{path}: {}", first.text());
        let tag = first.header("ETag").unwrap_or_else(|| panic!("{path}: no ETag")).to_owned();
        assert!(tag.starts_with("W/\"") && tag.ends_with('"'), "{path}: weak tag: {tag}");
        // Fresh connections: the tag holds across them.
        for _ in 0..4 {
            let again = get(path, Some(&tag));
            assert_eq!(again.status, 304, "{path}: {}", again.text());
            assert!(again.body.is_empty(), "{path}: a 304 has no body");
            assert_eq!(again.header("ETag"), Some(tag.as_str()));
        }
        let other = get(path, Some("W/\"0000000000000000\""));
        assert_eq!(other.status, 200, "{path}: another tag gets the answer");
        assert_eq!(other.header("ETag"), Some(tag.as_str()));
    }
    // A different query is a different answer: a different tag.
    let a = get("/upstreamtop", None).header("ETag").unwrap().to_owned();
    let b = get("/upstreamtop?routes=2", None).header("ETag").unwrap().to_owned();
    assert_ne!(a, b);
    assert_eq!(get("/upstreamtop?routes=2", Some(&a)).status, 200);
    // A new publish: a new tag, and the old one gets the full answer.
    snap.meta.publish_seq += 1;
    snap.meta.published_unix_ns = now_ns();
    write_table(&table, &snap);
    let fresh = get("/upstreamtop", Some(&a));
    assert_eq!(fresh.status, 200, "{}", fresh.text());
    assert_ne!(fresh.header("ETag"), Some(a.as_str()));
    // Errors carry no tag.
    let bad = get("/upstreamtop?routes=x", None);
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header("ETag"), None);
    assert_healthy(&nginx);
}

/// The page for browsers: asked for by `?format=html`, by the directive,
/// or by `Accept: text/html` without a format; everything else keeps its
/// format. The page carries a strict policy and loads without a table.
#[test]
fn html_page_by_format_directive_or_accept() {
    let (nginx, _dir, table) = start(1);
    let get = |path: &str, accept: Option<&str>| {
        let mut req = http::Request::get(path);
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        http::Client::new(nginx.addr()).send(&req).unwrap()
    };
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    // No table yet: the page still loads (it shows the JSON's 503 itself).
    for (path, accept) in [("/upstreamtop?format=html", None), ("/page", None), ("/upstreamtop", Some(browser))] {
        let resp = get(path, accept);
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.header("Content-Type"), Some("text/html; charset=utf-8"), "{path}");
        assert_eq!(resp.header("X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(resp.header("Cache-Control"), Some("no-store"));
        let csp = resp.header("Content-Security-Policy").unwrap_or_else(|| panic!("{path}: no CSP"));
        assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(csp.contains("script-src 'sha256-") && !csp.contains("unsafe"), "{csp}");
        assert!(resp.text().starts_with("<!doctype html>"), "{path}");
    }
    write_table(&table, &snapshot(nginx.addr()));
    for (path, accept, want) in [
        ("/upstreamtop", None, "application/json"),
        ("/upstreamtop", Some("*/*"), "application/json"),
        ("/upstreamtop", Some("application/json"), "application/json"),
        ("/upstreamtop?format=json", Some(browser), "application/json"),
        ("/metrics", Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1"), "text/plain; version=0.0.4; charset=utf-8"),
        ("/page?format=prometheus", Some(browser), "text/plain; version=0.0.4; charset=utf-8"),
    ] {
        let resp = get(path, accept);
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.header("Content-Type"), Some(want), "{path} {accept:?}");
        assert_eq!(resp.header("Content-Security-Policy"), None, "{path}");
        assert_eq!(resp.header("Vary"), Some("Accept"));
    }
    assert_healthy(&nginx);
}

#[test]
fn methods_and_access_control() {
    let (nginx, _dir, table) = start(1);
    write_table(&table, &snapshot(nginx.addr()));
    let resp = http::post(&nginx.url("/upstreamtop"), "x=1").unwrap();
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("Allow"), Some("GET, HEAD"));
    let mut client = nginx.client();
    let head = client.send(&http::Request::new("HEAD", "/upstreamtop")).unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    // nginx's own access phase runs before the content handler.
    let denied = http::get(&nginx.url("/private")).unwrap();
    assert_eq!(denied.status, 403);
    assert_healthy(&nginx);
}

#[test]
fn missing_table_is_503_with_reason() {
    let (nginx, _dir, table) = start(1);
    let (status, body, resp) = get_json(&nginx, "/upstreamtop");
    assert_eq!(status, 503, "{body}");
    assert_eq!(resp.header("Cache-Control"), Some("no-store"));
    let text = body.to_string();
    assert!(text.contains(&table.display().to_string()), "names the table: {text}");
    assert!(text.contains("missing") || text.contains("not running"), "says why: {text}");
    assert_healthy(&nginx);

    // The probe starts later: the same worker picks the table up.
    write_table(&table, &snapshot(nginx.addr()));
    let (status, body, _) = get_json(&nginx, "/upstreamtop");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn stale_table_is_503() {
    let (nginx, _dir, table) = start(1);
    let mut snap = snapshot(nginx.addr());
    snap.meta.interval_ns = 1_000_000_000;
    snap.meta.published_unix_ns = now_ns() - 600_000_000_000;
    write_table(&table, &snap);
    let (status, body, _) = get_json(&nginx, "/upstreamtop");
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("probe stale: last publish 60"), "{body}");
    assert_healthy(&nginx);
}

#[test]
fn corrupt_tables_are_503_and_workers_survive() {
    let (nginx, _dir, table) = start(2);
    let workers = nginx.worker_pids();
    let good = {
        write_table(&table, &snapshot(nginx.addr()));
        std::fs::read(&table).unwrap()
    };

    let mut wrong_version = good.clone();
    wrong_version[8..12].copy_from_slice(&999u32.to_le_bytes());
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..good.len())
        .map(|_| {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            rng_state as u8
        })
        .collect();
    let mut bad_magic_random_rest = random.clone();
    bad_magic_random_rest[..8].copy_from_slice(b"NOTATABL");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", random),
        ("bad magic", bad_magic_random_rest),
        ("wrong version", wrong_version),
        ("truncated header", good[..100].to_vec()),
        ("truncated body", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in cases {
        // Replace by rename, as the probe does, so every worker sees a new inode.
        let tmp = table.with_extension("tmp");
        std::fs::write(&tmp, &bytes).unwrap();
        std::fs::rename(&tmp, &table).unwrap();
        // Several requests so both workers (likely) get one.
        for _ in 0..4 {
            let resp = http::get(&nginx.url("/upstreamtop")).unwrap();
            assert_eq!(resp.status, 503, "{what}: {}", resp.text());
            let body: Value = serde_json::from_slice(&resp.body)
                .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", resp.text()));
            assert!(body.to_string().contains(&table.display().to_string()), "{what}: {body}");
        }
        assert_healthy(&nginx);
    }
    assert_eq!(nginx.worker_pids(), workers, "no worker restarted");

    // And back to a good table.
    write_table(&table, &snapshot(nginx.addr()));
    let (status, body, _) = get_json(&nginx, "/upstreamtop");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn reload_keeps_answering() {
    let (mut nginx, _dir, table) = start(2);
    write_table(&table, &snapshot(nginx.addr()));
    let (status, before, _) = get_json(&nginx, "/upstreamtop");
    assert_eq!(status, 200, "{before}");
    nginx.reload().unwrap();
    let (status, after, _) = get_json(&nginx, "/upstreamtop");
    assert_eq!(status, 200, "{after}");
    assert_eq!(before["upstreams"]["app"]["requests"], after["upstreams"]["app"]["requests"]);

    // A reload that changes the groups: the answer follows the new config.
    let conf = nginx.conf().clone().upstream("extra", &[format!("server {UNLISTED}")]);
    nginx.reload_with(conf).unwrap();
    let (status, after, _) = get_json(&nginx, "/upstreamtop");
    assert_eq!(status, 200, "{after}");
    let extra = find_peer(&after["upstreams"]["extra"], UNLISTED).expect("now configured");
    assert_eq!(extra["requests"], 7);
    assert!(find_peer(&after["unlisted"], UNLISTED).is_none());
    assert_healthy(&nginx);
}

/// `nginx -t` output for a config with `extra_http`/`extra_server` text.
fn config_error(http: &str, server: &str) -> String {
    let mut conf = NginxConf::vendored_with_module().unwrap();
    if !http.is_empty() {
        conf = conf.extra_http(http);
    }
    if !server.is_empty() {
        conf = conf.extra_server(server);
    }
    let (ok, stderr) = check_config(&conf);
    assert!(!ok, "nginx -t accepted http `{http}` / server `{server}`:\n{stderr}");
    stderr
}

#[test]
fn nginx_t_rejects_bad_directive_arguments() {
    let (ok, stderr) = check_config(&NginxConf::vendored_with_module().unwrap());
    assert!(ok, "baseline config must pass: {stderr}");

    let cases = [
        ("", "location = /s { upstreamtop_status xml; }", "upstreamtop_status", "xml"),
        ("", "location = /s { upstreamtop_status json json; }", "upstreamtop_status", "duplicate"),
        (
            "",
            "location = /s { upstreamtop_status json noroutes extra; }",
            "upstreamtop_status",
            "invalid number of arguments",
        ),
        ("upstreamtop_status;", "", "upstreamtop_status", "not allowed here"),
        ("", "upstreamtop_table /tmp/t;", "upstreamtop_table", "not allowed here"),
        ("upstreamtop_table relative/table;", "", "upstreamtop_table", "absolute"),
        ("upstreamtop_table /a /b;", "", "upstreamtop_table", "invalid number of arguments"),
        ("upstreamtop_table /a;\nupstreamtop_table /b;", "", "upstreamtop_table", "duplicate"),
    ];
    for (http, server, directive, why) in cases {
        let stderr = config_error(http, server);
        assert!(
            stderr.contains(directive) && stderr.contains(why),
            "http `{http}` / server `{server}`: expected {directive:?} and {why:?} in:\n{stderr}"
        );
    }
}
