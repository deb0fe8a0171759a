//! Azure's public side, on loopback, for ebb's own identity: a managed identity endpoint and the
//! service hosts it may send tokens to.
//!
//! - [`IdentityEndpoint`]: the App Service / Container Apps managed identity protocol that
//!   `azure_identity` speaks when `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set
//!   (`GET ?api-version=2019-08-01&resource=…` with `X-IDENTITY-HEADER`; JSON `access_token`,
//!   `expires_on`, `resource`, `token_type`). Each token names its resource, so a service host
//!   can tell which audience it was issued for. Every request is recorded.
//! - [`AzureFront`]: an HTTPS proxy (`HTTPS_PROXY`) that takes `CONNECT host:443` for the hosts
//!   it plays and terminates TLS itself with a certificate for them, signed by a test CA that ebb
//!   trusts through `SSL_CERT_FILE`. Behind it: Service Bus's management API (the queue ATOM
//!   entry, a wire double as in `servicebus.rs`, answering 401 unless the Bearer token was issued
//!   for `https://servicebus.azure.net`) and Azure Monitor's Prometheus query API (Bearer for
//!   `https://prometheus.monitor.azure.com`). CONNECTs to any other host are refused and recorded.
//!   ebb's code is unchanged: only the process environment (proxy, trust store, identity endpoint)
//!   differs from a pod's.
//! - [`Recorder`]: an attacker's listener that records every byte it receives.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `X-IDENTITY-HEADER` value ebb's environment carries.
pub const IDENTITY_SECRET: &str = "identity-header-secret";

/// The token the identity endpoint issues for `resource`.
pub fn token_for(resource: &str) -> String {
    format!("mi-token-for:{resource}")
}

