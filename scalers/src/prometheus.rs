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
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use sha2::{Digest, Sha256};
use url::Url;

use crate::trust::{AzureService, Held, IdentityUse};

use crate::metadata::collect;
use crate::{
    ConfigError, ConfigErrors, Evaluation, Measurement, Metadata, PollError, Poller, Scaler, SourceKey, excerpt,
};

/// The trigger type name.
pub const SCALER_TYPE: &str = "prometheus";

/// KEDA's `KEDA_HTTP_DEFAULT_TIMEOUT` default (`pkg/util/http.go`), used when `timeout` is unset.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(3000);

/// KEDA's `ignoreNullValues` default (`default=true` in `prometheusMetadata`).
const DEFAULT_IGNORE_NULL_VALUES: bool = true;

/// A token is refreshed when it expires within this margin (KEDA's round tripper: 60 s).
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// Largest successful answer read. One sample is a few hundred bytes; a query that forgot its
/// aggregation can return megabytes, and is an error anyway.
const MAX_BODY: usize = 4 << 20;

/// Largest error answer read, for its `errorType` and ebb's log.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Azure Monitor managed Prometheus hosts and token scopes, per cloud
/// (KEDA `pkg/scalers/azure/azure_managed_prometheus_http_round_tripper.go`).
const AZURE_PROMETHEUS_CLOUDS: &[(&str, &str)] = &[
    (".prometheus.monitor.azure.com", "https://prometheus.monitor.azure.com/.default"),
    (".prometheus.monitor.azure.us", "https://prometheus.monitor.azure.us/.default"),
    (".prometheus.monitor.azure.cn", "https://prometheus.monitor.azure.cn/.default"),
];

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

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

/// A secret string; `Debug` prints `***`.
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
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
    let mut fp = Fingerprint::new();
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

/// What `authModes` turned on.
#[derive(Default)]
struct Auth {
    /// The modes, in a fixed order (`bearer`, `basic`, `tls`, `custom`).
    modes: Vec<&'static str>,
    client_tls: Option<ClientTls>,
}

const AUTH_MODES: &[&str] = &["bearer", "basic", "tls", "custom"];

/// Reads `authModes` and each mode's keys (KEDA `authentication.Config.Validate`); adds the
/// static auth headers to `headers` and the secrets to `fp`. Every problem is reported.
fn auth(md: &Metadata<'_>, fp: &mut Fingerprint, headers: &mut HeaderMap) -> Result<Auth, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    let modes_key = if md.get("authModes").is_some() { "authModes" } else { "authMode" };
    let mut modes: Vec<&'static str> = Vec::new();
    for item in md.get(modes_key).unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match AUTH_MODES.iter().find(|m| m.eq_ignore_ascii_case(item)) {
            Some(m) => modes.push(m),
            None if item.eq_ignore_ascii_case("oauth") || item.eq_ignore_ascii_case("apiKey") => {
                errs.push(ConfigError::new(modes_key, format!("{item:?} is not supported by ebb's prometheus scaler")))
            }
            None => errs.push(ConfigError::new(modes_key, format!("{item:?} is not one of {}", AUTH_MODES.join(", ")))),
        }
    }
    modes.sort_by_key(|m| AUTH_MODES.iter().position(|a| a == m));
    modes.dedup();
    let on = |m: &str| modes.contains(&m);
    if on("bearer") && on("basic") {
        // KEDA: `exclusiveSet=bearer;basic;oauth`.
        errs.push(ConfigError::new(modes_key, "bearer and basic cannot be combined"));
    }

    if on("bearer") {
        let key = if md.get("bearerToken").is_some() { "bearerToken" } else { "token" };
        match md.get(key) {
            None => errs.push(ConfigError::new("bearerToken", "required when authModes includes bearer")),
            Some(token) => match sensitive_header(&format!("Bearer {token}")) {
                None => errs.push(ConfigError::new(key, "contains characters not allowed in an HTTP header")),
                Some(v) => {
                    fp.add("bearer", token);
                    headers.insert(AUTHORIZATION, v);
                }
            },
        }
    }
    if on("basic") {
        match md.get("username") {
            None => errs.push(ConfigError::new("username", "required when authModes includes basic")),
            Some(user) => {
                // Go's `SetBasicAuth(user, "")` when no password is given, as KEDA allows.
                let password = md.get("password").unwrap_or_default();
                let encoded = azure_core::base64::encode(format!("{user}:{password}"));
                let v = sensitive_header(&format!("Basic {encoded}")).expect("base64 is a valid header value");
                fp.add("username", user);
                fp.add("password", password);
                headers.insert(AUTHORIZATION, v);
            }
        }
    }
    let mut client_tls = None;
    if on("tls") {
        let cert = md.get("cert");
        let key = md.get("key");
        if cert.is_none() {
            errs.push(ConfigError::new("cert", "required when authModes includes tls"));
        }
        if key.is_none() {
            errs.push(ConfigError::new("key", "required when authModes includes tls"));
        }
        let cert_ok = cert.map(|c| check_certs("cert", c).map_err(|e| errs.push(e)).is_ok());
        let key_ok = key.map(|k| check_key(k).map_err(|e| errs.push(e)).is_ok());
        if let (Some(cert), Some(key), Some(true), Some(true)) = (cert, key, cert_ok, key_ok) {
            client_tls = Some(ClientTls { cert: Pem(cert.to_owned()), key: Secret(key.to_owned()) });
        }
    }
    if on("custom") {
        let name = md.get("customAuthHeader");
        let value = md.get("customAuthValue");
        if name.is_none() {
            errs.push(ConfigError::new("customAuthHeader", "required when authModes includes custom"));
        }
        if value.is_none() {
            errs.push(ConfigError::new("customAuthValue", "required when authModes includes custom"));
        }
        let name = name.and_then(|n| {
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| {
                    errs.push(ConfigError::new("customAuthHeader", format!("{n:?} is not a valid HTTP header name")))
                })
                .ok()
        });
        let header_value = value.and_then(|v| {
            let h = sensitive_header(v);
            if h.is_none() {
                errs.push(ConfigError::new("customAuthValue", "contains characters not allowed in an HTTP header"));
            }
            h
        });
        if let (Some(name), Some(header_value), Some(value)) = (name, header_value, value) {
            fp.add("custom-header", name.as_str());
            fp.add("custom-value", value);
            // Set after bearer/basic, so a custom `Authorization` header wins.
            headers.insert(name, header_value);
        }
    }
    errs.into_result()?;
    Ok(Auth { modes, client_tls })
}

