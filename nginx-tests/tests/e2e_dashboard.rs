//! The `upstreamtop` dashboard end to end, in a real terminal (tmux) against
//! the demo: `target/release/simulate` (nginx + module + three backends +
//! load) with the real probe on `lo`.
//!
//! What the screen shows is checked against the module's JSON answer fetched
//! around the same moment (a sampler polls it all along; the dashboard's frame
//! must equal one answer of the last few publishes), so no figure is
//! hard-coded; the only fixed facts are the simulator's topology (which
//! routes go to which group, checkout answers 5xx and sleeps at least 60 ms).
//!
//! Needs root (the probe's tcx programs) and tmux; skips with a message
//! otherwise. Release binaries: `cargo build --release -p nginx-tests --bin
//! simulate -p upstreamtop -p upstreamtop-probe -p ngx_http_upstreamtop_module`.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use nginx_tests::artifacts;
use nginx_tests::http;
use nginx_tests::probe::Probe;
use upstreamtop::view::format;

/// Offered load of the simulator, req/s. The route weights (simulate.rs) send
/// 90% to `app` (two peers, round robin) and 10% to `checkout`.
const RATE: f64 = 200.0;
/// The dashboard's poll interval and the probe's publish interval.
const INTERVAL: Duration = Duration::from_secs(1);
/// A frame may show a report fetched this long before the capture: the
/// dashboard polls once per interval and the probe publishes once per
/// interval, so the data can be up to two intervals old (plus slack on a busy
/// 2-core machine).
const FRAME_AGE: Duration = Duration::from_millis(3500);
/// Upper bound for each "wait until the screen shows ..." step.
const SCREEN_TIMEOUT: Duration = Duration::from_secs(15);
const COLS: u16 = 160;
const ROWS: u16 = 50;

fn can_run(test: &str) -> bool {
    if !artifacts::is_root() {
        eprintln!("skipping {test}: needs root (the probe's tcx programs); run with sudo");
        return false;
    }
    let tmux = Command::new("tmux").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !tmux.is_ok_and(|s| s.success()) {
        eprintln!("skipping {test}: tmux not found (Debian package tmux; ./build.sh deps installs it)");
        return false;
    }
    true
}

fn release_bin(name: &str, build: &str) -> Result<PathBuf> {
    let path = artifacts::target_dir().join("release").join(name);
    if !path.is_file() {
        bail!("{} not found: build it with `{build}`", path.display());
    }
    Ok(path)
}

/// `n` distinct ports that were free a moment ago (all bound at once, so
/// they differ, then released for the simulator to take).
fn free_ports<const N: usize>(ip: Ipv4Addr) -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind((ip, 0)).with_context(|| format!("bind {ip}:0")))
        .collect::<Result<Vec<_>>>()?;
    let ports =
        listeners.iter().map(|l| Ok(l.local_addr().context("local_addr")?.port())).collect::<Result<Vec<u16>>>()?;
    Ok(ports.try_into().expect("N ports"))
}

/// Everything the test started outside its own process: the tmux server (on
/// a private socket, so no user session is touched) and the simulator.
/// Dropped on success and on panic alike.
struct Cleanup {
    tmux_socket: String,
    simulate: Option<Child>,
    log: PathBuf,
}

