//! NMPAB/T 1005-style exchange messages, as JSON and as XML.
//!
//! The official NMPAB/T 1005 text is not public; the envelope follows the
//! public evidence (DB14/T 3290: UTF-8 JSON over HTTPS, a GUID event id):
//! `{version, eventID, eventTime, sender, receiver, eventType, payload}`,
//! where the payload is a [`TraceEvent`]. The XML form carries the same
//! content; each field value has a `type` attribute so it round-trips.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::CodecError;
use crate::event::{AggregationLink, Party, TraceEvent};
use crate::pii::Pii;
use crate::sources::XmlNode;

/// Version tag written into every message.
pub const EXCHANGE_VERSION: &str = "NMPAB/T 1005-2019 (vaxgate profile 1)";

/// One exchange message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExchangeMessage {
    /// Profile version.
    pub version: String,
    /// Event id (GUID), equal to the payload's.
    #[serde(rename = "eventID")]
    pub event_id: Uuid,
    /// Message time.
    pub event_time: DateTime<FixedOffset>,
    /// Sender organisation code.
    pub sender: String,
    /// Receiver organisation code.
    pub receiver: String,
    /// Event type: the bill type when the event is a bill, else the category.
    pub event_type: String,
    /// The event.
    pub payload: TraceEvent,
}

impl ExchangeMessage {
    /// Wraps an event: sender = event source, time = recorded time.
    pub fn new(event: TraceEvent, receiver: &str) -> ExchangeMessage {
        ExchangeMessage {
            version: EXCHANGE_VERSION.to_string(),
            event_id: event.event_id,
            event_time: event.recorded_at,
            sender: event.source.clone(),
            receiver: receiver.to_string(),
            event_type: event.bill_type.clone().unwrap_or_else(|| event.category.clone()),
            payload: event,
        }
    }

    /// A copy with the payload's personal data masked (for display).
    pub fn masked(&self) -> ExchangeMessage {
        ExchangeMessage {
            payload: self.payload.masked(),
            ..self.clone()
        }
    }
}

/// Pretty JSON of a message.
pub fn to_json(msg: &ExchangeMessage) -> String {
    serde_json::to_string_pretty(msg).unwrap_or_default()
}

/// Parses a JSON message.
///
/// # Errors
/// [`CodecError::Json`] naming line and column.
pub fn from_json(text: &str) -> Result<ExchangeMessage, CodecError> {
    Ok(serde_json::from_str(text)?)
}

fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    let e = quick_xml::escape::escape(s);
    if e.contains('\r') {
        std::borrow::Cow::Owned(e.replace('\r', "&#13;"))
    } else {
        e
    }
}

fn elem(out: &mut String, indent: usize, name: &str, text: &str) {
    out.push_str(&" ".repeat(indent));
    out.push_str(&format!("<{name}>{}</{name}>\n", esc(text)));
}

fn value_xml(out: &mut String, indent: usize, tag: &str, key: &str, v: &Value) {
    let (ty, text) = match v {
        Value::Null => ("null", String::new()),
        Value::Bool(b) => ("boolean", b.to_string()),
        Value::Number(n) if n.is_i64() || n.is_u64() => ("integer", n.to_string()),
        Value::Number(n) => ("number", n.to_string()),
        Value::String(s) => ("string", s.clone()),
        other => ("json", other.to_string()),
    };
    out.push_str(&" ".repeat(indent));
    out.push_str(&format!(
        "<{tag} name=\"{}\" type=\"{ty}\">{}</{tag}>\n",
        esc(key),
        esc(&text)
    ));
}

/// XML of a message (UTF-8, two-space indentation).
pub fn to_xml(msg: &ExchangeMessage) -> String {
    let e = &msg.payload;
    let mut o = String::with_capacity(2048);
    o.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    o.push_str(&format!("<ExchangeMessage version=\"{}\">\n", esc(&msg.version)));
    elem(&mut o, 2, "EventID", &msg.event_id.to_string());
    elem(&mut o, 2, "EventTime", &msg.event_time.to_rfc3339());
    elem(&mut o, 2, "Sender", &msg.sender);
    elem(&mut o, 2, "Receiver", &msg.receiver);
    elem(&mut o, 2, "EventType", &msg.event_type);
    o.push_str("  <Payload>\n");
    elem(&mut o, 4, "Category", &e.category);
    elem(&mut o, 4, "EventID", &e.event_id.to_string());
    elem(&mut o, 4, "OccurredAt", &e.occurred_at.to_rfc3339());
    elem(&mut o, 4, "RecordedAt", &e.recorded_at.to_rfc3339());
    elem(&mut o, 4, "Source", &e.source);
    if let Some(d) = &e.device {
        elem(&mut o, 4, "Device", d);
    }
    elem(&mut o, 4, "RecordKey", &e.record_key);
    if let Some(b) = &e.bill_type {
        elem(&mut o, 4, "BillType", b);
    }
    if !e.trace_codes.is_empty() {
        o.push_str("    <TraceCodes>\n");
        for c in &e.trace_codes {
            elem(&mut o, 6, "TraceCode", c);
        }
        o.push_str("    </TraceCodes>\n");
    }
    if !e.aggregations.is_empty() {
        o.push_str("    <Aggregations>\n");
        for a in &e.aggregations {
            o.push_str(&format!("      <Aggregation parent=\"{}\">\n", esc(&a.parent)));
            for c in &a.children {
                elem(&mut o, 8, "Child", c);
            }
            o.push_str("      </Aggregation>\n");
        }
        o.push_str("    </Aggregations>\n");
    }
    for (tag, p) in [("From", &e.from), ("To", &e.to)] {
        if let Some(p) = p {
            o.push_str(&format!("    <{tag} code=\"{}\"", esc(&p.code)));
            if let Some(n) = &p.name {
                o.push_str(&format!(" name=\"{}\"", esc(n)));
            }
            o.push_str("/>\n");
        }
    }
    o.push_str("    <Fields>\n");
    for (k, v) in &e.fields {
        value_xml(&mut o, 6, "Field", k, v);
    }
    o.push_str("    </Fields>\n");
    if !e.pii.is_empty() {
        o.push_str("    <Pii>\n");
        for (k, v) in e.pii.iter() {
            value_xml(&mut o, 6, "Field", k, &Value::String(v.to_string()));
        }
        o.push_str("    </Pii>\n");
    }
    o.push_str("  </Payload>\n</ExchangeMessage>\n");
    o
}

