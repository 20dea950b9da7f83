//! The BPF side seen from userspace: load the skeleton (on pinned maps when
//! resuming), attach or adopt the two tcx programs per interface, read the
//! maps. All libbpf FFI lives here.

use std::collections::BTreeMap;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ptr::NonNull;

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{AsRawLibbpf, Link, MapCore, MapFlags, MapHandle, OpenObject};

use crate::pins::{Fnv, StateDir};

mod skel {
    #![allow(clippy::all, non_camel_case_types, non_snake_case, dead_code)]
    include!(concat!(env!("OUT_DIR"), "/upstreamtop.skel.rs"));
}
pub use skel::types;
use skel::{UpstreamtopSkel, UpstreamtopSkelBuilder};

/// Connection phases (`enum conn_phase` of upstreamtop.h, from BTF).
pub use types::conn_phase as Phase;
use types::stat_index as Stat;

/// `peer_idx` of a connection that has not carried HTTP (upstreamtop.h).
pub const NO_PEER: u32 = u32::MAX;

/// What the BPF programs are told before load.
#[derive(Debug, Clone)]
pub struct BpfConfig {
    pub ignore_ports: Vec<u16>,
    /// `--only` networks, as (IPv6 or v4-mapped address, prefix over 128 bits).
    pub only: Vec<(Ipv6Addr, u8)>,
    pub max_conns: u32,
    pub max_peers: u32,
    /// Peers whose connections carry no HTTP, kept apart (LRU).
    pub max_tcp_peers: u32,
    /// Exact-code counters: (peer, code) pairs.
    pub max_codes: u32,
    /// Idle HTTP peers whose totals are kept after their slot went back.
    pub max_banked: u32,
    pub ring_bytes: u32,
}

/// Global BPF-side counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BpfStats {
    pub events_dropped: u64,
    pub conn_table_full: u64,
    pub peer_table_full: u64,
    pub parse_errors: u64,
    pub codes_full: u64,
    pub retransmits: u64,
    pub opaque_conns: u64,
}

/// Counters per peer, and exact codes per (peer, code).
pub type PeerCounts = (Vec<(SocketAddr, types::peer_counters)>, Vec<(SocketAddr, u16, u64)>);

/// One tracked connection as read from the `conns` map.
#[derive(Debug, Clone, Copy)]
pub struct ConnEntry {
    pub key: types::conn_key,
    pub state: types::conn_state,
}

struct Attachment {
    name: String,
    // Dropping unpinned links detaches the programs; pinned links stay
    // attached until detached explicitly.
    egress: Link,
    ingress: Link,
}

/// The loaded programs and their attachments.
pub struct Programs {
    skel: UpstreamtopSkel<'static>,
    attached: BTreeMap<u32, Attachment>,
    /// `tracked[0]` in the programs' mmap'd .bss (the counting filter).
    tracked: *mut u32,
    /// Where maps and links are pinned, if anywhere.
    state: Option<StateDir>,
    /// The maps (and so the counters) came from a previous run.
    resumed: bool,
}

/// Maps carried across restarts, by pin name. `.rodata` (per-run flags) and
/// the per-CPU scratch space are not state.
macro_rules! state_maps {
    ($maps:expr) => {
        [
            ("conns", &mut $maps.conns),
            ("tcp_peers", &mut $maps.tcp_peers),
            ("peer_ids", &mut $maps.peer_ids),
            ("peers", &mut $maps.peers),
            ("free_peer_ids", &mut $maps.free_peer_ids),
            ("banked", &mut $maps.banked),
            ("banked_codes", &mut $maps.banked_codes),
            ("codes", &mut $maps.codes),
            ("common_codes", &mut $maps.common_codes),
            ("stats", &mut $maps.stats),
            ("events", &mut $maps.events),
            ("bss", &mut $maps.bss),
        ]
    };
}

/// What identifies compatible pins: the programs' instructions as built
/// (variable offsets into .bss included) and every map's definition after
/// the flags sized them.
fn fingerprint(open: &skel::OpenUpstreamtopSkel<'_>) -> u64 {
    let mut h = Fnv::default();
    for prog in [&open.progs.upstreamtop_egress, &open.progs.upstreamtop_ingress] {
        for insn in prog.insns() {
            h.write(bytes_of(&insn.code));
            h.write(bytes_of(&insn._bitfield_1));
            h.write(&insn.off.to_ne_bytes());
            h.write(&insn.imm.to_ne_bytes());
        }
    }
    for map in [
        &open.maps.conns,
        &open.maps.tcp_peers,
        &open.maps.peer_ids,
        &open.maps.peers,
        &open.maps.free_peer_ids,
        &open.maps.banked,
        &open.maps.banked_codes,
        &open.maps.codes,
        &open.maps.common_codes,
        &open.maps.stats,
        &open.maps.events,
        &open.maps.bss,
    ] {
        h.write(map.name().as_encoded_bytes());
        h.write(&(map.map_type() as u32).to_ne_bytes());
        for v in [map.key_size(), map.value_size(), map.max_entries(), map.map_flags()] {
            h.write(&v.to_ne_bytes());
        }
    }
    h.finish()
}

