//! `prometheus`: one PromQL instant query, at parity with KEDA's built-in scaler
//! (`pkg/scalers/prometheus_scaler.go`, `pkg/scalers/authentication/authentication_types.go`,
//! read at keda `8b4f083`).
//!
//! # Metadata
//!
//! Every key is read as `<key>`, then `<key>FromEnv` (see [`crate::metadata`]); values are
//! trimmed and an empty value counts as missing, as in KEDA's `typed_config.go`. KEDA reads the
//! auth keys from a TriggerAuthentication, which it does not forward to external scalers, so
//! ebb reads them from the trigger metadata (normally as `bearerTokenFromEnv` and friends).
//!
//! | key | default | notes (and deviations from KEDA) |
//! |---|---|---|
//! | `serverAddress` | required | base URL of the Prometheus API. ebb requires `http`/`https` with a host, rejects user info, a query string or a fragment (KEDA pastes the string in front of `/api/v1/query` unchecked), and drops one trailing `/` |
//! | `query` | required | PromQL; must yield 0 or 1 sample |
//! | `threshold` | required | float, HPA target. **Deviation:** ebb rejects `<= 0` (KEDA passes it to the HPA, which cannot use it) |
//! | `activationThreshold` | `0` | float, may be negative; active when `value > activationThreshold` |
//! | `namespace` | none | sent as `&namespace=` (Thanos tenancy). ebb URL-escapes it; KEDA does not |
//! | `customHeaders` | none | `name=value,name=value`; the last of a repeated name wins (Go map). Values are treated as secrets |
//! | `queryParameters` | none | `key=value,key=value`, appended to the query URL, sorted by key (KEDA: map order). Not treated as secrets: use `customHeaders` for credentials |
//! | `ignoreNullValues` | `true` | empty result, empty value list, `NaN`, `±Inf` ⇒ `0`; `false` ⇒ poll error |
//! | `unsafeSsl` | `false` | skip server certificate verification |
//! | `timeout` | `3000` ms | Go duration (`5s`, `1500ms`) or whole milliseconds (KEDA's `KEDA_HTTP_DEFAULT_TIMEOUT` default). **Deviation:** ebb rejects `0` (KEDA then falls back to the default) and anything from 24 h up |
//! | `authModes` (`authMode`) | none | comma list of `bearer`, `basic`, `tls`, `custom`; `bearer` and `basic` are exclusive. ebb compares case-insensitively and ignores empty items; it rejects `oauth` and `apiKey`, which KEDA accepts but its prometheus scaler never applies |
//! | `bearerToken` (`token`) | required by `bearer` | sent as `Authorization: Bearer …` |
//! | `username`, `password` | `username` required by `basic` | `password` is optional, as in KEDA |
//! | `cert`, `key` | required by `tls` | PEM contents of the client certificate and its private key |
//! | `ca` | none | PEM CA bundle added to the system roots. **Deviation:** KEDA ignores `ca` unless `authModes` is set; ebb always uses it |
//! | `customAuthHeader`, `customAuthValue` | required by `custom` | one extra header. **Deviation:** KEDA applies only the first of bearer / basic / custom; ebb sends `custom` alongside the others |
//! | `rateQuery` | none | ebb only: a second query, evaluated in the same poll at the same time, whose value is the arrival rate (messages/s) for `policy: drain` (e.g. `sum(rate(orders_enqueued_total[1m]))`) |
//! | `azureManagedPrometheusResourceURL` | by host | token scope for Azure Monitor managed Prometheus (see below); setting it turns Azure auth on for any host |
//!
//! PEM values are checked at parse time, so a bad `ca`, `cert` or `key` is a config error
//! naming the key, not a failure at the first poll (KEDA fails when it builds the client);
//! whether `key` belongs to `cert` is checked when the client is built ([`Scaler::poller`]).
//! `awsRegion`/`identityOwner` (AWS SigV4) and GCP credentials are not supported.
//!
//! # Source key
//!
//! `prometheus|{json}` with everything that shapes the request or the reading of its answer:
//! the query URL, `query`, `namespace`, `queryParameters`, header names, auth modes (and the
//! Azure scope), `unsafeSsl`, `timeout`, `ignoreNullValues`, and one salted fingerprint of all
//! secret material (header values, tokens, passwords, PEMs). Thresholds are not in it, so
//! triggers that differ only by thresholds share one poll.
//!
//! # Azure Monitor managed Prometheus
//!
//! KEDA signs requests with Entra tokens when the TriggerAuthentication's pod identity is
//! `azure-workload`. External scalers do not get the pod identity, so ebb switches it on when
//! `authModes` is empty and the `serverAddress` host ends in `.prometheus.monitor.azure.com`,
//! `.azure.us` or `.azure.cn` (scope `https://prometheus.monitor.azure.{com,us,cn}/.default`,
//! KEDA's `azureManagedPrometheusResourceURLInCloud`), or when
//! `azureManagedPrometheusResourceURL` is set. ebb's own identity is used:
//! `WorkloadIdentityCredential` when `AZURE_FEDERATED_TOKEN_FILE` is set, else
//! `ManagedIdentityCredential` (user-assigned when `AZURE_CLIENT_ID` is set). Tokens are reused
//! until 60 s before they expire, as KEDA's round tripper does (the azure_identity credentials
//! also cache), and dropped when the server answers 401/403.
//!
//! # Answer
//!
//! `GET {serverAddress}/api/v1/query?query=…&time=<now, RFC 3339 UTC with milliseconds>
//! [&namespace=…][&k=v…]` (KEDA sends whole seconds). The body is read as KEDA reads it: only
//! `data.result` matters, `status` is not checked, more than one series is an error, the value
//! is `value[1]` parsed as a float. **Deviations:** ebb also reads `resultType: "scalar"` (KEDA
//! fails to decode it), rejects range vectors (`matrix`, which KEDA reads as an empty value,
//! i.e. a silent `0`), and treats a `null` sample like an empty one (KEDA returns `-1`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use crate::metadata::collect;
use crate::secret::{Fingerprint, Secret, check_certs};
use crate::trust::{AzureService, Held, IdentityUse};
use crate::{ConfigError, ConfigErrors, Evaluation, Measurement, Metadata, Poller, Scaler, ScalerContext, SourceKey};

