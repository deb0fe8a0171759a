//! `ebb simulate`: what a scaling policy costs before it ships.
//!
//! Replays a workload trace against a model of the consumer (per-replica throughput, pod
//! start-up delay, maximum replicas) under several policies, second by second with virtual
//! time. Each controller sees only what a scaler of the chosen source kind could read, at its
//! poll times (`--source-kind`: a log shows lag, cumulative arrivals and committed offsets that
//! move at each commit; a queue shows its length):
//! - `keda-default`: KEDA's built-in scaler with its defaults, i.e. IsActive polled every
//!   `pollingInterval` (30 s) for activation from zero, `cooldownPeriod` (300 s) before zero,
//!   and the HPA syncing every 15 s on the backlog with its 10 % tolerance, 300 s scale-down
//!   stabilization and default scale-up limit (the larger of +4 pods and +100 % per 15 s);
//! - `keda-tuned`: the same KEDA loop behind the HPA `behavior` ebb's ScaledObject uses, so
//!   the rows after it differ from it only in what decides the count;
//! - `ebb`: `outputMode: replicas`, `policy: drain`, exactly as docs/replicas.md recommends for the
//!   source kind (trigger keys and the ScaledObject's HPA `behavior`), through the server's own
//!   decision code ([`crate::engine::decision`]);
//! - `ebb-configured` (with `--throughput-per-replica`): the same with `throughputPerReplica`;
//! - `ebb-backlog`: `policy: backlog`, ebb's earlier rule;
//! - `oracle`: perfect foresight of the arrivals and the true queue ([`model::Oracle`]);
//! - `floor`: the work-conserving floor, Σ arrivals ÷ throughput plus one start-up (no waits).
//!
//! `--platform aca` models Container Apps, whose HPA behaviour cannot be changed.
//!
//! Reported per policy: replica-seconds, message wait p50/p95/max, peak backlog, scale events,
//! time to the first ready replica after idle; optionally an SVG chart.

pub mod chart;
pub mod model;
pub mod trace;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::engine::policy::{self, OutputMode, Policy};
use model::{Consumer, Ebb, Hpa, KedaDefault, Oracle, Outcome, Source, SourceKind};
use trace::{Arrivals, Trace, TraceKind};

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("{path}: line {line}: {reason}")]
    Csv { path: String, line: usize, reason: String },
    #[error("--trace {path}: neither a built-in trace ({}) nor a readable file: {source}", trace::BUILT_IN.join(", "))]
    Read { path: String, source: std::io::Error },
    #[error("--{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
    #[error("cannot write chart {path}: {reason}")]
    Chart { path: String, reason: String },
}