/// A map record as plain bytes (keys and values are `repr(C)` types
/// generated from the BPF object's BTF, explicit padding included).
pub fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is one of the skeleton's plain `repr(C)` records whose
    // padding is explicit, so all size_of::<T>() bytes are initialized.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

/// The inverse of [`bytes_of`]; `None` when the size does not match.
pub fn from_bytes<T: Copy>(b: &[u8]) -> Option<T> {
    if b.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the skeleton's records are integers and byte arrays, for which
    // every bit pattern is valid; the length was checked above and
    // read_unaligned copes with the Vec's alignment.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

/// The status code counted in slot `slot` of `struct code_slots` (see
/// upstreamtop.h: the first ten codes of classes 2xx to 5xx).
fn common_code(slot: usize) -> u16 {
    (200 + slot / 10 * 100 + slot % 10) as u16
}

/// A port's bit in the programs' 512-bit port sets (`port_bit` in
/// upstreamtop.bpf.c).
fn port_bit(port: u16) -> usize {
    (u32::from(port).wrapping_mul(0x9E37_79B1) >> (32 - 9)) as usize
}

/// An event from a ring-buffer record. The programs send only the used part
/// of `req` (up to `req_len`); the rest reads as zeros. `None` for a record
/// shorter than the fixed fields.
pub fn event_from_record(data: &[u8]) -> Option<types::exchange_event> {
    const SIZE: usize = size_of::<types::exchange_event>();
    let fixed = std::mem::offset_of!(types::exchange_event, req);
    if data.len() < fixed {
        return None;
    }
    let mut full = [0u8; SIZE];
    let n = data.len().min(SIZE);
    full[..n].copy_from_slice(&data[..n]);
    from_bytes(&full)
}

/// A 16-byte map address (IPv4 as v4-mapped) and a port as a socket address.
pub fn socket_addr(addr: [u8; 16], port: u16) -> SocketAddr {
    let v6 = Ipv6Addr::from(addr);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, port)
}

/// Adds every counter of `b` into `a`: one place that knows all the fields,
/// for summing per-CPU values and for carrying counts over a restart.
pub fn add_peer_counters(a: &mut types::peer_counters, b: &types::peer_counters) {
    a.requests += b.requests;
    for (x, y) in a.responses.iter_mut().zip(b.responses) {
        *x += y;
    }
    a.no_response += b.no_response;
    a.sent_bytes += b.sent_bytes;
    a.received_bytes += b.received_bytes;
    a.conn_opened += b.conn_opened;
    a.conn_closed += b.conn_closed;
    a.conn_failed += b.conn_failed;
    a.conn_reset += b.conn_reset;
    a.codes_other += b.codes_other;
}

/// Adds every counter of `b` into `a` (per-CPU values).
fn add_tcp_counters(a: &mut types::tcp_counters, b: &types::tcp_counters) {
    a.opened += b.opened;
    a.closed += b.closed;
    a.failed += b.failed;
    a.reset += b.reset;
}

fn add_u64(a: &mut u64, b: &u64) {
    *a += b;
}

/// The per-CPU values of `key` in `map`, summed with `add`; None when the
/// key is absent (gone between listing and lookup). `what` names the map in
/// errors.
fn percpu_sum<T: Copy + Default>(map: &impl MapCore, key: &[u8], what: &str, add: fn(&mut T, &T)) -> Result<Option<T>> {
    let Some(per_cpu) = map.lookup_percpu(key, MapFlags::ANY).with_context(|| format!("reading {what}"))? else {
        return Ok(None);
    };
    let mut sum = T::default();
    for v in per_cpu.iter().filter_map(|b| from_bytes::<T>(b)) {
        add(&mut sum, &v);
    }
    Ok(Some(sum))
}

/// The map form of a peer address.
pub fn peer_key_of(addr: SocketAddr) -> types::peer_key {
    let v6 = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    types::peer_key { addr: v6.octets(), port: addr.port(), _pad: 0 }
}

fn explain_load_error(e: &libbpf_rs::Error) -> String {
    let msg = format!("{e}");
    // EPERM is a missing capability; EACCES is the verifier refusing the
    // programs (its log went to stderr).
    if msg.contains("os error 1)") {
        format!("{msg}: the probe needs root or the capabilities CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON")
    } else if msg.contains("os error 13)") {
        format!("{msg}: the kernel's verifier rejected the programs (log above)")
    } else {
        msg
    }
}

