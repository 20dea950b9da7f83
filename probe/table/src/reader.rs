//! The readers' side: take consistent snapshots of the table.
//!
//! This runs inside every nginx worker, so it must never crash, block or
//! write. It therefore does **not** map the file: a mapping of a file that
//! someone truncates turns the next access into SIGBUS, which would kill the
//! worker. Instead each [`TableReader::snapshot`] `pread`s the header and
//! the used part of the active slot into a private buffer and decodes from
//! there, validating every length, count and offset against the header and
//! the file size. (The writer side is the mmap; this side costs one copy of
//! a few MB at most.)
//!
//! Consistency: read `active` and that slot's sequence number (retry if odd),
//! copy the slot, re-read the sequence number (retry if it moved), then check
//! the slot checksum. After [`MAX_ATTEMPTS`] tries the answer is
//! [`ReadError::Busy`]. The probe replaces the file by rename when it
//! restarts, so the reader re-opens when the path's inode changes.
//!
//! Whatever sits at the path is untrusted: the reader opens it
//! `O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC` and reads it only if the
//! open descriptor is a regular file, so a FIFO swapped in cannot block a
//! worker and a symlink is not followed ([`ReadError::NotRegular`]). A file
//! larger than [`MAX_FILE_SIZE`], or of another size than its header's
//! capacities imply, is refused before anything but the header is read,
//! so no file makes a reader allocate more than one slot of at most
//! [`MAX_SLOT_SIZE`]; a buffer grown for a file that then turned out bad
//! is released.

use std::fmt;
use std::fs::{self, File, FileType, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::layout::*;
use crate::slot::PublishId;
use crate::view::SnapshotView;
use crate::Snapshot;

/// Read attempts before giving up with [`ReadError::Busy`].
pub const MAX_ATTEMPTS: usize = 8;

/// Why a snapshot could not be read. `Display` gives a one-line reason fit
/// for an HTTP 503 body, e.g. `probe not running: /run/upstreamtop/table missing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    Missing(PathBuf),
    Io(PathBuf, String),
    BadMagic(PathBuf),
    WrongVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    Truncated(PathBuf),
    Corrupt(PathBuf, String),
    /// The writer kept the slot busy through every retry.
    Busy(PathBuf),
    /// The probe created the table but has not published into it yet.
    NotPublished(PathBuf),
    /// Something other than a regular file is at the path (`what`: "a
    /// FIFO", "a symbolic link", ...): refused without reading it.
    NotRegular {
        path: PathBuf,
        what: &'static str,
    },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Missing(p) => write!(f, "probe not running: {} missing", p.display()),
            ReadError::Io(p, e) => write!(f, "cannot read table {}: {e}", p.display()),
            ReadError::BadMagic(p) => write!(f, "{} is not an upstreamtop table (bad magic)", p.display()),
            ReadError::WrongVersion { path, found, expected } => write!(
                f,
                "table {} has wrong ABI version {found} (expected {expected}): upgrade the module or the probe",
                path.display()
            ),
            ReadError::Truncated(p) => write!(f, "table {} is truncated", p.display()),
            ReadError::Corrupt(p, e) => write!(f, "table {} is corrupt: {e}", p.display()),
            ReadError::Busy(p) => {
                write!(f, "table {} busy: the probe rewrote it during {MAX_ATTEMPTS} read attempts", p.display())
            }
            ReadError::NotPublished(p) => write!(f, "probe starting: table {} not published yet", p.display()),
            ReadError::NotRegular { path, what } => {
                write!(f, "table {} is {what}, not a regular file: refused", path.display())
            }
        }
    }
}

impl std::error::Error for ReadError {}

struct OpenTable {
    file: File,
    dev: u64,
    ino: u64,
}

/// Reads the table with `pread`; re-opens when the probe replaces the file.
pub struct TableReader {
    path: PathBuf,
    open: Option<OpenTable>,
    generation: Option<u64>,
    /// Reused copy of the active slot.
    buf: Vec<u8>,
    /// The last snapshot decoded and which publish it was, for [`Self::latest`].
    cached: Option<(PublishId, Arc<Snapshot>)>,
}

