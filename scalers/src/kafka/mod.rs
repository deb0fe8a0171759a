//! `kafka`: consumer-group lag, at parity with KEDA's built-in `kafka` scaler
//! (`pkg/scalers/kafka_scaler.go`).
//!
//! # Metadata
//!
//! Every key is read as `<key>`, then `<key>FromEnv` (see [`crate::metadata`]). Keys KEDA takes
//! from a TriggerAuthentication (`sasl`, `username`, `password`, `tls`, `ca`, `cert`, `key`,
//! `keyPassword`, …) arrive merged into the metadata when the trigger has an `authenticationRef`.
//!
//! | key | default | notes (and deviations from KEDA) |
//! |---|---|---|
//! | `bootstrapServers` | required | comma list `host:port` |
//! | `consumerGroup` | required | |
//! | `topic` | all | empty: every topic the group has committed offsets for |
//! | `lagThreshold` | `10` | HPA target; must be > 0 |
//! | `activationLagThreshold` | `0` | active when the lag **with** persistent lag `>` this; must be ≥ 0 |
//! | `offsetResetPolicy` | `latest` | `latest` / `earliest`: lag of a partition without a committed offset |
//! | `allowIdleConsumers` | `false` | `true`: no cap at the partition count |
//! | `excludePersistentLag` | `false` | a partition whose committed offset did not move since the previous poll adds 0 to the metric (activation still counts it) |
//! | `scaleToZeroOnInvalidOffset` | `false` | a partition without a committed offset adds 0 |
//! | `limitToPartitionsWithLag` | `false` | cap at the partitions with lag; needs `topic`; not with `allowIdleConsumers` |
//! | `ensureEvenDistributionOfPartitions` | `false` | metric rounded up to a divisor of the partition count × `lagThreshold`; needs `topic`; not with `limitToPartitionsWithLag` |
//! | `partitionLimitation` | all | `"1,2,10-20"`; ignored without `topic` |
//! | `fullMetadata` | `true` | accepted for parity (`false` needs `topic`); ebb always asks metadata for the topics it needs only |
//! | `version` | — | accepted and checked (`x.y.z`); librdkafka negotiates protocol versions itself |
//! | `tls` | `disable` | `enable` / `disable`; `ca`, `cert`, `key`, `keyPassword` (PEM), `unsafeSsl` |
//! | `sasl` | `none` | `plaintext`, `scram_sha256`, `scram_sha512`, `oauthbearer` with `username`, `password`; **`gssapi` is refused** (no Kerberos in ebb's librdkafka) |
//! | `saslTokenProvider` | `bearer` | OAUTHBEARER: `bearer` (client credentials at `oauthTokenEndpointUri`, `scopes`, `oauthExtensions` `k=v,…`); **`aws_msk_iam` is refused** |
//!
//! # Formula
//!
//! Per partition: no committed offset ⇒ `latest` policy 1, `earliest` policy the log-end
//! offset (0 with `scaleToZeroOnInvalidOffset`); else `logEnd − committed`, **clamped at 0**
//! (KEDA lets a negative lag through). Summed over partitions, then capped at
//! `partitions × lagThreshold` (integer division, as KEDA) unless `allowIdleConsumers`. See
//! [`total_lag`].
//!
//! # Requests
//!
//! Per poll: Metadata for the topic (or, without `topic`, OffsetFetch for all of the group's
//! partitions first, then Metadata for those topics only), then OffsetFetch and ListOffsets
//! (latest) **concurrently**. One librdkafka client per distinct (bootstrap servers,
//! credentials) is shared by every group and trigger; one poll per distinct
//! (cluster, group, topic, partition limitation) is shared by every trigger.
//!
//! # Source key
//!
//! `kafka|<servers>|<credential fingerprint>|<group>|<topic or *>|<partitions or all>`.

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::metadata::collect;
use crate::secret::{Secret, check_certs, check_key, fingerprint};
use crate::{
    ConfigError, ConfigErrors, Evaluation, Measurement, Metadata, PollError, Poller, Scaler, ScalerContext, SourceKey,
};

