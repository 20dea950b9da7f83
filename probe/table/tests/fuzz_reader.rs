//! Property tests for the table reader over hostile input: arbitrary bytes,
//! valid tables built from arbitrary snapshots then mutated (with the slot
//! checksum fixed up so the decoder itself meets the garbage), every
//! truncation, every wrong ABI version, and writers racing the reader —
//! including one that scribbles over, truncates and replaces the file.
//!
//! The reader runs inside every nginx worker, so the properties are: no
//! panic, no hang (a watchdog bounds every read loop), an error is one
//! line, and the in-place view accepts exactly what the decoder accepts and
//! shows the same figures. (`cargo fuzz` needs nightly; these run on stable
//! with `cargo test -p upstreamtop-table --test fuzz_reader`.)

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use proptest::prelude::*;
use upstreamtop_table::histogram::BUCKETS;
use upstreamtop_table::layout::*;
use upstreamtop_table::*;

const CAPS: Capacities = Capacities { max_peers: 5, max_routes: 7, max_recent: 4, history_len: 3 };

/// Runs `f` on a helper thread and fails if it does not finish in `limit`:
/// a reader that loops forever on some input shows up as a failure, not a
/// stuck test run. The limit is a watchdog for hangs, generous enough for
/// a loaded 2-core machine, not a performance bound.
fn watchdog<T: Send + 'static>(what: &str, limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let out = f();
        let _ = tx.send(());
        out
    });
    match rx.recv_timeout(limit) {
        Ok(()) => handle.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
        // The sender dropped without sending: the closure panicked.
        Err(mpsc::RecvTimeoutError::Disconnected) => handle.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: still running after {limit:?} (hang)"),
    }
}

/// Read the file both ways and check they agree; returns the decoder's answer.
fn read_both(r: &mut TableReader) -> Result<Snapshot, ReadError> {
    let got = r.snapshot();
    let viewed = r.view_if_new(None).map(|v| v.map(|v| v.to_snapshot()));
    match (&got, viewed) {
        (Ok(s), Ok(Some(v))) => assert_eq!(*s, v, "view and decoder disagree"),
        (Err(e), Err(f)) => assert_eq!(*e, f, "view and decoder fail differently"),
        (a, b) => panic!("snapshot {a:?} but view {b:?}"),
    }
    if let Err(e) = &got {
        let text = e.to_string();
        assert!(!text.contains('\n') && !text.is_empty(), "error is one line: {text:?}");
    }
    got
}

/// A little-endian u64 at `off`, 0 past the end (a damaged file may have
/// been cut short before the field).
fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).map_or(0, |w| u64::from_le_bytes(w.try_into().unwrap()))
}

/// Recompute the checksum of the slot `active` points at, so a mutated body
/// gets past the checksum and reaches the decoder.
fn fix_checksum(b: &mut [u8]) {
    if b.len() < HEADER_READ {
        return;
    }
    let slot_size = u64_at(b, H_SLOT_SIZE) as usize;
    let active = (u64_at(b, H_ACTIVE) & 1) as usize;
    let Some(off) = (HEADER_SIZE as usize).checked_add(active.saturating_mul(slot_size)) else { return };
    let Some(used) = b.get(off..off + 8).map(|u| u64::from_le_bytes(u.try_into().unwrap()) as usize) else { return };
    let end = (off + SLOT_HEADER_SIZE as usize).saturating_add(used).min(b.len());
    if off + S_CHECKSUM + 8 > b.len() || off + S_CHECKSUMMED_FROM >= end {
        return;
    }
    let sum = checksum(&[&b[off + S_CHECKSUMMED_FROM..end]]);
    b[off + S_CHECKSUM..off + S_CHECKSUM + 8].copy_from_slice(&sum.to_le_bytes());
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(|(ip, port, flow, scope)| {
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope))
        }),
    ]
}

fn arb_responses() -> impl Strategy<Value = Responses> {
    (any::<[u64; 5]>(), prop::collection::vec((any::<u16>(), any::<u64>()), 0..40), any::<u64>())
        .prop_map(|(class, codes, codes_other)| Responses { class, codes, codes_other })
}

