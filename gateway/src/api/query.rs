//! Traceability queries (R6) and the explorer (R6.6), for authenticated
//! entities, filtered by their read scope (R5.6): `GET /v1/trace/{code}`,
//! `GET /v1/batches/{lot}/recall`, `GET /v1/events/{id}`, `GET
//! /v1/blocks/{height}`, `GET /v1/blocks/by-hash/{hash}`, `GET
//! /v1/transactions/{id}`, `GET /v1/transactions/{id}/proof`, `GET /v1/stats`,
//! `GET /v1/checkpoints/latest`. Personal data appears only for entities
//! whose policy grants it, decrypted from the ledger on demand.

use std::collections::{BTreeMap, BTreeSet};

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use ledger::LedgerStore;
use secure_gateway::Sm3Digest;
use serde_json::{Value, json};

use crate::api::params::{RawQuery, param};
use crate::auth::Principal;
use crate::error::{ApiError, Code};
use crate::projection::{ProjectedEvent, open_event, parse_fields_blob};
use crate::registry::Entity;
use crate::server::AppState;
use mappings::commitment::{Seeds, disclose};

/// Most codes one trace expands to through packaging links.
const MAX_TRACE_CODES: usize = 10_000;

fn reader(req: &HttpRequest, state: &AppState) -> Result<Entity, ApiError> {
    let p = req
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| ApiError::new(Code::Unauthenticated, "no authenticated principal"))?;
    let id = p
        .entity_id
        .ok_or_else(|| ApiError::new(Code::Forbidden, "registry administrators do not read traceability data"))?;
    let reg = crate::registry::read(&state.registry)?;
    reg.entity(&id)
        .cloned()
        .ok_or_else(|| ApiError::new(Code::UnknownEntity, format!("entity {id} is not registered")))
}

