//! `azure-servicebus`: active messages of a queue or a topic subscription, at parity with KEDA's
//! built-in scaler (`pkg/scalers/azure_servicebus_scaler.go`, read at keda `066a1e7`).
//!
//! # Metadata
//!
//! Every key is read as `<key>`, then `<key>FromEnv` (see [`crate::metadata`]).
//!
//! | key | default | notes (and deviations from KEDA) |
//! |---|---|---|
//! | `queueName` | — | queue mode. Exclusive with `topicName` and with `subscriptionName` |
//! | `topicName`, `subscriptionName` | — | subscription mode; both required |
//! | `messageCount` | `5` | integer, HPA target. **Deviation:** ebb rejects `<= 0` (the HPA cannot use it) |
//! | `activationMessageCount` | `0` | integer; active when `count > activationMessageCount` |
//! | `useRegex` | `false` | `queueName` (queue mode) or `subscriptionName` (topic mode) is a regular expression that must match the *whole* entity name (KEDA: leftmost-longest `FindString(name) == name`; ebb anchors `^(?:re)$`, which accepts the same names). The namespace's queues, or the topic's subscriptions, are listed at every poll, 100 per page. No match ⇒ `0` |
//! | `operation` | `sum` | `sum`, `max` or `avg` (integer division) over the matched entities. Only used with `useRegex` |
//! | `connection` / `connectionFromEnv` / `connectionRef` | — | a connection string, or `connectionFromEnv` as KEDA delivers it, or `connectionRef: <secret name>` (a file in ebb's secrets directory, re-read at every poll; see [`crate::azure`]) |
//! | `namespace` | — | required without a connection: FQDN `<namespace>.<suffix>`, ebb's own Entra identity. Ignored when a connection is given (as in KEDA) |
//! | `cloud`, `endpointSuffix` | `AzurePublicCloud` | suffix of `namespace` (`servicebus.windows.net`, …); `Private` requires `endpointSuffix`. Only read with `namespace` |
//!
//! KEDA's per-request timeout (`KEDA_HTTP_DEFAULT_TIMEOUT`, 3 s) applies to every request; in
//! regex mode the whole poll (all pages) may take up to [`REGEX_POLL_TIMEOUT_FACTOR`] × 3 s.
//!
//! # Credentials
//!
//! - `Endpoint=sb://<host>/;SharedAccessKeyName=<name>;SharedAccessKey=<key>[;EntityPath=…]`:
//!   ebb signs a SAS token for `https://<host>/` (valid one hour, HMAC-SHA256 over the UTF-8
//!   bytes of the key, which is *not* base64-decoded) for every request.
//! - `Endpoint=sb://<host>/;SharedAccessSignature=SharedAccessSignature sr=…&sig=…&se=…&skn=…`:
//!   the token is sent as given (it cannot be renewed; an expired token gives 401).
//! - no connection: `Authorization: Bearer` from ebb's workload or managed identity
//!   ([`crate::azure::identity`]), scope `https://servicebus.azure.net/.default`.
//!
//! Reading runtime counts is a management operation: the SAS policy needs the **Manage** claim,
//! an Entra identity the role *Azure Service Bus Data Owner*. `EntityPath` is accepted and
//! ignored, as KEDA's admin client ignores it.
//!
//! **Endpoint scheme.** The host of `Endpoint=` is used as written (port included). Requests go
//! over `https`, except when that host is a loopback address (`127.0.0.0/8`, `[::1]`,
//! `localhost`), where they go over plain `http`. That is what the tests' wire double uses
//! (`Endpoint=sb://127.0.0.1:<port>/`); no real namespace is ever on loopback.
//!
//! # Requests and answers
//!
//! The Service Bus management REST API (ATOM XML), as KEDA's `azservicebus/admin` client calls
//! it: `GET /{queue}?api-version=2021-05`, `GET /{topic}/Subscriptions/{sub}?api-version=2021-05`,
//! and in regex mode `GET /$Resources/Queues?…&$skip=N&$top=100` or
//! `GET /{topic}/Subscriptions?…&$skip=N&$top=100`, until a page has fewer than 100 entries and
//! no `<link rel="next">`. The metric is `CountDetails/ActiveMessageCount` only (scheduled,
//! dead-lettered and transfer messages are excluded, as in KEDA). Namespace prefixes vary
//! (`d2p1:ActiveMessageCount`) and are ignored.
//!
//! | answer | poll error |
//! |---|---|
//! | an entry without `CountDetails` | `Throttled` (KEDA: "no CountDetails element"; Service Bus answers so when it throttles) |
//! | HTTP 429 / 503 | `Throttled`, with `Retry-After` |
//! | HTTP 401 / 403 | `Auth` (Service Bus's numeric `<Code>`, the media type and size; never the `<Detail>` text, the key or signature) |
//! | HTTP 404, or an empty feed for a single entity (Service Bus's answer for an unknown entity) | `NotFound`, naming the entity |
//!
//! # Source key
//!
//! `azure-servicebus|<host>|<entity>|<operation>|<credential label>`: the host is the
//! connection string's endpoint host, the FQDN from `namespace`, or `ref:<name>` for a
//! `connectionRef` (whose host is only known when the secret is read); the entity is
//! `queue:<name>` or `topic:<t>/subscription:<s>` (`queue~<regex>`, `topic:<t>/subscription~<regex>`
//! in regex mode); the operation is `single` outside regex mode; the credential label is a salted
//! fingerprint of the connection string, `ref:<name>` or `identity`. Thresholds are not part of
//! it.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential};
use hmac::{Hmac, Mac};
use quick_xml::events::Event;
use regex::Regex;
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};
use sha2::Sha256;

use crate::azure::{Cloud, SecretSource, Service};
use crate::metadata::collect;
use crate::trust::{AzureService, Held, IdentityUse};
use crate::{
    ConfigError, ConfigErrors, Evaluation, Measurement, Metadata, PollError, Poller, Scaler, SourceKey, excerpt,
};

/// The trigger type name.
pub const SCALER_TYPE: &str = "azure-servicebus";

/// KEDA's `KEDA_HTTP_DEFAULT_TIMEOUT` default, per request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(3000);

/// In regex mode a poll lists pages; all of them together may take this many request timeouts.
pub const REGEX_POLL_TIMEOUT_FACTOR: u32 = 4;

/// KEDA's `messageCount` default.
const DEFAULT_MESSAGE_COUNT: i64 = 5;

/// The management API version KEDA's admin client sends.
const API_VERSION: &str = "2021-05";

/// Entities per listing page (`$top`).
const PAGE_SIZE: usize = 100;

/// At most this many pages per poll (100,000 entities), so a misbehaving server cannot loop us.
const MAX_PAGES: usize = 1000;

/// Lifetime of the SAS tokens ebb signs.
const SAS_LIFETIME: Duration = Duration::from_secs(3600);

/// Entra scope of the Service Bus data and management plane.
pub const ENTRA_SCOPE: &str = "https://servicebus.azure.net/.default";

/// A token is renewed when it expires within this margin.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// Largest answer read (a page of 100 entries is about 200 KiB).
const MAX_BODY: usize = 8 << 20;

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// What is counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entity {
    Queue(String),
    Subscription { topic: String, subscription: String },
}

/// How regex matches are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Sum,
    Max,
    Avg,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Sum => "sum",
            Operation::Max => "max",
            Operation::Avg => "avg",
        }
    }

    /// KEDA's `performOperation`: sum, max (of non-negative counts, 0 when none), or the sum
    /// divided by the number of matches, as an integer.
    pub fn apply(self, counts: &[i64]) -> i64 {
        match self {
            Operation::Sum => counts.iter().sum(),
            Operation::Max => counts.iter().copied().fold(0, i64::max),
            Operation::Avg if counts.is_empty() => 0,
            Operation::Avg => counts.iter().sum::<i64>() / counts.len() as i64,
        }
    }
}

