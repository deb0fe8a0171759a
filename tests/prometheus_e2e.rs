//! End to end against a real Prometheus: Pushgateway → Prometheus → ebb → a KEDA-like client.
//!
//! Each test starts its own Prometheus + Pushgateway pair (`common::PromStack`, Debian's
//! binaries, installed by `scripts/install-services.sh`) and its own ebb server on
//! `127.0.0.1:0`, and drives the RPCs in KEDA's order: GetMetricSpec → GetMetrics → IsActive.
//! Every wait is bounded: each test has an overall limit, each RPC KEDA's 3 s deadline and
//! every polling loop a count and a time bound.

// Starts real servers (scripts/install-services.sh): built with `--features integration`,
// which scripts/test.sh (and so CI) turns on.
#![cfg(feature = "integration")]

mod common;

use common::{until, within};

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::PromStack;
use common::ebb::{Keda, assert_status, prom_metadata, so_owned, start_ebb};
use tonic::Code;

/// Overall limit of one test (a first scrape alone takes ≈ 5 s after Prometheus starts).
const TEST_LIMIT: Duration = Duration::from_secs(120);
/// How long a pushed value may take to become queryable (first scrape ≈ 5 s, then ≈ 1.3 s).
const SCRAPE_WAIT: Duration = Duration::from_secs(30);

