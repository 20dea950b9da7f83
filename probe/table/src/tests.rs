//! Writer ↔ reader tests: round trips, capacities, hostile files, a live
//! writer under concurrent readers, and file replacement.

use std::fs;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::histogram::{bucket_of, BUCKETS};
use crate::layout::*;
use crate::*;

const CAPS: Capacities = Capacities { max_peers: 4, max_routes: 6, max_recent: 3, history_len: 5 };

fn peer(addr: &str, seed: u64, history: usize, codes: usize) -> PeerStats {
    let mut buckets = vec![0u64; BUCKETS];
    buckets[bucket_of(1_500_000)] = seed;
    buckets[BUCKETS - 1] = 1;
    PeerStats {
        addr: addr.parse().unwrap(),
        requests: seed * 10,
        responses: Responses {
            class: [1, seed, 3, 4, 5],
            codes: (0..codes as u16).map(|i| (100 + i * 3, seed + u64::from(i))).collect(),
            codes_other: 7,
        },
        no_response: 2,
        sent_bytes: seed << 40,
        received_bytes: u64::MAX - seed,
        conns: Connections { opened: 9, closed: 8, failed: 1, reset: 2, active: 1 },
        latency: Latency { buckets, sum_ns: seed * 1_500_000, count: seed + 1 },
        window: Window {
            requests_per_sec: 12.5,
            errors_5xx_per_sec: 0.25,
            sent_bytes_per_sec: 1e9,
            received_bytes_per_sec: f64::MIN_POSITIVE,
            latency_avg_ns: 1,
            latency_p50_ns: 2,
            latency_p90_ns: 3,
            latency_p99_ns: 4,
        },
        history: (0..history as u32)
            .map(|i| HistorySample { requests: i, errors_5xx: i * 2, conn_failed: 1, latency_p99_us: 900 + i })
            .collect(),
        first_seen_unix_ns: 1_700_000_000_000_000_000,
        last_seen_unix_ns: 1_700_000_001_000_000_000 + seed,
    }
}

fn route(peer: u32, method: &str, path: &str, codes: usize) -> RouteStats {
    RouteStats {
        peer,
        is_other: false,
        method: method.into(),
        path: path.into(),
        requests: 42,
        responses: Responses {
            class: [0, 40, 0, 1, 1],
            codes: (0..codes as u16).map(|i| (200 + i, 1 + u64::from(i))).collect(),
            codes_other: 0,
        },
        no_response: 0,
        latency_sum_ns: 1234,
        latency_count: 41,
        latency_p50_ns: 10,
        latency_p90_ns: 20,
        latency_p99_ns: 30,
        requests_per_sec: 4.2,
        errors_5xx_per_sec: 0.1,
    }
}

fn recent(n: u64, peer: &str, path: &str) -> RecentRequest {
    RecentRequest {
        unix_ns: n,
        peer: peer.parse().unwrap(),
        method: "GET".into(),
        path: path.into(),
        status: 200 + n as u16,
        latency_ns: n * 1000,
    }
}

fn meta() -> ProbeMeta {
    ProbeMeta {
        pid: 4242,
        started_unix_ns: 1,
        published_unix_ns: 2,
        interval_ns: 1_000_000_000,
        publish_seq: 3,
        history_len: CAPS.history_len,
        interfaces: vec!["lo".into(), "veth-up0".into()],
        counters: ProbeCounters {
            events_dropped: 1,
            conn_table_full: 2,
            conn_evicted: 3,
            peer_table_full: 4,
            route_overflow: 5,
            recent_sampled_out: 6,
            parse_errors: 7,
        },
    }
}