/// Where the credentials come from.
#[derive(Debug, Clone)]
enum Auth {
    /// A connection string: parsed now when it arrived as a value, at every poll when named.
    Connection { source: SecretSource, parsed: Option<ConnectionString> },
    /// ebb's Entra identity against `<namespace>.<suffix>`; `host_key` chose the host.
    Identity { host: String, host_key: &'static str },
}

/// A parsed `azure-servicebus` trigger. `Debug` never shows a secret.
#[derive(Debug)]
pub struct ServiceBusScaler {
    entity: Entity,
    /// Anchored regex on the queue or subscription name, in regex mode.
    regex: Option<Regex>,
    operation: Operation,
    message_count: i64,
    activation_message_count: i64,
    auth: Auth,
    timeout: Duration,
    source_key: SourceKey,
}

/// Parses an `azure-servicebus` trigger. Pure and cheap: no client is built here.
pub fn parse(md: &Metadata<'_>) -> Result<Arc<dyn Scaler>, ConfigErrors> {
    Ok(Arc::new(parse_config(md)?))
}

fn parse_config(md: &Metadata<'_>) -> Result<ServiceBusScaler, ConfigErrors> {
    let mut errs = ConfigErrors::default();

    let use_regex = collect(&mut errs, md.bool("useRegex")).flatten().unwrap_or(false);
    let entity = collect(&mut errs, entity(md));
    let regex = match (&entity, use_regex) {
        (Some(Entity::Queue(q)), true) => collect(&mut errs, full_match_regex("queueName", q)),
        (Some(Entity::Subscription { subscription, .. }), true) => {
            collect(&mut errs, full_match_regex("subscriptionName", subscription))
        }
        _ => None,
    };
    let operation = match collect(&mut errs, md.one_of("operation", &["sum", "max", "avg"])).flatten() {
        Some("max") => Operation::Max,
        Some("avg") => Operation::Avg,
        _ => Operation::Sum,
    };
    let message_count = collect(&mut errs, md.i64("messageCount")).flatten().unwrap_or(DEFAULT_MESSAGE_COUNT);
    if message_count <= 0 {
        errs.push(ConfigError::new(
            "messageCount",
            format!("must be greater than 0 (got {message_count}); the HPA cannot use a target of 0 or less"),
        ));
    }
    let activation_message_count = collect(&mut errs, md.i64("activationMessageCount")).flatten().unwrap_or(0);
    let auth = collect(&mut errs, auth(md));

    let (Some(entity), Some(auth), true) = (entity, auth, errs.0.is_empty()) else {
        return Err(errs);
    };

    let host_label = match &auth {
        Auth::Connection { parsed: Some(cs), .. } => cs.host.clone(),
        Auth::Connection { source, .. } => source.label(),
        Auth::Identity { host, .. } => host.clone(),
    };
    let credential_label = match &auth {
        Auth::Connection { source, .. } => source.label(),
        Auth::Identity { .. } => "identity".to_owned(),
    };
    let sep = if regex.is_some() { '~' } else { ':' };
    let entity_label = match &entity {
        Entity::Queue(q) => format!("queue{sep}{q}"),
        Entity::Subscription { topic, subscription } => format!("topic:{topic}/subscription{sep}{subscription}"),
    };
    let operation_label = if regex.is_some() { operation.name() } else { "single" };
    let source_key =
        SourceKey(format!("{SCALER_TYPE}|{host_label}|{entity_label}|{operation_label}|{credential_label}"));

    Ok(ServiceBusScaler {
        entity,
        regex,
        operation,
        message_count,
        activation_message_count,
        auth,
        timeout: DEFAULT_TIMEOUT,
        source_key,
    })
}

/// `queueName` XOR `topicName` + `subscriptionName` (KEDA's `Validate`).
fn entity(md: &Metadata<'_>) -> Result<Entity, ConfigError> {
    let queue = md.get("queueName");
    let topic = md.get("topicName");
    let subscription = md.get("subscriptionName");
    match (queue, topic, subscription) {
        (Some(_), _, Some(_)) => Err(ConfigError::new("subscriptionName", "cannot be combined with queueName")),
        (Some(_), Some(_), None) => Err(ConfigError::new("topicName", "cannot be combined with queueName")),
        (Some(q), None, None) => Ok(Entity::Queue(q.to_owned())),
        (None, Some(_), None) => Err(ConfigError::new("subscriptionName", "is required with topicName")),
        (None, Some(t), Some(s)) => Ok(Entity::Subscription { topic: t.to_owned(), subscription: s.to_owned() }),
        (None, None, Some(_)) => Err(ConfigError::new("topicName", "is required with subscriptionName")),
        (None, None, None) => {
            Err(ConfigError::new("queueName", "required key is missing (or set topicName and subscriptionName)"))
        }
    }
}

/// `re` must match whole names: checked as written, then anchored.
fn full_match_regex(key: &str, re: &str) -> Result<Regex, ConfigError> {
    Regex::new(re).map_err(|e| {
        ConfigError::new(key, format!("is not a valid regular expression: {}", excerpt(&e.to_string())))
    })?;
    Regex::new(&format!("^(?:{re})$"))
        .map_err(|e| ConfigError::new(key, format!("is not a valid regular expression: {}", excerpt(&e.to_string()))))
}

/// The connection (as a value or a named secret), else `namespace` for ebb's identity.
fn auth(md: &Metadata<'_>) -> Result<Auth, ConfigError> {
    if let Some(source) = SecretSource::from_metadata(md, "connection")? {
        let parsed = match &source {
            SecretSource::Value(v) => {
                let key = if md.raw().get("connection").is_some_and(|v| !v.trim().is_empty()) {
                    "connection"
                } else {
                    "connectionFromEnv"
                };
                Some(ConnectionString::parse(v).map_err(|reason| ConfigError::new(key, reason))?)
            }
            SecretSource::Named(_) => None,
        };
        return Ok(Auth::Connection { source, parsed });
    }
    let Some(namespace) = md.get("namespace") else {
        return Err(ConfigError::new(
            "connection",
            "required key is missing: set connection, connectionFromEnv or connectionRef, \
             or namespace to use ebb's Entra identity",
        ));
    };
    if !namespace.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')) {
        return Err(ConfigError::new("namespace", format!("{namespace:?} is not a Service Bus namespace name")));
    }
    let cloud = Cloud::parse(md)?;
    let suffix = cloud.suffix(md, Service::ServiceBus, "endpointSuffix")?;
    let host_key = if cloud == Cloud::Private { "endpointSuffix" } else { "namespace" };
    Ok(Auth::Identity { host: format!("{namespace}.{suffix}"), host_key })
}

// ---------------------------------------------------------------------------------------------
// Connection strings and SAS
// ---------------------------------------------------------------------------------------------

/// A secret string; `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How a connection string authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SasCredential {
    /// A shared access key: ebb signs tokens.
    Key { name: String, key: Secret },
    /// A ready token (`SharedAccessSignature sr=…`), sent as is.
    Token(Secret),
}

/// A parsed Service Bus connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnectionString {
    /// `host[:port]` of `Endpoint=`.
    pub(crate) host: String,
    pub(crate) credential: SasCredential,
    pub(crate) entity_path: Option<String>,
}

