//! A real Azurite (Azure Storage emulator, npm `azurite@3.35.0`, installed into
//! `<repo>/.services/azurite` by `scripts/install-services.sh`), in memory on loopback with
//! ephemeral ports, one per test; and a request-counting HTTP proxy to put in front of it.
//!
//! The queue helpers sign with Shared Key (Azure Storage's "Authorize with Shared Key"), using
//! the scaler's own HMAC ([`AccountKey::sign`]); the scaler itself signs a service SAS.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ebb_scalers::azure::storage::{AccountKey, DEV_ACCOUNT, DEV_KEY, iso8601};
use tempfile::TempDir;

/// How long Azurite may take to listen (≈ 1.2 s idle; 2 busy cores).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Per request made by the helpers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The service version the helpers sign for.
const VERSION: &str = "2021-12-02";

pub struct Azurite {
    child: Child,
    _dir: TempDir,
    log: PathBuf,
    pub queue_port: u16,
    pub blob_port: u16,
    /// The account key of `devstoreaccount1` in this instance (base64).
    key: String,
    http: reqwest::Client,
}

fn azurite_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".services/azurite/node_modules/.bin/azurite")
}

impl Azurite {
    /// Starts Azurite with the well-known dev key; panics if it is not installed or does not
    /// listen in time.
    pub fn start() -> Azurite {
        Azurite::start_with_key(DEV_KEY)
    }

    /// Starts Azurite whose `devstoreaccount1` has account key `key` (base64) instead of the
    /// well-known dev key, which it then refuses (Azurite's `AZURITE_ACCOUNTS`): a key that no
    /// other test hands to ebb.
    pub fn start_with_key(key: &str) -> Azurite {
        let bin = azurite_bin();
        if !bin.exists() {
            panic!("azurite not installed: run scripts/install-services.sh (looked for {})", bin.display());
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("azurite.log");
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log handle");
        let args = [
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "0",
            "--queueHost",
            "127.0.0.1",
            "--queuePort",
            "0",
            "--tableHost",
            "127.0.0.1",
            "--tablePort",
            "0",
            "--inMemoryPersistence",
            "--extentMemoryLimit",
            "256",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
        ];
        let mut cmd = Command::new(&bin);
        if key != DEV_KEY {
            cmd.env("AZURITE_ACCOUNTS", format!("{DEV_ACCOUNT}:{key}"));
        }
        let child = cmd
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let mut az = Azurite {
            child,
            _dir: dir,
            log,
            queue_port: 0,
            blob_port: 0,
            key: key.to_string(),
            http: reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("client"),
        };
        const MARK: &str = "Queue service is successfully listening at http://127.0.0.1:";
        const BLOB_MARK: &str = "Blob service is successfully listening at http://127.0.0.1:";
        let port_after = |text: &str, mark: &str| {
            text.find(mark).map(|i| {
                let digits: String = text[i + mark.len()..].chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u16>().expect("port in azurite log")
            })
        };
        let start = Instant::now();
        for _ in 0..(START_TIMEOUT.as_millis() / 50) {
            let text = std::fs::read_to_string(&az.log).unwrap_or_default();
            if let (Some(q), Some(b)) = (port_after(&text, MARK), port_after(&text, BLOB_MARK)) {
                az.queue_port = q;
                az.blob_port = b;
                return az;
            }
            if let Ok(Some(status)) = az.child.try_wait() {
                panic!("azurite exited ({status}) before listening:\n{text}");
            }
            if start.elapsed() > START_TIMEOUT {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "azurite did not listen within {START_TIMEOUT:?}:\n{}",
            std::fs::read_to_string(&az.log).unwrap_or_default()
        );
    }

    /// `http://127.0.0.1:<port>/devstoreaccount1` (path-style).
    pub fn queue_endpoint(&self) -> String {
        endpoint(self.queue_port)
    }

    /// The account key of this instance (base64).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The explicit dev connection string pointing at this instance.
    pub fn connection_string(&self) -> String {
        connection_string(self.queue_port, &self.key)
    }

    /// `http://127.0.0.1:<blob port>/devstoreaccount1`.
    pub fn blob_endpoint(&self) -> String {
        endpoint(self.blob_port)
    }

    /// A dev storage connection string for the blob service of this instance.
    pub fn blob_connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={};BlobEndpoint={};",
            self.key,
            self.blob_endpoint()
        )
    }

