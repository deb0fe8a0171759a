//! An ebb server on loopback and a KEDA-like client for it.
//!
//! KEDA's scale loop calls GetMetricSpec, then GetMetrics, then IsActive, each with a 3 s
//! deadline; [`Keda`] does the same, so a slow answer fails a test instead of hanging it.

use std::collections::HashMap;
use std::time::Duration;

use ebb::engine::EngineConfig;
use ebb::proto::external_scaler_client::ExternalScalerClient;
use ebb::proto::{GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, ScaledObjectRef};
use ebb::server::{self, ServeOptions, Server};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// KEDA's deadline on each external-scaler call.
pub const RPC_DEADLINE: Duration = Duration::from_secs(3);

/// Starts ebb with gRPC and HTTP on `127.0.0.1:0` and the default engine config.
/// An access policy for one trusted team: every namespace may use every named secret and its
/// own TriggerAuthentications, and the caller's namespace is believed.
pub fn open_access() -> ebb::access::Access {
    let yaml = "trustCallerNamespace: true\nbindings: [{namespaces: ['*'], secrets: ['*'], authenticationRef: true}]";
    ebb::access::Access { policy: serde_saphyr::from_str(yaml).expect("policy"), ..Default::default() }
}

pub async fn start_ebb() -> (Server, Keda) {
    start_ebb_with(EngineConfig::default()).await
}

pub async fn start_ebb_with(engine: EngineConfig) -> (Server, Keda) {
    start_ebb_with_opts(ServeOptions { engine, ..ServeOptions::default() }).await
}

/// Starts ebb with `opts`, its addresses replaced by `127.0.0.1:0`.
pub async fn start_ebb_with_opts(opts: ServeOptions) -> (Server, Keda) {
    let opts = ServeOptions {
        grpc_addr: "127.0.0.1:0".parse().expect("addr"),
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        ..opts
    };
    let srv = server::spawn(opts).await.expect("ebb server starts");
    let keda = Keda::connect(&srv).await;
    (srv, keda)
}

/// The value of the series `name{…}` on ebb's `/metrics` whose labels include every
/// `label="value"` of `labels`.
pub async fn gauge(addr: std::net::SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let http = reqwest::Client::builder().no_proxy().build().ok()?;
    let text = http.get(format!("http://{addr}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find(|l| {
            l.starts_with(&format!("{name}{{")) && labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `policy: drain`'s estimates for ScaledObject `so` on `/metrics`: (λ̂, μ̂, R̂).
pub async fn drain_estimates(addr: std::net::SocketAddr, so: &str) -> (f64, f64, f64) {
    let labels = [("scaledobject", so)];
    let read = |name: &'static str| async move { gauge(addr, name, &labels).await.unwrap_or_else(|| panic!("{name}")) };
    (
        read("ebb_scaledobject_arrival_rate_per_second").await,
        read("ebb_scaledobject_throughput_per_replica_per_second").await,
        read("ebb_scaledobject_ready_replicas_estimate").await,
    )
}

/// A ScaledObjectRef in namespace `default`.
pub fn so(name: &str, metadata: &[(&str, &str)]) -> ScaledObjectRef {
    ScaledObjectRef {
        name: name.to_string(),
        namespace: "default".to_string(),
        scaler_metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>(),
    }
}

/// Prometheus trigger metadata as KEDA would send it for an `external` trigger, plus
/// `extra` (which overrides).
pub fn prom_metadata(server_address: &str, query: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut md: Vec<(String, String)> = vec![
        ("scalerAddress".into(), "ebb.keda.svc.cluster.local:9090".into()),
        ("scalerType".into(), "prometheus".into()),
        ("serverAddress".into(), server_address.into()),
        ("query".into(), query.into()),
        ("threshold".into(), "10".into()),
    ];
    for (k, v) in extra {
        md.retain(|(key, _)| key != k);
        md.push((k.to_string(), v.to_string()));
    }
    md
}

pub fn so_owned(name: &str, metadata: &[(String, String)]) -> ScaledObjectRef {
    ScaledObjectRef {
        name: name.to_string(),
        namespace: "default".to_string(),
        scaler_metadata: metadata.iter().cloned().collect(),
    }
}

/// The KEDA side: a tonic client whose every call has [`RPC_DEADLINE`].
#[derive(Clone)]
pub struct Keda {
    pub client: ExternalScalerClient<Channel>,
}

fn with_deadline<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(RPC_DEADLINE);
    req
}

async fn bounded<T>(call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>) -> Result<T, Status> {
    // A little over the deadline: the grpc-timeout header should end the call first.
    match tokio::time::timeout(RPC_DEADLINE + Duration::from_millis(500), call).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!("no answer within {RPC_DEADLINE:?} (client-side bound)"))),
    }
}

