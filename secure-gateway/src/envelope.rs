//! The sealed envelope: the unit that travels between partners.
//!
//! A plaintext record (JSON or XML) is encrypted with SM4-GCM under a fresh
//! random 128-bit data key; the data key is wrapped for each named recipient
//! (SM2 encryption to its public key, or SM4-GCM under a named
//! key-encryption key held by the provider); the header, the SM3 of the
//! plaintext, the ciphertext and all wrapped keys are bound by one SM2
//! signature over a canonical byte encoding. `docs/envelope.md` specifies
//! the encoding byte for byte.
//!
//! [`open`] checks, in this order: version, signer key id, **signature**,
//! then unwraps the data key, decrypts and finally compares the SM3 of the
//! plaintext. Nothing is decrypted before the signature verified.
//! [`SealedEnvelope::verify`] checks the signature without any private key.
//!
//! An envelope has two encodings: the JSON transport form
//! ([`SealedEnvelope::to_json`], what partners send) and the binary form
//! ([`SealedEnvelope::to_binary`], what the ledger stores): the signed bytes
//! followed by the signature as one more field.
//!
//! New envelopes are written in version 2 ([`ENVELOPE_VERSION`]): the
//! plaintext is compressed with raw DEFLATE (RFC 1951) before SM4-GCM, and
//! its length before compression is signed ([`SealedEnvelope::plaintext_len`]).
//! Version 1 envelopes (the plaintext itself under SM4-GCM) stay readable
//! ([`SUPPORTED_VERSIONS`]); the ledger holds signed history in version 1.
//!
//! In batch mode ([`crate::batch`]) records carry no signature of their own:
//! one signature covers the Merkle root of many records. A [`BatchSealer`]
//! also shares the SM2 work of a batch: it SM2-encrypts one random batch
//! key-encryption key (KEK) per recipient and wraps each record's data key
//! with it ([`WrapKind::Sm2BatchKek`]), so opening a batch of n records costs
//! one SM2 decryption instead of n. Each record still carries everything it
//! needs to be opened alone with its batch proof.

use std::collections::HashMap;
use std::fmt;

use uuid::Uuid;
use zeroize::Zeroizing;

use crate::provider::{CryptoProvider, KeyHandle};
use crate::sym::{GCM_NONCE_LEN, SM4_KEY_LEN};
use crate::{CryptoError, Sm2Signature, Sm2VerifyingKey, Sm3Digest, Sm4Key};

/// The envelope format version new envelopes are written in
/// ([`EnvelopeVersion::CURRENT`]). Every version of [`SUPPORTED_VERSIONS`]
/// is read.
pub const ENVELOPE_VERSION: u8 = EnvelopeVersion::CURRENT.as_u8();

/// The envelope format versions this code reads: 1 (the plaintext under
/// SM4-GCM) and 2 (its raw DEFLATE under SM4-GCM). Version 1 stays readable
/// for good: the ledger holds signed history in it.
pub const SUPPORTED_VERSIONS: [u8; 2] = [EnvelopeVersion::V1.as_u8(), EnvelopeVersion::V2.as_u8()];

/// The largest `plaintext_len` a version-2 envelope may declare: 64 MiB.
/// An opener allocates the declared length before inflating, so this bounds
/// what one envelope can make it allocate; a record is a few KiB.
pub const MAX_PLAINTEXT_LEN: u32 = 64 * 1024 * 1024;

/// Most bytes one byte of a raw DEFLATE stream can inflate to: a 258-byte
/// match costs at least two bits (one-bit length and distance codes), so
/// no stream inflates to more than 1032 times its length (zlib's
/// documented maximum). An opener refuses a `plaintext_len` above it before
/// allocating anything.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// The DEFLATE level of version-2 seals (miniz_oxide, 1 = fastest, 9 =
/// smallest). Measured on the golden vaccination message; see
/// `docs/envelope.md` "Compression and length (version 2)".
const DEFLATE_LEVEL: u32 = 6;

/// An envelope format version this code reads (see `docs/envelope.md`
/// "Versioning").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnvelopeVersion {
    /// Version 1: SM4-GCM of the plaintext itself.
    V1,
    /// Version 2: SM4-GCM of the plaintext's raw DEFLATE (RFC 1951); the
    /// signed bytes and the associated data also carry the plaintext's
    /// length before compression.
    V2,
}

impl EnvelopeVersion {
    /// The version new envelopes are written in.
    pub const CURRENT: EnvelopeVersion = EnvelopeVersion::V2;

    /// The version byte of the encodings.
    pub const fn as_u8(self) -> u8 {
        match self {
            EnvelopeVersion::V1 => 1,
            EnvelopeVersion::V2 => 2,
        }
    }

    /// The version of a version byte; any other than those of
    /// [`SUPPORTED_VERSIONS`] is a [`CryptoError::Envelope`] naming them.
    pub fn from_u8(v: u8) -> Result<Self, CryptoError> {
        match v {
            1 => Ok(EnvelopeVersion::V1),
            2 => Ok(EnvelopeVersion::V2),
            _ => Err(CryptoError::Envelope(format!(
                "unsupported version {v} (this build reads 1 and 2)"
            ))),
        }
    }
}

/// Domain-separation tag of the signed bytes of an envelope.
pub const ENVELOPE_TAG: &str = "vaxgate/sealed-envelope";
/// Domain-separation tag of the SM4-GCM associated data of the payload.
pub const PAYLOAD_AAD_TAG: &str = "vaxgate/envelope-payload";
/// Domain-separation tag of the SM4-GCM associated data of a KEK-wrapped
/// data key.
pub const KEK_WRAP_TAG: &str = "vaxgate/kek-wrap";
/// Domain-separation tag of the SM4-GCM associated data of a data key
/// wrapped with a batch KEK ([`WrapKind::Sm2BatchKek`]).
pub const BATCH_KEK_WRAP_TAG: &str = "vaxgate/batch-kek-wrap";
/// Largest accepted SM2 ciphertext of a batch KEK (DER of a 16-byte
/// message is about 110 bytes).
const MAX_WRAPPED_KEK: usize = 256;

/// Upper bound for any single field of the canonical encoding.
const MAX_FIELD: usize = u32::MAX as usize;

/// Payload content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentType {
    /// `application/json`
    Json,
    /// `application/xml`
    Xml,
}

impl ContentType {
    /// The canonical string: `json` or `xml`.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::Json => "json",
            ContentType::Xml => "xml",
        }
    }

    /// The content type of its canonical string (`json` or `xml`, exactly).
    pub fn parse(s: &[u8]) -> Option<Self> {
        match s {
            b"json" => Some(ContentType::Json),
            b"xml" => Some(ContentType::Xml),
            _ => None,
        }
    }
}

/// The envelope header (signed; also the associated data of the payload).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeHeader {
    /// Transaction id (UUID), unique per envelope.
    pub transaction_id: Uuid,
    /// The sending entity (hospital, CDC, cold-chain operator) id.
    pub entity_id: String,
    /// Key id of the signer ([`Sm2VerifyingKey::key_id`]); in batch mode
    /// the batch signer's.
    pub key_id: String,
    /// Creation time, milliseconds since the Unix epoch (UTC).
    pub timestamp_ms: i64,
    /// `json` or `xml`.
    pub content_type: ContentType,
    /// Dataset category (e.g. `vaccination-record`, `cold-chain-reading`).
    pub dataset_category: String,
}

