//! The bench binary in `--quick` mode completes and writes valid JSON with a
//! figure for every part of the suite. No figure is checked against its
//! target here: timings are reported, never asserted in tests.
//!
//! Needs root (tcx, netns, bpf_stats). Without root the test says so and passes.

use std::process::Command;
use std::sync::Mutex;

/// One bench at a time: two would share lo's hooks and the bpf_stats
/// switch, and spoil each other's figures.
static ONE_BENCH: Mutex<()> = Mutex::new(());

#[test]
fn quick_bench_completes_and_writes_json_for_every_part() {
    if !nginx_tests::artifacts::is_root() {
        eprintln!("skipping quick_bench_completes_and_writes_json_for_every_part: needs root");
        return;
    }
    let _one = ONE_BENCH.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let run =
        Command::new(env!("CARGO_BIN_EXE_bench")).arg("--quick").arg("--out").arg(&out).output().expect("run bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "bench --quick failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("PASS") || stdout.contains("MISS"), "no table printed:\n{stdout}");

    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("JSON written")).expect("valid JSON");
    assert_eq!(doc["meta"]["quick"], true);
    let figures = doc["figures"].as_array().expect("figures array");
    for section in 1..=7u64 {
        assert!(
            figures.iter().any(|f| f["section"].as_u64() == Some(section)),
            "no figure for part {section}: {doc:#}"
        );
    }
    for f in figures {
        assert!(f["id"].is_string() && f["label"].is_string(), "{f}");
        assert!(["pass", "miss", "info"].contains(&f["verdict"].as_str().unwrap_or("")), "{f}");
        // A value is a number, or null with a note saying why it is missing.
        assert!(f["value"].is_number() || !f["note"].as_str().unwrap_or("").is_empty(), "{f}");
    }
}

/// `--baseline-probe` with this build's own probe as the baseline (an A/A
/// run): part 2 gives both figures and their ratio.
#[test]
fn quick_bench_compares_a_baseline_probe() {
    if !nginx_tests::artifacts::is_root() {
        eprintln!("skipping quick_bench_compares_a_baseline_probe: needs root");
        return;
    }
    let _one = ONE_BENCH.lock().unwrap_or_else(|e| e.into_inner());
    let probe = nginx_tests::artifacts::probe_bin().expect("probe binary");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let run = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--quick", "--only", "2", "--baseline-probe"])
        .arg(&probe)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "bench --baseline-probe failed:\n{}\n{stderr}", String::from_utf8_lossy(&run.stdout));
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("JSON written")).expect("valid JSON");
    let figure = |id: &str| doc["figures"].as_array().unwrap().iter().find(|f| f["id"] == id).cloned();
    for id in ["bpf.versus.baseline_net_us", "bpf.versus.new_net_us", "bpf.versus.ratio"] {
        let f = figure(id).unwrap_or_else(|| panic!("no {id}: {doc:#}"));
        assert!(f["value"].as_f64().is_some_and(|v| v > 0.0), "{f}");
    }
    assert_eq!(figure("bpf.versus.ratio").unwrap()["target"]["value"], 1.15);
    // Part 1 was not wanted: not measured, not reported.
    assert!(figure("overhead.throughput_ratio").is_none(), "{doc:#}");
}
