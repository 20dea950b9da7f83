//! Rendering tests: recorded reports (tests/fixtures/*.json) drawn on
//! ratatui's TestBackend, asserting on the characters of the screen.

use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use upstreamtop::cli::SortKey;
use upstreamtop::plain::{self, PlainOptions};
use upstreamtop::source::{parse_report, HostResult, SourceError};
use upstreamtop::state::{App, Screen};
use upstreamtop::view;
use upstreamtop_report::schema::Report;

const HOST: &str = "127.0.0.1:8080";

fn fixture(name: &str) -> Report {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    parse_report(&body).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The fixture parsed without the source's sanitising pass, to prove the
/// renderer is safe on its own.
fn raw_fixture(name: &str) -> Report {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn app_with(report: Report) -> App {
    let mut app = App::new(vec![HOST.into()], SortKey::Rps, Duration::from_secs(1), 8, 4);
    app.update(vec![HostResult { host: HOST.into(), result: Ok(report) }]);
    app
}

fn render(app: &App, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| view::draw(f, app)).unwrap();
    let buf = term.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

fn key(app: &mut App, code: KeyCode) {
    app.on_key(KeyEvent::new(code, KeyModifiers::NONE));
}

fn type_text(app: &mut App, text: &str) {
    for c in text.chars() {
        key(app, KeyCode::Char(c));
    }
}

/// Row index of the first line containing `needle`.
fn row_of(screen: &str, needle: &str) -> usize {
    screen.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("`{needle}` not on screen:\n{screen}"))
}

fn assert_no_terminal_controls(text: &str) {
    for c in text.chars() {
        let bad = (c.is_control() && c != '\n')
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        assert!(!bad, "control character U+{:04X} reached the screen:\n{text}", c as u32);
    }
}

#[test]
fn normal_shows_header_backends_routes_and_feed() {
    let app = app_with(fixture("normal"));
    let s = render(&app, 140, 40);
    assert!(s.contains("248.0 req/s"), "{s}");
    assert!(!s.contains("dropped"), "feed sampling is not a drop:\n{s}");
    assert!(s.contains("1s window"), "{s}");
    assert!(s.contains("probe up"), "{s}");
    assert!(s.contains("23:51:02 UTC"), "{s}");
    assert!(s.contains(HOST), "{s}");
    for peer in
        ["10.0.1.10:8080", "10.0.1.11:8080", "10.0.1.12:8080", "10.0.1.13:8080", "10.0.1.14:8080", "127.0.0.1:9100"]
    {
        assert!(s.contains(peer), "{peer} missing:\n{s}");
    }
    // Ranked by req/s: 104 > 97 > 31 > 16 > idle ones.
    let order: Vec<usize> = [
        "api 10.0.1.10:8080",
        "api 10.0.1.11:8080",
        "checkout 10.0.1.12:8080",
        "unlisted 127.0.0.1:9100",
        "api 10.0.1.13:8080",
    ]
    .iter()
    .map(|n| row_of(&s, n))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "order {order:?}:\n{s}");
    // Figures of the top backend and its top routes beneath it.
    let top = s.lines().nth(order[0]).unwrap();
    for cell in ["104.0", "42%", "2.1ms", "9.0ms", "2xx 98%"] {
        assert!(top.contains(cell), "`{cell}` not in `{top}`");
    }
    assert!(row_of(&s, "/api/orders") == order[0] + 1);
    assert!(s.contains("61.0/s"));
    assert!(row_of(&s, "/healthz") < order[1]);
    // Marked states.
    assert!(s.lines().nth(order[2]).unwrap().contains("UNHEALTHY"));
    assert!(s.lines().nth(order[2]).unwrap().contains("5xx 12%"));
    assert!(s.lines().nth(row_of(&s, "10.0.1.13:8080")).unwrap().contains("idle"));
    assert!(s.lines().nth(row_of(&s, "10.0.1.14:8080")).unwrap().contains("down"));
    // The feed, newest first.
    assert!(s.contains("recent requests"));
    assert!(row_of(&s, "23:51:01.770 GET") < row_of(&s, "23:51:01.000 GET"), "{s}");
    assert!(s.contains("→ checkout 10.0.1.12:8080 502 158ms"), "{s}");
    // Footer.
    assert!(s.contains("sort: req/s"));
}

