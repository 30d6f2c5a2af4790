//! The binary form of sealed envelopes (what ledger format 2 stores):
//! round trips with the JSON form, the signed part as the input of the
//! record digest, strict and canonical parsing, and the binary form of the
//! worked example of `docs/envelope.md`.
#![allow(clippy::unwrap_used)] // tests may panic on setup failures

mod support;

use secure_gateway::envelope::{EnvelopeVersion, WrapKind, seal_with_version};
use secure_gateway::{
    BatchSealer, CryptoError, CryptoProvider, EnvelopeMeta, KeyHandle, Recipient, RecipientKey, SealedEnvelope, open,
    sm3,
};
use support::TestProvider;
use support::canon::{fields, join};
use support::{World, meta, world};

const PAYLOAD: &[u8] = br#"{"vaccine":"HepB","lot":"202601A","dose":1}"#;

impl World {
    /// `plaintext` sealed and signed by the sender for the CDC (SM2) and the KEK.
    fn signed(&self, plaintext: &[u8]) -> SealedEnvelope {
        let env = self.signed_in(plaintext, EnvelopeVersion::CURRENT);
        assert_eq!(env.version, 2);
        env
    }

    /// [`World::signed`] in envelope version `v`.
    fn signed_in(&self, plaintext: &[u8], v: EnvelopeVersion) -> SealedEnvelope {
        let cdc_pk = self.p.public_key(&self.cdc).unwrap();
        seal_with_version(
            &self.p,
            &self.sender,
            meta(1),
            plaintext,
            &[Recipient::Sm2(cdc_pk), Recipient::Kek(self.kek.clone())],
            v,
        )
        .unwrap()
    }

    /// Envelopes of every shape the tests below run over: signed in
    /// version 2 and in version 1, and a version-2 batch record.
    fn all(&self, plaintext: &[u8]) -> [SealedEnvelope; 3] {
        [
            self.signed(plaintext),
            self.signed_in(plaintext, EnvelopeVersion::V1),
            self.batch_record(plaintext).1,
        ]
    }

    /// Record 1 of a signed two-record batch for the CDC (sm2-batch-kek);
    /// the record itself has no signature.
    fn batch_record(&self, plaintext: &[u8]) -> (secure_gateway::SignedBatch, SealedEnvelope) {
        let kid = self.p.public_key(&self.sender).unwrap().key_id().to_string();
        let cdc_pk = self.p.public_key(&self.cdc).unwrap();
        let sealer = BatchSealer::new(&self.p, &kid, &[Recipient::Sm2(cdc_pk)]).unwrap();
        let recs = (0..2)
            .map(|i| sealer.seal_unsigned(meta(0x100 + i), plaintext).unwrap())
            .collect();
        let batch = sealer.sign(&self.sender, 1_767_225_600_000, recs).unwrap();
        let rec = batch.records[1].clone();
        (batch, rec)
    }
}

/// What `docs/envelope.md` tells a reader in another language to do: walk
/// the length prefixes to the end; the signed part ends where the last
/// field begins.
fn signed_part_by_walking(b: &[u8]) -> &[u8] {
    let (mut i, mut last) = (0, 0);
    while i < b.len() {
        last = i;
        i += 4 + u32::from_be_bytes(b[i..i + 4].try_into().unwrap()) as usize;
    }
    assert_eq!(i, b.len());
    &b[..last]
}

/// The message of a `CryptoError::Envelope` (any other error fails).
fn envelope_error(r: Result<SealedEnvelope, CryptoError>) -> String {
    match r {
        Err(CryptoError::Envelope(m)) => m,
        other => panic!("expected an envelope error, got {other:?}"),
    }
}

