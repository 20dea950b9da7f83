//! The text of every screen as styled lines. The TUI draws them (the
//! terminal cuts what does not fit); the plain-text snapshot prints their
//! characters, so both always show the same figures.

use std::time::Duration;

use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use upstreamtop_report::schema::{Peer, Percentiles, Responses, Route};

use super::format::{self, bold, dim, fit, right, wire, wire_fit};
use crate::board::{Backend, Board, ProbeState};
use crate::sanitize;

/// Widths of the backend columns.
const TAG_W: usize = 9;
const SPARK_W: usize = 10;
const RPS_W: usize = 7;
const BAR_W: usize = 8;
const PCT_W: usize = 5;
const LAT_W: usize = 7;
const INFL_W: usize = 7;
const KA_W: usize = 2;
/// Room left for the status mix (two classes: `2xx 33% 5xx 67%`) before
/// other columns give way.
const STATUS_W: usize = 15;
/// The keepalive flag: at least this many requests since the probe
/// started, and at least this percent of them opened a new connection.
pub const NO_KEEPALIVE_MIN_REQUESTS: u64 = 10;
pub const NO_KEEPALIVE_PCT: f64 = 90.0;

/// The columns of the backend rows on a screen of some width: all of them
/// when they fit; on a narrower screen the history sparkline goes first,
/// then the share bar, then AVG, so that 80 columns still show the name,
/// state, req/s, share, p99, in flight, the keepalive flag and the status
/// mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns {
    /// Width of the name column.
    pub name: usize,
    pub history: bool,
    pub bar: bool,
    pub avg: bool,
}

impl Columns {
    /// Everything but the name and the status mix.
    fn fixed(&self) -> usize {
        let mut w = 2 + 1 + TAG_W + 1 + RPS_W + 1 + PCT_W + 1 + LAT_W + 1 + INFL_W + 1 + KA_W + 2;
        for (shown, cell) in [(self.history, SPARK_W), (self.bar, BAR_W), (self.avg, LAT_W)] {
            if shown {
                w += cell + 1;
            }
        }
        w
    }

    /// Columns before REQ/S after the name: the state, the sparkline.
    fn before_rps(&self) -> usize {
        1 + TAG_W + 1 + if self.history { SPARK_W + 1 } else { 0 }
    }
}

/// The one-line header: totals, window, probe state, time, hosts.
pub fn header(board: &Board, paused: bool) -> Line<'static> {
    let mut spans = vec![
        Span::styled("upstreamtop", bold().fg(Color::Cyan)),
        Span::raw(" — nginx upstreams · "),
        Span::styled(format!("{} req/s", format::rps(board.rps)), bold()),
    ];
    if board.errors_rps > 0.0 {
        spans.push(Span::raw(" · "));
        spans.push(Span::styled(format!("5xx {}/s", format::rps(board.errors_rps)), Style::default().fg(Color::Red)));
    }
    if board.window_ms > 0 {
        spans.push(Span::raw(format!(" · {} window", window(board.window_ms))));
    }
    let state = worst_state(board);
    let state_style = match state {
        ProbeState::Up => Style::default().fg(Color::Green),
        ProbeState::Stale => Style::default().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        ProbeState::Down | ProbeState::NoAnswer | ProbeState::Unknown => {
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
        }
    };
    spans.push(Span::raw(" · "));
    spans.push(Span::styled(state.label(), state_style));
    if board.drops > 0 {
        spans.push(Span::raw(" · "));
        spans.push(Span::styled(format!("{} dropped", board.drops), Style::default().fg(Color::Yellow)));
    }
    if board.timestamp > 0 {
        spans.push(Span::raw(format!(" · {} UTC", format::clock(board.timestamp, false))));
    }
    spans.push(Span::raw(" · "));
    let hosts: Vec<&str> = board.hosts.iter().map(|h| h.host.as_str()).collect();
    if hosts.len() > 1 {
        let ok = board.hosts.iter().filter(|h| h.error.is_none()).count();
        spans.push(Span::raw(format!("{ok}/{} hosts: ", hosts.len())));
    }
    spans.push(wire(&hosts.join(", "), dim()));
    if paused {
        spans.push(Span::styled("  PAUSED", Style::default().fg(Color::Black).bg(Color::Yellow)));
    }
    Line::from(spans)
}

