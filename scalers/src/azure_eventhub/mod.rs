//! `azure-eventhub`: unprocessed events of an Event Hub consumer group, at parity with KEDA's
//! built-in scaler (`pkg/scalers/azure_eventhub_scaler.go`, `pkg/scalers/azure/azure_eventhub*.go`).
//!
//! # Metadata
//!
//! Every key is read as `<key>`, then `<key>FromEnv` (see [`crate::metadata`]).
//!
//! | key | default | notes (and deviations from KEDA) |
//! |---|---|---|
//! | `unprocessedEventThreshold` | `64` | integer, HPA target; must be > 0 |
//! | `activationUnprocessedEventThreshold` | `0` | active when the **uncapped** total `>` this |
//! | `consumerGroup` | `$Default` | |
//! | `connection` / `connectionFromEnv` / `connectionRef` | — | Event Hubs connection string (`Endpoint=sb://…;SharedAccessKeyName=…;SharedAccessKey=…[;EntityPath=…]`); without `EntityPath`, `eventHubName` names the hub |
//! | `eventHubNamespace`, `eventHubName` | — | without a connection: ebb's Entra identity against `<eventHubNamespace>.<endpointSuffix>` (scope `https://eventhubs.azure.net/.default`) |
//! | `storageConnection` / `storageConnectionFromEnv` / `storageConnectionRef` | — | checkpoint storage connection string with `AccountKey` (SAS connection strings are not supported, as in KEDA) |
//! | `storageAccountName` | — | without a storage connection: ebb's identity against `https://<account>.blob.<storageEndpointSuffix>` |
//! | `blobContainer` | — | checkpoint container (not used by `azureFunction`) |
//! | `checkpointStrategy` | legacy | `azureFunction`, `blobMetadata`, `goSdk`, `dapr`; none with an empty `blobContainer` means `azureFunction` |
//! | `stalePartitionInfoThreshold` | `10000` | a computed count above `i64::MAX - this` is treated as stale (0) |
//! | `cloud`, `endpointSuffix`, `storageEndpointSuffix` | `AzurePublicCloud` | `Private` needs the suffixes |
//!
//! # Requests
//!
//! **Deviation:** KEDA reads partition properties over AMQP `$management`, one partition after
//! the other; ebb uses the Event Hubs runtime REST API: `GET /{hub}?api-version=2015-01`
//! (`EventHubDescription/PartitionIds`), then `GET /{hub}/consumergroups/{cg}/partitions/{id}`
//! for every partition **concurrently** (`BeginSequenceNumber`, `EndSequenceNumber` = last
//! enqueued). The checkpoints are read from Blob Storage concurrently too: `GET` of the blob, or
//! `HEAD` (metadata `sequencenumber`) for `blobMetadata`. A missing blob or container is "no
//! checkpoint". Requests go over `https`, `http` for a loopback Event Hubs endpoint (tests).
//!
//! # Source key
//!
//! `azure-eventhub|<namespace fqdn>|<hub>|<consumer group>|<account or endpoint>/<container>/<strategy>|<event hubs credential>,<storage credential>`.

use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::azure::namespace::NamespaceConnection;
use crate::azure::storage::{AccountKey, ConnectionCredential, ConnectionString, STORAGE_SCOPE, blob_endpoint};
use crate::azure::{Cloud, SecretSource, Service};
use crate::metadata::collect;
use crate::trust::{AzureService, Held, IdentityUse};
use crate::{ConfigError, ConfigErrors, Evaluation, Measurement, Metadata, Poller, Scaler, ScalerContext, SourceKey};

/// The trigger type name.
pub const SCALER_TYPE: &str = "azure-eventhub";
/// Per request (KEDA's HTTP default timeout).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// A poll is three rounds of requests (hub, partitions, checkpoints).
pub const POLL_TIMEOUT: Duration = Duration::from_secs(9);
/// KEDA's `unprocessedEventThreshold` default.
pub const DEFAULT_THRESHOLD: i64 = 64;
/// KEDA's `stalePartitionInfoThreshold` default.
pub const DEFAULT_STALE_THRESHOLD: i64 = 10_000;
/// The runtime API version.
const API_VERSION: &str = "2015-01";
/// Entra scope of Event Hubs.
pub const ENTRA_SCOPE: &str = "https://eventhubs.azure.net/.default";
/// The Azure Functions checkpoint container.
pub const AZURE_FUNCTION_CONTAINER: &str = "azure-webjobs-eventhub";
/// Storage REST version sent.
const STORAGE_VERSION: &str = "2021-12-02";
/// At most this many partitions (Event Hubs allows up to 2048 on dedicated tiers).
const MAX_PARTITIONS: usize = 4096;

