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
use uuid::Uuid;

use super::{BlockCommit, LedgerStore, StoreStats, StoredTx};
use crate::block::{BlockHeader, Checkpoint};
use crate::error::LedgerError;
use crate::merkle::NodeKey;
use crate::tx::{Transaction, TxContent, TxKind, decode_auth, encode_auth};

/// The schema. Every table is insert-only: triggers abort any UPDATE or
/// DELETE, so even a stray SQL statement cannot rewrite history.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS blocks (
        height INTEGER PRIMARY KEY,
        version TEXT NOT NULL,
        provider TEXT NOT NULL,
        previous_block_hash TEXT NOT NULL,
        block_hash TEXT NOT NULL UNIQUE,
        timestamp INTEGER NOT NULL,
        merkle_root TEXT NOT NULL,
        tx_count INTEGER NOT NULL,
        first_leaf INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS transactions (
        leaf_index INTEGER PRIMARY KEY,
        height INTEGER NOT NULL,
        tx_id TEXT NOT NULL UNIQUE,
        record_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        category TEXT NOT NULL,
        state_key TEXT NOT NULL,
        content_type TEXT NOT NULL,
        data_hash TEXT NOT NULL,
        payload BLOB NOT NULL,
        auth BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS transactions_state ON transactions (category, state_key, leaf_index)",
    "CREATE TABLE IF NOT EXISTS merkle_nodes (id INTEGER PRIMARY KEY, hash BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS checkpoints (
        height INTEGER PRIMARY KEY,
        tree_size INTEGER NOT NULL,
        root TEXT NOT NULL,
        block_hash TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        key_id TEXT NOT NULL,
        signature TEXT NOT NULL)",
    // R2.3: the current key-value state by category, encrypted business data
    // in its own field. A view, so the state is derived, never rewritten.
    "CREATE VIEW IF NOT EXISTS state AS
        SELECT category, state_key AS key, payload AS value, content_type, data_hash, tx_id, leaf_index
        FROM transactions t
        WHERE leaf_index = (SELECT MAX(leaf_index) FROM transactions u
                            WHERE u.category = t.category AND u.state_key = t.state_key)",
];

const APPEND_ONLY_TABLES: &[&str] = &["blocks", "transactions", "merkle_nodes", "checkpoints"];

