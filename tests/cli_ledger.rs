//! End to end: the built `vaxgate` binary creates, inspects, proves and
//! verifies a ledger, and catches a single flipped byte in the file.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Output;

use support::ledger_cut::{assert_tampering_found, cut_ledger, flip_byte_of};

fn vaxgate(args: &[&str]) -> Output {
    support::vaxgate().args(args).output().expect("run vaxgate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The stdout of a run that exited with `code` (else a panic showing its
/// stdout and stderr).
fn exited(o: &Output, code: i32) -> String {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{}{}",
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(o)
}

/// `vaxgate ledger verify ARGS...`.
fn verify(args: &[&str]) -> Output {
    vaxgate(&[&["ledger", "verify"], args].concat())
}

/// `vaxgate bench ledger` of 700 records into `db`, in blocks of `batch`,
/// from `clients` clients, with payloads of `payload` bytes.
fn bench_ledger(db: &str, batch: &str, clients: &str, payload: &str) -> Output {
    let o = vaxgate(&[
        "bench",
        "ledger",
        "--records",
        "700",
        "--db",
        db,
        "--batch",
        batch,
        "--clients",
        clients,
        "--payload",
        payload,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// The payload the ledger benchmark writes for record `i` (documented beside
/// `synthetic` in gateway/cli/cmd/ledger.rs).
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

/// A new directory, the ledger file to create in it and the node key
/// file beside that ledger (which `bench ledger` writes).
fn ledger_dir() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let key = format!("{}.node.pub.pem", db.display());
    (dir, db, key)
}

/// `vaxgate bench ledger` of 700 records in blocks of 16 into `db`.
fn small_bench_ledger(db: &str) {
    bench_ledger(db, "16", "1", "100");
}

#[test]
fn ledger_commands_and_tamper_detection() {
    let (dir, db, key) = ledger_dir();
    let db_s = db.to_str().unwrap();

    let o = bench_ledger(db_s, "64", "3", "200");
    let last = stdout(&o).lines().last().unwrap().to_string();
    let figures: serde_json::Value = serde_json::from_str(&last).expect("final line is JSON");
    assert_eq!(figures["records"], 700);
    assert!(figures["records_per_sec"].as_f64().unwrap() > 0.0);

    let out = exited(&verify(&["--db", db_s, "--checkpoint-key", &key]), 0);
    assert!(out.starts_with("ledger intact: "), "{out}");
    assert!(out.contains("701 transactions"), "{out}");
    assert!(out.contains("signatures checked by rustcrypto"), "{out}");
    assert_eq!(out.lines().count(), 1);
    // Not on a terminal (a log, a cron job), progress comes as whole lines:
    // each part says when it starts, and nothing is redrawn in place.
    let o = verify(&["--db", db_s]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("checking the database file (PRAGMA integrity_check) ...\n"),
        "{err}"
    );
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
    // The same signatures (made through RustCrypto) checked by OpenSSL; an
    // unknown provider is the caller's error, named.
    let out = exited(&verify(&["--db", db_s, "--crypto-provider", "openssl"]), 0);
    assert!(out.contains("signatures checked by openssl"), "{out}");
    let o = verify(&["--db", db_s, "--crypto-provider", "hsm"]);
    exited(&o, 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("rustcrypto"), "{err}");

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
    assert!(
        flip_byte_of(&[&db], &bench_payload(300, 200)[..64]),
        "payload is in the main database file"
    );
    assert_tampering_found(&db, Path::new(&key), height, &tx_id);
}

/// A ledger whose newest blocks were removed still verifies on its own
/// (every remaining block, tree node and checkpoint is consistent); with a
/// checkpoint seen before (or `--min-size`) it is refused, naming the
/// checkpoint and how many transactions are missing. A checkpoint of an
/// earlier size checks by a consistency proof.
#[test]
fn a_ledger_cut_short_is_refused_given_a_checkpoint_seen_before() {
    let (dir, db, key) = ledger_dir();
    let db_s = db.to_str().unwrap();
    small_bench_ledger(db_s);
    let o = vaxgate(&["ledger", "stats", "--db", db_s, "--json"]);
    let seen = dir.path().join("seen.json");
    std::fs::write(&seen, &o.stdout).unwrap();
    let seen_s = seen.to_str().unwrap();

    // A copy with its newest 10 blocks removed (the triggers dropped first,
    // as an operator with file access could).
    let cut = dir.path().join("cut.db");
    std::fs::copy(&db, &cut).unwrap();
    let wal = dir.path().join("ledger.db-wal");
    if wal.exists() {
        std::fs::copy(&wal, dir.path().join("cut.db-wal")).unwrap();
    }
    let kept = cut_ledger(&cut, |newest| newest - 9);
    let cut_s = cut.to_str().unwrap();
    // Alone, the cut ledger verifies.
    let out = exited(&verify(&["--db", cut_s, "--checkpoint-key", &key]), 0);
    assert!(out.contains(&format!("{kept} transactions")), "{out}");

    let out = exited(
        &verify(&["--db", cut_s, "--checkpoint-key", &key, "--checkpoint", seen_s]),
        1,
    );
    assert!(
        out.contains(&format!(
            "LEDGER NOT INTACT: it holds {kept} transactions, but the checkpoint in {seen_s}"
        )) && out.contains(&format!("saw 701: the newest {} were cut off", 701 - kept)),
        "{out}"
    );
    // The genesis key checks the file's signature when no key is given.
    exited(&verify(&["--db", cut_s, "--checkpoint", seen_s]), 1);
    let out = exited(&verify(&["--db", cut_s, "--min-size", "701"]), 1);
    assert!(out.contains("at least 701 were expected"), "{out}");

    // The whole ledger extends both its own checkpoint and the cut copy's
    // (an earlier size: a consistency proof).
    let o = vaxgate(&["ledger", "stats", "--db", cut_s, "--json"]);
    let older = dir.path().join("older.json");
    std::fs::write(&older, &o.stdout).unwrap();
    let older_s = older.to_str().unwrap();
    let args = [
        "--db",
        db_s,
        "--checkpoint",
        seen_s,
        "--checkpoint",
        older_s,
        "--min-size",
        "701",
    ];
    let out = exited(&verify(&args), 0);
    assert!(
        out.contains("ledger not cut short: it holds every transaction of the 2 checkpoint(s) given and at least 701"),
        "{out}"
    );
    // A checkpoint of the right size with another root: a rewritten history.
    let mut forged: serde_json::Value = serde_json::from_slice(&std::fs::read(&older).unwrap()).unwrap();
    forged["latest_checkpoint"]["root"] = serde_json::json!("11".repeat(32));
    std::fs::write(&older, serde_json::to_vec(&forged).unwrap()).unwrap();
    let o = verify(&["--db", db_s, "--checkpoint", older_s]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a checkpoint that does not verify is the caller's error: {}",
        stdout(&o)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("the checkpoint does not verify"));
}

/// A byte flipped in an index page of the SQLite file changes no row of
/// the ledger (every hash still holds), but a query through that index
/// would answer wrong: `ledger verify` runs SQLite's integrity check first
/// and names the damage.
#[test]
fn a_damaged_index_page_is_found() {
    let (dir, db, _) = ledger_dir();
    let db_s = db.to_str().unwrap();
    small_bench_ledger(db_s);
    assert!(
        !dir.path().join("ledger.db-wal").exists(),
        "the benchmark's log was checkpointed on close"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (root, page): (i64, i64) = rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite:{db_s}")).await.unwrap();
        let (root,): (i64,) = sqlx::query_as("SELECT rootpage FROM sqlite_master WHERE name = 'transactions_category'")
            .fetch_one(&pool)
            .await
            .unwrap();
        let (page,): (i64,) = sqlx::query_as("PRAGMA page_size").fetch_one(&pool).await.unwrap();
        pool.close().await;
        (root, page)
    });
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[(root * page - 40) as usize] ^= 0x20;
    std::fs::write(&db, bytes).unwrap();
    let out = exited(&verify(&["--db", db_s]), 1);
    assert!(
        out.contains("is damaged (SQLite integrity_check)") && out.contains("missing from index transactions_category"),
        "{out}"
    );
}