/// What the caller supplies for a new envelope (the key id is the signer's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeMeta {
    /// Transaction id.
    pub transaction_id: Uuid,
    /// Sending entity id.
    pub entity_id: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// `json` or `xml`.
    pub content_type: ContentType,
    /// Dataset category.
    pub dataset_category: String,
}

impl EnvelopeMeta {
    /// A fresh transaction id (UUID v4) and the current time.
    pub fn now(entity_id: impl Into<String>, content_type: ContentType, dataset_category: impl Into<String>) -> Self {
        EnvelopeMeta {
            transaction_id: Uuid::now_v7(),
            entity_id: entity_id.into(),
            timestamp_ms: chrono::Utc::now().timestamp_millis(),
            content_type,
            dataset_category: dataset_category.into(),
        }
    }
}

/// How a data key is wrapped for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum WrapKind {
    /// SM2 encryption to the recipient's public key (GM/T 0009 DER).
    #[serde(rename = "sm2")]
    Sm2,
    /// SM4-GCM under a named key-encryption key: `nonce(12) ‖ ct(16) ‖ tag(16)`.
    #[serde(rename = "sm4-kek")]
    Sm4Kek,
    /// Batch mode ([`BatchSealer`]): SM4-GCM under a per-batch KEK that is
    /// SM2-encrypted to the recipient, the same for every record of the
    /// batch: `field(batch id) ‖ field(SM2(KEK)) ‖ field(nonce ‖ ct ‖ tag)`.
    /// Opens only together with its batch header (a batch or a record proof).
    #[serde(rename = "sm2-batch-kek")]
    Sm2BatchKek,
}

impl WrapKind {
    /// The canonical string: `sm2`, `sm4-kek` or `sm2-batch-kek`.
    pub fn as_str(self) -> &'static str {
        match self {
            WrapKind::Sm2 => "sm2",
            WrapKind::Sm4Kek => "sm4-kek",
            WrapKind::Sm2BatchKek => "sm2-batch-kek",
        }
    }

    /// The kind of its canonical string ([`WrapKind::as_str`], exactly).
    pub fn parse(s: &[u8]) -> Option<Self> {
        match s {
            b"sm2" => Some(WrapKind::Sm2),
            b"sm4-kek" => Some(WrapKind::Sm4Kek),
            b"sm2-batch-kek" => Some(WrapKind::Sm2BatchKek),
            _ => None,
        }
    }
}

/// The data key wrapped for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedKey {
    /// Wrapping method.
    pub kind: WrapKind,
    /// SM2 and SM2 batch KEK: the recipient's key id; SM4 KEK: the KEK's name.
    pub recipient: String,
    /// The wrapped data key.
    #[serde(with = "b64")]
    pub wrapped: Vec<u8>,
}

/// A recipient to seal for.
#[derive(Debug, Clone)]
pub enum Recipient {
    /// SM2-encrypt the data key to this public key.
    Sm2(Sm2VerifyingKey),
    /// Wrap the data key with the provider-held SM4 KEK of this name.
    Kek(KeyHandle),
}

/// Which of my keys to open with.
#[derive(Debug, Clone, Copy)]
pub enum RecipientKey<'a> {
    /// My SM2 key pair in the provider.
    Sm2(&'a KeyHandle),
    /// A provider-held SM4 KEK (its handle name is the recipient name).
    Kek(&'a KeyHandle),
}

/// A sealed envelope. Serialises as JSON with base64 for byte strings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedEnvelope {
    /// Format version, one of [`SUPPORTED_VERSIONS`] (new envelopes:
    /// [`ENVELOPE_VERSION`]).
    pub version: u8,
    /// The header.
    pub header: EnvelopeHeader,
    /// SM3 of the plaintext (hex); in version 2 of the plaintext before
    /// compression, as in version 1.
    pub plaintext_sm3: Sm3Digest,
    /// Version 2 only (and always there): the plaintext's length before
    /// compression, at most [`MAX_PLAINTEXT_LEN`]; signed. An opener
    /// inflates to exactly this many bytes. Absent from the JSON of a
    /// version-1 envelope.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present_u32")]
    pub plaintext_len: Option<u32>,
    /// SM4-GCM nonce, 12 bytes.
    #[serde(with = "b64")]
    pub nonce: Vec<u8>,
    /// SM4-GCM `ciphertext ‖ tag`.
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
    /// The data key, wrapped per recipient, in signed order.
    pub recipients: Vec<WrappedKey>,
    /// DER SM2 signature over [`SealedEnvelope::signed_bytes`]; absent for
    /// records of a signed batch.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "b64_opt")]
    pub signature: Option<Vec<u8>>,
}

/// A decrypted envelope. `Debug` shows the header and the payload length only.
pub struct OpenedEnvelope {
    /// The verified header.
    pub header: EnvelopeHeader,
    /// The plaintext (zeroised on drop).
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The record seed of the plaintext's field commitments
    /// (`mappings::commitment`): HMAC-SM3 keyed with the data key over
    /// `"vaxgate/field-seed-v1" ‖ transaction id (16 bytes)`, so that every
    /// recipient, and only a recipient, derives it again from the ledger.
    pub field_seed: Zeroizing<[u8; 32]>,
}

/// The record seed of an envelope's field commitments from its data key.
pub(crate) fn field_seed(data_key: &[u8], tx: &Uuid) -> Zeroizing<[u8; 32]> {
    use hmac::Mac as _;
    let mut mac = <hmac::Hmac<sm3::Sm3> as hmac::KeyInit>::new_from_slice(data_key).expect("HMAC takes any key length");
    mac.update(b"vaxgate/field-seed-v1");
    mac.update(tx.as_bytes());
    Zeroizing::new(mac.finalize().into_bytes().into())
}

impl fmt::Debug for OpenedEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedEnvelope")
            .field("header", &self.header)
            .field("plaintext_len", &self.plaintext.len())
            .finish()
    }
}

/// Canonical-encoding writer: every field is `u32be(len) ‖ bytes`.
#[derive(Default)]
pub(crate) struct Canon(pub(crate) Vec<u8>);

impl Canon {
    pub(crate) fn field(&mut self, b: &[u8]) -> Result<&mut Self, CryptoError> {
        if b.len() > MAX_FIELD {
            return Err(CryptoError::Envelope(format!(
                "field of {} bytes exceeds 4 GiB",
                b.len()
            )));
        }
        self.0.extend_from_slice(&(b.len() as u32).to_be_bytes());
        self.0.extend_from_slice(b);
        Ok(self)
    }
}

/// Reads `u32be(len) ‖ bytes` fields back; every malformed input is an error.
pub(crate) struct CanonReader<'a>(pub(crate) &'a [u8]);

impl<'a> CanonReader<'a> {
    pub(crate) fn field(&mut self, what: &str) -> Result<&'a [u8], CryptoError> {
        let short = || CryptoError::Envelope(format!("truncated {what}"));
        let (len, rest) = self.0.split_first_chunk::<4>().ok_or_else(short)?;
        let n = u32::from_be_bytes(*len) as usize;
        if rest.len() < n {
            return Err(short());
        }
        let (v, rest) = rest.split_at(n);
        self.0 = rest;
        Ok(v)
    }
}

fn header_fields(c: &mut Canon, h: &EnvelopeHeader) -> Result<(), CryptoError> {
    c.field(h.transaction_id.as_bytes())?
        .field(h.entity_id.as_bytes())?
        .field(h.key_id.as_bytes())?
        .field(&h.timestamp_ms.to_be_bytes())?
        .field(h.content_type.as_str().as_bytes())?
        .field(h.dataset_category.as_bytes())?;
    Ok(())
}

