//! GS1 EPCIS 2.0 JSON-LD export (standards-facts §4).
//!
//! Each event becomes an `ObjectEvent` (bizStep, action and disposition
//! from the dataset category's `epcis` entry); each packaging link also
//! becomes an `AggregationEvent`. Chinese 20-digit trace codes are not GS1
//! keys, so they use the private URN scheme `urn:cn:nmpa:tc:<code>`;
//! organisations are `urn:cn:org:<code>`. Cold-chain reading sets carry a
//! `sensorElementList` with min/max/mean; an excursion (alarm state other
//! than normal, or readings outside the allowed range) adds a report with
//! `exception: "ALARM_CONDITION"` (`ERROR_CONDITION` for a device fault)
//! and sets the disposition to `non_conformant`. Personal data never
//! appears in the export.

use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::dataset::Dataset;
use crate::event::TraceEvent;

/// The EPCIS 2.0 JSON-LD context.
pub const EPCIS_CONTEXT: &str = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld";

fn tc(code: &str) -> String {
    format!("urn:cn:nmpa:tc:{code}")
}

fn org(code: &str) -> String {
    format!("urn:cn:org:{code}")
}

fn offset(e: &TraceEvent) -> String {
    e.occurred_at.format("%:z").to_string()
}

/// Converts events to an EPCIS document. `creationDate` is the latest
/// `recorded_at` of the events (so the output is deterministic).
pub fn to_epcis_document(events: &[TraceEvent], dataset: &Dataset) -> Value {
    let created = events
        .iter()
        .map(|e| e.recorded_at)
        .max()
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| "1970-01-01T00:00:00+00:00".into());
    let mut list = Vec::new();
    for e in events {
        list.extend(to_epcis_events(e, dataset));
    }
    json!({
        "@context": [EPCIS_CONTEXT, {"vaxgate": "https://example.invalid/vaxgate/epcis#"}],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": created,
        "epcisBody": {"eventList": list}
    })
}

/// The EPCIS events for one trace event (an ObjectEvent, plus one
/// AggregationEvent per packaging link).
pub fn to_epcis_events(e: &TraceEvent, dataset: &Dataset) -> Vec<Value> {
    let mut out = Vec::new();
    let (biz_step, mut action, mut disposition) = match dataset.category(&e.category) {
        Some(c) => (
            c.epcis.biz_step.clone(),
            c.epcis.action.clone(),
            c.epcis.disposition.clone(),
        ),
        None => ("other".to_string(), "OBSERVE".to_string(), "unknown".to_string()),
    };
    let mut o = Map::new();
    o.insert("type".into(), json!("ObjectEvent"));
    o.insert("eventID".into(), json!(format!("urn:uuid:{}", e.event_id)));
    o.insert("eventTime".into(), json!(e.occurred_at.to_rfc3339()));
    o.insert("eventTimeZoneOffset".into(), json!(offset(e)));
    o.insert("recordTime".into(), json!(e.recorded_at.to_rfc3339()));
    o.insert(
        "epcList".into(),
        Value::Array(e.trace_codes.iter().map(|c| json!(tc(c))).collect()),
    );
    if e.trace_codes.is_empty() {
        let qty = e.fields.get("quantity").and_then(Value::as_u64);
        let product = e.field_str("product_id_code").or_else(|| e.field_str("vaccine_code"));
        if let (Some(q), Some(p), Some(lot)) = (qty, product, e.field_str("lot_number")) {
            o.insert(
                "quantityList".into(),
                json!([{"epcClass": format!("urn:cn:nmpa:lot:{p}:{lot}"), "quantity": q}]),
            );
        }
    }
    let sensor = sensor_elements(e);
    if let Some((_, excursion)) = &sensor
        && *excursion
    {
        disposition = "non_conformant".into();
    }
    if e.category == "cancellation" {
        action = "DELETE".into();
    }
    o.insert("action".into(), json!(action));
    o.insert("bizStep".into(), json!(biz_step));
    o.insert("disposition".into(), json!(disposition));
    if let Some(d) = &e.device {
        o.insert("readPoint".into(), json!({"id": format!("urn:cn:device:{d}")}));
    }
    o.insert("bizLocation".into(), json!({"id": org(&e.source)}));
    let mut btl = Vec::new();
    if let Some(b) = e.field_str("bill_code") {
        let mut t = Map::new();
        if let Some(bt) = &e.bill_type {
            t.insert("type".into(), json!(format!("urn:cn:nmpa:billtype:{bt}")));
        }
        t.insert("bizTransaction".into(), json!(format!("urn:cn:nmpa:bill:{b}")));
        btl.push(Value::Object(t));
    }
    if let Some(s) = e.field_str("shipment_no") {
        btl.push(json!({"type": "desadv", "bizTransaction": format!("urn:cn:shipment:{s}")}));
    }
    if !btl.is_empty() {
        o.insert("bizTransactionList".into(), Value::Array(btl));
    }
    if let Some(f) = &e.from {
        o.insert(
            "sourceList".into(),
            json!([{"type": "owning_party", "source": org(&f.code)}]),
        );
    }
    if let Some(t) = &e.to {
        o.insert(
            "destinationList".into(),
            json!([{"type": "owning_party", "destination": org(&t.code)}]),
        );
    }
    if let Some((s, _)) = sensor {
        o.insert("sensorElementList".into(), s);
    }
    if action == "ADD" {
        let mut ilmd = Map::new();
        if let Some(l) = e.field_str("lot_number") {
            ilmd.insert("cbvmda:lotNumber".into(), json!(l));
        }
        if let Some(x) = e.field_str("expiry_date") {
            ilmd.insert("cbvmda:itemExpirationDate".into(), json!(x));
        }
        if let Some(p) = e.field_str("production_date") {
            ilmd.insert("cbvmda:productionDate".into(), json!(p));
        }
        if !ilmd.is_empty() {
            o.insert("ilmd".into(), Value::Object(ilmd));
        }
    }
    if let Some(c) = e.field_str("cancels_event_id") {
        o.insert("vaxgate:cancels".into(), json!(format!("urn:uuid:{c}")));
    }
    o.insert("vaxgate:category".into(), json!(e.category));
    out.push(Value::Object(o));
    for a in &e.aggregations {
        let id = Uuid::new_v5(&e.event_id, a.parent.as_bytes());
        out.push(json!({
            "type": "AggregationEvent",
            "eventID": format!("urn:uuid:{id}"),
            "eventTime": e.occurred_at.to_rfc3339(),
            "eventTimeZoneOffset": offset(e),
            "recordTime": e.recorded_at.to_rfc3339(),
            "parentID": tc(&a.parent),
            "childEPCs": a.children.iter().map(|c| tc(c)).collect::<Vec<_>>(),
            "action": "ADD",
            "bizStep": "packing",
            "disposition": "in_progress",
            "bizLocation": {"id": org(&e.source)},
        }));
    }
    out
}

