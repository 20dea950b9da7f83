//! Folds what the BPF side reports (per-CPU counters, ring-buffer events,
//! sweeper findings) into [`Snapshot`]s.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;

use upstreamtop_table::histogram::{bucket_of, quantile_ns, BUCKETS};
use upstreamtop_table::{
    Connections, HistorySample, Latency, PeerStats, ProbeCounters, ProbeMeta, RecentRequest,
    Responses, RouteStats, Snapshot, Window,
};

use crate::bpf::{socket_addr, types, BpfStats};
use crate::http;

/// Limits of the userspace side.
#[derive(Debug, Clone, Copy)]
pub struct AggLimits {
    pub max_routes: usize,
    pub history_len: usize,
    /// Recent-feed samples kept per publish interval (the rest are counted
    /// in `recent_sampled_out`).
    pub recent_per_interval: usize,
    /// Length of the recent feed.
    pub recent_len: usize,
}

/// Everything read from the BPF maps for one publish.
#[derive(Debug, Clone, Default)]
pub struct BpfTotals {
    pub peers: Vec<(SocketAddr, types::peer_counters)>,
    pub codes: Vec<(SocketAddr, u16, u64)>,
    pub stats: BpfStats,
    /// Established tracked connections per peer.
    pub active: HashMap<SocketAddr, u64>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Hist {
    pub(crate) buckets: Vec<u64>,
    pub(crate) sum_ns: u64,
    pub(crate) count: u64,
}

impl Hist {
    fn add(&mut self, ns: u64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; BUCKETS];
        }
        self.buckets[bucket_of(ns)] += 1;
        self.sum_ns += ns;
        self.count += 1;
    }
    fn q(&self, q: f64) -> u64 {
        if self.buckets.is_empty() {
            0
        } else {
            quantile_ns(&self.buckets, q).unwrap_or(0)
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct PeerState {
    pub(crate) latency: Hist,
    pub(crate) interval_latency: Hist,
    /// Counted by the sweeper (not seen by the programs).
    pub(crate) extra_failed: u64,
    pub(crate) extra_no_response: u64,
    pub(crate) prev: types::peer_counters,
    pub(crate) prev_failed: u64,
    pub(crate) history: VecDeque<HistorySample>,
    pub(crate) first_seen_unix_ns: u64,
    pub(crate) last_seen_unix_ns: u64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct RouteState {
    pub(crate) requests: u64,
    pub(crate) class: [u64; 5],
    pub(crate) codes: BTreeMap<u16, u64>,
    pub(crate) no_response: u64,
    pub(crate) latency: Hist,
    pub(crate) prev_requests: u64,
    pub(crate) prev_5xx: u64,
}

/// The userspace state between publishes.
pub struct Aggregator {
    pub(crate) limits: AggLimits,
    pub(crate) started_unix_ns: u64,
    pub(crate) pid: u32,
    pub(crate) publish_seq: u64,
    pub(crate) last_publish_mono_ns: Option<u64>,
    pub(crate) peers: HashMap<SocketAddr, PeerState>,
    pub(crate) routes: BTreeMap<(SocketAddr, String, String), RouteState>,
    pub(crate) others: BTreeMap<SocketAddr, RouteState>,
    pub(crate) recent: VecDeque<RecentRequest>,
    pub(crate) recent_this_interval: usize,
    pub(crate) route_overflow: u64,
    pub(crate) recent_sampled_out: u64,
    pub(crate) conn_evicted: u64,
    pub(crate) parse_errors: u64,
    /// Totals of a previous run whose BPF maps are gone (see restore.rs),
    /// added to what the fresh maps count.
    pub(crate) base: crate::restore::Base,
}

/// CLOCK_MONOTONIC (what bpf_ktime_get_ns reads) in ns.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Wall clock in ns since the Unix epoch.
pub fn unix_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// bpf_ktime_get_ns() timestamp as wall clock.
pub(crate) fn to_unix(mono_ns: u64) -> u64 {
    let (now_mono, now_unix) = (monotonic_ns(), unix_ns());
    now_unix.saturating_sub(now_mono.saturating_sub(mono_ns))
}

impl Aggregator {
    pub fn new(limits: AggLimits) -> Self {
        Aggregator {
            limits,
            started_unix_ns: unix_ns(),
            pid: std::process::id(),
            publish_seq: 0,
            last_publish_mono_ns: None,
            peers: HashMap::new(),
            routes: BTreeMap::new(),
            others: BTreeMap::new(),
            recent: VecDeque::new(),
            recent_this_interval: 0,
            route_overflow: 0,
            recent_sampled_out: 0,
            conn_evicted: 0,
            parse_errors: 0,
            base: Default::default(),
        }
    }

    /// One finished exchange from the ring buffer.
    pub fn on_event(&mut self, ev: &types::exchange_event) {
        let peer = socket_addr(ev.peer.addr, ev.peer.port);
        let len = usize::from(ev.req_len).min(ev.req.len());
        let parsed = http::parse_request(&ev.req[..len]);
        if parsed.is_none() {
            self.parse_errors += 1;
        }
        let latency = (ev.status != 0).then_some(ev.latency_ns);
        let (method, path) = match parsed {
            Some((m, t)) => (m, http::fold_path(&t)),
            None => (String::new(), String::new()),
        };
        self.exchange(peer, &method, &path, ev.status, latency, ev.req_ts);
    }

    fn exchange(
        &mut self,
        peer: SocketAddr,
        method: &str,
        path: &str,
        status: u16,
        latency: Option<u64>,
        req_ts_mono: u64,
    ) {
        let ps = self.peers.entry(peer).or_default();
        if let Some(ns) = latency {
            ps.latency.add(ns);
            ps.interval_latency.add(ns);
        }
        let route_key = (peer, method.to_string(), path.to_string());
        let regular = self.routes.len() < self.limits.max_routes || self.routes.contains_key(&route_key);
        let route = if !method.is_empty() && regular {
            self.routes.entry(route_key).or_default()
        } else {
            if !method.is_empty() {
                self.route_overflow += 1;
            }
            self.others.entry(peer).or_default()
        };
        route.requests += 1;
        if status == 0 {
            route.no_response += 1;
        } else {
            if let Some(c) = route.class.get_mut(usize::from(status / 100).saturating_sub(1)) {
                *c += 1;
            }
            *route.codes.entry(status).or_default() += 1;
        }
        if let Some(ns) = latency {
            route.latency.add(ns);
        }

        if self.recent_this_interval < self.limits.recent_per_interval {
            self.recent_this_interval += 1;
            self.recent.push_back(RecentRequest {
                unix_ns: to_unix(req_ts_mono),
                peer,
                method: method.to_string(),
                path: path.to_string(),
                status,
                latency_ns: latency.unwrap_or(0),
            });
            while self.recent.len() > self.limits.recent_len {
                self.recent.pop_front();
            }
        } else {
            self.recent_sampled_out += 1;
        }
    }

    /// The sweeper evicted an idle connection; `awaiting` when a request on
    /// it never got an answer (raw first bytes of that request given).
    pub fn on_evicted(&mut self, peer: SocketAddr, awaiting: Option<(&[u8], u64)>) {
        self.conn_evicted += 1;
        if let Some((raw, req_ts)) = awaiting {
            self.peers.entry(peer).or_default().extra_no_response += 1;
            let (m, p) = match http::parse_request(raw) {
                Some((m, t)) => (m, http::fold_path(&t)),
                None => (String::new(), String::new()),
            };
            self.exchange(peer, &m, &p, 0, None, req_ts);
        }
    }

    /// The sweeper found a SYN that was never answered.
    pub fn on_unanswered_syn(&mut self, peer: SocketAddr) {
        self.peers.entry(peer).or_default().extra_failed += 1;
    }

    /// Build the snapshot for this publish and start a new interval.
    pub fn snapshot(&mut self, totals: &BpfTotals, interval_ns: u64, interfaces: Vec<String>) -> Snapshot {
        let with_base;
        let totals = if self.base.is_empty() {
            totals
        } else {
            with_base = self.base.add_to(totals);
            &with_base
        };
        let now_mono = monotonic_ns();
        let now_unix = unix_ns();
        let elapsed_ns = match self.last_publish_mono_ns {
            Some(prev) => now_mono.saturating_sub(prev).max(1),
            None => interval_ns.max(1),
        };
        let secs = elapsed_ns as f64 / 1e9;
        self.last_publish_mono_ns = Some(now_mono);
        self.publish_seq += 1;

        let mut codes: HashMap<SocketAddr, BTreeMap<u16, u64>> = HashMap::new();
        for (peer, code, n) in &totals.codes {
            *codes.entry(*peer).or_default().entry(*code).or_default() += n;
        }

        let mut peers_sorted: Vec<&(SocketAddr, types::peer_counters)> = totals.peers.iter().collect();
        peers_sorted.sort_by_key(|(a, _)| *a);
        let mut index: HashMap<SocketAddr, u32> = HashMap::new();
        let mut peers = Vec::with_capacity(peers_sorted.len());
        for (addr, c) in peers_sorted {
            let ps = self.peers.entry(*addr).or_default();
            let failed = c.conn_failed + ps.extra_failed;
            let no_response = c.no_response + ps.extra_no_response;
            let d_req = c.requests.saturating_sub(ps.prev.requests);
            let d_5xx = c.responses[4].saturating_sub(ps.prev.responses[4]);
            if d_req > 0 {
                ps.last_seen_unix_ns = now_unix;
                if ps.first_seen_unix_ns == 0 {
                    ps.first_seen_unix_ns = now_unix;
                }
            }
            let il = std::mem::take(&mut ps.interval_latency);
            let window = Window {
                requests_per_sec: d_req as f64 / secs,
                errors_5xx_per_sec: d_5xx as f64 / secs,
                sent_bytes_per_sec: c.sent_bytes.saturating_sub(ps.prev.sent_bytes) as f64 / secs,
                received_bytes_per_sec: c.received_bytes.saturating_sub(ps.prev.received_bytes) as f64
                    / secs,
                latency_avg_ns: il.sum_ns.checked_div(il.count).unwrap_or(0),
                latency_p50_ns: il.q(0.5),
                latency_p90_ns: il.q(0.9),
                latency_p99_ns: il.q(0.99),
            };
            ps.history.push_back(HistorySample {
                requests: d_req.min(u64::from(u32::MAX)) as u32,
                errors_5xx: d_5xx.min(u64::from(u32::MAX)) as u32,
                conn_failed: failed.saturating_sub(ps.prev_failed).min(u64::from(u32::MAX)) as u32,
                latency_p99_us: (il.q(0.99) / 1000).min(u64::from(u32::MAX)) as u32,
            });
            while ps.history.len() > self.limits.history_len {
                ps.history.pop_front();
            }
            ps.prev = *c;
            ps.prev_failed = failed;

            let peer_codes = codes.remove(addr).unwrap_or_default();
            index.insert(*addr, peers.len() as u32);
            peers.push(PeerStats {
                addr: *addr,
                requests: c.requests,
                responses: Responses {
                    class: c.responses,
                    codes: peer_codes.into_iter().collect(),
                    codes_other: c.codes_other,
                },
                no_response,
                sent_bytes: c.sent_bytes,
                received_bytes: c.received_bytes,
                conns: Connections {
                    opened: c.conn_opened,
                    closed: c.conn_closed,
                    failed,
                    reset: c.conn_reset,
                    active: totals.active.get(addr).copied().unwrap_or(0),
                },
                latency: Latency {
                    buckets: if ps.latency.buckets.is_empty() {
                        vec![0; BUCKETS]
                    } else {
                        ps.latency.buckets.clone()
                    },
                    sum_ns: ps.latency.sum_ns,
                    count: ps.latency.count,
                },
                window,
                history: ps.history.iter().copied().collect(),
                first_seen_unix_ns: ps.first_seen_unix_ns,
                last_seen_unix_ns: ps.last_seen_unix_ns,
            });
        }

        let mut routes = Vec::new();
        let regular = self.routes.iter_mut().map(|((p, m, path), r)| (*p, false, m.clone(), path.clone(), r));
        let other = self.others.iter_mut().map(|(p, r)| (*p, true, String::new(), String::new(), r));
        for (peer, is_other, method, path, r) in regular.chain(other) {
            let Some(&pi) = index.get(&peer) else { continue };
            let d_req = r.requests - r.prev_requests;
            let d_5xx = r.class[4] - r.prev_5xx;
            r.prev_requests = r.requests;
            r.prev_5xx = r.class[4];
            routes.push(RouteStats {
                peer: pi,
                is_other,
                method,
                path,
                requests: r.requests,
                responses: Responses {
                    class: r.class,
                    codes: r.codes.iter().map(|(c, n)| (*c, *n)).collect(),
                    codes_other: 0,
                },
                no_response: r.no_response,
                latency_sum_ns: r.latency.sum_ns,
                latency_count: r.latency.count,
                latency_p50_ns: r.latency.q(0.5),
                latency_p90_ns: r.latency.q(0.9),
                latency_p99_ns: r.latency.q(0.99),
                requests_per_sec: d_req as f64 / secs,
                errors_5xx_per_sec: d_5xx as f64 / secs,
            });
        }
        self.recent_this_interval = 0;

        Snapshot {
            meta: ProbeMeta {
                pid: self.pid,
                started_unix_ns: self.started_unix_ns,
                published_unix_ns: now_unix,
                interval_ns,
                publish_seq: self.publish_seq,
                history_len: self.limits.history_len as u32,
                interfaces,
                counters: ProbeCounters {
                    events_dropped: totals.stats.events_dropped,
                    conn_table_full: totals.stats.conn_table_full,
                    conn_evicted: self.conn_evicted,
                    peer_table_full: totals.stats.peer_table_full,
                    route_overflow: self.route_overflow,
                    recent_sampled_out: self.recent_sampled_out,
                    parse_errors: totals.stats.parse_errors + self.parse_errors,
                },
            },
            peers,
            routes,
            recent: self.recent.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::peer_key_of;

    fn event(peer: SocketAddr, req: &[u8], status: u16, latency_ns: u64) -> types::exchange_event {
        let mut ev = types::exchange_event {
            req_ts: monotonic_ns(),
            latency_ns,
            peer: peer_key_of(peer),
            status,
            req_len: req.len() as u16,
            ..Default::default()
        };
        ev.req[..req.len()].copy_from_slice(req);
        ev
    }

    fn limits(max_routes: usize) -> AggLimits {
        AggLimits { max_routes, history_len: 3, recent_per_interval: 2, recent_len: 4 }
    }

    fn totals(peer: SocketAddr, requests: u64) -> BpfTotals {
        let c = types::peer_counters { requests, ..Default::default() };
        BpfTotals { peers: vec![(peer, c)], ..Default::default() }
    }

    #[test]
    fn full_route_table_overflows_into_the_peers_other_route() {
        let peer: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        let mut a = Aggregator::new(limits(1));
        a.on_event(&event(peer, b"GET /a/1 HTTP/1.1\r\n", 200, 1_000_000));
        a.on_event(&event(peer, b"GET /a/2 HTTP/1.1\r\n", 404, 2_000_000));
        a.on_event(&event(peer, b"POST /b HTTP/1.1\r\n", 503, 3_000_000));
        let s = a.snapshot(&totals(peer, 3), 1_000_000_000, vec!["lo".into()]);
        let regular: Vec<_> = s.routes.iter().filter(|r| !r.is_other).collect();
        assert_eq!(regular.len(), 1);
        assert_eq!((regular[0].method.as_str(), regular[0].path.as_str(), regular[0].requests), ("GET", "/a/:id", 2));
        assert_eq!(regular[0].responses.codes, vec![(200, 1), (404, 1)]);
        let other = s.routes.iter().find(|r| r.is_other).unwrap();
        assert_eq!((other.requests, other.responses.class[4]), (1, 1));
        assert_eq!(s.meta.counters.route_overflow, 1);
        // Route sums equal the exchanges seen; the peer keeps its exact total.
        assert_eq!(s.routes.iter().map(|r| r.requests).sum::<u64>(), 3);
        assert_eq!(s.peers[0].requests, 3);
        assert_eq!(s.peers[0].latency.count, 3);
    }

    #[test]
    fn recent_feed_is_rate_limited_per_interval() {
        let peer: SocketAddr = "[fd00::2]:80".parse().unwrap();
        let mut a = Aggregator::new(limits(10));
        for _ in 0..5 {
            a.on_event(&event(peer, b"GET / HTTP/1.1\r\n", 200, 1000));
        }
        let s = a.snapshot(&totals(peer, 5), 1_000_000_000, vec![]);
        assert_eq!(s.recent.len(), 2);
        assert_eq!(s.meta.counters.recent_sampled_out, 3);
        assert_eq!(s.recent[0].peer, peer);
        // A new interval samples again, the feed keeps the latest recent_len.
        for _ in 0..5 {
            a.on_event(&event(peer, b"GET /x HTTP/1.1\r\n", 201, 1000));
        }
        let s = a.snapshot(&totals(peer, 10), 1_000_000_000, vec![]);
        assert_eq!(s.recent.len(), 4);
        assert_eq!(s.recent.last().unwrap().status, 201);
        assert_eq!(s.peers[0].history.len(), 2);
    }

    #[test]
    fn unparseable_request_bytes_count_as_parse_errors_in_other() {
        let peer: SocketAddr = "10.0.0.3:80".parse().unwrap();
        let mut a = Aggregator::new(limits(10));
        a.on_event(&event(peer, b"\x00\x01garbage", 200, 1000));
        let s = a.snapshot(&totals(peer, 1), 1_000_000_000, vec![]);
        assert_eq!(s.meta.counters.parse_errors, 1);
        assert_eq!(s.meta.counters.route_overflow, 0);
        assert!(s.routes.iter().all(|r| r.is_other));
    }
}
