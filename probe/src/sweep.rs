//! The connection sweeper: reads the `conns` map every interval, counts the
//! open connections per peer and evicts what the programs cannot end
//! themselves (unanswered SYNs, connections idle for too long, e.g. whose
//! FIN the probe missed).

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::Result;

use crate::aggregate::{monotonic_ns, Aggregator, BpfTotals};
use crate::bpf::{socket_addr, Programs, PHASE_AWAIT_RESPONSE, PHASE_SYN_SENT};

#[derive(Debug, Clone, Copy)]
pub struct SweepConfig {
    /// A SYN unanswered this long is a failed connection.
    pub syn_timeout_ns: u64,
    /// A connection without a SYN, request or response this long is evicted.
    pub idle_timeout_ns: u64,
}

/// Sweep the connection map; returns established connections per peer.
pub fn sweep(progs: &Programs, agg: &mut Aggregator, cfg: SweepConfig) -> Result<HashMap<SocketAddr, u64>> {
    let now = monotonic_ns();
    let mut active = HashMap::new();
    for c in progs.conns()? {
        let peer = socket_addr(c.key.peer_addr, c.key.peer_port);
        let idle = now.saturating_sub(c.state.last_ts);
        if c.state.phase == PHASE_SYN_SENT {
            if idle > cfg.syn_timeout_ns && progs.delete_conn(&c) {
                agg.on_unanswered_syn(peer);
            }
            continue;
        }
        if idle > cfg.idle_timeout_ns {
            if progs.delete_conn(&c) {
                let awaiting = (c.state.phase == PHASE_AWAIT_RESPONSE).then(|| {
                    let len = usize::from(c.state.req_len).min(c.state.req.len());
                    (&c.state.req[..len], c.state.req_ts)
                });
                agg.on_evicted(peer, awaiting);
            }
            continue;
        }
        *active.entry(peer).or_insert(0) += 1;
    }
    Ok(active)
}

/// Read everything the programs counted, sweeping connections on the way.
pub fn collect(progs: &Programs, agg: &mut Aggregator, cfg: SweepConfig) -> Result<BpfTotals> {
    let active = sweep(progs, agg, cfg)?;
    Ok(BpfTotals {
        peers: progs.peer_counters()?,
        codes: progs.code_counters()?,
        stats: progs.stats()?,
        active,
    })
}
