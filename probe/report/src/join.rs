//! Joining wire addresses with nginx's configuration: address
//! normalisation, nginx's own listening sockets, and which group lists a peer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::config::{NginxConfig, ServerConf};

/// An address as compared across the wire and the configuration: IP and
/// port only (IPv6 flow info and scope do not identify a backend), with
/// IPv4-mapped IPv6 folded to IPv4.
pub type AddrKey = (IpAddr, u16);

pub fn key(a: &SocketAddr) -> AddrKey {
    (normalise_ip(a.ip()), a.port())
}

pub fn normalise_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// `IP:port` as shown to people: `127.0.0.1:80`, `[::1]:80`. IPv4 (nearly
/// every peer) is spelled out by hand: `Display` through `fmt` costs more
/// than the rest of a peer's fixed fields in the endpoint's render.
pub fn show(k: &AddrKey) -> String {
    match k.0 {
        IpAddr::V4(ip) => {
            let mut s = String::with_capacity(21);
            let mut num = itoa::Buffer::new();
            for (i, o) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                s.push_str(num.format(o));
            }
            s.push(':');
            s.push_str(num.format(k.1));
            s
        }
        IpAddr::V6(_) => SocketAddr::new(k.0, k.1).to_string(),
    }
}

/// nginx's listening sockets, ready for matching peers against.
pub struct Listeners {
    exact: Vec<AddrKey>,
    wildcard_ports: Vec<u16>,
}

impl Listeners {
    pub fn new(listen: &[SocketAddr]) -> Self {
        let mut exact = Vec::new();
        let mut wildcard_ports = Vec::new();
        for l in listen {
            let k = key(l);
            if k.0.is_unspecified() {
                wildcard_ports.push(k.1);
            } else {
                exact.push(k);
            }
        }
        Listeners { exact, wildcard_ports }
    }

    /// True when traffic to `peer` is a client talking to nginx's front
    /// door: an exact listen address, or a wildcard listen's port on a
    /// loopback address or on an address nginx listens on explicitly. (A
    /// wildcard listen cannot tell us the host's other addresses; loopback
    /// is where a local client's traffic shows up.)
    pub fn is_listener(&self, peer: &AddrKey) -> bool {
        if self.exact.contains(peer) {
            return true;
        }
        self.wildcard_ports.contains(&peer.1)
            && (peer.0.is_loopback() || self.exact.iter().any(|(ip, _)| *ip == peer.0))
    }
}

/// For each peer address, the groups (by index in `NginxConfig::upstreams`)
/// and servers that list it, in configuration order.
pub struct ConfigIndex<'a> {
    conf: &'a NginxConfig,
    by_addr: HashMap<AddrKey, Vec<(usize, &'a ServerConf)>>,
}

impl<'a> ConfigIndex<'a> {
    pub fn new(conf: &'a NginxConfig) -> Self {
        let mut by_addr: HashMap<AddrKey, Vec<(usize, &'a ServerConf)>> = HashMap::new();
        for (g, up) in conf.upstreams.iter().enumerate() {
            for s in &up.servers {
                by_addr.entry(key(&s.addr)).or_default().push((g, s));
            }
        }
        ConfigIndex { conf, by_addr }
    }

    pub fn is_listed(&self, k: &AddrKey) -> bool {
        self.by_addr.contains_key(k)
    }

    /// Name of the first group (configuration order) listing `k`.
    pub fn first_group(&self, k: &AddrKey) -> Option<&'a str> {
        self.by_addr.get(k).and_then(|v| v.first()).map(|(g, _)| self.conf.upstreams[*g].name.as_str())
    }

    /// Does the group called `name` list `k`?
    pub fn group_lists(&self, k: &AddrKey, name: &str) -> bool {
        self.by_addr.get(k).is_some_and(|v| v.iter().any(|(g, _)| self.conf.upstreams[*g].name == name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_is_display() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ip = if i % 3 == 0 {
                IpAddr::from([0, 0, 0, (i % 256) as u8])
            } else {
                IpAddr::from((x as u32).to_be_bytes())
            };
            let a = SocketAddr::new(ip, (x >> 32) as u16);
            assert_eq!(show(&key(&a)), a.to_string());
        }
        for a in ["[::1]:80", "[fe80::1%3]:8443", "[::ffff:10.0.0.1]:80", "255.255.255.255:65535", "0.0.0.0:0"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(show(&key(&a)), SocketAddr::new(normalise_ip(a.ip()), a.port()).to_string());
        }
    }

    fn k(s: &str) -> AddrKey {
        key(&s.parse().unwrap())
    }

    #[test]
    fn mapped_ipv6_is_ipv4() {
        assert_eq!(k("[::ffff:127.0.0.1]:80"), k("127.0.0.1:80"));
        assert_eq!(k("[fe80::1%2]:80"), k("[fe80::1]:80"));
        assert_eq!(show(&k("[::1]:9")), "[::1]:9");
    }

    #[test]
    fn listeners() {
        let l = Listeners::new(&["0.0.0.0:8080".parse().unwrap(), "10.0.0.5:443".parse().unwrap()]);
        assert!(l.is_listener(&k("127.0.0.1:8080")));
        assert!(l.is_listener(&k("[::1]:8080")));
        assert!(l.is_listener(&k("10.0.0.5:8080")));
        assert!(l.is_listener(&k("10.0.0.5:443")));
        assert!(l.is_listener(&k("[::ffff:10.0.0.5]:443")));
        assert!(!l.is_listener(&k("10.0.0.6:8080")));
        assert!(!l.is_listener(&k("127.0.0.1:443")));
        assert!(!l.is_listener(&k("127.0.0.1:9001")));
    }
}
