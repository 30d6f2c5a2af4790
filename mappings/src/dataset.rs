//! The NMPAB/T 1004 dataset definition, loaded from data
//! (`config/datasets/nmpab-1004.toml`): categories, elements, code tables.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Location, SpecError, near_matches};

/// The data type of an element; decides conversion and validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ElementType {
    /// Free text (length in characters).
    String,
    /// ASCII digits only.
    Digits,
    /// Whole number.
    Integer,
    /// Decimal number.
    Decimal,
    /// Calendar date, `YYYY-MM-DD`.
    Date,
    /// Date-time with offset (RFC 3339).
    Datetime,
    /// A value from the element's code table.
    Code,
    /// true / false.
    Boolean,
    /// NMPAB/T 1002 trace code: 20 digits (no check digit is invented).
    TraceCode,
    /// 受种者编码: 18 digits.
    RecipientCode,
    /// Identity document number; 居民身份证 numbers are checked (GB 11643).
    IdNumber,
    /// Unified social credit code (GB 32100), checked.
    Uscc,
    /// SM3 digest, 64 lowercase hex digits.
    Sm3Hex,
    /// UUID.
    Uuid,
    /// URI (`scheme:rest`).
    Uri,
    /// Phone number (digits, `+`, `-`, spaces).
    Phone,
    /// Any JSON value (e.g. a list of readings).
    Json,
}

impl ElementType {
    /// The snake_case name used in the dataset file.
    pub fn name(self) -> &'static str {
        match self {
            ElementType::String => "string",
            ElementType::Digits => "digits",
            ElementType::Integer => "integer",
            ElementType::Decimal => "decimal",
            ElementType::Date => "date",
            ElementType::Datetime => "datetime",
            ElementType::Code => "code",
            ElementType::Boolean => "boolean",
            ElementType::TraceCode => "trace_code",
            ElementType::RecipientCode => "recipient_code",
            ElementType::IdNumber => "id_number",
            ElementType::Uscc => "uscc",
            ElementType::Sm3Hex => "sm3_hex",
            ElementType::Uuid => "uuid",
            ElementType::Uri => "uri",
            ElementType::Phone => "phone",
            ElementType::Json => "json",
        }
    }
}

/// One data element.
#[derive(Debug, Clone)]
pub struct Element {
    /// The key used in specs and in [`crate::TraceEvent`] fields.
    pub key: String,
    /// Identifier in the dataset (e.g. `VT07.01`).
    pub id: String,
    /// Chinese name.
    pub zh: String,
    /// English name.
    pub en: String,
    /// Data type.
    pub ty: ElementType,
    /// Maximum length in characters.
    pub max_len: Option<usize>,
    /// Minimum length in characters.
    pub min_len: Option<usize>,
    /// Minimum numeric value.
    pub min: Option<f64>,
    /// Maximum numeric value.
    pub max: Option<f64>,
    /// Code table the value must come from.
    pub code_table: Option<String>,
    /// Personal data of a person (name, ID number, phone, address...): kept
    /// apart in [`crate::Pii`], encrypted by the gateway, masked in output.
    pub pii: bool,
    /// A business element shown to a reader only under this read scope
    /// (TOML `scope`): an identifier that links records to one person
    /// ([`ReadScope::PersonalData`]) or an adverse-event finding
    /// ([`ReadScope::Aefi`]). Withheld otherwise (its digest only).
    pub scope: Option<ReadScope>,
    /// Position in the dataset (file order).
    pub(crate) index: usize,
    /// Read by a cross-field rule.
    pub(crate) cross: bool,
    /// The resolved code table.
    pub(crate) table: Option<std::sync::Arc<CodeTable>>,
}

/// Whether a category's events carry trace codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceCodePolicy {
    /// At least one trace code ("未提供疫苗追溯码" otherwise).
    Required,
    /// May carry trace codes.
    Optional,
    /// Carries none.
    None,
}

/// How a category is exported as an EPCIS 2.0 event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpcisMapping {
    /// CBV bizStep (bare name, e.g. `shipping`).
    pub biz_step: String,
    /// ADD, OBSERVE or DELETE.
    pub action: String,
    /// CBV disposition.
    pub disposition: String,
}