/// Trace codes of a projected event document (a serialised
/// `mappings::TraceEvent`): its own codes, then every code of its packaging
/// links, in document order.
pub(crate) fn codes_in(doc: &Value) -> Vec<String> {
    let mut out: Vec<String> = doc["traceCodes"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if let Some(aggs) = doc["aggregations"].as_array() {
        for a in aggs {
            if let Some(p) = a["parent"].as_str() {
                out.push(p.to_string());
            }
            if let Some(cs) = a["children"].as_array() {
                out.extend(cs.iter().filter_map(|v| v.as_str().map(str::to_string)));
            }
        }
    }
    out
}

/// May `e` read this event? Its own data always; otherwise its read scope.
fn visible(e: &Entity, ev: &ProjectedEvent) -> bool {
    if ev.signer == e.id || e.is_source(&ev.source) || e.policy.read.all {
        return true;
    }
    let codes = codes_in(&ev.doc);
    codes.iter().any(|c| e.policy.read.allows(Some(c), ev.lot.as_deref()))
        || e.policy.read.allows(None, ev.lot.as_deref())
}

fn party(state: &AppState, id: &str) -> Value {
    let reg = match state.registry.read() {
        Ok(r) => r,
        Err(p) => p.into_inner(),
    };
    match reg.entity(id) {
        Some(e) => json!({ "id": e.id, "alias": e.alias, "name": e.name, "role": e.role }),
        None => json!({ "id": id }),
    }
}

/// The newest signed checkpoint; 503 `unavailable` before the genesis block.
async fn newest_checkpoint(state: &AppState) -> Result<ledger::Checkpoint, ApiError> {
    let head = state.ledger.store().head().await?;
    head.map(|(_, cp)| cp)
        .ok_or_else(|| ApiError::new(Code::Unavailable, "empty ledger"))
}

/// Steps of events with signer, proof paths against the latest checkpoint,
/// cancellations, and personal data when allowed.
async fn steps(state: &AppState, reader: &Entity, events: Vec<ProjectedEvent>) -> Result<Value, ApiError> {
    steps_of(state, reader, events, true).await
}

/// [`steps`], with the personal data its policy grants the reader only
/// when `with_personal`.
async fn steps_of(
    state: &AppState,
    reader: &Entity,
    events: Vec<ProjectedEvent>,
    with_personal: bool,
) -> Result<Value, ApiError> {
    let cp = newest_checkpoint(state).await?;
    let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    // Events referring to these: cancellations and cold-chain alerts.
    let referrers = state.projection.cancellations_of(&ids).await?;
    let mut cancelled_by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut alerts: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for c in &referrers {
        let Some(t) = &c.cancels else { continue };
        if c.category == crate::coldchain::ALERT_CATEGORY || c.category == crate::custody::ALERT_CATEGORY {
            let mut a = json!({
                "event_id": c.event_id,
                "alert_type": c.doc["fields"]["alert_type"],
                "reason": c.doc["fields"]["alert_reason"],
                "tx_id": c.tx_id,
            });
            if let Some(r) = c.doc["fields"].get("rules") {
                a["rules"] = r.clone();
            }
            alerts.entry(t.clone()).or_default().push(a);
        } else {
            cancelled_by.entry(t.clone()).or_default().push(c.event_id.clone());
        }
    }
    let leaves: Vec<u64> = events.iter().map(|e| e.leaf_index).collect();
    let paths = ledger::audit_paths(state.ledger.store(), &leaves, cp.tree_size).await?;
    // The transactions (an event id is its transaction's record id) and
    // what the field commitments need, to make each step checkable.
    let mut txs = crate::api::ingest::txs_by_record(state, &ids).await?;
    let fields = state.projection.fields_of(&leaves).await?;
    // Business elements this reader's policy does not grant: left out of
    // the answer, their digests given instead.
    let hidden: Vec<String> = state
        .dataset
        .elements()
        .filter(|e| e.scope.is_some_and(|s| !reader.policy.grants(s)))
        .map(|e| format!("{}{}", mappings::commitment::FIELDS_PREFIX, e.key))
        .collect();
    let mut out = Vec::with_capacity(events.len());
    for (ev, path) in events.into_iter().zip(paths) {
        let st = txs.remove(&ev.event_id);
        let mut step = json!({
            "event_id": ev.event_id,
            "category": ev.category,
            "occurred_at": ev.doc["occurredAt"],
            "signer": party(state, &ev.signer),
            "source": ev.source,
            "tx_id": ev.tx_id,
            "height": ev.height,
            "leaf_index": ev.leaf_index,
            "event": without(ev.doc.clone(), &hidden),
            "proof": { "leaf_index": ev.leaf_index, "tree_size": cp.tree_size, "audit_path": path,
                       "full_proof": format!("/v1/transactions/{}/proof", ev.tx_id) },
        });
        if let Some(c) = cancelled_by.get(&ev.event_id) {
            step["cancelled_by"] = json!(c);
        }
        if let Some(a) = alerts.get(&ev.event_id) {
            if let Some(r) = a.iter().find(|a| a["alert_type"] == "receipt_refused") {
                step["receipt_status"] = json!("refused");
                step["refusal_reason"] = r["reason"].clone();
            }
            step["alerts"] = json!(a);
        }
        let mut personal: Option<(BTreeMap<String, String>, [u8; 32])> = None;
        if with_personal
            && reader.policy.personal_data
            && let Some(st) = &st
            && let Ok(Some(o)) = open_event(state.node.provider().as_ref(), state.node.handle(), st)
            && !o.msg.payload.pii.is_empty()
        {
            let pii: BTreeMap<String, String> = o
                .msg
                .payload
                .pii
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            step["personal_data"] = json!(pii);
            personal = Some((pii, Seeds::of(&o.seed).personal));
        }
        // What makes the step checkable (docs/api.md, "Checking an
        // answer"): the transaction without its payload, and the salts of
        // the members shown with the digests of those withheld.
        if let Some(st) = &st {
            step["transaction"] = json!(ledger::TxSummary::of(&st.tx));
            if let (Some(blob), Some(doc)) = (fields.get(&ev.leaf_index), ev.doc.as_object()) {
                let (public_seed, personal_digests) = parse_fields_blob(blob).map_err(ApiError::internal)?;
                let hide: Vec<&str> = hidden.iter().map(String::as_str).collect();
                let d = disclose(
                    doc,
                    &public_seed,
                    &hide,
                    personal.as_ref().map(|(v, s)| (v, s)),
                    &personal_digests,
                );
                step["disclosure"] = json!(d);
            }
        }
        out.push(step);
    }
    Ok(json!({ "steps": out, "checkpoint": cp }))
}

/// `doc` without the business elements whose paths (`fields/NAME`) are in
/// `hidden`.
fn without(mut doc: Value, hidden: &[String]) -> Value {
    if let Some(f) = doc.get_mut("fields").and_then(Value::as_object_mut) {
        for p in hidden {
            if let Some(k) = p.strip_prefix(mappings::commitment::FIELDS_PREFIX) {
                f.remove(k);
            }
        }
    }
    doc
}

/// The codes a trace covers: the code asked for, the packages that hold it
/// (`ancestors`), what it holds (`descendants`) and, when asked, the other
/// contents of its packages (`siblings`).
struct Family {
    code: String,
    ancestors: BTreeSet<String>,
    descendants: BTreeSet<String>,
    siblings: BTreeSet<String>,
}

impl Family {
    /// The family of `code` through the packaging links.
    async fn of(state: &AppState, code: String, with_siblings: bool) -> Result<Family, ApiError> {
        let p = &state.projection;
        let ancestors: BTreeSet<String> = p.packaging(&code, true, MAX_TRACE_CODES).await?.into_iter().collect();
        let descendants: BTreeSet<String> = p.packaging(&code, false, MAX_TRACE_CODES).await?.into_iter().collect();
        let mut siblings: BTreeSet<String> = BTreeSet::new();
        if with_siblings {
            for a in &ancestors {
                siblings.extend(p.packaging(a, false, MAX_TRACE_CODES).await?);
            }
            siblings.retain(|c| *c != code && !descendants.contains(c) && !ancestors.contains(c));
        }
        Ok(Family {
            code,
            ancestors,
            descendants,
            siblings,
        })
    }

    /// The code, its ancestors and its descendants (siblings aside).
    fn codes(&self) -> Vec<String> {
        std::iter::once(self.code.clone())
            .chain(self.ancestors.iter().cloned())
            .chain(self.descendants.iter().cloned())
            .collect()
    }
}

/// How a step relates to the code asked for: an event naming it among its
/// own codes is `self`; one naming a package that holds it (a carton's
/// shipment) `parent`; one naming what it holds `child`; a lot-level event
/// (production dates, release, recall) `lot`; with `?siblings=true`, one
/// about another dose of the same package `sibling`.
fn relation(doc: &Value, f: &Family) -> &'static str {
    let (code, ancestors, descendants, siblings) = (f.code.as_str(), &f.ancestors, &f.descendants, &f.siblings);
    let own: Vec<&str> = doc["traceCodes"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let linked = codes_in(doc);
    let names_one_of = |set: &BTreeSet<String>| linked.iter().any(|c| set.contains(c));
    if own.contains(&code) {
        "self"
    } else if own.iter().any(|c| ancestors.contains(*c)) || linked.iter().any(|c| c == code) {
        "parent"
    } else if names_one_of(descendants) {
        "child"
    } else if names_one_of(ancestors) {
        "parent"
    } else if names_one_of(siblings) {
        "sibling"
    } else {
        "lot"
    }
}

/// `GET /v1/trace/{code}[?siblings=true]`: the custody chain of one code,
/// sorted by time, each step with its `relation` to the code: the code's
/// own events, its packages' custody and cold chain, what it holds (for a
/// package), its lot's production, release and recall; other doses of the
/// same package only when asked (`siblings=true`). A reader sees its own
/// records, what its read scope grants, and the upstream history of codes
/// it held (every step dated up to its last custody of the code).
pub(crate) async fn trace(
    req: HttpRequest,
    state: web::Data<AppState>,
    code: web::Path<String>,
    query: RawQuery,
) -> Result<HttpResponse, ApiError> {
    let reader = reader(&req, &state)?;
    if !mappings::checks::is_trace_code(&code) {
        return Err(ApiError::new(
            Code::InvalidTraceCode,
            format!("{code} is not a 20-digit trace code (NMPAB/T 1002)"),
        ));
    }
    let with_siblings: bool = param(&query, "siblings")?;
    let family = Family::of(&state, code.into_inner(), with_siblings).await?;
    let codes = family.codes();
    let mut all = family_events(&state, &family, &codes).await?;
    let reading_of = add_cold_chain(&state, &mut all).await?;
    let relations = relations(&all, &reading_of, &family);
    let mut all: Vec<ProjectedEvent> = all.into_values().collect();
    all.sort_by_key(|e| (e.occurred_ms, e.leaf_index));
    let total = all.len();
    let events = readable(&state, &reader, all, &codes).await?;
    let code = family.code;
    if events.is_empty() {
        let msg = if total == 0 {
            format!("no events for trace code {code}")
        } else {
            format!("trace code {code} is outside {}'s read scope", reader.alias)
        };
        return Err(ApiError::new(
            if total == 0 { Code::NotFound } else { Code::Forbidden },
            msg,
        ));
    }
    let hidden = total - events.len();
    let leaves: Vec<u64> = events.iter().map(|e| e.leaf_index).collect();
    let mut body = steps(&state, &reader, events).await?;
    if let Some(steps) = body["steps"].as_array_mut() {
        for (s, leaf) in steps.iter_mut().zip(leaves) {
            s["relation"] = json!(relations.get(&leaf).copied().unwrap_or("self"));
        }
    }
    body["code"] = json!(code);
    body["codes"] = json!(codes);
    body["hidden_steps"] = json!(hidden);
    Ok(HttpResponse::Ok().json(body))
}

/// The events of a trace by leaf: those naming `codes` (the family's, see
/// [`Family::codes`]) or a sibling, and the lot-level events (production
/// dates, release, recall) of their lots.
async fn family_events(
    state: &AppState,
    family: &Family,
    codes: &[String],
) -> Result<BTreeMap<u64, ProjectedEvent>, ApiError> {
    let mut all: BTreeMap<u64, ProjectedEvent> = BTreeMap::new();
    for e in state.projection.events_for_codes(codes).await? {
        all.insert(e.leaf_index, e);
    }
    if !family.siblings.is_empty() {
        let sib: Vec<String> = family.siblings.iter().cloned().collect();
        for e in state.projection.events_for_codes(&sib).await? {
            all.entry(e.leaf_index).or_insert(e);
        }
    }
    // The lot: its production dates, release and recall.
    let lots: BTreeSet<String> = all
        .values()
        .filter_map(|e| e.lot.as_deref())
        .map(|l| mappings::custody::lot_key(&family.code[..7], l))
        .collect();
    for lot in &lots {
        let leaves = state.projection.lot_event_leaves(lot).await?;
        let missing: Vec<u64> = leaves.into_iter().filter(|l| !all.contains_key(l)).collect();
        for e in state.projection.events_at(&missing).await? {
            all.insert(e.leaf_index, e);
        }
    }
    Ok(all)
}

/// Adds to `all` the cold chain of the shipments among them: the reading
/// sets naming their shipment number, and those of their logger over the
/// trip. Returns the shipment number of each reading set added, by leaf.
async fn add_cold_chain(
    state: &AppState,
    all: &mut BTreeMap<u64, ProjectedEvent>,
) -> Result<BTreeMap<u64, String>, ApiError> {
    // (shipment number, its logger and trip period)
    type Trip = (String, Option<(String, i64, i64)>);
    let trips: Vec<Trip> = all
        .values()
        .filter(|e| e.category == "shipment")
        .filter_map(|e| {
            let f = &e.doc["fields"];
            let no = f["shipment_no"].as_str()?.to_string();
            let time = |k: &str| {
                f[k].as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.timestamp_millis())
            };
            let logger = e.doc["device"]
                .as_str()
                .zip(time("departure_time").zip(time("arrival_time")))
                .map(|(d, (a, b))| (d.to_string(), a, b));
            Some((no, logger))
        })
        .collect();
    let mut reading_of: BTreeMap<u64, String> = BTreeMap::new();
    for (no, logger) in &trips {
        let mut sets: Vec<ProjectedEvent> = state
            .projection
            .events_for_shipment(no)
            .await?
            .into_iter()
            .filter(|e| e.category == "cold_chain_readings")
            .collect();
        if let Some((device, from, to)) = logger {
            let leaves = state.projection.readings_of(device, *from, *to).await?;
            let missing: Vec<u64> = leaves
                .into_iter()
                .filter(|l| !all.contains_key(l) && !sets.iter().any(|e| e.leaf_index == *l))
                .collect();
            sets.extend(state.projection.events_at(&missing).await?);
        }
        for e in sets {
            if let std::collections::btree_map::Entry::Vacant(v) = all.entry(e.leaf_index) {
                reading_of.insert(e.leaf_index, no.clone());
                v.insert(e);
            }
        }
    }
    Ok(reading_of)
}