/// Fills every capacity exactly.
fn full_snapshot() -> Snapshot {
    let v6 = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse::<Ipv6Addr>().unwrap(), 8443, 0, 3));
    let mut p3 = peer("127.0.0.1:1", 4, 0, 0);
    p3.addr = v6;
    let mut other = route(1, "", "", 0);
    other.is_other = true;
    Snapshot {
        meta: meta(),
        peers: vec![
            peer("127.0.0.1:9001", 1, 5, PEER_CODES),
            peer("[::1]:9002", 2, 3, 1),
            peer("10.200.0.2:80", 3, 0, 0),
            p3,
        ],
        routes: vec![
            route(0, "GET", "/api/orders/:id", ROUTE_CODES),
            route(0, "POST", "/ünïcødé/日本語/€", 2),
            route(1, "DELETE", &"/long".repeat(25), 0),
            other,
            route(3, "PROPFIND", "/", 1),
            route(2, "GET", "", 0),
        ],
        recent: vec![recent(1, "[::1]:9002", "/a"), recent(2, "127.0.0.1:9001", "/b/€"), recent(3, "[fe80::1%3]:8443", "/")],
    }
}

#[test]
fn round_trip_at_full_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/table");
    let mut w = TableWriter::create(&path, CAPS).unwrap();
    let snap = full_snapshot();
    let rep = w.publish(&snap).unwrap();
    assert_eq!(rep, PublishReport::default());
    let mut r = TableReader::new(&path);
    assert_eq!(r.snapshot().unwrap(), snap);
    assert_eq!(r.generation(), Some(w.generation()));
    // Several publishes alternate slots; each reads back exactly.
    for seq in 4..10 {
        let mut s = full_snapshot();
        s.meta.publish_seq = seq;
        s.peers.truncate((seq % 4) as usize + 1);
        s.routes.retain(|r| (r.peer as usize) < s.peers.len());
        w.publish(&s).unwrap();
        assert_eq!(r.snapshot().unwrap(), s);
    }
    let empty = Snapshot::default();
    w.publish(&empty).unwrap();
    assert_eq!(r.snapshot().unwrap(), empty);
}

#[test]
fn file_and_directory_modes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/table");
    TableWriter::create(&path, CAPS).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
    assert_eq!(fs::metadata(dir.path().join("a/b")).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(fs::read_dir(dir.path().join("a/b")).unwrap().count(), 1, "no temp file left behind");
}

#[test]
fn bad_capacities_are_refused_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let caps = Capacities { max_peers: u32::MAX, max_routes: 1, max_recent: 1, history_len: 1 };
    let err = TableWriter::create(&path, caps).err().unwrap();
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    let err = TableWriter::create(Path::new("/proc/nope/table"), CAPS).err().unwrap();
    assert!(err.to_string().contains("/proc/nope"), "{err}");
}

#[test]
fn publish_truncates_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let mut w = TableWriter::create(&path, CAPS).unwrap();
    let mut snap = full_snapshot();
    snap.peers.push(peer("127.0.0.1:9999", 9, 0, 0)); // 5th peer: dropped
    snap.peers[0].history = (0..8).map(|i| HistorySample { requests: i, ..Default::default() }).collect();
    snap.peers[1].responses.codes = (0..40u16).map(|i| (200 + i, 100 + u64::from(i))).collect();
    snap.routes.push(route(4, "GET", "/of-dropped-peer", 0));
    snap.routes.push(route(0, "GET", "/beyond-capacity", 0));
    snap.routes[0].responses.codes = (0..10u16).map(|i| (500 + i, u64::from(i) + 1)).collect();
    snap.routes[1].path = format!("{}é", "x".repeat(PATH_LEN - 1)); // é straddles the limit
    snap.routes[1].method = "M".repeat(20);
    snap.recent.insert(0, recent(0, "127.0.0.1:1", "/oldest"));
    snap.meta.interfaces = (0..20).map(|i| format!("if{i}")).collect();
    let rep = w.publish(&snap).unwrap();
    assert_eq!(
        rep,
        PublishReport {
            peers_truncated: 1,
            routes_truncated: 2,
            recent_truncated: 1,
            history_truncated: 3,
            codes_folded: 8 + 2,
            interfaces_truncated: 4,
        }
    );
    let got = TableReader::new(&path).snapshot().unwrap();
    assert_eq!(got.peers.len(), 4);
    assert_eq!(got.peers[0].history.iter().map(|h| h.requests).collect::<Vec<_>>(), vec![3, 4, 5, 6, 7]);
    let p1 = &got.peers[1].responses;
    assert_eq!(p1.codes.len(), PEER_CODES);
    assert_eq!(p1.codes.first(), Some(&(208, 108)), "least frequent codes folded");
    assert_eq!(p1.codes_other, 7 + (100..108).sum::<u64>());
    assert_eq!(got.routes.len(), 6);
    assert!(got.routes.iter().all(|r| r.path != "/of-dropped-peer" && r.path != "/beyond-capacity"));
    assert_eq!(got.routes[0].responses.codes.len(), ROUTE_CODES);
    assert_eq!(got.routes[0].responses.codes_other, 1 + 2);
    assert_eq!(got.routes[1].path, "x".repeat(PATH_LEN - 1));
    assert_eq!(got.routes[1].method, "M".repeat(METHOD_LEN));
    assert_eq!(got.recent.iter().map(|r| r.unix_ns).collect::<Vec<_>>(), vec![1, 2, 3], "newest kept");
    assert_eq!(got.meta.interfaces.len(), MAX_IFACES);
}

