//! Cold-chain rules (R11.2, vaccine law art. 39; 疫苗储存和运输管理规范).
//!
//! Pure functions over [`TraceEvent`]s; the ingest route calls them and
//! writes what they find to the ledger:
//! * a reading set (`cold_chain_readings`) whose minimum, maximum or any
//!   single reading lies outside the allowed range, whose device reports a
//!   temperature or power alarm, or whose readings leave a gap longer than
//!   the logging interval, raises an **alert event** ([`alert_event`]): a
//!   node-written transaction in category [`ALERT_CATEGORY`] that names the
//!   reading set, its device, shipment and trace codes, and carries no
//!   personal data;
//! * a shipment whose departure or arrival temperature is out of range
//!   raises an alert the same way;
//! * an inbound receipt of a shipment whose temperature record is missing or
//!   out of range is **refused** ([`assess_receipt`]): the receipt stays in
//!   the ledger, and an alert of type `receipt_refused` with the reason is
//!   linked to it, so the custody chain shows the refusal and the holder of
//!   the codes does not change.
//!
//! The allowed range is the record's own `range_low`/`range_high` when it
//! carries them, else 2–8 °C (most vaccines). The logging interval is the
//! record's `log_interval_min` when present, else 5 minutes in transport
//! (a cold truck or cold box, or a reading set tied to a shipment) and 30
//! minutes in storage. A gap is "longer than the interval" when it exceeds
//! the interval by more than a tenth of it (loggers jitter by seconds).

use chrono::{DateTime, FixedOffset, Utc};
use mappings::TraceEvent;
use serde::Serialize;
use serde_json::{Map, Value};

/// The ledger category of node-written cold-chain alerts. It is not a
/// dataset category: nobody can submit it, only the gateway node writes it.
pub const ALERT_CATEGORY: &str = mappings::custody::COLD_CHAIN_ALERT;
/// The signer name of node-written transactions.
pub const NODE_SIGNER: &str = "node";
/// The default allowed range (°C) for most vaccines.
pub const DEFAULT_RANGE: (f64, f64) = (2.0, 8.0);
/// Logging interval in transport (minutes).
pub const TRANSPORT_INTERVAL_MIN: i64 = 5;
/// Logging interval in storage (minutes).
pub const STORAGE_INTERVAL_MIN: i64 = 30;

/// What kind of problem a rule found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertType {
    /// A temperature outside the allowed range.
    Excursion,
    /// A gap between readings longer than the logging interval.
    Gap,
    /// The device reported a fault or a power cut.
    DeviceAlarm,
    /// An inbound receipt refused for its temperature record.
    ReceiptRefused,
}

impl AlertType {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertType::Excursion => "excursion",
            AlertType::Gap => "gap",
            AlertType::DeviceAlarm => "device_alarm",
            AlertType::ReceiptRefused => mappings::custody::RECEIPT_REFUSED,
        }
    }
}

/// One finding of a rule, for a person (no personal data).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Kind.
    pub alert_type: AlertType,
    /// What was wrong, with values.
    pub reason: String,
}

fn num(ev: &TraceEvent, key: &str) -> Option<f64> {
    match ev.fields.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn time(v: &Value) -> Option<DateTime<FixedOffset>> {
    match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s).ok(),
        Value::Number(n) => {
            let secs = n.as_i64()?;
            // Seconds or milliseconds since the Unix epoch.
            let ms = if secs > 100_000_000_000 { secs } else { secs * 1000 };
            DateTime::<Utc>::from_timestamp_millis(ms).map(|t| t.fixed_offset())
        }
        _ => None,
    }
}

/// The allowed range of a record: its own bounds, else [`DEFAULT_RANGE`].
pub fn range_of(ev: &TraceEvent) -> (f64, f64) {
    (
        num(ev, "range_low").unwrap_or(DEFAULT_RANGE.0),
        num(ev, "range_high").unwrap_or(DEFAULT_RANGE.1),
    )
}

