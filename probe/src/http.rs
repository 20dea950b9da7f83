//! Pure HTTP/1.x parsing: what the BPF programs recognise on the wire
//! (the same rules, kept testable here) and how userspace turns the raw
//! first bytes of a request into a route.

/// Longest method token accepted (as in the BPF programs' PEEK - 2).
pub const MAX_METHOD: usize = 18;
/// Longest folded route path kept.
pub const MAX_PATH: usize = 64;

/// Does a segment start like a request line: an uppercase method token
/// (A-Z, '-', '_'), one space, and the first byte of a target (origin-form
/// `/`, asterisk-form `*`, absolute- or authority-form)? Mirrors
/// `request_target` in upstreamtop.bpf.c.
pub fn looks_like_request(seg: &[u8]) -> bool {
    let Some(sp) = seg.iter().take(MAX_METHOD + 1).position(|&c| c == b' ') else {
        return false;
    };
    if sp == 0 || !seg[..sp].iter().all(|&c| c.is_ascii_uppercase() || c == b'-' || c == b'_') {
        return false;
    }
    match seg.get(sp + 1) {
        Some(&t) => t == b'/' || t == b'*' || t == b'[' || t.is_ascii_alphanumeric(),
        None => false,
    }
}

/// Method and raw target of the request whose first bytes are `raw` (the
/// target may be cut short when the request line spans segments or is
/// longer than what the probe keeps).
pub fn parse_request(raw: &[u8]) -> Option<(String, Vec<u8>)> {
    let (method, target) = split_request(raw)?;
    Some((method.to_owned(), target.to_vec()))
}

/// [`parse_request`] without copying: the method (an ASCII token, checked
/// by [`looks_like_request`]) and the raw target, borrowed from `raw`.
pub fn split_request(raw: &[u8]) -> Option<(&str, &[u8])> {
    if !looks_like_request(raw) {
        return None;
    }
    let sp = raw.iter().position(|&c| c == b' ')?;
    let method = std::str::from_utf8(&raw[..sp]).ok()?;
    let rest = &raw[sp + 1..];
    let end = rest.iter().position(|&c| c == b' ' || c == b'\r' || c == b'\n').unwrap_or(rest.len());
    Some((method, &rest[..end]))
}

/// The route key of a request, `METHOD folded-path`, written into `out`
/// (cleared first) so the per-event path reuses one buffer. False when
/// `raw` is not a request. Neither part holds a space (methods are tokens,
/// paths escape it), so the first space splits the key again.
pub fn route_key(raw: &[u8], out: &mut String) -> bool {
    out.clear();
    let Some((method, target)) = split_request(raw) else { return false };
    out.push_str(method);
    out.push(' ');
    fold_path_into(target, out);
    true
}

/// Status code of a status line at the start of `b` (`HTTP/1.1 200 OK`,
/// `HTTP/1.0 404`, `HTTP/2 200`), or `None`. Mirrors `status_at`.
pub fn status_code(b: &[u8]) -> Option<u16> {
    if b.len() < 12 || !b.starts_with(b"HTTP/") || !b[5].is_ascii_digit() {
        return None;
    }
    let mut c = 6;
    if b[c] == b'.' {
        if !b[c + 1].is_ascii_digit() {
            return None;
        }
        c += 2;
    }
    if b[c] != b' ' {
        return None;
    }
    let d = b.get(c + 1..c + 4)?;
    if !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = d.iter().fold(0u16, |a, &x| a * 10 + u16::from(x - b'0'));
    (100..=599).contains(&code).then_some(code)
}

/// Status codes in one response segment, in order, as the ingress program
/// reads them: interim 1xx responses, then possibly the final one (at most
/// three status lines, within the first 256 bytes).
pub fn status_codes(seg: &[u8]) -> Vec<u16> {
    let seg = &seg[..seg.len().min(256)];
    let mut out = Vec::new();
    let mut at = 0;
    for _ in 0..3 {
        let Some(code) = status_code(&seg[at..]) else { break };
        out.push(code);
        if code >= 200 {
            break;
        }
        match seg[at..].windows(4).position(|w| w == b"\r\n\r\n") {
            Some(p) => at += p + 4,
            None => break,
        }
    }
    out
}

