//! `commitment::commit` on a realistic vaccination event (the first
//! clinic-ims golden message: 7 top-level members, 18 business elements,
//! 6 personal elements), against the straightforward implementation it
//! replaced (`reference` below, a verbatim copy of the old code, checked to
//! give the same commitment before anything is measured), and against
//! `sm3_floor`: SM3 alone over every message a commitment hashes (the
//! part no implementation of the format can save).
//!
//! Two groups: `commit` (criterion's wall clock, per commit) and
//! `commit_cpu` (the bench thread's own CPU time, from
//! `/proc/thread-self/schedstat` on Linux, shown per commit; an iteration
//! is 1,000 commits), because the build machine is shared.
//!
//! `cargo bench -p mappings --bench commitment`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::measurement::Measurement;
use criterion::{Criterion, criterion_group, criterion_main};
use mappings::TraceEvent;
use mappings::commitment::{self, Commitment};
use serde_json::Value;
use sm3::{Digest, Sm3};

#[path = "support/thread_cpu.rs"]
#[allow(dead_code)] // each bench uses part of it
mod thread_cpu;
use thread_cpu::ThreadCpu;

const GOLDEN: &str = include_str!("../tests/golden/vaccination/clinic-ims.json");

fn event() -> TraceEvent {
    let Value::Array(msgs) = serde_json::from_str(GOLDEN).unwrap() else {
        panic!("golden messages")
    };
    serde_json::from_value(msgs[0]["payload"].clone()).unwrap()
}

/// The commitment computed the straightforward way (a `Value` round trip, a
/// `String` per path, a `Vec` per digest), from the crate's public pieces:
/// kept to measure against.
mod reference {
    use std::collections::BTreeMap;

    use mappings::TraceEvent;
    use mappings::canonical::write_canonical;
    use mappings::commitment::{
        Commitment, PERSONAL_PREFIX, SALT_LEN, Seeds, digest, members, public_doc, root, salt_stream,
    };
    use serde_json::Value;
    use sm3::{Digest, Sm3};

    fn seeds_of(seed: &[u8; 32]) -> Seeds {
        Seeds::of(seed)
    }

