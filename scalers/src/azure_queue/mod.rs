//! `azure-queue`: the length of one Azure Storage queue, at parity with KEDA's built-in scaler
//! (`pkg/scalers/azure_queue_scaler.go`, `pkg/scalers/azure/azure_storage.go`,
//! `pkg/scalers/azure/azure_cloud_environment.go`, read at keda `8b4f083`).
//!
//! # Metadata
//!
//! Every key is read as `<key>`, then `<key>FromEnv` (see [`crate::metadata`]).
//!
//! | key | default | notes (and deviations from KEDA) |
//! |---|---|---|
//! | `queueName` | required | the queue |
//! | `queueLength` | `5` | integer, HPA target. **Deviation:** ebb rejects `<= 0` (KEDA passes it to the HPA) |
//! | `activationQueueLength` | `0` | integer; active when `length > activationQueueLength` |
//! | `queueLengthStrategy` | `all` | `all`: the approximate count (includes invisible messages); `visibleonly`: peek 32 messages, and when 32 come back use the approximate count instead. Case-insensitive |
//! | `connection` (`connectionFromEnv`) | — | a storage connection string (below) |
//! | `connectionRef` | — | ebb only: the name of a secret file in ebb's secrets directory holding the connection string, re-read at every poll |
//! | `accountName` | — | used when no connection is given: ebb's own Entra identity (workload or managed identity), scope `https://storage.azure.com/.default`, URL `https://<accountName>.queue.<suffix>/<queueName>` |
//! | `cloud` | `AzurePublicCloud` | `AzureUSGovernmentCloud`, `AzureChinaCloud`, `Private` (case-insensitive). Checked even with a connection string, as in KEDA |
//! | `endpointSuffix` | by cloud | required when `cloud` is `Private`, and then the whole queue suffix (`queue.core.example`), as in KEDA; ignored otherwise |
//!
//! KEDA needs a TriggerAuthentication with `podIdentity: azure-workload` for `accountName`; an
//! external scaler gets no pod identity, so ebb uses its own identity whenever there is no
//! connection. Without either, the error names `connection`.
//!
//! # Connection strings
//!
//! `;`-separated `Key=Value` pairs, keys case-insensitive: `DefaultEndpointsProtocol`
//! (default `https`), `AccountName`, `AccountKey`, `EndpointSuffix` (default
//! `core.windows.net`), `QueueEndpoint` (overrides the computed
//! `<protocol>://<account>.queue.<suffix>`), `SharedAccessSignature`, and
//! `UseDevelopmentStorage=true` (Azurite: `devstoreaccount1` at `http://127.0.0.1:10001`). As in
//! the Go SDK's connection-string client, `cloud` does not change a connection string's
//! endpoint.
//!
//! The official `azure_storage_queue` crate signs only with Entra tokens or a SAS in the URL,
//! so for an `AccountKey` ebb builds a short-lived **queue service SAS** (`sp=r`, valid
//! [`SAS_LIFETIME`](crate::azure::storage::SAS_LIFETIME), renewed
//! [`SAS_RENEW_BEFORE`](crate::azure::storage::SAS_RENEW_BEFORE) before it ends) with HMAC-SHA256 over the
//! base64-decoded key, and calls the queue with no credential. `Read` on the queue is all
//! that is needed (Get Queue Metadata and Peek Messages). A `SharedAccessSignature` is used
//! as given; it needs `sp` with `r`, and for an account SAS `ss` with `q` and `srt` with `o`.
//!
//! # Answer
//!
//! `GET <queue>?comp=metadata` → `x-ms-approximate-messages-count`; `visibleonly` first does
//! `GET <queue>/messages?peekonly=true&numofmessages=32`. The client does not retry (the
//! engine does, with backoff). 404 → not found; 401/403 → auth; 429/503 → throttled; no
//! answer within [`DEFAULT_TIMEOUT`] → timeout. Error messages carry the service's error code
//! (`QueueNotFound`, `AuthenticationFailed`), the media type and the size of the answer, never
//! its body (the SDK's error text), a key or a signature.
//!
//! # Source key
//!
//! `azure-queue|<queue service endpoint>|<queue>|<strategy>|<credential label>`, the label
//! being [`SecretSource::label`] or `identity`. For `connectionRef` the endpoint is only known
//! when the secret is read, so the secret's name stands in for it. Thresholds are not in the
//! key: triggers that differ only by thresholds share one poll.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use url::Url;

