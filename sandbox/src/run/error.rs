//! What can stop a sandbox run, as one error type at the crate boundary.

/// Why a sandbox run stopped. `Step` names what was being done (the file,
/// the command, the request) and keeps the cause as its source.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A step failed.
    #[error("{what}")]
    Step {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A check of the run failed (a command's exit status, an answer).
    #[error("{0}")]
    Failed(String),
}

impl RunError {
    /// A failed check, described by `message`.
    pub fn failed(message: String) -> RunError {
        RunError::Failed(message)
    }
}

macro_rules! from_step {
    ($($t:ty => $what:expr),* $(,)?) => {$(
        impl From<$t> for RunError {
            fn from(e: $t) -> RunError {
                RunError::Step { what: $what.to_string(), source: Box::new(e) }
            }
        }
    )*};
}

from_step! {
    std::io::Error => "I/O",
    secure_gateway::CryptoError => "crypto",
    crate::SandboxError => "generating the legacy systems",
    serde_json::Error => "JSON",
    adapters::AgentError => "the agent",
    adapters::ClientError => "the gateway client",
    mappings::SpecError => "a mapping spec",
    gateway::config::ConfigError => "the gateway config",
}

/// Says what was being done when a step failed.
pub trait Context<T> {
    /// With a fixed description.
    fn context(self, what: &str) -> Result<T, RunError>;
    /// With a description made only on failure.
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, RunError>;
}

impl<T, E: Into<Box<dyn std::error::Error + Send + Sync>>> Context<T> for Result<T, E> {
    fn context(self, what: &str) -> Result<T, RunError> {
        self.map_err(|e| RunError::Step {
            what: what.to_string(),
            source: e.into(),
        })
    }
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, RunError> {
        self.map_err(|e| RunError::Step {
            what: what(),
            source: e.into(),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: &str) -> Result<T, RunError> {
        self.ok_or_else(|| RunError::Failed(what.to_string()))
    }
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, RunError> {
        self.ok_or_else(|| RunError::Failed(what()))
    }
}

/// Returns a [`RunError::Failed`] with a formatted message.
macro_rules! bail {
    ($($t:tt)*) => {
        return Err($crate::run::error::RunError::Failed(format!($($t)*)))
    };
}
pub(crate) use bail;