impl Programs {
    /// Open, configure and load the BPF object (verifier runs here). With a
    /// state directory, maps pinned there by a compatible earlier run are
    /// reused (see [`Programs::resumed`]) and fresh maps are pinned.
    pub fn load(cfg: &BpfConfig, state: Option<StateDir>) -> Result<Self> {
        if cfg.ignore_ports.len() > 8 {
            bail!("at most 8 --ignore-port values are supported (got {})", cfg.ignore_ports.len());
        }
        if cfg.only.len() > 8 {
            bail!("at most 8 --only networks are supported (got {})", cfg.only.len());
        }
        // The skeleton borrows its object storage for its whole life; the
        // programs live as long as the process (or test), so leak it.
        let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = UpstreamtopSkelBuilder::default().open(storage).context("opening the BPF object")?;

        open.maps.conns.set_max_entries(cfg.max_conns).context("sizing the conns map")?;
        open.maps.peers.set_max_entries(cfg.max_peers).context("sizing the peers map")?;
        open.maps.tcp_peers.set_max_entries(cfg.max_tcp_peers).context("sizing the tcp_peers map")?;
        open.maps.peer_ids.set_max_entries(cfg.max_peers).context("sizing the peer_ids map")?;
        open.maps.free_peer_ids.set_max_entries(cfg.max_peers).context("sizing the free_peer_ids map")?;
        open.maps.banked.set_max_entries(cfg.max_banked).context("sizing the banked map")?;
        open.maps
            .banked_codes
            .set_max_entries(cfg.max_banked.saturating_mul(16))
            .context("sizing the banked_codes map")?;
        open.maps.codes.set_max_entries(cfg.max_codes).context("sizing the codes map")?;
        open.maps.common_codes.set_max_entries(cfg.max_peers).context("sizing the common_codes map")?;
        open.maps
            .events
            .set_max_entries(cfg.ring_bytes.next_power_of_two().max(4096))
            .context("sizing the events ring buffer")?;
        let rodata = open.maps.rodata_data.as_deref_mut().context("BPF object lacks .rodata")?;
        for (i, p) in cfg.ignore_ports.iter().enumerate() {
            rodata.ignore_ports[i] = *p;
        }
        rodata.n_ignore_ports = cfg.ignore_ports.len() as u32;
        for p in &cfg.ignore_ports {
            let bit = port_bit(*p);
            rodata.ignore_port_bits[bit / 64] |= 1 << (bit % 64);
        }
        for (i, (addr, prefix)) in cfg.only.iter().enumerate() {
            rodata.only_cidrs[i] = types::cidr { addr: addr.octets(), prefix_len: u32::from(*prefix) };
        }
        rodata.n_only_cidrs = cfg.only.len() as u32;
        rodata.max_peers = cfg.max_peers;
        // tcx programs are attached per interface below, never by libbpf.
        open.progs.upstreamtop_egress.set_autoattach(false);
        open.progs.upstreamtop_ingress.set_autoattach(false);

        let mut resumed = false;
        // Computed before load: libbpf rewrites the instructions while loading.
        let fp = fingerprint(&open);
        if let Some(sd) = &state {
            match sd.fingerprint() {
                Some(old) if old == fp => match reuse_pinned(&mut open, sd) {
                    Ok(()) => resumed = true,
                    Err(e) => {
                        log(&format!("cannot reuse the maps pinned in {}: {e:#}; starting fresh", sd.path().display()));
                        // Fresh maps must not meet half-reused ones.
                        return Self::fresh_after_clear(cfg, sd);
                    }
                },
                Some(_) => {
                    log(&format!(
                        "the state pinned in {} was made by other programs or other map sizes \
                         (an upgrade, or changed --max-* flags): detaching it and starting fresh; \
                         counters restart from the table's last publish",
                        sd.path().display()
                    ));
                    return Self::fresh_after_clear(cfg, sd);
                }
                None => {
                    // No fingerprint: nothing pinned, or a start that died
                    // before pinning everything.
                    if sd.links()?.is_empty() {
                        sd.clear(false)?;
                    } else {
                        return Self::fresh_after_clear(cfg, sd);
                    }
                }
            }
        }

        let mut skel =
            open.load().map_err(|e| anyhow::anyhow!("loading the BPF programs failed: {}", explain_load_error(&e)))?;
        if resumed {
            remap_reused_bss(&skel.maps.bss)?;
        } else if let Some(sd) = &state {
            for (name, map) in state_maps!(skel.maps) {
                let path = sd.map_pin(name);
                map.pin(&path).with_context(|| format!("pinning {name} at {}", path.display()))?;
            }
            sd.set_fingerprint(fp)?;
        }
        let bss = skel.maps.bss_data.as_deref_mut().context("BPF object lacks .bss")?;
        let tracked = bss.tracked.as_mut_ptr();
        Ok(Programs { skel, attached: BTreeMap::new(), tracked, state, resumed })
    }