/// Each event's [`relation`] to the family, by leaf; a reading set added
/// for a shipment ([`add_cold_chain`]) takes its shipment's.
fn relations(
    all: &BTreeMap<u64, ProjectedEvent>,
    reading_of: &BTreeMap<u64, String>,
    family: &Family,
) -> BTreeMap<u64, &'static str> {
    let shipment_relation: BTreeMap<String, &'static str> = all
        .values()
        .filter(|e| e.category == "shipment")
        .filter_map(|e| {
            let no = e.doc["fields"]["shipment_no"].as_str()?.to_string();
            Some((no, relation(&e.doc, family)))
        })
        .collect();
    all.values()
        .map(|e| {
            let r = match reading_of.get(&e.leaf_index) {
                Some(no) => shipment_relation.get(no).copied().unwrap_or("parent"),
                None => relation(&e.doc, family),
            };
            (e.leaf_index, r)
        })
        .collect()
}

/// The events of `all` the reader may see: what its scope grants, and
/// (a holder reads the upstream history of what it held) everything up to
/// its last custody fact about `codes`.
async fn readable(
    state: &AppState,
    reader: &Entity,
    all: Vec<ProjectedEvent>,
    codes: &[String],
) -> Result<Vec<ProjectedEvent>, ApiError> {
    let held_until: Option<i64> = state
        .projection
        .custody_facts(codes)
        .await?
        .into_iter()
        .filter(|f| f.actor == reader.id)
        .map(|f| f.at_ms)
        .max();
    Ok(all
        .into_iter()
        .filter(|e| visible(reader, e) || held_until.is_some_and(|t| e.occurred_ms <= t))
        .collect())
}

