//! Latency histograms in the daemon's memory, on the table's bucket scheme
//! ([`histogram::BUCKETS`](upstreamtop_table::histogram::BUCKETS) buckets,
//! at most 12.5% wide).
//!
//! A dense histogram costs a `u64` per bucket whatever it counts, and most
//! routes see a handful of distinct latencies: kept dense, thousands of
//! routes would be megabytes of mostly zeros. So a histogram starts sparse
//! — one `u64` per used bucket, the bucket index in the top byte, its count
//! below — and turns dense once it uses more than [`SPARSE_MAX`] buckets (a
//! busy route, where the dense array is worth its size). Counts, sums and
//! percentiles are the same in both forms.

use upstreamtop_table::histogram::{bucket_of, quantiles_ns, BUCKETS};

/// Beyond this many used buckets (256 bytes), the dense array.
const SPARSE_MAX: usize = 32;
const COUNT_BITS: u32 = 56;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
// Bucket indexes must fit the top byte of a sparse cell.
const _: () = assert!(BUCKETS <= 256);

#[derive(Debug, Clone)]
enum Cells {
    /// `bucket << 56 | count`, ascending by bucket, no zero counts.
    Sparse(Vec<u64>),
    Dense(Box<[u64; BUCKETS]>),
}

impl Default for Cells {
    fn default() -> Self {
        Cells::Sparse(Vec::new())
    }
}

/// A cumulative latency histogram with its sum and count.
#[derive(Debug, Clone, Default)]
pub struct Hist {
    cells: Cells,
    pub sum_ns: u64,
    /// Latencies added (or carried over, see [`Hist::with_totals`]).
    pub count: u64,
}

impl Hist {
    /// Sum and count of an earlier run without its buckets (the table
    /// keeps none per route): percentiles start over from new data.
    pub fn with_totals(sum_ns: u64, count: u64) -> Self {
        Hist { cells: Cells::default(), sum_ns, count }
    }

    /// A histogram from dense buckets (the table's per-peer ones).
    pub fn from_buckets(buckets: &[u64], sum_ns: u64, count: u64) -> Self {
        let mut h = Hist::with_totals(sum_ns, count);
        for (i, &n) in buckets.iter().enumerate().take(BUCKETS).filter(|(_, &n)| n > 0) {
            h.add_to_bucket(i, n);
        }
        h
    }

    pub fn add(&mut self, ns: u64) {
        self.add_in(bucket_of(ns), ns);
    }

    /// [`Hist::add`] when the caller knows the bucket (one event lands in
    /// several histograms).
    pub fn add_in(&mut self, bucket: usize, ns: u64) {
        self.add_to_bucket(bucket, 1);
        self.sum_ns = self.sum_ns.wrapping_add(ns);
        self.count += 1;
    }

    fn add_to_bucket(&mut self, bucket: usize, n: u64) {
        if let Cells::Sparse(cells) = &mut self.cells {
            let b = bucket as u64;
            match cells.binary_search_by_key(&b, |c| c >> COUNT_BITS) {
                Ok(i) if (cells[i] & COUNT_MASK) + n <= COUNT_MASK => {
                    cells[i] += n;
                    return;
                }
                Err(i) if cells.len() < SPARSE_MAX && n <= COUNT_MASK => {
                    cells.insert(i, b << COUNT_BITS | n);
                    return;
                }
                // Too many buckets used (or a count past 56 bits).
                _ => self.make_dense(),
            }
        }
        if let Cells::Dense(d) = &mut self.cells {
            d[bucket] += n;
        }
    }

    fn make_dense(&mut self) {
        let mut d = Box::new([0u64; BUCKETS]);
        self.write_into(&mut d[..]);
        self.cells = Cells::Dense(d);
    }

    /// The counts into `out` (BUCKETS long, zeroed first).
    fn write_into(&self, out: &mut [u64]) {
        match &self.cells {
            Cells::Dense(d) => out.copy_from_slice(&d[..]),
            Cells::Sparse(cells) => {
                out.fill(0);
                for c in cells {
                    out[(c >> COUNT_BITS) as usize] = c & COUNT_MASK;
                }
            }
        }
    }

    /// The dense buckets into `out` (resized to BUCKETS; its allocation is
    /// reused across publishes).
    pub fn write_dense(&self, out: &mut Vec<u64>) {
        out.resize(BUCKETS, 0);
        self.write_into(out);
    }