    fn fresh_after_clear(cfg: &BpfConfig, sd: &StateDir) -> Result<Self> {
        sd.clear(false).with_context(|| format!("clearing {}", sd.path().display()))?;
        Self::load(cfg, Some(sd.clone()))
    }

    /// The counters in the maps go on from a previous run.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Whether maps and links outlive this process.
    pub fn pinned(&self) -> bool {
        self.state.is_some()
    }

    /// Take over the links a previous run pinned: switch each to these
    /// programs (atomically: no segment goes uncounted). Links of
    /// interfaces that are gone, or half pairs, are removed. `ifaces` maps
    /// live ifindexes to names.
    pub fn adopt_links(&mut self, ifaces: &[(u32, String)]) -> Result<()> {
        let Some(sd) = self.state.clone() else { return Ok(()) };
        let pinned = sd.links()?;
        let mut by_index: BTreeMap<u32, (Option<Link>, Option<Link>)> = BTreeMap::new();
        for l in &pinned {
            let link = Link::open(&l.path).with_context(|| format!("opening {}", l.path.display()));
            let prog =
                if l.egress { &self.skel.progs.upstreamtop_egress } else { &self.skel.progs.upstreamtop_ingress };
            let adopted = self.resumed && ifaces.iter().any(|(i, _)| *i == l.ifindex);
            match link {
                Ok(mut link) => {
                    if adopted && link.update_prog(prog).is_ok() {
                        let e = by_index.entry(l.ifindex).or_default();
                        if l.egress {
                            e.0 = Some(link)
                        } else {
                            e.1 = Some(link)
                        }
                    } else {
                        let _ = link.detach();
                        let _ = link.unpin();
                    }
                }
                Err(_) => {
                    let _ = std::fs::remove_file(&l.path);
                }
            }
        }
        for (ifindex, pair) in by_index {
            let name = ifaces.iter().find(|(i, _)| *i == ifindex).map(|(_, n)| n.clone()).unwrap_or_default();
            match pair {
                (Some(egress), Some(ingress)) => {
                    log(&format!("adopted the pinned links on {name}"));
                    self.attached.insert(ifindex, Attachment { name, egress, ingress });
                }
                (a, b) => {
                    for mut l in a.into_iter().chain(b) {
                        let _ = l.detach();
                        let _ = l.unpin();
                    }
                }
            }
        }
        Ok(())
    }

    /// Attach both programs to `ifindex` with tcx.
    pub fn attach(&mut self, name: &str, ifindex: u32) -> Result<()> {
        if self.attached.contains_key(&ifindex) {
            return Ok(());
        }
        let mut egress = attach_tcx(&self.skel.progs.upstreamtop_egress, ifindex)
            .with_context(|| format!("attaching tcx/egress to {name}"))?;
        let mut ingress = attach_tcx(&self.skel.progs.upstreamtop_ingress, ifindex)
            .with_context(|| format!("attaching tcx/ingress to {name}"))?;
        if let Some(sd) = &self.state {
            for (link, is_egress) in [(&mut egress, true), (&mut ingress, false)] {
                let path = sd.link_pin(ifindex, is_egress);
                // A leftover of an interface index that was reused.
                let _ = std::fs::remove_file(&path);
                link.pin(&path).with_context(|| format!("pinning the {name} link at {}", path.display()))?;
            }
        }
        self.attached.insert(ifindex, Attachment { name: name.to_string(), egress, ingress });
        Ok(())
    }

    /// Detach from an interface (e.g. it disappeared, or is not wanted).
    pub fn detach(&mut self, ifindex: u32) {
        if let Some(mut a) = self.attached.remove(&ifindex) {
            if self.state.is_some() {
                for l in [&mut a.egress, &mut a.ingress] {
                    let _ = l.detach();
                    let _ = l.unpin();
                }
            }
        }
    }

    /// (ifindex, name) of every attachment.
    pub fn attached(&self) -> Vec<(u32, String)> {
        self.attached.iter().map(|(i, a)| (*i, a.name.clone())).collect()
    }

    /// Tell the programs whether tagged frames are counted at a vlan device
    /// (and so must be skipped on its parent).
    pub fn set_skip_tagged(&mut self, skip: bool) {
        if let Some(bss) = self.skel.maps.bss_data.as_deref_mut() {
            bss.skip_tagged = u32::from(skip);
        }
    }

    /// Tell the programs the kernel's ephemeral port range (the local ports
    /// of connections this host opens).
    pub fn set_ephemeral_ports(&mut self, lo: u16, hi: u16) {
        if let Some(bss) = self.skel.maps.bss_data.as_deref_mut() {
            bss.eph_lo = u32::from(lo);
            bss.eph_hi = u32::from(hi);
        }
    }

