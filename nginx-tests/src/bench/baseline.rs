//! Part 2 against a baseline probe (`bench --baseline-probe PATH`): the
//! BPF time per proxied request, net of the empty program, of this build's
//! probe and of another `upstreamtop-probe` binary (an older build),
//! measured in the same run. One wrk run on part 1's setup, bpf_stats on;
//! blocks alternate the two probes in pairs (this build first, then the
//! baseline first, …), each block with a freshly started probe and the
//! empty programs after its own on both hooks, so a drift of the machine
//! hits both alike. The figure per block: the probe's run time less the
//! empty program's time per run times the probe's run count, over the
//! requests the backends served in the block. The budget (issue 14): this
//! build at most 15% above the baseline, judged on the 95% interval of the
//! median pair ratio.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::bpf_stats::{self, EmptyTcx, ProgStats};
use super::figures::{num, Figure, Target};
use super::overhead::{checked, Attached, ProbeCost};
use super::wrk::{self, WrkSpec};
use super::{median, median_interval95, pair_ratios, Settings};

/// The budget: this build's figure over the baseline's, at most.
pub const BUDGET: f64 = 1.15;

/// Settle time at the start of the wrk run (connections opened).
const WARM_UP: Duration = Duration::from_secs(1);

/// One block with one probe attached.
#[derive(Debug, Clone, Copy, Default)]
pub struct Block {
    /// Requests the backends served in the block, and per second.
    pub served: u64,
    pub rate: f64,
    /// BPF time per proxied request, both hooks, net of the empty
    /// programs, ns.
    pub net_ns: f64,
    /// Program runs per request (both hooks).
    pub runs: f64,
}

/// Both probes' blocks, pair by pair.
#[derive(Debug, Clone)]
pub struct Versus {
    pub baseline: PathBuf,
    /// The probe flags both were started with.
    pub args: Vec<String>,
    /// Flags of this build's command line the baseline does not know, left
    /// out for both.
    pub dropped: Vec<String>,
    pub new: Vec<Block>,
    pub old: Vec<Block>,
    /// The baseline's programs and the empty ones over its blocks (this
    /// build's go to the part's usual figures).
    pub old_bpf: BTreeMap<String, ProgStats>,
    pub block: Duration,
}

/// Run the pairs. `args` is this build's probe command line; `served` the
/// backends' total; this build's blocks add to `cost` (part 2's per-hook
/// figures and part 5).
pub(super) fn measure(
    s: &Settings,
    spec: &WrkSpec,
    baseline: &Path,
    args: &[&str],
    lo: u32,
    served: &dyn Fn() -> u64,
    cost: &mut ProbeCost,
) -> Result<Versus> {
    let this = crate::artifacts::probe_bin()?;
    let help = probe_help(baseline)?;
    for needed in ["--table", "--state-dir"] {
        if !flags_of(&help).contains_key(needed) {
            bail!("{} --help lists no {needed}: the bench cannot start it as it starts this build", baseline.display());
        }
    }
    let (args, dropped) = common_flags(&help, args);
    if !dropped.is_empty() {
        eprintln!("bench: the baseline does not know {dropped:?}: both probes run without");
    }
    let mut v = Versus {
        baseline: baseline.to_owned(),
        args,
        dropped,
        new: Vec::new(),
        old: Vec::new(),
        old_bpf: BTreeMap::new(),
        block: s.baseline_block,
    };
    let mut load = wrk::start(spec)?;
    let measured = (|| -> Result<()> {
        std::thread::sleep(WARM_UP);
        for pair in 0..s.baseline_blocks {
            let order = if pair % 2 == 0 { [true, false] } else { [false, true] };
            for new in order {
                super::check_interrupt()?;
                if new {
                    let mut bpf = std::mem::take(&mut cost.bpf);
                    let block = one_block(&this, &v.args, lo, s.baseline_block, served, cost, &mut bpf);
                    cost.bpf = bpf;
                    v.new.push(block?);
                } else {
                    let mut throwaway = ProbeCost::default();
                    v.old.push(one_block(
                        baseline,
                        &v.args,
                        lo,
                        s.baseline_block,
                        served,
                        &mut throwaway,
                        &mut v.old_bpf,
                    )?);
                }
            }
            let (n, o) = (v.new[pair], v.old[pair]);
            eprintln!(
                "bench: baseline pair {}/{}: this build {:.0} ns/request, baseline {:.0} ns/request (net of empty), ratio {:.3}; {:.0} / {:.0} req/s",
                pair + 1,
                s.baseline_blocks,
                n.net_ns,
                o.net_ns,
                n.net_ns / o.net_ns,
                n.rate,
                o.rate
            );
        }
        anyhow::ensure!(!load.exited(), "wrk ended before the last block");
        Ok(())
    })();
    let result = load.stop().context("wrk");
    measured?;
    checked(result?)?;
    Ok(v)
}