use auth::{AZURE_RESOURCE_URL, Auth, auth, azure_scope};

mod auth;
mod poll;
#[cfg(test)]
mod tests;

pub use poll::interpret;

/// The trigger type name.
pub const SCALER_TYPE: &str = "prometheus";

/// KEDA's `KEDA_HTTP_DEFAULT_TIMEOUT` default (`pkg/util/http.go`), used when `timeout` is unset.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(3000);

/// KEDA's `ignoreNullValues` default (`default=true` in `prometheusMetadata`).
const DEFAULT_IGNORE_NULL_VALUES: bool = true;

/// Largest successful answer read. One sample is a few hundred bytes; a query that forgot its
/// aggregation can return megabytes, and is an error anyway.
const MAX_BODY: usize = 4 << 20;

/// Largest error answer read, for its `errorType` and ebb's log.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Metadata that parses (the registry's contract test runs it).
pub const EXAMPLE: &[(&str, &str)] = &[
    ("serverAddress", "http://prometheus.monitoring:9090"),
    ("query", "sum(rate(http_requests_total[1m]))"),
    ("threshold", "100"),
    ("authModes", "bearer"),
    ("bearerToken", "s3cr3t-token"),
];

/// Azure Monitor managed Prometheus hosts and token scopes, per cloud
/// (KEDA `pkg/scalers/azure/azure_managed_prometheus_http_round_tripper.go`).
const AZURE_PROMETHEUS_CLOUDS: &[(&str, &str)] = &[
    (".prometheus.monitor.azure.com", "https://prometheus.monitor.azure.com/.default"),
    (".prometheus.monitor.azure.us", "https://prometheus.monitor.azure.us/.default"),
    (".prometheus.monitor.azure.cn", "https://prometheus.monitor.azure.cn/.default"),
];

/// A parsed `prometheus` trigger. `Debug` never shows a secret.
#[derive(Debug)]
pub struct PrometheusScaler {
    /// `{serverAddress}/api/v1/query`.
    query_url: Url,
    query: String,
    /// `rateQuery`: the arrival rate, for `policy: drain`.
    rate_query: Option<String>,
    threshold: f64,
    activation_threshold: f64,
    namespace: Option<String>,
    /// Sorted by key, one entry per key.
    query_parameters: Vec<(String, String)>,
    ignore_null_values: bool,
    unsafe_ssl: bool,
    timeout: Duration,
    /// Custom headers, then the static auth header(s); values are marked sensitive.
    headers: HeaderMap,
    ca: Option<Pem>,
    client_tls: Option<ClientTls>,
    /// Token scope when Azure Monitor managed Prometheus auth is on.
    azure_scope: Option<String>,
    /// The scope came from `azureManagedPrometheusResourceURL` (errors name that key).
    azure_scope_from_metadata: bool,
    source_key: SourceKey,
}

/// A client certificate and its key, both PEM.
#[derive(Debug)]
struct ClientTls {
    cert: Pem,
    key: Secret,
}

/// Public PEM material; `Debug` prints its size only.
struct Pem(String);

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<PEM, {} bytes>", self.0.len())
    }
}

