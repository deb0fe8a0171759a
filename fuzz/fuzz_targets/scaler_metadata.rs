//! Trigger metadata of every scaler (`ebb_scalers::Registry::parse`), then ebb's own policy
//! keys (`engine::policy::parse`), the way the engine parses a new trigger.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use ebb::engine::policy;
use ebb_scalers::kafka::PartitionOffsets;
use ebb_scalers::registry::SCALER_TYPE_KEY;
use ebb_scalers::{Measurement, Metadata, Registry};
use libfuzzer_sys::fuzz_target;

/// Edge measurements every parsed scaler is evaluated against.
fn probes() -> Vec<Measurement> {
    let mut out: Vec<Measurement> = [0.0, -1.0, 0.5, 1e308, f64::MAX, f64::MIN, f64::INFINITY, f64::NEG_INFINITY, f64::NAN]
        .into_iter()
        .flat_map(|v| [Measurement::Value(v), Measurement::Partitions { unprocessed: v, partitions: 0, sequence: None }, Measurement::Partitions { unprocessed: v, partitions: u32::MAX, sequence: Some((v, v / 2.0)) }])
        .collect();
    let part = |partition, committed, latest, unchanged| PartitionOffsets { topic: Arc::from("t"), partition, committed, latest, unchanged };
    out.push(Measurement::Offsets(Arc::from(Vec::new())));
    out.push(Measurement::Offsets(Arc::from(vec![
        part(0, None, i64::MAX, false),
        part(1, Some(i64::MIN), i64::MAX, true),
        part(2, Some(i64::MAX), i64::MIN, false),
        part(-1, Some(5), 10, true),
    ])));
    out.push(Measurement::Offsets((0..1000).map(|i| part(i, Some(0), i64::MAX / 2, i % 2 == 0)).collect()));
    out
}

static PROBES: LazyLock<Vec<Measurement>> = LazyLock::new(probes);
/// The built-in scalers, as `serve` registers them (default settings).
static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);

// Input: the first byte picks `scalerType` from the registry (0xff: left to the pairs); the rest
// is UTF-8 `key=value` lines (split at the first `=`).
fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let mut map: HashMap<String, String> = HashMap::new();
    for line in text.split('\n') {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        map.insert(k.to_string(), v.to_string());
    }
    let scalers = REGISTRY.scalers();
    let ty = (pick != 0xff).then(|| scalers[usize::from(pick) % scalers.len()].scaler_type);
    if let Some(ty) = ty {
        map.insert(SCALER_TYPE_KEY.to_string(), ty.to_string());
    }

    let scaler = match REGISTRY.parse(&map) {
        Ok(s) => s,
        Err(e) => {
            assert!(!e.0.is_empty(), "an error names at least one key");
            let _ = e.to_string();
            return;
        }
    };
    if let Some(ty) = ty {
        assert_eq!(scaler.scaler_type(), ty);
    }
    // `Scaler::target`: "Always > 0".
    let target = scaler.target();
    assert!(target > 0.0, "target {target} for {map:?}");
    let _ = scaler.source_key().to_string();
    let _ = scaler.poll_timeout();
    let _ = format!("{scaler:?}");
    for m in PROBES.iter() {
        let e = scaler.evaluate(m);
        let _ = (e.metric, e.active);
    }

    match policy::parse(&Metadata::new(&map), target) {
        Ok(o) => {
            let p = &o.policy;
            assert!(p.max_replicas >= 1);
            assert!(p.min_replicas <= p.max_replicas);
            assert_ne!(p.max_scale_up_step, Some(0));
            assert!(o.polling_interval > std::time::Duration::ZERO || map.contains_key("pollingInterval"));
            let _ = ebb::engine::trigger::default_metric_name(scaler.scaler_type(), &map);
        }
        Err(e) => assert!(!e.0.is_empty()),
    }
});
