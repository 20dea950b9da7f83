//! Issue 14 point 4, the churn case: thousands of short-lived non-HTTP
//! destinations, and HTTP backends in waves, against the real
//! `upstreamtop-probe` daemon with small bounds and a short `--peer-idle`.
//!
//! Everything runs in a network namespace of its own (the probe attached to
//! its `lo`, started with `ip netns exec`), so other tests' loopback traffic
//! never takes a slot of this probe, and `--no-pin` so it never meets other
//! probes' pins. Two listeners on 0.0.0.0 are reached at many 127/8
//! addresses: one answers TLS-like bytes (non-HTTP), the other HTTP with the
//! status the client asks for, counting per address it was reached at (the
//! accepted socket's local address) what it served: the ground truth.
//!
//! The waves are sized so that each fits `--max-peers` on its own but two
//! in a row do not: every wave after the first needs the slots of the one
//! before given back. `peer_table_full` must stay 0; after each wave's idle
//! time no backend may hold a slot and all must be banked (read from the
//! maps with bpftool, when it is there); every backend must show exactly
//! the requests, codes, connections and bytes it saw (a returning backend
//! continues from its banked totals); no non-HTTP destination may appear
//! with HTTP figures; the BPF maps stay within their sizes and the daemon's
//! memory grows by no more than its per-peer state.
//!
//! `UT_CHURN_PEER_IDLE=1h cargo test --release -p upstreamtop-probe --test
//! churn` runs the probe without give-back in time, and the test fails:
//! after wave 0's idle time 56 backends still hold their slots, or, with
//! no bpftool on PATH, wave 1 finds no slot for 30 requests
//! (`peer_table_full`). Checked when it was written.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::require_root;
use upstreamtop_report::Report;
use upstreamtop_table::{Snapshot, TableReader};

const BIN: &str = env!("CARGO_BIN_EXE_upstreamtop-probe");

/// Probe bounds.
const MAX_PEERS: usize = 100;
const MAX_TCP_PEERS: usize = 64;
const INTERVAL: Duration = Duration::from_millis(250);
const PEER_IDLE: &str = "2s";

/// HTTP waves: each brings NEW backends never seen before and RETURNING
/// ones from earlier waves. A wave (at most 80 backends) fits the 100
/// slots, two in a row never do (at least 112 distinct backends). 7 x 56 =
/// 392 distinct backends: the bank (4 x 100) holds them all once idle.
const WAVES: usize = 7;
const NEW: usize = 56;
const RETURNING: usize = 24;
const _: () = assert!(NEW + RETURNING <= MAX_PEERS && 2 * NEW > MAX_PEERS && WAVES * NEW <= 4 * MAX_PEERS);
/// Non-HTTP destinations: a first round before any HTTP, then a batch
/// alongside each wave and one during each wave's idle time.
const TCP_FIRST: usize = 2000;
const TCP_PER_BATCH: usize = 400;
const CLIENT_THREADS: usize = 6;

/// Status codes the HTTP clients ask for (no 1xx/204/304: bodiless).
const CODES: [u16; 9] = [200, 200, 201, 302, 404, 429, 500, 502, 503];

/// Non-HTTP destination `i`: 127.67.x.y; HTTP backend `i`: 127.66.x.y.
fn tcp_dest(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 67, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn http_backend(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 66, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A network namespace with `lo` up (all of 127/8 is local there); deleted
/// on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        // Namespaces of test processes that died without their Drop.
        for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("utchurn-") {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = Command::new("ip").args(["netns", "del", &name]).output();
                }
            }
        }
        let name = format!("utchurn-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    /// Run `f` on a thread inside the namespace (threads it spawns stay
    /// there, and sockets keep the namespace they were made in).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        let h = std::thread::spawn(move || {
            let f_ns = std::fs::File::open(&path).expect("open netns");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only, with a netns fd we opened.
            let rc = unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        });
        h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// The daemon, in the namespace; SIGKILL on drop (unpinned: its programs
/// go with it), its log printed when the test fails.
struct Probe {
    child: Child,
    dir: PathBuf,
    table: PathBuf,
    reader: TableReader,
    peer_idle: String,
}

