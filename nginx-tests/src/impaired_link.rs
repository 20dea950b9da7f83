//! Exact on real networks (issue 14): one run of the whole pipe over an
//! impaired link, shared by `tests/impaired_link.rs` (a fixed seed and a
//! size that keeps CI short) and the bench's part 7 (longer, a random
//! seed). Backends sit in a namespace behind an AF_PACKET bridge that
//! loses, duplicates and reorders TCP frames both ways, with a small MSS so
//! heads span many segments (see [`crate::impair`]). Real vendored nginx
//! with the module, the real probe on the host end of the link, real
//! clients.
//!
//! The probe's figures per backend — in its table and in the module's JSON
//! — are compared with the ground truth:
//! - `requests` and every exact status code: what the backend itself served
//!   (interim 1xx included for the peer that sends them);
//! - `sent` / `received`: the sum of nginx's `$upstream_bytes_sent` /
//!   `$upstream_bytes_received` over its access log lines for that backend
//!   (or, for the peer a client talks to directly, the bytes that client
//!   wrote and read);
//! - `no_response`: attempts nginx's log shows failed (none expected).
//!
//! Traffic mixes GET/HEAD/POST; 200, 204, 304, 404, 500, 503; bodies up to
//! 100 KB with Content-Length or chunked; request and response bodies full
//! of text shaped like HTTP messages; status lines split between two
//! writes; request lines longer than a segment. nginx 1.28 takes an
//! upstream's interim response for the final one (1xx support arrived in
//! 1.29), so interim `100 Continue` / `103 Early Hints` (with KBs of `Link:`
//! headers) go to a backend a counting client talks to directly over the
//! same link: the probe sees the wire, whoever the client is.
//!
//! [`run`] fails (an error, not a figure) when the ground truth itself does
//! not hold together: a request unanswered or answered with another status
//! than planned, nginx's log disagreeing with a backend. What the probe got
//! is in the returned [`Outcome`], for the caller to judge. Needs root.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use upstreamtop_table::Snapshot;

use crate::backend::{Backend, Profile};
use crate::http;
use crate::impair::{BridgeStats, ImpairConfig, ImpairedNetns, Impairment, TcpCounters};
use crate::load::{self, Headers, LoadSpec, Route};
use crate::nginx::{Nginx, NginxConf};
use crate::probe::Probe;
use crate::upstream_log::{self, LOG_FORMAT};

/// The test's seed.
pub const SEED: u64 = 14;
/// The smallest MSS Linux accepts: 76 payload bytes per segment with
/// timestamps, so every head spans several segments.
pub const MSS: u16 = 88;
/// Requests through nginx in the test (half with minimal, half with
/// browser headers).
pub const NGINX_REQUESTS: u64 = 1_200;
/// Requests of each direct client (interim responses) in the test.
pub const DIRECT_REQUESTS: usize = 100;
/// Upper bound on the wait for the probe to account for ended traffic.
const SETTLE: Duration = Duration::from_secs(20);
/// The probe is taken as settled when its figures stayed the same this long.
const STABLE: Duration = Duration::from_secs(3);
/// Body text that looks like HTTP messages, 127 bytes (prime, so over a
/// stream of bodies each shape starts at every offset within a segment).
pub const SHAPES: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n\
I am a body. POST /api HTTP/1.0\r\nHTTP/1.1 503 Service Unavailable\r\n\r\n..";

/// The test's impairment, both ways.
pub fn impairment() -> Impairment {
    Impairment::NONE.loss(0.01).duplicate(0.03).reorder(0.05, Duration::from_millis(4))
}

/// What one run does.
#[derive(Debug, Clone, Copy)]
pub struct RunSpec {
    /// Seeds the traffic plan and the bridge's decisions.
    pub seed: u64,
    pub mss: u16,
    /// Applied in both directions.
    pub impairment: Impairment,
    /// Requests through nginx, a multiple of 4 (two groups; minimal, then
    /// browser headers).
    pub nginx_requests: u64,
    /// Requests of each of the two direct clients.
    pub direct_requests: usize,
}

