//! The JSON document of `GET /upstreamtop`, defined once: these types and
//! their rustdoc are the field reference (`docs/json.md` follows them).
//! The module writes the document with a fast writer ([`crate::json`]);
//! every answer parses into [`Report`] and serializes back to the same
//! value, and golden files pin the exact text (`crate::tests`). Clients in
//! Rust (the dashboard) deserialize into these types.
//!
//! To add a field: add it here, write it in `json.rs` at the same place
//! in the object, regenerate the golden files
//! (`UPDATE_GOLDEN=1 cargo test -p upstreamtop-report golden`) and add its
//! row to `docs/json.md`.
//!
//! Fields added after version 1 came out read as their default when
//! missing (`#[serde(default)]`), so a newer client reads an older module.
//!
//! Field names follow the NGINX Plus API for upstream peers (`peers`,
//! `server`, `requests`, `responses`, `sent`, `received`, `header_time`,
//! `active`, `state`) where one exists. Times are milliseconds (f64)
//! unless the name says otherwise; timestamps are Unix epoch milliseconds;
//! rates are per second, rounded to 3 decimals.

#![deny(missing_docs)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the JSON document ([`Report::version`]); bumped when a field
/// changes meaning or goes away (new fields do not bump it).
pub const SCHEMA_VERSION: u32 = 1;

/// The whole answer of `GET /upstreamtop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Schema version of this document.
    pub version: u32,
    /// nginx's version, e.g. `1.28.3`.
    pub nginx_version: String,
    /// When the answer was built (Unix ms).
    pub timestamp: u64,
    /// The probe that published the table: liveness and what it could not count.
    pub probe: Probe,
    /// Every backend together (nginx's own listening sockets left out), whatever `?upstream=` selects.
    pub totals: Totals,
    /// Keyed by group name, in configuration order when serialized by the
    /// module (BTreeMap sorts by name).
    pub upstreams: BTreeMap<String, Upstream>,
    /// Peers seen on the wire that no group lists (resolved at run time, or
    /// another proxy on the host): never dropped.
    pub unlisted: Upstream,
    /// The latest requests, newest first (`?recent=N`, default 20).
    pub recent: Vec<Recent>,
}

/// The probe that publishes the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// Running and publishing (false when stale).
    pub up: bool,
    /// The last publish is older than `max(3 × interval, 5 s)`.
    pub stale: bool,
    /// The probe's process id.
    pub pid: u32,
    /// Unix ms.
    pub started: u64,
    /// When the table was last published (Unix ms).
    pub last_publish: u64,
    /// Age of the last publish when this answer was built, ms.
    pub age_ms: u64,
    /// The publish interval: rates and windows cover one.
    pub interval_ms: u64,
    /// Interfaces the probe's programs are attached to.
    pub interfaces: Vec<String>,
    /// `events_dropped`, `conn_table_full`, `peer_table_full`,
    /// `recent_sampled_out`, `parse_errors`.
    pub drops: BTreeMap<String, u64>,
    /// `route_overflow`, `conn_evicted`.
    pub overflows: BTreeMap<String, u64>,
}

/// Every backend together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Totals {
    /// Requests sent to backends, counted on the wire since the probe started.
    pub requests: u64,
    /// Requests per second over the last interval.
    pub rps: f64,
    /// Responses by class and exact code.
    pub responses: Responses,
    /// 5xx responses per second over the last interval.
    pub errors_rps: f64,
    /// TCP payload bytes sent to backends.
    pub sent: u64,
    /// TCP payload bytes received from backends.
    pub received: u64,
}

/// One `upstream {}` group (same-named blocks merged), an implicit group of `proxy_pass http://IP:port`, or the unlisted peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Upstream {
    /// From `proxy_pass http://IP:port` rather than an `upstream {}` block.
    pub implicit: bool,
    /// Whose view the peers' `nginx` figures are: `all_workers` (the group
    /// has a `zone`), `worker` (no `zone`: the worker that answered, see
    /// `worker_pid`), `unknown` (a balancer nginx does not ship: its peer
    /// list is not read), `none` (unlisted peers).
    #[serde(default)]
    pub scope: String,
    /// The worker whose figures a group without `zone` shows.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub worker_pid: u32,
    /// Requests to the peers this group counts (each distinct peer whose
    /// `counted_in` is this group): the groups' figures and `unlisted`
    /// add up to `totals`, each backend counted once.
    pub requests: u64,
    /// Requests per second over the last interval, same peers.
    pub rps: f64,
    /// Connection reuse over the same peers.
    #[serde(default)]
    pub keepalive: Keepalive,
    /// In configuration order; unlisted peers by requests, most first.
    pub peers: Vec<Peer>,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// How well connections to a backend are reused, from the wire since the
