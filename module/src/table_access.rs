//! One [`TableReader`] per worker, kept between requests.
//!
//! nginx workers are single-threaded, so a thread-local is the whole
//! synchronisation story. The reader re-opens the file itself when the probe
//! replaces it; this file only makes sure a path change (another
//! `upstreamtop_table` after a reload in single-process mode) gets a fresh
//! reader, and that a reader which panicked is never used again.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use upstreamtop_table::{ReadError, Snapshot, TableReader};

thread_local! {
    static READER: RefCell<Option<(PathBuf, TableReader)>> = const { RefCell::new(None) };
}

/// A snapshot of the table at `path`.
///
/// May panic if the reader does (the caller catches it); the reader is taken
/// out of the slot while in use, so a panic drops it and the next request
/// starts from a fresh one.
pub(crate) fn snapshot(path: &Path) -> Result<Snapshot, ReadError> {
    let slot = READER.with(|cell| cell.borrow_mut().take());
    let mut reader = match slot {
        Some((p, reader)) if p == path => reader,
        _ => TableReader::new(path),
    };
    let result = reader.snapshot();
    READER.with(|cell| *cell.borrow_mut() = Some((path.to_owned(), reader)));
    result
}
