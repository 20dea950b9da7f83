//! Encoding of a slot: its header and records. Every field is written at
//! its offset from [`crate::layout`]; [`crate::view`] (records) and
//! [`crate::slot`] (slot header) read them back at the same names. The
//! writer bounds every list and string before encoding; the reader
//! re-checks every length, count and offset when it reads them back.

use crate::histogram::{quantiles_ns, BUCKETS};
use crate::layout::*;
use crate::{HistorySample, PeerStats, ProbeMeta, RecentRequest, Responses, RouteStats};

/// Keeps at most `cap` exact codes (the most frequent; ties to the lower
/// code), ascending by code; returns them and the count folded away.
pub fn bound_codes(codes: &[(u16, u64)], cap: usize) -> (Vec<(u16, u64)>, u64) {
    if codes.len() <= cap {
        return (codes.to_vec(), 0);
    }
    let mut by_count = codes.to_vec();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let folded = by_count[cap..].iter().fold(0u64, |acc, c| acc.wrapping_add(c.1));
    by_count.truncate(cap);
    by_count.sort_by_key(|c| c.0);
    (by_count, folded)
}

/// Writes a responses block ([`responses`]) at `at` with room for `cap`
/// exact codes; returns how many codes were folded into `codes_other`.
fn enc_responses(rec: &mut RecordWriter, at: usize, r: &Responses, cap: usize) -> u64 {
    for (i, &c) in r.class.iter().enumerate() {
        rec.u64(at + responses::CLASS + i * 8, c);
    }
    let (codes, folded) = bound_codes(&r.codes, cap);
    rec.u64(at + responses::CODES_OTHER, r.codes_other.wrapping_add(folded));
    rec.u32(at + responses::N_CODES, codes.len() as u32);
    // Unused code slots stay zero (the record was zeroed).
    for (i, &(code, count)) in codes.iter().enumerate() {
        rec.u16(at + responses::KEYS + i * 2, code);
        rec.u64(at + responses::counts(cap) + i * 8, count);
    }
    (r.codes.len() - codes.len()) as u64
}

/// Encodes one peer record ([`peer`]) and its non-zero latency buckets
/// into `pool`; its history goes to the history array separately
/// ([`enc_history`]). Returns how many exact codes were folded into
/// `codes_other`.
pub fn enc_peer(e: &mut Enc, pool: &mut Enc, p: &PeerStats, history_count: u32) -> u64 {
    let mut rec = e.record(PEER_REC_SIZE);
    rec.addr(peer::ADDR, &p.addr);
    rec.u64(peer::REQUESTS, p.requests);
    rec.u64(peer::NO_RESPONSE, p.no_response);
    rec.u64(peer::SENT_BYTES, p.sent_bytes);
    rec.u64(peer::RECEIVED_BYTES, p.received_bytes);
    let folded = enc_responses(&mut rec, peer::RESPONSES, &p.responses, PEER_CODES);
    rec.u32(peer::HISTORY_COUNT, history_count);
    let c = &p.conns;
    rec.u64(peer::CONNS_OPENED, c.opened);
    rec.u64(peer::CONNS_CLOSED, c.closed);
    rec.u64(peer::CONNS_FAILED, c.failed);
    rec.u64(peer::CONNS_RESET, c.reset);
    rec.u64(peer::CONNS_ACTIVE, c.active);
    rec.u64(peer::LATENCY_SUM, p.latency.sum_ns);
    rec.u64(peer::LATENCY_COUNT, p.latency.count);
    // The histogram as readers decode it (exactly BUCKETS counters), its
    // percentiles computed here once rather than in every reader.
    let buckets: [u64; BUCKETS] = std::array::from_fn(|i| p.latency.buckets.get(i).copied().unwrap_or(0));
    let [p50, p90, p99] = quantiles_ns(&buckets, [0.5, 0.9, 0.99]);
    rec.u64(peer::LATENCY_P50, p50.unwrap_or(0));
    rec.u64(peer::LATENCY_P90, p90.unwrap_or(0));
    rec.u64(peer::LATENCY_P99, p99.unwrap_or(0));
    rec.u32(peer::BUCKETS_AT, pool.pos() as u32);
    let mut n = 0u32;
    for (i, &count) in buckets.iter().enumerate().filter(|(_, c)| **c != 0) {
        let mut entry = pool.record(BUCKET_ENTRY_SIZE);
        entry.u8(bucket_entry::INDEX, i as u8);
        entry.u64(bucket_entry::COUNT, count);
        n += 1;
    }
    rec.u32(peer::N_BUCKETS, n);
    let w = &p.window;
    rec.f64(peer::WINDOW_REQUESTS_PER_SEC, w.requests_per_sec);
    rec.f64(peer::WINDOW_ERRORS_5XX_PER_SEC, w.errors_5xx_per_sec);
    rec.f64(peer::WINDOW_SENT_BYTES_PER_SEC, w.sent_bytes_per_sec);
    rec.f64(peer::WINDOW_RECEIVED_BYTES_PER_SEC, w.received_bytes_per_sec);
    rec.u64(peer::WINDOW_LATENCY_AVG, w.latency_avg_ns);
    rec.u64(peer::WINDOW_LATENCY_P50, w.latency_p50_ns);
    rec.u64(peer::WINDOW_LATENCY_P90, w.latency_p90_ns);
    rec.u64(peer::WINDOW_LATENCY_P99, w.latency_p99_ns);
    rec.u64(peer::FIRST_SEEN, p.first_seen_unix_ns);
    rec.u64(peer::LAST_SEEN, p.last_seen_unix_ns);
    folded
}

