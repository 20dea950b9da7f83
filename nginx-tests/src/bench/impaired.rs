//! Part 7: exactness under impairment. The run of `tests/impaired_link.rs`
//! ([`crate::impaired_link::run`]), longer and with a random seed (printed;
//! `--impair-seed N` replays it): the seed plans the traffic, drives the
//! bridge's decisions and picks the loss, duplication and reordering rates
//! around the test's. Reported: per backend, the figures where the probe's
//! table or the module's JSON differ from the ground truth (0 expected; the
//! two direct interim peers are a known limit, reported without a target),
//! and what the impairment did (frames lost, duplicated, reordered; the
//! backends' TCP retransmissions).

use std::time::Duration;

use super::figures::{Figure, Target};
use super::Settings;
use crate::impair::{Impairment, LinkStats};
use crate::impaired_link::{self, check_impaired, Outcome, RunSpec, MSS};

/// The run for `seed`: rates drawn from it (the test's 1% loss, 3%
/// duplication and 5% reordering within each range).
pub fn spec(seed: u64, nginx_requests: u64, direct_requests: usize) -> RunSpec {
    let mut z = seed;
    let mut unit = || {
        // splitmix64, as the traffic plan's own generator.
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = z;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((x ^ (x >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let between = |u: f64, lo: f64, hi: f64| lo + u * (hi - lo);
    let impairment = Impairment::NONE
        .loss(between(unit(), 0.005, 0.02))
        .duplicate(between(unit(), 0.01, 0.05))
        .reorder(between(unit(), 0.02, 0.08), Duration::from_micros(between(unit(), 2_000.0, 8_000.0) as u64));
    RunSpec { seed, mss: MSS, impairment, nginx_requests, direct_requests }
}

/// A seed for this run: different every time.
pub fn random_seed() -> u64 {
    let nanos = super::now_unix_ns();
    // Fits in 48 bits: easy to read and retype.
    (nanos ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16
}

pub fn run(s: &Settings) -> Vec<Figure> {
    let spec = spec(s.impair_seed, s.impair_requests, s.impair_direct);
    eprintln!(
        "bench: impaired link, seed {} (replay: --impair-seed {}): loss {:.2}%, duplicate {:.2}%, reorder {:.2}% up to {:?}, MSS {}, {} requests through nginx + 2 x {} direct",
        spec.seed,
        spec.seed,
        spec.impairment.loss * 100.0,
        spec.impairment.duplicate * 100.0,
        spec.impairment.reorder * 100.0,
        spec.impairment.reorder_delay,
        spec.mss,
        spec.nginx_requests,
        spec.direct_requests
    );
    match impaired_link::run(&spec) {
        Ok(out) => {
            eprintln!("{}", out.report);
            figures(&spec, &out)
        }
        Err(e) => {
            let why = format!("seed {}: {e:#}", spec.seed);
            eprintln!("bench: impaired link failed: {why}");
            vec![Figure::failed(7, "impair.run", "exactness under impairment", "", Target::Equal(0.0), &why)]
        }
    }
}

fn figures(spec: &RunSpec, out: &Outcome) -> Vec<Figure> {
    let mut f = Vec::new();
    let imp = &spec.impairment;
    f.push(
        Figure::new(7, "impair.exchanges", "exchanges over the impaired link", (spec.nginx_requests + 2 * spec.direct_requests as u64) as f64, "", Target::None)
            .note(format!(
                "seed {} (replay: --impair-seed {}); both ways loss {:.2}%, duplicate {:.2}%, reorder {:.2}% up to {} ms; MSS {}; {} through nginx (2 workers, 4 backends), 2 x {} direct with interim responses; traffic {:.1} s",
                spec.seed,
                spec.seed,
                imp.loss * 100.0,
                imp.duplicate * 100.0,
                imp.reorder * 100.0,
                imp.reorder_delay.as_millis(),
                spec.mss,
                spec.nginx_requests,
                spec.direct_requests,
                out.traffic_time.as_secs_f64()
            )),
    );
    // Per backend: app 1, app 2, app6 1, app6 2, then the direct peers.
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for peer in &out.peers {
        let key = if peer.asserted {
            let group = peer.name.split(' ').next().unwrap_or("peer").to_owned();
            let n = seen.entry(group.clone()).or_insert(0);
            *n += 1;
            format!("{group}_{n}")
        } else if peer.name.contains("Continue") {
            "direct_continue".to_owned()
        } else {
            "direct_early_hints".to_owned()
        };
        let mismatches = peer.mismatches();
        let detail = if mismatches.is_empty() {
            format!(
                "{}: requests {}, {} codes, sent {}, received {}: table and JSON equal",
                peer.addr,
                peer.want.requests,
                peer.want.codes.len(),
                peer.want.sent,
                peer.want.received
            )
        } else {
            format!("{}: {}", peer.addr, mismatches.join("; "))
        };
        let (target, detail) = if peer.asserted {
            (Target::Equal(0.0), detail)
        } else {
            (
                Target::None,
                format!("known limit (interim responses reordered with the final status), not judged; {detail}"),
            )
        };
        f.push(
            Figure::new(
                7,
                &format!("impair.mismatch.{key}"),
                &format!("figures differing from the ground truth, {}", key.replace('_', " ")),
                mismatches.len() as f64,
                "",
                target,
            )
            .note(detail),
        );
    }
    let (b, h) = (out.stats.to_backend, out.stats.to_host);
    let check = match check_impaired(&out.stats, spec.mss) {
        Ok(()) => String::new(),
        Err(e) => format!("; CHECK FAILED: {e:#}"),
    };
    let both = |get: fn(&LinkStats) -> u64| (get(&b) + get(&h)) as f64;
    let per_dir = |get: fn(&LinkStats) -> u64| {
        format!("to backends {} of {} TCP frames, to host {} of {}", get(&b), b.tcp_frames, get(&h), h.tcp_frames)
    };
    f.push(
        Figure::new(7, "impair.frames_lost", "frames the link lost", both(|s| s.dropped), "", Target::None)
            .note(format!("{}{check}", per_dir(|s| s.dropped))),
    );
    f.push(
        Figure::new(
            7,
            "impair.frames_duplicated",
            "frames the link duplicated",
            both(|s| s.duplicated),
            "",
            Target::None,
        )
        .note(per_dir(|s| s.duplicated)),
    );
    f.push(
        Figure::new(
            7,
            "impair.frames_reordered",
            "frames that arrived after a later one",
            both(|s| s.reordered),
            "",
            Target::None,
        )
        .note(format!("{}; held back {} + {}", per_dir(|s| s.reordered), b.held, h.held)),
    );
    f.push(
        Figure::new(7, "impair.backend_retransmits", "backends' TCP retransmitted segments", out.tcp.retrans_segs as f64, "", Target::None).note(format!(
            "backend namespace over the traffic: {} retransmission timeouts, {} segments queued out of order, {} DSACKs received",
            out.tcp.timeouts, out.tcp.ofo_queue, out.tcp.dsack_recv
        )),
    );
    f.push(
        Figure::new(
            7,
            "impair.nginx_error_log",
            "problems in nginx's error log",
            out.error_log_problems.len() as f64,
            "",
            Target::Equal(0.0),
        )
        .note(out.error_log_problems.iter().take(3).cloned().collect::<Vec<_>>().join(" | ")),
    );
    f
}
