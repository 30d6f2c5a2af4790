//! Self-contained proofs that a client verifies offline with only the
//! ledger node's public key (`vaxgate verify-proof`).

use secure_gateway::{Sm2VerifyingKey, Sm3Digest};
use serde::{Deserialize, Serialize};

use crate::block::{BlockHeader, Checkpoint};
use crate::merkle;
use crate::tx::Transaction;

/// Proof that one transaction is in the log at a signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// Proof format.
    pub format: String,
    /// Position of the transaction in the log.
    pub leaf_index: u64,
    /// RFC 9162 audit path, leaf to root.
    pub audit_path: Vec<Sm3Digest>,
    /// The signed tree head the path leads to.
    pub checkpoint: Checkpoint,
    /// The block that holds the transaction.
    pub block: BlockHeader,
    /// The transaction itself (encrypted payload included).
    pub transaction: Transaction,
}

/// The proof format tag.
pub const INCLUSION_PROOF_FORMAT: &str = "vaxgate-inclusion-proof-v1";

impl InclusionProof {
    /// Checks, with only the node key: the checkpoint signature; that the
    /// transaction's leaf reaches the checkpoint root; the block hash; and
    /// the submitter's batch signature.
    pub fn verify(&self, node_key: &Sm2VerifyingKey) -> Result<(), String> {
        if self.format != INCLUSION_PROOF_FORMAT {
            return Err(format!("unknown proof format {:?}", self.format));
        }
        self.checkpoint.verify(node_key)?;
        let leaf = self.transaction.leaf_hash();
        if !merkle::verify_inclusion(
            self.leaf_index,
            self.checkpoint.tree_size,
            &leaf,
            &self.audit_path,
            &self.checkpoint.root,
        ) {
            return Err(
                "the transaction is not included in the signed tree (audit path does not reach the checkpoint root)"
                    .into(),
            );
        }
        let b = &self.block;
        if self.leaf_index < b.first_leaf || self.leaf_index >= b.first_leaf + b.tx_count {
            return Err(format!("leaf {} is not in block {}", self.leaf_index, b.height));
        }
        let bh = crate::block::compute_block_hash(&b.previous_block_hash, b.timestamp, &b.merkle_root);
        if bh != b.block_hash {
            return Err(format!("block {} hash does not match its header", b.height));
        }
        self.transaction
            .auth
            .verify(&self.transaction.content)
            .map_err(|e| format!("submitter signature: {e}"))?;
        Ok(())
    }

    /// Size of the audit path and checkpoint in bytes, binary-encoded
    /// (what a compact proof costs on the wire).
    pub fn compact_size(&self) -> usize {
        8 + 32 * self.audit_path.len() + self.checkpoint.signing_bytes().len() + 64
    }
}

/// Proof that a later checkpoint extends an earlier one (append-only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// The earlier tree size.
    pub first_size: u64,
    /// The later tree size.
    pub second_size: u64,
    /// RFC 9162 consistency path.
    pub path: Vec<Sm3Digest>,
}

impl ConsistencyProof {
    /// Verifies that `second` extends `first`.
    pub fn verify(&self, first: &Checkpoint, second: &Checkpoint) -> bool {
        self.first_size == first.tree_size
            && self.second_size == second.tree_size
            && merkle::verify_consistency(first.tree_size, second.tree_size, &first.root, &second.root, &self.path)
    }
}
