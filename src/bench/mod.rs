//! `ebb bench`: load-tests any scaler that speaks `externalscaler.proto` (ebb or another).
//!
//! Two load shapes:
//! - **KEDA emulation** (default): `--scaledobjects` ScaledObjects, each running KEDA's poll
//!   cycle (GetMetricSpec → GetMetrics → IsActive) every `--polling-interval`, plus the HPA
//!   path (GetMetricSpec → GetMetrics) every `--hpa-interval` while active, plus `--streams`
//!   StreamIsActive subscribers. Starts are spread over the first interval, as ScaledObjects
//!   are created at different times.
//! - **Closed loop** (`--closed-loop`): `--concurrency` GetMetrics in flight for one warm
//!   ScaledObject over `--connections` HTTP/2 connections, for peak RPC/s.
//!
//! Without `--metadata`, the ScaledObjects are `prometheus` triggers on a Prometheus-shaped
//! endpoint the bench serves itself on 127.0.0.1: its value follows `--source-trace`, it can
//! answer slowly (`--source-delay`), and it counts the queries the scaler makes. Without
//! `--target`, the bench runs `ebb serve` as a child process and reports its RSS and CPU.
//! `--per-trigger-model` replaces the scaler by a model of KEDA's built-in scalers without a
//! cache: every GetMetrics and IsActive queries the source once, so the upstream count of one
//! trigger per call can be set beside ebb's.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::proto::external_scaler_client::ExternalScalerClient;
use crate::proto::{GetMetricsRequest, ScaledObjectRef};

/// Longest run accepted: load tests here are bounded.
const MAX_DURATION: f64 = 3600.0;
/// KEDA's deadline on every external-scaler call.
const RPC_DEADLINE: Duration = Duration::from_secs(3);

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// gRPC address of the scaler under test (`host:port`). Without it, `ebb serve` runs as a
    /// child process on loopback.
    #[arg(long)]
    pub target: Option<String>,
    /// Connect with TLS (`--ca` to trust a private CA; `--cert`/`--key` for mTLS).
    #[arg(long)]
    pub tls: bool,
    #[arg(long, requires = "tls")]
    pub ca: Option<PathBuf>,
    #[arg(long, requires_all = ["tls", "key"])]
    pub cert: Option<PathBuf>,
    #[arg(long, requires_all = ["tls", "cert"])]
    pub key: Option<PathBuf>,
    /// Server name checked in the certificate.
    #[arg(long, default_value = "localhost")]
    pub tls_domain: String,
    /// ScaledObjects to emulate.
    #[arg(long, default_value_t = 100)]
    pub scaledobjects: usize,
    /// Distinct source queries the ScaledObjects spread over.
    #[arg(long, default_value_t = 1)]
    pub sources: usize,
    /// KEDA's pollingInterval, seconds (also sent as the trigger's `pollingInterval`).
    #[arg(long, default_value_t = 5.0)]
    pub polling_interval: f64,
    /// The HPA's sync period, seconds.
    #[arg(long, default_value_t = 15.0)]
    pub hpa_interval: f64,
    /// StreamIsActive subscribers (on the first N ScaledObjects).
    #[arg(long, default_value_t = 0)]
    pub streams: usize,
    /// Reopen each StreamIsActive stream every this many seconds (stream churn).
    #[arg(long)]
    pub stream_churn: Option<f64>,
    /// Print the scaler's RSS and open file descriptors every this many seconds (child only).
    #[arg(long)]
    pub sample_every: Option<f64>,
    /// Closed loop: fixed concurrency of GetMetrics for one ScaledObject.
    #[arg(long)]
    pub closed_loop: bool,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections to the scaler.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Run time, seconds (at most 3600).
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// The simulated source's value over time: `steady:V` or `flip:P` (0 for P seconds, then
    /// 100 for P seconds, and so on).
    #[arg(long, default_value = "flip:10")]
    pub source_trace: String,
    /// Address of the simulated source (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub source_addr: SocketAddr,
    /// Serve the simulated source only, for `--duration` (for external load tools).
    #[arg(long)]
    pub source_only: bool,
    /// Seconds the simulated source takes to answer.
    #[arg(long, default_value_t = 0.0)]
    pub source_delay: f64,
    /// Trigger metadata `key=value` for a scaler other than the simulated Prometheus source
    /// (repeat). Replaces the simulated source.
    #[arg(long = "metadata")]
    pub metadata: Vec<String>,
    /// Model KEDA's built-in scalers (one source query per GetMetrics/IsActive) instead of
    /// calling a scaler.
    #[arg(long)]
    pub per_trigger_model: bool,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write the gRPC frame of one GetMetrics request (for `h2load -d`) to this file and exit.
    #[arg(long)]
    pub write_frame: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid flag: {0}")]
    Flag(String),
    #[error("cannot start the scaler: {0}")]
    Spawn(std::io::Error),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("cannot serve the simulated source: {0}")]
    Source(std::io::Error),
}