/// `ebb simulate` flags. Times are whole seconds: the simulation steps by one second.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Workload: steady, bursty, diurnal, spike-then-idle, or a CSV file of `time,arrivals` rows
    /// (seconds from the start, messages arriving then).
    #[arg(long, default_value = "spike-then-idle")]
    pub trace: String,
    /// Seconds to simulate [default: 86400 for diurnal, 7200 for the other built-in traces, the
    /// CSV's own length].
    #[arg(long)]
    pub duration: Option<u64>,
    /// Seed of the built-in traces' noise and bursts, and of `--arrivals poisson`.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Messages per second one ready replica processes.
    #[arg(long, default_value_t = 10.0)]
    pub throughput: f64,
    /// Seconds from requesting a replica to it processing messages.
    #[arg(long, default_value_t = 20)]
    pub startup_delay: u64,
    /// `maxReplicaCount`.
    #[arg(long, default_value_t = policy::DEFAULT_MAX_REPLICAS)]
    pub max_replicas: u32,
    /// `activationThreshold`: active when the backlog is greater than this.
    #[arg(long, default_value_t = 0.0)]
    pub activation_threshold: f64,
    /// KEDA's `pollingInterval` (IsActive, for activation from zero).
    #[arg(long, default_value_t = 30)]
    pub keda_polling_interval: u64,
    /// KEDA's `threshold`: backlog per replica (HPA AverageValue target).
    #[arg(long, default_value_t = 50.0)]
    pub keda_target: f64,
    /// KEDA's `cooldownPeriod` before scaling to zero (keda-default policy).
    #[arg(long, default_value_t = 300)]
    pub cooldown: u64,
    /// ebb's `pollingInterval` of the source.
    #[arg(long, default_value_t = 5)]
    pub ebb_polling_interval: u64,
    /// ebb's `threshold`: backlog per replica [default: --keda-target].
    #[arg(long)]
    pub ebb_target: Option<f64>,
    /// ebb's `maxScaleUpStep` [default: unlimited].
    #[arg(long)]
    pub ebb_max_scale_up_step: Option<u32>,
    /// ebb's `scaleDownStabilizationSeconds`.
    #[arg(long, default_value_t = policy::DEFAULT_STABILIZATION.as_secs())]
    pub ebb_scale_down_stabilization: u64,
    /// ebb's `cooldownPeriod`.
    #[arg(long, default_value_t = policy::DEFAULT_COOLDOWN.as_secs())]
    pub ebb_cooldown: u64,
    /// What a poll of the source shows: `queue` (backlog only) or `log` (lag, cumulative
    /// arrivals and committed offsets).
    #[arg(long, value_enum, default_value_t = SourceKind::Queue)]
    pub source_kind: SourceKind,
    /// Seconds between the consumers' commits (`log`): committed offsets move only then.
    #[arg(long, default_value_t = 5)]
    pub commit_interval: u64,
    /// The topic's partitions (`log`): consumers beyond them sit idle, and the scalers cap
    /// their count at them (KEDA's Kafka scaler without `allowIdleConsumers`) [default: no cap].
    #[arg(long)]
    pub partitions: Option<u32>,
    /// `trace`: each second's count as the trace gives it; `poisson`: drawn from a Poisson
    /// distribution with that mean (seeded by `--seed`).
    #[arg(long, value_enum, default_value_t = Arrivals::Trace)]
    pub arrivals: Arrivals,
    /// `START:SECONDS`: also report each row's replica-seconds within this window.
    #[arg(long, value_parser = window)]
    pub report_window: Option<(u64, u64)>,
    /// Add an `ebb-configured` row with `throughputPerReplica` set to this (msg/s).
    #[arg(long)]
    pub throughput_per_replica: Option<f64>,
    /// `drainSeconds` of the `ebb` rows [default: what docs/replicas.md recommends for the source
    /// kind: the key's default (10) for a log, 30 for a queue].
    #[arg(long)]
    pub drain_seconds: Option<f64>,
    /// `targetUtilization` of the `ebb` rows [default: the trigger key's default].
    #[arg(long)]
    pub target_utilization: Option<f64>,
    /// `minChangeIntervalSeconds` of the `ebb` rows [default: the trigger key's default, off].
    #[arg(long)]
    pub min_change_interval: Option<u64>,
    /// The `ebb` rows read the scale target's ready replicas at each poll (queue+R: `serve --kube`
    /// with `readyReplicas` bound), instead of estimating them from what they asked for.
    #[arg(long)]
    pub ready_replicas: bool,
    /// `aks` (the HPA `behavior` docs/replicas.md gives ebb) or `aca` (Container Apps: scale-up at most
    /// max(4, 2×) per 15 s and 300 s scale-down stabilization, not configurable).
    #[arg(long, value_enum, default_value_t = Platform::Aks)]
    pub platform: Platform,
    /// `START:SECONDS`: the consumers process at half speed for that long (a slow database).
    #[arg(long, value_parser = window)]
    pub slowdown: Option<(u64, u64)>,
    /// `START:SECONDS`: a shared downstream bottleneck (a saturated database) for that long:
    /// the consumers together process at most half the trace's mean arrival rate over that
    /// time, however many replicas run, so more replicas do not help.
    #[arg(long, value_parser = window)]
    pub bottleneck: Option<(u64, u64)>,
    /// `START:SECONDS`: the source cannot be read for that long.
    #[arg(long, value_parser = window)]
    pub outage: Option<(u64, u64)>,
    /// Restart ebb at this second (its history is lost).
    #[arg(long)]
    pub restart_at: Option<u64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG chart of arrivals, backlog and replicas to this path.
    #[arg(long)]
    pub chart: Option<PathBuf>,
}

impl Default for SimulateArgs {
    fn default() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            args: SimulateArgs,
        }
        Wrap::parse_from(["simulate"]).args
    }
}

/// `drainSeconds` docs/replicas.md recommends for a queue source.
pub const QUEUE_DRAIN_SECONDS: u64 = 30;

/// Where the HPA runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    Aks,
    Aca,
}

/// The result of one run: the trace, the settings and one row per policy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub trace: String,
    pub duration_s: u64,
    pub messages: u64,
    pub settings: Settings,
    pub policies: Vec<Row>,
}

/// A row of the report: a simulated policy, or the floor.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Row {
    Run(Outcome),
    Floor(Floor),
}

/// The work-conserving floor ([`Consumer::work_floor`]): replica-seconds only; nothing is
/// simulated, so waits are not defined (null).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Floor {
    pub policy: &'static str,
    pub replica_seconds: u64,
    pub wait_p50_s: Option<u64>,
    pub wait_p95_s: Option<u64>,
    pub wait_max_s: Option<u64>,
    pub x_keda_default: Option<f64>,
    pub x_keda_tuned: Option<f64>,
    pub x_floor: Option<f64>,
    pub window_replica_seconds: Option<u64>,
}

impl Row {
    pub fn policy(&self) -> &'static str {
        match self {
            Self::Run(o) => o.policy,
            Self::Floor(f) => f.policy,
        }
    }

    pub fn replica_seconds(&self) -> u64 {
        match self {
            Self::Run(o) => o.replica_seconds,
            Self::Floor(f) => f.replica_seconds,
        }
    }

    /// `[x_keda_default, x_keda_tuned, x_floor]`.
    pub fn ratios(&self) -> [Option<f64>; 3] {
        match self {
            Self::Run(o) => [o.x_keda_default, o.x_keda_tuned, o.x_floor],
            Self::Floor(f) => [f.x_keda_default, f.x_keda_tuned, f.x_floor],
        }
    }

    fn set_ratios(&mut self, [k, t, f]: [Option<f64>; 3]) {
        match self {
            Self::Run(o) => (o.x_keda_default, o.x_keda_tuned, o.x_floor) = (k, t, f),
            Self::Floor(r) => (r.x_keda_default, r.x_keda_tuned, r.x_floor) = (k, t, f),
        }
    }

    pub fn window_replica_seconds(&self) -> Option<u64> {
        match self {
            Self::Run(o) => o.window_replica_seconds,
            Self::Floor(f) => f.window_replica_seconds,
        }
    }
}

