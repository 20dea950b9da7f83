//! Everything the module reads out of nginx's runtime structures, turned
//! into the plain-Rust [`NginxConfig`] the report joins against. All the FFI
//! of the module that is not directive or request plumbing lives here.
//!
//! Peers come from the round-robin peer lists (`uscf->peer.data`) that every
//! stock balancer (round robin, hash, ip_hash, least_conn, random, keepalive
//! on top of any of them) builds at startup: unlike the `servers` array they
//! exist for the implicit groups `proxy_pass http://host:port` creates too,
//! hold one entry per resolved address, and put `backup` servers in a second
//! list.
//!
//! Each peer also carries the balancer's own state (`fails`, `conns`,
//! `max_conns`, …: [`PeerState`]), read under the list's read lock. In a
//! group with a `zone` that state is shared by all workers; without one it
//! is the answering worker's own ([`Scope`]).
//!
//! A balancer nginx does not ship may keep something else in `peer.data`.
//! Reading that as a round-robin list could crash the worker, so when the
//! binary holds any module with `upstream {}` directives that nginx does
//! not ship, only groups that provably use round robin are read (their
//! `init_upstream` is unset or nginx's own); the others are reported with
//! scope `unknown` and no servers ([`balancer_is_read`]).
//!
//! Read on every request rather than cached per cycle: with `zone` +
//! `resolve` (nginx >= 1.27.3) a group's addresses change at run time, the
//! balancer's state changes with every request, and the walk costs
//! microseconds next to building the report.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ptr::addr_of;

use ngx::ffi::{
    ngx_cached_time, ngx_cycle, ngx_cycle_t, ngx_http_upstream_init_round_robin, ngx_http_upstream_rr_peer_t,
    ngx_http_upstream_rr_peers_t, ngx_http_upstream_srv_conf_t, ngx_listening_t, ngx_module_t, ngx_pid, ngx_str_t,
    sockaddr, sockaddr_in, sockaddr_in6, socklen_t, AF_INET, AF_INET6, NGINX_VERSION, NGX_HTTP_MODULE,
    NGX_HTTP_UPSTREAM_CREATE, NGX_HTTP_UPS_CONF,
};
use ngx::http::{HttpModuleMainConf, NgxHttpUpstreamModule, Request};
use upstreamtop_report::config::is_foreign_balancer;
use upstreamtop_report::{NginxConfig, PeerState, Scope, ServerConf, UpstreamConf};

/// nginx's view for the report: upstream groups, listening sockets, version.
pub(crate) fn nginx_config(request: &Request) -> NginxConfig {
    NginxConfig {
        upstreams: upstream_groups(request),
        listen: listening_sockets(),
        nginx_version: NGINX_VERSION.to_string_lossy().into_owned(),
    }
}

fn ngx_str(s: &ngx_str_t) -> String {
    String::from_utf8_lossy(s.as_bytes()).into_owned()
}

fn upstream_groups(request: &Request) -> Vec<UpstreamConf> {
    let Some(umcf) = NgxHttpUpstreamModule::main_conf(request) else {
        return Vec::new();
    };
    let cx = GroupReading { only_round_robin: foreign_balancer_modules(), now_s: nginx_time_s() };
    // SAFETY: umcf->upstreams is the array of ngx_http_upstream_srv_conf_t
    // pointers nginx built while parsing the configuration; it lives as long
    // as the cycle, which outlives this request.
    let groups: &[*mut ngx_http_upstream_srv_conf_t] = unsafe { umcf.upstreams.as_slice() };
    groups
        .iter()
        // SAFETY: the entries are pool-allocated srv confs (never freed
        // before the cycle) or null, which `as_ref` turns into None.
        .filter_map(|&uscf| unsafe { uscf.as_ref() })
        .map(|uscf| upstream_group(uscf, &cx))
        .collect()
}

/// What every group's reading shares.
struct GroupReading {
    /// Some module nginx does not ship has `upstream {}` directives: read
    /// only groups that provably use round robin.
    only_round_robin: bool,
    /// nginx's clock (`ngx_time()`), which its balancer judges with.
    now_s: i64,
}

