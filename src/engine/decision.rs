//! Decisions: pure functions of a trigger's observation history and an injected `now`.
//!
//! [`observe`] folds one evaluation (taken at the time of the poll that produced it) into the
//! trigger's [`DecisionState`]; [`decide`] reads the state at any `now`. Neither reads a
//! clock, so tests step time by hand, and every server replica that saw the same polls
//! reaches the same answer (KEDA round-robins its calls across replicas).
//!
//! Rules, for `outputMode: replicas`:
//! - recommendation per observation: `ceil(metric / target)` when active, clamped to
//!   `[max(minReplicaCount, 1), maxReplicaCount]` (HPA never goes below 1 on its own);
//! - scale-down stabilization: the highest recommendation within the window wins, so scale-up
//!   is immediate and scale-down waits (HPA's `behavior.scaleDown.stabilizationWindowSeconds`);
//! - `maxScaleUpStep`: at most that many replicas more than the decision at the previous
//!   observation, and only toward the latest recommendation (below it, the previous decision
//!   holds until the window's maximum falls under it); the first observation has no base and
//!   is not limited: a restarted replica must not scale a busy workload down;
//! - zero only when `minReplicaCount` is 0, the latest observation is inactive, and no
//!   activity was seen for `cooldownPeriod` (KEDA: `lastActiveTime + cooldownPeriod < now`).
//!   With no activity ever seen, the time is counted from this replica's first observation,
//!   so a replica that just started never decides zero early.
//!
//! With `policy: drain` the count comes from [`super::drain`] instead (the rules above are
//! `policy: backlog`, the default).
//!
//! For `outputMode: metric` the metric and activity are KEDA's own (HPA and KEDA do the rest);
//! the desired count is still computed, for `/metrics` and `ebb check`.

use std::time::Duration;

use ebb_scalers::Evaluation;
use tokio::time::Instant;

use super::backlog::Window;
use super::drain::{self, Bounds, DrainState, Sample};
use super::policy::{OutputMode, Policy, Rule};

pub use ebb_scalers::Counters;

/// What a trigger answers right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// The value GetMetrics reports: the metric (`metric` mode) or, against a target of 1, the
    /// desired replicas (`policy: drain` at `maxReplicaCount`: past it, so the HPA's tolerance
    /// cannot hold the count below it).
    pub metric: f64,
    /// What IsActive reports.
    pub active: bool,
    /// ebb's desired replica count.
    pub desired_replicas: u32,
    /// The rule that bound `desired_replicas`.
    pub why: Why,
}

/// The rule that bound a desired count. The decision functions return it with the count, so
/// the server, its decision log and `ebb simulate` give the same reason for the same history.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Why {
    /// The count is the latest recommendation, `ceil(metric / target)` within the bounds.
    Recommendation,
    /// Raised by `maxScaleUpStep` at most, toward a higher recommendation.
    StepLimit { step: u32, recommendation: u32 },
    /// Kept above the latest recommendation by the scale-down stabilization window, for
    /// `remaining_secs` more (when its highest recommendation leaves the window).
    ScaleDownWindow { remaining_secs: f32, recommendation: u32 },
    /// Inactive, kept at the floor until `cooldownPeriod` passes without activity.
    Cooldown { remaining_secs: f32 },
    /// Zero: no activity for `cooldownPeriod`.
    CooledToZero,
    /// The recommendation is above `maxReplicaCount`.
    AtMaxReplicas { wanted: u32 },
    /// `policy: drain`'s rule.
    Drain { reason: super::drain::Reason },
}

impl Why {
    /// A short label for tables, logs and `/metrics` (bounded set).
    pub fn label(&self) -> &'static str {
        match self {
            Why::Recommendation => "recommendation",
            Why::StepLimit { .. } => "scale-up step limit",
            Why::ScaleDownWindow { .. } => "held by scale-down window",
            Why::Cooldown { .. } => "cooldown",
            Why::CooledToZero => "cooled down to zero",
            Why::AtMaxReplicas { .. } => "at maxReplicaCount",
            Why::Drain { reason } => reason.label(),
        }
    }
}

/// One poll as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    pub at: Instant,
    pub eval: Evaluation,
    pub counters: Counters,
    /// The scale target's ready replicas, when ebb reads them (queue+R).
    pub ready: Option<u32>,
}

/// What every rule shares of a trigger's history: when it was first seen, last active, and
/// its latest evaluation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Activity {
    first_seen: Option<Instant>,
    last_active: Option<Instant>,
    latest: Option<(Instant, Evaluation)>,
}

