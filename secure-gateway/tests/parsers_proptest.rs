//! Every parser of outside bytes answers arbitrary input with a value or a
//! typed error, never a panic: envelopes (JSON and binary, versions 1 and
//! 2), batches and proofs (JSON), signatures (raw, DER, hex), keys (PEM,
//! SEC1), SM2 and SM4 ciphertexts.
#![allow(clippy::unwrap_used)] // tests may panic on setup failures

use std::sync::OnceLock;

use proptest::prelude::*;
use secure_gateway::envelope::{
    EnvelopeHeader, EnvelopeVersion, MAX_PLAINTEXT_LEN, WrapKind, WrappedKey, seal_unsigned_with_version,
    seal_with_version,
};
use secure_gateway::keys::private_key_from_pem;
use secure_gateway::sym::{sm4_cbc_decrypt, sm4_gcm_open};
use secure_gateway::{
    ContentType, CryptoProvider, DEFAULT_DIST_ID, EnvelopeMeta, KeyHandle, Recipient, RecipientKey, RecordProof,
    RustCryptoProvider, SealedEnvelope, SignedBatch, Sm2CiphertextFormat, Sm2Signature, Sm2SigningKey, Sm2VerifyingKey,
    Sm3Digest, Sm4Key, open, seal, sign_batch, sm3,
};

struct Fixture {
    p: RustCryptoProvider,
    sender: KeyHandle,
    me: KeyHandle,
    kek: KeyHandle,
    /// A signed envelope in version 2 (what `seal` writes) and in version 1.
    env_json: String,
    env_json_v1: String,
    /// The envelope's binary form, and a batch record's (no signature), in
    /// version 2 and in version 1.
    env_bin: Vec<u8>,
    rec_bin: Vec<u8>,
    env_bin_v1: Vec<u8>,
    rec_bin_v1: Vec<u8>,
    batch_json: String,
    batch_bin: Vec<u8>,
    proof_json: String,
    sm2_der: Vec<u8>,
    sm2_raw: Vec<u8>,
    sig_der: Vec<u8>,
    pub_pem: String,
}

fn fx() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let p = RustCryptoProvider::new();
        let sender = p.add_sm2_key(Sm2SigningKey::generate());
        let me_key = Sm2SigningKey::generate();
        let me_pk = me_key.verifying_key().clone();
        let me = p.add_sm2_key(me_key);
        let kek = KeyHandle::new("kek");
        p.insert_kek(kek.clone(), Sm4Key::new([3; 16]));
        let meta = EnvelopeMeta::now("e", ContentType::Json, "c");
        let rcpt = [Recipient::Sm2(me_pk.clone()), Recipient::Kek(kek.clone())];
        let env = seal(&p, &sender, meta.clone(), b"{\"a\":1}", &rcpt).unwrap();
        assert_eq!(env.version, 2);
        let env_v1 = seal_with_version(&p, &sender, meta.clone(), b"{\"a\":1}", &rcpt, EnvelopeVersion::V1).unwrap();
        let kid = p.public_key(&sender).unwrap().key_id().to_string();
        // Records 0 and 2 in version 2, record 1 in version 1: a batch may mix them.
        let recs: Vec<SealedEnvelope> = (0..3)
            .map(|i| {
                let v = if i == 1 {
                    EnvelopeVersion::V1
                } else {
                    EnvelopeVersion::V2
                };
                seal_unsigned_with_version(&p, &kid, meta.clone(), b"{}", &rcpt, v).unwrap()
            })
            .collect();
        let rec_bin_v1 = recs[1].to_binary().unwrap();
        let rec_bin = recs[2].to_binary().unwrap();
        let batch = sign_batch(&p, &sender, uuid::Uuid::nil(), 0, recs).unwrap();
        let proof_json = batch.proof(1).unwrap().to_json();
        Fixture {
            sm2_der: me_pk.encrypt(b"sixteen byte key", Sm2CiphertextFormat::Der).unwrap(),
            sm2_raw: me_pk.encrypt(b"sixteen byte key", Sm2CiphertextFormat::Raw).unwrap(),
            sig_der: env.signature.clone().unwrap(),
            pub_pem: me_pk.to_public_key_pem(),
            env_json: env.to_json(),
            env_json_v1: env_v1.to_json(),
            env_bin: env.to_binary().unwrap(),
            env_bin_v1: env_v1.to_binary().unwrap(),
            rec_bin,
            rec_bin_v1,
            batch_json: batch.to_json(),
            batch_bin: batch.to_binary().unwrap(),
            proof_json,
            p,
            sender,
            me,
            kek,
        }
    })
}

