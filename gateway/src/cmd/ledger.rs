//! `vaxgate ledger ...`, `vaxgate verify-proof`, `vaxgate bench ledger`.
use clap::Subcommand;

/// `vaxgate ledger ...`
#[derive(Debug, Subcommand)]
pub enum LedgerCmd {
    /// Verify everything.
    Verify {},
}

/// Arguments of `vaxgate verify-proof`.
#[derive(Debug, clap::Args)]
pub struct VerifyProofArgs {}

/// Arguments of `vaxgate bench ledger`.
#[derive(Debug, clap::Args)]
pub struct BenchLedgerArgs {}

/// Runs a ledger subcommand.
pub fn run(_c: LedgerCmd) -> anyhow::Result<u8> {
    anyhow::bail!("not implemented yet")
}
/// Runs `verify-proof`.
pub fn verify_proof(_a: VerifyProofArgs) -> anyhow::Result<u8> {
    anyhow::bail!("not implemented yet")
}
/// Runs `bench ledger`.
pub fn bench(_a: BenchLedgerArgs) -> anyhow::Result<u8> {
    anyhow::bail!("not implemented yet")
}
