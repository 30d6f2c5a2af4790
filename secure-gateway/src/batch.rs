//! Batch signing: one SM2 signature over the SM3 Merkle root (RFC 9162
//! shape, [`crate::merkle`]) of many unsigned sealed records.
//!
//! Leaf `i` is `SM3(0x00 ‖ record_digest_i)` where `record_digest_i` is
//! [`SealedEnvelope::record_digest`] (SM3 of the record's canonical signed
//! bytes). The batch header (id, signer key id, time, tree size, root) is
//! what the signature covers, so one record, its audit path and the signed
//! header verify alone: [`SignedBatch::proof`] → [`RecordProof`].

use uuid::Uuid;

use crate::envelope::{
    Canon, OpenCtx, OpenedEnvelope, RecipientKey, SealedEnvelope, decrypt_verified, record_batch_id,
};
use crate::provider::{CryptoProvider, KeyHandle};
use crate::{CryptoError, Sm2Signature, Sm2VerifyingKey, Sm3Digest, merkle};

/// Domain-separation tag of the signed bytes of a batch header.
pub const BATCH_TAG: &str = "vaxgate/signed-batch";
/// The only batch format version this code writes and reads.
pub const BATCH_VERSION: u8 = 1;

/// The signed head of a batch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchHeader {
    /// Format version ([`BATCH_VERSION`]).
    pub version: u8,
    /// Batch id (UUID).
    pub batch_id: Uuid,
    /// Key id of the batch signer.
    pub key_id: String,
    /// Signing time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Number of records (Merkle leaves).
    pub tree_size: u64,
    /// RFC 9162 Merkle root over the records' leaf hashes (hex).
    pub root: Sm3Digest,
    /// DER SM2 signature over [`BatchHeader::signed_bytes`].
    #[serde(with = "crate::envelope::b64")]
    pub signature: Vec<u8>,
}

impl BatchHeader {
    /// The canonical bytes the batch signature covers (see `docs/envelope.md`).
    pub fn signed_bytes(&self) -> Result<Vec<u8>, CryptoError> {
        let mut c = Canon::default();
        c.field(BATCH_TAG.as_bytes())?
            .field(&[self.version])?
            .field(self.batch_id.as_bytes())?
            .field(self.key_id.as_bytes())?
            .field(&self.timestamp_ms.to_be_bytes())?
            .field(&self.tree_size.to_be_bytes())?
            .field(&self.root.0)?;
        Ok(c.0)
    }

    /// Verifies the header's signature under the expected signer.
    pub fn verify(&self, signer: &Sm2VerifyingKey) -> Result<(), CryptoError> {
        self.check(signer, |m, sig| signer.verify(m, sig))
    }

    /// [`BatchHeader::verify`] with the signature checked by `provider`.
    pub fn verify_in(&self, provider: &dyn CryptoProvider, signer: &Sm2VerifyingKey) -> Result<(), CryptoError> {
        self.check(signer, |m, sig| provider.verify(signer, m, sig))
    }

    fn check(
        &self,
        signer: &Sm2VerifyingKey,
        verify: impl FnOnce(&[u8], &Sm2Signature) -> Result<(), CryptoError>,
    ) -> Result<(), CryptoError> {
        if self.version != BATCH_VERSION {
            return Err(CryptoError::Envelope(format!(
                "unsupported batch version {}",
                self.version
            )));
        }
        if self.key_id != signer.key_id() {
            return Err(CryptoError::SignerMismatch {
                expected: signer.key_id().to_string(),
                found: self.key_id.clone(),
            });
        }
        let sig = Sm2Signature::from_der(&self.signature)?;
        verify(&self.signed_bytes()?, &sig).map_err(|_| CryptoError::BadSignature {
            context: format!("batch {}", self.batch_id),
        })
    }
}

/// A signed batch: the header and all its records, in leaf order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedBatch {
    /// The signed header.
    pub header: BatchHeader,
    /// The records (unsigned envelopes), leaf `i` = record `i`.
    pub records: Vec<SealedEnvelope>,
}

/// One record of a batch with what it takes to verify it alone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordProof {
    /// The signed batch header.
    pub batch: BatchHeader,
    /// The record's leaf index.
    pub index: u64,
    /// RFC 9162 audit path, leaf side first (hex digests).
    pub audit_path: Vec<Sm3Digest>,
    /// The record.
    pub record: SealedEnvelope,
}

fn leaf_hashes(records: &[SealedEnvelope]) -> Result<Vec<Sm3Digest>, CryptoError> {
    records
        .iter()
        .map(|r| Ok(merkle::leaf_hash(&r.record_digest()?.0)))
        .collect()
}

