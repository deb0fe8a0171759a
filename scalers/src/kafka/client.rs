//! The librdkafka side (feature `kafka`): one client per cluster and credentials, shared by
//! every consumer group polled on it.
//!
//! rdkafka's `AdminClient` has no ListConsumerGroupOffsets or ListOffsets, so those two admin
//! requests go through librdkafka's C API here. Each client has one thread that polls one
//! event queue: admin results (handed to the waiting poll through a oneshot channel whose
//! sender rides in the request's opaque pointer), logs, errors and OAUTHBEARER token refreshes
//! (librdkafka's main queue is forwarded to it). Metadata is rdkafka's blocking call, run with
//! `spawn_blocking`. Every request carries a timeout, and every wait is bounded too.
//!
//! The only module allowed `unsafe` (the workspace denies it); each block says why it is sound.
#![allow(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, c_char, c_void};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr, RDKafkaType};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::{Connection, OAuth, PartitionOffsets, PollTarget, REQUEST_TIMEOUT, Sasl, fetch_token};
use crate::{ConfigError, ConfigErrors, Measurement, PollError, Poller, ScalerContext};

/// Builds the poller of one (cluster, group, topic) on the cluster's client, shared through
/// the context by every source on that cluster with the same security settings.
pub(super) fn poller(ctx: &Arc<ScalerContext>, target: Arc<PollTarget>) -> Result<Arc<dyn Poller>, ConfigErrors> {
    let conn = &target.connection;
    let client = ctx
        .shared(&conn.key(), || KafkaClient::new(conn))
        .map_err(|e| ConfigError::new("bootstrapServers", format!("cannot create the Kafka client: {e}")))?;
    Ok(Arc::new(KafkaPoller { ctx: ctx.clone(), client, target, previous: Mutex::new(HashMap::new()) }))
}

/// One librdkafka handle and the thread that polls its event queue.
struct KafkaClient {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

struct Inner {
    queue: Queue,
    client: Client<DefaultClientContext>,
    stop: AtomicBool,
    oauth: Option<OAuth>,
}

/// librdkafka queues are thread-safe.
struct Queue(*mut rd::rd_kafka_queue_t);
// SAFETY: librdkafka's queue functions lock internally ("all of the API is thread-safe"); the
// pointer is destroyed only in `Inner::drop`, after the event thread has stopped using it.
unsafe impl Send for Queue {}
// SAFETY: as for `Send`: concurrent `rd_kafka_queue_poll` and admin calls on one queue are safe.
unsafe impl Sync for Queue {}

impl Drop for Inner {
    fn drop(&mut self) {
        // Unforward the main queue before our queue goes; the handle itself drops after this.
        // SAFETY: `client` is still alive (fields drop after this body), so its main queue can be
        // taken and released; `queue` was created by `rd_kafka_queue_new` and is destroyed once.
        unsafe {
            let main = rd::rd_kafka_queue_get_main(self.client.native_ptr());
            rd::rd_kafka_queue_forward(main, ptr::null_mut());
            rd::rd_kafka_queue_destroy(main);
            rd::rd_kafka_queue_destroy(self.queue.0);
        }
    }
}

/// An owned librdkafka event.
struct Event(*mut rd::rd_kafka_event_t);
// SAFETY: an event is owned by exactly one `Event` (moved through the reply channel, never
// shared), and librdkafka events may be read and destroyed from any thread.
unsafe impl Send for Event {}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `rd_kafka_queue_poll` (non-null) and is destroyed once.
        unsafe { rd::rd_kafka_event_destroy(self.0) }
    }
}

type Reply = oneshot::Sender<Event>;

