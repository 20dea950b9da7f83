//! The module built by `module/build-distro.sh` loads into the distro's
//! nginx (`/usr/sbin/nginx`, Debian 1.22) and serves the endpoint.
//!
//! Skipped, with a message, when there is no `/usr/sbin/nginx`. A missing
//! `target/distro/ngx_http_upstreamtop_module.so` is a failure that names
//! the command building it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use nginx_tests::nginx::{Nginx, NginxConf};
use nginx_tests::{artifacts, http};
use serde_json::Value;
use upstreamtop_table::histogram::{bucket_of, BUCKETS};
use upstreamtop_table::{Capacities, Latency, PeerStats, ProbeMeta, Responses, Snapshot, TableWriter};

const DISTRO_NGINX: &str = "/usr/sbin/nginx";
const APP_1: &str = "127.0.0.1:19201";
const APP_2: &str = "127.0.0.1:19202";

fn distro_nginx() -> Option<&'static Path> {
    let path = Path::new(DISTRO_NGINX);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("SKIPPED: {DISTRO_NGINX} not installed (apt-get install nginx-light)");
        None
    }
}

/// `nginx -v` says `nginx version: nginx/1.22.1` (on stderr).
fn nginx_version(binary: &Path) -> String {
    let out = std::process::Command::new(binary).arg("-v").output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    let version = text.trim().rsplit('/').next().unwrap_or_default().to_owned();
    assert!(!version.is_empty(), "no version in `{} -v`: {text}", binary.display());
    version
}

fn snapshot() -> Snapshot {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut buckets = vec![0u64; BUCKETS];
    buckets[bucket_of(3_000_000)] = 12;
    let peer = PeerStats {
        addr: APP_1.parse::<SocketAddr>().unwrap(),
        requests: 12,
        responses: Responses { class: [0, 10, 0, 0, 2], codes: vec![(200, 10), (500, 2)], codes_other: 0 },
        no_response: 0,
        sent_bytes: 1200,
        received_bytes: 34_000,
        conns: Default::default(),
        latency: Latency { buckets, sum_ns: 36_000_000, count: 12 },
        window: Default::default(),
        history: Vec::new(),
        first_seen_unix_ns: now - 10_000_000_000,
        last_seen_unix_ns: now - 1_000_000_000,
    };
    Snapshot {
        meta: ProbeMeta {
            pid: 777,
            started_unix_ns: now - 20_000_000_000,
            published_unix_ns: now,
            interval_ns: 300_000_000_000,
            publish_seq: 3,
            history_len: 2,
            interfaces: vec!["lo".into()],
            counters: Default::default(),
        },
        peers: vec![peer],
        routes: Vec::new(),
        recent: Vec::new(),
    }
}

#[test]
fn distro_nginx_loads_the_module_and_serves_the_endpoint() {
    let Some(binary) = distro_nginx() else { return };
    let so = artifacts::distro_module_so().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table");
    let conf = NginxConf::new(binary)
        .module(so)
        .table(&table)
        .upstream("app", &[format!("server {APP_1}"), format!("server {APP_2} backup")]);
    let nginx = Nginx::start(conf).unwrap();

    // No table yet: our JSON, 503, naming the table.
    let resp = http::get(&nginx.url("/upstreamtop")).unwrap();
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.header("Content-Type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&resp.body).expect("503 body is our JSON");
    assert!(body.to_string().contains(&table.display().to_string()), "{body}");

    let caps = Capacities { max_peers: 8, max_routes: 8, max_recent: 4, history_len: 2 };
    TableWriter::create(&table, caps).unwrap().publish(&snapshot()).unwrap();
    let resp = http::get(&nginx.url("/upstreamtop")).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let report: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(report["nginx_version"], nginx_version(binary), "version of the nginx it runs in");
    let peers = report["upstreams"]["app"]["peers"].as_array().expect("group app");
    let p1 = peers.iter().find(|p| p["server"] == APP_1).expect("APP_1");
    assert_eq!(p1["requests"], 12);
    assert_eq!(p1["responses"]["codes"]["200"], 10);
    assert_eq!(p1["responses"]["codes"]["500"], 2);
    let p2 = peers.iter().find(|p| p["server"] == APP_2).expect("backup listed");
    assert_eq!(p2["backup"], true);
    assert_eq!(p2["requests"], 0);
    assert_eq!(report["probe"]["pid"], 777);

    let problems = nginx.error_log_problems();
    assert!(problems.is_empty(), "{problems:#?}");
}