/// One data category (data subset) of the dataset.
#[derive(Debug, Clone)]
pub struct Category {
    /// Key, e.g. `vaccination`.
    pub key: String,
    /// Chinese name.
    pub zh: String,
    /// English name.
    pub en: String,
    /// Required element keys.
    pub required: Vec<String>,
    /// Optional element keys.
    pub optional: Vec<String>,
    /// Trace-code policy.
    pub trace_codes: TraceCodePolicy,
    /// Bill types that select this category.
    pub bill_types: Vec<String>,
    /// EPCIS export.
    pub epcis: EpcisMapping,
    /// Indices of the required elements.
    pub(crate) required_idx: Vec<usize>,
    /// Bit set of allowed element indices.
    pub(crate) allowed: Vec<u64>,
}

impl Category {
    /// Whether `key` is one of this category's elements.
    pub fn allows(&self, key: &str) -> bool {
        self.required.iter().chain(&self.optional).any(|k| k == key)
    }

    /// Whether the element is one of this category's elements (fast path).
    pub(crate) fn allows_element(&self, e: &Element) -> bool {
        self.allowed
            .get(e.index / 64)
            .is_some_and(|w| w & (1u64 << (e.index % 64)) != 0)
    }
}

/// A fast word-at-a-time hasher (the FxHash mixing step) for the small,
/// trusted key sets of the dataset and specs (element keys, column names,
/// codes: they come from configuration files, not from the network).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FastHash(u64);

impl std::hash::Hasher for FastHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(a)).wrapping_mul(K);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut a = [0u8; 8];
            a[..rest.len()].copy_from_slice(rest);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(a) ^ ((rest.len() as u64) << 59)).wrapping_mul(K);
        }
        self.0 = h;
    }
}

/// String equality without a `memcmp` call: the short keys compared on the
/// hot path (column names, element keys) are done in a few word compares.
#[inline]
pub(crate) fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        let mut p = [0u8; 8];
        let mut q = [0u8; 8];
        p.copy_from_slice(x);
        q.copy_from_slice(y);
        if p != q {
            return false;
        }
    }
    ca.remainder().iter().zip(cb.remainder()).all(|(x, y)| x == y)
}

pub(crate) type FastHashBuild = std::hash::BuildHasherDefault<FastHash>;

/// A code table: code → meaning.
#[derive(Debug, Clone)]
pub struct CodeTable {
    /// Key, e.g. `site`.
    pub key: String,
    /// Chinese name.
    pub zh: String,
    /// code → meaning.
    pub codes: BTreeMap<String, String>,
    /// The codes, hashed for fast membership tests.
    set: std::collections::HashSet<String, FastHashBuild>,
}

impl CodeTable {
    /// Whether `code` is in the table.
    pub fn contains(&self, code: &str) -> bool {
        self.set.contains(code)
    }
}

/// The whole dataset definition.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Dataset identifier (e.g. `NMPAB/T 1004-2019`).
    pub id: String,
    /// Version tag of this definition file.
    pub version: String,
    /// Provenance note.
    pub note: String,
    /// Elements in file order (`Element::index` is the position).
    elements: Vec<Element>,
    index: HashMap<String, usize, FastHashBuild>,
    /// Identity for per-thread caches.
    pub(crate) uid: u64,
    categories: BTreeMap<String, Category>,
    code_tables: BTreeMap<String, std::sync::Arc<CodeTable>>,
    by_bill_type: HashMap<String, String>,
}

const BUILTIN: &str = include_str!("../../config/datasets/nmpab-1004.toml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    dataset: RawHeader,
    elements: BTreeMap<String, Spanned<RawElement>>,
    categories: BTreeMap<String, Spanned<RawCategory>>,
    code_tables: BTreeMap<String, RawCodeTable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    id: String,
    version: String,
    #[serde(default)]
    note: String,
}