impl RunSpec {
    /// The test's run: [`SEED`], [`MSS`], [`impairment`],
    /// [`NGINX_REQUESTS`], [`DIRECT_REQUESTS`].
    pub fn test() -> Self {
        RunSpec {
            seed: SEED,
            mss: MSS,
            impairment: impairment(),
            nginx_requests: NGINX_REQUESTS,
            direct_requests: DIRECT_REQUESTS,
        }
    }
}

/// A small splitmix64: the traffic plan must be the same on every run.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi]`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.next() as usize % items.len()]
    }
}

/// `len` bytes of [`SHAPES`] starting at `offset` into its cycle.
pub fn shaped(offset: usize, len: usize) -> Vec<u8> {
    SHAPES.iter().copied().cycle().skip(offset % SHAPES.len()).take(len).collect()
}

/// One planned exchange.
#[derive(Debug, Clone)]
struct Plan {
    method: &'static str,
    status: u16,
    /// The request target after the group prefix.
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A random exchange: method, status, body sizes and framing, status-line
/// split, long query strings.
fn plan(mix: &mut Mix, i: usize) -> Plan {
    let method = *mix.pick(&["GET", "GET", "GET", "HEAD", "POST", "POST"]);
    let status = *mix.pick(&[200, 200, 200, 200, 204, 304, 404, 500, 503]);
    // Mostly small bodies, one in five large (up to 100 KB).
    let body_size = if mix.chance(20) { mix.range(4_096, 100_000) } else { mix.range(0, 4_096) };
    let mut headers = vec![
        ("X-Backend-Status".to_owned(), status.to_string()),
        ("X-Backend-Body-Size".to_owned(), body_size.to_string()),
    ];
    if mix.chance(40) {
        // Chunk sizes from 1 byte (a chunk line per byte) to 8 KB.
        let chunk = *mix.pick(&[1, 7, 100, 1_000, 8_000]);
        headers.push(("X-Backend-Chunked".to_owned(), chunk.to_string()));
    }
    if mix.chance(30) {
        // Inside "HTTP/1.1 200 OK": the status line itself split.
        headers.push(("X-Backend-Split-At".to_owned(), mix.range(1, 14).to_string()));
    }
    let mut target = format!("/r/{i}");
    if mix.chance(25) {
        // A request line longer than a segment.
        let _ = write!(target, "?q={}", "x".repeat(mix.range(80, 300) as usize));
    }
    let body = if method == "POST" {
        let len = if mix.chance(20) { mix.range(4_096, 30_000) } else { mix.range(0, 2_000) };
        shaped(mix.range(0, 126) as usize, len as usize)
    } else {
        Vec::new()
    };
    Plan { method, status, target, headers, body }
}

/// The figures compared, for one backend.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Figures {
    pub requests: u64,
    /// Exact codes, ascending.
    pub codes: BTreeMap<u16, u64>,
    pub no_response: u64,
    pub sent: u64,
    pub received: u64,
}

/// One of the compared figures.
#[derive(Debug, Clone, Copy)]
enum Row {
    Requests,
    Code(u16),
    NoResponse,
    Sent,
    Received,
}

impl Row {
    fn label(self) -> String {
        match self {
            Row::Requests => "requests".into(),
            Row::Code(code) => format!("code {code}"),
            Row::NoResponse => "no_response".into(),
            Row::Sent => "sent".into(),
            Row::Received => "received".into(),
        }
    }

    fn of(self, f: &Figures) -> u64 {
        match self {
            Row::Requests => f.requests,
            Row::Code(code) => f.codes.get(&code).copied().unwrap_or(0),
            Row::NoResponse => f.no_response,
            Row::Sent => f.sent,
            Row::Received => f.received,
        }
    }

    /// Every figure, with the codes any of `figures` holds.
    fn all(figures: &[Option<&Figures>]) -> Vec<Row> {
        let mut codes: Vec<u16> = figures.iter().flatten().flat_map(|f| f.codes.keys().copied()).collect();
        codes.sort_unstable();
        codes.dedup();
        let mut rows = vec![Row::Requests];
        rows.extend(codes.into_iter().map(Row::Code));
        rows.extend([Row::NoResponse, Row::Sent, Row::Received]);
        rows
    }
}

