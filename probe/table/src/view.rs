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
//! Field offsets below mirror `records.rs` (the encoder); the reader's
//! owned [`Snapshot`] is this view's [`SnapshotView::to_snapshot`], and the
//! round-trip tests compare it with what was published, field by field.

use std::net::SocketAddr;

use crate::histogram::BUCKETS;
use crate::layout::*;
use crate::reader::{decode_head, PublishId, SlotHead};
use crate::{Connections, HistorySample, PeerStats, ProbeMeta, RecentRequest, Responses, RouteStats, Snapshot, Window};

// Peer record.
const P_REQUESTS: usize = ADDR_SIZE;
const P_NO_RESPONSE: usize = P_REQUESTS + 8;
const P_SENT: usize = P_REQUESTS + 16;
const P_RECEIVED: usize = P_REQUESTS + 24;
const P_RESPONSES: usize = P_REQUESTS + 32;
const P_HISTORY_COUNT: usize = P_RESPONSES + R_PAD;
const P_CONNS: usize = P_RESPONSES + responses_size(PEER_CODES);
const P_LAT_SUM: usize = P_CONNS + 5 * 8;
const P_LAT_COUNT: usize = P_LAT_SUM + 8;
const P_QUANTILES: usize = P_LAT_COUNT + 8;
const P_BUCKETS_AT: usize = P_QUANTILES + 3 * 8;
const P_BUCKETS_N: usize = P_BUCKETS_AT + 4;
const P_WINDOW: usize = P_BUCKETS_N + 4;
const P_FIRST_SEEN: usize = P_WINDOW + 8 * 8;
const P_LAST_SEEN: usize = P_FIRST_SEEN + 8;
const _: () = assert!(P_LAST_SEEN + 8 == PEER_REC_SIZE);

// Responses block (inside peer and route records).
const R_CODES_OTHER: usize = 5 * 8;
const R_N_CODES: usize = R_CODES_OTHER + 8;
const R_PAD: usize = R_N_CODES + 4;
const R_KEYS: usize = R_PAD + 4;
const fn responses_size(cap: usize) -> usize {
    R_KEYS + cap * 2 + cap * 8
}

// Route record.
const T_PEER: usize = 0;
const T_OTHER: usize = 4;
const T_METHOD_LEN: usize = 5;
const T_PATH_LEN: usize = 6;
const T_STRINGS: usize = 8;
const T_REQUESTS: usize = T_STRINGS + 8;
const T_NO_RESPONSE: usize = T_REQUESTS + 8;
const T_RESPONSES: usize = T_NO_RESPONSE + 8;
const T_LAT: usize = T_RESPONSES + responses_size(ROUTE_CODES);
const T_RPS: usize = T_LAT + 5 * 8;
const _: () = assert!(T_RPS + 16 == ROUTE_REC_SIZE);

// Recent record.
const C_ADDR: usize = 8;
const C_METHOD_LEN: usize = C_ADDR + ADDR_SIZE;
const C_PATH_LEN: usize = C_METHOD_LEN + 1;
const C_STATUS: usize = C_METHOD_LEN + 2;
const C_METHOD: usize = C_METHOD_LEN + 8;
const C_PATH: usize = C_METHOD + METHOD_LEN;
const C_LATENCY: usize = C_PATH + PATH_LEN;
const _: () = assert!(C_LATENCY + 8 == RECENT_REC_SIZE);

