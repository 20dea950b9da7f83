//! Connection attempts that fail, end to end (issue 14, point 5): real
//! vendored nginx with the module, the real probe attached with tcx on the
//! host end of a veth pair, backends in a network namespace.
//!
//! - A backend address whose SYNs are silently dropped: the kernel
//!   retransmits nginx's SYN until nginx (`proxy_connect_timeout`) or the
//!   kernel (`tcp_syn_retries`) gives up. However many SYNs crossed the
//!   wire, the attempt is ONE `failed` connection, counted once the next
//!   retransmission is overdue, and never again afterwards.
//! - A backend port nothing listens on: each attempt is refused with an RST,
//!   one `failed` each: exactly as many as nginx's access log has attempts.
//!
//! Ground truth: nginx's access log (`$upstream_addr`, `$upstream_status`),
//! the SYNs the backend namespace dropped (its `Ip: InAddrErrors`), and the
//! backend that answers.
//!
//! Needs root (tcx, namespaces). Without root the test says so and passes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use nginx_tests::backend::{Backend, Profile};
use nginx_tests::netns::Netns;
use nginx_tests::nginx::{Nginx, NginxConf};
use nginx_tests::probe::Probe;
use nginx_tests::upstream_log::{self, LOG_FORMAT};
use nginx_tests::{http, prereq};
use upstreamtop_table::Snapshot;

/// nginx gives up on both blackholed backends while the kernel still
/// retransmits its SYN: with this host's defaults (`tcp_syn_retries` 6 +
/// `tcp_syn_linear_timeouts` 4) SYNs go out at 0, 1, 2, 3, 4, 5, 7, 11, 19
/// and 35 s and the kernel would give up at 67 s. The two attempts end at
/// different points of that backoff (the last gap 4 s, then 16 s): the
/// probe counts each once its next retransmission is overdue (~19 s and
/// ~68 s after the start).
const SHORT_CONNECT_TIMEOUT: &str = "12s";
const LONG_CONNECT_TIMEOUT: &str = "40s";
/// Refused attempts through nginx.
const REFUSED: u64 = 25;
/// Requests to the backend that answers.
const ANSWERED: u64 = 30;
/// Upper bound on the wait, after nginx gave up, for the probe to count
/// the attempts (the long one's next SYN is due ~27 s after nginx's 504).
const SETTLE: Duration = Duration::from_secs(60);
/// How long a counted failure is watched for a second count.
const HOLD: Duration = Duration::from_secs(6);

/// `Ip: InAddrErrors` of the calling thread's namespace: packets to an
/// address that is not local, which a namespace that does not forward
/// drops without an answer.
fn in_addr_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("read snmp");
    let mut lines = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (lines.next().expect("Ip: names"), lines.next().expect("Ip: values"));
    let i = names.split_whitespace().position(|n| n == "InAddrErrors").expect("InAddrErrors");
    values.split_whitespace().nth(i).and_then(|v| v.parse().ok()).expect("InAddrErrors value")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An address of the namespace's subnet that nobody holds, reachable at
/// layer 2: the host sends its frames to the namespace's end of the veth
/// (a permanent neighbour entry, so no ARP is needed), and the namespace,
/// which does not forward, drops them silently. SYNs to it cross the link
/// the probe watches and are never answered, with no firewall rule.
fn blackhole(ns: &Netns) -> Ipv4Addr {
    let link = run(Command::new("ip").args(["-n", ns.name(), "-o", "link", "show", ns.ns_if()]));
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {link:?}"))
        .to_owned();
    let [a, b, c, _] = ns.ns_v4().octets();
    let addr = Ipv4Addr::new(a, b, c, 9);
    let forwarding = ns.run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")).unwrap().unwrap();
    assert_eq!(forwarding.trim(), "0", "the namespace must not forward");
    run(Command::new("ip").args([
        "neigh",
        "replace",
        &addr.to_string(),
        "lladdr",
        &mac,
        "dev",
        ns.host_if(),
        "nud",
        "permanent",
    ]));
    addr
}

/// A port of `ip` in the namespace that nothing listens on (bound, then
/// released): connecting to it is refused with an RST.
fn closed_port(ns: &Netns, ip: Ipv4Addr) -> SocketAddr {
    ns.run(move || TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()))
        .unwrap()
        .expect("bind a port in the namespace")
}

/// A peer's connection and exchange figures, from the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Conns {
    failed: u64,
    opened: u64,
    requests: u64,
    no_response: u64,
}

