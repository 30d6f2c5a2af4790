//! `vaxgate keys ...` (owned by the crypto work; placeholder).
use clap::Subcommand;

/// `vaxgate keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Write an SM2 key pair (encrypted PKCS#8 private key, SPKI public key).
    Generate {
        /// Output directory.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Entity the key belongs to (file name prefix).
        #[arg(long)]
        entity: Option<String>,
    },
}

/// Runs a keys subcommand.
pub fn run(_c: KeysCmd) -> anyhow::Result<u8> {
    anyhow::bail!("not implemented yet")
}
