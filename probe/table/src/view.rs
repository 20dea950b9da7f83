//! [`SnapshotView`]: one publish read in place, without decoding it into a
//! [`Snapshot`].
//!
//! A [`Snapshot`] of a thousand peers × 16 routes is ~50,000 allocations
//! (two strings and a code list per route, buckets, codes and history per
//! peer), which costs more than copying and checksumming the whole slot.
//! The nginx module only turns the figures into text, so it borrows them
//! from the reader's verified slot copy instead. Every record is validated
//! once when the view is made (the same checks [`crate::TableReader::snapshot`]
//! makes), so the accessors are plain fixed-offset loads that cannot fail.
//!
//! Every field is read at its name in [`crate::layout`], where `records.rs`
//! (the encoder) writes it: to change a record, edit the offsets there, the
//! encoding in `records.rs` and the accessor here. The reader's owned
//! [`Snapshot`] is this view's [`SnapshotView::to_snapshot`], and the
//! round-trip tests compare it with what was published, field by field.

use std::net::SocketAddr;

use crate::histogram::BUCKETS;
use crate::layout::*;
use crate::slot::{decode_head, PublishId, SlotHead};
use crate::{Connections, HistorySample, PeerStats, ProbeMeta, RecentRequest, Responses, RouteStats, Snapshot, Window};

/// A string field the view validated (length within the field, UTF-8).
#[inline]
fn str_at(b: &[u8], off: usize, len: usize) -> &str {
    std::str::from_utf8(&b[off..off + len]).unwrap_or("")
}
fn check_str(b: &[u8], off: usize, len: usize, width: usize, what: &str) -> DecResult<()> {
    if len > width {
        return Err(format!("{what} length {len} exceeds {width}"));
    }
    check_utf8(&b[off..off + len], what)
}
/// `from_utf8`, after a word-at-a-time ASCII test that passes nearly every
/// method and path without the general decoder.
#[inline]
fn check_utf8(b: &[u8], what: &str) -> DecResult<()> {
    if b.is_ascii() || std::str::from_utf8(b).is_ok() {
        Ok(())
    } else {
        Err(format!("{what} is not UTF-8"))
    }
}
/// A route's method and path in the pool (checked in `SnapshotView::new`;
/// empty if not, which cannot happen for a view that was made).
#[inline]
fn route_strings<'a>(rec: &[u8], pool: &'a [u8]) -> &'a [u8] {
    let at = u32_at(rec, route::STRINGS_AT) as usize;
    let len = usize::from(rec[route::N_METHOD]) + usize::from(rec[route::N_PATH]);
    pool.get(at..at + len).unwrap_or(&[])
}
/// A peer's non-zero buckets in the pool (`BUCKET_ENTRY_SIZE` bytes each;
/// checked in `SnapshotView::new`).
#[inline]
fn bucket_entries<'a>(rec: &[u8], pool: &'a [u8]) -> &'a [u8] {
    let at = u32_at(rec, peer::BUCKETS_AT) as usize;
    let n = u32_at(rec, peer::N_BUCKETS) as usize;
    pool.get(at..at + n * BUCKET_ENTRY_SIZE).unwrap_or(&[])
}
fn check_codes(rec: &[u8], at: usize, cap: usize) -> DecResult<()> {
    let n = u32_at(rec, at + responses::N_CODES) as usize;
    if n > cap {
        return Err(format!("{n} status codes (at most {cap})"));
    }
    Ok(())
}

/// A validated slot copy, read in place. Cheap to build: one pass of
/// checks over the records, no allocation beyond the meta.
#[derive(Debug, Clone)]
pub struct SnapshotView<'a> {
    id: PublishId,
    meta: ProbeMeta,
    stride: usize,
    peers: &'a [u8],
    history: &'a [u8],
    routes: &'a [u8],
    recent: &'a [u8],
    /// Route strings and peer buckets, which records point into.
    pool: &'a [u8],
}

