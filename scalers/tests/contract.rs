//! The contract every registered scaler keeps, run over the registry (a new scaler gets it by
//! registering): its example metadata parses into a config that names its type, has a target
//! above 0 and a poll deadline; every error names a key; and no secret of the metadata shows in
//! `Debug`, the source key or an error. Secret values in the examples contain `s3cr3t` (or its
//! base64, `czNjcjN0`).

use std::collections::HashMap;

use ebb_scalers::{ConfigErrors, Registry};

const MARKERS: &[&str] = &["s3cr3t", "czNjcjN0"];

fn leaks(text: &str) -> Option<&'static str> {
    MARKERS.iter().copied().find(|m| text.contains(m))
}

fn metadata(scaler_type: &str, pairs: &[(&str, &str)]) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    m.insert("scalerType".into(), scaler_type.into());
    m
}

/// Every error names a key (non-empty, no spaces) and quotes no secret.
fn check_errors(what: &str, e: &ConfigErrors) {
    assert!(!e.0.is_empty(), "{what}: an error without a cause");
    for err in &e.0 {
        assert!(!err.key.is_empty() && !err.key.contains(' '), "{what}: error without a key: {err}");
    }
    if let Some(m) = leaks(&e.to_string()) {
        panic!("{what}: the error shows a secret ({m}): {e}");
    }
}

#[test]
fn every_registered_scaler_keeps_the_contract() {
    let registry = Registry::default();
    assert!(registry.scalers().len() >= 5);
    for r in registry.scalers() {
        let ty = r.scaler_type;
        assert!(
            r.example.iter().any(|(_, v)| leaks(v).is_some()),
            "{ty}: the example should carry a secret for the checks below"
        );

        // The example parses; the config names its type and has a usable target and deadline.
        let s = registry.parse(&metadata(ty, r.example)).unwrap_or_else(|e| panic!("{ty}: example: {e}"));
        assert_eq!(s.scaler_type(), ty);
        assert!(s.target() > 0.0 && s.target().is_finite(), "{ty}: target {}", s.target());
        assert!(!s.poll_timeout().is_zero(), "{ty}: no poll deadline");
        for shown in [format!("{s:?}"), s.source_key().to_string()] {
            assert!(leaks(&shown).is_none(), "{ty}: a secret shows in {shown}");
        }
        // Unknown keys are ignored, as KEDA ignores them.
        let mut extra = metadata(ty, r.example);
        extra.insert("notAKeyAnyScalerReads".into(), "x".into());
        registry.parse(&extra).unwrap_or_else(|e| panic!("{ty}: an unknown key fails the parse: {e}"));

        // Nothing but the type: an error that names a key.
        match registry.parse(&metadata(ty, &[])) {
            Err(e) => check_errors(&format!("{ty} with no metadata"), &e),
            Ok(_) => panic!("{ty}: parses with no metadata"),
        }

        for (i, (key, value)) in r.example.iter().enumerate() {
            // Without this key.
            let mut without: Vec<_> = r.example.to_vec();
            without.remove(i);
            if let Err(e) = registry.parse(&metadata(ty, &without)) {
                check_errors(&format!("{ty} without {key}"), &e);
            }
            // With a broken value: a secret stays a secret, however it is broken.
            let broken = if leaks(value).is_some() {
                vec![format!("{value};s3cr3t"), "s3cr3t\u{1}".to_string(), format!("{value}\u{1}=s3cr3t%%")]
            } else {
                vec!["\u{1}-1.5 not valid".to_string()]
            };
            for b in &broken {
                let mut bad: Vec<(&str, &str)> = r.example.to_vec();
                bad[i].1 = b;
                if let Err(e) = registry.parse(&metadata(ty, &bad)) {
                    check_errors(&format!("{ty} with a broken {key}"), &e);
                }
            }
        }
    }
}