#[cfg(feature = "kafka")]
mod client;

/// The trigger type name.
pub const SCALER_TYPE: &str = "kafka";
/// KEDA's `lagThreshold` default.
pub const DEFAULT_LAG_THRESHOLD: i64 = 10;
/// Per broker request (Metadata, OffsetFetch, ListOffsets).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
/// A poll is at most three rounds of requests.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(9);
/// `partitionLimitation` ranges wider than this are refused (KEDA would expand them in memory).
const MAX_LIMITATION_SPAN: i64 = 1 << 20;

/// Metadata that parses (the registry's contract test runs it).
pub const EXAMPLE: &[(&str, &str)] = &[
    ("bootstrapServers", "kafka-0.kafka:9092,kafka-1.kafka:9092"),
    ("consumerGroup", "orders"),
    ("topic", "orders"),
    ("lagThreshold", "10"),
    ("sasl", "plaintext"),
    ("username", "ebb"),
    ("password", "s3cr3t"),
];

// ---------------------------------------------------------------------------------------------
// Formula (pure)
// ---------------------------------------------------------------------------------------------

/// One partition as a poll saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub topic: Arc<str>,
    pub partition: i32,
    /// The group's committed offset; `None` when nothing is committed.
    pub committed: Option<i64>,
    /// Log-end offset (ListOffsets latest, the high watermark).
    pub latest: i64,
    /// The committed offset equals the one the previous poll saw (`excludePersistentLag`).
    pub unchanged: bool,
}

/// `offsetResetPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Latest,
    Earliest,
}

/// One trigger's lag rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagRules {
    pub lag_threshold: i64,
    pub activation_lag_threshold: i64,
    pub offset_reset: OffsetReset,
    pub allow_idle_consumers: bool,
    pub exclude_persistent_lag: bool,
    pub scale_to_zero_on_invalid_offset: bool,
    pub limit_to_partitions_with_lag: bool,
    pub ensure_even_distribution: bool,
}

impl Default for LagRules {
    fn default() -> Self {
        Self {
            lag_threshold: DEFAULT_LAG_THRESHOLD,
            activation_lag_threshold: 0,
            offset_reset: OffsetReset::Latest,
            allow_idle_consumers: false,
            exclude_persistent_lag: false,
            scale_to_zero_on_invalid_offset: false,
            limit_to_partitions_with_lag: false,
            ensure_even_distribution: false,
        }
    }
}

/// KEDA's `getLagForPartition`: `(lag for the metric, lag for activation)`.
pub fn partition_lag(p: &PartitionOffsets, r: &LagRules) -> (i64, i64) {
    let Some(committed) = p.committed else {
        let lag = match (r.offset_reset, r.scale_to_zero_on_invalid_offset) {
            (_, true) => 0,
            (OffsetReset::Latest, false) => 1,
            (OffsetReset::Earliest, false) => p.latest.max(0),
        };
        return (lag, lag);
    };
    // ebb: a committed offset past the log end (truncated or recreated topic) is no lag.
    let lag = p.latest.saturating_sub(committed).max(0);
    if r.exclude_persistent_lag && p.unchanged { (0, lag) } else { (lag, lag) }
}

/// KEDA's `getTotalLag`: `(metric, lag for activation)` over the partitions of one poll.
pub fn total_lag(parts: &[PartitionOffsets], r: &LagRules) -> (i64, i64) {
    let (mut total, mut with_persistent, mut with_lag) = (0i64, 0i64, 0i64);
    for p in parts {
        let (lag, lag_p) = partition_lag(p, r);
        total = total.saturating_add(lag);
        with_persistent = with_persistent.saturating_add(lag_p);
        if lag > 0 {
            with_lag += 1;
        }
    }
    let partitions = parts.len() as i64;
    let threshold = r.lag_threshold.max(1);
    if !r.allow_idle_consumers || r.limit_to_partitions_with_lag || r.ensure_even_distribution {
        if r.ensure_even_distribution {
            total = even_factor(total, partitions, threshold).saturating_mul(threshold);
        }
        let upper = if r.limit_to_partitions_with_lag { with_lag } else { partitions };
        if total / threshold > upper {
            total = upper.saturating_mul(threshold);
        }
    }
    (total, with_persistent)
}