#[test]
fn sort_key_cycles_and_reorders() {
    let mut app = app_with(fixture("normal"));
    key(&mut app, KeyCode::Char('s'));
    assert_eq!(app.sort, SortKey::Latency);
    let s = render(&app, 140, 40);
    assert!(row_of(&s, "checkout 10.0.1.12") < row_of(&s, "api 10.0.1.10"), "{s}");
    assert!(row_of(&s, "api 10.0.1.11") < row_of(&s, "api 10.0.1.10"), "p99 9.8 > 9.0:\n{s}");
    assert!(s.contains("sort: latency"));
    key(&mut app, KeyCode::Char('s'));
    let s = render(&app, 140, 40);
    assert!(row_of(&s, "checkout 10.0.1.12") < row_of(&s, "api 10.0.1.10"), "{s}");
    assert!(row_of(&s, "api 10.0.1.10") < row_of(&s, "api 10.0.1.11"), "{s}");
    key(&mut app, KeyCode::Char('s'));
    let s = render(&app, 140, 40);
    let names = [
        "api 10.0.1.10",
        "api 10.0.1.11",
        "api 10.0.1.13",
        "api 10.0.1.14",
        "checkout 10.0.1.12",
        "unlisted 127.0.0.1:9100",
    ];
    let rows: Vec<usize> = names.iter().map(|n| row_of(&s, n)).collect();
    assert!(rows.windows(2).all(|w| w[0] < w[1]), "{s}");
    key(&mut app, KeyCode::Char('s'));
    assert_eq!(app.sort, SortKey::Rps);
}

#[test]
fn selection_and_drill_down() {
    let mut app = app_with(fixture("normal"));
    let s = render(&app, 140, 40);
    assert!(s.lines().nth(row_of(&s, "api 10.0.1.10")).unwrap().starts_with("▶"));
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Down);
    let s = render(&app, 140, 40);
    assert!(s.lines().nth(row_of(&s, "checkout 10.0.1.12")).unwrap().starts_with("▶"), "{s}");
    key(&mut app, KeyCode::Up);
    key(&mut app, KeyCode::Up);
    key(&mut app, KeyCode::Enter);
    assert!(matches!(app.screen, Screen::Detail(_)));
    let s = render(&app, 140, 40);
    // All four routes (the main screen shows --routes of them), exact
    // codes, both latency rows, history.
    for text in [
        "api 10.0.1.10:8080",
        "app1.internal:8080",
        "/api/orders",
        "/healthz",
        "/api/orders/:id/items",
        "/api/orders/:id",
        "routes (4)",
        "200 ×61000",
        "304 ×400",
        "404 ×120",
        "500 ×610",
        "last interval",
        "since start",
        "history req/s",
        "history 5xx/s",
        "history p99",
        "opened 40",
    ] {
        assert!(s.contains(text), "`{text}` missing:\n{s}");
    }
    let lat = s.lines().nth(row_of(&s, "last interval")).unwrap();
    for v in ["2.1ms", "1.8ms", "3.5ms", "9.0ms"] {
        assert!(lat.contains(v), "{lat}");
    }
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.screen, Screen::Main);
}

#[test]
fn main_screen_limits_routes_and_backends() {
    let mut app = App::new(vec![HOST.into()], SortKey::Rps, Duration::from_secs(1), 2, 1);
    app.update(vec![HostResult { host: HOST.into(), result: Ok(fixture("normal")) }]);
    let s = render(&app, 140, 40);
    let list = &s[..s.find("recent requests").unwrap()];
    assert!(list.contains("/api/orders"));
    assert!(!list.contains("/healthz"), "only one route per backend:\n{s}");
    assert!(list.contains("10.0.1.11:8080"));
    assert!(!list.contains("checkout 10.0.1.12"), "only two backends:\n{s}");
    assert!(list.contains("… 4 more"), "{s}");
}

