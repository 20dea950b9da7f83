//! Test fixtures: a tiny std-only HTTP/1.1 server that counts what it served
//! (the ground truth), a client, and a probe harness over the real programs.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use upstreamtop_probe::aggregate::{AggLimits, Aggregator};
use upstreamtop_probe::bpf::{types, BpfConfig, Programs};
use upstreamtop_probe::peer_slots::PeerSlots;
use upstreamtop_probe::sweep::{sweep_and_read, SweepConfig};
use upstreamtop_table::{PeerStats, Snapshot};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!("SKIPPED: needs root (loads BPF programs and attaches them with tcx)");
            return;
        }
    };
}
pub(crate) use require_root;

/// What the server served: (method, path, status) -> count; status 0 for a
/// request answered by a reset.
pub type Served = Arc<Mutex<BTreeMap<(String, String, u16), u64>>>;

/// Serve on `listener` until the process ends.
pub fn serve(listener: TcpListener) -> Served {
    let served: Served = Arc::default();
    let s = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let s = s.clone();
            std::thread::spawn(move || {
                let _ = handle(stream, &s);
            });
        }
    });
    served
}

/// TCP payload bytes written per server address: (by clients, by the server).
static BYTES: Mutex<BTreeMap<SocketAddr, (u64, u64)>> = Mutex::new(BTreeMap::new());

pub fn bytes_written(server: SocketAddr) -> (u64, u64) {
    BYTES.lock().unwrap().get(&server).copied().unwrap_or_default()
}

fn put(w: &mut TcpStream, me: SocketAddr, b: &[u8]) -> std::io::Result<()> {
    w.write_all(b)?;
    BYTES.lock().unwrap().entry(me).or_default().1 += b.len() as u64;
    Ok(())
}

fn handle(stream: TcpStream, served: &Served) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let me = stream.local_addr()?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut content_length = 0usize;
        let mut expect_continue = false;
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            if h == "\r\n" || h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("expect: 100-continue") {
                expect_continue = true;
            }
        }
        if expect_continue {
            put(&mut w, me, b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let mut body = vec![0; content_length];
        r.read_exact(&mut body)?;
        let path = target.split('?').next().unwrap_or("").to_string();
        let record = |code: u16| {
            *served.lock().unwrap().entry((method.clone(), path.clone(), code)).or_default() += 1;
        };
        if path == "/reset" {
            record(0);
            // SO_LINGER 0: close() sends a RST.
            let l = libc::linger { l_onoff: 1, l_linger: 0 };
            use std::os::fd::AsRawFd;
            // SAFETY: setsockopt on our own socket with a valid linger struct.
            unsafe {
                libc::setsockopt(
                    w.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&l as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as u32,
                );
            }
            return Ok(());
        }
        if path == "/http10" {
            record(200);
            put(&mut w, me, b"HTTP/1.0 200 OK\r\n\r\nclose-delimited body")?;
            return Ok(());
        }
        if path == "/early" {
            record(200);
            put(
                &mut w,
                me,
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            )?;
            continue;
        }
        if path == "/status-body" {
            // A body that starts like a status line.
            record(200);
            let b = b"HTTP/1.1 500 Internal Server Error\r\n\r\n";
            put(&mut w, me, format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", b.len()).as_bytes())?;
            put(&mut w, me, b)?;
            continue;
        }
        let code: u16 =
            path.strip_prefix("/status/").and_then(|c| c.split('/').next()).and_then(|c| c.parse().ok()).unwrap_or(200);
        record(code);
        let reason = if code < 400 { "OK" } else { "Err" };
        put(&mut w, me, format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 1\r\n\r\nx").as_bytes())?;
    }
}

/// A keepalive client connection.
pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
    peer: SocketAddr,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { w: s.try_clone().unwrap(), r: BufReader::new(s), peer: addr }
    }

    /// Send `head` (and `body` as a separate segment when given) and read the
    /// response; returns the final status, or None when the peer hung up.
    pub fn exchange(&mut self, head: &[u8], body: Option<&[u8]>) -> Option<u16> {
        self.write(head)?;
        if let Some(b) = body {
            std::thread::sleep(Duration::from_millis(5));
            self.write(b)?;
        }
        self.read_response()
    }

    fn write(&mut self, b: &[u8]) -> Option<()> {
        self.w.write_all(b).ok()?;
        BYTES.lock().unwrap().entry(self.peer).or_default().0 += b.len() as u64;
        Some(())
    }

    pub fn get(&mut self, path: &str) -> Option<u16> {
        self.exchange(format!("GET {path} HTTP/1.1\r\nHost: b\r\n\r\n").as_bytes(), None)
    }

    fn read_response(&mut self) -> Option<u16> {
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
            let http10 = line.starts_with("HTTP/1.0");
            let mut len = None;
            loop {
                let mut h = String::new();
                self.r.read_line(&mut h).ok()?;
                if h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
            if code < 200 {
                continue;
            }
            match len {
                Some(n) => {
                    let mut b = vec![0; n];
                    self.r.read_exact(&mut b).ok()?;
                }
                None if http10 => {
                    let mut b = Vec::new();
                    let _ = self.r.read_to_end(&mut b);
                }
                None => {}
            }
            return Some(code);
        }
    }
}

