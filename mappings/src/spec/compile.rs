//! Compiling a TOML mapping spec into a [`MappingSpec`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono_tz::Tz;
use serde::Deserialize;
use toml::Spanned;

use super::{
    CategoryRule, EVENT_TARGETS, EventAttr, FieldMap, FieldSource, InputFormat, LookupTable, MappingSpec, PackageMap,
    SrcPath, Target,
};
use crate::dataset::{Dataset, ElementType, FastHashBuild};
use crate::datefmt::DateFormat;
use crate::error::{Location, SpecError, near_matches};
use crate::sources::{Hl7Path, JsonPath, XmlPath};

static NEXT_SPEC_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

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

/// Parses a spec; `origin` names it in errors (see [`MappingSpec::from_toml_str`]).
///
/// The phases run in a fixed order, so the first error reported is always
/// the same: `[source]`, `[category]`, `[code_tables]`, each `[[fields]]`
/// entry in turn, the required mappings, then `[[packages]]`.
pub(super) fn compile(text: &str, origin: &str, dataset: &Dataset) -> Result<MappingSpec, SpecError> {
    let raw: RawSpec = toml::from_str(text).map_err(|e| SpecError::from_toml(origin, text, &e))?;
    let ld = Ld { origin, text };
    let mut src = compile_source(&ld, raw.source)?;
    let (mut category, possible) = compile_category(&ld, dataset, src.format, &raw.category)?;
    let tables = compile_code_tables(raw.code_tables);
    let scope = FieldScope {
        ld: &ld,
        dataset,
        format: src.format,
        possible: &possible,
        tables: &tables,
    };
    let mut fields = raw
        .fields
        .into_iter()
        .enumerate()
        .map(|(i, f)| scope.compile_field(i, f))
        .collect::<Result<Vec<FieldMap>, SpecError>>()?;
    check_required_mappings(&ld, dataset, &category, &fields)?;
    // Apply fields in target-key order (stable, so several entries for one
    // target keep their order): events then carry their fields sorted,
    // which makes output easy to diff and canonical JSON cheap.
    fields.sort_by(|a, b| a.name.cmp(&b.name));
    let (columns, col_index) = number_columns(&mut src.record_key, &mut category, &mut fields);
    let packages = compile_packages(&ld, src.format, &raw.packages)?;
    Ok(MappingSpec {
        name: src.name,
        description: src.description,
        entity: src.entity,
        format: src.format,
        record_path: src.record_path,
        receiver: src.receiver,
        origin: origin.to_string(),
        zone: src.zone,
        record_key: src.record_key,
        records: src.records,
        group_by: src.group_by,
        category,
        fields,
        packages,
        columns,
        col_index,
        id: NEXT_SPEC_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        dataset: Arc::new(dataset.clone()),
    })
}

/// A compiled `[source]` table.
struct Source {
    name: String,
    description: String,
    entity: Option<String>,
    format: InputFormat,
    zone: Tz,
    record_key: Option<SrcPath>,
    record_path: Option<String>,
    records: Option<JsonPath>,
    group_by: Option<String>,
    receiver: String,
}

/// `[source]`: the input format, then the settings that depend on it.
fn compile_source(ld: &Ld<'_>, src: RawSource) -> Result<Source, SpecError> {
    let format = InputFormat::parse(src.format.get_ref()).ok_or_else(|| {
        ld.unknown(
            &src.format,
            "source.format",
            "input format",
            ["rows", "hl7", "xml", "json"].into_iter(),
        )
    })?;
    let zone = match &src.timezone {
        Some(z) => parse_zone(ld, z, "source.timezone")?,
        None => chrono_tz::Asia::Shanghai,
    };
    let record_key = match &src.record_key {
        Some(k) => Some(parse_path(
            ld,
            format,
            k.get_ref(),
            k.span().start,
            "source.record_key",
        )?),
        None => None,
    };
    let record_path = compile_record_path(ld, &src, format)?;
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
    Ok(Source {
        name: src.name,
        description: src.description,
        entity: src.entity,
        format,
        zone,
        record_key,
        record_path,
        records,
        group_by,
        receiver: src.receiver.unwrap_or_else(|| "NMPA-CSP".to_string()),
    })
}

