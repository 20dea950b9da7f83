//! The `upstreamtop-probe` binary itself: flags and errors (no root needed),
//! and as root a real run: systemd readiness, a published table whose
//! counts match what the test's server served, `dump`, clean SIGTERM.

mod common;

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_root, Client};
use upstreamtop_table::TableReader;

const BIN: &str = env!("CARGO_BIN_EXE_upstreamtop-probe");

struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn help_documents_every_flag() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--iface",
        "--table",
        "--interval",
        "--ignore-port",
        "--only",
        "--max-peers",
        "--max-routes",
        "--history",
        "dump",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

#[test]
fn bad_input_gets_clear_errors() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--iface", "nosuchif0", "--table", "/tmp/ut-never/table"]);
    assert!(e.contains("unknown interface \"nosuchif0\"") && e.contains("lo"), "{e}");
    let e = run(&["--interval", "soon"]);
    assert!(e.contains("invalid duration"), "{e}");
    let e = run(&["--only", "10.0.0.0/99"]);
    assert!(e.contains("invalid prefix length"), "{e}");
    let e = run(&["dump", "--table", "/nonexistent/upstreamtop/table"]);
    assert!(e.contains("/nonexistent/upstreamtop/table"), "{e}");
}

#[test]
fn unwritable_table_path_is_reported() {
    require_root!();
    let e = Command::new(BIN).args(["--iface", "lo", "--table", "/proc/upstreamtop/table"]).output().unwrap();
    assert!(!e.status.success());
    let e = String::from_utf8_lossy(&e.stderr);
    assert!(e.contains("cannot create the table at /proc/upstreamtop/table"), "{e}");
}

#[test]
fn daemon_publishes_exact_counts_and_detaches_on_sigterm() {
    require_root!();
    let dir = std::env::temp_dir().join(format!("ut-probe-daemon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let table = dir.join("run/table");
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(30))).unwrap();

    let child = Command::new(BIN)
        .args(["--iface", "lo", "--interval", "200ms", "--no-pin", "--table"])
        .arg(&table)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed if the test fails before its SIGTERM.
    let mut child = KillOnDrop(Some(child));
    let child_id = child.0.as_ref().unwrap().id();
    let mut buf = [0u8; 64];
    // A receive with SO_RCVTIMEO is never restarted after a signal (nor
    // after a stop and SIGCONT, signal(7)): it fails with EINTR. It failed
    // so once on a busy machine; retry then.
    let n = loop {
        match notify.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r.expect("READY=1 from the probe"),
        }
    };
    assert_eq!(&buf[..n], b"READY=1");
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&table), 0o644);
    assert_eq!(mode(table.parent().unwrap()), 0o755);

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let served = common::serve(l);
    let mut c = Client::connect(addr);
    for i in 0..7 {
        assert_eq!(c.get(&format!("/daemon/{i}")), Some(200));
    }
    assert_eq!(c.get("/status/502"), Some(502));
    drop(c);

    let mut reader = TableReader::new(&table);
    let deadline = Instant::now() + Duration::from_secs(10);
    let snap = loop {
        if let Ok(s) = reader.snapshot() {
            if s.peers.iter().any(|p| p.addr == addr && p.requests >= 8 && p.conns.closed >= 1) {
                break s;
            }
        }
        assert!(Instant::now() < deadline, "no publish with the traffic");
        std::thread::sleep(Duration::from_millis(100));
    };
    let p = snap.peers.iter().find(|p| p.addr == addr).unwrap();
    assert_eq!(served.lock().unwrap().values().sum::<u64>(), 8);
    assert_eq!(p.requests, 8);
    assert_eq!(p.responses.codes, vec![(200, 7), (502, 1)]);
    assert_eq!((p.conns.opened, p.conns.closed), (1, 1));
    assert_eq!(snap.meta.pid, child_id);
    assert_eq!(snap.meta.interfaces, vec!["lo".to_string()]);
    let pi = snap.peers.iter().position(|q| q.addr == addr).unwrap() as u32;
    let mut routes: Vec<(String, u64)> =
        snap.routes.iter().filter(|r| r.peer == pi).map(|r| (r.path.clone(), r.requests)).collect();
    routes.sort();
    assert_eq!(routes, vec![("/daemon/:id".to_string(), 7), ("/status/:id".to_string(), 1)]);

    // `dump` renders the same table as JSON.
    let out = Command::new(BIN).arg("dump").arg("--table").arg(&table).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json = String::from_utf8(out.stdout).unwrap();
    assert!(json.contains(&addr.to_string()), "{json}");

    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child_id as i32, libc::SIGTERM) };
    let mut child = child.0.take().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "probe exit: {status:?}");
    let mut err = String::new();
    use std::io::Read;
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("detaching"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
