//! The report as Prometheus text exposition format 0.0.4
//! (`?format=prometheus`).
//!
//! Series are per `(upstream, server)`; peers no group lists carry
//! `upstream=""`. Routes get their own family,
//! `upstreamtop_route_requests_total{upstream,server,method,route}`, rather
//! than a `route` label on `upstreamtop_requests_total`: the per-peer
//! totals then keep one stable label set whether or not routes are shown
//! (`?route_labels=0` / `upstreamtop_status prometheus noroutes;` drop the
//! route family and nothing else), and `sum by (server)` over
//! `upstreamtop_requests_total` never depends on how many routes the probe
//! kept. Route series cover the routes the report lists (`?routes=N` per
//! peer, plus the overflow bucket as `route="(other)"`), so their number is
//! bounded by the probe's `--max-routes`.
//!
//! When there is no usable table the module still answers Prometheus with
//! [`unavailable_prometheus`]: `upstreamtop_probe_up 0`.

use std::collections::HashSet;
use std::fmt::Write;

use upstreamtop_table::{RouteStats, Snapshot, SnapshotView};

use crate::config::{NginxConfig, Query};
use crate::model::{Peer, Report};

/// `le` labels matching [`crate::model::HEADER_TIME_LE_NS`], in seconds.
const LE_LABELS: [&str; 14] =
    ["0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10"];

/// Escapes a label value: backslash, double quote and newline.
fn esc(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    let mut s = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s.into()
}

const PROBE_UP_HELP: &str = "1 when the probe publishes on time, 0 when its table is stale or missing.";
const LAST_PUBLISH_HELP: &str = "When the probe last published its table (Unix time).";

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// What the module answers `?format=prometheus` with, from the table's
/// view: [`render_prometheus_snapshot`] of a snapshot that holds only what
/// the series read. Peers come in full (their history decides `peer_up`);
/// routes only as method, path and request count (route series show
/// nothing else, and only those rank them), without the status codes and
/// latencies that cost most of the copy; no recent requests. At a thousand
/// peers × 16 routes that is about a third less CPU time than going
/// through [`SnapshotView::to_snapshot`] and the full report.
pub fn render_prometheus_view(view: &SnapshotView, conf: &NginxConfig, query: &Query, now_unix_ns: u64) -> String {
    let routes = view
        .routes()
        .map(|r| RouteStats {
            peer: r.peer(),
            is_other: r.is_other(),
            method: r.method().to_owned(),
            path: r.path().to_owned(),
            requests: r.requests(),
            ..RouteStats::default()
        })
        .collect();
    let snap = Snapshot {
        meta: view.meta().clone(),
        peers: view.peers().map(|p| p.to_stats()).collect(),
        routes,
        recent: Vec::new(),
    };
    render_prometheus_snapshot(&snap, conf, query, now_unix_ns)
}

/// [`render_prometheus`] of [`build_report`](crate::build_report) for a
/// snapshot. The report is built without its per-peer history arrays,
/// which no series uses (about a seventh of `build_report`'s time at a
/// thousand peers). Only the view path and the tests call it.
pub(crate) fn render_prometheus_snapshot(
    snap: &Snapshot,
    conf: &NginxConfig,
    query: &Query,
    now_unix_ns: u64,
) -> String {
    let lean = Query { history: false, ..query.clone() };
    render_prometheus(&crate::build_report(snap, conf, &lean, now_unix_ns), query)
}

