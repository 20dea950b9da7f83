//! An impaired link for the netns/veth topology: loss, duplication,
//! reordering, delay and small segments, without netem (this kernel has no
//! `sch_netem`, and no loadable modules).
//!
//! ```text
//!  root namespace              middle namespace                backend namespace
//!  nginx, probe (tcx)    ┌──────────────────────────────┐
//!  host_if ══ veth ══ a ─┤ AF_PACKET bridge (2 threads) ├─ b ══ veth ══ ns_if
//!  10.200.n.1/24         │ loss · duplicate · reorder   │       10.200.n.2/24
//!  fd00:200:n::1/64      └──────────────────────────────┘       fd00:200:n::2/64
//! ```
//!
//! The middle namespace has no addresses (IPv6 off): it is a pure layer-2
//! wire. One thread per direction reads every frame arriving on one end
//! (an `AF_PACKET` socket with `PACKET_IGNORE_OUTGOING`, so it never reads
//! back what the bridge itself sent) and writes it to the other end, after
//! the direction's [`Impairment`] decided, with a seeded PRNG, whether to
//! drop it, send it twice, or hold it back a few ms so later frames
//! overtake it. Only TCP frames are impaired: ARP and neighbour discovery
//! pass untouched, so a stall is always TCP's own recovery, never a lost
//! neighbour entry (a 1 s ARP retry would dwarf everything else).
//!
//! For frames to stay single MSS-sized segments end to end, segmentation
//! and receive offloads (TSO, GSO, GRO) and TX checksum offload are off on
//! all four veth ends: a veth with TX checksum offload hands the peer
//! frames whose checksum is not filled in yet, which the bridge would
//! forward as corrupt. With `mss` set, routes with `advmss` on both sides
//! make both peers advertise that MSS, so request and response heads span
//! several segments.
//!
//! Backends run inside the backend namespace exactly as with
//! [`Netns`] ([`ImpairedNetns::backend`], [`ImpairedNetns::run`]). Drop
//! stops the bridge and deletes both namespaces, also when a test panics.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::backend::{Backend, BackendBuilder};
use crate::netns::{self, ip, ip_quiet, Netns};
use crate::rng::Rng;

/// Linux refuses smaller MSS values (`TCP_MIN_MSS`).
pub const MIN_MSS: u16 = 88;
/// How long a bridge thread sleeps at most before it looks at the stop flag.
const TICK: Duration = Duration::from_millis(10);
/// Frames read per wake-up before due frames are sent again.
const BATCH: usize = 256;
/// Socket buffers: large enough that the bridge itself drops nothing under
/// a burst (whatever it does drop is counted in `socket_drops`).
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// What one direction of the link does to TCP frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Probability that a frame is dropped.
    pub loss: f64,
    /// Probability that a (not dropped) frame is sent twice in a row.
    pub duplicate: f64,
    /// Probability that a frame is held back (and so overtaken by later
    /// frames).
    pub reorder: f64,
    /// How long a held frame waits: uniform in `[reorder_delay / 2,
    /// reorder_delay]`, so held frames also overtake each other.
    pub reorder_delay: Duration,
    /// Added to every frame (a longer wire); keeps order.
    pub delay: Duration,
}

impl Impairment {
    /// A clean wire.
    pub const NONE: Impairment =
        Impairment { loss: 0.0, duplicate: 0.0, reorder: 0.0, reorder_delay: Duration::ZERO, delay: Duration::ZERO };

    pub fn loss(mut self, p: f64) -> Self {
        self.loss = p;
        self
    }

    pub fn duplicate(mut self, p: f64) -> Self {
        self.duplicate = p;
        self
    }

