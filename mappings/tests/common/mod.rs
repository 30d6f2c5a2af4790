//! Shared test helpers: paths, the sample cases and the one golden `check`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset};
use mappings::{Dataset, InputFormat, MapOutcome, MappingSpec, records_from_text};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `config/mappings/<name>`.
pub fn config(name: &str) -> PathBuf {
    root().join("config/mappings").join(name)
}

/// Fixed recording time so outputs are deterministic.
pub fn recorded_at() -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339("2024-03-07T00:00:00+08:00").unwrap()
}

/// (spec file, sample input, input format) for every example source.
pub const CASES: &[(&str, &str, &str)] = &[
    ("clinic-ims.toml", "samples/clinic-ims.rows.json", "rows-json"),
    ("cdc-stock.toml", "samples/cdc-stock.rows.json", "rows-json"),
    ("coldchain.toml", "samples/coldchain.rows.json", "rows-json"),
    ("emr.toml", "samples/emr.rows.json", "rows-json"),
    ("hl7-vxu.toml", "samples/hl7-vxu.hl7", "hl7"),
    ("erp-shipment.toml", "samples/erp-shipment.json", "json"),
    ("mah-export.toml", "samples/mah-export.xml", "xml"),
    ("clinic-aefi.toml", "samples/clinic-aefi.rows.json", "rows-json"),
];

/// Loads a spec from config/mappings against the built-in dataset.
pub fn spec(file: &str) -> MappingSpec {
    MappingSpec::load(config(file), &Dataset::builtin()).unwrap_or_else(|e| panic!("{e}"))
}

/// Maps every record of a sample file; returns one outcome per record.
pub fn run(spec: &MappingSpec, input: &str, format: &str) -> Vec<MapOutcome> {
    let text = std::fs::read_to_string(config(input)).unwrap();
    let records = records_from_text(spec, InputFormat::parse(format).unwrap(), &text).unwrap();
    records.iter().map(|r| spec.map_at(r, recorded_at())).collect()
}

/// THE golden helper: compares `actual` with the file `expected`
/// (relative to mappings/tests/golden/); with `UPDATE_GOLDEN=1` in the
/// environment it (re)writes the file instead.
pub fn check(actual: &str, expected: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(expected);
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing golden file {}; run with UPDATE_GOLDEN=1", path.display()));
    if want != actual {
        let line = want
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(actual.lines().count()));
        panic!(
            "golden mismatch in {} at line {}:\n  expected: {:?}\n  actual:   {:?}\n(run with UPDATE_GOLDEN=1 to accept)",
            path.display(),
            line + 1,
            want.lines().nth(line),
            actual.lines().nth(line)
        );
    }
}