/// `source.record_path`: required for XML sources (absolute), refused for others.
fn compile_record_path(ld: &Ld<'_>, src: &RawSource, format: InputFormat) -> Result<Option<String>, SpecError> {
    match (&src.record_path, format) {
        (Some(p), InputFormat::Xml) => {
            if !p.get_ref().starts_with('/') || p.get_ref().len() < 2 {
                return Err(ld.invalid(
                    p,
                    "source.record_path",
                    "record_path must be absolute, e.g. /Export/Records/Record",
                ));
            }
            Ok(Some(p.get_ref().clone()))
        }
        (None, InputFormat::Xml) => Err(ld.invalid(
            &src.format,
            "source.record_path",
            "xml sources need source.record_path, e.g. /Export/Records/Record",
        )),
        (Some(p), _) => Err(ld.invalid(p, "source.record_path", "record_path applies to xml sources only")),
        (None, _) => Ok(None),
    }
}

/// A category key the dataset defines, or an error suggesting near ones.
fn check_category(ld: &Ld<'_>, dataset: &Dataset, s: &Spanned<String>, key: &str) -> Result<String, SpecError> {
    if dataset.category(s.get_ref()).is_some() {
        Ok(s.get_ref().clone())
    } else {
        Err(ld.unknown(s, key, "category", dataset.categories().map(|c| c.key.as_str())))
    }
}

/// `[category]`: the rule, and every category it can produce (mapped
/// elements must belong to one of them).
fn compile_category(
    ld: &Ld<'_>,
    dataset: &Dataset,
    format: InputFormat,
    c: &RawCategory,
) -> Result<(CategoryRule, Vec<String>), SpecError> {
    match (&c.fixed, &c.from) {
        (Some(f), None) => {
            let k = check_category(ld, dataset, f, "category.fixed")?;
            Ok((CategoryRule::Fixed(k.clone()), vec![k]))
        }
        (None, Some(from)) => compile_category_from(ld, dataset, format, c, from),
        (Some(f), Some(_)) => Err(ld.invalid(f, "category", "give either category.fixed or category.from, not both")),
        (None, None) => Err(SpecError::Invalid {
            loc: ld.loc(ld.text.find("[category]").unwrap_or(0), "category"),
            message: "give category.fixed or category.from".into(),
        }),
    }
}