/// The real programs, attached to `ifaces`, plus the userspace folding.
pub struct Harness {
    pub progs: Programs,
    pub agg: Rc<RefCell<Aggregator>>,
    ring: libbpf_rs::RingBuffer<'static>,
    slots: RefCell<PeerSlots>,
}

pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i != 0, "no interface {name}");
    i
}

impl Harness {
    pub fn new(ifaces: &[&str]) -> Harness {
        let cfg = BpfConfig {
            ignore_ports: vec![],
            only: vec![],
            max_conns: 4096,
            max_peers: 256,
            max_tcp_peers: 64,
            max_codes: 4096,
            max_banked: 1024,
            ring_bytes: 1 << 20,
        };
        let mut progs = Programs::load(&cfg, None).expect("load BPF programs");
        let (lo, hi) = upstreamtop_probe::ifaces::ephemeral_ports().expect("port range");
        progs.set_ephemeral_ports(lo, hi);
        for i in ifaces {
            progs.attach(i, ifindex(i)).expect("attach tcx");
        }
        let agg = Rc::new(RefCell::new(Aggregator::new(AggLimits {
            max_routes: 1000,
            history_len: 60,
            recent_per_interval: 20,
            recent_len: 100,
            max_tcp_peers: 256,
        })));
        let a = agg.clone();
        let ring =
            progs.ring_buffer(move |ev: &types::exchange_event| a.borrow_mut().on_event(ev)).expect("ring buffer");
        let slots = RefCell::new(PeerSlots::new(&progs, Duration::from_secs(600)).expect("peer slots"));
        Harness { progs, agg, ring, slots }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.ring.consume().expect("consume ring");
        let sweep = SweepConfig { idle_timeout_ns: 600_000_000_000 };
        let mut agg = self.agg.borrow_mut();
        let totals =
            sweep_and_read(&self.progs, &mut agg, &mut self.slots.borrow_mut(), sweep).expect("sweep and read");
        agg.end_interval(&totals, 1_000_000_000, vec![]).clone()
    }

