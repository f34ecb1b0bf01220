//! Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, SODA 2018), as
//! HAProxy's `hash-balance-factor` does it.
//!
//! Targets hash onto a ring of virtual nodes; a target goes to the first node clockwise from its
//! point whose load is below the cap `ceil(factor/100 * (total + 1) / n)` over the `n` eligible
//! nodes. While loads are low every target stays on its ring node (cache locality); a node at the
//! cap passes its overflow to the next one on the ring. The cap always leaves a node below it
//! (n * cap > total), so no node's load ever exceeds the cap because of this policy.

use crate::{
    ClusterView, FNV_OFFSET_BASIS, Policy, PolicyKind, RequestInfo, fnv1a64, splitmix64_finalize,
};

/// Ring points per node: enough that each node's share of the ring is within a few percent.
/// The datapath's ring has as many (`BOUNDED_VNODES`, `baton_bpf::sizes`).
pub const VIRTUAL_NODES: u32 = 160;

#[derive(Debug, Clone)]
pub struct BoundedHash {
    /// Percent of the mean load a node may carry (>= 100).
    factor: u64,
    /// The node names the ring was built for, in view order.
    names: Vec<String>,
    /// (point, index into the view's nodes), sorted by point.
    ring: Vec<(u64, usize)>,
}

fn point(bytes: &[u8], salt: u32) -> u64 {
    splitmix64_finalize(fnv1a64(
        fnv1a64(FNV_OFFSET_BASIS, bytes),
        &salt.to_be_bytes(),
    ))
}

impl BoundedHash {
    pub fn new(balance_factor: u32) -> Self {
        BoundedHash {
            factor: u64::from(balance_factor.max(100)),
            names: Vec::new(),
            ring: Vec::new(),
        }
    }

    /// The cap for `n` eligible nodes carrying `total`, counting the request being placed.
    pub fn cap(&self, total: u64, n: u64) -> u64 {
        self.factor
            .saturating_mul(total.saturating_add(1))
            .div_ceil(100 * n.max(1))
    }

    fn ring_for(&mut self, view: &ClusterView) {
        if self.names.len() == view.nodes.len()
            && self.names.iter().zip(view.nodes).all(|(a, b)| *a == b.name)
        {
            return;
        }
        self.names = view.nodes.iter().map(|n| n.name.clone()).collect();
        self.ring = Self::ring(&self.names);
    }

    /// The ring for nodes named `names` (a view's, in its order): (point, index into `names`),
    /// sorted by point. The datapath decides by the same ring.
    pub fn ring<S: AsRef<str>>(names: &[S]) -> Vec<(u64, usize)> {
        let mut ring: Vec<(u64, usize)> = names
            .iter()
            .enumerate()
            .flat_map(|(index, name)| {
                let name = name.as_ref().as_bytes();
                (0..VIRTUAL_NODES).map(move |v| (point(name, v), index))
            })
            .collect();
        ring.sort_unstable();
        ring
    }

    /// The point on the ring where the walk for `target` starts.
    pub fn target_point(target: &str) -> u64 {
        point(target.as_bytes(), u32::MAX)
    }
}

impl Policy for BoundedHash {
    fn name(&self) -> &'static str {
        PolicyKind::BoundedHash.as_str()
    }

    fn choose(&mut self, request: &RequestInfo, view: &ClusterView) -> usize {
        if view.is_malformed() {
            return view.self_index;
        }
        self.ring_for(view);
        let (n, total) = view.eligible().fold((0u64, 0u64), |(n, t), (_, node)| {
            (n + 1, t + u64::from(node.load))
        });
        let cap = self.cap(total, n);
        let start = self
            .ring
            .partition_point(|&(p, _)| p < Self::target_point(request.target));
        let len = self.ring.len();
        (0..len)
            .map(|step| self.ring[(start + step) % len].1)
            .find(|&index| view.is_eligible(index) && u64::from(view.nodes[index].load) < cap)
            .unwrap_or_else(|| view.least_loaded())
    }
}
