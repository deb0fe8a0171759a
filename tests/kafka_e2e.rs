//! End to end against a real Kafka-protocol broker: tansu 0.6.0 with its sqlite storage engine
//! (`common::kafka::Tansu`, built by `scripts/install-services.sh`), started on loopback by each
//! test. Topics are created, records produced (batched), offsets committed or really consumed
//! by a group, and ebb's lag, read by a KEDA-like client with 3 s deadlines, is checked against
//! the numbers the broker itself reports (ListOffsets and OffsetFetch read by the test's own
//! clients), for every rule of KEDA's `kafka` scaler.

#![cfg(all(feature = "kafka", feature = "integration"))]

mod common;

use std::time::Duration;

use common::ebb::{Keda, assert_status, so_owned, start_ebb, start_ebb_with};
use common::kafka::Tansu;
use common::within;
use ebb::engine::EngineConfig;
use tonic::Code;

const TEST_LIMIT: Duration = Duration::from_secs(120);

fn kafka_md(t: &Tansu, group: &str, topic: Option<&str>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut md: Vec<(String, String)> = vec![
        ("scalerType".into(), "kafka".into()),
        ("bootstrapServers".into(), t.bootstrap()),
        ("consumerGroup".into(), group.into()),
        ("pollingInterval".into(), "1".into()),
    ];
    if let Some(topic) = topic {
        md.push(("topic".into(), topic.into()));
    }
    for (k, v) in extra {
        md.retain(|(key, _)| key != k);
        md.push((k.to_string(), v.to_string()));
    }
    md
}

async fn cycle(keda: &Keda, name: &str, md: &[(String, String)]) -> common::ebb::Cycle {
    keda.cycle(&so_owned(name, md)).await.unwrap_or_else(|s| panic!("{name}: {s:?}"))
}

/// The broker's own view of one topic for a group: `(partition, committed, log end)`.
fn broker_view(t: &Tansu, group: &str, topic: &str, partitions: i32) -> Vec<(i32, Option<i64>, i64)> {
    let ids: Vec<i32> = (0..partitions).collect();
    t.committed(group, topic, &ids).into_iter().map(|(p, c)| (p, c, t.watermarks(topic, p).1)).collect()
}

