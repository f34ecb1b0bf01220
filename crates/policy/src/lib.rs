//! Request distribution policies behind one trait. Pure and deterministic.
//!
//! A [`Policy`] picks, for one request, the node that should serve it, given a [`ClusterView`]:
//! every node of the cluster (in the same configured order on every node), which ones are up,
//! and which one is "self", the node asking. The contract every policy keeps:
//!
//! - it returns an index into `view.nodes`;
//! - it never returns a node that is down, except self, which always counts as up (a node can
//!   always serve locally: that is the fallback for everything);
//! - given a malformed view (`self_index` out of range, e.g. an empty node list) it returns
//!   `self_index` unchanged, which the caller must treat as "serve locally".
//!
//! Policies: [`Local`] (no distribution), [`RoundRobin`] and [`LeastConn`] (content-blind),
//! [`Hash`](struct@Hash) (rendezvous hashing of the request target, so that every node of the
//! cluster sends the same target to the same node and its cache stays hot), [`BoundedHash`]
//! (consistent hashing with bounded loads), [`Lard`] and [`LardR`] (locality-aware request
//! distribution, Pai et al., ASPLOS 1998). Build one by name with [`build`].
//!
//! Loads are active connections, as the view reports them; time (`ClusterView::now_ms`, any
//! monotonic clock in ms) only matters to LARD/R. Both come from the caller, so the same code runs
//! in a live node and in a simulation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod bounded;
mod lard;
pub mod router;

pub use bounded::{BoundedHash, VIRTUAL_NODES};
pub use lard::{Lard, LardR};
pub use router::{RoutedRequest, Router, Rule};

/// Which policy a node runs, as named in configuration and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    Local,
    RoundRobin,
    #[default]
    Hash,
    LeastConn,
    BoundedHash,
    Lard,
    LardR,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 7] = [
        PolicyKind::Local,
        PolicyKind::RoundRobin,
        PolicyKind::Hash,
        PolicyKind::LeastConn,
        PolicyKind::BoundedHash,
        PolicyKind::Lard,
        PolicyKind::LardR,
    ];

    /// The kebab-case name used in configuration files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Local => "local",
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::Hash => "hash",
            PolicyKind::LeastConn => "least-conn",
            PolicyKind::BoundedHash => "bounded-hash",
            PolicyKind::Lard => "lard",
            PolicyKind::LardR => "lard-r",
        }
    }
}

/// The tunables of the policies that have any; every field has the documented default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyParams {
    /// `bounded-hash`: no node is assigned more than this percentage of the mean load (HAProxy's
    /// `hash-balance-factor`; 125 = 1.25 times the mean). At least 100.
    pub balance_factor: u32,
    /// `lard`, `lard-r`: a node below this load counts as lightly loaded (T_low; the paper: 25).
    pub lard_low: u32,
    /// `lard`, `lard-r`: a node above this load counts as loaded (T_high; the paper: 65).
    pub lard_high: u32,
    /// `lard-r`: a target's server set shrinks after this long without changing (the paper: 20 s).
    pub lard_r_quiet_ms: u64,
}

