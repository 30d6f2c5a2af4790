//! Ledger transactions: the business-data hash plus the encrypted payload
//! (T/CPMA 026-2023 6.2.1), with the submitter's batch-signature proof.
//!
//! A submitter signs a *batch* of records once (`secure_gateway::BatchHeader`):
//! the SM2 signature covers the batch header, which contains the RFC 9162
//! Merkle root (SM3) of the records' digests. Each transaction keeps its audit path within the
//! batch, so one record proves its origin without the rest of the batch
//! (records of a batch that were rejected are simply absent).

use secure_gateway::{BatchHeader, CryptoError, SealedEnvelope, Signer, Sm2VerifyingKey, Sm3Digest, sm3};
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

/// What the batch tree's leaf is made of for this transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeafInput {
    /// The payload is a sealed envelope (JSON) as the submitter sent it; the
    /// leaf is its record digest (`docs/envelope.md`), and the envelope's
    /// header must agree with the transaction's fields.
    Envelope,
    /// The leaf is [`TxContent::content_hash`] (transactions the ledger
    /// node writes itself: genesis, registry changes).
    Content,
}

impl LeafInput {
    fn as_str(self) -> &'static str {
        match self {
            LeafInput::Envelope => "envelope",
            LeafInput::Content => "content",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "envelope" => Some(LeafInput::Envelope),
            "content" => Some(LeafInput::Content),
            _ => None,
        }
    }
}

/// The submitter's proof of origin for one transaction: the signed batch
/// header (`secure_gateway::BatchHeader`), this record's place in the batch
/// and its audit path, and the signer's public key so that the proof
/// verifies offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxAuth {
    /// Entity that signed.
    pub signer: String,
    /// The signing public key, SEC1 uncompressed, lowercase hex.
    pub public_key: String,
    /// What the leaf is made of.
    pub leaf: LeafInput,
    /// The signed batch header.
    pub batch: BatchHeader,
    /// Position of this record in the batch.
    pub index: u64,
    /// Audit path of this record within the batch.
    pub audit_path: Vec<Sm3Digest>,
}

impl TxAuth {
    /// Canonical bytes (stored, and part of the ledger leaf).
    pub fn canonical(&self) -> Vec<u8> {
        let b = &self.batch;
        let mut c = Canon::new("vaxgate-auth-v2");
        c.str(&self.signer)
            .str(&self.public_key)
            .str(self.leaf.as_str())
            .u64(u64::from(b.version))
            .str(&b.batch_id.to_string())
            .str(&b.key_id)
            .i64(b.timestamp_ms)
            .u64(b.tree_size)
            .bytes(&b.root.0)
            .bytes(&b.signature)
            .u64(self.index)
            .u64(self.audit_path.len() as u64);
        for p in &self.audit_path {
            c.bytes(&p.0);
        }
        c.into_bytes()
    }

    /// The leaf input of `content` under this proof (checking, for an
    /// envelope, that its header agrees with the transaction).
    pub fn leaf_input(&self, content: &TxContent) -> Result<Sm3Digest, String> {
        self.leaf_input_with(content, None)
    }

    /// [`TxAuth::leaf_input`] with the content hash already computed by the
    /// caller (it hashes the whole payload; appends compute it once).
    fn leaf_input_with(&self, content: &TxContent, content_hash: Option<&Sm3Digest>) -> Result<Sm3Digest, String> {
        match self.leaf {
            LeafInput::Content => Ok(content_hash.copied().unwrap_or_else(|| content.content_hash())),
            LeafInput::Envelope => {
                let env = SealedEnvelope::from_json(&content.payload).map_err(|e| e.to_string())?;
                let h = &env.header;
                let mismatch = |what: &str| Err(format!("the envelope's {what} does not match the transaction"));
                if h.transaction_id != content.tx_id {
                    return mismatch("transaction id");
                }
                if h.dataset_category != content.category {
                    return mismatch("dataset category");
                }
                if h.content_type.as_str() != content.content_type {
                    return mismatch("content type");
                }
                if env.plaintext_sm3 != content.data_hash {
                    return mismatch("plaintext SM3 (data hash)");
                }
                if h.entity_id != self.signer {
                    return mismatch("entity id");
                }
                if h.key_id != self.batch.key_id {
                    return mismatch("signer key id");
                }
                env.record_digest().map_err(|e| e.to_string())
            }
        }
    }

