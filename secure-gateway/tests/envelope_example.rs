//! The worked examples of `docs/envelope.md`: fully deterministic envelopes
//! (fixed signer key, fixed KEK, fixed "random" bytes) whose canonical bytes,
//! signature and JSON are pinned here, in envelope version 1 (the first two
//! examples, written on purpose in that version) and version 2. If a test
//! fails, the encoding changed: that is a new version, never an edit of one
//! in use.
//!
//! `cargo test -p secure-gateway --test envelope_example -- --nocapture`
//! prints the values.
#![allow(clippy::unwrap_used)] // tests may panic on setup failures

mod support;

use secure_gateway::envelope::{EnvelopeVersion, seal_unsigned_with_version, seal_with_version};
use secure_gateway::{
    ContentType, CryptoProvider, EnvelopeMeta, KeyHandle, Recipient, RecipientKey, SealedEnvelope, Sm3Digest, merkle,
    open, seal, sign_batch,
};
use support::TestProvider;
use support::canon::fields;

/// Signer private key: SM3("vaxgate example signer") as the scalar.
fn example() -> (TestProvider, KeyHandle, KeyHandle) {
    let e = support::worked_example();
    (e.p, e.signer, e.kek)
}

fn meta(tx: &str) -> EnvelopeMeta {
    EnvelopeMeta {
        transaction_id: tx.parse().unwrap(),
        entity_id: "hospital-310101-001".into(),
        timestamp_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
        content_type: ContentType::Json,
        dataset_category: "vaccination-record".into(),
    }
}

const PAYLOAD: &[u8] = br#"{"vaccine":"HepB","lot":"202601A","dose":1}"#;

const SIGNER_PUBLIC: &str = concat!(
    "0463dc1cdd28ff6b041374eb5e363b21256bd8a04bccecf83597519ecc6c347469980f1405d7da01dac4fe008e4197a1",
    "2862838eaaa0063784fd17b6380a7aa289",
);
const SIGNED_BYTES: &str = concat!(
    "00000017766178676174652f7365616c65642d656e76656c6f70650000000101000000105f0c1e2a3b4d4c5e8f607182",
    "93a4b5c600000013686f73706974616c2d3331303130312d303031000000206432306231353438326436343337363464",
    "613936343239383231366366343232000000080000019b76daa800000000046a736f6e0000001276616363696e617469",
    "6f6e2d7265636f72640000002027ad142a87a3db95c7adac309a3de6385831446a68d57f32a16f875900aa867e000000",
    "0c202122232425262728292a2b0000003bc8effd0d8f72e180e9a9ad2143fdca23328ce365052306a5e896e899ff28bf",
    "8f5980c2faa9a77670b3d02a0b37fa1eb78cd4b132d5a401973405c9000000040000000100000007736d342d6b656b00",
    "00000b6578616d706c652d6b656b0000002c303132333435363738393a3bf6027087d059befe3dcbdb5596273e3cf91c",
    "7e825c7aae6f0938c26cc541611e",
);
const SIGNATURE_DER: &str = concat!(
    "30450220665e64663542691db7bb5224cc2c3e6892561d54bf4e321eba1f8f3a314d6e350221009aac77999830c79b7b",
    "42ac0d8df8d4f0b81ca1e53d0db5b7318c5e6d29f3940e",
);
const ENVELOPE_JSON: &str = r#"{"version":1,"header":{"transaction_id":"5f0c1e2a-3b4d-4c5e-8f60-718293a4b5c6","entity_id":"hospital-310101-001","key_id":"d20b15482d643764da964298216cf422","timestamp_ms":1767225600000,"content_type":"json","dataset_category":"vaccination-record"},"plaintext_sm3":"27ad142a87a3db95c7adac309a3de6385831446a68d57f32a16f875900aa867e","nonce":"ICEiIyQlJicoKSor","ciphertext":"yO/9DY9y4YDpqa0hQ/3KIzKM42UFIwal6Jbomf8ov49ZgML6qad2cLPQKgs3+h63jNSxMtWkAZc0Bck=","recipients":[{"kind":"sm4-kek","recipient":"example-kek","wrapped":"MDEyMzQ1Njc4OTo79gJwh9BZvv49y9tVlic+PPkcfoJceq5vCTjCbMVBYR4="}],"signature":"MEUCIGZeZGY1Qmkdt7tSJMwsPmiSVh1Uv04yHrofjzoxTW41AiEAmqx3mZgwx5t7QqwNjfjU8LgcoeU9DbW3MYxebSnzlA4="}"#;
const BATCH_ROOT: &str = "641f08cde43ef23cbda25fe88f9fbb050ff4bfaa42599e549b33c2d3b5427fe7";
const BATCH_SIGNED_BYTES: &str = concat!(
    "00000014766178676174652f7369676e65642d6261746368000000010100000010000000000000400080000000000000",
    "ba000000206432306231353438326436343337363464613936343239383231366366343232000000080000019b76daa8",
    "0000000008000000000000000200000020641f08cde43ef23cbda25fe88f9fbb050ff4bfaa42599e549b33c2d3b5427f",
    "e7",
);

