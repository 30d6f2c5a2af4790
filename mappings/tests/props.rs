//! Property tests: canonical JSON is stable under key reordering; parsers
//! never panic on arbitrary input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mappings::canonical::to_canonical_json;
use mappings::checks;
use mappings::datefmt::DateFormat;
use mappings::sources::{Hl7Path, JsonPath, XmlNode, XmlPath};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        // short decimals: serde_json (without float_roundtrip) re-reads them exactly
        (-1e6f64..1e6).prop_map(|x| Value::from((x * 1000.0).round() / 1000.0)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The same value with every object's members in reverse insertion order.
fn reorder(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m.iter().rev() {
                out.insert(k.clone(), reorder(v));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(reorder).collect()),
        other => other.clone(),
    }
}

proptest! {
    #[test]
    fn canonical_json_stable_under_reordering(v in arb_json()) {
        let a = to_canonical_json(&v);
        let b = to_canonical_json(&reorder(&v));
        prop_assert_eq!(&a, &b);
        // and it is valid JSON denoting the same value
        let back: Value = serde_json::from_slice(&a).unwrap();
        prop_assert_eq!(back, v);
    }

    #[test]
    fn date_parsers_never_panic(fmt in ".{0,20}", s in ".{0,24}") {
        if let Ok(f) = DateFormat::compile(&fmt) {
            let _ = f.parse_in(&s, chrono_tz::Asia::Shanghai);
        }
        for named in ["yyyyMMddHHmmss", "yyyy/MM/dd", "yyyy/M/d H:mm", "unix", "unix_ms", "rfc3339", "hl7", "yyyy-MM-dd HH:mm:ss.SSS"] {
            let _ = DateFormat::compile(named).unwrap().parse_in(&s, chrono_tz::Asia::Shanghai);
        }
    }

    #[test]
    fn digit_dates_never_panic(s in "[0-9+.-]{0,24}") {
        for named in ["yyyyMMddHHmmss", "hl7", "unix", "unix_ms"] {
            let _ = DateFormat::compile(named).unwrap().parse_in(&s, chrono_tz::Asia::Shanghai);
        }
    }

    #[test]
    fn path_parsers_never_panic(s in ".{0,30}") {
        let _ = Hl7Path::parse(&s);
        let _ = XmlPath::parse(&s);
        let _ = JsonPath::parse(&s);
    }

    #[test]
    fn hl7_like_paths_never_panic(s in "[A-Z0-9]{0,4}(\\[[0-9]{0,2}\\])?(\\([0-9.=A-Z-]{0,8}\\)?)?-?[0-9\\[\\].]{0,8}") {
        let _ = Hl7Path::parse(&s);
    }

    #[test]
    fn id_checkers_never_panic(s in ".{0,24}", d in "[0-9Xx]{15,19}", u in "[0-9A-Z]{16,19}") {
        for x in [&s, &d, &u] {
            let _ = checks::is_valid_resident_id(x);
            let _ = checks::is_valid_uscc(x);
            let _ = checks::is_trace_code(x);
            let _ = checks::is_recipient_code(x);
            let _ = checks::recipient_code_birth_year(x);
            let _ = checks::is_uri(x);
            let _ = checks::is_phone(x);
            let _ = mappings::mask(x);
        }
    }

    #[test]
    fn xml_fragment_parser_never_panics(s in "(<[a-z]{1,3}( a=\"[^\"]{0,4}\")?>|</[a-z]{1,3}>|[^<]{0,5}|&[a-z#0-9]{0,4};){0,8}") {
        let _ = XmlNode::parse(&s);
    }

    #[test]
    fn hl7_messages_never_panic(body in "[A-Z0-9|^~&\\\\ 中文]{0,60}") {
        let text = format!("MSH|^~\\&|A|B|C|D|20240101||VXU^V04|1|P|2.5.1\rPID|{body}\rORC|{body}\rRXA|{body}");
        if let Ok(rec) = mappings::sources::Hl7Record::parse(&text, Some("ORC")) {
            for p in ["PID-3.1", "RXA-15", "OBX(3.1=ZTC)-5", "PID-5[2].1.1"] {
                let path = Hl7Path::parse(p).unwrap();
                for g in 0..rec.groups() {
                    let _ = rec.get(&path, Some(g), true);
                }
            }
        }
    }
}