fn arb_peer() -> impl Strategy<Value = PeerStats> {
    (
        arb_addr(),
        any::<[u64; 4]>(),
        arb_responses(),
        prop::collection::vec(any::<u64>(), 0..BUCKETS + 3),
        prop::collection::vec(any::<[u32; 4]>(), 0..6),
        any::<[u64; 5]>(),
        any::<[f64; 4]>(),
    )
        .prop_map(|(addr, n, responses, buckets, history, c, rates)| PeerStats {
            addr,
            requests: n[0],
            responses,
            no_response: n[1],
            sent_bytes: n[2],
            received_bytes: n[3],
            conns: Connections { opened: c[0], closed: c[1], failed: c[2], reset: c[3], active: c[4] },
            latency: Latency { buckets, sum_ns: n[0] ^ n[1], count: n[2] },
            window: Window {
                requests_per_sec: rates[0],
                errors_5xx_per_sec: rates[1],
                sent_bytes_per_sec: rates[2],
                received_bytes_per_sec: rates[3],
                latency_avg_ns: c[0],
                latency_p50_ns: c[1],
                latency_p90_ns: c[2],
                latency_p99_ns: c[3],
            },
            history: history
                .into_iter()
                .map(|h| HistorySample { requests: h[0], errors_5xx: h[1], conn_failed: h[2], latency_p99_us: h[3] })
                .collect(),
            first_seen_unix_ns: c[4],
            last_seen_unix_ns: n[3],
        })
}

fn arb_route() -> impl Strategy<Value = RouteStats> {
    (
        any::<u32>(),
        any::<bool>(),
        any::<String>(),
        any::<String>(),
        any::<[u64; 7]>(),
        arb_responses(),
        any::<[f64; 2]>(),
    )
        .prop_map(|(peer, is_other, method, path, n, responses, rates)| RouteStats {
            peer,
            is_other,
            method,
            path,
            requests: n[0],
            responses,
            no_response: n[1],
            latency_sum_ns: n[2],
            latency_count: n[3],
            latency_p50_ns: n[4],
            latency_p90_ns: n[5],
            latency_p99_ns: n[6],
            requests_per_sec: rates[0],
            errors_5xx_per_sec: rates[1],
        })
}

fn arb_recent() -> impl Strategy<Value = RecentRequest> {
    (any::<u64>(), arb_addr(), any::<String>(), any::<String>(), any::<u16>(), any::<u64>()).prop_map(
        |(unix_ns, peer, method, path, status, latency_ns)| RecentRequest {
            unix_ns,
            peer,
            method,
            path,
            status,
            latency_ns,
        },
    )
}

fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
    (
        any::<(u32, u64, u64, u64, u64, u32)>(),
        prop::collection::vec(any::<String>(), 0..20),
        any::<[u64; 7]>(),
        prop::collection::vec(arb_peer(), 0..8),
        prop::collection::vec(arb_route(), 0..10),
        prop::collection::vec(arb_recent(), 0..6),
    )
        .prop_map(|((pid, started, published, interval, seq, hist), interfaces, c, peers, routes, recent)| {
            Snapshot {
                meta: ProbeMeta {
                    pid,
                    started_unix_ns: started,
                    published_unix_ns: published,
                    interval_ns: interval,
                    publish_seq: seq,
                    history_len: hist,
                    interfaces,
                    counters: ProbeCounters {
                        events_dropped: c[0],
                        conn_table_full: c[1],
                        conn_evicted: c[2],
                        peer_table_full: c[3],
                        route_overflow: c[4],
                        recent_sampled_out: c[5],
                        parse_errors: c[6],
                    },
                },
                peers,
                routes,
                recent,
            }
        })
}

/// A way to damage a valid table file.
#[derive(Debug, Clone)]
enum Damage {
    /// Overwrite bytes anywhere.
    Bytes(Vec<(usize, u8)>),
    /// Overwrite one header or slot-header number with an arbitrary value.
    Field { slot_relative: bool, offset: usize, value: u64, width: u8 },
    /// Cut the file at this fraction (per mille) of its length.
    Truncate(u16),
    /// Append garbage.
    Extend(Vec<u8>),
}

/// The numeric fields a hostile file would lie in: sizes, counts, offsets.
const HEADER_FIELDS: &[usize] = &[
    H_HEADER_SIZE,
    H_FILE_SIZE,
    H_MAX_PEERS,
    H_MAX_ROUTES,
    H_MAX_RECENT,
    H_HISTORY_LEN,
    H_PEER_REC,
    H_ROUTE_REC,
    H_RECENT_REC,
    H_HISTORY_REC,
    H_BUCKETS,
    H_PEER_CODES,
    H_ROUTE_CODES,
    H_MAX_IFACES,
    H_SLOT0,
    H_SLOT1,
    H_SLOT_SIZE,
    H_ACTIVE,
    H_SEQ[0],
    H_SEQ[1],
];
const SLOT_FIELDS: &[usize] = &[S_USED, S_HISTORY_LEN, S_N_IFACES, S_N_PEERS, S_N_ROUTES, S_N_RECENT, S_IFACES];

