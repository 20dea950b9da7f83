//! Real programs on loopback, real HTTP from a std-only client to a std-only
//! server; exact counts against what the server served. Needs root.

mod common;

use std::net::TcpListener;

use common::{assert_matches, peer, require_root, run_traffic, wait_for, Harness};

/// Traffic to a server on `bind` (a loopback address, port 0): the table's
/// figures for it equal what the server served.
fn exact_counts_on(bind: &str) {
    let h = Harness::new(&["lo"]);
    let l = TcpListener::bind(bind).unwrap();
    let addr = l.local_addr().unwrap();
    let served = common::serve(l);
    let sent = run_traffic(addr);
    let s = wait_for(&h, addr, sent);
    assert_matches(&s, addr, &served.lock().unwrap(), sent);
}

#[test]
fn loopback_ipv4_exact_counts() {
    require_root!();
    exact_counts_on("127.0.0.1:0");
}

#[test]
fn loopback_ipv6_exact_counts() {
    require_root!();
    exact_counts_on("[::1]:0");
}

#[test]
fn refused_connection_counts_as_failed() {
    require_root!();
    let h = Harness::new(&["lo"]);
    // Bind then drop: nothing listens on that port any more.
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    assert!(std::net::TcpStream::connect(addr).is_err());
    let s = h.snapshot_when(|s| s.peers.iter().any(|p| p.addr == addr && p.conns.failed >= 1));
    let p = peer(&s, addr);
    assert_eq!((p.conns.failed, p.conns.opened, p.requests), (1, 0, 0));
}

#[test]
fn connection_opened_before_the_probe_is_picked_up_at_its_next_request() {
    require_root!();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let served = common::serve(l);
    let mut c = common::Client::connect(addr);
    assert_eq!(c.get("/before"), Some(200));
    // Attach only now: the handshake and the first exchange went unseen.
    let h = Harness::new(&["lo"]);
    for _ in 0..5 {
        assert_eq!(c.get("/after/1"), Some(200));
    }
    drop(c);
    let s = h.snapshot_when(|s| s.peers.iter().any(|p| p.addr == addr && p.conns.closed >= 1));
    let p = peer(&s, addr);
    assert_eq!(served.lock().unwrap().values().sum::<u64>(), 6);
    assert_eq!((p.requests, p.responses.class[1], p.conns.opened, p.conns.closed), (5, 5, 0, 1));
    assert_eq!(h.progs.filter_total(), h.progs.conns().unwrap().len() as u64);
}
