//! The crypto-provider interface (T/CPMA 026-2023 7.2.1, requirement R3.2:
//! "crypto library selectable by configuration among conforming
//! libraries"), so that an HSM or another certified SM library can replace
//! the pure-Rust default.
//!
//! **Invariant:** private keys never cross this interface. Callers name them
//! by [`KeyHandle`]; the provider signs, decrypts and unwraps inside. Public
//! keys, digests, ciphertexts and the per-message data keys of sealed
//! envelopes (which exist only to encrypt one payload) do cross it. Software
//! keys go *in* once, at start ([`CryptoProvider::import_sm2_pem`]), and
//! never come out.
//!
//! The trait is object safe: pass `Arc<dyn CryptoProvider>` around, or a
//! [`Signer`] (a provider and the handle of one of its SM2 keys) where
//! something signs. [`ProviderKind`] is the `[crypto] provider` setting of
//! every configuration file that names one.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use zeroize::Zeroizing;

use crate::openssl_provider::OpensslProvider;
use crate::sym::GCM_NONCE_LEN;
use crate::{CryptoError, Sm2CiphertextFormat, Sm2Signature, Sm2SigningKey, Sm2VerifyingKey, Sm3Digest, Sm4Key};

/// The name of a key held by a provider (an HSM slot label, a key id, a
/// configured name). Carries no key material.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct KeyHandle(String);

impl KeyHandle {
    /// A handle with this name.
    pub fn new(name: impl Into<String>) -> Self {
        KeyHandle(name.into())
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHandle({})", self.0)
    }
}

impl fmt::Display for KeyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SM2/SM3/SM4 operations of a conforming cryptographic module.
///
/// Implementations must be `Send + Sync` and must never log or return
/// private key material. All SM2 signatures use the key's distinguishing
/// ID (default `1234567812345678`); SM2 ciphertexts are GM/T 0009 DER.
pub trait CryptoProvider: Send + Sync + fmt::Debug {
    /// A short name for logs and `vaxgate bench` ("rustcrypto", "hsm:…").
    fn name(&self) -> &str;

    /// SM3 of `data`.
    fn sm3(&self, data: &[u8]) -> Sm3Digest;

    /// Fills `buf` with cryptographically secure random bytes.
    fn random(&self, buf: &mut [u8]) -> Result<(), CryptoError>;

    /// The public half of the SM2 key behind `key`.
    fn public_key(&self, key: &KeyHandle) -> Result<Sm2VerifyingKey, CryptoError>;

    /// SM2 signature (with Z_A, GB/T 32918.2) of `msg` by the key behind `key`.
    fn sign(&self, key: &KeyHandle, msg: &[u8]) -> Result<Sm2Signature, CryptoError>;

    /// Verifies an SM2 signature under a public key.
    fn verify(&self, key: &Sm2VerifyingKey, msg: &[u8], sig: &Sm2Signature) -> Result<(), CryptoError>;

    /// SM2 encryption of `msg` to `recipient` (GM/T 0009 DER, C1C3C2).
    fn sm2_encrypt(&self, recipient: &Sm2VerifyingKey, msg: &[u8]) -> Result<Vec<u8>, CryptoError>;

