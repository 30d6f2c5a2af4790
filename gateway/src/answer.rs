//! Checking a query answer with only the ledger node's public key
//! (`vaxgate verify-proof ANSWER.json`): every step's content against the
//! field commitments of its transaction, and that transaction against the
//! signed checkpoint the answer carries. docs/api.md ("Checking an answer")
//! describes the same steps for a partner who writes its own checker.

use std::collections::BTreeMap;

use ledger::{Checkpoint, LeafInput, TxFormat, TxSummary};
use mappings::commitment::{self, Disclosure};
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
    v.get("steps").is_some() || v.get("event").is_some_and(|e| e.get("transaction").is_some())
}

/// Checks a `GET /v1/trace/{code}` or `GET /v1/events/{id}` answer.
pub fn verify_answer(answer: &Value, node_key: &Sm2VerifyingKey) -> Result<AnswerChecked, AnswerError> {
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
    for (index, step) in steps.into_iter().enumerate() {
        let event_id = step["event_id"].as_str().unwrap_or("?").to_string();
        let checked = check_step(step, &cp).map_err(|reason| AnswerError::Step {
            index,
            event_id: event_id.clone(),
            reason,
        })?;
        out.push(checked);
    }
    Ok(AnswerChecked {
        checkpoint: cp,
        steps: out,
    })
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