#[test]
fn worked_example_is_stable() {
    let (p, signer, kek) = example();
    let vk = p.public_key(&signer).unwrap();
    let env = seal_with_version(
        &p,
        &signer,
        meta("5f0c1e2a-3b4d-4c5e-8f60-718293a4b5c6"),
        PAYLOAD,
        &[Recipient::Kek(kek.clone())],
        EnvelopeVersion::V1,
    )
    .unwrap();
    let tbs = env.signed_bytes().unwrap();
    println!("signer public key (SEC1): {}", hex::encode(vk.to_sec1()));
    println!("signer key id: {}", vk.key_id());
    println!("signer SPKI PEM:\n{}", vk.to_public_key_pem());
    println!("signed bytes ({} bytes): {}", tbs.len(), hex::encode(&tbs));
    for (i, f) in fields(&tbs).iter().enumerate() {
        println!("  field {i:2}: len {:3}  {}", f.len(), hex::encode(f));
    }
    println!("signature (DER): {}", hex::encode(env.signature.as_ref().unwrap()));
    println!("record digest SM3(signed bytes): {}", env.record_digest().unwrap());
    println!("envelope JSON: {}", env.to_json());

    // A two-record batch by the same signer.
    let kid = vk.key_id().to_string();
    let recs: Vec<SealedEnvelope> = [
        "00000000-0000-4000-8000-000000000001",
        "00000000-0000-4000-8000-000000000002",
    ]
    .iter()
    .map(|tx| {
        seal_unsigned_with_version(
            &p,
            &kid,
            meta(tx),
            PAYLOAD,
            &[Recipient::Kek(kek.clone())],
            EnvelopeVersion::V1,
        )
        .unwrap()
    })
    .collect();
    let leaves: Vec<Sm3Digest> = recs
        .iter()
        .map(|r| merkle::leaf_hash(&r.record_digest().unwrap().0))
        .collect();
    let batch = sign_batch(
        &p,
        &signer,
        "00000000-0000-4000-8000-0000000000ba".parse().unwrap(),
        1_767_225_600_000,
        recs,
    )
    .unwrap();
    let bsb = batch.header.signed_bytes().unwrap();
    for (i, (r, l)) in batch.records.iter().zip(&leaves).enumerate() {
        println!(
            "batch record {i}: record digest {} leaf {}",
            r.record_digest().unwrap(),
            l
        );
    }
    println!("batch root: {}", batch.header.root);
    println!("batch signed bytes ({} bytes): {}", bsb.len(), hex::encode(&bsb));
    println!("batch signature (DER): {}", hex::encode(&batch.header.signature));
    println!("record 1 proof JSON: {}", batch.proof(1).unwrap().to_json());

    // Everything verifies and opens.
    env.verify(&vk).unwrap();
    assert_eq!(
        &open(&p, &env, &vk, RecipientKey::Kek(&kek)).unwrap().plaintext[..],
        PAYLOAD
    );
    batch.verify(&vk).unwrap();
    batch.proof(1).unwrap().verify(&vk).unwrap();
    assert_eq!(batch.header.root, merkle::node_hash(&leaves[0], &leaves[1]));

    // The pinned values.
    assert_eq!(hex::encode(vk.to_sec1()), SIGNER_PUBLIC);
    assert_eq!(hex::encode(&tbs), SIGNED_BYTES);
    assert_eq!(hex::encode(env.signature.as_ref().unwrap()), SIGNATURE_DER);
    assert_eq!(env.to_json(), ENVELOPE_JSON);
    assert_eq!(batch.header.root.to_hex(), BATCH_ROOT);
    assert_eq!(hex::encode(&bsb), BATCH_SIGNED_BYTES);
}

