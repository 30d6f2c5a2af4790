//! The binary transport form of a signed batch (`application/vnd.vaxgate.batch`,
//! what the agent posts): round trips with the JSON form, opening from the
//! bytes as they arrived gives what opening the JSON form gives, strict and
//! canonical parsing with errors that name the fault, and the binary form
//! of the second worked example of `docs/envelope.md`.
#![allow(clippy::unwrap_used)] // tests may panic on setup failures

mod support;

use secure_gateway::batch::{BATCH_BINARY_TAG, open_batch_with_paths};
use secure_gateway::{
    BatchSealer, ContentType, CryptoError, CryptoProvider, EnvelopeMeta, KeyHandle, ReceivedBatch, Recipient,
    RecipientKey, RustCryptoProvider, SignedBatch, Sm2SigningKey, Sm2VerifyingKey, seal, sm3,
};
use support::canon::{fields, join};
use uuid::Uuid;

const PAYLOAD: &[u8] = br#"{"vaccine":"HepB","lot":"202601A","dose":1}"#;

fn meta(tx: &str) -> EnvelopeMeta {
    EnvelopeMeta {
        transaction_id: tx.parse().unwrap(),
        entity_id: "hospital-310101-001".into(),
        timestamp_ms: 1_767_225_600_000,
        content_type: ContentType::Json,
        dataset_category: "vaccination-record".into(),
    }
}

struct World {
    p: RustCryptoProvider,
    sender: KeyHandle,
    gateway: KeyHandle,
}

fn world() -> World {
    let p = RustCryptoProvider::new();
    let sender = p.add_sm2_key(Sm2SigningKey::generate());
    let gateway = p.add_sm2_key(Sm2SigningKey::generate());
    World { p, sender, gateway }
}

impl World {
    fn signer(&self) -> Sm2VerifyingKey {
        self.p.public_key(&self.sender).unwrap()
    }

    /// A signed batch of `n` records (sm2-batch-kek) for the gateway.
    fn batch(&self, n: u128) -> SignedBatch {
        let kid = self.signer().key_id().to_string();
        let sealer = BatchSealer::new(
            &self.p,
            &kid,
            &[Recipient::Sm2(self.p.public_key(&self.gateway).unwrap())],
        )
        .unwrap();
        let recs = (0..n)
            .map(|i| {
                let tx = Uuid::from_u128(0x100 + i).to_string();
                sealer.seal_unsigned(meta(&tx), PAYLOAD).unwrap()
            })
            .collect();
        sealer.sign(&self.sender, 1_767_225_600_000, recs).unwrap()
    }
}

/// The message of a `CryptoError::Envelope` (any other error fails).
fn batch_error(bytes: &[u8]) -> String {
    match SignedBatch::from_binary(bytes) {
        Err(CryptoError::Envelope(m)) => m,
        other => panic!("expected an envelope error, got {other:?}"),
    }
}

#[test]
fn json_binary_json_round_trip() {
    let w = world();
    for n in [1, 2, 3, 17] {
        let batch = w.batch(n);
        let bin = batch.to_binary().unwrap();
        let back = SignedBatch::from_binary(&bin).unwrap();
        assert_eq!(back, batch);
        assert_eq!(back.to_binary().unwrap(), bin);
        assert_eq!(SignedBatch::from_json(back.to_json().as_bytes()).unwrap(), batch);
        back.verify(&w.signer()).unwrap();
    }
}

#[test]
fn the_layout_is_tag_header_signature_then_the_records_signed_bytes() {
    let w = world();
    let batch = w.batch(3);
    let f = fields(&batch.to_binary().unwrap());
    assert_eq!(f.len(), 3 + 3);
    assert_eq!(f[0], BATCH_BINARY_TAG.as_bytes());
    assert_eq!(f[1], batch.header.signed_bytes().unwrap());
    assert_eq!(f[2], batch.header.signature);
    for (i, r) in batch.records.iter().enumerate() {
        assert_eq!(f[3 + i], r.signed_bytes().unwrap());
        assert_eq!(sm3(&f[3 + i]), r.record_digest().unwrap());
    }
}