/// One block: `bin` started with `args`, the empty programs after its
/// own, bpf_stats read around `block`; the deltas added to `bpf`.
fn one_block(
    bin: &Path,
    args: &[String],
    lo: u32,
    block: Duration,
    served: &dyn Fn() -> u64,
    cost: &mut ProbeCost,
    bpf: &mut BTreeMap<String, ProgStats>,
) -> Result<Block> {
    let attached = Attached::start_bin(bin, args)?;
    let empty = [EmptyTcx::attach(lo, true)?, EmptyTcx::attach(lo, false)?];
    let mut ids: BTreeSet<u64> = attached.ids.clone();
    ids.extend(empty.iter().map(|e| e.id));
    // The same order at both ends: the bpftool call's time falls on both.
    let b0 = bpf_stats::read(&ids)?;
    let (n0, t0) = (served(), Instant::now());
    std::thread::sleep(block);
    let b1 = bpf_stats::read(&ids);
    let (n1, secs) = (served(), t0.elapsed().as_secs_f64());
    drop(empty);
    attached.stop(cost)?;
    let d = bpf_stats::delta(&b0, &b1?);
    let n = n1.saturating_sub(n0);
    anyhow::ensure!(n > 0, "no request served in a {block:?} block");
    let (net, runs) = net_ns(&d).with_context(|| format!("{}: {d:?}", bin.display()))?;
    for (name, x) in d {
        let t = bpf.entry(name).or_default();
        t.run_time_ns += x.run_time_ns;
        t.run_cnt += x.run_cnt;
    }
    Ok(Block { served: n, rate: n as f64 / secs, net_ns: net / n as f64, runs: runs as f64 / n as f64 })
}

/// Both hooks' run time less the empty program's time per run times the
/// probe's run count, and the probe's run count.
pub fn net_ns(d: &BTreeMap<String, ProgStats>) -> Result<(f64, u64)> {
    let (mut net, mut runs) = (0.0, 0);
    for hook in ["egress", "ingress"] {
        let probe = d
            .get(&format!("upstreamtop_{hook}"))
            .filter(|p| p.run_cnt > 0)
            .with_context(|| format!("no runs of upstreamtop_{hook} (bpf_stats on?)"))?;
        let empty = d
            .get(&format!("{}{hook}", bpf_stats::EMPTY_PREFIX))
            .filter(|e| e.run_cnt > 0)
            .with_context(|| format!("no runs of the empty {hook} program"))?;
        net += probe.run_time_ns as f64 - empty.run_time_ns as f64 / empty.run_cnt as f64 * probe.run_cnt as f64;
        runs += probe.run_cnt;
    }
    Ok((net, runs))
}

impl Versus {
    /// Part 2's figures of the comparison: both probes' BPF time per
    /// request side by side, their ratio against the budget, the
    /// baseline's per-hook figures.
    pub fn figures(&self) -> Vec<Figure> {
        let us = |b: &[Block]| b.iter().map(|b| b.net_ns / 1000.0).collect::<Vec<_>>();
        let (new, old) = (us(&self.new), us(&self.old));
        let ratios = pair_ratios(&new, &old);
        let runs = |b: &[Block]| median(&b.iter().map(|b| b.runs).collect::<Vec<_>>());
        let how = format!(
            "median of {} blocks of {} s, alternated with the other probe's in one wrk run, bpf_stats on, empty programs after the probe's",
            self.new.len(),
            num(self.block.as_secs_f64())
        );
        let mut f = vec![
            Figure::new(
                2,
                "bpf.versus.baseline_net_us",
                "BPF time per proxied request net of empty, baseline probe",
                median(&old),
                "µs",
                Target::None,
            )
            .interval(median_interval95(&old))
            .note(format!(
                "{how}; {}; {:.1} program runs per request; flags {}",
                self.baseline.display(),
                runs(&self.old),
                self.flags()
            )),
            Figure::new(
                2,
                "bpf.versus.new_net_us",
                "BPF time per proxied request net of empty, this build",
                median(&new),
                "µs",
                Target::None,
            )
            .interval(median_interval95(&new))
            .note(format!("{how}; {:.1} program runs per request", runs(&self.new))),
            Figure::new(
                2,
                "bpf.versus.ratio",
                "BPF time per proxied request net of empty, this build / baseline",
                median(&ratios),
                "",
                Target::AtMost(BUDGET),
            )
            .interval(median_interval95(&ratios))
            .note(format!(
                "median of {} pair ratios (budget: at most +15%); pair ratios {}",
                ratios.len(),
                ratios.iter().map(|r| num(*r)).collect::<Vec<_>>().join(" ")
            )),
        ];
        for hook in ["egress", "ingress"] {
            let per_run = |name: &str| {
                self.old_bpf.get(name).filter(|d| d.run_cnt > 0).map(|d| d.run_time_ns as f64 / d.run_cnt as f64)
            };
            let id = format!("bpf.versus.baseline_{hook}_net_ns");
            let label = format!("BPF {hook} program, per run net of empty, baseline probe");
            match (per_run(&format!("upstreamtop_{hook}")), per_run(&format!("{}{hook}", bpf_stats::EMPTY_PREFIX))) {
                (Some(p), Some(e)) => f.push(Figure::new(2, &id, &label, p - e, "ns", Target::None).note(format!(
                    "raw {} ns, empty program {} ns, over the baseline's blocks",
                    num(p),
                    num(e)
                ))),
                _ => f.push(Figure::failed(2, &id, &label, "ns", Target::None, "no runs counted")),
            }
        }
        f
    }

