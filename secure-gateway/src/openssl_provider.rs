//! The second crypto provider: SM2, SM3 and SM4 from the system's OpenSSL 3
//! (the `openssl` crate over Debian's `libssl3`), chosen with
//! `[crypto] provider = "openssl"`.
//!
//! What OpenSSL does and what is composed here:
//! - **SM3**, **SM2 encryption/decryption** (GM/T 0009 DER, C1C3C2), **SM2
//!   signing and verifying of a digest**, **SM4-ECB/CTR** and the random
//!   source are OpenSSL's own.
//! - **SM2 with a distinguishing ID.** OpenSSL's `EVP_PKEY_sign` on an SM2
//!   key signs the 32-byte digest `e` it is given; the safe binding has no
//!   call to set the distinguishing ID for `EVP_DigestSign`. So the provider
//!   computes `Z_A = SM3(ENTL ‖ ID ‖ a ‖ b ‖ x_G ‖ y_G ‖ x_A ‖ y_A)` and
//!   `e = SM3(Z_A ‖ M)` (GB/T 32918.2 5.5 and 6.1) with OpenSSL's SM3 and the
//!   curve constants OpenSSL reports, and lets OpenSSL sign and verify `e`.
//!   No `unsafe` code is needed.
//! - **SM4-GCM.** OpenSSL 3.0 (Debian 12) has SM4 in ECB, CBC, CTR, CFB and
//!   OFB but no SM4-GCM, so GCM (NIST SP 800-38D) is composed from
//!   OpenSSL's SM4 (the hash key `H` and the tag mask, ECB; the payload,
//!   CTR) and RustCrypto's `ghash`. With a 96-bit nonce the 128-bit counter
//!   of OpenSSL's CTR mode equals GCM's 32-bit increment, because a GCM
//!   message is at most 2^32 − 2 blocks; longer input is refused.
//!
//! Keys: private keys live in OpenSSL `EVP_PKEY` objects inside the
//! provider; encrypted PKCS#8 files are decrypted by OpenSSL itself
//! ([`CryptoProvider::import_sm2_pem`]). Key-encryption keys are kept as
//! [`Sm4Key`] (zeroised on drop), like the default provider's.

use std::collections::HashMap;
use std::fmt;
use std::sync::RwLock;

use ghash::GHash;
use ghash::universal_hash::UniversalHash as _;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::hash::{MessageDigest, hash};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private, Public};
use openssl::pkey_ctx::PkeyCtx;
use openssl::symm::{Cipher, Crypter, Mode};
use zeroize::Zeroizing;

use crate::provider::{CryptoProvider, KeyHandle, KeyStore, poisoned, software_sm4_gcm};
use crate::sym::{GCM_NONCE_LEN, GCM_TAG_LEN};
use crate::{CryptoError, Sm2Signature, Sm2SigningKey, Sm2VerifyingKey, Sm3Digest, Sm4Key};

/// The longest SM4-GCM plaintext: 2^32 − 2 blocks (NIST SP 800-38D 5.2.1.1).
const GCM_MAX_PLAINTEXT: u64 = ((1u64 << 32) - 2) * 16;
/// Public keys kept parsed for verification and encryption (by key id).
const PUBLIC_CACHE_CAP: usize = 4096;

/// An SM2 private key held by OpenSSL, with its public half.
struct PrivateKey {
    pkey: PKey<Private>,
    public: Sm2VerifyingKey,
}

/// SM2/SM3/SM4 from the system OpenSSL 3 (see the module docs).
pub struct OpensslProvider {
    group: EcGroup,
    /// `a ‖ b ‖ x_G ‖ y_G`, 128 bytes: the curve part of every `Z_A`.
    curve_z: Vec<u8>,
    sm2: KeyStore<PrivateKey>,
    kek: KeyStore<Sm4Key>,
    public_cache: RwLock<HashMap<String, PKey<Public>>>,
}

impl fmt::Debug for OpensslProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpensslProvider")
            .field("library", &openssl::version::version())
            .field("sm2_keys", &self.sm2.names())
            .field("keks", &self.kek.names())
            .finish()
    }
}

fn ossl(what: &str) -> impl Fn(openssl::error::ErrorStack) -> CryptoError + '_ {
    move |e| CryptoError::Cipher(format!("openssl: {what}: {e}"))
}

/// `n` as exactly 32 big-endian bytes.
fn be32(n: &openssl::bn::BigNumRef) -> Result<Vec<u8>, CryptoError> {
    n.to_vec_padded(32).map_err(ossl("encoding a field element"))
}

