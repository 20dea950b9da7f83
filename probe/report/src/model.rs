//! The JSON answer, as Rust types. Field names follow the NGINX Plus API for
//! upstream peers (`peers`, `server`, `requests`, `responses`, `sent`,
//! `received`, `header_time`, `active`, `state`) where one exists.
//!
//! Times are milliseconds (f64) unless the name says otherwise; timestamps
//! are Unix epoch milliseconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole answer of `GET /upstreamtop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Schema version of this document.
    pub version: u32,
    pub nginx_version: String,
    /// When the answer was built (Unix ms).
    pub timestamp: u64,
    pub probe: Probe,
    pub totals: Totals,
    /// Keyed by group name, in configuration order when serialized by the
    /// module (BTreeMap sorts by name).
    pub upstreams: BTreeMap<String, Upstream>,
    /// Peers seen on the wire that no group lists (resolved at run time, or
    /// another proxy on the host): never dropped.
    pub unlisted: Upstream,
    pub recent: Vec<Recent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// Running and publishing (false when stale).
    pub up: bool,
    pub stale: bool,
    pub pid: u32,
    /// Unix ms.
    pub started: u64,
    pub last_publish: u64,
    /// Age of the last publish when this answer was built, ms.
    pub age_ms: u64,
    pub interval_ms: u64,
    pub interfaces: Vec<String>,
    /// `events_dropped`, `conn_table_full`, `peer_table_full`,
    /// `recent_sampled_out`, `parse_errors`.
    pub drops: BTreeMap<String, u64>,
    /// `route_overflow`, `conn_evicted`.
    pub overflows: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Totals {
    pub requests: u64,
    pub rps: f64,
    pub responses: Responses,
    /// 5xx responses per second over the last interval.
    pub errors_rps: f64,
    pub sent: u64,
    pub received: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Upstream {
    /// From `proxy_pass http://IP:port` rather than an `upstream {}` block.
    pub implicit: bool,
    pub requests: u64,
    pub rps: f64,
    pub peers: Vec<Peer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Responses {
    #[serde(rename = "1xx")]
    pub c1xx: u64,
    #[serde(rename = "2xx")]
    pub c2xx: u64,
    #[serde(rename = "3xx")]
    pub c3xx: u64,
    #[serde(rename = "4xx")]
    pub c4xx: u64,
    #[serde(rename = "5xx")]
    pub c5xx: u64,
    /// Exact status codes: `"200": 1234`.
    pub codes: BTreeMap<String, u64>,
    /// Responses whose exact code the probe could not keep (their class
    /// is still counted above).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub codes_other: u64,
    pub total: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The Prometheus `le` bounds of `upstreamtop_response_header_seconds`, in
/// ns. Each is an exact bound of the fine histogram
/// ([`upstreamtop_table::histogram`]), so the cumulative counts are exact.
pub const HEADER_TIME_LE_NS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The cumulative header-time histogram of a peer since the probe started,
/// for Prometheus. Not part of the JSON.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeaderTimeHistogram {
    /// Observations `<=` each of [`HEADER_TIME_LE_NS`] (cumulative).
    pub le: Vec<u64>,
    /// All observations (the `+Inf` bucket and `_count`).
    pub count: u64,
    pub sum_ns: u64,
}

/// `avg`, `p50`, `p90`, `p99` in ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Percentiles {
    pub avg: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Connections {
    pub opened: u64,
    pub closed: u64,
    pub failed: u64,
    pub reset: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct History {
    /// Requests per second per interval, oldest first.
    pub rps: Vec<f64>,
    #[serde(rename = "5xx")]
    pub errors: Vec<f64>,
    pub p99: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Peer {
    /// `IP:port` as seen on the wire.
    pub server: String,
    /// As written in the configuration (equals `server` for unlisted peers).
    pub name: String,
    /// Listed in nginx's configuration for this group.
    pub configured: bool,
    pub backup: bool,
    pub down: bool,
    pub weight: u32,
    /// `up`, `unhealthy` (connect failures or mostly 5xx in the last
    /// interval), `idle` (no traffic lately), `down` (configured down).
    pub state: String,
    pub requests: u64,
    pub rps: f64,
    /// Percent of all requests nginx sent in the last interval.
    pub share: f64,
    pub responses: Responses,
    /// Exchanges that ended without a response (closed or reset).
    pub no_response: u64,
    /// Average header time over the last interval, ms (NGINX Plus meaning).
    pub header_time: f64,
    /// Over the last interval.
    pub header_time_window: Percentiles,
    /// Since the probe started.
    pub header_time_total: Percentiles,
    pub sent: u64,
    pub received: u64,
    /// Open connections.
    pub active: u64,
    pub connections: Connections,
    pub errors_rps: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub history: Option<History>,
    pub routes: Vec<Route>,
    /// Unix ms of the latest request; 0 = never.
    pub last_seen: u64,
    /// For Prometheus only (not serialized).
    #[serde(skip)]
    pub header_time_histogram: HeaderTimeHistogram,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Route {
    /// Empty with `path` = "(other)" for the overflow bucket.
    pub method: String,
    pub path: String,
    pub other: bool,
    pub requests: u64,
    pub rps: f64,
    pub errors_rps: f64,
    pub responses: Responses,
    pub no_response: u64,
    /// Since the route was first seen.
    pub header_time: Percentiles,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Recent {
    /// Unix ms.
    pub time: u64,
    pub method: String,
    pub path: String,
    pub server: String,
    /// Group name, or "" when unlisted.
    pub upstream: String,
    /// 0 = no response.
    pub status: u16,
    pub header_time: f64,
}

/// The body of a 503 when there is no usable table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unavailable {
    /// e.g. "probe not running: /run/upstreamtop/table missing".
    pub error: String,
    pub table: String,
    pub probe: UnavailableProbe,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnavailableProbe {
    pub up: bool,
}
