//! The `k8s` feature end to end against a wire-level double of the Kubernetes API
//! ([`KubeDouble`]), through the production kube clients:
//! - `authenticationRef`: a KEDA-like client → ebb's gRPC server → [`ebb::k8s::KubeAuthRefs`],
//!   and ebb's Service Bus client → the Service Bus double (`common::servicebus`) with the
//!   connection string that only the Secret holds;
//! - `policy: drain` reading the scale target's ready replicas (issue 16's queue+R mode) through
//!   [`ebb::k8s::KubeReadyReplicas`]: ScaledObject → Deployment → `status.readyReplicas`.
#![cfg(feature = "k8s")]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use common::ebb::{assert_status, gauge, so_owned, start_ebb_with_opts};
use common::servicebus::ServiceBusDouble;
use common::within;
use ebb::k8s::KubeAuthRefs;
use ebb::proto::ScaledObjectRef;
use ebb::server::ServeOptions;
use serde_json::{Value, json};
use tonic::Code;

const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Objects the double serves, by (namespace, name).
#[derive(Default)]
struct Objects {
    trigger_auths: HashMap<(String, String), Value>,
    secrets: HashMap<(String, String), HashMap<String, String>>,
    /// ScaledObject → its `spec.scaleTargetRef`.
    scaled_objects: HashMap<(String, String), Value>,
    /// Deployment → `status.readyReplicas` (`None`: the field absent, as with no pod ready).
    deployments: HashMap<(String, String), Option<u32>>,
}

/// A wire-level double of the Kubernetes API: answers the two GETs `KubeAuthRefs` makes as the
/// API server does (objects as JSON, a `Status` body with 404 otherwise) and counts requests.
struct KubeDouble {
    url: String,
    objects: Arc<Mutex<Objects>>,
    requests: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct DoubleState {
    objects: Arc<Mutex<Objects>>,
    requests: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<String>>>,
}

fn not_found(kind: &str, name: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("{kind} \"{name}\" not found"),
        "reason": "NotFound",
        "details": { "name": name, "kind": kind },
        "code": 404
    });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

async fn get_trigger_auth(State(s): State<DoubleState>, Path((ns, name)): Path<(String, String)>) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    s.log.lock().unwrap().push(format!("triggerauthentications {ns}/{name}"));
    let objects = s.objects.lock().unwrap();
    let Some(spec) = objects.trigger_auths.get(&(ns.clone(), name.clone())) else {
        return not_found("triggerauthentications.keda.sh", &name);
    };
    axum::Json(json!({
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": { "name": name, "namespace": ns, "uid": "0b0e5f1c-0000-4000-8000-000000000001", "resourceVersion": "1" },
        "spec": spec
    }))
    .into_response()
}

async fn get_secret(State(s): State<DoubleState>, Path((ns, name)): Path<(String, String)>) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    s.log.lock().unwrap().push(format!("secrets {ns}/{name}"));
    let objects = s.objects.lock().unwrap();
    let Some(data) = objects.secrets.get(&(ns.clone(), name.clone())) else {
        return not_found("secrets", &name);
    };
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(base64::engine::general_purpose::STANDARD.encode(v))))
        .collect();
    axum::Json(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name, "namespace": ns, "resourceVersion": "1" },
        "type": "Opaque",
        "data": data
    }))
    .into_response()
}

async fn get_scaled_object(State(s): State<DoubleState>, Path((ns, name)): Path<(String, String)>) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    s.log.lock().unwrap().push(format!("scaledobjects {ns}/{name}"));
    let objects = s.objects.lock().unwrap();
    let Some(target) = objects.scaled_objects.get(&(ns.clone(), name.clone())) else {
        return not_found("scaledobjects.keda.sh", &name);
    };
    axum::Json(json!({
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": { "name": name, "namespace": ns, "uid": "0b0e5f1c-0000-4000-8000-000000000002", "resourceVersion": "1" },
        "spec": { "scaleTargetRef": target, "triggers": [] }
    }))
    .into_response()
}

async fn get_deployment(State(s): State<DoubleState>, Path((ns, name)): Path<(String, String)>) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    s.log.lock().unwrap().push(format!("deployments {ns}/{name}"));
    let objects = s.objects.lock().unwrap();
    let Some(ready) = objects.deployments.get(&(ns.clone(), name.clone())) else {
        return not_found("deployments.apps", &name);
    };
    let mut status = json!({ "observedGeneration": 1, "replicas": 10 });
    if let Some(n) = ready {
        status["readyReplicas"] = json!(n);
    }
    axum::Json(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": ns, "resourceVersion": "1" },
        "spec": { "replicas": 10 },
        "status": status
    }))
    .into_response()
}

