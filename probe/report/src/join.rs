//! The one join of the table with nginx's configuration: which peers each
//! group lists, which wire peers no group lists, which routes each peer
//! shows, the totals and the recent feed. Every answer is written from a
//! [`Joined`]: JSON ([`crate::json`]), Prometheus ([`crate::prometheus`]),
//! `upstreamtop-probe dump` and the dashboard's `--table` mode (both JSON).
//!
//! Rules:
//! - every configured server of every group is listed, with zero counts
//!   when the wire saw nothing; a peer listed by several groups shows the
//!   same wire figures in each (the wire cannot tell groups apart);
//!   same-named groups merge, in configuration order; groups come in name
//!   order;
//! - wire peers no group lists go to `unlisted`, never dropped; should the
//!   table hold one address twice (e.g. mapped and plain IPv4), the first
//!   joins the configuration and the others are unlisted;
//! - nginx's own listening sockets (client traffic to nginx) are left out
//!   everywhere, totals included;
//! - `totals` and `share` cover every peer that is not a listener,
//!   whatever `?upstream=` selects;
//! - `?upstream=NAME` keeps only that group (`unlisted` stays empty unless
//!   NAME is `unlisted`, then it is the only one), and the recent feed
//!   keeps only requests to the selected peers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use upstreamtop_table::{HistorySample, PeerView, RecentView, RouteView, SnapshotView};

use crate::config::{NginxConfig, Scope, ServerConf};
use crate::out::round3;
use crate::query::Query;
use crate::schema::{Probe, Responses, Totals};

/// The group name `?upstream=` uses for peers no group lists.
pub const UNLISTED: &str = "unlisted";

/// Intervals without requests after which a peer is `idle`.
pub const IDLE_INTERVALS: usize = 10;

/// An address as compared across the wire and the configuration: IP and
/// port only (IPv6 flow info and scope do not identify a backend), with
/// IPv4-mapped IPv6 folded to IPv4.
pub type AddrKey = (IpAddr, u16);

pub fn key(a: &SocketAddr) -> AddrKey {
    (normalise_ip(a.ip()), a.port())
}

pub fn normalise_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// `IP:port` as shown to people: `127.0.0.1:80`, `[::1]:80`. IPv4 (nearly
/// every peer) is spelled out by hand: `Display` goes through `fmt`, which
/// costs more than the rest of a peer's fixed fields.
pub fn show(k: &AddrKey) -> String {
    match k.0 {
        IpAddr::V4(ip) => {
            let mut s = String::with_capacity(21);
            let mut num = itoa::Buffer::new();
            for (i, o) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                s.push_str(num.format(o));
            }
            s.push(':');
            s.push_str(num.format(k.1));
            s
        }
        IpAddr::V6(_) => SocketAddr::new(k.0, k.1).to_string(),
    }
}

/// nginx's listening sockets, ready for matching peers against.
pub struct Listeners {
    exact: Vec<AddrKey>,
    wildcard_ports: Vec<u16>,
}

impl Listeners {
    pub fn new(listen: &[SocketAddr]) -> Self {
        let mut exact = Vec::new();
        let mut wildcard_ports = Vec::new();
        for l in listen {
            let k = key(l);
            if k.0.is_unspecified() {
                wildcard_ports.push(k.1);
            } else {
                exact.push(k);
            }
        }
        Listeners { exact, wildcard_ports }
    }

    /// True when traffic to `peer` is a client talking to nginx's front
    /// door: an exact listen address, or a wildcard listen's port on a
    /// loopback address or on an address nginx listens on explicitly. (A
    /// wildcard listen cannot tell us the host's other addresses; loopback
    /// is where a local client's traffic shows up.)
    pub fn is_listener(&self, peer: &AddrKey) -> bool {
        if self.exact.contains(peer) {
            return true;
        }
        self.wildcard_ports.contains(&peer.1)
            && (peer.0.is_loopback() || self.exact.iter().any(|(ip, _)| *ip == peer.0))
    }
}

/// For each peer address, the groups (by index in `NginxConfig::upstreams`)
/// that list it, in configuration order.
struct ConfigIndex<'c> {
    conf: &'c NginxConfig,
    by_addr: HashMap<AddrKey, Vec<usize>>,
}

