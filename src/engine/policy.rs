//! ebb's own trigger metadata: how often to poll and how to turn a metric into a decision.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `pollingInterval` | 5 | seconds between polls of the source (fractional allowed); the source polls at the smallest interval any trigger asks for |
//! | `outputMode` | `metric` | `metric`: KEDA parity, HPA divides the metric by the threshold. `replicas`: ebb decides the replica count |
//! | `minReplicaCount` | 0 | `replicas` mode: lower bound (0 allows scale to zero) |
//! | `maxReplicaCount` | 100 | `replicas` mode: upper bound (KEDA's default) |
//! | `maxScaleUpStep` | unlimited | `replicas` mode: most replicas added per observation |
//! | `scaleDownStabilizationSeconds` | 300 | `replicas` mode: the highest recommendation in this window wins (HPA's default) |
//! | `cooldownPeriod` | 300 | `replicas` mode: seconds without activity before ebb decides zero (KEDA's default) |
//! | `metricName` | `<scalerType>-<hash>` | the metric name served to KEDA (no `s<i>-` prefix) |
//! | `policy` | `backlog` | `replicas` mode: `backlog` (`ceil(metric / threshold)`, HPA-like) or `drain` (rate-aware, [`super::drain`]) |
//! | `throughputPerReplica` | learned | `drain`: messages/s one replica processes |
//! | `drainSeconds` | 10 | `drain`: time to drain a backlog |
//! | `targetUtilization` | 0.9 | `drain`: share of a replica's throughput to plan for, in (0, 1] |
//! | `startupSeconds` | 30 | `drain`: from asking for a replica to it processing |
//! | `rateWindowShortSeconds`, `rateWindowLongSeconds` | 10, 60 | `drain`: arrival-rate windows |
//! | `downWindowSeconds` | 60 | `drain`: the highest rate part in this window bounds a scale-down |
//! | `stallPolls` | 3 | `drain`: polls without progress, with work waiting, before ebb holds the count |
//! | `minChangeIntervalSeconds` | 0 (off) | `drain`: at most one change of the count per this long (each is a Kafka or Event Hubs rebalance) |

use std::time::Duration;

use ebb_scalers::metadata::collect;
use ebb_scalers::{ConfigError, ConfigErrors, Metadata};

use super::drain::DrainConfig;

pub const DEFAULT_POLLING_INTERVAL: Duration = Duration::from_secs(5);
/// KEDA's `maxReplicaCount` default.
pub const DEFAULT_MAX_REPLICAS: u32 = 100;
/// HPA's default scale-down stabilization window.
pub const DEFAULT_STABILIZATION: Duration = Duration::from_secs(300);
/// KEDA's `cooldownPeriod` default.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(300);

/// What GetMetrics reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// The trigger's metric; HPA computes `ceil(metric / target)` (KEDA parity).
    Metric,
    /// ebb's desired replica count against a target of 1.
    Replicas,
}

/// How one trigger turns evaluations into a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub output_mode: OutputMode,
    /// The trigger's HPA target (threshold), > 0.
    pub target: f64,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub max_scale_up_step: Option<u32>,
    pub scale_down_stabilization: Duration,
    pub cooldown: Duration,
    /// How `replicas` mode sizes.
    pub rule: Rule,
}

/// `policy`: how `outputMode: replicas` turns observations into a count.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Rule {
    /// `ceil(metric / threshold)` with stabilization: the HPA's loop.
    #[default]
    Backlog,
    /// Rate-aware sizing ([`super::drain`]).
    Drain(DrainConfig),
}

impl Policy {
    /// A `metric`-mode policy with KEDA's defaults for the given target.
    pub fn metric(target: f64) -> Self {
        Self {
            output_mode: OutputMode::Metric,
            target,
            min_replicas: 0,
            max_replicas: DEFAULT_MAX_REPLICAS,
            max_scale_up_step: None,
            scale_down_stabilization: DEFAULT_STABILIZATION,
            cooldown: DEFAULT_COOLDOWN,
            rule: Rule::Backlog,
        }
    }
}

/// ebb's keys parsed from a trigger's metadata (the scaler's own keys are parsed by its module).
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerOptions {
    pub polling_interval: Duration,
    pub policy: Policy,
    pub metric_name: Option<String>,
}