    pub async fn create_container(&self, container: &str) {
        let url = format!("{}/{container}?restype=container", self.blob_endpoint());
        let r = self.send_with(reqwest::Method::PUT, &url, None, &[]).await;
        assert!(r.status().as_u16() == 201, "create container {container}: {r:?}");
    }

    /// Uploads a block blob `name` (may hold `/`) with `body` and `x-ms-meta-*` `metadata`.
    pub async fn put_blob(&self, container: &str, name: &str, body: &str, metadata: &[(&str, &str)]) {
        let url = format!("{}/{container}/{name}", self.blob_endpoint());
        let mut extra = vec![("x-ms-blob-type".to_string(), "BlockBlob".to_string())];
        extra.extend(metadata.iter().map(|(k, v)| (format!("x-ms-meta-{k}"), v.to_string())));
        let r = self.send_with(reqwest::Method::PUT, &url, Some(body.to_string()), &extra).await;
        assert_eq!(r.status().as_u16(), 201, "put blob {container}/{name}: {r:?}");
    }

    pub async fn create_queue(&self, queue: &str) {
        let url = format!("{}/{queue}", self.queue_endpoint());
        let r = self.send(reqwest::Method::PUT, &url, None).await;
        assert!(r.status().as_u16() == 201 || r.status().as_u16() == 204, "create {queue}: {r:?}");
    }

    pub async fn put_messages(&self, queue: &str, n: usize) {
        let url = format!("{}/{queue}/messages", self.queue_endpoint());
        for i in 0..n {
            let body = format!("<QueueMessage><MessageText>bXNn{i}</MessageText></QueueMessage>");
            let r = self.send(reqwest::Method::POST, &url, Some(body)).await;
            assert_eq!(r.status().as_u16(), 201, "put message {i} into {queue}: {r:?}");
        }
    }

    /// Dequeues `m` messages (they stay in the queue, invisible for 10 minutes).
    pub async fn dequeue(&self, queue: &str, m: usize) {
        let url = format!("{}/{queue}/messages?numofmessages={m}&visibilitytimeout=600", self.queue_endpoint());
        let r = self.send(reqwest::Method::GET, &url, None).await;
        assert_eq!(r.status().as_u16(), 200, "dequeue from {queue}: {r:?}");
        let body = r.text().await.expect("body");
        assert_eq!(body.matches("<QueueMessage>").count(), m, "dequeued count: {body}");
    }

    /// A Shared Key signed request (Azure Storage's "Authorize with Shared Key").
    async fn send(&self, method: reqwest::Method, url: &str, body: Option<String>) -> reqwest::Response {
        self.send_with(method, url, body, &[]).await
    }