#[test]
fn json_binary_json_round_trip_of_a_signed_envelope() {
    let w = world();
    let signer = w.p.public_key(&w.sender).unwrap();
    for v in [EnvelopeVersion::V2, EnvelopeVersion::V1] {
        let json = w.signed_in(PAYLOAD, v).to_json();
        let env = SealedEnvelope::from_json(json.as_bytes()).unwrap();
        assert_eq!(env.recipients[0].kind, WrapKind::Sm2);
        let bin = env.to_binary().unwrap();
        let back = SealedEnvelope::from_binary(&bin).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.to_json(), json);
        assert_eq!(back.to_binary().unwrap(), bin);
        // The last field is the DER signature.
        let sig = env.signature.clone().unwrap();
        assert_eq!(fields(&bin).last().unwrap(), &sig);
        // What the ledger gives back verifies and opens.
        back.verify(&signer).unwrap();
        let o = open(&w.p, &back, &signer, RecipientKey::Sm2(&w.cdc)).unwrap();
        assert_eq!(&o.plaintext[..], PAYLOAD);
    }
}

#[test]
fn json_binary_json_round_trip_of_a_batch_record_without_signature() {
    let w = world();
    let signer = w.p.public_key(&w.sender).unwrap();
    let (batch, rec) = w.batch_record(PAYLOAD);
    assert!(rec.signature.is_none());
    assert_eq!(rec.recipients[0].kind, WrapKind::Sm2BatchKek);
    let json = rec.to_json();
    let env = SealedEnvelope::from_json(json.as_bytes()).unwrap();
    let bin = env.to_binary().unwrap();
    assert_eq!(&bin[bin.len() - 4..], [0, 0, 0, 0], "no signature: an empty last field");
    let back = SealedEnvelope::from_binary(&bin).unwrap();
    assert_eq!(back, env);
    assert_eq!(back.to_json(), json);
    assert_eq!(back.to_binary().unwrap(), bin);
    // The record read back still proves its place in the batch and opens.
    let mut proof = batch.proof(1).unwrap();
    proof.record = back;
    proof.verify(&signer).unwrap();
    let o = proof.open(&w.p, &signer, RecipientKey::Sm2(&w.cdc)).unwrap();
    assert_eq!(&o.plaintext[..], PAYLOAD);
}

#[test]
fn the_signed_part_hashes_to_the_record_digest() {
    let w = world();
    for env in w.all(PAYLOAD) {
        let bin = env.to_binary().unwrap();
        let part = SealedEnvelope::binary_signed_part(&bin).unwrap();
        assert_eq!(part, &env.signed_bytes().unwrap()[..]);
        assert_eq!(sm3(part), env.record_digest().unwrap());
        assert_eq!(signed_part_by_walking(&bin), part);
    }
}

#[test]
fn the_binary_form_is_smaller_than_the_json_form() {
    let w = world();
    let plaintext: Vec<u8> = (0..1024u32).map(|i| b'a' + (i % 26) as u8).collect();
    for (what, env) in [
        ("signed, sm2 + sm4-kek", w.signed(&plaintext)),
        ("signed v1, sm2 + sm4-kek", w.signed_in(&plaintext, EnvelopeVersion::V1)),
        ("batch record, sm2-batch-kek", w.batch_record(&plaintext).1),
    ] {
        let (json, bin) = (env.to_json().len(), env.to_binary().unwrap().len());
        println!(
            "1 KiB plaintext, {what}: json {json} bytes, binary {bin} bytes ({:.2})",
            bin as f64 / json as f64
        );
        assert!(bin * 5 < json * 4, "{what}: binary {bin} bytes, json {json}");
    }
}