impl Probe {
    fn start(ns: &Netns) -> Probe {
        let dir = std::env::temp_dir().join(format!("ut-churn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let table = dir.join("table");
        let log = std::fs::File::create(dir.join("probe.log")).unwrap();
        let peer_idle = std::env::var("UT_CHURN_PEER_IDLE").unwrap_or_else(|_| PEER_IDLE.to_string());
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.0, BIN, "--iface", "lo", "--no-pin"])
            .args(["--interval", &format!("{}ms", INTERVAL.as_millis())])
            .args(["--max-peers", &MAX_PEERS.to_string()])
            .args(["--max-tcp-peers", &MAX_TCP_PEERS.to_string()])
            .args(["--peer-idle", &peer_idle])
            .arg("--table")
            .arg(&table)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ip netns exec upstreamtop-probe");
        let reader = TableReader::new(&table);
        let mut p = Probe { child, dir, table, reader, peer_idle };
        p.wait_for(Duration::from_secs(30), |_| true);
        p
    }

    /// `ip netns exec` execs the probe: same pid.
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("probe.log")).unwrap_or_default()
    }

    fn snapshot(&mut self) -> Option<Snapshot> {
        self.reader.snapshot().ok()
    }

    /// The first publish for which `done` holds.
    fn wait_for(&mut self, timeout: Duration, mut done: impl FnMut(&Snapshot) -> bool) -> Snapshot {
        let deadline = Instant::now() + timeout;
        let mut last: Option<Snapshot> = None;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("probe exited with {status}:\n{}", self.log());
            }
            if let Some(s) = self.snapshot() {
                let seen = last.as_ref().map(|l| l.meta.publish_seq);
                if seen != Some(s.meta.publish_seq) {
                    if done(&s) {
                        return s;
                    }
                    last = Some(s);
                }
            }
            assert!(Instant::now() < deadline, "no such publish within {timeout:?}; last: {:?}", last.map(|l| l.meta));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until every HTTP backend that has no open connection since
    /// `quiet_since` has given its slot back: a publish that read their
    /// final counters (the second one after `quiet_since`, whose collect
    /// started after the first was stamped), then a publish whose
    /// collect started at least `--peer-idle` after that one's stamp.
    fn wait_slots_back(&mut self, quiet_since: u64, idle: Duration) {
        let t = Duration::from_secs(30);
        let first = self.wait_for(t, |s| s.meta.published_unix_ns > quiet_since).meta.published_unix_ns;
        let read = self.wait_for(t, |s| s.meta.published_unix_ns > first).meta.published_unix_ns;
        let due = read + idle.as_nanos() as u64;
        let before = self.wait_for(t + idle, |s| s.meta.published_unix_ns >= due).meta.published_unix_ns;
        self.wait_for(t, |s| s.meta.published_unix_ns > before);
    }

    fn dump(&self) -> Report {
        let out = Command::new(BIN).arg("dump").arg("--table").arg(&self.table).output().unwrap();
        assert!(out.status.success(), "dump: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("dump is a report")
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- probe log ----\n{}---- end of probe log ----", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// (kB) VmRSS, VmHWM, RssAnon, RssFile of `pid`.
#[derive(Debug, Clone, Copy)]
struct Mem {
    rss: u64,
    hwm: u64,
    anon: u64,
    file: u64,
}

fn mem(pid: u32) -> Mem {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("probe status");
    let kb = |key: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} missing from /proc/{pid}/status"))
    };
    Mem { rss: kb("VmRSS:"), hwm: kb("VmHWM:"), anon: kb("RssAnon:"), file: kb("RssFile:") }
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// A server answering TLS-like records: reads the client's 200-byte
/// "ClientHello", answers 300 bytes, closes after the client has. Counts
/// connections per address reached.
fn tls_server(l: TcpListener) -> Arc<Mutex<HashMap<Ipv4Addr, u64>>> {
    let seen: Arc<Mutex<HashMap<Ipv4Addr, u64>>> = Arc::default();
    let (tx, rx) = mpsc::channel::<TcpStream>();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..4 {
        let (rx, seen) = (rx.clone(), seen.clone());
        std::thread::spawn(move || loop {
            let Ok(mut s) = rx.lock().unwrap().recv() else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut hello = [0u8; 200];
            if s.read_exact(&mut hello).is_err() {
                continue;
            }
            if let Ok(SocketAddr::V4(a)) = s.local_addr() {
                *seen.lock().unwrap().entry(*a.ip()).or_default() += 1;
            }
            let _ = s.write_all(&tls_record(0x02, 300));
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        });
    }
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            if tx.send(s).is_err() {
                return;
            }
        }
    });
    seen
}

