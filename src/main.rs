//! The `ebb` command line: `serve` and `check`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ebb::engine::EngineConfig;
use ebb::server::{self, ServeOptions};
use ebb::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(name = "ebb", version, about = "Event-driven autoscaler for KEDA's external-scaler protocol")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "EBB_LOG_FORMAT", value_enum, default_value = "pretty")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve KEDA's external-scaler gRPC API and the HTTP endpoints.
    Serve(ServeArgs),
    /// Load-test a scaler speaking externalscaler.proto (ebb itself when no --target is given).
    Bench(ebb::bench::BenchArgs),
    /// Parse trigger metadata, poll the source once, and print metric, activity and replicas.
    Check {
        /// Trigger metadata as key=value pairs (with `scalerType=...`).
        #[arg(required = true)]
        metadata: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// As `serve --min-polling-interval` (seconds).
        #[arg(long, env = "EBB_MIN_POLLING_INTERVAL", default_value = "1", value_parser = seconds)]
        min_polling_interval: Duration,
        /// Read the metadata as `serve` with TLS on its gRPC port would: `unsafeSsl` is then
        /// KEDA's setting for its connection to ebb, not the source's.
        #[arg(long)]
        grpc_tls: bool,
        #[command(flatten)]
        azure: AzureEndpointArgs,
        #[command(flatten)]
        scalers: ScalerArgs,
    },
    /// Replay a workload trace under KEDA's default policy and ebb's: cost, message wait, chart.
    Simulate(ebb::simulate::SimulateArgs),
    /// Why a ScaledObject is at its count: the decision, its reason, the latest decisions and
    /// what would change it, read from a running ebb's status page.
    Explain(ebb::explain::ExplainArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// gRPC address KEDA calls.
    #[arg(long, env = "EBB_GRPC_ADDR", default_value = "0.0.0.0:9090")]
    grpc_addr: SocketAddr,
    /// HTTP address for /metrics, /healthz and /readyz.
    #[arg(long, env = "EBB_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Longest a request waits for a new source's first poll (seconds).
    #[arg(long, env = "EBB_FIRST_POLL_WAIT", default_value = "1.5", value_parser = seconds)]
    first_poll_wait: Duration,
    /// The last good value serves until max(this, 3 × interval) old (seconds).
    #[arg(long, env = "EBB_MAX_STALENESS", default_value = "60", value_parser = seconds)]
    max_staleness: Duration,
    /// Ceiling of the retry delay after failed polls; it doubles from 1 s and never exceeds the
    /// pollingInterval either (seconds).
    #[arg(long, env = "EBB_MAX_BACKOFF", default_value = "30", value_parser = seconds)]
    max_backoff: Duration,
    /// Least wait after a throttling answer (seconds).
    #[arg(long, env = "EBB_THROTTLE_BACKOFF", default_value = "30", value_parser = seconds)]
    throttle_backoff: Duration,
    /// Triggers unused for max(this, 10 × pollingInterval) are dropped (seconds).
    #[arg(long, env = "EBB_IDLE_TIMEOUT", default_value = "300", value_parser = seconds)]
    idle_timeout: Duration,
    /// Read the Kubernetes API (in-cluster service account or kubeconfig): KEDA
    /// TriggerAuthentications (`spec.secretTargetRef`) and their Secrets for `authenticationRef`,
    /// and the ready replicas of `policy: drain` ScaledObjects' scale targets (for namespaces the
    /// access policy binds to `readyReplicas`).
    #[cfg(feature = "k8s")]
    #[arg(long, env = "EBB_KUBE")]
    kube: bool,
    /// YAML file declaring ScaledObjects served over HTTP to Container Apps scale rules
    /// (`metrics-api` or `prometheus`); see docs/container-apps.md.
    #[arg(long, env = "EBB_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// PEM certificate chain for TLS on the gRPC port (with --tls-key); re-read when it changes.
    #[arg(long, env = "EBB_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "EBB_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed (mTLS).
    #[arg(long, env = "EBB_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<std::path::PathBuf>,
    /// Most keys in one trigger's metadata (more: INVALID_ARGUMENT).
    #[arg(long, env = "EBB_MAX_METADATA_ENTRIES", default_value_t = 128)]
    max_metadata_entries: usize,
    /// Most bytes (keys + values) in one trigger's metadata (more: INVALID_ARGUMENT).
    #[arg(long, env = "EBB_MAX_METADATA_BYTES", default_value_t = 65536)]
    max_metadata_bytes: usize,
    /// Most tracked ScaledObject triggers; beyond it the least recently used is dropped.
    #[arg(long, env = "EBB_MAX_SCALEDOBJECTS", default_value_t = 100_000)]
    max_scaledobjects: usize,
    /// Most distinct sources; beyond it the least recently used source goes, with its triggers.
    #[arg(long, env = "EBB_MAX_SOURCES", default_value_t = 20_000)]
    max_sources: usize,
    /// Most open StreamIsActive / StreamMetricSpec streams (more: RESOURCE_EXHAUSTED).
    #[arg(long, env = "EBB_MAX_STREAMS", default_value_t = 50_000)]
    max_streams: usize,
    /// Most polls in flight at once over all sources (each source has at most one).
    #[arg(long, env = "EBB_MAX_CONCURRENT_POLLS", default_value_t = 512)]
    max_concurrent_polls: usize,
    /// Seconds between checks of the TLS files for rotation.
    #[arg(long, env = "EBB_TLS_RELOAD_INTERVAL", default_value = "10", value_parser = seconds)]
    tls_reload_interval: Duration,
    /// Least pollingInterval a trigger gets (seconds); one asking for less polls at this.
    #[arg(long, env = "EBB_MIN_POLLING_INTERVAL", default_value = "1", value_parser = seconds)]
    min_polling_interval: Duration,
    /// Serve the status page (`GET /`: sources, ScaledObjects, each one's decision log and
    /// reasons) and its JSON (`/api/v1/...`) on the HTTP port; `false` turns both off.
    #[arg(long, env = "EBB_STATUS_PAGE", default_value_t = true, action = clap::ArgAction::Set)]
    status_page: bool,
    #[command(flatten)]
    azure: AzureEndpointArgs,
    #[command(flatten)]
    scalers: ScalerArgs,
}