impl KafkaClient {
    fn new(conn: &Connection) -> Result<Self, String> {
        let cfg = client_config(conn);
        let native = cfg.create_native_config().map_err(|e| e.to_string())?;
        // SAFETY: `native` owns a valid configuration that no handle uses yet.
        unsafe {
            rd::rd_kafka_conf_set_events(
                native.ptr(),
                rd::RD_KAFKA_EVENT_LOG | rd::RD_KAFKA_EVENT_ERROR | rd::RD_KAFKA_EVENT_OAUTHBEARER_TOKEN_REFRESH,
            );
        }
        // Admin requests need a handle of either type; a producer is the lighter one.
        let client = Client::new(&cfg, native, RDKafkaType::RD_KAFKA_PRODUCER, DefaultClientContext)
            .map_err(|e| e.to_string())?;
        // SAFETY: `rk` is the live handle `client` owns; the main queue reference taken here is
        // released at once, the new queue is owned by `Queue` and destroyed in `Inner::drop`.
        let queue = unsafe {
            let rk = client.native_ptr();
            let queue = rd::rd_kafka_queue_new(rk);
            let main = rd::rd_kafka_queue_get_main(rk);
            rd::rd_kafka_queue_forward(main, queue);
            rd::rd_kafka_queue_destroy(main);
            Queue(queue)
        };
        let oauth = match &conn.sasl {
            Some(Sasl::OAuthBearer(o)) => Some(o.clone()),
            _ => None,
        };
        let inner = Arc::new(Inner { queue, client, stop: AtomicBool::new(false), oauth });
        let looped = inner.clone();
        let thread = std::thread::Builder::new()
            .name("ebb-kafka".into())
            .spawn(move || event_loop(&looped))
            .map_err(|e| format!("cannot start the client thread: {e}"))?;
        Ok(Self { inner, thread: Some(thread) })
    }
}

impl Drop for KafkaClient {
    fn drop(&mut self) {
        // Destroying a librdkafka handle blocks while its broker threads end: not on a runtime
        // worker.
        let inner = self.inner.clone();
        let thread = self.thread.take();
        let _ = std::thread::Builder::new().name("ebb-kafka-close".into()).spawn(move || {
            inner.stop.store(true, Ordering::Relaxed);
            if let Some(t) = thread {
                let _ = t.join();
            }
            drop(inner);
        });
    }
}

fn client_config(conn: &Connection) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", conn.bootstrap_servers.join(","))
        .set("client.id", "ebb")
        // A scaler must never create the topics it asks about.
        .set("allow.auto.create.topics", "false")
        .set("socket.timeout.ms", "10000")
        .set("socket.connection.setup.timeout.ms", "10000")
        // librdkafka's default lets reconnects back off to 10 s; a scaler polls every few
        // seconds and must see a healed broker within about one interval.
        .set("reconnect.backoff.max.ms", "1000")
        .set_log_level(RDKafkaLogLevel::Warning);
    let protocol = match (conn.tls.is_some(), conn.sasl.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    cfg.set("security.protocol", protocol);
    if let Some(tls) = &conn.tls {
        match &tls.ca {
            Some(ca) => cfg.set("ssl.ca.pem", ca),
            None => cfg.set("ssl.ca.location", "probe"),
        };
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            cfg.set("ssl.certificate.pem", cert).set("ssl.key.pem", key);
        }
        if let Some(p) = &tls.key_password {
            cfg.set("ssl.key.password", p);
        }
        if tls.unsafe_ssl {
            cfg.set("enable.ssl.certificate.verification", "false")
                .set("ssl.endpoint.identification.algorithm", "none");
        }
    }
    if let Some(sasl) = &conn.sasl {
        cfg.set("sasl.mechanism", sasl.mechanism());
        match sasl {
            Sasl::Plain { username, password }
            | Sasl::ScramSha256 { username, password }
            | Sasl::ScramSha512 { username, password } => {
                cfg.set("sasl.username", username).set("sasl.password", password);
            }
            // Tokens come from the refresh events handled in `event_loop`.
            Sasl::OAuthBearer(_) => {}
        }
    }
    cfg
}

// ---------------------------------------------------------------------------------------------
// The event thread
// ---------------------------------------------------------------------------------------------

