//! `POST /v1/transactions`: a batch of sealed records under one batch
//! signature (`secure_gateway::SignedBatch`, JSON or the binary form
//! `application/vnd.vaxgate.batch`).
//!
//! Checks, in this order (the order): the batch signature and the
//! signing key's registration and state → per record: the entity and its
//! permission for the category → decryption with the gateway's key →
//! validation against the dataset → idempotency (same event id and content:
//! the original receipt; same id, other content: 409) → one durable ledger
//! append for every good record. A bad record gets its own error and never
//! drops the good ones, unless the client asks `?mode=all_or_nothing`.

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use ledger::{LeafInput, LedgerStore, Receipt, Transaction, TxAuth, TxContent, TxKind};
use mappings::commitment::Commitment;
use mappings::{ExchangeMessage, Problem, TraceEvent};
use secure_gateway::envelope::{ContentType, RecipientKey};
use secure_gateway::{ReceivedBatch, Sm2VerifyingKey, Sm3Digest};
use serde::Serialize;

use crate::api::params::{Mode, RawQuery, ReceiptForm, param};
use crate::auth::{BodyForm, Principal};
use crate::coldchain::{self, AlertType, Finding};
use crate::custody;
use crate::error::{ApiError, Code};
use crate::metrics::METRICS;
use crate::order::Kind;
use crate::registry::KeyStatus;
use crate::server::AppState;

/// The outcome of one record.
#[derive(Debug, Serialize)]
pub struct RecordResult {
    /// Position in the batch.
    pub index: usize,
    /// The event id, when the record could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// `accepted`, `duplicate` (already in the ledger with the same content)
    /// or `rejected`.
    pub status: RecordStatus,
    /// Where it is in the ledger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<ReceiptView>,
    /// RFC 9162 audit path from the record's leaf to the receipt's checkpoint root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_path: Option<Vec<Sm3Digest>>,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RecordError>,
    /// What the cold-chain rules found (R11.2), for reading sets, shipments
    /// and inbound receipts that raised an alert or were refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold_chain: Option<ColdChainOutcome>,
    /// The custody alerts written for this record (`docs/custody.md`):
    /// rules it broke whose action is `flag` or `pending`, and pending
    /// alerts it resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custody: Option<CustodyOutcome>,
}

/// What became of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// Appended now.
    Accepted,
    /// Already in the ledger with the same content (or twice in the batch).
    Duplicate,
    /// Refused; `error` says why.
    Rejected,
}

/// The custody alerts of one accepted record.
#[derive(Debug, Default, Serialize)]
pub struct CustodyOutcome {
    /// Alert events written for (or resolved by) this record.
    pub alerts: Vec<CustodyAlertRef>,
}

/// A custody alert written to the ledger.
#[derive(Debug, Serialize)]
pub struct CustodyAlertRef {
    /// The alert's event id (`GET /v1/events/{id}`).
    pub event_id: String,
    /// Its transaction id.
    pub tx_id: String,
    /// `custody_violation`, `provenance_pending` or `provenance_resolved`.
    pub alert_type: &'static str,
    /// The rule codes broken.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<&'static str>,
    /// What was wrong, or what was resolved.
    pub reason: String,
}

/// A receipt as answered: whole (with its checkpoint), or brief.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ReceiptView {
    /// `?receipts=full` (default): the receipt with its signed checkpoint.
    Full(Receipt),
    /// `?receipts=brief`: where the record is; the checkpoint is listed once
    /// per block in [`IngestResponse::checkpoints`].
    Brief(BriefReceipt),
}

/// A receipt without its checkpoint (`?receipts=brief`).
#[derive(Debug, Clone, Serialize)]
pub struct BriefReceipt {
    /// The transaction id.
    pub tx_id: uuid::Uuid,
    /// The business record id.
    pub record_id: String,
    /// Position in the log.
    pub leaf_index: u64,
    /// Block height.
    pub height: u64,
    /// Block hash.
    pub block_hash: Sm3Digest,
}

/// The cold-chain outcome of one accepted record.
#[derive(Debug, Default, Serialize)]
pub struct ColdChainOutcome {
    /// `refused` for an inbound receipt refused for its temperature record:
    /// the receipt is in the ledger, the holder of its codes does not change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt_status: Option<&'static str>,
    /// Why the receipt was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal_reason: Option<String>,
    /// Alert events written for this record.
    pub alerts: Vec<AlertRef>,
}

/// An alert event written to the ledger.
#[derive(Debug, Serialize)]
pub struct AlertRef {
    /// The alert's event id (`GET /v1/events/{id}`).
    pub event_id: String,
    /// Its transaction id.
    pub tx_id: String,
    /// Kind.
    pub alert_type: AlertType,
    /// What was wrong.
    pub reason: String,
}