/// `GET /v1/batches/{lot}/recall[?evidence=true]`: where every code of a
/// lot is now, from custody state (docs/custody.md): unit doses and
/// packages apart; per holder the units still in its stock (a delivery
/// whose receipt is not recorded counts for its receiver, as awaiting
/// receipt); units on their way; units refused at receipt; units
/// administered per vaccinating unit (whose recipients are to be followed
/// up); destroyed units; units whose state is unknown. With `evidence`,
/// the answer also carries every event behind the counts as a checkable
/// step, and the party directory the counts used, so that `vaxgate
/// verify-proof` recounts them (docs/api.md, "Checking a recall").
pub(crate) async fn recall(
    req: HttpRequest,
    state: web::Data<AppState>,
    lot: web::Path<String>,
    query: RawQuery,
) -> Result<HttpResponse, ApiError> {
    let reader = reader(&req, &state)?;
    let with_evidence: bool = param(&query, "evidence")?;
    let events: Vec<ProjectedEvent> = state
        .projection
        .events_for_lot(&lot)
        .await?
        .into_iter()
        .filter(|e| visible(&reader, e))
        .collect();
    if events.is_empty() {
        return Err(ApiError::new(
            Code::NotFound,
            format!("no visible events for lot {lot}"),
        ));
    }
    // The lot's codes: those its (visible) records name, alerts aside;
    // packages are the parents of packaging links.
    let mut codes: BTreeSet<String> = BTreeSet::new();
    let mut packages: BTreeSet<String> = BTreeSet::new();
    for ev in &events {
        if ev.category == crate::coldchain::ALERT_CATEGORY || ev.category == crate::custody::ALERT_CATEGORY {
            continue;
        }
        codes.extend(codes_in(&ev.doc));
        if let Some(aggs) = ev.doc["aggregations"].as_array() {
            packages.extend(aggs.iter().filter_map(|a| a["parent"].as_str().map(str::to_string)));
        }
    }
    let list: Vec<String> = codes.iter().cloned().collect();
    let book = state.projection.custody_book(&list).await?;
    let contents = contents_of(&state, &list).await?;
    let tally = mappings::custody::RecallTally::of(&codes, &packages, &contents, &book);
    let mut answer = recall_json(&state, &lot, &tally);
    answer["events"] = json!(events.len());
    if with_evidence {
        let (steps, parties) = evidence_of(&state, &reader, false, &format!("lot {lot}"), &list).await?;
        answer["steps"] = steps["steps"].clone();
        answer["checkpoint"] = steps["checkpoint"].clone();
        answer["parties"] = json!(parties);
    }
    Ok(HttpResponse::Ok().json(answer))
}