/// Metadata that parses (the registry's contract test runs it).
pub const EXAMPLE: &[(&str, &str)] = &[
    (
        "connection",
        "Endpoint=sb://ebb.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=s3cr3t;EntityPath=events",
    ),
    ("storageConnection", "DefaultEndpointsProtocol=https;AccountName=ckpt;AccountKey=czNjcjN0LWtleQ=="),
    ("consumerGroup", "$Default"),
    ("unprocessedEventThreshold", "64"),
];

// ---------------------------------------------------------------------------------------------
// Formula (pure)
// ---------------------------------------------------------------------------------------------

/// A partition's runtime figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    pub begin: i64,
    /// Last enqueued sequence number (`EndSequenceNumber`); `-1` for an empty partition.
    pub last: i64,
}

/// KEDA's `GetUnprocessedEventCountWithoutCheckpoint` / `calculateUnprocessedEvents` for one
/// partition; `checkpoint` is `None` when no checkpoint blob exists.
pub fn unprocessed(p: PartitionInfo, checkpoint: Option<i64>, stale_threshold: i64) -> i64 {
    if p.last == -1 {
        return 0;
    }
    let Some(ckpt) = checkpoint else {
        return if (p.begin == 0 && p.last == 0) || p.begin != p.last { p.last.saturating_sub(p.begin) + 1 } else { 0 };
    };
    let n = if p.last >= ckpt { p.last - ckpt } else { (i64::MAX - ckpt).saturating_add(p.last) };
    if n > i64::MAX.saturating_sub(stale_threshold) { 0 } else { n }
}

/// Σ last enqueued and Σ checkpointed sequence numbers over the partitions with a checkpoint
/// (and a non-empty log): cumulative arrivals and processed for `policy: drain`.
pub fn sequence_sums(infos: &[PartitionInfo], ckpts: &[Option<i64>]) -> Option<(f64, f64)> {
    let mut any = false;
    let (mut last, mut done) = (0.0, 0.0);
    for (p, c) in infos.iter().zip(ckpts) {
        if let (Some(c), true) = (c, p.last >= 0) {
            any = true;
            last += p.last.max(*c) as f64;
            done += *c as f64;
        }
    }
    any.then_some((last, done))
}

/// The sum over partitions; an overflow gives `i64::MAX` (KEDA: negative sum ⇒ MaxInt64).
pub fn total(counts: impl IntoIterator<Item = i64>) -> i64 {
    counts.into_iter().try_fold(0i64, |acc, n| acc.checked_add(n)).unwrap_or(i64::MAX)
}

/// KEDA's cap: `if total/threshold > partitions { partitions*threshold } else { total }`
/// (integer division).
pub fn capped(total: i64, threshold: i64, partitions: u32) -> i64 {
    if threshold > 0 && total / threshold > i64::from(partitions) {
        i64::from(partitions).saturating_mul(threshold)
    } else {
        total
    }
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// `checkpointStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    AzureFunction,
    BlobMetadata,
    GoSdk,
    Dapr,
    Legacy,
}

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::AzureFunction => "azureFunction",
            Strategy::BlobMetadata => "blobMetadata",
            Strategy::GoSdk => "goSdk",
            Strategy::Dapr => "dapr",
            Strategy::Legacy => "legacy",
        }
    }

    /// The blob name of partition `pid` (reference table, KEDA's `newCheckpointer`).
    pub fn blob_name(self, ns: &str, hub: &str, cg: &str, pid: &str) -> String {
        match self {
            Strategy::AzureFunction => format!("{ns}/{hub}/{cg}/{pid}"),
            Strategy::BlobMetadata => format!("{ns}/{hub}/{}/checkpoint/{pid}", cg.to_lowercase()),
            Strategy::GoSdk => pid.to_string(),
            Strategy::Dapr => format!("dapr-{hub}-{cg}-{pid}"),
            Strategy::Legacy => format!("{cg}/{pid}"),
        }
    }

    /// Reads the sequence number from a JSON checkpoint payload.
    pub fn parse_payload(self, body: &str) -> Result<i64, String> {
        let v: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("checkpoint is {}", crate::json_error(&e)))?;
        let n = match self {
            Strategy::GoSdk | Strategy::Dapr => v.get("checkpoint").and_then(|c| c.get("sequenceNumber")),
            _ => v.get("SequenceNumber").or_else(|| v.get("sequence_number")),
        };
        // Go unmarshals a missing number as 0.
        match n {
            None | Some(serde_json::Value::Null) => Ok(0),
            Some(n) => n.as_i64().ok_or_else(|| "checkpoint sequence number is not an integer".to_owned()),
        }
    }
}

