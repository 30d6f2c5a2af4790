//! Key storage: SM2 private keys as **encrypted PKCS#8 PEM**, public keys as
//! SPKI PEM.
//!
//! The private-key scheme (documented in `docs/crypto.md`) is PKCS#8
//! `EncryptedPrivateKeyInfo` with PBES2 (RFC 8018): PBKDF2-HMAC-SHA256
//! (600,000 iterations, 16-byte random salt) deriving an AES-256-CBC key
//! (16-byte random IV). OpenSSL 3 reads it with
//! `openssl pkey -in k.key.pem -passin env:VAXGATE_KEY_PASSPHRASE`. The inner
//! `PrivateKeyInfo` carries the SM2 OID (1.2.156.10197.1.301) as the curve.
//!
//! The passphrase comes from an environment variable whose *name* is
//! configurable ([`DEFAULT_PASSPHRASE_ENV`] by default). Writing a private key
//! without encryption needs the explicitly named
//! [`KeyProtection::DangerUnencrypted`].

use std::fs;
use std::io::Write;
use std::path::Path;

use sm2::pkcs8::der::pem::{LineEnding, PemLabel};
use sm2::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncryptedPrivateKeyInfoRef, PrivateKeyInfoRef};
use zeroize::Zeroizing;

use crate::{CryptoError, DEFAULT_DIST_ID, Sm2SigningKey, Sm2VerifyingKey};

/// The environment variable holding the key passphrase unless configured
/// otherwise.
pub const DEFAULT_PASSPHRASE_ENV: &str = "VAXGATE_KEY_PASSPHRASE";

/// PBKDF2-HMAC-SHA256 iterations used when writing keys (OWASP 2023 figure).
pub const PBKDF2_ITERATIONS: u32 = 600_000;

/// How a private key is protected at rest.
#[derive(Clone)]
pub enum KeyProtection {
    /// PBES2 (PBKDF2-HMAC-SHA256 + AES-256-CBC) under this passphrase.
    Passphrase(Zeroizing<String>),
    /// No encryption at all. Only for throwaway test keys; the name is meant
    /// to stand out in review.
    DangerUnencrypted,
}

impl std::fmt::Debug for KeyProtection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyProtection::Passphrase(_) => f.write_str("KeyProtection::Passphrase(<redacted>)"),
            KeyProtection::DangerUnencrypted => f.write_str("KeyProtection::DangerUnencrypted"),
        }
    }
}

impl KeyProtection {
    /// A passphrase read from the environment variable `var`
    /// (see [`passphrase_from_env`]).
    pub fn from_env(var: &str) -> Result<Self, CryptoError> {
        Ok(KeyProtection::Passphrase(passphrase_from_env(var)?))
    }
}

/// Reads a passphrase from the environment variable named `var`. A missing,
/// empty or non-UTF-8 variable is [`CryptoError::PassphraseMissing`] naming
/// the variable (never its value).
pub fn passphrase_from_env(var: &str) -> Result<Zeroizing<String>, CryptoError> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(Zeroizing::new(v)),
        Ok(_) => Err(CryptoError::PassphraseMissing(format!(
            "environment variable {var} is empty"
        ))),
        Err(std::env::VarError::NotPresent) => Err(CryptoError::PassphraseMissing(format!(
            "environment variable {var} is not set"
        ))),
        Err(std::env::VarError::NotUnicode(_)) => Err(CryptoError::PassphraseMissing(format!(
            "environment variable {var} is not valid UTF-8"
        ))),
    }
}

/// What a PEM private-key file holds, read from its label (RFC 7468).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemKind {
    /// PKCS#8 `EncryptedPrivateKeyInfo` (the label `ENCRYPTED PRIVATE KEY`).
    Encrypted,
    /// PKCS#8 `PrivateKeyInfo` in the clear (the label `PRIVATE KEY`).
    Unencrypted,
}

