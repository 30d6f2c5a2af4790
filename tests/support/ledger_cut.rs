//! Cutting a SQLite ledger short, as an operator with file access could:
//! the append-only triggers dropped, then the newest blocks removed with
//! their transactions, checkpoints and the tree nodes that cover a removed
//! leaf. What is left is self-consistent (it verifies on its own).

/// Removes the blocks of the SQLite ledger at `db` from the height
/// `from(newest height)` on; returns how many transactions are left.
pub fn cut_ledger(db: &std::path::Path, from: impl FnOnce(i64) -> i64) -> i64 {
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
        for t in ["blocks", "transactions", "checkpoints", "merkle_nodes"] {
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