    /// p50, p90 and p99 in ns; 0 for each when no bucket holds anything.
    pub fn percentiles(&self) -> [u64; 3] {
        const QS: [f64; 3] = [0.5, 0.9, 0.99];
        let q = match &self.cells {
            Cells::Dense(d) => quantiles_ns(&d[..], QS),
            Cells::Sparse(cells) if cells.is_empty() => return [0; 3],
            Cells::Sparse(_) => {
                let mut d = [0u64; BUCKETS];
                self.write_into(&mut d);
                quantiles_ns(&d, QS)
            }
        };
        q.map(|v| v.unwrap_or(0))
    }

    /// Empty again, keeping the allocation (the per-interval histograms).
    pub fn clear(&mut self) {
        match &mut self.cells {
            Cells::Sparse(cells) => cells.clear(),
            Cells::Dense(d) => d.fill(0),
        }
        self.sum_ns = 0;
        self.count = 0;
    }

    /// Heap bytes held (for the memory test).
    #[cfg(test)]
    pub fn heap_bytes(&self) -> usize {
        match &self.cells {
            Cells::Sparse(c) => c.capacity() * 8,
            Cells::Dense(_) => BUCKETS * 8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use upstreamtop_table::histogram::{quantile_ns, upper_bound_ns};

    /// The dense reference: what the daemon kept before.
    fn dense_of(samples: &[u64]) -> Vec<u64> {
        let mut b = vec![0u64; BUCKETS];
        for &ns in samples {
            b[bucket_of(ns)] += 1;
        }
        b
    }

    fn check_same(samples: &[u64]) -> Hist {
        let mut h = Hist::default();
        for &ns in samples {
            h.add(ns);
        }
        let want = dense_of(samples);
        let mut got = Vec::new();
        h.write_dense(&mut got);
        assert_eq!(got, want);
        let p = h.percentiles();
        for (q, got) in [0.5, 0.9, 0.99].into_iter().zip(p) {
            assert_eq!(got, quantile_ns(&want, q).unwrap_or(0), "q {q}");
        }
        assert_eq!((h.count, h.sum_ns), (samples.len() as u64, samples.iter().sum::<u64>()));
        h
    }

    #[test]
    fn sparse_and_dense_agree_with_the_dense_reference() {
        assert_eq!(check_same(&[]).percentiles(), [0; 3]);
        // Few distinct latencies: stays sparse and small.
        let few: Vec<u64> = (0..1000).map(|i| [1_000_000, 2_000_000, 45_000][i % 3]).collect();
        let h = check_same(&few);
        assert!(h.heap_bytes() <= 64, "{}", h.heap_bytes());
        // Spread over every bucket (0 ns to the overflow bucket): dense.
        let spread: Vec<u64> = (0..5000u64).map(|i| i * i * i * 997).chain([0, u64::MAX / 2]).collect();
        let h = check_same(&spread);
        assert_eq!(h.heap_bytes(), BUCKETS * 8);
        // Exactly SPARSE_MAX buckets, then one more.
        let edge: Vec<u64> = (0..SPARSE_MAX).map(upper_bound_ns).collect();
        assert!(check_same(&edge).heap_bytes() <= SPARSE_MAX * 8);
        let mut more = edge.clone();
        more.push(upper_bound_ns(SPARSE_MAX + 5));
        assert_eq!(check_same(&more).heap_bytes(), BUCKETS * 8);
    }

    #[test]
    fn from_buckets_round_trips_and_huge_counts_go_dense() {
        let mut b = dense_of(&[5_000, 5_000, 9_000_000]);
        let h = Hist::from_buckets(&b, 7, 3);
        let mut out = Vec::new();
        h.write_dense(&mut out);
        assert_eq!(out, b);
        b[3] = COUNT_MASK + 10;
        let h = Hist::from_buckets(&b, 7, 3);
        h.write_dense(&mut out);
        assert_eq!(out, b);
    }

    #[test]
    fn clear_keeps_nothing_but_the_allocation() {
        let mut h = check_same(&[1_000, 2_000_000]);
        h.clear();
        assert_eq!((h.count, h.sum_ns, h.percentiles()), (0, 0, [0; 3]));
        let mut out = Vec::new();
        h.write_dense(&mut out);
        assert!(out.iter().all(|&n| n == 0));
    }
}
