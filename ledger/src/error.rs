//! The ledger's error type.

/// Everything that can go wrong appending to, reading or verifying a ledger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The storage backend failed (IO, SQL, disk full).
    #[error("ledger storage ({location}): {message}")]
    Storage {
        /// Database path or URL (never with a password).
        location: String,
        /// What failed.
        message: String,
    },
    /// A transaction was refused before it was written.
    #[error("transaction {tx_id} refused: {reason}")]
    BadTransaction {
        /// The transaction id.
        tx_id: String,
        /// Why.
        reason: String,
    },
    /// The record id (event id) is already in the ledger.
    #[error("record {record_id} is already in the ledger as transaction {tx_id}")]
    Duplicate {
        /// The business event id.
        record_id: String,
        /// The transaction that holds it.
        tx_id: String,
    },
    /// Stored data does not verify: the ledger was altered or corrupted.
    #[error("ledger integrity failure at block {height}{}: {reason}", tx.as_ref().map(|t| format!(", transaction {t}")).unwrap_or_default())]
    Integrity {
        /// First bad block height.
        height: u64,
        /// The transaction concerned, if one.
        tx: Option<String>,
        /// What did not match.
        reason: String,
    },
    /// Something asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A proof or checkpoint did not verify.
    #[error("proof does not verify: {0}")]
    BadProof(String),
    /// The ledger was opened with a key that is not its node key, or not
    /// initialised.
    #[error("{0}")]
    Setup(String),
    /// The crypto provider could not sign (an HSM unreachable, a key
    /// missing from the provider).
    #[error("signing {what}: {source}")]
    Signing {
        /// What was being signed (a block checkpoint, a batch).
        what: &'static str,
        /// The provider's error.
        #[source]
        source: secure_gateway::CryptoError,
    },
    /// The ledger task has stopped (shutdown or a previous fatal error).
    #[error("the ledger committer has stopped")]
    Closed,
}

impl LedgerError {
    pub(crate) fn storage(location: &str, e: impl std::fmt::Display) -> Self {
        LedgerError::Storage {
            location: location.to_string(),
            message: e.to_string(),
        }
    }
}
