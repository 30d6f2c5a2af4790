//! The vaxgate ledger: an append-only chain of blocks whose headers follow
//! T/CPMA 026-2023 Annex A, with RFC 9162-shaped SM3 Merkle trees per block
//! and over the whole log, signed checkpoints, and offline-verifiable
//! inclusion and consistency proofs.
//!
//! * [`tx`]: transactions (business-data hash + encrypted payload) and the
//!   submitter's batch signature proof.
//! * [`block`]: headers, `block_hash = SM3(SM3(prev ‖ timestamp ‖ root))`,
//!   checkpoints.
//! * [`merkle`]: RFC 9162 trees with SM3; proofs from stored perfect subtrees.
//! * [`store`]: the storage trait; SQLite and PostgreSQL implementations;
//!   [`store::backend`]: which backend a database is, and who writes what.
//! * [`ledger`]: the group-committing [`Ledger`].
//! * [`verify`]: full verification of a stored ledger.
//!
//! **Architecture invariant:** nothing in this crate updates or deletes a
//! ledger row. Changes are new transactions (e.g. a cancellation).
#![forbid(unsafe_code)]

pub mod block;
pub mod encoding;
pub mod error;
pub mod ledger;
pub mod merkle;
pub mod proof;
pub mod store;
pub mod tx;
pub mod verify;

pub use block::{BlockHeader, Checkpoint};
pub use error::LedgerError;
pub use ledger::{GenesisInfo, Ledger, LedgerConfig, Membership, Receipt, audit_paths, prove, prove_consistency};
pub use proof::{ConsistencyProof, InclusionProof};
pub use store::{
    AnyStore, Backend, Dialect, LedgerStore, PgStore, Reader, SideConn, SideFuture, SidePart, SideTx, SideWrite,
    SqliteStore, StoreStats, StoredTx,
};
pub use tx::{
    DEFAULT_MAX_PAYLOAD, LeafInput, Transaction, TxAuth, TxContent, TxFormat, TxKind, TxSummary, sign_batch,
    sign_leaves,
};
pub use verify::{VerifyReport, par_map, verify_ledger, verify_ledger_in};

/// A fresh node key in the default provider, for unit tests.
#[cfg(test)]
pub(crate) fn test_signer() -> secure_gateway::Signer {
    secure_gateway::Signer::generate(
        secure_gateway::RustCryptoProvider::shared(),
        secure_gateway::KeyHandle::new("test"),
    )
    .expect("a generated key imports into the default provider")
}
