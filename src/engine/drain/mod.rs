//! The `drain` replica policy (`policy: drain`): size for the arrival rate, plus a term that
//! drains the backlog within a target time (the Flink autoscaler's and DS2's rule; the user's
//! view is docs/replicas.md, `policy: drain`):
//!
//! ```text
//! B_proj = B + max(0, λ_up − R̂·μ̂) · startupSeconds      backlog when new pods are ready
//! rec    = ceil((λ_up + B_proj / drainSeconds) / (μ̂ · targetUtilization))
//! ```
//!
//! **When ebb does not know, it does what KEDA would.** Until the throughput is known, given
//! (`throughputPerReplica`) or measured (see `μ̂` below), the count is at
//! most what KEDA's own loop would ask: `ceil(backlog / threshold)`, its highest over
//! `scaleDownStabilizationSeconds` ([`Reason::Backlog`]). A guessed throughput (the threshold
//! read as 10 s of one replica's work) may only lower that count, never raise it. The
//! threshold is also the user's latency intent: a backlog of `threshold` per replica waits
//! `threshold / μ̂`, and when that is short the backlog is drained sooner and with more
//! headroom.
//!
//! Everything here is a pure function of the observations (time, backlog, and, where the source
//! has them, cumulative arrivals `E` and processed `C`), so every ebb replica that saw the same
//! polls decides the same. The estimators ([`estimate`]) are apart from the guards
//! ([`guards`]):
//! - `λ` (arrival rate): `ΔE/Δt` over a short (10 s) and a long (60 s) window when `E` is
//!   observed (Kafka log-end offsets, Event Hubs enqueued sequence numbers, a Prometheus
//!   `rateQuery`); else, from the backlog: `ΔB/Δt + R̂·μ̂` while the consumers are saturated, and
//!   a probe sizing for 85 % of the ready replicas while they keep up (the rate is then only
//!   bounded above). Scale-up uses `max(λ_short, λ_long)`; scale-down uses `λ_short` (the down
//!   window smooths).
//! - `μ̂` (per-replica throughput): `throughputPerReplica` when given; else learned from `ΔC/Δt`
//!   over the long window divided by the most replicas that may have been ready in it (a lower
//!   bound), raised by a probe while the consumers keep up, and moved both ways (±20 % a step)
//!   while they are saturated: work waited through the whole long window, or the lag rose at
//!   every poll of the last 20 s with the ready count (nearly) unchanged. The probe stays near
//!   the last saturated value, a ceiling that lifts with time, so an estimate learned during a
//!   slowdown recovers once it ends.
//! - `R̂` (ready replicas): read from the scale target when ebb may (queue+R: `serve --kube`);
//!   else the smallest count ebb asked for over the last `startupSeconds` (new pods need that
//!   long; removals are immediate).
//!
//! The drain term is at most twice the arrival rate (or one replica's rate): a larger surge
//! buys little wait and the down path would hold it for a window.
//!
//! Up: at once, to `max(current, rec)`, bounded by `maxScaleUpStep`; not while stalled or
//! frozen ([`guards`]). Down: to the highest rate part over `downWindowSeconds`, or to `rec` now
//! if that is higher, past a 10 % hysteresis and the down guards. Zero only after
//! `cooldownPeriod` with no backlog and no arrivals. The value reported to the HPA clears its
//! 10 % tolerance when ebb asks for more ([`guards::request`]).

mod estimate;
mod guards;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::backlog::Window;
use estimate::{Evidence, Throughput, rate, ready, ready_range, saturated, secs};