/// Every event behind a recall or stock answer about `codes`, as
/// checkable steps without personal data, and the directory (party code →
/// entity id) its counts used: the events naming the codes or their
/// packages, and the cancellations and alerts referring to them. The
/// reader must be able to see each of them (`all_readable`: it holds the
/// codes now), else 403: a recount from part of them would not be the
/// answer's. `what` names the answer in that refusal.
async fn evidence_of(
    state: &AppState,
    reader: &Entity,
    all_readable: bool,
    what: &str,
    codes: &[String],
) -> Result<(Value, BTreeMap<String, String>), ApiError> {
    let mut all: Vec<String> = codes.to_vec();
    all.extend(state.projection.parents_of(codes).await?.into_iter().map(|(p, _)| p));
    all.sort_unstable();
    all.dedup();
    let mut by_leaf: BTreeMap<u64, ProjectedEvent> = BTreeMap::new();
    for e in state.projection.events_for_codes(&all).await? {
        by_leaf.insert(e.leaf_index, e);
    }
    let ids: Vec<String> = by_leaf.values().map(|e| e.event_id.clone()).collect();
    for e in state.projection.cancellations_of(&ids).await? {
        by_leaf.insert(e.leaf_index, e);
    }
    let unseen = if all_readable {
        0
    } else {
        by_leaf.values().filter(|e| !visible(reader, e)).count()
    };
    if unseen > 0 {
        return Err(ApiError::new(
            Code::Forbidden,
            format!(
                "the evidence of {what} holds {unseen} event(s) outside {}'s read scope; \
                 a reader whose scope covers every holder concerned (a regulator) can have it",
                reader.alias
            ),
        ));
    }
    let parties: BTreeMap<String, String> = {
        let reg = crate::registry::read(&state.registry)?;
        by_leaf
            .values()
            .flat_map(|e| {
                [
                    e.doc["source"].as_str(),
                    e.doc["from"]["code"].as_str(),
                    e.doc["to"]["code"].as_str(),
                ]
            })
            .flatten()
            .map(|c| {
                let id = reg.entity_of_code(c).map_or_else(|| c.to_string(), |e| e.id.clone());
                (c.to_string(), id)
            })
            .collect()
    };
    let events: Vec<ProjectedEvent> = by_leaf.into_values().collect();
    Ok((steps_of(state, reader, events, false).await?, parties))
}