    /// Hold back a fraction `p` of frames for up to `delay`.
    pub fn reorder(mut self, p: f64, delay: Duration) -> Self {
        self.reorder = p;
        self.reorder_delay = delay;
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    fn validate(&self) -> Result<()> {
        for (name, p) in [("loss", self.loss), ("duplicate", self.duplicate), ("reorder", self.reorder)] {
            if !(0.0..=1.0).contains(&p) {
                bail!("{name} probability {p} is not in [0, 1]");
            }
        }
        Ok(())
    }
}

impl Default for Impairment {
    fn default() -> Self {
        Self::NONE
    }
}

/// The whole link: one [`Impairment`] per direction, the PRNG seed, the MSS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImpairConfig {
    /// Seeds both directions' PRNGs (each its own stream).
    pub seed: u64,
    /// Frames from the host (nginx) to the backends: requests, ACKs.
    pub to_backend: Impairment,
    /// Frames from the backends to the host: responses, ACKs.
    pub to_host: Impairment,
    /// MSS both sides advertise (route `advmss`), at least [`MIN_MSS`];
    /// `None` leaves the default (1460 on IPv4).
    pub mss: Option<u16>,
}

impl ImpairConfig {
    /// The same impairment both ways.
    pub fn both(seed: u64, impairment: Impairment) -> Self {
        ImpairConfig { seed, to_backend: impairment, to_host: impairment, mss: None }
    }

    pub fn mss(mut self, mss: u16) -> Self {
        self.mss = Some(mss);
        self
    }

    fn validate(&self) -> Result<()> {
        self.to_backend.validate().context("to_backend")?;
        self.to_host.validate().context("to_host")?;
        if let Some(mss) = self.mss {
            if !(MIN_MSS..=1460).contains(&mss) {
                bail!("mss {mss} is not in [{MIN_MSS}, 1460]");
            }
        }
        Ok(())
    }
}

/// A direction of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToBackend,
    ToHost,
}

/// What the bridge did in one direction, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames read from the sending side.
    pub frames: u64,
    /// Of those, TCP frames (the only ones impaired).
    pub tcp_frames: u64,
    /// Frames written to the receiving side (duplicates included).
    pub sent: u64,
    pub dropped: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Frames held back for reordering.
    pub held: u64,
    /// Frames that arrived on the far side after a frame sent later than
    /// them: real out-of-order arrivals (a held frame nothing overtook does
    /// not count).
    pub reordered: u64,
    /// The largest frame seen, bytes (Ethernet header included): at most
    /// 1514 when the offloads are really off.
    pub largest_frame: u64,
    /// Writes that failed (e.g. a frame larger than the MTU).
    pub send_errors: u64,
    /// Frames the kernel dropped because the bridge's socket was full.
    pub socket_drops: u64,
}

/// Both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeStats {
    pub to_backend: LinkStats,
    pub to_host: LinkStats,
}

/// TCP counters of a network namespace (`/proc/net/snmp`, `netstat`): the
/// evidence that an impairment made TCP work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// `Tcp: RetransSegs`: segments sent again.
    pub retrans_segs: u64,
    /// `TcpExt: TCPTimeouts`: retransmission timer expiries.
    pub timeouts: u64,
    /// `TcpExt: TCPOFOQueue`: segments that arrived out of order.
    pub ofo_queue: u64,
    /// `TcpExt: TCPDSACKRecv`: the peer reported duplicate data.
    pub dsack_recv: u64,
}

impl TcpCounters {
    /// Counters of the calling thread's network namespace.
    pub fn read() -> Result<TcpCounters> {
        // thread-self, not self: /proc/self/net is the namespace of the
        // process' main thread, not of a thread that setns()ed.
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").context("read /proc/thread-self/net/snmp")?;
        let netstat =
            std::fs::read_to_string("/proc/thread-self/net/netstat").context("read /proc/thread-self/net/netstat")?;
        let get = |text: &str, group: &str, name: &str| -> Result<u64> {
            proc_net_field(text, group, name).with_context(|| format!("no {group}: {name} in /proc/net"))
        };
        Ok(TcpCounters {
            retrans_segs: get(&snmp, "Tcp", "RetransSegs")?,
            timeouts: get(&netstat, "TcpExt", "TCPTimeouts")?,
            ofo_queue: get(&netstat, "TcpExt", "TCPOFOQueue")?,
            dsack_recv: get(&netstat, "TcpExt", "TCPDSACKRecv")?,
        })
    }

    /// What happened between `before` and `self`.
    pub fn since(&self, before: &TcpCounters) -> TcpCounters {
        TcpCounters {
            retrans_segs: self.retrans_segs.saturating_sub(before.retrans_segs),
            timeouts: self.timeouts.saturating_sub(before.timeouts),
            ofo_queue: self.ofo_queue.saturating_sub(before.ofo_queue),
            dsack_recv: self.dsack_recv.saturating_sub(before.dsack_recv),
        }
    }
}

