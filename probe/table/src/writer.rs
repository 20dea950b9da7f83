//! The probe's side: create the table file and publish snapshots into it.
//!
//! The writer maps the file read-write and double-buffers: each publish
//! fills the slot readers are *not* told about (its sequence number odd
//! while it is being written, even after), then flips `active` to it.
//! Readers never take a lock, so the writer never waits for them. Which
//! slot is active and each slot's sequence number live in the writer's own
//! memory: it stores them into the file but never reads them back, so
//! someone else editing the file cannot steer it.
//!
//! A new table is built under a temporary name next to the path and renamed
//! over it by the first publish: a probe that fails or is killed before
//! publishing leaves the previous table (the totals the next run continues
//! from) in place.

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU64, Ordering};

use memmap2::MmapMut;

use crate::layout::*;
use crate::records;
use crate::Snapshot;

/// Fixed capacities of a table file, chosen by the probe's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacities {
    pub max_peers: u32,
    pub max_routes: u32,
    pub max_recent: u32,
    pub history_len: u32,
}

/// What a publish had to leave out because a list exceeded its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublishReport {
    pub peers_truncated: u64,
    /// Routes beyond `max_routes`, plus routes of peers that were truncated.
    pub routes_truncated: u64,
    /// Oldest recent requests beyond `max_recent`.
    pub recent_truncated: u64,
    /// Oldest history samples beyond `history_len`, summed over peers.
    pub history_truncated: u64,
    /// Distinct exact status codes beyond the per-record limits (32 per
    /// peer, 8 per route), summed over records. Their counts are folded
    /// into `codes_other`, so class totals stay exact.
    pub codes_folded: u64,
    /// Interface names beyond the limit of 16.
    pub interfaces_truncated: u64,
}

/// Writes snapshots into the table file.
pub struct TableWriter {
    path: PathBuf,
    /// The temporary file the table is built in until the first publish
    /// renames it to `path` (removed if the writer is dropped before).
    pending: Option<PathBuf>,
    map: MmapMut,
    caps: Capacities,
    slot_off: [usize; 2],
    slot_size: usize,
    generation: u64,
    /// The slot readers are told to read (0 until the first publish).
    active: usize,
    /// Each slot's sequence number as this writer last stored it.
    seq: [u64; 2],
}

fn err_at(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// `.<name>.<pid>.<16 hex digits>.tmp`: hidden, unique per attempt, and
/// the pid says whether its writer is still alive.
fn temp_name(file_name: &OsStr) -> std::ffi::OsString {
    let mut n = std::ffi::OsString::from(".");
    n.push(file_name);
    n.push(format!(".{}.{:016x}.tmp", std::process::id(), random_u64()));
    n
}

/// The pid in a temporary name [`temp_name`] made for `file_name`.
fn temp_owner(candidate: &OsStr, file_name: &OsStr) -> Option<u32> {
    let rest = candidate.as_bytes().strip_prefix(b".")?.strip_prefix(file_name.as_bytes())?;
    let rest = std::str::from_utf8(rest).ok()?.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (pid, random) = rest.split_once('.')?;
    (random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit())).then_some(())?;
    pid.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    // EPERM: it exists, under another user.
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes temporary tables that writers killed before their first publish
/// (kill -9 runs no destructor) left in `dir`. Best effort: a leftover is
/// only disk space, and never read.
fn remove_leftovers(dir: &Path, file_name: &OsStr) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        match temp_owner(&name, file_name) {
            Some(pid) if !process_alive(pid) => {
                // remove_file unlinks a symlink itself, never its target.
                let _ = fs::remove_file(entry.path());
            }
            _ => {}
        }
    }
}