/// `policy: drain` settings (trigger keys in brackets).
#[derive(Debug, Clone, PartialEq)]
pub struct DrainConfig {
    /// [`throughputPerReplica`] messages/s one replica processes; learned when absent.
    pub throughput: Option<f64>,
    /// [`drainSeconds`] time to drain a backlog (10 s).
    pub drain: Duration,
    /// [`targetUtilization`] (0.9).
    pub utilization: f64,
    /// [`startupSeconds`] from asking for a replica to it processing (30 s).
    pub startup: Duration,
    /// [`rateWindowShortSeconds`] (10 s) and [`rateWindowLongSeconds`] (60 s).
    pub short: Duration,
    pub long: Duration,
    /// [`downWindowSeconds`] (60 s).
    pub down_window: Duration,
    /// [`stallPolls`] (3).
    pub stall_polls: u32,
    /// [`minChangeIntervalSeconds`] at most one change of the count per this long (0: off):
    /// each change is a consumer-group rebalance for Kafka and Event Hubs.
    pub min_change: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            throughput: None,
            drain: Duration::from_secs(10),
            utilization: 0.9,
            startup: Duration::from_secs(30),
            short: Duration::from_secs(10),
            long: Duration::from_secs(60),
            down_window: Duration::from_secs(60),
            stall_polls: 3,
            min_change: Duration::ZERO,
        }
    }
}

/// The bounds a decision respects (from the trigger's replica keys).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub min: u32,
    pub max: u32,
    pub max_step: Option<u32>,
    pub cooldown: Duration,
    /// The trigger's threshold: the backlog rule's target and the latency intent.
    pub target: f64,
    /// `scaleDownStabilizationSeconds`: the backlog rule's window.
    pub stabilization: Duration,
    /// `max` is `maxReplicaCount`, which the value reported to the HPA may ask past (the HPA
    /// clamps at its own maximum); a partition count is never asked past.
    pub may_ask_past_max: bool,
}

/// One poll, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: Instant,
    pub backlog: f64,
    /// Cumulative arrivals (`E`), when the source shows them.
    pub arrivals: Option<f64>,
    /// Cumulative processed (`C`), when the source shows them.
    pub processed: Option<f64>,
    /// The arrival rate itself, when the source measures it (a Prometheus `rateQuery`).
    pub arrival_rate: Option<f64>,
    /// The scale target's ready replicas, when ebb reads them (queue+R: `serve --kube`).
    pub ready: Option<u32>,
}

/// Why the count is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Raised to the recommendation.
    ScaleUp,
    /// Lowered to the down window's highest recommendation.
    ScaleDown,
    /// Kept: the recommendation is within the hysteresis, or a guard holds it.
    Hold,
    /// No measured throughput: at most what KEDA's backlog rule asks.
    Backlog,
    /// Kept: the consumers make no progress with work waiting.
    Stalled,
    /// Kept: the last scale-up did not raise the processing rate (a downstream bottleneck),
    /// so more replicas would not help; no scale-up for the long window.
    Ineffective,
    /// Kept: the count changed less than `minChangeIntervalSeconds` ago.
    Spacing,
    /// Zero: no backlog and no arrivals for `cooldownPeriod`.
    Idle,
}

impl Reason {
    /// A short label for tables and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::ScaleUp => "scale up to the drain recommendation",
            Reason::ScaleDown => "scale down to the down window's highest recommendation",
            Reason::Hold => "held: within the hysteresis or a guard",
            Reason::Backlog => "no measured throughput: KEDA's backlog rule",
            Reason::Stalled => "consumer stalled: not scaling up",
            Reason::Ineffective => "last scale-up did not help: not scaling up",
            Reason::Spacing => "held: minChangeIntervalSeconds",
            Reason::Idle => "idle for cooldownPeriod: zero",
        }
    }
}

