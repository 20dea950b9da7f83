//! nginx's own view of each peer, end to end: real vendored nginx with the
//! module, the real probe attached with tcx, real backends. The answer's
//! `nginx` object (balancer state: fails, limits, in-flight requests, whose
//! view), `state`/`state_from`, `diagnosis`, the `keepalive` figures and the
//! "each backend counted once" sums are compared with the other side:
//! nginx's access log (`$upstream_addr`, `$upstream_status`: every attempt
//! nginx made, refused connects included), what the backends served and
//! accepted, nginx's worker pids.
//!
//! - passive health with a `zone`: a port nothing listens on is taken out
//!   of rotation after `max_fails`, and back once `fail_timeout` passed;
//! - the same without a `zone`: the answering worker's view;
//! - `max_conns=2` on a slow backend under 10 clients: in-flight never
//!   above the limit, at it while loaded;
//! - keepalive reuse with and without `keepalive` in the group;
//! - a backend listed by an `upstream {}` block and a `proxy_pass
//!   http://IP:port`, plus an unlisted one: every sum counts it once;
//! - nginx's own balancers (`hash`, `ip_hash`, `least_conn`, `random`) are
//!   read, with exact per-peer requests and a clean error log.
//!
//! Needs root (tcx, network namespaces). Without root the tests say so and
//! pass.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nginx_tests::backend::{Backend, Profile};
use nginx_tests::load::{self, LoadSpec, Route};
use nginx_tests::netns::Netns;
use nginx_tests::nginx::{free_port, Nginx, NginxConf};
use nginx_tests::probe::Probe;
use nginx_tests::upstream_log::{self, LogSide, LOG_FORMAT};
use nginx_tests::{http, prereq};
use serde_json::Value;
use upstreamtop_table::Snapshot;

/// The probe's publish interval: short, so the tests wait little.
const INTERVAL: &str = "250ms";
/// Upper bound on the wait for the probe to account for ended traffic.
const SETTLE: Duration = Duration::from_secs(15);
/// Passive health settings of the first two tests (a short `fail_timeout`
/// keeps the test quick).
const MAX_FAILS: u64 = 2;
const FAIL_TIMEOUT_S: u64 = 3;
/// nginx's defaults for `server` lines that set neither.
const DEFAULT_MAX_FAILS: u64 = 1;
const DEFAULT_FAIL_TIMEOUT_MS: u64 = 10_000;

/// The tests time nginx's `fail_timeout` and watch in-flight requests: one
/// at a time on a 2-core host.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Where the backends live and what the probe watches.
struct Rig {
    probe: Probe,
    /// Backends inside a namespace behind a veth pair (the probe sees only
    /// their traffic), or on loopback.
    ns: Option<Netns>,
    /// nginx's port on loopback, fixed before the probe starts so the probe
    /// ignores the client side.
    port: Option<u16>,
}

impl Rig {
    fn loopback() -> Rig {
        let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
        let probe =
            Probe::start(&["--iface", "lo", "--ignore-port", &port.to_string(), "--interval", INTERVAL]).unwrap();
        Rig { probe, ns: None, port: Some(port) }
    }

    /// A namespace: no other traffic on the host reaches this probe, so
    /// its totals are exactly our backends'.
    fn netns() -> Rig {
        let ns = Netns::create().unwrap();
        let probe = Probe::start(&["--iface", ns.host_if(), "--interval", INTERVAL]).unwrap();
        Rig { probe, ns: Some(ns), port: None }
    }

    fn backend(&self, profile: Profile) -> Backend {
        match &self.ns {
            Some(ns) => ns.backend(ns.ns_v4().into(), 0, Backend::builder(profile)).unwrap(),
            None => Backend::loopback(profile).unwrap(),
        }
    }

    /// A port nothing listens on (bound, then released): connects to it
    /// are refused with an RST. On loopback at 127.0.0.3, which nothing of
    /// this host binds explicitly.
    fn dead_addr(&self) -> SocketAddr {
        match &self.ns {
            Some(ns) => {
                let ip = ns.ns_v4();
                ns.run(move || TcpListener::bind((ip, 0)).and_then(|l| l.local_addr())).unwrap().unwrap()
            }
            None => TcpListener::bind((Ipv4Addr::new(127, 0, 0, 3), 0)).unwrap().local_addr().unwrap(),
        }
    }

    /// nginx with the module on this probe's table, and an access log of
    /// every upstream attempt (`logs/upstreams.log`).
    fn conf(&self) -> NginxConf {
        let conf = NginxConf::vendored_with_module()
            .unwrap()
            .table(self.probe.table_path())
            .extra_http(LOG_FORMAT)
            .extra_server("access_log logs/upstreams.log upstreams;");
        match self.port {
            Some(port) => conf.port(port),
            None => conf,
        }
    }
}

fn log_path(nginx: &Nginx) -> PathBuf {
    nginx.prefix().join("logs/upstreams.log")
}

/// nginx's access log once it holds `lines` proxied requests.
fn nginx_log(nginx: &Nginx, lines: u64) -> BTreeMap<SocketAddr, LogSide> {
    upstream_log::read(&log_path(nginx), lines as usize).expect("nginx's access log")
}

fn side(log: &BTreeMap<SocketAddr, LogSide>, addr: SocketAddr) -> LogSide {
    log.get(&addr).cloned().unwrap_or_default()
}

/// What nginx's log must say of a backend that answered every request
/// with 200: that many 200s (nothing when it got none).
fn all_200(b: &Backend) -> BTreeMap<u16, u64> {
    BTreeMap::from([(200, b.total())]).into_iter().filter(|&(_, n)| n > 0).collect()
}

