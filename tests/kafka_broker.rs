//! Smoke test of the Kafka test harness (`common::kafka::Tansu`) against a real tansu broker
//! (SQLite storage, installed by `scripts/install-services.sh`) on loopback: topic creation,
//! batched produce, standalone and group commits, and the broker's own watermarks and committed
//! offsets as read back through rdkafka. No ebb involved; every call is bounded.

#![cfg(all(feature = "kafka", feature = "integration"))]

mod common;

use std::time::{Duration, Instant};

use common::kafka::Tansu;
use common::within;

const TEST_LIMIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_commit_and_read_back() {
    within(TEST_LIMIT, "produce_commit_and_read_back", async {
        let t0 = Instant::now();
        let broker = Tansu::start();
        eprintln!("tansu listening on {} after {:?}", broker.bootstrap(), t0.elapsed());

        broker.create_topic("orders", 3);
        for p in 0..3 {
            broker.produce("orders", p, 10);
        }
        for p in 0..3 {
            assert_eq!(broker.watermarks("orders", p), (0, 10), "watermarks of partition {p}");
        }

        // A standalone commit (no group membership) on one partition only.
        broker.commit("g1", "orders", &[(0, 4)]);
        assert_eq!(broker.committed("g1", "orders", &[0, 1, 2]), vec![(0, Some(4)), (1, None), (2, None)]);

        // A real group member: join, consume, commit; the commits add up to what it consumed.
        let t1 = Instant::now();
        let consumed = broker.consume_and_commit("g2", "orders", 17);
        eprintln!("consumed {consumed} as g2 in {:?}", t1.elapsed());
        assert_eq!(consumed, 17);
        let committed = broker.committed("g2", "orders", &[0, 1, 2]);
        let sum: i64 = committed.iter().map(|(_, o)| o.unwrap_or(0)).sum();
        assert_eq!(sum, 17, "committed offsets {committed:?}");

        // Consuming the rest stops at the end of the partitions, and g1 is untouched.
        let rest = broker.consume_and_commit("g2", "orders", 100);
        assert_eq!(rest, 13);
        assert_eq!(broker.committed("g2", "orders", &[0, 1, 2]), vec![(0, Some(10)), (1, Some(10)), (2, Some(10))]);
        assert_eq!(broker.committed("g1", "orders", &[0, 1, 2]), vec![(0, Some(4)), (1, None), (2, None)]);
        eprintln!("whole test body {:?}", t0.elapsed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_takes_the_broker_down() {
    within(TEST_LIMIT, "kill_takes_the_broker_down", async {
        let mut broker = Tansu::start();
        broker.create_topic("t", 1);
        broker.produce("t", 0, 1000);
        assert_eq!(broker.watermarks("t", 0), (0, 1000));
        assert!(broker.is_running());
        broker.kill();
        assert!(!broker.is_running());
        let refused = std::net::TcpStream::connect_timeout(
            &format!("127.0.0.1:{}", broker.port()).parse().unwrap(),
            Duration::from_secs(1),
        );
        assert!(refused.is_err(), "port still open after kill");
    })
    .await;
}
