//! Sealed envelopes and signed batches: round trips, verify-before-decrypt,
//! tamper detection, and stand-alone record proofs.
#![allow(clippy::unwrap_used)] // tests may panic on setup failures

use std::sync::Arc;

use secure_gateway::envelope::WrapKind;
use secure_gateway::{
    ContentType, CryptoError, CryptoProvider, EnvelopeMeta, KeyHandle, Recipient, RecipientKey, RecordProof,
    RustCryptoProvider, SealedEnvelope, SignedBatch, Sm2SigningKey, Sm2VerifyingKey, Sm4Key, open, seal, seal_unsigned,
    sign_batch,
};
use uuid::Uuid;

struct World {
    p: Arc<dyn CryptoProvider>,
    sender: KeyHandle,
    cdc: KeyHandle,
    kek: KeyHandle,
}

fn world() -> World {
    let p = RustCryptoProvider::new();
    let sender = p.add_sm2_key(Sm2SigningKey::generate());
    let cdc = p.add_sm2_key(Sm2SigningKey::generate());
    let kek = KeyHandle::new("province-kek-2026");
    p.insert_kek(kek.clone(), Sm4Key::new([0x42; 16]));
    World {
        p: Arc::new(p),
        sender,
        cdc,
        kek,
    }
}

impl World {
    /// The sender's public key and the CDC's.
    fn public_keys(&self) -> (Sm2VerifyingKey, Sm2VerifyingKey) {
        (
            self.p.public_key(&self.sender).unwrap(),
            self.p.public_key(&self.cdc).unwrap(),
        )
    }

    /// [`PAYLOAD`] sealed by the sender to `recipients`.
    fn seal(&self, recipients: &[Recipient]) -> SealedEnvelope {
        seal(&*self.p, &self.sender, meta(), PAYLOAD, recipients).unwrap()
    }

    /// [`PAYLOAD`] sealed by the sender to both kinds of recipient: the CDC
    /// (SM2) and the key-encryption key.
    fn seal_to_cdc_and_kek(&self) -> SealedEnvelope {
        let cdc_pk = self.public_keys().1;
        self.seal(&[Recipient::Sm2(cdc_pk), Recipient::Kek(self.kek.clone())])
    }
}

fn meta() -> EnvelopeMeta {
    EnvelopeMeta {
        transaction_id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        entity_id: "hospital-310101-001".into(),
        timestamp_ms: 1_767_225_600_000,
        content_type: ContentType::Json,
        dataset_category: "vaccination-record".into(),
    }
}

const PAYLOAD: &[u8] = br#"{"vaccine":"HepB","lot":"202601A","dose":1}"#;

#[test]
fn seal_open_both_recipient_kinds_and_json_round_trip() {
    let w = world();
    let (signer_pk, _) = w.public_keys();
    let env = w.seal_to_cdc_and_kek();
    assert_eq!(env.header.key_id, signer_pk.key_id());
    assert_eq!(env.recipients[0].kind, WrapKind::Sm2);
    assert_eq!(env.recipients[1].wrapped.len(), 44);

    let json = env.to_json();
    assert!(!json.contains("HepB"), "plaintext must not appear in the envelope");
    let back = SealedEnvelope::from_json(json.as_bytes()).unwrap();
    assert_eq!(back, env);
    back.verify(&signer_pk).unwrap();

    let o = open(&*w.p, &back, &signer_pk, RecipientKey::Sm2(&w.cdc)).unwrap();
    assert_eq!(&o.plaintext[..], PAYLOAD);
    assert!(!format!("{o:?}").contains("HepB"));
    let o = open(&*w.p, &back, &signer_pk, RecipientKey::Kek(&w.kek)).unwrap();
    assert_eq!(&o.plaintext[..], PAYLOAD);
    assert_eq!(o.header, env.header);

    // The sender is not a recipient.
    let e = open(&*w.p, &back, &signer_pk, RecipientKey::Sm2(&w.sender)).unwrap_err();
    assert!(matches!(e, CryptoError::NotARecipient(_)), "{e}");
}

#[test]
fn wrong_signer_is_rejected_before_anything_else() {
    let w = world();
    let (_, cdc_pk) = w.public_keys();
    let env = w.seal(&[Recipient::Sm2(cdc_pk.clone())]);
    let e = open(&*w.p, &env, &cdc_pk, RecipientKey::Sm2(&w.cdc)).unwrap_err();
    assert!(matches!(e, CryptoError::SignerMismatch { .. }), "{e}");
    // A forger who rewrites key_id to the trusted key still fails on the signature.
    let mut forged = env.clone();
    forged.header.key_id = cdc_pk.key_id().to_string();
    let e = open(&*w.p, &forged, &cdc_pk, RecipientKey::Sm2(&w.cdc)).unwrap_err();
    assert!(matches!(e, CryptoError::BadSignature { .. }), "{e}");
}