/// The sensorElementList of a reading set and whether it is an excursion.
fn sensor_elements(e: &TraceEvent) -> Option<(Value, bool)> {
    let num = |k: &str| e.fields.get(k).and_then(Value::as_f64);
    let (min, max) = (num("temp_min")?, num("temp_max")?);
    let (lo, hi) = (num("range_low").unwrap_or(2.0), num("range_high").unwrap_or(8.0));
    let alarm = e.field_str("alarm_state").unwrap_or("0");
    let out_of_range = min < lo || max > hi;
    let mut meta = Map::new();
    if let Some(s) = e.field_str("period_start") {
        meta.insert("startTime".into(), json!(s));
    }
    if let Some(s) = e.field_str("period_end") {
        meta.insert("endTime".into(), json!(s));
    }
    if let Some(d) = &e.device {
        meta.insert("deviceID".into(), json!(format!("urn:cn:device:{d}")));
    }
    meta.insert(
        "bizRules".into(),
        json!(format!("urn:cn:vaxgate:rule:temperature:{lo}..{hi}")),
    );
    let mut report = Map::new();
    report.insert("type".into(), json!("gs1:Temperature"));
    report.insert("minValue".into(), json!(min));
    report.insert("maxValue".into(), json!(max));
    if let Some(m) = num("temp_mean") {
        report.insert("meanValue".into(), json!(m));
    }
    report.insert("uom".into(), json!("CEL"));
    let mut reports = vec![Value::Object(report)];
    if let Some(h) = num("humidity_mean") {
        reports.push(json!({"type": "gs1:RelativeHumidity", "meanValue": h, "uom": "A93"}));
    }
    let excursion = alarm != "0" || out_of_range;
    if excursion {
        let exception = if alarm == "3" {
            "ERROR_CONDITION"
        } else {
            "ALARM_CONDITION"
        };
        reports.push(json!({"type": "gs1:Temperature", "exception": exception, "uriValue": format!("urn:cn:vaxgate:alarm:{alarm}")}));
    }
    Some((
        json!([{"sensorMetadata": Value::Object(meta), "sensorReport": reports}]),
        excursion,
    ))
}
