//! The probe restarts without losing a count. Real nginx with the module,
//! real backends, the real probe with its maps and tcx links pinned in a
//! private bpffs directory; load keeps running while the probe is stopped
//! (SIGTERM, as `systemctl restart` does) or killed (-9). The final table
//! must EQUAL what the backends served — per peer, per exact code, per route
//! — including what crossed the wire while no probe process ran.
//!
//! A start that fails or is killed before its first publish changes
//! nothing: the previous table stays for the next start to continue from.
//!
//! Needs root (tcx, bpffs). Without root the tests say so and pass.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nginx_tests::backend::{Backend, Profile};
use nginx_tests::load::{self, LoadResult, LoadSpec, Route};
use nginx_tests::nginx::{free_port, Nginx, NginxConf};
use nginx_tests::probe::Probe;
use nginx_tests::{http, prereq};
use upstreamtop_table::Snapshot;

const SETTLE: Duration = Duration::from_secs(20);

fn fold(path: &str) -> String {
    let path = path.split('?').next().unwrap_or("");
    path.split('/')
        .map(|seg| if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) { ":id" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// Per peer: requests, exact codes, (method, route) -> requests.
type Figures = (u64, Vec<(u16, u64)>, BTreeMap<(String, String), u64>);

fn expected(b: &Backend) -> Figures {
    let mut routes = BTreeMap::new();
    for (key, n) in b.served() {
        *routes.entry((key.method, fold(&key.path))).or_insert(0) += n;
    }
    (b.total(), b.by_status().into_iter().collect(), routes)
}

fn observed(snap: &Snapshot, addr: SocketAddr) -> Option<Figures> {
    let idx = snap.peers.iter().position(|p| p.addr == addr)?;
    let p = &snap.peers[idx];
    let mut routes = BTreeMap::new();
    for r in snap.routes.iter().filter(|r| r.peer as usize == idx) {
        let key = if r.is_other { (String::new(), "(other)".into()) } else { (r.method.clone(), r.path.clone()) };
        *routes.entry(key).or_insert(0) += r.requests;
    }
    Some((p.requests, p.responses.codes.clone(), routes))
}

fn assert_table_matches(probe: &mut Probe, backends: &[&Backend]) -> Snapshot {
    let want: Vec<Figures> = backends.iter().map(|b| expected(b)).collect();
    let snap = probe
        .wait_until(SETTLE, |s| backends.iter().zip(&want).all(|(b, w)| observed(s, b.addr()).as_ref() == Some(w)))
        .expect("probe publishes");
    for (b, w) in backends.iter().zip(&want) {
        let got = observed(&snap, b.addr()).unwrap_or_else(|| panic!("peer {} missing from the table", b.addr()));
        assert_eq!(got, *w, "peer {}: table (left) vs backend ground truth (right)", b.addr());
        eprintln!("peer {}: {} requests, codes {:?}: equal to the backend's", b.addr(), got.0, got.1);
    }
    assert_eq!(snap.meta.counters.events_dropped, 0, "{:?}", snap.meta.counters);
    assert_eq!(snap.meta.counters.route_overflow, 0, "{:?}", snap.meta.counters);
    snap
}

fn routes() -> Vec<Route> {
    vec![
        Route::get("/p/app/api/orders", 5),
        Route::get("/p/app/api/orders/12345", 3),
        Route::get("/p/app/api/users?id=7", 2),
        Route::post("/p/app/api/cart", 1, b"{\"items\":[1,2]}"),
    ]
}

struct Setup {
    app1: Backend,
    app2: Backend,
    probe: Probe,
    nginx: Nginx,
}

/// Backends on their own loopback address, and the probe told to track
/// only that one: load other tests (or benches) put on lo while this probe
/// is down must not fill its ring.
fn setup(backend_ip: Ipv4Addr) -> Setup {
    let lo = SocketAddr::from((backend_ip, 0));
    let profile = || Profile::fast().statuses(&[(200, 18), (404, 1), (302, 1)]).error_rate(0.05);
    let app1 = Backend::start(lo, profile()).unwrap();
    let app2 = Backend::start(lo, profile().keepalive(false)).unwrap();
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
    let only = format!("{backend_ip}/32");
    let probe =
        Probe::start(&["--iface", "lo", "--only", &only, "--ignore-port", &port.to_string(), "--interval", "250ms"])
            .unwrap();
    let conf = NginxConf::vendored_with_module()
        .unwrap()
        .port(port)
        .workers(2)
        .table(probe.table_path())
        .upstream_servers("app", &[app1.addr(), app2.addr()]);
    let nginx = Nginx::start(conf).unwrap();
    Setup { app1, app2, probe, nginx }
}

/// Run `during` while load flows through nginx; returns the load's result.
fn under_load(nginx: &Nginx, during: impl FnOnce()) -> LoadResult {
    let spec =
        LoadSpec::new(nginx.addr(), routes()).duration(Duration::from_secs(120)).rate(Some(300.0)).concurrency(4);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let load = s.spawn(|| load::run_until(&spec, &stop));
        during();
        stop.store(true, Ordering::Relaxed);
        load.join().expect("load thread").expect("load runs")
    })
}