#[test]
fn missing_and_unpublished() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let mut r = TableReader::new(&path);
    let e = r.snapshot().unwrap_err();
    assert_eq!(e, ReadError::Missing(path.clone()));
    assert_eq!(e.to_string(), format!("probe not running: {} missing", path.display()));
    let mut w = TableWriter::create(&path, CAPS).unwrap();
    assert_eq!(r.snapshot().unwrap_err(), ReadError::NotPublished(path.clone()));
    w.publish(&full_snapshot()).unwrap();
    assert!(r.snapshot().is_ok());
    fs::remove_file(&path).unwrap();
    assert_eq!(r.snapshot().unwrap_err(), ReadError::Missing(path.clone()));
}

#[test]
fn special_files_never_block() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().map(|s| s.success()).unwrap_or(false);
    if made {
        let e = TableReader::new(&fifo).snapshot().unwrap_err();
        assert_eq!(e, ReadError::Corrupt(fifo.clone(), "not a regular file".into()));
    }
    let e = TableReader::new(dir.path()).snapshot().unwrap_err();
    assert!(matches!(e, ReadError::Corrupt(..)), "{e}");
}

fn publish_one(path: &Path) -> Vec<u8> {
    let mut w = TableWriter::create(path, CAPS).unwrap();
    w.publish(&full_snapshot()).unwrap();
    fs::read(path).unwrap()
}

