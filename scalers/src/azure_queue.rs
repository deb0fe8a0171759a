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
//! [`SAS_LIFETIME`], renewed [`SAS_RENEW_BEFORE`] before it ends) with HMAC-SHA256 over the
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

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use azure_core::error::ErrorKind;
use azure_core::http::{ClientOptions, HttpClient, RetryOptions, Transport};
use azure_storage_queue::models::{QueueClientGetPropertiesResultHeaders, QueueClientPeekMessagesOptions};
use azure_storage_queue::{QueueClient, QueueClientOptions};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use url::Url;

use crate::azure::{Cloud, SecretSource, Service, identity_for};
use crate::metadata::collect;
use crate::trust::{AzureService, Held, IdentityUse};
use crate::{ConfigError, ConfigErrors, Evaluation, Measurement, Metadata, PollError, Poller, Scaler, SourceKey};

/// The trigger type name.
pub const SCALER_TYPE: &str = "azure-queue";

/// How long one poll (one or two requests) may take: KEDA's global HTTP timeout default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// KEDA's `queueLength` default.
pub const DEFAULT_QUEUE_LENGTH: i64 = 5;

/// KEDA's `maxPeekMessages`: the most Peek Messages returns.
pub const MAX_PEEK: usize = 32;

/// Lifetime of a SAS ebb signs from an account key.
pub const SAS_LIFETIME: Duration = Duration::from_secs(3600);

/// A signed SAS is replaced this long before it ends.
pub const SAS_RENEW_BEFORE: Duration = Duration::from_secs(600);

/// The SAS service version ebb signs with (supported by Azure and by Azurite 3.x).
pub const SAS_VERSION: &str = "2021-12-02";

/// Token scope for ebb's own identity.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// Azurite's well-known account (`UseDevelopmentStorage=true`).
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known key (public, documented by Microsoft).
pub const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const DEV_QUEUE_ENDPOINT: &str = "http://127.0.0.1:10001/devstoreaccount1";

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

    fn poller(&self) -> Result<Arc<dyn Poller>, ConfigErrors> {
        Ok(Arc::new(QueuePoller {
            queue_name: self.queue_name.clone(),
            strategy: self.strategy,
            access: self.access.clone(),
            timeout: DEFAULT_TIMEOUT,
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

// ---------------------------------------------------------------------------------------------
// Connection strings and SAS
// ---------------------------------------------------------------------------------------------

/// A storage account key, decoded. `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct AccountKey(Vec<u8>);

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountKey(***)")
    }
}

impl AccountKey {
    /// Decodes a base64 account key; the error never carries the value.
    pub fn from_base64(key: &str) -> Result<AccountKey, String> {
        B64.decode(key.trim()).map(AccountKey).map_err(|_| "AccountKey is not valid base64".to_string())
    }

    /// `base64(HMAC-SHA256(key, string_to_sign))`: the signature of Shared Key and SAS.
    pub fn sign(&self, string_to_sign: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(string_to_sign.as_bytes());
        B64.encode(mac.finalize().into_bytes())
    }
}

/// How a connection string authenticates.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionCredential {
    Key {
        account: String,
        key: AccountKey,
    },
    /// A SAS query string without the leading `?`.
    Sas(SasToken),
}

/// A SAS query string. `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken(pub String);

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SasToken(***)")
    }
}

/// A parsed storage connection string.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionString {
    /// The queue service endpoint, without a trailing `/` (`https://acct.queue.core.windows.net`,
    /// `http://127.0.0.1:10001/devstoreaccount1`).
    pub queue_endpoint: Url,
    pub credential: ConnectionCredential,
}

