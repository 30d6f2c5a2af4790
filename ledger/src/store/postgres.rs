//! The PostgreSQL ledger store (production). Commits are durable with the
//! server's default `synchronous_commit = on`.

use secure_gateway::Sm3Digest;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};

use super::Dialect;
use super::sql::{ADDED_COLUMNS, APPEND_ONLY_TABLES, TABLES, sql_store};
use super::{BlockCommit, LedgerStore, StoreStats, StoredTx};
use crate::block::{BlockHeader, Checkpoint};
use crate::error::LedgerError;
use crate::merkle::NodeKey;
use crate::tx::{StoredAuth, Transaction, TxContent, TxFormat, TxKind, decode_auth, decode_batch_auth, encode_auth};

/// What PostgreSQL adds to the ledger's tables ([`TABLES`]).
const SCHEMA: &[&str] = &[
    "CREATE OR REPLACE VIEW state AS
        SELECT DISTINCT ON (category, state_key)
               category, state_key AS key, payload AS value, content_type, data_hash, tx_id, leaf_index
        FROM transactions ORDER BY category, state_key, leaf_index DESC",
    "CREATE OR REPLACE FUNCTION vaxgate_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN RAISE EXCEPTION 'the ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME; END $$",
];

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

    /// The pool of readers: queries only. Tables other than the ledger's
    /// are written through [`Self::side_tx`] or a side write.
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

    /// Creates what is missing of the schema: the same tables as the
    /// SQLite store, insert-only by trigger.
    async fn init(&self) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        // Serialise concurrent first starts.
        let lock = "SELECT pg_advisory_xact_lock(7306551)".to_string();
        let tables = TABLES.iter().map(|t| Postgres::sql(t));
        let triggers = APPEND_ONLY_TABLES.iter().map(|t| {
            format!(
                "CREATE OR REPLACE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {t} \
                 FOR EACH STATEMENT EXECUTE FUNCTION vaxgate_append_only()"
            )
        });
        // A ledger made before a column existed gains it (no row changes).
        let added = ADDED_COLUMNS
            .iter()
            .map(|(t, c, ty)| Postgres::sql(&format!("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {c} {ty}")));
        let schema = std::iter::once(lock)
            .chain(tables)
            .chain(added)
            .chain(SCHEMA.iter().map(|s| s.to_string()))
            .chain(triggers);
        self.execute_all(&mut tx, schema).await?;
        tx.commit().await.map_err(|e| self.err(e))
    }

    /// Total size of the ledger's tables and indexes.
    async fn size_bytes(&self) -> Result<u64, LedgerError> {
        let row = sqlx::query(
            "SELECT (pg_total_relation_size('blocks') + pg_total_relation_size('transactions')
                   + pg_total_relation_size('batches') + pg_total_relation_size('merkle_nodes')
                   + pg_total_relation_size('checkpoints'))::BIGINT AS n",
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
