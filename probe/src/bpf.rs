//! The BPF side seen from userspace: load the skeleton, attach the two tcx
//! programs per interface, read the maps. All libbpf FFI lives here.

use std::collections::BTreeMap;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ptr::NonNull;

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{AsRawLibbpf, Link, MapCore, MapFlags, OpenObject};

mod skel {
    #![allow(clippy::all, non_camel_case_types, non_snake_case, dead_code)]
    include!(concat!(env!("OUT_DIR"), "/upstreamtop.skel.rs"));
}
pub use skel::types;
use skel::{UpstreamtopSkel, UpstreamtopSkelBuilder};

/// Connection phases, as in `enum conn_phase` of upstreamtop.h.
pub const PHASE_SYN_SENT: u32 = 1;
pub const PHASE_AWAIT_RESPONSE: u32 = 3;

/// Indexes of the `stats` map (`enum stat_index`).
const STAT_EVENTS_DROPPED: u32 = 0;
const STAT_CONN_TABLE_FULL: u32 = 1;
const STAT_PEER_TABLE_FULL: u32 = 2;
const STAT_PARSE_ERRORS: u32 = 3;
const STAT_CODES_FULL: u32 = 4;

/// What the BPF programs are told before load.
#[derive(Debug, Clone)]
pub struct BpfConfig {
    pub ignore_ports: Vec<u16>,
    /// `--only` networks, as (IPv6 or v4-mapped address, prefix over 128 bits).
    pub only: Vec<(Ipv6Addr, u8)>,
    pub max_conns: u32,
    pub max_peers: u32,
    /// Exact-code counters: (peer, code) pairs.
    pub max_codes: u32,
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
}

/// One tracked connection as read from the `conns` map.
#[derive(Debug, Clone, Copy)]
pub struct ConnEntry {
    pub key: types::conn_key,
    pub state: types::conn_state,
}

struct Attachment {
    name: String,
    // Dropping the links detaches the programs.
    _egress: Link,
    _ingress: Link,
}

/// The loaded programs and their attachments.
pub struct Programs {
    skel: UpstreamtopSkel<'static>,
    attached: BTreeMap<u32, Attachment>,
    /// `tracked[0]` in the programs' mmap'd .bss (the counting filter).
    tracked: *mut u32,
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

/// A 16-byte map address (IPv4 as v4-mapped) and a port as a socket address.
pub fn socket_addr(addr: [u8; 16], port: u16) -> SocketAddr {
    let v6 = Ipv6Addr::from(addr);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, port)
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
        format!(
            "{msg}: the probe needs root or the capabilities CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"
        )
    } else if msg.contains("os error 13)") {
        format!("{msg}: the kernel's verifier rejected the programs (log above)")
    } else {
        msg
    }
}

impl Programs {
    /// Open, configure and load the BPF object (verifier runs here).
    pub fn load(cfg: &BpfConfig) -> Result<Self> {
        if cfg.ignore_ports.len() > 8 {
            bail!("at most 8 --ignore-port values are supported (got {})", cfg.ignore_ports.len());
        }
        if cfg.only.len() > 8 {
            bail!("at most 8 --only networks are supported (got {})", cfg.only.len());
        }
        // The skeleton borrows its object storage for its whole life; the
        // programs live as long as the process (or test), so leak it.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = UpstreamtopSkelBuilder::default()
            .open(storage)
            .context("opening the BPF object")?;

        open.maps.conns.set_max_entries(cfg.max_conns).context("sizing the conns map")?;
        open.maps.peers.set_max_entries(cfg.max_peers).context("sizing the peers map")?;
        open.maps.peer_ids.set_max_entries(cfg.max_peers).context("sizing the peer_ids map")?;
        open.maps.codes.set_max_entries(cfg.max_codes).context("sizing the codes map")?;
        open.maps
            .events
            .set_max_entries(cfg.ring_bytes.next_power_of_two().max(4096))
            .context("sizing the events ring buffer")?;
        let rodata = open.maps.rodata_data.as_deref_mut().context("BPF object lacks .rodata")?;
        for (i, p) in cfg.ignore_ports.iter().enumerate() {
            rodata.ignore_ports[i] = *p;
        }
        rodata.n_ignore_ports = cfg.ignore_ports.len() as u32;
        for (i, (addr, prefix)) in cfg.only.iter().enumerate() {
            rodata.only_cidrs[i] = types::cidr { addr: addr.octets(), prefix_len: u32::from(*prefix) };
        }
        rodata.n_only_cidrs = cfg.only.len() as u32;
        rodata.max_peers = cfg.max_peers;
        // tcx programs are attached per interface below, never by libbpf.
        open.progs.upstreamtop_egress.set_autoattach(false);
        open.progs.upstreamtop_ingress.set_autoattach(false);

        let mut skel = open.load().map_err(|e| {
            anyhow::anyhow!("loading the BPF programs failed: {}", explain_load_error(&e))
        })?;
        let bss = skel.maps.bss_data.as_deref_mut().context("BPF object lacks .bss")?;
        let tracked = bss.tracked.as_mut_ptr();
        Ok(Programs { skel, attached: BTreeMap::new(), tracked })
    }