impl<'c> ConfigIndex<'c> {
    fn new(conf: &'c NginxConfig) -> Self {
        let mut by_addr: HashMap<AddrKey, Vec<usize>> = HashMap::new();
        for (g, up) in conf.upstreams.iter().enumerate() {
            for s in &up.servers {
                by_addr.entry(key(&s.addr)).or_default().push(g);
            }
        }
        ConfigIndex { conf, by_addr }
    }

    fn is_listed(&self, k: &AddrKey) -> bool {
        self.by_addr.contains_key(k)
    }

    /// Name of the first group (configuration order) listing `k`.
    fn first_group(&self, k: &AddrKey) -> Option<&'c str> {
        self.by_addr.get(k).and_then(|v| v.first()).map(|g| self.conf.upstreams[*g].name.as_str())
    }

    /// Does the group called `name` list `k`?
    fn group_lists(&self, k: &AddrKey, name: &str) -> bool {
        self.by_addr.get(k).is_some_and(|v| v.iter().any(|g| self.conf.upstreams[*g].name == name))
    }
}

/// One group of the answer: an `upstream {}` block (same-named blocks
/// merged), an implicit group of `proxy_pass http://IP:port`, or the
/// unlisted peers.
pub struct Group<'c> {
    /// The group's name; `""` for the unlisted peers.
    pub name: &'c str,
    pub implicit: bool,
    /// Whose view nginx's per-peer figures are (`None` for unlisted peers).
    pub scope: Option<Scope>,
    /// Requests to the distinct peers this group counts.
    pub requests: u64,
    /// Requests per second over the last interval (rounded as shown).
    pub rps: f64,
    /// Requests and connections opened over the peers this group counts.
    pub reuse: Reuse,
    pub members: Vec<Member<'c>>,
}

/// Requests and the connections opened for them, for keepalive figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reuse {
    pub requests: u64,
    pub opened: u64,
}

impl Reuse {
    /// Requests per connection opened (0 when none was).
    pub fn requests_per_connection(&self) -> f64 {
        if self.opened == 0 {
            0.0
        } else {
            self.requests as f64 / self.opened as f64
        }
    }

    /// Percent of requests that paid for a new connection (at most 100).
    pub fn new_connection_pct(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.opened.min(self.requests) as f64 / self.requests as f64 * 100.0
        }
    }
}

impl Default for Group<'_> {
    fn default() -> Self {
        Group {
            name: "",
            implicit: false,
            scope: None,
            requests: 0,
            rps: 0.0,
            reuse: Reuse::default(),
            members: Vec::new(),
        }
    }
}

impl Group<'_> {
    /// Counts `p` in the group's figures.
    fn add(&mut self, p: &PeerView) {
        self.requests += p.requests();
        self.rps += p.window().requests_per_sec;
        self.reuse.requests += p.requests();
        self.reuse.opened += p.conns().opened;
    }
}

/// A peer as its group shows it.
pub struct Member<'c> {
    pub server: AddrKey,
    /// Its `server` line, when the group lists it.
    pub conf: Option<&'c ServerConf>,
    /// Its index among the table's peers, when the wire saw it.
    pub peer: Option<usize>,
    /// The group whose figures count this peer: of those listing it, the
    /// first `upstream {}` block by name, else the first implicit group
    /// ([`UNLISTED`] for unlisted peers).
    pub counted_in: &'c str,
}

/// A request of the recent feed.
pub struct RecentEntry<'v, 'c> {
    pub request: RecentView<'v>,
    pub server: AddrKey,
    /// The group it is shown under; `""` when none lists the peer.
    pub upstream: &'c str,
}

/// The routes a peer shows: the top named ones by requests (ties by path,
/// then method), then its overflow bucket(s). The table keeps at most one
/// overflow bucket per peer; should a hostile table hold more, writers
/// merge them.
#[derive(Default)]
pub struct SelectedRoutes<'v> {
    pub named: Vec<RouteView<'v>>,
    pub other: Vec<RouteView<'v>>,
}