/// A replica rule (`policy`): folds each observation in, then answers the desired count with
/// the rule that bound it, and the value to report to the HPA for it.
pub trait ReplicaRule {
    fn observe(&mut self, policy: &Policy, activity: &Activity, obs: &Observation);
    fn desired(&self, policy: &Policy, activity: &Activity, now: Instant) -> (u32, Why);
    /// What GetMetrics reports in `replicas` mode for `desired`.
    fn request(&self, desired: u32) -> u32 {
        desired
    }
}

/// A trigger's observation history, reduced to what the rules need.
#[derive(Debug, Clone, Default)]
pub struct DecisionState {
    activity: Activity,
    /// `policy: backlog`'s history (kept for every policy: `ebb check` shows its count).
    backlog: Backlog,
    /// `policy: drain`'s history.
    drain: DrainState,
}

impl DecisionState {
    pub fn new() -> Self {
        Self::default()
    }

    /// The evaluation of the latest observation, if any.
    pub fn latest(&self) -> Option<Evaluation> {
        self.activity.latest.map(|(_, e)| e)
    }

    /// `policy: drain`'s estimates at the latest observation.
    pub fn drain_estimates(&self) -> drain::Estimates {
        self.drain.estimates
    }

    /// The rule that bound `policy: drain`'s latest decision.
    pub fn drain_reason(&self) -> Option<drain::Reason> {
        self.drain.desired().map(|(_, r)| r)
    }

    fn rule(&self, policy: &Policy) -> &dyn ReplicaRule {
        match policy.rule {
            Rule::Backlog => &self.backlog,
            Rule::Drain(_) => &self.drain,
        }
    }
}

/// Folds an evaluation taken at `at` into the state.
pub fn observe(state: &mut DecisionState, policy: &Policy, eval: Evaluation, at: Instant) {
    observe_with(state, policy, eval, Counters::default(), None, at);
}

/// [`observe`] with the counters the poll carried and the scale target's ready replicas when
/// they are read (used by `policy: drain`).
pub fn observe_with(
    state: &mut DecisionState,
    policy: &Policy,
    eval: Evaluation,
    counters: Counters,
    ready: Option<u32>,
    at: Instant,
) {
    let obs = Observation { at, eval, counters, ready };
    let a = &mut state.activity;
    a.first_seen.get_or_insert(at);
    if eval.active {
        a.last_active = Some(at);
    }
    a.latest = Some((at, eval));
    if let Rule::Drain(_) = policy.rule {
        state.drain.observe(policy, &state.activity, &obs);
    }
    state.backlog.observe(policy, &state.activity, &obs);
}

/// The decision at `now`; `None` before the first observation.
pub fn decide(state: &DecisionState, policy: &Policy, now: Instant) -> Option<Decision> {
    let (_, eval) = state.activity.latest?;
    let rule = state.rule(policy);
    let (desired, why) = rule.desired(policy, &state.activity, now);
    Some(match policy.output_mode {
        OutputMode::Metric => {
            Decision { metric: sanitize(eval.metric), active: eval.active, desired_replicas: desired, why }
        }
        OutputMode::Replicas => Decision {
            metric: f64::from(rule.request(desired)),
            active: desired > 0,
            desired_replicas: desired,
            why,
        },
    })
}

/// The count the latest observation alone asks for, before the rule's guards (window, step,
/// cooldown; for `policy: drain`, its sizing before hysteresis and guards).
pub fn recommended(state: &DecisionState, policy: &Policy) -> Option<u32> {
    let (_, latest) = state.activity.latest?;
    Some(match policy.rule {
        Rule::Drain(_) => state.drain.estimates.recommendation,
        Rule::Backlog => recommendation(policy, latest),
    })
}