fn window(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The state for the header: the worst among hosts that answered (a host
/// that did not has its own banner, and "1/2 hosts" says so); NO ANSWER or
/// "no data" when none did.
fn worst_state(board: &Board) -> ProbeState {
    let rank = |s: ProbeState| match s {
        ProbeState::Up => 0,
        ProbeState::Stale => 1,
        ProbeState::Down => 2,
        ProbeState::NoAnswer => 3,
        ProbeState::Unknown => 4,
    };
    let states = board.hosts.iter().map(|h| h.probe_state);
    let answered = states.clone().filter(|s| !matches!(s, ProbeState::NoAnswer | ProbeState::Unknown));
    match answered.max_by_key(|s| rank(*s)) {
        Some(s) => s,
        None if states.clone().any(|s| s == ProbeState::NoAnswer) => ProbeState::NoAnswer,
        None => ProbeState::Unknown,
    }
}

/// `retry` is the poll interval, None for a one-shot snapshot.
pub fn banners(board: &Board, retry: Option<Duration>, polls: u64) -> Vec<Line<'static>> {
    let mut out = Vec::new();
    for h in &board.hosts {
        if let Some(err) = &h.error {
            // What it means for the figures comes first: long error texts
            // get cut at the right edge.
            let mut text = format!(" ✖ {}", h.host);
            if let Some(ts) = h.showing_old {
                text.push_str(&format!(" [figures from {} UTC]", format::clock(ts, false)));
            }
            text.push_str(&format!(": {err}"));
            if let Some(every) = retry {
                text.push_str(&format!(" — retrying every {:.1}s", every.as_secs_f64()));
            }
            out.push(Line::from(wire(
                &text,
                Style::default().fg(Color::White).bg(Color::Red).add_modifier(Modifier::BOLD),
            )));
        } else if h.probe_state == ProbeState::Stale {
            let text = format!(
                " ⚠ {}: probe stale — last publish {:.1}s ago; figures are frozen (is upstreamtop-probe running?)",
                h.host,
                h.probe_age_ms as f64 / 1000.0
            );
            out.push(Line::from(wire(&text, Style::default().fg(Color::Black).bg(Color::Yellow))));
        } else if h.probe_state == ProbeState::Down {
            let text = format!(" ✖ {}: probe not publishing", h.host);
            out.push(Line::from(wire(&text, Style::default().fg(Color::White).bg(Color::Red))));
        } else if h.probe_state == ProbeState::Unknown && polls == 0 {
            out.push(Line::from(wire(&format!(" … waiting for the first answer from {}", h.host), dim())));
        }
    }
    out
}

/// The columns for a screen `width` wide (None: unbounded, every column).
pub fn columns(backends: &[&Backend], width: Option<usize>) -> Columns {
    let longest = backends.iter().map(|b| sanitize::clean(&b.label()).width()).max().unwrap_or(7).max(7);
    // Never narrower than the widest peer address: on a small screen the
    // right-hand columns are cut instead of the backend's identity.
    let servers = backends.iter().map(|b| sanitize::clean(&b.peer.server).width()).max().unwrap_or(0).min(47);
    let min_name = servers.max(12);
    let all = Columns { name: longest, history: true, bar: true, avg: true };
    let Some(w) = width else { return all };
    let tiers = [
        all,
        Columns { history: false, ..all },
        Columns { history: false, bar: false, ..all },
        Columns { history: false, bar: false, avg: false, ..all },
    ];
    let cols = tiers.into_iter().find(|c| c.fixed() + min_name + STATUS_W <= w).unwrap_or(tiers[3]);
    Columns { name: longest.min(w.saturating_sub(cols.fixed() + STATUS_W)).max(min_name), ..cols }
}

/// The label cut to `width`, keeping the peer address whole as long as it
/// fits: on a narrow screen the group name gives way first.
fn fitted_label(b: &Backend, width: usize) -> String {
    let label = sanitize::clean(&b.label()).into_owned();
    if label.width() <= width {
        return label;
    }
    let server = sanitize::clean(&b.peer.server).into_owned();
    let sw = server.width();
    if sw + 2 > width {
        return format::truncate(&server, width);
    }
    match label.strip_suffix(&server) {
        Some(prefix) => format!("{} {server}", format::truncate(prefix.trim_end(), width - sw - 1)),
        None => format::truncate(&label, width),
    }
}

/// The column titles above the backends.
pub fn backend_titles(cols: Columns) -> Line<'static> {
    let mut text = format!("  {} {}", fit("BACKEND", cols.name), fit("STATE", TAG_W));
    if cols.history {
        text.push_str(&format!(" {}", fit("HISTORY", SPARK_W)));
    }
    text.push_str(&format!(" {}", right("REQ/S", RPS_W)));
    if cols.bar {
        text.push_str(&format!(" {} {}", fit("SHARE", BAR_W), right("", PCT_W)));
    } else {
        text.push_str(&format!(" {}", right("SHARE", PCT_W)));
    }
    if cols.avg {
        text.push_str(&format!(" {}", right("AVG", LAT_W)));
    }
    text.push_str(&format!(" {} {} {}  STATUS", right("P99", LAT_W), right("INFL", INFL_W), fit("KA", KA_W)));
    Line::from(Span::styled(text, bold().add_modifier(Modifier::REVERSED)))
}

