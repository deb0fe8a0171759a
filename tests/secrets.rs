//! No secret leaves ebb: every log line (TRACE, all targets, span fields included), every gRPC
//! error (message, details and metadata), every `/metrics` line and every `ebb check` output
//! produced while driving each scaler path that carries a secret, succeeding and failing, is
//! scanned for the secrets used (and their percent-encoded and base64 forms).
//!
//! One test per scaler path and way in, so a failure names the scaler: `<scaler>_serve_…`
//! drives the path's ScaledObjects through an in-process ebb (gRPC errors and answers,
//! `/metrics`, the captured log), `<scaler>_check_…` runs `ebb check` on it (its output, at
//! TRACE). Sources: the Service Bus and Event Hubs wire doubles (SAS keys), a real Azurite with
//! an account key of its own per test (account keys, SAS connection strings, `connectionRef`
//! files), a Prometheus-shaped axum server that checks bearer, basic and header credentials, an
//! `authenticationRef` resolver, and (feature `kafka`) SASL credentials against an unreachable
//! broker and a tansu broker without SASL.
//!
//! The tests run at once in one process, so the log capture is one global subscriber. Every
//! secret is made for one test (random, or a key no other test hands to ebb), so a test looks
//! for its own secrets in every captured line and a hit is its own leak. A line that carries a
//! path's poll span or ScaledObject ([`owners`]) is that path's: the capture checks count only
//! those, and an unredacted `sig=` counts against the path whose line it is (against every test
//! where no path can be told).
//!
//! Every wait is bounded: each test by [`TEST_LIMIT`], each RPC by KEDA's 3 s deadline, each CLI
//! run by [`CLI_LIMIT`].

// Starts real servers (scripts/install-services.sh): built with `--features integration`,
// which scripts/test.sh (and so CI) turns on.
#![cfg(feature = "integration")]

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine as _;
use common::azurite::{Azurite, connection_string};
use common::ebb::{Keda, so_owned, start_ebb_with_opts};
use common::eventhubs::EventHubsDouble;
use common::servicebus::ServiceBusDouble;
use common::{closed_url, free_port, within};
use ebb::engine::AuthRefResolver;
use ebb::server::ServeOptions;
use ebb_scalers::azure::storage::{AccountKey, DEV_ACCOUNT, DEV_KEY, queue_service_sas};
use tonic::Status;

const TEST_LIMIT: Duration = Duration::from_secs(90);
const CLI_LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Log capture: one global subscriber for this test binary, TRACE, every target.

#[derive(Clone)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (and the `log` bridge) once; returns its buffer.
fn captured_logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = SharedBuf(buf.clone());
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_target(true)
            // A line at every span's creation and close, with its fields.
            .with_span_events(
                tracing_subscriber::fmt::format::FmtSpan::NEW | tracing_subscriber::fmt::format::FmtSpan::CLOSE,
            )
            .with_writer(move || writer.clone())
            .try_init()
            .expect("the capturing subscriber is the first global default");
        buf
    })
}

// ---------------------------------------------------------------------------------------------
// Secrets and the texts to scan.

/// A distinctive secret: `S3cr3t-<what>-<random hex>`.
fn secret(what: &str) -> String {
    format!("S3cr3t-{what}-{:016x}", fastrand::u64(..))
}

/// A distinctive, valid base64 account key (64 bytes, as Azure's) that is not the account's.
fn secret_base64_key(what: &str) -> String {
    let mut raw = secret(what).into_bytes();
    raw.resize(64, b'k');
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// `%XX` for everything but RFC 3986 unreserved characters (`upper`: hex case).
fn percent_encode(s: &str, upper: bool) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ if upper => format!("%{b:02X}"),
            _ => format!("%{b:02x}"),
        })
        .collect()
}

#[derive(Default)]
struct Secrets {
    /// (what it is, a form that must not appear)
    forms: Vec<(String, String)>,
}

impl Secrets {
    /// Adds `value` and its percent-encoded and base64 forms.
    fn add(&mut self, what: &str, value: &str) {
        assert!(value.len() >= 8, "secret {what} too short to scan for: {value:?}");
        let b64 = base64::engine::general_purpose::STANDARD;
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for (form, v) in [
            ("raw", value.to_string()),
            ("percent-encoded", percent_encode(value, true)),
            ("percent-encoded (lower)", percent_encode(value, false)),
            ("base64", b64.encode(value)),
            ("base64url", b64url.encode(value)),
            ("JSON-escaped", serde_json::to_string(value).unwrap().trim_matches('"').to_string()),
            ("Debug-escaped", format!("{value:?}").trim_matches('"').to_string()),
        ] {
            if !self.forms.iter().any(|(_, f)| *f == v) {
                self.forms.push((format!("{what} ({form})"), v));
            }
        }
    }

    /// A basic-auth pair: the password, and `base64(user:password)` as sent in the header.
    fn add_basic(&mut self, what: &str, user: &str, password: &str) {
        self.add(what, password);
        let header = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.forms.push((format!("{what} (basic header)"), header));
    }

    /// [`Secrets::add`] for each `(what, value)`.
    fn add_all(&mut self, pairs: &[(&str, &str)]) {
        for (what, value) in pairs {
            self.add(what, value);
        }
    }

    fn leaks(&self, text: &str) -> Vec<String> {
        self.forms.iter().filter(|(_, f)| text.contains(f.as_str())).map(|(w, _)| w.clone()).collect()
    }
}

/// Everything ebb produced that KEDA, an operator or a scrape would see.
#[derive(Default)]
struct Seen {
    /// gRPC errors: message, details, metadata.
    errors: Vec<String>,
    /// Successful answers (Debug of the response), scanned too.
    answers: Vec<String>,
    /// `/metrics` bodies.
    metrics: Vec<String>,
    /// `ebb check` runs: (args summary, stdout + stderr).
    cli: Vec<(String, String)>,
    /// (case, outcome) for the report.
    outcomes: Vec<(String, String)>,
}

type Shared = Arc<Mutex<Seen>>;

fn record_status(seen: &Shared, case: &str, rpc: &str, s: &Status) {
    let text = format!(
        "{} | details: {} | metadata: {:?} | {s:?}",
        s.message(),
        String::from_utf8_lossy(s.details()),
        s.metadata()
    );
    let mut g = seen.lock().unwrap();
    g.errors.push(text);
    g.outcomes.push((format!("{case}/{rpc}"), format!("{:?}: {}", s.code(), s.message())));
}

