//! Encoding and decoding of the fixed-size records of a slot (see
//! [`crate::layout`]). The writer bounds every list and string before
//! encoding; the decoder re-checks every length and count it reads.

use crate::histogram::BUCKETS;
use crate::layout::*;
use crate::{
    Connections, HistorySample, Latency, PeerStats, ProbeCounters, RecentRequest, Responses, RouteStats, Window,
};

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

fn dec_responses(d: &mut Dec, cap: usize) -> DecResult<(Responses, u32)> {
    let mut class = [0u64; 5];
    for c in &mut class {
        *c = d.u64()?;
    }
    let codes_other = d.u64()?;
    let n = d.u32()? as usize;
    let extra = d.u32()?; // the peer record keeps its history count here
    if n > cap {
        return Err(format!("{n} status codes (at most {cap})"));
    }
    let mut codes = Vec::with_capacity(n);
    let mut keys = [0u16; PEER_CODES];
    for k in keys.iter_mut().take(cap) {
        *k = d.u16()?;
    }
    for (i, k) in keys.iter().enumerate().take(cap) {
        let count = d.u64()?;
        if i < n {
            codes.push((*k, count));
        }
    }
    Ok((Responses { class, codes, codes_other }, extra))
}

/// Encodes one peer record (exactly `PEER_REC_SIZE` bytes); its history goes
/// to the history array separately. Returns how many exact codes were folded
/// into `codes_other`.
pub fn enc_peer(e: &mut Enc, p: &PeerStats, history_count: u32) -> u64 {
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
    for i in 0..BUCKETS {
        e.u64(p.latency.buckets.get(i).copied().unwrap_or(0));
    }
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

/// Decodes a peer record; returns it (history empty) and its history count.
pub fn dec_peer(rec: &[u8]) -> DecResult<(PeerStats, u32)> {
    let mut d = Dec::new(rec);
    let addr = d.addr()?;
    let requests = d.u64()?;
    let no_response = d.u64()?;
    let sent_bytes = d.u64()?;
    let received_bytes = d.u64()?;
    let (responses, history_count) = dec_responses(&mut d, PEER_CODES)?;
    let conns = Connections { opened: d.u64()?, closed: d.u64()?, failed: d.u64()?, reset: d.u64()?, active: d.u64()? };
    let sum_ns = d.u64()?;
    let count = d.u64()?;
    let buckets: Vec<u64> = d
        .bytes(BUCKETS * 8)?
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().expect("8-byte word")))
        .collect();
    let window = Window {
        requests_per_sec: d.f64()?,
        errors_5xx_per_sec: d.f64()?,
        sent_bytes_per_sec: d.f64()?,
        received_bytes_per_sec: d.f64()?,
        latency_avg_ns: d.u64()?,
        latency_p50_ns: d.u64()?,
        latency_p90_ns: d.u64()?,
        latency_p99_ns: d.u64()?,
    };
    let first_seen_unix_ns = d.u64()?;
    let last_seen_unix_ns = d.u64()?;
    let peer = PeerStats {
        addr,
        requests,
        responses,
        no_response,
        sent_bytes,
        received_bytes,
        conns,
        latency: Latency { buckets, sum_ns, count },
        window,
        history: Vec::new(),
        first_seen_unix_ns,
        last_seen_unix_ns,
    };
    Ok((peer, history_count))
}

pub fn enc_history(e: &mut Enc, h: &HistorySample) {
    e.u32(h.requests);
    e.u32(h.errors_5xx);
    e.u32(h.conn_failed);
    e.u32(h.latency_p99_us);
}

pub fn dec_history(rec: &[u8]) -> DecResult<HistorySample> {
    let mut d = Dec::new(rec);
    Ok(HistorySample { requests: d.u32()?, errors_5xx: d.u32()?, conn_failed: d.u32()?, latency_p99_us: d.u32()? })
}

/// Encodes one route record (exactly `ROUTE_REC_SIZE` bytes); returns how
/// many exact codes were folded into `codes_other`.
pub fn enc_route(e: &mut Enc, r: &RouteStats) -> u64 {
    let start = e.pos();
    let method = truncate_utf8(&r.method, METHOD_LEN);
    let path = truncate_utf8(&r.path, PATH_LEN);
    e.u32(r.peer);
    e.u8(r.is_other as u8);
    e.u8(method.len() as u8);
    e.u8(path.len() as u8);
    e.u8(0);
    e.padded(method.as_bytes(), METHOD_LEN);
    e.padded(path.as_bytes(), PATH_LEN);
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

pub fn dec_route(rec: &[u8]) -> DecResult<RouteStats> {
    let mut d = Dec::new(rec);
    let peer = d.u32()?;
    let is_other = match d.u8()? {
        0 => false,
        1 => true,
        v => return Err(format!("route flag {v}")),
    };
    let method_len = d.u8()? as usize;
    let path_len = d.u8()? as usize;
    d.skip(1)?;
    let method = d.str_field(method_len, METHOD_LEN, "route method")?;
    let path = d.str_field(path_len, PATH_LEN, "route path")?;
    let requests = d.u64()?;
    let no_response = d.u64()?;
    let (responses, _) = dec_responses(&mut d, ROUTE_CODES)?;
    Ok(RouteStats {
        peer,
        is_other,
        method,
        path,
        requests,
        responses,
        no_response,
        latency_sum_ns: d.u64()?,
        latency_count: d.u64()?,
        latency_p50_ns: d.u64()?,
        latency_p90_ns: d.u64()?,
        latency_p99_ns: d.u64()?,
        requests_per_sec: d.f64()?,
        errors_5xx_per_sec: d.f64()?,
    })
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

pub fn dec_recent(rec: &[u8]) -> DecResult<RecentRequest> {
    let mut d = Dec::new(rec);
    let unix_ns = d.u64()?;
    let peer = d.addr()?;
    let method_len = d.u8()? as usize;
    let path_len = d.u8()? as usize;
    let status = d.u16()?;
    d.skip(4)?;
    let method = d.str_field(method_len, METHOD_LEN, "recent method")?;
    let path = d.str_field(path_len, PATH_LEN, "recent path")?;
    Ok(RecentRequest { unix_ns, peer, method, path, status, latency_ns: d.u64()? })
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
