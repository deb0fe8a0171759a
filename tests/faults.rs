//! Faults under load. Every source ebb polls sits behind a fault-injecting proxy
//! (`common::faults`): a real Prometheus, a real Azurite queue, the Service Bus and Event Hubs
//! wire doubles (Event Hubs checkpoints in real Azurite blobs) behind the HTTP proxy, and, with
//! the `kafka` feature, a real tansu broker behind the TCP proxy (advertising the proxy, so
//! every broker connection goes through it). KEDA-style load keeps cycling through
//! GetMetricSpec → GetMetrics → IsActive on several ScaledObjects per source, with KEDA's 3 s
//! deadline. Each source goes through its faults one after the other: slow, reset, truncated,
//! 500, 429, 503 and garbage (Kafka: slow, reset, truncated and garbage; HTTP statuses do not
//! exist on its wire). One test per source alone (`<source>_every_fault_alone_…`), with every
//! other source under the same load and required to stay exact (not even UNAVAILABLE); and one
//! test with every source faulted at the same time. Each test has its own servers, proxies and
//! ebb ([`Rig`]). Shown for every fault:
//! - no hung RPC: no deadline is exceeded;
//! - the last good value is served while it is inside the staleness bound;
//! - then UNAVAILABLE, and never IsActive=false or a made-up value;
//! - recovery once the source heals, within one polling interval (1 s) plus the poll itself,
//!   or the throttling wait after 429/503.

// Starts real servers (scripts/install-services.sh): built with `--features integration`,
// which scripts/test.sh (and so CI) turns on.
#![cfg(feature = "integration")]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::PromStack;
use common::azurite::Azurite;
use common::ebb::{Keda, prom_metadata, so_owned, start_ebb_with};
use common::eventhubs::EventHubsDouble;
use common::faults::{Fault, FaultProxy};
use common::servicebus::ServiceBusDouble;
use common::within;
use ebb::engine::EngineConfig;
use tonic::Code;

const TEST_LIMIT: Duration = Duration::from_secs(480);
const HTTP_FAULTS: &[Fault] = &[
    Fault::Slow(Duration::from_secs(6)),
    Fault::Reset,
    Fault::Truncate,
    Fault::Status(500),
    Fault::Status(429),
    Fault::Status(503),
    Fault::Garbage,
];
#[cfg(feature = "kafka")]
const TCP_FAULTS: &[Fault] = &[Fault::Slow(Duration::from_secs(6)), Fault::Reset, Fault::Truncate, Fault::Garbage];

/// Staleness 3 s (3 × the 1 s interval), throttling wait 2 s.
fn engine() -> EngineConfig {
    EngineConfig {
        max_staleness: Duration::from_secs(3),
        throttle_backoff: Duration::from_secs(2),
        ..EngineConfig::default()
    }
}

/// One faulted source: its metadata, its true value and the switch of its proxy.
struct Source {
    name: &'static str,
    md: Vec<(String, String)>,
    good: f64,
    faults: &'static [Fault],
    set: Box<dyn Fn(Fault) + Send + Sync>,
    /// While set, even UNAVAILABLE is a violation for this source's load: it is healthy and
    /// not faulted.
    strict: Arc<AtomicBool>,
}

/// What the load saw that it must never see.
#[derive(Default)]
struct Violations(Mutex<Vec<String>>);

impl Violations {
    fn push(&self, v: String) {
        self.0.lock().unwrap().push(v);
    }
}