/// A reader that counts the bytes it hands out.
struct Counted<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A keepalive HTTP/1.1 client that counts every byte it writes and reads,
/// reads interim responses, and checks each final status.
struct DirectClient {
    writer: TcpStream,
    reader: BufReader<Counted<TcpStream>>,
    sent: u64,
    interims: BTreeMap<u16, u64>,
}

impl DirectClient {
    fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).context("connect")?;
        stream.set_read_timeout(Some(Duration::from_secs(20))).context("read timeout")?;
        stream.set_nodelay(true).context("nodelay")?;
        let reader = BufReader::new(Counted { inner: stream.try_clone().context("clone")?, bytes: 0 });
        Ok(DirectClient { writer: stream, reader, sent: 0, interims: BTreeMap::new() })
    }

    /// Bytes read so far; exact between exchanges, as nothing is pipelined.
    fn received(&self) -> u64 {
        self.reader.get_ref().bytes - self.reader.buffer().len() as u64
    }

    /// One exchange; returns the final status.
    fn exchange(&mut self, plan: &Plan, addr: SocketAddr) -> Result<u16> {
        let mut wire = format!("{} {} HTTP/1.1\r\nHost: {addr}\r\n", plan.method, plan.target);
        for (name, value) in &plan.headers {
            let _ = write!(wire, "{name}: {value}\r\n");
        }
        if plan.method == "POST" {
            let _ = write!(wire, "Content-Length: {}\r\n", plan.body.len());
        }
        wire.push_str("\r\n");
        let mut wire = wire.into_bytes();
        wire.extend_from_slice(&plan.body);
        self.writer.write_all(&wire).context("write request")?;
        self.sent += wire.len() as u64;
        loop {
            let (status, headers) = self.read_head()?;
            if (100..200).contains(&status) {
                *self.interims.entry(status).or_insert(0) += 1;
                continue;
            }
            let header =
                |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
            if plan.method == "HEAD" || status == 204 || status == 304 {
                return Ok(status);
            }
            if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
                self.read_chunked()?;
            } else {
                let len: u64 = header("content-length").context("no Content-Length")?.parse()?;
                std::io::copy(&mut (&mut self.reader).take(len), &mut std::io::sink()).context("read body")?;
            }
            return Ok(status);
        }
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).context("read line")? == 0 {
            bail!("connection closed");
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn read_head(&mut self) -> Result<(u16, Vec<(String, String)>)> {
        let status_line = self.line()?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let line = self.line()?;
            if line.is_empty() {
                return Ok((status, headers));
            }
            let (name, value) = line.split_once(':').ok_or_else(|| anyhow!("bad header {line:?}"))?;
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }

    fn read_chunked(&mut self) -> Result<()> {
        loop {
            let size = u64::from_str_radix(&self.line()?, 16).context("chunk size")?;
            if size == 0 {
                while !self.line()?.is_empty() {}
                return Ok(());
            }
            std::io::copy(&mut (&mut self.reader).take(size + 2), &mut std::io::sink()).context("read chunk")?;
        }
    }
}

/// The interim responses a direct peer sends before each final one: two
/// peers, so a diff tells which shape the probe missed.
#[derive(Debug, Clone, Copy)]
pub enum Interims {
    /// `100 Continue` (a bare status line).
    Continue,
    /// `103 Early Hints` with 1-4 KB of `Link:` headers (many segments),
    /// once or twice, sometimes after a `100`.
    EarlyHints,
}

/// What a direct client counted itself.
#[derive(Debug, Clone, Default)]
struct DirectResult {
    sent: u64,
    received: u64,
    interims: BTreeMap<u16, u64>,
}

/// A direct client's traffic: `requests` planned exchanges on one
/// keepalive connection, each with interim responses of the given kind.
fn direct_traffic(addr: SocketAddr, seed: u64, kind: Interims, requests: usize) -> Result<DirectResult> {
    let mut mix = Mix(seed);
    let mut client = DirectClient::connect(addr)?;
    for i in 0..requests {
        let mut plan = plan(&mut mix, i);
        let interim = match kind {
            Interims::Continue => "100",
            Interims::EarlyHints => *mix.pick(&["103", "103,103", "100,103"]),
        };
        let links = mix.range(1_000, 4_000).to_string();
        plan.headers.push(("X-Backend-Interim".to_owned(), interim.to_owned()));
        plan.headers.push(("X-Backend-Interim-Links".to_owned(), links));
        let status = client
            .exchange(&plan, addr)
            .with_context(|| format!("direct exchange {i}: {} {}", plan.method, plan.target))?;
        if status != plan.status {
            bail!("direct exchange {i}: status {status}, planned {}", plan.status);
        }
    }
    Ok(DirectResult { sent: client.sent, received: client.received(), interims: client.interims })
}

