//! Envelope version 2 (`docs/envelope.md`, "Compression and length
//! (version 2)" and "Versioning"): the plaintext is
//! compressed with raw DEFLATE (RFC 1951) before SM4-GCM and its length
//! before compression is signed. Round trips of signed envelopes and batch
//! records; every refusal of a bad compressed plaintext, each by name; the
//! 64 MiB bound; the JSON field; version-1 envelopes sealed and opened next
//! to version 2; sizes on the golden vaccination message.
//!
//! The refusal tests build envelopes by hand, the way a reader in another
//! language would from the document (associated data, KEK wrap, signed
//! bytes), with chosen bytes under SM4-GCM: a valid tag and signature over
//! a bad DEFLATE stream.
#![allow(clippy::unwrap_used)] // tests may panic on setup failures

mod support;

use proptest::prelude::*;
use secure_gateway::batch::{open_batch, open_batch_each};
use secure_gateway::envelope::{
    ENVELOPE_VERSION, EnvelopeHeader, EnvelopeVersion, MAX_PLAINTEXT_LEN, SUPPORTED_VERSIONS, WrapKind, WrappedKey,
    seal_unsigned_with_version, seal_with_version,
};
use secure_gateway::sym::sm4_gcm_seal;
use secure_gateway::{
    BatchSealer, ContentType, CryptoError, CryptoProvider, EnvelopeMeta, Recipient, RecipientKey, SealedEnvelope,
    Sm2VerifyingKey, Sm4Key, open, seal, seal_unsigned, sign_batch, sm3,
};
use support::canon::join;
use uuid::Uuid;

/// The exchange message the agent seals for the golden vaccination record
/// (`mappings/tests/golden/vaccination/clinic-ims.json`, as `vaxgate bench
/// http` makes it).
const GOLDEN: &[u8] = include_bytes!("fixtures/golden-vaccination.json");
const PAYLOAD: &[u8] = br#"{"vaccine":"HepB","lot":"202601A","dose":1}"#;
use support::{KEK, KEK_NAME, World, meta, world};