/// KEDA's poll loop on three ScaledObjects of `src`, every 250 ms, until `stop`; records hung
/// calls, IsActive=false, values other than the true one, and UNAVAILABLE while `strict`.
fn load(keda: &Keda, src: &Source, seen: &Arc<Violations>, stop: &Arc<AtomicBool>) {
    for i in 0..3 {
        let (keda, md, good, seen, stop) = (keda.clone(), src.md.clone(), src.good, seen.clone(), stop.clone());
        let (strict, name) = (src.strict.clone(), src.name);
        tokio::spawn(async move {
            let so = so_owned(&format!("load-{name}-{i}"), &md);
            while !stop.load(Ordering::SeqCst) {
                let (started, strict_at_start) = (Instant::now(), strict.load(Ordering::SeqCst));
                match keda.cycle(&so).await {
                    Ok(c) if c.value() != good || !c.active => {
                        seen.push(format!("{name}: value {} active {}", c.value(), c.active));
                    }
                    Ok(_) => {}
                    Err(s) if s.code() == Code::Unavailable => {
                        if strict_at_start && strict.load(Ordering::SeqCst) {
                            seen.push(format!("{name}: UNAVAILABLE while not faulted: {}", s.message()));
                        }
                    }
                    Err(s) => seen.push(format!("{name}: {:?} after {:?}", s, started.elapsed())),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }
}

/// Runs every fault of `src`; returns a line per fault with what was measured.
async fn fault_matrix(keda: &Keda, src: &Source, phase: &str) -> Vec<String> {
    let name = src.name;
    let good = src.good;
    let so = so_owned(&format!("probe-{name}-{phase}"), &src.md);
    let value = |r: &Result<common::ebb::Cycle, tonic::Status>| r.as_ref().ok().map(|c| (c.value(), c.active));
    let first = keda.cycle(&so).await;
    assert_eq!(value(&first), Some((good, true)), "{name}: healthy first: {first:?}");
    let mut report = Vec::new();
    for &fault in src.faults {
        (src.set)(fault);
        let faulted = Instant::now();
        // Inside the staleness bound: the last good value.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let during = keda.cycle(&so).await;
        assert_eq!(
            value(&during),
            Some((good, true)),
            "{name} {fault:?}: last good value within the bound: {during:?}"
        );
        // Then UNAVAILABLE (never IsActive=false).
        let mut unavailable = None;
        while faulted.elapsed() < Duration::from_secs(16) {
            match keda.get_metrics(&so, "").await {
                Err(s) if s.code() == Code::Unavailable => {
                    unavailable = Some(faulted.elapsed());
                    break;
                }
                Err(s) => panic!("{name} {fault:?}: unexpected {s:?}"),
                Ok(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let unavailable = unavailable.unwrap_or_else(|| panic!("{name} {fault:?}: never UNAVAILABLE"));
        let active = keda.is_active(&so).await;
        assert!(!matches!(active, Ok(ref a) if !a.result), "{name} {fault:?}: IsActive=false from a fault");
        // Heal: back within the retry delay (≤ the 1 s interval, or the 2 s throttling wait)
        // plus the poll that was in flight.
        (src.set)(Fault::None);
        let healed = Instant::now();
        let mut recovered = None;
        while healed.elapsed() < Duration::from_secs(15) {
            if value(&keda.cycle(&so).await) == Some((good, true)) {
                recovered = Some(healed.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let recovered = recovered.unwrap_or_else(|| panic!("{name} {fault:?}: no recovery within 15 s"));
        // Loose on purpose (figures are reported, not asserted tightly): the longest wait is a
        // slow poll's 4 s request timeout, then one 1 s interval.
        assert!(recovered <= Duration::from_secs(8), "{name} {fault:?}: recovered after {recovered:?}");
        report.push(format!(
            "{phase:<8} {name:<16} {fault:<12}: UNAVAILABLE after {unavailable:.1?}, recovered {recovered:.1?} after healing",
            fault = format!("{fault:?}")
        ));
    }
    report
}

/// Prometheus (real) behind the HTTP proxy; true value 42.
async fn prometheus(stack: &PromStack) -> Source {
    let metric = common::unique_name("ebb_fault_depth");
    stack.push("faults", &format!("{metric} 42")).await;
    stack.wait_for_value(&format!("sum({metric})"), 42.0, Duration::from_secs(30)).await;
    let proxy = FaultProxy::start(&stack.prometheus_url()).await;
    let md = prom_metadata(&proxy.url(), &format!("sum({metric})"), &[("pollingInterval", "1")]);
    source("prometheus", md, 42.0, HTTP_FAULTS, move |f| proxy.set(f))
}

/// A real Azurite queue behind the HTTP proxy; true value 7.
async fn azure_queue(az: &Azurite) -> Source {
    az.create_queue("faults").await;
    az.put_messages("faults", 7).await;
    let proxy = FaultProxy::start(&format!("http://127.0.0.1:{}", az.queue_port)).await;
    let md = vec![
        ("scalerType".into(), "azure-queue".into()),
        (
            "connectionFromEnv".into(),
            common::azurite::connection_string(proxy.port, ebb_scalers::azure::storage::DEV_KEY),
        ),
        ("queueName".into(), "faults".into()),
        ("pollingInterval".into(), "1".into()),
    ];
    source("azure-queue", md, 7.0, HTTP_FAULTS, move |f| proxy.set(f))
}

/// The Service Bus wire double behind the HTTP proxy (tokens signed for the proxy's address);
/// true value 42.
async fn azure_servicebus(sb: &ServiceBusDouble) -> Source {
    let proxy = FaultProxy::start(&format!("http://{}", sb.addr)).await;
    let md = vec![
        ("scalerType".into(), "azure-servicebus".into()),
        ("connectionFromEnv".into(), sb.behind(format!("127.0.0.1:{}", proxy.port).parse().unwrap())),
        ("queueName".into(), "orders".into()),
        ("pollingInterval".into(), "1".into()),
    ];
    source("azure-servicebus", md, 42.0, HTTP_FAULTS, move |f| proxy.set(f))
}

/// The Event Hubs wire double behind the HTTP proxy, checkpoints (goSdk layout) in real
/// Azurite blobs: p0 0..=99 checkpointed at 89, p1 0..=49 at 49, so the true lag is 10.
async fn azure_eventhub(eh: &EventHubsDouble, az: &Azurite) -> Source {
    az.create_container("faults-gosdk").await;
    for (pid, seq) in [("0", 89), ("1", 49)] {
        let go = format!(r#"{{"checkpoint":{{"offset":1,"sequenceNumber":{seq}}},"partitionId":"{pid}"}}"#);
        az.put_blob("faults-gosdk", pid, &go, &[]).await;
    }
    let proxy = FaultProxy::start(&format!("http://{}", eh.addr)).await;
    let md = vec![
        ("scalerType".into(), "azure-eventhub".into()),
        ("connectionFromEnv".into(), eh.behind(format!("127.0.0.1:{}", proxy.port).parse().unwrap())),
        ("storageConnectionFromEnv".into(), az.blob_connection_string()),
        ("checkpointStrategy".into(), "goSdk".into()),
        ("blobContainer".into(), "faults-gosdk".into()),
        ("pollingInterval".into(), "1".into()),
    ];
    source("azure-eventhub", md, 10.0, HTTP_FAULTS, move |f| proxy.set(f))
}

fn source(
    name: &'static str,
    md: Vec<(String, String)>,
    good: f64,
    faults: &'static [Fault],
    set: impl Fn(Fault) + Send + Sync + 'static,
) -> Source {
    Source { name, md, good, faults, set: Box::new(set), strict: Arc::new(AtomicBool::new(false)) }
}

/// Every source behind its fault proxy, one ebb, and KEDA's load on every source, each strict
/// (not even UNAVAILABLE) from its first good answer on; the servers are kept as long as the rig.
struct Rig {
    keda: Keda,
    sources: Vec<Source>,
    seen: Arc<Violations>,
    stop: Arc<AtomicBool>,
    /// A line per fault with what was measured.
    report: Vec<String>,
    _servers: Vec<Box<dyn std::any::Any>>,
}

impl Rig {
    async fn start() -> Rig {
        let stack = PromStack::start().await;
        let az = Azurite::start();
        let sb = ServiceBusDouble::start().await;
        let eh = EventHubsDouble::start("faults-hub", vec![(0, 99), (0, 49)]).await;
        #[cfg_attr(not(feature = "kafka"), allow(unused_mut))]
        let mut sources = vec![
            prometheus(&stack).await,
            azure_queue(&az).await,
            azure_servicebus(&sb).await,
            azure_eventhub(&eh, &az).await,
        ];
        let mut servers: Vec<Box<dyn std::any::Any>> = vec![Box::new(stack), Box::new(az), Box::new(sb), Box::new(eh)];
        #[cfg(feature = "kafka")]
        {
            let (tansu, src) = kafka().await;
            sources.push(src);
            servers.push(Box::new(tansu));
        }

        let (srv, keda) = start_ebb_with(engine()).await;
        servers.push(Box::new(srv));
        let seen = Arc::new(Violations::default());
        let stop = Arc::new(AtomicBool::new(false));
        for src in &sources {
            load(&keda, src, &seen, &stop);
        }
        // Strict from each source's first good answer on (a first poll may take longer than
        // the first request waits, which is not a fault).
        for src in &sources {
            let so = so_owned(&format!("warm-{}", src.name), &src.md);
            common::until(
                Duration::from_secs(20),
                &format!("{} first good value", src.name),
                async || keda.cycle(&so).await.ok().map(|c| (c.value(), c.active)),
                |r| *r == Some((src.good, true)),
            )
            .await;
            src.strict.store(true, Ordering::SeqCst);
        }
        Rig { keda, sources, seen, stop, report: Vec::new(), _servers: servers }
    }

    /// Every fault on source `name` alone: the others must not notice.
    async fn alone(&mut self, name: &str) {
        let src = self.sources.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no source {name}"));
        src.strict.store(false, Ordering::SeqCst);
        let lines = fault_matrix(&self.keda, src, "alone").await;
        // Healed (the probe saw the true value); strict again once in-flight cycles end.
        tokio::time::sleep(Duration::from_millis(500)).await;
        src.strict.store(true, Ordering::SeqCst);
        let so_far = self.seen.0.lock().unwrap().clone();
        assert!(so_far.is_empty(), "after {name} alone: {so_far:#?}");
        self.report.extend(lines);
    }

    /// Every fault on every source at the same time.
    async fn together(&mut self) {
        for src in &self.sources {
            src.strict.store(false, Ordering::SeqCst);
        }
        let all = futures::future::join_all(self.sources.iter().map(|src| fault_matrix(&self.keda, src, "together")));
        self.report.extend(all.await.into_iter().flatten());
    }

    /// Stops the load, prints what was measured, and fails on anything the load saw.
    fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        for line in &self.report {
            println!("{line}");
        }
        let seen = self.seen.0.lock().unwrap();
        assert!(seen.is_empty(), "the load saw {} violations: {:#?}", seen.len(), &seen[..seen.len().min(10)]);
    }
}

/// The test of source `name` alone.
async fn every_fault_alone(name: &str) {
    within(TEST_LIMIT, &format!("every fault on {name} alone"), async {
        let mut rig = Rig::start().await;
        rig.alone(name).await;
        rig.finish();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_every_fault_alone_while_keda_load_runs() {
    every_fault_alone("prometheus").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_queue_every_fault_alone_while_keda_load_runs() {
    every_fault_alone("azure-queue").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_servicebus_every_fault_alone_while_keda_load_runs() {
    every_fault_alone("azure-servicebus").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_eventhub_every_fault_alone_while_keda_load_runs() {
    every_fault_alone("azure-eventhub").await;
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_every_fault_alone_while_keda_load_runs() {
    every_fault_alone("kafka").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_on_every_source_at_once_while_keda_load_runs() {
    within(TEST_LIMIT, "every fault on every source at once", async {
        let mut rig = Rig::start().await;
        rig.together().await;
        rig.finish();
    })
    .await;
}

/// A real tansu broker behind the TCP proxy, advertising the proxy's address; one partition
/// with 12 messages and the group committed at 5, so the true lag is 7.
#[cfg(feature = "kafka")]
async fn kafka() -> (common::kafka::Tansu, Source) {
    use common::faults::TcpFaultProxy;
    let proxy = TcpFaultProxy::start().await;
    let addr = proxy.addr();
    let tansu =
        tokio::task::spawn_blocking(move || common::kafka::Tansu::start_advertising(Some(&addr))).await.expect("tansu");
    proxy.forward_to(tansu.bootstrap().parse().expect("broker address"));
    let tansu = tokio::task::spawn_blocking(move || {
        tansu.create_topic("faults", 1);
        tansu.produce("faults", 0, 12);
        tansu.commit("faults-group", "faults", &[(0, 5)]);
        tansu
    })
    .await
    .expect("kafka setup");
    let md = vec![
        ("scalerType".into(), "kafka".into()),
        ("bootstrapServers".into(), proxy.addr()),
        ("consumerGroup".into(), "faults-group".into()),
        ("topic".into(), "faults".into()),
        ("pollingInterval".into(), "1".into()),
    ];
    (tansu, source("kafka", md, 7.0, TCP_FAULTS, move |f| proxy.set(f)))
}
