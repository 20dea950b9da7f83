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
//! - `out`: the output buffer and the number spellings both writers share.

pub mod bench;
pub mod config;
pub mod join;
pub mod json;
mod out;
pub mod prometheus;
pub mod query;
pub mod schema;

use std::ops::Range;

use upstreamtop_table::SnapshotView;

pub use config::{NginxConfig, ServerConf, UpstreamConf};
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
    }
}

/// A rendered answer, and what a cache needs to serve it again later in
/// the same publish interval.
#[derive(Debug, Clone)]
pub struct RenderedBody {
    /// The text (UTF-8; bytes because the module sends bytes and a
    /// `String` would cost a validation pass over megabytes).
    pub body: Vec<u8>,
    clock_fields: Option<ClockFields>,
    /// Some peer had no history samples, so its `state` was judged from
    /// its last request time against the clock: the body must not be
    /// reused at a later time.
    pub clock_dependent: bool,
}

/// Where the figures that move with the reader's clock sit in a JSON
/// body: the values of `"timestamp"` and `"probe"."age_ms"`.
#[derive(Debug, Clone)]
struct ClockFields {
    timestamp_at: Range<usize>,
    age_at: Range<usize>,
    published_unix_ns: u64,
}

/// A part of an answer to send: bytes that already exist, or a number to
/// spell out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPart<'a> {
    Bytes(&'a [u8]),
    Number(u64),
}

impl RenderedBody {
    /// The body as it would be rendered at `now_unix_ns` from the same
    /// publish, configuration and query, in order (empty parts included).
    /// Only valid when [`Self::clock_dependent`] is false and the table is
    /// not stale at `now_unix_ns` (a stale table gets a 503, never this
    /// body).
    pub fn at(&self, now_unix_ns: u64) -> [BodyPart<'_>; 5] {
        let b = &self.body;
        let Some(c) = &self.clock_fields else {
            return [
                BodyPart::Bytes(b),
                BodyPart::Bytes(&[]),
                BodyPart::Bytes(&[]),
                BodyPart::Bytes(&[]),
                BodyPart::Bytes(&[]),
            ];
        };
        [
            BodyPart::Bytes(&b[..c.timestamp_at.start]),
            BodyPart::Number(now_unix_ns / 1_000_000),
            BodyPart::Bytes(&b[c.timestamp_at.end..c.age_at.start]),
            BodyPart::Number(now_unix_ns.saturating_sub(c.published_unix_ns) / 1_000_000),
            BodyPart::Bytes(&b[c.age_at.end..]),
        ]
    }
}

#[cfg(test)]
mod tests;