impl<'a> SnapshotView<'a> {
    /// Validates a checksummed slot copy (slot header + used body).
    pub(crate) fn new(slot: &'a [u8], stride: u32, id: PublishId) -> DecResult<Self> {
        let SlotHead { meta, n_peers, n_routes, n_recent } = decode_head(slot)?;
        let body = slot.get(SLOT_HEADER_SIZE as usize..).ok_or("slot too short")?;
        let stride = stride as usize;
        let mut pos = 0usize;
        let mut take = |n: usize, size: usize| -> DecResult<&'a [u8]> {
            let end = n.checked_mul(size).and_then(|len| pos.checked_add(len)).ok_or("length overflow")?;
            let s = body.get(pos..end).ok_or("body shorter than its counts")?;
            pos = end;
            Ok(s)
        };
        let peers = take(n_peers, PEER_REC_SIZE)?;
        let history = take(n_peers, stride.checked_mul(HISTORY_REC_SIZE).ok_or("history overflow")?)?;
        let routes = take(n_routes, ROUTE_REC_SIZE)?;
        let recent = take(n_recent, RECENT_REC_SIZE)?;
        let pool_len = usize::try_from(u64_at(slot, S_POOL_LEN)).map_err(|_| "pool length overflow")?;
        let pool = take(1, pool_len)?;
        for (i, rec) in peers.chunks_exact(PEER_REC_SIZE).enumerate() {
            addr_at(rec, peer::ADDR)?;
            check_codes(rec, peer::RESPONSES, PEER_CODES)?;
            let hcount = u32_at(rec, peer::HISTORY_COUNT) as usize;
            if hcount > stride {
                return Err(format!("peer {i} has {hcount} history samples (ring of {stride})"));
            }
            let at = u32_at(rec, peer::BUCKETS_AT) as usize;
            let n = u32_at(rec, peer::N_BUCKETS) as usize;
            if n > BUCKETS {
                return Err(format!("peer {i} has {n} latency buckets (at most {BUCKETS})"));
            }
            let entries =
                pool.get(at..at + n * BUCKET_ENTRY_SIZE).ok_or_else(|| format!("peer {i} buckets past the pool"))?;
            // Strictly ascending indices: each bucket at most once.
            let mut next = 0usize;
            for e in entries.chunks_exact(BUCKET_ENTRY_SIZE) {
                let b = usize::from(e[bucket_entry::INDEX]);
                if b < next || b >= BUCKETS {
                    return Err(format!("peer {i} bucket index {b} out of order or range"));
                }
                next = b + 1;
            }
        }
        for rec in routes.chunks_exact(ROUTE_REC_SIZE) {
            match rec[route::IS_OTHER] {
                0 | 1 => {}
                v => return Err(format!("route flag {v}")),
            }
            let (m, p) = (usize::from(rec[route::N_METHOD]), usize::from(rec[route::N_PATH]));
            if m > METHOD_LEN {
                return Err(format!("route method length {m} exceeds {METHOD_LEN}"));
            }
            if p > PATH_LEN {
                return Err(format!("route path length {p} exceeds {PATH_LEN}"));
            }
            let at = u32_at(rec, route::STRINGS_AT) as usize;
            let strs = pool.get(at..at + m + p).ok_or("route strings past the pool")?;
            // Both ASCII (nearly always) in one test, else each on its own.
            if !strs.is_ascii() {
                check_utf8(&strs[..m], "route method")?;
                check_utf8(&strs[m..], "route path")?;
            }
            check_codes(rec, route::RESPONSES, ROUTE_CODES)?;
            let peer = u32_at(rec, route::PEER);
            if peer as usize >= n_peers {
                return Err(format!("route names peer {peer} of {n_peers}"));
            }
        }
        for rec in recent.chunks_exact(RECENT_REC_SIZE) {
            addr_at(rec, recent::PEER)?;
            check_str(rec, recent::METHOD, rec[recent::N_METHOD].into(), METHOD_LEN, "recent method")?;
            check_str(rec, recent::PATH, rec[recent::N_PATH].into(), PATH_LEN, "recent path")?;
        }
        Ok(SnapshotView { id, meta, stride, peers, history, routes, recent, pool })
    }

    /// Which publish this is (for caches keyed by publish).
    #[inline]
    pub fn id(&self) -> PublishId {
        self.id
    }

    #[inline]
    pub fn meta(&self) -> &ProbeMeta {
        &self.meta
    }

    #[inline]
    pub fn peer_count(&self) -> usize {
        self.peers.len() / PEER_REC_SIZE
    }

    /// Peer `i` (as indexed by [`RouteView::peer`]); `None` past the end.
    #[inline]
    pub fn peer(&self, i: usize) -> Option<PeerView<'a>> {
        (i < self.peer_count()).then(|| self.peer_at(i))
    }

    /// Peer `i < peer_count()`: its record, and the samples its history
    /// count names (checked against the stride in `new`).
    #[inline]
    fn peer_at(&self, i: usize) -> PeerView<'a> {
        let rec = &self.peers[i * PEER_REC_SIZE..(i + 1) * PEER_REC_SIZE];
        let hcount = u32_at(rec, peer::HISTORY_COUNT) as usize;
        let ring = &self.history[i * self.stride * HISTORY_REC_SIZE..][..hcount * HISTORY_REC_SIZE];
        PeerView { rec, history: ring, buckets: bucket_entries(rec, self.pool) }
    }

    #[inline]
    pub fn peers(&self) -> impl ExactSizeIterator<Item = PeerView<'a>> + '_ {
        (0..self.peer_count()).map(|i| self.peer_at(i))
    }

    #[inline]
    pub fn route_count(&self) -> usize {
        self.routes.len() / ROUTE_REC_SIZE
    }

    /// Route `j` in table order; `None` past the end.
    #[inline]
    pub fn route(&self, j: usize) -> Option<RouteView<'a>> {
        let rec = self.routes.get(j * ROUTE_REC_SIZE..(j + 1) * ROUTE_REC_SIZE)?;
        Some(RouteView { rec, strings: route_strings(rec, self.pool) })
    }

    /// Routes in table order (grouped by peer).
    #[inline]
    pub fn routes(&self) -> impl ExactSizeIterator<Item = RouteView<'a>> + 'a {
        let pool = self.pool;
        self.routes.chunks_exact(ROUTE_REC_SIZE).map(move |rec| RouteView { rec, strings: route_strings(rec, pool) })
    }

    /// Sampled requests, oldest first.
    #[inline]
    pub fn recent(&self) -> impl ExactSizeIterator<Item = RecentView<'a>> + DoubleEndedIterator {
        self.recent.chunks_exact(RECENT_REC_SIZE).map(|rec| RecentView { rec })
    }

    /// The owned [`Snapshot`] of this publish (what
    /// [`crate::TableReader::snapshot`] returns for it).
    pub fn to_snapshot(&self) -> Snapshot {
        Snapshot {
            meta: self.meta.clone(),
            peers: self.peers().map(|p| p.to_stats()).collect(),
            routes: self.routes().map(|r| r.to_stats()).collect(),
            recent: self.recent().map(|r| r.to_request()).collect(),
        }
    }
}

