//! Batch-level key wrapping ([`BatchSealer`], `sm2-batch-kek` entries):
//! round trips, one SM2 decryption per batch and recipient, stand-alone
//! record proofs, tampering with the wrapped KEK or the per-record wrap,
//! and records moved to another batch id.
#![allow(clippy::unwrap_used)] // tests may panic on setup failures

mod support;

use proptest::prelude::*;
use secure_gateway::batch::{open_batch, open_batch_each};
use secure_gateway::envelope::WrapKind;
use secure_gateway::{
    BatchHeader, BatchSealer, ContentType, CryptoError, CryptoProvider, EnvelopeMeta, KeyHandle, Recipient,
    RecipientKey, RustCryptoProvider, SealedEnvelope, SignedBatch, Sm2SigningKey, Sm2VerifyingKey, Sm3Digest, Sm4Key,
    merkle, open, sign_batch,
};
use support::TestProvider;
use uuid::Uuid;

struct World {
    p: TestProvider,
    sender: KeyHandle,
    sender_pk: Sm2VerifyingKey,
    gateway: KeyHandle,
    cdc: KeyHandle,
    kek: KeyHandle,
}

fn world() -> World {
    let inner = RustCryptoProvider::new();
    let sender = inner.add_sm2_key(Sm2SigningKey::generate());
    let gateway = inner.add_sm2_key(Sm2SigningKey::generate());
    let cdc = inner.add_sm2_key(Sm2SigningKey::generate());
    let kek = KeyHandle::new("province-kek-2026");
    inner.insert_kek(kek.clone(), Sm4Key::new([0x42; 16]));
    let sender_pk = inner.public_key(&sender).unwrap();
    World {
        p: TestProvider::counting(inner),
        sender,
        sender_pk,
        gateway,
        cdc,
        kek,
    }
}

impl World {
    fn recipients(&self) -> Vec<Recipient> {
        vec![
            Recipient::Sm2(self.p.public_key(&self.gateway).unwrap()),
            Recipient::Kek(self.kek.clone()),
            Recipient::Sm2(self.p.public_key(&self.cdc).unwrap()),
        ]
    }

    fn sealer(&self, batch_id: Uuid) -> BatchSealer<'_> {
        BatchSealer::with_batch_id(&self.p, self.sender_pk.key_id(), batch_id, &self.recipients()).unwrap()
    }

    /// Signs `records` as batch `batch_id` without `sign_batch`'s checks,
    /// as a dishonest or buggy sealer could.
    fn sign_raw(&self, batch_id: Uuid, records: Vec<SealedEnvelope>) -> SignedBatch {
        let leaves: Vec<Sm3Digest> = records
            .iter()
            .map(|r| merkle::leaf_hash(&r.record_digest().unwrap().0))
            .collect();
        let mut header = BatchHeader {
            version: 1,
            batch_id,
            key_id: self.sender_pk.key_id().to_string(),
            timestamp_ms: 1_767_225_600_000,
            tree_size: records.len() as u64,
            root: merkle::root(&leaves),
            signature: Vec::new(),
        };
        header.signature = self
            .p
            .sign(&self.sender, &header.signed_bytes().unwrap())
            .unwrap()
            .to_der();
        SignedBatch { header, records }
    }
}

fn meta(i: u128) -> EnvelopeMeta {
    EnvelopeMeta {
        transaction_id: Uuid::from_u128(0x1000 + i),
        entity_id: "hospital-310101-001".into(),
        timestamp_ms: 1_767_225_600_000,
        content_type: ContentType::Json,
        dataset_category: "vaccination-record".into(),
    }
}

