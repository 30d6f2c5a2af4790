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
    Canon, CanonReader, OpenCtx, OpenedEnvelope, RecipientKey, SealedEnvelope, decrypt_verified, fixed, quote,
    record_batch_id, utf8,
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
        self.records_of_verified_with(None)
    }

    /// [`SignedBatch::records_of_verified`], with the records' signed bytes
    /// already at hand when `signed` is given (the binary form: the parse
    /// checked they are the records' canonical encoding).
    fn records_of_verified_with(&self, signed: Option<Vec<Vec<u8>>>) -> Result<HashedRecords, CryptoError> {
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
        let signed = match signed {
            Some(s) if s.len() == self.records.len() => s,
            _ => self
                .records
                .iter()
                .map(SealedEnvelope::signed_bytes)
                .collect::<Result<Vec<_>, _>>()?,
        };
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

    /// The binary transport form ([`BATCH_MEDIA_TYPE`], see
    /// `docs/envelope.md` "Binary batch"): the domain tag
    /// [`BATCH_BINARY_TAG`], the header's [`BatchHeader::signed_bytes`], its
    /// DER signature, then each record's [`SealedEnvelope::signed_bytes`]
    /// in leaf order, every one a `u32be(len) ‖ bytes` field. No base64 and
    /// no JSON: the gateway hashes each record's bytes as they arrived and
    /// a format-2 ledger stores them as they are.
    ///
    /// Refuses a record that carries its own signature (a batch record has
    /// none) or that [`SealedEnvelope::check_shape`] refuses, so the result
    /// always reads back with [`SignedBatch::from_binary`] to an equal batch.
    pub fn to_binary(&self) -> Result<Vec<u8>, CryptoError> {
        let head = self.header.signed_bytes()?;
        let records = self
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r.check_shape()?;
                if r.signature.is_some() {
                    return Err(CryptoError::Envelope(format!(
                        "record {i} is individually signed; the binary batch form carries unsigned records only"
                    )));
                }
                r.signed_bytes()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let len = 12
            + BATCH_BINARY_TAG.len()
            + head.len()
            + self.header.signature.len()
            + records.iter().map(|r| 4 + r.len()).sum::<usize>();
        let mut c = Canon(Vec::with_capacity(len));
        c.field(BATCH_BINARY_TAG.as_bytes())?
            .field(&head)?
            .field(&self.header.signature)?;
        for r in &records {
            c.field(r)?;
        }
        Ok(c.0)
    }

    /// Parses the binary transport form of [`SignedBatch::to_binary`],
    /// strictly: the tag, a header whose fields have the lengths the format
    /// allows, exactly `tree_size` records that each parse as
    /// [`SealedEnvelope::from_signed_bytes`], and nothing after them. The
    /// parse is canonical (`to_binary` of the result is `bytes` again).
    /// Checks no signature: open the batch for that. Every malformed input
    /// is a [`CryptoError::Envelope`] naming the fault (and the record).
    pub fn from_binary(bytes: &[u8]) -> Result<SignedBatch, CryptoError> {
        ReceivedBatch::from_binary(bytes).map(|r| r.batch)
    }
}

/// The media type of [`SignedBatch::to_binary`]'s form.
pub const BATCH_MEDIA_TYPE: &str = "application/vnd.vaxgate.batch";

/// Domain-separation tag that opens the binary form of a signed batch.
pub const BATCH_BINARY_TAG: &str = "vaxgate/signed-batch-binary";

/// Prefixes the message of a parse error ([`CryptoError::Envelope`]) with
/// where in the form it happened.
fn within(prefix: impl std::fmt::Display) -> impl Fn(CryptoError) -> CryptoError {
    move |e| match e {
        CryptoError::Envelope(m) => CryptoError::Envelope(format!("{prefix}{m}")),
        other => other,
    }
}

/// Prefixes a parse error of the binary batch form.
fn binary_batch_err(e: CryptoError) -> CryptoError {
    within("binary batch: ")(e)
}

/// The next field of `r`, which must be the domain tag `tag`.
fn expect_tag(r: &mut CanonReader<'_>, tag: &str) -> Result<(), CryptoError> {
    let got = r.field("domain tag")?;
    if got != tag.as_bytes() {
        return Err(CryptoError::Envelope(format!(
            "domain tag must be \"{tag}\", got {}",
            quote(got)
        )));
    }
    Ok(())
}

