//! Test backends: small HTTP/1.1 servers (a thread per connection) with a
//! configurable behaviour, that count every answer they give per
//! (method, path, status). Those counts are the ground truth the end-to-end
//! tests compare the probe's table against.
//!
//! Behaviour comes from a [`Profile`] (latency range, error rate, status
//! mix, body size, keepalive), optionally overridden per path prefix, and
//! per request by headers a test can send through nginx:
//! `X-Backend-Status: 418` forces the status, `X-Backend-Delay-Ms: 50` the
//! latency, `X-Backend-Interim: 103` sends an interim response first.
//!
//! More per-request knobs, for tests that need message shapes rather than
//! statistics (all optional; without them a backend answers as before):
//! `X-Backend-Interim: 100,103` sends several interim responses in turn,
//! `X-Backend-Interim-Links: 3000` puts about that many bytes of `Link:`
//! headers into each `103 Early Hints`, `X-Backend-Body-Size: 70000`
//! overrides the profile's body size, `X-Backend-Chunked: 1000` frames the
//! body chunked in chunks of that size, and `X-Backend-Split-At: 5` writes
//! the final response's first 5 bytes and the rest in two writes (so the
//! status line straddles two TCP segments).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::rng::Rng;

/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(100);
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How a backend answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Uniform latency range before the response head is written.
    pub latency: (Duration, Duration),
    /// Fraction of requests answered with one of `error_statuses`.
    pub error_rate: f64,
    pub error_statuses: Vec<u16>,
    /// Weighted statuses for the other requests.
    pub statuses: Vec<(u16, u32)>,
    pub body_size: usize,
    /// `false`: answer with `Connection: close` and close after each response.
    pub keepalive: bool,
    /// Response bodies repeat this pattern; `None`: a fixed line of text.
    pub body_fill: Option<Vec<u8>>,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            latency: (Duration::ZERO, Duration::ZERO),
            error_rate: 0.0,
            error_statuses: vec![500, 502, 503],
            statuses: vec![(200, 1)],
            body_size: 16,
            keepalive: true,
            body_fill: None,
        }
    }
}

impl Profile {
    /// 200, no delay, 16-byte body, keepalive.
    pub fn fast() -> Self {
        Self::default()
    }

    pub fn latency_ms(mut self, min: u64, max: u64) -> Self {
        self.latency = (Duration::from_millis(min), Duration::from_millis(max.max(min)));
        self
    }

    pub fn error_rate(mut self, rate: f64) -> Self {
        self.error_rate = rate.clamp(0.0, 1.0);
        self
    }

    pub fn error_statuses(mut self, statuses: &[u16]) -> Self {
        self.error_statuses = statuses.to_vec();
        self
    }

    pub fn statuses(mut self, mix: &[(u16, u32)]) -> Self {
        self.statuses = mix.to_vec();
        self
    }

    pub fn body_size(mut self, bytes: usize) -> Self {
        self.body_size = bytes;
        self
    }

    pub fn keepalive(mut self, on: bool) -> Self {
        self.keepalive = on;
        self
    }

    /// Bodies repeat `pattern` (e.g. text that looks like HTTP messages, to
    /// check that bodies are never parsed as messages). Empty: the default.
    pub fn body_fill(mut self, pattern: &[u8]) -> Self {
        self.body_fill = (!pattern.is_empty()).then(|| pattern.to_vec());
        self
    }

    fn pick_status(&self, rng: &mut Rng) -> u16 {
        if self.error_rate > 0.0 && !self.error_statuses.is_empty() && rng.unit() < self.error_rate {
            let i = rng.range(0, self.error_statuses.len() as u64 - 1) as usize;
            return self.error_statuses[i];
        }
        let total: u64 = self.statuses.iter().map(|&(_, w)| u64::from(w)).sum();
        if total == 0 {
            return 200;
        }
        let mut pick = rng.range(0, total - 1);
        for &(status, weight) in &self.statuses {
            if pick < u64::from(weight) {
                return status;
            }
            pick -= u64::from(weight);
        }
        200
    }

    fn pick_latency(&self, rng: &mut Rng) -> Duration {
        let (lo, hi) = self.latency;
        Duration::from_micros(rng.range(lo.as_micros() as u64, hi.as_micros() as u64))
    }
}

