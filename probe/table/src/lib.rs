//! The upstreamtop shared-memory table.
//!
//! One file (default `/run/upstreamtop/table`) carries what the probe saw on
//! the wire: a versioned header followed by fixed-size records. The probe
//! writes it with [`TableWriter`]; every nginx worker (and the dashboard's
//! `--table` mode) reads it with [`TableReader`]. Both sides speak in
//! [`Snapshot`], the owned Rust view of one publish.
//!
//! The writer maps the file and double-buffers with per-slot sequence
//! numbers; readers `pread` (never map) so a file truncated under them
//! cannot SIGBUS an nginx worker. The byte layout lives in [`layout`].
//! Readers that only turn figures into text can skip decoding with
//! [`TableReader::view_unless`] ([`SnapshotView`]: the same checks, fields
//! read in place).

pub mod histogram;
pub mod layout;
mod records;
pub mod snapshot;

pub use snapshot::*;
pub mod reader;
pub mod view;
pub mod writer;

pub use reader::{PublishId, ReadError, TableReader};
pub use view::{PeerView, RecentView, ResponsesView, RouteView, SnapshotView};
pub use writer::{Capacities, PublishReport, TableWriter};

#[cfg(test)]
mod tests;
