//! The queue poller: the Azure SDK's queue client, with a SAS ebb signs from an account key.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use azure_core::error::ErrorKind;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_storage_queue::models::{QueueClientGetPropertiesResultHeaders, QueueClientPeekMessagesOptions};
use azure_storage_queue::{QueueClient, QueueClientOptions};

use super::{Access, MAX_PEEK, SCALER_TYPE, Strategy};
use crate::azure::storage::{
    ConnectionCredential, ConnectionString, SAS_LIFETIME, SAS_RENEW_BEFORE, is_storage_code, queue_service_sas,
    storage_error_detail,
};
use crate::http::chain;
use crate::secret::{fingerprint, redact_sig as redact};
use crate::{Measurement, PollError, Poller, ScalerContext};

pub(super) struct QueuePoller {
    pub(super) ctx: Arc<ScalerContext>,
    pub(super) queue_name: String,
    pub(super) strategy: Strategy,
    pub(super) access: Access,
    pub(super) client: Mutex<Option<CachedClient>>,
}

pub(super) struct CachedClient {
    client: Arc<QueueClient>,
    /// Fingerprint of the connection string it was built from (a rotated secret rebuilds).
    secret: Option<String>,
    /// When a signed SAS must be renewed.
    renew_at: Option<Instant>,
    /// Where it points, for messages (no query).
    endpoint: String,
}

/// One HTTP stack for every queue client of a context (connection pooling across sources).
fn client_options(ctx: &ScalerContext) -> QueueClientOptions {
    QueueClientOptions {
        client_options: ClientOptions {
            // The engine retries with backoff; one poll is one attempt.
            retry: RetryOptions::none(),
            transport: Some(Transport::new(ctx.azure_transport())),
            ..Default::default()
        },
        ..Default::default()
    }
}

impl QueuePoller {
    fn client(&self) -> Result<(Arc<QueueClient>, String), PollError> {
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        let secret = match &self.access {
            Access::Connection(s) => Some(s.resolve(&self.ctx)?),
            Access::Identity(_) => None,
        };
        let fp = secret.as_deref().map(fingerprint);
        if let Some(c) = slot.as_ref()
            && c.secret == fp
            && c.renew_at.is_none_or(|t| Instant::now() < t)
        {
            return Ok((c.client.clone(), c.endpoint.clone()));
        }
        let (url, credential, renew_at) = match (&self.access, secret) {
            (Access::Identity(url), _) => (url.clone(), Some(self.ctx.identity_for(url)?), None),
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
        let client = QueueClient::new(url, credential, Some(client_options(&self.ctx))).map_err(|e| {
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
            let what = format!("queue {queue} at {endpoint}");
            let detail = match status {
                401 | 403 => format!("{what}: {code}; check the account key, SAS or role"),
                404 => code,
                _ => format!("queue {queue}: {code}"),
            };
            crate::http::status_error(status, detail, None, &what)
        }
        ErrorKind::Credential => PollError::Credential(redact(&e.to_string())),
        ErrorKind::Io => PollError::Connect(format!("{endpoint}: {}", redact(&chain(e)))),
        ErrorKind::DataConversion => {
            // The SDK's conversion errors can quote the answer.
            tracing::debug!(scaler = SCALER_TYPE, detail = %redact(&e.to_string()), "storage queue answer unreadable");
            PollError::Malformed(format!("queue {queue}: the answer could not be read"))
        }
        _ => PollError::Connect(format!("{endpoint}: {}", redact(&chain(e)))),
    }
}

#[async_trait::async_trait]
impl Poller for QueuePoller {
    async fn poll(&self) -> Result<Measurement, PollError> {
        self.count().await.map(|n| Measurement::Value(n as f64))
    }
}
