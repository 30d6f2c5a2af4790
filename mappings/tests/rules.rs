//! Validation rules on hand-built events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mappings::{Dataset, TraceEvent, validate};
use serde_json::json;

fn event(category: &str, fields: serde_json::Value, extra: serde_json::Value) -> TraceEvent {
    let mut v = json!({
        "category": category,
        "eventID": "0b9a6a2e-5f0e-5d53-9a57-9d2f5cfa0f53",
        "occurredAt": "2024-03-05T09:30:00+08:00",
        "recordedAt": "2024-03-07T00:00:00+08:00",
        "source": "3201020001",
        "recordKey": "R1",
        "fields": fields,
    });
    if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in x {
            o.insert(k.clone(), val.clone());
        }
    }
    serde_json::from_value(v).unwrap()
}

fn rules(e: &TraceEvent) -> Vec<&'static str> {
    validate(e, &Dataset::builtin()).into_iter().map(|p| p.rule).collect()
}

fn inbound(fields: serde_json::Value) -> TraceEvent {
    let mut base = json!({
        "bill_code": "SC1", "bill_type": "101", "vaccine_name": "乙肝疫苗", "lot_number": "L1",
        "production_date": "2023-12-01", "expiry_date": "2026-11-30", "quantity": 1, "shelf_life_months": 36
    });
    for (k, v) in fields.as_object().unwrap() {
        base.as_object_mut().unwrap().insert(k.clone(), v.clone());
    }
    event(
        "production_inbound",
        base,
        json!({"traceCodes": ["86123450000000001001"]}),
    )
}

#[test]
fn expiry_rules() {
    assert!(
        rules(&inbound(json!({}))).is_empty(),
        "{:?}",
        rules(&inbound(json!({})))
    );
    assert!(rules(&inbound(json!({"expiry_date": "2026-12-01"}))).is_empty());
    assert!(rules(&inbound(json!({"expiry_date": "2026-12-31"}))).is_empty());
    assert_eq!(rules(&inbound(json!({"expiry_date": "2026-11-15"}))), ["expiry_rule"]);
    assert_eq!(
        rules(&inbound(json!({"expiry_date": "2023-11-01"}))),
        ["expiry_before_production"]
    );
}

#[test]
fn types_lengths_ranges_codes() {
    let r = rules(&inbound(
        json!({"quantity": "3", "bill_type": "999", "lot_number": "L".repeat(31)}),
    ));
    assert!(
        r.contains(&"type") && r.contains(&"code_table") && r.contains(&"max_length"),
        "{r:?}"
    );
    let r = rules(&inbound(json!({"quantity": 0})));
    assert_eq!(r, ["range"]);
}

#[test]
fn trace_code_rules() {
    let e = event(
        "outbound",
        json!({"bill_code": "C1", "bill_type": "201", "vaccine_name": "v", "lot_number": "L", "expiry_date": "2026-01-01", "quantity": 2, "principal_ent_id": "X"}),
        json!({
            "traceCodes": ["86123450000000001001", "86123450000000001001", "76123450000000001002", "86123450000000100001"],
            "aggregations": [{"parent": "86123450000000100001", "children": ["86123450000000001001"]}]
        }),
    );
    let r = rules(&e);
    for want in ["trace_code_duplicate", "trace_code_prefix", "parent_and_child"] {
        assert!(r.contains(&want), "{want} not in {r:?}");
    }
    let none = event(
        "outbound",
        json!({"bill_code": "C1", "bill_type": "201", "vaccine_name": "v", "lot_number": "L", "expiry_date": "2026-01-01", "quantity": 2}),
        json!({}),
    );
    let r = rules(&none);
    assert!(r.contains(&"trace_code_missing") && r.contains(&"required"), "{r:?}");
}

#[test]
fn parties_are_checked_as_uscc() {
    let e = inbound(json!({}));
    let mut bad = e.clone();
    bad.from = Some(mappings::Party {
        code: "91350100M000100Y44".into(),
        name: None,
    });
    assert_eq!(rules(&bad), ["uscc_check"]);
    bad.from = Some(mappings::Party {
        code: "91350100M000100Y43".into(),
        name: None,
    });
    assert!(rules(&bad).is_empty());
}

#[test]
fn cold_chain_and_shipment_rules() {
    let base = json!({"device_type": "02", "storage_place": "冰箱1", "period_start": "2024-03-05T00:00:00+08:00",
        "period_end": "2024-03-05T12:00:00+08:00", "reading_count": 10, "temp_min": 1.5, "temp_max": 6.0, "temp_mean": 4.0, "alarm_state": "0"});
    assert_eq!(
        rules(&event("cold_chain_readings", base.clone(), json!({}))),
        ["excursion_without_alarm"]
    );
    let mut b = base.clone();
    b["temp_mean"] = json!(9.0);
    b["alarm_state"] = json!("2");
    b["period_end"] = json!("2024-03-04T12:00:00+08:00");
    let r = rules(&event("cold_chain_readings", b, json!({})));
    assert_eq!(r, ["period_order", "reading_order"]);
    let ship = json!({"shipment_no": "Y1", "vehicle_plate": "苏A", "cold_storage_method": "1", "departure_time": "2024-03-05T10:00:00+08:00",
        "arrival_time": "2024-03-05T09:00:00+08:00", "departure_temp": 4.0, "arrival_temp": 9.5});
    assert_eq!(
        rules(&event("shipment", ship, json!({}))),
        ["arrival_before_departure", "temperature_excursion"]
    );
}

#[test]
fn receipt_without_temperature_record_is_refused() {
    let f = json!({"bill_code": "R1", "bill_type": "102", "vaccine_name": "v", "lot_number": "L", "expiry_date": "2026-01-01",
        "quantity": 1, "quantity_receivable": 1, "receipt_verified": "1", "temperature_record_complete": false});
    let e = event("inbound_receipt", f, json!({"traceCodes": ["86123450000000001001"]}));
    assert_eq!(rules(&e), ["receipt_without_temperature_record"]);
}

#[test]
fn categories_elements_and_pii_placement() {
    let e = event("vacination", json!({}), json!({}));
    let p = validate(&e, &Dataset::builtin());
    assert_eq!(p[0].rule, "category");
    assert!(p[0].message.contains("did you mean `vaccination`"), "{}", p[0]);
    let e = event(
        "cancellation",
        json!({"cancels_event_id": "0b9a6a2e-5f0e-5d53-9a57-9d2f5cfa0f53", "cancel_reason_code": "01",
        "recipient_name": "张三", "lot_numbr": "x"}),
        json!({}),
    );
    let r = rules(&e);
    assert!(
        r.contains(&"self_cancel") && r.contains(&"pii_in_fields") && r.contains(&"unknown_element"),
        "{r:?}"
    );
    let msg = validate(&e, &Dataset::builtin())
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(msg.contains("did you mean `lot_number`"), "{msg}");
}
