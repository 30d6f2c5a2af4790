//! Declarative mapping specs (`config/mappings/*.toml`): source field →
//! element, with transforms, and the mapping engine that applies them.
//! See `docs/mapping.md` for the reference.
//!
//! The public types live here; the work is done in the submodules:
//! `compile` (TOML text → [`MappingSpec`]), `map` (one record → events),
//! `fetch` (reading source paths out of a record) and `convert` (text →
//! element values).

mod compile;
mod convert;
mod fetch;
mod map;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use chrono_tz::Tz;
use serde_json::Value;

use crate::dataset::{Dataset, ElementType, FastHashBuild};
use crate::datefmt::DateFormat;
use crate::error::SpecError;
use crate::event::TraceEvent;
use crate::sources::{Hl7Path, JsonPath, Record, XmlPath, split_xml_records};
use crate::validate::Problem;

/// A spec's local code table (source code → dataset code).
type LookupTable = HashMap<String, String, FastHashBuild>;

/// The kind of input a spec reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// Flat SQL rows (column → value); `rows-json` files hold an array of them.
    Rows,
    /// HL7 v2 messages.
    Hl7,
    /// XML record fragments.
    Xml,
    /// JSON documents.
    Json,
}

impl InputFormat {
    /// Parses `rows`, `rows-json`, `hl7`, `xml` or `json`.
    pub fn parse(s: &str) -> Option<InputFormat> {
        match s {
            "rows" | "rows-json" => Some(InputFormat::Rows),
            "hl7" => Some(InputFormat::Hl7),
            "xml" => Some(InputFormat::Xml),
            "json" => Some(InputFormat::Json),
            _ => None,
        }
    }
}

/// Special mapping targets that set event attributes rather than elements.
pub const EVENT_TARGETS: [&str; 10] = [
    "event.occurred_at",
    "event.source",
    "event.device",
    "event.trace_codes",
    "event.parent_code",
    "event.child_codes",
    "event.from",
    "event.from_name",
    "event.to",
    "event.to_name",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventAttr {
    OccurredAt,
    Source,
    Device,
    TraceCodes,
    ParentCode,
    ChildCodes,
    From,
    FromName,
    To,
    ToName,
}

#[derive(Debug, Clone)]
enum Target {
    Element { key: String, ty: ElementType, pii: bool },
    Event(EventAttr),
}

#[derive(Debug, Clone)]
enum SrcPath {
    /// Column name and its slot in the spec's column table.
    Column(String, usize),
    Hl7(Hl7Path),
    Xml(XmlPath),
    Json(JsonPath),
}

#[derive(Debug, Clone)]
enum FieldSource {
    Paths(Vec<SrcPath>),
    Const(String),
}

#[derive(Debug, Clone)]
struct FieldMap {
    name: String,
    target: Target,
    source: FieldSource,
    join: Option<String>,
    split: Option<String>,
    index: Option<usize>,
    all: bool,
    trim: bool,
    upper: bool,
    lookup: Option<(String, Arc<LookupTable>)>,
    lookup_keep: bool,
    date: Option<DateFormat>,
    tz: Option<Tz>,
    default: Option<String>,
    scale: Option<f64>,
    prefix: Option<String>,
    suffix: Option<String>,
    event_ref: Option<String>,
}

#[derive(Debug, Clone)]
enum CategoryRule {
    Fixed(String),
    From {
        path: SrcPath,
        by_bill_type: bool,
        map: HashMap<String, String>,
        default: Option<String>,
    },
}

/// A compiled mapping spec for one source.
#[derive(Debug, Clone)]
pub struct MappingSpec {
    /// Source system name (part of every event id).
    pub name: String,
    /// Free description.
    pub description: String,
    /// Reporting entity (organisation code) for `TraceEvent::source`.
    pub entity: Option<String>,
    /// Input format.
    pub format: InputFormat,
    /// For XML: the absolute path of record elements, e.g. `/Export/Records/Record`.
    pub record_path: Option<String>,
    /// Receiver written into exchange messages.
    pub receiver: String,
    /// The file (or origin) the spec came from.
    pub origin: String,
    zone: Tz,
    record_key: Option<SrcPath>,
    records: Option<JsonPath>,
    group_by: Option<String>,
    category: CategoryRule,
    columns: Vec<String>,
    col_index: HashMap<String, usize, FastHashBuild>,
    /// Identity for the per-thread row layout cache.
    id: u64,
    fields: Vec<FieldMap>,
    packages: Vec<PackageMap>,
    dataset: Arc<Dataset>,
}

/// The result of mapping one input record: the events it produced and
/// every mapping and validation problem (personal values masked).
#[derive(Debug, Clone, Default)]
pub struct MapOutcome {
    /// Mapped events (also those with problems, for inspection).
    pub events: Vec<TraceEvent>,
    /// Problems, in order.
    pub problems: Vec<Problem>,
}

impl MapOutcome {
    /// Whether no problem is an error.
    pub fn is_ok(&self) -> bool {
        !self.problems.iter().any(Problem::is_error)
    }

    /// The events whose record has no error (to be sent on).
    pub fn accepted(&self) -> impl Iterator<Item = &TraceEvent> {
        self.events
            .iter()
            .filter(|e| !self.problems.iter().any(|p| p.is_error() && p.record == e.record_key))
    }
}

/// A compiled `[[packages]]` table.
#[derive(Debug, Clone)]
struct PackageMap {
    from: JsonPath,
    parent: JsonPath,
    children: JsonPath,
}

impl MappingSpec {
    /// Loads a spec file against a dataset.
    ///
    /// # Errors
    /// [`SpecError`] naming the file, line and key.
    pub fn load(path: impl AsRef<Path>, dataset: &Dataset) -> Result<MappingSpec, SpecError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
            path: path.display().to_string(),
            source,
        })?;
        MappingSpec::from_toml_str(&text, &path.display().to_string(), dataset)
    }

    /// Parses a spec; `origin` names it in errors.
    ///
    /// # Errors
    /// [`SpecError`] naming the origin, line and key.
    pub fn from_toml_str(text: &str, origin: &str, dataset: &Dataset) -> Result<MappingSpec, SpecError> {
        compile::compile(text, origin, dataset)
    }

    /// The dataset the spec was compiled against.
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// Maps one record, stamping `recorded_at` with the current time (in
    /// the spec's zone, millisecond precision).
    pub fn map(&self, record: &Record) -> MapOutcome {
        use chrono::SubsecRound as _;
        self.map_at(
            record,
            Utc::now().with_timezone(&self.zone).fixed_offset().trunc_subsecs(3),
        )
    }
}

