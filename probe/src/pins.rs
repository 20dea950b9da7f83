//! The probe's state in bpffs, so a restart (or a crash) loses nothing.
//!
//! Layout of the state directory (default `/sys/fs/bpf/upstreamtop`):
//!
//! | pin | what |
//! |---|---|
//! | `meta` | a one-entry array holding the fingerprint of the programs and map definitions that created the pins |
//! | `map_<name>` | the maps with state: `conns`, `tcp_peers`, `peer_ids`, `peers`, `free_peer_ids`, `banked`, `banked_codes`, `codes`, `common_codes`, `stats`, `events` (the ring) and `bss` (the connection filter and knobs) |
//! | `link_<ifindex>_<egress\|ingress>` | the tcx links |
//!
//! Pinned links keep the programs attached and counting while no daemon
//! runs (the ring buffers the finished exchanges meanwhile); pinned maps let
//! the next daemon load its programs on the very same maps and switch the
//! links over to them atomically (`BPF_LINK_UPDATE`), so not one segment
//! goes uncounted. `.rodata` (the `--ignore-port`/`--only` knobs) is never
//! reused: each start applies its own flags. When the fingerprint differs
//! (an upgrade changed the programs or a flag changed a map's size), the old
//! links are detached and the pins removed before a fresh start.
//!
//! bpffs names may not contain dots, hence `bss` for `.bss`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, MapType};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const META: &str = "meta";

/// A directory in bpffs the probe may pin into.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

/// A pinned link, as named in the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedLink {
    pub ifindex: u32,
    pub egress: bool,
    pub path: PathBuf,
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs writes only the struct we pass; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// CAP_SYS_ADMIN in the effective set (bit 21 of CapEff): without it the
/// probe does not even try mount(2), which its unit's syscall filter denies.
fn has_cap_sys_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim().to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 21) != 0)
}

