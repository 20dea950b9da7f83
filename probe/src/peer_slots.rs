//! Slots of HTTP peers given back. `--max-peers` bounds the peers active at
//! once, not the peers seen in the probe's life: a peer with no tracked
//! connection whose counters have not moved for `--peer-idle` leaves its
//! slot in `peers` to the next new backend. Its totals move to the `banked`
//! maps (pinned with the counters, so a restart on the same maps continues
//! them) and stay in the table; when it comes back, its next request claims
//! a slot again and its figures continue from the bank.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;

use crate::bpf::{add_peer_counters, bytes_of, types, PeerCounts, Programs, NO_PEER};

/// A peer's banked totals and exact codes.
#[derive(Debug, Clone, Default)]
struct Banked {
    counters: types::peer_counters,
    codes: BTreeMap<u16, u64>,
}

/// A listed slot as last read.
#[derive(Debug, Clone, Copy)]
struct Listed {
    peer: SocketAddr,
    counters: types::peer_counters,
    /// When `counters` last moved (CLOCK_MONOTONIC ns).
    moved_ns: u64,
}

pub struct PeerSlots {
    idle_ns: u64,
    /// Per listed slot: its peer, the counters last read and when they
    /// last moved.
    seen: HashMap<u32, Listed>,
    /// Unlisted slots that a connection still referred to when they were
    /// taken back: read (and summed into their peer) until it is gone. Not
    /// carried across a restart.
    retiring: Vec<(SocketAddr, u32)>,
    /// What the `banked` maps hold (this daemon is their only writer).
    bank: HashMap<SocketAddr, Banked>,
    /// Entries in `banked_codes`.
    banked_codes: usize,
    /// Entries `banked` and `banked_codes` hold at most (peers, codes).
    bank_capacity: (usize, usize),
}

/// How long the programs may take between finding a slot in `peer_ids` and
/// storing it with a new connection: far more than one program run.
const UNLIST_GRACE: Duration = Duration::from_millis(10);

impl PeerSlots {
    /// Starts from what the bank holds (kept from a previous run when the
    /// maps were reused).
    pub fn new(progs: &Programs, idle: Duration) -> Result<Self> {
        let (peers, codes) = progs.banked()?;
        let mut bank: HashMap<SocketAddr, Banked> = HashMap::new();
        for (addr, c) in peers {
            bank.entry(addr).or_default().counters = c;
        }
        let banked_codes = codes.len();
        for (addr, code, n) in codes {
            bank.entry(addr).or_default().codes.insert(code, n);
        }
        Ok(PeerSlots {
            idle_ns: idle.as_nanos() as u64,
            seen: HashMap::new(),
            retiring: Vec::new(),
            bank,
            banked_codes,
            bank_capacity: progs.bank_capacity(),
        })
    }

    /// Everything counted per peer: its slot (listed or retiring) plus its
    /// bank. Notes which slots moved since the last read.
    pub fn totals(&mut self, progs: &Programs, now_ns: u64) -> Result<PeerCounts> {
        let listed = progs.peer_index()?;
        let counters = progs.slot_counters(&listed)?;
        let mut live: HashSet<u32> = HashSet::with_capacity(listed.len());
        for ((addr, c), (_, idx)) in counters.iter().zip(&listed) {
            live.insert(*idx);
            match self.seen.get(idx) {
                Some(s) if s.peer == *addr && bytes_of(&s.counters) == bytes_of(c) => {}
                _ => {
                    self.seen.insert(*idx, Listed { peer: *addr, counters: *c, moved_ns: now_ns });
                }
            }
        }
        self.seen.retain(|idx, _| live.contains(idx));

        let retiring = progs.slot_counters(&self.retiring)?;
        let mut peers: HashMap<SocketAddr, types::peer_counters> = HashMap::new();
        for (addr, c) in counters.iter().chain(&retiring) {
            add_peer_counters(peers.entry(*addr).or_default(), c);
        }
        let mut slots = listed;
        slots.extend_from_slice(&self.retiring);
        let mut codes: BTreeMap<(SocketAddr, u16), u64> = BTreeMap::new();
        for (addr, code, n) in progs.slot_codes(&slots)? {
            *codes.entry((addr, code)).or_default() += n;
        }
        for (addr, b) in &self.bank {
            add_peer_counters(peers.entry(*addr).or_default(), &b.counters);
            for (code, n) in &b.codes {
                *codes.entry((*addr, *code)).or_default() += n;
            }
        }
        Ok((peers.into_iter().collect(), codes.into_iter().map(|((a, c), n)| (a, c, n)).collect()))
    }