    /// The ring buffer of finished exchanges; `on_event` runs for each.
    pub fn ring_buffer<F>(&self, mut on_event: F) -> Result<libbpf_rs::RingBuffer<'static>>
    where
        F: FnMut(&types::exchange_event) + 'static,
    {
        let mut builder = libbpf_rs::RingBufferBuilder::new();
        builder
            .add(&self.skel.maps.events, move |data: &[u8]| {
                if let Some(ev) = event_from_record(data) {
                    on_event(&ev);
                }
                0
            })
            .context("registering the events ring buffer")?;
        builder.build().context("creating the events ring buffer")
    }

    /// Every peer the programs gave an index to: (address, index).
    pub fn peer_index(&self) -> Result<Vec<(SocketAddr, u32)>> {
        let map = &self.skel.maps.peer_ids;
        let mut out = Vec::new();
        for key in map.keys() {
            let Some(pk) = from_bytes::<types::peer_key>(&key) else { continue };
            let Some(v) = map.lookup(&key, MapFlags::ANY).context("reading peer_ids")? else {
                continue;
            };
            if let Some(idx) = from_bytes::<u32>(&v) {
                out.push((socket_addr(pk.addr, pk.port), idx));
            }
        }
        Ok(out)
    }

    /// Per-peer counters summed over CPUs, of the peers holding a slot.
    pub fn peer_counters(&self) -> Result<Vec<(SocketAddr, types::peer_counters)>> {
        self.slot_counters(&self.peer_index()?)
    }

    /// Exact status-code counters of the peers holding a slot.
    pub fn code_counters(&self) -> Result<Vec<(SocketAddr, u16, u64)>> {
        self.slot_codes(&self.peer_index()?)
    }

    /// The counters of the given slots, summed over CPUs.
    pub fn slot_counters(&self, slots: &[(SocketAddr, u32)]) -> Result<Vec<(SocketAddr, types::peer_counters)>> {
        let map = &self.skel.maps.peers;
        let mut out = Vec::new();
        for (addr, idx) in slots {
            if let Some(sum) = percpu_sum(map, &idx.to_ne_bytes(), "peers", add_peer_counters)? {
                out.push((*addr, sum));
            }
        }
        Ok(out)
    }