impl PemKind {
    /// The kind of the PEM private key `pem`, or `None` when it is not a
    /// PKCS#8 private-key PEM document.
    pub fn of(pem: &str) -> Option<PemKind> {
        match sm2::pkcs8::der::pem::decode_label(pem.trim().as_bytes()).ok()? {
            EncryptedPrivateKeyInfoRef::PEM_LABEL => Some(PemKind::Encrypted),
            PrivateKeyInfoRef::PEM_LABEL => Some(PemKind::Unencrypted),
            _ => None,
        }
    }
}

/// Encodes a private key as PKCS#8 PEM: `ENCRYPTED PRIVATE KEY` (PBES2) or,
/// with [`KeyProtection::DangerUnencrypted`], a plain `PRIVATE KEY`.
pub fn private_key_to_pem(key: &Sm2SigningKey, protection: &KeyProtection) -> Result<Zeroizing<String>, CryptoError> {
    let enc_err = |e: &dyn std::fmt::Display| CryptoError::InvalidKey(format!("cannot encode pkcs#8: {e}"));
    let doc = key.secret_key().to_pkcs8_der().map_err(|e| enc_err(&e))?;
    match protection {
        KeyProtection::DangerUnencrypted => doc
            .to_pem(PrivateKeyInfoRef::PEM_LABEL, LineEnding::LF)
            .map_err(|e| enc_err(&e)),
        KeyProtection::Passphrase(pw) => {
            if pw.is_empty() {
                return Err(CryptoError::PassphraseMissing("empty passphrase".into()));
            }
            let salt: [u8; 16] = crate::random::bytes()?;
            let iv: [u8; 16] = crate::random::bytes()?;
            let params =
                pkcs8::pkcs5::pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(PBKDF2_ITERATIONS, &salt, iv)
                    .map_err(|e| enc_err(&e))?;
            let info = PrivateKeyInfoRef::try_from(doc.as_bytes()).map_err(|e| enc_err(&e))?;
            let enc = info
                .encrypt_with_params(params, pw.as_bytes())
                .map_err(|e| enc_err(&e))?;
            enc.to_pem(EncryptedPrivateKeyInfoRef::PEM_LABEL, LineEnding::LF)
                .map_err(|e| enc_err(&e))
        }
    }
}

/// Parses a PKCS#8 PEM private key. `ENCRYPTED PRIVATE KEY` needs a
/// passphrase; an unencrypted `PRIVATE KEY` is accepted only when no
/// passphrase is given, so an encrypted deployment never silently loads a
/// plaintext key.
pub fn private_key_from_pem(pem: &str, passphrase: Option<&str>, dist_id: &str) -> Result<Sm2SigningKey, CryptoError> {
    let pem = pem.trim();
    let secret = match PemKind::of(pem) {
        Some(PemKind::Encrypted) => {
            let pw = passphrase.ok_or_else(|| CryptoError::PassphraseMissing("the key is encrypted".into()))?;
            sm2::SecretKey::from_pkcs8_encrypted_pem(pem, pw.as_bytes()).map_err(|_| {
                CryptoError::InvalidKey("cannot decrypt pkcs#8 key: wrong passphrase or not an SM2 key".into())
            })?
        }
        Some(PemKind::Unencrypted) => {
            if passphrase.is_some() {
                return Err(CryptoError::InvalidKey(
                    "key is stored unencrypted but a passphrase was configured; re-encrypt it".into(),
                ));
            }
            sm2::SecretKey::from_pkcs8_pem(pem)
                .map_err(|e| CryptoError::InvalidKey(format!("not an SM2 pkcs#8 private key: {e}")))?
        }
        None => {
            return Err(CryptoError::InvalidKey(format!(
                "expected a PEM '{}' or '{}' block",
                EncryptedPrivateKeyInfoRef::PEM_LABEL,
                PrivateKeyInfoRef::PEM_LABEL
            )));
        }
    };
    Sm2SigningKey::from_secret(secret, dist_id)
}

