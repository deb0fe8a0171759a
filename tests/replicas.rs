//! Issue 15: two `ebb serve` replicas behind one Service give KEDA the same answer.
//!
//! Two `ebb serve` processes read one real Prometheus whose value moves every 1.3 s
//! (`pollingInterval: "1"`). KEDA's cycle (GetMetrics) is sent to both side by side every 0.5 s
//! for 60 s, for a `metric` trigger and a `replicas` trigger, and the answers are compared. Both
//! replicas poll on the same wall-clock grid and ask Prometheus for the value at the tick, so
//! they fold the same observations at the same times; what can still differ is a cycle that
//! lands between the two replicas publishing the same tick (a few milliseconds of poll latency
//! apart). The figures are printed; the bounds are the (99 % `replicas`, 95 % `metric`).

// Starts real servers (scripts/install-services.sh): built with `--features integration`,
// which scripts/test.sh (and so CI) turns on.
#![cfg(feature = "integration")]

mod common;

use std::time::{Duration, Instant};

use common::PromStack;
use common::ebb::{Keda, ServeProcess};
use ebb::proto::ScaledObjectRef;

fn so(name: &str, prom: &str, query: &str, mode: &str) -> ScaledObjectRef {
    let md = [
        ("scalerAddress", "ebb.keda.svc:9090"),
        ("scalerType", "prometheus"),
        ("serverAddress", prom),
        ("query", query),
        ("threshold", "10"),
        ("pollingInterval", "1"),
        ("outputMode", mode),
    ];
    ScaledObjectRef {
        name: name.into(),
        namespace: "default".into(),
        scaler_metadata: md.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// GetMetricSpec then GetMetrics until a value comes (bounded).
async fn first_value(keda: &Keda, so: &ScaledObjectRef) -> String {
    let spec = keda.get_metric_spec(so).await.expect("GetMetricSpec");
    let name = spec.metric_specs[0].metric_name.clone();
    common::until(Duration::from_secs(10), "first value", async || keda.get_metrics(so, &name).await.is_ok(), |ok| *ok)
        .await;
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_answer_keda_alike() {
    let stack = PromStack::start().await;
    let metric = common::unique_name("ebb_replicas");
    // Values whose desired replicas (threshold 10) move up and down.
    let values = [5.0, 37.0, 12.0, 80.0, 3.0, 55.0, 21.0, 64.0, 9.0, 46.0, 71.0, 18.0];
    stack.push("replicas", &format!("{metric} {}", values[0])).await;
    stack.wait_for_value(&metric, values[0], Duration::from_secs(30)).await;

    let (a, b) = tokio::join!(ServeProcess::start(&[], "info"), ServeProcess::start(&[], "info"));
    let (ka, kb) = (Keda::from_channel(a.channel().await), Keda::from_channel(b.channel().await));
    let prom = stack.prometheus_url();
    let (m, r) = (so("metric", &prom, &metric, "metric"), so("replicas", &prom, &metric, "replicas"));
    // KEDA creates the trigger on every replica at about the same moment (its first cycle).
    let (nm, _, nr, _) =
        tokio::join!(first_value(&ka, &m), first_value(&kb, &m), first_value(&ka, &r), first_value(&kb, &r));

    // The source moves every 1.3 s, in the background, for the whole measurement.
    let mover = {
        let (push, metric) = (stack.pushgateway_url(), metric.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            for i in 1.. {
                tokio::time::sleep(Duration::from_millis(1300)).await;
                let body = format!("{metric} {}\n", values[i % values.len()]);
                let _ = http.put(format!("{push}/metrics/job/replicas")).body(body).send().await;
            }
        })
    };

    let (mut cycles, mut metric_diff, mut replicas_diff, mut changes) = (0, 0, 0, 0);
    let mut last = None;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let tick = Instant::now();
        let (x, y, p, q) = tokio::join!(
            ka.get_metrics(&m, &nm),
            kb.get_metrics(&m, &nm),
            ka.get_metrics(&r, &nr),
            kb.get_metrics(&r, &nr)
        );
        let v = |g: Result<ebb::proto::GetMetricsResponse, tonic::Status>| {
            g.map(|g| g.metric_values[0].metric_value_float).map_err(|s| s.code())
        };
        let (x, y, p, q) = (v(x), v(y), v(p), v(q));
        cycles += 1;
        if x != y {
            metric_diff += 1;
            eprintln!("cycle {cycles}: metric {x:?} vs {y:?}");
        }
        if p != q {
            replicas_diff += 1;
            eprintln!("cycle {cycles}: replicas {p:?} vs {q:?}");
        }
        if last.is_some_and(|l| l != x) {
            changes += 1;
        }
        last = Some(x);
        tokio::time::sleep(Duration::from_millis(500).saturating_sub(tick.elapsed())).await;
    }
    mover.abort();
    let pct = |d: usize| 100.0 * (cycles - d) as f64 / cycles as f64;
    eprintln!(
        "two replicas, 60 s, a cycle every 0.5 s: {cycles} cycles, the metric changed in {changes}; \
         metric answers differed in {metric_diff} ({:.1} % agree), replicas answers in {replicas_diff} ({:.1} % agree)",
        pct(metric_diff),
        pct(replicas_diff)
    );
    assert!(changes >= 20, "the source moved: {changes} changes seen");
    assert!(pct(replicas_diff) >= 99.0, "replicas: {replicas_diff} of {cycles} differ");
    assert!(pct(metric_diff) >= 95.0, "metric: {metric_diff} of {cycles} differ");
}