/// The route of a request target: path only (scheme and authority of an
/// absolute-form target, query and fragment removed), numeric, UUID and
/// long-hex segments folded to `:id`, other bytes outside printable ASCII
/// escaped, bounded to [`MAX_PATH`] bytes.
pub fn fold_path(target: &[u8]) -> String {
    let mut out = String::new();
    fold_path_into(target, &mut out);
    out
}

/// [`fold_path`], appended to `out`.
pub fn fold_path_into(target: &[u8], out: &mut String) {
    let start = out.len();
    let mut t = target;
    // The query goes first: a URL inside it (`/r?next=http://x/y`) is not
    // the request's own absolute-form target.
    if let Some(q) = t.iter().position(|&c| c == b'?' || c == b'#') {
        t = &t[..q];
    }
    if let Some(p) = find(t, b"://") {
        // absolute-form: keep what follows the authority
        let after = &t[p + 3..];
        t = match after.iter().position(|&c| c == b'/') {
            Some(s) => &after[s..],
            None => b"/",
        };
    }
    if t.first() != Some(&b'/') {
        // asterisk- or authority-form (OPTIONS *, CONNECT host:port): keep as is
        clean_into(t, out, start);
    } else {
        for seg in t.split(|&c| c == b'/').skip(1) {
            out.push('/');
            if is_id(seg) {
                out.push_str(":id");
            } else {
                clean_into(seg, out, start);
            }
            if out.len() - start > MAX_PATH {
                break;
            }
        }
        if out.len() == start {
            out.push('/');
        }
    }
    // Everything pushed is ASCII, so any cut is a char boundary.
    out.truncate(start + (out.len() - start).min(MAX_PATH));
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Printable ASCII kept; anything else (control bytes, non-ASCII, hostile
/// input) percent-escaped so routes are always valid, safe UTF-8. Appends
/// to `out` and stops once the path (from `start`) is past [`MAX_PATH`]:
/// the caller cuts it there.
fn clean_into(b: &[u8], out: &mut String, start: usize) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &c in b {
        if (0x21..0x7f).contains(&c) && c != b'%' {
            out.push(c as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(c >> 4)] as char);
            out.push(HEX[usize::from(c & 15)] as char);
        }
        if out.len() - start > MAX_PATH {
            break;
        }
    }
}

