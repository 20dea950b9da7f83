//! The bench binary in `--quick` mode completes and writes valid JSON with a
//! figure for every part of the suite. No figure is checked against its
//! target here: timings are reported, never asserted in tests.
//!
//! Needs root (tcx, netns, bpf_stats). Without root the test says so and passes.

use std::process::Command;

#[test]
fn quick_bench_completes_and_writes_json_for_every_part() {
    if !nginx_tests::artifacts::is_root() {
        eprintln!("skipping quick_bench_completes_and_writes_json_for_every_part: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let run = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--quick")
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "bench --quick failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("PASS") || stdout.contains("MISS"), "no table printed:\n{stdout}");

    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).expect("JSON written")).expect("valid JSON");
    assert_eq!(doc["meta"]["quick"], true);
    let figures = doc["figures"].as_array().expect("figures array");
    for section in 1..=6u64 {
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
