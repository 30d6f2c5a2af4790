//! Checking a query answer with only the ledger node's public key
//! (`vaxgate verify-proof ANSWER.json`): every step's content against the
//! field commitments of its transaction, and that transaction against the
//! signed checkpoint the answer carries. docs/api.md ("Checking an answer")
//! describes the same steps for a partner who writes its own checker.

use std::collections::{BTreeMap, BTreeSet};

use ledger::{Checkpoint, LeafInput, TxFormat, TxSummary};
use mappings::TraceEvent;
use mappings::commitment::{self, Disclosure};
use mappings::custody::{CodeState, LotStock, RecallTally, StockTally};
use secure_gateway::{Sm2VerifyingKey, Sm3Digest};
use serde::Deserialize;
use serde_json::Value;

/// Why an answer does not check out.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The document is not a trace or event answer.
    #[error("not a query answer: {0}")]
    NotAnAnswer(String),
    /// The checkpoint is malformed or not signed by the node key.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A recall answer's counts are not what its steps give.
    #[error("recall of lot {lot}: {reason}")]
    Recall {
        /// The lot.
        lot: String,
        /// The first count (or code) that differs, or why no recount was possible.
        reason: String,
    },
    /// A stock answer's counts or codes are not what its steps give.
    #[error("stock of {holder}: {reason}")]
    Stock {
        /// The holder's entity id.
        holder: String,
        /// The first lot or package that differs, or why no recount was possible.
        reason: String,
    },
    /// One step does not check out.
    #[error("step {index} (event {event_id}): {reason}")]
    Step {
        /// Position in `steps` (0 for an event answer).
        index: usize,
        /// The step's event id, as the answer gives it.
        event_id: String,
        /// What is wrong.
        reason: String,
    },
}

/// What was checked of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepChecked {
    /// The event id.
    pub event_id: String,
    /// Its dataset category.
    pub category: String,
    /// Its position in the log.
    pub leaf_index: u64,
    /// Members shown.
    pub shown: usize,
    /// Members withheld (digests only).
    pub withheld: usize,
}

/// What a checked answer holds.
#[derive(Debug, Clone)]
pub struct AnswerChecked {
    /// The checkpoint every step was checked against.
    pub checkpoint: Checkpoint,
    /// The steps, in answer order.
    pub steps: Vec<StepChecked>,
    /// For a recall answer with evidence: its counts, recounted from the
    /// steps and found equal.
    pub recall: Option<RecallTally>,
    /// For a stock answer with evidence: the same.
    pub stock: Option<StockTally>,
    /// Annotations (`cancelled_by`, `alerts`, `receipt_status`) checked
    /// against the steps they name, and those naming a step the answer
    /// does not hold (not checked).
    pub annotations: (usize, usize),
}

#[derive(Deserialize)]
struct StepProof {
    leaf_index: u64,
    tree_size: u64,
    audit_path: Vec<Sm3Digest>,
}

/// Whether `v` looks like a query answer (rather than an inclusion proof).
#[must_use]
pub fn is_answer(v: &Value) -> bool {
    v.get("steps").is_some() || v.get("event").is_some_and(|e| e.get("transaction").is_some()) || is_count_answer(v)
}

/// A recall (`lot`, `held_by`) or stock (`holder`, `lots`) answer.
fn is_count_answer(v: &Value) -> bool {
    (v.get("lot").is_some() && v.get("held_by").is_some()) || (v.get("holder").is_some() && v.get("lots").is_some())
}