/// A publish joined with nginx's configuration for one query; see the
/// module docs for the rules.
pub struct Joined<'v, 'c> {
    pub view: &'c SnapshotView<'v>,
    pub conf: &'c NginxConfig,
    pub query: &'c Query,
    /// The reader's wall clock.
    pub now_unix_ns: u64,
    pub probe: Probe,
    pub totals: Totals,
    /// Selected groups, by name.
    pub groups: Vec<Group<'c>>,
    /// Peers no group lists (empty when `?upstream=` selects a group).
    pub unlisted: Group<'c>,
    /// Newest first, at most `?recent=`.
    pub recent: Vec<RecentEntry<'v, 'c>>,
    /// Some shown peer has no history, so its state was judged against the
    /// clock: the answer must not be reused at a later time.
    pub clock_dependent: bool,
    peers: Vec<PeerView<'v>>,
    /// Requests per second over every non-listener peer, unrounded: the
    /// denominator of `share`.
    total_rps: f64,
    /// Each peer's routes as ranges of `route_index`, in table order.
    route_start: Vec<usize>,
    route_index: Vec<u32>,
}

impl<'v, 'c> Joined<'v, 'c> {
    /// Joins `view` with `conf` for `query` at `now_unix_ns`.
    pub fn new(view: &'c SnapshotView<'v>, conf: &'c NginxConfig, query: &'c Query, now_unix_ns: u64) -> Self {
        let listeners = Listeners::new(&conf.listen);
        let index = ConfigIndex::new(conf);
        let peers: Vec<PeerView<'v>> = view.peers().collect();
        let keys: Vec<AddrKey> = peers.iter().map(|p| key(&p.addr())).collect();
        let counted: Vec<bool> = keys.iter().map(|k| !listeners.is_listener(k)).collect();
        let mut by_key: HashMap<AddrKey, usize> = HashMap::with_capacity(peers.len());
        let mut extra: Vec<usize> = Vec::new();
        for (i, k) in keys.iter().enumerate().filter(|(i, _)| counted[*i]) {
            if by_key.insert(*k, i).is_some() {
                extra.push(i);
            }
        }

        // Route indices rather than views: a quarter of the memory, small
        // enough to stay under the allocator's mmap threshold, so no fresh
        // pages to fault in on every render.
        let mut route_start = vec![0usize; peers.len() + 1];
        // The view checked every route's peer index.
        for r in view.routes() {
            route_start[r.peer() as usize + 1] += 1;
        }
        for i in 0..peers.len() {
            route_start[i + 1] += route_start[i];
        }
        let mut fill = route_start.clone();
        let mut route_index: Vec<u32> = vec![0; route_start[peers.len()]];
        for (j, r) in view.routes().enumerate() {
            let at = &mut fill[r.peer() as usize];
            route_index[*at] = j as u32;
            *at += 1;
        }

        let mut totals = Totals::default();
        for (p, _) in peers.iter().zip(&counted).filter(|(_, c)| **c) {
            let w = p.window();
            let r = p.responses();
            totals.requests += p.requests();
            totals.rps += w.requests_per_sec;
            add_responses(&mut totals.responses, r.class(), r.codes(), r.codes_other());
            totals.errors_rps += w.errors_5xx_per_sec;
            totals.sent += p.sent_bytes();
            totals.received += p.received_bytes();
        }
        let total_rps = totals.rps;
        totals.rps = round3(totals.rps);
        totals.errors_rps = round3(totals.errors_rps);

        // Groups by name (same-named blocks merge, in configuration
        // order), and each listed peer's counting group: the first by name,
        // whatever `?upstream=` selects.
        let mut by_name: BTreeMap<&'c str, Vec<usize>> = BTreeMap::new();
        for (g, up) in conf.upstreams.iter().enumerate() {
            by_name.entry(up.name.as_str()).or_default().push(g);
        }
        // `upstream {}` blocks before the implicit groups of `proxy_pass
        // http://IP:port`, then by name: a backend is counted in the group
        // its operator named.
        let mut counting_order: Vec<(&&'c str, &Vec<usize>)> = by_name.iter().collect();
        counting_order.sort_by_key(|(name, blocks)| (blocks.iter().all(|&g| conf.upstreams[g].implicit), **name));
        let mut counted_in: HashMap<AddrKey, &'c str> = HashMap::new();
        for (name, blocks) in counting_order {
            for s in blocks.iter().flat_map(|&g| &conf.upstreams[g].servers) {
                counted_in.entry(key(&s.addr)).or_insert(name);
            }
        }
        let wanted = |name: &str| query.upstream.as_deref().is_none_or(|u| u == name);
        let mut groups = Vec::with_capacity(by_name.len());
        for (name, blocks) in by_name.into_iter().filter(|(name, _)| wanted(name)) {
            let scope = blocks.first().map(|&g| conf.upstreams[g].scope);
            let mut group = Group { name, scope, ..Group::default() };
            let mut seen: HashSet<AddrKey> = HashSet::new();
            for g in blocks {
                let up = &conf.upstreams[g];
                group.implicit = up.implicit;
                for s in &up.servers {
                    let k = key(&s.addr);
                    let peer = by_key.get(&k).copied();
                    let counted_in = counted_in.get(&k).copied().unwrap_or(name);
                    if let (Some(i), true, true) = (peer, counted_in == name, seen.insert(k)) {
                        group.add(&peers[i]);
                    }
                    group.members.push(Member { server: k, conf: Some(s), peer, counted_in });
                }
            }
            group.rps = round3(group.rps);
            groups.push(group);
        }

        let mut unlisted = Group::default();
        if wanted(UNLISTED) {
            let mut idx: Vec<usize> = by_key.iter().filter(|(k, _)| !index.is_listed(k)).map(|(_, &i)| i).collect();
            idx.extend(&extra);
            // Table order, not hash order: the rate sum and the order of
            // equal servers below must not depend on the hasher's seed.
            idx.sort_unstable();
            for &i in &idx {
                unlisted.add(&peers[i]);
            }
            unlisted.rps = round3(unlisted.rps);
            let mut shown: Vec<(String, usize)> = idx.iter().map(|&i| (show(&keys[i]), i)).collect();
            shown.sort_by(|a, b| peers[b.1].requests().cmp(&peers[a.1].requests()).then_with(|| a.0.cmp(&b.0)));
            unlisted.members = shown
                .into_iter()
                .map(|(_, i)| Member { server: keys[i], conf: None, peer: Some(i), counted_in: UNLISTED })
                .collect();
        }

        let recent = view
            .recent()
            .rev()
            .filter_map(|request| {
                let k = key(&request.peer());
                if listeners.is_listener(&k) {
                    return None;
                }
                let group = index.first_group(&k);
                let upstream: &'c str = match &query.upstream {
                    None => group.unwrap_or(""),
                    Some(u) if index.group_lists(&k, u) => u.as_str(),
                    Some(u) if u == UNLISTED && group.is_none() => "",
                    Some(_) => return None,
                };
                Some(RecentEntry { request, server: k, upstream })
            })
            .take(query.recent)
            .collect();

        let clock_dependent = groups
            .iter()
            .chain([&unlisted])
            .flat_map(|g| &g.members)
            .any(|m| m.peer.is_some_and(|i| peers[i].history_len() == 0));

        Joined {
            view,
            conf,
            query,
            now_unix_ns,
            probe: probe(view.meta(), now_unix_ns),
            totals,
            groups,
            unlisted,
            recent,
            clock_dependent,
            peers,
            total_rps,
            route_start,
            route_index,
        }
    }