/// Any change to any signed field is caught by the signature, so open never
/// reaches decryption for a tampered envelope.
#[test]
fn every_field_is_covered_by_the_signature() {
    let w = world();
    let (signer_pk, _) = w.public_keys();
    let env = w.seal_to_cdc_and_kek();
    type Tamper = Box<dyn Fn(&mut SealedEnvelope)>;
    let tampers: Vec<Tamper> = vec![
        Box::new(|e| e.header.transaction_id = Uuid::nil()),
        Box::new(|e| e.header.entity_id.push('x')),
        Box::new(|e| e.header.timestamp_ms += 1),
        Box::new(|e| e.header.content_type = ContentType::Xml),
        Box::new(|e| e.header.dataset_category = "cold-chain-reading".into()),
        Box::new(|e| e.plaintext_sm3.0[0] ^= 1),
        Box::new(|e| e.plaintext_len = e.plaintext_len.map(|n| n + 1)),
        Box::new(|e| e.plaintext_len = e.plaintext_len.map(|n| n - 1)),
        Box::new(|e| e.nonce[0] ^= 1),
        Box::new(|e| e.ciphertext[0] ^= 1),
        Box::new(|e| e.recipients[0].wrapped[10] ^= 1),
        Box::new(|e| e.recipients[1].recipient.push('x')),
        Box::new(|e| e.recipients.swap(0, 1)),
        Box::new(|e| {
            e.recipients.pop();
        }),
    ];
    for (i, t) in tampers.iter().enumerate() {
        let mut bad = env.clone();
        t(&mut bad);
        let e = open(&*w.p, &bad, &signer_pk, RecipientKey::Kek(&w.kek)).unwrap_err();
        assert!(matches!(e, CryptoError::BadSignature { .. }), "tamper {i}: {e}");
    }
    let mut unsigned = env.clone();
    unsigned.signature = None;
    assert!(matches!(unsigned.verify(&signer_pk), Err(CryptoError::Envelope(_))));
    // Another version: unknown (3), or 1, which has no plaintext_len.
    assert_eq!(env.version, 2);
    for v in [3, 1] {
        let mut other = env.clone();
        other.version = v;
        assert!(
            matches!(other.verify(&signer_pk), Err(CryptoError::Envelope(_))),
            "version {v}"
        );
    }
}

#[test]
fn batch_sign_verify_and_single_record_proofs() {
    let w = world();
    let (signer_pk, cdc_pk) = w.public_keys();
    let records: Vec<SealedEnvelope> = (0..7)
        .map(|i| {
            let mut m = meta();
            m.transaction_id = Uuid::from_u128(i);
            let body = format!(r#"{{"i":{i}}}"#);
            seal_unsigned(
                &*w.p,
                signer_pk.key_id(),
                m,
                body.as_bytes(),
                &[Recipient::Sm2(cdc_pk.clone())],
            )
            .unwrap()
        })
        .collect();
    let batch = sign_batch(&*w.p, &w.sender, Uuid::from_u128(99), 1_767_225_600_000, records).unwrap();
    batch.verify(&signer_pk).unwrap();
    let batch = SignedBatch::from_json(batch.to_json().as_bytes()).unwrap();
    batch.verify(&signer_pk).unwrap();
    let all = secure_gateway::batch::open_batch(&*w.p, &batch, &signer_pk, RecipientKey::Sm2(&w.cdc)).unwrap();
    assert_eq!(all.len(), 7);

    for i in 0..7 {
        let proof = batch.proof(i).unwrap();
        // Travels alone: through JSON, without the other records.
        let proof = RecordProof::from_json(proof.to_json().as_bytes()).unwrap();
        proof.verify(&signer_pk).unwrap();
        let o = proof.open(&*w.p, &signer_pk, RecipientKey::Sm2(&w.cdc)).unwrap();
        assert_eq!(&o.plaintext[..], format!(r#"{{"i":{i}}}"#).as_bytes());
        // An unsigned record alone cannot be opened as an envelope.
        assert!(open(&*w.p, &proof.record, &signer_pk, RecipientKey::Sm2(&w.cdc)).is_err());
    }

    // Tampering: a record, the index, the path, the root, the signature.
    let p = batch.proof(3).unwrap();
    let mut bad = p.clone();
    bad.record.ciphertext[0] ^= 1;
    assert!(matches!(bad.verify(&signer_pk), Err(CryptoError::DigestMismatch(_))));
    let mut bad = p.clone();
    bad.index = 2;
    assert!(bad.verify(&signer_pk).is_err());
    let mut bad = p.clone();
    bad.audit_path[0].0[0] ^= 1;
    assert!(bad.verify(&signer_pk).is_err());
    let mut bad = p.clone();
    bad.batch.root.0[0] ^= 1;
    assert!(matches!(bad.verify(&signer_pk), Err(CryptoError::BadSignature { .. })));
    let mut bad = p.clone();
    bad.batch.tree_size += 1;
    assert!(bad.verify(&signer_pk).is_err());
    assert!(matches!(p.verify(&cdc_pk), Err(CryptoError::SignerMismatch { .. })));

    let mut bad = batch.clone();
    bad.records.swap(0, 1);
    assert!(matches!(bad.verify(&signer_pk), Err(CryptoError::DigestMismatch(_))));
    let mut bad = batch.clone();
    bad.records.pop();
    assert!(bad.verify(&signer_pk).is_err());
    assert!(batch.proof(7).is_err());
}

#[test]
fn batch_refuses_signed_or_foreign_records() {
    let w = world();
    let (_, cdc_pk) = w.public_keys();
    let signed = w.seal(&[Recipient::Sm2(cdc_pk.clone())]);
    assert!(sign_batch(&*w.p, &w.sender, Uuid::nil(), 0, vec![signed]).is_err());
    let foreign = seal_unsigned(
        &*w.p,
        cdc_pk.key_id(),
        meta(),
        PAYLOAD,
        &[Recipient::Sm2(cdc_pk.clone())],
    )
    .unwrap();
    assert!(matches!(
        sign_batch(&*w.p, &w.sender, Uuid::nil(), 0, vec![foreign]),
        Err(CryptoError::SignerMismatch { .. })
    ));
    assert!(sign_batch(&*w.p, &w.sender, Uuid::nil(), 0, vec![]).is_err());
    assert!(seal(&*w.p, &w.sender, meta(), PAYLOAD, &[]).is_err());
}