impl ConnectionString {
    /// Parses `k=v;k=v` (keys case-insensitive, values may contain `=`). The reason never
    /// carries a value.
    pub(crate) fn parse(s: &str) -> Result<ConnectionString, String> {
        let (mut endpoint, mut key_name, mut key, mut sas, mut entity_path) = (None, None, None, None, None);
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err("is not a Service Bus connection string (expected key=value pairs separated by ';')".into());
            };
            let v = v.trim().to_owned();
            match k.trim().to_ascii_lowercase().as_str() {
                "endpoint" => endpoint = Some(v),
                "sharedaccesskeyname" => key_name = Some(v),
                "sharedaccesskey" => key = Some(v),
                "sharedaccesssignature" => sas = Some(v),
                "entitypath" => entity_path = Some(v),
                _ => {} // e.g. UseDevelopmentEmulator, TransportType: not used by management reads
            }
        }
        let endpoint = endpoint.ok_or("connection string has no Endpoint")?;
        let host = endpoint_host(&endpoint).ok_or("connection string Endpoint is not of the form sb://<host>/")?;
        let credential = match (key_name, key, sas) {
            (_, _, Some(token)) => {
                if !token.starts_with("SharedAccessSignature ") || HeaderValue::from_str(&token).is_err() {
                    return Err(
                        "connection string SharedAccessSignature is not a SAS token (SharedAccessSignature sr=…)"
                            .into(),
                    );
                }
                SasCredential::Token(Secret(token))
            }
            (Some(name), Some(key), None) if !name.is_empty() && !key.is_empty() => {
                SasCredential::Key { name, key: Secret(key) }
            }
            _ => {
                return Err("connection string needs SharedAccessKeyName and SharedAccessKey, \
                            or SharedAccessSignature"
                    .into());
            }
        };
        Ok(ConnectionString { host, credential, entity_path })
    }
}

/// `host[:port]` of `sb://host[:port]/…` (any scheme is accepted and dropped).
pub(crate) fn endpoint_host(endpoint: &str) -> Option<String> {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or_default();
    let ok =
        !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']'));
    ok.then(|| host.to_ascii_lowercase())
}

/// `http` for a loopback host (the tests' wire double), else `https`.
pub(crate) fn scheme_for(host: &str) -> &'static str {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).map_or(host, |(h, _)| h)
    };
    let loopback = name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback { "http" } else { "https" }
}

/// `application/x-www-form-urlencoded` escaping, as SAS tokens use.
pub(crate) fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A SAS token for `uri`, valid until `expiry` (Unix seconds): HMAC-SHA256 with the key's
/// UTF-8 bytes over `urlenc(uri) + "\n" + expiry`.
pub(crate) fn sas_token(uri: &str, key_name: &str, key: &str, expiry: u64) -> String {
    let sr = form_encode(uri);
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("{sr}\n{expiry}").as_bytes());
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("SharedAccessSignature sr={sr}&sig={}&se={expiry}&skn={}", form_encode(&sig), form_encode(key_name))
}

/// Percent-encodes an entity path (queue names may hold `/`, which is kept).
pub(crate) fn path_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Scaler
// ---------------------------------------------------------------------------------------------

impl Scaler for ServiceBusScaler {
    fn scaler_type(&self) -> &'static str {
        SCALER_TYPE
    }

    fn source_key(&self) -> &SourceKey {
        &self.source_key
    }

    fn target(&self) -> f64 {
        self.message_count as f64
    }

    fn poll_timeout(&self) -> Duration {
        if self.regex.is_some() { self.timeout * REGEX_POLL_TIMEOUT_FACTOR } else { self.timeout }
    }

    fn evaluate(&self, m: &Measurement) -> Evaluation {
        let v = m.scalar();
        Evaluation { metric: v, active: v > self.activation_message_count as f64 }
    }

    fn poller(&self) -> Result<Arc<dyn Poller>, ConfigErrors> {
        Ok(Arc::new(self.build_poller(None)?))
    }

    fn held(&self) -> Vec<Held> {
        match &self.auth {
            Auth::Identity { host, host_key } => vec![Held::Identity(IdentityUse {
                service: AzureService::ServiceBus,
                url: format!("https://{host}/"),
                // A regex reads (and sums) every entity it matches: only an "any entity" grant
                // covers it.
                entity: match (&self.entity, &self.regex) {
                    (_, Some(_)) => "*".to_owned(),
                    (Entity::Queue(q), None) => q.clone(),
                    (Entity::Subscription { topic, subscription }, None) => format!("{topic}/{subscription}"),
                },
                audience: ENTRA_SCOPE.to_owned(),
                host_key,
                audience_key: None,
            })],
            Auth::Connection { source: SecretSource::Named(name), .. } => {
                vec![Held::NamedSecret { name: name.clone(), key: "connectionRef".to_owned() }]
            }
            Auth::Connection { .. } => Vec::new(),
        }
    }
}

impl ServiceBusScaler {
    /// `credential` replaces ebb's own Entra identity (tests inject a fake).
    fn build_poller(&self, credential: Option<Arc<dyn TokenCredential>>) -> Result<ServiceBusPoller, ConfigErrors> {
        Ok(ServiceBusPoller {
            client: shared_client()?,
            entity: self.entity.clone(),
            regex: self.regex.clone(),
            operation: self.operation,
            auth: self.auth.clone(),
            token: tokio::sync::Mutex::new(None),
            credential,
            timeout: self.timeout,
            poll_timeout: self.poll_timeout(),
        })
    }
}

/// One HTTP client for every Service Bus source (default TLS settings), dropped with the last
/// poller.
pub(crate) fn shared_client() -> Result<Arc<reqwest::Client>, ConfigErrors> {
    static CLIENT: Mutex<Weak<reqwest::Client>> = Mutex::new(Weak::new());
    let mut slot = CLIENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = slot.upgrade() {
        return Ok(c);
    }
    let client = reqwest::Client::builder()
        .build()
        .map_err(|e| ConfigError::new("connection", format!("cannot build the HTTP client: {e}")))?;
    let client = Arc::new(client);
    *slot = Arc::downgrade(&client);
    Ok(client)
}

// ---------------------------------------------------------------------------------------------
// Poller
// ---------------------------------------------------------------------------------------------

/// Polls one queue, subscription or regex over them.
struct ServiceBusPoller {
    client: Arc<reqwest::Client>,
    entity: Entity,
    regex: Option<Regex>,
    operation: Operation,
    auth: Auth,
    /// Cached Entra token (identity mode).
    token: tokio::sync::Mutex<Option<AccessToken>>,
    /// Injected credential (tests); `None` means ebb's own identity.
    credential: Option<Arc<dyn TokenCredential>>,
    timeout: Duration,
    poll_timeout: Duration,
}

/// Where and how one poll sends its requests.
struct Target {
    /// `scheme://host`.
    base: String,
    authorization: HeaderValue,
    /// Strings an error message must never contain.
    secrets: Vec<String>,
}

#[async_trait::async_trait]
impl Poller for ServiceBusPoller {
    async fn poll(&self) -> Result<Measurement, PollError> {
        match tokio::time::timeout(self.poll_timeout, self.count()).await {
            Ok(r) => r.map(|n| Measurement::Value(n as f64)),
            Err(_) => Err(PollError::Timeout(self.poll_timeout)),
        }
    }
}

