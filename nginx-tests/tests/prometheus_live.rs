//! The Prometheus exposition checked by the real tools on a LIVE pipe: real
//! nginx with the module, the real probe on loopback, counting backends,
//! traffic with hostile paths (quotes, backslashes, control bytes, invalid
//! UTF-8, very long paths) sent through nginx to the backends. Then:
//!
//! - `promtool check metrics` accepts what nginx serves (with and without
//!   route series);
//! - a real Prometheus server (`/usr/bin/prometheus`, Debian package
//!   `prometheus`) scrapes the endpoint every second with the scrape config
//!   shipped in `config/prometheus.yml`, and its PromQL answers EQUAL what
//!   the backends served (requests per server, responses per exact code);
//!   `rate()` gives one plausible series per backend;
//! - an nginx with no probe table still gives Prometheus
//!   `upstreamtop_probe_up 0`;
//! - nginx's view: a group `shop` (with a `zone`) lists `app`'s second
//!   backend with `max_conns`, a dead port nginx takes out of rotation
//!   (`max_fails=1`) and a `down` server. Its wire counters carry only the
//!   group that counts it (`app`), `upstreamtop_upstream_peer` every group
//!   listing it; `upstreamtop_peer_state` says 1/3/4; the
//!   `upstreamtop_nginx_*` gauges carry max_conns, fails, max_fails and
//!   the last failure;
//!   a group `mirror` lists only app1, so no wire counter carries it;
//! - every metric the Grafana dashboard (`config/grafana-dashboard.json`)
//!   queries exists in the live scrape, every panel query is valid PromQL
//!   that Prometheus evaluates and returns series, and the per-backend and
//!   per-group panels show a group's shared backend.
//!
//! Needs root (tcx). Without root, or without prometheus/promtool, the test
//! says so and passes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use nginx_tests::backend::{Backend, Profile};
use nginx_tests::load::{self, LoadSpec, Route};
use nginx_tests::nginx::{free_port, Nginx, NginxConf};
use nginx_tests::probe::Probe;
use nginx_tests::{artifacts, http, prereq, promtool};
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";
/// How long the probe, then Prometheus, may take to catch up with traffic
/// that already ended.
const SETTLE: Duration = Duration::from_secs(20);
/// Requests sent, paced so Prometheus (1 s scrapes) sees the counters move.
const REQUESTS: u64 = 2000;
const RATE: f64 = 500.0;
/// Requests to the group `shop` before the load: enough that round robin
/// tries its dead port (nginx then takes it out) and `app2` serves them all.
const SHOP_REQUESTS: u64 = 10;
/// `max_conns` of `app2` in `shop`.
const SHOP_MAX_CONNS: u64 = 8;

fn prerequisites(test: &str) -> bool {
    prereq::root_or_skip(test, "tcx programs")
        && [PROMETHEUS, "promtool"].iter().all(|tool| prereq::tool_or_skip(test, tool, "prometheus"))
}

fn config_file(name: &str) -> String {
    let path = artifacts::workspace_root().join("config").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs_f64()
}

/// Sample lines of an exposition as (name, labels text, value).
fn samples(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("sample line without value: {l}"));
            let (name, labels) = match series.find('{') {
                Some(i) => (&series[..i], &series[i..]),
                None => (series, ""),
            };
            (name.to_owned(), labels.to_owned(), value.parse().unwrap_or_else(|_| panic!("bad value: {l}")))
        })
        .collect()
}

