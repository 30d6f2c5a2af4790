//! Validation of events against the dataset (R1.7), and the batch-level
//! data-quality rules. Every problem names the record, the field, the rule
//! and the value, with personal data masked.

use std::collections::HashMap;
use std::fmt;

use chrono::{Datelike, Days, Months, NaiveDate};
use serde::Serialize;
use serde_json::Value;

use crate::checks;
use crate::dataset::{Category, Dataset, Element, ElementType, TraceCodePolicy};
use crate::event::TraceEvent;
use crate::pii::mask;

thread_local! {
    /// (dataset uid, [(field key at position, element index)]).
    static FIELD_LAYOUT: std::cell::Cell<(u64, Vec<(String, usize)>)> = const { std::cell::Cell::new((0, Vec::new())) };
}

/// How serious a problem is. Records with an `Error` fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Suspicious, reported, the record still passes.
    Warning,
    /// The record is rejected.
    Error,
}

/// One validation or mapping problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The source record's key.
    pub record: String,
    /// The element key (or `event.*` attribute) concerned.
    pub field: String,
    /// The rule's stable name (e.g. `required`, `id_number_check`).
    pub rule: &'static str,
    /// The offending value, masked if personal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Explanation for the hospital's IT staff.
    pub message: String,
    /// Severity.
    pub severity: Severity,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{sev}: record `{}`: field `{}`: rule {}",
            self.record, self.field, self.rule
        )?;
        if let Some(v) = &self.value {
            write!(f, ": value {v:?}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl Problem {
    /// Whether this problem rejects the record.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

struct Ctx<'a> {
    record: &'a str,
    out: Vec<Problem>,
}

impl Ctx<'_> {
    fn push(
        &mut self,
        sev: Severity,
        field: &str,
        rule: &'static str,
        value: Option<String>,
        message: impl Into<String>,
    ) {
        self.out.push(Problem {
            record: self.record.to_string(),
            field: field.to_string(),
            rule,
            value,
            message: message.into(),
            severity: sev,
        });
    }
    fn err(&mut self, field: &str, rule: &'static str, value: Option<String>, message: impl Into<String>) {
        self.push(Severity::Error, field, rule, value, message);
    }
    fn warn(&mut self, field: &str, rule: &'static str, value: Option<String>, message: impl Into<String>) {
        self.push(Severity::Warning, field, rule, value, message);
    }
}

fn shown(v: &Value, pii: bool) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if pii { mask(&s) } else { s }
}

/// Validates one event against the dataset: category, required elements,
/// types, lengths, ranges, code tables, identifier checks (trace code,
/// 受种者编码, GB 11643, GB 32100), plausible dates (expiry after
/// production and the 码上放心 expiry rule), cold-chain consistency and the
/// "no trace code supplied" rule. Batch rules live in [`QualityTracker`].
///
/// The checks run in phases, reporting in this order: the category, the
/// business fields one by one, the personal data, the required elements,
/// the trace codes, the parties, then the cross-field rules.
pub fn validate(event: &TraceEvent, dataset: &Dataset) -> Vec<Problem> {
    let mut cx = Ctx {
        record: &event.record_key,
        out: Vec::new(),
    };
    let Some(cat) = dataset.category(&event.category) else {
        let near = dataset.near_categories(&event.category);
        cx.err(
            "category",
            "category",
            Some(event.category.clone()),
            format!("unknown category{}", crate::error::hint(&near)),
        );
        return cx.out;
    };
    let mut present = Present::new(dataset.element_count());
    let mut cross = Cross::new();
    check_fields(&mut cx, event, dataset, cat, &mut present, &mut cross);
    check_pii(&mut cx, event, dataset, &mut present, &mut cross);
    check_required(&mut cx, dataset, cat, &present);
    check_trace_code_policy(&mut cx, event, cat);
    check_trace_code_formats(&mut cx, event);
    check_trace_code_pairs(&mut cx, event);
    check_parties(&mut cx, event);
    cross_field(&mut cx, event, &cross);
    cx.out
}

/// The elements present in one event, as a bit set by element index (on
/// the stack for datasets up to 512 elements).
struct Present {
    small: [u64; 8],
    /// Used instead of `small` for datasets of more than 512 elements.
    large: Vec<u64>,
}

