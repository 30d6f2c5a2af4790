//! Interoperability with the machine's OpenSSL 3 command-line tool (3.0.x
//! has SM2, SM3, SM4-CBC/CTR; it has no SM4-GCM). These tests FAIL when
//! `openssl` is missing: interop is a requirement, not an optional extra.
//!
//! Both sides pin the SM2 distinguishing ID: OpenSSL's `pkeyutl` uses an
//! empty ID unless told `-pkeyopt distid:1234567812345678`.
//!
//! The SM2 and SM3 tests run through every crypto provider
//! ([`ProviderKind::ALL`]): the command-line tool must accept what each
//! provider produces and each provider must accept what the tool produces.
#![allow(clippy::unwrap_used)] // tests may panic on setup failures

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use secure_gateway::keys::{KeyProtection, private_key_from_pem, private_key_to_pem};
use secure_gateway::sym::{sm4_cbc_decrypt, sm4_cbc_encrypt, sm4_ctr_apply, sm4_gcm_open};
use secure_gateway::{
    ContentType, CryptoProvider, DEFAULT_DIST_ID, EnvelopeMeta, KeyHandle, ProviderKind, Recipient, Sm2Signature,
    Sm2SigningKey, Sm2VerifyingKey, Sm4Key, seal, sm3,
};
use support::{OPENSSL_DISTID, pkeyutl_sign, pkeyutl_verify};
use zeroize::Zeroizing;

const PW_VAR: &str = "VXG_INTEROP_PASSPHRASE";
const PW: &str = "correct horse battery staple";

/// Runs `openssl` with `args`; panics loudly if the binary is missing.
fn openssl(args: &[&str]) -> Output {
    match Command::new("openssl")
        .args(args)
        .env(PW_VAR, PW)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!(
            "the `openssl` command-line tool is required for the interop tests and could not be run ({e}); \
             install OpenSSL 3 (e.g. `apt-get install openssl`)"
        ),
    }
}