/// The SM4-GCM associated data of the payload; `plaintext_len` is there
/// in version 2 only.
fn payload_aad(
    version: u8,
    h: &EnvelopeHeader,
    plaintext_sm3: &Sm3Digest,
    plaintext_len: Option<u32>,
) -> Result<Vec<u8>, CryptoError> {
    let mut c = Canon::default();
    c.field(PAYLOAD_AAD_TAG.as_bytes())?.field(&[version])?;
    header_fields(&mut c, h)?;
    c.field(&plaintext_sm3.0)?;
    if let Some(n) = plaintext_len {
        c.field(&n.to_be_bytes())?;
    }
    Ok(c.0)
}

/// The SM4-GCM associated data of a KEK-wrapped data key.
fn kek_aad(transaction_id: &Uuid, kek_name: &str) -> Result<Vec<u8>, CryptoError> {
    let mut c = Canon::default();
    c.field(KEK_WRAP_TAG.as_bytes())?
        .field(transaction_id.as_bytes())?
        .field(kek_name.as_bytes())?;
    Ok(c.0)
}

/// The SM4-GCM associated data of a data key wrapped with a batch KEK.
fn batch_kek_aad(batch_id: &Uuid, transaction_id: &Uuid, recipient: &str) -> Result<Vec<u8>, CryptoError> {
    let mut c = Canon::default();
    c.field(BATCH_KEK_WRAP_TAG.as_bytes())?
        .field(batch_id.as_bytes())?
        .field(transaction_id.as_bytes())?
        .field(recipient.as_bytes())?;
    Ok(c.0)
}

/// The parsed `wrapped` bytes of a [`WrapKind::Sm2BatchKek`] entry.
struct BatchWrap<'a> {
    batch_id: Uuid,
    /// SM2 ciphertext (GM/T 0009 DER) of the 16-byte batch KEK.
    wrapped_kek: &'a [u8],
    nonce: [u8; GCM_NONCE_LEN],
    /// SM4-GCM of the data key under the KEK: ct(16) ‖ tag(16).
    wrapped_dk: &'a [u8],
}

impl<'a> BatchWrap<'a> {
    fn encode(batch_id: &Uuid, wrapped_kek: &[u8], nonce: &[u8; GCM_NONCE_LEN], wrapped_dk: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(12 + 16 + wrapped_kek.len() + GCM_NONCE_LEN + wrapped_dk.len());
        for f in [batch_id.as_bytes(), wrapped_kek] {
            v.extend_from_slice(&(f.len() as u32).to_be_bytes());
            v.extend_from_slice(f);
        }
        v.extend_from_slice(&((GCM_NONCE_LEN + wrapped_dk.len()) as u32).to_be_bytes());
        v.extend_from_slice(nonce);
        v.extend_from_slice(wrapped_dk);
        v
    }

    fn parse(b: &'a [u8]) -> Result<Self, CryptoError> {
        let mut r = CanonReader(b);
        let what = "sm2-batch-kek entry";
        let id = r.field(what)?;
        let wrapped_kek = r.field(what)?;
        let last = r.field(what)?;
        if !r.0.is_empty() {
            return Err(CryptoError::Envelope(format!("{what}: trailing bytes")));
        }
        let batch_id =
            Uuid::from_slice(id).map_err(|_| CryptoError::Envelope(format!("{what}: batch id must be 16 bytes")))?;
        if wrapped_kek.is_empty() || wrapped_kek.len() > MAX_WRAPPED_KEK {
            return Err(CryptoError::Envelope(format!(
                "{what}: wrapped kek of {} bytes",
                wrapped_kek.len()
            )));
        }
        if last.len() != GCM_NONCE_LEN + SM4_KEY_LEN + crate::sym::GCM_TAG_LEN {
            return Err(CryptoError::Envelope(format!(
                "{what}: wrapped data key must be 44 bytes, got {}",
                last.len()
            )));
        }
        let (n, wrapped_dk) = last.split_at(GCM_NONCE_LEN);
        let mut nonce = [0u8; GCM_NONCE_LEN];
        nonce.copy_from_slice(n);
        Ok(BatchWrap {
            batch_id,
            wrapped_kek,
            nonce,
            wrapped_dk,
        })
    }
}

/// The batch id named by the record's [`WrapKind::Sm2BatchKek`] entries
/// (None when it has none). Entries naming different batches are an error.
pub(crate) fn record_batch_id(env: &SealedEnvelope) -> Result<Option<Uuid>, CryptoError> {
    let mut found = None;
    for w in env.recipients.iter().filter(|w| w.kind == WrapKind::Sm2BatchKek) {
        let id = BatchWrap::parse(&w.wrapped)?.batch_id;
        if found.is_some_and(|f| f != id) {
            return Err(CryptoError::Envelope(format!(
                "envelope {}: sm2-batch-kek entries name different batches",
                env.header.transaction_id
            )));
        }
        found = Some(id);
    }
    Ok(found)
}

impl SealedEnvelope {
    /// The canonical bytes the SM2 signature covers (see `docs/envelope.md`).
    pub fn signed_bytes(&self) -> Result<Vec<u8>, CryptoError> {
        let mut c = Canon(Vec::with_capacity(self.signed_len()));
        self.write_signed(&mut c)?;
        Ok(c.0)
    }

    /// The length of [`SealedEnvelope::signed_bytes`], without encoding.
    fn signed_len(&self) -> usize {
        let h = &self.header;
        let fields = [
            ENVELOPE_TAG.len(),
            1,
            16,
            h.entity_id.len(),
            h.key_id.len(),
            8,
            h.content_type.as_str().len(),
            h.dataset_category.len(),
            self.plaintext_sm3.0.len(),
            if self.plaintext_len.is_some() { 4 } else { 0 },
            self.nonce.len(),
            self.ciphertext.len(),
            4,
        ];
        let recipients = self
            .recipients
            .iter()
            .map(|r| 12 + r.kind.as_str().len() + r.recipient.len() + r.wrapped.len());
        let absent = if self.plaintext_len.is_some() { 0 } else { 4 };
        fields.iter().map(|n| 4 + n).sum::<usize>() - absent + recipients.sum::<usize>()
    }

    fn write_signed(&self, c: &mut Canon) -> Result<(), CryptoError> {
        c.field(ENVELOPE_TAG.as_bytes())?.field(&[self.version])?;
        header_fields(c, &self.header)?;
        c.field(&self.plaintext_sm3.0)?;
        // Version 2: the length before compression, right after its SM3.
        if let Some(n) = self.plaintext_len {
            c.field(&n.to_be_bytes())?;
        }
        c.field(&self.nonce)?.field(&self.ciphertext)?;
        let n =
            u32::try_from(self.recipients.len()).map_err(|_| CryptoError::Envelope("too many recipients".into()))?;
        c.field(&n.to_be_bytes())?;
        for r in &self.recipients {
            c.field(r.kind.as_str().as_bytes())?
                .field(r.recipient.as_bytes())?
                .field(&r.wrapped)?;
        }
        Ok(())
    }

    /// The binary form the ledger stores (format 2, see `docs/envelope.md`
    /// "Binary form"): [`SealedEnvelope::signed_bytes`] followed by one more
    /// field, the DER signature, empty for a record of a signed batch. Its
    /// signed part is everything before that last field, so
    /// [`SealedEnvelope::record_digest`] is computable from the stored bytes
    /// ([`SealedEnvelope::binary_signed_part`]).
    ///
    /// Refuses what [`SealedEnvelope::check_shape`] refuses, so the result
    /// always reads back with [`SealedEnvelope::from_binary`] to an equal
    /// envelope.
    pub fn to_binary(&self) -> Result<Vec<u8>, CryptoError> {
        self.check_shape()?;
        let sig = self.signature.as_deref().unwrap_or_default();
        let len = self.signed_len() + 4 + sig.len();
        let mut c = Canon(Vec::with_capacity(len));
        self.write_signed(&mut c)?;
        c.field(sig)?;
        debug_assert_eq!(c.0.len(), len, "signed_len is out of step with write_signed");
        Ok(c.0)
    }

