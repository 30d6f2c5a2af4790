//! Custody rules (docs/custody.md) end to end, against the real `vaxgate
//! serve` on SQLite and on PostgreSQL, with the real `vaxgate agent`
//! reading a legacy clinic table: a destroyed dose given, a dose given
//! twice (in a second run of the agent, past its own early check), a dose
//! given by another organisation, and a vaccination dated before its lot
//! was produced are refused at the gateway and quarantined by the agent; a
//! quarantine replay is judged again (still refused, then accepted once the
//! first vaccination is cancelled); a dose held by another clinic and a
//! code nobody produced are kept with a `provenance_pending` alert, the
//! latter resolved by the production and delivery that arrive later; a
//! recalled dose given, a dose given after its expiry date and one given
//! before its lot's release are kept and flagged; the clinic's stock is what
//! is left. The real agent reading a CDC's legacy stock table (`V_YM_CRKD`)
//! does the same for receipts and outbounds: a receipt nobody sent to the
//! CDC and an outbound of a dose another organisation holds are kept
//! pending (the first resolved by the dispatch that arrives later); an
//! outbound of a dose the CDC destroyed is refused, on replay too.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::{Ent, Node, agent, at, dispatch, from_source, golden, party, production, receipt};

const MAH_CODE: &str = "91320000134567890Y";
const CLINIC_A: &str = "3201020001";
const CLINIC_B: &str = "3201020002";
const LOT: &str = "202311A05";

/// The trace code of clinic row `i` (`support::agent::clinic_row`).
fn code(i: usize) -> String {
    format!("8612345{i:013}")
}

/// Clinic row `i` (a vaccination of [`code`]`(i)` by clinic A on
/// 2024-03-05), with its trace code, clinic or time replaced.
fn row(i: usize, code_of: usize, clinic: &str, time: Option<&str>) -> Value {
    let mut r = agent::clinic_row(i, false);
    r["DZJGM"] = json!(code(code_of));
    r["JZDW_BM"] = json!(clinic);
    if let Some(t) = time {
        r["JZRQ"] = json!(t);
    }
    r
}

/// A copy in `dir` of config/mappings/`file` whose `[source] entity` is
/// `entity` instead of `was`.
fn spec_copy(dir: &Path, file: &str, was: &str, entity: &str) -> PathBuf {
    let spec = dir.join(file);
    let original = std::fs::read_to_string(support::repo().join("config/mappings").join(file)).unwrap();
    let text = original.replace(&format!("entity = \"{was}\""), &format!("entity = \"{entity}\""));
    assert!((was == entity || text != original) && text.contains(entity), "{text}");
    std::fs::write(&spec, text).unwrap();
    spec
}

/// An agent config in `dir` for `e` with one SQLite source `name` reading
/// `db` as the source lines `table` say, in pages of 64, mapped by `spec`.
fn sqlite_agent_config(node: &Node, dir: &Path, e: &Ent, name: &str, spec: &Path, db: &Path, table: &str) -> PathBuf {
    let url = format!("sqlite:{}", db.display());
    let source = agent::sql_source(name, "sqlite", &url, &format!("{table}batch_size = 64\n"), spec);
    node.agent_config_with(dir, e, &source)
}

/// An agent reading `T_JZ_JZJL` in `db` for entity `e`, whose clinic
/// system reports as `clinic`.
fn agent_config(node: &Node, dir: &Path, e: &Ent, clinic: &str, db: &Path) -> PathBuf {
    let spec = spec_copy(dir, "clinic-ims.toml", "3201020001", clinic);
    sqlite_agent_config(node, dir, e, agent::SOURCE, &spec, db, agent::CLINIC_BY_JZRQ)
}

/// `vaxgate agent --config C run --once`, which must succeed and sum up
/// its source as `summary`: its stdout.
fn run_once(cfg: &Path, summary: &str) -> String {
    let out = support::ok(agent::agent(cfg, &["run", "--once"]));
    assert!(out.contains(summary), "{out}");
    out
}

fn record(msg: &mappings::ExchangeMessage, f: impl FnOnce(&mut mappings::TraceEvent)) -> mappings::ExchangeMessage {
    let mut m = msg.clone();
    f(&mut m.payload);
    m
}

/// Production by the holder of `codes`, and its delivery to clinic A
/// (outbound by the holder, receipt by the clinic).
fn produce_and_deliver(node: &Node, mah: &Ent, clinic: &Ent, codes: &[String]) {
    let out = dispatch(MAH_CODE, CLINIC_A, codes);
    let r = node.post_batch(mah, "/v1/transactions", &[production(MAH_CODE, codes), out]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["accepted"], 2, "{}", r.text);
    let r = node.post_batch(clinic, "/v1/transactions", &[receipt(MAH_CODE, CLINIC_A, codes)]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["accepted"], 1, "{}", r.text);
}

/// The custody alerts on the steps of `code`'s trace, as the regulator reads it.
fn alerts_of(node: &Node, reader: &Ent, code: &str) -> Vec<Value> {
    steps_of(node, reader, code)
        .into_iter()
        .filter(|s| s["category"] == "custody_alert")
        .collect()
}

/// The steps of `code`'s trace, as `reader` reads it.
fn steps_of(node: &Node, reader: &Ent, code: &str) -> Vec<Value> {
    let r = node.signed(&reader.key, "GET", &format!("/v1/trace/{code}"), Vec::new(), "");
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["steps"].as_array().unwrap().clone()
}

/// The vaccination step of `code`'s trace, as `reader` reads it.
fn vaccination_of(node: &Node, reader: &Ent, code: &str) -> Value {
    let steps = steps_of(node, reader, code);
    steps.into_iter().find(|s| s["category"] == "vaccination").unwrap()
}

fn quarantine_reasons(cfg: &Path) -> String {
    support::ok(agent::agent(cfg, &["quarantine", "list"]))
}

/// The holder, registered with its code in the golden records.
fn manufacturer(node: &Node) -> Ent {
    node.register("91320000MA1XYA129", "mah", "manufacturer", &[MAH_CODE], None)
}

