//! The JSON bodies: the report and the 503 "unavailable" answer.

use crate::model::{Report, Unavailable, UnavailableProbe};

/// The report as JSON. serde_json escapes every string, so names and paths
/// taken from the wire cannot break the document.
pub fn render_json(report: &Report) -> String {
    // Serializing plain structs of numbers, strings and maps cannot fail.
    serde_json::to_string(report).unwrap_or_else(|e| unavailable_json(&format!("cannot serialize report: {e}"), ""))
}

/// The body of a 503 when there is no usable table, e.g.
/// `{"error":"probe not running: /run/upstreamtop/table missing","table":"/run/upstreamtop/table","probe":{"up":false}}`.
pub fn unavailable_json(reason: &str, table: &str) -> String {
    let body = Unavailable { error: reason.to_owned(), table: table.to_owned(), probe: UnavailableProbe { up: false } };
    serde_json::to_string(&body).unwrap_or_else(|_| r#"{"error":"unavailable","probe":{"up":false}}"#.to_owned())
}