fn io_err(path: &Path, source: std::io::Error) -> CryptoError {
    CryptoError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn in_file(path: &Path, e: CryptoError) -> CryptoError {
    match e {
        CryptoError::InvalidKey(m) => CryptoError::InvalidKey(format!("{}: {m}", path.display())),
        CryptoError::PassphraseMissing(m) => CryptoError::PassphraseMissing(format!("{}: {m}", path.display())),
        other => other,
    }
}

/// Creates `path` exclusively (fails if it exists) with the given Unix mode
/// and writes `data`.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), CryptoError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => CryptoError::KeyFileExists(path.display().to_string()),
        _ => io_err(path, e),
    })?;
    f.write_all(data).map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))
}

/// Writes the private key to a new file (mode 0600); refuses to overwrite.
pub fn write_signing_key(path: &Path, key: &Sm2SigningKey, protection: &KeyProtection) -> Result<(), CryptoError> {
    let pem = private_key_to_pem(key, protection)?;
    write_new(path, pem.as_bytes(), 0o600)
}

/// Writes the SPKI PEM public key to a new file (mode 0644); refuses to
/// overwrite.
pub fn write_verifying_key(path: &Path, key: &Sm2VerifyingKey) -> Result<(), CryptoError> {
    write_new(path, key.to_public_key_pem().as_bytes(), 0o644)
}

/// Loads an encrypted PKCS#8 private key, the passphrase taken from the
/// environment variable named `passphrase_env`; default distinguishing ID.
/// Errors name the file (and the variable), never the passphrase.
pub fn load_signing_key(path: &Path, passphrase_env: &str) -> Result<Sm2SigningKey, CryptoError> {
    let pem = Zeroizing::new(fs::read_to_string(path).map_err(|e| io_err(path, e))?);
    let pw = passphrase_from_env(passphrase_env).map_err(|e| in_file(path, e))?;
    private_key_from_pem(&pem, Some(&pw), DEFAULT_DIST_ID).map_err(|e| in_file(path, e))
}

/// Loads a private key stored **without** encryption (test keys written
/// with [`KeyProtection::DangerUnencrypted`]).
pub fn danger_load_unencrypted_signing_key(path: &Path) -> Result<Sm2SigningKey, CryptoError> {
    let pem = Zeroizing::new(fs::read_to_string(path).map_err(|e| io_err(path, e))?);
    private_key_from_pem(&pem, None, DEFAULT_DIST_ID).map_err(|e| in_file(path, e))
}

/// Loads an SPKI PEM public key (default distinguishing ID).
pub fn load_verifying_key(path: &Path) -> Result<Sm2VerifyingKey, CryptoError> {
    let pem = fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    Sm2VerifyingKey::from_public_key_pem(&pem).map_err(|e| in_file(path, e))
}

/// File names written by [`generate_key_files`].
#[derive(Debug, Clone)]
pub struct KeyFiles {
    /// The encrypted PKCS#8 private key (`<name>.key.pem`).
    pub private_key: std::path::PathBuf,
    /// The SPKI public key (`<name>.pub.pem`).
    pub public_key: std::path::PathBuf,
    /// The key identifier ([`Sm2VerifyingKey::key_id`]).
    pub key_id: String,
}