    /// Checks that the record is leaf `index` of the signed batch. The batch
    /// signature itself is [`TxAuth::verify_signature`] (shared by the batch).
    pub fn verify_membership(&self, content: &TxContent) -> Result<(), String> {
        self.verify_membership_with(content, None)
    }

    /// [`TxAuth::verify_membership`] with a precomputed content hash.
    pub fn verify_membership_with(&self, content: &TxContent, content_hash: Option<&Sm3Digest>) -> Result<(), String> {
        let leaf = merkle::leaf_hash(&self.leaf_input_with(content, content_hash)?.0);
        if merkle::verify_inclusion(
            self.index,
            self.batch.tree_size,
            &leaf,
            &self.audit_path,
            &self.batch.root,
        ) {
            Ok(())
        } else {
            Err("record is not in the signed batch (audit path does not reach the batch root)".into())
        }
    }

    /// Checks the batch signature under the embedded public key.
    pub fn verify_signature(&self) -> Result<(), String> {
        self.verify_signature_in(&secure_gateway::RustCryptoProvider::new())
    }

    /// [`TxAuth::verify_signature`] with the signature checked by `provider`.
    pub fn verify_signature_in(&self, provider: &dyn secure_gateway::CryptoProvider) -> Result<(), String> {
        let pk = hex::decode(&self.public_key).map_err(|_| "public key is not hex".to_string())?;
        let vk = Sm2VerifyingKey::from_sec1(&pk, secure_gateway::DEFAULT_DIST_ID).map_err(|e| e.to_string())?;
        if hex::encode(vk.to_sec1()) != self.public_key {
            return Err("public key is not in canonical form (lowercase hex, uncompressed)".into());
        }
        self.batch.verify_in(provider, &vk).map_err(|e| e.to_string())
    }

    /// Both checks.
    pub fn verify(&self, content: &TxContent) -> Result<(), String> {
        self.verify_membership(content)?;
        self.verify_signature()
    }
}

/// Builds the proofs of a batch whose leaves are `inputs`, signed by `key`
/// (through its crypto provider).
pub fn sign_leaves(
    signer: &str,
    key: &Signer,
    inputs: &[Sm3Digest],
    leaf: LeafInput,
    signed_at_ms: i64,
) -> Result<Vec<TxAuth>, CryptoError> {
    let hashes: Vec<Sm3Digest> = inputs.iter().map(|d| merkle::leaf_hash(&d.0)).collect();
    let n = hashes.len() as u64;
    let vk = key.verifying_key();
    let mut batch = BatchHeader {
        version: secure_gateway::batch::BATCH_VERSION,
        batch_id: Uuid::new_v4(),
        key_id: vk.key_id().to_string(),
        timestamp_ms: signed_at_ms,
        tree_size: n,
        root: merkle::root_of(&hashes),
        signature: Vec::new(),
    };
    // signed_bytes cannot fail for a header built here (all fields are short).
    let msg = batch.signed_bytes().unwrap_or_default();
    batch.signature = key.sign(&msg)?.to_der();
    let mut nodes = std::collections::HashMap::new();
    let mut f = merkle::Frontier::default();
    for h in &hashes {
        f.push(*h, |level, index, h| {
            nodes.insert(merkle::NodeKey { level, index }, h);
        });
    }
    let public_key = hex::encode(vk.to_sec1());
    Ok((0..n)
        .map(|i| TxAuth {
            signer: signer.to_string(),
            public_key: public_key.clone(),
            leaf,
            batch: batch.clone(),
            index: i,
            audit_path: merkle::inclusion_plan(i, n)
                .iter()
                .map(|keys| {
                    let hs: Vec<Sm3Digest> = keys.iter().map(|k| nodes[k]).collect();
                    merkle::fold_range(&hs).unwrap_or_else(merkle::empty_root)
                })
                .collect(),
        })
        .collect())
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
    /// The root of the record's field commitments
    /// (`mappings::commitment`): what every answer built from this record
    /// is checked against. Absent in transactions written before them and
    /// in transactions that are not events (genesis, registry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields_root: Option<Sm3Digest>,
}

