//! Every answer of `location /upstreamtop { upstreamtop_status; }`, from
//! one publish of the probe's table and what nginx knows about its
//! `upstream {}` groups. Pure Rust, no nginx types: the module extracts an
//! [`NginxConfig`] through FFI and calls [`render`]; `upstreamtop-probe
//! dump` and the dashboard's `--table` mode call it too.
//!
//! One path, one module per step:
//! - [`query`]: the request's parameters, parsed and validated once;
//! - [`join`]: the table's view joined with the configuration (groups,
//!   peers with their `server` line, selected routes, totals, unlisted
//!   peers, the recent feed);
//! - [`json`] and [`prometheus`]: one writer per format, from the join;
//! - [`schema`]: the JSON document as serde types, its field reference;
//! - [`page`]: the live page for browsers, which polls the JSON;
//! - `out`: the output buffer and the number spellings both writers share;
//! - `body`: a rendered answer, and how to send it again later.

pub mod bench;
mod body;
pub mod config;
pub mod join;
pub mod json;
mod out;
pub mod page;
pub mod prometheus;
pub mod query;
pub mod schema;

use upstreamtop_table::SnapshotView;

pub use body::{BodyPart, RenderedBody};
pub use config::{NginxConfig, PeerState, Scope, ServerConf, UpstreamConf};
pub use join::{Joined, UNLISTED};
pub use json::{render_json, unavailable_json};
pub use prometheus::{render_prometheus, unavailable_prometheus};
pub use query::{Defaults, Format, Query, QueryError};
pub use schema::{Report, SCHEMA_VERSION};

/// The answer to `query` from the publish in `view`, as of `now_unix_ns`,
/// written into `buf` (cleared first; a caller rendering every publish
/// hands back a body it no longer serves, so megabytes of output land in
/// memory that is already mapped).
pub fn render(view: &SnapshotView, conf: &NginxConfig, query: &Query, now_unix_ns: u64, buf: Vec<u8>) -> RenderedBody {
    let joined = Joined::new(view, conf, query, now_unix_ns);
    match query.format {
        Format::Json => render_json(&joined, buf),
        Format::Prometheus => render_prometheus(&joined, buf),
        Format::Html => RenderedBody::fixed(page::PAGE.as_bytes(), buf),
    }
}

#[cfg(test)]
mod tests;