/// A responses block: classes, exact codes, codes that did not fit.
#[derive(Debug, Clone, Copy)]
pub struct ResponsesView<'a> {
    rec: &'a [u8],
    at: usize,
    cap: usize,
}

impl ResponsesView<'_> {
    /// `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    #[inline]
    pub fn class(&self) -> [u64; 5] {
        std::array::from_fn(|i| u64_at(self.rec, self.at + responses::CLASS + i * 8))
    }
    #[inline]
    pub fn codes_other(&self) -> u64 {
        u64_at(self.rec, self.at + responses::CODES_OTHER)
    }
    /// Exact codes as stored (ascending by code), `(code, count)`.
    #[inline]
    pub fn codes(&self) -> impl ExactSizeIterator<Item = (u16, u64)> + '_ {
        let n = (u32_at(self.rec, self.at + responses::N_CODES) as usize).min(self.cap);
        let keys = self.at + responses::KEYS;
        let counts = self.at + responses::counts(self.cap);
        (0..n).map(move |i| (u16_at(self.rec, keys + i * 2), u64_at(self.rec, counts + i * 8)))
    }
    pub fn to_responses(&self) -> Responses {
        Responses { class: self.class(), codes: self.codes().collect(), codes_other: self.codes_other() }
    }
}

/// One peer record and its history samples.
#[derive(Debug, Clone, Copy)]
pub struct PeerView<'a> {
    rec: &'a [u8],
    history: &'a [u8],
    /// Non-zero latency buckets: index byte, count.
    buckets: &'a [u8],
}