impl OpensslProvider {
    /// A provider with no keys. Fails when the linked OpenSSL lacks SM2 or
    /// SM3 (built with `no-sm2`/`no-sm3`).
    pub fn new() -> Result<Self, CryptoError> {
        let group = EcGroup::from_curve_name(Nid::SM2).map_err(ossl("this OpenSSL has no SM2 curve"))?;
        let mut ctx = BigNumContext::new().map_err(ossl("bignum context"))?;
        let (mut p, mut a, mut b) = (BigNum::new(), BigNum::new(), BigNum::new());
        let (p, a, b) = match (p.as_mut(), a.as_mut(), b.as_mut()) {
            (Ok(p), Ok(a), Ok(b)) => (p, a, b),
            _ => return Err(CryptoError::Cipher("openssl: cannot allocate bignums".into())),
        };
        group
            .components_gfp(p, a, b, &mut ctx)
            .map_err(ossl("reading the SM2 curve"))?;
        let (mut gx, mut gy) = (
            BigNum::new().map_err(ossl("bignum"))?,
            BigNum::new().map_err(ossl("bignum"))?,
        );
        group
            .generator_opt()
            .ok_or_else(|| CryptoError::Cipher("openssl: the SM2 curve has no generator".into()))?
            .affine_coordinates(&group, &mut gx, &mut gy, &mut ctx)
            .map_err(ossl("reading the SM2 generator"))?;
        let mut curve_z = Vec::with_capacity(128);
        for n in [&**a, &**b, &*gx, &*gy] {
            curve_z.extend_from_slice(&be32(n)?);
        }
        hash(MessageDigest::sm3(), b"").map_err(ossl("this OpenSSL has no SM3"))?;
        Ok(OpensslProvider {
            group,
            curve_z,
            sm2: KeyStore::new("sm2"),
            kek: KeyStore::new("sm4 key-encryption"),
            public_cache: RwLock::default(),
        })
    }

    fn sm3_parts(&self, parts: &[&[u8]]) -> Result<Sm3Digest, CryptoError> {
        let mut h = openssl::hash::Hasher::new(MessageDigest::sm3()).map_err(ossl("sm3"))?;
        for p in parts {
            h.update(p).map_err(ossl("sm3"))?;
        }
        let d = h.finish().map_err(ossl("sm3"))?;
        Sm3Digest::from_slice(&d)
    }

    /// `e = SM3(Z_A ‖ msg)` for the key `vk` and its distinguishing ID.
    fn digest_e(&self, vk: &Sm2VerifyingKey, msg: &[u8]) -> Result<Sm3Digest, CryptoError> {
        let id = vk.dist_id().as_bytes();
        let bits = u16::try_from(id.len() * 8)
            .map_err(|_| CryptoError::InvalidKey("distinguishing id longer than 8191 bytes".into()))?;
        let point = vk.to_sec1();
        // 04 ‖ x ‖ y: the public key's coordinates follow the format byte.
        let z = self.sm3_parts(&[&bits.to_be_bytes(), id, &self.curve_z, &point[1..]])?;
        self.sm3_parts(&[&z.0, msg])
    }

    fn public_pkey(&self, vk: &Sm2VerifyingKey) -> Result<PKey<Public>, CryptoError> {
        if let Some(k) = self.public_cache.read().map_err(|_| poisoned())?.get(vk.key_id()) {
            return Ok(k.clone());
        }
        let mut ctx = BigNumContext::new().map_err(ossl("bignum context"))?;
        let point = EcPoint::from_bytes(&self.group, &vk.to_sec1(), &mut ctx)
            .map_err(|e| CryptoError::InvalidKey(format!("openssl refused the SM2 public point: {e}")))?;
        let ec = EcKey::from_public_key(&self.group, &point).map_err(ossl("public key"))?;
        let pkey = PKey::from_ec_key(ec).map_err(ossl("public key"))?;
        let mut cache = self.public_cache.write().map_err(|_| poisoned())?;
        if cache.len() >= PUBLIC_CACHE_CAP {
            cache.clear();
        }
        cache.insert(vk.key_id().to_string(), pkey.clone());
        Ok(pkey)
    }

    /// Takes an OpenSSL SM2 private key under `handle`; returns its public half.
    fn insert_pkey(
        &self,
        handle: KeyHandle,
        pkey: PKey<Private>,
        dist_id: &str,
    ) -> Result<Sm2VerifyingKey, CryptoError> {
        // OpenSSL 3.0 gives keys read from PKCS#8 its own SM2 type, which
        // has no legacy EC_KEY view: read the public half through SPKI.
        let spki = pkey.public_key_to_pem().map_err(ossl("encoding the public key"))?;
        let spki = String::from_utf8(spki)
            .map_err(|_| CryptoError::InvalidKey("openssl wrote a public key PEM that is not UTF-8".into()))?;
        let public = Sm2VerifyingKey::from_public_key_pem(&spki)?;
        let public = Sm2VerifyingKey::from_sec1(&public.to_sec1(), dist_id)?;
        self.sm2.insert(
            handle,
            PrivateKey {
                pkey,
                public: public.clone(),
            },
        )?;
        Ok(public)
    }
}

