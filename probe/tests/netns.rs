//! Real programs on the host end of a veth pair whose other end is in a
//! network namespace this test creates (Ethernet frames, non-loopback
//! addresses, IPv4 and IPv6), plus a VLAN on top of it. Needs root.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::Command;

use common::{assert_matches, require_root, run_traffic, wait_for, Harness, Served};

fn ip(args: &str) {
    try_ip(args).unwrap();
}

fn try_ip(args: &str) -> Result<(), String> {
    let out = Command::new("ip").args(args.split_whitespace()).output().expect("run ip");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {args}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The namespace and its veth pair; removed on drop (the veth goes with it).
struct Topology {
    ns: String,
    host_if: String,
    /// None when the kernel has no 802.1Q support (no 8021q module).
    vlan_if: Option<String>,
    n: u32,
}

impl Topology {
    fn new() -> Topology {
        // Unique per process and per topology (tests run in parallel).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = 100 + (std::process::id() % 30) * 4 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4;
        let mut t = Topology { ns: format!("utprobe{n}"), host_if: format!("utp{n}h"), vlan_if: None, n };
        let _ = Command::new("ip").args(["netns", "del", &t.ns]).output();
        ip(&format!("netns add {}", t.ns));
        ip(&format!("link add {} type veth peer name utp{n}n netns {}", t.host_if, t.ns));
        ip(&format!("addr add 10.200.{n}.1/24 dev {}", t.host_if));
        ip(&format!("addr add fd00:200:0:{n}::1/64 dev {} nodad", t.host_if));
        ip(&format!("link set {} up", t.host_if));
        ip(&format!("-n {} addr add 10.200.{n}.2/24 dev utp{n}n", t.ns));
        ip(&format!("-n {} addr add fd00:200:0:{n}::2/64 dev utp{n}n nodad", t.ns));
        ip(&format!("-n {} link set utp{n}n up", t.ns));
        ip(&format!("-n {} link set lo up", t.ns));
        t.vlan_if = t.add_vlan();
        t
    }

    fn add_vlan(&self) -> Option<String> {
        let (n, ns, host) = (self.n, &self.ns, &self.host_if);
        let vlan = format!("utp{n}h.7");
        if let Err(e) = try_ip(&format!("link add link {host} name {vlan} type vlan id 7")) {
            eprintln!("VLAN part skipped: this kernel cannot create vlan devices ({})", e.trim());
            return None;
        }
        ip(&format!("addr add 10.201.{n}.1/24 dev {vlan}"));
        ip(&format!("link set {vlan} up"));
        ip(&format!("-n {ns} link add link utp{n}n name utp{n}n.7 type vlan id 7"));
        ip(&format!("-n {ns} addr add 10.201.{n}.2/24 dev utp{n}n.7"));
        ip(&format!("-n {ns} link set utp{n}n.7 up"));
        Some(vlan)
    }

    /// Bind `addr` inside the namespace and serve there.
    fn serve(&self, addr: &str) -> (SocketAddr, Served) {
        let ns = self.ns.clone();
        let addr = addr.to_string();
        std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only, with a netns fd we opened.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let l = TcpListener::bind(&addr).expect("bind in netns");
            let a = l.local_addr().unwrap();
            // Server threads spawned from here stay in the namespace.
            (a, common::serve(l))
        })
        .join()
        .expect("netns server thread")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
    }
}

#[test]
fn veth_into_netns_exact_counts_ipv4_ipv6_vlan() {
    require_root!();
    let topo = Topology::new();
    let n = topo.n;
    let mut ifaces = vec![topo.host_if.as_str()];
    let mut binds = vec![format!("10.200.{n}.2:0"), format!("[fd00:200:0:{n}::2]:0")];
    if let Some(v) = &topo.vlan_if {
        ifaces.push(v);
        binds.push(format!("10.201.{n}.2:0"));
    }
    let mut h = Harness::new(&ifaces);
    // With a vlan device attached, tagged frames on its parent are skipped
    // (counted once, at the vlan device), as the daemon does.
    h.progs.set_skip_tagged(topo.vlan_if.is_some());

    for bind in binds {
        let (addr, served) = topo.serve(&bind);
        let sent = run_traffic(addr);
        let s = wait_for(&h, addr, sent);
        assert_matches(&s, addr, &served.lock().unwrap(), sent);
    }
    assert_eq!(h.progs.filter_total(), h.progs.conns().unwrap().len() as u64);
    drop(h);
}

#[test]
fn unanswered_syn_counts_as_failed_once_the_sweeper_gives_up() {
    require_root!();
    let topo = Topology::new();
    let n = topo.n;
    // The namespace drops its replies to us: our SYN is never answered.
    ip(&format!("-n {} route add blackhole 10.200.{n}.1/32", topo.ns));
    let (addr, _served) = topo.serve(&format!("10.200.{n}.2:0"));
    let h = Harness::new(&[&topo.host_if]);
    let r = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500));
    assert!(r.is_err(), "connect should time out");
    // The harness's sweeper gives up on a SYN after 3 s.
    let s = h.snapshot_when(|s| s.peers.iter().any(|p| p.addr == addr && p.conns.failed >= 1));
    let p = common::peer(&s, addr);
    assert_eq!((p.conns.failed, p.conns.opened, p.requests), (1, 0, 0));
    assert_eq!(h.progs.filter_total(), 0);
}