/// KEDA's `getNextFactorThatBalancesConsumersToTopicPartitions`: the smallest divisor `f` of
/// `partitions` with `f × threshold ≥ lag`, else `partitions`.
pub fn even_factor(lag: i64, partitions: i64, threshold: i64) -> i64 {
    let mut small = Vec::new();
    let mut large = Vec::new();
    let mut i = 1;
    while i * i <= partitions {
        if partitions % i == 0 {
            small.push(i);
            if i != partitions / i {
                large.push(partitions / i);
            }
        }
        i += 1;
    }
    small.into_iter().chain(large.into_iter().rev()).find(|f| f.saturating_mul(threshold) >= lag).unwrap_or(partitions)
}

/// Parses `partitionLimitation` (`"1,2,10-20"`) as KEDA's `parsePartitionLimitation` does: a
/// range with start > end selects nothing.
pub fn parse_partition_limitation(s: &str) -> Result<Vec<RangeInclusive<i32>>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let num = |v: &str| v.trim().parse::<i32>().map_err(|_| format!("invalid partition limitation: {part}"));
        if part.contains('-') {
            let bounds: Vec<&str> = part.split('-').collect();
            if bounds.len() != 2 {
                return Err(format!("invalid partition limitation range: {part}"));
            }
            let (start, end) = (num(bounds[0])?, num(bounds[1])?);
            if i64::from(end) - i64::from(start) > MAX_LIMITATION_SPAN {
                return Err(format!("partition limitation range too wide: {part}"));
            }
            out.push(start..=end);
        } else {
            let n = num(part)?;
            out.push(n..=n);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// How to reach the cluster. `Debug` never prints a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub bootstrap_servers: Vec<String>,
    pub tls: Option<Tls>,
    pub sasl: Option<Sasl>,
}

/// `tls: enable`.
#[derive(Clone, PartialEq, Eq)]
pub struct Tls {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub key_password: Option<String>,
    pub unsafe_ssl: bool,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca.is_some())
            .field("cert", &self.cert.is_some())
            .field("key", &self.key.as_ref().map(|_| Secret(String::new())))
            .field("unsafe_ssl", &self.unsafe_ssl)
            .finish()
    }
}

/// SASL mechanism and its credentials.
#[derive(Clone, PartialEq, Eq)]
pub enum Sasl {
    Plain { username: String, password: String },
    ScramSha256 { username: String, password: String },
    ScramSha512 { username: String, password: String },
    OAuthBearer(OAuth),
}

impl fmt::Debug for Sasl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mechanism())
    }
}

impl Sasl {
    /// librdkafka's `sasl.mechanism`.
    pub fn mechanism(&self) -> &'static str {
        match self {
            Sasl::Plain { .. } => "PLAIN",
            Sasl::ScramSha256 { .. } => "SCRAM-SHA-256",
            Sasl::ScramSha512 { .. } => "SCRAM-SHA-512",
            Sasl::OAuthBearer(_) => "OAUTHBEARER",
        }
    }
}

/// OAUTHBEARER with KEDA's `bearer` token provider: OAuth 2 client credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuth {
    pub client_id: String,
    pub client_secret: String,
    pub token_url: Url,
    pub scopes: Vec<String>,
    pub extensions: Vec<(String, String)>,
}

impl Connection {
    /// Identity of the client: servers plus a fingerprint of every security setting.
    pub fn key(&self) -> String {
        let secret = format!("{:?}", (self.tls.as_ref().map(Tls::material), self.sasl.as_ref().map(Sasl::material)));
        format!("{}|{}", self.bootstrap_servers.join(","), fingerprint(&secret))
    }
}

