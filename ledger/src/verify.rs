//! Full verification of a stored ledger (`vaxgate ledger verify`):
//! recomputes every transaction leaf, every block Merkle root, the block-hash
//! chain, every stored tree node, every submitter batch signature and every
//! checkpoint signature. Stops at the first failure and names the block and
//! transaction.

use std::collections::HashSet;

use secure_gateway::{Sm2VerifyingKey, Sm3Digest};
use serde::{Deserialize, Serialize};

use crate::block::{BLOCK_VERSION, BlockHeader, compute_block_hash};
use crate::error::LedgerError;
use crate::ledger::GenesisInfo;
use crate::merkle::{self, Frontier, NodeKey};
use crate::store::{LedgerStore, StoredTx};
use crate::tx::TxKind;

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Blocks checked (height + 1).
    pub blocks: u64,
    /// Transactions checked.
    pub transactions: u64,
    /// Distinct submitter batch signatures checked.
    pub batch_signatures: u64,
    /// Hash of the newest block.
    pub head_hash: Sm3Digest,
    /// Root of the log-level tree.
    pub root: Sm3Digest,
    /// Key id of the node key that signed the checkpoints.
    pub node_key_id: String,
}

const BLOCKS_PER_READ: u64 = 256;

fn fail(height: u64, tx: Option<String>, reason: impl Into<String>) -> LedgerError {
    LedgerError::Integrity {
        height,
        tx,
        reason: reason.into(),
    }
}

/// Verifies the whole ledger. With `trusted`, the checkpoints must be signed
/// by that key; otherwise by the key the genesis block names.
/// `progress(height, head_height)` is called after each block.
pub async fn verify_ledger<S: LedgerStore>(
    store: &S,
    trusted: Option<&Sm2VerifyingKey>,
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport, LedgerError> {
    let (head, _) = store
        .head()
        .await?
        .ok_or_else(|| LedgerError::NotFound(format!("{} holds no ledger (no blocks)", store.location())))?;
    let mut v = Verifier::start(store, trusted).await?;
    let mut height = 0u64;
    while height <= head.height {
        let to = (height + BLOCKS_PER_READ).min(head.height + 1);
        let blocks = v.read_blocks(height, to).await?;
        v.check_run(height, &blocks, &mut |h| progress(h, head.height)).await?;
        height = to;
    }
    v.finish(head.height).await
}

/// What one transaction's own checks give: its leaf hash and the digest
/// that identifies its batch signature (see [`check_tx`]).
type TxChecked = Result<(Sm3Digest, Sm3Digest), LedgerError>;

/// The state that flows from one phase of the verification to the next:
/// the node key from the genesis transaction, the chain so far (previous
/// block, log-level tree), the batch signatures already checked and the
/// counts of the report.
struct Verifier<'s, S> {
    store: &'s S,
    node_key: Sm2VerifyingKey,
    /// SM3 of the node key: the `provider` of every block.
    provider: Sm3Digest,
    /// The log-level tree over every leaf checked so far.
    frontier: Frontier,
    /// Hash of the last block checked (zero before the genesis block).
    prev_hash: Sm3Digest,
    /// Timestamp of the last block checked.
    prev_ts: i64,
    /// Batch signatures checked so far, by the digest [`check_tx`] returns.
    verified_batches: HashSet<Sm3Digest>,
    report: VerifyReport,
}

impl<'s, S: LedgerStore> Verifier<'s, S> {
    /// Phase 1: the node key from the genesis transaction (and, with
    /// `trusted`, the check that it is that key); nothing checked yet.
    async fn start(store: &'s S, trusted: Option<&Sm2VerifyingKey>) -> Result<Self, LedgerError> {
        let node_key = genesis_node_key(store, trusted).await?;
        Ok(Verifier {
            store,
            provider: node_key.fingerprint(),
            frontier: Frontier::default(),
            prev_hash: Sm3Digest::ZERO,
            prev_ts: i64::MIN,
            verified_batches: HashSet::new(),
            report: VerifyReport {
                blocks: 0,
                transactions: 0,
                batch_signatures: 0,
                head_hash: Sm3Digest::ZERO,
                root: merkle::empty_root(),
                node_key_id: node_key.key_id().to_string(),
            },
            node_key,
        })
    }