#[test]
fn sigterm_restart_under_load_loses_nothing() {
    if !prereq::root_or_skip("sigterm_restart_under_load_loses_nothing", "tcx programs, bpffs") {
        return;
    }
    let Setup { app1, app2, mut probe, nginx } = setup(Ipv4Addr::new(127, 0, 0, 71));
    let mut gap_requests = 0;
    let got = under_load(&nginx, || {
        std::thread::sleep(Duration::from_millis(1500));
        probe.stop().expect("clean SIGTERM exit");
        let before = app1.total() + app2.total();
        // No probe process for a second of traffic.
        std::thread::sleep(Duration::from_secs(1));
        gap_requests = app1.total() + app2.total() - before;
        let first = probe.restart().expect("restart");
        assert!(first.peers.iter().any(|p| p.requests > 0), "the restarted probe starts from the old totals");
        std::thread::sleep(Duration::from_millis(1500));
    });
    assert_eq!(got.errors, 0, "{:?}", got.error_samples);
    assert!(gap_requests > 0, "load flowed while the probe was stopped");
    let log = probe.log();
    assert!(log.contains("programs stay attached"), "{log}");
    assert!(log.contains("pinned maps reused"), "{log}");
    assert!(log.contains("adopted the pinned links on lo"), "{log}");
    let snap = assert_table_matches(&mut probe, &[&app1, &app2]);
    assert_eq!(got.responses(), app1.total() + app2.total());
    eprintln!("{gap_requests} requests crossed while no probe ran; final publish #{}", snap.meta.publish_seq);
}

#[test]
fn kill9_under_load_nginx_serves_endpoint_says_stale_restart_resumes() {
    if !prereq::root_or_skip("kill9_under_load_nginx_serves_endpoint_says_stale_restart_resumes", "tcx programs, bpffs")
    {
        return;
    }
    let Setup { app1, app2, mut probe, nginx } = setup(Ipv4Addr::new(127, 0, 0, 72));
    let mut stale_body = String::new();
    let got = under_load(&nginx, || {
        std::thread::sleep(Duration::from_millis(1500));
        probe.kill9();
        // The module notices the table is no longer being published.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let resp = http::get(&nginx.url("/upstreamtop")).expect("GET /upstreamtop");
            if resp.status == 503 {
                stale_body = resp.text();
                break;
            }
            assert_eq!(resp.status, 200, "{}", resp.text());
            assert!(Instant::now() < deadline, "the endpoint never reported the killed probe");
            std::thread::sleep(Duration::from_millis(200));
        }
        probe.restart().expect("restart after kill -9");
        std::thread::sleep(Duration::from_millis(1500));
    });
    assert!(stale_body.contains("probe stale"), "{stale_body}");
    // Every request went through while the probe was dead.
    assert_eq!(got.errors, 0, "{:?}", got.error_samples);
    assert_eq!(got.responses(), app1.total() + app2.total());
    let log = probe.log();
    assert!(log.contains("pinned maps reused"), "{log}");
    assert_table_matches(&mut probe, &[&app1, &app2]);
    let resp = http::get(&nginx.url("/upstreamtop")).expect("GET /upstreamtop");
    assert_eq!(resp.status, 200, "fresh again after the restart: {}", resp.text());
    assert!(nginx.error_log_problems().is_empty(), "{:?}", nginx.error_log_problems());
}