    /// The wire figures of a member, when the wire saw it.
    pub fn peer(&self, m: &Member) -> Option<&PeerView<'v>> {
        m.peer.map(|i| &self.peers[i])
    }

    /// Percent of all requests per second that went to `p` in the last
    /// interval (unrounded).
    pub fn share(&self, p: &PeerView) -> f64 {
        if self.total_rps > 0.0 {
            p.window().requests_per_sec / self.total_rps * 100.0
        } else {
            0.0
        }
    }

    /// The member's state and the side it comes from (`nginx` or `wire`):
    /// nginx's `down` and `unavail` first, then the wire's verdict
    /// ([`state`]).
    pub fn state(&self, g: &Group, m: &Member) -> (&'static str, &'static str) {
        match m.conf {
            Some(c) if c.down => return ("down", "nginx"),
            Some(c) if g.scope.is_some_and(|s| s != Scope::Unknown) && c.nginx.unavailable => {
                return ("unavail", "nginx")
            }
            _ => {}
        }
        (self.wire_state(m), "wire")
    }

    /// The wire's verdict alone: see [`state`].
    pub fn wire_state(&self, m: &Member) -> &'static str {
        let p = self.peer(m).map(|p| {
            let w = p.window();
            StateInput {
                requests: p.requests(),
                window_rps: w.requests_per_sec,
                window_5xx_rps: w.errors_5xx_per_sec,
                last_seen_unix_ns: p.last_seen_unix_ns(),
                history: p.history(),
            }
        });
        state(p, false, self.view.meta().interval_ns, self.now_unix_ns)
    }

    /// nginx's view of the member, when its group's balancer is read.
    pub fn nginx<'m>(&self, g: &Group, m: &'m Member<'c>) -> Option<&'c crate::config::PeerState> {
        m.conf.filter(|_| g.scope.is_some_and(|s| s != Scope::Unknown)).map(|c| &c.nginx)
    }

    /// Failed connects the wire saw within the last `window_s` seconds
    /// (whole publish intervals of the peer's history).
    pub fn failed_connects_within(&self, m: &Member, window_s: u64) -> u64 {
        let Some(p) = self.peer(m) else { return 0 };
        let interval = self.view.meta().interval_ns.max(1);
        let n = window_s.saturating_mul(1_000_000_000).div_ceil(interval).max(1) as usize;
        p.history().rev().take(n).map(|h| u64::from(h.conn_failed)).sum()
    }

    /// Why the member gets no (or failing) traffic, from both sides, given
    /// its [`Self::state`]; empty when there is nothing to explain.
    pub fn diagnosis(&self, g: &Group, m: &Member, state: &str) -> String {
        let p = self.peer(m);
        let conns = p.map(|p| p.conns()).unwrap_or_default();
        let since_start = || {
            format!(
                "{} resets and {} exchanges without a response since the probe started",
                conns.reset,
                p.map_or(0, |p| p.no_response())
            )
        };
        match (state, m.conf) {
            ("down", _) => "configured down: nginx sends it nothing".to_owned(),
            ("unavail", Some(c)) => {
                let n = &c.nginx;
                format!(
                    "nginx took it out of rotation: {} failures counted (max_fails {}, fail_timeout {} s); \
                     the wire saw {} failed connects in the last {} s, and {}",
                    n.fails,
                    n.max_fails,
                    n.fail_timeout_s,
                    self.failed_connects_within(m, n.fail_timeout_s),
                    n.fail_timeout_s,
                    since_start()
                )
            }
            _ => {
                if let Some(n) = self.nginx(g, m).filter(|n| n.max_conns > 0 && n.in_flight >= n.max_conns) {
                    return format!(
                        "at max_conns: {} of {} requests in flight, nginx picks other peers",
                        n.in_flight, n.max_conns
                    );
                }
                match state {
                    "unhealthy" => {
                        format!(
                            "failing on the wire in the last interval; {} failed connects, {}",
                            conns.failed,
                            since_start()
                        )
                    }
                    "idle" if m.conf.is_some_and(|c| c.backup) => {
                        "backup: nginx uses it only when the primary servers are unavailable".to_owned()
                    }
                    "idle" if p.is_none_or(|p| p.requests() == 0) => "no request seen on the wire yet".to_owned(),
                    "idle" => format!("no request in the last {IDLE_INTERVALS} intervals"),
                    _ => String::new(),
                }
            }
        }
    }

    /// The routes peer `m` shows under this query (`?routes=` named ones,
    /// then its overflow bucket when it counted anything), reusing
    /// `into`'s allocation.
    pub fn routes(&self, m: &Member, into: &mut SelectedRoutes<'v>) {
        into.named.clear();
        into.other.clear();
        let Some(i) = m.peer else { return };
        let indices = &self.route_index[self.route_start[i]..self.route_start[i + 1]];
        let limit = self.query.routes;
        let named = &mut into.named;
        named.reserve(indices.len());
        for r in indices.iter().filter_map(|&j| self.view.route(j as usize)) {
            if !r.is_other() {
                named.push(r);
            } else if r.requests() > 0 {
                into.other.push(r);
            }
        }
        let cmp = |a: &RouteView, b: &RouteView| {
            // Byte order is str order.
            b.requests()
                .cmp(&a.requests())
                .then_with(|| a.path_bytes().cmp(b.path_bytes()))
                .then_with(|| a.method_bytes().cmp(b.method_bytes()))
        };
        if named.len() > limit {
            named.select_nth_unstable_by(limit, cmp);
            named.truncate(limit);
        }
        named.sort_unstable_by(cmp);
    }
}