    /// Parses the binary form of [`SealedEnvelope::to_binary`], strictly:
    /// every field has the length and value the format allows, the
    /// signature field is the last (empty: no signature), nothing follows
    /// it, and [`SealedEnvelope::check_shape`] passes. The parse is
    /// canonical: `to_binary` of the result is `bytes` again. Every
    /// malformed input is a [`CryptoError::Envelope`] naming the fault.
    pub fn from_binary(bytes: &[u8]) -> Result<SealedEnvelope, CryptoError> {
        parse_binary(bytes).map(|(env, _)| env)
    }

    /// The signed part of a binary envelope (everything before the final
    /// signature field), after checking that `bytes` parse as
    /// [`SealedEnvelope::from_binary`] does: `sm3` of it is the envelope's
    /// [`SealedEnvelope::record_digest`].
    pub fn binary_signed_part(bytes: &[u8]) -> Result<&[u8], CryptoError> {
        let (_, signed_len) = parse_binary(bytes)?;
        Ok(&bytes[..signed_len])
    }

    /// Parses [`SealedEnvelope::signed_bytes`] alone (an envelope without
    /// signature, as records of a signed batch are), as strictly as
    /// [`SealedEnvelope::from_binary`]: what a format-2 ledger stores as a
    /// record's payload, whose SM3 is its record digest.
    pub fn from_signed_bytes(bytes: &[u8]) -> Result<SealedEnvelope, CryptoError> {
        parse_binary_fields(bytes, false)
            .map(|(env, _)| env)
            .map_err(|e| match e {
                CryptoError::Envelope(m) => CryptoError::Envelope(format!("signed envelope bytes: {m}")),
                other => other,
            })
    }

    /// `SM3(signed_bytes)`: the record digest, the data of the Merkle leaf
    /// in batch mode.
    pub fn record_digest(&self) -> Result<Sm3Digest, CryptoError> {
        Ok(crate::sm3(&self.signed_bytes()?))
    }

    /// Parses the JSON transport form. Any malformed input is an error.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CryptoError> {
        let env: SealedEnvelope =
            serde_json::from_slice(bytes).map_err(|e| CryptoError::Envelope(format!("not an envelope json: {e}")))?;
        env.check_shape()?;
        Ok(env)
    }

    /// The JSON transport form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The envelope's format version ([`SealedEnvelope::version`]), if
    /// this build reads it.
    pub fn format_version(&self) -> Result<EnvelopeVersion, CryptoError> {
        EnvelopeVersion::from_u8(self.version)
    }

    /// Structural checks that need no key: a version of
    /// [`SUPPORTED_VERSIONS`], `plaintext_len` present exactly in version 2
    /// and at most [`MAX_PLAINTEXT_LEN`], the nonce's and tag's lengths, no
    /// empty signature.
    pub fn check_shape(&self) -> Result<(), CryptoError> {
        match (self.format_version()?, self.plaintext_len) {
            (EnvelopeVersion::V1, Some(_)) => {
                return Err(CryptoError::Envelope(
                    "a version-1 envelope has no plaintext_len (a version-2 field)".into(),
                ));
            }
            (EnvelopeVersion::V2, None) => {
                return Err(CryptoError::Envelope(
                    "a version-2 envelope needs a plaintext_len".into(),
                ));
            }
            (EnvelopeVersion::V2, Some(n)) if n > MAX_PLAINTEXT_LEN => {
                return Err(CryptoError::Envelope(format!(
                    "plaintext_len {n} exceeds the maximum {MAX_PLAINTEXT_LEN} (64 MiB)"
                )));
            }
            _ => {}
        }
        if self.nonce.len() != GCM_NONCE_LEN {
            return Err(CryptoError::Envelope(format!(
                "nonce must be 12 bytes, got {}",
                self.nonce.len()
            )));
        }
        if self.ciphertext.len() < crate::sym::GCM_TAG_LEN {
            return Err(CryptoError::Envelope("ciphertext shorter than the gcm tag".into()));
        }
        if self.signature.as_ref().is_some_and(|s| s.is_empty()) {
            return Err(CryptoError::Envelope(
                "empty signature (a batch record has none: omit the field)".into(),
            ));
        }
        Ok(())
    }

    fn check_signer(&self, expected: &Sm2VerifyingKey) -> Result<(), CryptoError> {
        if self.header.key_id != expected.key_id() {
            return Err(CryptoError::SignerMismatch {
                expected: expected.key_id().to_string(),
                found: self.header.key_id.clone(),
            });
        }
        Ok(())
    }

    /// Verifies the envelope's own signature under the expected signer key,
    /// without decrypting anything. Fails for batch records (no signature):
    /// verify those with [`crate::batch::RecordProof::verify`].
    pub fn verify(&self, signer: &Sm2VerifyingKey) -> Result<(), CryptoError> {
        self.check_signature(signer, |m, sig| signer.verify(m, sig))
    }

    /// [`SealedEnvelope::verify`] with the signature checked by `provider`.
    pub fn verify_in(&self, provider: &dyn CryptoProvider, signer: &Sm2VerifyingKey) -> Result<(), CryptoError> {
        self.check_signature(signer, |m, sig| provider.verify(signer, m, sig))
    }

    fn check_signature(
        &self,
        signer: &Sm2VerifyingKey,
        verify: impl FnOnce(&[u8], &Sm2Signature) -> Result<(), CryptoError>,
    ) -> Result<(), CryptoError> {
        self.check_shape()?;
        self.check_signer(signer)?;
        let der = self.signature.as_ref().ok_or_else(|| {
            CryptoError::Envelope("unsigned envelope (a batch record): verify it with its batch proof".into())
        })?;
        let sig = Sm2Signature::from_der(der)?;
        verify(&self.signed_bytes()?, &sig).map_err(|_| CryptoError::BadSignature {
            context: format!("envelope {}", self.header.transaction_id),
        })
    }
}

/// Smallest encoding of one recipient: three empty fields.
const MIN_RECIPIENT_LEN: usize = 12;

/// At most this many bytes of a bad value are quoted in an error.
const QUOTE_MAX: usize = 32;

/// A bad value for an error message: printable ASCII as is, the rest
/// escaped, cut after [`QUOTE_MAX`] bytes.
pub(crate) fn quote(b: &[u8]) -> String {
    let cut = b.len() > QUOTE_MAX;
    let mut s = format!("\"{}\"", b[..b.len().min(QUOTE_MAX)].escape_ascii());
    if cut {
        s.push_str(&format!(" ({} bytes)", b.len()));
    }
    s
}

/// A field of exactly `N` bytes.
pub(crate) fn fixed<const N: usize>(r: &mut CanonReader<'_>, what: &str) -> Result<[u8; N], CryptoError> {
    let v = r.field(what)?;
    <[u8; N]>::try_from(v).map_err(|_| {
        let unit = if N == 1 { "byte" } else { "bytes" };
        CryptoError::Envelope(format!("{what} must be {N} {unit}, got {}", v.len()))
    })
}

