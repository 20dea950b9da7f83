//! The JSON answer written straight from a table [`SnapshotView`], without
//! building a [`Report`](crate::model::Report) first: the nginx module's
//! path.
//!
//! [`build_report`](crate::build_report) + [`render_json`](crate::render_json)
//! allocate a string or a map for nearly every field of every peer and
//! route (~100,000 allocations for 1,000 peers × 16 routes). Here the
//! per-peer and per-route figures go from the slot bytes to the output
//! buffer directly; only the small parts (probe, totals, recent, peers
//! without traffic) go through the model types. The result is byte for
//! byte what `render_json(&build_report(..))` gives for the same publish —
//! `tests.rs` checks that on every sample and query — so the dashboard and
//! other clients see one format.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

use upstreamtop_table::{PeerView, ResponsesView, RouteView, SnapshotView};

use crate::build::{probe, recent_list, SCHEMA_VERSION, UNLISTED};
use crate::config::{NginxConfig, Query, ServerConf};
use crate::join::{key, show, AddrKey, ConfigIndex, Listeners};
use crate::json::{plain, W};
use crate::model::{Connections, Route, Totals};
use crate::peer::{self, add_table_parts, round3, state_of, PeerCtx, StateInput};

/// A rendered JSON answer, and what a cache needs to serve it again later
/// in the same publish interval.
#[derive(Debug, Clone)]
pub struct ViewJson {
    /// The JSON text (UTF-8; bytes because the module sends bytes and a
    /// `String` would cost a validation pass over megabytes).
    pub body: Vec<u8>,
    /// Where the values of `"timestamp"` and `"probe"."age_ms"` sit in
    /// `body`: the only figures that change with the reader's clock
    /// (unless [`Self::clock_dependent`]).
    timestamp_at: Range<usize>,
    age_at: Range<usize>,
    published_unix_ns: u64,
    /// Some peer had no history samples, so its `state` was judged from
    /// its last request time against the clock: the body must not be
    /// reused at a later time.
    pub clock_dependent: bool,
}

impl ViewJson {
    /// The body as it would be rendered at `now_unix_ns` from the same
    /// publish, configuration and query: three borrowed slices and the two
    /// clock figures between them, in order. Only valid when
    /// [`Self::clock_dependent`] is false and the table is not stale at
    /// `now_unix_ns` (a stale table gets a 503, never this body).
    pub fn restamped(&self, now_unix_ns: u64) -> [Piece<'_>; 5] {
        let b = &self.body;
        [
            Piece::Bytes(&b[..self.timestamp_at.start]),
            Piece::Num(now_unix_ns / 1_000_000),
            Piece::Bytes(&b[self.timestamp_at.end..self.age_at.start]),
            Piece::Num(now_unix_ns.saturating_sub(self.published_unix_ns) / 1_000_000),
            Piece::Bytes(&b[self.age_at.end..]),
        ]
    }
}

/// A part of a restamped body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Bytes(&'a [u8]),
    Num(u64),
}

/// `render_json(&build_report(&view.to_snapshot(), conf, query, now))`,
/// without the intermediate snapshot and report.
pub fn render_view_json(view: &SnapshotView, conf: &NginxConfig, query: &Query, now_unix_ns: u64) -> ViewJson {
    render_view_json_into(view, conf, query, now_unix_ns, Vec::new())
}

