//! One backend's figures: table [`PeerStats`] and its routes turned into the
//! report's [`Peer`], and the peer state rules.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use upstreamtop_table::histogram::{bucket_of, quantiles_ns, BUCKETS};
use upstreamtop_table::{HistorySample, PeerStats, RouteStats};

use crate::config::{Query, ServerConf};
use crate::model::{Connections, HeaderTimeHistogram, History, Peer, Percentiles, Responses, Route, HEADER_TIME_LE_NS};

/// Intervals without requests after which a peer is `idle`.
pub const IDLE_INTERVALS: usize = 10;

/// Rounds to 3 decimals: µs for ms figures, thousandths for rates. Keeps
/// the JSON short and readable.
pub fn round3(v: f64) -> f64 {
    if !v.is_finite() {
        return 0.0;
    }
    let x = v * 1000.0;
    // Same as x.round(), minus a libm call per figure (hot: history arrays).
    let r = if x.abs() < 1e15 { (crate::json::round_i64(x) as f64).copysign(x) } else { x.round() };
    r / 1000.0
}

pub fn ms(ns: u64) -> f64 {
    round3(ns as f64 / 1e6)
}

pub fn responses(r: &upstreamtop_table::Responses) -> Responses {
    Responses {
        c1xx: r.class[0],
        c2xx: r.class[1],
        c3xx: r.class[2],
        c4xx: r.class[3],
        c5xx: r.class[4],
        codes: codes_map(&r.codes),
        codes_other: r.codes_other,
        total: r.total(),
    }
}

/// Exact codes keyed by their decimal text. Inserted one by one: the list
/// is short and already sorted, and `collect()` would buffer and sort it.
fn codes_map(codes: &[(u16, u64)]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (c, n) in codes {
        *m.entry(itoa::Buffer::new().format(*c).to_owned()).or_insert(0) += n;
    }
    m
}

/// Adds the table's `b` into the report's `a` (totals).
pub fn add_table_responses(a: &mut Responses, b: &upstreamtop_table::Responses) {
    add_table_parts(a, b.class, b.codes.iter().copied(), b.codes_other);
}

/// Adds a table responses block, given by its parts, into `a`.
pub fn add_table_parts(a: &mut Responses, class: [u64; 5], codes: impl Iterator<Item = (u16, u64)>, codes_other: u64) {
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
    a.codes_other += codes_other;
    a.total += class.iter().sum::<u64>();
}

/// Adds `b` into `a`.
pub fn add_responses(a: &mut Responses, b: &Responses) {
    a.c1xx += b.c1xx;
    a.c2xx += b.c2xx;
    a.c3xx += b.c3xx;
    a.c4xx += b.c4xx;
    a.c5xx += b.c5xx;
    for (c, n) in &b.codes {
        *a.codes.entry(c.clone()).or_insert(0) += n;
    }
    a.codes_other += b.codes_other;
    a.total += b.total;
}

/// Paths come from the wire: the probe strips query strings, but be sure.
pub fn clean_path(p: &str) -> String {
    clean_path_str(p).to_owned()
}

/// [`clean_path`] without the copy.
pub fn clean_path_str(p: &str) -> &str {
    p.split('?').next().unwrap_or("")
}

/// What the state rules look at: the latest interval and recent activity.
struct Recent {
    requests: u64,
    errors_5xx: u64,
    conn_failed: u64,
    /// Requests in the last `IDLE_INTERVALS` intervals (or since `last_seen`
    /// when the probe keeps no history).
    active_lately: bool,
}

/// What the state rules read from a peer's wire figures (a table
/// [`PeerStats`] or a [`upstreamtop_table::PeerView`]).
pub struct StateInput<H> {
    pub requests: u64,
    pub window_rps: f64,
    pub window_5xx_rps: f64,
    pub last_seen_unix_ns: u64,
    /// History samples, oldest first.
    pub history: H,
}

