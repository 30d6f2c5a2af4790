//! Ledger transactions: the business-data hash plus the encrypted payload
//! (T/CPMA 026-2023 6.2.1), with the submitter's batch-signature proof.
//!
//! A submitter signs a *batch* of records once: the SM2 signature covers the
//! batch header, which contains the RFC 9162 Merkle root (SM3) of the
//! records' content hashes. Each transaction keeps its audit path within the
//! batch, so one record proves its origin without the rest of the batch
//! (records of a batch that were rejected are simply absent).

use secure_gateway::{Sm2Signature, Sm2SigningKey, Sm2VerifyingKey, Sm3Digest, sm3};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::encoding::{Canon, Reader};
use crate::error::LedgerError;
use crate::merkle;

/// The biggest encrypted payload one transaction may carry by default
/// (Annex A: "transaction data up to 8K").
pub const DEFAULT_MAX_PAYLOAD: usize = 8 * 1024;

/// What a transaction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxKind {
    /// The first transaction of a ledger: names the node key.
    Genesis,
    /// Business data (a traceability event).
    Data,
    /// A change to the registry of entities, keys and permissions.
    Registry,
    /// A signed cancellation (注销) of an earlier transaction (R4.5).
    Cancellation,
}

impl TxKind {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            TxKind::Genesis => "genesis",
            TxKind::Data => "data",
            TxKind::Registry => "registry",
            TxKind::Cancellation => "cancellation",
        }
    }
    /// Parses [`TxKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "genesis" => TxKind::Genesis,
            "data" => TxKind::Data,
            "registry" => TxKind::Registry,
            "cancellation" => TxKind::Cancellation,
            _ => return None,
        })
    }
}

/// The submitter's proof of origin for one transaction (scheme
/// `sm2-batch-v1`, see `docs/ledger.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxAuth {
    /// Entity that signed.
    pub signer: String,
    /// Key id of the signing key (see [`Sm2VerifyingKey::key_id`]).
    pub key_id: String,
    /// The signing public key, SEC1 uncompressed, hex.
    pub public_key: String,
    /// Identifier of the signed batch.
    pub batch_id: Uuid,
    /// When the batch was signed (ms since the Unix epoch).
    pub signed_at_ms: i64,
    /// Records in the batch.
    pub batch_size: u64,
    /// Position of this record in the batch.
    pub batch_index: u64,
    /// RFC 9162 root over the batch's record content hashes.
    pub batch_root: Sm3Digest,
    /// Audit path of this record within the batch.
    pub audit_path: Vec<Sm3Digest>,
    /// SM2 signature (raw r‖s, hex) over [`batch_signing_bytes`].
    pub signature: String,
}

impl TxAuth {
    /// Canonical bytes (part of the ledger leaf).
    pub fn canonical(&self) -> Vec<u8> {
        let mut c = Canon::new("vaxgate-auth-v1");
        c.str(&self.signer)
            .str(&self.key_id)
            .str(&self.public_key)
            .str(&self.batch_id.to_string())
            .i64(self.signed_at_ms)
            .u64(self.batch_size)
            .u64(self.batch_index)
            .bytes(&self.batch_root.0)
            .u64(self.audit_path.len() as u64);
        for p in &self.audit_path {
            c.bytes(&p.0);
        }
        c.str(&self.signature);
        c.into_bytes()
    }

    /// Checks the signature and that `content_hash` is leaf `batch_index`
    /// of the signed batch. Does not consult any registry.
    pub fn verify(&self, content_hash: &Sm3Digest) -> Result<(), String> {
        let pk = hex::decode(&self.public_key).map_err(|_| "public key is not hex".to_string())?;
        let vk = Sm2VerifyingKey::from_sec1(&pk, secure_gateway::DEFAULT_DIST_ID).map_err(|e| e.to_string())?;
        if vk.key_id() != self.key_id {
            return Err(format!(
                "key id {} does not match the public key ({})",
                self.key_id,
                vk.key_id()
            ));
        }
        let leaf = merkle::leaf_hash(&content_hash.0);
        if !merkle::verify_inclusion(
            self.batch_index,
            self.batch_size,
            &leaf,
            &self.audit_path,
            &self.batch_root,
        ) {
            return Err("record is not in the signed batch (audit path does not reach the batch root)".into());
        }
        let sig = Sm2Signature::from_hex(&self.signature).map_err(|e| e.to_string())?;
        let msg = batch_signing_bytes(
            &self.signer,
            &self.key_id,
            self.batch_id,
            self.signed_at_ms,
            self.batch_size,
            &self.batch_root,
        );
        vk.verify(&msg, &sig)
            .map_err(|_| "batch signature does not verify".to_string())
    }
}