    /// Exact status-code counters of the given slots: (peer, code, count),
    /// one entry per pair (the common codes' array slots and the `codes`
    /// hash summed).
    pub fn slot_codes(&self, slots: &[(SocketAddr, u32)]) -> Result<Vec<(SocketAddr, u16, u64)>> {
        let by_idx: std::collections::HashMap<u32, SocketAddr> = slots.iter().map(|(a, i)| (*i, *a)).collect();
        let mut sums: BTreeMap<(SocketAddr, u16), u64> = BTreeMap::new();
        let common = &self.skel.maps.common_codes;
        for (addr, idx) in slots {
            let Some(per_cpu) =
                common.lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY).context("reading common_codes")?
            else {
                continue;
            };
            for cs in per_cpu.iter().filter_map(|b| from_bytes::<types::code_slots>(b)) {
                for (slot, n) in cs.n.iter().enumerate().filter(|(_, n)| **n > 0) {
                    *sums.entry((*addr, common_code(slot))).or_default() += n;
                }
            }
        }
        let map = &self.skel.maps.codes;
        for key in map.keys() {
            let Some(ck) = from_bytes::<types::code_key>(&key) else { continue };
            let Some(&addr) = by_idx.get(&ck.peer_idx) else { continue };
            let Some(n) = percpu_sum(map, &key, "codes", add_u64)? else { continue };
            *sums.entry((addr, ck.code)).or_default() += n;
        }
        Ok(sums.into_iter().map(|((a, c), n)| (a, c, n)).collect())
    }

    /// Take a peer's slot out of `peer_ids`: connections opened from now on
    /// no longer find it (its next request claims a slot again). False when
    /// it was not listed.
    pub fn unlist_peer(&self, addr: SocketAddr) -> bool {
        self.skel.maps.peer_ids.delete(bytes_of(&peer_key_of(addr))).is_ok()
    }

    /// Put an unlisted peer's slot back; false when the peer claimed another
    /// one meanwhile.
    pub fn relist_peer(&self, addr: SocketAddr, idx: u32) -> bool {
        self.skel.maps.peer_ids.update(bytes_of(&peer_key_of(addr)), &idx.to_ne_bytes(), MapFlags::NO_EXIST).is_ok()
    }

    /// Zero the counters of a slot that nothing refers to any more (not
    /// listed, no tracked connection) and hand it back to the programs.
    pub fn free_slot(&self, idx: u32) -> Result<()> {
        let key = idx.to_ne_bytes();
        let cpus = libbpf_rs::num_possible_cpus().context("counting possible CPUs")?;
        let zero = |size: usize| vec![vec![0u8; size]; cpus];
        self.skel
            .maps
            .peers
            .update_percpu(&key, &zero(size_of::<types::peer_counters>()), MapFlags::ANY)
            .context("clearing a peers slot")?;
        self.skel
            .maps
            .common_codes
            .update_percpu(&key, &zero(size_of::<types::code_slots>()), MapFlags::ANY)
            .context("clearing a common_codes slot")?;
        let codes = &self.skel.maps.codes;
        let stale: Vec<Vec<u8>> =
            codes.keys().filter(|k| from_bytes::<types::code_key>(k).is_some_and(|ck| ck.peer_idx == idx)).collect();
        for k in stale {
            // Gone already is fine: nothing else deletes them.
            let _ = codes.delete(&k);
        }
        self.skel.maps.free_peer_ids.update(&[], &key, MapFlags::ANY).context("handing a peer slot back")
    }

    /// Totals of the peers whose slot was taken back, and their codes.
    pub fn banked(&self) -> Result<PeerCounts> {
        let map = &self.skel.maps.banked;
        let mut peers = Vec::new();
        for key in map.keys() {
            let Some(pk) = from_bytes::<types::peer_key>(&key) else { continue };
            let Some(v) = map.lookup(&key, MapFlags::ANY).context("reading banked")? else { continue };
            if let Some(c) = from_bytes::<types::peer_counters>(&v) {
                peers.push((socket_addr(pk.addr, pk.port), c));
            }
        }
        let map = &self.skel.maps.banked_codes;
        let mut codes = Vec::new();
        for key in map.keys() {
            let Some(k) = from_bytes::<types::banked_code_key>(&key) else { continue };
            let Some(v) = map.lookup(&key, MapFlags::ANY).context("reading banked_codes")? else { continue };
            if let Some(n) = from_bytes::<u64>(&v) {
                codes.push((socket_addr(k.peer.addr, k.peer.port), k.code, n));
            }
        }
        Ok((peers, codes))
    }

    /// How many peers and codes the bank holds at most.
    pub fn bank_capacity(&self) -> (usize, usize) {
        let m = &self.skel.maps;
        (m.banked.max_entries() as usize, m.banked_codes.max_entries() as usize)
    }

    /// Set a peer's banked totals (what it counted before its slot went
    /// back, all slots it ever held summed).
    pub fn bank(&self, addr: SocketAddr, c: &types::peer_counters, codes: &[(u16, u64)]) -> Result<()> {
        let pk = peer_key_of(addr);
        for &(code, n) in codes {
            let k = types::banked_code_key { peer: pk, code, ..Default::default() };
            self.skel
                .maps
                .banked_codes
                .update(bytes_of(&k), &n.to_ne_bytes(), MapFlags::ANY)
                .context("banking a peer's codes")?;
        }
        self.skel.maps.banked.update(bytes_of(&pk), bytes_of(c), MapFlags::ANY).context("banking a peer")
    }

    pub fn stats(&self) -> Result<BpfStats> {
        let read = |idx: Stat| -> Result<u64> {
            Ok(percpu_sum(&self.skel.maps.stats, &idx.0.to_ne_bytes(), "stats", add_u64)?.unwrap_or_default())
        };
        Ok(BpfStats {
            events_dropped: read(Stat::STAT_EVENTS_DROPPED)?,
            conn_table_full: read(Stat::STAT_CONN_TABLE_FULL)?,
            peer_table_full: read(Stat::STAT_PEER_TABLE_FULL)?,
            parse_errors: read(Stat::STAT_PARSE_ERRORS)?,
            codes_full: read(Stat::STAT_CODES_FULL)?,
            retransmits: read(Stat::STAT_RETRANSMITS)?,
            opaque_conns: read(Stat::STAT_OPAQUE_CONNS)?,
        })
    }

    /// Connection counts of the peers whose connections carried no HTTP,
    /// summed over CPUs (only the peers the LRU map still holds).
    pub fn tcp_counters(&self) -> Result<Vec<(SocketAddr, types::tcp_counters)>> {
        let map = &self.skel.maps.tcp_peers;
        let mut out = Vec::new();
        for key in map.keys() {
            let Some(pk) = from_bytes::<types::peer_key>(&key) else { continue };
            if let Some(sum) = percpu_sum(map, &key, "tcp_peers", add_tcp_counters)? {
                out.push((socket_addr(pk.addr, pk.port), sum));
            }
        }
        Ok(out)
    }

    /// Every tracked connection.
    pub fn conns(&self) -> Result<Vec<ConnEntry>> {
        let map = &self.skel.maps.conns;
        let mut out = Vec::new();
        for key in map.keys() {
            let Some(k) = from_bytes::<types::conn_key>(&key) else { continue };
            // Gone between keys() and lookup: closed meanwhile.
            let Some(v) = map.lookup(&key, MapFlags::ANY).context("reading conns")? else {
                continue;
            };
            if let Some(state) = from_bytes::<types::conn_state>(&v) {
                out.push(ConnEntry { key: k, state });
            }
        }
        Ok(out)
    }

    /// Remove a connection; false when the programs removed it first.
    pub fn delete_conn(&self, entry: &ConnEntry) -> bool {
        if self.skel.maps.conns.delete(bytes_of(&entry.key)).is_err() {
            return false;
        }
        let slot = usize::from(entry.state.slot) % FILTER_SLOTS;
        // SAFETY: `tracked` points into the loaded object's .bss, which
        // libbpf keeps mmap'd as long as the skeleton (owned by self)
        // lives; slot is in bounds; the programs update these words with
        // atomic instructions too.
        let counter = unsafe { std::sync::atomic::AtomicU32::from_ptr(self.tracked.add(slot)) };
        // Mirrors conn_delete() in the programs: lower the filter after
        // our successful delete.
        let _ = counter.fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |n| {
            n.checked_sub(1)
        });
        true
    }

    /// Sum of the counting filter in front of `conns`: equals the number of
    /// tracked connections whenever no insert or delete is in flight.
    pub fn filter_total(&self) -> u64 {
        (0..FILTER_SLOTS)
            .map(|i| {
                // SAFETY: as in delete_conn: in-bounds words of the mmap'd
                // .bss, alive as long as self.
                let c = unsafe { std::sync::atomic::AtomicU32::from_ptr(self.tracked.add(i)) };
                u64::from(c.load(std::sync::atomic::Ordering::Relaxed))
            })
            .sum()
    }

    /// Run one program on a crafted Ethernet frame (BPF_PROG_TEST_RUN)
    /// `repeat` times; returns its return value and the kernel-measured
    /// average time per run. The frame goes nowhere.
    pub fn test_run(&self, egress: bool, frame: &[u8], repeat: u32) -> Result<(i32, std::time::Duration)> {
        let prog = if egress { &self.skel.progs.upstreamtop_egress } else { &self.skel.progs.upstreamtop_ingress };
        let input = libbpf_rs::ProgramInput { data_in: Some(frame), repeat: repeat.max(1), ..Default::default() };
        let out = prog.test_run(input).context("BPF_PROG_TEST_RUN")?;
        Ok((out.return_value as i32, out.duration))
    }
}