    /// SM2 decryption (GM/T 0009 DER) with the key behind `key`.
    fn sm2_decrypt(&self, key: &KeyHandle, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError>;

    /// SM4-GCM encryption under a caller-held (data) key: `ciphertext ‖ tag`.
    fn sm4_gcm_seal(
        &self,
        key: &Sm4Key,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError>;

    /// SM4-GCM decryption under a caller-held (data) key.
    fn sm4_gcm_open(
        &self,
        key: &Sm4Key,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError>;

    /// SM4-GCM encryption under the provider-held key-encryption key `kek`.
    fn kek_seal(
        &self,
        kek: &KeyHandle,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError>;

    /// SM4-GCM decryption under the provider-held key-encryption key `kek`.
    fn kek_open(
        &self,
        kek: &KeyHandle,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError>;

    /// Takes a software SM2 key into the provider under `handle` (keys
    /// generated in process, e.g. by the sandbox and the tests) and returns
    /// its public half. A provider that keeps its keys outside the process
    /// (an HSM) refuses; its keys are named by handle in its configuration.
    fn import_sm2_key(&self, handle: KeyHandle, key: &Sm2SigningKey) -> Result<Sm2VerifyingKey, CryptoError> {
        let _ = (handle, key);
        Err(refuses_software_keys(self.name()))
    }

    /// Takes a PKCS#8 PEM private key (encrypted under `passphrase`, or in
    /// the clear when `passphrase` is `None`) into the provider under
    /// `handle`, signing with the distinguishing ID `dist_id`; returns its
    /// public half. The default decodes with [`crate::keys`] and calls
    /// [`CryptoProvider::import_sm2_key`].
    fn import_sm2_pem(
        &self,
        handle: KeyHandle,
        pem: &str,
        passphrase: Option<&str>,
        dist_id: &str,
    ) -> Result<Sm2VerifyingKey, CryptoError> {
        let key = crate::keys::private_key_from_pem(pem, passphrase, dist_id)?;
        self.import_sm2_key(handle, &key)
    }

    /// Takes an SM4 key-encryption key into the provider under `handle`.
    fn import_kek(&self, handle: KeyHandle, key: Sm4Key) -> Result<(), CryptoError> {
        let _ = (handle, key);
        Err(refuses_software_keys(self.name()))
    }
}

fn refuses_software_keys(name: &str) -> CryptoError {
    CryptoError::UnknownKey(format!(
        "the {name} provider does not take software keys; name its keys by handle"
    ))
}

/// Reads the encrypted PKCS#8 key file `path` (passphrase from the
/// environment variable named `passphrase_env`) into `provider` under
/// `handle`, with the default distinguishing ID. Errors name the file and
/// the variable, never the passphrase.
pub fn load_sm2_key_file(
    provider: &dyn CryptoProvider,
    handle: KeyHandle,
    path: &Path,
    passphrase_env: &str,
) -> Result<Sm2VerifyingKey, CryptoError> {
    let in_file = |e: CryptoError| crate::keys::in_file(path, e);
    let pem = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| CryptoError::Io {
        path: path.display().to_string(),
        source,
    })?);
    let pw = crate::keys::passphrase_from_env(passphrase_env).map_err(in_file)?;
    provider
        .import_sm2_pem(handle, &pem, Some(&pw), crate::DEFAULT_DIST_ID)
        .map_err(in_file)
}

/// Which library does the SM2/SM3/SM4 work: the `[crypto] provider` key of
/// the gateway's, the agent's and the sandbox's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ProviderKind {
    /// Pure-Rust RustCrypto `sm2`/`sm3`/`sm4` (the default).
    #[default]
    #[serde(rename = "rustcrypto")]
    RustCrypto,
    /// The system OpenSSL 3 (`libssl3`), see [`crate::openssl_provider`].
    #[serde(rename = "openssl")]
    Openssl,
}

impl ProviderKind {
    /// Every provider, in the order `--help` and errors list them.
    pub const ALL: [ProviderKind; 2] = [ProviderKind::RustCrypto, ProviderKind::Openssl];

    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::RustCrypto => "rustcrypto",
            ProviderKind::Openssl => "openssl",
        }
    }

    /// A new provider of this kind, with no keys.
    pub fn build(self) -> Result<Arc<dyn CryptoProvider>, CryptoError> {
        Ok(match self {
            ProviderKind::RustCrypto => Arc::new(RustCryptoProvider::new()),
            ProviderKind::Openssl => Arc::new(OpensslProvider::new()?),
        })
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProviderKind {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProviderKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            CryptoError::UnknownKey(format!("unknown crypto provider {s:?}; valid: rustcrypto, openssl"))
        })
    }
}