/// The logging interval of a reading set (minutes).
pub fn interval_of(ev: &TraceEvent) -> i64 {
    if let Some(i) = num(ev, "log_interval_min")
        && i >= 1.0
    {
        return i as i64;
    }
    let transport = matches!(ev.field_str("device_type"), Some("03" | "04")) || ev.field_str("shipment_no").is_some();
    if transport {
        TRANSPORT_INTERVAL_MIN
    } else {
        STORAGE_INTERVAL_MIN
    }
}

fn fmt_t(t: f64) -> String {
    format!("{t:.1} °C")
}

/// The findings of a reading set: excursions, device alarms and gaps.
pub fn assess_readings(ev: &TraceEvent) -> Vec<Finding> {
    let mut out = Vec::new();
    let (low, high) = range_of(ev);
    let range = format!("{}–{}", fmt_t(low), fmt_t(high));
    let (min, max) = (num(ev, "temp_min"), num(ev, "temp_max"));
    if let Some(m) = min
        && m < low
    {
        out.push(Finding {
            alert_type: AlertType::Excursion,
            reason: format!("minimum temperature {} is below the allowed range {range}", fmt_t(m)),
        });
    }
    if let Some(m) = max
        && m > high
    {
        out.push(Finding {
            alert_type: AlertType::Excursion,
            reason: format!("maximum temperature {} is above the allowed range {range}", fmt_t(m)),
        });
    }
    let readings: Vec<(DateTime<FixedOffset>, Option<f64>)> = ev
        .fields
        .get("readings")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| Some((time(r.get("t")?)?, r.get("v").and_then(Value::as_f64))))
                .collect()
        })
        .unwrap_or_default();
    let outside: Vec<&(DateTime<FixedOffset>, Option<f64>)> = readings
        .iter()
        .filter(|(_, v)| v.is_some_and(|v| v < low || v > high))
        .collect();
    if let Some((t, Some(v))) = outside.first()
        && !out.iter().any(|f| f.alert_type == AlertType::Excursion)
    {
        out.push(Finding {
            alert_type: AlertType::Excursion,
            reason: format!(
                "{} reading(s) outside the allowed range {range}, the first {} at {}",
                outside.len(),
                fmt_t(*v),
                t.to_rfc3339()
            ),
        });
    }
    match ev.field_str("alarm_state") {
        Some("1" | "2") if !out.iter().any(|f| f.alert_type == AlertType::Excursion) => out.push(Finding {
            alert_type: AlertType::Excursion,
            reason: format!(
                "the device reports a {} alarm (alarm_state {})",
                if ev.field_str("alarm_state") == Some("1") {
                    "high-temperature"
                } else {
                    "low-temperature"
                },
                ev.field_str("alarm_state").unwrap_or_default()
            ),
        }),
        Some(s @ ("3" | "4")) => out.push(Finding {
            alert_type: AlertType::DeviceAlarm,
            reason: format!(
                "the device reports {} (alarm_state {s})",
                if s == "3" { "a fault" } else { "a power cut" }
            ),
        }),
        _ => {}
    }
    if let Some(g) = gap(ev, &readings) {
        out.push(g);
    }
    out
}

