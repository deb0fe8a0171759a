//! The engine: ScaledObject triggers, the shared source cache, and decisions.
//!
//! # Layout
//! - [`policy`]: ebb's own metadata keys (`pollingInterval`, `outputMode`, replica knobs).
//! - [`decision`]: pure decision functions with an injected clock.
//! - [`source`]: one poll task per distinct source key, on a wall-clock grid; backoff, publication.
//! - [`trigger`]: one tracked ScaledObject trigger and its decision state.
//!
//! A request names a trigger by (namespace, name, metadata). The first request for it parses
//! the metadata, attaches it to the source with its key (starting that source's task if new)
//! and waits, bounded, for the source's first poll; every later request answers from memory.

pub mod backlog;
pub mod decision;
pub mod drain;
pub mod keda_keys;
pub mod log;
pub mod policy;
pub mod source;
mod stream;
pub mod trigger;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ebb_scalers::{ConfigErrors, Metadata, Registry, SourceKey};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::info;

pub use decision::Decision;
use source::{Source, SourceStatus};
pub use stream::{StreamLease, StreamPermit};
pub use trigger::Trigger;

use crate::access::{Access, Refusal};
use crate::metrics::Metrics;
use keda_keys::{Door, UnsafeSslReading};

/// Engine tuning. Every field has a CLI flag on `ebb serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// The longest a request waits for a new source's first poll before it gets UNAVAILABLE
    /// (the poll goes on; the next request may find it done). Well under KEDA's 3 s deadline.
    pub first_poll_wait: Duration,
    /// The last good value serves while younger than `max(max_staleness, 3 × interval)`;
    /// after that requests get UNAVAILABLE with the last error.
    pub max_staleness: Duration,
    /// Ceiling of the retry delay after failed polls, which doubles from 1 s and never exceeds
    /// the polling interval either (see [`source::backoff`]).
    pub max_backoff: Duration,
    /// Least wait after a throttling answer (HTTP 429/503, Service Bus without CountDetails).
    pub throttle_backoff: Duration,
    /// A trigger nobody asked about for `max(idle_timeout, 10 × pollingInterval)` is dropped,
    /// and its source stops when no trigger uses it.
    pub idle_timeout: Duration,
    /// How often idle triggers and sources are swept.
    pub sweep_every: Duration,
    /// `--min-polling-interval`: a trigger asking for a shorter `pollingInterval` gets this, so
    /// one caller cannot make ebb hammer a source every trigger sharing it depends on.
    pub min_polling_interval: Duration,
    /// Limits, each with its flag on `ebb serve`.
    pub limits: Limits,
    /// Who may use ebb's identity and secrets, and where they may go.
    pub access: Access,
    /// ebb serves gRPC over TLS: KEDA's `unsafeSsl` is then about its connection to ebb, not
    /// the source's ([`keda_keys`]). Set by [`crate::server::spawn`] from its TLS options.
    pub grpc_tls: bool,
}

/// What one ebb accepts. A request over a limit gets an error naming the limit's flag; the
/// trigger and source limits evict the least recently used trigger, or source, first.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// `--max-metadata-entries`: keys in one trigger's metadata.
    pub metadata_entries: usize,
    /// `--max-metadata-bytes`: keys and values of one trigger's metadata, in bytes.
    pub metadata_bytes: usize,
    /// `--max-scaledobjects`: tracked triggers; beyond it the least recently used one without an
    /// open stream is dropped.
    pub triggers: usize,
    /// `--max-sources`: distinct sources; a new source beyond it evicts the least recently used
    /// source with all its triggers.
    pub sources: usize,
    /// `--max-streams`: open StreamIsActive / StreamMetricSpec streams.
    pub streams: usize,
    /// `--max-concurrent-polls`: polls in flight at once over all sources (each source has at
    /// most one).
    pub concurrent_polls: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            metadata_entries: 128,
            metadata_bytes: 64 * 1024,
            triggers: 100_000,
            sources: 20_000,
            streams: 50_000,
            concurrent_polls: 512,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            first_poll_wait: Duration::from_millis(1500),
            max_staleness: Duration::from_secs(60),
            max_backoff: Duration::from_secs(30),
            throttle_backoff: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            sweep_every: Duration::from_secs(10),
            min_polling_interval: DEFAULT_MIN_POLLING_INTERVAL,
            limits: Limits::default(),
            access: Access::default(),
            grpc_tls: false,
        }
    }
}