    /// Attach both programs to `ifindex` with tcx.
    pub fn attach(&mut self, name: &str, ifindex: u32) -> Result<()> {
        if self.attached.contains_key(&ifindex) {
            return Ok(());
        }
        let egress = attach_tcx(&self.skel.progs.upstreamtop_egress, ifindex)
            .with_context(|| format!("attaching tcx/egress to {name}"))?;
        let ingress = attach_tcx(&self.skel.progs.upstreamtop_ingress, ifindex)
            .with_context(|| format!("attaching tcx/ingress to {name}"))?;
        self.attached
            .insert(ifindex, Attachment { name: name.to_string(), _egress: egress, _ingress: ingress });
        Ok(())
    }

    /// Detach from an interface (e.g. it disappeared).
    pub fn detach(&mut self, ifindex: u32) {
        self.attached.remove(&ifindex);
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
                if let Some(ev) = from_bytes::<types::exchange_event>(data) {
                    on_event(&ev);
                }
                0
            })
            .context("registering the events ring buffer")?;
        builder.build().context("creating the events ring buffer")
    }

    /// Every peer the programs gave an index to: (address, index).
    fn peer_index(&self) -> Result<Vec<(SocketAddr, u32)>> {
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

    /// Per-peer counters summed over CPUs.
    pub fn peer_counters(&self) -> Result<Vec<(SocketAddr, types::peer_counters)>> {
        let map = &self.skel.maps.peers;
        let mut out = Vec::new();
        for (addr, idx) in self.peer_index()? {
            let Some(per_cpu) =
                map.lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY).context("reading peers")?
            else {
                continue;
            };
            let mut sum = types::peer_counters::default();
            for v in per_cpu.iter().filter_map(|b| from_bytes::<types::peer_counters>(b)) {
                sum.requests += v.requests;
                for i in 0..5 {
                    sum.responses[i] += v.responses[i];
                }
                sum.no_response += v.no_response;
                sum.sent_bytes += v.sent_bytes;
                sum.received_bytes += v.received_bytes;
                sum.conn_opened += v.conn_opened;
                sum.conn_closed += v.conn_closed;
                sum.conn_failed += v.conn_failed;
                sum.conn_reset += v.conn_reset;
                sum.codes_other += v.codes_other;
            }
            out.push((addr, sum));
        }
        Ok(out)
    }

    /// Exact status-code counters: (peer, code, count).
    pub fn code_counters(&self) -> Result<Vec<(SocketAddr, u16, u64)>> {
        let by_idx: std::collections::HashMap<u32, SocketAddr> =
            self.peer_index()?.into_iter().map(|(a, i)| (i, a)).collect();
        let map = &self.skel.maps.codes;
        let mut out = Vec::new();
        for key in map.keys() {
            let Some(ck) = from_bytes::<types::code_key>(&key) else { continue };
            let Some(&addr) = by_idx.get(&ck.peer_idx) else { continue };
            let Some(per_cpu) = map.lookup_percpu(&key, MapFlags::ANY).context("reading codes")?
            else {
                continue;
            };
            let n: u64 = per_cpu.iter().filter_map(|b| from_bytes::<u64>(b)).sum();
            out.push((addr, ck.code, n));
        }
        Ok(out)
    }

    pub fn stats(&self) -> Result<BpfStats> {
        let read = |idx: u32| -> Result<u64> {
            let v = self
                .skel
                .maps
                .stats
                .lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY)
                .context("reading stats")?
                .unwrap_or_default();
            Ok(v.iter().filter_map(|b| from_bytes::<u64>(b)).sum())
        };
        Ok(BpfStats {
            events_dropped: read(STAT_EVENTS_DROPPED)?,
            conn_table_full: read(STAT_CONN_TABLE_FULL)?,
            peer_table_full: read(STAT_PEER_TABLE_FULL)?,
            parse_errors: read(STAT_PARSE_ERRORS)?,
            codes_full: read(STAT_CODES_FULL)?,
        })
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
        let _ = counter.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |n| n.checked_sub(1),
        );
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
        let prog = if egress {
            &self.skel.progs.upstreamtop_egress
        } else {
            &self.skel.progs.upstreamtop_ingress
        };
        let input = libbpf_rs::ProgramInput {
            data_in: Some(frame),
            repeat: repeat.max(1),
            ..Default::default()
        };
        let out = prog.test_run(input).context("BPF_PROG_TEST_RUN")?;
        Ok((out.return_value as i32, out.duration))
    }

    /// (name, run_time_ns, run_cnt) per program; counts only grow while
    /// `kernel.bpf_stats_enabled=1`.
    pub fn run_stats(&self) -> Result<Vec<(String, u64, u64)>> {
        use std::os::fd::AsFd;
        let mut out = Vec::new();
        for (name, prog) in [
            ("tcx/egress", &self.skel.progs.upstreamtop_egress),
            ("tcx/ingress", &self.skel.progs.upstreamtop_ingress),
        ] {
            let mut info = libbpf_sys::bpf_prog_info::default();
            let mut len = size_of::<libbpf_sys::bpf_prog_info>() as u32;
            use std::os::fd::AsRawFd;
            // SAFETY: `info` is a bpf_prog_info of `len` bytes that the
            // kernel fills; the fd belongs to the loaded program.
            let rc = unsafe {
                libbpf_sys::bpf_prog_get_info_by_fd(
                    prog.as_fd().as_raw_fd(),
                    &mut info,
                    &mut len,
                )
            };
            if rc != 0 {
                bail!("querying {name} info: {}", io::Error::from_raw_os_error(-rc));
            }
            out.push((name.to_string(), info.run_time_ns, info.run_cnt));
        }
        Ok(out)
    }
}

