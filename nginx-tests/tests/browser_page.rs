//! The live page in a real browser: headless Chromium (driven over W3C
//! WebDriver by `nginx_tests::webdriver`) against the real stack — the
//! vendored nginx with the module, the probe on loopback, counting
//! backends. What the page shows is read from the DOM and compared with
//! the JSON the module serves and with what the backends served:
//!
//! - every backend of the JSON is a row, with the same request count as
//!   the JSON and the backend itself, and the rows follow new traffic;
//!   a backend's drill-down lists its routes with their exact counts;
//!   keyboard focus survives the page's once-a-second re-render;
//! - hostile paths on the wire (markup, `</script>`, quotes, entities,
//!   control bytes, invalid UTF-8, bidi overrides) come out as text: the
//!   DOM has exactly the JSON's strings, no element is made from them, no
//!   injected script sets its marker, and the policy blocks an inline
//!   handler even when one gets into the page;
//! - with the probe stopped the page shows the down banner, with the table
//!   corrupted the 503 banner, and nginx goes on serving meanwhile;
//! - the response headers, and that `Accept: */*` and scrapers keep their
//!   formats;
//! - the page loads with no console error.
//!
//! `UPDATE_SCREENSHOT=1` also runs the demo setup (the simulator) and
//! writes `docs/img/page.png`.
//!
//! Needs root (tcx) and Chromium + chromedriver (Debian packages
//! `chromium`, `chromium-driver`); without them the tests say so and pass.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nginx_tests::backend::{Backend, Profile};
use nginx_tests::load::{self, LoadSpec, Route};
use nginx_tests::nginx::{free_port, Nginx, NginxConf};
use nginx_tests::probe::Probe;
use nginx_tests::webdriver::{key, Browser, LogEntry, Options};
use nginx_tests::{artifacts, http, prereq, webdriver};
use serde_json::Value;
use upstreamtop_table::Snapshot;

/// How long the probe may take to account for traffic that already ended.
const SETTLE: Duration = Duration::from_secs(20);
/// How long the page may take to show what the JSON has (it polls every
/// second).
const PAGE: Duration = Duration::from_secs(10);
/// What the page itself polls.
const PAGE_QUERY: &str = "?format=json&routes=10&recent=50";
/// The group key the page gives backends no `upstream {}` lists.
const UNLISTED: &str = "\u{1}unlisted";

fn can_run(test: &str) -> bool {
    prereq::root_or_skip(test, "tcx programs") && webdriver::browser_or_skip(test)
}

/// A loopback address of this test's own, and a probe told to track only
/// it: other tests, chromedriver and the browser's DevTools connection all
/// talk HTTP over lo too.
fn test_ip(n: u8) -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(127, 120 + n, (pid >> 8) as u8, (pid % 254) as u8 + 1)
}

struct Stack {
    probe: Probe,
    nginx: Nginx,
}

/// Probe (`--only ip/32`, 250 ms publishes) and nginx with the module,
/// `conf` adding the upstreams and locations.
fn stack(ip: Ipv4Addr, conf: impl FnOnce(NginxConf) -> NginxConf) -> Stack {
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
    let only = format!("{ip}/32");
    let probe =
        Probe::start(&["--iface", "lo", "--only", &only, "--ignore-port", &port.to_string(), "--interval", "250ms"])
            .unwrap();
    let base = NginxConf::vendored_with_module().unwrap().port(port).workers(2).table(probe.table_path());
    let nginx = Nginx::start(conf(base)).unwrap();
    Stack { probe, nginx }
}

fn peer_requests(snap: &Snapshot, addr: SocketAddr) -> Option<u64> {
    snap.peers.iter().find(|p| p.addr == addr).map(|p| p.requests)
}

/// Wait until the table has every backend's exact total.
fn settle(probe: &mut Probe, backends: &[&Backend]) {
    let snap =
        probe.wait_until(SETTLE, |s| backends.iter().all(|b| peer_requests(s, b.addr()) == Some(b.total()))).unwrap();
    for b in backends {
        assert_eq!(peer_requests(&snap, b.addr()), Some(b.total()), "table vs backend {}", b.addr());
    }
}

/// The JSON the page polls, fetched by the test.
fn json(nginx: &Nginx) -> Value {
    let resp = http::get(&nginx.url(&format!("/upstreamtop{PAGE_QUERY}"))).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    serde_json::from_slice(&resp.body).expect("the endpoint answers JSON")
}