/// Checks a `GET /v1/trace/{code}`, `GET /v1/events/{id}` or `GET
/// /v1/batches/{lot}/recall?evidence=true` answer (a recall's counts are
/// recounted from its steps).
pub fn verify_answer(answer: &Value, node_key: &Sm2VerifyingKey) -> Result<AnswerChecked, AnswerError> {
    if is_count_answer(answer) && answer.get("steps").is_none() {
        return Err(AnswerError::NotAnAnswer(
            "a recall or stock answer without its evidence: its counts can be checked only when asked for \
             with `evidence=true`"
                .into(),
        ));
    }
    let cp: Checkpoint = serde_json::from_value(answer.get("checkpoint").cloned().unwrap_or(Value::Null))
        .map_err(|e| AnswerError::NotAnAnswer(format!("no readable checkpoint: {e}")))?;
    cp.verify(node_key).map_err(AnswerError::Checkpoint)?;
    let steps: Vec<&Value> = match (answer.get("steps"), answer.get("event")) {
        (Some(Value::Array(s)), _) => s.iter().collect(),
        (None, Some(e @ Value::Object(_))) => vec![e],
        _ => {
            return Err(AnswerError::NotAnAnswer(
                "neither a `steps` array (trace) nor an `event` object (event)".into(),
            ));
        }
    };
    let mut out = Vec::with_capacity(steps.len());
    for (index, step) in steps.iter().copied().enumerate() {
        let event_id = step["event_id"].as_str().unwrap_or("?").to_string();
        let checked = check_step(step, &cp).map_err(|reason| AnswerError::Step {
            index,
            event_id: event_id.clone(),
            reason,
        })?;
        out.push(checked);
    }
    let annotations = check_annotations(&steps)?;
    let recall = match answer.get("lot").and_then(Value::as_str) {
        Some(lot) if answer.get("held_by").is_some() => {
            Some(check_recall(answer).map_err(|reason| AnswerError::Recall {
                lot: lot.to_string(),
                reason,
            })?)
        }
        _ => None,
    };
    let stock = match answer["holder"]["id"].as_str() {
        Some(holder) if answer.get("lots").is_some() => {
            Some(check_stock(answer, holder).map_err(|reason| AnswerError::Stock {
                holder: holder.to_string(),
                reason,
            })?)
        }
        _ => None,
    };
    Ok(AnswerChecked {
        checkpoint: cp,
        steps: out,
        recall,
        stock,
        annotations,
    })
}

