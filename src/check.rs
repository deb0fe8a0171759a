//! `ebb check key=value …`: parse a trigger's metadata as `serve` would, poll the source
//! once, and print the metric, the activity and the desired replicas.

use std::collections::HashMap;

use serde::Serialize;
use tokio::time::Instant;

use crate::engine::decision::{self, DecisionState};
use crate::engine::policy::OutputMode;
use crate::engine::{self, Assembled, EngineError, keda_keys, trigger};

/// What one check saw.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub scaler_type: &'static str,
    pub source: String,
    pub metric_name: String,
    pub target: f64,
    pub output_mode: &'static str,
    /// The value GetMetrics would serve.
    pub metric: f64,
    pub active: bool,
    pub desired_replicas: u32,
    /// The rule that bound `desired_replicas` (the decision log's labels).
    pub reason: &'static str,
    pub poll_ms: f64,
    /// The interval `serve` would poll at: the trigger's, raised to `--min-polling-interval`.
    pub polling_interval_s: f64,
    /// What `serve` would do differently from what the metadata says.
    pub notes: Vec<String>,
    /// Keys given to the scaler (ebb's and the source's), sorted.
    pub source_keys: Vec<String>,
    /// Keys set aside as KEDA's own connection settings.
    pub ignored_as_kedas: Vec<String>,
    /// Whose `unsafeSsl` it was.
    pub unsafe_ssl: &'static str,
    /// `policy`: `backlog` or `drain`.
    pub policy: &'static str,
    /// `policy: drain`'s estimates and reason.
    pub drain: Option<DrainReport>,
}

/// What `policy: drain` estimated from the check's poll.
#[derive(Debug, Clone, Serialize)]
pub struct DrainReport {
    pub mode: &'static str,
    /// λ̂, messages/s (none from a single poll).
    pub arrival_rate: Option<f64>,
    /// μ̂, messages/s per replica (configured, learned or the fallback).
    pub throughput: Option<f64>,
    /// The rule that bound the count.
    pub reason: String,
    pub note: &'static str,
}

/// The `serve` settings a check applies.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub min_polling_interval: std::time::Duration,
    /// Where ebb's identity may go (`--azure-private-suffix`, `--azure-monitor-audience`).
    pub endpoints: ebb_scalers::trust::Endpoints,
    /// Read the metadata as `serve` with TLS on its gRPC port would (`--grpc-tls`).
    pub grpc_tls: bool,
    /// As `serve --secrets-dir` and `--max-upstream-concurrency`.
    pub scalers: ebb_scalers::Settings,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            min_polling_interval: crate::engine::DEFAULT_MIN_POLLING_INTERVAL,
            endpoints: Default::default(),
            grpc_tls: false,
            scalers: Default::default(),
        }
    }
}

/// Why a check failed; bad metadata and a failed poll exit with different codes.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Metadata(#[from] EngineError),
    #[error("{scaler} poll failed: {error}")]
    Poll { scaler: &'static str, error: ebb_scalers::PollError },
}

impl CheckError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CheckError::Metadata(_) => 2,
            CheckError::Poll { .. } => 1,
        }
    }
}

/// Splits `key=value` arguments into a metadata map.
pub fn parse_pairs(args: &[String]) -> Result<HashMap<String, String>, String> {
    args.iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("argument {a:?} is not key=value"))
        })
        .collect()
}