/// (group key as the page has it, server) -> requests, for every peer.
fn json_peers(doc: &Value) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    let mut add = |group: &str, g: &Value| {
        for p in g["peers"].as_array().into_iter().flatten() {
            out.insert((group.to_owned(), p["server"].as_str().unwrap().to_owned()), p["requests"].as_u64().unwrap());
        }
    };
    for (name, g) in doc["upstreams"].as_object().expect("upstreams") {
        add(name, g);
    }
    add(UNLISTED, &doc["unlisted"]);
    out
}

fn json_peer<'a>(doc: &'a Value, group: &str, server: &str) -> &'a Value {
    doc["upstreams"][group]["peers"]
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["server"] == server))
        .unwrap_or_else(|| panic!("{group} {server} not in the JSON"))
}

/// What the page shows, read from the DOM in one go.
const PAGE_STATE: &str = r#"
const $ = (id) => document.getElementById(id);
const cells = (tr) => Array.from(tr.cells, (c) => c.textContent);
const rows = (id) => Array.from($(id).rows, cells);
const active = document.activeElement;
return {
  peers: Array.from(document.querySelectorAll("tr.peer"), (tr) => ({
    group: tr.closest("section").dataset.group,
    server: tr.dataset.server,
    key: tr.dataset.key,
    cells: cells(tr),
    selected: tr.classList.contains("sel"),
  })),
  totals: { rps: $("t-rps").textContent, requests: $("t-req").textContent, probe: $("t-probe").textContent },
  error: { hidden: $("b-error").hidden, kind: $("b-error").dataset.kind || "", text: $("b-error").textContent },
  stale: { hidden: $("b-stale").hidden, text: $("b-stale").textContent },
  detail: { hidden: $("detail").hidden, title: $("d-title").textContent, routes: rows("d-routes"), recent: rows("d-recent") },
  recent: rows("recent"),
  focused: active && active.classList && active.classList.contains("peer") ? active.dataset.key : null,
  pwned: typeof window.__pwned,
};
"#;

/// Column of the requests count in a peer row, and of method, path and
/// requests in a route row.
const PEER_REQUESTS: usize = 6;
const ROUTE_METHOD: usize = 0;
const ROUTE_PATH: usize = 1;
const ROUTE_REQUESTS: usize = 3;

/// (group, server) -> the requests cell, from a [`PAGE_STATE`].
fn dom_peers(state: &Value) -> BTreeMap<(String, String), String> {
    state["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let key = (p["group"].as_str().unwrap().to_owned(), p["server"].as_str().unwrap().to_owned());
            (key, p["cells"][PEER_REQUESTS].as_str().unwrap().to_owned())
        })
        .collect()
}

/// The page's peers as numbers, to compare with [`json_peers`].
fn dom_peer_counts(state: &Value) -> BTreeMap<(String, String), u64> {
    dom_peers(state).into_iter().map(|(k, v)| (k, v.parse().unwrap_or(u64::MAX))).collect()
}

fn page_state(browser: &Browser) -> Value {
    browser.execute(PAGE_STATE, &[]).unwrap()
}

/// Wait until `done` holds for the page's state; the last state goes into
/// the failure.
fn wait_page(browser: &Browser, what: &str, done: impl FnMut(&Value) -> bool) -> Value {
    browser.wait_for(what, PAGE, PAGE_STATE, &[], done).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Console errors, less the browser's own `/favicon.ico` request (outside
/// the status location; nginx answers it 404 unless the site has one).
fn console_errors(browser: &Browser) -> Vec<LogEntry> {
    let all = browser.console().unwrap();
    all.into_iter().filter(|e| e.is_error() && !e.message.contains("/favicon.ico ")).collect()
}

/// Routes of a detail table as (method, path) -> requests.
fn dom_routes(rows: &Value) -> BTreeMap<(String, String), u64> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let cell = |i: usize| r[i].as_str().unwrap().to_owned();
            ((cell(ROUTE_METHOD), cell(ROUTE_PATH)), cell(ROUTE_REQUESTS).parse().unwrap())
        })
        .collect()
}

fn json_routes(peer: &Value) -> BTreeMap<(String, String), u64> {
    peer["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_owned();
            ((s("method"), s("path")), r["requests"].as_u64().unwrap())
        })
        .collect()
}

