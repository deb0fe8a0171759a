//! Issue 18 end to end against a real Prometheus (Debian's, with its Pushgateway): the status
//! page, its JSON and `ebb explain` (the binary) show the source, the ScaledObject and a
//! decision log whose reasons follow the scenario driven: scale up, held by the scale-down
//! window, cooldown to zero, and the source going down (a fault proxy answering 503) while the
//! count holds. A second test loads the page in headless Chromium (Debian's, driven through
//! `chromedriver`'s WebDriver API), follows the ScaledObject's link, finds the chart and the
//! reason, saves a screenshot under `target/`, and fails on any console error or failed request.

// Starts real servers (scripts/install-services.sh): built with `--features integration`.
#![cfg(feature = "integration")]

mod common;

use std::time::Duration;

use common::PromStack;
use common::ebb::{Keda, prom_metadata, so_owned, start_ebb_with_opts};
use common::faults::{Fault, FaultProxy};
use common::{until, within};
use ebb::server::ServeOptions;
use serde_json::Value;

const TEST_LIMIT: Duration = Duration::from_secs(180);
const SCRAPE_WAIT: Duration = Duration::from_secs(30);

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::Client::new().get(url).timeout(Duration::from_secs(5)).send().await.expect("GET");
    (r.status().as_u16(), r.text().await.expect("body"))
}

