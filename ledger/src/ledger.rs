//! The append-only ledger: a committer task that groups concurrent appends
//! into blocks (group commit: many transactions per block, one durable
//! commit), signs a checkpoint per block, and answers only after the block
//! is on disk.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use secure_gateway::{Signer, Sm2VerifyingKey, Sm3Digest, sm3};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::block::{BlockHeader, Checkpoint, compute_block_hash};
use crate::error::LedgerError;
use crate::merkle::{self, Frontier, NodeKey};
use crate::proof::{ConsistencyProof, INCLUSION_PROOF_FORMAT, InclusionProof};
use crate::store::{BlockCommit, LedgerStore, SidePart, SideWrite, StoredTx};
use crate::tx::{DEFAULT_MAX_PAYLOAD, Transaction, TxContent, TxFormat, TxKind, sign_batch};

/// Tuning of the committer.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Most transactions one block holds.
    pub max_block_txs: usize,
    /// Largest encrypted payload of one transaction, in bytes.
    pub max_payload: usize,
    /// Pending append requests before callers wait (back-pressure).
    pub queue_depth: usize,
    /// How long the committer waits for more appends before it cuts a
    /// block while others are still arriving (0 = cut as soon as idle).
    pub linger: Duration,
    /// The format new blocks are written in ([`TxFormat::CURRENT`]; format
    /// 1 only to make ledgers as earlier versions did, for tests).
    pub format: TxFormat,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            max_block_txs: 4096,
            max_payload: DEFAULT_MAX_PAYLOAD,
            queue_depth: 1024,
            linger: Duration::ZERO,
            format: TxFormat::CURRENT,
        }
    }
}

/// What an append returns per transaction, once it is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The transaction id.
    pub tx_id: Uuid,
    /// The business record id.
    pub record_id: String,
    /// Position in the log.
    pub leaf_index: u64,
    /// Block height.
    pub height: u64,
    /// Block hash.
    pub block_hash: Sm3Digest,
    /// The checkpoint signed right after the block.
    pub checkpoint: Checkpoint,
}

struct AppendRequest {
    txs: Vec<Transaction>,
    /// The log leaf hash of each transaction, computed by [`precheck`] in the
    /// caller's task so that hashing and signature checks run in parallel.
    leaves: Vec<Sm3Digest>,
    /// Each transaction's leaf hash within its signed batch (format 2).
    batch_leaves: Vec<Option<Sm3Digest>>,
    /// Rows to write in the block's own database transaction.
    side: Option<Box<dyn SideWrite>>,
    respond: oneshot::Sender<Result<Vec<Receipt>, LedgerError>>,
}

/// Who checks that each transaction belongs to its signed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// The ledger verifies every audit path and batch signature.
    Check,
    /// The caller has just verified them, on the same bytes, with
    /// `secure_gateway::batch` (the gateway does so before it decrypts a
    /// batch), and gives the SM3 of each transaction's payload it computed
    /// on the way (in format 2, a sealed record's payload is its signed
    /// bytes and this is its record digest), in transaction order. The
    /// ledger then hashes no payload again. `vaxgate ledger verify` still
    /// checks every proof offline.
    VerifiedByCaller {
        /// `SM3(payload)` of each transaction.
        payload_sm3: Vec<Sm3Digest>,
    },
}

/// An open ledger. Cheap to clone; all clones share one committer.
#[derive(Debug)]
pub struct Ledger<S: LedgerStore> {
    store: Arc<S>,
    node_key: Sm2VerifyingKey,
    sender: mpsc::Sender<AppendRequest>,
    max_payload: usize,
    format: TxFormat,
}

impl<S: LedgerStore> Clone for Ledger<S> {
    fn clone(&self) -> Self {
        Ledger {
            store: self.store.clone(),
            node_key: self.node_key.clone(),
            sender: self.sender.clone(),
            max_payload: self.max_payload,
            format: self.format,
        }
    }
}