#[test]
fn filter_narrows_the_list() {
    let mut app = app_with(fixture("normal"));
    key(&mut app, KeyCode::Char('/'));
    type_text(&mut app, "checkout");
    let s = render(&app, 140, 40);
    assert!(s.contains("filter: checkout"));
    key(&mut app, KeyCode::Enter);
    let s = render(&app, 140, 40);
    assert!(s.contains("checkout 10.0.1.12"));
    assert!(!s.contains("api 10.0.1.10"), "list and feed both filtered:\n{s}");
    assert!(s.contains("→ checkout 10.0.1.12:8080 502"), "{s}");
    // `q` typed in the filter must not quit.
    key(&mut app, KeyCode::Char('/'));
    type_text(&mut app, "q");
    assert!(!app.quit);
    key(&mut app, KeyCode::Esc);
    let s = render(&app, 140, 40);
    assert!(s.contains("api 10.0.1.10"));
    key(&mut app, KeyCode::Char('/'));
    type_text(&mut app, "nothing-like-this");
    key(&mut app, KeyCode::Enter);
    assert!(render(&app, 140, 40).contains("no backend matches"));
}

#[test]
fn pause_freezes_the_screen() {
    let mut app = app_with(fixture("normal"));
    key(&mut app, KeyCode::Char('p'));
    let before = render(&app, 140, 40);
    assert!(before.contains("PAUSED"));
    app.update(vec![HostResult { host: HOST.into(), result: Ok(fixture("empty")) }]);
    assert_eq!(render(&app, 140, 40), before);
    key(&mut app, KeyCode::Char('p'));
    let after = render(&app, 140, 40);
    assert!(!after.contains("10.0.1.10"), "{after}");
}

#[test]
fn help_and_quit_keys() {
    let mut app = app_with(fixture("normal"));
    key(&mut app, KeyCode::Char('?'));
    let s = render(&app, 120, 30);
    assert!(s.contains("cycle the ranking"), "{s}");
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.screen, Screen::Main);
    key(&mut app, KeyCode::Char('q'));
    assert!(app.quit);
    let mut app = app_with(fixture("normal"));
    app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert!(app.quit);
}

#[test]
fn empty_report() {
    let app = app_with(fixture("empty"));
    let s = render(&app, 100, 20);
    assert!(s.contains("0 req/s"), "{s}");
    assert!(s.contains("no backends seen yet"), "{s}");
}

#[test]
fn endpoint_down_before_any_data() {
    let mut app = App::new(vec![HOST.into()], SortKey::Rps, Duration::from_secs(2), 8, 4);
    let s = render(&app, 120, 20);
    assert!(s.contains("waiting for the first answer"), "{s}");
    app.update(vec![HostResult {
        host: HOST.into(),
        result: Err(SourceError::Down("127.0.0.1:8080: Connection refused (os error 111)".into())),
    }]);
    let s = render(&app, 120, 20);
    assert!(s.contains("endpoint down: 127.0.0.1:8080: Connection refused"), "{s}");
    assert!(s.contains("retrying every 2.0s"), "{s}");
    assert!(s.contains("no data"), "{s}");
}

#[test]
fn endpoint_down_after_data_keeps_last_figures() {
    let mut app = app_with(fixture("normal"));
    app.update(vec![HostResult { host: HOST.into(), result: Err(SourceError::Down("timed out".into())) }]);
    let s = render(&app, 140, 40);
    assert!(s.contains("127.0.0.1:8080 [figures from 23:51:02 UTC]: endpoint down: timed out"), "{s}");
    assert!(s.contains("NO ANSWER"), "header must not claim the probe is up:\n{s}");
    assert!(s.contains("api 10.0.1.10:8080"), "{s}");
    // Recovery clears the banner.
    app.update(vec![HostResult { host: HOST.into(), result: Ok(fixture("normal")) }]);
    assert!(!render(&app, 140, 40).contains("endpoint down"));
}

#[test]
fn unavailable_503_banner() {
    let mut app = App::new(vec![HOST.into()], SortKey::Rps, Duration::from_secs(1), 8, 4);
    app.update(vec![HostResult {
        host: HOST.into(),
        result: Err(SourceError::Unavailable {
            reason: "probe not running: /run/upstreamtop/table missing".into(),
            table: "/run/upstreamtop/table".into(),
        }),
    }]);
    let s = render(&app, 140, 20);
    assert!(s.contains("probe unavailable: probe not running: /run/upstreamtop/table missing"), "{s}");
    assert!(s.contains("probe DOWN"), "{s}");
}

