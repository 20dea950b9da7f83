//! The content handler of `upstreamtop_status` locations.
//!
//! The answer is computed in plain Rust ([`answer`]) inside
//! `catch_unwind`, so a bug can cost one request a 500 but never unwind
//! into nginx; only [`send`] touches the request's output side.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use ngx::core::{Buffer, Status};
use ngx::ffi::{
    add_to_ngx_table, ngx_buf_t, ngx_chain_t, ngx_http_request_t, ngx_http_send_special, ngx_int_t, ngx_list_push,
    ngx_str_t, ngx_table_elt_t, NGX_HTTP_LAST, NGX_LOG_ERR,
};
use ngx::http::{HTTPStatus, HttpModuleLocationConf, HttpModuleMainConf, Method, Request};
use ngx::ngx_log_error;
use upstreamtop_report::{BodyPart, Format, Query};

use crate::render_cache::{self, Body, Outcome};
use crate::{nginx_conf, Module, StatusConf};

const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What to send back.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: Content,
}

enum Content {
    /// A small body of this request's own (errors).
    Own(String),
    /// The page, compiled in.
    Fixed(&'static str),
    /// A rendered body the worker's cache may share with other requests,
    /// and the clock to stamp it with: sent from where it lies.
    Shared(Body, u64),
}

impl Answer {
    fn json(status: u16, body: String) -> Self {
        Answer { status, content_type: JSON, body: Content::Own(body) }
    }

    fn error(status: u16, message: &str) -> Self {
        Answer::json(status, serde_json::json!({ "error": message }).to_string())
    }
}

/// Registered as the location's content handler by `upstreamtop_status`.
pub(crate) extern "C" fn status_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live request that nothing
    // else touches while the handler runs.
    let request = unsafe { Request::from_ngx_http_request(r) };
    handle(request).0
}

fn handle(request: &mut Request) -> Status {
    let method = request.method();
    let read_only = method == Method::GET || method == Method::HEAD;
    // Any body (even on GET) is read and dropped so keep-alive stays usable.
    let rc = request.discard_request_body();
    if rc != Status::NGX_OK {
        return rc;
    }
    if !read_only {
        let answer = Answer::error(405, "method not allowed: use GET or HEAD");
        return send(request, answer, true);
    }
    let answer = match catch_unwind(AssertUnwindSafe(|| answer(request))) {
        Ok(answer) => answer,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            ngx_log_error!(NGX_LOG_ERR, request.log(), "upstreamtop: status handler panicked: {}", what);
            Answer::error(500, "internal error in upstreamtop module (see nginx error log)")
        }
    };
    send(request, answer, false)
}

/// Unix time, ns.
fn now_unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// The whole answer, from the request's configuration, query and the table.
fn answer(request: &Request) -> Answer {
    let mut defaults: StatusConf = Module::location_conf(request).and_then(|lc| lc.status).unwrap_or_default();
    if accepts_html(request) {
        // A browser that names no format gets the page; `curl` (`*/*`) and
        // scrapers keep the directive's format.
        defaults.format = Format::Html;
    }
    let table = Module::main_conf(request).map(|mc| mc.table_path()).unwrap_or(crate::DEFAULT_TABLE_PATH);
    let args_ngx: &ngx_str_t = &request.as_ref().args;
    let args = String::from_utf8_lossy(args_ngx.as_bytes());
    let query = match Query::parse(&args, defaults) {
        Ok(q) => q,
        Err(e) => return Answer::error(400, &e.to_string()),
    };
    let format = query.format;
    if format == Format::Html {
        // The page needs no table: it shows the JSON's own 503 itself.
        return Answer { status: 200, content_type: HTML, body: Content::Fixed(upstreamtop_report::page::PAGE) };
    }
    let conf = nginx_conf::nginx_config(request);
    let now = now_unix_ns();
    match render_cache::answer(Path::new(table), conf, query, now) {
        Outcome::Unreadable(e) => unavailable(format, &e.to_string(), table, None),
        Outcome::Stale { age_s, published_unix_ns } => {
            let reason = format!("probe stale: last publish {age_s} s ago");
            unavailable(format, &reason, table, Some(published_unix_ns))
        }
        Outcome::Ready(body) => {
            Answer { status: 200, content_type: content_type(format), body: Content::Shared(body, now) }
        }
    }
}

fn content_type(format: Format) -> &'static str {
    match format {
        Format::Json => JSON,
        Format::Prometheus => PROMETHEUS,
        Format::Html => HTML,
    }
}

/// Does the request's `Accept` name `text/html` (what browsers send for a
/// page)? `*/*` alone does not.
fn accepts_html(request: &Request) -> bool {
    request.headers_in_iterator().any(|(name, value)| {
        name.as_bytes().eq_ignore_ascii_case(b"accept")
            && value.as_bytes().windows(9).any(|w| w.eq_ignore_ascii_case(b"text/html"))
    })
}

/// No usable table. JSON gets a 503 naming the reason; Prometheus gets a
/// 200 with `upstreamtop_probe_up 0`, because a scraper drops the body of
/// any non-2xx answer and the alert `upstreamtop_probe_up == 0` could never
/// fire.
fn unavailable(format: Format, reason: &str, table: &str, last_publish_unix_ns: Option<u64>) -> Answer {
    if format == Format::Prometheus {
        Answer {
            status: 200,
            content_type: PROMETHEUS,
            body: Content::Own(upstreamtop_report::unavailable_prometheus(
                &format!("{reason} (table {table})"),
                last_publish_unix_ns,
            )),
        }
    } else {
        Answer::json(503, upstreamtop_report::unavailable_json(reason, table))
    }
}

