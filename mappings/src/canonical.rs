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
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
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
        Value::Object(m) => {
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
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x08 => Some(b"\\b"),
            0x0c => Some(b"\\f"),
            0..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        match esc {
            Some(e) => out.extend_from_slice(e),
            None => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// SM3 over the canonical form of a JSON value.
pub fn canonical_sm3(value: &Value) -> [u8; 32] {
    Sm3::digest(to_canonical_json(value)).into()
}

/// SM3 over the canonical JSON of an event (including its personal data,
/// which the gateway encrypts separately; hash before encrypting).
pub fn event_sm3(event: &TraceEvent) -> [u8; 32] {
    // Serialising our own types to a Value cannot fail (string keys only).
    let v = serde_json::to_value(event).unwrap_or(Value::Null);
    canonical_sm3(&v)
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
