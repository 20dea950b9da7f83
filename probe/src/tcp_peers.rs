//! Connection counts of connections that never carried HTTP.
//!
//! The programs count them per peer in an LRU map (`tcp_peers`) apart from
//! the HTTP backends' slots, so that a host's other TCP (databases, TLS
//! upstreams, downloads) never takes an HTTP backend's place. This module
//! turns that map into monotonic per-peer totals: a value the LRU forgot is
//! banked, and a peer nobody connected to for [`FORGET_NS`] is dropped, as
//! are the least recently active beyond `--max-tcp-peers`, so the daemon's
//! memory stays bounded however many destinations come and go.
//! A peer that is an HTTP backend too gets these counts added to its own.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use crate::bpf::types;

/// A peer of other TCP leaves the report this long after its last change.
pub const FORGET_NS: u64 = 10 * 60 * 1_000_000_000;

/// opened, closed, failed, reset.
type Counts = [u64; 4];

fn counts(c: &types::tcp_counters) -> Counts {
    [c.opened, c.closed, c.failed, c.reset]
}

/// One peer's connection counts that carried no HTTP: all it has for a
/// peer of other TCP, the part added to its own for an HTTP backend.
#[derive(Debug, Clone, Default)]
struct Part {
    /// What the map held for this peer before it forgot it.
    banked: Counts,
    /// The map's current value.
    last: Counts,
    /// Attempts the sweeper found abandoned (never in the map).
    swept_failed: u64,
    touched_mono_ns: u64,
}

impl Part {
    fn total(&self) -> Counts {
        let mut t = self.banked;
        for (a, b) in t.iter_mut().zip(self.last) {
            *a += b;
        }
        t[2] += self.swept_failed;
        t
    }
}

/// Per-peer totals of connections that carried no HTTP.
#[derive(Debug, Clone)]
pub struct TcpPeers {
    parts: HashMap<SocketAddr, Part>,
    /// Peers kept that are not HTTP backends.
    max_others: usize,
}

impl TcpPeers {
    pub fn new(max_others: usize) -> Self {
        TcpPeers { parts: HashMap::new(), max_others }
    }

    /// An attempt to `peer` that was never answered (from the sweeper).
    pub fn on_unanswered_syn(&mut self, peer: SocketAddr, now_mono_ns: u64) {
        let p = self.parts.entry(peer).or_default();
        p.swept_failed += 1;
        p.touched_mono_ns = now_mono_ns;
    }

    /// Take this publish's reading of the map. `http` are the HTTP peers
    /// (their parts are kept as long as they are).
    pub fn update(&mut self, map: &[(SocketAddr, types::tcp_counters)], http: &HashSet<SocketAddr>, now_mono_ns: u64) {
        let mut seen = HashSet::with_capacity(map.len());
        for (addr, c) in map {
            seen.insert(*addr);
            let cur = counts(c);
            let p = self.parts.entry(*addr).or_default();
            if cur.iter().zip(p.last).any(|(c, l)| *c < l) {
                // Forgotten and made anew between two readings.
                for (b, l) in p.banked.iter_mut().zip(p.last) {
                    *b += l;
                }
            }
            if cur != p.last || p.touched_mono_ns == 0 {
                p.touched_mono_ns = now_mono_ns;
            }
            p.last = cur;
        }
        self.parts.retain(|addr, p| {
            if !seen.contains(addr) && p.last != Counts::default() {
                for (b, l) in p.banked.iter_mut().zip(p.last) {
                    *b += l;
                }
                p.last = Counts::default();
            }
            http.contains(addr) || seen.contains(addr) || now_mono_ns.saturating_sub(p.touched_mono_ns) < FORGET_NS
        });
        let others = self.parts.keys().filter(|a| !http.contains(*a)).count();
        if others > self.max_others {
            let mut by_age: Vec<(u64, SocketAddr)> =
                self.parts.iter().filter(|(a, _)| !http.contains(*a)).map(|(a, p)| (p.touched_mono_ns, *a)).collect();
            by_age.sort_unstable();
            for (_, a) in &by_age[..others - self.max_others] {
                self.parts.remove(a);
            }
        }
    }

