//! Input records and the path languages that address fields in them:
//! row columns, HL7 v2 paths, XML paths, JSON paths. Parsers never panic.

use std::borrow::Cow;

use quick_xml::events::Event;
use serde_json::{Map, Value};

use crate::error::CodecError;

/// One source record handed to [`crate::MappingSpec::map`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Record {
    /// A flat SQL row: column → value (strings, numbers or null).
    Row(Map<String, Value>),
    /// One HL7 v2 message (segments separated by `\r`, `\n` or `\r\n`).
    Hl7(String),
    /// One XML record fragment (the element at the spec's `record_path`).
    Xml(String),
    /// One JSON document (or one element of its `records` array).
    Json(Value),
}

// ------------------------------------------------------------------- HL7

/// A parsed HL7 path: `SEG[occ](F.C=VALUE)-F[rep].C.S`, e.g. `RXA-15`,
/// `PID-3.1`, `PID-5[2].1`, `OBX[2]-5`, and `OBX(3.1=ZTC)-5` which picks
/// the OBX segments whose OBX-3.1 is `ZTC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hl7Path {
    /// Segment name (2-3 uppercase letters or digits).
    pub segment: String,
    /// 1-based occurrence.
    pub occurrence: Option<usize>,
    /// Selector: (field path such as `3.1`, required value).
    pub selector: Option<(String, String)>,
    /// Field number.
    pub field: usize,
    /// 1-based repetition.
    pub repetition: Option<usize>,
    /// Component.
    pub component: Option<usize>,
    /// Subcomponent.
    pub subcomponent: Option<usize>,
}

fn num(s: &str) -> Option<usize> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|n| *n > 0)
}

impl Hl7Path {
    /// Parses a path; the error says what is wrong.
    ///
    /// # Errors
    /// A message naming the problem.
    pub fn parse(path: &str) -> Result<Hl7Path, String> {
        let bad = |why: &str| format!("bad HL7 path `{path}`: {why} (expected e.g. RXA-15, PID-3.1, OBX(3.1=ZTC)-5)");
        let dash = match path.find('(') {
            Some(open) => path[open..]
                .find(')')
                .map(|c| open + c)
                .and_then(|close| path[close..].find('-').map(|d| close + d)),
            None => path.find('-'),
        };
        let dash = dash.ok_or_else(|| bad("no `-` before the field number"))?;
        let (head, rest) = (&path[..dash], &path[dash + 1..]);
        let (head, selector) = match head.split_once('(') {
            Some((h, sel)) => {
                let sel = sel.strip_suffix(')').ok_or_else(|| bad("unclosed `(`"))?;
                let (f, v) = sel.split_once('=').ok_or_else(|| bad("selector needs `=`"))?;
                let fp: Vec<&str> = f.split('.').collect();
                if fp.is_empty() || fp.len() > 3 || fp.iter().any(|p| num(p).is_none()) {
                    return Err(bad("selector field must be like 3 or 3.1"));
                }
                (h, Some((f.to_string(), v.to_string())))
            }
            None => (head, None),
        };
        let (segment, occurrence) = match head.split_once('[') {
            Some((s, o)) => (
                s,
                Some(
                    num(o.strip_suffix(']').ok_or_else(|| bad("unclosed `[`"))?)
                        .ok_or_else(|| bad("occurrence must be a number from 1"))?,
                ),
            ),
            None => (head, None),
        };
        if !(2..=3).contains(&segment.len()) || !segment.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
            return Err(bad("segment name must be 3 uppercase letters or digits"));
        }
        let mut parts = rest.split('.');
        let fpart = parts.next().unwrap_or("");
        let (field, repetition) = match fpart.split_once('[') {
            Some((f, r)) => (
                num(f).ok_or_else(|| bad("field must be a number from 1"))?,
                Some(
                    num(r.strip_suffix(']').ok_or_else(|| bad("unclosed `[`"))?)
                        .ok_or_else(|| bad("repetition must be a number from 1"))?,
                ),
            ),
            None => (num(fpart).ok_or_else(|| bad("field must be a number from 1"))?, None),
        };
        let component = match parts.next() {
            Some(c) => Some(num(c).ok_or_else(|| bad("component must be a number from 1"))?),
            None => None,
        };
        let subcomponent = match parts.next() {
            Some(c) => Some(num(c).ok_or_else(|| bad("subcomponent must be a number from 1"))?),
            None => None,
        };
        if parts.next().is_some() {
            return Err(bad("too many `.` parts"));
        }
        Ok(Hl7Path {
            segment: segment.to_string(),
            occurrence,
            selector,
            field,
            repetition,
            component,
            subcomponent,
        })
    }

    fn render(&self, occ: usize) -> String {
        let mut s = format!("{}[{occ}]-{}", self.segment, self.field);
        if let Some(r) = self.repetition {
            s.push_str(&format!("[{r}]"));
        }
        if let Some(c) = self.component {
            s.push_str(&format!(".{c}"));
        }
        if let Some(c) = self.subcomponent {
            s.push_str(&format!(".{c}"));
        }
        s
    }
}