impl ReplicaRule for DrainState {
    fn observe(&mut self, policy: &Policy, _: &Activity, obs: &Observation) {
        let Rule::Drain(cfg) = &policy.rule else { return };
        let c = obs.counters;
        let bounds = Bounds {
            min: policy.min_replicas,
            max: c.max_consumers.map_or(policy.max_replicas, |n| policy.max_replicas.min(n.max(1))),
            max_step: policy.max_scale_up_step,
            cooldown: policy.cooldown,
            target: policy.target,
            stabilization: policy.scale_down_stabilization,
            // Past maxReplicaCount the HPA clamps; past a partition count consumers would idle.
            may_ask_past_max: c.max_consumers.is_none_or(|n| n > policy.max_replicas),
        };
        // With both counters the backlog is their difference: the scaler's metric may be capped
        // (Kafka: partitions × lagThreshold) where the policy needs the work itself.
        let backlog = match (c.arrivals, c.processed) {
            (Some(e), Some(p)) => (e - p).max(0.0),
            _ => sanitize(obs.eval.metric),
        };
        let sample = Sample {
            at: obs.at,
            backlog,
            arrivals: c.arrivals,
            processed: c.processed,
            arrival_rate: c.arrival_rate,
            ready: obs.ready,
        };
        drain::observe(self, cfg, &bounds, sample);
    }

    fn desired(&self, _: &Policy, _: &Activity, _: Instant) -> (u32, Why) {
        // Decided at the observation: missing data never moves it (held until polls resume).
        let (d, reason) = self.desired().unwrap_or((0, drain::Reason::Hold));
        (d, Why::Drain { reason })
    }

    fn request(&self, desired: u32) -> u32 {
        if desired == self.desired().map_or(0, |(d, _)| d) { self.reported() } else { desired }
    }
}

/// `policy: backlog`: KEDA's loop, run by ebb.
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    recommendations: Window,
    /// The decision at the previous observation, the base for `maxScaleUpStep`.
    previous_desired: Option<u32>,
    last_desired: Option<u32>,
}

impl ReplicaRule for Backlog {
    fn observe(&mut self, policy: &Policy, activity: &Activity, obs: &Observation) {
        self.recommendations.push(obs.at, recommendation(policy, obs.eval), policy.scale_down_stabilization);
        self.previous_desired = self.last_desired;
        self.last_desired = Some(self.desired(policy, activity, obs.at).0);
    }

    fn desired(&self, policy: &Policy, activity: &Activity, now: Instant) -> (u32, Why) {
        let Some((_, latest)) = activity.latest else { return (0, Why::Recommendation) };
        let mut cooldown_left = None;
        if policy.min_replicas == 0 && !latest.active {
            let quiet_since = activity.last_active.or(activity.first_seen).unwrap_or(now);
            let quiet = now.saturating_duration_since(quiet_since);
            if quiet >= policy.cooldown {
                return (0, Why::CooledToZero);
            }
            cooldown_left = Some(policy.cooldown - quiet);
        }
        let window_start = now.checked_sub(policy.scale_down_stabilization);
        let latest_rec = recommendation(policy, latest);
        // The latest recommendation always counts, whatever the window.
        let stabilized = self.recommendations.max_since(window_start).unwrap_or(latest_rec);
        let (desired, stepped) = self.step(policy, latest_rec, stabilized);
        let desired = desired.min(policy.max_replicas);
        let why = if let Some(step) = stepped {
            Why::StepLimit { step, recommendation: latest_rec }
        } else if desired > latest_rec {
            // Held until the oldest recommendation above the latest leaves the window.
            let until =
                self.recommendations.first_above(window_start, latest_rec).map(|t| t + policy.scale_down_stabilization);
            let remaining = until.map_or(Duration::ZERO, |u| u.saturating_duration_since(now));
            Why::ScaleDownWindow { remaining_secs: remaining.as_secs_f32(), recommendation: latest_rec }
        } else if let Some(left) = cooldown_left {
            Why::Cooldown { remaining_secs: left.as_secs_f32() }
        } else if wanted(policy, latest) > policy.max_replicas {
            Why::AtMaxReplicas { wanted: wanted(policy, latest) }
        } else {
            Why::Recommendation
        };
        (desired, why)
    }
}

impl Backlog {
    /// `maxScaleUpStep`, as the HPA does: step up only toward the latest recommendation;
    /// otherwise hold, and come down to the window's maximum. Stepping toward an older, higher
    /// recommendation would keep scaling up after the backlog is gone.
    fn step(&self, policy: &Policy, latest_rec: u32, stabilized: u32) -> (u32, Option<u32>) {
        let (Some(step), Some(prev)) = (policy.max_scale_up_step, self.previous_desired) else {
            return (stabilized, None);
        };
        if prev < latest_rec {
            let d = latest_rec.min(prev.saturating_add(step));
            (d, (d < latest_rec).then_some(step))
        } else {
            (prev.min(stabilized), None)
        }
    }
}

