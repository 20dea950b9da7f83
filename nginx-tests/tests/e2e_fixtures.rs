//! The fixtures themselves work: nginx starts, answers, reloads, proxies.

use nginx_tests::{artifacts, http, nginx};

#[test]
fn nginx_starts_answers_health_and_reloads() {
    let conf = nginx::NginxConf::new(artifacts::plain_nginx().unwrap()).workers(2);
    let mut nginx = nginx::Nginx::start(conf).unwrap();
    let resp = http::get(&nginx.url("/health")).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "ok\n");
    let before = nginx.worker_pids();
    assert_eq!(before.len(), 2);
    nginx.reload().unwrap();
    let after = nginx.worker_pids();
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|p| !before.contains(p)));
    let resp = nginx.client().get("/nowhere").unwrap();
    assert_eq!(resp.status, 404);
    nginx.stop().unwrap();
    assert!(http::get(&nginx.url("/health")).is_err());
}

#[test]
fn check_config_reports_errors() {
    let good = nginx::NginxConf::new(artifacts::plain_nginx().unwrap());
    let (ok, stderr) = nginx::check_config(&good);
    assert!(ok, "{stderr}");
    let bad = good.extra_server("no_such_directive on;");
    let (ok, stderr) = nginx::check_config(&bad);
    assert!(!ok);
    assert!(stderr.contains("no_such_directive"), "{stderr}");
}

use std::net::SocketAddr;

use nginx_tests::backend::{Backend, Profile, Served};
use nginx_tests::load::{self, Headers, LoadSpec, Route};
use nginx_tests::netns::Netns;

fn key(method: &str, path: &str, status: u16) -> Served {
    Served { method: method.into(), path: path.into(), status }
}

#[test]
fn backend_counts_what_a_client_sent() {
    let backend = Backend::builder(Profile::fast().body_size(100))
        .route("/slow", Profile::fast().latency_ms(5, 10).statuses(&[(201, 1)]))
        .start("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let mut client = http::Client::new(backend.addr());
    for _ in 0..3 {
        let resp = client.get("/a?x=1").unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body.len(), 100);
    }
    assert_eq!(client.post("/slow/1", "hello").unwrap().status, 201);
    let forced = http::Request::get("/f").header("X-Backend-Status", "418");
    assert_eq!(client.send(&forced).unwrap().status, 418);
    let interim = http::Request::get("/i").header("X-Backend-Interim", "103");
    assert_eq!(client.send(&interim).unwrap().status, 200);
    assert_eq!(client.connects(), 1, "keepalive reuses one connection");
    let mut closing = http::Client::new(backend.addr()).keepalive(false);
    closing.get("/a").unwrap();
    closing.get("/a").unwrap();
    assert_eq!(closing.connects(), 2);

    let served = backend.served();
    assert_eq!(served.len(), 4, "{served:?}");
    assert_eq!(served[&key("GET", "/a", 200)], 5);
    assert_eq!(served[&key("POST", "/slow/1", 201)], 1);
    assert_eq!(served[&key("GET", "/f", 418)], 1);
    assert_eq!(served[&key("GET", "/i", 200)], 1);
    assert_eq!(backend.total(), 8);
    assert_eq!(backend.connections(), 3);
}