/// The history the policy keeps per trigger.
#[derive(Debug, Clone, Default)]
pub struct DrainState {
    ring: VecDeque<Sample>,
    /// Desired counts ebb decided `(time, count)`, for `R̂`, newest last.
    asked: VecDeque<(Instant, u32)>,
    /// Scale-down recommendations (the rate part) within the down window.
    down: Window,
    /// KEDA's backlog rule over `scaleDownStabilizationSeconds`, and when it was last sampled.
    keda: Window,
    keda_sampled: Option<Instant>,
    mu: Throughput,
    /// Last time work was seen (backlog or arrivals); `None`: never.
    last_work: Option<Instant>,
    first_seen: Option<Instant>,
    last_increase: Option<Instant>,
    /// The latest change of the count (not counting a wake from zero).
    last_change: Option<Instant>,
    /// Polls in a row with work waiting and `C` unchanged.
    still: u32,
    /// When `C` last moved, and the typical time between its moves (the commit interval).
    c_moved: Option<Instant>,
    commit_interval: Option<Duration>,
    /// Until this time, counter rates are not trusted (a counter went backwards).
    reset_until: Option<Instant>,
    /// The latest scale-up whose effect on the processing rate is still to be checked.
    up_check: Option<guards::UpCheck>,
    /// No scale-up before this time: the last one did not help.
    frozen_until: Option<Instant>,
    /// The latest increase was a surge: more than [`SURGE_RELEASE`] times the rate part.
    surge: bool,
    desired: u32,
    /// The value reported to the HPA (target 1): `desired`, or more to clear its tolerance.
    request: u32,
    reason: Option<Reason>,
    /// Estimates at the latest observation, for logs and `ebb check`.
    pub estimates: Estimates,
}

/// What the policy estimated at its latest observation.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Estimates {
    pub arrival_rate: Option<f64>,
    pub throughput: Option<f64>,
    pub ready: u32,
    pub recommendation: u32,
    pub full: bool,
    /// `ready` was read from the scale target, not estimated (queue+R).
    pub ready_read: bool,
    /// The throughput was given or measured (else the backlog rule bounds the count).
    pub measured: bool,
}

impl DrainState {
    /// The decision after the latest observation.
    pub fn desired(&self) -> Option<(u32, Reason)> {
        self.reason.map(|r| (self.desired, r))
    }

    /// The value to report to the HPA (against a target of 1) after the latest observation.
    pub fn reported(&self) -> u32 {
        self.request
    }
}

/// The most a plan drains beyond the arrivals, as a multiple of them (or of one replica's
/// rate, when they are fewer): swept 1, 1.5, 2 and unbounded on every built-in trace.
const SURGE: f64 = 2.0;

/// An increase above this multiple of what the arrival rate alone asks (plus one) is a surge
/// to drain a backlog, released within the down window once that backlog is gone. Swept 1.25,
/// 1.5 and 2: below 2 the ±1 steps of a steady load counted as surges and flapped.
const SURGE_RELEASE: f64 = 2.0;

/// The window [`estimate::falling_behind`] looks at.
const BEHIND: Duration = Duration::from_secs(20);

/// Work counts as waiting (the consumers saturated) when more than this much of it, at the
/// processing rate, is in the backlog. A log's lag also holds what was processed since the last
/// commit, up to a commit interval's worth: learned from how often `C` moves (Event Hubs
/// checkpoints can be minutes apart), Kafka's auto-commit default (5 s) until then.
const WAITING: Duration = Duration::from_secs(2);
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// A threshold is read as `threshold / μ̂` seconds of wait the user accepts; the backlog is
/// drained within this multiple of it when that is sooner than `drainSeconds`.
const INTENT: f64 = 2.0;
/// A threshold under this much of one replica's work asks for waits that short: plan for
/// this much less utilization (swept 0.05, 0.1 and 0.15 at thresholds 5 and 10).
const SHORT_WAIT: Duration = Duration::from_secs(2);
const SHORT_WAIT_HEADROOM: f64 = 0.1;

/// Without a throughput, the trigger's threshold is read as this much of one replica's work
/// (Little's law: a backlog per replica of `threshold` waits about this long). A guess: it only
/// ever lowers the backlog rule's count.
const THRESHOLD_SECONDS: Duration = Duration::from_secs(10);

/// A queue that keeps up is sized for this share of its ready replicas: the rate is only
/// bounded above, so ebb probes down until the backlog says otherwise.
const PROBE: f64 = 0.85;

/// What one poll told the policy, for the sizing and the guards.
#[derive(Debug, Clone, Copy)]
struct View {
    at: Instant,
    backlog: f64,
    /// Ready replicas, read or estimated.
    r: u32,
    mu: f64,
    /// `μ̂` is given or measured (else a guess, bounded by the backlog rule).
    measured: bool,
    /// Arrival rates over the short and the long window.
    l_short: Option<f64>,
    l_long: Option<f64>,
    /// The processing rate over the long window, when the source counts it.
    processing: Option<f64>,
    counters_ok: bool,
    full: bool,
    commit_interval: Duration,
    /// Work arrived since the previous poll (or a counter reset hid whether it did).
    arrived: bool,
}