/// A source value over time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trace {
    Steady(f64),
    Flip(f64),
}

impl Trace {
    pub fn parse(s: &str) -> Result<Self, BenchError> {
        let bad = || BenchError::Flag(format!("--source-trace {s:?}: expected steady:V or flip:SECONDS"));
        let (kind, v) = s.split_once(':').ok_or_else(bad)?;
        let v: f64 = v.parse().map_err(|_| bad())?;
        match kind {
            "steady" if v.is_finite() => Ok(Trace::Steady(v)),
            "flip" if v > 0.0 && v.is_finite() => Ok(Trace::Flip(v)),
            _ => Err(bad()),
        }
    }

    /// The value `t` seconds after the start.
    pub fn value(&self, t: f64) -> f64 {
        match *self {
            Trace::Steady(v) => v,
            Trace::Flip(p) => {
                if ((t / p).floor() as i64) % 2 == 1 {
                    100.0
                } else {
                    0.0
                }
            }
        }
    }

    /// The start of the latest 0 → non-zero step at or before `t`.
    pub fn last_rise(&self, t: f64) -> Option<f64> {
        match *self {
            Trace::Steady(_) => None,
            Trace::Flip(p) => {
                let k = (t / p).floor() as i64;
                let rise = if k % 2 == 1 { k } else { k - 1 };
                (rise >= 1).then_some(rise as f64 * p)
            }
        }
    }
}

mod load;
mod source;
mod target;

use load::*;
use source::*;
pub use target::proc_usage;
use target::*;

// ---------------------------------------------------------------------------------------------
// Run and report
// ---------------------------------------------------------------------------------------------