/// [`render_view_json`] into `buf` (cleared first): a caller that renders
/// every publish hands back the body it no longer serves, so megabytes of
/// output land in memory that is already mapped instead of fresh pages
/// the kernel must fault in and zero (a millisecond per render at a
/// thousand peers).
pub fn render_view_json_into(
    view: &SnapshotView,
    conf: &NginxConfig,
    query: &Query,
    now_unix_ns: u64,
    mut buf: Vec<u8>,
) -> ViewJson {
    let listeners = Listeners::new(&conf.listen);
    let index = ConfigIndex::new(conf);
    let peers: Vec<PeerView> = view.peers().collect();
    let keys: Vec<AddrKey> = peers.iter().map(|p| key(&p.addr())).collect();
    let counted: Vec<bool> = keys.iter().map(|k| !listeners.is_listener(k)).collect();
    let mut by_key: HashMap<AddrKey, usize> = HashMap::with_capacity(peers.len());
    let mut extra: Vec<usize> = Vec::new();
    for (i, k) in keys.iter().enumerate().filter(|(i, _)| counted[*i]) {
        if by_key.insert(*k, i).is_some() {
            extra.push(i);
        }
    }
    // Each peer's routes, in table order, as ranges of one flat list.
    let mut start = vec![0usize; peers.len() + 1];
    for r in view.routes() {
        start[r.peer() as usize + 1] += 1;
    }
    for i in 0..peers.len() {
        start[i + 1] += start[i];
    }
    // Route indices rather than views: a quarter of the memory, under
    // the allocator's mmap threshold, so no fresh pages to fault in on
    // every render.
    let mut fill = start.clone();
    let mut flat: Vec<u32> = vec![0; view.route_count()];
    for (j, r) in view.routes().enumerate() {
        let p = r.peer() as usize;
        flat[fill[p]] = j as u32;
        fill[p] += 1;
    }
    let routes_of = |i: usize| &flat[start[i]..start[i + 1]];

    let mut totals = Totals::default();
    for (p, _) in peers.iter().zip(&counted).filter(|(_, c)| **c) {
        let w = p.window();
        let r = p.responses();
        totals.requests += p.requests();
        totals.rps += w.requests_per_sec;
        add_table_parts(&mut totals.responses, r.class(), r.codes(), r.codes_other());
        totals.errors_rps += w.errors_5xx_per_sec;
        totals.sent += p.sent_bytes();
        totals.received += p.received_bytes();
    }
    let meta = view.meta();
    let cx = PeerCtx { query, interval_ns: meta.interval_ns, now_ns: now_unix_ns, total_rps: totals.rps };
    totals.rps = round3(totals.rps);
    totals.errors_rps = round3(totals.errors_rps);

    let shown = view.route_count().min(peers.len().saturating_mul(query.routes.saturating_add(1)));
    let listed: usize = conf.upstreams.iter().map(|u| u.servers.len()).sum();
    buf.clear();
    buf.reserve(2048 + (peers.len() + listed) * 1600 + shown * 320 + query.recent.min(1000) * 160);
    let mut w = W(buf);
    let mut pw = PeerWriter { cx: &cx, view, clock_dependent: false, scratch: Vec::new() };

    w.raw("{\"version\":");
    w.u64(SCHEMA_VERSION.into());
    w.raw(",\"nginx_version\":");
    w.str(&conf.nginx_version);
    w.raw(",\"timestamp\":");
    let ts_start = w.0.len();
    w.u64(now_unix_ns / 1_000_000);
    let timestamp_at = ts_start..w.0.len();
    w.raw(",\"probe\":");
    let probe_at = w.0.len();
    w.probe(&probe(meta, now_unix_ns));
    // The probe object's age_ms value, found in what was just written.
    let age_at = {
        let key = "\"age_ms\":";
        let from = w.0[probe_at..]
            .windows(key.len())
            .position(|k| k == key.as_bytes())
            .map_or(w.0.len(), |i| probe_at + i + key.len());
        let len = w.0[from..].iter().take_while(|b| b.is_ascii_digit()).count();
        from..from + len
    };
    w.raw(",\"totals\":");
    w.totals(&totals);

    w.raw(",\"upstreams\":{");
    // Groups by name (the report's BTreeMap): same-named groups merge, in
    // configuration order.
    let wanted = |name: &str| query.upstream.as_deref().is_none_or(|u| u == name);
    let mut by_name: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (g, up) in conf.upstreams.iter().enumerate().filter(|(_, u)| wanted(&u.name)) {
        by_name.entry(up.name.as_str()).or_default().push(g);
    }
    for (n, (name, groups)) in by_name.iter().enumerate() {
        if n > 0 {
            w.raw(",");
        }
        let (mut requests, mut rps, mut implicit) = (0u64, 0f64, false);
        for &g in groups {
            let up = &conf.upstreams[g];
            implicit = up.implicit;
            let mut seen: HashSet<AddrKey> = HashSet::new();
            for s in &up.servers {
                let k = key(&s.addr);
                let found = by_key.get(&k).copied();
                if let (Some(i), true) = (found, seen.insert(k)) {
                    requests += peers[i].requests();
                    rps += peers[i].window().requests_per_sec;
                }
            }
            rps = round3(rps);
        }
        w.str(name);
        w.raw(":{\"implicit\":");
        w.bool(implicit);
        w.raw(",\"requests\":");
        w.u64(requests);
        w.raw(",\"rps\":");
        w.f64(rps);
        w.raw(",\"peers\":[");
        let mut first = true;
        for &g in groups {
            for s in &conf.upstreams[g].servers {
                if !std::mem::take(&mut first) {
                    w.raw(",");
                }
                let k = key(&s.addr);
                let i = by_key.get(&k).copied();
                let routes = i.map_or(&[][..], routes_of);
                pw.peer(&mut w, &show(&k), Some(s), i.map(|i| &peers[i]), routes);
            }
        }
        w.raw("]}");
    }

    w.raw("},\"unlisted\":{\"implicit\":false,\"requests\":");
    if query.upstream.as_deref().is_none_or(|u| u == UNLISTED) {
        let mut idx: Vec<usize> = by_key.iter().filter(|(k, _)| !index.is_listed(k)).map(|(_, &i)| i).collect();
        idx.extend(&extra);
        idx.sort_unstable();
        let (mut requests, mut rps) = (0u64, 0f64);
        for &i in &idx {
            requests += peers[i].requests();
            rps += peers[i].window().requests_per_sec;
        }
        let mut servers: Vec<(String, usize)> = idx.iter().map(|&i| (show(&keys[i]), i)).collect();
        servers.sort_by(|a, b| peers[b.1].requests().cmp(&peers[a.1].requests()).then_with(|| a.0.cmp(&b.0)));
        w.u64(requests);
        w.raw(",\"rps\":");
        w.f64(round3(rps));
        w.raw(",\"peers\":[");
        for (n, (server, i)) in servers.iter().enumerate() {
            if n > 0 {
                w.raw(",");
            }
            pw.peer(&mut w, server, None, Some(&peers[*i]), routes_of(*i));
        }
        w.raw("]}");
    } else {
        w.raw("0,\"rps\":0.0,\"peers\":[]}");
    }

    w.raw(",\"recent\":");
    let recent: Vec<_> = view.recent().map(|r| r.to_request()).collect();
    w.list(&recent_list(&recent, &listeners, &index, query), W::recent);
    w.raw("}");
    ViewJson {
        body: w.0,
        timestamp_at,
        age_at,
        published_unix_ns: meta.published_unix_ns,
        clock_dependent: pw.clock_dependent,
    }
}

