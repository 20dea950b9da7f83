//! The reference simulator: a real nginx with the upstreamtop module in
//! front of three Rust backends, and a steady weighted load through it.
//!
//! ```text
//! client ──► nginx :8080 ──► upstream app      127.0.0.1:9001, :9002 (fast, keepalive)
//!                       └──► upstream checkout 127.0.0.1:9003 (/checkout, 60–160 ms, ~12% 5xx)
//! ```
//!
//! With `--netns` the backends live in a network namespace behind a veth
//! pair (10.200.<n>.2) instead of on loopback. Ctrl-C stops everything.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use nginx_tests::artifacts;
use nginx_tests::backend::{Backend, BackendBuilder, Profile};
use nginx_tests::load::{self, Headers, LoadSpec, Route};
use nginx_tests::netns::Netns;
use nginx_tests::nginx::{Nginx, NginxConf};

/// Run nginx + the upstreamtop module in front of three test backends under
/// a realistic load, so the probe and the dashboard have something to show.
#[derive(Parser, Debug)]
#[command(name = "simulate", version)]
struct Args {
    /// nginx worker processes.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Stop after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    duration: u64,
    /// Port nginx listens on (127.0.0.1).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Put the backends in a network namespace behind a veth pair (root).
    #[arg(long)]
    netns: bool,
    /// nginx binary [default: the vendored build under target/].
    #[arg(long)]
    nginx: Option<PathBuf>,
    /// The upstreamtop module .so [default: the one built for --nginx].
    #[arg(long)]
    module: Option<PathBuf>,
    /// Run nginx without the module (the probe still sees the traffic).
    #[arg(long, conflicts_with = "module")]
    no_module: bool,
    /// Table file the module reads (`upstreamtop_table`); the probe must
    /// write the same path.
    #[arg(long, default_value = "/run/upstreamtop/table")]
    table: PathBuf,
    /// Total request rate, req/s (0: as fast as possible).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Send browser-like headers (~1 KB request heads) instead of minimal ones.
    #[arg(long)]
    realistic_headers: bool,
    /// Client-side keepalive off: a new connection to nginx per request.
    #[arg(long)]
    no_keepalive: bool,
    /// Backend ports: app, app, checkout (tests pick free ones so a demo on
    /// the default ports can run alongside).
    #[arg(long, value_name = "APP1,APP2,CHECKOUT", default_value = "9001,9002,9003", value_parser = parse_ports)]
    backend_ports: [u16; 3],
    /// Loopback address the backends listen on (without --netns). Another
    /// 127.0.0.0/8 address lets a probe watch only them (`--only IP/32`)
    /// on a host where other programs use 127.0.0.1.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1", conflicts_with = "netns")]
    backend_ip: Ipv4Addr,
}

