//! Real programs on loopback, real HTTP from a std-only client to a std-only
//! server; exact counts against what the server served. Needs root.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};

use common::{require_root, Client, Harness};
use upstreamtop_table::{PeerStats, Snapshot};

fn peer<'a>(s: &'a Snapshot, addr: SocketAddr) -> &'a PeerStats {
    s.peers.iter().find(|p| p.addr == addr).unwrap_or_else(|| panic!("peer {addr} missing: {s:#?}"))
}

/// Exchanges to `addr` covering the tricky cases; the server's own counts
/// are the ground truth.
fn run_traffic(addr: SocketAddr) -> u64 {
    let mut sent = 0;
    let mut c = Client::connect(addr);
    // Short requests, keepalive, exact codes and folded routes.
    for i in 0..10 {
        assert_eq!(c.get(&format!("/api/orders/{i}?x=1")), Some(200));
        sent += 1;
    }
    for code in [201u16, 204, 404, 404, 503, 302] {
        assert_eq!(c.get(&format!("/status/{code}")), Some(code));
        sent += 1;
    }
    // POST whose body (sent in its own segment) starts with "GET ".
    let body = b"GET /not-a-request HTTP/1.1\r\n\r\n";
    let head = format!("POST /items HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\n\r\n", body.len());
    assert_eq!(c.exchange(head.as_bytes(), Some(body)), Some(200));
    sent += 1;
    // 100-continue: the interim response must not end the exchange.
    let head = format!(
        "PUT /upload/5 HTTP/1.1\r\nHost: b\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    assert_eq!(c.exchange(head.as_bytes(), Some(body)), Some(200));
    sent += 1;
    // 103 Early Hints and the final response in one segment.
    assert_eq!(c.get("/early"), Some(200));
    sent += 1;
    // A response body that starts like a status line.
    assert_eq!(c.get("/status-body"), Some(200));
    sent += 1;
    // Request line split across two segments.
    assert_eq!(c.exchange(b"GET /split/77", Some(b" HTTP/1.1\r\nHost: b\r\n\r\n")), Some(200));
    sent += 1;
    drop(c);
    // HTTP/1.0 close-delimited response.
    let mut c = Client::connect(addr);
    assert_eq!(c.exchange(b"GET /http10 HTTP/1.0\r\n\r\n", None), Some(200));
    sent += 1;
    drop(c);
    // The backend resets instead of answering.
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/reset"), None);
    sent += 1;
    drop(c);
    sent
}

/// Compare the probe's figures for `addr` with what the server served.
fn assert_matches(s: &Snapshot, addr: SocketAddr, served: &BTreeMap<(String, String, u16), u64>, sent: u64) {
    let p = peer(s, addr);
    let served_total: u64 = served.values().sum();
    assert_eq!(served_total, sent);
    assert_eq!(p.requests, sent, "requests");
    let mut codes: BTreeMap<u16, u64> = BTreeMap::new();
    for ((_, _, code), n) in served {
        if *code != 0 {
            *codes.entry(*code).or_default() += n;
        }
    }
    // The 100 Continue and 103 Early Hints interim responses are counted too.
    codes.insert(100, 1);
    codes.insert(103, 1);
    assert_eq!(p.responses.codes, codes.into_iter().collect::<Vec<_>>(), "exact codes");
    let no_resp: u64 = served.iter().filter(|((_, _, c), _)| *c == 0).map(|(_, n)| n).sum();
    assert_eq!(p.no_response, no_resp, "no_response");
    assert_eq!(p.conns.opened, 3, "connections opened");
    assert_eq!(p.conns.closed, 3, "connections closed");
    assert_eq!(p.conns.reset, 1, "connections reset");
    assert_eq!(p.conns.active, 0, "connections active");
    assert_eq!(p.latency.count, sent - no_resp, "latency samples");

    // Routes: served paths folded the same way.
    let pi = s.peers.iter().position(|q| q.addr == addr).unwrap() as u32;
    let mut want: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for ((m, path, code), n) in served {
        let folded = upstreamtop_probe::http::fold_path(path.as_bytes());
        let e = want.entry((m.clone(), folded)).or_default();
        e.0 += n;
        if *code == 0 {
            e.1 += n;
        }
    }
    let got: BTreeMap<(String, String), (u64, u64)> = s
        .routes
        .iter()
        .filter(|r| r.peer == pi && !r.is_other)
        .map(|r| ((r.method.clone(), r.path.clone()), (r.requests, r.no_response)))
        .collect();
    assert_eq!(got, want, "routes");
}

fn wait_for(h: &Harness, addr: SocketAddr, sent: u64) -> Snapshot {
    h.snapshot_when(|s| {
        s.peers
            .iter()
            .find(|p| p.addr == addr)
            .is_some_and(|p| p.requests >= sent && p.conns.closed >= 3 && p.latency.count + p.no_response >= sent)
    })
}

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