impl Tls {
    fn material(&self) -> (&Option<String>, &Option<String>, &Option<String>, &Option<String>, bool) {
        (&self.ca, &self.cert, &self.key, &self.key_password, self.unsafe_ssl)
    }
}

impl Sasl {
    fn material(&self) -> String {
        match self {
            Sasl::Plain { username, password }
            | Sasl::ScramSha256 { username, password }
            | Sasl::ScramSha512 { username, password } => format!("{}\0{username}\0{password}", self.mechanism()),
            Sasl::OAuthBearer(o) => format!(
                "oauth\0{}\0{}\0{}\0{:?}\0{:?}",
                o.client_id, o.client_secret, o.token_url, o.scopes, o.extensions
            ),
        }
    }
}

/// A parsed `kafka` trigger.
#[derive(Debug)]
pub struct KafkaScaler {
    rules: LagRules,
    source_key: SourceKey,
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    target: Arc<PollTarget>,
}

/// What one poll reads.
#[derive(Debug)]
pub struct PollTarget {
    pub connection: Connection,
    pub group: String,
    /// `None`: every topic the group has committed offsets for.
    pub topic: Option<String>,
    /// `partitionLimitation` (only with a topic).
    pub partitions: Option<Vec<RangeInclusive<i32>>>,
}

impl PollTarget {
    /// KEDA's `isActivePartition`.
    pub fn wants(&self, partition: i32) -> bool {
        self.partitions.as_ref().is_none_or(|ranges| ranges.iter().any(|r| r.contains(&partition)))
    }
}

/// Parses a `kafka` trigger. Pure and cheap.
pub fn parse(md: &Metadata<'_>) -> Result<Arc<dyn Scaler>, ConfigErrors> {
    Ok(Arc::new(parse_config(md)?))
}

fn flag(errs: &mut ConfigErrors, md: &Metadata<'_>, key: &str) -> bool {
    collect(errs, md.bool(key)).flatten().unwrap_or(false)
}

