//! Behaviour of the policies through the public API.

use std::collections::HashMap;

use baton_policy::{
    ClusterView, Hash, Local, NodeState, Policy, PolicyKind, PolicyParams, RequestInfo, RoundRobin,
    build, rendezvous_score,
};
use proptest::prelude::*;

fn named(count: usize) -> Vec<NodeState> {
    (0..count)
        .map(|i| NodeState {
            name: format!("node-{i}"),
            up: true,
            load: 0,
        })
        .collect()
}

fn get(target: &str) -> RequestInfo<'_> {
    RequestInfo {
        method: "GET",
        target,
        host: Some("example.com"),
    }
}

/// 10 000 targets: realistic, similar-looking paths, salted so that cases differ.
fn targets(salt: u64) -> Vec<String> {
    (0..10_000)
        .map(|i| format!("/static/{salt:x}/img/{i}.jpg"))
        .collect()
}

/// Which node *name* the hash policy picks for each target.
fn hash_assignment<'n>(
    targets: &[String],
    nodes: &'n [NodeState],
    self_index: usize,
) -> Vec<&'n str> {
    let view = ClusterView {
        self_index,
        nodes,
        now_ms: 0,
    };
    let mut policy = Hash;
    targets
        .iter()
        .map(|target| nodes[policy.choose(&get(target), &view)].name.as_str())
        .collect()
}

#[test]
fn policy_kind_names_round_trip() {
    for (kind, name) in [
        (PolicyKind::Local, "local"),
        (PolicyKind::RoundRobin, "round-robin"),
        (PolicyKind::Hash, "hash"),
    ] {
        assert_eq!(kind.to_string(), name);
        assert_eq!(name.parse::<PolicyKind>(), Ok(kind));
        assert_eq!(build(kind, &PolicyParams::default()).name(), name);
    }
    assert_eq!(PolicyKind::default(), PolicyKind::Hash);
    let error = "roundrobin".parse::<PolicyKind>().unwrap_err();
    assert!(error.to_string().contains("roundrobin"));
    assert!(
        "Hash".parse::<PolicyKind>().is_err(),
        "names are exact, as in the config file"
    );
}

#[test]
fn local_always_chooses_self() {
    let mut cluster = named(4);
    cluster[2].up = false;
    let mut policy = Local;
    for self_index in 0..cluster.len() {
        let view = ClusterView {
            self_index,
            nodes: &cluster,
            now_ms: 0,
        };
        for target in ["/", "/a", "/b?c"] {
            assert_eq!(policy.choose(&get(target), &view), self_index);
        }
    }
}

#[test]
fn round_robin_visits_every_up_node_equally() {
    let mut cluster = named(5);
    cluster[1].up = false;
    cluster[3].up = false;
    // Self is down in the view but always counts as up.
    cluster[4].up = false;
    let view = ClusterView {
        self_index: 4,
        nodes: &cluster,
        now_ms: 0,
    };
    let mut policy = RoundRobin::default();
    let eligible = [0, 2, 4];
    let rounds = 7;
    let mut counts = HashMap::new();
    let mut sequence = Vec::new();
    for _ in 0..rounds * eligible.len() {
        let chosen = policy.choose(&get("/"), &view);
        *counts.entry(chosen).or_insert(0) += 1;
        sequence.push(chosen);
    }
    for index in eligible {
        assert_eq!(
            counts.get(&index),
            Some(&rounds),
            "node {index}: {counts:?}"
        );
    }
    assert_eq!(
        counts.len(),
        eligible.len(),
        "down nodes were chosen: {counts:?}"
    );
    assert_eq!(&sequence[..6], &[0, 2, 4, 0, 2, 4]);
}

#[test]
fn round_robin_rotation_continues_fairly_when_membership_changes() {
    let mut cluster = named(4);
    let mut policy = RoundRobin::default();
    let mut choose = |cluster: &[NodeState]| {
        policy.choose(
            &get("/"),
            &ClusterView {
                self_index: 0,
                nodes: cluster,
                now_ms: 0,
            },
        )
    };
    assert_eq!(choose(&cluster), 0);
    assert_eq!(choose(&cluster), 1);
    cluster[2].up = false;
    assert_eq!(choose(&cluster), 3, "skips the node that went down");
    cluster[2].up = true;
    assert_eq!(choose(&cluster), 0);
    assert_eq!(choose(&cluster), 1);
    assert_eq!(
        choose(&cluster),
        2,
        "the node that came back is in the rotation again"
    );
}

