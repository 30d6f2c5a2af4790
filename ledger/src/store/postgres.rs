//! The PostgreSQL ledger store (production). Commits are durable with the
//! server's default `synchronous_commit = on`.

use secure_gateway::Sm3Digest;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};

use super::sql::sql_store;
use super::{BlockCommit, LedgerStore, StoreStats, StoredTx};
use crate::block::{BlockHeader, Checkpoint};
use crate::error::LedgerError;
use crate::merkle::NodeKey;
use crate::tx::{Transaction, TxContent, TxKind, decode_auth, encode_auth};

/// The schema; the same tables as the SQLite store, insert-only by trigger.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS blocks (
        height BIGINT PRIMARY KEY,
        version TEXT NOT NULL,
        provider TEXT NOT NULL,
        previous_block_hash TEXT NOT NULL,
        block_hash TEXT NOT NULL UNIQUE,
        timestamp BIGINT NOT NULL,
        merkle_root TEXT NOT NULL,
        tx_count BIGINT NOT NULL,
        first_leaf BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS transactions (
        leaf_index BIGINT PRIMARY KEY,
        height BIGINT NOT NULL,
        tx_id TEXT NOT NULL UNIQUE,
        record_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        category TEXT NOT NULL,
        state_key TEXT NOT NULL,
        content_type TEXT NOT NULL,
        data_hash TEXT NOT NULL,
        payload BYTEA NOT NULL,
        auth BYTEA NOT NULL,
        fields_root TEXT)",
    // A ledger made before field commitments (no row changes).
    "ALTER TABLE transactions ADD COLUMN IF NOT EXISTS fields_root TEXT",
    "CREATE INDEX IF NOT EXISTS transactions_state ON transactions (category, state_key, leaf_index)",
    "CREATE INDEX IF NOT EXISTS transactions_category ON transactions (category, leaf_index)",
    "CREATE TABLE IF NOT EXISTS merkle_nodes (id BIGINT PRIMARY KEY, hash BYTEA NOT NULL)",
    "CREATE TABLE IF NOT EXISTS checkpoints (
        height BIGINT PRIMARY KEY,
        tree_size BIGINT NOT NULL,
        root TEXT NOT NULL,
        block_hash TEXT NOT NULL,
        timestamp BIGINT NOT NULL,
        key_id TEXT NOT NULL,
        signature TEXT NOT NULL)",
    "CREATE OR REPLACE VIEW state AS
        SELECT DISTINCT ON (category, state_key)
               category, state_key AS key, payload AS value, content_type, data_hash, tx_id, leaf_index
        FROM transactions ORDER BY category, state_key, leaf_index DESC",
    "CREATE OR REPLACE FUNCTION vaxgate_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN RAISE EXCEPTION 'the ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME; END $$",
];

const APPEND_ONLY_TABLES: &[&str] = &["blocks", "transactions", "merkle_nodes", "checkpoints"];

/// The PostgreSQL ledger store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    location: String,
}

/// `postgres://user:secret@host/db` → `postgres://user@host/db`, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..s + 3], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

impl PgStore {
    /// Connects to `url` and creates the schema if needed.
    pub async fn connect(url: &str) -> Result<Self, LedgerError> {
        let location = redact(url);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(url)
            .await
            .map_err(|e| LedgerError::storage(&location, e))?;
        let s = PgStore { pool, location };
        s.init().await?;
        Ok(s)
    }

    /// The connection pool (read-only queries by the gateway's projections).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The pool that commits (the server keeps one buffer cache for all).
    fn write_pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes every connection.
    pub async fn close(&self) -> Result<(), LedgerError> {
        self.pool.close().await;
        Ok(())
    }

    async fn init(&self) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        // Serialise concurrent first starts.
        sqlx::query("SELECT pg_advisory_xact_lock(7306551)")
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        for stmt in SCHEMA {
            sqlx::query(sqlx::AssertSqlSafe(*stmt))
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
        }
        for t in APPEND_ONLY_TABLES {
            let sql = format!(
                "CREATE OR REPLACE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {t} \
                 FOR EACH STATEMENT EXECUTE FUNCTION vaxgate_append_only()"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))
    }

    /// Total size of the ledger's tables and indexes.
    async fn size_bytes(&self) -> Result<u64, LedgerError> {
        let row = sqlx::query(
            "SELECT (pg_total_relation_size('blocks') + pg_total_relation_size('transactions')
                   + pg_total_relation_size('merkle_nodes') + pg_total_relation_size('checkpoints'))::BIGINT AS n",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let n: i64 = row.try_get("n").map_err(|e| self.err(e))?;
        Ok(n.max(0) as u64)
    }
}

sql_store!(PgStore, Postgres, PgRow, Postgres);

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_redacted() {
        assert_eq!(super::redact("postgres://u:pw@h:5432/db"), "postgres://u@h:5432/db");
        assert_eq!(super::redact("postgres://h/db"), "postgres://h/db");
    }
}