/// Checks what each step says of other steps against those steps, when
/// the answer holds them: each event its `cancelled_by` names cancels it,
/// each of its `alerts` is an alert step about it with that type, reason,
/// transaction and rules, `receipt_status: refused` comes with a
/// `receipt_refused` alert (and its reason); and no cancellation or alert
/// step about a step is missing from that step's annotations. Returns
/// (annotations checked, annotations naming a step not in the answer).
fn check_annotations(steps: &[&Value]) -> Result<(usize, usize), AnswerError> {
    let by_id: BTreeMap<&str, (usize, &Value)> = steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s["event_id"].as_str().map(|id| (id, (i, *s))))
        .collect();
    let is_alert = |s: &Value| {
        s["category"] == mappings::custody::COLD_CHAIN_ALERT || s["category"] == crate::custody::ALERT_CATEGORY
    };
    // The cancellation and alert steps about each event: (step's event id,
    // whether it is a cancellation).
    let mut about: BTreeMap<&str, Vec<(&str, bool)>> = BTreeMap::new();
    for other in steps {
        let f = &other["event"]["fields"];
        let oid = other["event_id"].as_str().unwrap_or("?");
        if other["category"] == "cancellation"
            && let Some(t) = f["cancels_event_id"].as_str()
        {
            about.entry(t).or_default().push((oid, true));
        } else if is_alert(other)
            && let Some(t) = f["related_event_id"].as_str()
        {
            about.entry(t).or_default().push((oid, false));
        }
    }
    let (mut checked, mut unchecked) = (0, 0);
    for (index, step) in steps.iter().enumerate() {
        let id = step["event_id"].as_str().unwrap_or("?");
        let fail = |reason: String| AnswerError::Step {
            index,
            event_id: id.to_string(),
            reason,
        };
        let names = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().or_else(|| x["event_id"].as_str()).map(str::to_string))
                .collect()
        };
        let cancelled_by = names(&step["cancelled_by"]);
        for c in &cancelled_by {
            match by_id.get(c.as_str()) {
                None => unchecked += 1,
                Some((_, cs))
                    if cs["category"] == "cancellation" && cs["event"]["fields"]["cancels_event_id"] == *id =>
                {
                    checked += 1;
                }
                Some(_) => {
                    return Err(fail(format!(
                        "its `cancelled_by` names event {c}, which does not cancel it"
                    )));
                }
            }
        }
        let alerts: Vec<&Value> = step["alerts"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let mut refusal: Option<&Value> = None;
        for a in &alerts {
            let aid = a["event_id"].as_str().unwrap_or("?");
            if a["alert_type"] == mappings::custody::RECEIPT_REFUSED {
                refusal = Some(a);
            }
            let Some((_, al)) = by_id.get(aid) else {
                unchecked += 1;
                continue;
            };
            let f = &al["event"]["fields"];
            let same = is_alert(al)
                && f["related_event_id"] == *id
                && a["alert_type"] == f["alert_type"]
                && a["reason"] == f["alert_reason"]
                && a["tx_id"] == al["tx_id"]
                && a.get("rules").unwrap_or(&Value::Null) == f.get("rules").unwrap_or(&Value::Null);
            if !same {
                return Err(fail(format!(
                    "its alert {aid} is not what that step says (an alert about this event, of that type, reason, transaction and rules)"
                )));
            }
            checked += 1;
        }
        match (step.get("receipt_status"), refusal) {
            (None, None) => {}
            (Some(s), Some(a)) if s == "refused" && step["refusal_reason"] == a["reason"] => {}
            _ => {
                return Err(fail(
                    "its `receipt_status` and `refusal_reason` are not its `receipt_refused` alert's".into(),
                ));
            }
        }
        // Steps about this one that its annotations leave out.
        for &(oid, cancellation) in about.get(id).into_iter().flatten() {
            let left_out = if cancellation {
                !cancelled_by.iter().any(|c| c == oid)
            } else {
                !alerts.iter().any(|a| a["event_id"] == oid)
            };
            if left_out {
                return Err(fail(format!(
                    "step {oid} of the answer is about it, and its annotations leave that out"
                )));
            }
        }
    }
    Ok((checked, unchecked))
}

/// Recounts a recall answer from its steps (each already checked): the
/// custody book their events state ([`mappings::custody::book_of_events`],
/// party codes through the answer's `parties`), the lot's codes from the
/// events of the lot, and every count from those.
fn check_recall(answer: &Value) -> Result<RecallTally, String> {
    let lot = answer["lot"].as_str().unwrap_or_default();
    let (events, book) = evidence_book(answer)?;
    let mut codes: BTreeSet<String> = BTreeSet::new();
    let mut packages: BTreeSet<String> = BTreeSet::new();
    for (_, ev) in &events {
        let alert = ev.category == mappings::custody::COLD_CHAIN_ALERT || ev.category == crate::custody::ALERT_CATEGORY;
        if alert || ev.field_str("lot_number") != Some(lot) {
            continue;
        }
        codes.extend(mappings::custody::codes_of(ev));
        packages.extend(ev.aggregations.iter().map(|a| a.parent.clone()));
    }
    let contents = contents_among(&events, &codes);
    let recounted = RecallTally::of(&codes, &packages, &contents, &book);
    let said = tally_of_answer(answer)?;
    match said.first_difference(&recounted) {
        None => Ok(recounted),
        Some(d) => Err(d),
    }
}

