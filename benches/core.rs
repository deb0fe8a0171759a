//! Micro benchmarks: the decision function and metadata parsing.
//! Run: `cargo bench --bench core`.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ebb::engine::decision::{self, DecisionState};
use ebb::engine::policy::{OutputMode, Policy};
use ebb_scalers::Evaluation;
use tokio::time::Instant;

fn bench_decision(c: &mut Criterion) {
    let policy = Policy {
        output_mode: OutputMode::Replicas,
        target: 10.0,
        min_replicas: 0,
        max_replicas: 100,
        max_scale_up_step: Some(4),
        scale_down_stabilization: Duration::from_secs(300),
        cooldown: Duration::from_secs(300),
        rule: ebb::engine::policy::Rule::Backlog,
    };
    let t0 = Instant::now();
    let mut state = DecisionState::new();
    // A realistic history: 60 observations of a noisy backlog, 5 s apart.
    for i in 0..60u64 {
        let m = ((i * 37) % 90) as f64;
        decision::observe(
            &mut state,
            &policy,
            Evaluation { metric: m, active: m > 0.0 },
            t0 + Duration::from_secs(i * 5),
        );
    }
    let now = t0 + Duration::from_secs(301);
    c.bench_function("decide (replicas mode, 300 s window)", |b| {
        b.iter(|| decision::decide(black_box(&state), black_box(&policy), black_box(now)))
    });
    c.bench_function("observe + decide", |b| {
        let mut s = state.clone();
        let mut i = 60u64;
        b.iter(|| {
            i += 1;
            let at = t0 + Duration::from_secs(i * 5);
            decision::observe(&mut s, &policy, Evaluation { metric: (i % 90) as f64, active: true }, at);
            decision::decide(&s, &policy, at)
        })
    });
}

fn bench_parse(c: &mut Criterion) {
    let md: HashMap<String, String> = [
        ("scalerType", "prometheus"),
        ("serverAddress", "http://prometheus.monitoring.svc:9090"),
        ("query", "sum(rate(http_requests_total{deployment=\"my-deployment\"}[2m]))"),
        ("threshold", "100.50"),
        ("activationThreshold", "5.5"),
        ("customHeaders", "X-Client-Id=cid,X-Tenant-Id=tid"),
        ("pollingInterval", "5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let registry = ebb_scalers::Registry::default();
    c.bench_function("parse prometheus metadata", |b| b.iter(|| registry.parse(black_box(&md)).unwrap()));
    c.bench_function("trigger hash (per request)", |b| {
        b.iter(|| ebb::engine::trigger::trigger_hash(black_box("ns"), black_box("so"), black_box(&md)))
    });
}

criterion_group!(benches, bench_decision, bench_parse);
criterion_main!(benches);
