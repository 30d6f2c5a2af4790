//! Mapping one input record into trace events: the record is split into
//! contexts (`map_at`), each context's category is resolved, every field
//! is fetched, transformed and applied to a draft event, and the draft is
//! assembled into a [`TraceEvent`] and validated (`map_one`).

use std::borrow::Cow;

use chrono::{DateTime, FixedOffset};
use serde_json::{Map, Value};

use super::convert::element_value;
use super::fetch::{Ctx, fast_trim, fetch, fetch_into, trim_cow, trim_in_place};
use super::{CategoryRule, EventAttr, FieldMap, FieldSource, InputFormat, MapOutcome, MappingSpec, Target};
use crate::dataset::ElementType;
use crate::datefmt::DateFormat;
use crate::event::{AggregationLink, Party, TraceEvent};
use crate::pii::{Pii, mask};
use crate::sources::{Hl7Record, Record, XmlNode, json_text};
use crate::validate::{Problem, Severity, validate};

impl MappingSpec {
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

    /// Maps one context (a row, an HL7 message or group, an XML fragment,
    /// a JSON record) into one event, or into problems only when no
    /// category applies. `index` numbers records without a key.
    fn map_one<'a>(&'a self, ctx: &Ctx<'a>, index: usize, recorded_at: DateTime<FixedOffset>, out: &mut MapOutcome) {
        let record_key = self
            .record_key
            .as_ref()
            .and_then(|p| fetch(ctx, p, false).into_iter().next())
            .map_or_else(|| format!("#{}", index + 1), |k| k.trim().to_string());
        let mut report = Report {
            record: record_key,
            problems: Vec::new(),
            reported: Vec::new(),
        };
        let Some(category) = self.resolve_category(ctx, &mut report) else {
            out.problems.extend(report.problems);
            return;
        };
        let mut draft = Draft::new(self.fields.len());
        let mut vals: Vec<Cow<'a, str>> = Vec::with_capacity(4);
        for f in &self.fields {
            self.apply_field(f, ctx, &mut vals, &mut draft, &mut report);
        }
        let event = self.assemble(ctx, category, draft, recorded_at, &mut report);
        out.problems.extend(report.problems);
        out.events.push(event);
    }

    /// The record's category: fixed, or read from the record through
    /// `category.map`, the bill type and `category.default`.
    fn resolve_category(&self, ctx: &Ctx<'_>, report: &mut Report<'_>) -> Option<String> {
        let (path, by_bill_type, map, default) = match &self.category {
            CategoryRule::Fixed(c) => return Some(c.clone()),
            CategoryRule::From {
                path,
                by_bill_type,
                map,
                default,
            } => (path, *by_bill_type, map, default),
        };
        let v = fetch(ctx, path, false)
            .into_iter()
            .next()
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        let found = map
            .get(&v)
            .cloned()
            .or_else(|| {
                if by_bill_type {
                    self.dataset.category_for_bill_type(&v).map(|c| c.key.clone())
                } else {
                    None
                }
            })
            .or_else(|| default.clone());
        if found.is_none() {
            report.error(
                "category",
                "category",
                Some(v),
                "no category for this value (category.map / bill type)".into(),
            );
        }
        found
    }

    /// One `[[fields]]` entry: its values are fetched, transformed and set
    /// on the draft; a field left without values sets nothing.
    fn apply_field<'a>(
        &'a self,
        f: &'a FieldMap,
        ctx: &Ctx<'a>,
        vals: &mut Vec<Cow<'a, str>>,
        draft: &mut Draft,
        report: &mut Report<'a>,
    ) {
        vals.clear();
        source_values(f, ctx, vals);
        reshape(f, vals);
        look_up(f, vals, report);
        if vals.is_empty() {
            return;
        }
        self.decorate(f, vals);
        let dates = match &f.date {
            Some(fmt) => {
                let ok = self.parse_dates(f, fmt, vals, report);
                if ok.is_empty() {
                    return;
                }
                Some(ok)
            }
            None => None,
        };
        match &f.target {
            Target::Event(attr) => draft.set_attr(*attr, f, vals, dates.as_deref(), report),
            Target::Element { key, ty, pii } => {
                if vals.len() > 1 && *ty != ElementType::Json {
                    report.error(
                        key,
                        "cardinality",
                        None,
                        format!("{} values for a single-valued element; the first is used", vals.len()),
                    );
                    report.reported.push(&f.name);
                }
                draft.set_element(key, *pii, element_value(*ty, f.scale, vals, dates.as_deref()));
            }
        }
    }

    /// `date`: each value parsed in the field's zone (`tz`, else the
    /// spec's); values that do not parse are reported.
    fn parse_dates<'a>(
        &self,
        f: &'a FieldMap,
        fmt: &DateFormat,
        vals: &[Cow<'_, str>],
        report: &mut Report<'a>,
    ) -> Vec<(DateTime<FixedOffset>, bool)> {
        let zone = f.tz.unwrap_or(self.zone);
        let mut ok = Vec::new();
        for v in vals {
            match fmt.parse_in(v, zone) {
                Some(d) => ok.push(d),
                None => {
                    let shown = if f.is_pii() { mask(v) } else { v.to_string() };
                    report.field_error(
                        &f.name,
                        "date_format",
                        Some(shown),
                        "does not match the spec's date format (or is not a valid time in the zone)".into(),
                    );
                }
            }
        }
        ok
    }

    /// `prefix`/`suffix`, then `event_ref` (the value becomes the id of the
    /// event this source derived for that record in that category).
    fn decorate(&self, f: &FieldMap, vals: &mut Vec<Cow<'_, str>>) {
        if f.prefix.is_some() || f.suffix.is_some() {
            let (p, s) = (f.prefix.as_deref().unwrap_or(""), f.suffix.as_deref().unwrap_or(""));
            *vals = std::mem::take(vals)
                .into_iter()
                .map(|v| Cow::Owned(format!("{p}{v}{s}")))
                .collect();
        }
        if let Some(cat) = &f.event_ref {
            *vals = std::mem::take(vals)
                .into_iter()
                .map(|v| Cow::Owned(TraceEvent::derive_id(&self.name, cat, &v).to_string()))
                .collect();
        }
    }

    /// Builds the event from the draft: packaging links, the event-level
    /// checks, then validation against the dataset (without `required`
    /// problems for fields already reported).
    fn assemble(
        &self,
        ctx: &Ctx<'_>,
        category: String,
        draft: Draft,
        recorded_at: DateTime<FixedOffset>,
        report: &mut Report<'_>,
    ) -> TraceEvent {
        let Draft {
            fields,
            pii,
            occurred_at,
            source,
            device,
            trace_codes,
            parent,
            children,
            from,
            from_name,
            to,
            to_name,
        } = draft;
        let bill_type = fields.get("bill_type").and_then(Value::as_str).map(str::to_string);
        let mut aggregations = self.package_links(ctx);
        if let Some(p) = parent {
            aggregations.push(AggregationLink { parent: p, children });
        } else if !children.is_empty() {
            report.error(
                "event.child_codes",
                "aggregation",
                None,
                "child codes without event.parent_code".into(),
            );
        }
        if occurred_at.is_none() && !report.reported.contains(&"event.occurred_at") {
            report.error(
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
            event_id: TraceEvent::derive_id(&self.name, &category, &report.record),
            category,
            occurred_at: occurred_at.unwrap_or(recorded_at),
            recorded_at,
            source,
            device,
            record_key: report.record.clone(),
            bill_type,
            trace_codes,
            aggregations,
            from: from.map(|code| Party { code, name: from_name }),
            to: to.map(|code| Party { code, name: to_name }),
            fields,
            pii,
        };
        let checked = validate(&event, &self.dataset);
        let reported = &report.reported;
        report.problems.extend(
            checked
                .into_iter()
                .filter(|p| !(p.rule == "required" && reported.contains(&p.field.as_str()))),
        );
        event
    }

    /// `[[packages]]`: the packaging links of a JSON record (a parent code
    /// and its non-empty child codes per selected node).
    fn package_links(&self, ctx: &Ctx<'_>) -> Vec<AggregationLink> {
        let mut aggregations = Vec::new();
        let Ctx::Json(v) = ctx else {
            return aggregations;
        };
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
        aggregations
    }
}