fn send(request: &mut Request, answer: Answer, allow_header: bool) -> Status {
    let Answer { status, content_type, body } = answer;
    // The request's pool owns the body from here on and drops it when the
    // request is freed, after the last byte went out: the buffers below
    // point into it however slowly the client reads, even if the worker's
    // cache has moved on to a newer publish.
    let pool = request.pool();
    let kept = pool.allocate(body);
    if kept.is_null() {
        return Status::NGX_ERROR;
    }
    // SAFETY: a live allocation of this request's pool, which outlives
    // this function and every buffer sent from it.
    let body: &Content = unsafe { &*kept };
    let parts: Vec<BodyPart> = match body {
        Content::Own(text) => vec![BodyPart::Bytes(text.as_bytes())],
        Content::Fixed(text) => vec![BodyPart::Bytes(text.as_bytes())],
        Content::Shared(shared, now) => shared.body.at(*now).to_vec(),
    };
    let len: usize = parts.iter().map(part_len).sum();

    request.set_status(HTTPStatus(status.into()));
    request.set_content_length_n(len);
    {
        let r = request.as_mut();
        // The content types are 'static, so nginx may keep pointing at them.
        r.headers_out.content_type = ngx_str_t { len: content_type.len(), data: content_type.as_ptr() as *mut u8 };
        r.headers_out.content_type_len = content_type.len();
    }
    // The answer depends on Accept (the page for browsers).
    if request.add_header_out("Cache-Control", "no-store").is_none()
        || request.add_header_out("X-Content-Type-Options", "nosniff").is_none()
        || request.add_header_out("Vary", "Accept").is_none()
        || (allow_header && request.add_header_out("Allow", "GET, HEAD").is_none())
    {
        return Status::NGX_ERROR;
    }
    if matches!(body, Content::Fixed(_))
        && request
            .add_header_out("Content-Security-Policy", upstreamtop_report::page::content_security_policy())
            .is_none()
    {
        return Status::NGX_ERROR;
    }
    if let Content::Shared(shared, _) = body {
        // nginx's not-modified filter compares it with If-None-Match and
        // turns the answer into a 304 without a body.
        if set_etag(request, &shared.etag).is_none() {
            return Status::NGX_ERROR;
        }
    }

    let rc = request.send_header();
    if rc == Status::NGX_ERROR || rc.0 > Status::NGX_OK.0 || request.header_only() {
        return rc;
    }
    if len == 0 {
        // SAFETY: the request is live; NGX_HTTP_LAST ends the response
        // without a zero-size data buffer (which nginx would flag).
        return Status(unsafe { ngx_http_send_special(request.into(), NGX_HTTP_LAST as _) });
    }
    let mut head: *mut ngx_chain_t = std::ptr::null_mut();
    let mut tail: *mut ngx_chain_t = std::ptr::null_mut();
    let last = parts.iter().rposition(|p| part_len(p) > 0);
    for (i, part) in parts.iter().enumerate().filter(|(_, p)| part_len(p) > 0) {
        let buf: *mut ngx_buf_t = match part {
            BodyPart::Bytes(s) => {
                let buf = pool.calloc_type::<ngx_buf_t>();
                if buf.is_null() {
                    return Status::NGX_ERROR;
                }
                let start = s.as_ptr() as *mut u8;
                // SAFETY: `buf` is a zeroed ngx_buf_t from the pool. It
                // points at `s`, inside the pool-owned body above; the
                // memory flag tells nginx never to write to it.
                unsafe {
                    (*buf).start = start;
                    (*buf).pos = start;
                    (*buf).last = start.add(s.len());
                    (*buf).end = start.add(s.len());
                    (*buf).set_memory(1);
                }
                buf
            }
            BodyPart::Number(n) => match pool.create_buffer_from_str(&n.to_string()) {
                Some(mut b) => b.as_ngx_buf_mut(),
                None => return Status::NGX_ERROR,
            },
        };
        let link = pool.calloc_type::<ngx_chain_t>();
        if link.is_null() {
            return Status::NGX_ERROR;
        }
        // SAFETY: `buf` and `link` are live pool allocations of this
        // request; `tail` is the previous link (or null at the start).
        unsafe {
            if Some(i) == last {
                (*buf).set_last_buf(u32::from(request.is_main()));
                (*buf).set_last_in_chain(1);
            }
            (*link).buf = buf;
            (*link).next = std::ptr::null_mut();
            if tail.is_null() {
                head = link;
            } else {
                (*tail).next = link;
            }
        }
        tail = link;
    }
    // SAFETY: `head` is the first link of the non-empty chain built above.
    request.output_filter(unsafe { &mut *head })
}

fn part_len(p: &BodyPart) -> usize {
    match p {
        BodyPart::Bytes(b) => b.len(),
        BodyPart::Number(n) => n.checked_ilog10().map_or(1, |d| d as usize + 1),
    }
}

/// Adds the `ETag` header and points `headers_out.etag` at it, which is
/// what nginx's not-modified filter compares `If-None-Match` with.
fn set_etag(request: &mut Request, etag: &str) -> Option<()> {
    let r = request.as_mut();
    // SAFETY: headers_out.headers is the request's live header list; the
    // pushed element is filled by add_to_ngx_table with copies in the
    // request's pool before nginx reads it.
    unsafe {
        let elt = ngx_list_push(&mut r.headers_out.headers) as *mut ngx_table_elt_t;
        add_to_ngx_table(elt, r.pool, "ETag", etag)?;
        r.headers_out.etag = elt;
    }
    Some(())
}