fn get_json(nginx: &Nginx) -> Value {
    let resp = http::get(&nginx.url("/upstreamtop")).expect("GET /upstreamtop");
    assert_eq!(resp.status, 200, "{}", resp.text());
    serde_json::from_slice(&resp.body).expect("JSON")
}

fn peer<'a>(doc: &'a Value, group: &str, addr: SocketAddr) -> &'a Value {
    let server = addr.to_string();
    let found = if group == "unlisted" { &doc["unlisted"] } else { &doc["upstreams"][group] };
    found["peers"]
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["server"] == server.as_str()))
        .unwrap_or_else(|| panic!("{server} not in {group}'s peers:\n{doc:#}"))
}

/// A number at `pointer` (`/nginx/fails`) of `v`.
fn num(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or_else(|| panic!("no number at {pointer} in {v:#}"))
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("no string at {pointer} in {v:#}"))
}

fn float(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer).and_then(Value::as_f64).unwrap_or_else(|| panic!("no number at {pointer} in {v:#}"))
}

/// A peer's figures in the table: (requests, connections opened, failed).
fn table_peer(snap: &Snapshot, addr: SocketAddr) -> Option<(u64, u64, u64)> {
    snap.peers.iter().find(|p| p.addr == addr).map(|p| (p.requests, p.conns.opened, p.conns.failed))
}

/// What the table must show for one address before an answer is read
/// (`None`: not compared).
#[derive(Debug, Clone, Copy)]
struct Want {
    addr: SocketAddr,
    requests: Option<u64>,
    opened: Option<u64>,
    failed: Option<u64>,
}

impl Want {
    fn requests(addr: SocketAddr, n: u64) -> Want {
        Want { addr, requests: Some(n), opened: None, failed: None }
    }

    fn opened(self, n: u64) -> Want {
        Want { opened: Some(n), ..self }
    }

    fn failed(self, n: u64) -> Want {
        Want { failed: Some(n), ..self }
    }

    fn holds(&self, snap: &Snapshot) -> bool {
        // A peer the wire never saw has zeros.
        let (r, o, f) = table_peer(snap, self.addr).unwrap_or_default();
        self.requests.is_none_or(|w| w == r) && self.opened.is_none_or(|w| w == o) && self.failed.is_none_or(|w| w == f)
    }
}

/// Wait until the probe's table shows `want` for every address (after a
/// timeout the caller's assertions on the answer show the difference).
fn settle(probe: &mut Probe, want: &[Want]) -> Snapshot {
    let snap = probe.wait_until(SETTLE, |snap| want.iter().all(|w| w.holds(snap))).expect("probe publishes");
    if !want.iter().all(|w| w.holds(&snap)) {
        let got: Vec<_> = want.iter().map(|w| (w.addr, table_peer(&snap, w.addr))).collect();
        eprintln!("the table did not settle within {SETTLE:?}: want {want:?}, got (requests, opened, failed) {got:?}");
    }
    snap
}

/// The diagnosis of a peer nginx took out of rotation (docs/json.md).
fn taken_out(fails: u64, wire: u64) -> String {
    format!(
        "nginx took it out of rotation: {fails} failures counted (max_fails {MAX_FAILS}, fail_timeout \
         {FAIL_TIMEOUT_S} s); the wire saw {wire} failed connects in the last {FAIL_TIMEOUT_S} s, and 0 resets and \
         0 exchanges without a response since the probe started"
    )
}

/// Sequential requests of the passive health tests.
const HEALTH_REQUESTS: u64 = 10;

/// Passive health after the first round of traffic.
struct Health {
    rig: Rig,
    nginx: Nginx,
    live: Backend,
    dead: SocketAddr,
    /// Proxied requests so far (lines of the access log).
    sent: u64,
    /// The answer read right after nginx took the dead peer out.
    doc: Value,
    started_ms: u64,
}