#[test]
fn nginx_proxies_to_backends_and_counts_match() {
    let profile = Profile::fast().error_rate(0.2).statuses(&[(200, 8), (404, 1)]);
    let b1 = Backend::loopback(profile.clone()).unwrap();
    let b2 = Backend::loopback(profile).unwrap();
    let conf = nginx::NginxConf::new(artifacts::plain_nginx().unwrap())
        .workers(2)
        .upstream_servers("app", &[b1.addr(), b2.addr()]);
    let nginx = nginx::Nginx::start(conf).unwrap();
    let routes = vec![
        Route::get("/p/app/api/orders", 5),
        Route::get("/p/app/api/users?id=7", 3),
        Route::post("/p/app/checkout", 2, b"{\"cart\":1}"),
    ];
    for headers in [Headers::Minimal, Headers::Realistic] {
        let spec = LoadSpec::new(nginx.addr(), routes.clone()).requests(1000).concurrency(8).headers(headers);
        let got = load::run(&spec).unwrap();
        assert_eq!(got.errors, 0, "{:?}", got.error_samples);
        assert_eq!(got.responses(), 1000);
        assert_eq!(
            got.by_route.keys().filter(|k| k.1 == "/p/app/api/orders").map(|k| got.by_route[k]).sum::<u64>(),
            500
        );
    }
    // Ground truth: what the backends served equals what the client got.
    let mut served_by_status = b1.by_status();
    for (status, n) in b2.by_status() {
        *served_by_status.entry(status).or_insert(0) += n;
    }
    assert_eq!(served_by_status.values().sum::<u64>(), 2000);
    assert!(b1.total() > 0 && b2.total() > 0, "round robin reaches both");
    let mut routes_served = b1.by_route();
    for (route, n) in b2.by_route() {
        *routes_served.entry(route).or_insert(0) += n;
    }
    assert_eq!(routes_served[&("GET".into(), "/api/orders".into())], 1000);
    assert_eq!(routes_served[&("GET".into(), "/api/users".into())], 600);
    assert_eq!(routes_served[&("POST".into(), "/checkout".into())], 400);
    assert!(nginx.error_log_problems().is_empty(), "{:?}", nginx.error_log_problems());
}

#[test]
fn netns_backend_is_reachable_through_nginx() {
    if let Err(e) = nginx_tests::netns::check_support() {
        eprintln!("skipping: {e:#}");
        return;
    }
    let ns = Netns::create().unwrap();
    let v4 = ns.backend(ns.ns_v4().into(), 0, Backend::builder(Profile::fast())).unwrap();
    let v6 = ns.backend(ns.ns_v6().into(), 0, Backend::builder(Profile::fast())).unwrap();
    let conf = nginx::NginxConf::new(artifacts::plain_nginx().unwrap())
        .upstream_servers("v4", &[v4.addr()])
        .upstream_servers("v6", &[v6.addr()]);
    let nginx = nginx::Nginx::start(conf).unwrap();
    let mut client = nginx.client();
    for i in 0..10 {
        assert_eq!(client.get(&format!("/p/v4/item/{i}")).unwrap().status, 200);
        assert_eq!(client.get("/p/v6/x").unwrap().status, 200);
    }
    assert_eq!(v4.total(), 10);
    assert_eq!(v6.served()[&key("GET", "/x", 200)], 10);
    // The backend really lives in the namespace: not reachable from the
    // host's loopback on its port.
    let loopback: SocketAddr = ([127, 0, 0, 1], v4.addr().port()).into();
    assert!(std::net::TcpStream::connect(loopback).is_err());
    let name = ns.name().to_owned();
    drop(v4);
    drop(v6);
    drop(ns);
    let list = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&name), "namespace removed");
}

#[test]
fn vendored_nginx_loads_the_module() {
    let conf = match nginx::NginxConf::vendored_with_module() {
        Ok(conf) => conf,
        Err(e) => panic!("{e:#}"),
    };
    let missing_table = std::env::temp_dir().join(format!("nginx-tests-no-table-{}", std::process::id()));
    let nginx = nginx::Nginx::start(conf.table(&missing_table).workers(2)).unwrap();
    assert!(nginx.conf_text().contains("load_module"));
    assert_eq!(http::get(&nginx.url("/health")).unwrap().status, 200);
    // No probe has written the table: the endpoint must answer (503), not crash.
    let resp = http::get(&nginx.url("/upstreamtop")).unwrap();
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(nginx.error_log_problems().is_empty(), "{:?}", nginx.error_log_problems());
}
