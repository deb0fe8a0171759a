//! A fault-injecting HTTP/1.1 proxy: forwards each request to a real upstream, then answers
//! according to the current [`Fault`]: as is, slowly, by resetting the connection, with a
//! truncated body, with an error status, or with garbage. One request per connection
//! (`Connection: close`), so a fault never depends on connection reuse.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Answers after this long (past the scaler's request timeout).
    Slow(Duration),
    /// Closes the connection with a TCP reset, answering nothing.
    Reset,
    /// Sends the headers and half of the body (half of the headers when there is no body),
    /// then closes.
    Truncate,
    /// Answers this status (429 and 503 carry `Retry-After: 1`).
    Status(u16),
    /// Answers 200 with a body (and Azure count headers) that parse as nothing.
    Garbage,
}

pub struct FaultProxy {
    pub port: u16,
    fault: Arc<Mutex<Fault>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fault proxy");
        let port = listener.local_addr().expect("addr").port();
        let fault = Arc::new(Mutex::new(Fault::None));
        let (f, upstream) = (fault.clone(), upstream.trim_end_matches('/').to_string());
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (f, upstream, http) = (f.clone(), upstream.clone(), http.clone());
                tokio::spawn(async move {
                    let fault = *f.lock().unwrap();
                    let _ = handle(sock, fault, &upstream, &http).await;
                });
            }
        });
        FaultProxy { port, fault, task }
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request, forwards it, and answers per `fault`.
async fn handle(mut sock: TcpStream, fault: Fault, upstream: &str, http: &reqwest::Client) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head"))??;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 1 << 20 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or("GET"), parts.next().unwrap_or("/"));
    let mut headers = Vec::new();
    let mut content_length = 0usize;
    for l in lines.filter(|l| !l.is_empty()) {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_string(), v.trim().to_string());
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < content_length {
        let mut chunk = vec![0u8; content_length - body.len()];
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }

    if fault == Fault::Reset {
        reset_on_close(&sock)?;
        drop(sock);
        return Ok(());
    }
    if let Fault::Slow(d) = fault {
        tokio::time::sleep(d).await;
    }
    if let Fault::Status(code) = fault {
        let extra = if matches!(code, 429 | 503) { "Retry-After: 1\r\n" } else { "" };
        let body = "injected fault";
        let out = format!(
            "HTTP/1.1 {code} Injected\r\nContent-Type: text/plain\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return sock.write_all(out.as_bytes()).await;
    }

    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut req = http.request(method, format!("{upstream}{target}"));
    for (k, v) in &headers {
        if !k.eq_ignore_ascii_case("host") && !k.eq_ignore_ascii_case("content-length") {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    let answer = match req.body(body).send().await {
        Ok(a) => a,
        Err(_) => {
            return sock.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        }
    };
    let status = answer.status();
    let mut head = format!("HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or("OK"));
    for (k, v) in answer.headers() {
        if !matches!(k.as_str(), "transfer-encoding" | "connection" | "content-length") {
            // Garbage reaches header-only answers too (Azure Storage's counts are headers).
            let v = if fault == Fault::Garbage && k.as_str().starts_with("x-ms-approximate") {
                "<<garbage>>"
            } else {
                v.to_str().unwrap_or_default()
            };
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    let mut payload = answer.bytes().await.unwrap_or_default().to_vec();
    if fault == Fault::Garbage {
        payload = b"\x00\x01<<garbage>>{[not json or xml".to_vec();
    }
    head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", payload.len()));
    if fault == Fault::Truncate && payload.is_empty() {
        // A header-only answer (Azure Storage's queue properties): cut the headers instead.
        sock.write_all(&head.as_bytes()[..head.len() / 2]).await?;
        reset_on_close(&sock)?;
        return Ok(());
    }
    sock.write_all(head.as_bytes()).await?;
    if fault == Fault::Truncate {
        sock.write_all(&payload[..payload.len() / 2]).await?;
        sock.flush().await?;
        reset_on_close(&sock)?;
        return Ok(());
    }
    sock.write_all(&payload).await
}

/// A zero linger makes close send a TCP reset, which is the fault. tokio deprecates
/// `set_linger` because a non-zero linger blocks in close; zero never does.
#[allow(deprecated)]
fn reset_on_close(sock: &TcpStream) -> std::io::Result<()> {
    sock.set_linger(Some(Duration::ZERO))
}

/// A fault-injecting TCP proxy for protocols on long-lived connections (Kafka). The fault is
/// read for every chunk, in both directions, so it reaches connections already open:
/// - `Slow(d)`: each chunk from the upstream is held for `d`;
/// - `Reset`: new connections and the next chunk either way end in a TCP reset;
/// - `Truncate`: half of the next chunk from the upstream, then a reset;
/// - `Garbage`: chunks from the upstream arrive scrambled (every byte XOR 0xA5), frame sizes
///   included.
///
/// HTTP statuses have no meaning here; `Status(_)` forwards as is.
pub struct TcpFaultProxy {
    pub port: u16,
    fault: Arc<Mutex<Fault>>,
    upstream: Arc<Mutex<Option<std::net::SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpFaultProxy {
    /// Listens at once; forwards nothing until [`TcpFaultProxy::forward_to`] names the upstream
    /// (a broker must know the proxy's address before it starts, to advertise it).
    pub async fn start() -> TcpFaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp fault proxy");
        let port = listener.local_addr().expect("addr").port();
        let fault = Arc::new(Mutex::new(Fault::None));
        let upstream = Arc::new(Mutex::new(None));
        let (f, u) = (fault.clone(), upstream.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (f, u) = (f.clone(), *u.lock().unwrap());
                tokio::spawn(async move {
                    let _ = pipe(sock, u, &f).await;
                });
            }
        });
        TcpFaultProxy { port, fault, upstream, task }
    }

    pub fn forward_to(&self, upstream: std::net::SocketAddr) {
        *self.upstream.lock().unwrap() = Some(upstream);
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TcpFaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Pumps one connection both ways, applying the current fault to every chunk.
async fn pipe(client: TcpStream, upstream: Option<std::net::SocketAddr>, fault: &Mutex<Fault>) -> std::io::Result<()> {
    let now = || *fault.lock().unwrap();
    let Some(upstream) = upstream.filter(|_| now() != Fault::Reset) else {
        return reset_on_close(&client);
    };
    let mut up = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(upstream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect upstream"))??;
    let mut client = client;
    let (mut from_client, mut from_up) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        tokio::select! {
            n = client.read(&mut from_client) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                if now() == Fault::Reset {
                    return reset_on_close(&client);
                }
                up.write_all(&from_client[..n]).await?;
            }
            n = up.read(&mut from_up) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                let chunk = &mut from_up[..n];
                match now() {
                    Fault::Slow(d) => tokio::time::sleep(d).await,
                    Fault::Reset => return reset_on_close(&client),
                    Fault::Truncate => {
                        client.write_all(&chunk[..n / 2]).await?;
                        return reset_on_close(&client);
                    }
                    Fault::Garbage => chunk.iter_mut().for_each(|b| *b ^= 0xA5),
                    Fault::None | Fault::Status(_) => {}
                }
                client.write_all(chunk).await?;
            }
        }
    }
}
