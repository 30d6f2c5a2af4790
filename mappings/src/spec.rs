//! Declarative mapping specs (`config/mappings/*.toml`): source field →
//! element, with transforms, and the mapping engine that applies them.
//! See `docs/mapping.md` for the reference.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::{Map, Value};
use toml::Spanned;

use crate::dataset::{Dataset, ElementType, FastHashBuild};
use crate::datefmt::DateFormat;
use crate::error::{Location, SpecError, near_matches};
use crate::event::{AggregationLink, Party, TraceEvent};
use crate::pii::{Pii, mask};
use crate::sources::{Hl7Path, Hl7Record, JsonPath, Record, XmlNode, XmlPath, json_text, split_xml_records};
use crate::validate::{Problem, Severity, validate};

/// A spec's local code table (source code → dataset code).
type LookupTable = HashMap<String, String, FastHashBuild>;

static NEXT_SPEC_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    /// (spec id, [(column name at row position, spec column slot)]).
    static ROW_LAYOUT: std::cell::RefCell<(u64, Vec<(String, usize)>)> = const { std::cell::RefCell::new((0, Vec::new())) };
}

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

// ------------------------------------------------------------- raw TOML

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    source: RawSource,
    category: RawCategory,
    #[serde(default)]
    code_tables: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    fields: Vec<RawField>,
    #[serde(default)]
    packages: Vec<RawPackage>,
}

/// `[[packages]]`: packaging links (aggregation), one per node `from`
/// selects: the parent code at `parent` and its child codes at `children`,
/// both relative to the node (JSON sources).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackage {
    from: Spanned<String>,
    parent: Spanned<String>,
    children: Spanned<String>,
}

/// A compiled `[[packages]]` table.
#[derive(Debug, Clone)]
struct PackageMap {
    from: JsonPath,
    parent: JsonPath,
    children: JsonPath,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: String,
    #[serde(default)]
    description: String,
    entity: Option<String>,
    format: Spanned<String>,
    timezone: Option<Spanned<String>>,
    record_key: Option<Spanned<String>>,
    record_path: Option<Spanned<String>>,
    records: Option<Spanned<String>>,
    group_by: Option<Spanned<String>>,
    receiver: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCategory {
    fixed: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    by: Option<Spanned<String>>,
    #[serde(default)]
    map: BTreeMap<String, Spanned<String>>,
    default: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    to: Spanned<String>,
    from: Option<Spanned<toml::Value>>,
    #[serde(rename = "const")]
    constant: Option<String>,
    join: Option<String>,
    split: Option<Spanned<String>>,
    index: Option<usize>,
    all: Option<bool>,
    trim: Option<bool>,
    upper: Option<bool>,
    lookup: Option<Spanned<String>>,
    lookup_miss: Option<Spanned<String>>,
    date: Option<Spanned<String>>,
    tz: Option<Spanned<String>>,
    default: Option<String>,
    scale: Option<f64>,
    prefix: Option<String>,
    suffix: Option<String>,
    event_ref: Option<Spanned<String>>,
}

struct Ld<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Ld<'_> {
    fn loc(&self, offset: usize, key: &str) -> Box<Location> {
        Location::at(self.origin, self.text, offset, Some(key))
    }
    fn invalid<T>(&self, s: &Spanned<T>, key: &str, message: impl Into<String>) -> SpecError {
        SpecError::Invalid {
            loc: self.loc(s.span().start, key),
            message: message.into(),
        }
    }
    fn unknown<'c>(
        &self,
        s: &Spanned<String>,
        key: &str,
        kind: &'static str,
        candidates: impl Iterator<Item = &'c str>,
    ) -> SpecError {
        SpecError::Unknown {
            loc: self.loc(s.span().start, key),
            kind,
            name: s.get_ref().clone(),
            suggestions: near_matches(s.get_ref(), candidates),
        }
    }
}

fn parse_zone(ld: &Ld<'_>, s: &Spanned<String>, key: &str) -> Result<Tz, SpecError> {
    s.get_ref()
        .parse::<Tz>()
        .map_err(|_| ld.unknown(s, key, "time zone", chrono_tz::TZ_VARIANTS.iter().map(|t| t.name())))
}