/// A per-record refusal.
#[derive(Debug, Serialize)]
pub struct RecordError {
    /// Stable code.
    pub code: Code,
    /// For a person (no personal data).
    pub message: String,
    /// Validation problems (values masked).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

/// The response of an ingest call.
#[derive(Debug, Serialize)]
pub struct IngestResponse {
    /// The batch id.
    pub batch_id: String,
    /// Records appended now.
    pub accepted: usize,
    /// Records already in the ledger with the same content.
    pub duplicates: usize,
    /// Records refused.
    pub rejected: usize,
    /// One result per record, in batch order.
    pub results: Vec<RecordResult>,
    /// With `?receipts=brief`: the signed checkpoint of each block the
    /// receipts name, once per block.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<ledger::Checkpoint>,
}

/// `?receipts=brief`: receipts without checkpoints and audit paths (those
/// come once per block in `checkpoints`, and per transaction from
/// `GET /v1/transactions/{id}/proof`), for clients that keep only where
/// each record went, such as the agent.
fn make_brief(results: &mut [RecordResult]) -> Vec<ledger::Checkpoint> {
    let mut cps: std::collections::BTreeMap<u64, ledger::Checkpoint> = std::collections::BTreeMap::new();
    for r in results.iter_mut() {
        r.audit_path = None;
        if let Some(ReceiptView::Full(full)) = r.receipt.take() {
            let brief = BriefReceipt {
                tx_id: full.tx_id,
                record_id: full.record_id,
                leaf_index: full.leaf_index,
                height: full.height,
                block_hash: full.block_hash,
            };
            cps.entry(full.checkpoint.height).or_insert(full.checkpoint);
            r.receipt = Some(ReceiptView::Brief(brief));
        }
    }
    cps.into_values().collect()
}

fn reject(index: usize, event_id: Option<String>, code: Code, message: impl Into<String>) -> RecordResult {
    METRICS.rejections.with_label_values(&[code.as_str()]).inc();
    RecordResult {
        index,
        event_id,
        status: RecordStatus::Rejected,
        receipt: None,
        audit_path: None,
        error: Some(RecordError {
            code,
            message: message.into(),
            problems: Vec::new(),
        }),
        cold_chain: None,
        custody: None,
    }
}

/// The batch signer's key, which must belong to the authenticated entity.
fn batch_signer(state: &AppState, principal: &Principal, key_id: &str) -> Result<(Sm2VerifyingKey, String), ApiError> {
    let reg = crate::registry::read(&state.registry)?;
    let k = reg.key(key_id).ok_or_else(|| {
        ApiError::new(
            Code::UnknownEntity,
            format!("batch signing key {key_id} is not registered"),
        )
    })?;
    match k.status {
        KeyStatus::Active => {}
        KeyStatus::Locked => {
            return Err(ApiError::new(
                Code::KeyLocked,
                format!("batch signing key {key_id} is locked"),
            ));
        }
        KeyStatus::Revoked => {
            return Err(ApiError::new(
                Code::KeyRevoked,
                format!("batch signing key {key_id} is revoked"),
            ));
        }
    }
    if principal.entity_id.as_deref() != Some(k.entity_id.as_str()) {
        return Err(ApiError::new(
            Code::Forbidden,
            format!(
                "batch signing key {key_id} belongs to {}, not to the authenticated entity",
                k.entity_id
            ),
        ));
    }
    let vk = reg
        .verifying_key(key_id)
        .cloned()
        .ok_or_else(|| ApiError::internal(format!("registered key {key_id} has no parsed public key")))?;
    Ok((vk, k.entity_id.clone()))
}

/// Whether the record with this event id is in the ledger already (a node
/// alert raised once is not raised again).
pub(crate) async fn in_ledger(state: &AppState, event_id: &uuid::Uuid) -> Result<bool, ApiError> {
    Ok(state
        .ledger
        .store()
        .tx_by_record(&event_id.to_string())
        .await?
        .is_some())
}

/// The key-value state key of an event: its first trace code, else its id.
fn state_key(msg: &ExchangeMessage) -> String {
    msg.payload
        .trace_codes
        .first()
        .cloned()
        .unwrap_or_else(|| msg.event_id.to_string())
}

pub(crate) async fn post(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: RawQuery,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    ingest(req, state, query, body, false).await
}

/// `POST /v1/cancellations`: the same batch format, every record a
/// `cancellation` (R4.5).
pub(crate) async fn post_cancellations(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: RawQuery,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    ingest(req, state, query, body, true).await
}

/// A cancellation must name an event in the ledger that the same entity
/// submitted, and not a cancellation itself.
async fn check_cancellation(state: &AppState, entity_id: &str, msg: &ExchangeMessage) -> Result<(), (Code, String)> {
    let target = msg.payload.field_str("cancels_event_id").ok_or((
        Code::ValidationFailed,
        "a cancellation names the cancelled event in cancels_event_id".to_string(),
    ))?;
    let ev = state
        .projection
        .event(target)
        .await
        .map_err(|e| (Code::Internal, e.to_string()))?
        .ok_or((Code::NotFound, format!("cancelled event {target} is not in the ledger")))?;
    if ev.category == "cancellation" {
        return Err((
            Code::ValidationFailed,
            format!("event {target} is itself a cancellation"),
        ));
    }
    if ev.signer != entity_id {
        return Err((
            Code::Forbidden,
            format!("event {target} was submitted by another entity; only its submitter may cancel it"),
        ));
    }
    Ok(())
}

/// A record that passed every per-record check: its transaction, its
/// exchange message and its field commitments.
struct Candidate {
    index: usize,
    tx: Transaction,
    /// `SM3(payload)` of `tx`, computed when the batch was opened.
    payload_sm3: Sm3Digest,
    msg: ExchangeMessage,
    fields: Commitment,
}

/// A sealed record as the batch's opening gave it: its signed bytes (what a
/// format-2 ledger stores) and their SM3 (its record digest).
struct StoredForm {
    signed: Vec<u8>,
    digest: Sm3Digest,
}

/// What every record of a batch is checked against.
struct BatchCtx<'a> {
    state: &'a AppState,
    entity: crate::registry::Entity,
    entity_id: String,
    /// The signing key (SEC1 hex), for the transactions' auth.
    public_key: String,
    header: &'a secure_gateway::BatchHeader,
    cancellations_only: bool,
}

