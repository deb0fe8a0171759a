//! Issue 14: KEDA's own connection keys never weaken ebb's connection to the source.
//!
//! KEDA's external-scaler client reads `scalerAddress`, `enableTLS`, `unsafeSsl` (and
//! `caCert`/`tlsClientCert`/`tlsClientKey`, `tlsCertFile`) for its own gRPC connection to ebb and
//! forwards the whole metadata. Here KEDA's client is set up in its TLS settings (CA only;
//! `enableTLS` + `unsafeSsl`; mTLS with a client certificate) against an `ebb serve` with TLS, and
//! the sources are a real Prometheus and a real Kafka broker (tansu) behind a TLS front whose
//! certificate no trust store ebb has signed. The source stays verified (no value, the front sees
//! ebb refuse its certificate) unless the ebb-only key `sourceUnsafeSsl` says otherwise. Over a
//! plaintext hop `unsafeSsl` keeps its KEDA meaning for the source (parity).

// Starts real servers (scripts/install-services.sh): built with `--features integration`,
// which scripts/test.sh (and so CI) turns on.
#![cfg(feature = "integration")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::PromStack;
use common::certs::{Ca, TlsFront};
use common::ebb::{Keda, start_ebb_with_opts};
use ebb::proto::ScaledObjectRef;
use ebb::server::ServeOptions;
use ebb::tls::TlsFiles;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// One of KEDA's settings for its connection to ebb.
struct Hop {
    what: &'static str,
    /// The metadata KEDA's client reads for itself (and forwards).
    keys: &'static [(&'static str, &'static str)],
    server: ebb::server::Server,
    keda: Keda,
}