/// The genesis payload: public, unencrypted JSON naming the node key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenesisInfo {
    /// Free-form ledger name.
    pub ledger_name: String,
    /// The node key (SPKI PEM) that signs checkpoints.
    pub node_public_key: String,
    /// Creation time (RFC 3339).
    pub created_at: String,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl<S: LedgerStore> Ledger<S> {
    /// Opens the ledger in `store`, creating the genesis block if the store
    /// is empty. The node key (held by its crypto provider) must be the one
    /// the ledger was created with.
    pub async fn open(store: S, node_key: Signer, name: &str, config: LedgerConfig) -> Result<Self, LedgerError> {
        let store = Arc::new(store);
        let head = match store.head().await? {
            Some(h) => h,
            None => {
                create_genesis(&*store, &node_key, name, config.format).await?;
                store
                    .head()
                    .await?
                    .ok_or_else(|| LedgerError::Setup("genesis block was not written".into()))?
            }
        };
        let (block, cp) = head;
        if cp.key_id != node_key.verifying_key().key_id() {
            return Err(LedgerError::Setup(format!(
                "the ledger at {} is signed by node key {}, but the configured node key is {}",
                store.location(),
                cp.key_id,
                node_key.verifying_key().key_id()
            )));
        }
        let frontier_nodes = store.nodes(&merkle::range_nodes(0, cp.tree_size)).await?;
        let frontier = Frontier::from_nodes(cp.tree_size, &frontier_nodes);
        if frontier.root() != cp.root {
            return Err(LedgerError::Integrity {
                height: block.height,
                tx: None,
                reason: "the stored tree does not match the latest checkpoint; run `vaxgate ledger verify`".into(),
            });
        }
        let (sender, receiver) = mpsc::channel(config.queue_depth);
        let max_payload = config.max_payload;
        let format = config.format;
        let vk = node_key.verifying_key().clone();
        let committer = Committer {
            store: store.clone(),
            key: node_key,
            config,
            frontier,
            head: block,
            receiver,
        };
        tokio::spawn(committer.run());
        Ok(Ledger {
            store,
            node_key: vk,
            sender,
            max_payload,
            format,
        })
    }

    /// The storage backend (for reads).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The node key that signs checkpoints.
    pub fn node_key(&self) -> &Sm2VerifyingKey {
        &self.node_key
    }

    /// The format of the transactions it takes (and of the blocks it
    /// writes): callers build their transactions in it.
    pub fn format(&self) -> TxFormat {
        self.format
    }

    /// Appends transactions; returns once they are durable in a block. The
    /// request is all-or-nothing: one bad transaction refuses them all.
    pub async fn append(&self, txs: Vec<Transaction>) -> Result<Vec<Receipt>, LedgerError> {
        self.append_with(txs, None, Membership::Check).await
    }

    /// [`Ledger::append`], and `side` writes rows derived from these
    /// transactions in the same database transaction as their block: both
    /// are durable, or neither is. With [`Membership::VerifiedByCaller`] the
    /// batch audit paths and signatures are not verified again (everything
    /// else is checked as usual).
    #[tracing::instrument(name = "ledger.append", level = "info", skip_all, fields(transactions = txs.len()))]
    pub async fn append_with(
        &self,
        txs: Vec<Transaction>,
        side: Option<Box<dyn SideWrite>>,
        membership: Membership,
    ) -> Result<Vec<Receipt>, LedgerError> {
        if txs.is_empty() {
            return Ok(Vec::new());
        }
        let (leaves, batch_leaves) = precheck(&txs, self.max_payload, self.format, &membership)?;
        let (respond, rx) = oneshot::channel();
        self.sender
            .send(AppendRequest {
                txs,
                leaves,
                batch_leaves,
                side,
                respond,
            })
            .await
            .map_err(|_| LedgerError::Closed)?;
        rx.await.map_err(|_| LedgerError::Closed)?
    }

    /// An inclusion proof of `tx_id` against the latest checkpoint.
    pub async fn prove(&self, tx_id: &str) -> Result<InclusionProof, LedgerError> {
        prove(&*self.store, tx_id).await
    }

    /// A consistency proof between two tree sizes.
    pub async fn prove_consistency(&self, first: u64, second: u64) -> Result<ConsistencyProof, LedgerError> {
        prove_consistency(&*self.store, first, second).await
    }
}

