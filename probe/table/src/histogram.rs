//! The latency bucket scheme shared by the probe (which fills buckets), the
//! table (which stores them) and the report (which turns them into
//! percentiles and Prometheus `le` buckets).
//!
//! Bounds follow a 1-1.1-1.2-…-9.1 progression per decade, from 1 µs to
//! 100 s, so any bucket is at most 12.5% wide: a percentile interpolated inside
//! its bucket is within a few percent of the true value. Every power of
//! ten and every 2×, 2.5× and 5× step is a bound, so the Prometheus buckets
//! (`le="0.001"`, `"0.0025"`, …) are exact sums of fine buckets.

/// Steps inside one decade, as multiples of the decade's base (×100).
const DECADE_STEPS: [u64; 28] = [
    100, 110, 120, 130, 140, 150, 160, 170, 180, 190, 200, 220, 240, 250, 270, 300, 330, 360, 400, 450, 500, 560, 620,
    680, 750, 820, 910, 1000,
];
/// Decades from 1 µs to 100 s.
const DECADES: usize = 8;

/// Number of latency buckets (the last one is the overflow bucket, +Inf).
pub const BUCKETS: usize = DECADES * (DECADE_STEPS.len() - 1) + 2;

/// Upper bound (inclusive) of every bucket, in nanoseconds, computed at
/// build time: bucket lookups run once per exchange in the probe and per
/// histogram in every render, so they are table reads, not arithmetic.
const BOUNDS: [u64; BUCKETS] = {
    let mut b = [0u64; BUCKETS];
    b[0] = 1_000; // everything up to 1 µs
    let mut i = 1;
    while i < BUCKETS - 1 {
        let k = i - 1;
        let decade = k / (DECADE_STEPS.len() - 1);
        let step = k % (DECADE_STEPS.len() - 1) + 1;
        // 1 µs × 10^decade × step/100
        b[i] = 1_000 * 10u64.pow(decade as u32) * DECADE_STEPS[step] / 100;
        i += 1;
    }
    b[BUCKETS - 1] = u64::MAX;
    b
};

/// Upper bound (inclusive) of bucket `i`, in nanoseconds; `u64::MAX` for the
/// overflow bucket (and any index past it).
pub fn upper_bound_ns(i: usize) -> u64 {
    BOUNDS.get(i).copied().unwrap_or(u64::MAX)
}

/// Bucket index for a latency in nanoseconds: the first bucket whose bound
/// holds it (the last bound is `u64::MAX`, so there always is one).
pub fn bucket_of(ns: u64) -> usize {
    BOUNDS.partition_point(|&ub| ub < ns)
}

/// The `q`-quantile (0.0..=1.0) of a histogram, interpolated linearly inside
/// the bucket that holds it (the overflow bucket answers with the last finite
/// bound). `None` when the histogram is empty.
pub fn quantile_ns(buckets: &[u64], q: f64) -> Option<u64> {
    quantiles_ns(buckets, [q])[0]
}

/// Several quantiles of one histogram, summing its buckets once.
pub fn quantiles_ns<const N: usize>(buckets: &[u64], qs: [f64; N]) -> [Option<u64>; N] {
    let total: u64 = buckets.iter().sum();
    let mut out = [None; N];
    if total == 0 {
        return out;
    }
    let ranks = qs.map(|q| ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1));
    if ranks.windows(2).all(|w| w[0] <= w[1]) {
        // Ascending ranks (p50, p90, p99): one walk over the buckets for
        // all of them, same arithmetic as `at_rank`.
        let mut k = 0;
        let mut seen = 0u64;
        for (i, &n) in buckets.iter().enumerate() {
            while k < N && seen + n >= ranks[k] {
                if i >= BUCKETS - 1 {
                    break;
                }
                out[k] = Some(interpolate(i, ranks[k], seen, n));
                k += 1;
            }
            if k == N || i >= BUCKETS - 1 && seen + n >= ranks[k] {
                break;
            }
            seen += n;
        }
        for o in &mut out[k..] {
            *o = Some(upper_bound_ns(BUCKETS - 2));
        }
        return out;
    }
    for (o, rank) in out.iter_mut().zip(ranks) {
        *o = Some(at_rank(buckets, rank));
    }
    out
}

