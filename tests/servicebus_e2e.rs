//! `azure-servicebus` end to end: a KEDA-like client → ebb's gRPC server → ebb's Service Bus
//! client → a wire-level double of the Service Bus management REST API
//! (`common::servicebus`, ATOM fixtures from `tests/fixtures/servicebus/`, SAS verified on every
//! request). No Service Bus emulator runs here; the client code is the production code.
//!
//! Every wait is bounded: each test has an overall limit, each RPC KEDA's 3 s deadline and every
//! polling loop a count and a time bound.

mod common;

use common::{until, within};

use std::time::{Duration, Instant};

use common::ebb::{Keda, assert_status, so_owned, start_ebb, start_ebb_with};
use common::servicebus::{KEY, QueueAnswer, ServiceBusDouble};
use ebb::engine::EngineConfig;
use tonic::Code;

const TEST_LIMIT: Duration = Duration::from_secs(60);

/// `azure-servicebus` trigger metadata as KEDA sends it for an `external` trigger.
fn sb_metadata(connection: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut md: Vec<(String, String)> = vec![
        ("scalerAddress".into(), "ebb.keda.svc.cluster.local:9090".into()),
        ("scalerType".into(), "azure-servicebus".into()),
        ("connectionFromEnv".into(), connection.into()),
        ("pollingInterval".into(), "1".into()),
    ];
    for (k, v) in extra {
        md.retain(|(key, _)| key != k);
        md.push((k.to_string(), v.to_string()));
    }
    md
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_and_subscription_counts() {
    within(TEST_LIMIT, "queue_and_subscription_counts", async {
        let sb = ServiceBusDouble::start().await;
        let (srv, keda) = start_ebb().await;

        let md = sb_metadata(
            &sb.connection_string(),
            &[("queueName", "orders"), ("messageCount", "10"), ("activationMessageCount", "41")],
        );
        let so = so_owned("orders-consumer", &md);
        let c = keda.cycle(&so).await.expect("queue cycle");
        let spec = &c.spec.metric_specs[0];
        assert_eq!((spec.target_size, spec.target_size_float), (10, 10.0), "target = messageCount");
        assert_eq!(c.value(), 42.0, "ActiveMessageCount, not MessageCount or dead letters");
        assert!(c.active, "42 > activationMessageCount 41");

        // Default messageCount 5, activation 42 ⇒ not active (strictly greater).
        let md = sb_metadata(&sb.connection_string(), &[("queueName", "orders"), ("activationMessageCount", "42")]);
        let c = keda.cycle(&so_owned("orders-quiet", &md)).await.expect("queue cycle");
        assert_eq!(c.spec.metric_specs[0].target_size, 5);
        assert!(!c.active);

        let md = sb_metadata(&sb.connection_string(), &[("topicName", "events"), ("subscriptionName", "billing")]);
        let c = keda.cycle(&so_owned("billing-consumer", &md)).await.expect("subscription cycle");
        assert_eq!(c.value(), 7.0);
        assert!(c.active);

        let log = sb.log();
        assert!(log.iter().any(|l| l == "/orders?api-version=2021-05"), "{log:?}");
        assert!(log.iter().any(|l| l == "/events/Subscriptions/billing?api-version=2021-05"), "{log:?}");
        srv.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_operations_across_pages() {
    within(TEST_LIMIT, "regex_operations_across_pages", async {
        let sb = ServiceBusDouble::start().await;
        let (srv, keda) = start_ebb().await;
        // Matches orders-eu (10), orders-us (4) on page 1 and orders-asia (7) on page 2; not
        // `orders` (1), `xorders-eu` (500) or `audit` (1000): the regex must match whole names.
        for (op, want) in [("sum", 21.0), ("max", 10.0), ("avg", 7.0), ("", 21.0)] {
            let mut extra = vec![("queueName", "orders-.*"), ("useRegex", "true")];
            if !op.is_empty() {
                extra.push(("operation", op));
            }
            let md = sb_metadata(&sb.connection_string(), &extra);
            let c = keda.cycle(&so_owned(&format!("regex-{op}"), &md)).await.expect("regex cycle");
            assert_eq!(c.value(), want, "operation {op:?}");
        }
        let log = sb.log();
        assert!(log.iter().any(|l| l.contains("/$Resources/Queues?") && l.contains("$skip=0&$top=100")), "{log:?}");
        assert!(log.iter().any(|l| l.contains("$skip=3&$top=100")), "second page follows the next link: {log:?}");
        assert!(!log.iter().any(|l| l.contains("$skip=6")), "page 2 is short and has no next link: {log:?}");
        srv.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_and_missing_entities_are_unavailable() {
    within(TEST_LIMIT, "wrong_key_and_missing_entities_are_unavailable", async {
        let sb = ServiceBusDouble::start().await;
        let (srv, keda) = start_ebb().await;

        let wrong = "d3Jvbmcta2V5LW5vdC10aGUtb25l=wrong-4411";
        let md = sb_metadata(&sb.connection_string_with(wrong), &[("queueName", "orders")]);
        let so = so_owned("wrong-key", &md);
        let spec = keda.get_metric_spec(&so).await.expect("specs need no source");
        let name = spec.metric_specs[0].metric_name.clone();
        let s = assert_status(keda.get_metrics(&so, &name).await, Code::Unavailable, "authentication", "GetMetrics");
        // Service Bus's own error code, never the text of its answer (issue 13: no read-back).
        assert!(s.message().contains("error code 401"), "Service Bus's code: {}", s.message());
        assert!(!s.message().contains("InvalidSignature"), "no body text in {}", s.message());
        assert!(!s.message().contains(wrong) && !s.message().contains(KEY), "no key in {}", s.message());
        assert!(!s.message().contains("sig="), "no signature in {}", s.message());
        assert_status(keda.is_active(&so).await, Code::Unavailable, "authentication", "IsActive");

        // Unknown queue: Service Bus answers 200 with an empty feed.
        let md = sb_metadata(&sb.connection_string(), &[("queueName", "nope")]);
        let so = so_owned("missing-queue", &md);
        let s = assert_status(keda.get_metrics(&so, "x").await, Code::Unavailable, "not found", "unknown queue");
        assert!(s.message().contains("\"nope\""), "names the queue: {}", s.message());

        // Unknown subscription: HTTP 404 with an <Error> body.
        let md = sb_metadata(&sb.connection_string(), &[("topicName", "events"), ("subscriptionName", "missing")]);
        let so = so_owned("missing-sub", &md);
        let s = assert_status(keda.is_active(&so).await, Code::Unavailable, "not found", "unknown subscription");
        assert!(s.message().contains("missing") && s.message().contains("error code 404"), "{}", s.message());
        srv.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_answers_keep_the_last_value_then_fail() {
    within(TEST_LIMIT, "throttled_answers_keep_the_last_value_then_fail", async {
        let sb = ServiceBusDouble::start().await;
        // Stale after max(2 s, 3 × pollingInterval 1 s) = 3 s.
        let engine = EngineConfig {
            max_staleness: Duration::from_secs(2),
            throttle_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(1),
            ..EngineConfig::default()
        };
        let (srv, keda) = start_ebb_with(engine).await;
        let md = sb_metadata(&sb.connection_string(), &[("queueName", "orders")]);
        let so = so_owned("throttled", &md);
        let name = keda.get_metric_spec(&so).await.expect("spec").metric_specs[0].metric_name.clone();
        let value = async |k: &Keda| k.get_metrics(&so, &name).await.map(|m| m.metric_values[0].metric_value_float);
        assert_eq!(value(&keda).await.expect("first value"), 42.0);

        for (answer, needle) in [(QueueAnswer::NoCountDetails, "CountDetails"), (QueueAnswer::TooManyRequests, "429")] {
            sb.set_queue(answer);
            let since = Instant::now();
            let polls_before = sb.requests();
            // The last good value keeps serving for a while...
            let r = value(&keda).await;
            assert_eq!(r.expect("last good value"), 42.0, "{answer:?}: served from cache");
            // ... until it is stale, then the throttling reason comes through.
            let r = until(Duration::from_secs(10), "stale", || value(&keda), |r| r.is_err()).await;
            let took = since.elapsed();
            let s = r.unwrap_err();
            assert_eq!(s.code(), Code::Unavailable, "{s:?}");
            assert!(s.message().contains("throttled") && s.message().contains(needle), "{answer:?}: {}", s.message());
            assert!(took >= Duration::from_millis(1500), "{answer:?}: last value served only {took:?}");
            assert!(sb.requests() > polls_before, "ebb kept polling");

            // Service Bus recovers: values flow again.
            sb.set_queue(QueueAnswer::Count(42));
            let _ = until(Duration::from_secs(10), "recovered", || value(&keda), |r| matches!(r, Ok(v) if *v == 42.0))
                .await;
        }
        srv.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_50_scaled_objects() {
    const OBJECTS: usize = 50;
    const PHASE: Duration = Duration::from_secs(3);
    const MAX_REQUESTS: usize = 5;
    within(TEST_LIMIT, "coalescing_50_scaled_objects", async {
        let sb = ServiceBusDouble::start().await;
        let (srv, keda) = start_ebb().await;
        let md = sb_metadata(&sb.connection_string(), &[("queueName", "orders"), ("pollingInterval", "1")]);
        let start = Instant::now();
        let cycles = keda.drive_many(OBJECTS, &md, PHASE, 42.0).await;
        let requests = sb.requests();
        eprintln!(
            "{OBJECTS} ScaledObjects, {cycles} KEDA cycles in {:?}, {requests} Service Bus requests",
            start.elapsed()
        );
        assert!(cycles >= OBJECTS);
        assert!((1..=MAX_REQUESTS).contains(&requests), "{requests} requests (max {MAX_REQUESTS})");
        assert_eq!(srv.engine.source_count(), 1, "one source for 50 ScaledObjects");
        srv.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebb_check_prints_the_count() {
    within(TEST_LIMIT, "ebb_check_prints_the_count", async {
        let sb = ServiceBusDouble::start().await;
        let conn = format!("connection={}", sb.connection_string());
        let run = |args: Vec<String>| {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_ebb"))
                    .args(&args)
                    .env("RUST_LOG", "warn")
                    .output()
                    .expect("ebb runs")
            })
        };
        let args = ["check", "--json", "scalerType=azure-servicebus", "queueName=orders", &conn, "messageCount=10"];
        let out = run(args.iter().map(|s| s.to_string()).collect()).await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        assert_eq!(report["metric"], 42.0);
        assert_eq!(report["active"], true);
        assert_eq!(report["desired_replicas"], 5, "ceil(42 / 10)");
        assert!(!stdout.contains(KEY));

        let args = ["check", "scalerType=azure-servicebus", "queueName=orders", &conn];
        let out = run(args.iter().map(|s| s.to_string()).collect()).await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.lines().any(|l| l.starts_with("metric ") && l.trim_end().ends_with("42")), "{text}");

        // Wrong key: exit 1, no key in the output.
        let wrong = "d3JvbmcteA==wrong";
        let conn = format!("connection={}", sb.connection_string_with(wrong));
        let args = ["check", "scalerType=azure-servicebus", "queueName=orders", &conn];
        let out = run(args.iter().map(|s| s.to_string()).collect()).await.unwrap();
        assert_eq!(out.status.code(), Some(1));
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(all.contains("authentication failed") && !all.contains(wrong), "{all}");
        // Bad metadata: exit 2 naming the key.
        let args = ["check", "scalerType=azure-servicebus", "queueName=orders", "topicName=t", &conn];
        let out = run(args.iter().map(|s| s.to_string()).collect()).await.unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("topicName"), "{out:?}");
    })
    .await;
}