/// Folds one poll in and decides.
pub fn observe(state: &mut DrainState, cfg: &DrainConfig, bounds: &Bounds, s: Sample) {
    let arrived = state.fold(cfg, s);
    let v = state.view(cfg, bounds, s, arrived);
    let plan = plan(state, cfg, bounds, &v);
    guards::check_effect(state, cfg, &v);
    let (desired, reason) = decide(state, cfg, bounds, &v, &plan);
    state.record(cfg, bounds, &v, &plan, desired, reason);
}

impl DrainState {
    /// Adds the poll to the ring and the counters' bookkeeping; returns whether work arrived.
    fn fold(&mut self, cfg: &DrainConfig, s: Sample) -> bool {
        self.first_seen.get_or_insert(s.at);
        let mut arrived = false;
        if let Some(&prev) = self.ring.back() {
            let back = |a: Option<f64>, b: Option<f64>| matches!((a, b), (Some(a), Some(b)) if b < a);
            arrived = matches!((prev.arrivals, s.arrivals), (Some(a), Some(b)) if b > a);
            // A counter going backwards: the rates over the old history are meaningless.
            if back(prev.arrivals, s.arrivals) || back(prev.processed, s.processed) {
                self.ring.clear();
                self.reset_until = Some(s.at + cfg.long);
                // Whatever happened in between may have been work: never a zero on a reset.
                arrived = true;
            }
            let still = s.backlog > 0.0 && prev.processed.is_some() && prev.processed == s.processed;
            self.still = if still { self.still + 1 } else { 0 };
            // Nothing to commit: an idle gap says nothing of the commit interval (a 30-minute
            // one once read as the cadence, and hid the next spike's saturation).
            if prev.backlog <= 0.0 {
                self.c_moved = None;
            }
            if matches!((prev.processed, s.processed), (Some(a), Some(b)) if b > a) {
                if let Some(t) = self.c_moved {
                    // The slowest recent cadence, decaying: a commit skipped now and then should
                    // not shrink it, a commit interval that shortened should.
                    let gap = s.at.saturating_duration_since(t);
                    let old = self.commit_interval.unwrap_or(gap);
                    self.commit_interval = Some(gap.max(old.mul_f64(0.9)));
                }
                self.c_moved = Some(s.at);
            }
        }
        if s.backlog > 0.0 || arrived {
            self.last_work = Some(s.at);
        }
        self.ring.push_back(s);
        let keep = cfg.long.max(cfg.short) + cfg.startup + Duration::from_secs(1);
        while self.ring.len() > 2 && self.ring.front().is_some_and(|f| s.at.saturating_duration_since(f.at) > keep) {
            self.ring.pop_front();
        }
        arrived
    }

    /// The estimates at this poll.
    fn view(&mut self, cfg: &DrainConfig, bounds: &Bounds, s: Sample, arrived: bool) -> View {
        // Read when ebb may read it (queue+R), else estimated from what ebb asked for.
        let r = s.ready.unwrap_or_else(|| ready(&self.asked, cfg.startup, s.at));
        let counters_ok = self.reset_until.is_none_or(|t| s.at >= t);
        let full = counters_ok && s.arrivals.is_some();
        let commit_interval = self.commit_interval.unwrap_or(COMMIT_INTERVAL);
        let processing = if counters_ok { rate(&self.ring, cfg.long, |x| x.processed) } else { None };
        let mut v = View {
            at: s.at,
            backlog: s.backlog.max(0.0),
            r,
            mu: 0.0,
            measured: false,
            l_short: None,
            l_long: None,
            processing,
            counters_ok,
            full,
            commit_interval,
            arrived,
        };
        (v.mu, v.measured) = match cfg.throughput {
            Some(t) => (t, true),
            None => {
                let guess = (bounds.target / secs(THRESHOLD_SECONDS)).max(f64::MIN_POSITIVE);
                self.mu.update(self.evidence(cfg, &v, guess), s.at);
                // Measured: seen at saturation, or a lower bound above the guess (which proves
                // the guess low). A lower bound under the guess says nothing new: the guess
                // stands, bounded by the backlog rule.
                match self.mu.get() {
                    Some(m) if self.mu.confirmed() || m > guess => (m, true),
                    _ => (guess, false),
                }
            }
        };
        (v.l_short, v.l_long) = (self.arrival_rate(cfg, s, &v, cfg.short), self.arrival_rate(cfg, s, &v, cfg.long));
        v
    }

