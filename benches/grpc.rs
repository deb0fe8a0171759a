//! Cached GetMetrics over loopback, and `ebb serve`'s memory.
//!
//! Run: `cargo bench --bench grpc` (builds `ebb` in release mode first).
//!
//! The bench starts a Prometheus-shaped HTTP endpoint on 127.0.0.1 (it answers every query
//! with one sample, so the bench needs nothing installed), runs `ebb serve` as a child
//! process against it, and then:
//! 1. reads the child's RSS while idle;
//! 2. drives GetMetrics for one warm ScaledObject in a closed loop at 1, 16 and 64
//!    concurrent requests over 4 HTTP/2 connections, reporting RPC/s and p50/p99/max;
//! 3. registers 10,000 ScaledObjects over 1,000 distinct sources (GetMetricSpec, GetMetrics,
//!    IsActive each), waits for the sources to settle, and reads RSS again;
//! 4. in a second `ebb serve`, registers 10,000 ScaledObjects over 100 sources polled every
//!    0.1 s, waits until every decision log is full (`engine::log::MAX_ENTRIES` entries, read
//!    back through the status JSON), and reads RSS: the decision logs' cost.
//!
//! Environment: `EBB_BENCH_SECONDS` (per concurrency level, default 5),
//! `EBB_BENCH_SCALEDOBJECTS` (default 10000), `EBB_BENCH_SOURCES` (default 1000).

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use common::ebb::ServeProcess;
use ebb::proto::external_scaler_client::ExternalScalerClient;
use ebb::proto::{GetMetricsRequest, ScaledObjectRef};
use tonic::transport::Channel;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A Prometheus-shaped `/api/v1/query` that answers one sample and counts queries.
async fn fake_prometheus() -> (SocketAddr, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route(
            "/api/v1/query",
            get(|State(c): State<Arc<AtomicU64>>, Query(_q): Query<HashMap<String, String>>| async move {
                c.fetch_add(1, Ordering::Relaxed);
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
                format!(
                    r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[{now:.3},"42"]}}]}}}}"#
                )
            }),
        )
        .with_state(count.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, count)
}

/// The process's resident memory in MiB (ebb bench reads it the same way).
fn rss_mib(pid: u32) -> f64 {
    ebb::bench::proc_usage(pid).0
}

fn so_ref(name: &str, prom: SocketAddr, query: &str) -> ScaledObjectRef {
    so_ref_every(name, prom, query, "5")
}