/// Renders the report. `query.route_labels` decides whether per-route
/// series are included.
pub fn render_prometheus(report: &Report, query: &Query) -> String {
    // Unique (upstream, peer) pairs: a server listed twice in one group
    // must not produce duplicate series.
    let mut seen = HashSet::new();
    let peers: Vec<(String, &Peer)> = report
        .upstreams
        .iter()
        .flat_map(|(name, up)| up.peers.iter().map(move |p| (name.as_str(), p)))
        .chain(report.unlisted.peers.iter().map(|p| ("", p)))
        .filter(|(u, p)| seen.insert((*u, p.server.as_str())))
        .map(|(u, p)| (format!("upstream=\"{}\",server=\"{}\"", esc(u), esc(&p.server)), p))
        .collect();
    let mut out = String::with_capacity(4096 + peers.len() * 2048);
    let o = &mut out;

    let counter = |o: &mut String, name: &str, help: &str, get: &dyn Fn(&Peer) -> u64| {
        family(o, name, "counter", help);
        for (l, p) in &peers {
            let _ = writeln!(o, "{name}{{{l}}} {}", get(p));
        }
    };
    counter(o, "upstreamtop_requests_total", "Requests nginx sent to the backend, counted on the wire.", &|p| {
        p.requests
    });
    if query.route_labels {
        family(
            o,
            "upstreamtop_route_requests_total",
            "counter",
            "Completed exchanges per route (method and folded path).",
        );
        for (l, p) in &peers {
            for r in &p.routes {
                let _ = writeln!(
                    o,
                    "upstreamtop_route_requests_total{{{l},method=\"{}\",route=\"{}\"}} {}",
                    esc(&r.method),
                    esc(&r.path),
                    r.requests
                );
            }
        }
    }
    family(
        o,
        "upstreamtop_responses_total",
        "counter",
        "Responses by exact status code (\"other\": codes beyond the probe's per-peer limit).",
    );
    for (l, p) in &peers {
        for (code, n) in &p.responses.codes {
            let _ = writeln!(o, "upstreamtop_responses_total{{{l},code=\"{}\"}} {n}", esc(code));
        }
        if p.responses.codes_other > 0 {
            let _ = writeln!(o, "upstreamtop_responses_total{{{l},code=\"other\"}} {}", p.responses.codes_other);
        }
    }
    counter(o, "upstreamtop_no_response_total", "Exchanges that ended (close, reset) before a response.", &|p| {
        p.no_response
    });

    let h = "upstreamtop_response_header_seconds";
    family(o, h, "histogram", "Time from request sent to the first response byte (header time).");
    for (l, p) in &peers {
        let hist = &p.header_time_histogram;
        for (i, le) in LE_LABELS.iter().enumerate() {
            let _ = writeln!(o, "{h}_bucket{{{l},le=\"{le}\"}} {}", hist.le.get(i).copied().unwrap_or(0));
        }
        let _ = writeln!(o, "{h}_bucket{{{l},le=\"+Inf\"}} {}", hist.count);
        let _ = writeln!(o, "{h}_sum{{{l}}} {}", hist.sum_ns as f64 / 1e9);
        let _ = writeln!(o, "{h}_count{{{l}}} {}", hist.count);
    }

    counter(o, "upstreamtop_sent_bytes_total", "TCP payload bytes sent to the backend.", &|p| p.sent);
    counter(o, "upstreamtop_received_bytes_total", "TCP payload bytes received from the backend.", &|p| p.received);
    family(o, "upstreamtop_connections", "gauge", "Open connections to the backend.");
    for (l, p) in &peers {
        let _ = writeln!(o, "upstreamtop_connections{{{l},state=\"active\"}} {}", p.active);
    }
    family(
        o,
        "upstreamtop_connections_total",
        "counter",
        "Connection events: opened, closed, failed (refused or unanswered), reset.",
    );
    for (l, p) in &peers {
        let c = &p.connections;
        for (event, n) in [("opened", c.opened), ("closed", c.closed), ("failed", c.failed), ("reset", c.reset)] {
            let _ = writeln!(o, "upstreamtop_connections_total{{{l},event=\"{event}\"}} {n}");
        }
    }
    family(o, "upstreamtop_peer_up", "gauge", "1 when the backend is up or idle, 0 when unhealthy or configured down.");
    for (l, p) in &peers {
        let up = matches!(p.state.as_str(), "up" | "idle");
        let _ = writeln!(o, "upstreamtop_peer_up{{{l}}} {}", u8::from(up));
    }

    let probe = &report.probe;
    family(o, "upstreamtop_probe_up", "gauge", PROBE_UP_HELP);
    let _ = writeln!(o, "upstreamtop_probe_up {}", u8::from(probe.up));
    family(o, "upstreamtop_probe_last_publish_timestamp_seconds", "gauge", LAST_PUBLISH_HELP);
    let _ = writeln!(o, "upstreamtop_probe_last_publish_timestamp_seconds {}", probe.last_publish as f64 / 1e3);
    family(o, "upstreamtop_probe_drops_total", "counter", "Events the probe could not count in full detail.");
    for (reason, n) in &probe.drops {
        let _ = writeln!(o, "upstreamtop_probe_drops_total{{reason=\"{}\"}} {n}", esc(reason));
    }
    family(
        o,
        "upstreamtop_probe_overflows_total",
        "counter",
        "Detail folded away because a table was full (totals stay exact).",
    );
    for (reason, n) in &probe.overflows {
        let _ = writeln!(o, "upstreamtop_probe_overflows_total{{reason=\"{}\"}} {n}", esc(reason));
    }
    out
}