async fn ingest(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: RawQuery,
    body: web::Bytes,
    cancellations_only: bool,
) -> Result<HttpResponse, ApiError> {
    let principal = req
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| ApiError::new(Code::Unauthenticated, "no authenticated principal"))?;
    let mode: Mode = param(&query, "mode")?;
    let brief = param::<ReceiptForm>(&query, "receipts")? == ReceiptForm::Brief;
    let form = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(BodyForm::of)
        .unwrap_or(BodyForm::Json);
    let received = match form {
        BodyForm::Json => ReceivedBatch::from_json(&body),
        BodyForm::BinaryBatch => ReceivedBatch::from_binary(&body),
    }
    .map_err(|e| ApiError::new(Code::MalformedBody, format!("the body: {e}")))?;
    let (vk, entity_id) = batch_signer(&state, &principal, &received.batch.header.key_id)?;
    let (
        batch,
        secure_gateway::batch::OpenedBatch {
            records: opened,
            audit_paths: paths,
            signed_bytes,
            record_digests,
        },
    ) = received
        .open_with_paths(
            state.node.provider().as_ref(),
            &vk,
            RecipientKey::Sm2(state.node.handle()),
        )
        .map_err(|e| ApiError::new(Code::BadSignature, e.to_string()))?;
    let entity = {
        let reg = crate::registry::read(&state.registry)?;
        reg.entity(&entity_id)
            .cloned()
            .ok_or_else(|| ApiError::internal("key without entity"))?
    };
    let cx = BatchCtx {
        state: &state,
        entity,
        entity_id,
        public_key: hex::encode(vk.to_sec1()),
        header: &batch.header,
        cancellations_only,
    };

    let mut results: Vec<Option<RecordResult>> = (0..batch.records.len()).map(|_| None).collect();
    let mut candidates = Vec::new();
    let sealed = batch.records.iter().zip(signed_bytes).zip(record_digests);
    for (i, (((env, signed), digest), (opened, path))) in sealed.zip(opened.into_iter().zip(paths)).enumerate() {
        let stored = StoredForm { signed, digest };
        match check_record(&cx, i, env, stored, opened, path).await? {
            Ok(c) => candidates.push(c),
            Err(r) => results[i] = Some(r),
        }
    }
    let (candidates, repeats) = dedupe_in_batch(candidates, &mut results);
    let fresh = answer_stored(&state, candidates, &mut results).await?;
    let batch_id = batch.header.batch_id.to_string();
    let any_rejected = results
        .iter()
        .any(|r| r.as_ref().is_some_and(|r| r.status == RecordStatus::Rejected));
    if mode == Mode::AllOrNothing && any_rejected {
        // Nothing is written; the good records are reported as not written.
        for c in fresh {
            results[c.index] = Some(not_written(c.index, &c.tx));
        }
        fill_repeats(&mut results, &repeats);
        return Ok(refused_whole(batch_id, results));
    }
    let whole_refused = append_fresh(&state, fresh, mode, brief, &mut results).await?;
    fill_repeats(&mut results, &repeats);
    Ok(if whole_refused {
        refused_whole(batch_id, results)
    } else {
        answer(batch_id, results, brief)
    })
}

/// The answer of a good record of an all-or-nothing batch that was refused.
fn not_written(i: usize, t: &Transaction) -> RecordResult {
    reject(
        i,
        Some(t.content.record_id.clone()),
        Code::ValidationFailed,
        "not written: another record of this all-or-nothing batch was refused",
    )
}

/// One record's checks, in the module's order up to idempotency: the
/// envelope's entity and category, decryption, the exchange message, the
/// event's category and source, the dataset rules, a cancellation's target,
/// the transaction size. `Err` of the outer result fails the whole call
/// (a store error); `Err` of the inner one refuses this record alone.
async fn check_record(
    cx: &BatchCtx<'_>,
    i: usize,
    env: &secure_gateway::SealedEnvelope,
    stored: StoredForm,
    opened: Result<secure_gateway::OpenedEnvelope, secure_gateway::CryptoError>,
    audit_path: Vec<Sm3Digest>,
) -> Result<Result<Candidate, RecordResult>, ApiError> {
    let h = &env.header;
    let refuse = |event_id: Option<String>, code: Code, m: String| Ok(Err(reject(i, event_id, code, m)));
    if cx.cancellations_only && h.dataset_category != "cancellation" {
        return refuse(
            None,
            Code::ValidationFailed,
            "only cancellation records are accepted here".into(),
        );
    }
    if h.entity_id != cx.entity_id {
        return refuse(
            None,
            Code::Forbidden,
            format!("record names entity {}, not the signer's", h.entity_id),
        );
    }
    if !cx.entity.may_write(&h.dataset_category) {
        return refuse(
            None,
            Code::Forbidden,
            format!("{} may not write {} records", cx.entity.alias, h.dataset_category),
        );
    }
    let plain = match opened {
        Ok(p) => p,
        Err(e) => return refuse(None, Code::BadSignature, format!("cannot open record: {e}")),
    };
    let Ok(text) = std::str::from_utf8(&plain.plaintext) else {
        return refuse(None, Code::MalformedBody, "record plaintext is not UTF-8".into());
    };
    let parsed = match h.content_type {
        ContentType::Json => mappings::exchange::from_json(text),
        ContentType::Xml => mappings::exchange::from_xml(text),
    };
    let msg = match parsed {
        Ok(m) => m,
        Err(e) => return refuse(None, Code::MalformedBody, format!("not an exchange message: {e}")),
    };
    let event_id = msg.event_id.to_string();
    if msg.payload.category != h.dataset_category {
        return refuse(
            Some(event_id),
            Code::ValidationFailed,
            format!(
                "the event is a {} record but the envelope says {}",
                msg.payload.category, h.dataset_category
            ),
        );
    }
    if !cx.entity.is_source(&msg.payload.source) {
        return refuse(
            Some(event_id),
            Code::Forbidden,
            format!("the event's source {} is not the submitting entity", msg.payload.source),
        );
    }
    let problems: Vec<Problem> = mappings::validate(&msg.payload, &cx.state.dataset)
        .into_iter()
        .filter(Problem::is_error)
        .collect();
    if !problems.is_empty() {
        return Ok(Err(invalid(i, event_id, problems)));
    }
    let cancellation = h.dataset_category == "cancellation";
    if cancellation && let Err((code, m)) = check_cancellation(cx.state, &cx.entity_id, &msg).await {
        return refuse(Some(event_id), code, m);
    }
    let fields = mappings::commitment::commit(&msg.payload, &plain.field_seed);
    let format = cx.state.ledger.format();
    let (payload, payload_sm3) = match format {
        ledger::TxFormat::V1 => {
            let json = serde_json::to_vec(env).map_err(ApiError::internal)?;
            let d = secure_gateway::sm3(&json);
            (json, d)
        }
        ledger::TxFormat::V2 => (stored.signed, stored.digest),
    };
    let content = TxContent {
        tx_id: h.transaction_id,
        record_id: event_id.clone(),
        kind: if cancellation {
            TxKind::Cancellation
        } else {
            TxKind::Data
        },
        category: h.dataset_category.clone(),
        state_key: state_key(&msg),
        content_type: h.content_type.as_str().to_string(),
        data_hash: env.plaintext_sm3,
        payload,
        fields_root: Some(Sm3Digest(fields.root)),
        format,
    };
    // One ledger transaction carries at most 8 KiB (T/CPMA 026-2023 Annex A).
    // Refuse the record alone, before the append, so that it cannot fail
    // the whole batch.
    if content.payload.len() > ledger::DEFAULT_MAX_PAYLOAD {
        let m = format!(
            "the sealed record is {} bytes; a ledger transaction carries at most {} (T/CPMA 026-2023 \
             Annex A): split it, e.g. fewer trace codes per record or carton-level codes",
            content.payload.len(),
            ledger::DEFAULT_MAX_PAYLOAD
        );
        return refuse(Some(event_id), Code::ValidationFailed, m);
    }
    let auth = TxAuth {
        signer: cx.entity_id.clone(),
        public_key: cx.public_key.clone(),
        leaf: LeafInput::Envelope,
        batch: cx.header.clone(),
        index: i as u64,
        audit_path,
    };
    Ok(Ok(Candidate {
        index: i,
        tx: Transaction { content, auth },
        payload_sm3,
        msg,
        fields,
    }))
}

