//! A wire-level double of the Azure Service Bus management REST API (ATOM XML), on loopback.
//!
//! No Service Bus emulator runs on these machines (and the emulator omits `CountDetails`
//! anyway), so this server answers as the documented REST API does: `GET /{queue}`,
//! `GET /{topic}/Subscriptions/{sub}`, `GET /$Resources/Queues?$skip=&$top=` with
//! `api-version=2021-05`, ATOM bodies kept as files in `tests/fixtures/servicebus/`, an empty
//! feed (HTTP 200) for an unknown queue, `<Error>` bodies for 401/404/429. Every request must
//! carry a SAS token that this double verifies itself with the shared key (HMAC-SHA256 over
//! `sr + "\n" + se`, key as UTF-8 bytes): a wrong signature, key name, audience or an expired
//! token gets 401, as Service Bus answers. ebb's client code is the production code; only the
//! `Endpoint=sb://127.0.0.1:<port>/` of the connection string points it here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The SAS policy the double accepts.
pub const KEY_NAME: &str = "RootManageSharedAccessKey";
/// Its key (looks like base64, is used as raw bytes).
pub const KEY: &str = "dGVzdC1rZXktZm9yLWViYg==sb-double-7c1f";

/// What `GET /orders` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueAnswer {
    /// The queue entry with this ActiveMessageCount.
    Count(u64),
    /// The queue entry without `CountDetails` (Service Bus's throttled answer).
    NoCountDetails,
    /// HTTP 429 with `Retry-After: 1`.
    TooManyRequests,
}

struct State {
    queue: Mutex<QueueAnswer>,
    requests: AtomicUsize,
    log: Mutex<Vec<String>>,
    /// The address clients sign for when a proxy fronts the double (as Azure's front end does).
    public: Mutex<Option<SocketAddr>>,
}

