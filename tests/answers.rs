//! Answers anyone can check (docs/api.md, "Checking an answer"), against
//! the real `vaxgate serve` on SQLite and on PostgreSQL: a dose's trace and
//! an event, read by a partner without personal data and by one with it,
//! pass `vaxgate verify-proof` with only the node's public key; an answer
//! changed after it left the gateway does not; and when the projection
//! the gateway answers from is forged in the database (the lot of the
//! vaccination changed in `proj_events`), the gateway serves the forged
//! value, `verify-proof` names the step that is not what its transaction
//! commits to, and `vaxgate ledger verify` names the row.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::{Ent, Node, dispatch, golden, production, receipt, vaxgate};

const MAH_CODE: &str = "91320000134567890Y";
const CLINIC: &str = "3201020001";
const CODE: &str = "86123450000000001001";
const LOT: &str = "202311A05";

/// The dose's production and delivery to the clinic, and its vaccination
/// (with the recipient's personal data); returns the vaccination's event id.
fn history(node: &Node, mah: &Ent, clinic: &Ent) -> String {
    let codes = [CODE.to_string()];
    let out = dispatch(MAH_CODE, CLINIC, &codes);
    let r = node.post_batch(mah, "/v1/transactions", &[production(MAH_CODE, &codes), out]);
    assert_eq!(r.body["accepted"], 2, "{}", r.text);
    let rec = receipt(MAH_CODE, CLINIC, &codes);
    let vac = golden("vaccination", "clinic-ims.json").remove(0);
    assert_eq!(vac.payload.trace_codes, [CODE]);
    assert!(!vac.payload.pii.is_empty());
    let id = vac.event_id.to_string();
    let r = node.post_batch(clinic, "/v1/transactions", &[rec, vac]);
    assert_eq!(r.body["accepted"], 2, "{}", r.text);
    id
}

/// `vaxgate verify-proof` of `answer` (written to `dir/name`): (exit code, stdout).
fn verify(node: &Node, dir: &Path, name: &str, answer: &Value) -> (i32, String) {
    let f = dir.join(name);
    std::fs::write(&f, serde_json::to_vec_pretty(answer).unwrap()).unwrap();
    node.verify_proof(&f)
}

/// What [`verify`] said of an answer whose step `step` (the vaccination
/// `event`) is not what its transaction commits to: exit 1, naming both.
fn assert_commitment_broken((code, out): (i32, String), step: usize, event: &str) {
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("ANSWER INVALID: step {step} (event {event})"))
            && out.contains("not what its transaction commits to"),
        "{out}"
    );
}

fn get(node: &Node, e: &Ent, path: &str) -> Value {
    let r = node.signed(&e.key, "GET", path, Vec::new(), "");
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

fn ledger_verify(node: &Node) -> (i32, String) {
    let o = vaxgate().args(["ledger", "verify", "--db", &node.db]).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

/// The position of the vaccination among the steps.
fn vaccination_step(t: &Value) -> usize {
    t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .position(|s| s["category"] == "vaccination")
        .unwrap()
}

#[test]
fn answers_are_checkable_and_a_forged_projection_is_caught_on_sqlite() {
    let node = Node::start();
    answers(node);
}

#[test]
fn answers_are_checkable_and_a_forged_projection_is_caught_on_postgres() {
    let node = Node::start_postgres();
    answers(node);
}

/// Runs `sql` directly on the node's database (the SQLite file or the
/// PostgreSQL URL), as someone with access to it could.
fn forge(node: &Node, sql: String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        if node.db.starts_with("postgres") {
            let pool = sqlx::PgPool::connect(&node.db).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap();
            pool.close().await;
        } else {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", node.db)).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap();
            pool.close().await;
        }
    });
}

