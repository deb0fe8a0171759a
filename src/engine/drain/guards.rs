//! The guards of `policy: drain`: what keeps a recommendation from becoming the count (the
//! scale-down guards, the ineffective-scale-up freeze), and the value reported to the HPA.


use tokio::time::Instant;

use super::estimate::{rate, ready, ready_range, secs};
use super::{BEHIND, Bounds, DrainConfig, DrainState, View, WAITING};

/// A scale-up to check once its replicas are ready ([`super::Reason::Ineffective`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct UpCheck {
    /// The first increase not yet checked.
    at: Instant,
    /// Ready replicas and processing rate before it, and the most asked for since.
    from: u32,
    before: f64,
    to: u32,
}

/// Scaling effectiveness (Flink; kedacore/keda#7092): once the replicas of the latest scale-up
/// have been ready for a window, and work still waited all along, the processing rate should
/// have risen by at least half of what they were expected to add. If it did not, something
/// downstream is the limit: no more scale-ups for the long window. (Kept to a pause on purpose:
/// a freeze renewed while the rate stays flat starved the consumers whenever pods started
/// sooner or later than `startupSeconds`.)
pub(super) fn check_effect(state: &mut DrainState, cfg: &DrainConfig, v: &View) {
    let Some(check) = state.up_check else { return };
    let window = BEHIND + v.commit_interval;
    if v.at.saturating_duration_since(check.at) < cfg.startup + window {
        return;
    }
    state.up_check = None;
    let behind_now = v.processing.is_some_and(|p| v.backlog > p.max(0.0) * secs(WAITING + v.commit_interval));
    let Some(after) = rate(&state.ring, BEHIND, |x| x.processed) else { return };
    // Only what should have been ready over the whole window counts.
    let ready_then = if state.ring.back().is_some_and(|s| s.ready.is_some()) {
        ready_range(&state.ring, &state.asked, cfg.startup, window).map_or(v.r, |(lo, _)| lo)
    } else {
        ready(&state.asked, cfg.startup, v.at.checked_sub(window).unwrap_or(v.at))
    };
    let expected = f64::from(ready_then.min(check.to).saturating_sub(check.from)) * v.mu;
    if behind_now && v.counters_ok && after - check.before < 0.5 * expected {
        state.frozen_until = Some(v.at + cfg.long);
    }
}

/// Remembers an increase for [`check_effect`]: only a log's processed counter can show
/// whether the new replicas helped.
pub(super) fn note_increase(state: &mut DrainState, v: &View, desired: u32) {
    let current = state.desired;
    if current == 0 || !v.counters_ok || state.ring.back().is_none_or(|s| s.processed.is_none()) {
        return;
    }
    let before = rate(&state.ring, BEHIND, |x| x.processed).unwrap_or(0.0);
    // The first unchecked increase is checked at its own time; later ones after it.
    let check = state.up_check.get_or_insert(UpCheck { at: v.at, from: v.r, before, to: desired });
    check.to = check.to.max(desired);
}

/// May the count go from `current` down to `down`? Only past a 10 % hysteresis, not in a burst
/// (`λ_short ≥ 2·R̂·μ̂`, Knative's panic mode), not while catching up (the backlog is more than
/// the ready replicas clear in `drainSeconds`, FLINK-31318), and not within `downWindowSeconds`
/// of an increase (anti-flap) unless that increase was a surge whose backlog has drained.
pub(super) fn may_scale_down(state: &DrainState, cfg: &DrainConfig, v: &View, down: u32, current: u32) -> bool {
    let hysteresis = (f64::from(current) * 0.1).max(1.0);
    let capacity = f64::from(v.r) * v.mu;
    let burst = v.l_short.is_some_and(|l| v.r > 0 && l >= 2.0 * capacity);
    let catching_up = v.backlog > capacity * secs(cfg.drain);
    let drained = state.surge && !catching_up && v.backlog <= capacity * secs(WAITING + v.commit_interval);
    let recent_up =
        !drained && state.last_increase.is_some_and(|t| v.at.saturating_duration_since(t) < cfg.down_window);
    f64::from(down) <= f64::from(current) - hysteresis && !burst && !catching_up && !recent_up
}

/// The HPA's tolerance (kube-controller-manager's default): it ignores a metric within 10 % of
/// its current count.
const TOLERANCE: f64 = 0.1;

/// The value to report to the HPA (target 1) for `desired`. The HPA ignores a change within
/// its tolerance: at 92 replicas, asking for a `maxReplicaCount` of 100 does nothing for as long
/// as the overload lasts. So at `maxReplicaCount` ebb reports the smallest value the HPA acts on
/// from any count below it, which the HPA clamps at its maximum. Below the maximum a gap within
/// the tolerance corrects itself (the backlog grows, and the drain term with it); a partition
/// count is never asked past (KEDA's Kafka scaler caps the same).
pub(super) fn request(desired: u32, bounds: &Bounds) -> u32 {
    if desired == 0 || desired < bounds.max || !bounds.may_ask_past_max {
        return desired;
    }
    (f64::from(desired) * (1.0 + TOLERANCE)).floor() as u32 + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn bounds(max: u32, may_ask_past_max: bool) -> Bounds {
        Bounds {
            min: 0,
            max,
            max_step: None,
            cooldown: Duration::from_secs(300),
            target: 50.0,
            stabilization: Duration::from_secs(300),
            may_ask_past_max,
        }
    }

    /// kube-controller-manager: `|ratio − 1| ≤ 0.1` keeps the count.
    #[test]
    fn at_max_replica_count_the_request_clears_the_hpa_tolerance() {
        // 100 from 92 is 8.7 %: the HPA ignores it; 111 from any count ≤ 100 it does not, and
        // it clamps at its maximum (100).
        assert_eq!(request(100, &bounds(100, true)), 111);
        // Below the maximum, as it is.
        assert_eq!(request(92, &bounds(100, true)), 92);
        // A partition count is a hard cap: never asked past.
        assert_eq!(request(16, &bounds(16, false)), 16);
        assert_eq!(request(0, &bounds(16, true)), 0);
    }
}
