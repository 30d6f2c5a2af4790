//! Full verification of a stored ledger (`vaxgate ledger verify`):
//! recomputes every transaction leaf, every block Merkle root, the block-hash
//! chain, every stored tree node, every submitter batch signature and every
//! checkpoint signature. Stops at the first failure and names the block and
//! transaction.

use std::collections::HashSet;

use secure_gateway::{Sm2VerifyingKey, Sm3Digest};
use serde::{Deserialize, Serialize};

use crate::block::{BLOCK_VERSION, compute_block_hash};
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

    // The node key comes from the genesis transaction.
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
    let provider = node_key.fingerprint();

    let mut frontier = Frontier::default();
    let mut prev_hash = Sm3Digest::ZERO;
    let mut prev_ts = i64::MIN;
    let mut verified_batches: HashSet<Sm3Digest> = HashSet::new();
    let mut report = VerifyReport {
        blocks: 0,
        transactions: 0,
        batch_signatures: 0,
        head_hash: Sm3Digest::ZERO,
        root: merkle::empty_root(),
        node_key_id: node_key.key_id().to_string(),
    };

    let mut height = 0u64;
    while height <= head.height {
        let to = (height + BLOCKS_PER_READ).min(head.height + 1);
        let blocks = store.blocks(height, to).await?;
        if blocks.len() as u64 != to - height {
            let missing = (height..to)
                .find(|h| !blocks.iter().any(|b| b.height == *h))
                .unwrap_or(height);
            return Err(fail(missing, None, "block is missing"));
        }
        // The next block's transactions, read while a block is checked.
        let mut prefetched: Option<Result<Vec<StoredTx>, LedgerError>> = None;
        for (i, b) in blocks.iter().enumerate() {
            let h = b.height;
            if h != height {
                return Err(fail(height, None, format!("expected block {height}, found height {h}")));
            }
            if b.version != BLOCK_VERSION {
                return Err(fail(h, None, format!("unknown block version {:?}", b.version)));
            }
            if b.provider != provider {
                return Err(fail(h, None, "provider is not the ledger's node key"));
            }
            if b.previous_block_hash != prev_hash {
                return Err(fail(h, None, "previous_block_hash does not match the previous block"));
            }
            if b.timestamp < prev_ts {
                return Err(fail(h, None, "timestamp is earlier than the previous block's"));
            }
            if b.first_leaf != frontier.size() {
                return Err(fail(
                    h,
                    None,
                    format!("first_leaf is {}, expected {}", b.first_leaf, frontier.size()),
                ));
            }
            let txs = match prefetched.take() {
                Some(read) => read?,
                None => store.txs(b.first_leaf, b.first_leaf + b.tx_count).await?,
            };
            if txs.len() as u64 != b.tx_count {
                return Err(fail(
                    h,
                    None,
                    format!("block lists {} transactions, {} are stored", b.tx_count, txs.len()),
                ));
            }
            // This block is checked while the next block's transactions are
            // read: reading (one SQLite thread) overlaps with the hashing (all
            // cores, off this task) and the in-order checks. The next block is
            // read ahead only where this one says it starts: a damaged header
            // is reported by the checks above before anything is read.
            let first_leaf = b.first_leaf;
            let check = async {
                let hashing = tokio::task::spawn_blocking(move || {
                    let checked = par_map(&txs, |k, st| check_tx(st, h, first_leaf + k as u64));
                    (txs, checked)
                });
                let (txs, checked) = match hashing.await {
                    Ok(done) => done,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(e) => return Err(fail(h, None, format!("hashing stopped: {e}"))),
                };
                // Batch signatures (one SM2 check per batch) and the tree, in order.
                let mut leaves = Vec::with_capacity(txs.len());
                let mut emitted: Vec<(NodeKey, Sm3Digest)> = Vec::with_capacity(txs.len() * 2);
                for (st, c) in txs.iter().zip(checked) {
                    let (leaf, memo) = c?;
                    if !verified_batches.contains(&memo) {
                        let a = &st.tx.auth;
                        a.verify_signature().map_err(|e| {
                            fail(
                                h,
                                Some(st.tx.content.tx_id.to_string()),
                                format!("batch signature of {}: {e}", a.signer),
                            )
                        })?;
                        verified_batches.insert(memo);
                        report.batch_signatures += 1;
                    }
                    report.transactions += 1;
                    leaves.push(leaf);
                    frontier.push(leaf, |level, index, hash| {
                        emitted.push((NodeKey { level, index }, hash))
                    });
                }
                if merkle::root_of(&leaves) != b.merkle_root {
                    return Err(fail(h, None, "merkle_root does not match the block's transactions"));
                }
                if compute_block_hash(&b.previous_block_hash, b.timestamp, &b.merkle_root) != b.block_hash {
                    return Err(fail(
                        h,
                        None,
                        "block_hash is not SM3(SM3(previous_block_hash ‖ timestamp ‖ merkle_root))",
                    ));
                }
                let keys: Vec<NodeKey> = emitted.iter().map(|(k, _)| *k).collect();
                let stored = store.nodes(&keys).await.map_err(|e| fail(h, None, e.to_string()))?;
                if let Some(((k, _), _)) = emitted.iter().zip(&stored).find(|((_, want), got)| want != *got) {
                    return Err(fail(
                        h,
                        None,
                        format!("stored tree node level {} index {} is wrong", k.level, k.index),
                    ));
                }
                let cp = store
                    .checkpoint(h)
                    .await?
                    .ok_or_else(|| fail(h, None, "checkpoint is missing"))?;
                if cp.height != h
                    || cp.tree_size != frontier.size()
                    || cp.root != frontier.root()
                    || cp.block_hash != b.block_hash
                {
                    return Err(fail(h, None, "checkpoint does not match the block and the tree"));
                }
                cp.verify(&node_key).map_err(|e| fail(h, None, e))
            };
            let read_ahead = async {
                match blocks.get(i + 1) {
                    Some(n) if n.first_leaf == b.first_leaf + b.tx_count => {
                        Some(store.txs(n.first_leaf, n.first_leaf + n.tx_count).await)
                    }
                    _ => None,
                }
            };
            let (checked, next) = tokio::join!(check, read_ahead);
            checked?;
            prefetched = next;
            prev_hash = b.block_hash;
            prev_ts = b.timestamp;
            report.blocks += 1;
            progress(h, head.height);
            height += 1;
        }
    }
    // Nothing may sit beyond the last block.
    if let Some(extra) = store.txs(frontier.size(), frontier.size() + 1).await?.first() {
        return Err(fail(
            head.height,
            Some(extra.tx.content.tx_id.to_string()),
            format!("transaction at leaf {} belongs to no block", extra.leaf_index),
        ));
    }
    report.head_hash = prev_hash;
    report.root = frontier.root();
    Ok(report)
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
