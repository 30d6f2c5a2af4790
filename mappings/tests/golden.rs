//! Golden tests: each example source's sample input → exchange JSON and XML
//! (one golden pair per category and source), EPCIS exports, and the
//! problems reported for bad records.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{CASES, check, config, run, spec};
use mappings::exchange::{self, ExchangeMessage};
use mappings::{Dataset, MappingSpec, QualityTracker, epcis};

#[test]
fn every_config_spec_loads() {
    let dataset = Dataset::builtin();
    let mut n = 0;
    for entry in std::fs::read_dir(common::root().join("config/mappings")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            MappingSpec::load(&path, &dataset).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= CASES.len(), "only {n} specs");
    // every spec in the directory has a sample case
    assert_eq!(n, CASES.len());
}

#[test]
fn samples_pass_and_match_golden_exchange_files() {
    let dataset = Dataset::builtin();
    let mut categories_seen = std::collections::BTreeSet::new();
    for (spec_file, input, format) in CASES {
        let spec = spec(spec_file);
        let outcomes = run(&spec, input, format);
        let mut tracker = QualityTracker::new(&dataset);
        let mut by_cat: BTreeMap<String, Vec<ExchangeMessage>> = BTreeMap::new();
        let mut events = Vec::new();
        for o in &outcomes {
            let errors: Vec<String> = o
                .problems
                .iter()
                .filter(|p| p.is_error())
                .map(ToString::to_string)
                .collect();
            assert!(errors.is_empty(), "{spec_file}: {errors:#?}");
            for e in &o.events {
                assert!(tracker.observe(e).is_empty());
                let msg = ExchangeMessage::new(e.clone(), &spec.receiver);
                // round trips both ways
                assert_eq!(
                    exchange::from_json(&exchange::to_json(&msg)).unwrap(),
                    msg,
                    "json round trip"
                );
                assert_eq!(
                    exchange::from_xml(&exchange::to_xml(&msg)).unwrap(),
                    msg,
                    "xml round trip"
                );
                // the direct canonical writer equals the generic one
                let generic = mappings::to_canonical_json(&serde_json::to_value(e).unwrap());
                assert_eq!(
                    String::from_utf8(mappings::event_canonical_json(e)).unwrap(),
                    String::from_utf8(generic).unwrap()
                );
                by_cat.entry(e.category.clone()).or_default().push(msg);
                events.push(e.clone());
            }
        }
        assert!(!events.is_empty(), "{spec_file} produced no events");
        let stem = spec_file.trim_end_matches(".toml");
        for (cat, msgs) in &by_cat {
            categories_seen.insert(cat.clone());
            let json = format!(
                "[\n{}\n]\n",
                msgs.iter().map(exchange::to_json).collect::<Vec<_>>().join(",\n")
            );
            check(&json, &format!("{cat}/{stem}.json"));
            let xml: String = msgs.iter().map(exchange::to_xml).collect();
            check(&xml, &format!("{cat}/{stem}.xml"));
        }
        let doc = epcis::to_epcis_document(&events, &dataset);
        check(
            &(serde_json::to_string_pretty(&doc).unwrap() + "\n"),
            &format!("epcis/{stem}.json"),
        );
        let warnings: Vec<String> = outcomes
            .iter()
            .flat_map(|o| &o.problems)
            .map(ToString::to_string)
            .collect();
        check(&(warnings.join("\n") + "\n"), &format!("warnings/{stem}.txt"));
    }
    let all: Vec<String> = dataset.categories().map(|c| c.key.clone()).collect();
    let missing: Vec<&String> = all.iter().filter(|c| !categories_seen.contains(*c)).collect();
    assert!(missing.is_empty(), "categories without a golden sample: {missing:?}");
}