/// `ceil(metric / target)` for an active observation, within `[max(min, 1), max]`.
fn recommendation(policy: &Policy, eval: Evaluation) -> u32 {
    let floor = policy.min_replicas.max(1).min(policy.max_replicas);
    if !eval.active {
        return floor;
    }
    let ratio = (sanitize(eval.metric) / policy.target).ceil();
    // The float-to-int cast saturates, so huge metrics cannot wrap.
    (ratio as u32).clamp(floor, policy.max_replicas)
}

/// `ceil(metric / target)` for an active observation, before the bounds.
fn wanted(policy: &Policy, eval: Evaluation) -> u32 {
    if eval.active { (sanitize(eval.metric) / policy.target).ceil() as u32 } else { 0 }
}

/// NaN and negative metrics reach the HPA as 0 (KEDA ≥ 2.20 clamps them the same way).
fn sanitize(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 { v } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn replicas_policy() -> Policy {
        Policy {
            output_mode: OutputMode::Replicas,
            target: 10.0,
            min_replicas: 0,
            max_replicas: 100,
            max_scale_up_step: None,
            scale_down_stabilization: Duration::ZERO,
            cooldown: secs(60),
            rule: Rule::Backlog,
        }
    }

    fn ev(metric: f64, activation: f64) -> Evaluation {
        Evaluation { metric, active: metric > activation }
    }

    /// Feeds `(seconds since t0, metric)` observations with activation threshold 0.
    fn run(policy: &Policy, t0: Instant, obs: &[(u64, f64)]) -> DecisionState {
        let mut s = DecisionState::new();
        for &(t, m) in obs {
            observe(&mut s, policy, ev(m, 0.0), t0 + secs(t));
        }
        s
    }

    #[test]
    fn no_decision_before_first_observation() {
        assert_eq!(decide(&DecisionState::new(), &replicas_policy(), Instant::now()), None);
    }

    #[test]
    fn activation_is_strictly_greater_than() {
        // KEDA's scaler docs: activation is strictly greater than (`value > activationX`).
        let p = Policy::metric(10.0);
        let t0 = Instant::now();
        for (value, activation, want) in [(5.0, 5.0, false), (5.1, 5.0, true), (0.0, 0.0, false), (-1.0, -2.0, true)] {
            let mut s = DecisionState::new();
            observe(&mut s, &p, ev(value, activation), t0);
            assert_eq!(decide(&s, &p, t0).unwrap().active, want, "{value} > {activation}");
        }
    }

    #[test]
    fn metric_mode_reports_keda_metric_and_activity() {
        // KEDA's external-scaler docs: in metric mode the HPA computes ceil(metric / target) itself.
        let p = Policy::metric(10.0);
        let t0 = Instant::now();
        let s = run(&p, t0, &[(0, 42.0)]);
        let d = decide(&s, &p, t0).unwrap();
        assert_eq!((d.metric, d.active, d.desired_replicas), (42.0, true, 5));
        // Activation has priority: value 40 under activation 50 is inactive (keda.md §4.4).
        let mut s = DecisionState::new();
        observe(&mut s, &p, ev(40.0, 50.0), t0);
        assert!(!decide(&s, &p, t0).unwrap().active);
    }

    #[test]
    fn negative_and_nan_metrics_report_zero() {
        // KEDA ≥ 2.20 quantityFromFloat64: NaN/Inf/negative → 0.
        let p = Policy::metric(10.0);
        let t0 = Instant::now();
        for m in [-5.0, f64::NAN, f64::INFINITY] {
            let mut s = DecisionState::new();
            observe(&mut s, &p, Evaluation { metric: m, active: false }, t0);
            assert_eq!(decide(&s, &p, t0).unwrap().metric, 0.0, "{m}");
        }
    }

    #[test]
    fn replicas_is_ceil_of_metric_over_target_clamped() {
        let mut p = replicas_policy();
        p.min_replicas = 2;
        p.max_replicas = 7;
        let t0 = Instant::now();
        for (metric, want) in [(1.0, 2), (25.0, 3), (30.0, 3), (30.5, 4), (1e30, 7)] {
            let s = run(&p, t0, &[(0, metric)]);
            let d = decide(&s, &p, t0).unwrap();
            assert_eq!(d.desired_replicas, want, "{metric}");
            assert_eq!(d.metric, f64::from(want));
            assert!(d.active);
        }
    }

    #[test]
    fn max_scale_up_step_limits_growth_per_observation() {
        let mut p = replicas_policy();
        p.max_scale_up_step = Some(3);
        let t0 = Instant::now();
        let mut s = DecisionState::new();
        let mut seen = vec![];
        for (t, m) in [(0, 10.0), (1, 200.0), (2, 200.0), (3, 200.0), (4, 200.0)] {
            observe(&mut s, &p, ev(m, 0.0), t0 + secs(t));
            seen.push(decide(&s, &p, t0 + secs(t)).unwrap().desired_replicas);
        }
        assert_eq!(seen, vec![1, 4, 7, 10, 13]);
    }

    #[test]
    fn max_scale_up_step_stops_when_the_backlog_is_gone() {
        // The window still holds 20 from the spike, but the latest recommendation is 1: hold
        // at the stepped-up count instead of stepping on toward 20 (found by `ebb simulate`).
        let mut p = replicas_policy();
        p.max_scale_up_step = Some(3);
        p.scale_down_stabilization = secs(300);
        let t0 = Instant::now();
        let mut s = DecisionState::new();
        let mut seen = vec![];
        for (t, m) in [(0, 10.0), (5, 200.0), (10, 200.0), (15, 0.5), (20, 0.5), (25, 0.5)] {
            observe(&mut s, &p, ev(m, 0.0), t0 + secs(t));
            seen.push(decide(&s, &p, t0 + secs(t)).unwrap().desired_replicas);
        }
        assert_eq!(seen, vec![1, 4, 7, 7, 7, 7]);
        // Past the window, down to the latest recommendation.
        observe(&mut s, &p, ev(0.5, 0.0), t0 + secs(400));
        assert_eq!(decide(&s, &p, t0 + secs(400)).unwrap().desired_replicas, 1);
    }

    #[test]
    fn first_observation_is_not_step_limited() {
        // A replica that just started has no previous decision: limiting it would scale a busy
        // workload down on every ebb restart, so the first decision is the plain formula.
        let mut p = replicas_policy();
        p.max_scale_up_step = Some(3);
        let t0 = Instant::now();
        let s = run(&p, t0, &[(0, 200.0)]);
        assert_eq!(decide(&s, &p, t0).unwrap().desired_replicas, 20);
    }

    #[test]
    fn scale_down_waits_for_the_stabilization_window() {
        let mut p = replicas_policy();
        p.scale_down_stabilization = secs(30);
        let t0 = Instant::now();
        let s = run(&p, t0, &[(0, 80.0), (10, 20.0)]);
        assert_eq!(decide(&s, &p, t0 + secs(10)).unwrap().desired_replicas, 8, "held inside window");
        assert_eq!(decide(&s, &p, t0 + secs(29)).unwrap().desired_replicas, 8);
        assert_eq!(decide(&s, &p, t0 + secs(31)).unwrap().desired_replicas, 2, "window passed");
        // Scale-up is immediate even inside the window.
        let s = run(&p, t0, &[(0, 20.0), (1, 90.0)]);
        assert_eq!(decide(&s, &p, t0 + secs(1)).unwrap().desired_replicas, 9);
    }

    #[test]
    fn monotonic_queue_keeps_window_maximum() {
        let mut p = replicas_policy();
        p.scale_down_stabilization = secs(10);
        let t0 = Instant::now();
        let s = run(&p, t0, &[(0, 50.0), (3, 70.0), (6, 30.0), (9, 40.0)]);
        assert_eq!(decide(&s, &p, t0 + secs(9)).unwrap().desired_replicas, 7);
        assert_eq!(decide(&s, &p, t0 + secs(14)).unwrap().desired_replicas, 4, "70 left the window at 13 s");
        assert!(s.backlog.recommendations.len() <= 2);
    }

    #[test]
    fn zero_only_after_cooldown_since_last_activity() {
        // KEDA scaleToZeroOrIdle: lastActiveTime + cooldownPeriod < now (keda.md §4.3).
        let p = replicas_policy();
        let t0 = Instant::now();
        let s = run(&p, t0, &[(0, 15.0), (5, 0.0)]);
        let at = |n: u64| decide(&s, &p, t0 + secs(n)).unwrap();
        assert_eq!((at(5).desired_replicas, at(5).active), (1, true), "inactive but cooling down");
        assert_eq!(at(59).desired_replicas, 1);
        let d = at(60);
        assert_eq!((d.desired_replicas, d.active, d.metric), (0, false, 0.0));
    }

    #[test]
    fn activity_resets_cooldown_and_wakes_from_zero() {
        let p = replicas_policy();
        let t0 = Instant::now();
        let s = run(&p, t0, &[(0, 15.0), (70, 0.0), (80, 5.0)]);
        assert_eq!(decide(&s, &p, t0 + secs(80)).unwrap().desired_replicas, 1);
        let s = run(&p, t0, &[(0, 15.0), (70, 0.0), (100, 0.0)]);
        assert_eq!(decide(&s, &p, t0 + secs(100)).unwrap().desired_replicas, 0);
    }

    #[test]
    fn a_replica_with_no_history_never_decides_zero_early() {
        // A fresh replica sees an idle source: it counts the cooldown from its own first
        // observation, so it answers 1 (active) until cooldownPeriod has passed.
        let p = replicas_policy();
        let t0 = Instant::now();
        let s = run(&p, t0, &[(0, 0.0), (30, 0.0)]);
        assert_eq!(decide(&s, &p, t0 + secs(30)).unwrap().desired_replicas, 1);
        assert!(decide(&s, &p, t0 + secs(59)).unwrap().active);
        assert!(!decide(&s, &p, t0 + secs(60)).unwrap().active);
    }

    #[test]
    fn min_replicas_above_zero_never_goes_to_zero() {
        let mut p = replicas_policy();
        p.min_replicas = 2;
        let t0 = Instant::now();
        let s = run(&p, t0, &[(0, 0.0)]);
        let d = decide(&s, &p, t0 + secs(3600)).unwrap();
        assert_eq!((d.desired_replicas, d.active), (2, true));
    }

    #[test]
    fn zero_cooldown_scales_to_zero_at_once() {
        let mut p = replicas_policy();
        p.cooldown = Duration::ZERO;
        let t0 = Instant::now();
        let s = run(&p, t0, &[(0, 30.0), (1, 0.0)]);
        assert_eq!(decide(&s, &p, t0 + secs(1)).unwrap().desired_replicas, 0);
    }

    /// Every rule `decide` can name for `policy: backlog`, each from a table case (the drain
    /// rule's reasons have theirs in `drain::tests::every_reason_has_a_case`).
    #[test]
    fn every_why_has_a_case() {
        let t0 = Instant::now();
        let p = replicas_policy();
        type Case = (&'static str, Policy, &'static [(u64, f64)], u64, u32, Why);
        let cases: Vec<Case> = vec![
            ("35 at target 10", p.clone(), &[(0, 35.0)], 0, 4, Why::Recommendation),
            (
                "step of 2 from 1 toward 10",
                Policy { max_scale_up_step: Some(2), ..p.clone() },
                &[(0, 10.0), (5, 100.0)],
                5,
                3,
                Why::StepLimit { step: 2, recommendation: 10 },
            ),
            (
                "held by a 60 s window",
                Policy { scale_down_stabilization: secs(60), ..p.clone() },
                &[(0, 100.0), (10, 10.0)],
                10,
                10,
                Why::ScaleDownWindow { remaining_secs: 50.0, recommendation: 1 },
            ),
            (
                "inactive, 50 s of cooldown left",
                p.clone(),
                &[(0, 50.0), (10, 0.0)],
                10,
                1,
                Why::Cooldown { remaining_secs: 50.0 },
            ),
            ("inactive for the cooldown", p.clone(), &[(0, 50.0), (10, 0.0)], 70, 0, Why::CooledToZero),
            (
                "1000 at target 10, max 5",
                Policy { max_replicas: 5, ..p.clone() },
                &[(0, 1_000.0)],
                0,
                5,
                Why::AtMaxReplicas { wanted: 100 },
            ),
        ];
        for (name, policy, obs, now, want_n, want) in &cases {
            let s = run(policy, t0, obs);
            let d = decide(&s, policy, t0 + secs(*now)).unwrap();
            assert_eq!((d.desired_replicas, d.why), (*want_n, *want), "{name}");
        }
        // Exhaustive: a new rule fails to compile here until it has a case above.
        for (_, _, _, _, _, why) in &cases {
            match why {
                Why::Recommendation
                | Why::StepLimit { .. }
                | Why::ScaleDownWindow { .. }
                | Why::Cooldown { .. }
                | Why::CooledToZero
                | Why::AtMaxReplicas { .. }
                | Why::Drain { .. } => {}
            }
        }
        let seen: std::collections::BTreeSet<_> = cases.iter().map(|c| c.5.label()).collect();
        assert_eq!(seen.len(), 6, "{seen:?}");
    }
}