/// Encodes one history sample ([`history`]).
pub fn enc_history(e: &mut Enc, h: &HistorySample) {
    let mut rec = e.record(HISTORY_REC_SIZE);
    rec.u32(history::REQUESTS, h.requests);
    rec.u32(history::ERRORS_5XX, h.errors_5xx);
    rec.u32(history::CONN_FAILED, h.conn_failed);
    rec.u32(history::LATENCY_P99_US, h.latency_p99_us);
}

/// Encodes one route record ([`route`]), its method and path going to
/// `pool`; returns how many exact codes were folded into `codes_other`.
pub fn enc_route(e: &mut Enc, pool: &mut Enc, r: &RouteStats) -> u64 {
    let method = truncate_utf8(&r.method, METHOD_LEN);
    let path = truncate_utf8(&r.path, PATH_LEN);
    let mut rec = e.record(ROUTE_REC_SIZE);
    rec.u32(route::PEER, r.peer);
    rec.u8(route::IS_OTHER, r.is_other as u8);
    rec.u8(route::N_METHOD, method.len() as u8);
    rec.u8(route::N_PATH, path.len() as u8);
    rec.u32(route::STRINGS_AT, pool.pos() as u32);
    pool.bytes(method.as_bytes());
    pool.bytes(path.as_bytes());
    rec.u64(route::REQUESTS, r.requests);
    rec.u64(route::NO_RESPONSE, r.no_response);
    let folded = enc_responses(&mut rec, route::RESPONSES, &r.responses, ROUTE_CODES);
    rec.u64(route::LATENCY_SUM, r.latency_sum_ns);
    rec.u64(route::LATENCY_COUNT, r.latency_count);
    rec.u64(route::LATENCY_P50, r.latency_p50_ns);
    rec.u64(route::LATENCY_P90, r.latency_p90_ns);
    rec.u64(route::LATENCY_P99, r.latency_p99_ns);
    rec.f64(route::REQUESTS_PER_SEC, r.requests_per_sec);
    rec.f64(route::ERRORS_5XX_PER_SEC, r.errors_5xx_per_sec);
    folded
}

/// Encodes one sampled request ([`recent`]).
pub fn enc_recent(e: &mut Enc, r: &RecentRequest) {
    let method = truncate_utf8(&r.method, METHOD_LEN);
    let path = truncate_utf8(&r.path, PATH_LEN);
    let mut rec = e.record(RECENT_REC_SIZE);
    rec.u64(recent::UNIX_NS, r.unix_ns);
    rec.addr(recent::PEER, &r.peer);
    rec.u8(recent::N_METHOD, method.len() as u8);
    rec.u8(recent::N_PATH, path.len() as u8);
    rec.u16(recent::STATUS, r.status);
    rec.bytes(recent::METHOD, method.as_bytes());
    rec.bytes(recent::PATH, path.as_bytes());
    rec.u64(recent::LATENCY, r.latency_ns);
}

/// The record counts a slot header announces (already bounded by the
/// capacities).
pub struct Counts {
    pub ifaces: usize,
    pub peers: usize,
    pub routes: usize,
    pub recent: usize,
}

/// Encodes the slot header's figures: everything but `S_USED`,
/// `S_CHECKSUM` and `S_POOL_LEN`, which the writer fills in once the body
/// is written. [`crate::slot`] reads them back.
pub fn enc_slot_head(e: &mut Enc, m: &ProbeMeta, n: &Counts) {
    let mut h = e.record(SLOT_HEADER_SIZE as usize);
    h.u32(S_PID, m.pid);
    h.u32(S_HISTORY_LEN, m.history_len);
    h.u64(S_STARTED, m.started_unix_ns);
    h.u64(S_PUBLISHED, m.published_unix_ns);
    h.u64(S_INTERVAL, m.interval_ns);
    h.u64(S_PUBLISH_SEQ, m.publish_seq);
    let c = &m.counters;
    h.u64(counters::EVENTS_DROPPED, c.events_dropped);
    h.u64(counters::CONN_TABLE_FULL, c.conn_table_full);
    h.u64(counters::CONN_EVICTED, c.conn_evicted);
    h.u64(counters::PEER_TABLE_FULL, c.peer_table_full);
    h.u64(counters::ROUTE_OVERFLOW, c.route_overflow);
    h.u64(counters::RECENT_SAMPLED_OUT, c.recent_sampled_out);
    h.u64(counters::PARSE_ERRORS, c.parse_errors);
    h.u32(S_N_IFACES, n.ifaces as u32);
    h.u32(S_N_PEERS, n.peers as u32);
    h.u32(S_N_ROUTES, n.routes as u32);
    h.u32(S_N_RECENT, n.recent as u32);
    for (i, name) in m.interfaces[..n.ifaces].iter().enumerate() {
        let name = truncate_utf8(name, IFACE_LEN - 1);
        let at = S_IFACES + i * IFACE_LEN;
        h.u8(at + iface::N_NAME, name.len() as u8);
        h.bytes(at + iface::NAME, name.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_keep_the_most_frequent() {
        let codes: Vec<(u16, u64)> = (0..10).map(|i| (200 + i, u64::from(i))).collect();
        let (kept, folded) = bound_codes(&codes, 3);
        assert_eq!(kept, vec![(207, 7), (208, 8), (209, 9)]);
        assert_eq!(folded, (0..7).sum::<u64>());
    }
}
