//! A real Kafka-protocol broker (tansu 0.6, `cargo install tansu --features dynostore,libsql`,
//! see `scripts/install-services.sh`) on a free loopback port, one per test, storing into SQLite
//! in its own temp dir; and rdkafka (bundled librdkafka) clients that drive it: create topics,
//! produce, commit or consume as a group, and read the broker's own watermarks and committed
//! offsets independently of the scaler.
//!
//! Every helper is a plain blocking call bounded by client timeouts (a few seconds each; the
//! group join ~0.4 s). They block the calling thread, so a test that also runs an in-process ebb
//! server should use `#[tokio::test(flavor = "multi_thread")]`.
//!
//! Tansu notes: always the `sqlite://` engine (the memory engine miscounts watermarks);
//! DescribeGroups is broken, so nothing here uses it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tempfile::TempDir;

/// How long tansu may take to accept connections (≈ 0.06 s idle).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Per broker request made by the helpers (metadata, commit, offset fetch, list offsets).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on waiting for a produce to be acknowledged (also `message.timeout.ms`).
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on `consume_and_commit` (join ~0.4 s, then fetches).
const CONSUME_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on closing a consumer (LeaveGroup); past it the client is leaked, not waited for.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A tansu broker child process; killed (by its `Child` handle) on drop.
pub struct Tansu {
    child: Child,
    dir: TempDir,
    log: PathBuf,
    port: u16,
    /// librdkafka settings the test's own clients add (e.g. TLS through a front).
    client: Vec<(String, String)>,
}

/// `TANSU_BIN`, else `$HOME/.cargo/bin/tansu`, else `tansu` on `PATH`.
fn tansu_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(bin);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let bin = PathBuf::from(home).join(".cargo/bin/tansu");
        if bin.is_file() {
            return bin;
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let bin = dir.join("tansu");
            if bin.is_file() {
                return bin;
            }
        }
    }
    panic!(
        "tansu not installed: run scripts/install-services.sh (or set TANSU_BIN); looked in $HOME/.cargo/bin and PATH"
    );
}

impl Tansu {
    /// Starts tansu on a free loopback port (retried on another port if it exits at once, e.g.
    /// because the port was taken); panics with its log if it does not accept connections in time.
    pub fn start() -> Tansu {
        Tansu::start_advertising(None)
    }

