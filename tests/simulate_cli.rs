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
    assert_eq!(names, ["keda-default", "keda-tuned", "ebb", "ebb-backlog", "oracle", "floor"]);
    // The oracle asks before the work comes, so it has no cold starts to time.
    let simulated = |p: &&serde_json::Value| !["floor", "oracle"].contains(&p["policy"].as_str().unwrap());
    for p in policies.iter().filter(simulated) {
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
        assert_eq!(p["cold_starts"], 2, "two spikes in an hour, each after idle");
    }
    for p in policies.iter().filter(|p| p["policy"] != "floor") {
        assert!(p["x_floor"].as_f64().unwrap() >= 1.0, "{}", p["policy"]);
        for field in ["x_keda_default", "x_keda_tuned"] {
            assert!(p[field].is_number(), "{}: {field}", p["policy"]);
        }
    }
    let floor = &policies[5];
    assert_eq!(floor["x_floor"], 1.0);
    for field in ["wait_p50_s", "wait_p95_s", "wait_max_s"] {
        assert!(floor[field].is_null(), "the floor has no {field}");
    }
    assert_eq!(report["settings"]["arrivals"], "trace");
    // ebb wakes within one 5 s poll plus the 20 s start-up; KEDA waits for its 30 s poll.
    assert!(policies[2]["first_replica_max_s"].as_u64().unwrap() <= 25);
    assert!(policies[0]["first_replica_max_s"].as_u64().unwrap() > 25);
}

#[test]
fn simulate_echoes_the_new_settings_and_the_window() {
    let out = ebb(&[
        "simulate",
        "--trace",
        "steady",
        "--duration",
        "1200",
        "--source-kind",
        "log",
        "--partitions",
        "4",
        "--arrivals",
        "poisson",
        "--report-window",
        "600:300",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let s = &report["settings"];
    assert_eq!((&s["partitions"], &s["arrivals"]), (&serde_json::json!(4), &serde_json::json!("poisson")));
    assert_eq!(s["report_window"], serde_json::json!([600, 300]));
    for p in report["policies"].as_array().unwrap() {
        let w = p["window_replica_seconds"].as_u64().expect("a window figure");
        // The floor is the work itself (100 msg/s ÷ 10 for 300 s), whatever the partitions.
        let most = if p["policy"] == "floor" { 3_300 } else { 300 * 4 };
        assert!(w <= most, "{}: {w} replica-s in 300 s with 4 partitions", p["policy"]);
    }
}

#[test]
fn simulate_bad_input_names_the_flag_or_line() {
    for (args, name) in [
        (&["simulate", "--throughput", "0"][..], "--throughput"),
        (&["simulate", "--partitions", "4"][..], "--partitions"),
        (&["simulate", "--source-kind", "log", "--partitions", "0"][..], "--partitions"),
        (&["simulate", "--arrivals", "uniform"][..], "--arrivals"),
        (&["simulate", "--report-window", "10"][..], "--report-window"),
    ] {
        let out = ebb(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(name), "{args:?}: {out:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, "time,arrivals\n0,5\n1,lots\n").unwrap();
    let out = ebb(&["simulate", "--trace", csv.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3"), "{out:?}");
}
