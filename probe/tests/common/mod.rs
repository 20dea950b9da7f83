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
use upstreamtop_probe::sweep::{collect, SweepConfig};
use upstreamtop_table::Snapshot;

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

fn handle(stream: TcpStream, served: &Served) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
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
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let mut body = vec![0; content_length];
        r.read_exact(&mut body)?;
        let path = target.split('?').next().unwrap_or("").to_string();
        let mut record = |code: u16| {
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
            w.write_all(b"HTTP/1.0 200 OK\r\n\r\nclose-delimited body")?;
            return Ok(());
        }
        if path == "/early" {
            record(200);
            w.write_all(
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            )?;
            continue;
        }
        if path == "/status-body" {
            // A body that starts like a status line.
            record(200);
            let b = b"HTTP/1.1 500 Internal Server Error\r\n\r\n";
            w.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", b.len()).as_bytes())?;
            w.write_all(b)?;
            continue;
        }
        let code: u16 = path
            .strip_prefix("/status/")
            .and_then(|c| c.split('/').next())
            .and_then(|c| c.parse().ok())
            .unwrap_or(200);
        record(code);
        let reason = if code < 400 { "OK" } else { "Err" };
        w.write_all(format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 1\r\n\r\nx").as_bytes())?;
    }
}

/// A keepalive client connection.
pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { w: s.try_clone().unwrap(), r: BufReader::new(s) }
    }

    /// Send `head` (and `body` as a separate segment when given) and read the
    /// response; returns the final status, or None when the peer hung up.
    pub fn exchange(&mut self, head: &[u8], body: Option<&[u8]>) -> Option<u16> {
        self.w.write_all(head).ok()?;
        if let Some(b) = body {
            std::thread::sleep(Duration::from_millis(5));
            self.w.write_all(b).ok()?;
        }
        self.read_response()
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
            max_codes: 4096,
            ring_bytes: 1 << 20,
        };
        let mut progs = Programs::load(&cfg).expect("load BPF programs");
        for i in ifaces {
            progs.attach(i, ifindex(i)).expect("attach tcx");
        }
        let agg = Rc::new(RefCell::new(Aggregator::new(AggLimits {
            max_routes: 1000,
            history_len: 60,
            recent_per_interval: 20,
            recent_len: 100,
        })));
        let a = agg.clone();
        let ring = progs
            .ring_buffer(move |ev: &types::exchange_event| a.borrow_mut().on_event(ev))
            .expect("ring buffer");
        Harness { progs, agg, ring }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.ring.consume().expect("consume ring");
        let sweep = SweepConfig { syn_timeout_ns: 3_000_000_000, idle_timeout_ns: 600_000_000_000 };
        let mut agg = self.agg.borrow_mut();
        let totals = collect(&self.progs, &mut agg, sweep).expect("collect");
        agg.snapshot(&totals, 1_000_000_000, vec![])
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