/// Package → its contents among `codes` (the packaging links whose child is
/// one of them).
async fn contents_of(
    state: &AppState,
    codes: &[String],
) -> Result<std::collections::HashMap<String, Vec<String>>, ApiError> {
    let mut out: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (p, c) in state.projection.parents_of(codes).await? {
        out.entry(p).or_default().push(c);
    }
    Ok(out)
}

/// Counts by key, as `[{key_name: party, "units": n}]`, largest first.
fn tally(state: &AppState, key_name: &str, counts: &BTreeMap<String, usize>) -> Value {
    let mut v: Vec<(&String, &usize)> = counts.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    json!(
        v.into_iter()
            .map(|(k, n)| json!({ key_name: party(state, k), "units": n }))
            .collect::<Vec<_>>()
    )
}

/// The recall answer of lot `lot` from its tally.
fn recall_json(state: &AppState, lot: &str, t: &mappings::custody::RecallTally) -> Value {
    let mut held_list: Vec<(&String, &(usize, usize))> = t.held.iter().collect();
    held_list.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(b.0)));
    let held_json: Vec<Value> = held_list
        .iter()
        .map(|(h, (n, awaiting))| json!({ "holder": party(state, h), "units": n, "awaiting_receipt": awaiting }))
        .collect();
    let mut admin_list: Vec<(&String, &(usize, usize))> = t.administered.iter().collect();
    admin_list.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(b.0)));
    let admin_json: Vec<Value> = admin_list
        .iter()
        .map(|(u, (n, d))| json!({ "vaccinating_unit": party(state, u), "units": n, "doses": d }))
        .collect();
    let transit_json: Vec<Value> = t
        .in_transit
        .iter()
        .map(|(from, n)| json!({ "from": party(state, from), "units": n }))
        .collect();
    let in_stock_by_holder: BTreeMap<&str, usize> = t.held.iter().map(|(h, n)| (h.as_str(), n.0)).collect();
    let per_code: Vec<Value> = t
        .codes
        .iter()
        .map(|(code, c)| {
            json!({
                "code": code,
                "kind": if c.package { "package" } else { "unit" },
                "state": c.state,
                "holder": c.holder,
                "last_event": c.last_event,
            })
        })
        .collect();
    json!({
        "lot": lot,
        "units": t.units,
        "packages": t.packages,
        "package_states": t.package_states,
        "held_by": held_json,
        "in_transit": transit_json,
        "refused_at_receipt": tally(state, "holder", &t.refused),
        "administered_by": admin_json,
        "administered_doses": t.administered_doses,
        "destroyed": tally(state, "by", &t.destroyed),
        "unknown_units": t.unknown,
        "in_stock_by_holder": in_stock_by_holder,
        "code_count": t.codes.len(),
        "codes": per_code,
    })
}