impl ConnectionString {
    /// Parses a connection string. Errors say what is missing or wrong, never a value.
    pub fn parse(s: &str) -> Result<ConnectionString, String> {
        let mut protocol = None;
        let mut account = None;
        let mut key = None;
        let mut suffix = None;
        let mut endpoint = None;
        let mut sas = None;
        let mut dev = false;
        for (i, part) in s.split(';').map(str::trim).filter(|p| !p.is_empty()).enumerate() {
            let Some((k, v)) = part.split_once('=') else {
                return Err(format!("connection string: part {} is not of the form Key=Value", i + 1));
            };
            let v = v.trim().to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "defaultendpointsprotocol" => protocol = Some(v),
                "accountname" => account = Some(v),
                "accountkey" => key = Some(v),
                "endpointsuffix" => suffix = Some(v),
                "queueendpoint" => endpoint = Some(v),
                "sharedaccesssignature" => sas = Some(v),
                "usedevelopmentstorage" => dev = v.eq_ignore_ascii_case("true"),
                // BlobEndpoint, TableEndpoint, FileEndpoint, DevelopmentStorageProxyUri, …
                _ => {}
            }
        }
        if dev {
            account.get_or_insert_with(|| DEV_ACCOUNT.to_string());
            if key.is_none() && sas.is_none() {
                key = Some(DEV_KEY.to_string());
            }
            endpoint.get_or_insert_with(|| DEV_QUEUE_ENDPOINT.to_string());
        }
        let account = account.filter(|a| !a.is_empty());
        let queue_endpoint = match endpoint.filter(|e| !e.is_empty()) {
            Some(e) => {
                let url = Url::parse(&e).map_err(|_| "connection string: QueueEndpoint is not a URL".to_string())?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() || url.query().is_some() {
                    return Err("connection string: QueueEndpoint must be an http(s) URL without a query".into());
                }
                url
            }
            None => {
                let Some(account) = &account else {
                    return Err("connection string: needs AccountName or QueueEndpoint".into());
                };
                let protocol = protocol.as_deref().unwrap_or("https").to_ascii_lowercase();
                if protocol != "https" && protocol != "http" {
                    return Err("connection string: DefaultEndpointsProtocol must be http or https".into());
                }
                let suffix = suffix.as_deref().unwrap_or("core.windows.net").trim_start_matches('.');
                Url::parse(&format!("{protocol}://{account}.queue.{suffix}"))
                    .map_err(|_| "connection string: AccountName and EndpointSuffix do not form a host".to_string())?
            }
        };
        let mut queue_endpoint = queue_endpoint;
        let trimmed = queue_endpoint.path().trim_end_matches('/').to_string();
        queue_endpoint.set_path(&trimmed);
        let credential = match (key.filter(|k| !k.is_empty()), sas.filter(|s| !s.is_empty())) {
            (Some(k), _) => {
                let Some(account) = account else {
                    return Err("connection string: AccountKey needs AccountName".into());
                };
                let key = AccountKey::from_base64(&k).map_err(|e| format!("connection string: {e}"))?;
                ConnectionCredential::Key { account, key }
            }
            (None, Some(sas)) => ConnectionCredential::Sas(SasToken(sas.trim_start_matches('?').to_string())),
            (None, None) => return Err("connection string: has neither AccountKey nor SharedAccessSignature".into()),
        };
        Ok(ConnectionString { queue_endpoint, credential })
    }

    /// `<endpoint>/<queue>`.
    pub fn queue_url(&self, queue: &str) -> Url {
        let mut url = self.queue_endpoint.clone();
        url.path_segments_mut().expect("http(s) URL has a path").pop_if_empty().push(queue);
        url
    }
}

/// A queue service SAS for `queue` with permissions `permissions`, ending at `expiry` (seconds
/// since the epoch), as a query string without `?`. String to sign (queue service, version
/// 2015-04-05 and later): `sp \n st \n se \n /queue/<account>/<queue> \n si \n sip \n spr \n sv`.
pub fn queue_service_sas(account: &str, key: &AccountKey, queue: &str, permissions: &str, expiry: u64) -> String {
    let se = iso8601(expiry);
    let string_to_sign = format!("{permissions}\n\n{se}\n/queue/{account}/{queue}\n\n\n\n{SAS_VERSION}");
    let sig = key.sign(&string_to_sign);
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", SAS_VERSION)
        .append_pair("se", &se)
        .append_pair("sp", permissions)
        .append_pair("sig", &sig)
        .finish()
}

/// A blob **container** service SAS (`sr=c`) with `permissions`, ending at `expiry` (seconds
/// since the epoch), as a query string without `?`. String to sign (version 2020-12-06 and
/// later): `sp \n st \n se \n /blob/<account>/<container> \n si \n sip \n spr \n sv \n sr \n
/// snapshot \n ses \n rscc \n rscd \n rsce \n rscl \n rsct`.
pub fn blob_container_sas(account: &str, key: &AccountKey, container: &str, permissions: &str, expiry: u64) -> String {
    let se = iso8601(expiry);
    let resource = format!("/blob/{account}/{container}");
    let fields = [permissions, "", &se, &resource, "", "", "", SAS_VERSION, "c", "", "", "", "", "", "", ""];
    let sig = key.sign(&fields.join("\n"));
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", SAS_VERSION)
        .append_pair("se", &se)
        .append_pair("sr", "c")
        .append_pair("sp", permissions)
        .append_pair("sig", &sig)
        .finish()
}