#[derive(Debug, Clone)]
enum HubAuth {
    Connection {
        source: SecretSource,
        parsed: Option<NamespaceConnection>,
    },
    /// ebb's identity against `<namespace>.<suffix>`; `host_key` chose the host.
    Identity {
        host: String,
        host_key: &'static str,
    },
}

#[derive(Debug, Clone)]
enum StorageAuth {
    Connection(SecretSource),
    Identity(Url),
}

/// A parsed `azure-eventhub` trigger. `Debug` never shows a secret.
#[derive(Debug)]
pub struct EventHubScaler {
    threshold: i64,
    activation: i64,
    source_key: SourceKey,
    cfg: Arc<PollConfig>,
}

#[derive(Debug)]
struct PollConfig {
    hub_auth: HubAuth,
    /// `eventHubName`, if given (else `EntityPath` of the connection string).
    hub: Option<String>,
    consumer_group: String,
    storage: StorageAuth,
    container: String,
    strategy: Strategy,
    stale_threshold: i64,
    /// The key that chose the checkpoint account's host for ebb's identity.
    storage_key: &'static str,
}

/// Parses an `azure-eventhub` trigger. Pure and cheap.
pub fn parse(md: &Metadata<'_>) -> Result<Arc<dyn Scaler>, ConfigErrors> {
    Ok(Arc::new(parse_config(md)?))
}

fn positive(md: &Metadata<'_>, key: &str, default: i64) -> Result<i64, ConfigError> {
    match md.i64(key)? {
        None => Ok(default),
        Some(n) if n > 0 => Ok(n),
        Some(n) => Err(ConfigError::new(key, format!("must be greater than 0 (got {n})"))),
    }
}

