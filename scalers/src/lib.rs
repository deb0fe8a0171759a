//! ebb's event sources.
//!
//! # Layout
//! - [`metadata`]: KEDA's metadata lookup rules (`<key>FromEnv`, trimming, typed values) and
//!   [`ConfigError`]s that name the key at fault.
//! - [`registry`]: KEDA trigger type names (`scalerType` metadata) → parsers, as a
//!   [`Registry`] value that also holds the [`ScalerContext`] pollers are built with.
//! - [`context`]: what pollers use of the process (secrets directory, upstream concurrency,
//!   ebb's Azure identity, shared HTTP clients), passed in, never global.
//! - shared plumbing: [`http`] (clients, bodies, `Retry-After`, status → [`PollError`]),
//!   [`secret`] (secret type, fingerprints, PEM checks), [`azure`] (clouds, credentials,
//!   Storage and namespace plumbing, Entra tokens), [`trust`] (what a trigger may use).
//! - one module per source: [`azure_eventhub`], [`azure_queue`], [`azure_servicebus`], [`kafka`],
//!   [`prometheus`]. A source module imports shared modules and the crate root only, never
//!   another source (a test enforces it).
//!
//! A source module parses the metadata into a typed config (no I/O) that implements
//! [`Scaler`]. The config names its [`SourceKey`] (what is polled, without secrets); the
//! engine builds one [`Poller`] per distinct key and shares its [`Measurement`]s across every
//! trigger with that key, each trigger applying its own thresholds through
//! [`Scaler::evaluate`]. Nothing here knows about gRPC, HTTP serving or KEDA's RPC schedule.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

// Shared plumbing: scalers import these and the crate root, never each other.
pub mod azure;
pub mod context;
pub mod http;
pub mod metadata;
pub mod registry;
pub mod secret;
pub mod trust;

/// Declares the source modules and registers each by its `SCALER_TYPE`, `parse` and `EXAMPLE`.
macro_rules! sources {
    ($($m:ident),* $(,)?) => {
        $(pub mod $m;)*

        /// Every built-in scaler, in the order of [`sources!`] (sorted by type; a test checks).
        pub(crate) fn builtin_scalers() -> Vec<Registration> {
            vec![$(Registration::new($m::SCALER_TYPE, $m::parse, $m::EXAMPLE)),*]
        }
    };
}

// One module per source; adding a scaler is its module, this line and its docs page.
sources!(azure_eventhub, azure_queue, azure_servicebus, kafka, prometheus);

pub use context::{ScalerContext, Settings};
pub use metadata::{ConfigError, ConfigErrors, Metadata};
pub use registry::{Registration, Registry};

/// Identity of what is polled: two triggers with equal keys share one poll. Built from the
/// endpoint, the query or entity and a fingerprint of the credentials, never a secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey(pub String);

impl SourceKey {
    /// The key without its salted credential fingerprints ([`fingerprint_text`]): the same in
    /// every ebb process for the same source, where the key itself is not (each process salts
    /// its fingerprints). Replicas derive their poll schedule from it.
    pub fn public_part(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        let mut rest = self.0.as_str();
        while let Some(i) = rest.find(FINGERPRINT_PREFIX) {
            out.push_str(&rest[..i]);
            let after = &rest[i + FINGERPRINT_PREFIX.len()..];
            let hex = after.bytes().take_while(u8::is_ascii_hexdigit).count();
            if hex == 16 {
                out.push_str(FINGERPRINT_PREFIX);
                rest = &after[16..];
            } else {
                out.push_str(FINGERPRINT_PREFIX);
                rest = after;
            }
        }
        out.push_str(rest);
        out
    }
}

const FINGERPRINT_PREFIX: &str = "fp:";

/// A salted fingerprint as it appears in source keys: `fp:` and the first 8 digest bytes in hex.
pub fn fingerprint_text(digest: &[u8]) -> String {
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{FINGERPRINT_PREFIX}{hex}")
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What one poll of a source saw: the raw figures, before any trigger's thresholds.
#[derive(Debug, Clone, PartialEq)]
pub enum Measurement {
    /// A single sample (Prometheus query result).
    Value(f64),
    /// A Prometheus query result and its `rateQuery` result (arrivals per second).
    Rated { value: f64, rate: f64 },
    /// Event Hubs: the uncapped total of unprocessed events over every partition, and the
    /// number of partitions (the trigger caps the metric at `partitions × threshold`).
    /// `sequence`: Σ last enqueued and Σ checkpointed sequence numbers over the partitions that
    /// have a checkpoint, when any has (the counters of `policy: drain`).
    Partitions { unprocessed: f64, partitions: u32, sequence: Option<(f64, f64)> },
    /// Kafka: committed and log-end offsets of every partition a consumer group reads.
    Offsets(Arc<[kafka::PartitionOffsets]>),
}

impl Measurement {
    /// The measurement as one number: the sample, or the uncapped unprocessed total. Lets a
    /// scaler read a foreign variant without panicking.
    pub fn scalar(&self) -> f64 {
        match self {
            Measurement::Value(v) | Measurement::Rated { value: v, .. } => *v,
            Measurement::Partitions { unprocessed, .. } => *unprocessed,
            Measurement::Offsets(parts) => {
                kafka::total_lag(parts, &kafka::LagRules { allow_idle_consumers: true, ..Default::default() }).0 as f64
            }
        }
    }
}

/// Cumulative counters a log-like source shows besides its backlog, for rate-aware decisions
/// (`policy: drain`): read from the same poll, over the partitions the trigger counts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// Everything that ever arrived (Kafka: Σ log-end offsets).
    pub arrivals: Option<f64>,
    /// Everything ever processed (Kafka: Σ committed offsets).
    pub processed: Option<f64>,
    /// Most consumers that can work at once (partitions), when more would idle.
    pub max_consumers: Option<u32>,
    /// The arrival rate itself (messages/s), when the source measures it (Prometheus
    /// `rateQuery`).
    pub arrival_rate: Option<f64>,
}

