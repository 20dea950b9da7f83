//! The connection sweeper: reads the `conns` map every interval, counts the
//! open connections per peer and ends what the programs cannot end
//! themselves (connection attempts the kernel gave up on, connections idle
//! for too long, e.g. whose FIN the probe missed).

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::Result;

use crate::aggregate::{monotonic_ns, Aggregator, BpfTotals};
use crate::bpf::{socket_addr, ConnEntry, Phase, Programs, NO_PEER};

/// The kernel's first SYN retransmission timeout (TCP_TIMEOUT_INIT).
const SYN_RTO_NS: u64 = 1_000_000_000;
/// Slack on top of the next retransmission's due time.
const SYN_SLACK_NS: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy)]
pub struct SweepConfig {
    /// A connection without a SYN, request or response this long is evicted.
    pub idle_timeout_ns: u64,
}

/// When an unanswered connection attempt counts as failed: once the
/// kernel's next SYN retransmission is overdue. The kernel backs off (1 s,
/// 2 s, 4 s, ... or linearly at first), so the next one is due at most
/// twice the last gap later; until then the attempt may still succeed, and
/// a retransmission with the same initial sequence number is the same
/// attempt (the programs count it once), so a SYN retried for nginx's
/// whole `proxy_connect_timeout` is one failure.
pub fn syn_deadline_ns(c: &ConnEntry) -> u64 {
    let last = c.state.last_ts;
    // req_ts holds the SYN before the last one (0: only one so far).
    let gap = if c.state.req_ts == 0 {
        0
    } else {
        last.saturating_sub(c.state.req_ts)
    };
    last + (2 * gap).max(SYN_RTO_NS) + SYN_SLACK_NS
}

/// Sweep the connection map; returns established connections per peer.
pub fn sweep(
    progs: &Programs,
    agg: &mut Aggregator,
    cfg: SweepConfig,
) -> Result<HashMap<SocketAddr, u64>> {
    let now = monotonic_ns();
    let mut active = HashMap::new();
    for c in progs.conns()? {
        let peer = socket_addr(c.key.peer_addr, c.key.peer_port);
        let http = c.state.peer_idx != NO_PEER;
        let phase = Phase(c.state.phase);
        if phase == Phase::PHASE_SYN_SENT {
            if now > syn_deadline_ns(&c) && progs.delete_conn(&c) {
                agg.on_unanswered_syn(peer, http);
            }
            continue;
        }
        if now.saturating_sub(c.state.last_ts) > cfg.idle_timeout_ns {
            if progs.delete_conn(&c) {
                let awaiting = (http
                    && (phase == Phase::PHASE_AWAIT_RESPONSE || phase == Phase::PHASE_INTERIM))
                    .then(|| {
                        let len = usize::from(c.state.req_len).min(c.state.req.len());
                        (&c.state.req[..len], c.state.req_ts)
                    });
                agg.on_evicted(peer, http, awaiting);
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
        tcp: progs.tcp_counters()?,
        codes: progs.code_counters()?,
        stats: progs.stats()?,
        active,
    })
}