fn openssl_ok(args: &[&str]) -> Vec<u8> {
    let o = openssl(args);
    assert!(
        o.status.success(),
        "openssl {} failed: {}\n{}",
        args.join(" "),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// One fresh provider of each kind.
fn providers() -> Vec<Arc<dyn CryptoProvider>> {
    ProviderKind::ALL.iter().map(|k| k.build().unwrap()).collect()
}

fn p(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn openssl_is_version_3_with_sm_algorithms() {
    let v = String::from_utf8(openssl_ok(&["version"])).unwrap();
    assert!(v.starts_with("OpenSSL 3."), "need OpenSSL 3, found {v}");
}

#[test]
fn sm3_equals_openssl_dgst() {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..1_000_003u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (i, data) in [b"".to_vec(), b"abc".to_vec(), b"abcd".repeat(16), big]
        .iter()
        .enumerate()
    {
        let f = p(dir.path(), &format!("m{i}"));
        std::fs::write(&f, data).unwrap();
        let out = hex::encode(openssl_ok(&["dgst", "-sm3", "-binary", s(&f)]));
        for prov in providers() {
            assert_eq!(out, prov.sm3(data).to_hex(), "input {i}, provider {}", prov.name());
        }
    }
}

/// Runs `check` once per crypto provider, each time in a fresh folder with
/// a fresh SM2 key imported into the provider under `handle`.
fn with_each_provider(handle: &str, check: impl Fn(&dyn CryptoProvider, &Path, &KeyHandle, &Sm2SigningKey)) {
    for prov in providers() {
        let dir = tempfile::tempdir().unwrap();
        let h = KeyHandle::new(handle);
        let k = Sm2SigningKey::generate();
        prov.import_sm2_key(h.clone(), &k).unwrap();
        check(&*prov, dir.path(), &h, &k);
    }
}

#[test]
fn openssl_verifies_our_signature() {
    with_each_provider("signer", openssl_verifies_a_signature_of);
}

fn openssl_verifies_a_signature_of(prov: &dyn CryptoProvider, dir: &Path, h: &KeyHandle, k: &Sm2SigningKey) {
    let msg = "疫苗追溯 vaccine traceability record".as_bytes();
    let (pubf, msgf, sigf) = (p(dir, "pub.pem"), p(dir, "msg"), p(dir, "sig.der"));
    std::fs::write(&pubf, k.verifying_key().to_public_key_pem()).unwrap();
    std::fs::write(&msgf, msg).unwrap();
    std::fs::write(&sigf, prov.sign(h, msg).unwrap().to_der()).unwrap();
    let with_id = pkeyutl_verify(s(&pubf), s(&msgf), s(&sigf));
    assert_verified(&with_id, prov.name());
    // Without the distinguishing ID OpenSSL (empty ID) must reject it.
    let without_id: Vec<&str> = with_id
        .iter()
        .copied()
        .filter(|a| !["-pkeyopt", OPENSSL_DISTID].contains(a))
        .collect();
    assert!(!openssl(&without_id).status.success(), "{}", prov.name());
}

/// OpenSSL says the signature `verify_args` name is good.
fn assert_verified(verify_args: &[&str], who: &str) {
    let out = String::from_utf8(openssl_ok(verify_args)).unwrap();
    assert!(out.contains("Signature Verified Successfully"), "{who}: {out}");
}

#[test]
fn we_verify_an_openssl_signature_and_read_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (keyf, pubf, msgf, sigf) = (
        p(dir.path(), "k.pem"),
        p(dir.path(), "pub.pem"),
        p(dir.path(), "msg"),
        p(dir.path(), "sig.der"),
    );
    openssl_ok(&["genpkey", "-algorithm", "SM2", "-out", s(&keyf)]);
    openssl_ok(&["pkey", "-in", s(&keyf), "-pubout", "-out", s(&pubf)]);
    std::fs::write(&msgf, b"cold chain reading: 4.2C").unwrap();
    openssl_ok(&pkeyutl_sign(s(&keyf), s(&msgf), s(&sigf)));
    let vk = Sm2VerifyingKey::from_public_key_pem(&std::fs::read_to_string(&pubf).unwrap()).unwrap();
    let sig = Sm2Signature::from_der(&std::fs::read(&sigf).unwrap()).unwrap();
    vk.verify(b"cold chain reading: 4.2C", &sig).unwrap();
    assert!(vk.verify(b"cold chain reading: 4.3C", &sig).is_err());
    for prov in providers() {
        prov.verify(&vk, b"cold chain reading: 4.2C", &sig).unwrap();
        assert!(
            prov.verify(&vk, b"cold chain reading: 4.3C", &sig).is_err(),
            "{}",
            prov.name()
        );
        // Each provider takes OpenSSL's key file and signs what OpenSSL verifies.
        let pem = std::fs::read_to_string(&keyf).unwrap();
        let h = KeyHandle::new("theirs");
        assert_eq!(prov.import_sm2_pem(h.clone(), &pem, None, DEFAULT_DIST_ID).unwrap(), vk);
        std::fs::write(&sigf, prov.sign(&h, b"cold chain reading: 4.2C").unwrap().to_der()).unwrap();
        assert_verified(&pkeyutl_verify(s(&pubf), s(&msgf), s(&sigf)), prov.name());
    }
    // OpenSSL's unencrypted PKCS#8 private key is readable and matches.
    let sk = private_key_from_pem(&std::fs::read_to_string(&keyf).unwrap(), None, DEFAULT_DIST_ID).unwrap();
    assert_eq!(sk.verifying_key(), &vk);
    // OpenSSL's encrypted PKCS#8 (PBES2, PBKDF2-SHA256, AES-256-CBC) too.
    let encf = p(dir.path(), "k.enc.pem");
    let pass = format!("env:{PW_VAR}");
    openssl_ok(&[
        "pkcs8",
        "-topk8",
        "-v2",
        "aes-256-cbc",
        "-in",
        s(&keyf),
        "-passout",
        &pass,
        "-out",
        s(&encf),
    ]);
    let sk2 = private_key_from_pem(&std::fs::read_to_string(&encf).unwrap(), Some(PW), DEFAULT_DIST_ID).unwrap();
    assert_eq!(sk2.verifying_key(), &vk);
    for prov in providers() {
        let enc = std::fs::read_to_string(&encf).unwrap();
        let got = prov.import_sm2_pem(KeyHandle::new("enc"), &enc, Some(PW), DEFAULT_DIST_ID);
        assert_eq!(got.unwrap(), vk, "{}", prov.name());
        let wrong = prov.import_sm2_pem(KeyHandle::new("enc"), &enc, Some("wrong"), DEFAULT_DIST_ID);
        assert!(
            wrong.unwrap_err().to_string().contains("wrong passphrase"),
            "{}",
            prov.name()
        );
    }
}

#[test]
fn openssl_reads_our_encrypted_pkcs8_and_spki() {
    let dir = tempfile::tempdir().unwrap();
    let k = Sm2SigningKey::generate();
    let (keyf, pubf) = (p(dir.path(), "k.key.pem"), p(dir.path(), "k.pub.pem"));
    let pem = private_key_to_pem(&k, &KeyProtection::Passphrase(Zeroizing::new(PW.into()))).unwrap();
    std::fs::write(&keyf, pem.as_bytes()).unwrap();
    std::fs::write(&pubf, k.verifying_key().to_public_key_pem()).unwrap();
    let pass = format!("env:{PW_VAR}");
    // The PBES2 parameters are what docs/crypto.md says.
    let asn1 = String::from_utf8(openssl_ok(&["asn1parse", "-in", s(&keyf)])).unwrap();
    for needle in ["PBES2", "PBKDF2", "hmacWithSHA256", "aes-256-cbc"] {
        assert!(asn1.contains(needle), "missing {needle} in\n{asn1}");
    }
    let text = String::from_utf8(openssl_ok(&[
        "pkey",
        "-in",
        s(&keyf),
        "-passin",
        &pass,
        "-noout",
        "-text",
    ]))
    .unwrap();
    assert!(text.contains("ASN1 OID: SM2"), "{text}");
    let derived = String::from_utf8(openssl_ok(&["pkey", "-in", s(&keyf), "-passin", &pass, "-pubout"])).unwrap();
    assert_eq!(derived.trim(), k.verifying_key().to_public_key_pem().trim());
    let pubtext = String::from_utf8(openssl_ok(&["pkey", "-pubin", "-in", s(&pubf), "-noout", "-text"])).unwrap();
    assert!(pubtext.contains("ASN1 OID: SM2"), "{pubtext}");
    // A wrong passphrase is refused by OpenSSL too.
    assert!(
        !openssl(&["pkey", "-in", s(&keyf), "-passin", "pass:wrong", "-noout"])
            .status
            .success()
    );
}

#[test]
fn sm2_encryption_both_ways() {
    with_each_provider("recipient", sm2_encryption_both_ways_with);
}

fn sm2_encryption_both_ways_with(prov: &dyn CryptoProvider, dir: &Path, h: &KeyHandle, k: &Sm2SigningKey) {
    let (keyf, pubf) = (p(dir, "k.key.pem"), p(dir, "k.pub.pem"));
    let pem = private_key_to_pem(k, &KeyProtection::DangerUnencrypted).unwrap();
    std::fs::write(&keyf, pem.as_bytes()).unwrap();
    std::fs::write(&pubf, k.verifying_key().to_public_key_pem()).unwrap();
    let msg = b"0123456789abcdef sixteen-byte data key and more";

    // vaxgate -> OpenSSL
    let ctf = p(dir, "ours.der");
    std::fs::write(&ctf, prov.sm2_encrypt(k.verifying_key(), msg).unwrap()).unwrap();
    let out = openssl_ok(&["pkeyutl", "-decrypt", "-inkey", s(&keyf), "-in", s(&ctf)]);
    assert_eq!(out, msg, "{}", prov.name());

    // OpenSSL -> vaxgate
    let (msgf, ct2) = (p(dir, "msg"), p(dir, "theirs.der"));
    std::fs::write(&msgf, msg).unwrap();
    openssl_ok(&[
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-inkey",
        s(&pubf),
        "-in",
        s(&msgf),
        "-out",
        s(&ct2),
    ]);
    let pt = prov.sm2_decrypt(h, &std::fs::read(&ct2).unwrap()).unwrap();
    assert_eq!(&pt[..], msg, "{}", prov.name());
}

/// Which way `openssl enc` goes.
enum Direction {
    Encrypt,
    Decrypt,
}
use Direction::{Decrypt, Encrypt};

#[test]
fn sm4_cbc_and_ctr_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let key = Sm4Key::new(*b"\x01\x23\x45\x67\x89\xab\xcd\xef\xfe\xdc\xba\x98\x76\x54\x32\x10");
    let kh = hex::encode(key.expose_secret());
    let iv = [0x5au8; 16];
    let ivh = hex::encode(iv);
    for len in [0usize, 1, 15, 16, 17, 1000] {
        let msg: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let (pf, cf, of) = (p(dir.path(), "pt"), p(dir.path(), "ct"), p(dir.path(), "out"));
        std::fs::write(&pf, &msg).unwrap();
        // `openssl enc` with SM4 in `mode` of the file `input` into `of`.
        let sm4 = |dir: Direction, mode: &str, input: &Path| {
            let cipher = format!("-sm4-{mode}");
            let mut args = vec!["enc"];
            if let Decrypt = dir {
                args.push("-d");
            }
            args.extend([cipher.as_str(), "-K", &kh, "-iv", &ivh, "-in", s(input), "-out", s(&of)]);
            openssl_ok(&args);
        };

        // CBC: ours -> OpenSSL, OpenSSL -> ours (byte-identical ciphertexts).
        std::fs::write(&cf, sm4_cbc_encrypt(&key, &iv, &msg)).unwrap();
        sm4(Decrypt, "cbc", &cf);
        assert_eq!(std::fs::read(&of).unwrap(), msg, "cbc len {len}");
        sm4(Encrypt, "cbc", &pf);
        let theirs = std::fs::read(&of).unwrap();
        assert_eq!(theirs, sm4_cbc_encrypt(&key, &iv, &msg));
        assert_eq!(&sm4_cbc_decrypt(&key, &iv, &theirs).unwrap()[..], &msg[..]);

        // CTR
        let mut ours = msg.clone();
        sm4_ctr_apply(&key, &iv, &mut ours);
        std::fs::write(&cf, &ours).unwrap();
        sm4(Decrypt, "ctr", &cf);
        assert_eq!(std::fs::read(&of).unwrap(), msg, "ctr len {len}");
        sm4(Encrypt, "ctr", &pf);
        assert_eq!(std::fs::read(&of).unwrap(), ours);
    }
}

/// A partner with only OpenSSL checks an envelope: verifies the signature
/// over the canonical bytes and unwraps the data key with its SM2 key.
/// (OpenSSL 3.0 has no SM4-GCM, so the payload is decrypted here with the
/// key OpenSSL recovered.)
#[test]
fn partner_with_openssl_verifies_envelope_and_unwraps_data_key() {
    with_each_provider("sender", partner_with_openssl_checks_an_envelope_of);
}

fn partner_with_openssl_checks_an_envelope_of(
    p_: &dyn CryptoProvider,
    dir: &Path,
    sender: &KeyHandle,
    _: &Sm2SigningKey,
) {
    let partner = Sm2SigningKey::generate();
    let partner_pk = partner.verifying_key().clone();
    let meta = EnvelopeMeta::now("cdc-310000", ContentType::Xml, "adverse-event");
    let payload = b"<aefi><case>1</case></aefi>";
    let env = seal(p_, sender, meta, payload, &[Recipient::Sm2(partner_pk.clone())]).unwrap();

    let (tbs, sig, pubf, keyf, wk) = (
        p(dir, "tbs.bin"),
        p(dir, "sig.der"),
        p(dir, "sender.pub.pem"),
        p(dir, "partner.key.pem"),
        p(dir, "wrapped.der"),
    );
    std::fs::write(&tbs, env.signed_bytes().unwrap()).unwrap();
    std::fs::write(&sig, env.signature.clone().unwrap()).unwrap();
    std::fs::write(&pubf, p_.public_key(sender).unwrap().to_public_key_pem()).unwrap();
    assert_verified(&pkeyutl_verify(s(&pubf), s(&tbs), s(&sig)), p_.name());

    std::fs::write(
        &keyf,
        private_key_to_pem(&partner, &KeyProtection::DangerUnencrypted)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    std::fs::write(&wk, &env.recipients[0].wrapped).unwrap();
    let dk = openssl_ok(&["pkeyutl", "-decrypt", "-inkey", s(&keyf), "-in", s(&wk)]);
    assert_eq!(dk.len(), 16);
    // The payload opens with the key OpenSSL recovered and the documented
    // AAD of version 2, and inflates (raw DEFLATE) to the plaintext.
    assert_eq!(env.version, 2);
    let aad = {
        let mut a = Vec::new();
        let mut f = |b: &[u8]| {
            a.extend_from_slice(&(b.len() as u32).to_be_bytes());
            a.extend_from_slice(b);
        };
        f(b"vaxgate/envelope-payload");
        f(&[2]);
        f(env.header.transaction_id.as_bytes());
        f(env.header.entity_id.as_bytes());
        f(env.header.key_id.as_bytes());
        f(&env.header.timestamp_ms.to_be_bytes());
        f(b"xml");
        f(env.header.dataset_category.as_bytes());
        f(&env.plaintext_sm3.0);
        f(&(payload.len() as u32).to_be_bytes());
        a
    };
    let nonce: [u8; 12] = env.nonce.clone().try_into().unwrap();
    let deflated = sm4_gcm_open(&Sm4Key::from_slice(&dk).unwrap(), &nonce, &aad, &env.ciphertext).unwrap();
    let mut pt = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(&deflated[..]), &mut pt).unwrap();
    assert_eq!(&pt[..], payload);
    assert_eq!(sm3(&pt), env.plaintext_sm3);
}