fn parse_config(md: &Metadata<'_>) -> Result<EventHubScaler, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    let threshold = collect(&mut errs, positive(md, "unprocessedEventThreshold", DEFAULT_THRESHOLD));
    let activation = collect(&mut errs, md.i64("activationUnprocessedEventThreshold")).flatten().unwrap_or(0);
    let stale = collect(&mut errs, md.i64("stalePartitionInfoThreshold")).flatten().unwrap_or(DEFAULT_STALE_THRESHOLD);
    if stale < 0 {
        errs.push(ConfigError::new("stalePartitionInfoThreshold", format!("must not be negative (got {stale})")));
    }
    let consumer_group = md.get("consumerGroup").unwrap_or("$Default").to_string();
    let cloud = collect(&mut errs, Cloud::parse(md));
    let container = md.get("blobContainer").unwrap_or_default().to_string();
    let strategy =
        match collect(&mut errs, md.one_of("checkpointStrategy", &["azureFunction", "blobMetadata", "goSdk", "dapr"]))
            .flatten()
        {
            Some("azureFunction") => Strategy::AzureFunction,
            Some("blobMetadata") => Strategy::BlobMetadata,
            Some("goSdk") => Strategy::GoSdk,
            Some("dapr") => Strategy::Dapr,
            _ if container.is_empty() => Strategy::AzureFunction,
            _ => Strategy::Legacy,
        };
    let container = if strategy == Strategy::AzureFunction { AZURE_FUNCTION_CONTAINER.to_string() } else { container };
    if container.is_empty() {
        errs.push(ConfigError::new(
            "blobContainer",
            format!("is required with checkpointStrategy {}", strategy.name()),
        ));
    }
    let hub_name = md.get("eventHubName").map(str::to_string);

    // Event Hubs credentials.
    let hub_auth = match collect(&mut errs, SecretSource::from_metadata(md, "connection")).flatten() {
        Some(source @ SecretSource::Value(_)) => {
            let SecretSource::Value(v) = &source else { unreachable!() };
            let key = if md.raw().get("connection").is_some_and(|v| !v.trim().is_empty()) {
                "connection"
            } else {
                "connectionFromEnv"
            };
            collect(&mut errs, NamespaceConnection::parse(v).map_err(|r| ConfigError::new(key, r)))
                .map(|cs| HubAuth::Connection { source, parsed: Some(cs) })
        }
        Some(named) => Some(HubAuth::Connection { source: named, parsed: None }),
        None => match md.get("eventHubNamespace") {
            Some(ns) if ns.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')) => cloud
                .and_then(|c| collect(&mut errs, c.suffix(md, Service::ServiceBus, "endpointSuffix")))
                .map(|suffix| HubAuth::Identity {
                    host: format!("{ns}.{suffix}"),
                    host_key: if cloud == Some(Cloud::Private) { "endpointSuffix" } else { "eventHubNamespace" },
                }),
            Some(ns) => {
                errs.push(ConfigError::new("eventHubNamespace", format!("{ns:?} is not an Event Hubs namespace name")));
                None
            }
            None => {
                errs.push(ConfigError::new(
                    "connection",
                    "required key is missing: set connection, connectionFromEnv or connectionRef, or \
                     eventHubNamespace and eventHubName to use ebb's Entra identity",
                ));
                None
            }
        },
    };
    let entity_path = match &hub_auth {
        Some(HubAuth::Connection { parsed: Some(cs), .. }) => cs.entity_path.clone().filter(|p| !p.is_empty()),
        _ => None,
    };
    let hub_known = entity_path.clone().or_else(|| hub_name.clone());
    match &hub_auth {
        Some(HubAuth::Identity { .. }) | Some(HubAuth::Connection { parsed: Some(_), .. }) if hub_known.is_none() => {
            errs.push(ConfigError::new("eventHubName", "is required (the connection has no EntityPath)"));
        }
        _ => {}
    }

    // Storage.
    let storage = match collect(&mut errs, SecretSource::from_metadata(md, "storageConnection")).flatten() {
        Some(SecretSource::Value(v)) => {
            let key = if md.raw().get("storageConnection").is_some_and(|v| !v.trim().is_empty()) {
                "storageConnection"
            } else {
                "storageConnectionFromEnv"
            };
            collect(&mut errs, parse_storage(&v).map_err(|r| ConfigError::new(key, r)))
                .map(|_| StorageAuth::Connection(SecretSource::Value(v)))
        }
        Some(named) => Some(StorageAuth::Connection(named)),
        None => match md.get("storageAccountName") {
            Some(account) => cloud
                .and_then(|c| collect(&mut errs, c.suffix(md, Service::Storage, "storageEndpointSuffix")))
                .and_then(|suffix| {
                    let url = Url::parse(&format!("https://{account}.blob.{suffix}"))
                        .ok()
                        .filter(|u| u.path() == "/" && u.query().is_none());
                    if url.is_none() {
                        errs.push(ConfigError::new(
                            "storageAccountName",
                            format!("{account:?} is not an account name"),
                        ));
                    }
                    url
                })
                .map(StorageAuth::Identity),
            None => {
                errs.push(ConfigError::new(
                    "storageConnection",
                    "required key is missing: set storageConnection, storageConnectionFromEnv or \
                     storageConnectionRef, or storageAccountName to use ebb's Entra identity",
                ));
                None
            }
        },
    };

    let (Some(threshold), Some(hub_auth), Some(storage), true) = (threshold, hub_auth, storage, errs.0.is_empty())
    else {
        return Err(errs);
    };

    let ns_label = match &hub_auth {
        HubAuth::Connection { parsed: Some(cs), .. } => cs.host.clone(),
        HubAuth::Connection { source, .. } => source.label(),
        HubAuth::Identity { host, .. } => host.clone(),
    };
    let hub_label = hub_known.unwrap_or_else(|| "(EntityPath)".to_string());
    let storage_label = match &storage {
        StorageAuth::Connection(SecretSource::Value(v)) => {
            blob_endpoint(v).map(|u| u.to_string().trim_end_matches('/').to_string()).unwrap_or_default()
        }
        StorageAuth::Connection(named) => named.label(),
        StorageAuth::Identity(u) => u.as_str().trim_end_matches('/').to_string(),
    };
    let hub_cred = match &hub_auth {
        HubAuth::Connection { source, .. } => source.label(),
        HubAuth::Identity { .. } => "identity".into(),
    };
    let storage_cred = match &storage {
        StorageAuth::Connection(s) => s.label(),
        StorageAuth::Identity(_) => "identity".into(),
    };
    let source_key = SourceKey(format!(
        "{SCALER_TYPE}|{ns_label}|{hub_label}|{consumer_group}|{storage_label}/{container}/{}|{hub_cred},{storage_cred}",
        strategy.name()
    ));
    Ok(EventHubScaler {
        threshold,
        activation,
        source_key,
        cfg: Arc::new(PollConfig {
            hub_auth,
            hub: hub_name,
            consumer_group,
            storage,
            container,
            strategy,
            stale_threshold: stale,
            storage_key: if cloud == Some(Cloud::Private) { "storageEndpointSuffix" } else { "storageAccountName" },
        }),
    })
}