impl ServiceBusPoller {
    async fn count(&self) -> Result<i64, PollError> {
        let target = self.target().await?;
        let result = match (&self.entity, &self.regex) {
            (Entity::Queue(q), None) => {
                let url = format!("{}/{}?api-version={API_VERSION}", target.base, path_encode(q));
                self.single(&target, &url, &format!("queue {q:?}")).await
            }
            (Entity::Subscription { topic, subscription }, None) => {
                let url = format!(
                    "{}/{}/Subscriptions/{}?api-version={API_VERSION}",
                    target.base,
                    path_encode(topic),
                    path_encode(subscription)
                );
                self.single(&target, &url, &format!("subscription {subscription:?} of topic {topic:?}")).await
            }
            (Entity::Queue(_), Some(re)) => {
                let url = format!("{}/$Resources/Queues?api-version={API_VERSION}", target.base);
                self.listing(&target, &url, re, "queues").await
            }
            (Entity::Subscription { topic, .. }, Some(re)) => {
                let url = format!("{}/{}/Subscriptions?api-version={API_VERSION}", target.base, path_encode(topic));
                self.listing(&target, &url, re, &format!("subscriptions of topic {topic:?}")).await
            }
        };
        if let (Err(PollError::Auth { .. }), Auth::Identity { .. }) = (&result, &self.auth) {
            *self.token.lock().await = None;
        }
        result
    }

    /// The base URL and the `Authorization` header for this poll.
    async fn target(&self) -> Result<Target, PollError> {
        match &self.auth {
            Auth::Connection { source, parsed } => {
                let cs = match parsed {
                    Some(cs) => Cow::Borrowed(cs),
                    None => {
                        let SecretSource::Named(name) = source else { unreachable!("values are parsed at parse time") };
                        let value = source.resolve()?;
                        Cow::Owned(
                            ConnectionString::parse(&value)
                                .map_err(|reason| PollError::Credential(format!("named secret {name:?}: {reason}")))?,
                        )
                    }
                };
                let scheme = scheme_for(&cs.host);
                let base = format!("{scheme}://{}", cs.host);
                let (token, secrets) = match &cs.credential {
                    SasCredential::Key { name, key } => {
                        let expiry = unix_now() + SAS_LIFETIME.as_secs();
                        let token = sas_token(&format!("{base}/"), name, &key.0, expiry);
                        let sig = token.split("&sig=").nth(1).and_then(|s| s.split('&').next()).unwrap_or_default();
                        let secrets = vec![key.0.clone(), sig.to_owned()];
                        (token, secrets)
                    }
                    SasCredential::Token(t) => (t.0.clone(), vec![t.0.clone()]),
                };
                let mut authorization = HeaderValue::from_str(&token)
                    .map_err(|_| PollError::Credential("the SAS token is not a valid HTTP header value".into()))?;
                authorization.set_sensitive(true);
                Ok(Target { base, authorization, secrets })
            }
            Auth::Identity { host, .. } => {
                let token = self.bearer().await?;
                let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| PollError::Credential("the token is not a valid HTTP header value".into()))?;
                authorization.set_sensitive(true);
                Ok(Target { base: format!("{}://{host}", scheme_for(host)), authorization, secrets: vec![token] })
            }
        }
    }

    /// An Entra token, reused until shortly before it expires.
    async fn bearer(&self) -> Result<String, PollError> {
        let mut cached = self.token.lock().await;
        let fresh_until = azure_core::time::OffsetDateTime::now_utc() + TOKEN_REFRESH_MARGIN;
        if let Some(t) = cached.as_ref().filter(|t| t.expires_on > fresh_until) {
            return Ok(t.token.secret().to_owned());
        }
        let credential = match &self.credential {
            Some(c) => c.clone(),
            None => {
                let Auth::Identity { host, .. } = &self.auth else {
                    return Err(PollError::Credential("no identity for a connection string".into()));
                };
                let target = url::Url::parse(&format!("https://{host}/"))
                    .map_err(|_| PollError::Credential("the namespace host is not a URL".into()))?;
                crate::azure::identity_for(&target)?
            }
        };
        let t = credential
            .get_token(&[ENTRA_SCOPE], None)
            .await
            .map_err(|e| PollError::Credential(format!("token for {ENTRA_SCOPE}: {e}")))?;
        Ok(cached.insert(t).token.secret().to_owned())
    }

    /// One queue or subscription.
    async fn single(&self, target: &Target, url: &str, what: &str) -> Result<i64, PollError> {
        let (body, content_type) = self.get(target, url, what).await?;
        let doc = parse_atom(&body)
            .map_err(|e| malformed_atom(SCALER_TYPE, what, &e, content_type.as_deref(), &body, &target.secrets))?;
        match doc.entries.as_slice() {
            // Service Bus answers a GET of an unknown entity with 200 and an empty feed.
            [] => Err(PollError::NotFound(format!("{what} does not exist"))),
            [entry] => entry.active_count(what),
            _ => Err(PollError::Malformed(format!("{what}: the answer holds {} entries", doc.entries.len()))),
        }
    }

    /// Every page of a listing; the matches combined by the operation.
    async fn listing(&self, target: &Target, url: &str, re: &Regex, what: &str) -> Result<i64, PollError> {
        let mut counts = Vec::new();
        let mut skip = 0;
        for _ in 0..MAX_PAGES {
            let page_url = format!("{url}&$skip={skip}&$top={PAGE_SIZE}");
            let (body, content_type) = self.get(target, &page_url, what).await?;
            let doc = parse_atom(&body)
                .map_err(|e| malformed_atom(SCALER_TYPE, what, &e, content_type.as_deref(), &body, &target.secrets))?;
            for (i, entry) in doc.entries.iter().enumerate() {
                // Like KEDA's admin client, any entry without counts fails the page. The entry
                // is named by its place: its title is a value of the answer (logged only).
                let n = entry.active_count(&format!("{what}: entry {} of the listing", skip + i + 1));
                let n = n.inspect_err(|_| {
                    tracing::debug!(scaler = SCALER_TYPE, title = %excerpt(&entry.title), "service bus entry unreadable")
                })?;
                if re.is_match(&entry.title) {
                    counts.push(n);
                }
            }
            if doc.entries.is_empty() || (doc.entries.len() < PAGE_SIZE && !doc.next) {
                return Ok(self.operation.apply(&counts));
            }
            skip += doc.entries.len();
        }
        Err(PollError::Rejected(format!("{what}: more than {MAX_PAGES} pages of {PAGE_SIZE}; narrow the namespace")))
    }

    /// A GET with the status mapped to a [`PollError`]; the body and its `Content-Type` on
    /// success.
    async fn get(&self, target: &Target, url: &str, what: &str) -> Result<(String, Option<String>), PollError> {
        let response = self
            .client
            .get(url)
            .timeout(self.timeout)
            .header(AUTHORIZATION, target.authorization.clone())
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = response.status();
        let retry_after = response.headers().get(RETRY_AFTER).and_then(retry_after);
        let content_type = content_type(response.headers());
        let body = read_body(response).await.map_err(|e| self.transport(e))?;
        if status.is_success() {
            return Ok((body, content_type));
        }
        let detail = error_detail(content_type.as_deref(), &body);
        tracing::debug!(
            scaler = SCALER_TYPE,
            status = status.as_u16(),
            detail = %excerpt(&scrub(&body, &target.secrets)),
            "service bus management api returned an error"
        );
        Err(match status.as_u16() {
            code @ (401 | 403) => PollError::Auth { status: code, detail },
            404 => PollError::NotFound(format!("{what}: {detail}")),
            code @ (429 | 503) => PollError::Throttled { detail: format!("HTTP {code}: {detail}"), retry_after },
            code => PollError::Http { status: code, detail },
        })
    }

    fn transport(&self, e: reqwest::Error) -> PollError {
        if e.is_timeout() {
            return PollError::Timeout(self.timeout);
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
        PollError::Connect(out)
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Reads the body up to [`MAX_BODY`].
pub(crate) async fn read_body(mut response: reqwest::Response) -> Result<String, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// `Retry-After` as seconds or an HTTP date.
pub(crate) fn retry_after(v: &HeaderValue) -> Option<Duration> {
    let v = v.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = azure_core::time::parse_rfc7231(v).ok()?;
    Some(Duration::try_from(at - azure_core::time::OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO))
}

/// A Service Bus / Event Hubs management error answer for the caller. The answers are
/// `<Error><Code>401</Code><Detail>…</Detail></Error>`: the numeric `<Code>`, the media type
/// and the size ([`crate::body_summary`]), never the `<Detail>` text nor other bytes (the
/// connection string, hence the host, is the caller's; the answer may be any internal page).
pub(crate) fn error_detail(content_type: Option<&str>, body: &str) -> String {
    let summary = crate::body_summary(content_type, body.len());
    let code = element_text(body, "Code")
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty() && c.len() <= 9 && c.bytes().all(|b| b.is_ascii_digit()));
    match code {
        Some(code) => format!("error code {code} ({summary})"),
        None => summary,
    }
}

/// A 2xx answer that is not the expected ATOM: what went wrong, the media type and the size;
/// the body goes to ebb's log only.
pub(crate) fn malformed_atom(
    scaler: &str,
    what: &str,
    error: &str,
    content_type: Option<&str>,
    body: &str,
    secrets: &[String],
) -> PollError {
    tracing::debug!(scaler, what, detail = %excerpt(&scrub(body, secrets)), "answer is not the expected ATOM");
    PollError::Malformed(format!("{what}: {error} ({})", crate::body_summary(content_type, body.len())))
}

/// The `Content-Type` of an answer, if it is text.
pub(crate) fn content_type(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers.get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// A quick-xml error for a [`PollError`]: a fixed description and the byte offset. Its own
/// text can quote the document (`expected `</a>`, found `</b>``).
pub(crate) fn xml_error(e: &quick_xml::Error, at: u64) -> String {
    let what = match e {
        // Fixed texts ("tag not closed: `>` not found before end of input").
        quick_xml::Error::Syntax(s) => s.to_string(),
        quick_xml::Error::IllFormed(_) => "ill-formed XML".to_owned(),
        quick_xml::Error::InvalidAttr(_) => "invalid attribute".to_owned(),
        quick_xml::Error::Encoding(_) => "not UTF-8".to_owned(),
        quick_xml::Error::Escape(_) => "bad escape".to_owned(),
        quick_xml::Error::Namespace(_) => "bad namespace".to_owned(),
        quick_xml::Error::Io(_) => "read error".to_owned(),
    };
    format!("not XML ({what} at byte {at})")
}

/// Removes every occurrence of a secret (and its URL-decoded form) from `text`.
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s.as_str(), "***");
        let decoded: String = url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if decoded.len() >= 4 {
            out = out.replace(&decoded, "***");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// ATOM
// ---------------------------------------------------------------------------------------------

/// One `<entry>`: the entity name and its counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AtomEntry {
    pub title: String,
    pub count_details: bool,
    pub active: Option<String>,
}

impl AtomEntry {
    /// `ActiveMessageCount`; `Throttled` without `CountDetails`.
    pub fn active_count(&self, what: &str) -> Result<i64, PollError> {
        if !self.count_details {
            return Err(PollError::Throttled {
                detail: format!(
                    "{what}: invalid runtime properties: no CountDetails element \
                     (Service Bus answers so when it throttles)"
                ),
                retry_after: None,
            });
        }
        let text = self.active.as_deref().map(str::trim).unwrap_or_default();
        text.parse::<u64>()
            .ok()
            .and_then(|n| i64::try_from(n).ok())
            .ok_or_else(|| PollError::Malformed(format!("{what}: ActiveMessageCount is not a count")))
    }
}

/// An `<entry>` or a `<feed>` of entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AtomDoc {
    pub entries: Vec<AtomEntry>,
    /// The feed has `<link rel="next">`.
    pub next: bool,
}