/// SM4 of one block under `key` (ECB, no padding).
fn sm4_block(key: &Sm4Key, block: &[u8; 16]) -> Result<Zeroizing<[u8; 16]>, CryptoError> {
    let mut c = Crypter::new(Cipher::sm4_ecb(), Mode::Encrypt, key.expose_secret(), None).map_err(ossl("sm4-ecb"))?;
    c.pad(false);
    let mut out = Zeroizing::new([0u8; 32]);
    let n = c.update(block, &mut out[..]).map_err(ossl("sm4-ecb"))?;
    let m = c.finalize(&mut out[n..]).map_err(ossl("sm4-ecb"))?;
    if n + m != 16 {
        return Err(CryptoError::Cipher("openssl: sm4-ecb returned a short block".into()));
    }
    let mut b = Zeroizing::new([0u8; 16]);
    b.copy_from_slice(&out[..16]);
    Ok(b)
}

/// SM4-CTR over `data` starting at counter block `iv` (OpenSSL increments
/// all 128 bits; see the module docs for why that equals GCM's inc32).
fn sm4_ctr(key: &Sm4Key, iv: &[u8; 16], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut c =
        Crypter::new(Cipher::sm4_ctr(), Mode::Encrypt, key.expose_secret(), Some(iv)).map_err(ossl("sm4-ctr"))?;
    let mut out = vec![0u8; data.len() + 16];
    let n = c.update(data, &mut out).map_err(ossl("sm4-ctr"))?;
    let m = c.finalize(&mut out[n..]).map_err(ossl("sm4-ctr"))?;
    out.truncate(n + m);
    Ok(out)
}

/// The GCM tag of `aad` and `ciphertext`: `GHASH_H(A, C) ⊕ SM4_K(J0)`.
fn gcm_tag(key: &Sm4Key, nonce: &[u8; GCM_NONCE_LEN], aad: &[u8], ct: &[u8]) -> Result<[u8; GCM_TAG_LEN], CryptoError> {
    let h = sm4_block(key, &[0u8; 16])?;
    let mut g = GHash::new(&(*h).into());
    g.update_padded(aad);
    g.update_padded(ct);
    let mut lens = [0u8; 16];
    lens[..8].copy_from_slice(&(aad.len() as u64 * 8).to_be_bytes());
    lens[8..].copy_from_slice(&(ct.len() as u64 * 8).to_be_bytes());
    g.update(&[lens.into()]);
    let s: [u8; 16] = g.finalize().into();
    let mask = sm4_block(key, &counter_block(nonce, 1))?;
    let mut tag = [0u8; GCM_TAG_LEN];
    for i in 0..GCM_TAG_LEN {
        tag[i] = s[i] ^ mask[i];
    }
    Ok(tag)
}

fn counter_block(nonce: &[u8; GCM_NONCE_LEN], n: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..GCM_NONCE_LEN].copy_from_slice(nonce);
    b[GCM_NONCE_LEN..].copy_from_slice(&n.to_be_bytes());
    b
}