/// Raw DEFLATE of `data` (flate2's streaming encoder, not the sealer's code).
fn deflate(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Inflates a raw DEFLATE stream (flate2's streaming decoder).
fn inflate(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(data), &mut out).unwrap();
    out
}

impl World {
    fn signer(&self) -> Sm2VerifyingKey {
        self.p.public_key(&self.sender).unwrap()
    }

    fn recipients(&self) -> [Recipient; 2] {
        [
            Recipient::Sm2(self.p.public_key(&self.cdc).unwrap()),
            Recipient::Kek(self.kek.clone()),
        ]
    }

    /// A signed version-2 envelope for transaction 7 built by hand as
    /// `docs/envelope.md` says, whose SM4-GCM plaintext is `body` (meant
    /// to be the raw DEFLATE of `plaintext`) and whose signed
    /// `plaintext_len` is `plaintext_len`; one `sm4-kek` recipient.
    fn by_hand(&self, body: &[u8], plaintext: &[u8], plaintext_len: u32) -> SealedEnvelope {
        let header = EnvelopeHeader {
            transaction_id: Uuid::from_u128(7),
            entity_id: "hospital-310101-001".into(),
            key_id: self.signer().key_id().to_string(),
            timestamp_ms: 1_767_225_600_000,
            content_type: ContentType::Json,
            dataset_category: "vaccination-record".into(),
        };
        let tx = header.transaction_id;
        let plaintext_sm3 = sm3(plaintext);
        let aad = join(&[
            b"vaxgate/envelope-payload".to_vec(),
            vec![2],
            tx.as_bytes().to_vec(),
            header.entity_id.as_bytes().to_vec(),
            header.key_id.as_bytes().to_vec(),
            header.timestamp_ms.to_be_bytes().to_vec(),
            b"json".to_vec(),
            header.dataset_category.as_bytes().to_vec(),
            plaintext_sm3.0.to_vec(),
            plaintext_len.to_be_bytes().to_vec(),
        ]);
        let (dk, nonce, knonce) = (Sm4Key::new([0x5a; 16]), [7u8; 12], [9u8; 12]);
        let kaad = join(&[
            b"vaxgate/kek-wrap".to_vec(),
            tx.as_bytes().to_vec(),
            KEK_NAME.as_bytes().to_vec(),
        ]);
        let mut wrapped = knonce.to_vec();
        wrapped.extend(sm4_gcm_seal(&Sm4Key::new(KEK), &knonce, &kaad, &[0x5a; 16]).unwrap());
        let mut env = SealedEnvelope {
            version: 2,
            header,
            plaintext_sm3,
            plaintext_len: Some(plaintext_len),
            nonce: nonce.to_vec(),
            ciphertext: sm4_gcm_seal(&dk, &nonce, &aad, body).unwrap(),
            recipients: vec![WrappedKey {
                kind: WrapKind::Sm4Kek,
                recipient: KEK_NAME.into(),
                wrapped,
            }],
            signature: None,
        };
        self.resign(&mut env);
        env
    }

    /// Signs `env` again (after a change), so that only what follows the
    /// signature check can refuse it.
    fn resign(&self, env: &mut SealedEnvelope) {
        env.signature = None;
        let sig = self.p.sign(&self.sender, &env.signed_bytes().unwrap()).unwrap();
        env.signature = Some(sig.to_der());
    }

    /// Opens `env` with the KEK.
    fn open(&self, env: &SealedEnvelope) -> Result<Vec<u8>, CryptoError> {
        open(&self.p, env, &self.signer(), RecipientKey::Kek(&self.kek)).map(|o| o.plaintext.to_vec())
    }

    /// The message of the `CryptoError::Envelope` opening `env` gives (any
    /// other outcome fails the test). It names the transaction.
    fn refusal(&self, env: &SealedEnvelope) -> String {
        env.verify(&self.signer()).unwrap();
        match self.open(env) {
            Err(CryptoError::Envelope(m)) => {
                let tx = format!("envelope {}: ", env.header.transaction_id);
                assert!(m.starts_with(&tx), "{m:?} does not name the transaction");
                m[tx.len()..].to_string()
            }
            other => panic!("expected an envelope error, got {other:?}"),
        }
    }
}

#[test]
fn the_version_written_is_2_and_both_are_read() {
    assert_eq!(ENVELOPE_VERSION, 2);
    assert_eq!(EnvelopeVersion::CURRENT, EnvelopeVersion::V2);
    assert_eq!(SUPPORTED_VERSIONS, [1, 2]);
    for v in 0..=u8::MAX {
        match EnvelopeVersion::from_u8(v) {
            Ok(ev) => assert_eq!(ev.as_u8(), v),
            Err(CryptoError::Envelope(m)) => {
                assert!(!SUPPORTED_VERSIONS.contains(&v));
                assert_eq!(m, format!("unsupported version {v} (this build reads 1 and 2)"));
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(MAX_PLAINTEXT_LEN, 64 * 1024 * 1024);
}

/// The refusals' builder is right: an envelope built by hand from the
/// document, over a good stream, opens.
#[test]
fn an_envelope_built_from_the_document_opens() {
    let w = world();
    for p in [&b""[..], PAYLOAD, GOLDEN] {
        let env = w.by_hand(&deflate(p), p, p.len() as u32);
        assert_eq!(w.open(&env).unwrap(), p);
        let back = SealedEnvelope::from_binary(&env.to_binary().unwrap()).unwrap();
        assert_eq!(w.open(&back).unwrap(), p);
    }
}

#[test]
fn signed_envelopes_round_trip_in_both_versions() {
    let w = world();
    let signer = w.signer();
    let noise: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let repetitive = GOLDEN.repeat(64);
    for plaintext in [&b""[..], PAYLOAD, GOLDEN, &noise, &repetitive] {
        for v in [EnvelopeVersion::V2, EnvelopeVersion::V1] {
            let env = seal_with_version(&w.p, &w.sender, meta(1), plaintext, &w.recipients(), v).unwrap();
            assert_eq!(env.version, v.as_u8());
            assert_eq!(env.plaintext_sm3, sm3(plaintext));
            match v {
                EnvelopeVersion::V1 => {
                    assert_eq!(env.plaintext_len, None);
                    assert_eq!(env.ciphertext.len(), plaintext.len() + 16);
                }
                EnvelopeVersion::V2 => {
                    assert_eq!(env.plaintext_len, Some(plaintext.len() as u32));
                }
            }
            for form in [
                SealedEnvelope::from_json(env.to_json().as_bytes()).unwrap(),
                SealedEnvelope::from_binary(&env.to_binary().unwrap()).unwrap(),
            ] {
                assert_eq!(form, env);
                for me in [RecipientKey::Sm2(&w.cdc), RecipientKey::Kek(&w.kek)] {
                    let o = open(&w.p, &form, &signer, me).unwrap();
                    assert_eq!(&o.plaintext[..], plaintext, "{v:?}, {} bytes", plaintext.len());
                }
            }
        }
    }
    // `seal` writes version 2.
    let env = seal(&w.p, &w.sender, meta(1), PAYLOAD, &w.recipients()).unwrap();
    assert_eq!((env.version, env.plaintext_len), (2, Some(43)));
}

#[test]
fn batch_records_round_trip_in_both_versions() {
    let w = world();
    let signer = w.signer();
    let cdc_pk = w.p.public_key(&w.cdc).unwrap();
    // BatchSealer (sm2-batch-kek): version 2 by default, 1 on request.
    let sealer = BatchSealer::new(&w.p, signer.key_id(), &[Recipient::Sm2(cdc_pk.clone())]).unwrap();
    let recs: Vec<SealedEnvelope> = (0..4u128)
        .map(|i| {
            if i == 3 {
                sealer
                    .seal_unsigned_with_version(meta(i), GOLDEN, EnvelopeVersion::V1)
                    .unwrap()
            } else {
                sealer.seal_unsigned(meta(i), GOLDEN).unwrap()
            }
        })
        .collect();
    let versions: Vec<u8> = recs.iter().map(|r| r.version).collect();
    assert_eq!(versions, [2, 2, 2, 1]);
    let batch = sealer.sign(&w.sender, 1_767_225_600_000, recs).unwrap();
    for o in open_batch_each(&w.p, &batch, &signer, RecipientKey::Sm2(&w.cdc)).unwrap() {
        assert_eq!(&o.unwrap().plaintext[..], GOLDEN);
    }
    let batch = secure_gateway::SignedBatch::from_binary(&batch.to_binary().unwrap()).unwrap();
    for i in 0..4 {
        let proof = batch.proof(i).unwrap();
        let proof = secure_gateway::RecordProof::from_json(proof.to_json().as_bytes()).unwrap();
        let o = proof.open(&w.p, &signer, RecipientKey::Sm2(&w.cdc)).unwrap();
        assert_eq!(&o.plaintext[..], GOLDEN);
    }
    // seal_unsigned (sm2 and sm4-kek entries per record) and sign_batch.
    let recs: Vec<SealedEnvelope> = (0..3u128)
        .map(|i| {
            let v = if i == 1 {
                EnvelopeVersion::V1
            } else {
                EnvelopeVersion::V2
            };
            let body = format!(r#"{{"i":{i}}}"#);
            seal_unsigned_with_version(&w.p, signer.key_id(), meta(i), body.as_bytes(), &w.recipients(), v).unwrap()
        })
        .collect();
    assert_eq!(recs[0].version, 2);
    let batch = sign_batch(&w.p, &w.sender, Uuid::from_u128(99), 0, recs).unwrap();
    for me in [RecipientKey::Sm2(&w.cdc), RecipientKey::Kek(&w.kek)] {
        for (i, o) in open_batch(&w.p, &batch, &signer, me).unwrap().iter().enumerate() {
            assert_eq!(&o.plaintext[..], format!(r#"{{"i":{i}}}"#).as_bytes());
        }
    }
    let r = seal_unsigned(&w.p, signer.key_id(), meta(9), PAYLOAD, &w.recipients()).unwrap();
    assert_eq!(r.version, 2);
}

#[test]
fn a_stream_that_inflates_to_more_than_plaintext_len_is_refused() {
    let w = world();
    let z = deflate(GOLDEN);
    let n = GOLDEN.len() as u32;
    for (len, signed) in [(n - 1, n - 1), (1, 1), (0, 0)] {
        let m = w.refusal(&w.by_hand(&z, GOLDEN, len));
        assert_eq!(
            m,
            format!("compressed plaintext: inflates to more than the signed plaintext_len {signed}")
        );
    }
}

#[test]
fn a_stream_that_inflates_to_fewer_bytes_is_refused() {
    let w = world();
    let z = deflate(GOLDEN);
    let n = GOLDEN.len();
    for extra in [1, 1000] {
        let m = w.refusal(&w.by_hand(&z, GOLDEN, (n + extra) as u32));
        assert_eq!(
            m,
            format!(
                "compressed plaintext: inflates to {n} bytes, fewer than the signed plaintext_len {}",
                n + extra
            )
        );
    }
    // The empty stream of an empty plaintext, declared longer.
    let m = w.refusal(&w.by_hand(&deflate(b""), b"", 5));
    assert_eq!(
        m,
        "compressed plaintext: inflates to 0 bytes, fewer than the signed plaintext_len 5"
    );
}

#[test]
fn a_malformed_stream_is_refused() {
    let w = world();
    let n = GOLDEN.len() as u32;
    let mut zlib = vec![0x78, 0x9c]; // the zlib wrapper is not raw DEFLATE
    zlib.extend(deflate(GOLDEN));
    for (what, body) in [
        ("a reserved block type (BTYPE 11)", vec![0x07, 0, 0, 0]),
        ("bytes that are no stream", vec![0xff; 40]),
        ("a zlib stream", zlib),
        (
            "a stored block whose NLEN is not ~LEN",
            vec![0x01, 0x05, 0x00, 0x00, 0x00, 1, 2, 3, 4, 5],
        ),
    ] {
        let m = w.refusal(&w.by_hand(&body, GOLDEN, n));
        assert!(
            m.starts_with("compressed plaintext: not a valid raw deflate stream")
                || m.starts_with("compressed plaintext: the deflate stream is cut short"),
            "{what}: {m}"
        );
    }
    // A stream cut short, before its final block.
    let z = deflate(GOLDEN);
    // (One byte inflates to at most 1032: that is refused before inflating.)
    for cut in [2, z.len() / 2, z.len() - 1] {
        let m = w.refusal(&w.by_hand(&z[..cut], GOLDEN, n));
        assert!(
            m.starts_with("compressed plaintext: the deflate stream is cut short: it ends after"),
            "cut at {cut}: {m}"
        );
    }
    // Named as malformed, not cut short.
    let m = w.refusal(&w.by_hand(&[0x07, 0, 0, 0], GOLDEN, n));
    assert!(
        m.starts_with("compressed plaintext: not a valid raw deflate stream"),
        "{m}"
    );
}

#[test]
fn bytes_after_the_end_of_the_stream_are_refused() {
    let w = world();
    let z = deflate(GOLDEN);
    let n = GOLDEN.len() as u32;
    for tail in [&[0u8][..], &[0x03, 0x00], &deflate(b"more"), &[0xff; 100]] {
        let body = [&z[..], tail].concat();
        let m = w.refusal(&w.by_hand(&body, GOLDEN, n));
        assert_eq!(
            m,
            format!(
                "compressed plaintext: {} trailing bytes after the end of the deflate stream",
                tail.len()
            )
        );
    }
}

/// `plaintext_len` above 64 MiB is refused by every parse and by `open`
/// before anything is allocated; a declared length more than the stream
/// could inflate to (1032:1) is refused by `open` before allocating it.
#[test]
fn plaintext_len_above_the_maximum_is_refused() {
    let w = world();
    let max = MAX_PLAINTEXT_LEN;
    let env = w.by_hand(&deflate(PAYLOAD), PAYLOAD, max + 1);
    let want = "plaintext_len 67108865 exceeds the maximum 67108864 (64 MiB)";
    let err = |r: Result<SealedEnvelope, CryptoError>| match r {
        Err(CryptoError::Envelope(m)) => m,
        other => panic!("{other:?}"),
    };
    assert!(matches!(env.check_shape(), Err(CryptoError::Envelope(m)) if m == want));
    assert!(err(SealedEnvelope::from_json(env.to_json().as_bytes())).ends_with(want));
    let mut signed = env.signed_bytes().unwrap();
    assert!(err(SealedEnvelope::from_signed_bytes(&signed)).ends_with(want));
    signed.extend((env.signature.clone().unwrap().len() as u32).to_be_bytes());
    signed.extend(env.signature.clone().unwrap());
    assert!(err(SealedEnvelope::from_binary(&signed)).ends_with(want));
    assert!(matches!(w.open(&env), Err(CryptoError::Envelope(m)) if m == want));
    // The maximum itself parses, and is refused when opened: 45 bytes of
    // DEFLATE never inflate to 64 MiB.
    let env = w.by_hand(&deflate(PAYLOAD), PAYLOAD, max);
    env.check_shape().unwrap();
    let z = deflate(PAYLOAD).len();
    assert_eq!(
        w.refusal(&env),
        format!("compressed plaintext: the signed plaintext_len {max} is more than {z} deflate bytes can inflate to")
    );
    // Exactly at the 1032:1 bound: not refused for that (the stream is
    // still too short).
    let env = w.by_hand(&deflate(PAYLOAD), PAYLOAD, 1032 * z as u32);
    assert!(w.refusal(&env).contains("fewer than the signed plaintext_len"));
    // Sealing refuses a plaintext above the maximum in version 2.
    let big = vec![0u8; max as usize + 1];
    match seal(&w.p, &w.sender, meta(1), &big, &w.recipients()) {
        Err(CryptoError::Envelope(m)) => {
            assert_eq!(m, "a plaintext of 67108865 bytes exceeds the maximum 67108864 (64 MiB)")
        }
        other => panic!("{other:?}"),
    }
}

/// What compresses best still opens: 1 MiB of zeros (close to DEFLATE's
/// largest ratio) is under the 1032:1 bound.
#[test]
fn a_highly_compressible_plaintext_opens() {
    let w = world();
    let zeros = vec![0u8; 1 << 20];
    let env = seal(&w.p, &w.sender, meta(1), &zeros, &w.recipients()).unwrap();
    let z = env.ciphertext.len() - 16;
    println!(
        "1 MiB of zeros: {z} bytes of deflate ({:.0}:1)",
        (1 << 20) as f64 / z as f64
    );
    assert!(z < 2000, "{z}");
    assert_eq!(w.open(&env).unwrap(), zeros);
}

#[test]
fn a_changed_ciphertext_or_plaintext_len_fails_the_gcm_tag() {
    let w = world();
    let env = seal(&w.p, &w.sender, meta(1), GOLDEN, &w.recipients()).unwrap();
    for i in [0, env.ciphertext.len() / 2, env.ciphertext.len() - 1] {
        let mut bad = env.clone();
        bad.ciphertext[i] ^= 1;
        w.resign(&mut bad);
        match w.open(&bad) {
            Err(CryptoError::Cipher(m)) => assert!(m.contains("sm4-gcm authentication failed"), "{m}"),
            other => panic!("byte {i}: {other:?}"),
        }
    }
    // plaintext_len is in the associated data: changed and signed again,
    // the tag no longer verifies (before any inflating).
    let mut bad = env.clone();
    bad.plaintext_len = Some(GOLDEN.len() as u32 - 1);
    w.resign(&mut bad);
    assert!(matches!(w.open(&bad), Err(CryptoError::Cipher(_))));
    // Not signed again: the signature refuses it first.
    let mut bad = env.clone();
    bad.plaintext_len = Some(GOLDEN.len() as u32 + 1);
    assert!(matches!(w.open(&bad), Err(CryptoError::BadSignature { .. })));
}

/// A stream that inflates to exactly `plaintext_len` bytes of something
/// else: caught by the plaintext's SM3, as in version 1.
#[test]
fn another_plaintext_of_the_right_length_fails_the_sm3() {
    let w = world();
    let mut other = GOLDEN.to_vec();
    other[10] ^= 1;
    let env = w.by_hand(&deflate(&other), GOLDEN, GOLDEN.len() as u32);
    assert!(matches!(w.open(&env), Err(CryptoError::DigestMismatch(_))));
}

#[test]
fn the_json_form_carries_plaintext_len_in_version_2_only() {
    let w = world();
    let v2 = seal(&w.p, &w.sender, meta(1), PAYLOAD, &w.recipients())
        .unwrap()
        .to_json();
    let v1 = seal_with_version(&w.p, &w.sender, meta(1), PAYLOAD, &w.recipients(), EnvelopeVersion::V1)
        .unwrap()
        .to_json();
    assert!(v2.starts_with(r#"{"version":2,"header":{"#), "{v2}");
    assert!(v2.contains(r#"","plaintext_len":43,"nonce":""#), "{v2}");
    assert!(v1.starts_with(r#"{"version":1,"header":{"#), "{v1}");
    assert!(!v1.contains("plaintext_len"), "{v1}");
    let refused = |json: &str, want: &str| match SealedEnvelope::from_json(json.as_bytes()) {
        Err(CryptoError::Envelope(m)) => assert!(m.contains(want), "{m:?} does not say {want:?}"),
        other => panic!("{json}: {other:?}"),
    };
    // Version 1 with the field, version 2 without it.
    refused(
        &v1.replace(r#","nonce":"#, r#","plaintext_len":43,"nonce":"#),
        "a version-1 envelope has no plaintext_len",
    );
    refused(
        &v2.replace(r#","plaintext_len":43"#, ""),
        "a version-2 envelope needs a plaintext_len",
    );
    // Not a u32 (null is not "absent").
    for bad in ["null", "-1", "43.0", "\"43\"", "4294967296"] {
        refused(
            &v2.replace(r#""plaintext_len":43"#, &format!(r#""plaintext_len":{bad}"#)),
            "not an envelope json",
        );
    }
    refused(
        &v2.replace(r#""plaintext_len":43"#, r#""plaintext_len":67108865"#),
        "plaintext_len 67108865 exceeds the maximum 67108864 (64 MiB)",
    );
    // Unknown fields stay refused; a second plaintext_len too.
    refused(
        &v2.replace(r#""plaintext_len":43"#, r#""plaintext_length":43"#),
        "unknown field",
    );
    refused(
        &v2.replace(r#""plaintext_len":43"#, r#""plaintext_len":43,"plaintext_len":43"#),
        "duplicate field",
    );
}

/// The golden vaccination message as a batch record (`sm2-batch-kek`, as the
/// agent seals it: entity `3201020001`, category `vaccination`) in both
/// versions: `cargo test -p secure-gateway --test envelope_v2 --
/// --nocapture golden` prints the sizes `docs/envelope.md` quotes (give or
/// take a byte: the SM2 ciphertext's DER length varies).
#[test]
fn the_golden_vaccination_record_is_smaller_in_version_2() {
    let w = world();
    let sealer = BatchSealer::new(
        &w.p,
        w.signer().key_id(),
        &[Recipient::Sm2(w.p.public_key(&w.cdc).unwrap())],
    )
    .unwrap();
    let meta = EnvelopeMeta {
        entity_id: "3201020001".into(),
        dataset_category: "vaccination".into(),
        ..meta(1)
    };
    let mut sizes = Vec::new();
    for v in [EnvelopeVersion::V1, EnvelopeVersion::V2] {
        let r = sealer.seal_unsigned_with_version(meta.clone(), GOLDEN, v).unwrap();
        let (signed, json) = (r.signed_bytes().unwrap().len(), r.to_json().len());
        println!(
            "golden vaccination ({} bytes), batch record {v:?}: ciphertext {} bytes, signed bytes {signed}, json {json}",
            GOLDEN.len(),
            r.ciphertext.len()
        );
        sizes.push((r.ciphertext.len(), signed));
    }
    let (ct1, signed1) = sizes[0];
    let (ct2, signed2) = sizes[1];
    assert_eq!(ct1, GOLDEN.len() + 16);
    // The compressed message is under half its size; the record gains the
    // 8-byte plaintext length field.
    assert!(ct2 * 2 < ct1, "{ct2} vs {ct1}");
    assert_eq!(signed1 - ct1 + 8, signed2 - ct2);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any plaintext, compressible or not, seals in version 2 and opens to
    /// itself.
    #[test]
    fn any_plaintext_round_trips(
        noise in proptest::collection::vec(any::<u8>(), 0..3000),
        word in "[a-z]{1,12}",
        reps in 0usize..400,
    ) {
        let w = fx();
        let mut plaintext = noise;
        plaintext.extend(word.repeat(reps).as_bytes());
        let env = seal(&w.p, &w.sender, meta(1), &plaintext, &[Recipient::Kek(w.kek.clone())]).unwrap();
        prop_assert_eq!(env.plaintext_len, Some(plaintext.len() as u32));
        prop_assert_eq!(inflate(&deflate_of(w, &env)), plaintext.clone());
        prop_assert_eq!(w.open(&env).unwrap(), plaintext);
    }

    /// A signed, GCM-valid envelope over a changed DEFLATE stream never
    /// panics and never opens to anything but the plaintext: it is refused
    /// as an envelope error (the stream) or by the SM3.
    #[test]
    fn a_changed_stream_never_opens_to_another_plaintext(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4),
        len_delta in prop_oneof![3 => Just(0i64), 1 => -3i64..=3],
    ) {
        let w = fx();
        let mut z = deflate(PAYLOAD);
        for (pos, op, b) in edits {
            if z.is_empty() {
                z.push(b);
                continue;
            }
            let i = pos % z.len();
            // Mostly one-bit flips: most give another valid stream of
            // another 43-byte plaintext, which only the SM3 catches.
            match op % 4 {
                0 | 1 => z[i] ^= 1 << (b % 8),
                2 => { z.remove(i); }
                _ => z.insert(i, b),
            }
        }
        let len = (PAYLOAD.len() as i64 + len_delta) as u32;
        match w.open(&w.by_hand(&z, PAYLOAD, len)) {
            Ok(p) => prop_assert_eq!(p, PAYLOAD),
            Err(CryptoError::Envelope(_) | CryptoError::DigestMismatch(_)) => {}
            Err(e) => prop_assert!(false, "{e:?}"),
        }
    }
}

/// The SM4-GCM plaintext of a version-2 envelope sealed for the KEK: what
/// a partner decrypts before inflating.
fn deflate_of(w: &World, env: &SealedEnvelope) -> Vec<u8> {
    let tx = env.header.transaction_id;
    let kaad = join(&[
        b"vaxgate/kek-wrap".to_vec(),
        tx.as_bytes().to_vec(),
        KEK_NAME.as_bytes().to_vec(),
    ]);
    let wrapped = &env
        .recipients
        .iter()
        .find(|r| r.kind == WrapKind::Sm4Kek)
        .unwrap()
        .wrapped;
    let kn: [u8; 12] = wrapped[..12].try_into().unwrap();
    let dk = w.p.kek_open(&w.kek, &kn, &kaad, &wrapped[12..]).unwrap();
    let aad = join(&[
        b"vaxgate/envelope-payload".to_vec(),
        vec![env.version],
        tx.as_bytes().to_vec(),
        env.header.entity_id.as_bytes().to_vec(),
        env.header.key_id.as_bytes().to_vec(),
        env.header.timestamp_ms.to_be_bytes().to_vec(),
        env.header.content_type.as_str().as_bytes().to_vec(),
        env.header.dataset_category.as_bytes().to_vec(),
        env.plaintext_sm3.0.to_vec(),
        env.plaintext_len.unwrap().to_be_bytes().to_vec(),
    ]);
    let nonce: [u8; 12] = env.nonce.clone().try_into().unwrap();
    secure_gateway::sym::sm4_gcm_open(&Sm4Key::from_slice(&dk).unwrap(), &nonce, &aad, &env.ciphertext)
        .unwrap()
        .to_vec()
}

/// One world for the property tests (key generation is not what they test).
fn fx() -> &'static World {
    static F: std::sync::OnceLock<World> = std::sync::OnceLock::new();
    F.get_or_init(world)
}