/// A value from `/proc/net/{snmp,netstat}`: pairs of lines `Group: names`
/// and `Group: values`.
fn proc_net_field(text: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let i = names.split_whitespace().position(|n| n == name);
        if let Some(i) = i {
            return values.split_whitespace().nth(i)?.parse().ok();
        }
    }
    None
}

/// A backend namespace behind an impaired link (see the module docs).
pub struct ImpairedNetns {
    netns: Netns,
    middle: String,
    bridge: Option<Bridge>,
    config: ImpairConfig,
}

impl ImpairedNetns {
    /// Build the three-namespace topology, start the bridge. Needs root.
    pub fn create(config: ImpairConfig) -> Result<ImpairedNetns> {
        config.validate()?;
        let mut middle = None;
        let created = Netns::create_linked(|ns| {
            let name = format!("{}-m", ns.name());
            middle = Some(name.clone());
            build_link(ns, &name)
        });
        let netns = match created {
            Ok(netns) => netns,
            Err(e) => {
                // The backend namespace and the host end are gone with the
                // Netns; the (now empty) middle namespace is ours to delete.
                if let Some(middle) = middle {
                    let _ = ip_quiet(&["netns", "del", &middle]);
                }
                return Err(e);
            }
        };
        let middle = middle.context("link closure did not run")?;
        let mut impaired = ImpairedNetns { netns, middle, bridge: None, config };
        // From here Drop cleans up.
        if let Some(mss) = config.mss {
            impaired.set_mss(mss)?;
        }
        impaired.bridge = Some(Bridge::start(&impaired.middle, &impaired.netns, config)?);
        Ok(impaired)
    }

    /// Routes to the other side's addresses with `advmss`, on both sides:
    /// each peer advertises `mss` in its SYN, so the other sends segments
    /// of at most that much (minus TCP options).
    fn set_mss(&self, mss: u16) -> Result<()> {
        let mss = mss.to_string();
        let (h, i, n) = (self.host_if(), self.ns_if(), self.name());
        let ns_v4 = format!("{}/32", self.ns_v4());
        let ns_v6 = format!("{}/128", self.ns_v6());
        let host_v4 = format!("{}/32", self.host_v4());
        let host_v6 = format!("{}/128", self.host_v6());
        ip(&["route", "add", &ns_v4, "dev", h, "advmss", &mss])?;
        ip(&["-6", "route", "add", &ns_v6, "dev", h, "advmss", &mss])?;
        ip(&["-n", n, "route", "add", &host_v4, "dev", i, "advmss", &mss])?;
        ip(&["-n", n, "-6", "route", "add", &host_v6, "dev", i, "advmss", &mss])?;
        Ok(())
    }

    /// The backend namespace's name.
    pub fn name(&self) -> &str {
        self.netns.name()
    }

    /// The middle (bridge) namespace's name.
    pub fn middle_name(&self) -> &str {
        &self.middle
    }

    /// The host end (root namespace; where the probe attaches).
    pub fn host_if(&self) -> &str {
        self.netns.host_if()
    }

    /// The backend namespace's interface.
    pub fn ns_if(&self) -> &str {
        self.netns.ns_if()
    }

    pub fn host_v4(&self) -> Ipv4Addr {
        self.netns.host_v4()
    }

    /// The address inside the backend namespace (bind backends here).
    pub fn ns_v4(&self) -> Ipv4Addr {
        self.netns.ns_v4()
    }

    pub fn host_v6(&self) -> Ipv6Addr {
        self.netns.host_v6()
    }

    pub fn ns_v6(&self) -> Ipv6Addr {
        self.netns.ns_v6()
    }

    /// The backend namespace as a plain [`Netns`].
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn config(&self) -> ImpairConfig {
        self.config
    }

