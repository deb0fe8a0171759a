//! Faults under load. A real Prometheus, a real Azurite queue and the Service Bus wire double
//! sit behind a fault-injecting proxy (`common::faults`). KEDA-style load keeps cycling through GetMetricSpec → GetMetrics →
//! IsActive on several ScaledObjects per source, with KEDA's 3 s deadline. Each source goes
//! through the faults one after the other: slow, reset, truncated, 500, 429, 503 and garbage.
//! All three sources are faulted at the same time. Shown for every fault:
//! - no hung RPC: no deadline is exceeded;
//! - the last good value is served while it is inside the staleness bound;
//! - then UNAVAILABLE, and never IsActive=false or a made-up value;
//! - recovery once the source heals, within the engine's backoff bound.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::PromStack;
use common::azurite::Azurite;
use common::ebb::{Keda, prom_metadata, so_owned, start_ebb_with};
use common::faults::{Fault, FaultProxy};
use common::servicebus::ServiceBusDouble;
use common::within;
use ebb::engine::EngineConfig;
use tonic::Code;

const TEST_LIMIT: Duration = Duration::from_secs(170);
const FAULTS: [Fault; 7] = [
    Fault::Slow(Duration::from_secs(6)),
    Fault::Reset,
    Fault::Truncate,
    Fault::Status(500),
    Fault::Status(429),
    Fault::Status(503),
    Fault::Garbage,
];

/// Staleness 3 s (3 × the 1 s interval), backoff capped at 2 s.
fn engine() -> EngineConfig {
    EngineConfig {
        max_staleness: Duration::from_secs(3),
        max_backoff: Duration::from_secs(2),
        throttle_backoff: Duration::from_secs(2),
        ..EngineConfig::default()
    }
}

/// What the load saw that it must never see.
#[derive(Default)]
struct Violations(Mutex<Vec<String>>);

impl Violations {
    fn push(&self, v: String) {
        self.0.lock().unwrap().push(v);
    }
}

/// KEDA's poll loop on `objects`, every 250 ms, until `stop`; records hung calls, IsActive=false
/// and values other than `good`.
fn load(keda: Keda, md: Vec<(String, String)>, good: f64, seen: Arc<Violations>, stop: Arc<Mutex<bool>>) {
    for i in 0..3 {
        let (keda, md, seen, stop) = (keda.clone(), md.clone(), seen.clone(), stop.clone());
        tokio::spawn(async move {
            let so = so_owned(&format!("load-{i}"), &md);
            while !*stop.lock().unwrap() {
                let started = Instant::now();
                match keda.cycle(&so).await {
                    Ok(c) if c.value() != good || !c.active => {
                        seen.push(format!("{}: value {} active {}", so.name, c.value(), c.active));
                    }
                    Ok(_) => {}
                    Err(s) if s.code() == Code::Unavailable => {}
                    Err(s) => seen.push(format!("{}: {:?} after {:?}", so.name, s, started.elapsed())),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }
}

/// Runs every fault on one source; returns a line per fault with what was measured.
async fn fault_matrix(name: &str, keda: &Keda, proxy: &FaultProxy, md: &[(String, String)], good: f64) -> Vec<String> {
    let so = so_owned(&format!("probe-{name}"), md);
    let value = |r: &Result<common::ebb::Cycle, tonic::Status>| r.as_ref().ok().map(|c| (c.value(), c.active));
    let first = keda.cycle(&so).await;
    assert_eq!(value(&first), Some((good, true)), "{name}: healthy first: {first:?}");
    let mut report = Vec::new();
    for fault in FAULTS {
        proxy.set(fault);
        // Inside the staleness bound: the last good value.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let during = keda.cycle(&so).await;
        assert_eq!(
            value(&during),
            Some((good, true)),
            "{name} {fault:?}: last good value within the bound: {during:?}"
        );
        // Then UNAVAILABLE (never IsActive=false).
        let faulted = Instant::now();
        let mut unavailable = None;
        while faulted.elapsed() < Duration::from_secs(15) {
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
        // Heal: back within the backoff bound (2 s) plus one interval.
        proxy.set(Fault::None);
        let healed = Instant::now();
        let mut recovered = None;
        while healed.elapsed() < Duration::from_secs(10) {
            if value(&keda.cycle(&so).await) == Some((good, true)) {
                recovered = Some(healed.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let recovered = recovered.unwrap_or_else(|| panic!("{name} {fault:?}: no recovery within 10 s"));
        assert!(recovered <= Duration::from_millis(4_000), "{name} {fault:?}: recovered after {recovered:?}");
        report.push(format!(
            "{name} {fault:?}: UNAVAILABLE after {unavailable:.1?}, recovered {recovered:.1?} after healing"
        ));
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_on_every_source_while_keda_load_runs() {
    within(TEST_LIMIT, "every_fault_on_every_source_while_keda_load_runs", async {
        let stack = PromStack::start().await;
        let metric = common::unique_name("ebb_fault_depth");
        stack.push("faults", &format!("{metric} 42")).await;
        stack.wait_for_value(&format!("sum({metric})"), 42.0, Duration::from_secs(30)).await;
        let prom_proxy = FaultProxy::start(&stack.prometheus_url()).await;
        let prom_md = prom_metadata(&prom_proxy.url(), &format!("sum({metric})"), &[("pollingInterval", "1")]);

        let az = Azurite::start();
        az.create_queue("faults").await;
        az.put_messages("faults", 7).await;
        let az_proxy = FaultProxy::start(&format!("http://127.0.0.1:{}", az.queue_port)).await;
        let az_md: Vec<(String, String)> = vec![
            ("scalerType".into(), "azure-queue".into()),
            (
                "connectionFromEnv".into(),
                common::azurite::connection_string(az_proxy.port, ebb_scalers::azure_queue::DEV_KEY),
            ),
            ("queueName".into(), "faults".into()),
            ("pollingInterval".into(), "1".into()),
        ];

        let sb = ServiceBusDouble::start().await;
        let sb_proxy = FaultProxy::start(&format!("http://{}", sb.addr)).await;
        let sb_md: Vec<(String, String)> = vec![
            ("scalerType".into(), "azure-servicebus".into()),
            ("connectionFromEnv".into(), sb.behind(format!("127.0.0.1:{}", sb_proxy.port).parse().unwrap())),
            ("queueName".into(), "orders".into()),
            ("pollingInterval".into(), "1".into()),
        ];

        let (_srv, keda) = start_ebb_with(engine()).await;
        let seen = Arc::new(Violations::default());
        let stop = Arc::new(Mutex::new(false));
        load(keda.clone(), prom_md.clone(), 42.0, seen.clone(), stop.clone());
        load(keda.clone(), az_md.clone(), 7.0, seen.clone(), stop.clone());
        load(keda.clone(), sb_md.clone(), 42.0, seen.clone(), stop.clone());

        // All three sources faulted at the same time, each through every fault.
        let (a, b, c) = tokio::join!(
            fault_matrix("prometheus", &keda, &prom_proxy, &prom_md, 42.0),
            fault_matrix("azure-queue", &keda, &az_proxy, &az_md, 7.0),
            fault_matrix("azure-servicebus", &keda, &sb_proxy, &sb_md, 42.0),
        );
        *stop.lock().unwrap() = true;
        for line in a.iter().chain(&b).chain(&c) {
            println!("{line}");
        }
        let seen = seen.0.lock().unwrap();
        assert!(seen.is_empty(), "the load saw {} violations: {:#?}", seen.len(), &seen[..seen.len().min(10)]);
    })
    .await;
}