    /// The headers of blocks `from..to`, every one of them: a gap is a
    /// missing block.
    async fn read_blocks(&self, from: u64, to: u64) -> Result<Vec<BlockHeader>, LedgerError> {
        let blocks = self.store.blocks(from, to).await?;
        if blocks.len() as u64 != to - from {
            let missing = (from..to)
                .find(|h| !blocks.iter().any(|b| b.height == *h))
                .unwrap_or(from);
            return Err(fail(missing, None, "block is missing"));
        }
        Ok(blocks)
    }

    /// Phase 2, the read-ahead loop: checks `blocks` (the first at height
    /// `from`) in order, each while the next one's transactions are read.
    /// `progress(height)` is called after each block.
    async fn check_run(
        &mut self,
        from: u64,
        blocks: &[BlockHeader],
        progress: &mut impl FnMut(u64),
    ) -> Result<(), LedgerError> {
        // The next block's transactions, read while a block is checked.
        let mut prefetched: Option<Result<Vec<StoredTx>, LedgerError>> = None;
        for (i, b) in blocks.iter().enumerate() {
            self.check_header(b, from + i as u64)?;
            let txs = self.block_txs(b, prefetched.take()).await?;
            // This block is checked while the next block's transactions are
            // read: reading (one SQLite thread) overlaps with the hashing (all
            // cores, off this task) and the in-order checks. The next block is
            // read ahead only where this one says it starts: a damaged header
            // is reported by the checks above before anything is read.
            let store = self.store;
            let (checked, next) = tokio::join!(self.check_block(b, txs), read_ahead(store, b, blocks.get(i + 1)));
            checked?;
            prefetched = next;
            self.prev_hash = b.block_hash;
            self.prev_ts = b.timestamp;
            self.report.blocks += 1;
            progress(b.height);
        }
        Ok(())
    }

    /// Phase 3: the checks of a block header against the chain so far
    /// (`height` is where it should stand), before any of its transactions
    /// is read.
    fn check_header(&self, b: &BlockHeader, height: u64) -> Result<(), LedgerError> {
        let h = b.height;
        if h != height {
            return Err(fail(height, None, format!("expected block {height}, found height {h}")));
        }
        if b.version != BLOCK_VERSION {
            return Err(fail(h, None, format!("unknown block version {:?}", b.version)));
        }
        if b.provider != self.provider {
            return Err(fail(h, None, "provider is not the ledger's node key"));
        }
        if b.previous_block_hash != self.prev_hash {
            return Err(fail(h, None, "previous_block_hash does not match the previous block"));
        }
        if b.timestamp < self.prev_ts {
            return Err(fail(h, None, "timestamp is earlier than the previous block's"));
        }
        if b.first_leaf != self.frontier.size() {
            return Err(fail(
                h,
                None,
                format!("first_leaf is {}, expected {}", b.first_leaf, self.frontier.size()),
            ));
        }
        Ok(())
    }

    /// The transactions of block `b`: those read ahead, or read now; as
    /// many as its header lists.
    async fn block_txs(
        &self,
        b: &BlockHeader,
        prefetched: Option<Result<Vec<StoredTx>, LedgerError>>,
    ) -> Result<Vec<StoredTx>, LedgerError> {
        let txs = match prefetched {
            Some(read) => read?,
            None => self.store.txs(b.first_leaf, b.first_leaf + b.tx_count).await?,
        };
        if txs.len() as u64 != b.tx_count {
            return Err(fail(
                b.height,
                None,
                format!("block lists {} transactions, {} are stored", b.tx_count, txs.len()),
            ));
        }
        Ok(txs)
    }

    /// Phase 4: a block with its transactions: each transaction and its
    /// batch signature, the block's Merkle root and hash, the stored tree
    /// nodes and the block's checkpoint. Leaves the tree grown by the
    /// block's leaves.
    async fn check_block(&mut self, b: &BlockHeader, txs: Vec<StoredTx>) -> Result<(), LedgerError> {
        let (txs, checked) = hash_txs(b.height, b.first_leaf, txs).await?;
        let (leaves, emitted) = self.add_txs(b.height, &txs, checked)?;
        check_block_hashes(b, &leaves)?;
        self.check_nodes(b.height, &emitted).await?;
        self.check_checkpoint(b).await
    }

