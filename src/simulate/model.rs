//! The discrete-time model: a FIFO queue, a Deployment whose pods start after a delay, and the
//! controllers that size it (KEDA's default loop + HPA, or ebb + KEDA + HPA).
//!
//! Time is whole seconds from 0. Each second: the second's arrivals join the queue; the
//! controllers whose timer falls on this second act on the backlog; the pods that are ready
//! serve the queue (FIFO) at `throughput` each. Nothing reads a clock: ebb's decision code gets
//! `base + t` from one base `Instant`.

use std::collections::VecDeque;
use std::time::Duration;

use ebb_scalers::Evaluation;
use tokio::time::Instant;

use super::trace::Trace;
use crate::engine::decision::{self, Counters, DecisionState};
use crate::engine::policy::Policy;

/// What a poll of the source can show a controller (`--source-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// A log (Kafka, Event Hubs): the lag, cumulative arrivals (log-end offsets) and the
    /// committed offsets, which move only at each commit (`--commit-interval`).
    Log,
    /// A queue (Service Bus, Storage Queue): the backlog only.
    Queue,
}

/// What the source shows at one second: nothing else of the model leaks to a controller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    /// The backlog a scaler reads: the queue's length, or for a log, log-end minus committed.
    pub backlog: u64,
    /// Cumulative arrivals, for a log.
    pub arrivals: Option<u64>,
    /// Cumulative committed (processed as of the last commit), for a log.
    pub committed: Option<u64>,
    /// The topic's partition count, for a log with `--partitions`.
    pub partitions: Option<u32>,
}

/// The consumer being scaled.
#[derive(Debug, Clone, PartialEq)]
pub struct Consumer {
    /// Messages one ready replica processes per second.
    pub throughput: f64,
    /// Seconds from a replica being requested to it processing messages.
    pub startup_delay: u64,
    /// `maxReplicaCount`.
    pub max_replicas: u32,
    /// `(start, seconds)`: the consumers process at half speed (a slow database).
    pub slowdown: Option<(u64, u64)>,
    /// `(start, seconds)`: a shared bottleneck caps the consumers' total throughput at half
    /// the trace's mean arrival rate over that time, whatever the replica count.
    pub bottleneck: Option<(u64, u64)>,
    /// A log's partition count: consumers beyond it sit idle.
    pub partitions: Option<u32>,
}

impl Consumer {
    /// Messages one replica processes per second at `now` (half during a slowdown).
    pub fn throughput_at(&self, now: u64) -> f64 {
        if within(self.slowdown, now) { 0.5 * self.throughput } else { self.throughput }
    }

    /// What `ready` replicas process at `now`: at most one consumer per partition works, and a
    /// bottleneck caps the total at `bottleneck_cap`.
    pub fn capacity(&self, now: u64, ready: u32, bottleneck_cap: Option<f64>) -> f64 {
        let working = self.partitions.map_or(ready, |p| ready.min(p));
        let c = f64::from(working) * self.throughput_at(now);
        if within(self.bottleneck, now) { c.min(bottleneck_cap.unwrap_or(f64::INFINITY)) } else { c }
    }

    /// The bottleneck's total throughput: half the trace's mean arrival rate over its window.
    pub fn bottleneck_cap(&self, trace: &Trace) -> Option<f64> {
        self.bottleneck.map(|(start, n)| {
            let seen = trace.arrivals.iter().skip(start as usize).take(n as usize);
            0.5 * seen.sum::<u64>() as f64 / n.max(1) as f64
        })
    }

    /// The work-conserving floor in replica-seconds: each second's arrivals ÷ the per-replica
    /// throughput then (a bottleneck is not counted: more replicas do not help), plus one
    /// replica's start-up when there is any work; over `window` only the work, no start-up.
    pub fn work_floor(&self, trace: &Trace, window: Option<(u64, u64)>) -> u64 {
        let (start, len) = window.unwrap_or((0, trace.arrivals.len() as u64));
        let seconds = trace.arrivals.iter().enumerate().skip(start as usize).take(len as usize);
        let work: f64 = seconds.map(|(t, &a)| a as f64 / self.throughput_at(t as u64)).sum();
        let startup = if window.is_none() && trace.total() > 0 { self.startup_delay } else { 0 };
        work.ceil() as u64 + startup
    }
}