/// The blob service endpoint of a storage connection string, without a trailing `/`:
/// `BlobEndpoint`, Azurite's `http://127.0.0.1:10000/devstoreaccount1` for
/// `UseDevelopmentStorage=true`, else `<protocol>://<account>.blob.<suffix>`. Errors never carry
/// a value.
pub fn blob_endpoint(s: &str) -> Result<Url, String> {
    let (mut protocol, mut account, mut suffix, mut endpoint, mut dev) = (None, None, None, None, false);
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else { continue };
        let v = v.trim().to_string();
        match k.trim().to_ascii_lowercase().as_str() {
            "defaultendpointsprotocol" => protocol = Some(v),
            "accountname" => account = Some(v),
            "endpointsuffix" => suffix = Some(v),
            "blobendpoint" => endpoint = Some(v),
            "usedevelopmentstorage" => dev = v.eq_ignore_ascii_case("true"),
            _ => {}
        }
    }
    let mut url = match endpoint.filter(|e| !e.is_empty()) {
        Some(e) => {
            let url = Url::parse(&e).map_err(|_| "connection string: BlobEndpoint is not a URL".to_string())?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() || url.query().is_some() {
                return Err("connection string: BlobEndpoint must be an http(s) URL without a query".into());
            }
            url
        }
        None if dev => Url::parse("http://127.0.0.1:10000/devstoreaccount1").expect("static URL"),
        None => {
            let account =
                account.filter(|a| !a.is_empty()).ok_or("connection string: needs AccountName or BlobEndpoint")?;
            let protocol = protocol.as_deref().unwrap_or("https").to_ascii_lowercase();
            if protocol != "https" && protocol != "http" {
                return Err("connection string: DefaultEndpointsProtocol must be http or https".into());
            }
            let suffix = suffix.as_deref().unwrap_or("core.windows.net").trim_start_matches('.').to_string();
            Url::parse(&format!("{protocol}://{account}.blob.{suffix}"))
                .map_err(|_| "connection string: AccountName and EndpointSuffix do not form a host".to_string())?
        }
    };
    let trimmed = url.path().trim_end_matches('/').to_string();
    url.set_path(&trimmed);
    Ok(url)
}

