//! The RFC 6962 Merkle tree over the audit log: leaf and node hashes, the
//! tree head of the first `n` leaves, inclusion and consistency proofs, and
//! their verification (RFC 6962 section 2.1; RFC 9162 section 2.1.3 for the
//! verification algorithms).

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub(crate) type Hash = [u8; 32];

/// `SHA-256(0x00 || entry)`.
pub(crate) fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub(crate) fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The hash of the empty tree: `SHA-256()`.
pub(crate) fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two smaller than `n` (n > 1).
fn split(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[0:n]) over leaf hashes.
pub(crate) fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// PATH(m, D[0:n]): the inclusion proof of leaf `m` in the first `n` leaves.
pub(crate) fn inclusion_proof(m: u64, leaves: &[Hash]) -> Vec<Hash> {
    Partial {
        start: &Frontier::default(),
        leaves,
    }
    .inclusion_proof(m, leaves.len() as u64)
    .expect("every subtree of a whole tree is known")
}

/// The compact state of a tree: the roots of the perfect subtrees that
/// make up its first `size` leaves, largest (leftmost) first, one per bit
/// set in `size`. Enough to go on appending and to compute every later
/// root, so a log segment verifies from the frontier its predecessor's
/// seal signed, without the leaves before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

impl Frontier {
    /// A frontier as stored: `None` unless there is one hash per bit set
    /// in `size`.
    pub(crate) fn from_parts(size: u64, hashes: Vec<Hash>) -> Option<Self> {
        (hashes.len() == size.count_ones() as usize).then_some(Self { size, hashes })
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Appends one leaf: merges the equal-sized subtrees it completes.
    pub(crate) fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut size = self.size;
        while size & 1 == 1 {
            let left = self.hashes.pop().expect("one hash per bit set");
            hash = node_hash(&left, &hash);
            size >>= 1;
        }
        self.hashes.push(hash);
        self.size += 1;
    }

    /// MTH of the first `size` leaves: the subtrees folded right to left
    /// (RFC 6962 splits at the largest power of two, which is the
    /// leftmost subtree).
    pub(crate) fn root(&self) -> Hash {
        let mut hashes = self.hashes.iter().rev();
        let Some(last) = hashes.next() else {
            return empty_root();
        };
        hashes.fold(*last, |right, left| node_hash(left, &right))
    }

    /// The subtree covering leaves `lo..hi`, when it is one of the
    /// frontier's.
    fn subtree(&self, lo: u64, hi: u64) -> Option<Hash> {
        let mut offset = 0;
        for (bit, hash) in (0..64)
            .rev()
            .filter(|bit| self.size >> bit & 1 == 1)
            .zip(&self.hashes)
        {
            let end = offset + (1u64 << bit);
            if (offset, end) == (lo, hi) {
                return Some(*hash);
            }
            offset = end;
        }
        None
    }
}

/// A tree known from a frontier at `start.size()` on, then by its leaves:
/// a log segment with the seal before it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Partial<'a> {
    pub start: &'a Frontier,
    /// Leaves from `start.size()` on.
    pub leaves: &'a [Hash],
}

impl Partial<'_> {
    /// MTH(D[lo:hi]) for a subtree RFC 6962 splits into: a frontier
    /// subtree, or one of known leaves; `None` for any other range.
    fn hash(&self, lo: u64, hi: u64) -> Option<Hash> {
        let start = self.start.size;
        if hi <= start {
            return self.start.subtree(lo, hi);
        }
        if hi - lo == 1 {
            return self
                .leaves
                .get(usize::try_from(lo.checked_sub(start)?).ok()?)
                .copied();
        }
        let k = split(hi - lo);
        Some(node_hash(&self.hash(lo, lo + k)?, &self.hash(lo + k, hi)?))
    }

    /// PATH(m, D[0:n]), for a leaf `m` after the frontier; `None` when
    /// `m` or `n` is outside what is known.
    pub(crate) fn inclusion_proof(&self, m: u64, n: u64) -> Option<Vec<Hash>> {
        let known = self.start.size + self.leaves.len() as u64;
        if m < self.start.size || m >= n || n > known {
            return None;
        }
        let (mut lo, mut hi) = (0, n);
        let mut path = Vec::new();
        while hi - lo > 1 {
            let k = split(hi - lo);
            if m < lo + k {
                path.push(self.hash(lo + k, hi)?);
                hi = lo + k;
            } else {
                path.push(self.hash(lo, lo + k)?);
                lo += k;
            }
        }
        path.reverse();
        Some(path)
    }
}

