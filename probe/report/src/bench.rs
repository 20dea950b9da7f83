//! Synthetic tables and the in-process endpoint cost, for the benchmark
//! suite (`nginx-tests/src/bin/bench.rs`) and the ignored timing tests.

use std::io;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use upstreamtop_table::histogram::{bucket_of, BUCKETS};
use upstreamtop_table::{
    Capacities, Connections, HistorySample, Latency, PeerStats, ProbeMeta, RecentRequest, Responses, RouteStats,
    Snapshot, TableReader, TableWriter, Window,
};

use crate::config::NginxConfig;
use crate::query::Query;
use crate::render;

/// History samples per peer in [`synthetic_snapshot`] (the probe's default).
pub const HISTORY: u32 = 60;
/// Recent requests in [`synthetic_snapshot`].
pub const RECENT: u32 = 100;

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// `peers` backends (`10.1.x.y:8080`) × `routes` routes each, published
/// now, with full history, three status codes per record, latency spread
/// over the histogram and an "other" route on every fourth peer. Figures
/// are deterministic apart from the timestamps.
pub fn synthetic_snapshot(peers: u32, routes: u32) -> Snapshot {
    let now = now_ns();
    let peer = |i: u32| {
        let mut buckets = vec![0u64; BUCKETS];
        for (k, ms) in [1u64, 2, 5, 20, 120].into_iter().enumerate() {
            buckets[bucket_of(ms * 1_000_000)] = u64::from(i % 7) + 10 * (k as u64 + 1);
        }
        let requests = 1000 + u64::from(i) * 37;
        PeerStats {
            addr: format!("10.1.{}.{}:8080", i / 250, i % 250).parse().expect("valid address"),
            requests,
            responses: Responses {
                class: [0, requests - 30, 0, 20, 10],
                codes: vec![(200, requests - 30), (404, 20), (502, 10)],
                codes_other: 0,
            },
            no_response: u64::from(i % 3),
            sent_bytes: requests * 230,
            received_bytes: requests * 4100,
            conns: Connections { opened: 40, closed: 38, failed: u64::from(i % 2), reset: 1, active: 2 },
            latency: Latency { buckets, sum_ns: requests * 7_300_000, count: requests },
            window: Window {
                requests_per_sec: f64::from(i % 50) + 0.25,
                errors_5xx_per_sec: 0.125,
                sent_bytes_per_sec: 2300.0,
                received_bytes_per_sec: 41000.0,
                latency_avg_ns: 7_300_000,
                latency_p50_ns: 2_100_000,
                latency_p90_ns: 19_000_000,
                latency_p99_ns: 110_000_000,
            },
            history: (0..HISTORY)
                .map(|h| HistorySample {
                    requests: 10 + (h + i) % 40,
                    errors_5xx: h % 3,
                    conn_failed: 0,
                    latency_p99_us: 900 + h,
                })
                .collect(),
            first_seen_unix_ns: now - 3_600_000_000_000,
            last_seen_unix_ns: now - 200_000_000,
        }
    };
    let route = |p: u32, r: u32| {
        let requests = 10 + u64::from((p * 31 + r * 17) % 500);
        RouteStats {
            peer: p,
            is_other: p.is_multiple_of(4) && r == routes - 1,
            method: if r.is_multiple_of(5) { "POST" } else { "GET" }.into(),
            path: format!("/api/v1/resource{r}/:id/items"),
            requests,
            responses: Responses {
                class: [0, requests - 2, 0, 1, 1],
                codes: vec![(200, requests - 2), (404, 1), (503, 1)],
                codes_other: 0,
            },
            no_response: 0,
            latency_sum_ns: requests * 3_500_000,
            latency_count: requests,
            latency_p50_ns: 2_000_000,
            latency_p90_ns: 9_000_000,
            latency_p99_ns: 40_000_000,
            requests_per_sec: f64::from(r) * 0.5,
            errors_5xx_per_sec: 0.0,
        }
    };
    let mut s = Snapshot {
        meta: ProbeMeta {
            pid: 4242,
            started_unix_ns: now - 3_600_000_000_000,
            published_unix_ns: now,
            interval_ns: 1_000_000_000,
            publish_seq: 1,
            history_len: HISTORY,
            interfaces: vec!["lo".into()],
            counters: Default::default(),
        },
        peers: (0..peers).map(peer).collect(),
        routes: (0..peers).flat_map(|p| (0..routes).map(move |r| route(p, r))).collect(),
        recent: Vec::new(),
    };
    if peers > 0 {
        s.recent = (0..RECENT)
            .map(|n| RecentRequest {
                unix_ns: now - u64::from(RECENT - n) * 1_000_000,
                peer: s.peers[(n % peers) as usize].addr,
                method: "GET".into(),
                path: format!("/api/v1/resource{}/:id/items", n % 16),
                status: 200,
                latency_ns: 2_000_000 + u64::from(n) * 1000,
            })
            .collect();
    }
    s
}

