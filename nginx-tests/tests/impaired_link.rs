//! Exact on real networks (issue 14): the whole pipe over an impaired link.
//! Backends sit in a namespace behind an AF_PACKET bridge that loses,
//! duplicates and reorders TCP frames both ways, with a small MSS so heads
//! span many segments (see `nginx_tests::impair`). Real vendored nginx with
//! the module, the real probe on the host end of the link, real clients.
//! The run itself is `nginx_tests::impaired_link::run` (the bench's part 7
//! runs a longer one with a random seed); here with a fixed seed and size.
//!
//! The probe's figures per backend — in its table and in the module's JSON
//! — must EQUAL the ground truth:
//! - `requests` and every exact status code: what the backend itself served
//!   (interim 1xx included for the peer that sends them);
//! - `sent` / `received`: the sum of nginx's `$upstream_bytes_sent` /
//!   `$upstream_bytes_received` over its access log lines for that backend
//!   (or, for the peer a client talks to directly, the bytes that client
//!   wrote and read);
//! - `no_response`: attempts nginx's log shows failed (none expected).
//!
//! Traffic mixes GET/HEAD/POST; 200, 204, 304, 404, 500, 503; bodies up to
//! 100 KB with Content-Length or chunked; request and response bodies full
//! of text shaped like HTTP messages; status lines split between two
//! writes; request lines longer than a segment. nginx 1.28 takes an
//! upstream's interim response for the final one (1xx support arrived in
//! 1.29), so interim `100 Continue` / `103 Early Hints` (with KBs of `Link:`
//! headers) go to a backend a counting client talks to directly over the
//! same link: the probe sees the wire, whoever the client is.
//!
//! Needs root (tcx, namespaces). Without root the tests say so and pass.

use std::collections::BTreeMap;
use std::time::Instant;

use nginx_tests::backend::{Backend, Profile};
use nginx_tests::impair::{ImpairConfig, ImpairedNetns, TcpCounters};
use nginx_tests::impaired_link::{self, check_impaired, impairment, shaped, RunSpec, MSS, SEED, SHAPES};
use nginx_tests::upstream_log::parse as parse_log;
use nginx_tests::{http, prereq};

#[test]
fn impaired_link_fixture_loses_duplicates_and_reorders_both_ways() {
    if !prereq::root_or_skip("impaired_link_fixture_loses_duplicates_and_reorders_both_ways", "network namespaces") {
        return;
    }
    let ns = ImpairedNetns::create(ImpairConfig::both(SEED, impairment()).mss(MSS)).unwrap();
    let profile = Profile::fast().body_size(20_000).body_fill(SHAPES);
    let v4 = ns.backend(ns.ns_v4().into(), 0, Backend::builder(profile.clone())).unwrap();
    let v6 = ns.backend(ns.ns_v6().into(), 0, Backend::builder(profile)).unwrap();
    let (host_before, ns_before) = (TcpCounters::read().unwrap(), ns.ns_tcp_counters().unwrap());
    let started = Instant::now();
    for backend in [&v4, &v6] {
        let mut client = http::Client::new(backend.addr());
        for i in 0..40 {
            let resp = client.post(&format!("/x/{i}"), shaped(i, 5_000)).unwrap();
            assert_eq!(resp.status, 200);
            assert_eq!(resp.body, shaped(0, 20_000), "bodies arrive intact over the impaired link");
        }
        assert_eq!(backend.total(), 40);
    }
    let stats = ns.stats();
    let host = TcpCounters::read().unwrap().since(&host_before);
    let inside = ns.ns_tcp_counters().unwrap().since(&ns_before);
    eprintln!("80 exchanges in {:?}\n{stats:#?}\nhost TCP {host:?}\nbackend ns TCP {inside:?}", started.elapsed());
    check_impaired(&stats, MSS).unwrap();
    // TCP really had to work: retransmissions and out-of-order arrivals on
    // both ends (the host's counters are shared with other tests, which
    // only adds).
    assert!(inside.retrans_segs > 0 && inside.ofo_queue > 0, "{inside:?}");
    assert!(host.retrans_segs > 0 && host.ofo_queue > 0, "{host:?}");
}

#[test]
fn impaired_link_probe_equals_nginx_log_and_backends() {
    if !prereq::root_or_skip("impaired_link_probe_equals_nginx_log_and_backends", "tcx programs, network namespaces") {
        return;
    }
    // Fails on any disagreement within the ground truth (a request
    // unanswered or with another status than planned, nginx's log vs a
    // backend, a direct client vs its backend).
    let out = impaired_link::run(&RunSpec::test()).unwrap();
    eprintln!("{}", out.report);

    check_impaired(&out.stats, MSS).unwrap();
    assert!(out.tcp.retrans_segs > 0 && out.tcp.ofo_queue > 0, "TCP had nothing to recover: {:?}", out.tcp);
    assert!(out.error_log_problems.is_empty(), "{:?}", out.error_log_problems);
    // The direct interim peers are in the report, not asserted (known
    // limit, README "On lossy links").
    assert!(
        out.exact(),
        "the probe's figures differ from the ground truth on the impaired link (per-backend diff above)"
    );
}

#[test]
fn log_lists_are_split_per_attempt() {
    let log = "-|-|-|-\n\
               10.0.0.2:80|200|100|1000\n\
               10.0.0.2:80, [fd00::2]:81|502, 200|50, 60|0, 600\n\
               10.0.0.2:80 : 10.0.0.3:80|404 : 200|1 : 2|3 : 4\n";
    let parsed = parse_log(log).unwrap();
    let a = &parsed[&"10.0.0.2:80".parse().unwrap()];
    assert_eq!((a.attempts, a.failed, a.sent, a.received), (3, 1, 151, 1003));
    assert_eq!(a.statuses, BTreeMap::from([(200, 1), (404, 1), (502, 1)]));
    let b = &parsed[&"[fd00::2]:81".parse().unwrap()];
    assert_eq!((b.attempts, b.sent, b.received), (1, 60, 600));
    assert_eq!(parsed[&"10.0.0.3:80".parse().unwrap()].received, 4);
    assert!(parse_log("a|b\n").is_err());
}
