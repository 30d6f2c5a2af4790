//! Mapping one input record into trace events.

use std::borrow::Cow;

use chrono::{DateTime, FixedOffset};
use serde_json::{Map, Value};

use super::convert::{convert, ymd};
use super::fetch::{Ctx, fast_trim, fetch, fetch_into, trim_cow, trim_in_place};
use super::{CategoryRule, EventAttr, FieldSource, InputFormat, MapOutcome, MappingSpec, Target};
use crate::dataset::ElementType;
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
