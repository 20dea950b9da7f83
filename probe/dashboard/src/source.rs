//! Where reports come from: the module's JSON endpoint over plain HTTP/1.1,
//! or the probe's table file read directly.
//!
//! Every failure becomes a [`SourceError`] for a banner; nothing here panics
//! on what a server or a file contains.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use upstreamtop_report::schema::{Report, Unavailable};
use upstreamtop_report::{NginxConfig, Query};
use upstreamtop_table::TableReader;

use crate::sanitize;

/// Routes asked per peer: enough for the drill-down view to show "all".
pub const ROUTES_ASKED: usize = 200;
/// Recent requests asked (the feed shows what fits).
pub const RECENT_ASKED: usize = 50;
/// The biggest answer accepted; a report is far smaller.
const MAX_BODY: u64 = 64 << 20;

/// Why no report could be had this round.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceError {
    /// Could not reach the endpoint (refused, timeout, DNS).
    Down(String),
    /// The module answered 503: the probe's table is unusable.
    Unavailable { reason: String, table: String },
    /// Any other HTTP status.
    Status(u16, String),
    /// An answer that is not a report.
    BadAnswer(String),
    /// `--table` mode: the table could not be read.
    Table(String),
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Down(e) => write!(f, "endpoint down: {e}"),
            SourceError::Unavailable { reason, table } if table.is_empty() => {
                write!(f, "probe unavailable: {reason}")
            }
            SourceError::Unavailable { reason, table } => {
                write!(f, "probe unavailable: {reason} (table {table})")
            }
            SourceError::Status(code, reason) => write!(f, "HTTP {code} {reason}"),
            SourceError::BadAnswer(e) => write!(f, "bad answer: {e}"),
            SourceError::Table(e) => write!(f, "table unreadable: {e}"),
        }
    }
}

impl std::error::Error for SourceError {}

/// One result per host, each labelled for the screen.
#[derive(Debug, Clone)]
pub struct HostResult {
    pub host: String,
    pub result: Result<Report, SourceError>,
}

/// A parsed `http://host[:port]/path?query` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` for display and the `Host` header.
    pub authority: String,
    host: String,
    port: u16,
    /// Path and query, ready for the request line.
    target: String,
}

