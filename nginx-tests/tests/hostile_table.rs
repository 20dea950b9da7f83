//! The table as an attack surface, and least privilege around it.
//!
//! - Many random rewrites of the table (valid publishes, garbage replaced
//!   by rename, bytes scribbled in place, in-place truncation, removal, an
//!   empty file) while clients poll the endpoint in JSON and Prometheus
//!   format and another location: every answer is a well-formed 200 or
//!   503, the other location keeps serving, the workers are the same
//!   processes at the end and nothing "exited on signal".
//! - A FIFO and a symlink renamed over the table path: answered at once
//!   with 503 naming what is there (the reader opens `O_NONBLOCK |
//!   O_NOFOLLOW` and reads only a regular file), twice in a row, by the
//!   same worker.
//! - Least privilege: the probe creates the table 0644 root-owned in a
//!   0755 directory; the `nobody` user (nginx's usual worker user) cannot
//!   open it for writing, but can read it; an nginx whose workers run as
//!   `nobody` serves the endpoint and holds the table open read-only.
//!   (Access control on the endpoint itself — `deny` gives 403 — is
//!   `module_endpoint::methods_and_access_control`.)
//!
//! Needs root (nginx `user` switching, the probe's tcx programs). Without
//! root the tests say so and pass.

use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nginx_tests::nginx::{Nginx, NginxConf};
use nginx_tests::probe::Probe;
use nginx_tests::{http, prereq};
use serde_json::Value;
use upstreamtop_table::histogram::BUCKETS;
use upstreamtop_table::{Capacities, Latency, PeerStats, ProbeMeta, Responses, RouteStats, Snapshot, TableWriter};

/// How long the rewriter runs while the clients poll.
const REWRITE_FOR: Duration = Duration::from_secs(6);
const CAPS: Capacities = Capacities { max_peers: 8, max_routes: 16, max_recent: 8, history_len: 4 };
const NOBODY: u32 = 65534;

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// A valid snapshot whose figures derive from `n`, with hostile strings.
fn snapshot(n: u64) -> Snapshot {
    let now = now_ns();
    let peer = |i: u64| PeerStats {
        addr: SocketAddr::from(([127, 0, 0, 1], 19_200 + i as u16)),
        requests: n + i,
        responses: Responses { class: [0, n, 0, 0, i], codes: vec![(200, n), (503, i)], codes_other: 0 },
        no_response: 0,
        sent_bytes: n * 100,
        received_bytes: n * 1000,
        conns: Default::default(),
        latency: Latency { buckets: vec![0; BUCKETS], sum_ns: 0, count: 0 },
        window: Default::default(),
        history: Vec::new(),
        first_seen_unix_ns: now - 1_000_000_000,
        last_seen_unix_ns: now,
    };
    Snapshot {
        meta: ProbeMeta {
            pid: 1,
            started_unix_ns: now - 10_000_000_000,
            published_unix_ns: now,
            interval_ns: 60_000_000_000,
            publish_seq: n,
            history_len: 4,
            interfaces: vec!["lo".into(), "\u{1b}[31mevil".into()],
            counters: Default::default(),
        },
        peers: (0..1 + n % 5).map(peer).collect(),
        routes: vec![RouteStats {
            peer: 0,
            method: "GET".into(),
            path: format!("/\"q\\\u{1}\u{9b}{n}"),
            requests: n,
            responses: Responses { class: [0, n, 0, 0, 0], codes: vec![(200, n)], codes_other: 0 },
            ..Default::default()
        }],
        recent: Vec::new(),
    }
}

