//! Issue 13: trigger metadata never steers ebb's own identity, named secrets or reads.
//!
//! `ebb serve` runs as a child process with a managed identity served by a local identity
//! endpoint (`IDENTITY_ENDPOINT`/`IDENTITY_HEADER`, the App Service / Container Apps protocol),
//! Azure's service hosts played behind an HTTPS proxy with a test CA (`HTTPS_PROXY`,
//! `SSL_CERT_FILE`; see `common/azure_front.rs`: Service Bus is a wire double of its
//! management API, Azure Monitor of the Prometheus query API), and an attacker's recording
//! listener. Every exfiltration attempt of the issue, plus host tricks, is refused with
//! INVALID_ARGUMENT or PERMISSION_DENIED naming the key or the policy, and neither the listener
//! nor any unapproved host ever receives a token; approved hosts still get the token for their
//! own audience, over gRPC and over the Container Apps bridge, including a private suffix the
//! operator enabled.

mod common;

use std::time::Duration;

use common::azure_front::{AzureFront, IDENTITY_SECRET, INTERNAL_PAGE_MARKER, IdentityEndpoint, Recorder, token_for};
use common::ebb::{Keda, ServeProcess, assert_status};
use ebb::proto::ScaledObjectRef;
use tonic::Code;

const CONFIG: &str = r#"
scaledObjects:
  - namespace: orders
    name: bridge-orders
    metadata:
      scalerType: azure-servicebus
      namespace: contoso-prod
      queueName: orders
access:
  bindings:
    - namespaces: ["orders"]
      identity:
        - {service: servicebus, host: "*.servicebus.windows.net", entity: "orders*"}
        - {service: servicebus, host: "*.sb.stack.test"}
        - {service: monitor, host: "*.prometheus.monitor.azure.com"}
      secrets: ["orders-sb"]
    # Everything a binding can grant: what is refused below is refused by the host and audience
    # rules, not by a missing binding.
    - namespaces: ["attacker"]
      identity:
        - {service: servicebus, host: "*", entity: "*"}
        - {service: storage, host: "*", entity: "*"}
        - {service: monitor, host: "*"}
"#;

