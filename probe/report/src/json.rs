//! The JSON answer, written from a [`Joined`] publish.
//!
//! The document is [`crate::schema::Report`]: every answer parses into
//! those types and serializes back to the same value (`crate::tests`), and
//! the golden files in `tests/golden/` pin the exact text. Per-peer and
//! per-route figures go from the table's bytes to the output directly;
//! only the small parts (probe, totals) go through the schema types.

use std::collections::BTreeMap;
use std::ops::Range;

use upstreamtop_table::{ResponsesView, RouteView};

use crate::body::{ClockFields, RenderedBody};
use crate::config::Scope;
use crate::join::{add_responses, clean_path, show, Group, Joined, Member, RecentEntry, Reuse, SelectedRoutes};
use crate::out::{ms, nothing_to_escape_or_cut, round3, Out};
use crate::schema::{Probe, Responses, Totals, Unavailable, UnavailableProbe, SCHEMA_VERSION};

/// The JSON answer for `joined`, written into `buf` (cleared first): a
/// caller that renders every publish hands back a body it no longer
/// serves, so megabytes of output land in memory that is already mapped
/// instead of fresh pages the kernel must fault in and zero.
pub fn render_json(joined: &Joined, buf: Vec<u8>) -> RenderedBody {
    let query = joined.query;
    let peers = joined.groups.iter().chain([&joined.unlisted]).map(|g| g.members.len()).sum::<usize>();
    let mut w = Out(buf);
    w.0.clear();
    w.0.reserve(2048 + peers * 1600 + joined.view.route_count().min(peers * query.routes.saturating_add(1)) * 320);

    w.raw("{\"version\":");
    w.u64(SCHEMA_VERSION.into());
    w.raw(",\"nginx_version\":");
    w.str(&joined.conf.nginx_version);
    w.raw(",\"timestamp\":");
    let at = w.0.len();
    w.u64(joined.now_unix_ns / 1_000_000);
    let timestamp_at = at..w.0.len();
    w.raw(",\"probe\":");
    let age_at = probe(&mut w, &joined.probe);
    w.raw(",\"totals\":");
    totals(&mut w, &joined.totals);

    let mut routes = SelectedRoutes::default();
    w.raw(",\"upstreams\":{");
    for (n, g) in joined.groups.iter().enumerate() {
        if n > 0 {
            w.raw(",");
        }
        w.str(g.name);
        w.raw(":");
        group(&mut w, joined, g, &mut routes);
    }
    w.raw("},\"unlisted\":");
    group(&mut w, joined, &joined.unlisted, &mut routes);
    w.raw(",\"recent\":[");
    for (n, r) in joined.recent.iter().enumerate() {
        if n > 0 {
            w.raw(",");
        }
        recent(&mut w, r);
    }
    w.raw("]}");
    RenderedBody {
        body: w.0,
        clock_fields: Some(ClockFields {
            timestamp_at,
            age_at,
            published_unix_ns: joined.view.meta().published_unix_ns,
        }),
        clock_dependent: joined.clock_dependent,
    }
}

