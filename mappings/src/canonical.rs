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
        Value::Array(a) => write_seq(b'[', a, b']', out, write_canonical),
        Value::Object(m) => write_object(m, out),
    }
}

/// Appends `open`, the items separated by commas (each written by `item`),
/// then `close`: the one way every array and object here is laid out.
fn write_seq<T>(
    open: u8,
    items: impl IntoIterator<Item = T>,
    close: u8,
    out: &mut Vec<u8>,
    mut item: impl FnMut(T, &mut Vec<u8>),
) {
    out.push(open);
    for (i, x) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item(x, out);
    }
    out.push(close);
}

/// Appends `"key":` (the caller writes the value).
fn write_key(k: &str, out: &mut Vec<u8>) {
    write_string(k, out);
    out.push(b':');
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

/// Position of the first byte that needs escaping. Checks 8 bytes at a
/// time (SWAR): a chunk is clean when no byte is below 0x20, `"` or `\\`.
fn find_escape(b: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(LO) & !x & HI;
    let mut i = 0;
    for chunk in b.chunks_exact(8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(chunk);
        let x = u64::from_le_bytes(a);
        // bytes < 0x20: (x - 0x20..) & !x & 0x80.. is non-zero for some byte < 0x20
        let below = x.wrapping_sub(LO * 0x20) & !x & HI;
        let quote = has_zero(x ^ (LO * u64::from(b'"')));
        let backslash = has_zero(x ^ (LO * u64::from(b'\\')));
        if below | quote | backslash != 0 {
            break;
        }
        i += 8;
    }
    b[i..].iter().position(|&c| ESCAPE[usize::from(c)]).map(|p| p + i)
}

/// Appends a JSON string (rule 3).
pub(crate) fn write_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut rest = s.as_bytes();
    while let Some(pos) = find_escape(rest) {
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
    let mut out = Vec::new();
    write_event_canonical(e, &mut out);
    out
}

/// Appends the canonical JSON of an event to `out` (reuse one buffer per
/// worker to avoid an allocation per event).
pub fn write_event_canonical(e: &TraceEvent, out: &mut Vec<u8>) {
    out.push(b'{');
    // The members in key order.
    let mut m = Members { out, first: true };
    if !e.aggregations.is_empty() {
        write_aggregations(&e.aggregations, m.key("aggregations"));
    }
    m.opt_string("billType", e.bill_type.as_deref());
    m.string("category", &e.category);
    m.opt_string("device", e.device.as_deref());
    let mut buf = uuid::Uuid::encode_buffer();
    m.string("eventID", e.event_id.hyphenated().encode_lower(&mut buf));
    write_object(&e.fields, m.key("fields"));
    if let Some(p) = &e.from {
        write_party(p, m.key("from"));
    }
    write_time(&e.occurred_at, m.key("occurredAt"));
    if !e.pii.is_empty() {
        // Pii iterates in key order already (a BTreeMap of Strings)
        write_seq(b'{', e.pii.iter(), b'}', m.key("pii"), |(k, v), out| {
            write_key(k, out);
            write_string(v, out);
        });
    }
    m.string("recordKey", &e.record_key);
    write_time(&e.recorded_at, m.key("recordedAt"));
    m.string("source", &e.source);
    if let Some(p) = &e.to {
        write_party(p, m.key("to"));
    }
    if !e.trace_codes.is_empty() {
        write_strings(&e.trace_codes, m.key("traceCodes"));
    }
    m.out.push(b'}');
}

/// Appends an array of strings (trace codes).
pub(crate) fn write_strings(list: &[String], out: &mut Vec<u8>) {
    write_seq(b'[', list, b']', out, |c, out| write_string(c, out));
}

/// Appends a party as its JSON form (`{"code":…,"name":…}`, no `name` when
/// there is none).
pub(crate) fn write_party(p: &crate::event::Party, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"code\":");
    write_string(&p.code, out);
    if let Some(n) = &p.name {
        out.extend_from_slice(b",\"name\":");
        write_string(n, out);
    }
    out.push(b'}');
}

/// Appends packaging links as their JSON form (`[{"children":[…],"parent":…},…]`).
pub(crate) fn write_aggregations(list: &[crate::event::AggregationLink], out: &mut Vec<u8>) {
    write_seq(b'[', list, b']', out, |a, out| {
        out.extend_from_slice(b"{\"children\":");
        write_strings(&a.children, out);
        out.extend_from_slice(b",\"parent\":");
        write_string(&a.parent, out);
        out.push(b'}');
    });
}

/// The members of one object being written, in the order the caller gives
/// them (sorted by key).
struct Members<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Members<'_> {
    /// Starts the member `k` (its value is written next into the buffer returned).
    fn key(&mut self, k: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_key(k, self.out);
        self.out
    }

    /// The member `k` with a string value.
    fn string(&mut self, k: &str, v: &str) {
        let out = self.key(k);
        write_string(v, out);
    }

    /// The member `k` with a string value, when there is one.
    fn opt_string(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.string(k, v);
        }
    }
}