/// The batch header from its [`BatchHeader::signed_bytes`] and signature.
fn header_from_signed(bytes: &[u8], signature: &[u8]) -> Result<BatchHeader, CryptoError> {
    let at = within("header: ");
    let mut r = CanonReader(bytes);
    expect_tag(&mut r, BATCH_TAG).map_err(&at)?;
    let [version] = fixed::<1>(&mut r, "version").map_err(&at)?;
    if version != BATCH_VERSION {
        return Err(at(CryptoError::Envelope(format!(
            "unsupported batch version {version} (this build reads {BATCH_VERSION})"
        ))));
    }
    let batch_id = Uuid::from_bytes(fixed::<16>(&mut r, "batch id").map_err(&at)?);
    let key_id = utf8(&mut r, "key id").map_err(&at)?;
    let timestamp_ms = i64::from_be_bytes(fixed::<8>(&mut r, "timestamp").map_err(&at)?);
    let tree_size = u64::from_be_bytes(fixed::<8>(&mut r, "tree size").map_err(&at)?);
    let root = Sm3Digest(fixed::<32>(&mut r, "root").map_err(&at)?);
    if !r.0.is_empty() {
        return Err(at(CryptoError::Envelope(format!(
            "{} trailing bytes after the root",
            r.0.len()
        ))));
    }
    if signature.is_empty() {
        return Err(CryptoError::Envelope("empty batch signature".into()));
    }
    Ok(BatchHeader {
        version,
        batch_id,
        key_id,
        timestamp_ms,
        tree_size,
        root,
        signature: signature.to_vec(),
    })
}

/// A batch as a gateway received it. From the binary form it keeps each
/// record's signed bytes as they arrived, so opening it hashes them without
/// encoding the records again; from JSON they are encoded when opened.
#[derive(Debug, Clone)]
pub struct ReceivedBatch {
    /// The batch.
    pub batch: SignedBatch,
    /// Each record's signed bytes as received (binary form only).
    signed: Option<Vec<Vec<u8>>>,
}

impl ReceivedBatch {
    /// Parses the JSON transport form ([`SignedBatch::from_json`]).
    pub fn from_json(bytes: &[u8]) -> Result<Self, CryptoError> {
        Ok(ReceivedBatch {
            batch: SignedBatch::from_json(bytes)?,
            signed: None,
        })
    }

    /// Parses the binary transport form ([`SignedBatch::from_binary`]).
    pub fn from_binary(bytes: &[u8]) -> Result<Self, CryptoError> {
        let mut r = CanonReader(bytes);
        expect_tag(&mut r, BATCH_BINARY_TAG).map_err(binary_batch_err)?;
        let head = r.field("header").map_err(binary_batch_err)?;
        let sig = r.field("signature").map_err(binary_batch_err)?;
        let header = header_from_signed(head, sig).map_err(binary_batch_err)?;
        // Every record takes at least its 4-byte length: a forged tree size
        // cannot make us allocate more than the input could hold.
        let room = (r.0.len() / 4) as u64;
        if header.tree_size == 0 || header.tree_size > room {
            return Err(binary_batch_err(CryptoError::Envelope(format!(
                "tree size {} is not between 1 and what the remaining {} bytes can hold",
                header.tree_size,
                r.0.len()
            ))));
        }
        let n = header.tree_size as usize;
        let mut records = Vec::with_capacity(n);
        let mut signed = Vec::with_capacity(n);
        for i in 0..n {
            // The prefix is formatted only for an error: this runs per record.
            let at = |e: CryptoError| within(format_args!("binary batch: record {i}: "))(e);
            let b = r.field("record").map_err(at)?;
            records.push(SealedEnvelope::from_signed_bytes(b).map_err(at)?);
            signed.push(b.to_vec());
        }
        if !r.0.is_empty() {
            return Err(binary_batch_err(CryptoError::Envelope(format!(
                "{} trailing bytes after record {}",
                r.0.len(),
                n - 1
            ))));
        }
        Ok(ReceivedBatch {
            batch: SignedBatch { header, records },
            signed: Some(signed),
        })
    }

    /// [`open_batch_with_paths`] of the received batch; records that came
    /// in binary form are hashed as they arrived, not encoded again.
    pub fn open_with_paths(
        self,
        provider: &dyn CryptoProvider,
        signer: &Sm2VerifyingKey,
        me: RecipientKey<'_>,
    ) -> Result<(SignedBatch, OpenedBatch), CryptoError> {
        let opened = open_with_signed(provider, &self.batch, self.signed, signer, me)?;
        Ok((self.batch, opened))
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
    open_with_signed(provider, batch, None, signer, me)
}

/// [`open_batch_with_paths`], with the records' signed bytes when known.
fn open_with_signed(
    provider: &dyn CryptoProvider,
    batch: &SignedBatch,
    signed: Option<Vec<Vec<u8>>>,
    signer: &Sm2VerifyingKey,
    me: RecipientKey<'_>,
) -> Result<OpenedBatch, CryptoError> {
    batch.header.verify_in(provider, signer)?;
    let hashed = batch.records_of_verified_with(signed)?;
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
