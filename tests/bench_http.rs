//! `vaxgate bench http` end to end, small: the command that BENCHMARKS.md's
//! figures come from must keep running (it starts a node, registers its
//! parties, ingests, traces and compares GETs) and print its final JSON.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn bench_http_runs_end_to_end_and_reports_json() {
    let o = Command::new(env!("CARGO_BIN_EXE_vaxgate"))
        .args(["bench", "http", "--records", "300", "--batch", "100", "--clients", "2"])
        .args(["--trace-samples", "20", "--get-requests", "40", "--get-clients", "2"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{stderr}\n{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    let figures: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(figures["bench"], "http", "{figures}");
    assert_eq!(figures["records"], 300, "{figures}");
    // 300 vaccinations, 3 production and 3 delivery bills, the genesis and
    // the two registrations and the API key.
    assert!(figures["ledger_transactions"].as_u64().unwrap() >= 306, "{figures}");
    assert!(figures["ingest_records_per_s"].as_f64().unwrap() > 0.0, "{figures}");
    // The ingest cut in tenths: the last ends with the last record.
    let tenths = figures["ingest_by_tenth"].as_array().unwrap();
    assert_eq!(tenths.last().unwrap()["through_records"], 300, "{figures}");
    assert!(
        tenths.iter().all(|t| t["records_per_s"].as_f64().unwrap() > 0.0),
        "{figures}"
    );
    assert!(figures["trace_p99_ms"].as_f64().unwrap() > 0.0, "{figures}");
    assert_eq!(figures["auth_body_bytes"], figures["public_body_bytes"], "{figures}");
}
