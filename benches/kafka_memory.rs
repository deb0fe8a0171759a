//! `ebb serve`'s memory with thousands of Kafka ScaledObjects on one broker.
//!
//! Run: `cargo bench --features kafka --bench kafka_memory` (builds `ebb` in release mode with
//! the `kafka` feature; needs tansu, installed by `scripts/install-services.sh`).
//!
//! KEDA keeps full cluster metadata per Kafka ScaledObject (about 35 GiB for 3,000, KEDA
//! #7453). This bench starts a real tansu broker (sqlite engine) on loopback, creates
//! `EBB_BENCH_TOPICS` topics of 4 partitions with records in them and `EBB_BENCH_GROUPS`
//! consumer groups with committed offsets, runs `ebb serve` as a child process, registers
//! `EBB_BENCH_SCALEDOBJECTS` ScaledObjects spread over the groups (GetMetricSpec, GetMetrics,
//! IsActive each, as KEDA does), keeps them polled for a few intervals, checks every lag
//! against the broker's numbers, and reads the child's RSS.
//!
//! Defaults: 3,000 ScaledObjects over 300 groups and 30 topics (`--bench`); 300 / 30 / 3 as a
//! smoke run under `cargo test`.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::ebb::ServeProcess;
use common::kafka::Tansu;
use ebb::proto::external_scaler_client::ExternalScalerClient;
use ebb::proto::{GetMetricsRequest, ScaledObjectRef};

const PARTITIONS: i32 = 4;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The process's resident memory in MiB (ebb bench reads it the same way).
fn rss_mib(pid: u32) -> f64 {
    ebb::bench::proc_usage(pid).0
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

fn so_ref(i: usize, groups: usize, topics: usize, bootstrap: &str) -> ScaledObjectRef {
    let g = i % groups;
    let md: HashMap<String, String> = [
        ("scalerType", "kafka".to_string()),
        ("bootstrapServers", bootstrap.to_string()),
        ("consumerGroup", format!("group-{g}")),
        ("topic", format!("topic-{}", g % topics)),
        ("lagThreshold", "5".to_string()),
        ("allowIdleConsumers", "true".to_string()),
        ("pollingInterval", "5".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    ScaledObjectRef { name: format!("so-{i}"), namespace: "bench".to_string(), scaler_metadata: md }
}

/// The lag the broker implies for group `g`: every group committed `g % 5` on partition 0 of
/// its topic, which holds 10 records; the other partitions are empty and uncommitted (1 each,
/// KEDA's `latest` policy).
fn expected_lag(g: usize) -> f64 {
    (10 - (g % 5) as i64 + i64::from(PARTITIONS - 1)) as f64
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run(full));
}

async fn run(full: bool) {
    let (n_so, groups, topics) = if full {
        (env_or("EBB_BENCH_SCALEDOBJECTS", 3_000), env_or("EBB_BENCH_GROUPS", 300), env_or("EBB_BENCH_TOPICS", 30))
    } else {
        (300, 30, 3)
    };
    let (groups, topics) = (groups.max(1), topics.max(1));
    let t = Tansu::start();
    let setup = Instant::now();
    for i in 0..topics {
        t.create_topic(&format!("topic-{i}"), PARTITIONS);
        t.produce(&format!("topic-{i}"), 0, 10);
    }
    for g in 0..groups {
        t.commit(&format!("group-{g}"), &format!("topic-{}", g % topics), &[(0, (g % 5) as i64)]);
    }
    let setup = setup.elapsed();

    // Logs only its start line, so the log file does not grow with the ScaledObjects.
    let ebb = ServeProcess::start(&[], "warn,ebb::server=info").await;
    let pid = ebb.child.id();
    let channel = ebb.channel().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_mib(pid);

    // Register every ScaledObject as KEDA does, 32 at a time.
    let bootstrap = t.bootstrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    let workers = 32;
    for w in 0..workers {
        let ch = channel.clone();
        let bootstrap = bootstrap.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = ExternalScalerClient::new(ch);
            let mut wrong = Vec::new();
            for i in (w..n_so).step_by(workers) {
                let r = so_ref(i, groups, topics, &bootstrap);
                client.get_metric_spec(r.clone()).await.expect("GetMetricSpec");
                let m = GetMetricsRequest { scaled_object_ref: Some(r.clone()), metric_name: String::new() };
                let v =
                    client.get_metrics(m).await.expect("GetMetrics").into_inner().metric_values[0].metric_value_float;
                if v != expected_lag(i % groups) {
                    wrong.push((i, v));
                }
                client.is_active(r).await.expect("IsActive");
            }
            wrong
        }));
    }
    let mut wrong = Vec::new();
    for task in tasks {
        wrong.extend(task.await.unwrap());
    }
    let register_took = started.elapsed();
    assert!(
        wrong.is_empty(),
        "lag differs from the broker's numbers for {} ScaledObjects: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );

    // Keep polling for a few intervals (pollingInterval 5 s), then read RSS.
    let settle = if full { Duration::from_secs(16) } else { Duration::from_secs(2) };
    tokio::time::sleep(settle).await;
    let loaded_rss = rss_mib(pid);
    let metrics = reqwest::get(format!("http://{}/metrics", ebb.http)).await.unwrap().text().await.unwrap();
    let grab = |prefix: &str| {
        metrics.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).unwrap_or("?").to_string()
    };
    let (sources, calls) = (grab("ebb_sources "), grab("ebb_upstream_calls_total{scaler=\"kafka\""));
    let cpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!(
        "machine: {cpu} cores; tansu {} topics × {PARTITIONS} partitions, {groups} groups (setup {setup:.1?})",
        topics
    );
    println!(
        "RSS idle {idle_rss:.1} MiB; with {n_so} Kafka ScaledObjects over {groups} groups {loaded_rss:.1} MiB \
         ({} threads; {sources} sources; {calls} polls; registered in {register_took:.1?})",
        threads(pid)
    );
    println!(
        "{}",
        serde_json::json!({
            "scaledobjects": n_so, "groups": groups, "topics": topics, "partitions_per_topic": PARTITIONS,
            "idle_rss_mib": idle_rss, "loaded_rss_mib": loaded_rss, "threads": threads(pid),
            "sources": sources, "polls": calls, "register_seconds": register_took.as_secs_f64()
        })
    );
}