    /// A Shared Key signed request with extra `x-ms-*` headers (canonicalized, sorted).
    async fn send_with(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<String>,
        extra: &[(String, String)],
    ) -> reqwest::Response {
        let parsed = reqwest::Url::parse(url).expect("url");
        let date = http_date(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs());
        let mut resource = format!("/{DEV_ACCOUNT}{}", parsed.path());
        let mut query: Vec<(String, String)> =
            parsed.query_pairs().map(|(k, v)| (k.to_lowercase(), v.into_owned())).collect();
        query.sort();
        for (k, v) in query {
            resource.push_str(&format!("\n{k}:{v}"));
        }
        // Shared Key signs an empty Content-Length for a zero-length body (versions ≥ 2015-02-21).
        let (len, ct) = match &body {
            Some(b) if b.is_empty() => (String::new(), "application/xml"),
            Some(b) => (b.len().to_string(), "application/xml"),
            None => (String::new(), ""),
        };
        let mut ms: Vec<(String, String)> =
            vec![("x-ms-date".into(), date.clone()), ("x-ms-version".into(), VERSION.into())];
        ms.extend(extra.iter().map(|(k, v)| (k.to_lowercase(), v.clone())));
        ms.sort();
        let canonical: String = ms.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let sts = format!("{method}\n\n\n{len}\n\n{ct}\n\n\n\n\n\n\n{canonical}{resource}");
        let sig = AccountKey::from_base64(&self.key).expect("account key").sign(&sts);
        let mut req = self
            .http
            .request(method.clone(), url)
            .header("x-ms-date", &date)
            .header("x-ms-version", VERSION)
            .header("Authorization", format!("SharedKey {DEV_ACCOUNT}:{sig}"));
        for (k, v) in extra {
            req = req.header(k.as_str(), v.as_str());
        }
        req = match body {
            // reqwest sends no Content-Length for an empty body; the service requires one.
            Some(b) if b.is_empty() => req.header("Content-Type", ct).header("Content-Length", "0"),
            Some(b) => req.header("Content-Type", ct).body(b),
            None if method == reqwest::Method::PUT || method == reqwest::Method::POST => {
                req.header("Content-Length", "0")
            }
            None => req,
        };
        req.send().await.expect("azurite answers")
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn endpoint(port: u16) -> String {
    format!("http://127.0.0.1:{port}/{DEV_ACCOUNT}")
}

/// A dev connection string for `port` with `key` (base64).
pub fn connection_string(port: u16, key: &str) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={key};QueueEndpoint={};",
        endpoint(port)
    )
}

/// RFC 1123 (`Mon, 23 Nov 2026 00:35:57 GMT`).
fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let iso = iso8601(secs); // YYYY-MM-DDThh:mm:ssZ
    let month: usize = iso[5..7].parse().expect("month");
    format!(
        "{}, {} {} {} {} GMT",
        DAYS[((secs / 86_400) % 7) as usize],
        &iso[8..10],
        MONTHS[month - 1],
        &iso[0..4],
        &iso[11..19]
    )
}

/// An HTTP/1.1 proxy on `127.0.0.1:0` that forwards every request to `target_port` and counts
/// them: the number of requests that really reached the upstream.
pub struct CountingProxy {
    pub port: u16,
    count: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub async fn start(target_port: u16) -> CountingProxy {
        use axum::body::Body;
        use axum::extract::{Request, State};
        use axum::response::Response;

        #[derive(Clone)]
        struct St {
            count: Arc<AtomicUsize>,
            http: reqwest::Client,
            target: u16,
        }
        async fn forward(State(st): State<St>, req: Request) -> Response {
            st.count.fetch_add(1, Ordering::SeqCst);
            let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
            let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).expect("method");
            let mut out = st.http.request(method, format!("http://127.0.0.1:{}{path}", st.target));
            for (k, v) in req.headers() {
                if k.as_str() != "host" {
                    out = out.header(k.as_str(), v.as_bytes());
                }
            }
            let body = axum::body::to_bytes(req.into_body(), 16 << 20).await.unwrap_or_default();
            let answer = match out.body(body.to_vec()).send().await {
                Ok(a) => a,
                Err(e) => return Response::builder().status(502).body(Body::from(e.to_string())).expect("response"),
            };
            let mut resp = Response::builder().status(answer.status().as_u16());
            for (k, v) in answer.headers() {
                if !matches!(k.as_str(), "transfer-encoding" | "connection" | "content-length") {
                    resp = resp.header(k.as_str(), v.as_bytes());
                }
            }
            let bytes = answer.bytes().await.unwrap_or_default();
            resp.body(Body::from(bytes)).expect("response")
        }

        let count = Arc::new(AtomicUsize::new(0));
        let st = St {
            count: count.clone(),
            http: reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("client"),
            target: target_port,
        };
        let app = axum::Router::new().fallback(forward).with_state(st);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CountingProxy { port, count, task }
    }

    pub fn requests(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
