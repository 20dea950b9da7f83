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

use super::median;
use super::wrk::{self, WrkResult, WrkSpec};

/// Requests per second served in each block, pair by pair.
#[derive(Debug, Default, Clone)]
pub struct Alternation {
    pub on: Vec<f64>,
    pub off: Vec<f64>,
    /// The whole wrk run, both conditions together.
    pub wrk: WrkResult,
}

impl Alternation {
    /// Median of the per-pair ratios on / off.
    pub fn ratio(&self) -> f64 {
        median(&self.on.iter().zip(&self.off).map(|(a, b)| a / b).collect::<Vec<_>>())
    }
}

/// Settle time at the start of the wrk run (connections opened, pools warm).
const WARM_UP: Duration = Duration::from_secs(1);

/// One wrk run of `spec` long enough for `pairs` pairs of `block`s; before
/// each block `set(on)` switches the condition (it must take effect at
/// once), and `served()` (the backends' total) is read at both ends of the
/// block. Pairs go on-off, off-on, … so that a drift within a pair falls on
/// both sides alike.
pub fn alternate(
    spec: &WrkSpec,
    pairs: usize,
    block: Duration,
    served: &(dyn Fn() -> u64 + Sync),
    set: &(dyn Fn(bool) + Sync),
) -> Result<Alternation> {
    anyhow::ensure!(pairs > 0 && !block.is_zero(), "no blocks to measure");
    // Whole seconds for wrk, and a second to spare at the end so that the
    // last block ends before wrk stops.
    let total = WARM_UP + block * (2 * pairs as u32) + Duration::from_secs(2);
    let long = WrkSpec { duration: Duration::from_secs(total.as_secs_f64().ceil() as u64), ..spec.clone() };
    let mut out = Alternation::default();
    let result = std::thread::scope(|scope| -> Result<WrkResult> {
        let load = scope.spawn(|| wrk::run(&long));
        let measured = (|| -> Result<()> {
            set(false);
            std::thread::sleep(WARM_UP);
            for pair in 0..pairs {
                let order = if pair % 2 == 0 { [true, false] } else { [false, true] };
                for on in order {
                    super::check_interrupt()?;
                    set(on);
                    let (n0, t0) = (served(), Instant::now());
                    std::thread::sleep(block);
                    let rate = served().saturating_sub(n0) as f64 / t0.elapsed().as_secs_f64();
                    if on { &mut out.on } else { &mut out.off }.push(rate);
                }
            }
            set(false);
            // Every block must have had wrk's load all through.
            anyhow::ensure!(!load.is_finished(), "wrk ended before the last block");
            Ok(())
        })();
        let r = load.join().map_err(|_| anyhow::anyhow!("wrk thread panicked"))?.context("wrk")?;
        measured?;
        Ok(r)
    })?;
    out.wrk = result;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_the_median_of_pair_ratios() {
        let a = Alternation { on: vec![99.0, 50.0, 98.0], off: vec![100.0, 100.0, 100.0], wrk: WrkResult::default() };
        assert_eq!(a.ratio(), 0.98);
    }
}