/// Reads the entries of an ATOM answer, ignoring namespace prefixes.
pub fn parse_atom(body: &str) -> Result<AtomDoc, String> {
    let mut reader = quick_xml::Reader::from_str(body);
    let mut doc = AtomDoc::default();
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut entry: Option<AtomEntry> = None;
    let mut root_seen = false;
    loop {
        let event = reader.read_event().map_err(|e| xml_error(&e, reader.error_position()))?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let name = e.local_name().as_ref().to_vec();
                let empty = matches!(event, Event::Empty(_));
                if !root_seen {
                    root_seen = true;
                    if name != b"feed" && name != b"entry" {
                        return Err("not an ATOM feed or entry".to_owned());
                    }
                }
                let parent = path.last().map(Vec::as_slice);
                if name == b"entry" && (path.is_empty() || parent == Some(b"feed")) {
                    entry = Some(AtomEntry::default());
                } else if name == b"CountDetails" {
                    if let Some(en) = entry.as_mut() {
                        en.count_details = true;
                    }
                } else if name == b"link" && path.len() == 1 && parent == Some(b"feed") {
                    let rel = e.try_get_attribute("rel").ok().flatten();
                    if rel.is_some_and(|a| a.value.as_ref() == b"next") {
                        doc.next = true;
                    }
                }
                if empty {
                    if name == b"entry" {
                        doc.entries.extend(entry.take());
                    }
                } else {
                    path.push(name);
                }
            }
            Event::End(_) => {
                let name = path.pop().unwrap_or_default();
                if name == b"entry"
                    && (path.is_empty() || path.last().map(Vec::as_slice) == Some(b"feed"))
                    && let Some(mut en) = entry.take()
                {
                    en.title = en.title.trim().to_owned();
                    doc.entries.push(en);
                }
            }
            Event::Text(ref t) => {
                let text = t.decode().map_err(|_| "not UTF-8".to_owned())?;
                push_text(&path, entry.as_mut(), &text);
            }
            Event::CData(ref t) => {
                let text = t.decode().map_err(|_| "not UTF-8".to_owned())?;
                push_text(&path, entry.as_mut(), &text);
            }
            Event::GeneralRef(ref r) => {
                let text = match r.resolve_char_ref().map_err(|_| "bad character reference".to_owned())? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(|_| "not UTF-8".to_owned())?;
                        quick_xml::escape::resolve_predefined_entity(&name).unwrap_or_default().to_owned()
                    }
                };
                push_text(&path, entry.as_mut(), &text);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !root_seen {
        return Err("no XML element in the answer".to_owned());
    }
    Ok(doc)
}

/// Appends text to the entry's title or active count, by where the reader is.
fn push_text(path: &[Vec<u8>], entry: Option<&mut AtomEntry>, text: &str) {
    let Some(entry) = entry else { return };
    let n = path.len();
    let (Some(here), Some(parent)) = (n.checked_sub(1).map(|i| &path[i]), n.checked_sub(2).map(|i| &path[i])) else {
        return;
    };
    if here == b"title" && parent == b"entry" {
        entry.title.push_str(text);
    } else if here == b"ActiveMessageCount" && parent == b"CountDetails" {
        entry.active.get_or_insert_with(String::new).push_str(text);
    }
}

