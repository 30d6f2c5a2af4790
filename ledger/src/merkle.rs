//! Merkle trees shaped as RFC 9162 §2.1 (Certificate Transparency v2), with
//! SM3 as the hash: `leaf = SM3(0x00 ‖ data)`, `node = SM3(0x01 ‖ left ‖ right)`.
//!
//! The log-level tree is stored as *perfect subtrees*: node `(level, index)`
//! is the root of leaves `[index·2^level, (index+1)·2^level)`. Every such node
//! is immutable once its last leaf is appended, so proofs for a tree of any
//! size are assembled from O(log n) stored nodes. The functions here are pure:
//! they say which nodes a proof needs ([`range_nodes`], [`inclusion_plan`],
//! [`consistency_plan`]) and assemble proofs from their hashes; storage
//! fetches the nodes in one query.

use secure_gateway::Sm3Digest;

pub use secure_gateway::merkle::{empty_root, leaf_hash, node_hash, verify_inclusion};

/// Merkle Tree Hash of a list of *leaf hashes* (RFC 9162 MTH), iteratively.
pub fn root_of(leaves: &[Sm3Digest]) -> Sm3Digest {
    if leaves.is_empty() {
        return empty_root();
    }
    let mut stack = Frontier::default();
    for l in leaves {
        stack.push(*l, |_, _, _| {});
    }
    stack.root()
}

/// A stored perfect-subtree node: `(level, index)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    /// Height above the leaves (0 = a leaf hash).
    pub level: u8,
    /// Position among the nodes of that level.
    pub index: u64,
}

impl NodeKey {
    /// Packs the key into one integer (`level << 56 | index`) for storage.
    pub fn packed(self) -> i64 {
        ((u64::from(self.level) << 56) | self.index) as i64
    }
}

/// The perfect subtrees whose fold gives MTH of leaves `[a, b)` when `a` is
/// aligned the way RFC 9162's recursion aligns it (always true for the ranges
/// used by proofs). Largest first; fold from the right with [`fold_range`].
pub fn range_nodes(a: u64, b: u64) -> Vec<NodeKey> {
    let mut out = Vec::new();
    let mut start = a;
    let mut n = b - a;
    while n > 0 {
        // RFC 9162 split: k = largest power of two < n, unless n is itself a
        // power of two (then the whole range is one perfect subtree).
        let size = if n.is_power_of_two() {
            n
        } else {
            1u64 << (63 - n.leading_zeros())
        };
        let level = size.trailing_zeros() as u8;
        out.push(NodeKey {
            level,
            index: start >> level,
        });
        start += size;
        n -= size;
    }
    out
}

/// Folds the hashes of [`range_nodes`] (same order) into the range's MTH.
pub fn fold_range(hashes: &[Sm3Digest]) -> Option<Sm3Digest> {
    let mut it = hashes.iter().rev();
    let mut acc = *it.next()?;
    for h in it {
        acc = node_hash(h, &acc);
    }
    Some(acc)
}

/// For an inclusion proof of leaf `m` in a tree of `n` leaves: the proof
/// elements from the leaf upwards, each given as the perfect nodes of a range.
pub fn inclusion_plan(m: u64, n: u64) -> Vec<Vec<NodeKey>> {
    assert!(m < n, "leaf index out of range");
    let mut out = Vec::new();
    path_rec(m, 0, n, &mut out);
    out
}

// PATH(m, D[lo:hi]) from RFC 9162 §2.1.3.1, elements ordered leaf → root.
fn path_rec(m: u64, lo: u64, hi: u64, out: &mut Vec<Vec<NodeKey>>) {
    let n = hi - lo;
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path_rec(m, lo, lo + k, out);
        out.push(range_nodes(lo + k, hi));
    } else {
        path_rec(m - k, lo + k, hi, out);
        out.push(range_nodes(lo, lo + k));
    }
}

/// For a consistency proof from size `m` to size `n` (0 < m ≤ n): the proof
/// elements (RFC 9162 §2.1.4.1 SUBPROOF), each as the perfect nodes of a range.
pub fn consistency_plan(m: u64, n: u64) -> Vec<Vec<NodeKey>> {
    assert!(m > 0 && m <= n, "consistency sizes out of range");
    let mut out = Vec::new();
    if m < n {
        subproof(m, 0, n, true, &mut out);
    }
    out
}

fn subproof(m: u64, lo: u64, hi: u64, b: bool, out: &mut Vec<Vec<NodeKey>>) {
    let n = hi - lo;
    if m == n {
        if !b {
            out.push(range_nodes(lo, hi));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, lo, lo + k, b, out);
        out.push(range_nodes(lo + k, hi));
    } else {
        subproof(m - k, lo + k, hi, false, out);
        out.push(range_nodes(lo, lo + k));
    }
}