/// What pollers may use of the process; `serve` and `check` take the same flags, so `check`
/// polls exactly as `serve` would.
#[derive(Args, Clone)]
struct ScalerArgs {
    /// Directory of named secrets: `connectionRef: NAME` reads the file NAME in it (a mounted
    /// Kubernetes Secret or Container Apps secret volume), re-read at every poll.
    #[arg(long, env = "EBB_SECRETS_DIR", default_value = ebb_scalers::context::DEFAULT_SECRETS_DIR)]
    secrets_dir: std::path::PathBuf,
    /// Upstream requests one poll may have in flight at once, per service (Event Hubs
    /// partitions and checkpoints, Kafka topics' metadata); more wait their turn.
    #[arg(long, env = "EBB_MAX_UPSTREAM_CONCURRENCY", default_value_t = ebb_scalers::context::DEFAULT_UPSTREAM_CONCURRENCY)]
    max_upstream_concurrency: usize,
}

impl ScalerArgs {
    fn settings(&self) -> ebb_scalers::Settings {
        ebb_scalers::Settings {
            secrets_dir: self.secrets_dir.clone(),
            upstream_concurrency: self.max_upstream_concurrency,
        }
    }
}

/// Where ebb's own Azure identity may go besides the Azure clouds' own service hosts.
#[derive(Args, Clone, Default)]
struct AzureEndpointArgs {
    /// SERVICE=SUFFIX (service: servicebus, storage or monitor): a private cloud's endpoint
    /// suffix ebb's identity may be sent to (`cloud: Private` + `endpointSuffix`). Repeatable.
    #[arg(long = "azure-private-suffix", env = "EBB_AZURE_PRIVATE_SUFFIXES", value_delimiter = ',',
          value_parser = ebb_scalers::trust::Endpoints::parse_private_suffix)]
    private_suffixes: Vec<(ebb_scalers::trust::AzureService, String)>,
    /// An Azure Monitor resource URL (`azureManagedPrometheusResourceURL`) besides the clouds'
    /// own, e.g. a private cloud's. Repeatable.
    #[arg(long = "azure-monitor-audience", env = "EBB_AZURE_MONITOR_AUDIENCES", value_delimiter = ',',
          value_parser = ebb_scalers::trust::Endpoints::parse_monitor_audience)]
    monitor_audiences: Vec<String>,
}