    /// Snapshot once `done` holds for it (packets are processed
    /// asynchronously on some paths), or the last one after 10 s.
    pub fn snapshot_when(&self, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.snapshot();
            if done(&s) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn peer(s: &Snapshot, addr: SocketAddr) -> &PeerStats {
    s.peers.iter().find(|p| p.addr == addr).unwrap_or_else(|| panic!("peer {addr} missing: {s:#?}"))
}

/// Exchanges to `addr` covering the tricky cases; the server's own counts
/// are the ground truth.
pub fn run_traffic(addr: SocketAddr) -> u64 {
    let mut sent = 0;
    let mut c = Client::connect(addr);
    // Short requests, keepalive, exact codes and folded routes.
    for i in 0..10 {
        assert_eq!(c.get(&format!("/api/orders/{i}?x=1")), Some(200));
        sent += 1;
    }
    for code in [201u16, 204, 404, 404, 503, 302] {
        assert_eq!(c.get(&format!("/status/{code}")), Some(code));
        sent += 1;
    }
    // POST whose body (sent in its own segment) starts with "GET ".
    let body = b"GET /not-a-request HTTP/1.1\r\n\r\n";
    let head = format!("POST /items HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\n\r\n", body.len());
    assert_eq!(c.exchange(head.as_bytes(), Some(body)), Some(200));
    sent += 1;
    // 100-continue: the interim response must not end the exchange.
    let head =
        format!("PUT /upload/5 HTTP/1.1\r\nHost: b\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", body.len());
    assert_eq!(c.exchange(head.as_bytes(), Some(body)), Some(200));
    sent += 1;
    // 103 Early Hints and the final response in one segment.
    assert_eq!(c.get("/early"), Some(200));
    sent += 1;
    // A response body that starts like a status line.
    assert_eq!(c.get("/status-body"), Some(200));
    sent += 1;
    // Request line split across two segments.
    assert_eq!(c.exchange(b"GET /split/77", Some(b" HTTP/1.1\r\nHost: b\r\n\r\n")), Some(200));
    sent += 1;
    drop(c);
    // HTTP/1.0 close-delimited response.
    let mut c = Client::connect(addr);
    assert_eq!(c.exchange(b"GET /http10 HTTP/1.0\r\n\r\n", None), Some(200));
    sent += 1;
    drop(c);
    // The backend resets instead of answering.
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/reset"), None);
    sent += 1;
    drop(c);
    sent
}

/// Compare the probe's figures for `addr` with what the server served.
pub fn assert_matches(s: &Snapshot, addr: SocketAddr, served: &BTreeMap<(String, String, u16), u64>, sent: u64) {
    let p = peer(s, addr);
    let served_total: u64 = served.values().sum();
    assert_eq!(served_total, sent);
    assert_eq!(p.requests, sent, "requests");
    let mut codes: BTreeMap<u16, u64> = BTreeMap::new();
    for ((_, _, code), n) in served {
        if *code != 0 {
            *codes.entry(*code).or_default() += n;
        }
    }
    // The 100 Continue and 103 Early Hints interim responses are counted too.
    codes.insert(100, 1);
    codes.insert(103, 1);
    assert_eq!(p.responses.codes, codes.into_iter().collect::<Vec<_>>(), "exact codes");
    let no_resp: u64 = served.iter().filter(|((_, _, c), _)| *c == 0).map(|(_, n)| n).sum();
    assert_eq!(p.no_response, no_resp, "no_response");
    assert_eq!(p.conns.opened, 3, "connections opened");
    assert_eq!(p.conns.closed, 3, "connections closed");
    assert_eq!(p.conns.reset, 1, "connections reset");
    assert_eq!(p.conns.active, 0, "connections active");
    assert_eq!(p.latency.count, sent - no_resp, "latency samples");
    // Payload bytes on the wire, both ways, exactly.
    let (by_client, by_server) = bytes_written(addr);
    assert_eq!((p.sent_bytes, p.received_bytes), (by_client, by_server), "sent/received bytes");

    // Routes: served paths folded the same way.
    let pi = s.peers.iter().position(|q| q.addr == addr).unwrap() as u32;
    let mut want: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for ((m, path, code), n) in served {
        let folded = upstreamtop_probe::http::fold_path(path.as_bytes());
        let e = want.entry((m.clone(), folded)).or_default();
        e.0 += n;
        if *code == 0 {
            e.1 += n;
        }
    }
    let got: BTreeMap<(String, String), (u64, u64)> = s
        .routes
        .iter()
        .filter(|r| r.peer == pi && !r.is_other)
        .map(|r| ((r.method.clone(), r.path.clone()), (r.requests, r.no_response)))
        .collect();
    assert_eq!(got, want, "routes");
}

pub fn wait_for(h: &Harness, addr: SocketAddr, sent: u64) -> Snapshot {
    h.snapshot_when(|s| {
        s.peers
            .iter()
            .find(|p| p.addr == addr)
            .is_some_and(|p| p.requests >= sent && p.conns.closed >= 3 && p.latency.count + p.no_response >= sent)
    })
}