impl FieldMap {
    /// Whether the field maps a personal element (values masked in problems).
    fn is_pii(&self) -> bool {
        matches!(self.target, Target::Element { pii: true, .. })
    }
}

/// The problems found while mapping one record.
struct Report<'a> {
    /// The record key every problem names.
    record: String,
    problems: Vec<Problem>,
    /// Fields whose problem is already reported: no `required` problem is
    /// added for them (by validation, or for a missing `event.occurred_at`).
    reported: Vec<&'a str>,
}

impl<'a> Report<'a> {
    /// Records an error.
    fn error(&mut self, field: &str, rule: &'static str, value: Option<String>, message: String) {
        self.problems.push(Problem {
            record: self.record.clone(),
            field: field.to_string(),
            rule,
            value,
            message,
            severity: Severity::Error,
        });
    }

    /// Records an error of field `name` and marks the field reported.
    fn field_error(&mut self, name: &'a str, rule: &'static str, value: Option<String>, message: String) {
        self.error(name, rule, value, message);
        self.reported.push(name);
    }
}

/// The event attributes and elements collected from one record's fields.
struct Draft {
    fields: Map<String, Value>,
    pii: Pii,
    occurred_at: Option<DateTime<FixedOffset>>,
    source: Option<String>,
    device: Option<String>,
    trace_codes: Vec<String>,
    parent: Option<String>,
    children: Vec<String>,
    from: Option<String>,
    from_name: Option<String>,
    to: Option<String>,
    to_name: Option<String>,
}