/// The Prometheus answer when there is no usable table (missing, torn,
/// wrong version, stale): `upstreamtop_probe_up 0`, plus the last publish
/// time when a table exists, and `reason` as a comment for whoever curls
/// it. The module serves it with status 200: Prometheus drops the body of
/// any non-2xx scrape, so a 503 would leave `upstreamtop_probe_up` absent
/// instead of 0 (the target's own `up` series says whether nginx answered).
pub fn unavailable_prometheus(reason: &str, last_publish_unix_ns: Option<u64>) -> String {
    // A comment ends at the newline: keep the reason on one line.
    let reason: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut out = format!("# upstreamtop: table unavailable: {reason}\n");
    family(&mut out, "upstreamtop_probe_up", "gauge", PROBE_UP_HELP);
    out.push_str("upstreamtop_probe_up 0\n");
    if let Some(ns) = last_publish_unix_ns.filter(|&ns| ns > 0) {
        family(&mut out, "upstreamtop_probe_last_publish_timestamp_seconds", "gauge", LAST_PUBLISH_HELP);
        let _ = writeln!(out, "upstreamtop_probe_last_publish_timestamp_seconds {}", ns as f64 / 1e9);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HEADER_TIME_LE_NS;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    #[test]
    fn le_labels_match_the_bounds() {
        for (ns, label) in HEADER_TIME_LE_NS.iter().zip(LE_LABELS) {
            assert_eq!((*ns as f64 / 1e9).to_string(), label);
            let b = upstreamtop_table::histogram::bucket_of(*ns);
            assert_eq!(upstreamtop_table::histogram::upper_bound_ns(b), *ns, "{label} is an exact fine bound");
        }
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(esc("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(esc("/plain"), "/plain");
    }

    fn report() -> Report {
        let mut r = crate::tests::sample_report();
        // A hostile route label and a duplicate server line.
        let api = r.upstreams.get_mut("api").unwrap();
        api.peers[0].routes[0].path = "/we\"ird\\\npath".into();
        let dup = api.peers[0].clone();
        api.peers.push(dup);
        r
    }

    #[test]
    fn exact_series() {
        let text = render_prometheus(&report(), &Query::default());
        let l = "upstream=\"api\",server=\"127.0.0.1:9001\"";
        for line in [
            format!("upstreamtop_requests_total{{{l}}} 10"),
            format!("upstreamtop_route_requests_total{{{l},method=\"POST\",route=\"/we\\\"ird\\\\\\npath\"}} 6"),
            format!("upstreamtop_route_requests_total{{{l},method=\"\",route=\"(other)\"}} 7"),
            format!("upstreamtop_responses_total{{{l},code=\"502\"}} 1"),
            format!("upstreamtop_response_header_seconds_bucket{{{l},le=\"0.0025\"}} 4"),
            format!("upstreamtop_response_header_seconds_bucket{{{l},le=\"0.025\"}} 5"),
            format!("upstreamtop_response_header_seconds_bucket{{{l},le=\"+Inf\"}} 5"),
            format!("upstreamtop_response_header_seconds_sum{{{l}}} 0.028"),
            format!("upstreamtop_response_header_seconds_count{{{l}}} 5"),
            format!("upstreamtop_connections{{{l},state=\"active\"}} 1"),
            format!("upstreamtop_connections_total{{{l},event=\"reset\"}} 1"),
            format!("upstreamtop_peer_up{{{l}}} 1"),
            "upstreamtop_peer_up{upstream=\"api\",server=\"127.0.0.1:9004\"} 0".to_owned(),
            "upstreamtop_requests_total{upstream=\"\",server=\"10.9.9.9:80\"} 5".to_owned(),
            "upstreamtop_probe_up 1".to_owned(),
            "upstreamtop_probe_drops_total{reason=\"events_dropped\"} 1".to_owned(),
            "upstreamtop_probe_overflows_total{reason=\"route_overflow\"} 7".to_owned(),
        ] {
            assert!(text.lines().any(|x| x == line), "missing {line}\n{text}");
        }
        assert_eq!(text.matches(&format!("upstreamtop_requests_total{{{l}}}")).count(), 1, "deduplicated");
        let quiet = render_prometheus(&report(), &Query { route_labels: false, ..Query::default() });
        assert!(!quiet.contains("upstreamtop_route_requests_total"));
    }

    /// `promtool check metrics` on `text`; `false` (skipped) without promtool.
    fn promtool_check(text: &str) -> bool {
        let Ok(mut child) = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        else {
            eprintln!("promtool not installed: skipping the exposition format check");
            return false;
        };
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        true
    }

    #[test]
    fn promtool_accepts_it() {
        promtool_check(&render_prometheus(&report(), &Query::default()));
        promtool_check(&render_prometheus(&report(), &Query { route_labels: false, ..Query::default() }));
    }

    #[test]
    fn hostile_group_names_and_no_peers() {
        let mut r = report();
        let api = r.upstreams.remove("api").unwrap();
        r.upstreams.insert("we\"ird\\gr\noup\u{7f}é".into(), api);
        let text = render_prometheus(&r, &Query::default());
        assert!(text.contains("upstream=\"we\\\"ird\\\\gr\\noup\u{7f}é\""), "{text}");
        promtool_check(&text);
        let empty = Report { upstreams: Default::default(), unlisted: Default::default(), ..report() };
        let text = render_prometheus(&empty, &Query::default());
        assert!(text.contains("# TYPE upstreamtop_requests_total counter"), "families stay declared: {text}");
        promtool_check(&text);
    }

    #[test]
    fn unavailable_says_probe_down() {
        let text = unavailable_prometheus("probe stale: last\npublish 12 s ago", Some(1_795_307_155_051_000_000));
        assert_eq!(
            text,
            "# upstreamtop: table unavailable: probe stale: last publish 12 s ago\n\
             # HELP upstreamtop_probe_up 1 when the probe publishes on time, 0 when its table is stale or missing.\n\
             # TYPE upstreamtop_probe_up gauge\n\
             upstreamtop_probe_up 0\n\
             # HELP upstreamtop_probe_last_publish_timestamp_seconds When the probe last published its table (Unix time).\n\
             # TYPE upstreamtop_probe_last_publish_timestamp_seconds gauge\n\
             upstreamtop_probe_last_publish_timestamp_seconds 1795307155.051\n"
        );
        promtool_check(&text);
        let missing = unavailable_prometheus("probe not running: /run/upstreamtop/table missing", None);
        assert!(missing.ends_with("\nupstreamtop_probe_up 0\n"), "{missing}");
        assert!(!missing.contains("last_publish"));
        promtool_check(&missing);
    }
}