/// The read scope an element needs ([`Element::scope`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadScope {
    /// The reader's policy grants personal data.
    PersonalData,
    /// The reader's policy grants adverse-event (AEFI) findings.
    Aefi,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawElement {
    id: String,
    zh: String,
    en: String,
    #[serde(rename = "type")]
    ty: ElementType,
    max_len: Option<usize>,
    min_len: Option<usize>,
    min: Option<f64>,
    max: Option<f64>,
    code_table: Option<Spanned<String>>,
    #[serde(default)]
    pii: bool,
    scope: Option<ReadScope>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCategory {
    zh: String,
    en: String,
    required: Vec<Spanned<String>>,
    #[serde(default)]
    optional: Vec<Spanned<String>>,
    trace_codes: TraceCodePolicy,
    #[serde(default)]
    bill_types: Vec<Spanned<String>>,
    epcis: EpcisMapping,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCodeTable {
    zh: String,
    codes: BTreeMap<String, String>,
}

/// The text a dataset definition is parsed from, to locate errors in.
#[derive(Clone, Copy)]
struct Source<'t> {
    origin: &'t str,
    text: &'t str,
}

impl Source<'_> {
    /// The location of `offset`, under the TOML key `key`.
    fn loc(self, offset: usize, key: &str) -> Box<Location> {
        Location::at(self.origin, self.text, offset, Some(key))
    }
}

type CodeTables = BTreeMap<String, Arc<CodeTable>>;
type Elements = HashMap<String, Element, FastHashBuild>;
/// Bill type → the key of the category it selects.
type ByBillType = HashMap<String, String>;

/// The code tables, by key.
fn code_tables(raw: BTreeMap<String, RawCodeTable>) -> CodeTables {
    let mut code_tables = BTreeMap::new();
    for (key, t) in raw {
        code_tables.insert(
            key.clone(),
            Arc::new(CodeTable {
                key,
                zh: t.zh,
                set: t.codes.keys().cloned().collect(),
                codes: t.codes,
            }),
        );
    }
    code_tables
}

/// The elements, numbered in file order ([`Element::index`]).
fn elements(
    src: Source<'_>,
    raw: BTreeMap<String, Spanned<RawElement>>,
    code_tables: &CodeTables,
) -> Result<Elements, SpecError> {
    let mut raw: Vec<(String, Spanned<RawElement>)> = raw.into_iter().collect();
    raw.sort_by_key(|(_, e)| e.span().start);
    let mut elements: Elements = HashMap::default();
    for (index, (key, value)) in raw.into_iter().enumerate() {
        let el = element(src, &key, value, index, code_tables)?;
        elements.insert(key, el);
    }
    Ok(elements)
}

/// One element: its code table exists, and an element of type code has one.
fn element(
    src: Source<'_>,
    key: &str,
    value: Spanned<RawElement>,
    index: usize,
    code_tables: &CodeTables,
) -> Result<Element, SpecError> {
    let loc = || src.loc(value.span().start, &format!("elements.{key}"));
    let e = value.get_ref();
    if let Some(ct) = &e.code_table
        && !code_tables.contains_key(ct.get_ref())
    {
        return Err(SpecError::Unknown {
            loc: loc(),
            kind: "code table",
            name: ct.get_ref().clone(),
            suggestions: near_matches(ct.get_ref(), code_tables.keys().map(String::as_str)),
        });
    }
    if e.ty == ElementType::Code && e.code_table.is_none() {
        return Err(SpecError::Invalid {
            loc: loc(),
            message: format!("element `{key}` has type code but no code_table"),
        });
    }
    let e = value.into_inner();
    let table = e
        .code_table
        .as_ref()
        .and_then(|c| code_tables.get(c.get_ref()).cloned());
    Ok(Element {
        key: key.to_string(),
        id: e.id,
        zh: e.zh,
        en: e.en,
        ty: e.ty,
        max_len: e.max_len,
        min_len: e.min_len,
        min: e.min,
        max: e.max,
        code_table: e.code_table.map(Spanned::into_inner),
        pii: e.pii,
        scope: e.scope,
        index,
        cross: crate::validate::CROSS_KEYS.contains(&key),
        table,
    })
}

/// The categories by key, and the category each bill type selects.
fn categories(
    src: Source<'_>,
    raw: BTreeMap<String, Spanned<RawCategory>>,
    elements: &Elements,
    code_tables: &CodeTables,
) -> Result<(BTreeMap<String, Category>, ByBillType), SpecError> {
    let mut categories = BTreeMap::new();
    let mut by_bill_type = HashMap::new();
    for (key, c) in raw {
        let cat = category(
            src,
            key.clone(),
            c.into_inner(),
            elements,
            code_tables,
            &mut by_bill_type,
        )?;
        categories.insert(key, cat);
    }
    Ok((categories, by_bill_type))
}