/// The ground truth for a direct peer: what its backend served (interim
/// responses are codes too, not requests), the bytes its client counted.
fn direct_figures(backend: &Backend, result: &DirectResult, requests: usize) -> Result<Figures> {
    ensure!(backend.total() == requests as u64, "{}: served {}, expected {requests}", backend.addr(), backend.total());
    ensure!(
        backend.interims() == result.interims,
        "{}: the client read every interim response: backend {:?}, client {:?}",
        backend.addr(),
        backend.interims(),
        result.interims
    );
    ensure!(
        (result.sent, result.received) == (backend.bytes_read(), backend.bytes_written()),
        "{}: bytes the client counted {:?} vs what the backend read and wrote {:?}",
        backend.addr(),
        (result.sent, result.received),
        (backend.bytes_read(), backend.bytes_written())
    );
    let mut codes = backend.by_status();
    for (code, n) in backend.interims() {
        *codes.entry(code).or_insert(0) += n;
    }
    Ok(Figures { requests: backend.total(), codes, no_response: 0, sent: result.sent, received: result.received })
}

/// The probe's figures for `addr`, from its table.
pub fn from_table(snap: &Snapshot, addr: SocketAddr) -> Option<Figures> {
    let peer = snap.peers.iter().find(|p| p.addr == addr)?;
    Some(Figures {
        requests: peer.requests,
        codes: peer.responses.codes.iter().copied().collect(),
        no_response: peer.no_response,
        sent: peer.sent_bytes,
        received: peer.received_bytes,
    })
}

/// The same figures from the module's JSON (`upstreams.<group>.peers[]` or
/// `unlisted.peers[]`).
pub fn from_json(doc: &serde_json::Value, addr: SocketAddr) -> Option<Figures> {
    let server = addr.to_string();
    let groups = doc["upstreams"].as_object().into_iter().flat_map(|g| g.values());
    let peer = groups
        .chain(std::iter::once(&doc["unlisted"]))
        .filter_map(|g| g["peers"].as_array())
        .flatten()
        .find(|p| p["server"] == server.as_str())?;
    let codes = peer["responses"]["codes"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.parse().ok()?, v.as_u64()?))).collect())
        .unwrap_or_default();
    Some(Figures {
        requests: peer["requests"].as_u64()?,
        codes,
        no_response: peer["no_response"].as_u64().unwrap_or(0),
        sent: peer["sent"].as_u64()?,
        received: peer["received"].as_u64()?,
    })
}

/// One backend's ground truth beside what the probe's table and the
/// module's JSON say.
#[derive(Debug, Clone)]
pub struct PeerCheck {
    /// `group addr`, or `direct client addr (kind)`.
    pub name: String,
    pub addr: SocketAddr,
    pub want: Figures,
    pub table: Option<Figures>,
    pub json: Option<Figures>,
    /// A peer behind nginx, whose figures must be equal; `false` for the
    /// direct interim peers (known limit, README "On lossy links": interim
    /// responses whose segments are reordered with the final status
    /// line's can lose that final status).
    pub asserted: bool,
}

impl PeerCheck {
    /// Table and JSON both equal the ground truth.
    pub fn equal(&self) -> bool {
        self.table.as_ref() == Some(&self.want) && self.json.as_ref() == Some(&self.want)
    }

    /// Each figure: its label, the expected value, the table's and the
    /// JSON's (`None`: the peer is missing there).
    fn rows(&self) -> Vec<(String, u64, Option<u64>, Option<u64>)> {
        let (table, json) = (self.table.as_ref(), self.json.as_ref());
        Row::all(&[Some(&self.want), table, json])
            .into_iter()
            .map(|r| (r.label(), r.of(&self.want), table.map(|f| r.of(f)), json.map(|f| r.of(f))))
            .collect()
    }