/// True when the running binary holds a module with `upstream {}`
/// directives that nginx does not ship (a third-party balancer).
fn foreign_balancer_modules() -> bool {
    // SAFETY: ngx_cycle is set before any request and only replaced by the
    // master on reload; a worker's cycle lives as long as the worker.
    let cycle: *mut ngx_cycle_t = unsafe { std::ptr::read_volatile(addr_of!(ngx_cycle)) };
    // SAFETY: a non-null cycle is live (above).
    let Some(cycle) = (unsafe { cycle.as_ref() }) else { return true };
    if cycle.modules.is_null() {
        return true;
    }
    // SAFETY: cycle->modules holds modules_n module pointers.
    let modules: &[*mut ngx_module_t] = unsafe { std::slice::from_raw_parts(cycle.modules, cycle.modules_n) };
    modules.iter().any(|&m| {
        // SAFETY: the entries are the loaded modules' static descriptors.
        let Some(m) = (unsafe { m.as_ref() }) else { return false };
        if m.type_ != NGX_HTTP_MODULE as usize || m.name.is_null() || m.commands.is_null() {
            return false;
        }
        // SAFETY: a module's name is a NUL-terminated static string.
        let name = unsafe { std::ffi::CStr::from_ptr(m.name) }.to_string_lossy();
        // SAFETY: a module's commands array ends with ngx_null_command
        // (an empty name); `commands` is non-null (checked above).
        let has_upstream_directive = unsafe { has_directive_in(m.commands, NGX_HTTP_UPS_CONF as usize) };
        is_foreign_balancer(&name, has_upstream_directive)
    })
}

/// Does any command of the null-terminated array `cmd` allow `context`?
///
/// # Safety
/// `cmd` must point to a module's commands array, ended by a command with
/// an empty name.
unsafe fn has_directive_in(mut cmd: *const ngx::ffi::ngx_command_t, context: usize) -> bool {
    // A module has a few dozen commands at most; the bound only guards
    // against a damaged array.
    for _ in 0..4096 {
        // SAFETY: the caller vouches for the array; we stop at its end.
        let c = unsafe { &*cmd };
        if c.name.len == 0 {
            return false;
        }
        if c.type_ & context != 0 {
            return true;
        }
        // SAFETY: not the terminator, so the next command exists.
        cmd = unsafe { cmd.add(1) };
    }
    false
}

type RoundRobinInit =
    unsafe extern "C" fn(*mut ngx::ffi::ngx_conf_t, *mut ngx_http_upstream_srv_conf_t) -> ngx::ffi::ngx_int_t;

/// Whether a group's `peer.data` is read as a round-robin peer list.
fn balancer_is_read(uscf: &ngx_http_upstream_srv_conf_t, only_round_robin: bool) -> bool {
    if !only_round_robin {
        return true;
    }
    match uscf.peer.init_upstream {
        // nginx falls back to round robin for groups no balancer claimed.
        None => true,
        // Both sides take the address through the dynamic symbol, so the
        // same function has the same address.
        Some(init) => std::ptr::fn_addr_eq(init, ngx_http_upstream_init_round_robin as RoundRobinInit),
    }
}

/// `ngx_time()`: nginx's cached clock, seconds.
fn nginx_time_s() -> i64 {
    // SAFETY: ngx_cached_time points at a slot of nginx's time cache once
    // the worker runs; reading it volatile mirrors its declaration.
    let t = unsafe { std::ptr::read_volatile(addr_of!(ngx_cached_time)) };
    // SAFETY: a non-null cached time is a live ngx_time_t.
    unsafe { t.as_ref() }.map_or(0, |t| t.sec)
}