/// Parses ebb's keys; `target` comes from the scaler's threshold.
pub fn parse(md: &Metadata<'_>, target: f64) -> Result<TriggerOptions, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    let polling_interval =
        collect(&mut errs, md.seconds("pollingInterval")).flatten().unwrap_or(DEFAULT_POLLING_INTERVAL);
    let output_mode = match collect(&mut errs, md.one_of("outputMode", &["metric", "replicas"])).flatten() {
        Some("replicas") => OutputMode::Replicas,
        _ => OutputMode::Metric,
    };
    let min_replicas = collect(&mut errs, md.u32("minReplicaCount")).flatten().unwrap_or(0);
    let max_replicas = collect(&mut errs, md.u32("maxReplicaCount")).flatten().unwrap_or(DEFAULT_MAX_REPLICAS);
    if max_replicas == 0 {
        errs.push(ConfigError::new("maxReplicaCount", "must be at least 1"));
    } else if min_replicas > max_replicas {
        errs.push(ConfigError::new(
            "minReplicaCount",
            format!("{min_replicas} is greater than maxReplicaCount {max_replicas}"),
        ));
    }
    let max_scale_up_step = collect(&mut errs, md.u32("maxScaleUpStep")).flatten();
    if max_scale_up_step == Some(0) {
        errs.push(ConfigError::new("maxScaleUpStep", "must be at least 1"));
    }
    let scale_down_stabilization = collect(&mut errs, non_negative_seconds(md, "scaleDownStabilizationSeconds"))
        .flatten()
        .unwrap_or(DEFAULT_STABILIZATION);
    let cooldown = collect(&mut errs, non_negative_seconds(md, "cooldownPeriod")).flatten().unwrap_or(DEFAULT_COOLDOWN);
    let metric_name = md.get("metricName").map(str::to_string);
    if let Some(name) = &metric_name
        && !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        errs.push(ConfigError::new("metricName", "may hold only letters, digits, '-', '_' and '.'"));
    }
    let rule = collect(&mut errs, rule(md)).unwrap_or_default();
    errs.into_result()?;
    Ok(TriggerOptions {
        polling_interval,
        policy: Policy {
            output_mode,
            target,
            min_replicas,
            max_replicas,
            max_scale_up_step,
            scale_down_stabilization,
            cooldown,
            rule,
        },
        metric_name,
    })
}