/// Splits an input file into records for a spec: `rows-json` → a JSON
/// array of row objects; `hl7` → messages (each starting with `MSH`);
/// `xml` → fragments at the spec's `record_path`; `json` → one document.
///
/// # Errors
/// [`crate::CodecError`] when the file does not have that shape.
pub fn records_from_text(
    spec: &MappingSpec,
    format: InputFormat,
    text: &str,
) -> Result<Vec<Record>, crate::CodecError> {
    match format {
        InputFormat::Rows => {
            let v: Value = serde_json::from_str(text)?;
            let Value::Array(rows) = v else {
                return Err(crate::CodecError::Invalid(
                    "rows-json input must be a JSON array of objects".into(),
                ));
            };
            rows.into_iter()
                .map(|r| match r {
                    Value::Object(m) => Ok(Record::Row(m)),
                    _ => Err(crate::CodecError::Invalid(
                        "rows-json input must be a JSON array of objects".into(),
                    )),
                })
                .collect()
        }
        InputFormat::Hl7 => {
            let norm = text.replace("\r\n", "\n").replace('\r', "\n");
            let mut msgs: Vec<String> = Vec::new();
            for line in norm.lines().filter(|l| !l.trim().is_empty()) {
                if line.starts_with("MSH") || msgs.is_empty() {
                    msgs.push(String::new());
                }
                if let Some(m) = msgs.last_mut() {
                    m.push_str(line);
                    m.push('\r');
                }
            }
            Ok(msgs.into_iter().map(Record::Hl7).collect())
        }
        InputFormat::Xml => {
            let path = spec.record_path.as_deref().unwrap_or("/");
            Ok(split_xml_records(text, path)?.into_iter().map(Record::Xml).collect())
        }
        InputFormat::Json => Ok(vec![Record::Json(serde_json::from_str(text)?)]),
    }
}