#[test]
fn hash_is_deterministic_across_instances_and_deciding_nodes() {
    let cluster = named(5);
    let targets = targets(1);
    // Each node of the cluster decides with its own policy instance and its own self_index.
    let reference = hash_assignment(&targets, &cluster, 0);
    for self_index in 1..cluster.len() {
        assert_eq!(hash_assignment(&targets, &cluster, self_index), reference);
    }
    let mut boxed = build(PolicyKind::Hash, &PolicyParams::default());
    let view = ClusterView {
        self_index: 3,
        nodes: &cluster,
        now_ms: 0,
    };
    for (target, expected) in targets.iter().zip(&reference).take(100) {
        let chosen = boxed.choose(&get(target), &view);
        assert_eq!(cluster[chosen].name, *expected);
        assert_eq!(
            boxed.choose(&get(target), &view),
            chosen,
            "same target, same node"
        );
    }
}

#[test]
fn hash_does_not_depend_on_node_order() {
    let cluster = named(6);
    let mut reversed = cluster.clone();
    reversed.reverse();
    let targets = targets(2);
    assert_eq!(
        hash_assignment(&targets, &cluster, 0),
        hash_assignment(&targets, &reversed, 0)
    );
}

#[test]
fn hash_scores_are_stable_forever() {
    // Golden values, computed independently (a Python transcription of the documented
    // algorithm): every node of a cluster, whatever its build, must compute exactly these.
    // If this test fails, the hash changed and mixed-version clusters would disagree.
    assert_eq!(
        rendezvous_score("node-0", "/index.html"),
        0xab0a_0a82_27ac_953c
    );
    assert_eq!(
        rendezvous_score("node-1", "/index.html"),
        0x0f48_5124_b999_55df
    );
    assert_eq!(rendezvous_score("", ""), 0x4f2d_b50f_1240_40cd);
    // The separator keeps name and target apart.
    assert_ne!(rendezvous_score("ab", "c"), rendezvous_score("a", "bc"));
}

#[test]
fn hash_skips_down_nodes_but_never_self() {
    let mut cluster = named(4);
    for node in &mut cluster {
        node.up = false;
    }
    let view = ClusterView {
        self_index: 2,
        nodes: &cluster,
        now_ms: 0,
    };
    let mut policy = Hash;
    for target in targets(3).iter().take(200) {
        assert_eq!(
            policy.choose(&get(target), &view),
            2,
            "only self is eligible"
        );
    }
}

#[test]
fn hash_spreads_targets_evenly() {
    for count in [2, 3, 5, 8, 16] {
        let cluster = named(count);
        let assignment = hash_assignment(&targets(4), &cluster, 0);
        let mut shares: HashMap<&str, usize> = HashMap::new();
        for name in &assignment {
            *shares.entry(name).or_default() += 1;
        }
        let fair = assignment.len() / count;
        for node in &cluster {
            let share = shares.get(node.name.as_str()).copied().unwrap_or(0);
            assert!(
                share * 10 > fair * 8 && share * 10 < fair * 12,
                "{count} nodes: {} got {share} of {}, fair is {fair}",
                node.name,
                assignment.len()
            );
        }
    }
}

#[test]
fn malformed_views_fall_back_to_self_index() {
    let empty: [NodeState; 0] = [];
    for mut policy in PolicyKind::ALL.map(|kind| build(kind, &PolicyParams::default())) {
        let view = ClusterView {
            self_index: 0,
            nodes: &empty,
            now_ms: 0,
        };
        assert_eq!(policy.choose(&get("/"), &view), 0, "{}", policy.name());
        let cluster = named(2);
        let view = ClusterView {
            self_index: 5,
            nodes: &cluster,
            now_ms: 0,
        };
        assert_eq!(policy.choose(&get("/"), &view), 5, "{}", policy.name());
    }
}