    /// What the processing counter shows of the per-replica throughput at this poll.
    fn evidence(&self, cfg: &DrainConfig, v: &View, guess: f64) -> Evidence {
        let Some(p) = v.processing else { return Evidence::default() };
        // ΔC/Δt over the long window, per replica: divided by the most replicas that may have
        // been ready then, it is a lower bound whatever the count did; a capacity only when the
        // count held (a count raised within the window divides the old replicas' work by the
        // new count, and that biased-low sample once capped the probe for good).
        // (Pods may start sooner than startupSeconds: only a count ebb asked for, in force at
        // some poll of the window, bounds the replicas that may have been ready.)
        let learned = ready_range(&self.ring, &self.asked, Duration::ZERO, cfg.long)
            .filter(|&(_, hi)| p > 0.0 && hi > 0)
            .map(|(_, hi)| p / f64::from(hi));
        // Held only when the count held for twice startupSeconds before the window too: pods
        // slower to start than that setting made a sample look saturated, and it capped μ̂.
        let held = ready_range(&self.ring, &self.asked, cfg.startup * 2, cfg.long).is_some_and(|(lo, hi)| lo > 0 && lo == hi);
        // Waiting all along: even the lag just after each commit held more than WAITING's work.
        let (window, waiting) = if v.commit_interval + COMMIT_INTERVAL <= cfg.long {
            (cfg.long, p * secs(WAITING + v.commit_interval.min(COMMIT_INTERVAL)))
        } else {
            (cfg.long, p * secs(WAITING + v.commit_interval))
        };
        // Falling behind (Burrow's WARN): the lag rose at every poll of a short window, by more
        // than a commit interval's worth, with the same replicas ready throughout: they are
        // doing all they can, so what they did is their capacity. This catches an over-probed
        // μ̂ long before a whole long window is spent waiting.
        let behind = Some(p)
            .filter(|&p| v.full && v.r > 0 && estimate::falling_behind(&self.ring, BEHIND, p.max(0.0) * secs(v.commit_interval)))
            .and_then(|_| rate(&self.ring, BEHIND, |x| x.processed))
            .zip(ready_range(&self.ring, &self.asked, cfg.startup, BEHIND + v.commit_interval))
            .filter(|&(p, (lo, hi))| p > 0.0 && lo > 0 && f64::from(hi) <= 1.25 * f64::from(lo))
            .map(|(p, (lo, hi))| p / ((f64::from(lo) + f64::from(hi)) / 2.0));
        // Draining: work waited at every poll of a short window with the same replicas ready
        // (a burst's backlog being worked off): what they did then is their capacity. A spike
        // that is over in two minutes gives no long window.
        let span = BEHIND + v.commit_interval;
        let draining = rate(&self.ring, span, |x| x.processed)
            .filter(|&p| v.full && p > 0.0 && saturated(&self.ring, span, p * secs(WAITING + v.commit_interval)))
            .zip(ready_range(&self.ring, &self.asked, cfg.startup, span))
            .zip(ready_range(&self.ring, &self.asked, Duration::ZERO, span))
            .filter(|&((_, (lo, hi)), (_, most))| lo > 0 && lo == hi && hi == most)
            .map(|((p, (_, hi)), _)| p / f64::from(hi));
        let saturated_sample =
            behind.or(draining).or(learned.filter(|_| held && saturated(&self.ring, window, waiting)));
        Evidence { saturated: saturated_sample, lower_bound: learned, held, guess }
    }