/// One live backend and one port nothing listens on, both `max_fails=2
/// fail_timeout=3s`, `zone` or not; [`HEALTH_REQUESTS`] sequential
/// requests. nginx tries the dead port, is refused, retries on the live
/// one: after two refusals it takes the dead one out. Checks the ground
/// truth (nginx's log, the backend), waits for the probe to count it all,
/// reads the answer and checks the dead and live peers in it.
fn passive_health(zone: bool, workers: u32) -> Health {
    let rig = Rig::loopback();
    let live = rig.backend(Profile::fast());
    let dead = rig.dead_addr();
    let server = |a: SocketAddr| format!("server {a} max_fails={MAX_FAILS} fail_timeout={FAIL_TIMEOUT_S}s");
    let mut lines = vec![server(live.addr()), server(dead)];
    if zone {
        lines.push("zone app 64k".to_owned());
    }
    let nginx = Nginx::start(rig.conf().workers(workers).upstream("app", &lines)).unwrap();
    let started_ms = now_ms();
    let mut client = nginx.client();
    for i in 0..HEALTH_REQUESTS {
        let resp = client.get(&format!("/p/app/r/{i}")).unwrap();
        assert_eq!(resp.status, 200, "nginx retries a refused attempt on the live peer: {}", resp.text());
    }
    let out_at = Instant::now();

    // Ground truth: every attempt nginx made, as it logged them.
    let log = nginx_log(&nginx, HEALTH_REQUESTS);
    let dead_side = side(&log, dead);
    assert_eq!(
        dead_side.statuses,
        BTreeMap::from([(502, MAX_FAILS)]),
        "nginx tries the dead port max_fails times, then no more: {log:?}"
    );
    assert_eq!(dead_side.failed, MAX_FAILS, "{log:?}");
    assert_eq!(side(&log, live.addr()).statuses, BTreeMap::from([(200, HEALTH_REQUESTS)]), "{log:?}");
    assert_eq!(live.total(), HEALTH_REQUESTS);

    let mut rig = rig;
    settle(
        &mut rig.probe,
        &[Want::requests(dead, 0).opened(0).failed(dead_side.failed), Want::requests(live.addr(), live.total())],
    );
    let doc = get_json(&nginx);
    let read_after = out_at.elapsed();
    eprintln!("answer read {read_after:.1?} after nginx took {dead} out (fail_timeout {FAIL_TIMEOUT_S} s)");

    let group = &doc["upstreams"]["app"];
    assert_eq!(num(group, "/requests"), live.total(), "the group counts its peers' requests: {group:#}");

    let d = peer(&doc, "app", dead);
    let at = |what: &str| format!("dead peer {dead}, {what} ({read_after:.1?} after it was taken out):\n{d:#}");
    assert_eq!(text(d, "/state"), "unavail", "{}", at("state"));
    assert_eq!(text(d, "/state_from"), "nginx", "{}", at("state_from"));
    assert_eq!(text(d, "/counted_in"), "app", "{}", at("counted_in"));
    assert_eq!(d["configured"], true, "{}", at("configured"));
    assert_eq!(num(d, "/nginx/fails"), dead_side.attempts, "{}", at("nginx.fails vs nginx's log"));
    assert_eq!(num(d, "/nginx/max_fails"), MAX_FAILS, "{}", at("nginx.max_fails"));
    assert_eq!(num(d, "/nginx/fail_timeout_ms"), FAIL_TIMEOUT_S * 1000, "{}", at("nginx.fail_timeout_ms"));
    assert_eq!(num(d, "/nginx/in_flight"), 0, "{}", at("nginx.in_flight"));
    assert_eq!(num(d, "/nginx/max_conns"), 0, "{}", at("nginx.max_conns"));
    // nginx records failures in whole seconds.
    let last_failure = num(d, "/nginx/last_failure");
    assert!(
        last_failure.is_multiple_of(1000) && last_failure >= started_ms / 1000 * 1000 && last_failure <= now_ms(),
        "{}",
        at(&format!("nginx.last_failure {last_failure}: not a second since the traffic began at {started_ms}"))
    );
    assert_eq!(num(d, "/connections/failed"), dead_side.failed, "{}", at("connections.failed vs nginx's log"));
    assert_eq!(num(d, "/connections/opened"), 0, "{}", at("connections.opened"));
    assert_eq!(num(d, "/connections/reset"), 0, "{}", at("connections.reset"));
    assert_eq!(num(d, "/requests"), 0, "{}", at("requests"));
    assert_eq!(
        num(d, "/nginx/wire_failed_connects"),
        dead_side.failed,
        "{}",
        at("nginx.wire_failed_connects vs nginx's log")
    );
    assert_eq!(text(d, "/diagnosis"), taken_out(dead_side.attempts, dead_side.failed), "{}", at("diagnosis"));

    let l = peer(&doc, "app", live.addr());
    assert_eq!((text(l, "/state"), text(l, "/state_from")), ("up", "wire"), "live peer: {l:#}");
    assert_eq!(num(l, "/requests"), live.total(), "live peer: {l:#}");
    assert_eq!(num(l, "/nginx/fails"), 0, "live peer: {l:#}");
    assert_eq!(num(l, "/nginx/max_fails"), MAX_FAILS, "live peer: {l:#}");
    assert!(l.get("diagnosis").is_none(), "nothing to explain for the live peer: {l:#}");

    Health { rig, nginx, live, dead, sent: HEALTH_REQUESTS, doc, started_ms }
}

