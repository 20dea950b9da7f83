//! [`Snapshot`]: the owned view of one publish of the table.
//!
//! This is the contract between the probe (producer) and every reader (the
//! nginx module, the dashboard's `--table` mode, `upstreamtop-probe dump`).
//! Counters are cumulative since the probe started unless named otherwise;
//! `window` figures cover the last publish interval.

use std::net::SocketAddr;

/// One publish of the table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub meta: ProbeMeta,
    /// Every peer (backend `IP:port`) the probe has seen a connection or a
    /// request to. Index into this vector is what [`RouteStats::peer`] holds.
    pub peers: Vec<PeerStats>,
    /// Routes, grouped by peer. Each peer has at most one route with
    /// `is_other == true`, which collects exchanges that did not fit the
    /// route table (so per-peer sums stay exact).
    pub routes: Vec<RouteStats>,
    /// The latest sampled requests, oldest first.
    pub recent: Vec<RecentRequest>,
}

/// What the probe says about itself.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProbeMeta {
    pub pid: u32,
    /// Wall clock (Unix epoch, ns) when the probe started.
    pub started_unix_ns: u64,
    /// Wall clock (Unix epoch, ns) of this publish; 0 = never. Readers
    /// compare it with their own clock: [`Self::is_stale`], [`Self::age_ns`].
    pub published_unix_ns: u64,
    /// The publish interval, ns.
    pub interval_ns: u64,
    /// Publishes since the probe started (1 for the first).
    pub publish_seq: u64,
    /// Capacity of each peer's history ring (`--history`).
    pub history_len: u32,
    /// Interfaces the programs are attached to.
    pub interfaces: Vec<String>,
    pub counters: ProbeCounters,
}

impl ProbeMeta {
    /// A probe that last published this many intervals ago missed three
    /// publishes in a row: it is stuck or gone, not merely late.
    const STALE_AFTER_INTERVALS: u64 = 3;
    /// The least age at which a table is stale, ns: with a short interval,
    /// three intervals is too little time to tell a stuck probe from a
    /// late one.
    const STALE_AFTER_MIN_NS: u64 = 5_000_000_000;

    /// Whether the figures are too old to trust: the probe never published
    /// (`published_unix_ns == 0`), or its last publish is more than
    /// `max(3 × interval, 5 s)` before `now_unix_ns`. Readers show a stale
    /// table as the probe being down rather than as current traffic. This
    /// is the one definition every reader uses.
    pub fn is_stale(&self, now_unix_ns: u64) -> bool {
        let after = self.interval_ns.saturating_mul(Self::STALE_AFTER_INTERVALS).max(Self::STALE_AFTER_MIN_NS);
        self.published_unix_ns == 0 || self.age_ns(now_unix_ns) > after
    }

    /// How long ago the probe published this, ns (`now_unix_ns -
    /// published_unix_ns`; 0 when the reader's clock is behind the probe's,
    /// so a small skew between the two never shows as a negative age).
    pub fn age_ns(&self, now_unix_ns: u64) -> u64 {
        now_unix_ns.saturating_sub(self.published_unix_ns)
    }
}

/// Drop and overflow counters: everything the probe could not count in full
/// detail is counted here, never silently lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProbeCounters {
    /// Exchange events lost because the ring buffer was full (per-peer
    /// totals stay exact; only route detail and the recent feed lose them).
    pub events_dropped: u64,
    /// Connections not tracked because the connection map was full.
    pub conn_table_full: u64,
    /// Idle connection states evicted by the probe's sweeper.
    pub conn_evicted: u64,
    /// Requests to peers beyond `--max-peers` (not attributable to a peer).
    pub peer_table_full: u64,
    /// Exchanges folded into a peer's "other" route because the route table
    /// was full.
    pub route_overflow: u64,
    /// Recent-request samples skipped by the feed's rate limit.
    pub recent_sampled_out: u64,
    /// Segments that looked like the start of a message but did not parse.
    pub parse_errors: u64,
}

/// Responses by class and by exact status code.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Responses {
    /// `[1xx, 2xx, 3xx, 4xx, 5xx]`. Interim 1xx responses are counted here
    /// even though they do not end an exchange.
    pub class: [u64; 5],
    /// Exact codes, ascending by code, each `(code, count)`.
    pub codes: Vec<(u16, u64)>,
    /// Responses whose exact code did not fit the record (class still exact).
    pub codes_other: u64,
}

impl Responses {
    /// All responses, interim ones included.
    pub fn total(&self) -> u64 {
        self.class.iter().sum()
    }
}

/// Connection counters for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Connections {
    /// Handshakes completed (SYN-ACK seen).
    pub opened: u64,
    /// Established connections ended by FIN or RST.
    pub closed: u64,
    /// Connection attempts refused (RST to SYN) or unanswered.
    pub failed: u64,
    /// Of `closed`, those ended by a reset.
    pub reset: u64,
    /// Currently open (tracked) connections.
    pub active: u64,
}