/// The bytes a submitter signs for a batch.
pub fn batch_signing_bytes(
    signer: &str,
    key_id: &str,
    batch_id: Uuid,
    signed_at_ms: i64,
    batch_size: u64,
    root: &Sm3Digest,
) -> Vec<u8> {
    let mut c = Canon::new("vaxgate-batch-v1");
    c.str(signer)
        .str(key_id)
        .str(&batch_id.to_string())
        .i64(signed_at_ms)
        .u64(batch_size)
        .bytes(&root.0);
    c.into_bytes()
}

/// A record before it is signed: what the submitter vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxContent {
    /// Transaction id (unique in the ledger).
    pub tx_id: Uuid,
    /// Business event id; the idempotency key (unique in the ledger).
    pub record_id: String,
    /// What the transaction does.
    pub kind: TxKind,
    /// Dataset category (e.g. `vaccination`), or `registry`.
    pub category: String,
    /// Key of the key-value state this record updates (R2.3), e.g. a trace
    /// code, a batch number or an entity id.
    pub state_key: String,
    /// `json` or `xml`.
    pub content_type: String,
    /// SM3 of the business data in plain text.
    pub data_hash: Sm3Digest,
    /// The encrypted business data (sealed envelope bytes).
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
}

impl TxContent {
    /// The content hash a batch signature covers:
    /// `SM3(canonical(tx_id, record_id, kind, category, state_key,
    /// content_type, data_hash, SM3(payload)))`.
    pub fn content_hash(&self) -> Sm3Digest {
        let mut c = Canon::new("vaxgate-tx-content-v1");
        c.str(&self.tx_id.to_string())
            .str(&self.record_id)
            .str(self.kind.as_str())
            .str(&self.category)
            .str(&self.state_key)
            .str(&self.content_type)
            .bytes(&self.data_hash.0)
            .bytes(&sm3(&self.payload).0);
        sm3(&c.into_bytes())
    }
}

/// A transaction ready to append: content plus the submitter's proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// What was submitted.
    #[serde(flatten)]
    pub content: TxContent,
    /// Who vouches for it.
    pub auth: TxAuth,
}

impl Transaction {
    /// The ledger leaf data: content hash ‖ auth, canonically encoded.
    /// The log-level leaf hash is `SM3(0x00 ‖ leaf_data)`.
    pub fn leaf_data(&self) -> Vec<u8> {
        self.leaf_data_with(&self.content.content_hash())
    }

    fn leaf_data_with(&self, content_hash: &Sm3Digest) -> Vec<u8> {
        let mut c = Canon::new("vaxgate-tx-v1");
        c.bytes(&content_hash.0).bytes(&self.auth.canonical());
        c.into_bytes()
    }

    /// The RFC 9162 leaf hash.
    pub fn leaf_hash(&self) -> Sm3Digest {
        merkle::leaf_hash(&self.leaf_data())
    }

    /// The leaf hash when the content hash is already known.
    pub fn leaf_hash_with(&self, content_hash: &Sm3Digest) -> Sm3Digest {
        merkle::leaf_hash(&self.leaf_data_with(content_hash))
    }

    /// Checks the submitter's signature and batch membership.
    pub fn verify_auth(&self) -> Result<(), LedgerError> {
        self.auth
            .verify(&self.content.content_hash())
            .map_err(|reason| LedgerError::BadTransaction {
                tx_id: self.content.tx_id.to_string(),
                reason,
            })
    }
}