#[test]
fn opening_the_bytes_as_they_arrived_gives_what_the_json_form_gives() {
    let w = world();
    let batch = w.batch(5);
    let me = RecipientKey::Sm2(&w.gateway);
    let from_json = open_batch_with_paths(&w.p, &batch, &w.signer(), me).unwrap();
    let received = ReceivedBatch::from_binary(&batch.to_binary().unwrap()).unwrap();
    let (b, from_bin) = received.open_with_paths(&w.p, &w.signer(), me).unwrap();
    assert_eq!(b, batch);
    assert_eq!(from_bin.signed_bytes, from_json.signed_bytes);
    assert_eq!(from_bin.record_digests, from_json.record_digests);
    assert_eq!(from_bin.audit_paths, from_json.audit_paths);
    let plain = |o: &secure_gateway::batch::OpenedBatch| -> Vec<Vec<u8>> {
        o.records
            .iter()
            .map(|r| r.as_ref().unwrap().plaintext.to_vec())
            .collect()
    };
    assert_eq!(plain(&from_bin), plain(&from_json));
    assert!(plain(&from_bin).iter().all(|p| p == PAYLOAD));
    // The JSON form through the same door.
    let received = ReceivedBatch::from_json(batch.to_json().as_bytes()).unwrap();
    let (_, again) = received.open_with_paths(&w.p, &w.signer(), me).unwrap();
    assert_eq!(again.record_digests, from_json.record_digests);
}

#[test]
fn the_binary_form_is_smaller_than_the_json_form() {
    let w = world();
    let batch = w.batch(100);
    let (bin, json) = (batch.to_binary().unwrap().len(), batch.to_json().len());
    println!("100-record batch: binary {bin} bytes, json {json} bytes");
    assert!(bin * 10 < json * 7, "binary {bin} vs json {json}");
}

/// No single-byte change of the form opens: it is refused by the parse, by
/// the signature, or by the root (records and header are all covered).
#[test]
fn no_byte_flip_opens() {
    let w = world();
    let batch = w.batch(2);
    let bin = batch.to_binary().unwrap();
    let me = RecipientKey::Sm2(&w.gateway);
    let (mut parse, mut open) = (0, 0);
    for i in 0..bin.len() {
        let mut m = bin.clone();
        m[i] ^= 0x01;
        match ReceivedBatch::from_binary(&m) {
            Err(CryptoError::Envelope(_)) => parse += 1,
            Err(e) => panic!("byte {i}: {e:?}"),
            Ok(r) => {
                assert!(r.open_with_paths(&w.p, &w.signer(), me).is_err(), "byte {i} opened");
                open += 1;
            }
        }
    }
    assert!(
        parse > 0 && open > 0,
        "{parse} refused by the parse, {open} when opened"
    );
}

#[test]
fn every_truncation_is_an_error() {
    let w = world();
    let bin = w.batch(2).to_binary().unwrap();
    for n in 0..bin.len() {
        assert!(SignedBatch::from_binary(&bin[..n]).is_err(), "cut at {n}");
    }
}