/// `pem` must hold at least one PEM certificate.
pub(crate) fn check_certs(key: &str, pem: &str) -> Result<(), ConfigError> {
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        c.map_err(|_| ConfigError::new(key, "is not valid PEM"))?;
        n += 1;
    }
    if n == 0 {
        return Err(ConfigError::new(key, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(())
}

/// `key` must hold a PEM private key (PKCS#8, PKCS#1 or SEC1). Never echoes the value.
pub(crate) fn check_key(pem: &str) -> Result<(), ConfigError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map(drop)
        .map_err(|_| ConfigError::new("key", "holds no PEM private key"))
}

/// The Azure token scope, when Azure Monitor managed Prometheus auth applies.
const AZURE_RESOURCE_URL: &str = "azureManagedPrometheusResourceURL";

fn azure_scope(md: &Metadata<'_>, url: &Url, has_auth_modes: bool) -> Result<Option<String>, ConfigError> {
    const KEY: &str = AZURE_RESOURCE_URL;
    if let Some(scope) = md.get(KEY) {
        if has_auth_modes {
            // KEDA: "pod identity cannot be enabled with other auth types".
            return Err(ConfigError::new(KEY, "cannot be combined with authModes"));
        }
        return Ok(Some(scope.to_owned()));
    }
    if has_auth_modes {
        return Ok(None);
    }
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    Ok(AZURE_PROMETHEUS_CLOUDS.iter().find(|(suffix, _)| host.ends_with(suffix)).map(|(_, scope)| (*scope).to_owned()))
}

/// A salted SHA-256 over secret material, so that source keys differ when credentials do
/// without carrying them. The salt is random per process: a key seen in a log cannot be used
/// to test password guesses offline. Keys are compared within one process only.
struct Fingerprint {
    hasher: Sha256,
    empty: bool,
}

impl Fingerprint {
    fn new() -> Self {
        static SALT: OnceLock<u64> = OnceLock::new();
        let salt = SALT.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new().build_hasher().finish()
        });
        let mut hasher = Sha256::new();
        hasher.update(salt.to_le_bytes());
        Self { hasher, empty: true }
    }

    fn add(&mut self, label: &str, value: &str) {
        for part in [label, value] {
            self.hasher.update((part.len() as u64).to_le_bytes());
            self.hasher.update(part.as_bytes());
        }
        self.empty = false;
    }

    /// 16 hex digits, or `None` when no secret was added.
    fn finish(self) -> Option<String> {
        if self.empty {
            return None;
        }
        Some(crate::fingerprint_text(&self.hasher.finalize()))
    }
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

    fn poller(&self) -> Result<Arc<dyn Poller>, ConfigErrors> {
        Ok(Arc::new(self.build_poller(None)?))
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

// ---------------------------------------------------------------------------------------------
// Poller
// ---------------------------------------------------------------------------------------------

impl PrometheusScaler {
    /// Builds the HTTP client. `credential` replaces ebb's own Azure identity (tests inject a
    /// fake); it is used only when Azure managed Prometheus auth applies.
    fn build_poller(&self, credential: Option<Arc<dyn TokenCredential>>) -> Result<PrometheusPoller, ConfigErrors> {
        let client = shared_client(self.client_key(), || self.build_client())?;
        let esc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let url_head = format!("{}?query={}", self.query_url, esc(&self.query));
        let rate_head = self.rate_query.as_ref().map(|q| format!("{}?query={}", self.query_url, esc(q)));
        let mut url_tail = String::new();
        if let Some(ns) = &self.namespace {
            url_tail.push_str(&format!("&namespace={}", esc(ns)));
        }
        for (k, v) in &self.query_parameters {
            url_tail.push_str(&format!("&{}={}", esc(k), esc(v)));
        }
        let azure = self.azure_scope.as_ref().map(|scope| AzureAuth {
            target: self.query_url.clone(),
            scope: scope.clone(),
            credential,
            token: tokio::sync::Mutex::new(None),
        });
        Ok(PrometheusPoller {
            client,
            url_head,
            rate_head,
            rate_query: self.rate_query.clone(),
            url_tail,
            headers: self.headers.clone(),
            azure,
            query: self.query.clone(),
            ignore_null_values: self.ignore_null_values,
            timeout: self.timeout,
        })
    }
}

impl PrometheusScaler {
    /// Identity of the client settings (TLS only: the timeout is set per request).
    fn client_key(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update([u8::from(self.unsafe_ssl)]);
        for part in [self.ca.as_ref().map(|c| &c.0), self.client_tls.as_ref().map(|t| &t.cert.0)] {
            h.update(part.map_or(&[][..], |p| p.as_bytes()));
            h.update([0xff]);
        }
        h.update(self.client_tls.as_ref().map_or(&[][..], |t| t.key.0.as_bytes()));
        h.finalize().into()
    }

    fn build_client(&self) -> Result<reqwest::Client, ConfigErrors> {
        let mut builder = reqwest::Client::builder().danger_accept_invalid_certs(self.unsafe_ssl);
        if let Some(ca) = &self.ca {
            let certs = reqwest::Certificate::from_pem_bundle(ca.0.as_bytes())
                .map_err(|e| ConfigError::new("ca", format!("cannot be used: {}", chain(&e))))?;
            builder = builder.tls_certs_merge(certs);
        }
        if let Some(tls) = &self.client_tls {
            let identity = reqwest::Identity::from_pem(format!("{}\n{}", tls.cert.0, tls.key.0).as_bytes())
                .map_err(|e| ConfigError::new("cert", format!("cannot be used with key: {}", chain(&e))))?;
            builder = builder.identity(identity);
        }
        Ok(builder.build().map_err(|e| match self.client_tls {
            // rustls checks that the key belongs to the certificate here.
            Some(_) => ConfigError::new("key", format!("cannot be used with cert: {}", chain(&e))),
            None => ConfigError::new("serverAddress", format!("cannot build the HTTP client: {}", chain(&e))),
        })?)
    }
}

/// One HTTP client per distinct TLS setup, shared by every source that uses it. A client holds
/// its TLS configuration, root store and connection pool (about 150 KiB), so 1,000 queries on
/// one Prometheus need one client, not 1,000. Entries go when their last poller does.
fn shared_client(
    key: [u8; 32],
    build: impl FnOnce() -> Result<reqwest::Client, ConfigErrors>,
) -> Result<Arc<reqwest::Client>, ConfigErrors> {
    type Cache = Mutex<Vec<([u8; 32], std::sync::Weak<reqwest::Client>)>>;
    static CLIENTS: OnceLock<Cache> = OnceLock::new();
    let mut clients = CLIENTS.get_or_init(Default::default).lock().expect("client cache lock");
    clients.retain(|(_, w)| w.strong_count() > 0);
    if let Some(c) = clients.iter().find(|(k, _)| *k == key).and_then(|(_, w)| w.upgrade()) {
        return Ok(c);
    }
    let client = Arc::new(build()?);
    clients.push((key, Arc::downgrade(&client)));
    Ok(client)
}

/// Polls one Prometheus query.
struct PrometheusPoller {
    client: Arc<reqwest::Client>,
    /// `…/api/v1/query?query=<escaped>`; `&time=` follows.
    url_head: String,
    /// The same for `rateQuery`.
    rate_head: Option<String>,
    rate_query: Option<String>,
    /// `[&namespace=…][&k=v…]`.
    url_tail: String,
    headers: HeaderMap,
    azure: Option<AzureAuth>,
    query: String,
    ignore_null_values: bool,
    timeout: Duration,
}

impl fmt::Debug for PrometheusPoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusPoller").field("url", &self.url_head).finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Poller for PrometheusPoller {
    async fn poll(&self) -> Result<Measurement, PollError> {
        self.poll_at(std::time::SystemTime::now()).await
    }

    /// Evaluates the query at `at` (KEDA sends `time=` too, with its own now): replicas polling
    /// the same grid tick get the same answer.
    async fn poll_at(&self, at: std::time::SystemTime) -> Result<Measurement, PollError> {
        // The deadline covers getting a token too, as KEDA's client timeout covers its round
        // tripper.
        let value = self.query_once(&self.url_head, &self.query, at);
        let both = async {
            match (&self.rate_head, &self.rate_query) {
                (Some(head), Some(q)) => {
                    let (value, rate) = tokio::try_join!(value, self.query_once(head, q, at))?;
                    Ok(Measurement::Rated { value, rate })
                }
                _ => value.await.map(Measurement::Value),
            }
        };
        match tokio::time::timeout(self.timeout, both).await {
            Ok(r) => r,
            Err(_) => Err(PollError::Timeout(self.timeout)),
        }
    }
}

impl PrometheusPoller {
    async fn query_once(&self, head: &str, query: &str, at: std::time::SystemTime) -> Result<f64, PollError> {
        let url = format!("{}&time={}{}", head, rfc3339_millis(at), self.url_tail);
        let mut headers = self.headers.clone();
        if let Some(azure) = &self.azure {
            headers.insert(AUTHORIZATION, azure.header().await?);
        }
        let response =
            self.client.get(url).timeout(self.timeout).headers(headers).send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        let content_type = content_type(response.headers());
        if status.is_success() {
            let body = read_body(response, MAX_BODY).await.map_err(|e| self.transport(e))?;
            if body.len() > MAX_BODY {
                return Err(PollError::Rejected(format!(
                    "prometheus query {query} answered more than {} MiB; it likely returns many series",
                    MAX_BODY >> 20
                )));
            }
            return interpret(&body, query, self.ignore_null_values).map_err(|e| match e {
                PollError::Malformed(what) => {
                    tracing::debug!(
                        scaler = SCALER_TYPE,
                        status = status.as_u16(),
                        detail = %excerpt_bytes(&body),
                        "prometheus answer is malformed"
                    );
                    let summary = crate::body_summary(content_type.as_deref(), body.len());
                    PollError::Malformed(format!("{what} ({summary})"))
                }
                e => e,
            });
        }

        let retry_after = response.headers().get(RETRY_AFTER).and_then(retry_after);
        let body = read_body(response, MAX_ERROR_BODY).await.unwrap_or_default();
        let detail = error_detail(content_type.as_deref(), &body);
        tracing::debug!(
            scaler = SCALER_TYPE,
            status = status.as_u16(),
            detail = %excerpt_bytes(&body),
            "prometheus query api returned an error"
        );
        Err(match status.as_u16() {
            code @ (401 | 403) => {
                if let Some(azure) = &self.azure {
                    azure.forget().await;
                }
                PollError::Auth { status: code, detail }
            }
            404 => PollError::NotFound(format!("{} answered HTTP 404: {detail}", self.path())),
            code @ (429 | 503) => PollError::Throttled { detail: format!("HTTP {code}: {detail}"), retry_after },
            code => PollError::Http { status: code, detail },
        })
    }

    /// The query API path, for messages (never the query string: it may hold parameters).
    fn path(&self) -> &str {
        self.url_head.split('?').next().unwrap_or_default()
    }

    /// Maps a reqwest failure. The URL is stripped: `queryParameters` may hold something
    /// private, and the path and query add nothing to "connection refused".
    fn transport(&self, e: reqwest::Error) -> PollError {
        if e.is_timeout() {
            return PollError::Timeout(self.timeout);
        }
        PollError::Connect(chain(&e.without_url()))
    }
}