impl Keda {
    pub fn from_channel(channel: Channel) -> Keda {
        Keda { client: ExternalScalerClient::new(channel) }
    }

    pub async fn connect(srv: &Server) -> Keda {
        let channel = tokio::time::timeout(
            Duration::from_secs(5),
            Channel::from_shared(format!("http://{}", srv.grpc_addr)).expect("uri").connect(),
        )
        .await
        .expect("connecting to ebb timed out")
        .expect("connecting to ebb");
        Keda { client: ExternalScalerClient::new(channel) }
    }

    pub async fn get_metric_spec(&self, so: &ScaledObjectRef) -> Result<GetMetricSpecResponse, Status> {
        let mut c = self.client.clone();
        bounded(c.get_metric_spec(with_deadline(so.clone()))).await
    }

    pub async fn get_metrics(&self, so: &ScaledObjectRef, metric_name: &str) -> Result<GetMetricsResponse, Status> {
        let mut c = self.client.clone();
        let req = GetMetricsRequest { scaled_object_ref: Some(so.clone()), metric_name: metric_name.to_string() };
        bounded(c.get_metrics(with_deadline(req))).await
    }

    pub async fn is_active(&self, so: &ScaledObjectRef) -> Result<IsActiveResponse, Status> {
        let mut c = self.client.clone();
        bounded(c.is_active(with_deadline(so.clone()))).await
    }

    /// Opens StreamIsActive (no deadline: KEDA holds it open).
    pub async fn stream_is_active(&self, so: &ScaledObjectRef) -> Result<Streaming<IsActiveResponse>, Status> {
        let mut c = self.client.clone();
        match tokio::time::timeout(RPC_DEADLINE, c.stream_is_active(so.clone())).await {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded("StreamIsActive did not open")),
        }
    }

    /// One KEDA cycle: GetMetricSpec → GetMetrics (for the spec's metric) → IsActive.
    /// Drives `objects` ScaledObjects named `consumer-NN` with metadata `md` in KEDA's order,
    /// each every 50 ms for `phase` (at most 100 cycles each), asserting every cycle reports
    /// `expected`. Returns the number of cycles run.
    pub async fn drive_many(&self, objects: usize, md: &[(String, String)], phase: Duration, expected: f64) -> usize {
        let start = std::time::Instant::now();
        let mut tasks = Vec::new();
        for i in 0..objects {
            let keda = self.clone();
            let so = so_owned(&format!("consumer-{i:02}"), md);
            tasks.push(tokio::spawn(async move {
                let mut cycles = 0;
                for _ in 0..100 {
                    if start.elapsed() >= phase {
                        break;
                    }
                    let c = keda.cycle(&so).await.unwrap_or_else(|s| panic!("{}: {s:?}", so.name));
                    assert_eq!(c.value(), expected, "{}", so.name);
                    cycles += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                cycles
            }));
        }
        let mut cycles = 0;
        for t in tasks {
            cycles += t.await.expect("task");
        }
        cycles
    }

    pub async fn cycle(&self, so: &ScaledObjectRef) -> Result<Cycle, Status> {
        let spec = self.get_metric_spec(so).await?;
        let name = spec.metric_specs.first().map(|s| s.metric_name.clone()).unwrap_or_default();
        let metrics = self.get_metrics(so, &name).await?;
        let active = self.is_active(so).await?;
        Ok(Cycle { spec, metrics, active: active.result })
    }
}