#[test]
fn wrong_magic_version_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let good = publish_one(&path);
    let mut r = TableReader::new(&path);

    let mut b = good.clone();
    b[0] = b'X';
    fs::write(&path, &b).unwrap();
    assert_eq!(r.snapshot().unwrap_err(), ReadError::BadMagic(path.clone()));

    // Version 1 (inline route strings and dense histograms, before
    // 2026-11) and a future one: refused by name, by both ways of reading.
    for version in [1u32, 3] {
        let mut b = good.clone();
        b[H_VERSION..H_VERSION + 4].copy_from_slice(&version.to_le_bytes());
        fs::write(&path, &b).unwrap();
        let e = r.snapshot().unwrap_err();
        assert_eq!(e, ReadError::WrongVersion { path: path.clone(), found: version, expected: ABI_VERSION });
        assert_eq!(r.view_unless(None).unwrap_err(), e);
        assert_eq!(
            e.to_string(),
            format!("table {} has wrong ABI version {version} (expected 2): upgrade the module or the probe", path.display())
        );
    }

    for len in [0, 5, 100, HEADER_SIZE as usize, good.len() - 1] {
        fs::write(&path, &good[..len]).unwrap();
        assert_eq!(r.snapshot().unwrap_err(), ReadError::Truncated(path.clone()), "len {len}");
    }
    let mut b = good.clone();
    b.push(0);
    fs::write(&path, &b).unwrap();
    assert!(matches!(r.snapshot().unwrap_err(), ReadError::Corrupt(..)));

    // A torn-looking slot whose sequence number is stable: corrupt, not busy.
    let mut b = good.clone();
    let active = u64::from_le_bytes(b[H_ACTIVE..H_ACTIVE + 8].try_into().unwrap()) as usize;
    let slot = HEADER_SIZE as usize + active * (good.len() - HEADER_SIZE as usize) / 2;
    b[slot + SLOT_HEADER_SIZE as usize + 40] ^= 0xff;
    fs::write(&path, &b).unwrap();
    let e = r.snapshot().unwrap_err();
    assert_eq!(e, ReadError::Corrupt(path.clone(), "slot checksum mismatch".into()));

    // The same file shrinking under an open reader is reported, not a crash.
    fs::write(&path, &good).unwrap();
    assert!(r.snapshot().is_ok());
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(HEADER_SIZE + 10).unwrap();
    assert_eq!(r.snapshot().unwrap_err(), ReadError::Truncated(path.clone()));
}

/// Records that point outside the pool, or at buckets out of order, or at
/// strings that are not UTF-8, are refused by name even with a valid
/// checksum (the pool offsets are the ABI 2 fields a hostile file would lie
/// in); both ways of reading give the same error.
#[test]
fn pool_references_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let good = publish_one(&path);
    let slot_size = (good.len() - HEADER_SIZE as usize) / 2;
    let active = (u64::from_le_bytes(good[H_ACTIVE..H_ACTIVE + 8].try_into().unwrap()) & 1) as usize;
    let body = HEADER_SIZE as usize + active * slot_size + SLOT_HEADER_SIZE as usize;
    let snap = full_snapshot();
    let n_peers = snap.peers.len().min(CAPS.max_peers as usize);
    let routes = body + n_peers * (PEER_REC_SIZE + CAPS.history_len as usize * HISTORY_REC_SIZE);
    let n_routes = u32::from_le_bytes(good[body - SLOT_HEADER_SIZE as usize + S_N_ROUTES..][..4].try_into().unwrap()) as usize;
    let n_recent = u32::from_le_bytes(good[body - SLOT_HEADER_SIZE as usize + S_N_RECENT..][..4].try_into().unwrap()) as usize;
    let pool = routes + n_routes * ROUTE_REC_SIZE + n_recent * RECENT_REC_SIZE;
    // Peer 0's bucket offset and count; route 0's string offset.
    let p_at = body + ADDR_SIZE + 32 + 5 * 8 + 16 + PEER_CODES * 10 + 5 * 8 + 2 * 8 + 3 * 8;
    let t_at = routes + 8;
    let read = |b: &[u8]| {
        fs::write(&path, b).unwrap();
        let mut r = TableReader::new(&path);
        let e = r.snapshot().unwrap_err();
        assert_eq!(r.view_unless(None).unwrap_err(), e);
        e.to_string()
    };
    let put32 = |b: &mut Vec<u8>, at: usize, v: u32| {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        fix_checksum(b, slot_size);
    };
    let mut b = good.clone();
    put32(&mut b, t_at, u32::MAX);
    assert!(read(&b).ends_with("route strings past the pool"), "{}", read(&b));
    let mut b = good.clone();
    put32(&mut b, p_at, u32::MAX - 3);
    assert!(read(&b).ends_with("peer 0 buckets past the pool"), "{}", read(&b));
    let mut b = good.clone();
    put32(&mut b, p_at + 4, BUCKETS as u32 + 1);
    assert!(read(&b).contains("latency buckets (at most"), "{}", read(&b));
    // Peer 0's first two buckets swapped: out of order.
    let mut b = good.clone();
    let at = pool + u32::from_le_bytes(good[p_at..p_at + 4].try_into().unwrap()) as usize;
    assert!(u32::from_le_bytes(good[p_at + 4..p_at + 8].try_into().unwrap()) >= 2, "sample has two buckets");
    b[at] = good[at + BUCKET_ENTRY_SIZE];
    b[at + BUCKET_ENTRY_SIZE] = good[at];
    fix_checksum(&mut b, slot_size);
    assert!(read(&b).contains("out of order or range"), "{}", read(&b));
    // Route 0's first string byte made a lone continuation byte.
    let mut b = good.clone();
    let at = pool + u32::from_le_bytes(good[t_at..t_at + 4].try_into().unwrap()) as usize;
    b[at] = 0x80;
    fix_checksum(&mut b, slot_size);
    assert!(read(&b).ends_with("is not UTF-8"), "{}", read(&b));
    // And the pool length itself.
    let mut b = good.clone();
    let len_at = body - SLOT_HEADER_SIZE as usize + S_POOL_LEN;
    b[len_at..len_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    fix_checksum(&mut b, slot_size);
    assert!(read(&b).ends_with("active slot has an invalid body length"), "{}", read(&b));
}