fn payload(i: usize) -> Vec<u8> {
    format!(r#"{{"vaccine":"HepB","lot":"202601A","dose":{i}}}"#).into_bytes()
}

const BATCH_A: Uuid = Uuid::from_u128(0xa);
const BATCH_B: Uuid = Uuid::from_u128(0xb);

fn sealed(s: &BatchSealer<'_>, n: usize) -> Vec<SealedEnvelope> {
    (0..n)
        .map(|i| s.seal_unsigned(meta(i as u128), &payload(i)).unwrap())
        .collect()
}

/// Byte offsets inside an sm2-batch-kek entry: `field(id) ‖ field(ek) ‖ field(nonce ‖ wrapped dk)`.
fn ek_range(wrapped: &[u8]) -> std::ops::Range<usize> {
    let n = u32::from_be_bytes(wrapped[20..24].try_into().unwrap()) as usize;
    24..24 + n
}

#[test]
fn round_trip_with_one_sm2_decryption_per_batch_and_recipient() {
    let w = world();
    let s = w.sealer(BATCH_A);
    assert_eq!(s.batch_id(), BATCH_A);
    let records = sealed(&s, 16);
    let first = &records[0];
    assert_eq!(
        first.recipients.iter().map(|r| r.kind).collect::<Vec<_>>(),
        [WrapKind::Sm2BatchKek, WrapKind::Sm4Kek, WrapKind::Sm2BatchKek]
    );
    // The SM2-encrypted KEK is the same in every record; the per-record part is not.
    let ek0 = &first.recipients[0].wrapped[ek_range(&first.recipients[0].wrapped)];
    for r in &records[1..] {
        let wr = &r.recipients[0].wrapped;
        assert_eq!(&wr[ek_range(wr)], ek0);
        assert_ne!(wr, &first.recipients[0].wrapped);
    }
    let batch = s.sign(&w.sender, 1_767_225_600_000, records).unwrap();
    // The JSON form round-trips with the new kind.
    let json = batch.to_json();
    assert!(json.contains(r#""kind":"sm2-batch-kek""#));
    let batch = SignedBatch::from_json(json.as_bytes()).unwrap();

    w.p.take();
    for me in [RecipientKey::Sm2(&w.gateway), RecipientKey::Sm2(&w.cdc)] {
        let opened = open_batch_each(&w.p, &batch, &w.sender_pk, me).unwrap();
        assert_eq!(w.p.take(), 1, "one sm2 decryption for 16 records");
        for (i, o) in opened.into_iter().enumerate() {
            assert_eq!(&o.unwrap().plaintext[..], &payload(i)[..]);
        }
    }
    let opened = open_batch(&w.p, &batch, &w.sender_pk, RecipientKey::Sm2(&w.gateway)).unwrap();
    assert_eq!((opened.len(), w.p.take()), (16, 1));
    // A provider-held KEK recipient still works (no SM2 at all).
    let opened = open_batch_each(&w.p, &batch, &w.sender_pk, RecipientKey::Kek(&w.kek)).unwrap();
    assert!(opened.iter().all(Result::is_ok));
    assert_eq!(w.p.take(), 0);
    // Not a recipient.
    let stranger = w.p.inner.add_sm2_key(Sm2SigningKey::generate());
    let opened = open_batch_each(&w.p, &batch, &w.sender_pk, RecipientKey::Sm2(&stranger)).unwrap();
    assert!(opened.iter().all(|r| matches!(r, Err(CryptoError::NotARecipient(_)))));
}

#[test]
fn a_record_opens_alone_with_its_proof() {
    let w = world();
    let s = w.sealer(BATCH_A);
    let batch = s.sign(&w.sender, 1, sealed(&s, 5)).unwrap();
    drop(s); // the sealer (and its KEK) is gone
    // The stored record and its proof travel as JSON, without the batch.
    let proof = secure_gateway::RecordProof::from_json(batch.proof(3).unwrap().to_json().as_bytes()).unwrap();
    w.p.take();
    let o = proof.open(&w.p, &w.sender_pk, RecipientKey::Sm2(&w.cdc)).unwrap();
    assert_eq!(&o.plaintext[..], &payload(3)[..]);
    assert_eq!(w.p.take(), 1);
}

#[test]
fn tampering_is_detected() {
    let w = world();
    let s = w.sealer(BATCH_A);
    let records = sealed(&s, 4);

    // Without re-signing: the batch signature (Merkle root) refuses the batch.
    let mut bad = records.clone();
    let r = &mut bad[1].recipients[0].wrapped;
    let at = ek_range(r).start + 40;
    r[at] ^= 1;
    let batch = w.sign_raw(BATCH_A, bad);
    let mut unsigned = batch.clone();
    unsigned.header = s.sign(&w.sender, 1, records.clone()).unwrap().header;
    assert!(open_batch_each(&w.p, &unsigned, &w.sender_pk, RecipientKey::Sm2(&w.gateway)).is_err());

    // Re-signed (a faulty sealer): only the tampered record fails, in the
    // wrapped KEK ...
    let opened = open_batch_each(&w.p, &batch, &w.sender_pk, RecipientKey::Sm2(&w.gateway)).unwrap();
    let ok: Vec<bool> = opened.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, false, true, true]);

    // ... or in the per-record wrap of the data key (nonce, ciphertext or tag).
    for at in [-44isize, -20, -1] {
        let mut bad = records.clone();
        let r = &mut bad[2].recipients[2].wrapped;
        let i = (r.len() as isize + at) as usize;
        r[i] ^= 0x80;
        let batch = w.sign_raw(BATCH_A, bad);
        let opened = open_batch_each(&w.p, &batch, &w.sender_pk, RecipientKey::Sm2(&w.cdc)).unwrap();
        let ok: Vec<bool> = opened.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [true, true, false, true], "flip at {at}");
    }

    // The wrapped KEK of one record swapped for another batch's: refused.
    let other = w.sealer(BATCH_A);
    let foreign = other.seal_unsigned(meta(9), b"x").unwrap();
    let mut bad = records.clone();
    bad[0].recipients[0] = foreign.recipients[0].clone();
    let batch = w.sign_raw(BATCH_A, bad);
    let opened = open_batch_each(&w.p, &batch, &w.sender_pk, RecipientKey::Sm2(&w.gateway)).unwrap();
    assert!(opened[0].is_err() && opened[1..].iter().all(Result::is_ok));

    // Truncated or extended entries are errors, not panics.
    for cut in [0usize, 3, 4, 23, 30, 100] {
        let mut bad = records.clone();
        bad[3].recipients[0].wrapped.truncate(cut);
        let batch = w.sign_raw(BATCH_A, bad);
        let opened = open_batch_each(&w.p, &batch, &w.sender_pk, RecipientKey::Sm2(&w.gateway)).unwrap();
        assert!(opened[3].is_err(), "cut at {cut}");
    }
    let mut bad = records;
    bad[3].recipients[0].wrapped.push(0);
    let batch = w.sign_raw(BATCH_A, bad);
    let opened = open_batch_each(&w.p, &batch, &w.sender_pk, RecipientKey::Sm2(&w.gateway)).unwrap();
    assert!(opened[3].is_err());
}

