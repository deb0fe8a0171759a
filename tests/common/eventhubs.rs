//! A wire-level double of the Azure Event Hubs runtime REST API (ATOM XML), on loopback.
//!
//! No Event Hubs emulator that serves this API runs on these machines, so this server answers
//! as the documented runtime API does: `GET /{hub}?api-version=2015-01` (`EventHubDescription`
//! with `PartitionIds`) and `GET /{hub}/consumergroups/{cg}/partitions/{id}?api-version=2015-01`
//! (`PartitionDescription`), bodies from `tests/fixtures/eventhubs/`. Every request must carry a
//! SAS token that the double verifies with the shared key (HMAC-SHA256 over `sr + "\n" + se`,
//! key as UTF-8 bytes, audience a prefix of the request URL); otherwise 401. ebb's client is the
//! production code; only `Endpoint=sb://127.0.0.1:<port>/` points it here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

pub const KEY_NAME: &str = "RootManageSharedAccessKey";
pub const KEY: &str = "ZWgta2V5LWZvci1lYmI=eh-double-5d2e";

struct State {
    hub: String,
    /// (begin, end) per partition id "0", "1", …
    partitions: Mutex<Vec<(i64, i64)>>,
    hub_requests: AtomicUsize,
    partition_requests: AtomicUsize,
    rejected: AtomicUsize,
    log: Mutex<Vec<String>>,
    /// The proxy's address when serving behind one (see [`EventHubsDouble::behind`]).
    public: Mutex<Option<SocketAddr>>,
}

pub struct EventHubsDouble {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EventHubsDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/eventhubs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

impl EventHubsDouble {
    pub async fn start(hub: &str, partitions: Vec<(i64, i64)>) -> EventHubsDouble {
        let state = Arc::new(State {
            hub: hub.to_string(),
            partitions: Mutex::new(partitions),
            hub_requests: AtomicUsize::new(0),
            partition_requests: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
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
        EventHubsDouble { addr, state, task }
    }

    /// Sets partition `id`'s (begin, end) sequence numbers: events enqueued since.
    pub fn set_partition(&self, id: usize, begin: i64, end: i64) {
        self.state.partitions.lock().unwrap()[id] = (begin, end);
    }

    /// `Endpoint=sb://127.0.0.1:<port>/;…;EntityPath=<hub>` with `key`.
    pub fn connection_string_with(&self, key: &str) -> String {
        format!(
            "Endpoint=sb://{}/;SharedAccessKeyName={KEY_NAME};SharedAccessKey={key};EntityPath={}",
            self.addr, self.state.hub
        )
    }

    pub fn connection_string(&self) -> String {
        self.connection_string_with(KEY)
    }

    /// Serves behind a proxy at `public`: SAS tokens are checked for that address, answers name
    /// it, and the returned connection string points there.
    pub fn behind(&self, public: SocketAddr) -> String {
        *self.state.public.lock().unwrap() = Some(public);
        format!(
            "Endpoint=sb://{public}/;SharedAccessKeyName={KEY_NAME};SharedAccessKey={KEY};EntityPath={}",
            self.state.hub
        )
    }

    /// The namespace FQDN as the checkpointers see it.
    pub fn ns(&self) -> String {
        self.addr.to_string()
    }

    pub fn hub_requests(&self) -> usize {
        self.state.hub_requests.load(Ordering::SeqCst)
    }

    pub fn partition_requests(&self) -> usize {
        self.state.partition_requests.load(Ordering::SeqCst)
    }

    pub fn rejected(&self) -> usize {
        self.state.rejected.load(Ordering::SeqCst)
    }

    pub fn log(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }
}

fn xml(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "application/atom+xml;type=entry;charset=utf-8")], body).into_response()
}

fn answer(state: &State, addr: SocketAddr, uri: &Uri, headers: &HeaderMap) -> Response {
    let query = uri.query().unwrap_or_default();
    state.log.lock().unwrap().push(format!("{}?{query}", uri.path()));
    let addr = state.public.lock().unwrap().unwrap_or(addr);
    let url = format!("http://{addr}{}?{query}", uri.path());
    if let Err(why) = verify_sas(headers.get("authorization"), &url) {
        state.rejected.fetch_add(1, Ordering::SeqCst);
        let body = fixture("error-401.xml");
        let body = if why == "signature" { body } else { body.replace("InvalidSignature", why) };
        return xml(StatusCode::UNAUTHORIZED, body);
    }
    if query != "api-version=2015-01" {
        return xml(StatusCode::BAD_REQUEST, "<Error><Code>400</Code><Detail>api-version</Detail></Error>".into());
    }
    let path = super::servicebus::percent_decode(uri.path());
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let parts = state.partitions.lock().unwrap().clone();
    let host = addr.to_string();
    match segs.as_slice() {
        [hub] if *hub == state.hub => {
            state.hub_requests.fetch_add(1, Ordering::SeqCst);
            let ids: String =
                (0..parts.len()).map(|i| format!("<d2p1:string>{i}</d2p1:string>")).collect::<Vec<_>>().join("");
            xml(
                StatusCode::OK,
                fixture("hub.xml")
                    .replace("{{HOST}}", &host)
                    .replace("{{HUB}}", hub)
                    .replace("{{COUNT}}", &parts.len().to_string())
                    .replace("{{PARTITION_IDS}}", &ids),
            )
        }
        [hub, "consumergroups", cg, "partitions", id] if *hub == state.hub => {
            state.partition_requests.fetch_add(1, Ordering::SeqCst);
            match id.parse::<usize>().ok().and_then(|i| parts.get(i)) {
                Some((begin, end)) => xml(
                    StatusCode::OK,
                    fixture("partition.xml")
                        .replace("{{HOST}}", &host)
                        .replace("{{HUB}}", hub)
                        .replace("{{CG}}", cg)
                        .replace("{{ID}}", id)
                        .replace("{{BEGIN}}", &begin.to_string())
                        .replace("{{END}}", &end.to_string()),
                ),
                None => xml(StatusCode::NOT_FOUND, fixture("error-404.xml")),
            }
        }
        _ => xml(StatusCode::NOT_FOUND, fixture("error-404.xml")),
    }
}

/// Checks `SharedAccessSignature sr=…&sig=…&se=…&skn=…` as Event Hubs does (same scheme as
/// Service Bus).
fn verify_sas(header: Option<&HeaderValue>, url: &str) -> Result<(), &'static str> {
    super::servicebus::verify_sas_with(header, url, KEY_NAME, KEY)
}