/// A measurement read through one trigger's thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// The value KEDA's built-in scaler would report to the HPA.
    pub metric: f64,
    /// KEDA's activation rule for this trigger (strictly `value > activationX`).
    pub active: bool,
}

/// Why a poll failed. `Display` goes back to the caller, so it never carries a secret nor
/// bytes of an upstream answer: failures name the status, the media type and size
/// ([`body_summary`]) and the service's own error code; bodies go to ebb's log only.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PollError {
    /// The source did not answer within the poll timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// No connection could be made (refused, DNS, TLS handshake).
    #[error("cannot reach source: {0}")]
    Connect(String),
    /// The source rejected the credentials (HTTP 401/403).
    #[error("authentication failed (HTTP {status}): {detail}")]
    Auth { status: u16, detail: String },
    /// The queried entity does not exist (HTTP 404, unknown queue).
    #[error("not found: {0}")]
    NotFound(String),
    /// The source asked us to slow down (HTTP 429/503, Service Bus without CountDetails).
    #[error("throttled by source: {detail}")]
    Throttled { detail: String, retry_after: Option<Duration> },
    /// Any other non-success HTTP status.
    #[error("source answered HTTP {status}: {detail}")]
    Http { status: u16, detail: String },
    /// The answer could not be parsed.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// The answer parsed but breaks a rule of the scaler (for example a Prometheus query
    /// that returned several series).
    #[error("{0}")]
    Rejected(String),
    /// A credential could not be obtained (managed identity, workload identity).
    #[error("cannot get credential: {0}")]
    Credential(String),
    /// A binary-protocol error with its code (Kafka: `GROUP_AUTHORIZATION_FAILED`, …).
    #[error("{code}: {detail}")]
    Protocol { code: String, detail: String },
}

impl PollError {
    /// Bounded label for metrics (`ebb_poll_errors_total{kind=…}`).
    pub fn kind(&self) -> &'static str {
        match self {
            PollError::Timeout(_) => "timeout",
            PollError::Connect(_) => "connect",
            PollError::Auth { .. } => "auth",
            PollError::NotFound(_) => "not_found",
            PollError::Throttled { .. } => "throttled",
            PollError::Http { .. } => "http",
            PollError::Malformed(_) => "malformed",
            PollError::Rejected(_) => "rejected",
            PollError::Credential(_) => "credential",
            PollError::Protocol { .. } => "protocol",
        }
    }

    /// Throttling answers make the engine back off longer.
    pub fn is_throttling(&self) -> bool {
        matches!(self, PollError::Throttled { .. })
    }
}

