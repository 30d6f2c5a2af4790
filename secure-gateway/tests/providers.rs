//! Every crypto provider against the standards' known answers and against
//! each other: each provider verifies what the other signs, opens what the
//! other seals and decrypts what the other encrypts; SM4-GCM gives the same
//! bytes in both. (The command-line interop of each provider is in
//! `openssl_interop.rs`.)
#![allow(clippy::unwrap_used)] // tests may panic on setup failures

mod support;

use std::sync::Arc;

use proptest::prelude::*;
use secure_gateway::{
    ContentType, CryptoConfig, CryptoProvider, DEFAULT_DIST_ID, EnvelopeMeta, KeyHandle, ProviderKind, Recipient,
    RecipientKey, Signer, Sm2Signature, Sm2SigningKey, Sm4Key, open, seal,
};
use support::annex_a::{C1_X, C1_Y, C2, C3, D_A, P_A, R, S};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn providers() -> Vec<Arc<dyn CryptoProvider>> {
    ProviderKind::ALL.iter().map(|k| k.build().unwrap()).collect()
}

/// Every ordered pair (a, b) of providers, a ≠ b and a = b.
fn pairs() -> Vec<(Arc<dyn CryptoProvider>, Arc<dyn CryptoProvider>)> {
    let mut out = Vec::new();
    for a in ProviderKind::ALL {
        for b in ProviderKind::ALL {
            out.push((a.build().unwrap(), b.build().unwrap()));
        }
    }
    out
}

// GB/T 32918.5-2017 Annex A (sm2p256v1): key pair, signature of
// "message digest" with ID 1234567812345678, and the encryption example of
// "encryption standard" (C1 ‖ C3 ‖ C2), written here as GM/T 0009 DER.
/// SEQUENCE { INTEGER x, INTEGER y, OCTET STRING C3, OCTET STRING C2 }.
fn annex_c_der() -> Vec<u8> {
    let mut body = vec![0x02, 0x20];
    body.extend(h(C1_X)); // high bit clear: no leading zero
    body.extend([0x02, 0x21, 0x00]);
    body.extend(h(C1_Y)); // high bit set: a leading zero keeps it positive
    body.extend([0x04, 0x20]);
    body.extend(h(C3));
    body.extend([0x04, 0x13]);
    body.extend(h(C2));
    let mut der = vec![0x30, body.len() as u8];
    der.extend(body);
    der
}

#[test]
fn standard_examples_through_every_provider() {
    let sig = Sm2Signature::from_slice(&[h(R), h(S)].concat()).unwrap();
    let key = Sm2SigningKey::from_bytes(&h(D_A), DEFAULT_DIST_ID).unwrap();
    for p in providers() {
        let name = p.name().to_string();
        let hd = KeyHandle::new("annex-a");
        let vk = p.import_sm2_key(hd.clone(), &key).unwrap();
        assert_eq!(hex::encode(vk.to_sec1()), P_A, "{name}");
        p.verify(&vk, b"message digest", &sig).unwrap();
        assert!(p.verify(&vk, b"message digesT", &sig).is_err(), "{name}");
        let mut bad = sig;
        bad.0[63] ^= 1;
        assert!(p.verify(&vk, b"message digest", &bad).is_err(), "{name}");
        assert_eq!(
            &p.sm2_decrypt(&hd, &annex_c_der()).unwrap()[..],
            b"encryption standard",
            "{name}"
        );
        let mut tampered = annex_c_der();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(p.sm2_decrypt(&hd, &tampered).is_err(), "{name}");
        // GB/T 32905 appendix A examples 1 and 2.
        assert_eq!(
            p.sm3(b"abc").to_hex(),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0",
            "{name}"
        );
        assert_eq!(
            p.sm3(&b"abcd".repeat(16)).to_hex(),
            "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732",
            "{name}"
        );
    }
}

#[test]
fn sm4_gcm_rfc_8998_vector_through_every_provider() {
    let key = Sm4Key::from_slice(&h("0123456789abcdeffedcba9876543210")).unwrap();
    let nonce: [u8; 12] = h("00001234567800000000abcd").try_into().unwrap();
    let aad = h("feedfacedeadbeeffeedfacedeadbeefabaddad2");
    let pt = h(
        "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbccccccccccccccccddddddddddddddddeeeeeeeeeeeeeeeeffffffffffffffffeeeeeeeeeeeeeeeeaaaaaaaaaaaaaaaa",
    );
    let want = "17f399f08c67d5ee19d0dc9969c4bb7d5fd46fd3756489069157b282bb200735d82710ca5c22f0ccfa7cbf93d496ac15a56834cbcf98c397b4024a2691233b8d\
                83de3541e4c2b58177e065a9bf7b62ec";
    for p in providers() {
        assert_eq!(
            hex::encode(p.sm4_gcm_seal(&key, &nonce, &aad, &pt).unwrap()),
            want,
            "{}",
            p.name()
        );
        assert_eq!(&p.sm4_gcm_open(&key, &nonce, &aad, &h(want)).unwrap()[..], &pt[..]);
    }
}