impl<'a> PeerView<'a> {
    #[inline]
    pub fn addr(&self) -> SocketAddr {
        // Validated in SnapshotView::new.
        addr_at(self.rec, peer::ADDR).unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }
    #[inline]
    pub fn requests(&self) -> u64 {
        u64_at(self.rec, peer::REQUESTS)
    }
    #[inline]
    pub fn no_response(&self) -> u64 {
        u64_at(self.rec, peer::NO_RESPONSE)
    }
    #[inline]
    pub fn sent_bytes(&self) -> u64 {
        u64_at(self.rec, peer::SENT_BYTES)
    }
    #[inline]
    pub fn received_bytes(&self) -> u64 {
        u64_at(self.rec, peer::RECEIVED_BYTES)
    }
    #[inline]
    pub fn responses(&self) -> ResponsesView<'a> {
        ResponsesView { rec: self.rec, at: peer::RESPONSES, cap: PEER_CODES }
    }
    #[inline]
    pub fn conns(&self) -> Connections {
        let c = |at: usize| u64_at(self.rec, at);
        Connections {
            opened: c(peer::CONNS_OPENED),
            closed: c(peer::CONNS_CLOSED),
            failed: c(peer::CONNS_FAILED),
            reset: c(peer::CONNS_RESET),
            active: c(peer::CONNS_ACTIVE),
        }
    }
    #[inline]
    pub fn latency_sum_ns(&self) -> u64 {
        u64_at(self.rec, peer::LATENCY_SUM)
    }
    #[inline]
    pub fn latency_count(&self) -> u64 {
        u64_at(self.rec, peer::LATENCY_COUNT)
    }
    /// The cumulative latency histogram (`histogram::BUCKETS` counters).
    #[inline]
    pub fn buckets(&self) -> [u64; BUCKETS] {
        let mut b = [0u64; BUCKETS];
        for e in self.buckets.chunks_exact(BUCKET_ENTRY_SIZE) {
            // Index checked against BUCKETS in SnapshotView::new.
            if let Some(slot) = b.get_mut(usize::from(e[bucket_entry::INDEX])) {
                *slot = u64_at(e, bucket_entry::COUNT);
            }
        }
        b
    }
    /// `[p50, p90, p99]` of [`Self::buckets`] (0 when empty), as
    /// `histogram::quantiles_ns` gives them: the probe computes them when
    /// it publishes, so readers that only print them skip the histogram.
    #[inline]
    pub fn latency_quantiles_ns(&self) -> [u64; 3] {
        [peer::LATENCY_P50, peer::LATENCY_P90, peer::LATENCY_P99].map(|at| u64_at(self.rec, at))
    }
    #[inline]
    pub fn window(&self) -> Window {
        let r = self.rec;
        Window {
            requests_per_sec: f64_at(r, peer::WINDOW_REQUESTS_PER_SEC),
            errors_5xx_per_sec: f64_at(r, peer::WINDOW_ERRORS_5XX_PER_SEC),
            sent_bytes_per_sec: f64_at(r, peer::WINDOW_SENT_BYTES_PER_SEC),
            received_bytes_per_sec: f64_at(r, peer::WINDOW_RECEIVED_BYTES_PER_SEC),
            latency_avg_ns: u64_at(r, peer::WINDOW_LATENCY_AVG),
            latency_p50_ns: u64_at(r, peer::WINDOW_LATENCY_P50),
            latency_p90_ns: u64_at(r, peer::WINDOW_LATENCY_P90),
            latency_p99_ns: u64_at(r, peer::WINDOW_LATENCY_P99),
        }
    }
    #[inline]
    pub fn history_len(&self) -> usize {
        self.history.len() / HISTORY_REC_SIZE
    }
    /// Oldest first.
    #[inline]
    pub fn history(&self) -> impl ExactSizeIterator<Item = HistorySample> + DoubleEndedIterator + Clone + 'a {
        self.history.chunks_exact(HISTORY_REC_SIZE).map(|h| HistorySample {
            requests: u32_at(h, history::REQUESTS),
            errors_5xx: u32_at(h, history::ERRORS_5XX),
            conn_failed: u32_at(h, history::CONN_FAILED),
            latency_p99_us: u32_at(h, history::LATENCY_P99_US),
        })
    }
    #[inline]
    pub fn first_seen_unix_ns(&self) -> u64 {
        u64_at(self.rec, peer::FIRST_SEEN)
    }
    #[inline]
    pub fn last_seen_unix_ns(&self) -> u64 {
        u64_at(self.rec, peer::LAST_SEEN)
    }
    pub fn to_stats(&self) -> PeerStats {
        PeerStats {
            addr: self.addr(),
            requests: self.requests(),
            responses: self.responses().to_responses(),
            no_response: self.no_response(),
            sent_bytes: self.sent_bytes(),
            received_bytes: self.received_bytes(),
            conns: self.conns(),
            latency: crate::Latency {
                buckets: self.buckets().to_vec(),
                sum_ns: self.latency_sum_ns(),
                count: self.latency_count(),
            },
            window: self.window(),
            history: self.history().collect(),
            first_seen_unix_ns: self.first_seen_unix_ns(),
            last_seen_unix_ns: self.last_seen_unix_ns(),
        }
    }
}

/// One route record.
#[derive(Debug, Clone, Copy)]
pub struct RouteView<'a> {
    rec: &'a [u8],
    /// Method then path, from the pool.
    strings: &'a [u8],
}