fn from_table(snap: &Snapshot, addr: SocketAddr) -> Option<Conns> {
    let p = snap.peers.iter().find(|p| p.addr == addr)?;
    Some(Conns { failed: p.conns.failed, opened: p.conns.opened, requests: p.requests, no_response: p.no_response })
}

/// The same figures from the module's JSON (`upstreams.<group>.peers[]`).
fn from_json(doc: &serde_json::Value, group: &str, addr: SocketAddr) -> Option<Conns> {
    let server = addr.to_string();
    let peer = doc["upstreams"][group]["peers"].as_array()?.iter().find(|p| p["server"] == server.as_str())?;
    Some(Conns {
        failed: peer["connections"]["failed"].as_u64()?,
        opened: peer["connections"]["opened"].as_u64()?,
        requests: peer["requests"].as_u64()?,
        no_response: peer["no_response"].as_u64()?,
    })
}

fn json(nginx: &Nginx) -> serde_json::Value {
    let resp = http::get(&nginx.url("/upstreamtop")).expect("GET /upstreamtop");
    assert_eq!(resp.status, 200, "{}", resp.text());
    serde_json::from_slice(&resp.body).expect("JSON")
}

/// A location for `group` with its own connect timeout.
fn location(prefix: &str, group: &str, timeout: &str) -> String {
    format!(
        "location {prefix} {{ proxy_pass http://{group}/; proxy_connect_timeout {timeout}; \
         proxy_read_timeout 60s; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}"
    )
}