/// One ground-truth key: what the backend answered to what.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Served {
    pub method: String,
    /// The request target without its query string.
    pub path: String,
    pub status: u16,
}

/// Configure a backend before starting it.
#[derive(Debug, Clone, Default)]
pub struct BackendBuilder {
    profile: Profile,
    routes: Vec<(String, Profile)>,
}

impl BackendBuilder {
    /// Requests whose path starts with `prefix` use `profile` (longest
    /// prefix wins).
    pub fn route(mut self, prefix: &str, profile: Profile) -> Self {
        self.routes.push((prefix.to_owned(), profile));
        self.routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        self
    }

    /// Bind `addr` (port 0 picks one) in the calling thread's network
    /// namespace and start serving.
    pub fn start(self, addr: SocketAddr) -> Result<Backend> {
        let listener = TcpListener::bind(addr).with_context(|| format!("backend bind {addr}"))?;
        let addr = listener.local_addr().context("backend local_addr")?;
        let shared = Arc::new(Shared {
            builder: self,
            stop: AtomicBool::new(false),
            served: Mutex::new(BTreeMap::new()),
            interims: Mutex::new(BTreeMap::new()),
            connections: AtomicU64::new(0),
            live: AtomicU64::new(0),
            answering: AtomicU64::new(0),
            max_answering: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name(format!("backend {addr}"))
            .spawn(move || accept_loop(listener, accept_shared))
            .context("spawn backend accept thread")?;
        Ok(Backend { addr, shared, accept: Some(accept) })
    }
}

struct Shared {
    builder: BackendBuilder,
    stop: AtomicBool,
    served: Mutex<BTreeMap<Served, u64>>,
    /// Interim (1xx) responses sent, per status.
    interims: Mutex<BTreeMap<u16, u64>>,
    connections: AtomicU64,
    /// Connection threads still running.
    live: AtomicU64,
    /// Requests read whose response is not written yet, and the most
    /// there ever were at once.
    answering: AtomicU64,
    max_answering: AtomicU64,
    /// Bytes read from / written to every connection (a ground truth for
    /// what crossed the wire, independent of nginx's log).
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

/// A running backend. Dropping it stops it.
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn builder(profile: Profile) -> BackendBuilder {
        BackendBuilder { profile, routes: Vec::new() }
    }

    /// Start a backend with one profile on `addr`.
    pub fn start(addr: SocketAddr, profile: Profile) -> Result<Backend> {
        Self::builder(profile).start(addr)
    }

    /// A fast backend on 127.0.0.1 with a free port.
    pub fn loopback(profile: Profile) -> Result<Backend> {
        Self::start(SocketAddr::from(([127, 0, 0, 1], 0)), profile)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything answered so far, per (method, path, status).
    pub fn served(&self) -> BTreeMap<Served, u64> {
        self.shared.served.lock().expect("served lock").clone()
    }

    /// Answers per status.
    pub fn by_status(&self) -> BTreeMap<u16, u64> {
        let mut out = BTreeMap::new();
        for (key, n) in self.served() {
            *out.entry(key.status).or_insert(0) += n;
        }
        out
    }

    /// Answers per (method, path).
    pub fn by_route(&self) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        for (key, n) in self.served() {
            *out.entry((key.method, key.path)).or_insert(0) += n;
        }
        out
    }

    /// Interim (1xx) responses sent before final ones, per status. They are
    /// not in [`Backend::served`]: they do not end an exchange.
    pub fn interims(&self) -> BTreeMap<u16, u64> {
        self.shared.interims.lock().expect("interims lock").clone()
    }

    /// All answers.
    pub fn total(&self) -> u64 {
        self.served().values().sum()
    }

    /// TCP connections accepted so far.
    /// Bytes read from clients so far: request heads and bodies. A request
    /// is read whole before its response is written, so once every response
    /// arrived this is exactly what the clients sent.
    pub fn bytes_read(&self) -> u64 {
        self.shared.bytes_read.load(Ordering::Relaxed)
    }

    /// Bytes written to clients so far: interim and final responses.
    pub fn bytes_written(&self) -> u64 {
        self.shared.bytes_written.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// The most requests this backend was answering at once (read, response
    /// not yet written): what a client-side concurrency limit let through.
    pub fn max_concurrent(&self) -> u64 {
        self.shared.max_answering.load(Ordering::Relaxed)
    }

    /// Stop accepting, close every connection, wait (briefly) for them.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let deadline = Instant::now() + POLL * 5;
        while self.shared.live.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    while !shared.stop.load(Ordering::Relaxed) {
        // Poll with a timeout so a stop request is seen promptly; accept()
        // alone would block (and a wake-up connect cannot reach a listener
        // inside another network namespace).
        // SAFETY: pfd points to one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, POLL.as_millis() as i32) };
        if ready <= 0 {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        shared.live.fetch_add(1, Ordering::Relaxed);
        let conn_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new().name("backend conn".into()).spawn(move || {
            let _ = serve_connection(stream, &conn_shared);
            conn_shared.live.fetch_sub(1, Ordering::Relaxed);
        });
        if spawned.is_err() {
            shared.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A parsed request head.
struct Head {
    method: String,
    target: String,
    http10: bool,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A connection's stream, counting what crosses it into `Shared`.
struct Counted<'a> {
    stream: TcpStream,
    shared: &'a Shared,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stream.read(buf)?;
        self.shared.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.stream.write(buf)?;
        self.shared.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

type Reader<'a> = BufReader<Counted<'a>>;

fn serve_connection(stream: TcpStream, shared: &Shared) -> Result<()> {
    stream.set_read_timeout(Some(POLL))?;
    stream.set_nodelay(true)?;
    let mut writer = Counted { stream: stream.try_clone()?, shared };
    let mut reader = BufReader::new(Counted { stream, shared });
    let mut rng = Rng::fresh();
    loop {
        let Some(head) = read_head(&mut reader, shared)? else {
            return Ok(()); // peer closed between requests, or stop
        };
        read_body(&mut reader, &head, shared)?;
        let _answering = Answering::enter(shared);
        let path = head.target.split('?').next().unwrap_or_default().to_owned();
        let profile = shared
            .builder
            .routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, p)| p)
            .unwrap_or(&shared.builder.profile);
        let status = head
            .header("x-backend-status")
            .and_then(|v| v.trim().parse::<u16>().ok())
            .filter(|s| (200..=599).contains(s))
            .unwrap_or_else(|| profile.pick_status(&mut rng));
        let delay = head
            .header("x-backend-delay-ms")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or_else(|| profile.pick_latency(&mut rng));
        let client_close = head.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || (head.http10 && !head.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("keep-alive")));
        let close = client_close || !profile.keepalive;

        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let links = head.header("x-backend-interim-links").and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(0);
        let interims = head.header("x-backend-interim").unwrap_or_default();
        for interim in interims.split(',').filter_map(|v| v.trim().parse::<u16>().ok()) {
            if (100..200).contains(&interim) && interim != 101 {
                writer.write_all(&interim_response(interim, links))?;
                *shared.interims.lock().expect("interims lock").entry(interim).or_insert(0) += 1;
            }
        }
        let body_size = head
            .header("x-backend-body-size")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(profile.body_size);
        let chunk = head.header("x-backend-chunked").and_then(|v| v.trim().parse::<usize>().ok()).filter(|&n| n > 0);
        let fill = profile.body_fill.as_deref().unwrap_or(FILL);
        let split_at = head.header("x-backend-split-at").and_then(|v| v.trim().parse::<usize>().ok());
        // Count before writing: once the client holds the response, the
        // count must already be visible to the test.
        *shared
            .served
            .lock()
            .expect("served lock")
            .entry(Served { method: head.method.clone(), path, status })
            .or_insert(0) += 1;
        let wire = render_response(status, body_size, close, head.method == "HEAD", chunk, fill);
        match split_at.filter(|&n| n > 0 && n < wire.len()) {
            Some(n) => {
                writer.write_all(&wire[..n])?;
                writer.write_all(&wire[n..])?;
            }
            None => writer.write_all(&wire)?,
        }
        if close {
            return Ok(());
        }
    }
}

/// One request being answered, from its body read to its response written.
struct Answering<'a>(&'a Shared);

impl<'a> Answering<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.answering.fetch_add(1, Ordering::Relaxed) + 1;
        shared.max_answering.fetch_max(now, Ordering::Relaxed);
        Answering(shared)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Read one request head; `None` when the peer closed cleanly before one
/// began or the backend is stopping.
fn read_head(reader: &mut Reader<'_>, shared: &Shared) -> Result<Option<Head>> {
    let mut lines: Vec<String> = Vec::new();
    let mut size = 0;
    loop {
        let mut line = Vec::new();
        if !read_line(reader, &mut line, shared)? {
            if lines.is_empty() && line.is_empty() {
                return Ok(None);
            }
            return Err(anyhow!("connection closed inside a request head"));
        }
        size += line.len();
        if size > MAX_HEAD_BYTES {
            return Err(anyhow!("request head over {MAX_HEAD_BYTES} bytes"));
        }
        let text = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_owned();
        if text.is_empty() {
            if lines.is_empty() {
                continue; // stray CRLF between requests
            }
            break;
        }
        lines.push(text);
    }
    let mut parts = lines[0].split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(anyhow!("bad request line {:?}", lines[0]));
    };
    let headers = lines[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Some(Head { method: method.to_owned(), target: target.to_owned(), http10: version == "HTTP/1.0", headers }))
}

/// Read through `\n`, riding out read timeouts (used to notice a stop).
/// `false` at EOF or on stop.
fn read_line(reader: &mut Reader<'_>, line: &mut Vec<u8>, shared: &Shared) -> Result<bool> {
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match reader.read_until(b'\n', line) {
            Ok(0) => return Ok(false),
            Ok(_) if line.ends_with(b"\n") => return Ok(true),
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                continue
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn read_body(reader: &mut Reader<'_>, head: &Head, shared: &Shared) -> Result<()> {
    let chunked = head.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let mut line = Vec::new();
            if !read_line(reader, &mut line, shared)? {
                return Err(anyhow!("closed inside a chunked body"));
            }
            let text = String::from_utf8_lossy(&line);
            let size = usize::from_str_radix(text.trim().split(';').next().unwrap_or_default(), 16)
                .with_context(|| format!("bad chunk size {text:?}"))?;
            if size == 0 {
                loop {
                    let mut trailer = Vec::new();
                    if !read_line(reader, &mut trailer, shared)? || trailer == b"\r\n" || trailer == b"\n" {
                        return Ok(());
                    }
                }
            }
            discard(reader, size as u64 + 2, shared)?;
        }
    }
    let len = head
        .header("content-length")
        .map(|v| v.trim().parse::<u64>())
        .transpose()
        .context("bad Content-Length")?
        .unwrap_or(0);
    discard(reader, len, shared)
}

fn discard(reader: &mut Reader<'_>, mut len: u64, shared: &Shared) -> Result<()> {
    let mut buf = [0u8; 8192];
    while len > 0 {
        if shared.stop.load(Ordering::Relaxed) {
            return Err(anyhow!("stopping"));
        }
        let want = buf.len().min(len as usize);
        match reader.read(&mut buf[..want]) {
            Ok(0) => return Err(anyhow!("closed inside a request body")),
            Ok(n) => len -= n as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The default body text, repeated.
const FILL: &[u8] = b"upstreamtop test body\n";

#[cfg(test)]
fn response(status: u16, body_size: usize, close: bool, head_request: bool) -> Vec<u8> {
    render_response(status, body_size, close, head_request, None, FILL)
}

/// A final response: `Content-Length` framing, or chunks of `chunk` bytes;
/// the body repeats `fill`. 204 and 304 have no body; for HEAD the head is
/// that of the GET.
fn render_response(
    status: u16,
    body_size: usize,
    close: bool,
    head_request: bool,
    chunk: Option<usize>,
    fill: &[u8],
) -> Vec<u8> {
    let bodyless = status == 204 || status == 304;
    let body_size = if bodyless { 0 } else { body_size };
    let mut out = format!("HTTP/1.1 {status} {}\r\nServer: nginx-tests-backend\r\n", reason(status));
    if !bodyless {
        match chunk {
            Some(_) => out.push_str("Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"),
            None => out.push_str(&format!("Content-Type: text/plain\r\nContent-Length: {body_size}\r\n")),
        }
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if head_request || bodyless {
        return out;
    }
    let body: Vec<u8> = fill.iter().copied().cycle().take(body_size).collect();
    match chunk {
        Some(size) => {
            for piece in body.chunks(size) {
                out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        None => out.extend_from_slice(&body),
    }
    out
}

/// An interim response; a `103` carries `Link:` headers of about
/// `link_bytes` bytes in all (what a page's preload hints look like).
fn interim_response(status: u16, link_bytes: usize) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    if status == 103 {
        let start = out.len();
        let mut i = 0;
        while out.len() - start < link_bytes {
            out.push_str(&format!("Link: </static/asset-{i:04}.css>; rel=preload; as=style\r\n"));
            i += 1;
        }
    }
    out.push_str("\r\n");
    out.into_bytes()
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        418 => "I'm a teapot",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mix_follows_weights_and_error_rate() {
        let mut rng = Rng::seeded(1);
        let profile = Profile::fast().statuses(&[(200, 3), (404, 1)]).error_rate(0.25).error_statuses(&[503]);
        let mut counts = BTreeMap::new();
        for _ in 0..40_000 {
            *counts.entry(profile.pick_status(&mut rng)).or_insert(0u32) += 1;
        }
        assert_eq!(counts.keys().copied().collect::<Vec<_>>(), vec![200, 404, 503]);
        // 0.75*0.75 = 0.5625, 0.75*0.25 = 0.1875, 0.25: loose bounds, it is random.
        assert!((20_000..25_000).contains(&counts[&200]), "{counts:?}");
        assert!((6_000..9_000).contains(&counts[&404]), "{counts:?}");
        assert!((8_500..11_500).contains(&counts[&503]), "{counts:?}");
    }

    #[test]
    fn bodyless_statuses_have_no_body() {
        let r = String::from_utf8(response(204, 100, false, false)).unwrap();
        assert!(r.ends_with("\r\n\r\n") && !r.contains("Content-Length"), "{r}");
        let r = String::from_utf8(response(200, 5, true, false)).unwrap();
        assert!(r.contains("Content-Length: 5\r\nConnection: close\r\n\r\nupstr"), "{r}");
    }

    #[test]
    fn counts_the_bytes_of_both_directions() {
        let backend = Backend::loopback(Profile::fast().body_size(10)).unwrap();
        let mut conn = TcpStream::connect(backend.addr()).unwrap();
        let request = b"POST /x HTTP/1.1\r\nHost: h\r\nX-Backend-Interim: 100\r\nContent-Length: 3\r\n\r\nabc";
        conn.write_all(request).unwrap();
        let want = [&b"HTTP/1.1 100 Continue\r\n\r\n"[..], &response(200, 10, false, false)].concat();
        let mut got = vec![0u8; want.len()];
        conn.read_exact(&mut got).unwrap();
        assert_eq!(got, want);
        // The backend counts a write once it returned: the client may have
        // read the bytes a moment before.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while backend.bytes_written() < want.len() as u64 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!((backend.bytes_read(), backend.bytes_written()), (request.len() as u64, want.len() as u64));
        assert_eq!(backend.interims(), BTreeMap::from([(100, 1)]));
    }

    #[test]
    fn chunked_bodies_and_early_hints() {
        let r = String::from_utf8(render_response(200, 5, false, false, Some(2), b"abc")).unwrap();
        assert!(r.contains("Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n2\r\nca\r\n1\r\nb\r\n0\r\n\r\n"), "{r}");
        let r = String::from_utf8(render_response(200, 5, false, true, Some(2), b"abc")).unwrap();
        assert!(r.ends_with("chunked\r\n\r\n"), "HEAD: head only: {r}");
        let r = String::from_utf8(render_response(304, 5, false, false, Some(2), b"abc")).unwrap();
        assert!(!r.contains("chunked") && r.ends_with("\r\n\r\n"), "{r}");
        let hints = interim_response(103, 1000);
        assert!(hints.len() > 1000 && hints.ends_with(b"style\r\n\r\n"), "{}", hints.len());
        assert_eq!(interim_response(100, 1000), b"HTTP/1.1 100 Continue\r\n\r\n");
    }
}
