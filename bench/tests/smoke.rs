//! A short smoke run of the load generator against the real relay stack: it starts, measures and
//! reports figures that add up. (The full benchmark is `scripts/bench.sh`, not part of the tests.)

use std::process::Command;

#[test]
fn loadgen_runs_a_small_fanout_against_the_relay_and_everything_arrives() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--system", "relay", "--scenario", "fanout", "--subscribers", "20", "--rate", "50", "--seconds", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadgen failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert_eq!(report["system"], "relay");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["published"].as_u64().unwrap() >= 40, "{report}");
    assert_eq!(report["delivered"], report["expected"], "every publish reaches all 20 subscribers: {report}");
    assert!(report["latency"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(report["server"]["rss_mb"].as_f64().unwrap() > 1.0, "process figures are read: {report}");
}
