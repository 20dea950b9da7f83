//! The whole pipe, end to end: real nginx (vendored build) with the module,
//! real Rust backends, the real probe attached with tcx, traffic from a real
//! client. The probe's table — and the module's JSON built from it — must
//! EQUAL what the backends say they served: per peer, per exact status code,
//! per route. Two topologies: loopback, and backends in a network namespace
//! behind a veth pair (IPv4 and IPv6).
//!
//! Needs root (tcx, netns). Without root the tests say so and pass.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use nginx_tests::backend::{Backend, Profile};
use nginx_tests::load::{self, Headers, LoadSpec, Route};
use nginx_tests::netns::Netns;
use nginx_tests::nginx::{free_port, Nginx, NginxConf};
use nginx_tests::probe::Probe;
use nginx_tests::{http, prereq};
use upstreamtop_table::Snapshot;

/// How long the probe may take to account for traffic that already ended.
const SETTLE: Duration = Duration::from_secs(20);

/// Folding the probe applies to paths: numeric segments become `:id`.
/// (Test paths use only numeric ids, so this is the whole rule here.)
fn fold(path: &str) -> String {
    path.split('/')
        .map(|seg| if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) { ":id" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// What one backend served, in the table's terms.
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    requests: u64,
    /// Exact codes ascending.
    codes: Vec<(u16, u64)>,
    class: [u64; 5],
    /// (method, folded path) -> codes.
    routes: BTreeMap<(String, String), Vec<(u16, u64)>>,
}

fn expected(backend: &Backend) -> Expected {
    let codes: Vec<(u16, u64)> = backend.by_status().into_iter().collect();
    let mut class = [0u64; 5];
    for &(code, n) in &codes {
        class[usize::from(code / 100 - 1)] += n;
    }
    let mut routes: BTreeMap<(String, String), BTreeMap<u16, u64>> = BTreeMap::new();
    for (key, n) in backend.served() {
        *routes.entry((key.method, fold(&key.path))).or_default().entry(key.status).or_insert(0) += n;
    }
    Expected {
        requests: backend.total(),
        codes,
        class,
        routes: routes.into_iter().map(|(k, v)| (k, v.into_iter().collect())).collect(),
    }
}

/// The same figures as the probe's table has them for `addr`.
fn observed(snap: &Snapshot, addr: SocketAddr) -> Option<Expected> {
    let idx = snap.peers.iter().position(|p| p.addr == addr)?;
    let peer = &snap.peers[idx];
    let mut routes = BTreeMap::new();
    for route in snap.routes.iter().filter(|r| r.peer as usize == idx) {
        let key = if route.is_other {
            (String::new(), "(other)".to_owned())
        } else {
            (route.method.clone(), route.path.clone())
        };
        routes.insert(key, route.responses.codes.clone());
    }
    Some(Expected { requests: peer.requests, codes: peer.responses.codes.clone(), class: peer.responses.class, routes })
}

/// Wait until the table accounts for everything the backends served, then
/// assert equality (the final snapshot is compared even after a timeout, so
/// a mismatch shows both sides).
fn assert_table_matches(probe: &mut Probe, backends: &[&Backend]) -> Snapshot {
    let want: Vec<Expected> = backends.iter().map(|b| expected(b)).collect();
    let snap = probe
        .wait_until(SETTLE, |snap| {
            backends.iter().zip(&want).all(|(b, w)| observed(snap, b.addr()).as_ref() == Some(w))
        })
        .expect("probe publishes");
    for (backend, want) in backends.iter().zip(&want) {
        let got = observed(&snap, backend.addr())
            .unwrap_or_else(|| panic!("peer {} missing from the table; peers: {:?}", backend.addr(), peer_list(&snap)));
        assert_eq!(got, *want, "peer {}: table (left) vs backend ground truth (right)", backend.addr());
        eprintln!(
            "peer {}: {} requests, codes {:?}, {} routes — equal to what the backend served",
            backend.addr(),
            got.requests,
            got.codes,
            got.routes.len()
        );
        let peer = snap.peers.iter().find(|p| p.addr == backend.addr()).unwrap();
        assert_eq!(peer.no_response, 0, "peer {}: every exchange got a response", backend.addr());
        assert_eq!(peer.responses.codes_other, 0);
    }
    let c = snap.meta.counters;
    assert_eq!(c.events_dropped, 0, "no event lost at this load: {c:?}");
    assert_eq!(c.route_overflow, 0, "{c:?}");
    snap
}

fn peer_list(snap: &Snapshot) -> Vec<(SocketAddr, u64)> {
    snap.peers.iter().map(|p| (p.addr, p.requests)).collect()
}

/// The module's JSON must carry the same per-peer figures.
fn assert_json_matches(nginx: &Nginx, group: &str, backends: &[&Backend]) {
    let resp = http::get(&nginx.url("/upstreamtop")).expect("GET /upstreamtop");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let doc: serde_json::Value = serde_json::from_slice(&resp.body).expect("JSON");
    let peers =
        doc["upstreams"][group]["peers"].as_array().unwrap_or_else(|| panic!("no upstreams.{group}.peers in {doc:#}"));
    for backend in backends {
        let server = backend.addr().to_string();
        let peer = peers
            .iter()
            .find(|p| p["server"] == server.as_str())
            .unwrap_or_else(|| panic!("{server} not in upstreams.{group}.peers: {peers:#?}"));
        assert_eq!(peer["requests"].as_u64(), Some(backend.total()), "{server}: {peer:#}");
        for (code, n) in backend.by_status() {
            assert_eq!(
                peer["responses"]["codes"][code.to_string()].as_u64(),
                Some(n),
                "{server} code {code}: {peer:#}"
            );
        }
    }
}

/// The traffic mix: app routes with ids and query strings, a forced rare
/// code, and a checkout POST whose body looks like a request line.
fn routes() -> Vec<Route> {
    vec![
        Route::get("/p/app/api/orders", 6),
        Route::get("/p/app/api/orders/12345", 3),
        Route::get("/p/app/api/users?id=7&page=2", 3),
        Route::get("/p/app/static/app.js", 2),
        Route::get("/p/app/api/teapot", 1).header("X-Backend-Status", "418"),
        Route::post("/p/checkout/checkout", 2, b"GET /not-a-request HTTP/1.1\r\nHost: x\r\n\r\n{\"cart\":[1,2,3]}"),
    ]
}

fn app_profile() -> Profile {
    Profile::fast().statuses(&[(200, 18), (404, 1), (302, 1)]).error_rate(0.05).body_size(300)
}

fn checkout_profile() -> Profile {
    Profile::fast().latency_ms(1, 4).statuses(&[(201, 1)]).error_rate(0.12).error_statuses(&[500, 502, 503])
}

fn run_loopback(headers: Headers, client_keepalive: bool, backend_keepalive: bool) {
    let lo = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let app1 = Backend::start(lo, app_profile().keepalive(backend_keepalive)).unwrap();
    let app2 = Backend::start(lo, app_profile().keepalive(backend_keepalive)).unwrap();
    let checkout = Backend::start(lo, checkout_profile()).unwrap();

    // nginx's port is known before the probe starts so the probe can ignore
    // the client<->nginx leg (on lo it would look like one more backend).
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
    let mut probe =
        Probe::start(&["--iface", "lo", "--ignore-port", &port.to_string(), "--interval", "250ms"]).unwrap();
    let conf = NginxConf::vendored_with_module()
        .unwrap()
        .port(port)
        .workers(2)
        .table(probe.table_path())
        .upstream_servers("app", &[app1.addr(), app2.addr()])
        .upstream_servers("checkout", &[checkout.addr()]);
    let nginx = Nginx::start(conf).unwrap();

    let spec = LoadSpec::new(nginx.addr(), routes())
        .requests(1700)
        .concurrency(6)
        .keepalive(client_keepalive)
        .headers(headers);
    let got = load::run(&spec).unwrap();
    assert_eq!(got.errors, 0, "{:?}", got.error_samples);
    assert_eq!(got.responses(), 1700);
    assert_eq!(app1.total() + app2.total() + checkout.total(), 1700, "nginx proxied every request once");

    assert_table_matches(&mut probe, &[&app1, &app2, &checkout]);
    assert_json_matches(&nginx, "app", &[&app1, &app2]);
    assert_json_matches(&nginx, "checkout", &[&checkout]);
    assert!(nginx.error_log_problems().is_empty(), "{:?}", nginx.error_log_problems());
}

#[test]
fn loopback_minimal_headers_keepalive_counts_equal_backends() {
    if prereq::root_or_skip(
        "loopback_minimal_headers_keepalive_counts_equal_backends",
        "tcx programs, network namespaces",
    ) {
        run_loopback(Headers::Minimal, true, true);
    }
}

#[test]
fn loopback_realistic_headers_new_connections_counts_equal_backends() {
    if prereq::root_or_skip(
        "loopback_realistic_headers_new_connections_counts_equal_backends",
        "tcx programs, network namespaces",
    ) {
        // Client without keepalive, backends closing after every response:
        // a new upstream connection per exchange.
        run_loopback(Headers::Realistic, false, false);
    }
}

#[test]
fn netns_veth_v4_and_v6_counts_equal_backends() {
    if !prereq::root_or_skip("netns_veth_v4_and_v6_counts_equal_backends", "tcx programs, network namespaces") {
        return;
    }
    let ns = Netns::create().unwrap();
    let app1 = ns.backend(ns.ns_v4().into(), 0, Backend::builder(app_profile())).unwrap();
    let app2 = ns.backend(ns.ns_v4().into(), 0, Backend::builder(app_profile())).unwrap();
    let checkout = ns.backend(ns.ns_v6().into(), 0, Backend::builder(checkout_profile())).unwrap();

    let mut probe = Probe::start(&["--iface", ns.host_if(), "--interval", "250ms"]).unwrap();
    let conf = NginxConf::vendored_with_module()
        .unwrap()
        .workers(2)
        .table(probe.table_path())
        .upstream_servers("app", &[app1.addr(), app2.addr()])
        .upstream_servers("checkout", &[checkout.addr()]);
    let nginx = Nginx::start(conf).unwrap();

    for headers in [Headers::Minimal, Headers::Realistic] {
        let spec = LoadSpec::new(nginx.addr(), routes()).requests(850).concurrency(6).headers(headers);
        let got = load::run(&spec).unwrap();
        assert_eq!(got.errors, 0, "{:?}", got.error_samples);
        assert_eq!(got.responses(), 850);
    }
    assert_eq!(app1.total() + app2.total() + checkout.total(), 1700);

    let snap = assert_table_matches(&mut probe, &[&app1, &app2, &checkout]);
    assert!(
        snap.meta.interfaces.iter().any(|i| i == ns.host_if()),
        "probe reports its interface: {:?}",
        snap.meta.interfaces
    );
    assert_json_matches(&nginx, "app", &[&app1, &app2]);
    assert_json_matches(&nginx, "checkout", &[&checkout]);
    assert!(nginx.error_log_problems().is_empty(), "{:?}", nginx.error_log_problems());
}

#[test]
fn fold_matches_the_probe_rule_for_numeric_ids() {
    assert_eq!(fold("/api/orders/12345"), "/api/orders/:id");
    assert_eq!(fold("/api/orders"), "/api/orders");
    assert_eq!(fold("/"), "/");
}