/// The events of an answer's (checked) steps with their leaves, and the
/// custody book they state, party codes read through its `parties`.
fn evidence_book(answer: &Value) -> Result<(Vec<(u64, TraceEvent)>, mappings::custody::Book), String> {
    let parties: BTreeMap<String, String> = serde_json::from_value(answer["parties"].clone())
        .map_err(|e| format!("no readable `parties` (the party directory the counts used): {e}"))?;
    let mut events: Vec<(u64, TraceEvent)> = Vec::new();
    for (i, step) in answer["steps"].as_array().into_iter().flatten().enumerate() {
        let ev: TraceEvent = serde_json::from_value(step["event"].clone())
            .map_err(|e| format!("step {i}: its event is not a dataset event: {e}"))?;
        let leaf = step["leaf_index"].as_u64().ok_or(format!("step {i}: no leaf_index"))?;
        events.push((leaf, ev));
    }
    let party = |code: &str| parties.get(code).cloned().unwrap_or_else(|| code.to_string());
    let book = mappings::custody::book_of_events(&events, &party);
    Ok((events, book))
}

/// Recounts a stock answer from its steps: every code it lists (units by
/// lot, and packages) must be in `holder`'s stock by the book the events
/// state, in the lot and with the counts the answer gives. A code left out
/// of the answer is not caught (docs/api.md).
fn check_stock(answer: &Value, holder: &str) -> Result<StockTally, String> {
    let (events, book) = evidence_book(answer)?;
    let mut said = StockTally::default();
    for row in answer["lots"].as_array().ok_or("`lots` is not a list")? {
        let product = row["product"].as_str().unwrap_or_default();
        let number = row["lot"].as_str().ok_or("`lots`: a row without lot")?;
        let key = if product.is_empty() {
            number.to_string()
        } else {
            format!("{product}/{number}")
        };
        let count = |k: &str| {
            row[k]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or(format!("lot {key}: `{k}` is not a count"))
        };
        let codes: BTreeSet<String> = serde_json::from_value(row["codes"].clone())
            .map_err(|e| format!("lot {key}: no readable `codes` list: {e}"))?;
        let l = LotStock {
            units: count("units")?,
            awaiting: count("awaiting_receipt")?,
            refused: count("refused_at_receipt")?,
            codes,
        };
        if said.lots.insert(key.clone(), l).is_some() {
            return Err(format!("`lots` names {key} twice"));
        }
    }
    said.packages = serde_json::from_value(answer["package_codes"].clone())
        .map_err(|e| format!("no readable `package_codes` list: {e}"))?;
    said.emptied_packages = serde_json::from_value(answer["emptied_package_codes"].clone())
        .map_err(|e| format!("no readable `emptied_package_codes` list: {e}"))?;
    if answer["emptied_packages"].as_u64() != Some(said.emptied_packages.len() as u64) {
        return Err("`emptied_packages` is not the number of `emptied_package_codes`".into());
    }
    let units: usize = said.lots.values().map(|l| l.units).sum();
    if answer["units"].as_u64() != Some(units as u64) || answer["packages"].as_u64() != Some(said.packages.len() as u64)
    {
        return Err("`units` or `packages` is not the sum of what the answer lists".into());
    }
    let listed = said.codes();
    let parents: BTreeSet<String> = events
        .iter()
        .flat_map(|(_, e)| e.aggregations.iter().map(|a| a.parent.clone()))
        .collect();
    let candidates: BTreeSet<String> = listed.iter().cloned().collect();
    let contents = contents_among(&events, &candidates);
    let recounted = StockTally::of(holder, &listed, &parents, &contents, &book);
    match said.first_difference(&recounted) {
        None => Ok(recounted),
        Some(d) => Err(d),
    }
}

/// Package → its contents among `codes`, from the packaging links the
/// events state (as the gateway reads them: links whose child is one of
/// the codes).
fn contents_among(
    events: &[(u64, TraceEvent)],
    codes: &BTreeSet<String>,
) -> std::collections::HashMap<String, Vec<String>> {
    let mut out: std::collections::HashMap<String, Vec<String>> = Default::default();
    for a in events.iter().flat_map(|(_, e)| &e.aggregations) {
        for c in a.children.iter().filter(|c| codes.contains(*c)) {
            let kids = out.entry(a.parent.clone()).or_default();
            if !kids.contains(c) {
                kids.push(c.clone());
            }
        }
    }
    out
}

