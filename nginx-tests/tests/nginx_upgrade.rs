//! nginx's own life cycle under load: configuration reloads (`SIGHUP`) and
//! the on-the-fly binary upgrade (`SIGUSR2` starts a new master from the
//! same binary path, which inherits the listening sockets; `SIGQUIT` then
//! retires the old master gracefully). Through all of it a client keeps
//! sending traffic and another keeps polling the status endpoint:
//!
//! - the load generator sees no failure, and the backends served exactly
//!   what it sent (nothing lost, nothing doubled);
//! - the endpoint answers 200 with valid JSON on every poll;
//! - the probe's final table and the new master's JSON EQUAL the backends'
//!   counts per peer and per exact status code;
//! - no worker crashed and nothing was logged at alert or worse.
//!
//! Needs root (tcx). Without root the test says so and passes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nginx_tests::backend::{Backend, Profile};
use nginx_tests::load::{self, LoadSpec, Route};
use nginx_tests::nginx::{free_port, NginxConf};
use nginx_tests::probe::Probe;
use nginx_tests::{http, prereq};
use serde_json::Value;
use upstreamtop_table::Snapshot;

const SETTLE: Duration = Duration::from_secs(20);
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// Live (non-zombie) direct children of `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let mut fields = after.split_whitespace();
        let state = fields.next().unwrap_or_default();
        if state != "Z" && fields.next().and_then(|f| f.parse::<u32>().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out.sort_unstable();
    out
}

/// Whether `pid` still runs (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