/// What one ScaledObject saw through every RPC.
#[derive(Debug)]
struct Outcome {
    spec: Result<(), Status>,
    metrics: Result<f64, Status>,
    active: Result<bool, Status>,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.spec.is_ok() && self.metrics.is_ok() && self.active.is_ok()
    }
}

/// Drives GetMetricSpec, GetMetrics, IsActive and StreamIsActive for one ScaledObject,
/// recording every answer and error. GetMetrics is retried (bounded by `settle`) while the
/// first poll is pending, so slow failures (timeouts) come through with their real reason.
async fn drive(keda: &Keda, seen: &Shared, case: &str, md: &[(String, String)], settle: Duration) -> Outcome {
    let so = so_owned(case, md);
    let spec = keda.get_metric_spec(&so).await;
    let name = match &spec {
        Ok(s) => {
            seen.lock().unwrap().answers.push(format!("{s:?}"));
            s.metric_specs.first().map(|m| m.metric_name.clone()).unwrap_or_default()
        }
        Err(s) => {
            record_status(seen, case, "GetMetricSpec", s);
            "x".to_string()
        }
    };
    let start = std::time::Instant::now();
    let metrics = loop {
        let r = keda.get_metrics(&so, &name).await;
        match &r {
            Err(s) => {
                record_status(seen, case, "GetMetrics", s);
                let pending = s.message().contains("first poll")
                    || s.message().contains("for the first time")
                    || s.message().contains("no measurement yet");
                if pending && start.elapsed() < settle {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            }
            Ok(m) => seen.lock().unwrap().answers.push(format!("{m:?}")),
        }
        break r.map(|m| m.metric_values.first().map(|v| v.metric_value_float).unwrap_or(f64::NAN));
    };
    let active = keda.is_active(&so).await;
    match &active {
        Ok(a) => seen.lock().unwrap().answers.push(format!("{a:?}")),
        Err(s) => record_status(seen, case, "IsActive", s),
    }
    // StreamIsActive: the first message (or the end, or an error), bounded.
    match keda.stream_is_active(&so).await {
        Ok(mut stream) => match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
            Ok(Ok(m)) => seen.lock().unwrap().answers.push(format!("{m:?}")),
            Ok(Err(s)) => record_status(seen, case, "StreamIsActive", &s),
            Err(_) => {} // no change to push (a failing source sends nothing)
        },
        Err(s) => record_status(seen, case, "StreamIsActive(open)", &s),
    }
    let outcome = Outcome { spec: spec.map(|_| ()), metrics, active: active.map(|a| a.result) };
    let summary = match (&outcome.metrics, &outcome.spec) {
        (Ok(v), _) => format!("ok, metric {v}"),
        (Err(s), Ok(())) => format!("{:?}: {}", s.code(), s.message()),
        (Err(_), Err(s)) => format!("{:?}: {}", s.code(), s.message()),
    };
    seen.lock().unwrap().outcomes.push((case.to_string(), summary));
    outcome
}

/// What a ScaledObject must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Ok,
    Err,
    /// Whatever the source answers (tansu speaks no SASL): only the scan matters.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    Either,
}

/// (ScaledObject name, trigger metadata, what it must do)
type Case = (&'static str, Vec<(String, String)>, Expect);

/// An `ebb check` run: (name, arguments, exit code, JSON logs)
type CheckRun = (&'static str, Vec<String>, Option<i32>, bool);

fn md(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = vec![("scalerAddress".into(), "ebb.keda.svc.cluster.local:9090".into())];
    v.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    v
}

fn expect_ok(o: &Outcome, case: &str) {
    assert!(o.ok(), "{case}: the success path must succeed (else it proves nothing): {o:?}");
}

fn expect_err(o: &Outcome, case: &str) {
    assert!(o.metrics.is_err(), "{case}: expected a failure: {o:?}");
}

// ---------------------------------------------------------------------------------------------
// A Prometheus-shaped server that checks credentials.

#[derive(Clone)]
struct PromAuth {
    bearer: String,
    basic: String,
    header: (String, String),
}

/// A server task, aborted when dropped.
struct Served(tokio::task::JoinHandle<()>);

impl Drop for Served {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn start_prom(auth: PromAuth) -> (String, Served) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/api/v1/query",
        axum::routing::get(move |headers: HeaderMap| {
            let auth = auth.clone();
            async move {
                let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                let ok = h("authorization") == format!("Bearer {}", auth.bearer)
                    || h("authorization") == format!("Basic {}", auth.basic)
                    || h(&auth.header.0) == auth.header.1;
                if ok {
                    let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.0,"3"]}]}}"#;
                    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
                } else {
                    let body = r#"{"status":"error","errorType":"unauthorized","error":"bad credentials"}"#;
                    (StatusCode::UNAUTHORIZED, [("content-type", "application/json")], body).into_response()
                }
            }
        }),
    );
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    (format!("http://{addr}"), Served(task))
}

/// An `authenticationRef` resolver: `prom-auth` holds a bearer token; anything else is missing.
struct Resolver {
    token: String,
}

#[async_trait::async_trait]
impl AuthRefResolver for Resolver {
    async fn resolve(&self, namespace: &str, name: &str) -> Result<HashMap<String, String>, String> {
        match name {
            "prom-auth" => Ok(HashMap::from([
                ("authModes".to_string(), "bearer".to_string()),
                ("bearerToken".to_string(), self.token.clone()),
            ])),
            _ => Err(format!("TriggerAuthentication {namespace}/{name} not found")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `ebb check`.

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `ebb check` with TRACE logging; returns (exit code, stdout + stderr).
async fn ebb_check(args: Vec<String>, json_logs: bool) -> (Option<i32>, String) {
    let run = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ebb"));
        cmd.arg("check").args(&args).env("RUST_LOG", "trace").env("NO_COLOR", "1");
        if json_logs {
            cmd.env("EBB_LOG_FORMAT", "json");
        }
        cmd.output().expect("ebb runs")
    });
    let out = within(CLI_LIMIT, "ebb check", run).await.expect("join");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), strip_ansi(&text))
}

