//! Repository rules from ARCHITECTURE.md, checked by plain `cargo test`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

const CRATES: &[&str] = &["mappings", "secure-gateway", "ledger", "adapters", "sandbox", "gateway"];

/// Which vaxgate crates each crate may depend on (the dependency order).
fn allowed(c: &str) -> &'static [&'static str] {
    match c {
        "mappings" | "secure-gateway" => &[],
        "ledger" => &["secure-gateway"],
        "adapters" => &["mappings", "secure-gateway"],
        "sandbox" => &["mappings", "secure-gateway", "ledger", "adapters"],
        "gateway" => &["mappings", "secure-gateway", "ledger", "adapters", "sandbox"],
        _ => panic!("unknown crate {c}"),
    }
}

#[test]
fn crates_depend_only_downwards() {
    for c in CRATES {
        let text = std::fs::read_to_string(root().join(c).join("Cargo.toml")).unwrap();
        let manifest: toml::Table = toml::from_str(&text).unwrap();
        for section in ["dependencies", "build-dependencies"] {
            let Some(deps) = manifest.get(section).and_then(|d| d.as_table()) else {
                continue;
            };
            for dep in deps.keys() {
                if CRATES.contains(&dep.as_str()) {
                    assert!(
                        allowed(c).contains(&dep.as_str()),
                        "{c} must not depend on {dep} (see ARCHITECTURE.md)"
                    );
                }
            }
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name != "target" && name != "tests" && !name.starts_with('.') {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_update_or_delete_of_ledger_rows() {
    let tables = ["blocks", "transactions", "merkle_nodes", "checkpoints"];
    let mut files = Vec::new();
    for c in CRATES {
        rust_files(&root().join(c), &mut files);
    }
    assert!(!files.is_empty());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        // Only code outside unit-test modules counts.
        let code = text.split("#[cfg(test)]").next().unwrap().to_uppercase();
        for t in tables {
            let t = t.to_uppercase();
            for bad in [
                format!("UPDATE {t} "),
                format!("DELETE FROM {t}"),
                format!("UPDATE {t}\n"),
            ] {
                assert!(
                    !code.contains(&bad),
                    "{} contains `{}`: the ledger has no update or delete",
                    f.display(),
                    bad.trim()
                );
            }
        }
    }
}

#[test]
fn every_crate_forbids_unsafe_code() {
    for c in CRATES {
        let lib = root().join(c).join("src/lib.rs");
        let text = std::fs::read_to_string(&lib).unwrap();
        assert!(
            text.contains("#![forbid(unsafe_code)]"),
            "{} lacks #![forbid(unsafe_code)]",
            lib.display()
        );
    }
}