/// probe started: nginx without `keepalive` (or without
/// `proxy_http_version 1.1` and `proxy_set_header Connection ""`) opens a
/// connection per request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Keepalive {
    /// Requests per connection nginx opened (`requests / connections.opened`;
    /// 0 when none was opened).
    pub requests_per_connection: f64,
    /// Percent of requests that paid for a new connection
    /// (`connections.opened / requests`, at most 100).
    pub new_connection_pct: f64,
}

/// What nginx's balancer knows about a peer right now (NGINX Plus
/// meanings), beside the wire's figures for the same window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct NginxPeer {
    /// Failures nginx counts against the peer; it forgets them only when a
    /// request to the peer succeeds (after `fail_timeout` it tries the peer
    /// again).
    pub fails: u64,
    /// `max_fails=` (0: failures never take the peer out).
    pub max_fails: u64,
    /// `fail_timeout=`, ms.
    pub fail_timeout_ms: u64,
    /// When nginx last recorded a failure (Unix ms; 0 = never).
    pub last_failure: u64,
    /// Requests nginx has a connection to this peer for.
    pub in_flight: u64,
    /// `max_conns=` (0 = no limit).
    pub max_conns: u64,
    /// Failed connects (refused or unanswered) the wire saw within the
    /// last `fail_timeout`: what nginx's `fails` should be explained by.
    pub wire_failed_connects: u64,
}

/// Responses by class and exact status code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Responses {
    /// Informational responses (100 Continue, 103 Early Hints).
    #[serde(rename = "1xx")]
    pub c1xx: u64,
    /// Successful responses.
    #[serde(rename = "2xx")]
    pub c2xx: u64,
    /// Redirections.
    #[serde(rename = "3xx")]
    pub c3xx: u64,
    /// Client errors.
    #[serde(rename = "4xx")]
    pub c4xx: u64,
    /// Server errors.
    #[serde(rename = "5xx")]
    pub c5xx: u64,
    /// Exact status codes: `"200": 1234`.
    pub codes: BTreeMap<String, u64>,
    /// Responses whose exact code the probe could not keep (their class
    /// is still counted above).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub codes_other: u64,
    /// All responses: the sum of the classes.
    pub total: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// `avg`, `p50`, `p90`, `p99` in ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Percentiles {
    /// Mean, ms.
    pub avg: f64,
    /// Median, ms.
    pub p50: f64,
    /// 90th percentile, ms.
    pub p90: f64,
    /// 99th percentile, ms.
    pub p99: f64,
}

/// TCP connection events to a backend since the probe started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Connections {
    /// Connections nginx opened to the backend.
    pub opened: u64,
    /// Connections closed in order (FIN).
    pub closed: u64,
    /// Connects refused or never answered.
    pub failed: u64,
    /// Connections ended by a reset.
    pub reset: u64,
}

/// Per-interval figures, one entry per publish interval, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct History {
    /// Requests per second per interval, oldest first.
    pub rps: Vec<f64>,
    /// 5xx responses per second per interval, oldest first.
    #[serde(rename = "5xx")]
    pub errors: Vec<f64>,
    /// Header time p99 per interval, ms, oldest first.
    pub p99: Vec<f64>,
}