/// Where the timing runs put their table: `/dev/shm` (tmpfs) when there
/// is one, like the probe's `/run/upstreamtop` on a usual system, else the
/// temp dir. On a disk filesystem the kernel writes the rewritten pages
/// back every few seconds, and that shows in the reader's wall times,
/// which is not what a worker reading from tmpfs pays.
pub fn table_dir() -> std::path::PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Table capacities that hold [`synthetic_snapshot`]`(peers, routes)`.
pub fn capacities(peers: u32, routes: u32) -> Capacities {
    Capacities {
        max_peers: peers.max(1),
        max_routes: (peers * routes).max(1),
        max_recent: RECENT,
        history_len: HISTORY,
    }
}

/// What [`endpoint_cost`] measured, µs per answer.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointCost {
    /// A fresh publish every time: read the table (copy, checksum,
    /// validate) and render the JSON — what a worker pays once per publish.
    pub fresh_us: Vec<u64>,
    /// Same publish as the previous answer: header read, then the module's
    /// cached body restamped and copied once.
    pub cached_us: Vec<u64>,
    pub body_bytes: usize,
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

impl EndpointCost {
    /// `(p50, p99)` of the fresh answers, µs.
    pub fn fresh_p50_p99(&self) -> (u64, u64) {
        let mut v = self.fresh_us.clone();
        v.sort_unstable();
        (percentile(&v, 0.5), percentile(&v, 0.99))
    }
    /// `(p50, p99)` of the cached answers, µs.
    pub fn cached_p50_p99(&self) -> (u64, u64) {
        let mut v = self.cached_us.clone();
        v.sort_unstable();
        (percentile(&v, 0.5), percentile(&v, 0.99))
    }
}

/// Publishes [`synthetic_snapshot`]`(peers, routes)` into a table at
/// `table` (created, replaced if present) `renders` times, and times what
/// the module does for each publish (read + render with `?routes=routes`)
/// and for a repeated request within it (wall time; the publish itself is
/// not timed).
pub fn endpoint_cost(table: &Path, peers: u32, routes: u32, renders: usize) -> io::Result<EndpointCost> {
    let mut snap = synthetic_snapshot(peers, routes);
    let mut writer = TableWriter::create(table, capacities(peers, routes))?;
    let mut reader = TableReader::new(table);
    let conf = NginxConfig { nginx_version: "bench".into(), ..NginxConfig::default() };
    let query = Query { routes: routes as usize, ..Query::default() };
    let mut cost =
        EndpointCost { fresh_us: Vec::with_capacity(renders), cached_us: Vec::with_capacity(renders), body_bytes: 0 };
    // As the module does: the body of the previous publish, no longer
    // served, is the buffer the next render writes into.
    let mut spare: Vec<u8> = Vec::new();
    // Stands for the socket the cached answer goes to (nginx sends the
    // cached body from where it lies; this copy is the kernel's share).
    let mut out: Vec<u8> = Vec::new();
    for i in 0..renders {
        snap.meta.publish_seq = i as u64 + 1;
        snap.meta.published_unix_ns = now_ns();
        writer.publish(&snap)?;

        let t = Instant::now();
        let view = reader.view_if_new(None).map_err(io::Error::other)?.ok_or_else(|| io::Error::other("no publish"))?;
        let id = view.id();
        let json = render(&view, &conf, &query, now_ns(), std::mem::take(&mut spare));
        cost.fresh_us.push(t.elapsed().as_micros() as u64);
        cost.body_bytes = json.body.len();

        let t = Instant::now();
        let unchanged = reader.view_if_new(Some(id)).map_err(io::Error::other)?.is_none();
        out.clear();
        for piece in json.at(now_ns()) {
            match piece {
                crate::BodyPart::Bytes(b) => out.extend_from_slice(b),
                crate::BodyPart::Number(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
            }
        }
        cost.cached_us.push(t.elapsed().as_micros() as u64);
        if !unchanged {
            return Err(io::Error::other("the table changed under the benchmark"));
        }
        std::hint::black_box(&out);
        spare = json.body;
    }
    Ok(cost)
}