/// Builds an inclusion proof for `tx_id` against the store's latest checkpoint.
pub async fn prove<S: LedgerStore>(store: &S, tx_id: &str) -> Result<InclusionProof, LedgerError> {
    let st: StoredTx = store
        .tx(tx_id)
        .await?
        .ok_or_else(|| LedgerError::NotFound(format!("transaction {tx_id}")))?;
    let (_, cp) = store
        .head()
        .await?
        .ok_or_else(|| LedgerError::NotFound("the ledger is empty".into()))?;
    let block = store
        .block(st.height)
        .await?
        .ok_or_else(|| LedgerError::NotFound(format!("block {}", st.height)))?;
    let audit_path = resolve_plan(store, &merkle::inclusion_plan(st.leaf_index, cp.tree_size)).await?;
    Ok(InclusionProof {
        format: INCLUSION_PROOF_FORMAT.into(),
        leaf_index: st.leaf_index,
        audit_path,
        checkpoint: cp,
        block,
        transaction: st.tx,
    })
}

/// Audit paths of many leaves in a tree of `tree_size` leaves, fetched with
/// one storage query (receipts of a whole batch).
pub async fn audit_paths<S: LedgerStore>(
    store: &S,
    leaves: &[u64],
    tree_size: u64,
) -> Result<Vec<Vec<Sm3Digest>>, LedgerError> {
    let plans: Vec<Vec<Vec<NodeKey>>> = leaves.iter().map(|l| merkle::inclusion_plan(*l, tree_size)).collect();
    let mut keys: Vec<NodeKey> = plans.iter().flatten().flatten().copied().collect();
    keys.sort();
    keys.dedup();
    let hashes = store.nodes(&keys).await?;
    let found: std::collections::HashMap<NodeKey, Sm3Digest> = keys.into_iter().zip(hashes).collect();
    Ok(plans
        .iter()
        .map(|plan| {
            plan.iter()
                .map(|element| {
                    let hs: Vec<Sm3Digest> = element.iter().filter_map(|k| found.get(k).copied()).collect();
                    merkle::fold_range(&hs).unwrap_or_else(merkle::empty_root)
                })
                .collect()
        })
        .collect())
}

/// Builds a consistency proof from tree size `first` to `second`.
pub async fn prove_consistency<S: LedgerStore>(
    store: &S,
    first: u64,
    second: u64,
) -> Result<ConsistencyProof, LedgerError> {
    let (_, cp) = store
        .head()
        .await?
        .ok_or_else(|| LedgerError::NotFound("the ledger is empty".into()))?;
    if first == 0 || first > second || second > cp.tree_size {
        return Err(LedgerError::NotFound(format!(
            "no consistency proof from size {first} to {second} (tree size is {})",
            cp.tree_size
        )));
    }
    let path = resolve_plan(store, &merkle::consistency_plan(first, second)).await?;
    Ok(ConsistencyProof {
        first_size: first,
        second_size: second,
        path,
    })
}

async fn resolve_plan<S: LedgerStore>(store: &S, plan: &[Vec<NodeKey>]) -> Result<Vec<Sm3Digest>, LedgerError> {
    let keys: Vec<NodeKey> = plan.iter().flatten().copied().collect();
    let hashes = store.nodes(&keys).await?;
    let mut out = Vec::with_capacity(plan.len());
    let mut at = 0;
    for element in plan {
        let h = merkle::fold_range(&hashes[at..at + element.len()]).unwrap_or_else(merkle::empty_root);
        at += element.len();
        out.push(h);
    }
    Ok(out)
}