// ---------------------------------------------------------------------------------------------
// Scaler paths.

/// One scaler path: the servers it talks to (kept as long as the path), the secrets it hands
/// ebb, its ScaledObjects and its `ebb check` runs.
struct ScalerPath {
    scaler: &'static str,
    secrets: Secrets,
    cases: Vec<Case>,
    /// How long GetMetrics waits out a pending first poll.
    settle: Duration,
    checks: Vec<CheckRun>,
    auth_refs: Option<Arc<dyn AuthRefResolver>>,
    /// The scalers' settings of the path's ebb (its `connectionRef` directory).
    scalers: ebb_scalers::Settings,
    servers: Vec<Box<dyn std::any::Any>>,
}

impl ScalerPath {
    fn new(scaler: &'static str, secrets: Secrets, cases: Vec<Case>, checks: Vec<CheckRun>) -> ScalerPath {
        let path = ScalerPath {
            scaler,
            secrets,
            cases,
            settle: Duration::from_secs(8),
            checks,
            auth_refs: None,
            scalers: ebb_scalers::Settings::default(),
            servers: Vec::new(),
        };
        // A log line is told to be this path's by its ScaledObject's name ([`owners`]).
        let prefix = PATHS.iter().find(|(s, _)| *s == scaler).map(|(_, p)| format!("{p}-")).expect("a known scaler");
        for (case, _, _) in &path.cases {
            assert!(case.starts_with(&prefix), "{scaler}: ScaledObject {case} must start with {prefix}");
        }
        path
    }

    fn keep(mut self, server: impl std::any::Any) -> ScalerPath {
        self.servers.push(Box::new(server));
        self
    }
}

/// The scaler paths: (scaler type, the prefix of its ScaledObjects' names).
const PATHS: &[(&str, &str)] = &[
    ("azure-servicebus", "sb"),
    ("azure-eventhub", "eh"),
    ("azure-queue", "queue"),
    ("prometheus", "prom"),
    ("kafka", "kafka"),
];

/// Log targets that only one path's polls log under: (target, scaler). librdkafka's lines come
/// from its own threads, outside any span.
const TARGETS: &[(&str, &str)] = &[(" rdkafka::", "kafka"), (" ebb_scalers::kafka::", "kafka")];

/// Tells which scaler path a captured log line is from, where it can be told: by its poll span
/// or trigger fields (`scaler="…"`), its gRPC span (`scaledobject=<prefix>-…`), or a target in
/// [`TARGETS`]. `None` for the rest (h2, tonic, the test servers), which may be any test's.
fn owners() -> impl Fn(&str) -> Option<&'static str> {
    let tags: Vec<(&'static str, [String; 3])> = PATHS
        .iter()
        .map(|(scaler, prefix)| {
            (
                *scaler,
                [
                    format!("scaler=\"{scaler}\""),
                    format!("scaledobject={prefix}-"),
                    format!("scaledobject=\"{prefix}-"),
                ],
            )
        })
        .collect();
    move |line: &str| {
        if let Some((_, scaler)) = TARGETS.iter().find(|(target, _)| line.contains(target)) {
            return Some(scaler);
        }
        tags.iter().find(|(_, t)| t.iter().any(|t| line.contains(t.as_str()))).map(|(scaler, _)| *scaler)
    }
}