    fn flags(&self) -> String {
        let mut text = self.args.join(" ");
        if !self.dropped.is_empty() {
            text.push_str(&format!(" (left out for both, unknown to the baseline: {})", self.dropped.join(" ")));
        }
        text
    }
}

/// `bin --help`.
fn probe_help(bin: &Path) -> Result<String> {
    let out = Command::new(bin).arg("--help").output().with_context(|| format!("run {} --help", bin.display()))?;
    if !out.status.success() {
        bail!("{} --help failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The long flags a clap `--help` lists, each with whether it takes a
/// value (`--iface <IF>`).
fn flags_of(help: &str) -> BTreeMap<String, bool> {
    let mut flags = BTreeMap::new();
    for line in help.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            let w = w.trim_end_matches(',');
            if w.starts_with("--") && w.len() > 2 && w[2..].chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                let value = words.get(i + 1).is_some_and(|n| n.starts_with('<'));
                flags.entry(w.to_owned()).or_insert(value);
            }
        }
    }
    flags
}

/// `args` split into what `help` lists (flags with their values) and the
/// flags it does not (with theirs).
pub fn common_flags(help: &str, args: &[&str]) -> (Vec<String>, Vec<String>) {
    let known = flags_of(help);
    let (mut keep, mut drop) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < args.len() {
        let arg = args[i];
        let flag = arg.split_once('=').map_or(arg, |(f, _)| f);
        // A value follows as its own word unless given with `=`; a flag
        // the help does not list takes the next word if it is no flag.
        let takes_value = !arg.contains('=')
            && known.get(flag).copied().unwrap_or_else(|| args.get(i + 1).is_some_and(|n| !n.starts_with("--")));
        let n = if flag.starts_with("--") && takes_value { 2 } else { 1 };
        let words = args[i..(i + n).min(args.len())].iter().map(|w| (*w).to_owned());
        if !flag.starts_with("--") || known.contains_key(flag) {
            keep.extend(words);
        } else {
            drop.extend(words);
        }
        i += n;
    }
    (keep, drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD_HELP: &str = "Usage: upstreamtop-probe [OPTIONS] [COMMAND]

Options:
      --iface <IF>       Interface to watch (repeatable)
      --table <PATH>     Where to publish the table [default: /run/upstreamtop/table]
      --ignore-port <P>  Never track connections from or to this TCP port, e.g. --iface lo
      --max-conns <N>    Most connections tracked at once [default: 16384]
      --state-dir <DIR>  bpffs directory
      --no-pin           Pin nothing
  -h, --help             Print help
";

    #[test]
    fn flags_the_baseline_does_not_know_are_left_out_with_their_values() {
        let args = [
            "--iface",
            "lo",
            "--max-tcp-peers",
            "64",
            "--ignore-port",
            "8080",
            "--no-pin",
            "--interval=1s",
            "--max-conns",
            "100",
        ];
        let (keep, drop) = common_flags(OLD_HELP, &args);
        assert_eq!(keep, ["--iface", "lo", "--ignore-port", "8080", "--no-pin", "--max-conns", "100"]);
        assert_eq!(drop, ["--max-tcp-peers", "64", "--interval=1s"]);
        let flags = flags_of(OLD_HELP);
        assert_eq!(flags.get("--no-pin"), Some(&false));
        assert_eq!(flags.get("--state-dir"), Some(&true));
        assert_eq!(flags.get("--help"), Some(&false));
    }

    #[test]
    fn net_time_takes_the_empty_programs_share_off_each_run() {
        let d = BTreeMap::from([
            ("upstreamtop_egress".to_owned(), ProgStats { run_time_ns: 3000, run_cnt: 10 }),
            ("upstreamtop_ingress".to_owned(), ProgStats { run_time_ns: 2000, run_cnt: 10 }),
            ("empty_egress".to_owned(), ProgStats { run_time_ns: 500, run_cnt: 10 }),
            ("empty_ingress".to_owned(), ProgStats { run_time_ns: 1200, run_cnt: 20 }),
        ]);
        assert_eq!(net_ns(&d).unwrap(), (3000.0 - 500.0 + 2000.0 - 600.0, 20));
        let mut no_empty = d.clone();
        no_empty.remove("empty_ingress");
        assert!(net_ns(&no_empty).is_err());
    }
}