#[test]
fn unanswered_and_refused_connects_are_one_failure_each() {
    if !prereq::root_or_skip("unanswered_and_refused_connects_are_one_failure_each", "tcx programs, network namespaces")
    {
        return;
    }
    let started = Instant::now();
    let ns = Netns::create().unwrap();
    let hole = blackhole(&ns);
    let short = SocketAddr::new(IpAddr::V4(hole), 8081);
    let long = SocketAddr::new(IpAddr::V4(hole), 8082);
    let refused = closed_port(&ns, ns.ns_v4());
    let app = ns.backend(ns.ns_v4().into(), 0, Backend::builder(Profile::fast())).unwrap();

    let mut probe = Probe::start(&["--iface", ns.host_if(), "--interval", "250ms"]).unwrap();
    let conf = NginxConf::vendored_with_module()
        .unwrap()
        .workers(2)
        .table(probe.table_path())
        .upstream_servers("short", &[short])
        .upstream_servers("long", &[long])
        .upstream_servers("refused", &[refused])
        .upstream_servers("app", &[app.addr()])
        .extra_http(LOG_FORMAT)
        .extra_server("access_log logs/upstreams.log upstreams;")
        .extra_server(&location("/short/", "short", SHORT_CONNECT_TIMEOUT))
        .extra_server(&location("/long/", "long", LONG_CONNECT_TIMEOUT));
    let nginx = Nginx::start(conf).unwrap();
    let dropped_before = ns.run(in_addr_errors).unwrap();

    // One request to each blackholed backend, waiting as long as nginx
    // does; refused and answered requests meanwhile.
    let (short_resp, long_resp, hole_time) = std::thread::scope(|scope| {
        let ask = |target: &'static str| {
            let addr = nginx.addr();
            scope.spawn(move || {
                let t = Instant::now();
                let mut client = http::Client::new(addr).timeout(Duration::from_secs(90));
                (client.get(target).expect(target), t.elapsed())
            })
        };
        let (short_thread, long_thread) = (ask("/short/x"), ask("/long/x"));
        let mut client = nginx.client();
        for i in 0..REFUSED {
            let resp = client.get(&format!("/p/refused/r/{i}")).unwrap();
            assert_eq!(resp.status, 502, "a refused backend: {}", resp.text());
        }
        for i in 0..ANSWERED {
            assert_eq!(client.get(&format!("/p/app/a/{i}")).unwrap().status, 200);
        }
        let (short_resp, short_time) = short_thread.join().unwrap();
        let (long_resp, long_time) = long_thread.join().unwrap();
        (short_resp, long_resp, short_time.max(long_time))
    });
    let syns = ns.run(in_addr_errors).unwrap() - dropped_before;
    let now = probe.wait_publish().expect("probe publishes");
    eprintln!(
        "blackholed: /short answered {} ({SHORT_CONNECT_TIMEOUT}), /long answered {} \
         ({LONG_CONNECT_TIMEOUT}) after {hole_time:.1?}; {syns} SYNs dropped in the namespace; \
         the table then: short {:?}, long {:?}",
        short_resp.status,
        long_resp.status,
        from_table(&now, short),
        from_table(&now, long),
    );
    // nginx gave up on the short timeout while the kernel retransmitted.
    assert_eq!(short_resp.status, 504, "{}", short_resp.text());
    // The long one too here; on a host whose kernel gives up on a SYN
    // sooner (fewer `tcp_syn_retries`), its error comes first: a 502.
    assert!(matches!(long_resp.status, 502 | 504), "{}", long_resp.text());
    // The SYNs really were retransmitted: at least 4 per attempt within
    // 12 s whatever the backoff (18 here: 8 + 10).
    assert!(syns >= 2 * 4, "only {syns} SYNs reached the namespace: were they retransmitted?");

    // Ground truth: nginx's log, one attempt per blackholed backend, every
    // refused one logged.
    let lines = (2 + REFUSED + ANSWERED) as usize;
    let log = upstream_log::read(&nginx.prefix().join("logs/upstreams.log"), lines).expect("nginx's access log");
    let side = |addr: SocketAddr| log.get(&addr).cloned().unwrap_or_default();
    assert_eq!(side(short).statuses, BTreeMap::from([(504, 1)]), "{log:?}");
    assert_eq!(side(long).statuses, BTreeMap::from([(long_resp.status, 1)]), "{log:?}");
    assert_eq!(side(refused).statuses, BTreeMap::from([(502, REFUSED)]), "{log:?}");
    assert_eq!(side(app.addr()).statuses, BTreeMap::from([(200, ANSWERED)]), "{log:?}");
    assert_eq!(app.total(), ANSWERED);

    let want = [
        ("short", short, Conns { failed: side(short).attempts, ..Conns::default() }),
        ("long", long, Conns { failed: side(long).attempts, ..Conns::default() }),
        ("refused", refused, Conns { failed: side(refused).attempts, ..Conns::default() }),
        ("app", app.addr(), Conns { opened: app.connections(), requests: app.total(), ..Conns::default() }),
    ];
    let matches = |snap: &Snapshot| want.iter().all(|(_, a, w)| from_table(snap, *a).as_ref() == Some(w));

    // Until the sweeper gives up on the unanswered attempts (their next
    // SYN overdue), the table may lack them; then every figure is exact.
    let snap = probe.wait_until(SETTLE, matches).expect("probe publishes");
    let counted_after = started.elapsed();
    let doc = json(&nginx);
    let mut report = String::new();
    for (group, addr, w) in &want {
        let table = from_table(&snap, *addr);
        let json = from_json(&doc, group, *addr);
        report.push_str(&format!("  {group} {addr}: want {w:?}\n    table {table:?}\n    json  {json:?}\n"));
    }
    eprintln!("all counted {counted_after:.1?} after the start:\n{report}");
    for (group, addr, w) in &want {
        assert_eq!(from_table(&snap, *addr).as_ref(), Some(w), "{group} {addr}: table\n{report}");
        assert_eq!(from_json(&doc, group, *addr).as_ref(), Some(w), "{group} {addr}: JSON\n{report}");
    }

    // Later sweeps find nothing more to count: no attempt counts twice.
    let until = Instant::now() + HOLD;
    let mut publishes = 0;
    while Instant::now() < until {
        let snap = probe.wait_publish().expect("probe publishes");
        publishes += 1;
        for (group, addr, w) in &want {
            assert_eq!(
                from_table(&snap, *addr).as_ref(),
                Some(w),
                "{group} {addr}: table, {publishes} publishes later"
            );
        }
    }
    let doc = json(&nginx);
    for (group, addr, w) in &want {
        assert_eq!(from_json(&doc, group, *addr).as_ref(), Some(w), "{group} {addr}: JSON {HOLD:?} later");
    }
    let c = snap.meta.counters;
    assert_eq!((c.conn_table_full, c.events_dropped), (0, 0), "{c:?}");
    // nginx's own word for the short one: a timeout while connecting.
    assert!(
        nginx.error_log().contains("upstream timed out (110: Connection timed out) while connecting to upstream"),
        "{}",
        nginx.error_log()
    );
    assert!(nginx.error_log_problems().is_empty(), "{:?}", nginx.error_log_problems());
    eprintln!("unchanged over {publishes} more publishes; test time {:.1?}", started.elapsed());
}
