//! One task per distinct source: polls, backs off, and publishes what it saw.
//!
//! The task folds every successful measurement into the decision state of each trigger that
//! uses the source (so the history a decision needs is complete whatever the RPC timing),
//! then publishes a new [`SourceStatus`] on a `watch` channel that requests and streams read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ebb_scalers::{Measurement, PollError, Poller, SourceKey};
use tokio::sync::Semaphore;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};

use super::EngineConfig;
use super::trigger::Trigger;
use crate::metrics::{ErrorLabels, Metrics, ScalerLabels};

/// What the latest polls of a source produced.
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    /// Number of finished polls; 0 until the first poll ends.
    pub polls: u64,
    /// The last good measurement and when it was taken.
    pub last_good: Option<(Instant, Measurement)>,
    /// The error of the latest poll, if it failed.
    pub last_error: Option<PollError>,
}

/// A polled source, shared by every trigger with the same [`SourceKey`].
pub struct Source {
    pub key: SourceKey,
    pub scaler_type: &'static str,
    poller: Arc<dyn Poller>,
    poll_timeout: Duration,
    interval_nanos: AtomicU64,
    status: watch::Sender<SourceStatus>,
    triggers: Mutex<Vec<Weak<Trigger>>>,
    stopped: AtomicBool,
    stop: Notify,
}

impl Source {
    pub fn new(
        key: SourceKey,
        scaler_type: &'static str,
        poller: Arc<dyn Poller>,
        poll_timeout: Duration,
        interval: Duration,
    ) -> Self {
        Self {
            key,
            scaler_type,
            poller,
            poll_timeout,
            interval_nanos: AtomicU64::new(nanos(interval)),
            status: watch::Sender::new(SourceStatus::default()),
            triggers: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            stop: Notify::new(),
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_nanos.load(Ordering::Relaxed))
    }

    pub fn status(&self) -> watch::Receiver<SourceStatus> {
        self.status.subscribe()
    }

    /// Adds a trigger; the source then polls at the smallest interval asked for. The
    /// trigger gets the latest good measurement at once.
    pub fn attach(&self, trigger: &Arc<Trigger>) {
        self.interval_nanos.fetch_min(nanos(trigger.polling_interval()), Ordering::Relaxed);
        // Held while reading the status: a poll publishing at this moment either sees the new
        // trigger or has already set the measurement it then gets here (see `publish`).
        let mut triggers = self.triggers.lock().expect("triggers lock");
        triggers.push(Arc::downgrade(trigger));
        if let Some((at, m)) = &self.status.borrow().last_good {
            trigger.observe(m, *at);
        }
    }

