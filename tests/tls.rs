//! TLS and mTLS on the gRPC port, with certificates generated here (rcgen), in the two settings
//! KEDA uses: CA only (`caCert`, or `enableTLS` with a trusted CA), and CA + client certificate
//! (`tlsClientCert` / `tlsClientKey`). A client without a valid certificate is refused, and a
//! rotated certificate is picked up without a restart.

mod common;

use std::path::Path;
use std::time::Duration;

use common::certs::Ca;
use common::ebb::{prom_metadata, so_owned, start_ebb_with_opts};
use ebb::proto::external_scaler_client::ExternalScalerClient;
use ebb::server::ServeOptions;
use ebb::tls::TlsFiles;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn write(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn files(dir: &Path, server: &(String, String), client_ca: Option<&Ca>) -> TlsFiles {
    TlsFiles {
        cert: write(dir, "tls.crt", &server.0),
        key: write(dir, "tls.key", &server.1),
        client_ca: client_ca.map(|ca| write(dir, "ca.crt", &ca.pem())),
        reload_every: Duration::from_millis(100),
    }
}

/// A GetMetricSpec over TLS: needs no source, so it shows the handshake and the call only.
async fn call(addr: std::net::SocketAddr, ca: &Ca, identity: Option<&(String, String)>) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new().domain_name("localhost").ca_certificate(Certificate::from_pem(ca.pem()));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3));
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let md = prom_metadata("http://127.0.0.1:9", "up", &[]);
    ExternalScalerClient::new(channel)
        .get_metric_spec(so_owned("tls", &md))
        .await
        .map(drop)
        .map_err(|s| format!("{s:?}"))
}

async fn start(tls: TlsFiles) -> ebb::server::Server {
    start_ebb_with_opts(ServeOptions { tls: Some(tls), ..ServeOptions::default() }).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_with_the_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ebb test CA");
    let srv = start(files(dir.path(), &ca.leaf(&["localhost", "127.0.0.1"]), None)).await;
    call(srv.grpc_addr, &ca, None).await.expect("CA-only client (KEDA caCert / enableTLS)");

    // A client trusting another CA does not get through; neither does plaintext.
    let other = Ca::new("someone else");
    assert!(call(srv.grpc_addr, &other, None).await.is_err());
    let plain = Channel::from_shared(format!("http://{}", srv.grpc_addr)).unwrap().connect().await;
    if let Ok(ch) = plain {
        let md = prom_metadata("http://127.0.0.1:9", "up", &[]);
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            ExternalScalerClient::new(ch).get_metric_spec(so_owned("plain", &md)),
        )
        .await;
        assert!(!matches!(r, Ok(Ok(_))), "plaintext must not be served on a TLS port");
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ebb test CA");
    let clients = Ca::new("keda clients");
    let srv = start(files(dir.path(), &ca.leaf(&["localhost"]), Some(&clients))).await;

    let keda = clients.leaf(&["keda-operator"]);
    call(srv.grpc_addr, &ca, Some(&keda)).await.expect("CA + client certificate (KEDA tlsClientCert/tlsClientKey)");
    let e = call(srv.grpc_addr, &ca, None).await.expect_err("no client certificate");
    assert!(!e.is_empty());
    let stranger = Ca::new("stranger").leaf(&["keda-operator"]);
    call(srv.grpc_addr, &ca, Some(&stranger)).await.expect_err("client certificate from another CA");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_picked_up_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let tls = files(dir.path(), &old_ca.leaf(&["localhost"]), None);
    let srv = start(tls.clone()).await;
    call(srv.grpc_addr, &old_ca, None).await.expect("old certificate");
    assert!(call(srv.grpc_addr, &new_ca, None).await.is_err(), "not rotated yet");

    // Half-written files do not replace a working certificate.
    std::fs::write(&tls.key, "-----BEGIN PRIVATE KEY-----\ngarbage\n").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    call(srv.grpc_addr, &old_ca, None).await.expect("still the old certificate after a bad write");

    // Rotation, as a Secret update or cert-manager renewal writes it.
    let (cert, key) = new_ca.leaf(&["localhost"]);
    std::fs::write(&tls.cert, cert).unwrap();
    std::fs::write(&tls.key, key).unwrap();
    let mut rotated = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if call(srv.grpc_addr, &new_ca, None).await.is_ok() {
            rotated = true;
            break;
        }
    }
    assert!(rotated, "the new certificate is served within the reload interval");
    assert!(call(srv.grpc_addr, &old_ca, None).await.is_err(), "the old one is gone");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_stop_start_up_without_echoing_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ebb test CA");
    let (cert, _) = ca.leaf(&["localhost"]);
    let secretish = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n";
    let tls = TlsFiles {
        cert: write(dir.path(), "tls.crt", &cert),
        key: write(dir.path(), "tls.key", secretish),
        client_ca: None,
        reload_every: Duration::from_secs(10),
    };
    let opts = ServeOptions {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        tls: Some(tls),
        ..ServeOptions::default()
    };
    let err = format!("{:#}", ebb::server::spawn(opts).await.err().expect("start-up fails"));
    assert!(err.contains("tls.key") || err.contains("TLS"), "{err}");
    assert!(!err.contains("c2VjcmV0"), "no key material in the error: {err}");
}

#[test]
fn ebb_bench_speaks_tls() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ebb test CA");
    let clients = Ca::new("bench clients");
    let srv = rt.block_on(start(files(dir.path(), &ca.leaf(&["localhost"]), Some(&clients))));
    let ca_file = write(dir.path(), "server-ca.pem", &ca.pem());
    let (cert, key) = clients.leaf(&["bench"]);
    let (cert_file, key_file) = (write(dir.path(), "c.pem", &cert), write(dir.path(), "c.key", &key));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(["bench", "--target", &srv.grpc_addr.to_string(), "--tls", "--ca"])
        .arg(&ca_file)
        .arg("--cert")
        .arg(&cert_file)
        .arg("--key")
        .arg(&key_file)
        .args(["--closed-loop", "--concurrency", "2", "--connections", "1", "--duration", "1", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["rpcs"]["GetMetrics"]["count"].as_u64().unwrap() > 0, "{r}");
    rt.block_on(srv.shutdown());
}
