//! One task per distinct source: polls, backs off, and publishes what it saw.
//!
//! The task folds every successful measurement into the decision state of each trigger that
//! uses the source (so the history a decision needs is complete whatever the RPC timing),
//! then publishes a new [`SourceStatus`] on a `watch` channel that requests and streams read.
//!
//! # The poll grid
//!
//! Every ebb replica must give KEDA the same answer, with no coordination between them. So a
//! source is polled on a wall-clock grid, `t = k × interval + offset` in Unix time, where the
//! offset comes from the source's public key ([`grid_offset`]: the same in every process, and
//! spread evenly over the interval across sources). Each poll asks for the value at its tick
//! ([`Poller::poll_at`]: Prometheus evaluates the query at that time) and is folded at the tick's
//! time, so replicas whose clocks agree (NTP) fold the same observations at the same timestamps
//! and decide alike. The first poll of a new source is made at once, for now (a request is
//! waiting, and the tick just past may predate what the caller expects to see); a retry after a
//! failure likewise polls at once, and the schedule returns to the grid after the next success.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// The last good measurement and the grid tick it was taken for (its time in the history).
    pub last_good: Option<(Instant, Measurement)>,
    /// When the last good poll finished: what staleness is measured from (a slow poll's tick
    /// lies further back than its answer).
    pub last_good_received: Option<Instant>,
    /// The error of the latest poll, if it failed.
    pub last_error: Option<PollError>,
}

/// A polled source, shared by every trigger with the same [`SourceKey`].
pub struct Source {
    pub key: SourceKey,
    /// [`SourceKey::public_part`]: what the grid offset is derived from.
    seed: String,
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
            seed: key.public_part(),
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

    /// Triggers attached and alive (read-only, unlike [`Source::sweep`]).
    pub fn trigger_count(&self) -> usize {
        self.triggers.lock().expect("triggers lock").iter().filter(|w| w.strong_count() > 0).count()
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

/// The wall clock as the engine reads it: a wall-clock reading taken with a monotonic one, then
/// advanced by the monotonic clock (so tests on tokio's paused clock step both).
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    wall: SystemTime,
    mono: Instant,
}

impl WallClock {
    pub fn new() -> Self {
        Self { wall: SystemTime::now(), mono: Instant::now() }
    }

    /// Time since the Unix epoch at `at`.
    pub fn unix(&self, at: Instant) -> Duration {
        let since = self.wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        if at >= self.mono { since + (at - self.mono) } else { since.saturating_sub(self.mono - at) }
    }

