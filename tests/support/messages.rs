//! Exchange messages to send: the mappings crate's golden files, made fresh.

use mappings::ExchangeMessage;
use serde_json::Value;

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