/// The body of a 503 when there is no usable table, e.g.
/// `{"error":"probe not running: /run/upstreamtop/table missing","table":"/run/upstreamtop/table","probe":{"up":false}}`.
pub fn unavailable_json(reason: &str, table: &str) -> String {
    let body = Unavailable { error: reason.to_owned(), table: table.to_owned(), probe: UnavailableProbe { up: false } };
    serde_json::to_string(&body).unwrap_or_else(|_| r#"{"error":"unavailable","probe":{"up":false}}"#.to_owned())
}

/// Writes the probe object; returns where its `age_ms` value sits.
fn probe(w: &mut Out, p: &Probe) -> Range<usize> {
    w.raw("{\"up\":");
    w.bool(p.up);
    w.raw(",\"stale\":");
    w.bool(p.stale);
    w.raw(",\"pid\":");
    w.u64(p.pid.into());
    w.raw(",\"started\":");
    w.u64(p.started);
    w.raw(",\"last_publish\":");
    w.u64(p.last_publish);
    w.raw(",\"age_ms\":");
    let at = w.0.len();
    w.u64(p.age_ms);
    let age_at = at..w.0.len();
    w.raw(",\"interval_ms\":");
    w.u64(p.interval_ms);
    w.raw(",\"interfaces\":[");
    for (n, s) in p.interfaces.iter().enumerate() {
        if n > 0 {
            w.raw(",");
        }
        w.str(s);
    }
    w.raw("],\"drops\":");
    map_u64(w, &p.drops);
    w.raw(",\"overflows\":");
    map_u64(w, &p.overflows);
    w.raw("}");
    age_at
}

fn map_u64(w: &mut Out, m: &BTreeMap<String, u64>) {
    w.raw("{");
    for (n, (k, v)) in m.iter().enumerate() {
        if n > 0 {
            w.raw(",");
        }
        w.str(k);
        w.raw(":");
        w.u64(*v);
    }
    w.raw("}");
}

fn totals(w: &mut Out, t: &Totals) {
    w.raw("{\"requests\":");
    w.u64(t.requests);
    w.raw(",\"rps\":");
    w.f64(t.rps);
    w.raw(",\"responses\":");
    responses(w, &t.responses);
    w.raw(",\"errors_rps\":");
    w.f64(t.errors_rps);
    w.raw(",\"sent\":");
    w.u64(t.sent);
    w.raw(",\"received\":");
    w.u64(t.received);
    w.raw("}");
}

/// A responses block of the schema type (totals, merged routes).
fn responses(w: &mut Out, r: &Responses) {
    w.raw("{\"1xx\":");
    w.u64(r.c1xx);
    w.raw(",\"2xx\":");
    w.u64(r.c2xx);
    w.raw(",\"3xx\":");
    w.u64(r.c3xx);
    w.raw(",\"4xx\":");
    w.u64(r.c4xx);
    w.raw(",\"5xx\":");
    w.u64(r.c5xx);
    w.raw(",\"codes\":");
    map_u64(w, &r.codes);
    if r.codes_other != 0 {
        w.raw(",\"codes_other\":");
        w.u64(r.codes_other);
    }
    w.raw(",\"total\":");
    w.u64(r.total);
    w.raw("}");
}

fn group<'v>(w: &mut Out, joined: &Joined<'v, '_>, g: &Group, routes: &mut SelectedRoutes<'v>) {
    w.raw("{\"implicit\":");
    w.bool(g.implicit);
    w.raw(",\"scope\":");
    match g.scope {
        None => w.raw("\"none\""),
        Some(Scope::AllWorkers) => w.raw("\"all_workers\""),
        Some(Scope::Unknown) => w.raw("\"unknown\""),
        Some(Scope::Worker(pid)) => {
            w.raw("\"worker\"");
            if pid != 0 {
                w.raw(",\"worker_pid\":");
                w.u64(pid.into());
            }
        }
    }
    w.raw(",\"requests\":");
    w.u64(g.requests);
    w.raw(",\"rps\":");
    w.f64(g.rps);
    w.raw(",\"keepalive\":");
    keepalive(w, &g.reuse);
    w.raw(",\"peers\":[");
    for (n, m) in g.members.iter().enumerate() {
        if n > 0 {
            w.raw(",");
        }
        peer(w, joined, g, m, routes);
    }
    w.raw("]}");
}

fn keepalive(w: &mut Out, r: &Reuse) {
    w.raw("{\"requests_per_connection\":");
    w.round3(r.requests_per_connection());
    w.raw(",\"new_connection_pct\":");
    w.round3(r.new_connection_pct());
    w.raw("}");
}

/// nginx's view of a peer, or `null`.
fn nginx(w: &mut Out, joined: &Joined, g: &Group, m: &Member) {
    let Some(n) = joined.nginx(g, m) else {
        w.raw("null");
        return;
    };
    w.raw("{\"fails\":");
    w.u64(n.fails.into());
    w.raw(",\"max_fails\":");
    w.u64(n.max_fails.into());
    w.raw(",\"fail_timeout_ms\":");
    w.u64(n.fail_timeout_s.saturating_mul(1000));
    w.raw(",\"last_failure\":");
    w.u64(n.last_failure_s.saturating_mul(1000));
    w.raw(",\"in_flight\":");
    w.u64(n.in_flight.into());
    w.raw(",\"max_conns\":");
    w.u64(n.max_conns.into());
    w.raw(",\"wire_failed_connects\":");
    w.u64(joined.failed_connects_within(m, n.fail_timeout_s));
    w.raw("}");
}

