//! Turns a table [`Snapshot`](upstreamtop_table::Snapshot) plus what nginx
//! knows about its `upstream {}` groups into the answer of
//! `location /upstreamtop { upstreamtop_status; }`.
//!
//! Pure Rust, no nginx types: the module extracts an [`NginxConfig`] through
//! FFI and calls in here, the dashboard parses the JSON back into
//! [`model::Report`], and `upstreamtop-probe dump` renders a snapshot with an
//! empty config.
//!
//! Two ways to the same JSON: [`build_report`] + [`render_json`] (the model,
//! for serde users and Prometheus) and [`render_view_json`], which writes it
//! straight from a table view without a `Snapshot` or `Report` in between
//! (the module's path; byte-identical, see `tests.rs`).

pub mod bench;
mod build;
pub mod config;
mod join;
mod json;
pub mod model;
mod peer;
mod prometheus;
mod query;
mod view_json;

pub use build::{build_report, stale, stale_age_s, stale_age_s_meta, stale_meta, SCHEMA_VERSION, UNLISTED};
pub use config::{NginxConfig, Query, ServerConf, UpstreamConf};
pub use json::{render_json, unavailable_json};
pub use model::Report;
pub use prometheus::{render_prometheus, render_prometheus_view, unavailable_prometheus};
pub use query::parse_query;
pub use view_json::{render_view_json, render_view_json_into, Piece, ViewJson};

#[cfg(test)]
mod tests;