/// The state cell after a backend's name, with its style. nginx's
/// verdicts (`down`: configured down; `UNAVAIL`: its passive health took
/// the peer out) are magenta, the wire's (`UNHEALTHY`, `idle`) red and dim,
/// so the two sides never read alike.
fn tag(b: &Backend) -> (String, Style) {
    let p = &b.peer;
    let nginx = Style::default().fg(Color::Magenta);
    let (text, style) = if p.down || p.state == "down" {
        ("down".to_string(), nginx.add_modifier(Modifier::DIM))
    } else if p.state == "unavail" {
        ("UNAVAIL".to_string(), Style::default().fg(Color::White).bg(Color::Magenta).add_modifier(Modifier::BOLD))
    } else if p.state_from == "nginx" {
        // A verdict of nginx this dashboard does not know yet.
        (p.state.to_uppercase(), nginx.add_modifier(Modifier::BOLD))
    } else if p.state == "unhealthy" {
        ("UNHEALTHY".to_string(), Style::default().fg(Color::White).bg(Color::Red).add_modifier(Modifier::BOLD))
    } else if p.state == "idle" {
        ("idle".to_string(), dim())
    } else if p.backup {
        ("backup".to_string(), Style::default().fg(Color::Cyan))
    } else if !p.configured && b.upstream != crate::board::UNLISTED && !p.server.is_empty() && p.state != "up" {
        ("?".to_string(), dim())
    } else {
        (String::new(), Style::default())
    };
    (fit(&text, TAG_W), style)
}

/// The in-flight cell: requests nginx has a connection to the backend for,
/// `in_flight/max_conns` when the backend has a limit (red at the limit,
/// yellow from 80% of it); `-` when nginx's view is unknown (unlisted
/// peers, balancers that are not read).
pub fn in_flight(p: &Peer) -> (String, Style) {
    match &p.nginx {
        None => ("-".into(), dim()),
        Some(n) if n.max_conns > 0 => {
            let style = if n.in_flight >= n.max_conns {
                Style::default().fg(Color::White).bg(Color::Red).add_modifier(Modifier::BOLD)
            } else if n.in_flight.saturating_mul(5) >= n.max_conns.saturating_mul(4) {
                Style::default().fg(Color::Yellow).add_modifier(Modifier::BOLD)
            } else {
                Style::default()
            };
            (format!("{}/{}", n.in_flight, n.max_conns), style)
        }
        Some(n) => (n.in_flight.to_string(), if n.in_flight == 0 { dim() } else { Style::default() }),
    }
}

/// True when connections to the backend are not reused: of at least
/// [`NO_KEEPALIVE_MIN_REQUESTS`] requests since the probe started, at
/// least [`NO_KEEPALIVE_PCT`] percent opened a new connection.
pub fn no_keepalive(p: &Peer) -> bool {
    p.requests >= NO_KEEPALIVE_MIN_REQUESTS && p.keepalive.new_connection_pct >= NO_KEEPALIVE_PCT
}

/// Status mix of cumulative responses: `2xx 99% 5xx 1%`, coloured by class;
/// exchanges that got no response show as `✗`.
pub fn status_mix(r: &Responses, no_response: u64) -> Vec<Span<'static>> {
    let classes = [(2, r.c2xx), (3, r.c3xx), (4, r.c4xx), (5, r.c5xx)];
    let total: u64 = classes.iter().map(|c| c.1).sum::<u64>() + no_response;
    let mut spans = Vec::new();
    for (class, n) in classes {
        if n > 0 {
            if !spans.is_empty() {
                spans.push(Span::raw(" "));
            }
            spans.push(Span::styled(
                format!("{class}xx {}", format::pct(n, total)),
                Style::default().fg(format::class_color(class)),
            ));
        }
    }
    if no_response > 0 {
        if !spans.is_empty() {
            spans.push(Span::raw(" "));
        }
        spans.push(Span::styled(format!("✗ {}", format::pct(no_response, total)), Style::default().fg(Color::Magenta)));
    }
    if spans.is_empty() {
        spans.push(Span::styled("-", dim()));
    }
    spans
}

