//! One Entra token cache per (source, scope): a bearer token from ebb's own identity, reused
//! until shortly before it expires, dropped after the service rejects it.

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential};
use url::Url;

use crate::{PollError, ScalerContext};

/// A cached token is renewed this long before it expires.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);

pub struct TokenCache {
    /// Where the token goes; checked ([`ScalerContext::identity_for`]) before ebb's identity is
    /// asked for one.
    target: Url,
    scope: String,
    /// Replaces ebb's own identity (tests inject a fake).
    credential: Option<Arc<dyn TokenCredential>>,
    slot: tokio::sync::Mutex<Option<AccessToken>>,
}

impl TokenCache {
    pub fn new(target: Url, scope: impl Into<String>) -> Self {
        Self { target, scope: scope.into(), credential: None, slot: tokio::sync::Mutex::new(None) }
    }

    /// Uses `credential` instead of ebb's own identity when it is `Some`.
    pub fn with_credential(mut self, credential: Option<Arc<dyn TokenCredential>>) -> Self {
        self.credential = credential;
        self
    }

    /// The token, fetched when none is cached or the cached one is about to expire.
    pub async fn token(&self, ctx: &ScalerContext) -> Result<String, PollError> {
        let mut cached = self.slot.lock().await;
        let fresh_until = azure_core::time::OffsetDateTime::now_utc() + REFRESH_MARGIN;
        if let Some(t) = cached.as_ref().filter(|t| t.expires_on > fresh_until) {
            return Ok(t.token.secret().to_owned());
        }
        let credential = match &self.credential {
            Some(c) => c.clone(),
            None => ctx.identity_for(&self.target)?,
        };
        let t = credential
            .get_token(&[self.scope.as_str()], None)
            .await
            .map_err(|e| PollError::Credential(format!("token for {}: {}", self.scope, crate::http::chain(&e))))?;
        Ok(cached.insert(t).token.secret().to_owned())
    }

    /// `Bearer <token>` as a sensitive header value.
    pub async fn authorization(&self, ctx: &ScalerContext) -> Result<reqwest::header::HeaderValue, PollError> {
        crate::http::sensitive(&format!("Bearer {}", self.token(ctx).await?))
    }

    /// Drops the cached token (after a 401/403) so the next poll asks for a new one.
    pub async fn forget(&self) {
        *self.slot.lock().await = None;
    }
}

/// A credential that counts its calls and answers a fixed token or error (tests).
#[cfg(test)]
pub(crate) mod fake {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use azure_core::credentials::{AccessToken, TokenCredential};

    use super::*;

    #[derive(Debug)]
    pub(crate) struct FakeCredential {
        pub(crate) token: Result<&'static str, &'static str>,
        pub(crate) lifetime: Duration,
        pub(crate) calls: AtomicUsize,
        pub(crate) scopes: Mutex<Vec<String>>,
    }

    impl FakeCredential {
        pub(crate) fn new(token: Result<&'static str, &'static str>, lifetime: Duration) -> Arc<Self> {
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
}