#[test]
fn bad_records_give_precise_problems() {
    let spec = spec("clinic-ims.toml");
    let outcomes = run(&spec, "samples/clinic-ims.bad.rows.json", "rows-json");
    let lines: Vec<String> = outcomes
        .iter()
        .flat_map(|o| &o.problems)
        .map(ToString::to_string)
        .collect();
    let text = lines.join("\n") + "\n";
    check(&text, "problems/clinic-ims.bad.txt");
    for rule in [
        "recipient_code_format",
        "id_number_check",
        "trace_code_missing",
        "lookup",
        "date_format",
        "vaccine_expired",
        "trace_code_format",
        "type",
    ] {
        assert!(text.contains(&format!("rule {rule}")), "missing rule {rule} in\n{text}");
    }
    // personal data is masked in problems
    assert!(!text.contains("320102202301150029"), "{text}");
    assert!(text.contains("320***********0029"), "{text}");
    assert!(outcomes.iter().all(|o| !o.is_ok()));
}

#[test]
fn trace_code_used_more_times_than_doses() {
    let dataset = Dataset::builtin();
    let spec = spec("clinic-ims.toml");
    let text = std::fs::read_to_string(config("samples/clinic-ims.rows.json")).unwrap();
    let serde_json::Value::Array(rows) = serde_json::from_str(&text).unwrap() else {
        panic!()
    };
    let mut row = rows[0].as_object().unwrap().clone();
    let mut tracker = QualityTracker::new(&dataset);
    let mut problems = Vec::new();
    for i in 0..3 {
        row.insert("JZJL_ID".into(), format!("DUP{i}").into());
        row.insert("BZJC".into(), 2.into()); // a two-dose package
        let out = spec.map_at(&mappings::Record::Row(row.clone()), common::recorded_at());
        assert!(out.is_ok(), "{:?}", out.problems);
        problems.extend(tracker.observe(&out.events[0]));
    }
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].rule, "trace_code_overused");
    assert_eq!(problems[0].record, "DUP2");
    assert!(problems[0].message.contains("追溯码出现次数大于包装盒剂次"));
}

#[test]
fn pii_is_apart_and_masked() {
    let dataset = Dataset::builtin();
    let spec = spec("clinic-ims.toml");
    let out = &run(&spec, "samples/clinic-ims.rows.json", "rows-json")[0];
    let e = &out.events[0];
    assert!(e.fields.get("recipient_name").is_none());
    assert_eq!(e.pii.get("recipient_name"), Some("王小明"));
    let dbg = format!("{e:?}");
    assert!(
        !dbg.contains("小明") && !dbg.contains("320102202301150028") && !dbg.contains("13812345678"),
        "{dbg}"
    );
    let masked = exchange::to_json(&ExchangeMessage::new(e.masked(), "X"));
    assert!(!masked.contains("小明"), "{masked}");
    let p = e.subject_pseudonym(b"site-secret", &dataset).unwrap();
    assert_eq!(p, mappings::pseudonym(b"site-secret", "320102202301150028"));
    let doc = serde_json::to_string(&epcis::to_epcis_document(std::slice::from_ref(e), &dataset)).unwrap();
    assert!(!doc.contains("小明") && !doc.contains("320102202301150028"));
}

#[test]
fn same_record_same_event_id_and_hash() {
    let spec = spec("clinic-ims.toml");
    let a = run(&spec, "samples/clinic-ims.rows.json", "rows-json");
    let b = run(&spec, "samples/clinic-ims.rows.json", "rows-json");
    assert_eq!(a[0].events[0].event_id, b[0].events[0].event_id);
    assert_eq!(
        mappings::event_sm3(&a[0].events[0]),
        mappings::event_sm3(&b[0].events[0])
    );
    assert_ne!(
        mappings::event_sm3(&a[0].events[0]),
        mappings::event_sm3(&a[1].events[0])
    );
}