fn answers(node: Node) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mah = node.register("91320000MA1XYA129", "mah", "manufacturer", &[MAH_CODE], None);
    let clinic = node.register("12320102MB1234567", "meiyuan", "vaccination_unit", &[CLINIC], None);
    let regulator = node.register_regulator();
    let inspector = node.register_reader(
        "11320000MB7654321",
        "js-cdc",
        json!({ "read": { "all": true }, "personal_data": true }),
    );
    let vaccination = history(&node, &mah, &clinic);

    // 1. The regulator's trace (no personal-data scope): every step checks;
    // the six personal members of the vaccination and its three elements
    // that identify a person (recipient code, sex, clinician) are withheld
    // (digests only).
    let trace = get(&node, &regulator, &format!("/v1/trace/{CODE}"));
    let v = vaccination_step(&trace);
    assert!(trace["steps"].as_array().unwrap().len() >= 4, "{trace}");
    assert!(trace["steps"][v].get("personal_data").is_none(), "{trace}");
    let f = &trace["steps"][v]["event"]["fields"];
    for k in ["recipient_code", "recipient_sex", "clinician"] {
        assert!(f.get(k).is_none(), "{k} shown without the scope: {f}");
    }
    assert_eq!(f["lot_number"], LOT);
    assert_eq!(trace["steps"][v]["disclosure"]["withheld"].as_array().unwrap().len(), 9);
    for personal in ["王小明", "320102000120230001", "李医生"] {
        assert!(!trace.to_string().contains(personal), "{personal}");
    }
    let (code, out) = verify(&node, dir, "trace.json", &trace);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("answer OK") && out.contains("(9 member(s) withheld"),
        "{out}"
    );

    // 2. With personal data: shown, and checked too.
    let full = get(&node, &inspector, &format!("/v1/trace/{CODE}"));
    let fv = vaccination_step(&full);
    assert_eq!(full["steps"][fv]["personal_data"]["recipient_name"], "王小明");
    assert_eq!(
        full["steps"][fv]["event"]["fields"]["recipient_code"],
        "320102000120230001"
    );
    let (code, out) = verify(&node, dir, "full.json", &full);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(0 member(s) withheld"), "{out}");

    // 3. One event.
    let event = get(&node, &regulator, &format!("/v1/events/{vaccination}"));
    let (code, out) = verify(&node, dir, "event.json", &event);
    assert_eq!(code, 0, "{out}");

    // 3b. An AEFI report: its findings only under the `aefi_data` scope,
    // who reported it only under `personal_data`; checkable either way.
    let aefi = golden("aefi_report", "clinic-aefi.json").remove(0);
    let aefi_id = aefi.event_id.to_string();
    let r = node.post_batch(&clinic, "/v1/transactions", &[aefi]);
    assert_eq!(r.body["accepted"], 1, "{}", r.text);
    let a = get(&node, &regulator, &format!("/v1/events/{aefi_id}"));
    let f = &a["event"]["event"]["fields"];
    for k in [
        "aefi_symptoms",
        "aefi_severity",
        "aefi_classification",
        "onset_time",
        "reporter",
        "recipient_code",
    ] {
        assert!(f.get(k).is_none(), "{k} shown without its scope: {f}");
    }
    assert_eq!(f["aefi_report_no"], "AEFI320102202403001");
    let (code, out) = verify(&node, dir, "aefi.json", &a);
    assert_eq!(code, 0, "{out}");
    let monitor = node.register_reader(
        "11320000MB1122334",
        "js-aefi",
        json!({ "read": { "all": true }, "aefi_data": true }),
    );
    let a = get(&node, &monitor, &format!("/v1/events/{aefi_id}"));
    let f = &a["event"]["event"]["fields"];
    assert!(f["aefi_symptoms"].as_str().unwrap().contains("红肿"), "{f}");
    assert!(f.get("reporter").is_none(), "{f}");
    let (code, out) = verify(&node, dir, "aefi-monitor.json", &a);
    assert_eq!(code, 0, "{out}");

    // 4. An answer changed on its way: a shown member, a personal member,
    // a withheld digest dropped, a member removed, the audit path.
    let mut changed = trace.clone();
    changed["steps"][v]["event"]["fields"]["lot_number"] = json!("202311A99");
    assert_commitment_broken(verify(&node, dir, "changed.json", &changed), v, &vaccination);
    let mut changed = full.clone();
    changed["steps"][fv]["personal_data"]["recipient_name"] = json!("王小红");
    assert_eq!(verify(&node, dir, "changed.json", &changed).0, 1);
    let mut changed = trace.clone();
    changed["steps"][v]["disclosure"]["withheld"]
        .as_array_mut()
        .unwrap()
        .pop();
    assert_eq!(verify(&node, dir, "changed.json", &changed).0, 1);
    let mut changed = trace.clone();
    changed["steps"][v]["event"]["fields"]
        .as_object_mut()
        .unwrap()
        .remove("vaccine_name");
    let (code, out) = verify(&node, dir, "changed.json", &changed);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("fields/vaccine_name"), "{out}");
    let mut changed = trace.clone();
    changed["steps"][v]["transaction"]["fields_root"] = json!("00".repeat(32));
    let (code, out) = verify(&node, dir, "changed.json", &changed);
    assert_eq!(code, 1, "{out}");
    // Format 2: the submitter's batch proof is checked from the answer
    // alone (its payload_sm3 is the record digest the submitter signed);
    // the record's audit path within its batch is not in the log leaf.
    assert_eq!(trace["steps"][v]["transaction"]["format"], 2, "{trace}");
    let mut changed = trace.clone();
    changed["steps"][v]["transaction"]["auth"]["audit_path"]
        .as_array_mut()
        .unwrap()
        .push(json!("00".repeat(32)));
    let (code, out) = verify(&node, dir, "changed.json", &changed);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("the submitter's record is not in its signed batch"),
        "{out}"
    );

    // 5. The ledger and its projection agree.
    let (code, out) = ledger_verify(&node);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("projection matches the ledger"), "{out}");

    // 5b. A recall with its evidence: every event behind the counts is a
    // checked step, and the counts are recounted from them.
    let recall = get(&node, &regulator, &format!("/v1/batches/{LOT}/recall?evidence=true"));
    assert_eq!(recall["administered_doses"], 1, "{recall}");
    let (code, out) = verify(&node, dir, "recall.json", &recall);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "recall counts OK: recounted from the steps: 1 unit(s) and 0 package(s) of 0 holder(s), 1 dose(s)"
        ),
        "{out}"
    );
    let plain = get(&node, &regulator, &format!("/v1/batches/{LOT}/recall"));
    assert!(plain.get("steps").is_none(), "{plain}");
    let (code, out) = verify(&node, dir, "plain.json", &plain);
    assert!(code == 1 && out.contains("without its evidence"), "{out}");
    let recall_broken = |changed: &Value, says: &str| {
        let (code, out) = verify(&node, dir, "changed.json", changed);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains(&format!("ANSWER INVALID: recall of lot {LOT}: {says}")),
            "{out}"
        );
    };
    let mut changed = recall.clone();
    changed["administered_doses"] = json!(0);
    recall_broken(&changed, "administered_doses: the answer says 0, its events give 1");
    let mut changed = recall.clone();
    changed["codes"][0]["state"] = json!("held");
    recall_broken(&changed, &format!("code {CODE}: the answer says"));
    // Leaving out the vaccination's step makes the recount differ too.
    let mut changed = recall.clone();
    changed["steps"]
        .as_array_mut()
        .unwrap()
        .retain(|s| s["category"] != "vaccination");
    recall_broken(&changed, "administered_doses: the answer says 1, its events give 0");
    // The custody state forged in the database (the code's history moved
    // away): the gateway counts the dose as of unknown state, and the
    // recount from the proven events says otherwise.
    let elsewhere = "99999999999999999999";
    forge(
        &node,
        format!("UPDATE custody_codes SET code = '{elsewhere}' WHERE code = '{CODE}'"),
    );
    let forged = get(&node, &regulator, &format!("/v1/batches/{LOT}/recall?evidence=true"));
    assert_eq!(forged["unknown_units"], 1, "{forged}");
    recall_broken(&forged, "unknown_units: the answer says 1, its events give 0");
    forge(
        &node,
        format!("UPDATE custody_codes SET code = '{CODE}' WHERE code = '{elsewhere}'"),
    );

    // 6. The projection forged in the database, document and lot column
    // alike: the gateway serves the forged lot, and both checks name what
    // differs.
    forge(
        &node,
        format!(
            "UPDATE proj_events SET doc = REPLACE(doc, '\"lot_number\":\"{LOT}\"', '\"lot_number\":\"202311A99\"'), \
             lot = '202311A99' WHERE event_id = '{vaccination}'"
        ),
    );
    let forged = get(&node, &regulator, &format!("/v1/trace/{CODE}"));
    let fv = vaccination_step(&forged);
    assert_eq!(
        forged["steps"][fv]["event"]["fields"]["lot_number"], "202311A99",
        "{forged}"
    );
    assert_commitment_broken(verify(&node, dir, "forged.json", &forged), fv, &vaccination);
    let (code, out) = ledger_verify(&node);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("ledger intact")
            && out.contains("PROJECTION DIFFERS FROM THE LEDGER: 1 row(s)")
            && out.contains(&format!("(event {vaccination}): the document is not what transaction")),
        "{out}"
    );

    // 7. The event's row removed from the projection: a step queries would
    // no longer show, named as missing.
    forge(
        &node,
        format!("DELETE FROM proj_events WHERE event_id = '{vaccination}'"),
    );
    let (code, out) = ledger_verify(&node);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("PROJECTION DIFFERS FROM THE LEDGER: 1 row(s)")
            && out.contains(&format!(
                "(event {vaccination}): in the ledger, missing from the projection"
            )),
        "{out}"
    );
}