/// Parses a `prometheus` trigger. Pure and cheap: no client is built here.
pub fn parse(md: &Metadata<'_>) -> Result<Arc<dyn Scaler>, ConfigErrors> {
    Ok(Arc::new(parse_config(md)?))
}

fn parse_config(md: &Metadata<'_>) -> Result<PrometheusScaler, ConfigErrors> {
    let mut errs = ConfigErrors::default();

    let query_url = collect(&mut errs, md.required("serverAddress").and_then(query_url));
    let query = collect(&mut errs, md.required("query"));
    let threshold = collect(&mut errs, md.required("threshold").and_then(|_| positive_threshold(md)));
    let activation_threshold = collect(&mut errs, md.f64("activationThreshold")).flatten().unwrap_or(0.0);
    let namespace = md.get("namespace").map(str::to_owned);
    let query_parameters = collect(&mut errs, md.pairs("queryParameters").map(last_wins)).unwrap_or_default();
    let ignore_null_values =
        collect(&mut errs, md.bool("ignoreNullValues")).flatten().unwrap_or(DEFAULT_IGNORE_NULL_VALUES);
    let unsafe_ssl = collect(&mut errs, md.bool("unsafeSsl")).flatten().unwrap_or(false);
    let timeout = collect(&mut errs, timeout(md)).unwrap_or(DEFAULT_TIMEOUT);

    // Secret material goes into one fingerprint; labels say what kind of secret it was.
    let mut fp = Fingerprint::default();
    let mut headers = HeaderMap::new();
    for (name, value) in collect(&mut errs, custom_headers(md)).unwrap_or_default() {
        fp.add("header", name.as_str());
        fp.add("header-value", value.to_str().unwrap_or_default());
        headers.append(name, value);
    }
    let header_names: Vec<String> = headers.keys().map(|k| k.to_string()).collect();

    let auth = auth(md, &mut fp, &mut headers).unwrap_or_else(|e| {
        errs.0.extend(e.0);
        Auth::default()
    });

    let ca = match md.get("ca") {
        Some(pem) => collect(&mut errs, check_certs("ca", pem).map(|()| Pem(pem.to_owned()))),
        None => None,
    };
    if let Some(ca) = &ca {
        fp.add("ca", &ca.0);
    }
    if let Some(tls) = &auth.client_tls {
        fp.add("cert", &tls.cert.0);
        fp.add("key", &tls.key.0);
    }

    let azure_scope = match &query_url {
        Some(url) => collect(&mut errs, azure_scope(md, url, !auth.modes.is_empty())).flatten(),
        None => None,
    };
    // ebb's identity is never sent over a connection whose verification the metadata weakened
    // or re-rooted.
    if azure_scope.is_some() {
        if unsafe_ssl {
            errs.push(ConfigError::new("unsafeSsl", "cannot be combined with ebb's Azure identity"));
        }
        if ca.is_some() {
            errs.push(ConfigError::new("ca", "cannot be combined with ebb's Azure identity"));
        }
    }

    // A `None` above has always recorded an error.
    let (Some(query_url), Some(query), Some(threshold), true) = (query_url, query, threshold, errs.0.is_empty()) else {
        return Err(errs);
    };

    let mut auth_label: Vec<&str> = auth.modes.clone();
    let azure_label = azure_scope.as_ref().map(|s| format!("azure:{s}"));
    if let Some(a) = &azure_label {
        auth_label.push(a);
    }
    let key = serde_json::json!({
        "url": query_url.as_str(),
        "query": query,
        "rateQuery": md.get("rateQuery"),
        "namespace": namespace,
        "queryParameters": query_parameters,
        "headers": header_names,
        "auth": auth_label,
        "secrets": fp.finish(),
        "unsafeSsl": unsafe_ssl,
        "timeoutMs": timeout.as_millis() as u64,
        "ignoreNullValues": ignore_null_values,
    });

    Ok(PrometheusScaler {
        query_url,
        query: query.to_owned(),
        rate_query: md.get("rateQuery").map(str::to_owned),
        threshold,
        activation_threshold,
        namespace,
        query_parameters,
        ignore_null_values,
        unsafe_ssl,
        timeout,
        headers,
        ca,
        client_tls: auth.client_tls,
        azure_scope,
        azure_scope_from_metadata: md.get(AZURE_RESOURCE_URL).is_some(),
        source_key: SourceKey(format!("{SCALER_TYPE}|{key}")),
    })
}