/// A parsed HL7 message split into groups (one per `group_by` segment).
#[derive(Debug)]
pub struct Hl7Record {
    msg: hl7::v2::Message,
    /// (segment name, global 1-based occurrence, group index or None for header segments)
    layout: Vec<(String, usize, Option<usize>)>,
    groups: usize,
}

impl Hl7Record {
    /// Parses a message; `group_by` names the segment that starts each
    /// repeating group (e.g. `ORC`), or `None` for one record per message.
    ///
    /// # Errors
    /// [`CodecError::Invalid`] when the text is not an HL7 v2 message.
    pub fn parse(text: &str, group_by: Option<&str>) -> Result<Hl7Record, CodecError> {
        let norm = text.trim().replace("\r\n", "\r").replace('\n', "\r");
        let msg = hl7::v2::parse(&norm).map_err(|e| CodecError::Invalid(format!("hl7: {e}")))?;
        let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let mut layout = Vec::new();
        let mut group: Option<usize> = None;
        let mut groups = 0;
        for seg in msg.segments() {
            let n = counts.entry(seg.name.clone()).or_insert(0);
            *n += 1;
            if Some(seg.name.as_str()) == group_by {
                group = Some(groups);
                groups += 1;
            }
            layout.push((seg.name.clone(), *n, group));
        }
        Ok(Hl7Record {
            msg,
            layout,
            groups: if group_by.is_some() { groups } else { 1 },
        })
    }

    /// Number of groups (1 when not grouped).
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Values at `path` in group `group` (segments of the group first, else
    /// header segments outside any group). `all` returns every match.
    pub fn get(&self, path: &Hl7Path, group: Option<usize>, all: bool) -> Vec<String> {
        let in_group: Vec<usize> = self
            .layout
            .iter()
            .filter(|(n, _, g)| *n == path.segment && group.is_some() && *g == group)
            .map(|(_, o, _)| *o)
            .collect();
        let mut occs = if in_group.is_empty() {
            self.layout
                .iter()
                .filter(|(n, _, g)| *n == path.segment && (group.is_none() || g.is_none()))
                .map(|(_, o, _)| *o)
                .collect()
        } else {
            in_group
        };
        if let Some((f, v)) = &path.selector {
            occs.retain(|o| {
                let p = format!("{}[{o}]-{f}", path.segment);
                self.msg.get(&p).ok().flatten().as_deref() == Some(v.as_str())
            });
        }
        if let Some(k) = path.occurrence {
            occs = occs.get(k - 1).copied().into_iter().collect();
        }
        let mut out = Vec::new();
        for o in occs {
            let p = path.render(o);
            if all {
                if path.repetition.is_none() && path.component.is_none() {
                    out.extend(self.msg.repetitions(&p).unwrap_or_default());
                } else {
                    out.extend(self.msg.get_all(&p).unwrap_or_default());
                }
            } else if let Ok(Some(v)) = self.msg.get(&p) {
                out.push(v);
                break;
            }
        }
        out.retain(|v| !v.is_empty());
        out
    }
}

// ------------------------------------------------------------------- XML

/// A minimal element tree of one XML record fragment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XmlNode {
    /// Local element name.
    pub name: String,
    /// Attributes (local name, unescaped value).
    pub attrs: Vec<(String, String)>,
    /// Concatenated, unescaped text content directly inside the element.
    pub text: String,
    /// Child elements.
    pub children: Vec<XmlNode>,
}