impl TxContent {
    /// The content hash a batch signature covers:
    /// `SM3(canonical(tx_id, record_id, kind, category, state_key,
    /// content_type, data_hash, SM3(payload)))`.
    ///
    /// A transaction with a [`TxContent::fields_root`] is hashed under the
    /// tag `vaxgate-tx-content-v2` with the root appended; one without
    /// keeps the v1 form, so transactions written before field commitments
    /// verify as they did.
    pub fn content_hash(&self) -> Sm3Digest {
        self.content_hash_with(&sm3(&self.payload))
    }

    /// The content hash from the SM3 of the payload (for a reader that has
    /// the digest but not the payload).
    pub fn content_hash_with(&self, payload_sm3: &Sm3Digest) -> Sm3Digest {
        let tag = if self.fields_root.is_some() {
            "vaxgate-tx-content-v2"
        } else {
            "vaxgate-tx-content-v1"
        };
        let mut c = Canon::new(tag);
        c.str(&self.tx_id.to_string())
            .str(&self.record_id)
            .str(self.kind.as_str())
            .str(&self.category)
            .str(&self.state_key)
            .str(&self.content_type)
            .bytes(&self.data_hash.0)
            .bytes(&payload_sm3.0);
        if let Some(r) = &self.fields_root {
            c.bytes(&r.0);
        }
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
        leaf_data(content_hash, &self.auth)
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
            .verify(&self.content)
            .map_err(|reason| LedgerError::BadTransaction {
                tx_id: self.content.tx_id.to_string(),
                reason,
            })
    }
}

/// A transaction without its payload, the payload's SM3 in its place: what
/// the reader of a query answer needs to recompute the transaction's leaf
/// (and so check it against the signed checkpoint with the audit path)
/// without the sealed record, which it cannot open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxSummary {
    /// Transaction id.
    pub tx_id: Uuid,
    /// Business event id.
    pub record_id: String,
    /// What the transaction does.
    pub kind: TxKind,
    /// Dataset category.
    pub category: String,
    /// State key.
    pub state_key: String,
    /// `json` or `xml`.
    pub content_type: String,
    /// SM3 of the business data in plain text.
    pub data_hash: Sm3Digest,
    /// SM3 of the payload (the sealed record).
    pub payload_sm3: Sm3Digest,
    /// The root of the record's field commitments, if it has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields_root: Option<Sm3Digest>,
    /// The submitter's batch proof.
    pub auth: TxAuth,
}

impl TxSummary {
    /// The summary of `t`.
    #[must_use]
    pub fn of(t: &Transaction) -> TxSummary {
        let c = &t.content;
        TxSummary {
            tx_id: c.tx_id,
            record_id: c.record_id.clone(),
            kind: c.kind,
            category: c.category.clone(),
            state_key: c.state_key.clone(),
            content_type: c.content_type.clone(),
            data_hash: c.data_hash,
            payload_sm3: sm3(&c.payload),
            fields_root: c.fields_root,
            auth: t.auth.clone(),
        }
    }

    /// The transaction's content hash.
    #[must_use]
    pub fn content_hash(&self) -> Sm3Digest {
        TxContent {
            tx_id: self.tx_id,
            record_id: self.record_id.clone(),
            kind: self.kind,
            category: self.category.clone(),
            state_key: self.state_key.clone(),
            content_type: self.content_type.clone(),
            data_hash: self.data_hash,
            payload: Vec::new(),
            fields_root: self.fields_root,
        }
        .content_hash_with(&self.payload_sm3)
    }

    /// The transaction's RFC 9162 leaf hash.
    #[must_use]
    pub fn leaf_hash(&self) -> Sm3Digest {
        merkle::leaf_hash(&leaf_data(&self.content_hash(), &self.auth))
    }
}

/// The ledger leaf data of a transaction: its content hash ‖ auth,
/// canonically encoded.
fn leaf_data(content_hash: &Sm3Digest, auth: &TxAuth) -> Vec<u8> {
    let mut c = Canon::new("vaxgate-tx-v1");
    c.bytes(&content_hash.0).bytes(&auth.canonical());
    c.into_bytes()
}

/// Signs records the ledger node (or a test client) writes itself, with one
/// SM2 signature over the Merkle root of their content hashes.
pub fn sign_batch(
    signer: &str,
    key: &Signer,
    records: Vec<TxContent>,
    signed_at_ms: i64,
) -> Result<Vec<Transaction>, CryptoError> {
    let inputs: Vec<Sm3Digest> = records.iter().map(TxContent::content_hash).collect();
    let auths = sign_leaves(signer, key, &inputs, LeafInput::Content, signed_at_ms)?;
    Ok(records
        .into_iter()
        .zip(auths)
        .map(|(content, auth)| Transaction { content, auth })
        .collect())
}

