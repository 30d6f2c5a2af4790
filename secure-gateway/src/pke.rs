//! SM2 public-key encryption (GB/T 32918.4) with SM3.
//!
//! Two ciphertext layouts are supported, both in the modern `C1‖C3‖C2` order:
//! * [`Sm2CiphertextFormat::Der`]: the GM/T 0009 ASN.1 structure
//!   `SEQUENCE { x INTEGER, y INTEGER, hash OCTET STRING(32), ciphertext OCTET STRING }`,
//!   which is what `openssl pkeyutl -encrypt` writes and reads. The default.
//! * [`Sm2CiphertextFormat::Raw`]: `04 ‖ x1 ‖ y1 ‖ C3 ‖ C2` (97 + message bytes),
//!   the layout of GB/T 32918.4 and most Chinese SDKs.
//!
//! GM/T practice is to use separate key pairs for signing and for encryption
//! ("dual certificates"); the types here allow either, the choice is the
//! deployment's.

use sm2::pke::{DecryptingKey, EncryptingKey, Mode};
use zeroize::Zeroizing;

use crate::{CryptoError, Sm2SigningKey, Sm2VerifyingKey};

/// Wire layout of an SM2 ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sm2CiphertextFormat {
    /// GM/T 0009 DER (OpenSSL's format).
    #[default]
    Der,
    /// `04 ‖ x1 ‖ y1 ‖ C3 ‖ C2`.
    Raw,
}

impl Sm2VerifyingKey {
    /// Encrypts `msg` (1 byte or more) to this public key, SM2 with SM3,
    /// C1C3C2 order, in the given layout.
    pub fn encrypt(&self, msg: &[u8], format: Sm2CiphertextFormat) -> Result<Vec<u8>, CryptoError> {
        if msg.is_empty() {
            return Err(CryptoError::Cipher(
                "sm2 encryption of an empty message is undefined".into(),
            ));
        }
        let ek = EncryptingKey::new_with_mode(*self.public_key(), Mode::C1C3C2);
        let mut rng = sm2::elliptic_curve::common::getrandom::SysRng;
        let r = match format {
            Sm2CiphertextFormat::Der => ek.encrypt_der(&mut rng, msg),
            Sm2CiphertextFormat::Raw => ek.encrypt(&mut rng, msg),
        };
        r.map_err(|_| CryptoError::Cipher("sm2 encryption failed".into()))
    }
}

impl Sm2SigningKey {
    /// Decrypts an SM2 ciphertext addressed to this key pair. Malformed
    /// bytes, a point off the curve or a wrong C3 all give
    /// [`CryptoError::Cipher`]; nothing about the plaintext is revealed.
    pub fn decrypt(&self, ciphertext: &[u8], format: Sm2CiphertextFormat) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let dk = DecryptingKey::new_with_mode(self.secret_key().to_nonzero_scalar(), Mode::C1C3C2);
        let r = match format {
            Sm2CiphertextFormat::Der => dk.decrypt_der(ciphertext),
            Sm2CiphertextFormat::Raw => dk.decrypt(ciphertext),
        };
        r.map(Zeroizing::new).map_err(|_| {
            CryptoError::Cipher(format!(
                "sm2 decryption failed ({} bytes, {:?} layout): malformed ciphertext or wrong key",
                ciphertext.len(),
                format
            ))
        })
    }
}