impl KubeDouble {
    async fn start() -> KubeDouble {
        let state = DoubleState { objects: Arc::default(), requests: Arc::default(), log: Arc::default() };
        let app = axum::Router::new()
            .route(
                "/apis/keda.sh/v1alpha1/namespaces/{ns}/triggerauthentications/{name}",
                axum::routing::get(get_trigger_auth),
            )
            .route("/api/v1/namespaces/{ns}/secrets/{name}", axum::routing::get(get_secret))
            .route("/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects/{name}", axum::routing::get(get_scaled_object))
            .route("/apis/apps/v1/namespaces/{ns}/deployments/{name}", axum::routing::get(get_deployment))
            .fallback({
                let s = state.clone();
                move |uri: axum::http::Uri| {
                    let s = s.clone();
                    async move {
                        s.requests.fetch_add(1, Ordering::SeqCst);
                        s.log.lock().unwrap().push(format!("other {uri}"));
                        not_found("unknown", uri.path())
                    }
                }
            })
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        KubeDouble {
            url: format!("http://{addr}"),
            objects: state.objects,
            requests: state.requests,
            log: state.log,
            task,
        }
    }

    fn add_trigger_auth(&self, ns: &str, name: &str, spec: Value) {
        self.objects.lock().unwrap().trigger_auths.insert((ns.into(), name.into()), spec);
    }

    fn add_secret(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        let data = data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.objects.lock().unwrap().secrets.insert((ns.into(), name.into()), data);
    }

    fn add_scaled_object(&self, ns: &str, name: &str, target: Value) {
        self.objects.lock().unwrap().scaled_objects.insert((ns.into(), name.into()), target);
    }

    fn set_deployment(&self, ns: &str, name: &str, ready: Option<u32>) {
        self.objects.lock().unwrap().deployments.insert((ns.into(), name.into()), ready);
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// A kube client for this double (plain http, default namespace `default`).
    fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url.parse().expect("double url"));
        config.default_namespace = "default".into();
        kube::Client::try_from(config).expect("kube client")
    }
}

/// Starts ebb resolving `authenticationRef` against `kube`, for every namespace, believing the
/// caller's namespace (as behind the chart's NetworkPolicy).
async fn start_ebb(kube: &KubeDouble) -> (ebb::server::Server, common::ebb::Keda) {
    start_ebb_access(kube, common::ebb::open_access()).await
}

async fn start_ebb_access(kube: &KubeDouble, access: ebb::access::Access) -> (ebb::server::Server, common::ebb::Keda) {
    let resolver = Arc::new(KubeAuthRefs::new(kube.client()));
    let engine = ebb::engine::EngineConfig { access, ..Default::default() };
    start_ebb_with_opts(ServeOptions { auth_refs: Some(resolver), engine, ..ServeOptions::default() }).await
}

/// Issue 13: a caller naming another team's namespace reads nothing of it. The namespace must be
/// bound to `authenticationRef` and the caller's namespace believable (mTLS, or the operator's
/// word that a NetworkPolicy admits only KEDA); otherwise PERMISSION_DENIED, before any read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_namespaces_and_unbelievable_callers_read_nothing() {
    within(TEST_LIMIT, "other_namespaces_and_unbelievable_callers_read_nothing", async {
        let kube = KubeDouble::start().await;
        kube.add_trigger_auth("team-b", "sb-auth", secret_target_ref("connection", "sb", "connection"));
        kube.add_secret(
            "team-b",
            "sb",
            &[(
                "connection",
                "Endpoint=sb://team-b.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=team-b-secret",
            )],
        );
        let bound_a = |trust: bool| {
            let yaml =
                format!("trustCallerNamespace: {trust}\nbindings: [{{namespaces: [team-a], authenticationRef: true}}]");
            ebb::access::Access { policy: serde_saphyr::from_str(&yaml).unwrap(), ..Default::default() }
        };
        let mut team_b = so_owned("steal", &sb_metadata("sb-auth", &[]));
        team_b.namespace = "team-b".into();
        for (access, needle) in [(bound_a(true), "team-b"), (bound_a(false), "trustCallerNamespace")] {
            let (srv, keda) = start_ebb_access(&kube, access).await;
            assert_status(keda.get_metric_spec(&team_b).await, Code::PermissionDenied, needle, "team-b");
            srv.shutdown().await;
        }
        assert!(kube.log().is_empty(), "nothing was read: {:?}", kube.log());
    })
    .await;
}