impl Default for PolicyParams {
    fn default() -> Self {
        PolicyParams {
            balance_factor: 125,
            lard_low: 25,
            lard_high: 65,
            lard_r_quiet_ms: 20_000,
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy name that is not one of [`PolicyKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "unknown policy {0:?} (expected one of: local, round-robin, hash, least-conn, bounded-hash, lard, lard-r)"
)]
pub struct UnknownPolicy(pub String);

impl FromStr for PolicyKind {
    type Err = UnknownPolicy;

    fn from_str(name: &str) -> Result<Self, UnknownPolicy> {
        PolicyKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| UnknownPolicy(name.to_owned()))
    }
}

/// What a node knows about one cluster member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// The node's name, identical on every node: hashing depends on it.
    pub name: String,
    pub up: bool,
    /// Active connections served, as last reported.
    pub load: u32,
}

/// The cluster as seen by the node making the decision.
#[derive(Debug, Clone, Copy)]
pub struct ClusterView<'a> {
    /// Index of the deciding node in `nodes`.
    pub self_index: usize,
    pub nodes: &'a [NodeState],
    /// Now, in ms on any monotonic clock (a live node's, or a simulation's).
    pub now_ms: u64,
}

impl ClusterView<'_> {
    /// Whether node `index` may be chosen: up, or self.
    pub fn is_eligible(&self, index: usize) -> bool {
        index == self.self_index || self.nodes.get(index).is_some_and(|node| node.up)
    }

    /// The nodes that may be chosen, with their indices, in order.
    pub fn eligible(&self) -> impl Iterator<Item = (usize, &NodeState)> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(|&(index, node)| node.up || index == self.self_index)
    }

    fn is_malformed(&self) -> bool {
        self.self_index >= self.nodes.len()
    }

    /// The eligible node with the least load; ties go to self (no handoff), then to the first.
    pub fn least_loaded(&self) -> usize {
        self.eligible()
            .min_by_key(|&(index, node)| (node.load, index != self.self_index, index))
            .map_or(self.self_index, |(index, _)| index)
    }

    /// Whether some eligible node carries less than `load`.
    fn any_below(&self, load: u32) -> bool {
        self.eligible().any(|(_, node)| node.load < load)
    }
}

/// The parts of a request that policies look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestInfo<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub host: Option<&'a str>,
}

/// A request distribution policy. See the crate documentation for the contract of `choose`.
pub trait Policy: Send {
    /// The policy's kebab-case name, as in [`PolicyKind`].
    fn name(&self) -> &'static str;
    /// The index in `view.nodes` of the node that should serve `request`.
    fn choose(&mut self, request: &RequestInfo, view: &ClusterView) -> usize;
}

/// Builds the policy named by `kind`, in its initial state.
pub fn build(kind: PolicyKind, params: &PolicyParams) -> Box<dyn Policy> {
    match kind {
        PolicyKind::Local => Box::new(Local),
        PolicyKind::RoundRobin => Box::new(RoundRobin::default()),
        PolicyKind::Hash => Box::new(Hash),
        PolicyKind::LeastConn => Box::new(LeastConn),
        PolicyKind::BoundedHash => Box::new(BoundedHash::new(params.balance_factor)),
        PolicyKind::Lard => Box::new(Lard::new(params)),
        PolicyKind::LardR => Box::new(LardR::new(params)),
    }
}

/// No distribution: every node serves what it accepts (the round-robin DNS baseline).
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl Policy for Local {
    fn name(&self) -> &'static str {
        PolicyKind::Local.as_str()
    }

    fn choose(&mut self, _request: &RequestInfo, view: &ClusterView) -> usize {
        view.self_index
    }
}

/// Content-blind: each request goes to the next eligible node after the previous choice.
///
/// Continuing from the previous choice (rather than from a counter modulo the number of up
/// nodes) keeps the rotation fair when nodes go down or come back: no node is skipped or served
/// twice in a row because the count of up nodes changed.
#[derive(Debug, Clone, Default)]
pub struct RoundRobin {
    /// Index chosen last time; `None` before the first request.
    last: Option<usize>,
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        PolicyKind::RoundRobin.as_str()
    }

    fn choose(&mut self, _request: &RequestInfo, view: &ClusterView) -> usize {
        if view.is_malformed() {
            return view.self_index;
        }
        let count = view.nodes.len();
        let start = self.last.map_or(0, |last| last.wrapping_add(1));
        // Self is always eligible, so this finds a node within `count` steps.
        let chosen = (0..count)
            .map(|step| start.wrapping_add(step) % count)
            .find(|&index| view.is_eligible(index))
            .unwrap_or(view.self_index);
        self.last = Some(chosen);
        chosen
    }
}

/// Content-blind: the eligible node with the fewest active connections.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastConn;

impl Policy for LeastConn {
    fn name(&self) -> &'static str {
        PolicyKind::LeastConn.as_str()
    }

    fn choose(&mut self, _request: &RequestInfo, view: &ClusterView) -> usize {
        if view.is_malformed() {
            return view.self_index;
        }
        view.least_loaded()
    }
}

/// Rendezvous (highest random weight) hashing of the request target over the eligible nodes.
///
/// Every node computes `score(name, target)` for each eligible node and picks the highest, so
/// all nodes agree without coordination, and adding or removing a node only moves the targets
/// that node wins or held (about 1/N of them). Ties, which need a 64-bit collision, go to the
/// greater name so that the answer does not depend on the order of `nodes`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hash;

impl Policy for Hash {
    fn name(&self) -> &'static str {
        PolicyKind::Hash.as_str()
    }

    fn choose(&mut self, request: &RequestInfo, view: &ClusterView) -> usize {
        if view.is_malformed() {
            return view.self_index;
        }
        // Each score computed once; ties broken by name (see above), then by position.
        view.eligible()
            .map(|(index, node)| {
                (
                    rendezvous_score(&node.name, request.target),
                    &node.name,
                    index,
                )
            })
            .max()
            .map(|(_, _, index)| index)
            .unwrap_or(view.self_index)
    }
}

impl Hash {
    /// The index in `names` of the node this policy gives `target` when every node is up.
    pub fn node_for(target: &str, names: &[&str]) -> usize {
        let nodes = all_up(names);
        let view = ClusterView {
            self_index: 0,
            nodes: &nodes,
            now_ms: 0,
        };
        let request = RequestInfo {
            method: "GET",
            target,
            host: None,
        };
        Hash.choose(&request, &view)
    }

    /// A request target, `path` with a `?k=N` query, that this policy gives to `names[node]` when
    /// every node of `names` is up: how tests and benchmarks pick requests that must, or must not,
    /// be handed off. `None` if no N below 100 000 does (or `node` is not an index of `names`).
    pub fn target_for(path: &str, names: &[&str], node: usize) -> Option<String> {
        let nodes = all_up(names);
        let view = ClusterView {
            self_index: 0,
            nodes: &nodes,
            now_ms: 0,
        };
        (0..100_000)
            .map(|k| format!("{path}?k={k}"))
            .find(|target| {
                let request = RequestInfo {
                    method: "GET",
                    target,
                    host: None,
                };
                Hash.choose(&request, &view) == node
            })
    }
}

/// `names` as nodes that are all up and idle.
fn all_up(names: &[&str]) -> Vec<NodeState> {
    names
        .iter()
        .map(|name| NodeState {
            name: name.to_string(),
            up: true,
            load: 0,
        })
        .collect()
}

/// The weight of `node_name` for `target`: 64-bit FNV-1a over the name, a separator and the
/// target, then the splitmix64 finalizer.
///
/// Spelled out here rather than taken from `std::hash` because the value must be identical on
/// every node, machine, process and Rust version (std's `DefaultHasher` is randomly keyed and
/// its algorithm may change). FNV-1a alone mixes its last bytes poorly, so the finalizer spreads
/// every input bit over the whole word before scores are compared. The separator, 0xff, never
/// occurs in UTF-8, so ("ab", "c") and ("a", "bc") hash differently.
pub fn rendezvous_score(node_name: &str, target: &str) -> u64 {
    rendezvous_score_from_seed(rendezvous_seed(node_name), target.as_bytes())
}

/// The FNV-1a state after `node_name` and the separator: what [`rendezvous_score`] continues
/// from. The datapath, which hashes targets itself, gets one per node from the agent.
pub fn rendezvous_seed(node_name: &str) -> u64 {
    fnv1a64(fnv1a64(FNV_OFFSET_BASIS, node_name.as_bytes()), &[0xff])
}

/// [`rendezvous_score`] from a node's [`rendezvous_seed`].
pub fn rendezvous_score_from_seed(seed: u64, target: &[u8]) -> u64 {
    splitmix64_finalize(fnv1a64(seed, target))
}

/// Each node's rank among the names in `names` sorted (0 for the least): [`Hash`](struct@Hash)
/// breaks a tie between scores in favour of the greater name, which is the greater rank.
pub fn name_ranks<S: AsRef<str>>(names: &[S]) -> Vec<usize> {
    names
        .iter()
        .map(|name| {
            names
                .iter()
                .filter(|other| other.as_ref() < name.as_ref())
                .count()
        })
        .collect()
}

pub(crate) const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a, continuing from `hash` (start from `FNV_OFFSET_BASIS`).
pub(crate) fn fnv1a64(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

/// The output function of splitmix64 (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
pub(crate) fn splitmix64_finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_for_finds_targets_the_policy_gives_to_each_node() {
        let names = ["n1", "n2", "n3"];
        for node in 0..3 {
            let target = Hash::target_for("/f/1k", &names, node).unwrap();
            let winner = (0..3)
                .max_by_key(|&i| rendezvous_score(names[i], &target))
                .unwrap();
            assert_eq!(winner, node, "{target}");
        }
        assert_eq!(Hash::target_for("/x", &names, 3), None);
    }

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        // From the FNV reference test suite (isthe.com/chongo/tech/comp/fnv).
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn splitmix64_finalizer_matches_reference_generator() {
        // splitmix64 seeded with 0 adds the golden gamma, then finalizes: its first outputs.
        const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
        assert_eq!(splitmix64_finalize(GAMMA), 0xe220_a839_7b1d_cdaf);
        assert_eq!(
            splitmix64_finalize(GAMMA.wrapping_mul(2)),
            0x6e78_9e6a_a1b9_65f4
        );
    }
}