/// One peer: its configuration entry, its state and its wire figures
/// (zeros when the wire has not seen it).
fn peer<'v>(w: &mut Out, joined: &Joined<'v, '_>, g: &Group, m: &Member, routes: &mut SelectedRoutes<'v>) {
    let server = show(&m.server);
    let conf = m.conf;
    let query = joined.query;
    w.raw("{\"server\":");
    w.str(&server);
    w.raw(",\"name\":");
    w.str(conf.map_or(server.as_str(), |c| c.name.as_str()));
    w.raw(",\"configured\":");
    w.bool(conf.is_some());
    w.raw(",\"backup\":");
    w.bool(conf.is_some_and(|c| c.backup));
    w.raw(",\"down\":");
    w.bool(conf.is_some_and(|c| c.down));
    w.raw(",\"weight\":");
    w.u64(conf.map_or(0, |c| c.weight).into());
    let (state, state_from) = joined.state(g, m);
    w.raw(",\"state\":");
    w.str(state);
    w.raw(",\"state_from\":");
    w.str(state_from);
    w.raw(",\"counted_in\":");
    w.str(m.counted_in);
    let diagnosis = joined.diagnosis(g, m, state);
    let Some(p) = joined.peer(m) else {
        // Listed, never seen on the wire.
        w.raw(
            ",\"requests\":0,\"rps\":0.0,\"share\":0.0,\"responses\":{\"1xx\":0,\"2xx\":0,\"3xx\":0,\"4xx\":0,\
             \"5xx\":0,\"codes\":{},\"total\":0},\"no_response\":0,\"header_time\":0.0,\
             \"header_time_window\":{\"avg\":0.0,\"p50\":0.0,\"p90\":0.0,\"p99\":0.0},\
             \"header_time_total\":{\"avg\":0.0,\"p50\":0.0,\"p90\":0.0,\"p99\":0.0},\"sent\":0,\"received\":0,\
             \"active\":0,\"connections\":{\"opened\":0,\"closed\":0,\"failed\":0,\"reset\":0},\
             \"keepalive\":{\"requests_per_connection\":0.0,\"new_connection_pct\":0.0},\"nginx\":",
        );
        nginx(w, joined, g, m);
        w.raw(",\"errors_rps\":0.0");
        if query.history {
            w.raw(",\"history\":{\"rps\":[],\"5xx\":[],\"p99\":[]}");
        }
        w.raw(",\"routes\":[],\"last_seen\":0");
        end_peer(w, &diagnosis);
        return;
    };
    let win = p.window();
    w.raw(",\"requests\":");
    w.u64(p.requests());
    w.raw(",\"rps\":");
    w.round3(win.requests_per_sec);
    w.raw(",\"share\":");
    w.round3(joined.share(p));
    w.raw(",\"responses\":");
    responses_view(w, p.responses());
    w.raw(",\"no_response\":");
    w.u64(p.no_response());
    w.raw(",\"header_time\":");
    w.ms(win.latency_avg_ns);
    w.raw(",\"header_time_window\":");
    w.ms_percentiles(win.latency_avg_ns, win.latency_p50_ns, win.latency_p90_ns, win.latency_p99_ns);
    w.raw(",\"header_time_total\":");
    // Precomputed by the probe from the buckets.
    let [p50, p90, p99] = p.latency_quantiles_ns();
    let avg = p.latency_sum_ns().checked_div(p.latency_count()).unwrap_or(0);
    w.ms_percentiles(avg, p50, p90, p99);
    w.raw(",\"sent\":");
    w.u64(p.sent_bytes());
    w.raw(",\"received\":");
    w.u64(p.received_bytes());
    let c = p.conns();
    w.raw(",\"active\":");
    w.u64(c.active);
    w.raw(",\"connections\":{\"opened\":");
    w.u64(c.opened);
    w.raw(",\"closed\":");
    w.u64(c.closed);
    w.raw(",\"failed\":");
    w.u64(c.failed);
    w.raw(",\"reset\":");
    w.u64(c.reset);
    w.raw("},\"keepalive\":");
    keepalive(w, &Reuse { requests: p.requests(), opened: c.opened });
    w.raw(",\"nginx\":");
    nginx(w, joined, g, m);
    w.raw(",\"errors_rps\":");
    w.round3(win.errors_5xx_per_sec);
    if query.history {
        // 60 samples × 3 figures per peer: the bulk of the numbers. With
        // the usual 1 s interval a count per second is the count itself
        // (`N.0`), and µs → ms is exact in integers; the text is what
        // `round3` + `f64` give (`out.rs` tests both ways).
        let interval_ns = joined.view.meta().interval_ns;
        let secs = (interval_ns as f64 / 1e9).max(1e-9);
        let per_sec = |w: &mut Out, n: u32| {
            if interval_ns == 1_000_000_000 {
                w.count_as_float(n);
            } else {
                w.round3(f64::from(n) / secs);
            }
        };
        w.raw(",\"history\":{\"rps\":[");
        for (n, h) in p.history().enumerate() {
            if n > 0 {
                w.raw(",");
            }
            per_sec(w, h.requests);
        }
        w.raw("],\"5xx\":[");
        for (n, h) in p.history().enumerate() {
            if n > 0 {
                w.raw(",");
            }
            per_sec(w, h.errors_5xx);
        }
        w.raw("],\"p99\":[");
        for (n, h) in p.history().enumerate() {
            if n > 0 {
                w.raw(",");
            }
            w.thousandths(h.latency_p99_us);
        }
        w.raw("]}");
    }
    w.raw(",\"routes\":[");
    joined.routes(m, routes);
    for (n, r) in routes.named.iter().enumerate() {
        if n > 0 {
            w.raw(",");
        }
        route(w, r);
    }
    if !routes.other.is_empty() {
        if !routes.named.is_empty() {
            w.raw(",");
        }
        match &routes.other[..] {
            [one] => route(w, one),
            several => merged_other(w, several),
        }
    }
    w.raw("],\"last_seen\":");
    w.u64(p.last_seen_unix_ns() / 1_000_000);
    end_peer(w, &diagnosis);
}

