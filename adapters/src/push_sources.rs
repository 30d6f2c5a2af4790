//! What the push-style source types (HL7 v2 over MLLP in [`crate::mllp`],
//! HL7 file drop in [`crate::hl7_files`], XML export directories in
//! [`crate::xml_source`], AMQP queues in [`crate::amqp`]) share: the
//! [`RecordSink`] that connects them to the agent's [`Pipeline`] (map →
//! quarantine → seal → POST → receipts; the checkpoint stored with the
//! receipts) and small helpers of their [`crate::source::Source`] impls.

use std::path::Path;
use std::sync::Arc;

use mappings::{MappingSpec, Record};

use crate::error::AgentError;
use crate::hl7::{FieldLocator, Hl7Processor};
use crate::intake::{Outcome, Premapped, RecordSink, normalise};
use crate::pipeline::{Pipeline, RecordOutcome};

impl From<RecordOutcome> for Outcome {
    fn from(o: RecordOutcome) -> Outcome {
        match o {
            RecordOutcome::Accepted { .. } => Outcome::Accepted,
            RecordOutcome::Rejected { code, message } => Outcome::Rejected { code, message },
            RecordOutcome::Quarantined { reason } => Outcome::Quarantined { reason },
        }
    }
}

/// The agent's pipeline as the push sources' sink: an `Err` of the whole
/// batch (gateway unreachable after its retries, state database failure)
/// becomes `Retry` for every record, so nothing is acknowledged to a sender
/// without a receipt. Records submitted with their mapping
/// ([`RecordSink::submit_mapped`], the HL7 sources) are not mapped again
/// while the source's spec is the one they were mapped with
/// ([`Pipeline::submit_premapped`]).
impl RecordSink for Pipeline {
    async fn submit(
        &self,
        source: &str,
        records: Vec<(String, Record)>,
        checkpoint: Option<serde_json::Value>,
    ) -> Vec<Outcome> {
        let n = records.len();
        answer(
            source,
            n,
            self.submit_with_checkpoint(source, records, checkpoint).await,
        )
    }

    async fn submit_mapped(
        &self,
        source: &str,
        records: Vec<(String, Record)>,
        premapped: Premapped,
        checkpoint: Option<serde_json::Value>,
    ) -> Vec<Outcome> {
        let n = records.len();
        answer(
            source,
            n,
            self.submit_premapped(source, records, premapped, checkpoint).await,
        )
    }

    async fn checkpoint(&self, source: &str) -> Option<serde_json::Value> {
        self.state().checkpoint(source).await.ok().flatten()
    }
}

/// The sink's answer for `n` records from the pipeline's result.
fn answer(source: &str, n: usize, result: Result<Vec<RecordOutcome>, AgentError>) -> Vec<Outcome> {
    match result {
        Ok(v) => normalise(v.into_iter().map(Outcome::from).collect(), n),
        Err(e) => {
            tracing::warn!(source, error = %e, "submit failed; senders will retry");
            let reason = e.to_string();
            (0..n).map(|_| Outcome::Retry { reason: reason.clone() }).collect()
        }
    }
}

/// Default `settle_ms` of the directory sources.
pub(crate) fn default_settle_ms() -> u64 {
    2000
}

/// Default `poll_interval_ms` of the directory sources.
pub(crate) fn default_poll_ms() -> u64 {
    5000
}

/// `v` must not be 0.
pub(crate) fn positive(key: &'static str, v: u64) -> Result<(), (&'static str, String)> {
    if v == 0 {
        Err((key, "must be greater than 0".to_string()))
    } else {
        Ok(())
    }
}

/// A directory source's `dir` must be a directory.
pub(crate) fn is_dir(dir: &Path) -> Result<(), (&'static str, String)> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(("dir", format!("{} is not a directory", dir.display())))
    }
}

/// `agent check` of a directory source: readable and writable, and how
/// many `.ext` files wait.
pub(crate) fn check_dir(dir: &Path, ext: &str) -> Result<String, String> {
    let waiting = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some(ext))
        .count();
    let probe = dir.join(format!(".vaxgate-check-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(format!(
        "{} readable and writable, {waiting} .{ext} file(s) waiting",
        dir.display()
    ))
}

/// The HL7 processor of source `name` (MLLP and file drop): `spec` maps the
/// messages; the field locations of its ERR segments are read from the
/// spec's TOML, the `mapping` file. The agent passes the pipeline's own
/// `Arc` of the source's spec ([`Pipeline::spec`]), so the pipeline uses
/// the processor's mapping instead of mapping each message again.
pub(crate) fn hl7_processor<S: RecordSink>(
    name: &str,
    mapping: &Path,
    spec: Arc<MappingSpec>,
    sink: S,
) -> Result<Arc<Hl7Processor<S>>, AgentError> {
    let text = std::fs::read_to_string(mapping).map_err(|e| AgentError::File {
        path: mapping.display().to_string(),
        message: e.to_string(),
    })?;
    let loc = FieldLocator::from_spec_toml(&text, &mapping.display().to_string())
        .map_err(|e| AgentError::source(name, e, false))?;
    Ok(Arc::new(Hl7Processor::new(name, spec, loc, sink)))
}
