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
        recent: vec![
            recent(1, "[::1]:9002", "/a"),
            recent(2, "127.0.0.1:9001", "/b/€"),
            recent(3, "[fe80::1%3]:8443", "/"),
        ],
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

/// Names of the entries of `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn file_and_directory_modes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/table");
    let mut w = TableWriter::create(&path, CAPS).unwrap();
    assert_eq!(fs::metadata(dir.path().join("a/b")).unwrap().permissions().mode() & 0o777, 0o755);
    // Built under a hidden temporary name, 0644 from the start.
    let tmp = entries(&dir.path().join("a/b"));
    assert_eq!(tmp.len(), 1, "{tmp:?}");
    assert!(tmp[0].starts_with(&format!(".table.{}.", std::process::id())) && tmp[0].ends_with(".tmp"), "{tmp:?}");
    assert_eq!(fs::metadata(dir.path().join("a/b").join(&tmp[0])).unwrap().permissions().mode() & 0o777, 0o644);
    assert!(!path.exists() && !w.is_published());
    w.publish(&full_snapshot()).unwrap();
    assert!(w.is_published());
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
    assert_eq!(entries(&dir.path().join("a/b")), ["table"], "no temp file left behind");
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
    // Nothing shows at the path before the first publish.
    let mut w = TableWriter::create(&path, CAPS).unwrap();
    assert_eq!(r.snapshot().unwrap_err(), ReadError::Missing(path.clone()));
    w.publish(&full_snapshot()).unwrap();
    assert!(r.snapshot().is_ok());
    // A table whose header says nothing was published yet.
    let mut b = fs::read(&path).unwrap();
    for off in [H_ACTIVE, H_SEQ[0], H_SEQ[1]] {
        b[off..off + 8].fill(0);
    }
    fs::write(&path, &b).unwrap();
    assert_eq!(r.snapshot().unwrap_err(), ReadError::NotPublished(path.clone()));
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
        assert_eq!(e, ReadError::NotRegular { path: fifo.clone(), what: "a FIFO" });
    }
    let e = TableReader::new(dir.path()).snapshot().unwrap_err();
    assert_eq!(e, ReadError::NotRegular { path: dir.path().to_owned(), what: "a directory" });
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
        assert_eq!(r.view_if_new(None).unwrap_err(), e);
        assert_eq!(
            e.to_string(),
            format!(
                "table {} has wrong ABI version {version} (expected 2): upgrade the module or the probe",
                path.display()
            )
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
    let n_routes =
        u32::from_le_bytes(good[body - SLOT_HEADER_SIZE as usize + S_N_ROUTES..][..4].try_into().unwrap()) as usize;
    let n_recent =
        u32::from_le_bytes(good[body - SLOT_HEADER_SIZE as usize + S_N_RECENT..][..4].try_into().unwrap()) as usize;
    let pool = routes + n_routes * ROUTE_REC_SIZE + n_recent * RECENT_REC_SIZE;
    // Peer 0's bucket offset and count; route 0's string offset.
    let p_at = body + ADDR_SIZE + 32 + 5 * 8 + 16 + PEER_CODES * 10 + 5 * 8 + 2 * 8 + 3 * 8;
    let t_at = routes + 8;
    let read = |b: &[u8]| {
        fs::write(&path, b).unwrap();
        let mut r = TableReader::new(&path);
        let e = r.snapshot().unwrap_err();
        assert_eq!(r.view_if_new(None).unwrap_err(), e);
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
        let viewed = r.view_if_new(None).map(|v| v.map(|v| v.to_snapshot()));
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
            let mut p =
                peer(&format!("127.0.0.{}:{}", i + 1, 9000 + n % 1000), n, (n % 6).min(5) as usize, (n % 33) as usize);
            p.requests = n;
            p
        })
        .collect();
    let routes = (0..(n % 7) as usize)
        .map(|i| route((i % n_peers) as u32, "GET", &format!("/r/{n}/{i}"), (n % 9) as usize))
        .collect();
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
    // Until the new writer publishes, the old table is what readers see.
    assert_eq!(r.snapshot().unwrap().meta.publish_seq, 1);
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
        let view = r.view_if_new(None).unwrap().unwrap();
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
    assert_eq!(r.latest().unwrap_err(), ReadError::Missing(path.clone()));
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
    assert_eq!(r.view_if_new(None).unwrap_err(), ReadError::Missing(path.clone()));
    for snap in [full_snapshot(), derived(1), derived(2), derived(7), Snapshot { meta: meta(), ..Snapshot::default() }]
    {
        w.publish(&snap).unwrap();
        let decoded = r.snapshot().unwrap();
        let view = r.view_if_new(None).unwrap().unwrap();
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
        assert!(r.view_if_new(Some(id)).unwrap().is_none());
        w.publish(&snap).unwrap();
        assert_ne!(r.view_if_new(Some(id)).unwrap().unwrap().id(), id);
    }
}