fn gap(ev: &TraceEvent, readings: &[(DateTime<FixedOffset>, Option<f64>)]) -> Option<Finding> {
    let interval = interval_of(ev);
    let allowed_ms = interval * 60_000 + interval * 6_000; // interval + 10 %
    let start = ev.fields.get("period_start").and_then(time);
    let end = ev.fields.get("period_end").and_then(time);
    if !readings.is_empty() {
        let mut ts: Vec<DateTime<FixedOffset>> = readings.iter().map(|(t, _)| *t).collect();
        ts.sort();
        let mut points = Vec::with_capacity(ts.len() + 2);
        points.extend(start.filter(|s| ts.first().is_some_and(|f| s < f)));
        points.extend(ts.iter().copied());
        points.extend(end.filter(|e| ts.last().is_some_and(|l| e > l)));
        let worst = points
            .windows(2)
            .map(|w| (w[0], w[1], (w[1] - w[0]).num_milliseconds()))
            .max_by_key(|(_, _, d)| *d)?;
        return (worst.2 > allowed_ms).then(|| Finding {
            alert_type: AlertType::Gap,
            reason: format!(
                "no reading between {} and {} ({} min; the logging interval is {interval} min)",
                worst.0.to_rfc3339(),
                worst.1.to_rfc3339(),
                worst.2 / 60_000
            ),
        });
    }
    // Only a count: n readings split the period into n + 1 stretches, so
    // the longest is at least period / (n + 1).
    let (start, end) = (start?, end?);
    let period_ms = (end - start).num_milliseconds();
    let n = num(ev, "reading_count")?.max(0.0) as i64;
    if period_ms <= 0 || period_ms <= (n + 1) * allowed_ms {
        return None;
    }
    let expected = period_ms / (interval * 60_000) + 1;
    Some(Finding {
        alert_type: AlertType::Gap,
        reason: format!(
            "{n} reading(s) between {} and {}, at least {expected} expected at a {interval}-min logging interval; \
             some gap exceeds the interval",
            start.to_rfc3339(),
            end.to_rfc3339()
        ),
    })
}

/// The findings of a shipment record: departure or arrival temperature out
/// of range.
pub fn assess_shipment(ev: &TraceEvent) -> Vec<Finding> {
    let (low, high) = range_of(ev);
    ["departure_temp", "arrival_temp"]
        .iter()
        .filter_map(|k| {
            let t = num(ev, k)?;
            (t < low || t > high).then(|| Finding {
                alert_type: AlertType::Excursion,
                reason: format!(
                    "{} {} is outside the allowed range {}–{}",
                    k.replace('_', " "),
                    fmt_t(t),
                    fmt_t(low),
                    fmt_t(high)
                ),
            })
        })
        .collect()
}

/// Why an inbound receipt must be refused, if it must. `shipments` are the
/// shipment records of the delivery (by shipment number or trace code) and
/// `readings` the reading sets of the shipment; both may be empty.
pub fn assess_receipt(receipt: &TraceEvent, shipments: &[TraceEvent], readings: &[TraceEvent]) -> Option<String> {
    if receipt.fields.get("temperature_record_complete") == Some(&Value::Bool(false)) {
        return Some("the receiver reports that the temperature record of the delivery is incomplete".into());
    }
    let shipment_no = receipt.field_str("shipment_no");
    if let Some(no) = shipment_no
        && shipments.is_empty()
        && readings.is_empty()
    {
        return Some(format!("shipment {no} has no temperature record in the ledger"));
    }
    for s in shipments {
        if let Some(f) = assess_shipment(s).first() {
            let no = s.field_str("shipment_no").unwrap_or(&s.record_key);
            return Some(format!("shipment {no}: {}", f.reason));
        }
    }
    for r in readings {
        if let Some(f) = assess_readings(r).first() {
            let dev = r.device.as_deref().unwrap_or("unknown device");
            return Some(format!("reading set {} of {dev}: {}", r.event_id, f.reason));
        }
    }
    None
}

