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
//! Read on every request rather than cached per cycle: with `zone` +
//! `resolve` (nginx >= 1.27.3) a group's addresses change at run time, and
//! the walk costs microseconds next to building the report.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ptr::addr_of;

use ngx::ffi::{
    ngx_cycle, ngx_http_upstream_rr_peer_t, ngx_http_upstream_rr_peers_t, ngx_http_upstream_srv_conf_t,
    ngx_listening_t, ngx_str_t, sockaddr, sockaddr_in, sockaddr_in6, socklen_t, AF_INET, AF_INET6, NGINX_VERSION,
    NGX_HTTP_UPSTREAM_CREATE,
};
use ngx::http::{HttpModuleMainConf, NgxHttpUpstreamModule, Request};
use upstreamtop_report::{NginxConfig, ServerConf, UpstreamConf};

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
    // SAFETY: umcf->upstreams is the array of ngx_http_upstream_srv_conf_t
    // pointers nginx built while parsing the configuration; it lives as long
    // as the cycle, which outlives this request.
    let groups: &[*mut ngx_http_upstream_srv_conf_t] = unsafe { umcf.upstreams.as_slice() };
    groups
        .iter()
        // SAFETY: the entries are pool-allocated srv confs (never freed
        // before the cycle) or null, which `as_ref` turns into None.
        .filter_map(|&uscf| unsafe { uscf.as_ref() })
        .map(upstream_group)
        .collect()
}

fn upstream_group(uscf: &ngx_http_upstream_srv_conf_t) -> UpstreamConf {
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
    let peers = uscf.peer.data as *mut ngx_http_upstream_rr_peers_t;
    // SAFETY: after the upstream module's init_main_conf ran (before any
    // request), peer.data of every group is its round-robin peer list, or
    // null if the balancer keeps none.
    let mut servers = unsafe { read_peer_lists(peers, &name) };
    if implicit {
        // ngx_http_upstream_add leaves the weight of a literal address at 0
        // (a single peer needs none); report what it means: weight 1.
        for s in servers.iter_mut().filter(|s| s.weight == 0) {
            s.weight = 1;
        }
    }
    UpstreamConf { name, implicit, servers }
}

/// Primary peers, then the backup list (`peers->next`).
///
/// # Safety
/// `peers` must be null or point to a live `ngx_http_upstream_rr_peers_t`.
unsafe fn read_peer_lists(peers: *mut ngx_http_upstream_rr_peers_t, group: &str) -> Vec<ServerConf> {
    let mut out = Vec::new();
    // SAFETY: the caller vouches for `peers`; `next` of a live list is null
    // or another live list.
    unsafe {
        if peers.is_null() {
            return out;
        }
        let _guard = PeersReadLock::new(peers);
        read_peers(&*peers, group, false, &mut out);
        if let Some(backup) = (*peers).next.as_ref() {
            read_peers(backup, group, true, &mut out);
        }
    }
    out
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
unsafe fn read_peers(list: &ngx_http_upstream_rr_peers_t, group: &str, backup: bool, out: &mut Vec<ServerConf>) {
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
        out.push(ServerConf { name, addr, backup, down: p.down != 0, weight: u32::try_from(p.weight).unwrap_or(0) });
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
