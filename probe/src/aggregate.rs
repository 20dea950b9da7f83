//! Folds what the BPF side reports (per-CPU counters, ring-buffer events,
//! sweeper findings) into [`Snapshot`]s.
//!
//! Memory is what the daemon keeps between publishes plus one [`Snapshot`]:
//! the snapshot is kept and rewritten in place by each publish (its vectors
//! and strings reused), not built afresh, so a publish allocates next to
//! nothing and the peak is the steady state. Route latency histograms are
//! sparse until busy (see hist.rs), route keys are stored once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;

use upstreamtop_table::histogram::bucket_of;
use upstreamtop_table::{
    Connections, HistorySample, Latency, PeerStats, ProbeCounters, ProbeMeta, RecentRequest, Responses, RouteStats,
    Snapshot, Window,
};

use crate::bpf::{socket_addr, types};
use crate::hist::Hist;
use crate::http;
use crate::tcp_peers::TcpPeers;
use crate::totals::{Base, BpfTotals};

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
    /// Peers of other TCP kept (the least recently active dropped first).
    pub max_tcp_peers: usize,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct PeerState {
    pub(crate) latency: Hist,
    /// This interval's latencies only (the window's percentiles).
    pub(crate) interval_latency: Hist,
    /// Counted by the sweeper (not seen by the programs).
    pub(crate) swept_failed: u64,
    pub(crate) swept_no_response: u64,
    /// The counters at the last interval's end: the window is what moved
    /// since.
    pub(crate) prev: types::peer_counters,
    /// Failed connections at the last interval's end, the sweeper's
    /// included (the history sample's delta).
    pub(crate) prev_failed: u64,
    pub(crate) history: VecDeque<HistorySample>,
    pub(crate) first_seen_unix_ns: u64,
    pub(crate) last_seen_unix_ns: u64,
    /// This peer's named routes: `METHOD path` → index into
    /// [`Aggregator::routes`]. Looked up with the event's borrowed key, so
    /// folding an event on a known route allocates nothing.
    routes: HashMap<Rc<str>, u32>,
    /// Index of this peer's "other" route, once it has one.
    other_route: Option<u32>,
    /// Position in the snapshot being published (None: not in it).
    snapshot_index: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct RouteState {
    pub(crate) requests: u64,
    pub(crate) class: [u64; 5],
    /// Exact codes, ascending (at most the 500 codes 100..=599).
    pub(crate) codes: Vec<(u16, u64)>,
    pub(crate) no_response: u64,
    pub(crate) latency: Hist,
    /// Requests and 5xx at the last interval's end (the rates' deltas).
    pub(crate) prev_requests: u64,
    pub(crate) prev_5xx: u64,
    /// p50/p90/p99 as of `percentiles_at` latencies: only routes that saw
    /// new ones are recomputed at a publish. (Zero latencies, zero
    /// percentiles: the default is consistent.)
    pub(crate) percentiles: [u64; 3],
    pub(crate) percentiles_at: u64,
}

/// One route of one peer: a named one or the peer's "other".
#[derive(Debug, Clone)]
pub(crate) struct Route {
    peer: SocketAddr,
    /// `METHOD path` (shared with the peer's index); None for "other".
    key: Option<Rc<str>>,
    state: RouteState,
}

/// The userspace state between publishes.
pub struct Aggregator {
    pub(crate) limits: AggLimits,
    pub(crate) started_unix_ns: u64,
    pub(crate) pid: u32,
    pub(crate) publish_seq: u64,
    pub(crate) last_publish_mono_ns: Option<u64>,
    pub(crate) peers: HashMap<SocketAddr, PeerState>,
    /// Every route, named and "other", in order of first sight (routes are
    /// never dropped, so indexes stay valid).
    pub(crate) routes: Vec<Route>,
    /// Named routes in `routes` (bounded by `limits.max_routes`).
    named_routes: usize,
    /// `routes` indexes in publish order: named routes by (peer, method,
    /// path), then the "other" routes by peer. Sorted again only after a
    /// route was added.
    route_order: Vec<u32>,
    route_order_stale: bool,
    pub(crate) recent: VecDeque<RecentRequest>,
    pub(crate) recent_this_interval: usize,
    pub(crate) route_overflow: u64,
    pub(crate) recent_sampled_out: u64,
    pub(crate) conn_evicted: u64,
    /// Requests whose first bytes did not parse as a route here (the
    /// programs' own parse errors are in the BPF stats).
    pub(crate) parse_errors: u64,
    /// Totals of a previous run whose BPF maps are gone (see restore.rs),
    /// added to what the fresh maps count.
    pub(crate) base: Base,
    /// Peers of other TCP, and the other-TCP share of HTTP peers.
    tcp_peers: TcpPeers,
    /// The route key of the event being folded (one buffer for all).
    route_key_buf: String,
    /// Per-peer status code counts of a publish, sorted (reused).
    sorted_codes: Vec<(SocketAddr, u16, u64)>,
    /// The last publish, rewritten in place by the next one.
    published: Snapshot,
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

/// Method and path of a route key (`METHOD path`; empty for "other").
fn split_key(key: Option<&str>) -> (&str, &str) {
    key.and_then(|k| k.split_once(' ')).unwrap_or(("", ""))
}

/// `s = v`, keeping `s`'s allocation.
fn set_string(s: &mut String, v: &str) {
    if s != v {
        s.clear();
        s.push_str(v);
    }
}

fn empty_peer(addr: SocketAddr) -> PeerStats {
    PeerStats {
        addr,
        requests: 0,
        responses: Responses::default(),
        no_response: 0,
        sent_bytes: 0,
        received_bytes: 0,
        conns: Connections::default(),
        latency: Latency::default(),
        window: Window::default(),
        history: Vec::new(),
        first_seen_unix_ns: 0,
        last_seen_unix_ns: 0,
    }
}

fn saturate_u32(v: u64) -> u32 {
    v.min(u64::from(u32::MAX)) as u32
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
            routes: Vec::new(),
            named_routes: 0,
            route_order: Vec::new(),
            route_order_stale: false,
            recent: VecDeque::new(),
            recent_this_interval: 0,
            route_overflow: 0,
            recent_sampled_out: 0,
            conn_evicted: 0,
            parse_errors: 0,
            base: Default::default(),
            tcp_peers: TcpPeers::new(limits.max_tcp_peers),
            route_key_buf: String::new(),
            sorted_codes: Vec::new(),
            published: Snapshot::default(),
        }
    }

    /// One finished exchange from the ring buffer.
    pub fn on_event(&mut self, ev: &types::exchange_event) {
        let peer = socket_addr(ev.peer.addr, ev.peer.port);
        let len = usize::from(ev.req_len).min(ev.req.len());
        let mut key = std::mem::take(&mut self.route_key_buf);
        let parsed = http::route_key(&ev.req[..len], &mut key);
        if !parsed {
            self.parse_errors += 1;
        }
        let latency = (ev.status != 0).then_some(ev.latency_ns);
        self.exchange(peer, parsed.then_some(key.as_str()), ev.status, latency, ev.req_ts);
        self.route_key_buf = key;
    }

    /// Fold one exchange; `key` is its route (`METHOD path`), None when
    /// the request did not parse.
    fn exchange(&mut self, peer: SocketAddr, key: Option<&str>, status: u16, latency: Option<u64>, req_ts_mono: u64) {
        let ps = self.peers.entry(peer).or_default();
        // One bucket lookup for the three histograms the latency goes to.
        let latency = latency.map(|ns| (bucket_of(ns), ns));
        if let Some((b, ns)) = latency {
            ps.latency.add_in(b, ns);
            ps.interval_latency.add_in(b, ns);
        }
        let named = match key {
            Some(k) => match ps.routes.get(k) {
                Some(&i) => Some(i),
                None if self.named_routes < self.limits.max_routes => {
                    let k: Rc<str> = Rc::from(k);
                    let i = self.routes.len() as u32;
                    self.routes.push(Route { peer, key: Some(k.clone()), state: RouteState::default() });
                    ps.routes.insert(k, i);
                    self.named_routes += 1;
                    self.route_order_stale = true;
                    Some(i)
                }
                None => {
                    self.route_overflow += 1;
                    None
                }
            },
            None => None,
        };
        let i = match named.or(ps.other_route) {
            Some(i) => i,
            None => {
                let i = self.routes.len() as u32;
                self.routes.push(Route { peer, key: None, state: RouteState::default() });
                ps.other_route = Some(i);
                self.route_order_stale = true;
                i
            }
        };
        let route = &mut self.routes[i as usize].state;
        route.requests += 1;
        if status == 0 {
            route.no_response += 1;
        } else {
            if let Some(c) = route.class.get_mut(usize::from(status / 100).saturating_sub(1)) {
                *c += 1;
            }
            match route.codes.binary_search_by_key(&status, |&(c, _)| c) {
                Ok(j) => route.codes[j].1 += 1,
                Err(j) => route.codes.insert(j, (status, 1)),
            }
        }
        if let Some((b, ns)) = latency {
            route.latency.add_in(b, ns);
        }

        if self.recent_this_interval < self.limits.recent_per_interval {
            self.recent_this_interval += 1;
            let (method, path) = split_key(key);
            self.recent.push_back(RecentRequest {
                unix_ns: to_unix(req_ts_mono),
                peer,
                method: method.to_owned(),
                path: path.to_owned(),
                status,
                latency_ns: latency.map_or(0, |(_, ns)| ns),
            });
            while self.recent.len() > self.limits.recent_len {
                self.recent.pop_front();
            }
        } else {
            self.recent_sampled_out += 1;
        }
    }

    /// Put back a route of an earlier run (restore.rs): `key` is
    /// `METHOD path`, None for the peer's "other" route. Restored routes
    /// are kept even beyond `max_routes` (a restart with a smaller limit).
    pub(crate) fn restore_route(&mut self, peer: SocketAddr, key: Option<&str>, state: RouteState) {
        let ps = self.peers.entry(peer).or_default();
        let known = match key {
            Some(k) => ps.routes.get(k).copied(),
            None => ps.other_route,
        };
        if let Some(i) = known {
            self.routes[i as usize].state = state;
            return;
        }
        let i = self.routes.len() as u32;
        let key: Option<Rc<str>> = key.map(Rc::from);
        match &key {
            Some(k) => {
                ps.routes.insert(k.clone(), i);
                self.named_routes += 1;
            }
            None => ps.other_route = Some(i),
        }
        self.routes.push(Route { peer, key, state });
        self.route_order_stale = true;
    }

    /// The sweeper evicted an idle connection (`http`: one that carried
    /// HTTP); `awaiting` when a request on it never got an answer (raw
    /// first bytes of that request given).
    pub fn on_evicted(&mut self, peer: SocketAddr, http: bool, awaiting: Option<(&[u8], u64)>) {
        self.conn_evicted += 1;
        if !http {
            return;
        }
        if let Some((raw, req_ts)) = awaiting {
            self.peers.entry(peer).or_default().swept_no_response += 1;
            let mut key = std::mem::take(&mut self.route_key_buf);
            let parsed = http::route_key(raw, &mut key);
            self.exchange(peer, parsed.then_some(key.as_str()), 0, None, req_ts);
            self.route_key_buf = key;
        }
    }

    /// The sweeper found a connection attempt that was never answered, to
    /// an HTTP backend (`http`) or to a peer that never carried HTTP.
    pub fn on_unanswered_syn(&mut self, peer: SocketAddr, http: bool) {
        if http {
            self.peers.entry(peer).or_default().swept_failed += 1;
        } else {
            self.tcp_peers.on_unanswered_syn(peer, monotonic_ns());
        }
    }

    /// End the interval: fold its deltas (`totals` against the previous
    /// reading, and the events folded meanwhile) into the peers' windows
    /// and the routes' rates, push each peer's history sample, and start
    /// the next interval. Returns the snapshot to publish: the previous one
    /// rewritten in place. `interval_ns` is the configured interval (the
    /// first window's length); `interfaces` are the ones attached.
    pub fn end_interval(&mut self, totals: &BpfTotals, interval_ns: u64, interfaces: Vec<String>) -> &Snapshot {
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

        // Codes sorted like the peers, walked alongside them.
        self.sorted_codes.clear();
        self.sorted_codes.extend_from_slice(&totals.codes);
        self.sorted_codes.sort_unstable_by_key(|&(a, c, _)| (a, c));
        let mut codes = self.sorted_codes.iter().peekable();

        // HTTP backends first, sorted; then the peers of other TCP (a full
        // table drops those first).
        let http: HashSet<SocketAddr> = totals.peers.iter().map(|(a, _)| *a).collect();
        self.tcp_peers.update(&totals.tcp, &http, now_mono);
        let mut peers_sorted: Vec<(SocketAddr, types::peer_counters)> = totals.peers.clone();
        peers_sorted.sort_by_key(|(a, _)| *a);
        for (a, c) in &mut peers_sorted {
            self.tcp_peers.add_to(a, c);
        }
        peers_sorted.extend(self.tcp_peers.others(&http));
        for ps in self.peers.values_mut() {
            ps.snapshot_index = None;
        }
        let out = &mut self.published;
        for (i, (addr, c)) in peers_sorted.iter().enumerate() {
            let ps = self.peers.entry(*addr).or_default();
            ps.snapshot_index = Some(i as u32);
            let failed = c.conn_failed + ps.swept_failed;
            let no_response = c.no_response + ps.swept_no_response;
            let d_req = c.requests.saturating_sub(ps.prev.requests);
            let d_5xx = c.responses[4].saturating_sub(ps.prev.responses[4]);
            if d_req > 0 {
                ps.last_seen_unix_ns = now_unix;
                if ps.first_seen_unix_ns == 0 {
                    ps.first_seen_unix_ns = now_unix;
                }
            }
            let il = &ps.interval_latency;
            let [p50, p90, p99] = il.percentiles();
            let window = Window {
                requests_per_sec: d_req as f64 / secs,
                errors_5xx_per_sec: d_5xx as f64 / secs,
                sent_bytes_per_sec: c.sent_bytes.saturating_sub(ps.prev.sent_bytes) as f64 / secs,
                received_bytes_per_sec: c.received_bytes.saturating_sub(ps.prev.received_bytes) as f64 / secs,
                latency_avg_ns: il.sum_ns.checked_div(il.count).unwrap_or(0),
                latency_p50_ns: p50,
                latency_p90_ns: p90,
                latency_p99_ns: p99,
            };
            ps.interval_latency.clear();
            ps.history.push_back(HistorySample {
                requests: saturate_u32(d_req),
                errors_5xx: saturate_u32(d_5xx),
                conn_failed: saturate_u32(failed.saturating_sub(ps.prev_failed)),
                latency_p99_us: saturate_u32(p99 / 1000),
            });
            while ps.history.len() > self.limits.history_len {
                ps.history.pop_front();
            }
            ps.prev = *c;
            ps.prev_failed = failed;

            if i == out.peers.len() {
                out.peers.push(empty_peer(*addr));
            }
            let p = &mut out.peers[i];
            p.addr = *addr;
            p.requests = c.requests;
            p.responses.class = c.responses;
            p.responses.codes.clear();
            while codes.next_if(|(a, _, _)| a < addr).is_some() {}
            while let Some(&(_, code, n)) = codes.next_if(|(a, _, _)| a == addr) {
                match p.responses.codes.last_mut() {
                    Some(last) if last.0 == code => last.1 += n,
                    _ => p.responses.codes.push((code, n)),
                }
            }
            p.responses.codes_other = c.codes_other;
            p.no_response = no_response;
            p.sent_bytes = c.sent_bytes;
            p.received_bytes = c.received_bytes;
            p.conns = Connections {
                opened: c.conn_opened,
                closed: c.conn_closed,
                failed,
                reset: c.conn_reset,
                active: totals.active.get(addr).copied().unwrap_or(0),
            };
            ps.latency.write_dense(&mut p.latency.buckets);
            p.latency.sum_ns = ps.latency.sum_ns;
            p.latency.count = ps.latency.count;
            p.window = window;
            p.history.clear();
            p.history.extend(ps.history.iter().copied());
            p.first_seen_unix_ns = ps.first_seen_unix_ns;
            p.last_seen_unix_ns = ps.last_seen_unix_ns;
        }
        out.peers.truncate(peers_sorted.len());
        // Peers of other TCP the report no longer holds leave no state.
        self.peers.retain(|_, ps| ps.snapshot_index.is_some() || !ps.routes.is_empty() || ps.other_route.is_some());

        if self.route_order_stale {
            let routes = &self.routes;
            self.route_order.clear();
            self.route_order.extend(0..routes.len() as u32);
            self.route_order.sort_unstable_by(|&a, &b| {
                let (a, b) = (&routes[a as usize], &routes[b as usize]);
                // "METHOD path" sorts like (method, path): the space is
                // below every byte a method or path holds.
                (a.key.is_none(), a.peer, a.key.as_deref()).cmp(&(b.key.is_none(), b.peer, b.key.as_deref()))
            });
            self.route_order_stale = false;
        }
        let mut n = 0;
        for &ri in &self.route_order {
            let r = &mut self.routes[ri as usize];
            let Some(pi) = self.peers.get(&r.peer).and_then(|ps| ps.snapshot_index) else { continue };
            let st = &mut r.state;
            let d_req = st.requests - st.prev_requests;
            let d_5xx = st.class[4] - st.prev_5xx;
            st.prev_requests = st.requests;
            st.prev_5xx = st.class[4];
            if st.percentiles_at != st.latency.count {
                st.percentiles = st.latency.percentiles();
                st.percentiles_at = st.latency.count;
            }
            if n == out.routes.len() {
                out.routes.push(RouteStats::default());
            }
            let o = &mut out.routes[n];
            n += 1;
            let (method, path) = split_key(r.key.as_deref());
            o.peer = pi;
            o.is_other = r.key.is_none();
            set_string(&mut o.method, method);
            set_string(&mut o.path, path);
            o.requests = st.requests;
            o.responses.class = st.class;
            o.responses.codes.clone_from(&st.codes);
            o.responses.codes_other = 0;
            o.no_response = st.no_response;
            o.latency_sum_ns = st.latency.sum_ns;
            o.latency_count = st.latency.count;
            [o.latency_p50_ns, o.latency_p90_ns, o.latency_p99_ns] = st.percentiles;
            o.requests_per_sec = d_req as f64 / secs;
            o.errors_5xx_per_sec = d_5xx as f64 / secs;
        }
        out.routes.truncate(n);
        self.recent_this_interval = 0;

        out.recent.truncate(self.recent.len());
        for (i, r) in self.recent.iter().enumerate() {
            match out.recent.get_mut(i) {
                Some(o) => {
                    o.unix_ns = r.unix_ns;
                    o.peer = r.peer;
                    set_string(&mut o.method, &r.method);
                    set_string(&mut o.path, &r.path);
                    o.status = r.status;
                    o.latency_ns = r.latency_ns;
                }
                None => out.recent.push(r.clone()),
            }
        }
        out.meta = ProbeMeta {
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
        };
        &self.published
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
        AggLimits { max_routes, history_len: 3, recent_per_interval: 2, recent_len: 4, max_tcp_peers: 16 }
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
        let s = a.end_interval(&totals(peer, 3), 1_000_000_000, vec!["lo".into()]);
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
        let s = a.end_interval(&totals(peer, 5), 1_000_000_000, vec![]);
        assert_eq!(s.recent.len(), 2);
        assert_eq!(s.meta.counters.recent_sampled_out, 3);
        assert_eq!(s.recent[0].peer, peer);
        // A new interval samples again, the feed keeps the latest recent_len.
        for _ in 0..5 {
            a.on_event(&event(peer, b"GET /x HTTP/1.1\r\n", 201, 1000));
        }
        let s = a.end_interval(&totals(peer, 10), 1_000_000_000, vec![]);
        assert_eq!(s.recent.len(), 4);
        assert_eq!(s.recent.last().unwrap().status, 201);
        assert_eq!(s.peers[0].history.len(), 2);
    }

    /// Figures that depend on how often an interval ended (rates, windows,
    /// history, publish counters, the per-interval recent feed) cleared, to
    /// compare what is cumulative.
    fn cumulative(s: &Snapshot) -> Snapshot {
        let mut s = s.clone();
        s.meta = ProbeMeta::default();
        s.recent.clear();
        for p in &mut s.peers {
            (p.window, p.first_seen_unix_ns, p.last_seen_unix_ns) = (Window::default(), 0, 0);
            p.history.clear();
        }
        for r in &mut s.routes {
            (r.requests_per_sec, r.errors_5xx_per_sec) = (0.0, 0.0);
        }
        s
    }

    #[test]
    fn a_snapshot_rewritten_in_place_equals_a_fresh_one() {
        let peers: Vec<SocketAddr> = ["10.0.0.9:80", "10.0.0.1:80", "[fd00::1]:8080", "10.0.0.5:81"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        // One aggregator publishes after every round, the other only at the end.
        let (mut often, mut once) = (Aggregator::new(limits(6)), Aggregator::new(limits(6)));
        let mut counts = [0u64; 4];
        let totals_of = |counts: &[u64; 4], leave_out: usize| BpfTotals {
            peers: (0..4)
                .filter(|&i| i != leave_out)
                .map(|i| (peers[i], types::peer_counters { requests: counts[i], ..Default::default() }))
                .collect(),
            codes: (0..4).filter(|&i| i != leave_out).map(|i| (peers[i], 200, counts[i] + i as u64)).collect(),
            ..Default::default()
        };
        for round in 0..6usize {
            for k in 0..40usize {
                // Later rounds bring routes that sort before earlier ones,
                // more codes, and (round 3) a peer's first traffic.
                let i = (k * 7 + round) % if round < 3 { 3 } else { 4 };
                let req = format!("{} /r{}/{} HTTP/1.1\r\n", ["GET", "DELETE"][k % 2], 9 - round, k % 3);
                let status = [200, 404, 503, 0, 201][(k + round) % 5];
                let ev = event(peers[i], req.as_bytes(), status, 1_000 * (1 + k as u64 * round as u64));
                often.on_event(&ev);
                once.on_event(&ev);
                counts[i] += 1;
            }
            // A peer missing from most publishes (round 4 has all four, the
            // final one three): fewer peers and routes than the one before.
            let _ = often.end_interval(&totals_of(&counts, round % 5), 1_000_000_000, vec!["lo".into()]);
        }
        let last = totals_of(&counts, 1);
        let fresh = cumulative(once.end_interval(&last, 1_000_000_000, vec![]));
        let reused = cumulative(often.end_interval(&last, 1_000_000_000, vec![]));
        assert_eq!(reused, fresh);
        assert_eq!(fresh.peers.len(), 3);
        assert!(fresh.routes.iter().all(|r| fresh.peers[r.peer as usize].addr != peers[1]));
        // Named routes by (peer, method, path), then the "other" ones.
        let keys: Vec<_> =
            fresh.routes.iter().map(|r| (r.is_other, fresh.peers[r.peer as usize].addr, &r.method, &r.path)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        assert!(fresh.routes.iter().any(|r| r.is_other), "the route table overflowed");
    }

    #[test]
    fn unparseable_request_bytes_count_as_parse_errors_in_other() {
        let peer: SocketAddr = "10.0.0.3:80".parse().unwrap();
        let mut a = Aggregator::new(limits(10));
        a.on_event(&event(peer, b"\x00\x01garbage", 200, 1000));
        let s = a.end_interval(&totals(peer, 1), 1_000_000_000, vec![]);
        assert_eq!(s.meta.counters.parse_errors, 1);
        assert_eq!(s.meta.counters.route_overflow, 0);
        assert!(s.routes.iter().all(|r| r.is_other));
    }
}