    /// Take back the slots of peers idle for `--peer-idle`. `referenced`:
    /// the slots of the connections the sweep just walked. Returns how many
    /// slots went back.
    pub fn reclaim(&mut self, progs: &Programs, referenced: &HashSet<u32>, now_ns: u64) -> Result<usize> {
        let mut freed = 0;
        // Retiring slots were unlisted a publish ago: no new connection can
        // have found them since, so once no tracked one refers to them
        // they are done.
        let retiring = std::mem::take(&mut self.retiring);
        for (addr, idx) in retiring {
            if referenced.contains(&idx) {
                self.retiring.push((addr, idx));
            } else {
                self.bank_and_free(progs, addr, idx)?;
                freed += 1;
            }
        }

        let mut room_peers = self.bank_capacity.0.saturating_sub(self.bank.len());
        let idle: Vec<(SocketAddr, u32)> = self
            .seen
            .iter()
            .filter(|(idx, s)| !referenced.contains(idx) && now_ns.saturating_sub(s.moved_ns) >= self.idle_ns)
            .map(|(idx, s)| (s.peer, *idx))
            .filter(|(addr, _)| {
                // A full bank keeps the rest in their slots.
                let fits = self.bank.contains_key(addr) || room_peers > 0;
                if fits && !self.bank.contains_key(addr) {
                    room_peers -= 1;
                }
                fits
            })
            .collect();
        if idle.is_empty() {
            return Ok(freed);
        }
        let unlisted: Vec<(SocketAddr, u32)> = idle.into_iter().filter(|(a, _)| progs.unlist_peer(*a)).collect();
        // A connection opened just before the unlisting may have picked the
        // slot up: look again once any program that read it has stored it.
        std::thread::sleep(UNLIST_GRACE);
        let now_referenced: HashSet<u32> =
            progs.conns()?.iter().map(|c| c.state.peer_idx).filter(|&i| i != NO_PEER).collect();
        for (addr, idx) in unlisted {
            self.seen.remove(&idx);
            if !now_referenced.contains(&idx) {
                self.bank_and_free(progs, addr, idx)?;
                freed += 1;
            } else if !progs.relist_peer(addr, idx) {
                // The peer claimed a new slot meanwhile: this one goes
                // back once its connection is gone.
                self.retiring.push((addr, idx));
            }
        }
        Ok(freed)
    }

    /// Add a slot nothing refers to any more to its peer's bank, then clear
    /// it and hand it back to the programs.
    fn bank_and_free(&mut self, progs: &Programs, addr: SocketAddr, idx: u32) -> Result<()> {
        let slot = [(addr, idx)];
        let counters = progs.slot_counters(&slot)?;
        let codes = progs.slot_codes(&slot)?;
        let b = self.bank.entry(addr).or_default();
        for (_, c) in &counters {
            add_peer_counters(&mut b.counters, c);
        }
        for (_, code, n) in codes {
            match b.codes.get_mut(&code) {
                Some(e) => *e += n,
                None if self.banked_codes < self.bank_capacity.1 => {
                    b.codes.insert(code, n);
                    self.banked_codes += 1;
                }
                // As the programs do when `codes` is full: the class counts
                // keep it, the exact code goes to codes_other.
                None => b.counters.codes_other += n,
            }
        }
        let codes: Vec<(u16, u64)> = b.codes.iter().map(|(c, n)| (*c, *n)).collect();
        // Written before the slot is cleared: a crash in between counts
        // the slot twice at the next start rather than losing it.
        progs.bank(addr, &b.counters, &codes)?;
        progs.free_slot(idx)
    }
}