impl Present {
    fn new(element_count: usize) -> Present {
        let mut large = Vec::new();
        if element_count > 512 {
            large.resize(element_count.div_ceil(64), 0u64);
        }
        Present {
            small: [0u64; 8],
            large,
        }
    }
    fn words(&self) -> &[u64] {
        if self.large.is_empty() {
            &self.small
        } else {
            &self.large
        }
    }
    fn mark(&mut self, el: &Element) {
        let words: &mut [u64] = if self.large.is_empty() {
            &mut self.small
        } else {
            &mut self.large
        };
        if let Some(w) = words.get_mut(el.index / 64) {
            *w |= 1u64 << (el.index % 64);
        }
    }
    fn has(&self, idx: usize) -> bool {
        self.words()
            .get(idx / 64)
            .is_some_and(|w| w & (1u64 << (idx % 64)) != 0)
    }
}

/// The element of the field at `pos`. Events of one source carry the same
/// fields in the same order: `layout` remembers the element positions per
/// thread ([`FIELD_LAYOUT`]) and confirms each with one comparison.
fn element_at_pos<'d>(
    layout: &mut Vec<(String, usize)>,
    dataset: &'d Dataset,
    pos: usize,
    key: &str,
) -> Option<&'d Element> {
    match layout.get(pos) {
        Some((k, i)) if crate::dataset::same_key(k, key) => dataset.element_at(*i),
        _ => {
            let el = dataset.element(key);
            if let Some(e) = el
                && pos <= layout.len()
                && pos < 1024
            {
                layout.truncate(pos);
                layout.push((key.to_string(), e.index));
            }
            el
        }
    }
}

/// The business fields, one by one: a known element, not personal, part
/// of the category, with a valid value. Marks the non-null ones present
/// and collects the values the cross-field rules read.
fn check_fields<'e>(
    cx: &mut Ctx<'_>,
    event: &'e TraceEvent,
    dataset: &Dataset,
    cat: &Category,
    present: &mut Present,
    cross: &mut Cross<'e>,
) {
    let mut layout = FIELD_LAYOUT.with(|c| c.take());
    if layout.0 != dataset.uid {
        layout = (dataset.uid, Vec::new());
    }
    for (pos, (key, value)) in event.fields.iter().enumerate() {
        let Some(el) = element_at_pos(&mut layout.1, dataset, pos, key) else {
            let near = dataset.near_elements(key);
            cx.err(
                key,
                "unknown_element",
                None,
                format!("not an element of {}{}", dataset.id, crate::error::hint(&near)),
            );
            continue;
        };
        if el.pii {
            cx.err(
                key,
                "pii_in_fields",
                None,
                "personal element must be carried in pii, not in fields",
            );
        }
        if !value.is_null() {
            present.mark(el);
        }
        if el.cross {
            cross.push(key, CrossVal::V(value));
        }
        if !cat.allows_element(el) {
            cx.warn(
                key,
                "not_in_category",
                None,
                format!("element is not part of category `{}`", cat.key),
            );
        }
        check_value(cx, el, value);
    }
    FIELD_LAYOUT.with(|c| c.replace(layout));
}

/// The personal data: known elements that are personal, with valid values
/// (numbers and flags are checked from their text). Marks them present and
/// collects the values the cross-field rules read.
fn check_pii<'e>(
    cx: &mut Ctx<'_>,
    event: &'e TraceEvent,
    dataset: &Dataset,
    present: &mut Present,
    cross: &mut Cross<'e>,
) {
    for (key, value) in event.pii.iter() {
        match dataset.element(key) {
            Some(el) if el.pii => {
                present.mark(el);
                if el.cross {
                    cross.push(key, CrossVal::S(value));
                }
                match el.ty {
                    ElementType::Integer | ElementType::Decimal | ElementType::Boolean | ElementType::Json => {
                        check_value(cx, el, &Value::String(value.to_string()));
                    }
                    _ => check_str(cx, el, value),
                }
            }
            Some(_) => cx.err(key, "not_pii", None, "element is not personal data; carry it in fields"),
            None => cx.err(
                key,
                "unknown_element",
                None,
                format!("not an element of {}", dataset.id),
            ),
        }
    }
}

/// Every required element of the category is present.
fn check_required(cx: &mut Ctx<'_>, dataset: &Dataset, cat: &Category, present: &Present) {
    for (req, idx) in cat.required.iter().zip(&cat.required_idx) {
        if !present.has(*idx) {
            let name = dataset.element(req).map_or("", |e| e.zh.as_str());
            cx.err(
                req,
                "required",
                None,
                format!("required element {name} is missing for category `{}`", cat.key),
            );
        }
    }
}