#[test]
fn a_record_cannot_move_to_another_batch() {
    let w = world();
    let s = w.sealer(BATCH_A);
    let records = sealed(&s, 3);
    // sign_batch refuses another batch id.
    let e = sign_batch(&w.p, &w.sender, BATCH_B, 1, records.clone()).unwrap_err();
    assert!(e.to_string().contains("sealed for batch"), "{e}");
    // Signed as batch B anyway: every record refuses to open.
    let moved = w.sign_raw(BATCH_B, records.clone());
    let opened = open_batch_each(&w.p, &moved, &w.sender_pk, RecipientKey::Sm2(&w.gateway)).unwrap();
    for r in &opened {
        let e = r.as_ref().unwrap_err().to_string();
        assert!(e.contains("was sealed for batch"), "{e}");
    }
    assert!(
        moved
            .proof(1)
            .unwrap()
            .open(&w.p, &w.sender_pk, RecipientKey::Sm2(&w.gateway))
            .is_err()
    );
    // Rewriting the batch id inside the entry breaks its SM4-GCM tag.
    let mut rewritten = records;
    for r in &mut rewritten {
        r.recipients[0].wrapped[4..20].copy_from_slice(BATCH_B.as_bytes());
    }
    let moved = w.sign_raw(BATCH_B, rewritten);
    let opened = open_batch_each(&w.p, &moved, &w.sender_pk, RecipientKey::Sm2(&w.gateway)).unwrap();
    assert!(opened.iter().all(Result::is_err));
}

#[test]
fn a_batch_kek_entry_needs_its_batch() {
    let w = world();
    let s = w.sealer(BATCH_A);
    let mut env = s.seal_unsigned(meta(0), b"{}").unwrap();
    env.signature = Some(w.p.sign(&w.sender, &env.signed_bytes().unwrap()).unwrap().to_der());
    env.verify(&w.sender_pk).unwrap();
    let e = open(&w.p, &env, &w.sender_pk, RecipientKey::Sm2(&w.gateway)).unwrap_err();
    assert!(e.to_string().contains("opens only with its batch"), "{e}");
    // The provider-held KEK entry of the same envelope opens as before.
    open(&w.p, &env, &w.sender_pk, RecipientKey::Kek(&w.kek)).unwrap();
}

#[test]
fn the_new_kind_is_signed() {
    let w = world();
    let s = w.sealer(BATCH_A);
    let env = s.seal_unsigned(meta(0), b"{}").unwrap();
    let mut relabelled = env.clone();
    relabelled.recipients[0].kind = WrapKind::Sm2;
    assert_ne!(env.record_digest().unwrap(), relabelled.record_digest().unwrap());
    assert!(env.signed_bytes().unwrap().windows(13).any(|x| x == b"sm2-batch-kek"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Any batch of any payloads round-trips, each record alone too.
    #[test]
    fn prop_round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..9),
                       pick in any::<prop::sample::Index>()) {
        let w = world();
        let s = BatchSealer::new(&w.p, w.sender_pk.key_id(), &w.recipients()).unwrap();
        let records: Vec<_> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| s.seal_unsigned(meta(i as u128), p).unwrap())
            .collect();
        let batch = s.sign(&w.sender, 1, records).unwrap();
        prop_assert_eq!(batch.header.batch_id, s.batch_id());
        let opened = open_batch_each(&w.p, &batch, &w.sender_pk, RecipientKey::Sm2(&w.gateway)).unwrap();
        for (o, p) in opened.into_iter().zip(&payloads) {
            prop_assert_eq!(&o.unwrap().plaintext[..], &p[..]);
        }
        let i = pick.index(payloads.len());
        let o = batch.proof(i).unwrap().open(&w.p, &w.sender_pk, RecipientKey::Sm2(&w.cdc)).unwrap();
        prop_assert_eq!(&o.plaintext[..], &payloads[i][..]);
    }

    /// Arbitrary bytes in an sm2-batch-kek entry are an error, never a panic.
    #[test]
    fn prop_garbage_entries_are_errors(garbage in proptest::collection::vec(any::<u8>(), 0..200)) {
        let w = world();
        let s = w.sealer(BATCH_A);
        let mut env = s.seal_unsigned(meta(0), b"{}").unwrap();
        env.recipients[0].wrapped = garbage;
        let batch = w.sign_raw(BATCH_A, vec![env]);
        let opened = open_batch_each(&w.p, &batch, &w.sender_pk, RecipientKey::Sm2(&w.gateway)).unwrap();
        prop_assert!(opened[0].is_err());
    }
}