/// The `[crypto]` table of a configuration file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoConfig {
    /// `"rustcrypto"` (default) or `"openssl"`.
    #[serde(default)]
    pub provider: ProviderKind,
}

/// One SM2 key of a provider, ready to sign: what the ledger, the gateway
/// and the agent hold instead of a private key. Cloning shares the provider.
#[derive(Clone)]
pub struct Signer {
    provider: Arc<dyn CryptoProvider>,
    handle: KeyHandle,
    public: Sm2VerifyingKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("provider", &self.provider.name())
            .field("key", &self.handle)
            .field("key_id", &self.public.key_id())
            .finish()
    }
}

impl Signer {
    /// The key behind `handle` in `provider` (which must hold it).
    pub fn new(provider: Arc<dyn CryptoProvider>, handle: KeyHandle) -> Result<Self, CryptoError> {
        let public = provider.public_key(&handle)?;
        Ok(Signer {
            provider,
            handle,
            public,
        })
    }

    /// Imports a software key into `provider` under `handle` and returns
    /// its signer (the sandbox's generated keys, tests).
    pub fn import(
        provider: Arc<dyn CryptoProvider>,
        handle: KeyHandle,
        key: &Sm2SigningKey,
    ) -> Result<Self, CryptoError> {
        provider.import_sm2_key(handle.clone(), key)?;
        Self::new(provider, handle)
    }

    /// A fresh software key (the operating system's random source, default
    /// distinguishing ID) imported into `provider` under `handle`: the
    /// sandbox's participants and the tests.
    pub fn generate(provider: Arc<dyn CryptoProvider>, handle: KeyHandle) -> Result<Self, CryptoError> {
        Self::import(provider, handle, &Sm2SigningKey::generate())
    }

    /// Loads an encrypted key file into `provider` (see
    /// [`load_sm2_key_file`]) and returns its signer.
    pub fn load_file(
        provider: Arc<dyn CryptoProvider>,
        handle: KeyHandle,
        path: &Path,
        passphrase_env: &str,
    ) -> Result<Self, CryptoError> {
        load_sm2_key_file(&*provider, handle.clone(), path, passphrase_env)?;
        Self::new(provider, handle)
    }

    /// SM2 signature of `msg` (with Z_A) by this key.
    pub fn sign(&self, msg: &[u8]) -> Result<Sm2Signature, CryptoError> {
        self.provider.sign(&self.handle, msg)
    }

    /// The public half.
    pub fn verifying_key(&self) -> &Sm2VerifyingKey {
        &self.public
    }

    /// The key id of the public half.
    pub fn key_id(&self) -> &str {
        self.public.key_id()
    }

    /// The handle in the provider.
    pub fn handle(&self) -> &KeyHandle {
        &self.handle
    }

    /// The provider that holds the key.
    pub fn provider(&self) -> &Arc<dyn CryptoProvider> {
        &self.provider
    }
}

/// The keys of one kind a software provider holds, by handle.
pub(crate) struct KeyStore<K> {
    kind: &'static str,
    keys: RwLock<HashMap<KeyHandle, K>>,
}

impl<K> KeyStore<K> {
    /// An empty store of `kind` keys ("sm2", "sm4 key-encryption").
    pub(crate) fn new(kind: &'static str) -> Self {
        KeyStore {
            kind,
            keys: RwLock::default(),
        }
    }

    /// Runs `f` on the key behind `h`; an unknown handle is an error naming it.
    pub(crate) fn with<T>(
        &self,
        h: &KeyHandle,
        f: impl FnOnce(&K) -> Result<T, CryptoError>,
    ) -> Result<T, CryptoError> {
        let m = self.keys.read().map_err(|_| poisoned())?;
        f(m.get(h).ok_or_else(|| unknown_key(self.kind, h))?)
    }