/// Routes of a backend, busiest first.
pub fn ranked_routes(routes: &[Route]) -> Vec<&Route> {
    let mut v: Vec<&Route> = routes.iter().collect();
    v.sort_by(|a, b| {
        b.rps
            .partial_cmp(&a.rps)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.requests.cmp(&a.requests))
            .then(a.other.cmp(&b.other))
            .then_with(|| (&a.path, &a.method).cmp(&(&b.path, &b.method)))
    });
    v
}

/// One backend row plus its top routes. Returns the lines; the first is the
/// backend itself.
pub fn backend_lines(b: &Backend, max_share: f64, cols: Columns, routes: usize, selected: bool) -> Vec<Line<'static>> {
    let p = &b.peer;
    let quiet = p.state == "idle" || p.state == "down" || p.down;
    let base = if quiet { dim() } else { Style::default() };
    let name_style = match p.state.as_str() {
        "unhealthy" => base.fg(Color::Red).add_modifier(Modifier::BOLD),
        "unavail" => base.fg(Color::Magenta).add_modifier(Modifier::BOLD),
        _ => base.add_modifier(Modifier::BOLD),
    };
    let marker = if selected { "▶ " } else { "  " };
    let (tag_text, tag_style) = tag(b);
    let share_frac = if max_share > 0.0 { p.share / max_share } else { 0.0 };
    let mut spans = vec![
        Span::styled(marker, Style::default().fg(Color::Cyan).add_modifier(Modifier::BOLD)),
        wire_fit(&fitted_label(b, cols.name), cols.name, name_style),
        Span::raw(" "),
        Span::styled(tag_text, tag_style),
        Span::raw(" "),
    ];
    if cols.history {
        spans.push(Span::styled(format::sparkline(&b.history, SPARK_W), base.fg(Color::Cyan)));
        spans.push(Span::raw(" "));
    }
    spans.push(Span::styled(right(&format::rps(p.rps), RPS_W), base.add_modifier(Modifier::BOLD)));
    spans.push(Span::raw(" "));
    if cols.bar {
        spans.push(Span::styled(format::bar(share_frac, BAR_W), base.fg(Color::Blue)));
        spans.push(Span::raw(" "));
    }
    spans.push(Span::styled(right(&format!("{:.0}%", p.share.clamp(0.0, 100.0)), PCT_W), base));
    spans.push(Span::raw(" "));
    if cols.avg {
        spans.push(Span::styled(right(&format::ms(p.header_time_window.avg), LAT_W), base));
        spans.push(Span::raw(" "));
    }
    spans.push(Span::styled(right(&format::ms(p.header_time_window.p99), LAT_W), base));
    spans.push(Span::raw(" "));
    let (infl, infl_style) = in_flight(p);
    spans.push(Span::styled(right(&infl, INFL_W), infl_style));
    spans.push(Span::raw(" "));
    if no_keepalive(p) {
        spans.push(Span::styled(fit("no", KA_W), Style::default().fg(Color::Yellow).add_modifier(Modifier::BOLD)));
    } else {
        spans.push(Span::raw(fit("", KA_W)));
    }
    spans.push(Span::raw("  "));
    spans.extend(status_mix(&p.responses, p.no_response));
    let mut lines = vec![Line::from(spans)];
    for r in ranked_routes(&p.routes).into_iter().take(routes) {
        lines.push(route_line(r, cols));
    }
    lines
}

fn route_text(r: &Route) -> (String, String) {
    if r.other {
        (String::new(), "(other)".into())
    } else {
        (r.method.clone(), r.path.clone())
    }
}

/// `    GET /api/orders    61.0/s` under a backend, the figure under REQ/S.
fn route_line(r: &Route, cols: Columns) -> Line<'static> {
    let (method, path) = route_text(r);
    // The backend row's REQ/S ends at 2 + name + before_rps + RPS_W; this
    // line's figure ends there too, its `/s` after it.
    let path_w = (2 + cols.name + cols.before_rps()).saturating_sub(4 + 7 + 1 + 1);
    let mut spans = vec![
        Span::raw("    "),
        wire_fit(&method, 7, format::method_style(&method)),
        Span::raw(" "),
        wire_fit(&path, path_w, Style::default()),
        Span::raw(" "),
        Span::raw(right(&format!("{}/s", format::rps(r.rps)), RPS_W + 2)),
    ];
    if r.errors_rps > 0.0 {
        spans.push(Span::styled(format!("  5xx {}/s", format::rps(r.errors_rps)), Style::default().fg(Color::Red)));
    }
    Line::from(spans)
}

