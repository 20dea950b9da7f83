//! The `upstreamtop` binary end to end over real HTTP on 127.0.0.1: a small
//! server thread answers with recorded module answers (200 with a report,
//! 503 with the unavailable body), the binary's stdout is not a terminal.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Serves `status` + `body` to every connection (chunked, as nginx does for
/// a body built on the fly); returns the URL and a count of requests with
/// the request lines seen.
fn serve(status: &'static str, body: Vec<u8>) -> (String, Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/upstreamtop", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (h, l) = (Arc::clone(&hits), Arc::clone(&lines));
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req);
            l.lock().unwrap().push(text.lines().next().unwrap_or("").to_string());
            h.fetch_add(1, Ordering::SeqCst);
            let mut resp = format!(
                "HTTP/1.1 {status}\r\nServer: nginx\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )
            .into_bytes();
            for chunk in body.chunks(1000) {
                resp.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                resp.extend_from_slice(chunk);
                resp.extend_from_slice(b"\r\n");
            }
            resp.extend_from_slice(b"0\r\n\r\n");
            let _ = conn.write_all(&resp);
        }
    });
    (url, hits, lines)
}

fn upstreamtop(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_upstreamtop")).args(args).output().unwrap()
}

#[test]
fn once_prints_a_snapshot() {
    let (url, hits, lines) = serve("200 OK", fixture("normal"));
    let out = upstreamtop(&["--once", "--url", &url, "--routes", "1", "--upstream", "api"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let req = lines.lock().unwrap()[0].clone();
    assert!(
        req.starts_with("GET /upstreamtop?routes=") && req.contains("&upstream=api") && req.ends_with(" HTTP/1.1"),
        "{req}"
    );
    assert!(stdout.starts_with("upstreamtop — nginx upstreams · 248.0 req/s"), "{stdout}");
    assert!(stdout.contains("api 10.0.1.10:8080"), "{stdout}");
    assert!(!stdout.contains("checkout"), "--upstream api filters list and feed:\n{stdout}");
    assert!(!stdout.contains("unlisted"), "{stdout}");
    assert!(!stdout.contains('\x1b'), "no colour codes in plain text");
}

#[test]
fn once_against_503_explains_and_fails() {
    let (url, _, _) = serve("503 Service Unavailable", fixture("unavailable"));
    let out = upstreamtop(&["--once", "--url", &url]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("probe unavailable: probe not running: /run/upstreamtop/table missing"), "{stdout}");
}

#[test]
fn once_against_a_closed_port_explains_and_fails() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = upstreamtop(&["--once", "--url", &format!("http://127.0.0.1:{port}/upstreamtop")]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.contains("endpoint down"), "{stdout}");
}

#[test]
fn not_a_tty_prints_snapshots_until_secs() {
    let (url, hits, _) = serve("200 OK", fixture("normal"));
    let out = upstreamtop(&["--url", &url, "--secs", "1", "--interval", "200ms"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    let snapshots = stdout.matches("upstreamtop — nginx upstreams").count();
    assert!(snapshots >= 1, "{stdout}");
    assert_eq!(snapshots, hits.load(Ordering::SeqCst), "one snapshot per poll");
}

#[test]
fn hostile_answer_plain_text_is_inert() {
    let (url, _, _) = serve("200 OK", fixture("hostile"));
    let out = upstreamtop(&["--once", "--url", &url]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(stdout.chars().all(|c| !c.is_control() || c == '\n'), "{stdout:?}");
    assert!(stdout.contains(r"/\x1b]0;pwned\x07title"), "{stdout}");
}

#[test]
fn bad_flags_are_clear_errors() {
    let out = upstreamtop(&["--once", "--url", "https://example.com/upstreamtop"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only plain http://"));
    let out = upstreamtop(&["--interval", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("between 50ms and 1h"));
}

#[test]
fn several_hosts_one_down() {
    let (a, hits_a, _) = serve("200 OK", fixture("normal"));
    let (b, hits_b, _) = serve("503 Service Unavailable", fixture("unavailable"));
    let out = upstreamtop(&["--once", "--url", &a, "--url", &b]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "one host answered:\n{stdout}");
    assert_eq!((hits_a.load(Ordering::SeqCst), hits_b.load(Ordering::SeqCst)), (1, 1));
    let host_a = a.trim_start_matches("http://").trim_end_matches("/upstreamtop");
    let host_b = b.trim_start_matches("http://").trim_end_matches("/upstreamtop");
    assert!(stdout.contains("1/2 hosts"), "{stdout}");
    assert!(stdout.contains(&format!("{host_a} api 10.0.1.10:8080")), "{stdout}");
    assert!(stdout.contains(&format!("{host_b}: probe unavailable")), "{stdout}");
}
