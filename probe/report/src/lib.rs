//! Turns a table [`Snapshot`](upstreamtop_table::Snapshot) plus what nginx
//! knows about its `upstream {}` groups into the answer of
//! `location /upstreamtop { upstreamtop_status; }`.
//!
//! Pure Rust, no nginx types: the module extracts an [`NginxConfig`] through
//! FFI and calls in here, the dashboard parses the JSON back into
//! [`model::Report`], and `upstreamtop-probe dump` renders a snapshot with an
//! empty config.

pub mod config;
pub mod model;

pub use config::{NginxConfig, Query, ServerConf, UpstreamConf};
pub use model::Report;