/// Deterministic xorshift64* for the fuzz loops.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Recomputes the active slot's checksum so mutated bodies reach the decoder.
fn fix_checksum(b: &mut [u8], slot_size: usize) {
    let active = (u64::from_le_bytes(b[H_ACTIVE..H_ACTIVE + 8].try_into().unwrap()) & 1) as usize;
    let off = HEADER_SIZE as usize + active * slot_size;
    let Some(used) = b.get(off..off + 8).map(|u| u64::from_le_bytes(u.try_into().unwrap()) as usize) else { return };
    let end = (off + SLOT_HEADER_SIZE as usize).saturating_add(used).min(b.len());
    if off + S_CHECKSUMMED_FROM >= end {
        return;
    }
    let sum = checksum(&[&b[off + S_CHECKSUMMED_FROM..end]]);
    b[off + S_CHECKSUM..off + S_CHECKSUM + 8].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn random_and_mutated_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let good = publish_one(&path);
    let slot_size = (good.len() - HEADER_SIZE as usize) / 2;
    let mut r = TableReader::new(&path);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut ok, mut errs) = (0, 0);
    for i in 0..3000 {
        let b: Vec<u8> = match i % 4 {
            // Pure noise, sometimes with a valid magic + version prefix.
            0 => {
                let mut b: Vec<u8> = (0..rng.below(8000)).map(|_| rng.next() as u8).collect();
                if rng.below(2) == 0 && b.len() >= 12 {
                    b[..8].copy_from_slice(&MAGIC);
                    b[8..12].copy_from_slice(&ABI_VERSION.to_le_bytes());
                }
                b
            }
            // A valid file with a few header words scrambled.
            1 => {
                let mut b = good.clone();
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(HEADER_READ);
                    b[at] = rng.next() as u8;
                }
                b
            }
            // Slot header / body bytes scrambled, checksum fixed up so the
            // decoder itself sees the garbage.
            _ => {
                let mut b = good.clone();
                for _ in 0..1 + rng.below(8) {
                    let at = HEADER_SIZE as usize + rng.below(2 * slot_size);
                    b[at] = if rng.below(3) == 0 { 0xff } else { rng.next() as u8 };
                }
                if i % 4 == 3 {
                    fix_checksum(&mut b, slot_size);
                }
                b
            }
        };
        fs::write(&path, &b).unwrap();
        let got = r.snapshot();
        // The in-place view accepts exactly what the decoder accepts, and
        // shows the same figures.
        let viewed = r.view_unless(None).map(|v| v.map(|v| v.to_snapshot()));
        match (&got, viewed) {
            (Ok(s), Ok(Some(v))) => assert_eq!(*s, v),
            (Err(e), Err(f)) => assert_eq!(*e, f),
            (a, b) => panic!("snapshot {a:?} but view {b:?}"),
        }
        match got {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(!e.to_string().contains('\n'));
                errs += 1;
            }
        }
    }
    assert!(errs > 1000, "ok {ok} errs {errs}");
}