impl Endpoint {
    /// Parses a URL given on the command line, adding the dashboard's query
    /// parameters (`routes`, `recent`, `upstream`).
    pub fn parse(url: &str, upstream: Option<&str>) -> anyhow::Result<Endpoint> {
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => anyhow::bail!("{url}: only plain http:// endpoints are supported, not {scheme}://"),
            None => url,
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            anyhow::bail!("{url}: no host");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) =
                v6.split_once(']').ok_or_else(|| anyhow::anyhow!("{url}: unclosed `[` in IPv6 address"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| anyhow::anyhow!("{url}: bad port `{p}`"))?,
                None if after.is_empty() => 80,
                None => anyhow::bail!("{url}: junk after IPv6 address"),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| anyhow::anyhow!("{url}: bad port `{p}`"))?),
                None => (authority.to_string(), 80),
            }
        };
        if host.is_empty() {
            anyhow::bail!("{url}: no host");
        }
        let mut target = match path {
            "" | "/" => "/upstreamtop".to_string(),
            p if p.starts_with('?') => format!("/upstreamtop{p}"),
            p => p.to_string(),
        };
        if let Some(i) = target.find('#') {
            target.truncate(i);
        }
        let mut params = vec![format!("routes={ROUTES_ASKED}"), format!("recent={RECENT_ASKED}")];
        if let Some(up) = upstream {
            params.push(format!("upstream={}", percent_encode(up)));
        }
        target.push(if target.contains('?') { '&' } else { '?' });
        target.push_str(&params.join("&"));
        let authority = if port == 80 {
            authority.to_string()
        } else if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Endpoint { authority, host, port, target })
    }

    /// One GET; the report, already sanitised.
    pub fn fetch(&self, timeout: Duration) -> Result<Report, SourceError> {
        let (status, reason, body) = self.get(timeout)?;
        match status {
            200 => parse_report(&body),
            503 => match serde_json::from_slice::<Unavailable>(&body) {
                Ok(u) => Err(SourceError::Unavailable {
                    reason: sanitize::clean(&u.error).into_owned(),
                    table: sanitize::clean(&u.table).into_owned(),
                }),
                Err(_) => Err(SourceError::Status(503, reason)),
            },
            _ => Err(SourceError::Status(status, reason)),
        }
    }

    fn addrs(&self) -> Result<Vec<SocketAddr>, SourceError> {
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| SourceError::Down(format!("{}: {e}", self.authority)))?
            .collect();
        if addrs.is_empty() {
            return Err(SourceError::Down(format!("{}: no address", self.authority)));
        }
        Ok(addrs)
    }

    fn get(&self, timeout: Duration) -> Result<(u16, String, Vec<u8>), SourceError> {
        let down = |e: std::io::Error| SourceError::Down(format!("{}: {e}", self.authority));
        let mut last = None;
        let mut stream = None;
        for addr in self.addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let mut stream = match stream {
            Some(s) => s,
            None => return Err(down(last.unwrap_or_else(|| std::io::Error::other("no address")))),
        };
        stream.set_read_timeout(Some(timeout)).map_err(down)?;
        stream.set_write_timeout(Some(timeout)).map_err(down)?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: upstreamtop/{}\r\nConnection: close\r\n\r\n",
            self.target,
            self.authority,
            env!("CARGO_PKG_VERSION")
        );
        stream.write_all(request.as_bytes()).map_err(down)?;
        let mut raw = Vec::new();
        stream.take(MAX_BODY).read_to_end(&mut raw).map_err(down)?;
        parse_response(&raw).map_err(SourceError::BadAnswer)
    }
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Splits a raw HTTP/1.x response into status, reason and body, undoing
/// chunked transfer encoding.
pub fn parse_response(raw: &[u8]) -> Result<(u16, String, Vec<u8>), String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header in {} bytes", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 answer: {}", sanitize::clean(status_line)));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {}", sanitize::clean(status_line)))?;
    let reason = sanitize::clean(parts.next().unwrap_or("")).into_owned();
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(n) = length {
        if body.len() < n {
            return Err(format!("answer cut short: {} of {n} bytes", body.len()));
        }
        body[..n].to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, reason, body))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n").ok_or("chunked answer cut short")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size `{}`", sanitize::clean(size_text)))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            return Err("chunked answer cut short".into());
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
}

/// Parses and sanitises a report body.
pub fn parse_report(body: &[u8]) -> Result<Report, SourceError> {
    let mut report: Report =
        serde_json::from_slice(body).map_err(|e| SourceError::BadAnswer(format!("not an upstreamtop report: {e}")))?;
    sanitize::report(&mut report);
    Ok(report)
}

/// What to poll, fixed at start-up; `Source` is built from it on the polling
/// thread (the table reader maps memory and stays on one thread).
#[derive(Debug, Clone)]
pub enum SourceSpec {
    Http(Vec<Endpoint>),
    Table { path: PathBuf, upstream: Option<String> },
}

impl SourceSpec {
    /// Host labels, in the order results come back.
    pub fn hosts(&self) -> Vec<String> {
        match self {
            SourceSpec::Http(eps) => eps.iter().map(|e| e.authority.clone()).collect(),
            SourceSpec::Table { path, .. } => vec![path.display().to_string()],
        }
    }
}

/// A live source.
pub enum Source {
    Http(Vec<Endpoint>),
    Table { path: PathBuf, reader: TableReader, query: Query },
}

impl Source {
    pub fn open(spec: &SourceSpec) -> Source {
        match spec {
            SourceSpec::Http(eps) => Source::Http(eps.clone()),
            SourceSpec::Table { path, upstream } => Source::Table {
                path: path.clone(),
                reader: TableReader::new(path),
                query: Query {
                    upstream: upstream.clone(),
                    routes: ROUTES_ASKED,
                    recent: RECENT_ASKED,
                    ..Query::default()
                },
            },
        }
    }

