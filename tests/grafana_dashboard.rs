//! `deploy/grafana/ebb-dashboard.json` reads what ebb exports: every metric name its panels and
//! variables query is one `/metrics` serves (with the `_total`, `_bucket`, `_count` and `_sum`
//! sample suffixes), every label they group or filter by is one ebb sets, and every metric ebb
//! exports has a panel.

use std::collections::BTreeSet;

use ebb::metrics::{ErrorLabels, Metrics, RpcLabels, ScaledObjectLabels, ScalerLabels};
use prometheus_client::registry::Registry;
use serde_json::Value;

/// The sample names `/metrics` serves once every family has a sample.
fn exported() -> BTreeSet<String> {
    let mut registry = Registry::default();
    let m = Metrics::new(&mut registry);
    let scaler = ScalerLabels { scaler: "prometheus".into() };
    let so = ScaledObjectLabels { namespace: "ns".into(), scaledobject: "so".into(), metric: "m".into() };
    m.poll_duration_seconds.get_or_create(&scaler).observe(0.1);
    m.poll_errors_total.get_or_create(&ErrorLabels { scaler: "prometheus".into(), kind: "timeout".into() }).inc();
    m.upstream_calls_total.get_or_create(&scaler).inc();
    m.active_streams.get_or_create(&RpcLabels { rpc: "StreamIsActive".into() }).inc();
    m.metric_value.get_or_create(&so).set(1.0);
    m.desired_replicas.get_or_create(&so).set(1);
    m.arrival_rate.get_or_create(&so).set(1.0);
    m.throughput_per_replica.get_or_create(&so).set(1.0);
    m.ready_replicas_estimate.get_or_create(&so).set(1);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// Every `ebb_…` name in a PromQL expression.
fn names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("ebb_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// Label names in `by (…)` groupings and `{label=~…}` matchers.
fn labels(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in expr.split("by (").skip(1) {
        out.extend(part.split(')').next().unwrap().split(',').map(|l| l.trim().to_owned()));
    }
    for part in expr.split('{').skip(1) {
        for m in part.split('}').next().unwrap().split(',') {
            if let Some(k) = m.split(['=', '!']).next() {
                out.push(k.trim().to_owned());
            }
        }
    }
    out.retain(|l| !l.is_empty());
    out
}

#[test]
fn dashboard_panels_query_what_ebb_exports() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/ebb-dashboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("dashboard JSON");
    let exported = exported();
    let known_labels: BTreeSet<&str> = ["scaler", "kind", "rpc", "namespace", "scaledobject", "metric", "le"].into();
    let mut exprs: Vec<String> = Vec::new();
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    for p in panels {
        assert!(p["title"].is_string() && p["gridPos"]["w"].is_u64(), "{p}");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{} has no targets", p["title"]));
        assert!(!targets.is_empty(), "{}", p["title"]);
        exprs.extend(targets.iter().map(|t| t["expr"].as_str().expect("expr").to_owned()));
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            exprs.push(q.to_owned());
        }
    }
    let mut used = BTreeSet::new();
    for e in &exprs {
        for n in names(e) {
            assert!(exported.contains(&n), "{n} (in {e}) is not a metric ebb exports: {exported:?}");
            used.insert(n);
        }
        for l in labels(e) {
            assert!(known_labels.contains(l.as_str()), "label {l} (in {e}) is not one ebb sets");
        }
    }
    // Every family has a panel (a histogram through its buckets or count).
    let families: BTreeSet<String> = exported
        .iter()
        .map(|n| n.trim_end_matches("_bucket").trim_end_matches("_count").trim_end_matches("_sum").to_owned())
        .collect();
    for f in families {
        assert!(used.iter().any(|u| u.starts_with(&f)), "no panel shows {f}");
    }
}

#[test]
fn the_checks_catch_a_wrong_name_or_label() {
    assert_eq!(names("sum by (scaler) (rate(ebb_upstream_calls_total[5m]))"), ["ebb_upstream_calls_total"]);
    assert_eq!(labels("sum by (le, scaler) (rate(x{namespace=~\"$ns\"}[5m]))"), ["le", "scaler", "namespace"]);
    assert!(!exported().contains("ebb_upstream_calls"), "counters are served with _total");
}