/// A snapshot whose every field derives from `n`, so a torn read shows.
fn derived(n: u64) -> Snapshot {
    let n_peers = 1 + (n % 4) as usize;
    let peers = (0..n_peers)
        .map(|i| {
            let mut p = peer(&format!("127.0.0.{}:{}", i + 1, 9000 + n % 1000), n, (n % 6).min(5) as usize, (n % 33) as usize);
            p.requests = n;
            p
        })
        .collect();
    let routes = (0..(n % 7) as usize).map(|i| route((i % n_peers) as u32, "GET", &format!("/r/{n}/{i}"), (n % 9) as usize)).collect();
    let recent = (0..(n % 4)).map(|i| recent(n + i, "[::1]:80", &format!("/{n}"))).collect();
    let mut meta = meta();
    meta.publish_seq = n;
    meta.published_unix_ns = n * 7;
    Snapshot { meta, peers, routes, recent }
}

#[test]
fn concurrent_readers_see_whole_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let mut w = TableWriter::create(&path, CAPS).unwrap();
    w.publish(&derived(1)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut r = TableReader::new(&path);
                let (mut ok, mut busy, mut last) = (0u64, 0u64, 0u64);
                while !stop.load(Ordering::Relaxed) || ok == 0 {
                    match r.snapshot() {
                        Ok(s) => {
                            let n = s.meta.publish_seq;
                            assert_eq!(s, derived(n), "torn snapshot at {n}");
                            assert!(n >= last, "went back from {last} to {n}");
                            last = n;
                            ok += 1;
                        }
                        Err(ReadError::Busy(_)) => busy += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (ok, busy)
            })
        })
        .collect();
    for n in 2..20_000 {
        w.publish(&derived(n)).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for h in readers {
        let (ok, busy) = h.join().unwrap();
        assert!(ok > 0, "ok {ok} busy {busy}");
    }
}

#[test]
fn reopens_when_the_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let mut w1 = TableWriter::create(&path, CAPS).unwrap();
    w1.publish(&derived(1)).unwrap();
    let mut r = TableReader::new(&path);
    assert_eq!(r.snapshot().unwrap().meta.publish_seq, 1);
    let g1 = r.generation();
    // A probe restart: new file, other capacities, renamed over the old one.
    let caps2 = Capacities { max_peers: 100, ..CAPS };
    let mut w2 = TableWriter::create(&path, caps2).unwrap();
    assert_eq!(r.snapshot().unwrap_err(), ReadError::NotPublished(path.clone()));
    w2.publish(&derived(2)).unwrap();
    assert_eq!(r.snapshot().unwrap().meta.publish_seq, 2);
    assert_ne!(r.generation(), g1);
    // The old writer keeps writing its unlinked file without disturbing anyone.
    w1.publish(&derived(3)).unwrap();
    assert_eq!(r.snapshot().unwrap().meta.publish_seq, 2);
}

