//! What every poller may use from the process: where named secrets live, how many upstream
//! requests one poll may have in flight, ebb's own Azure identity, and the shared HTTP clients.
//!
//! One [`ScalerContext`] is built from [`Settings`] by whoever runs scalers (`ebb serve` and
//! `ebb check` from the same flags; `ebb bench` runs `ebb serve`; tests) and handed to every
//! poller it builds
//! ([`crate::Scaler::poller`]), so two contexts never share state and a test sets what it
//! needs without touching a process global.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use azure_core::credentials::TokenCredential;
use azure_core::http::HttpClient;

use crate::PollError;
use crate::http::ClientCache;

/// Upstream requests one poll may have in flight at once, per service it calls, by default.
pub const DEFAULT_UPSTREAM_CONCURRENCY: usize = 16;

/// Where named secrets are read from by default (`ebb serve --secrets-dir`).
pub const DEFAULT_SECRETS_DIR: &str = "/var/run/secrets/ebb";

/// The operator's settings for scalers (`ebb serve` and `ebb check` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `connectionRef: NAME` reads the file `NAME` here.
    pub secrets_dir: PathBuf,
    /// Upstream requests one poll may have in flight at once (at least 1).
    pub upstream_concurrency: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self { secrets_dir: PathBuf::from(DEFAULT_SECRETS_DIR), upstream_concurrency: DEFAULT_UPSTREAM_CONCURRENCY }
    }
}

/// See the module docs. Cheap to share (`Arc`); pollers keep one.
pub struct ScalerContext {
    settings: Settings,
    /// ebb's own Entra ID identity, built on first use; a failure is not kept.
    identity: Mutex<Option<Arc<dyn TokenCredential>>>,
    /// reqwest clients by TLS setup.
    pub clients: ClientCache,
    /// The Azure SDK's HTTP stack (Storage Queue client), one for every queue source.
    azure_transport: OnceLock<Arc<dyn HttpClient>>,
    /// Other clients shared by sources of one scaler ([`ScalerContext::shared`]).
    shared: Mutex<HashMap<(TypeId, String), Weak<dyn Any + Send + Sync>>>,
}

impl std::fmt::Debug for ScalerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScalerContext").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Default for ScalerContext {
    fn default() -> Self {
        Self::new(Settings::default())
    }
}

