//! The digests checker: replicas that applied the same prefix of the log hold the same
//! state. Every node keeps a digest that mixes each applied command with its answer; two
//! nodes at the same applied index must report the same digest (*divergence* otherwise).
//!
//! Digests can only be compared where two nodes stood at the same index, which under load
//! is rare: the harness reads every node's status in rounds after the clients stopped and
//! the cluster settled, until each pair of nodes has been compared at least once. Samples
//! of different rounds are compared too (a node's digest at an index never changes). The
//! coverage is the number of indexes compared per pair; a pair never compared leaves the
//! verdict `unknown`. A divergence that a snapshot install later papers over, or that heals before
//! the end, is not seen: this is a check of the settled state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Anomaly, Coverage, Findings, Validity, judge};

/// One node's applied index and digest, as one status read reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestSample {
    /// The node.
    pub node: u64,
    /// Its applied Raft index.
    pub applied_index: u64,
    /// Its state digest there.
    pub digest: u64,
}

/// Counts of what the reads held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestStats {
    /// Rounds of status reads.
    pub rounds: u64,
    /// Highest applied index compared.
    pub highest_index_compared: u64,
}

/// The digests checker's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestsVerdict {
    /// The verdict.
    pub validity: Validity,
    /// The anomalies, at most [`super::ANOMALIES_SHOWN`] of each kind.
    pub anomalies: Vec<Anomaly>,
    /// Anomalies per kind.
    pub counts: BTreeMap<String, u64>,
    /// Digest comparisons per node pair.
    pub coverage: Coverage,
    /// What the reads held.
    pub stats: DigestStats,
}

/// The coverage key of the pair `a`, `b` (`a < b`).
pub fn pair_key(a: u64, b: u64) -> String {
    format!("digest pairs compared, nodes {a}–{b}")
}

/// Compares the digests of every two of `nodes` at every applied index both reported in
/// any of `rounds`.
pub fn check_digests(nodes: &[u64], rounds: &[Vec<DigestSample>]) -> DigestsVerdict {
    let mut findings = Findings::default();
    let mut coverage: Coverage = BTreeMap::new();
    let mut stats = DigestStats {
        rounds: rounds.len() as u64,
        ..DigestStats::default()
    };
    // Each node's digest at each index it reported (two different ones at one index are
    // a divergence of the node with itself).
    let mut reported: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
    for sample in rounds.iter().flatten() {
        let at = reported.entry(sample.node).or_default();
        match at.insert(sample.applied_index, sample.digest) {
            Some(earlier) if earlier != sample.digest => findings.add(
                "divergence",
                format!(
                    "node {} reported digests {earlier:016x} and {:016x} at applied index {}",
                    sample.node, sample.digest, sample.applied_index
                ),
            ),
            _ => {}
        }
    }
    let empty = BTreeMap::new();
    for (i, &a) in nodes.iter().enumerate() {
        for &b in &nodes[i + 1..] {
            let (a, b) = (a.min(b), a.max(b));
            let (at_a, at_b) = (
                reported.get(&a).unwrap_or(&empty),
                reported.get(&b).unwrap_or(&empty),
            );
            let mut compared = 0;
            for (index, digest_a) in at_a {
                let Some(digest_b) = at_b.get(index) else {
                    continue;
                };
                compared += 1;
                stats.highest_index_compared = stats.highest_index_compared.max(*index);
                if digest_a != digest_b {
                    findings.add(
                        "divergence",
                        format!(
                            "nodes {a} and {b} applied index {index} with digests \
                             {digest_a:016x} and {digest_b:016x}"
                        ),
                    );
                }
            }
            coverage.insert(pair_key(a, b), compared);
        }
    }
    DigestsVerdict {
        validity: judge(&findings, &coverage),
        anomalies: findings.anomalies,
        counts: findings.counts,
        coverage,
        stats,
    }
}

/// Whether every pair of `nodes` has been compared at least once in `rounds`.
pub fn every_pair_compared(nodes: &[u64], rounds: &[Vec<DigestSample>]) -> bool {
    check_digests(nodes, rounds)
        .coverage
        .values()
        .all(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(node: u64, applied_index: u64, digest: u64) -> DigestSample {
        DigestSample {
            node,
            applied_index,
            digest,
        }
    }

    #[test]
    fn equal_digests_at_one_index_are_valid_with_every_pair_counted() {
        let rounds = vec![vec![sample(1, 9, 7), sample(2, 9, 7), sample(3, 9, 7)]];
        let verdict = check_digests(&[1, 2, 3], &rounds);
        assert_eq!(verdict.validity, Validity::Valid);
        assert_eq!(
            verdict.coverage.values().copied().collect::<Vec<_>>(),
            [1, 1, 1]
        );
    }

    #[test]
    fn a_different_digest_at_the_same_index_is_a_divergence() {
        let rounds = vec![vec![sample(1, 9, 7), sample(2, 9, 8), sample(3, 9, 7)]];
        let verdict = check_digests(&[1, 2, 3], &rounds);
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(verdict.counts["divergence"], 2);
    }

    #[test]
    fn samples_of_different_rounds_at_one_index_are_compared() {
        // Node 3 lags by one round: at index 9 it reports another digest than node 1 did a
        // round earlier.
        let rounds = vec![
            vec![sample(1, 9, 7), sample(2, 9, 7), sample(3, 8, 1)],
            vec![sample(1, 10, 5), sample(2, 10, 5), sample(3, 9, 2)],
        ];
        let verdict = check_digests(&[1, 2, 3], &rounds);
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(verdict.coverage[&pair_key(1, 2)], 2);
        assert_eq!(verdict.coverage[&pair_key(1, 3)], 1);
    }

    #[test]
    fn a_pair_never_at_the_same_index_leaves_the_verdict_unknown() {
        // Node 3 reports indexes no other node reported: nothing about it was compared.
        let rounds = vec![
            vec![sample(1, 9, 7), sample(2, 9, 7), sample(3, 8, 1)],
            vec![sample(1, 12, 5), sample(2, 12, 5), sample(3, 11, 2)],
        ];
        let verdict = check_digests(&[1, 2, 3], &rounds);
        assert_eq!(verdict.validity, Validity::Unknown);
        assert_eq!(verdict.coverage[&pair_key(1, 2)], 2);
        assert_eq!(verdict.coverage[&pair_key(1, 3)], 0);
        assert!(!every_pair_compared(&[1, 2, 3], &rounds));
    }
}