/// The lag a Kafka scaler reports (KEDA's and ebb's alike): without `allowIdleConsumers` it is
/// capped at `partitions × threshold`, so the HPA never asks more consumers than partitions.
pub fn kafka_metric(lag: f64, partitions: Option<u32>, threshold: f64) -> f64 {
    match partitions {
        Some(p) if (lag / threshold).floor() > f64::from(p) => f64::from(p) * threshold,
        _ => lag,
    }
}

/// What goes wrong during a run, to see that no policy runs away or starves.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// `(start, seconds)`: the source cannot be read; controllers see nothing and hold.
    pub outage: Option<(u64, u64)>,
    /// ebb restarts at this second: its history is gone (a fresh replica).
    pub restart_at: Option<u64>,
}

fn within(window: Option<(u64, u64)>, now: u64) -> bool {
    window.is_some_and(|(start, len)| now >= start && now < start + len)
}

/// The Deployment: its `spec.replicas` and the pods behind it.
#[derive(Debug, Default)]
pub struct Deployment {
    pub replicas: u32,
    /// When each pod is (or was) ready, in creation order; with one start-up delay for all, the
    /// not-yet-ready pods are always at the back.
    pods: VecDeque<u64>,
    startup_delay: u64,
    pub scale_events: u32,
}

impl Deployment {
    fn new(startup_delay: u64) -> Self {
        Self { startup_delay, ..Self::default() }
    }

    /// Sets `spec.replicas`. New pods are ready after the start-up delay; removal is immediate
    /// and takes the newest pods first, which are the not-yet-ready ones (the ReplicaSet
    /// controller deletes unready pods first).
    pub fn scale(&mut self, now: u64, replicas: u32) {
        if replicas == self.replicas {
            return;
        }
        self.scale_events += 1;
        while (self.pods.len() as u32) < replicas {
            self.pods.push_back(now + self.startup_delay);
        }
        self.pods.truncate(replicas as usize);
        self.replicas = replicas;
    }

    pub fn ready(&self, now: u64) -> u32 {
        self.pods.partition_point(|&ready_at| ready_at <= now) as u32
    }
}

/// The HPA controller with autoscaling/v2's defaults, for an External metric with an
/// `AverageValue` target (what KEDA creates).
#[derive(Debug, Clone)]
pub struct Hpa {
    /// `--horizontal-pod-autoscaler-sync-period`.
    pub sync_period: u64,
    /// When in the period this HPA syncs. Not 0, so the first sync after KEDA's activation is
    /// not at the same second (the real phase is arbitrary).
    pub sync_offset: u64,
    /// `--horizontal-pod-autoscaler-tolerance`.
    pub tolerance: f64,
    /// `behavior.scaleDown.stabilizationWindowSeconds`.
    pub scale_down_stabilization: u64,
    /// Default `behavior.scaleUp`: the larger of +4 pods and +100 % per 15 s.
    pub scale_up_pods: u32,
    pub scale_up_percent: u32,
    pub scale_up_period: u64,
    /// KEDA sets the HPA's minimum to `max(minReplicaCount, 1)`.
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Unstabilized recommendations `(time, replicas)`.
    recommendations: VecDeque<(u64, u32)>,
    /// Replicas this HPA added `(time, count)`, for the scale-up rate limit.
    scale_ups: VecDeque<(u64, u32)>,
}

impl Hpa {
    pub fn new(max_replicas: u32, scale_down_stabilization: u64) -> Self {
        Self {
            sync_period: 15,
            sync_offset: 7,
            tolerance: 0.1,
            scale_down_stabilization,
            scale_up_pods: 4,
            scale_up_percent: 100,
            scale_up_period: 15,
            min_replicas: 1,
            max_replicas,
            recommendations: VecDeque::new(),
            scale_ups: VecDeque::new(),
        }
    }

    fn due(&self, now: u64) -> bool {
        now % self.sync_period == self.sync_offset % self.sync_period
    }