/// Deterministic xorshift for the rewrite schedule.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One random rewrite of `table`. The writer maps its file, so a file that
/// gets truncated in place must never be published to again (SIGBUS in
/// the writer — the probe's own file, 0644 root, not something nginx or an
/// unprivileged user can do): truncation drops the writer, and the next
/// valid publish creates a new file by rename as a restarted probe would.
fn rewrite(table: &Path, writer: &mut Option<TableWriter>, rng: &mut Rng, n: u64) -> &'static str {
    let tmp = table.with_extension("tmp");
    match rng.next() % 8 {
        0..=2 => {
            if writer.is_none() {
                *writer = Some(TableWriter::create(table, CAPS).unwrap());
            }
            writer.as_mut().unwrap().publish(&snapshot(n)).unwrap();
            "publish"
        }
        3 => {
            let mut b: Vec<u8> = (0..rng.next() % 30_000).map(|_| rng.next() as u8).collect();
            if b.len() >= 12 && rng.next().is_multiple_of(2) {
                b[..8].copy_from_slice(b"UPTOPTBL");
                b[8..12].copy_from_slice(&1u32.to_le_bytes());
            }
            std::fs::write(&tmp, &b).unwrap();
            std::fs::rename(&tmp, table).unwrap();
            "garbage"
        }
        4 => {
            if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(table) {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0).max(1);
                let at = rng.next() % len;
                let bytes: Vec<u8> = (0..1 + rng.next() % 32).map(|_| rng.next() as u8).collect();
                f.seek(SeekFrom::Start(at)).unwrap();
                f.write_all(&bytes).unwrap();
            }
            "scribble"
        }
        5 => {
            *writer = None;
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(table) {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                f.set_len(rng.next() % len.max(1)).unwrap();
            }
            "truncate"
        }
        6 => {
            let _ = std::fs::remove_file(table);
            "remove"
        }
        _ => {
            std::fs::write(&tmp, b"").unwrap();
            std::fs::rename(&tmp, table).unwrap();
            "empty"
        }
    }
}

