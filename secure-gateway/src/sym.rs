//! SM4 (GB/T 32907-2016): GCM for payloads, CBC (PKCS#7) and CTR for
//! interop with systems that only speak those modes (`openssl enc -sm4-cbc`,
//! `-sm4-ctr`).
//!
//! SM4-GCM is the generic GCM construction (NIST SP 800-38D) over the SM4
//! block cipher with a 96-bit nonce and a 128-bit tag, as in RFC 8998 and
//! BouncyCastle: `aes_gcm::AesGcm<Sm4T, U12>` over our table-driven SM4
//! ([`crate::sm4t`]). The output is
//! `ciphertext ‖ tag` (16 bytes of tag at the end).

use std::fmt;

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockCipherEncrypt, BlockModeDecrypt, BlockModeEncrypt, KeyIvInit, StreamCipher};
use zeroize::Zeroize;

use crate::CryptoError;
use crate::sm4t::Sm4T;

/// SM4-GCM with a 96-bit nonce and a 128-bit tag.
type Sm4Gcm = aes_gcm::AesGcm<Sm4T, U12>;

/// Length of an SM4 key in bytes.
pub const SM4_KEY_LEN: usize = 16;
/// Length of an SM4-GCM nonce in bytes.
pub const GCM_NONCE_LEN: usize = 12;
/// Length of an SM4-GCM authentication tag in bytes.
pub const GCM_TAG_LEN: usize = 16;
/// SM4 block size in bytes (also the CBC IV and CTR counter-block size).
pub const SM4_BLOCK_LEN: usize = 16;

/// A 128-bit SM4 key. Zeroised on drop; `Debug` never shows the bytes.
#[derive(Clone)]
pub struct Sm4Key([u8; SM4_KEY_LEN]);

impl Drop for Sm4Key {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Sm4Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sm4Key(<redacted>)")
    }
}

impl PartialEq for Sm4Key {
    /// Constant-time comparison.
    fn eq(&self, other: &Self) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]).into()
    }
}
impl Eq for Sm4Key {}

impl Sm4Key {
    /// Wraps 16 key bytes.
    pub fn new(bytes: [u8; SM4_KEY_LEN]) -> Self {
        Sm4Key(bytes)
    }

    /// Takes exactly 16 bytes.
    pub fn from_slice(b: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; SM4_KEY_LEN] = b
            .try_into()
            .map_err(|_| CryptoError::InvalidKey(format!("sm4 key must be 16 bytes, got {}", b.len())))?;
        Ok(Sm4Key(arr))
    }

    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut k = [0u8; SM4_KEY_LEN];
        crate::random::fill(&mut k)?;
        let key = Sm4Key(k);
        k.zeroize();
        Ok(key)
    }

    /// The raw key bytes. Handle with care: never log them.
    pub fn expose_secret(&self) -> &[u8; SM4_KEY_LEN] {
        &self.0
    }
}

/// Encrypts one 16-byte block with raw SM4 (ECB of one block). Used by the
/// GB/T 32907 known-answer tests; do not use it to encrypt data.
pub fn sm4_encrypt_block(key: &Sm4Key, block: &[u8; SM4_BLOCK_LEN]) -> [u8; SM4_BLOCK_LEN] {
    use cbc::cipher::KeyInit as _;
    let c = Sm4T::new(&key.0.into());
    let mut b = (*block).into();
    c.encrypt_block(&mut b);
    b.into()
}

