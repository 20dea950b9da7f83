//! Carrying the userspace side across a restart: the aggregates only the
//! daemon keeps (routes, latency histograms, history, the recent feed, the
//! userspace counters) are read back from the table's last publish.
//!
//! Two cases:
//! - the BPF maps were pinned and reused ([`Resume::Maps`]): the kernel-side
//!   counters went on counting while no daemon ran, the ring kept the
//!   finished exchanges; only the userspace aggregates come from the table.
//! - the maps are new ([`Resume::TableOnly`]: `--no-pin`, no writable
//!   bpffs, or incompatible pins): the last published per-peer totals become
//!   the aggregator's [`Base`](crate::totals::Base), added to what the new
//!   maps count, so totals never go backwards; what crossed the wire while
//!   no probe ran is not counted.
//!
//! What the table cannot give back: per-route latency buckets (it keeps
//! only their sum, count and percentiles), so route percentiles start over
//! while route latency sums and counts continue.

use std::collections::HashMap;
use std::net::SocketAddr;

use upstreamtop_table::{Responses, Snapshot};

use crate::aggregate::{monotonic_ns, unix_ns, Aggregator, RouteState};
use crate::bpf::{types, BpfStats};
use crate::hist::Hist;
use crate::totals::BpfTotals;

/// How the previous run's state comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The pinned maps were reused: kernel counters are continuous.
    Maps,
    /// New maps: the table's totals are the base.
    TableOnly,
}

fn counters_of(p: &upstreamtop_table::PeerStats) -> types::peer_counters {
    types::peer_counters {
        requests: p.requests,
        responses: p.responses.class,
        no_response: p.no_response,
        sent_bytes: p.sent_bytes,
        received_bytes: p.received_bytes,
        conn_opened: p.conns.opened,
        conn_closed: p.conns.closed,
        conn_failed: p.conns.failed,
        conn_reset: p.conns.reset,
        codes_other: p.responses.codes_other,
    }
}

fn route_state(requests: u64, r: &Responses, no_response: u64, sum_ns: u64, count: u64) -> RouteState {
    RouteState {
        requests,
        class: r.class,
        // Sorted: the fold looks codes up by binary search.
        codes: {
            let mut c = r.codes.clone();
            c.sort_unstable();
            c
        },
        no_response,
        // Buckets are not in the table: percentiles restart from new data.
        latency: Hist::with_totals(sum_ns, count),
        prev_requests: requests,
        prev_5xx: r.class[4],
        ..Default::default()
    }
}

