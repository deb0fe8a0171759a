//! The simulated source a bench run scales on: a backlog served over HTTP.

use super::*;

pub(super) struct Source {
    pub(super) trace: Trace,
    pub(super) delay: Duration,
    pub(super) start: Instant,
    pub(super) calls: AtomicU64,
}

pub(super) async fn serve_source(source: Arc<Source>, at: SocketAddr) -> Result<SocketAddr, BenchError> {
    async fn query(State(s): State<Arc<Source>>) -> String {
        s.calls.fetch_add(1, Ordering::Relaxed);
        if !s.delay.is_zero() {
            tokio::time::sleep(s.delay).await;
        }
        let v = s.trace.value(s.start.elapsed().as_secs_f64());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[{now:.3},"{v}"]}}]}}}}"#
        )
    }
    let app = Router::new().route("/api/v1/query", get(query)).with_state(source);
    if !at.ip().is_loopback() {
        return Err(BenchError::Flag(format!("--source-addr {at}: the simulated source binds loopback only")));
    }
    let listener = tokio::net::TcpListener::bind(at).await.map_err(BenchError::Source)?;
    let addr = listener.local_addr().map_err(BenchError::Source)?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}