/// Percent-encoding for a URL query value.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One series of an instant-query answer.
#[derive(Debug, Clone)]
struct Series {
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A Prometheus server on loopback with a temp config and storage; Drop
/// always stops it.
struct Prometheus {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Prometheus {
    fn start(config: &str, port: u16) -> Result<Prometheus> {
        let dir = tempfile::Builder::new().prefix("nginx-tests-prometheus-").tempdir().context("temp dir")?;
        let conf = dir.path().join("prometheus.yml");
        std::fs::write(&conf, config).context("write prometheus.yml")?;
        let check =
            Command::new("promtool").arg("check").arg("config").arg(&conf).output().context("promtool check config")?;
        if !check.status.success() {
            bail!("promtool rejects the scrape config: {}\n{config}", String::from_utf8_lossy(&check.stdout));
        }
        let log = std::fs::File::create(dir.path().join("prometheus.log")).context("create log")?;
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dup log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {PROMETHEUS}"))?;
        let mut prom = Prometheus { child: Some(child), dir, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = prom.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                prom.child = None;
                bail!("prometheus exited with {status}:\n{}", prom.log());
            }
            if http::get(&prom.url("/-/ready")).is_ok_and(|r| r.status == 200) {
                return Ok(prom);
            }
            if Instant::now() > deadline {
                bail!("prometheus not ready within 20 s:\n{}", prom.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query (at `time`, Unix seconds, or now); a PromQL error
    /// is an Err carrying Prometheus's message.
    fn query(&self, promql: &str, time: Option<f64>) -> Result<Vec<Series>> {
        let mut path = format!("/api/v1/query?query={}", url_encode(promql));
        if let Some(t) = time {
            path.push_str(&format!("&time={t:.3}"));
        }
        let resp = http::get(&self.url(&path)).with_context(|| format!("query {promql}"))?;
        let doc: Value = serde_json::from_slice(&resp.body).with_context(|| format!("JSON from {}", resp.text()))?;
        if resp.status != 200 || doc["status"] != "success" {
            bail!("{promql}: HTTP {}: {doc}", resp.status);
        }
        let result = &doc["data"]["result"];
        match doc["data"]["resultType"].as_str() {
            Some("vector") => result
                .as_array()
                .ok_or_else(|| anyhow!("no result array: {doc}"))?
                .iter()
                .map(|s| {
                    let labels = s["metric"]
                        .as_object()
                        .map(|m| {
                            m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
                        })
                        .unwrap_or_default();
                    let value =
                        s["value"][1].as_str().and_then(|v| v.parse().ok()).ok_or_else(|| anyhow!("value: {s}"))?;
                    Ok(Series { labels, value })
                })
                .collect(),
            Some("scalar") => Ok(vec![Series {
                labels: BTreeMap::new(),
                value: result[1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
            }]),
            other => bail!("{promql}: unexpected result type {other:?}"),
        }
    }

    /// Poll `promql` until `done` holds; the last answer either way.
    fn query_until(&self, promql: &str, done: impl Fn(&[Series]) -> bool) -> Result<Vec<Series>> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let got = self.query(promql, None)?;
            if done(&got) || Instant::now() > deadline {
                return Ok(got);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on our own, not yet reaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if std::thread::panicking() {
            eprintln!("---- prometheus log ----\n{}---- end of prometheus log ----", self.log());
        }
    }
}

/// The shipped scrape config, pointed at the test's nginx with 1 s scrapes,
/// plus a job for an nginx that has no probe table.
fn scrape_config(nginx: SocketAddr, no_probe: SocketAddr) -> String {
    let shipped = config_file("prometheus.yml");
    for needle in ["scrape_interval: 15s", "evaluation_interval: 15s", "targets: [\"127.0.0.1:80\"]"] {
        assert!(shipped.contains(needle), "config/prometheus.yml changed shape: no {needle:?}");
    }
    let mut c = shipped
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace("targets: [\"127.0.0.1:80\"]", &format!("targets: [\"{nginx}\"]"));
    c.push_str(&format!(
        "  - job_name: upstreamtop-no-probe\n    metrics_path: /upstreamtop\n    params:\n      \
         format: [prometheus]\n    static_configs:\n      - targets: [\"{no_probe}\"]\n"
    ));
    c
}

/// Traffic with hostile paths. `/p/app/` passes the client's raw target
/// (quotes and backslashes stay raw); `/raw/` proxies the DECODED `$uri`,
/// so `%01`, `%ff` reach the backend as raw control bytes and invalid UTF-8.
fn routes() -> Vec<Route> {
    let long = format!("/p/app/{}", "very-long-segment/".repeat(120));
    vec![
        Route::get("/p/app/api/orders", 5),
        Route::get("/p/app/api/orders/12345?x=1", 3),
        Route::get("/p/app/q\"uo\\te/it's", 2),
        Route::get("/raw/ctl%01%1b%7f/x", 2),
        Route::get("/raw/utf8%ff%fe%c3%28/bad", 2),
        Route::get("/raw/esc%5c%22%5c", 1),
        Route::get(&long, 1),
        Route::post("/p/checkout/checkout", 2, b"{\"cart\":[1,2,3]}"),
        Route::get("/p/checkout/teapot", 1).header("X-Backend-Status", "418"),
    ]
}

/// Every `upstreamtop_*` metric name in a PromQL (or Grafana) expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("upstreamtop_") {
        let before_ok =
            rest[..i].chars().next_back().is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(tail.len());
        if before_ok {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

/// (panel title, expression) for every query in the dashboard, template
/// variables included.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                let title = m.get("title").and_then(Value::as_str).unwrap_or(title);
                for (k, child) in m {
                    match (k.as_str(), child) {
                        ("expr" | "definition", Value::String(e)) => out.push((title.to_owned(), e.clone())),
                        _ => walk(child, title, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dash, "", &mut out);
    out
}

#[test]
fn live_scrape_passes_promtool_prometheus_promql_and_dashboard() {
    if !prerequisites("live_scrape_passes_promtool_prometheus_promql_and_dashboard") {
        return;
    }
    let lo = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let app = || Profile::fast().statuses(&[(200, 18), (404, 1), (302, 1)]).error_rate(0.05);
    let app1 = Backend::start(lo, app()).unwrap();
    let app2 = Backend::start(lo, app()).unwrap();
    let checkout = Backend::start(lo, Profile::fast().statuses(&[(201, 1)]).error_rate(0.1)).unwrap();
    let backends = [&app1, &app2, &checkout];

    // Every loopback listener that is not a backend is ignored by the
    // probe, or it would count scrapes and API queries as backends.
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (port, port_no_probe, port_prom) =
        (free_port(local).unwrap(), free_port(local).unwrap(), free_port(local).unwrap());
    // Nothing listens there: connects are refused.
    let (dead, down) = (
        SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(local).unwrap())),
        SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(local).unwrap())),
    );
    let mut probe = Probe::start(&[
        "--iface",
        "lo",
        "--ignore-port",
        &port.to_string(),
        "--ignore-port",
        &port_no_probe.to_string(),
        "--ignore-port",
        &port_prom.to_string(),
        "--interval",
        "250ms",
    ])
    .unwrap();
    let conf = NginxConf::vendored_with_module()
        .unwrap()
        .port(port)
        .table(probe.table_path())
        .upstream_servers("app", &[app1.addr(), app2.addr()])
        .upstream_servers("checkout", &[checkout.addr()])
        // `app` counts app2 (the first group by name listing it); `shop`
        // lists it too, with its own balancer state and a limit.
        .upstream(
            "shop",
            &[
                "zone shop 64k".to_owned(),
                format!("server {} max_conns={SHOP_MAX_CONNS}", app2.addr()),
                format!("server {dead} max_fails=1 fail_timeout=600s"),
                format!("server {down} down"),
                "keepalive 8".to_owned(),
            ],
        )
        // Counts nothing (app counts app1): only the membership family names it.
        .upstream_servers("mirror", &[app1.addr()])
        .extra_server(
            "location /raw/ {\n    proxy_pass http://app$uri;\n    proxy_http_version 1.1;\n    \
             proxy_set_header Connection \"\";\n}",
        );
    let nginx = Nginx::start(conf).unwrap();
    let missing = tempfile::tempdir().unwrap();
    let no_probe = Nginx::start(
        NginxConf::vendored_with_module().unwrap().port(port_no_probe).table(missing.path().join("none/table")),
    )
    .unwrap();

    let prom = Prometheus::start(&scrape_config(nginx.addr(), no_probe.addr()), port_prom).unwrap();

    // Prometheus applies its targets a few seconds after start (its scrape
    // manager reloads every 5 s): wait for the first scrape of both jobs,
    // then load while it scrapes.
    let up = prom.query_until("up == 1", |s| s.len() == 2).unwrap();
    assert_eq!(up.len(), 2, "both nginx targets scraped: {up:?}\n{}", prom.log());
    let shop_start = unix_now();
    // `shop`: round robin tries the dead port, nginx retries on app2 and
    // takes the dead port out for fail_timeout (10 min: the whole test).
    // (Backends answer a random 5xx now and then: statuses prove nothing;
    // `served` below counts what app2 served.)
    for _ in 0..SHOP_REQUESTS {
        http::get(&nginx.url("/p/shop/api/orders")).unwrap();
    }
    let spec = LoadSpec::new(nginx.addr(), routes()).requests(REQUESTS).concurrency(4).rate(Some(RATE));
    let load_start = unix_now();
    let got = load::run(&spec).unwrap();
    let load_end = unix_now();
    assert_eq!(got.errors, 0, "{:?}", got.error_samples);
    assert_eq!(got.responses(), REQUESTS);
    let served: u64 = backends.iter().map(|b| b.total()).sum();
    assert_eq!(served, REQUESTS + SHOP_REQUESTS, "nginx proxied every request once");
    let hostile = app1
        .by_route()
        .into_keys()
        .chain(app2.by_route().into_keys())
        .filter(|(_, p)| p.contains('\u{1}') || p.contains('\u{fffd}') || p.contains('"') || p.len() > 1000);
    assert!(hostile.count() >= 4, "hostile paths reached the backends: {:?}", app1.by_route().keys());

    // The probe accounts for everything the backends served.
    probe
        .wait_until(SETTLE, |s| {
            backends.iter().all(|b| s.peers.iter().any(|p| p.addr == b.addr() && p.requests == b.total()))
        })
        .unwrap();
    // Other loopback traffic on this host would show as unlisted peers
    // (upstream=""): the queries below select the configured groups (`shop`
    // has its own checks in 5).

    // 1. promtool on the live answer, with and without route series.
    let scrape = http::get(&nginx.url("/upstreamtop?format=prometheus")).unwrap();
    assert_eq!(scrape.status, 200, "{}", scrape.text());
    let text = scrape.text();
    promtool::check_metrics(&text).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    for label in [
        "route=\"/q\\\"uo\\\\te/it's\"",
        "route=\"/raw/ctl%01%1B%7F/x\"",
        "route=\"/raw/utf8%FF%FE%C3(/bad\"",
        "route=\"/raw/esc\\\\\\\"\\\\\"",
    ] {
        assert!(text.contains(label), "hostile route escaped as {label}:\n{text}");
    }
    let lines = samples(&text);
    for b in backends {
        let server = format!("server=\"{}\"", b.addr());
        let total: f64 = lines
            .iter()
            .filter(|(n, l, _)| n == "upstreamtop_requests_total" && l.contains(&server))
            .map(|s| s.2)
            .sum();
        assert_eq!(total, b.total() as f64, "{server}: requests_total vs backend");
        let routes: f64 = lines
            .iter()
            .filter(|(n, l, _)| n == "upstreamtop_route_requests_total" && l.contains(&server))
            .map(|s| s.2)
            .sum();
        assert_eq!(routes, b.total() as f64, "{server}: route series add up to the backend's total");
        let longest = lines
            .iter()
            .filter(|(n, l, _)| n == "upstreamtop_route_requests_total" && l.contains(&server))
            .map(|(_, l, _)| l.len())
            .max()
            .unwrap_or(0);
        assert!(longest < 300, "route labels are bounded: {longest} bytes");
    }
    let lean = http::get(&nginx.url("/upstreamtop?format=prometheus&route_labels=0")).unwrap();
    promtool::check_metrics(&lean.text()).unwrap();
    assert!(!lean.text().contains("upstreamtop_route_requests_total{"), "{}", lean.text());
    assert!(lean.text().contains("upstreamtop_requests_total{"), "{}", lean.text());

    // 2. Prometheus scraped it: exact totals per server and per code.
    let q = "upstreamtop_requests_total{job=\"upstreamtop\",upstream=~\"app|checkout\"}";
    let want: BTreeMap<String, f64> = backends.iter().map(|b| (b.addr().to_string(), b.total() as f64)).collect();
    let by_server = |s: &[Series]| -> BTreeMap<String, f64> {
        s.iter().map(|x| (x.labels.get("server").cloned().unwrap_or_default(), x.value)).collect()
    };
    let got_totals = prom.query_until(q, |s| by_server(s) == want && s.len() == 3).unwrap();
    assert_eq!(got_totals.len(), 3, "one series per backend: {got_totals:?}");
    assert_eq!(by_server(&got_totals), want, "Prometheus (left) vs backends (right)");
    for s in &got_totals {
        let group = if s.labels["server"] == checkout.addr().to_string() { "checkout" } else { "app" };
        assert_eq!(s.labels["upstream"], group, "{s:?}");
    }
    let codes = prom
        .query(
            "sum by (server, code) (upstreamtop_responses_total{job=\"upstreamtop\",upstream=~\"app|checkout\"})",
            None,
        )
        .unwrap();
    for b in backends {
        let server = b.addr().to_string();
        let got: BTreeMap<String, f64> = codes
            .iter()
            .filter(|s| s.labels["server"] == server)
            .map(|s| (s.labels["code"].clone(), s.value))
            .collect();
        let want: BTreeMap<String, f64> = b.by_status().into_iter().map(|(c, n)| (c.to_string(), n as f64)).collect();
        assert_eq!(got, want, "{server}: responses by code, Prometheus vs backend");
    }

    // 3. rate() during the load: one series per backend, plausible values.
    let at = load_end - 0.5;
    let rates = prom
        .query(
            "sum by (server) (rate(upstreamtop_requests_total{job=\"upstreamtop\",upstream=~\"app|checkout\"}[3s]))",
            Some(at),
        )
        .unwrap();
    assert_eq!(by_server(&rates).keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{rates:?}");
    let sum: f64 = rates.iter().map(|s| s.value).sum();
    let load_rps = REQUESTS as f64 / (load_end - load_start);
    for s in &rates {
        let total = want[&s.labels["server"]];
        assert!(s.value > 0.0 && s.value <= total, "{}: rate {} with {total} requests", s.labels["server"], s.value);
    }
    assert!((load_rps / 4.0..=load_rps * 4.0).contains(&sum), "rate() sum {sum:.1}/s vs the load's {load_rps:.1}/s");
    eprintln!(
        "load {load_rps:.0} req/s; Prometheus rate() per backend: {}",
        rates.iter().map(|s| format!("{}={:.0}/s", s.labels["server"], s.value)).collect::<Vec<_>>().join(", ")
    );

    // 4. Probe health: up here, 0 (not absent) where there is no table.
    let up = prom
        .query_until("upstreamtop_probe_up", |s| s.len() == 2)
        .unwrap()
        .into_iter()
        .map(|s| (s.labels["job"].clone(), s.value))
        .collect::<BTreeMap<_, _>>();
    assert_eq!(up.get("upstreamtop"), Some(&1.0), "{up:?}");
    assert_eq!(up.get("upstreamtop-no-probe"), Some(&0.0), "missing table still scrapes as probe_up 0: {up:?}");
    let direct = http::get(&no_probe.url("/upstreamtop?format=prometheus")).unwrap();
    assert_eq!(direct.status, 200);
    promtool::check_metrics(&direct.text()).unwrap();
    assert!(direct.text().contains("table unavailable"), "{}", direct.text());
    assert_eq!(http::get(&no_probe.url("/upstreamtop")).unwrap().status, 503, "JSON keeps its 503");

    // 5. nginx's view and the counted-once rule, in the scrape of 1.
    let get = |name: &str, group: &str, server: SocketAddr| -> Option<f64> {
        let labels = format!("{{upstream=\"{group}\",server=\"{server}\"}}");
        lines.iter().find(|(n, l, _)| n == name && *l == labels).map(|s| s.2)
    };
    let app2_addr = app2.addr();
    assert_eq!(get("upstreamtop_requests_total", "app", app2_addr), Some(app2.total() as f64), "app counts app2");
    assert_eq!(get("upstreamtop_requests_total", "shop", app2_addr), None, "counted once, not under shop:\n{text}");
    assert_eq!(get("upstreamtop_requests_total", "shop", dead), Some(0.0), "shop counts its own: {text}");
    for group in ["app", "shop"] {
        assert_eq!(get("upstreamtop_upstream_peer", group, app2_addr), Some(1.0), "{group} lists app2:\n{text}");
    }
    for (group, server, state) in
        [("app", app2_addr, 1.0), ("shop", app2_addr, 1.0), ("shop", down, 3.0), ("shop", dead, 4.0)]
    {
        assert_eq!(get("upstreamtop_peer_state", group, server), Some(state), "{group} {server}:\n{text}");
    }
    assert_eq!(get("upstreamtop_peer_up", "shop", dead), Some(0.0), "unavail is not up");
    assert_eq!(get("upstreamtop_nginx_max_conns", "shop", app2_addr), Some(SHOP_MAX_CONNS as f64), "{text}");
    assert_eq!(get("upstreamtop_nginx_max_conns", "app", app2_addr), Some(0.0), "each group its own limit");
    let in_flight = get("upstreamtop_nginx_in_flight", "shop", app2_addr).expect("in flight of app2 in shop");
    assert!(in_flight <= SHOP_MAX_CONNS as f64, "in flight {in_flight}");
    assert_eq!(get("upstreamtop_nginx_max_fails", "shop", dead), Some(1.0));
    assert_eq!(get("upstreamtop_nginx_max_fails", "app", app2_addr), Some(0.0), "app: max_fails=0");
    let fails = get("upstreamtop_nginx_fails", "shop", dead).expect("fails of the dead port");
    assert!(fails >= 1.0, "nginx counted the refused connect: {fails}");
    let last = get("upstreamtop_nginx_last_failure_timestamp_seconds", "shop", dead).expect("last failure");
    assert!(
        (shop_start.floor()..=load_start + 1.0).contains(&last),
        "last failure {last}, shop traffic at {shop_start}"
    );
    assert_eq!(get("upstreamtop_nginx_last_failure_timestamp_seconds", "shop", down), Some(0.0), "never failed");

    // 6. The Grafana dashboard uses only metrics that exist, in valid PromQL
    // that returns series; the per-backend and per-group panels show
    // `shop`'s shared backend app2.
    let dash: Value = serde_json::from_str(&config_file("grafana-dashboard.json")).expect("dashboard is JSON");
    let queries = dashboard_queries(&dash);
    assert!(queries.len() >= 10, "{queries:?}");
    let scraped: BTreeSet<&str> = lines.iter().map(|(n, _, _)| n.as_str()).collect();
    // The whole test in the rate window: a new connection rarely comes
    // within a few seconds of keepalive traffic.
    let eval = |title: &str, expr: &str, groups: &str| -> Vec<Series> {
        let promql = expr.replace("$__rate_interval", "1m").replace("$upstream", groups);
        prom.query(&promql, Some(load_end)).unwrap_or_else(|e| panic!("{title}: {e:#}"))
    };
    // (upstream, server) -> value.
    let by_peer = |s: &[Series]| -> BTreeMap<(String, String), f64> {
        s.iter()
            .map(|x| {
                let label = |k: &str| x.labels.get(k).cloned().unwrap_or_default();
                ((label("upstream"), label("server")), x.value)
            })
            .collect()
    };
    let peer = |group: &str, server: SocketAddr| (group.to_owned(), server.to_string());
    let all = "app|checkout|shop";
    let mut checked = BTreeSet::new();
    for (title, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{title}: no upstreamtop metric in {expr}");
        for name in &names {
            assert!(scraped.contains(name.as_str()), "{title}: {name} is not in the live scrape ({expr})");
        }
        if let Some(args) = expr.strip_prefix("label_values(").and_then(|e| e.strip_suffix(')')) {
            // Grafana's template syntax: the values of a label of a metric.
            let (metric, label) = args.split_once(',').unwrap_or_else(|| panic!("{title}: {expr}"));
            let label = label.trim();
            let values: BTreeSet<String> = prom
                .query(&format!("group by ({label}) ({metric})"), Some(load_end))
                .unwrap_or_else(|e| panic!("{title}: {e:#}"))
                .into_iter()
                .filter_map(|s| s.labels.get(label).cloned())
                .collect();
            if label == "upstream" {
                for group in ["app", "checkout", "shop", "mirror"] {
                    assert!(values.contains(group), "{expr}: no {group} (a group that counts no backend): {values:?}");
                }
            }
            continue;
        }
        let result = eval(title, expr, all);
        assert!(!result.is_empty(), "{title}: no series for {expr}");
        let got = by_peer(&result);
        match title.as_str() {
            "Requests /s per backend" => {
                let only = |groups: &str| by_peer(&eval(title, expr, groups)).into_keys().collect::<Vec<_>>();
                let mut want =
                    vec![peer("app", app1.addr()), peer("app", app2_addr), peer("checkout", checkout.addr())];
                want.sort();
                assert_eq!(only("app|checkout"), want, "{title}: one series per backend");
                // app2 under the group that counts it, though only shop is chosen.
                let mut want = vec![peer("app", app2_addr), peer("shop", dead), peer("shop", down)];
                want.sort();
                assert_eq!(only("shop"), want, "{title}: every backend shop lists");
                assert_eq!(only("mirror"), [peer("app", app1.addr())], "{title}: mirror's app1, counted in app");
            }
            "Backend state (nginx / wire)" => {
                for (key, state) in
                    [(peer("shop", dead), 4.0), (peer("shop", down), 3.0), (peer("app", app2_addr), 1.0)]
                {
                    assert_eq!(got.get(&key), Some(&state), "{title}: {key:?} in {got:?}");
                }
            }
            "Why no traffic: backends not up now" => {
                for (key, state) in [(peer("shop", dead), 4.0), (peer("shop", down), 3.0)] {
                    assert_eq!(got.get(&key), Some(&state), "{title}: {key:?} in {got:?}");
                }
            }
            "In flight vs max_conns (nginx)" if expr.contains("max_conns") => {
                let want = BTreeMap::from([(peer("shop", app2_addr), SHOP_MAX_CONNS as f64)]);
                assert_eq!(got, want, "{title}: only servers with a limit");
            }
            "nginx failures vs max_fails" if expr.contains("max_fails") => {
                assert_eq!(got.get(&peer("shop", dead)), Some(&1.0), "{title}: {got:?}");
            }
            "Keepalive: requests per new connection" => {
                for b in backends {
                    let group = if b.addr() == checkout.addr() { "checkout" } else { "app" };
                    let reuse = got.get(&peer(group, b.addr())).copied().unwrap_or(f64::NAN);
                    assert!(reuse >= 1.0, "{title}: {} requests per new connection to {}: {got:?}", reuse, b.addr());
                }
            }
            "Requests /s per group" => {
                let shop = result.iter().find(|s| s.labels.get("upstream").is_some_and(|u| u == "shop"));
                let shop = shop.unwrap_or_else(|| panic!("{title}: no shop in {result:?}")).value;
                if expr.contains("group_right") {
                    assert!(shop > 0.0, "{title}: shop with app2's requests: {result:?}");
                } else {
                    assert_eq!(shop, 0.0, "{title}: counted once, app2 under app: {result:?}");
                }
            }
            _ => {}
        }
        checked.insert(title.as_str());
    }
    for title in [
        "Requests /s per backend",
        "Backend state (nginx / wire)",
        "Why no traffic: backends not up now",
        "In flight vs max_conns (nginx)",
        "nginx failures vs max_fails",
        "Keepalive: requests per new connection",
        "Requests /s per group",
    ] {
        assert!(checked.contains(title), "the dashboard has no panel {title:?}");
    }

    assert!(nginx.error_log_problems().is_empty(), "{:?}", nginx.error_log_problems());
    assert!(no_probe.error_log_problems().is_empty(), "{:?}", no_probe.error_log_problems());
    drop(prom);
}

#[test]
fn metric_names_are_extracted_from_promql() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(upstreamtop_response_header_seconds_bucket{a=\"x\"}[5m]))) \
         / time() - upstreamtop_probe_last_publish_timestamp_seconds + not_upstreamtop_x",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["upstreamtop_probe_last_publish_timestamp_seconds", "upstreamtop_response_header_seconds_bucket"]
    );
}
