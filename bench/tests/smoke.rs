//! Short smoke runs of the load generator against the real servers: it starts, measures and
//! reports figures that add up. (The full benchmark is `scripts/bench.sh`, not part of the tests.)

use std::process::Command;

fn loadgen(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadgen {args:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout).expect("one JSON report")
}

#[test]
fn loadgen_runs_a_small_fanout_against_the_relay_and_everything_arrives() {
    let report = loadgen(&[
        "--system",
        "relay",
        "--scenario",
        "fanout",
        "--subscribers",
        "20",
        "--rate",
        "50",
        "--seconds",
        "1",
    ]);
    assert_eq!(report["system"], "relay");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["published"].as_u64().unwrap() >= 40, "{report}");
    assert_eq!(report["delivered"], report["expected"], "every publish reaches all 20 subscribers: {report}");
    assert!(report["latency"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(report["server"]["rss_mb"].as_f64().unwrap() > 1.0, "process figures are read: {report}");
}

/// The declared path (a JetStream stream made by the operator's code) and the relay-sim ceiling,
/// pinned: every acknowledged publish is delivered, and the CPU per publish is reported.
#[test]
fn loadgen_measures_the_declared_path_and_the_ceiling_pinned() {
    for system in ["relay", "relay-sim"] {
        let args = [
            "--system",
            system,
            "--declared",
            "--pin",
            "--scenario",
            "throughput",
            "--concurrency",
            "8",
            "--seconds",
            "1",
        ];
        let report = loadgen(&args);
        assert_eq!(report["system"], format!("{system} (declared)"));
        assert_eq!(report["declared"], true);
        assert_eq!(report["errors"], 0, "{report}");
        assert!(report["published"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report["delivered"], report["expected"], "{report}");
        assert!(report["server_cpu_ms_per_1k"].as_f64().unwrap() > 0.0, "{report}");
        assert!(report["pinning"].as_str().unwrap().starts_with("servers started on CPU 0"), "{report}");
    }
}
