//! End to end: the datapath outlives its agent. Real labs with nginx and `hash` (targets picked
//! so that n1 hands them to n2 or n3), paced 10 MB downloads through n1, and wrk against every
//! node, while agents are killed, restarted, taken over, stopped for good, or left dead. Every
//! download must complete byte for byte and wrk must see no error; afterwards nothing of a
//! stopped agent may remain. Needs root, eBPF, nginx, wrk and bpftool.

use std::process::Command;
use std::time::{Duration, Instant};

use baton_lab::content::{expected_sha256, sha256_hex};
use baton_lab::download::{BackgroundDownload, paced_get_in_background};
use baton_lab::lab::target_hashed_to;
use baton_lab::{Lab, LabSpec, ServerKind};
use baton_policy::PolicyKind;

mod common;
use common::{assert_no_errors, metric, pin_dir, wait_until, wrk_everywhere};

const BATON: &str = env!("CARGO_BIN_EXE_baton");
/// The pace of the downloads: 10 MB take 8 s, time for a fault and a restart in the middle.
const PACE: u64 = 1_300_000;
const TEN_MB: &str = "/f/10m";

fn lab(prefix: &str) -> Lab {
    let spec = LabSpec::new(baton_lab::lab::unique_name(prefix), 3)
        .server(ServerKind::Nginx)
        .policy(PolicyKind::Hash)
        .exe(BATON);
    Lab::up(spec).expect("lab up (needs root, iproute2, nginx)")
}

/// A paced download of /f/10m from n1 that the hash policy gives to node `to`.
fn download(lab: &Lab, to: usize) -> BackgroundDownload {
    let target = target_hashed_to(TEN_MB, to, lab.nodes());
    paced_get_in_background(
        Some(&lab.client_ns()),
        lab.node_http_addr(1),
        &target,
        PACE,
        Duration::from_secs(30),
    )
    .expect("start a download")
}

/// Waits for a download and checks it arrived whole and byte-identical.
fn assert_whole(download: BackgroundDownload, what: &str) {
    let d = download.join().expect("the download thread");
    assert!(
        d.is_complete() && d.status == Some(200),
        "{what}: cut at {} bytes (status {:?}, reset {}, timed out {})",
        d.body.len(),
        d.status,
        d.reset,
        d.timed_out
    );
    assert_eq!(
        sha256_hex(&d.body),
        expected_sha256(TEN_MB).unwrap(),
        "{what}: the bytes differ"
    );
}

/// The ids of node `i`'s attached programs (ingress, egress).
fn program_ids(lab: &Lab, i: usize) -> Vec<u32> {
    use aya::programs::{SchedClassifier, TcAttachType};
    lab.in_node(i, || {
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .flat_map(|kind| {
                SchedClassifier::query_tcx("eth0", kind)
                    .map(|(_, p)| p.iter().map(|p| p.id()).collect::<Vec<_>>())
                    .expect("query TCX on eth0")
            })
            .collect()
    })
    .unwrap()
}

/// Whether bpftool still knows the object (`prog` or `map`) with this id.
fn bpftool_knows(kind: &str, id: u32) -> bool {
    let out = Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
        .output()
        .expect("run bpftool (is it installed?)");
    out.status.success()
}

fn wait_for(mut condition: impl FnMut() -> bool, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn transfers_and_requests_survive_agents_killed_and_restarted() {
    let mut lab = lab("surv");
    let to_n2 = download(&lab, 2);
    let to_n3 = download(&lab, 3);
    let wrk = wrk_everywhere(&lab, 14);
    to_n2.wait_for_bytes(1_500_000, Duration::from_secs(10));

    // The FE's agent dies mid-transfer and comes back a second later.
    lab.kill_agent(1).expect("kill n1's agent");
    std::thread::sleep(Duration::from_secs(1));
    lab.start_agent(1).expect("start n1's agent again");
    assert!(
        metric(&lab, 1, "baton_connections_adopted_total") >= 2.0,
        "n1's new agent adopts both forwarded downloads"
    );
    // Then the BE's agent of one of them.
    lab.kill_agent(2).expect("kill n2's agent");
    std::thread::sleep(Duration::from_secs(1));
    lab.start_agent(2).expect("start n2's agent again");
    assert!(metric(&lab, 2, "baton_connections_adopted_total") >= 1.0);

    assert_whole(to_n2, "the download served by n2");
    assert_whole(to_n3, "the download served by n3");
    assert_no_errors(wrk);
    // Connections were really distributed throughout, not just served where they landed.
    assert!(metric(&lab, 1, "baton_handoffs_out_total") > 0.0);
}

#[test]
fn an_upgrade_under_load_loses_nothing() {
    let mut lab = lab("upgr");
    let to_n2 = download(&lab, 2);
    let wrk = wrk_everywhere(&lab, 10);
    to_n2.wait_for_bytes(1_000_000, Duration::from_secs(10));
    for i in [1, 2, 3] {
        let started = Instant::now();
        let (old, new) = lab.restart_agent(i).expect("take over");
        let log = std::fs::read_to_string(lab.agent_log(i)).unwrap_or_default();
        let gap = log
            .lines()
            .rev()
            .find(|l| l.contains("took over"))
            .unwrap_or("");
        eprintln!(
            "n{i}: agent {old} handed over to {new} in {:?}; {gap}",
            started.elapsed()
        );
    }
    assert_whole(to_n2, "the download served by n2");
    assert_no_errors(wrk);
    assert!(metric(&lab, 1, "baton_handoffs_out_total") > 0.0);

    // Another node's configuration on this node's interface is not a takeover: refused, and the
    // running agent goes on.
    let other = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.node_ns(1)))
        .args(["timeout", "10", BATON, "node", "--config"])
        .arg(lab.agent_config_path(2))
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run nsenter");
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success(), "{stderr}");
    assert!(
        stderr.contains("eth0 carries the datapath of the node with service address 198.18.0.1"),
        "{stderr}"
    );
    assert!(
        lab.agent_pid(1)
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
    );
}