/// The first example's version-1 envelope, as pinned (JSON, and the
/// binary form of its signed bytes and signature), still verifies and
/// opens: version 1 stays readable.
#[test]
fn the_pinned_version_1_example_still_opens() {
    let (p, signer, kek) = example();
    let vk = p.public_key(&signer).unwrap();
    let from_json = SealedEnvelope::from_json(ENVELOPE_JSON.as_bytes()).unwrap();
    let mut binary = hex::decode(SIGNED_BYTES).unwrap();
    let sig = hex::decode(SIGNATURE_DER).unwrap();
    binary.extend((sig.len() as u32).to_be_bytes());
    binary.extend(&sig);
    let from_binary = SealedEnvelope::from_binary(&binary).unwrap();
    assert_eq!(from_binary, from_json);
    for env in [from_json, from_binary] {
        assert_eq!((env.version, env.plaintext_len), (1, None));
        env.verify(&vk).unwrap();
        let o = open(&p, &env, &vk, RecipientKey::Kek(&kek)).unwrap();
        assert_eq!(&o.plaintext[..], PAYLOAD);
        assert_eq!(hex::encode(env.signed_bytes().unwrap()), SIGNED_BYTES);
    }
}

/// The version-2 worked example of `docs/envelope.md`: the first example
/// (same keys, header, plaintext and "random" bytes) sealed in version 2,
/// as `seal` writes it. Pins the signed bytes, the signature, the JSON, the
/// SM4-GCM associated data and plaintext (the raw DEFLATE stream), and
/// checks that the document quotes them.
#[test]
fn worked_example_v2_is_stable() {
    let (p, signer, kek) = example();
    let vk = p.public_key(&signer).unwrap();
    let env = seal(
        &p,
        &signer,
        meta("5f0c1e2a-3b4d-4c5e-8f60-718293a4b5c6"),
        PAYLOAD,
        &[Recipient::Kek(kek.clone())],
    )
    .unwrap();
    let tbs = env.signed_bytes().unwrap();
    let bin = env.to_binary().unwrap();
    println!("v2 signed bytes ({} bytes): {}", tbs.len(), hex::encode(&tbs));
    for (i, f) in fields(&tbs).iter().enumerate() {
        println!("  field {i:2}: len {:3}  {}", f.len(), hex::encode(f));
    }
    println!("v2 signature (DER): {}", hex::encode(env.signature.as_ref().unwrap()));
    println!("v2 record digest: {}", env.record_digest().unwrap());
    println!("v2 envelope JSON ({} bytes): {}", env.to_json().len(), env.to_json());
    println!("v2 binary form: {} bytes, SM3 {}", bin.len(), secure_gateway::sm3(&bin));

    // What a partner does by hand with the documented values: the data key
    // and nonce are the example's fixed "random" bytes.
    let aad = support::canon::join(&[
        b"vaxgate/envelope-payload".to_vec(),
        vec![2],
        env.header.transaction_id.as_bytes().to_vec(),
        env.header.entity_id.as_bytes().to_vec(),
        env.header.key_id.as_bytes().to_vec(),
        env.header.timestamp_ms.to_be_bytes().to_vec(),
        b"json".to_vec(),
        env.header.dataset_category.as_bytes().to_vec(),
        env.plaintext_sm3.0.to_vec(),
        (PAYLOAD.len() as u32).to_be_bytes().to_vec(),
    ]);
    let dk = secure_gateway::Sm4Key::new(std::array::from_fn(|i| 0x10 + i as u8));
    let nonce: [u8; 12] = std::array::from_fn(|i| 0x20 + i as u8);
    assert_eq!(env.nonce, nonce);
    let deflated = secure_gateway::sym::sm4_gcm_open(&dk, &nonce, &aad, &env.ciphertext).unwrap();
    println!("v2 AAD ({} bytes): {}", aad.len(), hex::encode(&aad));
    println!(
        "v2 SM4-GCM plaintext, raw DEFLATE ({} bytes): {}",
        deflated.len(),
        hex::encode(&deflated[..])
    );
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(&deflated[..]), &mut inflated).unwrap();
    assert_eq!(inflated, PAYLOAD);

    // Everything verifies and opens, from every form.
    env.verify(&vk).unwrap();
    for form in [
        SealedEnvelope::from_json(env.to_json().as_bytes()).unwrap(),
        SealedEnvelope::from_binary(&bin).unwrap(),
    ] {
        assert_eq!(form, env);
        let o = open(&p, &form, &vk, RecipientKey::Kek(&kek)).unwrap();
        assert_eq!(&o.plaintext[..], PAYLOAD);
    }

    // The pinned values.
    assert_eq!((env.version, env.plaintext_len), (2, Some(43)));
    assert_eq!(hex::encode(&tbs), V2_SIGNED_BYTES);
    assert_eq!(hex::encode(env.signature.as_ref().unwrap()), V2_SIGNATURE_DER);
    assert_eq!(env.record_digest().unwrap().to_hex(), V2_RECORD_DIGEST);
    assert_eq!(env.to_json(), V2_ENVELOPE_JSON);
    assert_eq!(hex::encode(&aad), V2_AAD);
    assert_eq!(hex::encode(&deflated[..]), V2_DEFLATED);
    assert_eq!(
        (bin.len(), env.to_json().len()),
        (V2_BINARY_LEN, V2_ENVELOPE_JSON.len())
    );
    assert_eq!(secure_gateway::sm3(&bin).to_hex(), V2_BINARY_SM3);

    // The document quotes them (its hex wrapped at 96 digits a line).
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/envelope.md")).unwrap();
    let wrapped = |h: &str| {
        h.as_bytes()
            .chunks(96)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (what, v) in [
        ("signed bytes", wrapped(V2_SIGNED_BYTES)),
        ("signature", V2_SIGNATURE_DER.to_string()),
        ("record digest", V2_RECORD_DIGEST.to_string()),
        ("JSON", V2_ENVELOPE_JSON.to_string()),
        ("associated data", wrapped(V2_AAD)),
        ("deflate stream", V2_DEFLATED.to_string()),
        ("binary form SM3", V2_BINARY_SM3.to_string()),
    ] {
        assert!(
            doc.contains(&v),
            "docs/envelope.md does not quote the version-2 example's {what}:\n{v}"
        );
    }
}