    fn salted<'a>(s: &[u8; 32], mut members: Vec<(String, &'a Value)>) -> Vec<(String, &'a Value, [u8; SALT_LEN])> {
        members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let salts = salt_stream(s, members.len());
        members.into_iter().zip(salts).map(|((p, v), s)| (p, v, s)).collect()
    }

    fn personal_members(pii: &BTreeMap<String, Value>) -> Vec<(String, &Value)> {
        pii.iter().map(|(k, v)| (format!("{PERSONAL_PREFIX}{k}"), v)).collect()
    }

    /// Every message the commitment hands to SM3, whole (seed derivations,
    /// salt blocks, members, root input, the root's last): the compressions
    /// no implementation of this format over this SM3 can skip.
    pub fn sm3_messages(event: &TraceEvent, seed: &[u8; 32]) -> Vec<Vec<u8>> {
        let field = |m: &mut Vec<u8>, x: &[u8]| {
            m.extend_from_slice(&(x.len() as u32).to_be_bytes());
            m.extend_from_slice(x);
        };
        let mut msgs = Vec::new();
        for tag in ["vaxgate/field-seed-public-v1", "vaxgate/field-seed-personal-v1"] {
            let mut m = Vec::new();
            field(&mut m, tag.as_bytes());
            field(&mut m, seed);
            msgs.push(m);
        }
        let seeds = seeds_of(seed);
        let Value::Object(doc) = public_doc(event) else {
            panic!("an object")
        };
        let public: Vec<(String, &Value)> = members(&doc).collect();
        let pii: BTreeMap<String, Value> = event
            .pii
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        let personal = personal_members(&pii);
        for (s, n) in [(&seeds.public, public.len()), (&seeds.personal, personal.len())] {
            for j in 0..n.div_ceil(2) as u32 {
                msgs.push([&s[..], &j.to_be_bytes()].concat());
            }
        }
        let mut digests = Vec::new();
        for (s, list) in [(&seeds.public, public), (&seeds.personal, personal)] {
            for (path, v, salt) in salted(s, list) {
                let mut m = salt.to_vec();
                m.extend_from_slice(&(path.len() as u16).to_be_bytes());
                m.extend_from_slice(path.as_bytes());
                write_canonical(v, &mut m);
                digests.push(<[u8; 32]>::from(Sm3::digest(&m)));
                msgs.push(m);
            }
        }
        digests.sort_unstable();
        let mut m = Vec::new();
        field(&mut m, b"vaxgate/fields-v1");
        field(&mut m, &(digests.len() as u32).to_be_bytes());
        for d in &digests {
            field(&mut m, d);
        }
        msgs.push(m);
        msgs
    }

    pub fn commit(event: &TraceEvent, seed: &[u8; 32]) -> Commitment {
        let doc = public_doc(event);
        let seeds = seeds_of(seed);
        let mut all: Vec<[u8; 32]> = Vec::new();
        if let Value::Object(m) = &doc {
            for (path, v, s) in salted(&seeds.public, members(m).collect()) {
                all.push(digest(&s, &path, v));
            }
        }
        let pii: BTreeMap<String, Value> = event
            .pii
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        let mut personal: Vec<[u8; 32]> = salted(&seeds.personal, personal_members(&pii))
            .into_iter()
            .map(|(path, v, s)| digest(&s, &path, v))
            .collect();
        personal.sort_unstable();
        all.extend(&personal);
        Commitment {
            root: root(all),
            seeds,
            personal,
        }
    }
}

fn bench<M: Measurement>(c: &mut Criterion<M>, group: &str, batch: usize) {
    let e = event();
    let seed = [7u8; 32];
    assert_eq!(e.fields.len(), 18);
    assert_eq!(e.pii.len(), 6);
    let want: Commitment = reference::commit(&e, &seed);
    assert_eq!(commitment::commit(&e, &seed), want, "the commitment changed");
    let msgs = reference::sm3_messages(&e, &seed);
    assert_eq!(<[u8; 32]>::from(Sm3::digest(msgs.last().unwrap())), want.root);
    let blocks: usize = msgs.iter().map(|m| (m.len() + 9).div_ceil(64)).sum();
    eprintln!(
        "{group}: one commit hashes {} messages, {blocks} SM3 blocks",
        msgs.len()
    );
    let mut g = c.benchmark_group(group);
    if batch > 1 {
        g.sample_size(20);
    }
    g.bench_function("reference", |b| {
        b.iter(|| {
            for _ in 0..batch {
                black_box(reference::commit(black_box(&e), black_box(&seed)));
            }
        })
    });
    g.bench_function("commit", |b| {
        b.iter(|| {
            for _ in 0..batch {
                black_box(commitment::commit(black_box(&e), black_box(&seed)));
            }
        })
    });
    g.bench_function("sm3_floor", |b| {
        b.iter(|| {
            for _ in 0..batch {
                for m in &msgs {
                    black_box(Sm3::digest(black_box(m)));
                }
            }
        })
    });
    g.finish();
}

fn wall(c: &mut Criterion) {
    bench(c, "commit", 1);
}

/// Commits per iteration of the CPU group: the thread's CPU time advances
/// only at scheduler ticks, so one iteration must span several.
const CPU_BATCH: usize = 1000;

fn cpu(c: &mut Criterion<ThreadCpu>) {
    bench(c, "commit_cpu", CPU_BATCH);
}

criterion_group!(wall_clock, wall);
criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(ThreadCpu::per(CPU_BATCH as u64, "µs cpu/commit"));
    targets = cpu
}
criterion_main!(wall_clock, cpu_time);