/// A TLS handshake record of `len` bytes in all (type 0x16, TLS 1.2).
fn tls_record(handshake_type: u8, len: usize) -> Vec<u8> {
    let mut b = vec![0x16, 0x03, 0x03];
    b.extend_from_slice(&((len - 5) as u16).to_be_bytes());
    b.push(handshake_type);
    b.resize(len, 0xab);
    b
}

/// Connections to the non-HTTP destinations `range` on `port`, from
/// CLIENT_THREADS threads: each sends a TLS-like record, reads the answer
/// and closes.
fn tcp_churn(range: std::ops::Range<usize>, port: u16) {
    let next = Arc::new(AtomicU64::new(range.start as u64));
    let end = range.end as u64;
    let threads: Vec<_> = (0..CLIENT_THREADS)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return;
                }
                let addr = SocketAddr::from((tcp_dest(i as usize), port));
                let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(&tls_record(0x01, 200)).unwrap();
                let mut answer = [0u8; 300];
                s.read_exact(&mut answer).unwrap_or_else(|e| panic!("{addr}: {e}"));
                assert_eq!(answer[0], 0x16);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    }
}

/// What one HTTP backend address saw: the ground truth for its row.
#[derive(Debug, Default, Clone)]
struct Backend {
    /// Statuses served (by the server).
    codes: BTreeMap<u16, u64>,
    /// Connections opened to it (by the clients).
    conns: u64,
    /// Payload bytes written by the clients and by the server.
    sent: u64,
    received: u64,
}

/// Per address an HTTP backend was reached at.
type Truth = Arc<Mutex<BTreeMap<Ipv4Addr, Backend>>>;