fn xml_err(pos: u64, m: impl ToString) -> CodecError {
    CodecError::Xml {
        position: pos,
        message: m.to_string(),
    }
}

fn local(name: &str) -> String {
    name.rsplit(':').next().unwrap_or(name).to_string()
}

fn resolve_entity(name: &str) -> Option<char> {
    match name {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "apos" => Some('\''),
        "quot" => Some('"'),
        _ => None,
    }
}

impl XmlNode {
    /// Parses an XML fragment with one root element.
    ///
    /// # Errors
    /// [`CodecError::Xml`] with the byte position.
    pub fn parse(text: &str) -> Result<XmlNode, CodecError> {
        let mut reader = quick_xml::Reader::from_str(text);
        let mut stack: Vec<XmlNode> = Vec::new();
        let mut root: Option<XmlNode> = None;
        loop {
            let pos = reader.buffer_position();
            let ev = reader.read_event().map_err(|e| xml_err(pos, e))?;
            match ev {
                Event::Start(e) | Event::Empty(e) if root.is_some() => {
                    let _ = e;
                    return Err(xml_err(pos, "content after the root element"));
                }
                Event::Start(ref e) | Event::Empty(ref e) => {
                    let mut node = XmlNode {
                        name: local(e.name().as_ref()),
                        ..XmlNode::default()
                    };
                    for a in e.attributes() {
                        let a = a.map_err(|e| xml_err(pos, e))?;
                        let v = a
                            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .map_err(|e| xml_err(pos, e))?;
                        node.attrs.push((local(a.key.as_ref()), v.into_owned()));
                    }
                    if matches!(ev, Event::Empty(_)) {
                        match stack.last_mut() {
                            Some(p) => p.children.push(node),
                            None => root = Some(node),
                        }
                    } else {
                        stack.push(node);
                    }
                }
                Event::End(_) => {
                    let node = stack.pop().ok_or_else(|| xml_err(pos, "unexpected end tag"))?;
                    match stack.last_mut() {
                        Some(p) => p.children.push(node),
                        None => root = Some(node),
                    }
                }
                Event::Text(t) => {
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&t.xml10_content());
                    } else if !t.xml10_content().trim().is_empty() {
                        return Err(xml_err(pos, "text outside the root element"));
                    }
                }
                Event::CData(c) => {
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&c.into_inner());
                    }
                }
                Event::GeneralRef(r) => {
                    let ch = match r.resolve_char_ref().map_err(|e| xml_err(pos, e))? {
                        Some(c) => c,
                        None => {
                            let name: String = r.as_ref().to_string();
                            resolve_entity(&name).ok_or_else(|| xml_err(pos, format!("unknown entity &{name};")))?
                        }
                    };
                    if let Some(top) = stack.last_mut() {
                        top.text.push(ch);
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        if !stack.is_empty() {
            return Err(xml_err(
                text.len() as u64,
                format!("unclosed element <{}>", stack.last().map_or("", |n| n.name.as_str())),
            ));
        }
        root.ok_or_else(|| xml_err(0, "no element"))
    }

    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&XmlNode> {
        self.children.iter().find(|c| c.name == name)
    }

    /// An attribute value.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A step of an XML path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum XmlStep {
    Child {
        name: String,
        index: Option<usize>,
        attr_eq: Option<(String, String)>,
    },
    Attr(String),
    SelfText,
}

/// A parsed XML path relative to the record element: `Vaccinee/Name`,
/// `Vaccine/@code`, `@id`, `.`, `Codes/Code[2]`, `Code[@type='box']`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlPath(Vec<XmlStep>);

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '.' || c == ':')
}