/// Flips, deletes or inserts bytes of a valid input.
fn mutate(base: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut v = base.to_vec();
    for &(pos, op, b) in edits {
        if v.is_empty() {
            v.push(b);
            continue;
        }
        let i = pos % v.len();
        match op % 3 {
            0 => v[i] ^= b | 1,
            1 => {
                v.remove(i);
            }
            _ => v.insert(i, b),
        }
    }
    v
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)
}

/// The `u32_be(len) ‖ value` fields of a binary envelope (it must be one).
fn fields_of(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some((len, rest)) = b.split_first_chunk::<4>() {
        let n = u32::from_be_bytes(*len) as usize;
        out.push(rest[..n].to_vec());
        b = &rest[n..];
    }
    out
}

/// Field `i` (modulo their number) of a binary envelope with its value
/// changed by `e`, the fields joined again with their new lengths: every
/// field, the version-2 plaintext length among them, is hit as often as
/// any other, whatever its size.
fn mutate_field(base: &[u8], i: usize, e: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut f = fields_of(base);
    let i = i % f.len();
    f[i] = mutate(&f[i], e);
    f.iter()
        .flat_map(|v| (v.len() as u32).to_be_bytes().into_iter().chain(v.iter().copied()))
        .collect()
}

/// Parsing never panics; and whatever verifies or opens is the original
/// document, and opens to the original plaintext: a forgery never passes.
fn exercise_envelope(bytes: &[u8]) {
    let f = fx();
    let signer = f.p.public_key(&f.sender).unwrap();
    if let Ok(env) = SealedEnvelope::from_json(bytes) {
        let json = env.to_json();
        let original = json == f.env_json || json == f.env_json_v1;
        if env.verify(&signer).is_ok() {
            assert!(original, "a changed envelope verified");
        }
        let _digest_of_anything = env.record_digest(); // computed for any content; must not panic
        for me in [RecipientKey::Sm2(&f.me), RecipientKey::Kek(&f.kek)] {
            if let Ok(o) = open(&f.p, &env, &signer, me) {
                assert!(original, "a changed envelope opened");
                assert_eq!(&o.plaintext[..], b"{\"a\":1}");
            }
        }
    }
}

/// Binary parsing never panics and is canonical: whatever parses encodes
/// back to exactly the same bytes, its signed part hashes to its record
/// digest, and only the original verifies or opens.
fn exercise_binary(bytes: &[u8]) {
    let f = fx();
    let signer = f.p.public_key(&f.sender).unwrap();
    let Ok(env) = SealedEnvelope::from_binary(bytes) else {
        assert!(SealedEnvelope::binary_signed_part(bytes).is_err());
        return;
    };
    assert_eq!(
        env.to_binary().unwrap(),
        bytes,
        "a second encoding of an envelope parsed"
    );
    let part = SealedEnvelope::binary_signed_part(bytes).unwrap();
    assert_eq!(sm3(part), env.record_digest().unwrap());
    let original = bytes == f.env_bin || bytes == f.env_bin_v1;
    if env.verify(&signer).is_ok() {
        assert!(original, "a changed binary envelope verified");
    }
    for me in [RecipientKey::Sm2(&f.me), RecipientKey::Kek(&f.kek)] {
        if let Ok(o) = open(&f.p, &env, &signer, me) {
            assert!(original, "a changed binary envelope opened");
            assert_eq!(&o.plaintext[..], b"{\"a\":1}");
        }
    }
}