/// An HTTP/1.1 keepalive server: `GET /c/<code>/...` is answered with that
/// status. Counts per address reached (the accepted socket's local
/// address) what it served.
fn http_server(l: TcpListener, truth: Truth) {
    std::thread::spawn(move || {
        for stream in l.incoming().flatten() {
            let truth = truth.clone();
            std::thread::spawn(move || {
                let Ok(SocketAddr::V4(me)) = stream.local_addr() else { return };
                let _ = stream.set_nodelay(true);
                let mut w = stream.try_clone().unwrap();
                let mut r = BufReader::new(stream);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    let code: u16 = line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|t| t.strip_prefix("/c/"))
                        .and_then(|t| t.split('/').next())
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(200);
                    let resp = format!("HTTP/1.1 {code} X\r\nContent-Length: 2\r\n\r\nok");
                    {
                        let mut t = truth.lock().unwrap();
                        let b = t.entry(*me.ip()).or_default();
                        *b.codes.entry(code).or_default() += 1;
                        b.received += resp.len() as u64;
                    }
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// One visit of backend `b` (its `visit`-th): 1 to 4 requests over one or
/// two keepalive connections, statuses varying with backend, visit and
/// request. Returns how many requests it made.
fn visit(b: usize, visit: usize, port: u16, truth: &Truth) -> u64 {
    let ip = http_backend(b);
    let addr = SocketAddr::from((ip, port));
    let requests = 1 + (b * 7 + visit) % 4;
    let conns = if requests > 1 { 1 + (b + visit) % 2 } else { 1 };
    let mut j = 0;
    for c in 0..conns {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        truth.lock().unwrap().entry(ip).or_default().conns += 1;
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        // The requests split over the connections, at least one on each
        // (a connection without one would be other TCP to the backend).
        let on_this = if c + 1 == conns { requests - j } else { requests / 2 };
        for _ in 0..on_this {
            let code = CODES[(b * 3 + visit * 5 + j * 7) % CODES.len()];
            j += 1;
            let req = format!("GET /c/{code}/{b}?v={visit} HTTP/1.1\r\nHost: churn\r\n\r\n");
            w.write_all(req.as_bytes()).unwrap();
            truth.lock().unwrap().entry(ip).or_default().sent += req.len() as u64;
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let status: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
            assert_eq!(status, code, "{addr}");
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
        }
    }
    assert_eq!(j, requests);
    requests as u64
}

/// Visit `backends` (backend, visit number) from CLIENT_THREADS threads;
/// every connection is closed when this returns.
fn http_wave(backends: &[(usize, usize)], port: u16, truth: &Truth) -> u64 {
    let work = Arc::new(Mutex::new(backends.to_vec()));
    let threads: Vec<_> = (0..CLIENT_THREADS)
        .map(|_| {
            let (work, truth) = (work.clone(), truth.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                loop {
                    let Some((b, v)) = work.lock().unwrap().pop() else { return n };
                    n += visit(b, v, port, &truth);
                }
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).sum()
}

/// xorshift64*: the returning backends of each wave, reproducibly.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

fn parse_duration(s: &str) -> Duration {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().expect("a whole number");
    match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(60 * n),
        "h" => Duration::from_secs(3600 * n),
        _ => panic!("unit of {s:?}"),
    }
}

/// The sum of every HTTP peer's requests in a snapshot.
fn requests_in(s: &Snapshot) -> u64 {
    s.peers.iter().map(|p| p.requests).sum()
}

/// The probe's BPF maps by name: (max entries, entries now). The ids come
/// from its map fds' fdinfo (bpftool here cannot tell a map's process),
/// names and contents from bpftool. Empty when bpftool is missing.
fn bpf_maps(pid: u32) -> BTreeMap<String, (u64, usize)> {
    let mut ids = BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).into_iter().flatten().flatten() {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        if let Some(id) = info.lines().find_map(|l| l.strip_prefix("map_id:")) {
            ids.insert(id.trim().parse::<u64>().unwrap());
        }
    }
    let mut out = BTreeMap::new();
    let json = |args: &[&str]| -> Option<serde_json::Value> {
        let o = Command::new("bpftool").arg("-j").args(args).output().ok()?;
        serde_json::from_slice(&o.stdout).ok()
    };
    let Some(serde_json::Value::Array(maps)) = json(&["map", "show"]) else { return out };
    for m in maps {
        let (Some(id), Some(name), Some(max)) = (m["id"].as_u64(), m["name"].as_str(), m["max_entries"].as_u64())
        else {
            continue;
        };
        if !ids.contains(&id) || !["tcp_peers", "peer_ids", "banked", "banked_codes", "codes", "conns"].contains(&name)
        {
            continue;
        }
        let id = id.to_string();
        if let Some(serde_json::Value::Array(entries)) = json(&["map", "dump", "id", &id]) {
            out.insert(name.to_string(), (max, entries.len()));
        }
    }
    out
}

/// How many peers the daemon holds: the table's rows, plus those its
/// last "table full" log line says did not fit (the rows only grow here:
/// non-HTTP peers leave after 10 minutes, banked backends never).
fn peers_held(probe: &Probe, s: &Snapshot, capacity: usize) -> usize {
    if s.peers.len() < capacity {
        return s.peers.len();
    }
    let log = probe.log();
    let line = log.lines().rev().find(|l| l.contains("table full")).unwrap_or("");
    let truncated = line
        .split("peers_truncated: ")
        .nth(1)
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    s.peers.len() + truncated
}

#[test]
fn churn_of_non_http_destinations_and_http_backends_in_waves() {
    require_root!();
    let started = Instant::now();
    let ns = Netns::new();
    let truth: Truth = Arc::default();
    let t = truth.clone();
    let (tls_port, http_port, tls_seen) = ns.run(move || {
        let tls = TcpListener::bind("0.0.0.0:0").unwrap();
        let http = TcpListener::bind("0.0.0.0:0").unwrap();
        let (tp, hp) = (tls.local_addr().unwrap().port(), http.local_addr().unwrap().port());
        http_server(http, t);
        (tp, hp, tls_server(tls))
    });
    let mut probe = Probe::start(&ns);
    let pid = probe.pid();
    // Table rows: backends with a slot or banked, then other TCP.
    let capacity = 5 * MAX_PEERS + MAX_TCP_PEERS;
    eprintln!(
        "probe pid {pid}: --max-peers {MAX_PEERS} --max-tcp-peers {MAX_TCP_PEERS} --peer-idle {} --interval {INTERVAL:?}; \
         non-HTTP on :{tls_port}, HTTP on :{http_port}",
        probe.peer_idle
    );
    let m0 = mem(pid);

    // 1. The first round: non-HTTP destinations only.
    let mut tcp_next = 0;
    ns.run(move || tcp_churn(0..TCP_FIRST, tls_port));
    tcp_next += TCP_FIRST;
    // A few publishes for the daemon to settle on what it holds.
    let seq = probe.snapshot().unwrap().meta.publish_seq;
    let s1 = probe.wait_for(Duration::from_secs(10), |s| s.meta.publish_seq >= seq + 4);
    assert!(s1.peers.iter().all(|p| p.addr.port() == tls_port && p.requests == 0), "{:?}", s1.peers);
    let held1 = peers_held(&probe, &s1, capacity);
    let m1 = mem(pid);
    let maps1 = bpf_maps(pid);
    eprintln!(
        "after {TCP_FIRST} non-HTTP destinations: {} rows, VmRSS {:.2} MiB (anon {:.2}, file {:.2}), VmHWM {:.2} MiB \
         (VmRSS {:.2} at the first publish); BPF maps (max, entries): {maps1:?}",
        s1.peers.len(),
        mib(m1.rss),
        mib(m1.anon),
        mib(m1.file),
        mib(m1.hwm),
        mib(m0.rss)
    );

    // 2. HTTP backends in waves, non-HTTP churn alongside and in between.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut visits: BTreeMap<usize, usize> = BTreeMap::new();
    let mut client_requests = 0u64;
    let mut most_tcp_rows = 0usize;
    for w in 0..WAVES {
        let mut wave: BTreeSet<usize> = (w * NEW..(w + 1) * NEW).collect();
        if w > 0 {
            while wave.len() < NEW + RETURNING {
                wave.insert(rng.below(w * NEW));
            }
        }
        let backends: Vec<(usize, usize)> = wave
            .iter()
            .map(|&b| {
                let v = visits.entry(b).or_default();
                *v += 1;
                (b, *v)
            })
            .collect();
        let churn = tcp_next..tcp_next + TCP_PER_BATCH;
        tcp_next += TCP_PER_BATCH;
        let wave_started = Instant::now();
        let t = truth.clone();
        let n = ns.run(move || {
            let c = std::thread::spawn(move || tcp_churn(churn, tls_port));
            let n = http_wave(&backends, http_port, &t);
            c.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            n
        });
        client_requests += n;
        let quiet_since = unix_ns();
        let wave_took = wave_started.elapsed();
        // Every request of the wave counted, none without a slot.
        let want: u64 = truth.lock().unwrap().values().flat_map(|b| b.codes.values()).sum();
        assert_eq!(want, client_requests);
        let s =
            probe.wait_for(Duration::from_secs(10), |s| requests_in(s) >= want || s.meta.counters.peer_table_full > 0);
        let tcp_rows = s.peers.iter().filter(|p| p.addr.port() == tls_port).count();
        most_tcp_rows = most_tcp_rows.max(tcp_rows);
        eprintln!(
            "wave {w}: {} backends ({} returning), {n} requests in {wave_took:.2?}; table: {} requests, \
             peer_table_full {}, {} rows ({tcp_rows} non-HTTP); VmRSS {:.2} MiB",
            wave.len(),
            wave.iter().filter(|&&b| b < w * NEW).count(),
            requests_in(&s),
            s.meta.counters.peer_table_full,
            s.peers.len(),
            mib(mem(pid).rss)
        );
        assert_eq!(
            s.meta.counters.peer_table_full, 0,
            "wave {w}: requests found no peer slot (--peer-idle {}): the slots of the wave before were not given back",
            probe.peer_idle
        );
        assert_eq!(requests_in(&s), want, "wave {w}: requests in the table");
        // The wave goes idle (its connections are closed) while more
        // non-HTTP destinations come and go.
        let churn = tcp_next..tcp_next + TCP_PER_BATCH;
        tcp_next += TCP_PER_BATCH;
        ns.run(move || tcp_churn(churn, tls_port));
        probe.wait_slots_back(quiet_since, parse_duration(PEER_IDLE));
        // Straight from the maps: every backend gave its slot back and is
        // banked.
        let maps = bpf_maps(pid);
        if let (Some((_, listed)), Some((_, banked))) = (maps.get("peer_ids"), maps.get("banked")) {
            assert_eq!(
                (*listed, *banked),
                (0, visits.len()),
                "after wave {w}'s idle time: (backends holding a slot, banked backends)"
            );
        }
    }

    // 3. The table (as `dump` renders it) against what the servers counted.
    let s = probe.wait_for(Duration::from_secs(10), |_| true);
    let report = probe.dump();
    let held2 = peers_held(&probe, &s, capacity);
    let m2 = mem(pid);
    let maps2 = bpf_maps(pid);
    let truth = truth.lock().unwrap().clone();
    let drops = &report.probe.drops;
    assert_eq!(drops.get("peer_table_full"), Some(&0), "drops: {drops:?}");
    let peers = &report.unlisted.peers;
    let mut got = BTreeMap::new();
    let mut tcp_rows = 0;
    for p in peers {
        let addr: SocketAddrV4 = p.server.parse().unwrap_or_else(|_| panic!("peer {}", p.server));
        let conns = &p.connections;
        if addr.port() == tls_port {
            // One connection to each, closed: shown (if at all) with that
            // and nothing of HTTP.
            tcp_rows += 1;
            assert_eq!(addr.ip().octets()[1], 67, "{addr}");
            assert_eq!(
                (p.requests, p.responses.total, p.responses.codes.len(), p.no_response),
                (0, 0, 0, 0),
                "non-HTTP destination {addr} shown with HTTP figures"
            );
            assert_eq!((conns.opened, conns.closed, conns.failed, conns.reset), (1, 1, 0, 0), "{addr}");
            continue;
        }
        assert_eq!(addr.port(), http_port, "a peer nobody talked to HTTP: {}", p.server);
        let codes: BTreeMap<u16, u64> = p.responses.codes.iter().map(|(c, n)| (c.parse().unwrap(), *n)).collect();
        let row = Backend { codes, conns: conns.opened, sent: p.sent, received: p.received };
        assert_eq!((p.requests, p.no_response, p.responses.codes_other), (p.responses.total, 0, 0), "{addr}");
        assert_eq!((conns.closed, conns.failed, conns.reset, p.active), (conns.opened, 0, 0, 0), "{addr}");
        got.insert(*addr.ip(), row);
    }
    let total: u64 = truth.values().flat_map(|b| b.codes.values()).sum();
    let missing: Vec<_> = truth.keys().filter(|a| !got.contains_key(a)).collect();
    assert!(missing.is_empty(), "{} of {} backends missing from the table: {missing:?}", missing.len(), truth.len());
    for (a, want) in &truth {
        let row = &got[a];
        assert_eq!(row.codes, want.codes, "backend {a}: exact codes (probe, served)");
        assert_eq!(
            (row.conns, row.sent, row.received),
            (want.conns, want.sent, want.received),
            "backend {a}: connections, bytes sent and received (probe, clients and server)"
        );
    }
    assert_eq!(got.len(), truth.len(), "HTTP backends in the table");
    assert_eq!(truth.len(), WAVES * NEW);
    assert_eq!(report.totals.requests, total, "total requests");
    let tls_total: u64 = tls_seen.lock().unwrap().values().sum();
    assert_eq!(tls_total as usize, tcp_next, "non-HTTP connections served");
    // HTTP first: other TCP never takes a backend's row.
    assert!(s.peers.len() <= capacity && got.len() + tcp_rows == s.peers.len());

    // 4. Bounded memory. The BPF maps are sized at load and never exceed
    // their --max-* sizes.
    if maps2.is_empty() {
        eprintln!("bpftool cannot list the probe's maps: their sizes not checked");
    }
    for maps in [&maps1, &maps2] {
        for (name, (max, n)) in maps {
            assert!(*n as u64 <= *max, "map {name}: {n} entries of {max}");
        }
        if let Some((max, _)) = maps.get("tcp_peers") {
            assert_eq!(*max, MAX_TCP_PEERS as u64, "tcp_peers sized by --max-tcp-peers");
        }
        if let Some((max, _)) = maps.get("peer_ids") {
            assert_eq!(*max, MAX_PEERS as u64, "peer_ids sized by --max-peers");
        }
    }
    // The daemon's own memory is per peer it holds: the published row
    // (a dense latency histogram of 218 x 8 bytes, a history of up to 60
    // x 16 bytes), its state behind it (the same history again, sparse
    // histograms, routes) and, for backends, the bank: about 4-6 KiB as
    // measured. So: at most 8 KiB per peer held beyond those of the first
    // round plus 2 MiB, whatever the number of connections, requests and
    // slots given back; VmRSS also by the pages of the table file (mapped,
    // of fixed size) that the extra rows touch.
    let table_kb = std::fs::metadata(&probe.table).unwrap().len() / 1024;
    let more = held2.saturating_sub(held1) as u64;
    let anon_bound = 8 * more + 2048;
    let (anon_grew, rss_grew, hwm_grew) =
        (m2.anon.saturating_sub(m1.anon), m2.rss.saturating_sub(m1.rss), m2.hwm.saturating_sub(m1.hwm));
    let http_held = got.len();
    eprintln!(
        "end: {} HTTP backends ({} came back at least once), {total} requests; {tcp_next} non-HTTP destinations \
         ({tcp_rows} rows in the table, at most {most_tcp_rows} after a wave; the table has {} rows of {capacity}); \
         the daemon holds {held2} peers ({http_held} HTTP, {} non-HTTP; {held1} after the first round)\n\
         VmRSS {:.2} MiB (anon {:.2}, file {:.2}), VmHWM {:.2} MiB: since the first round VmRSS +{:.2} MiB, \
         anon +{:.2} MiB ({:.1} KiB per peer held beyond; bound {:.2} MiB), VmHWM +{:.2} MiB; table file {:.2} MiB\n\
         BPF maps (max, entries): {maps2:?}; {:.1?} in all",
        truth.len(),
        visits.values().filter(|&&v| v > 1).count(),
        s.peers.len(),
        held2 - http_held,
        mib(m2.rss),
        mib(m2.anon),
        mib(m2.file),
        mib(m2.hwm),
        mib(rss_grew),
        mib(anon_grew),
        anon_grew as f64 / more.max(1) as f64,
        mib(anon_bound),
        mib(hwm_grew),
        mib(table_kb),
        started.elapsed()
    );
    assert!(http_held <= 5 * MAX_PEERS);
    // Other TCP is bounded by --max-tcp-peers, however many destinations
    // came and went.
    assert!(
        most_tcp_rows <= MAX_TCP_PEERS && held2 - http_held <= MAX_TCP_PEERS,
        "non-HTTP peers: {most_tcp_rows} rows after a wave, {} held; --max-tcp-peers {MAX_TCP_PEERS}",
        held2 - http_held
    );
    assert!(anon_grew <= anon_bound, "anon memory grew by {anon_grew} KiB, more than {anon_bound} KiB");
    assert!(rss_grew <= anon_bound + table_kb, "VmRSS grew by {rss_grew} KiB");
    assert!(hwm_grew <= anon_bound + table_kb, "VmHWM grew by {hwm_grew} KiB");
}