    /// Adds (or replaces) the key behind `h`.
    pub(crate) fn insert(&self, h: KeyHandle, key: K) -> Result<(), CryptoError> {
        self.keys.write().map_err(|_| poisoned())?.insert(h, key);
        Ok(())
    }

    /// The handles, sorted (for `Debug`; never the keys).
    pub(crate) fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .keys
            .read()
            .map(|m| m.keys().map(|h| h.0.clone()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

pub(crate) fn poisoned() -> CryptoError {
    CryptoError::Cipher("provider key store lock poisoned".into())
}

/// The default provider: pure-Rust RustCrypto `sm2`/`sm3`/`sm4`, keys held
/// in process memory (zeroised on drop).
pub struct RustCryptoProvider {
    sm2: KeyStore<Sm2SigningKey>,
    kek: KeyStore<Sm4Key>,
}

impl Default for RustCryptoProvider {
    fn default() -> Self {
        RustCryptoProvider {
            sm2: KeyStore::new("sm2"),
            kek: KeyStore::new("sm4 key-encryption"),
        }
    }
}

impl fmt::Debug for RustCryptoProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RustCryptoProvider")
            .field("sm2_keys", &self.sm2.names())
            .field("keks", &self.kek.names())
            .finish()
    }
}

fn unknown_key(kind: &str, h: &KeyHandle) -> CryptoError {
    CryptoError::UnknownKey(format!("no {kind} key named {:?} in the provider", h.0))
}

impl RustCryptoProvider {
    /// An empty provider.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty provider behind an `Arc<dyn CryptoProvider>`.
    pub fn shared() -> Arc<dyn CryptoProvider> {
        Arc::new(Self::new())
    }

    /// Adds (or replaces) the SM2 key behind `handle`.
    pub fn insert_sm2_key(&self, handle: KeyHandle, key: Sm2SigningKey) {
        let _ = self.sm2.insert(handle, key);
    }

    /// Adds an SM2 key under a handle equal to its key id, and returns it.
    pub fn add_sm2_key(&self, key: Sm2SigningKey) -> KeyHandle {
        let h = KeyHandle::new(key.verifying_key().key_id());
        self.insert_sm2_key(h.clone(), key);
        h
    }

    /// Adds (or replaces) the SM4 key-encryption key behind `handle`.
    pub fn insert_kek(&self, handle: KeyHandle, key: Sm4Key) {
        let _ = self.kek.insert(handle, key);
    }
}

/// The SM4-GCM methods of [`CryptoProvider`] for a software provider (one
/// that keeps its key-encryption keys in a `kek: KeyStore<Sm4Key>` field):
/// `sm4_gcm_seal`/`sm4_gcm_open` under a data key, `kek_seal`/`kek_open`
/// under the key-encryption key looked up by handle, and `import_kek`. The
/// provider's own SM4-GCM does the work: `$seal` and `$open` take (key,
/// nonce, aad, input) like [`crate::sym::sm4_gcm_seal`] and
/// [`crate::sym::sm4_gcm_open`].
macro_rules! software_sm4_gcm {
    ($seal:path, $open:path) => {
        fn sm4_gcm_seal(
            &self,
            key: &$crate::Sm4Key,
            nonce: &[u8; $crate::sym::GCM_NONCE_LEN],
            aad: &[u8],
            pt: &[u8],
        ) -> Result<Vec<u8>, $crate::CryptoError> {
            $seal(key, nonce, aad, pt)
        }

        fn sm4_gcm_open(
            &self,
            key: &$crate::Sm4Key,
            nonce: &[u8; $crate::sym::GCM_NONCE_LEN],
            aad: &[u8],
            ct: &[u8],
        ) -> Result<::zeroize::Zeroizing<Vec<u8>>, $crate::CryptoError> {
            $open(key, nonce, aad, ct)
        }

        fn kek_seal(
            &self,
            kek: &$crate::KeyHandle,
            nonce: &[u8; $crate::sym::GCM_NONCE_LEN],
            aad: &[u8],
            pt: &[u8],
        ) -> Result<Vec<u8>, $crate::CryptoError> {
            self.kek.with(kek, |k| $seal(k, nonce, aad, pt))
        }

        fn kek_open(
            &self,
            kek: &$crate::KeyHandle,
            nonce: &[u8; $crate::sym::GCM_NONCE_LEN],
            aad: &[u8],
            ct: &[u8],
        ) -> Result<::zeroize::Zeroizing<Vec<u8>>, $crate::CryptoError> {
            self.kek.with(kek, |k| $open(k, nonce, aad, ct))
        }

        fn import_kek(&self, handle: $crate::KeyHandle, key: $crate::Sm4Key) -> Result<(), $crate::CryptoError> {
            self.kek.insert(handle, key)
        }
    };
}
pub(crate) use software_sm4_gcm;

impl CryptoProvider for RustCryptoProvider {
    fn name(&self) -> &str {
        "rustcrypto"
    }

