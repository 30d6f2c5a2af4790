//! Exchange messages to send: the mappings crate's golden files, made
//! fresh, and from them the steps of a dose's custody (production,
//! dispatch, receipt).

use mappings::ExchangeMessage;
use serde_json::{Value, json};

/// Golden exchange messages of `category` from the mappings crate.
pub fn golden(category: &str, file: &str) -> Vec<ExchangeMessage> {
    let p = super::repo().join(format!("mappings/tests/golden/{category}/{file}"));
    let v: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v.into_iter()
        .map(|m| mappings::exchange::from_json(&m.to_string()).unwrap())
        .collect()
}

/// A copy of `m` with a fresh event id (and record key). A vaccination
/// also gets a dose of its own (a fresh unit trace code of the same
/// product): the gateway refuses a dose given twice (docs/custody.md).
pub fn fresh(m: &ExchangeMessage) -> ExchangeMessage {
    let mut m = m.clone();
    m.event_id = uuid::Uuid::new_v4();
    m.payload.event_id = m.event_id;
    m.payload.record_key = m.event_id.to_string();
    if m.payload.category == "vaccination" {
        for c in &mut m.payload.trace_codes {
            let serial = m.event_id.as_u128() % 10_000_000_000_000;
            *c = format!("{}{serial:013}", &c[..7]);
        }
    }
    m
}

/// `m` re-sourced to `source` (event and exchange sender).
pub fn from_source(m: &ExchangeMessage, source: &str) -> ExchangeMessage {
    let mut m = fresh(m);
    m.payload.source = source.to_string();
    m.sender = source.to_string();
    m
}

/// The golden `category` record of `file` from `source`, for the doses
/// `codes` (its quantity), changed by `f`.
fn custody_step(
    category: &str,
    file: &str,
    source: &str,
    codes: &[String],
    f: impl FnOnce(&mut mappings::TraceEvent),
) -> ExchangeMessage {
    let mut m = from_source(&golden(category, file).remove(0), source);
    m.payload.trace_codes = codes.to_vec();
    m.payload.fields.insert("quantity".into(), json!(codes.len()));
    f(&mut m.payload);
    m
}

/// The party with the code `code` (no name).
pub fn party(code: &str) -> Option<mappings::Party> {
    Some(mappings::Party {
        code: code.into(),
        name: None,
    })
}

/// The time `s` (RFC 3339).
pub fn at(s: &str) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(s).unwrap()
}

/// The production (入库 of the holder) of `codes` by the holder `mah`.
pub fn production(mah: &str, codes: &[String]) -> ExchangeMessage {
    custody_step("production_inbound", "mah-export.json", mah, codes, |_| {})
}

/// The dispatch (出库) of `codes` by `from` to `to`, dated 2024-01-05 09:00.
pub fn dispatch(from: &str, to: &str, codes: &[String]) -> ExchangeMessage {
    custody_step("outbound", "cdc-stock.json", from, codes, |e| {
        e.occurred_at = at("2024-01-05T09:00:00+08:00");
        e.from = party(from);
        e.to = party(to);
    })
}

/// The receipt (入库) by `to` of `codes` sent by `from`, dated 2024-01-06
/// 10:00, without a shipment number.
pub fn receipt(from: &str, to: &str, codes: &[String]) -> ExchangeMessage {
    custody_step("inbound_receipt", "cdc-stock.json", to, codes, |e| {
        e.occurred_at = at("2024-01-06T10:00:00+08:00");
        e.from = party(from);
        e.to = party(to);
        e.fields.insert("quantity_receivable".into(), json!(codes.len()));
        e.fields.remove("shipment_no");
    })
}
