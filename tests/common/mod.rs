//! Harness shared by the integration tests: real servers on loopback, started per test.
//!
//! - [`prom::PromStack`]: a Prometheus 2.42 scraping a Pushgateway 1.5 every second, both child
//!   processes in a temp dir, killed (by their `Child` handles) when the stack drops.
//! - [`ebb`]: an ebb server on `127.0.0.1:0` and a KEDA-like tonic client with a deadline on
//!   every call.
//!
//! Every wait here is bounded in time and in iterations.

#![allow(dead_code)]

pub mod azure_front;
pub mod azurite;
pub mod certs;
pub mod ebb;
pub mod eventhubs;
pub mod faults;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod prom;
pub mod servicebus;

#[allow(unused_imports)] // not every test binary starts Prometheus
pub use prom::PromStack;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago (bind `127.0.0.1:0`, then drop the listener).
/// Someone else may take it before it is used; callers that start servers on it retry.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local_addr").port()
}

/// `http://127.0.0.1:<port>` of a port nobody listens on (connections are refused at once).
pub fn closed_url() -> String {
    let addr: SocketAddr =
        TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local_addr");
    format!("http://{addr}")
}

/// A name unique to this process and call, usable as a Prometheus metric name or job.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}_{}_{n}_{nanos:x}", std::process::id())
}

/// Runs `f`, failing the test if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// Repeats `step` every 100 ms, up to `limit` (bounded in count and time), until `done`
/// holds for its result; panics with the last result otherwise.
pub async fn until<T: std::fmt::Debug>(
    limit: Duration,
    what: &str,
    mut step: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let start = Instant::now();
    let mut last = None;
    for _ in 0..(limit.as_millis() / 100 + 1) {
        let r = step().await;
        if done(&r) {
            return r;
        }
        last = Some(r);
        if start.elapsed() >= limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not reached within {limit:?}; last: {last:?}");
}