fn need<'a>(n: &'a XmlNode, name: &str) -> Result<&'a XmlNode, CodecError> {
    n.child(name)
        .ok_or_else(|| CodecError::Invalid(format!("<{}> has no <{name}>", n.name)))
}

fn time(n: &XmlNode, name: &str) -> Result<DateTime<FixedOffset>, CodecError> {
    let t = &need(n, name)?.text;
    DateTime::parse_from_rfc3339(t).map_err(|e| CodecError::Invalid(format!("<{name}> {t:?}: {e}")))
}

fn uuid(n: &XmlNode, name: &str) -> Result<Uuid, CodecError> {
    let t = &need(n, name)?.text;
    Uuid::parse_str(t).map_err(|e| CodecError::Invalid(format!("<{name}> {t:?}: {e}")))
}

fn field_value(f: &XmlNode) -> Result<(String, Value), CodecError> {
    let name = f
        .attr("name")
        .ok_or_else(|| CodecError::Invalid("<Field> without name".into()))?
        .to_string();
    let bad = |what: &str| CodecError::Invalid(format!("<Field name=\"{name}\">: {what}"));
    let t = f.text.as_str();
    let v = match f.attr("type").unwrap_or("string") {
        "string" => Value::String(t.to_string()),
        "null" => Value::Null,
        "boolean" => Value::Bool(t.parse().map_err(|_| bad("not a boolean"))?),
        "integer" => serde_json::from_str::<serde_json::Number>(t)
            .map(Value::Number)
            .map_err(|_| bad("not an integer"))?,
        "number" => serde_json::from_str::<serde_json::Number>(t)
            .map(Value::Number)
            .map_err(|_| bad("not a number"))?,
        "json" => serde_json::from_str(t).map_err(|_| bad("not JSON"))?,
        other => return Err(bad(&format!("unknown type `{other}`"))),
    };
    Ok((name, v))
}

/// Parses an XML message written by [`to_xml`].
///
/// # Errors
/// [`CodecError`] naming the missing or malformed part.
pub fn from_xml(text: &str) -> Result<ExchangeMessage, CodecError> {
    let start = text
        .find("<ExchangeMessage")
        .ok_or_else(|| CodecError::Invalid("no <ExchangeMessage> element".into()))?;
    let root = XmlNode::parse(&text[start..])?;
    let p = need(&root, "Payload")?;
    let opt = |n: &XmlNode, name: &str| n.child(name).map(|c| c.text.clone());
    let party = |tag: &str| -> Option<Party> {
        let n = p.child(tag)?;
        Some(Party {
            code: n.attr("code")?.to_string(),
            name: n.attr("name").map(str::to_string),
        })
    };
    let mut fields = Map::new();
    if let Some(fs) = p.child("Fields") {
        for f in &fs.children {
            let (k, v) = field_value(f)?;
            fields.insert(k, v);
        }
    }
    let mut pii = Pii::new();
    if let Some(fs) = p.child("Pii") {
        for f in &fs.children {
            let (k, v) = field_value(f)?;
            pii.insert(k, v.as_str().unwrap_or_default());
        }
    }
    let payload = TraceEvent {
        category: need(p, "Category")?.text.clone(),
        event_id: uuid(p, "EventID")?,
        occurred_at: time(p, "OccurredAt")?,
        recorded_at: time(p, "RecordedAt")?,
        source: need(p, "Source")?.text.clone(),
        device: opt(p, "Device"),
        record_key: need(p, "RecordKey")?.text.clone(),
        bill_type: opt(p, "BillType"),
        trace_codes: p
            .child("TraceCodes")
            .map(|t| t.children.iter().map(|c| c.text.clone()).collect())
            .unwrap_or_default(),
        aggregations: p
            .child("Aggregations")
            .map(|a| {
                a.children
                    .iter()
                    .map(|g| AggregationLink {
                        parent: g.attr("parent").unwrap_or_default().to_string(),
                        children: g.children.iter().map(|c| c.text.clone()).collect(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        from: party("From"),
        to: party("To"),
        fields,
        pii,
    };
    Ok(ExchangeMessage {
        version: root.attr("version").unwrap_or(EXCHANGE_VERSION).to_string(),
        event_id: uuid(&root, "EventID")?,
        event_time: time(&root, "EventTime")?,
        sender: need(&root, "Sender")?.text.clone(),
        receiver: need(&root, "Receiver")?.text.clone(),
        event_type: need(&root, "EventType")?.text.clone(),
        payload,
    })
}
