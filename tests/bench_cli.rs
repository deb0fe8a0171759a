//! `ebb bench` end to end: the binary runs `ebb serve` as its child, emulates KEDA against it
//! with its own simulated Prometheus-shaped source, and reports JSON. These tests check what
//! the report says (counts, errors, upstream calls, pushes), never how fast anything was.

use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out =
        Command::new(env!("CARGO_BIN_EXE_ebb")).arg("bench").args(args).arg("--json").output().expect("run ebb bench");
    assert!(out.status.success(), "ebb bench failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn keda_emulation_against_a_child_ebb() {
    let r = bench(&[
        "--scaledobjects",
        "30",
        "--polling-interval",
        "1",
        "--duration",
        "5",
        "--streams",
        "3",
        "--source-trace",
        "flip:1.5",
    ]);
    assert_eq!(r["mode"], "keda");
    assert_eq!(r["errors"].as_array().unwrap().len(), 0, "{r:#}");
    for rpc in ["GetMetricSpec", "GetMetrics", "IsActive", "StreamIsActive"] {
        assert!(r["rpcs"][rpc]["count"].as_u64().unwrap() > 0, "{rpc}: {r:#}");
    }
    // 30 ScaledObjects on one source: ebb polls it about once per interval.
    let per_interval = r["upstream_calls_per_interval"].as_f64().unwrap();
    assert!(per_interval <= 2.0, "one poll per interval, not one per ScaledObject: {r:#}");
    assert!(r["activation_push_ms"]["count"].as_u64().unwrap() >= 1, "a rise of the source was pushed: {r:#}");
    assert!(r["scaler_rss_mib"].as_f64().unwrap() > 0.0);
}

#[test]
fn per_trigger_model_polls_once_per_trigger() {
    let r = bench(&[
        "--per-trigger-model",
        "--scaledobjects",
        "20",
        "--polling-interval",
        "1",
        "--duration",
        "4",
        "--source-trace",
        "steady:0",
    ]);
    let per_interval = r["upstream_calls_per_interval"].as_f64().unwrap();
    assert!(per_interval >= 10.0, "about one query per ScaledObject per interval: {r:#}");
}

#[test]
fn closed_loop_and_bad_flags() {
    let r = bench(&["--closed-loop", "--concurrency", "4", "--connections", "2", "--duration", "1"]);
    assert_eq!(r["mode"], "closed-loop");
    assert!(r["rpcs"]["GetMetrics"]["count"].as_u64().unwrap() > 10, "{r:#}");
    assert_eq!(r["errors"].as_array().unwrap().len(), 0, "{r:#}");

    let out = Command::new(env!("CARGO_BIN_EXE_ebb")).args(["bench", "--duration", "3601"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--duration"));
    let out = Command::new(env!("CARGO_BIN_EXE_ebb")).args(["bench", "--source-trace", "wave"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--source-trace"));
}

#[test]
fn writes_an_h2load_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frame.bin");
    let out = Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(["bench", "--write-frame", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let frame = std::fs::read(&path).unwrap();
    assert_eq!(frame[0], 0, "uncompressed");
    let len = u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 5);
    assert!(String::from_utf8_lossy(&frame).contains("127.0.0.1:9091"));
}
