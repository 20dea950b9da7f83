//! Parts 1, 2 and 5 on one setup: nginx (1 worker) proxying to two
//! keepalive backends on loopback under wrk. Part 1: the probe attached vs
//! detached in interleaved pairs, as users run it (bpf_stats off). Part 2:
//! then a few attached runs with bpf_stats on, for the programs' run time
//! per invocation, next to an empty program's on the same hooks (bpf_stats'
//! own share). Part 5: the probe's own CPU and memory over all attached runs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::alternate::{alternate, Alternation};
use super::bpf_stats::{self, EmptyTcx, ProgStats};
use super::figures::{num, Figure, Target};
use super::wrk::{self, WrkResult, WrkSpec};
use super::{median, percentile, procfs, proxy_setup, Attach, Settings};
use crate::nginx::free_port;
use crate::probe::Probe;

/// Time for a freshly attached probe to settle before measuring.
const SETTLE: Duration = Duration::from_millis(300);

/// What the attached runs added up to.
#[derive(Default)]
pub(super) struct ProbeCost {
    pub(super) bpf: BTreeMap<String, ProgStats>,
    cpu_s: f64,
    wall_s: f64,
    rss_mib: f64,
    hwm_mib: f64,
}

impl ProbeCost {
    fn memory(&mut self, mem: procfs::Memory) {
        self.rss_mib = self.rss_mib.max(mem.rss_mib);
        self.hwm_mib = self.hwm_mib.max(mem.hwm_mib);
    }
}

/// A freshly started probe, settled; its CPU counts from then on.
pub(super) struct Attached {
    probe: Probe,
    pub(super) ids: BTreeSet<u64>,
    cpu0: f64,
    t0: Instant,
}

impl Attached {
    fn start(probe_args: &[&str]) -> Result<Self> {
        let probe = Probe::start(probe_args).context("start probe")?;
        Self::settle(probe)
    }

    /// Another probe binary (part 2's baseline).
    pub(super) fn start_bin(bin: &Path, probe_args: &[String]) -> Result<Self> {
        let probe = Probe::start_bin(bin, probe_args).with_context(|| format!("start {}", bin.display()))?;
        Self::settle(probe)
    }

    fn settle(probe: Probe) -> Result<Self> {
        let ids = bpf_stats::prog_ids_of(probe.pid())?;
        std::thread::sleep(SETTLE);
        let cpu0 = procfs::cpu_seconds(probe.pid())?;
        Ok(Attached { probe, ids, cpu0, t0: Instant::now() })
    }

    /// Adds the probe's CPU since start and its memory now to `cost`, stops
    /// it and waits until its programs are gone.
    pub(super) fn stop(mut self, cost: &mut ProbeCost) -> Result<()> {
        let pid = self.probe.pid();
        cost.cpu_s += procfs::cpu_seconds(pid)? - self.cpu0;
        cost.wall_s += self.t0.elapsed().as_secs_f64();
        cost.memory(procfs::memory(pid)?);
        self.probe.stop()?;
        // SIGTERM keeps the probe's pinned links; dropping the fixture
        // detaches them. The next detached run must really be detached.
        drop(self.probe);
        bpf_stats::wait_unloaded(&self.ids, Duration::from_secs(5))
    }
}

pub fn run(s: &Settings) -> Vec<Figure> {
    match measure(s) {
        Ok(figures) => figures,
        Err(e) => {
            let why = format!("{e:#}");
            eprintln!("bench: proxy overhead failed: {why}");
            let mut f = vec![
                Figure::failed(
                    1,
                    "overhead.throughput_ratio",
                    "proxy throughput attached/detached",
                    "",
                    Target::AtLeast(0.98),
                    &why,
                ),
                Figure::failed(2, "bpf.egress_ns", "BPF egress per run", "ns", Target::AtMost(40.0), &why),
                Figure::failed(2, "bpf.ingress_ns", "BPF ingress per run", "ns", Target::AtMost(40.0), &why),
                Figure::failed(5, "probe.cpu_pct", "probe CPU (share of one core)", "%", Target::AtMost(2.0), &why),
                Figure::failed(5, "probe.rss_mib", "probe VmRSS", "MiB", Target::AtMost(50.0), &why),
            ];
            if s.baseline_probe.is_some() {
                let label = "BPF time per proxied request net of empty, this build / baseline";
                f.push(Figure::failed(2, "bpf.versus.ratio", label, "", Target::AtMost(super::baseline::BUDGET), &why));
            }
            f
        }
    }
}