/// A slot copy in the reader's buffer whose sequence number held and whose
/// checksum matched.
#[derive(Debug, Clone, Copy)]
struct Verified {
    id: PublishId,
    /// History ring length (the per-peer stride of the history array).
    stride: u32,
    /// Bytes of the buffer holding the slot header and used body.
    len: usize,
}

/// What one successful read attempt found.
enum Fresh {
    /// The publish the caller already knows.
    Unchanged,
    Copied(Verified),
}

/// The validated file header.
struct Header {
    generation: u64,
    max_peers: u32,
    max_routes: u32,
    max_recent: u32,
    history_len: u32,
    slot_off: [u64; 2],
    slot_size: u64,
    active: u64,
    seq: [u64; 2],
}

/// Outcome of one read attempt that did not produce a snapshot.
enum Attempt {
    /// Raced with the writer: try again.
    Retry,
    Fail(ReadError),
}

impl From<ReadError> for Attempt {
    fn from(e: ReadError) -> Self {
        Attempt::Fail(e)
    }
}

/// What a non-regular file is, for [`ReadError::NotRegular`].
fn file_kind(t: FileType) -> &'static str {
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

fn io_error(path: &Path, e: io::Error) -> ReadError {
    match e.kind() {
        io::ErrorKind::NotFound => ReadError::Missing(path.to_owned()),
        io::ErrorKind::UnexpectedEof => ReadError::Truncated(path.to_owned()),
        _ => ReadError::Io(path.to_owned(), e.to_string()),
    }
}

/// Opens the table at `path` for reading, and only a regular file:
/// `O_NONBLOCK` so that a FIFO (or a device) swapped in after the caller
/// looked cannot block the open, `O_NOFOLLOW` so that a symlink is refused
/// (`ELOOP`) rather than followed, `O_CLOEXEC` so that no child of an nginx
/// worker inherits it. The type is checked on the open descriptor (fstat),
/// which is what is read from then on.
pub(crate) fn open_table(path: &Path) -> Result<(File, fs::Metadata), ReadError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => ReadError::NotRegular { path: path.to_owned(), what: "a symbolic link" },
            _ => io_error(path, e),
        })?;
    let meta = file.metadata().map_err(|e| io_error(path, e))?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular { path: path.to_owned(), what: file_kind(meta.file_type()) });
    }
    Ok((file, meta))
}

