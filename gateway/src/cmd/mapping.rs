//! `vaxgate mapping ...` (owned by the mappings work; placeholder).
use clap::Subcommand;

/// `vaxgate mapping ...`
#[derive(Debug, Subcommand)]
pub enum MappingCmd {
    /// Map sample input through a spec and print messages and problems.
    Test {},
}

/// Runs a mapping subcommand; exit 0 all pass, 1 any record fails, 2 bad spec.
pub fn run(_c: MappingCmd) -> anyhow::Result<u8> {
    anyhow::bail!("not implemented yet")
}