/// A record refused by the dataset rules, with its (masked) problems.
fn invalid(i: usize, event_id: String, problems: Vec<Problem>) -> RecordResult {
    let code = if problems.iter().all(|p| p.rule.starts_with("trace_code")) {
        Code::InvalidTraceCode
    } else {
        Code::ValidationFailed
    };
    METRICS.rejections.with_label_values(&[code.as_str()]).inc();
    RecordResult {
        index: i,
        event_id: Some(event_id),
        status: RecordStatus::Rejected,
        receipt: None,
        audit_path: None,
        error: Some(RecordError {
            code,
            message: format!("{} validation problem(s)", problems.len()),
            problems,
        }),
        cold_chain: None,
        custody: None,
    }
}

/// An event twice in this batch (a redelivery, a publisher's retry): the
/// first occurrence is written; a repeat with the same content is answered
/// like it (the returned `(repeat, first)` pairs), one with other content
/// is refused (409). Neither fails the rest of the batch.
fn dedupe_in_batch(
    candidates: Vec<Candidate>,
    results: &mut [Option<RecordResult>],
) -> (Vec<Candidate>, Vec<(usize, usize)>) {
    let mut first_of: std::collections::HashMap<String, (usize, Sm3Digest, String)> = std::collections::HashMap::new();
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    let mut unique = Vec::with_capacity(candidates.len());
    for cand in candidates {
        let (i, c) = (cand.index, &cand.tx.content);
        match first_of.get(&c.record_id) {
            None => {
                first_of.insert(c.record_id.clone(), (i, c.data_hash, c.category.clone()));
                unique.push(cand);
            }
            Some((j, h, cat)) if *h == c.data_hash && *cat == c.category => repeats.push((i, *j)),
            Some((j, ..)) => {
                let m = format!(
                    "event {} is also record {j} of this batch, with other content",
                    c.record_id
                );
                results[i] = Some(reject(i, Some(c.record_id.clone()), Code::Conflict, m));
            }
        }
    }
    (unique, repeats)
}

/// Idempotency: a record whose event id is already in the ledger is
/// answered with its original receipt (same content) or refused (409,
/// other content). One query for the whole batch; records seen before are
/// rare. Returns the records not in the ledger.
async fn answer_stored(
    state: &AppState,
    candidates: Vec<Candidate>,
    results: &mut [Option<RecordResult>],
) -> Result<Vec<Candidate>, ApiError> {
    let ids: Vec<String> = candidates.iter().map(|c| c.tx.content.record_id.clone()).collect();
    let mut stored = txs_by_record(state, &ids).await?;
    let mut fresh = Vec::new();
    for cand in candidates {
        let (i, t) = (cand.index, &cand.tx);
        match stored.remove(&t.content.record_id) {
            None => fresh.push(cand),
            Some(st)
                if st.tx.content.data_hash == t.content.data_hash && st.tx.content.category == t.content.category =>
            {
                let cp = state
                    .ledger
                    .store()
                    .checkpoint(st.height)
                    .await?
                    .ok_or_else(|| ApiError::internal("no checkpoint"))?;
                let block = state
                    .ledger
                    .store()
                    .block(st.height)
                    .await?
                    .ok_or_else(|| ApiError::internal("no block"))?;
                let path = ledger::audit_paths(state.ledger.store(), &[st.leaf_index], cp.tree_size).await?;
                results[i] = Some(RecordResult {
                    index: i,
                    event_id: Some(t.content.record_id.clone()),
                    status: RecordStatus::Duplicate,
                    receipt: Some(ReceiptView::Full(Receipt {
                        tx_id: st.tx.content.tx_id,
                        record_id: st.tx.content.record_id.clone(),
                        leaf_index: st.leaf_index,
                        height: st.height,
                        block_hash: block.block_hash,
                        checkpoint: cp,
                    })),
                    audit_path: path.into_iter().next(),
                    error: None,
                    cold_chain: None,
                    custody: None,
                });
            }
            Some(st) => {
                results[i] = Some(reject(
                    i,
                    Some(t.content.record_id.clone()),
                    Code::Conflict,
                    format!(
                        "event {} is already in the ledger (transaction {}) with other content",
                        t.content.record_id, st.tx.content.tx_id
                    ),
                ));
            }
        }
    }
    Ok(fresh)
}