    /// `λ` over `w`: measured by the source, from its arrivals counter, or from the backlog.
    fn arrival_rate(&self, cfg: &DrainConfig, s: Sample, v: &View, w: Duration) -> Option<f64> {
        if let Some(l) = s.arrival_rate.filter(|l| l.is_finite()) {
            return Some(l.max(0.0));
        }
        if v.full {
            return rate(&self.ring, w, |x| x.arrivals).map(|l| l.max(0.0));
        }
        let db = rate(&self.ring, w, |x| Some(x.backlog))?;
        // Saturated: everything the ready replicas can do is being done. Keeping up: the rate
        // is only bounded above; sizing for 85 % of the ready count probes it down (past the
        // 10 % hysteresis whatever targetUtilization is).
        let served = if saturated(&self.ring, w, f64::from(v.r) * v.mu * secs(WAITING)) {
            f64::from(v.r) * v.mu
        } else {
            PROBE * cfg.utilization * f64::from(v.r) * v.mu
        };
        Some((db + served).max(0.0))
    }
}

/// What the estimates ask for, before the guards.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// The recommendation for scaling up (`λ_up`) and the one now for scaling down.
    up: u32,
    /// The highest of the down window's rate parts and the recommendation now.
    down: u32,
    /// The rate part alone at `λ_up`, to tell a surge.
    rate_up: u32,
    /// KEDA's backlog rule: the highest `ceil(backlog / threshold)` over its window, within
    /// the bounds; it bounds the count while the throughput is not measured.
    keda: u32,
    floor: u32,
}

fn count(x: f64, max: u32) -> u32 {
    if x.is_finite() { x.ceil().clamp(0.0, f64::from(u32::MAX)) as u32 } else { max }
}

fn plan(state: &mut DrainState, cfg: &DrainConfig, bounds: &Bounds, v: &View) -> Plan {
    // The user's latency intent: a backlog per replica of `threshold` waits `threshold / μ̂`.
    // A threshold that small asks for a backlog drained sooner than drainSeconds, and for more
    // headroom: KEDA's loop at such a threshold keeps waits near zero.
    let accepted = bounds.target / v.mu;
    let drain_s = secs(cfg.drain).min((accepted * INTENT).max(1.0));
    let headroom = if accepted < secs(SHORT_WAIT) { SHORT_WAIT_HEADROOM } else { 0.0 };
    let cap = v.mu * (cfg.utilization - headroom).max(0.5);
    let lag_done = match v.processing {
        // A log's lag also holds what was processed since the last commit: its lowest within
        // a commit interval is the lag just after a commit, which still holds on average half
        // a poll's work (at most a commit's).
        Some(p) if v.full => {
            let low = estimate::lowest(&state.ring, v.commit_interval + Duration::from_secs(1)).unwrap_or(v.backlog);
            (low - p.max(0.0) * secs(v.commit_interval.min(COMMIT_INTERVAL)) / 2.0).max(0.0)
        }
        _ => v.backlog,
    };
    let rec_for = |lambda: f64| -> u32 {
        let projected = lag_done + (lambda - f64::from(v.r) * v.mu).max(0.0) * secs(cfg.startup);
        // Draining faster than SURGE times the arrivals (or one replica's rate) buys little
        // wait for a large surge of replicas that the down path then holds for a window.
        let drain = (projected / drain_s).min(SURGE * lambda.max(v.mu));
        count((lambda + drain) / cap, bounds.max)
    };
    let floor = bounds.min.max(1).min(bounds.max);
    let l_up = v.l_short.unwrap_or(0.0).max(v.l_long.unwrap_or(0.0));
    // The down window already smooths the scale-down path; a long-window rate on top of it
    // held a finished burst's count for two windows.
    let l_down = v.l_short.or(v.l_long).unwrap_or(0.0);
    let up = rec_for(l_up).clamp(floor, bounds.max);
    let down_now = rec_for(l_down).clamp(floor, bounds.max);
    // The down window remembers the rate part only: a backlog the window saw is either still
    // there (and in `down_now`) or drained, and then it needs no replicas.
    state.down.push(v.at, count(l_down / cap, bounds.max).clamp(floor, bounds.max), cfg.down_window);
    let down = state.down.max_since(None).unwrap_or(down_now).max(down_now);
    // KEDA's loop reads the backlog at the HPA's syncs, every 15 s: sampled at every 5 s poll,
    // the window would catch more of each peak and hold more than KEDA does.
    let keda_now = count(v.backlog / bounds.target, bounds.max).clamp(floor, bounds.max);
    if state.keda_sampled.is_none_or(|t| v.at.saturating_duration_since(t) >= estimate::HPA_SYNC) {
        state.keda.push(v.at, keda_now, bounds.stabilization);
        state.keda_sampled = Some(v.at);
    }
    let keda = state.keda.max_since(v.at.checked_sub(bounds.stabilization)).unwrap_or(floor).max(keda_now);
    Plan { up, down, rate_up: count(l_up / cap, bounds.max), keda, floor }
}

