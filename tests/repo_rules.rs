//! Repository rules from ARCHITECTURE.md, checked by plain `cargo test`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The library crates, in dependency order (the root package, the `vaxgate`
/// binary, may use them all).
const CRATES: &[&str] = &["mappings", "secure-gateway", "ledger", "adapters", "gateway", "sandbox"];

/// Which vaxgate crates each crate may depend on (the dependency order).
fn allowed(c: &str) -> &'static [&'static str] {
    match c {
        "mappings" | "secure-gateway" => &[],
        "ledger" => &["secure-gateway"],
        "adapters" => &["mappings", "secure-gateway", "ledger"],
        // The server library stands beside the agent, not on it.
        "gateway" => &["mappings", "secure-gateway", "ledger"],
        "sandbox" => &["mappings", "secure-gateway", "ledger", "adapters", "gateway"],
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
const KEY_GENERATION: [&str; 2] = ["gateway/cli/cmd/init.rs", "gateway/cli/cmd/keys.rs"];

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
    // `vaxgate` binary (gateway/cli/: main.rs and its commands in cmd/).
    let mut files = Vec::new();
    for c in CRATES {
        rust_files(&root().join(c), &mut files);
    }
    for f in files {
        let rel = f.strip_prefix(root()).unwrap().to_string_lossy().replace('\\', "/");
        if rel.starts_with("gateway/cli/") || rel.contains("/benches/") {
            continue;
        }
        let code = without_test_items(&std::fs::read_to_string(&f).unwrap());
        assert!(!code.contains("anyhow"), "{rel} uses anyhow outside the binary");
    }
}

/// What the server library's manifest (`gateway/Cargo.toml`, as TOML) and
/// code (`sources`: path and text of each non-test `gateway/src` file) say
/// that breaks "the server library stands alone": a dependency or a use of
/// the agent, the SQL Server driver, the sandbox or the CLI's crates.
fn server_library_entanglements(manifest: &toml::Table, sources: &[(String, String)]) -> Vec<String> {
    const CLI_ONLY: [&str; 6] = ["adapters", "sandbox", "tiberius", "clap", "anyhow", "mimalloc"];
    let mut out = Vec::new();
    for table in ["dependencies", "build-dependencies"] {
        let deps = manifest.get(table).and_then(|d| d.as_table());
        for name in CLI_ONLY.iter().filter(|n| deps.is_some_and(|d| d.contains_key(**n))) {
            out.push(format!(
                "gateway/Cargo.toml [{table}] names `{name}`: only the vaxgate binary may"
            ));
        }
    }
    for (path, code) in sources {
        for name in ["adapters", "sandbox"] {
            if code.contains(&format!("{name}::")) {
                out.push(format!("{path} uses `{name}::`: the server library must not"));
            }
        }
    }
    if manifest.contains_key("bin") || manifest.contains_key("test") {
        out.push("gateway/Cargo.toml declares [[bin]] or [[test]]: the binary and the end-to-end tests belong to the root package".into());
    }
    out
}

#[test]
fn the_server_library_stands_alone() {
    // The `gateway` crate is the server: it links neither the agent
    // (`adapters`, with its SQL Server, MySQL and AMQP sources), nor the
    // sandbox, nor the CLI's crates. The `vaxgate` binary (the root package,
    // gateway/cli/) puts them together; the end-to-end tests in tests/ are
    // the root package's, found by Cargo without registration.
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("gateway/Cargo.toml")).unwrap()).unwrap();
    let mut files = Vec::new();
    rust_files(&root().join("gateway/src"), &mut files);
    assert!(files.len() > 10, "{files:?}");
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(root()).unwrap().to_string_lossy().replace('\\', "/");
            (rel, without_test_items(&std::fs::read_to_string(f).unwrap()))
        })
        .collect();
    let problems = server_library_entanglements(&manifest, &sources);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let root_manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    let package = root_manifest
        .get("package")
        .and_then(|p| p.as_table())
        .expect("the root Cargo.toml is the vaxgate package");
    assert_eq!(
        package.get("autotests").and_then(|v| v.as_bool()),
        None,
        "tests/*.rs must be found by Cargo (no autotests = false)"
    );
    assert!(
        !root_manifest.contains_key("test"),
        "no [[test]] entries: Cargo finds tests/*.rs"
    );
}

#[test]
fn an_entangled_server_library_is_named() {
    let manifest: toml::Table =
        toml::from_str("[dependencies]\nadapters = { path = \"../adapters\" }\nserde = \"1\"\n[[bin]]\nname = \"x\"\n")
            .unwrap();
    let sources = vec![
        (
            "gateway/src/a.rs".to_string(),
            "fn f() { sandbox::generate(); }".to_string(),
        ),
        ("gateway/src/b.rs".to_string(), "fn g() {}".to_string()),
    ];
    let problems = server_library_entanglements(&manifest, &sources);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("`adapters`"), "{problems:?}");
    assert!(
        problems[1].starts_with("gateway/src/a.rs uses `sandbox::`"),
        "{problems:?}"
    );
    assert!(problems[2].contains("[[bin]]"), "{problems:?}");
}