use crate::azure::storage::{ConnectionString, STORAGE_SCOPE};
use crate::azure::{Cloud, SecretSource, Service};
use crate::metadata::collect;
use crate::trust::{AzureService, Held, IdentityUse};
use crate::{ConfigError, ConfigErrors, Evaluation, Measurement, Metadata, Poller, Scaler, ScalerContext, SourceKey};

/// The trigger type name.
pub const SCALER_TYPE: &str = "azure-queue";

/// How long one poll (one or two requests) may take: KEDA's global HTTP timeout default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// KEDA's `queueLength` default.
pub const DEFAULT_QUEUE_LENGTH: i64 = 5;

/// KEDA's `maxPeekMessages`: the most Peek Messages returns.
pub const MAX_PEEK: usize = 32;

/// Metadata that parses (the registry's contract test runs it).
pub const EXAMPLE: &[(&str, &str)] = &[
    ("queueName", "orders"),
    ("queueLength", "5"),
    ("connection", "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=czNjcjN0LWtleQ=="),
];

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// `queueLengthStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The approximate count, invisible (in-flight) messages included.
    All,
    /// Visible messages by peeking, up to 32; the approximate count beyond that.
    VisibleOnly,
}

impl Strategy {
    fn as_str(self) -> &'static str {
        match self {
            Strategy::All => "all",
            Strategy::VisibleOnly => "visibleonly",
        }
    }
}

/// How the queue is reached.
#[derive(Debug, Clone, PartialEq)]
enum Access {
    /// A connection string (value or named secret).
    Connection(SecretSource),
    /// ebb's own identity against `https://<account>.<suffix>/<queue>`.
    Identity(Url),
}

/// A parsed `azure-queue` trigger. `Debug` never shows a secret.
#[derive(Debug)]
pub struct AzureQueueScaler {
    queue_name: String,
    queue_length: i64,
    activation_queue_length: i64,
    strategy: Strategy,
    access: Access,
    /// The key that chose the identity's host (`accountName`, or `endpointSuffix` when Private).
    identity_key: &'static str,
    source_key: SourceKey,
}

/// Parses an `azure-queue` trigger. Pure and cheap: no client is built here.
pub fn parse(md: &Metadata<'_>) -> Result<Arc<dyn Scaler>, ConfigErrors> {
    Ok(Arc::new(parse_config(md)?))
}