fn recent_activity<H>(p: StateInput<H>, interval_ns: u64, now_ns: u64) -> Recent
where
    H: DoubleEndedIterator<Item = HistorySample> + Clone,
{
    let interval_s = interval_ns as f64 / 1e9;
    match p.history.clone().next_back() {
        Some(h) => Recent {
            requests: h.requests.into(),
            errors_5xx: h.errors_5xx.into(),
            conn_failed: h.conn_failed.into(),
            active_lately: p.history.rev().take(IDLE_INTERVALS).any(|h| h.requests > 0),
        },
        // No history ring (`--history 0`): fall back to the window rates.
        None => Recent {
            requests: (p.window_rps * interval_s).round() as u64,
            errors_5xx: (p.window_5xx_rps * interval_s).round() as u64,
            conn_failed: 0,
            active_lately: p.last_seen_unix_ns != 0
                && now_ns.saturating_sub(p.last_seen_unix_ns) <= interval_ns.saturating_mul(IDLE_INTERVALS as u64),
        },
    }
}

/// `down` (configured), `unhealthy` (the last interval had connect
/// failures and no successful response, or ≥ 50% 5xx out of ≥ 5),
/// `idle` (no requests in the last 10 intervals, or never), else `up`.
pub fn state(p: Option<&PeerStats>, down: bool, interval_ns: u64, now_ns: u64) -> &'static str {
    let input = p.map(|p| StateInput {
        requests: p.requests,
        window_rps: p.window.requests_per_sec,
        window_5xx_rps: p.window.errors_5xx_per_sec,
        last_seen_unix_ns: p.last_seen_unix_ns,
        history: p.history.iter().copied(),
    });
    state_of(input, down, interval_ns, now_ns)
}

/// [`state`] over either kind of peer figures.
pub fn state_of<H>(p: Option<StateInput<H>>, down: bool, interval_ns: u64, now_ns: u64) -> &'static str
where
    H: DoubleEndedIterator<Item = HistorySample> + Clone,
{
    if down {
        return "down";
    }
    let Some(p) = p else { return "idle" };
    let requests = p.requests;
    let r = recent_activity(p, interval_ns, now_ns);
    let ok = r.requests.saturating_sub(r.errors_5xx);
    if (r.conn_failed > 0 && ok == 0) || (r.requests >= 5 && r.errors_5xx * 2 >= r.requests) {
        return "unhealthy";
    }
    if requests == 0 || !r.active_lately {
        return "idle";
    }
    "up"
}

pub fn percentiles(avg_ns: u64, p50: u64, p90: u64, p99: u64) -> Percentiles {
    Percentiles { avg: ms(avg_ns), p50: ms(p50), p90: ms(p90), p99: ms(p99) }
}

/// Index of the fine bucket whose upper bound is each Prometheus `le`.
fn le_buckets() -> &'static [usize; HEADER_TIME_LE_NS.len()] {
    static LE: OnceLock<[usize; HEADER_TIME_LE_NS.len()]> = OnceLock::new();
    LE.get_or_init(|| HEADER_TIME_LE_NS.map(bucket_of))
}

fn histogram(p: &PeerStats) -> HeaderTimeHistogram {
    let b = &p.latency.buckets;
    let mut le = Vec::with_capacity(HEADER_TIME_LE_NS.len());
    let (mut acc, mut i) = (0u64, 0usize);
    for &last in le_buckets() {
        while i <= last && i < b.len() {
            acc += b[i];
            i += 1;
        }
        le.push(acc);
    }
    let count = acc + b.get(i..).map_or(0, |rest| rest.iter().sum());
    HeaderTimeHistogram { le, count, sum_ns: p.latency.sum_ns }
}

pub fn route(r: &RouteStats) -> Route {
    let avg = r.latency_sum_ns.checked_div(r.latency_count).unwrap_or(0);
    Route {
        method: if r.is_other { String::new() } else { r.method.clone() },
        path: if r.is_other { "(other)".to_owned() } else { clean_path(&r.path) },
        other: r.is_other,
        requests: r.requests,
        rps: round3(r.requests_per_sec),
        errors_rps: round3(r.errors_5xx_per_sec),
        responses: responses(&r.responses),
        no_response: r.no_response,
        header_time: percentiles(avg, r.latency_p50_ns, r.latency_p90_ns, r.latency_p99_ns),
    }
}

