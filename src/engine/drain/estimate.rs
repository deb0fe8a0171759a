//! What the polls say, apart from what to do about it: windowed rates, whether work waited,
//! the ready replicas `R̂`, and the per-replica throughput `μ̂`. Pure functions of the
//! observation ring (and of [`Throughput`]'s own history), so replicas that saw the same
//! polls estimate the same.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::Sample;

/// The HPA's sync period (kube-controller-manager's default): a count ebb pushes reaches the
/// Deployment at the next sync.
pub(super) const HPA_SYNC: Duration = Duration::from_secs(15);

pub(super) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// `ΔX/Δt` between the newest sample and the oldest one within `window` (at least one poll
/// back), using `get` for X.
pub(super) fn rate(ring: &VecDeque<Sample>, window: Duration, get: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
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
    Some((get(newest)? - get(oldest)?) / dt).filter(|r| r.is_finite())
}

/// Did every sample within `window` have more than `above` waiting (the consumers could not
/// keep up)?
pub(super) fn saturated(ring: &VecDeque<Sample>, window: Duration, above: f64) -> bool {
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

/// The lowest backlog within `window` (ending at the newest sample).
pub(super) fn lowest(ring: &VecDeque<Sample>, window: Duration) -> Option<f64> {
    let start = ring.back()?.at.checked_sub(window);
    ring.iter().filter(|s| start.is_none_or(|w| s.at >= w)).map(|s| s.backlog).reduce(f64::min)
}

/// Did the backlog rise at every poll within `window` (three polls at least), by more than
/// `noise` in all? (Burrow's WARN rule.)
pub(super) fn falling_behind(ring: &VecDeque<Sample>, window: Duration, noise: f64) -> bool {
    let Some(newest) = ring.back() else { return false };
    let start = newest.at.checked_sub(window);
    let within: Vec<f64> = ring.iter().filter(|s| start.is_none_or(|w| s.at >= w)).map(|s| s.backlog).collect();
    within.len() >= 3
        && within.windows(2).all(|w| w[1] > w[0])
        && within.last().zip(within.first()).is_some_and(|(l, f)| l - f > noise)
}

/// `R̂`: the smallest count asked for over the last `startup` (including the one in force then).
pub(super) fn ready(asked: &VecDeque<(Instant, u32)>, startup: Duration, now: Instant) -> u32 {
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
pub(super) fn ready_range(
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

/// How long the best throughput seen is remembered: a slowdown or a bottleneck that ended
/// must leave no trace, and once the consumers are over-provisioned they never saturate again
/// to say so.
const BEST_MEMORY: Duration = Duration::from_secs(6 * 3600);
/// After a saturated sample below the best remembered one (a slowdown, a bottleneck), the
/// probe stays near it for this long, then its ceiling doubles every this long up to the best.
/// Past the best it never lifts on its own: each probe past the true capacity cost waits that
/// the saturation checks are too coarse to stop early (swept: 900 s then doubling every 1200 s
/// raised the steady log's p95 from 1 s to 9 s).
const RECOVER_AFTER: Duration = Duration::from_secs(300);
const RECOVER_DOUBLING: Duration = Duration::from_secs(300);
/// `μ̂`, learned from the processing counter.
#[derive(Debug, Clone, Default)]
pub(super) struct Throughput {
    mu: Option<f64>,
    /// The throughput measured the last time the consumers were saturated, and when.
    saturated: Option<(Instant, f64)>,
    /// The highest throughput seen within [`BEST_MEMORY`], saturated or as a lower bound
    /// (refreshed by samples within 10 % of it), and when.
    best: Option<(Instant, f64)>,
}

/// One poll's evidence about the throughput, per replica.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Evidence {
    /// The consumers were saturated: what they did is their capacity.
    pub saturated: Option<f64>,
    /// What they did, per the most replicas that may have been ready: a lower bound.
    pub lower_bound: Option<f64>,
    /// The count held through the window (and its pods were ready): the lower bound is not
    /// biased by pods still starting, and may start an estimate.
    pub held: bool,
    /// A lower bound above this (the guess it proves low) may start an estimate, held or not.
    pub guess: f64,
}

impl Throughput {
    /// The estimate, once the processing counter has shown anything.
    pub fn get(&self) -> Option<f64> {
        self.mu
    }

    /// Measured at saturation at least once.
    pub fn confirmed(&self) -> bool {
        self.saturated.is_some()
    }

    /// Folds one poll's evidence in.
    pub fn update(&mut self, ev: Evidence, now: Instant) {
        if self.best.is_some_and(|(t, _)| now.saturating_duration_since(t) > BEST_MEMORY) {
            self.best = None;
        }
        // What the consumers were seen to do at best, saturated or not (a lower bound is one
        // too): the recovery target once a slowdown ends.
        if let Some(seen) = ev.saturated.into_iter().chain(ev.lower_bound).reduce(f64::max) {
            self.best = match self.best {
                Some((_, b)) if seen < 0.9 * b => self.best,
                // Near the best again: the capacity is still that, remember it longer.
                Some((_, b)) => Some((now, b.max(seen))),
                None => Some((now, seen)),
            };
        }
        self.mu = match (ev.saturated, ev.lower_bound, self.mu) {
            // Saturated: the processing rate is the capacity; move towards it, ±20 % a step.
            (Some(sample), _, mu) => {
                self.saturated = Some((now, sample));
                Some(mu.map_or(sample, |m| (0.7 * m + 0.3 * sample).clamp(m * 0.8, m * 1.2)))
            }
            // Keeping up: the processing rate only bounds the capacity from below, so probe
            // upwards (5 % a poll) within a ceiling: twice what a replica was seen to do, or
            // near what it did when last saturated.
            (None, Some(sample), Some(m)) => Some(m.max(sample).max((m * 1.05).min(self.ceiling(sample, now)))),
            (None, Some(sample), None) if ev.held || sample > ev.guess => Some(sample),
            (None, _, mu) => mu,
        };
    }

    /// Where the upward probe stops: near the last saturated sample, a ceiling that lifts with
    /// time towards the best one remembered, so an estimate learned while a slowdown or a
    /// bottleneck lasted recovers once it ends.
    fn ceiling(&self, sample: f64, now: Instant) -> f64 {
        let Some((t, last)) = self.saturated else { return 2.0 * sample };
        let near = last.max(sample) * 1.02;
        let since = now.saturating_duration_since(t).saturating_sub(RECOVER_AFTER);
        let best = self.best.map_or(0.0, |(_, b)| b * 1.02);
        near.max((near * 2f64.powf(secs(since) / secs(RECOVER_DOUBLING))).min(best))
    }
}
