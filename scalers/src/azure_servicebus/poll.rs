//! The Service Bus poller: the management API's ATOM answers for one entity or a listing.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use reqwest::header::{AUTHORIZATION, HeaderValue};

use super::{API_VERSION, Auth, Entity, MAX_BODY, MAX_PAGES, Operation, PAGE_SIZE, SCALER_TYPE, ServiceBusScaler};
use super::{ENTRA_SCOPE, parse_atom};
use crate::azure::SecretSource;
use crate::azure::namespace::{
    NamespaceConnection, error_detail, malformed_atom, path_encode, sas_authorization, scheme_for,
};
use crate::azure::token::TokenCache;
use crate::http::{content_type, read_text, retry_after, status_error, transport_error};
use crate::secret::scrub;
use crate::{ConfigErrors, Measurement, PollError, Poller, ScalerContext, excerpt};

impl ServiceBusScaler {
    /// `credential` replaces ebb's own Entra identity (tests inject a fake).
    pub(super) fn build_poller(
        &self,
        ctx: &Arc<ScalerContext>,
        credential: Option<Arc<dyn azure_core::credentials::TokenCredential>>,
    ) -> Result<ServiceBusPoller, ConfigErrors> {
        let token = match &self.auth {
            Auth::Identity { host, host_key } => {
                let target = url::Url::parse(&format!("https://{host}/"))
                    .map_err(|_| crate::ConfigError::new(*host_key, "the namespace host is not a URL"))?;
                Some(TokenCache::new(target, ENTRA_SCOPE).with_credential(credential))
            }
            Auth::Connection { .. } => None,
        };
        Ok(ServiceBusPoller {
            ctx: ctx.clone(),
            client: ctx.clients.default_client("connection")?,
            entity: self.entity.clone(),
            regex: self.regex.clone(),
            operation: self.operation,
            auth: self.auth.clone(),
            token,
            timeout: self.timeout,
        })
    }
}

/// Polls one queue, subscription or regex over them.
pub(super) struct ServiceBusPoller {
    ctx: Arc<ScalerContext>,
    client: Arc<reqwest::Client>,
    entity: Entity,
    regex: Option<Regex>,
    operation: Operation,
    auth: Auth,
    /// Entra tokens (identity mode).
    token: Option<TokenCache>,
    timeout: Duration,
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
        self.count().await.map(|n| Measurement::Value(n as f64))
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
        if let (Err(PollError::Auth { .. }), Some(token)) = (&result, &self.token) {
            token.forget().await;
        }
        result
    }

    /// The base URL and the `Authorization` header for this poll.
    async fn target(&self) -> Result<Target, PollError> {
        match (&self.auth, &self.token) {
            (Auth::Connection { source, parsed }, _) => {
                let cs = match parsed {
                    Some(cs) => Cow::Borrowed(cs),
                    None => {
                        let SecretSource::Named(name) = source else { unreachable!("values are parsed at parse time") };
                        let value = source.resolve(&self.ctx)?;
                        Cow::Owned(
                            NamespaceConnection::parse(&value)
                                .map_err(|reason| PollError::Credential(format!("named secret {name:?}: {reason}")))?,
                        )
                    }
                };
                let base = format!("{}://{}", scheme_for(&cs.host), cs.host);
                let (authorization, secrets) = sas_authorization(&cs.credential, &format!("{base}/"))?;
                Ok(Target { base, authorization, secrets })
            }
            (Auth::Identity { host, .. }, Some(cache)) => {
                let token = cache.token(&self.ctx).await?;
                let authorization = crate::http::sensitive(&format!("Bearer {token}"))?;
                Ok(Target { base: format!("{}://{host}", scheme_for(host)), authorization, secrets: vec![token] })
            }
            (Auth::Identity { .. }, None) => Err(PollError::Credential("no token cache for the identity".into())),
        }
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
            .map_err(|e| transport_error(e, self.timeout))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let content_type = content_type(response.headers());
        let body = read_text(response, MAX_BODY).await.map_err(|e| transport_error(e, self.timeout))?;
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
        Err(status_error(status.as_u16(), detail, retry_after, what))
    }
}