async fn create_genesis<S: LedgerStore>(
    store: &S,
    key: &Signer,
    name: &str,
    format: TxFormat,
) -> Result<(), LedgerError> {
    let info = GenesisInfo {
        ledger_name: name.to_string(),
        node_public_key: key.verifying_key().to_public_key_pem(),
        created_at: chrono::Utc::now().to_rfc3339(),
    };
    let payload = serde_json::to_vec(&info).map_err(|e| LedgerError::Setup(e.to_string()))?;
    let content = TxContent {
        tx_id: Uuid::now_v7(),
        record_id: "genesis".into(),
        kind: TxKind::Genesis,
        category: "registry".into(),
        state_key: "node".into(),
        content_type: "json".into(),
        data_hash: sm3(&payload),
        payload,
        fields_root: None,
        format,
    };
    let ts = now_ms();
    let txs = sign_batch("node", key, vec![content], ts).map_err(|source| LedgerError::Signing {
        what: "the genesis record",
        source,
    })?;
    let leaves = txs.iter().map(Transaction::leaf_hash).collect();
    let batch_leaves = txs
        .iter()
        .map(|t| t.batch_leaf_hash(&t.content.content_hash(), &sm3(&t.content.payload)))
        .collect();
    let mut frontier = Frontier::default();
    let commit = build_block(key, &mut frontier, None, (txs, leaves, batch_leaves), ts)?;
    store.commit_block(&commit).await
}

/// Assembles the next block on top of `prev` (None = genesis).
/// `block` is the transactions with their log leaf hashes and their leaf
/// hashes in their batches, computed once by the caller.
/// On a signing failure `frontier` has grown; the caller restores it.
fn build_block(
    key: &Signer,
    frontier: &mut Frontier,
    prev: Option<&BlockHeader>,
    block: BlockTxs,
    now: i64,
) -> Result<BlockCommit, LedgerError> {
    let (txs, leaves, batch_leaves) = block;
    debug_assert_eq!(txs.len(), leaves.len());
    debug_assert_eq!(txs.len(), batch_leaves.len());
    let first_leaf = frontier.size();
    let mut nodes = Vec::with_capacity(txs.len() * 2 + 8);
    for leaf in &leaves {
        frontier.push(*leaf, |level, index, h| nodes.push((NodeKey { level, index }, h)));
    }
    let merkle_root = merkle::root_of(&leaves);
    let (height, previous_block_hash, timestamp) = match prev {
        Some(p) => (p.height + 1, p.block_hash, now.max(p.timestamp)),
        None => (0, Sm3Digest::ZERO, now),
    };
    let block_hash = compute_block_hash(&previous_block_hash, timestamp, &merkle_root);
    let block = BlockHeader {
        height,
        version: block_format(&txs).block_version().into(),
        provider: key.verifying_key().fingerprint(),
        previous_block_hash,
        block_hash,
        timestamp,
        merkle_root,
        tx_count: txs.len() as u64,
        first_leaf,
    };
    let checkpoint =
        Checkpoint::sign(key, frontier.size(), frontier.root(), height, block_hash, timestamp).map_err(|source| {
            LedgerError::Signing {
                what: "a block checkpoint",
                source,
            }
        })?;
    Ok(BlockCommit {
        block,
        txs,
        batch_leaves,
        nodes,
        checkpoint,
    })
}

/// The format of a block of `txs` (all of one format: [`precheck`] takes
/// only the ledger's).
fn block_format(txs: &[Transaction]) -> TxFormat {
    txs.first().map_or(TxFormat::CURRENT, |t| t.content.format)
}

struct Committer<S: LedgerStore> {
    store: Arc<S>,
    key: Signer,
    config: LedgerConfig,
    frontier: Frontier,
    head: BlockHeader,
    receiver: mpsc::Receiver<AppendRequest>,
}