fn upstream_group(uscf: &ngx_http_upstream_srv_conf_t, cx: &GroupReading) -> UpstreamConf {
    // `upstream name {}` blocks carry the CREATE flag; the groups proxy_pass
    // (and friends) add for a literal address do not.
    let implicit = uscf.flags & NGX_HTTP_UPSTREAM_CREATE as usize == 0;
    let host = ngx_str(&uscf.host);
    let name = if implicit && uscf.no_port == 0 && uscf.port != 0 {
        // Implicit groups are keyed by host *and* port; the name should say
        // what proxy_pass said.
        format!("{host}:{}", uscf.port)
    } else {
        host
    };
    if !balancer_is_read(uscf, cx.only_round_robin) {
        return UpstreamConf { name, implicit, scope: Scope::Unknown, servers: Vec::new() };
    }
    let peers = uscf.peer.data as *mut ngx_http_upstream_rr_peers_t;
    // SAFETY: after the upstream module's init_main_conf ran (before any
    // request), peer.data of every group whose balancer is nginx's own is
    // its round-robin peer list, or null if the balancer keeps none.
    let (mut servers, shared) = unsafe { read_peer_lists(peers, &name, cx.now_s) };
    // SAFETY: ngx_pid is set once at worker start.
    let scope = if shared { Scope::AllWorkers } else { Scope::Worker(unsafe { ngx_pid } as u32) };
    if implicit {
        // ngx_http_upstream_add leaves the weight of a literal address at 0
        // (a single peer needs none); report what it means: weight 1.
        for s in servers.iter_mut().filter(|s| s.weight == 0) {
            s.weight = 1;
        }
    }
    UpstreamConf { name, implicit, scope, servers }
}

/// Primary peers, then the backup list (`peers->next`), and whether the
/// list lives in shared memory (a `zone`: all workers' state).
///
/// # Safety
/// `peers` must be null or point to a live `ngx_http_upstream_rr_peers_t`.
unsafe fn read_peer_lists(
    peers: *mut ngx_http_upstream_rr_peers_t,
    group: &str,
    now_s: i64,
) -> (Vec<ServerConf>, bool) {
    let mut out = Vec::new();
    // SAFETY: the caller vouches for `peers`; `next` of a live list is null
    // or another live list.
    unsafe {
        if peers.is_null() {
            return (out, false);
        }
        let _guard = PeersReadLock::new(peers);
        read_peers(&*peers, group, false, now_s, &mut out);
        if let Some(backup) = (*peers).next.as_ref() {
            read_peers(backup, group, true, now_s, &mut out);
        }
        (out, is_shared(&*peers))
    }
}

#[cfg(ngx_feature = "http_upstream_zone")]
fn is_shared(peers: &ngx_http_upstream_rr_peers_t) -> bool {
    !peers.shpool.is_null()
}

#[cfg(not(ngx_feature = "http_upstream_zone"))]
fn is_shared(_peers: &ngx_http_upstream_rr_peers_t) -> bool {
    false
}

/// The balancer's state of one peer, judged at nginx's `now_s` the way
/// `ngx_http_upstream_get_peer` judges it.
fn peer_state(p: &ngx_http_upstream_rr_peer_t, now_s: i64) -> PeerState {
    let small = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    PeerState {
        fails: small(p.fails),
        max_fails: small(p.max_fails),
        fail_timeout_s: u64::try_from(p.fail_timeout).unwrap_or(0),
        last_failure_s: if p.fails > 0 || p.accessed > 0 { u64::try_from(p.accessed).unwrap_or(0) } else { 0 },
        in_flight: small(p.conns),
        max_conns: small(p.max_conns),
        unavailable: p.max_fails != 0 && p.fails >= p.max_fails && now_s - p.checked <= p.fail_timeout,
    }
}

/// Holds the peers' read lock while a list in shared memory (`zone`) is read:
/// with `resolve` servers the list can change at run time.
struct PeersReadLock(*mut ngx_http_upstream_rr_peers_t);

impl PeersReadLock {
    /// # Safety
    /// `peers` must point to a live peer list.
    #[cfg(ngx_feature = "http_upstream_zone")]
    unsafe fn new(peers: *mut ngx_http_upstream_rr_peers_t) -> Self {
        // SAFETY: the caller vouches for `peers`; the rwlock word is only
        // meaningful (and only used by nginx) for lists in shared memory.
        unsafe {
            if (*peers).shpool.is_null() {
                return PeersReadLock(std::ptr::null_mut());
            }
            ngx::ffi::ngx_rwlock_rlock(&mut (*peers).rwlock);
        }
        PeersReadLock(peers)
    }

