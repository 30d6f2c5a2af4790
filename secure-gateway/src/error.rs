//! The error type of this crate's boundary.

/// Everything that can go wrong with keys, ciphertexts, signatures and
/// envelopes. Messages name what was wrong; they never contain key material
/// or plaintext.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A signature did not verify under the given key.
    #[error("signature verification failed{}", context_suffix(.context))]
    BadSignature {
        /// What was being verified (e.g. "envelope", "block 12 checkpoint").
        context: String,
    },
    /// Bytes that should have been a signature were not one.
    #[error("malformed signature: {0}")]
    MalformedSignature(String),
    /// A key could not be parsed or is not an SM2/SM4 key.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// Hex, base64 or a digest of the wrong length.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What kind of value (e.g. "sm3 digest").
        what: &'static str,
        /// Why it was rejected.
        detail: String,
    },
    /// Encryption or decryption failed (wrong key, tampered ciphertext).
    #[error("{0}")]
    Cipher(String),
    /// An encrypted private key needs a passphrase that was not supplied.
    #[error("passphrase missing: {0}")]
    PassphraseMissing(String),
    /// Reading or writing a key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
}

fn context_suffix(c: &str) -> String {
    if c.is_empty() {
        String::new()
    } else {
        format!(" ({c})")
    }
}