/// The counts a recall answer states, by entity id.
fn tally_of_answer(a: &Value) -> Result<RecallTally, String> {
    fn count(v: &Value, what: &str) -> Result<usize, String> {
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("`{what}` is not a count: {v}"))
    }
    /// `[{key: {id}, "units": n, second: m}]` as id → (n, m).
    fn pairs_by_party(
        a: &Value,
        list: &str,
        key: &str,
        second: &str,
    ) -> Result<BTreeMap<String, (usize, usize)>, String> {
        let mut out = BTreeMap::new();
        for row in a[list].as_array().ok_or(format!("`{list}` is not a list"))? {
            let id = row[key]["id"]
                .as_str()
                .ok_or(format!("`{list}`: a row without {key}.id"))?;
            let n = (count(&row["units"], list)?, count(&row[second], list)?);
            if out.insert(id.to_string(), n).is_some() {
                return Err(format!("`{list}` names {id} twice"));
            }
        }
        Ok(out)
    }
    fn by_party(a: &Value, list: &str, key: &str) -> Result<BTreeMap<String, usize>, String> {
        let mut out = BTreeMap::new();
        for row in a[list].as_array().ok_or(format!("`{list}` is not a list"))? {
            let id = row[key]["id"]
                .as_str()
                .ok_or(format!("`{list}`: a row without {key}.id"))?;
            if out.insert(id.to_string(), count(&row["units"], list)?).is_some() {
                return Err(format!("`{list}` names {id} twice"));
            }
        }
        Ok(out)
    }
    let mut t = RecallTally {
        units: count(&a["units"], "units")?,
        packages: count(&a["packages"], "packages")?,
        administered_doses: count(&a["administered_doses"], "administered_doses")?,
        unknown: count(&a["unknown_units"], "unknown_units")?,
        in_transit: by_party(a, "in_transit", "from")?,
        refused: by_party(a, "refused_at_receipt", "holder")?,
        destroyed: by_party(a, "destroyed", "by")?,
        ..RecallTally::default()
    };
    for (k, v) in a["package_states"]
        .as_object()
        .ok_or("`package_states` is not an object")?
    {
        t.package_states.insert(k.clone(), count(v, "package_states")?);
    }
    t.held = pairs_by_party(a, "held_by", "holder", "awaiting_receipt")?;
    t.administered = pairs_by_party(a, "administered_by", "vaccinating_unit", "doses")?;
    for row in a["codes"].as_array().ok_or("`codes` is not a list")? {
        let code = row["code"].as_str().ok_or("`codes`: a row without code")?;
        let text = |k: &str| row[k].as_str().map(str::to_string);
        let c = CodeState {
            package: row["kind"] == "package",
            state: text("state").ok_or(format!("`codes`: {code} has no state"))?,
            holder: text("holder"),
            last_event: text("last_event"),
        };
        if t.codes.insert(code.to_string(), c).is_some() {
            return Err(format!("`codes` names {code} twice"));
        }
    }
    // The derived members must agree with the rest.
    if count(&a["code_count"], "code_count")? != t.codes.len() {
        return Err("`code_count` is not the number of `codes`".into());
    }
    let in_stock: BTreeMap<String, usize> = serde_json::from_value(a["in_stock_by_holder"].clone())
        .map_err(|e| format!("`in_stock_by_holder` is not a map of counts: {e}"))?;
    let held: BTreeMap<String, usize> = t.held.iter().map(|(k, v)| (k.clone(), v.0)).collect();
    if in_stock != held {
        return Err("`in_stock_by_holder` is not `held_by`'s units".into());
    }
    Ok(t)
}

