//! `ebb serve`: the gRPC door for KEDA, `grpc.health.v1`, and the HTTP door, on one engine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tracing::info;

use crate::engine::{AuthRefResolver, Engine, EngineConfig, ReadyReplicas};
use crate::grpc;
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::proto::external_scaler_server::ExternalScalerServer;

/// Where and how to serve.
#[derive(Clone)]
pub struct ServeOptions {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub engine: EngineConfig,
    /// What pollers may use of the process (`--secrets-dir`, `--max-upstream-concurrency`).
    pub scalers: ebb_scalers::Settings,
    /// Resolves `authenticationRef` (KEDA TriggerAuthentications); `None` turns it off.
    pub auth_refs: Option<Arc<dyn AuthRefResolver>>,
    /// Reads scale targets' ready replicas for `policy: drain`; `None` turns it off.
    pub ready_replicas: Option<Arc<dyn ReadyReplicas>>,
    /// ScaledObjects served over HTTP to Container Apps scale rules (`serve --config`).
    pub bridge: crate::bridge::Config,
    /// TLS (and mTLS) on the gRPC port; `None` serves plaintext h2c.
    pub tls: Option<crate::tls::TlsFiles>,
    /// The status page (`GET /`) and its JSON (`/api/v1/...`) on the HTTP port.
    pub status_page: bool,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .field("engine", &self.engine)
            .field("scalers", &self.scalers)
            .field("auth_refs", &self.auth_refs.is_some())
            .field("ready_replicas", &self.ready_replicas.is_some())
            .field("bridge_scaled_objects", &self.bridge.scaled_objects.len())
            .field("tls", &self.tls)
            .field("status_page", &self.status_page)
            .finish()
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 9090)),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            engine: EngineConfig::default(),
            scalers: ebb_scalers::Settings::default(),
            auth_refs: None,
            ready_replicas: None,
            bridge: crate::bridge::Config::default(),
            tls: None,
            status_page: true,
        }
    }
}

/// A running server.
pub struct Server {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub engine: Engine,
    shutdown: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
    sweeper: JoinHandle<()>,
}

/// Binds both addresses (port 0 picks a free port) and serves in the background.
pub async fn spawn(opts: ServeOptions) -> anyhow::Result<Server> {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    // What the gRPC door's TLS settings mean for the engine: KEDA's `unsafeSsl` is about a TLS
    // hop, and with client certificates the caller's namespace is KEDA's word.
    let mut config = opts.engine.clone();
    config.grpc_tls = opts.tls.is_some();
    config.access.mtls = opts.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    let scalers = Arc::new(ebb_scalers::Registry::builtin(opts.scalers.clone()));
    let mut engine = Engine::new(config, metrics, scalers);
    if let Some(resolver) = opts.auth_refs.clone() {
        engine = engine.with_auth_refs(resolver);
    }
    if let Some(ready) = opts.ready_replicas.clone() {
        engine = engine.with_ready_replicas(ready);
    }

    let grpc_listener =
        TcpListener::bind(opts.grpc_addr).await.with_context(|| format!("binding gRPC address {}", opts.grpc_addr))?;
    let http_listener =
        TcpListener::bind(opts.http_addr).await.with_context(|| format!("binding HTTP address {}", opts.http_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let ready = Arc::new(AtomicBool::new(false));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<ExternalScalerServer<grpc::ScalerService>>().await;

    let (grpc_stop, grpc_stopped) = oneshot::channel::<()>();
    let scaler = ExternalScalerServer::new(grpc::ScalerService::new(engine.clone()));
    let tls = opts.tls.clone().map(crate::tls::Reloading::new).transpose().context("gRPC TLS")?.map(Arc::new);
    let grpc_task = tokio::spawn(async move {
        let router = tonic::transport::Server::builder().add_service(health_service).add_service(scaler);
        let stop = async {
            grpc_stopped.await.ok();
        };
        let served = match tls {
            Some(tls) => router.serve_with_incoming_shutdown(crate::tls::incoming(grpc_listener, tls), stop).await,
            None => {
                // The builder's `tcp_nodelay` applies only to listeners tonic binds itself;
                // without it small answers wait on Nagle and delayed ACKs (40 ms stalls).
                let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
                router.serve_with_incoming_shutdown(incoming, stop).await
            }
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });

    let bridge = crate::bridge::Bridge::new(engine.clone(), &opts.bridge);
    bridge.start().await.map_err(|e| anyhow::anyhow!("config: {e}"))?;
    let (http_stop, http_stopped) = oneshot::channel::<()>();
    let mut app = http::router(HttpState { registry: Arc::new(registry), ready: ready.clone() })
        .merge(crate::bridge::router(bridge));
    if opts.status_page {
        app = app.merge(crate::status::router(engine.clone()));
    }
    let http_task = tokio::spawn(async move {
        // Peer addresses reach the engine's new-caller log, as on the gRPC door.
        let served = axum::serve(http_listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async {
                http_stopped.await.ok();
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });

    ready.store(true, Ordering::Relaxed);
    let sweeper = engine.spawn_sweeper();
    info!(%grpc_addr, %http_addr, "ebb serving");
    Ok(Server {
        grpc_addr,
        http_addr,
        engine,
        shutdown: vec![grpc_stop, http_stop],
        tasks: vec![grpc_task, http_task],
        sweeper,
    })
}

impl Server {
    /// Ends open streams, stops accepting, lets in-flight calls finish, and stops every
    /// source.
    pub async fn shutdown(self) {
        self.engine.close();
        for s in self.shutdown {
            let _ = s.send(());
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.sweeper.abort();
    }

    /// Waits until the servers end on their own (they do not, short of an error).
    pub async fn wait(&mut self) {
        for t in &mut self.tasks {
            let _ = t.await;
        }
    }
}