impl Draft {
    fn new(fields: usize) -> Draft {
        Draft {
            fields: Map::with_capacity(fields),
            pii: Pii::new(),
            occurred_at: None,
            source: None,
            device: None,
            trace_codes: Vec::new(),
            parent: None,
            children: Vec::new(),
            from: None,
            from_name: None,
            to: None,
            to_name: None,
        }
    }

    /// An `event.*` target: single-valued attributes take the first value.
    fn set_attr<'a>(
        &mut self,
        attr: EventAttr,
        f: &'a FieldMap,
        vals: &[Cow<'_, str>],
        dates: Option<&[(DateTime<FixedOffset>, bool)]>,
        report: &mut Report<'a>,
    ) {
        let first = || vals.first().map(|v| v.to_string());
        match attr {
            EventAttr::OccurredAt => {
                self.occurred_at = match dates {
                    Some(d) => d.first().map(|x| x.0),
                    None => {
                        let v = first().unwrap_or_default();
                        let parsed = DateTime::parse_from_rfc3339(&v).ok();
                        if parsed.is_none() {
                            report.field_error(
                                &f.name,
                                "date_format",
                                Some(v),
                                "expected RFC 3339; set `date = \"...\"` for legacy formats".into(),
                            );
                        }
                        parsed
                    }
                };
            }
            EventAttr::Source => self.source = first(),
            EventAttr::Device => self.device = first(),
            EventAttr::TraceCodes => self.trace_codes.extend(vals.iter().map(|v| v.to_string())),
            EventAttr::ParentCode => self.parent = first(),
            EventAttr::ChildCodes => self.children.extend(vals.iter().map(|v| v.to_string())),
            EventAttr::From => self.from = first(),
            EventAttr::FromName => self.from_name = first(),
            EventAttr::To => self.to = first(),
            EventAttr::ToName => self.to_name = first(),
        }
    }

    /// A dataset element's value: personal elements go to `pii` as text,
    /// the others to `fields`.
    fn set_element(&mut self, key: &str, is_pii: bool, value: Value) {
        if is_pii {
            let s = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            self.pii.insert(key.to_string(), s);
        } else {
            self.fields.insert(key.to_string(), value);
        }
    }
}

/// The field's raw values: its constant, its paths joined (`join`), or the
/// values of its first path that has a non-blank one; then trimmed
/// (`trim`), empties dropped, and `default` when none is left.
fn source_values<'a>(f: &'a FieldMap, ctx: &Ctx<'a>, vals: &mut Vec<Cow<'a, str>>) {
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
                    fetch_into(ctx, p, f.all, vals);
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
}

/// `split` (each part trimmed, empties dropped), `index` (keep one value)
/// and `upper`.
fn reshape(f: &FieldMap, vals: &mut Vec<Cow<'_, str>>) {
    if let Some(sep) = &f.split {
        *vals = std::mem::take(vals)
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
}

/// `lookup`: each value through the spec's code table; a value without an
/// entry is kept (`lookup_miss = "keep"`) or dropped and reported.
fn look_up<'a>(f: &'a FieldMap, vals: &mut Vec<Cow<'a, str>>, report: &mut Report<'a>) {
    let Some((tname, table)) = &f.lookup else {
        return;
    };
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
                let shown = if f.is_pii() { mask(&v) } else { v.to_string() };
                report.field_error(
                    &f.name,
                    "lookup",
                    Some(shown),
                    format!("no entry in the spec's code table `{tname}`"),
                );
            }
        }
    }
}