    /// The monotonic instant of Unix time `t`.
    pub fn instant(&self, t: Duration) -> Instant {
        let since = self.wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        if t >= since { self.mono + (t - since) } else { self.mono.checked_sub(since - t).unwrap_or(self.mono) }
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a source sits on its interval's grid: FNV-1a (stable across processes and builds) of
/// its public key, modulo the interval. Spreads thousands of sources evenly over the interval.
pub fn grid_offset(seed: &str, interval: Duration) -> Duration {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let period = interval.as_nanos().max(1);
    Duration::from_nanos((u128::from(h) % period) as u64)
}

/// The latest grid tick at or before `now` (both Unix time).
pub fn last_tick(now: Duration, interval: Duration, offset: Duration) -> Duration {
    let (now, period, offset) = (now.as_nanos(), interval.as_nanos().max(1), offset.as_nanos());
    let k = now.saturating_sub(offset) / period;
    Duration::from_nanos(u64::try_from(k * period + offset).unwrap_or(u64::MAX)).min(Duration::from_nanos(now as u64))
}

/// The first grid tick strictly after `now` (both Unix time).
pub fn next_tick(now: Duration, interval: Duration, offset: Duration) -> Duration {
    let last = last_tick(now, interval, offset);
    let next = last + interval.max(Duration::from_nanos(1));
    if next > now { next } else { next + interval }
}

/// The poll loop of one source; ends when the source is stopped.
pub async fn run(
    source: Arc<Source>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    clock: WallClock,
) {
    let labels = ScalerLabels { scaler: source.scaler_type.to_string() };
    let mut failures: u32 = 0;
    // The tick this poll is for: the scheduled one, or now for the first poll and retries.
    let mut tick: Option<Duration> = None;
    while !source.stopped.load(Ordering::Relaxed) {
        let tick_at = tick.take().unwrap_or_else(|| clock.unix(Instant::now()));
        let span = info_span!("poll", scaler = source.scaler_type, source = %source.key);
        // `--max-concurrent-polls`: waits here when that many polls are in flight.
        let permit = permits.acquire().await.ok();
        let started = Instant::now();
        metrics.upstream_calls_total.get_or_create(&labels).inc();
        // The engine owns the poll's deadline (the scaler's `poll_timeout`): a poll can never
        // hang the source, whatever the poller does.
        let poll = ebb_scalers::poll_within(&*source.poller, source.poll_timeout, UNIX_EPOCH + tick_at);
        let result = poll.instrument(span.clone()).await;
        drop(permit);
        let took = started.elapsed();
        metrics.poll_duration_seconds.get_or_create(&labels).observe(took.as_secs_f64());
        let ok = result.is_ok();
        let at = clock.instant(tick_at);
        let delay = span.in_scope(|| publish(&source, result, at, took, &mut failures, &config, &metrics));
        let now = Instant::now();
        let wake = if ok {
            // Back on the grid: the next tick after now (a slow poll skips the ticks it overran).
            let next = next_tick(clock.unix(now), source.interval(), grid_offset(&source.seed, source.interval()));
            tick = Some(next);
            clock.instant(next)
        } else {
            now + delay
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = source.stop.notified() => break,
        }
    }
}

/// Folds a poll's result into the triggers and the status; returns the delay before the next.
fn publish(
    source: &Source,
    result: Result<Measurement, PollError>,
    at: Instant,
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
            // Folding and publishing under the trigger list's lock: a trigger attaching
            // meanwhile is either folded here or finds the new measurement (see `attach`).
            let triggers = source.triggers.lock().expect("triggers lock");
            for t in triggers.iter().filter_map(Weak::upgrade) {
                t.observe(&m, at);
            }
            source.status.send_modify(|s| {
                s.polls += 1;
                s.last_good = Some((at, m));
                s.last_good_received = Some(Instant::now());
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
            for t in source.triggers.lock().expect("triggers lock").iter().filter_map(Weak::upgrade) {
                t.observe_failure(e.kind(), at);
            }
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

    /// Issue 15: the grid is the same in every process, ticks land on it, and offsets spread
    /// 10,000 sources evenly over the interval (no thundering herd at the boundary).
    #[test]
    fn grid_ticks_are_shared_and_offsets_spread_evenly() {
        let i = Duration::from_secs(5);
        let off = grid_offset("prometheus|{\"query\":\"up\"}", i);
        assert_eq!(off, grid_offset("prometheus|{\"query\":\"up\"}", i), "stable");
        assert!(off < i);
        let now = Duration::from_secs(1_764_600_000) + Duration::from_millis(1234);
        let last = last_tick(now, i, off);
        let next = next_tick(now, i, off);
        assert!(last <= now && now < next && next - last == i, "{last:?} {now:?} {next:?}");
        assert_eq!((last.as_nanos() - off.as_nanos()) % i.as_nanos(), 0, "on the grid");
        // Exactly on a tick: that tick is the last one, the next one is an interval later.
        assert_eq!(last_tick(last, i, off), last);
        assert_eq!(next_tick(last, i, off), last + i);

        // Spread: 10,000 sources into 10 buckets of 0.5 s: each within 15 % of the mean, and no
        // 50 ms slice holds more than twice its share.
        let offsets: Vec<Duration> = (0..10_000)
            .map(|n| grid_offset(&format!("azure-queue|https://acct{n}.queue.core.windows.net|orders|all|identity"), i))
            .collect();
        let mut buckets = [0usize; 10];
        let mut slices = [0usize; 100];
        for o in &offsets {
            buckets[(o.as_millis() / 500) as usize] += 1;
            slices[(o.as_millis() / 50) as usize] += 1;
        }
        eprintln!(
            "sources per 0.5 s of a 5 s interval: {buckets:?}; busiest 50 ms slice: {}",
            slices.iter().max().unwrap()
        );
        assert!(buckets.iter().all(|&b| (850..=1150).contains(&b)), "{buckets:?}");
        assert!(*slices.iter().max().unwrap() <= 200, "{slices:?}");
    }

    #[test]
    fn wall_clock_round_trips() {
        let c = WallClock::new();
        let now = Instant::now();
        let unix = c.unix(now);
        let back = c.instant(unix);
        assert!(back.max(now) - back.min(now) < Duration::from_micros(2), "{back:?} {now:?}");
        assert_eq!(c.unix(now + Duration::from_secs(3)), unix + Duration::from_secs(3));
    }
}