/// The SQLite ledger store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
    location: String,
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
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|e| LedgerError::storage(&location, e))?;
        let s = SqliteStore {
            pool,
            path: path.to_path_buf(),
            location,
        };
        s.init().await?;
        Ok(s)
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
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        self.pool.close().await;
        Ok(())
    }

    /// The connection pool (read-only queries by the gateway's projections).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn init(&self) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        for stmt in SCHEMA {
            sqlx::query(sqlx::AssertSqlSafe(*stmt))
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
        }
        for t in APPEND_ONLY_TABLES {
            for op in ["UPDATE", "DELETE"] {
                let sql = format!(
                    "CREATE TRIGGER IF NOT EXISTS {t}_no_{lop} BEFORE {op} ON {t} \
                     BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: {op} on {t} refused'); END",
                    lop = op.to_lowercase()
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().await.map_err(|e| self.err(e))
    }

    fn err(&self, e: impl std::fmt::Display) -> LedgerError {
        LedgerError::storage(&self.location, e)
    }

    fn corrupt(&self, what: &str) -> LedgerError {
        LedgerError::storage(&self.location, format!("stored row is malformed: {what}"))
    }

    fn block_from_row(&self, r: &SqliteRow) -> Result<BlockHeader, LedgerError> {
        let d = |c: &str| -> Result<Sm3Digest, LedgerError> {
            let s: String = r.try_get(c).map_err(|e| self.err(e))?;
            digest(&s).ok_or_else(|| self.corrupt(&format!("blocks.{c}")))
        };
        Ok(BlockHeader {
            height: get_u64(r, "height").map_err(|e| self.err(e))?,
            version: r.try_get("version").map_err(|e| self.err(e))?,
            provider: d("provider")?,
            previous_block_hash: d("previous_block_hash")?,
            block_hash: d("block_hash")?,
            timestamp: r.try_get("timestamp").map_err(|e| self.err(e))?,
            merkle_root: d("merkle_root")?,
            tx_count: get_u64(r, "tx_count").map_err(|e| self.err(e))?,
            first_leaf: get_u64(r, "first_leaf").map_err(|e| self.err(e))?,
        })
    }

    fn tx_from_row(&self, r: &SqliteRow) -> Result<StoredTx, LedgerError> {
        let leaf_index = get_u64(r, "leaf_index").map_err(|e| self.err(e))?;
        let bad = |c: &str| self.corrupt(&format!("transactions.{c} at leaf {leaf_index}"));
        let s = |c: &str| -> Result<String, LedgerError> { r.try_get(c).map_err(|e| self.err(e)) };
        let auth_bytes: Vec<u8> = r.try_get("auth").map_err(|e| self.err(e))?;
        Ok(StoredTx {
            leaf_index,
            height: get_u64(r, "height").map_err(|e| self.err(e))?,
            tx: Transaction {
                content: TxContent {
                    tx_id: uuid(&s("tx_id")?).ok_or_else(|| bad("tx_id"))?,
                    record_id: s("record_id")?,
                    kind: TxKind::parse(&s("kind")?).ok_or_else(|| bad("kind"))?,
                    category: s("category")?,
                    state_key: s("state_key")?,
                    content_type: s("content_type")?,
                    data_hash: digest(&s("data_hash")?).ok_or_else(|| bad("data_hash"))?,
                    payload: r.try_get("payload").map_err(|e| self.err(e))?,
                },
                auth: decode_auth(&auth_bytes).ok_or_else(|| bad("auth"))?,
            },
        })
    }

    fn checkpoint_from_row(&self, r: &SqliteRow) -> Result<Checkpoint, LedgerError> {
        let d = |c: &str| -> Result<Sm3Digest, LedgerError> {
            let s: String = r.try_get(c).map_err(|e| self.err(e))?;
            digest(&s).ok_or_else(|| self.corrupt(&format!("checkpoints.{c}")))
        };
        Ok(Checkpoint {
            tree_size: get_u64(r, "tree_size").map_err(|e| self.err(e))?,
            root: d("root")?,
            height: get_u64(r, "height").map_err(|e| self.err(e))?,
            block_hash: d("block_hash")?,
            timestamp: r.try_get("timestamp").map_err(|e| self.err(e))?,
            key_id: r.try_get("key_id").map_err(|e| self.err(e))?,
            signature: r.try_get("signature").map_err(|e| self.err(e))?,
        })
    }
}

/// Parses a stored digest; only the canonical lowercase form is accepted, so
/// that no byte of a stored row can change without the change being seen.
fn digest(s: &str) -> Option<Sm3Digest> {
    Sm3Digest::from_hex(s).ok().filter(|d| d.to_hex() == s)
}

fn uuid(s: &str) -> Option<Uuid> {
    Uuid::parse_str(s).ok().filter(|u| u.to_string() == s)
}

fn get_u64(r: &SqliteRow, c: &str) -> Result<u64, sqlx::Error> {
    let v: i64 = r.try_get(c)?;
    u64::try_from(v).map_err(|_| sqlx::Error::Decode(format!("negative {c}").into()))
}

fn i(v: u64) -> i64 {
    v as i64
}

const TX_COLS: &str =
    "leaf_index, height, tx_id, record_id, kind, category, state_key, content_type, data_hash, payload, auth";
// 11 columns; SQLite allows 32766 bound variables per statement.
const TX_ROWS_PER_INSERT: usize = 2000;
const NODE_ROWS_PER_INSERT: usize = 10_000;

impl LedgerStore for SqliteStore {
    fn location(&self) -> &str {
        &self.location
    }

    async fn commit_block(&self, c: &BlockCommit) -> Result<(), LedgerError> {
        let mut db = self.pool.begin().await.map_err(|e| self.err(e))?;
        let b = &c.block;
        sqlx::query(
            "INSERT INTO blocks (height, version, provider, previous_block_hash, block_hash, timestamp, merkle_root, tx_count, first_leaf)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(i(b.height))
        .bind(&b.version)
        .bind(b.provider.to_hex())
        .bind(b.previous_block_hash.to_hex())
        .bind(b.block_hash.to_hex())
        .bind(b.timestamp)
        .bind(b.merkle_root.to_hex())
        .bind(i(b.tx_count))
        .bind(i(b.first_leaf))
        .execute(&mut *db)
        .await
        .map_err(|e| self.err(e))?;

        for (chunk_no, chunk) in c.txs.chunks(TX_ROWS_PER_INSERT).enumerate() {
            let base = b.first_leaf + (chunk_no * TX_ROWS_PER_INSERT) as u64;
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!("INSERT INTO transactions ({TX_COLS}) "));
            qb.push_values(chunk.iter().enumerate(), |mut row, (k, t)| {
                let ct = &t.content;
                row.push_bind(i(base + k as u64))
                    .push_bind(i(b.height))
                    .push_bind(ct.tx_id.to_string())
                    .push_bind(ct.record_id.clone())
                    .push_bind(ct.kind.as_str())
                    .push_bind(ct.category.clone())
                    .push_bind(ct.state_key.clone())
                    .push_bind(ct.content_type.clone())
                    .push_bind(ct.data_hash.to_hex())
                    .push_bind(ct.payload.clone())
                    .push_bind(encode_auth(&t.auth));
            });
            qb.build().execute(&mut *db).await.map_err(|e| self.err(e))?;
        }

        for chunk in c.nodes.chunks(NODE_ROWS_PER_INSERT) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO merkle_nodes (id, hash) ");
            qb.push_values(chunk, |mut row, (k, h)| {
                row.push_bind(k.packed()).push_bind(h.0.to_vec());
            });
            qb.build().execute(&mut *db).await.map_err(|e| self.err(e))?;
        }

        let cp = &c.checkpoint;
        sqlx::query(
            "INSERT INTO checkpoints (height, tree_size, root, block_hash, timestamp, key_id, signature) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(i(cp.height))
        .bind(i(cp.tree_size))
        .bind(cp.root.to_hex())
        .bind(cp.block_hash.to_hex())
        .bind(cp.timestamp)
        .bind(&cp.key_id)
        .bind(&cp.signature)
        .execute(&mut *db)
        .await
        .map_err(|e| self.err(e))?;
        db.commit().await.map_err(|e| self.err(e))
    }

    async fn head(&self) -> Result<Option<(BlockHeader, Checkpoint)>, LedgerError> {
        let row = sqlx::query("SELECT * FROM blocks ORDER BY height DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let Some(row) = row else { return Ok(None) };
        let b = self.block_from_row(&row)?;
        let cp = self
            .checkpoint(b.height)
            .await?
            .ok_or_else(|| self.corrupt(&format!("block {} has no checkpoint", b.height)))?;
        Ok(Some((b, cp)))
    }

    async fn nodes(&self, keys: &[NodeKey]) -> Result<Vec<Sm3Digest>, LedgerError> {
        let mut found = std::collections::HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(NODE_ROWS_PER_INSERT) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT id, hash FROM merkle_nodes WHERE id IN (");
            let mut sep = qb.separated(", ");
            for k in chunk {
                sep.push_bind(k.packed());
            }
            qb.push(")");
            for r in qb.build().fetch_all(&self.pool).await.map_err(|e| self.err(e))? {
                let id: i64 = r.try_get("id").map_err(|e| self.err(e))?;
                let h: Vec<u8> = r.try_get("hash").map_err(|e| self.err(e))?;
                let d = Sm3Digest::from_slice(&h).map_err(|_| self.corrupt(&format!("merkle_nodes.hash id {id}")))?;
                found.insert(id, d);
            }
        }
        keys.iter()
            .map(|k| {
                found
                    .get(&k.packed())
                    .copied()
                    .ok_or_else(|| self.corrupt(&format!("tree node level {} index {} is missing", k.level, k.index)))
            })
            .collect()
    }

    async fn block(&self, height: u64) -> Result<Option<BlockHeader>, LedgerError> {
        let row = sqlx::query("SELECT * FROM blocks WHERE height = ?")
            .bind(i(height))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| self.block_from_row(&r)).transpose()
    }

    async fn block_by_hash(&self, hash: &Sm3Digest) -> Result<Option<BlockHeader>, LedgerError> {
        let row = sqlx::query("SELECT * FROM blocks WHERE block_hash = ?")
            .bind(hash.to_hex())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| self.block_from_row(&r)).transpose()
    }

    async fn blocks(&self, from: u64, to: u64) -> Result<Vec<BlockHeader>, LedgerError> {
        let rows = sqlx::query("SELECT * FROM blocks WHERE height >= ? AND height < ? ORDER BY height")
            .bind(i(from))
            .bind(i(to))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter().map(|r| self.block_from_row(r)).collect()
    }

    async fn checkpoint(&self, height: u64) -> Result<Option<Checkpoint>, LedgerError> {
        let row = sqlx::query("SELECT * FROM checkpoints WHERE height = ?")
            .bind(i(height))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| self.checkpoint_from_row(&r)).transpose()
    }

    async fn tx(&self, tx_id: &str) -> Result<Option<StoredTx>, LedgerError> {
        let row = sqlx::query("SELECT * FROM transactions WHERE tx_id = ?")
            .bind(tx_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| self.tx_from_row(&r)).transpose()
    }

    async fn tx_by_record(&self, record_id: &str) -> Result<Option<StoredTx>, LedgerError> {
        let row = sqlx::query("SELECT * FROM transactions WHERE record_id = ?")
            .bind(record_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| self.tx_from_row(&r)).transpose()
    }

    async fn conflicts(&self, record_ids: &[String], tx_ids: &[String]) -> Result<Vec<(String, String)>, LedgerError> {
        let mut out = Vec::new();
        for (col, ids) in [("record_id", record_ids), ("tx_id", tx_ids)] {
            for chunk in ids.chunks(NODE_ROWS_PER_INSERT) {
                let mut qb: QueryBuilder<Sqlite> =
                    QueryBuilder::new(format!("SELECT record_id, tx_id FROM transactions WHERE {col} IN ("));
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(id.clone());
                }
                qb.push(")");
                for r in qb.build().fetch_all(&self.pool).await.map_err(|e| self.err(e))? {
                    out.push((
                        r.try_get("record_id").map_err(|e| self.err(e))?,
                        r.try_get("tx_id").map_err(|e| self.err(e))?,
                    ));
                }
            }
        }
        Ok(out)
    }

    async fn txs(&self, from: u64, to: u64) -> Result<Vec<StoredTx>, LedgerError> {
        let rows =
            sqlx::query("SELECT * FROM transactions WHERE leaf_index >= ? AND leaf_index < ? ORDER BY leaf_index")
                .bind(i(from))
                .bind(i(to))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.err(e))?;
        rows.iter().map(|r| self.tx_from_row(r)).collect()
    }

    async fn state(&self, category: &str, key: &str) -> Result<Vec<StoredTx>, LedgerError> {
        let rows = sqlx::query("SELECT * FROM transactions WHERE category = ? AND state_key = ? ORDER BY leaf_index")
            .bind(category)
            .bind(key)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter().map(|r| self.tx_from_row(r)).collect()
    }

    async fn stats(&self) -> Result<StoreStats, LedgerError> {
        let (height, transactions) = match self.head().await? {
            Some((b, cp)) => (b.height, cp.tree_size),
            None => (0, 0),
        };
        let mut size_bytes = 0;
        for suffix in ["", "-wal"] {
            let p = PathBuf::from(format!("{}{suffix}", self.path.display()));
            size_bytes += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
        Ok(StoreStats {
            height,
            transactions,
            size_bytes,
        })
    }
}
