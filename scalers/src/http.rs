//! HTTP plumbing every HTTP source shares: the client cache, bounded body reads, `Retry-After`,
//! one mapping from an HTTP status to a [`PollError`], and transport errors without URLs.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};

use crate::{ConfigErrors, PollError};

/// One `reqwest::Client` per distinct client setup (TLS roots, client certificate, …), shared
/// by every source that uses it. A client holds its TLS configuration, root store and
/// connection pool (about 150 KiB), so 1,000 queries on one server need one client, not 1,000.
/// Entries go when their last poller does.
#[derive(Default)]
pub struct ClientCache {
    clients: Mutex<Vec<([u8; 32], Weak<reqwest::Client>)>>,
}

/// The cache key of a client with default settings.
pub const DEFAULT_CLIENT: [u8; 32] = [0; 32];

impl ClientCache {
    /// The client for `key`, built by `build` when no live one exists.
    pub fn get(
        &self,
        key: [u8; 32],
        build: impl FnOnce() -> Result<reqwest::Client, ConfigErrors>,
    ) -> Result<Arc<reqwest::Client>, ConfigErrors> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.retain(|(_, w)| w.strong_count() > 0);
        if let Some(c) = clients.iter().find(|(k, _)| *k == key).and_then(|(_, w)| w.upgrade()) {
            return Ok(c);
        }
        let client = Arc::new(build()?);
        clients.push((key, Arc::downgrade(&client)));
        Ok(client)
    }

    /// The client with default settings; `key` names the metadata key an error is reported on.
    pub fn default_client(&self, key: &str) -> Result<Arc<reqwest::Client>, ConfigErrors> {
        self.get(DEFAULT_CLIENT, || {
            reqwest::Client::builder().build().map_err(|e| {
                crate::ConfigError::new(key, format!("cannot build the HTTP client: {}", chain(&e))).into()
            })
        })
    }

    /// Live clients (tests and the bench check sharing).
    pub fn len(&self) -> usize {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|(_, w)| w.strong_count() > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads at most `limit + 1` bytes, so that the caller can tell an over-long answer.
pub async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            break;
        }
    }
    Ok(body)
}

/// [`read_body`] as text (lossy UTF-8).
pub async fn read_text(response: reqwest::Response, limit: usize) -> Result<String, reqwest::Error> {
    read_body(response, limit).await.map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = azure_core::time::parse_rfc7231(v).ok()?;
    Some(Duration::try_from(at - azure_core::time::OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO))
}

/// The `Content-Type` of an answer, if it is text.
pub fn content_type(headers: &HeaderMap) -> Option<String> {
    headers.get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// A header value marked sensitive (never printed by the HTTP stack's `Debug`).
pub fn sensitive(v: &str) -> Result<HeaderValue, PollError> {
    let mut h = HeaderValue::from_str(v)
        .map_err(|_| PollError::Credential("the credential is not a valid HTTP header value".into()))?;
    h.set_sensitive(true);
    Ok(h)
}

/// The one mapping from a non-success status to a [`PollError`]. `detail` names the answer
/// without quoting it ([`crate::body_summary`] and the service's error code); `what` names the
/// entity for a 404.
pub fn status_error(status: u16, detail: String, retry_after: Option<Duration>, what: &str) -> PollError {
    match status {
        401 | 403 => PollError::Auth { status, detail },
        404 => PollError::NotFound(format!("{what}: {detail}")),
        429 | 503 => PollError::Throttled { detail: format!("HTTP {status}: {detail}"), retry_after },
        _ => PollError::Http { status, detail },
    }
}

/// A reqwest failure as a [`PollError`]: a timeout as such, anything else as a connection error
/// whose text has no URL (a query string may hold something private) and no `sig=` value.
pub fn transport_error(e: reqwest::Error, timeout: Duration) -> PollError {
    if e.is_timeout() {
        return PollError::Timeout(timeout);
    }
    PollError::Connect(crate::secret::redact_sig(&chain(&e.without_url())))
}

/// An error and its sources, joined with `: ` (a source already quoted is not repeated).
pub fn chain(e: &dyn std::error::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_one_error_kind_each() {
        // What the engine's backoff and the caller see (design: "Errors").
        let rows: &[(u16, &str)] = &[
            (401, "auth"),
            (403, "auth"),
            (404, "not_found"),
            (429, "throttled"),
            (503, "throttled"),
            (500, "http"),
            (502, "http"),
        ];
        for (status, kind) in rows {
            assert_eq!(status_error(*status, "d".into(), None, "queue q").kind(), *kind, "{status}");
        }
        let e = status_error(404, "empty body".into(), None, "queue \"q\"");
        assert_eq!(e.to_string(), "not found: queue \"q\": empty body");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static(" 7 "));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a date in the past waits nothing");
        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn clients_are_shared_per_key_and_dropped_with_their_last_user() {
        let cache = ClientCache::default();
        let a = cache.default_client("serverAddress").unwrap();
        let b = cache.default_client("serverAddress").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = cache.get([1; 32], || Ok(reqwest::Client::new())).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(cache.len(), 2);
        drop((a, b));
        assert_eq!(cache.len(), 1);
    }
}
