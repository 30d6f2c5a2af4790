//! Small in-memory Merkle trees shaped as RFC 9162 §2.1 with SM3:
//! `leaf = SM3(0x00 ‖ data)`, `node = SM3(0x01 ‖ left ‖ right)`, the empty
//! tree's root is `SM3("")`. Used by batch signing ([`crate::batch`]); the
//! ledger's log-level tree uses the same hashing.
//!
//! Proofs are the RFC 9162 audit paths (§2.1.3): for a tree of `n` leaves at
//! most `ceil(log2 n)` hashes.

use crate::{CryptoError, Sm3Digest, Sm3Hasher};

/// Hash of a leaf: `SM3(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Sm3Digest {
    let mut h = Sm3Hasher::new();
    h.update(&[0x00]).update(data);
    h.finalize()
}

/// Hash of an interior node: `SM3(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Sm3Digest, right: &Sm3Digest) -> Sm3Digest {
    let mut h = Sm3Hasher::new();
    h.update(&[0x01]).update(&left.0).update(&right.0);
    h.finalize()
}

/// The root of the empty tree: `SM3("")`.
pub fn empty_root() -> Sm3Digest {
    crate::sm3(b"")
}

/// The largest power of two strictly smaller than `n` (`n ≥ 2`).
fn split_point(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// RFC 9162 Merkle Tree Hash over *leaf hashes* (see [`leaf_hash`]).
pub fn root(leaves: &[Sm3Digest]) -> Sm3Digest {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split_point(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The audit path proving that leaf `index` is in the tree over `leaves`
/// (RFC 9162 §2.1.3.1), leaf-side first.
pub fn inclusion_proof(leaves: &[Sm3Digest], index: usize) -> Result<Vec<Sm3Digest>, CryptoError> {
    if index >= leaves.len() {
        return Err(CryptoError::Malformed {
            what: "merkle index",
            detail: format!("leaf {index} outside a tree of {} leaves", leaves.len()),
        });
    }
    let mut path = Vec::new();
    collect_path(leaves, index, &mut path);
    Ok(path)
}

fn collect_path(leaves: &[Sm3Digest], m: usize, out: &mut Vec<Sm3Digest>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split_point(n);
    if m < k {
        collect_path(&leaves[..k], m, out);
        out.push(root(&leaves[k..]));
    } else {
        collect_path(&leaves[k..], m - k, out);
        out.push(root(&leaves[..k]));
    }
}

/// Every leaf's inclusion proof at once.
pub fn all_inclusion_proofs(leaves: &[Sm3Digest]) -> Vec<Vec<Sm3Digest>> {
    let tree = LevelTree::new(leaves.to_vec());
    (0..leaves.len()).filter_map(|i| tree.path(i)).collect()
}

/// A whole tree kept level by level, for many proofs of one tree: an RFC
/// 9162 tree is the tree built from the leaves by pairing neighbours and
/// promoting an odd last node unchanged, so each audit path is the siblings
/// along the way up. Building it costs one node hash per leaf; each path
/// then costs none.
#[derive(Debug, Clone)]
pub struct LevelTree {
    /// Level 0 is the leaves; the last level holds the root alone (none for
    /// an empty tree).
    levels: Vec<Vec<Sm3Digest>>,
}

impl LevelTree {
    /// The tree over `leaves` (leaf hashes, see [`leaf_hash`]).
    pub fn new(leaves: Vec<Sm3Digest>) -> Self {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let prev = levels.last().map(Vec::as_slice).unwrap_or_default();
            let next = prev
                .chunks(2)
                .map(|p| if p.len() == 2 { node_hash(&p[0], &p[1]) } else { p[0] })
                .collect();
            levels.push(next);
        }
        LevelTree { levels }
    }

    /// The number of leaves.
    pub fn len(&self) -> usize {
        self.levels[0].len()
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.levels[0].is_empty()
    }

    /// The tree's root ([`root`] of its leaves).
    pub fn root(&self) -> Sm3Digest {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or_else(empty_root)
    }

    /// Every node, level by level from the leaves to the root, each level
    /// in order: what [`LevelTree::from_nodes`] reads back.
    pub fn to_nodes(&self) -> Vec<u8> {
        self.levels.iter().flatten().flat_map(|d| d.0).collect()
    }

    /// A tree of `size` leaves from its [`LevelTree::to_nodes`], without
    /// hashing: None unless the bytes have exactly the length of such a tree
    /// and every node promoted unchanged (the odd last of its level) equals
    /// its copy one level up. Whether the nodes hash to a trusted root is
    /// not checked here: every other node is on the audit path of some leaf,
    /// so a changed one fails that leaf's proof against the root (and the
    /// caller compares [`LevelTree::root`] with the trusted root).
    pub fn from_nodes(size: usize, nodes: &[u8]) -> Option<Self> {
        let mut widths = vec![size];
        while widths.last().is_some_and(|&w| w > 1) {
            let w = widths.last().copied().unwrap_or_default();
            widths.push(w.div_ceil(2));
        }
        if nodes.len() != widths.iter().sum::<usize>().checked_mul(32)? {
            return None;
        }
        let mut rest = nodes;
        let mut levels = Vec::with_capacity(widths.len());
        for w in widths {
            let (level, more) = rest.split_at(w * 32);
            rest = more;
            levels.push(
                level
                    .chunks_exact(32)
                    .map(Sm3Digest::from_slice)
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?,
            );
        }
        let promoted_intact = levels.windows(2).all(|pair| {
            let (low, high) = (&pair[0], &pair[1]);
            low.len() % 2 == 0 || low.last() == high.last()
        });
        promoted_intact.then_some(LevelTree { levels })
    }

    /// The audit path of leaf `index` ([`inclusion_proof`]), or None when
    /// the tree has no such leaf.
    pub fn path(&self, index: usize) -> Option<Vec<Sm3Digest>> {
        if index >= self.len() {
            return None;
        }
        let mut i = index;
        let mut path = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sib) = level.get(i ^ 1) {
                path.push(*sib);
            }
            i >>= 1;
        }
        Some(path)
    }
}