/// `{serverAddress}/api/v1/query`, checked.
fn query_url(address: &str) -> Result<Url, ConfigError> {
    const KEY: &str = "serverAddress";
    // The address is not echoed: it could carry user info.
    let mut url = Url::parse(address).map_err(|e| ConfigError::new(KEY, format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(KEY, "must be an http:// or https:// URL with a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::new(
            KEY,
            "must not carry credentials; use authModes=basic with username and password",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(KEY, "must not have a query string or fragment; use queryParameters"));
    }
    let path = format!("{}/api/v1/query", url.path().strip_suffix('/').unwrap_or(url.path()));
    url.set_path(&path);
    Ok(url)
}

/// `threshold`, which must be a number above 0.
fn positive_threshold(md: &Metadata<'_>) -> Result<f64, ConfigError> {
    match md.f64("threshold")? {
        Some(t) if t > 0.0 => Ok(t),
        Some(t) => Err(ConfigError::new(
            "threshold",
            format!("must be greater than 0 (got {t}); the HPA cannot use a target of 0 or less"),
        )),
        None => Err(ConfigError::missing("threshold")),
    }
}

/// `timeout` as KEDA reads a `time.Duration` field (`typed_config.go`): a Go duration string
/// first, else whole milliseconds; negative is an error. ebb also rejects 0.
fn timeout(md: &Metadata<'_>) -> Result<Duration, ConfigError> {
    const KEY: &str = "timeout";
    let Some(v) = md.get(KEY) else {
        return Ok(DEFAULT_TIMEOUT);
    };
    let secs = match go_duration_secs(v) {
        Some(s) => s,
        None => match v.parse::<i64>() {
            Ok(ms) => ms as f64 / 1000.0,
            Err(_) => {
                return Err(ConfigError::new(
                    KEY,
                    format!("{v:?} is neither a duration (\"5s\", \"1500ms\") nor a number of milliseconds"),
                ));
            }
        },
    };
    if secs <= 0.0 {
        return Err(ConfigError::new(KEY, format!("{v:?} must be greater than 0")));
    }
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| *d < Duration::from_secs(86_400))
        .ok_or_else(|| ConfigError::new(KEY, format!("{v:?} is too long")))
}

/// Go's `time.ParseDuration`, in (signed) seconds: `[-+]` then one or more
/// `<decimal><unit>` with units `ns us µs μs ms s m h`, or a bare `0`.
fn go_duration_secs(s: &str) -> Option<f64> {
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(n);
        if !number.bytes().any(|b| b.is_ascii_digit()) || number.matches('.').count() > 1 {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let u = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(u);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = tail;
    }
    Some(if negative { -total } else { total })
}

/// A Go map built from `k=v` pairs keeps the last value of a repeated key; sorted by key.
fn last_wins(pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    let map: std::collections::BTreeMap<_, _> = pairs.into_iter().collect();
    map.into_iter().collect()
}

/// `customHeaders` as header names and sensitive values, sorted by name.
fn custom_headers(md: &Metadata<'_>) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
    const KEY: &str = "customHeaders";
    let mut out: Vec<(HeaderName, HeaderValue)> = Vec::new();
    for (name, value) in md.pairs(KEY)? {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ConfigError::new(KEY, format!("{name:?} is not a valid HTTP header name")))?;
        let value = sensitive_header(&value)
            .ok_or_else(|| ConfigError::new(KEY, format!("the value of {name} is not a valid HTTP header value")))?;
        out.retain(|(n, _)| *n != name);
        out.push((name, value));
    }
    out.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    Ok(out)
}

fn sensitive_header(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

impl Scaler for PrometheusScaler {
    fn scaler_type(&self) -> &'static str {
        SCALER_TYPE
    }

    fn source_key(&self) -> &SourceKey {
        &self.source_key
    }

    fn target(&self) -> f64 {
        self.threshold
    }

    fn poll_timeout(&self) -> Duration {
        self.timeout
    }

    fn evaluate(&self, m: &Measurement) -> Evaluation {
        let v = m.scalar();
        Evaluation { metric: v, active: v > self.activation_threshold }
    }

    fn poller(&self, ctx: &Arc<ScalerContext>) -> Result<Arc<dyn Poller>, ConfigErrors> {
        Ok(Arc::new(self.build_poller(ctx, None)?))
    }

    fn counters(&self, m: &Measurement) -> crate::Counters {
        match m {
            Measurement::Rated { rate, .. } => crate::Counters { arrival_rate: Some(*rate), ..Default::default() },
            _ => crate::Counters::default(),
        }
    }

    fn held(&self) -> Vec<Held> {
        let Some(scope) = &self.azure_scope else { return Vec::new() };
        vec![Held::Identity(IdentityUse {
            service: AzureService::Monitor,
            url: self.query_url.to_string(),
            entity: String::new(),
            audience: scope.clone(),
            host_key: "serverAddress",
            audience_key: self.azure_scope_from_metadata.then_some(AZURE_RESOURCE_URL),
        })]
    }
}