/// The checks above see the fixture itself verify and open, so their
/// "only the original passes" assertions are live.
#[test]
fn the_unchanged_envelope_verifies_and_opens() {
    let f = fx();
    let signer = f.p.public_key(&f.sender).unwrap();
    for (json, bin, v) in [(&f.env_json, &f.env_bin, 2), (&f.env_json_v1, &f.env_bin_v1, 1)] {
        let env = SealedEnvelope::from_json(json.as_bytes()).unwrap();
        assert_eq!(env.version, v);
        assert!(env.verify(&signer).is_ok());
        assert!(open(&f.p, &env, &signer, RecipientKey::Kek(&f.kek)).is_ok());
        exercise_envelope(json.as_bytes());
        let env = SealedEnvelope::from_binary(bin).unwrap();
        assert!(env.verify(&signer).is_ok());
        assert!(open(&f.p, &env, &signer, RecipientKey::Kek(&f.kek)).is_ok());
        exercise_binary(bin);
    }
    exercise_binary(&f.rec_bin);
    exercise_binary(&f.rec_bin_v1);
    assert_eq!(SealedEnvelope::from_binary(&f.rec_bin).unwrap().version, 2);
    assert_eq!(SealedEnvelope::from_binary(&f.rec_bin_v1).unwrap().version, 1);
}

