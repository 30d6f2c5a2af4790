//! A store chosen at run time from a URL: `sqlite:PATH` or `postgres://...`.

use std::path::Path;

use secure_gateway::Sm3Digest;

use super::backend::{Backend, Reader, SideTx};
use super::{BlockCommit, LedgerStore, PgStore, SidePart, SqliteStore, StoreStats, StoredTx};
use crate::block::{BlockHeader, Checkpoint};
use crate::error::LedgerError;
use crate::merkle::NodeKey;
use crate::on_backend;

/// SQLite or PostgreSQL, by configuration.
pub type AnyStore = Backend<SqliteStore, PgStore>;

/// Whether `url` names a PostgreSQL database.
fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl AnyStore {
    /// Opens `sqlite:PATH` (relative paths against `base`) or connects to
    /// `postgres://...`; creates the schema when needed.
    pub async fn open(url: &str, base: &Path) -> Result<Self, LedgerError> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.trim_start_matches("//");
            let p = Path::new(path);
            let p = if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(|e| LedgerError::storage(&p.display().to_string(), e))?;
            }
            Ok(Backend::Sqlite(SqliteStore::open(&p).await?))
        } else if is_postgres(url) {
            Ok(Backend::Postgres(PgStore::connect(url).await?))
        } else {
            Err(LedgerError::Setup(format!(
                "ledger URL must start with sqlite: or postgres://, not {url:?}"
            )))
        }
    }

    /// Opens an existing ledger named the way `vaxgate ledger` tools take
    /// it: a SQLite file (an error if there is none), or a `postgres://` URL.
    pub async fn open_existing(db: &Path) -> Result<Self, LedgerError> {
        let s = db.to_string_lossy();
        if is_postgres(&s) {
            Ok(Backend::Postgres(PgStore::connect(&s).await?))
        } else {
            Ok(Backend::Sqlite(SqliteStore::open_existing(db).await?))
        }
    }

    /// Flushes and closes.
    pub async fn close(&self) -> Result<(), LedgerError> {
        on_backend!(self, s => s.close().await)
    }

    /// A connection from the pool of readers, for queries of any table.
    pub async fn reader(&self) -> Result<Reader, LedgerError> {
        on_backend!(self, s => s.reader().await)
    }

    /// A database transaction on the connection that commits blocks, for
    /// writing tables derived from the ledger ([`SideTx`]).
    pub async fn side_tx(&self) -> Result<SideTx, LedgerError> {
        on_backend!(self, s => s.side_tx().await)
    }
}

impl LedgerStore for AnyStore {
    fn location(&self) -> &str {
        on_backend!(self, s => s.location())
    }
    async fn commit_block_with(&self, c: &BlockCommit, side: &[SidePart<'_>]) -> Result<(), LedgerError> {
        on_backend!(self, s => s.commit_block_with(c, side).await)
    }
    async fn head(&self) -> Result<Option<(BlockHeader, Checkpoint)>, LedgerError> {
        on_backend!(self, s => s.head().await)
    }
    async fn nodes(&self, keys: &[NodeKey]) -> Result<Vec<Sm3Digest>, LedgerError> {
        on_backend!(self, s => s.nodes(keys).await)
    }
    async fn block(&self, height: u64) -> Result<Option<BlockHeader>, LedgerError> {
        on_backend!(self, s => s.block(height).await)
    }
    async fn block_by_hash(&self, hash: &Sm3Digest) -> Result<Option<BlockHeader>, LedgerError> {
        on_backend!(self, s => s.block_by_hash(hash).await)
    }
    async fn blocks(&self, from: u64, to: u64) -> Result<Vec<BlockHeader>, LedgerError> {
        on_backend!(self, s => s.blocks(from, to).await)
    }
    async fn checkpoint(&self, height: u64) -> Result<Option<Checkpoint>, LedgerError> {
        on_backend!(self, s => s.checkpoint(height).await)
    }
    async fn tx(&self, tx_id: &str) -> Result<Option<StoredTx>, LedgerError> {
        on_backend!(self, s => s.tx(tx_id).await)
    }
    async fn tx_by_record(&self, record_id: &str) -> Result<Option<StoredTx>, LedgerError> {
        on_backend!(self, s => s.tx_by_record(record_id).await)
    }
    async fn txs_by_records(&self, record_ids: &[String]) -> Result<Vec<StoredTx>, LedgerError> {
        on_backend!(self, s => s.txs_by_records(record_ids).await)
    }
    async fn conflicts(&self, record_ids: &[String], tx_ids: &[String]) -> Result<Vec<(String, String)>, LedgerError> {
        on_backend!(self, s => s.conflicts(record_ids, tx_ids).await)
    }
    async fn txs(&self, from: u64, to: u64) -> Result<Vec<StoredTx>, LedgerError> {
        on_backend!(self, s => s.txs(from, to).await)
    }
    async fn category(&self, category: &str, from: u64, limit: u64) -> Result<Vec<StoredTx>, LedgerError> {
        on_backend!(self, s => s.category(category, from, limit).await)
    }
    async fn state(&self, category: &str, key: &str) -> Result<Vec<StoredTx>, LedgerError> {
        on_backend!(self, s => s.state(category, key).await)
    }
    async fn stats(&self) -> Result<StoreStats, LedgerError> {
        on_backend!(self, s => s.stats().await)
    }
}
