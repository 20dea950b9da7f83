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
