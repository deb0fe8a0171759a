//! KEDA's side of the contract that needs no live source: specs, names, health, streams,
//! errors, the HTTP endpoints and shutdown. Values from a real Prometheus are checked in
//! `prometheus_e2e.rs`.

mod common;

use std::time::{Duration, Instant};

use common::ebb::{prom_metadata, so, so_owned};
use ebb::engine::EngineConfig;
use ebb::proto::GetMetricsRequest;
use ebb::proto::external_scaler_client::ExternalScalerClient;
use ebb::server::{self, ServeOptions, Server};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

async fn start() -> (Server, Channel) {
    let opts = ServeOptions {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        engine: EngineConfig::default(),
        ..ServeOptions::default()
    };
    let srv = server::spawn(opts).await.expect("server starts");
    let ch = Channel::from_shared(format!("http://{}", srv.grpc_addr)).unwrap().connect().await.unwrap();
    (srv, ch)
}

/// A loopback address nothing listens on, the same for every call in this test binary.
static CLOSED: std::sync::LazyLock<String> = std::sync::LazyLock::new(common::closed_url);

/// A Prometheus trigger whose server is a closed loopback port: specs need no source.
fn prom(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut with_threshold = vec![("threshold", "12.5")];
    with_threshold.extend_from_slice(extra);
    prom_metadata(&CLOSED, "sum(queue_depth)", &with_threshold)
}

#[tokio::test]
async fn metric_spec_fills_both_fields_and_names_carry_no_keda_prefix() {
    let (srv, ch) = start().await;
    let mut c = ExternalScalerClient::new(ch);
    let spec = c.get_metric_spec(so_owned("orders", &prom(&[]))).await.unwrap().into_inner();
    assert_eq!(spec.metric_specs.len(), 1, "never an empty list");
    let s = &spec.metric_specs[0];
    assert_eq!(s.target_size_float, 12.5);
    assert_eq!(s.target_size, 13, "int target is the ceiling, never 0");
    assert!(s.metric_name.starts_with("prometheus-"), "{}", s.metric_name);
    assert!(!s.metric_name.starts_with("s0-"));

    // Stable across calls and server instances; unique per trigger.
    let again = c.get_metric_spec(so_owned("orders", &prom(&[]))).await.unwrap().into_inner();
    assert_eq!(again.metric_specs[0].metric_name, s.metric_name);
    let other = c.get_metric_spec(so_owned("orders", &prom(&[("query", "sum(other)")]))).await.unwrap().into_inner();
    assert_ne!(other.metric_specs[0].metric_name, s.metric_name);
    let named = c.get_metric_spec(so_owned("orders", &prom(&[("metricName", "orders-backlog")]))).await.unwrap();
    assert_eq!(named.into_inner().metric_specs[0].metric_name, "orders-backlog");

    // replicas mode hands the decision to ebb: target 1.
    let r = c.get_metric_spec(so_owned("orders", &prom(&[("outputMode", "replicas")]))).await.unwrap().into_inner();
    assert_eq!((r.metric_specs[0].target_size, r.metric_specs[0].target_size_float), (1, 1.0));
    srv.shutdown().await;
}

