//! Helpers shared by the end-to-end tests.
// Each test binary uses some of these helpers.
#![allow(dead_code)]

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use baton_lab::Lab;

/// Where node `i`'s datapath is pinned.
pub fn pin_dir(lab: &Lab, i: usize) -> std::path::PathBuf {
    let netns = lab
        .in_node(i, baton_bpf::current_netns_inum)
        .unwrap()
        .expect("the node's namespace inode");
    baton_bpf::pins::dir(netns, "eth0")
}

/// wrk against every node for `seconds`: a connection per request on each, keep-alive on n1.
///
/// Its request timeout is 5 s, not wrk's 2 s: a connection whose first bytes a killed agent had
/// taken is served once the datapath fails open (within 0.5 s) and the client retransmits them,
/// and the client's retransmission timer backs off (0.2, 0.6, 1.4, 3.0 s after the first send),
/// so such a response can take longer than 2 s; it is slow, not lost. Anything not answered
/// within 5 s is still an error.
pub fn wrk_everywhere(lab: &Lab, seconds: u32) -> Vec<(String, Child)> {
    let duration = format!("-d{seconds}s");
    let mut runs = Vec::new();
    for i in 1..=lab.nodes() {
        let url = format!("http://{}/f/1k", lab.node_address(i));
        let close = [
            "wrk",
            "-t1",
            "-c4",
            &duration,
            "--timeout",
            "5s",
            "-H",
            "Connection: close",
            &url,
        ];
        runs.push((
            format!("n{i} connection per request"),
            spawn_in_client(lab, &close),
        ));
    }
    let url = format!("http://{}/f/1k", lab.node_address(1));
    let keep_alive = ["wrk", "-t1", "-c4", &duration, "--timeout", "5s", &url];
    runs.push((
        "n1 keep-alive".to_string(),
        spawn_in_client(lab, &keep_alive),
    ));
    runs
}

pub fn spawn_in_client(lab: &Lab, args: &[&str]) -> Child {
    baton_lab::lab::exec_command(lab.name(), "client", args)
        .unwrap()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wrk (is it installed?)")
}

/// Every wrk run ended with requests made, and no error and no non-2xx response.
pub fn assert_no_errors(runs: Vec<(String, Child)>) {
    for (what, run) in runs {
        let out = run.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "wrk {what}: {text}");
        assert!(text.contains("requests in"), "wrk {what}: {text}");
        assert!(!text.contains("Non-2xx"), "wrk {what} saw non-2xx:\n{text}");
        assert!(
            !text.contains("Socket errors"),
            "wrk {what} saw errors:\n{text}"
        );
        let line = text
            .lines()
            .find(|l| l.contains("requests in"))
            .unwrap_or("");
        eprintln!("wrk {what}: {}, 0 errors", line.trim());
    }
}

pub fn metric(lab: &Lab, node: usize, name: &str) -> f64 {
    lab.scrape_metrics(node)
        .unwrap_or_default()
        .get(name)
        .copied()
        .unwrap_or(0.0)
}

/// Waits up to `within` for `condition`; whether it came true.
pub fn wait_until(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Node `node`'s counter `name` once it has stopped moving (the same in two reads half a second
/// apart, for at most three seconds): a baseline that counts all that came before it (what an
/// agent learns from the datapath's quiet notices, such as the handoffs of the lab's readiness
/// probes when the datapath made them, it counts at its next wakeup).
pub fn settled_metric(lab: &Lab, node: usize, name: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = metric(lab, node, name);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = metric(lab, node, name);
        if now == last || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

/// Waits up to `within` for node `node`'s counter `name` to reach `at_least`; its last value.
/// For words that travel the control mesh after the client has its answer (a move's release,
/// a close notice), which TCP may retransmit after a backoff.
pub fn metric_reaches(lab: &Lab, node: usize, name: &str, at_least: f64, within: Duration) -> f64 {
    let until = Instant::now() + within;
    loop {
        let value = metric(lab, node, name);
        if value >= at_least || Instant::now() >= until {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The lab client's link drops 3 % of the HTTP segments both ways (SYNs, requests, ACKs and
/// responses alike), by an nftables table `inet lossy` in the client's namespace (there is no
/// netem here); `lab.exec("client", &["nft", "delete table inet lossy"])` ends it.
pub fn make_client_link_lossy(lab: &Lab) {
    let rules = "table inet lossy {
        chain in { type filter hook input priority 0; tcp sport 80 numgen random mod 100 < 3 drop; }
        chain out { type filter hook output priority 0; tcp dport 80 numgen random mod 100 < 3 drop; }
    }";
    let out = lab
        .exec("client", &["nft", rules])
        .expect("run nft (is nftables installed?)");
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client socket bound to 198.18.0.254:`port` (0: any), with SO_REUSEADDR so that several
/// connections from one port can go to different nodes (tuple collisions, port reuse).
pub fn socket_on_port(port: u16) -> socket2::Socket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    let local = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(198, 18, 0, 254), port);
    s.bind(&local.into()).unwrap();
    s
}