/// `--min-polling-interval`'s default: KEDA's own minimum polling interval.
pub const DEFAULT_MIN_POLLING_INTERVAL: Duration = Duration::from_secs(1);

/// Why a request could not be answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The trigger metadata is invalid; each error names its key.
    #[error("invalid trigger metadata: {0}")]
    InvalidMetadata(#[from] ConfigErrors),
    /// The source's first poll has not finished yet.
    #[error("{scaler} source is still being polled for the first time (waited {waited:?})")]
    FirstPollPending { scaler: &'static str, waited: Duration },
    /// The source failed and no good value young enough is left.
    #[error("{scaler} source unavailable: {reason}")]
    Unavailable { scaler: &'static str, reason: String },
    /// A limit of this ebb was reached; `flag` names it.
    #[error("limit reached: {what} (ebb serve {flag} {limit})")]
    LimitReached { what: String, flag: &'static str, limit: usize },
    /// The request's metadata is larger than this ebb accepts (the caller's to fix, unlike
    /// [`EngineError::LimitReached`]); `flag` names the limit.
    #[error("limit reached: {what} (ebb serve {flag} {limit})")]
    MetadataTooLarge { what: String, flag: &'static str, limit: usize },
    /// The operator's access policy does not let this namespace use what it asked for.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
}

impl From<Refusal> for EngineError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Metadata(e) => EngineError::InvalidMetadata(e.into()),
            Refusal::Policy(reason) => EngineError::PermissionDenied(reason),
        }
    }
}

/// The metadata key naming a KEDA TriggerAuthentication in the ScaledObject's namespace.
pub const AUTHENTICATION_REF: &str = "authenticationRef";

/// Reads a TriggerAuthentication's parameters (`parameter → value`), for `authenticationRef`.
/// The `k8s` feature provides one backed by the Kubernetes API. The error is a reason shown to
/// KEDA: it must not carry a secret.
#[async_trait::async_trait]
pub trait AuthRefResolver: Send + Sync {
    async fn resolve(&self, namespace: &str, name: &str) -> Result<HashMap<String, String>, String>;
}

/// The ready replicas of a ScaledObject's scale target, for `policy: drain` (its queue+R mode:
/// the ready count read, not estimated from what ebb asked for). The `k8s` feature provides
/// one backed by the Kubernetes API. Answers from what it last read, never blocking; `None`
/// until a fresh count is known.
pub trait ReadyReplicas: Send + Sync {
    fn ready(&self, namespace: &str, scaled_object: &str) -> Option<u32>;
}

struct Inner {
    config: EngineConfig,
    /// Scaler types and the context their pollers are built with.
    registry: Arc<Registry>,
    auth_refs: Option<Arc<dyn AuthRefResolver>>,
    ready_replicas: Option<Arc<dyn ReadyReplicas>>,
    metrics: Arc<Metrics>,
    epoch: Instant,
    /// The wall clock the poll grid runs on.
    clock: source::WallClock,
    /// Triggers by [`trigger::trigger_hash`]; a bucket holds the rare collisions.
    triggers: RwLock<HashMap<u64, Vec<Arc<Trigger>>>>,
    sources: Mutex<HashMap<SourceKey, Arc<Source>>>,
    /// Set on shutdown; open streams end when they see it.
    closing: tokio::sync::watch::Sender<bool>,
    /// Open streams, against `limits.streams`.
    open_streams: Arc<std::sync::atomic::AtomicUsize>,
    /// Polls in flight, against `limits.concurrent_polls`.
    poll_permits: Arc<tokio::sync::Semaphore>,
}

/// The engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// An engine serving the scalers of `registry` (the built-in ones in production; tests
    /// register scalers they control).
    pub fn new(config: EngineConfig, metrics: Arc<Metrics>, registry: Arc<Registry>) -> Self {
        let poll_permits = Arc::new(tokio::sync::Semaphore::new(config.limits.concurrent_polls.max(1)));
        Self {
            inner: Arc::new(Inner {
                poll_permits,
                open_streams: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
                config,
                registry,
                auth_refs: None,
                ready_replicas: None,
                metrics,
                epoch: Instant::now(),
                clock: source::WallClock::new(),
                triggers: RwLock::new(HashMap::new()),
                sources: Mutex::new(HashMap::new()),
                closing: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    /// Turns on `authenticationRef` lookups. Call before the engine is shared.
    pub fn with_auth_refs(mut self, resolver: Arc<dyn AuthRefResolver>) -> Self {
        Arc::get_mut(&mut self.inner).expect("engine not shared yet").auth_refs = Some(resolver);
        self
    }

    /// Lets `policy: drain` read the scale target's ready replicas, for the namespaces the access
    /// policy binds to `readyReplicas`. Call before the engine is shared.
    pub fn with_ready_replicas(mut self, source: Arc<dyn ReadyReplicas>) -> Self {
        Arc::get_mut(&mut self.inner).expect("engine not shared yet").ready_replicas = Some(source);
        self
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// A place for one more open stream, or the `--max-streams` error.
    pub fn stream_permit(&self) -> Result<StreamPermit, EngineError> {
        use std::sync::atomic::Ordering;
        let limit = self.inner.config.limits.streams;
        let open = &self.inner.open_streams;
        if open.fetch_add(1, Ordering::Relaxed) >= limit {
            open.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::LimitReached { what: "open streams".into(), flag: "--max-streams", limit });
        }
        Ok(StreamPermit(open.clone()))
    }

    /// Every source being polled, sorted by key.
    pub fn sources(&self) -> Vec<Arc<Source>> {
        let mut v: Vec<_> = self.inner.sources.lock().expect("sources lock").values().cloned().collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    /// Every trigger, sorted by namespace, name and metric name.
    pub fn triggers(&self) -> Vec<Arc<Trigger>> {
        let mut v: Vec<_> = self.inner.triggers.read().expect("triggers lock").values().flatten().cloned().collect();
        v.sort_by(|a, b| (&a.namespace, &a.name, &a.metric_name).cmp(&(&b.namespace, &b.name, &b.metric_name)));
        v
    }

    /// Number of distinct sources being polled.
    pub fn source_count(&self) -> usize {
        self.inner.sources.lock().expect("sources lock").len()
    }

    /// Number of tracked triggers.
    pub fn trigger_count(&self) -> usize {
        self.inner.triggers.read().expect("triggers lock").values().map(Vec::len).sum()
    }

    /// Finds or creates the trigger KEDA names. A new trigger's source starts polling in the
    /// background; `authenticationRef` (a KEDA TriggerAuthentication in the ScaledObject's
    /// namespace) is resolved through the configured resolver, its parameters filling keys the
    /// metadata does not set. `peer` is logged once per new trigger, since a Container Apps rule
    /// that never reaches ebb leaves no other trace.
    pub async fn resolve(
        &self,
        namespace: &str,
        name: &str,
        metadata: &HashMap<String, String>,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<Trigger>, EngineError> {
        let door = Door::Keda { tls: self.inner.config.grpc_tls };
        self.resolve_at(door, namespace, name, metadata, peer).await
    }

    /// [`Engine::resolve`] for a ScaledObject declared in ebb's own config (the bridge): no
    /// KEDA client sits between, so every key is ebb's.
    pub async fn resolve_declared(
        &self,
        namespace: &str,
        name: &str,
        metadata: &HashMap<String, String>,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<Trigger>, EngineError> {
        self.resolve_at(Door::Config, namespace, name, metadata, peer).await
    }

    async fn resolve_at(
        &self,
        door: Door,
        namespace: &str,
        name: &str,
        metadata: &HashMap<String, String>,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<Trigger>, EngineError> {
        check_metadata_size(metadata, &self.inner.config.limits)?;
        if let Some(t) = self.find(namespace, name, metadata) {
            if let Some(peer) = peer
                && t.new_caller(peer.ip())
            {
                info!(namespace, scaledobject = name, %peer, "new caller for ScaledObject trigger");
            }
            return Ok(t);
        }
        let Some(auth_ref) = Metadata::new(metadata).get(AUTHENTICATION_REF) else {
            return self.create(door, namespace, name, metadata, metadata, peer);
        };
        let Some(resolver) = &self.inner.auth_refs else {
            return Err(EngineError::InvalidMetadata(
                ebb_scalers::ConfigError::new(
                    AUTHENTICATION_REF,
                    "TriggerAuthentication lookup is off: run ebb built with the k8s feature and `serve --kube`",
                )
                .into(),
            ));
        };
        // The caller names the namespace: its TriggerAuthentications are read only when the
        // operator can vouch for that name and has bound the namespace to the feature.
        self.inner.config.access.check_auth_ref(namespace)?;
        // Bounded like a first poll: KEDA's calls carry a 3 s deadline.
        let wait = self.inner.config.first_poll_wait;
        let params = match tokio::time::timeout(wait, resolver.resolve(namespace, auth_ref)).await {
            Ok(Ok(p)) => p,
            Ok(Err(reason)) => {
                return Err(EngineError::InvalidMetadata(
                    ebb_scalers::ConfigError::new(AUTHENTICATION_REF, reason).into(),
                ));
            }
            Err(_) => {
                return Err(EngineError::Unavailable {
                    scaler: "authenticationRef",
                    reason: format!("TriggerAuthentication {namespace}/{auth_ref} lookup took longer than {wait:?}"),
                });
            }
        };
        let mut merged = metadata.clone();
        for (k, v) in params {
            merged.entry(k).or_insert(v);
        }
        self.create(door, namespace, name, metadata, &merged, peer)
    }

    fn find(&self, namespace: &str, name: &str, metadata: &HashMap<String, String>) -> Option<Arc<Trigger>> {
        let hash = trigger::trigger_hash(namespace, name, metadata);
        let triggers = self.inner.triggers.read().expect("triggers lock");
        let t = triggers.get(&hash)?.iter().find(|t| t.is(namespace, name, metadata))?.clone();
        t.touch(Instant::now());
        Some(t)
    }

    /// Creates the trigger named by (`namespace`, `name`, `metadata`), parsing `parse_md`
    /// (the metadata with any TriggerAuthentication parameters merged in).
    /// KEDA's own connection keys are set aside first ([`keda_keys`]).
    fn create(
        &self,
        door: Door,
        namespace: &str,
        name: &str,
        metadata: &HashMap<String, String>,
        parse_md: &HashMap<String, String>,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<Trigger>, EngineError> {
        let hash = trigger::trigger_hash(namespace, name, metadata);
        let Assembled { view, scaler, options, floored_from } = assemble(
            metadata,
            parse_md,
            door,
            &self.inner.registry,
            |held| Ok(self.inner.config.access.check(namespace, held)?),
            self.inner.config.min_polling_interval,
        )?;
        if view.unsafe_ssl != UnsafeSslReading::Absent {
            info!(namespace, scaledobject = name, reading = view.unsafe_ssl.describe(), "unsafeSsl");
        }
        if let Some(asked) = floored_from {
            info!(
                namespace,
                scaledobject = name,
                asked = ?asked,
                floor = ?options.polling_interval,
                "pollingInterval below ebb serve --min-polling-interval: polling at the floor"
            );
        }
        let metric_name =
            options.metric_name.clone().unwrap_or_else(|| trigger::default_metric_name(scaler.scaler_type(), metadata));

        let mut triggers = self.inner.triggers.write().expect("triggers lock");
        if let Some(t) = triggers.get(&hash).and_then(|b| b.iter().find(|t| t.is(namespace, name, metadata))) {
            return Ok(t.clone());
        }
        self.make_room(&mut triggers, scaler.source_key())?;
        let source = self.source_for(scaler.as_ref(), options.polling_interval)?;
        // The ready count is read with ebb's own Kubernetes identity: only for namespaces the
        // operator bound to it, and only when the caller's namespace can be believed.
        let ready = match (&self.inner.ready_replicas, &options.policy.rule) {
            (Some(r), policy::Rule::Drain(_)) => match self.inner.config.access.check_ready_replicas(namespace) {
                Ok(()) => Some(r.clone()),
                Err(refusal) => {
                    info!(namespace, scaledobject = name, %refusal, "policy: drain estimates the ready replicas");
                    None
                }
            },
            _ => None,
        };
        let t = Arc::new(
            Trigger::new(
                namespace,
                name,
                metadata,
                scaler,
                options,
                metric_name,
                source.clone(),
                self.inner.metrics.clone(),
                self.inner.epoch,
                self.inner.clock,
            )
            .with_ready_replicas(ready),
        );
        source.attach(&t);
        if let Some(p) = peer {
            t.new_caller(p.ip());
        }
        triggers.entry(hash).or_default().push(t.clone());
        self.inner.metrics.triggers.inc();
        info!(
            namespace,
            scaledobject = name,
            peer = ?peer,
            scaler = t.scaler.scaler_type(),
            metric = %t.metric_name,
            source = %source.key,
            "new ScaledObject trigger"
        );
        Ok(t)
    }

    /// The source with the scaler's key, started if new.
    fn source_for(&self, scaler: &dyn ebb_scalers::Scaler, interval: Duration) -> Result<Arc<Source>, EngineError> {
        let mut sources = self.inner.sources.lock().expect("sources lock");
        if let Some(s) = sources.get(scaler.source_key()) {
            return Ok(s.clone());
        }
        let poller = self.inner.registry.poller(scaler)?;
        let source = Arc::new(Source::new(
            scaler.source_key().clone(),
            scaler.scaler_type(),
            poller,
            scaler.poll_timeout(),
            interval,
        ));
        sources.insert(source.key.clone(), source.clone());
        self.inner.metrics.sources.set(sources.len() as i64);
        let task = source::run(
            source.clone(),
            self.inner.config.clone(),
            self.inner.metrics.clone(),
            self.inner.poll_permits.clone(),
            self.inner.clock,
        );
        tokio::spawn(task);
        info!(source = %source.key, scaler = source.scaler_type, "polling new source");
        Ok(source)
    }

    /// The trigger's decision now, from the cached measurement. Waits (bounded by
    /// `first_poll_wait`) only while the source's first poll is running.
    pub async fn decide(&self, t: &Trigger) -> Result<Decision, EngineError> {
        let mut rx = t.source.status();
        if rx.borrow().polls > 0 {
            self.inner.metrics.cache_hits_total.inc();
        } else {
            self.inner.metrics.cache_misses_total.inc();
            let wait = self.inner.config.first_poll_wait;
            let waited = tokio::time::timeout(wait, rx.wait_for(|s| s.polls > 0)).await;
            if !matches!(waited, Ok(Ok(_))) {
                return Err(EngineError::FirstPollPending { scaler: t.source.scaler_type, waited: wait });
            }
        }
        let status = rx.borrow();
        self.decide_from(t, &status, Instant::now())
    }

    /// The decision for `t` given its source's status, or why there is none.
    pub fn decide_from(&self, t: &Trigger, status: &SourceStatus, now: Instant) -> Result<Decision, EngineError> {
        let scaler = t.source.scaler_type;
        let bound = self.inner.config.max_staleness.max(t.source.interval() * 3);
        let fresh = status.last_good_received.is_some_and(|at| now.saturating_duration_since(at) <= bound);
        if !fresh {
            let reason = match (&status.last_error, status.last_good_received) {
                (Some(e), None) => e.to_string(),
                (Some(e), Some(at)) => {
                    format!("{e} (last good value is {:.0?} old, bound {bound:?})", now.saturating_duration_since(at))
                }
                (None, Some(at)) => {
                    format!("last good value is {:.0?} old, bound {bound:?}", now.saturating_duration_since(at))
                }
                (None, None) => "no measurement yet".to_string(),
            };
            return Err(EngineError::Unavailable { scaler, reason });
        }
        t.decide(now).ok_or_else(|| EngineError::Unavailable { scaler, reason: "no measurement yet".into() })
    }

    /// Makes room for one more trigger on source `key`. Over `--max-scaledobjects`, the least
    /// recently used trigger goes; if `key` is a new source over `--max-sources`, the least
    /// recently used source goes whole, all its triggers in one pass. Triggers with an open
    /// stream, and sources with one, are never evicted.
    fn make_room(&self, triggers: &mut HashMap<u64, Vec<Arc<Trigger>>>, key: &SourceKey) -> Result<(), EngineError> {
        let limits = &self.inner.config.limits;
        let now = Instant::now();
        // The gauge tracks the map exactly (inc on create, dec on every removal): O(1) here.
        if usize::try_from(self.inner.metrics.triggers.get()).unwrap_or(0) >= limits.triggers {
            let victim = triggers.values().flatten().filter(|t| !t.has_streams()).max_by_key(|t| t.idle_for(now));
            // By address: a clone held here would keep its source alive past the eviction.
            let Some(victim) = victim.map(Arc::as_ptr) else {
                return Err(EngineError::LimitReached {
                    what: "tracked ScaledObject triggers, all with open streams".into(),
                    flag: "--max-scaledobjects",
                    limit: limits.triggers,
                });
            };
            self.evict(triggers, |t| std::ptr::eq(Arc::as_ptr(t), victim));
        }
        let sources_full = {
            let sources = self.inner.sources.lock().expect("sources lock");
            !sources.contains_key(key) && sources.len() >= limits.sources
        };
        if sources_full {
            // A source was last used when its most recent trigger was; `None`: it has a stream.
            let mut idle: HashMap<&SourceKey, Option<Duration>> = HashMap::new();
            for t in triggers.values().flatten() {
                let e = idle.entry(&t.source.key).or_insert(Some(Duration::MAX));
                *e = if t.has_streams() { None } else { e.map(|d| d.min(t.idle_for(now))) };
            }
            let victim = idle.into_iter().filter_map(|(k, d)| Some((k, d?))).max_by_key(|(_, d)| *d);
            let Some(victim) = victim.map(|(k, _)| k.clone()) else {
                return Err(EngineError::LimitReached {
                    what: "distinct sources, all with open streams".into(),
                    flag: "--max-sources",
                    limit: limits.sources,
                });
            };
            self.evict(triggers, |t| t.source.key == victim);
        }
        Ok(())
    }

    /// Drops the triggers `doomed` picks (one pass over the map), then stops the sources left
    /// without triggers.
    fn evict(&self, triggers: &mut HashMap<u64, Vec<Arc<Trigger>>>, doomed: impl Fn(&Arc<Trigger>) -> bool) {
        triggers.retain(|_, bucket| {
            bucket.retain(|t| {
                if !doomed(t) {
                    return true;
                }
                info!(
                    namespace = %t.namespace,
                    scaledobject = %t.name,
                    source = %t.source.key,
                    "evicting a least recently used ScaledObject trigger (limit reached)"
                );
                t.forget_metrics();
                self.inner.metrics.triggers.dec();
                false
            });
            !bucket.is_empty()
        });
        self.stop_unused_sources();
    }

    /// Stops the sources no trigger uses any more. Callers hold the triggers lock, so no
    /// trigger can attach to a source being stopped.
    fn stop_unused_sources(&self) {
        let mut sources = self.inner.sources.lock().expect("sources lock");
        sources.retain(|key, s| {
            let keep = s.sweep() > 0;
            if !keep {
                info!(source = %key, "stopping unused source");
                s.stop();
            }
            keep
        });
        self.inner.metrics.sources.set(sources.len() as i64);
    }

    /// Drops triggers idle longer than their bound (unless a stream is open) and stops the
    /// sources no trigger uses any more.
    pub fn sweep(&self, now: Instant) {
        let cfg = &self.inner.config;
        let mut evicted = Vec::new();
        // Held through the source sweep too, so no trigger can attach to a source being stopped.
        let mut triggers = self.inner.triggers.write().expect("triggers lock");
        triggers.retain(|_, bucket| {
            bucket.retain(|t| {
                let bound = cfg.idle_timeout.max(t.polling_interval() * 10);
                let keep = t.has_streams() || t.idle_for(now) < bound;
                if !keep {
                    evicted.push(t.clone());
                }
                keep
            });
            !bucket.is_empty()
        });
        for t in &evicted {
            info!(namespace = %t.namespace, scaledobject = %t.name, "dropping idle ScaledObject trigger");
            t.forget_metrics();
        }
        self.inner.metrics.triggers.dec_by(evicted.len() as i64);
        drop(evicted);
        self.stop_unused_sources();
        drop(triggers);
    }

    /// Runs [`Engine::sweep`] every `sweep_every` until the returned task is aborted.
    pub fn spawn_sweeper(&self) -> JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(engine.inner.config.sweep_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                engine.sweep(Instant::now());
            }
        })
    }

    /// Resolves once [`Engine::close`] has been called.
    pub async fn closed(&self) {
        let mut rx = self.inner.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Starts shutdown: open streams end cleanly (KEDA reconnects elsewhere) and every
    /// source task stops.
    pub fn close(&self) {
        self.inner.closing.send_replace(true);
        self.stop_all();
    }

    /// Stops every source task.
    pub fn stop_all(&self) {
        for s in self.inner.sources.lock().expect("sources lock").values() {
            s.stop();
        }
    }
}

/// A trigger as `serve` and `ebb check` both read it.
pub struct Assembled {
    /// The metadata with KEDA's own connection keys sorted out.
    pub view: keda_keys::SourceView,
    pub scaler: Arc<dyn ebb_scalers::Scaler>,
    /// ebb's keys, the polling interval already raised to the floor.
    pub options: policy::TriggerOptions,
    /// The `pollingInterval` asked for, when it was below the floor.
    pub floored_from: Option<Duration>,
}

/// Reads a trigger: KEDA's connection keys (`door`), the scaler's config (`parse`), the uses of
/// ebb's own identity and secrets (`allow`, which refuses what the caller may not use), ebb's
/// policy keys, and the `--min-polling-interval` floor. The one path from metadata to a
/// trigger, for `serve` (with the access policy) and `ebb check` (with the endpoints only).
pub fn assemble(
    sent: &HashMap<String, String>,
    parse_md: &HashMap<String, String>,
    door: Door,
    registry: &Registry,
    allow: impl FnOnce(&[ebb_scalers::trust::Held]) -> Result<(), EngineError>,
    floor: Duration,
) -> Result<Assembled, EngineError> {
    let view = keda_keys::source_view(sent, parse_md, door);
    let scaler = registry.parse(&view.metadata)?;
    allow(&scaler.held())?;
    let mut options = policy::parse(&Metadata::new(&view.metadata), scaler.target())?;
    let floored_from = (options.polling_interval < floor).then_some(options.polling_interval);
    options.polling_interval = options.polling_interval.max(floor);
    Ok(Assembled { view, scaler, options, floored_from })
}

/// `--max-metadata-entries` and `--max-metadata-bytes`, checked before anything else.
fn check_metadata_size(metadata: &HashMap<String, String>, limits: &Limits) -> Result<(), EngineError> {
    if metadata.len() > limits.metadata_entries {
        return Err(EngineError::MetadataTooLarge {
            what: format!("{} metadata entries", metadata.len()),
            flag: "--max-metadata-entries",
            limit: limits.metadata_entries,
        });
    }
    let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > limits.metadata_bytes {
        return Err(EngineError::MetadataTooLarge {
            what: format!("{bytes} bytes of metadata"),
            flag: "--max-metadata-bytes",
            limit: limits.metadata_bytes,
        });
    }
    Ok(())
}