/// `GET /v1/holders/{id}/stock[?codes=true][&evidence=true]`: what an
/// entity holds now, from custody state (docs/custody.md), by product and
/// lot: unit doses in its stock (of which deliveries awaiting its receipt),
/// and units refused at its receipt (with it, not in its stock); packages
/// (cartons) counted apart. Read by the entity itself and by readers whose
/// scope is everything (regulators). `codes=true` lists the trace codes
/// too; `evidence=true` lists them and adds every event behind them as a
/// checkable step, and the party directory, so that `vaxgate verify-proof`
/// recounts the stock.
pub(crate) async fn stock(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: RawQuery,
) -> Result<HttpResponse, ApiError> {
    let reader = reader(&req, &state)?;
    let with_evidence: bool = param(&query, "evidence")?;
    let with_codes: bool = with_evidence || param(&query, "codes")?;
    let holder = {
        let reg = crate::registry::read(&state.registry)?;
        reg.entity(&id)
            .or_else(|| reg.entity_of_code(&id))
            .map(|e| e.id.clone())
            .ok_or_else(|| ApiError::new(Code::NotFound, format!("no registered entity {id}")))?
    };
    if holder != reader.id && !reader.policy.read.all {
        return Err(ApiError::new(
            Code::Forbidden,
            format!(
                "the stock of {holder} is read by itself and by regulators, not by {}",
                reader.alias
            ),
        ));
    }
    let candidates = state.projection.codes_left_with(&holder).await?;
    let packages: BTreeSet<String> = state.projection.parents_among(&candidates).await?.into_iter().collect();
    let book = state.projection.custody_book(&candidates).await?;
    let contents = contents_of(&state, &candidates).await?;
    let t = mappings::custody::StockTally::of(&holder, &candidates, &packages, &contents, &book);
    let rows: Vec<Value> = t
        .lots
        .iter()
        .map(|(lot, l)| {
            let (product, number) = lot.split_once('/').unwrap_or(("", lot.as_str()));
            let mut row = json!({ "product": product, "lot": number, "units": l.units,
                                  "awaiting_receipt": l.awaiting, "refused_at_receipt": l.refused });
            if with_codes {
                row["codes"] = json!(l.codes);
            }
            row
        })
        .collect();
    let units: usize = t.lots.values().map(|l| l.units).sum();
    let mut answer = json!({
        "holder": party(&state, &holder),
        "units": units,
        "packages": t.packages.len(),
        "emptied_packages": t.emptied_packages.len(),
        "lots": rows,
    });
    if with_codes {
        answer["package_codes"] = json!(t.packages);
        answer["emptied_package_codes"] = json!(t.emptied_packages);
    }
    if with_evidence {
        let codes = t.codes();
        // The holder has every one of these codes now, so it may read
        // their whole history (as in a trace, docs/api.md).
        let own = holder == reader.id;
        let (steps, parties) = evidence_of(&state, &reader, own, &format!("the stock of {holder}"), &codes).await?;
        answer["steps"] = steps["steps"].clone();
        answer["checkpoint"] = steps["checkpoint"].clone();
        answer["parties"] = json!(parties);
    }
    Ok(HttpResponse::Ok().json(answer))
}

pub(crate) async fn event(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let reader = reader(&req, &state)?;
    let ev = state
        .projection
        .event(&id)
        .await?
        .ok_or_else(|| ApiError::new(Code::NotFound, format!("event {id}")))?;
    if !visible(&reader, &ev) {
        return Err(ApiError::new(
            Code::Forbidden,
            format!("event {id} is outside {}'s read scope", reader.alias),
        ));
    }
    let mut body = steps(&state, &reader, vec![ev]).await?;
    let step = body["steps"][0].take();
    body["event"] = step;
    if let Some(o) = body.as_object_mut() {
        o.remove("steps");
    }
    Ok(HttpResponse::Ok().json(body))
}

