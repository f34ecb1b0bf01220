//! Locality-aware request distribution (Pai, Aron, Banga, Svendsen, Druschel, Zwaenepoel, Nahum:
//! "Locality-Aware Request Distribution in Cluster-based Network Servers", ASPLOS 1998).
//!
//! [`Lard`] gives each target one node and keeps it there, so that node's cache holds it, until
//! that node is overloaded: above T_high while some node is below T_low, or at 2·T_high whatever
//! the others do; then the target moves to the least loaded node. [`LardR`] keeps a *set* of nodes
//! per target (replication for hot targets): requests go to the least loaded member; an overloaded
//! set grows by the least loaded node of the cluster; a set that has not changed for K (the quiet
//! period) gives up its most loaded member. Targets are remembered by node name, so a node that
//! goes down loses its targets and they are reassigned as new.

use std::collections::HashMap;

use crate::{ClusterView, Policy, PolicyKind, PolicyParams, RequestInfo};

/// Targets remembered at most (a bound against hostile targets); beyond, one is forgotten for
/// each new one.
const MAX_TARGETS: usize = 1 << 20;

/// Targets are remembered by a 64-bit hash, so a table entry costs the same whatever the target's
/// length; a collision only costs locality.
fn target_key(target: &str) -> u64 {
    crate::splitmix64_finalize(crate::fnv1a64(crate::FNV_OFFSET_BASIS, target.as_bytes()))
}

/// Makes room for one more entry when `table` is full, forgetting an arbitrary one.
fn make_room<V>(table: &mut HashMap<u64, V>, key: u64) {
    if table.len() >= MAX_TARGETS
        && !table.contains_key(&key)
        && let Some(victim) = table.keys().next().copied()
    {
        table.remove(&victim);
    }
}

fn index_of(view: &ClusterView, name: &str) -> Option<usize> {
    view.nodes
        .iter()
        .position(|n| n.name == name)
        .filter(|&i| view.is_eligible(i))
}

/// The LARD rule: is a node carrying `load` overloaded, given the cluster?
fn overloaded(load: u32, view: &ClusterView, low: u32, high: u32) -> bool {
    (load > high && view.any_below(low)) || load >= high.saturating_mul(2)
}

#[derive(Debug, Clone)]
pub struct Lard {
    low: u32,
    high: u32,
    server: HashMap<u64, String>,
}

impl Lard {
    pub fn new(params: &PolicyParams) -> Self {
        Lard {
            low: params.lard_low,
            high: params.lard_high,
            server: HashMap::new(),
        }
    }
}

impl Policy for Lard {
    fn name(&self) -> &'static str {
        PolicyKind::Lard.as_str()
    }

    fn choose(&mut self, request: &RequestInfo, view: &ClusterView) -> usize {
        if view.is_malformed() {
            return view.self_index;
        }
        let key = target_key(request.target);
        let current = self.server.get(&key).and_then(|name| index_of(view, name));
        if let Some(index) = current
            && !overloaded(view.nodes[index].load, view, self.low, self.high)
        {
            return index;
        }
        let chosen = view.least_loaded();
        make_room(&mut self.server, key);
        self.server.insert(key, view.nodes[chosen].name.clone());
        chosen
    }
}

#[derive(Debug, Clone)]
struct ServerSet {
    names: Vec<String>,
    last_change_ms: u64,
}

#[derive(Debug, Clone)]
pub struct LardR {
    low: u32,
    high: u32,
    quiet_ms: u64,
    sets: HashMap<u64, ServerSet>,
}

impl LardR {
    pub fn new(params: &PolicyParams) -> Self {
        LardR {
            low: params.lard_low,
            high: params.lard_high,
            quiet_ms: params.lard_r_quiet_ms,
            sets: HashMap::new(),
        }
    }

    /// The names in `target`'s server set, for tests and introspection.
    pub fn server_set(&self, target: &str) -> Vec<String> {
        self.sets
            .get(&target_key(target))
            .map(|s| s.names.clone())
            .unwrap_or_default()
    }
}

impl Policy for LardR {
    fn name(&self) -> &'static str {
        PolicyKind::LardR.as_str()
    }

    fn choose(&mut self, request: &RequestInfo, view: &ClusterView) -> usize {
        if view.is_malformed() {
            return view.self_index;
        }
        let key = target_key(request.target);
        make_room(&mut self.sets, key);
        let now = view.now_ms;
        let set = self.sets.entry(key).or_insert_with(|| ServerSet {
            names: Vec::new(),
            last_change_ms: now,
        });
        // Members that are down no longer serve the target.
        let before = set.names.len();
        set.names.retain(|name| index_of(view, name).is_some());
        let mut changed = set.names.len() != before;
        let members: Vec<usize> = set
            .names
            .iter()
            .filter_map(|name| index_of(view, name))
            .collect();
        let load = |i: usize| view.nodes[i].load;
        let chosen = match (
            members.iter().copied().min_by_key(|&i| (load(i), i)),
            members.iter().copied().max_by_key(|&i| (load(i), i)),
        ) {
            (Some(least), Some(most)) => {
                let mut chosen = least;
                if overloaded(load(least), view, self.low, self.high) {
                    let extra = view.least_loaded();
                    if !members.contains(&extra) {
                        set.names.push(view.nodes[extra].name.clone());
                        changed = true;
                    }
                    chosen = extra;
                }
                if set.names.len() > 1
                    && most != chosen
                    && now.saturating_sub(set.last_change_ms) > self.quiet_ms
                {
                    let name = &view.nodes[most].name;
                    set.names.retain(|n| n != name);
                    changed = true;
                }
                chosen
            }
            _ => {
                let chosen = view.least_loaded();
                set.names.push(view.nodes[chosen].name.clone());
                changed = true;
                chosen
            }
        };
        if changed {
            set.last_change_ms = now;
        }
        chosen
    }
}