impl ScalerContext {
    pub fn new(mut settings: Settings) -> Self {
        settings.upstream_concurrency = settings.upstream_concurrency.max(1);
        Self {
            settings,
            identity: Mutex::new(None),
            clients: ClientCache::default(),
            azure_transport: OnceLock::new(),
            shared: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn secrets_dir(&self) -> &Path {
        &self.settings.secrets_dir
    }

    /// The named secret `name` now (re-read at every call, so a rotated secret is picked up).
    pub fn read_secret(&self, name: &str) -> Result<String, PollError> {
        let path = self.secrets_dir().join(name);
        std::fs::read_to_string(&path).map(|s| s.trim().to_string()).map_err(|e| {
            PollError::Credential(format!("named secret {name:?} cannot be read from {}: {e}", path.display()))
        })
    }

    /// Runs `request` for each item with at most the upstream concurrency limit in flight, in
    /// order; the first error ends it. A poll that fans out (a request per Event Hubs partition
    /// and per checkpoint, Kafka metadata per topic) goes through here, so a hub with 1,024
    /// partitions does not open 2,048 connections at once.
    pub async fn bounded_requests<I, F, Fut, T>(&self, items: I, request: F) -> Result<Vec<T>, PollError>
    where
        I: IntoIterator,
        F: FnMut(I::Item) -> Fut,
        Fut: Future<Output = Result<T, PollError>>,
    {
        use futures::{StreamExt, TryStreamExt};
        let limit = self.settings.upstream_concurrency;
        futures::stream::iter(items).map(request).buffered(limit).try_collect().await
    }

    /// ebb's own identity for a token that will be sent to `target`. The engine has checked the
    /// trigger's declared uses against the operator's policy ([`crate::trust`]); this checks
    /// again, at the last moment, that the token goes over https to a service host name.
    pub fn identity_for(&self, target: &url::Url) -> Result<Arc<dyn TokenCredential>, PollError> {
        crate::trust::check_token_target(target)?;
        self.identity()
    }

    /// Workload identity when `AZURE_FEDERATED_TOKEN_FILE` is set, else managed identity
    /// (user-assigned when `AZURE_CLIENT_ID` is set), shared by every source (the credentials
    /// cache tokens per scope). A failure is not kept: the next poll retries.
    fn identity(&self) -> Result<Arc<dyn TokenCredential>, PollError> {
        let mut slot = self.identity.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let credential: Arc<dyn TokenCredential> = if env("AZURE_FEDERATED_TOKEN_FILE").is_some() {
            azure_identity::WorkloadIdentityCredential::new(None)
                .map_err(|e| PollError::Credential(format!("workload identity: {e}")))?
        } else {
            let options = azure_identity::ManagedIdentityCredentialOptions {
                user_assigned_id: env("AZURE_CLIENT_ID").map(azure_identity::UserAssignedId::ClientId),
                ..Default::default()
            };
            azure_identity::ManagedIdentityCredential::new(Some(options))
                .map_err(|e| PollError::Credential(format!("managed identity: {e}")))?
        };
        *slot = Some(credential.clone());
        Ok(credential)
    }

    /// The live `T` for `key`, or a new one from `build`: one client per cluster shared by every
    /// source on it (Kafka). Entries go when their last user does.
    pub fn shared<T, E>(&self, key: &str, build: impl FnOnce() -> Result<T, E>) -> Result<Arc<T>, E>
    where
        T: Any + Send + Sync,
    {
        let mut map = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        let id = (TypeId::of::<T>(), key.to_owned());
        if let Some(c) = map.get(&id).and_then(Weak::upgrade).and_then(|c| c.downcast::<T>().ok()) {
            return Ok(c);
        }
        let client = Arc::new(build()?);
        let erased: Arc<dyn Any + Send + Sync> = client.clone();
        map.insert(id, Arc::downgrade(&erased));
        Ok(client)
    }

    /// The Azure SDK HTTP stack shared by every Storage Queue client (connection pooling).
    pub fn azure_transport(&self) -> Arc<dyn HttpClient> {
        self.azure_transport.get_or_init(|| azure_core::http::new_http_client(None)).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn context(dir: &Path, upstream_concurrency: usize) -> ScalerContext {
        ScalerContext::new(Settings { secrets_dir: dir.to_path_buf(), upstream_concurrency })
    }

    #[tokio::test]
    async fn bounded_requests_caps_what_is_in_flight_and_keeps_order() {
        for limit in [1, 3, DEFAULT_UPSTREAM_CONCURRENCY] {
            let ctx = context(Path::new("/nonexistent"), limit);
            let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let got = ctx
                .bounded_requests(0..100u32, |i| {
                    let (now, peak) = (now.clone(), peak.clone());
                    async move {
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(n, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(u64::from(i % 3))).await;
                        now.fetch_sub(1, Ordering::SeqCst);
                        Ok(i * 2)
                    }
                })
                .await
                .unwrap();
            assert_eq!(got, (0..100).map(|i| i * 2).collect::<Vec<_>>());
            assert_eq!(peak.load(Ordering::SeqCst), limit);
        }
        let ctx = ScalerContext::default();
        let err = ctx
            .bounded_requests(0..10u32, |i| async move {
                if i == 3 { Err(PollError::Timeout(Duration::from_secs(1))) } else { Ok(i) }
            })
            .await;
        assert!(matches!(err, Err(PollError::Timeout(_))), "{err:?}");
        assert_eq!(context(Path::new("/"), 0).settings().upstream_concurrency, 1, "at least one request");
    }

    #[test]
    fn named_secrets_are_read_from_this_contexts_dir_at_every_call() {
        let dir = std::env::temp_dir().join(format!("ebb-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ctx = context(&dir, 1);
        std::fs::write(dir.join("conn"), "first\n").unwrap();
        assert_eq!(ctx.read_secret("conn").unwrap(), "first");
        std::fs::write(dir.join("conn"), "rotated").unwrap();
        assert_eq!(ctx.read_secret("conn").unwrap(), "rotated");
        assert_eq!(ctx.read_secret("missing").unwrap_err().kind(), "credential");
        // Another context in the same process reads its own directory.
        assert_eq!(context(Path::new("/nonexistent"), 1).read_secret("conn").unwrap_err().kind(), "credential");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn shared_clients_live_as_long_as_their_users() {
        let ctx = ScalerContext::default();
        let a = ctx.shared::<String, ()>("k", || Ok("first".into())).unwrap();
        let b = ctx.shared::<String, ()>("k", || Ok("second".into())).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(*ctx.shared::<u32, ()>("k", || Ok(7)).unwrap(), 7, "keyed by type too");
        drop((a, b));
        assert_eq!(*ctx.shared::<String, ()>("k", || Ok("third".into())).unwrap(), "third");
        assert_eq!(ctx.shared::<String, &str>("e", || Err("no")).unwrap_err(), "no");
    }

    #[test]
    fn identity_is_refused_for_a_target_that_is_not_https() {
        let ctx = ScalerContext::default();
        let e = ctx.identity_for(&url::Url::parse("http://example.com/").unwrap()).err().unwrap();
        assert_eq!(e.kind(), "credential", "{e}");
    }
}