/// A UTF-8 field.
pub(crate) fn utf8(r: &mut CanonReader<'_>, what: &str) -> Result<String, CryptoError> {
    let v = r.field(what)?;
    String::from_utf8(v.to_vec()).map_err(|_| CryptoError::Envelope(format!("{what} {} is not UTF-8", quote(v))))
}

/// [`SealedEnvelope::from_binary`], also returning the length of the
/// signed part. Errors are prefixed with "binary envelope: ".
fn parse_binary(bytes: &[u8]) -> Result<(SealedEnvelope, usize), CryptoError> {
    parse_binary_fields(bytes, true).map_err(|e| match e {
        CryptoError::Envelope(m) => CryptoError::Envelope(format!("binary envelope: {m}")),
        other => other,
    })
}

/// Parses the binary form (`with_signature`) or its signed part alone.
fn parse_binary_fields(bytes: &[u8], with_signature: bool) -> Result<(SealedEnvelope, usize), CryptoError> {
    let mut r = CanonReader(bytes);
    let tag = r.field("domain tag")?;
    if tag != ENVELOPE_TAG.as_bytes() {
        return Err(CryptoError::Envelope(format!(
            "domain tag must be \"{ENVELOPE_TAG}\", got {}",
            quote(tag)
        )));
    }
    let [version] = fixed::<1>(&mut r, "version")?;
    // The version decides the layout: refuse an unknown one here.
    let format = EnvelopeVersion::from_u8(version)?;
    let transaction_id = Uuid::from_bytes(fixed::<16>(&mut r, "transaction id")?);
    let entity_id = utf8(&mut r, "entity id")?;
    let key_id = utf8(&mut r, "key id")?;
    let timestamp_ms = i64::from_be_bytes(fixed::<8>(&mut r, "timestamp")?);
    let ct = r.field("content type")?;
    let content_type = ContentType::parse(ct)
        .ok_or_else(|| CryptoError::Envelope(format!("content type must be json or xml, got {}", quote(ct))))?;
    let dataset_category = utf8(&mut r, "dataset category")?;
    let plaintext_sm3 = Sm3Digest(fixed::<32>(&mut r, "plaintext sm3")?);
    let plaintext_len = match format {
        EnvelopeVersion::V1 => None,
        EnvelopeVersion::V2 => Some(u32::from_be_bytes(fixed::<4>(&mut r, "plaintext length")?)),
    };
    let nonce = r.field("nonce")?.to_vec();
    let ciphertext = r.field("ciphertext")?.to_vec();
    let n = u32::from_be_bytes(fixed::<4>(&mut r, "recipient count")?) as usize;
    // Each recipient takes at least three empty fields, and the signature
    // field follows: a forged count cannot make us allocate more than the
    // input could hold.
    let room = r.0.len().saturating_sub(4) / MIN_RECIPIENT_LEN;
    if n > room {
        return Err(CryptoError::Envelope(format!(
            "recipient count {n} exceeds what the remaining {} bytes can hold",
            r.0.len()
        )));
    }
    let mut recipients = Vec::with_capacity(n);
    for i in 0..n {
        let at = |e: CryptoError| match e {
            CryptoError::Envelope(m) => CryptoError::Envelope(format!("recipient {i}: {m}")),
            other => other,
        };
        let k = r.field("kind").map_err(at)?;
        let kind = WrapKind::parse(k).ok_or_else(|| at(CryptoError::Envelope(format!("unknown kind {}", quote(k)))))?;
        let recipient = utf8(&mut r, "name").map_err(at)?;
        let wrapped = r.field("wrapped key").map_err(at)?.to_vec();
        recipients.push(WrappedKey {
            kind,
            recipient,
            wrapped,
        });
    }
    let signed_len = bytes.len() - r.0.len();
    let sig = if with_signature { r.field("signature")? } else { &[] };
    if !r.0.is_empty() {
        return Err(CryptoError::Envelope(format!(
            "{} trailing bytes after the {}",
            r.0.len(),
            if with_signature { "signature" } else { "signed fields" }
        )));
    }
    let env = SealedEnvelope {
        version,
        header: EnvelopeHeader {
            transaction_id,
            entity_id,
            key_id,
            timestamp_ms,
            content_type,
            dataset_category,
        },
        plaintext_sm3,
        plaintext_len,
        nonce,
        ciphertext,
        recipients,
        signature: (!sig.is_empty()).then(|| sig.to_vec()),
    };
    env.check_shape()?;
    Ok((env, signed_len))
}

/// Seals `plaintext` without signing (for batch records, and the first step
/// of [`seal`]). `key_id` is the signer's key id. For many records of one
/// batch, [`BatchSealer`] is much cheaper to open.
pub fn seal_unsigned(
    provider: &dyn CryptoProvider,
    key_id: &str,
    meta: EnvelopeMeta,
    plaintext: &[u8],
    recipients: &[Recipient],
) -> Result<SealedEnvelope, CryptoError> {
    seal_with(
        provider,
        key_id,
        meta,
        plaintext,
        recipients,
        None,
        EnvelopeVersion::CURRENT,
    )
}

/// [`seal_unsigned`] in a chosen format version. Only to reproduce
/// envelopes of an older version (the pinned version-1 examples of
/// `docs/envelope.md`, interoperability tests): new envelopes are written
/// in [`ENVELOPE_VERSION`].
#[doc(hidden)]
pub fn seal_unsigned_with_version(
    provider: &dyn CryptoProvider,
    key_id: &str,
    meta: EnvelopeMeta,
    plaintext: &[u8],
    recipients: &[Recipient],
    version: EnvelopeVersion,
) -> Result<SealedEnvelope, CryptoError> {
    seal_with(provider, key_id, meta, plaintext, recipients, None, version)
}

/// Wraps the data key for a provider-held SM4 KEK.
fn wrap_for_kek(
    provider: &dyn CryptoProvider,
    h: &KeyHandle,
    tx: &Uuid,
    data_key: &Sm4Key,
) -> Result<WrappedKey, CryptoError> {
    let mut kn = [0u8; GCM_NONCE_LEN];
    provider.random(&mut kn)?;
    let ct = provider.kek_seal(h, &kn, &kek_aad(tx, h.as_str())?, data_key.expose_secret())?;
    let mut w = kn.to_vec();
    w.extend_from_slice(&ct);
    Ok(WrappedKey {
        kind: WrapKind::Sm4Kek,
        recipient: h.as_str().to_string(),
        wrapped: w,
    })
}

thread_local! {
    /// This thread's decompressor, kept between records ([`inflate_exact`]).
    static DECOMPRESSOR: std::cell::RefCell<Option<flate2::Decompress>> = const { std::cell::RefCell::new(None) };
    /// This thread's compressor, kept between seals: making one allocates
    /// and zeroes ~230 KiB of state, which dominated the cost of
    /// compressing a record of a few KiB.
    static COMPRESSOR: std::cell::RefCell<Option<flate2::Compress>> = const { std::cell::RefCell::new(None) };
}

/// Raw DEFLATE (RFC 1951, no zlib or gzip wrapper) of `plaintext` at
/// [`DEFLATE_LEVEL`], in a buffer reserved up front (so never copied by a
/// reallocation) and zeroised on drop. The thread's compressor is reset
/// after each use, which also clears its window (up to 32 KiB of the
/// plaintext), so no plaintext stays in it between seals.
fn deflate(plaintext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    use flate2::{Compress, Compression};
    let mut c = COMPRESSOR
        .with(|slot| slot.borrow_mut().take())
        .unwrap_or_else(|| Compress::new(Compression::new(DEFLATE_LEVEL), false));
    let out = deflate_with(&mut c, plaintext);
    c.reset();
    COMPRESSOR.with(|slot| *slot.borrow_mut() = Some(c));
    out
}