fn write(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

async fn tls_ebb(dir: &Path, ca: &Ca, client_ca: Option<&Ca>) -> ebb::server::Server {
    let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"]);
    let tls = TlsFiles {
        cert: write(dir, "tls.crt", &cert),
        key: write(dir, "tls.key", &key),
        client_ca: client_ca.map(|c| write(dir, "client-ca.crt", &c.pem())),
        reload_every: Duration::from_secs(10),
    };
    start_ebb_with_opts(ServeOptions { tls: Some(tls), ..ServeOptions::default() }).await.0
}

async fn tls_keda(server: &ebb::server::Server, ca: &Ca, identity: Option<(String, String)>) -> Keda {
    let mut tls = ClientTlsConfig::new().domain_name("localhost").ca_certificate(Certificate::from_pem(ca.pem()));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://{}", server.grpc_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .expect("KEDA's TLS connection to ebb");
    Keda::from_channel(channel)
}

/// KEDA's three TLS settings, each against its own ebb.
async fn tls_hops(dir: &Path) -> Vec<Hop> {
    let ca = Ca::new("ebb's CA");
    let clients = Ca::new("KEDA's client CA");
    let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
    for d in [&a, &b, &c] {
        std::fs::create_dir(d).unwrap();
    }
    let ca_only = tls_ebb(&a, &ca, None).await;
    let enable_tls = tls_ebb(&b, &ca, None).await;
    let mtls = tls_ebb(&c, &ca, Some(&clients)).await;
    vec![
        Hop {
            what: "CA only (caCert in KEDA's TriggerAuthentication)",
            keys: &[("unsafeSsl", "true")],
            keda: tls_keda(&ca_only, &ca, None).await,
            server: ca_only,
        },
        Hop {
            what: "enableTLS + unsafeSsl",
            keys: &[("enableTLS", "true"), ("unsafeSsl", "true")],
            keda: tls_keda(&enable_tls, &ca, None).await,
            server: enable_tls,
        },
        Hop {
            what: "mTLS (tlsClientCert, tlsClientKey)",
            keys: &[("unsafeSsl", "true")],
            keda: tls_keda(&mtls, &ca, Some(clients.leaf(&["keda-operator"]))).await,
            server: mtls,
        },
    ]
}

fn so(name: &str, md: &[(String, String)], extra: &[(&str, &str)]) -> ScaledObjectRef {
    let mut m: std::collections::HashMap<String, String> = md.iter().cloned().collect();
    m.insert("scalerAddress".into(), "ebb.keda.svc:9090".into());
    for (k, v) in extra {
        m.insert(k.to_string(), v.to_string());
    }
    ScaledObjectRef { name: name.into(), namespace: "default".into(), scaler_metadata: m }
}

/// The value GetMetrics serves within `limit`, or the last error.
async fn value_within(keda: &Keda, so: &ScaledObjectRef, limit: Duration) -> Result<f64, String> {
    let spec = keda.get_metric_spec(so).await.map_err(|s| format!("GetMetricSpec: {s:?}"))?;
    let name = spec.metric_specs[0].metric_name.clone();
    let start = std::time::Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match keda.get_metrics(so, &name).await {
            Ok(m) => return Ok(m.metric_values[0].metric_value_float),
            Err(s) => last = format!("{:?}: {}", s.code(), s.message()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}

/// Runs the three cases for one source: KEDA's `unsafeSsl` over each TLS hop (refused),
/// `sourceUnsafeSsl` over each (served), `unsafeSsl` over a plaintext hop (served, parity).
async fn cases(source: &str, md: &[(String, String)], front: &TlsFront, want: f64, refuse_wait: Duration) {
    let dir = tempfile::tempdir().unwrap();
    for (i, hop) in tls_hops(dir.path()).await.into_iter().enumerate() {
        let before = front.refused();
        let r = value_within(&hop.keda, &so(&format!("{source}-kedas-{i}"), md, hop.keys), refuse_wait).await;
        assert!(r.is_err(), "{source}, {}: KEDA's unsafeSsl turned off the source's verification: {r:?}", hop.what);
        assert!(front.refused() > before, "{source}, {}: ebb never refused the source's certificate", hop.what);

        let mut on_purpose = hop.keys.to_vec();
        on_purpose.push(("sourceUnsafeSsl", "true"));
        let r =
            value_within(&hop.keda, &so(&format!("{source}-ebbs-{i}"), md, &on_purpose), Duration::from_secs(15)).await;
        assert_eq!(r, Ok(want), "{source}, {}: sourceUnsafeSsl", hop.what);
        hop.server.shutdown().await;
    }
    // Plaintext hop: KEDA never reads unsafeSsl for itself, so it is the source's (parity).
    let (plain, keda) = common::ebb::start_ebb().await;
    let r = value_within(&keda, &so(&format!("{source}-plain"), md, &[("unsafeSsl", "true")]), Duration::from_secs(15))
        .await;
    assert_eq!(r, Ok(want), "{source}: plaintext hop");
    plain.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_source_stays_verified_whatever_kedas_hop_says() {
    common::within(Duration::from_secs(180), "prometheus cases", async {
        let stack = PromStack::start().await;
        let metric = common::unique_name("ebb_keda_keys");
        stack.push("keda_keys", &format!("{metric} 17")).await;
        stack.wait_for_value(&metric, 17.0, Duration::from_secs(30)).await;
        let front = TlsFront::start(&Ca::new("nobody ebb trusts").leaf(&["127.0.0.1", "localhost"])).await;
        front.forward_to(stack.prometheus_url().trim_start_matches("http://").parse().unwrap());
        let md = [
            ("scalerType", "prometheus"),
            ("serverAddress", &format!("https://{}", front.addr)),
            ("query", &metric),
            ("threshold", "10"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        cases("prometheus", &md, &front, 17.0, Duration::from_secs(4)).await;
        assert!(front.handshakes() > 0);

        // `ebb check` says which keys went to the source and which it set aside as KEDA's.
        let server = format!("serverAddress={}", stack.prometheus_url());
        let query = format!("query={metric}");
        let args = [
            "check",
            "--grpc-tls",
            "scalerType=prometheus",
            "scalerAddress=ebb:9090",
            "enableTLS=true",
            "unsafeSsl=true",
            &server,
            &query,
            "threshold=10",
        ];
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_ebb")).args(&args).env("RUST_LOG", "warn").output().unwrap()
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("ignored (KEDA's)  enableTLS, scalerAddress, unsafeSsl"), "{text}");
        assert!(text.contains("keys for source   query, scalerType, serverAddress, threshold"), "{text}");
        assert!(text.contains("unsafeSsl is KEDA's setting"), "{text}");
    })
    .await;
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_stays_verified_whatever_kedas_hop_says() {
    common::within(Duration::from_secs(240), "kafka cases", async {
        let ca = Ca::new("nobody ebb trusts");
        let front = TlsFront::start(&ca.leaf(&["127.0.0.1", "localhost"])).await;
        let addr = front.addr.to_string();
        let a = addr.clone();
        let mut tansu =
            tokio::task::spawn_blocking(move || common::kafka::Tansu::start_advertising(Some(&a))).await.unwrap();
        front.forward_to(tansu.bootstrap().parse().unwrap());
        // The test's own clients reach the broker through the front too, trusting its CA.
        let pem = ca.pem();
        tansu.set_client(&[("bootstrap.servers", &addr), ("security.protocol", "ssl"), ("ssl.ca.pem", &pem)]);
        let tansu = tokio::task::spawn_blocking(move || {
            tansu.create_topic("tls-topic", 1);
            tansu.produce("tls-topic", 0, 12);
            tansu.commit("tls-group", "tls-topic", &[(0, 5)]);
            tansu
        })
        .await
        .unwrap();
        let md = [
            ("scalerType", "kafka"),
            ("bootstrapServers", addr.as_str()),
            ("consumerGroup", "tls-group"),
            ("topic", "tls-topic"),
            ("tls", "enable"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        cases("kafka", &md, &front, 7.0, Duration::from_secs(6)).await;
        drop(tansu);
    })
    .await;
}