#[test]
fn malformed_forms_are_refused_by_name() {
    let w = world();
    let batch = w.batch(2);
    let f = fields(&batch.to_binary().unwrap());
    let with = |i: usize, v: Vec<u8>| {
        let mut g = f.clone();
        g[i] = v;
        join(&g)
    };
    // The JSON form sent as binary: a named tag error, no panic.
    assert!(batch_error(batch.to_json().as_bytes()).contains("truncated domain tag"));
    assert!(batch_error(&with(0, b"vaxgate/signed-batch".to_vec())).contains("domain tag must be"));
    let mut trailing = join(&f);
    trailing.push(0);
    assert!(batch_error(&trailing).contains("1 trailing bytes after record 1"));
    // One record fewer than the header's tree size.
    assert!(batch_error(&join(&f[..4])).contains("record 1: truncated record"));
    assert!(batch_error(&join(&f[..3])).contains("tree size 2"));
    // A forged tree size far beyond the input: refused before allocating.
    let mut head = fields(&f[1]);
    head[5] = u64::MAX.to_be_bytes().to_vec();
    let m = batch_error(&with(1, join(&head)));
    assert!(m.contains("tree size 18446744073709551615"), "{m}");
    let mut head = fields(&f[1]);
    head[1] = vec![2];
    assert!(batch_error(&with(1, join(&head))).contains("header: unsupported batch version 2"));
    let mut head = fields(&f[1]);
    head[6].pop();
    assert!(batch_error(&with(1, join(&head))).contains("header: root must be 32 bytes"));
    assert!(batch_error(&with(2, Vec::new())).contains("empty batch signature"));
    // A record that is not an envelope's signed bytes: named with its index.
    let m = batch_error(&with(4, b"nonsense".to_vec()));
    assert!(m.starts_with("binary batch: record 1: "), "{m}");
}

#[test]
fn to_binary_refuses_an_individually_signed_record() {
    let w = world();
    let mut batch = w.batch(2);
    batch.records[1] = seal(
        &w.p,
        &w.sender,
        meta(&Uuid::from_u128(7).to_string()),
        PAYLOAD,
        &[Recipient::Sm2(w.p.public_key(&w.gateway).unwrap())],
    )
    .unwrap();
    match batch.to_binary() {
        Err(CryptoError::Envelope(m)) => assert!(m.contains("record 1 is individually signed"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// The second worked example of `docs/envelope.md` (the sm2-batch-kek
/// batch, pinned in `tests/envelope_example.rs`) in binary form:
/// `cargo test -p secure-gateway --test batch_binary -- --nocapture worked`
/// prints what the document quotes.
#[test]
fn worked_example_binary_batch_is_stable() {
    let e = support::worked_example();
    let vk = e.p.public_key(&e.signer).unwrap();
    let batch = e.batch();
    let bin = batch.to_binary().unwrap();
    let json = batch.to_json();
    let f = fields(&bin);
    let head_len = 12 + f[0].len() + f[1].len() + f[2].len();
    println!(
        "binary batch: {} bytes (json {} bytes); tag, header and signature ({head_len} bytes): {}",
        bin.len(),
        json.len(),
        hex::encode(&bin[..head_len])
    );
    println!("binary batch sm3: {}", sm3(&bin));
    assert_eq!((bin.len(), json.len()), (EXAMPLE_LEN, EXAMPLE_JSON_LEN));
    assert_eq!(hex::encode(&bin[..head_len]), EXAMPLE_HEAD);
    assert_eq!(sm3(&bin).to_hex(), EXAMPLE_SM3);
    let back = SignedBatch::from_binary(&bin).unwrap();
    assert_eq!(back, batch);
    back.verify(&vk).unwrap();
}

/// Length of the example's binary form and of its JSON form.
const EXAMPLE_LEN: usize = 1320;
const EXAMPLE_JSON_LEN: usize = 1998;
/// The tag field, the header's signed bytes (root as in
/// `tests/envelope_example.rs`) and the batch signature.
const EXAMPLE_HEAD: &str = concat!(
    "0000001b766178676174652f7369676e65642d62617463682d62696e6172790000009100000014766178676174652f73",
    "69676e65642d6261746368000000010100000010000000000000400080000000000000bb000000206432306231353438",
    "326436343337363464613936343239383231366366343232000000080000019b76daa800000000080000000000000002",
    "00000020395b3beccc335d8b77c17dd4ee57996e65a94eaa0c8ee8bdae0f76bb058561dd000000463044022038984c43",
    "55c5c00d7dd26db0d4107eab6ad198ddbfd1b620e144e5da31828d6e02200f71fd040c5e08aa83c0f654632607386423",
    "d1d3a915458dee534b5784662f4c",
);
/// SM3 of the whole binary form.
const EXAMPLE_SM3: &str = "ce71a56941bd17dfdf1cb5de0bbff7e52564b72d8789d3729c9cc93292181bab";
