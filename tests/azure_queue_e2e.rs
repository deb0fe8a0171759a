//! End to end against a real Azurite: Shared Key helpers fill a queue → ebb (its own service
//! SAS, signed from the connection string's key, through the `azure_storage_queue` crate) →
//! a KEDA-like client driving the RPCs in KEDA's order with 3 s deadlines.
//!
//! Each test starts its own Azurite (`common::azurite::Azurite`, npm `azurite@3.35.0`,
//! installed by `scripts/install-services.sh`) and its own ebb server on `127.0.0.1:0`. Every
//! wait is bounded.

// Starts real servers (scripts/install-services.sh): built with `--features integration`,
// which scripts/test.sh (and so CI) turns on.
#![cfg(feature = "integration")]

mod common;

use common::within;

use std::time::{Duration, Instant};

use common::azurite::{Azurite, CountingProxy, connection_string};
use common::ebb::{Keda, assert_status, so_owned, start_ebb};
use tonic::Code;

const TEST_LIMIT: Duration = Duration::from_secs(90);

fn queue_md(connection: &str, queue: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut md: Vec<(String, String)> = vec![
        ("scalerAddress".into(), "ebb.keda.svc.cluster.local:9090".into()),
        ("scalerType".into(), "azure-queue".into()),
        ("connectionFromEnv".into(), connection.into()),
        ("queueName".into(), queue.into()),
    ];
    for (k, v) in extra {
        md.retain(|(key, _)| key != k);
        md.push((k.to_string(), v.to_string()));
    }
    md
}

async fn filled(az: &Azurite, queue: &str, put: usize, dequeue: usize) {
    az.create_queue(queue).await;
    az.put_messages(queue, put).await;
    if dequeue > 0 {
        az.dequeue(queue, dequeue).await;
    }
}

