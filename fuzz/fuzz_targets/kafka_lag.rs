//! Kafka lag formulas: `total_lag` over arbitrary partitions and rules, and
//! `parse_partition_limitation`.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use ebb_scalers::kafka::{
    LagRules, OffsetReset, PartitionOffsets, even_factor, parse_partition_limitation, partition_lag, total_lag,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    lag_threshold: i64,
    activation_lag_threshold: i64,
    earliest: bool,
    allow_idle_consumers: bool,
    exclude_persistent_lag: bool,
    scale_to_zero_on_invalid_offset: bool,
    limit_to_partitions_with_lag: bool,
    ensure_even_distribution: bool,
    parts: Vec<(i32, Option<i64>, i64, bool)>,
    limitation: String,
}

fuzz_target!(|input: Input| {
    let r = LagRules {
        lag_threshold: input.lag_threshold,
        activation_lag_threshold: input.activation_lag_threshold,
        offset_reset: if input.earliest { OffsetReset::Earliest } else { OffsetReset::Latest },
        allow_idle_consumers: input.allow_idle_consumers,
        exclude_persistent_lag: input.exclude_persistent_lag,
        scale_to_zero_on_invalid_offset: input.scale_to_zero_on_invalid_offset,
        limit_to_partitions_with_lag: input.limit_to_partitions_with_lag,
        ensure_even_distribution: input.ensure_even_distribution,
    };
    let topic: Arc<str> = Arc::from("t");
    let parts: Vec<PartitionOffsets> = input
        .parts
        .into_iter()
        .take(4096)
        .map(|(partition, committed, latest, unchanged)| PartitionOffsets {
            topic: topic.clone(),
            partition,
            committed,
            latest,
            unchanged,
        })
        .collect();
    for p in &parts {
        let (lag, lag_p) = partition_lag(p, &r);
        assert!(lag >= 0 && lag_p >= 0, "{p:?} {r:?} -> {lag} {lag_p}");
        assert!(lag <= lag_p, "the metric lag never exceeds the activation lag");
    }
    let (metric, activation) = total_lag(&parts, &r);
    assert!(metric >= 0 && activation >= 0, "{metric} {activation}");
    // The documented contract of `even_factor`: a divisor of `partitions`, or `partitions`.
    let n = parts.len() as i64;
    if n > 0 {
        let f = even_factor(activation, n, r.lag_threshold.max(1));
        assert!(f >= 1 && n % f == 0, "{f} {n}");
    }

    if let Ok(ranges) = parse_partition_limitation(&input.limitation) {
        for rg in &ranges {
            for p in parts.iter().take(16) {
                let _ = rg.contains(&p.partition);
            }
        }
    }
});
