//! Tampering with a SQLite ledger as an operator with file access could,
//! and what `vaxgate ledger verify` says of it. Cutting it short: the
//! append-only triggers dropped, then the newest blocks removed with their
//! transactions, batches, checkpoints and the tree nodes that cover a removed leaf
//! (what is left is self-consistent: it verifies on its own). Flipping a
//! byte of a stored transaction: verify names its block and transaction.

use std::path::Path;

/// Removes the blocks of the SQLite ledger at `db` from the height
/// `from(newest height)` on; returns how many transactions are left.
pub fn cut_ledger(db: &Path, from: impl FnOnce(i64) -> i64) -> i64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
            .await
            .unwrap();
        let (h,): (i64,) = sqlx::query_as("SELECT MAX(height) FROM blocks")
            .fetch_one(&pool)
            .await
            .unwrap();
        let from = from(h);
        let (n,): (i64,) = sqlx::query_as("SELECT first_leaf FROM blocks WHERE height = ?")
            .bind(from)
            .fetch_one(&pool)
            .await
            .unwrap();
        for t in ["blocks", "transactions", "batches", "checkpoints", "merkle_nodes"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TRIGGER {t}_no_delete")))
                .execute(&pool)
                .await
                .unwrap();
        }
        for t in ["blocks", "transactions", "checkpoints"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {t} WHERE height >= {from}")))
                .execute(&pool)
                .await
                .unwrap();
        }
        // Batches first referred to by a removed leaf (format 2).
        sqlx::query("DELETE FROM batches WHERE first_leaf >= ?")
            .bind(n)
            .execute(&pool)
            .await
            .unwrap();
        // Tree nodes covering a removed leaf (id = level << 56 | index).
        sqlx::query("DELETE FROM merkle_nodes WHERE ((id & 72057594037927935) + 1) << (id >> 56) > ?")
            .bind(n)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        n
    })
}

/// Flips a bit in the middle of the first `needle` found in `files` (the
/// ledger file and its write-ahead log); false when none holds it.
pub fn flip_byte_of(files: &[&Path], needle: &[u8]) -> bool {
    for f in files {
        let Ok(mut bytes) = std::fs::read(f) else { continue };
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            bytes[at + needle.len() / 2] ^= 0x20;
            std::fs::write(f, bytes).unwrap();
            return true;
        }
    }
    false
}

/// `vaxgate ledger verify` of the ledger `db` (checkpoints signed by the
/// node key `key`) whose transaction `tx_id` in block `height` was altered:
/// it fails (exit 1) naming both.
pub fn assert_tampering_found(db: &Path, key: &Path, height: u64, tx_id: &str) {
    let o = super::vaxgate()
        .args(["ledger", "verify", "--db"])
        .arg(db)
        .arg("--checkpoint-key")
        .arg(key)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout:\n{out}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains(&format!("at block {height}, transaction {tx_id}")),
        "{out}"
    );
}
