//! `bench`: upstreamtop's benchmark suite (`./build.sh bench`). Prints one
//! table of figures with their targets and writes them as JSON
//! (`target/bench/latest.json` by default). Needs root (tcx, netns).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use nginx_tests::artifacts;
use nginx_tests::bench::{self, figures, Settings};

/// Benchmarks: probe overhead on nginx, BPF cost per run, exactness at
/// peak, endpoint cost, probe CPU/memory, scale, exactness over an impaired
/// link.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Short smoke version (seconds, not minutes): one pair per comparison,
    /// 1 s runs, a small scale case. Figures are not meaningful.
    #[arg(long)]
    quick: bool,
    /// Pin nginx's worker to CPU 0 (worker_cpu_affinity) and wrk to CPU 1
    /// (taskset): steadier figures on a 2-core machine.
    #[arg(long)]
    pin: bool,
    /// Only these parts, comma separated: 1 overhead, 2 BPF cost, 3
    /// exactness, 4 endpoint, 5 probe cost, 6 scale, 7 exactness over an
    /// impaired link (1, 2 and 5 share a setup; without 1, part 1 is not
    /// measured).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
    /// Where to write the JSON [default: <target>/bench/latest.json, with
    /// --quick <target>/bench/quick.json].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override the number of interleaved pairs (parts 1 and 4).
    #[arg(long)]
    pairs: Option<usize>,
    /// Override the length of one run of a pair, in seconds.
    #[arg(long)]
    run_secs: Option<u64>,
    /// Override the number of attached/detached block pairs of part 1's
    /// target figure (12; more pairs narrow its 95% interval).
    #[arg(long)]
    blocks: Option<usize>,
    /// What part 1's "attached" blocks attach: the probe, or for checking
    /// the method, empty tcx programs (the hooks' own cost) or nothing (the
    /// probe started and stopped before the block: an A/A check). Anything
    /// but the probe is reported without a target.
    #[arg(long, value_enum, default_value_t = bench::Attach::Probe)]
    attach: bench::Attach,
    /// Another upstreamtop-probe binary (e.g. an older build) to compare
    /// with this build's in part 2: instead of its separate runs, one wrk
    /// run alternating the two probes in pairs of blocks (A B, B A, …), both
    /// started with the flags both understand (from PATH --help). Reports
    /// both BPF times per proxied request net of the empty program, with
    /// 95% intervals, and their ratio this build / baseline against a +15%
    /// budget.
    #[arg(long, value_name = "PATH")]
    baseline_probe: Option<PathBuf>,
    /// Override the number of block pairs of --baseline-probe (12; more
    /// pairs narrow the intervals).
    #[arg(long, value_name = "N")]
    baseline_blocks: Option<usize>,
    /// Override the length of one block of --baseline-probe, in seconds (5).
    #[arg(long, value_name = "SECS")]
    baseline_block_secs: Option<u64>,
    /// Seed of part 7's impaired link (traffic plan, the link's decisions
    /// and rates) [default: a random one, printed]: replays a run.
    #[arg(long, value_name = "N")]
    impair_seed: Option<u64>,
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(clap::Subcommand, Debug)]
enum Mode {
    /// Soak: mixed load through nginx (2 workers) for a long time, sampling
    /// the workers' and the probe's RSS; reports start/end/max and the slope
    /// after a 1-minute warm-up (`target/bench/soak.json`). Never part of the
    /// default suite or CI.
    Soak {
        /// Length of the run in minutes (more than the 1-minute warm-up).
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// Where to write the JSON [default: <target>/bench/soak.json].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Do not poll the status endpoint (to tell nginx's own memory
        /// behaviour from the module's).
        #[arg(long)]
        no_poll: bool,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    if !artifacts::is_root() {
        bail!("needs root (tcx programs, network namespaces, bpf_stats): sudo ./build.sh bench");
    }
    prefer_release_artifacts();
    // Fail early and clearly on missing pieces rather than mid-suite.
    let used = serde_json::json!({
        "probe": artifacts::probe_bin()?,
        "nginx": artifacts::vendored_nginx()?,
        "module": artifacts::module_so()?,
    });
    eprintln!("bench: artifacts {used}");
    for (tool, pkg) in [("wrk", "wrk"), ("bpftool", "bpftool"), ("taskset", "util-linux"), ("ip", "iproute2")] {
        if !on_path(tool) {
            bail!("{tool} not found: apt-get install {pkg}");
        }
    }
    if let Some(Mode::Soak { minutes, out, no_poll }) = &args.mode {
        bench::catch_interrupts()?;
        let out = out.clone().unwrap_or_else(|| artifacts::target_dir().join("bench").join("soak.json"));
        return bench::soak::run(*minutes, !*no_poll, &out);
    }
    let wanted: BTreeSet<u8> =
        if args.only.is_empty() { (1..=7).collect() } else { args.only.iter().copied().collect() };
    if let Some(bad) = wanted.iter().find(|p| !(1..=7).contains(*p)) {
        bail!("--only: no part {bad} (parts are 1 to 7)");
    }
    let mut s = if args.quick { Settings::quick(args.pin) } else { Settings::full(args.pin) };
    if let Some(pairs) = args.pairs.filter(|p| *p > 0) {
        s.pairs = pairs;
    }
    if let Some(secs) = args.run_secs.filter(|s| *s > 0) {
        s.run = std::time::Duration::from_secs(secs);
    }
    if let Some(blocks) = args.blocks.filter(|b| *b > 0) {
        s.overhead_blocks = blocks;
    }
    s.attach = args.attach;
    s.part1 = wanted.contains(&1);
    if let Some(base) = &args.baseline_probe {
        let base = std::fs::canonicalize(base).with_context(|| format!("--baseline-probe {}", base.display()))?;
        anyhow::ensure!(base.is_file(), "--baseline-probe {}: not a file", base.display());
        s.baseline_probe = Some(base);
    }
    if let Some(blocks) = args.baseline_blocks.filter(|b| *b > 0) {
        s.baseline_blocks = blocks;
    }
    if let Some(secs) = args.baseline_block_secs.filter(|s| *s > 0) {
        s.baseline_block = std::time::Duration::from_secs(secs);
    }
    if let Some(seed) = args.impair_seed {
        s.impair_seed = seed;
    }
    // A smoke run must not overwrite the figures of the last full run.
    let file = if s.quick { "quick.json" } else { "latest.json" };
    let out = args.out.unwrap_or_else(|| artifacts::target_dir().join("bench").join(file));

    bench::catch_interrupts()?;
    let started = Instant::now();
    let load_before = loadavg();
    let mut figs = Vec::new();
    if wanted.iter().any(|p| [1, 2, 5].contains(p)) {
        eprintln!(
            "bench: [{:5.1} s] parts 1, 2, 5 — proxy overhead, BPF cost, probe cost",
            started.elapsed().as_secs_f64()
        );
        figs.extend(bench::overhead::run(&s).into_iter().filter(|f| wanted.contains(&f.section)));
    }
    bench::check_interrupt()?;
    if wanted.contains(&3) {
        eprintln!("bench: [{:5.1} s] part 3 — exactness at peak", started.elapsed().as_secs_f64());
        figs.extend(bench::exactness::run(&s));
    }
    bench::check_interrupt()?;
    if wanted.contains(&4) {
        eprintln!("bench: [{:5.1} s] part 4 — endpoint cost", started.elapsed().as_secs_f64());
        figs.extend(bench::endpoint::run(&s));
    }
    bench::check_interrupt()?;
    if wanted.contains(&6) {
        eprintln!("bench: [{:5.1} s] part 6 — scale", started.elapsed().as_secs_f64());
        figs.extend(bench::scale::run(&s));
    }
    bench::check_interrupt()?;
    if wanted.contains(&7) {
        eprintln!("bench: [{:5.1} s] part 7 — exactness over an impaired link", started.elapsed().as_secs_f64());
        figs.extend(bench::impaired::run(&s));
    }
    bench::check_interrupt()?;
    figs.sort_by_key(|f| f.section);

    let meta = serde_json::json!({
        "date_unix_s": bench::now_unix_ns() / 1_000_000_000,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "quick": s.quick,
        "pinned": s.pin,
        "pairs": s.pairs,
        "run_s": s.run.as_secs_f64(),
        "wrk_connections": s.connections,
        "baseline_probe": s.baseline_probe,
        "impair_seed": wanted.contains(&7).then_some(s.impair_seed),
        "elapsed_s": started.elapsed().as_secs_f64(),
        "machine": machine(),
        // Other work on the machine skews every figure: say how busy it was.
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "git": git_head(),
        "artifacts": used,
    });
    let doc = figures::to_json(&figs, meta);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("write {}", out.display()))?;
    print!("{}", figures::table(&figs));
    println!(
        "written to {} ({:.0} s; load average before {load_before}, after {})",
        out.display(),
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    Ok(())
}

/// The fixtures pick the newest of the debug and release builds; a fresh
/// debug build (someone's `cargo test`) would make the figures about debug
/// code. Point them at the release build unless the caller chose.
fn prefer_release_artifacts() {
    let release = artifacts::target_dir().join("release");
    let mut nginx: Vec<PathBuf> = std::fs::read_dir(release.join("build"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("nginx-sys-"))
        .map(|e| e.path().join("out/objs/nginx"))
        .filter(|p| p.is_file())
        .collect();
    nginx.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let picks = [
        ("UPSTREAMTOP_PROBE", Some(release.join("upstreamtop-probe"))),
        ("UPSTREAMTOP_MODULE", Some(release.join("libngx_http_upstreamtop_module.so"))),
        ("UPSTREAMTOP_NGINX", nginx.pop()),
    ];
    for (var, path) in picks {
        if std::env::var_os(var).is_none() {
            if let Some(path) = path.filter(|p| p.is_file()) {
                // Single-threaded still: nothing reads the environment concurrently.
                std::env::set_var(var, path);
            }
        }
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false)
}

/// CPU model, core count, kernel: what the figures were measured on.
fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    serde_json::json!({
        "cpu": model,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": kernel.trim(),
    })
}

/// The 1-minute load average ("" when unknown).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

fn git_head() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(artifacts::workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