    /// Add the counts of `addr` to an HTTP peer's counters.
    pub fn add_to(&self, addr: &SocketAddr, c: &mut types::peer_counters) {
        if let Some(p) = self.parts.get(addr) {
            let [o, cl, f, r] = p.total();
            c.conn_opened += o;
            c.conn_closed += cl;
            c.conn_failed += f;
            c.conn_reset += r;
        }
    }

    /// The peers that are not HTTP backends, sorted, as counters with only
    /// connection figures.
    pub fn others(&self, http: &HashSet<SocketAddr>) -> Vec<(SocketAddr, types::peer_counters)> {
        let mut out: Vec<(SocketAddr, types::peer_counters)> = self
            .parts
            .iter()
            .filter(|(a, _)| !http.contains(*a))
            .map(|(a, p)| {
                let [o, cl, f, r] = p.total();
                let c = types::peer_counters {
                    conn_opened: o,
                    conn_closed: cl,
                    conn_failed: f,
                    conn_reset: r,
                    ..Default::default()
                };
                (*a, c)
            })
            .collect();
        out.sort_by_key(|(a, _)| *a);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tc(opened: u64, closed: u64) -> types::tcp_counters {
        types::tcp_counters { opened, closed, failed: 0, reset: 0 }
    }

    #[test]
    fn forgotten_values_are_banked_and_idle_peers_leave() {
        let a: SocketAddr = "10.0.0.1:5432".parse().unwrap();
        let http = HashSet::new();
        let mut t = TcpPeers::new(16);
        t.update(&[(a, tc(3, 2))], &http, 1);
        // The LRU forgot it, then a new connection made it anew.
        t.update(&[], &http, 2);
        t.update(&[(a, tc(1, 0))], &http, 3);
        t.on_unanswered_syn(a, 3);
        let others = t.others(&http);
        assert_eq!(others.len(), 1);
        let c = others[0].1;
        assert_eq!((c.conn_opened, c.conn_closed, c.conn_failed, c.requests), (4, 2, 1, 0));
        // Untouched past FORGET_NS and gone from the map: dropped.
        t.update(&[], &http, 3 + FORGET_NS);
        assert!(t.others(&http).is_empty());
    }

    #[test]
    fn an_http_peer_gets_its_other_connections_added_and_is_kept() {
        let a: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let http: HashSet<SocketAddr> = [a].into();
        let mut t = TcpPeers::new(16);
        t.update(&[(a, tc(1, 1))], &http, 1);
        t.update(&[], &http, 2 * FORGET_NS);
        assert!(t.others(&http).is_empty());
        let mut c = types::peer_counters { conn_opened: 5, ..Default::default() };
        t.add_to(&a, &mut c);
        assert_eq!((c.conn_opened, c.conn_closed), (6, 1));
    }

    #[test]
    fn beyond_the_bound_the_least_recently_active_leave_first() {
        let peer = |i: u8| SocketAddr::from(([10, 0, 1, i], 443));
        let http: HashSet<SocketAddr> = [peer(0)].into();
        let mut t = TcpPeers::new(3);
        for i in 0..6u8 {
            t.update(&[(peer(i), tc(1, 1))], &http, 1 + u64::from(i));
        }
        let kept: Vec<SocketAddr> = t.others(&http).into_iter().map(|(a, _)| a).collect();
        assert_eq!(kept, vec![peer(3), peer(4), peer(5)]);
        let mut c = types::peer_counters::default();
        t.add_to(&peer(0), &mut c);
        assert_eq!(c.conn_opened, 1, "an HTTP backend's share is kept whatever the bound");
    }
}