impl AzureEndpointArgs {
    fn endpoints(&self) -> ebb_scalers::trust::Endpoints {
        ebb_scalers::trust::Endpoints {
            private_suffixes: self.private_suffixes.clone(),
            monitor_audiences: self.monitor_audiences.clone(),
        }
    }
}

fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("{s:?} is not a non-negative number of seconds")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Serve(args) => match serve(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "ebb serve failed");
                ExitCode::FAILURE
            }
        },
        Command::Check { metadata, json, min_polling_interval, grpc_tls, azure, scalers } => {
            let opts = ebb::check::CheckOptions {
                min_polling_interval,
                endpoints: azure.endpoints(),
                grpc_tls,
                scalers: scalers.settings(),
            };
            check(&metadata, json, &opts).await
        }
        Command::Bench(args) => match ebb::bench::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ebb bench: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Explain(args) => match ebb::explain::run(&args).await {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ebb explain: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Simulate(args) => match ebb::simulate::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ebb simulate: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let bridge = match &args.config {
        Some(path) => ebb::bridge::Config::load(path)?,
        None => ebb::bridge::Config::default(),
    };
    // `mtls` follows the TLS files (server::spawn).
    let access = ebb::access::Access { policy: bridge.access.clone(), endpoints: args.azure.endpoints(), mtls: false };
    let (auth_refs, ready_replicas) = kube_readers(&args).await?;
    let opts = ServeOptions {
        grpc_addr: args.grpc_addr,
        http_addr: args.http_addr,
        engine: EngineConfig {
            first_poll_wait: args.first_poll_wait,
            max_staleness: args.max_staleness,
            max_backoff: args.max_backoff,
            throttle_backoff: args.throttle_backoff,
            idle_timeout: args.idle_timeout,
            min_polling_interval: args.min_polling_interval,
            access,
            limits: ebb::engine::Limits {
                metadata_entries: args.max_metadata_entries,
                metadata_bytes: args.max_metadata_bytes,
                triggers: args.max_scaledobjects.max(1),
                sources: args.max_sources.max(1),
                streams: args.max_streams,
                concurrent_polls: args.max_concurrent_polls.max(1),
            },
            ..EngineConfig::default()
        },
        scalers: args.scalers.settings(),
        status_page: args.status_page,
        auth_refs,
        ready_replicas,
        bridge,
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(ebb::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
                reload_every: args.tls_reload_interval,
            }),
            _ => None,
        },
    };
    let server = server::spawn(opts).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

type KubeReaders =
    (Option<std::sync::Arc<dyn ebb::engine::AuthRefResolver>>, Option<std::sync::Arc<dyn ebb::engine::ReadyReplicas>>);

/// With `--kube`, one Kubernetes client (in-cluster service account or kubeconfig) behind both
/// readers: `authenticationRef`'s TriggerAuthentications, and for `policy: drain` the scale
/// targets' ready replicas (for the namespaces bound to `readyReplicas`), refreshed in the
/// background for as long as ebb runs.
#[cfg(feature = "k8s")]
async fn kube_readers(args: &ServeArgs) -> anyhow::Result<KubeReaders> {
    use anyhow::Context;
    if !args.kube {
        return Ok((None, None));
    }
    let client = kube::Client::try_default()
        .await
        .context("--kube: no Kubernetes config (neither in-cluster service account nor kubeconfig)")?;
    let ready = std::sync::Arc::new(ebb::k8s::KubeReadyReplicas::new(client.clone()));
    // Detached: it ends with the process.
    drop(ready.spawn_refresh());
    Ok((Some(std::sync::Arc::new(ebb::k8s::KubeAuthRefs::new(client))), Some(ready)))
}

#[cfg(not(feature = "k8s"))]
async fn kube_readers(_args: &ServeArgs) -> anyhow::Result<KubeReaders> {
    Ok((None, None))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn check(args: &[String], json: bool, opts: &ebb::check::CheckOptions) -> ExitCode {
    let metadata = match ebb::check::parse_pairs(args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match ebb::check::run(&metadata, opts).await {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&report).expect("report serializes"));
            } else {
                println!("{report}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({ "error": e.to_string() }));
            } else {
                eprintln!("error: {e}");
            }
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
