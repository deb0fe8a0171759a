//! The `drain` replica policy (`policy: drain`): size for the arrival rate, plus a term that
//! drains the backlog within a target time (the Flink autoscaler's and DS2's rule; the user's
//! view is docs/replicas.md, `policy: drain`):
//!
//! ```text
//! B_proj = B + max(0, λ_up − R̂·μ̂) · startupSeconds      backlog when new pods are ready
//! rec    = ceil((λ_up + B_proj / drainSeconds) / (μ̂ · targetUtilization))
//! ```
//!
//! Everything here is a pure function of the observations (time, backlog, and, where the source
//! has them, cumulative arrivals `E` and processed `C`), so every ebb replica that saw the same
//! polls decides the same. What each symbol comes from:
//! - `λ` (arrival rate): `ΔE/Δt` over a short (10 s) and a long (60 s) window when `E` is
//!   observed (Kafka log-end offsets, Event Hubs enqueued sequence numbers, a Prometheus
//!   `rateQuery`); else, from the backlog: `ΔB/Δt + R̂·μ̂` while the consumers are saturated, and
//!   a probe sizing for 85 % of the ready replicas while they keep up (the rate is then only
//!   bounded above).
//!   Scale-up uses `max(λ_short, λ_long)`; scale-down uses `λ_short` (the down window smooths).
//! - `μ̂` (per-replica throughput): `throughputPerReplica` when given; else learned from `ΔC/Δt`
//!   over the long window divided by the most replicas that may have been ready in it (a lower
//!   bound), only raised while the consumers keep up, and moved both ways (±20 % a step) while
//!   they are saturated: work waited through the whole long window, or the lag rose at every
//!   poll of the last 20 s with the ready count (nearly) unchanged; until then
//!   `threshold / 10 s` (the threshold read as 10 s of one replica's work). A count ebb lowered
//!   may reach the pods only at the HPA's next sync (15 s), so for a while both counts may be
//!   ready.
//! - `R̂` (ready replicas): read from the scale target when ebb may (queue+R: `serve --kube`);
//!   else the smallest count ebb asked for over the last `startupSeconds` (new pods need that
//!   long; removals are immediate).
//!
//! The drain term is at most twice the arrival rate (or one replica's rate): a larger surge
//! buys little wait and the down path would hold it for a window.
//!
//! Up: at once, to `max(current, rec)`, bounded by `maxScaleUpStep`; not at all while a freeze
//! holds: once a scale-up's replicas have been ready for 20 s with work waiting throughout, the
//! processing rate must have risen by half of what they were expected to add, else something
//! downstream is the limit: scale-ups stop for the long window. (Kept to a pause on purpose:
//! a freeze renewed while the rate stays flat, or a μ̂ kept from falling, starved the consumers
//! whenever the check misread pods that started sooner or later than `startupSeconds`.)
//!
//! Down: to the highest rate part (`ceil(λ_short / (μ̂·ρ))`) over `downWindowSeconds`, or to
//! `rec` now if that is higher (a backlog still waiting keeps its drain term, a drained one
//! needs nothing); applied only when at least `max(1, 10 %)` below the current count, at most
//! halving, never while the backlog is more than the ready replicas clear in `drainSeconds`,
//! never while `λ_short ≥ 2·R̂·μ̂` (a burst), and never within `downWindowSeconds` of an
//! increase unless that increase was a surge (above twice the rate part) whose backlog has
//! drained. `minChangeIntervalSeconds` (off by default) spaces changes out. Zero only after
//! `cooldownPeriod` with no backlog and no arrivals. Stalled consumers (`C` still for
//! `stallPolls` polls while `B > 0`) hold the count: more replicas would not help. A counter
//! going backwards (topic re-created, offsets rewound) drops the rate history for the long
//! window.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

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
    /// The trigger's threshold, for the throughput fallback.
    pub target: f64,
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
            Reason::Stalled => "consumer stalled: not scaling up",
            Reason::Ineffective => "last scale-up did not help: not scaling up",
            Reason::Spacing => "held: minChangeIntervalSeconds",
            Reason::Idle => "idle for cooldownPeriod: zero",
        }
    }
}

/// Which estimators the policy could use at the latest observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Arrivals and processed counters (Kafka, Event Hubs).
    Full,
    /// Backlog only, with a throughput (configured or learned).
    Queue,
}

/// The history the policy keeps per trigger.
#[derive(Debug, Clone, Default)]
pub struct DrainState {
    ring: VecDeque<Sample>,
    /// Desired counts ebb decided `(time, count)`, for `R̂`, newest last.
    asked: VecDeque<(Instant, u32)>,
    /// Scale-down recommendations `(time, rec)` within the down window.
    down: VecDeque<(Instant, u32)>,
    mu: Option<f64>,
    /// The throughput measured the last time the consumers were saturated: probing above it
    /// would only make them wait again.
    mu_saturated: Option<f64>,
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
    up_check: Option<UpCheck>,
    /// No scale-up before this time: the last one did not help.
    frozen_until: Option<Instant>,
    /// The latest increase was a surge: more than [`SURGE_RELEASE`] times the rate part.
    surge: bool,
    desired: u32,
    reason: Option<Reason>,
    /// Estimates at the latest observation, for logs and `ebb check`.
    pub estimates: Estimates,
}