#[test]
fn stale_probe_banner() {
    let app = app_with(fixture("stale"));
    let s = render(&app, 140, 30);
    assert!(s.contains("probe STALE"), "{s}");
    assert!(s.contains("9 dropped"), "events_dropped 7 + parse_errors 2:\n{s}");
    assert!(s.contains("probe stale — last publish 15.3s ago"), "{s}");
    assert!(s.contains("api 10.0.1.10:8080"), "{s}");
}

#[test]
fn hostile_paths_never_reach_the_terminal() {
    for report in [fixture("hostile"), raw_fixture("hostile")] {
        let mut app = app_with(report);
        for (w, h) in [(160, 50), (60, 12), (20, 5)] {
            assert_no_terminal_controls(&render(&app, w, h));
        }
        let s = render(&app, 160, 50);
        assert!(s.contains(r"/\x1b[2J\x1b[H/owned"), "escapes shown as text:\n{s}");
        assert!(s.contains(r"/x\x0d/overwrite"), "{s}");
        assert!(s.contains(r"\u{202e}exe.txt"), "{s}");
        assert!(s.contains(r"api\x1b[5m 10.0.1.10"), "{s}");
        key(&mut app, KeyCode::Enter);
        let s = render(&app, 160, 50);
        assert!(s.contains(r"G\x1bET"), "{s}");
        assert!(s.contains(r"state up (wire\x1b[31m)"), "{s}");
        assert!(s.contains(r"weight 1  counted in other\u{202e}group"), "{s}");
        assert!(s.contains(r"diagnosis   why\x1b[2J\x0d\u{2067}hidden\u{2069} not"), "{s}");
        assert_no_terminal_controls(&s);
        for (w, h) in [(60, 12), (20, 5)] {
            assert_no_terminal_controls(&render(&app, w, h));
        }
    }
    // Typed filter text is sanitised too.
    let mut app = app_with(fixture("hostile"));
    key(&mut app, KeyCode::Char('/'));
    type_text(&mut app, "\u{202e}x");
    assert_no_terminal_controls(&render(&app, 100, 20));
}

#[test]
fn hostile_paths_plain_text() {
    for report in [fixture("hostile"), raw_fixture("hostile")] {
        let app = app_with(report);
        let text = plain::render(app.board(), app.polls, &plain_opts(&app));
        assert_no_terminal_controls(&text);
        assert!(text.contains(r"/bell\x07\x07"), "{text}");
    }
}

fn plain_opts(app: &App) -> PlainOptions<'_> {
    PlainOptions { sort: app.sort, filter: &app.filter, backends: 8, routes: 4, recent: 10, interval: None }
}

#[test]
fn plain_snapshot_matches_screen_figures() {
    let app = app_with(fixture("normal"));
    let text = plain::render(app.board(), app.polls, &plain_opts(&app));
    assert!(text.starts_with("upstreamtop — nginx upstreams · 248.0 req/s"), "{text}");
    let top = text.lines().nth(2).unwrap();
    assert!(top.contains("api 10.0.1.10:8080") && top.contains("104.0") && top.contains("42%"), "{text}");
    assert!(text.contains("recent requests"));
    assert!(text.contains("→ checkout 10.0.1.12:8080 502 158ms"));
    assert!(!text.contains("retrying"), "no retry in a one-shot snapshot");
    assert!(text.lines().all(|l| l == l.trim_end()));
}