/// Verifies an audit path (RFC 9162 §2.1.3.2): true when `leaf` (a leaf
/// hash) at `leaf_index` of a tree of `tree_size` leaves hashes up to `root`.
pub fn verify_inclusion(
    leaf_index: u64,
    tree_size: u64,
    leaf: &Sm3Digest,
    path: &[Sm3Digest],
    root: &Sm3Digest,
) -> bool {
    if leaf_index >= tree_size {
        return false;
    }
    let (mut f_n, mut s_n) = (leaf_index, tree_size - 1);
    let mut r = *leaf;
    for p in path {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && &r == root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Sm3Digest> {
        (0..n).map(|i| leaf_hash(&(i as u64).to_be_bytes())).collect()
    }

    #[test]
    fn all_proofs_match_one_by_one() {
        for n in 1..40 {
            let ls = leaves(n);
            let all = all_inclusion_proofs(&ls);
            for (i, p) in all.iter().enumerate() {
                assert_eq!(p, &inclusion_proof(&ls, i).unwrap(), "n={n} i={i}");
            }
            let tree = LevelTree::new(ls.clone());
            assert_eq!(tree.root(), root(&ls), "n={n}");
            assert_eq!(tree.len(), n);
            assert!(tree.path(n).is_none());
            // Stored and read back without hashing: the same paths; a
            // changed byte of a promoted node, or a wrong length, is refused.
            let nodes = tree.to_nodes();
            let back = LevelTree::from_nodes(n, &nodes).unwrap();
            assert_eq!(back.root(), tree.root());
            for (i, p) in all.iter().enumerate() {
                assert_eq!(back.path(i).as_ref(), Some(p), "n={n} i={i}");
            }
            assert!(LevelTree::from_nodes(n + 1, &nodes).is_none());
            assert!(LevelTree::from_nodes(n, &nodes[1..]).is_none());
            if n % 2 == 1 && n > 1 {
                let mut bad = nodes.clone();
                bad[(n - 1) * 32] ^= 1;
                assert!(LevelTree::from_nodes(n, &bad).is_none(), "n={n}");
            }
        }
        assert_eq!(LevelTree::new(Vec::new()).root(), empty_root());
    }

    #[test]
    fn shapes() {
        assert_eq!(root(&[]), crate::sm3(b""));
        let l = leaves(3);
        assert_eq!(root(&l), node_hash(&node_hash(&l[0], &l[1]), &l[2]));
        let l = leaves(4);
        assert_eq!(root(&l), node_hash(&node_hash(&l[0], &l[1]), &node_hash(&l[2], &l[3])));
    }

    #[test]
    fn every_proof_verifies_and_tampering_fails() {
        for n in 1..=33 {
            let l = leaves(n);
            let r = root(&l);
            for i in 0..n {
                let p = inclusion_proof(&l, i).unwrap();
                assert!(p.len() <= 6);
                assert!(verify_inclusion(i as u64, n as u64, &l[i], &p, &r), "n={n} i={i}");
                let other = (i + 1) % n;
                if other != i {
                    assert!(!verify_inclusion(other as u64, n as u64, &l[i], &p, &r));
                }
                if let Some(first) = p.first() {
                    let mut bad = p.clone();
                    bad[0] = leaf_hash(&first.0);
                    assert!(!verify_inclusion(i as u64, n as u64, &l[i], &bad, &r));
                }
            }
            assert!(inclusion_proof(&l, n).is_err());
        }
    }
}