/// The diagnosis, when there is one, and the end of the peer object.
fn end_peer(w: &mut Out, diagnosis: &str) {
    if !diagnosis.is_empty() {
        w.raw(",\"diagnosis\":");
        w.str(diagnosis);
    }
    w.raw("}");
}

fn route(w: &mut Out, r: &RouteView) {
    let other = r.is_other();
    w.raw("{\"method\":");
    w.str_bytes(if other { b"" } else { r.method_bytes() });
    w.raw(",\"path\":");
    if other {
        w.str("(other)");
    } else {
        // Cut at '?' (ASCII, so still whole UTF-8).
        let p = r.path_bytes();
        if nothing_to_escape_or_cut(p) {
            w.quoted(p);
        } else {
            w.str_bytes(p.iter().position(|&b| b == b'?').map_or(p, |i| &p[..i]));
        }
    }
    // Keys with the values they nearly always have as single literals.
    w.raw(if other { ",\"other\":true,\"requests\":" } else { ",\"other\":false,\"requests\":" });
    w.u64(r.requests());
    w.raw(",\"rps\":");
    w.round3(r.requests_per_sec());
    let errors = r.errors_5xx_per_sec();
    if errors == 0.0 {
        w.raw(",\"errors_rps\":0.0,\"responses\":");
    } else {
        w.raw(",\"errors_rps\":");
        w.round3(errors);
        w.raw(",\"responses\":");
    }
    responses_view(w, r.responses());
    let no_response = r.no_response();
    if no_response == 0 {
        w.raw(",\"no_response\":0,\"header_time\":");
    } else {
        w.raw(",\"no_response\":");
        w.u64(no_response);
        w.raw(",\"header_time\":");
    }
    let avg = r.latency_sum_ns().checked_div(r.latency_count()).unwrap_or(0);
    w.ms_percentiles(avg, r.latency_p50_ns(), r.latency_p90_ns(), r.latency_p99_ns());
    w.raw("}");
}

