//! Event Hubs runtime answers (`EventHubDescription/PartitionIds`, `PartitionDescription`),
//! checkpoint payloads of every strategy, and the unprocessed-event arithmetic on what they
//! yield.
#![no_main]

use ebb_scalers::azure_eventhub::{
    Strategy, capped, parse_partition, parse_partition_ids, total, unprocessed,
};
use libfuzzer_sys::fuzz_target;

const STRATEGIES: [Strategy; 5] =
    [Strategy::AzureFunction, Strategy::BlobMetadata, Strategy::GoSdk, Strategy::Dapr, Strategy::Legacy];

fuzz_target!(|data: &[u8]| {
    // First byte: knobs; the rest: the body.
    let Some((&knob, rest)) = data.split_first() else { return };
    let Ok(body) = std::str::from_utf8(rest) else { return };
    if let Ok(ids) = parse_partition_ids(body) {
        assert!(ids.iter().all(|id| !id.is_empty() && id.trim() == id));
    }
    let checkpoint = STRATEGIES[usize::from(knob) % STRATEGIES.len()].parse_payload(body).ok();
    if let Ok(p) = parse_partition(body) {
        for stale in [0, 1, i64::from(knob), i64::MAX, i64::MIN, -1] {
            for ck in [checkpoint, None, Some(p.begin), Some(p.last), Some(i64::MIN), Some(i64::MAX)] {
                let n = unprocessed(p, ck, stale);
                let t = total([n, n, i64::from(knob)]);
                let _ = capped(t, i64::from(knob) - 1, u32::from(knob));
                let _ = capped(t, i64::MAX, u32::MAX);
            }
        }
    }
});