    /// # Safety
    /// `peers` must point to a live peer list.
    #[cfg(not(ngx_feature = "http_upstream_zone"))]
    unsafe fn new(_peers: *mut ngx_http_upstream_rr_peers_t) -> Self {
        PeersReadLock(std::ptr::null_mut())
    }
}

impl Drop for PeersReadLock {
    fn drop(&mut self) {
        #[cfg(ngx_feature = "http_upstream_zone")]
        if !self.0.is_null() {
            // SAFETY: new() took the read lock of this live list.
            unsafe { ngx::ffi::ngx_rwlock_unlock(&mut (*self.0).rwlock) };
        }
    }
}

/// # Safety
/// `list` must be a live peer list (read-locked if in shared memory).
unsafe fn read_peers(
    list: &ngx_http_upstream_rr_peers_t,
    group: &str,
    backup: bool,
    now_s: i64,
    out: &mut Vec<ServerConf>,
) {
    let mut peer: *const ngx_http_upstream_rr_peer_t = list.peer;
    // `number` bounds the walk so a damaged list can never loop forever.
    for _ in 0..list.number {
        // SAFETY: peers of a live list are linked through `next`, null-ended.
        let Some(p) = (unsafe { peer.as_ref() }) else { break };
        peer = p.next;
        if is_zombie(p) {
            continue;
        }
        // SAFETY: sockaddr/socklen of a peer describe its resolved address.
        let Some(addr) = (unsafe { socket_addr(p.sockaddr, p.socklen) }) else {
            continue; // unix: sockets never show up on the wire as IP:port
        };
        let name = if !p.server.is_empty() {
            ngx_str(&p.server)
        } else if !group.is_empty() {
            group.to_owned()
        } else {
            ngx_str(&p.name)
        };
        out.push(ServerConf {
            name,
            addr,
            backup,
            down: p.down != 0,
            weight: u32::try_from(p.weight).unwrap_or(0),
            nginx: peer_state(p, now_s),
        });
    }
}

/// Peers removed by `resolve` linger as zombies until their connections end.
#[cfg(nginx_peer_zombie)]
fn is_zombie(p: &ngx_http_upstream_rr_peer_t) -> bool {
    p.zombie() != 0
}

#[cfg(not(nginx_peer_zombie))]
fn is_zombie(_p: &ngx_http_upstream_rr_peer_t) -> bool {
    false
}

/// nginx's own listening sockets (deduplicated: `reuseport` gives one entry
/// per worker).
fn listening_sockets() -> Vec<SocketAddr> {
    // SAFETY: ngx_cycle is set before any request is processed and only
    // replaced by the master on reload (workers keep theirs); reading it
    // volatile mirrors its `volatile` declaration in C.
    let cycle = unsafe { std::ptr::read_volatile(addr_of!(ngx_cycle)) };
    // SAFETY: a non-null cycle is live for the whole process lifetime of
    // this worker.
    let Some(cycle) = (unsafe { cycle.as_ref() }) else {
        return Vec::new();
    };
    // SAFETY: cycle->listening is an array of ngx_listening_t.
    let listening: &[ngx_listening_t] = unsafe { cycle.listening.as_slice() };
    let mut out: Vec<SocketAddr> = Vec::new();
    for ls in listening {
        // SAFETY: each listening entry's sockaddr/socklen describe its address.
        if let Some(addr) = unsafe { socket_addr(ls.sockaddr, ls.socklen) } {
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    out
}

/// An IPv4/IPv6 `struct sockaddr` as a [`SocketAddr`]; None for anything else.
///
/// # Safety
/// `sa` must be null or point to at least `len` readable bytes.
unsafe fn socket_addr(sa: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    // SAFETY: the caller vouches for `sa`; each cast is preceded by a length
    // check against the size of the concrete type.
    unsafe {
        let family = u32::from(sa.as_ref()?.sa_family);
        let len = len as usize;
        if family == AF_INET && len >= size_of::<sockaddr_in>() {
            let sin = &*(sa as *const sockaddr_in);
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        } else if family == AF_INET6 && len >= size_of::<sockaddr_in6>() {
            let sin6 = &*(sa as *const sockaddr_in6);
            let ip = Ipv6Addr::from(sin6.sin6_addr.__in6_u.__u6_addr8);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        } else {
            None
        }
    }
}