/// Judges the records not yet in the ledger by the cold-chain and custody
/// rules and appends the ones not refused, with their alerts, in one
/// durable append; fills their results. Returns `true` when an
/// all-or-nothing batch was refused by the custody rules (nothing written).
async fn append_fresh(
    state: &AppState,
    fresh: Vec<Candidate>,
    mode: Mode,
    brief: bool,
    results: &mut [Option<RecordResult>],
) -> Result<bool, ApiError> {
    if fresh.is_empty() {
        return Ok(false);
    }
    let started = std::time::Instant::now();
    let mut idx = Vec::with_capacity(fresh.len());
    let mut txs = Vec::with_capacity(fresh.len());
    let mut msgs = Vec::with_capacity(fresh.len());
    let mut fields = Vec::with_capacity(fresh.len());
    let mut payload_sm3 = std::collections::HashMap::with_capacity(fresh.len());
    for c in fresh {
        idx.push(c.index);
        payload_sm3.insert(c.tx.content.tx_id, c.payload_sm3);
        txs.push(c.tx);
        msgs.push(c.msg);
        fields.push(c.fields);
    }
    // A receipt is judged against the shipments and readings before it
    // in the ledger: batches holding either take their turn in
    // `AppState::ingest_order` (crate::order); other batches do not.
    let _order = match Kind::of(msgs.iter().map(|m| m.payload.category.as_str())) {
        Some(k) => Some(state.ingest_order.enter(k).await),
        None => None,
    };
    // Cold-chain rules (R11.2): alerts are node-written transactions in
    // the same durable append as the records they are about.
    let alerts = cold_chain_alerts(state, &msgs).await?;
    let refused_receipts: std::collections::HashSet<usize> = alerts
        .iter()
        .filter(|(_, f, _)| f.alert_type == AlertType::ReceiptRefused)
        .map(|(pos, ..)| *pos)
        .collect();
    // Custody rules (docs/custody.md): every record that moves a code
    // is judged against every fact about it, from any source.
    let (verdict, ticket) = state
        .custody
        .judge(&state.projection, &state.registry, &msgs, &refused_receipts)
        .await?;
    let custody::Verdict {
        records: verdicts,
        resolutions,
    } = verdict;
    for v in &verdicts {
        for (list, action) in [(&v.refused, "refuse"), (&v.flagged, "flag"), (&v.pending, "pending")] {
            for r in custody::rules_of(list) {
                METRICS.custody_findings.with_label_values(&[r, action]).inc();
            }
        }
    }
    if mode == Mode::AllOrNothing && verdicts.iter().any(|v| !v.refused.is_empty()) {
        for ((i, t), v) in idx.into_iter().zip(&txs).zip(&verdicts) {
            results[i] = Some(if v.refused.is_empty() {
                not_written(i, t)
            } else {
                custody_refusal(i, t, v)
            });
        }
        return Ok(true);
    }
    let all = Appendable {
        idx,
        txs,
        msgs,
        fields,
        alerts,
        verdicts,
        resolutions,
    };
    let kept = keep_unrefused(results, all);
    if kept.txs.is_empty() {
        drop(ticket);
        return Ok(false);
    }
    let leaves = append_and_answer(state, results, kept, &payload_sm3, brief, started).await?;
    ticket.committed(&leaves);
    Ok(false)
}

/// The 422 answer of an all-or-nothing batch of which a record was refused:
/// nothing written, every record answered.
fn refused_whole(batch_id: String, results: Vec<Option<RecordResult>>) -> HttpResponse {
    let results: Vec<RecordResult> = results.into_iter().flatten().collect();
    HttpResponse::UnprocessableEntity().json(IngestResponse {
        batch_id,
        accepted: 0,
        duplicates: 0,
        rejected: results.len(),
        results,
        checkpoints: Vec::new(),
    })
}

/// The 200 answer of an ingest call.
fn answer(batch_id: String, results: Vec<Option<RecordResult>>, brief: bool) -> HttpResponse {
    let mut results: Vec<RecordResult> = results.into_iter().flatten().collect();
    let checkpoints = if brief { make_brief(&mut results) } else { Vec::new() };
    let count = |s: RecordStatus| results.iter().filter(|r| r.status == s).count();
    HttpResponse::Ok().json(IngestResponse {
        batch_id,
        accepted: count(RecordStatus::Accepted),
        duplicates: count(RecordStatus::Duplicate),
        rejected: count(RecordStatus::Rejected),
        results,
        checkpoints,
    })
}

/// A record refused by custody rules (`docs/custody.md`).
fn custody_refusal(i: usize, t: &Transaction, v: &custody::RecordVerdict) -> RecordResult {
    let mut r = reject(
        i,
        Some(t.content.record_id.clone()),
        Code::CustodyViolation,
        format!(
            "custody rule(s) {} broken: {}",
            custody::rules_of(&v.refused).join(", "),
            custody::summary(&v.refused)
        ),
    );
    if let Some(e) = r.error.as_mut() {
        let key = v
            .facts
            .facts
            .first()
            .map(|f| f.event_id.to_string())
            .unwrap_or_default();
        e.problems = custody::problems(&key, &v.refused);
    }
    r
}

/// The records of a batch that are to be appended, with what the rules
/// found about them: positions in the batch, transactions, events,
/// cold-chain alerts (by position in `txs`), custody verdicts and the
/// pending alerts they resolve.
struct Appendable {
    idx: Vec<usize>,
    txs: Vec<Transaction>,
    msgs: Vec<ExchangeMessage>,
    /// Each record's field commitments.
    fields: Vec<Commitment>,
    alerts: Vec<(usize, Finding, TraceEvent)>,
    verdicts: Vec<custody::RecordVerdict>,
    resolutions: Vec<custody::Resolution>,
}

/// Answers the records custody rules refused and keeps the others (their
/// cold-chain alerts and resolutions renumbered to their new positions).
fn keep_unrefused(results: &mut [Option<RecordResult>], all: Appendable) -> Appendable {
    let Appendable {
        idx,
        txs,
        msgs,
        fields,
        alerts,
        verdicts,
        resolutions,
    } = all;
    let mut new_pos: Vec<Option<usize>> = Vec::with_capacity(verdicts.len());
    let mut kept = 0;
    for v in &verdicts {
        new_pos.push(v.refused.is_empty().then(|| {
            kept += 1;
            kept - 1
        }));
    }
    let mut out = Appendable {
        idx: Vec::with_capacity(kept),
        txs: Vec::with_capacity(kept),
        msgs: Vec::with_capacity(kept),
        fields: Vec::with_capacity(kept),
        alerts: alerts
            .into_iter()
            .filter_map(|(pos, f, ev)| new_pos[pos].map(|p| (p, f, ev)))
            .collect(),
        verdicts: Vec::with_capacity(kept),
        resolutions: resolutions
            .into_iter()
            .filter_map(|mut r| {
                r.by = new_pos[r.by]?;
                Some(r)
            })
            .collect(),
    };
    for ((((i, t), m), f), v) in idx.into_iter().zip(txs).zip(msgs).zip(fields).zip(verdicts) {
        if v.refused.is_empty() {
            out.idx.push(i);
            out.txs.push(t);
            out.msgs.push(m);
            out.fields.push(f);
            out.verdicts.push(v);
        } else {
            results[i] = Some(custody_refusal(i, &t, &v));
        }
    }
    out
}

/// What a custody alert of the append is: the record it is about (or the
/// record that resolved it), its type and rules, and why.
struct CustodyAlert {
    record: usize,
    alert_type: &'static str,
    rules: Vec<&'static str>,
    reason: String,
}