    /// The figures (`requests`, `code N`, …) where the table or the JSON
    /// differs from the ground truth (a missing peer: every figure), as
    /// `name: expected E, table T, json J`.
    pub fn mismatches(&self) -> Vec<String> {
        self.rows()
            .into_iter()
            .filter(|(_, w, t, j)| *t != Some(*w) || *j != Some(*w))
            .map(|(label, w, t, j)| format!("{label}: expected {w}, table {}, json {}", show(t), show(j)))
            .collect()
    }

    /// One line per figure: expected, table, JSON, marked where they differ.
    pub fn diff(&self) -> String {
        let mut out = format!(
            "  {}{}\n    {:<14} {:>12} {:>12} {:>12}\n",
            self.name,
            if self.asserted { "" } else { " (not asserted: known limit)" },
            "figure",
            "expected",
            "table",
            "json"
        );
        for (label, w, t, j) in self.rows() {
            let same = t == Some(w) && j == Some(w);
            let _ = writeln!(
                out,
                "    {label:<14} {w:>12} {:>12} {:>12}{}",
                show(t),
                show(j),
                if same { "" } else { "   <-- differs" }
            );
        }
        out
    }
}

fn show(v: Option<u64>) -> String {
    v.map_or("missing".to_owned(), |v| v.to_string())
}

/// What a run measured. Whoever calls [`run`] judges it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The four backends behind nginx (asserted), then the two direct
    /// interim peers (not asserted).
    pub peers: Vec<PeerCheck>,
    /// What the bridge did, both ways, over the whole run.
    pub stats: BridgeStats,
    /// The backend namespace's TCP counters over the traffic.
    pub tcp: TcpCounters,
    pub traffic_time: Duration,
    /// Problems in nginx's error log.
    pub error_log_problems: Vec<String>,
    /// A readable account: traffic, bridge and TCP figures, the probe's own
    /// counters, the per-backend diff.
    pub report: String,
}

impl Outcome {
    /// Every asserted backend equal in table and JSON.
    pub fn exact(&self) -> bool {
        self.peers.iter().filter(|p| p.asserted).all(PeerCheck::equal)
    }
}

/// Poll publishes until the table equals `want` for every peer, or its
/// figures stopped changing for [`STABLE`], or [`SETTLE`] passed.
fn settle(probe: &mut Probe, want: &[(SocketAddr, Figures)]) -> Result<Snapshot> {
    let deadline = Instant::now() + SETTLE;
    let mut last: Option<(Vec<Option<Figures>>, Instant)> = None;
    loop {
        let snap = probe.wait_publish().context("probe publishes")?;
        let now: Vec<Option<Figures>> = want.iter().map(|(a, _)| from_table(&snap, *a)).collect();
        if want.iter().zip(&now).all(|((_, w), got)| got.as_ref() == Some(w)) {
            return Ok(snap);
        }
        let stable_since = match &last {
            Some((prev, since)) if *prev == now => *since,
            _ => Instant::now(),
        };
        if stable_since.elapsed() >= STABLE || Instant::now() > deadline {
            return Ok(snap);
        }
        last = Some((now, stable_since));
    }
}

/// Frames the bridge dropped, duplicated and reordered in both directions;
/// no frame larger than one segment of `mss` (offloads really off).
pub fn check_impaired(stats: &BridgeStats, mss: u16) -> Result<()> {
    for (dir, s) in [("to backend", stats.to_backend), ("to host", stats.to_host)] {
        ensure!(s.dropped > 0 && s.duplicated > 0 && s.reordered > 0, "{dir}: the link impaired nothing: {s:?}");
        let largest = 14 + 40 + 20 + u64::from(mss);
        ensure!(
            s.largest_frame <= largest,
            "{dir}: a {} byte frame (> {largest}): offloads on? {s:?}",
            s.largest_frame
        );
        ensure!(s.send_errors == 0, "{dir}: send errors: {s:?}");
    }
    Ok(())
}

