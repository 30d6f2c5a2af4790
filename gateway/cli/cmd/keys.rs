//! `vaxgate keys ...`: SM2 key management.
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use secure_gateway::keys::{DEFAULT_PASSPHRASE_ENV, KeyProtection, generate_key_files};

/// `vaxgate keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Write an SM2 key pair: `<entity>.key.pem` (encrypted PKCS#8, mode
    /// 0600) and `<entity>.pub.pem` (SPKI). Never overwrites.
    Generate {
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Entity the key belongs to (file name prefix; default "key").
        #[arg(long)]
        entity: Option<String>,
        /// Name of the environment variable holding the passphrase.
        #[arg(long, default_value = DEFAULT_PASSPHRASE_ENV)]
        passphrase_env: String,
        /// Write the private key WITHOUT encryption (test keys only).
        #[arg(long)]
        danger_unencrypted: bool,
    },
}

/// Runs a keys subcommand.
pub fn run(c: KeysCmd) -> anyhow::Result<u8> {
    match c {
        KeysCmd::Generate {
            out,
            entity,
            passphrase_env,
            danger_unencrypted,
        } => {
            let protection = if danger_unencrypted {
                eprintln!("warning: --danger-unencrypted: the private key is written in the clear");
                KeyProtection::DangerUnencrypted
            } else {
                KeyProtection::from_env(&passphrase_env).with_context(|| {
                    format!("set {passphrase_env} to the key passphrase (or pass --passphrase-env NAME)")
                })?
            };
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let name = entity.as_deref().unwrap_or("key");
            let files = generate_key_files(&out, name, &protection)?;
            println!("key_id      {}", files.key_id);
            println!("private key {}", files.private_key.display());
            println!("public key  {}", files.public_key.display());
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secure_gateway::keys::PemKind;

    fn generate(out: &std::path::Path, entity: Option<&str>, env: &str, danger: bool) -> anyhow::Result<u8> {
        run(KeysCmd::Generate {
            out: out.to_path_buf(),
            entity: entity.map(str::to_string),
            passphrase_env: env.to_string(),
            danger_unencrypted: danger,
        })
    }

    #[test]
    fn generate_writes_encrypted_key_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("keys");
        // PATH is always set under cargo test; it stands in for the passphrase
        // variable because set_var is unsafe in edition 2024.
        assert_eq!(generate(&out, Some("cdc-01"), "PATH", false).unwrap(), 0);
        let pem = std::fs::read_to_string(out.join("cdc-01.key.pem")).unwrap();
        assert_eq!(PemKind::of(&pem), Some(PemKind::Encrypted));
        let sk = secure_gateway::load_signing_key(&out.join("cdc-01.key.pem"), "PATH").unwrap();
        let vk = secure_gateway::load_verifying_key(&out.join("cdc-01.pub.pem")).unwrap();
        assert_eq!(sk.verifying_key(), &vk);
        let e = generate(&out, Some("cdc-01"), "PATH", false).unwrap_err();
        assert!(format!("{e:#}").contains("refusing to overwrite"), "{e:#}");
    }

    #[test]
    fn missing_passphrase_is_a_clear_error_and_danger_flag_writes_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let e = generate(dir.path(), None, "VAXGATE_TEST_NEVER_SET_7f3a", false).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("VAXGATE_TEST_NEVER_SET_7f3a") && msg.contains("not set"),
            "{msg}"
        );
        assert!(!dir.path().join("key.key.pem").exists());
        assert_eq!(
            generate(dir.path(), None, "VAXGATE_TEST_NEVER_SET_7f3a", true).unwrap(),
            0
        );
        let pem = std::fs::read_to_string(dir.path().join("key.key.pem")).unwrap();
        assert_eq!(PemKind::of(&pem), Some(PemKind::Unencrypted));
    }
}
