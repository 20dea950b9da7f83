// TEMPORARY compile shim until upstreamtop-report lands. Not committed.
#![allow(dead_code, unused_variables)]
pub use upstreamtop_report::*;
use upstreamtop_table::Snapshot;
pub fn parse_query(q: &str) -> Result<Query, String> { Ok(Query::default()) }
pub fn unavailable_json(reason: &str, table: &str) -> String { serde_json::json!({"error": reason, "table": table}).to_string() }
pub fn stale(s: &Snapshot, now: u64) -> Option<u64> { None }
pub fn build_report(s: &Snapshot, c: &NginxConfig, q: &Query, now: u64) -> NginxConfig { c.clone() }
pub fn render_json(r: &NginxConfig) -> String { format!("{r:?}") }
pub fn render_prometheus(r: &NginxConfig, q: &Query) -> String { format!("{r:?}") }