/// One backend as its group shows it: nginx's configuration and the wire's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Peer {
    /// `IP:port` as seen on the wire.
    pub server: String,
    /// As written in the configuration (equals `server` for unlisted peers).
    pub name: String,
    /// Listed in nginx's configuration for this group.
    pub configured: bool,
    /// `backup` in the configuration.
    pub backup: bool,
    /// `down` in the configuration.
    pub down: bool,
    /// `weight=` in the configuration (0 when not configured).
    pub weight: u32,
    /// `down` (configured down) and `unavail` (nginx's passive health has
    /// taken it out: `fails >= max_fails` within `fail_timeout`) as nginx
    /// decides; otherwise the wire's verdict: `unhealthy` (connect
    /// failures or mostly 5xx in the last interval), `idle` (no traffic
    /// lately) or `up`.
    pub state: String,
    /// Which side `state` comes from: `nginx` or `wire`.
    #[serde(default)]
    pub state_from: String,
    /// The group whose figures count this peer: of the groups that list
    /// it, the first `upstream {}` block by name, else the first implicit
    /// group; `unlisted` for unlisted peers. Summing groups never counts a
    /// backend twice.
    #[serde(default)]
    pub counted_in: String,
    /// Requests nginx sent to this backend, counted on the wire since the probe started.
    pub requests: u64,
    /// Requests per second over the last interval.
    pub rps: f64,
    /// Percent of all requests nginx sent in the last interval.
    pub share: f64,
    /// Responses by class and exact code.
    pub responses: Responses,
    /// Exchanges that ended without a response (closed or reset).
    pub no_response: u64,
    /// Average header time over the last interval, ms (NGINX Plus meaning).
    pub header_time: f64,
    /// Over the last interval.
    pub header_time_window: Percentiles,
    /// Since the probe started.
    pub header_time_total: Percentiles,
    /// TCP payload bytes sent to the backend.
    pub sent: u64,
    /// TCP payload bytes received from the backend.
    pub received: u64,
    /// Open connections.
    pub active: u64,
    /// Connection events since the probe started.
    pub connections: Connections,
    /// Connection reuse.
    #[serde(default)]
    pub keepalive: Keepalive,
    /// nginx's own view of the peer; `null` for unlisted peers and groups
    /// whose balancer is not read (`scope` says whose view it is).
    #[serde(default)]
    pub nginx: Option<NginxPeer>,
    /// 5xx responses per second over the last interval.
    pub errors_rps: f64,
    /// Per-interval figures, oldest first (left out with `?history=0`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub history: Option<History>,
    /// Top routes by requests (`?routes=N`, default 10), then the overflow bucket `(other)`.
    pub routes: Vec<Route>,
    /// Unix ms of the latest request; 0 = never.
    pub last_seen: u64,
    /// Why the peer gets no (or failing) traffic, from both sides, e.g.
    /// `nginx took it out of rotation: 2 failures counted (max_fails 2,
    /// fail_timeout 30 s); the wire saw 2 failed connects in the last 30 s,
    /// …`; absent when
    /// there is nothing to explain.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub diagnosis: String,
}

/// One route of a peer: method and folded path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Route {
    /// Empty with `path` = "(other)" for the overflow bucket.
    pub method: String,
    /// The path, query removed and ids folded to `:id`; `(other)` for the overflow bucket.
    pub path: String,
    /// The overflow bucket: routes beyond the probe's `--max-routes`.
    pub other: bool,
    /// Completed exchanges on this route since the probe started.
    pub requests: u64,
    /// Requests per second over the last interval.
    pub rps: f64,
    /// 5xx responses per second over the last interval.
    pub errors_rps: f64,
    /// Responses by class and exact code.
    pub responses: Responses,
    /// Exchanges that ended without a response (closed or reset).
    pub no_response: u64,
    /// Since the route was first seen.
    pub header_time: Percentiles,
}

/// One recent request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Recent {
    /// Unix ms.
    pub time: u64,
    /// The request method.
    pub method: String,
    /// The path as sent, without its query string.
    pub path: String,
    /// The backend, `IP:port`.
    pub server: String,
    /// Group name, or "" when unlisted.
    pub upstream: String,
    /// 0 = no response.
    pub status: u16,
    /// Time from request to the first response byte, ms.
    pub header_time: f64,
}

/// The body of a 503 when there is no usable table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unavailable {
    /// e.g. "probe not running: /run/upstreamtop/table missing".
    pub error: String,
    /// The table path the module reads.
    pub table: String,
    /// Always `{"up": false}`.
    pub probe: UnavailableProbe,
}

/// The probe part of a 503 body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnavailableProbe {
    /// `false`.
    pub up: bool,
}