#[tokio::test]
async fn bad_metadata_is_invalid_argument_naming_the_key() {
    let (srv, ch) = start().await;
    let mut c = ExternalScalerClient::new(ch);
    let rows: &[(&[(&str, &str)], &str)] = &[
        (&[], "scalerType"),
        (&[("scalerType", "rabbitmq")], "scalerType"),
        (&[("scalerType", "prometheus"), ("query", "up"), ("threshold", "1")], "serverAddress"),
        (&[("scalerType", "prometheus"), ("serverAddress", "http://p:9090"), ("threshold", "1")], "query"),
        (
            &[("scalerType", "prometheus"), ("serverAddress", "http://p:9090"), ("query", "up"), ("threshold", "ten")],
            "threshold",
        ),
    ];
    for (pairs, key) in rows {
        for rpc in ["GetMetricSpec", "GetMetrics", "IsActive"] {
            let r = so("bad", pairs);
            let status = match rpc {
                "GetMetricSpec" => c.get_metric_spec(r).await.err(),
                "GetMetrics" => {
                    c.get_metrics(GetMetricsRequest { scaled_object_ref: Some(r), metric_name: "x".into() }).await.err()
                }
                _ => c.is_active(r).await.err(),
            }
            .expect("an error");
            assert_eq!(status.code(), Code::InvalidArgument, "{rpc} {pairs:?}");
            assert!(status.message().contains(key), "{rpc}: {:?} should name {key}", status.message());
        }
    }
    let ebb_keys: &[(&str, &str)] =
        &[("pollingInterval", "0"), ("outputMode", "bogus"), ("maxScaleUpStep", "0"), ("cooldownPeriod", "-1")];
    for (k, v) in ebb_keys {
        let status = c.get_metric_spec(so_owned("bad", &prom(&[(k, v)]))).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(k), "{:?} should name {k}", status.message());
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn source_down_is_unavailable_within_two_seconds_and_never_inactive() {
    let (srv, ch) = start().await;
    let mut c = ExternalScalerClient::new(ch);
    let r = so_owned("down", &prom(&[]));
    for _ in 0..3 {
        let started = Instant::now();
        let status = c
            .get_metrics(GetMetricsRequest { scaled_object_ref: Some(r.clone()), metric_name: String::new() })
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let status = c.is_active(r.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "a fault is an error, not IsActive=false");
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn health_is_served() {
    let (srv, ch) = start().await;
    let mut h = HealthClient::new(ch);
    for service in ["", "externalscaler.ExternalScaler"] {
        let r = h.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, 1, "SERVING for {service:?}");
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn stream_metric_spec_sends_at_once_and_matches_get_metric_spec() {
    let (srv, ch) = start().await;
    let mut c = ExternalScalerClient::new(ch);
    let r = so_owned("spec", &prom(&[]));
    let mut stream = c.stream_metric_spec(r.clone()).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(1), stream.message()).await.unwrap().unwrap().unwrap();
    let unary = c.get_metric_spec(r).await.unwrap().into_inner();
    assert_eq!(first, unary);
    srv.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_cleanly() {
    let (srv, ch) = start().await;
    let mut c = ExternalScalerClient::new(ch);
    let r = so_owned("spec", &prom(&[]));
    let mut specs = c.stream_metric_spec(r.clone()).await.unwrap().into_inner();
    specs.message().await.unwrap().unwrap();
    let mut active = c.stream_is_active(r).await.unwrap().into_inner();
    let stopping = tokio::spawn(srv.shutdown());
    // Each stream ends with a clean end-of-stream (KEDA then reconnects with its backoff).
    let end = tokio::time::timeout(Duration::from_secs(5), specs.message()).await.expect("stream ends");
    assert!(matches!(end, Ok(None)), "{end:?}");
    let end = tokio::time::timeout(Duration::from_secs(5), active.message()).await.expect("stream ends");
    assert!(matches!(end, Ok(None)), "{end:?}");
    tokio::time::timeout(Duration::from_secs(5), stopping).await.expect("shutdown finishes").unwrap();
}

#[tokio::test]
async fn http_endpoints() {
    let (srv, ch) = start().await;
    let mut c = ExternalScalerClient::new(ch);
    c.get_metric_spec(so_owned("m", &prom(&[]))).await.unwrap();
    let base = format!("http://{}", srv.http_addr);
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{base}/readyz")).send().await.unwrap().status(), 200);
    let body = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "ebb_poll_duration_seconds",
        "ebb_upstream_calls_total",
        "ebb_cache_hits_total",
        "ebb_sources 1",
        "ebb_scaledobject_triggers 1",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}:\n{body}");
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn limits_answer_with_the_code_and_the_flag() {
    let limits = ebb::engine::Limits { metadata_entries: 8, streams: 1, ..Default::default() };
    let opts = ServeOptions {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        engine: EngineConfig { limits, ..EngineConfig::default() },
        ..ServeOptions::default()
    };
    let srv = server::spawn(opts).await.unwrap();
    let ch = Channel::from_shared(format!("http://{}", srv.grpc_addr)).unwrap().connect().await.unwrap();
    let mut c = ExternalScalerClient::new(ch);
    let extra: Vec<(String, String)> = (0..10).map(|i| (format!("k{i}"), "v".to_string())).collect();
    let mut md = prom(&[]);
    md.extend(extra);
    let status = c.get_metric_spec(so_owned("big", &md)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("--max-metadata-entries 8"), "{}", status.message());

    let _open = c.stream_metric_spec(so_owned("s1", &prom(&[]))).await.unwrap().into_inner();
    let status = c.stream_is_active(so_owned("s2", &prom(&[]))).await.expect_err("second stream refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("--max-streams 1"), "{}", status.message());
    srv.shutdown().await;
}