fn parse_ports(text: &str) -> Result<[u16; 3], String> {
    let ports = text
        .split(',')
        .map(|p| p.trim().parse::<u16>().ok().filter(|p| *p != 0))
        .collect::<Option<Vec<u16>>>()
        .ok_or_else(|| format!("`{text}`: expected three ports 1-65535, like 9001,9002,9003"))?;
    <[u16; 3]>::try_from(ports).map_err(|_| format!("`{text}`: expected exactly three ports, like 9001,9002,9003"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("install signal handler")?;
    }
    run(&args, &stop)
}

fn run(args: &Args, stop: &AtomicBool) -> Result<()> {
    let (nginx_bin, module) = pick_binaries(args)?;

    // Backends: on loopback, or inside a namespace (kept alive by `_ns`;
    // declared before the backends so it is dropped after them).
    let ns = if args.netns { Some(Netns::create().context("--netns")?) } else { None };
    let backend_ip: IpAddr = match &ns {
        Some(ns) => ns.ns_v4().into(),
        None => args.backend_ip.into(),
    };
    let start_backend = |port: u16, builder: BackendBuilder| -> Result<Backend> {
        let backend = match &ns {
            Some(ns) => ns.backend(backend_ip, port, builder),
            None => builder.start(SocketAddr::new(backend_ip, port)),
        };
        backend.with_context(|| format!("start backend on {backend_ip}:{port} (port busy? another simulate running?)"))
    };
    let app_builder = || {
        Backend::builder(Profile::fast().latency_ms(1, 4).body_size(180))
            .route("/static/", Profile::fast().latency_ms(0, 1).body_size(2048))
            .route("/healthz", Profile::fast().body_size(2))
    };
    let [app1_port, app2_port, checkout_port] = args.backend_ports;
    let app1 = start_backend(app1_port, app_builder())?;
    let app2 = start_backend(app2_port, app_builder())?;
    let checkout = start_backend(
        checkout_port,
        Backend::builder(
            Profile::fast()
                .latency_ms(60, 160)
                .error_rate(0.12)
                .error_statuses(&[500, 502, 503])
                .statuses(&[(201, 1)])
                .body_size(96),
        ),
    )?;

    let mut conf = NginxConf::new(&nginx_bin)
        .port(args.port)
        .workers(args.workers)
        .upstream(
            "app",
            &[
                format!("server {} max_fails=0", app1.addr()),
                format!("server {} max_fails=0", app2.addr()),
                "keepalive 32".to_owned(),
            ],
        )
        .upstream("checkout", &[format!("server {} max_fails=0", checkout.addr()), "keepalive 16".to_owned()])
        .extra_server(
            "location /checkout {\n    proxy_pass http://checkout;\n    proxy_http_version 1.1;\n    \
             proxy_set_header Connection \"\";\n}\nlocation / {\n    proxy_pass http://app;\n    \
             proxy_http_version 1.1;\n    proxy_set_header Connection \"\";\n}",
        );
    if let Some(module) = &module {
        conf = conf.module(module).table(&args.table);
    }
    let nginx = Nginx::start(conf).with_context(|| format!("start nginx on 127.0.0.1:{}", args.port))?;

    print_banner(args, &nginx, &module, ns.as_ref(), [&app1, &app2, &checkout]);

    let routes = vec![
        Route::get("/api/orders", 30),
        Route::get("/api/users", 20),
        Route::get("/healthz", 10),
        Route::post("/checkout", 10, br#"{"cart":[{"sku":"A-1","qty":2}],"pay":"card"}"#),
        Route::get("/static/app.js", 20),
        Route::get("/", 10),
    ];
    let until = if args.duration == 0 {
        load::Until::Stopped
    } else {
        load::Until::Elapsed(Duration::from_secs(args.duration))
    };
    let mut spec = LoadSpec::new(nginx.addr(), routes)
        .concurrency(args.concurrency)
        .keepalive(!args.no_keepalive)
        .headers(if args.realistic_headers { Headers::Realistic } else { Headers::Minimal })
        .rate(Some(args.rate));
    spec.until = until;

    let started = Instant::now();
    let result = std::thread::scope(|scope| {
        let load = scope.spawn(|| load::run_until(&spec, stop));
        // Progress every 5 s while the load runs.
        let mut last = (0u64, Instant::now());
        while !load.is_finished() {
            std::thread::sleep(Duration::from_millis(200));
            if last.1.elapsed() >= Duration::from_secs(5) {
                let served = app1.total() + app2.total() + checkout.total();
                let rate = (served - last.0) as f64 / last.1.elapsed().as_secs_f64();
                println!(
                    "[{:>5.0}s] backends served {served} ({rate:.0} req/s): app {}+{}, checkout {} ({} errors)",
                    started.elapsed().as_secs_f64(),
                    app1.total(),
                    app2.total(),
                    checkout.total(),
                    checkout.by_status().iter().filter(|(s, _)| **s >= 500).map(|(_, n)| n).sum::<u64>(),
                );
                last = (served, Instant::now());
            }
        }
        load.join().expect("load thread")
    })?;

    println!(
        "\nstopping. client saw {} responses in {:.1}s, by status {:?}, {} errors",
        result.responses(),
        result.elapsed.as_secs_f64(),
        result.by_status,
        result.errors
    );
    for (name, backend) in [("app", &app1), ("app", &app2), ("checkout", &checkout)] {
        println!("  {name} {} served {} by status {:?}", backend.addr(), backend.total(), backend.by_status());
    }
    let problems = nginx.error_log_problems();
    if !problems.is_empty() {
        println!("nginx error log problems:\n  {}", problems.join("\n  "));
    }
    // Drops (in reverse order): nginx, backends, namespace.
    Ok(())
}

/// nginx + matching module: an explicit pair, the vendored build with its
/// module, or the distro nginx with the module from build-distro.sh.
fn pick_binaries(args: &Args) -> Result<(PathBuf, Option<PathBuf>)> {
    let nginx = match &args.nginx {
        Some(path) => path.clone(),
        None => artifacts::vendored_nginx()?,
    };
    if args.no_module {
        return Ok((nginx, None));
    }
    let module = match &args.module {
        Some(path) => path.clone(),
        None if nginx.starts_with("/usr/sbin") => artifacts::distro_module_so()?,
        None => artifacts::module_so()?,
    };
    if !module.is_file() {
        bail!("module {} does not exist", module.display());
    }
    Ok((nginx, Some(module)))
}

fn print_banner(args: &Args, nginx: &Nginx, module: &Option<PathBuf>, ns: Option<&Netns>, backends: [&Backend; 3]) {
    let status_url = nginx.url("/upstreamtop");
    println!(
        "simulate: nginx {} (pid {}, {} workers) on {}",
        nginx.conf().binary.display(),
        nginx.pid(),
        args.workers,
        nginx.url("/")
    );
    println!("  config: {}/conf/nginx.conf", nginx.prefix().display());
    match module {
        Some(m) => println!("  module: {} (table {})", m.display(), args.table.display()),
        None => println!("  module: none (--no-module)"),
    }
    println!("  upstream app:      {}, {}", backends[0].addr(), backends[1].addr());
    println!("  upstream checkout: {}", backends[2].addr());
    if let Some(ns) = ns {
        println!("  backends in netns {} (veth {} <-> {})", ns.name(), ns.host_if(), ns.ns_if());
    }
    println!(
        "  load: {} req/s over {} connections ({}), {}",
        args.rate,
        args.concurrency,
        if args.no_keepalive { "no keepalive" } else { "keepalive" },
        if args.duration == 0 { "until Ctrl-C".to_owned() } else { format!("for {} s", args.duration) }
    );
    let root = artifacts::workspace_root();
    println!("\nnext, in another terminal:");
    println!(
        "  sudo {}/target/release/upstreamtop-probe --table {} --ignore-port {}",
        root.display(),
        args.table.display(),
        nginx.port()
    );
    println!("  {}/target/release/upstreamtop --url {status_url}", root.display());
    println!("  curl -s {status_url} | python3 -m json.tool");
    println!("  curl -s '{status_url}?format=prometheus'\n");
}
