//! Encoding of the records of a slot (see [`crate::layout`]). The writer
//! bounds every list and string before encoding; the reader's
//! [`crate::SnapshotView`] re-checks every length, count and offset when it
//! reads them back.

use crate::histogram::{quantiles_ns, BUCKETS};
use crate::layout::*;
use crate::{HistorySample, PeerStats, ProbeCounters, RecentRequest, Responses, RouteStats};

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

fn enc_responses(e: &mut Enc, r: &Responses, cap: usize) -> u64 {
    for c in r.class {
        e.u64(c);
    }
    let (codes, folded) = bound_codes(&r.codes, cap);
    e.u64(r.codes_other.wrapping_add(folded));
    let n_folded = (r.codes.len() - codes.len()) as u64;
    e.u32(codes.len() as u32);
    e.u32(0);
    for i in 0..cap {
        e.u16(codes.get(i).map_or(0, |c| c.0));
    }
    for i in 0..cap {
        e.u64(codes.get(i).map_or(0, |c| c.1));
    }
    n_folded
}

/// Encodes one peer record (exactly `PEER_REC_SIZE` bytes) and its
/// non-zero latency buckets into `pool`; its history goes to the history
/// array separately. Returns how many exact codes were folded into
/// `codes_other`.
pub fn enc_peer(e: &mut Enc, pool: &mut Enc, p: &PeerStats, history_count: u32) -> u64 {
    let start = e.pos();
    e.addr(&p.addr);
    e.u64(p.requests);
    e.u64(p.no_response);
    e.u64(p.sent_bytes);
    e.u64(p.received_bytes);
    // enc_responses writes a zero pad word where the decoder finds the
    // history count; patch it below.
    let pad_at = e.pos() + 5 * 8 + 8 + 4;
    let folded = enc_responses(e, &p.responses, PEER_CODES);
    e.written()[pad_at..pad_at + 4].copy_from_slice(&history_count.to_le_bytes());
    let c = &p.conns;
    for v in [c.opened, c.closed, c.failed, c.reset, c.active] {
        e.u64(v);
    }
    e.u64(p.latency.sum_ns);
    e.u64(p.latency.count);
    // The histogram as readers decode it (exactly BUCKETS counters), its
    // percentiles computed here once rather than in every reader.
    let buckets: [u64; BUCKETS] = std::array::from_fn(|i| p.latency.buckets.get(i).copied().unwrap_or(0));
    for q in quantiles_ns(&buckets, [0.5, 0.9, 0.99]) {
        e.u64(q.unwrap_or(0));
    }
    let at = pool.pos();
    let mut n = 0u32;
    for (i, &c) in buckets.iter().enumerate().filter(|(_, c)| **c != 0) {
        pool.u8(i as u8);
        pool.u64(c);
        n += 1;
    }
    e.u32(at as u32);
    e.u32(n);
    let w = &p.window;
    e.f64(w.requests_per_sec);
    e.f64(w.errors_5xx_per_sec);
    e.f64(w.sent_bytes_per_sec);
    e.f64(w.received_bytes_per_sec);
    e.u64(w.latency_avg_ns);
    e.u64(w.latency_p50_ns);
    e.u64(w.latency_p90_ns);
    e.u64(w.latency_p99_ns);
    e.u64(p.first_seen_unix_ns);
    e.u64(p.last_seen_unix_ns);
    debug_assert_eq!(e.pos() - start, PEER_REC_SIZE);
    folded
}

pub fn enc_history(e: &mut Enc, h: &HistorySample) {
    e.u32(h.requests);
    e.u32(h.errors_5xx);
    e.u32(h.conn_failed);
    e.u32(h.latency_p99_us);
}

/// Encodes one route record (exactly `ROUTE_REC_SIZE` bytes), its method
/// and path going to `pool`; returns how many exact codes were folded into
/// `codes_other`.
pub fn enc_route(e: &mut Enc, pool: &mut Enc, r: &RouteStats) -> u64 {
    let start = e.pos();
    let method = truncate_utf8(&r.method, METHOD_LEN);
    let path = truncate_utf8(&r.path, PATH_LEN);
    e.u32(r.peer);
    e.u8(r.is_other as u8);
    e.u8(method.len() as u8);
    e.u8(path.len() as u8);
    e.u8(0);
    e.u32(pool.pos() as u32);
    e.u32(0);
    pool.bytes(method.as_bytes());
    pool.bytes(path.as_bytes());
    e.u64(r.requests);
    e.u64(r.no_response);
    let folded = enc_responses(e, &r.responses, ROUTE_CODES);
    for v in [r.latency_sum_ns, r.latency_count, r.latency_p50_ns, r.latency_p90_ns, r.latency_p99_ns] {
        e.u64(v);
    }
    e.f64(r.requests_per_sec);
    e.f64(r.errors_5xx_per_sec);
    debug_assert_eq!(e.pos() - start, ROUTE_REC_SIZE);
    folded
}

pub fn enc_recent(e: &mut Enc, r: &RecentRequest) {
    let start = e.pos();
    let method = truncate_utf8(&r.method, METHOD_LEN);
    let path = truncate_utf8(&r.path, PATH_LEN);
    e.u64(r.unix_ns);
    e.addr(&r.peer);
    e.u8(method.len() as u8);
    e.u8(path.len() as u8);
    e.u16(r.status);
    e.u32(0);
    e.padded(method.as_bytes(), METHOD_LEN);
    e.padded(path.as_bytes(), PATH_LEN);
    e.u64(r.latency_ns);
    debug_assert_eq!(e.pos() - start, RECENT_REC_SIZE);
}

pub fn enc_counters(e: &mut Enc, c: &ProbeCounters) {
    for v in [
        c.events_dropped,
        c.conn_table_full,
        c.conn_evicted,
        c.peer_table_full,
        c.route_overflow,
        c.recent_sampled_out,
        c.parse_errors,
    ] {
        e.u64(v);
    }
}

pub fn dec_counters(d: &mut Dec) -> DecResult<ProbeCounters> {
    Ok(ProbeCounters {
        events_dropped: d.u64()?,
        conn_table_full: d.u64()?,
        conn_evicted: d.u64()?,
        peer_table_full: d.u64()?,
        route_overflow: d.u64()?,
        recent_sampled_out: d.u64()?,
        parse_errors: d.u64()?,
    })
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
