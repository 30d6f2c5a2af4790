//! The embedded SQLite ledger store (sqlx), WAL with `synchronous=FULL` so a
//! commit is on disk when it returns.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secure_gateway::Sm3Digest;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::Dialect;
use super::sql::{ADDED_COLUMNS, APPEND_ONLY_TABLES, TABLES, sql_store};
use super::{BlockCommit, LedgerStore, StoreStats, StoredTx};
use crate::block::{BlockHeader, Checkpoint};
use crate::error::LedgerError;
use crate::merkle::NodeKey;
use crate::tx::{StoredAuth, Transaction, TxContent, TxFormat, TxKind, decode_auth, decode_batch_auth, encode_auth};

/// What SQLite adds to the ledger's tables ([`TABLES`]).
/// R2.3: the current key-value state by category, encrypted business data
/// in its own field. A view, so the state is derived, never rewritten.
const STATE_VIEW: &str = "CREATE VIEW IF NOT EXISTS state AS
        SELECT category, state_key AS key, payload AS value, content_type, data_hash, tx_id, leaf_index
        FROM transactions t
        WHERE leaf_index = (SELECT MAX(leaf_index) FROM transactions u
                            WHERE u.category = t.category AND u.state_key = t.state_key)";

/// The SQLite ledger store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Readers (queries, projections, the checkpointer).
    pool: SqlitePool,
    /// The one connection that commits blocks and checks them for
    /// conflicts. SQLite empties a connection's page cache when another
    /// connection has written since its last transaction, so a writer taken
    /// from the shared pool started most commits with a cold cache and
    /// re-read the unique-id and trace-code index pages from the OS; a
    /// dedicated writer keeps them.
    writer: SqlitePool,
    path: PathBuf,
    location: String,
    /// Stops the background checkpointer when the last clone is dropped.
    _checkpointer: Option<std::sync::Arc<AbortOnDrop>>,
}

/// Aborts a background task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the ledger database at `path`.
    pub async fn open(path: &Path) -> Result<Self, LedgerError> {
        let location = path.display().to_string();
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| LedgerError::storage(&location, e))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // A 64 MiB page cache per connection (SQLite's default is 2 MiB):
            // appends touch index pages all over the unique record-id and
            // trace-code indexes, which otherwise are re-read for every block.
            .pragma("cache_size", "-65536")
            // No checkpoint inside a committing connection: a background
            // task checkpoints once a second (below), off the commit path,
            // and copies hot index pages back once instead of many times.
            .pragma("wal_autocheckpoint", "0")
            // Truncate the write-ahead log back to 64 MiB after it restarts.
            .pragma("journal_size_limit", "67108864")
            // Statement journals (the undo copy of the pages one multi-row
            // INSERT touches) in memory: with the default they spill to a
            // temporary file past 64 KiB, which for a block of 500
            // transactions is every statement: ~25% more file writes.
            .pragma("temp_store", "MEMORY")
            // Rows a query may queue for its reader (sqlx's default is 50):
            // reading a block's transactions then wakes the reader once per
            // block, not once per few rows.
            .row_buffer_size(1024);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts.clone())
            .await
            .map_err(|e| LedgerError::storage(&location, e))?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|e| LedgerError::storage(&location, e))?;
        let mut s = SqliteStore {
            pool,
            writer,
            path: path.to_path_buf(),
            location,
            _checkpointer: None,
        };
        s.init().await?;
        s._checkpointer = s.spawn_checkpointer().map(|h| std::sync::Arc::new(AbortOnDrop(h)));
        Ok(s)
    }

    /// Copies the write-ahead log back into the database file once a second
    /// (PASSIVE: never blocks readers or the writer) while the pool is open
    /// and any clone of this store is alive.
    /// Outside a Tokio runtime (none here) SQLite's own end-of-connection
    /// checkpoint and [`SqliteStore::close`] do it.
    fn spawn_checkpointer(&self) -> Option<tokio::task::AbortHandle> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let pool = self.pool.clone();
        let task = rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if pool.is_closed() {
                    break;
                }
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
                    if pool.is_closed() {
                        break;
                    }
                    tracing::warn!(error = %e, "write-ahead log checkpoint failed; retrying in a second");
                }
            }
        });
        Some(task.abort_handle())
    }

    /// Opens an existing ledger; an error if the file does not exist.
    pub async fn open_existing(path: &Path) -> Result<Self, LedgerError> {
        if !path.exists() {
            return Err(LedgerError::NotFound(format!(
                "no ledger database at {}",
                path.display()
            )));
        }
        Self::open(path).await
    }

    /// Checkpoints the write-ahead log into the main file and closes every
    /// connection, so the database is one self-contained file.
    pub async fn close(&self) -> Result<(), LedgerError> {
        self.writer.close().await;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        self.pool.close().await;
        Ok(())
    }

    /// The pool of readers: queries only. Tables other than the ledger's
    /// are written through [`Self::side_tx`] or a side write.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The pool that commits (one connection).
    fn write_pool(&self) -> &SqlitePool {
        &self.writer
    }

    /// Creates what is missing of the schema. Every table is insert-only:
    /// triggers abort any UPDATE or DELETE, so even a stray SQL statement
    /// cannot rewrite history.
    async fn init(&self) -> Result<(), LedgerError> {
        let mut tx = self.writer.begin().await.map_err(|e| self.err(e))?;
        let schema = TABLES.iter().map(|t| Sqlite::sql(t)).chain([STATE_VIEW.to_string()]);
        self.execute_all(&mut tx, schema).await?;
        // A ledger made before a column existed gains it (no row changes).
        for (table, column, ty) in ADDED_COLUMNS {
            let has: Option<i64> = sqlx::query_scalar("SELECT 1 FROM pragma_table_info($1) WHERE name = $2")
                .bind(*table)
                .bind(*column)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
            if has.is_none() {
                let add = Sqlite::sql(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"));
                self.execute_all(&mut tx, [add]).await?;
            }
        }
        let triggers = APPEND_ONLY_TABLES.iter().flat_map(|t| {
            ["UPDATE", "DELETE"].map(|op| {
                format!(
                    "CREATE TRIGGER IF NOT EXISTS {t}_no_{lop} BEFORE {op} ON {t} \
                     BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: {op} on {t} refused'); END",
                    lop = op.to_lowercase()
                )
            })
        });
        self.execute_all(&mut tx, triggers).await?;
        tx.commit().await.map_err(|e| self.err(e))
    }

    /// The database file plus its write-ahead log.
    async fn size_bytes(&self) -> Result<u64, LedgerError> {
        let mut size = 0;
        for suffix in ["", "-wal"] {
            let p = PathBuf::from(format!("{}{suffix}", self.path.display()));
            size += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
        Ok(size)
    }
}

sql_store!(SqliteStore, Sqlite, SqliteRow, Sqlite);