#[test]
fn row_columns_match_ignoring_ascii_case() {
    let spec = spec("clinic-ims.toml");
    let text = std::fs::read_to_string(config("samples/clinic-ims.rows.json")).unwrap();
    let serde_json::Value::Array(rows) = serde_json::from_str(&text).unwrap() else {
        panic!()
    };
    let row = rows[0].as_object().unwrap();
    let lower: serde_json::Map<String, serde_json::Value> =
        row.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
    let a = spec.map_at(&mappings::Record::Row(row.clone()), common::recorded_at());
    let b = spec.map_at(&mappings::Record::Row(lower), common::recorded_at());
    assert!(b.is_ok(), "{:?}", b.problems);
    assert_eq!(a.events, b.events);
}

#[test]
fn hl7_escapes_and_chinese_text_decode() {
    let spec = spec("hl7-vxu.toml");
    let outcomes = run(&spec, "samples/hl7-vxu.hl7", "hl7");
    let first = &outcomes[0].events[0];
    assert_eq!(first.field_str("remark"), Some("首剂|无不良反应\r\n已留观30分钟")); // \F\ and \X0D0A\
    assert_eq!(first.pii.get("recipient_address"), Some("南京市玄武区中山路1号&3栋")); // \T\
    assert_eq!(first.pii.get("recipient_name"), Some("王小明"));
    assert_eq!(first.record_key, "JZ202403050001");
    // one event per ORC group, each with its own OBX trace code
    let codes: Vec<&str> = outcomes
        .iter()
        .flat_map(|o| &o.events)
        .map(|e| e.trace_codes[0].as_str())
        .collect();
    assert_eq!(
        codes,
        ["86123450000000001001", "86345670000000003010", "86234560000000002003"]
    );
}

#[test]
fn xml_fragment_maps_alone() {
    // the adapters stream large exports and hand over one fragment at a time
    let spec = spec("mah-export.toml");
    let frag = r#"<Record type="CANCEL" id="C-1"><Time>2023-12-22 10:00:00</Time>
        <Cancel record="PI-1"><Reason code="01">录入错误</Reason></Cancel></Record>"#;
    let out = spec.map_at(&mappings::Record::Xml(frag.into()), common::recorded_at());
    assert!(out.is_ok(), "{:?}", out.problems);
    let e = &out.events[0];
    assert_eq!(e.category, "cancellation");
    let target = mappings::TraceEvent::derive_id("mah-export", "production_inbound", "PI-1").to_string();
    assert_eq!(e.field_str("cancels_event_id"), Some(target.as_str()));
    let bad = spec.map_at(&mappings::Record::Xml("<Record><Time>".into()), common::recorded_at());
    assert_eq!(bad.problems[0].rule, "parse");
}

/// A shipment of three cartons: one packaging link per carton, each with
/// its own units (was: the first carton's only).
#[test]
fn every_carton_of_a_shipment_is_linked_to_its_units() {
    let spec = spec("erp-shipment.toml");
    let doc = serde_json::json!({ "shipments": [{
        "waybillNo": "YD1", "dispatchNote": "XS1",
        "vehicle": { "plate": "苏A·L1234", "coldMode": "REEFER_TRUCK" }, "logger": { "id": "L1" },
        "shipper": { "uscc": "91320000134567890Y", "name": "甲" },
        "consignee": { "uscc": "12320000466000456J", "name": "乙" },
        "departure": { "time": "2025-01-13T08:00:00+08:00", "vaccineTemp": 5.0 },
        "arrival": { "time": "2025-01-13T10:30:00+08:00", "vaccineTemp": 5.0 },
        "cartons": [
            { "code": "86123450011000000001", "units": ["86123450010000000001", "86123450010000000002"] },
            { "code": "86123450011000000002", "units": ["86123450010000000011"] },
            { "code": "86123450011000000003", "units": [] }
        ]
    }]});
    let out = spec.map(&mappings::Record::Json(doc));
    let ev = &out.events[0];
    let links: Vec<(&str, usize)> = ev
        .aggregations
        .iter()
        .map(|a| (a.parent.as_str(), a.children.len()))
        .collect();
    // An empty carton links nothing.
    assert_eq!(links, [("86123450011000000001", 2), ("86123450011000000002", 1)]);
    assert_eq!(ev.aggregations[1].children, ["86123450010000000011"]);
}