fn write_object(m: &serde_json::Map<String, Value>, out: &mut Vec<u8>) {
    let member = |(k, v): (&String, &Value), out: &mut Vec<u8>| {
        write_key(k, out);
        write_canonical(v, out);
    };
    // members inserted in key order (as the mapper does) need no sorting
    if keys_sorted(m) {
        write_seq(b'{', m.iter(), b'}', out, member);
    } else {
        let mut entries: Vec<(&String, &Value)> = m.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        write_seq(b'{', entries, b'}', out, member);
    }
}

/// Whether the keys of `m` are in ascending byte order already (members
/// inserted in key order, as the mapper does, need no sorting).
pub(crate) fn keys_sorted(m: &serde_json::Map<String, Value>) -> bool {
    let mut keys = m.keys();
    match keys.next() {
        Some(first) => keys
            .try_fold(first, |prev, k| (prev.as_bytes() < k.as_bytes()).then_some(k))
            .is_some(),
        None => true,
    }
}

/// Writes a time as chrono's serde form does (RFC 3339, `Z` for a zero
/// offset, fraction only when non-zero), without allocating in the common case.
pub(crate) fn write_time(t: &chrono::DateTime<chrono::FixedOffset>, out: &mut Vec<u8>) {
    use chrono::{Datelike as _, Timelike as _};
    let (y, nanos) = (t.year(), t.nanosecond());
    if !(0..=9999).contains(&y) || nanos != 0 {
        out.push(b'"');
        out.extend_from_slice(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true).as_bytes());
        out.push(b'"');
        return;
    }
    let two = |out: &mut Vec<u8>, n: u32| out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
    let y = y as u32;
    out.push(b'"');
    two(out, y / 100);
    two(out, y % 100);
    out.push(b'-');
    two(out, t.month());
    out.push(b'-');
    two(out, t.day());
    out.push(b'T');
    two(out, t.hour());
    out.push(b':');
    two(out, t.minute());
    out.push(b':');
    two(out, t.second());
    let off = t.offset().local_minus_utc();
    if off == 0 {
        out.extend_from_slice(b"Z\"");
        return;
    }
    out.push(if off < 0 { b'-' } else { b'+' });
    // RFC 3339 offsets have no seconds: an offset that has some (a time
    // zone's local mean time, e.g. +08:05:43) is rounded to the nearest
    // minute, half away from zero, as chrono's serde form does.
    let mins = (off.unsigned_abs() + 30) / 60;
    two(out, mins / 60);
    out.push(b':');
    two(out, mins % 60);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_compact_escaped() {
        let v: Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[1,2.5,"x\n\u0001"],"x":null},"中":"文/"}"#).expect("test JSON");
        let s = String::from_utf8(to_canonical_json(&v)).expect("canonical JSON is UTF-8");
        assert_eq!(s, r#"{"a":{"x":null,"y":[1,2.5,"x\n\u0001"]},"b":1,"中":"文/"}"#);
    }
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn time_form_matches_chrono_serde() {
        for t in [
            "2024-03-05T09:30:00+08:00",
            "2024-03-05T09:30:00.5+08:00",
            "1999-12-31T23:59:59-05:30",
            "2024-03-05T01:02:03+00:00",
            "2024-03-05T01:02:03.123456789+14:00",
        ] {
            let dt = chrono::DateTime::parse_from_rfc3339(t).expect("test time");
            let mut out = Vec::new();
            write_time(&dt, &mut out);
            assert_eq!(
                String::from_utf8(out).expect("UTF-8"),
                serde_json::to_string(&dt).expect("chrono serialises")
            );
        }
    }

    /// Every offset chrono allows, to the second (local mean times such as
    /// Asia/Shanghai's +08:05:43 before 1901 have seconds), is written as
    /// serde writes it: so `event_canonical_json` is the canonical form of
    /// the event's serde value, as its documentation says.
    #[test]
    fn every_offset_matches_chrono_serde() {
        let utc = chrono::DateTime::parse_from_rfc3339("1900-06-01T12:00:00Z").expect("test time");
        let mut out = Vec::new();
        for secs in (-86_399..=86_399).step_by(7).chain([-30, -29, 29, 30, 20_743, -14_910]) {
            let dt = utc.with_timezone(&chrono::FixedOffset::east_opt(secs).expect("an offset"));
            out.clear();
            write_time(&dt, &mut out);
            assert_eq!(
                std::str::from_utf8(&out).expect("UTF-8"),
                serde_json::to_string(&dt).expect("chrono serialises"),
                "offset {secs} s"
            );
        }
    }
}

#[cfg(test)]
mod escape_tests {
    use super::*;

    #[test]
    fn swar_finds_every_escape() {
        let mut s: Vec<u8> = b"abcdefghijklmnopqrstuvwxyz".to_vec();
        for pos in 0..s.len() {
            for bad in [0u8, 0x1f, b'"', b'\\', b'\n'] {
                let mut t = s.clone();
                t[pos] = bad;
                assert_eq!(find_escape(&t), Some(pos), "{pos} {bad}");
            }
        }
        s.extend_from_slice("中文 ~\u{7f}".as_bytes());
        assert_eq!(find_escape(&s), None);
    }
}
