//! `vaxgate serve --config FILE`: the API gateway (`gateway::start`).

use std::path::PathBuf;

/// Arguments of `vaxgate serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The gateway configuration (TOML).
    #[arg(long, default_value = "config/vaxgate.toml")]
    pub config: PathBuf,
}

/// Runs the server until SIGINT/SIGTERM.
pub fn run(a: ServeArgs) -> anyhow::Result<u8> {
    let loaded = crate::config_load(&a.config)?;
    gateway::start::serve(&loaded)?;
    Ok(0)
}