/// A cumulative latency histogram (request sent → first response byte).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Latency {
    /// `histogram::BUCKETS` counters (see [`crate::histogram`]).
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
    pub count: u64,
}

/// Figures over the last publish interval.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Window {
    pub requests_per_sec: f64,
    pub errors_5xx_per_sec: f64,
    pub sent_bytes_per_sec: f64,
    pub received_bytes_per_sec: f64,
    /// Latency over the interval; 0 when no response arrived in it.
    pub latency_avg_ns: u64,
    pub latency_p50_ns: u64,
    pub latency_p90_ns: u64,
    pub latency_p99_ns: u64,
}

/// One publish interval of a peer's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistorySample {
    pub requests: u32,
    pub errors_5xx: u32,
    pub conn_failed: u32,
    /// p99 latency over the interval in µs; 0 when none.
    pub latency_p99_us: u32,
}

/// Everything counted for one backend `IP:port`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStats {
    pub addr: SocketAddr,
    /// Request lines sent to the peer.
    pub requests: u64,
    pub responses: Responses,
    /// Exchanges that ended (close, reset, eviction) before any final
    /// response arrived.
    pub no_response: u64,
    /// TCP payload bytes sent to / received from the peer.
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub conns: Connections,
    pub latency: Latency,
    pub window: Window,
    /// Oldest first; at most `meta.history_len` samples.
    pub history: Vec<HistorySample>,
    /// Wall clock (ns) of the first and latest request to this peer; 0 = never.
    pub first_seen_unix_ns: u64,
    pub last_seen_unix_ns: u64,
}

/// One route (method + folded path) of one peer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteStats {
    /// Index into [`Snapshot::peers`].
    pub peer: u32,
    /// True for the overflow bucket ("other"): method and path are empty.
    pub is_other: bool,
    pub method: String,
    /// Folded path: query string removed, `:id` for numbers/UUIDs/long hex,
    /// bounded length.
    pub path: String,
    /// Completed exchanges (final response, or ended without one).
    pub requests: u64,
    pub responses: Responses,
    pub no_response: u64,
    pub latency_sum_ns: u64,
    pub latency_count: u64,
    /// Cumulative percentiles since the route was first seen; 0 = none.
    pub latency_p50_ns: u64,
    pub latency_p90_ns: u64,
    pub latency_p99_ns: u64,
    /// Completed exchanges per second over the last interval.
    pub requests_per_sec: f64,
    pub errors_5xx_per_sec: f64,
}

/// One sampled request for the "recent" feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentRequest {
    /// Wall clock (ns) when the request was sent.
    pub unix_ns: u64,
    pub peer: SocketAddr,
    pub method: String,
    /// Folded path, as in routes.
    pub path: String,
    /// Final status code; 0 when the exchange ended without one.
    pub status: u16,
    pub latency_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::ProbeMeta;

    const SEC: u64 = 1_000_000_000;
    const NOW: u64 = 1_700_000_000 * SEC;

    fn meta(published_unix_ns: u64, interval_ns: u64) -> ProbeMeta {
        ProbeMeta { published_unix_ns, interval_ns, ..ProbeMeta::default() }
    }

    #[test]
    fn stale_after_five_seconds_for_short_intervals() {
        assert!(!meta(NOW, SEC).is_stale(NOW));
        assert!(!meta(NOW - 5 * SEC, SEC).is_stale(NOW), "exactly 5 s is not stale");
        assert!(meta(NOW - 5 * SEC - 1, SEC).is_stale(NOW));
        assert_eq!(meta(NOW - 5 * SEC - 1, SEC).age_ns(NOW), 5 * SEC + 1);
    }

    #[test]
    fn stale_after_three_intervals_for_long_ones() {
        let interval = 10 * SEC;
        assert!(!meta(NOW - 30 * SEC, interval).is_stale(NOW), "exactly three intervals is not stale");
        assert!(meta(NOW - 30 * SEC - 1, interval).is_stale(NOW));
    }

    #[test]
    fn never_published_is_stale() {
        assert!(meta(0, SEC).is_stale(NOW));
        assert!(meta(0, SEC).is_stale(0));
    }

    #[test]
    fn clocks_and_intervals_at_the_extremes() {
        // The reader's clock behind the probe's: age 0, fresh.
        assert_eq!(meta(NOW + SEC, SEC).age_ns(NOW), 0);
        assert!(!meta(NOW + SEC, SEC).is_stale(NOW));
        // An absurd interval saturates instead of overflowing.
        assert!(!meta(1, u64::MAX).is_stale(u64::MAX));
        assert!(meta(1, SEC).is_stale(u64::MAX));
    }
}