#[test]
fn a_node_without_its_agent_serves_every_new_connection() {
    let mut lab = lab("noag");
    lab.kill_agent(1).expect("kill n1's agent");
    let remote = target_hashed_to("/f/1k", 2, lab.nodes());
    let until = Instant::now() + Duration::from_secs(5);
    let mut served = 0;
    while Instant::now() < until {
        let addr = lab.node_http_addr(1);
        let response = lab
            .in_client(|| {
                let mut client = baton_lab::http_client::HttpClient::connect_timeout(
                    addr,
                    Duration::from_secs(3),
                )?;
                client.get(&remote)
            })
            .unwrap()
            .expect("a new connection to a node without its agent is served");
        assert_eq!(response.status, 200);
        served += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served >= 20, "{served} requests in 5 s");
    lab.start_agent(1).expect("start n1's agent again");
    assert!(
        metric(&lab, 1, "baton_datapath_failed_open_total") >= 1.0,
        "the datapath counted what it served without an agent"
    );
}

/// Stops node `i`'s agent for good while `transfer` runs through it, and checks the transfer
/// completes and the agent then leaves nothing: no pin, no program, no map.
fn stop_for_good_during(lab: &mut Lab, i: usize, transfer: BackgroundDownload, what: &str) {
    transfer.wait_for_bytes(1_500_000, Duration::from_secs(10));
    let dir = pin_dir(lab, i);
    let programs = program_ids(lab, i);
    let conns = aya::maps::MapInfo::from_pin(dir.join("conns"))
        .expect("the pinned conn table")
        .id();
    assert_eq!(programs.len(), 2);
    let exited = lab
        .stop_agent_wait(i, Duration::from_secs(30))
        .expect("stop the agent");
    assert!(
        exited,
        "n{i}'s agent exits by itself once its connection is done"
    );
    assert_whole(transfer, what);
    assert!(!dir.exists(), "{} is left", dir.display());
    assert!(
        program_ids(lab, i).is_empty(),
        "programs left on n{i}'s eth0"
    );
    for id in programs {
        assert!(!bpftool_knows("prog", id), "program {id} is left");
    }
    // The TCP state tracepoint's program reads the table too: the kernel frees a tracing
    // program, and then the table, only after an RCU grace period once its link is gone.
    let freed = wait_until(Duration::from_secs(5), || !bpftool_knows("map", conns));
    assert!(freed, "the conn table is left");
}

#[test]
fn stopping_for_good_waits_for_transfers_then_leaves_nothing() {
    let mut lab = lab("stop");
    // The BE stops in the middle of a transfer it serves, then the FE of another.
    let to_n2 = download(&lab, 2);
    stop_for_good_during(&mut lab, 2, to_n2, "the download served by the stopping BE");
    let to_n3 = download(&lab, 3);
    stop_for_good_during(
        &mut lab,
        1,
        to_n3,
        "the download forwarded by the stopping FE",
    );
}

#[test]
fn a_handed_in_connection_whose_fe_is_gone_is_freed() {
    let mut lab = lab("orph");
    // n2 frees orphans after 2 s (and looks every 10 s).
    let config = lab.agent_config_path(2);
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("orphan_timeout_s = 60", "orphan_timeout_s = 2");
    assert!(text.contains("orphan_timeout_s = 2"), "{text}");
    std::fs::write(&config, text).unwrap();
    lab.restart_agent(2).expect("n2 takes the new limit");

    // A keep-alive connection through n1, served by n2, then idle.
    let remote = target_hashed_to("/f/1k", 2, lab.nodes());
    let addr = lab.node_http_addr(1);
    let (client, response) = lab
        .in_client(|| {
            let mut client = baton_lab::http_client::HttpClient::connect(addr)?;
            let response = client.get(&remote)?;
            Ok::<_, baton_lab::http_client::HttpError>((client, response))
        })
        .unwrap()
        .expect("a request handed to n2");
    assert_eq!(response.served_by(), Some("n2"));
    wait_for(
        || metric(&lab, 2, "baton_handed_in_active") == 1.0,
        Duration::from_secs(5),
        "n2 to count the handed-in connection",
    );

    // n1's agent dies for good and its datapath is removed: nothing of the client reaches n2.
    lab.kill_agent(1).expect("kill n1's agent");
    // In n1's network namespace but this mount namespace, where the pins are (`ip netns exec`
    // would mount a bpffs of its own).
    let cleanup = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.node_ns(1)))
        .args([BATON, "node", "cleanup", "--interface", "eth0"])
        .output()
        .expect("run nsenter");
    assert!(cleanup.status.success(), "{cleanup:?}");
    wait_for(
        || metric(&lab, 2, "baton_handed_in_active") == 0.0,
        Duration::from_secs(20),
        "n2 to free the orphaned connection",
    );
    assert_eq!(metric(&lab, 2, "baton_orphans_freed_total"), 1.0);
    drop(client);
}
