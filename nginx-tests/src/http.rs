//! A minimal blocking HTTP/1.1 client over `std::net::TcpStream`.
//!
//! Enough for tests and the load generator: GET/POST (any method), custom
//! headers, keepalive or one connection per request, bodies framed by
//! `Content-Length`, chunked encoding or connection close. No TLS, no
//! redirects, no pipelining: a test should see exactly one request on the
//! wire for every call.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

/// Default connect/read/write timeout: generous, tests must not hang forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Heads larger than this are refused: a test peer never sends one.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// In the order received; names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request: method, target (path + query) and extra headers. `Host`,
/// `Content-Length` and `Connection` are added by the [`Client`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, target: &str) -> Self {
        Request { method: method.to_owned(), target: target.to_owned(), headers: Vec::new(), body: Vec::new() }
    }

    pub fn get(target: &str) -> Self {
        Self::new("GET", target)
    }

    pub fn post(target: &str, body: impl Into<Vec<u8>>) -> Self {
        Request { body: body.into(), ..Self::new("POST", target) }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A client bound to one server address. With keepalive on it reuses one
/// connection across requests (reconnecting when the server closed it).
pub struct Client {
    addr: SocketAddr,
    host: String,
    keepalive: bool,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
    connects: u64,
}

impl Client {
    /// A keepalive client for `addr`; `Host` is the address itself.
    pub fn new(addr: SocketAddr) -> Self {
        Client { addr, host: host_header(addr), keepalive: true, timeout: DEFAULT_TIMEOUT, conn: None, connects: 0 }
    }

    /// Reuse connections (`true`, the default) or send `Connection: close`
    /// and open one connection per request (`false`).
    pub fn keepalive(mut self, on: bool) -> Self {
        self.keepalive = on;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Override the `Host` header.
    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections opened so far.
    pub fn connects(&self) -> u64 {
        self.connects
    }

    pub fn get(&mut self, target: &str) -> Result<Response> {
        self.send(&Request::get(target))
    }

    pub fn post(&mut self, target: &str, body: impl Into<Vec<u8>>) -> Result<Response> {
        self.send(&Request::post(target, body))
    }

    /// Send one request and read its final response (interim 1xx responses
    /// are skipped).
    pub fn send(&mut self, req: &Request) -> Result<Response> {
        let wire = self.encode(req);
        let reused = self.conn.is_some();
        match self.exchange(&wire, req) {
            Ok(resp) => Ok(resp),
            // A server may close an idle keepalive connection just before we
            // write; nothing was answered, so one retry on a fresh
            // connection is what every HTTP client does.
            Err(Exchange::NothingReceived(_)) if reused => {
                self.conn = None;
                self.exchange(&wire, req).map_err(Exchange::into_error)
            }
            Err(e) => {
                self.conn = None;
                Err(e.into_error())
            }
        }
        .with_context(|| format!("{} {} to {}", req.method, req.target, self.addr))
    }

    fn encode(&self, req: &Request) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\nHost: {}\r\n", req.method, req.target, self.host);
        for (name, value) in &req.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let method_has_body = !matches!(req.method.as_str(), "GET" | "HEAD" | "DELETE" | "OPTIONS");
        if !req.body.is_empty() || method_has_body {
            head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
        }
        if !self.keepalive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut wire = head.into_bytes();
        wire.extend_from_slice(&req.body);
        wire
    }

    fn exchange(&mut self, wire: &[u8], req: &Request) -> Result<Response, Exchange> {
        if self.conn.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, self.timeout)
                .with_context(|| format!("connect to {}", self.addr))
                .map_err(Exchange::Failed)?;
            stream
                .set_read_timeout(Some(self.timeout))
                .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
                .and_then(|()| stream.set_nodelay(true))
                .context("socket options")
                .map_err(Exchange::Failed)?;
            self.connects += 1;
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self.conn.as_mut().expect("connection just ensured");
        conn.get_mut().write_all(wire).context("write request").map_err(Exchange::NothingReceived)?;
        let (resp, reusable) = read_response(conn, req.method == "HEAD")?;
        if !(self.keepalive && reusable) {
            self.conn = None;
        }
        Ok(resp)
    }
}

/// Why an exchange failed, and whether any response byte had arrived.
enum Exchange {
    NothingReceived(anyhow::Error),
    Failed(anyhow::Error),
}

impl Exchange {
    fn into_error(self) -> anyhow::Error {
        match self {
            Exchange::NothingReceived(e) | Exchange::Failed(e) => e,
        }
    }
}