/// Trace codes (NMPAB/T 1002, 码上放心 rules): present when the category
/// requires them, absent when it carries none.
fn check_trace_code_policy(cx: &mut Ctx<'_>, event: &TraceEvent, cat: &Category) {
    match cat.trace_codes {
        TraceCodePolicy::Required if event.trace_codes.is_empty() => {
            cx.err(
                "event.trace_codes",
                "trace_code_missing",
                None,
                "未提供疫苗追溯码: no trace code supplied",
            );
        }
        TraceCodePolicy::None if !event.trace_codes.is_empty() => {
            cx.warn(
                "event.trace_codes",
                "trace_code_unexpected",
                None,
                format!("category `{}` carries no trace codes", cat.key),
            );
        }
        _ => {}
    }
}

/// Every trace code, the event's and its packaging links', is 20 digits
/// and starts with 8.
fn check_trace_code_formats(cx: &mut Ctx<'_>, event: &TraceEvent) {
    for code in event.trace_codes.iter().chain(
        event
            .aggregations
            .iter()
            .flat_map(|a| std::iter::once(&a.parent).chain(&a.children)),
    ) {
        if !checks::is_trace_code(code) {
            cx.err(
                "event.trace_codes",
                "trace_code_format",
                Some(code.clone()),
                "trace code must be 20 digits (NMPAB/T 1002)",
            );
        } else if !code.starts_with('8') {
            cx.warn(
                "event.trace_codes",
                "trace_code_prefix",
                Some(code.clone()),
                "码上放心 filters out codes not starting with 8",
            );
        }
    }
}

/// No trace code twice in one event, and not both a package and its
/// linked contents.
fn check_trace_code_pairs(cx: &mut Ctx<'_>, event: &TraceEvent) {
    let mut sorted: Vec<&str> = Vec::new();
    if event.trace_codes.len() > 1 || !event.aggregations.is_empty() {
        sorted = event.trace_codes.iter().map(String::as_str).collect();
        sorted.sort_unstable();
    }
    for pair in sorted.windows(2) {
        if pair[0] == pair[1] {
            cx.err(
                "event.trace_codes",
                "trace_code_duplicate",
                Some(pair[0].to_string()),
                "the same trace code appears twice in one event",
            );
        }
    }
    for a in &event.aggregations {
        let has = |c: &str| sorted.binary_search(&c).is_ok();
        if has(&a.parent) && a.children.iter().any(|c| has(c)) {
            cx.err(
                "event.trace_codes",
                "parent_and_child",
                Some(a.parent.clone()),
                "an event must not hold both a parent code and a linked child code",
            );
        }
    }
}

/// The parties: 18-character organisation codes pass GB 32100, and the
/// source entity is named.
fn check_parties(cx: &mut Ctx<'_>, event: &TraceEvent) {
    for (name, party) in [("event.from", &event.from), ("event.to", &event.to)] {
        if let Some(p) = party
            && p.code.chars().count() == 18
            && !checks::is_valid_uscc(&p.code)
        {
            cx.err(
                name,
                "uscc_check",
                Some(p.code.clone()),
                "18-character organisation code fails the GB 32100 check",
            );
        }
    }
    if event.source.trim().is_empty() {
        cx.err("event.source", "required", None, "source entity is missing");
    }
}

fn check_value(cx: &mut Ctx<'_>, el: &Element, value: &Value) {
    let key = el.key.as_str();
    let pii = el.pii;
    if value.is_null() {
        return;
    }
    let bad_type = |cx: &mut Ctx<'_>, what: &str| {
        cx.err(
            key,
            "type",
            Some(shown(value, pii)),
            format!("expected {what} ({})", el.ty.name()),
        );
    };
    match el.ty {
        ElementType::Integer => {
            let Some(n) = value.as_i64() else {
                return bad_type(cx, "a whole number");
            };
            range(cx, el, n as f64, value);
        }
        ElementType::Decimal => {
            let Some(n) = value.as_f64() else {
                return bad_type(cx, "a number");
            };
            range(cx, el, n, value);
        }
        ElementType::Boolean => {
            if !value.is_boolean() {
                bad_type(cx, "true or false");
            }
        }
        ElementType::Json => {}
        _ => {
            let Some(s) = value.as_str() else {
                return bad_type(cx, "text");
            };
            check_str(cx, el, s);
        }
    }
}