impl Cleanup {
    fn tmux(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.tmux_socket)
            .args(args)
            // The dashboard draws box and arrow characters: make sure tmux
            // reads and hands them back as UTF-8 whatever the test's locale.
            .env("LANG", "C.UTF-8")
            .env("TERM", "xterm-256color")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run tmux {args:?}"))?;
        if !out.status.success() {
            bail!("tmux {args:?}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn screen(&self) -> Result<String> {
        self.tmux(&["capture-pane", "-p", "-t", "e2e"])
    }

    fn keys(&self, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", "e2e"];
        args.extend_from_slice(keys);
        self.tmux(&args).map(drop)
    }

    fn literal(&self, text: &str) -> Result<()> {
        self.tmux(&["send-keys", "-t", "e2e", "-l", text]).map(drop)
    }

    fn simulate_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if thread::panicking() {
            if let Ok(screen) = self.screen() {
                eprintln!("---- last screen ----\n{screen}---- end of screen ----");
            }
            eprintln!("---- simulate output ----\n{}---- end of simulate output ----", self.simulate_log());
        }
        // The dashboard gets SIGHUP with its pane.
        let _ = self.tmux(&["kill-server"]);
        if let Some(mut child) = self.simulate.take() {
            // SIGTERM first: the simulator stops its nginx and backends.
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) on our own child, not reaped yet.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One JSON answer of the module and when it was fetched.
struct Sample {
    at: Instant,
    json: Value,
}

/// Polls the endpoint every 200 ms while the test runs.
struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(url: String) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&samples), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                if let Ok(resp) = http::get(&url) {
                    if resp.status == 200 {
                        if let Ok(json) = serde_json::from_slice::<Value>(&resp.body) {
                            s.lock().unwrap().push(Sample { at: Instant::now(), json });
                        }
                    }
                }
                thread::sleep(Duration::from_millis(200));
            }
        });
        Sampler { samples, stop, thread: Some(thread) }
    }

    /// Answers fetched between `FRAME_AGE` before `at` and a moment after it.
    fn around(&self, at: Instant) -> Vec<Value> {
        let from = at.checked_sub(FRAME_AGE).unwrap_or(at);
        let to = at + Duration::from_millis(500);
        // The frame was captured at `at`; answers up to 500 ms later may
        // still come from the publish it shows.
        while Instant::now() < to {
            thread::sleep(Duration::from_millis(50));
        }
        self.samples.lock().unwrap().iter().filter(|s| s.at >= from && s.at <= to).map(|s| s.json.clone()).collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The peer `server` of group `group` in a JSON answer.
fn peer<'a>(json: &'a Value, group: &str, server: &str) -> Option<&'a Value> {
    json["upstreams"][group]["peers"].as_array()?.iter().find(|p| p["server"] == server)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// 5xx share of all responses + failed exchanges, as the STATUS column
/// prints it (1xx are not part of the mix).
fn json_5xx_pct(p: &Value) -> String {
    let r = &p["responses"];
    let total = u(&r["2xx"]) + u(&r["3xx"]) + u(&r["4xx"]) + u(&r["5xx"]) + u(&p["no_response"]);
    format::pct(u(&r["5xx"]), total)
}

/// The backend row of `label` and the route lines under it.
fn backend_block<'a>(screen: &'a str, label: &str) -> Option<(&'a str, Vec<&'a str>)> {
    let mut lines = screen.lines();
    let row = lines.by_ref().find(|l| is_row_of(l, label))?;
    let routes = lines.take_while(|l| l.starts_with("    ") && !l.trim().is_empty()).collect();
    Some((row, routes))
}

/// A backend row: marker (2 columns), then the label and a space (so
/// `:4000` never matches `:40001`).
fn is_row_of(line: &str, label: &str) -> bool {
    // The marker is `▶ ` (multi-byte) or two spaces: skip characters, not bytes.
    let rest = line.char_indices().nth(2).map_or("", |(i, _)| &line[i..]);
    rest.strip_prefix(label).is_some_and(|after| after.starts_with(' '))
}

/// Figures of a backend row: req/s (first number after the label), share,
/// and the 5xx share in the STATUS mix when there is one.
struct Row {
    rps: String,
    share: String,
    pct_5xx: Option<String>,
    avg: String,
    p99: String,
}

fn parse_row(row: &str, label: &str) -> Option<Row> {
    let rest = &row[row.find(label)? + label.len()..];
    let tokens: Vec<&str> = rest.split_whitespace().collect();
    // Tag (empty for an up peer) and sparkline come before req/s; the
    // sparkline is made of block characters, never digits.
    let i = tokens.iter().position(|t| t.parse::<f64>().is_ok())?;
    // After req/s: the share bar (block characters; absent at 0), the share
    // percentage, avg, p99, then the status mix.
    let j = i + 1 + tokens[i + 1..].iter().position(|t| t.ends_with('%'))?;
    let mix = &tokens[j + 3..];
    let pct_5xx = mix.iter().position(|t| *t == "5xx").and_then(|k| mix.get(k + 1)).map(|s| s.to_string());
    Some(Row {
        rps: tokens[i].to_string(),
        share: tokens[j].to_string(),
        avg: tokens.get(j + 1)?.to_string(),
        p99: tokens.get(j + 2)?.to_string(),
        pct_5xx,
    })
}