/// Largest power of two strictly smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Verifies a consistency proof between two tree heads (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Sm3Digest,
    second_root: &Sm3Digest,
    proof: &[Sm3Digest],
) -> bool {
    if first == 0 || first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    let mut path: Vec<Sm3Digest> = proof.to_vec();
    if first.is_power_of_two() {
        path.insert(0, *first_root);
    }
    let (mut f_n, mut s_n) = (first - 1, second - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let Some((c0, rest)) = path.split_first() else {
        return false;
    };
    let (mut fr, mut sr) = (*c0, *c0);
    for c in rest {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    fr == *first_root && sr == *second_root && s_n == 0
}

/// The right edge of a growing tree: the roots of its perfect subtrees, at
/// most ⌈log₂ n⌉ + 1 hashes. Appending a leaf completes zero or more perfect
/// nodes, reported to a callback so storage can keep them.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    /// (level, hash), levels strictly decreasing from bottom to top.
    stack: Vec<(u8, Sm3Digest)>,
}

impl Frontier {
    /// Rebuilds the frontier of a tree of `size` leaves from the hashes of
    /// `range_nodes(0, size)`.
    pub fn from_nodes(size: u64, hashes: &[Sm3Digest]) -> Self {
        let keys = range_nodes(0, size);
        let stack = keys.iter().zip(hashes).map(|(k, h)| (k.level, *h)).collect();
        Frontier { size, stack }
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; `on_node(level, index, hash)` sees the leaf
    /// itself (level 0) and every perfect node it completes.
    pub fn push(&mut self, leaf: Sm3Digest, mut on_node: impl FnMut(u8, u64, Sm3Digest)) {
        let idx = self.size;
        on_node(0, idx, leaf);
        let mut cur = (0u8, leaf);
        while let Some(&(lvl, h)) = self.stack.last() {
            if lvl != cur.0 {
                break;
            }
            self.stack.pop();
            let merged = node_hash(&h, &cur.1);
            let level = cur.0 + 1;
            on_node(level, idx >> level, merged);
            cur = (level, merged);
        }
        self.stack.push(cur);
        self.size += 1;
    }

    /// The current root (MTH of all leaves).
    pub fn root(&self) -> Sm3Digest {
        let hashes: Vec<Sm3Digest> = self.stack.iter().map(|(_, h)| *h).collect();
        fold_range(&hashes).unwrap_or_else(empty_root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    // Reference MTH straight from the RFC's recursive definition.
    fn mth(d: &[Sm3Digest]) -> Sm3Digest {
        match d.len() {
            0 => empty_root(),
            1 => d[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&d[..k]), &mth(&d[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<Sm3Digest> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn store(ls: &[Sm3Digest]) -> HashMap<NodeKey, Sm3Digest> {
        let mut m = HashMap::new();
        let mut f = Frontier::default();
        for l in ls {
            f.push(*l, |level, index, h| {
                m.insert(NodeKey { level, index }, h);
            });
        }
        m
    }

    fn resolve(plan: &[Vec<NodeKey>], s: &HashMap<NodeKey, Sm3Digest>) -> Vec<Sm3Digest> {
        plan.iter()
            .map(|ks| fold_range(&ks.iter().map(|k| s[k]).collect::<Vec<_>>()).unwrap())
            .collect()
    }

    #[test]
    fn frontier_root_matches_reference() {
        for n in 0..70u64 {
            let ls = leaves(n);
            assert_eq!(root_of(&ls), mth(&ls), "n={n}");
        }
    }

    #[test]
    fn all_inclusion_and_consistency_proofs_verify_up_to_40() {
        let all = leaves(40);
        let s = store(&all);
        for n in 1..=40u64 {
            let root = mth(&all[..n as usize]);
            for m in 0..n {
                let path = resolve(&inclusion_plan(m, n), &s);
                assert!(verify_inclusion(m, n, &all[m as usize], &path, &root), "m={m} n={n}");
                // a wrong leaf or index fails
                assert!(!verify_inclusion(m, n, &leaf_hash(b"x"), &path, &root));
                if n > 1 {
                    assert!(
                        !verify_inclusion((m + 1) % n, n, &all[m as usize], &path, &root)
                            || all[m as usize] == all[((m + 1) % n) as usize]
                    );
                }
            }
            for m in 1..=n {
                let old = mth(&all[..m as usize]);
                let proof = resolve(&consistency_plan(m, n), &s);
                assert!(verify_consistency(m, n, &old, &root, &proof), "m={m} n={n}");
                if m < n {
                    assert!(!verify_consistency(m, n, &leaf_hash(b"y"), &root, &proof));
                }
            }
        }
    }

    #[test]
    fn rfc9162_path_lengths() {
        // A proof in a tree of 10^6 leaves has at most 20 hashes.
        assert!(inclusion_plan(123_456, 1_000_000).len() <= 20);
        assert_eq!(range_nodes(0, 8), vec![NodeKey { level: 3, index: 0 }]);
        assert_eq!(range_nodes(0, 7).len(), 3);
    }
}
