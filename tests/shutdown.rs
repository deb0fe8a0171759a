//! Graceful shutdown of the real binary: `ebb serve` gets SIGTERM while a GetMetrics call is
//! waiting on a slow source's first poll and two StreamIsActive streams are open (one that has
//! already pushed, one still waiting), with an idle keep-alive HTTP connection (a scraper) and
//! an idle gRPC connection (KEDA). The in-flight call must complete, the streams must end with
//! a clean end-of-stream (KEDA then reconnects), the process must exit with success well inside
//! Kubernetes' default 30 s grace period, and the ports must refuse connections afterwards.
//!
//! Every wait is bounded.

mod common;

use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::Query;
use axum::response::IntoResponse;
use common::ebb::{Keda, ServeProcess, prom_metadata, so_owned};
use common::within;
use ebb::proto::external_scaler_client::ExternalScalerClient;
use tonic::transport::Channel;

const TEST_LIMIT: Duration = Duration::from_secs(60);
/// What the test allows from SIGTERM to exit (Kubernetes' default grace period is 30 s).
const EXIT_WITHIN: Duration = Duration::from_secs(10);
/// How long the source takes to answer one query.
const SLOW: Duration = Duration::from_secs(1);

/// A Prometheus-shaped server answering every query with 3 after [`SLOW`]; counts the queries
/// started, by query text.
async fn slow_prometheus() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let warm = Arc::new(AtomicUsize::new(0));
    let slow = Arc::new(AtomicUsize::new(0));
    let (w, s) = (warm.clone(), slow.clone());
    let app = axum::Router::new().route(
        "/api/v1/query",
        axum::routing::get(move |Query(q): Query<std::collections::HashMap<String, String>>| {
            let (w, s) = (w.clone(), s.clone());
            async move {
                match q.get("query").map(String::as_str) {
                    Some("warm") => w.fetch_add(1, Ordering::SeqCst),
                    _ => s.fetch_add(1, Ordering::SeqCst),
                };
                tokio::time::sleep(SLOW).await;
                let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.0,"3"]}]}}"#;
                ([("content-type", "application/json")], body).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    (format!("http://{addr}"), warm, slow, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_calls_ends_streams_and_exits() {
    within(TEST_LIMIT, "sigterm_drains_in_flight_calls_ends_streams_and_exits", async {
        let (prom, warm_queries, slow_queries, prom_task) = slow_prometheus().await;
        // Room for the 1 s first poll (the default wait is 1.5 s).
        let mut ebb = ServeProcess::start(&["--first-poll-wait", "5"], "debug").await;
        let keda = Keda { client: ExternalScalerClient::new(ebb.channel().await) };

        // A scraper's keep-alive HTTP connection, idle at SIGTERM.
        let scraper = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().expect("client");
        let metrics = scraper.get(format!("http://{}/metrics", ebb.http)).send().await.expect("GET /metrics");
        assert!(metrics.status().is_success());
        let _ = metrics.text().await;

        // A trigger whose source has answered: its stream has pushed its first message.
        let warm_md = prom_metadata(&prom, "warm", &[("pollingInterval", "30")]);
        let warm = so_owned("warm", &warm_md);
        let v = keda.get_metrics(&warm, "x").await.expect("warm GetMetrics (first poll, 1 s)");
        assert_eq!(v.metric_values[0].metric_value_float, 3.0);
        let mut warm_stream = keda.stream_is_active(&warm).await.expect("warm StreamIsActive opens");
        let first = within(Duration::from_secs(3), "warm stream's first message", warm_stream.message())
            .await
            .expect("warm stream ok")
            .expect("warm stream open");
        assert!(first.result, "3 > activationThreshold 0");

        // A new trigger: GetMetrics waits for its source's first poll (1 s) — in flight at SIGTERM.
        let slow_md = prom_metadata(&prom, "slow", &[("pollingInterval", "30")]);
        let slow = so_owned("slow", &slow_md);
        let in_flight = {
            let keda = keda.clone();
            let slow = slow.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let r = keda.get_metrics(&slow, "x").await;
                (r, started.elapsed())
            })
        };
        // Its stream opens before the first poll is done, so it has nothing to push yet.
        let mut slow_stream = {
            let mut r = None;
            for _ in 0..20 {
                if slow_queries.load(Ordering::SeqCst) > 0 {
                    r = Some(keda.stream_is_active(&slow).await.expect("slow StreamIsActive opens"));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            r.expect("the slow source's first query started within 500 ms")
        };
        assert!(!in_flight.is_finished(), "GetMetrics is still waiting on the first poll");

        let term_at = Instant::now();
        ebb.sigterm();

        // While draining (once ebb has logged that it is shutting down): does a new connection
        // get in? Reported, not asserted: Kubernetes stops routing to a terminating pod anyway,
        // and the listener closes a moment after the signal is handled.
        let mut draining = false;
        for _ in 0..40 {
            if ebb.log_text().contains("shutting down") {
                draining = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(draining, "ebb did not log \"shutting down\" within 1 s of SIGTERM:\n{}", ebb.log_text());
        let since_term = term_at.elapsed();
        let probe = tokio::time::timeout(Duration::from_millis(300), async {
            match Channel::from_shared(format!("http://{}", ebb.grpc)).expect("uri").connect().await {
                Ok(ch) => {
                    let mut c = ExternalScalerClient::new(ch);
                    let mut req = tonic::Request::new(warm.clone());
                    req.set_timeout(Duration::from_secs(1));
                    format!("connected; IsActive -> {:?}", c.is_active(req).await.map(|r| r.into_inner().result))
                }
                Err(e) => format!("connect failed: {e}"),
            }
        })
        .await
        .unwrap_or_else(|_| "no answer within 300 ms".to_string());
        eprintln!("new gRPC connection while draining ({since_term:?} after SIGTERM): {probe}");

        // The in-flight call completes with the first poll's value.
        let (r, took) = within(Duration::from_secs(6), "the in-flight GetMetrics", in_flight).await.expect("task");
        let answered_at = term_at.elapsed();
        match &r {
            Ok(m) => eprintln!(
                "in-flight GetMetrics: Ok({}) after {took:?} ({answered_at:?} after SIGTERM)",
                m.metric_values[0].metric_value_float
            ),
            Err(s) => eprintln!("in-flight GetMetrics: {:?} {:?} after {took:?}", s.code(), s.message()),
        }
        let m =
            r.unwrap_or_else(|s| panic!("the in-flight GetMetrics must complete, got {:?}: {}", s.code(), s.message()));
        assert_eq!(m.metric_values[0].metric_value_float, 3.0, "the value of the poll that was in flight");

        // Both streams end cleanly: end-of-stream (grpc-status 0), not a reset or an error.
        let warm_end = within(Duration::from_secs(5), "the warm stream's end", async {
            let mut extra = 0;
            loop {
                match warm_stream.message().await {
                    Ok(Some(_)) if extra < 10 => extra += 1,
                    other => return (other, extra),
                }
            }
        })
        .await;
        eprintln!("warm stream after SIGTERM: {:?} (after {} more messages)", warm_end.0, warm_end.1);
        assert!(matches!(warm_end.0, Ok(None)), "the warm stream must end with end-of-stream: {:?}", warm_end.0);
        let slow_end = within(Duration::from_secs(5), "the slow stream's end", async {
            let mut messages = 0;
            loop {
                match slow_stream.message().await {
                    Ok(Some(_)) if messages < 10 => messages += 1,
                    other => return (other, messages),
                }
            }
        })
        .await;
        eprintln!("slow stream after SIGTERM: {:?} (after {} messages)", slow_end.0, slow_end.1);
        assert!(matches!(slow_end.0, Ok(None)), "the slow stream must end with end-of-stream: {:?}", slow_end.0);

        // The process exits with success well inside the grace period.
        let status = ebb.exit_within(EXIT_WITHIN).await;
        let exited_after = term_at.elapsed();
        let log = ebb.log_text();
        let status = status.unwrap_or_else(|| panic!("ebb still running {EXIT_WITHIN:?} after SIGTERM; log:\n{log}"));
        eprintln!("ebb exited {status} {exited_after:?} after SIGTERM");
        assert!(status.success(), "exit status {status}; log:\n{log}");
        assert!(log.contains("shutting down"), "log:\n{log}");

        // Afterwards nothing listens: new connections are refused at once.
        for (what, addr) in [("gRPC", ebb.grpc), ("HTTP", ebb.http)] {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{what} {addr}: {e}"),
                Ok(_) => panic!("{what} {addr} still accepts connections after exit"),
            }
        }
        let again = keda.get_metrics(&warm, "x").await;
        assert_eq!(again.as_ref().map_err(|s| s.code()).err(), Some(tonic::Code::Unavailable), "{again:?}");

        eprintln!(
            "queries: warm {}, slow {}",
            warm_queries.load(Ordering::SeqCst),
            slow_queries.load(Ordering::SeqCst)
        );
        prom_task.abort();
    })
    .await;
}