/// Signs a batch of records produced by [`crate::envelope::seal_unsigned`]
/// with the signer's key id. Refuses records that carry their own
/// signature or name another signer.
pub fn sign_batch(
    provider: &dyn CryptoProvider,
    signer: &KeyHandle,
    batch_id: Uuid,
    timestamp_ms: i64,
    records: Vec<SealedEnvelope>,
) -> Result<SignedBatch, CryptoError> {
    if records.is_empty() {
        return Err(CryptoError::Envelope("a batch needs at least one record".into()));
    }
    let vk = provider.public_key(signer)?;
    for (i, r) in records.iter().enumerate() {
        r.check_shape()?;
        if r.signature.is_some() {
            return Err(CryptoError::Envelope(format!(
                "record {i} is individually signed; batch records must not be"
            )));
        }
        if r.header.key_id != vk.key_id() {
            return Err(CryptoError::SignerMismatch {
                expected: vk.key_id().to_string(),
                found: r.header.key_id.clone(),
            });
        }
        if let Some(b) = record_batch_id(r)?
            && b != batch_id
        {
            return Err(CryptoError::Envelope(format!(
                "record {i} was sealed for batch {b}, not {batch_id}"
            )));
        }
    }
    let root = merkle::root(&leaf_hashes(&records)?);
    let mut header = BatchHeader {
        version: BATCH_VERSION,
        batch_id,
        key_id: vk.key_id().to_string(),
        timestamp_ms,
        tree_size: records.len() as u64,
        root,
        signature: Vec::new(),
    };
    header.signature = provider.sign(signer, &header.signed_bytes()?)?.to_der();
    Ok(SignedBatch { header, records })
}

impl SignedBatch {
    /// Verifies the header signature and that the records hash to its root.
    pub fn verify(&self, signer: &Sm2VerifyingKey) -> Result<(), CryptoError> {
        self.verify_leaves(signer).map(|_| ())
    }

    /// [`SignedBatch::verify`], returning the verified leaf hashes (record
    /// order), from which every record's audit path follows without
    /// hashing the records again.
    pub fn verify_leaves(&self, signer: &Sm2VerifyingKey) -> Result<Vec<Sm3Digest>, CryptoError> {
        self.header.verify(signer)?;
        self.leaves_of_verified()
    }

    /// [`SignedBatch::verify_leaves`] with the signature checked by `provider`.
    pub fn verify_leaves_in(
        &self,
        provider: &dyn CryptoProvider,
        signer: &Sm2VerifyingKey,
    ) -> Result<Vec<Sm3Digest>, CryptoError> {
        self.header.verify_in(provider, signer)?;
        self.leaves_of_verified()
    }

    /// The records' leaves, checked against the (verified) header.
    fn leaves_of_verified(&self) -> Result<Vec<Sm3Digest>, CryptoError> {
        Ok(self.records_of_verified()?.leaves)
    }

    /// Each record's signed bytes, record digest and leaf, checked against
    /// the (verified) header.
    fn records_of_verified(&self) -> Result<HashedRecords, CryptoError> {
        if self.header.tree_size != self.records.len() as u64 {
            return Err(CryptoError::Envelope(format!(
                "batch {} declares {} records but carries {}",
                self.header.batch_id,
                self.header.tree_size,
                self.records.len()
            )));
        }
        for r in &self.records {
            r.check_shape()?;
            if r.header.key_id != self.header.key_id {
                return Err(CryptoError::SignerMismatch {
                    expected: self.header.key_id.clone(),
                    found: r.header.key_id.clone(),
                });
            }
        }
        let signed = self
            .records
            .iter()
            .map(SealedEnvelope::signed_bytes)
            .collect::<Result<Vec<_>, _>>()?;
        let digests: Vec<Sm3Digest> = signed.iter().map(|b| crate::sm3(b)).collect();
        let leaves: Vec<Sm3Digest> = digests.iter().map(|d| merkle::leaf_hash(&d.0)).collect();
        if merkle::root(&leaves) != self.header.root {
            return Err(CryptoError::DigestMismatch(format!(
                "batch {}: records do not hash to the signed root",
                self.header.batch_id
            )));
        }
        Ok(HashedRecords {
            signed,
            digests,
            leaves,
        })
    }

    /// The stand-alone proof for record `index`.
    pub fn proof(&self, index: usize) -> Result<RecordProof, CryptoError> {
        let leaves = leaf_hashes(&self.records)?;
        let audit_path = merkle::inclusion_proof(&leaves, index)?;
        Ok(RecordProof {
            batch: self.header.clone(),
            index: index as u64,
            audit_path,
            record: self.records[index].clone(),
        })
    }