/// (link id, program id, still attached) of a pinned tcx link.
pub fn link_ids(path: &std::path::Path) -> Result<(u32, u32, bool)> {
    let link = Link::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut info = libbpf_sys::bpf_link_info::default();
    let mut len = size_of::<libbpf_sys::bpf_link_info>() as u32;
    // SAFETY: `info` is a bpf_link_info of `len` bytes the kernel fills; the
    // fd is the link's, open for the call.
    let rc = unsafe { libbpf_sys::bpf_link_get_info_by_fd(link.as_fd().as_raw_fd(), &mut info, &mut len) };
    if rc != 0 {
        bail!("querying {}: {}", path.display(), io::Error::from_raw_os_error(-rc));
    }
    // SAFETY: tcx is the union member of BPF_LINK_TYPE_TCX links (the only
    // kind we pin); a detached link reports ifindex 0.
    let ifindex = unsafe { info.__bindgen_anon_1.tcx.ifindex };
    Ok((info.id, info.prog_id, ifindex != 0))
}

/// Bytes written to the ring buffer and not consumed yet.
pub fn ring_pending(rb: &libbpf_rs::RingBuffer<'_>) -> usize {
    // SAFETY: rb is a live ring_buffer with exactly one ring (index 0,
    // added in Programs::ring_buffer); the ring pointer lives as long as rb.
    unsafe {
        let ring = libbpf_sys::ring_buffer__ring(rb.as_libbpf_object().as_ptr(), 0);
        if ring.is_null() {
            return 0;
        }
        usize::try_from(libbpf_sys::ring__avail_data_size(ring)).unwrap_or(usize::MAX)
    }
}

/// Length of a fixed-size array field, taken from the generated type so
/// FILTER_SLOTS stays defined once (in upstreamtop.h).
const fn array_len<T, const N: usize>(_: fn(&types::bss) -> &[T; N]) -> usize {
    N
}
const FILTER_SLOTS: usize = array_len(|b: &types::bss| &b.tracked);

fn log(msg: &str) {
    eprintln!("upstreamtop-probe: {msg}");
}

