//! Real programs on loopback, real HTTP from a std-only client to a std-only
//! server; exact counts against what the server served. Needs root.

mod common;

use std::net::TcpListener;

use common::{assert_matches, peer, require_root, run_traffic, wait_for, Harness};

#[test]
fn loopback_ipv4_exact_counts() {
    require_root!();
    let h = Harness::new(&["lo"]);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let served = common::serve(l);
    let sent = run_traffic(addr);
    let s = wait_for(&h, addr, sent);
    assert_matches(&s, addr, &served.lock().unwrap(), sent);
}

#[test]
fn loopback_ipv6_exact_counts() {
    require_root!();
    let h = Harness::new(&["lo"]);
    let l = TcpListener::bind("[::1]:0").unwrap();
    let addr = l.local_addr().unwrap();
    let served = common::serve(l);
    let sent = run_traffic(addr);
    let s = wait_for(&h, addr, sent);
    assert_matches(&s, addr, &served.lock().unwrap(), sent);
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