    /// Drops dead triggers and recomputes the interval. Returns the number still attached.
    pub fn sweep(&self) -> usize {
        let mut triggers = self.triggers.lock().expect("triggers lock");
        triggers.retain(|w| w.strong_count() > 0);
        if let Some(min) = triggers.iter().filter_map(Weak::upgrade).map(|t| t.polling_interval()).min() {
            self.interval_nanos.store(nanos(min), Ordering::Relaxed);
        }
        triggers.len()
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.stop.notify_one();
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The poll loop of one source; ends when the source is stopped.
pub async fn run(source: Arc<Source>, config: EngineConfig, metrics: Arc<Metrics>, permits: Arc<Semaphore>) {
    let labels = ScalerLabels { scaler: source.scaler_type.to_string() };
    let mut failures: u32 = 0;
    while !source.stopped.load(Ordering::Relaxed) {
        let span = info_span!("poll", scaler = source.scaler_type, source = %source.key);
        // `--max-concurrent-polls`: waits here when that many polls are in flight.
        let permit = permits.acquire().await.ok();
        let started = Instant::now();
        metrics.upstream_calls_total.get_or_create(&labels).inc();
        // The poller enforces its own timeout; this outer bound only guards against a poller
        // that does not, so a poll can never hang the source.
        let outer = source.poll_timeout + Duration::from_secs(1);
        let result = match tokio::time::timeout(outer, source.poller.poll()).instrument(span.clone()).await {
            Ok(r) => r,
            Err(_) => Err(PollError::Timeout(source.poll_timeout)),
        };
        drop(permit);
        let took = started.elapsed();
        metrics.poll_duration_seconds.get_or_create(&labels).observe(took.as_secs_f64());
        let delay = span.in_scope(|| publish(&source, result, took, &mut failures, &config, &metrics));
        let delay = jitter(delay, config.jitter);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = source.stop.notified() => break,
        }
    }
}

/// Folds a poll's result into the triggers and the status; returns the delay before the next.
fn publish(
    source: &Source,
    result: Result<Measurement, PollError>,
    took: Duration,
    failures: &mut u32,
    config: &EngineConfig,
    metrics: &Metrics,
) -> Duration {
    match result {
        Ok(m) => {
            if *failures > 0 {
                debug!(after_failures = *failures, "source recovered");
            }
            *failures = 0;
            let at = Instant::now();
            // Folding and publishing under the trigger list's lock: a trigger attaching
            // meanwhile is either folded here or finds the new measurement (see `attach`).
            let triggers = source.triggers.lock().expect("triggers lock");
            for t in triggers.iter().filter_map(Weak::upgrade) {
                t.observe(&m, at);
            }
            source.status.send_modify(|s| {
                s.polls += 1;
                s.last_good = Some((at, m));
                s.last_error = None;
            });
            drop(triggers);
            debug!(took_ms = took.as_millis() as u64, "poll ok");
            source.interval()
        }
        Err(e) => {
            *failures = failures.saturating_add(1);
            metrics
                .poll_errors_total
                .get_or_create(&ErrorLabels { scaler: source.scaler_type.to_string(), kind: e.kind().into() })
                .inc();
            // Log the first failure and then every 10th, so a dead source does not flood.
            if *failures == 1 || (*failures).is_multiple_of(10) {
                warn!(failures = *failures, error = %e, "poll failed");
            }
            let delay = backoff(source.interval(), *failures, &e, config);
            source.status.send_modify(|s| {
                s.polls += 1;
                s.last_error = Some(e);
            });
            delay
        }
    }
}

/// First retry after a failed poll; it doubles with each further failure.
const RETRY_BASE: Duration = Duration::from_secs(1);

/// Delay before the next poll after `failures` consecutive failures: doubling from 1 s, but
/// never longer than the polling interval (nor `max_backoff`), so a healed source is seen
/// within one interval, as KEDA's own polling would. Throttling answers are the exception: the
/// source asked us to slow down, so they wait at least `throttle_backoff` (or the source's
/// `Retry-After`, if longer).
pub fn backoff(interval: Duration, failures: u32, error: &PollError, config: &EngineConfig) -> Duration {
    let exp = RETRY_BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let mut d = exp.min(interval).min(config.max_backoff).max(RETRY_BASE.min(interval));
    if let PollError::Throttled { retry_after, .. } = error {
        d = d.max(config.throttle_backoff).max(retry_after.unwrap_or_default());
    }
    d
}

/// Spreads polls of many sources so they do not fire in step.
fn jitter(d: Duration, fraction: f64) -> Duration {
    if fraction <= 0.0 {
        return d;
    }
    let f = 1.0 + fraction * (fastrand::f64() * 2.0 - 1.0);
    d.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_interval_and_throttling_waits_longer() {
        let cfg = EngineConfig::default();
        let other = PollError::Connect("refused".into());
        let delays = |interval: u64| -> Vec<u64> {
            (1..=7).map(|n| backoff(Duration::from_secs(interval), n, &other, &cfg).as_secs()).collect()
        };
        // Never past the interval: a healed source is seen within one interval.
        assert_eq!(delays(1), vec![1; 7]);
        assert_eq!(delays(10), vec![1, 2, 4, 8, 10, 10, 10]);
        // Nor past --max-backoff (30 s) when the interval is longer.
        assert_eq!(delays(60), vec![1, 2, 4, 8, 16, 30, 30]);
        let i = Duration::from_secs(1);
        let throttled = PollError::Throttled { detail: "429".into(), retry_after: None };
        assert_eq!(backoff(i, 1, &throttled, &cfg), cfg.throttle_backoff);
        let told = PollError::Throttled { detail: "429".into(), retry_after: Some(Duration::from_secs(90)) };
        assert_eq!(backoff(i, 1, &told, &cfg), Duration::from_secs(90));
        // A zero ceiling never makes a busy loop.
        let zero = EngineConfig { max_backoff: Duration::ZERO, ..EngineConfig::default() };
        assert_eq!(backoff(Duration::from_secs(5), 3, &other, &zero), RETRY_BASE);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(10), 0.1);
            assert!(d >= Duration::from_secs(9) && d <= Duration::from_secs(11), "{d:?}");
        }
    }
}