fn cluster_strategy() -> impl Strategy<Value = (Vec<NodeState>, usize)> {
    proptest::collection::hash_set("[a-z0-9-]{1,12}", 1..12)
        .prop_flat_map(|names| {
            let count = names.len();
            (
                Just(names.into_iter().collect::<Vec<_>>()),
                proptest::collection::vec(any::<bool>(), count),
                0..count,
            )
        })
        .prop_map(|(names, up, self_index)| {
            let nodes = names
                .into_iter()
                .zip(up)
                .map(|(name, up)| NodeState { name, up, load: 0 })
                .collect();
            (nodes, self_index)
        })
}

proptest! {
    #[test]
    fn every_policy_returns_an_eligible_node((cluster, self_index) in cluster_strategy(), target in ".{0,40}") {
        let view = ClusterView { self_index, nodes: &cluster, now_ms: 0 };
        for mut policy in PolicyKind::ALL.map(|kind| build(kind, &PolicyParams::default())) {
            for _ in 0..cluster.len() + 1 {
                let chosen = policy.choose(&get(&target), &view);
                prop_assert!(chosen < cluster.len());
                prop_assert!(chosen == self_index || cluster[chosen].up, "{} chose down node {}", policy.name(), chosen);
            }
        }
    }

    #[test]
    fn arbitrary_views_never_panic(self_index in 0usize..20, up in proptest::collection::vec(any::<bool>(), 0..10), target in ".*") {
        let cluster: Vec<NodeState> = up.iter().enumerate()
            .map(|(i, &up)| NodeState { name: format!("n{i}"), up, load: 0 }).collect();
        let view = ClusterView { self_index, nodes: &cluster, now_ms: 0 };
        for mut policy in PolicyKind::ALL.map(|kind| build(kind, &PolicyParams::default())) {
            let _ = policy.choose(&RequestInfo { method: "", target: &target, host: None }, &view);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Adding one node to N moves about 1/(N+1) of the targets, all of them to the new node.
    #[test]
    fn adding_a_node_moves_only_its_share((cluster, _) in cluster_strategy(), salt in any::<u64>()) {
        let mut grown = cluster.iter().map(|n| NodeState { up: true, ..n.clone() }).collect::<Vec<_>>();
        let before_nodes = grown.clone();
        grown.push(NodeState { name: "the-new-node".to_owned(), up: true, load: 0 });
        let targets = targets(salt);
        let before = hash_assignment(&targets, &before_nodes, 0);
        let after = hash_assignment(&targets, &grown, 0);
        let moved: Vec<usize> = (0..targets.len()).filter(|&i| before[i] != after[i]).collect();
        for &i in &moved {
            prop_assert_eq!(after[i], "the-new-node", "target moved between old nodes");
        }
        let bound = 1.5 / grown.len() as f64;
        prop_assert!((moved.len() as f64) / (targets.len() as f64) < bound,
            "{} of {} moved with {} nodes", moved.len(), targets.len(), grown.len());
        prop_assert!(!moved.is_empty(), "the new node got nothing");
    }

    /// A node going down moves exactly the targets it held (about 1/N), and nothing else.
    #[test]
    fn removing_a_node_moves_only_its_targets((cluster, _) in cluster_strategy(), salt in any::<u64>(), which in any::<prop::sample::Index>()) {
        prop_assume!(cluster.len() >= 2);
        let all_up: Vec<NodeState> = cluster.iter().map(|n| NodeState { up: true, ..n.clone() }).collect();
        let removed = which.index(all_up.len());
        // Decide from a node other than the removed one, whose `up` flag really counts.
        let self_index = (removed + 1) % all_up.len();
        let mut shrunk = all_up.clone();
        shrunk[removed].up = false;
        let removed_name = all_up[removed].name.as_str();
        let targets = targets(salt);
        let before = hash_assignment(&targets, &all_up, self_index);
        let after = hash_assignment(&targets, &shrunk, self_index);
        for i in 0..targets.len() {
            if before[i] == removed_name {
                prop_assert_ne!(after[i], removed_name, "a down node was chosen");
            } else {
                prop_assert_eq!(after[i], before[i], "a target of a surviving node moved");
            }
        }
        let moved = (0..targets.len()).filter(|&i| before[i] != after[i]).count();
        let bound = 1.5 / all_up.len() as f64;
        prop_assert!((moved as f64) / (targets.len() as f64) < bound,
            "{} of {} moved with {} nodes", moved, targets.len(), all_up.len());
    }
}