/// Appends the kept records with their cold-chain and custody alerts in
/// one durable append, and fills in their results. `payload_sm3` holds the
/// SM3 of each record's payload by transaction id (computed when its batch
/// was opened), so the ledger hashes no payload again.
async fn append_and_answer(
    state: &AppState,
    results: &mut [Option<RecordResult>],
    a: Appendable,
    payload_sm3: &std::collections::HashMap<uuid::Uuid, Sm3Digest>,
    brief: bool,
    started: std::time::Instant,
) -> Result<std::collections::HashMap<u64, u64>, ApiError> {
    let Appendable {
        idx,
        mut txs,
        mut msgs,
        mut fields,
        alerts,
        verdicts,
        resolutions,
    } = a;
    let n_records = txs.len();
    let now = chrono::Utc::now();
    let (alert_events, custody_rows, custody_alerts) = alert_events_of(&alerts, &verdicts, &resolutions, &msgs, now);
    // An alert already in the ledger (a cold-chain alert of a record sent
    // again after a failed append) is not written twice.
    let ids: Vec<String> = alert_events.iter().map(|e| e.event_id.to_string()).collect();
    let existing: std::collections::HashSet<String> = state
        .ledger
        .store()
        .txs_by_records(&ids)
        .await?
        .into_iter()
        .map(|st| st.tx.content.record_id)
        .collect();
    let mut written: Vec<bool> = Vec::with_capacity(alert_events.len());
    let mut alert_contents = Vec::with_capacity(alert_events.len());
    let mut rows = custody_rows.into_iter();
    let mut kept_rows: Vec<crate::projection::CustodyRows> = rows.by_ref().take(n_records).collect();
    for (ev, row) in alert_events.into_iter().zip(rows) {
        if existing.contains(&ev.event_id.to_string()) {
            written.push(false);
            continue;
        }
        written.push(true);
        let (content, msg, commitment) = node_alert(ev);
        alert_contents.push(content);
        msgs.push(msg);
        fields.push(commitment);
        kept_rows.push(row);
    }
    let mut cats: Vec<String> = txs.iter().map(|t| t.content.category.clone()).collect();
    if !alert_contents.is_empty() {
        cats.extend(alert_contents.iter().map(|c| c.category.clone()));
        txs.extend(
            ledger::sign_batch(
                coldchain::NODE_SIGNER,
                &state.node,
                alert_contents,
                now.timestamp_millis(),
            )
            .map_err(ApiError::internal)?,
        );
    }
    let side = crate::projection::ProjectionWrite::new(&txs, msgs, fields, kept_rows);
    let payload_sm3 = txs
        .iter()
        .map(|t| {
            let c = &t.content;
            payload_sm3
                .get(&c.tx_id)
                .copied()
                .unwrap_or_else(|| secure_gateway::sm3(&c.payload))
        })
        .collect();
    let appended = state
        .ledger
        .append_with(
            txs,
            Some(Box::new(side)),
            ledger::Membership::VerifiedByCaller { payload_sm3 },
        )
        .await;
    METRICS
        .append_seconds
        .with_label_values(&[if appended.is_ok() { "ok" } else { "error" }])
        .observe(started.elapsed().as_secs_f64());
    let receipts = appended?;
    let paths: Vec<Option<Vec<Sm3Digest>>> = if brief {
        receipts.iter().map(|_| None).collect()
    } else {
        let tree_size = receipts.first().map(|r| r.checkpoint.tree_size).unwrap_or(0);
        let leaves: Vec<u64> = receipts.iter().map(|r| r.leaf_index).collect();
        ledger::audit_paths(state.ledger.store(), &leaves, tree_size)
            .await?
            .into_iter()
            .map(Some)
            .collect()
    };
    for c in &cats {
        METRICS.ingested.with_label_values(&[c.as_str()]).inc();
    }
    let (outcomes, custody_out) = alert_outcomes(n_records, &written, &alerts, &custody_alerts, &receipts[n_records..]);
    // Each written record's leaf, by its order number in the custody
    // judgement (for the cache of custody histories).
    let leaves = verdicts
        .iter()
        .zip(&receipts)
        .map(|(v, r)| (v.seq, r.leaf_index))
        .collect();
    for ((((i, r), p), cc), cu) in idx.into_iter().zip(receipts).zip(paths).zip(outcomes).zip(custody_out) {
        results[i] = Some(RecordResult {
            index: i,
            event_id: Some(r.record_id.clone()),
            status: RecordStatus::Accepted,
            receipt: Some(ReceiptView::Full(r)),
            audit_path: p,
            error: None,
            cold_chain: cc,
            custody: cu,
        });
    }
    Ok(leaves)
}

/// The alert events a batch writes with its records: its cold-chain
/// alerts, then one custody alert per kept record that broke a flag or
/// pending rule, then one per pending alert a record resolved; with the
/// custody rows of the records and of each alert, and the custody alerts'
/// answers.
fn alert_events_of(
    alerts: &[(usize, Finding, TraceEvent)],
    verdicts: &[custody::RecordVerdict],
    resolutions: &[custody::Resolution],
    msgs: &[ExchangeMessage],
    now: chrono::DateTime<chrono::Utc>,
) -> (Vec<TraceEvent>, Vec<crate::projection::CustodyRows>, Vec<CustodyAlert>) {
    let mut custody_rows: Vec<crate::projection::CustodyRows> = Vec::with_capacity(verdicts.len() + alerts.len());
    for v in verdicts {
        custody_rows.push(crate::projection::CustodyRows {
            facts: v.facts.facts.clone(),
            lots: v.facts.lot_facts.clone(),
            ..Default::default()
        });
    }
    let mut alert_events: Vec<TraceEvent> = alerts.iter().map(|(_, _, ev)| ev.clone()).collect();
    custody_rows.extend(alerts.iter().map(|_| crate::projection::CustodyRows::default()));
    let mut custody_alerts: Vec<CustodyAlert> = Vec::new();
    for (k, v) in verdicts.iter().enumerate() {
        let ev = &msgs[k].payload;
        for (list, alert_type) in [
            (&v.flagged, custody::alert::VIOLATION),
            (&v.pending, custody::alert::PENDING),
        ] {
            if list.is_empty() {
                continue;
            }
            alert_events.push(custody::alert_event(ev, alert_type, list, None, &[], now));
            let mut codes: Vec<String> = list.iter().map(|f| f.code.clone()).collect();
            codes.sort();
            codes.dedup();
            custody_rows.push(crate::projection::CustodyRows {
                pending: (alert_type == custody::alert::PENDING).then_some((codes, k)),
                ..Default::default()
            });
            custody_alerts.push(CustodyAlert {
                record: k,
                alert_type,
                rules: custody::rules_of(list),
                reason: custody::summary(list),
            });
        }
    }
    for r in resolutions {
        let reason = format!("the records alert {} waited for are in the ledger", r.alert_event_id);
        let ev = custody::alert_event(
            &r.related,
            custody::alert::RESOLVED,
            &[],
            Some(custody::FollowUp {
                pending_alert: &r.alert_event_id,
                reason: &reason,
                rules: &[],
            }),
            &r.codes,
            now,
        );
        custody_alerts.push(CustodyAlert {
            record: r.by,
            alert_type: custody::alert::RESOLVED,
            rules: Vec::new(),
            reason: format!("resolves alert {} about event {}", r.alert_event_id, r.related.event_id),
        });
        alert_events.push(ev);
        custody_rows.push(crate::projection::CustodyRows {
            resolves: Some(r.alert_leaf),
            ..Default::default()
        });
    }
    (alert_events, custody_rows, custody_alerts)
}

