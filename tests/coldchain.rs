//! Cold-chain rules (R11.2) end to end over HTTP against the real `vaxgate
//! serve`: reading sets with an excursion or a gap raise node-written alert
//! events shown in traces and events; a warm shipment raises an alert; an
//! inbound receipt of a shipment whose temperature record is out of range
//! or missing is recorded as refused, and the holder of its codes does not
//! change, while a receipt of a conformant shipment moves it.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use support::{Node, from_source, golden};

const LOT: &str = "202311A05";

fn result(r: &support::Resp) -> &Value {
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["accepted"], 1, "{}", r.text);
    &r.body["results"][0]
}

#[test]
fn alerts_and_refused_receipts_on_sqlite() {
    alerts_and_refused_receipts(Node::start());
}

/// The same on PostgreSQL (the projection's shipment index and referrer
/// queries on the other backend).
#[test]
fn alerts_and_refused_receipts_on_postgres() {
    alerts_and_refused_receipts(Node::start_postgres());
}

fn alerts_and_refused_receipts(node: Node) {
    let cdc = node.register("12320100MB1234561", "nj-cdc", "cdc", &["12320100466001234B"], None);
    let logistics = node.register(
        "91320100MA1XYA121",
        "coldlink",
        "logistics",
        &["91110000100012345L"],
        None,
    );
    let receiver = node.register("12320102MB1234562", "xw-cdc", "cdc", &["123201024660123451"], None);
    let regulator = node.register_regulator();
    let alerts_metric = |t: &str| node.metric(&format!("vaxgate_cold_chain_alerts_total{{type=\"{t}\"}}"));
    let read = |path: &str| {
        let r = node.signed(&regulator.key, "GET", path, Vec::new(), "");
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        r.body
    };

    // 1. A reading set above the range: an excursion alert.
    let sets = golden("cold_chain_readings", "coldchain.json");
    let mut warm = from_source(&sets[1], "12320100466001234B");
    warm.payload.trace_codes = vec!["86123450000000001001".into()];
    let before = (node.transactions(), alerts_metric("excursion"));
    let r = node.post_batch(&cdc, "/v1/transactions", std::slice::from_ref(&warm));
    let res = result(&r);
    let alert = &res["cold_chain"]["alerts"][0];
    assert_eq!(alert["alert_type"], "excursion", "{}", r.text);
    assert!(alert["reason"].as_str().unwrap().contains("9.4 °C"), "{alert}");
    assert_eq!(node.transactions(), before.0 + 2, "the record and its alert");
    assert!(alerts_metric("excursion") >= before.1 + 1.0);
    let alert_id = alert["event_id"].as_str().unwrap().to_string();

    // Shown with the reading set, and as its own step in the code's trace.
    let ev = read(&format!("/v1/events/{}", warm.event_id));
    assert_eq!(ev["event"]["alerts"][0]["event_id"], alert_id.as_str(), "{ev}");
    let trace = read("/v1/trace/86123450000000001001");
    let steps = trace["steps"].as_array().unwrap();
    let a = steps
        .iter()
        .find(|s| s["category"] == "cold_chain_alert")
        .expect("alert step in the trace");
    assert_eq!(a["event_id"], alert_id.as_str());
    assert_eq!(a["signer"]["id"], "node");
    let fields = &a["event"]["fields"];
    assert_eq!(fields["related_event_id"], warm.event_id.to_string());
    assert_eq!(a["event"]["device"], "LK-NJ-0003");
    assert!(a["event"].get("pii").is_none());
    let alert_doc = read(&format!("/v1/events/{alert_id}"));
    assert_eq!(alert_doc["event"]["category"], "cold_chain_alert", "{alert_doc}");

    // 2. Too few readings for the period at the logging interval: a gap.
    let mut sparse = from_source(&sets[0], "12320100466001234B");
    sparse.payload.fields.insert("reading_count".into(), json!(100));
    let r = node.post_batch(&cdc, "/v1/transactions", &[sparse]);
    assert_eq!(result(&r)["cold_chain"]["alerts"][0]["alert_type"], "gap", "{}", r.text);

    // 3. A conformant set: no alert, one transaction.
    let t = node.transactions();
    let r = node.post_batch(&cdc, "/v1/transactions", &[from_source(&sets[0], "12320100466001234B")]);
    assert!(result(&r).get("cold_chain").is_none(), "{}", r.text);
    assert_eq!(node.transactions(), t + 1);

    // 4. Two shipments by the logistics firm (no receiver named, so the
    // firm holds the codes until a receipt): one conformant, one warm.
    let ship = golden("shipment", "erp-shipment.json").remove(0);
    let shipment = |no: &str, code: &str, arrival: f64| {
        let mut s = from_source(&ship, "91110000100012345L");
        s.payload.fields.insert("shipment_no".into(), json!(no));
        s.payload.fields.insert("arrival_temp".into(), json!(arrival));
        s.payload.trace_codes = vec![code.into()];
        s.payload.aggregations.clear();
        s.payload.to = None;
        s
    };
    let r = node.post_batch(
        &logistics,
        "/v1/transactions",
        &[shipment("YD-OK-1", "86123450000000002001", 5.0)],
    );
    assert!(result(&r).get("cold_chain").is_none(), "{}", r.text);
    let r = node.post_batch(
        &logistics,
        "/v1/transactions",
        &[shipment("YD-WARM-1", "86123450000000003001", 9.5)],
    );
    assert_eq!(
        result(&r)["cold_chain"]["alerts"][0]["alert_type"],
        "excursion",
        "{}",
        r.text
    );

    // 5. Receipts at the receiving CDC.
    let rec = golden("inbound_receipt", "cdc-stock.json").remove(0);
    let receipt = |no: &str, code: &str| {
        let mut m = from_source(&rec, "123201024660123451");
        m.payload.fields.insert("shipment_no".into(), json!(no));
        m.payload.fields.insert("bill_code".into(), json!(format!("RK-{no}")));
        m.payload.trace_codes = vec![code.into()];
        // After the shipments (2024-03-02T10:05).
        m.payload.occurred_at = chrono::DateTime::parse_from_rfc3339("2024-03-02T15:00:00+08:00").unwrap();
        m.payload.to = Some(mappings::Party {
            code: "123201024660123451".into(),
            name: None,
        });
        m
    };
    let ok = node.post_batch(
        &receiver,
        "/v1/transactions",
        &[receipt("YD-OK-1", "86123450000000002001")],
    );
    assert!(result(&ok).get("cold_chain").is_none(), "{}", ok.text);

    let refused_metric = alerts_metric("receipt_refused");
    let warm_receipt = receipt("YD-WARM-1", "86123450000000003001");
    let r = node.post_batch(&receiver, "/v1/transactions", std::slice::from_ref(&warm_receipt));
    let cc = &result(&r)["cold_chain"];
    assert_eq!(cc["receipt_status"], "refused", "{}", r.text);
    let reason = cc["refusal_reason"].as_str().unwrap();
    assert!(
        reason.contains("shipment YD-WARM-1") && reason.contains("arrival temp 9.5 °C"),
        "{reason}"
    );
    assert!(alerts_metric("receipt_refused") >= refused_metric + 1.0);

    let r = node.post_batch(
        &receiver,
        "/v1/transactions",
        &[receipt("YD-MISSING-1", "86123450000000004001")],
    );
    let cc = &result(&r)["cold_chain"];
    assert_eq!(cc["receipt_status"], "refused");
    assert!(
        cc["refusal_reason"]
            .as_str()
            .unwrap()
            .contains("YD-MISSING-1 has no temperature record"),
        "{cc}"
    );

    // A receipt that names no shipment: the latest shipment to the
    // receiver carrying its code is found by trace code.
    let mut to_receiver = shipment("YD-TO-1", "86123450000000006001", 8.9);
    to_receiver.payload.to = Some(mappings::Party {
        code: "123201024660123451".into(),
        name: None,
    });
    let r = node.post_batch(&logistics, "/v1/transactions", &[to_receiver]);
    assert_eq!(
        result(&r)["cold_chain"]["alerts"][0]["alert_type"],
        "excursion",
        "{}",
        r.text
    );
    let mut unnamed = receipt("unused", "86123450000000006001");
    unnamed.payload.fields.remove("shipment_no");
    let r = node.post_batch(&receiver, "/v1/transactions", &[unnamed]);
    let reason = result(&r)["cold_chain"]["refusal_reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("shipment YD-TO-1: arrival temp 8.9 °C"), "{}", r.text);

    // The custody chain shows the refusal; the receipt is in the ledger.
    let trace = read("/v1/trace/86123450000000003001");
    let step = trace["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["category"] == "inbound_receipt")
        .expect("the refused receipt is in the chain");
    assert_eq!(step["event_id"], warm_receipt.event_id.to_string());
    assert_eq!(step["receipt_status"], "refused", "{step}");
    assert!(step["refusal_reason"].as_str().unwrap().contains("YD-WARM-1"));
    // The refusal and alerts a step shows are checked against the alert
    // steps the answer holds.
    let dir = tempfile::tempdir().unwrap();
    let check = |answer: &Value| {
        let f = dir.path().join("trace.json");
        std::fs::write(&f, answer.to_string()).unwrap();
        node.verify_proof(&f)
    };
    let (code, out) = check(&trace);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("annotations: ") && !out.contains("annotations: 0 checked"),
        "{out}"
    );
    let at = trace["steps"]
        .as_array()
        .unwrap()
        .iter()
        .position(|s| s["event_id"] == warm_receipt.event_id.to_string())
        .unwrap();
    let mut changed = trace.clone();
    changed["steps"][at].as_object_mut().unwrap().remove("receipt_status");
    let (code, out) = check(&changed);
    assert!(code == 1 && out.contains("receipt_status"), "{out}");
    let mut changed = trace.clone();
    changed["steps"][at].as_object_mut().unwrap().remove("alerts");
    changed["steps"][at].as_object_mut().unwrap().remove("receipt_status");
    changed["steps"][at].as_object_mut().unwrap().remove("refusal_reason");
    let (code, out) = check(&changed);
    assert!(code == 1 && out.contains("its annotations leave that out"), "{out}");
    let mut changed = trace.clone();
    changed["steps"][at]["alerts"][0]["reason"] = json!("no reason");
    let (code, out) = check(&changed);
    assert!(code == 1 && out.contains("is not what that step says"), "{out}");

    // Recall: the accepted receipt moved its code into the receiver's
    // stock; the refused one is with the receiver but not in its stock.
    let recall = read(&format!("/v1/batches/{LOT}/recall"));
    let of = |code: &str| {
        recall["codes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["code"] == code)
            .map(|c| {
                (
                    c["state"].as_str().unwrap().to_string(),
                    c["holder"].as_str().unwrap().to_string(),
                )
            })
            .unwrap_or_else(|| panic!("{code} not in {recall}"))
    };
    assert_eq!(of("86123450000000002001"), ("held".to_string(), receiver.id.clone()));
    assert_eq!(
        of("86123450000000003001"),
        ("refused_at_receipt".to_string(), receiver.id.clone())
    );
    let stock = recall["held_by"].as_array().unwrap();
    let mine = stock
        .iter()
        .find(|h| h["holder"]["id"] == receiver.id.as_str())
        .unwrap();
    let held_here = recall["codes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "unit" && c["state"] == "held" && c["holder"] == receiver.id.as_str())
        .count();
    assert_eq!(mine["units"], held_here, "{recall}");
    // The three refused deliveries (YD-WARM-1, YD-MISSING-1, YD-TO-1).
    assert_eq!(recall["refused_at_receipt"][0]["units"], 3, "{recall}");
    // With its evidence, the recall's counts (the refused receipts among
    // them, from the cold-chain alerts) are recounted by verify-proof.
    let evidence = read(&format!("/v1/batches/{LOT}/recall?evidence=true"));
    assert_eq!(evidence["refused_at_receipt"], recall["refused_at_receipt"]);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("recall.json");
    std::fs::write(&file, evidence.to_string()).unwrap();
    let (code, out) = node.verify_proof(&file);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("recall counts OK") && out.contains("3 refused at receipt"),
        "{out}"
    );
    // The receiver's stock with its evidence, read by itself (it holds
    // the codes, so it may read their history) and by the regulator.
    let own = node.signed(
        &receiver.key,
        "GET",
        &format!("/v1/holders/{}/stock?evidence=true", receiver.id),
        Vec::new(),
        "",
    );
    assert_eq!(own.status, 200, "{}", own.text);
    let stock = read(&format!("/v1/holders/{}/stock?evidence=true", receiver.id));
    assert_eq!(stock["lots"], own.body["lots"]);
    let refused: u64 = stock["lots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["refused_at_receipt"].as_u64().unwrap())
        .sum();
    assert_eq!(refused, 3, "{stock}");
    std::fs::write(&file, own.body.to_string()).unwrap();
    let (code, out) = node.verify_proof(&file);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("stock counts OK"), "{out}");
    // A refused unit passed off as held: named.
    let mut changed = stock.clone();
    let lot = changed["lots"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|l| l["refused_at_receipt"].as_u64() > Some(0))
        .unwrap();
    lot["units"] = json!(lot["units"].as_u64().unwrap() + 1);
    lot["refused_at_receipt"] = json!(lot["refused_at_receipt"].as_u64().unwrap() - 1);
    changed["units"] = json!(changed["units"].as_u64().unwrap() + 1);
    std::fs::write(&file, changed.to_string()).unwrap();
    let (code, out) = node.verify_proof(&file);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("ANSWER INVALID: stock of {}: lot ", receiver.id)) && out.contains("refused"),
        "{out}"
    );

    // Alerts carry no personal data: the receipt's contact names stay out.
    let alert_id = cc["alerts"][0]["event_id"].as_str().unwrap();
    let a = read(&format!("/v1/events/{alert_id}"));
    let text = a.to_string();
    for name in ["周敏", "孙磊"] {
        assert!(!text.contains(name), "{name} in {text}");
    }

    // The custody state derived again from the ledger's events (its tables
    // lost, as when a projection is rebuilt): the same recall, the three
    // refused receipts still refused.
    let mut node = node;
    node.kill();
    drop_custody_tables(&node.db);
    node.serve();
    let r = node.signed(
        &regulator.key,
        "GET",
        &format!("/v1/batches/{LOT}/recall"),
        Vec::new(),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, recall);
}

/// Drops every custody table of the node's database, as someone rebuilding
/// its projection would; the gateway derives them again at start.
fn drop_custody_tables(db: &str) {
    let sql = ["codes", "holders", "lots", "pending", "escalated", "resolved", "marks"]
        .map(|t| format!("DROP TABLE custody_{t};"))
        .concat();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        if db.starts_with("postgres") {
            let pool = sqlx::PgPool::connect(db).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap();
            pool.close().await;
        } else {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite:{db}")).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap();
            pool.close().await;
        }
    });
}
