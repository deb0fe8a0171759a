//! Every relative link in the README, CONTRIBUTING.md and `docs/` resolves: the file exists and,
//! for `#anchor`, the target has a heading with that GitHub anchor. No server needed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The pages checked: README.md, CONTRIBUTING.md and every `docs/*.md`.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md"), repo().join("CONTRIBUTING.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// Lines outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fence = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fence = !fence;
                return false;
            }
            !fence
        })
        .collect()
}

/// GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores
/// kept), spaces to hyphens; a repeated heading gets `-1`, `-2`, ….
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for line in prose(text) {
        let Some(title) = line.strip_prefix('#').map(|t| t.trim_start_matches('#')) else { continue };
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while seen.contains(&unique) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
        seen.insert(unique);
    }
    seen
}

/// `(target)` of every `[text](target)` and `![alt](target)` outside code.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        // Inline code may show link syntax without being a link.
        let line: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("page");
        let dir = page.parent().unwrap_or(Path::new("."));
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = link.split_once('#').map_or((link.as_str(), None), |(p, a)| (p, Some(a)));
            let target = if path.is_empty() { page.clone() } else { dir.join(path) };
            if !target.exists() {
                broken.push(format!("{}: {link}: no such file", page.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                let body = std::fs::read_to_string(&target).unwrap_or_default();
                if !anchors(&body).contains(anchor) {
                    broken.push(format!("{}: {link}: no heading with that anchor", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked >= 20, "only {checked} links found: is the parser reading the pages?");
}

#[test]
fn anchors_follow_githubs_rules() {
    let a = anchors(
        "# Operating ebb\n## `policy: drain`\n## Azure Container Apps bridge (`serve --config`)\n## Figures\n## Figures\n```\n# not a heading\n```\n",
    );
    for want in ["operating-ebb", "policy-drain", "azure-container-apps-bridge-serve---config", "figures", "figures-1"]
    {
        assert!(a.contains(want), "{want} in {a:?}");
    }
    assert!(!a.contains("not-a-heading"));
}

/// The README stays the front door: the two commands first, at most about 300 lines.
#[test]
fn readme_is_the_front_door() {
    let text = std::fs::read_to_string(repo().join("README.md")).expect("README");
    let serve = text.find("cargo run --release -- serve").expect("the serve command");
    let test = text.find("scripts/test.sh").expect("the test command");
    assert!(serve < test && test < 1_500, "the two commands open the README");
    assert!(text.lines().count() <= 300, "README has {} lines", text.lines().count());
}

/// The keys in the first column of the markdown table rows of `lines` (`| `key` | …`; a cell
/// may name several keys, `a`, `b`).
fn table_keys<'a>(lines: impl Iterator<Item = &'a str>) -> std::collections::BTreeSet<String> {
    let mut keys = std::collections::BTreeSet::new();
    for line in lines {
        let Some(cell) = line.trim_start().strip_prefix('|').and_then(|r| r.split('|').next()) else { continue };
        for part in cell.split('`').skip(1).step_by(2) {
            keys.insert(part.to_string());
        }
    }
    keys
}

/// Each scaler's metadata table is written for users in docs/scalers.md, under a heading naming
/// `scalerType: <type>`, and next to the code in its module doc; for every registered scaler the
/// keys must be the same in both.
#[test]
fn scaler_tables_match_the_modules() {
    let docs = std::fs::read_to_string(repo().join("docs/scalers.md")).expect("docs/scalers.md");
    let mut differences = Vec::new();
    for r in ebb_scalers::Registry::default().scalers() {
        let marker = format!("`scalerType: {}", r.scaler_type);
        let heading = docs
            .lines()
            .find(|l| l.starts_with("## ") && l.contains(&marker))
            .unwrap_or_else(|| panic!("a `## ` heading naming {marker}` in docs/scalers.md"));
        let start = docs.find(heading).expect("heading");
        let body = &docs[start + heading.len()..];
        let body = &body[..body.find("\n## ").unwrap_or(body.len())];
        let in_docs = table_keys(body.lines());
        let name = r.scaler_type.replace('-', "_");
        let module = ["scalers/src/{}/mod.rs", "scalers/src/{}.rs"]
            .iter()
            .map(|p| repo().join(p.replace("{}", &name)))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("the module of {}", r.scaler_type));
        let code = std::fs::read_to_string(&module).expect("module");
        let in_module = table_keys(code.lines().filter_map(|l| l.strip_prefix("//!")));
        if in_docs != in_module {
            let only_docs: Vec<_> = in_docs.difference(&in_module).collect();
            let only_module: Vec<_> = in_module.difference(&in_docs).collect();
            differences
                .push(format!("{}: only in docs {only_docs:?}, only in the module {only_module:?}", module.display()));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}