    fn sm3(&self, data: &[u8]) -> Sm3Digest {
        crate::sm3(data)
    }

    fn random(&self, buf: &mut [u8]) -> Result<(), CryptoError> {
        crate::random::fill(buf)
    }

    fn public_key(&self, key: &KeyHandle) -> Result<Sm2VerifyingKey, CryptoError> {
        self.sm2.with(key, |k| Ok(k.verifying_key().clone()))
    }

    fn sign(&self, key: &KeyHandle, msg: &[u8]) -> Result<Sm2Signature, CryptoError> {
        self.sm2.with(key, |k| Ok(k.sign(msg)))
    }

    fn verify(&self, key: &Sm2VerifyingKey, msg: &[u8], sig: &Sm2Signature) -> Result<(), CryptoError> {
        key.verify(msg, sig)
    }

    fn sm2_encrypt(&self, recipient: &Sm2VerifyingKey, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        recipient.encrypt(msg, Sm2CiphertextFormat::Der)
    }

    fn sm2_decrypt(&self, key: &KeyHandle, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.sm2.with(key, |k| k.decrypt(ciphertext, Sm2CiphertextFormat::Der))
    }

    fn import_sm2_key(&self, handle: KeyHandle, key: &Sm2SigningKey) -> Result<Sm2VerifyingKey, CryptoError> {
        self.sm2.insert(handle, key.clone())?;
        Ok(key.verifying_key().clone())
    }

    software_sm4_gcm!(crate::sym::sm4_gcm_seal, crate::sym::sm4_gcm_open);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + ?Sized>() {}

    #[test]
    fn object_safe_send_sync_and_handles() {
        assert_send_sync::<dyn CryptoProvider>();
        let p = RustCryptoProvider::new();
        let h = p.add_sm2_key(Sm2SigningKey::generate());
        p.insert_kek(KeyHandle::new("cdc-kek"), Sm4Key::new([9; 16]));
        let dynp: Arc<dyn CryptoProvider> = Arc::new(p);
        let vk = dynp.public_key(&h).unwrap();
        let sig = dynp.sign(&h, b"m").unwrap();
        dynp.verify(&vk, b"m", &sig).unwrap();
        let ct = dynp.sm2_encrypt(&vk, b"k").unwrap();
        assert_eq!(&dynp.sm2_decrypt(&h, &ct).unwrap()[..], b"k");
        let n = [1u8; 12];
        let w = dynp.kek_seal(&KeyHandle::new("cdc-kek"), &n, b"a", b"key").unwrap();
        assert_eq!(
            &dynp.kek_open(&KeyHandle::new("cdc-kek"), &n, b"a", &w).unwrap()[..],
            b"key"
        );
        let e = dynp.sign(&KeyHandle::new("nope"), b"m").unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        assert!(dynp.kek_open(&KeyHandle::new("other"), &n, b"a", &w).is_err());
        let dbg = format!("{dynp:?}");
        assert!(dbg.contains("cdc-kek") && !dbg.contains("09090909"), "{dbg}");
    }
}