/// Where `rank` falls inside bucket `i` (`seen` counted below it, `n` in it).
fn interpolate(i: usize, rank: u64, seen: u64, n: u64) -> u64 {
    let lower = if i == 0 { 0 } else { upper_bound_ns(i - 1) };
    let upper = upper_bound_ns(i);
    let into = (rank - seen) as f64 / n as f64;
    lower + ((upper - lower) as f64 * into) as u64
}

fn at_rank(buckets: &[u64], rank: u64) -> u64 {
    let mut seen = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if seen + n >= rank {
            if i >= BUCKETS - 1 {
                break;
            }
            return interpolate(i, rank, seen, n);
        }
        seen += n;
    }
    upper_bound_ns(BUCKETS - 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_walk_quantiles_match_rank_by_rank() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for case in 0..3000 {
            let mut b = vec![0u64; BUCKETS];
            for _ in 0..(case % 12) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b[(x % BUCKETS as u64) as usize] += x >> 40 & 0xff;
            }
            if case % 5 == 0 {
                b[BUCKETS - 1] += 3;
            }
            let total: u64 = b.iter().sum();
            let qs = [0.0, 0.5, 0.9, 0.99, 1.0];
            let want = qs.map(|q| (total > 0).then(|| at_rank(&b, ((q * total as f64).ceil() as u64).max(1))));
            assert_eq!(quantiles_ns(&b, qs), want, "{b:?}");
            assert_eq!(quantiles_ns(&b, [0.99, 0.5]), [want[3], want[1]]);
        }
    }

    #[test]
    fn bounds_are_increasing_and_fine() {
        for i in 1..BUCKETS - 1 {
            let (a, b) = (upper_bound_ns(i - 1), upper_bound_ns(i));
            assert!(b > a, "bucket {i}");
            if i > 1 {
                assert!((b as f64) / (a as f64) <= 1.126, "bucket {i} too wide: {a}..{b}");
            }
        }
        assert_eq!(upper_bound_ns(BUCKETS - 2), 100_000_000_000);
    }

    #[test]
    fn bucket_of_is_the_first_bound_that_holds() {
        let linear = |ns: u64| (0..BUCKETS).find(|&i| ns <= upper_bound_ns(i)).unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ns = x >> (x % 64);
            assert_eq!(bucket_of(ns), linear(ns), "{ns}");
        }
        for i in 0..BUCKETS - 1 {
            let ub = upper_bound_ns(i);
            for ns in [ub - 1, ub, ub + 1, ub / 2 + 3] {
                assert_eq!(bucket_of(ns), linear(ns), "{ns}");
            }
        }
    }

    #[test]
    fn bucket_of_round_trips() {
        for i in 0..BUCKETS - 1 {
            let ub = upper_bound_ns(i);
            assert_eq!(bucket_of(ub), i);
            assert_eq!(bucket_of(ub + 1), i + 1);
        }
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn prometheus_steps_are_bounds() {
        for le_ns in [1_000u64, 2_500, 5_000, 10_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000_000] {
            assert_eq!(upper_bound_ns(bucket_of(le_ns)), le_ns, "{le_ns}");
        }
    }

    #[test]
    fn quantiles_are_within_ten_percent() {
        let mut b = vec![0u64; BUCKETS];
        for us in 1..=1000u64 {
            b[bucket_of(us * 1000)] += 1;
        }
        let p50 = quantile_ns(&b, 0.5).unwrap() as f64;
        let p99 = quantile_ns(&b, 0.99).unwrap() as f64;
        assert!((p50 / 500_000.0 - 1.0).abs() <= 0.10, "{p50}");
        assert!((p99 / 990_000.0 - 1.0).abs() <= 0.10, "{p99}");
        assert_eq!(quantile_ns(&vec![0; BUCKETS], 0.5), None);
        let [a, c] = quantiles_ns(&b, [0.5, 0.99]);
        assert_eq!((a, c), (Some(p50 as u64), Some(p99 as u64)));
    }
}