/// `YYYY-MM-DDThh:mm:ssZ` for seconds since the epoch (UTC).
pub fn iso8601(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Replaces the value of every `sig=` in `s` (error texts of the HTTP stack can carry URLs).
pub fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.to_ascii_lowercase().find("sig=") {
        out.push_str(&rest[..i + 4]);
        out.push_str("REDACTED");
        let tail = &rest[i + 4..];
        let end = tail.find(|c: char| c == '&' || c == ')' || c == '"' || c.is_whitespace()).unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// Poller
// ---------------------------------------------------------------------------------------------

struct QueuePoller {
    queue_name: String,
    strategy: Strategy,
    access: Access,
    timeout: Duration,
    client: Mutex<Option<CachedClient>>,
}

struct CachedClient {
    client: Arc<QueueClient>,
    /// Fingerprint of the connection string it was built from (a rotated secret rebuilds).
    secret: Option<String>,
    /// When a signed SAS must be renewed.
    renew_at: Option<Instant>,
    /// Where it points, for messages (no query).
    endpoint: String,
}

/// One HTTP stack for every queue client (connection pooling across sources).
fn transport() -> Transport {
    static CLIENT: OnceLock<Arc<dyn HttpClient>> = OnceLock::new();
    Transport::new(CLIENT.get_or_init(|| azure_core::http::new_http_client(None)).clone())
}

fn client_options() -> QueueClientOptions {
    QueueClientOptions {
        client_options: ClientOptions {
            // The engine retries with backoff; one poll is one attempt.
            retry: RetryOptions::none(),
            transport: Some(transport()),
            ..Default::default()
        },
        ..Default::default()
    }
}

impl QueuePoller {
    fn client(&self) -> Result<(Arc<QueueClient>, String), PollError> {
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        let secret = match &self.access {
            Access::Connection(s) => Some(s.resolve()?),
            Access::Identity(_) => None,
        };
        let fp = secret.as_deref().map(crate::azure::fingerprint);
        if let Some(c) = slot.as_ref()
            && c.secret == fp
            && c.renew_at.is_none_or(|t| Instant::now() < t)
        {
            return Ok((c.client.clone(), c.endpoint.clone()));
        }
        let (url, credential, renew_at) = match (&self.access, secret) {
            (Access::Identity(url), _) => (url.clone(), Some(identity_for(url)?), None),
            (Access::Connection(_), Some(cs)) => {
                let cs = ConnectionString::parse(&cs).map_err(PollError::Credential)?;
                let mut url = cs.queue_url(&self.queue_name);
                match &cs.credential {
                    ConnectionCredential::Key { account, key } => {
                        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                        let expiry = (now + SAS_LIFETIME).as_secs();
                        url.set_query(Some(&queue_service_sas(account, key, &self.queue_name, "r", expiry)));
                        (url, None, Some(Instant::now() + SAS_LIFETIME - SAS_RENEW_BEFORE))
                    }
                    ConnectionCredential::Sas(sas) => {
                        url.set_query(Some(&sas.0));
                        (url, None, None)
                    }
                }
            }
            (Access::Connection(_), None) => unreachable!("a connection always resolves to a secret"),
        };
        let mut endpoint = url.clone();
        endpoint.set_query(None);
        let endpoint = endpoint.to_string();
        let client = QueueClient::new(url, credential, Some(client_options())).map_err(|e| {
            PollError::Credential(format!("cannot build the queue client for {endpoint}: {}", redact(&e.to_string())))
        })?;
        let client = Arc::new(client);
        *slot = Some(CachedClient { client: client.clone(), secret: fp, renew_at, endpoint: endpoint.clone() });
        Ok((client, endpoint))
    }

    async fn count(&self) -> Result<i64, PollError> {
        let (client, endpoint) = self.client()?;
        let map = |e: azure_core::Error| map_error(&e, &self.queue_name, &endpoint);
        if self.strategy == Strategy::VisibleOnly {
            let options =
                QueueClientPeekMessagesOptions { number_of_messages: Some(MAX_PEEK as i32), ..Default::default() };
            let peeked = client.peek_messages(Some(options)).await.map_err(map)?;
            // The SDK's deserialization error can quote the answer: type and size only.
            let summary = crate::body_summary(
                peeked.headers().get_optional_str(&azure_core::http::headers::CONTENT_TYPE),
                peeked.body().len(),
            );
            let peeked = peeked.into_model().map_err(|e| {
                tracing::debug!(scaler = SCALER_TYPE, detail = %redact(&e.to_string()), "peek answer unreadable");
                PollError::Malformed(format!(
                    "queue {}: the peek answer is not a message list ({summary})",
                    self.queue_name
                ))
            })?;
            let visible = peeked.items.map(|v| v.len()).unwrap_or(0);
            if visible < MAX_PEEK {
                return Ok(visible as i64);
            }
        }
        let props = client.get_properties(None).await.map_err(map)?;
        // The SDK's parse error quotes the header value: not in the error.
        props
            .approximate_messages_count()
            .map_err(|_| PollError::Malformed("x-ms-approximate-messages-count is not an integer".into()))?
            .ok_or_else(|| PollError::Malformed("no x-ms-approximate-messages-count header".into()))
    }
}

/// Maps an SDK error to a [`PollError`] whose text carries no key, no signature and no bytes
/// of the answer. The SDK's `Display` of an HTTP error is the whole body, so only the status,
/// Storage's error code, the media type and the size are used ([`storage_error_detail`]).
fn map_error(e: &azure_core::Error, queue: &str, endpoint: &str) -> PollError {
    match e.kind() {
        ErrorKind::HttpResponse { status, error_code, raw_response } => {
            let status = u16::from(*status);
            let code = match raw_response {
                Some(r) => {
                    let body = String::from_utf8_lossy(r.body());
                    tracing::debug!(
                        scaler = SCALER_TYPE,
                        status,
                        detail = %crate::excerpt(&redact(&body)),
                        "storage queue api returned an error"
                    );
                    let headers = r.headers();
                    let code_header = headers.get_optional_str(&azure_core::http::headers::ERROR_CODE);
                    let content_type = headers.get_optional_str(&azure_core::http::headers::CONTENT_TYPE);
                    storage_error_detail(code_header, content_type, &body)
                }
                // Without the answer, the SDK's code (a header or body value) if it is a code.
                None => error_code.as_deref().filter(|c| is_storage_code(c)).unwrap_or("no error code").to_owned(),
            };
            match status {
                404 => PollError::NotFound(format!("queue {queue} at {endpoint}: {code}")),
                401 | 403 => PollError::Auth {
                    status,
                    detail: format!("queue {queue} at {endpoint}: {code}; check the account key, SAS or role"),
                },
                429 | 503 => {
                    PollError::Throttled { detail: format!("queue {queue}: HTTP {status}, {code}"), retry_after: None }
                }
                _ => PollError::Http { status, detail: format!("queue {queue}: {code}") },
            }
        }
        ErrorKind::Credential => PollError::Credential(redact(&e.to_string())),
        ErrorKind::Io => PollError::Connect(format!("{endpoint}: {}", redact(&error_chain(e)))),
        ErrorKind::DataConversion => {
            // The SDK's conversion errors can quote the answer.
            tracing::debug!(scaler = SCALER_TYPE, detail = %redact(&e.to_string()), "storage queue answer unreadable");
            PollError::Malformed(format!("queue {queue}: the answer could not be read"))
        }
        _ => PollError::Connect(format!("{endpoint}: {}", redact(&error_chain(e)))),
    }
}

/// An Azure Storage error answer for the caller: its error code (the `x-ms-error-code` header,
/// else the `<Code>` of its XML error body) when it is a short alphanumeric token, and the
/// media type and size ([`crate::body_summary`]). Never the `<Message>` nor other bytes: a
/// connection string (hence the host) is the caller's, and the answer may be any internal page.
pub(crate) fn storage_error_detail(code_header: Option<&str>, content_type: Option<&str>, body: &str) -> String {
    let summary = crate::body_summary(content_type, body.len());
    let code = code_header
        .map(|c| c.trim().to_owned())
        .filter(|c| is_storage_code(c))
        .or_else(|| crate::azure_servicebus::element_text(body, "Code").map(|c| c.trim().to_owned()))
        .filter(|c| is_storage_code(c));
    match code {
        Some(code) => format!("error code {code} ({summary})"),
        None => summary,
    }
}

/// Storage error codes are PascalCase names (`AuthenticationFailed`, `QueueNotFound`).
fn is_storage_code(c: &str) -> bool {
    !c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[async_trait::async_trait]
impl Poller for QueuePoller {
    async fn poll(&self) -> Result<Measurement, PollError> {
        match tokio::time::timeout(self.timeout, self.count()).await {
            Ok(r) => r.map(|n| Measurement::Value(n as f64)),
            Err(_) => Err(PollError::Timeout(self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const CS: &str = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net";

    fn md(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn parse_md(pairs: &[(&str, &str)]) -> Result<AzureQueueScaler, ConfigErrors> {
        let m = md(pairs);
        parse_config(&Metadata::new(&m))
    }

    /// KEDA's `testAzQueueMetadata` (azure_queue_scaler_test.go), rows adapted to ebb: KEDA's
    /// `podIdentity: azure-workload` rows are ebb's `accountName` without a connection, and
    /// KEDA's resolved `connectionFromEnv` arrives as a value.
    #[test]
    fn parse_table() {
        type Row<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
        let cases: &[Row<'_>] = &[
            ("keda: nothing passed", &[], Some("queueName")),
            (
                "keda: properly formed",
                &[("connectionFromEnv", CS), ("queueName", "sample"), ("queueLength", "5")],
                None,
            ),
            ("keda: empty queueName", &[("connectionFromEnv", CS), ("queueName", "")], Some("queueName")),
            (
                "keda: improperly formed queueLength",
                &[("connectionFromEnv", CS), ("queueName", "sample"), ("queueLength", "AA")],
                Some("queueLength"),
            ),
            (
                "keda: improperly formed activationQueueLength",
                &[
                    ("connectionFromEnv", CS),
                    ("queueName", "sample"),
                    ("queueLength", "1"),
                    ("activationQueueLength", "AA"),
                ],
                Some("activationQueueLength"),
            ),
            (
                "keda: azure-workload with account name",
                &[("accountName", "sample_acc"), ("queueName", "sample_queue")],
                None,
            ),
            (
                "keda: azure-workload without account name (no connection either)",
                &[("accountName", ""), ("queueName", "sample_queue")],
                Some("connection"),
            ),
            (
                "keda: azure-workload without queue name",
                &[("accountName", "sample_acc"), ("queueName", "")],
                Some("queueName"),
            ),
            (
                "keda: azure-workload with cloud",
                &[("accountName", "sample_acc"), ("queueName", "q"), ("cloud", "AzurePublicCloud")],
                None,
            ),
            (
                "keda: azure-workload with invalid cloud",
                &[("accountName", "sample_acc"), ("queueName", "q"), ("cloud", "InvalidCloud")],
                Some("cloud"),
            ),
            (
                "keda: private cloud and endpoint suffix",
                &[
                    ("accountName", "a"),
                    ("queueName", "q"),
                    ("cloud", "Private"),
                    ("endpointSuffix", "queue.core.private.cloud"),
                ],
                None,
            ),
            (
                "keda: private cloud and no endpoint suffix",
                &[("accountName", "a"), ("queueName", "q"), ("cloud", "Private"), ("endpointSuffix", "")],
                Some("endpointSuffix"),
            ),
            (
                "keda: endpoint suffix and no cloud (ignored)",
                &[("accountName", "a"), ("queueName", "q"), ("cloud", ""), ("endpointSuffix", "ignored")],
                None,
            ),
            ("keda: connection (authParams → metadata)", &[("queueName", "sample"), ("connection", CS)], None),
            (
                "keda: queueLengthStrategy all",
                &[("connection", CS), ("queueName", "s"), ("queueLengthStrategy", "all")],
                None,
            ),
            (
                "keda: queueLengthStrategy visibleonly",
                &[("connection", CS), ("queueName", "s"), ("queueLengthStrategy", "visibleonly")],
                None,
            ),
            (
                "keda: invalid queueLengthStrategy",
                &[("connection", CS), ("queueName", "s"), ("queueLengthStrategy", "invalid")],
                Some("queueLengthStrategy"),
            ),
            // ebb rules.
            (
                "ebb: queueLength 0 (HPA needs > 0)",
                &[("connection", CS), ("queueName", "s"), ("queueLength", "0")],
                Some("queueLength"),
            ),
            (
                "ebb: queueLength float (KEDA: int64)",
                &[("connection", CS), ("queueName", "s"), ("queueLength", "2.5")],
                Some("queueLength"),
            ),
            ("ebb: connectionRef", &[("connectionRef", "storage"), ("queueName", "s")], None),
            ("ebb: connectionRef with a path", &[("connectionRef", "../x"), ("queueName", "s")], Some("connectionRef")),
            ("ebb: bad connection string", &[("connection", "AccountName=a"), ("queueName", "s")], Some("connection")),
            (
                "ebb: bad account key",
                &[("connection", "AccountName=a;AccountKey=!!notbase64"), ("queueName", "s")],
                Some("connection"),
            ),
            ("ebb: accountName not a host", &[("accountName", "a b/c"), ("queueName", "s")], Some("accountName")),
        ];
        for (name, pairs, want) in cases {
            match (parse_md(pairs), want) {
                (Ok(_), None) => {}
                (Err(e), Some(key)) => assert!(e.keys().contains(key), "{name}: wanted {key}, got {e}"),
                (Ok(s), Some(key)) => panic!("{name}: wanted an error on {key}, parsed {s:?}"),
                (Err(e), None) => panic!("{name}: unexpected error {e}"),
            }
        }
    }

    #[test]
    fn defaults_and_evaluation() {
        let s = parse_md(&[("connection", CS), ("queueName", "orders")]).unwrap();
        assert_eq!(s.target(), 5.0);
        assert_eq!(s.strategy, Strategy::All);
        assert_eq!(s.poll_timeout(), DEFAULT_TIMEOUT);
        assert_eq!(s.evaluate(&Measurement::Value(0.0)), Evaluation { metric: 0.0, active: false });
        assert_eq!(s.evaluate(&Measurement::Value(1.0)), Evaluation { metric: 1.0, active: true });
        let s =
            parse_md(&[("connection", CS), ("queueName", "o"), ("activationQueueLength", "7"), ("queueLength", "3")])
                .unwrap();
        assert_eq!(s.target(), 3.0);
        assert!(!s.evaluate(&Measurement::Value(7.0)).active, "strictly greater than activationQueueLength");
        assert!(s.evaluate(&Measurement::Value(8.0)).active);
        let s = parse_md(&[("connection", CS), ("queueName", "o"), ("queueLengthStrategy", "VisibleOnly")]).unwrap();
        assert_eq!(s.strategy, Strategy::VisibleOnly);
    }

    #[test]
    fn errors_never_echo_secrets() {
        let secret = "AccountName=a;AccountKey=c2VjcmV0LXNlY3JldA==;Bogus";
        let e = parse_md(&[("connection", secret), ("queueName", "q")]).unwrap_err();
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        let e = parse_md(&[("connection", "AccountName=a;AccountKey=%%secret%%"), ("queueName", "q")]).unwrap_err();
        assert!(!e.to_string().contains("secret%%"), "{e}");
        let s = parse_md(&[("connection", CS), ("queueName", "q")]).unwrap();
        assert!(!format!("{s:?}").contains("a2V5"));
    }

    #[test]
    fn connection_strings() {
        let c = ConnectionString::parse(CS).unwrap();
        assert_eq!(c.queue_endpoint.as_str(), "https://acct.queue.core.windows.net/");
        assert_eq!(c.queue_url("orders").as_str(), "https://acct.queue.core.windows.net/orders");
        assert!(
            matches!(&c.credential, ConnectionCredential::Key { account, key } if account == "acct" && key.0 == b"key")
        );

        let c = ConnectionString::parse(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;",
        )
        .unwrap();
        assert_eq!(c.queue_url("q").as_str(), "http://127.0.0.1:10001/devstoreaccount1/q");

        let c = ConnectionString::parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!(c.queue_url("q").as_str(), "http://127.0.0.1:10001/devstoreaccount1/q");
        assert!(matches!(&c.credential, ConnectionCredential::Key { account, .. } if account == DEV_ACCOUNT));

        let c = ConnectionString::parse(
            "accountname=acct;endpointsuffix=core.chinacloudapi.cn;SharedAccessSignature=?sv=1&sig=abc",
        )
        .unwrap();
        assert_eq!(c.queue_url("q").as_str(), "https://acct.queue.core.chinacloudapi.cn/q");
        assert_eq!(c.credential, ConnectionCredential::Sas(SasToken("sv=1&sig=abc".into())));

        let c = ConnectionString::parse("QueueEndpoint=https://x.example/;SharedAccessSignature=sv=1&sig=a=b").unwrap();
        assert_eq!(c.queue_url("q").as_str(), "https://x.example/q");
        assert_eq!(c.credential, ConnectionCredential::Sas(SasToken("sv=1&sig=a=b".into())));

        for bad in [
            "",
            "AccountName=a",
            "AccountKey=a2V5",
            "SharedAccessSignature=sv=1",
            "AccountName=a;AccountKey=***",
            "DefaultEndpointsProtocol=ftp;AccountName=a;AccountKey=a2V5",
            "QueueEndpoint=not a url;AccountKey=a2V5;AccountName=a",
            "garbage",
        ] {
            assert!(ConnectionString::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn iso8601_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    /// Vector derived with openssl from the string to sign documented for queue service SAS:
    /// `printf 'r\n\n2030-01-01T00:00:00Z\n/queue/devstoreaccount1/orders\n\n\n\n2021-12-02' |
    ///  openssl dgst -sha256 -mac HMAC -macopt hexkey:$(echo -n $DEV_KEY | base64 -d | xxd -p -c 256) -binary | base64`
    #[test]
    fn service_sas_vector_and_shape() {
        let key = AccountKey::from_base64(DEV_KEY).unwrap();
        let sas = queue_service_sas(DEV_ACCOUNT, &key, "orders", "r", 1_893_456_000);
        let pairs: HashMap<String, String> = url::form_urlencoded::parse(sas.as_bytes()).into_owned().collect();
        assert_eq!(pairs["sv"], SAS_VERSION);
        assert_eq!(pairs["se"], "2030-01-01T00:00:00Z");
        assert_eq!(pairs["sp"], "r");
        assert_eq!(pairs["sig"], SAS_VECTOR);
        assert_eq!(pairs.len(), 4);
    }
    const SAS_VECTOR: &str = "zMgx4l2QA364gFOivqzEP4f9O4NEQnOC6+5Nk8c2wYk=";

    /// A loopback server answering every request with `answer` (or never, when `None`).
    async fn canned(answer: Option<&'static str>) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    match answer {
                        Some(a) => {
                            let _ = sock.write_all(a.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(10)).await,
                    }
                });
            }
        });
        port
    }

    async fn poll_against(port: u16) -> Result<Measurement, PollError> {
        let cs = format!(
            "AccountName=devstoreaccount1;AccountKey={DEV_KEY};QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1"
        );
        let s = parse_md(&[("connection", &cs), ("queueName", "q")]).unwrap();
        s.poller().unwrap().poll().await
    }

    #[tokio::test]
    async fn throttling_and_timeouts_are_typed() {
        for (status, reason) in [(503, "Service Unavailable"), (429, "Too Many Requests")] {
            let answer: &'static str = Box::leak(
                format!("HTTP/1.1 {status} {reason}\r\nx-ms-error-code: ServerBusy\r\ncontent-length: 0\r\n\r\n")
                    .into_boxed_str(),
            );
            let e = poll_against(canned(Some(answer)).await).await.unwrap_err();
            assert!(e.is_throttling(), "{status}: {e:?}");
            assert!(!e.to_string().contains("sig="), "{e}");
        }
        let t0 = Instant::now();
        let e = poll_against(canned(None).await).await.unwrap_err();
        assert_eq!(e, PollError::Timeout(DEFAULT_TIMEOUT));
        assert!(t0.elapsed() < DEFAULT_TIMEOUT + Duration::from_secs(1));
    }

    /// The connection string (hence the host) is the caller's, so an answer may be any internal
    /// page. The SDK's error `Display` is the whole body: no error may show it, nor a value
    /// parsed out of the answer; only the status, Storage's error code, the type and the size.
    #[tokio::test]
    async fn poll_errors_never_quote_the_answer() {
        const M: &str = "LEAKED-BODY-MARKER";
        fn answer(status: &str, headers: &str, ct: &str, body: &str) -> &'static str {
            let len = body.len();
            let raw =
                format!("HTTP/1.1 {status}\r\n{headers}content-type: {ct}\r\ncontent-length: {len}\r\n\r\n{body}");
            Box::leak(raw.into_boxed_str())
        }
        const HTML: &str = "<html><body>LEAKED-BODY-MARKER internal admin</body></html>";
        const XML_ERROR: &str = r#"<?xml version="1.0" encoding="utf-8"?><Error><Code>QueueNotFound</Code><Message>LEAKED-BODY-MARKER</Message></Error>"#;
        let cases: &[(&str, &'static str, &str, &str, &[&str])] = &[
            (
                "500 html",
                answer("500 Internal Server Error", "", "text/html", HTML),
                "all",
                "http",
                &["text/html, 59 bytes"],
            ),
            (
                "403 storage error with header",
                answer("403 Forbidden", "x-ms-error-code: AuthenticationFailed\r\n", "application/xml", XML_ERROR),
                "all",
                "auth",
                &["HTTP 403", "error code AuthenticationFailed (application/xml"],
            ),
            (
                "404 storage XML error",
                answer("404 Not Found", "", "application/xml", XML_ERROR),
                "all",
                "not_found",
                &["error code QueueNotFound (application/xml"],
            ),
            (
                "400 JSON error whose code is not one",
                answer(
                    "400 Bad Request",
                    "",
                    "application/json",
                    r#"{"error":{"code":"LEAKED-BODY-MARKER","message":"x"}}"#,
                ),
                "all",
                "http",
                &["HTTP 400", "application/json, 53 bytes"],
            ),
            (
                "503 with a bad x-ms-error-code",
                answer("503 Service Unavailable", "x-ms-error-code: LEAKED-BODY-MARKER\r\n", "text/html", HTML),
                "all",
                "throttled",
                &["HTTP 503", "text/html, 59 bytes"],
            ),
            (
                "200 count not a number",
                answer("200 OK", "x-ms-approximate-messages-count: LEAKED-BODY-MARKER\r\n", "text/plain", ""),
                "all",
                "malformed",
                &["x-ms-approximate-messages-count is not an integer"],
            ),
            (
                "200 peek answer not XML",
                answer("200 OK", "", "text/html", "<html><LEAKED-BODY-MARKER>internal admin</html>"),
                "visibleonly",
                "malformed",
                &["not a message list (text/html, 47 bytes)"],
            ),
            (
                "200 peek answer of the wrong shape",
                answer(
                    "200 OK",
                    "",
                    "application/xml",
                    "<QueueMessagesList><QueueMessage><DequeueCount>LEAKED-BODY-MARKER</DequeueCount></QueueMessage></QueueMessagesList>",
                ),
                "visibleonly",
                "malformed",
                &["not a message list (application/xml"],
            ),
        ];
        for (name, raw, strategy, kind, wants) in cases {
            let port = canned(Some(raw)).await;
            let cs = format!(
                "AccountName=devstoreaccount1;AccountKey={DEV_KEY};QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1"
            );
            let s = parse_md(&[("connection", &cs), ("queueName", "q"), ("queueLengthStrategy", strategy)]).unwrap();
            let e = s.poller().unwrap().poll().await.unwrap_err();
            let text = e.to_string();
            assert_eq!(e.kind(), *kind, "{name}: {text}");
            assert!(!text.contains(M) && !text.contains("internal admin") && !text.contains("sig="), "{name}: {text}");
            for want in *wants {
                assert!(text.contains(want), "{name}: {text:?} lacks {want:?}");
            }
        }
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact("error sending request for url (http://h/q?sv=1&sig=ab%2Bc&se=2)"),
            "error sending request for url (http://h/q?sv=1&sig=REDACTED&se=2)"
        );
        assert_eq!(redact("SIG=x y"), "SIG=REDACTED y");
    }

    #[test]
    fn source_keys() {
        let a = parse_md(&[("connection", CS), ("queueName", "orders"), ("queueLength", "3")]).unwrap();
        let b =
            parse_md(&[("connectionFromEnv", CS), ("queueName", "orders"), ("activationQueueLength", "9")]).unwrap();
        assert_eq!(a.source_key(), b.source_key(), "thresholds are not part of the key");
        let k = &a.source_key().0;
        assert!(k.starts_with("azure-queue|https://acct.queue.core.windows.net/|orders|all|value:"), "{k}");
        assert!(!k.contains("a2V5"));
        let v =
            parse_md(&[("connection", CS), ("queueName", "orders"), ("queueLengthStrategy", "visibleonly")]).unwrap();
        assert_ne!(a.source_key(), v.source_key());
        let other = parse_md(&[("connection", &CS.replace("a2V5", "a2V6")), ("queueName", "orders")]).unwrap();
        assert_ne!(a.source_key(), other.source_key(), "a different key is a different credential");
        let id = parse_md(&[("accountName", "acct"), ("queueName", "orders")]).unwrap();
        assert_eq!(id.source_key().0, "azure-queue|https://acct.queue.core.windows.net|orders|all|identity");
        assert_eq!(id.access, Access::Identity(Url::parse("https://acct.queue.core.windows.net/orders").unwrap()));
        let gov =
            parse_md(&[("accountName", "acct"), ("queueName", "o"), ("cloud", "AzureUSGovernmentCloud")]).unwrap();
        assert!(gov.source_key().0.contains("https://acct.queue.core.usgovcloudapi.net|"), "{}", gov.source_key());
        let private = parse_md(&[
            ("accountName", "acct"),
            ("queueName", "o"),
            ("cloud", "Private"),
            ("endpointSuffix", "queue.azs.local"),
        ])
        .unwrap();
        assert!(private.source_key().0.contains("https://acct.queue.azs.local|"), "{}", private.source_key());
        let named = parse_md(&[("connectionRef", "storage"), ("queueName", "o")]).unwrap();
        assert_eq!(named.source_key().0, "azure-queue|ref:storage|o|all|ref:storage");
    }
}
