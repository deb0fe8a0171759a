//! ebb's YAML config file (`ebb serve --config`): `bridge::Config::parse`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match ebb::bridge::Config::parse(text) {
        Ok(cfg) => {
            // Documented: no ScaledObject is declared twice.
            let mut seen = std::collections::HashSet::new();
            for so in &cfg.scaled_objects {
                assert!(seen.insert((so.namespace.as_str(), so.name.as_str())));
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