#[test]
fn every_truncation_is_an_error() {
    let w = world();
    for env in w.all(PAYLOAD) {
        let bin = env.to_binary().unwrap();
        for n in 0..bin.len() {
            let m = envelope_error(SealedEnvelope::from_binary(&bin[..n]));
            // Cut inside the recipients, the count is caught first.
            let count_too_big = m.contains("recipient count") && m.contains("exceeds");
            assert!(m.contains("truncated") || count_too_big, "prefix of {n} bytes: {m}");
            assert!(SealedEnvelope::binary_signed_part(&bin[..n]).is_err());
        }
    }
    // One that names its field: cut in the middle of the ciphertext
    // (field 10 in version 1, 11 in version 2 after the plaintext length).
    for (v, o) in [(EnvelopeVersion::V1, 0), (EnvelopeVersion::V2, 1)] {
        let bin = w.signed_in(PAYLOAD, v).to_binary().unwrap();
        let start = join(&fields(&bin)[..10 + o]).len();
        let m = envelope_error(SealedEnvelope::from_binary(&bin[..start + 10]));
        assert_eq!(m, "binary envelope: truncated ciphertext");
        let start = join(&fields(&bin)[..17 + o]).len();
        let m = envelope_error(SealedEnvelope::from_binary(&bin[..start + 10]));
        assert_eq!(m, "binary envelope: recipient 1: truncated wrapped key");
    }
    // Cut inside the version-2 plaintext length.
    let bin = w.signed(PAYLOAD).to_binary().unwrap();
    let start = join(&fields(&bin)[..9]).len();
    let m = envelope_error(SealedEnvelope::from_binary(&bin[..start + 6]));
    assert_eq!(m, "binary envelope: truncated plaintext length");
}

#[test]
fn trailing_bytes_are_an_error() {
    let w = world();
    for env in w.all(PAYLOAD) {
        let bin = env.to_binary().unwrap();
        for tail in [
            &[0u8][..],
            &[0, 0, 0, 0],
            &join(&[env.signature.clone().unwrap_or_default()]),
        ] {
            let m = envelope_error(SealedEnvelope::from_binary(&[&bin[..], tail].concat()));
            assert!(m.contains("trailing bytes after the signature"), "{m}");
            assert!(SealedEnvelope::binary_signed_part(&[&bin[..], tail].concat()).is_err());
        }
    }
}

/// A changed byte is refused, or reads as a (different) envelope whose
/// binary form is exactly the changed bytes: no two encodings of one
/// envelope exist.
#[test]
fn every_byte_flip_errors_or_re_encodes_to_the_same_bytes() {
    let w = world();
    for env in w.all(PAYLOAD) {
        let bin = env.to_binary().unwrap();
        let (mut accepted, mut refused) = (0, 0);
        for i in 0..bin.len() {
            for mask in (0..8).map(|k| 1u8 << k).chain([0xff]) {
                let mut m = bin.clone();
                m[i] ^= mask;
                match SealedEnvelope::from_binary(&m) {
                    Ok(e) => {
                        accepted += 1;
                        assert_ne!(e, env);
                        assert_eq!(e.to_binary().unwrap(), m, "byte {i} ^ {mask:#04x}");
                    }
                    Err(CryptoError::Envelope(_)) => refused += 1,
                    Err(e) => panic!("byte {i} ^ {mask:#04x}: {e:?}"),
                }
            }
        }
        // Both outcomes occur: payload bytes change freely, lengths do not.
        assert!(accepted > 0 && refused > 0, "{accepted} accepted, {refused} refused");
    }
}