/// One category: its elements exist, its bill types are valid and select
/// no other category (recorded in `by_bill_type`).
fn category(
    src: Source<'_>,
    key: String,
    c: RawCategory,
    elements: &Elements,
    code_tables: &CodeTables,
    by_bill_type: &mut ByBillType,
) -> Result<Category, SpecError> {
    let required = element_keys(src, &key, &c.required, elements)?;
    let optional = element_keys(src, &key, &c.optional, elements)?;
    let bill_types = bill_types(src, &key, &c.bill_types, code_tables.get("bill_type"), by_bill_type)?;
    let required_idx = required
        .iter()
        .filter_map(|k| elements.get(k))
        .map(|e| e.index)
        .collect();
    let mut allowed = vec![0u64; elements.len().div_ceil(64)];
    for e in required.iter().chain(&optional).filter_map(|k| elements.get(k)) {
        allowed[e.index / 64] |= 1u64 << (e.index % 64);
    }
    Ok(Category {
        key,
        zh: c.zh,
        en: c.en,
        required,
        optional,
        trace_codes: c.trace_codes,
        bill_types,
        epcis: c.epcis,
        required_idx,
        allowed,
    })
}

/// A category's list of element keys: each an element of the dataset.
fn element_keys(
    src: Source<'_>,
    category: &str,
    list: &[Spanned<String>],
    elements: &Elements,
) -> Result<Vec<String>, SpecError> {
    list.iter()
        .map(|s| {
            if elements.contains_key(s.get_ref()) {
                Ok(s.get_ref().clone())
            } else {
                Err(SpecError::Unknown {
                    loc: src.loc(s.span().start, &format!("categories.{category}")),
                    kind: "element",
                    name: s.get_ref().clone(),
                    suggestions: near_matches(s.get_ref(), elements.keys().map(String::as_str)),
                })
            }
        })
        .collect()
}

/// A category's bill types: each in the `bill_type` code table (when there
/// is one) and selecting no other category; `by_bill_type` records them.
fn bill_types(
    src: Source<'_>,
    category: &str,
    list: &[Spanned<String>],
    bill_table: Option<&Arc<CodeTable>>,
    by_bill_type: &mut ByBillType,
) -> Result<Vec<String>, SpecError> {
    let mut bill_types = Vec::new();
    for b in list {
        let loc = || src.loc(b.span().start, &format!("categories.{category}.bill_types"));
        if bill_table.is_some_and(|t| !t.codes.contains_key(b.get_ref())) {
            return Err(SpecError::Invalid {
                loc: loc(),
                message: format!("bill type `{b}` is not in code table bill_type"),
            });
        }
        if let Some(other) = by_bill_type.insert(b.get_ref().clone(), category.to_string()) {
            return Err(SpecError::Invalid {
                loc: loc(),
                message: format!("bill type `{b}` is already mapped to category `{other}`"),
            });
        }
        bill_types.push(b.get_ref().clone());
    }
    Ok(bill_types)
}

impl Dataset {
    /// The built-in reconstruction (`config/datasets/nmpab-1004.toml`,
    /// embedded at compile time) so the product works without files.
    pub fn builtin() -> Dataset {
        // The embedded file is checked by a unit test; failing here is a build defect.
        #[allow(clippy::expect_used)]
        Dataset::from_toml_str(BUILTIN, "config/datasets/nmpab-1004.toml").expect("built-in dataset is valid")
    }