fn parse_path(ld: &Ld<'_>, format: InputFormat, s: &str, span: usize, key: &str) -> Result<SrcPath, SpecError> {
    let r = match format {
        InputFormat::Rows => {
            if s.trim().is_empty() {
                Err("empty column name".to_string())
            } else {
                Ok(SrcPath::Column(s.to_string(), usize::MAX))
            }
        }
        InputFormat::Hl7 => Hl7Path::parse(s).map(SrcPath::Hl7),
        InputFormat::Xml => XmlPath::parse(s).map(SrcPath::Xml),
        InputFormat::Json => JsonPath::parse(s).map(SrcPath::Json),
    };
    r.map_err(|message| SpecError::Invalid {
        loc: ld.loc(span, key),
        message,
    })
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
        let raw: RawSpec = toml::from_str(text).map_err(|e| SpecError::from_toml(origin, text, &e))?;
        let ld = Ld { origin, text };
        let src = raw.source;
        let format = InputFormat::parse(src.format.get_ref()).ok_or_else(|| {
            ld.unknown(
                &src.format,
                "source.format",
                "input format",
                ["rows", "hl7", "xml", "json"].into_iter(),
            )
        })?;
        let zone = match &src.timezone {
            Some(z) => parse_zone(&ld, z, "source.timezone")?,
            None => chrono_tz::Asia::Shanghai,
        };
        let mut record_key = match &src.record_key {
            Some(k) => Some(parse_path(
                &ld,
                format,
                k.get_ref(),
                k.span().start,
                "source.record_key",
            )?),
            None => None,
        };
        let record_path = match (&src.record_path, format) {
            (Some(p), InputFormat::Xml) => {
                if !p.get_ref().starts_with('/') || p.get_ref().len() < 2 {
                    return Err(ld.invalid(
                        p,
                        "source.record_path",
                        "record_path must be absolute, e.g. /Export/Records/Record",
                    ));
                }
                Some(p.get_ref().clone())
            }
            (None, InputFormat::Xml) => {
                return Err(ld.invalid(
                    &src.format,
                    "source.record_path",
                    "xml sources need source.record_path, e.g. /Export/Records/Record",
                ));
            }
            (Some(p), _) => return Err(ld.invalid(p, "source.record_path", "record_path applies to xml sources only")),
            (None, _) => None,
        };
        let records = match (&src.records, format) {
            (Some(r), InputFormat::Json) => {
                Some(JsonPath::parse(r.get_ref()).map_err(|m| ld.invalid(r, "source.records", m))?)
            }
            (Some(r), _) => return Err(ld.invalid(r, "source.records", "records applies to json sources only")),
            (None, _) => None,
        };
        let group_by = match (&src.group_by, format) {
            (Some(g), InputFormat::Hl7) => Some(g.get_ref().clone()),
            (Some(g), _) => return Err(ld.invalid(g, "source.group_by", "group_by applies to hl7 sources only")),
            (None, _) => None,
        };

        // category rule
        let cat_keys = || dataset.categories().map(|c| c.key.as_str());
        let check_cat = |s: &Spanned<String>, key: &str| -> Result<String, SpecError> {
            if dataset.category(s.get_ref()).is_some() {
                Ok(s.get_ref().clone())
            } else {
                Err(ld.unknown(s, key, "category", cat_keys()))
            }
        };
        let c = raw.category;
        let (mut category, possible): (CategoryRule, Vec<String>) = match (&c.fixed, &c.from) {
            (Some(f), None) => {
                let k = check_cat(f, "category.fixed")?;
                (CategoryRule::Fixed(k.clone()), vec![k])
            }
            (None, Some(from)) => {
                let path = parse_path(&ld, format, from.get_ref(), from.span().start, "category.from")?;
                let by_bill_type = match &c.by {
                    Some(b) if b.get_ref() == "bill_type" => true,
                    Some(b) => return Err(ld.unknown(b, "category.by", "category rule", ["bill_type"].into_iter())),
                    None => false,
                };
                let mut map = HashMap::new();
                let mut possible = Vec::new();
                for (value, cat) in &c.map {
                    let k = check_cat(cat, &format!("category.map.{value}"))?;
                    possible.push(k.clone());
                    map.insert(value.clone(), k);
                }
                let default = match &c.default {
                    Some(d) => {
                        let k = check_cat(d, "category.default")?;
                        possible.push(k.clone());
                        Some(k)
                    }
                    None => None,
                };
                if by_bill_type {
                    possible.extend(
                        dataset
                            .categories()
                            .filter(|c| !c.bill_types.is_empty())
                            .map(|c| c.key.clone()),
                    );
                }
                if possible.is_empty() {
                    return Err(ld.invalid(
                        from,
                        "category",
                        "category.from needs `by = \"bill_type\"`, a `map` or a `default`",
                    ));
                }
                (
                    CategoryRule::From {
                        path,
                        by_bill_type,
                        map,
                        default,
                    },
                    possible,
                )
            }
            (Some(f), Some(_)) => {
                return Err(ld.invalid(f, "category", "give either category.fixed or category.from, not both"));
            }
            (None, None) => {
                return Err(SpecError::Invalid {
                    loc: ld.loc(text.find("[category]").unwrap_or(0), "category"),
                    message: "give category.fixed or category.from".into(),
                });
            }
        };

        let tables: HashMap<String, Arc<LookupTable>> = raw
            .code_tables
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v.into_iter().collect())))
            .collect();

        let mut fields: Vec<FieldMap> = Vec::new();
        let mut mapped: Vec<String> = Vec::new();
        for (i, f) in raw.fields.into_iter().enumerate() {
            let key = |k: &str| format!("fields[{i}].{k}");
            let name = f.to.get_ref().clone();
            let target = if let Some(attr) = name.strip_prefix("event.") {
                let a = match attr {
                    "occurred_at" => EventAttr::OccurredAt,
                    "source" => EventAttr::Source,
                    "device" => EventAttr::Device,
                    "trace_codes" => EventAttr::TraceCodes,
                    "parent_code" => EventAttr::ParentCode,
                    "child_codes" => EventAttr::ChildCodes,
                    "from" => EventAttr::From,
                    "from_name" => EventAttr::FromName,
                    "to" => EventAttr::To,
                    "to_name" => EventAttr::ToName,
                    _ => return Err(ld.unknown(&f.to, &key("to"), "event attribute", EVENT_TARGETS.into_iter())),
                };
                Target::Event(a)
            } else {
                let Some(el) = dataset.element(&name) else {
                    let els: Vec<&str> = dataset
                        .elements()
                        .map(|e| e.key.as_str())
                        .chain(EVENT_TARGETS)
                        .collect();
                    return Err(ld.unknown(&f.to, &key("to"), "element", els.into_iter()));
                };
                if !possible
                    .iter()
                    .any(|c| dataset.category(c).is_some_and(|c| c.allows(&name)))
                {
                    return Err(ld.invalid(
                        &f.to,
                        &key("to"),
                        format!("element `{name}` is not part of category {}", possible.join(" / ")),
                    ));
                }
                Target::Element {
                    key: name.clone(),
                    ty: el.ty,
                    pii: el.pii,
                }
            };
            let source = match (&f.from, &f.constant) {
                (Some(from), None) => {
                    let list: Vec<String> = match from.get_ref() {
                        toml::Value::String(s) => vec![s.clone()],
                        toml::Value::Array(a) if !a.is_empty() && a.iter().all(toml::Value::is_str) => {
                            a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
                        }
                        _ => {
                            return Err(ld.invalid(
                                from,
                                &key("from"),
                                "from must be a path or a non-empty list of paths",
                            ));
                        }
                    };
                    let paths = list
                        .iter()
                        .map(|p| parse_path(&ld, format, p, from.span().start, &key("from")))
                        .collect::<Result<Vec<_>, _>>()?;
                    FieldSource::Paths(paths)
                }
                (None, Some(c)) => FieldSource::Const(c.clone()),
                (Some(from), Some(_)) => {
                    return Err(ld.invalid(from, &key("from"), "give either from or const, not both"));
                }
                (None, None) => return Err(ld.invalid(&f.to, &key("from"), "give from (a source path) or const")),
            };
            let lookup = match &f.lookup {
                Some(l) => match tables.get(l.get_ref()) {
                    Some(t) => Some((l.get_ref().clone(), t.clone())),
                    None => return Err(ld.unknown(l, &key("lookup"), "code table", tables.keys().map(String::as_str))),
                },
                None => None,
            };
            let lookup_keep = match &f.lookup_miss {
                None => false,
                Some(m) if m.get_ref() == "error" => false,
                Some(m) if m.get_ref() == "keep" => true,
                Some(m) => {
                    return Err(ld.unknown(
                        m,
                        &key("lookup_miss"),
                        "lookup_miss policy",
                        ["error", "keep"].into_iter(),
                    ));
                }
            };
            let date = match &f.date {
                Some(d) => {
                    let fmt = DateFormat::compile(d.get_ref()).map_err(|m| ld.invalid(d, &key("date"), m))?;
                    let ok = matches!(target, Target::Event(EventAttr::OccurredAt))
                        || matches!(
                            target,
                            Target::Element {
                                ty: ElementType::Date | ElementType::Datetime,
                                ..
                            }
                        );
                    if !ok {
                        return Err(ld.invalid(
                            d,
                            &key("date"),
                            format!(
                                "a date transform needs a date or datetime element or event.occurred_at, not `{name}`"
                            ),
                        ));
                    }
                    Some(fmt)
                }
                None => None,
            };
            let tz = match &f.tz {
                Some(z) => Some(parse_zone(&ld, z, &key("tz"))?),
                None => None,
            };
            if let Some(s) = &f.split
                && s.get_ref().is_empty()
            {
                return Err(ld.invalid(s, &key("split"), "split separator must not be empty"));
            }
            let event_ref = match &f.event_ref {
                Some(r) => Some(check_cat(r, &key("event_ref"))?),
                None => None,
            };
            mapped.push(name.clone());
            fields.push(FieldMap {
                name,
                target,
                source,
                join: f.join,
                split: f.split.map(Spanned::into_inner),
                index: f.index,
                all: f.all.unwrap_or(false),
                trim: f.trim.unwrap_or(true),
                upper: f.upper.unwrap_or(false),
                lookup,
                lookup_keep,
                date,
                tz,
                default: f.default,
                scale: f.scale,
                prefix: f.prefix,
                suffix: f.suffix,
                event_ref,
            });
        }
        let fields_loc = || ld.loc(text.find("[[fields]]").unwrap_or(0), "fields");
        if !mapped.iter().any(|m| m == "event.occurred_at") {
            return Err(SpecError::Invalid {
                loc: fields_loc(),
                message: "no [[fields]] entry maps event.occurred_at (when the business step happened)".into(),
            });
        }
        if let CategoryRule::Fixed(c) = &category
            && let Some(cat) = dataset.category(c)
        {
            let missing: Vec<&str> = cat
                .required
                .iter()
                .filter(|r| !mapped.contains(r))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(SpecError::Invalid {
                    loc: fields_loc(),
                    message: format!(
                        "category `{c}` requires {} but no [[fields]] entry maps it",
                        missing.join(", ")
                    ),
                });
            }
        }
        // Apply fields in target-key order (stable, so several entries for one
        // target keep their order): events then carry their fields sorted,
        // which makes output easy to diff and canonical JSON cheap.
        fields.sort_by(|a, b| a.name.cmp(&b.name));
        // number the row columns so a row is scanned once per record
        let mut columns: Vec<String> = Vec::new();
        let mut col_index: HashMap<String, usize, FastHashBuild> = HashMap::default();
        {
            let mut number = |p: &mut SrcPath| {
                if let SrcPath::Column(name, slot) = p {
                    *slot = *col_index.entry(name.clone()).or_insert_with(|| {
                        columns.push(name.clone());
                        columns.len() - 1
                    });
                }
            };
            if let Some(p) = record_key.as_mut() {
                number(p);
            }
            if let CategoryRule::From { path, .. } = &mut category {
                number(path);
            }
            for f in &mut fields {
                if let FieldSource::Paths(ps) = &mut f.source {
                    ps.iter_mut().for_each(&mut number);
                }
            }
        }
        let mut packages = Vec::with_capacity(raw.packages.len());
        for p in &raw.packages {
            if format != InputFormat::Json {
                return Err(ld.invalid(
                    &p.from,
                    "packages.from",
                    "[[packages]] reads JSON sources; for other formats map one link with event.parent_code and event.child_codes",
                ));
            }
            let path = |s: &Spanned<String>, key: &str| JsonPath::parse(s.get_ref()).map_err(|m| ld.invalid(s, key, m));
            packages.push(PackageMap {
                from: path(&p.from, "packages.from")?,
                parent: path(&p.parent, "packages.parent")?,
                children: path(&p.children, "packages.children")?,
            });
        }
        Ok(MappingSpec {
            name: src.name,
            description: src.description,
            entity: src.entity,
            format,
            record_path,
            receiver: src.receiver.unwrap_or_else(|| "NMPA-CSP".to_string()),
            origin: origin.to_string(),
            zone,
            record_key,
            records,
            group_by,
            category,
            fields,
            packages,
            columns,
            col_index,
            id: NEXT_SPEC_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            dataset: Arc::new(dataset.clone()),
        })
    }

    /// The values of the spec's columns in a row: one pass over the row with
    /// a cheap hash; names that differ only in ASCII case are matched too.
    fn columns_into<'r>(&self, row: &'r Map<String, Value>, cols: &mut [Option<&'r Value>]) {
        let mut exact = 0;
        // Rows of one source come with the same columns in the same order:
        // remember the layout per thread and confirm each name with one
        // comparison instead of a hash lookup.
        ROW_LAYOUT.with(|cell| {
            let mut layout = cell.borrow_mut();
            if layout.0 != self.id {
                layout.0 = self.id;
                layout.1.clear();
            }
            for (pos, (k, v)) in row.iter().enumerate() {
                let slot = match layout.1.get(pos) {
                    Some((name, slot)) if crate::dataset::same_key(name, k) => *slot,
                    _ => {
                        let slot = self.col_index.get(k.as_str()).copied().unwrap_or(usize::MAX);
                        if pos < layout.1.len() {
                            layout.1[pos] = (k.clone(), slot);
                        } else if pos == layout.1.len() && pos < 1024 {
                            layout.1.push((k.clone(), slot));
                        }
                        slot
                    }
                };
                if let Some(c) = cols.get_mut(slot) {
                    *c = Some(v);
                    exact += 1;
                }
            }
        });
        if exact < row.len() {
            for (slot, name) in cols.iter_mut().zip(&self.columns) {
                if slot.is_none() {
                    *slot = row.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
                }
            }
        }
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

    /// Maps one record with a given `recorded_at` (deterministic output).
    pub fn map_at(&self, record: &Record, recorded_at: DateTime<FixedOffset>) -> MapOutcome {
        let mut out = MapOutcome::default();
        let parse_fail = |out: &mut MapOutcome, msg: String| {
            out.problems.push(Problem {
                record: "?".into(),
                field: "record".into(),
                rule: "parse",
                value: None,
                message: msg,
                severity: Severity::Error,
            });
        };
        match (record, self.format) {
            (Record::Row(row), InputFormat::Rows) => {
                let mut small = [None; 64];
                let mut large = Vec::new();
                let cols: &mut [Option<&Value>] = if self.columns.len() <= small.len() {
                    &mut small[..self.columns.len()]
                } else {
                    large.resize(self.columns.len(), None);
                    &mut large
                };
                self.columns_into(row, cols);
                self.map_one(&Ctx::Row(cols), 0, recorded_at, &mut out);
            }
            (Record::Hl7(text), InputFormat::Hl7) => match Hl7Record::parse(text, self.group_by.as_deref()) {
                Ok(msg) => {
                    if self.group_by.is_some() {
                        for g in 0..msg.groups() {
                            self.map_one(&Ctx::Hl7(&msg, Some(g)), g, recorded_at, &mut out);
                        }
                    } else {
                        self.map_one(&Ctx::Hl7(&msg, None), 0, recorded_at, &mut out);
                    }
                }
                Err(e) => parse_fail(&mut out, e.to_string()),
            },
            (Record::Xml(text), InputFormat::Xml) => match XmlNode::parse(text) {
                Ok(node) => self.map_one(&Ctx::Xml(&node), 0, recorded_at, &mut out),
                Err(e) => parse_fail(&mut out, e.to_string()),
            },
            (Record::Json(v), InputFormat::Json) => match &self.records {
                Some(p) => {
                    let items = p.eval(v).into_iter().flat_map(|x| match x {
                        Value::Array(a) => a.iter().collect::<Vec<_>>(),
                        other => vec![other],
                    });
                    for (i, item) in items.enumerate() {
                        self.map_one(&Ctx::Json(item), i, recorded_at, &mut out);
                    }
                }
                None => self.map_one(&Ctx::Json(v), 0, recorded_at, &mut out),
            },
            (Record::Row(_), f) | (Record::Hl7(_), f) | (Record::Xml(_), f) | (Record::Json(_), f) => {
                parse_fail(
                    &mut out,
                    format!("spec `{}` reads {f:?} input, got a different record kind", self.name),
                );
            }
        }
        out
    }

    fn map_one<'a>(&'a self, ctx: &Ctx<'a>, index: usize, recorded_at: DateTime<FixedOffset>, out: &mut MapOutcome) {
        let record_key = self
            .record_key
            .as_ref()
            .and_then(|p| fetch(ctx, p, false).into_iter().next())
            .map_or_else(|| format!("#{}", index + 1), |k| k.trim().to_string());
        let mut problems: Vec<Problem> = Vec::new();
        let mut reported: Vec<&str> = Vec::new();
        let problem =
            |problems: &mut Vec<Problem>, field: &str, rule: &'static str, value: Option<String>, message: String| {
                problems.push(Problem {
                    record: record_key.clone(),
                    field: field.to_string(),
                    rule,
                    value,
                    message,
                    severity: Severity::Error,
                });
            };
        let category = match &self.category {
            CategoryRule::Fixed(c) => Some(c.clone()),
            CategoryRule::From {
                path,
                by_bill_type,
                map,
                default,
            } => {
                let v = fetch(ctx, path, false)
                    .into_iter()
                    .next()
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default();
                let found = map
                    .get(&v)
                    .cloned()
                    .or_else(|| {
                        if *by_bill_type {
                            self.dataset.category_for_bill_type(&v).map(|c| c.key.clone())
                        } else {
                            None
                        }
                    })
                    .or_else(|| default.clone());
                if found.is_none() {
                    problem(
                        &mut problems,
                        "category",
                        "category",
                        Some(v),
                        "no category for this value (category.map / bill type)".into(),
                    );
                }
                found
            }
        };
        let Some(category) = category else {
            out.problems.extend(problems);
            return;
        };
        let mut fields = Map::with_capacity(self.fields.len());
        let mut pii = Pii::new();
        let mut occurred_at: Option<DateTime<FixedOffset>> = None;
        let (mut source, mut device) = (None, None);
        let (mut trace_codes, mut parent, mut children) = (Vec::new(), None, Vec::new());
        let (mut from, mut from_name, mut to, mut to_name) = (None, None, None, None);
        let mut vals: Vec<Cow<'a, str>> = Vec::with_capacity(4);
        for f in &self.fields {
            vals.clear();
            match &f.source {
                FieldSource::Const(c) => vals.push(Cow::Borrowed(c.as_str())),
                FieldSource::Paths(ps) => match &f.join {
                    Some(sep) => {
                        let parts: Vec<Cow<'_, str>> = ps
                            .iter()
                            .filter_map(|p| fetch(ctx, p, false).into_iter().next())
                            .map(|v| if f.trim { trim_cow(v) } else { v })
                            .filter(|v| !v.is_empty())
                            .collect();
                        if !parts.is_empty() {
                            vals.push(Cow::Owned(parts.join(sep)));
                        }
                    }
                    None => {
                        for p in ps {
                            fetch_into(ctx, p, f.all, &mut vals);
                            if vals.iter().any(|s| !fast_trim(s).is_empty()) {
                                break;
                            }
                            vals.clear();
                        }
                    }
                },
            }
            if f.trim {
                for v in vals.iter_mut() {
                    trim_in_place(v);
                }
            }
            vals.retain(|v| !v.is_empty());
            if vals.is_empty()
                && let Some(d) = &f.default
            {
                vals.push(Cow::Borrowed(d.as_str()));
            }
            if let Some(sep) = &f.split {
                vals = vals
                    .into_iter()
                    .flat_map(|v| match v {
                        Cow::Borrowed(b) => b
                            .split(sep.as_str())
                            .map(|s| Cow::Borrowed(s.trim()))
                            .collect::<Vec<_>>(),
                        Cow::Owned(o) => o
                            .split(sep.as_str())
                            .map(|s| Cow::Owned(s.trim().to_string()))
                            .collect(),
                    })
                    .filter(|v| !v.is_empty())
                    .collect();
            }
            if let Some(i) = f.index {
                let keep = if i < vals.len() {
                    Some(vals.swap_remove(i))
                } else {
                    None
                };
                vals.clear();
                vals.extend(keep);
            }
            if f.upper {
                for v in vals.iter_mut() {
                    if v.chars().any(char::is_lowercase) {
                        *v = Cow::Owned(v.to_uppercase());
                    }
                }
            }
            let is_pii = matches!(f.target, Target::Element { pii: true, .. });
            if let Some((tname, table)) = &f.lookup {
                let mut i = 0;
                while i < vals.len() {
                    match table.get(vals[i].as_ref()) {
                        Some(s) => {
                            vals[i] = Cow::Borrowed(s.as_str());
                            i += 1;
                        }
                        None if f.lookup_keep => i += 1,
                        None => {
                            let v = vals.remove(i);
                            let shown = if is_pii { mask(&v) } else { v.to_string() };
                            problem(
                                &mut problems,
                                &f.name,
                                "lookup",
                                Some(shown),
                                format!("no entry in the spec's code table `{tname}`"),
                            );
                            reported.push(&f.name);
                        }
                    }
                }
            }
            if vals.is_empty() {
                continue;
            }
            if f.prefix.is_some() || f.suffix.is_some() {
                let (p, s) = (f.prefix.as_deref().unwrap_or(""), f.suffix.as_deref().unwrap_or(""));
                vals = vals.into_iter().map(|v| Cow::Owned(format!("{p}{v}{s}"))).collect();
            }
            if let Some(cat) = &f.event_ref {
                vals = vals
                    .into_iter()
                    .map(|v| Cow::Owned(TraceEvent::derive_id(&self.name, cat, &v).to_string()))
                    .collect();
            }
            // dates
            let mut dates: Option<Vec<(DateTime<FixedOffset>, bool)>> = None;
            if let Some(fmt) = &f.date {
                let zone = f.tz.unwrap_or(self.zone);
                let mut ok = Vec::new();
                for v in &vals {
                    match fmt.parse_in(v, zone) {
                        Some(d) => ok.push(d),
                        None => {
                            let shown = if is_pii { mask(v) } else { v.to_string() };
                            problem(
                                &mut problems,
                                &f.name,
                                "date_format",
                                Some(shown),
                                "does not match the spec's date format (or is not a valid time in the zone)".into(),
                            );
                            reported.push(&f.name);
                        }
                    }
                }
                if ok.is_empty() {
                    continue;
                }
                dates = Some(ok);
            }
            match &f.target {
                Target::Event(attr) => {
                    let first = || vals.first().map(|v| v.to_string());
                    match attr {
                        EventAttr::OccurredAt => {
                            occurred_at = match &dates {
                                Some(d) => d.first().map(|x| x.0),
                                None => {
                                    let v = first().unwrap_or_default();
                                    let parsed = DateTime::parse_from_rfc3339(&v).ok();
                                    if parsed.is_none() {
                                        problem(
                                            &mut problems,
                                            &f.name,
                                            "date_format",
                                            Some(v),
                                            "expected RFC 3339; set `date = \"...\"` for legacy formats".into(),
                                        );
                                        reported.push(&f.name);
                                    }
                                    parsed
                                }
                            };
                        }
                        EventAttr::Source => source = first(),
                        EventAttr::Device => device = first(),
                        EventAttr::TraceCodes => trace_codes.extend(vals.iter().map(|v| v.to_string())),
                        EventAttr::ParentCode => parent = first(),
                        EventAttr::ChildCodes => children.extend(vals.iter().map(|v| v.to_string())),
                        EventAttr::From => from = first(),
                        EventAttr::FromName => from_name = first(),
                        EventAttr::To => to = first(),
                        EventAttr::ToName => to_name = first(),
                    }
                }
                Target::Element { key, ty, pii: is_p } => {
                    if vals.len() > 1 && *ty != ElementType::Json {
                        problem(
                            &mut problems,
                            key,
                            "cardinality",
                            None,
                            format!("{} values for a single-valued element; the first is used", vals.len()),
                        );
                        reported.push(&f.name);
                    }
                    let value = match &dates {
                        Some(d) => {
                            let (dt, _) = d[0];
                            Value::String(if *ty == ElementType::Date {
                                ymd(dt)
                            } else {
                                dt.to_rfc3339()
                            })
                        }
                        None if *ty == ElementType::Json && vals.len() > 1 => {
                            Value::Array(vals.iter().map(|v| convert(*ty, v, None)).collect())
                        }
                        None => convert(*ty, &vals[0], f.scale),
                    };
                    if *is_p {
                        let s = match value {
                            Value::String(s) => s,
                            other => other.to_string(),
                        };
                        pii.insert(key.clone(), s);
                    } else {
                        fields.insert(key.clone(), value);
                    }
                }
            }
        }
        let bill_type = fields.get("bill_type").and_then(Value::as_str).map(str::to_string);
        let mut aggregations = Vec::new();
        if let Ctx::Json(v) = ctx {
            for pkg in &self.packages {
                for node in pkg.from.eval(v) {
                    let Some(parent) = pkg.parent.eval(node).into_iter().find_map(json_text) else {
                        continue;
                    };
                    let children: Vec<String> = pkg
                        .children
                        .eval(node)
                        .into_iter()
                        .filter_map(json_text)
                        .map(|c| c.trim().to_string())
                        .collect();
                    if !children.is_empty() {
                        aggregations.push(AggregationLink {
                            parent: parent.trim().to_string(),
                            children,
                        });
                    }
                }
            }
        }
        if let Some(p) = parent {
            aggregations.push(AggregationLink { parent: p, children });
        } else if !children.is_empty() {
            problem(
                &mut problems,
                "event.child_codes",
                "aggregation",
                None,
                "child codes without event.parent_code".into(),
            );
        }
        if occurred_at.is_none() && !reported.contains(&"event.occurred_at") {
            problem(
                &mut problems,
                "event.occurred_at",
                "required",
                None,
                "the time of the business step is missing".into(),
            );
        }
        let source = source
            .or_else(|| self.entity.clone())
            .unwrap_or_else(|| self.name.clone());
        let event = TraceEvent {
            event_id: TraceEvent::derive_id(&self.name, &category, &record_key),
            category,
            occurred_at: occurred_at.unwrap_or(recorded_at),
            recorded_at,
            source,
            device,
            record_key: record_key.clone(),
            bill_type,
            trace_codes,
            aggregations,
            from: from.map(|code| Party { code, name: from_name }),
            to: to.map(|code| Party { code, name: to_name }),
            fields,
            pii,
        };
        let checked = validate(&event, &self.dataset);
        problems.extend(
            checked
                .into_iter()
                .filter(|p| !(p.rule == "required" && reported.contains(&p.field.as_str()))),
        );
        out.problems.extend(problems);
        out.events.push(event);
    }
}