/// The model's settings, echoed in the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    pub throughput: f64,
    pub startup_delay_s: u64,
    pub max_replicas: u32,
    pub activation_threshold: f64,
    pub keda_polling_interval_s: u64,
    pub keda_target: f64,
    pub keda_cooldown_s: u64,
    pub ebb_polling_interval_s: u64,
    pub ebb_target: f64,
    pub ebb_max_scale_up_step: Option<u32>,
    pub ebb_scale_down_stabilization_s: u64,
    pub ebb_cooldown_s: u64,
    pub source_kind: SourceKind,
    pub commit_interval_s: u64,
    pub throughput_per_replica: Option<f64>,
    pub platform: Platform,
    pub slowdown: Option<(u64, u64)>,
    pub bottleneck: Option<(u64, u64)>,
    pub outage: Option<(u64, u64)>,
    pub restart_at: Option<u64>,
    pub partitions: Option<u32>,
    pub arrivals: Arrivals,
    pub report_window: Option<(u64, u64)>,
}

/// `START:SECONDS`.
fn window(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once(':').ok_or_else(|| format!("{s:?} is not START:SECONDS"))?;
    let n = |v: &str| v.trim().parse::<u64>().map_err(|_| format!("{v:?} is not a whole number of seconds"));
    Ok((n(a)?, n(b)?))
}

fn flag(flag: &'static str, reason: impl Into<String>) -> SimulateError {
    SimulateError::Flag { flag, reason: reason.into() }
}

impl SimulateArgs {
    fn validate(&self) -> Result<(), SimulateError> {
        let positive = |name: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 { Ok(()) } else { Err(flag(name, format!("{v} must be a positive number"))) }
        };
        positive("throughput", self.throughput)?;
        positive("keda-target", self.keda_target)?;
        if let Some(t) = self.ebb_target {
            positive("ebb-target", t)?;
        }
        if !self.activation_threshold.is_finite() {
            return Err(flag("activation-threshold", "must be a finite number"));
        }
        for (name, v) in
            [("keda-polling-interval", self.keda_polling_interval), ("ebb-polling-interval", self.ebb_polling_interval)]
        {
            if v == 0 {
                return Err(flag(name, "must be at least 1 second"));
            }
        }
        if self.max_replicas == 0 {
            return Err(flag("max-replicas", "must be at least 1"));
        }
        if let Some(t) = self.throughput_per_replica {
            positive("throughput-per-replica", t)?;
        }
        if let Some(d) = self.drain_seconds {
            positive("drain-seconds", d)?;
        }
        if let Some(u) = self.target_utilization
            && !(u > 0.0 && u <= 1.0)
        {
            return Err(flag("target-utilization", format!("{u} is not in (0, 1]")));
        }
        if self.commit_interval == 0 {
            return Err(flag("commit-interval", "must be at least 1 second"));
        }
        if self.ebb_max_scale_up_step == Some(0) {
            return Err(flag("ebb-max-scale-up-step", "must be at least 1"));
        }
        if let Some(d) = self.duration
            && !(1..=trace::MAX_SECONDS).contains(&d)
        {
            return Err(flag("duration", format!("{d} is not in [1, {}] seconds", trace::MAX_SECONDS)));
        }
        match self.partitions {
            Some(0) => return Err(flag("partitions", "must be at least 1")),
            Some(_) if self.source_kind == SourceKind::Queue => {
                return Err(flag("partitions", "only a log has partitions (--source-kind log)"));
            }
            _ => {}
        }
        if self.report_window.is_some_and(|(_, len)| len == 0) {
            return Err(flag("report-window", "SECONDS must be at least 1"));
        }
        Ok(())
    }

    fn settings(&self) -> Settings {
        Settings {
            throughput: self.throughput,
            startup_delay_s: self.startup_delay,
            max_replicas: self.max_replicas,
            activation_threshold: self.activation_threshold,
            keda_polling_interval_s: self.keda_polling_interval,
            keda_target: self.keda_target,
            keda_cooldown_s: self.cooldown,
            ebb_polling_interval_s: self.ebb_polling_interval,
            ebb_target: self.ebb_target.unwrap_or(self.keda_target),
            ebb_max_scale_up_step: self.ebb_max_scale_up_step,
            ebb_scale_down_stabilization_s: self.ebb_scale_down_stabilization,
            ebb_cooldown_s: self.ebb_cooldown,
            source_kind: self.source_kind,
            commit_interval_s: self.commit_interval,
            throughput_per_replica: self.throughput_per_replica,
            platform: self.platform,
            slowdown: self.slowdown,
            bottleneck: self.bottleneck,
            outage: self.outage,
            restart_at: self.restart_at,
            partitions: self.partitions,
            arrivals: self.arrivals,
            report_window: self.report_window,
        }
    }

    /// `policy: drain` as the ScaledObject of docs/replicas.md for the source kind sets it up: only
    /// `policy: drain` (and `throughputPerReplica` when given, `scaleDownStabilizationSeconds: 0`
    /// on Container Apps); every other key at its default.
    fn drain_policy(&self, throughput: Option<f64>) -> Policy {
        let base = crate::engine::drain::DrainConfig::default();
        // docs/replicas.md recommends drainSeconds 30 for queues: without counters, the backlog is
        // their only signal, and draining it over 10 s makes the count swing.
        let recommended = match self.source_kind {
            SourceKind::Log => base.drain,
            SourceKind::Queue => Duration::from_secs(QUEUE_DRAIN_SECONDS),
        };
        let d = crate::engine::drain::DrainConfig {
            throughput,
            drain: self.drain_seconds.map_or(recommended, Duration::from_secs_f64),
            utilization: self.target_utilization.unwrap_or(base.utilization),
            min_change: self.min_change_interval.map_or(base.min_change, Duration::from_secs),
            ..base
        };
        Policy {
            // On Container Apps the platform's HPA holds 300 s itself (docs/replicas.md).
            scale_down_stabilization: match self.platform {
                Platform::Aks => policy::DEFAULT_STABILIZATION,
                Platform::Aca => Duration::ZERO,
            },
            cooldown: policy::DEFAULT_COOLDOWN,
            max_scale_up_step: None,
            rule: crate::engine::policy::Rule::Drain(d),
            ..self.ebb_policy()
        }
    }

    /// The HPA in front of ebb: the `behavior` of docs/replicas.md (scale-up 900 % or 50 pods per 15 s,
    /// no scale-down stabilization) on AKS; Container Apps' fixed one on `aca`.
    fn ebb_hpa(&self, widened: bool) -> Hpa {
        match self.platform {
            Platform::Aca => Hpa::new(self.max_replicas, 300),
            Platform::Aks => {
                let mut h = Hpa::new(self.max_replicas, 0);
                if widened {
                    (h.scale_up_percent, h.scale_up_pods) = (900, 50);
                }
                h
            }
        }
    }

    /// ebb's policy exactly as `policy::parse` would build it from the trigger's metadata.
    fn ebb_policy(&self) -> Policy {
        Policy {
            output_mode: OutputMode::Replicas,
            target: self.ebb_target.unwrap_or(self.keda_target),
            min_replicas: 0,
            max_replicas: self.max_replicas,
            max_scale_up_step: self.ebb_max_scale_up_step,
            scale_down_stabilization: Duration::from_secs(self.ebb_scale_down_stabilization),
            cooldown: Duration::from_secs(self.ebb_cooldown),
            rule: crate::engine::policy::Rule::Backlog,
        }
    }
}