    /// Starts tansu advertising `advertised` (`host:port`, e.g. a proxy in front of it) instead
    /// of its own address, so clients reach every broker through that address after bootstrap.
    pub fn start_advertising(advertised: Option<&str>) -> Tansu {
        let bin = tansu_bin();
        if !bin.is_file() {
            panic!("tansu not found at {}: run scripts/install-services.sh", bin.display());
        }
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let log = dir.path().join("tansu.log");
            let out = File::create(&log).expect("log file");
            let err = out.try_clone().expect("log handle");
            let port = super::free_port();
            let url = format!("tcp://127.0.0.1:{port}");
            let advertised = advertised.map_or_else(|| url.clone(), |a| format!("tcp://{a}"));
            let child = Command::new(&bin)
                .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised])
                .args(["--storage-engine", "sqlite://tansu.db"])
                .env_remove("SCHEMA_REGISTRY")
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err))
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
            let mut tansu = Tansu { child, dir, log, port, client: Vec::new() };
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let start = Instant::now();
            for _ in 0..(START_TIMEOUT.as_millis() / 50) {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return tansu;
                }
                if let Ok(Some(status)) = tansu.child.try_wait() {
                    last_log = format!("tansu exited ({status}) before listening on {port}:\n{}", tansu.log());
                    break;
                }
                if start.elapsed() > START_TIMEOUT {
                    panic!("tansu did not listen on {port} within {START_TIMEOUT:?}:\n{}", tansu.log());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if tansu.child.try_wait().ok().flatten().is_none() {
                panic!("tansu did not listen on {port} within {START_TIMEOUT:?}:\n{}", tansu.log());
            }
        }
        panic!("tansu failed to start 3 times; last: {last_log}");
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers` (also the advertised listener).
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The broker's temp dir (holds `tansu.db` and `tansu.log`).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Kills the broker and reaps it (idempotent). Later helper calls fail after their timeouts.
    pub fn kill(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// Whether the broker process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    fn fail(&self, what: &str, err: impl std::fmt::Debug) -> ! {
        let log = self.log();
        let tail: String = {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        panic!("{what}: {err:?}\n--- tansu log (last 40 lines) ---\n{tail}");
    }

    /// Client settings shared by every helper client.
    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap())
            .set("socket.timeout.ms", "5000")
            .set("allow.auto.create.topics", "false")
            .set("log_level", "3");
        for (k, v) in &self.client {
            c.set(k, v);
        }
        c
    }

    /// Settings the test's own clients use from now on, over the defaults: for a broker that
    /// advertises a TLS front, `bootstrap.servers` and the TLS settings to reach it.
    pub fn set_client(&mut self, settings: &[(&str, &str)]) {
        self.client = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }

    /// A consumer for one-off requests; `group` sets `group.id` (it never joins the group).
    fn plain_consumer(&self, group: Option<&str>) -> BaseConsumer {
        let mut c = self.config();
        c.set("enable.auto.commit", "false").set("session.timeout.ms", "6000").set("heartbeat.interval.ms", "1000");
        if let Some(g) = group {
            c.set("group.id", g);
        }
        c.create().unwrap_or_else(|e| self.fail("creating consumer", e))
    }

    /// Creates `topic` with `partitions` partitions (replication 1) and waits until the broker's
    /// metadata shows all of them.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            self.config().create().unwrap_or_else(|e| self.fail("creating admin client", e));
        let opts = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT)).operation_timeout(Some(REQUEST_TIMEOUT));
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let results = futures::executor::block_on(admin.create_topics([&new], &opts))
            .unwrap_or_else(|e| self.fail(&format!("CreateTopics {topic}"), e));
        for r in results {
            if let Err(e) = r {
                self.fail(&format!("CreateTopics {topic}"), e);
            }
        }
        let consumer = self.plain_consumer(None);
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < REQUEST_TIMEOUT {
            match consumer.fetch_metadata(Some(topic), Duration::from_secs(3)) {
                Ok(md) => {
                    if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
                        if t.error().is_none() && t.partitions().len() == partitions as usize {
                            return;
                        }
                        last = format!("error {:?}, {} partitions", t.error(), t.partitions().len());
                    } else {
                        last = "topic missing from metadata".into();
                    }
                }
                Err(e) => last = format!("{e:?}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.fail(
            &format!("topic {topic} not in metadata with {partitions} partitions within {REQUEST_TIMEOUT:?}"),
            last,
        );
    }

    /// Produces exactly `n` records (`key-i`/`value-i`) to `topic`/`partition`, sent together so
    /// librdkafka batches them (linger 5 ms), then flushed; panics unless all `n` are acknowledged.
    pub fn produce(&self, topic: &str, partition: i32, n: usize) {
        let mut c = self.config();
        c.set("message.timeout.ms", PRODUCE_TIMEOUT.as_millis().to_string())
            .set("linger.ms", "5")
            .set("enable.idempotence", "false")
            .set("acks", "all");
        let producer: BaseProducer<Deliveries> =
            c.create_with_context(Deliveries::default()).unwrap_or_else(|e| self.fail("creating producer", e));
        for i in 0..n {
            let key = format!("key-{i}");
            let value = format!("value-{i}");
            let mut record = BaseRecord::to(topic).partition(partition).key(&key).payload(&value);
            // The local queue holds 100k messages; on a full queue, serve callbacks and retry.
            let start = Instant::now();
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r))
                        if start.elapsed() < PRODUCE_TIMEOUT =>
                    {
                        record = r;
                        producer.poll(Duration::from_millis(50));
                    }
                    Err((e, _)) => self.fail(&format!("send to {topic}/{partition}"), e),
                }
            }
        }
        if let Err(e) = producer.flush(PRODUCE_TIMEOUT) {
            self.fail(&format!("flushing {n} records to {topic}/{partition}"), e);
        }
        let d = producer.context().0.lock().expect("deliveries").clone();
        if d.ok != n || !d.errors.is_empty() {
            self.fail(&format!("produce {n} to {topic}/{partition}: {} acknowledged", d.ok), d.errors);
        }
    }

    /// Commits `offsets` (partition, next offset to read) of `topic` for `group` without joining
    /// the group or consuming (an OffsetCommit as a standalone member, generation -1).
    pub fn commit(&self, group: &str, topic: &str, offsets: &[(i32, i64)]) {
        let consumer = self.plain_consumer(Some(group));
        let mut tpl = TopicPartitionList::new();
        for &(p, o) in offsets {
            tpl.add_partition_offset(topic, p, Offset::Offset(o)).expect("offset");
        }
        let r = consumer.commit(&tpl, CommitMode::Sync);
        close_bounded(consumer);
        if let Err(e) = r {
            self.fail(&format!("OffsetCommit {group} {topic} {offsets:?}"), e);
        }
    }

    /// Joins `group` (subscribe, from the earliest offset when it has no commit), consumes up to
    /// `n` records of `topic` (stopping early when every assigned partition reaches its end, or
    /// after [`CONSUME_TIMEOUT`]), commits what it consumed and leaves. Returns how many.
    pub fn consume_and_commit(&self, group: &str, topic: &str, n: usize) -> usize {
        let mut c = self.config();
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            // tansu holds a fetch at the end of a partition for the whole max wait: keep it short.
            .set("fetch.wait.max.ms", "100")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000");
        let consumer: BaseConsumer = c.create().unwrap_or_else(|e| self.fail("creating consumer", e));
        consumer.subscribe(&[topic]).unwrap_or_else(|e| self.fail(&format!("subscribe {topic}"), e));
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut at_end: BTreeSet<i32> = BTreeSet::new();
        let mut consumed = 0;
        let start = Instant::now();
        while consumed < n && start.elapsed() < CONSUME_TIMEOUT {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.topic() == topic => {
                    consumed += 1;
                    next.insert(m.partition(), m.offset() + 1);
                    at_end.remove(&m.partition());
                }
                Some(Ok(_)) => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(Err(e)) => {
                    close_bounded(consumer);
                    self.fail(&format!("consuming {topic} as {group}"), e);
                }
                None => {}
            }
            let assigned: BTreeSet<i32> = consumer
                .assignment()
                .map(|a| a.elements().iter().filter(|e| e.topic() == topic).map(|e| e.partition()).collect())
                .unwrap_or_default();
            if !assigned.is_empty() && assigned.is_subset(&at_end) {
                break;
            }
        }
        if !next.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (&p, &o) in &next {
                tpl.add_partition_offset(topic, p, Offset::Offset(o)).expect("offset");
            }
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                close_bounded(consumer);
                self.fail(&format!("OffsetCommit {group} {topic} {next:?} after consuming"), e);
            }
        }
        close_bounded(consumer);
        consumed
    }

    /// The broker's (low, high) watermarks of `topic`/`partition` (ListOffsets).
    pub fn watermarks(&self, topic: &str, partition: i32) -> (i64, i64) {
        let consumer = self.plain_consumer(None);
        consumer
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .unwrap_or_else(|e| self.fail(&format!("ListOffsets {topic}/{partition}"), e))
    }

    /// The broker's committed offsets of `group` for `partitions` of `topic` (OffsetFetch), in
    /// the order asked; `None` where the group has no commit.
    pub fn committed(&self, group: &str, topic: &str, partitions: &[i32]) -> Vec<(i32, Option<i64>)> {
        let consumer = self.plain_consumer(Some(group));
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition(topic, p);
        }
        let r = consumer.committed_offsets(tpl, REQUEST_TIMEOUT);
        close_bounded(consumer);
        let got = r.unwrap_or_else(|e| self.fail(&format!("OffsetFetch {group} {topic}"), e));
        partitions
            .iter()
            .map(|&p| {
                let e = got
                    .find_partition(topic, p)
                    .unwrap_or_else(|| self.fail(&format!("OffsetFetch {group} {topic}: partition {p} missing"), &got));
                if let Err(err) = e.error() {
                    self.fail(&format!("OffsetFetch {group} {topic}/{p}"), err);
                }
                match e.offset() {
                    Offset::Offset(o) => (p, Some(o)),
                    Offset::Invalid => (p, None),
                    other => self.fail(&format!("OffsetFetch {group} {topic}/{p}: unexpected offset"), other),
                }
            })
            .collect()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Closes a consumer (LeaveGroup when it joined), waiting at most [`CLOSE_TIMEOUT`]; a consumer
/// that does not close in time (e.g. the broker was killed) is leaked rather than waited for,
/// since rdkafka's `Drop` would wait without bound.
fn close_bounded<C: rdkafka::consumer::ConsumerContext>(consumer: BaseConsumer<C>) {
    if consumer.close_queue().is_err() {
        std::mem::forget(consumer);
        return;
    }
    let start = Instant::now();
    while !consumer.closed() {
        if start.elapsed() > CLOSE_TIMEOUT {
            std::mem::forget(consumer);
            return;
        }
        let _ = consumer.poll(Duration::from_millis(100));
    }
}

/// Counts the producer's delivery reports.
#[derive(Default)]
struct Deliveries(Mutex<DeliveryCount>);

#[derive(Default, Clone, Debug)]
struct DeliveryCount {
    ok: usize,
    errors: Vec<String>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut d = self.0.lock().expect("deliveries");
        match result {
            Ok(_) => d.ok += 1,
            Err((e, m)) => d.errors.push(format!("{}/{}: {e:?}", m.topic(), m.partition())),
        }
    }
}
