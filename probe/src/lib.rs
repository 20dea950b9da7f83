//! upstreamtop-probe: tcx programs that read nginx's plain-HTTP upstream
//! exchanges off the wire, and the daemon that folds what they count into
//! the shared table.

pub mod aggregate;
pub mod bpf;
pub mod cli;
pub mod daemon;
pub mod hist;
pub mod http;
pub mod ifaces;
pub mod notify;
pub mod peer_slots;
pub mod pins;
pub mod restore;
pub mod sweep;
pub mod tcp_peers;
pub mod totals;
