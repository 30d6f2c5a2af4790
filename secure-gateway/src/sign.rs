//! SM2 digital signatures (GB/T 32918.2) with a distinguishing identifier.
//!
//! Signatures are deterministic (RFC 6979 nonce derivation with SM3), which is
//! a valid SM2 signature. The default distinguishing ID is
//! `1234567812345678` (GM/T 0009); OpenSSL must be told the same ID with
//! `-pkeyopt distid:1234567812345678`.

use std::fmt;

use sm2::dsa::signature::{Signer, Verifier};
use sm2::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};

use crate::{CryptoError, Sm3Digest, sm3};

/// The default SM2 distinguishing identifier (GM/T 0009-2012).
pub const DEFAULT_DIST_ID: &str = "1234567812345678";

/// A 64-byte raw SM2 signature (r ‖ s, big-endian). DER is available for
/// interop with OpenSSL and X.509.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sm2Signature(pub [u8; 64]);

impl fmt::Debug for Sm2Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sm2Signature({})", hex::encode(self.0))
    }
}

impl Sm2Signature {
    /// Parses 64 raw bytes (r ‖ s); rejects zero or out-of-range scalars.
    pub fn from_slice(b: &[u8]) -> Result<Self, CryptoError> {
        let sig = sm2::dsa::Signature::from_slice(b).map_err(|_| {
            CryptoError::MalformedSignature(format!(
                "expected 64 bytes r||s with 0 < r,s < n, got {} bytes",
                b.len()
            ))
        })?;
        Ok(Self::from_inner(&sig))
    }
    /// Parses a DER `SEQUENCE { r INTEGER, s INTEGER }`.
    pub fn from_der(b: &[u8]) -> Result<Self, CryptoError> {
        let sig = sm2::dsa::Signature::from_der(b)
            .map_err(|_| CryptoError::MalformedSignature("not a DER SM2 signature".into()))?;
        Ok(Self::from_inner(&sig))
    }
    /// Parses hex of the 64 raw bytes.
    pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
        let v = hex::decode(s).map_err(|e| CryptoError::MalformedSignature(format!("bad hex: {e}")))?;
        Self::from_slice(&v)
    }
    /// Lowercase hex of the 64 raw bytes.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// DER encoding (70–72 bytes), as OpenSSL writes it.
    pub fn to_der(&self) -> Vec<u8> {
        match self.inner() {
            Ok(s) => s.to_der().to_bytes().to_vec(),
            Err(_) => Vec::new(),
        }
    }
    fn from_inner(sig: &sm2::dsa::Signature) -> Self {
        let mut arr = [0u8; 64];
        arr.copy_from_slice(&sig.to_bytes());
        Sm2Signature(arr)
    }
    fn inner(&self) -> Result<sm2::dsa::Signature, CryptoError> {
        sm2::dsa::Signature::from_slice(&self.0)
            .map_err(|_| CryptoError::MalformedSignature("r or s out of range".into()))
    }
}

/// An SM2 private key for signing, bound to a distinguishing ID.
#[derive(Clone)]
pub struct Sm2SigningKey {
    secret: sm2::SecretKey,
    inner: sm2::dsa::SigningKey,
    verifying: Sm2VerifyingKey,
}

impl fmt::Debug for Sm2SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sm2SigningKey(key_id={})", self.verifying.key_id())
    }
}

impl Sm2SigningKey {
    /// A fresh key from the operating system's random source, default ID.
    pub fn generate() -> Self {
        use sm2::elliptic_curve::Generate;
        let sk = sm2::SecretKey::generate();
        Self::from_secret(sk, DEFAULT_DIST_ID).expect("the default distinguishing id is valid")
    }

    /// Wraps an `sm2::SecretKey` with a distinguishing ID.
    pub fn from_secret(secret: sm2::SecretKey, dist_id: &str) -> Result<Self, CryptoError> {
        let inner = sm2::dsa::SigningKey::new(dist_id, &secret)
            .map_err(|_| CryptoError::InvalidKey("distinguishing id too long".into()))?;
        let verifying = Sm2VerifyingKey::from_public(secret.public_key(), dist_id)?;
        Ok(Self {
            secret,
            inner,
            verifying,
        })
    }

    /// From the 32-byte private scalar (big-endian).
    pub fn from_bytes(bytes: &[u8], dist_id: &str) -> Result<Self, CryptoError> {
        let sk = sm2::SecretKey::from_slice(bytes)
            .map_err(|_| CryptoError::InvalidKey("not a 32-byte SM2 private scalar in [1, n-1]".into()))?;
        Self::from_secret(sk, dist_id)
    }

