//! Repository rules from ARCHITECTURE.md, checked by plain `cargo test`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
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
        "adapters" => &["mappings", "secure-gateway", "ledger"],
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

/// `text` without the items marked `#[cfg(test)]` (the attribute through
/// the end of its `{ ... }` block, or its `;`). Braces are counted outside
/// string and char literals and comments.
fn without_test_items(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        rest = &rest[end_of_item(rest)..];
    }
    out.push_str(rest);
    out
}

/// The byte length of the item starting at `s` (its attributes included).
fn end_of_item(s: &str) -> usize {
    let b = s.as_bytes();
    let (mut i, mut depth) = (0, 0usize);
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                i += s[i..].find('\n').unwrap_or(s.len() - i);
                continue;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'\'' if b.get(i + 2) == Some(&b'\'') || (b.get(i + 1) == Some(&b'\\') && b.get(i + 3) == Some(&b'\'')) => {
                i += if b[i + 1] == b'\\' { 3 } else { 2 };
            }
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            b';' if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    s.len()
}

#[test]
fn test_items_are_cut_out_and_what_follows_is_kept() {
    let text = "fn a() {}\n#[cfg(test)]\nmod t {\n    fn x() { let s = \"}\"; let c = '}'; }\n}\nfn after() { UPDATE }\n\
                #[cfg(test)]\nuse x::y;\nfn last() {}\n";
    let kept = without_test_items(text);
    assert!(kept.contains("fn after() { UPDATE }"), "{kept}");
    assert!(kept.contains("fn last() {}"), "{kept}");
    assert!(!kept.contains("fn x()") && !kept.contains("use x::y"), "{kept}");
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
        // Only code outside unit-test modules counts (every one of them, not
        // just the first: code after a test module is checked too).
        let code = without_test_items(&text).to_uppercase();
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

/// Files outside `secure-gateway` that may hold a private key: the
/// key-generation commands, which create key files and nothing else.
const KEY_GENERATION: [&str; 2] = ["gateway/src/cmd/init.rs", "gateway/src/cmd/keys.rs"];

/// What only code that holds a private key names.
const RAW_KEY_NAMES: [&str; 6] = [
    "Sm2SigningKey",
    "load_signing_key",
    "private_key_from_pem",
    "danger_load_unencrypted_signing_key",
    "secret_key()",
    "insert_sm2_key",
];

/// Every `secure_gateway::...` path of `code` that names a raw private key.
fn raw_key_uses(code: &str) -> Vec<&'static str> {
    RAW_KEY_NAMES.iter().copied().filter(|n| code.contains(n)).collect()
}

#[test]
fn only_the_crypto_provider_holds_private_keys() {
    // Every signature, decryption and key import goes through a
    // `CryptoProvider` and a `KeyHandle` (`secure_gateway::Signer`), so a
    // provider chosen in `[crypto] provider` (or an HSM) changes no caller.
    let mut files = Vec::new();
    for c in CRATES.iter().filter(|c| **c != "secure-gateway") {
        rust_files(&root().join(c), &mut files);
    }
    assert!(files.len() > 20, "{files:?}");
    for f in files {
        let rel = f.strip_prefix(root()).unwrap().to_string_lossy().replace('\\', "/");
        if KEY_GENERATION.contains(&rel.as_str()) {
            continue;
        }
        let code = without_test_items(&std::fs::read_to_string(&f).unwrap());
        let found = raw_key_uses(&code);
        assert!(
            found.is_empty(),
            "{rel} names {found:?} outside a test: use the crypto provider (secure_gateway::Signer, \
             CryptoProvider::import_sm2_pem) instead"
        );
    }
}

#[test]
fn the_raw_key_rule_sees_a_key_after_a_test_module() {
    let code = without_test_items(
        "#[cfg(test)]\nmod t { fn k() -> Sm2SigningKey { todo!() } }\nfn sign(k: &secure_gateway::Sm2SigningKey) {}\n",
    );
    assert_eq!(raw_key_uses(&code), ["Sm2SigningKey"]);
    assert!(raw_key_uses(&without_test_items("#[cfg(test)]\nfn k() -> Sm2SigningKey { x }\n")).is_empty());
}