fn nginx_routes(group: &str, mix: &mut Mix, count: usize) -> (Vec<Route>, Vec<Plan>) {
    let plans: Vec<Plan> = (0..count).map(|i| plan(mix, i)).collect();
    let routes = plans
        .iter()
        .map(|p| {
            let target = format!("/p/{group}{}", p.target);
            let mut route = match p.method {
                "POST" => Route::post(&target, 1, &p.body),
                m => Route { method: m.to_owned(), ..Route::get(&target, 1) },
            };
            for (name, value) in &p.headers {
                route = route.header(name, value);
            }
            route
        })
        .collect();
    (routes, plans)
}

/// One run: the impaired topology, backends, the probe on the host end,
/// nginx (2 workers) proxying to two IPv4 and two IPv6 backends, and two
/// direct clients with interim responses beside nginx's load; then the
/// ground truth (backends, nginx's log, the direct clients' counts) against
/// the probe's table and the module's JSON once the probe settled.
pub fn run(spec: &RunSpec) -> Result<Outcome> {
    ensure!(
        spec.nginx_requests > 0 && spec.nginx_requests.is_multiple_of(4),
        "nginx_requests must be a positive multiple of 4, not {}",
        spec.nginx_requests
    );
    let started = Instant::now();
    let (seed, mss) = (spec.seed, spec.mss);
    let ns = ImpairedNetns::create(ImpairConfig::both(seed, spec.impairment).mss(mss)).context("impaired namespace")?;
    let profile = Profile::fast().body_fill(SHAPES);
    let start = |ip: std::net::IpAddr| ns.backend(ip, 0, Backend::builder(profile.clone()));
    let app = [start(ns.ns_v4().into())?, start(ns.ns_v4().into())?];
    let app6 = [start(ns.ns_v6().into())?, start(ns.ns_v6().into())?];
    let direct = [start(ns.ns_v4().into())?, start(ns.ns_v4().into())?];

    let mut probe = Probe::start(&["--iface", ns.host_if(), "--interval", "250ms"])?;
    let conf = NginxConf::vendored_with_module()?
        .workers(2)
        .table(probe.table_path())
        .upstream_servers("app", &[app[0].addr(), app[1].addr()])
        .upstream_servers("app6", &[app6[0].addr(), app6[1].addr()])
        .extra_http(LOG_FORMAT)
        // Request bodies stay in memory (no "buffered to a temporary file"
        // warnings drowning the error log).
        .extra_http("client_body_buffer_size 64k;")
        .extra_server("access_log logs/upstreams.log upstreams;");
    let nginx = Nginx::start(conf)?;

    let mut mix = Mix(seed);
    let half = spec.nginx_requests as usize / 4;
    let (mut routes, mut plans) = nginx_routes("app", &mut mix, half);
    let (routes6, plans6) = nginx_routes("app6", &mut mix, half);
    routes.extend(routes6);
    plans.extend(plans6);

    // The direct clients run beside nginx's load, on the same link.
    let tcp_before = ns.ns_tcp_counters()?;
    let traffic_started = Instant::now();
    let kinds = [Interims::Continue, Interims::EarlyHints];
    let (direct_results, loads) = std::thread::scope(|scope| -> Result<_> {
        let threads: Vec<_> = direct
            .iter()
            .zip(kinds)
            .enumerate()
            .map(|(i, (backend, kind))| {
                let addr = backend.addr();
                let requests = spec.direct_requests;
                scope.spawn(move || direct_traffic(addr, seed + 1 + i as u64, kind, requests))
            })
            .collect();
        let mut loads = Vec::new();
        for headers in [Headers::Minimal, Headers::Realistic] {
            let load_spec = LoadSpec::new(nginx.addr(), routes.clone())
                .requests(spec.nginx_requests / 2)
                .concurrency(6)
                .headers(headers);
            loads.push(load::run(&load_spec));
        }
        let mut results = Vec::new();
        for t in threads {
            results.push(t.join().map_err(|_| anyhow!("direct client thread panicked"))??);
        }
        let loads = loads.into_iter().collect::<Result<Vec<_>>>()?;
        Ok((results, loads))
    })?;
    let traffic_time = traffic_started.elapsed();
    let tcp = ns.ns_tcp_counters()?.since(&tcp_before);

    // The traffic was what was planned: every request answered, with the
    // status its route forced.
    let planned: BTreeMap<String, u16> = routes.iter().zip(&plans).map(|(r, p)| (r.target.clone(), p.status)).collect();
    for got in &loads {
        ensure!(got.errors == 0, "load errors: {:?}", got.error_samples);
        ensure!(
            got.responses() == spec.nginx_requests / 2,
            "{} responses of {}",
            got.responses(),
            spec.nginx_requests / 2
        );
        for (_, target, status) in got.by_route.keys() {
            ensure!(
                Some(status) == planned.get(target),
                "{target}: status {status}, planned {:?}",
                planned.get(target)
            );
        }
    }
    let served: u64 = app.iter().chain(&app6).map(Backend::total).sum();
    ensure!(
        served == spec.nginx_requests,
        "nginx proxied every request once: backends served {served} of {}",
        spec.nginx_requests
    );

    // Ground truth per backend.
    let log = upstream_log::read(&nginx.prefix().join("logs/upstreams.log"), spec.nginx_requests as usize)?;
    let mut want: Vec<(String, SocketAddr, Figures)> = Vec::new();
    for (group, backend) in [("app", &app[0]), ("app", &app[1]), ("app6", &app6[0]), ("app6", &app6[1])] {
        let side = log.get(&backend.addr()).cloned().unwrap_or_default();
        // The log and the backend agree on what was answered (a check of
        // the ground truth itself).
        let mut answered = side.statuses.clone();
        answered.retain(|&s, _| !matches!(s, 0 | 502 | 504));
        ensure!(
            answered == backend.by_status(),
            "{}: nginx log {answered:?} vs backend {:?}",
            backend.addr(),
            backend.by_status()
        );
        ensure!(
            (side.sent, side.received) == (backend.bytes_read(), backend.bytes_written()),
            "{}: bytes in nginx's log {:?} vs what the backend read and wrote {:?}",
            backend.addr(),
            (side.sent, side.received),
            (backend.bytes_read(), backend.bytes_written())
        );
        want.push((
            format!("{group} {}", backend.addr()),
            backend.addr(),
            Figures {
                requests: backend.total() + side.failed,
                codes: backend.by_status(),
                no_response: side.failed,
                sent: side.sent,
                received: side.received,
            },
        ));
    }
    // The direct peers' ground truth is checked as strictly; the probe's
    // figures for them are reported, not asserted (see PeerCheck::asserted).
    let mut direct_want = Vec::new();
    for ((backend, result), kind) in direct.iter().zip(&direct_results).zip(kinds) {
        let name = format!("direct client {} ({kind:?} interim responses)", backend.addr());
        let figures = direct_figures(backend, result, spec.direct_requests)?;
        direct_want.push((name, backend.addr(), figures));
    }

    let settle_on: Vec<(SocketAddr, Figures)> = want.iter().map(|(_, a, f)| (*a, f.clone())).collect();
    let snap = settle(&mut probe, &settle_on)?;
    let resp = http::get(&nginx.url("/upstreamtop")).context("GET /upstreamtop")?;
    ensure!(resp.status == 200, "GET /upstreamtop: {} {}", resp.status, resp.text());
    let doc: serde_json::Value = serde_json::from_slice(&resp.body).context("JSON")?;

    let stats = ns.stats();
    let mut report = format!(
        "impaired link: {} requests through nginx + 2 x {} direct in {traffic_time:.1?} \
         (MSS {mss}, seed {seed}, {:?})\n{stats:#?}\nbackend ns TCP {tcp:?}\nprobe counters {:?}\n",
        spec.nginx_requests, spec.direct_requests, spec.impairment, snap.meta.counters
    );
    let peers: Vec<PeerCheck> = want
        .into_iter()
        .map(|w| (w, true))
        .chain(direct_want.into_iter().map(|w| (w, false)))
        .map(|((name, addr, want), asserted)| PeerCheck {
            name,
            addr,
            table: from_table(&snap, addr),
            json: from_json(&doc, addr),
            want,
            asserted,
        })
        .collect();
    for peer in &peers {
        report.push_str(&peer.diff());
    }
    let _ = writeln!(report, "run time {:.1?}", started.elapsed());
    Ok(Outcome { peers, stats, tcp, traffic_time, error_log_problems: nginx.error_log_problems(), report })
}