/// Read one final response. Returns it and whether the connection may carry
/// another request.
fn read_response(conn: &mut BufReader<TcpStream>, head_request: bool) -> Result<(Response, bool), Exchange> {
    let mut first = true;
    loop {
        let head = read_head(conn, first)?;
        first = false;
        let (status, reason, headers) = parse_response_head(&head).map_err(Exchange::Failed)?;
        if (100..200).contains(&status) && status != 101 {
            continue; // interim response: the final one follows
        }
        let mut resp = Response { status, reason, headers, body: Vec::new() };
        let mut reusable = !resp.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let no_body = head_request || status == 204 || status == 304;
        if no_body {
            return Ok((resp, reusable));
        }
        let chunked = resp.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            resp.body = read_chunked(conn).map_err(Exchange::Failed)?;
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.trim().parse().map_err(|_| Exchange::Failed(anyhow!("bad Content-Length {len:?}")))?;
            resp.body = vec![0; len];
            conn.read_exact(&mut resp.body).context("read body").map_err(Exchange::Failed)?;
        } else {
            conn.read_to_end(&mut resp.body).context("read body until close").map_err(Exchange::Failed)?;
            reusable = false;
        }
        return Ok((resp, reusable));
    }
}

/// Read up to and including the blank line that ends a head.
fn read_head(conn: &mut BufReader<TcpStream>, first: bool) -> Result<String, Exchange> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = conn.read_line(&mut line);
        match n {
            Ok(0) if head.is_empty() && first => {
                return Err(Exchange::NothingReceived(anyhow!("connection closed before any response")))
            }
            Ok(0) => return Err(Exchange::Failed(anyhow!("connection closed inside the response head"))),
            Ok(_) => {}
            Err(e)
                if head.is_empty()
                    && first
                    && e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut =>
            {
                return Err(Exchange::NothingReceived(anyhow!(e).context("read response")))
            }
            Err(e) => return Err(Exchange::Failed(anyhow!(e).context("read response head"))),
        }
        if line == "\r\n" || line == "\n" {
            if head.is_empty() {
                continue; // tolerate a stray CRLF between messages
            }
            return Ok(head);
        }
        head.push_str(&line);
        if head.len() > MAX_HEAD_BYTES {
            return Err(Exchange::Failed(anyhow!("response head over {MAX_HEAD_BYTES} bytes")));
        }
    }
}

type Head = (u16, String, Vec<(String, String)>);

fn parse_response_head(head: &str) -> Result<Head> {
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x status line: {status_line:?}");
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let reason = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| anyhow!("bad header line {line:?}"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    Ok((status, reason, headers))
}

fn read_chunked(conn: &mut BufReader<TcpStream>) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        conn.read_line(&mut size_line).context("read chunk size")?;
        let size_hex = size_line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_hex, 16).with_context(|| format!("bad chunk size {size_line:?}"))?;
        if size == 0 {
            // Trailers (usually none) end with a blank line.
            loop {
                let mut line = String::new();
                let n = conn.read_line(&mut line).context("read trailer")?;
                if n == 0 || line == "\r\n" || line == "\n" {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        conn.read_exact(&mut body[start..]).context("read chunk")?;
        let mut crlf = [0u8; 2];
        conn.read_exact(&mut crlf).context("read chunk end")?;
    }
}

fn host_header(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// Split `http://host:port/path?query` into the socket address and target.
pub fn parse_url(url: &str) -> Result<(SocketAddr, String)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow!("only http:// URLs are supported: {url}"))?;
    let (authority, target) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let authority = if authority.starts_with('[') || authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("resolve {authority}"))?
        .next()
        .ok_or_else(|| anyhow!("{authority} resolves to nothing"))?;
    Ok((addr, target.to_owned()))
}

/// One GET on a fresh connection.
pub fn get(url: &str) -> Result<Response> {
    let (addr, target) = parse_url(url)?;
    Client::new(addr).keepalive(false).get(&target)
}

/// One POST on a fresh connection.
pub fn post(url: &str, body: impl Into<Vec<u8>>) -> Result<Response> {
    let (addr, target) = parse_url(url)?;
    Client::new(addr).keepalive(false).post(&target, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let (addr, target) = parse_url("http://127.0.0.1:8080/upstreamtop?format=json").unwrap();
        assert_eq!(addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(target, "/upstreamtop?format=json");
        let (addr, target) = parse_url("http://[::1]:81").unwrap();
        assert_eq!(addr, "[::1]:81".parse().unwrap());
        assert_eq!(target, "/");
        assert!(parse_url("https://x/").is_err());
    }

    #[test]
    fn parses_response_heads() {
        let (status, reason, headers) =
            parse_response_head("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\nX-A: b\r\n").unwrap();
        assert_eq!(status, 503);
        assert_eq!(reason, "Service Unavailable");
        assert_eq!(headers[1], ("X-A".to_owned(), "b".to_owned()));
        assert!(parse_response_head("HTTP/1.1 999 x\r\n").is_err());
        assert!(parse_response_head("SSH-2.0\r\n").is_err());
    }
}