/// Writes peers; keeps a scratch list for route ranking.
struct PeerWriter<'c, 'q, 'v> {
    cx: &'c PeerCtx<'q>,
    view: &'c SnapshotView<'v>,
    clock_dependent: bool,
    scratch: Vec<RouteView<'v>>,
}

impl<'v> PeerWriter<'_, '_, 'v> {
    /// Same fields and rules as [`peer::peer`] + `W::peer`.
    /// `routes` are the peer's route indices in the view.
    fn peer(
        &mut self,
        w: &mut W,
        server: &str,
        conf: Option<&ServerConf>,
        stats: Option<&PeerView<'v>>,
        routes: &[u32],
    ) {
        let Some(p) = stats else {
            // No traffic: nothing to read from the table.
            w.peer(&peer::peer(server.to_owned(), conf, None, &[], self.cx));
            return;
        };
        let cx = self.cx;
        let down = conf.is_some_and(|c| c.down);
        let win = p.window();
        if p.history_len() == 0 {
            self.clock_dependent = true;
        }
        let input = StateInput {
            requests: p.requests(),
            window_rps: win.requests_per_sec,
            window_5xx_rps: win.errors_5xx_per_sec,
            last_seen_unix_ns: p.last_seen_unix_ns(),
            history: p.history(),
        };
        w.raw("{\"server\":");
        w.str(server);
        w.raw(",\"name\":");
        w.str(conf.map_or(server, |c| c.name.as_str()));
        w.raw(",\"configured\":");
        w.bool(conf.is_some());
        w.raw(",\"backup\":");
        w.bool(conf.is_some_and(|c| c.backup));
        w.raw(",\"down\":");
        w.bool(down);
        w.raw(",\"weight\":");
        w.u64(conf.map_or(0, |c| c.weight).into());
        w.raw(",\"state\":");
        w.str(state_of(Some(input), down, cx.interval_ns, cx.now_ns));
        w.raw(",\"requests\":");
        w.u64(p.requests());
        w.raw(",\"rps\":");
        w.round3(win.requests_per_sec);
        w.raw(",\"share\":");
        w.round3(if cx.total_rps > 0.0 { win.requests_per_sec / cx.total_rps * 100.0 } else { 0.0 });
        w.raw(",\"responses\":");
        responses(w, p.responses());
        w.raw(",\"no_response\":");
        w.u64(p.no_response());
        w.raw(",\"header_time\":");
        w.ms(win.latency_avg_ns);
        w.raw(",\"header_time_window\":");
        w.ms_percentiles(win.latency_avg_ns, win.latency_p50_ns, win.latency_p90_ns, win.latency_p99_ns);
        w.raw(",\"header_time_total\":");
        // Precomputed by the probe from the buckets, as `peer::peer` does.
        let [p50, p90, p99] = p.latency_quantiles_ns();
        let avg = p.latency_sum_ns().checked_div(p.latency_count()).unwrap_or(0);
        w.ms_percentiles(avg, p50, p90, p99);
        w.raw(",\"sent\":");
        w.u64(p.sent_bytes());
        w.raw(",\"received\":");
        w.u64(p.received_bytes());
        let c = p.conns();
        w.raw(",\"active\":");
        w.u64(c.active);
        w.raw(",\"connections\":");
        w.connections(&Connections { opened: c.opened, closed: c.closed, failed: c.failed, reset: c.reset });
        w.raw(",\"errors_rps\":");
        w.round3(win.errors_5xx_per_sec);
        if cx.query.history {
            // 60 samples × 3 figures per peer: the bulk of the numbers.
            // With the usual 1 s interval a count per second is the count
            // itself (`N.0`), and µs → ms is exact in integers; the text is
            // what `round3` + `f64` give (json.rs tests both ways).
            let secs = (cx.interval_ns as f64 / 1e9).max(1e-9);
            let whole_seconds = cx.interval_ns == 1_000_000_000;
            let per_sec = |w: &mut W, n: u32| {
                if whole_seconds {
                    w.whole(n);
                } else {
                    w.round3(f64::from(n) / secs);
                }
            };
            w.raw(",\"history\":{\"rps\":[");
            for (n, h) in p.history().enumerate() {
                if n > 0 {
                    w.raw(",");
                }
                per_sec(w, h.requests);
            }
            w.raw("],\"5xx\":[");
            for (n, h) in p.history().enumerate() {
                if n > 0 {
                    w.raw(",");
                }
                per_sec(w, h.errors_5xx);
            }
            w.raw("],\"p99\":[");
            for (n, h) in p.history().enumerate() {
                if n > 0 {
                    w.raw(",");
                }
                w.thousandths(h.latency_p99_us);
            }
            w.raw("]}");
        }
        w.raw(",\"routes\":[");
        self.routes(w, routes);
        w.raw("],\"last_seen\":");
        w.u64(p.last_seen_unix_ns() / 1_000_000);
        w.raw("}");
    }

