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
    /// No key with this handle or name is available to the provider.
    #[error("unknown key: {0}")]
    UnknownKey(String),
    /// A sealed envelope or signed batch is malformed, has an unsupported
    /// version, or cannot be processed the way it was asked to be.
    #[error("invalid envelope: {0}")]
    Envelope(String),
    /// The signer named in an envelope or batch is not the expected one.
    #[error("signer mismatch: expected key id {expected}, found {found}")]
    SignerMismatch {
        /// The key id the caller trusts.
        expected: String,
        /// The key id the envelope names.
        found: String,
    },
    /// The envelope carries no wrapped data key for this recipient.
    #[error("not a recipient: {0}")]
    NotARecipient(String),
    /// A recomputed digest differs from the signed one (tampering or
    /// corruption detected after decryption or in a Merkle proof).
    #[error("digest mismatch: {0}")]
    DigestMismatch(String),
    /// A key file to be written already exists; keys are never overwritten.
    #[error("refusing to overwrite existing key file {0}")]
    KeyFileExists(String),
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
    if c.is_empty() { String::new() } else { format!(" ({c})") }
}