fn ymd(dt: DateTime<FixedOffset>) -> String {
    use chrono::Datelike as _;
    let (y, m, d) = (dt.year(), dt.month(), dt.day());
    if !(0..=9999).contains(&y) {
        return format!("{y:04}-{m:02}-{d:02}");
    }
    let y = y as u32;
    let digits = [
        y / 1000,
        y / 100 % 10,
        y / 10 % 10,
        y % 10,
        10,
        m / 10,
        m % 10,
        10,
        d / 10,
        d % 10,
    ];
    digits
        .iter()
        .map(|&n| if n == 10 { '-' } else { char::from(b'0' + n as u8) })
        .collect()
}

fn trim_cow(v: Cow<'_, str>) -> Cow<'_, str> {
    match v {
        Cow::Borrowed(b) => Cow::Borrowed(b.trim()),
        Cow::Owned(o) => {
            let t = o.trim();
            if t.len() == o.len() {
                Cow::Owned(o)
            } else {
                Cow::Owned(t.to_string())
            }
        }
    }
}

fn convert(ty: ElementType, v: &str, scale: Option<f64>) -> Value {
    if let Some(s) = scale
        && let Ok(n) = v.parse::<f64>()
        && let Some(num) = serde_json::Number::from_f64(round9(n * s))
    {
        return if ty == ElementType::Integer && (n * s).fract() == 0.0 {
            Value::Number(serde_json::Number::from((n * s) as i64))
        } else {
            Value::Number(num)
        };
    }
    match ty {
        ElementType::Integer => v
            .parse::<i64>()
            .map_or_else(|_| Value::String(v.to_string()), Value::from),
        ElementType::Decimal => match v.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
            Some(n) => Value::Number(n),
            None => Value::String(v.to_string()),
        },
        ElementType::Boolean => match v.to_lowercase().as_str() {
            "1" | "true" | "t" | "y" | "yes" | "是" => Value::Bool(true),
            "0" | "false" | "f" | "n" | "no" | "否" => Value::Bool(false),
            _ => Value::String(v.to_string()),
        },
        ElementType::Json => serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string())),
        _ => Value::String(v.to_string()),
    }
}

