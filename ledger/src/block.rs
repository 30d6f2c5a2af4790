//! Block headers as T/CPMA 026-2023 Annex A (table A.1) specifies them, and
//! the signed checkpoints that vouch for the log-level tree.

use secure_gateway::{CryptoError, Signer, Sm2Signature, Sm2VerifyingKey, Sm3Digest, sm3};
use serde::{Deserialize, Serialize};

use crate::encoding::Canon;

/// A block header. Field names follow Annex A; `height`, `tx_count` and
/// `first_leaf` locate the block's transactions in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    /// Height; the genesis block is 0.
    pub height: u64,
    /// Format version (Annex A `version`, string(8)): `1.0` or `2.0`, the
    /// format of its transactions ([`crate::tx::TxFormat`]).
    pub version: String,
    /// Creator hash (Annex A `provider`): SM3 of the node's public key.
    pub provider: Sm3Digest,
    /// Hash of the previous block (all zeros for genesis).
    pub previous_block_hash: Sm3Digest,
    /// `SM3(SM3(previous_block_hash ‖ timestamp ‖ merkle_root))`.
    pub block_hash: Sm3Digest,
    /// Milliseconds since the Unix epoch (Annex A `timestamp`, number(16)).
    pub timestamp: i64,
    /// RFC 9162 Merkle root (SM3) of the block's transaction leaves.
    pub merkle_root: Sm3Digest,
    /// Number of transactions in the block.
    pub tx_count: u64,
    /// Log index of the block's first transaction.
    pub first_leaf: u64,
}

/// `block_hash = SM3(SM3(previous_block_hash ‖ timestamp ‖ merkle_root))`
/// where the hashes are their 32 raw bytes and the timestamp is 8 bytes
/// big-endian (milliseconds since the Unix epoch).
pub fn compute_block_hash(previous: &Sm3Digest, timestamp: i64, merkle_root: &Sm3Digest) -> Sm3Digest {
    let mut buf = [0u8; 72];
    buf[..32].copy_from_slice(&previous.0);
    buf[32..40].copy_from_slice(&timestamp.to_be_bytes());
    buf[40..].copy_from_slice(&merkle_root.0);
    sm3(&sm3(&buf).0)
}

/// A signed statement by the ledger node about the whole log after a block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Leaves (transactions) in the log.
    pub tree_size: u64,
    /// RFC 9162 root over all transaction leaves.
    pub root: Sm3Digest,
    /// Height of the last block included.
    pub height: u64,
    /// Hash of that block.
    pub block_hash: Sm3Digest,
    /// When it was signed (ms since the Unix epoch).
    pub timestamp: i64,
    /// Key id of the node key that signed.
    pub key_id: String,
    /// SM2 signature (raw r‖s, hex) over [`Checkpoint::signing_bytes`].
    pub signature: String,
}

impl Checkpoint {
    /// When the node signed it, RFC 3339 (empty for a timestamp out of range).
    #[must_use]
    pub fn signed_at(&self) -> String {
        chrono::DateTime::from_timestamp_millis(self.timestamp)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default()
    }

    /// The bytes the node key signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut c = Canon::new("vaxgate-checkpoint-v1");
        c.u64(self.tree_size)
            .bytes(&self.root.0)
            .u64(self.height)
            .bytes(&self.block_hash.0)
            .i64(self.timestamp)
            .str(&self.key_id);
        c.into_bytes()
    }

    /// Creates and signs a checkpoint (through the key's provider).
    pub fn sign(
        key: &Signer,
        tree_size: u64,
        root: Sm3Digest,
        height: u64,
        block_hash: Sm3Digest,
        timestamp: i64,
    ) -> Result<Self, CryptoError> {
        let mut cp = Checkpoint {
            tree_size,
            root,
            height,
            block_hash,
            timestamp,
            key_id: key.verifying_key().key_id().to_string(),
            signature: String::new(),
        };
        cp.signature = key.sign(&cp.signing_bytes())?.to_hex();
        Ok(cp)
    }

    /// Verifies the node's signature.
    pub fn verify(&self, key: &Sm2VerifyingKey) -> Result<(), String> {
        self.verify_in(&secure_gateway::RustCryptoProvider::new(), key)
    }

    /// [`Checkpoint::verify`] with the signature checked by `provider`.
    pub fn verify_in(
        &self,
        provider: &dyn secure_gateway::CryptoProvider,
        key: &Sm2VerifyingKey,
    ) -> Result<(), String> {
        if key.key_id() != self.key_id {
            return Err(format!(
                "checkpoint was signed by key {} but the trusted key is {}",
                self.key_id,
                key.key_id()
            ));
        }
        let sig = Sm2Signature::from_hex(&self.signature).map_err(|e| e.to_string())?;
        if sig.to_hex() != self.signature {
            return Err("checkpoint signature is not in canonical lowercase hex".into());
        }
        provider
            .verify(key, &self.signing_bytes(), &sig)
            .map_err(|_| format!("checkpoint signature at tree size {} does not verify", self.tree_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_hash_is_double_sm3_of_documented_bytes() {
        let prev = Sm3Digest([1u8; 32]);
        let root = Sm3Digest([2u8; 32]);
        let ts = 1_700_000_000_123i64;
        let mut buf = Vec::new();
        buf.extend_from_slice(&[1u8; 32]);
        buf.extend_from_slice(&ts.to_be_bytes());
        buf.extend_from_slice(&[2u8; 32]);
        assert_eq!(compute_block_hash(&prev, ts, &root), sm3(&sm3(&buf).0));
    }

    #[test]
    fn checkpoint_sign_verify() {
        let k = crate::test_signer();
        let cp = Checkpoint::sign(&k, 5, Sm3Digest([3; 32]), 2, Sm3Digest([4; 32]), 42).unwrap();
        cp.verify(k.verifying_key()).unwrap();
        let mut bad = cp.clone();
        bad.tree_size = 6;
        assert!(bad.verify(k.verifying_key()).is_err());
        assert!(cp.verify(crate::test_signer().verifying_key()).is_err());
    }
}
