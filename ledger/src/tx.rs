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

/// How a transaction is encoded and hashed: the format of the block that
/// holds it (docs/ledger.md, "Formats"). Blocks already written keep their
/// format; new blocks are written in the ledger's current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum TxFormat {
    /// Block version `1.0`: sealed envelopes stored as their JSON, the
    /// content hash over `SM3(payload)`, the submitter's whole batch proof
    /// stored and hashed with every transaction.
    #[default]
    V1,
    /// Block version `2.0`: sealed envelopes stored in their binary form
    /// (`docs/envelope.md`), the content hash over the payload digest (for
    /// an envelope its record digest, which the batch signature already
    /// covers, so the payload is hashed once), the batch header, signer key
    /// and signature stored once per batch, and the leaf over the batch
    /// digest and the record's index instead of the whole proof.
    V2,
}

impl TxFormat {
    /// The format new ledgers and new blocks are written in.
    pub const CURRENT: TxFormat = TxFormat::V2;

    /// Its number (1, 2), as stored and in JSON.
    pub fn number(self) -> u8 {
        match self {
            TxFormat::V1 => 1,
            TxFormat::V2 => 2,
        }
    }

    /// The format of number `n`.
    pub fn of_number(n: u8) -> Option<Self> {
        match n {
            1 => Some(TxFormat::V1),
            2 => Some(TxFormat::V2),
            _ => None,
        }
    }

    /// The Annex A `version` of blocks of this format.
    pub fn block_version(self) -> &'static str {
        match self {
            TxFormat::V1 => "1.0",
            TxFormat::V2 => "2.0",
        }
    }

    /// The format of blocks whose header says `version`.
    pub fn of_block_version(version: &str) -> Option<Self> {
        [TxFormat::V1, TxFormat::V2]
            .into_iter()
            .find(|f| f.block_version() == version)
    }

    fn is_v1(&self) -> bool {
        *self == TxFormat::V1
    }
}

impl From<TxFormat> for u8 {
    fn from(f: TxFormat) -> u8 {
        f.number()
    }
}

impl TryFrom<u8> for TxFormat {
    type Error = String;
    fn try_from(n: u8) -> Result<Self, String> {
        TxFormat::of_number(n).ok_or_else(|| format!("unknown transaction format {n} (known: 1, 2)"))
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
        let mut c = Canon::new("vaxgate-auth-v2");
        self.write_batch(&mut c);
        self.write_record_part(&mut c);
        c.into_bytes()
    }

    /// The leaf input of `content` under this proof (checking, for an
    /// envelope, that its header agrees with the transaction).
    pub fn leaf_input(&self, content: &TxContent) -> Result<Sm3Digest, String> {
        self.leaf_input_with(content, None)
    }

    /// [`TxAuth::leaf_input`] with the content hash and the payload's SM3
    /// already computed by the caller (appends compute them once).
    fn leaf_input_with(
        &self,
        content: &TxContent,
        known: Option<(&Sm3Digest, &Sm3Digest)>,
    ) -> Result<Sm3Digest, String> {
        match self.leaf {
            LeafInput::Content => Ok(known.map_or_else(|| content.content_hash(), |(c, _)| *c)),
            LeafInput::Envelope => {
                let env = content.envelope().map_err(|e| e.to_string())?;
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
                match content.format {
                    TxFormat::V1 => env.record_digest().map_err(|e| e.to_string()),
                    // The payload is the signed bytes: its SM3 is the record digest.
                    TxFormat::V2 => Ok(known.map_or_else(|| sm3(&content.payload), |(_, p)| *p)),
                }
            }
        }
    }

    /// Checks that the record is leaf `index` of the signed batch. The batch
    /// signature itself is [`TxAuth::verify_signature`] (shared by the batch).
    pub fn verify_membership(&self, content: &TxContent) -> Result<(), String> {
        self.verify_membership_with(content, None)
    }