/// The version-2 example's signed bytes (356 bytes; field 9, `0000002b`,
/// is the plaintext length 43).
const V2_SIGNED_BYTES: &str = concat!(
    "00000017766178676174652f7365616c65642d656e76656c6f70650000000102000000105f0c1e2a3b4d4c5e8f607182",
    "93a4b5c600000013686f73706974616c2d3331303130312d303031000000206432306231353438326436343337363464",
    "613936343239383231366366343232000000080000019b76daa800000000046a736f6e0000001276616363696e617469",
    "6f6e2d7265636f72640000002027ad142a87a3db95c7adac309a3de6385831446a68d57f32a16f875900aa867e000000",
    "040000002b0000000c202122232425262728292a2b00000039189ba127a05f4622c7de2551f9d09711427290c3a37825",
    "ed46a85467c514934f87381cfc6678727f89f31dff2c7adc7aab3a4a7d7f9505a1a4000000040000000100000007736d",
    "342d6b656b0000000b6578616d706c652d6b656b0000002c303132333435363738393a3bf6027087d059befe3dcbdb55",
    "96273e3cf91c7e825c7aae6f0938c26cc541611e",
);
const V2_SIGNATURE_DER: &str = concat!(
    "30440220369b79ef6ecc425b96a2102dd08fa3e8ac32225ff5fb16cd379b8564fa6ceb14022023e41ae9fb0c051a25cc",
    "4190f4ca3ca8ec4c15c73cd569b7213d4355e4d80dab",
);
const V2_RECORD_DIGEST: &str = "2b974f0df46c3834dbf51cae6a20f24b816435db8103fb36a020386a63c6ef97";
const V2_ENVELOPE_JSON: &str = r#"{"version":2,"header":{"transaction_id":"5f0c1e2a-3b4d-4c5e-8f60-718293a4b5c6","entity_id":"hospital-310101-001","key_id":"d20b15482d643764da964298216cf422","timestamp_ms":1767225600000,"content_type":"json","dataset_category":"vaccination-record"},"plaintext_sm3":"27ad142a87a3db95c7adac309a3de6385831446a68d57f32a16f875900aa867e","plaintext_len":43,"nonce":"ICEiIyQlJicoKSor","ciphertext":"GJuhJ6BfRiLH3iVR+dCXEUJykMOjeCXtRqhUZ8UUk0+HOBz8Znhyf4nzHf8setx6qzpKfX+VBaGk","recipients":[{"kind":"sm4-kek","recipient":"example-kek","wrapped":"MDEyMzQ1Njc4OTo79gJwh9BZvv49y9tVlic+PPkcfoJceq5vCTjCbMVBYR4="}],"signature":"MEQCIDabee9uzEJblqIQLdCPo+isMiJf9fsWzTebhWT6bOsUAiAj5Brp+wwFGiXMQZD0yjyo7EwVxzzVabchPUNV5NgNqw=="}"#;
/// The SM4-GCM associated data of the version-2 example (198 bytes).
const V2_AAD: &str = concat!(
    "00000018766178676174652f656e76656c6f70652d7061796c6f61640000000102000000105f0c1e2a3b4d4c5e8f6071",
    "8293a4b5c600000013686f73706974616c2d3331303130312d3030310000002064323062313534383264363433373634",
    "64613936343239383231366366343232000000080000019b76daa800000000046a736f6e0000001276616363696e6174",
    "696f6e2d7265636f72640000002027ad142a87a3db95c7adac309a3de6385831446a68d57f32a16f875900aa867e0000",
    "00040000002b",
);
/// What SM4-GCM encrypts in the version-2 example: the raw DEFLATE of the
/// 43-byte plaintext (41 bytes, miniz_oxide level 6).
const V2_DEFLATED: &str = "ab562a4b4c4ececc4b55b252f2482d7052d251cac92f01728c0c8ccc0c0c1d81fc94fc62a0ac612d00";
/// The binary form: the signed bytes and `00000046` ‖ the 70-byte signature.
const V2_BINARY_LEN: usize = 430;
const V2_BINARY_SM3: &str = "94728ef6b2af1391f927e6c4bb66aa1ddd0387adf2c9995595bb2f9a9fb70af0";

