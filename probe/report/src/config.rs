//! What nginx contributes to an answer: its groups, their servers, what
//! its balancer currently thinks of each server, and nginx's own listening
//! sockets. The module extracts it through FFI (`module/src/nginx_conf.rs`)
//! on every request.

use std::net::SocketAddr;

/// nginx's view, extracted by the module from the running configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct NginxConfig {
    /// Every `upstream {}` group, plus the implicit ones that
    /// `proxy_pass http://IP:port` creates, in configuration order.
    pub upstreams: Vec<UpstreamConf>,
    /// nginx's own listening sockets. Wildcard listens (`0.0.0.0:8080`,
    /// `[::]:8080`) match that port on any local address. Traffic to these
    /// is a client talking to nginx, never a backend.
    pub listen: Vec<SocketAddr>,
    /// nginx version string, e.g. "1.28.3".
    pub nginx_version: String,
}

impl NginxConfig {
    /// The configuration without the balancers' live state: what stays the
    /// same from one request to the next until nginx reloads. An answer
    /// cached for a publish is keyed by this, so its nginx figures are those
    /// of the first request after the publish (at most one publish interval
    /// old, like the wire's figures), and polls within the interval still
    /// get the cached body and their `304`s.
    pub fn without_live_state(&self) -> NginxConfig {
        let mut c = self.clone();
        for s in c.upstreams.iter_mut().flat_map(|u| u.servers.iter_mut()) {
            s.nginx = PeerState::default();
        }
        c
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct UpstreamConf {
    pub name: String,
    /// Created by `proxy_pass http://IP:port` rather than an `upstream {}` block.
    pub implicit: bool,
    /// Whose counts [`ServerConf::nginx`] holds.
    pub scope: Scope,
    pub servers: Vec<ServerConf>,
}

/// Whose view nginx's per-peer figures are: a group with a `zone` keeps
/// them in shared memory for all workers; without one, each worker keeps
/// its own, and the answer shows those of the worker that answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scope {
    /// The group has a `zone`: every worker's requests.
    #[default]
    AllWorkers,
    /// No `zone`: only this worker's requests (its pid).
    Worker(u32),
    /// The group's balancer is not one nginx ships, so its peer list is
    /// not read (a foreign balancer's data would be misread); the group's
    /// servers are unknown and their traffic shows as unlisted.
    Unknown,
}

/// One resolved peer of a group (a `server` line that resolves to several
/// addresses gives several `ServerConf`s with the same `name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerConf {
    /// As written in the configuration, e.g. "backend1.local:9001".
    pub name: String,
    pub addr: SocketAddr,
    pub backup: bool,
    pub down: bool,
    pub weight: u32,
    /// What nginx's balancer knows about this peer right now.
    pub nginx: PeerState,
}

/// nginx's round-robin state of one peer (`ngx_http_upstream_rr_peer_t`),
/// as the balancer uses it to choose.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PeerState {
    /// Failures nginx counts against the peer (`fails`); it forgets them
    /// only when a request to the peer succeeds.
    pub fails: u32,
    /// `max_fails=` (0: failures never take the peer out).
    pub max_fails: u32,
    /// `fail_timeout=`, seconds.
    pub fail_timeout_s: u64,
    /// When nginx last recorded a failure (Unix seconds; 0 = never).
    pub last_failure_s: u64,
    /// Requests nginx has a connection to this peer for (`conns`).
    pub in_flight: u32,
    /// `max_conns=` (0 = no limit).
    pub max_conns: u32,
    /// nginx's passive health has taken the peer out of rotation:
    /// `fails >= max_fails` within `fail_timeout` of the last check, as
    /// nginx decides it (judged by the module on nginx's clock).
    pub unavailable: bool,
}

/// The modules nginx ships that have directives inside `upstream {}`: all
/// of them keep the round-robin peer list in `peer.data` (the balancers
/// build on it; keepalive and zone wrap it).
pub const STOCK_UPSTREAM_MODULES: [&str; 7] = [
    "ngx_http_upstream_module",
    "ngx_http_upstream_hash_module",
    "ngx_http_upstream_ip_hash_module",
    "ngx_http_upstream_least_conn_module",
    "ngx_http_upstream_random_module",
    "ngx_http_upstream_keepalive_module",
    "ngx_http_upstream_zone_module",
];

/// A module nginx does not ship that has a directive for `upstream {}`: a
/// third-party balancer may keep its own data where nginx's keep the
/// round-robin peer list, so with one loaded the module reads only groups
/// that provably use round robin.
pub fn is_foreign_balancer(module: &str, has_upstream_directive: bool) -> bool {
    has_upstream_directive && !STOCK_UPSTREAM_MODULES.contains(&module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_modules_nginx_does_not_ship_count_as_foreign_balancers() {
        for stock in STOCK_UPSTREAM_MODULES {
            assert!(!is_foreign_balancer(stock, true), "{stock}");
        }
        assert!(is_foreign_balancer("ngx_http_upstream_fair_module", true));
        assert!(is_foreign_balancer("ngx_http_lua_upstream_module", true));
        // Modules without directives in `upstream {}` cannot change a balancer.
        assert!(!is_foreign_balancer("ngx_http_upstreamtop_module", false));
        assert!(!is_foreign_balancer("ngx_http_headers_more_filter_module", false));
    }
}