/// The recent-requests feed, newest first.
pub fn recent_lines(board: &Board, filter: &str, max: usize) -> Vec<Line<'static>> {
    board
        .recent
        .iter()
        .filter(|r| r.matches(filter))
        .take(max)
        .map(|row| {
            let r = &row.req;
            let mut target = String::new();
            if !row.host.is_empty() {
                target.push_str(&row.host);
                target.push(' ');
            }
            if !r.upstream.is_empty() {
                target.push_str(&r.upstream);
                target.push(' ');
            }
            target.push_str(&r.server);
            let status = if r.status == 0 { "---".to_string() } else { r.status.to_string() };
            Line::from(vec![
                Span::styled(format::clock(r.time, true), dim()),
                Span::raw(" "),
                wire_fit(&r.method, 7, format::method_style(&r.method)),
                Span::raw(" "),
                wire_fit(&r.path, 40, Style::default()),
                Span::styled(" → ", dim()),
                wire(&target, Style::default()),
                Span::raw(" "),
                Span::styled(status, format::status_style(r.status)),
                Span::raw(" "),
                Span::raw(format::ms(r.header_time)),
            ])
        })
        .collect()
}

/// The footer: sort, filter, pause and the keys.
pub fn footer(sort: &str, filter: &str, editing: bool, detail: bool) -> Line<'static> {
    let key = Style::default().fg(Color::Black).bg(Color::Cyan);
    let mut spans = Vec::new();
    if editing {
        spans.push(Span::styled(" filter: ", key));
        spans.push(wire(filter, bold()));
        spans.push(Span::styled("█", Style::default().add_modifier(Modifier::SLOW_BLINK)));
        spans.push(Span::raw("  Enter keep · Esc clear"));
        return Line::from(spans);
    }
    spans.push(Span::raw(format!(" sort: {sort}")));
    if !filter.is_empty() {
        spans.push(Span::raw(" · filter: "));
        spans.push(wire(filter, bold()));
    }
    let keys: &[(&str, &str)] = if detail {
        &[("Esc", "back"), ("↑↓", "scroll"), ("p", "pause"), ("?", "help"), ("q", "quit")]
    } else {
        &[
            ("q", "quit"),
            ("s", "sort"),
            ("p", "pause"),
            ("/", "filter"),
            ("↑↓", "select"),
            ("⏎", "details"),
            ("?", "help"),
        ]
    };
    for (k, what) in keys {
        spans.push(Span::raw("  "));
        spans.push(Span::styled(format!(" {k} "), key));
        spans.push(Span::raw(format!(" {what}")));
    }
    Line::from(spans)
}

fn percentile_row(label: &str, p: &Percentiles) -> Line<'static> {
    Line::from(vec![
        Span::raw(fit(label, 16)),
        Span::raw(right(&format::ms(p.avg), 9)),
        Span::raw(right(&format::ms(p.p50), 9)),
        Span::raw(right(&format::ms(p.p90), 9)),
        Span::raw(right(&format::ms(p.p99), 9)),
    ])
}

/// Exact codes, `200 ×1234 (97%)`, coloured by class.
fn codes_line(r: &Responses, no_response: u64) -> Line<'static> {
    let total: u64 = r.codes.values().sum::<u64>() + no_response;
    let mut spans = vec![Span::raw(fit("status codes", 16))];
    for (code, n) in &r.codes {
        let status: u16 = code.parse().unwrap_or(0);
        spans.push(wire(code, format::status_style(status).add_modifier(Modifier::BOLD)));
        spans.push(Span::raw(format!(" ×{n} ({})   ", format::pct(*n, total))));
    }
    if no_response > 0 {
        spans.push(Span::styled("no response", Style::default().fg(Color::Magenta).add_modifier(Modifier::BOLD)));
        spans.push(Span::raw(format!(" ×{no_response} ({})", format::pct(no_response, total))));
    }
    if r.codes.is_empty() && no_response == 0 {
        spans.push(Span::styled("none yet", dim()));
    }
    Line::from(spans)
}

/// Width of the labels of the detail screen's nginx/keepalive/diagnosis lines.
const LABEL_W: usize = 12;

