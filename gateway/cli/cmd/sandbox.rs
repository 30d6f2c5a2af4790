//! `vaxgate sandbox`: the flags; the run itself is `sandbox::run`.

use std::path::PathBuf;

use secure_gateway::ProviderKind;

/// Arguments of `vaxgate sandbox`.
#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// Vaccinations to simulate (20 to 10,000,000).
    #[arg(long, default_value_t = 2_000, value_parser = doses)]
    pub doses: usize,
    /// Seed of the synthetic world (same seed, same systems).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Folder for everything the sandbox writes.
    #[arg(long, default_value = "vaxgate-sandbox")]
    pub dir: PathBuf,
    /// Keep the gateway running after the summary (Ctrl-C stops it).
    #[arg(long)]
    pub serve: bool,
    /// Loopback port of a new gateway (default: a free one). An existing
    /// sandbox keeps its port.
    #[arg(long)]
    pub port: Option<u16>,
    /// The crypto provider of the gateway, the agents and the sandbox's own
    /// clients: rustcrypto or openssl. An existing sandbox switches to it.
    #[arg(long, default_value_t = ProviderKind::RustCrypto)]
    pub crypto_provider: ProviderKind,
}

/// `--doses`, checked before anything is written.
fn doses(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if sandbox::DOSES.contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{n} is outside {}..={}",
            sandbox::DOSES.start(),
            sandbox::DOSES.end()
        ))
    }
}

/// Runs `vaxgate sandbox`; exit code 1 when the ledger or the demo trace
/// did not verify.
pub fn run(a: SandboxArgs) -> anyhow::Result<u8> {
    let opts = sandbox::run::Options {
        doses: a.doses,
        seed: a.seed,
        dir: a.dir,
        serve: a.serve,
        port: a.port,
        crypto_provider: a.crypto_provider,
        vaxgate: sandbox::run::vaxgate_binary()?,
    };
    Ok(sandbox::run::run(opts)?)
}