/// Runs the bench and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.write_frame {
        return write_frame(&args, path);
    }
    let report = execute(args.clone()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// The length-prefixed gRPC message of a GetMetrics request for ScaledObject 0, with the
/// simulated source at `--source-addr` (port 0: 9091) unless `--metadata` is given: h2load
/// sends it as is.
fn write_frame(args: &BenchArgs, path: &PathBuf) -> anyhow::Result<()> {
    use prost::Message;
    let addr = if args.source_addr.port() == 0 { "127.0.0.1:9091".parse()? } else { args.source_addr };
    let source = Arc::new(Source {
        trace: Trace::Steady(0.0),
        delay: Duration::ZERO,
        start: Instant::now(),
        calls: AtomicU64::new(0),
    });
    let simulated = args.metadata.is_empty();
    let plan = plan(&BenchArgs { closed_loop: true, ..args.clone() }, simulated.then_some((&source, addr)))?;
    let req = GetMetricsRequest { scaled_object_ref: Some(so_ref(0, &plan.metadata[0])), metric_name: String::new() };
    let body = req.encode_to_vec();
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    std::fs::write(path, frame)?;
    Ok(())
}

/// Runs the bench and returns its report as JSON.
pub async fn execute(args: BenchArgs) -> Result<serde_json::Value, BenchError> {
    if !(args.duration > 0.0 && args.duration <= MAX_DURATION) {
        return Err(BenchError::Flag(format!("--duration must be in (0, {MAX_DURATION}] seconds")));
    }
    if args.polling_interval <= 0.0 || args.hpa_interval <= 0.0 {
        return Err(BenchError::Flag("--polling-interval and --hpa-interval must be > 0".into()));
    }
    let trace = Trace::parse(&args.source_trace)?;
    let simulated = args.metadata.is_empty();
    if args.per_trigger_model && !simulated {
        return Err(BenchError::Flag("--per-trigger-model needs the simulated source (no --metadata)".into()));
    }
    let source = Arc::new(Source {
        trace,
        delay: Duration::from_secs_f64(args.source_delay.max(0.0)),
        start: Instant::now(),
        calls: AtomicU64::new(0),
    });
    let addr = if simulated { Some(serve_source(source.clone(), args.source_addr).await?) } else { None };
    if args.source_only {
        let addr = addr.ok_or_else(|| BenchError::Flag("--source-only needs the simulated source".into()))?;
        eprintln!("simulated source on http://{addr} for {} s", args.duration);
        tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
        let calls = source.calls.load(Ordering::Relaxed);
        return Ok(serde_json::json!({"mode": "source-only", "source": addr.to_string(), "upstream_calls": calls}));
    }
    let plan = plan(&args, addr.map(|a| (&source, a)))?;
    let args = Arc::new(args);
    let secs = args.duration;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let rpcs = Arc::new(AtomicU64::new(0));
    let progress = progress_bar(secs, &args);

    let mut rec = Record::default();
    let mut pushes = Vec::new();
    let mut child = None;
    let mut target_name = "per-trigger model".to_string();
    let started = Instant::now();
    let mut cpu_before = 0.0;
    let samples: Arc<std::sync::Mutex<Vec<(f64, f64, f64)>>> = Arc::default();
    let mut sampler: Option<tokio::task::JoinHandle<()>> = None;
    let ticker = {
        let (bar, rpcs) = (progress.clone(), rpcs.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                bar.set_position(started.elapsed().as_millis().min(u128::from(u64::MAX)) as u64);
                bar.set_message(format!("{} RPCs", rpcs.load(Ordering::Relaxed)));
            }
        })
    };
    if args.per_trigger_model {
        let addr = addr.ok_or_else(|| BenchError::Flag("no simulated source".into()))?;
        let mut tasks = Vec::new();
        for i in 0..plan.metadata.len() {
            let offset = spread(i, plan.metadata.len(), args.polling_interval);
            tasks.push(tokio::spawn(per_trigger_object(source.clone(), addr, args.clone(), deadline, offset)));
        }
        for t in tasks {
            let _ = t.await;
        }
    } else {
        let target = match &args.target {
            Some(t) => t.clone(),
            None => {
                let (c, t) = spawn_ebb()?;
                child = Some(c);
                t
            }
        };
        target_name = args.target.clone().unwrap_or_else(|| format!("ebb serve (child) at {target}"));
        let channels = connect(&args, &target).await?;
        if let Some(c) = &child {
            cpu_before = proc_usage(c.0.id()).1;
            if let Some(every) = args.sample_every.filter(|e| *e > 0.0) {
                let (pid, samples) = (c.0.id(), samples.clone());
                sampler = Some(tokio::spawn(async move {
                    let every = Duration::from_secs_f64(every);
                    loop {
                        let t = started.elapsed().as_secs_f64();
                        let (rss, _) = proc_usage(pid);
                        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
                        eprintln!("sample t={t:.0}s rss={rss:.1}MiB fds={fds}");
                        samples.lock().unwrap_or_else(|p| p.into_inner()).push((t, rss, fds as f64));
                        tokio::time::sleep(every).await;
                    }
                }));
            }
        }
        if args.closed_loop {
            rec = closed_loop(&channels, so_ref(0, &plan.metadata[0]), &args, deadline, rpcs.clone()).await;
        } else {
            let mut tasks = Vec::new();
            let mut streams = Vec::new();
            for (i, md) in plan.metadata.iter().enumerate() {
                let client = ExternalScalerClient::new(channels[i % channels.len()].clone());
                let offset = spread(i, plan.metadata.len(), args.polling_interval);
                if i < args.streams {
                    let churn = args.stream_churn.filter(|c| *c > 0.0).map(Duration::from_secs_f64);
                    streams.push(tokio::spawn(stream_object(
                        client.clone(),
                        so_ref(i, md),
                        plan.source.clone(),
                        deadline,
                        churn,
                    )));
                }
                tasks.push(tokio::spawn(keda_object(
                    client,
                    so_ref(i, md),
                    args.clone(),
                    deadline,
                    offset,
                    rpcs.clone(),
                )));
            }
            // Every task ends by the deadline; a few seconds of grace, then whatever is left
            // is aborted, so the run stays bounded whatever the scaler does.
            let grace = deadline + Duration::from_secs(5);
            for mut t in tasks {
                match tokio::time::timeout_at(grace.into(), &mut t).await {
                    Ok(Ok(r)) => rec.merge(r),
                    Ok(Err(_)) => {}
                    Err(_) => t.abort(),
                }
            }
            for mut s in streams {
                match tokio::time::timeout_at(grace.into(), &mut s).await {
                    Ok(Ok((r, p))) => {
                        rec.merge(r);
                        pushes.extend(p);
                    }
                    Ok(Err(_)) => {}
                    Err(_) => s.abort(),
                }
            }
        }
    }
    ticker.abort();
    if let Some(s) = sampler {
        s.abort();
    }
    progress.finish_and_clear();
    let took = started.elapsed().as_secs_f64();
    let (rss, cpu) = match &child {
        Some(c) => {
            let (rss, cpu) = proc_usage(c.0.id());
            (Some(rss), Some((cpu - cpu_before) / took))
        }
        None => (None, None),
    };
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut report = report(
        &args,
        &target_name,
        took,
        rec,
        pushes,
        simulated.then(|| source.calls.load(Ordering::Relaxed)),
        rss,
        cpu,
    );
    if !samples.is_empty() {
        report["samples"] = serde_json::json!(
            samples
                .iter()
                .map(|(t, r, f)| serde_json::json!({"t_s": t.round(), "rss_mib": (r * 10.0).round() / 10.0, "fds": f}))
                .collect::<Vec<_>>()
        );
        report["rss_slope_mib_per_min"] = serde_json::json!(slope(samples.iter().map(|(t, r, _)| (*t, *r))) * 60.0);
        report["fds_slope_per_min"] = serde_json::json!(slope(samples.iter().map(|(t, _, f)| (*t, *f))) * 60.0);
    }
    Ok(report)
}