/// nginx's view of the backend on the detail screen, whose view it is (the
/// group's `scope`), its in-flight requests against max_conns and its
/// passive health: fails against max_fails within fail_timeout, the last
/// failure, and the failed connects the wire saw in that time.
fn nginx_lines(b: &Backend, width: usize) -> Vec<Line<'static>> {
    let p = &b.peer;
    let Some(n) = &p.nginx else {
        let why = match b.scope.as_str() {
            "unknown" => "not read: the group uses a balancer nginx does not ship",
            _ if b.upstream == crate::board::UNLISTED || b.scope == "none" => "none: no group lists this peer",
            _ => "not in this answer",
        };
        return packed("nginx", vec![Span::styled(why, dim())], width);
    };
    let mut facts = Vec::new();
    match b.scope.as_str() {
        "all_workers" => facts.push(Span::styled("all workers (zone)", dim())),
        "worker" if b.worker_pid > 0 => {
            facts.push(Span::styled(format!("worker {} only (no zone)", b.worker_pid), dim()))
        }
        "worker" => facts.push(Span::styled("one worker only (no zone)", dim())),
        "" => {}
        other => facts.push(wire(other, dim())),
    }
    let (infl, infl_style) = in_flight(p);
    facts.push(Span::styled(
        if n.max_conns > 0 { format!("in flight {infl} of max_conns") } else { format!("in flight {infl}") },
        if infl_style == dim() { Style::default() } else { infl_style },
    ));
    let taken_out = n.max_fails > 0 && n.fails >= n.max_fails;
    facts.push(Span::styled(
        if n.max_fails > 0 {
            format!("fails {} of max_fails {} in fail_timeout {}", n.fails, n.max_fails, window(n.fail_timeout_ms))
        } else {
            format!("fails {} (max_fails 0: never taken out)", n.fails)
        },
        if taken_out { Style::default().fg(Color::Magenta).add_modifier(Modifier::BOLD) } else { Style::default() },
    ));
    if n.last_failure > 0 {
        facts.push(Span::raw(format!("last failure {} UTC", format::clock(n.last_failure, false))));
    }
    facts.push(Span::raw(format!("{} failed connects on the wire within fail_timeout", n.wire_failed_connects)));
    packed("nginx", facts, width)
}

/// Connection reuse on the detail screen, flagged when there is none.
fn keepalive_lines(p: &Peer, width: usize) -> Vec<Line<'static>> {
    let k = &p.keepalive;
    let missing = if p.requests == 0 {
        Some("no requests yet")
    } else if p.connections.opened == 0 {
        Some("no connection opened since the probe started: every request reused one")
    } else if k.requests_per_connection == 0.0 {
        Some("not in this answer (an older module)")
    } else {
        None
    };
    let mut facts = match missing {
        Some(why) => vec![Span::styled(why, dim())],
        None => vec![
            Span::raw(format!("{:.1} requests per connection", k.requests_per_connection)),
            Span::raw(format!("{:.0}% of requests opened a new connection", k.new_connection_pct)),
        ],
    };
    if missing.is_none() && no_keepalive(p) {
        let warn = Style::default().fg(Color::Yellow).add_modifier(Modifier::BOLD);
        facts.push(Span::styled("NO REUSE: keepalive N in the upstream", warn));
        facts.push(Span::styled("proxy_http_version 1.1", warn));
        facts.push(Span::styled("proxy_set_header Connection \"\"", warn));
    }
    packed("keepalive", facts, width)
}

/// `label` then `facts` separated by ` · `, as many per line as fit in
/// `width`; further lines are indented under the first fact.
fn packed(label: &str, facts: Vec<Span<'static>>, width: usize) -> Vec<Line<'static>> {
    let room = width.saturating_sub(LABEL_W).max(20);
    let mut out: Vec<Line<'static>> = Vec::new();
    let mut spans = vec![Span::raw(fit(label, LABEL_W))];
    let mut used = 0;
    for fact in facts {
        let w = fact.content.width();
        if used > 0 && used + 3 + w > room {
            out.push(Line::from(std::mem::replace(&mut spans, vec![Span::raw(" ".repeat(LABEL_W))])));
            used = 0;
        }
        if used > 0 {
            spans.push(Span::styled(" · ", dim()));
            used += 3;
        }
        used += w;
        spans.push(fact);
    }
    out.push(Line::from(spans));
    out
}

/// `text` cut into lines of at most `width` columns at spaces (a word
/// longer than a line is cut).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if !line.is_empty() && line.width() + 1 + word.width() > width {
            out.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
        while line.width() > width {
            // As many characters as fit (at least one, so the loop moves on).
            let mut used = 0;
            let kept = line
                .chars()
                .take_while(|c| {
                    used += c.width().unwrap_or(0);
                    used <= width
                })
                .count()
                .max(1);
            out.push(line.chars().take(kept).collect());
            line = line.chars().skip(kept).collect();
        }
    }
    if !line.is_empty() {
        out.push(line);
    }
    out
}