#[test]
fn several_hosts_are_merged_and_labelled() {
    let hosts = vec!["10.0.0.1:80".to_string(), "10.0.0.2:80".to_string()];
    let mut app = App::new(hosts.clone(), SortKey::Rps, Duration::from_secs(1), 20, 1);
    app.update(vec![
        HostResult { host: hosts[0].clone(), result: Ok(fixture("normal")) },
        HostResult { host: hosts[1].clone(), result: Err(SourceError::Down("refused".into())) },
    ]);
    let s = render(&app, 160, 50);
    assert!(s.contains("1/2 hosts"), "{s}");
    assert!(s.contains("probe up"), "the answering host's probe:\n{s}");
    assert!(s.contains("10.0.0.1:80 api 10.0.1.10:8080"), "{s}");
    assert!(s.contains("10.0.0.2:80: endpoint down: refused"), "{s}");
    app.update(vec![
        HostResult { host: hosts[0].clone(), result: Ok(fixture("normal")) },
        HostResult { host: hosts[1].clone(), result: Ok(fixture("normal")) },
    ]);
    let s = render(&app, 160, 50);
    assert!(s.contains("496.0 req/s"), "totals add up:\n{s}");
    assert!(s.contains("10.0.0.2:80 api 10.0.1.10:8080"), "{s}");
}

#[test]
fn tiny_and_odd_sizes_never_panic() {
    let mut apps = vec![
        app_with(fixture("normal")),
        app_with(fixture("hostile")),
        app_with(fixture("empty")),
        app_with(fixture("nginx_view")),
    ];
    let mut down = App::new(vec![HOST.into()], SortKey::Rps, Duration::from_secs(1), 8, 4);
    down.update(vec![HostResult { host: HOST.into(), result: Err(SourceError::Down("x".repeat(500))) }]);
    apps.push(down);
    for app in &mut apps {
        for screen in 0..3 {
            match screen {
                1 => key(app, KeyCode::Enter),
                2 => key(app, KeyCode::Char('?')),
                _ => {}
            }
            for w in (1..=30).chain([41, 80, 300]) {
                for h in (1..=12).chain([25, 100]) {
                    let s = render(app, w, h);
                    assert_eq!(s.lines().count(), h as usize);
                }
            }
            if screen == 2 {
                key(app, KeyCode::Esc);
                key(app, KeyCode::Esc);
            }
        }
    }
    // The sizes the brief names, checked for content too.
    let app = app_with(fixture("normal"));
    assert!(render(&app, 20, 5).starts_with("upstreamtop — nginx"));
    assert_eq!(render(&app, 1, 1), "u\n");
}

#[test]
fn selection_scrolls_into_view_on_short_terminal() {
    let mut app = app_with(fixture("normal"));
    for _ in 0..5 {
        key(&mut app, KeyCode::Down);
    }
    let s = render(&app, 120, 8);
    let sel = s.lines().find(|l| l.starts_with("▶")).unwrap_or_else(|| panic!("selection off screen:\n{s}"));
    assert!(sel.contains("10.0.1.14:8080"), "{s}");
}

#[test]
fn narrow_terminal_keeps_peer_addresses() {
    let app = app_with(fixture("hostile"));
    let s = render(&app, 90, 20);
    assert!(s.contains(" 10.0.1.10:8080"), "{s}");
    let hosts = vec!["nginx-frontend-a.example.internal:8080".to_string()];
    let mut app = App::new(hosts.clone(), SortKey::Rps, Duration::from_secs(1), 8, 4);
    app.update(vec![HostResult { host: hosts[0].clone(), result: Ok(fixture("normal")) }]);
    for w in [70, 80, 100] {
        let s = render(&app, w, 30);
        for peer in ["10.0.1.10:8080", "10.0.1.11:8080", "10.0.1.12:8080"] {
            assert!(s.contains(peer), "{peer} at width {w}:\n{s}");
        }
    }
}

/// The line of `screen` whose backend label (after the 2-column marker) is
/// `label`, trailing spaces removed.
fn backend_row<'a>(screen: &'a str, label: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.chars().skip(2).collect::<String>().starts_with(&format!("{label} ")))
        .unwrap_or_else(|| panic!("no row `{label}`:\n{screen}"))
        .trim_end()
}