/// Checks a text value (shared by business fields and personal data).
fn check_str(cx: &mut Ctx<'_>, el: &Element, s: &str) {
    let key = el.key.as_str();
    let pii = el.pii;
    let shown_s = || if pii { mask(s) } else { s.to_string() };
    let n = s.chars().count();
    if let Some(max) = el.max_len
        && n > max
    {
        cx.err(
            key,
            "max_length",
            Some(shown_s()),
            format!("{n} characters, at most {max} allowed"),
        );
    }
    if let Some(min) = el.min_len
        && n < min
    {
        cx.err(
            key,
            "min_length",
            Some(shown_s()),
            format!("{n} characters, at least {min} required"),
        );
    }
    let ok = match el.ty {
        ElementType::Digits => s.bytes().all(|b| b.is_ascii_digit()),
        ElementType::Date => parse_ymd(s).is_some(),
        ElementType::Datetime => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
        ElementType::TraceCode => checks::is_trace_code(s),
        ElementType::RecipientCode => checks::is_recipient_code(s),
        ElementType::Uscc => checks::is_valid_uscc(s),
        ElementType::Sm3Hex => checks::is_sm3_hex(s),
        ElementType::Uuid => uuid::Uuid::parse_str(s).is_ok(),
        ElementType::Uri => checks::is_uri(s),
        ElementType::Phone => checks::is_phone(s),
        _ => true,
    };
    if !ok {
        let (rule, msg) = match el.ty {
            ElementType::Digits => ("type", "expected digits only"),
            ElementType::Date => ("type", "expected a date YYYY-MM-DD"),
            ElementType::Datetime => ("type", "expected an RFC 3339 date-time with offset"),
            ElementType::TraceCode => ("trace_code_format", "trace code must be 20 digits (NMPAB/T 1002)"),
            ElementType::RecipientCode => ("recipient_code_format", "受种者编码 must be 18 digits"),
            ElementType::Uscc => ("uscc_check", "unified social credit code fails the GB 32100 check"),
            ElementType::Sm3Hex => ("type", "expected an SM3 digest: 64 lowercase hex digits"),
            ElementType::Uuid => ("type", "expected a UUID"),
            ElementType::Uri => ("type", "expected a URI (scheme:...)"),
            ElementType::Phone => ("type", "expected a phone number"),
            _ => ("type", "bad value"),
        };
        cx.err(key, rule, Some(shown_s()), msg);
        return;
    }
    if el.ty == ElementType::RecipientCode
        && let Some(y) = checks::recipient_code_birth_year(s)
        && !(1900..=2100).contains(&y)
    {
        cx.warn(
            key,
            "recipient_code_birth_year",
            Some(shown_s()),
            format!("birth year {y} in 受种者编码 is implausible"),
        );
    }
    if el.ty == ElementType::IdNumber {
        check_id_number(cx, el, s);
    }
    if let Some(table) = &el.table
        && !table.contains(s)
    {
        let t = &table.key;
        let mut valid: Vec<&str> = table.codes.keys().map(String::as_str).collect();
        valid.truncate(12);
        cx.err(
            key,
            "code_table",
            Some(shown_s()),
            format!("not in code table `{t}` ({}); valid: {}", table.zh, valid.join(", ")),
        );
    }
}

fn check_id_number(cx: &mut Ctx<'_>, el: &Element, s: &str) {
    // Which document type applies? The rule is "a resident ID number when it
    // looks like one": 18 characters with 17 leading digits must pass GB 11643.
    let b = s.as_bytes();
    if b.len() == 18 && b[..17].iter().all(u8::is_ascii_digit) && !checks::is_valid_resident_id(s) {
        cx.err(
            &el.key,
            "id_number_check",
            Some(mask(s)),
            "resident ID number fails the GB 11643 check digit or birth date",
        );
    }
}

fn range(cx: &mut Ctx<'_>, el: &Element, n: f64, value: &Value) {
    if el.min.is_some_and(|m| n < m) || el.max.is_some_and(|m| n > m) {
        cx.err(
            &el.key,
            "range",
            Some(shown(value, el.pii)),
            format!(
                "outside {}..={}",
                el.min.map_or("-inf".into(), |m| m.to_string()),
                el.max.map_or("inf".into(), |m| m.to_string())
            ),
        );
    }
}

/// Element keys the cross-field rules read. Elements with these keys are
/// collected while the fields are checked, so the rules need no lookups.
pub(crate) const CROSS_KEYS: [&str; 22] = [
    "production_date",
    "expiry_date",
    "shelf_life_months",
    "recipient_birth_date",
    "lot_release_date",
    "departure_time",
    "arrival_time",
    "period_start",
    "period_end",
    "vaccination_date",
    "onset_time",
    "temp_min",
    "temp_max",
    "temp_mean",
    "departure_temp",
    "arrival_temp",
    "range_low",
    "range_high",
    "alarm_state",
    "temperature_record_complete",
    "receipt_verified",
    "cancels_event_id",
];