impl TableReader {
    /// Never fails: a missing file is reported by `snapshot()`.
    pub fn new(path: &Path) -> Self {
        TableReader { path: path.to_owned(), open: None, generation: None, buf: Vec::new(), cached: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Generation of the table last read successfully (changes when the
    /// probe restarts and re-creates the file).
    pub fn generation(&self) -> Option<u64> {
        self.generation
    }

    /// A consistent snapshot of the latest publish. Never blocks, never
    /// writes, never panics on any file content.
    pub fn snapshot(&mut self) -> Result<Snapshot, ReadError> {
        self.ensure_open()?;
        // With nothing known, every successful attempt copies.
        match self.read_loop(None)? {
            Fresh::Copied(v) => self.decode(v),
            Fresh::Unchanged => Err(ReadError::Busy(self.path.clone())),
        }
    }

    /// A borrowed, validated view of the latest publish if it is new to the
    /// caller: `Ok(None)` when the newest publish is `known` (then only the
    /// file header was read); `None` for `known` always gives a view.
    /// Unlike [`Self::snapshot`] nothing is decoded up front: readers that
    /// only render the figures (the nginx module) skip allocating a
    /// [`Snapshot`] of tens of thousands of strings and vectors per publish,
    /// and keep what they rendered keyed by [`SnapshotView::id`].
    pub fn view_if_new(&mut self, known: Option<PublishId>) -> Result<Option<SnapshotView<'_>>, ReadError> {
        self.ensure_open()?;
        match self.read_loop(known)? {
            Fresh::Unchanged => Ok(None),
            Fresh::Copied(v) => match SnapshotView::new(&self.buf[..v.len], v.stride, v.id) {
                Ok(view) => Ok(Some(view)),
                Err(e) => Err(ReadError::Corrupt(self.path.clone(), e)),
            },
        }
    }

    fn decode(&self, v: Verified) -> Result<Snapshot, ReadError> {
        decode_slot(&self.buf[..v.len], v.stride, v.id).map_err(|e| self.corrupt(e))
    }

    /// Like [`Self::snapshot`], but shares the decoded snapshot: while the
    /// probe has not published again, this costs a header read, not a copy
    /// and decode of the whole slot (megabytes for a thousand peers).
    pub fn latest(&mut self) -> Result<Arc<Snapshot>, ReadError> {
        self.ensure_open()?;
        let known = self.cached.as_ref().map(|(id, _)| *id);
        match self.read_loop(known)? {
            Fresh::Unchanged => match &self.cached {
                Some((_, s)) => Ok(s.clone()),
                None => Err(ReadError::Busy(self.path.clone())),
            },
            Fresh::Copied(v) => {
                let s = Arc::new(self.decode(v)?);
                self.cached = Some((v.id, s.clone()));
                Ok(s)
            }
        }
    }

    /// Retries [`Self::attempt`].
    fn read_loop(&mut self, known: Option<PublishId>) -> Result<Fresh, ReadError> {
        for attempt in 0..MAX_ATTEMPTS {
            match self.attempt(known) {
                Ok(s) => return Ok(s),
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry) => {
                    if attempt > 0 {
                        std::thread::yield_now();
                    }
                }
            }
        }
        Err(ReadError::Busy(self.path.clone()))
    }

    fn io_err(&self, e: io::Error) -> ReadError {
        io_error(&self.path, e)
    }

    /// Opens the file, or re-opens it when the path now names another inode.
    fn ensure_open(&mut self) -> Result<(), ReadError> {
        // lstat: a symlink swapped in at the path is seen as what it is.
        let meta = match fs::symlink_metadata(&self.path) {
            Ok(m) => m,
            Err(e) => {
                self.open = None;
                return Err(self.io_err(e));
            }
        };
        if let Some(o) = &self.open {
            if o.dev == meta.dev() && o.ino == meta.ino() {
                return Ok(());
            }
        }
        self.open = None;
        // Anything but a regular file is refused without opening it
        // (opening some devices has side effects); open_table checks again
        // on the descriptor, in case the path changed in between.
        if !meta.is_file() {
            return Err(ReadError::NotRegular { path: self.path.clone(), what: file_kind(meta.file_type()) });
        }
        let (file, meta) = open_table(&self.path)?;
        self.open = Some(OpenTable { file, dev: meta.dev(), ino: meta.ino() });
        Ok(())
    }

    /// Capacity of the reused slot buffer (tests check that a hostile
    /// file did not make it grow).
    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    fn file(&self) -> Result<&File, ReadError> {
        self.open.as_ref().map(|o| &o.file).ok_or_else(|| ReadError::Missing(self.path.clone()))
    }

    fn corrupt(&self, what: impl Into<String>) -> ReadError {
        ReadError::Corrupt(self.path.clone(), what.into())
    }

    fn read_header(&self) -> Result<Header, ReadError> {
        let file = self.file()?;
        // fstat of the open descriptor: the file being read, whatever the
        // path names by now.
        let len = file.metadata().map_err(|e| self.io_err(e))?.len();
        if len > MAX_FILE_SIZE {
            return Err(self.corrupt(format!("file is {len} bytes, more than any table (at most {MAX_FILE_SIZE})")));
        }
        let mut h = [0u8; HEADER_READ];
        let n = read_up_to(file, &mut h, 0).map_err(|e| self.io_err(e))?;
        if n < 8 || h[H_MAGIC..H_MAGIC + 8] != MAGIC {
            return Err(if n < 8 {
                ReadError::Truncated(self.path.clone())
            } else {
                ReadError::BadMagic(self.path.clone())
            });
        }
        if n < 12 {
            return Err(ReadError::Truncated(self.path.clone()));
        }
        let version = u32_at(&h, H_VERSION);
        if version != ABI_VERSION {
            return Err(ReadError::WrongVersion { path: self.path.clone(), found: version, expected: ABI_VERSION });
        }
        if n < HEADER_READ {
            return Err(ReadError::Truncated(self.path.clone()));
        }
        let expect = [
            (H_HEADER_SIZE, HEADER_SIZE as u32, "header size"),
            (H_PEER_REC, PEER_REC_SIZE as u32, "peer record size"),
            (H_ROUTE_REC, ROUTE_REC_SIZE as u32, "route record size"),
            (H_RECENT_REC, RECENT_REC_SIZE as u32, "recent record size"),
            (H_HISTORY_REC, HISTORY_REC_SIZE as u32, "history record size"),
            (H_BUCKETS, crate::histogram::BUCKETS as u32, "latency buckets"),
            (H_PEER_CODES, PEER_CODES as u32, "codes per peer"),
            (H_ROUTE_CODES, ROUTE_CODES as u32, "codes per route"),
            (H_MAX_IFACES, MAX_IFACES as u32, "interface slots"),
        ];
        for (off, want, what) in expect {
            let got = u32_at(&h, off);
            if got != want {
                return Err(self.corrupt(format!("{what} {got} (expected {want}): probe and reader builds differ")));
            }
        }
        let hd = Header {
            generation: u64_at(&h, H_GENERATION),
            max_peers: u32_at(&h, H_MAX_PEERS),
            max_routes: u32_at(&h, H_MAX_ROUTES),
            max_recent: u32_at(&h, H_MAX_RECENT),
            history_len: u32_at(&h, H_HISTORY_LEN),
            slot_off: [u64_at(&h, H_SLOT0), u64_at(&h, H_SLOT1)],
            slot_size: u64_at(&h, H_SLOT_SIZE),
            active: u64_at(&h, H_ACTIVE),
            seq: [u64_at(&h, H_SEQ[0]), u64_at(&h, H_SEQ[1])],
        };
        let want_slot = slot_size(hd.max_peers, hd.max_routes, hd.max_recent, hd.history_len).ok_or_else(|| {
            self.corrupt(format!(
                "capacities ({} peers, {} routes, {} recent, history {}) need slots over {MAX_SLOT_SIZE} bytes",
                hd.max_peers, hd.max_routes, hd.max_recent, hd.history_len
            ))
        })?;
        if hd.slot_size != want_slot || hd.slot_off[0] != HEADER_SIZE || hd.slot_off[1] != HEADER_SIZE + want_slot {
            return Err(self.corrupt("slot layout does not match capacities"));
        }
        let file_size = u64_at(&h, H_FILE_SIZE);
        if file_size != HEADER_SIZE + 2 * want_slot {
            return Err(
                self.corrupt(format!("header says {file_size} bytes, capacities need {}", HEADER_SIZE + 2 * want_slot))
            );
        }
        if len < file_size {
            return Err(ReadError::Truncated(self.path.clone()));
        }
        if len > file_size {
            return Err(self.corrupt(format!("file is {len} bytes, header says {file_size}")));
        }
        if hd.active > 1 {
            return Err(self.corrupt(format!("active slot {}", hd.active)));
        }
        Ok(hd)
    }

    fn attempt(&mut self, known: Option<PublishId>) -> Result<Fresh, Attempt> {
        let hd = self.read_header()?;
        self.generation = Some(hd.generation);
        let a = hd.active as usize;
        let seq = hd.seq[a];
        if seq == 0 {
            return Err(ReadError::NotPublished(self.path.clone()).into());
        }
        if seq & 1 == 1 {
            return Err(Attempt::Retry);
        }
        let (dev, ino) = self.open.as_ref().map_or((0, 0), |o| (o.dev, o.ino));
        let id = PublishId { dev, ino, generation: hd.generation, active: hd.active, seq };
        if known == Some(id) {
            return Ok(Fresh::Unchanged);
        }
        let mut buf = std::mem::take(&mut self.buf);
        let res = self.copy_slot(&hd, &mut buf).and_then(|copied| {
            // Re-check the sequence number before trusting (or blaming) the copy.
            let mut s = [0u8; 8];
            self.file()?.read_exact_at(&mut s, H_SEQ[a] as u64).map_err(|e| self.io_err(e))?;
            if u64::from_le_bytes(s) != seq {
                return Err(Attempt::Retry);
            }
            let Some((len, sum)) = copied else {
                return Err(self.corrupt("active slot has an invalid body length").into());
            };
            if sum != u64_at(&buf, S_CHECKSUM) {
                return Err(self.corrupt("slot checksum mismatch").into());
            }
            Ok(Fresh::Copied(Verified { id, stride: hd.history_len, len }))
        });
        // A file refused after its slot was copied (a hostile one can claim
        // a slot of up to MAX_SLOT_SIZE) does not keep that memory.
        if !matches!(res, Err(Attempt::Fail(_))) {
            self.buf = buf;
        }
        res
    }

    /// Copies the active slot's header and used body into the start of
    /// `buf` and returns its length and checksum; `None` when the slot
    /// header's lengths are invalid (the caller re-checks the sequence
    /// number before calling that corruption).
    ///
    /// The body comes in chunks that fit the CPU's cache, each summed
    /// right after it arrived: the checksum then reads cache, not memory
    /// (the slot is megabytes).
    fn copy_slot(&self, hd: &Header, buf: &mut Vec<u8>) -> Result<Option<(usize, u64)>, Attempt> {
        const CHUNK: usize = 256 << 10;
        let file = self.file()?;
        let off = hd.slot_off[hd.active as usize];
        let head = SLOT_HEADER_SIZE as usize;
        grow(buf, head);
        file.read_exact_at(&mut buf[..head], off).map_err(|e| self.io_err(e))?;
        let used = u64_at(buf, S_USED);
        let pool = u64_at(buf, S_POOL_LEN);
        let counts = (u32_at(buf, S_N_PEERS), u32_at(buf, S_N_ROUTES), u32_at(buf, S_N_RECENT));
        let want = body_len(counts.0.into(), hd.history_len.into(), counts.1.into(), counts.2.into())
            .and_then(|fixed| fixed.checked_add(pool));
        let fits = counts.0 <= hd.max_peers
            && counts.1 <= hd.max_routes
            && counts.2 <= hd.max_recent
            && pool_cap(hd.max_peers, hd.max_routes).is_some_and(|cap| pool <= cap)
            && want == Some(used)
            && used <= hd.slot_size - SLOT_HEADER_SIZE;
        if !fits {
            return Ok(None);
        }
        let len = head + used as usize;
        grow(buf, len);
        let mut sum = Checksum::default();
        sum.update(&buf[S_CHECKSUMMED_FROM..head]);
        let mut at = head;
        while at < len {
            let end = (at + CHUNK).min(len);
            file.read_exact_at(&mut buf[at..end], off + at as u64).map_err(|e| self.io_err(e))?;
            sum.update(&buf[at..end]);
            at = end;
        }
        Ok(Some((len, sum.finish())))
    }
}

/// Makes `buf` at least `len` bytes long. It only ever grows, so steady
/// state reads zero nothing: pread overwrites the part that is used.
fn grow(buf: &mut Vec<u8>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0);
    }
}

/// `pread` as many bytes as the file has, up to `buf.len()`.
fn read_up_to(file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Decodes a checksummed slot copy (header + body whose length already
/// matches its counts): the view's checks, then its owned copy, so both
/// ways of reading accept and refuse exactly the same slots.
fn decode_slot(buf: &[u8], stride: u32, id: PublishId) -> DecResult<Snapshot> {
    SnapshotView::new(buf, stride, id).map(|v| v.to_snapshot())
}
