//! Network interfaces, from /sys/class/net.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

const SYS: &str = "/sys/class/net";
const IFF_UP: u32 = 0x1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub index: u32,
    pub up: bool,
    /// An 802.1Q/802.1ad device (its parent sees its frames tagged).
    pub vlan: bool,
}

fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Every interface the kernel has now.
pub fn list() -> Result<Vec<Iface>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(SYS).with_context(|| format!("listing {SYS}"))? {
        let entry = entry.with_context(|| format!("listing {SYS}"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        // Vanished between readdir and read: skip it.
        let Some(index) = read(&dir.join("ifindex")).and_then(|s| s.parse().ok()) else { continue };
        let flags = read(&dir.join("flags"))
            .and_then(|s| u32::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .unwrap_or(0);
        let vlan = read(&dir.join("uevent")).is_some_and(|u| u.lines().any(|l| l == "DEVTYPE=vlan"));
        out.push(Iface { name, index, up: flags & IFF_UP != 0, vlan });
    }
    out.sort_by_key(|i| i.index);
    Ok(out)
}

/// The interfaces to attach to: the named ones (each must exist), or every
/// interface that is up.
pub fn select(all: &[Iface], wanted: &[String]) -> Result<Vec<Iface>> {
    if wanted.is_empty() {
        return Ok(all.iter().filter(|i| i.up).cloned().collect());
    }
    let mut out = Vec::new();
    for w in wanted {
        match all.iter().find(|i| &i.name == w) {
            Some(i) => out.push(i.clone()),
            None => {
                let names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
                bail!("unknown interface {w:?}; this host has: {}", names.join(", "))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(name: &str, index: u32, up: bool) -> Iface {
        Iface { name: name.into(), index, up, vlan: false }
    }

    #[test]
    fn default_is_every_up_interface() {
        let all = [i("lo", 1, true), i("eth0", 2, true), i("eth1", 3, false)];
        let names: Vec<String> = select(&all, &[]).unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["lo", "eth0"]);
    }

    #[test]
    fn unknown_interface_lists_the_real_ones() {
        let all = [i("lo", 1, true), i("eth0", 2, true)];
        let e = select(&all, &["wlan9".into()]).unwrap_err().to_string();
        assert!(e.contains("wlan9") && e.contains("lo, eth0"), "{e}");
    }

    #[test]
    fn this_host_has_loopback() {
        assert!(list().unwrap().iter().any(|i| i.name == "lo" && i.up));
    }
}

/// The kernel's ephemeral port range (net.ipv4.ip_local_port_range, which
/// IPv6 shares): the local ports of connections this host opens.
pub fn ephemeral_ports() -> Result<(u16, u16)> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";
    let s = fs::read_to_string(PATH).with_context(|| format!("reading {PATH}"))?;
    parse_port_range(&s).with_context(|| format!("parsing {PATH}: {s:?}"))
}

fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(|p| p.parse::<u16>());
    match (it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

#[cfg(test)]
mod port_range_tests {
    use super::*;

    #[test]
    fn parses_the_proc_format() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1 0"), None);
        assert_eq!(parse_port_range("x"), None);
        let (lo, hi) = ephemeral_ports().unwrap();
        assert!(lo <= hi);
    }
}
