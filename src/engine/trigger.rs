//! One ScaledObject trigger: its parsed scaler config, ebb's policy, and its decision state.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebb_scalers::{Measurement, Scaler};
use tokio::time::Instant;

use super::decision::{self, Decision, DecisionState};
use super::log::{DecisionLog, Entry, stored};
use super::policy::{OutputMode, TriggerOptions};
use super::source::{Source, WallClock};
use crate::metrics::{Metrics, ScaledObjectLabels};

/// Identity of a trigger as KEDA sends it: namespace, ScaledObject name and the metadata map.
/// The hash is independent of map order and needs no allocation, since it is computed on every
/// request.
pub fn trigger_hash(namespace: &str, name: &str, metadata: &HashMap<String, String>) -> u64 {
    let mut h = DefaultHasher::new();
    (namespace, name).hash(&mut h);
    let mut sum = h.finish();
    for (k, v) in metadata {
        let mut h = DefaultHasher::new();
        (k, v).hash(&mut h);
        sum = sum.wrapping_add(h.finish());
    }
    sum
}

/// A tracked trigger.
pub struct Trigger {
    pub namespace: String,
    pub name: String,
    pub metadata: HashMap<String, String>,
    pub scaler: Arc<dyn Scaler>,
    pub options: TriggerOptions,
    /// The metric name served to KEDA, without the `s<i>-` prefix KEDA adds.
    pub metric_name: String,
    pub source: Arc<Source>,
    state: Mutex<DecisionState>,
    labels: ScaledObjectLabels,
    metrics: Arc<Metrics>,
    epoch: Instant,
    last_access_millis: AtomicU64,
    open_streams: AtomicUsize,
    /// Caller addresses seen so far (capped), so each new caller is logged once.
    callers: Mutex<Vec<std::net::IpAddr>>,
    /// Where `policy: drain` reads the scale target's ready replicas, when it may.
    ready: Option<Arc<dyn super::ReadyReplicas>>,
    /// What each poll saw and what ebb decided (the status page, `ebb explain`).
    pub log: DecisionLog,
    clock: WallClock,
}

/// Callers remembered per trigger; KEDA has a few (operator, metrics server, their replicas).
const MAX_CALLERS: usize = 16;

impl Trigger {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        namespace: &str,
        name: &str,
        metadata: &HashMap<String, String>,
        scaler: Arc<dyn Scaler>,
        options: TriggerOptions,
        metric_name: String,
        source: Arc<Source>,
        metrics: Arc<Metrics>,
        epoch: Instant,
        clock: WallClock,
    ) -> Self {
        let labels = ScaledObjectLabels {
            namespace: namespace.to_string(),
            scaledobject: name.to_string(),
            metric: metric_name.clone(),
        };
        let t = Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            metadata: metadata.clone(),
            scaler,
            options,
            metric_name,
            source,
            state: Mutex::new(DecisionState::new()),
            labels,
            metrics,
            epoch,
            last_access_millis: AtomicU64::new(0),
            open_streams: AtomicUsize::new(0),
            callers: Mutex::new(Vec::new()),
            ready: None,
            log: DecisionLog::default(),
            clock,
        };
        t.touch(epoch.max(Instant::now()));
        t
    }

    pub fn with_ready_replicas(mut self, ready: Option<Arc<dyn super::ReadyReplicas>>) -> Self {
        self.ready = ready;
        self
    }

    /// Records a caller; `true` the first time this address calls (and while the list is
    /// full, never: a flood of addresses must not flood the log).
    pub fn new_caller(&self, ip: std::net::IpAddr) -> bool {
        let mut seen = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(&ip) || seen.len() >= MAX_CALLERS {
            return false;
        }
        seen.push(ip);
        true
    }

    /// Whether this is the trigger KEDA names by (`namespace`, `name`, `metadata`).
    pub fn is(&self, namespace: &str, name: &str, metadata: &HashMap<String, String>) -> bool {
        self.namespace == namespace && self.name == name && &self.metadata == metadata
    }

    pub fn polling_interval(&self) -> Duration {
        self.options.polling_interval
    }

    /// The HPA target served in GetMetricSpec: the threshold, or 1 when ebb decides replicas.
    pub fn target(&self) -> f64 {
        match self.options.policy.output_mode {
            OutputMode::Metric => self.scaler.target(),
            OutputMode::Replicas => 1.0,
        }
    }

    /// Folds a source measurement taken at `at` into this trigger's history.
    pub fn observe(&self, m: &Measurement, at: Instant) {
        let eval = self.scaler.evaluate(m);
        let counters = self.scaler.counters(m);
        let ready = self.ready.as_ref().and_then(|r| r.ready(&self.namespace, &self.name));
        let (decision, recommendation, rates) = {
            let mut s = self.state.lock().expect("decision state lock");
            decision::observe_with(&mut s, &self.options.policy, eval, counters, ready, at);
            let mut rates = (None, None);
            if let super::policy::Rule::Drain(_) = self.options.policy.rule {
                let e = s.drain_estimates();
                rates = (e.arrival_rate, e.throughput);
                if let Some(l) = e.arrival_rate {
                    self.metrics.arrival_rate.get_or_create(&self.labels).set(l);
                }
                if let Some(mu) = e.throughput {
                    self.metrics.throughput_per_replica.get_or_create(&self.labels).set(mu);
                }
                self.metrics.ready_replicas_estimate.get_or_create(&self.labels).set(i64::from(e.ready));
            }
            (decision::decide(&s, &self.options.policy, at), decision::recommended(&s, &self.options.policy), rates)
        };
        if let Some(d) = decision {
            self.metrics.metric_value.get_or_create(&self.labels).set(d.metric);
            self.metrics.desired_replicas.get_or_create(&self.labels).set(i64::from(d.desired_replicas));
            self.log.push(Entry {
                at_ms: self.unix_ms(at),
                metric: eval.metric as f32,
                active: eval.active,
                arrival_rate: stored(rates.0),
                throughput: stored(rates.1),
                recommendation,
                desired: d.desired_replicas,
                why: d.why,
                source_error: None,
                activation_pushed: false,
            });
        }
    }

    /// Logs a failed poll at `at`: the decision holds what the last good poll gave.
    pub fn observe_failure(&self, error_kind: &'static str, at: Instant) {
        let Some(d) = self.decide(at) else { return };
        let last = self.log.last();
        self.log.push(Entry {
            at_ms: self.unix_ms(at),
            metric: f32::NAN,
            active: d.active,
            arrival_rate: f32::NAN,
            throughput: f32::NAN,
            recommendation: last.and_then(|e| e.recommendation),
            desired: d.desired_replicas,
            why: d.why,
            source_error: Some(error_kind),
            activation_pushed: false,
        });
    }

    fn unix_ms(&self, at: Instant) -> u64 {
        u64::try_from(self.clock.unix(at).as_millis()).unwrap_or(u64::MAX)
    }

    /// The decision at `now` from the history folded so far.
    pub fn decide(&self, now: Instant) -> Option<Decision> {
        let s = self.state.lock().expect("decision state lock");
        decision::decide(&s, &self.options.policy, now)
    }

    pub fn touch(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.last_access_millis.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn idle_for(&self, now: Instant) -> Duration {
        let last = self.epoch + Duration::from_millis(self.last_access_millis.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }

    /// Marks a stream open for as long as the guard lives; a trigger with open streams is
    /// never evicted.
    pub fn stream_guard(self: &Arc<Self>) -> StreamGuard {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }

    pub fn has_streams(&self) -> bool {
        self.open_streams.load(Ordering::Relaxed) > 0
    }

    /// Removes this trigger's per-ScaledObject series from `/metrics`.
    pub fn forget_metrics(&self) {
        self.metrics.metric_value.remove(&self.labels);
        self.metrics.desired_replicas.remove(&self.labels);
    }
}

pub struct StreamGuard(Arc<Trigger>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::Relaxed);
        self.0.touch(Instant::now());
    }
}

