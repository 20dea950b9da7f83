//! The readers' side: map the table read-only and take consistent snapshots.
//! (Implementation: see the table issue; this is the agreed API.)

use std::path::{Path, PathBuf};

use crate::Snapshot;

/// Why a snapshot could not be read. `Display` gives a one-line reason fit
/// for an HTTP 503 body, e.g. `probe not running: /run/upstreamtop/table missing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    Missing(PathBuf),
    Io(PathBuf, String),
    BadMagic(PathBuf),
    WrongVersion { path: PathBuf, found: u32, expected: u32 },
    Truncated(PathBuf),
    Corrupt(PathBuf, String),
    /// The writer kept the slot busy through every retry.
    Busy(PathBuf),
}

/// Maps the table read-only; re-opens when the probe replaces the file.
pub struct TableReader {
    _path: PathBuf,
}

impl TableReader {
    /// Never fails: a missing file is reported by `snapshot()`.
    pub fn new(path: &Path) -> Self {
        TableReader { _path: path.to_owned() }
    }

    /// A consistent snapshot of the latest publish. Never blocks, never
    /// writes, never panics on any file content.
    pub fn snapshot(&mut self) -> Result<Snapshot, ReadError> {
        unimplemented!("table reader")
    }
}
