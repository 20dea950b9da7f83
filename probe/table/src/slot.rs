//! The slot header, read back: which publish a slot copy is
//! ([`PublishId`]) and what its header says ([`SlotHead`]).
//!
//! This sits below both ways of reading a slot: [`crate::reader`] makes
//! the ids, [`crate::view`] decodes the header of the slot it validates.
//! Keeping it apart from both is what keeps the dependencies one-way
//! (reader → view → slot → layout). The fields are at the `S_*` and
//! [`counters`] offsets of [`crate::layout`]; `records.rs` writes them.

use crate::layout::*;
use crate::{ProbeCounters, ProbeMeta};

/// Identifies one publish: the file, its generation, the slot and the
/// slot's sequence number (which only grows). Readers that cache what they
/// made of a publish key the cache with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublishId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) generation: u64,
    pub(crate) active: u64,
    pub(crate) seq: u64,
}

/// The slot header's figures: the probe's meta and the record counts.
pub(crate) struct SlotHead {
    pub meta: ProbeMeta,
    pub n_peers: usize,
    pub n_routes: usize,
    pub n_recent: usize,
}

const _: () = assert!(S_IFACES + MAX_IFACES * IFACE_LEN <= SLOT_HEADER_SIZE as usize);

/// Decodes the slot header of a checksummed slot copy.
pub(crate) fn decode_head(slot: &[u8]) -> DecResult<SlotHead> {
    // Every offset below is inside the header (asserted above).
    let h = slot.get(..SLOT_HEADER_SIZE as usize).ok_or("slot shorter than its header")?;
    let n_ifaces = u32_at(h, S_N_IFACES) as usize;
    if n_ifaces > MAX_IFACES {
        return Err(format!("{n_ifaces} interfaces"));
    }
    let mut interfaces = Vec::with_capacity(n_ifaces);
    for i in 0..n_ifaces {
        let at = S_IFACES + i * IFACE_LEN;
        let (len, width) = (usize::from(h[at + iface::N_NAME]), IFACE_LEN - iface::NAME);
        let name = h[at + iface::NAME..at + IFACE_LEN]
            .get(..len)
            .ok_or_else(|| format!("interface name length {len} exceeds {width}"))?;
        let name = std::str::from_utf8(name).map_err(|_| "interface name is not UTF-8")?;
        interfaces.push(name.to_owned());
    }
    let meta = ProbeMeta {
        pid: u32_at(h, S_PID),
        started_unix_ns: u64_at(h, S_STARTED),
        published_unix_ns: u64_at(h, S_PUBLISHED),
        interval_ns: u64_at(h, S_INTERVAL),
        publish_seq: u64_at(h, S_PUBLISH_SEQ),
        history_len: u32_at(h, S_HISTORY_LEN),
        interfaces,
        counters: ProbeCounters {
            events_dropped: u64_at(h, counters::EVENTS_DROPPED),
            conn_table_full: u64_at(h, counters::CONN_TABLE_FULL),
            conn_evicted: u64_at(h, counters::CONN_EVICTED),
            peer_table_full: u64_at(h, counters::PEER_TABLE_FULL),
            route_overflow: u64_at(h, counters::ROUTE_OVERFLOW),
            recent_sampled_out: u64_at(h, counters::RECENT_SAMPLED_OUT),
            parse_errors: u64_at(h, counters::PARSE_ERRORS),
        },
    };
    Ok(SlotHead {
        meta,
        n_peers: u32_at(h, S_N_PEERS) as usize,
        n_routes: u32_at(h, S_N_ROUTES) as usize,
        n_recent: u32_at(h, S_N_RECENT) as usize,
    })
}