    /// Run `f` on a new thread inside the backend namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        self.netns.run(f)
    }

    /// Start a backend inside the backend namespace on `ip:port` (port 0
    /// picks one).
    pub fn backend(&self, ip: IpAddr, port: u16, builder: BackendBuilder) -> Result<Backend> {
        self.run(move || builder.start(SocketAddr::new(ip, port)))?
    }

    /// A command run inside the backend namespace.
    pub fn command(&self, program: &str) -> Command {
        self.netns.command(program)
    }

    /// What the bridge did so far.
    pub fn stats(&self) -> BridgeStats {
        self.bridge.as_ref().map(Bridge::stats).unwrap_or_default()
    }

    /// Change one direction's impairment from now on (e.g. a clean warm-up,
    /// then loss).
    pub fn set_impairment(&self, direction: Direction, impairment: Impairment) -> Result<()> {
        impairment.validate()?;
        if let Some(bridge) = &self.bridge {
            let side = match direction {
                Direction::ToBackend => &bridge.to_backend,
                Direction::ToHost => &bridge.to_host,
            };
            *side.impairment.lock().expect("impairment lock") = impairment;
        }
        Ok(())
    }

    /// TCP counters of the backend namespace (only the backends' sockets
    /// live there, so these are exactly theirs).
    pub fn ns_tcp_counters(&self) -> Result<TcpCounters> {
        self.run(TcpCounters::read)?
    }
}

impl Drop for ImpairedNetns {
    fn drop(&mut self) {
        // Stop the threads and close the sockets first: a socket keeps its
        // namespace alive.
        if let Some(mut bridge) = self.bridge.take() {
            bridge.stop();
        }
        let _ = ip_quiet(&["netns", "del", &self.middle]);
        // `self.netns` drops next: the host end and the backend namespace.
    }
}

/// The link [`Netns::create_linked`] asks for: host_if ═ a | bridge | b ═
/// ns_if, with a and b in the middle namespace `middle`.
fn build_link(ns: &Netns, middle: &str) -> Result<()> {
    let (h, i, n) = (ns.host_if(), ns.ns_if(), ns.name());
    let (a, b) = (ns.if_name('a'), ns.if_name('b'));
    ip(&["netns", "add", middle])?;
    // No addresses, no IPv6 link-local chatter: the middle is only a wire.
    netns::run_in(middle, || -> Result<()> {
        for path in ["/proc/sys/net/ipv6/conf/all/disable_ipv6", "/proc/sys/net/ipv6/conf/default/disable_ipv6"] {
            // Net sysctls belong to the namespace of the thread that opens them.
            std::fs::write(path, "1").with_context(|| format!("write {path}"))?;
        }
        Ok(())
    })??;
    ip(&["link", "add", h, "type", "veth", "peer", "name", &a, "netns", middle])?;
    ip(&["-n", middle, "link", "add", &b, "type", "veth", "peer", "name", i, "netns", n])?;
    disable_offloads(h)?;
    netns::run_in(middle, || -> Result<()> {
        disable_offloads(&a)?;
        disable_offloads(&b)
    })??;
    netns::run_in(n, || disable_offloads(i))??;
    for end in [&a, &b] {
        // A bridge port takes every frame, whatever its destination MAC.
        ip(&["-n", middle, "link", "set", end, "promisc", "on", "up"])?;
    }
    Ok(())
}

/// `struct ethtool_value` of the legacy `SIOCETHTOOL` get/set commands.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

// From <linux/ethtool.h>: (get, set, name) of each per-feature command.
const ETHTOOL_FEATURES: [(u32, u32, &str); 5] =
    [(0x2b, 0x2c, "gro"), (0x23, 0x24, "gso"), (0x1e, 0x1f, "tso"), (0x18, 0x19, "sg"), (0x16, 0x17, "tx-checksum")];

/// `ethtool -K <ifname> gro off gso off tso off sg off tx off`, through the
/// ioctl (no ethtool binary needed), in the calling thread's namespace; then
/// reads every feature back, so a kernel that ignored a request is an error
/// here rather than a bridge forwarding 64 KB frames later.
fn disable_offloads(ifname: &str) -> Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for SIOCETHTOOL");
    }
    // SAFETY: fd is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let ethtool = |cmd: u32, data: u32| -> std::io::Result<u32> {
        let mut value = EthtoolValue { cmd, data };
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(ifname.bytes().take(libc::IFNAMSIZ - 1)) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        // SAFETY: SIOCETHTOOL reads/writes the ethtool_value ifr_data
        // points to, which lives until after the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(value.data)
    };
    for &(_, set, name) in &ETHTOOL_FEATURES {
        ethtool(set, 0).with_context(|| format!("ethtool -K {ifname} {name} off"))?;
    }
    for &(get, _, name) in &ETHTOOL_FEATURES {
        if ethtool(get, 0).with_context(|| format!("ethtool -k {ifname} ({name})"))? != 0 {
            bail!("{ifname}: {name} is still on after turning it off");
        }
    }
    Ok(())
}

