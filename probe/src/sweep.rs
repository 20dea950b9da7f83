//! The connection sweeper: reads the `conns` map every interval, counts the
//! open connections per peer and ends what the programs cannot end
//! themselves (connection attempts the kernel gave up on, connections idle
//! for too long, e.g. whose FIN the probe missed). A publish reads the maps
//! through here ([`sweep_and_read`]): giving idle peers' slots back needs
//! the sweep's list of the slots that connections still refer to.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use anyhow::Result;

use crate::aggregate::{monotonic_ns, Aggregator};
use crate::bpf::{socket_addr, ConnEntry, Phase, Programs, NO_PEER};
use crate::peer_slots::PeerSlots;
use crate::totals::BpfTotals;

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
    let gap = if c.state.req_ts == 0 { 0 } else { last.saturating_sub(c.state.req_ts) };
    last + (2 * gap).max(SYN_RTO_NS) + SYN_SLACK_NS
}

/// What a sweep leaves: established connections per peer, and the peer
/// slots the remaining connections refer to.
#[derive(Debug, Default)]
pub struct Swept {
    pub active: HashMap<SocketAddr, u64>,
    pub slots: HashSet<u32>,
}

/// Sweep the connection map.
pub fn sweep(progs: &Programs, agg: &mut Aggregator, cfg: SweepConfig) -> Result<Swept> {
    let now = monotonic_ns();
    let mut out = Swept::default();
    for c in progs.conns()? {
        let peer = socket_addr(c.key.peer_addr, c.key.peer_port);
        let http = c.state.peer_idx != NO_PEER;
        if http {
            // Before any delete below: a connection the programs end
            // meanwhile may still count into its slot.
            out.slots.insert(c.state.peer_idx);
        }
        let phase = Phase(c.state.phase);
        if phase == Phase::PHASE_SYN_SENT {
            if now > syn_deadline_ns(&c) && progs.delete_conn(&c) {
                agg.on_unanswered_syn(peer, http);
            }
            continue;
        }
        if now.saturating_sub(c.state.last_ts) > cfg.idle_timeout_ns {
            if progs.delete_conn(&c) {
                let awaiting =
                    (http && (phase == Phase::PHASE_AWAIT_RESPONSE || phase == Phase::PHASE_INTERIM)).then(|| {
                        let len = usize::from(c.state.req_len).min(c.state.req.len());
                        (&c.state.req[..len], c.state.req_ts)
                    });
                agg.on_evicted(peer, http, awaiting);
            }
            continue;
        }
        *out.active.entry(peer).or_insert(0) += 1;
    }
    Ok(out)
}

/// One publish's reading of the maps: sweep the connections (which ends
/// some and reports them to `agg`), give idle peers' slots back (see
/// peer_slots.rs), then read every counter ([`read_totals`]) with the
/// established connections per peer.
pub fn sweep_and_read(
    progs: &Programs,
    agg: &mut Aggregator,
    slots: &mut PeerSlots,
    cfg: SweepConfig,
) -> Result<BpfTotals> {
    let swept = sweep(progs, agg, cfg)?;
    let now = monotonic_ns();
    slots.reclaim(progs, &swept.slots, now)?;
    let mut totals = read_totals(progs, slots)?;
    totals.active = swept.active;
    Ok(totals)
}

/// Everything the programs and the bank hold, without sweeping (nothing
/// is ended or given back; `active` stays empty).
pub fn read_totals(progs: &Programs, slots: &mut PeerSlots) -> Result<BpfTotals> {
    let (peers, codes) = slots.totals(progs, monotonic_ns())?;
    Ok(BpfTotals { peers, tcp: progs.tcp_counters()?, codes, stats: progs.stats()?, active: HashMap::new() })
}