/// `azure-servicebus` trigger metadata with no connection of its own, only `authenticationRef`.
fn sb_metadata(auth_ref: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut md: Vec<(String, String)> = vec![
        ("scalerAddress".into(), "ebb.keda.svc.cluster.local:9090".into()),
        ("scalerType".into(), "azure-servicebus".into()),
        ("queueName".into(), "orders".into()),
        ("pollingInterval".into(), "1".into()),
        ("authenticationRef".into(), auth_ref.into()),
    ];
    for (k, v) in extra {
        md.retain(|(key, _)| key != k);
        md.push((k.to_string(), v.to_string()));
    }
    md
}

fn secret_target_ref(parameter: &str, secret: &str, key: &str) -> Value {
    json!({ "secretTargetRef": [ { "parameter": parameter, "name": secret, "key": key } ] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_from_trigger_authentication_secret_and_cache() {
    within(TEST_LIMIT, "connection_from_trigger_authentication_secret_and_cache", async {
        let sb = ServiceBusDouble::start().await;
        let kube = KubeDouble::start().await;
        kube.add_trigger_auth("default", "sb-auth", secret_target_ref("connection", "sb", "connection"));
        kube.add_secret("default", "sb", &[("connection", &sb.connection_string()), ("unused", "x")]);
        let (srv, keda) = start_ebb(&kube).await;

        // (a) The connection string reaches the Service Bus client only through the Secret.
        let c = keda.cycle(&so_owned("orders-consumer", &sb_metadata("sb-auth", &[]))).await.expect("cycle");
        assert_eq!(c.value(), 42.0, "the double's ActiveMessageCount");
        assert!(sb.requests() >= 1);
        let log = kube.log();
        assert_eq!(log, vec!["triggerauthentications default/sb-auth", "secrets default/sb"], "{log:?}");

        // (d) Another ScaledObject with the same authenticationRef within 60 s: no new requests.
        let before = kube.requests();
        let md = sb_metadata("sb-auth", &[("messageCount", "7")]);
        let c = keda.cycle(&so_owned("orders-other", &md)).await.expect("second cycle");
        assert_eq!(c.spec.metric_specs[0].target_size, 7);
        assert_eq!(c.value(), 42.0);
        assert_eq!(kube.requests(), before, "cached: {:?}", kube.log());
        srv.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_objects_are_invalid_argument_naming_authentication_ref() {
    within(TEST_LIMIT, "missing_objects_are_invalid_argument_naming_authentication_ref", async {
        let kube = KubeDouble::start().await;
        kube.add_trigger_auth("default", "no-secret", secret_target_ref("connection", "gone", "connection"));
        let (srv, keda) = start_ebb(&kube).await;

        // (b) No such TriggerAuthentication.
        let s = assert_status(
            keda.get_metric_spec(&so_owned("a", &sb_metadata("nope", &[]))).await,
            Code::InvalidArgument,
            "authenticationRef",
            "missing TriggerAuthentication",
        );
        assert!(s.message().contains("TriggerAuthentication default/nope not found"), "{}", s.message());

        // Its Secret missing.
        let s = assert_status(
            keda.get_metric_spec(&so_owned("b", &sb_metadata("no-secret", &[]))).await,
            Code::InvalidArgument,
            "authenticationRef",
            "missing secret",
        );
        assert!(s.message().contains("secret default/gone not found"), "{}", s.message());
        srv.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_never_appear_in_errors() {
    within(TEST_LIMIT, "secret_values_never_appear_in_errors", async {
        const SECRET: &str = "hunter2-s3cr3t-value";
        let sb = ServiceBusDouble::start().await;
        let kube = KubeDouble::start().await;
        // A key the TriggerAuthentication names is missing; the Secret's other values are secret.
        kube.add_trigger_auth("default", "wrong-key", secret_target_ref("connection", "sb", "connection"));
        kube.add_secret("default", "sb", &[("other", SECRET)]);
        // A value that is not a connection string.
        kube.add_trigger_auth("default", "garbage", secret_target_ref("connection", "garbage", "connection"));
        kube.add_secret("default", "garbage", &[("connection", SECRET)]);
        // A connection string with a key the Service Bus double rejects.
        let bad_key = base64::engine::general_purpose::STANDARD.encode(SECRET);
        kube.add_trigger_auth("default", "bad-key", secret_target_ref("connection", "bad", "connection"));
        kube.add_secret("default", "bad", &[("connection", &sb.connection_string_with(&bad_key))]);
        let (srv, keda) = start_ebb(&kube).await;

        let s = assert_status(
            keda.get_metric_spec(&so_owned("a", &sb_metadata("wrong-key", &[]))).await,
            Code::InvalidArgument,
            "authenticationRef",
            "missing key",
        );
        assert!(s.message().contains("secret default/sb: key connection missing"), "{}", s.message());
        let mut messages = vec![s.message().to_string()];

        let garbage = so_owned("b", &sb_metadata("garbage", &[]));
        match keda.cycle(&garbage).await {
            Ok(c) => panic!("a garbage connection string scaled: {c:?}"),
            Err(s) => messages.push(s.message().to_string()),
        }

        // The bad key fails at the source; collect every answer over a few cycles.
        let bad = so_owned("c", &sb_metadata("bad-key", &[]));
        for _ in 0..3 {
            match keda.cycle(&bad).await {
                Ok(c) => panic!("a rejected key scaled: {c:?}"),
                Err(s) => messages.push(s.message().to_string()),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }

        for m in &messages {
            assert!(!m.contains(SECRET) && !m.contains(&bad_key), "a secret value leaked: {m}");
        }
        srv.shutdown().await;
    })
    .await;
}

/// Issue 16, queue+R: with `serve --kube`, a `policy: drain` trigger on a queue (Service Bus:
/// backlog only) uses the scale target's ready replicas as the Kubernetes API reports them, and
/// follows them when they change; a namespace the access policy does not bind to
/// `readyReplicas` gets ebb's own estimate, and nothing of it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_reads_the_scale_targets_ready_replicas() {
    within(TEST_LIMIT, "drain_reads_the_scale_targets_ready_replicas", async {
        let sb = ServiceBusDouble::start().await;
        let kube = KubeDouble::start().await;
        kube.add_scaled_object("default", "orders", json!({ "name": "orders-worker" }));
        kube.set_deployment("default", "orders-worker", Some(7));
        kube.add_scaled_object("other", "orders", json!({ "name": "orders-worker" }));
        kube.set_deployment("other", "orders-worker", Some(7));

        let ready = Arc::new(ebb::k8s::KubeReadyReplicas::new(kube.client()));
        let refresh = ready.spawn_refresh();
        let yaml = "trustCallerNamespace: true\nbindings: [{namespaces: [default], secrets: ['*'], readyReplicas: true}, \
                    {namespaces: [other], secrets: ['*']}]";
        let access = ebb::access::Access { policy: serde_saphyr::from_str(yaml).unwrap(), ..Default::default() };
        let engine = ebb::engine::EngineConfig { access, ..Default::default() };
        let (srv, keda) = start_ebb_with_opts(ServeOptions {
            ready_replicas: Some(ready.clone()),
            engine,
            ..ServeOptions::default()
        })
        .await;
        let connection = sb.connection_string();
        let md: Vec<(String, String)> = [
            ("scalerType", "azure-servicebus"),
            ("queueName", "orders"),
            ("connection", connection.as_str()),
            ("pollingInterval", "1"),
            ("outputMode", "replicas"),
            ("policy", "drain"),
            ("throughputPerReplica", "10"),
            // ebb's own estimate is then the count it asks for, at least 1 with 42 messages
            // waiting: 0 can only come from the Deployment.
            ("startupSeconds", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let so = so_owned("orders", &md);
        keda.cycle(&so).await.expect("first cycle");
        let other = ScaledObjectRef { namespace: "other".into(), ..so.clone() };
        keda.cycle(&other).await.expect("first cycle, other namespace");

        // Within a refresh (5 s) and a poll, ebb's R̂ is what the Deployment reports.
        let wait_for = |want: f64| {
            let addr = srv.http_addr;
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(15);
                loop {
                    let got = gauge(addr, "ebb_scaledobject_ready_replicas_estimate", &[("namespace", "default"), ("scaledobject", "orders")]).await;
                    if got == Some(want) {
                        return;
                    }
                    assert!(std::time::Instant::now() < deadline, "R̂ {got:?}, want {want}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        wait_for(7.0).await;
        // Pods lost: the count read follows.
        kube.set_deployment("default", "orders-worker", Some(3));
        wait_for(3.0).await;
        // No pod ready: the API server omits the field.
        kube.set_deployment("default", "orders-worker", None);
        wait_for(0.0).await;

        // The unbound namespace runs on ebb's estimate (≥ 1, never the Deployment's 7).
        let other = gauge(srv.http_addr, "ebb_scaledobject_ready_replicas_estimate", &[("namespace", "other"), ("scaledobject", "orders")]).await;
        assert!(other.is_some_and(|r| r >= 1.0 && r != 7.0), "other namespace R̂ {other:?}");
        let log = kube.log();
        assert!(log.iter().any(|l| l == "scaledobjects default/orders"), "{log:?}");
        assert!(log.iter().any(|l| l == "deployments default/orders-worker"), "{log:?}");
        assert!(!log.iter().any(|l| l.contains("other/")), "an unbound namespace was read: {log:?}");
        refresh.abort();
        srv.shutdown().await;
    })
    .await;
}
