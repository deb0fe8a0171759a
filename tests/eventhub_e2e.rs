//! `azure-eventhub` end to end: a KEDA-like client → ebb's gRPC server → ebb's Event Hubs
//! client → a wire-level double of the Event Hubs runtime REST API (`common::eventhubs`, SAS
//! verified on every request) for partition info, and a real Azurite blob service holding the
//! checkpoint blobs in all five layouts.

// Starts real servers (scripts/install-services.sh): built with `--features integration`,
// which scripts/test.sh (and so CI) turns on.
#![cfg(feature = "integration")]

mod common;

use std::time::Duration;

use common::azurite::Azurite;
use common::ebb::{drain_estimates, so_owned, start_ebb};
use common::eventhubs::EventHubsDouble;
use common::within;

const TEST_LIMIT: Duration = Duration::from_secs(90);
const HUB: &str = "telemetry";

/// p0: 0..=99, p1: 0..=49, p2: empty (-1), p3: 10..=29 (never checkpointed).
fn partitions() -> Vec<(i64, i64)> {
    vec![(0, 99), (0, 49), (0, -1), (10, 29)]
}

fn metadata(eh: &EventHubsDouble, az: &Azurite, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut md: Vec<(String, String)> = vec![
        ("scalerAddress".into(), "ebb.keda.svc.cluster.local:9090".into()),
        ("scalerType".into(), "azure-eventhub".into()),
        ("connectionFromEnv".into(), eh.connection_string()),
        ("storageConnectionFromEnv".into(), az.blob_connection_string()),
        ("unprocessedEventThreshold".into(), "5".into()),
        ("activationUnprocessedEventThreshold".into(), "29".into()),
        ("pollingInterval".into(), "1".into()),
    ];
    for (k, v) in extra {
        md.retain(|(key, _)| key != k);
        md.push((k.to_string(), v.to_string()));
    }
    md
}

