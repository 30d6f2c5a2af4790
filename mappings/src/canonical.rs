//! Canonical JSON for hashing and signing.
//!
//! The rules (so every party derives the same bytes from the same event):
//! 1. Object members are sorted by key, comparing the keys' UTF-8 bytes
//!    (equivalently, by Unicode code point); duplicate keys cannot occur.
//! 2. No insignificant whitespace: no spaces or newlines between tokens.
//! 3. Strings are UTF-8 as-is; only `"` and `\` and control characters
//!    (U+0000-U+001F) are escaped, as `\"`, `\\`, `\b \f \n \r \t` or
//!    `\u00XX` (lowercase hex). `/` and non-ASCII are never escaped.
//! 4. Integers are written in plain decimal; other numbers in the shortest
//!    form that round-trips (as `serde_json` writes them, e.g. `5.2`, `1e-7`).
//! 5. `true`, `false`, `null` as in JSON; arrays keep their order.

use serde_json::Value;
use sm3::{Digest, Sm3};

use crate::event::TraceEvent;

/// The canonical bytes of a JSON value.
pub fn to_canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    write_canonical(value, &mut out);
    out
}

/// Appends the canonical form of `value` to `out`.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            use std::io::Write as _;
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_string(s, out),
        Value::Array(a) => {
            out.push(b'[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        Value::Object(m) => write_object(m, out),
    }
}

/// Bytes that must be escaped in a JSON string: control characters, `"` and `\`.
const ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

fn write_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut rest = s.as_bytes();
    while let Some(pos) = rest.iter().position(|&b| ESCAPE[usize::from(b)]) {
        out.extend_from_slice(&rest[..pos]);
        let b = rest[pos];
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        rest = &rest[pos + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

/// SM3 over the canonical form of a JSON value.
pub fn canonical_sm3(value: &Value) -> [u8; 32] {
    Sm3::digest(to_canonical_json(value)).into()
}

/// SM3 over the canonical JSON of an event (including its personal data,
/// which the gateway encrypts separately; hash before encrypting).
pub fn event_sm3(event: &TraceEvent) -> [u8; 32] {
    Sm3::digest(event_canonical_json(event)).into()
}

/// The canonical JSON of an event: the same bytes as
/// `to_canonical_json(&serde_json::to_value(event))`, written directly
/// (no intermediate `Value`).
pub fn event_canonical_json(e: &TraceEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    let mut first = true;
    let mut key = |out: &mut Vec<u8>, k: &str| {
        if !first {
            out.push(b',');
        }
        first = false;
        write_string(k, out);
        out.push(b':');
    };
    let time = |out: &mut Vec<u8>, t: &chrono::DateTime<chrono::FixedOffset>| {
        // chrono's serde form (RFC 3339, fraction only when non-zero), never escaped
        out.push(b'"');
        out.extend_from_slice(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false).as_bytes());
        out.push(b'"');
    };
    let strings = |out: &mut Vec<u8>, list: &[String]| {
        out.push(b'[');
        for (i, c) in list.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_string(c, out);
        }
        out.push(b']');
    };
    let party = |out: &mut Vec<u8>, p: &crate::event::Party| {
        out.extend_from_slice(b"{\"code\":");
        write_string(&p.code, out);
        if let Some(n) = &p.name {
            out.extend_from_slice(b",\"name\":");
            write_string(n, out);
        }
        out.push(b'}');
    };
    out.push(b'{');
    if !e.aggregations.is_empty() {
        key(&mut out, "aggregations");
        out.push(b'[');
        for (i, a) in e.aggregations.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"children\":");
            strings(&mut out, &a.children);
            out.extend_from_slice(b",\"parent\":");
            write_string(&a.parent, &mut out);
            out.push(b'}');
        }
        out.push(b']');
    }
    if let Some(b) = &e.bill_type {
        key(&mut out, "billType");
        write_string(b, &mut out);
    }
    key(&mut out, "category");
    write_string(&e.category, &mut out);
    if let Some(d) = &e.device {
        key(&mut out, "device");
        write_string(d, &mut out);
    }
    key(&mut out, "eventID");
    let mut buf = uuid::Uuid::encode_buffer();
    write_string(e.event_id.hyphenated().encode_lower(&mut buf), &mut out);
    key(&mut out, "fields");
    write_object(&e.fields, &mut out);
    if let Some(p) = &e.from {
        key(&mut out, "from");
        party(&mut out, p);
    }
    key(&mut out, "occurredAt");
    time(&mut out, &e.occurred_at);
    if !e.pii.is_empty() {
        key(&mut out, "pii");
        out.push(b'{');
        // Pii iterates in key order already (a BTreeMap of Strings)
        for (i, (k, v)) in e.pii.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_string(k, &mut out);
            out.push(b':');
            write_string(v, &mut out);
        }
        out.push(b'}');
    }
    key(&mut out, "recordKey");
    write_string(&e.record_key, &mut out);
    key(&mut out, "recordedAt");
    time(&mut out, &e.recorded_at);
    key(&mut out, "source");
    write_string(&e.source, &mut out);
    if let Some(p) = &e.to {
        key(&mut out, "to");
        party(&mut out, p);
    }
    if !e.trace_codes.is_empty() {
        key(&mut out, "traceCodes");
        strings(&mut out, &e.trace_codes);
    }
    out.push(b'}');
    out
}

fn write_object(m: &serde_json::Map<String, Value>, out: &mut Vec<u8>) {
    let mut entries: Vec<(&String, &Value)> = m.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(k, out);
        out.push(b':');
        write_canonical(v, out);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_compact_escaped() {
        let v: Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[1,2.5,"x\n\u0001"],"x":null},"中":"文/"}"#).unwrap_or(Value::Null);
        let s = String::from_utf8(to_canonical_json(&v)).unwrap_or_default();
        assert_eq!(s, r#"{"a":{"x":null,"y":[1,2.5,"x\n\u0001"]},"b":1,"中":"文/"}"#);
    }
}