impl XmlPath {
    /// Parses a relative path.
    ///
    /// # Errors
    /// A message naming the bad step.
    pub fn parse(path: &str) -> Result<XmlPath, String> {
        let bad = |why: &str| {
            format!(
                "bad XML path `{path}`: {why} (expected e.g. Vaccinee/Name, Vaccine/@code, Codes/Code[@type='box'])"
            )
        };
        let p = path.trim_start_matches("./");
        if p == "." || p.is_empty() {
            return Ok(XmlPath(vec![XmlStep::SelfText]));
        }
        let parts: Vec<&str> = p.split('/').collect();
        let mut steps = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            if let Some(a) = part.strip_prefix('@') {
                if i + 1 != parts.len() || !is_name(a) {
                    return Err(bad("an attribute must be the last step"));
                }
                steps.push(XmlStep::Attr(a.to_string()));
                continue;
            }
            let (name, pred) = match part.split_once('[') {
                Some((n, rest)) => (n, Some(rest.strip_suffix(']').ok_or_else(|| bad("unclosed `[`"))?)),
                None => (*part, None),
            };
            if !is_name(name) {
                return Err(bad("empty or invalid element name"));
            }
            let (mut index, mut attr_eq) = (None, None);
            if let Some(pred) = pred {
                if let Some(cond) = pred.strip_prefix('@') {
                    let (k, v) = cond.split_once('=').ok_or_else(|| bad("predicate needs `=`"))?;
                    let v = v.trim_matches(|c| c == '\'' || c == '"');
                    attr_eq = Some((k.to_string(), v.to_string()));
                } else {
                    index = Some(num(pred).ok_or_else(|| bad("index must be a number from 1"))?);
                }
            }
            steps.push(XmlStep::Child {
                name: name.to_string(),
                index,
                attr_eq,
            });
        }
        Ok(XmlPath(steps))
    }

    /// Every value the path selects under `node`, in document order.
    pub fn eval<'a>(&self, node: &'a XmlNode) -> Vec<&'a str> {
        let mut cur: Vec<&XmlNode> = vec![node];
        let mut out = Vec::new();
        for step in &self.0 {
            match step {
                XmlStep::SelfText => return cur.iter().map(|n| n.text.as_str()).collect(),
                XmlStep::Attr(a) => return cur.iter().filter_map(|n| n.attr(a)).collect(),
                XmlStep::Child { name, index, attr_eq } => {
                    let mut next = Vec::new();
                    for n in &cur {
                        let matching = n.children.iter().filter(|c| &c.name == name).filter(|c| match attr_eq {
                            Some((k, v)) => c.attr(k) == Some(v.as_str()),
                            None => true,
                        });
                        match index {
                            Some(i) => next.extend(matching.skip(i - 1).take(1)),
                            None => next.extend(matching),
                        }
                    }
                    cur = next;
                }
            }
        }
        out.extend(cur.iter().map(|n| n.text.as_str()));
        out
    }
}

