//! The submit interface every source uses: map through the source's spec,
//! quarantine what fails, seal and sign one batch, post it to the gateway,
//! and record the gateway's durable receipts (and, for pull sources, the
//! new checkpoint) in the agent's state database in one transaction.
//!
//! Push sources (MLLP, AMQP) call [`Pipeline::submit`] and acknowledge
//! their peers from the returned [`RecordOutcome`]s; pull sources (SQL,
//! XML directories) call [`Pipeline::submit_with_checkpoint`]. The HL7
//! sources, which map each message themselves for their ACKs, call
//! [`Pipeline::submit_premapped`] with that mapping, and it is not done a
//! second time while the source's spec is unchanged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mappings::{ExchangeMessage, MapOutcome, MappingSpec, Problem, QualityTracker, Record};
use secure_gateway::{Signer, Sm2VerifyingKey};
use serde::Deserialize;
use uuid::Uuid;

use crate::client::{ClientError, GatewayClient};
use crate::error::AgentError;
use crate::intake::Premapped;
use crate::retry::Backoff;
use crate::state::{EventState, GatewayProblem, NewQuarantine, StateDb, describe_refusal};

/// One event of a record, durably in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventReceipt {
    /// The event id (derived from source, category and record key).
    pub event_id: Uuid,
    /// The ledger transaction holding it.
    pub tx_id: Uuid,
    /// Its block height.
    pub height: u64,
    /// It was already in the ledger with the same content (a resend).
    pub duplicate: bool,
}

/// What became of one submitted record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Every event of the record is in the ledger (receipts recorded).
    Accepted {
        /// One receipt per event (usually one).
        receipts: Vec<EventReceipt>,
    },
    /// The gateway refused the record for good (its code and message; no
    /// personal data). Kept in quarantine too.
    Rejected {
        /// Stable code (`invalid_trace_code`, `forbidden`, `conflict`, ...).
        code: String,
        /// Explanation.
        message: String,
    },
    /// Mapping or validation failed; kept in quarantine for a replay.
    Quarantined {
        /// Why (rules and fields, values masked).
        reason: String,
    },
}

impl RecordOutcome {
    /// Whether the record is durably accepted.
    pub fn is_accepted(&self) -> bool {
        matches!(self, RecordOutcome::Accepted { .. })
    }
}

/// A batch whose receipts are in hand, not yet recorded (see
/// [`Pipeline::deliver`]).
#[derive(Debug)]
pub struct Delivered {
    source: String,
    events: Vec<EventState>,
    quarantine: Vec<NewQuarantine>,
    accepted_keys: Vec<String>,
    checkpoint: Option<serde_json::Value>,
    outcomes: Vec<RecordOutcome>,
}

impl Delivered {
    /// The per-record outcomes (final once committed).
    pub fn outcomes(&self) -> &[RecordOutcome] {
        &self.outcomes
    }
}

/// How the pipeline reaches the gateway and signs.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The agent's registered entity id (USCC with check digit).
    pub entity_id: String,
    /// The agent's signing key, in the configured crypto provider (which
    /// also seals the records).
    pub key: Signer,
    /// The gateway's SM2 public key (records are sealed for it).
    pub gateway_key: Sm2VerifyingKey,
    /// Attempts per batch on transient gateway errors before `submit`
    /// returns the error (at least 1).
    pub attempts: u32,
    /// First retry delay.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

struct SourceEntry {
    spec: RwLock<Arc<MappingSpec>>,
    /// The batch rule's counts, and the events already counted (a page
    /// retried after a gateway error must not count its trace codes twice).
    tracker: Mutex<(QualityTracker, std::collections::HashSet<Uuid>)>,
}

/// The shared map → seal → post → record pipeline. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