    /// Loads a dataset definition from a TOML file.
    ///
    /// # Errors
    /// [`SpecError`] naming the file, line and key.
    pub fn load(path: impl AsRef<Path>) -> Result<Dataset, SpecError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Dataset::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses a dataset definition; `origin` names it in errors.
    ///
    /// # Errors
    /// [`SpecError`] naming the origin, line and key.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Dataset, SpecError> {
        let raw: RawDataset = toml::from_str(text).map_err(|e| SpecError::from_toml(origin, text, &e))?;
        let src = Source { origin, text };
        let code_tables = code_tables(raw.code_tables);
        let elements = elements(src, raw.elements, &code_tables)?;
        let (categories, by_bill_type) = categories(src, raw.categories, &elements, &code_tables)?;
        let mut ordered: Vec<Element> = elements.into_values().collect();
        ordered.sort_by_key(|e| e.index);
        let index = ordered.iter().map(|e| (e.key.clone(), e.index)).collect();
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(Dataset {
            id: raw.dataset.id,
            version: raw.dataset.version,
            note: raw.dataset.note,
            elements: ordered,
            index,
            uid: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            categories,
            code_tables,
            by_bill_type,
        })
    }

    /// The element with this key.
    pub fn element(&self, key: &str) -> Option<&Element> {
        self.index.get(key).and_then(|&i| self.elements.get(i))
    }

    /// The element at a position (file order).
    pub(crate) fn element_at(&self, i: usize) -> Option<&Element> {
        self.elements.get(i)
    }

    /// Number of elements.
    pub fn element_count(&self) -> usize {
        self.elements.len()
    }

    /// All elements, in file order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.elements.iter()
    }

    /// The category with this key.
    pub fn category(&self, key: &str) -> Option<&Category> {
        self.categories.get(key)
    }

    /// All categories, by key.
    pub fn categories(&self) -> impl Iterator<Item = &Category> {
        self.categories.values()
    }

    /// The code table with this key.
    pub fn code_table(&self, key: &str) -> Option<&CodeTable> {
        self.code_tables.get(key).map(|t| &**t)
    }

    /// All code tables, by key.
    pub fn code_tables(&self) -> impl Iterator<Item = &CodeTable> {
        self.code_tables.values().map(|t| &**t)
    }

    /// The category a bill type selects (e.g. `205` → `loss_destruction`).
    pub fn category_for_bill_type(&self, bill_type: &str) -> Option<&Category> {
        self.by_bill_type.get(bill_type).and_then(|k| self.categories.get(k))
    }

    /// Up to three element keys near `name`.
    pub fn near_elements(&self, name: &str) -> Vec<String> {
        near_matches(name, self.elements.iter().map(|e| e.key.as_str()))
    }

    /// Up to three category keys near `name`.
    pub fn near_categories(&self, name: &str) -> Vec<String> {
        near_matches(name, self.categories.keys().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_loads() {
        let d = Dataset::builtin();
        assert_eq!(d.categories().count(), 14);
        assert!(d.element("recipient_code").is_some());
        assert_eq!(
            d.category_for_bill_type("205").map(|c| c.key.as_str()),
            Some("loss_destruction")
        );
        assert!(d.element("recipient_name").is_some_and(|e| e.pii));
    }

    #[test]
    fn unknown_element_in_category_is_named() {
        let text = BUILTIN.replace(
            "\"aefi_report_no\", \"recipient_code\"",
            "\"aefi_report_no\", \"recipient_cod\"",
        );
        let err = Dataset::from_toml_str(&text, "ds.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown element `recipient_cod`"), "{err}");
        assert!(err.contains("did you mean `recipient_code`"), "{err}");
        assert!(err.starts_with("ds.toml:"), "{err}");
    }

    #[test]
    fn bill_types_alone() {
        let text = "x";
        let src = Source {
            origin: "ds.toml",
            text,
        };
        let table = code_tables(BTreeMap::from([(
            "bill_type".to_string(),
            RawCodeTable {
                zh: "单据类型".into(),
                codes: BTreeMap::from([("101".to_string(), "生产入库".to_string())]),
            },
        )]));
        let bill = |b: &str| vec![Spanned::new(0..1, b.to_string())];
        let mut by_bill_type = HashMap::new();
        let ok = bill_types(
            src,
            "production_inbound",
            &bill("101"),
            table.get("bill_type"),
            &mut by_bill_type,
        );
        assert_eq!(ok.ok(), Some(vec!["101".to_string()]));
        let again = bill_types(src, "outbound", &bill("101"), table.get("bill_type"), &mut by_bill_type);
        let err = again.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.ends_with("bill type `101` is already mapped to category `production_inbound`"),
            "{err}"
        );
        let unknown = bill_types(src, "outbound", &bill("999"), table.get("bill_type"), &mut by_bill_type);
        let err = unknown.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.ends_with("bill type `999` is not in code table bill_type"), "{err}");
    }
}
