//! What nginx's configuration contributes to an answer: its groups, their
//! servers and nginx's own listening sockets. The module extracts it
//! through FFI (`module/src/nginx_conf.rs`).

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

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct UpstreamConf {
    pub name: String,
    /// Created by `proxy_pass http://IP:port` rather than an `upstream {}` block.
    pub implicit: bool,
    pub servers: Vec<ServerConf>,
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
}