/// `category.from`: the category is read from the record, through
/// `category.map`, the bill type (`by = "bill_type"`) and `category.default`.
fn compile_category_from(
    ld: &Ld<'_>,
    dataset: &Dataset,
    format: InputFormat,
    c: &RawCategory,
    from: &Spanned<String>,
) -> Result<(CategoryRule, Vec<String>), SpecError> {
    let path = parse_path(ld, format, from.get_ref(), from.span().start, "category.from")?;
    let by_bill_type = match &c.by {
        Some(b) if b.get_ref() == "bill_type" => true,
        Some(b) => return Err(ld.unknown(b, "category.by", "category rule", ["bill_type"].into_iter())),
        None => false,
    };
    let mut map = HashMap::new();
    let mut possible = Vec::new();
    for (value, cat) in &c.map {
        let k = check_category(ld, dataset, cat, &format!("category.map.{value}"))?;
        possible.push(k.clone());
        map.insert(value.clone(), k);
    }
    let default = match &c.default {
        Some(d) => {
            let k = check_category(ld, dataset, d, "category.default")?;
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
    let rule = CategoryRule::From {
        path,
        by_bill_type,
        map,
        default,
    };
    Ok((rule, possible))
}

/// `[code_tables]`: the spec's local code tables, shared by the fields that
/// look them up.
fn compile_code_tables(raw: BTreeMap<String, BTreeMap<String, String>>) -> HashMap<String, Arc<LookupTable>> {
    raw.into_iter()
        .map(|(k, v)| (k, Arc::new(v.into_iter().collect())))
        .collect()
}

/// A code table a field looks up: its name and its entries.
type NamedTable = (String, Arc<LookupTable>);

/// What a `[[fields]]` entry is compiled against.
struct FieldScope<'s> {
    ld: &'s Ld<'s>,
    dataset: &'s Dataset,
    format: InputFormat,
    /// The categories the spec can produce.
    possible: &'s [String],
    tables: &'s HashMap<String, Arc<LookupTable>>,
}

/// The error key of a setting of the `i`th `[[fields]]` entry.
fn field_key(i: usize, k: &str) -> String {
    format!("fields[{i}].{k}")
}

impl FieldScope<'_> {
    /// The `i`th `[[fields]]` entry; settings are checked in the order
    /// `to`, `from`/`const`, `lookup`, `lookup_miss`, `date`, `tz`, `split`,
    /// `event_ref`.
    fn compile_field(&self, i: usize, f: RawField) -> Result<FieldMap, SpecError> {
        let ld = self.ld;
        let key = |k: &str| field_key(i, k);
        let name = f.to.get_ref().clone();
        let target = self.compile_target(i, &f.to)?;
        let source = self.compile_field_source(i, &f)?;
        let (lookup, lookup_keep) = self.compile_lookup(i, &f)?;
        let date = match &f.date {
            Some(d) => Some(compile_date(ld, d, &key("date"), &target, &name)?),
            None => None,
        };
        let tz = match &f.tz {
            Some(z) => Some(parse_zone(ld, z, &key("tz"))?),
            None => None,
        };
        if let Some(s) = &f.split
            && s.get_ref().is_empty()
        {
            return Err(ld.invalid(s, &key("split"), "split separator must not be empty"));
        }
        let event_ref = match &f.event_ref {
            Some(r) => Some(check_category(ld, self.dataset, r, &key("event_ref"))?),
            None => None,
        };
        Ok(FieldMap {
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
        })
    }

    /// `to`: an event attribute (`event.*`) or a dataset element of one of
    /// the categories the spec can produce.
    fn compile_target(&self, i: usize, to: &Spanned<String>) -> Result<Target, SpecError> {
        let (ld, dataset) = (self.ld, self.dataset);
        let name = to.get_ref();
        if let Some(attr) = name.strip_prefix("event.") {
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
                _ => return Err(ld.unknown(to, &field_key(i, "to"), "event attribute", EVENT_TARGETS.into_iter())),
            };
            return Ok(Target::Event(a));
        }
        let Some(el) = dataset.element(name) else {
            let els: Vec<&str> = dataset
                .elements()
                .map(|e| e.key.as_str())
                .chain(EVENT_TARGETS)
                .collect();
            return Err(ld.unknown(to, &field_key(i, "to"), "element", els.into_iter()));
        };
        if !self
            .possible
            .iter()
            .any(|c| dataset.category(c).is_some_and(|c| c.allows(name)))
        {
            return Err(ld.invalid(
                to,
                &field_key(i, "to"),
                format!("element `{name}` is not part of category {}", self.possible.join(" / ")),
            ));
        }
        Ok(Target::Element {
            key: name.clone(),
            ty: el.ty,
            pii: el.pii,
        })
    }

    /// `from` (one path or a list, the first non-empty wins) or `const`.
    fn compile_field_source(&self, i: usize, f: &RawField) -> Result<FieldSource, SpecError> {
        let ld = self.ld;
        match (&f.from, &f.constant) {
            (Some(from), None) => {
                let list: Vec<String> = match from.get_ref() {
                    toml::Value::String(s) => vec![s.clone()],
                    toml::Value::Array(a) if !a.is_empty() && a.iter().all(toml::Value::is_str) => {
                        a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
                    }
                    _ => {
                        return Err(ld.invalid(
                            from,
                            &field_key(i, "from"),
                            "from must be a path or a non-empty list of paths",
                        ));
                    }
                };
                let paths = list
                    .iter()
                    .map(|p| parse_path(ld, self.format, p, from.span().start, &field_key(i, "from")))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(FieldSource::Paths(paths))
            }
            (None, Some(c)) => Ok(FieldSource::Const(c.clone())),
            (Some(from), Some(_)) => {
                Err(ld.invalid(from, &field_key(i, "from"), "give either from or const, not both"))
            }
            (None, None) => Err(ld.invalid(&f.to, &field_key(i, "from"), "give from (a source path) or const")),
        }
    }

    /// `lookup` (a code table of the spec) and `lookup_miss` (`error`, the
    /// default, or `keep`).
    fn compile_lookup(&self, i: usize, f: &RawField) -> Result<(Option<NamedTable>, bool), SpecError> {
        let ld = self.ld;
        let lookup = match &f.lookup {
            Some(l) => match self.tables.get(l.get_ref()) {
                Some(t) => Some((l.get_ref().clone(), t.clone())),
                None => {
                    return Err(ld.unknown(
                        l,
                        &field_key(i, "lookup"),
                        "code table",
                        self.tables.keys().map(String::as_str),
                    ));
                }
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
                    &field_key(i, "lookup_miss"),
                    "lookup_miss policy",
                    ["error", "keep"].into_iter(),
                ));
            }
        };
        Ok((lookup, lookup_keep))
    }
}