/// KEDA's per-partition lag, computed by the test from the broker's numbers.
fn expected_lag(view: &[(i32, Option<i64>, i64)], earliest: bool, scale_to_zero: bool) -> i64 {
    view.iter()
        .map(|(_, committed, end)| match committed {
            Some(c) => (end - c).max(0),
            None if scale_to_zero => 0,
            None if earliest => *end,
            None => 1,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_matches_the_broker_for_each_offset_rule() {
    within(TEST_LIMIT, "lag_matches_the_broker_for_each_offset_rule", async {
        let t = Tansu::start();
        t.create_topic("orders", 3);
        for p in 0..3 {
            t.produce("orders", p, 10);
        }
        // Partition 0 half read, partition 1 fully read, partition 2 never committed.
        t.commit("billing", "orders", &[(0, 4), (1, 10)]);
        let view = broker_view(&t, "billing", "orders", 3);
        assert_eq!(view, vec![(0, Some(4), 10), (1, Some(10), 10), (2, None, 10)], "broker numbers");

        let (_srv, keda) = start_ebb().await;
        let md = kafka_md(&t, "billing", Some("orders"), &[("allowIdleConsumers", "true")]);
        let latest = cycle(&keda, "latest", &md).await;
        assert_eq!(latest.value(), expected_lag(&view, false, false) as f64, "latest policy: uncommitted = 1");
        assert_eq!(latest.value(), 7.0);
        assert!(latest.active);
        assert_eq!(latest.spec.metric_specs[0].target_size, 10, "lagThreshold default");

        let md = kafka_md(
            &t,
            "billing",
            Some("orders"),
            &[("allowIdleConsumers", "true"), ("offsetResetPolicy", "earliest")],
        );
        let earliest = cycle(&keda, "earliest", &md).await;
        assert_eq!(earliest.value(), expected_lag(&view, true, false) as f64, "earliest: uncommitted = log end");

        let md = kafka_md(&t, "billing", Some("orders"), &[("scaleToZeroOnInvalidOffset", "true")]);
        let stz = cycle(&keda, "stz", &md).await;
        assert_eq!(stz.value(), expected_lag(&view, false, true) as f64, "scaleToZeroOnInvalidOffset");

        // activationLagThreshold: active only when lag > it.
        let md = kafka_md(&t, "billing", Some("orders"), &[("activationLagThreshold", "7")]);
        assert!(!cycle(&keda, "act-7", &md).await.active, "7 is not > 7");
        let md = kafka_md(&t, "billing", Some("orders"), &[("activationLagThreshold", "6")]);
        assert!(cycle(&keda, "act-6", &md).await.active);

        // partitionLimitation "0,2": 6 + 1.
        let md = kafka_md(&t, "billing", Some("orders"), &[("partitionLimitation", "0,2")]);
        assert_eq!(cycle(&keda, "limited", &md).await.value(), 7.0);
        let md = kafka_md(&t, "billing", Some("orders"), &[("partitionLimitation", "1")]);
        let only1 = cycle(&keda, "only1", &md).await;
        assert_eq!((only1.value(), only1.active), (0.0, false), "partition 1 is fully read");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_follow_keda() {
    within(TEST_LIMIT, "caps_follow_keda", async {
        let t = Tansu::start();
        t.create_topic("events", 4);
        t.produce("events", 0, 50);
        t.produce("events", 1, 3);
        t.commit("g", "events", &[(0, 0), (1, 0), (2, 0), (3, 0)]);
        let (_srv, keda) = start_ebb().await;
        let view = broker_view(&t, "g", "events", 4);
        let total = expected_lag(&view, false, false);
        assert_eq!(total, 53);

        let th = [("lagThreshold", "5")];
        // 53/5 = 10 > 4 partitions ⇒ 4 × 5.
        assert_eq!(cycle(&keda, "capped", &kafka_md(&t, "g", Some("events"), &th)).await.value(), 20.0);
        let md = kafka_md(&t, "g", Some("events"), &[("lagThreshold", "5"), ("allowIdleConsumers", "true")]);
        assert_eq!(cycle(&keda, "idle", &md).await.value(), total as f64);
        // Two partitions have lag ⇒ 2 × 5.
        let md = kafka_md(&t, "g", Some("events"), &[("lagThreshold", "5"), ("limitToPartitionsWithLag", "true")]);
        assert_eq!(cycle(&keda, "with-lag", &md).await.value(), 10.0);
        // lagThreshold 20: 53 ⇒ smallest divisor f of 4 with 20f ≥ 53 is 4 ⇒ 80, capped at 4 × 20.
        let md = kafka_md(
            &t,
            "g",
            Some("events"),
            &[("lagThreshold", "20"), ("ensureEvenDistributionOfPartitions", "true")],
        );
        assert_eq!(cycle(&keda, "even", &md).await.value(), 80.0);
        // lagThreshold 30: f = 2 ⇒ 60.
        let md = kafka_md(
            &t,
            "g",
            Some("events"),
            &[("lagThreshold", "30"), ("ensureEvenDistributionOfPartitions", "true")],
        );
        assert_eq!(cycle(&keda, "even-2", &md).await.value(), 60.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_topic_every_topic_of_the_group_counts() {
    within(TEST_LIMIT, "without_topic_every_topic_of_the_group_counts", async {
        let t = Tansu::start();
        t.create_topic("a", 2);
        t.create_topic("b", 3);
        t.create_topic("unrelated", 1);
        for p in 0..2 {
            t.produce("a", p, 5);
        }
        for p in 0..3 {
            t.produce("b", p, 7);
        }
        t.produce("unrelated", 0, 100);
        t.commit("multi", "a", &[(0, 1)]);
        t.commit("multi", "b", &[(0, 2), (1, 7)]);
        let expected = expected_lag(&broker_view(&t, "multi", "a", 2), false, false)
            + expected_lag(&broker_view(&t, "multi", "b", 3), false, false);
        assert_eq!(expected, 11, "a: 4 + 1 (uncommitted); b: 5 + 0 + 1 (uncommitted)");

        let (_srv, keda) = start_ebb().await;
        let md = kafka_md(&t, "multi", None, &[("allowIdleConsumers", "true")]);
        let c = cycle(&keda, "all-topics", &md).await;
        assert_eq!(c.value(), expected as f64, "topics a and b, not the unrelated one");
        // Default cap over all 5 partitions of both topics: 11/10 = 1 ≤ 5.
        assert_eq!(cycle(&keda, "all-capped", &kafka_md(&t, "multi", None, &[])).await.value(), 11.0);
        // A group without commits has no topics: lag 0, inactive.
        let none = cycle(&keda, "no-commits", &kafka_md(&t, "nobody", None, &[])).await;
        assert_eq!((none.value(), none.active), (0.0, false));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consuming_reduces_lag_and_persistent_lag_is_excluded() {
    within(TEST_LIMIT, "consuming_reduces_lag_and_persistent_lag_is_excluded", async {
        let t = Tansu::start();
        t.create_topic("jobs", 1);
        t.produce("jobs", 0, 30);
        t.commit("workers", "jobs", &[(0, 0)]);
        let (_srv, keda) = start_ebb().await;
        let plain = kafka_md(&t, "workers", Some("jobs"), &[("allowIdleConsumers", "true")]);
        let stuck =
            kafka_md(&t, "workers", Some("jobs"), &[("allowIdleConsumers", "true"), ("excludePersistentLag", "true")]);
        assert_eq!(cycle(&keda, "plain", &plain).await.value(), 30.0);
        assert_eq!(cycle(&keda, "stuck", &stuck).await.value(), 30.0, "first poll: no previous offset");

        // The committed offset does not move across polls (pollingInterval 1 s): the metric
        // drops to 0, activation still sees the lag.
        let mut persisted = None;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let c = cycle(&keda, "stuck", &stuck).await;
            if c.value() == 0.0 {
                persisted = Some(c);
                break;
            }
        }
        let persisted = persisted.expect("persistent lag excluded within 10 s");
        assert!(persisted.active, "excludePersistentLag never hides lag from activation");
        assert_eq!(cycle(&keda, "plain", &plain).await.value(), 30.0);

        // A real consumer reads 12 and commits: lag follows the broker.
        let consumed = t.consume_and_commit("workers", "jobs", 12);
        assert!(consumed > 0, "consumed nothing");
        let want = expected_lag(&broker_view(&t, "workers", "jobs", 1), false, false) as f64;
        let mut last = f64::NAN;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            last = cycle(&keda, "plain", &plain).await.value();
            if last == want {
                break;
            }
        }
        assert_eq!(last, want, "lag after consuming {consumed}");
        // The offset moved, so it counts again for the metric.
        let mut moved = f64::NAN;
        for _ in 0..40 {
            moved = cycle(&keda, "stuck", &stuck).await.value();
            if moved == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(moved, want);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaledobjects_on_one_group_share_one_poll_and_one_client() {
    within(TEST_LIMIT, "scaledobjects_on_one_group_share_one_poll_and_one_client", async {
        let t = Tansu::start();
        t.create_topic("shared", 2);
        t.produce("shared", 0, 8);
        t.commit("g1", "shared", &[(0, 3), (1, 0)]);
        t.commit("g2", "shared", &[(0, 8), (1, 0)]);
        let (srv, keda) = start_ebb().await;
        let g1 = kafka_md(&t, "g1", Some("shared"), &[("lagThreshold", "2"), ("allowIdleConsumers", "true")]);
        let g2 = kafka_md(&t, "g2", Some("shared"), &[]);
        // 20 ScaledObjects on g1 with their own thresholds still share g1's poll.
        let cycles = keda.drive_many(20, &g1, Duration::from_secs(3), 5.0).await;
        assert!(cycles >= 20);
        assert_eq!(cycle(&keda, "g2", &g2).await.value(), 0.0);
        let metrics = reqwest::get(format!("http://{}/metrics", srv.http_addr)).await.unwrap().text().await.unwrap();
        let sources = metrics.lines().find(|l| l.starts_with("ebb_sources ")).unwrap_or_default();
        assert_eq!(sources, "ebb_sources 2", "one source per group:\n{metrics}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_clear_and_bounded() {
    within(TEST_LIMIT, "errors_are_clear_and_bounded", async {
        let mut t = Tansu::start();
        t.create_topic("present", 1);
        // A short staleness bound, so the outage shows within the test.
        let engine = EngineConfig { max_staleness: Duration::from_secs(3), ..EngineConfig::default() };
        let (_srv, keda) = start_ebb_with(engine).await;

        // Invalid metadata: INVALID_ARGUMENT naming the key.
        let md = kafka_md(&t, "g", None, &[("limitToPartitionsWithLag", "true")]);
        let r = keda.get_metric_spec(&so_owned("bad", &md)).await;
        assert_status(r, Code::InvalidArgument, "limitToPartitionsWithLag", "needs topic");
        let md = kafka_md(&t, "g", Some("present"), &[("sasl", "plaintext"), ("username", "u")]);
        assert_status(keda.get_metric_spec(&so_owned("bad2", &md)).await, Code::InvalidArgument, "password", "sasl");

        // An unknown topic: an error that names it, within KEDA's deadline.
        let md = kafka_md(&t, "g", Some("missing"), &[]);
        let so = so_owned("missing", &md);
        keda.get_metric_spec(&so).await.unwrap();
        let err = keda.get_metrics(&so, "").await.unwrap_err();
        assert!(err.message().contains("missing"), "{err:?}");

        // Partition limitation that selects nothing: KEDA's error.
        let md = kafka_md(&t, "g", Some("present"), &[("partitionLimitation", "5-9")]);
        let so = so_owned("none-active", &md);
        keda.get_metric_spec(&so).await.unwrap();
        let err = keda.get_metrics(&so, "").await.unwrap_err();
        assert!(err.message().contains("at least one active partition"), "{err:?}");

        // Broker down: every answer still inside the deadline, then UNAVAILABLE.
        let md = kafka_md(&t, "g", Some("present"), &[]);
        let so = so_owned("down", &md);
        assert_eq!(keda.cycle(&so).await.unwrap().value(), 1.0, "no commit, latest policy");
        t.kill();
        let mut saw_unavailable = false;
        for _ in 0..40 {
            match keda.get_metrics(&so, "").await {
                Err(s) if s.code() == Code::Unavailable => {
                    saw_unavailable = true;
                    break;
                }
                Err(s) => assert_ne!(s.code(), Code::DeadlineExceeded, "hung: {s:?}"),
                Ok(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(saw_unavailable, "UNAVAILABLE once the last good value is older than the staleness bound");
    })
    .await;
}