#[derive(Clone, Copy)]
enum CrossVal<'e> {
    V(&'e Value),
    S(&'e str),
}

/// The values of the cross-field elements present in one event.
struct Cross<'e> {
    items: [(&'e str, CrossVal<'e>); CROSS_KEYS.len()],
    len: usize,
}

impl<'e> Cross<'e> {
    fn new() -> Cross<'e> {
        Cross {
            items: [("", CrossVal::S("")); CROSS_KEYS.len()],
            len: 0,
        }
    }
    fn push(&mut self, key: &'e str, v: CrossVal<'e>) {
        if self.len < self.items.len() {
            self.items[self.len] = (key, v);
            self.len += 1;
        }
    }
    fn get(&self, key: &str) -> Option<CrossVal<'e>> {
        self.items[..self.len].iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
    fn value(&self, key: &str) -> Option<&'e Value> {
        match self.get(key)? {
            CrossVal::V(v) => Some(v),
            CrossVal::S(_) => None,
        }
    }
    fn str(&self, key: &str) -> Option<&'e str> {
        match self.get(key)? {
            CrossVal::V(v) => v.as_str(),
            CrossVal::S(s) => Some(s),
        }
    }
}

fn date_of(c: &Cross<'_>, key: &str) -> Option<NaiveDate> {
    parse_ymd(c.str(key)?)
}

fn time_of(c: &Cross<'_>, key: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(c.str(key)?).ok()
}

fn num_of(c: &Cross<'_>, key: &str) -> Option<f64> {
    c.value(key).and_then(Value::as_f64)
}