/// Least-squares slope of `y` over `t` (per second); 0 with fewer than two points.
pub fn slope(points: impl Iterator<Item = (f64, f64)> + Clone) -> f64 {
    let n = points.clone().count() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mt, my) = points.clone().fold((0.0, 0.0), |(a, b), (t, y)| (a + t / n, b + y / n));
    let (num, den) =
        points.fold((0.0, 0.0), |(num, den), (t, y)| (num + (t - mt) * (y - my), den + (t - mt) * (t - mt)));
    if den == 0.0 { 0.0 } else { num / den }
}

/// Spreads ScaledObject starts over the first polling interval.
fn spread(i: usize, n: usize, interval: f64) -> Duration {
    Duration::from_secs_f64(interval * i as f64 / n.max(1) as f64)
}

fn progress_bar(secs: f64, args: &BenchArgs) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new((secs * 1000.0) as u64);
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}") {
        bar.set_style(style);
    }
    bar
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &BenchArgs,
    target: &str,
    took: f64,
    rec: Record,
    mut pushes: Vec<Duration>,
    upstream: Option<u64>,
    rss: Option<f64>,
    cpu: Option<f64>,
) -> serde_json::Value {
    let mut rpcs = serde_json::Map::new();
    let mut names: Vec<_> = rec.latencies.keys().copied().collect();
    names.sort_unstable();
    for name in names {
        let mut lat = rec.latencies[name].clone();
        lat.sort_unstable();
        let us = |d: Duration| d.as_micros() as u64;
        rpcs.insert(
            name.to_string(),
            serde_json::json!({
                "count": lat.len(),
                "rps": (lat.len() as f64 / took).round(),
                "p50_us": us(percentile(&lat, 0.5)),
                "p90_us": us(percentile(&lat, 0.9)),
                "p99_us": us(percentile(&lat, 0.99)),
                "max_us": us(lat.last().copied().unwrap_or_default()),
            }),
        );
    }
    let total: usize = rec.latencies.values().map(Vec::len).sum();
    let errors: Vec<_> =
        rec.errors.iter().map(|((rpc, code), n)| serde_json::json!({"rpc": rpc, "status": code, "count": n})).collect();
    pushes.sort_unstable();
    let intervals = took / args.polling_interval;
    serde_json::json!({
        "target": target,
        "mode": if args.per_trigger_model { "per-trigger-model" } else if args.closed_loop { "closed-loop" } else { "keda" },
        "scaledobjects": if args.closed_loop { 1 } else { args.scaledobjects },
        "sources": args.sources,
        "concurrency": args.closed_loop.then_some(args.concurrency),
        "polling_interval_s": args.polling_interval,
        "duration_s": (took * 10.0).round() / 10.0,
        "total_rps": (total as f64 / took).round(),
        "rpcs": rpcs,
        "errors": errors,
        "upstream_calls": upstream,
        "upstream_calls_per_interval": upstream.map(|u| (u as f64 / intervals * 10.0).round() / 10.0),
        "scaler_rss_mib": rss.map(|r| (r * 10.0).round() / 10.0),
        "scaler_cpu_cores": cpu.map(|c| (c * 100.0).round() / 100.0),
        "activation_push_ms": (!pushes.is_empty()).then(|| serde_json::json!({
            "count": pushes.len(),
            "p50": percentile(&pushes, 0.5).as_millis() as u64,
            "max": pushes.last().map(|d| d.as_millis() as u64),
        })),
        "status_codes_ok": rec.errors.is_empty() || rec.errors.keys().all(|(_, c)| c == &format!("{:?}", Code::Ok)),
    })
}

