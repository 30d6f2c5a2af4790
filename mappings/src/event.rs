//! The event model: one traceability event per mapped source record.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::dataset::{Dataset, ElementType};
use crate::pii::{Pii, pseudonym};

/// A party (organisation) sending or receiving goods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Party {
    /// Organisation code: a unified social credit code (checked, GB 32100)
    /// or a local code such as a 10-digit 接种点编码.
    pub code: String,
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A packaging link: the parent code (case, carton) contains the children.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationLink {
    /// Parent package trace code.
    pub parent: String,
    /// Child package trace codes.
    pub children: Vec<String>,
}

/// One traceability event (NMPAB/T 1004 data, one category).
///
/// `fields` hold business elements keyed by dataset element key; personal
/// elements (`pii = true` in the dataset) live in [`TraceEvent::pii`]
/// instead, so the gateway can encrypt them. `Debug` masks personal data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceEvent {
    /// Dataset category key (e.g. `vaccination`).
    pub category: String,
    /// Event id; the mapper derives a UUID v5 from source, category and
    /// record key, so re-sending a record yields the same id.
    #[serde(rename = "eventID")]
    pub event_id: Uuid,
    /// When the business step happened, with its UTC offset.
    pub occurred_at: DateTime<FixedOffset>,
    /// When the gateway recorded it.
    pub recorded_at: DateTime<FixedOffset>,
    /// The reporting entity (organisation code of the source system's owner).
    pub source: String,
    /// Device (cold-chain logger, scanner), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The key of the source record (row id, HL7 control id, ...).
    pub record_key: String,
    /// 码上放心 bill type, when the event is a bill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bill_type: Option<String>,
    /// NMPAB/T 1002 trace codes (20 digits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trace_codes: Vec<String>,
    /// Packaging (parent/child) links.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregations: Vec<AggregationLink>,
    /// Shipping party.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Party>,
    /// Receiving party.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Party>,
    /// Business elements (element key → value).
    #[serde(default)]
    pub fields: Map<String, Value>,
    /// Personal elements (element key → plaintext); encrypted downstream.
    #[serde(default, skip_serializing_if = "Pii::is_empty")]
    pub pii: Pii,
}

/// Namespace for event ids (UUID v5 of `source/category/record_key`).
pub const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a4e_93b7_5d10_8c2e_7a55_0f3d_9b21);

impl TraceEvent {
    /// The deterministic event id of a source record.
    pub fn derive_id(source: &str, category: &str, record_key: &str) -> Uuid {
        let mut name = String::with_capacity(source.len() + category.len() + record_key.len() + 2);
        name.push_str(source);
        name.push('/');
        name.push_str(category);
        name.push('/');
        name.push_str(record_key);
        Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes())
    }

    /// A copy whose personal data is masked, for display.
    pub fn masked(&self) -> TraceEvent {
        TraceEvent {
            pii: self.pii.masked(),
            ..self.clone()
        }
    }

    /// A string field, if present.
    pub fn field_str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    /// The lookup pseudonym of the first identity number among the personal
    /// elements (elements of type `id_number`), as a keyed HMAC-SM3.
    pub fn subject_pseudonym(&self, key: &[u8], dataset: &Dataset) -> Option<String> {
        self.pii
            .iter()
            .find(|(k, _)| dataset.element(k).is_some_and(|e| e.ty == ElementType::IdNumber))
            .map(|(_, v)| pseudonym(key, v))
    }
}
