//! The LARD paper's headline on a small synthetic trace: with a working set several times one
//! node's cache, locality-aware distribution turns the cluster's memory into one big cache, so
//! LARD hits far more often than round-robin (whose every node caches the same popular files),
//! and serves more.

use baton_policy::{PolicyKind, PolicyParams};
use baton_sim::{
    ClientModel, ClusterConfig, CostModel, SimConfig, SweepSpec, SyntheticSpec, format_table,
    sweep, synthetic, write_csv,
};

const MIB: u64 = 1024 * 1024;

#[test]
fn lard_hits_more_than_round_robin_on_eight_nodes() {
    let workload = synthetic(&SyntheticSpec {
        files: 3000,
        alpha: 1.0,
        requests: 150_000,
        seed: 11,
    })
    .unwrap();
    let cache_bytes = 8 * MIB;
    let working_set = workload.working_set_bytes();
    assert!(
        working_set > 4 * cache_bytes,
        "working set {working_set} is not several caches"
    );
    let spec = SweepSpec {
        policies: vec![PolicyKind::RoundRobin, PolicyKind::Lard],
        node_counts: vec![1, 8],
        config: SimConfig {
            cluster: ClusterConfig {
                nodes: 1,
                cache_bytes_per_node: cache_bytes,
                max_connections_per_node: 128,
                cost: CostModel::default(),
            },
            clients: ClientModel::ClosedPerNode(32),
            warmup_requests: 30_000,
            seed: 1,
            policy_params: PolicyParams::default(),
        },
        threads: 2,
    };
    let reports = sweep(&workload, &spec).unwrap();
    println!("{}", format_table(&reports));
    let find = |policy: &str, nodes: usize| {
        reports
            .iter()
            .find(|r| r.policy == policy && r.nodes == nodes)
            .unwrap()
    };
    // Sweep order: policies outer, node counts inner.
    let order: Vec<(&str, usize)> = reports
        .iter()
        .map(|r| (r.policy.as_str(), r.nodes))
        .collect();
    assert_eq!(
        order,
        [
            ("round-robin", 1),
            ("round-robin", 8),
            ("lard", 1),
            ("lard", 8)
        ]
    );

    let (rr, lard) = (find("round-robin", 8), find("lard", 8));
    assert!(
        lard.hit_ratio > rr.hit_ratio + 0.10,
        "lard {:.3} vs round-robin {:.3}",
        lard.hit_ratio,
        rr.hit_ratio
    );
    assert!(lard.throughput_rps > 1.5 * rr.throughput_rps);
    // Round-robin's nodes each see the whole trace: its hit ratio does not grow with the cluster.
    assert!((rr.hit_ratio - find("round-robin", 1).hit_ratio).abs() < 0.03);
    // On one node every policy is the same.
    assert_eq!(find("lard", 1).hit_ratio, find("round-robin", 1).hit_ratio);

    let mut csv = Vec::new();
    write_csv(&reports, &mut csv).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    assert_eq!(csv.lines().count(), 5);
    assert!(
        csv.lines()
            .nth(4)
            .unwrap()
            .starts_with("lard,8,256,120000,")
    );
}
