//! The Prometheus answer (`?format=prometheus`, text exposition format
//! 0.0.4), written from a [`Joined`] publish.
//!
//! Series are per `(upstream, server)`; peers no group lists carry
//! `upstream=""`. Routes get their own family,
//! `upstreamtop_route_requests_total{upstream,server,method,route}`, rather
//! than a `route` label on `upstreamtop_requests_total`: the per-peer
//! totals then keep one stable label set whether or not routes are shown
//! (`?route_labels=0` / `upstreamtop_status prometheus noroutes;` drop the
//! route family and nothing else), and `sum by (server)` over
//! `upstreamtop_requests_total` never depends on how many routes the probe
//! kept. Route series cover the routes the query selects (every route the
//! probe keeps unless `?routes=N`, plus the overflow bucket as
//! `route="(other)"`), so their number is bounded by the probe's
//! `--max-routes`.
//!
//! To add a family: a `family(..)` header and one line per peer in
//! [`render_prometheus`], a test line in `tests`, and its row in
//! `docs/prometheus.md`.
//!
//! When there is no usable table the module still answers Prometheus with
//! [`unavailable_prometheus`]: `upstreamtop_probe_up 0`.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::OnceLock;

use upstreamtop_table::histogram::bucket_of;
use upstreamtop_table::PeerView;

use crate::body::RenderedBody;
use crate::config::PeerState;
use crate::join::{clean_path, show, Group, Joined, Member, SelectedRoutes};
use crate::out::Out;

/// The `le` bounds of `upstreamtop_response_header_seconds`, in ns, with
/// their labels. Each is an exact bound of the probe's fine histogram
/// ([`upstreamtop_table::histogram`]), so the cumulative counts are exact.
pub const HEADER_TIME_LE: [(u64, &str); 14] = [
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
    (5_000_000_000, "5"),
    (10_000_000_000, "10"),
];

const PROBE_UP_HELP: &str = "1 when the probe publishes on time, 0 when its table is stale or missing.";
const LAST_PUBLISH_HELP: &str = "When the probe last published its table (Unix time).";

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(v: &str) -> std::borrow::Cow<'_, str> {
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

fn family(out: &mut Out, name: &str, kind: &str, help: &str) {
    for part in ["# HELP ", name, " ", help, "\n# TYPE ", name, " ", kind, "\n"] {
        out.raw(part);
    }
}

/// One series of a peer: its label set, and its wire figures if any.
struct Series<'j, 'v> {
    /// `upstream="…",server="…"`, escaped.
    labels: String,
    group: &'j Group<'j>,
    member: &'j Member<'j>,
    peer: Option<&'j PeerView<'v>>,
    /// The member's state ([`Joined::state`]), judged once.
    state: &'static str,
}

/// Index of the fine bucket whose upper bound is each `le`.
fn le_buckets() -> &'static [usize; HEADER_TIME_LE.len()] {
    static LE: OnceLock<[usize; HEADER_TIME_LE.len()]> = OnceLock::new();
    LE.get_or_init(|| HEADER_TIME_LE.map(|(ns, _)| bucket_of(ns)))
}