fn so_ref_every(name: &str, prom: SocketAddr, query: &str, interval: &str) -> ScaledObjectRef {
    let md: HashMap<String, String> = [
        ("scalerType", "prometheus".to_string()),
        ("serverAddress", format!("http://{prom}")),
        ("query", query.to_string()),
        ("threshold", "10".to_string()),
        ("pollingInterval", interval.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    ScaledObjectRef { name: name.to_string(), namespace: "bench".to_string(), scaler_metadata: md }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn closed_loop(
    channels: &[Channel],
    req: GetMetricsRequest,
    concurrency: usize,
    secs: u64,
) -> (f64, Vec<Duration>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let mut client = ExternalScalerClient::new(channels[i % channels.len()].clone());
        let req = req.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(200_000);
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = client.get_metrics(req.clone()).await;
                lat.push(t.elapsed());
                assert!(r.is_ok(), "GetMetrics failed: {r:?}");
            }
            lat
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let took = started.elapsed().as_secs_f64();
    all.sort_unstable();
    (all.len() as f64 / took, all)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and then a short
    // smoke run checks that the bench still works.
    let full = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run(full));
}

async fn run(full: bool) {
    let (secs, n_so, n_src, settle) = if full {
        (
            env_or("EBB_BENCH_SECONDS", 5),
            env_or("EBB_BENCH_SCALEDOBJECTS", 10_000) as usize,
            env_or("EBB_BENCH_SOURCES", 1_000).max(1) as usize,
            Duration::from_secs(11),
        )
    } else {
        (1, 200, 20, Duration::from_secs(1))
    };
    let (prom, queries) = fake_prometheus().await;
    // Logs only its start line, so the log file does not grow with the ScaledObjects.
    let ebb = ServeProcess::start(&[], "warn,ebb::server=info").await;
    let pid = ebb.child.id();
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(ebb.channel().await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_mib(pid);

    let warm = so_ref("warm", prom, "sum(queue_depth)");
    let req = GetMetricsRequest { scaled_object_ref: Some(warm), metric_name: String::new() };
    // Warm up: the first call waits for the first poll; then a short unmeasured burst.
    ExternalScalerClient::new(channels[0].clone()).get_metrics(req.clone()).await.expect("first GetMetrics");
    closed_loop(&channels, req.clone(), 16, 1).await;

    let cpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("machine: {cpu} cores; ebb pid {pid}; {secs} s per level, 4 HTTP/2 connections");
    println!("{:<12} {:>10} {:>10} {:>10} {:>10}", "concurrency", "rpc/s", "p50", "p99", "max");
    let mut json_levels = Vec::new();
    for c in [1usize, 16, 64] {
        let (rps, lat) = closed_loop(&channels, req.clone(), c, secs).await;
        let (p50, p99, max) = (percentile(&lat, 0.5), percentile(&lat, 0.99), *lat.last().unwrap());
        println!("{c:<12} {rps:>10.0} {:>10.3?} {:>10.3?} {:>10.3?}", p50, p99, max);
        json_levels.push(serde_json::json!({
            "concurrency": c, "rps": rps.round(),
            "p50_us": p50.as_micros(), "p99_us": p99.as_micros(), "max_us": max.as_micros()
        }));
    }

    // Register many ScaledObjects over many sources, as KEDA's first poll cycle would.
    let before = queries.load(Ordering::Relaxed);
    let started = Instant::now();
    let per_task = n_so.div_ceil(64);
    let mut tasks = Vec::new();
    for w in 0..64 {
        let ch = channels[w % channels.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut client = ExternalScalerClient::new(ch);
            for i in (w * per_task)..((w + 1) * per_task).min(n_so) {
                let r = so_ref(&format!("so-{i}"), prom, &format!("sum(queue_depth{{q=\"{}\"}})", i % n_src));
                client.get_metric_spec(r.clone()).await.expect("GetMetricSpec");
                let m = GetMetricsRequest { scaled_object_ref: Some(r.clone()), metric_name: String::new() };
                client.get_metrics(m).await.expect("GetMetrics");
                client.is_active(r).await.expect("IsActive");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let register_took = started.elapsed();
    // Let every source poll a couple of times more.
    tokio::time::sleep(settle).await;
    let loaded_rss = rss_mib(pid);
    let polls = queries.load(Ordering::Relaxed) - before;
    println!(
        "RSS idle {idle_rss:.1} MiB; with {n_so} ScaledObjects over {n_src} sources {loaded_rss:.1} MiB \
         (registered in {register_took:.1?}; {polls} upstream queries meanwhile)"
    );
    drop(ebb);
    let logged_rss = full_logs(prom, n_so, full).await;
    println!(
        "{}",
        serde_json::json!({
            "levels": json_levels, "idle_rss_mib": idle_rss, "loaded_rss_mib": loaded_rss,
            "scaledobjects": n_so, "sources": n_src, "upstream_queries": polls,
            "full_logs_rss_mib": logged_rss
        })
    );
}

/// RSS of an `ebb serve` with `n_so` ScaledObjects whose decision logs are full.
async fn full_logs(prom: SocketAddr, n_so: usize, full: bool) -> f64 {
    let n_src = if full { 100 } else { 10 };
    let ebb = ServeProcess::start(&["--min-polling-interval", "0.1"], "warn,ebb::server=info").await;
    let channel = ebb.channel().await;
    let per_task = n_so.div_ceil(32);
    let mut tasks = Vec::new();
    for w in 0..32 {
        let ch = channel.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = ExternalScalerClient::new(ch);
            for i in (w * per_task)..((w + 1) * per_task).min(n_so) {
                let q = format!("sum(log_depth{{q=\"{}\"}})", i % n_src);
                let r = so_ref_every(&format!("so-{i}"), prom, &q, "0.1");
                client.get_metric_spec(r).await.expect("GetMetricSpec");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every trigger of a source logs each of its polls: wait for the last one registered.
    let last = format!("http://{}/api/v1/status/scaledobjects/bench/so-{}", ebb.http, n_so - 1);
    let started = Instant::now();
    let entries = loop {
        let v: serde_json::Value = reqwest::get(&last).await.expect("status JSON").json().await.expect("JSON");
        let n = v["triggers"][0]["log"].as_array().map_or(0, Vec::len);
        if n >= ebb::engine::log::MAX_ENTRIES || started.elapsed() > Duration::from_secs(120) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let rss = rss_mib(ebb.child.id());
    println!(
        "RSS with {n_so} ScaledObjects over {n_src} sources and full decision logs ({entries} entries each): \
         {rss:.1} MiB (logs filled in {:.1?})",
        started.elapsed()
    );
    assert_eq!(entries, ebb::engine::log::MAX_ENTRIES, "the logs did not fill within 120 s");
    rss
}