    /// Batch signatures (one SM2 check per batch) and the tree, in order:
    /// the first failure of `checked` (the transactions' own checks) or of
    /// a signature stops. Returns the block's leaves and the tree nodes
    /// they completed.
    fn add_txs(
        &mut self,
        h: u64,
        txs: &[StoredTx],
        checked: Vec<TxChecked>,
    ) -> Result<(Vec<Sm3Digest>, Vec<(NodeKey, Sm3Digest)>), LedgerError> {
        let mut leaves = Vec::with_capacity(txs.len());
        let mut emitted: Vec<(NodeKey, Sm3Digest)> = Vec::with_capacity(txs.len() * 2);
        for (st, c) in txs.iter().zip(checked) {
            let (leaf, memo) = c?;
            self.check_batch_signature(h, st, memo)?;
            self.report.transactions += 1;
            leaves.push(leaf);
            self.frontier.push(leaf, |level, index, hash| {
                emitted.push((NodeKey { level, index }, hash))
            });
        }
        Ok((leaves, emitted))
    }

    /// The batch signature of `st`, unless its batch (`memo`) was checked.
    fn check_batch_signature(&mut self, h: u64, st: &StoredTx, memo: Sm3Digest) -> Result<(), LedgerError> {
        if self.verified_batches.contains(&memo) {
            return Ok(());
        }
        let a = &st.tx.auth;
        a.verify_signature().map_err(|e| {
            fail(
                h,
                Some(st.tx.content.tx_id.to_string()),
                format!("batch signature of {}: {e}", a.signer),
            )
        })?;
        self.verified_batches.insert(memo);
        self.report.batch_signatures += 1;
        Ok(())
    }

    /// The stored tree nodes are the ones the tree just completed.
    async fn check_nodes(&self, h: u64, emitted: &[(NodeKey, Sm3Digest)]) -> Result<(), LedgerError> {
        let keys: Vec<NodeKey> = emitted.iter().map(|(k, _)| *k).collect();
        let stored = self
            .store
            .nodes(&keys)
            .await
            .map_err(|e| fail(h, None, e.to_string()))?;
        if let Some(((k, _), _)) = emitted.iter().zip(&stored).find(|((_, want), got)| want != *got) {
            return Err(fail(
                h,
                None,
                format!("stored tree node level {} index {} is wrong", k.level, k.index),
            ));
        }
        Ok(())
    }

    /// Block `b`'s checkpoint names it and the tree as it stands after its
    /// leaves, and is signed by the node key.
    async fn check_checkpoint(&self, b: &BlockHeader) -> Result<(), LedgerError> {
        let h = b.height;
        let cp = self
            .store
            .checkpoint(h)
            .await?
            .ok_or_else(|| fail(h, None, "checkpoint is missing"))?;
        if cp.height != h
            || cp.tree_size != self.frontier.size()
            || cp.root != self.frontier.root()
            || cp.block_hash != b.block_hash
        {
            return Err(fail(h, None, "checkpoint does not match the block and the tree"));
        }
        cp.verify(&self.node_key).map_err(|e| fail(h, None, e))
    }

    /// Phase 5, the tail: nothing may sit beyond the last block checked
    /// (`head_height`). Gives the report.
    async fn finish(mut self, head_height: u64) -> Result<VerifyReport, LedgerError> {
        let size = self.frontier.size();
        if let Some(extra) = self.store.txs(size, size + 1).await?.first() {
            return Err(fail(
                head_height,
                Some(extra.tx.content.tx_id.to_string()),
                format!("transaction at leaf {} belongs to no block", extra.leaf_index),
            ));
        }
        self.report.head_hash = self.prev_hash;
        self.report.root = self.frontier.root();
        Ok(self.report)
    }
}

/// The node key the genesis transaction (leaf 0) names; with `trusted`, it
/// must be that key.
async fn genesis_node_key<S: LedgerStore>(
    store: &S,
    trusted: Option<&Sm2VerifyingKey>,
) -> Result<Sm2VerifyingKey, LedgerError> {
    let genesis = store.txs(0, 1).await?;
    let g = genesis
        .first()
        .ok_or_else(|| fail(0, None, "the genesis transaction is missing"))?;
    if g.tx.content.kind != TxKind::Genesis || g.height != 0 {
        return Err(fail(
            0,
            Some(g.tx.content.tx_id.to_string()),
            "leaf 0 is not the genesis transaction",
        ));
    }
    let info: GenesisInfo = serde_json::from_slice(&g.tx.content.payload).map_err(|e| {
        fail(
            0,
            Some(g.tx.content.tx_id.to_string()),
            format!("genesis payload is not valid: {e}"),
        )
    })?;
    let node_key = Sm2VerifyingKey::from_public_key_pem(&info.node_public_key).map_err(|e| {
        fail(
            0,
            Some(g.tx.content.tx_id.to_string()),
            format!("genesis node key: {e}"),
        )
    })?;
    if let Some(t) = trusted
        && t != &node_key
    {
        return Err(fail(
            0,
            None,
            format!(
                "the ledger's node key is {}, not the trusted key {}",
                node_key.key_id(),
                t.key_id()
            ),
        ));
    }
    Ok(node_key)
}