fn arb_damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        prop::collection::vec((any::<usize>(), any::<u8>()), 1..16).prop_map(Damage::Bytes),
        (
            any::<bool>(),
            any::<usize>(),
            prop_oneof![
                any::<u64>(),
                Just(0u64),
                Just(u64::MAX),
                Just(u32::MAX as u64),
                (0u64..300),
                Just(HEADER_SIZE),
            ],
            prop_oneof![Just(4u8), Just(8u8)]
        )
            .prop_map(|(slot_relative, i, value, width)| {
                let fields = if slot_relative { SLOT_FIELDS } else { HEADER_FIELDS };
                Damage::Field { slot_relative, offset: fields[i % fields.len()], value, width }
            }),
        (0u16..1000).prop_map(Damage::Truncate),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Extend),
    ]
}

fn apply(b: &mut Vec<u8>, d: &Damage) {
    match d {
        Damage::Bytes(edits) => {
            for &(at, v) in edits {
                let len = b.len();
                if len > 0 {
                    b[at % len] = v;
                }
            }
        }
        Damage::Field { slot_relative, offset, value, width } => {
            let base = if *slot_relative {
                let slot_size = u64_at(b, H_SLOT_SIZE) as usize;
                HEADER_SIZE as usize + (u64_at(b, H_ACTIVE) & 1) as usize * slot_size
            } else {
                0
            };
            let at = base + offset;
            let w = usize::from(*width);
            if at + w <= b.len() {
                b[at..at + w].copy_from_slice(&value.to_le_bytes()[..w]);
            }
        }
        Damage::Truncate(per_mille) => {
            let keep = b.len() * usize::from(*per_mille) / 1000;
            b.truncate(keep);
        }
        Damage::Extend(more) => b.extend_from_slice(more),
    }
}

fn publish_bytes(path: &Path, snap: &Snapshot) -> Vec<u8> {
    let mut w = TableWriter::create(path, CAPS).unwrap();
    w.publish(snap).unwrap();
    fs::read(path).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Noise, sometimes behind a valid magic and version.
    #[test]
    fn arbitrary_bytes_are_an_error_never_a_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..12_000), prefix in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table");
        if prefix && bytes.len() >= 12 {
            bytes[..8].copy_from_slice(&MAGIC);
            bytes[8..12].copy_from_slice(&ABI_VERSION.to_le_bytes());
        }
        fs::write(&path, &bytes).unwrap();
        let mut r = TableReader::new(&path);
        prop_assert!(read_both(&mut r).is_err(), "noise decoded as a table");
    }

    /// Any snapshot the writer accepts reads back with the same peers and
    /// counters (the writer truncates lists and strings to the capacities).
    #[test]
    fn arbitrary_snapshots_round_trip(snap in arb_snapshot()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table");
        publish_bytes(&path, &snap);
        let got = read_both(&mut TableReader::new(&path)).unwrap();
        let kept = snap.peers.len().min(CAPS.max_peers as usize);
        prop_assert_eq!(got.peers.len(), kept);
        for (a, b) in got.peers.iter().zip(&snap.peers) {
            prop_assert_eq!(a.addr, b.addr);
            prop_assert_eq!(a.requests, b.requests);
            prop_assert_eq!(a.responses.class, b.responses.class);
        }
        prop_assert_eq!(got.meta.counters, snap.meta.counters);
        prop_assert!(got.routes.len() <= CAPS.max_routes as usize);
        prop_assert!(got.routes.iter().all(|r| (r.peer as usize) < got.peers.len()), "route peer index in range");
        prop_assert!(got.recent.len() <= CAPS.max_recent as usize);
    }

    /// A valid table, damaged: an error or a snapshot, never a panic; and
    /// with the checksum fixed up, the decoder meets the lies directly.
    #[test]
    fn damaged_tables_are_an_error_or_a_consistent_snapshot(
        snap in arb_snapshot(),
        damage in prop::collection::vec(arb_damage(), 1..4),
        fix in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table");
        let mut b = publish_bytes(&path, &snap);
        for d in &damage {
            apply(&mut b, d);
        }
        if fix {
            fix_checksum(&mut b);
        }
        fs::write(&path, &b).unwrap();
        let mut r = TableReader::new(&path);
        if let Ok(got) = read_both(&mut r) {
            // Whatever was accepted is internally consistent.
            let max_peers = u64_at(&b, H_MAX_PEERS) as u32;
            prop_assert!(got.peers.len() <= max_peers as usize);
            prop_assert!(got.routes.iter().all(|r| (r.peer as usize) < got.peers.len()));
            prop_assert!(got.peers.iter().all(|p| p.latency.buckets.len() == BUCKETS));
        }
    }

    /// Any ABI version but ours is refused by name.
    #[test]
    fn wrong_versions_are_refused(version in any::<u32>().prop_filter("not ours", |v| *v != ABI_VERSION)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table");
        let mut b = publish_bytes(&path, &Snapshot::default());
        b[H_VERSION..H_VERSION + 4].copy_from_slice(&version.to_le_bytes());
        fs::write(&path, &b).unwrap();
        let e = read_both(&mut TableReader::new(&path)).unwrap_err();
        prop_assert_eq!(e, ReadError::WrongVersion { path: path.clone(), found: version, expected: ABI_VERSION });
    }
}

