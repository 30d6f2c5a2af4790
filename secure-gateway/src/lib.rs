//! Everything in vaxgate that touches keys: SM3 hashing (GB/T 32905), SM2
//! signatures and public-key encryption (GB/T 32918), SM4 (GB/T 32907),
//! key storage, sealed envelopes and request signing.
//!
//! Every private-key operation goes through a [`provider::CryptoProvider`]
//! chosen by configuration ([`provider::ProviderKind`]): pure-Rust
//! RustCrypto (the default) or the system OpenSSL 3
//! ([`openssl_provider`]); an HSM fits the same trait (T/CPMA 026-2023
//! 7.2.1, requirement R3.2).
//!
//! Every parse of outside bytes returns a typed [`CryptoError`]; nothing here
//! panics on input.
#![forbid(unsafe_code)]

pub mod batch;
pub mod envelope;
pub mod error;
pub mod hash;
pub mod keys;
pub mod merkle;
pub mod openssl_provider;
pub mod pke;
pub mod provider;
pub mod random;
pub mod request;
pub mod sign;
pub mod sm4t;
pub mod sym;

pub use batch::{BATCH_MEDIA_TYPE, BatchHeader, ReceivedBatch, RecordProof, SignedBatch, sign_batch};
pub use envelope::{
    BatchSealer, ContentType, EnvelopeHeader, EnvelopeMeta, EnvelopeVersion, OpenedEnvelope, Recipient, RecipientKey,
    SealedEnvelope, open, seal, seal_unsigned,
};
pub use error::CryptoError;
pub use hash::{Sm3Digest, Sm3Hasher, sm3};
pub use keys::{DEFAULT_PASSPHRASE_ENV, KeyProtection, load_signing_key, load_verifying_key};
pub use openssl_provider::OpensslProvider;
pub use pke::Sm2CiphertextFormat;
pub use provider::{
    CryptoConfig, CryptoProvider, KeyHandle, ProviderKind, RustCryptoProvider, Signer, load_sm2_key_file,
};
pub use sign::{DEFAULT_DIST_ID, Sm2Signature, Sm2SigningKey, Sm2VerifyingKey};
pub use sym::Sm4Key;