/// The transactions' own checks ([`check_tx`]) for block `h` (first leaf
/// `first_leaf`), on all cores, off this task. Gives the transactions back
/// with one result each, in order.
async fn hash_txs(h: u64, first_leaf: u64, txs: Vec<StoredTx>) -> Result<(Vec<StoredTx>, Vec<TxChecked>), LedgerError> {
    let hashing = tokio::task::spawn_blocking(move || {
        let checked = par_map(&txs, |k, st| check_tx(st, h, first_leaf + k as u64));
        (txs, checked)
    });
    match hashing.await {
        Ok(done) => Ok(done),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(fail(h, None, format!("hashing stopped: {e}"))),
    }
}

/// Block `b`'s Merkle root is the root of `leaves` (its transactions'), and
/// its hash is computed from its header.
fn check_block_hashes(b: &BlockHeader, leaves: &[Sm3Digest]) -> Result<(), LedgerError> {
    let h = b.height;
    if merkle::root_of(leaves) != b.merkle_root {
        return Err(fail(h, None, "merkle_root does not match the block's transactions"));
    }
    if compute_block_hash(&b.previous_block_hash, b.timestamp, &b.merkle_root) != b.block_hash {
        return Err(fail(
            h,
            None,
            "block_hash is not SM3(SM3(previous_block_hash ‖ timestamp ‖ merkle_root))",
        ));
    }
    Ok(())
}

/// The transactions of `next`, read while `b` is checked, but only where
/// `b` says `next` starts (else `None`: they are read when `next` is
/// checked, after its header).
async fn read_ahead<S: LedgerStore>(
    store: &S,
    b: &BlockHeader,
    next: Option<&BlockHeader>,
) -> Option<Result<Vec<StoredTx>, LedgerError>> {
    match next {
        Some(n) if n.first_leaf == b.first_leaf + b.tx_count => {
            Some(store.txs(n.first_leaf, n.first_leaf + n.tx_count).await)
        }
        _ => None,
    }
}

/// The checks of one transaction that need nothing but itself: position,
/// genesis rule, batch membership. Returns its leaf hash and the digest
/// that identifies its batch signature (checked once per batch by the
/// caller). The content hash is computed once for both.
fn check_tx(st: &StoredTx, height: u64, expected_leaf: u64) -> Result<(Sm3Digest, Sm3Digest), LedgerError> {
    let t = &st.tx;
    let id = || Some(t.content.tx_id.to_string());
    if st.height != height {
        return Err(fail(
            height,
            id(),
            format!(
                "its row says block {}, but it is leaf {expected_leaf}, inside block {height}'s range \
                 (the row's height or the block header was changed)",
                st.height
            ),
        ));
    }
    if st.leaf_index != expected_leaf {
        return Err(fail(
            height,
            id(),
            format!(
                "its row says leaf {}, but it is read as leaf {expected_leaf} of block {height}",
                st.leaf_index
            ),
        ));
    }
    if (t.content.kind == TxKind::Genesis) != (expected_leaf == 0) {
        return Err(fail(height, id(), "a genesis transaction may only be the first leaf"));
    }
    let a = &t.auth;
    let content_hash = t.content.content_hash();
    a.verify_membership_with(&t.content, Some(&content_hash)).map_err(|e| {
        fail(
            height,
            id(),
            format!("record is not in its signed batch (content altered?): {e}"),
        )
    })?;
    let mut memo = secure_gateway::Sm3Hasher::new();
    memo.update(&a.batch.signed_bytes().map_err(|e| fail(height, id(), e.to_string()))?)
        .update(a.public_key.as_bytes())
        .update(&a.batch.signature);
    Ok((t.leaf_hash_with(&content_hash), memo.finalize()))
}

/// `f` over `items` (with their index) on up to four threads, results in
/// order; small inputs stay on the caller's thread.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(usize, &T) -> R + Sync) -> Vec<R> {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads = *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(4));
    if threads < 2 || items.len() < 64 {
        return items.iter().enumerate().map(|(i, t)| f(i, t)).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                s.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(i, t)| f(c * chunk + i, t))
                        .collect::<Vec<R>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}
