//! Proof verification cost at 10^6 leaves (criterion).
//! `cargo bench -p ledger --bench proofs`

use criterion::{Criterion, criterion_group, criterion_main};
use ledger::merkle::{self, Frontier, NodeKey};
use secure_gateway::Sm3Digest;
use std::collections::HashMap;

fn tree(n: u64) -> (HashMap<NodeKey, Sm3Digest>, Sm3Digest) {
    let mut nodes = HashMap::new();
    let mut f = Frontier::default();
    for i in 0..n {
        f.push(merkle::leaf_hash(&i.to_be_bytes()), |level, index, h| {
            nodes.insert(NodeKey { level, index }, h);
        });
    }
    (nodes, f.root())
}

fn resolve(plan: &[Vec<NodeKey>], nodes: &HashMap<NodeKey, Sm3Digest>) -> Vec<Sm3Digest> {
    plan.iter()
        .map(|ks| merkle::fold_range(&ks.iter().map(|k| nodes[k]).collect::<Vec<_>>()).expect("non-empty"))
        .collect()
}

fn bench(c: &mut Criterion) {
    let n = 1_000_000u64;
    let (nodes, root) = tree(n);
    let m = 765_432u64;
    let leaf = merkle::leaf_hash(&m.to_be_bytes());
    let path = resolve(&merkle::inclusion_plan(m, n), &nodes);
    assert!(merkle::verify_inclusion(m, n, &leaf, &path, &root));
    c.bench_function("verify_inclusion at 10^6 leaves", |b| {
        b.iter(|| merkle::verify_inclusion(m, n, &leaf, &path, &root))
    });
    c.bench_function("plan+assemble inclusion proof at 10^6 leaves (in memory)", |b| {
        b.iter(|| resolve(&merkle::inclusion_plan(m, n), &nodes))
    });
    let old = {
        let mut f = Frontier::default();
        for i in 0..600_000u64 {
            f.push(merkle::leaf_hash(&i.to_be_bytes()), |_, _, _| {});
        }
        f.root()
    };
    let cons = resolve(&merkle::consistency_plan(600_000, n), &nodes);
    c.bench_function("verify_consistency 6·10^5 → 10^6", |b| {
        b.iter(|| merkle::verify_consistency(600_000, n, &old, &root, &cons))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