/// Several overflow buckets of one peer (a table breaking its contract)
/// as one: counts and rates added, the first bucket's header times.
fn merged_other(w: &mut Out, others: &[RouteView]) {
    let (mut requests, mut rps, mut errors_rps, mut no_response) = (0u64, 0f64, 0f64, 0u64);
    let mut sum = Responses::default();
    for r in others {
        requests += r.requests();
        rps = round3(rps + round3(r.requests_per_sec()));
        errors_rps = round3(errors_rps + round3(r.errors_5xx_per_sec()));
        no_response += r.no_response();
        let v = r.responses();
        add_responses(&mut sum, v.class(), v.codes(), v.codes_other());
    }
    w.raw("{\"method\":\"\",\"path\":\"(other)\",\"other\":true,\"requests\":");
    w.u64(requests);
    w.raw(",\"rps\":");
    w.f64(rps);
    w.raw(",\"errors_rps\":");
    w.f64(errors_rps);
    w.raw(",\"responses\":");
    responses(w, &sum);
    w.raw(",\"no_response\":");
    w.u64(no_response);
    w.raw(",\"header_time\":");
    let r = &others[0];
    let avg = r.latency_sum_ns().checked_div(r.latency_count()).unwrap_or(0);
    w.ms_percentiles(avg, r.latency_p50_ns(), r.latency_p90_ns(), r.latency_p99_ns());
    w.raw("}");
}

/// A responses block straight from the table.
fn responses_view(w: &mut Out, r: ResponsesView) {
    let class = r.class();
    // 1xx and 3xx are nearly always 0 for a backend: one literal then.
    if class[0] == 0 {
        w.raw("{\"1xx\":0,\"2xx\":");
    } else {
        w.raw("{\"1xx\":");
        w.u64(class[0]);
        w.raw(",\"2xx\":");
    }
    w.u64(class[1]);
    if class[2] == 0 {
        w.raw(",\"3xx\":0");
    } else {
        w.raw(",\"3xx\":");
        w.u64(class[2]);
    }
    w.raw(",\"4xx\":");
    w.u64(class[3]);
    w.raw(",\"5xx\":");
    w.u64(class[4]);
    w.raw(",\"codes\":{");
    // Codes are keyed by their decimal text (text order, duplicates
    // summed). Three-digit codes in ascending order, as the probe writes
    // them, are already in that order: write them as they come, and start
    // over through a map should one break the pattern.
    let at = w.0.len();
    let mut last = 0u16;
    for (c, count) in r.codes() {
        if !(100..=999).contains(&c) || c <= last {
            w.0.truncate(at);
            let mut m: BTreeMap<String, u64> = BTreeMap::new();
            for (c, n) in r.codes() {
                *m.entry(c.to_string()).or_insert(0) += n;
            }
            for (n, (c, count)) in m.iter().enumerate() {
                if n > 0 {
                    w.raw(",");
                }
                w.str(c);
                w.raw(":");
                w.u64(*count);
            }
            break;
        }
        if last != 0 {
            w.0.push(b',');
        }
        last = c;
        let d = [b'"', b'0' + (c / 100) as u8, b'0' + (c / 10 % 10) as u8, b'0' + (c % 10) as u8, b'"', b':'];
        w.0.extend_from_slice(&d);
        w.u64(count);
    }
    w.raw("}");
    let other = r.codes_other();
    if other != 0 {
        w.raw(",\"codes_other\":");
        w.u64(other);
    }
    w.raw(",\"total\":");
    w.u64(class.iter().sum());
    w.raw("}");
}

fn recent(w: &mut Out, e: &RecentEntry) {
    let r = &e.request;
    w.raw("{\"time\":");
    w.u64(r.unix_ns() / 1_000_000);
    w.raw(",\"method\":");
    w.str(r.method());
    w.raw(",\"path\":");
    w.str(clean_path(r.path()));
    w.raw(",\"server\":");
    w.str(&show(&e.server));
    w.raw(",\"upstream\":");
    w.str(e.upstream);
    w.raw(",\"status\":");
    w.u64(r.status().into());
    w.raw(",\"header_time\":");
    w.f64(ms(r.latency_ns()));
    w.raw("}");
}