struct Inner {
    client: GatewayClient,
    cfg: PipelineConfig,
    state: StateDb,
    sources: RwLock<HashMap<String, Arc<SourceEntry>>>,
    /// Serialises the checks of the gateway's checkpoints.
    log_check: tokio::sync::Mutex<()>,
    /// Set once the gateway refused the binary batch form (415: a gateway
    /// older than the agent): batches go as JSON from then on.
    json_only: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("entity_id", &self.inner.cfg.entity_id)
            .field("state", &self.inner.state.path())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Answer {
    results: Vec<AnswerRecord>,
    /// The signed checkpoint of each block the records went into (brief
    /// receipts).
    #[serde(default)]
    checkpoints: Vec<ledger::Checkpoint>,
}

#[derive(Deserialize)]
struct AnswerRecord {
    index: usize,
    status: String,
    #[serde(default)]
    receipt: Option<AnswerReceipt>,
    #[serde(default)]
    error: Option<AnswerError>,
}

#[derive(Deserialize)]
struct AnswerReceipt {
    tx_id: Uuid,
    height: u64,
}

#[derive(Deserialize)]
struct AnswerError {
    code: String,
    message: String,
    /// Validation problems (values masked by the gateway); absent for
    /// refusals that are not about the record's content.
    #[serde(default)]
    problems: Vec<GatewayProblem>,
}

/// A record in its stored form (kind, text) for the quarantine.
pub fn record_to_stored(r: &Record) -> (String, String) {
    match r {
        Record::Row(m) => ("row".into(), serde_json::Value::Object(m.clone()).to_string()),
        Record::Hl7(s) => ("hl7".into(), s.clone()),
        Record::Xml(s) => ("xml".into(), s.clone()),
        Record::Json(v) => ("json".into(), v.to_string()),
        _ => ("unknown".into(), String::new()),
    }
}

/// The record back from its stored form.
pub fn record_from_stored(kind: &str, text: &str) -> Option<Record> {
    match kind {
        "row" => match serde_json::from_str(text).ok()? {
            serde_json::Value::Object(m) => Some(Record::Row(m)),
            _ => None,
        },
        "hl7" => Some(Record::Hl7(text.to_string())),
        "xml" => Some(Record::Xml(text.to_string())),
        "json" => serde_json::from_str(text).ok().map(Record::Json),
        _ => None,
    }
}

fn reason_of(problems: &[&Problem]) -> String {
    let mut s = String::new();
    for (n, p) in problems.iter().take(5).enumerate() {
        if n > 0 {
            s.push_str("; ");
        }
        s.push_str(&format!("field `{}`: rule {}: {}", p.field, p.rule, p.message));
    }
    if problems.len() > 5 {
        s.push_str(&format!("; and {} more", problems.len() - 5));
    }
    s
}

/// A batch after the batch rules: each record's outcome so far, the
/// records to quarantine, the messages to post and the record each comes
/// from.
struct Batch {
    outcomes: Vec<Option<RecordOutcome>>,
    quarantine: Vec<NewQuarantine>,
    messages: Vec<ExchangeMessage>,
    owner: Vec<usize>,
}

/// A record to quarantine, with why.
fn quarantined(source: &str, record: &(String, Record), reason: String, problems: serde_json::Value) -> NewQuarantine {
    let (kind, text) = record_to_stored(&record.1);
    NewQuarantine {
        source: source.into(),
        record_key: record.0.clone(),
        kind,
        record: text,
        reason,
        problems,
    }
}

/// What one record's mapping means for the pipeline: its events, or why
/// it goes to the quarantine. The one rule for records mapped here and for
/// records the source mapped with the same spec ([`Premapped`]).
fn classify(out: MapOutcome) -> Mapped {
    let errors: Vec<&Problem> = out.problems.iter().filter(|p| p.is_error()).collect();
    if !errors.is_empty() {
        Mapped::Failed {
            reason: reason_of(&errors),
            problems: serde_json::to_value(&out.problems).unwrap_or_default(),
        }
    } else if out.events.is_empty() {
        Mapped::Failed {
            reason: "the record produced no event".into(),
            problems: serde_json::Value::Array(Vec::new()),
        }
    } else {
        Mapped::Events(out.events)
    }
}

/// Step 1: maps every record on a blocking thread, or, given `premapped`
/// (one outcome per record, of this `spec`), classifies those outcomes
/// without mapping again.
async fn map_records(
    spec: Arc<MappingSpec>,
    records: Arc<Vec<(String, Record)>>,
    premapped: Option<Vec<MapOutcome>>,
) -> Result<(Arc<Vec<(String, Record)>>, Vec<Mapped>), AgentError> {
    if let Some(outcomes) = premapped {
        return Ok((records, outcomes.into_iter().map(classify).collect()));
    }
    tokio::task::spawn_blocking(move || {
        let mapped: Vec<Mapped> = records.iter().map(|(_, r)| classify(spec.map(r))).collect();
        (records, mapped)
    })
    .await
    .map_err(|e| AgentError::MappingTask(e.to_string()))
}

/// Step 3: the batch rules over events not counted before (an event sent
/// again is not counted twice), each event's reserved `recorded_at`, and
/// the messages of the records that pass; the others are quarantined.
fn batch_rules(
    tracked: &mut (QualityTracker, std::collections::HashSet<Uuid>),
    source: &str,
    receiver: &str,
    records: &[(String, Record)],
    mapped: Vec<Mapped>,
    reserved: Vec<(chrono::DateTime<chrono::FixedOffset>, bool)>,
) -> Batch {
    let (tracker, counted) = tracked;
    let mut b = Batch {
        outcomes: vec![None; records.len()],
        quarantine: Vec::new(),
        messages: Vec::new(),
        owner: Vec::new(),
    };
    let mut it = reserved.into_iter();
    for (i, m) in mapped.into_iter().enumerate() {
        match m {
            Mapped::Failed { reason, problems } => {
                b.quarantine
                    .push(quarantined(source, &records[i], reason.clone(), problems));
                b.outcomes[i] = Some(RecordOutcome::Quarantined { reason });
            }
            Mapped::Events(evs) => {
                let mut batch_problems = Vec::new();
                let mut msgs = Vec::new();
                for mut e in evs {
                    let (at, known) = it.next().unwrap_or((e.recorded_at, false));
                    e.recorded_at = at;
                    if !known && !counted.contains(&e.event_id) {
                        let problems: Vec<Problem> =
                            tracker.observe(&e).into_iter().filter(Problem::is_error).collect();
                        if problems.is_empty() {
                            counted.insert(e.event_id);
                        }
                        batch_problems.extend(problems);
                    }
                    msgs.push(ExchangeMessage::new(e, receiver));
                }
                if batch_problems.is_empty() {
                    for msg in msgs {
                        b.messages.push(msg);
                        b.owner.push(i);
                    }
                } else {
                    let refs: Vec<&Problem> = batch_problems.iter().collect();
                    let reason = reason_of(&refs);
                    let problems = serde_json::to_value(&batch_problems).unwrap_or_default();
                    b.quarantine
                        .push(quarantined(source, &records[i], reason.clone(), problems));
                    b.outcomes[i] = Some(RecordOutcome::Quarantined { reason });
                }
            }
        }
    }
    b
}

/// A record after mapping.
enum Mapped {
    Events(Vec<mappings::TraceEvent>),
    Failed {
        reason: String,
        problems: serde_json::Value,
    },
}

impl Pipeline {
    /// A pipeline posting through `client`, recording in `state`.
    pub fn new(client: GatewayClient, cfg: PipelineConfig, state: StateDb) -> Pipeline {
        Pipeline {
            inner: Arc::new(Inner {
                client,
                cfg,
                state,
                sources: RwLock::new(HashMap::new()),
                log_check: tokio::sync::Mutex::new(()),
                json_only: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Registers (or replaces) the mapping spec of source `name`.
    pub fn add_source(&self, name: &str, spec: MappingSpec) {
        let tracker = QualityTracker::new(spec.dataset());
        let entry = Arc::new(SourceEntry {
            spec: RwLock::new(Arc::new(spec)),
            tracker: Mutex::new((tracker, std::collections::HashSet::new())),
        });
        if let Ok(mut s) = self.inner.sources.write() {
            s.insert(name.to_string(), entry);
        }
    }

    /// The state database.
    pub fn state(&self) -> &StateDb {
        &self.inner.state
    }

    /// The gateway client.
    pub fn client(&self) -> &GatewayClient {
        &self.inner.client
    }

    /// The spec of source `name`.
    pub fn spec(&self, name: &str) -> Result<Arc<MappingSpec>, AgentError> {
        let e = self.entry(name)?;
        let s = e.spec.read().map_err(|_| AgentError::Poisoned("mapping spec"))?;
        Ok(s.clone())
    }

    fn entry(&self, name: &str) -> Result<Arc<SourceEntry>, AgentError> {
        self.inner
            .sources
            .read()
            .map_err(|_| AgentError::Poisoned("sources"))?
            .get(name)
            .cloned()
            .ok_or_else(|| AgentError::UnknownSource(name.into()))
    }

    /// Submits records of a push source: one outcome per record, in order.
    /// `Err` means nothing was decided (gateway unreachable after the
    /// configured attempts, state database failure): the peer must retry.
    pub async fn submit(&self, source: &str, records: Vec<(String, Record)>) -> Result<Vec<RecordOutcome>, AgentError> {
        self.submit_with_checkpoint(source, records, None).await
    }

    /// Like [`Pipeline::submit`], and stores `checkpoint` as the source's
    /// position in the same state transaction as the batch's receipts.
    pub async fn submit_with_checkpoint(
        &self,
        source: &str,
        records: Vec<(String, Record)>,
        checkpoint: Option<serde_json::Value>,
    ) -> Result<Vec<RecordOutcome>, AgentError> {
        let d = self.deliver(source, Arc::new(records), checkpoint).await?;
        self.commit(d).await
    }

    /// Like [`Pipeline::submit_with_checkpoint`], for records the source
    /// has mapped already: when `premapped.spec` is this source's current
    /// spec (the same `Arc`, as [`Pipeline::spec`] gives it) and it holds
    /// one outcome per record, those outcomes are used instead of mapping
    /// again; otherwise (the spec was replaced meanwhile) the records are
    /// mapped as [`Pipeline::submit_with_checkpoint`] maps them. Everything
    /// after the mapping is the same.
    pub async fn submit_premapped(
        &self,
        source: &str,
        records: Vec<(String, Record)>,
        premapped: Premapped,
        checkpoint: Option<serde_json::Value>,
    ) -> Result<Vec<RecordOutcome>, AgentError> {
        let d = self
            .deliver_with(source, Arc::new(records), Some(premapped), checkpoint)
            .await?;
        self.commit(d).await
    }

    /// Steps 1-4 of a submit: map, quarantine, reserve, seal, post; the
    /// gateway's receipts are in hand but not yet recorded. Pull sources
    /// keep several batches in flight and [`Pipeline::commit`] them in
    /// order, so a checkpoint never passes a batch whose receipts are not
    /// stored.
    /// `records` is shared so a caller that retries does not copy them.
    pub async fn deliver(
        &self,
        source: &str,
        records: Arc<Vec<(String, Record)>>,
        checkpoint: Option<serde_json::Value>,
    ) -> Result<Delivered, AgentError> {
        self.deliver_with(source, records, None, checkpoint).await
    }

    /// [`Pipeline::deliver`], using `premapped` for step 1 when it was made
    /// with the source's current spec.
    async fn deliver_with(
        &self,
        source: &str,
        records: Arc<Vec<(String, Record)>>,
        premapped: Option<Premapped>,
        checkpoint: Option<serde_json::Value>,
    ) -> Result<Delivered, AgentError> {
        let entry = self.entry(source)?;
        let spec = entry
            .spec
            .read()
            .map_err(|_| AgentError::Poisoned("mapping spec"))?
            .clone();
        let premapped = premapped.and_then(|p| {
            let usable = Arc::ptr_eq(&p.spec, &spec) && p.outcomes.len() == records.len();
            if !usable {
                tracing::debug!(source, "the source's mapping is not of the current spec; mapping again");
            }
            usable.then_some(p.outcomes)
        });
        let premapped_used = premapped.is_some();

        let t0 = std::time::Instant::now();
        // 1. Map (CPU work off the async threads), unless the source did
        // with this spec. The events' `recorded_at` is then the time the
        // source mapped them; step 2 reserves it all the same.
        let (records, mapped) = map_records(spec.clone(), records, premapped).await?;

        // 2. Reserve each event's recorded_at (stable across resends).
        let mut reserve = Vec::new();
        for m in &mapped {
            if let Mapped::Events(evs) = m {
                for e in evs {
                    reserve.push((e.event_id, e.record_key.clone(), e.recorded_at));
                }
            }
        }
        let t1 = std::time::Instant::now();
        let reserved = self.inner.state.reserve(source, &reserve).await?;
        let t2 = std::time::Instant::now();

        // 3. Batch rules over new events; build messages.
        let mut b = {
            let mut guard = entry.tracker.lock().map_err(|_| AgentError::Poisoned("batch rules"))?;
            batch_rules(&mut guard, source, &spec.receiver, &records, mapped, reserved)
        };

        // 4. Seal, sign, post (retrying transient failures).
        let (events, accepted_keys) = self.post_and_read(source, &records, &mut b).await?;

        let t3 = std::time::Instant::now();
        tracing::debug!(
            source,
            records = records.len(),
            premapped = premapped_used,
            map_ms = (t1 - t0).as_millis() as u64,
            reserve_ms = (t2 - t1).as_millis() as u64,
            post_ms = (t3 - t2).as_millis() as u64,
            "batch delivered"
        );
        Ok(Delivered {
            source: source.to_string(),
            events,
            quarantine: b.quarantine,
            accepted_keys,
            checkpoint,
            outcomes: b
                .outcomes
                .into_iter()
                .map(|o| {
                    o.unwrap_or_else(|| RecordOutcome::Rejected {
                        code: "no_result".into(),
                        message: "the gateway returned no result for this record".into(),
                    })
                })
                .collect(),
        })
    }

    /// Step 4: posts the batch's messages and reads the gateway's answer:
    /// each event's state, the records all of whose events are in the
    /// ledger, and a quarantine entry for each record the gateway refused.
    async fn post_and_read(
        &self,
        source: &str,
        records: &[(String, Record)],
        b: &mut Batch,
    ) -> Result<(Vec<EventState>, Vec<String>), AgentError> {
        let mut events = Vec::new();
        let mut accepted_keys = Vec::new();
        if b.messages.is_empty() {
            return Ok((events, accepted_keys));
        }
        let messages = Arc::new(std::mem::take(&mut b.messages));
        let answer = self.post(messages.clone()).await?;
        self.check_log(&answer.checkpoints).await?;
        if answer.results.len() != messages.len() {
            return Err(AgentError::Answer(format!(
                "{} results for {} records",
                answer.results.len(),
                messages.len()
            )));
        }
        let mut receipts: Vec<Vec<EventReceipt>> = vec![Vec::new(); records.len()];
        for r in answer.results {
            let Some(msg) = messages.get(r.index) else {
                return Err(AgentError::Answer(format!("result index {} out of range", r.index)));
            };
            let i = b.owner[r.index];
            match (r.status.as_str(), r.receipt, r.error) {
                ("accepted" | "duplicate", Some(rc), _) => {
                    events.push(EventState::Accepted {
                        event_id: msg.event_id,
                        tx_id: rc.tx_id,
                        height: rc.height,
                    });
                    receipts[i].push(EventReceipt {
                        event_id: msg.event_id,
                        tx_id: rc.tx_id,
                        height: rc.height,
                        duplicate: r.status == "duplicate",
                    });
                }
                (_, _, err) => {
                    let (code, message, problems) = err
                        .map(|e| (e.code, e.message, e.problems))
                        .unwrap_or_else(|| ("unknown".into(), format!("status {}", r.status), Vec::new()));
                    if !matches!(b.outcomes[i], Some(RecordOutcome::Rejected { .. })) {
                        let reason = format!("gateway refused: {}", describe_refusal(&code, &message, &problems));
                        let problems_json = if problems.is_empty() {
                            serde_json::json!([{ "code": code, "message": message }])
                        } else {
                            serde_json::to_value(&problems).unwrap_or_default()
                        };
                        b.quarantine
                            .push(quarantined(source, &records[i], reason, problems_json));
                        b.outcomes[i] = Some(RecordOutcome::Rejected {
                            code: code.clone(),
                            message: message.clone(),
                        });
                    }
                    events.push(EventState::Rejected {
                        event_id: msg.event_id,
                        code,
                        message,
                        problems,
                    });
                }
            }
        }
        for (i, rs) in receipts.into_iter().enumerate() {
            if b.outcomes[i].is_none() && !rs.is_empty() {
                accepted_keys.push(records[i].0.clone());
                b.outcomes[i] = Some(RecordOutcome::Accepted { receipts: rs });
            }
        }
        Ok((events, accepted_keys))
    }

    /// Step 5: records a delivered batch's receipts, quarantined records
    /// and checkpoint in one local transaction; returns the outcomes.
    pub async fn commit(&self, d: Delivered) -> Result<Vec<RecordOutcome>, AgentError> {
        self.inner
            .state
            .commit_batch(
                &d.source,
                &d.events,
                &d.quarantine,
                &d.accepted_keys,
                d.checkpoint.as_ref(),
            )
            .await?;
        Ok(d.outcomes)
    }

    /// Checks the newest of `checkpoints` (from a batch's receipts) against
    /// the largest one kept: signed by the node key, and one of the two
    /// extends the other (a consistency proof from the gateway, RFC 9162).
    /// A gateway whose ledger shrank or was rewritten since it signed the
    /// kept one is an error naming both, and nothing of the batch is
    /// recorded as delivered.
    async fn check_log(&self, checkpoints: &[ledger::Checkpoint]) -> Result<(), AgentError> {
        let Some(new) = checkpoints.iter().max_by_key(|c| c.tree_size) else {
            return Ok(());
        };
        let key = &self.inner.cfg.gateway_key;
        new.verify(key).map_err(|e| {
            AgentError::LedgerRewound(format!(
                "a receipt's checkpoint (tree size {}) does not verify: {e}",
                new.tree_size
            ))
        })?;
        let _one = self.inner.log_check.lock().await;
        let Some(kept) = self.inner.state.gateway_checkpoint().await? else {
            return self.inner.state.set_gateway_checkpoint(new).await;
        };
        let show = |c: &ledger::Checkpoint| {
            format!(
                "tree size {} root {} (block {}, signed {})",
                c.tree_size,
                c.root,
                c.height,
                c.signed_at()
            )
        };
        let (small, large) = if new.tree_size <= kept.tree_size {
            (new, &kept)
        } else {
            (&kept, new)
        };
        let consistent = if small.tree_size == large.tree_size {
            small.root == large.root
        } else {
            let path = format!(
                "/v1/public/consistency?first={}&second={}",
                small.tree_size, large.tree_size
            );
            match self.inner.client.send("GET", &path, Vec::new()).await {
                Ok(bytes) => serde_json::from_slice::<ledger::ConsistencyProof>(&bytes)
                    .map_err(|e| AgentError::Answer(format!("{path}: {e}")))?
                    .verify(small, large),
                // The gateway cannot prove its ledger ever was as large as
                // a checkpoint it signed: it shrank.
                Err(ClientError::Api { status: 404, .. }) => false,
                Err(e) => return Err(AgentError::Gateway(e)),
            }
        };
        if !consistent {
            return Err(AgentError::LedgerRewound(format!(
                "it signed {} before, and now {}: the log {}",
                show(&kept),
                show(new),
                if new.tree_size < kept.tree_size {
                    "shrank or forked"
                } else {
                    "forked"
                }
            )));
        }
        self.inner.state.set_gateway_checkpoint(new).await
    }

    /// Posts `messages` as one sealed batch; a batch the gateway finds too
    /// large (413 `body_too_large`) is split in halves, each posted on its
    /// own, and the answers joined in order. Retrying it whole would fail
    /// forever.
    fn post(
        &self,
        messages: Arc<Vec<ExchangeMessage>>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Answer, AgentError>> + Send + '_>> {
        Box::pin(async move {
            let n = messages.len();
            match self.post_once(messages.clone()).await {
                Err(AgentError::Gateway(ClientError::Api { status: 413, .. })) if n > 1 => {
                    tracing::warn!(
                        records = n,
                        "the gateway refused the batch as too large; sending it in two halves"
                    );
                    let mut first = Arc::unwrap_or_clone(messages);
                    let second = first.split_off(n / 2);
                    let mut a = self.post(Arc::new(first)).await?;
                    let b = self.post(Arc::new(second)).await?;
                    a.results.extend(b.results.into_iter().map(|mut r| {
                        r.index += n / 2;
                        r
                    }));
                    Ok(a)
                }
                other => other,
            }
        })
    }

    async fn post_once(&self, messages: Arc<Vec<ExchangeMessage>>) -> Result<Answer, AgentError> {
        let mut backoff = Backoff::new(self.inner.cfg.retry_base, self.inner.cfg.retry_max);
        loop {
            let inner = self.inner.clone();
            let msgs = messages.clone();
            let binary = !self.inner.json_only.load(std::sync::atomic::Ordering::Relaxed);
            let body = tokio::task::spawn_blocking(move || {
                let batch = crate::seal::seal_batch(
                    inner.cfg.key.provider().as_ref(),
                    inner.cfg.key.handle(),
                    &inner.cfg.entity_id,
                    &inner.cfg.gateway_key,
                    &[],
                    &msgs,
                )?;
                if binary {
                    batch.to_binary()
                } else {
                    Ok(batch.to_json().into_bytes())
                }
            })
            .await
            .map_err(|e| AgentError::Crypto(format!("sealing task: {e}")))?
            .map_err(|e| AgentError::Crypto(e.to_string()))?;
            let content_type = if binary {
                secure_gateway::BATCH_MEDIA_TYPE
            } else {
                "application/json"
            };
            // Brief receipts: the agent keeps only where each record went.
            match self
                .inner
                .client
                .send_as("POST", "/v1/transactions?receipts=brief", body, content_type)
                .await
            {
                Ok(bytes) => {
                    return serde_json::from_slice(&bytes).map_err(|e| AgentError::Answer(e.to_string()));
                }
                // A gateway older than the binary batch form: the same batch
                // as JSON, now and from then on (not counted as an attempt).
                Err(ClientError::Api { status: 415, .. }) if binary => {
                    // Said once, though several batches may be in flight.
                    if !self.inner.json_only.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::warn!(
                            "the gateway does not take the binary batch form ({}); sending batches as JSON",
                            secure_gateway::BATCH_MEDIA_TYPE
                        );
                    }
                }
                Err(e) if e.is_transient() && backoff.attempts() + 1 < self.inner.cfg.attempts.max(1) => {
                    tracing::warn!(error = %e, attempt = backoff.attempts() + 1, "gateway call failed; retrying");
                    backoff.wait().await;
                }
                Err(e) => return Err(AgentError::Gateway(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::GatewayClientConfig;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// The answer of the fake gateway for record `index` of a batch.
    fn result(index: usize) -> serde_json::Value {
        match index {
            0 => serde_json::json!({
                "index": 0, "status": "rejected",
                "error": {
                    "code": "invalid_trace_code",
                    "message": "1 validation problem(s)",
                    "problems": [{
                        "record": "k0", "field": "trace_code", "rule": "trace_code_prefix",
                        "value": "86123450000000001009", "message": "unknown product prefix",
                        "severity": "error"
                    }]
                }
            }),
            2 => serde_json::json!({
                "index": 2, "status": "rejected",
                "error": { "code": "forbidden", "message": "the entity may not submit vaccination records" }
            }),
            i => serde_json::json!({
                "index": i, "status": "accepted",
                "receipt": { "tx_id": Uuid::new_v4(), "height": 7 }
            }),
        }
    }

    /// A one-route HTTP gateway answering `POST /v1/transactions` with
    /// [`result`] for each record of the posted batch.
    async fn fake_gateway() -> String {
        fake_gateway_with(None, false).await.0
    }

    /// With `Some(max)`: answers 413 `body_too_large` to a batch of more than
    /// `max` records and accepts every record of the others; returns the
    /// sizes of the batches posted, in order.
    /// With `Some(max)`: answers 413 `body_too_large` to a batch of more than
    /// `max` records and accepts every record of the others. With
    /// `refuse_binary`, answers the binary batch form 415, as a gateway
    /// older than the agent does. Returns the records and content type of
    /// every batch posted, in order.
    async fn fake_gateway_with(
        max: Option<usize>,
        refuse_binary: bool,
    ) -> (String, Arc<std::sync::Mutex<Vec<(usize, String)>>>) {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let (head_end, len, content_type) = loop {
                        let n = sock.read(&mut chunk).await.expect("read");
                        assert!(n > 0, "connection closed before the request's headers");
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
                            let header = |name: &str| {
                                head.lines()
                                    .find_map(|l| l.strip_prefix(name))
                                    .map(|v| v.trim().to_string())
                            };
                            let len = header("content-length:")
                                .and_then(|v| v.parse::<usize>().ok())
                                .expect("content-length");
                            break (p + 4, len, header("content-type:").expect("content-type"));
                        }
                    };
                    while buf.len() < head_end + len {
                        let n = sock.read(&mut chunk).await.expect("read body");
                        assert!(n > 0, "connection closed in the body");
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body = &buf[head_end..];
                    let batch = if content_type == secure_gateway::BATCH_MEDIA_TYPE {
                        secure_gateway::SignedBatch::from_binary(body).expect("binary batch")
                    } else {
                        assert_eq!(content_type, "application/json");
                        secure_gateway::SignedBatch::from_json(body).expect("JSON batch")
                    };
                    let n = batch.records.len();
                    seen.lock().expect("sizes").push((n, content_type.clone()));
                    let binary = content_type == secure_gateway::BATCH_MEDIA_TYPE;
                    let (status, body) = match max {
                        _ if refuse_binary && binary => (
                            "415 Unsupported Media Type",
                            serde_json::json!({"error": {"code": "unsupported_content_type",
                                "message": "content-type \"application/vnd.vaxgate.batch\" is not accepted on /v1/transactions; send application/json"}}),
                        ),
                        Some(m) if n > m => (
                            "413 Payload Too Large",
                            serde_json::json!({"error": {"code": "body_too_large", "message": "the body exceeds server.max_body_bytes"}}),
                        ),
                        Some(_) => (
                            "200 OK",
                            serde_json::json!({
                                "batch_id": "b1", "accepted": n, "duplicates": 0, "rejected": 0,
                                "results": (0..n).map(|i| serde_json::json!({
                                    "index": i, "status": "accepted",
                                    "receipt": { "tx_id": Uuid::new_v4(), "height": 7 }
                                })).collect::<Vec<_>>()
                            }),
                        ),
                        None => (
                            "200 OK",
                            serde_json::json!({
                                "batch_id": "b1", "accepted": 0, "duplicates": 0, "rejected": 0,
                                "results": (0..n).map(result).collect::<Vec<_>>()
                            }),
                        ),
                    };
                    let body = body.to_string();
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    sock.write_all(resp.as_bytes()).await.expect("write");
                    let _ = sock.shutdown().await;
                });
            }
        });
        (format!("http://{addr}"), sizes)
    }

    fn root() -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Three rows of the clinic sample that map to exactly one event each.
    fn three_good_records(spec: &MappingSpec) -> Vec<(String, Record)> {
        let text = std::fs::read_to_string(root().join("config/mappings/samples/clinic-ims.rows.json")).expect("rows");
        let rows: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(&text).expect("rows JSON");
        let records: Vec<(String, Record)> = rows
            .into_iter()
            .map(Record::Row)
            .filter(|r| {
                let o = spec.map(r);
                o.problems.iter().all(|p| !p.is_error()) && o.events.len() == 1
            })
            .take(3)
            .map(|r| {
                let Record::Row(m) = &r else { unreachable!("rows") };
                (m["JZJL_ID"].as_str().expect("JZJL_ID").to_string(), r)
            })
            .collect();
        assert_eq!(records.len(), 3, "the sample has three good rows");
        records
    }

    /// A pipeline posting to the gateway at `url`, one attempt per call.
    fn test_pipeline(url: String, state: StateDb) -> Pipeline {
        use secure_gateway::{KeyHandle, RustCryptoProvider, Sm2SigningKey};
        let key = Signer::generate(RustCryptoProvider::shared(), KeyHandle::new("agent")).expect("key");
        let client = GatewayClient::new(
            &GatewayClientConfig {
                base_url: url,
                ..Default::default()
            },
            key.clone(),
        )
        .expect("client");
        Pipeline::new(
            client,
            PipelineConfig {
                entity_id: "91320102MA1XXXXXX0".into(),
                key,
                gateway_key: Sm2SigningKey::generate().verifying_key().clone(),
                attempts: 1,
                retry_base: Duration::from_millis(10),
                retry_max: Duration::from_millis(10),
            },
            state,
        )
    }

    /// The clinic spec, three good records of its sample, and a new state
    /// database in a directory removed when the last item is dropped.
    async fn clinic_fixture() -> (MappingSpec, Vec<(String, Record)>, StateDb, tempfile::TempDir) {
        let spec = MappingSpec::load(
            root().join("config/mappings/clinic-ims.toml"),
            &mappings::Dataset::builtin(),
        )
        .expect("spec");
        let records = three_good_records(&spec);
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDb::open(&dir.path().join("state.db")).await.expect("state");
        (spec, records, state, dir)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gateway_refusal_keeps_its_message_and_problems() {
        let (spec, records, state, _dir) = clinic_fixture().await;
        let keys: Vec<String> = records.iter().map(|(k, _)| k.clone()).collect();
        let pipeline = test_pipeline(fake_gateway().await, state.clone());
        pipeline.add_source("clinic", spec);
        let start = chrono::Utc::now();
        let out = pipeline.submit("clinic", records).await.expect("submit");

        assert_eq!(
            out[0],
            RecordOutcome::Rejected {
                code: "invalid_trace_code".into(),
                message: "1 validation problem(s)".into()
            }
        );
        assert!(out[1].is_accepted(), "{:?}", out[1]);
        assert!(matches!(&out[2], RecordOutcome::Rejected { code, .. } if code == "forbidden"));

        // The events table keeps code, message and the problems (only the
        // fields the agent keeps: field, rule, masked value, message).
        let problem = GatewayProblem {
            field: "trace_code".into(),
            rule: "trace_code_prefix".into(),
            value: Some("86123450000000001009".into()),
            message: "unknown product prefix".into(),
        };
        let r = state
            .rejections(Some("clinic"), Some(start), 10)
            .await
            .expect("rejections");
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(
            (r[0].record_key.as_str(), r[0].code.as_str(), r[0].message.as_deref()),
            (keys[0].as_str(), "invalid_trace_code", Some("1 validation problem(s)"))
        );
        assert_eq!(r[0].problems, vec![problem.clone()]);
        assert_eq!(
            (r[1].record_key.as_str(), r[1].code.as_str(), r[1].message.as_deref()),
            (
                keys[2].as_str(),
                "forbidden",
                Some("the entity may not submit vaccination records")
            )
        );
        assert!(r[1].problems.is_empty());
        assert_eq!(
            state.event_counts("clinic").await.expect("counts"),
            vec![("accepted".into(), 1), ("rejected".into(), 2)]
        );

        // The quarantine entry says why, field and rule included.
        let q = state.quarantine_list(Some("clinic"), false).await.expect("quarantine");
        assert_eq!(q.len(), 2, "{q:?}");
        assert_eq!(q[0].record_key, keys[0]);
        assert_eq!(
            q[0].reason,
            "gateway refused: invalid_trace_code: 1 validation problem(s): field `trace_code`: \
             rule trace_code_prefix: unknown product prefix"
        );
        assert_eq!(q[0].problems, serde_json::to_value(vec![problem]).expect("json"));
        assert_eq!(
            q[1].reason,
            "gateway refused: forbidden: the entity may not submit vaccination records"
        );
        assert_eq!(
            q[1].problems,
            serde_json::json!([{ "code": "forbidden", "message": "the entity may not submit vaccination records" }])
        );
        state.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_too_large_for_the_gateway_is_split_not_retried_forever() {
        let (spec, records, state, _dir) = clinic_fixture().await;
        let (url, posts) = fake_gateway_with(Some(1), false).await;
        let pipeline = test_pipeline(url, state);
        pipeline.add_source("clinic", spec);
        let out = tokio::time::timeout(Duration::from_secs(30), pipeline.submit("clinic", records))
            .await
            .expect("the split batch is delivered, not retried forever")
            .expect("submit");
        assert!(out.iter().all(RecordOutcome::is_accepted), "{out:?}");
        // 3 → 413; halves 1 and 2; 2 → 413; halves 1 and 1.
        let posts = posts.lock().expect("posts").clone();
        let sizes: Vec<usize> = posts.iter().map(|(n, _)| *n).collect();
        assert_eq!(sizes, vec![3, 1, 2, 1, 1]);
        assert!(
            posts.iter().all(|(_, ct)| ct == secure_gateway::BATCH_MEDIA_TYPE),
            "{posts:?}"
        );
    }

    /// A gateway older than the binary batch form answers it 415: the
    /// agent sends the same batch as JSON, and every later one too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gateway_without_the_binary_form_gets_json() {
        let (spec, records, state, _dir) = clinic_fixture().await;
        let (url, posts) = fake_gateway_with(None, true).await;
        let pipeline = test_pipeline(url, state);
        pipeline.add_source("clinic", spec);
        let (first, second) = records.split_at(1);
        for batch in [first, second] {
            let out = pipeline.submit("clinic", batch.to_vec()).await.expect("submit");
            assert_eq!(out.len(), batch.len());
        }
        let json = "application/json".to_string();
        let binary = secure_gateway::BATCH_MEDIA_TYPE.to_string();
        assert_eq!(
            *posts.lock().expect("posts"),
            vec![(1, binary), (1, json.clone()), (2, json)]
        );
    }

    /// The outcomes a source hands over with the records: each record
    /// mapped with `spec` at `at` (a past time, after the records'
    /// vaccinations), and record 1 given an error the spec does not find.
    /// A record the pipeline maps again loses both.
    fn planted_outcomes(spec: &MappingSpec, records: &[(String, Record)], at: &str) -> Vec<MapOutcome> {
        let at = chrono::DateTime::parse_from_rfc3339(at).expect("time");
        let mut outcomes: Vec<MapOutcome> = records.iter().map(|(_, r)| spec.map_at(r, at)).collect();
        assert!(
            outcomes.iter().all(MapOutcome::is_ok),
            "the fixture's records map cleanly"
        );
        outcomes[1].problems.push(Problem {
            record: records[1].0.clone(),
            field: "vaccine_code".into(),
            rule: "required",
            value: None,
            message: "planted by the test".into(),
            severity: mappings::Severity::Error,
        });
        outcomes
    }

    /// The `recorded_at` the state database keeps for the event of a
    /// record's receipt (a reservation returns the stored time).
    async fn stored_recorded_at(
        state: &StateDb,
        record: &(String, Record),
        outcome: &RecordOutcome,
    ) -> chrono::DateTime<chrono::FixedOffset> {
        let RecordOutcome::Accepted { receipts } = outcome else {
            panic!("not accepted: {outcome:?}")
        };
        let now = chrono::Utc::now().fixed_offset();
        let kept = state
            .reserve("clinic", &[(receipts[0].event_id, record.0.clone(), now)])
            .await
            .expect("reserve");
        kept[0].0
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_premapped_with_the_current_spec_are_not_mapped_again() {
        let (spec, records, state, _dir) = clinic_fixture().await;
        let pipeline = test_pipeline(fake_gateway().await, state.clone());
        pipeline.add_source("clinic", spec);
        // What the agent gives the source (`SourceContext::spec`).
        let spec = pipeline.spec("clinic").expect("spec");
        let at = "2025-01-02T03:04:05.678+08:00";
        let premapped = Premapped {
            spec: spec.clone(),
            outcomes: planted_outcomes(&spec, &records, at),
        };
        let out = pipeline
            .submit_premapped("clinic", records.clone(), premapped, None)
            .await
            .expect("submit");

        // Record 1 goes by its given outcome: quarantined for the planted
        // error, with the reason and problems `classify` makes of it.
        let reason = "field `vaccine_code`: rule required: planted by the test";
        assert_eq!(out[1], RecordOutcome::Quarantined { reason: reason.into() });
        let q = state.quarantine_list(Some("clinic"), false).await.expect("quarantine");
        let planted = q
            .iter()
            .find(|e| e.record_key == records[1].0)
            .expect("record 1 quarantined");
        assert_eq!(planted.reason, reason);
        assert_eq!(planted.problems[0]["message"], "planted by the test");
        // Records 0 and 2 are the posted messages 0 and 1 (the fake
        // gateway refuses message 0, accepts message 1), and record 2's
        // event kept the given outcome's recorded_at, not a new one.
        assert!(matches!(&out[0], RecordOutcome::Rejected { code, .. } if code == "invalid_trace_code"));
        assert_eq!(
            stored_recorded_at(&state, &records[2], &out[2]).await,
            chrono::DateTime::parse_from_rfc3339(at).expect("time")
        );
        state.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_premapped_with_another_spec_are_mapped_again() {
        let (spec, records, state, _dir) = clinic_fixture().await;
        let pipeline = test_pipeline(fake_gateway().await, state.clone());
        pipeline.add_source("clinic", spec);
        // The same rules in another `Arc`: a spec the source mapped with
        // before the pipeline's was replaced.
        let stale = Arc::new(MappingSpec::clone(&pipeline.spec("clinic").expect("spec")));
        let premapped = Premapped {
            spec: stale.clone(),
            outcomes: planted_outcomes(&stale, &records, "2025-01-02T03:04:05.678+08:00"),
        };
        let start = chrono::Utc::now();
        let out = pipeline
            .submit_premapped("clinic", records.clone(), premapped, None)
            .await
            .expect("submit");

        // Mapped again: the planted error is gone, all three are posted
        // (messages 0, 1, 2: refused, accepted, refused by the fake
        // gateway) and record 1's event is stamped now.
        assert!(matches!(&out[0], RecordOutcome::Rejected { code, .. } if code == "invalid_trace_code"));
        assert!(matches!(&out[2], RecordOutcome::Rejected { code, .. } if code == "forbidden"));
        assert!(stored_recorded_at(&state, &records[1], &out[1]).await >= start - chrono::Duration::seconds(1));
        state.close().await;
    }
}