    /// One sync at `now` with `current` (≥ 1) replicas and the metric's total `metric`;
    /// returns the new replica count. Follows kube-controller-manager's horizontal.go:
    /// tolerance, then stabilization, then the rate limits and bounds.
    pub fn sync(&mut self, now: u64, metric: f64, target: f64, current: u32) -> u32 {
        // GetExternalPerPodMetricReplicas: no change within the tolerance.
        let ratio = metric / (target * f64::from(current));
        let proposal =
            if (1.0 - ratio).abs() > self.tolerance { (metric / target).ceil().max(0.0) as u32 } else { current };

        // stabilizeRecommendationWithBehaviors; the scale-up window is 0, so only the
        // scale-down window (recommendations strictly after `now - window`) counts.
        while self.recommendations.front().is_some_and(|&(t, _)| t + self.scale_down_stabilization <= now) {
            self.recommendations.pop_front();
        }
        let down_limit = self.recommendations.iter().map(|&(_, r)| r).fold(proposal, u32::max);
        self.recommendations.push_back((now, proposal));
        let stabilized = current.max(proposal).min(down_limit);

        // convertDesiredReplicasWithBehaviorRate. The default scale-down policy (100 % per
        // 15 s) never binds, so only the minimum applies going down.
        while self.scale_ups.front().is_some_and(|&(t, _)| t + self.scale_up_period <= now) {
            self.scale_ups.pop_front();
        }
        let desired = if stabilized > current {
            let added: u32 = self.scale_ups.iter().map(|&(_, n)| n).sum();
            let start = current.saturating_sub(added);
            let by_pods = start + self.scale_up_pods;
            let by_percent = (f64::from(start) * (1.0 + f64::from(self.scale_up_percent) / 100.0)).ceil() as u32;
            stabilized.min(by_pods.max(by_percent).max(current)).min(self.max_replicas)
        } else if stabilized < current {
            stabilized.max(self.min_replicas)
        } else {
            stabilized
        };
        if desired > current {
            self.scale_ups.push_back((now, desired - current));
        }
        desired
    }
}

/// KEDA's scale loop for one ScaledObject with `minReplicaCount: 0`: activation from zero and
/// the return to zero; the HPA does everything in between.
#[derive(Debug, Clone)]
pub struct KedaLoop {
    /// The ScaledObject's `cooldownPeriod`.
    pub cooldown: u64,
    last_active: Option<u64>,
}

impl KedaLoop {
    pub fn new(cooldown: u64) -> Self {
        Self { cooldown, last_active: None }
    }

    /// KEDA got `active` (from its poll or a push) at `now`.
    pub fn handle(&mut self, now: u64, active: bool, dep: &mut Deployment) {
        if active {
            self.last_active = Some(now);
            if dep.replicas == 0 {
                dep.scale(now, 1);
            }
        } else if dep.replicas > 0 && self.last_active.is_none_or(|t| t + self.cooldown < now) {
            // scaleToZeroOrIdle: lastActiveTime + cooldownPeriod < now, strictly.
            dep.scale(now, 0);
        }
    }
}

/// Something that sizes the Deployment, called once per simulated second with what the
/// source shows then.
pub trait Controller {
    fn name(&self) -> &'static str;
    /// Whether [`run`] shows this controller the true queue rather than what the source shows:
    /// only the oracle may.
    fn foresight(&self) -> bool {
        false
    }
    fn tick(&mut self, now: u64, seen: &Seen, dep: &mut Deployment);
    /// A restart of the controller's process (ebb: its history is gone).
    fn restart(&mut self) {}
    /// How often each rule bound the decision at the controller's polls (ebb's [`decision::Why`]
    /// labels, the same the server's decision log shows); empty for the others.
    fn reasons(&self) -> Vec<(String, u32)> {
        Vec::new()
    }
}

/// KEDA's default: the built-in scaler polled every `pollingInterval` for activity, the HPA
/// reading the backlog from the source at each sync.
#[derive(Debug, Clone)]
pub struct KedaDefault {
    pub name: &'static str,
    pub polling_interval: u64,
    pub target: f64,
    pub activation_threshold: f64,
    pub keda: KedaLoop,
    pub hpa: Hpa,
}

impl KedaDefault {
    pub fn new(
        polling_interval: u64,
        target: f64,
        activation_threshold: f64,
        cooldown: u64,
        max_replicas: u32,
    ) -> Self {
        Self {
            name: "keda-default",
            polling_interval,
            target,
            activation_threshold,
            keda: KedaLoop::new(cooldown),
            hpa: Hpa::new(max_replicas, 300),
        }
    }