/// The alert event for `finding` about `related`: no personal data, linked
/// by `related_event_id`, with the related record's device, shipment number
/// and the affected trace `codes`. Its id is derived from the related event
/// and the alert type, so a repeated assessment yields the same event.
pub fn alert_event(related: &TraceEvent, finding: &Finding, codes: Vec<String>, now: DateTime<Utc>) -> TraceEvent {
    let record_key = format!("{}/{}", related.event_id, finding.alert_type.as_str());
    let mut fields = Map::new();
    fields.insert("alert_type".into(), finding.alert_type.as_str().into());
    fields.insert("alert_reason".into(), finding.reason.clone().into());
    fields.insert("related_event_id".into(), related.event_id.to_string().into());
    fields.insert("related_category".into(), related.category.clone().into());
    for k in [
        "shipment_no",
        "temp_min",
        "temp_max",
        "range_low",
        "range_high",
        "log_interval_min",
        "lot_number",
    ] {
        if let Some(v) = related.fields.get(k) {
            fields.insert(k.into(), v.clone());
        }
    }
    if !fields.contains_key("range_low") && related.category != "inbound_receipt" {
        let (low, high) = range_of(related);
        fields.insert("range_low".into(), low.into());
        fields.insert("range_high".into(), high.into());
    }
    let mut codes = codes;
    codes.sort();
    codes.dedup();
    TraceEvent {
        category: ALERT_CATEGORY.into(),
        event_id: TraceEvent::derive_id(NODE_SIGNER, ALERT_CATEGORY, &record_key),
        occurred_at: related.occurred_at,
        recorded_at: now.fixed_offset(),
        source: related.source.clone(),
        device: related.device.clone(),
        record_key,
        bill_type: None,
        trace_codes: codes,
        aggregations: Vec::new(),
        from: None,
        to: None,
        fields,
        pii: Default::default(),
    }
}

