//! Part 3: exactness at peak. wrk at full speed through nginx for a fixed
//! time, then the endpoint's per-peer requests and per-code responses
//! against what the backends themselves counted. Minimal and realistic
//! headers; loopback and backends in a network namespace behind a veth pair.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::figures::{Figure, Target};
use super::wrk::{self, WrkSpec};
use super::Settings;
use crate::backend::{Backend, Profile};
use crate::http;
use crate::netns::Netns;
use crate::nginx::{free_port, Nginx, NginxConf};
use crate::probe::Probe;

/// How long the table may take to account for traffic that already ended.
const SETTLE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    Loopback,
    Netns,
}

pub fn run(s: &Settings) -> Vec<Figure> {
    let mut out = Vec::new();
    for topo in [Topology::Loopback, Topology::Netns] {
        for realistic in [false, true] {
            let name = format!(
                "{}, {} headers",
                if topo == Topology::Loopback { "loopback" } else { "netns/veth" },
                if realistic { "realistic" } else { "minimal" }
            );
            let id = format!(
                "exact.{}_{}",
                if topo == Topology::Loopback { "loopback" } else { "netns" },
                if realistic { "realistic" } else { "minimal" }
            );
            let label = format!("count difference endpoint vs backends, {name}");
            let fig = match scenario(s, topo, realistic) {
                Ok((diff, note)) => Figure::new(3, &id, &label, diff as f64, "", Target::Equal(0.0)).note(note),
                Err(e) => Figure::failed(3, &id, &label, "", Target::Equal(0.0), &format!("{e:#}")),
            };
            eprintln!("bench: exactness {name}: {:?} {}", fig.value, fig.note);
            out.push(fig);
        }
    }
    out
}

fn profile() -> Profile {
    // Several exact codes, so per-code exactness is tested, not just totals.
    Profile::fast()
        .statuses(&[(200, 90), (201, 4), (404, 4), (304, 2)])
        .error_rate(0.02)
        .error_statuses(&[500, 503])
        .body_size(200)
}