    /// The same KEDA loop behind another HPA `behavior` (`keda-tuned`: ebb's).
    pub fn with_hpa(self, name: &'static str, hpa: Hpa) -> Self {
        Self { name, hpa, ..self }
    }
}

impl Controller for KedaDefault {
    fn name(&self) -> &'static str {
        self.name
    }

    fn tick(&mut self, now: u64, seen: &Seen, dep: &mut Deployment) {
        let backlog = seen.backlog;
        // Activation reads the whole lag; only the HPA's metric is capped.
        if now.is_multiple_of(self.polling_interval) {
            self.keda.handle(now, backlog as f64 > self.activation_threshold, dep);
        }
        if dep.replicas >= 1 && self.hpa.due(now) {
            let metric = kafka_metric(backlog as f64, seen.partitions, self.target);
            let n = self.hpa.sync(now, metric, self.target, dep.replicas);
            dep.scale(now, n);
        }
    }
}

/// ebb in `outputMode: replicas`, configured as docs/replicas.md recommends: ebb polls the source
/// every `polling_interval` and folds each poll into its [`DecisionState`] with the server's
/// own [`decision::observe`]; an activity change is pushed to KEDA right after the poll
/// (`external-push`); KEDA still polls IsActive on its own interval; the HPA syncs every 15 s
/// and reads ebb's desired count ([`decision::decide`]) against a target of 1, with its
/// tolerance and scale-up limits but `scaleDown.stabilizationWindowSeconds: 0`; the
/// ScaledObject's `cooldownPeriod` is 0 (ebb already waited its own).
#[derive(Debug, Clone)]
pub struct Ebb {
    pub name: &'static str,
    pub polling_interval: u64,
    pub keda_polling_interval: u64,
    pub activation_threshold: f64,
    pub policy: Policy,
    pub keda: KedaLoop,
    pub hpa: Hpa,
    /// Reads the Deployment's ready replicas at each poll (queue+R), as `serve --kube` does.
    pub read_ready: bool,
    state: DecisionState,
    base: Instant,
    pushed: Option<bool>,
    reasons: std::collections::BTreeMap<&'static str, u32>,
}

impl Ebb {
    /// `hpa` is the HPA the ScaledObject of docs/replicas.md sets up.
    pub fn new(
        name: &'static str,
        polling_interval: u64,
        keda_polling_interval: u64,
        activation_threshold: f64,
        policy: Policy,
        hpa: Hpa,
    ) -> Self {
        // A history of idle polls long enough that ebb has already decided zero at second 0,
        // as KEDA's loop has: both policies start from a settled idle state, not from an ebb
        // restart (which would hold one replica for the cooldown).
        let warmup = policy.cooldown.max(policy.scale_down_stabilization) + Duration::from_secs(2);
        let start = Instant::now();
        let mut state = DecisionState::new();
        let idle = Evaluation { metric: 0.0, active: false };
        decision::observe(&mut state, &policy, idle, start);
        decision::observe(&mut state, &policy, idle, start + warmup - Duration::from_secs(1));
        Self {
            name,
            polling_interval,
            keda_polling_interval,
            activation_threshold,
            policy,
            keda: KedaLoop::new(0),
            hpa,
            read_ready: false,
            state,
            base: start + warmup,
            pushed: None,
            reasons: Default::default(),
        }
    }

    fn at(&self, now: u64) -> Instant {
        self.base + Duration::from_secs(now)
    }

    /// A fresh replica: no history (it then holds one replica until it has seen
    /// `cooldownPeriod` without work, and `policy: drain` re-learns its rates).
    fn forget(&mut self) {
        self.state = DecisionState::new();
        self.pushed = None;
    }

    fn decide(&self, now: u64) -> decision::Decision {
        // `new` observed twice, so there is always a decision; idle is the safe reading anyway.
        decision::decide(&self.state, &self.policy, self.at(now)).unwrap_or(decision::Decision {
            metric: 0.0,
            active: false,
            desired_replicas: 0,
            why: decision::Why::CooledToZero,
        })
    }
}