/// The drill-down of one backend: everything the report says about it.
pub fn detail_lines(b: &Backend, width: usize) -> Vec<Line<'static>> {
    let p = &b.peer;
    let (tag_text, tag_style) = tag(b);
    let mut out = Vec::new();
    let mut title = vec![
        wire(&b.label(), bold().fg(Color::Cyan)),
        Span::raw("  "),
        Span::styled(tag_text.trim_end().to_string(), tag_style),
        wire(&format!("  state {}", p.state), Style::default()),
    ];
    match p.state_from.as_str() {
        "" => {}
        "nginx" => title.push(Span::styled(" (nginx's verdict)", Style::default().fg(Color::Magenta))),
        "wire" => title.push(Span::styled(" (the wire's verdict)", dim())),
        other => title.push(wire(&format!(" ({other})"), dim())),
    }
    if p.name != p.server && !p.name.is_empty() {
        title.push(wire(&format!("  ({})", p.name), dim()));
    }
    title.push(Span::raw(format!(
        "  weight {}{}{}{}",
        p.weight,
        if p.configured { "" } else { "  not in config" },
        if p.backup { "  backup" } else { "" },
        if p.down { "  marked down" } else { "" }
    )));
    if !p.counted_in.is_empty() && p.counted_in != b.upstream && b.upstream != crate::board::UNLISTED {
        // Shared with another group: that group's sums count it.
        title.push(wire(&format!("  counted in {}", p.counted_in), dim()));
    }
    out.push(Line::from(title));
    out.push(Line::from(vec![
        Span::styled(format!("{} req/s", format::rps(p.rps)), bold()),
        Span::raw(format!("   share {:.1}%   ", p.share)),
        Span::styled(format!("5xx {}/s", format::rps(p.errors_rps)), Style::default().fg(Color::Red)),
        Span::raw(format!(
            "   requests {}   no response {}   header time {}",
            p.requests,
            p.no_response,
            format::ms(p.header_time)
        )),
    ]));
    out.push(Line::from(format!(
        "connections: active {}  opened {}  closed {}  failed {}  reset {}   sent {}  received {}   last seen {}",
        p.active,
        p.connections.opened,
        p.connections.closed,
        p.connections.failed,
        p.connections.reset,
        format::bytes(p.sent),
        format::bytes(p.received),
        if p.last_seen == 0 { "never".to_string() } else { format!("{} UTC", format::clock(p.last_seen, false)) },
    )));
    out.extend(nginx_lines(b, width));
    out.extend(keepalive_lines(p, width));
    if !p.diagnosis.is_empty() {
        let style = Style::default().fg(Color::Yellow);
        for (i, part) in wrap(&sanitize::clean(&p.diagnosis), width.saturating_sub(LABEL_W).max(20)).iter().enumerate()
        {
            let label = if i == 0 { "diagnosis" } else { "" };
            out.push(Line::from(vec![Span::raw(fit(label, LABEL_W)), Span::styled(part.clone(), style)]));
        }
    }
    out.push(Line::from(""));
    out.push(Line::from(Span::styled(
        format!("{}{}{}{}{}", fit("latency", 16), right("avg", 9), right("p50", 9), right("p90", 9), right("p99", 9)),
        bold(),
    )));
    out.push(percentile_row("last interval", &p.header_time_window));
    out.push(percentile_row("since start", &p.header_time_total));
    out.push(Line::from(""));
    out.push(codes_line(&p.responses, p.no_response));
    out.push(Line::from(""));
    let spark_w = width.saturating_sub(16 + 12).clamp(10, 120);
    let (rps_h, err_h, p99_h) = match &p.history {
        Some(h) => (h.rps.clone(), h.errors.clone(), h.p99.clone()),
        None => (b.history.clone(), Vec::new(), Vec::new()),
    };
    let hist = |label: &str, v: &[f64], color: Color, fmt: fn(f64) -> String| {
        let last = v.last().copied().map(fmt).unwrap_or_else(|| "-".into());
        Line::from(vec![
            Span::raw(fit(label, 16)),
            Span::styled(format::sparkline(v, spark_w.min(v.len().max(10))), Style::default().fg(color)),
            Span::raw(format!("  {last}")),
        ])
    };
    out.push(hist("history req/s", &rps_h, Color::Cyan, format::rps));
    if !err_h.is_empty() {
        out.push(hist("history 5xx/s", &err_h, Color::Red, format::rps));
    }
    if !p99_h.is_empty() {
        out.push(hist("history p99", &p99_h, Color::Yellow, format::ms));
    }
    out.push(Line::from(""));
    out.push(Line::from(Span::styled(
        format!(
            "routes ({})  {} {} {} {} {} {} {}  CODES",
            p.routes.len(),
            right("REQ/S", 8),
            right("REQUESTS", 10),
            right("5XX/S", 7),
            right("P50", 8),
            right("P90", 8),
            right("P99", 8),
            right("✗", 5),
        ),
        bold().add_modifier(Modifier::REVERSED),
    )));
    let path_w = width.saturating_sub(8 + 11 + 8 + 9 * 3 + 6 + 20).clamp(16, 80);
    for r in ranked_routes(&p.routes) {
        let (method, path) = route_text(r);
        let mut spans = vec![
            wire_fit(&method, 7, format::method_style(&method)),
            Span::raw(" "),
            wire_fit(&path, path_w, Style::default()),
            Span::raw(right(&format::rps(r.rps), 9)),
            Span::raw(right(&r.requests.to_string(), 11)),
            Span::styled(
                right(&format::rps(r.errors_rps), 8),
                if r.errors_rps > 0.0 { Style::default().fg(Color::Red) } else { Style::default() },
            ),
            Span::raw(right(&format::ms(r.header_time.p50), 9)),
            Span::raw(right(&format::ms(r.header_time.p90), 9)),
            Span::raw(right(&format::ms(r.header_time.p99), 9)),
            Span::raw(right(&r.no_response.to_string(), 6)),
            Span::raw("  "),
        ];
        for (code, n) in &r.responses.codes {
            let status: u16 = code.parse().unwrap_or(0);
            spans.push(wire(code, format::status_style(status)));
            spans.push(Span::raw(format!("×{n} ")));
        }
        out.push(Line::from(spans));
    }
    if p.routes.is_empty() {
        out.push(Line::from(Span::styled("  no routes seen", dim())));
    }
    out
}