fn signal(pid: u32, sig: i32) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits");
    // SAFETY: kill(2) on an nginx master this test started (directly or
    // through the binary upgrade); no memory is shared.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}): {}", std::io::Error::last_os_error());
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {STEP_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nginx run as a daemon, the way the binary upgrade needs it: a master
/// whose parent is still the process that started it ignores `SIGUSR2`
/// ("the old binary's process is still running"), and with `daemon off`
/// the test is that parent. So this test renders the fixture's config with
/// `daemon on`, lets nginx detach, and follows masters through the pid
/// file. Drop stops every master it knew, gracefully then by force.
struct Daemon {
    prefix: tempfile::TempDir,
    conf: NginxConf,
    port: u16,
    masters: Vec<u32>,
}

impl Daemon {
    fn start(conf: NginxConf, port: u16) -> Daemon {
        let prefix = tempfile::Builder::new().prefix("nginx-tests-upgrade-").tempdir().unwrap();
        for dir in ["conf", "logs", "tmp"] {
            std::fs::create_dir_all(prefix.path().join(dir)).unwrap();
        }
        let mut d = Daemon { prefix, conf, port, masters: Vec::new() };
        d.write_conf();
        let p = d.prefix.path();
        let out = std::process::Command::new(&d.conf.binary)
            .arg("-p")
            .arg(p)
            .arg("-c")
            .arg(p.join("conf/nginx.conf"))
            .arg("-e")
            .arg(p.join("logs/error.log"))
            .output()
            .expect("run nginx");
        assert!(
            out.status.success(),
            "nginx failed to start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            d.error_log()
        );
        let master = wait_for("nginx.pid", || read_pid(&d.pid_file()).filter(|&p| alive(p)));
        d.masters.push(master);
        wait_for("/health answers", || http::get(&d.url("/health")).ok().filter(|r| r.status == 200));
        d
    }

    fn write_conf(&self) {
        let text = self.conf.render(self.prefix.path(), self.port);
        assert!(text.contains("daemon off;"), "fixture config changed shape");
        std::fs::write(self.prefix.path().join("conf/nginx.conf"), text.replace("daemon off;", "daemon on;")).unwrap();
    }

    fn pid_file(&self) -> std::path::PathBuf {
        self.prefix.path().join("nginx.pid")
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn master(&self) -> u32 {
        *self.masters.last().expect("a master")
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.path().join("logs/error.log")).unwrap_or_default()
    }

    /// `SIGHUP` with a (possibly new) config; wait until every worker is new.
    fn reload_with(&mut self, conf: NginxConf) {
        self.conf = conf;
        self.write_conf();
        let master = self.master();
        let old = children_of(master);
        signal(master, libc::SIGHUP);
        wait_for("reload replaced every worker", || {
            let now = children_of(master);
            (now.len() == old.len() && now.iter().all(|p| !old.contains(p))).then_some(())
        });
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        for &pid in &self.masters {
            let Ok(p) = libc::pid_t::try_from(pid) else { continue };
            if alive(pid) {
                // SAFETY: kill(2) on an nginx master this test started.
                unsafe { libc::kill(p, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.masters.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for &pid in &self.masters {
            if alive(pid) {
                // SAFETY: as above; it ignored SIGTERM for 10 s.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        if std::thread::panicking() {
            eprintln!("---- nginx error log ----\n{}---- end ----", self.error_log());
        }
    }
}

/// Sets the flag when dropped, so a failing step inside the thread scope
/// stops the load and the poller instead of leaving the scope waiting.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn peer_codes(snap: &Snapshot, addr: SocketAddr) -> Option<(u64, BTreeMap<u16, u64>)> {
    let p = snap.peers.iter().find(|p| p.addr == addr)?;
    Some((p.requests, p.responses.codes.iter().copied().collect()))
}

#[test]
fn reloads_and_binary_upgrade_under_load_lose_no_request() {
    if !prereq::root_or_skip("reloads_and_binary_upgrade_under_load_lose_no_request", "tcx programs") {
        return;
    }
    let lo = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let app1 = Backend::start(lo, Profile::fast().statuses(&[(200, 18), (404, 1), (302, 1)]).error_rate(0.04)).unwrap();
    let app2 = Backend::start(lo, Profile::fast().latency_ms(0, 3).statuses(&[(201, 1)])).unwrap();
    let backends = [&app1, &app2];

    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
    let mut probe =
        Probe::start(&["--iface", "lo", "--ignore-port", &port.to_string(), "--interval", "250ms"]).unwrap();
    let conf = NginxConf::vendored_with_module()
        .unwrap()
        .port(port)
        .workers(2)
        .table(probe.table_path())
        .upstream_servers("app", &[app1.addr(), app2.addr()]);
    let mut nginx = Daemon::start(conf.clone(), port);
    let old_master = nginx.master();
    let prefix = nginx.prefix.path().to_owned();
    let pid_file = nginx.pid_file();

    // Load: paced, keepalive, through the whole sequence.
    let stop = AtomicBool::new(false);
    let polls = AtomicU64::new(0);
    let poll_failures = Mutex::new(Vec::<String>::new());
    let spec = LoadSpec::new(
        nginx.addr(),
        vec![
            Route::get("/p/app/api/orders?token=x", 4),
            Route::get("/p/app/api/orders/42", 2),
            Route::post("/p/app/api/cart", 1, b"{\"items\":[1,2]}"),
        ],
    )
    .requests(u64::MAX)
    .concurrency(4)
    .rate(Some(600.0));
    let status_url = nginx.url("/upstreamtop");

    let got = std::thread::scope(|s| {
        let stopper = StopOnDrop(&stop);
        let load = s.spawn(|| load::run_until(&spec, &stop).unwrap());
        // Poll the endpoint all along: every answer must be a 200 with JSON.
        let poller = s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                match http::get(&status_url) {
                    Ok(r) if r.status == 200 && serde_json::from_slice::<Value>(&r.body).is_ok() => {}
                    Ok(r) => poll_failures.lock().unwrap().push(format!("{}: {}", r.status, r.text())),
                    Err(e) => poll_failures.lock().unwrap().push(format!("{e:#}")),
                }
                polls.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        let pause = || std::thread::sleep(Duration::from_millis(800));

        pause();
        // Two reloads: the same config, then one that changes the group
        // (keepalive pool size) so the workers really are new.
        nginx.reload_with(conf.clone());
        pause();
        let mut changed = conf.clone();
        changed.upstreams[0].1.retain(|l| !l.starts_with("keepalive"));
        changed.upstreams[0].1.push("keepalive 8".into());
        nginx.reload_with(changed);
        pause();

        // Binary upgrade: USR2 -> new master from the same binary path.
        signal(old_master, libc::SIGUSR2);
        let oldbin = prefix.join("nginx.pid.oldbin");
        wait_for("nginx.pid.oldbin names the old master", || (read_pid(&oldbin) == Some(old_master)).then_some(()));
        let new_master =
            wait_for("nginx.pid names a new master", || read_pid(&pid_file).filter(|&p| p != old_master && alive(p)));
        nginx.masters.push(new_master);
        wait_for("the new master runs 2 workers", || (children_of(new_master).len() == 2).then_some(()));
        // Both generations serve side by side for a while.
        pause();
        // Retire the old master gracefully; its workers finish what they hold.
        signal(old_master, libc::SIGQUIT);
        wait_for("the old master exits", || (!alive(old_master)).then_some(()));
        pause();
        pause();

        drop(stopper);
        poller.join().unwrap();
        load.join().unwrap()
    });

    // Nothing failed, nothing lost, nothing doubled.
    assert_eq!(got.errors, 0, "load errors during reload/upgrade: {:?}", got.error_samples);
    let sent = got.responses();
    assert!(sent > 1000, "load ran through the sequence: {sent} responses");
    let served: u64 = backends.iter().map(|b| b.total()).sum();
    assert_eq!(served, sent, "backends served exactly what the client got answers for");
    let failures = poll_failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} endpoint polls failed: {:?}",
        failures.len(),
        polls.load(Ordering::Relaxed),
        failures
    );
    eprintln!(
        "{sent} requests through 2 reloads and a binary upgrade; {} endpoint polls all 200",
        polls.load(Ordering::Relaxed)
    );

    // The table: exact per peer and per code.
    let want: Vec<(u64, BTreeMap<u16, u64>)> = backends.iter().map(|b| (b.total(), b.by_status())).collect();
    let snap = probe
        .wait_until(SETTLE, |s| backends.iter().zip(&want).all(|(b, w)| peer_codes(s, b.addr()).as_ref() == Some(w)))
        .unwrap();
    for (b, w) in backends.iter().zip(&want) {
        assert_eq!(peer_codes(&snap, b.addr()).as_ref(), Some(w), "{}: table (left) vs backend (right)", b.addr());
    }
    assert_eq!(snap.meta.counters.events_dropped, 0, "{:?}", snap.meta.counters);

    // The new master's endpoint: the same figures.
    let resp = http::get(&nginx.url("/upstreamtop")).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let doc: Value = serde_json::from_slice(&resp.body).unwrap();
    for b in backends {
        let server = b.addr().to_string();
        let peer = doc["upstreams"]["app"]["peers"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["server"] == server.as_str()))
            .unwrap_or_else(|| panic!("{server} not in {doc:#}"));
        assert_eq!(peer["requests"].as_u64(), Some(b.total()), "{server}: {peer}");
        for (code, n) in b.by_status() {
            assert_eq!(peer["responses"]["codes"][code.to_string()].as_u64(), Some(n), "{server} {code}: {peer}");
        }
    }

    // No crash, nothing at alert or worse, across both masters.
    let log = nginx.error_log();
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("[alert]") || l.contains("[crit]") || l.contains("[emerg]") || l.contains("exited on signal")
        })
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(log.contains("changing binary"), "USR2 went through nginx's upgrade path:\n{log}");
}
