//! Decisions (`engine::decision::{observe, decide}`) over arbitrary observation sequences and
//! policies, checking the rules documented in `src/engine/decision.rs`.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use ebb::engine::decision::{DecisionState, decide, observe};
use ebb::engine::policy::{OutputMode, Policy};
use ebb_scalers::Evaluation;
use libfuzzer_sys::fuzz_target;
use tokio::time::Instant;

#[derive(Arbitrary, Debug)]
enum Step {
    /// An observation `advance_ms` after the previous one.
    Observe { advance_ms: u32, metric: f64, active: bool },
    /// A decision `ms` after (or before, `back`) the latest observation.
    Decide { ms: u32, back: bool },
}

#[derive(Arbitrary, Debug)]
struct Input {
    replicas: bool,
    target: f64,
    min: u32,
    max: u32,
    step: Option<u32>,
    stabilization_ms: u64,
    cooldown_ms: u64,
    steps: Vec<Step>,
}

const MAX_WINDOW_MS: u64 = 1_000_000_000_000; // policy::parse caps windows below 1e9 s

fn sanitize(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 { v } else { 0.0 }
}

fuzz_target!(|input: Input| {
    // What `policy::parse` guarantees, and `Scaler::target` ("always > 0").
    if !(input.target > 0.0) {
        return;
    }
    let max_replicas = input.max.max(1);
    let policy = Policy {
        output_mode: if input.replicas { OutputMode::Replicas } else { OutputMode::Metric },
        target: input.target,
        min_replicas: input.min.min(max_replicas),
        max_replicas,
        max_scale_up_step: input.step.map(|s| s.max(1)),
        scale_down_stabilization: Duration::from_millis(input.stabilization_ms % MAX_WINDOW_MS),
        cooldown: Duration::from_millis(input.cooldown_ms % MAX_WINDOW_MS),
        rule: ebb::engine::policy::Rule::Backlog,
    };
    let floor = policy.min_replicas.max(1).min(policy.max_replicas);
    let recommendation = |e: Evaluation| {
        if e.active {
            ((sanitize(e.metric) / policy.target).ceil() as u32).clamp(floor, policy.max_replicas)
        } else {
            floor
        }
    };

    let base = Instant::now() + Duration::from_secs(10_000_000);
    let mut now = base;
    let mut state = DecisionState::new();
    assert!(decide(&state, &policy, now).is_none(), "no decision before the first observation");

    let mut latest: Option<Evaluation> = None;
    let mut first_seen: Option<Instant> = None;
    let mut last_active: Option<Instant> = None;
    // The decision at the previous observation (the base of `maxScaleUpStep`), and at this one.
    let mut previous: Option<u32> = None;
    let mut current: Option<u32> = None;

    for step in input.steps.into_iter().take(512) {
        let (at, after_observe) = match step {
            Step::Observe { advance_ms, metric, active } => {
                now += Duration::from_millis(u64::from(advance_ms));
                let eval = Evaluation { metric, active };
                observe(&mut state, &policy, eval, now);
                latest = Some(eval);
                first_seen.get_or_insert(now);
                if active {
                    last_active = Some(now);
                }
                (now, true)
            }
            Step::Decide { ms, back } => {
                let d = Duration::from_millis(u64::from(ms));
                (if back { now - d } else { now + d }, false)
            }
        };
        let Some(d) = decide(&state, &policy, at) else {
            assert!(latest.is_none());
            continue;
        };
        let eval = latest.expect("a decision only after an observation");
        let seen = state.latest().expect("latest after an observation");
        assert!(seen.active == eval.active && seen.metric.to_bits() == eval.metric.to_bits());

        assert!(d.desired_replicas <= policy.max_replicas, "{d:?} {policy:?}");
        match policy.output_mode {
            OutputMode::Replicas => {
                assert_eq!(d.metric, f64::from(d.desired_replicas));
                assert_eq!(d.active, d.desired_replicas > 0);
            }
            OutputMode::Metric => {
                assert!(d.metric.is_finite() && d.metric >= 0.0, "{d:?}");
                assert_eq!(d.metric, sanitize(eval.metric));
                assert_eq!(d.active, eval.active);
            }
        }
        if d.desired_replicas == 0 {
            // Zero only when minReplicaCount is 0, the latest observation is inactive and no
            // activity was seen for cooldownPeriod (counted from the first observation when
            // none ever was).
            assert_eq!(policy.min_replicas, 0, "{d:?}");
            assert!(!eval.active);
            let quiet_since = last_active.or(first_seen).unwrap();
            assert!(at.saturating_duration_since(quiet_since) >= policy.cooldown);
        } else {
            // Recommendations are clamped to [max(min, 1), max].
            assert!(d.desired_replicas >= floor, "{d:?} floor {floor}");
        }
        if after_observe {
            previous = current;
            current = Some(d.desired_replicas);
            if (policy.max_scale_up_step.is_none() || previous.is_none()) && eval.active {
                // Scale-up is immediate: at the time of an active observation, at least its
                // own recommendation.
                assert!(d.desired_replicas >= recommendation(eval), "{d:?} {eval:?} {policy:?}");
            }
        }
        // maxScaleUpStep: at most that many more than the decision at the previous observation
        // (at any `now` until the next observation); the first observation is not limited.
        if let (Some(step), Some(prev)) = (policy.max_scale_up_step, previous) {
            assert!(d.desired_replicas <= prev.saturating_add(step), "{d:?} prev {prev} step {step}");
        }
    }
});