/// A scale-up to check once its replicas are ready ([`Reason::Ineffective`]).
#[derive(Debug, Clone, Copy)]
struct UpCheck {
    /// The first increase not yet checked.
    at: Instant,
    /// Ready replicas and processing rate before it, and the most asked for since.
    from: u32,
    before: f64,
    to: u32,
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
}

impl DrainState {
    /// The decision after the latest observation.
    pub fn desired(&self) -> Option<(u32, Reason)> {
        self.reason.map(|r| (self.desired, r))
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// `ΔX/Δt` between the newest sample and the oldest one within `window` (at least one poll
/// back), using `get` for X.
fn rate(ring: &VecDeque<Sample>, window: Duration, get: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    let newest = ring.back()?;
    let start = newest.at.checked_sub(window);
    let oldest = ring
        .iter()
        .find(|s| start.is_none_or(|w| s.at >= w) && s.at < newest.at)
        .or_else(|| ring.iter().rev().nth(1))?;
    let dt = secs(newest.at.saturating_duration_since(oldest.at));
    if dt <= 0.0 {
        return None;
    }
    Some((get(newest)? - get(oldest)?) / dt)
}

/// Did every sample within `window` have more than `above` waiting (the consumers could not
/// keep up)?
fn saturated(ring: &VecDeque<Sample>, window: Duration, above: f64) -> bool {
    let Some(newest) = ring.back() else { return false };
    let start = newest.at.checked_sub(window);
    let mut n = 0;
    for s in ring.iter().filter(|s| start.is_none_or(|w| s.at >= w)) {
        if s.backlog <= above {
            return false;
        }
        n += 1;
    }
    n >= 2
}

/// Did the backlog rise at every poll within `window` (three polls at least), by more than
/// `noise` in all?
fn falling_behind(ring: &VecDeque<Sample>, window: Duration, noise: f64) -> bool {
    let Some(newest) = ring.back() else { return false };
    let start = newest.at.checked_sub(window);
    let within: Vec<f64> = ring.iter().filter(|s| start.is_none_or(|w| s.at >= w)).map(|s| s.backlog).collect();
    within.len() >= 3
        && within.windows(2).all(|w| w[1] > w[0])
        && within.last().zip(within.first()).is_some_and(|(l, f)| l - f > noise)
}

/// The most a plan drains beyond the arrivals, as a multiple of them (or of one replica's
/// rate, when they are fewer): swept 1, 1.5, 2 and unbounded on every built-in trace.
const SURGE: f64 = 2.0;

/// An increase above this multiple of what the arrival rate alone asks (plus one) is a surge
/// to drain a backlog, released within the down window once that backlog is gone. Swept 1.25,
/// 1.5 and 2: below 2 the ±1 steps of a steady load counted as surges and flapped.
const SURGE_RELEASE: f64 = 2.0;

/// The HPA's sync period (kube-controller-manager's default): a count ebb pushes reaches the
/// Deployment at the next sync.
const HPA_SYNC: Duration = Duration::from_secs(15);

/// The window [`falling_behind`] looks at.
const BEHIND: Duration = Duration::from_secs(20);

/// Work counts as waiting (the consumers saturated) when more than this much of it, at the
/// processing rate, is in the backlog. A log's lag also holds what was processed since the last
/// commit, up to a commit interval's worth: learned from how often `C` moves (Event Hubs
/// checkpoints can be minutes apart), Kafka's auto-commit default (5 s) until then.
const WAITING: Duration = Duration::from_secs(2);

/// Without a throughput, the trigger's threshold is read as this much of one replica's work
/// (Little's law: a backlog per replica of `threshold` waits about this long).
const THRESHOLD_SECONDS: Duration = Duration::from_secs(10);

/// A queue that keeps up is sized for this share of its ready replicas: the rate is only
/// bounded above, so ebb probes down until the backlog says otherwise.
const PROBE: f64 = 0.85;
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// `R̂`: the smallest count asked for over the last `startup` (including the one in force then).
fn ready(asked: &VecDeque<(Instant, u32)>, startup: Duration, now: Instant) -> u32 {
    let start = now.checked_sub(startup);
    let mut r = u32::MAX;
    let mut in_force_at_start = None;
    for &(t, n) in asked.iter().filter(|&&(t, _)| t <= now) {
        if start.is_some_and(|w| t <= w) {
            in_force_at_start = Some(n);
        } else {
            r = r.min(n);
        }
    }
    let r = in_force_at_start.map_or(r, |n| r.min(n));
    if r == u32::MAX { 0 } else { r }
}

/// The most replicas that may have been ready at `now`: a count ebb lowered reaches the pods
/// only at the HPA's next sync, up to [`HPA_SYNC`] later.
fn ready_high(asked: &VecDeque<(Instant, u32)>, startup: Duration, now: Instant) -> u32 {
    let since = now.checked_sub(HPA_SYNC);
    let just_before = asked
        .iter()
        .filter(|&&(t, _)| t <= now && since.is_none_or(|w| t > w))
        .filter_map(|&(t, _)| t.checked_sub(Duration::from_nanos(1)));
    just_before.chain(since).map(|t| ready(asked, startup, t)).fold(ready(asked, startup, now), u32::max)
}

/// The fewest and the most replicas that may have been ready at any poll within `window`
/// (ending at the newest), or `None` when the history does not reach back that far.
fn ready_range(
    ring: &VecDeque<Sample>,
    asked: &VecDeque<(Instant, u32)>,
    startup: Duration,
    window: Duration,
) -> Option<(u32, u32)> {
    let start = ring.back()?.at.checked_sub(window)?;
    if ring.front().is_none_or(|f| f.at > start) {
        return None;
    }
    ring.iter().filter(|s| s.at >= start).fold(None, |acc, s| {
        let (lo, hi) = match s.ready {
            Some(n) => (n, n),
            None => (ready(asked, startup, s.at), ready_high(asked, startup, s.at)),
        };
        Some(acc.map_or((lo, hi), |(a, b): (u32, u32)| (a.min(lo), b.max(hi))))
    })
}

/// Folds one poll in and decides.
pub fn observe(state: &mut DrainState, cfg: &DrainConfig, bounds: &Bounds, s: Sample) {
    state.first_seen.get_or_insert(s.at);
    let mut arrived = false;
    // A counter going backwards: the rates over the old history are meaningless.
    if let Some(&prev) = state.ring.back() {
        let back = |a: Option<f64>, b: Option<f64>| matches!((a, b), (Some(a), Some(b)) if b < a);
        arrived = matches!((prev.arrivals, s.arrivals), (Some(a), Some(b)) if b > a);
        if back(prev.arrivals, s.arrivals) || back(prev.processed, s.processed) {
            state.ring.clear();
            state.reset_until = Some(s.at + cfg.long);
            // Whatever happened in between may have been work: never a zero on a reset.
            arrived = true;
        }
        if s.backlog > 0.0 && prev.processed.is_some() && prev.processed == s.processed {
            state.still += 1;
        } else {
            state.still = 0;
        }
        if matches!((prev.processed, s.processed), (Some(a), Some(b)) if b > a) {
            if let Some(t) = state.c_moved {
                // The slowest recent cadence, decaying: a commit skipped now and then should
                // not shrink it, a commit interval that shortened should.
                let gap = s.at.saturating_duration_since(t);
                let old = state.commit_interval.unwrap_or(gap);
                state.commit_interval = Some(gap.max(old.mul_f64(0.9)));
            }
            state.c_moved = Some(s.at);
        }
    }
    if s.backlog > 0.0 || arrived {
        state.last_work = Some(s.at);
    }
    state.ring.push_back(s);
    let keep = cfg.long.max(cfg.short) + cfg.startup + Duration::from_secs(1);
    while state.ring.len() > 2 && state.ring.front().is_some_and(|f| s.at.saturating_duration_since(f.at) > keep) {
        state.ring.pop_front();
    }

    let current = state.desired;
    // Read when ebb may read it (queue+R), else estimated from what ebb asked for.
    let r = s.ready.unwrap_or_else(|| ready(&state.asked, cfg.startup, s.at));
    let counters_ok = state.reset_until.is_none_or(|t| s.at >= t);
    let full = counters_ok && s.arrivals.is_some();

    // μ̂: configured, else learned from ΔC/Δt per ready replica, else the fallback.
    let fallback = (bounds.target / secs(THRESHOLD_SECONDS)).max(f64::MIN_POSITIVE);
    let commit_interval = state.commit_interval.unwrap_or(COMMIT_INTERVAL);
    // The observed processing rate, when the source counts it.
    let processing =
        if counters_ok { rate(&state.ring, cfg.long, |x| x.processed).filter(|p| p.is_finite()) } else { None };
    let mu = match cfg.throughput {
        Some(t) => t,
        None => {
            let mu = state.mu.unwrap_or(fallback);
            // ΔC/Δt over the long window, per replica: divided by the most replicas that may
            // have been ready then, it is a lower bound whatever the count did; a capacity only
            // when the count held (a count raised within the window divides the old replicas'
            // work by the new count, and that biased-low sample once capped the probe for good).
            let range = ready_range(&state.ring, &state.asked, cfg.startup, cfg.long);
            let learned = processing
                .zip(range)
                .filter(|&(p, (_, hi))| p > 0.0 && hi > 0)
                .map(|(p, (lo, hi))| (p / f64::from(hi), lo == hi));
            let waiting = processing.unwrap_or(0.0) * secs(WAITING + commit_interval);
            // Falling behind (Burrow's WARN): the lag rose at every poll of a short window, by
            // more than a commit interval's worth, with the same replicas ready throughout:
            // they are doing all they can, so what they did is their capacity. This catches an
            // over-probed μ̂ long before a whole long window is spent waiting.
            let behind = processing
                .filter(|_| full && r > 0)
                .filter(|&p| falling_behind(&state.ring, BEHIND, p.max(0.0) * secs(commit_interval)))
                .and_then(|_| rate(&state.ring, BEHIND, |x| x.processed))
                .zip(ready_range(&state.ring, &state.asked, cfg.startup, BEHIND + commit_interval))
                .filter(|&(p, (lo, hi))| p.is_finite() && p > 0.0 && lo > 0 && f64::from(hi) <= 1.25 * f64::from(lo))
                .map(|(p, (lo, hi))| p / ((f64::from(lo) + f64::from(hi)) / 2.0));
            let saturated_sample = behind.or(learned
                .filter(|&(_, held)| held && saturated(&state.ring, cfg.long, waiting))
                .map(|(sample, _)| sample));
            let learned = learned.map(|(sample, _)| sample);
            let mu = match (saturated_sample, learned) {
                // Saturated: the processing rate is the capacity; move towards it, ±20 % a step.
                (Some(sample), _) => {
                    state.mu_saturated = Some(sample);
                    (0.7 * mu + 0.3 * sample).clamp(mu * 0.8, mu * 1.2)
                }
                // Keeping up: the processing rate only bounds the capacity from below, so probe
                // upwards (5 % a poll, within twice what a replica was seen to do, and not past
                // what it did when last saturated); a saturation corrects an overshoot.
                (None, Some(sample)) => {
                    let ceiling = state.mu_saturated.map_or(2.0 * sample, |m| m.max(sample) * 1.02);
                    mu.max(sample).max((mu * 1.05).min(ceiling))
                }
                (None, None) => mu,
            };
            state.mu = Some(mu);
            mu
        }
    };

    let rate_of = |w: Duration| -> Option<f64> {
        if let Some(l) = s.arrival_rate.filter(|l| l.is_finite()) {
            Some(l.max(0.0))
        } else if full {
            rate(&state.ring, w, |x| x.arrivals).map(|l| l.max(0.0))
        } else {
            let db = rate(&state.ring, w, |x| Some(x.backlog))?;
            // Saturated: everything the ready replicas can do is being done. Keeping up: the
            // rate is only bounded above; sizing for 85 % of the ready count probes it down
            // (past the 10 % hysteresis whatever targetUtilization is).
            let waiting = f64::from(r) * mu * secs(WAITING);
            let served = if saturated(&state.ring, w, waiting) {
                f64::from(r) * mu
            } else {
                PROBE * cfg.utilization * f64::from(r) * mu
            };
            Some((db + served).max(0.0))
        }
    };
    let (l_short, l_long) = (rate_of(cfg.short), rate_of(cfg.long));
    let l_up = l_short.unwrap_or(0.0).max(l_long.unwrap_or(0.0));
    // The down window already smooths the scale-down path; a long-window rate on top of it
    // held a finished burst's count for two windows.
    let l_down = l_short.or(l_long).unwrap_or(0.0);
    let cap = mu * cfg.utilization;
    // A log's lag holds on average half a commit interval of work already done.
    let backlog = match processing {
        Some(p) if full => (s.backlog - p.max(0.0) * secs(commit_interval) / 2.0).max(0.0),
        _ => s.backlog.max(0.0),
    };
    let rec_for = |lambda: f64| -> u32 {
        let projected = backlog + (lambda - f64::from(r) * mu).max(0.0) * secs(cfg.startup);
        // Draining faster than SURGE times the arrivals (or one replica's rate) buys little
        // wait for a large surge of replicas that the down path then holds for a window.
        let drain = (projected / secs(cfg.drain)).min(SURGE * lambda.max(mu));
        let n = ((lambda + drain) / cap).ceil();
        if n.is_finite() { n.clamp(0.0, f64::from(u32::MAX)) as u32 } else { bounds.max }
    };
    let floor = bounds.min.max(1).min(bounds.max);
    let rec_up = rec_for(l_up).clamp(floor, bounds.max);
    let rec_down = rec_for(l_down).clamp(floor, bounds.max);
    // The down window remembers the rate part only: a backlog the window saw is either still
    // there (and in `rec_down`) or drained, and then it needs no replicas.
    let rate_part = |lambda: f64| -> u32 {
        let n = (lambda / cap).ceil();
        if n.is_finite() { n.clamp(0.0, f64::from(u32::MAX)) as u32 } else { bounds.max }
    };
    let rec_down_w = rate_part(l_down).clamp(floor, bounds.max);
    while state.down.back().is_some_and(|&(_, x)| x <= rec_down_w) {
        state.down.pop_back();
    }
    state.down.push_back((s.at, rec_down_w));
    while state.down.len() > 1
        && state.down.front().is_some_and(|&(t, _)| s.at.saturating_duration_since(t) > cfg.down_window)
    {
        state.down.pop_front();
    }
    let down_max = state.down.front().map_or(rec_down, |&(_, x)| x).max(rec_down);

    let quiet = state.last_work.or(state.first_seen).map_or(Duration::ZERO, |t| s.at.saturating_duration_since(t));
    let stalled = state.still >= cfg.stall_polls && r >= 1;
    // Scaling effectiveness (Flink; kedacore/keda#7092): once the replicas of the latest
    // scale-up have been ready for a window, and work still waited all along, the processing
    // rate should have risen by at least half of what they were expected to add. If it did not,
    // something downstream is the limit: no more scale-ups for the long window.
    let behind_now = processing.is_some_and(|p| s.backlog > p.max(0.0) * secs(WAITING + commit_interval));
    if let Some(check) = state.up_check
        && s.at.saturating_duration_since(check.at) >= cfg.startup + BEHIND + commit_interval
    {
        state.up_check = None;
        let after = rate(&state.ring, BEHIND, |x| x.processed).filter(|p| p.is_finite());
        // Only what should have been ready over the whole window counts.
        let since = s.at.checked_sub(BEHIND + commit_interval).unwrap_or(s.at);
        let ready_then = match s.ready {
            Some(_) => {
                ready_range(&state.ring, &state.asked, cfg.startup, BEHIND + commit_interval).map_or(r, |(lo, _)| lo)
            }
            None => ready(&state.asked, cfg.startup, since),
        };
        let added = ready_then.min(check.to).saturating_sub(check.from);
        let expected = f64::from(added) * mu;
        if let Some(after) = after
            && behind_now
            && counters_ok
            && after - check.before < 0.5 * expected
        {
            state.frozen_until = Some(s.at + cfg.long);
        }
    }
    let frozen = state.frozen_until.is_some_and(|t| s.at < t);
    let (desired, reason) = if bounds.min == 0 && s.backlog <= 0.0 && !arrived && quiet >= bounds.cooldown {
        (0, Reason::Idle)
    } else if current == 0 {
        // Waking from zero (or the first observation): straight to the recommendation.
        (rec_up, Reason::ScaleUp)
    } else if rec_up > current {
        if stalled {
            (current, Reason::Stalled)
        } else if frozen {
            (current, Reason::Ineffective)
        } else {
            let step = bounds.max_step.map_or(u32::MAX, |st| current.saturating_add(st));
            (rec_up.min(step), Reason::ScaleUp)
        }
    } else {
        let hysteresis = (f64::from(current) * 0.1).max(1.0);
        let burst = l_short.is_some_and(|l| r > 0 && l >= 2.0 * f64::from(r) * mu);
        let catching_up = s.backlog > f64::from(r) * mu * secs(cfg.drain);
        // No reversal within the down window of an increase (anti-flap), unless the increase
        // was a surge to drain a backlog and that backlog is gone: the surge has done its job.
        let drained = state.surge && !catching_up && s.backlog <= f64::from(r) * mu * secs(WAITING + commit_interval);
        let recent_up =
            !drained && state.last_increase.is_some_and(|t| s.at.saturating_duration_since(t) < cfg.down_window);
        if f64::from(down_max) <= f64::from(current) - hysteresis && !burst && !catching_up && !recent_up {
            (down_max.max(current.div_ceil(2)).max(floor), Reason::ScaleDown)
        } else {
            (current, Reason::Hold)
        }
    };
    let desired = desired.min(bounds.max);
    // Rebalance economy: a change within minChangeIntervalSeconds of the last one waits, except
    // waking from zero (work is waiting) and the cooldown's zero.
    let spaced = state.last_change.is_some_and(|t| s.at.saturating_duration_since(t) < cfg.min_change);
    let (desired, reason) = if desired != current && current > 0 && desired > 0 && spaced {
        (current, Reason::Spacing)
    } else {
        (desired, reason)
    };
    if desired != current && current > 0 {
        state.last_change = Some(s.at);
    }
    if desired > current {
        state.last_increase = Some(s.at);
        state.surge = f64::from(desired) > SURGE_RELEASE * f64::from(rate_part(l_up)) + 1.0;
        // Only a log's processed counter can show whether the new replicas helped.
        if current > 0 && counters_ok && s.processed.is_some() {
            let before = rate(&state.ring, BEHIND, |x| x.processed).filter(|p| p.is_finite()).unwrap_or(0.0);
            // The first unchecked increase is checked at its own time; later ones are
            // checked after it.
            let check = state.up_check.get_or_insert(UpCheck { at: s.at, from: r, before, to: desired });
            check.to = check.to.max(desired);
        }
    }
    state.desired = desired;
    state.reason = Some(reason);
    state.asked.push_back((s.at, desired));
    while state.asked.len() > 1
        && state.asked.get(1).is_some_and(|&(t, _)| s.at.saturating_duration_since(t) > cfg.long + cfg.startup)
    {
        state.asked.pop_front();
    }
    state.estimates = Estimates {
        arrival_rate: l_short.or(l_long),
        throughput: Some(mu),
        ready: r,
        recommendation: rec_up,
        full,
        ready_read: s.ready.is_some(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bounds(min: u32, max: u32, step: Option<u32>) -> Bounds {
        Bounds { min, max, max_step: step, cooldown: Duration::from_secs(60), target: 50.0 }
    }

    /// One poll of a random history: seconds since the previous, backlog, arrivals and processed
    /// added since the previous (negative sometimes: a counter reset).
    #[derive(Debug, Clone)]
    struct Step {
        gap: u64,
        backlog: u32,
        arrived: i64,
        processed: i64,
        /// The scale target's ready replicas, when the run reads them.
        ready: u32,
    }

    fn step() -> impl Strategy<Value = Step> {
        (1u64..=30, prop_oneof![Just(0u32), 0u32..5_000], -50i64..2_000, -50i64..2_000, 0u32..300)
            .prop_map(|(gap, backlog, arrived, processed, ready)| Step { gap, backlog, arrived, processed, ready })
    }

    /// The polls of `steps` from `t0`, each with whether work arrived since the previous one.
    fn samples(t0: Instant, steps: &[Step], counters: bool, read_ready: bool) -> Vec<(Sample, bool)> {
        let (mut e, mut c, mut at) = (0.0f64, 0.0f64, t0);
        steps
            .iter()
            .map(|st| {
                at += Duration::from_secs(st.gap);
                let e0 = e;
                e = (e + st.arrived as f64).max(0.0);
                c = (c + st.processed as f64).max(0.0);
                let sample = Sample {
                    at,
                    backlog: f64::from(st.backlog),
                    arrivals: counters.then_some(e),
                    processed: counters.then_some(c),
                    arrival_rate: None,
                    ready: read_ready.then_some(st.ready),
                };
                (sample, counters && e > e0)
            })
            .collect()
    }

    /// Runs the steps, checking the policy's safety invariants (numbered below) after each.
    fn check(steps: &[Step], cfg: &DrainConfig, b: &Bounds, counters: bool, ready: bool) -> Result<(), TestCaseError> {
        let t0 = Instant::now();
        let polls = samples(t0, steps, counters, ready);
        let mut s = DrainState::default();
        let mut last_work: Option<Instant> = None;
        let mut prev: Option<u32> = None;
        let mut last_increase: Option<Instant> = None;
        let mut last_change: Option<Instant> = None;
        let first = t0;
        for (st, &(sample, arrived)) in steps.iter().zip(&polls) {
            let at = sample.at;
            if st.backlog > 0 || arrived {
                last_work = Some(at);
            }
            observe(&mut s, cfg, b, sample);
            let (d, reason) = s.desired().unwrap();
            // 1. Zero only with nothing waiting, no arrivals for cooldownPeriod, minReplicaCount 0.
            if d == 0 {
                prop_assert_eq!(st.backlog, 0);
                prop_assert_eq!(b.min, 0);
                let quiet_since = last_work.unwrap_or(first);
                prop_assert!(at.saturating_duration_since(quiet_since) >= b.cooldown, "zero too early");
                prop_assert_eq!(reason, Reason::Idle);
            }
            // 2. Work waiting ⇒ at least one replica.
            if st.backlog > 0 {
                prop_assert!(d >= 1);
            }
            // 3. Never above maxReplicaCount.
            prop_assert!(d <= b.max);
            if let Some(p) = prev {
                // 4. Scale-up per poll bounded by maxScaleUpStep (waking from zero excepted), and
                // never past twice what the formula asks.
                if let (Some(step), true) = (b.max_step, p > 0) {
                    prop_assert!(d <= p.saturating_add(step), "{p} -> {d}");
                }
                if d > p {
                    prop_assert!(d <= 2 * s.estimates.recommendation.max(1), "{p} -> {d}: {:?}", s.estimates);
                    prop_assert!(reason != Reason::Stalled && reason != Reason::Ineffective);
                    prop_assert!(s.frozen_until.is_none_or(|t| at >= t), "an increase while frozen");
                }
                // 5. No scale-down within downWindowSeconds of an increase (zero excepted),
                // unless that increase was a surge to drain a backlog.
                if d < p && d > 0 {
                    prop_assert!(
                        s.surge || last_increase.is_none_or(|t| at.saturating_duration_since(t) >= cfg.down_window)
                    );
                    // … and at most halving.
                    prop_assert!(d >= p.div_ceil(2));
                }
                if d > p {
                    last_increase = Some(at);
                }
                // 5b. At most one change per minChangeIntervalSeconds (waking from zero and
                // going to zero excepted).
                if d != p && d > 0 && p > 0 {
                    prop_assert!(
                        last_change.is_none_or(|t| at.saturating_duration_since(t) >= cfg.min_change),
                        "{p} -> {d}"
                    );
                }
                if d != p && p > 0 {
                    last_change = Some(at);
                }
            }
            prev = Some(d);
        }
        // 6. Missing data never moves the decision: with no new poll it is what it was.
        // (`decide` reads the state only; this holds by construction, checked on the state.)
        let before = s.desired();
        prop_assert_eq!(before, s.clone().desired());
        // 7. Same observations ⇒ same decision (every replica agrees).
        let mut again = DrainState::default();
        for &(sample, _) in &polls {
            observe(&mut again, cfg, b, sample);
        }
        prop_assert_eq!(again.desired(), s.desired());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn safety_invariants_hold_with_counters(
            steps in prop::collection::vec(step(), 1..120),
            min in 0u32..3, max in 1u32..200, step in prop::option::of(1u32..10),
            min_change in prop_oneof![Just(0u64), 1u64..200],
        ) {
            let max = max.max(min);
            let cfg = DrainConfig { min_change: Duration::from_secs(min_change), ..DrainConfig::default() };
            check(&steps, &cfg, &bounds(min, max, step), true, false)?;
        }

        #[test]
        fn safety_invariants_hold_with_backlog_only(
            steps in prop::collection::vec(step(), 1..120),
            min in 0u32..3, max in 1u32..200, step in prop::option::of(1u32..10),
            throughput in prop::option::of(0.5f64..100.0),
        ) {
            let max = max.max(min);
            let cfg = DrainConfig { throughput, ..DrainConfig::default() };
            check(&steps, &cfg, &bounds(min, max, step), false, false)?;
        }

        /// queue+R: the scale target's ready replicas read at every poll (any count, unrelated
        /// to what ebb asked for: pods crash, start late, a person scales by hand).
        #[test]
        fn safety_invariants_hold_with_ready_replicas_read(
            steps in prop::collection::vec(step(), 1..120),
            min in 0u32..3, max in 1u32..200, step in prop::option::of(1u32..10),
            throughput in prop::option::of(0.5f64..100.0),
            counters in any::<bool>(),
        ) {
            let max = max.max(min);
            let cfg = DrainConfig { throughput, ..DrainConfig::default() };
            check(&steps, &cfg, &bounds(min, max, step), counters, true)?;
        }
    }

    /// 8. A counter going backwards drops the rate history: backlog-only for the long window.
    #[test]
    fn counter_reset_falls_back_to_backlog_only() {
        let cfg = DrainConfig::default();
        let b = bounds(0, 100, None);
        let t0 = Instant::now();
        let mut s = DrainState::default();
        for (i, e) in [(0u64, 10_000.0), (5, 10_500.0), (10, 11_000.0), (15, 200.0), (20, 700.0)] {
            let sample = Sample {
                at: t0 + Duration::from_secs(i),
                backlog: 10.0,
                arrivals: Some(e),
                processed: Some(e - 10.0),
                arrival_rate: None,
                ready: None,
            };
            observe(&mut s, &cfg, &b, sample);
            assert_eq!(s.estimates.full, i < 15, "at {i} s");
        }
        let later = Sample {
            at: t0 + Duration::from_secs(80),
            backlog: 10.0,
            arrivals: Some(1200.0),
            processed: Some(1190.0),
            arrival_rate: None,
            ready: None,
        };
        observe(&mut s, &cfg, &b, later);
        assert!(s.estimates.full, "rates trusted again after the long window");
    }

    /// A downstream bottleneck: the consumers process 50 msg/s whatever their count while 200
    /// arrive. Once a scale-up's replicas have been ready for a window without raising the
    /// processing rate, ebb adds no replicas for the long window.
    #[test]
    fn an_ineffective_scale_up_freezes_scale_ups() {
        // A learned throughput: p / R̂ falls as replicas are added, which alone would ask for
        // ever more of them.
        let cfg = DrainConfig::default();
        let b = bounds(0, 1_000, None);
        let t0 = Instant::now();
        let mut s = DrainState::default();
        let (mut first, mut prev, mut held) = (None::<(Instant, Instant)>, 0, false);
        for i in 0..120u64 {
            let (e, c) = (1_000.0 * i as f64, 250.0 * i as f64);
            let at = t0 + Duration::from_secs(i * 5);
            observe(
                &mut s,
                &cfg,
                &b,
                Sample { at, backlog: e - c, arrivals: Some(e), processed: Some(c), arrival_rate: None, ready: None },
            );
            let (d, r) = s.desired().unwrap();
            if first.is_none() {
                first = s.frozen_until.map(|until| (at, until));
            }
            if let Some((_, until)) = first
                && at < until
            {
                assert!(d <= prev, "scaled up during the freeze at poll {i}: {prev} -> {d}");
                assert!(prev < 1_000, "ran to maxReplicaCount before the freeze");
                held |= r == Reason::Ineffective;
            }
            prev = d;
        }
        let (at, _) = first.expect("the freeze never came");
        assert!(at <= t0 + Duration::from_secs(150), "frozen only at {:?}", at - t0);
        assert!(held, "the freeze never held back a recommendation");
    }

    /// Full mode sizes for the arrival rate: 100 msg/s at 10 msg/s a replica and ρ 0.9 → 12.
    #[test]
    fn sizes_for_the_arrival_rate() {
        let cfg = DrainConfig { throughput: Some(10.0), ..DrainConfig::default() };
        let b = bounds(0, 100_000, None);
        let t0 = Instant::now();
        let mut s = DrainState::default();
        for i in 0..40u64 {
            let e = 100.0 * (i * 5) as f64;
            observe(
                &mut s,
                &cfg,
                &b,
                Sample {
                    at: t0 + Duration::from_secs(i * 5),
                    backlog: 0.0,
                    arrivals: Some(e),
                    processed: Some(e),
                    arrival_rate: None,
                    ready: None,
                },
            );
        }
        assert_eq!(s.desired().map(|(d, _)| d), Some(12), "{:?}", s.estimates);
        // A stalled consumer (C still, work waiting, growing) is held after `stallPolls` polls:
        // more replicas would not help.
        let mut at = t0 + Duration::from_secs(200);
        let mut held = None;
        for k in 0..8u32 {
            at += Duration::from_secs(5);
            let backlog = 1_000.0 * f64::from(k + 1).powi(2);
            let e = 19_500.0 + backlog;
            observe(
                &mut s,
                &cfg,
                &b,
                Sample { at, backlog, arrivals: Some(e), processed: Some(19_500.0), arrival_rate: None, ready: None },
            );
            let (d, r) = s.desired().unwrap();
            if k >= 3 {
                assert_eq!(r, Reason::Stalled, "poll {k}");
                assert_eq!(*held.get_or_insert(d), d, "held at poll {k}");
            }
        }
    }

    /// Every reason [`observe`] can return, each from a scripted history (issue 18: the
    /// decision log shows them). The `match` fails to compile when a reason is added.
    #[test]
    fn every_reason_has_a_case() {
        let t0 = Instant::now();
        let queue = |backlogs: &[(u64, f64)], cfg: &DrainConfig, b: &Bounds| {
            let mut s = DrainState::default();
            let mut seen = Vec::new();
            for &(at, backlog) in backlogs {
                let at = t0 + Duration::from_secs(at);
                observe(
                    &mut s,
                    cfg,
                    b,
                    Sample { at, backlog, arrivals: None, processed: None, arrival_rate: None, ready: None },
                );
                seen.push(s.desired().unwrap().1);
            }
            seen
        };
        let known = DrainConfig { throughput: Some(10.0), ..DrainConfig::default() };
        let idle_then_busy: Vec<(u64, f64)> = (0..20).map(|i| (i * 5, if i < 15 { 0.0 } else { 500.0 })).collect();
        let busy_then_empty: Vec<(u64, f64)> = (0..80).map(|i| (i * 5, if i < 2 { 2_000.0 } else { 0.0 })).collect();
        let steady: Vec<(u64, f64)> = (0..10).map(|i| (i * 5, 100.0)).collect();
        let climbing: Vec<(u64, f64)> =
            [100.0, 1_000.0, 10_000.0, 100_000.0].iter().enumerate().map(|(i, b)| (i as u64 * 5, *b)).collect();
        let spaced = DrainConfig { min_change: Duration::from_secs(120), ..known.clone() };
        let mut stalled = DrainState::default();
        let mut stalled_seen = Vec::new();
        for k in 0..8u64 {
            let backlog = 1_000.0 * ((k + 1) * (k + 1)) as f64;
            let at = t0 + Duration::from_secs(k * 5);
            let sample = Sample {
                at,
                backlog,
                arrivals: Some(19_500.0 + backlog),
                processed: Some(19_500.0),
                arrival_rate: None,
                ready: None,
            };
            observe(&mut stalled, &DrainConfig::default(), &bounds(0, 1_000, None), sample);
            stalled_seen.push(stalled.desired().unwrap().1);
        }
        let cases: Vec<(Reason, Vec<Reason>)> = vec![
            (Reason::Idle, queue(&idle_then_busy, &known, &bounds(0, 100, None))),
            (Reason::ScaleUp, queue(&idle_then_busy, &known, &bounds(0, 100, None))),
            (Reason::Hold, queue(&steady, &known, &bounds(0, 100, None))),
            (Reason::ScaleDown, queue(&busy_then_empty, &known, &bounds(1, 100, None))),
            (Reason::Spacing, queue(&climbing, &spaced, &bounds(0, 100_000, None))),
            (Reason::Stalled, stalled_seen),
        ];
        for (want, seen) in &cases {
            assert!(seen.contains(want), "{want:?} not in {seen:?}");
        }
        // `Ineffective` has its own example: an_ineffective_scale_up_freezes_scale_ups.
        for r in [
            Reason::ScaleUp,
            Reason::ScaleDown,
            Reason::Hold,
            Reason::Stalled,
            Reason::Ineffective,
            Reason::Spacing,
            Reason::Idle,
        ] {
            match r {
                Reason::ScaleUp
                | Reason::ScaleDown
                | Reason::Hold
                | Reason::Stalled
                | Reason::Spacing
                | Reason::Idle => {
                    assert!(cases.iter().any(|(w, _)| *w == r), "{r:?} has no case")
                }
                Reason::Ineffective => {}
            }
        }
    }
}
