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
        KeysCmd::Generate { out, entity, passphrase_env, danger_unencrypted } => {
            let protection = if danger_unencrypted {
                eprintln!("warning: --danger-unencrypted: the private key is written in the clear");
                KeyProtection::DangerUnencrypted
            } else {
                KeyProtection::from_env(&passphrase_env)
                    .with_context(|| format!("set {passphrase_env} to the key passphrase (or pass --passphrase-env NAME)"))?
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