#[test]
fn custody_rules_on_sqlite() {
    custody_rules(Node::start());
}

#[test]
fn custody_rules_on_postgres() {
    custody_rules(Node::start_postgres());
}

fn custody_rules(node: Node) {
    let mah = manufacturer(&node);
    let clinic_a = node.register("12320102MB1234567", "meiyuan", "vaccination_unit", &[CLINIC_A], None);
    let clinic_b = node.register("12320102MB7654321", "xinjiekou", "vaccination_unit", &[CLINIC_B], None);
    let regulator = node.register_regulator();
    let codes: Vec<String> = (0..10).map(code).collect();
    produce_and_deliver(&node, &mah, &clinic_a, &codes);

    // Clinic A destroys dose 5 (expired in the fridge) before the agent runs.
    let loss = golden("loss_destruction", "cdc-stock.json").remove(0);
    let loss = record(&from_source(&loss, CLINIC_A), |e| {
        e.trace_codes = vec![code(5)];
        e.occurred_at = at("2024-02-01T16:00:00+08:00");
        e.from = party(CLINIC_A);
        e.fields.insert("lot_number".into(), json!(LOT));
    });
    let r = node.post_batch(&clinic_a, "/v1/transactions", &[loss]);
    assert_eq!(r.body["accepted"], 1, "{}", r.text);

    // 1. Clinic A's agent: doses 0-4 given (accepted); the destroyed dose 5
    // and dose 8 dated before its lot was produced are refused by the
    // gateway and quarantined.
    let work_a = tempfile::tempdir().unwrap();
    let db_a = work_a.path().join("clinic.db");
    let mut rows: Vec<Value> = (0..5).map(|i| row(i, i, CLINIC_A, None)).collect();
    rows.push(row(5, 5, CLINIC_A, None));
    rows.push(row(8, 8, CLINIC_A, Some("20230601090000")));
    agent::sqlite_clinic_rows(&db_a, rows);
    let cfg_a = agent_config(&node, work_a.path(), &clinic_a, CLINIC_A, &db_a);
    run_once(&cfg_a, "source clinic-ims: 5 accepted, 2 rejected, 0 quarantined");
    let q = quarantine_reasons(&cfg_a);
    assert!(q.contains("destroyed_used") && q.contains("before_production"), "{q}");
    assert!(!q.contains("王小明"), "no personal data in the reasons: {q}");
    assert!(node.metric("vaxgate_custody_findings_total{action=\"refuse\",rule=\"destroyed_used\"}") >= 1.0);

    // 2. A second run of the same agent: dose 1 again, under another record
    // (the agent's own trace_code_overused check only knows its own run).
    agent::sqlite_clinic_rows(&db_a, vec![row(20, 1, CLINIC_A, Some("20240306090000"))]);
    run_once(&cfg_a, "source clinic-ims: 0 accepted, 1 rejected, 0 quarantined");
    assert!(quarantine_reasons(&cfg_a).contains("administered_twice"));

    // 3. Another organisation: clinic B gives dose 2 (given by A: refused)
    // and dose 6 (in A's stock, no transfer recorded: kept, pending).
    let work_b = tempfile::tempdir().unwrap();
    let db_b = work_b.path().join("clinic.db");
    agent::sqlite_clinic_rows(
        &db_b,
        vec![
            row(100, 2, CLINIC_B, Some("20240307090000")),
            row(101, 6, CLINIC_B, Some("20240307093000")),
        ],
    );
    let cfg_b = agent_config(&node, work_b.path(), &clinic_b, CLINIC_B, &db_b);
    run_once(&cfg_b, "source clinic-ims: 1 accepted, 1 rejected, 0 quarantined");
    assert!(quarantine_reasons(&cfg_b).contains("administered_twice"));
    let pending = alerts_of(&node, &regulator, &code(6));
    assert_eq!(pending.len(), 1, "{pending:?}");
    let fields = &pending[0]["event"]["fields"];
    assert_eq!(fields["alert_type"], "provenance_pending", "{fields}");
    assert_eq!(fields["rules"], json!(["not_holder"]), "{fields}");
    assert!(
        fields["alert_reason"].as_str().unwrap().contains(&clinic_a.id),
        "the holder is named: {fields}"
    );
    assert_eq!(pending[0]["signer"]["id"], "node");

    // 4. A replay is judged again: still refused while dose 1's first
    // vaccination stands; accepted once clinic A cancels it (注销).
    let o = agent::agent(&cfg_a, &["quarantine", "replay"]);
    let replay = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        replay.contains("0 accepted") && replay.contains("3 rejected"),
        "{replay}"
    );
    let first = vaccination_of(&node, &regulator, &code(1))["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let cancel = golden("cancellation", "mah-export.json").remove(0);
    let cancel = record(&from_source(&cancel, CLINIC_A), |e| {
        e.fields.insert("cancels_event_id".into(), json!(first));
        e.fields.insert("cancel_reason_code".into(), json!("01"));
    });
    let r = node.post_batch(&clinic_a, "/v1/cancellations", &[cancel]);
    assert_eq!(r.body["accepted"], 1, "{}", r.text);
    let o = agent::agent(&cfg_a, &["quarantine", "replay"]);
    let replay = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        replay.contains("1 accepted") && replay.contains("2 rejected"),
        "{replay}"
    );

    // 5. A code nobody produced: kept, pending; resolved by the production
    // and delivery that arrive later.
    agent::sqlite_clinic_rows(&db_a, vec![row(30, 30, CLINIC_A, Some("20240308090000"))]);
    run_once(&cfg_a, "source clinic-ims: 1 accepted, 0 rejected, 0 quarantined");
    let a = alerts_of(&node, &regulator, &code(30));
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["event"]["fields"]["rules"], json!(["unknown_code"]));
    let prod = golden("production_inbound", "mah-export.json").remove(0);
    let prod = record(&from_source(&prod, MAH_CODE), |e| e.trace_codes = vec![code(30)]);
    let r = node.post_batch(&mah, "/v1/transactions", &[prod]);
    assert!(r.body["results"][0].get("custody").is_none(), "{}", r.text);
    let out = golden("outbound", "cdc-stock.json").remove(0);
    let out = record(&from_source(&out, MAH_CODE), |e| {
        e.trace_codes = vec![code(30)];
        e.occurred_at = at("2024-01-05T09:00:00+08:00");
        e.from = party(MAH_CODE);
        e.to = party(CLINIC_A);
    });
    let r = node.post_batch(&mah, "/v1/transactions", &[out]);
    let res = &r.body["results"][0]["custody"]["alerts"][0];
    assert_eq!(res["alert_type"], "provenance_resolved", "{}", r.text);
    let a = alerts_of(&node, &regulator, &code(30));
    let types: Vec<&str> = a
        .iter()
        .map(|s| s["event"]["fields"]["alert_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["provenance_pending", "provenance_resolved"], "{a:?}");

    // 6. A recall of the lot from 2024-03-05 12:00: a dose given after it is
    // kept (it was given) and flagged loudly.
    let recall = golden("recall", "cdc-stock.json").remove(0);
    let recall = record(&from_source(&recall, MAH_CODE), |e| {
        e.trace_codes = vec![code(9)];
        e.occurred_at = at("2024-03-05T12:00:00+08:00");
        e.from = party(CLINIC_A);
        e.to = party(MAH_CODE);
        e.fields.insert("lot_number".into(), json!(LOT));
    });
    let r = node.post_batch(&mah, "/v1/transactions", &[recall]);
    assert_eq!(r.body["accepted"], 1, "{}", r.text);
    agent::sqlite_clinic_rows(&db_a, vec![row(7, 7, CLINIC_A, Some("20240309090000"))]);
    run_once(&cfg_a, "source clinic-ims: 1 accepted, 0 rejected, 0 quarantined");
    let a = alerts_of(&node, &regulator, &code(7));
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["event"]["fields"]["alert_type"], "custody_violation");
    assert_eq!(a[0]["event"]["fields"]["rules"], json!(["recalled_used"]));
    // The vaccination's own step carries its alert.
    let v = vaccination_of(&node, &regulator, &code(7));
    assert_eq!(v["alerts"][0]["rules"], json!(["recalled_used"]), "{v}");

    // 7. Clinic A's stock now: of the ten doses delivered, 0-4 and 7 were
    // given (1 again after its cancellation), 5 destroyed, 6 given by clinic
    // B, 9 recalled: only dose 8 (whose vaccination was refused) is left.
    let r = node.signed(
        &clinic_a.key,
        "GET",
        &format!("/v1/holders/{}/stock?codes=true", clinic_a.id),
        Vec::new(),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["units"], 1, "{}", r.text);
    assert_eq!(r.body["lots"][0]["lot"], LOT, "{}", r.text);
    assert_eq!(r.body["lots"][0]["codes"], json!([code(8)]), "{}", r.text);
    let by_alias = node.signed(&regulator.key, "GET", "/v1/holders/meiyuan/stock", Vec::new(), "");
    assert_eq!(by_alias.body["units"], 1, "{}", by_alias.text);
    let other = node.signed(
        &clinic_b.key,
        "GET",
        &format!("/v1/holders/{}/stock", clinic_a.id),
        Vec::new(),
        "",
    );
    assert_eq!((other.status, other.code()), (403, "forbidden"), "{}", other.text);

    // 8. A dose given after its lot's expiry date (2026-11-30, from its
    // production record; the clinic's row claims 2027-12-31, so the agent's
    // own expiry check passes it): kept (it was given) and flagged (with the
    // recall of step 6).
    let late = |i: usize, t: &str| {
        let mut r = row(i, i, CLINIC_A, Some(t));
        r["YXQ"] = json!("2027/12/31");
        r
    };
    produce_and_deliver(&node, &mah, &clinic_a, &[code(40)]);
    agent::sqlite_clinic_rows(&db_a, vec![late(40, "20261201090000")]);
    run_once(&cfg_a, "source clinic-ims: 1 accepted, 0 rejected, 0 quarantined");
    let a = alerts_of(&node, &regulator, &code(40));
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(
        a[0]["event"]["fields"]["rules"],
        json!(["recalled_used", "expired_used"]),
        "{a:?}"
    );

    // 9. The lot's release (批签发) recorded late, dated 2026-12-06: a dose
    // given before it is flagged too. (Dates stay in the past: the agent
    // quarantines records dated in the future.)
    let release = golden("lot_release", "mah-export.json").remove(0);
    let release = record(&from_source(&release, MAH_CODE), |e| {
        e.occurred_at = at("2026-12-06T16:30:00+08:00");
        e.recorded_at = e.occurred_at;
        e.fields.insert("lot_release_date".into(), json!("2026-12-06"));
    });
    let r = node.post_batch(&mah, "/v1/transactions", &[release]);
    assert_eq!(r.body["accepted"], 1, "{}", r.text);
    produce_and_deliver(&node, &mah, &clinic_a, &[code(41)]);
    agent::sqlite_clinic_rows(&db_a, vec![late(41, "20261205090000")]);
    run_once(&cfg_a, "source clinic-ims: 1 accepted, 0 rejected, 0 quarantined");
    // The holder's dispatch dated before the release is flagged as well.
    let a = alerts_of(&node, &regulator, &code(41));
    let of = |cat: &str| {
        a.iter()
            .find(|s| s["event"]["fields"]["related_category"] == cat)
            .unwrap_or_else(|| panic!("no alert about the {cat}: {a:?}"))
    };
    assert_eq!(of("outbound")["event"]["fields"]["rules"], json!(["before_release"]));
    let rules = &of("vaccination")["event"]["fields"]["rules"];
    assert_eq!(
        rules,
        &json!(["before_release", "recalled_used", "expired_used"]),
        "{rules}"
    );

    // 10. The lot's production restated by a later bill with other dates
    // (produced 2024-12-31, expires 2027-12-31): the latest statement
    // decides, so a dose given on 2026-12-05 is no longer expired. The gateway reads only the lot's deciding facts
    // (here the latest production bill's, not the forty before it).
    produce_and_deliver(&node, &mah, &clinic_a, &[code(42)]);
    let restated = record(&production(MAH_CODE, &[code(43)]), |e| {
        e.fields.insert("production_date".into(), json!("2024-12-31"));
        e.fields.insert("expiry_date".into(), json!("2027-12-31"));
    });
    let r = node.post_batch(&mah, "/v1/transactions", &[restated]);
    assert_eq!(r.body["accepted"], 1, "{}", r.text);
    agent::sqlite_clinic_rows(&db_a, vec![late(42, "20261205090000")]);
    run_once(&cfg_a, "source clinic-ims: 1 accepted, 0 rejected, 0 quarantined");
    let a = alerts_of(&node, &regulator, &code(42));
    let rules: Vec<&Value> = a.iter().map(|s| &s["event"]["fields"]["rules"]).collect();
    assert!(
        rules.contains(&&json!(["before_release", "recalled_used"])),
        "{rules:?}"
    );
}