// Callers only pass offsets inside records whose length the view checked,
// so the slicing below cannot go out of bounds.
#[inline]
fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}
#[inline]
fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}
#[inline]
fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
#[inline]
fn f64_at(b: &[u8], off: usize) -> f64 {
    f64::from_bits(u64_at(b, off))
}
/// A string field the view validated (length within the field, UTF-8).
#[inline]
fn str_at(b: &[u8], off: usize, len: usize) -> &str {
    std::str::from_utf8(&b[off..off + len]).unwrap_or("")
}
#[inline]
fn addr_at(b: &[u8], off: usize) -> DecResult<SocketAddr> {
    Dec::at(b, off).addr()
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
    let at = u32_at(rec, T_STRINGS) as usize;
    let len = usize::from(rec[T_METHOD_LEN]) + usize::from(rec[T_PATH_LEN]);
    pool.get(at..at + len).unwrap_or(&[])
}
/// A peer's non-zero buckets in the pool (`BUCKET_ENTRY_SIZE` bytes each;
/// checked in `SnapshotView::new`).
#[inline]
fn bucket_entries<'a>(rec: &[u8], pool: &'a [u8]) -> &'a [u8] {
    let at = u32_at(rec, P_BUCKETS_AT) as usize;
    let n = u32_at(rec, P_BUCKETS_N) as usize;
    pool.get(at..at + n * BUCKET_ENTRY_SIZE).unwrap_or(&[])
}
fn check_codes(rec: &[u8], at: usize, cap: usize) -> DecResult<()> {
    let n = u32_at(rec, at + R_N_CODES) as usize;
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
            addr_at(rec, 0)?;
            check_codes(rec, P_RESPONSES, PEER_CODES)?;
            let hcount = u32_at(rec, P_HISTORY_COUNT) as usize;
            if hcount > stride {
                return Err(format!("peer {i} has {hcount} history samples (ring of {stride})"));
            }
            let at = u32_at(rec, P_BUCKETS_AT) as usize;
            let n = u32_at(rec, P_BUCKETS_N) as usize;
            if n > BUCKETS {
                return Err(format!("peer {i} has {n} latency buckets (at most {BUCKETS})"));
            }
            let entries =
                pool.get(at..at + n * BUCKET_ENTRY_SIZE).ok_or_else(|| format!("peer {i} buckets past the pool"))?;
            // Strictly ascending indices: each bucket at most once.
            let mut next = 0usize;
            for e in entries.chunks_exact(BUCKET_ENTRY_SIZE) {
                let b = usize::from(e[0]);
                if b < next || b >= BUCKETS {
                    return Err(format!("peer {i} bucket index {b} out of order or range"));
                }
                next = b + 1;
            }
        }
        for rec in routes.chunks_exact(ROUTE_REC_SIZE) {
            match rec[T_OTHER] {
                0 | 1 => {}
                v => return Err(format!("route flag {v}")),
            }
            let (m, p) = (usize::from(rec[T_METHOD_LEN]), usize::from(rec[T_PATH_LEN]));
            if m > METHOD_LEN {
                return Err(format!("route method length {m} exceeds {METHOD_LEN}"));
            }
            if p > PATH_LEN {
                return Err(format!("route path length {p} exceeds {PATH_LEN}"));
            }
            let at = u32_at(rec, T_STRINGS) as usize;
            let strs = pool.get(at..at + m + p).ok_or("route strings past the pool")?;
            // Both ASCII (nearly always) in one test, else each on its own.
            if !strs.is_ascii() {
                check_utf8(&strs[..m], "route method")?;
                check_utf8(&strs[m..], "route path")?;
            }
            check_codes(rec, T_RESPONSES, ROUTE_CODES)?;
            let peer = u32_at(rec, T_PEER);
            if peer as usize >= n_peers {
                return Err(format!("route names peer {peer} of {n_peers}"));
            }
        }
        for rec in recent.chunks_exact(RECENT_REC_SIZE) {
            addr_at(rec, C_ADDR)?;
            check_str(rec, C_METHOD, rec[C_METHOD_LEN].into(), METHOD_LEN, "recent method")?;
            check_str(rec, C_PATH, rec[C_PATH_LEN].into(), PATH_LEN, "recent path")?;
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
        let hcount = u32_at(rec, P_HISTORY_COUNT) as usize;
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
        std::array::from_fn(|i| u64_at(self.rec, self.at + i * 8))
    }
    #[inline]
    pub fn codes_other(&self) -> u64 {
        u64_at(self.rec, self.at + R_CODES_OTHER)
    }
    /// Exact codes as stored (ascending by code), `(code, count)`.
    #[inline]
    pub fn codes(&self) -> impl ExactSizeIterator<Item = (u16, u64)> + '_ {
        let n = (u32_at(self.rec, self.at + R_N_CODES) as usize).min(self.cap);
        let keys = self.at + R_KEYS;
        let counts = keys + self.cap * 2;
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
        addr_at(self.rec, 0).unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }
    #[inline]
    pub fn requests(&self) -> u64 {
        u64_at(self.rec, P_REQUESTS)
    }
    #[inline]
    pub fn no_response(&self) -> u64 {
        u64_at(self.rec, P_NO_RESPONSE)
    }
    #[inline]
    pub fn sent_bytes(&self) -> u64 {
        u64_at(self.rec, P_SENT)
    }
    #[inline]
    pub fn received_bytes(&self) -> u64 {
        u64_at(self.rec, P_RECEIVED)
    }
    #[inline]
    pub fn responses(&self) -> ResponsesView<'a> {
        ResponsesView { rec: self.rec, at: P_RESPONSES, cap: PEER_CODES }
    }
    #[inline]
    pub fn conns(&self) -> Connections {
        let c = |i: usize| u64_at(self.rec, P_CONNS + i * 8);
        Connections { opened: c(0), closed: c(1), failed: c(2), reset: c(3), active: c(4) }
    }
    #[inline]
    pub fn latency_sum_ns(&self) -> u64 {
        u64_at(self.rec, P_LAT_SUM)
    }
    #[inline]
    pub fn latency_count(&self) -> u64 {
        u64_at(self.rec, P_LAT_COUNT)
    }
    /// The cumulative latency histogram (`histogram::BUCKETS` counters).
    #[inline]
    pub fn buckets(&self) -> [u64; BUCKETS] {
        let mut b = [0u64; BUCKETS];
        for e in self.buckets.chunks_exact(BUCKET_ENTRY_SIZE) {
            // Index checked against BUCKETS in SnapshotView::new.
            if let Some(slot) = b.get_mut(usize::from(e[0])) {
                *slot = u64_at(e, 1);
            }
        }
        b
    }
    /// `[p50, p90, p99]` of [`Self::buckets`] (0 when empty), as
    /// `histogram::quantiles_ns` gives them: the probe computes them when
    /// it publishes, so readers that only print them skip the histogram.
    #[inline]
    pub fn latency_quantiles_ns(&self) -> [u64; 3] {
        std::array::from_fn(|i| u64_at(self.rec, P_QUANTILES + i * 8))
    }
    #[inline]
    pub fn window(&self) -> Window {
        let w = |i: usize| P_WINDOW + i * 8;
        Window {
            requests_per_sec: f64_at(self.rec, w(0)),
            errors_5xx_per_sec: f64_at(self.rec, w(1)),
            sent_bytes_per_sec: f64_at(self.rec, w(2)),
            received_bytes_per_sec: f64_at(self.rec, w(3)),
            latency_avg_ns: u64_at(self.rec, w(4)),
            latency_p50_ns: u64_at(self.rec, w(5)),
            latency_p90_ns: u64_at(self.rec, w(6)),
            latency_p99_ns: u64_at(self.rec, w(7)),
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
            requests: u32_at(h, 0),
            errors_5xx: u32_at(h, 4),
            conn_failed: u32_at(h, 8),
            latency_p99_us: u32_at(h, 12),
        })
    }
    #[inline]
    pub fn first_seen_unix_ns(&self) -> u64 {
        u64_at(self.rec, P_FIRST_SEEN)
    }
    #[inline]
    pub fn last_seen_unix_ns(&self) -> u64 {
        u64_at(self.rec, P_LAST_SEEN)
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
        u32_at(self.rec, T_PEER)
    }
    #[inline]
    pub fn is_other(&self) -> bool {
        self.rec[T_OTHER] == 1
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
        self.strings.get(..usize::from(self.rec[T_METHOD_LEN])).unwrap_or(&[])
    }
    /// [`Self::path`] as bytes.
    #[inline]
    pub fn path_bytes(&self) -> &'a [u8] {
        self.strings.get(usize::from(self.rec[T_METHOD_LEN])..).unwrap_or(&[])
    }
    #[inline]
    pub fn requests(&self) -> u64 {
        u64_at(self.rec, T_REQUESTS)
    }
    #[inline]
    pub fn no_response(&self) -> u64 {
        u64_at(self.rec, T_NO_RESPONSE)
    }
    #[inline]
    pub fn responses(&self) -> ResponsesView<'a> {
        ResponsesView { rec: self.rec, at: T_RESPONSES, cap: ROUTE_CODES }
    }
    #[inline]
    pub fn latency_sum_ns(&self) -> u64 {
        u64_at(self.rec, T_LAT)
    }
    #[inline]
    pub fn latency_count(&self) -> u64 {
        u64_at(self.rec, T_LAT + 8)
    }
    #[inline]
    pub fn latency_p50_ns(&self) -> u64 {
        u64_at(self.rec, T_LAT + 16)
    }
    #[inline]
    pub fn latency_p90_ns(&self) -> u64 {
        u64_at(self.rec, T_LAT + 24)
    }
    #[inline]
    pub fn latency_p99_ns(&self) -> u64 {
        u64_at(self.rec, T_LAT + 32)
    }
    #[inline]
    pub fn requests_per_sec(&self) -> f64 {
        f64_at(self.rec, T_RPS)
    }
    #[inline]
    pub fn errors_5xx_per_sec(&self) -> f64 {
        f64_at(self.rec, T_RPS + 8)
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
        u64_at(self.rec, 0)
    }
    #[inline]
    pub fn peer(&self) -> SocketAddr {
        addr_at(self.rec, C_ADDR).unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }
    #[inline]
    pub fn method(&self) -> &'a str {
        str_at(self.rec, C_METHOD, self.rec[C_METHOD_LEN].into())
    }
    #[inline]
    pub fn path(&self) -> &'a str {
        str_at(self.rec, C_PATH, self.rec[C_PATH_LEN].into())
    }
    #[inline]
    pub fn status(&self) -> u16 {
        u16_at(self.rec, C_STATUS)
    }
    #[inline]
    pub fn latency_ns(&self) -> u64 {
        u64_at(self.rec, C_LATENCY)
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