/// Length of a fixed-size array field, taken from the generated type so
/// FILTER_SLOTS stays defined once (in upstreamtop.h).
const fn array_len<T, const N: usize>(_: fn(&types::bss) -> &[T; N]) -> usize {
    N
}
const FILTER_SLOTS: usize = array_len(|b: &types::bss| &b.tracked);

fn attach_tcx(prog: &libbpf_rs::ProgramMut<'_>, ifindex: u32) -> Result<Link> {
    let opts = libbpf_sys::bpf_tcx_opts {
        sz: size_of::<libbpf_sys::bpf_tcx_opts>() as _,
        ..Default::default()
    };
    let ifindex = i32::try_from(ifindex).context("ifindex out of range")?;
    // SAFETY: the program pointer comes from a loaded skeleton that outlives
    // this call, and `opts` is a properly sized bpf_tcx_opts.
    let ptr = unsafe {
        libbpf_sys::bpf_program__attach_tcx(prog.as_libbpf_object().as_ptr(), ifindex, &opts)
    };
    match NonNull::new(ptr) {
        // SAFETY: a non-NULL pointer from bpf_program__attach_tcx is a link
        // we own; Link frees (and detaches) it on drop.
        Some(p) => Ok(unsafe { Link::from_ptr(p) }),
        None => {
            let err = io::Error::last_os_error();
            let hint = match err.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    " (needs root or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"
                }
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