fn gcm_seal(key: &Sm4Key, nonce: &[u8; GCM_NONCE_LEN], aad: &[u8], pt: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if pt.len() as u64 > GCM_MAX_PLAINTEXT {
        return Err(CryptoError::Cipher(format!(
            "sm4-gcm plaintext of {} bytes exceeds the GCM limit",
            pt.len()
        )));
    }
    let mut out = sm4_ctr(key, &counter_block(nonce, 2), pt)?;
    let tag = gcm_tag(key, nonce, aad, &out)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

fn gcm_open(
    key: &Sm4Key,
    nonce: &[u8; GCM_NONCE_LEN],
    aad: &[u8],
    ct_and_tag: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let Some(split) = ct_and_tag.len().checked_sub(GCM_TAG_LEN) else {
        return Err(CryptoError::Cipher(format!(
            "sm4-gcm ciphertext too short: {} bytes, need at least the 16-byte tag",
            ct_and_tag.len()
        )));
    };
    let (ct, tag) = ct_and_tag.split_at(split);
    let want = gcm_tag(key, nonce, aad, ct)?;
    if !openssl::memcmp::eq(&want, tag) {
        return Err(CryptoError::Cipher(
            "sm4-gcm authentication failed (wrong key or tampered data)".into(),
        ));
    }
    sm4_ctr(key, &counter_block(nonce, 2), ct).map(Zeroizing::new)
}

impl CryptoProvider for OpensslProvider {
    fn name(&self) -> &str {
        "openssl"
    }

    fn sm3(&self, data: &[u8]) -> Sm3Digest {
        // The digest was shown to work in `new`; OpenSSL fails SM3 only on
        // allocation failure, where the pure-Rust SM3 gives the same bytes.
        match hash(MessageDigest::sm3(), data) {
            Ok(d) => Sm3Digest::from_slice(&d).unwrap_or_else(|_| crate::sm3(data)),
            Err(_) => crate::sm3(data),
        }
    }

    fn random(&self, buf: &mut [u8]) -> Result<(), CryptoError> {
        openssl::rand::rand_bytes(buf).map_err(ossl("random bytes"))
    }

    fn public_key(&self, key: &KeyHandle) -> Result<Sm2VerifyingKey, CryptoError> {
        self.sm2.with(key, |k| Ok(k.public.clone()))
    }

    fn sign(&self, key: &KeyHandle, msg: &[u8]) -> Result<Sm2Signature, CryptoError> {
        self.sm2.with(key, |k| {
            let e = self.digest_e(&k.public, msg)?;
            let mut ctx = PkeyCtx::new(&k.pkey).map_err(ossl("sm2 sign"))?;
            ctx.sign_init().map_err(ossl("sm2 sign"))?;
            let mut der = Vec::with_capacity(72);
            ctx.sign_to_vec(&e.0, &mut der).map_err(ossl("sm2 sign"))?;
            Sm2Signature::from_der(&der)
        })
    }

    fn verify(&self, key: &Sm2VerifyingKey, msg: &[u8], sig: &Sm2Signature) -> Result<(), CryptoError> {
        let e = self.digest_e(key, msg)?;
        let pkey = self.public_pkey(key)?;
        let mut ctx = PkeyCtx::new(&pkey).map_err(ossl("sm2 verify"))?;
        ctx.verify_init().map_err(ossl("sm2 verify"))?;
        match ctx.verify(&e.0, &sig.to_der()) {
            Ok(true) => Ok(()),
            _ => Err(CryptoError::BadSignature { context: String::new() }),
        }
    }

    fn sm2_encrypt(&self, recipient: &Sm2VerifyingKey, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let pkey = self.public_pkey(recipient)?;
        let mut ctx = PkeyCtx::new(&pkey).map_err(ossl("sm2 encrypt"))?;
        ctx.encrypt_init().map_err(ossl("sm2 encrypt"))?;
        let mut out = Vec::new();
        ctx.encrypt_to_vec(msg, &mut out).map_err(ossl("sm2 encrypt"))?;
        Ok(out)
    }

    fn sm2_decrypt(&self, key: &KeyHandle, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.sm2.with(key, |k| {
            let mut ctx = PkeyCtx::new(&k.pkey).map_err(ossl("sm2 decrypt"))?;
            ctx.decrypt_init().map_err(ossl("sm2 decrypt"))?;
            let mut out = Zeroizing::new(Vec::new());
            ctx.decrypt_to_vec(ciphertext, &mut out)
                .map_err(|_| CryptoError::Cipher("sm2 decryption failed (wrong key or tampered ciphertext)".into()))?;
            Ok(out)
        })
    }

    fn import_sm2_key(&self, handle: KeyHandle, key: &Sm2SigningKey) -> Result<Sm2VerifyingKey, CryptoError> {
        let d = Zeroizing::new(key.secret_key().to_bytes().to_vec());
        let d = BigNum::from_slice(&d).map_err(ossl("private scalar"))?;
        let mut ctx = BigNumContext::new().map_err(ossl("bignum context"))?;
        let point = EcPoint::from_bytes(&self.group, &key.verifying_key().to_sec1(), &mut ctx)
            .map_err(|e| CryptoError::InvalidKey(format!("openssl refused the SM2 public point: {e}")))?;
        let ec = EcKey::from_private_components(&self.group, &d, &point).map_err(ossl("private key"))?;
        ec.check_key()
            .map_err(|e| CryptoError::InvalidKey(format!("openssl: the SM2 key pair does not match: {e}")))?;
        let pkey = PKey::from_ec_key(ec).map_err(ossl("private key"))?;
        self.insert_pkey(handle, pkey, key.verifying_key().dist_id())
    }

    fn import_sm2_pem(
        &self,
        handle: KeyHandle,
        pem: &str,
        passphrase: Option<&str>,
        dist_id: &str,
    ) -> Result<Sm2VerifyingKey, CryptoError> {
        let pkey = match (crate::keys::PemKind::of(pem), passphrase) {
            (Some(crate::keys::PemKind::Encrypted), Some(pw)) => {
                PKey::private_key_from_pem_passphrase(pem.trim().as_bytes(), pw.as_bytes()).map_err(|_| {
                    CryptoError::InvalidKey("cannot decrypt pkcs#8 key: wrong passphrase or not an SM2 key".into())
                })?
            }
            (Some(crate::keys::PemKind::Encrypted), None) => {
                return Err(CryptoError::PassphraseMissing("the key is encrypted".into()));
            }
            (Some(crate::keys::PemKind::Unencrypted), None) => PKey::private_key_from_pem(pem.trim().as_bytes())
                .map_err(|e| CryptoError::InvalidKey(format!("not an SM2 pkcs#8 private key: {e}")))?,
            (Some(crate::keys::PemKind::Unencrypted), Some(_)) => {
                return Err(CryptoError::InvalidKey(
                    "key is stored unencrypted but a passphrase was configured; re-encrypt it".into(),
                ));
            }
            (None, _) => {
                return Err(CryptoError::InvalidKey(
                    "expected a PEM 'ENCRYPTED PRIVATE KEY' or 'PRIVATE KEY' block".into(),
                ));
            }
        };
        self.insert_pkey(handle, pkey, dist_id)
    }

    software_sm4_gcm!(gcm_seal, gcm_open);
}

#[cfg(test)]
mod tests {
    use super::*;

    // GB/T 32907 appendix A example 1 and the SM4-GCM vector of RFC 8998
    // appendix A.1 (key 0123456789ABCDEFFEDCBA9876543210, IV
    // 00001234567800000000ABCD).
    #[test]
    fn sm4_known_answers() {
        let k = Sm4Key::from_slice(&hex::decode("0123456789abcdeffedcba9876543210").unwrap()).unwrap();
        let pt: [u8; 16] = hex::decode("0123456789abcdeffedcba9876543210")
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(
            hex::encode(*sm4_block(&k, &pt).unwrap()),
            "681edf34d206965e86b3e94f536e4246"
        );
        let nonce: [u8; 12] = hex::decode("00001234567800000000abcd").unwrap().try_into().unwrap();
        let aad = hex::decode("feedfacedeadbeeffeedfacedeadbeefabaddad2").unwrap();
        let pt = hex::decode(
            "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbccccccccccccccccddddddddddddddddeeeeeeeeeeeeeeeeffffffffffffffffeeeeeeeeeeeeeeeeaaaaaaaaaaaaaaaa",
        )
        .unwrap();
        let out = gcm_seal(&k, &nonce, &aad, &pt).unwrap();
        assert_eq!(
            hex::encode(&out),
            "17f399f08c67d5ee19d0dc9969c4bb7d5fd46fd3756489069157b282bb200735d82710ca5c22f0ccfa7cbf93d496ac15a56834cbcf98c397b4024a2691233b8d\
             83de3541e4c2b58177e065a9bf7b62ec"
        );
        assert_eq!(&gcm_open(&k, &nonce, &aad, &out).unwrap()[..], &pt[..]);
        let mut bad = out.clone();
        bad[0] ^= 1;
        assert!(gcm_open(&k, &nonce, &aad, &bad).is_err());
        assert!(gcm_open(&k, &nonce, b"other", &out).is_err());
        assert!(gcm_open(&k, &nonce, &aad, &out[..15]).is_err());
    }

    #[test]
    fn sm3_known_answer() {
        let p = OpensslProvider::new().unwrap();
        assert_eq!(
            p.sm3(b"abc").to_hex(),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
    }

    #[test]
    fn handles_and_debug_show_no_key_material() {
        let p = OpensslProvider::new().unwrap();
        let k = Sm2SigningKey::generate();
        let h = KeyHandle::new("node");
        p.import_sm2_key(h.clone(), &k).unwrap();
        p.import_kek(KeyHandle::new("cdc-kek"), Sm4Key::new([9; 16])).unwrap();
        let dbg = format!("{p:?}");
        let scalar = hex::encode(k.secret_key().to_bytes());
        assert!(dbg.contains("node") && dbg.contains("cdc-kek"), "{dbg}");
        assert!(!dbg.contains(&scalar) && !dbg.contains("09090909"), "{dbg}");
        let e = p.sign(&KeyHandle::new("nope"), b"m").unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