/// Each record's cold-chain and custody outcome from the receipts of the
/// alerts written (`written[k]`: whether alert `k` was written now; the
/// cold-chain alerts come first).
fn alert_outcomes(
    n_records: usize,
    written: &[bool],
    alerts: &[(usize, Finding, TraceEvent)],
    custody_alerts: &[CustodyAlert],
    alert_receipts: &[Receipt],
) -> (Vec<Option<ColdChainOutcome>>, Vec<Option<CustodyOutcome>>) {
    let n_cold = alerts.len();
    let mut outcomes: Vec<Option<ColdChainOutcome>> = (0..n_records).map(|_| None).collect();
    let mut custody_out: Vec<Option<CustodyOutcome>> = (0..n_records).map(|_| None).collect();
    let mut alert_receipts = alert_receipts.iter();
    for (k, w) in written.iter().enumerate() {
        let receipt = if *w { alert_receipts.next() } else { None };
        if k < n_cold {
            let (pos, finding, _) = &alerts[k];
            let Some(r) = receipt else { continue };
            METRICS
                .cold_chain_alerts
                .with_label_values(&[finding.alert_type.as_str()])
                .inc();
            let o = outcomes[*pos].get_or_insert_with(ColdChainOutcome::default);
            if finding.alert_type == AlertType::ReceiptRefused {
                o.receipt_status = Some("refused");
                o.refusal_reason = Some(finding.reason.clone());
            }
            o.alerts.push(AlertRef {
                event_id: r.record_id.clone(),
                tx_id: r.tx_id.to_string(),
                alert_type: finding.alert_type,
                reason: finding.reason.clone(),
            });
        } else if let (Some(c), Some(r)) = (custody_alerts.get(k - n_cold), receipt) {
            custody_out[c.record]
                .get_or_insert_with(CustodyOutcome::default)
                .alerts
                .push(CustodyAlertRef {
                    event_id: r.record_id.clone(),
                    tx_id: r.tx_id.to_string(),
                    alert_type: c.alert_type,
                    rules: c.rules.clone(),
                    reason: c.reason.clone(),
                });
        }
    }
    (outcomes, custody_out)
}

/// Answers each repeat `(i, j)` of an event within the batch like its first
/// occurrence `j`: a duplicate of the same receipt, or the same refusal.
fn fill_repeats(results: &mut [Option<RecordResult>], repeats: &[(usize, usize)]) {
    for &(i, j) in repeats {
        let Some(first) = results[j].as_ref() else { continue };
        let r = match &first.error {
            None => RecordResult {
                index: i,
                event_id: first.event_id.clone(),
                status: RecordStatus::Duplicate,
                receipt: first.receipt.clone(),
                audit_path: first.audit_path.clone(),
                error: None,
                cold_chain: None,
                custody: None,
            },
            Some(e) => reject(
                i,
                first.event_id.clone(),
                e.code,
                format!(
                    "the same event is record {j} of this batch, which was refused: {}",
                    e.message
                ),
            ),
        };
        results[i] = Some(r);
    }
}

/// The stored transactions of these record (event) ids, by record id.
pub(crate) async fn txs_by_record(
    state: &AppState,
    ids: &[String],
) -> Result<std::collections::HashMap<String, ledger::StoredTx>, ApiError> {
    Ok(state
        .ledger
        .store()
        .txs_by_records(ids)
        .await?
        .into_iter()
        .map(|st| (st.tx.content.record_id.clone(), st))
        .collect())
}

/// The receiver named in node-written exchange messages.
const NODE_RECEIVER: &str = "vaxgate";

/// The transaction content of a node-written alert event (plain exchange
/// JSON, no personal data), its message and its field commitments (seeded
/// by the payload); signed with the node key by `ledger::sign_batch`.
pub(crate) fn node_alert(ev: TraceEvent) -> (TxContent, ExchangeMessage, Commitment) {
    let msg = ExchangeMessage::new(ev, NODE_RECEIVER);
    let payload = mappings::exchange::to_json(&msg).into_bytes();
    let commitment = mappings::commitment::commit(&msg.payload, &mappings::commitment::plain_seed(&payload));
    let content = TxContent {
        fields_root: Some(Sm3Digest(commitment.root)),
        tx_id: uuid::Uuid::now_v7(),
        record_id: msg.event_id.to_string(),
        kind: TxKind::Data,
        category: msg.payload.category.clone(),
        state_key: state_key(&msg),
        content_type: "json".into(),
        data_hash: secure_gateway::sm3(&payload),
        payload,
        format: ledger::TxFormat::CURRENT,
    };
    (content, msg, commitment)
}

fn doc_event(doc: &serde_json::Value) -> Option<TraceEvent> {
    serde_json::from_value(doc.clone()).ok()
}

/// Shipment records and reading sets that document the delivery `ev`
/// belongs to: by shipment number, else (for a receipt) shipments to the
/// receiver that carried its trace codes. `batch` holds the records of the
/// request being ingested, which are not in the projection yet.
/// The records of a batch that a delivery lookup may use, indexed once per
/// batch (a batch of receipts would otherwise scan the whole batch per
/// receipt): its shipments, and its records by shipment number, in batch order.
struct BatchIndex<'a> {
    shipments: Vec<&'a TraceEvent>,
    by_number: std::collections::HashMap<&'a str, Vec<&'a TraceEvent>>,
}

