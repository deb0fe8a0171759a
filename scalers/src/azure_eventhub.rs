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

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential};
use quick_xml::events::Event;
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};
use url::Url;

use crate::azure::{Cloud, SecretSource, Service};
use crate::azure_queue::{AccountKey, ConnectionCredential, blob_container_sas, blob_endpoint};
use crate::azure_servicebus::{
    ConnectionString as EhConnection, SasCredential, content_type, error_detail, malformed_atom, path_encode,
    read_body, retry_after, sas_token, scheme_for, scrub, shared_client, unix_now, xml_error,
};
use crate::metadata::collect;
use crate::trust::{AzureService, Held, IdentityUse};
use crate::{
    ConfigError, ConfigErrors, Evaluation, Measurement, Metadata, PollError, Poller, Scaler, SourceKey, excerpt,
};

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
/// Entra scope of Storage.
const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// The Azure Functions checkpoint container.
pub const AZURE_FUNCTION_CONTAINER: &str = "azure-webjobs-eventhub";
/// Storage REST version sent.
const STORAGE_VERSION: &str = "2021-12-02";
const SAS_LIFETIME: Duration = Duration::from_secs(3600);
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// At most this many partitions (Event Hubs allows up to 2048 on dedicated tiers).
const MAX_PARTITIONS: usize = 4096;

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
        parsed: Option<EhConnection>,
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
            collect(&mut errs, EhConnection::parse(v).map_err(|r| ConfigError::new(key, r)))
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
    let cs = crate::azure_queue::ConnectionString::parse(s)?;
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

    fn poller(&self) -> Result<Arc<dyn Poller>, ConfigErrors> {
        Ok(Arc::new(EventHubPoller {
            client: shared_client()?,
            cfg: self.cfg.clone(),
            hub_token: tokio::sync::Mutex::new(None),
            storage_token: tokio::sync::Mutex::new(None),
        }))
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

// ---------------------------------------------------------------------------------------------
// Poller
// ---------------------------------------------------------------------------------------------

struct EventHubPoller {
    client: Arc<reqwest::Client>,
    cfg: Arc<PollConfig>,
    hub_token: tokio::sync::Mutex<Option<AccessToken>>,
    storage_token: tokio::sync::Mutex<Option<AccessToken>>,
}

/// How one poll reaches Event Hubs.
struct HubTarget {
    base: String,
    ns: String,
    hub: String,
    authorization: HeaderValue,
    secrets: Vec<String>,
}

/// How one poll reaches the checkpoint container.
struct BlobTarget {
    /// `<endpoint>/<container>`.
    container_url: Url,
    /// SAS query (account key) or none.
    sas: Option<String>,
    authorization: Option<HeaderValue>,
    secrets: Vec<String>,
}

#[async_trait::async_trait]
impl Poller for EventHubPoller {
    async fn poll(&self) -> Result<Measurement, PollError> {
        match tokio::time::timeout(POLL_TIMEOUT, self.measure()).await {
            Ok(r) => r,
            Err(_) => Err(PollError::Timeout(POLL_TIMEOUT)),
        }
    }
}

async fn bearer(
    slot: &tokio::sync::Mutex<Option<AccessToken>>,
    target: &Url,
    scope: &str,
) -> Result<String, PollError> {
    let mut cached = slot.lock().await;
    let fresh_until = azure_core::time::OffsetDateTime::now_utc() + TOKEN_REFRESH_MARGIN;
    if let Some(t) = cached.as_ref().filter(|t| t.expires_on > fresh_until) {
        return Ok(t.token.secret().to_owned());
    }
    let credential: Arc<dyn TokenCredential> = crate::azure::identity_for(target)?;
    let t = credential
        .get_token(&[scope], None)
        .await
        .map_err(|e| PollError::Credential(format!("token for {scope}: {e}")))?;
    Ok(cached.insert(t).token.secret().to_owned())
}

fn sensitive(v: &str) -> Result<HeaderValue, PollError> {
    let mut h = HeaderValue::from_str(v)
        .map_err(|_| PollError::Credential("the credential is not a valid HTTP header value".into()))?;
    h.set_sensitive(true);
    Ok(h)
}

impl EventHubPoller {
    async fn measure(&self) -> Result<Measurement, PollError> {
        let (hub, blob) = tokio::try_join!(self.hub_target(), self.blob_target())?;
        let ids = self.partition_ids(&hub).await?;
        let cg = &self.cfg.consumer_group;
        let names: Vec<String> = ids.iter().map(|id| self.cfg.strategy.blob_name(&hub.ns, &hub.hub, cg, id)).collect();
        // One request per partition and one per checkpoint, both services at once, each
        // bounded by --max-upstream-concurrency.
        let (hub_ref, blob_ref, partitions) = (&hub, &blob, ids.len() as u32);
        let (infos, ckpts) = tokio::try_join!(
            // Owned items: a closure over borrowed ones is not `Send` enough for async_trait.
            // Partitions are named by their index in the answer in errors: the ids are values of
            // the answer.
            crate::bounded_requests(ids.into_iter().enumerate(), |(i, id)| async move {
                self.partition(hub_ref, i, &id).await
            }),
            crate::bounded_requests(names.into_iter().enumerate(), |(i, n)| async move {
                self.checkpoint(blob_ref, i, &n).await
            }),
        )?;
        let counts = infos.iter().zip(&ckpts).map(|(p, c)| unprocessed(*p, *c, self.cfg.stale_threshold));
        Ok(Measurement::Partitions {
            unprocessed: total(counts) as f64,
            partitions,
            sequence: sequence_sums(&infos, &ckpts),
        })
    }

    async fn hub_target(&self) -> Result<HubTarget, PollError> {
        match &self.cfg.hub_auth {
            HubAuth::Connection { source, parsed } => {
                let cs = match parsed {
                    Some(cs) => Cow::Borrowed(cs),
                    None => {
                        let value = source.resolve()?;
                        Cow::Owned(
                            EhConnection::parse(&value)
                                .map_err(|r| PollError::Credential(format!("named secret {}: {r}", source.label())))?,
                        )
                    }
                };
                let hub =
                    cs.entity_path.clone().filter(|p| !p.is_empty()).or_else(|| self.cfg.hub.clone()).ok_or_else(
                        || PollError::Credential("no EntityPath in the connection and no eventHubName".into()),
                    )?;
                let base = format!("{}://{}", scheme_for(&cs.host), cs.host);
                let (token, secrets) = match &cs.credential {
                    SasCredential::Key { name, key } => {
                        let expiry = unix_now() + SAS_LIFETIME.as_secs();
                        let token = sas_token(&format!("{base}/{}", path_encode(&hub)), name, &key.0, expiry);
                        let sig = token.split("&sig=").nth(1).and_then(|s| s.split('&').next()).unwrap_or_default();
                        let secrets = vec![key.0.clone(), sig.to_owned()];
                        (token, secrets)
                    }
                    SasCredential::Token(t) => (t.0.clone(), vec![t.0.clone()]),
                };
                Ok(HubTarget { base, ns: cs.host.clone(), hub, authorization: sensitive(&token)?, secrets })
            }
            HubAuth::Identity { host, .. } => {
                let target = Url::parse(&format!("https://{host}/"))
                    .map_err(|_| PollError::Credential("the namespace host is not a URL".into()))?;
                let token = bearer(&self.hub_token, &target, ENTRA_SCOPE).await?;
                Ok(HubTarget {
                    base: format!("{}://{host}", scheme_for(host)),
                    ns: host.clone(),
                    hub: self.cfg.hub.clone().unwrap_or_default(),
                    authorization: sensitive(&format!("Bearer {token}"))?,
                    secrets: vec![token],
                })
            }
        }
    }

    async fn blob_target(&self) -> Result<BlobTarget, PollError> {
        let container = &self.cfg.container;
        let with_container = |mut u: Url| {
            u.path_segments_mut()
                .map_err(|_| PollError::Credential("bad blob endpoint".into()))?
                .pop_if_empty()
                .push(container);
            Ok::<Url, PollError>(u)
        };
        match &self.cfg.storage {
            StorageAuth::Connection(source) => {
                let value = source.resolve()?;
                let (endpoint, account, key) = parse_storage(&value)
                    .map_err(|r| PollError::Credential(format!("storage connection {}: {r}", source.label())))?;
                let sas = blob_container_sas(&account, &key, container, "r", unix_now() + SAS_LIFETIME.as_secs());
                let sig = url::form_urlencoded::parse(sas.as_bytes())
                    .find(|(k, _)| k == "sig")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                Ok(BlobTarget {
                    container_url: with_container(endpoint)?,
                    sas: Some(sas),
                    authorization: None,
                    secrets: vec![sig],
                })
            }
            StorageAuth::Identity(endpoint) => {
                let token = bearer(&self.storage_token, endpoint, STORAGE_SCOPE).await?;
                Ok(BlobTarget {
                    container_url: with_container(endpoint.clone())?,
                    sas: None,
                    authorization: Some(sensitive(&format!("Bearer {token}"))?),
                    secrets: vec![token],
                })
            }
        }
    }

    async fn partition_ids(&self, t: &HubTarget) -> Result<Vec<String>, PollError> {
        let url = format!("{}/{}?api-version={API_VERSION}", t.base, path_encode(&t.hub));
        let what = format!("event hub {:?}", t.hub);
        let (body, content_type) = self.hub_get(t, &url, &what).await?;
        let ids = parse_partition_ids(&body)
            .map_err(|e| malformed_atom(SCALER_TYPE, &what, &e, content_type.as_deref(), &body, &t.secrets))?;
        if ids.is_empty() {
            return Err(PollError::NotFound(format!("{what} does not exist (no partitions in the answer)")));
        }
        if ids.len() > MAX_PARTITIONS {
            return Err(PollError::Malformed(format!("{what}: {} partitions", ids.len())));
        }
        Ok(ids)
    }

    /// Partition `id`, the `index`th of the hub's answer.
    async fn partition(&self, t: &HubTarget, index: usize, id: &str) -> Result<PartitionInfo, PollError> {
        let url = format!(
            "{}/{}/consumergroups/{}/partitions/{}?api-version={API_VERSION}",
            t.base,
            path_encode(&t.hub),
            path_encode(&self.cfg.consumer_group),
            path_encode(id)
        );
        let what = format!("partition at index {index} of event hub {:?}", t.hub);
        let (body, content_type) = self.hub_get(t, &url, &what).await?;
        parse_partition(&body)
            .map_err(|e| malformed_atom(SCALER_TYPE, &what, &e, content_type.as_deref(), &body, &t.secrets))
    }

    /// A GET of the management API; the body and its `Content-Type` on success.
    async fn hub_get(&self, t: &HubTarget, url: &str, what: &str) -> Result<(String, Option<String>), PollError> {
        let response = self
            .client
            .get(url)
            .timeout(DEFAULT_TIMEOUT)
            .header(AUTHORIZATION, t.authorization.clone())
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let retry = response.headers().get(RETRY_AFTER).and_then(retry_after);
        let content_type = content_type(response.headers());
        let body = read_body(response).await.map_err(transport)?;
        if status.is_success() {
            return Ok((body, content_type));
        }
        tracing::debug!(
            scaler = SCALER_TYPE,
            status = status.as_u16(),
            detail = %excerpt(&scrub(&body, &t.secrets)),
            "event hubs management api returned an error"
        );
        Err(status_error(status.as_u16(), error_detail(content_type.as_deref(), &body), retry, what))
    }

    /// The checkpoint's sequence number, `None` when the blob or container does not exist.
    /// `index` is its partition's place in the hub's answer.
    async fn checkpoint(&self, t: &BlobTarget, index: usize, blob: &str) -> Result<Option<i64>, PollError> {
        let mut url = t.container_url.clone();
        {
            let mut segs = url.path_segments_mut().map_err(|_| PollError::Malformed("blob URL".into()))?;
            for s in blob.split('/') {
                segs.push(s);
            }
        }
        url.set_query(t.sas.as_deref());
        let metadata = self.cfg.strategy == Strategy::BlobMetadata;
        let mut req = if metadata { self.client.head(url) } else { self.client.get(url) };
        req = req.timeout(DEFAULT_TIMEOUT).header("x-ms-version", STORAGE_VERSION);
        if let Some(a) = &t.authorization {
            req = req.header(AUTHORIZATION, a.clone());
        }
        let response = req.send().await.map_err(transport)?;
        let status = response.status();
        if status.as_u16() == 404 {
            return Ok(None);
        }
        let what = format!("checkpoint of the partition at index {index}");
        if status.is_success() && metadata {
            let v = response
                .headers()
                .get("x-ms-meta-sequencenumber")
                .ok_or_else(|| PollError::Malformed(format!("{what}: no sequencenumber metadata")))?;
            let text = v.to_str().unwrap_or_default().trim();
            return text
                .parse::<i64>()
                .map(Some)
                .map_err(|_| PollError::Malformed(format!("{what}: sequencenumber metadata is not an integer")));
        }
        let retry = response.headers().get(RETRY_AFTER).and_then(retry_after);
        let code = response.headers().get("x-ms-error-code").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let content_type = content_type(response.headers());
        let body = read_body(response).await.map_err(transport)?;
        let log = |status: u16| {
            tracing::debug!(
                scaler = SCALER_TYPE,
                status,
                blob,
                detail = %excerpt(&scrub(&body, &t.secrets)),
                "checkpoint blob answer is unusable"
            )
        };
        if status.is_success() {
            return self.cfg.strategy.parse_payload(&body).map(Some).map_err(|e| {
                log(status.as_u16());
                let summary = crate::body_summary(content_type.as_deref(), body.len());
                PollError::Malformed(format!("{what}: {e} ({summary})"))
            });
        }
        log(status.as_u16());
        let detail = crate::azure_queue::storage_error_detail(code.as_deref(), content_type.as_deref(), &body);
        Err(status_error(status.as_u16(), detail, retry, &what))
    }
}

fn status_error(status: u16, detail: String, retry_after: Option<Duration>, what: &str) -> PollError {
    match status {
        401 | 403 => PollError::Auth { status, detail },
        404 => PollError::NotFound(format!("{what}: {detail}")),
        429 | 503 => PollError::Throttled { detail: format!("HTTP {status}: {detail}"), retry_after },
        _ => PollError::Http { status, detail },
    }
}

fn transport(e: reqwest::Error) -> PollError {
    if e.is_timeout() {
        return PollError::Timeout(DEFAULT_TIMEOUT);
    }
    let e = e.without_url();
    let mut out = e.to_string();
    let mut next = std::error::Error::source(&e);
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    PollError::Connect(crate::azure_queue::redact(&out))
}

// ---------------------------------------------------------------------------------------------
// XML
// ---------------------------------------------------------------------------------------------

/// Calls `f(path, text)` for every text node (local names, prefixes ignored).
fn walk_xml(body: &str, mut f: impl FnMut(&[Vec<u8>], &str)) -> Result<(), String> {
    let mut reader = quick_xml::Reader::from_str(body);
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut seen = false;
    loop {
        match reader.read_event().map_err(|e| xml_error(&e, reader.error_position()))? {
            Event::Start(e) => {
                seen = true;
                path.push(e.local_name().as_ref().to_vec());
            }
            Event::Empty(_) => seen = true,
            Event::End(_) => {
                path.pop();
            }
            Event::Text(t) => {
                let text = t.decode().map_err(|_| "not UTF-8".to_owned())?;
                f(&path, &text);
            }
            Event::CData(t) => {
                let text = t.decode().map_err(|_| "not UTF-8".to_owned())?;
                f(&path, &text);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if seen { Ok(()) } else { Err("no XML element in the answer".to_owned()) }
}

/// `EventHubDescription/PartitionIds/string` texts.
pub fn parse_partition_ids(body: &str) -> Result<Vec<String>, String> {
    let mut ids: Vec<String> = Vec::new();
    walk_xml(body, |path, text| {
        let n = path.len();
        if n >= 2 && path[n - 1] == b"string" && path[n - 2] == b"PartitionIds" && !text.trim().is_empty() {
            ids.push(text.trim().to_string());
        }
    })?;
    Ok(ids)
}

/// `PartitionDescription/BeginSequenceNumber` and `EndSequenceNumber`.
pub fn parse_partition(body: &str) -> Result<PartitionInfo, String> {
    let (mut begin, mut end) = (None::<String>, None::<String>);
    walk_xml(body, |path, text| {
        let n = path.len();
        if n >= 2 && path[n - 2] == b"PartitionDescription" {
            match path[n - 1].as_slice() {
                b"BeginSequenceNumber" => begin.get_or_insert_with(String::new).push_str(text),
                b"EndSequenceNumber" => end.get_or_insert_with(String::new).push_str(text),
                _ => {}
            }
        }
    })?;
    let num = |v: Option<String>, name: &str| {
        let v = v.ok_or_else(|| format!("no {name} in the PartitionDescription"))?;
        v.trim().parse::<i64>().map_err(|_| format!("{name} is not an integer"))
    };
    Ok(PartitionInfo { begin: num(begin, "BeginSequenceNumber")?, last: num(end, "EndSequenceNumber")? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const P: fn(i64, i64) -> PartitionInfo = |begin, last| PartitionInfo { begin, last };

    fn parse_map(pairs: &[(&str, &str)]) -> Result<EventHubScaler, ConfigErrors> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse_config(&Metadata::new(&m))
    }

    const EH: &str =
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=s3cr3tkey;EntityPath=hub";
    const ST: &str =
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5a2V5a2V5;EndpointSuffix=core.windows.net";

    /// Issue 16: the counters `policy: drain` reads, over the partitions with a checkpoint;
    /// their difference is the unprocessed count of those partitions.
    #[test]
    fn sequence_sums_are_arrivals_and_processed() {
        let infos = [P(0, 100), P(0, 50), P(0, -1), P(0, 7)];
        let ckpts = [Some(60), Some(50), Some(0), None];
        assert_eq!(sequence_sums(&infos, &ckpts), Some((150.0, 110.0)));
        assert_eq!(sequence_sums(&infos[3..], &ckpts[3..]), None, "no checkpoint, no counters");
        let s = parse_map(&[("connection", EH), ("storageConnection", ST), ("blobContainer", "c")]).unwrap();
        let c =
            s.counters(&Measurement::Partitions { unprocessed: 40.0, partitions: 4, sequence: Some((150.0, 110.0)) });
        assert_eq!((c.arrivals, c.processed, c.max_consumers), (Some(150.0), Some(110.0), Some(4)));
    }

    #[test]
    fn all_partitions_checkpointed() {
        // KEDA calculateUnprocessedEvents: last - checkpoint.
        let counts = [unprocessed(P(0, 100), Some(90), 10_000), unprocessed(P(0, 50), Some(50), 10_000)];
        assert_eq!(counts, [10, 0]);
        assert_eq!(total(counts), 10);
    }

    #[test]
    fn missing_checkpoint_counts_from_begin() {
        // KEDA GetUnprocessedEventCountWithoutCheckpoint: (begin==0 && last==0) || begin!=last ⇒ last-begin+1.
        assert_eq!(unprocessed(P(0, 0), None, 10_000), 1);
        assert_eq!(unprocessed(P(5, 9), None, 10_000), 5);
        assert_eq!(unprocessed(P(7, 7), None, 10_000), 0, "begin == last != 0 ⇒ 0");
        assert_eq!(total([unprocessed(P(0, 9), None, 10_000), unprocessed(P(0, 9), Some(4), 10_000)]), 15);
    }

    #[test]
    fn empty_partition_is_zero() {
        // LastEnqueuedSequenceNumber == -1 ⇒ 0, with or without a checkpoint.
        assert_eq!(unprocessed(P(0, -1), None, 10_000), 0);
        assert_eq!(unprocessed(P(0, -1), Some(3), 10_000), 0);
    }

    #[test]
    fn wrap_around() {
        // last < checkpoint ⇒ (MaxInt64 - checkpoint) + last.
        assert_eq!(unprocessed(P(0, 5), Some(i64::MAX - 10), 0), 15);
    }

    #[test]
    fn stale_partition_info_is_zero() {
        // result > MaxInt64 - stalePartitionInfoThreshold ⇒ 0 (checkpoint ahead of stale info).
        assert_eq!(unprocessed(P(0, 100), Some(101), 10_000), 0);
        assert_eq!(unprocessed(P(0, 100), Some(101), 0), i64::MAX - 1);
    }

    #[test]
    fn total_overflow_is_max() {
        assert_eq!(total([i64::MAX, 1]), i64::MAX);
    }

    #[test]
    fn cap_at_partitions_times_threshold() {
        // if total/threshold > partitions ⇒ partitions*threshold (integer division).
        assert_eq!(capped(1000, 64, 4), 256);
        assert_eq!(capped(300, 64, 4), 300, "300/64 = 4, not > 4");
        assert_eq!(capped(319, 64, 4), 319);
        assert_eq!(capped(320, 64, 4), 256);
    }

    #[test]
    fn evaluate_caps_metric_but_activates_on_uncapped_total() {
        let s = parse_map(&[
            ("connection", EH),
            ("storageConnection", ST),
            ("unprocessedEventThreshold", "10"),
            ("activationUnprocessedEventThreshold", "25"),
        ])
        .unwrap();
        let e = s.evaluate(&Measurement::Partitions { unprocessed: 30.0, partitions: 2, sequence: None });
        assert_eq!(e.metric, 20.0, "30/10 = 3 > 2 partitions ⇒ 2 × 10");
        assert!(e.active, "activation on the uncapped 30 > 25");
        let e = s.evaluate(&Measurement::Partitions { unprocessed: 25.0, partitions: 2, sequence: None });
        assert_eq!(e.metric, 25.0, "25/10 = 2, not > 2 partitions: uncapped");
        assert!(!e.active, "strictly greater");
        assert_eq!(s.evaluate(&Measurement::Value(7.0)).metric, 7.0, "foreign variant, no panic");
        assert_eq!(s.target(), 10.0);
    }

    #[test]
    fn parse_table() {
        let s = parse_map(&[("connection", EH), ("storageConnection", ST)]).unwrap();
        assert_eq!(s.threshold, 64);
        assert_eq!(s.cfg.consumer_group, "$Default");
        assert_eq!(s.cfg.strategy, Strategy::AzureFunction, "empty blobContainer ⇒ azureFunction");
        assert_eq!(s.cfg.container, AZURE_FUNCTION_CONTAINER);
        assert_eq!(s.cfg.stale_threshold, 10_000);
        let key = s.source_key().0.clone();
        assert!(key.starts_with("azure-eventhub|ns.servicebus.windows.net|hub|$Default|https://acct.blob.core.windows.net/azure-webjobs-eventhub/azureFunction|value:"), "{key}");
        assert!(!key.contains("s3cr3tkey") && !key.contains("a2V5a2V5a2V5"), "{key}");

        let s = parse_map(&[("connection", EH), ("storageConnection", ST), ("blobContainer", "c")]).unwrap();
        assert_eq!(s.cfg.strategy, Strategy::Legacy);
        for (name, want) in
            [("blobMetadata", Strategy::BlobMetadata), ("goSdk", Strategy::GoSdk), ("dapr", Strategy::Dapr)]
        {
            let s = parse_map(&[
                ("connection", EH),
                ("storageConnection", ST),
                ("blobContainer", "c"),
                ("checkpointStrategy", name),
            ])
            .unwrap();
            assert_eq!(s.cfg.strategy, want);
        }

        let bad = |pairs: &[(&str, &str)], key: &str| {
            let e = parse_map(pairs).unwrap_err();
            assert!(e.keys().contains(&key), "{pairs:?}: {e}");
            assert!(!e.to_string().contains("s3cr3tkey"), "{e}");
        };
        bad(
            &[("connection", EH), ("storageConnection", ST), ("unprocessedEventThreshold", "0")],
            "unprocessedEventThreshold",
        );
        bad(&[("connection", EH), ("storageConnection", ST), ("checkpointStrategy", "blobMetadata")], "blobContainer");
        bad(&[("connection", EH), ("storageConnection", ST), ("checkpointStrategy", "nope")], "checkpointStrategy");
        bad(&[("storageConnection", ST)], "connection");
        bad(&[("connection", EH)], "storageConnection");
        bad(
            &[
                ("connection", "Endpoint=sb://ns/;SharedAccessKeyName=k;SharedAccessKey=s3cr3tkey"),
                ("storageConnection", ST),
            ],
            "eventHubName",
        );
        bad(&[("eventHubNamespace", "ns"), ("storageAccountName", "acct")], "eventHubName");
        bad(
            &[
                ("connection", EH),
                ("storageConnection", "BlobEndpoint=https://x/;SharedAccessSignature=sv=1&sig=s3cr3tkey"),
            ],
            "storageConnection",
        );

        let s = parse_map(&[
            ("eventHubNamespace", "ns"),
            ("eventHubName", "h"),
            ("storageAccountName", "acct"),
            ("consumerGroup", "cg"),
            ("cloud", "AzureChinaCloud"),
        ])
        .unwrap();
        assert_eq!(
            s.source_key().0,
            "azure-eventhub|ns.servicebus.chinacloudapi.cn|h|cg|https://acct.blob.core.chinacloudapi.cn/azure-webjobs-eventhub/azureFunction|identity,identity"
        );
    }

    #[test]
    fn blob_names_and_payloads() {
        let n = |s: Strategy| s.blob_name("ns.servicebus.windows.net", "hub", "$Default", "3");
        assert_eq!(n(Strategy::AzureFunction), "ns.servicebus.windows.net/hub/$Default/3");
        assert_eq!(n(Strategy::BlobMetadata), "ns.servicebus.windows.net/hub/$default/checkpoint/3");
        assert_eq!(n(Strategy::GoSdk), "3");
        assert_eq!(n(Strategy::Dapr), "dapr-hub-$Default-3");
        assert_eq!(n(Strategy::Legacy), "$Default/3");
        assert_eq!(Strategy::AzureFunction.parse_payload(r#"{"SequenceNumber":12,"PartitionId":"0"}"#), Ok(12));
        assert_eq!(Strategy::Legacy.parse_payload(r#"{"sequence_number":7,"partition_id":"0"}"#), Ok(7));
        assert_eq!(Strategy::GoSdk.parse_payload(r#"{"checkpoint":{"sequenceNumber":9},"partitionId":"0"}"#), Ok(9));
        assert!(Strategy::Dapr.parse_payload("nope").is_err());
    }

    #[test]
    fn parses_runtime_xml() {
        let hub = r#"<entry xmlns="http://www.w3.org/2005/Atom"><title>hub</title><content type="application/xml">
            <EventHubDescription xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect" xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
            <PartitionCount>2</PartitionCount><PartitionIds xmlns:d3p1="http://schemas.microsoft.com/2003/10/Serialization/Arrays">
            <d3p1:string>0</d3p1:string><d3p1:string>1</d3p1:string></PartitionIds></EventHubDescription></content></entry>"#;
        assert_eq!(parse_partition_ids(hub).unwrap(), vec!["0", "1"]);
        let p = r#"<entry xmlns="http://www.w3.org/2005/Atom"><content><PartitionDescription xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect">
            <BeginSequenceNumber>3</BeginSequenceNumber><EndSequenceNumber>41</EndSequenceNumber><LastEnqueuedOffset>1234</LastEnqueuedOffset>
            <LastEnqueuedTimeUtc>2024-01-01T00:00:00Z</LastEnqueuedTimeUtc></PartitionDescription></content></entry>"#;
        assert_eq!(parse_partition(p).unwrap(), P(3, 41));
        assert!(parse_partition("<entry/>").is_err());
        assert!(parse_partition("").is_err());
    }

    /// One answer of the local namespace: status, content type, body, extra headers.
    type Answer = (u16, &'static str, &'static str, &'static [(&'static str, &'static str)]);

    const HUB_OK: Answer = (
        200,
        "application/atom+xml",
        r#"<entry xmlns="http://www.w3.org/2005/Atom"><content><EventHubDescription><PartitionIds><d3p1:string>0</d3p1:string></PartitionIds></EventHubDescription></content></entry>"#,
        &[],
    );
    const PART_OK: Answer = (
        200,
        "application/atom+xml",
        "<entry><content><PartitionDescription><BeginSequenceNumber>0</BeginSequenceNumber><EndSequenceNumber>10</EndSequenceNumber></PartitionDescription></content></entry>",
        &[],
    );
    const BLOB_OK: Answer = (200, "application/json", r#"{"SequenceNumber":5}"#, &[]);

    /// Serves the hub (`/hub`), its partitions (`/hub/consumergroups/…`) and the checkpoint
    /// container (`/acct/…`) on loopback; returns the `connection` and `storageConnection`.
    async fn serve_namespace(hub: Answer, part: Answer, blob: Answer) -> (String, String) {
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| async move {
            let path = uri.path();
            let (status, ct, body, headers) = if path.starts_with("/hub/consumergroups/") {
                part
            } else if path.starts_with("/acct/") {
                blob
            } else {
                hub
            };
            let mut resp = axum::http::Response::builder().status(status).header("content-type", ct);
            for (k, v) in headers {
                resp = resp.header(*k, *v);
            }
            resp.body(axum::body::Body::from(body)).unwrap()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        (
            format!("Endpoint=sb://{addr}/;SharedAccessKeyName=n;SharedAccessKey=s3cr3tkey;EntityPath=hub"),
            format!("AccountName=acct;AccountKey=a2V5a2V5a2V5;BlobEndpoint=http://{addr}/acct"),
        )
    }

    /// The connection strings (hence the hosts) are the caller's, so an answer may be any
    /// internal page: no error quotes its bytes, nor ids or numbers parsed out of it.
    #[tokio::test]
    async fn poll_errors_never_quote_the_answer() {
        const M: &str = "LEAKED-BODY-MARKER";
        const HTML: &str = "<html><body>LEAKED-BODY-MARKER internal admin</body></html>";
        const SB_ERROR: &str = "<Error><Code>40100</Code><Detail>LEAKED-BODY-MARKER: bad token</Detail></Error>";
        const STORAGE_ERROR: &str = r#"<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code><Message>LEAKED-BODY-MARKER</Message></Error>"#;
        const META: &str = "blobMetadata";
        /// Name, hub, partition and checkpoint answers, checkpointStrategy, kind, wanted texts.
        type Case = (&'static str, Answer, Answer, Answer, &'static str, &'static str, &'static [&'static str]);
        let cases: &[Case] = &[
            (
                "hub 500 html",
                (500, "text/html", HTML, &[]),
                PART_OK,
                BLOB_OK,
                "",
                "http",
                &["HTTP 500", "text/html, 59 bytes"],
            ),
            (
                "hub 401 service bus error",
                (401, "application/xml", SB_ERROR, &[]),
                PART_OK,
                BLOB_OK,
                "",
                "auth",
                &["HTTP 401", "error code 40100 (application/xml"],
            ),
            (
                "hub 200 broken XML",
                (200, "text/html", "<html><LEAKED-BODY-MARKER></html>", &[]),
                PART_OK,
                BLOB_OK,
                "",
                "malformed",
                &["not XML (ill-formed XML at byte", "text/html, 33 bytes"],
            ),
            (
                "partition id and count from the answer",
                (
                    200,
                    "application/xml",
                    "<entry><PartitionIds><string>LEAKED-BODY-MARKER</string></PartitionIds></entry>",
                    &[],
                ),
                (
                    200,
                    "application/xml",
                    "<entry><PartitionDescription><BeginSequenceNumber>LEAKED-BODY-MARKER</BeginSequenceNumber><EndSequenceNumber>1</EndSequenceNumber></PartitionDescription></entry>",
                    &[],
                ),
                BLOB_OK,
                "",
                "malformed",
                &["partition at index 0", "BeginSequenceNumber is not an integer", "application/xml"],
            ),
            (
                "partition 404 service bus error",
                HUB_OK,
                (404, "application/xml", SB_ERROR, &[]),
                BLOB_OK,
                "",
                "not_found",
                &["error code 40100"],
            ),
            (
                "checkpoint 403 storage XML error",
                HUB_OK,
                PART_OK,
                (403, "application/xml", STORAGE_ERROR, &[]),
                "",
                "auth",
                &["HTTP 403", "error code AuthenticationFailed (application/xml"],
            ),
            (
                "checkpoint 503 with x-ms-error-code",
                HUB_OK,
                PART_OK,
                (503, "text/html", HTML, &[("x-ms-error-code", "ServerBusy")]),
                "",
                "throttled",
                &["HTTP 503", "error code ServerBusy (text/html"],
            ),
            (
                "checkpoint 500 with a code that is not one",
                HUB_OK,
                PART_OK,
                (500, "text/html", HTML, &[("x-ms-error-code", "LEAKED-BODY-MARKER")]),
                "",
                "http",
                &["HTTP 500", "text/html, 59 bytes"],
            ),
            (
                "checkpoint 200 html",
                HUB_OK,
                PART_OK,
                (200, "text/html", HTML, &[]),
                "",
                "malformed",
                &["checkpoint is not JSON (syntax error at line 1", "text/html"],
            ),
            (
                "checkpoint 200 wrong-typed number",
                HUB_OK,
                PART_OK,
                (200, "application/json", r#"{"SequenceNumber":"LEAKED-BODY-MARKER"}"#, &[]),
                "",
                "malformed",
                &["sequence number is not an integer"],
            ),
            (
                "checkpoint metadata not a number",
                HUB_OK,
                PART_OK,
                (200, "application/octet-stream", "", &[("x-ms-meta-sequencenumber", "LEAKED-BODY-MARKER")]),
                META,
                "malformed",
                &["sequencenumber metadata is not an integer"],
            ),
        ];
        for (name, hub, part, blob, strategy, kind, wants) in cases {
            let (eh, st) = serve_namespace(*hub, *part, *blob).await;
            let mut md = vec![("connection", eh.as_str()), ("storageConnection", st.as_str())];
            if !strategy.is_empty() {
                md.extend([("checkpointStrategy", *strategy), ("blobContainer", "ckpt")]);
            }
            let e = parse_map(&md).unwrap().poller().unwrap().poll().await.unwrap_err();
            let text = e.to_string();
            assert_eq!(e.kind(), *kind, "{name}: {text}");
            assert!(
                !text.contains(M) && !text.contains("internal admin") && !text.contains("bad token"),
                "{name}: {text}"
            );
            for want in *wants {
                assert!(text.contains(want), "{name}: {text:?} lacks {want:?}");
            }
        }
    }
}