/// Writes checkpoints p0 = 89, p1 = 49 (p2, p3 have no blob) in every strategy's layout.
async fn write_checkpoints(az: &Azurite, ns: &str) {
    for c in ["azure-webjobs-eventhub", "meta", "gosdk", "dapr", "legacy"] {
        az.create_container(c).await;
    }
    for (pid, seq) in [("0", 89), ("1", 49)] {
        let functions = format!(r#"{{"Offset":"1","SequenceNumber":{seq},"PartitionId":"{pid}","Owner":"x"}}"#);
        az.put_blob("azure-webjobs-eventhub", &format!("{ns}/{HUB}/$Default/{pid}"), &functions, &[]).await;
        let go = format!(r#"{{"checkpoint":{{"offset":1,"sequenceNumber":{seq}}},"partitionId":"{pid}"}}"#);
        az.put_blob("gosdk", pid, &go, &[]).await;
        az.put_blob("dapr", &format!("dapr-{HUB}-$Default-{pid}"), &go, &[]).await;
        let py = format!(r#"{{"sequence_number":{seq},"partition_id":"{pid}","offset":"1"}}"#);
        az.put_blob("legacy", &format!("$Default/{pid}"), &py, &[]).await;
        // Current SDKs: an empty blob whose metadata holds the checkpoint, consumer group lowercased.
        let seq = seq.to_string();
        let meta = [("sequencenumber", seq.as_str()), ("offset", "1")];
        az.put_blob("meta", &format!("{ns}/{HUB}/$default/checkpoint/{pid}"), "", &meta).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_five_checkpoint_layouts() {
    within(TEST_LIMIT, "all_five_checkpoint_layouts", async {
        let az = Azurite::start();
        let eh = EventHubsDouble::start(HUB, partitions()).await;
        write_checkpoints(&az, &eh.ns()).await;
        let (srv, keda) = start_ebb().await;
        // Uncapped: p0 99-89 = 10, p1 0, p2 empty 0, p3 no checkpoint 29-10+1 = 20 ⇒ 30.
        // 30/5 = 6 > 4 partitions ⇒ metric 4 × 5 = 20; active as 30 > 29.
        let cases: [&[(&str, &str)]; 5] = [
            &[],
            &[("checkpointStrategy", "blobMetadata"), ("blobContainer", "meta")],
            &[("checkpointStrategy", "goSdk"), ("blobContainer", "gosdk")],
            &[("checkpointStrategy", "dapr"), ("blobContainer", "dapr")],
            &[("blobContainer", "legacy")],
        ];
        for (i, extra) in cases.iter().enumerate() {
            let so = so_owned(&format!("layout-{i}"), &metadata(&eh, &az, extra));
            let c = keda.cycle(&so).await.unwrap_or_else(|s| panic!("{extra:?}: {s:?}"));
            assert_eq!(c.spec.metric_specs[0].target_size, 5);
            assert_eq!(c.value(), 20.0, "{extra:?}: capped at partitions × threshold");
            assert!(c.active, "{extra:?}: uncapped 30 > 29");
        }
        // Without checkpoints at all (empty container): 100 + 50 + 0 + 20 = 170, threshold 100 ⇒ 1 ≤ 4.
        az.create_container("empty").await;
        let md = metadata(&eh, &az, &[("blobContainer", "empty"), ("unprocessedEventThreshold", "100")]);
        let c = keda.cycle(&so_owned("none", &md)).await.expect("no checkpoints");
        assert_eq!(c.value(), 170.0);
        assert_eq!(eh.rejected(), 0, "every request carried a valid SAS");
        let log = eh.log();
        assert!(
            log.iter().any(|l| l == "/telemetry/consumergroups/%24Default/partitions/3?api-version=2015-01"),
            "{log:?}"
        );
        srv.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_unavailable_without_leaking() {
    within(TEST_LIMIT, "wrong_key_is_unavailable_without_leaking", async {
        let az = Azurite::start();
        let eh = EventHubsDouble::start(HUB, partitions()).await;
        let (srv, keda) = start_ebb().await;
        let wrong = "bm90LXRoZS1rZXk=wrong-9931";
        let mut md = metadata(&eh, &az, &[]);
        md.retain(|(k, _)| k != "connectionFromEnv");
        md.push(("connectionFromEnv".into(), eh.connection_string_with(wrong)));
        let s = keda.get_metrics(&so_owned("wrong", &md), "x").await.expect_err("401");
        assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
        assert!(s.message().contains("error code 401") && !s.message().contains("InvalidSignature"), "{}", s.message());
        assert!(!s.message().contains(wrong) && !s.message().contains("sig="), "{}", s.message());
        srv.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_20_scaled_objects() {
    const OBJECTS: usize = 20;
    const PHASE: Duration = Duration::from_secs(3);
    within(TEST_LIMIT, "coalescing_20_scaled_objects", async {
        let az = Azurite::start();
        let eh = EventHubsDouble::start(HUB, partitions()).await;
        write_checkpoints(&az, &eh.ns()).await;
        let (srv, keda) = start_ebb().await;
        let md = metadata(&eh, &az, &[("checkpointStrategy", "goSdk"), ("blobContainer", "gosdk")]);
        let cycles = keda.drive_many(OBJECTS, &md, PHASE, 20.0).await;
        let (hub, parts) = (eh.hub_requests(), eh.partition_requests());
        eprintln!("{OBJECTS} ScaledObjects, {cycles} cycles, {hub} hub + {parts} partition requests");
        assert!(cycles >= OBJECTS);
        assert!((1..=5).contains(&hub), "one hub request per interval: {hub}");
        assert!(parts <= 4 * hub + 4 && parts >= 4 * (hub - 1), "4 partition requests per poll: {parts} for {hub}");
        assert_eq!(srv.engine.source_count(), 1, "one source for {OBJECTS} ScaledObjects");
        srv.shutdown().await;
    })
    .await;
}

/// Issue 16: `policy: drain` reads the rates Event Hubs shows. The double's partitions gain 20
/// events a second each (40 in all) and the checkpoints in real Azurite blobs (goSdk layout)
/// advance 8 a second each (16 in all: the consumers cannot keep up). ebb's arrival rate comes
/// from Σ last enqueued sequence numbers, its processing rate (per-replica throughput × the
/// replicas it counts as ready, held at the 2 partitions) from Σ checkpointed ones, both from the
/// poll that gives the lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_rates_converge_to_the_hubs() {
    within(TEST_LIMIT, "drain_rates_converge_to_the_hubs", async {
        let az = Azurite::start();
        let eh = EventHubsDouble::start(HUB, vec![(0, 99), (0, 99)]).await;
        az.create_container("rates").await;
        let checkpoint = |seq: i64, pid: &str| {
            format!(r#"{{"checkpoint":{{"offset":1,"sequenceNumber":{seq}}},"partitionId":"{pid}"}}"#)
        };
        for pid in ["0", "1"] {
            az.put_blob("rates", pid, &checkpoint(89, pid), &[]).await;
        }
        let (srv, keda) = start_ebb().await;
        let md = metadata(
            &eh,
            &az,
            &[
                ("checkpointStrategy", "goSdk"),
                ("blobContainer", "rates"),
                ("outputMode", "replicas"),
                ("policy", "drain"),
                ("startupSeconds", "2"),
                ("rateWindowShortSeconds", "5"),
                ("rateWindowLongSeconds", "10"),
            ],
        );
        keda.cycle(&so_owned("eh-rates", &md)).await.expect("first cycle");

        let (add, done) = (20i64, 8i64);
        let (mut end, mut seq) = (99i64, 89i64);
        let start = std::time::Instant::now();
        let mut history: Vec<(std::time::Instant, i64, i64)> = Vec::new();
        while start.elapsed() < Duration::from_secs(30) {
            let tick = std::time::Instant::now();
            end += add;
            seq += done;
            for (i, pid) in ["0", "1"].iter().enumerate() {
                eh.set_partition(i, 0, end);
                az.put_blob("rates", pid, &checkpoint(seq, pid), &[]).await;
            }
            history.push((std::time::Instant::now(), end, seq));
            tokio::time::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed())).await;
        }
        // What the hub really saw over the last 10 s (the loop may run slower than 1 s).
        let (t1, e1, c1) = *history.last().unwrap();
        let (t0, e0, c0) =
            *history.iter().rev().find(|(t, _, _)| t1.duration_since(*t) >= Duration::from_secs(10)).unwrap();
        let secs = t1.duration_since(t0).as_secs_f64();
        let (lambda, processing) = (2.0 * (e1 - e0) as f64 / secs, 2.0 * (c1 - c0) as f64 / secs);

        let (a, mu, ready) = drain_estimates(srv.http_addr, "eh-rates").await;
        eprintln!(
            "hub: {lambda:.1} ev/s in, {processing:.1} ev/s checkpointed; ebb: λ̂ {a:.1}, μ̂ {mu:.2} × R̂ {ready} = {:.1}",
            mu * ready
        );
        assert!((a - lambda).abs() <= 0.3 * lambda, "λ̂ {a} vs {lambda}");
        assert_eq!(ready, 2.0, "saturated: one consumer per partition");
        assert!((mu * ready - processing).abs() <= 0.3 * processing, "μ̂·R̂ {} vs {processing}", mu * ready);
        assert_eq!(eh.rejected(), 0);
        srv.shutdown().await;
    })
    .await;
}