/// `date`: a legacy date format, for date and datetime elements and
/// `event.occurred_at` only.
fn compile_date(
    ld: &Ld<'_>,
    d: &Spanned<String>,
    key: &str,
    target: &Target,
    name: &str,
) -> Result<DateFormat, SpecError> {
    let fmt = DateFormat::compile(d.get_ref()).map_err(|m| ld.invalid(d, key, m))?;
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
            key,
            format!("a date transform needs a date or datetime element or event.occurred_at, not `{name}`"),
        ));
    }
    Ok(fmt)
}

/// Every spec maps `event.occurred_at`, and a fixed category's required
/// elements.
fn check_required_mappings(
    ld: &Ld<'_>,
    dataset: &Dataset,
    category: &CategoryRule,
    fields: &[FieldMap],
) -> Result<(), SpecError> {
    let mapped = |name: &str| fields.iter().any(|f| f.name == name);
    let fields_loc = || ld.loc(ld.text.find("[[fields]]").unwrap_or(0), "fields");
    if !mapped("event.occurred_at") {
        return Err(SpecError::Invalid {
            loc: fields_loc(),
            message: "no [[fields]] entry maps event.occurred_at (when the business step happened)".into(),
        });
    }
    if let CategoryRule::Fixed(c) = category
        && let Some(cat) = dataset.category(c)
    {
        let missing: Vec<&str> = cat.required.iter().filter(|r| !mapped(r)).map(String::as_str).collect();
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
    Ok(())
}

/// Numbers the row columns the spec reads (record key, category, fields, in
/// that order) so a row is scanned once per record: the column table and
/// its index.
fn number_columns(
    record_key: &mut Option<SrcPath>,
    category: &mut CategoryRule,
    fields: &mut [FieldMap],
) -> (Vec<String>, HashMap<String, usize, FastHashBuild>) {
    let mut columns: Vec<String> = Vec::new();
    let mut col_index: HashMap<String, usize, FastHashBuild> = HashMap::default();
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
    if let CategoryRule::From { path, .. } = category {
        number(path);
    }
    for f in fields {
        if let FieldSource::Paths(ps) = &mut f.source {
            ps.iter_mut().for_each(&mut number);
        }
    }
    (columns, col_index)
}

/// `[[packages]]`: packaging links read from JSON sources.
fn compile_packages(ld: &Ld<'_>, format: InputFormat, raw: &[RawPackage]) -> Result<Vec<PackageMap>, SpecError> {
    let mut packages = Vec::with_capacity(raw.len());
    for p in raw {
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
    Ok(packages)
}