impl<'a> BatchIndex<'a> {
    fn new(batch: &'a [ExchangeMessage]) -> Self {
        let mut idx = BatchIndex {
            shipments: Vec::new(),
            by_number: Default::default(),
        };
        for e in batch.iter().map(|m| &m.payload) {
            if e.category == "shipment" {
                idx.shipments.push(e);
            }
            if let Some(no) = e.field_str("shipment_no") {
                idx.by_number.entry(no).or_default().push(e);
            }
        }
        idx
    }
}

async fn delivery_records(
    state: &AppState,
    ev: &TraceEvent,
    batch: &BatchIndex<'_>,
) -> Result<(Vec<TraceEvent>, Vec<TraceEvent>), ApiError> {
    let mut shipments: Vec<TraceEvent> = Vec::new();
    let mut readings: Vec<TraceEvent> = Vec::new();
    let mut numbers: Vec<String> = ev.field_str("shipment_no").map(str::to_string).into_iter().collect();
    if numbers.is_empty() && ev.category == "inbound_receipt" {
        let receiver: Vec<&str> = std::iter::once(ev.source.as_str())
            .chain(ev.to.as_ref().map(|p| p.code.as_str()))
            .collect();
        let codes = coldchain::codes_of(ev);
        let to_receiver = |s: &TraceEvent| {
            s.category == "shipment"
                && s.to.as_ref().is_some_and(|p| receiver.contains(&p.code.as_str()))
                && s.occurred_at <= ev.occurred_at
                && coldchain::codes_of(s).iter().any(|c| codes.contains(c))
        };
        let mut found: Vec<TraceEvent> = state
            .projection
            .events_for_codes_in(&codes, "shipment")
            .await?
            .iter()
            .filter_map(|p| doc_event(&p.doc))
            .filter(|s| to_receiver(s))
            // Only the matching records of the batch are copied (a batch of
            // receipts would otherwise copy the whole batch per receipt).
            .chain(batch.shipments.iter().copied().filter(|s| to_receiver(s)).cloned())
            .collect();
        // The latest delivery to this receiver.
        found.sort_by_key(|s| s.occurred_at);
        if let Some(s) = found.pop() {
            numbers.extend(s.field_str("shipment_no").map(str::to_string));
            shipments.push(s);
        }
    }
    for no in &numbers {
        let stored = state.projection.events_for_shipment(no).await?;
        let about = |e: &TraceEvent| e.field_str("shipment_no") == Some(no.as_str()) && e.event_id != ev.event_id;
        let local = batch
            .by_number
            .get(no.as_str())
            .into_iter()
            .flatten()
            .copied()
            .filter(|e| e.event_id != ev.event_id)
            .cloned();
        let from_ledger = stored.iter().filter_map(|p| doc_event(&p.doc)).filter(|e| about(e));
        for e in from_ledger.chain(local) {
            match e.category.as_str() {
                "shipment" if !shipments.iter().any(|s| s.event_id == e.event_id) => shipments.push(e),
                "cold_chain_readings" if !readings.iter().any(|s| s.event_id == e.event_id) => readings.push(e),
                _ => {}
            }
        }
    }
    Ok((shipments, readings))
}

/// Runs the cold-chain rules over the records about to be appended: the
/// (record position, finding, alert event) of every alert to write.
async fn cold_chain_alerts(
    state: &AppState,
    msgs: &[ExchangeMessage],
) -> Result<Vec<(usize, Finding, TraceEvent)>, ApiError> {
    let now = chrono::Utc::now();
    let mut out = Vec::new();
    let index = BatchIndex::new(msgs);
    for (pos, m) in msgs.iter().enumerate() {
        let ev = &m.payload;
        let findings = match ev.category.as_str() {
            "cold_chain_readings" => coldchain::assess_readings(ev),
            "shipment" => coldchain::assess_shipment(ev),
            "inbound_receipt" => {
                let (shipments, readings) = delivery_records(state, ev, &index).await?;
                coldchain::assess_receipt(ev, &shipments, &readings)
                    .map(|reason| Finding {
                        alert_type: AlertType::ReceiptRefused,
                        reason,
                    })
                    .into_iter()
                    .collect()
            }
            _ => continue,
        };
        if findings.is_empty() {
            continue;
        }
        // The affected codes: the record's own, and for a reading set tied
        // to a shipment, the shipment's.
        let mut codes = coldchain::codes_of(ev);
        if ev.category == "cold_chain_readings" && ev.field_str("shipment_no").is_some() {
            let (shipments, _) = delivery_records(state, ev, &index).await?;
            codes.extend(shipments.iter().flat_map(coldchain::codes_of));
        }
        for f in findings {
            let alert = coldchain::alert_event(ev, &f, codes.clone(), now);
            if in_ledger(state, &alert.event_id).await? {
                continue;
            }
            out.push((pos, f, alert));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_index_keeps_shipments_and_records_by_number_in_batch_order() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../mappings/tests/golden/shipment/erp-shipment.json");
        let v: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let mut msgs: Vec<ExchangeMessage> = v
            .iter()
            .map(|m| mappings::exchange::from_json(&m.to_string()).unwrap())
            .collect();
        // A third record about the first shipment that is not a shipment.
        let mut about_first = msgs[0].clone();
        about_first.payload.category = "cold_chain_readings".into();
        about_first.payload.event_id = uuid::Uuid::new_v4();
        about_first.event_id = about_first.payload.event_id;
        msgs.push(about_first.clone());
        let idx = BatchIndex::new(&msgs);
        let ids = |v: &[&TraceEvent]| v.iter().map(|e| e.event_id).collect::<Vec<_>>();
        assert_eq!(ids(&idx.shipments), [msgs[0].event_id, msgs[1].event_id]);
        assert_eq!(
            ids(&idx.by_number["YD20240302001"]),
            [msgs[0].event_id, about_first.event_id]
        );
        assert_eq!(ids(&idx.by_number["YD20240302002"]), [msgs[1].event_id]);
        assert!(!idx.by_number.contains_key("YD20240302003"));
    }
}