/// Parses `YYYY-MM-DD` (fast path, no allocation).
pub(crate) fn parse_ymd(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<u32> {
        b.get(r)?.iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    NaiveDate::from_ymd_opt(i32::try_from(n(0..4)?).ok()?, n(5..7)?, n(8..10)?)
}

fn last_day_of_month(d: NaiveDate) -> Option<NaiveDate> {
    let first = NaiveDate::from_ymd_opt(d.year(), d.month(), 1)?;
    first.checked_add_months(Months::new(1))?.pred_opt()
}

/// Expiry dates 码上放心 accepts for a production date and shelf life:
/// production + shelf life, that date − 1 day, the last day of the previous
/// month, or the last day of that month.
pub fn accepted_expiry_dates(production: NaiveDate, shelf_life_months: u32) -> Vec<NaiveDate> {
    let Some(end) = production.checked_add_months(Months::new(shelf_life_months)) else {
        return Vec::new();
    };
    let mut v = vec![end];
    v.extend(end.checked_sub_days(Days::new(1)));
    if let Some(first) = NaiveDate::from_ymd_opt(end.year(), end.month(), 1) {
        v.extend(first.pred_opt());
    }
    v.extend(last_day_of_month(end));
    v
}

/// A cross-field rule: reads the event and the values of its cross-field
/// elements, reports what it finds.
type CrossRule = fn(&mut Ctx<'_>, &TraceEvent, &Cross<'_>);

/// The cross-field rules, in the order their problems are reported.
const CROSS_RULES: [CrossRule; 10] = [
    expiry_dates,
    event_time,
    vaccine_expired,
    birth_after_event,
    elements_in_order,
    onset_before_vaccination,
    readings,
    transport_temperatures,
    receipt_without_temperature_record,
    self_cancel,
];

fn cross_field(cx: &mut Ctx<'_>, e: &TraceEvent, c: &Cross<'_>) {
    for rule in CROSS_RULES {
        rule(cx, e, c);
    }
}

fn day(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// Expiry after production, and one of the dates the 码上放心 expiry rule
/// accepts for the shelf life.
fn expiry_dates(cx: &mut Ctx<'_>, e: &TraceEvent, c: &Cross<'_>) {
    let (Some(p), Some(x)) = (date_of(c, "production_date"), date_of(c, "expiry_date")) else {
        return;
    };
    if x <= p {
        cx.err(
            "expiry_date",
            "expiry_before_production",
            Some(day(x)),
            format!("expiry is not after production date {}", day(p)),
        );
    } else if let Some(months) = e
        .fields
        .get("shelf_life_months")
        .and_then(Value::as_u64)
        .and_then(|m| u32::try_from(m).ok())
    {
        let ok = accepted_expiry_dates(p, months);
        if !ok.is_empty() && !ok.contains(&x) {
            let list: Vec<String> = ok.iter().map(|d| day(*d)).collect();
            cx.err(
                "expiry_date",
                "expiry_rule",
                Some(day(x)),
                format!(
                    "with production {} and {months} months shelf life expiry must be one of {}",
                    day(p),
                    list.join(", ")
                ),
            );
        }
    }
}

/// The event happened at most a day after it was recorded, and after 2000.
fn event_time(cx: &mut Ctx<'_>, e: &TraceEvent, _: &Cross<'_>) {
    if e.occurred_at > e.recorded_at + chrono::Duration::days(1) {
        cx.err(
            "event.occurred_at",
            "future_time",
            Some(e.occurred_at.to_rfc3339()),
            "occurred more than a day after it was recorded",
        );
    }
    if e.occurred_at.year() < 2000 {
        cx.err(
            "event.occurred_at",
            "implausible_time",
            Some(e.occurred_at.to_rfc3339()),
            "occurred before 2000",
        );
    }
}

/// No vaccination after the expiry date.
fn vaccine_expired(cx: &mut Ctx<'_>, e: &TraceEvent, c: &Cross<'_>) {
    if let Some(x) = date_of(c, "expiry_date")
        && e.category == "vaccination"
        && e.occurred_at.date_naive() > x
    {
        cx.err(
            "expiry_date",
            "vaccine_expired",
            Some(day(x)),
            "vaccinated after the expiry date",
        );
    }
}

/// The recipient was born by the day of the event.
fn birth_after_event(cx: &mut Ctx<'_>, e: &TraceEvent, c: &Cross<'_>) {
    if let Some(b) = date_of(c, "recipient_birth_date")
        && b > e.occurred_at.date_naive()
    {
        cx.err(
            "recipient_birth_date",
            "birth_after_event",
            Some(mask(&day(b))),
            "date of birth is after the event",
        );
    }
}

/// Whether two elements in time order are dates (`YYYY-MM-DD`) or times
/// (RFC 3339).
#[derive(Clone, Copy)]
enum Moment {
    Date,
    Time,
}

/// Elements an event gives in time order (the later not before the
/// earlier): earlier, later, their kind, the rule and its message.
const IN_ORDER: [(&str, &str, Moment, &str, &str); 3] = [
    // A lot is released on or after its production date.
    (
        "production_date",
        "lot_release_date",
        Moment::Date,
        "release_before_production",
        "lot released before production",
    ),
    // A transport arrives on or after its departure.
    (
        "departure_time",
        "arrival_time",
        Moment::Time,
        "arrival_before_departure",
        "arrival is before departure",
    ),
    // A reading period ends on or after its start.
    (
        "period_start",
        "period_end",
        Moment::Time,
        "period_order",
        "period ends before it starts",
    ),
];

/// The elements of [`IN_ORDER`] are in order; else an error on the later
/// one, naming its value.
fn elements_in_order(cx: &mut Ctx<'_>, _: &TraceEvent, c: &Cross<'_>) {
    for (earlier, later, moment, rule, message) in IN_ORDER {
        let out_of_order = match moment {
            Moment::Date => match (date_of(c, earlier), date_of(c, later)) {
                (Some(e), Some(l)) if l < e => Some(day(l)),
                _ => None,
            },
            Moment::Time => match (time_of(c, earlier), time_of(c, later)) {
                (Some(e), Some(l)) if l < e => Some(l.to_rfc3339()),
                _ => None,
            },
        };
        if let Some(value) = out_of_order {
            cx.err(later, rule, Some(value), message);
        }
    }
}

/// An adverse reaction begins on or after the day of the vaccination.
fn onset_before_vaccination(cx: &mut Ctx<'_>, _: &TraceEvent, c: &Cross<'_>) {
    if let (Some(v), Some(o)) = (date_of(c, "vaccination_date"), time_of(c, "onset_time"))
        && o.date_naive() < v
    {
        cx.err(
            "onset_time",
            "onset_before_vaccination",
            Some(o.to_rfc3339()),
            "reaction onset is before the vaccination",
        );
    }
}

/// The allowed temperature range (2..8 °C unless the event says).
fn temperature_range(c: &Cross<'_>) -> (f64, f64) {
    (
        num_of(c, "range_low").unwrap_or(2.0),
        num_of(c, "range_high").unwrap_or(8.0),
    )
}

/// Cold-chain readings: min <= mean <= max, and an excursion raises the alarm.
fn readings(cx: &mut Ctx<'_>, _: &TraceEvent, c: &Cross<'_>) {
    let (Some(lo), Some(hi)) = (num_of(c, "temp_min"), num_of(c, "temp_max")) else {
        return;
    };
    let tmean = num_of(c, "temp_mean");
    if lo > hi || tmean.is_some_and(|m| m < lo || m > hi) {
        cx.err(
            "temp_mean",
            "reading_order",
            None,
            "expected temp_min <= temp_mean <= temp_max",
        );
    }
    let (rl, rh) = temperature_range(c);
    let alarm = c.str("alarm_state");
    if (lo < rl || hi > rh) && alarm == Some("0") {
        cx.warn(
            "alarm_state",
            "excursion_without_alarm",
            Some(format!("{lo}..{hi}")),
            format!("readings leave {rl}..{rh} °C but the alarm state is normal"),
        );
    }
}

/// The vaccine's temperature at departure and at arrival is in range.
fn transport_temperatures(cx: &mut Ctx<'_>, _: &TraceEvent, c: &Cross<'_>) {
    let (rl, rh) = temperature_range(c);
    for k in ["departure_temp", "arrival_temp"] {
        if let Some(t) = num_of(c, k)
            && (t < rl || t > rh)
        {
            cx.warn(
                k,
                "temperature_excursion",
                Some(t.to_string()),
                format!("vaccine temperature outside {rl}..{rh} °C"),
            );
        }
    }
}

/// Vaccine law art. 39: no receipt without the full temperature record.
fn receipt_without_temperature_record(cx: &mut Ctx<'_>, _: &TraceEvent, c: &Cross<'_>) {
    if c.value("temperature_record_complete") == Some(&Value::Bool(false)) && c.str("receipt_verified") == Some("1") {
        cx.err(
            "temperature_record_complete",
            "receipt_without_temperature_record",
            Some("false".into()),
            "vaccine law art. 39: a receipt without the full temperature record must not be accepted",
        );
    }
}

/// A cancellation names another event.
fn self_cancel(cx: &mut Ctx<'_>, e: &TraceEvent, c: &Cross<'_>) {
    if let Some(id) = c.str("cancels_event_id")
        && id == e.event_id.to_string()
    {
        cx.err(
            "cancels_event_id",
            "self_cancel",
            Some(id.to_string()),
            "an event cannot cancel itself",
        );
    }
}

/// Batch-level data-quality state across records: counts how often each
/// trace code is dispensed (categories whose EPCIS bizStep is `dispensing`,
/// i.e. vaccination) and reports "追溯码出现次数大于包装盒剂次" when a code is
/// used more times than its package holds doses (`doses_per_package`, or
/// the tracker's default, 1).
#[derive(Debug, Clone)]
pub struct QualityTracker {
    dispensing: Vec<String>,
    default_doses: u32,
    uses: HashMap<String, (u32, u32)>,
}

impl QualityTracker {
    /// A tracker for the dataset's dispensing categories.
    pub fn new(dataset: &Dataset) -> QualityTracker {
        QualityTracker {
            dispensing: dataset
                .categories()
                .filter(|c| c.epcis.biz_step == "dispensing")
                .map(|c| c.key.clone())
                .collect(),
            default_doses: 1,
            uses: HashMap::new(),
        }
    }

    /// Sets the doses assumed for a package when the event does not say.
    pub fn with_default_doses(mut self, doses: u32) -> QualityTracker {
        self.default_doses = doses.max(1);
        self
    }

    /// Records an event; returns the problems it causes.
    pub fn observe(&mut self, event: &TraceEvent) -> Vec<Problem> {
        if !self.dispensing.contains(&event.category) {
            return Vec::new();
        }
        let doses = event
            .fields
            .get("doses_per_package")
            .and_then(Value::as_u64)
            .and_then(|d| u32::try_from(d).ok())
            .unwrap_or(self.default_doses)
            .max(1);
        let mut out = Vec::new();
        for code in &event.trace_codes {
            let entry = self.uses.entry(code.clone()).or_insert((0, doses));
            entry.0 += 1;
            entry.1 = entry.1.max(doses);
            if entry.0 > entry.1 {
                out.push(Problem {
                    record: event.record_key.clone(),
                    field: "event.trace_codes".into(),
                    rule: "trace_code_overused",
                    value: Some(code.clone()),
                    message: format!(
                        "追溯码出现次数大于包装盒剂次: used {} times, the package holds {} doses",
                        entry.0, entry.1
                    ),
                    severity: Severity::Error,
                });
            }
        }
        out
    }

    /// How many times a code has been dispensed so far.
    pub fn uses(&self, code: &str) -> u32 {
        self.uses.get(code).map_or(0, |u| u.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_rule_dates() {
        let p = NaiveDate::from_ymd_opt(2024, 3, 15).unwrap_or_default();
        let v: Vec<String> = accepted_expiry_dates(p, 24).iter().map(|d| d.to_string()).collect();
        assert_eq!(v, ["2026-03-15", "2026-03-14", "2026-02-28", "2026-03-31"]);
    }

    const A: &str = "86123450000000001001";
    const P: &str = "86123450000000009000";

    fn event() -> TraceEvent {
        TraceEvent {
            category: "outbound".into(),
            event_id: uuid::Uuid::nil(),
            occurred_at: chrono::DateTime::default(),
            recorded_at: chrono::DateTime::default(),
            source: "3201020001".into(),
            device: None,
            record_key: "r1".into(),
            bill_type: None,
            trace_codes: Vec::new(),
            aggregations: Vec::new(),
            from: None,
            to: None,
            fields: serde_json::Map::new(),
            pii: crate::Pii::new(),
        }
    }

    fn rules<'c>(cx: &'c Ctx<'_>) -> Vec<(&'static str, Option<&'c str>)> {
        cx.out.iter().map(|p| (p.rule, p.value.as_deref())).collect()
    }

    #[test]
    fn trace_code_pairs_alone() {
        let mut e = event();
        e.trace_codes = vec![A.into(), P.into(), A.into()];
        e.aggregations = vec![crate::AggregationLink {
            parent: P.into(),
            children: vec![A.into()],
        }];
        let mut cx = Ctx {
            record: "r1",
            out: Vec::new(),
        };
        check_trace_code_pairs(&mut cx, &e);
        assert_eq!(
            rules(&cx),
            [("trace_code_duplicate", Some(A)), ("parent_and_child", Some(P))]
        );
        // one code, no links: nothing to compare
        e.trace_codes = vec![A.into()];
        e.aggregations.clear();
        let mut cx = Ctx {
            record: "r1",
            out: Vec::new(),
        };
        check_trace_code_pairs(&mut cx, &e);
        assert!(cx.out.is_empty());
    }

    #[test]
    fn required_elements_alone() {
        let dataset = Dataset::builtin();
        let Some(cat) = dataset.category("vaccination") else {
            panic!("no vaccination category")
        };
        let mut present = Present::new(dataset.element_count());
        for key in &cat.required[1..] {
            if let Some(el) = dataset.element(key) {
                present.mark(el);
            }
        }
        let mut cx = Ctx {
            record: "r1",
            out: Vec::new(),
        };
        check_required(&mut cx, &dataset, cat, &present);
        let fields: Vec<&str> = cx.out.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, [cat.required[0].as_str()]);
        assert_eq!(cx.out[0].rule, "required");
    }

    #[test]
    fn cold_chain_cross_rules_alone() {
        let e = event();
        let (lo, hi, alarm, departure) = (json(1.0), json(9.0), Value::from("0"), json(9.5));
        let mut c = Cross::new();
        c.push("temp_min", CrossVal::V(&lo));
        c.push("temp_max", CrossVal::V(&hi));
        c.push("alarm_state", CrossVal::V(&alarm));
        c.push("departure_temp", CrossVal::V(&departure));
        let mut cx = Ctx {
            record: "r1",
            out: Vec::new(),
        };
        readings(&mut cx, &e, &c);
        assert_eq!(rules(&cx), [("excursion_without_alarm", Some("1..9"))]);
        let mut cx = Ctx {
            record: "r1",
            out: Vec::new(),
        };
        transport_temperatures(&mut cx, &e, &c);
        assert_eq!(rules(&cx), [("temperature_excursion", Some("9.5"))]);
        // the whole table reports the rules in its order
        let mut cx = Ctx {
            record: "r1",
            out: Vec::new(),
        };
        cross_field(&mut cx, &e, &c);
        let found: Vec<&str> = cx.out.iter().map(|p| p.rule).collect();
        assert_eq!(
            found,
            ["implausible_time", "excursion_without_alarm", "temperature_excursion"]
        );
    }

    fn json(x: f64) -> Value {
        Value::from(x)
    }
}
