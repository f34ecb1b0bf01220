//! `baton node` refuses to start, and says why, when what it was configured with cannot be had.
//! Needs root (it builds a one-node lab).

use std::time::Duration;

use baton_lab::{Lab, LabSpec, ServerKind};
use baton_policy::PolicyKind;

const BATON: &str = env!("CARGO_BIN_EXE_baton");

#[test]
fn a_metrics_address_in_use_is_a_startup_error() {
    let spec = LabSpec::new(baton_lab::lab::unique_name("tstart"), 1)
        .server(ServerKind::Static)
        .policy(PolicyKind::Local)
        .exe(BATON);
    let mut lab = Lab::up(spec).expect("lab up (needs root and iproute2)");
    assert!(
        lab.stop_agent_wait(1, Duration::from_secs(20))
            .expect("stop n1's agent"),
        "n1's agent did not exit"
    );
    let metrics = lab.node_metrics_addr(1);
    let squatter = lab
        .in_node(1, || std::net::TcpListener::bind(metrics))
        .expect("enter n1")
        .expect("bind the metrics address first");

    // nsenter --net, not `ip netns exec`: that one remounts /sys, without tracefs.
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.node_ns(1)))
        .args(["timeout", "20", BATON, "node", "--config"])
        .arg(lab.agent_config_path(1))
        .output()
        .expect("run nsenter");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the agent ran without its metrics:\n{stderr}"
    );
    assert_ne!(
        out.status.code(),
        Some(124),
        "timeout: the agent ran:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("bind({metrics}) for /metrics")),
        "{stderr}"
    );
    assert!(stderr.contains("Address already in use"), "{stderr}");

    drop(squatter);
    lab.start_agent(1)
        .expect("with the address free the agent starts");
    lab.down().expect("lab down");
}