/// The `recent requests` feed lines.
fn feed(screen: &str) -> Vec<&str> {
    let mut lines = screen.lines();
    if lines.by_ref().any(|l| l.starts_with("recent requests")) {
        lines.filter(|l| l.contains(" → ")).collect()
    } else {
        Vec::new()
    }
}

fn footer(screen: &str) -> &str {
    screen.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}

/// Captures the pane until `done` holds for it; errors with the last screen.
fn wait_screen(c: &Cleanup, what: &str, mut done: impl FnMut(&str) -> bool) -> Result<(Instant, String)> {
    let deadline = Instant::now() + SCREEN_TIMEOUT;
    loop {
        let at = Instant::now();
        let screen = c.screen()?;
        if done(&screen) {
            return Ok((at, screen));
        }
        if Instant::now() > deadline {
            bail!("the screen never showed {what} within {SCREEN_TIMEOUT:?}; last screen:\n{screen}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Keeps capturing until one JSON answer around the capture explains every
/// checked figure of the frame (the frame and the sampler may straddle a
/// publish on the first try); returns the frame and that answer.
fn frame_matching(
    c: &Cleanup,
    sampler: &Sampler,
    what: &str,
    ready: impl Fn(&str) -> bool,
    explains: impl Fn(&str, &Value) -> Result<(), String>,
) -> Result<(String, Value)> {
    let deadline = Instant::now() + SCREEN_TIMEOUT;
    loop {
        let (at, screen) = wait_screen(c, what, &ready)?;
        let candidates = sampler.around(at);
        let mut whys = Vec::new();
        for json in &candidates {
            match explains(&screen, json) {
                Ok(()) => return Ok((screen, json.clone())),
                Err(why) => whys.push(why),
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: none of the {} JSON answers around the frame explains it: {whys:#?}\nframe:\n{screen}",
                candidates.len()
            );
        }
        thread::sleep(Duration::from_millis(300));
    }
}

fn start_simulate(bin: &Path, port: u16, ip: Ipv4Addr, backends: [u16; 3], table: &Path, log: &Path) -> Result<Child> {
    let out = File::create(log).context("create simulate log")?;
    let err = out.try_clone().context("dup simulate log")?;
    Command::new(bin)
        .args(["--port", &port.to_string()])
        .args(["--backend-ip", &ip.to_string()])
        .args(["--backend-ports", &format!("{},{},{}", backends[0], backends[1], backends[2])])
        .arg("--table")
        .arg(table)
        .args(["--rate", &RATE.to_string()])
        // A bound even if this test is killed before its guard runs.
        .args(["--duration", "120"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))
}

#[test]
fn dashboard_in_tmux_shows_demo_backends_routes_and_figures() {
    if can_run("dashboard_in_tmux_shows_demo_backends_routes_and_figures") {
        run().unwrap();
    }
}

fn run() -> Result<()> {
    let simulate_bin = release_bin("simulate", "cargo build --release -p nginx-tests --bin simulate")?;
    let dashboard_bin = release_bin("upstreamtop", "cargo build --release -p upstreamtop")?;
    // nginx needs the release module the simulator picks by default.
    artifacts::module_so()?;

    // Backends on a loopback address of their own and a probe that only
    // tracks it: other tests on this host talk to 127.0.0.1 over lo, and
    // their traffic would crowd the feed and the ranking.
    let pid = std::process::id();
    let ip = Ipv4Addr::new(127, 100, (pid >> 8) as u8, (pid % 254) as u8 + 1);
    let [port] = free_ports::<1>(Ipv4Addr::LOCALHOST)?;
    let [app1_port, app2_port, checkout_port] = free_ports::<3>(ip)?;
    let (app1_server, app2_server, checkout_server) =
        (format!("{ip}:{app1_port}"), format!("{ip}:{app2_port}"), format!("{ip}:{checkout_port}"));
    let app1 = format!("app {app1_server}");
    let app2 = format!("app {app2_server}");
    let checkout = format!("checkout {checkout_server}");

    // The client<->nginx leg is on lo too: the probe ignores nginx's port.
    let only = format!("{ip}/32");
    let probe =
        Probe::start(&["--iface", "lo", "--only", &only, "--ignore-port", &port.to_string(), "--interval", "1s"])?;
    let dir = tempfile::Builder::new().prefix("nginx-tests-dashboard-").tempdir().context("temp dir")?;
    let log = dir.path().join("simulate.log");
    let mut cleanup =
        Cleanup { tmux_socket: format!("upstreamtop-e2e-{}", std::process::id()), simulate: None, log: log.clone() };
    cleanup.simulate =
        Some(start_simulate(&simulate_bin, port, ip, [app1_port, app2_port, checkout_port], probe.table_path(), &log)?);

    // The endpoint answers once nginx is up and the probe has published.
    let url = format!("http://127.0.0.1:{port}/upstreamtop");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = cleanup.simulate.as_mut().map(|c| c.try_wait()).transpose()?.flatten() {
            bail!("simulate exited with {status}:\n{}", cleanup.simulate_log());
        }
        if http::get(&url).is_ok_and(|r| r.status == 200) {
            break;
        }
        if Instant::now() > deadline {
            bail!("{url} did not answer 200 within 20 s; simulate output:\n{}", cleanup.simulate_log());
        }
        thread::sleep(Duration::from_millis(100));
    }
    let sampler = Sampler::start(url.clone());

    // A shell in a 160x50 pane; the dashboard runs in it so that quitting
    // returns to the shell and the exit code is printed.
    cleanup.tmux(&[
        "new-session",
        "-d",
        "-s",
        "e2e",
        "-x",
        &COLS.to_string(),
        "-y",
        &ROWS.to_string(),
        "env",
        "PS1=e2e$ ",
        "sh",
    ])?;
    let cmd =
        format!("'{}' --url {url} --interval {}s; echo exit-code:$?", dashboard_bin.display(), INTERVAL.as_secs());
    // Type only once the shell is ready: keys sent earlier are echoed
    // before its prompt and the screen would not read as expected.
    wait_screen(&cleanup, "the shell prompt", |s| s.lines().any(|l| l.starts_with("e2e$")))?;
    cleanup.literal(&cmd)?;
    cleanup.keys(&["Enter"])?;

    // 1. Main screen: header, the three backends with their routes, feed.
    let labels = [app1.as_str(), app2.as_str(), checkout.as_str()];
    let ready = |s: &str| {
        labels.iter().all(|l| {
            backend_block(s, l)
                .is_some_and(|(row, routes)| parse_row(row, l).is_some_and(|r| r.rps != "0") && !routes.is_empty())
        }) && backend_block(s, &checkout)
            .and_then(|(row, _)| parse_row(row, &checkout))
            .is_some_and(|r| r.pct_5xx.is_some())
            && feed(s).len() >= 5
    };
    let explains = |screen: &str, json: &Value| -> Result<(), String> {
        let header = screen.lines().next().unwrap_or("");
        let total = format!("· {} req/s ·", format::rps(json["totals"]["rps"].as_f64().unwrap_or(0.0)));
        if !header.contains(&total) {
            return Err(format!("header lacks `{total}`"));
        }
        for (label, group, server) in
            [(&app1, "app", &app1_server), (&app2, "app", &app2_server), (&checkout, "checkout", &checkout_server)]
        {
            let p = peer(json, group, server).ok_or_else(|| format!("{server} not in the JSON"))?;
            let (row, _) = backend_block(screen, label).ok_or_else(|| format!("no row {label}"))?;
            let r = parse_row(row, label).ok_or_else(|| format!("row unparsable: {row}"))?;
            let want = format::rps(p["rps"].as_f64().unwrap_or(0.0));
            if r.rps != want {
                return Err(format!("{label}: req/s {} on screen, {want} in JSON", r.rps));
            }
            let want = format!("{:.0}%", p["share"].as_f64().unwrap_or(0.0).clamp(0.0, 100.0));
            if r.share != want {
                return Err(format!("{label}: share {} on screen, {want} in JSON", r.share));
            }
            let w = &p["header_time_window"];
            let (avg, p99) =
                (format::ms(w["avg"].as_f64().unwrap_or(0.0)), format::ms(w["p99"].as_f64().unwrap_or(0.0)));
            if (r.avg.as_str(), r.p99.as_str()) != (avg.as_str(), p99.as_str()) {
                return Err(format!("{label}: avg/p99 {}/{} on screen, {avg}/{p99} in JSON", r.avg, r.p99));
            }
            if u(&p["responses"]["5xx"]) > 0 {
                let want = json_5xx_pct(p);
                if r.pct_5xx.as_deref() != Some(want.as_str()) {
                    return Err(format!("{label}: 5xx {:?} on screen, {want} in JSON", r.pct_5xx));
                }
            }
        }
        Ok(())
    };
    let (screen, json) = frame_matching(&cleanup, &sampler, "the three backends with figures", ready, explains)?;
    // Shown with --nocapture: what the operator would have seen.
    eprintln!("---- main screen (matches the JSON of one publish) ----\n{screen}");

    let header = screen.lines().next().unwrap_or("");
    assert!(header.starts_with("upstreamtop — nginx upstreams · "), "{header}");
    for part in [" req/s · ", " · 1s window · ", " · probe up · ", &format!("127.0.0.1:{port}")] {
        assert!(header.contains(part), "header lacks `{part}`: {header}");
    }
    assert!(footer(&screen).contains("sort: req/s"), "footer: {}", footer(&screen));

    // Routes under each backend: the simulator sends /checkout to checkout
    // and everything else to app (top 4 per backend are listed).
    for label in [&app1, &app2] {
        let (_, routes) = backend_block(&screen, label).unwrap();
        let text = routes.join("\n");
        for route in ["GET     /api/orders", "GET     /api/users", "GET     /static/app.js"] {
            assert!(text.contains(route), "{label}: no `{route}` among its routes:\n{text}");
        }
        assert!(!text.contains("/checkout"), "{label} shows /checkout:\n{text}");
    }
    let (_, routes) = backend_block(&screen, &checkout).unwrap();
    assert_eq!(routes.len(), 1, "checkout serves one route: {routes:#?}");
    assert!(routes[0].trim_start().starts_with("POST    /checkout"), "{}", routes[0]);
    // The route's 5xx rate shows when its last interval had any (the frame
    // matched `json`, so it is that answer's figure).
    let ck = peer(&json, "checkout", &checkout_server).unwrap();
    let route_errors = ck["routes"][0]["errors_rps"].as_f64().unwrap_or(0.0);
    if route_errors > 0.0 {
        let want = format!("5xx {}/s", format::rps(route_errors));
        assert!(routes[0].ends_with(&want), "checkout route: want `{want}`: {}", routes[0]);
    } else {
        assert!(!routes[0].contains("5xx"), "no 5xx in the interval, yet: {}", routes[0]);
    }

    // Plausible figures (the exact ones matched the JSON above): app peers
    // split the app share of the offered load (45% each, round robin) —
    // a wide band, the 2-core machine is shared — and checkout errs.
    let rps_of = |label: &str| -> f64 {
        parse_row(backend_block(&screen, label).unwrap().0, label).unwrap().rps.parse().unwrap()
    };
    let per_app = RATE * 0.9 / 2.0;
    for label in [&app1, &app2] {
        let rps = rps_of(label);
        assert!((0.2 * per_app..=1.6 * per_app).contains(&rps), "{label}: {rps} req/s, offered {per_app}");
    }
    let (a, b) = (rps_of(&app1), rps_of(&app2));
    assert!(a.max(b) <= 2.0 * a.min(b), "round robin should split app evenly: {a} vs {b}");
    assert!(rps_of(&checkout) <= 1.6 * RATE * 0.1, "checkout {} req/s, offered {}", rps_of(&checkout), RATE * 0.1);
    assert!(u(&ck["responses"]["5xx"]) > 0, "checkout answered no 5xx yet: {ck}");
    // Checkout sleeps 60-160 ms before answering: its header time cannot be
    // below that (a causal bound, not a timing assert).
    assert!(ck["header_time_window"]["avg"].as_f64().unwrap() >= 59.0, "{}", ck["header_time_window"]);

    // The feed: sampled requests of our backends, each on the group its
    // route belongs to.
    let lines = feed(&screen);
    let ours: Vec<&&str> = lines
        .iter()
        .filter(|l| [&app1_server, &app2_server, &checkout_server].iter().any(|s| l.contains(&format!("{s} "))))
        .collect();
    assert!(ours.len() >= 3, "feed shows few of our requests: {lines:#?}");
    for l in &ours {
        let to_checkout = l.contains(&format!("→ {checkout} "));
        assert_eq!(l.contains(" /checkout "), to_checkout, "route and group disagree: {l}");
        assert!(to_checkout || l.contains(&format!("→ {app1} ")) || l.contains(&format!("→ {app2} ")), "{l}");
    }

    // 2. `s`: ranking by latency (last-interval p99, slowest first). Which
    // backend is slower depends on the machine's load, so the check is that
    // the rows are in the order of the p99 they show.
    cleanup.keys(&["s"])?;
    let (_, screen) = wait_screen(&cleanup, "sort: latency", |s| footer(s).contains("sort: latency"))?;
    let mut order: Vec<(usize, f64)> = Vec::new();
    for label in [&app1, &app2, &checkout] {
        let at = screen.lines().position(|l| is_row_of(l, label));
        let row = at.and_then(|i| parse_row(screen.lines().nth(i)?, label));
        let (Some(at), Some(row)) = (at, row) else { panic!("{label} missing after `s`:\n{screen}") };
        order.push((at, parse_ms(&row.p99)));
    }
    order.sort_by_key(|(at, _)| *at);
    assert!(order.windows(2).all(|w| w[0].1 >= w[1].1), "not ranked by p99 {order:?}:\n{screen}");

    // 3. Filter to checkout's address (unique even if other tests' backends
    // on lo serve a /checkout too), Enter: the drill-down with exact codes and
    // percentiles, matched against the JSON of the same publish.
    cleanup.keys(&["/"])?;
    cleanup.literal(&checkout_server)?;
    cleanup.keys(&["Enter"])?;
    wait_screen(&cleanup, "only checkout after the filter", |s| {
        footer(s).contains(&format!("filter: {checkout_server}"))
            && backend_block(s, &checkout).is_some()
            && backend_block(s, &app1).is_none()
    })?;
    cleanup.keys(&["Enter"])?;
    let detail_ready = |s: &str| s.lines().any(|l| l.starts_with("status codes")) && s.contains(&checkout_server);
    let detail_explains = |screen: &str, json: &Value| -> Result<(), String> {
        let p = peer(json, "checkout", &checkout_server).ok_or_else(|| "checkout not in JSON".to_string())?;
        let codes_line = screen.lines().find(|l| l.starts_with("status codes")).unwrap_or("");
        let shown = parse_codes(codes_line);
        let want: BTreeMap<String, u64> = p["responses"]["codes"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), u(v))).collect())
            .unwrap_or_default();
        if shown != want {
            return Err(format!("codes {shown:?} on screen, {want:?} in JSON"));
        }
        let requests = format!("requests {} ", u(&p["requests"]));
        if !screen.contains(&requests) {
            return Err(format!("no `{requests}`"));
        }
        for (row, key) in [("last interval", "header_time_window"), ("since start", "header_time_total")] {
            let line = screen.lines().find(|l| l.starts_with(row)).ok_or_else(|| format!("no `{row}` row"))?;
            let t = &p[key];
            let want: Vec<String> =
                ["avg", "p50", "p90", "p99"].iter().map(|k| format::ms(t[*k].as_f64().unwrap_or(0.0))).collect();
            let got: Vec<&str> = line[row.len()..].split_whitespace().collect();
            if got != want {
                return Err(format!("{row}: {got:?} on screen, {want:?} in JSON"));
            }
        }
        Ok(())
    };
    let (screen, json) = frame_matching(&cleanup, &sampler, "checkout's drill-down", detail_ready, detail_explains)?;
    eprintln!("---- checkout drill-down ----\n{screen}");
    let title = screen.lines().find(|l| l.starts_with(&checkout)).unwrap_or("");
    assert!(title.contains("state up"), "detail title: {title}\n{screen}");
    assert!(
        screen.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["latency", "avg", "p50", "p90", "p99"]),
        "{screen}"
    );
    let codes = parse_codes(screen.lines().find(|l| l.starts_with("status codes")).unwrap());
    assert!(codes.contains_key("201"), "checkout answers 201: {codes:?}");
    assert!(codes.keys().any(|c| ["500", "502", "503"].contains(&c.as_str())), "checkout's 5xx codes: {codes:?}");
    assert!(screen.lines().any(|l| l.starts_with("POST    /checkout")), "detail routes:\n{screen}");
    assert!(footer(&screen).contains("Esc") && footer(&screen).contains("back"), "{}", footer(&screen));
    let _ = json;

    // 4. `q`: the dashboard exits 0 and the terminal is the shell's again:
    // main screen, cursor shown, cooked mode with echo.
    let state = |c: &Cleanup| c.tmux(&["display-message", "-p", "-t", "e2e", "#{alternate_on} #{cursor_flag}"]);
    assert_eq!(state(&cleanup)?.trim(), "1 0", "the dashboard runs on the alternate screen with the cursor hidden");
    cleanup.keys(&["q"])?;
    // (The typed command line holds `exit-code:$?`, the output a number.)
    let exited = |s: &str| s.lines().find(|l| l.contains("exit-code:") && !l.contains("$?")).map(str::to_string);
    let (_, screen) = wait_screen(&cleanup, "exit-code:", |s| exited(s).is_some())?;
    assert!(exited(&screen).unwrap().trim_end().ends_with("exit-code:0"), "dashboard exit status:\n{screen}");
    assert_eq!(state(&cleanup)?.trim(), "0 1", "main screen and visible cursor after q");
    cleanup.literal("stty -a; echo stty-done")?;
    cleanup.keys(&["Enter"])?;
    let (_, screen) = wait_screen(&cleanup, "stty output", |s| s.lines().any(|l| l == "stty-done"))?;
    // Only stty's output: the lines between the typed command and the marker.
    let out: Vec<&str> = screen
        .lines()
        .skip_while(|l| !l.ends_with("stty -a; echo stty-done"))
        .skip(1)
        .take_while(|l| *l != "stty-done")
        .collect();
    let words: Vec<&str> = out.iter().flat_map(|l| l.split(|c: char| c.is_whitespace() || c == ';')).collect();
    for flag in ["icanon", "echo", "isig", "opost"] {
        assert!(words.contains(&flag), "terminal not restored: `{flag}` is off:\n{screen}");
    }

    drop(sampler);
    drop(cleanup);
    drop(probe);
    Ok(())
}

/// `2.6ms`, `160ms`, `1.25s` → ms; `-` (no data) → 0.
fn parse_ms(text: &str) -> f64 {
    if let Some(ms) = text.strip_suffix("ms") {
        ms.parse().unwrap_or(0.0)
    } else if let Some(s) = text.strip_suffix('s') {
        s.parse::<f64>().map(|s| s * 1000.0).unwrap_or(0.0)
    } else {
        0.0
    }
}

/// `status codes    201 ×812 (88%)   500 ×40 (4%) ...` → {"201": 812, ...}.
fn parse_codes(line: &str) -> BTreeMap<String, u64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .filter_map(|w| {
            let n = w[1].strip_prefix('×')?.parse().ok()?;
            (w[0].len() == 3 && w[0].bytes().all(|b| b.is_ascii_digit())).then(|| (w[0].to_string(), n))
        })
        .collect()
}