fn so(namespace: &str, name: &str, md: &[(&str, &str)]) -> ScaledObjectRef {
    ScaledObjectRef {
        namespace: namespace.into(),
        name: name.into(),
        scaler_metadata: md.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

struct World {
    identity: IdentityEndpoint,
    front: AzureFront,
    recorder: Recorder,
    ebb: ServeProcess,
    keda: Keda,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let identity = IdentityEndpoint::start().await;
    let front = AzureFront::start(&["servicebus.windows.net", "sb.stack.test"]).await;
    let recorder = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ebb.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    // The platform's own Service Bus connection, pointing at the recorder: whoever may use it
    // reads the recorder (a stand-in for any secret ebb holds).
    let platform = format!("Endpoint=sb://{}/;SharedAccessKeyName=root;SharedAccessKey=platform-key", recorder.addr);
    std::fs::write(secrets.join("platform-sb"), &platform).unwrap();
    let ca = front.ca_file.display().to_string();
    let ebb = ServeProcess::start_with_env(
        &[
            "--config",
            config.to_str().unwrap(),
            "--secrets-dir",
            secrets.to_str().unwrap(),
            "--azure-private-suffix",
            "servicebus=sb.stack.test",
            "--min-polling-interval",
            "0.2",
        ],
        "info",
        &[
            ("IDENTITY_ENDPOINT", identity.url.as_str()),
            ("IDENTITY_HEADER", IDENTITY_SECRET),
            ("HTTPS_PROXY", front.proxy_url.as_str()),
            ("SSL_CERT_FILE", ca.as_str()),
        ],
    )
    .await;
    let keda = Keda::from_channel(ebb.channel().await);
    World { identity, front, recorder, ebb, keda, _dir: dir }
}

/// GetMetricSpec then GetMetrics, retried while the first poll is pending (bounded).
async fn value(keda: &Keda, so: &ScaledObjectRef) -> Result<f64, tonic::Status> {
    let spec = keda.get_metric_spec(so).await?;
    let name = spec.metric_specs[0].metric_name.clone();
    let mut last = None;
    for _ in 0..50 {
        match keda.get_metrics(so, &name).await {
            Ok(m) => return Ok(m.metric_values[0].metric_value_float),
            Err(s) if s.code() == Code::Unavailable => last = Some(s),
            Err(s) => return Err(s),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_never_steers_ebbs_identity_secrets_or_reads() {
    let w = world().await;
    let listener = format!("http://{}", w.recorder.addr);
    let vault = "https://vault.azure.net/.default";
    let monitor = "https://ws-1.eastus.prometheus.monitor.azure.com";
    let userinfo = format!("https://ws-1.eastus.prometheus.monitor.azure.com@{}", w.recorder.addr);
    let addr = w.recorder.addr.to_string();
    const AZ: (&str, &str) = ("azureManagedPrometheusResourceURL", "https://prometheus.monitor.azure.com/.default");

    // (metadata, code, what the message must name). Namespace `attacker` holds every binding.
    type Attack<'a> = (Vec<(&'a str, &'a str)>, Code, &'a str);
    let attacks: Vec<Attack> = vec![
        // The issue's Prometheus attempt: any host, any audience.
        (
            vec![
                ("scalerType", "prometheus"),
                ("serverAddress", &listener),
                ("query", "up"),
                ("threshold", "1"),
                ("azureManagedPrometheusResourceURL", vault),
            ],
            Code::InvalidArgument,
            "serverAddress",
        ),
        // An approved host still never gets a token for another audience.
        (
            vec![
                ("scalerType", "prometheus"),
                ("serverAddress", monitor),
                ("query", "up"),
                ("threshold", "1"),
                ("azureManagedPrometheusResourceURL", vault),
            ],
            Code::InvalidArgument,
            "azureManagedPrometheusResourceURL",
        ),
        // The issue's private-cloud attempts, one per Azure scaler and key.
        (
            vec![
                ("scalerType", "azure-servicebus"),
                ("namespace", "x"),
                ("queueName", "orders"),
                ("cloud", "Private"),
                ("endpointSuffix", "localtest.me"),
            ],
            Code::InvalidArgument,
            "endpointSuffix",
        ),
        (
            vec![
                ("scalerType", "azure-queue"),
                ("accountName", "x"),
                ("queueName", "q"),
                ("cloud", "Private"),
                ("endpointSuffix", "evil.example"),
            ],
            Code::InvalidArgument,
            "endpointSuffix",
        ),
        (
            vec![
                ("scalerType", "azure-eventhub"),
                ("eventHubNamespace", "x"),
                ("eventHubName", "h"),
                ("cloud", "Private"),
                ("endpointSuffix", "evil.example"),
                ("storageAccountName", "s"),
            ],
            Code::InvalidArgument,
            "endpointSuffix",
        ),
        (
            vec![
                ("scalerType", "azure-eventhub"),
                ("eventHubNamespace", "x"),
                ("eventHubName", "h"),
                ("cloud", "Private"),
                ("endpointSuffix", "servicebus.windows.net"),
                ("storageAccountName", "s"),
                ("storageEndpointSuffix", "evil.example"),
            ],
            Code::InvalidArgument,
            "storageEndpointSuffix",
        ),
        // Host tricks, through the key that takes a whole URL, with Azure auth asked for.
        (
            vec![
                ("scalerType", "prometheus"),
                ("query", "up"),
                ("threshold", "1"),
                AZ,
                ("serverAddress", "https://ws-1.eastus.prometheus.monitor.azure.com.evil.example"),
            ],
            Code::InvalidArgument,
            "serverAddress",
        ),
        (
            vec![
                ("scalerType", "prometheus"),
                ("query", "up"),
                ("threshold", "1"),
                AZ,
                ("serverAddress", "https://WS-1.EastUS.Prometheus.Monitor.Azure.COM.evil.example"),
            ],
            Code::InvalidArgument,
            "serverAddress",
        ),
        (
            vec![
                ("scalerType", "prometheus"),
                ("query", "up"),
                ("threshold", "1"),
                AZ,
                ("serverAddress", "https://ws-1.eastus.prometheus.monitor.azure.com."),
            ],
            Code::InvalidArgument,
            "serverAddress",
        ),
        (
            vec![
                ("scalerType", "prometheus"),
                ("query", "up"),
                ("threshold", "1"),
                AZ,
                ("serverAddress", "https://ws-1.eastus.prometheus.monitor.azure.com%2eevil.example"),
            ],
            Code::InvalidArgument,
            "serverAddress",
        ),
        (
            vec![
                ("scalerType", "prometheus"),
                ("query", "up"),
                ("threshold", "1"),
                AZ,
                ("serverAddress", "https://ws-1.eastus.prometheus.monitor.azure.com:8443"),
            ],
            Code::InvalidArgument,
            "serverAddress",
        ),
        (
            vec![
                ("scalerType", "prometheus"),
                ("query", "up"),
                ("threshold", "1"),
                AZ,
                ("serverAddress", "http://ws-1.eastus.prometheus.monitor.azure.com"),
            ],
            Code::InvalidArgument,
            "serverAddress",
        ),
        (
            vec![
                ("scalerType", "prometheus"),
                ("query", "up"),
                ("threshold", "1"),
                AZ,
                ("serverAddress", "https://127.0.0.1"),
            ],
            Code::InvalidArgument,
            "serverAddress",
        ),
        (
            vec![
                ("scalerType", "prometheus"),
                ("query", "up"),
                ("threshold", "1"),
                AZ,
                ("serverAddress", "https://[::1]"),
            ],
            Code::InvalidArgument,
            "serverAddress",
        ),
        (
            vec![("scalerType", "prometheus"), ("query", "up"), ("threshold", "1"), AZ, ("serverAddress", &userinfo)],
            Code::InvalidArgument,
            "serverAddress",
        ),
        // … and through a private suffix.
        (
            vec![
                ("scalerType", "azure-servicebus"),
                ("namespace", "x"),
                ("queueName", "orders"),
                ("cloud", "Private"),
                ("endpointSuffix", "servicebus.windows.net.evil.example"),
            ],
            Code::InvalidArgument,
            "endpointSuffix",
        ),
        (
            vec![
                ("scalerType", "azure-servicebus"),
                ("namespace", "x"),
                ("queueName", "orders"),
                ("cloud", "Private"),
                ("endpointSuffix", "servicebus.windows.net."),
            ],
            Code::InvalidArgument,
            "endpointSuffix",
        ),
        (
            vec![
                ("scalerType", "azure-servicebus"),
                ("namespace", "x"),
                ("queueName", "orders"),
                ("cloud", "Private"),
                ("endpointSuffix", &addr),
            ],
            Code::InvalidArgument,
            "endpointSuffix",
        ),
        (
            vec![
                ("scalerType", "azure-servicebus"),
                ("namespace", "ns.servicebus.windows.net@evil"),
                ("queueName", "orders"),
            ],
            Code::InvalidArgument,
            "namespace",
        ),
        // A named secret the namespace is not bound to.
        (
            vec![("scalerType", "azure-servicebus"), ("connectionRef", "platform-sb"), ("queueName", "orders")],
            Code::PermissionDenied,
            "access.bindings",
        ),
        // Without the k8s feature and a trusted caller namespace, no TriggerAuthentication is read.
        (
            vec![
                ("scalerType", "prometheus"),
                ("serverAddress", &listener),
                ("query", "up"),
                ("threshold", "1"),
                ("authenticationRef", "other-teams-auth"),
            ],
            Code::InvalidArgument,
            "authenticationRef",
        ),
    ];
    for (i, (md, code, needle)) in attacks.iter().enumerate() {
        let r = w.keda.get_metric_spec(&so("attacker", &format!("attack-{i}"), md)).await;
        assert_status(r, *code, needle, &format!("attack {i}: {md:?}"));
    }

    // Approved: the clouds' own hosts and the operator's private suffix get the token for their
    // own audience, and only for a bound namespace.
    let sb = [("scalerType", "azure-servicebus"), ("namespace", "contoso-prod"), ("queueName", "orders")];
    assert_eq!(value(&w.keda, &so("orders", "sb", &sb)).await.unwrap(), 42.0);
    let private = [
        ("scalerType", "azure-servicebus"),
        ("namespace", "stack-ns"),
        ("queueName", "orders"),
        ("cloud", "Private"),
        ("endpointSuffix", "sb.stack.test"),
    ];
    assert_eq!(value(&w.keda, &so("orders", "private", &private)).await.unwrap(), 42.0);
    let prom = [("scalerType", "prometheus"), ("serverAddress", monitor), ("query", "up"), ("threshold", "1")];
    assert_eq!(value(&w.keda, &so("orders", "monitor", &prom)).await.unwrap(), 7.0);
    // Namespace bindings: another namespace, another entity.
    assert_status(
        w.keda.get_metric_spec(&so("payments", "sb", &sb)).await,
        Code::PermissionDenied,
        "payments",
        "payments",
    );
    let other = [("scalerType", "azure-servicebus"), ("namespace", "contoso-prod"), ("queueName", "billing")];
    assert_status(
        w.keda.get_metric_spec(&so("orders", "billing", &other)).await,
        Code::PermissionDenied,
        "billing",
        "entity",
    );

    // The bridge follows the same rules (an unbound one fails `serve` at start: see below).
    let http = reqwest::Client::new();
    let get = |ns: &str, name: &str| http.get(format!("http://{}/api/v1/scaledobjects/{ns}/{name}", w.ebb.http)).send();
    let ok = common::until(
        Duration::from_secs(10),
        "bridge answer for orders",
        async || get("orders", "bridge-orders").await.unwrap().status().as_u16(),
        |s| *s == 200,
    )
    .await;
    assert_eq!(ok, 200);

    // No read-back: a source answering an internal page gives the caller its status, never the page.
    let page =
        [("scalerType", "prometheus"), ("serverAddress", listener.as_str()), ("query", "up"), ("threshold", "1")];
    let err = value(&w.keda, &so("attacker", "read-back", &page)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("500") && !err.message().contains(INTERNAL_PAGE_MARKER), "{}", err.message());

    // The evidence: the listener never saw a token, no unapproved host was even dialled, the
    // identity endpoint was asked only for the two services' audiences, and every request the
    // approved hosts got carried the token for their own audience.
    let received = w.recorder.received();
    assert!(!received.to_ascii_lowercase().contains("authorization"), "the listener got a credential:\n{received}");
    assert!(!received.contains("mi-token-for"), "{received}");
    assert!(w.front.refused_connects().is_empty(), "dialled: {:?}", w.front.refused_connects());
    let mut resources = w.identity.resources();
    resources.sort();
    resources.dedup();
    assert_eq!(resources, ["https://prometheus.monitor.azure.com", "https://servicebus.azure.net"]);
    let seen = w.front.seen();
    assert!(seen.iter().any(|s| s.host == "contoso-prod.servicebus.windows.net"), "{seen:?}");
    assert!(seen.iter().any(|s| s.host == "stack-ns.sb.stack.test"), "{seen:?}");
    assert!(seen.iter().any(|s| s.host == "ws-1.eastus.prometheus.monitor.azure.com"), "{seen:?}");
    for s in &seen {
        let resource = if s.host.contains("prometheus") {
            "https://prometheus.monitor.azure.com"
        } else {
            "https://servicebus.azure.net"
        };
        assert_eq!(s.authorization, format!("Bearer {}", token_for(resource)), "{s:?}");
    }
    let log = w.ebb.log_text();
    assert!(!log.contains("mi-token-for"), "a token reached the log");
}

/// The bridge's ScaledObjects are checked at start: one whose namespace is not bound to what it
/// uses stops `ebb serve` with an error naming the policy, before anything is polled.
#[test]
fn bridge_config_with_an_unbound_namespace_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ebb.yaml");
    let unbound =
        CONFIG.replace("namespace: orders\n    name: bridge-orders", "namespace: payments\n    name: bridge-payments");
    assert_ne!(unbound, CONFIG);
    std::fs::write(&config, unbound).unwrap();
    let port = |_| common::free_port().to_string();
    let (grpc, http) = (format!("127.0.0.1:{}", port(0)), format!("127.0.0.1:{}", port(1)));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(["serve", "--grpc-addr", &grpc, "--http-addr", &http, "--config", config.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(15) {
            child.kill().ok();
            panic!("ebb serve did not stop on a refused bridge ScaledObject");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!status.success());
    assert!(
        text.contains("permission denied") && text.contains("payments") && text.contains("access.bindings"),
        "{text}"
    );
}
