//! The narrow interface the push-style sources (HL7 v2 over MLLP and file
//! drop, XML export directories, AMQP) hand their records to.
//!
//! A source never talks to the gateway itself: it hands a batch of
//! `(record key, record)` pairs to a [`RecordSink`] and acts on the
//! per-record [`Outcome`] (send an HL7 ACK, move a file, ack an AMQP
//! message). `Accepted` must only be reported once the record is durable
//! (the gateway's receipt is recorded), because the sources acknowledge to
//! their senders on it.

use std::future::Future;
use std::sync::Arc;

use mappings::{MapOutcome, MappingSpec, Record};

/// What became of one submitted record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Durably accepted (gateway receipt in hand), or an idempotent repeat
    /// of a record accepted before.
    Accepted,
    /// Refused for good (bad data): resending the same record will not help.
    /// `code` is a stable rule or error name, `message` explains it
    /// without personal data.
    Rejected {
        /// Stable rule / error name.
        code: String,
        /// Explanation (no personal data).
        message: String,
    },
    /// Kept aside (quarantine) for a spec fix and replay; not accepted.
    Quarantined {
        /// Why.
        reason: String,
    },
    /// Not processed for a transient reason (gateway down, back-pressure):
    /// the sender should retry later.
    Retry {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// Whether the record is durably accepted.
    pub fn is_accepted(&self) -> bool {
        matches!(self, Outcome::Accepted)
    }
}

/// The mapping a source already did of the records it submits (the HL7
/// processor maps every message to locate its ACK's ERR segments), so the
/// sink need not map them again.
#[derive(Debug, Clone)]
pub struct Premapped {
    /// The spec that produced `outcomes`. A sink uses them only if this is
    /// the very spec (the same `Arc`) it would map the records with now: a
    /// spec replaced in between makes it map again.
    pub spec: Arc<MappingSpec>,
    /// One outcome of `spec.map` per submitted record, in the records'
    /// order.
    pub outcomes: Vec<MapOutcome>,
}

/// Where the push sources deliver records. Implemented by the agent's
/// pipeline (map → seal → POST → receipts) and by [`MemorySink`].
pub trait RecordSink: Send + Sync + 'static {
    /// Submits `records` of source `source` and, when given, stores
    /// `checkpoint` as the source's position in the same durable step as
    /// the records' receipts. Returns one outcome per record, in order; a
    /// failure of the whole batch is `Retry` for every record.
    fn submit(
        &self,
        source: &str,
        records: Vec<(String, Record)>,
        checkpoint: Option<serde_json::Value>,
    ) -> impl Future<Output = Vec<Outcome>> + Send;

    /// Like [`RecordSink::submit`], for records the source has already
    /// mapped: `premapped` holds one [`MapOutcome`] per record and the spec
    /// that produced them. A sink that maps may use those outcomes instead
    /// of mapping again when `premapped.spec` is its current spec for
    /// `source` (`Arc::ptr_eq`); the answer must be the same as
    /// [`RecordSink::submit`]'s. The default ignores them and calls
    /// [`RecordSink::submit`].
    fn submit_mapped(
        &self,
        source: &str,
        records: Vec<(String, Record)>,
        premapped: Premapped,
        checkpoint: Option<serde_json::Value>,
    ) -> impl Future<Output = Vec<Outcome>> + Send {
        drop(premapped);
        self.submit(source, records, checkpoint)
    }

    /// The last checkpoint stored for `source`.
    fn checkpoint(&self, source: &str) -> impl Future<Output = Option<serde_json::Value>> + Send;
}

impl<T: RecordSink> RecordSink for std::sync::Arc<T> {
    fn submit(
        &self,
        source: &str,
        records: Vec<(String, Record)>,
        checkpoint: Option<serde_json::Value>,
    ) -> impl Future<Output = Vec<Outcome>> + Send {
        (**self).submit(source, records, checkpoint)
    }

    fn submit_mapped(
        &self,
        source: &str,
        records: Vec<(String, Record)>,
        premapped: Premapped,
        checkpoint: Option<serde_json::Value>,
    ) -> impl Future<Output = Vec<Outcome>> + Send {
        (**self).submit_mapped(source, records, premapped, checkpoint)
    }

    fn checkpoint(&self, source: &str) -> impl Future<Output = Option<serde_json::Value>> + Send {
        (**self).checkpoint(source)
    }
}

/// Pads or truncates `outcomes` to `n` entries: missing ones become `Retry`
/// (a sink that answers short must never make a source acknowledge).
pub fn normalise(mut outcomes: Vec<Outcome>, n: usize) -> Vec<Outcome> {
    outcomes.truncate(n);
    while outcomes.len() < n {
        outcomes.push(Outcome::Retry {
            reason: "sink returned no outcome for this record".into(),
        });
    }
    outcomes
}

