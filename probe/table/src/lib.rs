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
//! cannot SIGBUS an nginx worker. Readers that only turn figures into text
//! can skip decoding with [`TableReader::view_if_new`] ([`SnapshotView`]:
//! the same checks, fields read in place).
//!
//! # Where things are
//!
//! - [`layout`]: the byte format, stated once: the file and slot headers'
//!   offsets and every record's field offsets (`layout::peer`,
//!   `layout::route`, `layout::recent`, ...), plus the little-endian
//!   primitives both sides use.
//! - `records.rs`: encodes a slot's header and records, each field at its
//!   `layout` offset ([`TableWriter`] drives it).
//! - [`view`]: reads the records back at the same offsets ([`SnapshotView`]).
//! - `slot.rs`: reads the slot header back ([`PublishId`] names a publish).
//! - [`reader`]: finds a consistent slot in the file and hands it to the view.
//!
//! Dependencies run one way: reader → view → slot → layout, and
//! writer → records → layout.
//!
//! **To change a table record**, edit its offsets in [`layout`], its
//! encoding in `records.rs` and its accessor in [`view`] (for the slot
//! header: `records.rs` and `slot.rs`). Any change to the bytes needs a new
//! [`layout::ABI_VERSION`]: a reader refuses a file of another version
//! rather than misread it. The round-trip tests and `tests/fuzz_reader.rs`
//! then check that both sides agree.

pub mod histogram;
pub mod layout;
mod records;
mod slot;
pub mod snapshot;

pub use snapshot::*;
pub mod reader;
pub mod view;
pub mod writer;

pub use reader::{ReadError, TableReader};
pub use slot::PublishId;
pub use view::{PeerView, RecentView, ResponsesView, RouteView, SnapshotView};
pub use writer::{Capacities, PublishReport, TableWriter};

#[cfg(test)]
mod tests;