/// Point every state map of the opened object at its pin.
fn reuse_pinned(open: &mut skel::OpenUpstreamtopSkel<'_>, sd: &StateDir) -> Result<()> {
    for (name, map) in state_maps!(open.maps) {
        let path = sd.map_pin(name);
        let pinned = MapHandle::from_pinned_path(&path).with_context(|| format!("opening {}", path.display()))?;
        let info = libbpf_rs::MapInfo::new(pinned.as_fd()).with_context(|| format!("inspecting {}", path.display()))?;
        let want = (map.key_size(), map.value_size(), map.max_entries());
        let have = (info.info.key_size, info.info.value_size, info.info.max_entries);
        if want != have {
            bail!("{name}: pinned (key, value, entries) {have:?} differ from {want:?}");
        }
        map.reuse_fd(pinned.as_fd()).with_context(|| format!("reusing {}", path.display()))?;
    }
    Ok(())
}

/// libbpf maps an internal map (.bss) into our memory only when it created
/// the map; a reused one keeps pointing at the object's initial image.
/// Map the kernel's .bss over that image, at the same address, so the
/// skeleton's `bss_data` and the filter pointer see what the programs see.
fn remap_reused_bss(bss: &libbpf_rs::MapMut<'_>) -> Result<()> {
    let mut size: u64 = 0;
    // SAFETY: the map belongs to the loaded skeleton; libbpf returns its
    // mmap'd image (or NULL) and writes its size.
    let ptr = unsafe { libbpf_sys::bpf_map__initial_value(bss.as_libbpf_object().as_ptr(), &mut size) };
    if ptr.is_null() {
        bail!(".bss has no memory image to map the reused map over");
    }
    // SAFETY: sysconf has no memory effects.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    // As libbpf sizes an array map's mmap: 8-byte aligned values, whole pages.
    let len = usize::try_from(size).context(".bss size")?.div_ceil(8) * 8;
    let len = len.div_ceil(page) * page;
    // SAFETY: ptr..ptr+len is libbpf's own mapping of this map's image
    // (same size computation), replaced in place by a shared mapping of the
    // map; libbpf unmaps that range when the object is closed, as usual.
    let got = unsafe {
        libc::mmap(
            ptr,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED,
            bss.as_fd().as_raw_fd(),
            0,
        )
    };
    if got == libc::MAP_FAILED {
        bail!("mapping the reused .bss: {}", io::Error::last_os_error());
    }
    Ok(())
}

fn attach_tcx(prog: &libbpf_rs::ProgramMut<'_>, ifindex: u32) -> Result<Link> {
    let opts = libbpf_sys::bpf_tcx_opts { sz: size_of::<libbpf_sys::bpf_tcx_opts>() as _, ..Default::default() };
    let ifindex = i32::try_from(ifindex).context("ifindex out of range")?;
    // SAFETY: the program pointer comes from a loaded skeleton that outlives
    // this call, and `opts` is a properly sized bpf_tcx_opts.
    let ptr = unsafe { libbpf_sys::bpf_program__attach_tcx(prog.as_libbpf_object().as_ptr(), ifindex, &opts) };
    match NonNull::new(ptr) {
        // SAFETY: a non-NULL pointer from bpf_program__attach_tcx is a link
        // we own; Link frees (and detaches) it on drop.
        Some(p) => Ok(unsafe { Link::from_ptr(p) }),
        None => {
            let err = io::Error::last_os_error();
            let hint = match err.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => " (needs root or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)",
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
                    " (this kernel lacks tcx attachment, added in Linux 6.6)"
                }
                Some(libc::ENODEV) | Some(libc::ENXIO) => " (the interface disappeared)",
                _ => "",
            };
            Err(anyhow::anyhow!("bpf_program__attach_tcx: {err}{hint}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_code_slots_name_their_codes() {
        let codes: Vec<u16> = (0..types::code_slots::default().n.len()).map(common_code).collect();
        assert_eq!(&codes[..3], &[200, 201, 202]);
        assert_eq!(codes[10..12], [300, 301]);
        assert_eq!(codes[codes.len() - 1], 509);
        // The programs' slot: (class - 2) * 10 + code % 100.
        for (slot, c) in codes.iter().enumerate() {
            assert_eq!(usize::from((c / 100 - 2) * 10 + c % 100), slot);
        }
    }

    #[test]
    fn short_ring_records_read_as_zero_filled_events() {
        let mut ev = types::exchange_event { req_ts: 7, latency_ns: 9, status: 404, req_len: 4, ..Default::default() };
        ev.req[..4].copy_from_slice(b"GET ");
        let fixed = std::mem::offset_of!(types::exchange_event, req);
        let record = &bytes_of(&ev)[..fixed + 4];
        let got = event_from_record(record).expect("a record with the fixed fields");
        assert_eq!((got.req_ts, got.latency_ns, got.status, got.req_len), (7, 9, 404, 4));
        assert_eq!(&got.req[..4], b"GET ");
        assert!(got.req[4..].iter().all(|&b| b == 0));
        // A full-size record (older programs, or a 128-byte target).
        assert_eq!(event_from_record(bytes_of(&ev)).map(|e| e.req), Some(ev.req));
        assert!(event_from_record(&record[..fixed - 1]).is_none());
    }
}