fn parse_config(md: &Metadata<'_>) -> Result<AzureQueueScaler, ConfigErrors> {
    let mut errs = ConfigErrors::default();

    let queue_name = collect(&mut errs, md.required("queueName"));
    let queue_length = collect(&mut errs, queue_length(md));
    let activation_queue_length = collect(&mut errs, md.i64("activationQueueLength")).flatten().unwrap_or(0);
    let strategy = match collect(&mut errs, md.one_of("queueLengthStrategy", &["all", "visibleonly"])).flatten() {
        Some("visibleonly") => Strategy::VisibleOnly,
        _ => Strategy::All,
    };
    // KEDA parses the cloud and suffix whatever the auth (an invalid cloud fails everywhere).
    let cloud = collect(&mut errs, Cloud::parse(md));
    let identity_key = if cloud == Some(Cloud::Private) { "endpointSuffix" } else { "accountName" };
    let suffix = cloud.and_then(|cloud| {
        collect(
            &mut errs,
            cloud.suffix(md, Service::Storage, "endpointSuffix").map(|s| match cloud {
                Cloud::Private => s,
                _ => format!("queue.{s}"),
            }),
        )
    });
    let connection = collect(&mut errs, SecretSource::from_metadata(md, "connection")).flatten();

    let (access, endpoint_label) = match (connection, md.get("accountName")) {
        (Some(SecretSource::Value(cs)), _) => {
            match collect(&mut errs, ConnectionString::parse(&cs).map_err(|r| ConfigError::new("connection", r))) {
                Some(parsed) => {
                    let label = parsed.queue_endpoint.to_string();
                    (Some(Access::Connection(SecretSource::Value(cs))), label)
                }
                None => (None, String::new()),
            }
        }
        (Some(named @ SecretSource::Named(_)), _) => (Some(Access::Connection(named.clone())), named.label()),
        (None, Some(account)) => match (&queue_name, &suffix) {
            (Some(q), Some(suffix)) => match collect(&mut errs, identity_url(account, suffix, q)) {
                Some(url) => {
                    let mut endpoint = url.clone();
                    endpoint.set_path("");
                    let label = endpoint.as_str().trim_end_matches('/').to_string();
                    (Some(Access::Identity(url)), label)
                }
                None => (None, String::new()),
            },
            _ => (None, String::new()),
        },
        (None, None) => {
            errs.push(ConfigError::new(
                "connection",
                "no connection setting given: set connection (or connectionFromEnv, connectionRef), or accountName \
                 to use ebb's own Azure identity",
            ));
            (None, String::new())
        }
    };

    let (Some(queue_name), Some(queue_length), Some(access), true) =
        (queue_name, queue_length, access, errs.0.is_empty())
    else {
        return Err(errs);
    };
    let credential = match &access {
        Access::Connection(s) => s.label(),
        Access::Identity(_) => "identity".to_string(),
    };
    let source_key =
        SourceKey(format!("{SCALER_TYPE}|{endpoint_label}|{queue_name}|{}|{credential}", strategy.as_str()));
    Ok(AzureQueueScaler {
        queue_name: queue_name.to_string(),
        queue_length,
        activation_queue_length,
        strategy,
        access,
        identity_key,
        source_key,
    })
}

fn queue_length(md: &Metadata<'_>) -> Result<i64, ConfigError> {
    match md.i64("queueLength")? {
        None => Ok(DEFAULT_QUEUE_LENGTH),
        Some(n) if n > 0 => Ok(n),
        Some(n) => Err(ConfigError::new(
            "queueLength",
            format!("must be greater than 0 (got {n}); the HPA cannot use a target of 0 or less"),
        )),
    }
}

fn identity_url(account: &str, suffix: &str, queue: &str) -> Result<Url, ConfigError> {
    let mut url = Url::parse(&format!("https://{account}.{suffix}"))
        .ok()
        .filter(|u| u.host_str().is_some() && u.path() == "/" && u.query().is_none())
        .ok_or_else(|| ConfigError::new("accountName", format!("{account:?} does not form a valid host name")))?;
    url.path_segments_mut().expect("https URL has a path").pop_if_empty().push(queue);
    Ok(url)
}

impl Scaler for AzureQueueScaler {
    fn scaler_type(&self) -> &'static str {
        SCALER_TYPE
    }

    fn source_key(&self) -> &SourceKey {
        &self.source_key
    }

    fn target(&self) -> f64 {
        self.queue_length as f64
    }

    fn poll_timeout(&self) -> Duration {
        DEFAULT_TIMEOUT
    }

    fn evaluate(&self, m: &Measurement) -> Evaluation {
        let v = m.scalar();
        Evaluation { metric: v, active: v > self.activation_queue_length as f64 }
    }

    fn poller(&self, ctx: &Arc<ScalerContext>) -> Result<Arc<dyn Poller>, ConfigErrors> {
        Ok(Arc::new(poll::QueuePoller {
            ctx: ctx.clone(),
            queue_name: self.queue_name.clone(),
            strategy: self.strategy,
            access: self.access.clone(),
            client: Mutex::new(None),
        }))
    }

    fn held(&self) -> Vec<Held> {
        match &self.access {
            Access::Identity(url) => vec![Held::Identity(IdentityUse {
                service: AzureService::Storage,
                url: url.to_string(),
                entity: self.queue_name.clone(),
                audience: STORAGE_SCOPE.to_owned(),
                host_key: self.identity_key,
                audience_key: None,
            })],
            Access::Connection(SecretSource::Named(name)) => {
                vec![Held::NamedSecret { name: name.clone(), key: "connectionRef".to_owned() }]
            }
            Access::Connection(SecretSource::Value(_)) => Vec::new(),
        }
    }
}

mod poll;
#[cfg(test)]
mod tests;