/// (link id, prog id) of every pinned link per `upstreamtop-probe status`.
fn pinned_ids(probe: &Probe) -> Vec<(u32, u32, String)> {
    let out = probe.state_command("status").expect("status");
    out.lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[1].parse().unwrap(), w[3].parse().unwrap(), w.last().unwrap().to_string())
        })
        .collect()
}

fn bpftool_ids(what: &str) -> Vec<u32> {
    let out = Command::new("bpftool").args(["-j", what, "show"]).output().expect("run bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    v.as_array().map(|a| a.iter().filter_map(|o| o["id"].as_u64()).map(|i| i as u32).collect()).unwrap_or_default()
}

#[test]
fn detach_removes_the_programs_a_stopped_probe_left_attached() {
    if !prereq::root_or_skip("detach_removes_the_programs_a_stopped_probe_left_attached", "tcx programs, bpffs") {
        return;
    }
    let mut probe = Probe::start(&["--iface", "lo", "--interval", "250ms"]).unwrap();
    let ids = pinned_ids(&probe);
    assert_eq!(ids.len(), 2, "egress + ingress on lo: {ids:?}");
    probe.stop().unwrap();
    // After SIGTERM the links stay (pinned) and keep their programs.
    let after_stop = pinned_ids(&probe);
    assert_eq!(after_stop, ids);
    assert!(ids.iter().all(|(_, _, s)| s == "attached"), "{ids:?}");
    let links = bpftool_ids("link");
    assert!(ids.iter().all(|(l, _, _)| links.contains(l)), "bpftool sees links {links:?}, ours {ids:?}");

    let out = probe.state_command("detach").unwrap();
    assert!(out.contains("detached 2 tcx links"), "{out}");
    assert!(!probe.state_dir().exists(), "state dir removed");
    // The kernel frees a detached link's program after an RCU grace period
    // (deferred work), so on a busy machine it can outlive the detach
    // briefly: wait for it to go, up to a bound far beyond any grace period.
    let gone = |links: &[u32], progs: &[u32]| ids.iter().all(|(l, p, _)| !links.contains(l) && !progs.contains(p));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (mut links, mut progs) = (bpftool_ids("link"), bpftool_ids("prog"));
    while !gone(&links, &progs) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        (links, progs) = (bpftool_ids("link"), bpftool_ids("prog"));
    }
    for (link, prog, _) in &ids {
        assert!(!links.contains(link), "link {link} still exists 10 s after detach: {links:?}");
        assert!(!progs.contains(prog), "program {prog} still loaded 10 s after detach: {progs:?}");
    }
}

/// Temporary tables (`.table.<pid>.<random>.tmp`) in the table's directory.
fn temp_tables(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".table.") && n.ends_with(".tmp"))
        .collect();
    v.sort();
    v
}