/// The Prometheus text for `joined`.
pub fn render_prometheus(joined: &Joined, buf: Vec<u8>) -> RenderedBody {
    // One series per (group, server): a server listed twice in one group
    // must not produce duplicate series. Wire counters go only under the
    // group that counts the peer (`counted_in`), so every sum over them
    // counts each backend once; nginx's view and the state are per group
    // (each group keeps its own peer state), for every group listing it.
    let mut seen = HashSet::new();
    let memberships: Vec<Series> = joined
        .groups
        .iter()
        .chain([&joined.unlisted])
        .flat_map(|g| g.members.iter().map(move |m| (g, m)))
        .filter(|(g, m)| seen.insert((g.name, m.server)))
        .map(|(g, m)| Series {
            labels: format!("upstream=\"{}\",server=\"{}\"", escape_label(g.name), escape_label(&show(&m.server))),
            group: g,
            member: m,
            peer: joined.peer(m),
            state: joined.state(g, m).0,
        })
        .collect();
    let series: Vec<&Series> =
        memberships.iter().filter(|s| s.member.counted_in == s.group.name || s.member.conf.is_none()).collect();
    let mut o = Out(buf);
    o.0.clear();
    o.0.reserve(4096 + series.len() * 2048);
    let o = &mut o;
    let line = |o: &mut Out, name: &str, labels: &str, extra: &str, v: u64| {
        for part in [name, "{", labels, extra, "} "] {
            o.raw(part);
        }
        o.u64(v);
        o.raw("\n");
    };
    let counter = |o: &mut Out, name: &str, help: &str, get: &dyn Fn(&PeerView) -> u64| {
        family(o, name, "counter", help);
        for s in &series {
            line(o, name, &s.labels, "", s.peer.map_or(0, get));
        }
    };

    let name = "upstreamtop_upstream_peer";
    family(
        o,
        name,
        "gauge",
        "1 for every group that lists the backend; wire counters carry only the group that counts it.",
    );
    for s in &memberships {
        line(o, name, &s.labels, "", 1);
    }

    counter(o, "upstreamtop_requests_total", "Requests nginx sent to the backend, counted on the wire.", &|p| {
        p.requests()
    });
    if joined.query.route_labels {
        let name = "upstreamtop_route_requests_total";
        family(o, name, "counter", "Completed exchanges per route (method and folded path).");
        let mut routes = SelectedRoutes::default();
        for s in &series {
            joined.routes(s.member, &mut routes);
            for r in &routes.named {
                let extra = format!(
                    ",method=\"{}\",route=\"{}\"",
                    escape_label(r.method()),
                    escape_label(clean_path(r.path()))
                );
                line(o, name, &s.labels, &extra, r.requests());
            }
            if !routes.other.is_empty() {
                let requests = routes.other.iter().map(|r| r.requests()).sum();
                line(o, name, &s.labels, ",method=\"\",route=\"(other)\"", requests);
            }
        }
    }
    let name = "upstreamtop_responses_total";
    family(o, name, "counter", "Responses by exact status code (\"other\": codes beyond the probe's per-peer limit).");
    for s in &series {
        let Some(p) = s.peer else { continue };
        let r = p.responses();
        // By the code's text, duplicates summed (what the JSON shows).
        let mut codes: BTreeMap<String, u64> = BTreeMap::new();
        for (c, n) in r.codes() {
            *codes.entry(c.to_string()).or_insert(0) += n;
        }
        for (code, n) in &codes {
            line(o, name, &s.labels, &format!(",code=\"{code}\""), *n);
        }
        if r.codes_other() > 0 {
            line(o, name, &s.labels, ",code=\"other\"", r.codes_other());
        }
    }
    counter(o, "upstreamtop_no_response_total", "Exchanges that ended (close, reset) before a response.", &|p| {
        p.no_response()
    });

    let h = "upstreamtop_response_header_seconds";
    family(o, h, "histogram", "Time from request sent to the first response byte (header time).");
    let (bucket, sum, count) = (format!("{h}_bucket"), format!("{h}_sum"), format!("{h}_count"));
    for s in &series {
        let (mut acc, mut i) = (0u64, 0usize);
        let buckets = s.peer.map(|p| p.buckets());
        let b: &[u64] = buckets.as_ref().map_or(&[], |b| &b[..]);
        for (&last, (_, label)) in le_buckets().iter().zip(HEADER_TIME_LE) {
            while i <= last && i < b.len() {
                acc += b[i];
                i += 1;
            }
            line(o, &bucket, &s.labels, &format!(",le=\"{label}\""), acc);
        }
        let total = acc + b.get(i..).map_or(0, |rest| rest.iter().sum());
        line(o, &bucket, &s.labels, ",le=\"+Inf\"", total);
        let sum_s = s.peer.map_or(0, |p| p.latency_sum_ns()) as f64 / 1e9;
        for part in [sum.as_str(), "{", &s.labels, "} "] {
            o.raw(part);
        }
        let _ = writeln!(o, "{sum_s}");
        line(o, &count, &s.labels, "", total);
    }

    counter(o, "upstreamtop_sent_bytes_total", "TCP payload bytes sent to the backend.", &|p| p.sent_bytes());
    counter(o, "upstreamtop_received_bytes_total", "TCP payload bytes received from the backend.", &|p| {
        p.received_bytes()
    });
    family(o, "upstreamtop_connections", "gauge", "Open connections to the backend.");
    for s in &series {
        line(o, "upstreamtop_connections", &s.labels, ",state=\"active\"", s.peer.map_or(0, |p| p.conns().active));
    }
    let name = "upstreamtop_connections_total";
    family(o, name, "counter", "Connection events: opened, closed, failed (refused or unanswered), reset.");
    for s in &series {
        let c = s.peer.map(|p| p.conns()).unwrap_or_default();
        for (event, n) in [("opened", c.opened), ("closed", c.closed), ("failed", c.failed), ("reset", c.reset)] {
            line(o, name, &s.labels, &format!(",event=\"{event}\""), n);
        }
    }
    let name = "upstreamtop_peer_up";
    family(o, name, "gauge", "1 when the backend is up or idle, 0 when unhealthy, unavailable or configured down.");
    for s in &memberships {
        let up = matches!(s.state, "up" | "idle");
        line(o, name, &s.labels, "", u64::from(up));
    }
    let name = "upstreamtop_peer_state";
    family(
        o,
        name,
        "gauge",
        "State as NGINX Plus numbers it: 1 up (or idle), 3 down, 4 unavail (nginx), 6 unhealthy (wire).",
    );
    for s in &memberships {
        let n = match s.state {
            "down" => 3,
            "unavail" => 4,
            "unhealthy" => 6,
            _ => 1,
        };
        line(o, name, &s.labels, "", n);
    }
    let nginx: Vec<_> = memberships.iter().filter_map(|s| joined.nginx(s.group, s.member).map(|n| (s, n))).collect();
    for (name, help, get) in [
        (
            "upstreamtop_nginx_fails",
            "Failures nginx counts against the backend (passive health).",
            &(|n: &PeerState| u64::from(n.fails)) as &dyn Fn(&PeerState) -> u64,
        ),
        (
            "upstreamtop_nginx_max_fails",
            "max_fails of the backend (0: failures never take it out).",
            &|n: &PeerState| u64::from(n.max_fails),
        ),
        ("upstreamtop_nginx_in_flight", "Requests nginx has a connection to the backend for.", &|n: &PeerState| {
            u64::from(n.in_flight)
        }),
        ("upstreamtop_nginx_max_conns", "max_conns of the backend (0: no limit).", &|n: &PeerState| {
            u64::from(n.max_conns)
        }),
        (
            "upstreamtop_nginx_last_failure_timestamp_seconds",
            "When nginx last recorded a failure of the backend (Unix time; 0: never).",
            &|n: &PeerState| n.last_failure_s,
        ),
    ] {
        family(o, name, "gauge", help);
        for (s, n) in &nginx {
            line(o, name, &s.labels, "", get(n));
        }
    }

    let probe = &joined.probe;
    family(o, "upstreamtop_probe_up", "gauge", PROBE_UP_HELP);
    o.raw("upstreamtop_probe_up ");
    o.u64(u64::from(probe.up));
    o.raw("\n");
    family(o, "upstreamtop_probe_last_publish_timestamp_seconds", "gauge", LAST_PUBLISH_HELP);
    let _ = writeln!(o, "upstreamtop_probe_last_publish_timestamp_seconds {}", probe.last_publish as f64 / 1e3);
    let name = "upstreamtop_probe_drops_total";
    family(o, name, "counter", "Events the probe could not count in full detail.");
    for (reason, n) in &probe.drops {
        line(o, name, &format!("reason=\"{}\"", escape_label(reason)), "", *n);
    }
    let name = "upstreamtop_probe_overflows_total";
    family(o, name, "counter", "Detail folded away because a table was full (totals stay exact).");
    for (reason, n) in &probe.overflows {
        line(o, name, &format!("reason=\"{}\"", escape_label(reason)), "", *n);
    }
    RenderedBody { body: std::mem::take(&mut o.0), clock_fields: None, clock_dependent: joined.clock_dependent }
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
    let mut out = Out(format!("# upstreamtop: table unavailable: {reason}\n").into_bytes());
    family(&mut out, "upstreamtop_probe_up", "gauge", PROBE_UP_HELP);
    out.raw("upstreamtop_probe_up 0\n");
    if let Some(ns) = last_publish_unix_ns.filter(|&ns| ns > 0) {
        family(&mut out, "upstreamtop_probe_last_publish_timestamp_seconds", "gauge", LAST_PUBLISH_HELP);
        let _ = writeln!(out, "upstreamtop_probe_last_publish_timestamp_seconds {}", ns as f64 / 1e9);
    }
    out.into_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::sample_prometheus;
    use crate::{NginxConfig, Query};
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    use upstreamtop_table::Snapshot;

    #[test]
    fn le_labels_match_the_bounds() {
        for (ns, label) in HEADER_TIME_LE {
            assert_eq!((ns as f64 / 1e9).to_string(), label);
            let b = upstreamtop_table::histogram::bucket_of(ns);
            assert_eq!(upstreamtop_table::histogram::upper_bound_ns(b), ns, "{label} is an exact fine bound");
        }
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_label("/plain"), "/plain");
    }

    /// A hostile route label and a duplicate server line.
    fn hostile(s: &mut Snapshot, c: &mut NginxConfig) {
        let post = s.routes.iter_mut().find(|r| r.method == "POST").unwrap();
        post.path = "/we\"ird\\\npath".into();
        let api = c.upstreams.iter_mut().find(|u| u.name == "api").unwrap();
        let dup = api.servers[0].clone();
        api.servers.push(dup);
    }

    fn sample(q: &Query) -> String {
        sample_prometheus(hostile, q)
    }

    #[test]
    fn exact_series() {
        let text = sample(&Query::default());
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
        let quiet = sample(&Query { route_labels: false, ..Query::default() });
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
        promtool_check(&sample(&Query::default()));
        promtool_check(&sample(&Query { route_labels: false, ..Query::default() }));
    }

    #[test]
    fn hostile_group_names_and_no_peers() {
        let text = sample_prometheus(
            |s, c| {
                hostile(s, c);
                c.upstreams.iter_mut().find(|u| u.name == "api").unwrap().name = "we\"ird\\gr\noup\u{7f}é".into();
            },
            &Query::default(),
        );
        assert!(text.contains("upstream=\"we\\\"ird\\\\gr\\noup\u{7f}é\""), "{text}");
        promtool_check(&text);
        let text = sample_prometheus(
            |s, c| {
                s.peers.clear();
                s.routes.clear();
                s.recent.clear();
                c.upstreams.clear();
            },
            &Query::default(),
        );
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