pub(crate) async fn block(state: web::Data<AppState>, height: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    let b = state
        .ledger
        .store()
        .block(*height)
        .await?
        .ok_or_else(|| ApiError::new(Code::NotFound, format!("block {height}")))?;
    block_json(&state, b).await
}

pub(crate) async fn block_by_hash(
    state: web::Data<AppState>,
    hash: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let h =
        Sm3Digest::from_hex(&hash).map_err(|_| ApiError::new(Code::NotFound, format!("{hash} is not an SM3 hash")))?;
    let b = state
        .ledger
        .store()
        .block_by_hash(&h)
        .await?
        .ok_or_else(|| ApiError::new(Code::NotFound, format!("block {hash}")))?;
    block_json(&state, b).await
}

async fn block_json(state: &AppState, b: ledger::BlockHeader) -> Result<HttpResponse, ApiError> {
    let txs = state
        .ledger
        .store()
        .txs(b.first_leaf, b.first_leaf + b.tx_count.min(1000))
        .await?;
    let list: Vec<Value> = txs
        .iter()
        .map(|st| {
            json!({ "tx_id": st.tx.content.tx_id, "kind": st.tx.content.kind, "category": st.tx.content.category,
                    "signer": st.tx.auth.signer, "data_hash": st.tx.content.data_hash, "leaf_index": st.leaf_index })
        })
        .collect();
    let cp = state.ledger.store().checkpoint(b.height).await?;
    Ok(HttpResponse::Ok().json(json!({ "block": b, "transactions": list, "checkpoint": cp })))
}

pub(crate) async fn transaction(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let st = state
        .ledger
        .store()
        .tx(&id)
        .await?
        .ok_or_else(|| ApiError::new(Code::NotFound, format!("transaction {id}")))?;
    Ok(HttpResponse::Ok().json(json!({
        "tx_id": st.tx.content.tx_id, "record_id": st.tx.content.record_id, "kind": st.tx.content.kind,
        "category": st.tx.content.category, "content_type": st.tx.content.content_type,
        "data_hash": st.tx.content.data_hash, "height": st.height, "leaf_index": st.leaf_index,
        "signer": party(&state, &st.tx.auth.signer), "batch_id": st.tx.auth.batch.batch_id,
        "payload_bytes": st.tx.content.payload.len(),
    })))
}

pub(crate) async fn transaction_proof(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.ledger.prove(&id).await?))
}

pub(crate) async fn stats(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let s = state.ledger.store().stats().await?;
    let reg = crate::registry::read(&state.registry)?;
    let roles: BTreeSet<String> = reg.entities().map(|e| format!("{:?}", e.role).to_lowercase()).collect();
    Ok(HttpResponse::Ok().json(json!({
        "height": s.height, "transactions": s.transactions, "size_bytes": s.size_bytes,
        "entities": reg.entities().count(), "roles": roles, "node_key_id": state.ledger.node_key().key_id(),
    })))
}

/// Query of `GET /v1/public/consistency`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsistencyQuery {
    first: u64,
    second: u64,
}

/// `GET /v1/public/consistency?first=N&second=M`: the RFC 9162 consistency
/// proof between two tree sizes, so that whoever kept a checkpoint (an
/// agent, a partner) can check that a later one extends it.
pub(crate) async fn consistency(
    state: web::Data<AppState>,
    q: web::Query<ConsistencyQuery>,
) -> Result<HttpResponse, ApiError> {
    let cp = newest_checkpoint(&state).await?;
    if q.first == 0 || q.first > q.second || q.second > cp.tree_size {
        return Err(ApiError::new(
            Code::NotFound,
            format!(
                "no consistency proof from size {} to {}: sizes must satisfy 0 < first <= second <= {} (the tree size)",
                q.first, q.second, cp.tree_size
            ),
        ));
    }
    let p = ledger::prove_consistency(state.ledger.store(), q.first, q.second).await?;
    Ok(HttpResponse::Ok().json(p))
}

/// `GET /v1/checkpoints/latest` and `GET /v1/public/checkpoints/latest`:
/// the newest signed tree head, which anyone may use to check proofs.
pub(crate) async fn latest_checkpoint(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let cp = newest_checkpoint(&state).await?;
    Ok(HttpResponse::Ok().json(cp))
}