/// A running double; stops when dropped.
pub struct ServiceBusDouble {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ServiceBusDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/servicebus/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

impl ServiceBusDouble {
    pub async fn start() -> ServiceBusDouble {
        let state = Arc::new(State {
            queue: Mutex::new(QueueAnswer::Count(42)),
            requests: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            public: Mutex::new(None),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let s = state.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let s = s.clone();
            async move { answer(&s, addr, &uri, &headers) }
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        ServiceBusDouble { addr, state, task }
    }

    /// A connection string for this double with `key`.
    pub fn connection_string_with(&self, key: &str) -> String {
        format!("Endpoint=sb://{}/;SharedAccessKeyName={KEY_NAME};SharedAccessKey={key}", self.addr)
    }

    pub fn connection_string(&self) -> String {
        self.connection_string_with(KEY)
    }

    /// Serves behind a proxy at `public`: SAS tokens are checked for that address, and the
    /// returned connection string names it.
    pub fn behind(&self, public: SocketAddr) -> String {
        *self.state.public.lock().unwrap() = Some(public);
        format!("Endpoint=sb://{public}/;SharedAccessKeyName={KEY_NAME};SharedAccessKey={KEY}")
    }

    pub fn set_queue(&self, answer: QueueAnswer) {
        *self.state.queue.lock().unwrap() = answer;
    }

    /// Requests served so far (any path, any status).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// `path?query` of every request so far.
    pub fn log(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }
}

fn xml(status: StatusCode, body: String) -> Response {
    let ct = if status.is_success() {
        "application/atom+xml;type=entry;charset=utf-8"
    } else {
        "application/xml; charset=utf-8"
    };
    (status, [("content-type", ct)], body).into_response()
}

fn answer(state: &State, addr: SocketAddr, uri: &Uri, headers: &HeaderMap) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let query = uri.query().unwrap_or_default();
    state.log.lock().unwrap().push(format!("{}?{query}", uri.path()));

    let addr = state.public.lock().unwrap().unwrap_or(addr);
    let url = format!("http://{addr}{}?{query}", uri.path());
    if let Err(why) = verify_sas(headers.get("authorization"), &url) {
        let body = fixture("error-401.xml");
        let body = if why == "signature" {
            body
        } else {
            body.replace("InvalidSignature: The token has an invalid signature.", &format!("InvalidToken: {why}."))
        };
        return xml(StatusCode::UNAUTHORIZED, body);
    }
    let params: Vec<(String, String)> = query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect();
    let param = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    if param("api-version") != Some("2021-05") {
        return xml(
            StatusCode::BAD_REQUEST,
            "<Error><Code>400</Code><Detail>api-version is missing or unknown</Detail></Error>".into(),
        );
    }

    match uri.path() {
        "/orders" => match *state.queue.lock().unwrap() {
            QueueAnswer::Count(n) => xml(
                StatusCode::OK,
                fixture("queue.xml").replace("<d2p1:ActiveMessageCount>42<", &format!("<d2p1:ActiveMessageCount>{n}<")),
            ),
            QueueAnswer::NoCountDetails => xml(StatusCode::OK, fixture("queue-no-countdetails.xml")),
            QueueAnswer::TooManyRequests => {
                let mut r = xml(StatusCode::TOO_MANY_REQUESTS, fixture("error-429.xml"));
                r.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
                r
            }
        },
        "/events/Subscriptions/billing" => xml(StatusCode::OK, fixture("subscription.xml")),
        "/events/Subscriptions/missing" => xml(StatusCode::NOT_FOUND, fixture("error-404.xml")),
        "/$Resources/Queues" | "/%24Resources/Queues" => {
            if param("$top") != Some("100") {
                return xml(
                    StatusCode::BAD_REQUEST,
                    "<Error><Code>400</Code><Detail>expected $top=100</Detail></Error>".into(),
                );
            }
            // Page 1 holds 3 entries and a next link to `$skip=3`.
            match param("$skip") {
                None | Some("0") => xml(StatusCode::OK, fixture("queues-page1.xml")),
                Some("3") => xml(StatusCode::OK, fixture("queues-page2.xml")),
                Some(_) => xml(StatusCode::OK, fixture("empty-feed.xml")),
            }
        }
        // Service Bus answers a GET of an unknown entity with 200 and an empty feed.
        _ => xml(StatusCode::OK, fixture("empty-feed.xml")),
    }
}

/// Checks `SharedAccessSignature sr=…&sig=…&se=…&skn=…` as Service Bus does.
fn verify_sas(header: Option<&HeaderValue>, url: &str) -> Result<(), &'static str> {
    verify_sas_with(header, url, KEY_NAME, KEY)
}

/// Checks a `SharedAccessSignature sr=…&sig=…&se=…&skn=…` header as Service Bus and Event Hubs
/// do: known key name, not expired, audience covering `url`, HMAC-SHA256 of the key's UTF-8 bytes.
pub fn verify_sas_with(header: Option<&HeaderValue>, url: &str, key_name: &str, key: &str) -> Result<(), &'static str> {
    let header = header.and_then(|h| h.to_str().ok()).ok_or("missing Authorization header")?;
    let token = header.strip_prefix("SharedAccessSignature ").ok_or("not a SharedAccessSignature")?;
    let mut fields = std::collections::HashMap::new();
    for part in token.split('&') {
        let (k, v) = part.split_once('=').ok_or("malformed token")?;
        fields.insert(k, v);
    }
    let (Some(sr), Some(sig), Some(se), Some(skn)) =
        (fields.get("sr"), fields.get("sig"), fields.get("se"), fields.get("skn"))
    else {
        return Err("token lacks sr, sig, se or skn");
    };
    if percent_decode(skn) != key_name {
        return Err("unknown key name");
    }
    let expiry: u64 = se.parse().map_err(|_| "bad se")?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    if expiry <= now {
        return Err("token expired");
    }
    let audience = percent_decode(sr).to_lowercase();
    if !url.to_lowercase().starts_with(&audience) {
        return Err("token audience does not cover this resource");
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{sr}\n{se}").as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if percent_decode(sig) != want {
        return Err("signature");
    }
    Ok(())
}

/// `%XX` and `+` decoding (form encoding).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