fn measure(s: &Settings) -> Result<Vec<Figure>> {
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let scratch = tempfile::tempdir().context("temp dir")?;
    // Nobody polls the endpoint here; the table path only has to be valid.
    let (b1, b2, nginx, spec) = proxy_setup(s, port, &scratch.path().join("table"))?;

    // Warm up nginx's keepalive pools and the backends' threads.
    wrk::run(&WrkSpec { duration: Duration::from_secs(1), ..spec.clone() }).context("warm-up wrk")?;

    // Where the bottleneck is: the backends alone (wrk straight at one of
    // them), and how busy nginx's worker is in the detached runs.
    // Without part 1 (`--only 2,5`) only its setup runs, not its
    // measurements.
    let direct = if s.part1 {
        wrk::run(&WrkSpec { url: format!("http://{}/api/orders", b1.addr()), ..spec.clone() })
            .context("wrk straight at a backend")?
    } else {
        WrkResult::default()
    };
    let worker = *nginx.worker_pids().first().context("nginx has no worker")?;
    let (mut worker_cpu_s, mut off_wall_s) = (0.0, 0.0);

    let probe_args = ["--iface", "lo", "--ignore-port", &port.to_string(), "--interval", "1s"];
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let mut cost = ProbeCost::default();
    // Part 1: the probe as users run it. bpf_stats stays off and no empty
    // program is attached: its two clock reads per program run would be
    // charged to the probe (about 1 µs per request on this VM).
    // The target figure: the probe started and stopped between blocks of
    // one wrk run, rates from what the backends served.
    let lo = bpf_stats::ifindex("lo")?;
    let blocks = {
        let mut running: Option<Attached> = None;
        let mut empty: Option<[EmptyTcx; 2]> = None;
        let cost = &mut cost;
        let mut set = |attach: bool| -> Result<()> {
            match s.attach {
                Attach::Probe if attach && running.is_none() => running = Some(Attached::start(&probe_args)?),
                Attach::Probe if !attach => {
                    if let Some(a) = running.take() {
                        a.stop(cost)?;
                    }
                }
                Attach::Empty if attach && empty.is_none() => {
                    empty = Some([EmptyTcx::attach(lo, true)?, EmptyTcx::attach(lo, false)?]);
                }
                Attach::Empty if !attach => empty = None,
                // The same switch as the probe's, undone before the block:
                // its own cost (a throwaway account) is not the probe's.
                Attach::Nothing if attach => Attached::start(&probe_args)?.stop(&mut ProbeCost::default())?,
                _ => {}
            }
            Ok(())
        };
        if s.part1 {
            alternate(&spec, s.overhead_blocks, s.overhead_block, &|| b1.total() + b2.total(), &mut set)?
        } else {
            Alternation::default()
        }
    };
    // Separate wrk runs for the latency figures (wrk's p99 is per run).
    for pair in 0..if s.part1 { s.pairs } else { 0 } {
        // A B, B A, …: neither side always runs first.
        let order = if pair % 2 == 0 { [true, false] } else { [false, true] };
        for attached in order {
            super::check_interrupt()?;
            if attached {
                on.push(attached_run(&spec, &probe_args, false, &mut cost)?);
            } else {
                let (c0, t0) = (procfs::cpu_seconds(worker)?, Instant::now());
                off.push(checked(wrk::run(&spec)?)?);
                worker_cpu_s += procfs::cpu_seconds(worker)? - c0;
                off_wall_s += t0.elapsed().as_secs_f64();
            }
        }
        eprintln!(
            "bench: pair {}/{}: attached {:.0} req/s p99 {:.2} ms, detached {:.0} req/s p99 {:.2} ms",
            pair + 1,
            s.pairs,
            on[pair].requests_per_sec,
            on[pair].p99_ms,
            off[pair].requests_per_sec,
            off[pair].p99_ms
        );
    }
    // Part 2: separate runs with bpf_stats on and the empty program beside
    // the probe's on both hooks; with a baseline probe, blocks of one wrk
    // run alternating it with this build's instead.
    let stats = bpf_stats::StatsEnabled::on();
    let mut instrumented = Vec::new();
    let mut versus = None;
    match &s.baseline_probe {
        None => {
            for _ in 0..s.instrumented_runs {
                super::check_interrupt()?;
                instrumented.push(attached_run(&spec, &probe_args, true, &mut cost)?);
            }
        }
        Some(base) => {
            let served = || b1.total() + b2.total();
            versus = Some(super::baseline::measure(s, &spec, base, &probe_args, lo, &served, &mut cost)?);
        }
    }
    let stats_note = match &stats {
        Ok(_) => String::new(),
        Err(e) => format!("bpf_stats_enabled: {e:#}"),
    };
    drop(stats);
    let problems = nginx.error_log_problems();
    anyhow::ensure!(problems.is_empty(), "nginx error log: {problems:?}");

    let mut f = Vec::new();
    let block_ratios = blocks.ratios();
    // Checks of the method measure no probe: no target for them.
    let target = if s.attach == Attach::Probe { Target::AtLeast(0.98) } else { Target::None };
    f.push(
        Figure::new(1, "overhead.throughput_ratio", "proxy throughput attached/detached", blocks.ratio(), "", target)
            .interval(blocks.ratio_interval())
            .note(
            format!(
                "median of {} pairs of {} s blocks in one wrk run ({}), rates from what the backends served; quartiles {}–{}; pair ratios {}",
                s.overhead_blocks,
                s.overhead_block.as_secs(),
                s.attach.switch(),
                num(percentile(&block_ratios, 0.25)),
                num(percentile(&block_ratios, 0.75)),
                block_ratios.iter().map(|r| num(*r)).collect::<Vec<_>>().join(" ")
            ),
        ),
    );
    f.push(
        Figure::new(1, "overhead.cpu_per_request_ratio", "CPU per request (whole machine) attached/detached", blocks.cpu_ratio(), "", Target::None)
            .interval(blocks.cpu_ratio_interval())
            .note(format!(
                "same blocks; busy CPU of all CPUs from /proc/stat per request the backends served: {:.1} vs {:.1} µs (medians)",
                median(&blocks.cpu_us_on),
                median(&blocks.cpu_us_off)
            )),
    );
    f.push(Figure::new(
        1,
        "overhead.rps_detached",
        "proxy throughput, probe detached",
        median(&blocks.off),
        "req/s",
        Target::None,
    ));
    f.push(Figure::new(
        1,
        "overhead.rps_attached",
        "proxy throughput, probe attached",
        median(&blocks.on),
        "req/s",
        Target::None,
    ));
    let ratios: Vec<f64> = on.iter().zip(&off).map(|(a, d)| a.requests_per_sec / d.requests_per_sec).collect();
    let ratio = median(&ratios);
    let p99_ratio = median(&on.iter().zip(&off).map(|(a, d)| a.p99_ms / d.p99_ms).collect::<Vec<_>>());
    let rps = |v: &[WrkResult]| median(&v.iter().map(|r| r.requests_per_sec).collect::<Vec<_>>());
    let p99 = |v: &[WrkResult]| median(&v.iter().map(|r| r.p99_ms).collect::<Vec<_>>());
    let pairs = format!(
        "median of {} interleaved pairs, {} s each, wrk -c{}; pair ratios {}",
        s.pairs,
        s.run.as_secs(),
        s.connections,
        ratios.iter().map(|r| num(*r)).collect::<Vec<_>>().join(" ")
    );
    f.push(
        Figure::new(
            1,
            "overhead.throughput_ratio_runs",
            "proxy throughput attached/detached, separate wrk runs",
            ratio,
            "",
            Target::None,
        )
        .note(format!("{pairs}; separate runs differ by several % on this VM whatever runs in them")),
    );
    f.push(
        Figure::new(
            1,
            "overhead.rps_backend_direct",
            "one backend alone (wrk straight at it)",
            direct.requests_per_sec,
            "req/s",
            Target::None,
        )
        .note("no nginx: if this were near the proxied figure, the backends would be the bottleneck"),
    );
    f.push(
        Figure::new(
            1,
            "overhead.nginx_worker_cpu_pct",
            "nginx worker CPU, detached runs",
            worker_cpu_s / off_wall_s * 100.0,
            "%",
            Target::None,
        )
        .note(format!("pinned: {}", if s.pin { "nginx worker CPU 0, wrk CPU 1" } else { "no" })),
    );
    f.push(Figure::new(1, "overhead.p99_detached", "proxy p99 latency, probe detached", p99(&off), "ms", Target::None));
    f.push(Figure::new(1, "overhead.p99_attached", "proxy p99 latency, probe attached", p99(&on), "ms", Target::None));
    f.push(Figure::new(1, "overhead.p99_ratio", "proxy p99 latency attached/detached", p99_ratio, "", Target::None));

    // Requests and throughput of the instrumented measurement: separate
    // runs, or this build's blocks against the baseline.
    let (attached_requests, instrumented_rps, instrumented_note) = match &versus {
        None => (
            instrumented.iter().map(|r| r.requests).sum::<u64>(),
            rps(&instrumented),
            format!("{} runs of {} s after the pairs, where part 2's figures come from", instrumented.len(), s.run.as_secs()),
        ),
        Some(v) => (
            v.new.iter().map(|b| b.served).sum(),
            median(&v.new.iter().map(|b| b.rate).collect::<Vec<_>>()),
            format!(
                "median of this build's {} blocks of {} s against the baseline, where part 2's figures come from (rates from what the backends served)",
                v.new.len(),
                s.baseline_block.as_secs_f64()
            ),
        ),
    };
    f.push(
        Figure::new(
            2,
            "overhead.rps_instrumented",
            "proxy throughput, probe attached with bpf_stats on + empty programs",
            instrumented_rps,
            "req/s",
            Target::None,
        )
        .note(instrumented_note),
    );
    for hook in ["egress", "ingress"] {
        let name = format!("upstreamtop_{hook}");
        let id = format!("bpf.{hook}_ns");
        let label = format!("BPF {hook} program, per run");
        let per_run = |d: &ProgStats| d.run_time_ns as f64 / d.run_cnt as f64;
        let Some(d) = cost.bpf.get(&name).filter(|d| d.run_cnt > 0) else {
            f.push(Figure::failed(
                2,
                &id,
                &label,
                "ns",
                Target::AtMost(40.0),
                &format!("no runs of {name} counted {stats_note}"),
            ));
            continue;
        };
        f.push(Figure::new(2, &id, &label, per_run(d), "ns", Target::AtMost(40.0)).note(format!(
            "{} runs over the instrumented runs; raw bpf_stats figure, its own bookkeeping included",
            d.run_cnt
        )));
        let empty_name = format!("{}{hook}", bpf_stats::EMPTY_PREFIX);
        match cost.bpf.get(&empty_name).filter(|e| e.run_cnt > 0) {
            Some(e) => {
                f.push(
                    Figure::new(2, &format!("bpf.{hook}_empty_ns"), &format!("empty tcx program on {hook}, per run"), per_run(e), "ns", Target::None)
                        .note(format!("returns TCX_NEXT, attached next to the probe's during the same runs ({} runs): bpf_stats' own cost", e.run_cnt)),
                );
                f.push(
                    Figure::new(
                        2,
                        &format!("bpf.{hook}_net_ns"),
                        &format!("BPF {hook} program, net of the empty one"),
                        per_run(d) - per_run(e),
                        "ns",
                        Target::None,
                    )
                    .note("probe minus empty program, same packets"),
                );
            }
            None => f.push(Figure::failed(
                2,
                &format!("bpf.{hook}_empty_ns"),
                &format!("empty tcx program on {hook}, per run"),
                "ns",
                Target::None,
                &format!("no runs of {empty_name} counted {stats_note}"),
            )),
        }
    }
    // Both hooks together per proxied request: what the probe adds to the
    // CPU time a request costs (all CPUs / throughput).
    let probe_progs = || cost.bpf.iter().filter(|(n, _)| n.starts_with("upstreamtop_")).map(|(_, d)| d);
    let bpf_ns: u64 = probe_progs().map(|d| d.run_time_ns).sum();
    let bpf_runs: u64 = probe_progs().map(|d| d.run_cnt).sum();
    if attached_requests > 0 && bpf_runs > 0 {
        let per_req_us = bpf_ns as f64 / attached_requests as f64 / 1000.0;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let cpu_per_req_us = cpus * 1e6 / instrumented_rps;
        f.push(
            Figure::new(2, "bpf.per_request_us", "BPF time per proxied request (both hooks)", per_req_us, "µs", Target::None).note(
                format!(
                    "{:.1} program runs per request; ~{:.1}% of the ~{:.0} µs of CPU a request costs here ({cpus} CPUs / throughput); run times include bpf_stats' own clock reads",
                    bpf_runs as f64 / attached_requests as f64,
                    per_req_us / cpu_per_req_us * 100.0,
                    cpu_per_req_us
                ),
            ),
        );
    }
    // The same, net of bpf_stats' own cost: each hook's run count times
    // the empty program's time per run taken off.
    let net_ns: f64 = ["egress", "ingress"]
        .iter()
        .filter_map(|hook| {
            let probe = cost.bpf.get(&format!("upstreamtop_{hook}"))?;
            let empty = cost.bpf.get(&format!("{}{hook}", bpf_stats::EMPTY_PREFIX)).filter(|e| e.run_cnt > 0)?;
            let empty_per_run = empty.run_time_ns as f64 / empty.run_cnt as f64;
            Some(probe.run_time_ns as f64 - empty_per_run * probe.run_cnt as f64)
        })
        .sum();
    if attached_requests > 0 && net_ns > 0.0 {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let net_us = net_ns / attached_requests as f64 / 1000.0;
        f.push(
            Figure::new(
                2,
                "bpf.per_request_net_us",
                "BPF time per proxied request, net of bpf_stats",
                net_us,
                "µs",
                Target::None,
            )
            .note(format!(
                "~{:.1}% of the CPU a request costs here: what the programs add to a request as users run them",
                net_us / (cpus * 1e6 / instrumented_rps) * 100.0
            )),
        );
    }
    if let Some(v) = &versus {
        f.extend(v.figures());
    }
    let cpu_pct = if cost.wall_s > 0.0 { cost.cpu_s / cost.wall_s * 100.0 } else { f64::NAN };
    f.push(
        Figure::new(5, "probe.cpu_pct", "probe CPU (share of one core)", cpu_pct, "%", Target::AtMost(2.0))
            .note(format!("utime+stime {} s over {} s at {} req/s", num(cost.cpu_s), num(cost.wall_s), num(rps(&on)))),
    );
    f.push(Figure::new(5, "probe.rss_mib", "probe VmRSS at peak", cost.rss_mib, "MiB", Target::AtMost(50.0)));
    f.push(Figure::new(5, "probe.hwm_mib", "probe VmHWM at peak", cost.hwm_mib, "MiB", Target::AtMost(50.0)));
    Ok(f)
}