/// The count and its reason, from the plan and the guards.
fn decide(state: &DrainState, cfg: &DrainConfig, bounds: &Bounds, v: &View, plan: &Plan) -> (u32, Reason) {
    let current = state.desired;
    let quiet = state.last_work.or(state.first_seen).map_or(Duration::ZERO, |t| v.at.saturating_duration_since(t));
    if bounds.min == 0 && v.backlog <= 0.0 && !v.arrived && quiet >= bounds.cooldown {
        return (0, Reason::Idle);
    }
    let (desired, reason) = if current == 0 {
        // Waking from zero (or the first observation): straight to the recommendation.
        (plan.up, Reason::ScaleUp)
    } else if plan.up > current {
        if state.still >= cfg.stall_polls && v.r >= 1 {
            (current, Reason::Stalled)
        } else if state.frozen_until.is_some_and(|t| v.at < t) {
            (current, Reason::Ineffective)
        } else {
            let step = bounds.max_step.map_or(u32::MAX, |st| current.saturating_add(st));
            (plan.up.min(step), Reason::ScaleUp)
        }
    } else if guards::may_scale_down(state, cfg, v, plan.down, current) {
        (plan.down.max(current.div_ceil(2)).max(plan.floor), Reason::ScaleDown)
    } else {
        (current, Reason::Hold)
    };
    // Without a measured throughput, never more than KEDA's own loop would ask.
    let (desired, reason) =
        if !v.measured && plan.keda < desired { (plan.keda, Reason::Backlog) } else { (desired, reason) };
    let desired = desired.min(bounds.max);
    // Rebalance economy: a change within minChangeIntervalSeconds of the last one waits, except
    // waking from zero (work is waiting) and the cooldown's zero.
    let spaced = state.last_change.is_some_and(|t| v.at.saturating_duration_since(t) < cfg.min_change);
    if desired != current && current > 0 && desired > 0 && spaced { (current, Reason::Spacing) } else { (desired, reason) }
}

impl DrainState {
    /// Keeps the decision and what the next polls need of it.
    fn record(&mut self, cfg: &DrainConfig, bounds: &Bounds, v: &View, plan: &Plan, desired: u32, reason: Reason) {
        let current = self.desired;
        if desired != current && current > 0 {
            self.last_change = Some(v.at);
        }
        if desired > current {
            self.last_increase = Some(v.at);
            self.surge = f64::from(desired) > SURGE_RELEASE * f64::from(plan.rate_up) + 1.0;
            guards::note_increase(self, v, desired);
        }
        self.request = guards::request(desired, bounds);
        self.desired = desired;
        self.reason = Some(reason);
        self.asked.push_back((v.at, desired));
        while self.asked.len() > 1
            && self.asked.get(1).is_some_and(|&(t, _)| v.at.saturating_duration_since(t) > cfg.long + cfg.startup)
        {
            self.asked.pop_front();
        }
        self.estimates = Estimates {
            arrival_rate: v.l_short.or(v.l_long),
            throughput: Some(v.mu),
            ready: v.r,
            recommendation: plan.up,
            full: v.full,
            ready_read: self.ring.back().is_some_and(|s| s.ready.is_some()),
            measured: v.measured,
        };
    }
}