/// Runs every policy over the trace the flags name.
pub fn simulate(args: &SimulateArgs) -> Result<Report, SimulateError> {
    args.validate()?;
    Ok(simulate_trace(args, &build_trace(args)?))
}

/// The trace the flags name, with `--arrivals` applied.
fn build_trace(args: &SimulateArgs) -> Result<Trace, SimulateError> {
    let trace = TraceKind::parse(&args.trace).build(args.duration, args.seed)?;
    Ok(match args.arrivals {
        Arrivals::Trace => trace,
        Arrivals::Poisson => trace::poisson(&trace, args.seed),
    })
}

impl SimulateArgs {
    fn consumer(&self) -> Consumer {
        Consumer {
            throughput: self.throughput,
            startup_delay: self.startup_delay,
            max_replicas: self.max_replicas,
            slowdown: self.slowdown,
            bottleneck: self.bottleneck,
            partitions: self.partitions,
        }
    }

    fn ebb(&self, name: &'static str, policy: Policy, hpa: Hpa) -> Ebb {
        let mut e = Ebb::new(
            name,
            self.ebb_polling_interval,
            self.keda_polling_interval,
            self.activation_threshold,
            policy,
            hpa,
        );
        e.read_ready = self.ready_replicas;
        e
    }

    /// The simulated rows, in the report's order.
    fn controllers(&self, trace: &Trace, consumer: &Consumer) -> Vec<Box<dyn model::Controller>> {
        let keda = KedaDefault::new(
            self.keda_polling_interval,
            self.keda_target,
            self.activation_threshold,
            self.cooldown,
            self.max_replicas,
        );
        let tuned = keda.clone().with_hpa("keda-tuned", self.ebb_hpa(true));
        let mut rows: Vec<Box<dyn model::Controller>> = vec![
            Box::new(keda),
            Box::new(tuned),
            Box::new(self.ebb("ebb", self.drain_policy(None), self.ebb_hpa(true))),
        ];
        if let Some(t) = self.throughput_per_replica {
            rows.push(Box::new(self.ebb("ebb-configured", self.drain_policy(Some(t)), self.ebb_hpa(true))));
        }
        rows.push(Box::new(self.ebb("ebb-backlog", self.ebb_policy(), self.ebb_hpa(false))));
        rows.push(Box::new(Oracle::new(trace, consumer)));
        rows
    }
}

/// Replicas summed over `window`, clipped to the run.
fn window_sum(replicas: &[u32], (start, len): (u64, u64)) -> u64 {
    replicas.iter().skip(start as usize).take(len as usize).map(|&n| u64::from(n)).sum()
}

fn ratio(a: u64, b: Option<u64>) -> Option<f64> {
    b.filter(|&b| b > 0).map(|b| a as f64 / b as f64)
}