fn check_step(step: &Value, cp: &Checkpoint) -> Result<StepChecked, String> {
    let t: TxSummary = serde_json::from_value(
        step.get("transaction")
            .cloned()
            .ok_or("no `transaction`: the answer is not checkable (a gateway older than checkable answers?)")?,
    )
    .map_err(|e| format!("`transaction` is malformed: {e}"))?;
    let event = &step["event"];
    let same = |what: &str, shown: &Value, committed: &str| -> Result<(), String> {
        if shown.as_str() == Some(committed) {
            Ok(())
        } else {
            Err(format!("its {what} {shown} is not the transaction's {committed:?}"))
        }
    };
    same("event_id", &step["event_id"], &t.record_id)?;
    same("tx_id", &step["tx_id"], &t.tx_id.to_string())?;
    same("category", &step["category"], &t.category)?;
    same("signer", &step["signer"]["id"], &t.auth.signer)?;
    if step["occurred_at"] != event["occurredAt"] || step["source"] != event["source"] {
        return Err("its occurred_at or source is not the event's own".into());
    }

    // The content: every member shown against the committed root.
    let root = t.fields_root.ok_or(
        "its transaction was written before field commitments: only its inclusion can be checked, not what the step says",
    )?;
    let d: Disclosure = serde_json::from_value(step.get("disclosure").cloned().unwrap_or(Value::Null))
        .map_err(|e| format!("`disclosure` is missing or malformed: {e}"))?;
    let personal: BTreeMap<String, String> = match step.get("personal_data") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("`personal_data` is malformed: {e}"))?,
    };
    let got = commitment::check(event, &personal, &d).map_err(|e| e.to_string())?;
    if got != root.0 {
        return Err(
            "what the step shows is not what its transaction commits to (a member was changed, added or removed)"
                .into(),
        );
    }

    // The transaction: in the log under the signed checkpoint.
    let p: StepProof = serde_json::from_value(step.get("proof").cloned().unwrap_or(Value::Null))
        .map_err(|e| format!("`proof` is missing or malformed: {e}"))?;
    if step["leaf_index"].as_u64() != Some(p.leaf_index) {
        return Err("its leaf_index differs from its proof's".into());
    }
    if p.tree_size != cp.tree_size {
        return Err(format!(
            "its proof is for tree size {}, the checkpoint's is {}",
            p.tree_size, cp.tree_size
        ));
    }
    if !ledger::merkle::verify_inclusion(p.leaf_index, p.tree_size, &t.leaf_hash(), &p.audit_path, &cp.root) {
        return Err(
            "its transaction is not in the signed tree (the audit path does not reach the checkpoint root)".into(),
        );
    }

    // The signer's batch signature, and the record's place in the batch:
    // a node-written record's batch leaf is its content hash; a submitter's
    // record of format 2 is its record digest, which is `payload_sm3`. A
    // submitter's record of format 1 is signed over its sealed envelope,
    // which the answer does not carry: `full_proof` checks that part.
    t.auth
        .verify_signature()
        .map_err(|e| format!("the batch signature: {e}"))?;
    let batch_leaf = match (t.auth.leaf, t.format) {
        (LeafInput::Content, _) => Some((t.content_hash(), "the node-written record")),
        (LeafInput::Envelope, TxFormat::V2) => Some((t.payload_sm3, "the submitter's record")),
        (LeafInput::Envelope, TxFormat::V1) => None,
    };
    if let Some((input, whose)) = batch_leaf {
        let leaf = ledger::merkle::leaf_hash(&input.0);
        if !ledger::merkle::verify_inclusion(
            t.auth.index,
            t.auth.batch.tree_size,
            &leaf,
            &t.auth.audit_path,
            &t.auth.batch.root,
        ) {
            return Err(format!("{whose} is not in its signed batch"));
        }
    }
    Ok(StepChecked {
        event_id: t.record_id,
        category: t.category,
        leaf_index: p.leaf_index,
        shown: d.salts.len(),
        withheld: d.withheld.len(),
    })
}