impl Controller for Ebb {
    fn name(&self) -> &'static str {
        self.name
    }

    fn restart(&mut self) {
        self.forget();
    }

    fn reasons(&self) -> Vec<(String, u32)> {
        self.reasons.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn tick(&mut self, now: u64, seen: &Seen, dep: &mut Deployment) {
        if now.is_multiple_of(self.polling_interval) {
            let backlog = seen.backlog as f64;
            // ebb's Kafka scaler caps its metric as KEDA's does and reports the partition count.
            let metric = kafka_metric(backlog, seen.partitions, self.policy.target);
            let eval = Evaluation { metric, active: backlog > self.activation_threshold };
            let at = self.at(now);
            let counters = Counters {
                arrivals: seen.arrivals.map(|n| n as f64),
                processed: seen.committed.map(|n| n as f64),
                max_consumers: seen.partitions,
                arrival_rate: None,
            };
            let ready = self.read_ready.then(|| dep.ready(now));
            decision::observe_with(&mut self.state, &self.policy, eval, counters, ready, at);
            let d = self.decide(now);
            *self.reasons.entry(d.why.label()).or_default() += 1;
            let active = d.active;
            if self.pushed != Some(active) {
                self.pushed = Some(active);
                self.keda.handle(now, active, dep);
            }
        }
        if now.is_multiple_of(self.keda_polling_interval) {
            let active = self.decide(now).active;
            self.keda.handle(now, active, dep);
        }
        if dep.replicas >= 1 && self.hpa.due(now) {
            let n = self.hpa.sync(now, self.decide(now).metric, 1.0, dep.replicas);
            dep.scale(now, n);
        }
    }
}

/// Seconds over which the oracle plans to drain the work already waiting.
pub const ORACLE_DRAIN_S: f64 = 10.0;

/// The oracle: perfect foresight of the arrivals and of the true queue (the model's own, not a
/// log's lag, which also holds processed but uncommitted messages). A replica asked for now
/// works from one start-up delay ahead, so at each second it asks for
/// `ceil((λ + max(0, Q − a) / 10 s) / μ)` replicas: `λ` the trace's mean rate over a minute
/// around `now + start-up`, `Q` the true queue now, which already holds this second's arrivals
/// `a`, so only the work carried from earlier seconds is drained on top of `λ` (each arrival
/// counts once), and `μ` the per-replica throughput then. A bottleneck caps the useful total
/// at its throughput; never more than the partitions or `maxReplicaCount`.
#[derive(Debug, Clone)]
pub struct Oracle {
    rate: Vec<f64>,
    arrivals: Vec<u64>,
    consumer: Consumer,
    bottleneck_cap: Option<f64>,
}

impl Oracle {
    pub fn new(trace: &Trace, consumer: &Consumer) -> Self {
        let a = &trace.arrivals;
        let mut prefix = vec![0u64; a.len() + 1];
        for (i, &n) in a.iter().enumerate() {
            prefix[i + 1] = prefix[i] + n;
        }
        let rate = (0..a.len())
            .map(|t| {
                let (lo, hi) = (t.saturating_sub(30), (t + 30).min(a.len()));
                (prefix[hi] - prefix[lo]) as f64 / (hi - lo).max(1) as f64
            })
            .collect();
        Self { rate, arrivals: a.clone(), consumer: consumer.clone(), bottleneck_cap: consumer.bottleneck_cap(trace) }
    }

    /// Replicas to ask for at `now` with the true queue `queue`.
    fn want(&self, now: u64, queue: u64) -> u32 {
        let ahead = now + self.consumer.startup_delay;
        let rate = self.rate.get(ahead as usize).or(self.rate.last()).copied().unwrap_or(0.0);
        let carried = queue.saturating_sub(self.arrivals.get(now as usize).copied().unwrap_or(0));
        let mut work = rate + carried as f64 / ORACLE_DRAIN_S;
        if within(self.consumer.bottleneck, ahead) {
            work = work.min(self.bottleneck_cap.unwrap_or(f64::INFINITY));
        }
        let n = (work / self.consumer.throughput_at(ahead)).ceil() as u32;
        let max = self.consumer.partitions.map_or(self.consumer.max_replicas, |p| p.min(self.consumer.max_replicas));
        n.min(max)
    }
}

