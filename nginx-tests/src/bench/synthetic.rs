//! A synthetic, fully populated table snapshot (N peers × M routes, full
//! histories, several exact codes per record) for timing the endpoint's
//! render path without needing that much real traffic.

use std::net::{Ipv4Addr, SocketAddr};

use upstreamtop_table::histogram::BUCKETS;
use upstreamtop_table::{
    Connections, HistorySample, Latency, PeerStats, ProbeMeta, RecentRequest, Responses, RouteStats, Snapshot, Window,
};

pub const HISTORY: u32 = 60;
pub const RECENT: usize = 64;

/// Peer `i`'s address (10.1.0.0/16, port 8080; never contacted).
pub fn peer_addr(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250 + 1) as u8), 8080))
}

fn responses(n: u64) -> Responses {
    let codes = vec![(200, n * 90 / 100), (201, n * 4 / 100), (304, n / 100), (404, n * 3 / 100), (503, n * 2 / 100)];
    let mut class = [0u64; 5];
    for &(code, c) in &codes {
        class[usize::from(code / 100 - 1)] += c;
    }
    Responses { class, codes, codes_other: 0 }
}

fn latency(n: u64, seed: usize) -> Latency {
    let mut buckets = vec![0u64; BUCKETS];
    // A bell over a band of buckets, shifted per peer.
    let centre = 20 + seed % 15;
    let mut count = 0;
    for (i, b) in buckets.iter_mut().enumerate() {
        let d = i.abs_diff(centre) as u64;
        if d < 6 {
            *b = n / (1 << (d + 1));
            count += *b;
        }
    }
    Latency { buckets, sum_ns: count * 2_000_000, count }
}

/// A snapshot as the probe would publish it after a while under load.
pub fn snapshot(peers: usize, routes_per_peer: usize, now_ns: u64, seq: u64) -> Snapshot {
    let meta = ProbeMeta {
        pid: 1,
        started_unix_ns: now_ns.saturating_sub(3_600_000_000_000),
        published_unix_ns: now_ns,
        interval_ns: 1_000_000_000,
        publish_seq: seq,
        history_len: HISTORY,
        interfaces: vec!["lo".into(), "eth0".into()],
        counters: Default::default(),
    };
    let mut snap = Snapshot { meta, ..Default::default() };
    for i in 0..peers {
        let requests = 100_000 + (i as u64 * 7919) % 50_000;
        snap.peers.push(PeerStats {
            addr: peer_addr(i),
            requests,
            responses: responses(requests),
            no_response: i as u64 % 3,
            sent_bytes: requests * 420,
            received_bytes: requests * 3100,
            conns: Connections { opened: 40, closed: 8, failed: 1, reset: 2, active: 32 },
            latency: latency(requests, i),
            window: Window {
                requests_per_sec: 120.0 + (i % 17) as f64,
                errors_5xx_per_sec: 2.4,
                sent_bytes_per_sec: 50_400.0,
                received_bytes_per_sec: 372_000.0,
                latency_avg_ns: 2_100_000,
                latency_p50_ns: 1_900_000,
                latency_p90_ns: 3_800_000,
                latency_p99_ns: 7_200_000,
            },
            history: (0..HISTORY)
                .map(|h| HistorySample {
                    requests: 100 + h % 40,
                    errors_5xx: h % 3,
                    conn_failed: 0,
                    latency_p99_us: 7000 + h * 13,
                })
                .collect(),
            first_seen_unix_ns: meta_start(now_ns),
            last_seen_unix_ns: now_ns,
        });
        for r in 0..routes_per_peer {
            let n = requests / routes_per_peer as u64;
            snap.routes.push(RouteStats {
                peer: i as u32,
                is_other: false,
                method: if r % 4 == 3 { "POST" } else { "GET" }.into(),
                path: format!("/api/v2/service{r}/items/:id"),
                requests: n,
                responses: responses(n),
                no_response: 0,
                latency_sum_ns: n * 2_000_000,
                latency_count: n,
                latency_p50_ns: 1_900_000,
                latency_p90_ns: 3_800_000,
                latency_p99_ns: 7_200_000,
                requests_per_sec: 7.5,
                errors_5xx_per_sec: 0.15,
            });
        }
    }
    snap.recent = (0..RECENT.min(peers.max(1) * 4))
        .map(|k| RecentRequest {
            unix_ns: now_ns - (RECENT - k) as u64 * 1_000_000,
            peer: peer_addr(k % peers.max(1)),
            method: "GET".into(),
            path: format!("/api/v2/service{}/items/:id", k % routes_per_peer.max(1)),
            status: 200,
            latency_ns: 1_800_000,
        })
        .collect();
    snap
}

fn meta_start(now_ns: u64) -> u64 {
    now_ns.saturating_sub(3_000_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_as_asked() {
        let s = snapshot(1000, 16, 5_000_000_000_000, 7);
        assert_eq!(s.peers.len(), 1000);
        assert_eq!(s.routes.len(), 16_000);
        assert_eq!(s.peers[999].addr, "10.1.3.250:8080".parse().unwrap());
        assert!(s.peers.iter().all(|p| p.history.len() == HISTORY as usize));
        let p = &s.peers[0];
        assert_eq!(p.responses.total(), p.responses.codes.iter().map(|c| c.1).sum::<u64>());
        assert_eq!(p.latency.count, p.latency.buckets.iter().sum::<u64>());
    }
}