/// Test 1: with a `zone`, nginx's view is every worker's. A port nothing
/// listens on is `unavail` (from nginx) with nginx's fails, limits and the
/// wire's failed connects equal to nginx's logged attempts; once
/// `fail_timeout` passed it is back (the wire's verdict); when nginx tries
/// it again and is refused, it is out again with one more failure.
#[test]
fn zone_dead_port_is_taken_out_by_nginx_and_back_after_fail_timeout() {
    if !prereq::root_or_skip(
        "zone_dead_port_is_taken_out_by_nginx_and_back_after_fail_timeout",
        "tcx programs, network namespaces",
    ) {
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    let Health { mut rig, nginx, live, dead, sent, doc, started_ms } = passive_health(true, 2);
    let group = &doc["upstreams"]["app"];
    assert_eq!(text(group, "/scope"), "all_workers", "{group:#}");
    assert!(group.get("worker_pid").is_none(), "a zone's view is no single worker's: {group:#}");

    // Back in rotation once fail_timeout passed: nginx skips a peer while
    // `now - checked <= fail_timeout` (seconds), so from the failure's
    // second + fail_timeout + 1 on. No proxied traffic meanwhile (it would
    // try the dead port again); the answers themselves wake nginx's clock.
    let last_failure = num(peer(&doc, "app", dead), "/nginx/last_failure");
    let back_from = last_failure + (FAIL_TIMEOUT_S + 1) * 1000;
    // The module's timestamp (system clock) and nginx's cached clock may
    // differ by a little around a second's boundary, and an answer shows
    // nginx's state as of the first request after its publish (up to one
    // publish interval earlier).
    let slack = 150 + 250;
    let deadline = Instant::now() + Duration::from_secs(FAIL_TIMEOUT_S + 4);
    let mut seen: Vec<(i64, String)> = Vec::new();
    let back = loop {
        let doc = get_json(&nginx);
        let state = text(peer(&doc, "app", dead), "/state").to_owned();
        let since = num(&doc, "/timestamp") as i64 - last_failure as i64;
        seen.push((since, state.clone()));
        if state != "unavail" {
            break doc;
        }
        assert!(Instant::now() < deadline, "still unavail {seen:?} ms after the last failure");
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("dead peer's state by ms since its last failure: {seen:?}");
    for (since, state) in &seen {
        if state == "unavail" {
            assert!(*since < (back_from - last_failure) as i64 + slack, "unavail too long: {seen:?}");
        } else {
            assert!(*since >= (back_from - last_failure) as i64 - slack, "back too early: {seen:?}");
        }
    }
    let d = peer(&back, "app", dead);
    assert_eq!((text(d, "/state"), text(d, "/state_from")), ("idle", "wire"), "back in rotation: {d:#}");
    // nginx keeps its count until a success: the peer is back because the
    // failures are older than fail_timeout, not because the count reset.
    assert_eq!(num(d, "/nginx/fails"), MAX_FAILS, "{d:#}");
    assert_eq!(num(d, "/nginx/last_failure"), last_failure, "{d:#}");
    assert_eq!(text(d, "/diagnosis"), "no request seen on the wire yet", "{d:#}");

    // Traffic again: nginx gives the dead port one more chance, is refused,
    // and takes it out again.
    let mut client = nginx.client();
    let mut sent = sent;
    let mut log = nginx_log(&nginx, sent);
    while side(&log, dead).attempts == MAX_FAILS && sent < HEALTH_REQUESTS + 6 {
        let resp = client.get(&format!("/p/app/again/{sent}")).unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        sent += 1;
        log = nginx_log(&nginx, sent);
    }
    let dead_side = side(&log, dead);
    assert_eq!(dead_side.statuses, BTreeMap::from([(502, MAX_FAILS + 1)]), "one more try, refused: {log:?}");
    assert_eq!(live.total(), sent);
    settle(
        &mut rig.probe,
        &[Want::requests(dead, 0).opened(0).failed(dead_side.failed), Want::requests(live.addr(), sent)],
    );
    let doc = get_json(&nginx);
    let d = peer(&doc, "app", dead);
    assert_eq!((text(d, "/state"), text(d, "/state_from")), ("unavail", "nginx"), "out again: {d:#}");
    assert_eq!(num(d, "/nginx/fails"), dead_side.attempts, "nginx.fails vs nginx's log: {d:#}");
    assert_eq!(num(d, "/connections/failed"), dead_side.failed, "connections.failed vs nginx's log: {d:#}");
    assert!(num(d, "/nginx/last_failure") > last_failure, "{d:#}");
    // The wire's cross-check covers the last fail_timeout only: the first
    // two refusals are older than that.
    assert_eq!(num(d, "/nginx/wire_failed_connects"), 1, "{d:#}");
    assert_eq!(text(d, "/diagnosis"), taken_out(dead_side.attempts, 1), "{d:#}");
    assert_eq!(text(peer(&doc, "app", live.addr()), "/state"), "up");

    assert!(nginx.error_log_problems().is_empty(), "{:?}", nginx.error_log_problems());
    assert!(
        nginx.error_log().contains("upstream server temporarily disabled"),
        "nginx's own word that it took the peer out:\n{}",
        nginx.error_log()
    );
    eprintln!("test time {:.1?} (traffic began at {started_ms})", started.elapsed());
}

/// Test 2: without a `zone` each worker keeps its own balancer state: the
/// answer says whose (`scope: worker`, `worker_pid` = the one worker), and
/// with one worker that view is all of nginx's.
#[test]
fn no_zone_dead_port_is_the_answering_workers_view() {
    if !prereq::root_or_skip("no_zone_dead_port_is_the_answering_workers_view", "tcx programs, network namespaces") {
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    let h = passive_health(false, 1);
    let workers = h.nginx.worker_pids();
    assert_eq!(workers.len(), 1, "one worker: {workers:?}");
    let group = &h.doc["upstreams"]["app"];
    assert_eq!(text(group, "/scope"), "worker", "{group:#}");
    assert_eq!(num(group, "/worker_pid"), u64::from(workers[0]), "the worker's pid: {group:#}");
    // Every answer comes from that worker: the same view again.
    let again = get_json(&h.nginx);
    assert_eq!(num(&again["upstreams"]["app"], "/worker_pid"), u64::from(workers[0]));
    assert_eq!(num(peer(&again, "app", h.dead), "/nginx/fails"), MAX_FAILS);
    assert!(h.nginx.error_log_problems().is_empty(), "{:?}", h.nginx.error_log_problems());
    eprintln!("test time {:.1?}", started.elapsed());
}

/// One poll of the endpoint during the max_conns load.
#[derive(Debug, Clone, PartialEq)]
struct Poll {
    in_flight: u64,
    max_conns: u64,
    diagnosis: Option<String>,
}

/// Test 3: `max_conns=2` (with a `zone`, two workers) on a slow backend,
/// beside a fast one, under 10 concurrent clients. Polled during the load,
/// nginx's in-flight count of the slow peer is never above 2 and is 2
/// (with the `at max_conns` diagnosis) while it is saturated; the backend
/// itself never answered more than 2 at once. Afterwards nothing is in
/// flight and the requests equal what each backend served.
#[test]
fn max_conns_caps_in_flight_and_the_answer_shows_it() {
    if !prereq::root_or_skip("max_conns_caps_in_flight_and_the_answer_shows_it", "tcx programs, network namespaces") {
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    const LIMIT: u64 = 2;
    const CLIENTS: usize = 10;
    let mut rig = Rig::loopback();
    let slow = rig.backend(Profile::fast().latency_ms(150, 150));
    let fast = rig.backend(Profile::fast().latency_ms(20, 20));
    let lines = [
        format!("server {} max_conns={LIMIT} max_fails=0", slow.addr()),
        format!("server {} max_fails=0", fast.addr()),
        "zone app 64k".to_owned(),
    ];
    let nginx = Nginx::start(rig.conf().workers(2).upstream("app", &lines)).unwrap();

    let done = AtomicBool::new(false);
    let (got, polls) = std::thread::scope(|scope| {
        let poller = scope.spawn(|| {
            let mut polls: Vec<Poll> = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let doc = get_json(&nginx);
                let p = peer(&doc, "app", slow.addr());
                polls.push(Poll {
                    in_flight: num(p, "/nginx/in_flight"),
                    max_conns: num(p, "/nginx/max_conns"),
                    diagnosis: p.get("diagnosis").and_then(Value::as_str).map(str::to_owned),
                });
                std::thread::sleep(Duration::from_millis(10));
            }
            polls
        });
        let spec = LoadSpec::new(nginx.addr(), vec![Route::get("/p/app/work", 1)])
            .duration(Duration::from_millis(2500))
            .concurrency(CLIENTS);
        let got = load::run(&spec).unwrap();
        done.store(true, Ordering::Relaxed);
        (got, poller.join().unwrap())
    });
    assert_eq!(got.errors, 0, "{:?}", got.error_samples);
    let requests = got.responses();
    assert_eq!(got.by_status, BTreeMap::from([(200, requests)]), "the fast peer takes what the slow one cannot");

    // Ground truth: nginx's log and the backends.
    let log = nginx_log(&nginx, requests);
    assert_eq!(side(&log, slow.addr()).statuses, all_200(&slow), "{log:?}");
    assert_eq!(side(&log, fast.addr()).statuses, all_200(&fast), "{log:?}");
    assert_eq!(slow.total() + fast.total(), requests);
    assert_eq!(slow.max_concurrent(), LIMIT, "the slow backend was answering {LIMIT} at once, never more");

    let at_limit = polls.iter().filter(|p| p.in_flight == LIMIT).count();
    let highest = polls.iter().map(|p| p.in_flight).max().unwrap_or(0);
    eprintln!(
        "{requests} requests ({} slow, {} fast) in {:.1?}; {} polls, {at_limit} at {LIMIT} in flight, highest {highest}",
        slow.total(),
        fast.total(),
        got.elapsed,
        polls.len()
    );
    assert!(polls.len() >= 20, "too few polls to see anything: {polls:?}");
    assert!(polls.iter().all(|p| p.max_conns == LIMIT), "{polls:?}");
    assert!(polls.iter().all(|p| p.in_flight <= LIMIT), "in flight above max_conns: {polls:?}");
    assert_eq!(highest, LIMIT, "never saw the slow peer at its limit: {polls:?}");
    let diagnosis = format!("at max_conns: {LIMIT} of {LIMIT} requests in flight, nginx picks other peers");
    for p in polls.iter().filter(|p| p.in_flight == LIMIT) {
        assert_eq!(p.diagnosis.as_deref(), Some(diagnosis.as_str()), "{p:?}");
    }

    settle(&mut rig.probe, &[Want::requests(slow.addr(), slow.total()), Want::requests(fast.addr(), fast.total())]);
    let doc = get_json(&nginx);
    for (b, max_conns) in [(&slow, LIMIT), (&fast, 0)] {
        let p = peer(&doc, "app", b.addr());
        assert_eq!(num(p, "/requests"), b.total(), "{}: {p:#}", b.addr());
        assert_eq!(num(p, "/nginx/in_flight"), 0, "{}: nothing in flight after the load: {p:#}", b.addr());
        assert_eq!(num(p, "/nginx/max_conns"), max_conns, "{}: {p:#}", b.addr());
    }
    assert_eq!(text(&doc["upstreams"]["app"], "/scope"), "all_workers");
    assert!(nginx.error_log_problems().is_empty(), "{:?}", nginx.error_log_problems());
    eprintln!("test time {:.1?}", started.elapsed());
}

/// `requests_per_connection` and `new_connection_pct` for `requests` over
/// `opened` connections (docs/json.md).
fn reuse(requests: u64, opened: u64) -> (f64, f64) {
    let rpc = if opened == 0 { 0.0 } else { requests as f64 / opened as f64 };
    let pct = if requests == 0 { 0.0 } else { opened.min(requests) as f64 / requests as f64 * 100.0 };
    (rpc, pct)
}

/// Equal to the answer's 3 decimals.
fn assert_close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 0.0005 + 1e-9, "{what}: {got}, expected {want:.4}");
}

/// Test 4: a group without `keepalive` (a new connection per request) and
/// one with `keepalive 8` (HTTP/1.1, `Connection ""` in the location):
/// per peer and per group, `connections.opened` is what the backends
/// accepted and the keepalive figures are the backends' requests over
/// their accepted connections.
#[test]
fn keepalive_figures_equal_what_the_backends_accepted() {
    if !prereq::root_or_skip("keepalive_figures_equal_what_the_backends_accepted", "tcx programs, network namespaces") {
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    const REQUESTS: u64 = 400;
    let mut rig = Rig::loopback();
    let plain = [rig.backend(Profile::fast()), rig.backend(Profile::fast())];
    let pooled = [rig.backend(Profile::fast()), rig.backend(Profile::fast())];
    let servers =
        |bs: &[Backend]| -> Vec<String> { bs.iter().map(|b| format!("server {} max_fails=0", b.addr())).collect() };
    let mut pooled_lines = servers(&pooled);
    pooled_lines.push("keepalive 8".to_owned());
    // The default locations (`/p/<group>/`) speak HTTP/1.1 with
    // `Connection ""`: only the group's `keepalive` differs.
    let conf = rig.conf().workers(2).upstream("plain", &servers(&plain)).upstream("pooled", &pooled_lines);
    assert!(conf.render(std::path::Path::new("/p"), 1).contains("proxy_set_header Connection \"\";"));
    let nginx = Nginx::start(conf).unwrap();

    let spec = LoadSpec::new(nginx.addr(), vec![Route::get("/p/plain/a", 1), Route::get("/p/pooled/b", 1)])
        .requests(REQUESTS)
        .concurrency(4);
    let got = load::run(&spec).unwrap();
    assert_eq!(got.errors, 0, "{:?}", got.error_samples);
    assert_eq!(got.by_status, BTreeMap::from([(200, REQUESTS)]));
    let log = nginx_log(&nginx, REQUESTS);
    for b in plain.iter().chain(&pooled) {
        assert_eq!(side(&log, b.addr()).statuses, all_200(b), "{log:?}");
    }
    let plain_total: u64 = plain.iter().map(Backend::total).sum();
    assert_eq!(plain_total, REQUESTS / 2);
    for b in &plain {
        assert_eq!(b.connections(), b.total(), "{}: no keepalive, a connection per request", b.addr());
    }
    for b in &pooled {
        assert!(
            b.connections() < b.total() / 4,
            "{}: {} connections for {} requests",
            b.addr(),
            b.connections(),
            b.total()
        );
    }

    let want: Vec<_> = plain
        .iter()
        .chain(&pooled)
        .map(|b| Want::requests(b.addr(), b.total()).opened(b.connections()).failed(0))
        .collect();
    settle(&mut rig.probe, &want);
    let doc = get_json(&nginx);
    let mut report = String::new();
    for (group, backends) in [("plain", &plain), ("pooled", &pooled)] {
        for b in backends.iter() {
            let p = peer(&doc, group, b.addr());
            let (rpc, pct) = reuse(b.total(), b.connections());
            report.push_str(&format!(
                "  {group} {}: served {} over {} accepted; answer {} requests, {} opened, keepalive {}\n",
                b.addr(),
                b.total(),
                b.connections(),
                p["requests"],
                p["connections"]["opened"],
                p["keepalive"]
            ));
            assert_eq!(num(p, "/requests"), b.total(), "{}: {p:#}", b.addr());
            assert_eq!(num(p, "/connections/opened"), b.connections(), "{}: opened vs accepted: {p:#}", b.addr());
            assert_close(
                float(p, "/keepalive/requests_per_connection"),
                rpc,
                &format!("{} requests_per_connection", b.addr()),
            );
            assert_close(float(p, "/keepalive/new_connection_pct"), pct, &format!("{} new_connection_pct", b.addr()));
        }
        let g = &doc["upstreams"][group];
        let requests: u64 = backends.iter().map(Backend::total).sum();
        let accepted: u64 = backends.iter().map(Backend::connections).sum();
        let (rpc, pct) = reuse(requests, accepted);
        assert_eq!(num(g, "/requests"), requests, "{group}: {g:#}");
        assert_close(float(g, "/keepalive/requests_per_connection"), rpc, &format!("{group} requests_per_connection"));
        assert_close(float(g, "/keepalive/new_connection_pct"), pct, &format!("{group} new_connection_pct"));
    }
    eprintln!("{report}");
    // Without keepalive every request paid for a connection.
    for b in &plain {
        let p = peer(&doc, "plain", b.addr());
        assert_eq!(float(p, "/keepalive/new_connection_pct"), 100.0, "{p:#}");
        assert_eq!(float(p, "/keepalive/requests_per_connection"), 1.0, "{p:#}");
    }
    assert_eq!(float(&doc["upstreams"]["plain"], "/keepalive/new_connection_pct"), 100.0);
    assert!(nginx.error_log_problems().is_empty(), "{:?}", nginx.error_log_problems());
    eprintln!("test time {:.1?}", started.elapsed());
}

/// The sum of every `upstreamtop_requests_total` series of a scrape, and
/// the series naming `server`.
fn prometheus_requests(text: &str, server: &str) -> (u64, Vec<String>) {
    let mut sum = 0;
    let mut of_server = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("upstreamtop_requests_total{")) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
        sum += value.parse::<u64>().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        if series.contains(&format!("server=\"{server}\"")) {
            of_server.push(series.to_owned());
        }
    }
    (sum, of_server)
}