// ---- Hostile things at the table path, and a writer that trusts only itself ----

/// Runs `f` on its own thread and fails the test if it takes longer than
/// `secs` (a reader that blocks would otherwise hang the test run; the
/// stuck thread dies with the test process).
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {secs} s (blocked?)"),
    }
}

fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo {}: {}", path.display(), std::io::Error::last_os_error());
}

fn header_u64(path: &Path, off: usize) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 8];
    fs::File::open(path).unwrap().read_exact_at(&mut b, off as u64).unwrap();
    u64::from_le_bytes(b)
}

/// Writes `v` at `off` of the file in place (same inode), as another
/// process editing the table would.
fn poke_u64(path: &Path, off: u64, v: u64) {
    use std::os::unix::fs::FileExt;
    fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(&v.to_le_bytes(), off).unwrap();
}

#[test]
fn fifo_at_the_path_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    mkfifo(&path);
    // No process has the FIFO open for writing: a blocking open for
    // reading would wait forever.
    let p = path.clone();
    let (snap, view, opened) = within(10, "reader on a FIFO", move || {
        let mut r = TableReader::new(&p);
        let snap = r.snapshot().map(|_| ()).unwrap_err();
        let view = r.view_if_new(None).map(|_| ()).unwrap_err();
        // The descriptor-level check, as when the FIFO is swapped in
        // between the reader's lstat and its open.
        let opened = crate::reader::open_table(&p).map(|_| ()).unwrap_err();
        (snap, view, opened)
    });
    let want = ReadError::NotRegular { path: path.clone(), what: "a FIFO" };
    assert_eq!((&snap, &view, &opened), (&want, &want, &want));
    assert_eq!(snap.to_string(), format!("table {} is a FIFO, not a regular file: refused", path.display()));

    // Swapped in by rename over a table the reader already has open.
    fs::remove_file(&path).unwrap();
    publish_one(&path);
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let (p, f) = (path.clone(), fifo.clone());
    let (before, after) = within(10, "reader after a FIFO swap", move || {
        let mut r = TableReader::new(&p);
        let before = r.snapshot().map(|s| s.meta.publish_seq);
        fs::rename(&f, &p).unwrap();
        (before, r.snapshot().map(|_| ()).unwrap_err())
    });
    assert_eq!(before, Ok(full_snapshot().meta.publish_seq));
    assert_eq!(after, want);
}

#[test]
fn symlink_at_the_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    let good = publish_one(&real);
    let path = dir.path().join("table");
    std::os::unix::fs::symlink(&real, &path).unwrap();
    let want = ReadError::NotRegular { path: path.clone(), what: "a symbolic link" };
    let mut r = TableReader::new(&path);
    assert_eq!(r.snapshot().unwrap_err(), want);
    assert_eq!(r.view_if_new(None).map(|_| ()).unwrap_err(), want);
    // O_NOFOLLOW on the open itself (ELOOP), for a symlink swapped in
    // after the lstat.
    assert_eq!(crate::reader::open_table(&path).map(|_| ()).unwrap_err(), want);
    assert_eq!(want.to_string(), format!("table {} is a symbolic link, not a regular file: refused", path.display()));

    // A symlink renamed over the table an open reader was reading.
    fs::remove_file(&path).unwrap();
    fs::write(&path, &good).unwrap();
    assert!(r.snapshot().is_ok());
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    fs::rename(&link, &path).unwrap();
    assert_eq!(r.snapshot().unwrap_err(), want);
    // A symlink to a FIFO is refused as a symlink, without blocking.
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&fifo, &path).unwrap();
    let p = path.clone();
    let e = within(10, "reader on a symlink to a FIFO", move || TableReader::new(&p).snapshot().unwrap_err());
    assert_eq!(e, want);
}

