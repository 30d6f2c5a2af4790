//! Ledger storage behind a trait: the embedded SQLite implementation
//! ([`SqliteStore`]) and PostgreSQL for production ([`PgStore`]); which one
//! a database is, and what differs between them, is [`backend`].
//!
//! **Architecture invariant:** a store only ever inserts. There is no method
//! that updates or deletes a ledger row, and the SQL schema refuses both
//! with triggers.

mod any;
pub mod backend;
mod postgres;
mod sql;
mod sqlite;

pub use any::AnyStore;
pub use backend::{Backend, Dialect, Reader, SideConn, SideTx};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use std::future::Future;

use secure_gateway::Sm3Digest;
use serde::{Deserialize, Serialize};

use crate::block::{BlockHeader, Checkpoint};
use crate::error::LedgerError;
use crate::merkle::NodeKey;
use crate::tx::Transaction;

/// A transaction as stored: where it sits in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTx {
    /// Position in the log-level tree.
    pub leaf_index: u64,
    /// Height of the block that holds it.
    pub height: u64,
    /// The transaction.
    pub tx: Transaction,
}

/// Figures for `vaxgate ledger stats` and `/v1/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Height of the newest block.
    pub height: u64,
    /// Transactions in the log.
    pub transactions: u64,
    /// Bytes the store occupies.
    pub size_bytes: u64,
}

/// Everything one block commit writes, atomically.
#[derive(Debug, Clone)]
pub struct BlockCommit {
    /// The new block header.
    pub block: BlockHeader,
    /// Its transactions, in log order starting at `block.first_leaf`.
    pub txs: Vec<Transaction>,
    /// Per transaction, its leaf hash within its signed batch (format 2;
    /// None for format 1): a batch whose every record is in the block is
    /// stored with its Merkle tree, and its rows without their audit paths.
    pub batch_leaves: Vec<Option<Sm3Digest>>,
    /// Every perfect-subtree node the block completes (level 0 = leaves).
    pub nodes: Vec<(NodeKey, Sm3Digest)>,
    /// The checkpoint signed after the block.
    pub checkpoint: Checkpoint,
}

/// The future a [`SideWrite`] returns.
pub type SideFuture<'c> = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'c>>;

/// Rows derived from one append request that the store writes in the same
/// database transaction as the block holding the request's transactions,
/// so they exist exactly when the block does and cost no second commit
/// (the gateway's relational projection). A side write must only insert
/// into its own tables, or append to rows of its own (the gateway's
/// custody histories); if it fails, the block is not written.
pub trait SideWrite: Send + Sync {
    /// Writes the rows of the request's transactions, which the block holds
    /// at leaf indexes `first_leaf..` in request order, at `height`.
    fn write<'c>(&'c self, conn: SideConn<'c>, first_leaf: u64, height: u64) -> SideFuture<'c>;
}

/// One request's side write within a block.
pub struct SidePart<'a> {
    /// What to write.
    pub write: &'a dyn SideWrite,
    /// Leaf index of the request's first transaction.
    pub first_leaf: u64,
}

impl std::fmt::Debug for SidePart<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidePart")
            .field("first_leaf", &self.first_leaf)
            .finish_non_exhaustive()
    }
}

/// A ledger storage backend. All writes go through [`LedgerStore::commit_block`],
/// which must be atomic and durable when it returns.
pub trait LedgerStore: Send + Sync + 'static {
    /// Where the data lives (path or URL without credentials), for messages.
    fn location(&self) -> &str;
    /// Writes one block, its transactions, tree nodes and checkpoint in one
    /// durable transaction.
    fn commit_block(&self, c: &BlockCommit) -> impl Future<Output = Result<(), LedgerError>> + Send {
        self.commit_block_with(c, &[])
    }
    /// [`LedgerStore::commit_block`] plus side writes in the same database
    /// transaction: all of it is written, or none.
    fn commit_block_with(
        &self,
        c: &BlockCommit,
        side: &[SidePart<'_>],
    ) -> impl Future<Output = Result<(), LedgerError>> + Send;
    /// The newest block and its checkpoint, or `None` for an empty ledger.
    fn head(&self) -> impl Future<Output = Result<Option<(BlockHeader, Checkpoint)>, LedgerError>> + Send;
    /// Stored tree nodes, in the order asked; an error if any is missing.
    fn nodes(&self, keys: &[NodeKey]) -> impl Future<Output = Result<Vec<Sm3Digest>, LedgerError>> + Send;
    /// A block by height.
    fn block(&self, height: u64) -> impl Future<Output = Result<Option<BlockHeader>, LedgerError>> + Send;
    /// A block by its hash.
    fn block_by_hash(&self, hash: &Sm3Digest) -> impl Future<Output = Result<Option<BlockHeader>, LedgerError>> + Send;
    /// Blocks with heights in `[from, to)`, ascending.
    fn blocks(&self, from: u64, to: u64) -> impl Future<Output = Result<Vec<BlockHeader>, LedgerError>> + Send;
    /// A checkpoint by block height.
    fn checkpoint(&self, height: u64) -> impl Future<Output = Result<Option<Checkpoint>, LedgerError>> + Send;
    /// A transaction by id.
    fn tx(&self, tx_id: &str) -> impl Future<Output = Result<Option<StoredTx>, LedgerError>> + Send;
    /// A transaction by business record (event) id.
    fn tx_by_record(&self, record_id: &str) -> impl Future<Output = Result<Option<StoredTx>, LedgerError>> + Send;
    /// The stored transactions of any of these record ids (one query per
    /// few thousand ids), in no particular order; ids not stored are absent.
    fn txs_by_records(&self, record_ids: &[String]) -> impl Future<Output = Result<Vec<StoredTx>, LedgerError>> + Send;
    /// Which of these record ids or transaction ids are already stored:
    /// `(record_id, tx_id)` of every stored transaction that matches either.
    fn conflicts(
        &self,
        record_ids: &[String],
        tx_ids: &[String],
    ) -> impl Future<Output = Result<Vec<(String, String)>, LedgerError>> + Send;
    /// Transactions with leaf index in `[from, to)`, ascending.
    fn txs(&self, from: u64, to: u64) -> impl Future<Output = Result<Vec<StoredTx>, LedgerError>> + Send;
    /// Transactions of one category with leaf index ≥ `from`, in log order,
    /// at most `limit`.
    fn category(
        &self,
        category: &str,
        from: u64,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<StoredTx>, LedgerError>> + Send;
    /// Key-value state by category (R2.3): every version of `key`, oldest
    /// first; the last one is the current value.
    fn state(&self, category: &str, key: &str) -> impl Future<Output = Result<Vec<StoredTx>, LedgerError>> + Send;
    /// Height, transaction count and size.
    fn stats(&self) -> impl Future<Output = Result<StoreStats, LedgerError>> + Send;
}