/// tests/fixtures/nginx_view.json: group `api` (with a zone) holds a peer
/// nginx took out (`.11` unavail, 2 fails of max_fails 2), one at its
/// max_conns (`.12`, 4 of 4 in flight; `legacy` lists it too, `api` counts
/// it) and one the wire finds unhealthy (`.13`); group `legacy` (no zone,
/// worker 4321) has a backend without keepalive reuse (`.20`: 500 requests
/// on 500 new connections) and one with too few requests to judge (`.30`:
/// 5 of 5); the unlisted peer has no nginx view.
#[test]
fn nginx_state_in_flight_and_keepalive_at_80_columns() {
    let app = app_with(fixture("nginx_view"));
    let s = render(&app, 80, 24);
    assert_eq!(
        backend_row(&s, "BACKEND"),
        "  BACKEND            STATE       REQ/S SHARE     P99    INFL KA  STATUS",
        "\n{s}"
    );
    for (label, row) in [
        ("api 10.0.2.11:8080", "  api 10.0.2.11:8080 UNAVAIL         0    0%   6.5ms       0     2xx 100%"),
        ("api 10.0.2.12:8080", "  api 10.0.2.12:8080              60.0   30%   6.5ms     4/4     2xx 100%"),
        ("le… 10.0.2.20:8080", "  le… 10.0.2.20:8080              20.0   10%   6.5ms       1 no  2xx 100%"),
        ("le… 10.0.2.30:8080", "  le… 10.0.2.30:8080              1.00    0%   6.5ms       0     2xx 100%"),
        ("api 10.0.2.13:8080", "  api 10.0.2.13:8080 UNHEALTHY    10.0    5%   6.5ms       1     2xx 33% 5xx 67%"),
        ("un… 127.0.0.1:9100", "  un… 127.0.0.1:9100              9.00    4%   6.5ms       -     2xx 100%"),
    ] {
        assert_eq!(backend_row(&s, label), row, "\n{s}");
    }
    assert_eq!(
        backend_row(&s, "api 10.0.2.10:8080"),
        "▶ api 10.0.2.10:8080             100.0   50%   6.5ms       3     2xx 100%"
    );
    assert!(s.lines().all(|l| l.chars().count() == 80), "{s}");
}

#[test]
fn nginx_state_in_flight_and_keepalive_full_width_and_plain() {
    let app = app_with(fixture("nginx_view"));
    let text = plain::render(app.board(), app.polls, &plain_opts(&app));
    let s = render(&app, 140, 40);
    for screen in [text.as_str(), s.as_str()] {
        assert!(
            screen.contains("  BACKEND                 STATE     HISTORY      REQ/S SHARE              AVG     P99    INFL KA  STATUS"),
            "{screen}"
        );
        for (label, tail) in [
            ("api 10.0.2.11:8080", "UNAVAIL   ████             0             0%   2.0ms   6.5ms       0     2xx 100%"),
            ("api 10.0.2.12:8080", "█    60.0 ████▊      30%   2.0ms   6.5ms     4/4     2xx 100%"),
            ("legacy 10.0.2.20:8080", "█    20.0 █▋         10%   2.0ms   6.5ms       1 no  2xx 100%"),
            ("legacy 10.0.2.30:8080", "█    1.00 ▏           0%   2.0ms   6.5ms       0     2xx 100%"),
            ("unlisted 127.0.0.1:9100", "█    9.00 ▊           4%   2.0ms   6.5ms       -     2xx 100%"),
        ] {
            let row = backend_row(screen, label);
            assert!(row.ends_with(tail), "`{row}` does not end in `{tail}`");
        }
    }
    // Older answers (no nginx view, no keepalive figures): `-`, no flag.
    let app = app_with(fixture("normal"));
    let s = plain::render(app.board(), app.polls, &plain_opts(&app));
    let top = backend_row(&s, "api 10.0.1.10:8080");
    assert!(top.ends_with("   2.1ms   9.0ms       -     2xx 98% 3xx <1% 4xx <1% 5xx <1%"), "{top}");
    assert!(!s.contains(" no  "), "{s}");
}