/// The answers of one KEDA cycle.
#[derive(Debug, Clone)]
pub struct Cycle {
    pub spec: GetMetricSpecResponse,
    pub metrics: GetMetricsResponse,
    pub active: bool,
}

impl Cycle {
    /// The float metric value of the single MetricValue.
    pub fn value(&self) -> f64 {
        assert_eq!(self.metrics.metric_values.len(), 1, "one metric value: {:?}", self.metrics);
        self.metrics.metric_values[0].metric_value_float
    }
}

/// Asserts `r` failed with `code` and a message containing `needle` (case-insensitive).
pub fn assert_status<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, needle: &str, ctx: &str) -> Status {
    match r {
        Ok(v) => panic!("{ctx}: expected {code:?} mentioning {needle:?}, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), code, "{ctx}: wrong code; message: {}", s.message());
            assert!(
                s.message().to_lowercase().contains(&needle.to_lowercase()),
                "{ctx}: message should mention {needle:?}: {}",
                s.message()
            );
            s
        }
    }
}

/// The `ebb serve` binary as a child process on free loopback ports, its output in a log file
/// in a temp dir; killed (by its handle) on drop.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub grpc: std::net::SocketAddr,
    pub http: std::net::SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServeProcess {
    /// Starts `ebb serve --grpc-addr … --http-addr … <args>` with `RUST_LOG=<rust_log>` (which
    /// must let `ebb::server`'s info line through) and waits (bounded) until it logs that it
    /// serves; retries on other ports if it exits at once (a port taken meanwhile).
    pub async fn start(args: &[&str], rust_log: &str) -> ServeProcess {
        Self::start_with_env(args, rust_log, &[]).await
    }

    /// [`ServeProcess::start`] with extra environment variables.
    pub async fn start_with_env(args: &[&str], rust_log: &str, env: &[(&str, &str)]) -> ServeProcess {
        use std::net::SocketAddr;
        use std::process::{Command, Stdio};
        use std::time::Instant;
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let log = dir.path().join("ebb.log");
            let out = std::fs::File::create(&log).expect("log");
            let err = out.try_clone().expect("log handle");
            let grpc = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
            let http = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
            let child = Command::new(env!("CARGO_BIN_EXE_ebb"))
                .args(["serve", "--grpc-addr", &grpc.to_string(), "--http-addr", &http.to_string()])
                .args(args)
                .env("RUST_LOG", rust_log)
                .env("NO_COLOR", "1")
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err))
                .spawn()
                .expect("spawning ebb serve");
            let mut ebb = ServeProcess { child, grpc, http, log, _dir: dir };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(status)) = ebb.child.try_wait() {
                    last = format!("ebb exited ({status}) before serving:\n{}", ebb.log_text());
                    break;
                }
                if ebb.log_text().contains("ebb serving") {
                    return ebb;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if ebb.child.try_wait().ok().flatten().is_none() {
                panic!("ebb did not serve within 15 s:\n{}", ebb.log_text());
            }
        }
        panic!("ebb serve failed to start 3 times; last: {last}");
    }

    /// A new HTTP/2 connection to its gRPC port.
    pub async fn channel(&self) -> Channel {
        let endpoint = Channel::from_shared(format!("http://{}", self.grpc)).expect("uri").tcp_nodelay(true);
        super::within(Duration::from_secs(5), "connecting to ebb", endpoint.connect()).await.expect("connecting to ebb")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits (bounded by `limit`) for the process to exit.
    pub async fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}