/// Any envelope that passes `check_shape`, in version 1 or 2, with
/// arbitrary strings, bytes, plaintext length and recipients (not
/// necessarily openable).
fn any_envelope() -> impl Strategy<Value = SealedEnvelope> {
    let recipient =
        (0..3u8, ".{0,12}", proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(k, r, w)| WrappedKey {
            kind: [WrapKind::Sm2, WrapKind::Sm4Kek, WrapKind::Sm2BatchKek][usize::from(k)],
            recipient: r,
            wrapped: w,
        });
    (
        (
            any::<u128>(),
            ".{0,24}",
            ".{0,40}",
            any::<i64>(),
            any::<bool>(),
            ".{0,24}",
        ),
        any::<[u8; 32]>(),
        any::<[u8; 12]>(),
        proptest::collection::vec(any::<u8>(), 16..80),
        proptest::collection::vec(recipient, 0..4),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 1..80)),
        // None: version 1; Some: version 2 with that plaintext length.
        proptest::option::of(prop_oneof![0..=MAX_PLAINTEXT_LEN, Just(MAX_PLAINTEXT_LEN), 0..2000u32]),
    )
        .prop_map(
            |((tx, entity, key_id, ts, xml, category), sm3, nonce, ct, recipients, sig, plaintext_len)| {
                SealedEnvelope {
                    version: if plaintext_len.is_some() { 2 } else { 1 },
                    header: EnvelopeHeader {
                        transaction_id: uuid::Uuid::from_u128(tx),
                        entity_id: entity,
                        key_id,
                        timestamp_ms: ts,
                        content_type: if xml { ContentType::Xml } else { ContentType::Json },
                        dataset_category: category,
                    },
                    plaintext_sm3: Sm3Digest(sm3),
                    plaintext_len,
                    nonce: nonce.to_vec(),
                    ciphertext: ct,
                    recipients,
                    signature: sig,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn envelope_json_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        exercise_envelope(&b);
    }

    #[test]
    fn envelope_json_mutated(e in edits()) {
        exercise_envelope(&mutate(fx().env_json.as_bytes(), &e));
        exercise_envelope(&mutate(fx().env_json_v1.as_bytes(), &e));
    }

    #[test]
    fn envelope_binary_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        exercise_binary(&b);
    }

    #[test]
    fn envelope_binary_mutated(e in edits()) {
        exercise_binary(&mutate(&fx().env_bin, &e));
        exercise_binary(&mutate(&fx().rec_bin, &e));
        exercise_binary(&mutate(&fx().env_bin_v1, &e));
        exercise_binary(&mutate(&fx().rec_bin_v1, &e));
    }

    /// One field of a binary envelope changed (in both versions; the
    /// version byte too): never a panic, canonical, only the original opens.
    #[test]
    fn envelope_binary_field_mutated(i in any::<usize>(), e in edits()) {
        let f = fx();
        for base in [&f.env_bin, &f.rec_bin, &f.env_bin_v1, &f.rec_bin_v1] {
            exercise_binary(&mutate_field(base, i, &e));
        }
    }

    /// The JSON's version and plaintext_len set to anything: never a panic;
    /// only the original verifies or opens.
    #[test]
    fn envelope_json_version_and_plaintext_len(
        version in prop_oneof![Just("1".to_string()), Just("2".to_string()), "-?[0-9]{1,4}", Just("null".to_string())],
        len in prop_oneof![
            Just(None),
            any::<i64>().prop_map(|n| Some(n.to_string())),
            (0..=MAX_PLAINTEXT_LEN + 1).prop_map(|n| Some(n.to_string())),
            "[0-9.e+-]{1,12}|null|true|\"[0-9]{1,3}\"|\\[\\]|\\{\\}".prop_map(Some),
        ],
    ) {
        let f = fx();
        for json in [&f.env_json, &f.env_json_v1] {
            let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("plaintext_len");
            let mut text = serde_json::to_string(&v).unwrap();
            text = text.replacen("\"version\":1,", &format!("\"version\":{version},"), 1);
            text = text.replacen("\"version\":2,", &format!("\"version\":{version},"), 1);
            if let Some(len) = &len {
                text = text.replacen(",\"nonce\":", &format!(",\"plaintext_len\":{len},\"nonce\":"), 1);
            }
            exercise_envelope(text.as_bytes());
            if let Ok(env) = SealedEnvelope::from_json(text.as_bytes()) {
                prop_assert!(env.version == 1 || env.version == 2);
                prop_assert_eq!(env.plaintext_len.is_some(), env.version == 2);
                prop_assert!(env.plaintext_len.is_none_or(|n| n <= MAX_PLAINTEXT_LEN));
            }
        }
    }

    /// Any envelope to binary and back is the same envelope, and the
    /// binary form's signed part is its signed bytes.
    #[test]
    fn envelope_binary_round_trip(env in any_envelope()) {
        let b = env.to_binary().unwrap();
        let back = SealedEnvelope::from_binary(&b).unwrap();
        prop_assert_eq!(&back, &env);
        prop_assert_eq!(back.to_binary().unwrap(), b.clone());
        prop_assert_eq!(SealedEnvelope::binary_signed_part(&b).unwrap(), &env.signed_bytes().unwrap()[..]);
        prop_assert_eq!(SealedEnvelope::from_json(env.to_json().as_bytes()).unwrap(), env);
        exercise_binary(&b);
    }

    #[test]
    fn batch_and_proof_json_mutated(e in edits()) {
        let f = fx();
        let signer = f.p.public_key(&f.sender).unwrap();
        if let Ok(b) = SignedBatch::from_json(&mutate(f.batch_json.as_bytes(), &e)) {
            let original = b.to_json() == f.batch_json;
            if b.verify(&signer).is_ok() {
                prop_assert!(original, "a changed batch verified");
            }
            let _ = b.proof(1); // may fail on a short batch; must not panic
            if let Ok(opened) = secure_gateway::batch::open_batch(&f.p, &b, &signer, RecipientKey::Sm2(&f.me)) {
                prop_assert!(original, "a changed batch opened");
                prop_assert!(opened.iter().all(|o| o.plaintext.as_slice() == b"{}".as_slice()), "opened to other plaintext");
            }
        }
        if let Ok(pr) = RecordProof::from_json(&mutate(f.proof_json.as_bytes(), &e)) {
            let original = pr.to_json() == f.proof_json;
            if pr.verify(&signer).is_ok() {
                prop_assert!(original, "a changed record proof verified");
            }
            if let Ok(o) = pr.open(&f.p, &signer, RecipientKey::Kek(&f.kek)) {
                prop_assert!(original, "a changed record proof opened");
                prop_assert_eq!(&o.plaintext[..], b"{}");
            }
        }
        let _ = SignedBatch::from_json(&e.iter().map(|x| x.2).collect::<Vec<_>>());
        let _ = RecordProof::from_json(&e.iter().map(|x| x.1).collect::<Vec<_>>());
    }

    /// The binary batch form, mutated: never a panic; what parses is
    /// canonical (re-encodes to the mutated bytes), and opens or verifies
    /// only when it is the original.
    #[test]
    fn batch_binary_mutated(e in edits()) {
        let f = fx();
        let signer = f.p.public_key(&f.sender).unwrap();
        let m = mutate(&f.batch_bin, &e);
        if let Ok(r) = secure_gateway::ReceivedBatch::from_binary(&m) {
            let original = m == f.batch_bin;
            prop_assert_eq!(r.batch.to_binary().unwrap(), m.clone());
            if r.batch.verify(&signer).is_ok() {
                prop_assert!(original, "a changed binary batch verified");
            }
            if let Ok((_, o)) = r.open_with_paths(&f.p, &signer, RecipientKey::Sm2(&f.me)) {
                prop_assert!(original, "a changed binary batch opened");
                prop_assert!(o.records.iter().all(|r| r.as_ref().is_ok_and(|r| r.plaintext.as_slice() == b"{}")), "opened to other plaintext");
            }
        }
        let _ = SignedBatch::from_binary(&e.iter().map(|x| x.2).collect::<Vec<_>>());
    }

    #[test]
    fn signatures(b in proptest::collection::vec(any::<u8>(), 0..100), e in edits(), s in ".{0,140}") {
        let _ = Sm2Signature::from_slice(&b);
        let _ = Sm2Signature::from_der(&b);
        let _ = Sm2Signature::from_hex(&s);
        let _ = Sm2Signature::from_hex(&hex::encode(&b));
        if let Ok(sig) = Sm2Signature::from_der(&mutate(&fx().sig_der, &e)) {
            let _ = sig.to_der();
            // The fixture signature signs an envelope, not "x".
            prop_assert!(fx().p.public_key(&fx().sender).unwrap().verify(b"x", &sig).is_err());
        }
        let _ = Sm3Digest::from_hex(&s);
    }

    #[test]
    fn public_keys(b in proptest::collection::vec(any::<u8>(), 0..100), e in edits(), s in ".{0,300}") {
        let _ = Sm2VerifyingKey::from_sec1(&b, DEFAULT_DIST_ID);
        let _ = Sm2VerifyingKey::from_public_key_pem(&s);
        let _ = Sm2VerifyingKey::from_public_key_pem(&String::from_utf8_lossy(&mutate(fx().pub_pem.as_bytes(), &e)));
    }

    #[test]
    fn private_key_pem(body in "[A-Za-z0-9+/=\n]{0,400}", s in ".{0,200}", enc in any::<bool>()) {
        let label = if enc { "ENCRYPTED PRIVATE KEY" } else { "PRIVATE KEY" };
        let pem = format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n");
        let _ = private_key_from_pem(&pem, if enc { Some("pw") } else { None }, DEFAULT_DIST_ID);
        let _ = private_key_from_pem(&s, None, DEFAULT_DIST_ID);
        let _ = private_key_from_pem(&s, Some("pw"), DEFAULT_DIST_ID);
    }

    #[test]
    fn sm2_ciphertexts(b in proptest::collection::vec(any::<u8>(), 0..200), e in edits()) {
        let f = fx();
        prop_assert!(f.p.sm2_decrypt(&f.me, &b).is_err(), "random bytes decrypted");
        // Only the unchanged ciphertext decrypts, to its plaintext.
        prop_assert_eq!(&f.p.sm2_decrypt(&f.me, &f.sm2_der).unwrap()[..], b"sixteen byte key");
        let m = mutate(&f.sm2_der, &e);
        if let Ok(p) = f.p.sm2_decrypt(&f.me, &m) {
            prop_assert!(m == f.sm2_der, "a changed SM2 ciphertext decrypted");
            prop_assert_eq!(&p[..], b"sixteen byte key");
        }
        // Another key decrypts none of them.
        let k = Sm2SigningKey::generate();
        prop_assert!(k.decrypt(&b, Sm2CiphertextFormat::Raw).is_err());
        prop_assert!(k.decrypt(&mutate(&f.sm2_raw, &e), Sm2CiphertextFormat::Raw).is_err());
        let mut with_tag = vec![0x04];
        with_tag.extend_from_slice(&b);
        prop_assert!(k.decrypt(&with_tag, Sm2CiphertextFormat::Raw).is_err());
    }

    #[test]
    fn sm4_ciphertexts(b in proptest::collection::vec(any::<u8>(), 0..100)) {
        let k = Sm4Key::new([1; 16]);
        prop_assert!(sm4_gcm_open(&k, &[0; 12], b"", &b).is_err(), "random bytes passed the GCM tag");
        // CBC has no tag: random bytes may end in valid padding, which is
        // then removed (at least one byte).
        if let Ok(p) = sm4_cbc_decrypt(&k, &[0; 16], &b) {
            prop_assert!(!b.is_empty() && b.len() % 16 == 0 && p.len() < b.len());
        }
        prop_assert_eq!(Sm4Key::from_slice(&b).is_ok(), b.len() == 16);
    }
}