#[test]
fn random_table_rewrites_under_polling_keep_workers_alive() {
    if !prereq::root_or_skip(
        "random_table_rewrites_under_polling_keep_workers_alive",
        "tcx programs, setpriv to nobody",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table");
    TableWriter::create(&table, CAPS).unwrap().publish(&snapshot(1)).unwrap();
    let conf = NginxConf::vendored_with_module()
        .unwrap()
        .workers(2)
        .table(&table)
        .upstream("app", &["server 127.0.0.1:19200", "server 127.0.0.1:19201"])
        .extra_server("location = /metrics { upstreamtop_status prometheus; }");
    let nginx = Nginx::start(conf).unwrap();
    let workers = nginx.worker_pids();
    assert_eq!(workers.len(), 2);

    let stop = AtomicBool::new(false);
    let (ok200, ok503, health) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let failures = Mutex::new(Vec::<String>::new());
    let kinds = std::thread::scope(|s| {
        for path in ["/upstreamtop", "/metrics", "/upstreamtop?routes=100&format=json"] {
            let (stop, ok200, ok503, failures, nginx) = (&stop, &ok200, &ok503, &failures, &nginx);
            s.spawn(move || {
                let mut client = nginx.client();
                while !stop.load(Ordering::Relaxed) {
                    let fail = |what: String| failures.lock().unwrap().push(format!("{path}: {what}"));
                    match client.get(path) {
                        Ok(r) if path == "/metrics" => {
                            let text = r.text();
                            if r.status != 200 || !text.contains("upstreamtop_probe_up") {
                                fail(format!("{} {text}", r.status));
                            } else if text.contains("upstreamtop_probe_up 1") {
                                ok200.fetch_add(1, Ordering::Relaxed);
                            } else {
                                ok503.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(r) => match (r.status, serde_json::from_slice::<Value>(&r.body)) {
                            (200, Ok(_)) => {
                                ok200.fetch_add(1, Ordering::Relaxed);
                            }
                            (503, Ok(_)) => {
                                ok503.fetch_add(1, Ordering::Relaxed);
                            }
                            (status, parsed) => fail(format!("{status} {parsed:?}: {}", r.text())),
                        },
                        Err(e) => fail(format!("{e:#}")),
                    }
                }
            });
        }
        {
            let (stop, health, failures, nginx) = (&stop, &health, &failures, &nginx);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match http::get(&nginx.url("/health")) {
                        Ok(r) if r.status == 200 => {
                            health.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failures.lock().unwrap().push(format!("/health: {other:?}")),
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        let mut rng = Rng(0x5DEE_CE66_D1CE_4E5B);
        let mut writer = None;
        let mut kinds = std::collections::BTreeMap::<&str, u64>::new();
        let start = Instant::now();
        let mut n = 2;
        while start.elapsed() < REWRITE_FOR {
            *kinds.entry(rewrite(&table, &mut writer, &mut rng, n)).or_insert(0) += 1;
            n += 1;
            // Let the pollers see each state now and then.
            if n.is_multiple_of(16) {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        stop.store(true, Ordering::Relaxed);
        kinds
    });

    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{} bad answers, e.g. {:?}", failures.len(), &failures[..failures.len().min(5)]);
    let (ok200, ok503) = (ok200.load(Ordering::Relaxed), ok503.load(Ordering::Relaxed));
    eprintln!(
        "rewrites {kinds:?}; endpoint answers: {ok200} with data, {ok503} unavailable; /health {} x 200",
        health.load(Ordering::Relaxed)
    );
    assert!(ok200 > 0 && ok503 > 0, "both good and bad tables were served: {ok200} / {ok503}");
    assert!(health.load(Ordering::Relaxed) > 0);
    assert_eq!(nginx.worker_pids(), workers, "no worker died and was replaced");
    let problems = nginx.error_log_problems();
    assert!(problems.is_empty(), "{problems:#?}");

    // A good table afterwards: served again by the same workers.
    TableWriter::create(&table, CAPS).unwrap().publish(&snapshot(7)).unwrap();
    let r = http::get(&nginx.url("/upstreamtop")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Run `script` under `sh` as nobody:nogroup with no supplementary groups
/// and no capabilities; its exit status.
fn as_nobody(script: &str, arg: &Path) -> std::process::ExitStatus {
    Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .args(["sh", "-c", script, "sh"])
        .arg(arg)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run setpriv (util-linux)")
}

#[test]
fn table_is_root_owned_read_only_to_nginx_workers() {
    if !prereq::root_or_skip("table_is_root_owned_read_only_to_nginx_workers", "tcx programs, setpriv to nobody") {
        return;
    }
    // The probe ignores nothing here and sees no traffic of interest: what
    // matters is the file it creates.
    let probe = Probe::start(&["--iface", "lo", "--interval", "250ms"]).unwrap();
    let table = probe.table_path().to_owned();
    let meta = std::fs::metadata(&table).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644, "table mode");
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "table owned by root");

    // nobody: cannot write, append, truncate or replace; can read.
    assert!(!as_nobody(": >> \"$1\"", &table).success(), "nobody opened the table for appending");
    assert!(
        !as_nobody("printf x | dd of=\"$1\" conv=notrunc status=none", &table).success(),
        "nobody wrote into the table"
    );
    assert!(!as_nobody(": > \"$1\"", &table).success(), "nobody truncated the table");
    let parent = table.parent().unwrap();
    assert!(!as_nobody("echo x > \"$1/evil\"", parent).success(), "nobody created a file next to the table");
    assert!(as_nobody("head -c 8 \"$1\" | grep -q UPTOPTBL", &table).success(), "nobody can read the table");
    assert_eq!(std::fs::metadata(&table).unwrap().len(), meta.len(), "the table is unchanged");

    // nginx with workers as nobody: serves the endpoint, holds the table
    // read-only.
    let conf = NginxConf::vendored_with_module()
        .unwrap()
        .user(Some("nobody nogroup"))
        .workers(1)
        .table(&table)
        .upstream("app", &["server 127.0.0.1:19300"]);
    let nginx = Nginx::start(conf).unwrap();
    let r = http::get(&nginx.url("/upstreamtop")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice::<Value>(&r.body).expect("JSON");
    let worker = nginx.worker_pids()[0];
    let status = std::fs::read_to_string(format!("/proc/{worker}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == NOBODY.to_string()),
        "worker runs as nobody (real, effective, saved, fs): {uid_line}"
    );
    let mut table_fds = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{worker}/fd")).unwrap().flatten() {
        if std::fs::read_link(fd.path()).ok().as_deref() == Some(table.as_path()) {
            let info =
                std::fs::read_to_string(format!("/proc/{worker}/fdinfo/{}", fd.file_name().to_string_lossy())).unwrap();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
                .unwrap();
            table_fds.push(flags);
        }
    }
    assert!(!table_fds.is_empty(), "the worker holds the table open after answering");
    for flags in table_fds {
        assert_eq!(flags & libc::O_ACCMODE as u32, libc::O_RDONLY as u32, "table fd flags {flags:o}: read-only");
    }
    // And no writable mapping of it either.
    let maps = std::fs::read_to_string(format!("/proc/{worker}/maps")).unwrap();
    for line in maps.lines().filter(|l| l.ends_with(&*table.to_string_lossy())) {
        let perms = line.split_whitespace().nth(1).unwrap();
        assert!(!perms.contains('w'), "writable mapping of the table: {line}");
    }
    assert!(nginx.error_log_problems().is_empty(), "{:?}", nginx.error_log_problems());
}

/// GET `path` with a short timeout: a worker blocked on the table would
/// show as a timeout here, not as a hung test.
fn prompt_get(nginx: &Nginx, path: &str) -> http::Response {
    let t = Instant::now();
    let r = nginx
        .client()
        .timeout(Duration::from_secs(5))
        .get(path)
        .unwrap_or_else(|e| panic!("GET {path} did not answer within 5 s: {e:#}"));
    assert!(t.elapsed() < Duration::from_secs(5), "GET {path} took {:?}", t.elapsed());
    r
}

fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo {}: {}", path.display(), std::io::Error::last_os_error());
}

/// A FIFO (nobody writing to it) and then a symlink (to a valid table)
/// renamed over the table path under a running nginx: each request answers
/// at once with 503 and a reason naming what is there, the request right
/// after too (the worker is not stuck in an open), JSON and Prometheus
/// alike; a real table put back is served again by the same workers, and
/// nothing in the error log says a worker died.
#[test]
fn fifo_or_symlink_at_the_table_path_answers_503_at_once() {
    if !prereq::root_or_skip("fifo_or_symlink_at_the_table_path_answers_503_at_once", "vendored nginx as root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table");
    TableWriter::create(&table, CAPS).unwrap().publish(&snapshot(1)).unwrap();
    let conf = NginxConf::vendored_with_module()
        .unwrap()
        .workers(1)
        .table(&table)
        .upstream("app", &["server 127.0.0.1:19200"])
        .extra_server("location = /metrics { upstreamtop_status prometheus; }");
    let nginx = Nginx::start(conf).unwrap();
    let workers = nginx.worker_pids();
    let r = prompt_get(&nginx, "/upstreamtop");
    assert_eq!(r.status, 200, "{}", r.text());

    let real = dir.path().join("real");
    TableWriter::create(&real, CAPS).unwrap().publish(&snapshot(2)).unwrap();
    for what in ["a FIFO", "a symbolic link"] {
        // Made beside the table, then renamed over it.
        let tmp = dir.path().join("swap");
        match what {
            "a FIFO" => mkfifo(&tmp),
            _ => std::os::unix::fs::symlink(&real, &tmp).unwrap(),
        }
        std::fs::rename(&tmp, &table).unwrap();
        let reason = format!("table {} is {what}, not a regular file: refused", table.display());
        for attempt in ["first", "second"] {
            let r = prompt_get(&nginx, "/upstreamtop");
            assert_eq!(r.status, 503, "{what}, {attempt} request: {}", r.text());
            let body: Value = serde_json::from_slice(&r.body).expect("JSON");
            assert_eq!(body["error"], reason.as_str(), "{what}, {attempt} request");
            assert_eq!(body["probe"]["up"], false);
        }
        let m = prompt_get(&nginx, "/metrics");
        assert_eq!(m.status, 200);
        assert!(m.text().contains("upstreamtop_probe_up 0"), "{what}: {}", m.text());
        assert_eq!(prompt_get(&nginx, "/health").status, 200, "{what}: other locations serve");
        eprintln!("{what} at the table path: 503 {reason:?}");
    }

    // A real table again: served by the same worker.
    TableWriter::create(&table, CAPS).unwrap().publish(&snapshot(3)).unwrap();
    let r = prompt_get(&nginx, "/upstreamtop");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(nginx.worker_pids(), workers, "no worker died and was replaced");
    let log = nginx.error_log();
    assert!(!log.contains("exited on signal"), "{log}");
    assert!(nginx.error_log_problems().is_empty(), "{:?}", nginx.error_log_problems());
}
