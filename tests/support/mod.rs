//! The harness of the end-to-end tests in tests/ (each top-level file is
//! one test binary of the `gateway` package that says `mod support;`):
//! the `vaxgate` command and its output, child processes killed when a
//! test ends ([`Process`]), a node from `vaxgate init` served by the real
//! `vaxgate serve` with entities registered through `vaxgate admin`
//! ([`Node`]), golden exchange messages ([`golden`]), and for the agent
//! tests, legacy source tables, agent configs and ledger queries
//! ([`agent`]), and the tests' own RabbitMQ queues ([`amqp`]).

// Each test binary uses part of this module; what one leaves unused is
// not dead code of the harness.
#![allow(clippy::unwrap_used, dead_code)]

pub mod agent;
pub mod amqp;
pub mod ledger_cut;
mod messages;
mod node;
mod process;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

// The test files import these as `support::Node` etc.; like the rest of
// this module, each binary uses only some.
#[allow(unused_imports)]
pub use self::{
    messages::{at, dispatch, fresh, from_source, golden, party, production, receipt},
    node::{Ent, MAX_BODY, Node, NodeOptions, Resp, fresh_postgres_database, load_key, nonce},
    process::Process,
};

/// The environment variable the tests pass key passphrases in.
pub const PASS_ENV: &str = "VAXGATE_TEST_PASSPHRASE";
/// The passphrase of every encrypted key the tests write.
pub const PASS: &str = "correct horse battery staple";

/// The built `vaxgate` binary with the test passphrase in [`PASS_ENV`] and
/// in the agent's default passphrase variable, logging warnings only.
pub fn vaxgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vaxgate"));
    c.env(PASS_ENV, PASS)
        .env("VAXGATE_AGENT_PASSPHRASE", PASS)
        .env("RUST_LOG", "warn");
    c
}

/// The stdout of a command that must have succeeded (else a panic with its
/// status, stdout and stderr).
pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The repository's root.
pub fn repo() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Runs `f` to completion on a fresh single-threaded runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Polls `cond` every 100 ms until it holds (true) or `secs` have passed (false).
pub fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > Duration::from_secs(secs) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}