/// Runs every policy over `trace`.
pub fn simulate_trace(args: &SimulateArgs, trace: &Trace) -> Report {
    let consumer = args.consumer();
    let faults = model::Faults { outage: args.outage, restart_at: args.restart_at };
    let source = Source { kind: args.source_kind, commit_interval: args.commit_interval, partitions: args.partitions };
    let mut rows: Vec<Row> = args
        .controllers(trace, &consumer)
        .iter_mut()
        .map(|c| {
            let mut o = model::run(trace, &consumer, &source, &faults, c.as_mut());
            o.window_replica_seconds = args.report_window.map(|w| window_sum(&o.replicas, w));
            Row::Run(o)
        })
        .collect();
    rows.push(Row::Floor(Floor {
        policy: "floor",
        replica_seconds: consumer.work_floor(trace, None),
        wait_p50_s: None,
        wait_p95_s: None,
        wait_max_s: None,
        x_keda_default: None,
        x_keda_tuned: None,
        x_floor: None,
        window_replica_seconds: args.report_window.map(|w| consumer.work_floor(trace, Some(w))),
    }));
    let of = |name: &str| rows.iter().find(|r| r.policy() == name).map(Row::replica_seconds);
    let (keda, tuned, floor) = (of("keda-default"), of("keda-tuned"), of("floor"));
    for r in &mut rows {
        let rs = r.replica_seconds();
        r.set_ratios([ratio(rs, keda), ratio(rs, tuned), ratio(rs, floor)]);
    }
    Report {
        trace: trace.name.clone(),
        duration_s: trace.arrivals.len() as u64,
        messages: trace.total(),
        settings: args.settings(),
        policies: rows,
    }
}

/// `ebb simulate`: prints the report (table or JSON) and writes the chart if asked.
pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    args.validate()?;
    let trace = build_trace(args)?;
    let report = simulate_trace(args, &trace);
    if let Some(path) = &args.chart {
        chart::write(path, &trace, &report.outcomes().cloned().collect::<Vec<_>>())
            .map_err(|e| SimulateError::Chart { path: path.display().to_string(), reason: e.to_string() })?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

impl Report {
    /// The simulated rows (every row but `floor`).
    pub fn outcomes(&self) -> impl Iterator<Item = &Outcome> {
        self.policies.iter().filter_map(|r| match r {
            Row::Run(o) => Some(o),
            Row::Floor(_) => None,
        })
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let s = &self.settings;
        let partitions = s.partitions.map(|p| format!(", {p} partitions")).unwrap_or_default();
        let mut out = format!(
            "trace {}: {} s, {} messages ({} arrivals); replica: {} msg/s, {} s start-up, max {}; \
             source: {:?}{partitions}; platform: {:?}\n\n",
            self.trace,
            self.duration_s,
            self.messages,
            format!("{:?}", s.arrivals).to_lowercase(),
            s.throughput,
            s.startup_delay_s,
            s.max_replicas,
            s.source_kind,
            s.platform,
        );
        // The window's column only when asked for.
        let window =
            s.report_window.map(|(a, n)| format!(" {:>16}", format!("in {a}..{} s", a + n))).unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<14} {:>12} {:>7} {:>7} {:>7}{window} {:>9} {:>9} {:>9} {:>12} {:>12} {:>24}",
            "policy",
            "replica-s",
            "×keda",
            "×tuned",
            "×floor",
            "wait p50",
            "wait p95",
            "wait max",
            "peak backlog",
            "scale events",
            "first replica mean/max"
        );
        for r in &self.policies {
            out.push_str(&row_line(r, s.report_window.is_some()));
        }
        out
    }
}

