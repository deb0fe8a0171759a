//! The Prometheus poller: `GET /api/v1/query` (and `rateQuery`) at one instant, read as KEDA
//! reads the answer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{MAX_BODY, MAX_ERROR_BODY, PrometheusScaler, SCALER_TYPE};
use crate::azure::token::TokenCache;
use crate::http::{chain, content_type, read_body, retry_after, status_error, transport_error};
use crate::{ConfigError, ConfigErrors, Measurement, PollError, Poller, ScalerContext, excerpt};

impl PrometheusScaler {
    /// Builds the HTTP client. `credential` replaces ebb's own Azure identity (tests inject a
    /// fake); it is used only when Azure managed Prometheus auth applies.
    pub(super) fn build_poller(
        &self,
        ctx: &Arc<ScalerContext>,
        credential: Option<Arc<dyn TokenCredential>>,
    ) -> Result<PrometheusPoller, ConfigErrors> {
        let client = ctx.clients.get(self.client_key(), || self.build_client())?;
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
        let azure = self
            .azure_scope
            .as_ref()
            .map(|scope| TokenCache::new(self.query_url.clone(), scope.clone()).with_credential(credential));
        Ok(PrometheusPoller {
            ctx: ctx.clone(),
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

/// Polls one Prometheus query.
pub(super) struct PrometheusPoller {
    ctx: Arc<ScalerContext>,
    client: Arc<reqwest::Client>,
    /// `…/api/v1/query?query=<escaped>`; `&time=` follows.
    url_head: String,
    /// The same for `rateQuery`.
    rate_head: Option<String>,
    rate_query: Option<String>,
    /// `[&namespace=…][&k=v…]`.
    url_tail: String,
    headers: HeaderMap,
    /// Azure Monitor managed Prometheus tokens.
    azure: Option<TokenCache>,
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
        // The engine's deadline (`timeout`) covers getting a token too, as KEDA's client
        // timeout covers its round tripper.
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
        both.await
    }
}

impl PrometheusPoller {
    async fn query_once(&self, head: &str, query: &str, at: std::time::SystemTime) -> Result<f64, PollError> {
        let url = format!("{}&time={}{}", head, rfc3339_millis(at), self.url_tail);
        let mut headers = self.headers.clone();
        if let Some(azure) = &self.azure {
            headers.insert(AUTHORIZATION, azure.authorization(&self.ctx).await?);
        }
        let response = self
            .client
            .get(url)
            .timeout(self.timeout)
            .headers(headers)
            .send()
            .await
            .map_err(|e| transport_error(e, self.timeout))?;
        let status = response.status();
        let content_type = content_type(response.headers());
        if status.is_success() {
            let body = read_body(response, MAX_BODY).await.map_err(|e| transport_error(e, self.timeout))?;
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

        let retry_after = retry_after(response.headers());
        let body = read_body(response, MAX_ERROR_BODY).await.unwrap_or_default();
        let detail = error_detail(content_type.as_deref(), &body);
        tracing::debug!(
            scaler = SCALER_TYPE,
            status = status.as_u16(),
            detail = %excerpt_bytes(&body),
            "prometheus query api returned an error"
        );
        if matches!(status.as_u16(), 401 | 403)
            && let Some(azure) = &self.azure
        {
            azure.forget().await;
        }
        Err(status_error(status.as_u16(), detail, retry_after, &format!("{} answered HTTP 404", self.path())))
    }

    /// The query API path, for messages (never the query string: it may hold parameters).
    fn path(&self) -> &str {
        self.url_head.split('?').next().unwrap_or_default()
    }
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