fn print_table(r: &serde_json::Value) {
    if r["mode"] == "source-only" {
        println!("simulated source {}: {} queries", r["source"], r["upstream_calls"]);
        return;
    }
    let text = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    println!(
        "target: {}  mode: {}  ScaledObjects: {}  duration: {} s",
        text(&r["target"]),
        text(&r["mode"]),
        r["scaledobjects"],
        r["duration_s"]
    );
    println!("{:<16} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10}", "rpc", "count", "rpc/s", "p50", "p90", "p99", "max");
    if let Some(rpcs) = r["rpcs"].as_object() {
        for (name, s) in rpcs {
            let ms = |k: &str| format!("{:.3} ms", s[k].as_u64().unwrap_or(0) as f64 / 1000.0);
            println!(
                "{name:<16} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10}",
                s["count"].to_string(),
                s["rps"].to_string(),
                ms("p50_us"),
                ms("p90_us"),
                ms("p99_us"),
                ms("max_us")
            );
        }
    }
    println!("total: {} rpc/s", r["total_rps"]);
    if let Some(errors) = r["errors"].as_array()
        && !errors.is_empty()
    {
        for e in errors {
            println!("errors: {} {} × {}", text(&e["rpc"]), text(&e["status"]), e["count"]);
        }
    }
    if !r["upstream_calls"].is_null() {
        println!("upstream calls: {} ({} per polling interval)", r["upstream_calls"], r["upstream_calls_per_interval"]);
    }
    if !r["scaler_rss_mib"].is_null() {
        println!("scaler: RSS {} MiB, CPU {} cores", r["scaler_rss_mib"], r["scaler_cpu_cores"]);
    }
    if !r["activation_push_ms"].is_null() {
        let a = &r["activation_push_ms"];
        println!("source rise → pushed activation: p50 {} ms, max {} ms ({} pushes)", a["p50"], a["max"], a["count"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces() {
        let f = Trace::parse("flip:10").unwrap();
        assert_eq!((f.value(0.0), f.value(9.9), f.value(10.0), f.value(25.0)), (0.0, 0.0, 100.0, 0.0));
        assert_eq!(
            (f.last_rise(5.0), f.last_rise(12.0), f.last_rise(25.0), f.last_rise(31.0)),
            (None, Some(10.0), Some(10.0), Some(30.0))
        );
        assert_eq!(Trace::parse("steady:3").unwrap().value(100.0), 3.0);
        for bad in ["flip", "flip:0", "wave:3", "steady:x"] {
            assert!(Trace::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slope_of_a_line() {
        let pts = [(0.0, 10.0), (60.0, 12.0), (120.0, 14.0)];
        assert!((slope(pts.iter().copied()) - 2.0 / 60.0).abs() < 1e-9);
        assert_eq!(slope([(1.0, 5.0)].iter().copied()), 0.0);
    }

    #[test]
    fn proc_usage_reads_this_process() {
        let (rss, cpu) = proc_usage(std::process::id());
        assert!(rss > 0.0 && cpu >= 0.0, "{rss} {cpu}");
    }
}
