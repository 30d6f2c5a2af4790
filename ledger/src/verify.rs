//! Full verification of a stored ledger (`vaxgate ledger verify`):
//! recomputes every transaction leaf, every block Merkle root, the block-hash
//! chain, every stored tree node, every submitter batch signature and every
//! checkpoint signature. Stops at the first failure and names the block and
//! transaction.

use std::collections::HashSet;
use std::sync::Arc;

use secure_gateway::{CryptoProvider, RustCryptoProvider, Sm2VerifyingKey, Sm3Digest};
use serde::{Deserialize, Serialize};

use crate::block::{BlockHeader, compute_block_hash};
use crate::error::LedgerError;
use crate::ledger::GenesisInfo;
use crate::merkle::{self, Frontier, NodeKey};
use crate::store::{LedgerStore, StoredTx};
use crate::tx::{TxFormat, TxKind};

/// A tree node a block completed: where it is and its hash.
type TreeNode = (NodeKey, Sm3Digest);

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
    progress: impl FnMut(u64, u64),
) -> Result<VerifyReport, LedgerError> {
    verify_ledger_in(store, trusted, Arc::new(RustCryptoProvider::new()), progress).await
}

/// [`verify_ledger`] with every signature (batches, checkpoints) checked by
/// `provider`, so a ledger written through one crypto provider can be
/// verified through another.
pub async fn verify_ledger_in<S: LedgerStore>(
    store: &S,
    trusted: Option<&Sm2VerifyingKey>,
    provider: Arc<dyn CryptoProvider>,
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport, LedgerError> {
    let (head, _) = store
        .head()
        .await?
        .ok_or_else(|| LedgerError::NotFound(format!("{} holds no ledger (no blocks)", store.location())))?;
    let mut v = Verifier::start(store, trusted).await?;
    v.crypto = provider;
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
    /// Checks the signatures.
    crypto: Arc<dyn CryptoProvider>,
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
            crypto: Arc::new(RustCryptoProvider::new()),
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
        if TxFormat::of_block_version(&b.version).is_none() {
            return Err(fail(
                h,
                None,
                format!("unknown block version {:?} (known: \"1.0\", \"2.0\")", b.version),
            ));
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
        let format = TxFormat::of_block_version(&b.version).unwrap_or_default();
        let (txs, checked) = hash_txs(b.height, b.first_leaf, format, txs).await?;
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
    ) -> Result<(Vec<Sm3Digest>, Vec<TreeNode>), LedgerError> {
        let mut leaves = Vec::with_capacity(txs.len());
        let mut emitted: Vec<TreeNode> = Vec::with_capacity(txs.len() * 2);
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
        a.verify_signature_in(self.crypto.as_ref()).map_err(|e| {
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
        cp.verify_in(self.crypto.as_ref(), &self.node_key)
            .map_err(|e| fail(h, None, e))
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
async fn hash_txs(
    h: u64,
    first_leaf: u64,
    format: TxFormat,
    txs: Vec<StoredTx>,
) -> Result<(Vec<StoredTx>, Vec<TxChecked>), LedgerError> {
    let hashing = tokio::task::spawn_blocking(move || {
        let checked = par_map(&txs, |k, st| check_tx(st, h, first_leaf + k as u64, format));
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
/// format (its block's), genesis rule, batch membership. Returns its leaf
/// hash and its batch digest, which identifies its batch signature (checked
/// once per batch by the caller). The payload is hashed once for both.
fn check_tx(
    st: &StoredTx,
    height: u64,
    expected_leaf: u64,
    format: TxFormat,
) -> Result<(Sm3Digest, Sm3Digest), LedgerError> {
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
    if t.content.format != format {
        return Err(fail(
            height,
            id(),
            format!(
                "it is stored in format {}, but its block (version {}) holds format {}",
                t.content.format.number(),
                format.block_version(),
                format.number()
            ),
        ));
    }
    if (t.content.kind == TxKind::Genesis) != (expected_leaf == 0) {
        return Err(fail(height, id(), "a genesis transaction may only be the first leaf"));
    }
    let a = &t.auth;
    let payload_sm3 = secure_gateway::sm3(&t.content.payload);
    let content_hash = t.content.content_hash_with(&payload_sm3);
    a.verify_membership_with(&t.content, Some((&content_hash, &payload_sm3)))
        .map_err(|e| {
            fail(
                height,
                id(),
                format!("record is not in its signed batch (content altered?): {e}"),
            )
        })?;
    let batch = a.batch_digest();
    Ok((t.leaf_hash_in_batch(&content_hash, &batch), batch))
}

/// `f` over `items` (with their index) on up to four threads, results in
/// order; small inputs stay on the caller's thread. (The gateway's check of
/// its projection against the ledger uses it too.)
pub fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(usize, &T) -> R + Sync) -> Vec<R> {
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

#[cfg(test)]
mod tests {
    //! Each phase alone, on a small SQLite ledger: genesis (block 0) and
    //! blocks 1, 2 and 3 of 5, 3 and 2 transactions, one batch each.

    use super::*;
    use crate::{Ledger, LedgerConfig, SqliteStore, TxContent, sign_batch};
    use secure_gateway::{Signer, sm3};

    fn content(i: u32) -> TxContent {
        TxContent {
            tx_id: uuid::Uuid::new_v4(),
            record_id: format!("ev-{i}"),
            kind: TxKind::Data,
            category: "vaccination".into(),
            state_key: format!("8{i:019}"),
            content_type: "json".into(),
            data_hash: sm3(&i.to_be_bytes()),
            payload: vec![i as u8; 100],
            fields_root: None,
            format: TxFormat::CURRENT,
        }
    }

    /// A ledger of genesis and three blocks (5, 3 and 2 transactions) in a
    /// directory of its own.
    async fn ledger(node: &Signer) -> (tempfile::TempDir, Ledger<SqliteStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("l.db")).await.unwrap();
        let l = Ledger::open(store, node.clone(), "test", LedgerConfig::default())
            .await
            .unwrap();
        for (from, n) in [(0, 5), (5, 3), (8, 2)] {
            let batch = sign_batch("91110000MA0000000X", node, (from..from + n).map(content).collect(), 1).unwrap();
            l.append(batch).await.unwrap();
        }
        (dir, l)
    }

    /// A verifier of `l` that has checked its first `n` blocks, and all of
    /// its blocks.
    async fn checked(l: &Ledger<SqliteStore>, n: usize) -> (Verifier<'_, SqliteStore>, Vec<BlockHeader>) {
        let mut v = Verifier::start(l.store(), None).await.unwrap();
        let blocks = v.read_blocks(0, 4).await.unwrap();
        v.check_run(0, &blocks[..n], &mut |_| {}).await.unwrap();
        (v, blocks)
    }

    impl<S: LedgerStore> Verifier<'_, S> {
        /// A copy, to try a phase that fails without spoiling `self`.
        fn clone_state(&self) -> Self {
            Verifier {
                store: self.store,
                node_key: self.node_key.clone(),
                provider: self.provider,
                frontier: self.frontier.clone(),
                prev_hash: self.prev_hash,
                prev_ts: self.prev_ts,
                verified_batches: self.verified_batches.clone(),
                report: self.report.clone(),
                crypto: self.crypto.clone(),
            }
        }
    }

    /// The failure of `r`: (height, transaction, reason).
    fn failure<T>(r: Result<T, LedgerError>) -> (u64, Option<String>, String) {
        match r {
            Err(LedgerError::Integrity { height, tx, reason }) => (height, tx, reason),
            Err(e) => panic!("expected an integrity failure, got {e}"),
            Ok(_) => panic!("expected an integrity failure, got success"),
        }
    }

    #[tokio::test]
    async fn start_takes_the_node_key_from_genesis_and_holds_it_to_the_trusted_one() {
        let (node, other) = (crate::test_signer(), crate::test_signer());
        let (_dir, l) = ledger(&node).await;
        let v = Verifier::start(l.store(), None).await.unwrap();
        assert!(v.node_key == *node.verifying_key());
        assert_eq!(v.report.node_key_id, node.verifying_key().key_id());
        assert_eq!((v.frontier.size(), v.prev_hash), (0, Sm3Digest::ZERO));
        assert!(Verifier::start(l.store(), Some(node.verifying_key())).await.is_ok());
        let (height, tx, reason) = failure(Verifier::start(l.store(), Some(other.verifying_key())).await);
        assert_eq!((height, tx), (0, None));
        assert_eq!(
            reason,
            format!(
                "the ledger's node key is {}, not the trusted key {}",
                node.verifying_key().key_id(),
                other.verifying_key().key_id()
            )
        );
    }

    #[tokio::test]
    async fn check_header_names_each_broken_link_to_the_chain() {
        let (_dir, l) = ledger(&crate::test_signer()).await;
        let (v, blocks) = checked(&l, 1).await;
        let b1 = &blocks[1];
        v.check_header(b1, 1).unwrap();
        type Break = fn(&mut BlockHeader);
        let cases: [(Break, &str); 5] = [
            (
                |b| b.version = "9.9".into(),
                "unknown block version \"9.9\" (known: \"1.0\", \"2.0\")",
            ),
            (
                |b| b.provider = Sm3Digest::ZERO,
                "provider is not the ledger's node key",
            ),
            (
                |b| b.previous_block_hash = Sm3Digest::ZERO,
                "previous_block_hash does not match the previous block",
            ),
            (
                |b| b.timestamp = i64::MIN,
                "timestamp is earlier than the previous block's",
            ),
            (|b| b.first_leaf = 2, "first_leaf is 2, expected 1"),
        ];
        for (perturb, want) in cases {
            let mut b = b1.clone();
            perturb(&mut b);
            assert_eq!(failure(v.check_header(&b, 1)), (1, None, want.to_string()));
        }
        assert_eq!(
            failure(v.check_header(b1, 2)),
            (2, None, "expected block 2, found height 1".to_string())
        );
    }

    #[tokio::test]
    async fn read_ahead_reads_only_where_the_block_says_the_next_starts() {
        let (_dir, l) = ledger(&crate::test_signer()).await;
        let (v, blocks) = checked(&l, 0).await;
        let next = read_ahead(l.store(), &blocks[1], Some(&blocks[2]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.iter().map(|t| t.leaf_index).collect::<Vec<_>>(), [6, 7, 8]);
        let mut moved = blocks[2].clone();
        moved.first_leaf += 1;
        assert!(read_ahead(l.store(), &blocks[1], Some(&moved)).await.is_none());
        assert!(read_ahead(l.store(), &blocks[3], None).await.is_none());
        // What was read ahead must be as much as the block lists.
        let (height, _, reason) = failure(v.block_txs(&blocks[2], Some(Ok(next[..2].to_vec()))).await);
        assert_eq!(
            (height, reason.as_str()),
            (2, "block lists 3 transactions, 2 are stored")
        );
        assert_eq!(v.block_txs(&blocks[2], None).await.unwrap(), next);
    }

    #[tokio::test]
    async fn check_block_phases_each_catch_their_own_damage() {
        let (_dir, l) = ledger(&crate::test_signer()).await;
        let (mut v, blocks) = checked(&l, 2).await;
        let b2 = &blocks[2];
        let txs = v.block_txs(b2, None).await.unwrap();
        // The checkpoint of block 2 is for the tree with block 2's leaves.
        assert_eq!(
            failure(v.check_checkpoint(b2).await).2,
            "checkpoint does not match the block and the tree"
        );

        // A batch signature that does not verify: named with its transaction.
        let mut forged = txs.clone();
        forged[0].tx.auth.batch.timestamp_ms += 1;
        let checked = hash_txs(2, b2.first_leaf, TxFormat::CURRENT, forged.clone())
            .await
            .unwrap()
            .1;
        let (height, tx, reason) = failure(v.clone_state().add_txs(2, &forged, checked));
        assert_eq!((height, tx), (2, Some(forged[0].tx.content.tx_id.to_string())));
        assert!(
            reason.starts_with("batch signature of 91110000MA0000000X: "),
            "{reason}"
        );

        // A transaction of another format than its block's: named.
        let checked = hash_txs(2, b2.first_leaf, TxFormat::V1, txs.clone()).await.unwrap().1;
        let (height, tx, reason) = failure(v.clone_state().add_txs(2, &txs, checked));
        assert_eq!((height, tx), (2, Some(txs[0].tx.content.tx_id.to_string())));
        assert_eq!(
            reason,
            "it is stored in format 2, but its block (version 1.0) holds format 1"
        );

        // The block's three transactions are one batch: one signature check.
        let (txs, checked) = hash_txs(2, b2.first_leaf, TxFormat::CURRENT, txs).await.unwrap();
        let (leaves, emitted) = v.add_txs(2, &txs, checked).unwrap();
        assert_eq!((v.report.transactions, v.report.batch_signatures), (9, 3));
        assert_eq!(v.frontier.size(), 9);
        check_block_hashes(b2, &leaves).unwrap();
        v.check_nodes(2, &emitted).await.unwrap();
        v.check_checkpoint(b2).await.unwrap();

        let swapped = [leaves[1], leaves[0], leaves[2]];
        assert_eq!(
            failure(check_block_hashes(b2, &swapped)).2,
            "merkle_root does not match the block's transactions"
        );
        let mut later = b2.clone();
        later.timestamp += 1;
        assert_eq!(
            failure(check_block_hashes(&later, &leaves)).2,
            "block_hash is not SM3(SM3(previous_block_hash ‖ timestamp ‖ merkle_root))"
        );
        let mut wrong = emitted.clone();
        let (k, hash) = wrong.last_mut().unwrap();
        *hash = Sm3Digest::ZERO;
        let want = format!("stored tree node level {} index {} is wrong", k.level, k.index);
        assert_eq!(failure(v.check_nodes(2, &wrong).await), (2, None, want));
    }

    #[tokio::test]
    async fn finish_refuses_a_transaction_beyond_the_last_block() {
        let (_dir, l) = ledger(&crate::test_signer()).await;
        let (mut v, blocks) = checked(&l, 0).await;
        let mut seen = Vec::new();
        v.check_run(0, &blocks[..3], &mut |h| seen.push(h)).await.unwrap();
        assert_eq!(seen, [0, 1, 2]);
        // Stopped at block 2, the verifier sees block 3's first leaf as a stray.
        let stray = l.store().txs(9, 10).await.unwrap().remove(0);
        assert_eq!(
            failure(v.clone_state().finish(2).await),
            (
                2,
                Some(stray.tx.content.tx_id.to_string()),
                "transaction at leaf 9 belongs to no block".to_string()
            )
        );
        v.check_run(3, &blocks[3..], &mut |_| {}).await.unwrap();
        let report = v.finish(3).await.unwrap();
        assert_eq!(report, verify_ledger(l.store(), None, |_, _| {}).await.unwrap());
        assert_eq!(
            (report.blocks, report.transactions, report.batch_signatures),
            (4, 11, 4)
        );
        assert_eq!(report.head_hash, blocks[3].block_hash);
    }
}