/// Counters one direction's thread updates and [`Bridge::stats`] reads.
#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    tcp_frames: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    held: AtomicU64,
    reordered: AtomicU64,
    largest_frame: AtomicU64,
    send_errors: AtomicU64,
    socket_drops: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> LinkStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LinkStats {
            frames: get(&self.frames),
            tcp_frames: get(&self.tcp_frames),
            sent: get(&self.sent),
            dropped: get(&self.dropped),
            duplicated: get(&self.duplicated),
            held: get(&self.held),
            reordered: get(&self.reordered),
            largest_frame: get(&self.largest_frame),
            send_errors: get(&self.send_errors),
            socket_drops: get(&self.socket_drops),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One direction: its settings, counters and thread.
struct Side {
    impairment: Arc<Mutex<Impairment>>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

/// The two forwarding threads of the middle namespace.
struct Bridge {
    stop: Arc<AtomicBool>,
    to_backend: Side,
    to_host: Side,
}

impl Bridge {
    fn start(middle: &str, ns: &Netns, config: ImpairConfig) -> Result<Bridge> {
        let (a, b) = (ns.if_name('a'), ns.if_name('b'));
        // Sockets belong to the namespace they are created in: open them
        // there; the threads that use them can live anywhere.
        let (sock_a, sock_b) =
            netns::run_in(middle, || -> Result<(OwnedFd, OwnedFd)> { Ok((packet_socket(&a)?, packet_socket(&b)?)) })??;
        let (sock_a, sock_b) = (Arc::new(sock_a), Arc::new(sock_b));
        let stop = Arc::new(AtomicBool::new(false));
        let mut bridge = Bridge {
            stop: Arc::clone(&stop),
            to_backend: Side::new(config.to_backend),
            to_host: Side::new(config.to_host),
        };
        // Independent PRNG streams per direction from one seed. On an error
        // Drop stops a thread already started.
        let seed_to_host = config.seed ^ 0x5bd1_e995_9e37_79b9;
        bridge.to_backend.thread = Some(bridge.to_backend.spawn("to-backend", &sock_a, &sock_b, config.seed, &stop)?);
        bridge.to_host.thread = Some(bridge.to_host.spawn("to-host", &sock_b, &sock_a, seed_to_host, &stop)?);
        Ok(bridge)
    }

    fn stats(&self) -> BridgeStats {
        BridgeStats { to_backend: self.to_backend.counters.snapshot(), to_host: self.to_host.counters.snapshot() }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for side in [&mut self.to_backend, &mut self.to_host] {
            if let Some(thread) = side.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Side {
    fn new(impairment: Impairment) -> Side {
        Side { impairment: Arc::new(Mutex::new(impairment)), counters: Arc::new(Counters::default()), thread: None }
    }

    /// Start the thread forwarding from `rx` to `tx` under this side's
    /// impairment.
    fn spawn(
        &self,
        label: &str,
        rx: &Arc<OwnedFd>,
        tx: &Arc<OwnedFd>,
        seed: u64,
        stop: &Arc<AtomicBool>,
    ) -> Result<JoinHandle<()>> {
        let mut forwarder = Forwarder {
            rx: Arc::clone(rx),
            tx: Arc::clone(tx),
            impairment: Arc::clone(&self.impairment),
            counters: Arc::clone(&self.counters),
            stop: Arc::clone(stop),
            rng: Rng::seeded(seed),
            queue: BinaryHeap::new(),
            next_seq: 0,
            rx_seq: 0,
            max_sent_rx_seq: None,
        };
        std::thread::Builder::new()
            .name(format!("impair {label}"))
            .spawn(move || forwarder.run())
            .with_context(|| format!("spawn bridge thread {label}"))
    }
}

/// An `AF_PACKET` socket bound to `ifname` (in the calling thread's
/// namespace) that reads every frame arriving there but none leaving.
fn packet_socket(ifname: &str) -> Result<OwnedFd> {
    let name = CString::new(ifname).context("interface name")?;
    // SAFETY: name is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("if_nametoindex {ifname}"));
    }
    // Protocol 0: the socket receives nothing until bind() names the
    // interface, so no frame of another interface slips in first.
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: fd is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let fd = sock.as_raw_fd();
    // Without this the bridge would read back every frame it writes.
    setsockopt_int(fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1).context("PACKET_IGNORE_OUTGOING")?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, SOCKET_BUFFER).context("SO_RCVBUFFORCE")?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SOCKET_BUFFER).context("SO_SNDBUFFORCE")?;
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: addr is a valid sockaddr_ll and the length matches it.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("bind AF_PACKET to {ifname}"));
    }
    Ok(sock)
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
    // SAFETY: value is a c_int that outlives the call; the length matches.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A frame waiting for its send time.
struct Pending {
    due: Instant,
    /// Tie-break: frames due at the same instant go out in arrival order.
    seq: u64,
    /// Arrival number of the original frame (a duplicate shares it).
    rx_seq: u64,
    frame: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// One direction's forwarding loop.
struct Forwarder {
    rx: Arc<OwnedFd>,
    tx: Arc<OwnedFd>,
    impairment: Arc<Mutex<Impairment>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    rng: Rng,
    /// Min-heap by (due, seq).
    queue: BinaryHeap<Reverse<Pending>>,
    next_seq: u64,
    rx_seq: u64,
    max_sent_rx_seq: Option<u64>,
}

impl Forwarder {
    fn run(&mut self) {
        // Large enough for any frame; a bigger one (offloads on after all)
        // is cut, counted by its real size, and fails to send.
        let mut buf = vec![0u8; 65_536 + 1024];
        let mut last_stats = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            self.send_due(Instant::now());
            let wait = match self.queue.peek() {
                Some(Reverse(next)) => next.due.saturating_duration_since(Instant::now()).min(TICK),
                None => TICK,
            };
            if self.wait_readable(wait) {
                let impairment = *self.impairment.lock().expect("impairment lock");
                for _ in 0..BATCH {
                    // SAFETY: buf is valid for writes of buf.len() bytes.
                    let n = unsafe {
                        libc::recv(
                            self.rx.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                        )
                    };
                    if n <= 0 {
                        break; // EAGAIN: drained (errors: tried again next round)
                    }
                    let len = n as usize;
                    self.arrived(&buf[..len.min(buf.len())], len, &impairment);
                }
            }
            if last_stats.elapsed() >= Duration::from_millis(100) {
                self.add_socket_drops();
                last_stats = Instant::now();
            }
        }
        self.add_socket_drops();
    }

    /// ppoll for input, at most `wait` (sub-millisecond precision: reorder
    /// delays are a few ms).
    fn wait_readable(&self, wait: Duration) -> bool {
        let mut pfd = libc::pollfd { fd: self.rx.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ts =
            libc::timespec { tv_sec: wait.as_secs() as libc::time_t, tv_nsec: libc::c_long::from(wait.subsec_nanos()) };
        // SAFETY: pfd and ts are valid for the duration of the call; no
        // signal mask is passed.
        let ready = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        ready > 0
    }

    /// Decide a frame's fate and queue it (or not).
    fn arrived(&mut self, frame: &[u8], real_len: usize, imp: &Impairment) {
        let c = &self.counters;
        bump(&c.frames);
        c.largest_frame.fetch_max(real_len as u64, Ordering::Relaxed);
        let rx_seq = self.rx_seq;
        self.rx_seq += 1;
        let now = Instant::now();
        let mut due = now + imp.delay;
        let mut copies = 1;
        if is_tcp(frame) {
            bump(&c.tcp_frames);
            // Draw all three every time: a frame's fate depends only on the
            // seed and its arrival number.
            let (lose, dup, hold) = (self.rng.unit(), self.rng.unit(), self.rng.unit());
            let hold_for =
                self.rng.range(imp.reorder_delay.as_micros() as u64 / 2, imp.reorder_delay.as_micros() as u64);
            if lose < imp.loss {
                bump(&c.dropped);
                return;
            }
            if dup < imp.duplicate {
                bump(&c.duplicated);
                copies = 2;
            }
            if hold < imp.reorder && !imp.reorder_delay.is_zero() {
                bump(&c.held);
                due += Duration::from_micros(hold_for);
            }
        }
        for _ in 0..copies {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.queue.push(Reverse(Pending { due, seq, rx_seq, frame: frame.to_vec() }));
        }
    }

    /// Send every queued frame whose time has come, in (due, arrival) order.
    fn send_due(&mut self, now: Instant) {
        while self.queue.peek().is_some_and(|Reverse(p)| p.due <= now) {
            let Reverse(p) = self.queue.pop().expect("peeked");
            // SAFETY: the frame buffer is valid for reads of its length.
            let rc = unsafe { libc::send(self.tx.as_raw_fd(), p.frame.as_ptr().cast(), p.frame.len(), 0) };
            if rc < 0 {
                bump(&self.counters.send_errors);
                continue;
            }
            bump(&self.counters.sent);
            match self.max_sent_rx_seq {
                Some(max) if p.rx_seq < max => bump(&self.counters.reordered),
                _ => self.max_sent_rx_seq = Some(p.rx_seq),
            }
        }
    }

    /// Add the kernel's drop count for our socket (reading resets it).
    fn add_socket_drops(&self) {
        // SAFETY: tpacket_stats is plain old data; all-zero is valid.
        let mut stats: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: stats and len are valid for writes and len matches stats.
        let rc = unsafe {
            libc::getsockopt(
                self.rx.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut stats as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            self.counters.socket_drops.fetch_add(u64::from(stats.tp_drops), Ordering::Relaxed);
        }
    }
}

/// An Ethernet frame carrying TCP over IPv4 or IPv6 (no VLAN tags or IPv6
/// extension headers on this link).
fn is_tcp(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x00]) => frame.get(14 + 9) == Some(&6),
        Some([0x86, 0xdd]) => frame.get(14 + 6) == Some(&6),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_frames_are_recognised() {
        let mut v4 = vec![0u8; 60];
        v4[12..14].copy_from_slice(&[0x08, 0x00]);
        v4[23] = 6;
        assert!(is_tcp(&v4));
        v4[23] = 17;
        assert!(!is_tcp(&v4), "UDP");
        let mut v6 = vec![0u8; 80];
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        v6[20] = 6;
        assert!(is_tcp(&v6));
        let mut arp = vec![0u8; 60];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(!is_tcp(&arp));
        assert!(!is_tcp(&[0u8; 10]));
    }

    #[test]
    fn proc_net_fields_by_name() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RetransSegs InErrs\nTcp: 1 42 0\n";
        assert_eq!(proc_net_field(text, "Tcp", "RetransSegs"), Some(42));
        assert_eq!(proc_net_field(text, "Ip", "DefaultTTL"), Some(64));
        assert_eq!(proc_net_field(text, "Tcp", "Nope"), None);
        assert_eq!(proc_net_field(text, "Udp", "InErrs"), None);
    }

    #[test]
    fn configs_are_checked() {
        let lossy = Impairment::NONE.loss(0.01).duplicate(0.03).reorder(0.05, Duration::from_millis(3));
        assert!(ImpairConfig::both(1, lossy).mss(88).validate().is_ok());
        assert!(ImpairConfig::both(1, lossy).mss(87).validate().is_err());
        assert!(ImpairConfig::both(1, Impairment::NONE.loss(1.5)).validate().is_err());
    }

    #[test]
    fn pending_frames_leave_by_due_time_then_arrival() {
        let t = Instant::now();
        let mut q = BinaryHeap::new();
        for (due_ms, seq) in [(3, 0), (0, 1), (0, 2), (1, 3)] {
            q.push(Reverse(Pending { due: t + Duration::from_millis(due_ms), seq, rx_seq: seq, frame: Vec::new() }));
        }
        let order: Vec<u64> = std::iter::from_fn(|| q.pop().map(|Reverse(p)| p.seq)).collect();
        assert_eq!(order, [1, 2, 3, 0]);
    }
}