/// `cargo test --release -p upstreamtop-table read_timing -- --ignored --nocapture`
#[test]
#[ignore]
fn read_timing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let caps = Capacities { max_peers: 1000, max_routes: 16_000, max_recent: 100, history_len: 60 };
    let mut w = TableWriter::create(&path, caps).unwrap();
    let mut s = full_snapshot();
    s.peers = (0..1000).map(|i| peer(&format!("10.1.{}.{}:8080", i / 250, i % 250), i, 60, 8)).collect();
    s.routes = (0..16_000u32).map(|i| route(i / 16, "GET", &format!("/api/v1/resource{}/:id", i % 16), 3)).collect();
    s.recent = (0..100).map(|i| recent(i, "127.0.0.1:1", "/x")).collect();
    let (mut pub_us, mut read_us, mut view_us) = (u128::MAX, u128::MAX, u128::MAX);
    let mut r = TableReader::new(&path);
    for i in 0..60 {
        if i < 30 {
            let t = std::time::Instant::now();
            w.publish(&s).unwrap();
            pub_us = pub_us.min(t.elapsed().as_micros());
        }
        let t = std::time::Instant::now();
        let got = r.snapshot().unwrap();
        read_us = read_us.min(t.elapsed().as_micros());
        assert_eq!(got.routes.len(), 16_000);
        drop(got);
        let t = std::time::Instant::now();
        let view = r.view_unless(None).unwrap().unwrap();
        view_us = view_us.min(t.elapsed().as_micros());
        assert_eq!(view.route_count(), 16_000);
    }
    eprintln!(
        "1000 peers, 16000 routes, history 60: publish {pub_us} µs, snapshot {read_us} µs, view {view_us} µs (min of 30 / 60)"
    );
}

#[test]
fn latest_shares_until_the_next_publish() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let mut w = TableWriter::create(&path, CAPS).unwrap();
    let mut r = TableReader::new(&path);
    assert_eq!(r.latest().unwrap_err(), ReadError::NotPublished(path.clone()));
    w.publish(&derived(1)).unwrap();
    let a = r.latest().unwrap();
    let b = r.latest().unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(*a, derived(1));
    w.publish(&derived(2)).unwrap();
    let c = r.latest().unwrap();
    assert_eq!(*c, derived(2));
    // A replaced file is never mistaken for the cached publish.
    let mut w2 = TableWriter::create(&path, CAPS).unwrap();
    w2.publish(&derived(2)).unwrap();
    let d = r.latest().unwrap();
    assert!(!Arc::ptr_eq(&c, &d));
    fs::remove_file(&path).unwrap();
    assert_eq!(r.latest().unwrap_err(), ReadError::Missing(path.clone()));
}

#[test]
fn view_shows_what_snapshot_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let mut w = TableWriter::create(&path, CAPS).unwrap();
    let mut r = TableReader::new(&path);
    assert_eq!(r.view_unless(None).unwrap_err(), ReadError::NotPublished(path.clone()));
    for snap in [full_snapshot(), derived(1), derived(2), derived(7), Snapshot { meta: meta(), ..Snapshot::default() }] {
        w.publish(&snap).unwrap();
        let decoded = r.snapshot().unwrap();
        let view = r.view_unless(None).unwrap().unwrap();
        assert_eq!(view.to_snapshot(), decoded);
        assert_eq!(view.meta(), &decoded.meta);
        assert_eq!((view.peer_count(), view.route_count()), (decoded.peers.len(), decoded.routes.len()));
        assert!(view.peer(view.peer_count()).is_none());
        for (v, p) in view.peers().zip(&decoded.peers) {
            assert_eq!(v.to_stats(), *p);
            assert_eq!(v.history_len(), p.history.len());
            assert_eq!(v.responses().codes().collect::<Vec<_>>(), p.responses.codes);
            let q = crate::histogram::quantiles_ns(&p.latency.buckets, [0.5, 0.9, 0.99]).map(|q| q.unwrap_or(0));
            assert_eq!(v.latency_quantiles_ns(), q, "published percentiles are the buckets'");
        }
        for (v, rt) in view.routes().zip(&decoded.routes) {
            assert_eq!((v.method(), v.path(), v.is_other()), (rt.method.as_str(), rt.path.as_str(), rt.is_other));
        }
        let id = view.id();
        // Unchanged publish: nothing copied, nothing returned.
        assert!(r.view_unless(Some(id)).unwrap().is_none());
        w.publish(&snap).unwrap();
        assert_ne!(r.view_unless(Some(id)).unwrap().unwrap().id(), id);
    }
}
