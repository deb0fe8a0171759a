//! `ebb simulate` from the command line: JSON with both policies and every figure.

use std::process::Command;

fn ebb(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ebb")).args(args).env("RUST_LOG", "warn").output().expect("ebb runs")
}

#[test]
fn simulate_json_has_both_policies_with_their_figures() {
    let out = ebb(&["simulate", "--trace", "spike-then-idle", "--duration", "3600", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["trace"], "spike-then-idle");
    assert_eq!(report["duration_s"], 3600);
    let policies = report["policies"].as_array().expect("policies");
    let names: Vec<&str> = policies.iter().map(|p| p["policy"].as_str().unwrap()).collect();
    assert_eq!(names, ["keda-default", "ebb", "ebb-backlog", "lower-bound"]);
    for p in policies.iter().filter(|p| p["policy"] != "lower-bound") {
        for field in [
            "replica_seconds",
            "wait_p50_s",
            "wait_p95_s",
            "wait_max_s",
            "peak_backlog",
            "scale_events",
            "cold_starts",
            "first_replica_mean_s",
            "first_replica_max_s",
        ] {
            assert!(p[field].is_number(), "{}: {field} = {}", p["policy"], p[field]);
        }
        assert!(p["x_lower_bound"].as_f64().unwrap() >= 1.0, "{}", p["policy"]);
        assert_eq!(p["cold_starts"], 2, "two spikes in an hour, each after idle");
    }
    // ebb wakes within one 5 s poll plus the 20 s start-up; KEDA waits for its 30 s poll.
    assert!(policies[1]["first_replica_max_s"].as_u64().unwrap() <= 25);
    assert!(policies[0]["first_replica_max_s"].as_u64().unwrap() > 25);
}

#[test]
fn simulate_bad_input_names_the_flag_or_line() {
    let out = ebb(&["simulate", "--throughput", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--throughput"), "{out:?}");

    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, "time,arrivals\n0,5\n1,lots\n").unwrap();
    let out = ebb(&["simulate", "--trace", csv.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3"), "{out:?}");
}
