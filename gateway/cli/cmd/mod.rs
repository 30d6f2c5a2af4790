//! One module per subcommand. Each `run` returns the process exit code.

pub mod admin;
pub mod agent;
pub mod bench_crypto;
pub mod bench_http;
pub mod init;
pub mod keys;
pub mod ledger;
pub mod mapping;
pub mod sandbox;
pub mod serve;

use clap::Subcommand;

/// `vaxgate bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// SM2/SM3/SM4 throughput of the default crypto provider.
    Crypto(bench_crypto::BenchCryptoArgs),
    /// Durable ledger appends of batch-signed transactions.
    Ledger(ledger::BenchLedgerArgs),
    /// The gateway over HTTP on loopback: ingest, trace latency, GET throughput.
    Http(bench_http::BenchHttpArgs),
}

/// Dispatches `vaxgate bench`.
pub fn run_bench(c: BenchCmd) -> anyhow::Result<u8> {
    match c {
        BenchCmd::Crypto(a) => bench_crypto::run(a),
        BenchCmd::Ledger(a) => ledger::bench(a),
        BenchCmd::Http(a) => bench_http::run(a),
    }
}

/// Structured logs to stderr; `RUST_LOG` filters, default `warn`.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