/// The managed identity endpoint.
pub struct IdentityEndpoint {
    pub url: String,
    resources: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for IdentityEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl IdentityEndpoint {
    pub async fn start() -> IdentityEndpoint {
        let resources: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = resources.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let log = log.clone();
            async move {
                let url = reqwest::Url::parse(&format!("http://identity{uri}")).unwrap();
                let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
                let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
                let resource = get("resource");
                log.lock().unwrap().push(resource.clone());
                if headers.get("x-identity-header").and_then(|v| v.to_str().ok()) != Some(IDENTITY_SECRET)
                    || get("api-version") != "2019-08-01"
                {
                    return (StatusCode::BAD_REQUEST, "bad identity request").into_response();
                }
                let expires = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
                axum::Json(serde_json::json!({
                    "access_token": token_for(&resource),
                    "expires_on": expires.to_string(),
                    "resource": resource,
                    "token_type": "Bearer",
                }))
                .into_response()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        IdentityEndpoint { url: format!("http://{addr}/msi/token"), resources, task }
    }

    /// The resources (audiences) tokens were asked for, in order.
    pub fn resources(&self) -> Vec<String> {
        self.resources.lock().unwrap().clone()
    }
}

/// One request the front answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub host: String,
    pub path: String,
    pub authorization: String,
}

#[derive(Default)]
struct FrontLog {
    seen: Vec<Seen>,
    refused_connects: Vec<String>,
}

/// The HTTPS proxy and the service hosts behind it.
pub struct AzureFront {
    pub proxy_url: String,
    pub ca_file: std::path::PathBuf,
    log: Arc<Mutex<FrontLog>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for AzureFront {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Which service a host plays, by its suffix.
fn service_of(host: &str, suffixes: &[(&str, &'static str)]) -> Option<&'static str> {
    suffixes.iter().find(|(s, _)| host.ends_with(&format!(".{s}"))).map(|(_, svc)| *svc)
}

impl AzureFront {
    /// Plays every host under `servicebus_suffixes` (Service Bus) and
    /// `prometheus.monitor.azure.com` (Azure Monitor).
    pub async fn start(servicebus_suffixes: &[&str]) -> AzureFront {
        let mut suffixes: Vec<(&str, &'static str)> = servicebus_suffixes.iter().map(|s| (*s, "servicebus")).collect();
        suffixes.push(("prometheus.monitor.azure.com", "monitor"));
        let owned: Vec<(String, &'static str)> = suffixes.iter().map(|(s, v)| (s.to_string(), *v)).collect();

        // The test CA and one certificate for every played host.
        let ca = super::certs::Ca::new("azure front test CA");
        let names: Vec<String> = owned.iter().flat_map(|(s, _)| [format!("*.{s}"), format!("*.eastus.{s}")]).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let tls = super::certs::acceptor(&ca.leaf(&names));
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let log: Arc<Mutex<FrontLog>> = Arc::default();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = listener.local_addr().unwrap();
        let l = log.clone();
        let owned2 = owned.clone();
        let proxy = tokio::spawn(async move {
            while let Ok((sock, peer)) = listener.accept().await {
                let (tls, tx, log, owned) = (tls.clone(), tx.clone(), l.clone(), owned2.clone());
                tokio::spawn(async move {
                    let suffixes: Vec<(&str, &'static str)> = owned.iter().map(|(s, v)| (s.as_str(), *v)).collect();
                    if let Some(stream) = connect(sock, &tls, &suffixes, &log).await {
                        let _ = tx.send((stream, peer)).await;
                    }
                });
            }
        });
        let l = log.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let (log, owned) = (l.clone(), owned.clone());
            async move {
                let suffixes: Vec<(&str, &'static str)> = owned.iter().map(|(s, v)| (s.as_str(), *v)).collect();
                answer(&log, &suffixes, &uri, &headers)
            }
        });
        let server = tokio::spawn(async move {
            axum::serve(Tunnels { rx, addr: proxy_addr }, app).await.ok();
        });
        AzureFront { proxy_url: format!("http://{proxy_addr}"), ca_file, log, tasks: vec![proxy, server], _dir: dir }
    }

    /// Requests answered behind the proxy.
    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().seen.clone()
    }

    /// CONNECT targets the front refused (hosts it does not play).
    pub fn refused_connects(&self) -> Vec<String> {
        self.log.lock().unwrap().refused_connects.clone()
    }
}

/// Reads `CONNECT host:443`; for a played host answers 200 and completes the TLS handshake.
async fn connect(
    mut sock: tokio::net::TcpStream,
    tls: &tokio_rustls::TlsAcceptor,
    suffixes: &[(&str, &'static str)],
    log: &Mutex<FrontLog>,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = sock.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let target = text.lines().next()?.strip_prefix("CONNECT ")?.split(' ').next()?.to_string();
    let host = target.strip_suffix(":443").unwrap_or(&target).to_ascii_lowercase();
    if service_of(&host, suffixes).is_none() || !target.ends_with(":443") {
        log.lock().unwrap().refused_connects.push(target);
        let _ = sock.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n").await;
        return None;
    }
    sock.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.ok()?;
    tls.accept(sock).await.ok()
}

fn answer(log: &Mutex<FrontLog>, suffixes: &[(&str, &'static str)], uri: &Uri, headers: &HeaderMap) -> Response {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let path = uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
    log.lock().unwrap().seen.push(Seen {
        host: host.clone(),
        path: path.clone(),
        authorization: authorization.clone(),
    });
    let bearer = |resource: &str| authorization == format!("Bearer {}", token_for(resource));
    match service_of(&host, suffixes) {
        Some("servicebus") if !bearer("https://servicebus.azure.net") => (
            StatusCode::UNAUTHORIZED,
            "<Error><Code>401</Code><Detail>InvalidSignature: the token is not for Service Bus.</Detail></Error>",
        )
            .into_response(),
        Some("servicebus") if uri.path() == "/orders" => {
            let path = format!("{}/tests/fixtures/servicebus/queue.xml", env!("CARGO_MANIFEST_DIR"));
            (
                [("content-type", "application/atom+xml;type=entry;charset=utf-8")],
                std::fs::read_to_string(path).unwrap(),
            )
                .into_response()
        }
        // Service Bus answers an unknown entity with an empty feed.
        Some("servicebus") => {
            let path = format!("{}/tests/fixtures/servicebus/empty-feed.xml", env!("CARGO_MANIFEST_DIR"));
            ([("content-type", "application/atom+xml;type=feed;charset=utf-8")], std::fs::read_to_string(path).unwrap())
                .into_response()
        }
        Some("monitor") if !bearer("https://prometheus.monitor.azure.com") => {
            (StatusCode::UNAUTHORIZED, "missing or wrong token").into_response()
        }
        Some("monitor") if uri.path() == "/api/v1/query" => axum::Json(serde_json::json!({
            "status": "success",
            "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1_700_000_000, "7"]}]}
        }))
        .into_response(),
        _ => (StatusCode::NOT_FOUND, "not played here").into_response(),
    }
}

/// TLS streams that came through CONNECT, as an axum listener.
struct Tunnels {
    rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for Tunnels {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(s) => s,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// An attacker's listener: accepts anything and records every byte; answers HTTP 500 with a
/// page a read-back would show.
pub struct Recorder {
    pub addr: SocketAddr,
    bytes: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the recorder's page holds; it must never reach a caller.
pub const INTERNAL_PAGE_MARKER: &str = "INTERNAL-ADMIN-PAGE-7f3a";

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes: Arc<Mutex<Vec<u8>>> = Arc::default();
        let b = bytes.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let b = b.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    b.lock().unwrap().extend_from_slice(&got);
                    let body = format!("<html><body>{INTERNAL_PAGE_MARKER}: db password hunter2</body></html>");
                    let resp = format!(
                        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        Recorder { addr, bytes, task }
    }

    /// Everything received, as text.
    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }
}