/// Eight batches sent at once, each giving the same dose: the gateway judges
/// each against the others still being appended, so exactly one is written.
#[test]
fn concurrent_batches_cannot_give_one_dose_twice() {
    let node = Node::start();
    let mah = manufacturer(&node);
    let clinic = node.register("12320102MB1234567", "meiyuan", "vaccination_unit", &[CLINIC_A], None);
    for round in 0..3 {
        let dose = code(50 + round);
        produce_and_deliver(&node, &mah, &clinic, std::slice::from_ref(&dose));
        let vax = golden("vaccination", "clinic-ims.json").remove(0);
        let results: Vec<support::Resp> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let m = record(&from_source(&vax, CLINIC_A), |e| e.trace_codes = vec![dose.clone()]);
                    let (node, clinic) = (&node, &clinic);
                    s.spawn(move || node.post_batch(clinic, "/v1/transactions", &[m]))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let accepted = results.iter().filter(|r| r.body["accepted"] == 1).count();
        assert_eq!(accepted, 1, "round {round}: {results:?}");
        for r in results.iter().filter(|r| r.body["accepted"] == 0) {
            assert_eq!(r.body["results"][0]["error"]["code"], "custody_violation", "{}", r.text);
        }
    }
}

/// A carton of two doses: the trace of one dose holds its own records, its
/// carton's shipment (relation `parent`) and its lot's release (`lot`), in
/// time order, and nothing about the other dose unless asked
/// (`?siblings=true`); the carton's trace shows its doses as `child`.
#[test]
fn trace_relations_and_siblings() {
    let node = Node::start();
    let mah = manufacturer(&node);
    let clinic = node.register("12320102MB1234567", "meiyuan", "vaccination_unit", &[CLINIC_A], None);
    let carrier = node.register(
        "91320100MA1XYA121",
        "coldlink",
        "logistics",
        &["91110000100012345L"],
        None,
    );
    let regulator = node.register_regulator();
    let (u1, u2, carton) = (code(1), code(2), "86123450000000900001".to_string());
    let release = golden("lot_release", "mah-export.json").remove(0);
    let r = node.post_batch(&mah, "/v1/transactions", &[from_source(&release, MAH_CODE)]);
    assert_eq!(r.body["accepted"], 1, "{}", r.text);
    produce_and_deliver(&node, &mah, &clinic, &[u1.clone(), u2.clone()]);
    let ship = golden("shipment", "erp-shipment.json").remove(0);
    let ship = record(&from_source(&ship, "91110000100012345L"), |e| {
        e.trace_codes = vec![carton.clone()];
        e.aggregations = vec![mappings::AggregationLink {
            parent: carton.clone(),
            children: vec![u1.clone(), u2.clone()],
        }];
        e.occurred_at = at("2024-01-05T12:00:00+08:00");
        e.from = party(MAH_CODE);
        e.to = party(CLINIC_A);
    });
    let r = node.post_batch(&carrier, "/v1/transactions", &[ship]);
    assert_eq!(r.body["accepted"], 1, "{}", r.text);
    let vax = golden("vaccination", "clinic-ims.json").remove(0);
    let give = |c: &str, t: &str| {
        record(&from_source(&vax, CLINIC_A), |e| {
            e.trace_codes = vec![c.to_string()];
            e.occurred_at = at(t);
        })
    };
    let aefi = golden("aefi_report", "clinic-aefi.json").remove(0);
    let aefi = record(&from_source(&aefi, CLINIC_A), |e| e.trace_codes = vec![u2.clone()]);
    let r = node.post_batch(
        &clinic,
        "/v1/transactions",
        &[
            give(&u1, "2024-03-05T09:30:00+08:00"),
            give(&u2, "2024-03-05T10:30:00+08:00"),
            aefi,
        ],
    );
    assert_eq!(r.body["accepted"], 3, "{}", r.text);

    let read = |path: &str| {
        let r = node.signed(&regulator.key, "GET", path, Vec::new(), "");
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        r.body
    };
    let steps = |t: &Value| -> Vec<(String, String)> {
        t["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["category"].as_str().unwrap().to_string(),
                    s["relation"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    };
    let t = read(&format!("/v1/trace/{u1}"));
    assert_eq!(
        steps(&t),
        pairs(&[
            ("lot_release", "lot"),
            ("production_inbound", "self"),
            ("outbound", "self"),
            ("shipment", "parent"),
            ("inbound_receipt", "self"),
            ("vaccination", "self"),
        ]),
        "{t}"
    );
    let times: Vec<&str> = t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["occurred_at"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "steps in time order");
    assert!(!t.to_string().contains("aefi_report"), "no sibling's AEFI report: {t}");

    let t = read(&format!("/v1/trace/{u1}?siblings=true"));
    let with: Vec<(String, String)> = steps(&t);
    assert!(with.contains(&("vaccination".into(), "sibling".into())), "{t}");
    assert!(with.contains(&("aefi_report".into(), "sibling".into())), "{t}");
    let r = node.signed(
        &regulator.key,
        "GET",
        &format!("/v1/trace/{u1}?siblings=maybe"),
        Vec::new(),
        "",
    );
    assert_eq!((r.status, r.code()), (400, "invalid_parameter"), "{}", r.text);
    assert_eq!(
        r.body["error"]["message"], "siblings \"maybe\" is not true or false",
        "{}",
        r.text
    );

    let t = read(&format!("/v1/trace/{carton}"));
    let s = steps(&t);
    assert!(s.contains(&("shipment".into(), "self".into())), "{t}");
    assert_eq!(
        s.iter().filter(|(c, r)| c == "vaccination" && r == "child").count(),
        2,
        "{t}"
    );
}

/// A pending alert that no later record resolves is escalated after the
/// configured time, naming the pending alert and its rules; one resolved
/// in time is not.
#[test]
fn a_pending_alert_nothing_resolves_is_escalated() {
    let node = Node::start_with(support::NodeOptions {
        max_body: Some(support::MAX_BODY),
        config: "\n[custody]\nescalate_after_secs = 2\nescalation_check_secs = 1\n".into(),
        ..Default::default()
    });
    let mah = manufacturer(&node);
    let clinic = node.register("12320102MB1234567", "meiyuan", "vaccination_unit", &[CLINIC_A], None);
    let regulator = node.register_regulator();
    let vax = golden("vaccination", "clinic-ims.json").remove(0);
    let give = |c: String| record(&from_source(&vax, CLINIC_A), |e| e.trace_codes = vec![c]);
    let r = node.post_batch(&clinic, "/v1/transactions", &[give(code(70)), give(code(71))]);
    assert_eq!(r.body["accepted"], 2, "{}", r.text);
    let pending_id = r.body["results"][0]["custody"]["alerts"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Dose 71's production and delivery arrive at once: resolved, never escalated.
    produce_and_deliver(&node, &mah, &clinic, &[code(71)]);
    let types = |c: &str| -> Vec<String> {
        alerts_of(&node, &regulator, c)
            .iter()
            .map(|s| s["event"]["fields"]["alert_type"].as_str().unwrap().to_string())
            .collect()
    };
    let start = std::time::Instant::now();
    while !types(&code(70)).contains(&"provenance_escalated".to_string()) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "not escalated after 30 s: {:?}",
            alerts_of(&node, &regulator, &code(70))
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let a = alerts_of(&node, &regulator, &code(70));
    let esc = a
        .iter()
        .find(|s| s["event"]["fields"]["alert_type"] == "provenance_escalated")
        .unwrap();
    assert_eq!(esc["event"]["fields"]["pending_alert_id"], pending_id.as_str(), "{esc}");
    assert_eq!(esc["event"]["fields"]["rules"], json!(["unknown_code"]), "{esc}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(types(&code(71)), ["provenance_pending", "provenance_resolved"]);
    // Escalated once, however often the gateway looks.
    assert_eq!(
        types(&code(70)).iter().filter(|t| *t == "provenance_escalated").count(),
        1
    );
}

/// A ledger written when custody facts were one row each (`custody_facts`)
/// is moved, at the projection's opening, to one history per code: the
/// facts read back in full, the holders' stock candidates are kept, and the
/// old table is gone (so the move happens once).
#[test]
fn per_fact_custody_rows_are_moved_to_histories_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    old_custody_rows_migrate(&sqlite_url(dir.path()), dir.path());
}

#[test]
fn per_fact_custody_rows_are_moved_to_histories_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    old_custody_rows_migrate(&support::fresh_postgres_database(), dir.path());
}

fn old_custody_rows_migrate(url: &str, base: &Path) {
    let (rt, store) = open_store(url, base);
    rt.block_on(async {
        // The old table, as the previous version created it, with three
        // facts of one code (produced by mah, sent to and received by the
        // clinic) and one cancellation of another; then the new layout is
        // created over it as an upgraded gateway would find it.
        let old = [
            "CREATE TABLE custody_facts (code TEXT NOT NULL, leaf_index BIGINT NOT NULL,
                occurred_ms BIGINT NOT NULL, kind SMALLINT NOT NULL, actor TEXT NOT NULL, peer TEXT,
                doses INTEGER NOT NULL, event_id TEXT NOT NULL, cancels TEXT, lot TEXT, holder TEXT,
                PRIMARY KEY (code, leaf_index))",
            "CREATE INDEX custody_facts_holder ON custody_facts (holder, code)",
            "INSERT INTO custody_facts VALUES
                ('C1', 5, 1000, 1, 'mah', NULL, 1, '00000000-0000-0000-0000-000000000005', NULL, '8612345|L1', 'mah'),
                ('C1', 9, 2000, 2, 'mah', 'clinic', 1, '00000000-0000-0000-0000-000000000009', NULL, '8612345|L1', 'clinic'),
                ('C1', 12, 3000, 4, 'clinic', 'mah', 1, '00000000-0000-0000-0000-000000000012', NULL, '8612345|L1', 'clinic'),
                ('C2', 13, 4000, 10, 'clinic', NULL, 0, '00000000-0000-0000-0000-000000000013',
                 '00000000-0000-0000-0000-000000000012', NULL, NULL)",
        ];
        for s in old {
            run_sql(&store, s).await;
        }
        let p = gateway::projection::Projection::open(&store).await.unwrap();
        let mut facts = p.custody_facts(&["C1".into(), "C2".into()]).await.unwrap();
        facts.sort_by_key(|f| f.seq);
        type Row = (String, u64, i64, i16, String, Option<String>, Option<String>);
        let got: Vec<Row> = facts
            .iter()
            .map(|f| {
                (
                    f.code.clone(),
                    f.seq,
                    f.at_ms,
                    f.kind.as_i16(),
                    f.actor.clone(),
                    f.peer.clone(),
                    f.cancels.map(|c| c.to_string()),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("C1".into(), 5, 1000, 1, "mah".into(), None, None),
                ("C1".into(), 9, 2000, 2, "mah".into(), Some("clinic".into()), None),
                ("C1".into(), 12, 3000, 4, "clinic".into(), Some("mah".into()), None),
                (
                    "C2".into(),
                    13,
                    4000,
                    10,
                    "clinic".into(),
                    None,
                    Some("00000000-0000-0000-0000-000000000012".into())
                ),
            ]
        );
        assert_eq!(facts[0].lot.as_deref(), Some("8612345|L1"));
        assert_eq!(p.codes_left_with("clinic").await.unwrap(), vec!["C1".to_string()]);
        assert_eq!(p.codes_left_with("mah").await.unwrap(), vec!["C1".to_string()]);
        drop(p);
        // Opened again: the old table is gone, nothing is moved twice.
        let p = gateway::projection::Projection::open(&store).await.unwrap();
        assert_eq!(p.custody_facts(&["C1".into()]).await.unwrap().len(), 3);
        let left = match &store {
            ledger::AnyStore::Sqlite(x) => sqlx::query("SELECT 1 FROM custody_facts").execute(x.pool()).await.is_ok(),
            ledger::AnyStore::Postgres(x) => sqlx::query("SELECT 1 FROM custody_facts").execute(x.pool()).await.is_ok(),
        };
        assert!(!left, "custody_facts still exists after the move");
    });
}

/// The URL of a SQLite ledger in `dir`.
fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("ledger.db").display())
}

