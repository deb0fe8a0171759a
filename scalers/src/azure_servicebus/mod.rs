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

use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use crate::azure::namespace::NamespaceConnection;
use crate::azure::{Cloud, SecretSource, Service};
use crate::metadata::collect;
use crate::trust::{AzureService, Held, IdentityUse};
use crate::{
    ConfigError, ConfigErrors, Evaluation, Measurement, Metadata, Poller, Scaler, ScalerContext, SourceKey, excerpt,
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

/// Entra scope of the Service Bus data and management plane.
pub const ENTRA_SCOPE: &str = "https://servicebus.azure.net/.default";

/// Largest answer read (a page of 100 entries is about 200 KiB).
const MAX_BODY: usize = 8 << 20;

/// Metadata that parses (the registry's contract test runs it).
pub const EXAMPLE: &[(&str, &str)] = &[
    ("queueName", "orders"),
    ("messageCount", "5"),
    ("connection", "Endpoint=sb://ebb.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=s3cr3t"),
];

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
    Connection { source: SecretSource, parsed: Option<NamespaceConnection> },
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
                Some(NamespaceConnection::parse(v).map_err(|reason| ConfigError::new(key, reason))?)
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

    fn poller(&self, ctx: &Arc<ScalerContext>) -> Result<Arc<dyn Poller>, ConfigErrors> {
        Ok(Arc::new(self.build_poller(ctx, None)?))
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

mod atom;
mod poll;
#[cfg(test)]
mod tests;

pub use atom::{AtomDoc, AtomEntry, parse_atom};