/// `ebb check` arguments from trigger metadata.
fn args(m: &[(String, String)]) -> Vec<String> {
    m.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// `--json` before `args`.
fn json(args: Vec<String>) -> Vec<String> {
    std::iter::once("--json".to_string()).chain(args).collect()
}

/// `ebb check` of queue `orders` through `connection`.
fn check_orders(scaler: &str, connection: &str) -> Vec<String> {
    vec![format!("scalerType={scaler}"), "queueName=orders".into(), format!("connection={connection}")]
}

/// Service Bus: the SAS key in the connection string.
async fn servicebus() -> ScalerPath {
    let sb = ServiceBusDouble::start().await;
    let closed_host = closed_url().trim_start_matches("http://").to_string();
    let mut secrets = Secrets::default();
    secrets.add("Service Bus double key", common::servicebus::KEY);
    let sb_wrong = secret("sb-key");
    let sb_unreach = secret("sb-key-unreachable");
    let sb_badurl = secret("sb-key-badurl");
    let sb_badmd = secret("sb-key-badmd");
    secrets.add_all(&[
        ("sb wrong", &sb_wrong),
        ("sb unreachable", &sb_unreach),
        ("sb bad url", &sb_badurl),
        ("sb bad metadata", &sb_badmd),
    ]);
    let sb_md = |conn: &str, extra: &[(&str, &str)]| {
        let mut m = md(&[("scalerType", "azure-servicebus"), ("pollingInterval", "1"), ("connectionFromEnv", conn)]);
        m.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        m
    };
    let sb_unreach_conn = format!(
        "Endpoint=sb://{closed_host}/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={sb_unreach}"
    );
    let sb_bad_url_conn = format!("Endpoint=not a url;SharedAccessKeyName=Root;SharedAccessKey={sb_badurl}");
    let sb_badmd_conn = format!("Endpoint=sb://{}/;SharedAccessKey={sb_badmd}", sb.addr);
    let cases: Vec<Case> = vec![
        ("sb-ok-queue", sb_md(&sb.connection_string(), &[("queueName", "orders")]), Expect::Ok),
        (
            "sb-ok-subscription",
            sb_md(&sb.connection_string(), &[("topicName", "events"), ("subscriptionName", "billing")]),
            Expect::Ok,
        ),
        (
            "sb-ok-regex",
            sb_md(&sb.connection_string(), &[("queueName", "orders-.*"), ("useRegex", "true")]),
            Expect::Ok,
        ),
        ("sb-wrong-key", sb_md(&sb.connection_string_with(&sb_wrong), &[("queueName", "orders")]), Expect::Err),
        ("sb-unreachable", sb_md(&sb_unreach_conn, &[("queueName", "orders")]), Expect::Err),
        ("sb-bad-url", sb_md(&sb_bad_url_conn, &[("queueName", "orders")]), Expect::Err),
        ("sb-no-key-name", sb_md(&sb_badmd_conn, &[("queueName", "orders")]), Expect::Err),
        (
            "sb-queue-and-topic",
            sb_md(&sb.connection_string_with(&sb_badmd), &[("queueName", "orders"), ("topicName", "t")]),
            Expect::Err,
        ),
        (
            "sb-missing-sub",
            sb_md(&sb.connection_string(), &[("topicName", "events"), ("subscriptionName", "missing")]),
            Expect::Err,
        ),
    ];
    let sb_check = |conn: &str| check_orders("azure-servicebus", conn);
    let checks: Vec<CheckRun> = vec![
        ("check sb ok", sb_check(&sb.connection_string()), Some(0), false),
        ("check sb ok (json, json logs)", json(sb_check(&sb.connection_string())), Some(0), true),
        ("check sb wrong key", sb_check(&sb.connection_string_with(&sb_wrong)), Some(1), false),
        ("check sb wrong key (json)", json(sb_check(&sb.connection_string_with(&sb_wrong))), Some(1), true),
        ("check sb bad metadata", sb_check(&sb_badmd_conn), Some(2), false),
    ];
    ScalerPath::new("azure-servicebus", secrets, cases, checks).keep(sb)
}

/// Event Hubs: the SAS key, and the checkpoint storage account's key (Azurite blobs).
async fn eventhub() -> ScalerPath {
    let az = Azurite::start_with_key(&secret_base64_key("eh-azurite-account"));
    az.create_container("gosdk").await;
    let eh = EventHubsDouble::start("telemetry", vec![(0, 9), (0, 4)]).await;
    let closed = closed_url();
    let mut secrets = Secrets::default();
    secrets.add("Event Hubs double key", common::eventhubs::KEY);
    secrets.add("eh Azurite account key", az.key());
    let eh_wrong = secret("eh-key");
    let st_wrong = secret_base64_key("eh-storage");
    let st_unreach = secret_base64_key("eh-storage-unreachable");
    let st_invalid = format!("{}!!not-base64", secret("eh-storage-invalid"));
    secrets.add_all(&[
        ("eh wrong key", &eh_wrong),
        ("eh storage wrong key", &st_wrong),
        ("eh storage unreachable key", &st_unreach),
        ("eh storage invalid key", &st_invalid),
    ]);
    let blob_cs = |endpoint: &str, key: &str| {
        format!("DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={key};BlobEndpoint={endpoint};")
    };
    let eh_md = |conn: &str, storage: &str| {
        md(&[
            ("scalerType", "azure-eventhub"),
            ("pollingInterval", "1"),
            ("connectionFromEnv", conn),
            ("storageConnectionFromEnv", storage),
            ("checkpointStrategy", "goSdk"),
            ("blobContainer", "gosdk"),
            ("unprocessedEventThreshold", "5"),
        ])
    };
    let good_blob = az.blob_connection_string();
    let wrong_blob = blob_cs(&az.blob_endpoint(), &st_wrong);
    let cases: Vec<Case> = vec![
        ("eh-ok", eh_md(&eh.connection_string(), &good_blob), Expect::Ok),
        ("eh-wrong-hub-key", eh_md(&eh.connection_string_with(&eh_wrong), &good_blob), Expect::Err),
        ("eh-wrong-storage-key", eh_md(&eh.connection_string(), &wrong_blob), Expect::Err),
        (
            "eh-unreachable-storage",
            eh_md(&eh.connection_string(), &blob_cs(&format!("{closed}/{DEV_ACCOUNT}"), &st_unreach)),
            Expect::Err,
        ),
        (
            "eh-invalid-storage-key",
            eh_md(&eh.connection_string(), &blob_cs(&az.blob_endpoint(), &st_invalid)),
            Expect::Err,
        ),
    ];
    let checks: Vec<CheckRun> = vec![
        ("check eh ok", args(&eh_md(&eh.connection_string(), &good_blob)), Some(0), false),
        ("check eh wrong storage key", args(&eh_md(&eh.connection_string(), &wrong_blob)), Some(1), false),
    ];
    ScalerPath::new("azure-eventhub", secrets, cases, checks).keep(az).keep(eh)
}

/// Azure Queue: the account key, a SAS, `connectionRef` files.
async fn queue() -> ScalerPath {
    let az = Azurite::start_with_key(&secret_base64_key("queue-azurite-account"));
    az.create_queue("orders").await;
    az.put_messages("orders", 2).await;
    let closed = closed_url();
    let mut secrets = Secrets::default();
    secrets.add("queue Azurite account key", az.key());
    // `connectionRef` files in the path's secrets directory.
    let secrets_dir = tempfile::tempdir().expect("temp dir");
    let ref_wrong_key = secret_base64_key("queue-ref");
    std::fs::write(secrets_dir.path().join("storage-good"), az.connection_string()).unwrap();
    std::fs::write(secrets_dir.path().join("storage-wrong"), connection_string(az.queue_port, &ref_wrong_key)).unwrap();
    let q_wrong = secret_base64_key("queue-key");
    let q_unreach = secret_base64_key("queue-key-unreachable");
    let q_invalid = format!("{}!!not-base64", secret("queue-key-invalid"));
    let q_bad_sig = secret("queue-sas-sig");
    let q_unreach_sig = secret("queue-sas-sig-unreachable");
    secrets.add_all(&[
        ("queue wrong key", &q_wrong),
        ("queue unreachable key", &q_unreach),
        ("queue invalid key", &q_invalid),
        ("queue bogus SAS sig", &q_bad_sig),
        ("queue unreachable SAS sig", &q_unreach_sig),
        ("queue connectionRef wrong key", &ref_wrong_key),
    ]);
    let key = AccountKey::from_base64(az.key()).unwrap();
    let expiry = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let good_sas = queue_service_sas(DEV_ACCOUNT, &key, "orders", "r", expiry);
    // The signature of a SAS handed over by the user is a secret too.
    let good_sig = sas_sig(&good_sas);
    secrets.add("queue valid SAS sig", &good_sig);
    let sas_cs = |endpoint: &str, sig: &str| {
        let sas: String = good_sas
            .split('&')
            .map(|p| if p.starts_with("sig=") { format!("sig={}", percent_encode(sig, true)) } else { p.to_string() })
            .collect::<Vec<_>>()
            .join("&");
        format!("QueueEndpoint={endpoint};SharedAccessSignature={sas}")
    };
    let q_md = |conn_key: &str, conn: &str, queue: &str| {
        md(&[("scalerType", "azure-queue"), ("pollingInterval", "1"), (conn_key, conn), ("queueName", queue)])
    };
    let q_endpoint = az.queue_endpoint();
    let wrong_key_cs = connection_string(az.queue_port, &q_wrong);
    let invalid_key_cs = connection_string(az.queue_port, &q_invalid);
    let unreachable_sas_cs = sas_cs(&format!("{closed}/{DEV_ACCOUNT}"), &q_unreach_sig);
    let cases: Vec<Case> = vec![
        ("queue-ok", q_md("connectionFromEnv", &az.connection_string(), "orders"), Expect::Ok),
        ("queue-ok-connection", q_md("connection", &az.connection_string(), "orders"), Expect::Ok),
        ("queue-ok-sas", q_md("connectionFromEnv", &sas_cs(&q_endpoint, &good_sig), "orders"), Expect::Ok),
        ("queue-ok-ref", q_md("connectionRef", "storage-good", "orders"), Expect::Ok),
        ("queue-wrong-key", q_md("connectionFromEnv", &wrong_key_cs, "orders"), Expect::Err),
        ("queue-missing-queue", q_md("connectionFromEnv", &az.connection_string(), "nosuchqueue"), Expect::Err),
        (
            "queue-unreachable",
            q_md("connectionFromEnv", &connection_string(free_port(), &q_unreach), "orders"),
            Expect::Err,
        ),
        ("queue-invalid-key", q_md("connectionFromEnv", &invalid_key_cs, "orders"), Expect::Err),
        ("queue-bogus-sas", q_md("connectionFromEnv", &sas_cs(&q_endpoint, &q_bad_sig), "orders"), Expect::Err),
        ("queue-unreachable-sas", q_md("connectionFromEnv", &unreachable_sas_cs, "orders"), Expect::Err),
        ("queue-ref-wrong-key", q_md("connectionRef", "storage-wrong", "orders"), Expect::Err),
        ("queue-ref-missing", q_md("connectionRef", "no-such-secret", "orders"), Expect::Err),
    ];
    let q_check = |conn: &str| check_orders("azure-queue", conn);
    let checks: Vec<CheckRun> = vec![
        ("check queue ok", q_check(&az.connection_string()), Some(0), false),
        ("check queue ok sas", q_check(&sas_cs(&q_endpoint, &good_sig)), Some(0), false),
        ("check queue wrong key", q_check(&wrong_key_cs), Some(1), false),
        ("check queue unreachable sas", q_check(&unreachable_sas_cs), Some(1), false),
        ("check queue invalid key", q_check(&invalid_key_cs), Some(2), false),
    ];
    let mut path = ScalerPath::new("azure-queue", secrets, cases, checks).keep(az);
    path.scalers.secrets_dir = secrets_dir.path().to_path_buf();
    path.keep(secrets_dir)
}

/// The `sig=` of a SAS query string, percent-decoded.
fn sas_sig(sas: &str) -> String {
    sas.split('&').find_map(|p| p.strip_prefix("sig=")).map(common::servicebus::percent_decode).expect("sig in SAS")
}

/// Prometheus: bearer, basic, custom headers, authenticationRef.
async fn prometheus() -> ScalerPath {
    let prom_auth = PromAuth {
        bearer: secret("prom-bearer"),
        basic: String::new(),
        header: ("x-api-key".into(), secret("prom-header")),
    };
    let basic_user = "ebb-reader";
    let basic_password = secret("prom-basic");
    let prom_auth = PromAuth {
        basic: base64::engine::general_purpose::STANDARD.encode(format!("{basic_user}:{basic_password}")),
        ..prom_auth
    };
    let (prom_url, prom_server) = start_prom(prom_auth.clone()).await;
    let ref_token = secret("authref-bearer");
    let (ref_url, ref_server) = start_prom(PromAuth { bearer: ref_token.clone(), ..prom_auth.clone() }).await;
    let closed = closed_url();
    let mut secrets = Secrets::default();
    secrets.add("prom bearer", &prom_auth.bearer);
    secrets.add_basic("prom basic password", basic_user, &basic_password);
    secrets.add("prom header value", &prom_auth.header.1);
    secrets.add("authenticationRef bearer", &ref_token);
    let p_wrong_bearer = secret("prom-bearer-wrong");
    let p_wrong_password = secret("prom-basic-wrong");
    let p_wrong_header = secret("prom-header-wrong");
    let p_unreach = secret("prom-bearer-unreachable");
    let p_userinfo = secret("prom-userinfo");
    let p_badheader = secret("prom-header-malformed");
    let p_ctl = secret("prom-custom-ctl");
    let p_nouser = secret("prom-basic-nouser");
    let p_custom = secret("prom-custom-value");
    secrets.add_all(&[
        ("prom wrong bearer", &p_wrong_bearer),
        ("prom unreachable bearer", &p_unreach),
        ("prom user-info password", &p_userinfo),
        ("prom malformed header value", &p_badheader),
        ("prom custom value with control char", &p_ctl),
        ("prom password without username", &p_nouser),
        ("prom wrong header", &p_wrong_header),
        ("prom custom auth value", &p_custom),
    ]);
    secrets.add_basic("prom wrong basic password", basic_user, &p_wrong_password);
    let p_md = |server: &str, extra: &[(&str, &str)]| {
        let mut m = md(&[
            ("scalerType", "prometheus"),
            ("serverAddress", server),
            ("query", "sum(queue_depth)"),
            ("threshold", "2"),
            ("pollingInterval", "1"),
        ]);
        for (k, v) in extra {
            m.retain(|(key, _)| key != k);
            m.push((k.to_string(), v.to_string()));
        }
        m
    };
    let header_ok = format!("x-api-key={}", prom_auth.header.1);
    let header_wrong = format!("x-api-key={p_wrong_header}");
    let header_bad = format!("x-api-key={p_badheader},broken");
    let userinfo_url = format!("http://reader:{p_userinfo}@{}", prom_url.trim_start_matches("http://"));
    let ctl_value = format!("{p_ctl}\nInjected: 1");
    let pu = prom_url.as_str();
    let bearer_ok = p_md(pu, &[("authModes", "bearer"), ("bearerToken", &prom_auth.bearer)]);
    let basic_wrong = p_md(pu, &[("authModes", "basic"), ("username", basic_user), ("password", &p_wrong_password)]);
    let userinfo = p_md(&userinfo_url, &[]);
    let malformed_headers = p_md(pu, &[("customHeaders", &header_bad)]);
    let cases: Vec<Case> = vec![
        ("prom-ok-bearer", bearer_ok.clone(), Expect::Ok),
        (
            "prom-ok-bearer-fromenv",
            p_md(pu, &[("authModes", "bearer"), ("bearerTokenFromEnv", &prom_auth.bearer)]),
            Expect::Ok,
        ),
        (
            "prom-ok-basic",
            p_md(pu, &[("authModes", "basic"), ("username", basic_user), ("password", &basic_password)]),
            Expect::Ok,
        ),
        ("prom-ok-headers", p_md(pu, &[("customHeaders", &header_ok)]), Expect::Ok),
        (
            "prom-ok-custom",
            p_md(
                pu,
                &[("authModes", "custom"), ("customAuthHeader", "x-api-key"), ("customAuthValue", &prom_auth.header.1)],
            ),
            Expect::Ok,
        ),
        ("prom-ok-authref", p_md(&ref_url, &[("authenticationRef", "prom-auth")]), Expect::Ok),
        ("prom-wrong-bearer", p_md(pu, &[("authModes", "bearer"), ("bearerToken", &p_wrong_bearer)]), Expect::Err),
        ("prom-wrong-basic", basic_wrong.clone(), Expect::Err),
        ("prom-wrong-header", p_md(pu, &[("customHeaders", &header_wrong)]), Expect::Err),
        (
            "prom-wrong-custom",
            p_md(pu, &[("authModes", "custom"), ("customAuthHeader", "x-api-key"), ("customAuthValue", &p_custom)]),
            Expect::Err,
        ),
        ("prom-unreachable", p_md(&closed, &[("authModes", "bearer"), ("bearerToken", &p_unreach)]), Expect::Err),
        ("prom-userinfo-url", userinfo.clone(), Expect::Err),
        ("prom-malformed-headers", malformed_headers.clone(), Expect::Err),
        (
            "prom-custom-ctl-char",
            p_md(pu, &[("authModes", "custom"), ("customAuthHeader", "x-api-key"), ("customAuthValue", &ctl_value)]),
            Expect::Err,
        ),
        ("prom-basic-no-user", p_md(pu, &[("authModes", "basic"), ("password", &p_nouser)]), Expect::Err),
        (
            "prom-bearer-and-basic",
            p_md(
                pu,
                &[
                    ("authModes", "bearer,basic"),
                    ("bearerToken", &p_wrong_bearer),
                    ("username", "u"),
                    ("password", &p_wrong_password),
                ],
            ),
            Expect::Err,
        ),
        ("prom-authref-missing", p_md(&ref_url, &[("authenticationRef", "nope")]), Expect::Err),
    ];
    let checks: Vec<CheckRun> = vec![
        ("check prom bearer ok", args(&bearer_ok), Some(0), false),
        ("check prom basic wrong", args(&basic_wrong), Some(1), false),
        ("check prom unreachable", args(&p_md(&closed, &[("customHeaders", &header_wrong)])), Some(1), false),
        ("check prom user-info url", args(&userinfo), Some(2), false),
        ("check prom malformed headers (json)", json(args(&malformed_headers)), Some(2), true),
    ];
    let mut path = ScalerPath::new("prometheus", secrets, cases, checks).keep(prom_server).keep(ref_server);
    path.auth_refs = Some(Arc::new(Resolver { token: ref_token }));
    path
}

/// Kafka: SASL credentials, against an unreachable broker and a tansu broker without SASL.
#[cfg(feature = "kafka")]
async fn kafka() -> ScalerPath {
    let tansu = common::kafka::Tansu::start();
    let closed = closed_url();
    let mut secrets = Secrets::default();
    let k_plain = secret("kafka-plain");
    let k_scram = secret("kafka-scram");
    let k_tansu = secret("kafka-tansu");
    let k_oauth = secret("kafka-oauth-client-secret");
    let k_nouser = secret("kafka-nouser");
    secrets.add_all(&[
        ("kafka sasl plaintext password", &k_plain),
        ("kafka scram password", &k_scram),
        ("kafka password vs tansu", &k_tansu),
        ("kafka oauth client secret", &k_oauth),
        ("kafka password without user", &k_nouser),
    ]);
    let unreachable = format!("127.0.0.1:{}", free_port());
    let k_md = |servers: &str, extra: &[(&str, &str)]| {
        let mut m = md(&[
            ("scalerType", "kafka"),
            ("bootstrapServers", servers),
            ("consumerGroup", "g"),
            ("topic", "orders"),
            ("pollingInterval", "1"),
        ]);
        m.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        m
    };
    let plain_unreachable = k_md(&unreachable, &[("sasl", "plaintext"), ("username", "u"), ("password", &k_plain)]);
    let no_user = k_md(&unreachable, &[("sasl", "plaintext"), ("password", &k_nouser)]);
    let cases: Vec<Case> = vec![
        ("kafka-plain-unreachable", plain_unreachable.clone(), Expect::Err),
        (
            "kafka-scram-unreachable",
            k_md(&unreachable, &[("sasl", "scram_sha512"), ("username", "u"), ("password", &k_scram)]),
            Expect::Err,
        ),
        (
            "kafka-plain-tansu",
            k_md(&tansu.bootstrap(), &[("sasl", "plaintext"), ("username", "u"), ("password", &k_tansu)]),
            Expect::Either,
        ),
        (
            "kafka-oauth-unreachable-endpoint",
            k_md(
                &tansu.bootstrap(),
                &[
                    ("sasl", "oauthbearer"),
                    ("username", "client"),
                    ("password", &k_oauth),
                    ("oauthTokenEndpointUri", &format!("{closed}/token")),
                ],
            ),
            Expect::Err,
        ),
        ("kafka-no-user", no_user.clone(), Expect::Err),
    ];
    let checks: Vec<CheckRun> = vec![
        ("kafka-plain-unreachable", args(&plain_unreachable), Some(1), false),
        ("kafka-no-user", args(&no_user), Some(2), false),
    ];
    let mut path = ScalerPath::new("kafka", secrets, cases, checks).keep(tansu);
    // A Kafka poll against an unreachable broker takes ~9 s.
    path.settle = Duration::from_secs(20);
    path
}

// ---------------------------------------------------------------------------------------------
// The two ways in, and the scan.

/// Serve: every ScaledObject of the path at once through an in-process ebb of its own, then its
/// `/metrics`; the capture holds this path's lines, and nothing leaked.
async fn serve_leaks_nothing(test: &str, path: impl Future<Output = ScalerPath>) {
    let logs = captured_logs();
    let started = Instant::now();
    within(TEST_LIMIT, test, async {
        let mut path = path.await;
        let seen: Shared = Arc::default();
        let opts = ServeOptions {
            auth_refs: path.auth_refs.clone(),
            engine: ebb::engine::EngineConfig { access: common::ebb::open_access(), ..Default::default() },
            scalers: path.scalers.clone(),
            ..ServeOptions::default()
        };
        let (srv, keda) = start_ebb_with_opts(opts).await;
        let mut driven = tokio::task::JoinSet::new();
        for (case, m, expect) in path.cases.clone() {
            let (keda, seen, settle) = (keda.clone(), seen.clone(), path.settle);
            driven.spawn(async move { (case, drive(&keda, &seen, case, &m, settle).await, expect) });
        }
        while let Some(r) = driven.join_next().await {
            let (case, o, expect) = r.expect("drive task");
            match expect {
                Expect::Ok => expect_ok(&o, case),
                Expect::Err => expect_err(&o, case),
                Expect::Either => {}
            }
        }

        let body = reqwest::get(format!("http://{}/metrics", srv.http_addr))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("body");
        assert!(body.contains("ebb_poll_errors_total") && body.contains("ebb_upstream_calls_total"), "{body}");
        seen.lock().unwrap().metrics.push(body);
        srv.shutdown().await;
        path.servers.clear();

        let log_text = captured_text(logs, path.scaler);
        let log_lines: Vec<&str> = log_text.lines().collect();
        let owner = owners();
        let own: Vec<&str> = log_lines.iter().copied().filter(|l| owner(l) == Some(path.scaler)).collect();
        // The capture really captured this path: ebb's own lines, span fields, the failing and
        // the succeeding polls, and the HTTP clients underneath.
        let poll_span = format!("poll{{scaler=\"{}\"", path.scaler);
        let mut markers = vec!["new ScaledObject trigger", "polling new source", "poll failed", poll_span.as_str()];
        if path.cases.iter().any(|(_, _, e)| *e == Expect::Ok) {
            markers.push("poll ok");
        }
        for marker in markers {
            assert!(
                own.iter().any(|l| l.contains(marker)),
                "{}: captured log lacks {marker:?}; {} of its lines captured",
                path.scaler,
                own.len()
            );
        }
        assert!(own.len() > 100, "{}: too few of its log lines captured: {}", path.scaler, own.len());
        // Each failing ScaledObject fails GetMetrics and IsActive.
        let failing = path.cases.iter().filter(|(_, _, e)| *e == Expect::Err).count();
        let errors = seen.lock().unwrap().errors.len();
        assert!(errors >= 2 * failing, "{}: too few gRPC errors seen: {errors} from {failing} failing", path.scaler);

        assert_no_leaks(&path, &seen.lock().unwrap(), &log_lines, started);
    })
    .await;
}

/// `ebb check` (RUST_LOG=trace): every run of the path at once, each with its exit code; nothing
/// leaked.
async fn check_leaks_nothing(test: &str, path: impl Future<Output = ScalerPath>) {
    let logs = captured_logs();
    let started = Instant::now();
    within(TEST_LIMIT, test, async {
        let path = path.await;
        let mut seen = Seen::default();
        let mut runs = tokio::task::JoinSet::new();
        for (case, args, want, json_logs) in path.checks.clone() {
            runs.spawn(async move {
                let (code, text) = ebb_check(args, json_logs).await;
                (case, code, want, text)
            });
        }
        while let Some(r) = runs.join_next().await {
            let (case, code, want, text) = r.expect("cli task");
            assert_eq!(code, want, "{case}: exit code; output:\n{text}");
            seen.outcomes.push((case.to_string(), format!("exit {code:?}")));
            seen.cli.push((case.to_string(), text));
        }
        assert!(
            seen.cli.iter().any(|(_, t)| t.contains("TRACE") || t.contains("\"level\":\"TRACE\"")),
            "{}: ebb check ran with RUST_LOG=trace but logged nothing at TRACE",
            path.scaler
        );

        let log_text = captured_text(logs, path.scaler);
        assert_no_leaks(&path, &seen, &log_text.lines().collect::<Vec<_>>(), started);
    })
    .await;
}

/// Everything captured so far (every test's); with `EBB_SECRETS_LOG_DUMP=<file>`, also written
/// to `<file>.<scaler>`, to read what was scanned.
fn captured_text(logs: &Mutex<Vec<u8>>, scaler: &str) -> String {
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    if let Some(path) = std::env::var_os("EBB_SECRETS_LOG_DUMP") {
        let mut path = path;
        path.push(format!(".{scaler}"));
        std::fs::write(path, &text).expect("writing the log dump");
    }
    text
}

/// Reports what was seen, then fails on any leak of the path's secrets, in any form, in every
/// captured log line (a secret of this path can only come from this path) and in everything ebb
/// answered, served or printed; and on an unredacted `sig=` in those, but in log lines only where
/// they are this path's or no path's (another path's test looks at its own).
fn assert_no_leaks(path: &ScalerPath, seen: &Seen, log_lines: &[&str], started: Instant) {
    let metric_lines: usize = seen.metrics.iter().map(|m| m.lines().count()).sum();
    let cli_lines: usize = seen.cli.iter().map(|(_, t)| t.lines().count()).sum();
    for (case, outcome) in &seen.outcomes {
        eprintln!("{case}: {outcome}");
    }
    eprintln!(
        "{}: scanned {} log lines, {} gRPC errors, {} gRPC answers, {} /metrics lines, {} ebb check runs \
         ({cli_lines} lines), {} secret forms, in {:?}",
        path.scaler,
        log_lines.len(),
        seen.errors.len(),
        seen.answers.len(),
        metric_lines,
        seen.cli.len(),
        path.secrets.forms.len(),
        started.elapsed()
    );

    let secrets = &path.secrets;
    let mut leaks = Vec::new();
    let mut check = |kind: &str, text: &str, sigs: bool| {
        for what in secrets.leaks(text) {
            leaks.push(format!("{kind}: {what} in: {}", excerpt(text, secrets)));
        }
        // A signature on the wire (a SAS `sig=` or a SharedAccessSignature) is a credential
        // valid until its expiry, whoever computed it.
        if let Some(i) = unredacted_sig(text).filter(|_| sigs) {
            let around: String = text[i..].chars().take(120).collect();
            leaks.push(format!("{kind}: an unredacted sig= in: {around}"));
        }
    };
    let owner = owners();
    for line in log_lines {
        let of = owner(line);
        let kind = if of.is_none() { "log line (of no path that can be told)" } else { "log line" };
        check(kind, line, of.is_none() || of == Some(path.scaler));
    }
    for e in &seen.errors {
        check("gRPC error", e, true);
    }
    for a in &seen.answers {
        check("gRPC answer", a, true);
    }
    for m in &seen.metrics {
        for line in m.lines() {
            check("/metrics", line, true);
        }
    }
    for (case, t) in &seen.cli {
        for line in t.lines() {
            check(&format!("ebb check ({case})"), line, true);
        }
    }
    assert!(leaks.is_empty(), "{}: {} leaks:\n{}", path.scaler, leaks.len(), leaks.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// The tests: one per scaler path and way in.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_servicebus_serve_leaks_no_secret() {
    serve_leaks_nothing("azure_servicebus_serve_leaks_no_secret", servicebus()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_servicebus_check_leaks_no_secret() {
    check_leaks_nothing("azure_servicebus_check_leaks_no_secret", servicebus()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_eventhub_serve_leaks_no_secret() {
    serve_leaks_nothing("azure_eventhub_serve_leaks_no_secret", eventhub()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_eventhub_check_leaks_no_secret() {
    check_leaks_nothing("azure_eventhub_check_leaks_no_secret", eventhub()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_queue_serve_leaks_no_secret() {
    serve_leaks_nothing("azure_queue_serve_leaks_no_secret", queue()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_queue_check_leaks_no_secret() {
    check_leaks_nothing("azure_queue_check_leaks_no_secret", queue()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_serve_leaks_no_secret() {
    serve_leaks_nothing("prometheus_serve_leaks_no_secret", prometheus()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_check_leaks_no_secret() {
    check_leaks_nothing("prometheus_check_leaks_no_secret", prometheus()).await;
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_serve_leaks_no_secret() {
    serve_leaks_nothing("kafka_serve_leaks_no_secret", kafka()).await;
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_check_leaks_no_secret() {
    check_leaks_nothing("kafka_check_leaks_no_secret", kafka()).await;
}

/// The scanner finds what it looks for, in every form, and tells log lines' paths apart.
#[test]
fn scanner_finds_every_form_and_tells_paths_apart() {
    let mut secrets = Secrets::default();
    let bearer = secret("prom-bearer");
    let (basic_user, basic_password) = ("ebb-reader", secret("prom-basic"));
    let key = AccountKey::from_base64(DEV_KEY).unwrap();
    let good_sig = sas_sig(&queue_service_sas(DEV_ACCOUNT, &key, "orders", "r", 4_000_000_000));
    secrets.add("prom bearer", &bearer);
    secrets.add_basic("prom basic password", basic_user, &basic_password);
    secrets.add("Azurite dev account key", DEV_KEY);
    secrets.add("queue valid SAS sig", &good_sig);
    for probe in [
        format!("x {bearer} y"),
        format!("x={}&", percent_encode(&basic_password, true)),
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{basic_user}:{basic_password}"))),
        format!("{{\"k\":{}}}", serde_json::to_string(DEV_KEY).unwrap()),
        format!("sig={}&se=1", percent_encode(&good_sig, true)),
    ] {
        assert!(!secrets.leaks(&probe).is_empty() || unredacted_sig(&probe).is_some(), "scanner misses {probe}");
    }
    assert!(unredacted_sig("a?sig=REDACTED&sp=r").is_none() && unredacted_sig("a?sig=AbCdEf0123456789%3D&").is_some());

    let owner = owners();
    for (line, want) in [
        (r#"DEBUG poll{scaler="azure-queue" source=azure-queue|http://…}: x: poll ok"#, Some("azure-queue")),
        ("INFO get_metric_spec{namespace=default scaledobject=sb-ok-queue}: ebb::engine: x", Some("azure-servicebus")),
        (
            r#"INFO ebb::engine: new ScaledObject trigger scaledobject="eh-ok" scaler="azure-eventhub""#,
            Some("azure-eventhub"),
        ),
        ("TRACE rdkafka::client: Starting metadata fetch", Some("kafka")),
        ("DEBUG ebb_scalers::kafka::client: librdkafka error: 1/1 brokers are down", Some("kafka")),
        ("TRACE get_metrics{scaledobject=prom-ok-basic}: h2::codec: x", Some("prometheus")),
        ("TRACE Connection{peer=Server}:poll: h2::proto::streams: x", None),
    ] {
        assert_eq!(owner(line), want, "{line}");
    }
}

/// The first `sig=` followed by a value that is not a redaction marker, if any.
fn unredacted_sig(text: &str) -> Option<usize> {
    let lower = text.to_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("sig=") {
        let at = from + i;
        let value: String = text[at + 4..].chars().take_while(|c| !matches!(c, '&' | ' ' | '"' | ')' | ',')).collect();
        let redacted = value.is_empty() || value.to_lowercase().contains("redacted") || value.chars().all(|c| c == '*');
        if !redacted && value.len() >= 8 {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

/// `text` around the first secret form found in it, shortened.
fn excerpt(text: &str, secrets: &Secrets) -> String {
    let at = secrets.forms.iter().find_map(|(_, f)| text.find(f.as_str())).unwrap_or(0);
    text.chars().skip(text[..at].chars().count().saturating_sub(120)).take(280).collect()
}
