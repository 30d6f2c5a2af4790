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
pub(super) fn compile(text: &str, origin: &str, dataset: &Dataset) -> Result<MappingSpec, SpecError> {
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
                        return Err(ld.invalid(from, &key("from"), "from must be a path or a non-empty list of paths"));
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
                        format!("a date transform needs a date or datetime element or event.occurred_at, not `{name}`"),
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