#[test]
fn malformed_fields_are_refused_by_name() {
    let w = world();
    // Version 2 has one more field (the plaintext length, field 9): `o`
    // shifts the fields after it.
    for (v, o) in [(EnvelopeVersion::V1, 0), (EnvelopeVersion::V2, 1)] {
        let env = w.signed_in(PAYLOAD, v);
        let base = fields(&env.to_binary().unwrap());
        assert_eq!(base.len(), 12 + o + 3 * 2 + 1);
        let with = |i: usize, v: &[u8]| {
            let mut f = base.clone();
            f[i] = v.to_vec();
            envelope_error(SealedEnvelope::from_binary(&join(&f)))
        };
        let mut cases: Vec<(String, &str)> = vec![
            (
                with(0, b"vaxgate/signed-batch"),
                "domain tag must be \"vaxgate/sealed-envelope\", got \"vaxgate/signed-batch\"",
            ),
            (with(1, &[1, 0]), "version must be 1 byte, got 2"),
            (with(1, &[3]), "unsupported version 3 (this build reads 1 and 2)"),
            (with(1, &[0]), "unsupported version 0 (this build reads 1 and 2)"),
            (with(2, &[0; 15]), "transaction id must be 16 bytes, got 15"),
            (with(3, b"h\xff"), "entity id \"h\\xff\" is not UTF-8"),
            (with(4, b"\xc3"), "key id \"\\xc3\" is not UTF-8"),
            (with(5, &[0; 9]), "timestamp must be 8 bytes, got 9"),
            (with(6, b"yaml"), "content type must be json or xml, got \"yaml\""),
            (with(6, b"JSON"), "content type must be json or xml, got \"JSON\""),
            (with(7, b"\x80"), "dataset category \"\\x80\" is not UTF-8"),
            (with(8, &[0; 31]), "plaintext sm3 must be 32 bytes, got 31"),
            (with(9 + o, &[0; 11]), "nonce must be 12 bytes, got 11"),
            (with(10 + o, &[0; 15]), "ciphertext shorter than the gcm tag"),
            (with(11 + o, &[0, 0, 0, 0, 2]), "recipient count must be 4 bytes, got 5"),
            (
                with(11 + o, &u32::MAX.to_be_bytes()),
                "recipient count 4294967295 exceeds what the remaining",
            ),
            (with(12 + o, b"sm3"), "recipient 0: unknown kind \"sm3\""),
            (with(15 + o, b"SM4-KEK"), "recipient 1: unknown kind \"SM4-KEK\""),
            (with(16 + o, b"\xfe"), "recipient 1: name \"\\xfe\" is not UTF-8"),
            // One recipient fewer than carried: the second one's kind is read as
            // the signature, and its other fields are left over.
            (with(11 + o, &1u32.to_be_bytes()), "trailing bytes after the signature"),
            // One more than carried: the signature is read as a kind.
            (with(11 + o, &3u32.to_be_bytes()), "recipient 2: unknown kind \"0"),
        ];
        match v {
            EnvelopeVersion::V1 => cases.extend([
                // A version-1 envelope relabelled version 2: its nonce is
                // read as the plaintext length.
                (with(1, &[2]), "plaintext length must be 4 bytes, got 12"),
            ]),
            EnvelopeVersion::V2 => cases.extend([
                (with(9, &[0; 3]), "plaintext length must be 4 bytes, got 3"),
                (with(9, &[0; 5]), "plaintext length must be 4 bytes, got 5"),
                (
                    with(9, &(64 * 1024 * 1024 + 1u32).to_be_bytes()),
                    "plaintext_len 67108865 exceeds the maximum 67108864 (64 MiB)",
                ),
                (
                    with(9, &u32::MAX.to_be_bytes()),
                    "plaintext_len 4294967295 exceeds the maximum 67108864 (64 MiB)",
                ),
                // Relabelled version 1: the plaintext length is read as the
                // nonce, the nonce as the ciphertext, the ciphertext as the
                // recipient count.
                (with(1, &[1]), "recipient count must be 4 bytes, got"),
            ]),
        }
        for (i, (got, want)) in cases.iter().enumerate() {
            assert!(got.starts_with("binary envelope: "), "{v:?} case {i}: {got}");
            assert!(got.contains(want), "{v:?} case {i}: {got:?} does not say {want:?}");
        }
        // A quoted bad value is cut short.
        let long = with(6, &[b'x'; 100]);
        assert!(long.ends_with(&format!("\"{}\" (100 bytes)", "x".repeat(32))), "{long}");
        // The signature field missing entirely.
        let m = envelope_error(SealedEnvelope::from_binary(&join(&base[..base.len() - 1])));
        assert_eq!(m, "binary envelope: truncated signature");
        // An empty signature field reads as no signature (a batch record).
        let mut f = base.clone();
        *f.last_mut().unwrap() = Vec::new();
        assert_eq!(SealedEnvelope::from_binary(&join(&f)).unwrap().signature, None);
    }
    // The largest plaintext length is accepted (and not allocated by a parse).
    let mut f = fields(&w.signed(PAYLOAD).to_binary().unwrap());
    f[9] = (64 * 1024 * 1024u32).to_be_bytes().to_vec();
    let env = SealedEnvelope::from_binary(&join(&f)).unwrap();
    assert_eq!(env.plaintext_len, Some(64 * 1024 * 1024));
    assert_eq!(env.to_binary().unwrap(), join(&f));
    // One more is refused by the parse of the signed bytes alone too.
    f[9] = (64 * 1024 * 1024 + 1u32).to_be_bytes().to_vec();
    let m = envelope_error(SealedEnvelope::from_signed_bytes(&join(&f[..f.len() - 1])));
    assert_eq!(
        m,
        "signed envelope bytes: plaintext_len 67108865 exceeds the maximum 67108864 (64 MiB)"
    );
}