/// The second worked example of `docs/envelope.md`: a two-record batch
/// sealed by a `BatchSealer` for one SM2 recipient (the gateway, private
/// scalar SM3("vaxgate example gateway")): one batch KEK, SM2-encrypted once
/// with a fixed k, each data key wrapped under it. The first example above
/// is unchanged by this one.
#[test]
fn batch_kek_example_is_stable() {
    let e = support::worked_example();
    let batch = e.batch();
    let support::Example {
        p, signer, gateway: gw, ..
    } = e;
    let vk = p.public_key(&signer).unwrap();
    let gw_pk = p.public_key(&gw).unwrap();
    println!("gateway public key (SEC1): {}", hex::encode(gw_pk.to_sec1()));
    println!("gateway key id: {}", gw_pk.key_id());
    for (i, r) in batch.records.iter().enumerate() {
        let tbs = r.signed_bytes().unwrap();
        println!(
            "batch-kek record {i} signed bytes ({} bytes): {}",
            tbs.len(),
            hex::encode(&tbs)
        );
        for (j, f) in fields(&tbs).iter().enumerate() {
            println!("  field {j:2}: len {:3}  {}", f.len(), hex::encode(f));
        }
        println!("  wrapped (sm2-batch-kek):");
        for (j, f) in fields(&r.recipients[0].wrapped).iter().enumerate() {
            println!("    part {j}: len {:3}  {}", f.len(), hex::encode(f));
        }
        println!("  record digest: {}", r.record_digest().unwrap());
    }
    println!("batch-kek root: {}", batch.header.root);
    println!(
        "batch-kek batch signature (DER): {}",
        hex::encode(&batch.header.signature)
    );
    println!("batch-kek record 0 JSON: {}", batch.records[0].to_json());

    // Both records open, together (one SM2 decryption) and alone.
    batch.verify(&vk).unwrap();
    for o in secure_gateway::batch::open_batch_each(&p, &batch, &vk, RecipientKey::Sm2(&gw)).unwrap() {
        assert_eq!(&o.unwrap().plaintext[..], PAYLOAD);
    }
    let o = batch.proof(1).unwrap().open(&p, &vk, RecipientKey::Sm2(&gw)).unwrap();
    assert_eq!(&o.plaintext[..], PAYLOAD);
    // The SM2-encrypted KEK decrypts (with OpenSSL too: it is GM/T 0009 DER).
    let parts = fields(&batch.records[0].recipients[0].wrapped);
    assert_eq!(parts[1], fields(&batch.records[1].recipients[0].wrapped)[1]);
    assert_eq!(&p.sm2_decrypt(&gw, &parts[1]).unwrap()[..], BATCH_KEK);

    // The pinned values.
    assert_eq!(hex::encode(gw_pk.to_sec1()), GATEWAY_PUBLIC);
    assert_eq!(
        hex::encode(batch.records[0].signed_bytes().unwrap()),
        BATCH_KEK_RECORD0_SIGNED_BYTES
    );
    assert_eq!(batch.header.root.to_hex(), BATCH_KEK_ROOT);
    assert_eq!(hex::encode(&batch.header.signature), BATCH_KEK_SIGNATURE_DER);
}

