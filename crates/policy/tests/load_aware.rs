//! The load-aware policies: least-conn, bounded-load hashing, LARD and LARD/R, each against the
//! rule that defines it, with loads and time scripted by hand.

use baton_policy::{
    BoundedHash, ClusterView, Lard, LardR, LeastConn, NodeState, Policy, PolicyParams, RequestInfo,
};
use proptest::prelude::*;

fn nodes(loads: &[u32]) -> Vec<NodeState> {
    loads
        .iter()
        .enumerate()
        .map(|(i, &load)| NodeState {
            name: format!("n{}", i + 1),
            up: true,
            load,
        })
        .collect()
}

fn get(target: &str) -> RequestInfo<'_> {
    RequestInfo {
        method: "GET",
        target,
        host: None,
    }
}

fn choose(policy: &mut dyn Policy, target: &str, cluster: &[NodeState], now_ms: u64) -> usize {
    policy.choose(
        &get(target),
        &ClusterView {
            self_index: 0,
            nodes: cluster,
            now_ms,
        },
    )
}

#[test]
fn least_conn_takes_the_least_loaded_and_prefers_itself_on_ties() {
    let mut p = LeastConn;
    assert_eq!(choose(&mut p, "/a", &nodes(&[5, 2, 9]), 0), 1);
    assert_eq!(
        choose(&mut p, "/a", &nodes(&[2, 2, 9]), 0),
        0,
        "a tie goes to self: no handoff"
    );
    let mut cluster = nodes(&[5, 2, 1]);
    cluster[2].up = false;
    assert_eq!(
        choose(&mut p, "/a", &cluster, 0),
        1,
        "never a node that is down"
    );
}

proptest! {
    /// Requests assigned one after another, each adding one to its node's load: no node ever goes
    /// above the cap, ceil(factor/100 * (total + 1) / n).
    #[test]
    fn bounded_hash_never_exceeds_its_bound(
        factor in 100u32..300,
        count in 1usize..12,
        initial in proptest::collection::vec(0u32..50, 12),
        targets in proptest::collection::vec("[a-z/]{1,12}", 1..400),
    ) {
        let mut policy = BoundedHash::new(factor);
        let mut cluster = nodes(&initial[..count]);
        for target in &targets {
            let total: u64 = cluster.iter().map(|n| u64::from(n.load)).sum();
            let cap = policy.cap(total, count as u64);
            let chosen = choose(&mut policy, target, &cluster, 0);
            prop_assert!(u64::from(cluster[chosen].load) < cap, "chose a node at its cap");
            cluster[chosen].load += 1;
        }
    }
}

#[test]
fn bounded_hash_keeps_targets_in_place_while_loads_are_even() {
    let mut policy = BoundedHash::new(125);
    let even = nodes(&[3, 3, 3, 3]);
    for t in 0..200 {
        let target = format!("/obj/{t}");
        let first = choose(&mut policy, &target, &even, 0);
        assert_eq!(
            choose(&mut policy, &target, &even, 0),
            first,
            "{target} moved"
        );
    }
    // Removing one node of four moves only the targets it had (about a quarter).
    let mut cluster = nodes(&[0, 0, 0, 0]);
    let before: Vec<usize> = (0..2000)
        .map(|t| choose(&mut policy, &format!("/o/{t}"), &cluster, 0))
        .collect();
    cluster[3].up = false;
    let after: Vec<usize> = (0..2000)
        .map(|t| choose(&mut policy, &format!("/o/{t}"), &cluster, 0))
        .collect();
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert!(
        before.iter().zip(&after).all(|(b, a)| b == a || *b == 3),
        "only n4's targets move"
    );
    assert!(moved < 2000 * 4 / 10, "{moved} of 2000 moved");
}

const PARAMS: PolicyParams = PolicyParams {
    balance_factor: 125,
    lard_low: 25,
    lard_high: 65,
    lard_r_quiet_ms: 20_000,
};

#[test]
fn lard_follows_the_papers_rules() {
    let mut lard = Lard::new(&PARAMS);
    // A new target goes to the least loaded node.
    assert_eq!(choose(&mut lard, "/a", &nodes(&[10, 3, 7]), 0), 1);
    // And stays there while its node is not overloaded, even if others are lighter.
    assert_eq!(choose(&mut lard, "/a", &nodes(&[0, 60, 0]), 0), 1);
    // Above T_high with a node below T_low: moves to the least loaded.
    assert_eq!(choose(&mut lard, "/a", &nodes(&[40, 66, 20]), 0), 2);
    // Above T_high but nobody below T_low: stays.
    assert_eq!(choose(&mut lard, "/a", &nodes(&[30, 30, 100]), 0), 2);
    // At 2 * T_high it moves whatever the others carry.
    assert_eq!(choose(&mut lard, "/a", &nodes(&[120, 110, 130]), 0), 1);
    // Its node goes down: reassigned like a new target.
    let mut cluster = nodes(&[5, 1, 9]);
    cluster[1].up = false;
    assert_eq!(choose(&mut lard, "/a", &cluster, 0), 0);
    // Other targets are independent.
    assert_eq!(choose(&mut lard, "/b", &nodes(&[4, 5, 6]), 0), 0);
    assert_eq!(choose(&mut lard, "/a", &nodes(&[4, 5, 6]), 0), 0);
}

#[test]
fn lard_r_grows_a_hot_targets_set_and_shrinks_it_when_quiet() {
    let mut lr = LardR::new(&PARAMS);
    assert_eq!(choose(&mut lr, "/hot", &nodes(&[9, 2, 5]), 0), 1);
    assert_eq!(lr.server_set("/hot"), ["n2"]);
    // Its only member overloaded while n1 is light: the set grows by the least loaded node.
    assert_eq!(choose(&mut lr, "/hot", &nodes(&[10, 70, 30]), 1_000), 0);
    assert_eq!(lr.server_set("/hot"), ["n2", "n1"]);
    // Requests go to the least loaded member, not to non-members.
    assert_eq!(choose(&mut lr, "/hot", &nodes(&[40, 30, 0]), 2_000), 1);
    // Nothing changes within the quiet period...
    assert_eq!(choose(&mut lr, "/hot", &nodes(&[40, 30, 0]), 20_999), 1);
    assert_eq!(lr.server_set("/hot").len(), 2);
    // ...after it, the most loaded member leaves the set.
    assert_eq!(choose(&mut lr, "/hot", &nodes(&[40, 30, 0]), 21_001), 1);
    assert_eq!(lr.server_set("/hot"), ["n2"]);
    // A single member is never removed, however quiet.
    assert_eq!(choose(&mut lr, "/hot", &nodes(&[40, 30, 0]), 90_000), 1);
    assert_eq!(lr.server_set("/hot"), ["n2"]);
    // Overloaded after a quiet period: the paper adds the least loaded node and, the set being
    // quiet, drops its most loaded member in the same step: the target migrates.
    assert_eq!(choose(&mut lr, "/hot", &nodes(&[60, 130, 50]), 91_000), 2);
    assert_eq!(lr.server_set("/hot"), ["n3"]);
    // At 2 * T_high the set grows even with nobody below T_low (and, not quiet, keeps both).
    assert_eq!(choose(&mut lr, "/hot", &nodes(&[60, 40, 130]), 92_000), 1);
    assert_eq!(lr.server_set("/hot"), ["n3", "n2"]);
    // A member that goes down leaves the set.
    let mut cluster = nodes(&[60, 30, 50]);
    cluster[1].up = false;
    assert_eq!(choose(&mut lr, "/hot", &cluster, 93_000), 2);
    assert_eq!(lr.server_set("/hot"), ["n3"]);
}
