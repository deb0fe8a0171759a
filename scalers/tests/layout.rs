//! The import rule: a source module uses shared modules (`azure`, `context`, `http`,
//! `metadata`, `registry`, `secret`, `trust`) and the crate root, never another source; shared
//! modules use no source. Adding or changing a scaler then touches only its own module.

use std::path::{Path, PathBuf};

/// Source modules: one per registered scaler type (`azure-queue` → `azure_queue`).
fn sources() -> Vec<String> {
    ebb_scalers::Registry::default().scalers().iter().map(|r| r.scaler_type.replace('-', "_")).collect()
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The `.rs` files of a module: `<name>.rs` or everything under `<name>/`.
fn files(name: &str) -> Vec<PathBuf> {
    let file = src().join(format!("{name}.rs"));
    if file.exists() {
        return vec![file];
    }
    let mut out = Vec::new();
    let mut dirs = vec![src().join(name)];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out
}

/// Every `crate::<name>` and `super::super` in `file` naming one of `forbidden`.
fn uses(file: &Path, forbidden: &[String]) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        for f in forbidden {
            let direct = format!("crate::{f}");
            let hit = code
                .match_indices(&direct)
                .any(|(i, _)| !code[i + direct.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_'));
            // `use crate::{…, name, …}` and `use crate::{name::…}` in a group.
            let grouped = code.contains("crate::{")
                && code.split(['{', '}', ',', ' ']).any(|w| w == f || w.starts_with(&format!("{f}::")));
            if hit || grouped {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
        if code.contains("super::super") {
            found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
        }
    }
    found
}

#[test]
fn sources_import_shared_modules_only() {
    let sources = sources();
    assert!(sources.len() >= 5, "{sources:?}");
    let mut found = Vec::new();
    for s in &sources {
        let others: Vec<String> = sources.iter().filter(|o| *o != s).cloned().collect();
        for f in files(s) {
            found.extend(uses(&f, &others));
        }
    }
    for shared in ["azure", "context", "http", "metadata", "secret", "trust"] {
        for f in files(shared) {
            found.extend(uses(&f, &sources));
        }
    }
    assert!(found.is_empty(), "imports across the rule:\n{}", found.join("\n"));
}

#[test]
fn the_rule_catches_a_sibling_import() {
    let dir = std::env::temp_dir().join(format!("ebb-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("x.rs");
    let forbidden = vec!["azure_queue".to_string(), "kafka".to_string()];
    std::fs::write(&f, "use crate::azure_queue::AccountKey;\nuse crate::{kafka, metadata};\n// crate::kafka in a comment\nuse crate::kafka_like;\n").unwrap();
    assert_eq!(uses(&f, &forbidden).len(), 2);
    std::fs::remove_dir_all(&dir).ok();
}