    /// Same selection as [`peer::top_routes`]: the top `?routes=` named
    /// routes by requests (ties by path, then method), then "other".
    fn routes(&mut self, w: &mut W, indices: &[u32]) {
        let limit = self.cx.query.routes;
        let view = self.view;
        let routes = || indices.iter().filter_map(|&j| view.route(j as usize));
        let named = &mut self.scratch;
        named.clear();
        named.reserve(indices.len());
        for r in routes().filter(|r| !r.is_other()) {
            named.push(r);
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
        for (n, r) in named.iter().enumerate() {
            if n > 0 {
                w.raw(",");
            }
            route(w, r);
        }
        let mut others = routes().filter(|r| r.is_other() && r.requests() > 0);
        let Some(first) = others.next() else { return };
        if !named.is_empty() {
            w.raw(",");
        }
        match others.next() {
            None => route(w, &first),
            // More than one "other" bucket breaks the table's contract;
            // merge them exactly as the report does (rare: go through it).
            Some(second) => {
                let stats: Vec<_> = [first, second].into_iter().chain(others).map(|r| r.to_stats()).collect();
                let refs: Vec<_> = stats.iter().collect();
                let merged: Vec<Route> = peer::top_routes(&refs, 0);
                if let Some(o) = merged.first() {
                    w.route(o);
                }
            }
        }
    }
}

fn route(w: &mut W, r: &RouteView) {
    let other = r.is_other();
    w.raw("{\"method\":");
    w.str_bytes(if other { b"" } else { r.method_bytes() });
    w.raw(",\"path\":");
    if other {
        w.str("(other)");
    } else {
        // As clean_path: cut at '?' (ASCII, so still whole UTF-8).
        let p = r.path_bytes();
        if plain(p) {
            w.quoted(p);
        } else {
            w.str_bytes(p.iter().position(|&b| b == b'?').map_or(p, |i| &p[..i]));
        }
    }
    // Keys with the values they nearly always have as single literals.
    w.raw(if other { ",\"other\":true,\"requests\":" } else { ",\"other\":false,\"requests\":" });
    w.u64(r.requests());
    w.raw(",\"rps\":");
    w.round3(r.requests_per_sec());
    let errors = r.errors_5xx_per_sec();
    if errors == 0.0 {
        w.raw(",\"errors_rps\":0.0,\"responses\":");
    } else {
        w.raw(",\"errors_rps\":");
        w.round3(errors);
        w.raw(",\"responses\":");
    }
    responses(w, r.responses());
    let no_response = r.no_response();
    if no_response == 0 {
        w.raw(",\"no_response\":0,\"header_time\":");
    } else {
        w.raw(",\"no_response\":");
        w.u64(no_response);
        w.raw(",\"header_time\":");
    }
    let avg = r.latency_sum_ns().checked_div(r.latency_count()).unwrap_or(0);
    w.ms_percentiles(avg, r.latency_p50_ns(), r.latency_p90_ns(), r.latency_p99_ns());
    w.raw("}");
}

/// A responses block as `W::responses` writes the report's `Responses`.
fn responses(w: &mut W, r: ResponsesView) {
    let class = r.class();
    // 1xx and 3xx are nearly always 0 for a backend: one literal then.
    if class[0] == 0 {
        w.raw("{\"1xx\":0,\"2xx\":");
    } else {
        w.raw("{\"1xx\":");
        w.u64(class[0]);
        w.raw(",\"2xx\":");
    }
    w.u64(class[1]);
    if class[2] == 0 {
        w.raw(",\"3xx\":0");
    } else {
        w.raw(",\"3xx\":");
        w.u64(class[2]);
    }
    w.raw(",\"4xx\":");
    w.u64(class[3]);
    w.raw(",\"5xx\":");
    w.u64(class[4]);
    w.raw(",\"codes\":{");
    // The report keys codes by their decimal text (a BTreeMap, so text
    // order, duplicates summed). Three-digit codes in ascending order, as
    // the probe writes them, are already in that order: write them as they
    // come, and start over through a map should one break the pattern.
    let at = w.0.len();
    let mut last = 0u16;
    for (c, count) in r.codes() {
        if !(100..=999).contains(&c) || c <= last {
            w.0.truncate(at);
            let mut m: BTreeMap<String, u64> = BTreeMap::new();
            for (c, n) in r.codes() {
                *m.entry(c.to_string()).or_insert(0) += n;
            }
            for (n, (c, count)) in m.iter().enumerate() {
                if n > 0 {
                    w.raw(",");
                }
                w.str(c);
                w.raw(":");
                w.u64(*count);
            }
            break;
        }
        if last != 0 {
            w.0.push(b',');
        }
        last = c;
        let d = [b'"', b'0' + (c / 100) as u8, b'0' + (c / 10 % 10) as u8, b'0' + (c % 10) as u8, b'"', b':'];
        w.0.extend_from_slice(&d);
        w.u64(count);
    }
    w.raw("}");
    let other = r.codes_other();
    if other != 0 {
        w.raw(",\"codes_other\":");
        w.u64(other);
    }
    w.raw(",\"total\":");
    w.u64(class.iter().sum());
    w.raw("}");
}