/// Every prefix of a valid table (cut at any byte) is refused.
#[test]
fn every_truncation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let snap = Snapshot {
        peers: vec![PeerStats {
            addr: "127.0.0.1:80".parse().unwrap(),
            requests: 3,
            responses: Responses { class: [0, 3, 0, 0, 0], codes: vec![(200, 3)], codes_other: 0 },
            no_response: 0,
            sent_bytes: 1,
            received_bytes: 2,
            conns: Connections::default(),
            latency: Latency { buckets: vec![0; BUCKETS], sum_ns: 0, count: 0 },
            window: Window::default(),
            history: Vec::new(),
            first_seen_unix_ns: 1,
            last_seen_unix_ns: 2,
        }],
        ..Snapshot::default()
    };
    let good = publish_bytes(&path, &snap);
    let mut r = TableReader::new(&path);
    // Every length in the header page and around the slots, then a stride.
    let lens = (0..HEADER_SIZE as usize + 64).chain((HEADER_SIZE as usize + 64..good.len()).step_by(97));
    watchdog("truncations", Duration::from_secs(120), move || {
        for len in lens {
            fs::write(&path, &good[..len]).unwrap();
            let e = read_both(&mut r).expect_err("a truncated table must not decode");
            assert!(
                matches!(e, ReadError::Truncated(_) | ReadError::BadMagic(_) | ReadError::Corrupt(..)),
                "len {len}: {e}"
            );
        }
    });
}