/// [`deflate`] with the compressor `c`, fresh or reset.
fn deflate_with(c: &mut flate2::Compress, plaintext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    use flate2::{FlushCompress, Status};
    let n = plaintext.len();
    // miniz's deflate bound: stored blocks at worst, 5 bytes per block.
    let bound = (128 + n + n / 10).max(128 + n + (n / (31 * 1024) + 1) * 5);
    let mut out = Zeroizing::new(Vec::with_capacity(bound));
    loop {
        let (read, wrote) = (c.total_in(), c.total_out());
        let rest = plaintext.get(read as usize..).unwrap_or_default();
        let status = c
            .compress_vec(rest, &mut out, FlushCompress::Finish)
            .map_err(|e| CryptoError::Envelope(format!("deflate failed: {e}")))?;
        if status == Status::StreamEnd {
            return Ok(out);
        }
        if out.len() == out.capacity() {
            out.reserve(bound);
        } else if (read, wrote) == (c.total_in(), c.total_out()) {
            return Err(CryptoError::Envelope("deflate made no progress".into()));
        }
    }
}

/// Inflates the raw DEFLATE stream `compressed` of a version-2 envelope to
/// exactly the signed `plaintext_len` bytes. Refuses, naming the
/// transaction and the fault, a declared length more than the stream could
/// inflate to, a stream that inflates to more or fewer bytes, one that is
/// malformed or cut short, and bytes after its end. Allocates
/// `plaintext_len` bytes for the output and never more.
fn inflate_exact(compressed: &[u8], plaintext_len: u32, tx: &Uuid) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    use flate2::{Decompress, FlushDecompress, Status};
    let refuse = |what: String| CryptoError::Envelope(format!("envelope {tx}: compressed plaintext: {what}"));
    let n = plaintext_len as usize;
    if u64::from(plaintext_len) > MAX_DEFLATE_RATIO * compressed.len() as u64 {
        return Err(refuse(format!(
            "the signed plaintext_len {n} is more than {} deflate bytes can inflate to",
            compressed.len()
        )));
    }
    let mut out = Zeroizing::new(vec![0u8; n]);
    // One call that finishes: miniz inflates straight into `out`, which is
    // also its window, and stops when `out` is full. The thread's
    // decompressor is kept between records (making one allocates and
    // zeroes its state: a quarter of the time of inflating a record).
    let mut d = DECOMPRESSOR
        .with(|slot| slot.borrow_mut().take())
        .unwrap_or_else(|| Decompress::new(false));
    let status = d.decompress(compressed, &mut out, FlushDecompress::Finish);
    let (read, wrote) = (d.total_in() as usize, d.total_out() as usize);
    d.reset(false);
    DECOMPRESSOR.with(|slot| *slot.borrow_mut() = Some(d));
    match status {
        Err(e) => Err(refuse(format!("not a valid raw deflate stream ({e})"))),
        Ok(Status::StreamEnd) if wrote < n => Err(refuse(format!(
            "inflates to {wrote} bytes, fewer than the signed plaintext_len {n}"
        ))),
        Ok(Status::StreamEnd) if read < compressed.len() => Err(refuse(format!(
            "{} trailing bytes after the end of the deflate stream",
            compressed.len() - read
        ))),
        Ok(Status::StreamEnd) => Ok(out),
        // Out of room or out of input: find out which.
        Ok(_) => Err(refuse(overlong_or_cut(compressed, n))),
    }
}

/// Why a stream did not end within `n` output bytes: it inflates to more,
/// or it stops before its final block. Inflates at most `n` + 4 KiB bytes,
/// through a small buffer, and keeps none of them.
fn overlong_or_cut(compressed: &[u8], n: usize) -> String {
    use flate2::{Decompress, FlushDecompress, Status};
    let mut d = Decompress::new(false);
    let mut scratch = Zeroizing::new([0u8; 4096]);
    let why = loop {
        let (read, wrote) = (d.total_in(), d.total_out());
        let rest = compressed.get(read as usize..).unwrap_or_default();
        let status = d.decompress(rest, &mut scratch[..], FlushDecompress::None);
        if d.total_out() > n as u64 {
            break format!("inflates to more than the signed plaintext_len {n}");
        }
        match status {
            Err(e) => break format!("not a valid raw deflate stream ({e})"),
            Ok(Status::StreamEnd) => break "not a valid raw deflate stream".to_string(),
            Ok(_) if (read, wrote) == (d.total_in(), d.total_out()) => {
                break format!(
                    "the deflate stream is cut short: it ends after {} bytes of output, before its final block",
                    d.total_out()
                );
            }
            Ok(_) => {}
        }
    };
    // The window held plaintext: wipe it.
    d.reset(false);
    why
}

fn seal_with(
    provider: &dyn CryptoProvider,
    key_id: &str,
    meta: EnvelopeMeta,
    plaintext: &[u8],
    recipients: &[Recipient],
    batch: Option<&BatchSealer<'_>>,
    version: EnvelopeVersion,
) -> Result<SealedEnvelope, CryptoError> {
    if recipients.is_empty() {
        return Err(CryptoError::Envelope("at least one recipient is required".into()));
    }
    let compressed;
    let (plaintext_len, body) = match version {
        EnvelopeVersion::V1 => (None, plaintext),
        EnvelopeVersion::V2 => {
            let n = u32::try_from(plaintext.len())
                .ok()
                .filter(|n| *n <= MAX_PLAINTEXT_LEN)
                .ok_or_else(|| {
                    CryptoError::Envelope(format!(
                        "a plaintext of {} bytes exceeds the maximum {MAX_PLAINTEXT_LEN} (64 MiB)",
                        plaintext.len()
                    ))
                })?;
            compressed = deflate(plaintext)?;
            (Some(n), &compressed[..])
        }
    };
    let header = EnvelopeHeader {
        transaction_id: meta.transaction_id,
        entity_id: meta.entity_id,
        key_id: key_id.to_string(),
        timestamp_ms: meta.timestamp_ms,
        content_type: meta.content_type,
        dataset_category: meta.dataset_category,
    };
    let plaintext_sm3 = provider.sm3(plaintext);
    let mut dk = Zeroizing::new([0u8; SM4_KEY_LEN]);
    provider.random(&mut dk[..])?;
    let data_key = Sm4Key::new(*dk);
    let mut nonce = [0u8; GCM_NONCE_LEN];
    provider.random(&mut nonce)?;
    let aad = payload_aad(version.as_u8(), &header, &plaintext_sm3, plaintext_len)?;
    let ciphertext = provider.sm4_gcm_seal(&data_key, &nonce, &aad, body)?;
    let tx = header.transaction_id;
    let mut wrapped = Vec::with_capacity(recipients.len());
    for (i, r) in recipients.iter().enumerate() {
        wrapped.push(match (r, batch) {
            (Recipient::Sm2(pk), None) => WrappedKey {
                kind: WrapKind::Sm2,
                recipient: pk.key_id().to_string(),
                wrapped: provider.sm2_encrypt(pk, data_key.expose_secret())?,
            },
            (Recipient::Sm2(pk), Some(b)) => {
                let wrapped_kek = b
                    .wrapped_keks
                    .get(i)
                    .and_then(|w| w.as_deref())
                    .ok_or_else(|| CryptoError::Envelope("batch sealer: recipient list out of step".into()))?;
                let mut kn = [0u8; GCM_NONCE_LEN];
                provider.random(&mut kn)?;
                let ct = provider.sm4_gcm_seal(
                    &b.kek,
                    &kn,
                    &batch_kek_aad(&b.batch_id, &tx, pk.key_id())?,
                    data_key.expose_secret(),
                )?;
                WrappedKey {
                    kind: WrapKind::Sm2BatchKek,
                    recipient: pk.key_id().to_string(),
                    wrapped: BatchWrap::encode(&b.batch_id, wrapped_kek, &kn, &ct),
                }
            }
            (Recipient::Kek(h), _) => wrap_for_kek(provider, h, &tx, &data_key)?,
        });
    }
    Ok(SealedEnvelope {
        version: version.as_u8(),
        header,
        plaintext_sm3,
        plaintext_len,
        nonce: nonce.to_vec(),
        ciphertext,
        recipients: wrapped,
        signature: None,
    })
}