/// Mount bpffs at `mnt` (needs CAP_SYS_ADMIN).
fn mount_bpffs(mnt: &Path) -> std::io::Result<()> {
    let target = CString::new(mnt.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: all arguments are NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, c"mode=0700".as_ptr().cast()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl StateDir {
    /// The directory as given, without touching it (for `detach`/`status`).
    pub fn at(path: &Path) -> Self {
        StateDir { path: path.to_path_buf() }
    }

    /// Make `path` a usable state directory: its parent must be bpffs (a
    /// `/sys/fs/bpf` that is not mounted yet is mounted when the probe may),
    /// the directory is created 0700 and must be writable. `Err` says why
    /// pinning is not possible; the caller then runs without pins.
    pub fn prepare(path: &Path) -> Result<Self> {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("/"));
        if !is_bpffs(parent) && !is_bpffs(path) {
            if parent == Path::new("/sys/fs/bpf") {
                if !has_cap_sys_admin() {
                    bail!(
                        "/sys/fs/bpf is not a mounted bpffs and mounting one needs CAP_SYS_ADMIN \
                         (`mount -t bpf bpf /sys/fs/bpf` as root, or ExecStartPre=+ in the unit)"
                    );
                }
                // Probes starting together must not stack two mounts (the
                // second would hide the first one's pins): check again
                // under a lock on the mount point itself.
                let mnt = std::fs::File::open(parent).with_context(|| format!("opening {}", parent.display()))?;
                // SAFETY: flock on a descriptor we own; released on close.
                unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&mnt), libc::LOCK_EX) };
                if is_bpffs(parent) {
                    return Self::prepare(path);
                }
                mount_bpffs(parent).with_context(|| {
                    "/sys/fs/bpf is not a mounted bpffs and mounting it failed (needs CAP_SYS_ADMIN; \
                     `mount -t bpf bpf /sys/fs/bpf` as root fixes it)"
                })?;
            } else {
                bail!("{} is not on a bpffs", parent.display());
            }
        }
        match std::fs::create_dir(path) {
            Ok(()) => {
                std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                    .with_context(|| format!("chmod 0700 {}", path.display()))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
        let c = CString::new(path.as_os_str().as_bytes()).context("state dir path has a NUL byte")?;
        // SAFETY: access(2) reads the NUL-terminated path only.
        if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
            bail!("{} is not writable: {}", path.display(), std::io::Error::last_os_error());
        }
        Ok(StateDir { path: path.to_path_buf() })
    }

    /// One probe per state directory: a second one would switch the first
    /// one's links to its programs and split the ring's events.
    pub fn lock(&self) -> Result<std::fs::File> {
        let f = std::fs::File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "another upstreamtop-probe uses {} ({}); give this one its own --state-dir, or --no-pin",
                self.path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn map_pin(&self, name: &str) -> PathBuf {
        self.path.join(format!("map_{name}"))
    }

    pub fn link_pin(&self, ifindex: u32, egress: bool) -> PathBuf {
        self.path.join(format!("link_{ifindex}_{}", if egress { "egress" } else { "ingress" }))
    }

    /// The fingerprint the pins were made with; `None` without (complete) pins.
    pub fn fingerprint(&self) -> Option<u64> {
        let map = MapHandle::from_pinned_path(self.path.join(META)).ok()?;
        let v = map.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).ok()??;
        Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?))
    }

    /// Record the fingerprint: written last, so its presence means the map
    /// pins are complete.
    pub fn set_fingerprint(&self, fp: u64) -> Result<()> {
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        let mut map = MapHandle::create(MapType::Array, Some("ut_meta"), 4, 8, 1, &opts)
            .context("creating the state fingerprint map")?;
        map.update(&0u32.to_ne_bytes(), &fp.to_ne_bytes(), MapFlags::ANY).context("writing the state fingerprint")?;
        let _ = std::fs::remove_file(self.path.join(META));
        map.pin(self.path.join(META)).context("pinning the state fingerprint")?;
        Ok(())
    }

    /// The pinned links, by name.
    pub fn links(&self) -> Result<Vec<PinnedLink>> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.path) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("listing {}", self.path.display())),
        };
        for ent in rd {
            let ent = ent.with_context(|| format!("listing {}", self.path.display()))?;
            let name = ent.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("link_")) else { continue };
            let Some((idx, dir)) = rest.split_once('_') else { continue };
            let (Ok(ifindex), true) = (idx.parse::<u32>(), dir == "egress" || dir == "ingress") else {
                continue;
            };
            out.push(PinnedLink { ifindex, egress: dir == "egress", path: ent.path() });
        }
        out.sort_by_key(|l| (l.ifindex, !l.egress));
        Ok(out)
    }

    /// Detach every pinned link and remove every pin (and the directory
    /// with `remove_dir`). Returns how many links were detached.
    pub fn clear(&self, remove_dir: bool) -> Result<usize> {
        let mut detached = 0;
        for l in self.links()? {
            match Link::open(&l.path) {
                Ok(link) => {
                    // A link whose interface vanished is defunct already.
                    if link.detach().is_ok() {
                        detached += 1;
                    }
                }
                Err(e) => eprintln!("upstreamtop-probe: opening {}: {e}", l.path.display()),
            }
            std::fs::remove_file(&l.path).with_context(|| format!("removing {}", l.path.display()))?;
        }
        // The fingerprint goes first: maps without it are never reused.
        // Names are collected before removing (a directory read while its
        // entries go away may skip some).
        let maps: Vec<String> = std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.starts_with("map_"))
            .collect();
        for name in std::iter::once(META.to_string()).chain(maps) {
            match std::fs::remove_file(self.path.join(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}/{name}", self.path.display())),
            }
        }
        if !remove_dir {
            return Ok(detached);
        }
        match std::fs::remove_dir(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", self.path.display())),
        }
        Ok(detached)
    }
}

/// FNV-1a, stable across builds and Rust versions (the fingerprint must
/// mean the same to the next binary).
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_the_reference_fnv1a() {
        let mut h = Fnv::default();
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn link_pins_are_named_by_ifindex_and_direction() {
        let sd = StateDir::at(Path::new("/sys/fs/bpf/x"));
        assert_eq!(sd.link_pin(3, true), Path::new("/sys/fs/bpf/x/link_3_egress"));
        assert_eq!(sd.map_pin("bss"), Path::new("/sys/fs/bpf/x/map_bss"));
    }
}