/// The probe object: who published, when, and what it could not count.
fn probe(m: &upstreamtop_table::ProbeMeta, now_ns: u64) -> Probe {
    let c = &m.counters;
    let stale = m.is_stale(now_ns);
    Probe {
        up: !stale,
        stale,
        pid: m.pid,
        started: m.started_unix_ns / 1_000_000,
        last_publish: m.published_unix_ns / 1_000_000,
        age_ms: m.age_ns(now_ns) / 1_000_000,
        interval_ms: m.interval_ns / 1_000_000,
        interfaces: m.interfaces.clone(),
        drops: BTreeMap::from([
            ("events_dropped".to_owned(), c.events_dropped),
            ("conn_table_full".to_owned(), c.conn_table_full),
            ("peer_table_full".to_owned(), c.peer_table_full),
            ("recent_sampled_out".to_owned(), c.recent_sampled_out),
            ("parse_errors".to_owned(), c.parse_errors),
        ]),
        overflows: BTreeMap::from([
            ("route_overflow".to_owned(), c.route_overflow),
            ("conn_evicted".to_owned(), c.conn_evicted),
        ]),
    }
}

/// Adds a table responses block, given by its parts, into `a`.
pub(crate) fn add_responses(a: &mut Responses, class: [u64; 5], codes: impl Iterator<Item = (u16, u64)>, other: u64) {
    a.c1xx += class[0];
    a.c2xx += class[1];
    a.c3xx += class[2];
    a.c4xx += class[3];
    a.c5xx += class[4];
    for (c, n) in codes {
        let mut buf = itoa::Buffer::new();
        let c = buf.format(c);
        match a.codes.get_mut(c) {
            Some(v) => *v += n,
            None => {
                a.codes.insert(c.to_owned(), n);
            }
        }
    }
    a.codes_other += other;
    a.total += class.iter().sum::<u64>();
}