/// Top `limit` routes by requests (ties by path, then method), then the
/// "other" bucket when it counted anything.
pub fn top_routes(routes: &[&RouteStats], limit: usize) -> Vec<Route> {
    let mut named: Vec<&RouteStats> = routes.iter().copied().filter(|r| !r.is_other).collect();
    let cmp = |a: &&RouteStats, b: &&RouteStats| {
        b.requests.cmp(&a.requests).then_with(|| a.path.cmp(&b.path)).then_with(|| a.method.cmp(&b.method))
    };
    if named.len() > limit {
        named.select_nth_unstable_by(limit, cmp);
        named.truncate(limit);
    }
    named.sort_unstable_by(cmp);
    let mut out: Vec<Route> = named.into_iter().map(route).collect();
    let mut other: Option<Route> = None;
    for r in routes.iter().filter(|r| r.is_other && r.requests > 0) {
        // At most one per peer by contract; merge defensively.
        match &mut other {
            None => other = Some(route(r)),
            Some(o) => {
                let add = route(r);
                o.requests += add.requests;
                o.rps = round3(o.rps + add.rps);
                o.errors_rps = round3(o.errors_rps + add.errors_rps);
                add_responses(&mut o.responses, &add.responses);
                o.no_response += add.no_response;
            }
        }
    }
    out.extend(other);
    out
}

pub struct PeerCtx<'a> {
    pub query: &'a Query,
    pub interval_ns: u64,
    pub now_ns: u64,
    /// Requests per second across all (non-listener) peers.
    pub total_rps: f64,
}