/// `policy` and the `drain` keys.
fn rule(md: &Metadata<'_>) -> Result<Rule, ConfigError> {
    if md.one_of("policy", &["backlog", "drain"])? != Some("drain") {
        return Ok(Rule::Backlog);
    }
    let d = DrainConfig::default();
    let positive = |key: &str| -> Result<Option<f64>, ConfigError> {
        match md.f64(key)? {
            Some(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
            Some(v) => Err(ConfigError::new(key, format!("{v} must be greater than 0"))),
            None => Ok(None),
        }
    };
    let secs = |key: &str, default: Duration| -> Result<Duration, ConfigError> {
        Ok(positive(key)?.map_or(default, Duration::from_secs_f64))
    };
    let utilization = positive("targetUtilization")?.unwrap_or(d.utilization);
    if utilization > 1.0 {
        return Err(ConfigError::new("targetUtilization", format!("{utilization} must be at most 1")));
    }
    let stall_polls = md.u32("stallPolls")?.unwrap_or(d.stall_polls);
    if stall_polls == 0 {
        return Err(ConfigError::new("stallPolls", "must be at least 1"));
    }
    Ok(Rule::Drain(DrainConfig {
        throughput: positive("throughputPerReplica")?,
        drain: secs("drainSeconds", d.drain)?,
        utilization,
        startup: non_negative_seconds(md, "startupSeconds")?.unwrap_or(d.startup),
        short: secs("rateWindowShortSeconds", d.short)?,
        long: secs("rateWindowLongSeconds", d.long)?,
        down_window: non_negative_seconds(md, "downWindowSeconds")?.unwrap_or(d.down_window),
        stall_polls,
        min_change: non_negative_seconds(md, "minChangeIntervalSeconds")?.unwrap_or(d.min_change),
    }))
}

/// Seconds ≥ 0 (0 turns a window off), fractional allowed.
fn non_negative_seconds(md: &Metadata<'_>, key: &str) -> Result<Option<Duration>, ConfigError> {
    md.get(key)
        .map(|v| match v.parse::<f64>() {
            Ok(s) if s.is_finite() && (0.0..1e9).contains(&s) => Ok(Duration::from_secs_f64(s)),
            _ => Err(ConfigError::new(key, format!("{v:?} is not a non-negative number of seconds"))),
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse_pairs(pairs: &[(&str, &str)]) -> Result<TriggerOptions, ConfigErrors> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse(&Metadata::new(&m), 10.0)
    }

    #[test]
    fn defaults() {
        let o = parse_pairs(&[]).unwrap();
        assert_eq!(o.polling_interval, Duration::from_secs(5));
        assert_eq!(o.policy, Policy::metric(10.0));
        assert_eq!(o.metric_name, None);
    }

    /// `policy: drain` and its keys; each bad value names its key.
    #[test]
    fn drain_keys_parse_and_bad_ones_are_named() {
        assert_eq!(parse_pairs(&[]).unwrap().policy.rule, Rule::Backlog);
        let o = parse_pairs(&[
            ("policy", "drain"),
            ("throughputPerReplica", "25"),
            ("startupSeconds", "0"),
            ("minChangeIntervalSeconds", "30"),
        ])
        .unwrap();
        let Rule::Drain(d) = o.policy.rule else { panic!("drain") };
        assert_eq!((d.throughput, d.startup, d.drain), (Some(25.0), Duration::ZERO, Duration::from_secs(10)));
        assert_eq!(d.min_change, Duration::from_secs(30));
        for (key, value) in [
            ("policy", "fast"),
            ("throughputPerReplica", "0"),
            ("drainSeconds", "-1"),
            ("targetUtilization", "1.5"),
            ("startupSeconds", "soon"),
            ("rateWindowLongSeconds", "0"),
            ("downWindowSeconds", "-5"),
            ("stallPolls", "0"),
            ("minChangeIntervalSeconds", "-1"),
        ] {
            let mut pairs = vec![("policy", "drain")];
            pairs.retain(|(k, _)| *k != key);
            pairs.push((key, value));
            let e = parse_pairs(&pairs).unwrap_err();
            assert_eq!(e.keys(), vec![key], "{key}={value}");
        }
    }

    #[test]
    fn each_bad_key_is_named() {
        let rows: &[(&[(&str, &str)], &str)] = &[
            (&[("pollingInterval", "0")], "pollingInterval"),
            (&[("pollingInterval", "soon")], "pollingInterval"),
            (&[("outputMode", "bogus")], "outputMode"),
            (&[("minReplicaCount", "-1")], "minReplicaCount"),
            (&[("minReplicaCount", "5"), ("maxReplicaCount", "2")], "minReplicaCount"),
            (&[("maxReplicaCount", "0")], "maxReplicaCount"),
            (&[("maxScaleUpStep", "0")], "maxScaleUpStep"),
            (&[("scaleDownStabilizationSeconds", "-3")], "scaleDownStabilizationSeconds"),
            (&[("cooldownPeriod", "x")], "cooldownPeriod"),
            (&[("metricName", "a b")], "metricName"),
        ];
        for (pairs, key) in rows {
            let e = parse_pairs(pairs).unwrap_err();
            assert_eq!(e.keys(), vec![*key], "{pairs:?}");
        }
    }

    #[test]
    fn replicas_mode_knobs() {
        let o = parse_pairs(&[
            ("outputMode", "Replicas"),
            ("minReplicaCount", "1"),
            ("maxReplicaCount", "20"),
            ("maxScaleUpStep", "4"),
            ("scaleDownStabilizationSeconds", "0"),
            ("cooldownPeriod", "30.5"),
            ("pollingInterval", "0.5"),
        ])
        .unwrap();
        assert_eq!(o.policy.output_mode, OutputMode::Replicas);
        assert_eq!((o.policy.min_replicas, o.policy.max_replicas, o.policy.max_scale_up_step), (1, 20, Some(4)));
        assert_eq!(o.policy.scale_down_stabilization, Duration::ZERO);
        assert_eq!(o.policy.cooldown, Duration::from_secs_f64(30.5));
        assert_eq!(o.polling_interval, Duration::from_millis(500));
    }
}