/// Signs a batch of records with one SM2 signature over their Merkle root.
pub fn sign_batch(signer: &str, key: &Sm2SigningKey, records: Vec<TxContent>, signed_at_ms: i64) -> Vec<Transaction> {
    let hashes: Vec<Sm3Digest> = records.iter().map(|r| merkle::leaf_hash(&r.content_hash().0)).collect();
    let n = hashes.len() as u64;
    let root = merkle::root_of(&hashes);
    let batch_id = Uuid::new_v4();
    let vk = key.verifying_key();
    let key_id = vk.key_id().to_string();
    let sig = key.sign(&batch_signing_bytes(signer, &key_id, batch_id, signed_at_ms, n, &root));
    // Build every audit path from an in-memory copy of the batch tree.
    let mut nodes = std::collections::HashMap::new();
    let mut f = merkle::Frontier::default();
    for h in &hashes {
        f.push(*h, |level, index, h| {
            nodes.insert(merkle::NodeKey { level, index }, h);
        });
    }
    let public_key = hex::encode(vk.to_sec1());
    records
        .into_iter()
        .enumerate()
        .map(|(i, content)| {
            let audit_path = merkle::inclusion_plan(i as u64, n)
                .iter()
                .map(|keys| {
                    let hs: Vec<Sm3Digest> = keys.iter().map(|k| nodes[k]).collect();
                    merkle::fold_range(&hs).unwrap_or_else(merkle::empty_root)
                })
                .collect();
            Transaction {
                content,
                auth: TxAuth {
                    signer: signer.to_string(),
                    key_id: key_id.clone(),
                    public_key: public_key.clone(),
                    batch_id,
                    signed_at_ms,
                    batch_size: n,
                    batch_index: i as u64,
                    batch_root: root,
                    audit_path,
                    signature: sig.to_hex(),
                },
            }
        })
        .collect()
}

/// Encodes [`TxAuth`] for storage (the same canonical bytes).
pub fn encode_auth(a: &TxAuth) -> Vec<u8> {
    a.canonical()
}

/// Decodes what [`encode_auth`] wrote.
pub fn decode_auth(b: &[u8]) -> Option<TxAuth> {
    let mut r = Reader::new(b);
    r.tag("vaxgate-auth-v1")?;
    let signer = r.str()?.to_string();
    let key_id = r.str()?.to_string();
    let public_key = r.str()?.to_string();
    let batch_id = Uuid::parse_str(r.str()?).ok()?;
    let signed_at_ms = r.i64()?;
    let batch_size = r.u64()?;
    let batch_index = r.u64()?;
    let batch_root = Sm3Digest::from_slice(r.bytes()?).ok()?;
    let n = r.u64()?;
    if n > 64 {
        return None;
    }
    let mut audit_path = Vec::with_capacity(n as usize);
    for _ in 0..n {
        audit_path.push(Sm3Digest::from_slice(r.bytes()?).ok()?);
    }
    let signature = r.str()?.to_string();
    r.is_empty().then_some(TxAuth {
        signer,
        key_id,
        public_key,
        batch_id,
        signed_at_ms,
        batch_size,
        batch_index,
        batch_root,
        audit_path,
        signature,
    })
}

/// Base64 (standard alphabet) for byte fields in JSON.
pub mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises bytes as base64.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    /// Parses base64 into bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn content(i: u32) -> TxContent {
        TxContent {
            tx_id: Uuid::new_v4(),
            record_id: format!("ev-{i}"),
            kind: TxKind::Data,
            category: "vaccination".into(),
            state_key: format!("8{:019}", i),
            content_type: "json".into(),
            data_hash: sm3(&i.to_be_bytes()),
            payload: vec![i as u8; 100],
        }
    }

    #[test]
    fn batch_records_verify_alone_and_tamper_fails() {
        let k = Sm2SigningKey::generate();
        let txs = sign_batch(
            "91110000MA0000000X",
            &k,
            (0..7).map(content).collect(),
            1_700_000_000_000,
        );
        for t in &txs {
            t.verify_auth().unwrap();
            assert_eq!(decode_auth(&encode_auth(&t.auth)).as_ref(), Some(&t.auth));
        }
        let mut bad = txs[3].clone();
        bad.content.payload[0] ^= 1;
        assert!(bad.verify_auth().is_err());
        let mut bad = txs[3].clone();
        bad.auth.batch_index = 2;
        assert!(bad.verify_auth().is_err());
        let mut bad = txs[3].clone();
        bad.auth.signer = "someone-else".into();
        assert!(bad.verify_auth().is_err());
    }
}