impl Controller for Oracle {
    fn name(&self) -> &'static str {
        "oracle"
    }

    fn foresight(&self) -> bool {
        true
    }

    fn tick(&mut self, now: u64, seen: &Seen, dep: &mut Deployment) {
        dep.scale(now, self.want(now, seen.backlog));
    }
}

/// FIFO backlog kept as `(arrival second, count)` batches; waits go to a histogram by second.
#[derive(Debug, Default)]
struct Queue {
    batches: VecDeque<(u64, u64)>,
    len: u64,
    /// Unused fractional capacity, carried while messages wait (so 2.5 msg/s serves 5 in 2 s).
    carry: f64,
    /// `waits[w]`: messages that waited `w` seconds.
    waits: Vec<u64>,
}

impl Queue {
    fn push(&mut self, now: u64, n: u64) {
        if n > 0 {
            self.batches.push_back((now, n));
            self.len += n;
        }
    }

    fn record(&mut self, wait: u64, n: u64) {
        let w = wait as usize;
        if self.waits.len() <= w {
            self.waits.resize(w + 1, 0);
        }
        self.waits[w] += n;
    }

    /// Serves up to `capacity` messages in second `now`; a message's wait is from its arrival
    /// second to the second it starts being processed. Returns how many were served.
    fn serve(&mut self, now: u64, capacity: f64) -> u64 {
        let before = self.len;
        let cap = capacity + self.carry;
        let mut budget = cap.floor() as u64;
        while budget > 0 {
            let Some(front) = self.batches.front_mut() else { break };
            let n = front.1.min(budget);
            let arrived = front.0;
            front.1 -= n;
            if front.1 == 0 {
                self.batches.pop_front();
            }
            budget -= n;
            self.len -= n;
            self.record(now - arrived, n);
        }
        self.carry = if self.len > 0 { cap - cap.floor() } else { 0.0 };
        before - self.len
    }
}

/// What one policy did over one trace.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Outcome {
    pub policy: &'static str,
    /// Sum over seconds of `spec.replicas`: a starting pod costs as much as a ready one.
    pub replica_seconds: u64,
    pub wait_p50_s: u64,
    pub wait_p95_s: u64,
    pub wait_max_s: u64,
    pub peak_backlog: u64,
    pub scale_events: u32,
    /// Times work arrived while no replica was ready.
    pub cold_starts: u32,
    /// From such an arrival to the first ready replica; `None` without cold starts.
    pub first_replica_mean_s: Option<f64>,
    pub first_replica_max_s: Option<u64>,
    /// Messages still queued at the end; they count in the waits with their wait so far.
    pub unserved_at_end: u64,
    /// How often each rule bound ebb's decision at its polls (empty for the other policies).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<(String, u32)>,
    /// `replica_seconds` over the `keda-default`, `keda-tuned` and `floor` rows', set by the
    /// report.
    pub x_keda_default: Option<f64>,
    pub x_keda_tuned: Option<f64>,
    pub x_floor: Option<f64>,
    /// Replica-seconds within `--report-window`, set by the report.
    pub window_replica_seconds: Option<u64>,
    #[serde(skip)]
    pub backlog: Vec<u64>,
    #[serde(skip)]
    pub replicas: Vec<u32>,
}

/// How the source shows the queue (`--source-kind`, `--commit-interval`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Source {
    pub kind: SourceKind,
    /// Seconds between consumer commits (a log's committed offsets move only then).
    pub commit_interval: u64,
    /// A log's partition count, which its scalers read.
    pub partitions: Option<u32>,
}

impl Source {
    /// What a scaler of this source reads; `queue` is the true queue's length.
    fn seen(&self, queue: u64, arrived: u64, committed: u64) -> Seen {
        match self.kind {
            SourceKind::Queue => Seen { backlog: queue, arrivals: None, committed: None, partitions: None },
            SourceKind::Log => Seen {
                backlog: arrived - committed,
                arrivals: Some(arrived),
                committed: Some(committed),
                partitions: self.partitions,
            },
        }
    }
}