/// Reads at most `limit + 1` bytes, so that the caller can tell an over-long answer.
async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            break;
        }
    }
    Ok(body)
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(v: &HeaderValue) -> Option<Duration> {
    let v = v.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = azure_core::time::parse_rfc7231(v).ok()?;
    let wait = at - azure_core::time::OffsetDateTime::now_utc();
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

/// An error answer for the caller: Prometheus's `errorType` (`bad_data`, from
/// `{"status":"error","errorType":…,"error":…}`) when it is a short `[a-z_]` token, and the
/// media type and size. Never the `error` text nor other bytes of the body: the caller chose
/// the URL, and the answer may be any internal page.
fn error_detail(content_type: Option<&str>, body: &[u8]) -> String {
    let summary = crate::body_summary(content_type, body.len());
    let error_type = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        v.get("errorType")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && t.len() <= 32 && t.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .map(str::to_owned)
    });
    match error_type {
        Some(t) => format!("{t} ({summary})"),
        None => summary,
    }
}

/// The `Content-Type` of an answer, if it is text.
fn content_type(headers: &HeaderMap) -> Option<String> {
    headers.get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// An error and its sources, joined with `: `.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(source) = next {
        let text = source.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = source.source();
    }
    out
}

/// Now in UTC as RFC 3339 with milliseconds, e.g. `2026-11-22T23:31:03.123Z`.
fn rfc3339_millis(at: std::time::SystemTime) -> String {
    let t = azure_core::time::OffsetDateTime::from(at);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Reads a query answer as KEDA's `ExecutePromQuery` does (deviations in the module docs).
pub fn interpret(body: &[u8], query: &str, ignore_null_values: bool) -> Result<f64, PollError> {
    let null = |what: &str| {
        if ignore_null_values {
            Ok(0.0)
        } else {
            Err(PollError::Rejected(format!("prometheus query {query} returned {what} (ignoreNullValues is false)")))
        }
    };
    let malformed = |what: &str| PollError::Malformed(format!("prometheus answer: {what}"));

    // serde_json's message can quote the answer ("invalid type: string \"…\""): only its
    // category and position.
    let doc: Value = serde_json::from_slice(body).map_err(|e| malformed(&crate::json_error(&e)))?;
    // Go decodes into a struct: absent or null fields are empty, other types are errors.
    let data = match &doc {
        Value::Object(o) => o.get("data").unwrap_or(&Value::Null),
        Value::Null => &Value::Null,
        _ => return Err(malformed("not a JSON object")),
    };
    let (result_type, result) = match data {
        Value::Object(o) => {
            (o.get("resultType").and_then(Value::as_str).unwrap_or_default(), o.get("result").unwrap_or(&Value::Null))
        }
        Value::Null => ("", &Value::Null),
        _ => return Err(malformed("data is not an object")),
    };

    let sample: &[Value] = match result_type {
        // `[<time>, "<value>"]`: the pair itself.
        "scalar" => match result {
            Value::Array(pair) => pair,
            Value::Null => &[],
            _ => return Err(malformed("scalar result is not an array")),
        },
        "matrix" => {
            return Err(PollError::Rejected(format!(
                "prometheus query {query} returned a range vector (matrix); use an instant vector"
            )));
        }
        "string" => {
            return Err(PollError::Rejected(format!("prometheus query {query} returned a string, not a number")));
        }
        _ => {
            let series = match result {
                Value::Array(a) => a.as_slice(),
                Value::Null => &[],
                _ => return Err(malformed("data.result is not an array")),
            };
            match series {
                [] => return null("an empty result"),
                [one] => match one {
                    Value::Object(o) => match o.get("value") {
                        Some(Value::Array(v)) => v.as_slice(),
                        None | Some(Value::Null) => &[],
                        Some(_) => return Err(malformed("value is not an array")),
                    },
                    Value::Null => &[],
                    _ => return Err(malformed("a result element is not an object")),
                },
                _ => {
                    return Err(PollError::Rejected(format!("prometheus query {query} returned multiple elements")));
                }
            }
        }
    };

    let value = match sample {
        [] => return null("an empty value list"),
        [_] => {
            return Err(PollError::Rejected(format!("prometheus query {query} didn't return enough values")));
        }
        [_, v, ..] => v,
    };
    let v = match value {
        Value::String(s) => s.parse::<f64>().map_err(|_| malformed("the sample value is not a number"))?,
        Value::Null => return null("a null value"),
        _ => return Err(malformed("value is not a string")),
    };
    if !v.is_finite() {
        return null(&format!("{v}"));
    }
    Ok(v)
}

fn excerpt_bytes(body: &[u8]) -> String {
    excerpt(&String::from_utf8_lossy(body))
}

// ---------------------------------------------------------------------------------------------
// Azure Monitor managed Prometheus
// ---------------------------------------------------------------------------------------------

/// Bearer tokens for one source, reused until shortly before they expire.
struct AzureAuth {
    /// Where the token goes; checked again before ebb's identity is asked for one.
    target: Url,
    scope: String,
    /// Injected credential; `None` means ebb's own identity ([`default_credential`]).
    credential: Option<Arc<dyn TokenCredential>>,
    token: tokio::sync::Mutex<Option<AccessToken>>,
}

impl AzureAuth {
    async fn header(&self) -> Result<HeaderValue, PollError> {
        let mut cached = self.token.lock().await;
        let fresh_until = azure_core::time::OffsetDateTime::now_utc() + TOKEN_REFRESH_MARGIN;
        let token = match cached.as_ref() {
            Some(t) if t.expires_on > fresh_until => t,
            _ => {
                let credential = match &self.credential {
                    Some(c) => c.clone(),
                    None => crate::azure::identity_for(&self.target)?,
                };
                let t = credential
                    .get_token(&[self.scope.as_str()], None)
                    .await
                    .map_err(|e| PollError::Credential(format!("token for {}: {}", self.scope, chain(&e))))?;
                cached.insert(t)
            }
        };
        sensitive_header(&format!("Bearer {}", token.token.secret()))
            .ok_or_else(|| PollError::Credential("the token is not a valid HTTP header value".to_owned()))
    }

    /// Drops the cached token (after a 401/403) so the next poll asks for a new one.
    async fn forget(&self) {
        *self.token.lock().await = None;
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    const ADDR: &str = "http://localhost:9090";

    /// Metadata entries in a table row.
    type Pairs = &'static [(&'static str, &'static str)];

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// `serverAddress`, `query` and `threshold` plus `extra` (an empty value removes a key).
    fn base(extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut m = map(&[("serverAddress", ADDR), ("query", "up"), ("threshold", "100")]);
        for (k, v) in extra {
            if v.is_empty() {
                m.remove(*k);
            } else {
                m.insert(k.to_string(), v.to_string());
            }
        }
        m
    }

    fn config(m: &HashMap<String, String>) -> Result<PrometheusScaler, ConfigErrors> {
        parse_config(&Metadata::new(m))
    }

    fn ok(extra: &[(&str, &str)]) -> PrometheusScaler {
        config(&base(extra)).unwrap_or_else(|e| panic!("{extra:?}: {e}"))
    }

    // Test PKI (EC P-256, valid 2000–2100): a CA, a server cert for 127.0.0.1/localhost and a
    // client cert, made with `openssl ca`. Test-only keys.
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBXzCCAQagAwIBAgICEAAwCgYIKoZIzj0EAwIwFjEUMBIGA1UEAwwLZWJiIHRl
c3QgQ0EwIBcNMDAwMTAxMDAwMDAwWhgPMjEwMDAxMDEwMDAwMDBaMBYxFDASBgNV
BAMMC2ViYiB0ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAELiIfkAT4
yNwuDwm9s1QNRiRWVeAOF0vn4dyNZJMdeDXAcwK6Cf8tQmuVSRzl7j9GUs8glk/H
s4HSp3CPSXI3hqNCMEAwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYw
HQYDVR0OBBYEFPAX+7YS6GB4C/BSeR+QMNqB9YW4MAoGCCqGSM49BAMCA0cAMEQC
IETGs9VFJKc7+gqXTQyDKpcHmF+AOBLc9PbeYU8MaMmfAiBIFC0rIATSw6yP4/LM
rTMyz7wqZUdl7p5MLIpjFYJ51g==
-----END CERTIFICATE-----
";
    const SERVER_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBrzCCAVWgAwIBAgICEAEwCgYIKoZIzj0EAwIwFjEUMBIGA1UEAwwLZWJiIHRl
c3QgQ0EwIBcNMDAwMTAxMDAwMDAwWhgPMjEwMDAxMDEwMDAwMDBaMBQxEjAQBgNV
BAMMCWxvY2FsaG9zdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABIXwBqxoFNsr
Y/JkdctPHz+UD8PMhIGHTUznKdEwfK1GMiepHjwYfv4E1YjmlPWnuGxJDzWZA3j6
wfabPgsXRKajgZIwgY8wGgYDVR0RBBMwEYcEfwAAAYIJbG9jYWxob3N0MBMGA1Ud
JQQMMAoGCCsGAQUFBwMBMAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/BAQDAgeAMB8G
A1UdIwQYMBaAFPAX+7YS6GB4C/BSeR+QMNqB9YW4MB0GA1UdDgQWBBT6uLNqfsIM
VT4ZAPl4lfTT1UHIODAKBggqhkjOPQQDAgNIADBFAiEA6nRaM5HHBnEgm/W2bzFl
YGiFRnolOS5n9OJCm3czUh8CIHFsTDlMGvCpcQcWSKJNeZvkiWuhMRhk302T2evj
+8Vx
-----END CERTIFICATE-----
";
    const SERVER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgrVHcwm6fhYJvb9wg
PBTg5qAaJSNJWmU8mfwmgrwzLUChRANCAASF8AasaBTbK2PyZHXLTx8/lA/DzISB
h01M5ynRMHytRjInqR48GH7+BNWI5pT1p7hsSQ81mQN4+sH2mz4LF0Sm
-----END PRIVATE KEY-----
";
    const CLIENT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBkTCCATigAwIBAgICEAIwCgYIKoZIzj0EAwIwFjEUMBIGA1UEAwwLZWJiIHRl
c3QgQ0EwIBcNMDAwMTAxMDAwMDAwWhgPMjEwMDAxMDEwMDAwMDBaMBUxEzARBgNV
BAMMCmViYiBjbGllbnQwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAT+1cZg0pR+
tS6IIALm5R44bm2RSOIHe6Axr2+SnTxWR3EYGo0/pkvVeuEDM8LsC8AA4uuMc7ir
l200sRdDZILko3UwczATBgNVHSUEDDAKBggrBgEFBQcDAjAMBgNVHRMBAf8EAjAA
MA4GA1UdDwEB/wQEAwIHgDAfBgNVHSMEGDAWgBTwF/u2EuhgeAvwUnkfkDDagfWF
uDAdBgNVHQ4EFgQUhWdLAdkWWEELmdnmbdOzNLFFmkwwCgYIKoZIzj0EAwIDRwAw
RAIgGCx3zWRrB0ont66ihDqLDLekrzQafQgUt3basEGjgYQCIFeVOvQT5w2isDxc
M70GfJf9sg6OXdBTl+QCHVRe1Rsu
-----END CERTIFICATE-----
";
    const CLIENT_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgZIZKe6jKlXIn8J2F
Qhq0w9GOA/dD2++agyccnduTW9qhRANCAAT+1cZg0pR+tS6IIALm5R44bm2RSOIH
e6Axr2+SnTxWR3EYGo0/pkvVeuEDM8LsC8AA4uuMc7irl200sRdDZILk
-----END PRIVATE KEY-----
";

    // ---- parsing -------------------------------------------------------------------------

    /// Each row: name, metadata on top of [`base`] (an empty value removes the key), the keys
    /// expected to fail (empty: must parse), and the KEDA rule or test row it mirrors
    /// (`testPromMetadata` / `testPrometheusAuthMetadata` in `prometheus_scaler_test.go`).
    #[test]
    fn parse_table() {
        #[rustfmt::skip]
        let rows: &[(&str, Pairs, &[&str], &str)] = &[
            ("all properly formed", &[], &[], "testPromMetadata[1]"),
            ("with namespace", &[("namespace", "foo")], &[], "testPromMetadata[2]"),
            ("with ignoreNullValues", &[("ignoreNullValues", "false")], &[], "testPromMetadata[3]"),
            ("with activationThreshold", &[("activationThreshold", "50")], &[], "testPromMetadata[4]"),
            ("negative activationThreshold", &[("activationThreshold", "-1.5")], &[], "float64 field, no range"),
            ("missing serverAddress", &[("serverAddress", "")], &["serverAddress"], "testPromMetadata[5]"),
            ("missing threshold", &[("threshold", "")], &["threshold"], "testPromMetadata[6]"),
            ("malformed threshold", &[("threshold", "one")], &["threshold"], "testPromMetadata[7]"),
            ("malformed activationThreshold", &[("activationThreshold", "one")], &["activationThreshold"], "testPromMetadata[8]"),
            ("missing query", &[("query", "")], &["query"], "testPromMetadata[9]"),
            ("ignoreNullValues not a bool", &[("ignoreNullValues", "xxxx")], &["ignoreNullValues"], "testPromMetadata[10]"),
            ("unsafeSsl", &[("serverAddress", "https://localhost:9090"), ("unsafeSsl", "true")], &[], "testPromMetadata[11]"),
            ("unsafeSsl not a bool", &[("unsafeSsl", "yes")], &["unsafeSsl"], "strconv.ParseBool"),
            ("customHeaders", &[("customHeaders", "key1=value1,key2=value2")], &[], "testPromMetadata[12]"),
            ("customHeaders wrong format", &[("customHeaders", "key1=value1,key2")], &["customHeaders"], "testPromMetadata[13]"),
            ("customHeaders bad name", &[("customHeaders", "bad name=1")], &["customHeaders"], "Go rejects it at request time"),
            ("queryParameters", &[("queryParameters", "key1=value1,key2=value2")], &[], "testPromMetadata[14]"),
            ("queryParameters wrong format", &[("queryParameters", "key1=value1,key2")], &["queryParameters"], "testPromMetadata[15]"),
            ("timeout in ms", &[("timeout", "1000")], &[], "testPromMetadata[16]"),
            ("timeout negative", &[("timeout", "-1")], &["timeout"], "testPromMetadata[17]"),
            ("timeout not a number", &[("timeout", "a")], &["timeout"], "testPromMetadata[18]"),
            ("timeout Go duration", &[("timeout", "1.5s")], &[], "typed_config: time.ParseDuration first"),
            ("timeout negative duration", &[("timeout", "-5s")], &["timeout"], "typed_config: duration cannot be negative"),
            ("timeout zero", &[("timeout", "0")], &["timeout"], "ebb: KEDA falls back to the default"),
            ("threshold zero", &[("threshold", "0")], &["threshold"], "ebb: HPA target must be > 0"),
            ("threshold negative", &[("threshold", "-3")], &["threshold"], "ebb: HPA target must be > 0"),
            ("serverAddress not a URL", &[("serverAddress", "localhost:9090")], &["serverAddress"], "ebb: must be http(s)"),
            ("serverAddress other scheme", &[("serverAddress", "ftp://localhost")], &["serverAddress"], "ebb: must be http(s)"),
            ("serverAddress with user info", &[("serverAddress", "http://u:p@localhost")], &["serverAddress"], "ebb: no secrets in URLs"),
            ("serverAddress with query", &[("serverAddress", "http://localhost/?a=b")], &["serverAddress"], "ebb: KEDA would build a broken URL"),
            // authModes (testPrometheusAuthMetadata)
            ("tls ca cert key", &[("authModes", "tls"), ("ca", CA_PEM), ("cert", CLIENT_PEM), ("key", CLIENT_KEY)], &[], "auth[0] success TLS"),
            ("tls ca optional", &[("authModes", "tls"), ("cert", CLIENT_PEM), ("key", CLIENT_KEY)], &[], "auth[1] TLS, ca is optional"),
            ("tls key missing", &[("authModes", "tls"), ("ca", CA_PEM), ("cert", CLIENT_PEM)], &["key"], "auth[2] fail TLS, key not given"),
            ("tls cert missing", &[("authModes", "tls"), ("ca", CA_PEM), ("key", CLIENT_KEY)], &["cert"], "auth[3] fail TLS, cert not given"),
            ("tls garbage PEM", &[("authModes", "tls"), ("ca", "caaa"), ("cert", "ceert"), ("key", "keey")], &["cert", "key", "ca"], "auth[0] values: KEDA fails later, building the client"),
            ("tls key is a cert", &[("authModes", "tls"), ("cert", CLIENT_PEM), ("key", CLIENT_PEM)], &["key"], "ebb: PEM checked at parse time"),
            ("ca without authModes", &[("ca", CA_PEM)], &[], "ebb: KEDA ignores ca without authModes"),
            ("bearer", &[("authModes", "bearer"), ("bearerToken", "tooooken")], &[], "auth[4] success bearer"),
            ("bearer via token alias", &[("authModes", "bearer"), ("token", "tooooken")], &[], "name=bearerToken;token"),
            ("bearer without token", &[("authModes", "bearer")], &["bearerToken"], "auth[5] fail bearer with no token"),
            ("basic", &[("authModes", "basic"), ("username", "user"), ("password", "pass")], &[], "auth[6] success basicAuth"),
            ("basic without password", &[("authModes", "basic"), ("username", "user")], &[], "Validate checks username only"),
            ("basic without username", &[("authModes", "basic")], &["username"], "auth[7] fail basicAuth with no username"),
            ("tls and basic", &[("authModes", "tls, basic"), ("ca", CA_PEM), ("cert", CLIENT_PEM), ("key", CLIENT_KEY), ("username", "user"), ("password", "pass")], &[], "auth[8]"),
            ("tls and basic, no cert/key", &[("authModes", "tls,basic"), ("username", "user"), ("password", "pass")], &["cert", "key"], "auth[9] / auth[14]"),
            ("custom", &[("authModes", "custom"), ("customAuthHeader", "header"), ("customAuthValue", "value")], &[], "auth[10] success custom auth"),
            ("custom without header", &[("authModes", "custom"), ("customAuthValue", "value")], &["customAuthHeader"], "auth[11]"),
            ("custom without value", &[("authModes", "custom"), ("customAuthHeader", "header")], &["customAuthValue"], "auth[12]"),
            ("custom with newlines", &[("authModes", "custom"), ("customAuthHeader", "header\n"), ("customAuthValue", "value\n")], &[], "auth[13] values are trimmed"),
            ("custom bad header name", &[("authModes", "custom"), ("customAuthHeader", "a b"), ("customAuthValue", "v")], &["customAuthHeader"], "Go rejects it at request time"),
            ("bearer and basic", &[("authModes", "bearer,basic"), ("bearerToken", "t"), ("username", "u")], &["authModes"], "exclusiveSet=bearer;basic;oauth"),
            ("unknown mode", &[("authModes", "kerberos")], &["authModes"], "enum=apiKey;basic;tls;bearer;custom;oauth"),
            ("oauth", &[("authModes", "oauth")], &["authModes"], "ebb: the prometheus scaler never applies it"),
            ("authMode alias", &[("authMode", "bearer"), ("bearerToken", "t")], &[], "name=authModes;authMode"),
            ("azure resource URL with authModes", &[("authModes", "bearer"), ("bearerToken", "t"), ("azureManagedPrometheusResourceURL", "https://x/.default")], &["azureManagedPrometheusResourceURL"], "pod identity cannot be enabled with other auth types (auth[15])"),
            ("everything missing", &[("serverAddress", ""), ("query", ""), ("threshold", "")], &["serverAddress", "query", "threshold"], "testPromMetadata[0]"),
        ];
        for (name, extra, want, cite) in rows {
            let got = config(&base(extra));
            let mut got_keys: Vec<String> = match &got {
                Ok(_) => Vec::new(),
                Err(e) => e.0.iter().map(|e| e.key.clone()).collect(),
            };
            let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            got_keys.sort();
            want.sort();
            assert_eq!(got_keys, want, "row {name:?} ({cite}): {:?}", got.err().map(|e| e.to_string()));
        }
    }

    #[test]
    fn defaults() {
        let s = ok(&[]);
        assert_eq!(s.query_url.as_str(), "http://localhost:9090/api/v1/query");
        assert_eq!(s.target(), 100.0);
        assert_eq!(s.activation_threshold, 0.0);
        assert!(s.ignore_null_values);
        assert!(!s.unsafe_ssl);
        assert_eq!(s.poll_timeout(), Duration::from_millis(3000));
        assert!(s.headers.is_empty());
        assert!(s.azure_scope.is_none());
        assert_eq!(s.scaler_type(), "prometheus");
        assert!(s.source_key().0.starts_with("prometheus|"));
    }

    #[test]
    fn from_env_keys_are_read() {
        // KEDA delivers `<key>FromEnv` with the resolved value under the same name.
        let m = map(&[
            ("serverAddressFromEnv", ADDR),
            ("query", "up"),
            ("thresholdFromEnv", "5"),
            ("authModes", "bearer"),
            ("bearerTokenFromEnv", "t0k3n"),
        ]);
        let s = config(&m).unwrap();
        assert_eq!(s.target(), 5.0);
        assert_eq!(s.headers[AUTHORIZATION], "Bearer t0k3n");
    }

    #[test]
    fn server_address_paths() {
        for (addr, want) in [
            ("http://h:9090", "http://h:9090/api/v1/query"),
            ("http://h:9090/", "http://h:9090/api/v1/query"),
            ("https://h/prom/", "https://h/prom/api/v1/query"),
            (
                "https://h/v1/projects/p/location/global/prometheus",
                "https://h/v1/projects/p/location/global/prometheus/api/v1/query",
            ),
        ] {
            assert_eq!(ok(&[("serverAddress", addr)]).query_url.as_str(), want, "{addr}");
        }
    }

    #[test]
    fn timeouts() {
        #[rustfmt::skip]
        let good = [("1000", 1000), ("5", 5), ("5s", 5000), ("1500ms", 1500), ("1.5s", 1500), ("1m", 60_000), ("250000us", 250)];
        for (v, ms) in good {
            assert_eq!(ok(&[("timeout", v)]).timeout, Duration::from_millis(ms), "{v}");
        }
        for v in ["5sec", "s", "1..5s", ".s", "48h", "-0", "0ms"] {
            assert_eq!(config(&base(&[("timeout", v)])).unwrap_err().keys(), ["timeout"], "{v}");
        }
        assert_eq!(go_duration_secs("1h30m"), Some(5400.0));
        assert_eq!(go_duration_secs("-0"), Some(0.0));
        assert_eq!(go_duration_secs("1µs"), Some(1e-6));
        assert_eq!(go_duration_secs("1"), None);
    }

    #[test]
    fn azure_scope_by_host() {
        for (host, scope) in [
            ("https://ws-1.eastus.prometheus.monitor.azure.com", Some("https://prometheus.monitor.azure.com/.default")),
            (
                "https://WS.usgovvirginia.prometheus.monitor.azure.us",
                Some("https://prometheus.monitor.azure.us/.default"),
            ),
            (
                "https://ws.chinanorth3.prometheus.monitor.azure.cn/",
                Some("https://prometheus.monitor.azure.cn/.default"),
            ),
            ("https://prometheus.monitor.azure.com.evil.example", None),
            ("http://localhost:9090", None),
        ] {
            assert_eq!(ok(&[("serverAddress", host)]).azure_scope.as_deref(), scope, "{host}");
        }
        // authModes turn Azure auth off, as KEDA's pod identity is off with authModes.
        let s = ok(&[
            ("serverAddress", "https://ws.eastus.prometheus.monitor.azure.com"),
            ("authModes", "bearer"),
            ("bearerToken", "t"),
        ]);
        assert!(s.azure_scope.is_none());
        let s = ok(&[("azureManagedPrometheusResourceURL", "https://prometheus.example/.default")]);
        assert_eq!(s.azure_scope.as_deref(), Some("https://prometheus.example/.default"));
    }

    #[test]
    fn source_key_ignores_thresholds_and_tracks_what_is_polled() {
        let key = |extra: &[(&str, &str)]| ok(extra).source_key().clone();
        let a = key(&[]);
        assert_eq!(a, key(&[("threshold", "7"), ("activationThreshold", "3")]));
        assert_eq!(a, key(&[("serverAddress", "http://localhost:9090/")]));
        assert_eq!(
            key(&[("queryParameters", "b=2,a=1")]),
            key(&[("queryParameters", "a=1, b=2")]),
            "parameter order does not matter"
        );
        assert_eq!(
            key(&[("customHeaders", "X-B=2,X-A=1")]),
            key(&[("customHeaders", "X-A=1,X-B=2")]),
            "header order does not matter"
        );
        // Bearer/basic/custom credentials are read only when their mode is on (KEDA).
        assert_eq!(a, key(&[("bearerToken", "unused")]));

        let different: &[&[(&str, &str)]] = &[
            &[("serverAddress", "http://other:9090")],
            &[("query", "sum(up)")],
            &[("namespace", "ns")],
            &[("queryParameters", "a=1")],
            &[("queryParameters", "a=2")],
            &[("customHeaders", "X-A=1")],
            &[("customHeaders", "X-A=2")],
            &[("authModes", "bearer"), ("bearerToken", "one")],
            &[("authModes", "bearer"), ("bearerToken", "two")],
            &[("authModes", "basic"), ("username", "u"), ("password", "p1")],
            &[("authModes", "basic"), ("username", "u"), ("password", "p2")],
            &[("authModes", "custom"), ("customAuthHeader", "X-Key"), ("customAuthValue", "v")],
            &[("authModes", "tls"), ("cert", CLIENT_PEM), ("key", CLIENT_KEY)],
            &[("ca", CA_PEM)],
            &[("unsafeSsl", "true")],
            &[("timeout", "5s")],
            &[("ignoreNullValues", "false")],
            &[("azureManagedPrometheusResourceURL", "https://x/.default")],
        ];
        let mut seen = vec![a];
        for extra in different {
            let k = key(extra);
            assert!(!seen.contains(&k), "{extra:?} collides: {k}");
            seen.push(k);
        }
    }

    #[test]
    fn secrets_never_show() {
        let secrets = ["tok-SECRET-1", "pw-SECRET-2", "hv-SECRET-3", "cv-SECRET-4"];
        let m = base(&[
            ("authModes", "basic,custom,tls"),
            ("username", "user"),
            ("password", secrets[1]),
            ("bearerToken", secrets[0]),
            ("customHeaders", &format!("X-Api-Key={}", secrets[2])),
            ("customAuthHeader", "X-Auth"),
            ("customAuthValue", secrets[3]),
            ("cert", CLIENT_PEM),
            ("key", CLIENT_KEY),
        ]);
        let s = config(&m).unwrap();
        let key_body = CLIENT_KEY.lines().nth(1).unwrap();
        let shown = format!("{s:?} {} {:?}", s.source_key(), s.build_poller(None).unwrap());
        for secret in secrets.iter().chain([&key_body]) {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
        assert!(!shown.contains(&azure_core::base64::encode(format!("user:{}", secrets[1]))));

        // Errors do not echo secret values either.
        let bad = base(&[
            ("authModes", "bearer,custom,tls"),
            ("bearerToken", "tok-SECRET\u{1}"),
            ("customHeaders", "X-A=hv-SECRET\u{1},broken-SECRET"),
            ("customAuthHeader", "X-Auth"),
            ("customAuthValue", "cv-SECRET\u{1}"),
            ("cert", CLIENT_PEM),
            ("key", "-----BEGIN PRIVATE KEY-----\nkey-SECRET\n-----END PRIVATE KEY-----\n"),
            ("serverAddress", "http://user:pw-SECRET@localhost"),
        ]);
        let e = config(&bad).unwrap_err();
        assert!(e.0.len() >= 5, "{e}");
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }

    #[test]
    fn evaluate_applies_this_triggers_thresholds() {
        let s = ok(&[("threshold", "10"), ("activationThreshold", "5")]);
        assert_eq!(s.evaluate(&Measurement::Value(17.0)), Evaluation { metric: 17.0, active: true });
        // Strictly greater (KEDA `val > ActivationThreshold`).
        assert_eq!(s.evaluate(&Measurement::Value(5.0)), Evaluation { metric: 5.0, active: false });
        let s = ok(&[("activationThreshold", "-2")]);
        assert!(s.evaluate(&Measurement::Value(-1.0)).active);
        assert!(!ok(&[]).evaluate(&Measurement::Value(0.0)).active);
    }

    // ---- reading answers (KEDA `testPromQueryResult`) -------------------------------------

    #[test]
    fn interpret_table() {
        use PollError as E;
        // (name, body, ignoreNullValues, expected value or error kind)
        #[rustfmt::skip]
        let rows: &[(&str, &str, bool, Result<f64, &str>)] = &[
            ("no results", "{}", true, Ok(0.0)),
            ("no values", r#"{"data":{"result":[]}}"#, true, Ok(0.0)),
            ("no values but shouldn't ignore", r#"{"data":{"result":[]}}"#, false, Err("rejected")),
            ("value is empty list", r#"{"data":{"result":[{"value": []}]}}"#, true, Ok(0.0)),
            ("value is empty list but shouldn't ignore", r#"{"data":{"result":[{"value": []}]}}"#, false, Err("rejected")),
            ("valid value", r#"{"data":{"result":[{"value": ["1", "2"]}]}}"#, true, Ok(2.0)),
            ("not enough values", r#"{"data":{"result":[{"value": ["1"]}]}}"#, true, Err("rejected")),
            ("multiple results", r#"{"data":{"result":[{},{}]}}"#, true, Err("rejected")),
            ("+Inf", r#"{"data":{"result":[{"value": ["1", "+Inf"]}]}}"#, true, Ok(0.0)),
            ("+Inf but shouldn't ignore", r#"{"data":{"result":[{"value": ["1", "+Inf"]}]}}"#, false, Err("rejected")),
            ("-Inf", r#"{"data":{"result":[{"value": ["1", "-Inf"]}]}}"#, true, Ok(0.0)),
            ("-Inf but shouldn't ignore", r#"{"data":{"result":[{"value": ["1", "-Inf"]}]}}"#, false, Err("rejected")),
            ("NaN", r#"{"data":{"result":[{"value": ["1", "NaN"]}]}}"#, true, Ok(0.0)),
            ("NaN but shouldn't ignore", r#"{"data":{"result":[{"value": ["1", "NaN"]}]}}"#, false, Err("rejected")),
            // Beyond KEDA's table.
            ("negative", r#"{"data":{"resultType":"vector","result":[{"metric":{},"value":[1,"-3.5"]}]}}"#, true, Ok(-3.5)),
            ("exponent", r#"{"data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1e3"]}]}}"#, true, Ok(1000.0)),
            ("scalar", r#"{"status":"success","data":{"resultType":"scalar","result":[1795379264.928,"20"]}}"#, true, Ok(20.0)),
            ("scalar NaN", r#"{"status":"success","data":{"resultType":"scalar","result":[1795379264.928,"NaN"]}}"#, false, Err("rejected")),
            ("matrix", r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"]]}]}}"#, true, Err("rejected")),
            ("string", r#"{"status":"success","data":{"resultType":"string","result":[1,"x"]}}"#, true, Err("rejected")),
            ("null value", r#"{"data":{"result":[{"value":[1,null]}]}}"#, true, Ok(0.0)),
            ("empty string value", r#"{"data":{"result":[{"value":[1,""]}]}}"#, true, Err("malformed")),
            ("number value", r#"{"data":{"result":[{"value":[1,2]}]}}"#, true, Err("malformed")),
            ("garbage", "<html>oops</html>", true, Err("malformed")),
            ("array body", "[]", true, Err("malformed")),
            ("result not an array", r#"{"data":{"result":5}}"#, true, Err("malformed")),
        ];
        for (name, body, ignore, want) in rows {
            let got = interpret(body.as_bytes(), "q", *ignore);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{name}"),
                (Err(kind), Err(e)) => assert_eq!(*kind, e.kind(), "{name}: {e}"),
                _ => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
        let e = interpret(br#"{"data":{"result":[{},{}]}}"#, "sum(x)", true).unwrap_err();
        assert_eq!(e, E::Rejected("prometheus query sum(x) returned multiple elements".into()));
        let e = interpret(br#"{"data":{"result":[]}}"#, "q", false).unwrap_err();
        assert!(e.to_string().contains("empty result"), "{e}");
    }

    // ---- polling against a local server -------------------------------------------------

    /// Real Prometheus 2.x answers.
    const VECTOR_17: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"queue_depth","job":"scaler_test","queue":"orders"},"value":[1795379264.817,"17"]}]}}"#;
    const EMPTY_VECTOR: &str = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
    const TWO_SERIES: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"queue_depth","job":"scaler_test","queue":"orders"},"value":[1795379264.817,"17"]},{"metric":{"__name__":"queue_depth","job":"scaler_test","queue":"refunds"},"value":[1795379264.817,"3"]}]}}"#;
    const SCALAR_20: &str = r#"{"status":"success","data":{"resultType":"scalar","result":[1795379264.928,"20"]}}"#;
    const NAN: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1795379264.817,"NaN"]}]}}"#;
    const BAD_DATA: &str = r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:6: parse error: unclosed left parenthesis"}"#;

    /// What the stub server saw of one request.
    #[derive(Debug, Clone)]
    struct Seen {
        path: String,
        query: Vec<(String, String)>,
        headers: axum::http::HeaderMap,
    }

    impl Seen {
        fn param(&self, k: &str) -> Option<&str> {
            self.query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
        }
        fn header(&self, k: &str) -> Vec<&str> {
            self.headers.get_all(k).iter().map(|v| v.to_str().unwrap()).collect()
        }
    }

    #[derive(Clone)]
    struct Stub {
        status: u16,
        body: &'static str,
        headers: Vec<(&'static str, &'static str)>,
        delay: Duration,
    }

    fn stub(status: u16, body: &'static str) -> Stub {
        Stub { status, body, headers: Vec::new(), delay: Duration::ZERO }
    }

    type Log = Arc<Mutex<Vec<Seen>>>;

    fn app(stub: Stub) -> (axum::Router, Log) {
        let log: Log = Arc::default();
        let (seen, stub) = (log.clone(), Arc::new(stub));
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (seen, stub) = (seen.clone(), stub.clone());
            async move {
                let query = url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                seen.lock().unwrap().push(Seen {
                    path: req.uri().path().to_owned(),
                    query,
                    headers: req.headers().clone(),
                });
                tokio::time::sleep(stub.delay).await;
                let mut resp = axum::http::Response::builder().status(stub.status);
                if !stub.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
                    resp = resp.header("content-type", "application/json");
                }
                for (k, v) in &stub.headers {
                    resp = resp.header(*k, *v);
                }
                resp.body(axum::body::Body::from(stub.body)).unwrap()
            }
        });
        (app, log)
    }

    /// Serves `stub` on 127.0.0.1; returns its base URL and the request log.
    async fn serve(stub: Stub) -> (String, Log) {
        let (app, log) = app(stub);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), log)
    }

    async fn poll_with(addr: &str, extra: &[(&str, &str)]) -> Result<Measurement, PollError> {
        let mut m = base(extra);
        m.insert("serverAddress".into(), addr.into());
        let s = config(&m).unwrap();
        s.poller().unwrap().poll().await
    }

    #[tokio::test]
    async fn poll_reads_a_vector_and_sends_keda_request() {
        let (addr, log) = serve(stub(200, VECTOR_17)).await;
        let q = r#"sum(queue_depth{queue="orders"}) + 0"#;
        let before = azure_core::time::OffsetDateTime::now_utc();
        let got =
            poll_with(&addr, &[("query", q), ("namespace", "team-a"), ("queryParameters", "dedup=true,b=x y")]).await;
        assert_eq!(got, Ok(Measurement::Value(17.0)));

        let seen = log.lock().unwrap()[0].clone();
        assert_eq!(seen.path, "/api/v1/query");
        assert_eq!(seen.param("query"), Some(q));
        assert_eq!(seen.param("namespace"), Some("team-a"));
        assert_eq!(seen.param("dedup"), Some("true"));
        assert_eq!(seen.param("b"), Some("x y"));
        let names: Vec<_> = seen.query.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["query", "time", "namespace", "b", "dedup"], "KEDA's order, parameters sorted");
        let time = seen.param("time").unwrap();
        assert!(time.ends_with('Z') && time.contains('.'), "{time}");
        let t = azure_core::time::parse_rfc3339(time).unwrap();
        assert!(t >= before - Duration::from_millis(1) && t <= azure_core::time::OffsetDateTime::now_utc(), "{time}");
        assert!(seen.headers.get("authorization").is_none());
    }

    #[tokio::test]
    async fn poll_answers_like_keda() {
        let cases: &[(&str, Stub, Pairs, Result<f64, &str>)] = &[
            ("empty vector", stub(200, EMPTY_VECTOR), &[], Ok(0.0)),
            (
                "empty vector, ignoreNullValues=false",
                stub(200, EMPTY_VECTOR),
                &[("ignoreNullValues", "false")],
                Err("rejected"),
            ),
            ("two series", stub(200, TWO_SERIES), &[], Err("rejected")),
            ("scalar", stub(200, SCALAR_20), &[], Ok(20.0)),
            ("NaN", stub(200, NAN), &[], Ok(0.0)),
            ("NaN, ignoreNullValues=false", stub(200, NAN), &[("ignoreNullValues", "false")], Err("rejected")),
            ("garbage", stub(200, "<html>502 Bad Gateway</html>"), &[], Err("malformed")),
            ("bad_data 400", stub(400, BAD_DATA), &[], Err("http")),
            ("401", stub(401, "Unauthorized\n"), &[], Err("auth")),
            ("403", stub(403, "forbidden"), &[], Err("auth")),
            ("404", stub(404, "404 page not found\n"), &[], Err("not_found")),
            ("429", stub(429, "slow down"), &[], Err("throttled")),
            ("500", stub(500, ""), &[], Err("http")),
        ];
        for (name, s, extra, want) in cases {
            let (addr, _) = serve(s.clone()).await;
            let got = poll_with(&addr, extra).await;
            match (want, &got) {
                (Ok(w), Ok(Measurement::Value(g))) => assert_eq!(w, g, "{name}"),
                (Err(kind), Err(e)) => assert_eq!(*kind, e.kind(), "{name}: {e}"),
                _ => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[tokio::test]
    async fn poll_error_details() {
        let (addr, _) = serve(stub(400, BAD_DATA)).await;
        let e = poll_with(&addr, &[("query", "sum(up")]).await.unwrap_err();
        let detail = format!("bad_data (application/json, {} bytes)", BAD_DATA.len());
        assert_eq!(e, PollError::Http { status: 400, detail });
        assert_eq!(e.to_string(), "source answered HTTP 400: bad_data (application/json, 124 bytes)");

        let (addr, _) = serve(stub(200, TWO_SERIES)).await;
        let e = poll_with(&addr, &[("query", "queue_depth")]).await.unwrap_err();
        assert_eq!(e.to_string(), "prometheus query queue_depth returned multiple elements");

        let mut s = stub(503, "overloaded");
        s.headers.push(("retry-after", "7"));
        let (addr, _) = serve(s).await;
        let e = poll_with(&addr, &[]).await.unwrap_err();
        assert!(e.is_throttling());
        assert_eq!(
            e,
            PollError::Throttled {
                detail: "HTTP 503: application/json, 10 bytes".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );

        let (addr, _) = serve(stub(401, "Unauthorized")).await;
        let e = poll_with(&addr, &[("authModes", "bearer"), ("bearerToken", "tok-SECRET")]).await.unwrap_err();
        assert_eq!(e, PollError::Auth { status: 401, detail: "application/json, 12 bytes".into() });

        let (addr, _) = serve(stub(500, "")).await;
        assert_eq!(poll_with(&addr, &[]).await.unwrap_err().to_string(), "source answered HTTP 500: empty body");
    }

    /// The caller chooses `serverAddress`, so an answer may be any internal page: no error
    /// quotes its bytes (nor values parsed out of it), only status, errorType, type and size.
    #[tokio::test]
    async fn poll_errors_never_quote_the_answer() {
        const M: &str = "LEAKED-BODY-MARKER";
        let html = |status| {
            let mut s = stub(status, "<html><title>LEAKED-BODY-MARKER</title>internal admin page</html>");
            s.headers.push(("content-type", "text/html; charset=utf-8"));
            s
        };
        let cases: &[(&str, Stub, &str, &[&str])] = &[
            ("500 html", html(500), "http", &["HTTP 500", "text/html, 65 bytes"]),
            ("401 html", html(401), "auth", &["HTTP 401", "text/html"]),
            ("404 html", html(404), "not_found", &["HTTP 404", "text/html"]),
            ("429 html", html(429), "throttled", &["HTTP 429", "text/html"]),
            (
                "400 prometheus error",
                stub(400, r#"{"status":"error","errorType":"bad_data","error":"LEAKED-BODY-MARKER"}"#),
                "http",
                &["HTTP 400", "bad_data", "application/json"],
            ),
            (
                "422 error type not a token",
                stub(422, r#"{"status":"error","errorType":"LEAKED-BODY-MARKER","error":"x"}"#),
                "http",
                &["HTTP 422", "application/json, 63 bytes"],
            ),
            ("200 html", html(200), "malformed", &["not JSON", "text/html, 65 bytes"]),
            ("200 truncated JSON", stub(200, r#"{"data":"LEAKED-BODY-MARKER"#), "malformed", &["not JSON", "line 1"]),
            (
                "200 wrong-typed value",
                stub(200, r#"{"data":{"result":[{"value":[1,"LEAKED-BODY-MARKER"]}]}}"#),
                "malformed",
                &["not a number", "application/json"],
            ),
            (
                "200 value not a string",
                stub(200, r#"{"data":{"result":[{"value":[1,{"LEAKED-BODY-MARKER":1}]}]}}"#),
                "malformed",
                &["not a string"],
            ),
            (
                "200 data of the wrong type",
                stub(200, r#"{"data":"LEAKED-BODY-MARKER"}"#),
                "malformed",
                &["data is not an object"],
            ),
            (
                "200 JSON with trailing garbage",
                stub(200, r#"{"data":{"result":[{"value":[1,"2"]}]}, "x": "LEAKED-BODY-MARKER" LEAKED}"#),
                "malformed",
                &["not JSON (syntax error"],
            ),
        ];
        for (name, s, kind, wants) in cases {
            let (addr, _) = serve(s.clone()).await;
            let e = poll_with(&addr, &[]).await.unwrap_err();
            let text = e.to_string();
            assert_eq!(e.kind(), *kind, "{name}: {text}");
            assert!(!text.contains(M) && !text.contains("internal admin"), "{name} leaks: {text}");
            for want in *wants {
                assert!(text.contains(want), "{name}: {text:?} lacks {want:?}");
            }
        }
    }

    #[tokio::test]
    async fn poll_times_out_near_the_configured_timeout() {
        let mut s = stub(200, VECTOR_17);
        s.delay = Duration::from_secs(5);
        let (addr, _) = serve(s).await;
        let started = Instant::now();
        let e = poll_with(&addr, &[("timeout", "300ms")]).await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(e, PollError::Timeout(Duration::from_millis(300)));
        assert!(took >= Duration::from_millis(290) && took < Duration::from_millis(1500), "{took:?}");
    }

    #[tokio::test]
    async fn poll_connection_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = poll_with(&format!("http://{addr}"), &[("queryParameters", "apikey=qp-SECRET")]).await.unwrap_err();
        assert_eq!(e.kind(), "connect", "{e}");
        assert!(!e.to_string().contains("qp-SECRET"), "{e}");
    }

    #[tokio::test]
    async fn poll_sends_headers_and_auth() {
        let (addr, log) = serve(stub(200, VECTOR_17)).await;
        let cases: &[(Pairs, &str, &[&str])] = &[
            (&[("authModes", "bearer"), ("bearerToken", "tooooken")], "authorization", &["Bearer tooooken"]),
            // base64("user:pass")
            (
                &[("authModes", "basic"), ("username", "user"), ("password", "pass")],
                "authorization",
                &["Basic dXNlcjpwYXNz"],
            ),
            (&[("authModes", "basic"), ("username", "user")], "authorization", &["Basic dXNlcjo="]),
            (
                &[("authModes", "custom"), ("customAuthHeader", "X-Api-Key"), ("customAuthValue", "k")],
                "x-api-key",
                &["k"],
            ),
            (&[("customHeaders", "X-Client-Id=cid,X-Tenant-Id=tid")], "x-tenant-id", &["tid"]),
            // The auth header replaces a custom header of the same name (KEDA: Add, then Set).
            (
                &[("customHeaders", "Authorization=old"), ("authModes", "bearer"), ("bearerToken", "new")],
                "authorization",
                &["Bearer new"],
            ),
            // ebb sends custom auth alongside bearer (KEDA sends only the first).
            (
                &[
                    ("authModes", "bearer,custom"),
                    ("bearerToken", "b"),
                    ("customAuthHeader", "X-Org"),
                    ("customAuthValue", "o"),
                ],
                "x-org",
                &["o"],
            ),
        ];
        for (i, (extra, header, want)) in cases.iter().enumerate() {
            assert_eq!(poll_with(&addr, extra).await, Ok(Measurement::Value(17.0)), "{extra:?}");
            let seen = log.lock().unwrap()[i].clone();
            assert_eq!(seen.header(header), *want, "{extra:?}");
        }
        assert_eq!(log.lock().unwrap()[4].header("x-client-id"), ["cid"]);
        assert_eq!(log.lock().unwrap()[6].header("authorization"), ["Bearer b"]);
    }

    // ---- Azure Monitor managed Prometheus ----------------------------------------------

    /// A credential handing out `token`, counting calls.
    #[derive(Debug)]
    struct FakeCredential {
        token: Result<&'static str, &'static str>,
        lifetime: Duration,
        calls: AtomicUsize,
        scopes: Mutex<Vec<String>>,
    }

    impl FakeCredential {
        fn new(token: Result<&'static str, &'static str>, lifetime: Duration) -> Arc<Self> {
            Arc::new(Self { token, lifetime, calls: AtomicUsize::new(0), scopes: Mutex::default() })
        }
    }

    #[async_trait::async_trait]
    impl TokenCredential for FakeCredential {
        async fn get_token(
            &self,
            scopes: &[&str],
            _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
        ) -> azure_core::Result<AccessToken> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.scopes.lock().unwrap().extend(scopes.iter().map(|s| s.to_string()));
            match self.token {
                Ok(t) => {
                    Ok(AccessToken::new(t.to_owned(), azure_core::time::OffsetDateTime::now_utc() + self.lifetime))
                }
                Err(msg) => Err(azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, msg)),
            }
        }
    }

    /// An Azure-detected config whose URL is moved to the local stub.
    fn azure_config(local: &str) -> PrometheusScaler {
        let mut s = ok(&[("serverAddress", "https://ws-1.eastus.prometheus.monitor.azure.com")]);
        assert_eq!(s.azure_scope.as_deref(), Some("https://prometheus.monitor.azure.com/.default"));
        s.query_url = query_url(local).unwrap();
        s
    }

    #[tokio::test]
    async fn azure_managed_prometheus_sends_and_reuses_the_bearer_token() {
        let (addr, log) = serve(stub(200, VECTOR_17)).await;
        let cred = FakeCredential::new(Ok("fake-entra-token"), Duration::from_secs(3600));
        let poller = azure_config(&addr).build_poller(Some(cred.clone())).unwrap();
        assert_eq!(poller.poll().await, Ok(Measurement::Value(17.0)));
        assert_eq!(poller.poll().await, Ok(Measurement::Value(17.0)));
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2);
        for seen in log.iter() {
            assert_eq!(seen.header("authorization"), ["Bearer fake-entra-token"]);
        }
        assert_eq!(cred.calls.load(Ordering::SeqCst), 1, "token reused while fresh");
        assert_eq!(*cred.scopes.lock().unwrap(), ["https://prometheus.monitor.azure.com/.default"]);
    }

    #[tokio::test]
    async fn azure_token_near_expiry_or_rejected_is_renewed() {
        // Expires within the 60 s margin: fetched again on every poll.
        let (addr, _) = serve(stub(200, VECTOR_17)).await;
        let cred = FakeCredential::new(Ok("short"), Duration::from_secs(30));
        let poller = azure_config(&addr).build_poller(Some(cred.clone())).unwrap();
        poller.poll().await.unwrap();
        poller.poll().await.unwrap();
        assert_eq!(cred.calls.load(Ordering::SeqCst), 2);

        // A 401 drops the cached token.
        let (addr, _) = serve(stub(401, "token expired")).await;
        let cred = FakeCredential::new(Ok("revoked"), Duration::from_secs(3600));
        let poller = azure_config(&addr).build_poller(Some(cred.clone())).unwrap();
        assert_eq!(poller.poll().await.unwrap_err().kind(), "auth");
        assert_eq!(poller.poll().await.unwrap_err().kind(), "auth");
        assert_eq!(cred.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn azure_credential_failure_is_a_credential_error() {
        let (addr, log) = serve(stub(200, VECTOR_17)).await;
        let cred = FakeCredential::new(Err("AADSTS700016: application not found"), Duration::ZERO);
        let poller = azure_config(&addr).build_poller(Some(cred)).unwrap();
        let e = poller.poll().await.unwrap_err();
        assert_eq!(e.kind(), "credential", "{e}");
        assert!(e.to_string().contains("AADSTS700016"), "{e}");
        assert!(log.lock().unwrap().is_empty(), "no request without a token");
    }

    /// Issue 13: the resource URL key turns Azure auth on (KEDA parity) but never chooses where
    /// the token goes or for which audience: the trigger declares both, the engine refuses them
    /// (trust::Endpoints), and the token request itself refuses a non-https target.
    #[tokio::test]
    async fn azure_resource_url_key_is_declared_and_checked() {
        let (addr, log) = serve(stub(200, SCALAR_20)).await;
        let s =
            ok(&[("serverAddress", &addr), ("azureManagedPrometheusResourceURL", "https://vault.azure.net/.default")]);
        let held: [Held; 1] = s.held().try_into().unwrap();
        let [Held::Identity(u)] = held else { panic!("one identity use") };
        assert_eq!((u.service, u.audience.as_str()), (AzureService::Monitor, "https://vault.azure.net/.default"));
        assert_eq!(u.audience_key, Some("azureManagedPrometheusResourceURL"));
        assert_eq!(crate::trust::Endpoints::default().check(&u).unwrap_err().key, "serverAddress");
        // ebb's own identity is not even asked for a token towards a plain-http host.
        let e = s.build_poller(None).unwrap().poll().await.unwrap_err();
        assert_eq!(e.kind(), "credential", "{e}");
        assert!(log.lock().unwrap().is_empty(), "nothing sent");
        // Identity never rides on weakened or re-rooted TLS.
        let az = "https://ws-1.eastus.prometheus.monitor.azure.com";
        let e = config(&base(&[("serverAddress", az), ("unsafeSsl", "true")])).unwrap_err();
        assert_eq!(e.keys(), vec!["unsafeSsl"]);
        // Without Azure auth nothing is held.
        assert!(ok(&[("serverAddress", &addr)]).held().is_empty());
    }

    // ---- TLS ------------------------------------------------------------------------------

    use tokio_rustls::rustls;

    /// A TLS listener for `axum::serve`; failed handshakes are dropped.
    struct TlsListener {
        tcp: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
    }

    impl axum::serve::Listener for TlsListener {
        type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
        type Addr = std::net::SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                let Ok((tcp, addr)) = self.tcp.accept().await else {
                    continue;
                };
                if let Ok(tls) = self.acceptor.accept(tcp).await {
                    return (tls, addr);
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            self.tcp.local_addr()
        }
    }

    /// Serves [`VECTOR_17`] over TLS with the test server cert; `mtls` requires a client cert
    /// signed by the test CA.
    async fn serve_tls(mtls: bool) -> String {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(SERVER_PEM.as_bytes()).map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_slice(SERVER_KEY.as_bytes()).unwrap();
        let builder = rustls::ServerConfig::builder();
        let builder = if mtls {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_slice(CA_PEM.as_bytes()).unwrap()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder.with_single_cert(certs, key).unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = TlsListener { tcp, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) };
        let (app, _) = app(stub(200, VECTOR_17));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("https://{addr}")
    }

    #[tokio::test]
    async fn tls_server_needs_ca_or_unsafe_ssl() {
        let addr = serve_tls(false).await;
        let e = poll_with(&addr, &[]).await.unwrap_err();
        assert_eq!(e.kind(), "connect", "{e}");
        assert_eq!(poll_with(&addr, &[("ca", CA_PEM)]).await, Ok(Measurement::Value(17.0)));
        assert_eq!(poll_with(&addr, &[("unsafeSsl", "true")]).await, Ok(Measurement::Value(17.0)));
    }

    #[tokio::test]
    async fn mtls_sends_the_client_certificate() {
        let addr = serve_tls(true).await;
        let tls = [("authModes", "tls"), ("ca", CA_PEM), ("cert", CLIENT_PEM), ("key", CLIENT_KEY)];
        assert_eq!(poll_with(&addr, &tls).await, Ok(Measurement::Value(17.0)));
        assert!(poll_with(&addr, &[("ca", CA_PEM)]).await.is_err(), "no client cert, no answer");
    }

    #[test]
    fn mismatched_client_key_fails_when_building_the_client() {
        // Both PEMs are well-formed, so parse accepts them; rustls checks the pair when the
        // client is built. The error names `key` and does not show it.
        let s = ok(&[("authModes", "tls"), ("cert", CLIENT_PEM), ("key", SERVER_KEY)]);
        let e = s.build_poller(None).unwrap_err();
        assert_eq!(e.keys(), ["key"]);
        assert!(e.to_string().contains("KeyMismatch"), "{e}");
        assert!(!e.to_string().contains(SERVER_KEY.lines().nth(1).unwrap()));
    }
}