/// A start that fails or is killed before its first publish leaves the
/// previous table exactly as it was, and the next good start continues
/// from it. Run 1 serves load, publishes and stops (SIGTERM); with no
/// traffic since, three starts fail: an `--iface` that does not exist
/// (refused before anything, the table writer included, is made), a state
/// directory another probe holds (after the new table's writer exists:
/// its temporary file is removed on the way out), and kill -9 while the
/// programs load (after the writer exists, before the first publish: its
/// temporary file stays). The table stays byte for byte the same through
/// all three. Then a normal start: its first publish continues run 1 —
/// per peer requests, exact codes and routes equal what the backends
/// served, the same latency histogram, the history with one new sample,
/// the next publish number — and after more load the totals still equal
/// the backends' (both runs).
#[test]
fn failed_starts_before_the_first_publish_keep_the_table() {
    use std::os::unix::fs::MetadataExt;
    if !prereq::root_or_skip("failed_starts_before_the_first_publish_keep_the_table", "tcx programs, bpffs") {
        return;
    }
    let Setup { app1, app2, mut probe, nginx } = setup(Ipv4Addr::new(127, 0, 0, 73));
    let got = under_load(&nginx, || std::thread::sleep(Duration::from_secs(2)));
    assert_eq!(got.errors, 0, "{:?}", got.error_samples);
    assert_table_matches(&mut probe, &[&app1, &app2]);
    probe.stop().expect("clean SIGTERM exit");
    let table = probe.table_path().to_owned();
    let dir = table.parent().unwrap().to_owned();
    let before = probe.snapshot().expect("run 1's last publish");
    let bytes = std::fs::read(&table).unwrap();
    let ino = std::fs::metadata(&table).unwrap().ino();
    let unchanged = |what: &str| {
        assert_eq!(std::fs::metadata(&table).unwrap().ino(), ino, "{what}: the table was replaced");
        assert!(std::fs::read(&table).unwrap() == bytes, "{what}: the table's bytes changed");
    };
    let args = probe.args().to_vec();

    // 1. An interface that does not exist: refused before anything is made.
    let mut a = args.clone();
    a.extend(["--iface".into(), "nosuchif0".into()]);
    let out = probe.command(&a).unwrap().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unknown interface \"nosuchif0\""), "{err}");
    unchanged("unknown --iface");
    assert_eq!(temp_tables(&dir), Vec::<String>::new());

    // 2. The state directory locked (as by another probe): fails after the
    // new table's writer exists; it goes, with its temporary file.
    let lock = std::fs::File::open(probe.state_dir()).unwrap();
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB,) }, 0);
    let out = probe.command(&args).unwrap().output().unwrap();
    drop(lock);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("another upstreamtop-probe uses"), "{err}");
    unchanged("state directory locked");
    assert_eq!(temp_tables(&dir), Vec::<String>::new(), "the failed start removed its temporary table");

    // 3. kill -9 once the new table's writer exists (its temporary file
    // appears before the programs load, which takes far longer than this
    // loop's millisecond), so before the first publish.
    let mut child = probe.command(&args).unwrap().spawn().unwrap();
    let mine = format!(".table.{}.", child.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !temp_tables(&dir).iter().any(|n| n.starts_with(&mine)) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the probe exited ({status}) before its writer existed: {:?}", child.wait_with_output());
        }
        assert!(Instant::now() < deadline, "no temporary table from pid {} in 30 s", child.id());
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&out.status), Some(libc::SIGKILL));
    let left = temp_tables(&dir);
    assert!(
        left.len() == 1 && left[0].starts_with(&mine),
        "kill -9 runs no destructor, so its temporary table stays \
         (none: did the kill come after the first publish?): {left:?}"
    );
    unchanged("kill -9 before the first publish");
    eprintln!("killed before its first publish: {}", String::from_utf8_lossy(&out.stderr).trim());

    // 4. A normal start continues run 1 exactly.
    let first = probe.restart().expect("restart");
    assert_eq!(temp_tables(&dir), Vec::<String>::new(), "the killed probe's temporary table was removed");
    assert_eq!(first.meta.publish_seq, before.meta.publish_seq + 1);
    assert_eq!(first.meta.started_unix_ns, before.meta.started_unix_ns);
    for b in [&app1, &app2] {
        assert_eq!(observed(&first, b.addr()), Some(expected(b)), "peer {}: first publish vs backend", b.addr());
        let p = |s: &Snapshot| s.peers.iter().find(|p| p.addr == b.addr()).cloned().unwrap();
        let (old, new) = (p(&before), p(&first));
        assert_eq!(new.latency, old.latency, "peer {}: latency histogram", b.addr());
        assert_eq!(new.responses, old.responses, "peer {}: responses", b.addr());
        // The restored history, then this publish's sample (no traffic).
        let keep = new.history.len() - 1;
        assert!(keep > 0 && old.history.len() >= keep, "{} vs {}", old.history.len(), new.history.len());
        assert_eq!(new.history[..keep], old.history[old.history.len() - keep..], "peer {}: history", b.addr());
        assert_eq!(new.history[keep].requests, 0);
    }
    let log = probe.log();
    assert!(log.contains(&format!("continuing from publish #{}", before.meta.publish_seq)), "{log}");

    // And the totals go on from there.
    let got = under_load(&nginx, || std::thread::sleep(Duration::from_secs(1)));
    assert_eq!(got.errors, 0, "{:?}", got.error_samples);
    assert_table_matches(&mut probe, &[&app1, &app2]);
    assert!(nginx.error_log_problems().is_empty(), "{:?}", nginx.error_log_problems());
}