#[test]
fn anyhow_only_in_the_binary() {
    // Libraries return their crate's `thiserror` enum; `anyhow` is for the
    // `vaxgate` binary (gateway/src/main.rs and its commands in cmd/).
    let mut files = Vec::new();
    for c in CRATES {
        rust_files(&root().join(c), &mut files);
    }
    for f in files {
        let rel = f.strip_prefix(root()).unwrap().to_string_lossy().replace('\\', "/");
        if rel == "gateway/src/main.rs" || rel.starts_with("gateway/src/cmd/") || rel.contains("/benches/") {
            continue;
        }
        let code = without_test_items(&std::fs::read_to_string(&f).unwrap());
        assert!(!code.contains("anyhow"), "{rel} uses anyhow outside the binary");
    }
}

/// What keeps a test file from running, or a `[[test]]` entry from
/// building: each of `files` (the top-level `tests/x.rs`; shared code lives
/// in tests/support/) needs one of the `entries` (name, path from the
/// root), and each entry a file that `exists`.
fn unregistered_tests(
    files: &BTreeSet<String>,
    entries: &[(String, String)],
    exists: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let registered: BTreeSet<&str> = entries.iter().map(|(_, p)| p.as_str()).collect();
    let mut problems: Vec<String> = files
        .iter()
        .filter(|f| !registered.contains(f.as_str()))
        .map(|f| {
            let name = f.trim_start_matches("tests/").trim_end_matches(".rs");
            format!(
                "{f} has no [[test]] entry in gateway/Cargo.toml, so `cargo test` never runs it: add \
                 [[test]] name = \"{name}\" path = \"../{f}\" (or move shared code into tests/support/)"
            )
        })
        .collect();
    problems.extend(
        entries
            .iter()
            .filter(|(_, p)| !exists(p))
            .map(|(name, p)| format!("[[test]] {name} in gateway/Cargo.toml points at {p}, which does not exist")),
    );
    problems
}

/// `p` relative to the root, for a path relative to `gateway/`.
fn from_gateway(p: &str) -> String {
    let mut parts: Vec<&str> = vec!["gateway"];
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

#[test]
fn every_test_file_is_a_registered_test() {
    let mut files = BTreeSet::new();
    for e in std::fs::read_dir(root().join("tests")).unwrap().flatten() {
        let p = e.path();
        if p.is_file() && p.extension().is_some_and(|x| x == "rs") {
            files.insert(format!("tests/{}", p.file_name().unwrap().to_string_lossy()));
        }
    }
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("gateway/Cargo.toml")).unwrap()).unwrap();
    let entries: Vec<(String, String)> = manifest
        .get("test")
        .and_then(|t| t.as_array())
        .expect("gateway/Cargo.toml lists its tests as [[test]]")
        .iter()
        .map(|t| {
            let field = |k: &str| t.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            (field("name"), from_gateway(&field("path")))
        })
        .collect();
    let problems = unregistered_tests(&files, &entries, &|p| root().join(p).is_file());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn an_unregistered_test_file_and_a_dangling_entry_are_named() {
    let files: BTreeSet<String> = ["tests/a.rs", "tests/b.rs"].iter().map(|s| s.to_string()).collect();
    let entries = vec![
        ("a".to_string(), from_gateway("../tests/a.rs")),
        ("gone".to_string(), from_gateway("../tests/gone.rs")),
    ];
    let exists = |p: &str| files.contains(p);
    let problems = unregistered_tests(&files, &entries, &exists);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with("tests/b.rs has no [[test]] entry"),
        "{problems:?}"
    );
    assert!(
        problems[1].contains("[[test]] gone") && problems[1].contains("tests/gone.rs, which does not exist"),
        "{problems:?}"
    );
    let all = [("a".into(), "tests/a.rs".into()), ("b".into(), "tests/b.rs".into())];
    assert!(unregistered_tests(&files, &all, &exists).is_empty());
}
