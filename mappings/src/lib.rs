//! NMPAB/T 1004 domain model, declarative mapping specs, validation and the
//! NMPAB/T 1005 / EPCIS 2.0 codecs. No IO except loading files the caller
//! names ([`Dataset::load`], [`MappingSpec::load`]).
//!
//! # Overview
//! ```
//! use mappings::{Dataset, MappingSpec, Record, QualityTracker, exchange};
//!
//! let dataset = Dataset::builtin();               // config/datasets/nmpab-1004.toml, embedded
//! let spec = MappingSpec::from_toml_str(r#"
//!     [source]
//!     name = "clinic"
//!     entity = "3201020001"
//!     format = "rows"
//!     record_key = "ID"
//!     [category]
//!     fixed = "cancellation"
//!     [[fields]]
//!     to = "event.occurred_at"
//!     from = "SJ"
//!     date = "yyyyMMddHHmmss"
//!     [[fields]]
//!     to = "cancels_event_id"
//!     from = "YSJ"
//!     [[fields]]
//!     to = "cancel_reason_code"
//!     const = "01"
//! "#, "inline.toml", &dataset)?;
//! let row = serde_json::json!({"ID": "7", "SJ": "20240305093000",
//!     "YSJ": "0b9a6a2e-5f0e-5d53-9a57-9d2f5cfa0f53"});
//! let serde_json::Value::Object(row) = row else { unreachable!() };
//! let out = spec.map(&Record::Row(row));
//! assert!(out.is_ok(), "{:?}", out.problems);
//! let mut tracker = QualityTracker::new(&dataset);  // batch rules across records
//! for e in &out.events {
//!     assert!(tracker.observe(e).is_empty());
//!     let msg = exchange::ExchangeMessage::new(e.clone(), &spec.receiver);
//!     let back = exchange::from_xml(&exchange::to_xml(&msg))?;
//!     assert_eq!(back, msg);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # API for the gateway, the adapters and the agent
//!
//! | call | use |
//! |---|---|
//! | [`Dataset::builtin`], [`Dataset::load`], [`Dataset::from_toml_str`] | the NMPAB/T 1004 definition (categories, elements, code tables) |
//! | [`MappingSpec::load`]`(path, &Dataset)`, [`MappingSpec::from_toml_str`]`(text, origin, &Dataset)` | compile a source's mapping; [`SpecError`] names file, line and key |
//! | [`MappingSpec::map`]`(&Record) -> MapOutcome`, [`MappingSpec::map_at`] (fixed `recorded_at`) | map one record: [`Record::Row`] (SQL row as a JSON object), [`Record::Hl7`] (one message; one event per `group_by` group), [`Record::Xml`] (one record fragment, e.g. from a streaming reader at `spec.record_path`), [`Record::Json`] (a document; `records` path splits it) |
//! | [`records_from_text`]`(&spec, format, text)` | split a whole sample file into records (tests, CLI) |
//! | [`validate()`]`(&TraceEvent, &Dataset) -> Vec<Problem>` | validation on ingest (events posted directly, e.g. by ERPs) |
//! | [`QualityTracker::observe`]`(&TraceEvent) -> Vec<Problem>` | batch rule: a trace code used more times than its package has doses |
//! | [`TraceEvent::subject_pseudonym`]`(key, &Dataset)`, [`pseudonym`], [`hmac_sm3`] | keyed SM3-HMAC pseudonym of the ID number for lookups |
//! | [`TraceEvent::masked`], [`mask`] | display without personal data |
//! | [`exchange::ExchangeMessage::new`], [`exchange::to_json`]/[`exchange::from_json`], [`exchange::to_xml`]/[`exchange::from_xml`] | NMPAB/T 1005-style messages |
//! | [`to_canonical_json`], [`canonical_sm3`], [`event_canonical_json`], [`canonical::write_event_canonical`], [`event_sm3`] | canonical bytes and SM3 for hashing and signing |
//! | [`commitment::commit`]`(&TraceEvent, &seed)`, [`commitment::disclose`], [`commitment::check`] | per-member salted commitments (the `fields_root` of a transaction) and what a reader needs to check an answer against them |
//! | [`epcis::to_epcis_document`]`(&[TraceEvent], &Dataset)` | GS1 EPCIS 2.0 JSON-LD export |
//!
//! Every [`Problem`] names the record key, the field, the rule and the value
//! (personal values masked). Personal elements never enter
//! [`TraceEvent::fields`]; they are kept in [`TraceEvent::pii`], which masks
//! itself in `Debug` output.
//!
//! **Architecture invariant:** this crate depends on no other vaxgate crate.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod canonical;
pub mod checks;
pub mod commitment;
pub mod custody;
pub mod dataset;
pub mod datefmt;
pub mod envsubst;
pub mod epcis;
mod error;
pub mod event;
pub mod exchange;
pub mod pii;
pub mod sources;
pub mod spec;
pub mod validate;

pub use canonical::{canonical_sm3, event_canonical_json, event_sm3, to_canonical_json};
pub use dataset::{Category, CodeTable, Dataset, Element, ElementType, ReadScope, TraceCodePolicy};
pub use error::{CodecError, Location, SpecError};
pub use event::{AggregationLink, Party, TraceEvent};
pub use exchange::ExchangeMessage;
pub use pii::{Pii, hmac_sm3, mask, pseudonym};
pub use sources::Record;
pub use spec::{InputFormat, MapOutcome, MappingSpec, records_from_text};
pub use validate::{Problem, QualityTracker, Severity, validate};