/// One wrk run with a freshly started probe; with `instrument`, the empty
/// programs ride along and the BPF run-time deltas are added to `cost`
/// (bpf_stats must be on). The probe's CPU and memory count in every run.
fn attached_run(spec: &WrkSpec, probe_args: &[&str], instrument: bool, cost: &mut ProbeCost) -> Result<WrkResult> {
    let attached = Attached::start(probe_args)?;
    // Attached after the probe's programs, so they run after them on every
    // packet: the same packets, the same hooks.
    let empty = if instrument {
        let lo = bpf_stats::ifindex("lo")?;
        vec![EmptyTcx::attach(lo, true)?, EmptyTcx::attach(lo, false)?]
    } else {
        Vec::new()
    };
    let mut measured = attached.ids.clone();
    measured.extend(empty.iter().map(|e| e.id));
    let bpf0 = if instrument { bpf_stats::read(&measured)? } else { BTreeMap::new() };
    let r = wrk::run(spec);
    let bpf1 = if instrument { bpf_stats::read(&measured)? } else { BTreeMap::new() };
    drop(empty);
    attached.stop(cost)?;
    let r = checked(r?)?;
    for (name, d) in bpf_stats::delta(&bpf0, &bpf1) {
        let t = cost.bpf.entry(name).or_default();
        t.run_time_ns += d.run_time_ns;
        t.run_cnt += d.run_cnt;
    }
    Ok(r)
}

/// A run that got error answers measures something else than proxying. A
/// few socket errors (a timeout on a machine busy with other work) are
/// tolerated: up to one in a thousand requests.
pub(super) fn checked(r: WrkResult) -> Result<WrkResult> {
    anyhow::ensure!(
        r.socket_errors * 1000 <= r.requests && r.non_2xx_3xx == 0 && r.requests > 0,
        "wrk run had {} socket errors and {} non-2xx/3xx responses out of {}",
        r.socket_errors,
        r.non_2xx_3xx,
        r.requests
    );
    Ok(r)
}