/// The trace codes a record touches (its codes and packaging links).
pub fn codes_of(ev: &TraceEvent) -> Vec<String> {
    let mut c = ev.trace_codes.clone();
    for a in &ev.aggregations {
        c.push(a.parent.clone());
        c.extend(a.children.iter().cloned());
    }
    c.sort();
    c.dedup();
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn golden(cat: &str, file: &str) -> Vec<TraceEvent> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../mappings/tests/golden/{cat}/{file}"));
        let v: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        v.into_iter()
            .map(|m| mappings::exchange::from_json(&m.to_string()).unwrap().payload)
            .collect()
    }

    fn readings() -> TraceEvent {
        golden("cold_chain_readings", "coldchain.json").remove(0)
    }

    #[test]
    fn conformant_set_has_no_findings() {
        let ev = readings();
        assert_eq!(ev.fields["alarm_state"], "0");
        assert_eq!(assess_readings(&ev), vec![]);
    }

    #[test]
    fn excursion_by_min_max_alarm_and_single_reading() {
        let golden = golden("cold_chain_readings", "coldchain.json");
        let f = assess_readings(&golden[1]);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].alert_type, AlertType::Excursion);
        assert!(f[0].reason.contains("maximum temperature 9.4 °C"), "{}", f[0].reason);

        let mut ev = readings();
        ev.fields.insert("temp_min".into(), json!(1.2));
        let f = assess_readings(&ev);
        assert!(f[0].reason.contains("below the allowed range 2.0 °C–8.0 °C"), "{f:?}");

        // A frozen-vaccine range moves the bounds.
        let mut ev = readings();
        ev.fields.insert("range_low".into(), json!(-25.0));
        ev.fields.insert("range_high".into(), json!(-15.0));
        assert!(!assess_readings(&ev).is_empty());

        // One reading outside the range although min/max were summarised wrongly.
        let mut ev = readings();
        ev.fields.insert("log_interval_min".into(), json!(360));
        ev.fields.insert(
            "readings".into(),
            json!([{"t": "2024-03-05T00:00:00+08:00", "v": 4.0}, {"t": "2024-03-05T06:00:00+08:00", "v": 8.6},
                   {"t": "2024-03-05T12:00:00+08:00", "v": 5.0}]),
        );
        let f = assess_readings(&ev);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].reason.contains("1 reading(s) outside"), "{}", f[0].reason);

        let mut ev = readings();
        ev.fields.insert("alarm_state".into(), json!("4"));
        assert_eq!(assess_readings(&ev)[0].alert_type, AlertType::DeviceAlarm);
    }

    #[test]
    fn gaps_by_timestamps_and_by_count() {
        let mut ev = readings();
        ev.fields.insert(
            "readings".into(),
            json!([{"t": "2024-03-05T00:00:00+08:00", "v": 4.0}, {"t": "2024-03-05T00:05:00+08:00", "v": 4.1},
                   {"t": "2024-03-05T00:25:00+08:00", "v": 4.2}]),
        );
        ev.fields
            .insert("period_end".into(), json!("2024-03-05T00:25:00+08:00"));
        let f = assess_readings(&ev);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].alert_type, AlertType::Gap);
        assert!(
            f[0].reason.contains("(20 min; the logging interval is 5 min)"),
            "{}",
            f[0].reason
        );

        // Unix-second timestamps within the interval (+10 % jitter): no gap.
        ev.fields.insert(
            "readings".into(),
            json!([{"t": 1709568000, "v": 4.0}, {"t": 1709568330, "v": 4.0}, {"t": 1709568600, "v": 4.0},
                   {"t": 1709568900, "v": 4.0}, {"t": 1709569200, "v": 4.0}, {"t": 1709569500, "v": 4.0}]),
        );
        assert_eq!(assess_readings(&ev), vec![], "1709569500 is 00:25 +08:00");

        // Count only: 12 h at 5 min needs about 145 readings; 100 leave a gap.
        let mut ev = readings();
        ev.fields.insert("reading_count".into(), json!(100));
        let f = assess_readings(&ev);
        assert_eq!(f[0].alert_type, AlertType::Gap, "{f:?}");
        // Storage without a declared interval: 30 min.
        ev.fields.remove("log_interval_min");
        ev.fields.insert("reading_count".into(), json!(25));
        assert_eq!(interval_of(&ev), STORAGE_INTERVAL_MIN);
        assert_eq!(assess_readings(&ev), vec![]);
        ev.fields.insert("device_type".into(), json!("03"));
        assert_eq!(interval_of(&ev), TRANSPORT_INTERVAL_MIN);
        assert!(!assess_readings(&ev).is_empty());
    }

    #[test]
    fn receipts_refused_for_missing_or_out_of_range_records() {
        let mut receipt = golden("inbound_receipt", "cdc-stock.json").remove(0);
        let shipment = golden("shipment", "erp-shipment.json").remove(0);
        assert_eq!(
            assess_receipt(&receipt, &[], &[]),
            None,
            "no shipment named: the flag decides"
        );
        receipt.fields.insert("shipment_no".into(), json!("YD20240302001"));
        let r = assess_receipt(&receipt, &[], &[]).unwrap();
        assert!(r.contains("has no temperature record"), "{r}");
        assert_eq!(assess_receipt(&receipt, std::slice::from_ref(&shipment), &[]), None);
        let mut warm = shipment.clone();
        warm.fields.insert("arrival_temp".into(), json!(9.5));
        let r = assess_receipt(&receipt, &[warm], &[]).unwrap();
        assert!(r.contains("arrival temp 9.5 °C is outside"), "{r}");
        let bad_set = golden("cold_chain_readings", "coldchain.json").remove(1);
        let r = assess_receipt(&receipt, std::slice::from_ref(&shipment), &[bad_set]).unwrap();
        assert!(r.starts_with("reading set"), "{r}");
        receipt
            .fields
            .insert("temperature_record_complete".into(), json!(false));
        assert!(
            assess_receipt(&receipt, &[shipment], &[])
                .unwrap()
                .contains("incomplete")
        );
    }

    #[test]
    fn alert_events_are_deterministic_and_carry_no_personal_data() {
        let ev = golden("cold_chain_readings", "coldchain.json").remove(1);
        let f = &assess_readings(&ev)[0];
        let now = Utc::now();
        let a = alert_event(
            &ev,
            f,
            vec!["86123450000000001002".into(), "86123450000000001001".into()],
            now,
        );
        let b = alert_event(&ev, f, vec![], now);
        assert_eq!(a.event_id, b.event_id);
        assert_eq!(a.category, ALERT_CATEGORY);
        assert_eq!(a.fields["related_event_id"], ev.event_id.to_string());
        assert_eq!(a.device, ev.device);
        assert_eq!(a.trace_codes[0], "86123450000000001001");
        assert!(a.pii.is_empty());
        assert!(a.from.is_none() && a.to.is_none());
    }
}
