//! No secret leaves ebb: every log line (TRACE, all targets, span fields included), every gRPC
//! error (message, details and metadata), every `/metrics` line and every `ebb check` output
//! produced while driving each scaler path that carries a secret, succeeding and failing, is
//! scanned for the secrets used (and their percent-encoded and base64 forms).
//!
//! Sources: the Service Bus and Event Hubs wire doubles (SAS keys), a real Azurite (account
//! keys, SAS connection strings, `connectionRef` files), a Prometheus-shaped axum server that
//! checks bearer, basic and header credentials, an `authenticationRef` resolver, and (feature
//! `kafka`) SASL credentials against an unreachable broker and a tansu broker without SASL.
//!
//! Every wait is bounded: the test by [`TEST_LIMIT`], each RPC by KEDA's 3 s deadline, each CLI
//! run by [`CLI_LIMIT`].

// Starts real servers (scripts/install-services.sh): built with `--features integration`,
// which scripts/test.sh (and so CI) turns on.
#![cfg(feature = "integration")]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

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

/// (ScaledObject name, trigger metadata, whether the path succeeds)
type Case = (&'static str, Vec<(String, String)>, bool);

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

async fn start_prom(auth: PromAuth) -> (String, tokio::task::JoinHandle<()>) {
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
    (format!("http://{addr}"), task)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_in_logs_errors_metrics_or_cli() {
    let logs = captured_logs();
    let started = std::time::Instant::now();
    within(TEST_LIMIT, "no_secret_in_logs_errors_metrics_or_cli", async {
        let mut secrets = Secrets::default();
        let seen: Shared = Arc::default();

        // --- the sources -------------------------------------------------------------------
        let az = Azurite::start();
        az.create_queue("orders").await;
        az.put_messages("orders", 2).await;
        az.create_container("gosdk").await;
        let sb = ServiceBusDouble::start().await;
        let eh = EventHubsDouble::start("telemetry", vec![(0, 9), (0, 4)]).await;
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
        let (prom_url, prom_task) = start_prom(prom_auth.clone()).await;
        let ref_token = secret("authref-bearer");
        let prom_ref_server = {
            let (url, task) = start_prom(PromAuth { bearer: ref_token.clone(), ..prom_auth.clone() }).await;
            (url, task)
        };

        // `connectionRef` files in a secrets directory.
        let secrets_dir = tempfile::tempdir().expect("temp dir");
        let ref_wrong_key = secret_base64_key("queue-ref");
        std::fs::write(secrets_dir.path().join("storage-good"), az.connection_string()).unwrap();
        std::fs::write(secrets_dir.path().join("storage-wrong"), connection_string(az.queue_port, &ref_wrong_key))
            .unwrap();

        let opts = ServeOptions {
            auth_refs: Some(Arc::new(Resolver { token: ref_token.clone() })),
            engine: ebb::engine::EngineConfig { access: common::ebb::open_access(), ..Default::default() },
            scalers: ebb_scalers::Settings { secrets_dir: secrets_dir.path().to_path_buf(), ..Default::default() },
            ..ServeOptions::default()
        };
        let (srv, keda) = start_ebb_with_opts(opts).await;
        let closed = closed_url(); // http://127.0.0.1:<closed port>
        let closed_host = closed.trim_start_matches("http://").to_string();

        // --- Service Bus: SAS key in the connection string ------------------------------------
        secrets.add("Service Bus double key", common::servicebus::KEY);
        let sb_wrong = secret("sb-key");
        let sb_unreach = secret("sb-key-unreachable");
        let sb_badurl = secret("sb-key-badurl");
        let sb_badmd = secret("sb-key-badmd");
        for (w, v) in [("sb wrong", &sb_wrong), ("sb unreachable", &sb_unreach), ("sb bad url", &sb_badurl)] {
            secrets.add(w, v);
        }
        secrets.add("sb bad metadata", &sb_badmd);
        let sb_md = |conn: &str, extra: &[(&str, &str)]| {
            let mut m =
                md(&[("scalerType", "azure-servicebus"), ("pollingInterval", "1"), ("connectionFromEnv", conn)]);
            m.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            m
        };
        let sb_unreach_conn = format!(
            "Endpoint=sb://{closed_host}/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={sb_unreach}"
        );
        let sb_bad_url_conn = format!("Endpoint=not a url;SharedAccessKeyName=Root;SharedAccessKey={sb_badurl}");
        let sb_badmd_conn = format!("Endpoint=sb://{}/;SharedAccessKey={sb_badmd}", sb.addr);
        let sb_cases: Vec<Case> = vec![
            ("sb-ok-queue", sb_md(&sb.connection_string(), &[("queueName", "orders")]), true),
            (
                "sb-ok-subscription",
                sb_md(&sb.connection_string(), &[("topicName", "events"), ("subscriptionName", "billing")]),
                true,
            ),
            ("sb-ok-regex", sb_md(&sb.connection_string(), &[("queueName", "orders-.*"), ("useRegex", "true")]), true),
            ("sb-wrong-key", sb_md(&sb.connection_string_with(&sb_wrong), &[("queueName", "orders")]), false),
            ("sb-unreachable", sb_md(&sb_unreach_conn, &[("queueName", "orders")]), false),
            ("sb-bad-url", sb_md(&sb_bad_url_conn, &[("queueName", "orders")]), false),
            ("sb-no-key-name", sb_md(&sb_badmd_conn, &[("queueName", "orders")]), false),
            (
                "sb-queue-and-topic",
                sb_md(&sb.connection_string_with(&sb_badmd), &[("queueName", "orders"), ("topicName", "t")]),
                false,
            ),
            (
                "sb-missing-sub",
                sb_md(&sb.connection_string(), &[("topicName", "events"), ("subscriptionName", "missing")]),
                false,
            ),
        ];

        // --- Event Hubs: SAS key + storage account key ------------------------------------
        secrets.add("Event Hubs double key", common::eventhubs::KEY);
        secrets.add("Azurite dev account key", DEV_KEY);
        let eh_wrong = secret("eh-key");
        let st_wrong = secret_base64_key("eh-storage");
        let st_unreach = secret_base64_key("eh-storage-unreachable");
        let st_invalid = format!("{}!!not-base64", secret("eh-storage-invalid"));
        for (w, v) in [
            ("eh wrong key", &eh_wrong),
            ("eh storage wrong key", &st_wrong),
            ("eh storage unreachable key", &st_unreach),
            ("eh storage invalid key", &st_invalid),
        ] {
            secrets.add(w, v);
        }
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
        let eh_cases: Vec<Case> = vec![
            ("eh-ok", eh_md(&eh.connection_string(), &good_blob), true),
            ("eh-wrong-hub-key", eh_md(&eh.connection_string_with(&eh_wrong), &good_blob), false),
            ("eh-wrong-storage-key", eh_md(&eh.connection_string(), &blob_cs(&az.blob_endpoint(), &st_wrong)), false),
            (
                "eh-unreachable-storage",
                eh_md(&eh.connection_string(), &blob_cs(&format!("{closed}/{DEV_ACCOUNT}"), &st_unreach)),
                false,
            ),
            (
                "eh-invalid-storage-key",
                eh_md(&eh.connection_string(), &blob_cs(&az.blob_endpoint(), &st_invalid)),
                false,
            ),
        ];

        // --- Azure Queue: account key, SAS, connectionRef ---------------------------------
        let q_wrong = secret_base64_key("queue-key");
        let q_unreach = secret_base64_key("queue-key-unreachable");
        let q_invalid = format!("{}!!not-base64", secret("queue-key-invalid"));
        let q_bad_sig = secret("queue-sas-sig");
        let q_unreach_sig = secret("queue-sas-sig-unreachable");
        for (w, v) in [
            ("queue wrong key", &q_wrong),
            ("queue unreachable key", &q_unreach),
            ("queue invalid key", &q_invalid),
            ("queue bogus SAS sig", &q_bad_sig),
            ("queue unreachable SAS sig", &q_unreach_sig),
            ("queue connectionRef wrong key", &ref_wrong_key),
        ] {
            secrets.add(w, v);
        }
        let key = AccountKey::from_base64(DEV_KEY).unwrap();
        let expiry = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
        let good_sas = queue_service_sas(DEV_ACCOUNT, &key, "orders", "r", expiry);
        // The signature of a SAS handed over by the user is a secret too.
        let good_sig = good_sas
            .split('&')
            .find_map(|p| p.strip_prefix("sig="))
            .map(common::servicebus::percent_decode)
            .expect("sig in SAS");
        secrets.add("queue valid SAS sig", &good_sig);
        let sas_cs = |endpoint: &str, sig: &str| {
            let sas: String =
                good_sas
                    .split('&')
                    .map(|p| {
                        if p.starts_with("sig=") { format!("sig={}", percent_encode(sig, true)) } else { p.to_string() }
                    })
                    .collect::<Vec<_>>()
                    .join("&");
            format!("QueueEndpoint={endpoint};SharedAccessSignature={sas}")
        };
        let q_md = |conn_key: &str, conn: &str, queue: &str| {
            md(&[("scalerType", "azure-queue"), ("pollingInterval", "1"), (conn_key, conn), ("queueName", queue)])
        };
        let q_endpoint = az.queue_endpoint();
        let q_cases: Vec<Case> = vec![
            ("queue-ok", q_md("connectionFromEnv", &az.connection_string(), "orders"), true),
            ("queue-ok-connection", q_md("connection", &az.connection_string(), "orders"), true),
            ("queue-ok-sas", q_md("connectionFromEnv", &sas_cs(&q_endpoint, &good_sig), "orders"), true),
            ("queue-ok-ref", q_md("connectionRef", "storage-good", "orders"), true),
            (
                "queue-wrong-key",
                q_md("connectionFromEnv", &connection_string(az.queue_port, &q_wrong), "orders"),
                false,
            ),
            ("queue-missing-queue", q_md("connectionFromEnv", &az.connection_string(), "nosuchqueue"), false),
            (
                "queue-unreachable",
                q_md("connectionFromEnv", &connection_string(free_port(), &q_unreach), "orders"),
                false,
            ),
            (
                "queue-invalid-key",
                q_md("connectionFromEnv", &connection_string(az.queue_port, &q_invalid), "orders"),
                false,
            ),
            ("queue-bogus-sas", q_md("connectionFromEnv", &sas_cs(&q_endpoint, &q_bad_sig), "orders"), false),
            (
                "queue-unreachable-sas",
                q_md("connectionFromEnv", &sas_cs(&format!("{closed}/{DEV_ACCOUNT}"), &q_unreach_sig), "orders"),
                false,
            ),
            ("queue-ref-wrong-key", q_md("connectionRef", "storage-wrong", "orders"), false),
            ("queue-ref-missing", q_md("connectionRef", "no-such-secret", "orders"), false),
        ];

        // --- Prometheus: bearer, basic, custom headers, authenticationRef ------------------
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
        for (w, v) in [
            ("prom wrong bearer", &p_wrong_bearer),
            ("prom unreachable bearer", &p_unreach),
            ("prom user-info password", &p_userinfo),
            ("prom malformed header value", &p_badheader),
            ("prom custom value with control char", &p_ctl),
            ("prom password without username", &p_nouser),
            ("prom wrong header", &p_wrong_header),
            ("prom custom auth value", &p_custom),
        ] {
            secrets.add(w, v);
        }
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
        let p_cases: Vec<Case> = vec![
            ("prom-ok-bearer", p_md(pu, &[("authModes", "bearer"), ("bearerToken", &prom_auth.bearer)]), true),
            (
                "prom-ok-bearer-fromenv",
                p_md(pu, &[("authModes", "bearer"), ("bearerTokenFromEnv", &prom_auth.bearer)]),
                true,
            ),
            (
                "prom-ok-basic",
                p_md(pu, &[("authModes", "basic"), ("username", basic_user), ("password", &basic_password)]),
                true,
            ),
            ("prom-ok-headers", p_md(pu, &[("customHeaders", &header_ok)]), true),
            (
                "prom-ok-custom",
                p_md(
                    pu,
                    &[
                        ("authModes", "custom"),
                        ("customAuthHeader", "x-api-key"),
                        ("customAuthValue", &prom_auth.header.1),
                    ],
                ),
                true,
            ),
            ("prom-ok-authref", p_md(&prom_ref_server.0, &[("authenticationRef", "prom-auth")]), true),
            ("prom-wrong-bearer", p_md(pu, &[("authModes", "bearer"), ("bearerToken", &p_wrong_bearer)]), false),
            (
                "prom-wrong-basic",
                p_md(pu, &[("authModes", "basic"), ("username", basic_user), ("password", &p_wrong_password)]),
                false,
            ),
            ("prom-wrong-header", p_md(pu, &[("customHeaders", &header_wrong)]), false),
            (
                "prom-wrong-custom",
                p_md(pu, &[("authModes", "custom"), ("customAuthHeader", "x-api-key"), ("customAuthValue", &p_custom)]),
                false,
            ),
            ("prom-unreachable", p_md(&closed, &[("authModes", "bearer"), ("bearerToken", &p_unreach)]), false),
            ("prom-userinfo-url", p_md(&userinfo_url, &[]), false),
            ("prom-malformed-headers", p_md(pu, &[("customHeaders", &header_bad)]), false),
            (
                "prom-custom-ctl-char",
                p_md(
                    pu,
                    &[("authModes", "custom"), ("customAuthHeader", "x-api-key"), ("customAuthValue", &ctl_value)],
                ),
                false,
            ),
            ("prom-basic-no-user", p_md(pu, &[("authModes", "basic"), ("password", &p_nouser)]), false),
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
                false,
            ),
            ("prom-authref-missing", p_md(&prom_ref_server.0, &[("authenticationRef", "nope")]), false),
        ];

        // --- Kafka: SASL credentials ------------------------------------------------------
        #[cfg(feature = "kafka")]
        let tansu = common::kafka::Tansu::start();
        #[cfg(feature = "kafka")]
        let k_cases: Vec<Case> = {
            let k_plain = secret("kafka-plain");
            let k_scram = secret("kafka-scram");
            let k_tansu = secret("kafka-tansu");
            let k_oauth = secret("kafka-oauth-client-secret");
            let k_nouser = secret("kafka-nouser");
            for (w, v) in [
                ("kafka sasl plaintext password", &k_plain),
                ("kafka scram password", &k_scram),
                ("kafka password vs tansu", &k_tansu),
                ("kafka oauth client secret", &k_oauth),
                ("kafka password without user", &k_nouser),
            ] {
                secrets.add(w, v);
            }
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
            vec![
                (
                    "kafka-plain-unreachable",
                    k_md(&unreachable, &[("sasl", "plaintext"), ("username", "u"), ("password", &k_plain)]),
                    false,
                ),
                (
                    "kafka-scram-unreachable",
                    k_md(&unreachable, &[("sasl", "scram_sha512"), ("username", "u"), ("password", &k_scram)]),
                    false,
                ),
                (
                    "kafka-plain-tansu",
                    k_md(&tansu.bootstrap(), &[("sasl", "plaintext"), ("username", "u"), ("password", &k_tansu)]),
                    false,
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
                    false,
                ),
                ("kafka-no-user", k_md(&unreachable, &[("sasl", "plaintext"), ("password", &k_nouser)]), false),
            ]
        };
        #[cfg(not(feature = "kafka"))]
        let k_cases: Vec<Case> = Vec::new();

        // --- drive every case over gRPC (groups concurrently) -----------------------------
        // Every ScaledObject at once: a Kafka poll against an unreachable broker takes ~9 s.
        let mut groups = tokio::task::JoinSet::new();
        for (cases, settle) in [
            (sb_cases.clone(), Duration::from_secs(8)),
            (eh_cases.clone(), Duration::from_secs(8)),
            (q_cases.clone(), Duration::from_secs(8)),
            (p_cases.clone(), Duration::from_secs(8)),
            (k_cases.clone(), Duration::from_secs(20)),
        ] {
            for (case, m, succeed) in cases {
                let keda = keda.clone();
                let seen = seen.clone();
                groups.spawn(async move {
                    let o = drive(&keda, &seen, case, &m, settle).await;
                    vec![(case, o, succeed)]
                });
            }
        }
        let mut driven = 0;
        while let Some(r) = groups.join_next().await {
            for (case, o, succeed) in r.expect("group task") {
                if case == "kafka-plain-tansu" {
                    // tansu speaks no SASL: whatever it answers, only the scan matters.
                } else if succeed {
                    expect_ok(&o, case);
                } else {
                    expect_err(&o, case);
                }
                driven += 1;
            }
        }

        // --- /metrics ------------------------------------------------------------------------
        let body = reqwest::get(format!("http://{}/metrics", srv.http_addr))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("body");
        assert!(body.contains("ebb_poll_errors_total") && body.contains("ebb_upstream_calls_total"), "{body}");
        seen.lock().unwrap().metrics.push(body);

        // --- ebb check -----------------------------------------------------------------------
        let arg = |k: &str, v: &str| format!("{k}={v}");
        let mut cli_cases: Vec<(&str, Vec<String>, Option<i32>, bool)> = vec![
            (
                "check sb ok",
                vec![
                    arg("scalerType", "azure-servicebus"),
                    arg("queueName", "orders"),
                    arg("connection", &sb.connection_string()),
                ],
                Some(0),
                false,
            ),
            (
                "check sb ok (json, json logs)",
                vec![
                    "--json".into(),
                    arg("scalerType", "azure-servicebus"),
                    arg("queueName", "orders"),
                    arg("connection", &sb.connection_string()),
                ],
                Some(0),
                true,
            ),
            (
                "check sb wrong key",
                vec![
                    arg("scalerType", "azure-servicebus"),
                    arg("queueName", "orders"),
                    arg("connection", &sb.connection_string_with(&sb_wrong)),
                ],
                Some(1),
                false,
            ),
            (
                "check sb wrong key (json)",
                vec![
                    "--json".into(),
                    arg("scalerType", "azure-servicebus"),
                    arg("queueName", "orders"),
                    arg("connection", &sb.connection_string_with(&sb_wrong)),
                ],
                Some(1),
                true,
            ),
            (
                "check sb bad metadata",
                vec![
                    arg("scalerType", "azure-servicebus"),
                    arg("queueName", "orders"),
                    arg("connection", &sb_badmd_conn),
                ],
                Some(2),
                false,
            ),
            (
                "check eh ok",
                eh_md(&eh.connection_string(), &good_blob).iter().map(|(k, v)| arg(k, v)).collect(),
                Some(0),
                false,
            ),
            (
                "check eh wrong storage key",
                eh_md(&eh.connection_string(), &blob_cs(&az.blob_endpoint(), &st_wrong))
                    .iter()
                    .map(|(k, v)| arg(k, v))
                    .collect(),
                Some(1),
                false,
            ),
            (
                "check queue ok",
                vec![
                    arg("scalerType", "azure-queue"),
                    arg("queueName", "orders"),
                    arg("connection", &az.connection_string()),
                ],
                Some(0),
                false,
            ),
            (
                "check queue ok sas",
                vec![
                    arg("scalerType", "azure-queue"),
                    arg("queueName", "orders"),
                    arg("connection", &sas_cs(&q_endpoint, &good_sig)),
                ],
                Some(0),
                false,
            ),
            (
                "check queue wrong key",
                vec![
                    arg("scalerType", "azure-queue"),
                    arg("queueName", "orders"),
                    arg("connection", &connection_string(az.queue_port, &q_wrong)),
                ],
                Some(1),
                false,
            ),
            (
                "check queue unreachable sas",
                vec![
                    arg("scalerType", "azure-queue"),
                    arg("queueName", "orders"),
                    arg("connection", &sas_cs(&format!("{closed}/{DEV_ACCOUNT}"), &q_unreach_sig)),
                ],
                Some(1),
                false,
            ),
            (
                "check queue invalid key",
                vec![
                    arg("scalerType", "azure-queue"),
                    arg("queueName", "orders"),
                    arg("connection", &connection_string(az.queue_port, &q_invalid)),
                ],
                Some(2),
                false,
            ),
            (
                "check prom bearer ok",
                p_md(pu, &[("authModes", "bearer"), ("bearerToken", &prom_auth.bearer)])
                    .iter()
                    .map(|(k, v)| arg(k, v))
                    .collect(),
                Some(0),
                false,
            ),
            (
                "check prom basic wrong",
                p_md(pu, &[("authModes", "basic"), ("username", basic_user), ("password", &p_wrong_password)])
                    .iter()
                    .map(|(k, v)| arg(k, v))
                    .collect(),
                Some(1),
                false,
            ),
            (
                "check prom unreachable",
                p_md(&closed, &[("customHeaders", &header_wrong)]).iter().map(|(k, v)| arg(k, v)).collect(),
                Some(1),
                false,
            ),
            (
                "check prom user-info url",
                p_md(&userinfo_url, &[]).iter().map(|(k, v)| arg(k, v)).collect(),
                Some(2),
                false,
            ),
            (
                "check prom malformed headers (json)",
                std::iter::once("--json".to_string())
                    .chain(p_md(pu, &[("customHeaders", &header_bad)]).iter().map(|(k, v)| arg(k, v)))
                    .collect(),
                Some(2),
                true,
            ),
        ];
        #[cfg(feature = "kafka")]
        for (case, m, _) in &k_cases {
            if *case == "kafka-plain-unreachable" || *case == "kafka-no-user" {
                let code = if *case == "kafka-no-user" { Some(2) } else { Some(1) };
                cli_cases.push((*case, m.iter().map(|(k, v)| arg(k, v)).collect(), code, false));
            }
        }
        let mut runs = tokio::task::JoinSet::new();
        for (case, args, want, json_logs) in cli_cases.drain(..) {
            runs.spawn(async move {
                let (code, text) = ebb_check(args, json_logs).await;
                (case, code, want, text)
            });
        }
        while let Some(r) = runs.join_next().await {
            let (case, code, want, text) = r.expect("cli task");
            assert_eq!(code, want, "{case}: exit code; output:\n{text}");
            let mut g = seen.lock().unwrap();
            g.outcomes.push((case.to_string(), format!("exit {code:?}")));
            g.cli.push((case.to_string(), text));
        }

        srv.shutdown().await;
        prom_task.abort();
        prom_ref_server.1.abort();

        // --- the scan ------------------------------------------------------------------------
        let log_text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        let log_lines: Vec<&str> = log_text.lines().collect();
        // To read what was scanned: EBB_SECRETS_LOG_DUMP=<file>.
        if let Some(path) = std::env::var_os("EBB_SECRETS_LOG_DUMP") {
            std::fs::write(path, &log_text).expect("writing the log dump");
        }
        let seen = seen.lock().unwrap();
        let metric_lines: usize = seen.metrics.iter().map(|m| m.lines().count()).sum();
        let cli_lines: usize = seen.cli.iter().map(|(_, t)| t.lines().count()).sum();
        for (case, outcome) in &seen.outcomes {
            eprintln!("{case}: {outcome}");
        }
        eprintln!(
            "scanned {} log lines ({} bytes), {} gRPC errors, {} gRPC answers, {} /metrics lines, {} ebb check runs \
             ({cli_lines} lines), {} secret forms, {driven} ScaledObjects driven, in {:?}",
            log_lines.len(),
            log_text.len(),
            seen.errors.len(),
            seen.answers.len(),
            metric_lines,
            seen.cli.len(),
            secrets.forms.len(),
            started.elapsed()
        );

        // The capture really captured: ebb's own lines, span fields, the failing and the
        // succeeding polls, and the HTTP clients underneath.
        for marker in [
            "new ScaledObject trigger",
            "polling new source",
            "poll failed",
            "poll ok",
            "poll{scaler=",
            "scaler=\"azure-servicebus\"",
            "scaler=\"azure-eventhub\"",
            "scaler=\"azure-queue\"",
            "scaler=\"prometheus\"",
        ] {
            assert!(log_text.contains(marker), "captured log lacks {marker:?}; {} lines captured", log_lines.len());
        }
        assert!(log_lines.len() > 100, "too few log lines captured: {}", log_lines.len());
        assert!(seen.errors.len() >= 20, "too few gRPC errors seen: {}", seen.errors.len());
        assert!(
            seen.cli.iter().any(|(_, t)| t.contains("TRACE") || t.contains("\"level\":\"TRACE\"")),
            "ebb check ran with RUST_LOG=trace but logged nothing at TRACE"
        );

        // The scanner finds what it looks for, in every form.
        for probe in [
            format!("x {} y", prom_auth.bearer),
            format!("x={}&", percent_encode(&basic_password, true)),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{basic_user}:{basic_password}"))
            ),
            format!("{{\"k\":{}}}", serde_json::to_string(DEV_KEY).unwrap()),
            format!("sig={}&se=1", percent_encode(&good_sig, true)),
        ] {
            assert!(!secrets.leaks(&probe).is_empty() || unredacted_sig(&probe).is_some(), "scanner misses {probe}");
        }
        assert!(
            unredacted_sig("a?sig=REDACTED&sp=r").is_none() && unredacted_sig("a?sig=AbCdEf0123456789%3D&").is_some()
        );

        let mut leaks = Vec::new();
        let mut check = |kind: &str, text: &str| {
            for what in secrets.leaks(text) {
                leaks.push(format!("{kind}: {what} in: {}", excerpt(text, &secrets)));
            }
            // A signature on the wire (a SAS `sig=` or a SharedAccessSignature) is a credential
            // valid until its expiry, whoever computed it.
            if let Some(i) = unredacted_sig(text) {
                let around: String = text[i..].chars().take(120).collect();
                leaks.push(format!("{kind}: an unredacted sig= in: {around}"));
            }
        };
        for line in &log_lines {
            check("log line", line);
        }
        for e in &seen.errors {
            check("gRPC error", e);
        }
        for a in &seen.answers {
            check("gRPC answer", a);
        }
        for m in &seen.metrics {
            for line in m.lines() {
                check("/metrics", line);
            }
        }
        for (case, t) in &seen.cli {
            for line in t.lines() {
                check(&format!("ebb check ({case})"), line);
            }
        }
        assert!(leaks.is_empty(), "{} leaks:\n{}", leaks.len(), leaks.join("\n"));
    })
    .await;
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
