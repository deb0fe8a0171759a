//! The `ebb` binary: `check` against a real Prometheus, its exit codes, and `--help`.

mod common;

use std::process::Command;
#[cfg(feature = "integration")]
use std::time::Duration;

#[cfg(feature = "integration")]
use common::PromStack;

fn ebb(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ebb")).args(args).env("RUST_LOG", "warn").output().expect("ebb runs")
}

/// Runs `ebb` off the async workers.
#[cfg(feature = "integration")]
async fn ebb_async(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || ebb(&args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap()
}

// A real Prometheus (scripts/install-services.sh): with `--features integration`, as scripts/test.sh runs it.
#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_polls_once_and_prints_metric_activity_and_replicas() {
    let stack = PromStack::start().await;
    let metric = common::unique_name("ebb_cli_check");
    stack.push("cli", &format!("{metric} 42")).await;
    stack.wait_for_value(&metric, 42.0, Duration::from_secs(30)).await;
    let server = format!("serverAddress={}", stack.prometheus_url());
    let query = format!("query={metric}");
    let args = ["check", "--json", "scalerType=prometheus", &server, &query, "threshold=10", "activationThreshold=5"];
    let out = ebb_async(args.iter().map(|s| s.to_string()).collect()).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["metric"], 42.0);
    assert_eq!(report["active"], true);
    assert_eq!(report["desired_replicas"], 5, "ceil(42 / 10)");
    assert_eq!(report["target"], 10.0);

    // Human output, replicas mode: target 1, the desired count as the metric.
    let args = ["check", "scalerType=prometheus", &server, &query, "threshold=10", "outputMode=replicas"];
    let out = ebb_async(args.iter().map(|s| s.to_string()).collect()).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("desired replicas  5"), "{text}");
    assert!(text.contains("output mode       replicas (target 1)"), "{text}");

    // Issue 13: a pollingInterval under serve's floor is reported as serve would poll it.
    let args = ["check", "scalerType=prometheus", &server, &query, "threshold=10", "pollingInterval=0.001"];
    let out = ebb_async(args.iter().map(|s| s.to_string()).collect()).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("polling interval  1 s"), "{text}");
    assert!(text.contains("note") && text.contains("--min-polling-interval"), "{text}");
}

/// Issue 13: `ebb check` sends ebb's identity only where `serve` would.
#[test]
fn check_refuses_identity_towards_unapproved_hosts() {
    let args = [
        "check",
        "scalerType=prometheus",
        "serverAddress=http://127.0.0.1:9",
        "query=up",
        "threshold=1",
        "azureManagedPrometheusResourceURL=https://vault.azure.net/.default",
    ];
    let out = ebb(&args);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("serverAddress"), "{out:?}");
    let args = [
        "check",
        "scalerType=azure-servicebus",
        "namespace=x",
        "queueName=q",
        "cloud=Private",
        "endpointSuffix=evil.example",
    ];
    let out = ebb(&args);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("endpointSuffix"), "{out:?}");
}

#[test]
fn check_exit_codes_name_the_problem() {
    // Bad metadata: exit 2, the key named, as KEDA would see it in INVALID_ARGUMENT.
    let out = ebb(&["check", "scalerType=prometheus", "serverAddress=http://127.0.0.1:9", "query=up", "threshold=ten"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("threshold"), "{out:?}");
    // Not key=value: exit 2.
    assert_eq!(ebb(&["check", "scalerType"]).status.code(), Some(2));
    // Source down: exit 1 with the reason.
    let closed = common::closed_url();
    let server = format!("serverAddress={closed}");
    let out = ebb(&["check", "scalerType=prometheus", &server, "query=up", "threshold=1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach source"), "{err}");
}

#[test]
fn secrets_given_to_check_never_reach_its_output() {
    let closed = common::closed_url();
    let server = format!("serverAddress={closed}");
    let token = "tok-3f9a1c77e0b2";
    let bearer = format!("bearerToken={token}");
    for json in [false, true] {
        let mut args = vec!["check", "scalerType=prometheus", &server, "query=up", "threshold=1", "authModes=bearer"];
        args.push(&bearer);
        if json {
            args.insert(1, "--json");
        }
        let out = ebb(&args);
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!all.contains(token), "token leaked: {all}");
    }
}

#[test]
fn serve_help_lists_the_address_flags() {
    let out = ebb(&["serve", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--grpc-addr") && text.contains("[env: EBB_GRPC_ADDR=]"), "{text}");
    assert!(text.contains("0.0.0.0:9090") && text.contains("0.0.0.0:8080"), "{text}");
}
