//! Spec errors name the file, the line and the key; unknown names list
//! near matches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mappings::{Dataset, MappingSpec, SpecError};

const BASE: &str = r#"[source]
name = "t"
format = "rows"
record_key = "ID"

[category]
fixed = "cancellation"

[[fields]]
to = "event.occurred_at"
from = "SJ"
date = "yyyyMMddHHmmss"

[[fields]]
to = "cancels_event_id"
from = "YSJ"

[[fields]]
to = "cancel_reason_code"
from = "YY"
"#;

fn err(text: &str) -> SpecError {
    MappingSpec::from_toml_str(text, "spec.toml", &Dataset::builtin()).expect_err("spec should be rejected")
}

#[test]
fn base_is_valid() {
    MappingSpec::from_toml_str(BASE, "spec.toml", &Dataset::builtin()).unwrap();
}

#[test]
fn malformed_toml_names_line() {
    let e = err(&BASE.replace("from = \"YSJ\"", "from = \"YSJ"));
    let loc = e.location().unwrap();
    assert_eq!((loc.file.as_str(), loc.line), ("spec.toml", 16), "{e}");
    assert!(e.to_string().starts_with("spec.toml:16:"), "{e}");
}

#[test]
fn unknown_element_lists_near_matches() {
    let e = err(&BASE.replace("to = \"cancel_reason_code\"", "to = \"cancel_reason_cod\""));
    let s = e.to_string();
    assert!(s.starts_with("spec.toml:19:"), "{s}");
    assert!(s.contains("key `fields[2].to`"), "{s}");
    assert!(
        s.contains("unknown element `cancel_reason_cod`; did you mean `cancel_reason_code`"),
        "{s}"
    );
}

#[test]
fn unknown_setting_is_named() {
    let e = err(&BASE.replace("from = \"YY\"", "frm = \"YY\""));
    let s = e.to_string();
    assert!(s.starts_with("spec.toml:20:"), "{s}");
    assert!(s.contains("frm"), "{s}");
}

#[test]
fn unknown_category_suggests() {
    let e = err(&BASE.replace("fixed = \"cancellation\"", "fixed = \"cancelation\""));
    let s = e.to_string();
    assert!(s.starts_with("spec.toml:7:"), "{s}");
    assert!(
        s.contains("unknown category `cancelation`; did you mean `cancellation`"),
        "{s}"
    );
}

#[test]
fn element_outside_category_is_rejected() {
    let e = err(&BASE.replace("to = \"cancel_reason_code\"", "to = \"lot_number\""));
    assert!(
        e.to_string()
            .contains("element `lot_number` is not part of category cancellation"),
        "{e}"
    );
}

#[test]
fn missing_required_mapping_is_rejected() {
    let text = BASE.replace("[[fields]]\nto = \"cancel_reason_code\"\nfrom = \"YY\"\n", "");
    let e = err(&text);
    assert!(
        e.to_string()
            .contains("category `cancellation` requires cancel_reason_code"),
        "{e}"
    );
}

#[test]
fn bad_paths_formats_and_tables() {
    let hl7 = BASE
        .replace("format = \"rows\"", "format = \"hl7\"")
        .replace("record_key = \"ID\"", "record_key = \"ORC-3.1\"");
    let e = err(&hl7);
    assert!(e.to_string().contains("bad HL7 path `SJ`"), "{e}");
    let e = err(&BASE.replace("format = \"rows\"", "format = \"row\""));
    assert!(
        e.to_string()
            .contains("unknown input format `row`; did you mean `rows`"),
        "{e}"
    );
    let e = err(&BASE.replace("date = \"yyyyMMddHHmmss\"", "date = \"yyyyMMddhhmmss\""));
    assert!(
        e.to_string().contains("spec.toml:12:") && e.to_string().contains("`hh` is not a pattern"),
        "{e}"
    );
    let e = err(&BASE.replace("from = \"YY\"", "from = \"YY\"\nlookup = \"reasons\""));
    assert!(e.to_string().contains("unknown code table `reasons`"), "{e}");
    let e = err(&BASE.replace("name = \"t\"", "name = \"t\"\ntimezone = \"Asia/Shanghia\""));
    assert!(e.to_string().contains("did you mean `Asia/Shanghai`"), "{e}");
}

#[test]
fn unknown_event_attribute() {
    let e = err(&BASE.replace("to = \"event.occurred_at\"", "to = \"event.ocurred_at\""));
    assert!(
        e.to_string()
            .contains("unknown event attribute `event.ocurred_at`; did you mean `event.occurred_at`"),
        "{e}"
    );
}

#[test]
fn packages_are_for_json_sources_only() {
    let e = err(&format!(
        "{BASE}\n[[packages]]\nfrom = \"cartons[*]\"\nparent = \"code\"\nchildren = \"units[*]\"\n"
    ));
    let text = e.to_string();
    assert!(text.contains("packages.from") && text.contains("JSON"), "{text}");
}