/// Splits a whole (small) XML document into record fragments at
/// `record_path` (absolute, e.g. `/Export/Records/Record`). The adapters
/// stream large files themselves and call the mapper per fragment; this is
/// for tests and `vaxgate mapping test`.
///
/// # Errors
/// [`CodecError::Xml`] with the byte position.
pub fn split_xml_records(doc: &str, record_path: &str) -> Result<Vec<String>, CodecError> {
    let want: Vec<&str> = record_path.trim_matches('/').split('/').collect();
    let mut reader = quick_xml::Reader::from_str(doc);
    let mut path: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    loop {
        let before = reader.buffer_position() as usize;
        let ev = reader.read_event().map_err(|e| xml_err(before as u64, e))?;
        let after = reader.buffer_position() as usize;
        match ev {
            Event::Start(e) => {
                path.push(local(e.name().as_ref()));
                if start.is_none() && path == want {
                    start = Some(before);
                }
            }
            Event::Empty(e) => {
                path.push(local(e.name().as_ref()));
                if start.is_none() && path == want {
                    out.push(doc.get(before..after).unwrap_or("").to_string());
                }
                path.pop();
            }
            Event::End(_) => {
                if let Some(s) = start
                    && path == want
                {
                    out.push(doc.get(s..after).unwrap_or("").to_string());
                    start = None;
                }
                path.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------ JSON

#[derive(Debug, Clone, PartialEq, Eq)]
enum JsonStep {
    Key(String),
    Index(usize),
    All,
}

/// A parsed JSON path: `shipment.vehicle.plate`, `items[0].code`,
/// `cartons[*].codes[*]` (`[*]` iterates an array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(Vec<JsonStep>);

impl JsonPath {
    /// Parses a path.
    ///
    /// # Errors
    /// A message naming the problem.
    pub fn parse(path: &str) -> Result<JsonPath, String> {
        let bad = |why: &str| {
            format!("bad JSON path `{path}`: {why} (expected e.g. shipment.vehicle.plate, cartons[*].code)")
        };
        let mut steps = Vec::new();
        if path.is_empty() || path == "." {
            return Ok(JsonPath(steps));
        }
        for part in path.split('.') {
            let (key, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if key.is_empty() && rest.is_empty() {
                return Err(bad("empty step"));
            }
            if !key.is_empty() {
                steps.push(JsonStep::Key(key.to_string()));
            }
            while !rest.is_empty() {
                let inner_end = rest.find(']').ok_or_else(|| bad("unclosed `[`"))?;
                let inner = rest.get(1..inner_end).ok_or_else(|| bad("bad `[`"))?;
                if !rest.starts_with('[') {
                    return Err(bad("text after `]`"));
                }
                if inner == "*" {
                    steps.push(JsonStep::All);
                } else {
                    let i: usize = inner.parse().map_err(|_| bad("index must be a number or *"))?;
                    steps.push(JsonStep::Index(i));
                }
                rest = &rest[inner_end + 1..];
            }
        }
        Ok(JsonPath(steps))
    }

    /// Every value the path selects.
    pub fn eval<'a>(&self, v: &'a Value) -> Vec<&'a Value> {
        let mut cur = vec![v];
        for step in &self.0 {
            let mut next = Vec::new();
            for c in cur {
                match step {
                    JsonStep::Key(k) => next.extend(c.get(k.as_str())),
                    JsonStep::Index(i) => next.extend(c.get(*i)),
                    JsonStep::All => {
                        if let Value::Array(a) = c {
                            next.extend(a.iter());
                        }
                    }
                }
            }
            cur = next;
        }
        cur
    }
}

/// A scalar JSON value as text (`null` → none, objects/arrays as JSON).
pub(crate) fn json_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        other => Some(Cow::Owned(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hl7_paths() {
        let p = Hl7Path::parse("OBX(3.1=ZTC)-5").ok();
        assert_eq!(p.as_ref().map(|p| (p.segment.as_str(), p.field)), Some(("OBX", 5)));
        assert!(Hl7Path::parse("PID-3[2].4.2").is_ok());
        assert!(Hl7Path::parse("PID").is_err());
        assert!(Hl7Path::parse("pid-3").is_err());
        assert!(Hl7Path::parse("PID-0").is_err());
        assert!(Hl7Path::parse("PID-3.1.1.1").is_err());
    }

    #[test]
    fn xml_paths_and_split() {
        let doc = "<Export><Records><Record id=\"1\"><A t=\"x\">甲&amp;乙</A><A t=\"y\">2</A></Record><Record id=\"2\"/></Records></Export>";
        let recs = split_xml_records(doc, "/Export/Records/Record").unwrap_or_default();
        assert_eq!(recs.len(), 2);
        let n = XmlNode::parse(&recs[0]).unwrap_or_default();
        let get = |p: &str| {
            XmlPath::parse(p)
                .map(|p| p.eval(&n).into_iter().map(str::to_string).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(get("A"), ["甲&乙", "2"]);
        assert_eq!(get("A[@t='y']"), ["2"]);
        assert_eq!(get("A[2]/@t"), ["y"]);
        assert_eq!(get("@id"), ["1"]);
        assert!(XmlNode::parse("<a><b></a>").is_err());
    }

    #[test]
    fn json_paths() {
        let v: Value = serde_json::json!({"a": {"b": [{"c": 1}, {"c": 2}]}});
        let p = JsonPath::parse("a.b[*].c").ok();
        assert_eq!(p.map(|p| p.eval(&v).len()), Some(2));
        assert!(JsonPath::parse("a.b[x]").is_err());
    }
}