/// SM4-GCM encryption: returns `ciphertext ‖ tag` (plaintext length + 16).
/// The nonce must never repeat under the same key.
pub fn sm4_gcm_seal(
    key: &Sm4Key,
    nonce: &[u8; GCM_NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let c = Sm4Gcm::new(&key.0.into());
    c.encrypt(&(*nonce).into(), Payload { msg: plaintext, aad })
        .map_err(|_| CryptoError::Cipher("sm4-gcm encryption failed".into()))
}

/// SM4-GCM decryption of `ciphertext ‖ tag`; fails on any tampering of the
/// ciphertext, tag, nonce or associated data.
pub fn sm4_gcm_open(
    key: &Sm4Key,
    nonce: &[u8; GCM_NONCE_LEN],
    aad: &[u8],
    ciphertext_and_tag: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, CryptoError> {
    if ciphertext_and_tag.len() < GCM_TAG_LEN {
        return Err(CryptoError::Cipher(format!(
            "sm4-gcm ciphertext too short: {} bytes, need at least the 16-byte tag",
            ciphertext_and_tag.len()
        )));
    }
    let c = Sm4Gcm::new(&key.0.into());
    c.decrypt(
        &(*nonce).into(),
        Payload {
            msg: ciphertext_and_tag,
            aad,
        },
    )
    .map(zeroize::Zeroizing::new)
    .map_err(|_| CryptoError::Cipher("sm4-gcm authentication failed (wrong key or tampered data)".into()))
}

/// SM4-CBC encryption with PKCS#7 padding (as `openssl enc -sm4-cbc`).
pub fn sm4_cbc_encrypt(key: &Sm4Key, iv: &[u8; SM4_BLOCK_LEN], plaintext: &[u8]) -> Vec<u8> {
    cbc::Encryptor::<Sm4T>::new(&key.0.into(), &(*iv).into()).encrypt_padded_vec::<Pkcs7>(plaintext)
}

/// SM4-CBC decryption with PKCS#7 padding removal.
pub fn sm4_cbc_decrypt(
    key: &Sm4Key,
    iv: &[u8; SM4_BLOCK_LEN],
    ciphertext: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, CryptoError> {
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(SM4_BLOCK_LEN) {
        return Err(CryptoError::Cipher(format!(
            "sm4-cbc ciphertext length {} is not a positive multiple of 16",
            ciphertext.len()
        )));
    }
    cbc::Decryptor::<Sm4T>::new(&key.0.into(), &(*iv).into())
        .decrypt_padded_vec::<Pkcs7>(ciphertext)
        .map(zeroize::Zeroizing::new)
        .map_err(|_| CryptoError::Cipher("sm4-cbc bad padding (wrong key or tampered data)".into()))
}

/// SM4-CTR with a 128-bit big-endian counter block starting at `iv` (as
/// `openssl enc -sm4-ctr -iv`). Encryption and decryption are the same
/// operation; the buffer is transformed in place.
pub fn sm4_ctr_apply(key: &Sm4Key, iv: &[u8; SM4_BLOCK_LEN], data: &mut [u8]) {
    let mut c = ctr::Ctr128BE::<Sm4T>::new(&key.0.into(), &(*iv).into());
    c.apply_keystream(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h16(s: &str) -> [u8; 16] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    // GB/T 32907-2016 Appendix A, example 1: one block.
    #[test]
    fn kat_one_block() {
        let k = Sm4Key::new(h16("0123456789abcdeffedcba9876543210"));
        let out = sm4_encrypt_block(&k, &h16("0123456789abcdeffedcba9876543210"));
        assert_eq!(hex::encode(out), "681edf34d206965e86b3e94f536e4246");
    }

    // GB/T 32907-2016 Appendix A, example 2: the same block encrypted
    // 1,000,000 times with the same key.
    #[test]
    fn kat_million_iterations() {
        use cbc::cipher::KeyInit as _;
        let c = Sm4T::new(&h16("0123456789abcdeffedcba9876543210").into());
        let mut b = h16("0123456789abcdeffedcba9876543210").into();
        for _ in 0..1_000_000 {
            c.encrypt_block(&mut b);
        }
        let out: [u8; 16] = b.into();
        assert_eq!(hex::encode(out), "595298c7c6fd271f0402f804c33d3f66");
    }

    #[test]
    fn gcm_round_trip_and_tamper() {
        let k = Sm4Key::generate().unwrap();
        let n = [7u8; 12];
        let ct = sm4_gcm_seal(&k, &n, b"aad", b"hello sm4").unwrap();
        assert_eq!(ct.len(), 9 + 16);
        assert_eq!(&sm4_gcm_open(&k, &n, b"aad", &ct).unwrap()[..], b"hello sm4");
        assert!(sm4_gcm_open(&k, &n, b"aaD", &ct).is_err());
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(sm4_gcm_open(&k, &n, b"aad", &bad).is_err());
        assert!(sm4_gcm_open(&k, &n, b"aad", &ct[..3]).is_err());
        assert!(sm4_gcm_open(&Sm4Key::new([1; 16]), &n, b"aad", &ct).is_err());
    }

    // draft-ribose-cfrg-sm4-10 A.2.2.1 (SM4-CBC, no padding needed for the
    // vector; we check the first two blocks of our PKCS#7 output).
    #[test]
    fn cbc_vector_and_round_trip() {
        let k = Sm4Key::new(h16("0123456789abcdeffedcba9876543210"));
        let iv = h16("000102030405060708090a0b0c0d0e0f");
        let pt = hex::decode("aaaaaaaabbbbbbbbccccccccddddddddeeeeeeeeffffffffaaaaaaaabbbbbbbb").unwrap();
        let ct = sm4_cbc_encrypt(&k, &iv, &pt);
        assert_eq!(ct.len(), 48);
        assert_eq!(
            hex::encode(&ct[..32]),
            "78ebb11cc40b0a48312aaeb2040244cb4cb7016951909226979b0d15dc6a8f6d"
        );
        assert_eq!(&sm4_cbc_decrypt(&k, &iv, &ct).unwrap()[..], &pt[..]);
        assert!(sm4_cbc_decrypt(&k, &iv, &ct[..31]).is_err());
        assert!(sm4_cbc_decrypt(&k, &iv, &[]).is_err());
    }

    // draft-ribose-cfrg-sm4-10 A.2.5.1 (SM4-CTR).
    #[test]
    fn ctr_vector() {
        let k = Sm4Key::new(h16("0123456789abcdeffedcba9876543210"));
        let iv = h16("000102030405060708090a0b0c0d0e0f");
        let mut d = hex::decode(
            "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbccccccccccccccccddddddddddddddddeeeeeeeeeeeeeeeeffffffffffffffffaaaaaaaaaaaaaaaabbbbbbbbbbbbbbbb",
        )
        .unwrap();
        sm4_ctr_apply(&k, &iv, &mut d);
        assert_eq!(
            hex::encode(&d),
            "ac3236cb970cc20791364c395a1342d1a3cbc1878c6f30cd074cce385cdd70c7f234bc0e24c11980fd1286310ce37b926e02fcd0faa0baf38b2933851d824514"
        );
    }

    #[test]
    fn debug_is_redacted() {
        let k = Sm4Key::new([0xab; 16]);
        assert_eq!(format!("{k:?}"), "Sm4Key(<redacted>)");
    }
}