#[test]
fn size_caps() {
    assert_eq!(MAX_SLOT_SIZE, 256 << 20);
    assert_eq!(MAX_FILE_SIZE, 4096 + (512 << 20));
    // What MAX_SLOT_SIZE's doc promises: the largest --max-peers with the
    // default history and routes fits.
    let big = slot_size(65_536, 1024 + 65_536, 100, 60).expect("fits");
    assert_eq!(big >> 20, 244);
}

/// A 64 GiB sparse file (no disk used) whose header is well formed but
/// claims capacities far beyond any table: refused on its size, before
/// even its header is trusted; the reader allocates nothing for it.
#[test]
fn huge_sparse_file_is_refused_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let good = publish_one(&path);
    let mut header = good[..HEADER_SIZE as usize].to_vec();
    for off in [H_MAX_PEERS, H_MAX_ROUTES, H_MAX_RECENT, H_HISTORY_LEN] {
        header[off..off + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    }
    let huge: u64 = 64 << 30;
    let write_sparse = |len: u64| {
        fs::write(&path, &header).unwrap();
        fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len).unwrap();
    };
    write_sparse(huge);
    assert_eq!(fs::metadata(&path).unwrap().len(), huge);
    let p = path.clone();
    let (snap, view, cap) = within(10, "reader on a 64 GiB file", move || {
        let mut r = TableReader::new(&p);
        let snap = r.snapshot().unwrap_err();
        let view = r.view_if_new(None).map(|_| ()).unwrap_err();
        (snap, view, r.buffer_capacity())
    });
    let want = ReadError::Corrupt(
        path.clone(),
        format!("file is {huge} bytes, more than any table (at most {})", 4096 + (512u64 << 20)),
    );
    assert_eq!((snap, view), (want.clone(), want));
    assert_eq!(cap, 0, "nothing allocated for the slot");

    // The same header in a file of a size a reader would accept: refused
    // on the capacities it claims.
    write_sparse(HEADER_SIZE + (64 << 20));
    let mut r = TableReader::new(&path);
    assert_eq!(
        r.snapshot().unwrap_err(),
        ReadError::Corrupt(
            path.clone(),
            format!(
                "capacities ({0} peers, {0} routes, {0} recent, history {0}) need slots over 268435456 bytes",
                u32::MAX
            )
        )
    );
    assert_eq!(r.buffer_capacity(), 0);

    // A real table grown (sparse) past what its header implies.
    fs::write(&path, &good).unwrap();
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(good.len() as u64 + 4096).unwrap();
    let e = r.snapshot().unwrap_err();
    assert_eq!(
        e,
        ReadError::Corrupt(path.clone(), format!("file is {} bytes, header says {}", good.len() + 4096, good.len()))
    );
}

/// The largest slot a header may claim costs a reader that slot at most,
/// and only while it reads it: a file refused after the copy (here a
/// sparse file of zeros claiming full slots) leaves no buffer behind.
#[test]
fn a_refused_big_slot_releases_its_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    // Peers only, ~64 MiB per slot.
    let caps = Capacities { max_peers: 30_000, max_routes: 0, max_recent: 0, history_len: 60 };
    let slot = slot_size(caps.max_peers, 0, 0, 60).unwrap();
    assert!(slot > 60 << 20 && slot <= MAX_SLOT_SIZE, "{slot}");
    let mut w = TableWriter::create(&path, caps).unwrap();
    w.publish(&Snapshot { meta: ProbeMeta { history_len: 60, ..meta() }, ..Snapshot::default() }).unwrap();
    drop(w);
    let mut r = TableReader::new(&path);
    assert!(r.snapshot().is_ok());
    let small = r.buffer_capacity();
    assert!(small < 64 << 10, "an empty publish copies a slot header: {small}");
    // Slot 1 (active) now claims every peer; its body is zeros.
    let s1 = HEADER_SIZE + slot;
    let used = body_len(caps.max_peers.into(), 60, 0, 0).unwrap();
    poke_u64(&path, s1 + S_USED as u64, used);
    poke_u64(&path, s1 + S_N_PEERS as u64, u64::from(caps.max_peers)); // n_peers, n_routes = 0
    poke_u64(&path, s1 + S_POOL_LEN as u64, 0);
    assert_eq!(r.snapshot().unwrap_err(), ReadError::Corrupt(path.clone(), "slot checksum mismatch".into()));
    assert_eq!(r.buffer_capacity(), 0, "the slot-sized buffer was released");
}