#[test]
fn detail_shows_nginx_view_keepalive_and_diagnosis() {
    let mut app = app_with(fixture("nginx_view"));
    // The `down`-th backend (0: the first) the filter leaves, opened.
    let open = |app: &mut App, filter: &str, down: usize| {
        key(app, KeyCode::Esc);
        key(app, KeyCode::Esc);
        key(app, KeyCode::Char('/'));
        type_text(app, filter);
        key(app, KeyCode::Enter);
        for _ in 0..down {
            key(app, KeyCode::Down);
        }
        key(app, KeyCode::Enter);
        assert!(matches!(app.screen, Screen::Detail(_)));
    };
    open(&mut app, "10.0.2.11", 0);
    let s = render(&app, 80, 30);
    let lines: Vec<&str> = s.lines().map(str::trim_end).collect();
    assert!(lines[1].starts_with("api 10.0.2.11:8080  UNAVAIL  state unavail (nginx's verdict)  weight 1"), "{s}");
    for line in [
        "nginx       all workers (zone) · in flight 0",
        "            fails 2 of max_fails 2 in fail_timeout 30s",
        "            last failure 23:50:50 UTC",
        "            2 failed connects on the wire within fail_timeout",
        "keepalive   1666.7 requests per connection",
        "            0% of requests opened a new connection",
        "diagnosis   nginx took it out of rotation: 2 failures (max_fails 2) within",
        "            fail_timeout 30 s; the wire saw 2 failed connects in that time, and",
        "            0 resets and 0 exchanges without a response since the probe started",
    ] {
        assert!(lines.contains(&line), "`{line}` missing:\n{s}");
    }

    open(&mut app, "10.0.2.12", 0);
    let s = render(&app, 120, 30);
    let lines: Vec<&str> = s.lines().map(str::trim_end).collect();
    for line in [
        "nginx       all workers (zone) · in flight 4/4 of max_conns · fails 0 of max_fails 1 in fail_timeout 10s",
        "diagnosis   at max_conns: 4 of 4 requests in flight, nginx picks other peers",
    ] {
        assert!(lines.contains(&line), "`{line}` missing:\n{s}");
    }

    open(&mut app, "10.0.2.12", 1);
    let s = render(&app, 120, 30);
    assert!(s.lines().nth(1).unwrap().trim_end().ends_with("weight 1  counted in api"), "{s}");
    assert!(s.contains("nginx       worker 4321 only (no zone) · in flight 0 ·"), "{s}");

    open(&mut app, "10.0.2.20", 0);
    let s = render(&app, 80, 30);
    let lines: Vec<&str> = s.lines().map(str::trim_end).collect();
    for line in [
        "keepalive   1.0 requests per connection",
        "            100% of requests opened a new connection",
        "            NO REUSE: keepalive N in the upstream · proxy_http_version 1.1",
        "            proxy_set_header Connection \"\"",
    ] {
        assert!(lines.contains(&line), "`{line}` missing:\n{s}");
    }
    assert!(!s.contains("diagnosis"), "nothing to explain:\n{s}");

    open(&mut app, "unlisted", 0);
    let s = render(&app, 120, 30);
    assert!(s.lines().any(|l| l.trim_end() == "nginx       none: no group lists this peer"), "{s}");
}

#[test]
fn help_explains_state_in_flight_and_keepalive() {
    let mut app = app_with(fixture("nginx_view"));
    key(&mut app, KeyCode::Char('?'));
    let s = render(&app, 110, 40);
    for text in [
        "STATE       nginx's verdicts, magenta: UNAVAIL (max_fails failures within fail_timeout), down (configured)",
        "            the wire's verdicts: UNHEALTHY (connect failures or mostly 5xx), idle (no traffic lately)",
        "INFL        requests nginx has in flight to it, in_flight/max_conns when limited (red: at the limit)",
        "KA no       no keepalive reuse: ≥ 90% of its requests (at least 10) opened a new connection",
    ] {
        assert!(s.contains(text), "`{text}` missing:\n{s}");
    }
}

#[test]
fn filter_finds_unavail_backends() {
    let mut app = app_with(fixture("nginx_view"));
    key(&mut app, KeyCode::Char('/'));
    type_text(&mut app, "unavail");
    key(&mut app, KeyCode::Enter);
    let s = render(&app, 100, 20);
    assert!(s.contains("api 10.0.2.11:8080"), "{s}");
    assert!(!s.contains("10.0.2.10:8080"), "{s}");
}