/// Repeats KEDA cycles until `done` holds; see [`common::until`].
async fn cycle_until(
    keda: &Keda,
    so: &ebb::proto::ScaledObjectRef,
    limit: Duration,
    what: &str,
    done: impl Fn(&common::ebb::Cycle) -> bool,
) -> common::ebb::Cycle {
    until(limit, what, async || keda.cycle(so).await.unwrap_or_else(|s| panic!("{what}: cycle failed: {s:?}")), done)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauge_follows_pushed_value() {
    within(TEST_LIMIT, "gauge_follows_pushed_value", async {
        let stack = PromStack::start().await;
        // The trigger asks for 0.5 s: below serve's default floor of 1 s.
        let engine =
            ebb::engine::EngineConfig { min_polling_interval: Duration::from_millis(100), ..Default::default() };
        let (srv, keda) = common::ebb::start_ebb_with(engine).await;
        let metric = common::unique_name("ebb_e2e_gauge");
        let job = "gauge_test";
        let query = format!("{metric}{{queue=\"orders\"}}");

        stack.push(job, &format!("{metric}{{queue=\"orders\"}} 17")).await;
        stack.wait_for_value(&query, 17.0, SCRAPE_WAIT).await;

        let md = prom_metadata(
            &stack.prometheus_url(),
            &query,
            &[("threshold", "10"), ("activationThreshold", "5"), ("pollingInterval", "0.5")],
        );
        let so = so_owned("orders-consumer", &md);

        // KEDA's order, by hand, to check every field.
        let spec = keda.get_metric_spec(&so).await.expect("GetMetricSpec");
        assert_eq!(spec.metric_specs.len(), 1, "one spec: {spec:?}");
        let s = &spec.metric_specs[0];
        assert_eq!((s.target_size, s.target_size_float), (10, 10.0), "target = threshold: {s:?}");
        assert!(!s.metric_name.is_empty());
        let metrics = keda.get_metrics(&so, &s.metric_name).await.expect("GetMetrics");
        assert_eq!(metrics.metric_values.len(), 1, "{metrics:?}");
        let v = &metrics.metric_values[0];
        assert_eq!(v.metric_name, s.metric_name);
        assert_eq!((v.metric_value, v.metric_value_float), (17, 17.0), "{v:?}");
        assert!(keda.is_active(&so).await.expect("IsActive").result, "17 > activationThreshold 5");

        // StreamIsActive: the first message comes at once, then one right after the poll that
        // sees the value cross the activation threshold.
        let mut stream = keda.stream_is_active(&so).await.expect("StreamIsActive opens");
        let first = within(Duration::from_secs(2), "first StreamIsActive message", stream.message())
            .await
            .expect("stream ok")
            .expect("stream open");
        assert!(first.result, "first message reflects the current state (active)");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            // Bounded by the test limit and by the server closing the stream.
            while let Ok(Some(msg)) = stream.message().await {
                if tx.send((Instant::now(), msg.result)).is_err() {
                    break;
                }
            }
        });

        async fn next_with(
            rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, bool)>,
            want: bool,
            limit: Duration,
        ) -> Instant {
            let deadline = tokio::time::Instant::now() + limit;
            for _ in 0..1000 {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some((at, got))) if got == want => return at,
                    Ok(Some(_)) => continue, // a repeat of the old state is allowed
                    Ok(None) => panic!("StreamIsActive ended before reporting active={want}"),
                    Err(_) => break,
                }
            }
            panic!("StreamIsActive did not report active={want} within {limit:?}");
        }

        // Down: 17 → 3 (below activation 5).
        let pushed = Instant::now();
        stack.push(job, &format!("{metric}{{queue=\"orders\"}} 3")).await;
        stack.wait_for_value(&query, 3.0, SCRAPE_WAIT).await;
        let seen_by_prometheus = Instant::now();
        let told = next_with(&mut rx, false, Duration::from_secs(10)).await;
        // pollingInterval 0.5 s on its grid, plus slack for a loaded 2-core machine.
        let lag = told.saturating_duration_since(seen_by_prometheus);
        let since_push = told.saturating_duration_since(pushed);
        eprintln!("StreamIsActive reported inactive {since_push:?} after the push, {lag:?} after Prometheus had it");
        // Scrape (1 s) + poll (0.5 s grid) + slack.
        assert!(since_push < Duration::from_secs(4), "inactive pushed {since_push:?} after the push");
        assert!(lag < Duration::from_millis(2500), "inactive pushed {lag:?} after Prometheus had the value");

        let c = cycle_until(&keda, &so, Duration::from_secs(5), "GetMetrics shows 3", |c| c.value() == 3.0).await;
        assert_eq!(c.metrics.metric_values[0].metric_value, 3);
        assert!(!c.active, "3 is not > activationThreshold 5");

        // Up again (scale from zero): 3 → 17.
        let pushed = Instant::now();
        stack.push(job, &format!("{metric}{{queue=\"orders\"}} 17")).await;
        stack.wait_for_value(&query, 17.0, SCRAPE_WAIT).await;
        let seen_by_prometheus = Instant::now();
        let told = next_with(&mut rx, true, Duration::from_secs(10)).await;
        let lag = told.saturating_duration_since(seen_by_prometheus);
        let since_push = told.saturating_duration_since(pushed);
        eprintln!("StreamIsActive reported active {since_push:?} after the push, {lag:?} after Prometheus had it");
        // Scrape (1 s) + poll (0.5 s grid) + slack.
        assert!(since_push < Duration::from_secs(4), "active pushed {since_push:?} after the push");
        assert!(lag < Duration::from_millis(2500), "active pushed {lag:?} after Prometheus had the value");
        let c = cycle_until(&keda, &so, Duration::from_secs(5), "GetMetrics shows 17", |c| c.value() == 17.0).await;
        assert!(c.active);

        reader.abort();
        srv.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_null_values() {
    within(TEST_LIMIT, "ignore_null_values", async {
        let stack = PromStack::start().await;
        let (srv, keda) = start_ebb().await;
        let metric = common::unique_name("ebb_e2e_absent");
        // Sanity: Prometheus answers, with an empty vector.
        let answer = stack.query(&metric).await;
        assert_eq!(answer["data"]["result"].as_array().map(Vec::len), Some(0), "{answer}");

        // Default ignoreNullValues (true): an empty result is 0, inactive.
        let md = prom_metadata(&stack.prometheus_url(), &metric, &[("pollingInterval", "1")]);
        let so = so_owned("absent-default", &md);
        let c = keda.cycle(&so).await.expect("empty result is 0 with ignoreNullValues default");
        assert_eq!(c.spec.metric_specs.len(), 1);
        assert_eq!(c.metrics.metric_values.len(), 1);
        assert_eq!(c.metrics.metric_values[0].metric_value, 0);
        assert_eq!(c.metrics.metric_values[0].metric_value_float, 0.0);
        assert!(!c.active);

        // ignoreNullValues "false": the empty result is a source failure.
        let md =
            prom_metadata(&stack.prometheus_url(), &metric, &[("pollingInterval", "1"), ("ignoreNullValues", "false")]);
        let so = so_owned("absent-strict", &md);
        let spec = keda.get_metric_spec(&so).await.expect("specs need no source");
        let name = spec.metric_specs[0].metric_name.clone();
        assert_status(keda.get_metrics(&so, &name).await, Code::Unavailable, "empty", "GetMetrics");
        assert_status(keda.is_active(&so).await, Code::Unavailable, "empty", "IsActive");

        srv.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiple_series_is_an_error() {
    within(TEST_LIMIT, "multiple_series_is_an_error", async {
        let stack = PromStack::start().await;
        let (srv, keda) = start_ebb().await;
        let metric = common::unique_name("ebb_e2e_multi");
        stack.push("multi_test", &format!("{metric}{{queue=\"a\"}} 1\n{metric}{{queue=\"b\"}} 2\n")).await;
        stack.wait_for_value(&format!("count({metric})"), 2.0, SCRAPE_WAIT).await;

        let md = prom_metadata(&stack.prometheus_url(), &metric, &[("pollingInterval", "1")]);
        let so = so_owned("two-series", &md);
        let spec = keda.get_metric_spec(&so).await.expect("specs need no source");
        let name = spec.metric_specs[0].metric_name.clone();
        assert_status(keda.get_metrics(&so, &name).await, Code::Unavailable, "multiple", "GetMetrics");
        assert_status(keda.is_active(&so).await, Code::Unavailable, "multiple", "IsActive");

        srv.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_300_scaled_objects() {
    const OBJECTS: usize = 300;
    const PHASE: Duration = Duration::from_secs(5);
    const MAX_QUERIES: f64 = 8.0;

    within(TEST_LIMIT, "coalescing_300_scaled_objects", async {
        let stack = PromStack::start().await;
        let (srv, keda) = start_ebb().await;
        let metric = common::unique_name("ebb_e2e_shared");
        stack.push("shared_test", &format!("{metric} 42")).await;
        stack.wait_for_value(&metric, 42.0, SCRAPE_WAIT).await;

        let md = prom_metadata(&stack.prometheus_url(), &metric, &[("pollingInterval", "1")]);
        // Let the harness's last query be counted before the baseline is read.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = stack.query_requests_total().await;

        // No harness queries from here to `after`.
        let latencies = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
        let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let phase_start = Instant::now();
        let mut tasks = Vec::with_capacity(OBJECTS);
        for i in 0..OBJECTS {
            let keda = keda.clone();
            let so = so_owned(&format!("consumer-{i:03}"), &md);
            let latencies = latencies.clone();
            let failures = failures.clone();
            tasks.push(tokio::spawn(async move {
                // Bounded in time (PHASE) and count (a 50 ms pause makes > 100 impossible).
                for _ in 0..200 {
                    if phase_start.elapsed() >= PHASE {
                        break;
                    }
                    let t = Instant::now();
                    match keda.cycle(&so).await {
                        Ok(c) if c.metrics.metric_values.len() == 1 && c.value() == 42.0 && c.active => latencies.lock().unwrap().push(t.elapsed()),
                        Ok(c) => failures.lock().unwrap().push(format!(
                            "{} at {:?}: unexpected answer {c:?}",
                            so.name,
                            phase_start.elapsed()
                        )),
                        Err(s) => failures.lock().unwrap().push(format!(
                            "{} at {:?}: {:?}: {}",
                            so.name,
                            phase_start.elapsed(),
                            s.code(),
                            s.message()
                        )),
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }));
        }
        for t in tasks {
            within(PHASE + Duration::from_secs(10), "a ScaledObject's loop", t).await.expect("task");
        }
        let phase = phase_start.elapsed();
        let after = stack.query_requests_total().await;

        let failures = failures.lock().unwrap().clone();
        let mut latencies = latencies.lock().unwrap().clone();
        latencies.sort();
        let cycles = latencies.len();
        let pct = |p: usize| latencies.get((cycles * p / 100).min(cycles.saturating_sub(1))).copied().unwrap_or_default();
        let queries = after - before;
        eprintln!(
            "{OBJECTS} ScaledObjects, {cycles} KEDA cycles in {phase:?} (cycle p50 {:?}, p99 {:?}, max {:?}), \
             {queries} Prometheus queries",
            pct(50),
            pct(99),
            pct(100)
        );
        let failing: std::collections::BTreeSet<&str> =
            failures.iter().map(|f| f.split_once(' ').map_or(f.as_str(), |(n, _)| n)).collect();
        assert!(
            failures.is_empty(),
            "{} failed RPC cycles on {} ScaledObjects {failing:?}; first: {:#?}",
            failures.len(),
            failing.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(cycles >= OBJECTS, "every ScaledObject completed at least one cycle ({cycles})");
        assert!(queries >= 1.0, "ebb queried Prometheus at all ({queries})");
        assert!(
            queries <= MAX_QUERIES,
            "{OBJECTS} ScaledObjects on one source, pollingInterval 1 s, {phase:?}: {queries} queries (max {MAX_QUERIES})"
        );
        assert_eq!(srv.engine.source_count(), 1, "identical metadata shares one source");

        srv.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_down_is_unavailable_fast() {
    within(TEST_LIMIT, "source_down_is_unavailable_fast", async {
        let (srv, keda) = start_ebb().await;
        let md = prom_metadata(&common::closed_url(), "sum(queue_depth)", &[("pollingInterval", "1")]);
        let so = so_owned("nobody-home", &md);

        let spec = keda.get_metric_spec(&so).await.expect("specs need no source");
        let name = spec.metric_specs[0].metric_name.clone();
        let start = Instant::now();
        let r = keda.get_metrics(&so, &name).await;
        let took = start.elapsed();
        assert_status(r, Code::Unavailable, "", "GetMetrics on a closed port");
        // The contract is "UNAVAILABLE within 2 s" (well inside KEDA's 3 s deadline); the
        // extra 0.5 s is slack for a loaded machine, not a performance target.
        assert!(took < Duration::from_millis(2500), "UNAVAILABLE took {took:?}");

        let start = Instant::now();
        assert_status(keda.is_active(&so).await, Code::Unavailable, "", "IsActive on a closed port");
        assert!(start.elapsed() < Duration::from_millis(2500), "IsActive took {:?}", start.elapsed());

        srv.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_metadata_is_invalid_argument() {
    within(TEST_LIMIT, "bad_metadata_is_invalid_argument", async {
        let (srv, keda) = start_ebb().await;
        // No Prometheus needed: metadata is rejected before any I/O. (key, value or None to
        // remove it, the key the error must name)
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("query", None, "query"),
            ("serverAddress", None, "serverAddress"),
            ("threshold", None, "threshold"),
            ("threshold", Some("ten"), "threshold"),
            ("activationThreshold", Some("lots"), "activationThreshold"),
            ("ignoreNullValues", Some("maybe"), "ignoreNullValues"),
            ("pollingInterval", Some("0"), "pollingInterval"),
            ("pollingInterval", Some("soon"), "pollingInterval"),
            ("outputMode", Some("bogus"), "outputMode"),
            ("scalerType", Some("nope"), "scalerType"),
            ("scalerType", None, "scalerType"),
        ];
        let closed = common::closed_url();
        for (i, (key, value, named)) in cases.iter().enumerate() {
            let mut md = prom_metadata(&closed, "sum(queue_depth)", &[]);
            match value {
                Some(v) => {
                    md.retain(|(k, _)| k != key);
                    md.push((key.to_string(), v.to_string()));
                }
                None => md.retain(|(k, _)| k != key),
            }
            let so = so_owned(&format!("bad-{i}"), &md);
            let ctx = format!("{key}={value:?}");
            assert_status(
                keda.get_metric_spec(&so).await,
                Code::InvalidArgument,
                named,
                &format!("GetMetricSpec {ctx}"),
            );
            assert_status(
                keda.get_metrics(&so, "whatever").await,
                Code::InvalidArgument,
                named,
                &format!("GetMetrics {ctx}"),
            );
            assert_status(keda.is_active(&so).await, Code::InvalidArgument, named, &format!("IsActive {ctx}"));
        }
        srv.shutdown().await;
    })
    .await;
}

/// Issue 16: `rateQuery` is evaluated in the same poll as `query`, and `policy: drain` reads it
/// as the arrival rate (shown on `/metrics`), sizing for it plus the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_query_feeds_the_drain_policy() {
    within(Duration::from_secs(60), "rate_query_feeds_the_drain_policy", async {
        let stack = PromStack::start().await;
        let metric = common::unique_name("ebb_e2e_depth");
        stack.push("drain", &format!("{metric} 120\n{metric}_rate 12.5")).await;
        stack.wait_for_value(&format!("{metric}_rate"), 12.5, SCRAPE_WAIT).await;
        stack.wait_for_value(&metric, 120.0, SCRAPE_WAIT).await;
        let (srv, keda) = start_ebb().await;
        let rate_query = format!("sum({metric}_rate)");
        let md = prom_metadata(
            &stack.prometheus_url(),
            &metric,
            &[
                ("threshold", "10"),
                ("pollingInterval", "1"),
                ("outputMode", "replicas"),
                ("policy", "drain"),
                ("rateQuery", &rate_query),
                ("throughputPerReplica", "5"),
            ],
        );
        let so = so_owned("drain-prom", &md);
        // 12.5 msg/s at 5 msg/s a replica and ρ 0.9 needs 3; the 120 waiting (plus what arrives
        // during start-up) needs more: never fewer than 3.
        let c = cycle_until(&keda, &so, Duration::from_secs(10), "a decision", |c| c.value() >= 3.0).await;
        assert!(c.active);
        let text = reqwest::get(format!("http://{}/metrics", srv.http_addr)).await.unwrap().text().await.unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("ebb_scaledobject_arrival_rate_per_second{") && l.contains("drain-prom"))
            .unwrap_or_else(|| panic!("no arrival rate in:\n{text}"));
        assert!(line.ends_with(" 12.5"), "{line}");
        srv.shutdown().await;
    })
    .await;
}