/// Seals the records of one batch, sharing the SM2 work: one random SM4
/// key-encryption key (the batch KEK) is SM2-encrypted once to each SM2
/// recipient when the sealer is made; every record's data key is then
/// wrapped with that KEK by SM4-GCM (associated data: batch id, transaction
/// id, recipient key id) in a [`WrapKind::Sm2BatchKek`] entry that also
/// carries the SM2-encrypted KEK, so each record opens alone with its
/// batch proof. A gateway opening the batch ([`crate::batch::open_batch_each`])
/// does one SM2 decryption per batch instead of one per record.
/// Provider-held SM4 KEK recipients are wrapped per record as in
/// [`seal_unsigned`].
///
/// The records belong to the batch id of this sealer: sign them with
/// [`BatchSealer::sign`] (or [`crate::batch::sign_batch`] with
/// [`BatchSealer::batch_id`]); another batch id is refused.
#[derive(Debug)]
pub struct BatchSealer<'a> {
    provider: &'a dyn CryptoProvider,
    key_id: String,
    batch_id: Uuid,
    recipients: Vec<Recipient>,
    /// Per recipient (same order): the SM2 ciphertext of the KEK, or None
    /// for a provider-held KEK recipient.
    wrapped_keks: Vec<Option<Vec<u8>>>,
    /// The batch KEK (zeroised on drop; `Debug` prints `<redacted>`).
    kek: Sm4Key,
}

impl<'a> BatchSealer<'a> {
    /// A sealer for a new batch with a random id; `key_id` is the batch
    /// signer's key id.
    pub fn new(provider: &'a dyn CryptoProvider, key_id: &str, recipients: &[Recipient]) -> Result<Self, CryptoError> {
        let mut id = [0u8; 16];
        provider.random(&mut id)?;
        Self::with_batch_id(
            provider,
            key_id,
            uuid::Builder::from_random_bytes(id).into_uuid(),
            recipients,
        )
    }

    /// A sealer for the batch `batch_id`.
    pub fn with_batch_id(
        provider: &'a dyn CryptoProvider,
        key_id: &str,
        batch_id: Uuid,
        recipients: &[Recipient],
    ) -> Result<Self, CryptoError> {
        if recipients.is_empty() {
            return Err(CryptoError::Envelope("at least one recipient is required".into()));
        }
        let mut k = Zeroizing::new([0u8; SM4_KEY_LEN]);
        provider.random(&mut k[..])?;
        let kek = Sm4Key::new(*k);
        let wrapped_keks = recipients
            .iter()
            .map(|r| match r {
                Recipient::Sm2(pk) => provider.sm2_encrypt(pk, kek.expose_secret()).map(Some),
                Recipient::Kek(_) => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BatchSealer {
            provider,
            key_id: key_id.to_string(),
            batch_id,
            recipients: recipients.to_vec(),
            wrapped_keks,
            kek,
        })
    }

    /// The batch id the records are sealed for.
    pub fn batch_id(&self) -> Uuid {
        self.batch_id
    }

    /// Seals one record of the batch (unsigned, like [`seal_unsigned`]).
    pub fn seal_unsigned(&self, meta: EnvelopeMeta, plaintext: &[u8]) -> Result<SealedEnvelope, CryptoError> {
        self.seal_unsigned_with_version(meta, plaintext, EnvelopeVersion::CURRENT)
    }

    /// [`BatchSealer::seal_unsigned`] in a chosen format version. Only to
    /// reproduce records of an older version (the pinned version-1
    /// examples): new records are written in [`ENVELOPE_VERSION`].
    #[doc(hidden)]
    pub fn seal_unsigned_with_version(
        &self,
        meta: EnvelopeMeta,
        plaintext: &[u8],
        version: EnvelopeVersion,
    ) -> Result<SealedEnvelope, CryptoError> {
        seal_with(
            self.provider,
            &self.key_id,
            meta,
            plaintext,
            &self.recipients,
            Some(self),
            version,
        )
    }

    /// Signs `records` (sealed by this sealer) as the batch
    /// [`BatchSealer::batch_id`] with the provider key `signer`.
    pub fn sign(
        &self,
        signer: &KeyHandle,
        timestamp_ms: i64,
        records: Vec<SealedEnvelope>,
    ) -> Result<crate::batch::SignedBatch, CryptoError> {
        crate::batch::sign_batch(self.provider, signer, self.batch_id, timestamp_ms, records)
    }
}

/// Seals and signs `plaintext` with the provider key `signer`.
pub fn seal(
    provider: &dyn CryptoProvider,
    signer: &KeyHandle,
    meta: EnvelopeMeta,
    plaintext: &[u8],
    recipients: &[Recipient],
) -> Result<SealedEnvelope, CryptoError> {
    seal_with_version(provider, signer, meta, plaintext, recipients, EnvelopeVersion::CURRENT)
}

/// [`seal`] in a chosen format version. Only to reproduce envelopes of an
/// older version (the pinned version-1 examples of `docs/envelope.md`,
/// interoperability tests): new envelopes are written in
/// [`ENVELOPE_VERSION`].
#[doc(hidden)]
pub fn seal_with_version(
    provider: &dyn CryptoProvider,
    signer: &KeyHandle,
    meta: EnvelopeMeta,
    plaintext: &[u8],
    recipients: &[Recipient],
    version: EnvelopeVersion,
) -> Result<SealedEnvelope, CryptoError> {
    let vk = provider.public_key(signer)?;
    let mut env = seal_unsigned_with_version(provider, vk.key_id(), meta, plaintext, recipients, version)?;
    let sig = provider.sign(signer, &env.signed_bytes()?)?;
    env.signature = Some(sig.to_der());
    Ok(env)
}

/// Verifies the signature (and that it is `signer`'s), then decrypts for
/// `me` and checks the plaintext's SM3. (A record sealed by a
/// [`BatchSealer`] has no signature of its own: open it with its batch.)
pub fn open(
    provider: &dyn CryptoProvider,
    env: &SealedEnvelope,
    signer: &Sm2VerifyingKey,
    me: RecipientKey<'_>,
) -> Result<OpenedEnvelope, CryptoError> {
    env.verify_in(provider, signer)?;
    decrypt_verified(provider, env, me, &mut OpenCtx::new(None))
}

/// What opening records needs beyond one record: the batch the records
/// were verified under, my SM2 key id, and the batch KEKs already
/// decrypted (per SM2 ciphertext of the KEK, so records of one batch that
/// carry different KEKs are each opened with their own).
pub(crate) struct OpenCtx {
    batch_id: Option<Uuid>,
    my_key_id: Option<String>,
    keks: HashMap<Vec<u8>, Sm4Key>,
}

impl OpenCtx {
    /// A context for records verified under `batch_id` (None: an
    /// individually signed envelope).
    pub(crate) fn new(batch_id: Option<Uuid>) -> Self {
        OpenCtx {
            batch_id,
            my_key_id: None,
            keks: HashMap::new(),
        }
    }