pub fn parse_config(md: &Metadata<'_>) -> Result<KafkaScaler, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    let servers = collect(&mut errs, md.required("bootstrapServers"))
        .map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>());
    let group = collect(&mut errs, md.required("consumerGroup")).map(str::to_owned);
    let topic = md.get("topic").map(str::to_owned);

    let lag_threshold = match collect(&mut errs, md.i64("lagThreshold")).flatten() {
        None => DEFAULT_LAG_THRESHOLD,
        Some(n) if n > 0 => n,
        Some(_) => {
            errs.push(ConfigError::new("lagThreshold", "\"lagThreshold\" must be positive number"));
            DEFAULT_LAG_THRESHOLD
        }
    };
    let activation_lag_threshold = match collect(&mut errs, md.i64("activationLagThreshold")).flatten() {
        Some(n) if n < 0 => {
            errs.push(ConfigError::new(
                "activationLagThreshold",
                "\"activationLagThreshold\" must be a non-negative number",
            ));
            0
        }
        n => n.unwrap_or(0),
    };
    let offset_reset = match collect(&mut errs, md.one_of("offsetResetPolicy", &["latest", "earliest"])).flatten() {
        Some("earliest") => OffsetReset::Earliest,
        _ => OffsetReset::Latest,
    };
    let rules = LagRules {
        lag_threshold,
        activation_lag_threshold,
        offset_reset,
        allow_idle_consumers: flag(&mut errs, md, "allowIdleConsumers"),
        exclude_persistent_lag: flag(&mut errs, md, "excludePersistentLag"),
        scale_to_zero_on_invalid_offset: flag(&mut errs, md, "scaleToZeroOnInvalidOffset"),
        limit_to_partitions_with_lag: flag(&mut errs, md, "limitToPartitionsWithLag"),
        ensure_even_distribution: flag(&mut errs, md, "ensureEvenDistributionOfPartitions"),
    };
    let full_metadata = collect(&mut errs, md.bool("fullMetadata")).flatten().unwrap_or(true);

    let partitions = match md.get("partitionLimitation") {
        Some(s) => {
            collect(&mut errs, parse_partition_limitation(s).map_err(|r| ConfigError::new("partitionLimitation", r)))
        }
        None => None,
    };
    // KEDA: "if m.Topic == "" { m.PartitionLimitation = nil }".
    let partitions = if topic.is_some() { partitions } else { None };

    // KEDA's Validate, in its order.
    if rules.allow_idle_consumers && rules.limit_to_partitions_with_lag {
        errs.push(ConfigError::new(
            "limitToPartitionsWithLag",
            "allowIdleConsumers and limitToPartitionsWithLag cannot be set simultaneously",
        ));
    }
    if topic.is_none() && rules.limit_to_partitions_with_lag {
        errs.push(ConfigError::new(
            "limitToPartitionsWithLag",
            "topic must be specified when using limitToPartitionsWithLag",
        ));
    }
    if rules.limit_to_partitions_with_lag && rules.ensure_even_distribution {
        errs.push(ConfigError::new(
            "ensureEvenDistributionOfPartitions",
            "limitToPartitionsWithLag and ensureEvenDistributionOfPartitions cannot be set simultaneously",
        ));
    }
    if topic.is_none() && rules.ensure_even_distribution {
        errs.push(ConfigError::new(
            "ensureEvenDistributionOfPartitions",
            "topic must be specified when using ensureEvenDistributionOfPartitions",
        ));
    }
    if !full_metadata && topic.is_none() {
        errs.push(ConfigError::new("fullMetadata", "topic must be specified when fullMetadata is false"));
    }
    if let Some(v) = md.get("version")
        && (v.split('.').count() < 2 || v.split('.').any(|n| n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit())))
    {
        errs.push(ConfigError::new("version", format!("{v:?} is not a Kafka version (x.y.z)")));
    }
    let tls = collect(&mut errs, parse_tls(md)).flatten();
    let sasl = collect(&mut errs, parse_sasl(md)).flatten();

    if let Some(servers) = &servers
        && servers.is_empty()
    {
        errs.push(ConfigError::new("bootstrapServers", "names no server"));
    }
    errs.into_result()?;
    // Both are `Some` here (a missing key was recorded above); no panic path either way.
    let (Some(bootstrap_servers), Some(group)) = (servers, group) else {
        return Err(ConfigError::missing("bootstrapServers").into());
    };
    let connection = Connection { bootstrap_servers, tls, sasl };
    let limitation = partitions
        .as_ref()
        .map(|ranges| ranges.iter().map(|r| format!("{}-{}", r.start(), r.end())).collect::<Vec<_>>().join(","));
    let source_key = SourceKey(format!(
        "{SCALER_TYPE}|{}|{group}|{}|{}",
        connection.key(),
        topic.as_deref().unwrap_or("*"),
        limitation.as_deref().unwrap_or("all"),
    ));
    Ok(KafkaScaler { rules, source_key, target: Arc::new(PollTarget { connection, group, topic, partitions }) })
}

fn parse_tls(md: &Metadata<'_>) -> Result<Option<Tls>, ConfigError> {
    if md.one_of("tls", &["enable", "disable"])? != Some("enable") {
        return Ok(None);
    }
    let pem = |k: &str| md.get_untrimmed(k).map(|v| v.trim().to_owned());
    let (ca, cert, key, key_password) = (pem("ca"), pem("cert"), pem("key"), md.get_untrimmed("keyPassword"));
    match (&cert, &key) {
        (Some(_), None) => return Err(ConfigError::new("key", "key must be provided with cert")),
        (None, Some(_)) => return Err(ConfigError::new("cert", "cert must be provided with key")),
        _ => {}
    }
    if let Some(ca) = &ca {
        check_certs("ca", ca)?;
    }
    if let Some(cert) = &cert {
        check_certs("cert", cert)?;
    }
    // An encrypted key is checked by librdkafka when it decrypts it.
    if let (Some(key), None) = (&key, key_password) {
        check_key(key)?;
    }
    Ok(Some(Tls {
        ca,
        cert,
        key,
        key_password: key_password.map(str::to_owned),
        unsafe_ssl: md.bool("unsafeSsl")?.unwrap_or(false),
    }))
}

