//! Mapping + validation + canonical JSON for clinic vaccination rows
//! (target: ≥ 200,000 records/s per core).
//!
//! Two groups: `vaccination_rows` (criterion's wall clock) and
//! `vaccination_rows_cpu` (the bench thread's own CPU time, read from
//! `/proc/thread-self/schedstat` on Linux), because the build machine is
//! shared and wall-clock figures there understate a core's throughput.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use chrono::DateTime;
use criterion::measurement::Measurement;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mappings::{Dataset, MappingSpec, Record, canonical};
use serde_json::Value;

#[path = "support/thread_cpu.rs"]
#[allow(dead_code)] // each bench uses part of it
mod thread_cpu;
use thread_cpu::ThreadCpu;

const SPEC: &str = include_str!("../../config/mappings/clinic-ims.toml");
const ROWS: &str = include_str!("../../config/mappings/samples/clinic-ims.rows.json");

fn rows(n: usize) -> Vec<Record> {
    let Value::Array(base) = serde_json::from_str(ROWS).unwrap() else {
        panic!("rows")
    };
    (0..n)
        .map(|i| {
            let mut r = base[i % base.len()].as_object().unwrap().clone();
            r.insert("JZJL_ID".into(), Value::String(format!("JZ{i:012}")));
            r.insert("DZJGM".into(), Value::String(format!("8612345{i:013}")));
            Record::Row(r)
        })
        .collect()
}

fn bench<M: Measurement>(c: &mut Criterion<M>, group: &str) {
    let dataset = Dataset::builtin();
    let spec = MappingSpec::from_toml_str(SPEC, "clinic-ims.toml", &dataset).unwrap();
    let records = rows(1000);
    let at = DateTime::parse_from_rfc3339("2024-03-07T00:00:00+08:00").unwrap();
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(records.len() as u64));
    g.bench_function("map_validate", |b| {
        b.iter(|| {
            for r in &records {
                let out = spec.map_at(r, at);
                black_box(out.is_ok());
            }
        })
    });
    g.bench_function("map_validate_canonical_json", |b| {
        let mut buf = Vec::with_capacity(4096);
        b.iter(|| {
            for r in &records {
                let out = spec.map_at(r, at);
                assert!(out.is_ok());
                for e in &out.events {
                    buf.clear();
                    canonical::write_event_canonical(e, &mut buf);
                    black_box(&buf);
                }
            }
        })
    });
    g.bench_function("map_validate_canonical_json_sm3", |b| {
        b.iter(|| {
            for r in &records {
                let out = spec.map_at(r, at);
                for e in &out.events {
                    black_box(canonical::event_sm3(e));
                }
            }
        })
    });
    g.finish();
}

fn wall(c: &mut Criterion) {
    bench(c, "vaccination_rows");
}

fn cpu(c: &mut Criterion<ThreadCpu>) {
    bench(c, "vaccination_rows_cpu");
}

criterion_group!(wall_clock, wall);
criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(ThreadCpu::default());
    targets = cpu
}
criterion_main!(wall_clock, cpu_time);
