//! What one reading of the BPF maps holds ([`BpfTotals`]), and the totals of
//! a previous run that fresh maps continue from ([`Base`]).
//!
//! These sit apart from aggregate.rs and restore.rs because both need them:
//! the aggregator folds totals (base added), restore.rs fills the base from
//! the table. Here, restore.rs depends on the aggregator and not the other
//! way round.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use crate::bpf::{add_peer_counters, types, BpfStats};

/// Everything read from the BPF maps for one publish.
#[derive(Debug, Clone, Default)]
pub struct BpfTotals {
    pub peers: Vec<(SocketAddr, types::peer_counters)>,
    /// Connection counts of connections that carried no HTTP.
    pub tcp: Vec<(SocketAddr, types::tcp_counters)>,
    pub codes: Vec<(SocketAddr, u16, u64)>,
    pub stats: BpfStats,
    /// Established tracked connections per peer.
    pub active: HashMap<SocketAddr, u64>,
}

/// Totals of a previous run added to fresh maps' counters (see restore.rs,
/// which fills it).
#[derive(Debug, Clone, Default)]
pub struct Base {
    pub(crate) peers: HashMap<SocketAddr, types::peer_counters>,
    pub(crate) codes: HashMap<SocketAddr, BTreeMap<u16, u64>>,
    pub(crate) stats: BpfStats,
}

impl Base {
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty() && self.stats == BpfStats::default()
    }

    /// `totals` plus the base; peers known only to the base are kept.
    pub fn add_to(&self, totals: &BpfTotals) -> BpfTotals {
        let mut out = totals.clone();
        for (addr, base) in &self.peers {
            let i = match out.peers.iter().position(|(a, _)| a == addr) {
                Some(i) => i,
                None => {
                    out.peers.push((*addr, types::peer_counters::default()));
                    out.peers.len() - 1
                }
            };
            add_peer_counters(&mut out.peers[i].1, base);
        }
        for (addr, codes) in &self.codes {
            for (code, n) in codes {
                match out.codes.iter_mut().find(|(a, c, _)| a == addr && c == code) {
                    Some(e) => e.2 += n,
                    None => out.codes.push((*addr, *code, *n)),
                }
            }
        }
        let s = &mut out.stats;
        s.events_dropped += self.stats.events_dropped;
        s.conn_table_full += self.stats.conn_table_full;
        s.peer_table_full += self.stats.peer_table_full;
        s.parse_errors += self.stats.parse_errors;
        s.codes_full += self.stats.codes_full;
        out
    }
}