    /// One round: a result per host, in the order given; each host waits
    /// at most `timeout` (per connect, write and read).
    pub fn poll(&mut self, timeout: Duration) -> Vec<HostResult> {
        match self {
            // Hosts are asked at the same time, so one dead host costs one
            // timeout per round, not one per host.
            Source::Http(eps) if eps.len() == 1 => {
                vec![HostResult { host: eps[0].authority.clone(), result: eps[0].fetch(timeout) }]
            }
            Source::Http(eps) => std::thread::scope(|scope| {
                let handles: Vec<_> = eps.iter().map(|ep| scope.spawn(move || ep.fetch(timeout))).collect();
                eps.iter()
                    .zip(handles)
                    .map(|(ep, h)| HostResult {
                        host: ep.authority.clone(),
                        result: h.join().unwrap_or_else(|_| Err(SourceError::BadAnswer("poll thread failed".into()))),
                    })
                    .collect()
            }),
            Source::Table { path, reader, query } => {
                let result = report_from_table(reader, query).map(|mut report| {
                    sanitize::report(&mut report);
                    report
                });
                vec![HostResult { host: path.display().to_string(), result }]
            }
        }
    }
}

/// The answer the module would serve, with an empty nginx config (every
/// peer shows as unlisted: group names live in nginx), read back through
/// the schema as an HTTP answer is.
fn report_from_table(reader: &mut TableReader, query: &Query) -> Result<Report, SourceError> {
    let table_error = |e: &dyn std::fmt::Display| SourceError::Table(sanitize::clean(&e.to_string()).into_owned());
    let view = match reader.view_if_new(None) {
        Ok(Some(view)) => view,
        Ok(None) => return Err(table_error(&"table busy: no complete publish to read")),
        Err(e) => return Err(table_error(&e)),
    };
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let body = upstreamtop_report::render(&view, &NginxConfig::default(), query, now_ns, Vec::new());
    serde_json::from_slice(&body.body).map_err(|e| SourceError::BadAnswer(format!("table answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = Endpoint::parse("http://127.0.0.1:8080/upstreamtop", None).unwrap();
        assert_eq!(e.authority, "127.0.0.1:8080");
        assert_eq!(e.target, format!("/upstreamtop?routes={ROUTES_ASKED}&recent={RECENT_ASKED}"));
        let e = Endpoint::parse("http://[::1]:81/s?x=1", Some("a b")).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 81));
        assert_eq!(e.authority, "[::1]:81");
        assert!(e.target.starts_with("/s?x=1&routes="));
        assert!(e.target.ends_with("&upstream=a%20b"));
        let e = Endpoint::parse("localhost", None).unwrap();
        assert_eq!((e.host.as_str(), e.port, e.authority.as_str()), ("localhost", 80, "localhost"));
        assert!(e.target.starts_with("/upstreamtop?"));
        assert!(Endpoint::parse("https://x/", None).is_err());
        assert!(Endpoint::parse("http://x:notaport/", None).is_err());
        assert!(Endpoint::parse("http:///x", None).is_err());
    }

    #[test]
    fn responses() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        let (s, r, b) = parse_response(raw).unwrap();
        assert_eq!((s, r.as_str(), b.as_slice()), (200, "OK", &b"{\"a\":1}"[..]));
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}junk";
        let (s, _, b) = parse_response(raw).unwrap();
        assert_eq!((s, b.as_slice()), (503, &b"{}"[..]));
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
    }

    #[test]
    fn refused_is_down_not_panic() {
        // Bind then drop a listener to find a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = Endpoint::parse(&format!("http://127.0.0.1:{port}/upstreamtop"), None).unwrap();
        match e.fetch(Duration::from_secs(2)) {
            Err(SourceError::Down(msg)) => assert!(msg.contains(&port.to_string())),
            other => panic!("expected Down, got {other:?}"),
        }
    }
}