/// The default metric name: `<scalerType>-<16 hex digits>`, the same on every replica (FNV-1a
/// over the sorted metadata). The name is public (HPA status, KEDA's metrics), so the values of
/// secret-looking keys (see [`is_secret_key`]) never enter it, only their presence: a hash of a
/// weak password could be checked against guesses.
pub fn default_metric_name(scaler_type: &str, metadata: &HashMap<String, String>) -> String {
    let mut entries: Vec<_> = metadata.iter().collect();
    entries.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in entries {
        let v = if is_secret_key(k) { "" } else { v.as_str() };
        for b in k.bytes().chain([0]).chain(v.bytes()).chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{scaler_type}-{h:016x}")
}

/// Keys that hold or name credentials in any scaler's metadata (`connection`,
/// `connectionFromEnv`, `password`, `sharedAccessKey`, `tlsClientKey`, `bearerToken`,
/// Prometheus' `customHeaders`, …).
/// Broad on purpose: leaving a harmless key out of the name costs nothing, since KEDA prefixes
/// each trigger's name with its index anyway.
fn is_secret_key(key: &str) -> bool {
    const MARKS: [&str; 10] =
        ["password", "secret", "key", "token", "connection", "credential", "cert", "sas", "auth", "header"];
    let k = key.to_ascii_lowercase();
    MARKS.iter().any(|m| k.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn trigger_hash_ignores_map_order_and_sees_every_field() {
        let a = md(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let mut b = HashMap::new();
        for (k, v) in [("c", "3"), ("a", "1"), ("b", "2")] {
            b.insert(k.to_string(), v.to_string());
        }
        assert_eq!(trigger_hash("ns", "so", &a), trigger_hash("ns", "so", &b));
        assert_ne!(trigger_hash("ns", "so", &a), trigger_hash("ns", "so2", &a));
        assert_ne!(trigger_hash("ns", "so", &a), trigger_hash("ns2", "so", &a));
        assert_ne!(trigger_hash("ns", "so", &a), trigger_hash("ns", "so", &md(&[("a", "1"), ("b", "2")])));
    }

    #[test]
    fn default_metric_name_is_stable_and_has_no_keda_prefix() {
        let a = md(&[("query", "up"), ("threshold", "5")]);
        let n = default_metric_name("prometheus", &a);
        assert_eq!(n, default_metric_name("prometheus", &a.clone()));
        assert!(n.starts_with("prometheus-") && n.len() == "prometheus-".len() + 16);
        assert_ne!(n, default_metric_name("prometheus", &md(&[("query", "up"), ("threshold", "6")])));
    }

    #[test]
    fn default_metric_name_never_depends_on_secret_values() {
        let name = |conn: &str, pw: &str| {
            default_metric_name(
                "azure-queue",
                &md(&[
                    ("queueName", "q"),
                    ("connectionFromEnv", conn),
                    ("password", pw),
                    ("tlsClientKey", pw),
                    ("customHeaders", pw),
                ]),
            )
        };
        assert_eq!(name("AccountKey=aaa", "hunter2"), name("AccountKey=bbb", "letmein"));
        // Non-secret values and the presence of secret keys still count.
        assert_ne!(name("x", "y"), default_metric_name("azure-queue", &md(&[("queueName", "q")])));
        assert_ne!(
            default_metric_name("azure-queue", &md(&[("queueName", "a")])),
            default_metric_name("azure-queue", &md(&[("queueName", "b")]))
        );
    }
}