    /// Parses the JSON transport form.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CryptoError> {
        serde_json::from_slice(bytes).map_err(|e| CryptoError::Envelope(format!("not a signed batch json: {e}")))
    }

    /// The JSON transport form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl RecordProof {
    /// Verifies the batch signature, then that the record is leaf `index`
    /// of the signed root. Needs no other record and no private key.
    pub fn verify(&self, signer: &Sm2VerifyingKey) -> Result<(), CryptoError> {
        self.batch.verify(signer)?;
        self.record.check_shape()?;
        if self.record.header.key_id != self.batch.key_id {
            return Err(CryptoError::SignerMismatch {
                expected: self.batch.key_id.clone(),
                found: self.record.header.key_id.clone(),
            });
        }
        let leaf = merkle::leaf_hash(&self.record.record_digest()?.0);
        if !merkle::verify_inclusion(
            self.index,
            self.batch.tree_size,
            &leaf,
            &self.audit_path,
            &self.batch.root,
        ) {
            return Err(CryptoError::DigestMismatch(format!(
                "record {} is not leaf {} of batch {}",
                self.record.header.transaction_id, self.index, self.batch.batch_id
            )));
        }
        Ok(())
    }

    /// Verifies (as [`RecordProof::verify`]) and only then decrypts for `me`.
    pub fn open(
        &self,
        provider: &dyn CryptoProvider,
        signer: &Sm2VerifyingKey,
        me: RecipientKey<'_>,
    ) -> Result<OpenedEnvelope, CryptoError> {
        self.verify(signer)?;
        decrypt_verified(provider, &self.record, me, &mut OpenCtx::new(Some(self.batch.batch_id)))
    }

    /// Parses the JSON transport form.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CryptoError> {
        serde_json::from_slice(bytes).map_err(|e| CryptoError::Envelope(format!("not a record proof json: {e}")))
    }

    /// The JSON transport form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Opens every record of a verified batch for `me`; verification happens
/// once for the whole batch first.
pub fn open_batch(
    provider: &dyn CryptoProvider,
    batch: &SignedBatch,
    signer: &Sm2VerifyingKey,
    me: RecipientKey<'_>,
) -> Result<Vec<OpenedEnvelope>, CryptoError> {
    batch.verify_leaves_in(provider, signer)?;
    let mut ctx = OpenCtx::new(Some(batch.header.batch_id));
    batch
        .records
        .iter()
        .map(|r| decrypt_verified(provider, r, me, &mut ctx))
        .collect()
}

/// Like [`open_batch`], but one record that cannot be opened does not sink
/// the others: the batch is verified once (an error here refuses the whole
/// batch), then every record is decrypted on its own. Records sealed by an
/// [`crate::envelope::BatchSealer`] share one SM2 decryption of the batch
/// KEK per recipient (cached for the duration of the call).
pub fn open_batch_each(
    provider: &dyn CryptoProvider,
    batch: &SignedBatch,
    signer: &Sm2VerifyingKey,
    me: RecipientKey<'_>,
) -> Result<Vec<Result<OpenedEnvelope, CryptoError>>, CryptoError> {
    batch.verify_leaves_in(provider, signer)?;
    let mut ctx = OpenCtx::new(Some(batch.header.batch_id));
    Ok(batch
        .records
        .iter()
        .map(|r| decrypt_verified(provider, r, me, &mut ctx))
        .collect())
}

/// A verified batch, opened record by record, with every record's audit path.
#[derive(Debug)]
pub struct OpenedBatch {
    /// Each record's plaintext, or why it could not be opened; record order.
    pub records: Vec<Result<OpenedEnvelope, CryptoError>>,
    /// Each record's audit path to the signed batch root; record order.
    pub audit_paths: Vec<Vec<Sm3Digest>>,
    /// Each record's signed bytes (its canonical form without signature,
    /// what a format-2 ledger stores); record order.
    pub signed_bytes: Vec<Vec<u8>>,
    /// Each record's digest, `SM3(signed bytes)`; record order.
    pub record_digests: Vec<Sm3Digest>,
}

/// What hashing a batch's records gives.
struct HashedRecords {
    signed: Vec<Vec<u8>>,
    digests: Vec<Sm3Digest>,
    leaves: Vec<Sm3Digest>,
}

/// [`open_batch_each`] plus every record's audit path, hashing each record
/// once (what a gateway needs to store the records with their proofs).
pub fn open_batch_with_paths(
    provider: &dyn CryptoProvider,
    batch: &SignedBatch,
    signer: &Sm2VerifyingKey,
    me: RecipientKey<'_>,
) -> Result<OpenedBatch, CryptoError> {
    batch.header.verify_in(provider, signer)?;
    let hashed = batch.records_of_verified()?;
    let mut ctx = OpenCtx::new(Some(batch.header.batch_id));
    let records = batch
        .records
        .iter()
        .map(|r| decrypt_verified(provider, r, me, &mut ctx))
        .collect();
    Ok(OpenedBatch {
        records,
        audit_paths: merkle::all_inclusion_proofs(&hashed.leaves),
        signed_bytes: hashed.signed,
        record_digests: hashed.digests,
    })
}

/// The audit paths of every record of a batch, in record order, in
/// O(n log n) for the whole batch.
pub fn audit_paths(batch: &SignedBatch) -> Result<Vec<Vec<Sm3Digest>>, CryptoError> {
    Ok(merkle::all_inclusion_proofs(&leaf_hashes(&batch.records)?))
}