#[test]
fn each_provider_accepts_what_the_other_signs_and_encrypts() {
    let key = Sm2SigningKey::generate();
    // A distinguishing ID other than the default must be honoured too.
    let other_id = Sm2SigningKey::from_bytes(&key.secret_key().to_bytes(), "CDC-310000@vaxgate").unwrap();
    for (a, b) in pairs() {
        let ctx = format!("{} -> {}", a.name(), b.name());
        for k in [&key, &other_id] {
            let hd = KeyHandle::new("node");
            let vk = a.import_sm2_key(hd.clone(), k).unwrap();
            b.import_sm2_key(hd.clone(), k).unwrap();
            assert_eq!(vk.dist_id(), k.verifying_key().dist_id());
            let sig = a.sign(&hd, b"lot 202601A released").unwrap();
            b.verify(&vk, b"lot 202601A released", &sig).unwrap();
            k.verifying_key().verify(b"lot 202601A released", &sig).unwrap();
            assert!(b.verify(&vk, b"lot 202601B released", &sig).is_err(), "{ctx}");
            let ct = a.sm2_encrypt(&vk, b"sixteen byte key").unwrap();
            assert_eq!(&b.sm2_decrypt(&hd, &ct).unwrap()[..], b"sixteen byte key", "{ctx}");
        }
        // The same key under the other ID is another verifier: refused.
        let hd = KeyHandle::new("node");
        a.import_sm2_key(hd.clone(), &other_id).unwrap();
        let sig = a.sign(&hd, b"m").unwrap();
        assert!(
            b.verify(key.verifying_key(), b"m", &sig).is_err(),
            "{ctx}: ID not bound"
        );
    }
}

#[test]
fn envelopes_sealed_by_one_provider_open_in_the_other() {
    let sender = Sm2SigningKey::generate();
    let cdc = Sm2SigningKey::generate();
    let kek = KeyHandle::new("province-kek-2026");
    for (a, b) in pairs() {
        let ctx = format!("{} -> {}", a.name(), b.name());
        let (s, c) = (KeyHandle::new("sender"), KeyHandle::new("cdc"));
        a.import_sm2_key(s.clone(), &sender).unwrap();
        b.import_sm2_key(c.clone(), &cdc).unwrap();
        for p in [&a, &b] {
            p.import_kek(kek.clone(), Sm4Key::new([0x42; 16])).unwrap();
        }
        let meta = EnvelopeMeta::now("hospital-310101-001", ContentType::Json, "vaccination-record");
        let payload = br#"{"vaccine":"HepB","lot":"202601A","dose":1}"#;
        let recipients = [Recipient::Sm2(cdc.verifying_key().clone()), Recipient::Kek(kek.clone())];
        let env = seal(&*a, &s, meta, payload, &recipients).unwrap();
        for me in [RecipientKey::Sm2(&c), RecipientKey::Kek(&kek)] {
            let opened = open(&*b, &env, sender.verifying_key(), me).unwrap();
            assert_eq!(opened.plaintext.as_slice(), payload, "{ctx} {me:?}");
        }
        let mut bad = env.clone();
        bad.ciphertext[0] ^= 1;
        assert!(
            open(&*b, &bad, sender.verifying_key(), RecipientKey::Sm2(&c)).is_err(),
            "{ctx}"
        );
    }
}

#[test]
fn signers_and_config_name_providers_not_keys() {
    for p in providers() {
        let k = Sm2SigningKey::generate();
        let signer = Signer::import(p.clone(), KeyHandle::new("node"), &k).unwrap();
        let dbg = format!("{signer:?}");
        assert!(dbg.contains(p.name()) && dbg.contains("node"), "{dbg}");
        assert!(!dbg.contains(&hex::encode(k.secret_key().to_bytes())), "{dbg}");
        let sig = signer.sign(b"m").unwrap();
        k.verifying_key().verify(b"m", &sig).unwrap();
        let e = Signer::new(p.clone(), KeyHandle::new("absent")).unwrap_err();
        assert!(e.to_string().contains("absent"), "{e}");
    }
    let c: CryptoConfig = serde_json::from_str(r#"{"provider":"openssl"}"#).unwrap();
    assert_eq!(c.provider, ProviderKind::Openssl);
    assert_eq!(
        serde_json::from_str::<CryptoConfig>("{}").unwrap().provider,
        ProviderKind::RustCrypto
    );
    let e = serde_json::from_str::<CryptoConfig>(r#"{"provider":"gmssl"}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gmssl") && e.contains("rustcrypto") && e.contains("openssl"),
        "{e}"
    );
    let e = "gmssl".parse::<ProviderKind>().unwrap_err().to_string();
    assert!(e.contains("rustcrypto, openssl"), "{e}");
    assert!(serde_json::from_str::<CryptoConfig>(r#"{"providr":"openssl"}"#).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// SM4-GCM is deterministic given key and nonce: both providers must
    /// give the same bytes, and each must open the other's.
    #[test]
    fn sm4_gcm_is_the_same_in_every_provider(
        key in any::<[u8; 16]>(),
        nonce in any::<[u8; 12]>(),
        aad in proptest::collection::vec(any::<u8>(), 0..70),
        pt in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let k = Sm4Key::new(key);
        let ps = providers();
        let outs: Vec<Vec<u8>> = ps.iter().map(|p| p.sm4_gcm_seal(&k, &nonce, &aad, &pt).unwrap()).collect();
        prop_assert_eq!(&outs[0], &outs[1]);
        for p in &ps {
            prop_assert_eq!(&p.sm4_gcm_open(&k, &nonce, &aad, &outs[0]).unwrap()[..], &pt[..]);
            let mut bad = outs[0].clone();
            let i = bad.len() - 1;
            bad[i] ^= 0x80;
            prop_assert!(p.sm4_gcm_open(&k, &nonce, &aad, &bad).is_err());
        }
    }
}