/// An in-memory sink: maps each record with its spec and accepts the
/// records that map without errors (quarantining the others), keeping the
/// accepted record keys (a repeated key is accepted again but kept once, as
/// the gateway's idempotency does) and the checkpoints. It is durable only for the
/// life of the process: for unit tests and benchmarks of the sources.
#[derive(Debug, Default)]
pub struct MemorySink {
    specs: std::collections::HashMap<String, std::sync::Arc<mappings::MappingSpec>>,
    state: std::sync::Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    accepted: Vec<(String, String)>,
    seen: std::collections::HashSet<(String, String)>,
    checkpoints: std::collections::HashMap<String, serde_json::Value>,
    unavailable: bool,
    /// Calls answered as usual before the sink becomes unavailable.
    calls_before_unavailable: Option<usize>,
    refuse_repeated_keys: bool,
    refusals: usize,
}

/// Whether `records` holds one record key twice: the gateway refuses such
/// a call whole (its event ids repeat).
pub(crate) fn repeats_a_key(records: &[(String, Record)]) -> bool {
    let keys: std::collections::HashSet<&String> = records.iter().map(|(k, _)| k).collect();
    keys.len() < records.len()
}

/// `Retry` with `reason` for each of `records`.
pub(crate) fn retry_all(records: &[(String, Record)], reason: &str) -> Vec<Outcome> {
    records
        .iter()
        .map(|_| Outcome::Retry {
            reason: reason.to_string(),
        })
        .collect()
}

impl MemorySink {
    /// A sink mapping the records of `source` with `spec`.
    pub fn new(source: &str, spec: std::sync::Arc<mappings::MappingSpec>) -> MemorySink {
        let mut specs = std::collections::HashMap::new();
        specs.insert(source.to_string(), spec);
        MemorySink {
            specs,
            state: Default::default(),
        }
    }

    /// Makes every following submit answer `Retry` (downstream down) or not.
    pub fn set_unavailable(&self, down: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.unavailable = down;
            s.calls_before_unavailable = None;
        }
    }

    /// Answers the next `calls` submits as usual, then `Retry` (downstream
    /// down) until [`MemorySink::set_unavailable`]`(false)`.
    pub fn set_unavailable_after(&self, calls: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.calls_before_unavailable = Some(calls);
        }
    }

    /// Makes a submit holding one record key twice answer `Retry` for all
    /// its records, as the gateway refuses such a call whole.
    pub fn set_refuse_repeated_keys(&self, on: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.refuse_repeated_keys = on;
        }
    }

    /// (source, record key) of every accepted record, in order.
    pub fn accepted(&self) -> Vec<(String, String)> {
        self.state.lock().map(|s| s.accepted.clone()).unwrap_or_default()
    }

    /// How many records were answered `Retry` while the sink was unavailable.
    pub fn refusals(&self) -> usize {
        self.state.lock().map(|s| s.refusals).unwrap_or_default()
    }
}

impl RecordSink for MemorySink {
    fn submit(
        &self,
        source: &str,
        records: Vec<(String, Record)>,
        checkpoint: Option<serde_json::Value>,
    ) -> impl Future<Output = Vec<Outcome>> + Send {
        let spec = self.specs.get(source).cloned();
        let mut out = Vec::with_capacity(records.len());
        let Ok(mut state) = self.state.lock() else {
            return std::future::ready(normalise(out, records.len()));
        };
        if let Some(calls) = state.calls_before_unavailable {
            state.unavailable |= calls == 0;
            state.calls_before_unavailable = calls.checked_sub(1);
        }
        if state.unavailable {
            state.refusals += records.len();
            return std::future::ready(retry_all(&records, "downstream unavailable"));
        }
        if state.refuse_repeated_keys && repeats_a_key(&records) {
            return std::future::ready(retry_all(&records, "409: record is already in the ledger"));
        }
        for (key, record) in &records {
            let o = match &spec {
                None => Outcome::Rejected {
                    code: "unknown_source".into(),
                    message: format!("no source named `{source}`"),
                },
                Some(spec) => {
                    let mapped = spec.map(record);
                    if mapped.is_ok() && !mapped.events.is_empty() {
                        // idempotent like the gateway: a repeat is accepted, not stored twice
                        let entry = (source.to_string(), key.clone());
                        if state.seen.insert(entry.clone()) {
                            state.accepted.push(entry);
                        }
                        Outcome::Accepted
                    } else {
                        let reason = mapped
                            .problems
                            .iter()
                            .filter(|p| p.is_error())
                            .map(|p| format!("{}: {}", p.field, p.rule))
                            .collect::<Vec<_>>()
                            .join("; ");
                        Outcome::Quarantined { reason }
                    }
                }
            };
            out.push(o);
        }
        if let Some(cp) = checkpoint {
            state.checkpoints.insert(source.to_string(), cp);
        }
        std::future::ready(out)
    }

    fn checkpoint(&self, source: &str) -> impl Future<Output = Option<serde_json::Value>> + Send {
        let cp = self.state.lock().ok().and_then(|s| s.checkpoints.get(source).cloned());
        std::future::ready(cp)
    }
}