/// Numeric segments fold to `:id` (the only id shape these tests send).
fn fold(path: &str) -> String {
    path.split('/')
        .map(|seg| if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) { ":id" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

fn backend_routes(b: &Backend) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for ((method, path), n) in b.by_route() {
        *out.entry((method, fold(&path))).or_insert(0) += n;
    }
    out
}

fn send(nginx: &Nginx, routes: Vec<Route>, n: u64) {
    let got = load::run(&LoadSpec::new(nginx.addr(), routes).requests(n).concurrency(4)).unwrap();
    assert_eq!(got.errors, 0, "{:?}", got.error_samples);
    assert_eq!(got.responses(), n);
}

/// The page, the JSON and the backends agree on every backend's count.
fn assert_page_matches(browser: &Browser, nginx: &Nginx, backends: &[&Backend]) -> (Value, Value) {
    let want: Vec<(SocketAddr, u64)> = backends.iter().map(|b| (b.addr(), b.total())).collect();
    let state = wait_page(browser, "the page shows every backend's total", |s| {
        let dom = dom_peers(s);
        want.iter().all(|(a, n)| dom.iter().any(|((_, server), v)| *server == a.to_string() && *v == n.to_string()))
    });
    let doc = json(nginx);
    let (dom, js) = (dom_peer_counts(&state), json_peers(&doc));
    assert_eq!(dom, js, "the page's rows (left) vs the JSON's peers (right)");
    for (addr, n) in &want {
        let hits: Vec<_> = dom.iter().filter(|((_, s), _)| *s == addr.to_string()).collect();
        assert!(!hits.is_empty(), "{addr} not on the page");
        for (_, v) in hits {
            assert_eq!(v, n, "{addr}: page vs backend");
        }
    }
    assert_eq!(state["totals"]["requests"], doc["totals"]["requests"].to_string().as_str(), "totals");
    assert_eq!(state["totals"]["probe"], "up");
    assert_eq!(state["error"]["hidden"], true, "{state}");
    assert_eq!(state["stale"]["hidden"], true, "{state}");
    (state, doc)
}

/// Wait until the page has fetched the JSON `n` more times (so it has
/// rendered at least `n - 1` fresh answers).
fn wait_polls(browser: &Browser, n: u64) {
    const POLLS: &str = "performance.setResourceTimingBufferSize(100000); \
        return performance.getEntriesByType('resource').filter((e) => e.name.includes('format=json')).length;";
    let start = browser.execute(POLLS, &[]).unwrap().as_u64().unwrap();
    browser.wait_for("the page polls", PAGE, POLLS, &[], |v| v.as_u64().unwrap() >= start + n).unwrap();
}

fn row_selector(server: &str) -> String {
    format!("tr.peer[data-server=\"{server}\"]")
}

#[test]
fn page_shows_every_backend_with_exact_counts_follows_traffic_and_drills_down() {
    let test = "page_shows_every_backend_with_exact_counts_follows_traffic_and_drills_down";
    if !can_run(test) {
        return;
    }
    let started = Instant::now();
    let ip = test_ip(0);
    let lo = SocketAddr::new(IpAddr::V4(ip), 0);
    let app1 = Backend::start(lo, Profile::fast().statuses(&[(200, 9), (404, 1)])).unwrap();
    let app2 = Backend::start(lo, Profile::fast()).unwrap();
    let checkout =
        Backend::start(lo, Profile::fast().statuses(&[(201, 1)]).error_rate(0.2).error_statuses(&[502, 503])).unwrap();
    // Configured `down`: in the JSON (and so on the page) with no traffic.
    let down = SocketAddr::new(IpAddr::V4(ip), free_port(IpAddr::V4(ip)).unwrap());
    let Stack { mut probe, nginx } = stack(ip, |c| {
        c.upstream_servers("app", &[app1.addr(), app2.addr()]).upstream(
            "checkout",
            &[format!("server {} max_fails=0", checkout.addr()), format!("server {down} down"), "keepalive 8".into()],
        )
    });
    let backends = [&app1, &app2, &checkout];

    send(
        &nginx,
        vec![
            Route::get("/p/app/api/orders/17", 3),
            Route::get("/p/app/api/users", 2),
            Route::post("/p/checkout/pay", 1, b"{}"),
        ],
        120,
    );
    settle(&mut probe, &backends);

    let browser = Browser::start().unwrap();
    // No format, a browser's Accept: the page.
    browser.goto(&nginx.url("/upstreamtop")).unwrap();
    let (state, doc) = assert_page_matches(&browser, &nginx, &backends);
    assert_eq!(doc["upstreams"]["checkout"]["peers"].as_array().unwrap().len(), 2, "the down server is listed");
    let down_row = state["peers"].as_array().unwrap().iter().find(|p| p["server"] == down.to_string().as_str());
    let down_row = down_row.unwrap_or_else(|| panic!("the down server has no row: {state}"));
    assert_eq!(down_row["cells"][2], "down (nginx)", "{down_row}");
    assert_eq!(down_row["cells"][PEER_REQUESTS], "0");
    eprintln!("page rows: {:?}", dom_peers(&state));

    // New traffic: the rows follow, still exact.
    send(&nginx, vec![Route::get("/p/app/api/orders/18", 1), Route::post("/p/checkout/pay", 1, b"{}")], 60);
    settle(&mut probe, &backends);
    assert_page_matches(&browser, &nginx, &backends);

    // Drill-down: a click opens the backend's routes, counts exact.
    browser.click(&browser.find(&row_selector(&app1.addr().to_string())).unwrap()).unwrap();
    let want_routes = backend_routes(&app1);
    let state = wait_page(&browser, "the drill-down shows app1's routes", |s| {
        s["detail"]["hidden"] == false && dom_routes(&s["detail"]["routes"]) == want_routes
    });
    let title = state["detail"]["title"].as_str().unwrap();
    assert!(title.starts_with(&app1.addr().to_string()) && title.ends_with(" — app"), "{title}");
    let doc = json(&nginx);
    let peer = json_peer(&doc, "app", &app1.addr().to_string());
    assert_eq!(json_routes(peer), want_routes, "JSON routes vs backend");
    assert_eq!(want_routes.len(), 2, "{want_routes:?}");
    let recent = state["detail"]["recent"].as_array().unwrap();
    assert!(!recent.is_empty(), "the drill-down lists app1's recent requests");
    for r in recent {
        let key = (r[1].as_str().unwrap().to_owned(), r[2].as_str().unwrap().to_owned());
        assert!(want_routes.contains_key(&key), "recent {r} is one of app1's routes");
    }
    let selected: Vec<_> = state["peers"].as_array().unwrap().iter().filter(|p| p["selected"] == true).collect();
    assert_eq!(selected.len(), 1, "{selected:?}");
    assert_eq!(selected[0]["server"], app1.addr().to_string().as_str());

    // Keyboard: the clicked row has the focus; ↓ moves it, and it stays
    // on that row through re-renders; Enter opens it, Esc closes.
    let app1_key = state["peers"].as_array().unwrap().iter().find(|p| p["selected"] == true).unwrap()["key"].clone();
    assert_eq!(state["focused"], app1_key, "the selected row has the focus");
    browser.keys(&key::ARROW_DOWN.to_string()).unwrap();
    let moved = page_state(&browser)["focused"].clone();
    assert!(moved.is_string() && moved != app1_key, "↓ moves the focus to the next row: {moved}");
    wait_polls(&browser, 3);
    assert_eq!(page_state(&browser)["focused"], moved, "the focus stays on its row through updates");
    // `s` sorts by the next key: rows move, the focus moves with its row.
    for sort in ["latency", "errors", "name", "rps"] {
        browser.keys("s").unwrap();
        let s = browser.execute("return document.getElementById('sort').value;", &[]).unwrap();
        assert_eq!(s, sort);
        assert_eq!(page_state(&browser)["focused"], moved, "the focus survives sorting by {sort}");
    }
    browser.keys(&key::ENTER.to_string()).unwrap();
    let moved_server = moved.as_str().unwrap().split('\0').nth(1).unwrap().to_owned();
    wait_page(&browser, "Enter opens the focused row", |s| {
        s["detail"]["hidden"] == false && s["detail"]["title"].as_str().unwrap().starts_with(&moved_server)
    });
    browser.keys(&key::ESCAPE.to_string()).unwrap();
    wait_page(&browser, "Esc closes the drill-down", |s| s["detail"]["hidden"] == true);

    // Everything above without a console error (so: the policy's hashes
    // let the page's own script and style run).
    let errors = console_errors(&browser);
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // The answers on the wire.
    let get = |path: &str, accept: &str| {
        http::Client::new(nginx.addr()).send(&http::Request::get(path).header("Accept", accept)).unwrap()
    };
    let browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    for (path, accept) in [("/upstreamtop", browser_accept), ("/upstreamtop?format=html", "*/*")] {
        let page = get(path, accept);
        assert_eq!(page.status, 200);
        assert_eq!(page.header("Content-Type"), Some("text/html; charset=utf-8"), "{path}");
        assert_eq!(page.header("X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(page.header("Cache-Control"), Some("no-store"));
        let csp = page.header("Content-Security-Policy").unwrap_or_else(|| panic!("{path}: no policy"));
        for part in ["default-src 'self'", "script-src 'sha256-", "style-src 'sha256-", "frame-ancestors 'none'"] {
            assert!(csp.contains(part), "{part} in {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
    }
    let any = get("/upstreamtop", "*/*");
    assert_eq!((any.status, any.header("Content-Type")), (200, Some("application/json")));
    assert_eq!(any.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(any.header("Content-Security-Policy"), None);
    serde_json::from_slice::<Value>(&any.body).expect("*/* gets JSON");
    let scrape = get("/upstreamtop?format=prometheus", "text/plain;version=0.0.4;q=0.5,*/*;q=0.1");
    assert_eq!(scrape.header("Content-Type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert!(scrape.text().contains("\nupstreamtop_probe_up 1\n"), "{}", scrape.text());
    assert!(nginx.error_log_problems().is_empty(), "{:?}", nginx.error_log_problems());
    eprintln!("{test}: {:.1} s", started.elapsed().as_secs_f64());
}

/// Request targets an attacker might send. `/p/evil/` passes the target on
/// as it came (markup, quotes and entities stay raw); `/raw/` proxies the
/// decoded `$uri`, so `%01`, `%1b`, `%ff` and `%e2%80%ae` (U+202E, a bidi
/// override) reach the backend as raw bytes. Markers set by the scripts:
/// 1 to 6. No spaces: the request line to the backend must stay one.
const HOSTILE: [&str; 9] = [
    "/p/evil/<img/src/onerror=window.__pwned=1>",
    "/p/evil/<svg/onload=window.__pwned=2>",
    "/p/evil/</script><script>window.__pwned=3</script>",
    "/p/evil/q\"uo'te\"><img/src/onerror=window.__pwned=4>",
    "/p/evil/&lt;b&gt;entity&amp;<!--",
    "/raw/c%01%07%1b[2J%7f/<iframe/src=javascript:window.__pwned=5>",
    "/raw/utf8%ff%fe%c3%28/bad",
    "/raw/bidi%e2%80%aegpj.exe%e2%80%ac/<b>x</b>",
    "/raw/q%22%27%3Cimg%2Fsrc%2Fonerror%3Dwindow.__pwned%3D6%3E",
];

/// Every element inside the tables the page fills from the JSON, by tag:
/// the page itself makes only these.
const ELEMENTS: &str = r##"
const tags = (sel) => Array.from(document.querySelectorAll(sel), (e) => e.tagName);
return {
  groups: tags("#groups *"),
  detail: tags("#d-routes *, #d-recent *"),
  recent: tags("#recent *"),
  scripts: document.scripts.length,
  images: document.images.length,
  // The body: the head's only link is the page's own empty icon.
  handlers: document.body.querySelectorAll("[onerror], [onload], [onclick], [src], [href]").length,
  icons: Array.from(document.head.querySelectorAll("[href]"), (e) => e.getAttribute("href")),
  title: document.title,
};
"##;

#[test]
fn hostile_paths_show_as_inert_text() {
    let test = "hostile_paths_show_as_inert_text";
    if !can_run(test) {
        return;
    }
    let started = Instant::now();
    let ip = test_ip(1);
    let evil = Backend::start(SocketAddr::new(IpAddr::V4(ip), 0), Profile::fast()).unwrap();
    let Stack { mut probe, nginx } = stack(ip, |c| {
        c.upstream_servers("evil", &[evil.addr()]).extra_server(
            "location /raw/ {\n    proxy_pass http://evil$uri$is_args$args;\n    proxy_http_version 1.1;\n    \
             proxy_set_header Connection \"\";\n}",
        )
    });
    let mut client = nginx.client();
    for _ in 0..3 {
        for target in HOSTILE {
            let resp = client.get(target).unwrap();
            assert_eq!(resp.status, 200, "{target}");
        }
        // The recent feed keeps 20 requests per publish: one round each.
        probe.wait_publish().unwrap();
        probe.wait_publish().unwrap();
    }
    assert_eq!(evil.total(), 3 * HOSTILE.len() as u64);
    assert_eq!(evil.by_route().len(), HOSTILE.len(), "{:?}", evil.by_route());
    settle(&mut probe, &[&evil]);

    let browser = Browser::start().unwrap();
    browser.goto(&nginx.url("/upstreamtop")).unwrap();
    assert_page_matches(&browser, &nginx, &[&evil]);
    browser.click(&browser.find(&row_selector(&evil.addr().to_string())).unwrap()).unwrap();
    let doc = json(&nginx);
    let peer = json_peer(&doc, "evil", &evil.addr().to_string());
    let want_routes = json_routes(peer);
    assert_eq!(want_routes.len(), HOSTILE.len(), "{want_routes:#?}");
    assert_eq!(want_routes.values().sum::<u64>(), evil.total());
    wait_page(&browser, "the drill-down shows every hostile route", |s| {
        s["detail"]["hidden"] == false && dom_routes(&s["detail"]["routes"]) == want_routes
    });

    // The DOM holds exactly the JSON's strings, as text.
    let paths: BTreeSet<&str> = want_routes.keys().map(|(_, p)| p.as_str()).collect();
    eprintln!("hostile routes as the JSON has them: {paths:#?}");
    for markup in [
        "<img/src/onerror=window.__pwned=1>",
        "<svg/onload=window.__pwned=2>",
        "</script><script>window.__pwned=3</script>",
        "\"><img/src/onerror=window.__pwned=4>",
        "&lt;b&gt;entity&amp;<!--",
        "<iframe/src=javascript:window.__pwned=5>",
        "<b>x</b>",
    ] {
        assert!(paths.iter().any(|p| p.contains(markup)), "{markup} reaches the page raw: {paths:#?}");
    }
    let text_of = |rows: &Value, method: usize, path: usize| -> Vec<(String, String)> {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| (r[method].as_str().unwrap().to_owned(), r[path].as_str().unwrap().to_owned()))
            .collect()
    };
    let json_recent: Vec<(String, String)> = doc["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["method"].as_str().unwrap().to_owned(), x["path"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(json_recent.len(), HOSTILE.len() * 3, "every request is in the recent feed");
    let state =
        wait_page(&browser, "the recent feed shows the hostile paths", |s| text_of(&s["recent"], 3, 4) == json_recent);
    assert_eq!(text_of(&state["detail"]["recent"], 1, 2), json_recent, "the drill-down's recent requests");

    // No element made from them, no script run.
    let elements = browser.execute(ELEMENTS, &[]).unwrap();
    let only = |what: &str, allowed: &[&str]| {
        let odd: Vec<&str> = elements[what]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .filter(|t| !allowed.contains(t))
            .collect();
        assert!(odd.is_empty(), "{what}: elements the page does not make: {odd:?}");
    };
    only("groups", &["SECTION", "H2", "SPAN", "TABLE", "THEAD", "TBODY", "TR", "TH", "TD", "svg", "polyline"]);
    only("detail", &["TR", "TD", "SPAN"]);
    only("recent", &["TR", "TD"]);
    assert_eq!(elements["scripts"], 1, "{elements}");
    assert_eq!(elements["images"], 0, "{elements}");
    assert_eq!(elements["handlers"], 0, "{elements}");
    assert_eq!(elements["icons"], serde_json::json!(["data:,"]), "{elements}");
    assert_eq!(elements["title"], "upstreamtop");
    assert_eq!(state["pwned"], "undefined", "an injected script ran");
    // A few more renders, and the marker is still unset.
    wait_polls(&browser, 3);
    assert_eq!(page_state(&browser)["pwned"], "undefined", "an injected script ran");
    let errors = console_errors(&browser);
    assert!(errors.is_empty(), "console errors (something tried to load or run): {errors:#?}");

    // The second line of defence: an inline handler that did get into the
    // page is refused by the policy.
    browser
        .execute(
            "const i = document.createElement('img'); i.id = 'csp-check'; \
             i.setAttribute('onerror', 'window.__csp = 1'); i.src = 'csp-check.png'; document.body.appendChild(i);",
            &[],
        )
        .unwrap();
    let refused = |b: &Browser| {
        b.console()
            .unwrap()
            .into_iter()
            .any(|e| e.message.contains("Content Security Policy") && e.message.contains("inline"))
    };
    let deadline = Instant::now() + PAGE;
    while !refused(&browser) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(refused(&browser), "the policy refuses an inline handler: {:#?}", browser.console().unwrap());
    assert_eq!(browser.execute("return typeof window.__csp;", &[]).unwrap(), "undefined");
    assert!(nginx.error_log_problems().is_empty(), "{:?}", nginx.error_log_problems());
    eprintln!("{test}: {:.1} s", started.elapsed().as_secs_f64());
}

/// `n` requests through nginx while the probe is away: all answered.
fn nginx_serves(nginx: &Nginx, backend: &Backend, n: u64) {
    let before = backend.total();
    let mut client = nginx.client();
    for i in 0..n {
        let resp = client.get(&format!("/p/app/while/{i}")).unwrap();
        assert_eq!(resp.status, 200);
    }
    assert_eq!(backend.total(), before + n);
    assert_eq!(http::get(&nginx.url("/health")).unwrap().status, 200);
}

/// The JSON's 503 reason and the Prometheus answer's `probe_up`.
fn endpoint_unavailable(nginx: &Nginx) -> String {
    let resp = http::get(&nginx.url("/upstreamtop")).unwrap();
    assert_eq!(resp.status, 503, "{}", resp.text());
    let doc: Value = serde_json::from_slice(&resp.body).unwrap();
    let prom = http::get(&nginx.url("/upstreamtop?format=prometheus")).unwrap();
    assert_eq!(prom.status, 200);
    assert!(prom.text().contains("\nupstreamtop_probe_up 0\n"), "{}", prom.text());
    doc["error"].as_str().unwrap().to_owned()
}

#[test]
fn probe_down_and_corrupt_table_banners_while_nginx_serves() {
    let test = "probe_down_and_corrupt_table_banners_while_nginx_serves";
    if !can_run(test) {
        return;
    }
    let started = Instant::now();
    let ip = test_ip(2);
    let app = Backend::start(SocketAddr::new(IpAddr::V4(ip), 0), Profile::fast()).unwrap();
    let Stack { mut probe, nginx } = stack(ip, |c| c.upstream_servers("app", &[app.addr()]));
    let workers = nginx.worker_pids();
    send(&nginx, vec![Route::get("/p/app/x", 1)], 30);
    settle(&mut probe, &[&app]);
    let browser = Browser::start().unwrap();
    browser.goto(&nginx.url("/upstreamtop")).unwrap();
    assert_page_matches(&browser, &nginx, &[&app]);

    // The probe stops: once its table is stale, the down banner.
    probe.stop().unwrap();
    nginx_serves(&nginx, &app, 20);
    let state = wait_page(&browser, "the down banner", |s| s["error"]["hidden"] == false);
    assert_eq!(state["error"]["kind"], "down", "{state}");
    let text = state["error"]["text"].as_str().unwrap();
    assert!(text.starts_with("probe down: probe stale: last publish "), "{text}");
    assert_eq!(state["totals"]["probe"], "down", "the header agrees with the banner");
    assert!(endpoint_unavailable(&nginx).starts_with("probe stale"));
    nginx_serves(&nginx, &app, 20);

    // The table corrupted (a new file at the path, as a rename would put
    // it): the 503 banner with the module's reason.
    let table = probe.table_path().to_owned();
    let mut bytes = std::fs::read(&table).unwrap();
    bytes[..8].copy_from_slice(b"NOTATABL");
    let tmp = table.with_extension("corrupt");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &table).unwrap();
    let state = wait_page(&browser, "the 503 banner", |s| s["error"]["kind"] == "unavailable");
    let reason = endpoint_unavailable(&nginx);
    assert!(reason.contains("bad magic"), "{reason}");
    assert_eq!(state["error"]["hidden"], false);
    assert_eq!(state["error"]["text"], format!("503 from the endpoint: {reason}").as_str(), "{state}");
    assert_eq!(state["totals"]["probe"], "unavailable");
    nginx_serves(&nginx, &app, 20);

    // The probe back: the banner goes, the counts are exact again
    // (the kernel side kept counting while the daemon was away).
    probe.restart().unwrap();
    settle(&mut probe, &[&app]);
    assert_page_matches(&browser, &nginx, &[&app]);

    // The browser saw the 503s; nothing else went wrong.
    let odd: Vec<LogEntry> = console_errors(&browser)
        .into_iter()
        .filter(|e| !(e.source == "network" && e.message.contains("status of 503")))
        .collect();
    assert!(odd.is_empty(), "console errors besides the 503s: {odd:#?}");
    assert_eq!(nginx.worker_pids(), workers, "no worker restarted");
    assert!(nginx.error_log_problems().is_empty(), "{:?}", nginx.error_log_problems());
    eprintln!("{test}: {:.1} s", started.elapsed().as_secs_f64());
}

/// The simulator (`./build.sh demo`'s nginx, backends and load), stopped
/// on drop.
struct Simulate(Child);

impl Drop for Simulate {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: kill(2) on our own, not yet reaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Ports 9001..9003 as in the demo when free on `ip`, else free ones.
fn demo_ports(ip: Ipv4Addr) -> Result<[u16; 3]> {
    let demo = [9001, 9002, 9003];
    if demo.iter().all(|&p| std::net::TcpListener::bind((ip, p)).is_ok()) {
        return Ok(demo);
    }
    let mut out = [0; 3];
    for p in &mut out {
        *p = free_port(IpAddr::V4(ip))?;
    }
    Ok(out)
}

/// `UPDATE_SCREENSHOT=1`: the page against the demo setup, drilled down
/// into one backend, to `docs/img/page.png`.
#[test]
fn screenshot_of_the_demo_for_the_docs() {
    let test = "screenshot_of_the_demo_for_the_docs";
    if std::env::var("UPDATE_SCREENSHOT").as_deref() != Ok("1") {
        eprintln!("skipping {test}: set UPDATE_SCREENSHOT=1 to write docs/img/page.png");
        return;
    }
    if !can_run(test) {
        return;
    }
    screenshot(&artifacts::workspace_root().join("docs/img/page.png")).unwrap();
}

fn screenshot(out: &Path) -> Result<()> {
    let simulate = artifacts::target_dir().join("release/simulate");
    if !simulate.is_file() {
        bail!("{} missing: cargo build --release -p nginx-tests --bin simulate", simulate.display());
    }
    // The demo's backends, on a loopback address the probe alone watches.
    let ip = Ipv4Addr::new(127, 0, 0, 2);
    let ports = demo_ports(ip)?;
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let only = format!("{ip}/32");
    let probe = Probe::start(&["--iface", "lo", "--only", &only, "--ignore-port", &port.to_string()])?;
    let _sim = Simulate(
        Command::new(&simulate)
            .args(["--port", &port.to_string(), "--backend-ip", &ip.to_string(), "--rate", "300", "--duration", "120"])
            .args(["--backend-ports", &format!("{},{},{}", ports[0], ports[1], ports[2])])
            .arg("--table")
            .arg(probe.table_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn simulate")?,
    );
    let url = format!("http://127.0.0.1:{port}/upstreamtop");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http::get(&url).is_ok_and(|r| r.status == 200) {
        if Instant::now() > deadline {
            bail!("{url} did not answer 200");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let browser = Browser::start_with(&Options { width: 1280, height: 900, ..Options::default() })?;
    browser.goto(&url)?;
    // A history for the trend lines.
    std::thread::sleep(Duration::from_secs(15));
    // The app backend the browser's own /favicon.ico did not go to (the
    // demo proxies `location /` to app).
    let doc: Value = serde_json::from_slice(&http::get(&url)?.body)?;
    let app = [ports[0], ports[1]]
        .iter()
        .map(|p| format!("{ip}:{p}"))
        .find(|server| !json_routes(json_peer(&doc, "app", server)).keys().any(|(_, p)| p == "/favicon.ico"))
        .context("both app backends got /favicon.ico")?;
    browser.click(&browser.find(&row_selector(&app))?)?;
    browser.wait_for("the drill-down", PAGE, PAGE_STATE, &[], |s| {
        s["detail"]["hidden"] == false && s["detail"]["routes"].as_array().is_some_and(|r| r.len() >= 3)
    })?;
    // Focus and hover off the rows: a still picture.
    browser.execute("document.activeElement.blur();", &[])?;
    browser.move_mouse(1200, 20)?;
    std::thread::sleep(Duration::from_millis(1200));
    let png = browser.screenshot_png()?;
    std::fs::create_dir_all(out.parent().unwrap())?;
    std::fs::write(out, &png).with_context(|| format!("write {}", out.display()))?;
    eprintln!("wrote {} ({} bytes)", out.display(), png.len());
    let errors = console_errors(&browser);
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    Ok(())
}