fn parse_sasl(md: &Metadata<'_>) -> Result<Option<Sasl>, ConfigError> {
    let mode = md.one_of("sasl", &["none", "plaintext", "scram_sha256", "scram_sha512", "oauthbearer", "gssapi"])?;
    let credentials = || -> Result<(String, String), ConfigError> {
        let username = md.get("username").ok_or_else(|| ConfigError::new("username", "no username given"))?;
        let password = md.get_untrimmed("password").ok_or_else(|| ConfigError::new("password", "no password given"))?;
        Ok((username.to_owned(), password.to_owned()))
    };
    Ok(match mode {
        None | Some("none") => None,
        Some("plaintext") => credentials().map(|(username, password)| Some(Sasl::Plain { username, password }))?,
        Some("scram_sha256") => {
            credentials().map(|(username, password)| Some(Sasl::ScramSha256 { username, password }))?
        }
        Some("scram_sha512") => {
            credentials().map(|(username, password)| Some(Sasl::ScramSha512 { username, password }))?
        }
        Some("oauthbearer") => {
            if md.one_of("saslTokenProvider", &["bearer", "aws_msk_iam"])? == Some("aws_msk_iam") {
                return Err(ConfigError::new("saslTokenProvider", "aws_msk_iam is not supported by ebb"));
            }
            let (client_id, client_secret) = credentials()?;
            let uri = md
                .get("oauthTokenEndpointUri")
                .ok_or_else(|| ConfigError::new("oauthTokenEndpointUri", "no oauth token endpoint uri given"))?;
            let token_url = Url::parse(uri)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| ConfigError::new("oauthTokenEndpointUri", "is not an http(s) URL"))?;
            let scopes = md
                .get("scopes")
                .map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
                .unwrap_or_default();
            let mut extensions = Vec::new();
            for ext in md.get("oauthExtensions").into_iter().flat_map(|s| s.split(',')) {
                let kv: Vec<&str> = ext.split('=').collect();
                if kv.len() != 2 {
                    return Err(ConfigError::new(
                        "oauthExtensions",
                        "invalid OAuthBearer extension, must be of format key=value",
                    ));
                }
                extensions.push((kv[0].to_owned(), kv[1].to_owned()));
            }
            Some(Sasl::OAuthBearer(OAuth { client_id, client_secret, token_url, scopes, extensions }))
        }
        Some(_) => {
            return Err(ConfigError::new(
                "sasl",
                "gssapi is not supported by ebb (its librdkafka is built without Kerberos)",
            ));
        }
    })
}