/// Paths come from the wire: the probe strips query strings, but be sure.
pub fn clean_path(p: &str) -> &str {
    p.split('?').next().unwrap_or("")
}

/// What the state rules read from a peer's wire figures.
pub struct StateInput<H> {
    pub requests: u64,
    pub window_rps: f64,
    pub window_5xx_rps: f64,
    pub last_seen_unix_ns: u64,
    /// History samples, oldest first.
    pub history: H,
}

/// `down` (configured), `unhealthy` (the last interval had connect
/// failures and no successful response, or ≥ 50% 5xx out of ≥ 5), `idle`
/// (no requests in the last 10 intervals, or never), else `up`.
pub fn state<H>(p: Option<StateInput<H>>, down: bool, interval_ns: u64, now_ns: u64) -> &'static str
where
    H: DoubleEndedIterator<Item = HistorySample> + Clone,
{
    if down {
        return "down";
    }
    let Some(p) = p else { return "idle" };
    let interval_s = interval_ns as f64 / 1e9;
    // The latest interval, and whether any of the last few had requests.
    let (requests, errors_5xx, conn_failed, active_lately) = match p.history.clone().next_back() {
        Some(h) => (
            u64::from(h.requests),
            u64::from(h.errors_5xx),
            u64::from(h.conn_failed),
            p.history.clone().rev().take(IDLE_INTERVALS).any(|h| h.requests > 0),
        ),
        // No history ring (`--history 0`): the window rates and last_seen.
        None => (
            (p.window_rps * interval_s).round() as u64,
            (p.window_5xx_rps * interval_s).round() as u64,
            0,
            p.last_seen_unix_ns != 0
                && now_ns.saturating_sub(p.last_seen_unix_ns) <= interval_ns.saturating_mul(IDLE_INTERVALS as u64),
        ),
    };
    let ok = requests.saturating_sub(errors_5xx);
    if (conn_failed > 0 && ok == 0) || (requests >= 5 && errors_5xx * 2 >= requests) {
        return "unhealthy";
    }
    if p.requests == 0 || !active_lately {
        return "idle";
    }
    "up"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_is_display() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ip = if i % 3 == 0 {
                IpAddr::from([0, 0, 0, (i % 256) as u8])
            } else {
                IpAddr::from((x as u32).to_be_bytes())
            };
            let a = SocketAddr::new(ip, (x >> 32) as u16);
            assert_eq!(show(&key(&a)), a.to_string());
        }
        for a in ["[::1]:80", "[fe80::1%3]:8443", "[::ffff:10.0.0.1]:80", "255.255.255.255:65535", "0.0.0.0:0"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(show(&key(&a)), SocketAddr::new(normalise_ip(a.ip()), a.port()).to_string());
        }
    }

    fn k(s: &str) -> AddrKey {
        key(&s.parse().unwrap())
    }

    #[test]
    fn mapped_ipv6_is_ipv4() {
        assert_eq!(k("[::ffff:127.0.0.1]:80"), k("127.0.0.1:80"));
        assert_eq!(k("[fe80::1%2]:80"), k("[fe80::1]:80"));
        assert_eq!(show(&k("[::1]:9")), "[::1]:9");
    }

    #[test]
    fn listeners() {
        let l = Listeners::new(&["0.0.0.0:8080".parse().unwrap(), "10.0.0.5:443".parse().unwrap()]);
        assert!(l.is_listener(&k("127.0.0.1:8080")));
        assert!(l.is_listener(&k("[::1]:8080")));
        assert!(l.is_listener(&k("10.0.0.5:8080")));
        assert!(l.is_listener(&k("10.0.0.5:443")));
        assert!(l.is_listener(&k("[::ffff:10.0.0.5]:443")));
        assert!(!l.is_listener(&k("10.0.0.6:8080")));
        assert!(!l.is_listener(&k("127.0.0.1:443")));
        assert!(!l.is_listener(&k("127.0.0.1:9001")));
    }

    fn input(requests: u64, history: &[(u32, u32, u32)]) -> StateInput<std::vec::IntoIter<HistorySample>> {
        let history: Vec<HistorySample> = history
            .iter()
            .map(|&(requests, errors_5xx, conn_failed)| HistorySample {
                requests,
                errors_5xx,
                conn_failed,
                latency_p99_us: 0,
            })
            .collect();
        StateInput {
            requests,
            window_rps: 0.0,
            window_5xx_rps: 0.0,
            last_seen_unix_ns: 0,
            history: history.into_iter(),
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn states() {
        let none: Option<StateInput<std::vec::IntoIter<HistorySample>>> = None;
        assert_eq!(state(none, false, S, 0), "idle");
        assert_eq!(state(None::<StateInput<std::vec::IntoIter<HistorySample>>>, true, S, 0), "down");
        assert_eq!(state(Some(input(10, &[(10, 0, 0)])), true, S, 0), "down");
        assert_eq!(state(Some(input(10, &[(10, 0, 0)])), false, S, 0), "up");
        assert_eq!(state(Some(input(0, &[])), false, S, 0), "idle");
        // Connect failures with no good response; with some good ones it is up.
        assert_eq!(state(Some(input(10, &[(10, 0, 0), (0, 0, 3)])), false, S, 0), "unhealthy");
        assert_eq!(state(Some(input(10, &[(2, 0, 3)])), false, S, 0), "up");
        // 5xx: half of at least five.
        assert_eq!(state(Some(input(10, &[(6, 3, 0)])), false, S, 0), "unhealthy");
        assert_eq!(state(Some(input(10, &[(7, 3, 0)])), false, S, 0), "up");
        assert_eq!(state(Some(input(10, &[(4, 4, 0)])), false, S, 0), "up");
        // Idle after ten quiet intervals, up while one of the last ten had traffic.
        let mut h = vec![(5, 0, 0)];
        h.extend([(0, 0, 0); 9]);
        assert_eq!(state(Some(input(5, &h)), false, S, 0), "up");
        h.push((0, 0, 0));
        assert_eq!(state(Some(input(5, &h)), false, S, 0), "idle");
        // Without history: the window and last_seen decide.
        let mut p = input(5, &[]);
        p.last_seen_unix_ns = 100 * S;
        p.window_rps = 6.0;
        p.window_5xx_rps = 3.0;
        assert_eq!(state(Some(p), false, S, 101 * S), "unhealthy");
        let mut p = input(5, &[]);
        p.last_seen_unix_ns = 100 * S;
        p.window_rps = 6.0;
        assert_eq!(state(Some(p), false, S, 101 * S), "up");
        let mut p = input(5, &[]);
        p.last_seen_unix_ns = 100 * S;
        p.window_rps = 6.0;
        assert_eq!(state(Some(p), false, S, 111 * S), "idle");
    }
}