fn event_loop(inner: &Inner) {
    let mut token_runtime: Option<tokio::runtime::Runtime> = None;
    while !inner.stop.load(Ordering::Relaxed) {
        // SAFETY: the queue lives as long as `inner`, which this thread holds.
        let ev = unsafe { rd::rd_kafka_queue_poll(inner.queue.0, 100) };
        if ev.is_null() {
            continue;
        }
        let ev = Event(ev);
        // SAFETY: `ev` is a live, non-null event owned here.
        match unsafe { rd::rd_kafka_event_type(ev.0) } {
            rd::RD_KAFKA_EVENT_LISTCONSUMERGROUPOFFSETS_RESULT | rd::RD_KAFKA_EVENT_LISTOFFSETS_RESULT => {
                // SAFETY: `ev` is live.
                let opaque = unsafe { rd::rd_kafka_event_opaque(ev.0) };
                if !opaque.is_null() {
                    // SAFETY: `submit` put a `Box<Reply>` there and each result arrives once.
                    let reply = unsafe { Box::from_raw(opaque as *mut Reply) };
                    let _ = reply.send(ev);
                }
            }
            rd::RD_KAFKA_EVENT_LOG => {
                let (mut fac, mut msg, mut level) = (ptr::null(), ptr::null(), 0);
                // SAFETY: `ev` is a live log event; the out-pointers are valid locals.
                if unsafe { rd::rd_kafka_event_log(ev.0, &mut fac, &mut msg, &mut level) } == 0 {
                    // SAFETY: on success both point at strings owned by the live `ev`.
                    let (fac, msg) = unsafe { (cstr(fac), cstr(msg)) };
                    tracing::debug!(level, facility = %fac, "librdkafka: {msg}");
                }
            }
            rd::RD_KAFKA_EVENT_ERROR => {
                // SAFETY: `ev` is live; the string it returns lives as long as the event.
                let msg = unsafe { cstr(rd::rd_kafka_event_error_string(ev.0)) };
                tracing::debug!("librdkafka error: {msg}");
            }
            rd::RD_KAFKA_EVENT_OAUTHBEARER_TOKEN_REFRESH => refresh_token(inner, &mut token_runtime),
            _ => {}
        }
    }
}

/// A copy of a C string (empty for null).
///
/// # Safety
/// `p` is null or a NUL-terminated string that stays alive for the call.
unsafe fn cstr(p: *const c_char) -> String {
    // SAFETY: the caller's contract.
    if p.is_null() { String::new() } else { unsafe { CStr::from_ptr(p) }.to_string_lossy().trim().to_owned() }
}

