//! Service Bus management answers: ATOM entries and feeds (`CountDetails`, paging links) and
//! the `<Detail>` of error bodies.
#![no_main]

use ebb_scalers::azure::xml::element_text;
use ebb_scalers::azure_servicebus::parse_atom;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else { return };
    match parse_atom(body) {
        Ok(doc) => {
            for e in &doc.entries {
                match e.active_count("fuzz") {
                    Ok(n) => assert!(n >= 0, "a count is never negative"),
                    Err(err) => {
                        assert!(matches!(err.kind(), "throttled" | "malformed"), "{err:?}");
                        let _ = err.to_string();
                    }
                }
            }
        }
        Err(e) => {
            let _ = e;
        }
    }
    let _ = element_text(body, "Detail");
});