/// The help screen.
pub fn help_lines() -> Vec<Line<'static>> {
    let rows: &[(&str, &str)] = &[
        ("q, Ctrl-C", "quit"),
        ("s", "cycle the ranking: req/s → latency → errors → name"),
        ("p, space", "pause / resume (polling goes on; the screen freezes)"),
        ("/", "filter backends by group, address, state or route (Enter keeps, Esc clears)"),
        ("↑ ↓ j k", "select a backend (PgUp/PgDn, Home/End)"),
        ("Enter, →", "details: all routes, exact status codes, latency percentiles, history"),
        ("Esc, ←", "back (on the main screen: clear the filter)"),
        ("?", "this help"),
    ];
    let mut out = vec![Line::from(Span::styled("upstreamtop — keys", bold().fg(Color::Cyan))), Line::from("")];
    for (k, what) in rows {
        out.push(Line::from(vec![Span::styled(fit(k, 12), bold()), Span::raw(*what)]));
    }
    out.push(Line::from(""));
    out.push(Line::from(Span::styled("columns", bold().fg(Color::Cyan))));
    for (k, what) in [
        ("HISTORY", "req/s per interval, oldest left"),
        ("SHARE", "share of all requests in the last interval (bar relative to the busiest)"),
        ("AVG P99", "header time (request sent → first response byte) over the last interval"),
        ("STATUS", "responses since the probe started: 2xx green, 3xx cyan, 4xx yellow, 5xx red, ✗ no response"),
        ("STATE", "nginx's verdicts, magenta: UNAVAIL (max_fails failures within fail_timeout), down (configured)"),
        ("", "the wire's verdicts: UNHEALTHY (connect failures or mostly 5xx), idle (no traffic lately)"),
        ("", "also backup; ? (seen on the wire, not configured). Enter: nginx's view and why (diagnosis)"),
        ("INFL", "requests nginx has in flight to it, in_flight/max_conns when limited (red: at the limit)"),
        ("", "- : nginx's view unknown (unlisted peer); without a zone, one worker's count"),
        ("KA no", "no keepalive reuse: ≥ 90% of its requests (at least 10) opened a new connection"),
    ] {
        out.push(Line::from(vec![Span::styled(fit(k, 12), bold()), Span::raw(what)]));
    }
    out
}

/// Characters of a line, without styles (for plain text and tests).
pub fn plain(line: &Line<'_>) -> String {
    line.spans.iter().map(|s| s.content.as_ref()).collect::<String>().trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_cuts_at_spaces_and_long_words() {
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        assert_eq!(wrap("abcdefgh ij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("日本語", 4), ["日本", "語"]);
        assert_eq!(wrap(&"…".repeat(50), 20).concat(), "…".repeat(50), "ends, keeps every character");
        assert!(wrap("", 20).is_empty());
    }

    #[test]
    fn packed_moves_facts_that_do_not_fit_to_the_next_line() {
        let facts = vec![Span::raw("a".repeat(15)), Span::raw("b".repeat(15)), Span::raw("c")];
        let lines: Vec<String> = packed("x", facts, LABEL_W + 33).iter().map(plain).collect();
        assert_eq!(
            lines,
            [format!("x{}{} · {}", " ".repeat(11), "a".repeat(15), "b".repeat(15)), format!("{}c", " ".repeat(12))]
        );
    }
}
