//! The probe's side: create the table file and publish snapshots into it.
//! (Implementation: see the table issue; this is the agreed API.)

use std::path::Path;

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
    pub routes_truncated: u64,
    pub recent_truncated: u64,
}

/// Writes snapshots into the table file.
pub struct TableWriter {
    _private: (),
}

impl TableWriter {
    /// Create (or replace, atomically by rename) the table at `path` with a
    /// new generation. The directory is created 0755, the file 0644.
    pub fn create(_path: &Path, _caps: Capacities) -> std::io::Result<Self> {
        unimplemented!("table writer")
    }

    /// Publish one snapshot (seqlock-protected; never waits for readers).
    pub fn publish(&mut self, _snap: &Snapshot) -> std::io::Result<PublishReport> {
        unimplemented!("table writer")
    }
}