/// Generates an SM2 key pair and writes `<name>.key.pem` (0600) and
/// `<name>.pub.pem` into `dir`. Refuses if either file exists. `name` must
/// be a plain file-name stem (letters, digits, `-`, `_`, `.`).
pub fn generate_key_files(dir: &Path, name: &str, protection: &KeyProtection) -> Result<KeyFiles, CryptoError> {
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(CryptoError::InvalidKey(format!(
            "key name {name:?} must be letters, digits, '-', '_' or '.' and not start with '.'"
        )));
    }
    let private_key = dir.join(format!("{name}.key.pem"));
    let public_key = dir.join(format!("{name}.pub.pem"));
    for p in [&private_key, &public_key] {
        if p.exists() {
            return Err(CryptoError::KeyFileExists(p.display().to_string()));
        }
    }
    let key = Sm2SigningKey::generate();
    write_signing_key(&private_key, &key, protection)?;
    if let Err(e) = write_verifying_key(&public_key, key.verifying_key()) {
        let _ = fs::remove_file(&private_key);
        return Err(e);
    }
    Ok(KeyFiles {
        private_key,
        public_key,
        key_id: key.verifying_key().key_id().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_file_round_trip_via_env() {
        // `PATH` is always set under `cargo test`; it stands in for
        // VAXGATE_KEY_PASSPHRASE because `set_var` is unsafe in edition 2024.
        let dir = tempfile::tempdir().unwrap();
        let files = generate_key_files(dir.path(), "k", &KeyProtection::from_env("PATH").unwrap()).unwrap();
        let pem = fs::read_to_string(&files.private_key).unwrap();
        assert_eq!(PemKind::of(&pem), Some(PemKind::Encrypted));
        let back = load_signing_key(&files.private_key, "PATH").unwrap();
        assert_eq!(back.verifying_key(), &load_verifying_key(&files.public_key).unwrap());
        assert_eq!(back.verifying_key().key_id(), files.key_id);
        let e = private_key_from_pem(&pem, Some("wrong"), DEFAULT_DIST_ID).unwrap_err();
        assert!(e.to_string().contains("wrong passphrase"), "{e}");
        assert!(matches!(
            private_key_from_pem(&pem, None, DEFAULT_DIST_ID),
            Err(CryptoError::PassphraseMissing(_))
        ));
        let e = danger_load_unencrypted_signing_key(&files.private_key).unwrap_err();
        assert!(e.to_string().contains("k.key.pem"), "{e}");
        assert!(!format!("{:?}", KeyProtection::from_env("PATH").unwrap()).contains('/'));
    }

    #[test]
    fn unencrypted_only_by_danger_option() {
        let k = Sm2SigningKey::generate();
        let pem = private_key_to_pem(&k, &KeyProtection::DangerUnencrypted).unwrap();
        assert_eq!(PemKind::of(&pem), Some(PemKind::Unencrypted));
        assert!(private_key_from_pem(&pem, Some("pw"), DEFAULT_DIST_ID).is_err());
        let back = private_key_from_pem(&pem, None, DEFAULT_DIST_ID).unwrap();
        assert_eq!(back.verifying_key(), k.verifying_key());
        assert!(private_key_to_pem(&k, &KeyProtection::Passphrase(Zeroizing::new(String::new()))).is_err());
    }

    #[test]
    fn files_refuse_overwrite_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let prot = KeyProtection::DangerUnencrypted;
        let files = generate_key_files(dir.path(), "cdc-01", &prot).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&files.private_key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let e = generate_key_files(dir.path(), "cdc-01", &prot).unwrap_err();
        assert!(e.to_string().contains("cdc-01.key.pem"), "{e}");
        let vk = load_verifying_key(&files.public_key).unwrap();
        assert_eq!(vk.key_id(), files.key_id);
        let sk = danger_load_unencrypted_signing_key(&files.private_key).unwrap();
        assert_eq!(sk.verifying_key(), &vk);
        // An encrypted deployment never loads a plaintext key.
        let e = load_signing_key(&files.private_key, "VAXGATE_TEST_UNSET_VARIABLE_XYZ").unwrap_err();
        assert!(e.to_string().contains("VAXGATE_TEST_UNSET_VARIABLE_XYZ"), "{e}");
        assert!(e.to_string().contains("cdc-01.key.pem"), "{e}");
        let e = load_verifying_key(&dir.path().join("missing.pub.pem")).unwrap_err();
        assert!(e.to_string().contains("missing.pub.pem"), "{e}");
        fs::write(dir.path().join("junk.pub.pem"), "junk").unwrap();
        let e = load_verifying_key(&dir.path().join("junk.pub.pem")).unwrap_err();
        assert!(e.to_string().contains("junk.pub.pem"), "{e}");
        assert!(generate_key_files(dir.path(), "../evil", &prot).is_err());
    }
}