impl<'a> RouteView<'a> {
    /// Index of the peer (always below the view's peer count).
    #[inline]
    pub fn peer(&self) -> u32 {
        u32_at(self.rec, route::PEER)
    }
    #[inline]
    pub fn is_other(&self) -> bool {
        self.rec[route::IS_OTHER] == 1
    }
    #[inline]
    pub fn method(&self) -> &'a str {
        std::str::from_utf8(self.method_bytes()).unwrap_or("")
    }
    #[inline]
    pub fn path(&self) -> &'a str {
        std::str::from_utf8(self.path_bytes()).unwrap_or("")
    }
    /// [`Self::method`] as bytes (UTF-8, checked when the view was made):
    /// orders the same, without a second UTF-8 check.
    #[inline]
    pub fn method_bytes(&self) -> &'a [u8] {
        self.strings.get(..usize::from(self.rec[route::N_METHOD])).unwrap_or(&[])
    }
    /// [`Self::path`] as bytes.
    #[inline]
    pub fn path_bytes(&self) -> &'a [u8] {
        self.strings.get(usize::from(self.rec[route::N_METHOD])..).unwrap_or(&[])
    }
    #[inline]
    pub fn requests(&self) -> u64 {
        u64_at(self.rec, route::REQUESTS)
    }
    #[inline]
    pub fn no_response(&self) -> u64 {
        u64_at(self.rec, route::NO_RESPONSE)
    }
    #[inline]
    pub fn responses(&self) -> ResponsesView<'a> {
        ResponsesView { rec: self.rec, at: route::RESPONSES, cap: ROUTE_CODES }
    }
    #[inline]
    pub fn latency_sum_ns(&self) -> u64 {
        u64_at(self.rec, route::LATENCY_SUM)
    }
    #[inline]
    pub fn latency_count(&self) -> u64 {
        u64_at(self.rec, route::LATENCY_COUNT)
    }
    #[inline]
    pub fn latency_p50_ns(&self) -> u64 {
        u64_at(self.rec, route::LATENCY_P50)
    }
    #[inline]
    pub fn latency_p90_ns(&self) -> u64 {
        u64_at(self.rec, route::LATENCY_P90)
    }
    #[inline]
    pub fn latency_p99_ns(&self) -> u64 {
        u64_at(self.rec, route::LATENCY_P99)
    }
    #[inline]
    pub fn requests_per_sec(&self) -> f64 {
        f64_at(self.rec, route::REQUESTS_PER_SEC)
    }
    #[inline]
    pub fn errors_5xx_per_sec(&self) -> f64 {
        f64_at(self.rec, route::ERRORS_5XX_PER_SEC)
    }
    pub fn to_stats(&self) -> RouteStats {
        RouteStats {
            peer: self.peer(),
            is_other: self.is_other(),
            method: self.method().to_owned(),
            path: self.path().to_owned(),
            requests: self.requests(),
            responses: self.responses().to_responses(),
            no_response: self.no_response(),
            latency_sum_ns: self.latency_sum_ns(),
            latency_count: self.latency_count(),
            latency_p50_ns: self.latency_p50_ns(),
            latency_p90_ns: self.latency_p90_ns(),
            latency_p99_ns: self.latency_p99_ns(),
            requests_per_sec: self.requests_per_sec(),
            errors_5xx_per_sec: self.errors_5xx_per_sec(),
        }
    }
}

/// One sampled request.
#[derive(Debug, Clone, Copy)]
pub struct RecentView<'a> {
    rec: &'a [u8],
}

impl<'a> RecentView<'a> {
    #[inline]
    pub fn unix_ns(&self) -> u64 {
        u64_at(self.rec, recent::UNIX_NS)
    }
    #[inline]
    pub fn peer(&self) -> SocketAddr {
        addr_at(self.rec, recent::PEER).unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }
    #[inline]
    pub fn method(&self) -> &'a str {
        str_at(self.rec, recent::METHOD, self.rec[recent::N_METHOD].into())
    }
    #[inline]
    pub fn path(&self) -> &'a str {
        str_at(self.rec, recent::PATH, self.rec[recent::N_PATH].into())
    }
    #[inline]
    pub fn status(&self) -> u16 {
        u16_at(self.rec, recent::STATUS)
    }
    #[inline]
    pub fn latency_ns(&self) -> u64 {
        u64_at(self.rec, recent::LATENCY)
    }
    pub fn to_request(&self) -> RecentRequest {
        RecentRequest {
            unix_ns: self.unix_ns(),
            peer: self.peer(),
            method: self.method().to_owned(),
            path: self.path().to_owned(),
            status: self.status(),
            latency_ns: self.latency_ns(),
        }
    }
}