/// Parses, polls once and decides. A single observation cannot show a cooldown, so in
/// `replicas` mode an idle source reports 1 replica, exactly as a freshly started server would.
///
/// ebb's identity goes only where `serve` would send it; the operator running `check` is trusted
/// with named secrets, so namespace bindings do not apply here.
pub async fn run(sent: &HashMap<String, String>, opts: &CheckOptions) -> Result<CheckReport, CheckError> {
    let endpoints = &opts.endpoints;
    let allow = |held: &[ebb_scalers::trust::Held]| -> Result<(), EngineError> {
        for h in held {
            if let ebb_scalers::trust::Held::Identity(u) = h {
                endpoints.check(u).map_err(|e| EngineError::InvalidMetadata(e.into()))?;
            }
        }
        Ok(())
    };
    let door = keda_keys::Door::Keda { tls: opts.grpc_tls };
    let registry = ebb_scalers::Registry::builtin(opts.scalers.clone());
    let Assembled { view, scaler, options, floored_from } =
        engine::assemble(sent, sent, door, &registry, allow, opts.min_polling_interval)?;
    let mut notes = Vec::new();
    if let Some(asked) = floored_from {
        notes.push(format!(
            "pollingInterval {asked:?} is below --min-polling-interval: serve polls every {:?}",
            options.polling_interval
        ));
    }
    let poller = registry.poller(&*scaler).map_err(EngineError::from)?;
    let started = Instant::now();
    let m = ebb_scalers::poll_within(&*poller, scaler.poll_timeout(), std::time::SystemTime::now())
        .await
        .map_err(|error| CheckError::Poll { scaler: scaler.scaler_type(), error })?;
    let poll_ms = started.elapsed().as_secs_f64() * 1e3;
    let now = Instant::now();
    let mut state = DecisionState::new();
    let counters = scaler.counters(&m);
    decision::observe_with(&mut state, &options.policy, scaler.evaluate(&m), counters, None, now);
    let d = decision::decide(&state, &options.policy, now).expect("one observation was folded");
    let drain = match &options.policy.rule {
        crate::engine::policy::Rule::Backlog => None,
        crate::engine::policy::Rule::Drain(_) => {
            let e = state.drain_estimates();
            Some(DrainReport {
                mode: if e.full { "full: arrivals and processed counters" } else { "queue: backlog only" },
                arrival_rate: e.arrival_rate,
                throughput: e.throughput,
                reason: state.drain_reason().map(|r| r.label().to_owned()).unwrap_or_default(),
                note: "one poll shows no rate: serve estimates λ over rateWindowShortSeconds/rateWindowLongSeconds",
            })
        }
    };
    let target = match options.policy.output_mode {
        OutputMode::Metric => scaler.target(),
        OutputMode::Replicas => 1.0,
    };
    Ok(CheckReport {
        scaler_type: scaler.scaler_type(),
        source: scaler.source_key().to_string(),
        metric_name: options
            .metric_name
            .clone()
            .unwrap_or_else(|| trigger::default_metric_name(scaler.scaler_type(), sent)),
        target,
        output_mode: match options.policy.output_mode {
            OutputMode::Metric => "metric",
            OutputMode::Replicas => "replicas",
        },
        metric: d.metric,
        active: d.active,
        desired_replicas: d.desired_replicas,
        reason: d.why.label(),
        poll_ms,
        polling_interval_s: options.polling_interval.as_secs_f64(),
        notes,
        source_keys: {
            let mut k: Vec<String> = view.metadata.keys().cloned().collect();
            k.sort();
            k
        },
        ignored_as_kedas: view.ignored.clone(),
        unsafe_ssl: view.unsafe_ssl.describe(),
        policy: match options.policy.rule {
            crate::engine::policy::Rule::Backlog => "backlog",
            crate::engine::policy::Rule::Drain(_) => "drain",
        },
        drain,
    })
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "scaler            {}", self.scaler_type)?;
        writeln!(f, "source            {}", self.source)?;
        writeln!(f, "metric name       {}", self.metric_name)?;
        writeln!(f, "output mode       {} (target {})", self.output_mode, self.target)?;
        writeln!(f, "metric            {}", self.metric)?;
        writeln!(f, "active            {}", self.active)?;
        writeln!(f, "desired replicas  {} ({})", self.desired_replicas, self.reason)?;
        writeln!(f, "polling interval  {} s", self.polling_interval_s)?;
        for note in &self.notes {
            writeln!(f, "note              {note}")?;
        }
        writeln!(f, "keys for source   {}", self.source_keys.join(", "))?;
        if !self.ignored_as_kedas.is_empty() {
            writeln!(f, "ignored (KEDA's)  {}", self.ignored_as_kedas.join(", "))?;
        }
        writeln!(f, "unsafeSsl         {}", self.unsafe_ssl)?;
        writeln!(f, "policy            {}", self.policy)?;
        if let Some(d) = &self.drain {
            let n = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            writeln!(f, "drain mode        {}", d.mode)?;
            writeln!(f, "arrival rate      {} msg/s ({})", n(d.arrival_rate), d.note)?;
            writeln!(f, "throughput        {} msg/s per replica", n(d.throughput))?;
            writeln!(f, "decided by        {}", d.reason)?;
        }
        write!(f, "poll took         {:.1} ms", self.poll_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_need_an_equals_sign() {
        let args = vec!["scalerType=prometheus".to_string(), "query=a=b".to_string()];
        let m = parse_pairs(&args).unwrap();
        assert_eq!(m["query"], "a=b");
        assert!(parse_pairs(&["nope".to_string()]).is_err());
    }

    #[tokio::test]
    async fn bad_metadata_exits_2_naming_the_key() {
        let m = parse_pairs(&["scalerType=prometheus".to_string()]).unwrap();
        let e = run(&m, &CheckOptions::default()).await.unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("serverAddress"), "{e}");
    }
}