fn random_u64() -> u64 {
    // RandomState is seeded from the OS; mix in time and pid so two tables
    // created in the same process still differ.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}

impl TableWriter {
    /// Prepare a table for `path` with a new generation. The directory is
    /// created 0755 if missing; the table is built in a temporary file (0644)
    /// next to `path` and nothing at `path` changes until the first
    /// [`publish`](Self::publish) renames it there, atomically replacing the
    /// previous table. Dropping the writer before that removes the temporary
    /// file.
    pub fn create(path: &Path, caps: Capacities) -> io::Result<Self> {
        let slot_size =
            slot_size(caps.max_peers, caps.max_routes, caps.max_recent, caps.history_len).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "table {}: capacities {caps:?} need more than {MAX_SLOT_SIZE} bytes per slot",
                        path.display()
                    ),
                )
            })?;
        let file_size = HEADER_SIZE + 2 * slot_size;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)
                    .map_err(|e| err_at(dir, "creating directory", e))?;
                // The mode above is filtered by the umask; nginx workers
                // (another user) must be able to reach the file.
                fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                    .map_err(|e| err_at(dir, "setting permissions of", e))?;
            }
        }
        let file_name = path.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("table path {} has no file name", path.display()))
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        remove_leftovers(dir, file_name);
        let tmp = path.with_file_name(temp_name(file_name));

        // Exclusive and not following a symlink: the name is fresh, and
        // whatever someone may have put there is refused, never truncated
        // or written through.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| err_at(&tmp, "creating", e))?;
        let build = || -> io::Result<(MmapMut, u64)> {
            // Readable by nginx workers whatever the probe's umask.
            file.set_permissions(fs::Permissions::from_mode(0o644))
                .map_err(|e| err_at(&tmp, "setting permissions of", e))?;
            file.set_len(file_size).map_err(|e| err_at(&tmp, "sizing", e))?;
            // SAFETY: we just created this file (O_EXCL) and only this
            // writer maps it writable; readers use pread and never map it.
            let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| err_at(&tmp, "mapping", e))?;
            let generation = random_u64();
            let mut h = RecordWriter::new(&mut map[..HEADER_READ]);
            h.bytes(H_MAGIC, &MAGIC);
            h.u32(H_VERSION, ABI_VERSION);
            h.u32(H_HEADER_SIZE, HEADER_SIZE as u32);
            h.u64(H_FILE_SIZE, file_size);
            h.u64(H_GENERATION, generation);
            h.u32(H_MAX_PEERS, caps.max_peers);
            h.u32(H_MAX_ROUTES, caps.max_routes);
            h.u32(H_MAX_RECENT, caps.max_recent);
            h.u32(H_HISTORY_LEN, caps.history_len);
            h.u32(H_PEER_REC, PEER_REC_SIZE as u32);
            h.u32(H_ROUTE_REC, ROUTE_REC_SIZE as u32);
            h.u32(H_RECENT_REC, RECENT_REC_SIZE as u32);
            h.u32(H_HISTORY_REC, HISTORY_REC_SIZE as u32);
            h.u32(H_BUCKETS, crate::histogram::BUCKETS as u32);
            h.u32(H_PEER_CODES, PEER_CODES as u32);
            h.u32(H_ROUTE_CODES, ROUTE_CODES as u32);
            h.u32(H_MAX_IFACES, MAX_IFACES as u32);
            h.u64(H_SLOT0, HEADER_SIZE);
            h.u64(H_SLOT1, HEADER_SIZE + slot_size);
            h.u64(H_SLOT_SIZE, slot_size);
            // active = 0, seq = [0, 0]: "never published" (the file is zeroed).
            Ok((map, generation))
        };
        let (map, generation) = match build() {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        Ok(TableWriter {
            path: path.to_owned(),
            pending: Some(tmp),
            map,
            caps,
            slot_off: [HEADER_SIZE as usize, (HEADER_SIZE + slot_size) as usize],
            slot_size: slot_size as usize,
            generation,
            active: 0,
            seq: [0, 0],
        })
    }

    /// The path the table is published at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the table is at [`Self::path`] yet (after the first
    /// successful publish).
    pub fn is_published(&self) -> bool {
        self.pending.is_none()
    }

    /// The random generation stamped into this file's header.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn capacities(&self) -> Capacities {
        self.caps
    }

    /// The header word at `off` as an atomic (only this writer stores to it).
    fn atomic(map: &mut MmapMut, off: usize) -> &AtomicU64 {
        assert!(off.is_multiple_of(8) && off + 8 <= HEADER_READ);
        // SAFETY: the map is page-aligned and at least HEADER_SIZE long, `off`
        // is 8-aligned inside the header, and the returned reference borrows
        // the map. Other processes read these words with pread, never
        // through references into our memory.
        unsafe { AtomicU64::from_ptr(map.as_mut_ptr().add(off).cast::<u64>()) }
    }

    /// Publish one snapshot (seqlock-protected; never waits for readers).
    /// Lists beyond the capacities are truncated and counted in the report.
    ///
    /// The snapshot is encoded straight into the inactive slot of the
    /// mapping: no slot-sized buffer beside the file (megabytes of the
    /// probe's RSS at large capacities).
    ///
    /// The first publish renames the table to its path; if that fails the
    /// error is returned, nothing at the path has changed, and the next
    /// publish tries again.
    pub fn publish(&mut self, snap: &Snapshot) -> io::Result<PublishReport> {
        // From our own memory, not the file: a value someone wrote there
        // must not pick the slot or the sequence number.
        let target = 1 - self.active;
        let busy = self.seq[target] + 1;
        debug_assert!(busy & 1 == 1);
        // Odd: a reader still looking at this slot (from an older `active`)
        // sees the change and retries.
        Self::atomic(&mut self.map, H_SEQ[target]).store(busy, Ordering::Relaxed);
        fence(Ordering::Release);
        let off = self.slot_off[target];
        let report = Self::encode(self.caps, snap, &mut self.map[off..off + self.slot_size]);
        self.seq[target] = busy + 1;
        Self::atomic(&mut self.map, H_SEQ[target]).store(self.seq[target], Ordering::Release);
        self.active = target;
        Self::atomic(&mut self.map, H_ACTIVE).store(target as u64, Ordering::Release);
        if let Some(tmp) = &self.pending {
            // Readers see the whole file appear at once, already published.
            fs::rename(tmp, &self.path)
                .map_err(|e| err_at(&self.path, &format!("renaming {} to", tmp.display()), e))?;
            self.pending = None;
        }
        Ok(report)
    }

    /// Encodes `snap` (bounded by `caps`) into `slot`: slot header + body.
    fn encode(caps: Capacities, snap: &Snapshot, slot: &mut [u8]) -> PublishReport {
        let mut rep = PublishReport::default();
        let n_peers = snap.peers.len().min(caps.max_peers as usize);
        rep.peers_truncated = (snap.peers.len() - n_peers) as u64;
        let mut routes: Vec<_> = snap.routes.iter().filter(|r| (r.peer as usize) < n_peers).collect();
        rep.routes_truncated = (snap.routes.len() - routes.len()) as u64;
        if routes.len() > caps.max_routes as usize {
            rep.routes_truncated += (routes.len() - caps.max_routes as usize) as u64;
            routes.truncate(caps.max_routes as usize);
        }
        // `recent` is oldest first: keep the newest.
        let n_recent = snap.recent.len().min(caps.max_recent as usize);
        rep.recent_truncated = (snap.recent.len() - n_recent) as u64;
        let recent = &snap.recent[snap.recent.len() - n_recent..];
        let n_ifaces = snap.meta.interfaces.len().min(MAX_IFACES);
        rep.interfaces_truncated = (snap.meta.interfaces.len() - n_ifaces) as u64;

        let hist_len = caps.history_len as usize;
        // The fixed-size records, then the pool they point into.
        let fixed = body_len(n_peers as u64, caps.history_len as u64, routes.len() as u64, n_recent as u64)
            .expect("counts bounded by the capacities") as usize;
        let (records, pool_area) = slot.split_at_mut(SLOT_HEADER_SIZE as usize + fixed);
        let mut e = Enc::new(records);
        let mut pool = Enc::new(pool_area);
        // Used length, pool length and checksum are filled in below.
        let counts = records::Counts { ifaces: n_ifaces, peers: n_peers, routes: routes.len(), recent: n_recent };
        records::enc_slot_head(&mut e, &snap.meta, &counts);

        for p in &snap.peers[..n_peers] {
            let h = p.history.len().min(hist_len);
            rep.codes_folded += records::enc_peer(&mut e, &mut pool, p, h as u32);
        }
        for p in &snap.peers[..n_peers] {
            // Oldest first: keep the newest `history_len` samples.
            let keep = &p.history[p.history.len() - p.history.len().min(hist_len)..];
            rep.history_truncated += (p.history.len() - keep.len()) as u64;
            for s in keep {
                records::enc_history(&mut e, s);
            }
            e.zeros((hist_len - keep.len()) * HISTORY_REC_SIZE);
        }
        for r in &routes {
            rep.codes_folded += records::enc_route(&mut e, &mut pool, r);
        }
        for r in recent {
            records::enc_recent(&mut e, r);
        }
        debug_assert_eq!(e.pos(), SLOT_HEADER_SIZE as usize + fixed);
        let pool_len = pool.pos();
        let used = (fixed + pool_len) as u64;
        let buf = &mut slot[..SLOT_HEADER_SIZE as usize + fixed + pool_len];
        buf[S_USED..S_USED + 8].copy_from_slice(&used.to_le_bytes());
        buf[S_POOL_LEN..S_POOL_LEN + 8].copy_from_slice(&(pool_len as u64).to_le_bytes());
        let sum = checksum(&[&buf[S_CHECKSUMMED_FROM..]]);
        buf[S_CHECKSUM..S_CHECKSUM + 8].copy_from_slice(&sum.to_le_bytes());
        rep
    }
}

impl Drop for TableWriter {
    /// A table never published is never shown: its temporary file goes.
    fn drop(&mut self) {
        if let Some(tmp) = self.pending.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}