/// Cuts an upstream body to a short, single-line excerpt for ebb's log. Never for a
/// [`PollError`], which goes back to the caller: see [`body_summary`].
pub fn excerpt(body: &str) -> String {
    const MAX: usize = 200;
    let one_line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= MAX {
        one_line
    } else {
        let cut: String = one_line.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// Names an upstream answer for a [`PollError`] without quoting it: `"text/html, 1234 bytes"`
/// or `"empty body"`. The caller's metadata chooses the URL ebb polls, so an answer may be any
/// internal page: errors carry its status, media type, size and the service's own error code,
/// never its bytes ([`excerpt`] is for ebb's log only). The media type is the part before
/// `;`, lowercased, when it is at most 64 token characters; else `unknown type`.
pub fn body_summary(content_type: Option<&str>, len: usize) -> String {
    if len == 0 {
        return "empty body".to_owned();
    }
    let media = content_type.map(|ct| ct.split(';').next().unwrap_or_default().trim()).filter(|m| {
        !m.is_empty() && m.len() <= 64 && m.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-/".contains(&b))
    });
    match media {
        Some(m) => format!("{}, {len} bytes", m.to_ascii_lowercase()),
        None => format!("unknown type, {len} bytes"),
    }
}

/// A serde_json error for a [`PollError`]: its category and position only, as its message can
/// quote the document (`invalid type: string "…"`).
pub fn json_error(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Eof => "truncated",
    };
    format!("not JSON ({what} at line {}, column {})", e.line(), e.column())
}

/// One polled source. Built once per distinct [`SourceKey`]; `poll` is called by the engine's
/// task for that source, under the deadline [`Scaler::poll_timeout`] (the engine's).
#[async_trait::async_trait]
pub trait Poller: Send + Sync {
    async fn poll(&self) -> Result<Measurement, PollError>;

    /// A poll for the wall-clock instant `at` (now or just past). A source that can answer for
    /// a given time does (Prometheus' `time=`), so every ebb replica polling the same instant
    /// reads the same value; the others poll now.
    async fn poll_at(&self, _at: std::time::SystemTime) -> Result<Measurement, PollError> {
        self.poll().await
    }
}

/// One poll under its deadline (the trigger's [`Scaler::poll_timeout`]), for the instant `at`.
/// The engine and `ebb check` poll through here; pollers set per-request timeouts only, so this
/// is the one deadline a whole poll has.
pub async fn poll_within(
    poller: &dyn Poller,
    deadline: Duration,
    at: std::time::SystemTime,
) -> Result<Measurement, PollError> {
    match tokio::time::timeout(deadline, poller.poll_at(at)).await {
        Ok(r) => r,
        Err(_) => Err(PollError::Timeout(deadline)),
    }
}

/// A scaler's poll as the engine runs it, with a default context (the scalers' own tests).
#[cfg(test)]
pub(crate) async fn poll_once(s: &dyn Scaler) -> Result<Measurement, PollError> {
    let poller = s.poller(&Arc::new(ScalerContext::default())).expect("poller");
    poll_within(&*poller, s.poll_timeout(), std::time::SystemTime::now()).await
}

/// A parsed trigger: KEDA's typed config for one scaler type.
pub trait Scaler: Send + Sync + fmt::Debug {
    /// KEDA trigger type name (`"prometheus"`).
    fn scaler_type(&self) -> &'static str;
    /// What is polled; triggers with equal keys share one [`Poller`].
    fn source_key(&self) -> &SourceKey;
    /// The HPA target (`threshold`, `queueLength`, …). Always > 0.
    fn target(&self) -> f64;
    /// The longest a poll may take: the engine fails a longer one with [`PollError::Timeout`]
    /// (pollers set per-request timeouts, never a deadline for the whole poll).
    fn poll_timeout(&self) -> Duration;
    /// Applies this trigger's formula and activation threshold to a shared measurement.
    fn evaluate(&self, m: &Measurement) -> Evaluation;
    /// Builds the I/O client for this trigger's source, with what it may use of the process
    /// (`ctx`). Called once per new source key.
    fn poller(&self, ctx: &Arc<ScalerContext>) -> Result<Arc<dyn Poller>, ConfigErrors>;
    /// Every use this trigger would make of what ebb holds (its Azure identity, named secrets),
    /// for the engine to check against the operator's policy before accepting the trigger. A
    /// scaler that uses neither keeps the default.
    fn held(&self) -> Vec<trust::Held> {
        Vec::new()
    }
    /// The counters this trigger reads from a measurement; none by default (a queue shows its
    /// backlog only).
    fn counters(&self, _m: &Measurement) -> Counters {
        Counters::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_part_drops_salted_fingerprints_only() {
        let fp = fingerprint_text(&[0xab; 32]);
        assert_eq!(fp, "fp:abababababababab");
        let k = SourceKey(format!("azure-queue|https://a|q|all|value:{fp}"));
        assert_eq!(k.public_part(), "azure-queue|https://a|q|all|value:fp:");
        let k = SourceKey(format!(r#"prometheus|{{"secrets":"{fp}","url":"fp:x"}}"#));
        assert_eq!(k.public_part(), r#"prometheus|{"secrets":"fp:","url":"fp:x"}"#);
    }

    #[test]
    fn excerpt_is_short_and_single_line() {
        let long = "a\nb ".repeat(300);
        let e = excerpt(&long);
        assert!(!e.contains('\n'));
        assert!(e.chars().count() <= 201);
    }

    #[test]
    fn body_summary_names_type_and_size_only() {
        let rows: &[(Option<&str>, usize, &str)] = &[
            (Some("text/html; charset=utf-8"), 1234, "text/html, 1234 bytes"),
            (Some(" Application/JSON "), 5, "application/json, 5 bytes"),
            (Some("application/atom+xml;type=entry;charset=utf-8"), 9, "application/atom+xml, 9 bytes"),
            (Some("text/html, LEAKED-BODY-MARKER"), 3, "unknown type, 3 bytes"),
            (Some("<b>x</b>"), 3, "unknown type, 3 bytes"),
            (Some(&"a".repeat(65)), 3, "unknown type, 3 bytes"),
            (Some(""), 3, "unknown type, 3 bytes"),
            (None, 7, "unknown type, 7 bytes"),
            (Some("text/html"), 0, "empty body"),
        ];
        for (ct, len, want) in rows {
            assert_eq!(body_summary(*ct, *len), *want, "{ct:?}");
        }
    }
}