/// The text of the first element named `local` (any prefix), if the body is XML.
pub fn element_text(body: &str, local: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(body);
    let mut inside = false;
    let mut out = String::new();
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) if e.local_name().as_ref() == local.as_bytes() => inside = true,
            Event::End(e) if inside && e.local_name().as_ref() == local.as_bytes() => return Some(out),
            Event::Text(t) if inside => out.push_str(&t.decode().ok()?),
            Event::GeneralRef(r) if inside => {
                let name = r.decode().ok()?;
                out.push_str(quick_xml::escape::resolve_predefined_entity(&name).unwrap_or_default());
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Metadata entries in a table row.
    type Pairs = &'static [(&'static str, &'static str)];

    const CONN: &str = "Endpoint=sb://ebb-test.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=k3y-s3cr3t-value=";

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn config(pairs: &[(&str, &str)]) -> Result<ServiceBusScaler, ConfigErrors> {
        parse_config(&Metadata::new(&map(pairs)))
    }

    fn fixture(name: &str) -> String {
        let path = format!("{}/../tests/fixtures/servicebus/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// KEDA `parseServiceBusMetadataDataset` rows (azure_servicebus_scaler_test.go), then ebb's
    /// own. `None` = valid; `Some(key)` = the key the error must name.
    #[test]
    fn parse_table() {
        let c = ("connection", CONN);
        type Row<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
        let rows: &[Row] = &[
            ("KEDA row 1: empty metadata", &[], Some("queueName")),
            ("KEDA row 2: properly formed queue", &[("queueName", "q"), c], None),
            ("KEDA row 3: topic and subscription", &[("topicName", "t"), ("subscriptionName", "s"), c], None),
            ("KEDA row 4: queue and topic", &[("queueName", "q"), ("topicName", "t"), c], Some("topicName")),
            (
                "KEDA row 5: queue and subscription",
                &[("queueName", "q"), ("subscriptionName", "s"), c],
                Some("subscriptionName"),
            ),
            ("KEDA row 6: topic without subscription", &[("topicName", "t"), c], Some("subscriptionName")),
            ("KEDA row 7: subscription without topic", &[("subscriptionName", "s"), c], Some("topicName")),
            ("KEDA row 8: connection not set", &[("queueName", "q")], Some("connection")),
            ("KEDA row 9: connection resolved from env", &[("queueName", "q"), ("connectionFromEnv", CONN)], None),
            ("KEDA row 10: identity without namespace", &[("queueName", "q")], Some("connection")),
            ("KEDA row 11: identity with namespace", &[("queueName", "q"), ("namespace", "ns")], None),
            ("named secret", &[("queueName", "q"), ("connectionRef", "sb-conn")], None),
            ("named secret with a path", &[("queueName", "q"), ("connectionRef", "../x")], Some("connectionRef")),
            ("messageCount not an integer", &[("queueName", "q"), c, ("messageCount", "ten")], Some("messageCount")),
            ("messageCount 0 (ebb deviation)", &[("queueName", "q"), c, ("messageCount", "0")], Some("messageCount")),
            (
                "activation not an integer",
                &[("queueName", "q"), c, ("activationMessageCount", "1.5")],
                Some("activationMessageCount"),
            ),
            ("useRegex not a bool", &[("queueName", "q"), c, ("useRegex", "yes")], Some("useRegex")),
            ("bad queue regex", &[("queueName", "orders-("), c, ("useRegex", "true")], Some("queueName")),
            (
                "regex unbalanced but balanced once wrapped",
                &[("queueName", "a)(b"), c, ("useRegex", "true")],
                Some("queueName"),
            ),
            (
                "bad subscription regex",
                &[("topicName", "t"), ("subscriptionName", "["), c, ("useRegex", "true")],
                Some("subscriptionName"),
            ),
            ("KEDA enum operation", &[("queueName", "q"), c, ("operation", "median")], Some("operation")),
            ("operation avg", &[("queueName", "q.*"), c, ("useRegex", "true"), ("operation", "AVG")], None),
            ("bad cloud", &[("queueName", "q"), ("namespace", "ns"), ("cloud", "Mars")], Some("cloud")),
            (
                "private cloud without suffix",
                &[("queueName", "q"), ("namespace", "ns"), ("cloud", "Private")],
                Some("endpointSuffix"),
            ),
            ("bad namespace", &[("queueName", "q"), ("namespace", "ns/x")], Some("namespace")),
            (
                "connection without Endpoint",
                &[("queueName", "q"), ("connection", "SharedAccessKeyName=a;SharedAccessKey=b")],
                Some("connection"),
            ),
            (
                "connection without key",
                &[("queueName", "q"), ("connection", "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=a")],
                Some("connection"),
            ),
            (
                "env connection not a connection string",
                &[("queueName", "q"), ("connectionFromEnv", "hunter2")],
                Some("connectionFromEnv"),
            ),
        ];
        for (what, pairs, want) in rows {
            match (config(pairs), want) {
                (Ok(_), None) => {}
                (Ok(s), Some(key)) => panic!("{what}: expected an error naming {key}, got {s:?}"),
                (Err(e), None) => panic!("{what}: expected success, got {e}"),
                (Err(e), Some(key)) => assert!(e.keys().contains(key), "{what}: errors {e} should name {key}"),
            }
        }
    }

    #[test]
    fn defaults_and_modes() {
        let s = config(&[("queueName", "orders"), ("connection", CONN)]).unwrap();
        assert_eq!(s.target(), 5.0, "KEDA default messageCount");
        assert_eq!(s.activation_message_count, 0);
        assert_eq!(s.operation, Operation::Sum);
        assert!(s.regex.is_none());
        assert_eq!(s.poll_timeout(), DEFAULT_TIMEOUT);
        assert_eq!(s.entity, Entity::Queue("orders".into()));
        let s =
            config(&[("topicName", "t"), ("subscriptionName", "s.*"), ("useRegex", "1"), ("namespace", "ns")]).unwrap();
        assert!(s.regex.is_some());
        assert_eq!(s.poll_timeout(), DEFAULT_TIMEOUT * REGEX_POLL_TIMEOUT_FACTOR);
        match &s.auth {
            Auth::Identity { host, .. } => assert_eq!(host, "ns.servicebus.windows.net"),
            a => panic!("{a:?}"),
        }
        let s = config(&[("queueName", "q"), ("namespace", "ns"), ("cloud", "AzureChinaCloud")]).unwrap();
        assert!(
            matches!(&s.auth, Auth::Identity { host, host_key: "namespace" } if host == "ns.servicebus.chinacloudapi.cn")
        );
        let s =
            config(&[("queueName", "q"), ("namespace", "ns"), ("cloud", "Private"), ("endpointSuffix", "sb.local")])
                .unwrap();
        assert!(matches!(&s.auth, Auth::Identity { host, host_key: "endpointSuffix" } if host == "ns.sb.local"));
    }

    #[test]
    fn regex_is_full_match() {
        let s = config(&[("queueName", "orders-.*|audit"), ("useRegex", "true"), ("connection", CONN)]).unwrap();
        let re = s.regex.unwrap();
        for (name, want) in
            [("orders-eu", true), ("audit", true), ("xorders-eu", false), ("audit2", false), ("orders", false)]
        {
            assert_eq!(re.is_match(name), want, "{name}");
        }
    }

    #[test]
    fn operations_follow_keda() {
        assert_eq!(Operation::Sum.apply(&[1, 2, 4]), 7);
        assert_eq!(Operation::Max.apply(&[1, 9, 4]), 9);
        assert_eq!(Operation::Avg.apply(&[1, 2, 4]), 2, "integer division");
        for op in [Operation::Sum, Operation::Max, Operation::Avg] {
            assert_eq!(op.apply(&[]), 0, "{op:?} of no match");
        }
    }

    #[test]
    fn source_key_ignores_thresholds_and_hides_secrets() {
        let a = config(&[("queueName", "orders"), ("connection", CONN), ("messageCount", "10")]).unwrap();
        let b = config(&[("queueName", "orders"), ("connection", CONN), ("activationMessageCount", "3")]).unwrap();
        assert_eq!(a.source_key(), b.source_key());
        let k = a.source_key().0.clone();
        assert!(k.starts_with("azure-servicebus|ebb-test.servicebus.windows.net|queue:orders|single|value:"), "{k}");
        assert!(!k.contains("k3y-s3cr3t"), "{k}");
        assert!(!format!("{a:?}").contains("k3y-s3cr3t"));
        let other = CONN.replace("k3y", "key");
        let c = config(&[("queueName", "orders"), ("connection", &other)]).unwrap();
        assert_ne!(a.source_key(), c.source_key(), "another key is another source");
        let r = config(&[("queueName", "orders.*"), ("useRegex", "true"), ("operation", "max"), ("connection", CONN)])
            .unwrap();
        assert!(r.source_key().0.contains("|queue~orders.*|max|"), "{}", r.source_key());
        let n = config(&[("topicName", "t"), ("subscriptionName", "s"), ("connectionRef", "sb")]).unwrap();
        assert_eq!(n.source_key().0, "azure-servicebus|ref:sb|topic:t/subscription:s|single|ref:sb");
        let i = config(&[("queueName", "q"), ("namespace", "ns")]).unwrap();
        assert_eq!(i.source_key().0, "azure-servicebus|ns.servicebus.windows.net|queue:q|single|identity");
    }

    #[test]
    fn config_errors_never_echo_the_connection() {
        let secret = "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=n;SharedAccessKeyy=hunter2";
        let e = config(&[("queueName", "q"), ("connection", secret)]).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn connection_strings() {
        let cs = ConnectionString::parse(
            "Endpoint=sb://Ebb-Test.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=abc=;EntityPath=orders",
        )
        .unwrap();
        assert_eq!(cs.host, "ebb-test.servicebus.windows.net");
        assert_eq!(cs.credential, SasCredential::Key { name: "listen".into(), key: Secret("abc=".into()) });
        assert_eq!(cs.entity_path.as_deref(), Some("orders"));
        // Keys in any case and order, spaces around pairs, a trailing `;`.
        let cs =
            ConnectionString::parse(" sharedaccesskey=k ; ENDPOINT=sb://127.0.0.1:5300/ ; SharedAccessKeyName=n ;")
                .unwrap();
        assert_eq!(cs.host, "127.0.0.1:5300");
        let sas = "SharedAccessSignature sr=https%3A%2F%2Fx%2F&sig=abc%3D&se=1700000000&skn=n";
        let cs =
            ConnectionString::parse(&format!("Endpoint=sb://x.servicebus.windows.net/;SharedAccessSignature={sas}"))
                .unwrap();
        assert_eq!(cs.credential, SasCredential::Token(Secret(sas.into())));
        for bad in [
            "",
            "garbage",
            "SharedAccessKeyName=n;SharedAccessKey=k",
            "Endpoint=sb:///;SharedAccessKeyName=n;SharedAccessKey=k",
            "Endpoint=sb://x/;SharedAccessKey=k",
            "Endpoint=sb://x/;SharedAccessSignature=sig=only",
        ] {
            let e = ConnectionString::parse(bad).unwrap_err();
            assert!(!e.contains("=k") && !e.contains("sig=only"), "{e}");
        }
    }

    #[test]
    fn scheme_is_http_only_on_loopback() {
        for (host, want) in [
            ("127.0.0.1:5300", "http"),
            ("127.9.9.9", "http"),
            ("[::1]:80", "http"),
            ("localhost:1", "http"),
            ("ebb-test.servicebus.windows.net", "https"),
            ("10.0.0.1:443", "https"),
            ("127.0.0.1.nip.io", "https"),
        ] {
            assert_eq!(scheme_for(host), want, "{host}");
        }
    }

    /// Known vector, computed independently with Python:
    /// `base64.b64encode(hmac.new(b'c2VjcmV0LWtleQ==pretend',
    ///   (quote_plus('https://contoso.servicebus.windows.net/') + '\n1700000000').encode(),
    ///   hashlib.sha256).digest())` = `ZojRPth/dJXcyRInuqhlJYqlmrQG16XKnzYVG6psnjg=`.
    /// The key looks like base64 on purpose: it is used as raw UTF-8 bytes, not decoded.
    #[test]
    fn sas_signature_known_vector() {
        let t = sas_token(
            "https://contoso.servicebus.windows.net/",
            "RootManageSharedAccessKey",
            "c2VjcmV0LWtleQ==pretend",
            1_700_000_000,
        );
        assert_eq!(
            t,
            "SharedAccessSignature sr=https%3A%2F%2Fcontoso.servicebus.windows.net%2F\
             &sig=ZojRPth%2FdJXcyRInuqhlJYqlmrQG16XKnzYVG6psnjg%3D&se=1700000000&skn=RootManageSharedAccessKey"
        );
    }

    #[test]
    fn entity_paths_are_escaped() {
        assert_eq!(path_encode("orders/eu-1"), "orders/eu-1");
        assert_eq!(path_encode("a b?c#d"), "a%20b%3Fc%23d");
    }

    #[test]
    fn atom_fixtures() {
        let q = parse_atom(&fixture("queue.xml")).unwrap();
        assert_eq!(q.entries.len(), 1);
        assert_eq!(q.entries[0].title, "orders");
        assert_eq!(q.entries[0].active_count("q").unwrap(), 42, "ActiveMessageCount, not MessageCount (50)");
        let s = parse_atom(&fixture("subscription.xml")).unwrap();
        assert_eq!(s.entries[0].title, "billing");
        assert_eq!(s.entries[0].active_count("s").unwrap(), 7, "d3p1 prefix");
        let p1 = parse_atom(&fixture("queues-page1.xml")).unwrap();
        assert!(p1.next);
        let names: Vec<_> = p1.entries.iter().map(|e| (e.title.as_str(), e.active_count("x").unwrap())).collect();
        assert_eq!(names, [("orders-eu", 10), ("orders-us", 4), ("audit", 1000)]);
        let p2 = parse_atom(&fixture("queues-page2.xml")).unwrap();
        assert!(!p2.next);
        assert_eq!(p2.entries.len(), 3);
        let empty = parse_atom(&fixture("empty-feed.xml")).unwrap();
        assert!(empty.entries.is_empty() && !empty.next);
        let throttled = parse_atom(&fixture("queue-no-countdetails.xml")).unwrap();
        let e = throttled.entries[0].active_count("queue \"orders\"").unwrap_err();
        assert!(e.is_throttling(), "{e}");
        assert!(e.to_string().contains("no CountDetails"), "{e}");
        // An error body is not an ATOM document.
        assert!(parse_atom(&fixture("error-404.xml")).is_err());
        assert!(parse_atom("not xml <").is_err());
        assert!(parse_atom("").is_err());
        // Error answers: the numeric code, type and size; never the <Detail> text.
        let e401 = fixture("error-401.xml");
        let d = error_detail(Some("application/xml; charset=utf-8"), &e401);
        assert_eq!(d, format!("error code 401 (application/xml, {} bytes)", e401.len()));
        let d = error_detail(None, &fixture("error-404.xml"));
        assert!(d.starts_with("error code 404 (unknown type, ") && !d.contains("could not be found"), "{d}");
        assert_eq!(error_detail(Some("text/html"), "<Code>LEAKED</Code>"), "text/html, 19 bytes");
        assert_eq!(error_detail(Some("text/plain"), ""), "empty body");
    }

    #[test]
    fn atom_edge_cases() {
        // Entities in titles, a self-closing CountDetails, an unparsable count.
        let doc = parse_atom(
            r#"<feed xmlns="http://www.w3.org/2005/Atom"><entry><title>a&amp;b&#x41;</title><content><QueueDescription><CountDetails/></QueueDescription></content></entry><entry><title>c</title><content><X><CountDetails><p:ActiveMessageCount>-1</p:ActiveMessageCount></CountDetails></X></content></entry></feed>"#,
        )
        .unwrap();
        assert_eq!(doc.entries[0].title, "a&bA");
        assert_eq!(doc.entries[0].active_count("a").unwrap_err().kind(), "malformed");
        assert_eq!(doc.entries[1].active_count("c").unwrap_err().kind(), "malformed");
    }

    #[test]
    fn scrub_removes_secrets_in_both_forms() {
        let s = scrub("bad sig ab%2Fc and ab/c and key k3y!", &["ab%2Fc".into(), "k3y!".into()]);
        assert_eq!(s, "bad sig *** and *** and key ***");
    }

    #[test]
    fn evaluate_is_strictly_greater() {
        let s = config(&[("queueName", "q"), ("connection", CONN), ("activationMessageCount", "3")]).unwrap();
        assert_eq!(s.evaluate(&Measurement::Value(3.0)), Evaluation { metric: 3.0, active: false });
        assert_eq!(s.evaluate(&Measurement::Value(4.0)), Evaluation { metric: 4.0, active: true });
    }

    #[derive(Debug)]
    struct FakeCredential {
        calls: std::sync::atomic::AtomicUsize,
        scopes: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl TokenCredential for FakeCredential {
        async fn get_token(
            &self,
            scopes: &[&str],
            _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
        ) -> azure_core::Result<AccessToken> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.scopes.lock().unwrap().extend(scopes.iter().map(|s| s.to_string()));
            Ok(AccessToken::new(
                "entra-token-1".to_owned(),
                azure_core::time::OffsetDateTime::now_utc() + Duration::from_secs(3600),
            ))
        }
    }

    /// Identity mode: a Bearer token for the Service Bus scope, reused across polls.
    #[tokio::test]
    async fn identity_sends_a_cached_bearer_token() {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let log = log.clone();
            async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                log.lock().unwrap().push(auth);
                fixture("subscription.xml")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });

        let mut s = config(&[("topicName", "events"), ("subscriptionName", "billing"), ("namespace", "ns")]).unwrap();
        // Point the namespace at the local server (loopback ⇒ http).
        s.auth = Auth::Identity { host: addr.to_string(), host_key: "namespace" };
        let cred = Arc::new(FakeCredential { calls: Default::default(), scopes: Mutex::default() });
        let poller = s.build_poller(Some(cred.clone())).unwrap();
        for _ in 0..2 {
            assert_eq!(poller.poll().await.unwrap(), Measurement::Value(7.0));
        }
        assert_eq!(*seen.lock().unwrap(), ["Bearer entra-token-1", "Bearer entra-token-1"]);
        assert_eq!(cred.calls.load(std::sync::atomic::Ordering::SeqCst), 1, "token reused");
        assert_eq!(*cred.scopes.lock().unwrap(), [ENTRA_SCOPE]);
    }

    /// Serves `body` with `status` and `content_type` on every path of a local namespace.
    async fn serve_answer(status: u16, content_type: &'static str, body: &'static str) -> String {
        let app = axum::Router::new().fallback(move || async move {
            axum::http::Response::builder()
                .status(status)
                .header("content-type", content_type)
                .body(axum::body::Body::from(body))
                .unwrap()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        format!("Endpoint=sb://{addr}/;SharedAccessKeyName=n;SharedAccessKey=k3y-s3cr3t")
    }

    /// The connection string (hence the host) is the caller's, so an answer may be any internal
    /// page: no error quotes its bytes or values parsed out of it, only status, code, type, size.
    #[tokio::test]
    async fn poll_errors_never_quote_the_answer() {
        const M: &str = "LEAKED-BODY-MARKER";
        const HTML: &str = "<html><body>LEAKED-BODY-MARKER internal admin</body></html>";
        const SB_ERROR: &str = "<Error><Code>40100</Code><Detail>LEAKED-BODY-MARKER: bad token</Detail></Error>";
        const ENTRY_BAD_COUNT: &str = r#"<entry xmlns="http://www.w3.org/2005/Atom"><title>LEAKED-BODY-MARKER</title><content><QueueDescription><CountDetails><d2p1:ActiveMessageCount>LEAKED-BODY-MARKER</d2p1:ActiveMessageCount></CountDetails></QueueDescription></content></entry>"#;
        const FEED_NO_COUNTS: &str = r#"<feed xmlns="http://www.w3.org/2005/Atom"><entry><title>LEAKED-BODY-MARKER</title><content><QueueDescription/></content></entry></feed>"#;
        const FEED_BAD_COUNT: &str = r#"<feed xmlns="http://www.w3.org/2005/Atom"><entry><title>LEAKED-BODY-MARKER</title><content><QueueDescription><CountDetails><ActiveMessageCount>-LEAKED-BODY-MARKER</ActiveMessageCount></CountDetails></QueueDescription></content></entry></feed>"#;
        let regex: Pairs = &[("queueName", "orders-.*"), ("useRegex", "true")];
        let single: Pairs = &[("queueName", "orders")];
        /// Name, status, content type, body, metadata, kind, wanted texts.
        type Case = (&'static str, u16, &'static str, &'static str, Pairs, &'static str, &'static [&'static str]);
        let cases: &[Case] = &[
            ("500 html", 500, "text/html", HTML, single, "http", &["HTTP 500", "text/html, 59 bytes"]),
            ("401 sb error", 401, "application/xml", SB_ERROR, single, "auth", &["HTTP 401", "error code 40100"]),
            ("404 sb error", 404, "application/xml", SB_ERROR, single, "not_found", &["error code 40100"]),
            ("429 html", 429, "text/html", HTML, single, "throttled", &["HTTP 429", "text/html"]),
            ("200 html", 200, "text/html", HTML, single, "malformed", &["not an ATOM", "text/html, 59 bytes"]),
            ("200 plain text", 200, "text/plain", M, single, "malformed", &["no XML element", "text/plain, 18 bytes"]),
            (
                "200 broken XML",
                200,
                "application/xml",
                "<feed><LEAKED-BODY-MARKER></other></feed>",
                single,
                "malformed",
                &["not XML (ill-formed XML at byte", "application/xml"],
            ),
            ("200 bad count", 200, "application/atom+xml", ENTRY_BAD_COUNT, single, "malformed", &["not a count"]),
            ("listing without counts", 200, "application/atom+xml", FEED_NO_COUNTS, regex, "throttled", &["entry 1"]),
            ("listing bad count", 200, "application/atom+xml", FEED_BAD_COUNT, regex, "malformed", &["entry 1"]),
        ];
        for (name, status, ct, body, extra, kind, wants) in cases {
            let conn = serve_answer(*status, ct, body).await;
            let mut md = vec![("connection", conn.as_str())];
            md.extend_from_slice(extra);
            let e = config(&md).unwrap().build_poller(None).unwrap().poll().await.unwrap_err();
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

    /// A refused connection and a timeout map to their kinds.
    #[tokio::test]
    async fn transport_failures() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let conn = format!("Endpoint=sb://{closed}/;SharedAccessKeyName=n;SharedAccessKey=k");
        let s = config(&[("queueName", "q"), ("connection", &conn)]).unwrap();
        let e = s.build_poller(None).unwrap().poll().await.unwrap_err();
        assert_eq!(e.kind(), "connect", "{e}");

        // Accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        let conn = format!("Endpoint=sb://{addr}/;SharedAccessKeyName=n;SharedAccessKey=k");
        let mut s = config(&[("queueName", "q"), ("connection", &conn)]).unwrap();
        s.timeout = Duration::from_millis(300);
        let start = std::time::Instant::now();
        let e = s.build_poller(None).unwrap().poll().await.unwrap_err();
        assert_eq!(e.kind(), "timeout", "{e}");
        assert!(start.elapsed() < Duration::from_secs(2));
        hold.abort();
    }
}
