//! What nginx's configuration contributes to a report, and the request's
//! query parameters.

use std::net::SocketAddr;

/// nginx's view, extracted by the module from the running configuration.
#[derive(Debug, Clone, PartialEq, Default)]
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

#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpstreamConf {
    pub name: String,
    /// Created by `proxy_pass http://IP:port` rather than an `upstream {}` block.
    pub implicit: bool,
    pub servers: Vec<ServerConf>,
}

/// One resolved peer of a group (a `server` line that resolves to several
/// addresses gives several `ServerConf`s with the same `name`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConf {
    /// As written in the configuration, e.g. "backend1.local:9001".
    pub name: String,
    pub addr: SocketAddr,
    pub backup: bool,
    pub down: bool,
    pub weight: u32,
}

/// Query parameters of the status request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// `?upstream=NAME`: only this group.
    pub upstream: Option<String>,
    /// `?routes=N`: top routes per peer (by requests); default 10.
    pub routes: usize,
    /// `?history=0` leaves history arrays out.
    pub history: bool,
    /// `?recent=N`: latest requests; default 20.
    pub recent: usize,
    /// `?routes_labels=0` / `upstreamtop_status prometheus noroutes;`:
    /// Prometheus output without per-route series.
    pub route_labels: bool,
}

impl Default for Query {
    fn default() -> Self {
        Query { upstream: None, routes: 10, history: true, recent: 20, route_labels: true }
    }
}