/// A hostile writer races the reader: it scribbles over the live file in
/// place, truncates and re-extends it, and replaces it by rename, while a
/// legitimate TableWriter keeps publishing. The reader never panics and
/// never hangs; whatever it accepts is one of the legitimate publishes.
#[test]
fn hostile_writer_racing_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let legit = |n: u64| Snapshot {
        meta: ProbeMeta { publish_seq: n, pid: 7, history_len: 1, ..ProbeMeta::default() },
        peers: (0..1 + n % 4)
            .map(|i| PeerStats {
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1)), 8080),
                requests: n * 10 + i,
                responses: Responses { class: [0, n, 0, 0, i], codes: vec![(200, n), (503, i)], codes_other: 0 },
                no_response: 0,
                sent_bytes: n,
                received_bytes: n,
                conns: Connections::default(),
                latency: Latency { buckets: vec![0; BUCKETS], sum_ns: 0, count: 0 },
                window: Window::default(),
                history: Vec::new(),
                first_seen_unix_ns: 0,
                last_seen_unix_ns: 0,
            })
            .collect(),
        ..Snapshot::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Held while the publisher creates a new file and while the scribbler
    // truncates one: the writer MAPS its file, and truncating a file under
    // a mapping that is being written kills the writer with SIGBUS. That is
    // the probe's own file (0644 root), not the reader's problem; the
    // reader, which preads, is what this test is about.
    let path_lock = Arc::new(std::sync::Mutex::new(()));
    // Held by the publisher for each publish and by the scribbler for each
    // in-place scribble. The writer encodes into its mapping and then sums
    // the slot from that mapping, so a scribble landing in the slot it is
    // filling, before the sum, is published with a valid checksum: it IS
    // what that writer published, and no reader can tell it from a legit
    // publish (this failed the `legit` assert below, rarely: once in ten
    // runs at UPSTREAMTOP_FUZZ_RACE_READS=1000000; only root can write the
    // probe's file, and root can forge a checksum anyway). Scribbles still race the reader and land
    // between publishes in both slots and the header; copies and renames
    // still race the publish itself.
    let publish_lock = Arc::new(std::sync::Mutex::new(()));
    let mut writer = TableWriter::create(&path, CAPS).unwrap();
    writer.publish(&legit(1)).unwrap();

    let publisher = {
        let stop = stop.clone();
        let path = path.clone();
        let path_lock = path_lock.clone();
        let publish_lock = publish_lock.clone();
        std::thread::spawn(move || {
            let mut n: u64 = 2;
            while !stop.load(Ordering::Relaxed) {
                // The file may have been replaced by the scribbler: start a
                // fresh generation now and then, as a restarted probe does.
                // Its first publish renames it to the path, so that holds
                // the path lock too (the scribbler must not truncate the
                // writer's own mapped file thinking it is its copy).
                let _held = n.is_multiple_of(500).then(|| {
                    let held = path_lock.lock().unwrap();
                    writer = TableWriter::create(&path, CAPS).unwrap();
                    held
                });
                let _publishing = publish_lock.lock().unwrap();
                writer.publish(&legit(n)).unwrap();
                n += 1;
            }
            n
        })
    };
    let scribbler = {
        let stop = stop.clone();
        let path = path.clone();
        let path_lock = path_lock.clone();
        let publish_lock = publish_lock.clone();
        std::thread::spawn(move || {
            use std::io::{Seek, SeekFrom, Write};
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                rounds += 1;
                match next() % 6 {
                    // Scribble bytes into the live file in place.
                    0..=2 => {
                        let _no_publish = publish_lock.lock().unwrap();
                        if let Ok(mut f) = fs::OpenOptions::new().write(true).open(&path) {
                            let len = f.metadata().map(|m| m.len()).unwrap_or(0).max(1);
                            let at = next() % len;
                            let bytes: Vec<u8> = (0..1 + next() % 64).map(|_| next() as u8).collect();
                            let _ = f.seek(SeekFrom::Start(at)).and_then(|_| f.write_all(&bytes));
                        }
                    }
                    // Put a copy in place (the writer keeps its mapped
                    // inode), then truncate that copy under the reader and
                    // grow it back with zeros.
                    3 => {
                        let _held = path_lock.lock().unwrap();
                        let tmp = path.with_extension("copy");
                        if fs::copy(&path, &tmp).is_ok() && fs::rename(&tmp, &path).is_ok() {
                            if let Ok(f) = fs::OpenOptions::new().write(true).open(&path) {
                                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                                let _ = f.set_len(next() % len.max(1));
                                std::thread::sleep(Duration::from_micros(100));
                                let _ = f.set_len(len);
                            }
                        }
                    }
                    // Replace it by rename with noise behind a valid magic.
                    4 => {
                        let tmp = path.with_extension("evil");
                        let mut b: Vec<u8> = (0..next() % 20_000).map(|_| next() as u8).collect();
                        if b.len() >= 12 {
                            b[..8].copy_from_slice(&MAGIC);
                            b[8..12].copy_from_slice(&ABI_VERSION.to_le_bytes());
                        }
                        if fs::write(&tmp, &b).is_ok() {
                            let _ = fs::rename(&tmp, &path);
                        }
                    }
                    _ => std::thread::sleep(Duration::from_micros(200)),
                }
            }
            rounds
        })
    };

    // More reads (hence more hostile rounds) when hunting a rare race:
    // `UPSTREAMTOP_FUZZ_RACE_READS=2000000 cargo test ...`; the watchdog
    // grows with it.
    let reads: u64 = std::env::var("UPSTREAMTOP_FUZZ_RACE_READS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let limit = Duration::from_secs(120 * reads.div_ceil(20_000));
    let reader_path = path.clone();
    let (ok, errors) = watchdog("racing reader", limit, move || {
        let mut r = TableReader::new(&reader_path);
        let (mut ok, mut errors) = (0u64, 0u64);
        for _ in 0..reads {
            match r.snapshot() {
                Ok(s) => {
                    // A scribble that lands in a slot the checksum covers is
                    // refused; one that lands in an unchecked byte of the
                    // header page can at worst redirect to the other slot,
                    // which holds an older, equally legitimate publish.
                    assert_eq!(s, legit(s.meta.publish_seq), "accepted a snapshot no writer published");
                    ok += 1;
                }
                Err(e) => {
                    assert!(!e.to_string().contains('\n'), "{e}");
                    errors += 1;
                }
            }
            let _ = r.view_if_new(None);
        }
        (ok, errors)
    });
    stop.store(true, Ordering::Relaxed);
    let published = publisher.join().expect("the publisher never fails");
    let rounds = scribbler.join().unwrap();
    eprintln!(
        "{reads} racing reads: {ok} snapshots, {errors} refusals; {published} publishes, {rounds} hostile rounds"
    );
    assert!(errors > 0, "the scribbler was noticed");
}
