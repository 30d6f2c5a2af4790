//! The `vaxgate` command-line tool.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// mimalloc instead of glibc's allocator: ingest allocates and frees many
/// short-lived buffers per record (JSON, base64, ciphertexts) on several
/// threads, where glibc spent about 15 % of the server's CPU time
/// (`malloc_consolidate`, `unlink_chunk`; see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// vaxgate: connects legacy hospital, CDC and cold-chain systems to a
/// tamper-evident vaccine-traceability ledger.
#[derive(Debug, Parser)]
#[command(name = "vaxgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a node: keys, TLS certificate, config and the genesis block.
    Init(cmd::init::InitArgs),
    /// Run the API gateway.
    Serve(cmd::serve::ServeArgs),
    /// Registry administration against a running gateway.
    Admin(Box<cmd::admin::AdminArgs>),
    /// SM2 key management.
    #[command(subcommand)]
    Keys(cmd::keys::KeysCmd),
    /// Inspect and verify a ledger database.
    #[command(subcommand)]
    Ledger(cmd::ledger::LedgerCmd),
    /// Verify an inclusion proof offline against a checkpoint key.
    VerifyProof(cmd::ledger::VerifyProofArgs),
    /// Test mapping specs against sample input.
    #[command(subcommand)]
    Mapping(cmd::mapping::MappingCmd),
    /// The agent: pull/push legacy sources into the gateway, exactly once.
    Agent(cmd::agent::AgentCmd),
    /// Benchmarks (each prints a final line of JSON with its figures).
    #[command(subcommand)]
    Bench(cmd::BenchCmd),
    /// Synthetic legacy systems, a loopback gateway and the agent, end to end.
    Sandbox(cmd::sandbox::SandboxArgs),
}

/// Loads and validates a gateway config, or explains what is wrong.
fn config_load(path: &std::path::Path) -> anyhow::Result<gateway::config::LoadedConfig> {
    Ok(gateway::config::load(path)?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` installs its own subscriber from `[telemetry]` (logs and traces).
    if !matches!(cli.command, Command::Serve(_)) {
        cmd::init_logging();
    }
    let result = match cli.command {
        Command::Init(a) => cmd::init::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Admin(a) => cmd::admin::run(*a),
        Command::Keys(c) => cmd::keys::run(c),
        Command::Ledger(c) => cmd::ledger::run(c),
        Command::VerifyProof(a) => cmd::ledger::verify_proof(a),
        Command::Mapping(c) => cmd::mapping::run(c),
        Command::Agent(c) => cmd::agent::run(c),
        Command::Bench(c) => cmd::run_bench(c),
        Command::Sandbox(a) => cmd::sandbox::run(a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