async fn json(url: &str) -> Value {
    let (status, body) = get(url).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// The reasons of the trigger's decision log, oldest first.
async fn reasons(base: &str) -> Vec<String> {
    let v = json(&format!("{base}/api/v1/status/scaledobjects/default/orders")).await;
    v["triggers"][0]["log"]
        .as_array()
        .map(|log| log.iter().filter_map(|e| e["reason"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Drives KEDA's cycle until the decision log's latest reason starts with `want`.
async fn until_reason(keda: &Keda, so: &ebb::proto::ScaledObjectRef, base: &str, want: &str) -> Vec<String> {
    until(
        Duration::from_secs(40),
        want,
        async || {
            let _ = keda.cycle(so).await;
            reasons(base).await
        },
        |r: &Vec<String>| r.last().is_some_and(|l| l.starts_with(want)),
    )
    .await
}

/// A ScaledObject `shop/orders` on a pushed gauge behind a fault proxy, driven through the
/// scenario; returns the running pieces so the browser test can look at the page.
struct Scenario {
    stack: PromStack,
    proxy: FaultProxy,
    srv: ebb::server::Server,
    keda: Keda,
    so: ebb::proto::ScaledObjectRef,
    base: String,
    metric: String,
}

impl Scenario {
    async fn start() -> Scenario {
        let stack = PromStack::start().await;
        let proxy = FaultProxy::start(&stack.prometheus_url()).await;
        let engine =
            ebb::engine::EngineConfig { min_polling_interval: Duration::from_millis(100), ..Default::default() };
        let (srv, keda) = start_ebb_with_opts(ServeOptions { engine, ..ServeOptions::default() }).await;
        let metric = common::unique_name("ebb_status_orders");
        let md = prom_metadata(
            &proxy.url(),
            &metric,
            &[
                ("threshold", "10"),
                ("pollingInterval", "0.5"),
                ("outputMode", "replicas"),
                ("minReplicaCount", "0"),
                ("scaleDownStabilizationSeconds", "3"),
                ("cooldownPeriod", "3"),
            ],
        );
        let so = so_owned("orders", &md);
        let base = format!("http://{}", srv.http_addr);
        Scenario { stack, proxy, srv, keda, so, base, metric }
    }

    async fn push(&self, v: f64) {
        self.stack.push("status", &format!("{} {v}", self.metric)).await;
        self.stack.wait_for_value(&self.metric, v, SCRAPE_WAIT).await;
    }

    /// Scale up, held by the window, cooldown, zero; then the source goes down.
    async fn drive(&self) {
        self.push(45.0).await;
        // KEDA's push channel: ebb logs each activity it pushes over it.
        let _stream = self.keda.stream_is_active(&self.so).await.expect("StreamIsActive");
        let r = until_reason(&self.keda, &self.so, &self.base, "recommendation").await;
        assert!(r.iter().any(|x| x.starts_with("recommendation")), "{r:?}");
        self.push(5.0).await;
        until_reason(&self.keda, &self.so, &self.base, "held by scale-down window until").await;
        self.push(0.0).await;
        until_reason(&self.keda, &self.so, &self.base, "cooldown:").await;
        until_reason(&self.keda, &self.so, &self.base, "cooled down to zero").await;
        self.proxy.set(Fault::Status(503));
        until_reason(&self.keda, &self.so, &self.base, "source unreadable (throttled): holding the last decision")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_json_and_explain_tell_why() {
    within(TEST_LIMIT, "page_json_and_explain_tell_why", async {
        let s = Scenario::start().await;
        s.drive().await;
        let base = &s.base;

        // JSON: the source with its error, the ScaledObject with its decision and reason.
        let sources = json(&format!("{base}/api/v1/status/sources")).await;
        let src = &sources.as_array().expect("sources")[0];
        assert_eq!(src["scaler"], "prometheus");
        assert!(src["last_error"].as_str().is_some_and(|e| e.contains("503")), "{src}");
        assert!(src["upstream_calls"].as_u64().unwrap_or(0) > 5, "{src}");
        let objects = json(&format!("{base}/api/v1/status/scaledobjects")).await;
        let so = &objects.as_array().expect("scaledobjects")[0];
        assert_eq!((so["namespace"].as_str(), so["name"].as_str()), (Some("default"), Some("orders")), "{so}");
        assert_eq!(so["desired_replicas"], 0, "{so}");
        let detail = json(&format!("{base}/api/v1/status/scaledobjects/default/orders")).await;
        let log = detail["triggers"][0]["log"].as_array().expect("log").clone();
        let rules: Vec<&str> = log.iter().filter_map(|e| e["why"]["rule"].as_str()).collect();
        for rule in ["recommendation", "scale_down_window", "cooldown", "cooled_to_zero"] {
            assert!(rules.contains(&rule), "{rule} not in {rules:?}");
        }
        assert!(log.iter().any(|e| e["source_error"] == "throttled"), "{log:?}");
        let pushed: Vec<&str> =
            log.iter().filter(|e| e["activation_pushed"] == true).filter_map(|e| e["reason"].as_str()).collect();
        assert!(pushed.iter().any(|r| r.ends_with("activation pushed (active)")), "{pushed:?}");
        assert!(pushed.iter().any(|r| r.ends_with("activation pushed (inactive)")), "{pushed:?}");

        // The page: sources and ScaledObjects, then the ScaledObject's charts and reasons.
        let (status, index) = get(&format!("{base}/")).await;
        assert_eq!(status, 200);
        assert!(index.contains("prometheus") && index.contains("href=\"/scaledobjects/default/orders\""), "{index}");
        assert!(!index.contains("<script"), "no script on the page");
        let (_, page) = get(&format!("{base}/scaledobjects/default/orders")).await;
        assert!(page.contains("<svg") && page.contains("<polyline"), "charts");
        for text in ["held by scale-down window until", "cooldown:", "cooled down to zero", "source unreadable"] {
            assert!(page.contains(text), "{text} not on the page");
        }
        assert_eq!(get(&format!("{base}/scaledobjects/default/nope")).await.0, 404);

        // `ebb explain`, the binary, says the same.
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ebb"))
            .args(["explain", "default/orders", "--addr", base, "--last", "50"])
            .output()
            .await
            .expect("ebb explain");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("desired 0") && text.contains("source unreadable (throttled)"), "{text}");
        assert!(text.contains("what would change it: a good poll of the source"), "{text}");
        assert!(text.contains("held by scale-down window until"), "{text}");
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ebb"))
            .args(["explain", "default/none", "--addr", base])
            .output()
            .await
            .expect("ebb explain");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("serves no ScaledObject default/none"));
        s.srv.shutdown().await;

        // `--status-page false`: no page, no JSON.
        let (srv, _keda) = start_ebb_with_opts(ServeOptions { status_page: false, ..ServeOptions::default() }).await;
        let base = format!("http://{}", srv.http_addr);
        assert_eq!(get(&format!("{base}/")).await.0, 404);
        assert_eq!(get(&format!("{base}/api/v1/status/scaledobjects")).await.0, 404);
        assert_eq!(get(&format!("{base}/metrics")).await.0, 200);
        srv.shutdown().await;
    })
    .await;
}

/// A WebDriver session on `chromedriver` (plain HTTP and JSON).
struct Browser {
    http: reqwest::Client,
    session: String,
    driver: tokio::process::Child,
}

impl Browser {
    async fn start() -> Browser {
        let port = common::free_port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/install-services.sh installs Debian's chromium-driver)");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1700"]},
            "goog:loggingPrefs": {"browser": "ALL", "performance": "ALL"}
        }}});
        let answer: Value = until(
            Duration::from_secs(30),
            "chromedriver session",
            async || match http.post(format!("{base}/session")).json(&caps).send().await {
                Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            },
            |v: &Value| v["value"]["sessionId"].is_string(),
        )
        .await;
        let session = format!("{base}/session/{}", answer["value"]["sessionId"].as_str().unwrap());
        Browser { http, session, driver }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        if !body.is_null() {
            req = req.json(&body);
        }
        let r = req.send().await.expect("webdriver");
        let v: Value = r.json().await.expect("webdriver JSON");
        assert!(v["value"]["error"].is_null(), "{path}: {v}");
        v["value"].clone()
    }

    async fn find(&self, using: &str, value: &str) -> String {
        let e = self.call(reqwest::Method::POST, "/element", serde_json::json!({"using": using, "value": value})).await;
        e.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).expect("element id").to_owned()
    }

    async fn text(&self, element: &str) -> String {
        self.call(reqwest::Method::GET, &format!("/element/{element}/text"), Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn log(&self, kind: &str) -> Vec<Value> {
        self.call(reqwest::Method::POST, "/se/log", serde_json::json!({"type": kind}))
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_works_in_a_real_browser() {
    within(TEST_LIMIT, "the_page_works_in_a_real_browser", async {
        let s = Scenario::start().await;
        s.drive().await;
        let b = Browser::start().await;
        b.call(reqwest::Method::POST, "/url", serde_json::json!({"url": format!("{}/", s.base)})).await;
        let link = b.find("css selector", "a[href='/scaledobjects/default/orders']").await;
        assert_eq!(b.text(&link).await, "default/orders");
        b.call(reqwest::Method::POST, &format!("/element/{link}/click"), serde_json::json!({})).await;
        let url = b.call(reqwest::Method::GET, "/url", Value::Null).await;
        assert!(url.as_str().is_some_and(|u| u.ends_with("/scaledobjects/default/orders")), "{url}");
        b.find("css selector", "svg polyline").await;
        let reason = b.find("css selector", ".reason").await;
        assert!(b.text(&reason).await.starts_with("source unreadable (throttled)"));
        let table = b.find("css selector", "table").await;
        assert!(b.text(&table).await.contains("held by scale-down window until"));

        let png = b.call(reqwest::Method::GET, "/screenshot", Value::Null).await;
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().expect("PNG")).expect("base64");
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
        std::fs::write(&out, &bytes).expect("screenshot");
        assert!(bytes.starts_with(b"\x89PNG"), "a PNG");

        // No console error, no failed request, on either page.
        let console: Vec<Value> = b.log("browser").await.into_iter().filter(|e| e["level"] == "SEVERE").collect();
        assert!(console.is_empty(), "console errors: {console:?}");
        let mut failed = Vec::new();
        for e in b.log("performance").await {
            let msg: Value = serde_json::from_str(e["message"].as_str().unwrap_or("{}")).unwrap_or(Value::Null);
            let (method, params) = (&msg["message"]["method"], &msg["message"]["params"]);
            if method == "Network.loadingFailed"
                || (method == "Network.responseReceived" && params["response"]["status"].as_u64().unwrap_or(0) >= 400)
            {
                failed.push(msg);
            }
        }
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        b.call(reqwest::Method::DELETE, "", Value::Null).await;
        drop(b.driver);
        s.srv.shutdown().await;
    })
    .await;
}
