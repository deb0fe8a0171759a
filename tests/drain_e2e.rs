//! Issue 16: `policy: drain` reads the rates a real Kafka-protocol broker (tansu) shows.
//!
//! The test produces at a known rate and commits at a known, lower one (the consumers cannot keep
//! up), and reads ebb's estimates on `/metrics`: the arrival rate from Σ log-end offsets, and the
//! processing rate (per-replica throughput × the replicas ebb counts as ready) from Σ committed
//! offsets, both from the same poll that gives the lag. `maxReplicaCount: 4` keeps the count ebb
//! asks for (and so counts as ready after `startupSeconds`) at 4 while the lag grows.

#![cfg(all(feature = "kafka", feature = "integration"))]

mod common;

use std::time::{Duration, Instant};

use common::ebb::{drain_estimates, so_owned, start_ebb};
use common::kafka::Tansu;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrival_and_processing_rates_converge_to_the_brokers() {
    common::within(Duration::from_secs(180), "drain rates", async {
        let tansu = tokio::task::spawn_blocking(|| {
            let t = Tansu::start();
            // Four partitions, so up to four consumers can work (KEDA's allowIdleConsumers: false);
            // every message goes to partition 0, the others have a commit at 0.
            t.create_topic("rates", 4);
            t.produce("rates", 0, 10);
            t.commit("rates-group", "rates", &[(0, 10), (1, 0), (2, 0), (3, 0)]);
            t
        })
        .await
        .unwrap();
        let (srv, keda) = start_ebb().await;
        let md: Vec<(String, String)> = [
            ("scalerType", "kafka"),
            ("bootstrapServers", tansu.bootstrap().as_str()),
            ("consumerGroup", "rates-group"),
            ("topic", "rates"),
            ("pollingInterval", "1"),
            ("outputMode", "replicas"),
            ("policy", "drain"),
            ("maxReplicaCount", "4"),
            ("startupSeconds", "2"),
            ("rateWindowShortSeconds", "5"),
            ("rateWindowLongSeconds", "10"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let so = so_owned("rates", &md);
        keda.cycle(&so).await.expect("first cycle");

        // Produce 40 messages a second and commit 16 a second, for 45 s.
        let (produce, commit) = (40usize, 16i64);
        let tansu = std::sync::Arc::new(tansu);
        let start = Instant::now();
        let mut committed = 10i64;
        let mut produced = 10usize;
        let mut history: Vec<(Instant, usize, i64)> = Vec::new();
        while start.elapsed() < Duration::from_secs(45) {
            let tick = Instant::now();
            committed += commit;
            produced += produce;
            let t = tansu.clone();
            tokio::task::spawn_blocking(move || {
                t.produce("rates", 0, produce);
                t.commit("rates-group", "rates", &[(0, committed)]);
            })
            .await
            .unwrap();
            history.push((Instant::now(), produced, committed));
            tokio::time::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed())).await;
        }
        // The rates the broker really saw over the last 10 s (the loop may run slower than 1 s).
        let (t1, p1, c1) = *history.last().unwrap();
        let (t0, p0, c0) = *history.iter().rev().find(|(t, _, _)| t1.duration_since(*t) >= Duration::from_secs(10)).unwrap();
        let secs = t1.duration_since(t0).as_secs_f64();
        let (lambda, processing) = ((p1 - p0) as f64 / secs, (c1 - c0) as f64 / secs);

        let (a, mu, ready) = drain_estimates(srv.http_addr, "rates").await;
        eprintln!(
            "broker: {lambda:.1} msg/s in, {processing:.1} msg/s committed; ebb: λ̂ {a:.1}, μ̂ {mu:.2} × R̂ {ready} = {:.1}",
            mu * ready
        );
        assert!((a - lambda).abs() <= 0.3 * lambda, "λ̂ {a} vs {lambda}");
        assert_eq!(ready, 4.0, "saturated: maxReplicaCount");
        assert!((mu * ready - processing).abs() <= 0.3 * processing, "μ̂·R̂ {} vs {processing}", mu * ready);
        srv.shutdown().await;
    })
    .await;
}
