//! Throughput under two conditions, alternated in short blocks inside one
//! long wrk run and counted by the backends (what they served), not by wrk.
//!
//! Separate 10 s wrk runs differ by ±3% on this 2-vCPU VM whatever runs in
//! them (where the scheduler puts wrk, nginx and the backends), which hides
//! a 1% effect. Switching a cheap condition on and off every couple of
//! seconds within one run compares neighbours in time, under the same
//! placement, and gives many more pairs in the same time.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::wrk::{self, WrkResult, WrkSpec};
use super::{median, median_interval95, pair_ratios, procfs};

/// Requests per second served in each block, pair by pair, and what each
/// request cost the whole machine.
#[derive(Debug, Default, Clone)]
pub struct Alternation {
    pub on: Vec<f64>,
    pub off: Vec<f64>,
    /// Busy CPU time of all CPUs (/proc/stat) per request served, µs:
    /// steadier than the rates when the machine is not saturated, or when
    /// the host slows it down for a while.
    pub cpu_us_on: Vec<f64>,
    pub cpu_us_off: Vec<f64>,
    /// The whole wrk run, both conditions together.
    pub wrk: WrkResult,
}

impl Alternation {
    /// The per-pair ratios on / off.
    pub fn ratios(&self) -> Vec<f64> {
        pair_ratios(&self.on, &self.off)
    }

    /// Median of the per-pair ratios on / off.
    pub fn ratio(&self) -> f64 {
        median(&self.ratios())
    }

    /// 95% interval of that median.
    pub fn ratio_interval(&self) -> Option<(f64, f64)> {
        median_interval95(&self.ratios())
    }

    fn cpu_ratios(&self) -> Vec<f64> {
        pair_ratios(&self.cpu_us_on, &self.cpu_us_off)
    }

    /// Median of the per-pair ratios of CPU per request, on / off.
    pub fn cpu_ratio(&self) -> f64 {
        median(&self.cpu_ratios())
    }

    /// 95% interval of that median.
    pub fn cpu_ratio_interval(&self) -> Option<(f64, f64)> {
        median_interval95(&self.cpu_ratios())
    }
}

/// Settle time at the start of the wrk run (connections opened, pools warm).
const WARM_UP: Duration = Duration::from_secs(1);

/// One wrk run of `spec` (its duration ignored) for `pairs` pairs of
/// `block`s; before each block `set(on)` switches the condition and returns
/// once it is in effect (the switch itself is not measured), and `served()`
/// (the backends' total) is read at both ends of the block. Pairs go
/// on-off, off-on, … so that a drift within a pair falls on both sides
/// alike. The condition is off again at the end.
pub fn alternate(
    spec: &WrkSpec,
    pairs: usize,
    block: Duration,
    served: &dyn Fn() -> u64,
    set: &mut dyn FnMut(bool) -> Result<()>,
) -> Result<Alternation> {
    anyhow::ensure!(pairs > 0 && !block.is_zero(), "no blocks to measure");
    let mut out = Alternation::default();
    set(false)?;
    let mut load = wrk::start(spec)?;
    let measured = (|| -> Result<()> {
        std::thread::sleep(WARM_UP);
        for pair in 0..pairs {
            let order = if pair % 2 == 0 { [true, false] } else { [false, true] };
            for on in order {
                super::check_interrupt()?;
                set(on)?;
                let (n0, t0, c0) = (served(), Instant::now(), procfs::busy_seconds()?);
                std::thread::sleep(block);
                let (n, c) = (served().saturating_sub(n0), procfs::busy_seconds()? - c0);
                let rate = n as f64 / t0.elapsed().as_secs_f64();
                let cpu_us = c * 1e6 / n.max(1) as f64;
                if on {
                    out.on.push(rate);
                    out.cpu_us_on.push(cpu_us);
                } else {
                    out.off.push(rate);
                    out.cpu_us_off.push(cpu_us);
                }
            }
        }
        // Every block must have had wrk's load all through.
        anyhow::ensure!(!load.exited(), "wrk ended before the last block");
        Ok(())
    })();
    let off = set(false);
    out.wrk = load.stop().context("wrk")?;
    measured?;
    off?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_the_median_of_pair_ratios() {
        let a = Alternation {
            on: vec![99.0, 50.0, 98.0],
            off: vec![100.0, 100.0, 100.0],
            cpu_us_on: vec![51.0, 60.0],
            cpu_us_off: vec![50.0, 50.0],
            wrk: WrkResult::default(),
        };
        assert_eq!(a.ratio(), 0.98);
        assert!((a.cpu_ratio() - 1.11).abs() < 1e-9, "{}", a.cpu_ratio());
    }
}
