//! Prometheus query answers read to one value (`prometheus::interpret`).
#![no_main]

use ebb_scalers::prometheus::interpret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&knob, body)) = data.split_first() else { return };
    let ignore_null_values = knob & 1 == 1;
    match interpret(body, "up", ignore_null_values) {
        // Non-finite values are nulls: never handed on.
        Ok(v) => assert!(v.is_finite(), "{v}"),
        Err(e) => {
            assert!(matches!(e.kind(), "malformed" | "rejected"), "{e:?}");
            let _ = e.to_string();
        }
    }
});