/// Answers librdkafka's OAUTHBEARER refresh request with a client-credentials token.
fn refresh_token(inner: &Inner, runtime: &mut Option<tokio::runtime::Runtime>) {
    let rk = inner.client.native_ptr();
    let fail = |why: &str| {
        let why = CString::new(why.replace('\0', " ")).unwrap_or_default();
        // SAFETY: `rk` is the live handle; `why` outlives the call, which copies it.
        unsafe { rd::rd_kafka_oauthbearer_set_token_failure(rk, why.as_ptr()) };
    };
    let Some(oauth) = &inner.oauth else { return fail("no OAuth settings") };
    if runtime.is_none() {
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => *runtime = Some(rt),
            Err(e) => return fail(&format!("cannot start the token runtime: {e}")),
        }
    }
    let Some(rt) = runtime.as_ref() else { return };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let token = rt.block_on(async {
        let http = reqwest::Client::builder().build().map_err(|e| PollError::Connect(e.to_string()))?;
        fetch_token(&http, oauth, now_ms).await
    });
    let token = match token {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "Kafka OAUTHBEARER token refresh failed");
            return fail(&e.to_string());
        }
    };
    let (Ok(value), Ok(principal)) = (CString::new(token.value), CString::new(oauth.client_id.clone())) else {
        return fail("token or client id holds a NUL byte");
    };
    let ext: Vec<CString> =
        oauth.extensions.iter().flat_map(|(k, v)| [k, v]).filter_map(|s| CString::new(s.as_str()).ok()).collect();
    let mut ext_ptrs: Vec<*const c_char> = ext.iter().map(|s| s.as_ptr()).collect();
    let mut err = [0 as c_char; 512];
    // SAFETY: every pointer is to a CString or buffer alive for the whole call (librdkafka copies
    // them); `ext_ptrs` holds key/value pairs, its length even, as the API requires.
    let code = unsafe {
        rd::rd_kafka_oauthbearer_set_token(
            rk,
            value.as_ptr(),
            token.expires_at_ms,
            principal.as_ptr(),
            if ext_ptrs.is_empty() { ptr::null_mut() } else { ext_ptrs.as_mut_ptr() },
            ext_ptrs.len(),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if code != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        // SAFETY: librdkafka writes a NUL-terminated message into `err` (zeroed beforehand).
        let msg = unsafe { cstr(err.as_ptr()) };
        tracing::warn!("librdkafka refused the OAUTHBEARER token: {msg}");
        fail(&msg);
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// A `(topic, partition) → offset` answer.
type Offsets = HashMap<(Arc<str>, i32), i64>;

/// A librdkafka topic-partition list we own.
struct PartitionList(*mut rd::rd_kafka_topic_partition_list_t);

impl PartitionList {
    fn new(parts: &[(Arc<str>, i32)], offset: Option<i64>) -> Result<Self, PollError> {
        // SAFETY: allocates a list owned (and destroyed) by `PartitionList`.
        let list = PartitionList(unsafe { rd::rd_kafka_topic_partition_list_new(parts.len() as i32) });
        for (topic, partition) in parts {
            let t = CString::new(topic.as_bytes()).map_err(|_| PollError::Rejected("topic holds a NUL byte".into()))?;
            // SAFETY: `list` is live; the topic string is copied by librdkafka.
            let elem = unsafe { rd::rd_kafka_topic_partition_list_add(list.0, t.as_ptr(), *partition) };
            if let Some(o) = offset {
                // SAFETY: `_add` returns a pointer to the element it just appended, never null.
                unsafe { (*elem).offset = o };
            }
        }
        Ok(list)
    }
}

// SAFETY: owned by one task at a time and never shared; librdkafka lists are plain heap data.
unsafe impl Send for PartitionList {}

impl Drop for PartitionList {
    fn drop(&mut self) {
        // SAFETY: created by `_list_new`, destroyed once here.
        unsafe { rd::rd_kafka_topic_partition_list_destroy(self.0) }
    }
}

/// Reads a result list: `(topic, partition) → offset`, failing on the first partition error.
///
/// # Safety
/// `list` must be a valid list owned by a live event.
unsafe fn read_list(list: *const rd::rd_kafka_topic_partition_list_t, what: &str) -> Result<Offsets, PollError> {
    let mut out = HashMap::new();
    if list.is_null() {
        return Ok(out);
    }
    // SAFETY: the caller guarantees `list` is valid; `elems` holds `cnt` elements.
    let (elems, n) = unsafe { ((*list).elems, (*list).cnt.max(0) as usize) };
    for i in 0..n {
        // SAFETY: `i < cnt`, and the list outlives this borrow (the caller holds its event).
        let e = unsafe { &*elems.add(i) };
        // SAFETY: the element's topic is a string owned by the list.
        let topic: Arc<str> = unsafe { cstr(e.topic) }.into();
        if e.err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(kafka_error(e.err.into(), &format!("{what} for {topic}/{}", e.partition)));
        }
        out.insert((topic, e.partition), e.offset);
    }
    Ok(out)
}

fn kafka_error(code: RDKafkaErrorCode, context: &str) -> PollError {
    use RDKafkaErrorCode as C;
    let detail = format!("{context}: {code}");
    match code {
        C::OperationTimedOut | C::RequestTimedOut => PollError::Timeout(REQUEST_TIMEOUT),
        C::BrokerTransportFailure | C::AllBrokersDown | C::Resolve | C::SSL | C::BrokerNotAvailable => {
            PollError::Connect(detail)
        }
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition | C::GroupIdNotFound => {
            PollError::NotFound(detail)
        }
        _ => PollError::Protocol { code: format!("{code:?}"), detail },
    }
}

impl KafkaClient {
    /// Sends one admin request with a boxed reply sender as its opaque.
    fn submit(
        &self,
        op: rd::rd_kafka_admin_op_t,
        call: impl FnOnce(*mut rd::rd_kafka_t, *const rd::rd_kafka_AdminOptions_t, *mut rd::rd_kafka_queue_t),
    ) -> oneshot::Receiver<Event> {
        let (tx, rx) = oneshot::channel::<Event>();
        let rk = self.inner.client.native_ptr();
        // SAFETY: `rk` and the queue are live for as long as `self`; the options are created and
        // destroyed here (librdkafka copies them into the request). The boxed sender is taken
        // back exactly once, by the event thread, from the one result event of the request.
        unsafe {
            let opts = rd::rd_kafka_AdminOptions_new(rk, op);
            let mut err = [0 as c_char; 256];
            rd::rd_kafka_AdminOptions_set_request_timeout(
                opts,
                REQUEST_TIMEOUT.as_millis() as i32,
                err.as_mut_ptr(),
                err.len(),
            );
            rd::rd_kafka_AdminOptions_set_opaque(opts, Box::into_raw(Box::new(tx)) as *mut c_void);
            call(rk, opts, self.inner.queue.0);
            rd::rd_kafka_AdminOptions_destroy(opts);
        }
        rx
    }

    async fn wait(rx: oneshot::Receiver<Event>, what: &str) -> Result<Event, PollError> {
        let ev = match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), rx).await {
            Ok(Ok(ev)) => ev,
            Ok(Err(_)) => return Err(PollError::Connect(format!("{what}: the Kafka client closed"))),
            Err(_) => return Err(PollError::Timeout(REQUEST_TIMEOUT)),
        };
        // SAFETY: `ev` is a live event owned here.
        let err = unsafe { rd::rd_kafka_event_error(ev.0) };
        if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            // SAFETY: as above; the string lives as long as `ev`.
            let msg = unsafe { cstr(rd::rd_kafka_event_error_string(ev.0)) };
            return Err(kafka_error(err.into(), &format!("{what} ({msg})")));
        }
        Ok(ev)
    }

    /// OffsetFetch: the group's committed offsets for `parts`, or for every partition it has
    /// committed when `parts` is `None`. Partitions without a commit are absent or negative.
    async fn committed(&self, group: &str, parts: Option<&[(Arc<str>, i32)]>) -> Result<Offsets, PollError> {
        let group_c = CString::new(group).map_err(|_| PollError::Rejected("consumer group holds a NUL byte".into()))?;
        let list = parts.map(|p| PartitionList::new(p, None)).transpose()?;
        // SAFETY: `submit` passes a live handle, options and queue; `group_c` and `list` outlive
        // the call (librdkafka copies the request), which is destroyed after it.
        let rx =
            self.submit(rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPOFFSETS, |rk, opts, q| unsafe {
                let mut req = rd::rd_kafka_ListConsumerGroupOffsets_new(
                    group_c.as_ptr(),
                    list.as_ref().map_or(ptr::null(), |l| l.0),
                );
                rd::rd_kafka_ListConsumerGroupOffsets(rk, &mut req, 1, opts, q);
                rd::rd_kafka_ListConsumerGroupOffsets_destroy(req);
            });
        let ev = Self::wait(rx, "OffsetFetch").await?;
        // SAFETY: `ev` is live for this block and owns everything read from it; each pointer is
        // checked for null before it is followed.
        unsafe {
            let res = rd::rd_kafka_event_ListConsumerGroupOffsets_result(ev.0);
            if res.is_null() {
                return Err(PollError::Malformed("OffsetFetch answered without a result".into()));
            }
            let mut n = 0usize;
            let groups = rd::rd_kafka_ListConsumerGroupOffsets_result_groups(res, &mut n);
            if groups.is_null() || n != 1 {
                return Err(PollError::Malformed(format!("OffsetFetch answered for {n} groups, not 1")));
            }
            let g = *groups;
            let gerr = rd::rd_kafka_group_result_error(g);
            if !gerr.is_null() {
                let msg = cstr(rd::rd_kafka_error_string(gerr));
                return Err(kafka_error(
                    rd::rd_kafka_error_code(gerr).into(),
                    &format!("OffsetFetch for group {group} ({msg})"),
                ));
            }
            read_list(rd::rd_kafka_group_result_partitions(g), "OffsetFetch")
        }
    }

    /// ListOffsets (latest): the log-end offset of every partition.
    async fn latest(&self, parts: &[(Arc<str>, i32)]) -> Result<Offsets, PollError> {
        if parts.is_empty() {
            return Ok(HashMap::new());
        }
        let list = PartitionList::new(parts, Some(rd::rd_kafka_OffsetSpec_t::RD_KAFKA_OFFSET_SPEC_LATEST as i64))?;
        // SAFETY: `submit` passes a live handle, options and queue; `list` outlives the call.
        let rx = self.submit(rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_LISTOFFSETS, |rk, opts, q| unsafe {
            rd::rd_kafka_ListOffsets(rk, list.0, opts, q);
        });
        let ev = Self::wait(rx, "ListOffsets").await?;
        let mut out = HashMap::new();
        // SAFETY: `ev` is live for this block and owns the result; `infos` holds `n` entries and
        // each topic-partition pointer is checked for null.
        unsafe {
            let res = rd::rd_kafka_event_ListOffsets_result(ev.0);
            if res.is_null() {
                return Err(PollError::Malformed("ListOffsets answered without a result".into()));
            }
            let mut n = 0usize;
            let infos = rd::rd_kafka_ListOffsets_result_infos(res, &mut n);
            for i in 0..n {
                let tp = rd::rd_kafka_ListOffsetsResultInfo_topic_partition(*infos.add(i));
                if tp.is_null() {
                    continue;
                }
                let e = &*tp;
                let topic: Arc<str> = cstr(e.topic).into();
                if e.err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
                    return Err(kafka_error(e.err.into(), &format!("ListOffsets for {topic}/{}", e.partition)));
                }
                out.insert((topic, e.partition), e.offset);
            }
        }
        Ok(out)
    }

    /// Metadata for one topic: its partition ids.
    async fn partitions(self: &Arc<Self>, topic: &str) -> Result<Vec<i32>, PollError> {
        let this = self.clone();
        let name = topic.to_owned();
        let call = tokio::task::spawn_blocking(move || -> Result<Vec<i32>, PollError> {
            let md = this.inner.client.fetch_metadata(Some(&name), REQUEST_TIMEOUT).map_err(|e| match e {
                KafkaError::MetadataFetch(code) => kafka_error(code, &format!("Metadata for {name}")),
                other => PollError::Connect(format!("Metadata for {name}: {other}")),
            })?;
            let t = md
                .topics()
                .iter()
                .find(|t| t.name() == name)
                .ok_or_else(|| PollError::NotFound(format!("topic {name} is not in the metadata")))?;
            if let Some(err) = t.error() {
                return Err(kafka_error(err.into(), &format!("Metadata for {name}")));
            }
            Ok(t.partitions().iter().map(|p| p.id()).collect())
        });
        match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), call).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(PollError::Connect(format!("Metadata task failed: {e}"))),
            Err(_) => Err(PollError::Timeout(REQUEST_TIMEOUT)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Poller
// ---------------------------------------------------------------------------------------------

struct KafkaPoller {
    ctx: Arc<ScalerContext>,
    client: Arc<KafkaClient>,
    target: Arc<PollTarget>,
    /// Committed offsets seen by the previous poll (`excludePersistentLag`).
    previous: Mutex<HashMap<(Arc<str>, i32), i64>>,
}

#[async_trait::async_trait]
impl Poller for KafkaPoller {
    async fn poll(&self) -> Result<Measurement, PollError> {
        let span = tracing::debug_span!("kafka_poll", group = %self.target.group, topic = ?self.target.topic);
        self.measure().instrument(span).await
    }
}

impl KafkaPoller {
    async fn measure(&self) -> Result<Measurement, PollError> {
        let t = &self.target;
        let (parts, committed) = match &t.topic {
            Some(topic) => {
                let ids = self.client.partitions(topic).await?;
                let name: Arc<str> = topic.as_str().into();
                let parts: Vec<(Arc<str>, i32)> =
                    ids.into_iter().filter(|p| t.wants(*p)).map(|p| (name.clone(), p)).collect();
                if parts.is_empty() {
                    return Err(PollError::Rejected(format!(
                        "expected at least one active partition within the topic '{topic}'"
                    )));
                }
                let (committed, latest) =
                    tokio::try_join!(self.client.committed(&t.group, Some(&parts)), self.client.latest(&parts))?;
                return Ok(self.assemble(&parts, &committed, &latest));
            }
            None => {
                // Without a topic: the group's committed partitions name the topics, then
                // Metadata for those topics only gives every partition to count.
                let committed = self.client.committed(&t.group, None).await?;
                let topics: HashSet<Arc<str>> = committed.keys().map(|(t, _)| t.clone()).collect();
                let mut parts = Vec::new();
                let lists = self
                    .ctx
                    .bounded_requests(topics.iter().cloned(), |name| async move { self.client.partitions(&name).await })
                    .await?;
                for (name, ids) in topics.iter().zip(lists) {
                    if ids.is_empty() {
                        return Err(PollError::Rejected(format!(
                            "expected at least one active partition within the topic '{name}'"
                        )));
                    }
                    parts.extend(ids.into_iter().map(|p| (name.clone(), p)));
                }
                (parts, committed)
            }
        };
        let latest = self.client.latest(&parts).await?;
        Ok(self.assemble(&parts, &committed, &latest))
    }

    /// One entry per partition the ListOffsets answer holds (KEDA iterates that answer), in
    /// topic and partition order.
    fn assemble(&self, parts: &[(Arc<str>, i32)], committed: &Offsets, latest: &Offsets) -> Measurement {
        let mut previous = self.previous.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(parts.len());
        for key in parts {
            let Some(&end) = latest.get(key) else { continue };
            let committed = committed.get(key).copied().filter(|o| *o >= 0);
            let unchanged = match committed {
                Some(c) => previous.insert(key.clone(), c) == Some(c),
                None => false,
            };
            out.push(PartitionOffsets { topic: key.0.clone(), partition: key.1, committed, latest: end, unchanged });
        }
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Measurement::Offsets(out.into())
    }
}