/// High-cardinality segment: all digits, a UUID, or long hex (>= 16 hex
/// digits with at least one digit).
fn is_id(seg: &[u8]) -> bool {
    if seg.is_empty() {
        return false;
    }
    if seg.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if seg.len() == 36 {
        let uuid = seg.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
        if uuid {
            return true;
        }
    }
    seg.len() >= 16 && seg.iter().all(u8::is_ascii_hexdigit) && seg.iter().any(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_request_is_a_request() {
        let r = b"GET / HTTP/1.1\r\nHost: b\r\n\r\n";
        assert_eq!(r.len(), 27);
        assert!(looks_like_request(r));
        assert_eq!(parse_request(r), Some(("GET".into(), b"/".to_vec())));
        assert_eq!(fold_path(b"/"), "/");
    }

    #[test]
    fn every_method_token() {
        for m in ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "PROPFIND"] {
            let r = format!("{m} /x HTTP/1.1\r\n");
            assert_eq!(parse_request(r.as_bytes()).unwrap().0, m);
        }
        assert!(looks_like_request(b"CONNECT example.com:443 HTTP/1.1\r\n"));
        assert!(looks_like_request(b"OPTIONS * HTTP/1.1\r\n"));
        assert_eq!(fold_path(b"*"), "*");
    }

    #[test]
    fn request_split_across_segments() {
        // First segment ends inside the target: still a request, the route
        // is what the segment held.
        let first = b"GET /api/orders/12";
        assert!(looks_like_request(first));
        let (m, t) = parse_request(first).unwrap();
        assert_eq!((m.as_str(), fold_path(&t).as_str()), ("GET", "/api/orders/:id"));
        // The continuation is not a request.
        assert!(!looks_like_request(b"34 HTTP/1.1\r\nHost: x\r\n\r\n"));
        // A segment with only the method is not recognised either.
        assert!(!looks_like_request(b"GET"));
        assert!(!looks_like_request(b"GET "));
    }

    #[test]
    fn responses_and_bodies_are_not_requests() {
        assert!(!looks_like_request(b"HTTP/1.1 200 OK\r\n"));
        assert!(!looks_like_request(b"get / HTTP/1.1\r\n"));
        assert!(!looks_like_request(b"{\"GET \": 1}"));
        assert!(!looks_like_request(b"\x16\x03\x01\x02\x00"));
        assert!(!looks_like_request(b"GET  / HTTP/1.1"));
        assert!(!looks_like_request(b"AVERYVERYLONGMETHODTOKEN / HTTP/1.1"));
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(status_code(b"HTTP/2 204 \r\n\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.1 099 X\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 600 X\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 2x0 X\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 20"), None);
        assert_eq!(status_code(b"http/1.1 200 OK\r\n"), None);
        // A 40-byte response counts.
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(r.len(), 38);
        assert_eq!(status_codes(r), vec![200]);
    }

    #[test]
    fn interim_responses_do_not_end_the_exchange() {
        // 100 Continue alone: interim only, the final comes later.
        assert_eq!(status_codes(b"HTTP/1.1 100 Continue\r\n\r\n"), vec![100]);
        // 103 then the final in the same segment.
        let seg = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(status_codes(seg), vec![103, 200]);
        let seg = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 201 Created\r\n\r\n";
        assert_eq!(status_codes(seg), vec![100, 103, 201]);
    }

    #[test]
    fn http10_close_delimited_response() {
        // No Content-Length: the body runs to the close; only the status
        // line counts, whatever the body holds.
        let seg = b"HTTP/1.0 200 OK\r\n\r\nHTTP/1.1 500 not a status line, body bytes";
        assert_eq!(status_codes(seg), vec![200]);
    }

    #[test]
    fn route_folding() {
        assert_eq!(fold_path(b"/api/orders/123?x=1"), "/api/orders/:id");
        assert_eq!(fold_path(b"/u/550e8400-e29b-41d4-a716-446655440000/p"), "/u/:id/p");
        assert_eq!(fold_path(b"/blob/0123456789abcdef0123"), "/blob/:id");
        assert_eq!(fold_path(b"/static/deadbeefcafe"), "/static/deadbeefcafe");
        assert_eq!(fold_path(b"/v2/items#frag"), "/v2/items");
        assert_eq!(fold_path(b"http://backend:8080/a/42?q"), "/a/:id");
        assert_eq!(fold_path(b"http://backend:8080"), "/");
        assert_eq!(fold_path(b"/r?next=http://x/y/1"), "/r");
        assert_eq!(fold_path(b"http://h?x/y"), "/");
        assert_eq!(fold_path(b"/a//b/"), "/a//b/");
        let long = format!("/{}", "x".repeat(300));
        assert_eq!(fold_path(long.as_bytes()).len(), MAX_PATH);
    }

    #[test]
    fn ipv6_absolute_form_target() {
        assert!(looks_like_request(b"GET http://[fd00:200::2]:8080/v/7 HTTP/1.1\r\n"));
        let (_, t) = parse_request(b"GET http://[fd00:200::2]:8080/v/7 HTTP/1.1\r\n").unwrap();
        assert_eq!(fold_path(&t), "/v/:id");
        assert_eq!(fold_path(b"[fd00:200::2]:443"), "[fd00:200::2]:443");
    }

    #[test]
    fn hostile_bytes() {
        let p = fold_path(b"/a\x00b/\xff\xfe/%2e%2e/\x1b[31m");
        assert_eq!(p, "/a%00b/%FF%FE/%252e%252e/%1B[31m");
        assert!(p.is_ascii());
        for n in 0..300usize {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 % 256) as u8).collect();
            let _ = looks_like_request(&junk);
            let _ = status_codes(&junk);
            let _ = parse_request(&junk);
            assert!(fold_path(&junk).len() <= MAX_PATH);
        }
        let mut v = b"GET /".to_vec();
        v.extend([0xffu8; 200]);
        let (_, t) = parse_request(&v).unwrap();
        let p = fold_path(&t);
        assert!(p.len() <= MAX_PATH && p.is_ascii());
    }
}
