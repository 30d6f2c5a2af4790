//! The worked example of `docs/envelope.md`: a fully deterministic envelope
//! (fixed signer key, fixed KEK, fixed "random" bytes) whose canonical bytes,
//! signature and JSON are pinned here. If this test fails, the encoding
//! changed: bump the version and update the document.
//!
//! `cargo test -p secure-gateway --test envelope_example -- --nocapture`
//! prints the values.
#![allow(clippy::unwrap_used)] // tests may panic on setup failures

use std::sync::Mutex;

use secure_gateway::sym::GCM_NONCE_LEN;
use secure_gateway::{
    ContentType, CryptoError, CryptoProvider, DEFAULT_DIST_ID, EnvelopeMeta, KeyHandle, Recipient, RecipientKey,
    RustCryptoProvider, SealedEnvelope, Sm2Signature, Sm2SigningKey, Sm2VerifyingKey, Sm3Digest, Sm4Key, merkle, open,
    seal, seal_unsigned, sign_batch, sm3,
};
use zeroize::Zeroizing;

/// Delegates to [`RustCryptoProvider`] but draws "random" bytes from a
/// fixed pattern: call `c` fills byte `i` with `(c << 4 | i) & 0xff`.
/// For the example only; a real provider must never do this.
#[derive(Debug)]
struct ExampleProvider {
    inner: RustCryptoProvider,
    calls: Mutex<u8>,
}

impl CryptoProvider for ExampleProvider {
    fn name(&self) -> &str {
        "example"
    }
    fn sm3(&self, data: &[u8]) -> Sm3Digest {
        self.inner.sm3(data)
    }
    fn random(&self, buf: &mut [u8]) -> Result<(), CryptoError> {
        let mut c = self.calls.lock().unwrap();
        *c += 1;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = ((*c as usize) << 4 | i) as u8;
        }
        Ok(())
    }
    fn public_key(&self, key: &KeyHandle) -> Result<Sm2VerifyingKey, CryptoError> {
        self.inner.public_key(key)
    }
    fn sign(&self, key: &KeyHandle, msg: &[u8]) -> Result<Sm2Signature, CryptoError> {
        self.inner.sign(key, msg)
    }
    fn verify(&self, key: &Sm2VerifyingKey, msg: &[u8], sig: &Sm2Signature) -> Result<(), CryptoError> {
        self.inner.verify(key, msg, sig)
    }
    fn sm2_encrypt(&self, recipient: &Sm2VerifyingKey, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.sm2_encrypt(recipient, msg)
    }
    fn sm2_decrypt(&self, key: &KeyHandle, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.inner.sm2_decrypt(key, ct)
    }
    fn sm4_gcm_seal(&self, k: &Sm4Key, n: &[u8; GCM_NONCE_LEN], aad: &[u8], pt: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.sm4_gcm_seal(k, n, aad, pt)
    }
    fn sm4_gcm_open(
        &self,
        k: &Sm4Key,
        n: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        ct: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.inner.sm4_gcm_open(k, n, aad, ct)
    }
    fn kek_seal(&self, h: &KeyHandle, n: &[u8; GCM_NONCE_LEN], aad: &[u8], pt: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.kek_seal(h, n, aad, pt)
    }
    fn kek_open(
        &self,
        h: &KeyHandle,
        n: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        ct: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.inner.kek_open(h, n, aad, ct)
    }
}

/// Signer private key: SM3("vaxgate example signer") as the scalar.
fn example() -> (ExampleProvider, KeyHandle, KeyHandle) {
    let inner = RustCryptoProvider::new();
    let d = sm3(b"vaxgate example signer");
    let signer = KeyHandle::new("example-signer");
    inner.insert_sm2_key(
        signer.clone(),
        Sm2SigningKey::from_bytes(&d.0, DEFAULT_DIST_ID).unwrap(),
    );
    let kek = KeyHandle::new("example-kek");
    inner.insert_kek(
        kek.clone(),
        Sm4Key::new(*b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"),
    );
    (
        ExampleProvider {
            inner,
            calls: Mutex::new(0),
        },
        signer,
        kek,
    )
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

/// Splits canonical bytes into `u32be len ‖ value` fields.
fn fields(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        out.push(b[4..4 + n].to_vec());
        b = &b[4 + n..];
    }
    assert!(b.is_empty());
    out
}

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
    let env = seal(
        &p,
        &signer,
        meta("5f0c1e2a-3b4d-4c5e-8f60-718293a4b5c6"),
        PAYLOAD,
        &[Recipient::Kek(kek.clone())],
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
    .map(|tx| seal_unsigned(&p, &kid, meta(tx), PAYLOAD, &[Recipient::Kek(kek.clone())]).unwrap())
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
