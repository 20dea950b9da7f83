//! A network namespace joined to the host by a veth pair, so backends sit
//! behind a real (non-loopback) link: Ethernet frames, private addresses
//! `10.200.<n>.1/24` (host) and `.2` (inside), `fd00:200:<n hex>::1/2`.
//!
//! Setup uses `ip` (iproute2). Code runs inside the namespace on a fresh
//! thread that `setns()`es first: sockets keep the namespace they were
//! created in, so a backend bound there stays there whatever thread later
//! serves it. The namespace (and with it the veth pair) is deleted on Drop,
//! also when a test panics; leftovers of killed test processes are swept
//! when the next namespace is created.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{anyhow, bail, Context, Result};

use crate::backend::{Backend, BackendBuilder};

/// Prefix of every namespace this module creates: `utns-<pid>-<k>`.
const NS_PREFIX: &str = "utns-";
const LOCK_PATH: &str = "/run/nginx-tests-netns.lock";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A namespace + veth pair, removed on Drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    host_if: String,
    ns_if: String,
    subnet: u8,
    /// The per-process sequence number in `name` and the interface names.
    k: u32,
}

impl Netns {
    /// Create a namespace with a veth pair and addresses. Needs root.
    pub fn create() -> Result<Netns> {
        Self::create_linked(|ns| {
            ip(&["link", "add", &ns.host_if, "type", "veth", "peer", "name", &ns.ns_if, "netns", &ns.name])
        })
    }

    /// Like [`Netns::create`], with the link between [`Netns::host_if`] (in
    /// the root namespace) and [`Netns::ns_if`] (inside) built by `link`
    /// instead of one veth pair: `link` runs after the namespace exists and
    /// must leave both interfaces in place; addresses and `up` follow. The
    /// impaired topology ([`crate::impair`]) puts a bridge in between.
    pub(crate) fn create_linked(link: impl FnOnce(&Netns) -> Result<()>) -> Result<Netns> {
        check_support()?;
        let pid = std::process::id();
        let k = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NS_PREFIX}{pid}-{k}");
        // Interface names are limited to 15 bytes.
        let host_if = format!("ut{}h{k}", pid % 1_000_000);
        let ns_if = format!("ut{}n{k}", pid % 1_000_000);

        // Allocation and setup happen under a file lock so two test
        // processes cannot pick the same subnet.
        let lock = File::create(LOCK_PATH).with_context(|| format!("create {LOCK_PATH}"))?;
        // SAFETY: flock on a descriptor we own; released when `lock` drops.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).context("flock netns lock");
        }
        sweep_stale();
        let subnet = free_subnet(pid, k)?;
        let ns = Netns { name, host_if, ns_if, subnet, k };
        // From here Drop cleans up whatever part got created.
        ns.setup(link).with_context(|| format!("set up network namespace {}", ns.name))?;
        drop(lock);
        Ok(ns)
    }

    fn setup(&self, link: impl FnOnce(&Netns) -> Result<()>) -> Result<()> {
        let (n, h, i, s) = (&self.name, &self.host_if, &self.ns_if, self.subnet);
        ip(&["netns", "add", n])?;
        link(self)?;
        ip(&["addr", "add", &format!("10.200.{s}.1/24"), "dev", h])?;
        ip(&["-6", "addr", "add", &format!("fd00:200:{s:x}::1/64"), "dev", h, "nodad"])?;
        ip(&["link", "set", h, "up"])?;
        ip(&["-n", n, "addr", "add", &format!("10.200.{s}.2/24"), "dev", i])?;
        ip(&["-n", n, "-6", "addr", "add", &format!("fd00:200:{s:x}::2/64"), "dev", i, "nodad"])?;
        ip(&["-n", n, "link", "set", i, "up"])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// An interface name of this topology's family (`ut<pid>h<k>` is the
    /// host end, `ut<pid>n<k>` the inner one): unique per process and
    /// namespace, within the 15-byte limit.
    pub(crate) fn if_name(&self, tag: char) -> String {
        format!("ut{}{tag}{}", std::process::id() % 1_000_000, self.k)
    }

    /// The host end of the veth pair (where a probe attaches).
    pub fn host_if(&self) -> &str {
        &self.host_if
    }

    pub fn ns_if(&self) -> &str {
        &self.ns_if
    }

    pub fn host_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.subnet, 1)
    }

    /// The address inside the namespace (bind backends here).
    pub fn ns_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.subnet, 2)
    }

    pub fn host_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x200, u16::from(self.subnet), 0, 0, 0, 0, 1)
    }

    pub fn ns_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x200, u16::from(self.subnet), 0, 0, 0, 0, 2)
    }

    /// Run `f` on a new thread inside the namespace and return its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        run_in(&self.name, f)
    }

    /// Start a backend inside the namespace on `ip:port` (port 0 picks one).
    pub fn backend(&self, ip: IpAddr, port: u16, builder: BackendBuilder) -> Result<Backend> {
        self.run(move || builder.start(SocketAddr::new(ip, port)))?
    }

    /// A command run inside the namespace (`ip netns exec <name> ...`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys the inner veth end, which takes
        // the host end with it; delete the host end too in case setup
        // stopped before the pair moved in.
        let _ = ip_quiet(&["link", "del", &self.host_if]);
        let _ = ip_quiet(&["netns", "del", &self.name]);
    }
}

/// Run `f` on a new thread inside the named namespace (`ip netns` name) and
/// return its result.
pub(crate) fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("/run/netns/{name}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<T> {
                let ns = File::open(&path).with_context(|| format!("open {path}"))?;
                // SAFETY: setns on a namespace fd we hold open; it only
                // changes this (scoped, short-lived) thread's namespace.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context(format!("setns {path}"));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("thread inside {name} panicked"))?
    })
}

/// A clear error when namespaces cannot work here.
pub fn check_support() -> Result<()> {
    if !crate::artifacts::is_root() {
        bail!("network namespaces need root (run the tests with sudo)");
    }
    if !std::path::Path::new("/proc/self/ns/net").exists() {
        bail!("this kernel has no network namespace support (/proc/self/ns/net missing)");
    }
    let ok = Command::new("ip").arg("-V").output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        bail!("`ip` (iproute2) not found: apt-get install iproute2");
    }
    Ok(())
}

pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

pub(crate) fn ip_quiet(args: &[&str]) -> Result<()> {
    Command::new("ip").args(args).output().context("run ip")?;
    Ok(())
}

/// A /24 in 10.200.0.0/16 no interface uses yet, starting at a pid-derived
/// spot so parallel processes rarely even collide on the first try.
fn free_subnet(pid: u32, k: u32) -> Result<u8> {
    let out = Command::new("ip").args(["-o", "addr", "show"]).output().context("ip addr show")?;
    let used = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = (pid.wrapping_mul(31).wrapping_add(k)) % 250;
    for step in 0..250 {
        let n = ((start + step) % 250 + 1) as u8;
        if !used.contains(&format!("10.200.{n}.")) {
            return Ok(n);
        }
    }
    bail!("no free 10.200.<n>.0/24 subnet left (stale namespaces? `ip netns list`)")
}

/// Delete namespaces left by test processes that no longer exist.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) =
            name.strip_prefix(NS_PREFIX).and_then(|rest| rest.split('-').next()).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip_quiet(&["netns", "del", &name]);
        }
    }
}