/// Encodes [`TxAuth`] for storage (the same canonical bytes).
pub fn encode_auth(a: &TxAuth) -> Vec<u8> {
    a.canonical()
}

/// Decodes what [`encode_auth`] wrote; only canonical bytes are accepted
/// (re-encoding must give the same bytes).
pub fn decode_auth(b: &[u8]) -> Option<TxAuth> {
    let mut r = Reader::new(b);
    r.tag("vaxgate-auth-v2")?;
    let signer = r.str()?.to_string();
    let public_key = r.str()?.to_string();
    let leaf = LeafInput::parse(r.str()?)?;
    let version = u8::try_from(r.u64()?).ok()?;
    let batch_id = Uuid::parse_str(r.str()?).ok()?;
    let key_id = r.str()?.to_string();
    let timestamp_ms = r.i64()?;
    let tree_size = r.u64()?;
    let root = Sm3Digest::from_slice(r.bytes()?).ok()?;
    let signature = r.bytes()?.to_vec();
    let index = r.u64()?;
    let n = r.u64()?;
    if n > 64 {
        return None;
    }
    let mut audit_path = Vec::with_capacity(n as usize);
    for _ in 0..n {
        audit_path.push(Sm3Digest::from_slice(r.bytes()?).ok()?);
    }
    if !r.is_empty() {
        return None;
    }
    let auth = TxAuth {
        signer,
        public_key,
        leaf,
        batch: BatchHeader {
            version,
            batch_id,
            key_id,
            timestamp_ms,
            tree_size,
            root,
            signature,
        },
        index,
        audit_path,
    };
    (auth.canonical() == b).then_some(auth)
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
            fields_root: (i % 2 == 1).then(|| sm3(&[i as u8; 3])),
        }
    }

    #[test]
    fn a_summary_has_the_leaf_of_its_transaction() {
        let k = crate::test_signer();
        let txs = sign_batch(
            "91110000MA0000000X",
            &k,
            (0..4).map(content).collect(),
            1_700_000_000_000,
        )
        .unwrap();
        for t in &txs {
            let s = TxSummary::of(t);
            assert_eq!(s.leaf_hash(), t.leaf_hash());
            let back: TxSummary = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
            assert_eq!(back, s);
            let mut other = s.clone();
            other.fields_root = Some(sm3(b"forged"));
            assert_ne!(other.leaf_hash(), t.leaf_hash());
        }
        // With and without a root, the content hash differs (v2 and v1).
        let mut c = content(2);
        let v1 = c.content_hash();
        c.fields_root = Some(sm3(b"x"));
        assert_ne!(c.content_hash(), v1);
    }

    #[test]
    fn batch_records_verify_alone_and_tamper_fails() {
        let k = crate::test_signer();
        let txs = sign_batch(
            "91110000MA0000000X",
            &k,
            (0..7).map(content).collect(),
            1_700_000_000_000,
        )
        .unwrap();
        for t in &txs {
            t.verify_auth().unwrap();
            assert_eq!(decode_auth(&encode_auth(&t.auth)).as_ref(), Some(&t.auth));
        }
        let mut bad = txs[3].clone();
        bad.content.payload[0] ^= 1;
        assert!(bad.verify_auth().is_err());
        let mut bad = txs[3].clone();
        bad.auth.index = 2;
        assert!(bad.verify_auth().is_err());
        // The batch header binds the key id, not the entity name: for content
        // leaves the name is bound by the registry (key → entity) and by the
        // ledger leaf, so renaming changes the leaf hash.
        let mut renamed = txs[3].clone();
        renamed.auth.signer = "someone-else".into();
        assert_ne!(renamed.leaf_hash(), txs[3].leaf_hash());
        let mut bad = txs[3].clone();
        bad.auth.batch.tree_size += 1;
        assert!(bad.verify_auth().is_err());
        let mut bad = txs[3].clone();
        bad.auth.batch.signature[10] ^= 1;
        assert!(bad.verify_auth().is_err());
        // Non-canonical bytes are refused when decoding.
        let mut bytes = encode_auth(&txs[3].auth);
        bytes.push(0);
        assert!(decode_auth(&bytes).is_none());
    }
}