const BATCH_KEK: &[u8] = b"\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f";
const GATEWAY_PUBLIC: &str = concat!(
    "042158f6fcdff33f4a281f9a75edbec03c7adbe5b728cf1b29ac8e7ba529eca173a0f65c95dc527c789f7d737453a956",
    "8345facea58b8e7de4a5a9bf038d9744e6",
);
const BATCH_KEK_RECORD0_SIGNED_BYTES: &str = concat!(
    "00000017766178676174652f7365616c65642d656e76656c6f7065000000010100000010000000000000400080000000",
    "0000001100000013686f73706974616c2d3331303130312d303031000000206432306231353438326436343337363464",
    "613936343239383231366366343232000000080000019b76daa800000000046a736f6e0000001276616363696e617469",
    "6f6e2d7265636f72640000002027ad142a87a3db95c7adac309a3de6385831446a68d57f32a16f875900aa867e000000",
    "0c303132333435363738393a3b0000003beca72c32feabc912db95878a80a6bd51d3a1512f04dc9a8cb2a262b9fcf30f",
    "fcd2f88f8e179374fae0d2be7584e1538dcbab90bd2bbb79d7d2117400000004000000010000000d736d322d62617463",
    "682d6b656b000000203431303761333937323531313837323035343862353033656333326461303230000000c4000000",
    "10000000000000400080000000000000bb0000007c307a022100f7680319ece0c244bb021ad24f087b7b51bfefbf7d20",
    "9ddc38342053e2914ecf022100dd94e2fb4aa045e4077b93c9eda3369b48dd875cead091fd36c39277df7062ba0420f2",
    "9d23b2c58595299fb8f8bcedd2c622e105d947c34b76cfc7c632ab99550d640410c92946bc33cd33ed469e09e90c7483",
    "eb0000002c404142434445464748494a4b5181a7e8acd9d82316bae2652959c43e99293d153d088f3ab00505bd48fe88",
    "d0",
);
const BATCH_KEK_ROOT: &str = "395b3beccc335d8b77c17dd4ee57996e65a94eaa0c8ee8bdae0f76bb058561dd";
const BATCH_KEK_SIGNATURE_DER: &str = concat!(
    "3044022038984c4355c5c00d7dd26db0d4107eab6ad198ddbfd1b620e144e5da31828d6e02200f71fd040c5e08aa83c0",
    "f654632607386423d1d3a915458dee534b5784662f4c",
);