    /// The underlying RustCrypto secret key (for PKCS#8 and decryption).
    pub fn secret_key(&self) -> &sm2::SecretKey {
        &self.secret
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> &Sm2VerifyingKey {
        &self.verifying
    }

    /// Signs `msg` (SM3 with Z_A prefix, as GB/T 32918.2 specifies).
    pub fn sign(&self, msg: &[u8]) -> Sm2Signature {
        let sig: sm2::dsa::Signature = self.inner.sign(msg);
        Sm2Signature::from_inner(&sig)
    }
}

/// An SM2 public key for verification, bound to a distinguishing ID.
#[derive(Clone)]
pub struct Sm2VerifyingKey {
    public: sm2::PublicKey,
    inner: sm2::dsa::VerifyingKey,
    key_id: String,
}

impl PartialEq for Sm2VerifyingKey {
    fn eq(&self, other: &Self) -> bool {
        self.public == other.public && self.inner.distid() == other.inner.distid()
    }
}
impl Eq for Sm2VerifyingKey {}

impl fmt::Debug for Sm2VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sm2VerifyingKey(key_id={})", self.key_id)
    }
}

impl Sm2VerifyingKey {
    /// Wraps an `sm2::PublicKey`.
    pub fn from_public(public: sm2::PublicKey, dist_id: &str) -> Result<Self, CryptoError> {
        let inner = sm2::dsa::VerifyingKey::new(dist_id, public)
            .map_err(|_| CryptoError::InvalidKey("distinguishing id too long".into()))?;
        let key_id = compute_key_id(&public);
        Ok(Self { public, inner, key_id })
    }

    /// From an uncompressed (65-byte `04‖x‖y`) or compressed SEC1 point.
    pub fn from_sec1(bytes: &[u8], dist_id: &str) -> Result<Self, CryptoError> {
        let pk = sm2::PublicKey::from_sec1_bytes(bytes)
            .map_err(|_| CryptoError::InvalidKey("not an SM2 public point (SEC1)".into()))?;
        Self::from_public(pk, dist_id)
    }

    /// From an SPKI PEM (`-----BEGIN PUBLIC KEY-----`), default ID.
    pub fn from_public_key_pem(pem: &str) -> Result<Self, CryptoError> {
        let pk = sm2::PublicKey::from_public_key_pem(pem.trim())
            .map_err(|e| CryptoError::InvalidKey(format!("not an SM2 SPKI PEM public key: {e}")))?;
        Self::from_public(pk, DEFAULT_DIST_ID)
    }

    /// SPKI PEM.
    pub fn to_public_key_pem(&self) -> String {
        self.public.to_public_key_pem(LineEnding::LF).unwrap_or_default()
    }

    /// Uncompressed SEC1 point, 65 bytes.
    pub fn to_sec1(&self) -> Vec<u8> {
        self.inner.to_sec1_bytes().to_vec()
    }

    /// The RustCrypto public key (for encryption).
    pub fn public_key(&self) -> &sm2::PublicKey {
        &self.public
    }

    /// The key identifier: the first 16 bytes of SM3 over the uncompressed
    /// SEC1 point, as 32 hex digits. Stable across encodings of the same key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The distinguishing ID signatures under this key use (GB/T 32918.2).
    pub fn dist_id(&self) -> &str {
        self.inner.distid()
    }

    /// The full SM3 of the uncompressed SEC1 point (a block's `provider`).
    pub fn fingerprint(&self) -> Sm3Digest {
        sm3(&self.to_sec1())
    }

    /// Verifies `sig` over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &Sm2Signature) -> Result<(), CryptoError> {
        let s = sig.inner()?;
        self.inner
            .verify(msg, &s)
            .map_err(|_| CryptoError::BadSignature { context: String::new() })
    }
}

fn compute_key_id(pk: &sm2::PublicKey) -> String {
    use sm2::elliptic_curve::sec1::ToSec1Point;
    let pt = pk.to_sec1_point(false);
    hex::encode(&sm3(pt.as_bytes()).0[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_round_trip() {
        let k = Sm2SigningKey::generate();
        let sig = k.sign(b"hello");
        k.verifying_key().verify(b"hello", &sig).unwrap();
        assert!(k.verifying_key().verify(b"hellp", &sig).is_err());
        let der = sig.to_der();
        assert_eq!(Sm2Signature::from_der(&der).unwrap(), sig);
        let pem = k.verifying_key().to_public_key_pem();
        let vk = Sm2VerifyingKey::from_public_key_pem(&pem).unwrap();
        assert_eq!(&vk, k.verifying_key());
        vk.verify(b"hello", &sig).unwrap();
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Sm2Signature::from_slice(&[0u8; 64]).is_err());
        assert!(Sm2Signature::from_slice(&[1u8; 3]).is_err());
        assert!(Sm2Signature::from_der(b"\x30\x02\x01").is_err());
        assert!(Sm2VerifyingKey::from_public_key_pem("nope").is_err());
        assert!(Sm2VerifyingKey::from_sec1(&[4u8; 65], DEFAULT_DIST_ID).is_err());
    }
}