/// Runs `controller` over `trace`, starting idle at zero replicas.
pub fn run(
    trace: &Trace,
    consumer: &Consumer,
    source: &Source,
    faults: &Faults,
    controller: &mut dyn Controller,
) -> Outcome {
    let mut dep = Deployment::new(consumer.startup_delay);
    let mut queue = Queue::default();
    let len = trace.arrivals.len();
    let (mut backlog, mut replicas) = (Vec::with_capacity(len), Vec::with_capacity(len));
    let (mut replica_seconds, mut peak) = (0u64, 0u64);
    let mut cold_since: Option<u64> = None;
    let mut cold: Vec<u64> = Vec::new();
    let (mut arrived, mut processed, mut committed) = (0u64, 0u64, 0u64);
    let bottleneck_cap = consumer.bottleneck_cap(trace);
    for (t, &arrivals) in trace.arrivals.iter().enumerate() {
        let now = t as u64;
        queue.push(now, arrivals);
        arrived += arrivals;
        if now.is_multiple_of(source.commit_interval.max(1)) {
            committed = processed;
        }
        // The oracle sees the true queue: every processed message as if committed.
        let seen = if controller.foresight() {
            Seen {
                backlog: queue.len,
                arrivals: Some(arrived),
                committed: Some(processed),
                partitions: source.partitions,
            }
        } else {
            source.seen(queue.len, arrived, committed)
        };
        if faults.restart_at == Some(now) {
            controller.restart();
        }
        // During an outage nobody reads the source: KEDA keeps its state, the HPA keeps the
        // count (its metric fails), ebb answers UNAVAILABLE past its staleness bound.
        if !within(faults.outage, now) {
            controller.tick(now, &seen, &mut dep);
        }
        let ready = dep.ready(now);
        if ready == 0 && arrivals > 0 && cold_since.is_none() {
            cold_since = Some(now);
        }
        if ready > 0
            && let Some(since) = cold_since.take()
        {
            cold.push(now - since);
        }
        peak = peak.max(queue.len);
        backlog.push(queue.len);
        processed += queue.serve(now, consumer.capacity(now, ready, bottleneck_cap));
        replica_seconds += u64::from(dep.replicas);
        replicas.push(dep.replicas);
    }
    // Messages never served count with the wait they had reached.
    let end = len as u64;
    let left: Vec<(u64, u64)> = queue.batches.drain(..).collect();
    for (arrived, n) in left {
        queue.record(end - arrived, n);
    }
    Outcome {
        policy: controller.name(),
        replica_seconds,
        wait_p50_s: quantile(&queue.waits, 0.50),
        wait_p95_s: quantile(&queue.waits, 0.95),
        wait_max_s: queue.waits.iter().rposition(|&n| n > 0).unwrap_or(0) as u64,
        peak_backlog: peak,
        scale_events: dep.scale_events,
        cold_starts: cold.len() as u32,
        first_replica_mean_s: (!cold.is_empty()).then(|| cold.iter().sum::<u64>() as f64 / cold.len() as f64),
        first_replica_max_s: cold.iter().copied().max(),
        unserved_at_end: queue.len,
        reasons: controller.reasons(),
        x_keda_default: None,
        x_keda_tuned: None,
        x_floor: None,
        window_replica_seconds: None,
        backlog,
        replicas,
    }
}