/// The report's peer for `server` (as shown), its configuration (if any)
/// and its wire figures (if it had any traffic).
pub fn peer(
    server: String,
    conf: Option<&ServerConf>,
    stats: Option<&PeerStats>,
    routes: &[&RouteStats],
    cx: &PeerCtx,
) -> Peer {
    let down = conf.is_some_and(|c| c.down);
    let mut out = Peer {
        name: conf.map_or_else(|| server.clone(), |c| c.name.clone()),
        server,
        configured: conf.is_some(),
        backup: conf.is_some_and(|c| c.backup),
        down,
        weight: conf.map_or(0, |c| c.weight),
        state: state(stats, down, cx.interval_ns, cx.now_ns).to_owned(),
        ..Peer::default()
    };
    if cx.query.history {
        out.history = Some(History::default());
    }
    let Some(p) = stats else {
        out.header_time_histogram = HeaderTimeHistogram { le: vec![0; HEADER_TIME_LE_NS.len()], count: 0, sum_ns: 0 };
        return out;
    };
    let w = &p.window;
    out.requests = p.requests;
    out.rps = round3(w.requests_per_sec);
    out.share = if cx.total_rps > 0.0 { round3(w.requests_per_sec / cx.total_rps * 100.0) } else { 0.0 };
    out.responses = responses(&p.responses);
    out.no_response = p.no_response;
    out.header_time = ms(w.latency_avg_ns);
    out.header_time_window = percentiles(w.latency_avg_ns, w.latency_p50_ns, w.latency_p90_ns, w.latency_p99_ns);
    let buckets = &p.latency.buckets[..p.latency.buckets.len().min(BUCKETS)];
    let [p50, p90, p99] = quantiles_ns(buckets, [0.5, 0.9, 0.99]).map(|q| q.unwrap_or(0));
    let avg = p.latency.sum_ns.checked_div(p.latency.count).unwrap_or(0);
    out.header_time_total = percentiles(avg, p50, p90, p99);
    out.sent = p.sent_bytes;
    out.received = p.received_bytes;
    out.active = p.conns.active;
    out.connections =
        Connections { opened: p.conns.opened, closed: p.conns.closed, failed: p.conns.failed, reset: p.conns.reset };
    out.errors_rps = round3(w.errors_5xx_per_sec);
    if cx.query.history {
        let secs = (cx.interval_ns as f64 / 1e9).max(1e-9);
        out.history = Some(History {
            rps: p.history.iter().map(|h| round3(f64::from(h.requests) / secs)).collect(),
            errors: p.history.iter().map(|h| round3(f64::from(h.errors_5xx) / secs)).collect(),
            p99: p.history.iter().map(|h| round3(f64::from(h.latency_p99_us) / 1000.0)).collect(),
        });
    }
    out.routes = top_routes(routes, cx.query.routes);
    out.last_seen = p.last_seen_unix_ns / 1_000_000;
    out.header_time_histogram = histogram(p);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use upstreamtop_table::{Latency, Window};

    pub fn stats(requests: u64, history: &[(u32, u32, u32)]) -> PeerStats {
        PeerStats {
            addr: "127.0.0.1:9001".parse().unwrap(),
            requests,
            responses: Default::default(),
            no_response: 0,
            sent_bytes: 0,
            received_bytes: 0,
            conns: Default::default(),
            latency: Latency { buckets: vec![0; BUCKETS], sum_ns: 0, count: 0 },
            window: Window::default(),
            history: history
                .iter()
                .map(|&(requests, errors_5xx, conn_failed)| HistorySample {
                    requests,
                    errors_5xx,
                    conn_failed,
                    latency_p99_us: 0,
                })
                .collect(),
            first_seen_unix_ns: 0,
            last_seen_unix_ns: 0,
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn states() {
        assert_eq!(state(None, false, S, 0), "idle");
        assert_eq!(state(None, true, S, 0), "down");
        assert_eq!(state(Some(&stats(10, &[(10, 0, 0)])), true, S, 0), "down");
        assert_eq!(state(Some(&stats(10, &[(10, 0, 0)])), false, S, 0), "up");
        assert_eq!(state(Some(&stats(0, &[])), false, S, 0), "idle");
        // Connect failures with no good response; with some good ones it is up.
        assert_eq!(state(Some(&stats(10, &[(10, 0, 0), (0, 0, 3)])), false, S, 0), "unhealthy");
        assert_eq!(state(Some(&stats(10, &[(2, 0, 3)])), false, S, 0), "up");
        // 5xx: half of at least five.
        assert_eq!(state(Some(&stats(10, &[(6, 3, 0)])), false, S, 0), "unhealthy");
        assert_eq!(state(Some(&stats(10, &[(7, 3, 0)])), false, S, 0), "up");
        assert_eq!(state(Some(&stats(10, &[(4, 4, 0)])), false, S, 0), "up");
        // Idle after ten quiet intervals, up while one of the last ten had traffic.
        let mut h = vec![(5, 0, 0)];
        h.extend([(0, 0, 0); 9]);
        assert_eq!(state(Some(&stats(5, &h)), false, S, 0), "up");
        h.push((0, 0, 0));
        assert_eq!(state(Some(&stats(5, &h)), false, S, 0), "idle");
        // Without history: the window and last_seen decide.
        let mut p = stats(5, &[]);
        p.last_seen_unix_ns = 100 * S;
        p.window.requests_per_sec = 6.0;
        p.window.errors_5xx_per_sec = 3.0;
        assert_eq!(state(Some(&p), false, S, 101 * S), "unhealthy");
        p.window.errors_5xx_per_sec = 0.0;
        assert_eq!(state(Some(&p), false, S, 101 * S), "up");
        assert_eq!(state(Some(&p), false, S, 111 * S), "idle");
    }

    #[test]
    fn histogram_is_cumulative_at_exact_bounds() {
        let mut p = stats(3, &[]);
        for ns in [500_000u64, 500_001, 10_000_000_000, 20_000_000_000] {
            p.latency.buckets[bucket_of(ns)] += 1;
        }
        let h = histogram(&p);
        assert_eq!(h.le[0], 1, "500 µs is inside le=0.0005");
        assert_eq!(h.le[1], 2);
        assert_eq!(*h.le.last().unwrap(), 3);
        assert_eq!(h.count, 4);
    }
}