/// An empty signature would read back as none: it has no binary form, and
/// `check_shape` (hence the JSON parser) refuses it.
#[test]
fn an_empty_signature_is_refused() {
    let w = world();
    let mut env = w.batch_record(PAYLOAD).1;
    env.signature = Some(Vec::new());
    let m = env.to_binary().unwrap_err().to_string();
    assert!(m.contains("empty signature"), "{m}");
    let json = env.to_json();
    assert!(json.contains(r#""signature":"""#), "{json}");
    let m = envelope_error(SealedEnvelope::from_json(json.as_bytes()));
    assert!(m.contains("empty signature"), "{m}");
}

/// `to_binary` refuses what `from_binary` would refuse, so everything it
/// writes reads back.
#[test]
fn to_binary_refuses_an_envelope_that_would_not_read_back() {
    let w = world();
    type Break = fn(&mut SealedEnvelope);
    let breaks: [(EnvelopeVersion, Break); 8] = [
        (EnvelopeVersion::V2, |e| e.version = 3),
        (EnvelopeVersion::V1, |e| e.version = 3),
        (EnvelopeVersion::V2, |e| e.nonce.truncate(11)),
        (EnvelopeVersion::V2, |e| e.ciphertext.truncate(15)),
        // plaintext_len is there exactly in version 2, at most 64 MiB.
        (EnvelopeVersion::V2, |e| e.plaintext_len = None),
        (EnvelopeVersion::V2, |e| e.version = 1),
        (EnvelopeVersion::V1, |e| e.plaintext_len = Some(43)),
        (EnvelopeVersion::V2, |e| e.plaintext_len = Some(64 * 1024 * 1024 + 1)),
    ];
    for (i, (v, b)) in breaks.iter().enumerate() {
        let mut bad = w.signed_in(PAYLOAD, *v);
        b(&mut bad);
        assert!(matches!(bad.to_binary(), Err(CryptoError::Envelope(_))), "break {i}");
        // Its bytes written by hand are refused on read.
        let mut f = fields(&bad.signed_bytes().unwrap());
        f.push(bad.signature.clone().unwrap());
        assert!(SealedEnvelope::from_binary(&join(&f)).is_err(), "break {i}");
        // And its JSON.
        assert!(
            SealedEnvelope::from_json(bad.to_json().as_bytes()).is_err(),
            "break {i}"
        );
    }
}

/// The deterministic provider of the worked example of `docs/envelope.md`
/// (the same as `tests/envelope_example.rs`): signer scalar SM3("vaxgate
/// example signer"), KEK `example-kek` = 00..0f, fixed "random" bytes.
fn example() -> (TestProvider, KeyHandle, KeyHandle) {
    let e = support::worked_example();
    (e.p, e.signer, e.kek)
}

fn example_meta(tx: &str) -> EnvelopeMeta {
    EnvelopeMeta {
        transaction_id: tx.parse().unwrap(),
        ..meta(0)
    }
}

/// The binary form of the worked example: its signed bytes (pinned in
/// `tests/envelope_example.rs`), then `00000047` and the 71-byte DER
/// signature.
const EXAMPLE_BINARY: &str = concat!(
    "00000017766178676174652f7365616c65642d656e76656c6f70650000000101000000105f0c1e2a3b4d4c5e8f607182",
    "93a4b5c600000013686f73706974616c2d3331303130312d303031000000206432306231353438326436343337363464",
    "613936343239383231366366343232000000080000019b76daa800000000046a736f6e0000001276616363696e617469",
    "6f6e2d7265636f72640000002027ad142a87a3db95c7adac309a3de6385831446a68d57f32a16f875900aa867e000000",
    "0c202122232425262728292a2b0000003bc8effd0d8f72e180e9a9ad2143fdca23328ce365052306a5e896e899ff28bf",
    "8f5980c2faa9a77670b3d02a0b37fa1eb78cd4b132d5a401973405c9000000040000000100000007736d342d6b656b00",
    "00000b6578616d706c652d6b656b0000002c303132333435363738393a3bf6027087d059befe3dcbdb5596273e3cf91c",
    "7e825c7aae6f0938c26cc541611e0000004730450220665e64663542691db7bb5224cc2c3e6892561d54bf4e321eba1f",
    "8f3a314d6e350221009aac77999830c79b7b42ac0d8df8d4f0b81ca1e53d0db5b7318c5e6d29f3940e",
);
/// The record digest of the worked example (as in `docs/envelope.md`).
const EXAMPLE_RECORD_DIGEST: &str = "51e587f22e160aeb7f82f82720965e13d5a36af865317559c533eb8c68cddea1";
/// Record 0 of the second worked example (the sm2-batch-kek batch).
const BATCH_KEK_RECORD0_DIGEST: &str = "ea733d2a4db9f4db68b2431d94e0be0d542344e330a056261f2fc38cf489f65e";

/// `cargo test -p secure-gateway --test envelope_binary -- --nocapture
/// worked_example` prints the values of `docs/envelope.md`'s "Binary form".
#[test]
fn worked_example_binary_form_is_stable() {
    let (p, signer, kek) = example();
    let env = seal_with_version(
        &p,
        &signer,
        example_meta("5f0c1e2a-3b4d-4c5e-8f60-718293a4b5c6"),
        PAYLOAD,
        &[Recipient::Kek(kek)],
        EnvelopeVersion::V1,
    )
    .unwrap();
    let bin = env.to_binary().unwrap();
    let json = env.to_json();
    println!("worked example binary ({} bytes): {}", bin.len(), hex::encode(&bin));
    println!("worked example json: {} bytes", json.len());
    assert_eq!(hex::encode(&bin), EXAMPLE_BINARY);
    assert_eq!((bin.len(), json.len()), (425, 699));
    assert_eq!(bin[..350], env.signed_bytes().unwrap());
    assert_eq!(bin[350..354], [0, 0, 0, 0x47]);
    let part = SealedEnvelope::binary_signed_part(&bin).unwrap();
    assert_eq!(sm3(part).to_hex(), EXAMPLE_RECORD_DIGEST);
    assert_eq!(SealedEnvelope::from_binary(&bin).unwrap().to_json(), json);

    // The second example's record 0: a batch record, no signature.
    let rec = support::worked_example().batch().records[0].clone();
    let bin = rec.to_binary().unwrap();
    let json = rec.to_json();
    println!(
        "batch-kek record 0 binary: {} bytes, json {} bytes",
        bin.len(),
        json.len()
    );
    assert_eq!((bin.len(), json.len()), (533, 819));
    assert_eq!(bin[529..], [0, 0, 0, 0]);
    let part = SealedEnvelope::binary_signed_part(&bin).unwrap();
    assert_eq!(sm3(part).to_hex(), BATCH_KEK_RECORD0_DIGEST);
}
