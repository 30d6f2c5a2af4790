//! End to end: the built `vaxgate` binary creates, inspects, proves and
//! verifies a ledger, and catches a single flipped byte in the file.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn vaxgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vaxgate"))
        .args(args)
        .output()
        .expect("run vaxgate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The payload the ledger benchmark writes for record `i` (documented beside
/// `synthetic` in gateway/src/cmd/ledger.rs).
fn bench_payload(i: u64, len: usize) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn flip_byte_of(file: &Path, needle: &[u8]) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("payload is in the main database file");
    bytes[at + needle.len() / 2] ^= 0x20;
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn ledger_commands_and_tamper_detection() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let db_s = db.to_str().unwrap();
    let key = format!("{db_s}.node.pub.pem");

    let o = vaxgate(&[
        "bench",
        "ledger",
        "--records",
        "700",
        "--db",
        db_s,
        "--batch",
        "64",
        "--payload",
        "200",
        "--clients",
        "3",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let last = stdout(&o).lines().last().unwrap().to_string();
    let figures: serde_json::Value = serde_json::from_str(&last).expect("final line is JSON");
    assert_eq!(figures["records"], 700);
    assert!(figures["records_per_sec"].as_f64().unwrap() > 0.0);

    let o = vaxgate(&["ledger", "verify", "--db", db_s, "--checkpoint-key", &key]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout(&o).starts_with("ledger intact: "), "{}", stdout(&o));
    assert!(stdout(&o).contains("701 transactions"), "{}", stdout(&o));
    assert_eq!(stdout(&o).lines().count(), 1);

    let o = vaxgate(&["ledger", "stats", "--db", db_s, "--json"]);
    let stats: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(stats["stats"]["transactions"], 701);

    // An inclusion proof verifies offline with the node key, and not with another.
    let o = vaxgate(&["ledger", "proof", "--db", db_s, "--record", "bench-300"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let proof_path = dir.path().join("proof.json");
    std::fs::write(&proof_path, &o.stdout).unwrap();
    let proof: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let height = proof["block"]["height"].as_u64().unwrap();
    let tx_id = proof["transaction"]["tx_id"].as_str().unwrap().to_string();
    let o = vaxgate(&["verify-proof", proof_path.to_str().unwrap(), "--checkpoint-key", &key]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).starts_with("proof OK"));
    let other = dir.path().join("other");
    let o = vaxgate(&[
        "keys",
        "generate",
        "--out",
        other.to_str().unwrap(),
        "--danger-unencrypted",
    ]);
    if o.status.success() {
        let pubs: Vec<_> = std::fs::read_dir(&other)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pub.pem"))
            .collect();
        let o = vaxgate(&[
            "verify-proof",
            proof_path.to_str().unwrap(),
            "--checkpoint-key",
            pubs[0].path().to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    }
    // A tampered proof fails.
    let mut p: serde_json::Value = proof.clone();
    p["transaction"]["payload"] = serde_json::Value::String("AAAA".into());
    std::fs::write(&proof_path, serde_json::to_vec(&p).unwrap()).unwrap();
    let o = vaxgate(&["verify-proof", proof_path.to_str().unwrap(), "--checkpoint-key", &key]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));

    // Flip one byte of record 300's payload in the file: verify names the block and transaction.
    flip_byte_of(&db, &bench_payload(300, 200)[..64]);
    let o = vaxgate(&["ledger", "verify", "--db", db_s, "--checkpoint-key", &key]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    let out = stdout(&o);
    assert!(
        out.contains(&format!("at block {height}, transaction {tx_id}")),
        "{out}"
    );
}