/// A storage connection string with an account key → (blob endpoint, account, key).
fn parse_storage(s: &str) -> Result<(Url, String, AccountKey), String> {
    let endpoint = blob_endpoint(s)?;
    let cs = ConnectionString::parse(s)?;
    match cs.credential {
        ConnectionCredential::Key { account, key } => Ok((endpoint, account, key)),
        ConnectionCredential::Sas(_) => {
            Err("connection string: SAS connection strings are not supported for checkpoints (as in KEDA)".into())
        }
    }
}

impl Scaler for EventHubScaler {
    fn scaler_type(&self) -> &'static str {
        SCALER_TYPE
    }

    fn source_key(&self) -> &SourceKey {
        &self.source_key
    }

    fn target(&self) -> f64 {
        self.threshold as f64
    }

    fn poll_timeout(&self) -> Duration {
        POLL_TIMEOUT
    }

    fn evaluate(&self, m: &Measurement) -> Evaluation {
        let (total, partitions) = match m {
            Measurement::Partitions { unprocessed, partitions, .. } => (*unprocessed, Some(*partitions)),
            other => (other.scalar(), None),
        };
        let metric = match partitions {
            Some(p) => capped(total as i64, self.threshold, p) as f64,
            None => total,
        };
        Evaluation { metric, active: total > self.activation as f64 }
    }

    /// Σ last enqueued and Σ checkpointed sequence numbers; at most one consumer per partition.
    fn counters(&self, m: &Measurement) -> crate::Counters {
        match m {
            Measurement::Partitions { sequence: Some((e, c)), partitions, .. } => crate::Counters {
                arrivals: Some(*e),
                processed: Some(*c),
                max_consumers: Some(*partitions),
                arrival_rate: None,
            },
            _ => crate::Counters::default(),
        }
    }

    fn poller(&self, ctx: &Arc<ScalerContext>) -> Result<Arc<dyn Poller>, ConfigErrors> {
        Ok(Arc::new(poll::EventHubPoller::new(ctx, self.cfg.clone())?))
    }

    fn held(&self) -> Vec<Held> {
        let cfg = &self.cfg;
        let mut held = Vec::new();
        match &cfg.hub_auth {
            HubAuth::Identity { host, host_key } => held.push(Held::Identity(IdentityUse {
                service: AzureService::ServiceBus,
                url: format!("https://{host}/"),
                entity: cfg.hub.clone().unwrap_or_default(),
                audience: ENTRA_SCOPE.to_owned(),
                host_key,
                audience_key: None,
            })),
            HubAuth::Connection { source: SecretSource::Named(name), .. } => {
                held.push(Held::NamedSecret { name: name.clone(), key: "connectionRef".to_owned() })
            }
            HubAuth::Connection { .. } => {}
        }
        match &cfg.storage {
            StorageAuth::Identity(url) => held.push(Held::Identity(IdentityUse {
                service: AzureService::Storage,
                url: url.to_string(),
                entity: cfg.container.clone(),
                audience: STORAGE_SCOPE.to_owned(),
                host_key: cfg.storage_key,
                audience_key: None,
            })),
            StorageAuth::Connection(SecretSource::Named(name)) => {
                held.push(Held::NamedSecret { name: name.clone(), key: "storageConnectionRef".to_owned() })
            }
            StorageAuth::Connection(SecretSource::Value(_)) => {}
        }
        held
    }
}

mod poll;
#[cfg(test)]
mod tests;

pub use poll::{parse_partition, parse_partition_ids};