/// A runtime for a store-level test, and the ledger store at `url` opened on it.
fn open_store(url: &str, base: &Path) -> (tokio::runtime::Runtime, ledger::AnyStore) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(ledger::AnyStore::open(url, base)).unwrap();
    (rt, store)
}

/// Runs `sql` (written by the test) on the store's database.
async fn run_sql(store: &ledger::AnyStore, sql: &str) {
    let sql = sqlx::AssertSqlSafe(sql.to_string());
    match store {
        ledger::AnyStore::Sqlite(x) => {
            sqlx::query(sql).execute(x.pool()).await.unwrap();
        }
        ledger::AnyStore::Postgres(x) => {
            sqlx::query(sql).execute(x.pool()).await.unwrap();
        }
    }
}

#[test]
fn a_lots_deciding_facts_are_read_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    deciding_lot_facts(&sqlite_url(dir.path()), dir.path());
}

#[test]
fn a_lots_deciding_facts_are_read_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    deciding_lot_facts(&support::fresh_postgres_database(), dir.path());
}

/// Seventy lots (more than one statement's worth), each with production
/// bills that state or omit their dates, releases and recalls in no order:
/// what the projection reads for judging is, per lot, exactly the latest
/// fact stating a production date, the latest stating an expiry date, the
/// latest release and the earliest recall (by start, then ledger order).
fn deciding_lot_facts(url: &str, base: &Path) {
    let (rt, store) = open_store(url, base);
    rt.block_on(async {
        let p = gateway::projection::Projection::open(&store).await.unwrap();
        // (lot, leaf, kind, occurred_ms, day1, day2)
        type Row = (String, i64, i16, i64, Option<String>, Option<String>);
        let mut rows: Vec<Row> = Vec::new();
        let day = |d: i64| Some(format!("2024-01-{:02}", 1 + d % 28));
        for l in 0..70i64 {
            let lot = format!("8612345/L{l:03}");
            for k in 0..12i64 {
                let leaf = l * 100 + (k * 7 + l) % 12;
                let kind = [1, 1, 1, 2, 1, 3][(k % 6) as usize];
                // Every third production bill states no production date,
                // every fourth no expiry date; recall starts go down.
                let (d1, d2) = match kind {
                    1 => (
                        (k % 3 != 0).then(|| day(k + l)).flatten(),
                        (k % 4 != 0).then(|| day(k * 3)).flatten(),
                    ),
                    2 => (day(k), None),
                    _ => (None, None),
                };
                rows.push((lot.clone(), leaf, kind, 1_000_000 - k * 1000 - (l % 3), d1, d2));
            }
        }
        let text = |d: &Option<String>| d.as_ref().map_or("NULL".to_string(), |d| format!("'{d}'"));
        for r in &rows {
            let id = format!("00000000-0000-0000-0000-{:012}", r.1);
            let sql = format!(
                "INSERT INTO custody_lots (lot, leaf_index, kind, occurred_ms, day1, day2, ok, event_id) \
                 VALUES ('{}', {}, {}, {}, {}, {}, 1, '{id}')",
                r.0,
                r.1,
                r.2,
                r.3,
                text(&r.4),
                text(&r.5)
            );
            run_sql(&store, &sql).await;
        }
        let lots: Vec<String> = (0..70).map(|l| format!("8612345/L{l:03}")).collect();
        let mut got: Vec<(String, u64)> = p
            .deciding_lot_facts(&lots)
            .await
            .unwrap()
            .into_iter()
            .map(|f| (f.lot, f.seq))
            .collect();
        got.sort();
        got.dedup();
        let mut want: Vec<(String, u64)> = Vec::new();
        for lot in &lots {
            let of = |f: &dyn Fn(&&Row) -> bool| {
                rows.iter()
                    .filter(|r| &r.0 == lot)
                    .filter(f)
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let latest = |v: Vec<Row>| v.iter().map(|r| r.1).max();
            let picks = [
                latest(of(&|r| r.2 == 1 && r.4.is_some())),
                latest(of(&|r| r.2 == 1 && r.5.is_some())),
                latest(of(&|r| r.2 == 2)),
                of(&|r| r.2 == 3).iter().min_by_key(|r| (r.3, r.1)).map(|r| r.1),
            ];
            want.extend(picks.into_iter().flatten().map(|leaf| (lot.clone(), leaf as u64)));
        }
        want.sort();
        want.dedup();
        assert_eq!(got, want);
    });
}

/// The city CDC's organisation code in its stock system: the mapping's
/// `entity` and the sender or receiver its bills name, registered as one of
/// the CDC's codes (so its bills and the holder's dispatches to it name one
/// holder).
const CDC_CODE: &str = "3201000000";

/// The columns of the CDC stock system's view `V_YM_CRKD`, one row per bill
/// line, as the sandbox writes it (sandbox/src/write.rs, `CDC_VIEW`).
const CDC_COLUMNS: &[&str] = &[
    "DJH", "DJLX", "DJRQ", "FHDW_DM", "FHDW_MC", "SHDW_DM", "SHDW_MC", "FHDH", "FHDZ", "SHDZ", "FHR", "SHR", "WTQY",
    "YMBM", "YMMC", "PH", "SCRQ", "YXQZ", "SL", "YSSL", "YSJG", "WDJL", "ZSM", "BZJC", "THYY", "ZHJB", "ZHYY",
    "ZHTZBH", "BSYY", "XHFS", "ZXR", "JDR", "CZY",
];

/// A bill line of the CDC's stock system: bill `bill` of type `bill_type`
/// (102 receipt 入库, 203 outbound 出库, 205 loss 报损) dated `time`
/// (`yyyy-MM-dd HH:mm:ss`), from `from` to `to`, naming `codes` of [`LOT`].
fn cdc_row(bill: &str, bill_type: &str, time: &str, from: &str, to: Option<&str>, codes: &[String]) -> Value {
    let n = codes.len() as i64;
    let mut r = json!({
        "DJH": bill,
        "DJLX": bill_type,
        "DJRQ": time,
        "FHDW_DM": from,
        "SHDW_DM": to,
        "YMBM": "0201",
        "YMMC": "乙肝疫苗(酿酒酵母)",
        "PH": LOT,
        "YXQZ": "20261130",
        "SL": n,
        "ZSM": codes.join(","),
        "CZY": "孙磊",
    });
    match bill_type {
        "102" => {
            r["SCRQ"] = json!("20231201");
            r["YSSL"] = json!(n);
            r["YSJG"] = json!("合格");
            r["WDJL"] = json!("Y");
            r["BZJC"] = json!("1");
        }
        "203" => {
            r["SCRQ"] = json!("20231201");
            r["WTQY"] = json!(MAH_CODE);
            r["BZJC"] = json!("1");
        }
        "205" => {
            r["BSYY"] = json!("GQ");
            r["XHFS"] = json!("高压灭菌后医疗废物处置");
            r["ZXR"] = json!("钱进");
            r["JDR"] = json!("郑洁");
        }
        other => panic!("no bill line of type {other} here"),
    }
    r
}

/// Creates `V_YM_CRKD` (as a table with the view's columns; SL and YSSL
/// untyped, as in the sandbox's bill lines) in a SQLite file and inserts
/// `rows` (from [`cdc_row`]).
fn sqlite_cdc_rows(db: &Path, rows: Vec<Value>) {
    agent::sqlite_table_rows(
        db,
        "V_YM_CRKD",
        "DJH",
        CDC_COLUMNS,
        &|c| if matches!(c, "SL" | "YSSL") { "" } else { "TEXT" },
        rows,
    );
}

/// An agent reading `V_YM_CRKD` in `db` for the CDC `e`, whose stock system
/// reports as `cdc` (a copy of config/mappings/cdc-stock.toml with that
/// `entity`).
fn cdc_agent_config(node: &Node, dir: &Path, e: &Ent, cdc: &str, db: &Path) -> PathBuf {
    let spec = spec_copy(dir, "cdc-stock.toml", "12320100466001234B", cdc);
    let table = "table = \"V_YM_CRKD\"\nwatermark = \"DJRQ\"\nkey = \"DJH\"\n";
    sqlite_agent_config(node, dir, e, "cdc-stock", &spec, db, table)
}

/// The holder's production of `codes` (lot [`LOT`]), sent by it.
fn produce(node: &Node, mah: &Ent, codes: &[String]) {
    let r = node.post_batch(mah, "/v1/transactions", &[production(MAH_CODE, codes)]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["accepted"], 1, "{}", r.text);
}

/// The holder's dispatch (出库) of `codes` to the party `to`, dated
/// 2024-01-05 09:00.
fn mah_dispatch(to: &str, codes: &[String]) -> mappings::ExchangeMessage {
    dispatch(MAH_CODE, to, codes)
}

/// The alert types on `code`'s trace, in order.
fn alert_types(node: &Node, reader: &Ent, code: &str) -> Vec<String> {
    alerts_of(node, reader, code)
        .iter()
        .map(|s| s["event"]["fields"]["alert_type"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn cdc_stock_custody_rules_on_sqlite() {
    cdc_stock_custody_rules(Node::start());
}

#[test]
fn cdc_stock_custody_rules_on_postgres() {
    cdc_stock_custody_rules(Node::start_postgres());
}

/// The receipt and dispatch rules through the real agent reading a CDC's
/// legacy stock table (`V_YM_CRKD`, config/mappings/cdc-stock.toml): a
/// receipt (入库) of codes nobody sent to the CDC is kept pending
/// (`receipt_unmatched`) and resolved by the holder's dispatch that arrives
/// later; an outbound (出库) of a dose another organisation holds is kept
/// pending (`not_holder`); an outbound of a dose the CDC received and then
/// destroyed (报损) is refused (`destroyed_used`), quarantined by the agent
/// and refused again on replay.
fn cdc_stock_custody_rules(node: Node) {
    let mah = manufacturer(&node);
    let cdc = node.register("12320100MB2345678", "nj-cdc", "cdc", &[CDC_CODE], None);
    let clinic_a = node.register("12320102MB1234567", "meiyuan", "vaccination_unit", &[CLINIC_A], None);
    let regulator = node.register_regulator();
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("cdc.db");
    let cfg = cdc_agent_config(&node, work.path(), &cdc, CDC_CODE, &db);

    // 1. Doses 60 and 61 were produced; the CDC's receipt of them from the
    // holder arrives before any dispatch to the CDC: kept, pending.
    let unmatched = vec![code(60), code(61)];
    produce(&node, &mah, &unmatched);
    sqlite_cdc_rows(
        &db,
        vec![cdc_row(
            "RK20240106001",
            "102",
            "2024-01-06 10:00:00",
            MAH_CODE,
            Some(CDC_CODE),
            &unmatched,
        )],
    );
    run_once(&cfg, "source cdc-stock: 1 accepted, 0 rejected, 0 quarantined");
    for c in &unmatched {
        let a = alerts_of(&node, &regulator, c);
        assert_eq!(a.len(), 1, "{c}: {a:?}");
        let fields = &a[0]["event"]["fields"];
        assert_eq!(fields["alert_type"], "provenance_pending", "{fields}");
        assert_eq!(fields["rules"], json!(["receipt_unmatched"]), "{fields}");
        assert_eq!(fields["related_category"], "inbound_receipt", "{fields}");
        assert!(
            fields["alert_reason"].as_str().unwrap().contains(&cdc.id),
            "the receiver is named: {fields}"
        );
        assert_eq!(a[0]["signer"]["id"], "node");
    }
    // The holder's dispatch to the CDC (dated the day before the receipt)
    // arrives later: it resolves the pending receipt.
    let r = node.post_batch(&mah, "/v1/transactions", &[mah_dispatch(CDC_CODE, &unmatched)]);
    assert_eq!(r.body["accepted"], 1, "{}", r.text);
    let res = &r.body["results"][0]["custody"]["alerts"][0];
    assert_eq!(res["alert_type"], "provenance_resolved", "{}", r.text);
    for c in &unmatched {
        assert_eq!(
            alert_types(&node, &regulator, c),
            ["provenance_pending", "provenance_resolved"],
            "{c}"
        );
    }

    // 2. Dose 80 is produced and sent to the CDC, which receives it and
    // then destroys it (报损): both kept, nothing to say.
    let destroyed = vec![code(80)];
    produce(&node, &mah, &destroyed);
    let r = node.post_batch(&mah, "/v1/transactions", &[mah_dispatch(CDC_CODE, &destroyed)]);
    assert_eq!(r.body["accepted"], 1, "{}", r.text);
    sqlite_cdc_rows(
        &db,
        vec![
            cdc_row(
                "RK20240107001",
                "102",
                "2024-01-07 10:00:00",
                MAH_CODE,
                Some(CDC_CODE),
                &destroyed,
            ),
            cdc_row(
                "XH20240120001",
                "205",
                "2024-01-20 16:00:00",
                CDC_CODE,
                None,
                &destroyed,
            ),
        ],
    );
    run_once(&cfg, "source cdc-stock: 2 accepted, 0 rejected, 0 quarantined");
    assert_eq!(alerts_of(&node, &regulator, &code(80)), Vec::<Value>::new());

    // 3. The CDC's outbounds: dose 70, delivered to and held by clinic A
    // (no transfer to the CDC recorded), to clinic B: kept, pending; the
    // destroyed dose 80 to clinic A: refused and quarantined.
    produce_and_deliver(&node, &mah, &clinic_a, &[code(70)]);
    sqlite_cdc_rows(
        &db,
        vec![
            cdc_row(
                "CK20240201001",
                "203",
                "2024-02-01 09:00:00",
                CDC_CODE,
                Some(CLINIC_B),
                &[code(70)],
            ),
            cdc_row(
                "CK20240201002",
                "203",
                "2024-02-01 09:30:00",
                CDC_CODE,
                Some(CLINIC_A),
                &destroyed,
            ),
        ],
    );
    let out = run_once(&cfg, "source cdc-stock: 1 accepted, 1 rejected, 0 quarantined");
    assert!(out.contains("custody_violation"), "{out}");
    let pending = alerts_of(&node, &regulator, &code(70));
    assert_eq!(pending.len(), 1, "{pending:?}");
    let fields = &pending[0]["event"]["fields"];
    assert_eq!(fields["alert_type"], "provenance_pending", "{fields}");
    assert_eq!(fields["rules"], json!(["not_holder"]), "{fields}");
    assert_eq!(fields["related_category"], "outbound", "{fields}");
    assert!(
        fields["alert_reason"].as_str().unwrap().contains(&clinic_a.id),
        "the holder is named: {fields}"
    );
    let q = quarantine_reasons(&cfg);
    assert!(
        q.contains("CK20240201002") && q.contains("destroyed_used") && q.contains("1 entries"),
        "{q}"
    );
    assert!(!q.contains("CK20240201001") && !q.contains("not_holder"), "{q}");
    assert!(node.metric("vaxgate_custody_findings_total{action=\"refuse\",rule=\"destroyed_used\"}") >= 1.0);
    // Nothing of the refused outbound is in dose 80's trace.
    let steps = |c: &str| -> Vec<String> {
        steps_of(&node, &regulator, c)
            .iter()
            .map(|s| s["category"].as_str().unwrap().to_string())
            .collect()
    };
    let life = ["production_inbound", "outbound", "inbound_receipt", "loss_destruction"];
    assert_eq!(steps(&code(80)), life);

    // 4. A replay is judged again by the gateway: still refused.
    let o = agent::agent(&cfg, &["quarantine", "replay"]);
    let replay = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        replay.contains("replayed: 0 accepted, 0 still quarantined, 1 rejected by the gateway")
            && replay.contains("destroyed_used"),
        "{replay}"
    );
    assert_eq!(o.status.code(), Some(1), "{replay}");
    let q = quarantine_reasons(&cfg);
    assert!(q.contains("destroyed_used") && q.contains("1 entries"), "{q}");
    assert_eq!(steps(&code(80)), life);
}