impl Scaler for KafkaScaler {
    fn scaler_type(&self) -> &'static str {
        SCALER_TYPE
    }

    fn source_key(&self) -> &SourceKey {
        &self.source_key
    }

    fn target(&self) -> f64 {
        self.rules.lag_threshold as f64
    }

    fn poll_timeout(&self) -> Duration {
        POLL_TIMEOUT
    }

    fn evaluate(&self, m: &Measurement) -> Evaluation {
        let (metric, with_persistent) = match m {
            Measurement::Offsets(parts) => total_lag(parts, &self.rules),
            other => (other.scalar() as i64, other.scalar() as i64),
        };
        Evaluation { metric: metric as f64, active: with_persistent > self.rules.activation_lag_threshold }
    }

    /// Σ log-end and Σ committed offsets over the partitions that have a commit (a partition
    /// without one has no processed count to compare); at most one consumer per partition
    /// unless `allowIdleConsumers`.
    fn counters(&self, m: &Measurement) -> crate::Counters {
        let Measurement::Offsets(parts) = m else { return crate::Counters::default() };
        let (mut arrivals, mut processed) = (0.0, 0.0);
        for p in parts.iter() {
            if let Some(c) = p.committed.filter(|c| *c >= 0) {
                arrivals += p.latest.max(c) as f64;
                processed += c as f64;
            }
        }
        crate::Counters {
            arrivals: Some(arrivals),
            processed: Some(processed),
            max_consumers: (!self.rules.allow_idle_consumers).then_some(parts.len() as u32),
            arrival_rate: None,
        }
    }

    #[cfg(feature = "kafka")]
    fn poller(&self, ctx: &Arc<ScalerContext>) -> Result<Arc<dyn Poller>, ConfigErrors> {
        client::poller(ctx, self.target.clone())
    }

    #[cfg(not(feature = "kafka"))]
    fn poller(&self, _ctx: &Arc<ScalerContext>) -> Result<Arc<dyn Poller>, ConfigErrors> {
        Err(ConfigError::new("scalerType", "this ebb was built without the `kafka` feature").into())
    }
}

// ---------------------------------------------------------------------------------------------
// OAUTHBEARER token (client credentials)
// ---------------------------------------------------------------------------------------------

/// A token for librdkafka: the value and its expiry in ms since the Unix epoch.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken {
    pub value: String,
    pub expires_at_ms: i64,
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BearerToken(***, expires at {} ms)", self.expires_at_ms)
    }
}

/// OAuth 2 client-credentials grant, as golang.org/x/oauth2/clientcredentials sends it (client
/// id and secret in Basic auth, scopes space-separated). Errors never carry the secret.
pub async fn fetch_token(http: &reqwest::Client, o: &OAuth, now_ms: i64) -> Result<BearerToken, PollError> {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if !o.scopes.is_empty() {
        form.append_pair("scope", &o.scopes.join(" "));
    }
    let resp = http
        .post(o.token_url.clone())
        .basic_auth(&o.client_id, Some(&o.client_secret))
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form.finish())
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| PollError::Connect(format!("token endpoint: {}", crate::excerpt(&e.without_url().to_string()))))?;
    let status = resp.status().as_u16();
    let content_type =
        resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = resp.text().await.map_err(|e| PollError::Malformed(format!("token endpoint: {e}")))?;
    let summary = crate::body_summary(content_type.as_deref(), body.len());
    if !(200..300).contains(&status) {
        // The caller chose `tokenUrl`: the answer may be any internal page. Only the RFC 6749
        // error code (`invalid_client`) when it is one, the type and the size.
        tracing::debug!(scaler = SCALER_TYPE, status, detail = %crate::excerpt(&body), "token endpoint returned an error");
        let code = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| {
            v.get("error")
                .and_then(serde_json::Value::as_str)
                .filter(|c| !c.is_empty() && c.len() <= 32 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
                .map(str::to_owned)
        });
        let detail = match code {
            Some(code) => format!("token endpoint: {code} ({summary})"),
            None => format!("token endpoint: {summary}"),
        };
        return Err(if status == 401 || status == 403 {
            PollError::Auth { status, detail }
        } else {
            PollError::Http { status, detail }
        });
    }
    #[derive(serde::Deserialize)]
    struct TokenResponse {
        access_token: String,
        expires_in: Option<i64>,
    }
    let t: TokenResponse = serde_json::from_str(&body)
        .map_err(|_| PollError::Malformed(format!("token endpoint: no access_token in the answer ({summary})")))?;
    let ttl_ms = t.expires_in.unwrap_or(3600).clamp(1, 86_400) * 1000;
    Ok(BearerToken { value: t.access_token, expires_at_ms: now_ms + ttl_ms })
}

#[cfg(test)]
mod tests;