impl Aggregator {
    /// Take over the state of the run that published `last`. `now` is what
    /// the maps hold at this moment (used, with [`Resume::Maps`], to keep
    /// the sweeper's own counts apart from the kernel's).
    pub fn restore(&mut self, last: &Snapshot, now: &BpfTotals, how: Resume) {
        let m = &last.meta;
        self.started_unix_ns = m.started_unix_ns;
        self.publish_seq = m.publish_seq;
        // The first window after the restart spans the gap since that
        // publish, so its rates are what happened meanwhile.
        let ago = unix_ns().saturating_sub(m.published_unix_ns);
        self.last_publish_mono_ns = Some(monotonic_ns().saturating_sub(ago));

        let bpf_now: HashMap<SocketAddr, &types::peer_counters> = now.peers.iter().map(|(a, c)| (*a, c)).collect();
        for p in &last.peers {
            let published = counters_of(p);
            let ps = self.peers.entry(p.addr).or_default();
            ps.latency = Hist::from_buckets(&p.latency.buckets, p.latency.sum_ns, p.latency.count);
            ps.history = p.history.iter().copied().collect();
            ps.first_seen_unix_ns = p.first_seen_unix_ns;
            ps.last_seen_unix_ns = p.last_seen_unix_ns;
            ps.prev = published;
            ps.prev_failed = p.conns.failed;
            match how {
                Resume::Maps => {
                    // The table holds kernel + sweeper counts; the kernel's
                    // part is at least what the maps hold now only if nothing
                    // failed meanwhile, so this may fold a few kernel-counted
                    // failures of the gap into the sweeper's share: the sum
                    // stays right from here on.
                    let kernel = bpf_now.get(&p.addr);
                    ps.swept_failed = p.conns.failed.saturating_sub(kernel.map_or(0, |c| c.conn_failed));
                    ps.swept_no_response = p.no_response.saturating_sub(kernel.map_or(0, |c| c.no_response));
                }
                Resume::TableOnly => {
                    self.base.peers.insert(p.addr, published);
                    self.base.codes.insert(p.addr, p.responses.codes.iter().copied().collect());
                }
            }
        }
        for r in &last.routes {
            let Some(peer) = last.peers.get(r.peer as usize).map(|p| p.addr) else { continue };
            let st = route_state(r.requests, &r.responses, r.no_response, r.latency_sum_ns, r.latency_count);
            if r.is_other {
                self.restore_route(peer, None, st);
            } else {
                self.restore_route(peer, Some(&format!("{} {}", r.method, r.path)), st);
            }
        }
        self.recent = last.recent.iter().cloned().collect();
        while self.recent.len() > self.limits.recent_len {
            self.recent.pop_front();
        }
        let c = &m.counters;
        self.route_overflow = c.route_overflow;
        self.recent_sampled_out = c.recent_sampled_out;
        self.conn_evicted = c.conn_evicted;
        match how {
            Resume::Maps => self.parse_errors = c.parse_errors.saturating_sub(now.stats.parse_errors),
            Resume::TableOnly => {
                self.base.stats = BpfStats {
                    events_dropped: c.events_dropped,
                    conn_table_full: c.conn_table_full,
                    peer_table_full: c.peer_table_full,
                    parse_errors: c.parse_errors,
                    ..Default::default()
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::AggLimits;
    use crate::bpf::peer_key_of;

    fn agg() -> Aggregator {
        Aggregator::new(AggLimits {
            max_routes: 10,
            history_len: 5,
            recent_per_interval: 10,
            recent_len: 10,
            max_tcp_peers: 10,
        })
    }

    fn event(peer: SocketAddr, req: &[u8], status: u16) -> types::exchange_event {
        let mut ev = types::exchange_event {
            req_ts: monotonic_ns(),
            latency_ns: 1_000_000,
            peer: peer_key_of(peer),
            status,
            req_len: req.len() as u16,
            ..Default::default()
        };
        ev.req[..req.len()].copy_from_slice(req);
        ev
    }

    fn totals(peer: SocketAddr, requests: u64, ok: u64, failed: u64) -> BpfTotals {
        let mut c = types::peer_counters { requests, conn_failed: failed, ..Default::default() };
        c.responses[1] = ok;
        BpfTotals { peers: vec![(peer, c)], codes: vec![(peer, 200, ok)], ..Default::default() }
    }

    /// A run that saw 3 requests (2 on /a/:id) and one sweeper-found failure.
    fn previous(peer: SocketAddr) -> Snapshot {
        let mut a = agg();
        for r in [&b"GET /a/1 HTTP/1.1\r\n"[..], b"GET /a/2 HTTP/1.1\r\n", b"POST /b HTTP/1.1\r\n"] {
            a.on_event(&event(peer, r, 200));
        }
        a.on_unanswered_syn(peer, true);
        a.end_interval(&totals(peer, 3, 3, 0), 1_000_000_000, vec!["lo".into()]).clone()
    }

    fn route(s: &Snapshot, path: &str) -> u64 {
        s.routes.iter().filter(|r| r.path == path).map(|r| r.requests).sum()
    }

    #[test]
    fn reused_maps_continue_routes_and_keep_the_sweepers_share() {
        let peer: SocketAddr = "10.0.0.5:80".parse().unwrap();
        let last = previous(peer);
        assert_eq!(last.peers[0].conns.failed, 1);
        // The maps went on counting: 2 more requests (one on /a/:id) that
        // the new daemon reads from the ring.
        let now = totals(peer, 5, 5, 0);
        let mut a = agg();
        a.restore(&last, &totals(peer, 3, 3, 0), Resume::Maps);
        a.on_event(&event(peer, b"GET /a/3 HTTP/1.1\r\n", 200));
        a.on_event(&event(peer, b"GET /c HTTP/1.1\r\n", 200));
        let s = a.end_interval(&now, 1_000_000_000, vec!["lo".into()]);
        assert_eq!(s.peers[0].requests, 5);
        assert_eq!(s.peers[0].conns.failed, 1, "the sweeper's count survives");
        assert_eq!((route(s, "/a/:id"), route(s, "/b"), route(s, "/c")), (3, 1, 1));
        assert_eq!(s.meta.publish_seq, last.meta.publish_seq + 1);
        assert_eq!(s.meta.started_unix_ns, last.meta.started_unix_ns);
        assert_eq!(s.peers[0].latency.count, 5);
        assert_eq!(s.peers[0].history.len(), 2);
    }

    #[test]
    fn fresh_maps_add_to_the_published_totals() {
        let peer: SocketAddr = "10.0.0.6:80".parse().unwrap();
        let other: SocketAddr = "10.0.0.7:80".parse().unwrap();
        let mut last = previous(peer);
        // A second peer that gets no traffic after the restart stays listed.
        let mut p2 = last.peers[0].clone();
        p2.addr = other;
        last.peers.push(p2);
        let mut a = agg();
        a.restore(&last, &BpfTotals::default(), Resume::TableOnly);
        a.on_event(&event(peer, b"GET /a/9 HTTP/1.1\r\n", 200));
        let s = a.end_interval(&totals(peer, 1, 1, 0), 1_000_000_000, vec![]);
        let p = s.peers.iter().find(|p| p.addr == peer).unwrap();
        assert_eq!(p.requests, 4);
        assert_eq!(p.responses.codes, vec![(200, 4)]);
        assert_eq!(p.conns.failed, 1);
        assert_eq!(route(s, "/a/:id"), 3);
        assert_eq!(s.peers.iter().find(|p| p.addr == other).unwrap().requests, 3);
    }
}
