//! `vaxgate bench crypto` (owned by the crypto work; placeholder).

/// Arguments of `vaxgate bench crypto`.
#[derive(Debug, clap::Args)]
pub struct BenchCryptoArgs {}

/// Runs the crypto benchmark.
pub fn run(_a: BenchCryptoArgs) -> anyhow::Result<u8> {
    anyhow::bail!("not implemented yet")
}
