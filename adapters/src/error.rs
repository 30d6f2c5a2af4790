//! The adapters crate's error type.

use crate::client::ClientError;

/// Why the agent, a source or the pipeline failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The agent configuration is wrong (file, line, key).
    #[error("{path}:{line}: `{key}`: {message}")]
    Config {
        /// The config file.
        path: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// The key concerned.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A file could not be read.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The gateway's ledger is not the one it showed before: smaller than
    /// a checkpoint it signed earlier, or another history.
    #[error("the gateway's ledger does not extend what it signed before: {0}")]
    LedgerRewound(String),
    /// The agent's own state database failed.
    #[error("state database {path}: {message}")]
    State {
        /// The database file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A source (database, listener, queue) failed.
    #[error("source `{source_name}`: {message}")]
    Source {
        /// The configured source name.
        source_name: String,
        /// What went wrong (no personal data).
        message: String,
        /// Worth retrying later (connection lost, server down)?
        transient: bool,
    },
    /// No source of that name is configured.
    #[error("no source named `{0}` is configured")]
    UnknownSource(String),
    /// The gateway could not be reached or refused the whole batch.
    #[error("gateway: {0}")]
    Gateway(#[from] ClientError),
    /// The gateway's answer could not be understood.
    #[error("gateway answer: {0}")]
    Answer(String),
    /// Sealing or signing the batch failed.
    #[error("sealing the batch: {0}")]
    Crypto(String),
    /// A thread panicked while holding this lock; the agent must restart.
    #[error("internal: the {0} lock is poisoned (a thread panicked); restart the agent")]
    Poisoned(&'static str),
    /// The mapping task panicked or was cancelled.
    #[error("internal: the mapping task failed: {0}")]
    MappingTask(String),
}

impl AgentError {
    /// Worth retrying later (gateway down, source connection lost)?
    pub fn is_transient(&self) -> bool {
        match self {
            AgentError::Gateway(e) => e.is_transient(),
            AgentError::Source { transient, .. } => *transient,
            _ => false,
        }
    }

    pub(crate) fn state(path: &str, e: impl std::fmt::Display) -> AgentError {
        AgentError::State {
            path: path.to_string(),
            message: e.to_string(),
        }
    }

    /// A failure of source `name` (one that cannot start, a failed scan, a
    /// database error); `transient` when worth retrying later.
    pub(crate) fn source(name: &str, e: impl std::fmt::Display, transient: bool) -> AgentError {
        AgentError::Source {
            source_name: name.to_string(),
            message: e.to_string(),
            transient,
        }
    }
}