/// PROOF(m, D[0:n]): the consistency proof between the trees of `m` and
/// `n = leaves.len()` leaves (0 < m <= n).
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "RFC 6962 consistency proofs, kept tested for a log monitor; `log verify` recomputes roots"
    )
)]
pub(crate) fn consistency_proof(m: u64, leaves: &[Hash]) -> Vec<Hash> {
    fn subproof(m: u64, leaves: &[Hash], complete: bool) -> Vec<Hash> {
        let n = leaves.len() as u64;
        if m == n {
            return if complete {
                Vec::new()
            } else {
                vec![root(leaves)]
            };
        }
        let k = split(n);
        let ku = k as usize;
        if m <= k {
            let mut proof = subproof(m, &leaves[..ku], complete);
            proof.push(root(&leaves[ku..]));
            proof
        } else {
            let mut proof = subproof(m - k, &leaves[ku..], false);
            proof.push(root(&leaves[..ku]));
            proof
        }
    }
    let n = leaves.len() as u64;
    assert!(m > 0 && m <= n, "no consistency proof from {m} to {n}");
    subproof(m, leaves, true)
}

/// Checks that `leaf` is entry `index` of the tree of `size` with `root`.
pub(crate) fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && &r == root
}

/// Checks that the tree of `size2` with `root2` extends the tree of `size1`
/// with `root1`.
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "RFC 6962 consistency proofs, kept tested for a log monitor; `log verify` recomputes roots"
    )
)]
pub(crate) fn verify_consistency(
    size1: u64,
    size2: u64,
    proof: &[Hash],
    root1: &Hash,
    root2: &Hash,
) -> bool {
    if size1 > size2 {
        return false;
    }
    if size1 == size2 {
        return proof.is_empty() && root1 == root2;
    }
    if size1 == 0 {
        return proof.is_empty();
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if size1.is_power_of_two() {
        path.insert(0, *root1);
    }
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f_n, mut s_n) = (size1 - 1, size2 - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut f_r, mut s_r) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    &f_r == root1 && &s_r == root2 && s_n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(text: &str) -> Vec<u8> {
        deepseek_integrity::digest::unhex(text).expect("hex")
    }

    /// The Certificate Transparency test inputs (RFC 6962 reference tests).
    fn ct_leaves() -> Vec<Hash> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|h| leaf_hash(&unhex(h)))
        .collect()
    }

    #[test]
    fn the_root_of_the_ct_test_inputs() {
        let root = root(&ct_leaves());
        assert_eq!(
            root.to_vec(),
            unhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")
        );
        assert_eq!(super::root(&ct_leaves()[..1])[..], leaf_hash(&[])[..]);
        assert_eq!(super::root(&[]), Sha256::digest([]).as_slice());
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("entry {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn every_inclusion_proof_verifies_and_a_wrong_one_does_not() {
        for n in 1..=33 {
            let leaves = leaves(n);
            let root = root(&leaves);
            for m in 0..n as u64 {
                let proof = inclusion_proof(m, &leaves);
                assert!(
                    verify_inclusion(&leaves[m as usize], m, n as u64, &proof, &root),
                    "{m} of {n}"
                );
                let other = leaf_hash(b"forged");
                assert!(!verify_inclusion(&other, m, n as u64, &proof, &root));
                assert!(
                    !verify_inclusion(&leaves[m as usize], m + 1, n as u64, &proof, &root)
                        || n == 1
                );
            }
        }
    }

    #[test]
    fn a_frontier_gives_every_root_and_proofs_after_it() {
        let all = leaves(70);
        let mut frontier = Frontier::default();
        assert_eq!(frontier.root(), root(&[]));
        for n in 0..all.len() {
            frontier.push(all[n]);
            assert_eq!(frontier.root(), root(&all[..=n]), "size {}", n + 1);
            assert_eq!(frontier.hashes().len(), (n + 1).count_ones() as usize);
        }
        assert!(Frontier::from_parts(5, vec![[0; 32]]).is_none());
        // A segment from `start` on proves its leaves in every later tree
        // exactly as the whole tree does.
        for start in [0, 1, 5, 8, 13, 32] {
            let mut before = Frontier::default();
            all[..start].iter().for_each(|l| before.push(*l));
            let partial = Partial {
                start: &before,
                leaves: &all[start..],
            };
            for n in start + 1..=all.len() {
                for m in start..n {
                    assert_eq!(
                        partial.inclusion_proof(m as u64, n as u64),
                        Some(inclusion_proof(m as u64, &all[..n])),
                        "{m} in {n} from {start}"
                    );
                }
            }
            assert_eq!(partial.inclusion_proof(all.len() as u64, 71), None);
            if start > 0 {
                assert_eq!(partial.inclusion_proof(start as u64 - 1, 40), None);
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_a_forked_one_does_not() {
        let all = leaves(40);
        for n in 1..=40 {
            let root2 = root(&all[..n]);
            for m in 1..=n {
                let root1 = root(&all[..m]);
                let proof = consistency_proof(m as u64, &all[..n]);
                assert!(
                    verify_consistency(m as u64, n as u64, &proof, &root1, &root2),
                    "{m} -> {n}"
                );
                if m < n {
                    let mut forked = all[..n].to_vec();
                    forked[m - 1] = leaf_hash(b"rewritten");
                    assert!(
                        !verify_consistency(m as u64, n as u64, &proof, &root1, &root(&forked)),
                        "fork {m} -> {n}"
                    );
                }
            }
        }
    }
}