async fn value_of(keda: &Keda, md: &[(String, String)], name: &str) -> common::ebb::Cycle {
    let so = so_owned(name, md);
    keda.cycle(&so).await.unwrap_or_else(|s| panic!("{name}: cycle failed: {s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategies_all_and_visibleonly() {
    within(TEST_LIMIT, "strategies_all_and_visibleonly", async {
        let az = Azurite::start();
        filled(&az, "orders", 7, 2).await;
        let (_srv, keda) = start_ebb().await;
        let cs = az.connection_string();

        let all = value_of(&keda, &queue_md(&cs, "orders", &[("queueLength", "3")]), "all").await;
        let spec = &all.spec.metric_specs[0];
        assert_eq!((spec.target_size, spec.target_size_float), (3, 3.0), "target = queueLength");
        assert_eq!(all.value(), 7.0, "all: approximate count includes the 2 invisible messages");
        assert!(all.active);

        let md = queue_md(&cs, "orders", &[("queueLengthStrategy", "visibleonly"), ("activationQueueLength", "5")]);
        let visible = value_of(&keda, &md, "visible").await;
        assert_eq!(visible.value(), 5.0, "visibleonly: 7 - 2 dequeued");
        assert!(!visible.active, "5 is not > activationQueueLength 5");
        assert_eq!(visible.spec.metric_specs[0].target_size, 5, "default queueLength");

        // 40 messages: the peek returns 32, so KEDA's rule falls back to the approximate count.
        filled(&az, "big", 40, 0).await;
        let big = value_of(&keda, &queue_md(&cs, "big", &[("queueLengthStrategy", "visibleonly")]), "big").await;
        assert_eq!(big.value(), 40.0, "32 peeked ⇒ approximate count");

        // A SAS connection string (the one ebb would sign, handed over as given) works too.
        let key = ebb_scalers::azure::storage::AccountKey::from_base64(ebb_scalers::azure::storage::DEV_KEY).unwrap();
        let expiry = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
        let sas = ebb_scalers::azure::storage::queue_service_sas("devstoreaccount1", &key, "orders", "r", expiry);
        let sas_cs = format!("QueueEndpoint={};SharedAccessSignature={sas}", az.queue_endpoint());
        let via_sas = value_of(&keda, &queue_md(&sas_cs, "orders", &[]), "sas").await;
        assert_eq!(via_sas.value(), 7.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_queue_and_wrong_key_are_unavailable() {
    within(TEST_LIMIT, "missing_queue_and_wrong_key_are_unavailable", async {
        let az = Azurite::start();
        filled(&az, "orders", 1, 0).await;
        let (_srv, keda) = start_ebb().await;

        let so = so_owned("missing", &queue_md(&az.connection_string(), "nosuchqueue", &[]));
        let spec = keda.get_metric_spec(&so).await.expect("GetMetricSpec needs no poll");
        let r = keda.get_metrics(&so, &spec.metric_specs[0].metric_name).await;
        let s = assert_status(r, Code::Unavailable, "nosuchqueue", "missing queue");
        eprintln!("missing → {}", s.message());
        assert!(s.message().contains("QueueNotFound") || s.message().contains("not found"), "{}", s.message());

        // A valid base64 key that is not the account's.
        let wrong_key = "d3JvbmctYnV0LXZhbGlkLWJhc2U2NC1rZXktMTIzNDU2Nzg5MA==";
        let so = so_owned("wrong", &queue_md(&connection_string(az.queue_port, wrong_key), "orders", &[]));
        let r = keda.get_metrics(&so, "whatever").await;
        let s = assert_status(r, Code::Unavailable, "auth", "wrong key");
        let msg = s.message();
        eprintln!("wrong key → {msg}");
        assert!(!msg.contains(wrong_key) && !msg.contains("d3JvbmctYnV0"), "key leaked: {msg}");
        assert!(!msg.contains("sig=") || msg.contains("sig=REDACTED"), "signature leaked: {msg}");
        assert_status(keda.is_active(&so).await, Code::Unavailable, "auth", "IsActive, wrong key");
    })
    .await;
}

/// 50 ScaledObjects on one queue for 3 s, pollingInterval 1 s: the upstream requests are
/// counted by an HTTP proxy in front of Azurite (every request that reached the emulator).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_scaled_objects_share_one_poll() {
    within(TEST_LIMIT, "fifty_scaled_objects_share_one_poll", async {
        let az = Azurite::start();
        filled(&az, "shared", 3, 0).await;
        let proxy = CountingProxy::start(az.queue_port).await;
        let (_srv, keda) = start_ebb().await;
        let cs = connection_string(proxy.port, ebb_scalers::azure::storage::DEV_KEY);

        let sos: Vec<_> = (0..50)
            .map(|i| {
                let target = format!("{}", 1 + i % 7);
                so_owned(
                    &format!("so-{i}"),
                    &queue_md(&cs, "shared", &[("pollingInterval", "1"), ("queueLength", &target)]),
                )
            })
            .collect();
        let start = Instant::now();
        let mut cycles = 0usize;
        while start.elapsed() < Duration::from_secs(3) {
            let mut set = tokio::task::JoinSet::new();
            for so in sos.clone() {
                let keda = keda.clone();
                set.spawn(async move { keda.cycle(&so).await.map(|c| c.value()) });
            }
            while let Some(r) = set.join_next().await {
                assert_eq!(r.expect("task").expect("cycle"), 3.0);
                cycles += 1;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let upstream = proxy.requests();
        eprintln!("{cycles} KEDA cycles ({} RPCs) → {upstream} upstream requests", cycles * 3);
        assert!(cycles >= 100, "the clients kept cycling: {cycles}");
        // One poll right away, then one a second on the grid for ~3 s.
        assert!((1..=6).contains(&upstream), "one shared poller: {upstream} upstream requests");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebb_check_prints_the_count() {
    within(TEST_LIMIT, "ebb_check_prints_the_count", async {
        let az = Azurite::start();
        filled(&az, "cli", 7, 2).await;
        let args: Vec<String> = vec![
            "check".into(),
            "--json".into(),
            "scalerType=azure-queue".into(),
            format!("connection={}", az.connection_string()),
            "queueName=cli".into(),
            "queueLengthStrategy=visibleonly".into(),
            "queueLength=2".into(),
        ];
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_ebb")).args(&args).env("RUST_LOG", "warn").output()
        })
        .await
        .unwrap()
        .expect("ebb runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(!stdout.contains("Eby8vdM02"), "key leaked: {stdout}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        assert_eq!(report["metric"], 5.0);
        assert_eq!(report["active"], true);
        assert_eq!(report["target"], 2.0);
        assert_eq!(report["desired_replicas"], 3, "ceil(5 / 2)");
    })
    .await;
}