#[test]
fn file_truncated_or_swapped_between_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let good = publish_one(&path);
    let mut r = TableReader::new(&path);
    assert_eq!(r.snapshot().unwrap(), full_snapshot());
    let g1 = r.generation();

    // Truncated in place under the open reader, then restored in place.
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    for len in [HEADER_SIZE + 10, 100, 0] {
        f.set_len(len).unwrap();
        assert_eq!(r.snapshot().unwrap_err(), ReadError::Truncated(path.clone()), "len {len}");
    }
    {
        use std::os::unix::fs::FileExt;
        f.write_all_at(&good, 0).unwrap();
    }
    assert_eq!(r.snapshot().unwrap(), full_snapshot());
    assert_eq!(r.generation(), g1);

    // Swapped by rename: another table, garbage, nothing, the table again.
    let other = dir.path().join("other");
    let mut w = TableWriter::create(&other, CAPS).unwrap();
    w.publish(&derived(9)).unwrap();
    fs::rename(&other, &path).unwrap();
    assert_eq!(r.snapshot().unwrap(), derived(9));
    assert_ne!(r.generation(), g1);
    fs::write(&other, b"not a table at all").unwrap();
    fs::rename(&other, &path).unwrap();
    assert_eq!(r.snapshot().unwrap_err(), ReadError::BadMagic(path.clone()));
    fs::remove_file(&path).unwrap();
    assert_eq!(r.snapshot().unwrap_err(), ReadError::Missing(path.clone()));
    fs::write(&path, &good).unwrap();
    assert_eq!(r.snapshot().unwrap(), full_snapshot());

    // Truncated and rewritten in place while the reader reads: every read
    // is the whole snapshot or an error naming the damage.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (path, good, stop) = (path.clone(), good.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::os::unix::fs::FileExt;
            let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                f.set_len((n * 7919) % good.len() as u64).unwrap();
                f.write_all_at(&good, 0).unwrap();
            }
            n
        })
    };
    let (mut ok, mut errors) = (0u32, std::collections::BTreeMap::<String, u32>::new());
    for _ in 0..3000 {
        match r.snapshot() {
            Ok(s) => {
                assert_eq!(s, full_snapshot());
                ok += 1;
            }
            Err(
                e @ (ReadError::Truncated(_) | ReadError::Corrupt(..) | ReadError::Busy(_) | ReadError::BadMagic(_)),
            ) => {
                *errors.entry(format!("{:?}", std::mem::discriminant(&e))).or_insert(0) += 1;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(churn.join().unwrap() > 0);
    eprintln!("under in-place truncation: {ok} whole snapshots, errors {errors:?}");
    assert!(ok + errors.values().sum::<u32>() == 3000);
}

/// The writer keeps `active` and the sequence numbers itself: values
/// someone wrote into the file change neither which slot it fills nor the
/// numbers it stores, and the next publishes repair what readers see.
#[test]
fn writer_ignores_a_tampered_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let mut w = TableWriter::create(&path, CAPS).unwrap();
    w.publish(&derived(1)).unwrap();
    let header = |p: &Path| (header_u64(p, H_ACTIVE), header_u64(p, H_SEQ[0]), header_u64(p, H_SEQ[1]));
    assert_eq!(header(&path), (1, 0, 2));

    // Point readers at slot 0 and make both sequence numbers odd, one
    // about to overflow (a writer that read it back would wrap to 0, "never
    // published", or panic in a debug build).
    poke_u64(&path, H_ACTIVE as u64, 0);
    poke_u64(&path, H_SEQ[0] as u64, u64::MAX);
    poke_u64(&path, H_SEQ[1] as u64, 1_000_001);
    let mut r = TableReader::new(&path);
    assert_eq!(r.snapshot().unwrap_err(), ReadError::Busy(path.clone()), "readers see a slot being written");

    w.publish(&derived(2)).unwrap();
    assert_eq!(header(&path), (0, 2, 1_000_001), "slot 0, its own sequence number");
    assert_eq!(r.snapshot().unwrap(), derived(2));
    w.publish(&derived(3)).unwrap();
    assert_eq!(header(&path), (1, 2, 4), "slot 1 again, 2 + 2");
    assert_eq!(r.snapshot().unwrap(), derived(3));

    // An active slot index out of range, and the slot layout itself:
    // the writer keeps writing where it always did, and readers refuse the
    // header someone else broke.
    poke_u64(&path, H_ACTIVE as u64, 7);
    w.publish(&derived(4)).unwrap();
    assert_eq!(header(&path), (0, 4, 4));
    assert_eq!(r.snapshot().unwrap(), derived(4));
    poke_u64(&path, H_SLOT1 as u64, 0);
    poke_u64(&path, H_SLOT_SIZE as u64, u64::MAX);
    w.publish(&derived(5)).unwrap();
    assert_eq!(header(&path), (1, 4, 6));
    assert_eq!(
        r.snapshot().unwrap_err(),
        ReadError::Corrupt(path.clone(), "slot layout does not match capacities".into())
    );
}

/// Until its first publish a writer changes nothing at the path: a writer
/// dropped before it (a probe failing at start) leaves the previous table
/// as it was and removes its temporary file; one killed (no destructor)
/// leaves a temporary file the next writer removes.
#[test]
fn the_previous_table_stays_until_the_first_publish() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let good = publish_one(&path);
    let mut r = TableReader::new(&path);
    assert_eq!(r.snapshot().unwrap(), full_snapshot());
    let generation = r.generation();

    let w = TableWriter::create(&path, Capacities { max_peers: 99, ..CAPS }).unwrap();
    assert!(!w.is_published());
    assert_eq!(fs::read(&path).unwrap(), good, "the path is untouched");
    assert_eq!(r.snapshot().unwrap(), full_snapshot());
    assert_eq!(entries(dir.path()).len(), 2);
    drop(w);
    assert_eq!(entries(dir.path()), ["table"], "temporary file removed");
    assert_eq!(fs::read(&path).unwrap(), good);

    // Leftovers: one of a dead writer (no such pid), ours (alive), and
    // files that only look similar.
    let dead = format!(".table.{}.0123456789abcdef.tmp", u32::MAX);
    let alive = format!(".table.{}.0123456789abcdef.tmp", std::process::id());
    for n in [dead.as_str(), alive.as_str(), ".table.1.notes.tmp", ".tables.1.0123456789abcdef.tmp"] {
        fs::write(dir.path().join(n), b"x").unwrap();
    }
    let mut w = TableWriter::create(&path, CAPS).unwrap();
    let left = entries(dir.path());
    assert!(!left.contains(&dead), "{left:?}");
    assert_eq!(left.len(), 5, "{left:?}");
    assert_eq!(r.snapshot().unwrap(), full_snapshot());
    assert_eq!(r.generation(), generation);
    w.publish(&derived(5)).unwrap();
    assert_eq!(r.snapshot().unwrap(), derived(5));
    assert_eq!(r.generation(), Some(w.generation()));
    let mut left = entries(dir.path());
    left.retain(|n| n != "table");
    assert_eq!(left, [".table.1.notes.tmp", alive.as_str(), ".tables.1.0123456789abcdef.tmp"]);
}

/// A temporary name is created exclusively and without following a
/// symlink: a failed create leaves nothing behind and writes nowhere else.
#[test]
fn create_failure_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A "directory" that is a file: the temporary file cannot be created.
    let blocker = dir.path().join("blocker");
    fs::write(&blocker, b"keep").unwrap();
    let e = TableWriter::create(&blocker.join("table"), CAPS).err().unwrap();
    assert!(e.to_string().contains("blocker"), "{e}");
    assert_eq!(fs::read(&blocker).unwrap(), b"keep");
    assert_eq!(entries(dir.path()), ["blocker"]);
}
