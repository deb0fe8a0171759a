//! ebb's own Prometheus metrics, served on `/metrics`.
//!
//! Names follow `ebb_<subject>_<name>_<unit>[_total]`; labels are bounded (scaler type,
//! error kind, RPC) except the per-ScaledObject gauges, whose series are removed when the
//! trigger is evicted.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScalerLabels {
    pub scaler: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub scaler: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub rpc: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaledObjectLabels {
    pub namespace: String,
    pub scaledobject: String,
    pub metric: String,
}

/// Every metric ebb exports.
pub struct Metrics {
    pub poll_duration_seconds: Family<ScalerLabels, Histogram>,
    pub poll_errors_total: Family<ErrorLabels, Counter>,
    pub upstream_calls_total: Family<ScalerLabels, Counter>,
    pub cache_hits_total: Counter,
    pub cache_misses_total: Counter,
    pub active_streams: Family<RpcLabels, Gauge>,
    pub sources: Gauge,
    pub triggers: Gauge,
    pub metric_value: Family<ScaledObjectLabels, Gauge<f64, AtomicU64>>,
    pub desired_replicas: Family<ScaledObjectLabels, Gauge>,
    /// `policy: drain`'s estimates per trigger.
    pub arrival_rate: Family<ScaledObjectLabels, Gauge<f64, AtomicU64>>,
    pub throughput_per_replica: Family<ScaledObjectLabels, Gauge<f64, AtomicU64>>,
    pub ready_replicas_estimate: Family<ScaledObjectLabels, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them under the `ebb` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            poll_duration_seconds: Family::new_with_constructor(|| {
                Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            }),
            poll_errors_total: Family::default(),
            upstream_calls_total: Family::default(),
            cache_hits_total: Counter::default(),
            cache_misses_total: Counter::default(),
            active_streams: Family::default(),
            sources: Gauge::default(),
            triggers: Gauge::default(),
            metric_value: Family::default(),
            desired_replicas: Family::default(),
            arrival_rate: Family::default(),
            throughput_per_replica: Family::default(),
            ready_replicas_estimate: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("ebb");
        r.register("poll_duration_seconds", "Duration of source polls", m.poll_duration_seconds.clone());
        r.register("poll_errors", "Failed source polls by error kind", m.poll_errors_total.clone());
        r.register("upstream_calls", "Requests made to event sources", m.upstream_calls_total.clone());
        r.register("cache_hits", "KEDA requests answered from a cached measurement", m.cache_hits_total.clone());
        r.register(
            "cache_misses",
            "KEDA requests that had to wait for a source's first poll",
            m.cache_misses_total.clone(),
        );
        r.register("active_streams", "Open StreamIsActive / StreamMetricSpec streams", m.active_streams.clone());
        r.register("sources", "Distinct sources being polled", m.sources.clone());
        r.register("scaledobject_triggers", "ScaledObject triggers being tracked", m.triggers.clone());
        r.register("scaledobject_metric_value", "Metric value served per ScaledObject trigger", m.metric_value.clone());
        r.register(
            "scaledobject_desired_replicas",
            "ebb's desired replica count per ScaledObject trigger",
            m.desired_replicas.clone(),
        );
        r.register(
            "scaledobject_arrival_rate_per_second",
            "policy: drain: estimated arrival rate (messages/s) per ScaledObject trigger",
            m.arrival_rate.clone(),
        );
        r.register(
            "scaledobject_throughput_per_replica_per_second",
            "policy: drain: per-replica throughput (messages/s) used per ScaledObject trigger",
            m.throughput_per_replica.clone(),
        );
        r.register(
            "scaledobject_ready_replicas_estimate",
            "policy: drain: replicas ebb counts as ready (asked for at least startupSeconds ago)",
            m.ready_replicas_estimate.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_units_and_total_suffix() {
        let mut reg = Registry::default();
        let m = Metrics::new(&mut reg);
        m.poll_errors_total.get_or_create(&ErrorLabels { scaler: "prometheus".into(), kind: "timeout".into() }).inc();
        m.poll_duration_seconds.get_or_create(&ScalerLabels { scaler: "prometheus".into() }).observe(0.1);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains("ebb_poll_errors_total{scaler=\"prometheus\",kind=\"timeout\"} 1"), "{out}");
        assert!(out.contains("ebb_poll_duration_seconds_bucket"), "{out}");
        assert!(out.contains("ebb_cache_hits_total"), "{out}");
    }
}