    /// [`TxAuth::verify_membership`] with the content hash and the
    /// payload's SM3 computed by the caller, in that order.
    pub fn verify_membership_with(
        &self,
        content: &TxContent,
        known: Option<(&Sm3Digest, &Sm3Digest)>,
    ) -> Result<(), String> {
        let leaf = merkle::leaf_hash(&self.leaf_input_with(content, known)?.0);
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

    /// The canonical bytes of the batch this proof belongs to: everything
    /// but the record's index and audit path. Format 2 stores them once per
    /// batch and hashes them into each record's leaf as the batch digest.
    pub fn batch_body(&self) -> Vec<u8> {
        let mut c = Canon::new("vaxgate-batch-v1");
        self.write_batch(&mut c);
        c.into_bytes()
    }

    /// The batch fields in their canonical order (both stored forms).
    fn write_batch(&self, c: &mut Canon) {
        let b = &self.batch;
        c.str(&self.signer)
            .str(&self.public_key)
            .str(self.leaf.as_str())
            .u64(u64::from(b.version))
            .str(&b.batch_id.to_string())
            .str(&b.key_id)
            .i64(b.timestamp_ms)
            .u64(b.tree_size)
            .bytes(&b.root.0)
            .bytes(&b.signature);
    }

    /// The record's index and audit path (both stored forms).
    fn write_record_part(&self, c: &mut Canon) {
        c.u64(self.index).u64(self.audit_path.len() as u64);
        for p in &self.audit_path {
            c.bytes(&p.0);
        }
    }

    /// Whether `other` belongs to the same batch (everything
    /// [`TxAuth::batch_body`] holds is equal): a cheap comparison that
    /// spares encoding the body again for each record of a batch.
    pub fn same_batch(&self, other: &TxAuth) -> bool {
        self.batch == other.batch
            && self.leaf == other.leaf
            && self.signer == other.signer
            && self.public_key == other.public_key
    }

    /// `SM3(batch_body)`: what a format-2 leaf holds of the batch.
    pub fn batch_digest(&self) -> Sm3Digest {
        sm3(&self.batch_body())
    }

    /// The record's own part of the proof, as format 2 stores it beside a
    /// reference to its batch: index and audit path.
    pub fn record_part(&self) -> Vec<u8> {
        let mut c = Canon::new(RECORD_PROOF_TAG);
        self.write_record_part(&mut c);
        c.into_bytes()
    }

    /// The record's own part when its batch's Merkle tree is stored with the
    /// batch (format 2, a batch whose every record is in one block): the
    /// index alone; the audit path is looked up in the tree when read.
    pub fn record_index_part(&self) -> Vec<u8> {
        let mut c = Canon::new(RECORD_AT_TAG);
        c.u64(self.index);
        c.into_bytes()
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
    /// How it is encoded and hashed (its block's format); absent in JSON
    /// for format 1.
    #[serde(default, skip_serializing_if = "TxFormat::is_v1")]
    pub format: TxFormat,
}

impl TxContent {
    /// The sealed envelope its payload holds (a submitter's record, whose
    /// batch leaf is [`LeafInput::Envelope`]): format 1 stores its JSON,
    /// format 2 its signed bytes (`docs/envelope.md`, "Binary form").
    pub fn envelope(&self) -> Result<SealedEnvelope, CryptoError> {
        match self.format {
            TxFormat::V1 => SealedEnvelope::from_json(&self.payload),
            TxFormat::V2 => SealedEnvelope::from_signed_bytes(&self.payload),
        }
    }

    /// The content hash: what a node-written batch signature covers, and
    /// what the ledger leaf holds of the record.
    ///
    /// Format 1: `SM3(canonical("vaxgate-tx-content-v1", tx_id, record_id,
    /// kind, category, state_key, content_type, data_hash, SM3(payload)))`;
    /// a transaction with a [`TxContent::fields_root`] is hashed under the
    /// tag `vaxgate-tx-content-v2` with the root appended (transactions
    /// written before field commitments keep the first form).
    ///
    /// Format 2: `SM3(canonical("vaxgate-tx-content-f2", tx_id (16 raw
    /// bytes), record_id, kind, category, state_key, content_type,
    /// data_hash, SM3(payload), fields_root or an empty field))`. Its payload
    /// of a sealed record is the envelope's signed bytes, so `SM3(payload)`
    /// is the record digest the submitter signed.
    pub fn content_hash(&self) -> Sm3Digest {
        self.content_hash_with(&sm3(&self.payload))
    }

    /// The content hash from the SM3 of the payload (for a reader that has
    /// the digest but not the payload).
    pub fn content_hash_with(&self, payload_sm3: &Sm3Digest) -> Sm3Digest {
        let mut c = match (self.format, self.fields_root.is_some()) {
            (TxFormat::V2, _) => Canon::new("vaxgate-tx-content-f2"),
            (TxFormat::V1, true) => Canon::new("vaxgate-tx-content-v2"),
            (TxFormat::V1, false) => Canon::new("vaxgate-tx-content-v1"),
        };
        match self.format {
            TxFormat::V1 => c.str(&self.tx_id.to_string()),
            TxFormat::V2 => c.bytes(self.tx_id.as_bytes()),
        };
        c.str(&self.record_id)
            .str(self.kind.as_str())
            .str(&self.category)
            .str(&self.state_key)
            .str(&self.content_type)
            .bytes(&self.data_hash.0)
            .bytes(&payload_sm3.0);
        match (&self.fields_root, self.format) {
            (Some(r), _) => {
                c.bytes(&r.0);
            }
            (None, TxFormat::V2) => {
                c.bytes(&[]);
            }
            (None, TxFormat::V1) => {}
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
    /// The ledger leaf data (format 1: content hash ‖ the whole batch
    /// proof; format 2: content hash ‖ batch digest ‖ index), canonically
    /// encoded. The log-level leaf hash is `SM3(0x00 ‖ leaf_data)`.
    pub fn leaf_data(&self) -> Vec<u8> {
        leaf_data(self.content.format, &self.content.content_hash(), &self.auth)
    }

    /// The RFC 9162 leaf hash.
    pub fn leaf_hash(&self) -> Sm3Digest {
        merkle::leaf_hash(&self.leaf_data())
    }

    /// The leaf hash when the content hash is already known.
    pub fn leaf_hash_with(&self, content_hash: &Sm3Digest) -> Sm3Digest {
        merkle::leaf_hash(&leaf_data(self.content.format, content_hash, &self.auth))
    }

    /// The leaf hash of a format-2 transaction whose batch digest is known
    /// (the same for every record of a batch).
    pub fn leaf_hash_in_batch(&self, content_hash: &Sm3Digest, batch_digest: &Sm3Digest) -> Sm3Digest {
        match self.content.format {
            TxFormat::V1 => self.leaf_hash_with(content_hash),
            TxFormat::V2 => merkle::leaf_hash(&leaf_data_f2(content_hash, batch_digest, self.auth.index)),
        }
    }

    /// The record's leaf hash within its signed batch, for a format-2
    /// transaction (None for format 1, whose rows keep the audit path),
    /// from its content hash and payload SM3 already computed.
    pub fn batch_leaf_hash(&self, content_hash: &Sm3Digest, payload_sm3: &Sm3Digest) -> Option<Sm3Digest> {
        (self.content.format == TxFormat::V2).then(|| match self.auth.leaf {
            LeafInput::Content => merkle::leaf_hash(&content_hash.0),
            // The payload is the signed bytes: its SM3 is the record digest.
            LeafInput::Envelope => merkle::leaf_hash(&payload_sm3.0),
        })
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
    /// The transaction's format (absent for format 1).
    #[serde(default, skip_serializing_if = "TxFormat::is_v1")]
    pub format: TxFormat,
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
            format: c.format,
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
            format: self.format,
        }
        .content_hash_with(&self.payload_sm3)
    }

    /// The transaction's RFC 9162 leaf hash.
    #[must_use]
    pub fn leaf_hash(&self) -> Sm3Digest {
        merkle::leaf_hash(&leaf_data(self.format, &self.content_hash(), &self.auth))
    }
}

/// The ledger leaf data of a transaction of `format` (docs/ledger.md, "Log
/// leaves"), canonically encoded.
fn leaf_data(format: TxFormat, content_hash: &Sm3Digest, auth: &TxAuth) -> Vec<u8> {
    match format {
        TxFormat::V1 => {
            let mut c = Canon::new("vaxgate-tx-v1");
            c.bytes(&content_hash.0).bytes(&auth.canonical());
            c.into_bytes()
        }
        TxFormat::V2 => leaf_data_f2(content_hash, &auth.batch_digest(), auth.index),
    }
}

/// Format 2's leaf data: content hash, batch digest, index in the batch.
/// The audit path is not in it: it is checked against the batch root,
/// which the batch digest covers.
fn leaf_data_f2(content_hash: &Sm3Digest, batch_digest: &Sm3Digest, index: u64) -> Vec<u8> {
    let mut c = Canon::new("vaxgate-tx-f2");
    c.bytes(&content_hash.0).bytes(&batch_digest.0).u64(index);
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
    let mut auth = read_batch(&mut r)?;
    (auth.index, auth.audit_path) = read_record_part(&mut r)?;
    (auth.canonical() == b).then_some(auth)
}

/// The batch fields of a proof (everything but index and audit path), in
/// their canonical order; index and path are left empty.
fn read_batch(r: &mut Reader<'_>) -> Option<TxAuth> {
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
    Some(TxAuth {
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
        index: 0,
        audit_path: Vec::new(),
    })
}

/// A record's index and audit path (at most 64 hashes), to the end of `r`.
fn read_record_part(r: &mut Reader<'_>) -> Option<(u64, Vec<Sm3Digest>)> {
    let index = r.u64()?;
    let n = r.u64()?;
    if n > 64 {
        return None;
    }
    let mut audit_path = Vec::with_capacity(n as usize);
    for _ in 0..n {
        audit_path.push(Sm3Digest::from_slice(r.bytes()?).ok()?);
    }
    r.is_empty().then_some((index, audit_path))
}

/// Tag of [`TxAuth::record_part`].
const RECORD_PROOF_TAG: &str = "vaxgate-record-proof-v1";
/// Tag of [`TxAuth::record_index_part`].
const RECORD_AT_TAG: &str = "vaxgate-record-at-v1";

/// A format-2 proof as decoded from storage by [`decode_batch_auth`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredAuth {
    /// Complete: the row held the record's audit path.
    Complete(TxAuth),
    /// The row held the record's index alone ([`TxAuth::record_index_part`]):
    /// the audit path is empty, to be looked up in the tree stored with the
    /// batch.
    NeedsPath(TxAuth),
}

/// Decodes a format-2 proof from its batch's stored body
/// ([`TxAuth::batch_body`]) and the record's own part
/// ([`TxAuth::record_part`] or [`TxAuth::record_index_part`]); only
/// canonical bytes are accepted.
pub fn decode_batch_auth(body: &[u8], record: &[u8]) -> Option<StoredAuth> {
    let mut r = Reader::new(body);
    r.tag("vaxgate-batch-v1")?;
    let mut auth = read_batch(&mut r)?;
    if !r.is_empty() || auth.batch_body() != body {
        return None;
    }
    let mut r = Reader::new(record);
    if r.tag(RECORD_PROOF_TAG).is_some() {
        (auth.index, auth.audit_path) = read_record_part(&mut r)?;
        (auth.record_part() == record).then_some(StoredAuth::Complete(auth))
    } else {
        let mut r = Reader::new(record);
        r.tag(RECORD_AT_TAG)?;
        auth.index = r.u64()?;
        (r.is_empty() && auth.index < auth.batch.tree_size && auth.record_index_part() == record)
            .then_some(StoredAuth::NeedsPath(auth))
    }
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
            format: if i.is_multiple_of(3) {
                TxFormat::V1
            } else {
                TxFormat::V2
            },
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
            // Format 2 stores the batch once and the record's part apart.
            let (body, part) = (t.auth.batch_body(), t.auth.record_part());
            assert_eq!(
                decode_batch_auth(&body, &part),
                Some(StoredAuth::Complete(t.auth.clone()))
            );
            assert!(decode_batch_auth(&[&body[..], &[0]].concat(), &part).is_none());
            assert!(decode_batch_auth(&body, &[&part[..], &[0]].concat()).is_none());
            assert!(decode_batch_auth(&part, &body).is_none());
            // Or the index alone, the path to come from the batch's leaves.
            let at = t.auth.record_index_part();
            let without_path = TxAuth {
                audit_path: Vec::new(),
                ..t.auth.clone()
            };
            assert_eq!(decode_batch_auth(&body, &at), Some(StoredAuth::NeedsPath(without_path)));
            assert!(decode_batch_auth(&body, &[&at[..], &[0]].concat()).is_none());
            let mut beyond = t.auth.clone();
            beyond.index = beyond.batch.tree_size;
            assert!(decode_batch_auth(&body, &beyond.record_index_part()).is_none());
            assert!(t.auth.same_batch(&txs[0].auth));
        }
        let mut other = txs[0].auth.clone();
        other.signer = "someone-else".into();
        assert!(!other.same_batch(&txs[0].auth));
        other = txs[0].auth.clone();
        other.batch.signature[3] ^= 1;
        assert!(!other.same_batch(&txs[0].auth));
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