impl<S: LedgerStore> Committer<S> {
    async fn run(mut self) {
        while let Some(first) = self.receiver.recv().await {
            let mut group = vec![first];
            let mut count = group[0].txs.len();
            let deadline = tokio::time::Instant::now() + self.config.linger;
            while count < self.config.max_block_txs {
                match self.receiver.try_recv() {
                    Ok(r) => {
                        count += r.txs.len();
                        group.push(r);
                    }
                    Err(mpsc::error::TryRecvError::Empty) if !self.config.linger.is_zero() => {
                        match tokio::time::timeout_at(deadline, self.receiver.recv()).await {
                            Ok(Some(r)) => {
                                count += r.txs.len();
                                group.push(r);
                            }
                            _ => break,
                        }
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(group).await;
        }
    }

    /// Validates each request on its own, then writes the accepted ones as
    /// one block.
    async fn commit_group(&mut self, group: Vec<AppendRequest>) {
        let mut accepted: Vec<AppendRequest> = Vec::with_capacity(group.len());
        let mut seen_records: HashSet<String> = HashSet::new();
        let mut seen_txs: HashSet<String> = HashSet::new();
        for req in group {
            match self.check(&req.txs, &seen_records, &seen_txs).await {
                Ok(()) => {
                    for t in &req.txs {
                        seen_records.insert(t.content.record_id.clone());
                        seen_txs.insert(t.content.tx_id.to_string());
                    }
                    accepted.push(req);
                }
                Err(e) => {
                    let _ = req.respond.send(Err(e));
                }
            }
        }
        if accepted.is_empty() {
            return;
        }
        let mut txs = Vec::new();
        let mut leaves = Vec::new();
        let mut batch_leaves = Vec::new();
        let mut sizes = Vec::with_capacity(accepted.len());
        let accepted: Vec<AppendRequest> = accepted
            .into_iter()
            .map(|mut req| {
                sizes.push(req.txs.len());
                txs.append(&mut req.txs);
                leaves.append(&mut req.leaves);
                batch_leaves.append(&mut req.batch_leaves);
                req
            })
            .collect();
        let saved = self.frontier.clone();
        let first_leaf = self.frontier.size();
        let block = (txs, leaves, batch_leaves);
        let commit = match build_block(&self.key, &mut self.frontier, Some(&self.head), block, now_ms()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "block not signed; nothing of it was written");
                self.frontier = saved;
                let msg = e.to_string();
                for req in accepted {
                    let _ = req.respond.send(Err(LedgerError::Setup(msg.clone())));
                }
                return;
            }
        };
        let mut side = Vec::new();
        let mut at = first_leaf;
        for (req, n) in accepted.iter().zip(&sizes) {
            if let Some(w) = &req.side {
                side.push(SidePart {
                    write: w.as_ref(),
                    first_leaf: at,
                });
            }
            at += *n as u64;
        }
        let result = self.store.commit_block_with(&commit, &side).await;
        drop(side);
        match result {
            Ok(()) => {
                tracing::debug!(
                    height = commit.block.height,
                    txs = commit.block.tx_count,
                    "block committed"
                );
                let mut it = commit.txs.iter().enumerate();
                for (req, n) in accepted.into_iter().zip(sizes) {
                    let receipts = it
                        .by_ref()
                        .take(n)
                        .map(|(i, t)| Receipt {
                            tx_id: t.content.tx_id,
                            record_id: t.content.record_id.clone(),
                            leaf_index: commit.block.first_leaf + i as u64,
                            height: commit.block.height,
                            block_hash: commit.block.block_hash,
                            checkpoint: commit.checkpoint.clone(),
                        })
                        .collect();
                    let _ = req.respond.send(Ok(receipts));
                }
                self.head = commit.block;
            }
            Err(e) => {
                tracing::error!(error = %e, "block commit failed; nothing of it was written");
                self.frontier = saved;
                let msg = e.to_string();
                for req in accepted {
                    let _ = req.respond.send(Err(LedgerError::Storage {
                        location: self.store.location().to_string(),
                        message: msg.clone(),
                    }));
                }
            }
        }
    }

    /// The checks that need the ledger's state: record and transaction ids
    /// not used before (in the store or earlier in this group).
    async fn check(
        &self,
        txs: &[Transaction],
        seen_records: &HashSet<String>,
        seen_txs: &HashSet<String>,
    ) -> Result<(), LedgerError> {
        let mut rids = Vec::with_capacity(txs.len());
        let mut tids = Vec::with_capacity(txs.len());
        for t in txs {
            let c = &t.content;
            let tx_id = c.tx_id.to_string();
            if seen_records.contains(&c.record_id) || seen_txs.contains(&tx_id) {
                return Err(LedgerError::Duplicate {
                    record_id: c.record_id.clone(),
                    tx_id,
                });
            }
            rids.push(c.record_id.clone());
            tids.push(tx_id);
        }
        if let Some((record_id, tx_id)) = self.store.conflicts(&rids, &tids).await?.into_iter().next() {
            return Err(LedgerError::Duplicate { record_id, tx_id });
        }
        Ok(())
    }
}

/// The checks of one request that need no ledger state: sizes, ids unique
/// within the request, each record's audit path to its signed batch root and
/// one SM2 verification per batch. Returns each transaction's log leaf hash
/// and its leaf hash in its batch (format 2). Runs in the caller's task, so
/// requests verify in parallel and the committer only orders, deduplicates
/// and writes.
fn precheck(
    txs: &[Transaction],
    max_payload: usize,
    format: TxFormat,
    membership: &Membership,
) -> Result<(Vec<Sm3Digest>, Vec<Option<Sm3Digest>>), LedgerError> {
    let mut leaves = Vec::with_capacity(txs.len());
    let mut batch_leaves = Vec::with_capacity(txs.len());
    let mut batch_digests: std::collections::HashMap<Vec<u8>, Sm3Digest> = std::collections::HashMap::new();
    let mut previous: Option<(&crate::tx::TxAuth, Sm3Digest)> = None;
    let mut records = HashSet::new();
    let mut ids = HashSet::new();
    if let Membership::VerifiedByCaller { payload_sm3 } = membership
        && payload_sm3.len() != txs.len()
    {
        return Err(LedgerError::Setup(format!(
            "{} payload digests given for {} transactions",
            payload_sm3.len(),
            txs.len()
        )));
    }
    for (i, t) in txs.iter().enumerate() {
        let c = &t.content;
        let bad = |reason: String| LedgerError::BadTransaction {
            tx_id: c.tx_id.to_string(),
            reason,
        };
        if c.format != format {
            return Err(bad(format!(
                "the transaction is in format {}; this ledger writes format {}",
                c.format.number(),
                format.number()
            )));
        }
        if c.payload.len() > max_payload {
            return Err(bad(format!(
                "payload is {} bytes; the limit is {}",
                c.payload.len(),
                max_payload
            )));
        }
        if c.record_id.is_empty() {
            return Err(bad("record id is empty".into()));
        }
        if matches!(c.kind, TxKind::Genesis) {
            return Err(bad("only the ledger itself writes a genesis transaction".into()));
        }
        if !records.insert(c.record_id.as_str()) {
            return Err(LedgerError::Duplicate {
                record_id: c.record_id.clone(),
                tx_id: c.tx_id.to_string(),
            });
        }
        if !ids.insert(c.tx_id) {
            return Err(bad("transaction id used twice".into()));
        }
        // The audit path per record; one SM2 verification per signed batch.
        let payload_sm3 = match membership {
            Membership::VerifiedByCaller { payload_sm3 } => payload_sm3[i],
            Membership::Check => sm3(&c.payload),
        };
        let content_hash = c.content_hash_with(&payload_sm3);
        if *membership == Membership::Check {
            t.auth
                .verify_membership_with(c, Some((&content_hash, &payload_sm3)))
                .map_err(bad)?;
        }
        // Once per distinct batch (header, signer, key and signature); the
        // records of a batch come one after another.
        let batch_digest = match previous {
            Some((p, d)) if p.same_batch(&t.auth) => d,
            _ => {
                let body = t.auth.batch_body();
                match batch_digests.get(&body) {
                    Some(d) => *d,
                    None => {
                        if *membership == Membership::Check {
                            t.auth.verify_signature().map_err(bad)?;
                        }
                        let d = sm3(&body);
                        batch_digests.insert(body, d);
                        d
                    }
                }
            }
        };
        previous = Some((&t.auth, batch_digest));
        leaves.push(t.leaf_hash_in_batch(&content_hash, &batch_digest));
        batch_leaves.push(t.batch_leaf_hash(&content_hash, &payload_sm3));
    }
    Ok((leaves, batch_leaves))
}

/// A block's transactions, their log leaf hashes and their leaf hashes in
/// their batches ([`precheck`]).
type BlockTxs = (Vec<Transaction>, Vec<Sm3Digest>, Vec<Option<Sm3Digest>>);
