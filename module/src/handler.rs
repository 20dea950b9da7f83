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
    ngx_chain_t, ngx_http_request_t, ngx_http_send_special, ngx_int_t, ngx_str_t, NGX_HTTP_LAST,
    NGX_LOG_ERR,
};
use ngx::http::{HTTPStatus, HttpModuleLocationConf, HttpModuleMainConf, Method, Request};
use ngx::ngx_log_error;

use crate::{nginx_conf, table_access, Module, StatusConf};

const JSON: &str = "application/json";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What to send back.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Answer {
    fn json(status: u16, body: String) -> Self {
        Answer { status, content_type: JSON, body }
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
            ngx_log_error!(
                NGX_LOG_ERR,
                request.log(),
                "upstreamtop: status handler panicked: {}",
                what
            );
            Answer::error(500, "internal error in upstreamtop module (see nginx error log)")
        }
    };
    send(request, answer, false)
}

/// Unix time, ns.
fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `?format=prometheus` / `?format=json` (the last one wins): `Some(true)`
/// for Prometheus, `None` when not given. `parse_query` leaves `format` to
/// the module because the directive supplies its default.
fn format_arg(args: &str) -> Result<Option<bool>, String> {
    match args.split('&').filter_map(|kv| kv.strip_prefix("format=")).next_back() {
        None => Ok(None),
        Some("prometheus") => Ok(Some(true)),
        Some("json") => Ok(Some(false)),
        Some(other) => Err(format!(
            "parameter format: expected \"json\" or \"prometheus\", got {other:?}"
        )),
    }
}

/// The whole answer, from the request's configuration, query and the table.
fn answer(request: &Request) -> Answer {
    let status_conf: StatusConf = Module::location_conf(request)
        .and_then(|lc| lc.status)
        .unwrap_or_default();
    let table = Module::main_conf(request)
        .map(|mc| mc.table_path())
        .unwrap_or(crate::DEFAULT_TABLE_PATH);
    let args_ngx: &ngx_str_t = &request.as_ref().args;
    let args = String::from_utf8_lossy(args_ngx.as_bytes());

    let mut query = match upstreamtop_report::parse_query(&args) {
        Ok(q) => q,
        Err(e) => return Answer::error(400, &e),
    };
    if status_conf.noroutes {
        query.route_labels = false;
    }
    let prometheus = match format_arg(&args) {
        Ok(format) => format.unwrap_or(status_conf.prometheus),
        Err(e) => return Answer::error(400, &e),
    };
    if prometheus && !args.split('&').any(|kv| kv.starts_with("routes=")) {
        // A scraper wants every route the probe keeps (bounded by its
        // --max-routes), not the JSON's top 10: a route leaving a top-N
        // would make its counter series vanish and reappear. topk() in
        // PromQL does the ranking.
        query.routes = usize::MAX;
    }

    let snap = match table_access::snapshot(Path::new(table)) {
        Ok(snap) => snap,
        Err(e) => return unavailable(prometheus, &e.to_string(), table, None),
    };
    let now = now_unix_ns();
    if let Some(age_s) = upstreamtop_report::stale_age_s(&snap, now) {
        let reason = format!("probe stale: last publish {age_s} s ago");
        return unavailable(prometheus, &reason, table, Some(snap.meta.published_unix_ns));
    }
    let conf = nginx_conf::nginx_config(request);
    let report = upstreamtop_report::build_report(&snap, &conf, &query, now);
    if prometheus {
        Answer {
            status: 200,
            content_type: PROMETHEUS,
            body: upstreamtop_report::render_prometheus(&report, &query),
        }
    } else {
        Answer::json(200, upstreamtop_report::render_json(&report))
    }
}

/// No usable table. JSON gets a 503 naming the reason; Prometheus gets a
/// 200 with `upstreamtop_probe_up 0`, because a scraper drops the body of
/// any non-2xx answer and the alert `upstreamtop_probe_up == 0` could never
/// fire.
fn unavailable(prometheus: bool, reason: &str, table: &str, last_publish_unix_ns: Option<u64>) -> Answer {
    if prometheus {
        Answer {
            status: 200,
            content_type: PROMETHEUS,
            body: upstreamtop_report::unavailable_prometheus(
                &format!("{reason} (table {table})"),
                last_publish_unix_ns,
            ),
        }
    } else {
        Answer::json(503, upstreamtop_report::unavailable_json(reason, table))
    }
}

fn send(request: &mut Request, answer: Answer, allow_header: bool) -> Status {
    request.set_status(HTTPStatus(answer.status.into()));
    request.set_content_length_n(answer.body.len());
    {
        let r = request.as_mut();
        // The content types are 'static, so nginx may keep pointing at them.
        r.headers_out.content_type = ngx_str_t {
            len: answer.content_type.len(),
            data: answer.content_type.as_ptr() as *mut u8,
        };
        r.headers_out.content_type_len = answer.content_type.len();
    }
    if request.add_header_out("Cache-Control", "no-store").is_none()
        || (allow_header && request.add_header_out("Allow", "GET, HEAD").is_none())
    {
        return Status::NGX_ERROR;
    }

    let rc = request.send_header();
    if rc == Status::NGX_ERROR || rc.0 > Status::NGX_OK.0 || request.header_only() {
        return rc;
    }
    if answer.body.is_empty() {
        // SAFETY: the request is live; NGX_HTTP_LAST ends the response
        // without a zero-size data buffer (which nginx would flag).
        return Status(unsafe { ngx_http_send_special(request.into(), NGX_HTTP_LAST as _) });
    }
    let Some(mut buf) = request.pool().create_buffer_from_str(&answer.body) else {
        return Status::NGX_ERROR;
    };
    buf.set_last_buf(request.is_main());
    buf.set_last_in_chain(true);
    let mut out = ngx_chain_t { buf: buf.as_ngx_buf_mut(), next: std::ptr::null_mut() };
    request.output_filter(&mut out)
}