/// Rounds away binary noise from scaling (e.g. 52 × 0.1).
fn round9(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
}

enum Ctx<'a> {
    Row(&'a [Option<&'a Value>]),
    Hl7(&'a Hl7Record, Option<usize>),
    Xml(&'a XmlNode),
    Json(&'a Value),
}

fn fetch<'a>(ctx: &Ctx<'a>, path: &SrcPath, all: bool) -> Vec<Cow<'a, str>> {
    let mut v = Vec::new();
    fetch_into(ctx, path, all, &mut v);
    v
}

/// `str::trim` with a fast path for values that start and end with a
/// visible ASCII character (the common case).
fn fast_trim(s: &str) -> &str {
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (Some(a), Some(b)) if a.is_ascii_graphic() && b.is_ascii_graphic() => s,
        _ => s.trim(),
    }
}

fn trim_in_place(v: &mut Cow<'_, str>) {
    match v {
        Cow::Borrowed(b) => *b = fast_trim(b),
        Cow::Owned(o) => {
            let t = fast_trim(o);
            if t.len() != o.len() {
                *v = Cow::Owned(t.to_string());
            }
        }
    }
}

fn fetch_into<'a>(ctx: &Ctx<'a>, path: &SrcPath, all: bool, out: &mut Vec<Cow<'a, str>>) {
    match (ctx, path) {
        (Ctx::Row(cols), SrcPath::Column(_, slot)) => {
            out.extend(cols.get(*slot).copied().flatten().and_then(json_text));
        }
        (Ctx::Hl7(m, g), SrcPath::Hl7(p)) => out.extend(m.get(p, *g, all).into_iter().map(Cow::Owned)),
        (Ctx::Xml(n), SrcPath::Xml(p)) => {
            let v = p.eval(n);
            if all {
                out.extend(v.into_iter().map(Cow::Borrowed));
            } else {
                out.extend(v.into_iter().find(|s| !s.trim().is_empty()).map(Cow::Borrowed));
            }
        }
        (Ctx::Json(j), SrcPath::Json(p)) => {
            let v = p.eval(j).into_iter().filter_map(json_text);
            if all {
                out.extend(v);
            } else {
                out.extend(v.take(1));
            }
        }
        _ => {}
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