/// Returns (sum of absolute differences, note).
fn scenario(s: &Settings, topo: Topology, realistic: bool) -> Result<(u64, String)> {
    super::check_interrupt()?;
    let ns = match topo {
        Topology::Netns => Some(Netns::create().context("create netns")?),
        Topology::Loopback => None,
    };
    let backends = match &ns {
        Some(ns) => vec![
            ns.backend(ns.ns_v4().into(), 0, Backend::builder(profile()))?,
            ns.backend(ns.ns_v4().into(), 0, Backend::builder(profile()))?,
        ],
        None => vec![Backend::loopback(profile())?, Backend::loopback(profile())?],
    };
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let port_s = port.to_string();
    let args: Vec<&str> = match &ns {
        Some(ns) => vec!["--iface", ns.host_if(), "--interval", "250ms"],
        None => vec!["--iface", "lo", "--ignore-port", &port_s, "--interval", "250ms"],
    };
    let probe = Probe::start(&args).context("start probe")?;
    let addrs: Vec<_> = backends.iter().map(Backend::addr).collect();
    let conf = NginxConf::vendored_with_module()?
        .port(port)
        .workers(1)
        .table(probe.table_path())
        .extra_main(s.nginx_main())
        .upstream_servers("app", &addrs)
        // wrk drops its connections with requests in flight when it stops.
        // By default nginx then abandons those upstream exchanges (499) and
        // closes the connection before the backend's answer arrives: the
        // backend has counted a 200 that nginx never read, and the probe
        // rightly sees an exchange that ended without a response. Letting
        // nginx finish them keeps "what the backend served" the ground
        // truth for every request.
        .extra_http("proxy_ignore_client_abort on;");
    let nginx = Nginx::start(conf).context("start nginx")?;

    let mut spec = WrkSpec::new(&nginx.url("/p/app/api/orders"), s.exact_run);
    spec.connections = s.connections;
    spec.cpus = s.wrk_cpus();
    if realistic {
        spec.headers = super::realistic_headers();
    }
    let got = wrk::run(&spec)?;

    // Ground truth: what each backend served, per code — read afresh each
    // time, since requests nginx had in flight when wrk stopped are still
    // being answered for a moment.
    let truth = || -> Vec<(String, u64, BTreeMap<u16, u64>)> {
        backends.iter().map(|b| (b.addr().to_string(), b.total(), b.by_status())).collect()
    };
    let deadline = Instant::now() + SETTLE;
    let mut client = nginx.client();
    let (diff, detail, want) = loop {
        let want = truth();
        let (diff, detail) = difference(&mut client, &want)?;
        if (diff == 0 && want == truth()) || Instant::now() > deadline {
            break (diff, detail, want);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let problems = nginx.error_log_problems();
    if !problems.is_empty() {
        bail!("nginx error log: {problems:?}");
    }
    drop(probe);
    let served: u64 = want.iter().map(|w| w.1).sum();
    let mut note = format!(
        "{served} requests served in {} s ({:.0} req/s), codes {:?}",
        s.exact_run.as_secs(),
        got.requests_per_sec,
        sum_codes(&want)
    );
    if !detail.is_empty() {
        note.push_str(&format!("; endpoint − backend: {detail}"));
    }
    Ok((diff, note))
}

fn sum_codes(want: &[(String, u64, BTreeMap<u16, u64>)]) -> BTreeMap<u16, u64> {
    let mut out = BTreeMap::new();
    for (_, _, codes) in want {
        for (c, n) in codes {
            *out.entry(*c).or_insert(0) += n;
        }
    }
    out
}

/// Σ |endpoint − backend| over each peer's requests and each exact code,
/// and the non-zero differences spelled out (endpoint minus backend).
fn difference(client: &mut http::Client, want: &[(String, u64, BTreeMap<u16, u64>)]) -> Result<(u64, String)> {
    let resp = client.get("/upstreamtop?upstream=app&recent=0&history=0").context("GET /upstreamtop")?;
    if resp.status != 200 {
        bail!("/upstreamtop answered {}: {}", resp.status, resp.text());
    }
    let doc: serde_json::Value = serde_json::from_slice(&resp.body).context("endpoint JSON")?;
    compare(&doc, want)
}

/// [`difference`] on an already parsed answer.
pub(super) fn compare(doc: &serde_json::Value, want: &[(String, u64, BTreeMap<u16, u64>)]) -> Result<(u64, String)> {
    let peers = doc["upstreams"]["app"]["peers"].as_array().context("no upstreams.app.peers")?;
    let mut diff = 0;
    let mut detail = Vec::new();
    for (server, total, codes) in want {
        let peer = peers.iter().find(|p| p["server"] == server.as_str());
        let requests = peer.and_then(|p| p["requests"].as_u64()).unwrap_or(0);
        diff += requests.abs_diff(*total);
        if requests != *total {
            detail.push(format!("{server} requests {:+}", requests as i64 - *total as i64));
        }
        if let Some(n) = peer.and_then(|p| p["no_response"].as_u64()).filter(|n| *n > 0) {
            detail.push(format!("{server} no_response {n}"));
        }
        let got_codes: BTreeMap<u16, u64> = peer
            .and_then(|p| p["responses"]["codes"].as_object())
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.parse().ok()?, v.as_u64()?))).collect())
            .unwrap_or_default();
        for code in codes.keys().chain(got_codes.keys()).collect::<std::collections::BTreeSet<_>>() {
            let a = codes.get(code).copied().unwrap_or(0);
            let b = got_codes.get(code).copied().unwrap_or(0);
            diff += a.abs_diff(b);
            if a != b {
                detail.push(format!("{server} {code}: {:+}", b as i64 - a as i64));
            }
        }
    }
    Ok((diff, detail.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn want() -> Vec<(String, u64, BTreeMap<u16, u64>)> {
        vec![
            ("127.0.0.1:1".into(), 10, BTreeMap::from([(200, 9), (503, 1)])),
            ("127.0.0.1:2".into(), 5, BTreeMap::from([(200, 5)])),
        ]
    }

    #[test]
    fn equal_counts_give_zero() {
        let doc = json!({"upstreams": {"app": {"peers": [
            {"server": "127.0.0.1:1", "requests": 10, "responses": {"codes": {"200": 9, "503": 1}}},
            {"server": "127.0.0.1:2", "requests": 5, "responses": {"codes": {"200": 5}}},
        ]}}});
        assert_eq!(compare(&doc, &want()).unwrap(), (0, String::new()));
    }

    #[test]
    fn every_difference_counts_both_ways_and_is_spelled_out() {
        // Peer 1: one request too many, a 503 seen as 502. Peer 2 missing.
        let doc = json!({"upstreams": {"app": {"peers": [
            {"server": "127.0.0.1:1", "requests": 11, "no_response": 1,
             "responses": {"codes": {"200": 9, "502": 1}}},
        ]}}});
        let (diff, detail) = compare(&doc, &want()).unwrap();
        // 1 (requests) + 1 (502) + 1 (503) for peer 1; 5 + 5 for peer 2.
        assert_eq!(diff, 13, "{detail}");
        assert!(detail.contains("127.0.0.1:1 requests +1"), "{detail}");
        assert!(detail.contains("127.0.0.1:1 503: -1") && detail.contains("127.0.0.1:1 502: +1"), "{detail}");
        assert!(detail.contains("127.0.0.1:1 no_response 1"), "{detail}");
        assert!(detail.contains("127.0.0.1:2 requests -5"), "{detail}");
    }

    #[test]
    fn an_answer_without_the_group_is_an_error() {
        assert!(compare(&json!({"upstreams": {}}), &want()).is_err());
    }
}