/// Test 5: a backend listed by an `upstream {}` block and by `proxy_pass
/// http://IP:port` (an implicit group), both receiving traffic, next to a
/// backend no group lists (`proxy_pass http://$variable`). The Prometheus
/// sum, `totals.requests`, the groups' and `unlisted`'s requests and what
/// the backends served are all the same number; the shared backend shows
/// in both groups, counted in the `upstream {}` block.
#[test]
fn a_backend_in_two_groups_is_counted_once_everywhere() {
    if !prereq::root_or_skip("a_backend_in_two_groups_is_counted_once_everywhere", "tcx programs, network namespaces") {
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    const REQUESTS: u64 = 600;
    // In a namespace: this probe sees no traffic but ours, so the totals
    // are exactly our backends'.
    let mut rig = Rig::netns();
    let shared = rig.backend(Profile::fast());
    let other = rig.backend(Profile::fast());
    let lone = rig.backend(Profile::fast());
    let implicit = shared.addr().to_string();
    let conf = rig
        .conf()
        .workers(2)
        .upstream(
            "app",
            &[format!("server {} max_fails=0", shared.addr()), format!("server {} max_fails=0", other.addr())],
        )
        .extra_server(&format!("location /direct/ {{ proxy_pass http://{}; }}", shared.addr()))
        .extra_server(&format!("location /var/ {{ set $lone \"{}\"; proxy_pass http://$lone; }}", lone.addr()));
    let nginx = Nginx::start(conf).unwrap();

    let routes = vec![Route::get("/p/app/a", 3), Route::get("/direct/b", 2), Route::get("/var/c", 1)];
    let got = load::run(&LoadSpec::new(nginx.addr(), routes).requests(REQUESTS).concurrency(4)).unwrap();
    assert_eq!(got.errors, 0, "{:?}", got.error_samples);
    assert_eq!(got.by_status, BTreeMap::from([(200, REQUESTS)]));
    let served = shared.total() + other.total() + lone.total();
    assert_eq!(served, REQUESTS, "every request served once");
    // /direct/ goes only to the shared backend, /var/ to the lone one.
    assert_eq!(lone.total(), REQUESTS / 6);
    assert_eq!(shared.total() + other.total(), REQUESTS * 5 / 6);
    assert!(shared.total() > other.total(), "the shared backend gets /direct/ too");
    let log = nginx_log(&nginx, REQUESTS);
    for b in [&shared, &other, &lone] {
        assert_eq!(side(&log, b.addr()).statuses, all_200(b), "{log:?}");
    }

    let want: Vec<_> = [&shared, &other, &lone].iter().map(|b| Want::requests(b.addr(), b.total())).collect();
    settle(&mut rig.probe, &want);
    let doc = get_json(&nginx);
    let scrape = http::get(&nginx.url("/upstreamtop?format=prometheus")).expect("GET ?format=prometheus");
    assert_eq!(scrape.status, 200, "{}", scrape.text());
    let (prom_sum, shared_series) = prometheus_requests(&scrape.text(), &implicit);

    let totals = num(&doc, "/totals/requests");
    let groups = doc["upstreams"].as_object().expect("upstreams");
    let names: BTreeSet<&str> = groups.keys().map(String::as_str).collect();
    assert_eq!(names, BTreeSet::from(["app", implicit.as_str()]), "{doc:#}");
    let group_sum: u64 = groups.values().map(|g| num(g, "/requests")).sum::<u64>() + num(&doc, "/unlisted/requests");
    eprintln!(
        "served {served} (shared {}, other {}, lone {}); prometheus sum {prom_sum}; totals.requests {totals}; \
         groups + unlisted {group_sum}",
        shared.total(),
        other.total(),
        lone.total()
    );
    assert_eq!(totals, served, "totals.requests vs the backends");
    assert_eq!(group_sum, served, "upstreams.*.requests + unlisted.requests vs the backends");
    assert_eq!(prom_sum, served, "sum(upstreamtop_requests_total) vs the backends:\n{}", scrape.text());
    assert_eq!(
        shared_series,
        [format!("upstreamtop_requests_total{{upstream=\"app\",server=\"{implicit}\"}}")],
        "the shared backend's requests carry only the group that counts it"
    );

    // Each group's own figure: the peers it counts.
    assert_eq!(num(&doc["upstreams"]["app"], "/requests"), shared.total() + other.total());
    assert_eq!(num(&doc["upstreams"][implicit.as_str()], "/requests"), 0, "its only peer is counted in app");
    assert_eq!(doc["upstreams"][implicit.as_str()]["implicit"], true);
    assert_eq!(num(&doc, "/unlisted/requests"), lone.total());
    // The shared backend under both groups: the same wire figures, counted in `app`.
    for group in ["app", implicit.as_str()] {
        let p = peer(&doc, group, shared.addr());
        assert_eq!(text(p, "/counted_in"), "app", "{group}: {p:#}");
        assert_eq!(num(p, "/requests"), shared.total(), "{group}: {p:#}");
        assert_eq!(p["configured"], true, "{group}: {p:#}");
        assert!(p["nginx"].is_object(), "{group}: nginx's view of the peer: {p:#}");
    }
    assert_eq!(text(peer(&doc, "app", other.addr()), "/counted_in"), "app");
    let l = peer(&doc, "unlisted", lone.addr());
    assert_eq!(text(l, "/counted_in"), "unlisted", "{l:#}");
    assert_eq!(num(l, "/requests"), lone.total(), "{l:#}");
    assert!(l["nginx"].is_null(), "no nginx view of an unlisted peer: {l:#}");
    assert!(nginx.error_log_problems().is_empty(), "{:?}", nginx.error_log_problems());
    eprintln!("test time {:.1?}", started.elapsed());
}

/// Test 6: nginx's own balancers keep the round-robin peer list the module
/// reads: `hash ... consistent`, `ip_hash`, `least_conn` (+ `keepalive`),
/// `random two least_conn`, each with and without a `zone`. Every group is
/// read (scope as its `zone` says, every configured server with its
/// `nginx` object), per-peer requests equal what each backend served, and
/// nginx's error log has no alert or crash.
#[test]
fn nginx_balancers_are_read_with_exact_requests() {
    if !prereq::root_or_skip("nginx_balancers_are_read_with_exact_requests", "tcx programs, network namespaces") {
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    // Each balancer with and without a zone: (group, directives, zone).
    let balancers: [(&str, &[&str]); 4] = [
        ("hash", &["hash $request_uri consistent"]),
        ("iphash", &["ip_hash"]),
        ("leastconn", &["least_conn", "keepalive 4"]),
        ("random2", &["random two least_conn"]),
    ];
    let groups: Vec<(String, &[&str], bool)> = balancers
        .iter()
        .flat_map(|&(name, directives)| {
            [(format!("{name}_zone"), directives, true), (format!("{name}_nozone"), directives, false)]
        })
        .collect();
    const PER_GROUP: u64 = 120;
    let requests = PER_GROUP * groups.len() as u64;
    let mut rig = Rig::loopback();
    let backends: Vec<[Backend; 2]> = groups
        .iter()
        .map(|_| [rig.backend(Profile::fast().latency_ms(0, 2)), rig.backend(Profile::fast().latency_ms(0, 2))])
        .collect();
    let mut conf = rig.conf().workers(2);
    let mut routes = Vec::new();
    for ((name, directives, zone), bs) in groups.iter().zip(&backends) {
        let mut lines: Vec<String> = directives.iter().map(|d| (*d).to_owned()).collect();
        lines.extend(bs.iter().map(|b| format!("server {}", b.addr())));
        if *zone {
            lines.push(format!("zone {name} 64k"));
        }
        conf = conf.upstream(name, &lines);
        for k in 0..6 {
            routes.push(Route::get(&format!("/p/{name}/item/{k}"), 1));
        }
    }
    let nginx = Nginx::start(conf).unwrap();
    let got = load::run(&LoadSpec::new(nginx.addr(), routes).requests(requests).concurrency(4)).unwrap();
    assert_eq!(got.errors, 0, "{:?}", got.error_samples);
    assert_eq!(got.by_status, BTreeMap::from([(200, requests)]));
    let log = nginx_log(&nginx, requests);
    for b in backends.iter().flatten() {
        assert_eq!(side(&log, b.addr()).statuses, all_200(b), "{log:?}");
    }
    for ((name, _, _), bs) in groups.iter().zip(&backends) {
        assert_eq!(bs[0].total() + bs[1].total(), PER_GROUP, "{name}: every request once");
    }

    let want: Vec<_> = backends.iter().flatten().map(|b| Want::requests(b.addr(), b.total())).collect();
    settle(&mut rig.probe, &want);
    let doc = get_json(&nginx);
    let workers = nginx.worker_pids();
    for ((name, directives, zone), bs) in groups.iter().zip(&backends) {
        let g = &doc["upstreams"][name.as_str()];
        let what = format!("{name} ({}{})", directives.join("; "), if *zone { "; zone" } else { "" });
        eprintln!(
            "{what}: scope {}, served {:?}",
            g["scope"],
            bs.iter().map(|b| (b.addr().to_string(), b.total())).collect::<Vec<_>>()
        );
        if *zone {
            assert_eq!(text(g, "/scope"), "all_workers", "{what}: {g:#}");
        } else {
            assert_eq!(text(g, "/scope"), "worker", "{what}: {g:#}");
            let pid = u32::try_from(num(g, "/worker_pid")).unwrap();
            assert!(workers.contains(&pid), "{what}: worker_pid {pid} not among nginx's workers {workers:?}");
        }
        let listed: BTreeSet<String> =
            g["peers"].as_array().unwrap().iter().map(|p| text(p, "/server").to_owned()).collect();
        let configured: BTreeSet<String> = bs.iter().map(|b| b.addr().to_string()).collect();
        assert_eq!(listed, configured, "{what}: {g:#}");
        for b in bs {
            let p = peer(&doc, name, b.addr());
            let at = format!("{what} {}: {p:#}", b.addr());
            assert_eq!(p["configured"], true, "{at}");
            assert_eq!(text(p, "/counted_in"), name, "{at}");
            assert_eq!(num(p, "/requests"), b.total(), "{at}");
            assert_eq!(text(p, "/state_from"), "wire", "{at}");
            assert!(p["nginx"].is_object(), "{at}");
            assert_eq!(num(p, "/nginx/fails"), 0, "{at}");
            assert_eq!(num(p, "/nginx/max_fails"), DEFAULT_MAX_FAILS, "{at}");
            assert_eq!(num(p, "/nginx/fail_timeout_ms"), DEFAULT_FAIL_TIMEOUT_MS, "{at}");
            assert_eq!(num(p, "/nginx/last_failure"), 0, "{at}");
            assert_eq!(num(p, "/nginx/in_flight"), 0, "{at}");
            assert_eq!(num(p, "/nginx/max_conns"), 0, "{at}");
        }
        assert_eq!(num(g, "/requests"), bs[0].total() + bs[1].total(), "{what}: {g:#}");
    }
    // (Other processes' loopback traffic may show as unlisted: ours never.)
    let unlisted: Vec<&str> = doc["unlisted"]["peers"].as_array().unwrap().iter().map(|p| text(p, "/server")).collect();
    for b in backends.iter().flatten() {
        assert!(
            !unlisted.contains(&b.addr().to_string().as_str()),
            "{} is in a group, not unlisted: {doc:#}",
            b.addr()
        );
    }
    assert!(nginx.error_log_problems().is_empty(), "{:?}", nginx.error_log_problems());
    assert_eq!(nginx.worker_pids(), workers, "no worker restarted");
    eprintln!("test time {:.1?}", started.elapsed());
}
