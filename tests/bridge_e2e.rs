//! The Container Apps bridge end to end. ebb is started with ScaledObjects declared in its
//! config, polls a real Prometheus 2.42 (`common::PromStack`), and is read over HTTP with the
//! requests KEDA's built-in `metrics-api` and `prometheus` scalers send. Both answers must be the
//! same as what the gRPC door gives for the same ScaledObject.

mod common;

use std::time::Duration;

#[cfg(feature = "integration")]
use common::PromStack;
#[cfg(feature = "integration")]
use common::ebb::so_owned;
use common::ebb::start_ebb_with_opts;
use common::within;
use ebb::bridge::Config;
use ebb::server::ServeOptions;

const TEST_LIMIT: Duration = Duration::from_secs(90);
#[cfg(feature = "integration")]
const SCRAPE_WAIT: Duration = Duration::from_secs(30);

#[cfg(feature = "integration")]
fn config(prometheus: &str, metric: &str) -> Config {
    Config::parse(&format!(
        r#"
scaledObjects:
  - name: orders
    metadata:
      scalerType: prometheus
      serverAddress: {prometheus}
      query: sum({metric})
      threshold: "10"
      activationThreshold: "5"
  - name: orders-replicas
    namespace: apps
    metadata:
      scalerType: prometheus
      serverAddress: {prometheus}
      query: sum({metric})
      threshold: "10"
      outputMode: replicas
      maxReplicaCount: "20"
"#
    ))
    .expect("config parses")
}

/// KEDA's `metrics-api` scaler: a plain GET, non-200 is an error, the value read at
/// `valueLocation` (here `value`).
async fn metrics_api(http_addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::get(format!("http://{http_addr}{path}")).await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

/// KEDA's `prometheus` scaler: `GET {serverAddress}/api/v1/query?query=<escaped>&time=<RFC3339>`,
/// value at `data.result[0].value[1]`.
async fn prometheus_query(http_addr: std::net::SocketAddr, query: &str) -> (u16, serde_json::Value) {
    let escaped: String = url_escape(query);
    let url = format!("http://{http_addr}/api/v1/query?query={escaped}&time=2026-11-30T12:00:00Z");
    let resp = reqwest::get(url).await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// A real Prometheus (scripts/install-services.sh): with `--features integration`, as scripts/test.sh runs it.
#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_api_and_prometheus_rules_read_ebbs_decision() {
    within(TEST_LIMIT, "metrics_api_and_prometheus_rules_read_ebbs_decision", async {
        let stack = PromStack::start().await;
        let metric = common::unique_name("ebb_bridge_depth");
        stack.push("bridge", &format!("{metric} 42")).await;
        stack.wait_for_value(&format!("sum({metric})"), 42.0, SCRAPE_WAIT).await;

        let opts = ServeOptions { bridge: config(&stack.prometheus_url(), &metric), ..ServeOptions::default() };
        let (srv, keda) = start_ebb_with_opts(opts).await;

        // metrics-api, metric mode: the metric, KEDA's activation (42 > 5).
        let (status, body) = metrics_api(srv.http_addr, "/api/v1/scaledobjects/default/orders").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["value"], 42.0, "{body}");
        assert_eq!(body["active"], true);
        assert_eq!(body["target"], 10.0);
        assert_eq!(body["desiredReplicas"], 5);

        // metrics-api, replicas mode: ceil(42 / 10) replicas, read with targetValue 1.
        let (status, body) = metrics_api(srv.http_addr, "/api/v1/scaledobjects/apps/orders-replicas").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["value"], 5.0, "{body}");
        assert_eq!(body["target"], 1.0, "replicas mode targets 1");

        // prometheus rule: the same value, in Prometheus' instant-vector shape.
        let q = r#"ebb_scaledobject_value{namespace="apps",name="orders-replicas"}"#;
        let (status, body) = prometheus_query(srv.http_addr, q).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "success");
        assert_eq!(body["data"]["resultType"], "vector");
        assert_eq!(body["data"]["result"][0]["value"][1], "5", "{body}");

        // The gRPC door gives the same answer for the same ScaledObject and metadata, from the
        // same trigger and source: one poll serves both doors.
        let md: Vec<(String, String)> = config(&stack.prometheus_url(), &metric).scaled_objects[0]
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let cycle = keda.cycle(&so_owned("orders", &md)).await.expect("gRPC cycle");
        assert_eq!((cycle.value(), cycle.active), (42.0, true));
        let metrics = reqwest::get(format!("http://{}/metrics", srv.http_addr)).await.unwrap().text().await.unwrap();
        assert!(metrics.lines().any(|l| l == "ebb_sources 1"), "one source for both ScaledObjects:\n{metrics}");

        // StreamIsActive through a proxy that cuts streams (Container Apps' ingress, 240 s):
        // KEDA reopens, and the reopened stream gets the current state at once, on the same
        // trigger.
        let so = so_owned("orders", &md);
        let mut first = keda.stream_is_active(&so).await.expect("stream opens");
        let msg = tokio::time::timeout(Duration::from_secs(3), first.message()).await.unwrap().unwrap().unwrap();
        assert!(msg.result);
        drop(first);
        let mut again = keda.stream_is_active(&so).await.expect("stream reopens");
        let msg = tokio::time::timeout(Duration::from_secs(3), again.message()).await.unwrap().unwrap().unwrap();
        assert!(msg.result, "current state right after the reopen");
        let metrics = reqwest::get(format!("http://{}/metrics", srv.http_addr)).await.unwrap().text().await.unwrap();
        assert!(metrics.lines().any(|l| l == "ebb_scaledobject_triggers 2"), "no duplicate trigger:\n{metrics}");

        // The value follows the source.
        stack.push("bridge", &format!("{metric} 3")).await;
        stack.wait_for_value(&format!("sum({metric})"), 3.0, SCRAPE_WAIT).await;
        let mut last = serde_json::Value::Null;
        for _ in 0..40 {
            last = metrics_api(srv.http_addr, "/api/v1/scaledobjects/default/orders").await.1;
            if last["value"] == 3.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(last["value"], 3.0, "{last}");
        assert_eq!(last["active"], false, "3 is not > activationThreshold 5");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_objects_bad_queries_and_bad_config_are_clear() {
    within(TEST_LIMIT, "unknown_objects_bad_queries_and_bad_config_are_clear", async {
        let (srv, _keda) = start_ebb_with_opts(ServeOptions::default()).await;
        let (status, body) = metrics_api(srv.http_addr, "/api/v1/scaledobjects/default/nope").await;
        assert_eq!(status, 404);
        assert!(body["error"].as_str().unwrap().contains("default/nope"), "{body}");
        let (status, body) = prometheus_query(srv.http_addr, "up").await;
        assert_eq!(status, 400);
        assert_eq!((body["status"].as_str(), body["errorType"].as_str()), (Some("error"), Some("bad_data")));

        // Invalid trigger metadata in the config stops start-up, naming the object and key.
        let bad = Config::parse(
            "scaledObjects:\n  - name: broken\n    metadata:\n      scalerType: prometheus\n      query: up\n",
        )
        .unwrap();
        let opts = ServeOptions {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            bridge: bad,
            ..ServeOptions::default()
        };
        let err = ebb::server::spawn(opts).await.err().expect("start-up fails").to_string();
        assert!(err.contains("default/broken") && err.contains("serverAddress"), "{err}");
    })
    .await;
}