/// One line of the table (and its notes).
fn row_line(r: &Row, with_window: bool) -> String {
    let x = |v: Option<f64>| opt(v, |x| format!("{x:.2}"));
    let secs = |v: Option<u64>| opt(v, |w| format!("{w} s"));
    let xs = r.ratios();
    let window = if with_window {
        format!(" {:>16}", opt(r.window_replica_seconds(), |w| w.to_string()))
    } else {
        String::new()
    };
    let o = match r {
        Row::Run(o) => Some(o),
        Row::Floor(_) => None,
    };
    let first = match o.map(|o| (o.first_replica_mean_s, o.first_replica_max_s, o.cold_starts)) {
        Some((Some(mean), Some(max), n)) => format!("{mean:.1} / {max} s ({n}×)"),
        _ => "-".to_string(),
    };
    let mut out = format!(
        "{:<14} {:>12} {:>7} {:>7} {:>7}{window} {:>9} {:>9} {:>9} {:>12} {:>12} {:>24}\n",
        r.policy(),
        r.replica_seconds(),
        x(xs[0]),
        x(xs[1]),
        x(xs[2]),
        secs(o.map(|o| o.wait_p50_s)),
        secs(o.map(|o| o.wait_p95_s)),
        secs(o.map(|o| o.wait_max_s)),
        opt(o.map(|o| o.peak_backlog), |v| v.to_string()),
        opt(o.map(|o| o.scale_events), |v| v.to_string()),
        first
    );
    let Some(o) = o else { return out };
    if o.unserved_at_end > 0 {
        let _ = writeln!(out, "  ({}: {} messages still queued at the end)", o.policy, o.unserved_at_end);
    }
    if !o.reasons.is_empty() {
        let r: Vec<String> = o.reasons.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(out, "  ({} at its polls, the rule that bound the count: {})", o.policy, r.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(trace: &str) -> SimulateArgs {
        SimulateArgs { trace: trace.into(), ..SimulateArgs::default() }
    }

    fn by_name<'a>(r: &'a Report, name: &str) -> &'a Outcome {
        r.outcomes().find(|p| p.policy == name).unwrap()
    }

    fn floor(r: &Report) -> u64 {
        r.policies.iter().find(|p| p.policy() == "floor").unwrap().replica_seconds()
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let a = SimulateArgs::default();
        assert_eq!((a.keda_polling_interval, a.cooldown, a.ebb_polling_interval), (30, 300, 5));
        assert_eq!((a.ebb_scale_down_stabilization, a.ebb_cooldown, a.max_replicas), (300, 300, 100));
    }

    #[test]
    fn steady_trace_with_enough_capacity_has_bounded_wait() {
        let r = simulate(&SimulateArgs { duration: Some(3600), ..args("steady") }).unwrap();
        for p in r.outcomes() {
            // 100 msg/s needs 10 replicas of 10 msg/s. Scaling on backlog saws (a drained queue
            // recommends 1 replica once the stabilization window passes, then the backlog
            // builds again), but with 100 replicas allowed no message waits minutes.
            assert!(p.wait_p95_s <= 60, "{}: p95 {}", p.policy, p.wait_p95_s);
            assert!(p.wait_max_s <= 120, "{}: max {}", p.policy, p.wait_max_s);
            assert!(p.unserved_at_end <= 60 * 110, "{}: {}", p.policy, p.unserved_at_end);
            let mean = p.replica_seconds as f64 / 3600.0;
            assert!((10.0..=100.0).contains(&mean), "{}: mean replicas {mean}", p.policy);
            assert!(p.replicas.iter().all(|&n| n <= 100));
        }
    }

    #[test]
    fn spike_then_idle_cold_start_keda_waits_for_its_poll_ebb_for_one_poll() {
        let a = args("spike-then-idle");
        let r = simulate(&a).unwrap();
        let (keda, ebb) = (by_name(&r, "keda-default"), by_name(&r, "ebb"));
        assert_eq!((keda.cold_starts, ebb.cold_starts), (4, 4), "both return to zero between spikes");
        // The spike starts at 617 s: KEDA's poll sees it at 630 s, ebb's at 620 s.
        let keda_poll_delay = 630 - trace::SPIKE_ONSET;
        assert!(keda.first_replica_max_s.unwrap() >= keda_poll_delay + a.startup_delay);
        assert_eq!(keda.first_replica_mean_s, Some((keda_poll_delay + a.startup_delay) as f64));
        assert!(ebb.first_replica_max_s.unwrap() <= a.ebb_polling_interval + a.startup_delay);
        assert!(ebb.wait_max_s < keda.wait_max_s);
        // Zero between spikes: neither keeps replicas through the idle half hour.
        for p in [keda, ebb] {
            assert_eq!(p.replicas[1799], 0, "{}", p.policy);
        }
    }

    #[test]
    fn ebb_runs_through_the_servers_decision_code() {
        // maxScaleUpStep 1 caps ebb's decision at one replica more per 5 s poll; the HPA copies
        // that count (or less: its tolerance and 15 s sync lag behind), so from activation at
        // the 620 s poll the replicas stay under 1 + one per poll.
        let a = SimulateArgs { ebb_max_scale_up_step: Some(1), duration: Some(1800), ..args("spike-then-idle") };
        let r = simulate(&a).unwrap();
        let ebb = by_name(&r, "ebb-backlog");
        assert_eq!(ebb.replicas[619], 0);
        for t in 620..1800 {
            let polls = (t as u32 - 620) / 5;
            assert!(ebb.replicas[t] <= 1 + polls, "at {t} s: {} replicas after {polls} polls", ebb.replicas[t]);
        }
        let unlimited = simulate(&SimulateArgs { duration: Some(1800), ..args("spike-then-idle") }).unwrap();
        assert!(by_name(&unlimited, "ebb-backlog").wait_p95_s < ebb.wait_p95_s);
    }

    #[test]
    fn day_long_trace_simulates_fast_and_deterministically() {
        let start = std::time::Instant::now();
        let a = args("diurnal");
        let r1 = simulate(&a).unwrap();
        assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
        assert_eq!(r1.duration_s, 86_400);
        let r2 = simulate(&a).unwrap();
        assert_eq!(r1.policies, r2.policies);
    }

    #[test]
    fn bad_flags_are_named() {
        for (a, name) in [
            (SimulateArgs { throughput: 0.0, ..args("steady") }, "throughput"),
            (SimulateArgs { keda_polling_interval: 0, ..args("steady") }, "keda-polling-interval"),
            (SimulateArgs { ebb_max_scale_up_step: Some(0), ..args("steady") }, "ebb-max-scale-up-step"),
            (SimulateArgs { duration: Some(0), ..args("steady") }, "duration"),
            (SimulateArgs { ebb_target: Some(f64::NAN), ..args("steady") }, "ebb-target"),
            (SimulateArgs { partitions: Some(4), ..args("steady") }, "partitions"),
            (SimulateArgs { partitions: Some(0), source_kind: SourceKind::Log, ..args("steady") }, "partitions"),
            (SimulateArgs { report_window: Some((10, 0)), ..args("steady") }, "report-window"),
        ] {
            let e = simulate(&a).unwrap_err();
            assert!(e.to_string().starts_with(&format!("--{name}: ")), "{e}");
        }
        let e = simulate(&args("/nonexistent/trace.csv")).unwrap_err();
        assert!(matches!(e, SimulateError::Read { .. }), "{e}");
        assert!(e.to_string().contains("neither a built-in trace (steady, bursty, diurnal, spike-then-idle)"), "{e}");
    }

    #[test]
    fn csv_trace_runs_and_chart_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("t.csv");
        std::fs::write(&csv, "time,arrivals\n10,500\n400,30\n").unwrap();
        let chart = dir.path().join("c.svg");
        let a = SimulateArgs { chart: Some(chart.clone()), duration: Some(1200), ..args(csv.to_str().unwrap()) };
        let r = simulate(&a).unwrap();
        assert_eq!((r.duration_s, r.messages), (1200, 530));
        run(&a).unwrap();
        let svg = std::fs::read_to_string(&chart).unwrap();
        assert!(svg.contains("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.contains("keda-default") && svg.contains("ebb"));
        let table = r.table();
        assert!(table.contains("keda-default") && table.contains("first replica"), "{table}");
        let floor_line = table.lines().find(|l| l.starts_with("floor ")).unwrap();
        assert!(floor_line.contains(" - "), "no waits for the floor: {floor_line}");
    }

    /// A constant load of exactly `k` replicas' capacity.
    fn constant_csv(dir: &std::path::Path, rate: u64, seconds: u64) -> String {
        let csv = dir.join("constant.csv");
        let rows: String = (0..seconds).map(|t| format!("{t},{rate}\n")).collect();
        std::fs::write(&csv, rows).unwrap();
        csv.to_str().unwrap().to_string()
    }

    #[test]
    fn rows_come_in_order_with_their_ratios() {
        let a = SimulateArgs { throughput_per_replica: Some(10.0), duration: Some(3600), ..args("bursty") };
        let r = simulate(&a).unwrap();
        let names: Vec<&str> = r.policies.iter().map(Row::policy).collect();
        assert_eq!(names, ["keda-default", "keda-tuned", "ebb", "ebb-configured", "ebb-backlog", "oracle", "floor"]);
        let (keda, tuned, f) =
            (by_name(&r, "keda-default").replica_seconds, by_name(&r, "keda-tuned").replica_seconds, floor(&r));
        for p in &r.policies {
            let rs = p.replica_seconds() as f64;
            let want = [rs / keda as f64, rs / tuned as f64, rs / f as f64];
            assert_eq!(p.ratios(), want.map(Some), "{}", p.policy());
        }
        // Σ arrivals ÷ 10 msg/s, rounded up, plus one replica's 20 s start-up.
        assert_eq!(f, r.messages.div_ceil(10) + 20);
    }

    #[test]
    fn floor_counts_slowdown_at_half_throughput_and_bottleneck_at_full() {
        let base = SimulateArgs { duration: Some(3600), ..args("steady") };
        let plain = floor(&simulate(&base).unwrap());
        let slow = floor(&simulate(&SimulateArgs { slowdown: Some((0, 3600)), ..base.clone() }).unwrap());
        let bottleneck = floor(&simulate(&SimulateArgs { bottleneck: Some((0, 3600)), ..base }).unwrap());
        assert_eq!(slow - 20, 2 * (plain - 20));
        assert_eq!(bottleneck, plain);
    }

    #[test]
    fn oracle_counts_each_arrival_once_near_the_floor() {
        // 50 msg/s is exactly 5 replicas: asking for 6 (the arrivals counted twice) would cost
        // 20 % over the floor.
        let dir = tempfile::tempdir().unwrap();
        for kind in [SourceKind::Queue, SourceKind::Log] {
            let a = SimulateArgs { source_kind: kind, ..args(&constant_csv(dir.path(), 50, 3600)) };
            let r = simulate(&a).unwrap();
            let (oracle, f) = (by_name(&r, "oracle"), floor(&r));
            assert!(oracle.replica_seconds as f64 <= 1.03 * f as f64, "{kind:?}: {} vs {f}", oracle.replica_seconds);
            assert!(oracle.replicas[600..].iter().all(|&n| n == 5), "{kind:?}");
        }
    }

    #[test]
    fn oracle_sees_the_true_queue_not_the_lag() {
        // A log's lag holds up to 30 s of processed but uncommitted messages; the oracle is
        // shown the model's queue, which is the same whatever the source kind.
        let a = SimulateArgs { duration: Some(3600), ..args("bursty") };
        let queue = simulate(&a).unwrap();
        let log = simulate(&SimulateArgs { source_kind: SourceKind::Log, commit_interval: 30, ..a }).unwrap();
        assert_eq!(by_name(&queue, "oracle").replicas, by_name(&log, "oracle").replicas);
        assert_ne!(by_name(&queue, "keda-default").replicas, by_name(&log, "keda-default").replicas);
    }

    #[test]
    fn keda_tuned_differs_from_keda_default_only_in_the_hpa() {
        // On Container Apps the HPA cannot be tuned: the rows are the same.
        let a = SimulateArgs { duration: Some(3600), ..args("spike-then-idle") };
        let aca = simulate(&SimulateArgs { platform: Platform::Aca, ..a.clone() }).unwrap();
        let (d, t) = (by_name(&aca, "keda-default"), by_name(&aca, "keda-tuned"));
        assert_eq!((&d.replicas, &d.backlog), (&t.replicas, &t.backlog));
        // On AKS the same activation (KEDA's 30 s poll to one replica), then another HPA.
        let aks = simulate(&a).unwrap();
        let (d, t) = (by_name(&aks, "keda-default"), by_name(&aks, "keda-tuned"));
        assert_eq!((d.cold_starts, d.first_replica_max_s), (t.cold_starts, t.first_replica_max_s));
        // KEDA activates at its 630 s poll; the HPA (15 s period, offset 7) first syncs at 637 s.
        let first_sync = 637;
        assert_eq!(d.replicas[..first_sync as usize], t.replicas[..first_sync as usize]);
        assert_ne!(d.replicas, t.replicas);
    }

    #[test]
    fn partitions_cap_every_count_and_the_capacity() {
        // 100 msg/s needs 10 replicas; 4 partitions let 4 work.
        let a =
            SimulateArgs { partitions: Some(4), source_kind: SourceKind::Log, duration: Some(3600), ..args("steady") };
        let r = simulate(&a).unwrap();
        for p in r.outcomes().filter(|p| p.policy != "ebb-backlog") {
            assert!(p.replicas.iter().all(|&n| n <= 4), "{}: {:?}", p.policy, p.replicas.iter().max());
            assert!(p.replicas.contains(&4), "{}", p.policy);
        }
        let c = a.consumer();
        assert_eq!((c.capacity(0, 3, None), c.capacity(0, 4, None), c.capacity(0, 40, None)), (30.0, 40.0, 40.0));
        // At 40 msg/s of 100 the backlog only grows.
        let oracle = by_name(&r, "oracle");
        assert!(oracle.unserved_at_end >= 3000 * 60, "{}", oracle.unserved_at_end);
    }

    #[test]
    fn poisson_arrivals_are_seeded() {
        let a = SimulateArgs { arrivals: Arrivals::Poisson, ..args("steady") };
        let (r1, r2) = (simulate(&a).unwrap(), simulate(&a).unwrap());
        assert_eq!(r1.policies, r2.policies);
        let other = simulate(&SimulateArgs { seed: 7, ..a.clone() }).unwrap();
        assert_ne!(r1.messages, other.messages);
        let plain = simulate(&SimulateArgs { arrivals: Arrivals::Trace, ..a }).unwrap();
        assert!((r1.messages as f64 / plain.messages as f64 - 1.0).abs() < 0.01);
    }

    #[test]
    fn report_window_sums_each_rows_replicas_in_it() {
        let a = SimulateArgs { report_window: Some((600, 600)), duration: Some(3600), ..args("spike-then-idle") };
        let r = simulate(&a).unwrap();
        for p in r.outcomes() {
            let want: u64 = p.replicas[600..1200].iter().map(|&n| u64::from(n)).sum();
            assert_eq!(p.window_replica_seconds, Some(want), "{}", p.policy);
        }
        let whole = simulate(&SimulateArgs { report_window: Some((0, 99_999)), ..a }).unwrap();
        for p in whole.outcomes() {
            assert_eq!(p.window_replica_seconds, Some(p.replica_seconds), "clipped to the run: {}", p.policy);
        }
    }

    /// Issue 23's bill, cell by cell where `policy: drain` once cost 2–5× KEDA's default: a
    /// queue with KEDA's Service Bus threshold (5) or 10, and no throughput given. The bar: at
    /// most 1.05 × keda-default's replica-seconds, p95 wait at most max(1.25 × KEDA's, + 5 s).
    #[test]
    fn a_queue_without_a_throughput_never_costs_more_than_keda() {
        for (trace, target) in [("steady", 5.0), ("steady", 10.0), ("bursty", 5.0), ("bursty", 10.0)] {
            let a = SimulateArgs { keda_target: target, source_kind: SourceKind::Queue, ..args(trace) };
            let r = simulate(&a).unwrap();
            let (k, e) = (by_name(&r, "keda-default"), by_name(&r, "ebb"));
            let cost = e.replica_seconds as f64 / k.replica_seconds as f64;
            assert!(cost <= 1.05, "{trace}, threshold {target}: {cost:.2} × keda-default");
            let p95 = (1.25 * k.wait_p95_s as f64).max(k.wait_p95_s as f64 + 5.0);
            assert!(e.wait_p95_s as f64 <= p95, "{trace}, threshold {target}: p95 {} vs {}", e.wait_p95_s, k.wait_p95_s);
        }
    }

    /// Issue 23: after a 10-minute slowdown (or a bottleneck) on a log, the hour that follows
    /// costs at most 1.15 × the same hour without it (it once cost 1.9–2.4×: the throughput
    /// learned while it lasted capped the estimate for good).
    #[test]
    fn a_fault_that_ended_leaves_no_trace_an_hour_later() {
        let base =
            SimulateArgs { source_kind: SourceKind::Log, report_window: Some((4_800, 2_400)), ..args("steady") };
        let window = |a: &SimulateArgs| by_name(&simulate(a).unwrap(), "ebb").window_replica_seconds.unwrap();
        let without = window(&base);
        for fault in [
            SimulateArgs { slowdown: Some((3_000, 600)), ..base.clone() },
            SimulateArgs { bottleneck: Some((3_000, 600)), ..base.clone() },
        ] {
            let ratio = window(&fault) as f64 / without as f64;
            assert!(ratio <= 1.15, "{:?} {:?}: {ratio:.2} × the same window without it", fault.slowdown, fault.bottleneck);
        }
    }
}