/// The smallest wait `w` such that at least `q` of all messages waited `w` or less.
fn quantile(hist: &[u64], q: f64) -> u64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0;
    }
    let want = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (w, &n) in hist.iter().enumerate() {
        seen += n;
        if seen >= want {
            return w as u64;
        }
    }
    (hist.len() - 1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_weight_by_count() {
        // 90 messages waited 0 s, 9 waited 5 s, 1 waited 60 s.
        let mut h = vec![0; 61];
        (h[0], h[5], h[60]) = (90, 9, 1);
        assert_eq!((quantile(&h, 0.5), quantile(&h, 0.9), quantile(&h, 0.95), quantile(&h, 1.0)), (0, 0, 5, 60));
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn queue_is_fifo_and_carries_fractional_capacity() {
        let mut q = Queue::default();
        q.push(0, 3);
        q.push(1, 2);
        for t in 1..4 {
            q.serve(t, 1.5);
        }
        // t=1 serves 1 (capacity 1.5), t=2 serves 2 (1.5 + 0.5 carried), t=3 serves 1: the
        // batch of second 0 first, then one of second 1.
        assert_eq!(q.len, 1);
        assert_eq!(q.waits, vec![0, 1, 3]);
    }

    #[test]
    fn deployment_starts_pods_after_the_delay_and_removes_unready_first() {
        let mut d = Deployment::new(10);
        d.scale(0, 2);
        assert_eq!((d.ready(9), d.ready(10)), (0, 2));
        d.scale(5, 4);
        d.scale(6, 3);
        assert_eq!((d.ready(10), d.ready(15)), (2, 3), "the removed pod was a starting one");
        assert_eq!(d.scale_events, 3);
        d.scale(7, 3);
        assert_eq!(d.scale_events, 3, "no change, no event");
    }

    #[test]
    fn hpa_tolerance_keeps_the_count() {
        let mut h = Hpa::new(100, 0);
        assert_eq!(h.sync(0, 1050.0, 100.0, 10), 10, "5 % off: no change");
        assert_eq!(h.sync(15, 950.0, 100.0, 10), 10);
        assert_eq!(h.sync(30, 1150.0, 100.0, 10), 12, "15 % off: ceil(11.5)");
    }

    #[test]
    fn tolerance_prevents_flapping() {
        // A metric wandering ±8 % around 10 replicas' worth: the HPA never moves; without
        // the tolerance it would follow the noise.
        let mut rng = fastrand::Rng::with_seed(3);
        let noise: Vec<f64> = (0..200).map(|_| 1000.0 * (0.92 + 0.16 * rng.f64())).collect();
        let changes = |tolerance: f64| {
            let mut h = Hpa::new(100, 0);
            h.tolerance = tolerance;
            let mut current = 10;
            let mut n = 0;
            for (i, &m) in noise.iter().enumerate() {
                let next = h.sync(15 * i as u64, m, 100.0, current);
                n += u32::from(next != current);
                current = next;
            }
            n
        };
        assert_eq!(changes(0.1), 0);
        assert!(changes(0.0) > 50, "{}", changes(0.0));
    }

    #[test]
    fn hpa_scale_up_is_limited_to_max_of_4_pods_and_100_percent_per_period() {
        let mut h = Hpa::new(100, 300);
        assert_eq!(h.sync(0, 5000.0, 100.0, 1), 5, "1 + 4 beats 2 × 1");
        assert_eq!(h.sync(15, 5000.0, 100.0, 5), 10, "2 × 5");
        assert_eq!(h.sync(30, 5000.0, 100.0, 10), 20);
        assert_eq!(h.sync(45, 5000.0, 100.0, 20), 40);
        assert_eq!(h.sync(60, 5000.0, 100.0, 40), 50);
        // A second sync inside the same period counts what the first added.
        let mut h = Hpa::new(100, 0);
        h.sync_period = 5;
        assert_eq!(h.sync(0, 5000.0, 100.0, 1), 5);
        assert_eq!(h.sync(5, 5000.0, 100.0, 5), 5, "period start was 1: limit max(1 + 4, 2)");
        assert_eq!(h.sync(15, 5000.0, 100.0, 5), 10);
    }

    #[test]
    fn hpa_scale_down_waits_for_the_stabilization_window() {
        let mut h = Hpa::new(100, 300);
        assert_eq!(h.sync(0, 1000.0, 100.0, 10), 10);
        assert_eq!(h.sync(15, 0.0, 100.0, 10), 10, "held by the 10 at 0 s");
        assert_eq!(h.sync(285, 0.0, 100.0, 10), 10);
        assert_eq!(h.sync(300, 0.0, 100.0, 10), 1, "the 10 left the window; HPA minimum is 1");
    }

    #[test]
    fn keda_loop_activates_from_zero_and_waits_the_cooldown() {
        let mut k = KedaLoop::new(300);
        let mut d = Deployment::new(0);
        k.handle(0, false, &mut d);
        assert_eq!(d.replicas, 0);
        k.handle(30, true, &mut d);
        assert_eq!(d.replicas, 1);
        d.scale(31, 7);
        k.handle(330, false, &mut d);
        assert_eq!(d.replicas, 7, "30 + 300 is not < 330");
        k.handle(331, false, &mut d);
        assert_eq!(d.replicas, 0);
    }
}