    fn my_key_id(&mut self, provider: &dyn CryptoProvider, h: &KeyHandle) -> Result<String, CryptoError> {
        if let Some(k) = &self.my_key_id {
            return Ok(k.clone());
        }
        let k = provider.public_key(h)?.key_id().to_string();
        self.my_key_id = Some(k.clone());
        Ok(k)
    }

    /// The batch KEK in `wrapped_kek`, SM2-decrypted once per context.
    fn kek(&mut self, provider: &dyn CryptoProvider, h: &KeyHandle, wrapped_kek: &[u8]) -> Result<Sm4Key, CryptoError> {
        if let Some(k) = self.keks.get(wrapped_kek) {
            return Ok(k.clone());
        }
        let raw = provider.sm2_decrypt(h, wrapped_kek)?;
        let k = Sm4Key::from_slice(&raw)
            .map_err(|_| CryptoError::Envelope("unwrapped batch kek is not 16 bytes".into()))?;
        self.keks.insert(wrapped_kek.to_vec(), k.clone());
        Ok(k)
    }
}

/// Decrypts an envelope whose authenticity the caller has already
/// established (its own signature, or a batch proof whose batch id is in
/// `ctx`).
pub(crate) fn decrypt_verified(
    provider: &dyn CryptoProvider,
    env: &SealedEnvelope,
    me: RecipientKey<'_>,
    ctx: &mut OpenCtx,
) -> Result<OpenedEnvelope, CryptoError> {
    env.check_shape()?;
    let tx = env.header.transaction_id;
    let raw_key = match me {
        RecipientKey::Sm2(h) => {
            let kid = ctx.my_key_id(provider, h)?;
            let w = env
                .recipients
                .iter()
                .find(|w| matches!(w.kind, WrapKind::Sm2 | WrapKind::Sm2BatchKek) && w.recipient == kid)
                .ok_or_else(|| {
                    CryptoError::NotARecipient(format!("envelope {tx} has no sm2 entry for key id {kid}"))
                })?;
            if w.kind == WrapKind::Sm2 {
                provider.sm2_decrypt(h, &w.wrapped)?
            } else {
                let bw = BatchWrap::parse(&w.wrapped)?;
                match ctx.batch_id {
                    None => {
                        return Err(CryptoError::Envelope(format!(
                            "envelope {tx}: an sm2-batch-kek entry opens only with its batch (a record proof)"
                        )));
                    }
                    Some(b) if b != bw.batch_id => {
                        return Err(CryptoError::Envelope(format!(
                            "envelope {tx} was sealed for batch {}, not batch {b}",
                            bw.batch_id
                        )));
                    }
                    Some(_) => {}
                }
                let kek = ctx.kek(provider, h, bw.wrapped_kek)?;
                provider
                    .sm4_gcm_open(&kek, &bw.nonce, &batch_kek_aad(&bw.batch_id, &tx, &kid)?, bw.wrapped_dk)
                    .map_err(|_| {
                        CryptoError::Cipher(format!("envelope {tx}: the batch-kek-wrapped data key does not open"))
                    })?
            }
        }
        RecipientKey::Kek(h) => {
            let w = env
                .recipients
                .iter()
                .find(|w| w.kind == WrapKind::Sm4Kek && w.recipient == h.as_str())
                .ok_or_else(|| {
                    CryptoError::NotARecipient(format!("envelope {tx} has no sm4-kek entry named {}", h.as_str()))
                })?;
            if w.wrapped.len() != GCM_NONCE_LEN + SM4_KEY_LEN + crate::sym::GCM_TAG_LEN {
                return Err(CryptoError::Envelope(format!(
                    "kek-wrapped key must be 44 bytes, got {}",
                    w.wrapped.len()
                )));
            }
            let (n, ct) = w.wrapped.split_at(GCM_NONCE_LEN);
            let mut nonce = [0u8; GCM_NONCE_LEN];
            nonce.copy_from_slice(n);
            provider.kek_open(h, &nonce, &kek_aad(&tx, h.as_str())?, ct)?
        }
    };
    let data_key = Sm4Key::from_slice(&raw_key)
        .map_err(|_| CryptoError::Envelope(format!("envelope {tx}: unwrapped data key is not 16 bytes")))?;
    let mut nonce = [0u8; GCM_NONCE_LEN];
    nonce.copy_from_slice(&env.nonce);
    let aad = payload_aad(env.version, &env.header, &env.plaintext_sm3, env.plaintext_len)?;
    let body = provider.sm4_gcm_open(&data_key, &nonce, &aad, &env.ciphertext)?;
    let plaintext = match (env.format_version()?, env.plaintext_len) {
        (EnvelopeVersion::V2, Some(n)) => inflate_exact(&body, n, &tx)?,
        (EnvelopeVersion::V2, None) => {
            return Err(CryptoError::Envelope(format!(
                "envelope {tx}: a version-2 envelope needs a plaintext_len"
            )));
        }
        (EnvelopeVersion::V1, _) => body,
    };
    if provider.sm3(&plaintext) != env.plaintext_sm3 {
        return Err(CryptoError::DigestMismatch(format!(
            "envelope {tx}: plaintext sm3 differs from the signed one"
        )));
    }
    Ok(OpenedEnvelope {
        header: env.header.clone(),
        plaintext,
        field_seed: field_seed(&raw_key, &tx),
    })
}

/// Base64 (standard alphabet, padded) for `Vec<u8>` fields.
pub(crate) mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// `plaintext_len` of the JSON form: a number when present (`null` is
/// refused, not read as absent).
fn present_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    <u32 as serde::Deserialize>::deserialize(d).map(Some)
}

/// Base64 for `Option<Vec<u8>>` fields.
pub(crate) mod b64_opt {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        s.map(|s| STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    /// The thread's compressor, reused, gives each plaintext the stream a
    /// fresh one gives, whatever it compressed before (its window is
    /// cleared between uses), and the stream inflates back.
    #[test]
    fn a_reused_compressor_compresses_like_a_fresh_one() {
        let fresh = |p: &[u8]| {
            let mut c = flate2::Compress::new(flate2::Compression::new(super::DEFLATE_LEVEL), false);
            super::deflate_with(&mut c, p).unwrap().to_vec()
        };
        let a: Vec<u8> = br#"{"vaccine":"HepB","dose":1,"site":"LA"}"#.repeat(40);
        let b: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        for p in [&a, &b, &a, &a[..17].to_vec(), &Vec::new(), &b] {
            let got = super::deflate(p).unwrap();
            assert_eq!(got.to_vec(), fresh(p));
            let tx = uuid::Uuid::nil();
            assert_eq!(&super::inflate_exact(&got, p.len() as u32, &tx).unwrap()[..], &p[..]);
        }
    }

    /// Known answer, computed independently with Python's
    /// `hmac.new(bytes(range(16)), b"vaxgate/field-seed-v1" + uuid.bytes, "sm3")`.
    #[test]
    fn field_seed_known_answer() {
        let tx = uuid::Uuid::parse_str("0b9a6a2e-5f0e-5d53-9a57-9d2f5cfa0f53").unwrap();
        let key: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            hex::encode(*super::field_seed(&key, &tx)),
            "fd0fb28dae132dcf969d042c7e872cd7ec757ce754b963494b8556d8eb1b68ff"
        );
    }
}
