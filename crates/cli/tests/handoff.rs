//! End to end: real labs (network namespaces), real `baton node` agents with the eBPF datapath,
//! real servers (baton's static server, Debian's nginx, also with deferred accept, and Debian's
//! Apache) and real clients (curl, wrk, and raw sockets for the cases curl cannot make). Needs
//! root, eBPF, nginx, apache2, curl, wrk, tcpdump and nftables; a missing piece fails the test.
//!
//! With the `hash` policy every node makes the same choice for a target, so a test picks targets
//! (`/f/1k?k=N`) that the policy assigns to n2 and sends them to n1: they must be handed off.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use baton_lab::content::{expected_sha256, sha256_hex};
use baton_lab::http_client::HttpClient;
use baton_lab::lab::{node_hashed_for, target_hashed_to};
use baton_lab::{Lab, LabSpec, ServerKind};
use baton_policy::PolicyKind;

mod common;
use common::{pin_dir, socket_on_port};

const BATON: &str = env!("CARGO_BIN_EXE_baton");
/// How long an agent may take to count a handoff the datapaths made (it reads their quiet
/// notices at its next wakeup, at the latest at its next round): a generous bound.
const COUNTED_WITHIN: Duration = Duration::from_secs(3);

fn lab(prefix: &str, nodes: usize, server: ServerKind, policy: PolicyKind) -> Lab {
    let spec = LabSpec::new(baton_lab::lab::unique_name(prefix), nodes)
        .server(server)
        .policy(policy)
        .exe(BATON);
    Lab::up(spec).expect("lab up (needs root, iproute2, the server binary)")
}

fn url(lab: &Lab, node: usize, target: &str) -> String {
    format!("http://{}{target}", lab.node_address(node))
}

/// `curl` from the client: returns (X-Served-By, sha256 of the body).
fn curl_get(lab: &Lab, node: usize, target: &str) -> (String, String) {
    let script = format!(
        "curl -sS -m 30 -D /dev/stderr -o - '{}' | sha256sum",
        url(lab, node, target)
    );
    let out = lab
        .exec("client", &["sh", "-c", &script])
        .expect("run curl in the client namespace");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let headers = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(headers.starts_with("HTTP/1.1 200"), "not a 200: {headers}");
    let served_by = headers
        .lines()
        .find_map(|l| {
            l.strip_prefix("x-served-by: ")
                .or_else(|| l.strip_prefix("X-Served-By: "))
        })
        .unwrap_or("?")
        .trim()
        .to_string();
    let sha = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    (served_by, sha)
}

fn metric(lab: &Lab, node: usize, name: &str) -> f64 {
    let m = lab.scrape_metrics(node).expect("scrape metrics");
    baton_lab::metrics::metric_sum(&m, name).unwrap_or(0.0)
}

/// Why connections fell back or handoffs were refused, on every node, and the agents' last log
/// lines: what an assertion about where a request was served prints when it fails.
fn why_not_handed_off(lab: &Lab) -> String {
    let mut out = String::new();
    for i in 1..=lab.nodes() {
        let reasons: Vec<String> = lab
            .scrape_metrics(i)
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, v)| {
                *v != 0.0 && (k.contains("fallbacks_total{") || k.contains("refused_total{"))
            })
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        out.push_str(&format!(
            "\nn{i}: {}\n{}",
            reasons.join(", "),
            baton_lab::lab::log_tail(&lab.agent_log(i), 10)
        ));
    }
    out
}

/// One series of a counter by reason: `name{reason="reason"}` (0 until first counted).
fn metric_by_reason(lab: &Lab, node: usize, name: &str, reason: &str) -> f64 {
    let m = lab.scrape_metrics(node).expect("scrape metrics");
    m.get(&format!("{name}{{reason=\"{reason}\"}}"))
        .copied()
        .unwrap_or(0.0)
}

/// Sets `setting` (`key=value`) with sysctl in `host`'s namespace.
fn sysctl(lab: &Lab, host: &str, setting: &str) {
    let out = lab.exec(host, &["sysctl", "-qw", setting]).unwrap();
    assert!(
        out.status.success(),
        "sysctl -w {setting} in {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tx_bytes(lab: &Lab, node: usize) -> u64 {
    let out = lab
        .exec(
            &format!("n{node}"),
            &["cat", "/sys/class/net/eth0/statistics/tx_bytes"],
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("tx_bytes")
}

fn assert_tables_drain(lab: &Lab) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let entries: Vec<f64> = (1..=lab.nodes())
            .map(|i| metric(lab, i, "baton_conn_table_entries"))
            .collect();
        if entries.iter().all(|&e| e == 0.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "conn tables not empty 15 s after the last close: {entries:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Sends a request head in pieces with pauses, so it spans several segments; reads the whole
/// response (the request asks the server to close).
fn split_head_request(lab: &Lab, node: usize, target: &str, pause: Duration) -> (String, Vec<u8>) {
    let addr = SocketAddr::new(lab.node_address(node).into(), 80);
    let head = format!(
        "GET {target} HTTP/1.1\r\nHost: baton\r\nUser-Agent: split\r\nConnection: close\r\n\r\n"
    );
    lab.in_client(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        for piece in head.as_bytes().chunks(17) {
            s.write_all(piece).unwrap();
            std::thread::sleep(pause);
        }
        let mut response = Vec::new();
        s.read_to_end(&mut response).expect("read response");
        split_response(&response)
    })
    .unwrap()
}

fn split_response(response: &[u8]) -> (String, Vec<u8>) {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head")
        + 4;
    (
        String::from_utf8_lossy(&response[..end]).to_string(),
        response[end..].to_vec(),
    )
}

fn served_by(head: &str) -> &str {
    head.lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("x-served-by"))
                .map(|(_, v)| v.trim())
        })
        .unwrap_or("?")
}

/// Everything the issue lists for one server kind: sizes, keep-alive, split heads, direct return.
fn handoff_suite(server: ServerKind, prefix: &str) {
    let lab = lab(prefix, 2, server, PolicyKind::Hash);
    assert_eq!(
        server_defers_accept(&lab, 2),
        server.defers_accept(),
        "{server}: whether the server defers accept (TCP_DEFER_ACCEPT)"
    );
    for key in ["net.ipv4.tcp_timestamps", "net.ipv4.tcp_sack"] {
        let out = lab.exec("client", &["sysctl", "-n", key]).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "1",
            "{key} must stay at the kernel default"
        );
    }

    // Each size, handed from n1 to n2, and one served locally for comparison.
    for path in ["/f/1k", "/f/100k", "/f/10m"] {
        let want = expected_sha256(path).unwrap();
        let remote = target_hashed_to(path, 2, 2);
        let tx_before = tx_bytes(&lab, 1);
        let (by, sha) = curl_get(&lab, 1, &remote);
        let tx_n1 = tx_bytes(&lab, 1) - tx_before;
        assert_eq!(
            by,
            "n2",
            "{remote} sent to n1 must be answered by n2{}",
            why_not_handed_off(&lab)
        );
        assert_eq!(sha, want, "{remote}: body differs from the file");
        if path == "/f/10m" {
            let limit = 10_485_760 / 20;
            assert!(
                tx_n1 < limit,
                "n1 sent {tx_n1} bytes during a 10 MB response served by n2 (limit {limit})"
            );
        }
        let local = target_hashed_to(path, 1, 2);
        assert_eq!(curl_get(&lab, 1, &local), ("n1".to_string(), want.clone()));
    }

    // Keep-alive: several requests on one connection, each served by its target's node (the
    // connection follows its requests between nodes).
    let addr = SocketAddr::new(lab.node_address(1).into(), 80);
    let first = target_hashed_to("/f/1k", 2, 2);
    let (connects, results) = lab
        .in_client(move || {
            let mut c = HttpClient::connect(addr).expect("connect");
            let mut results = Vec::new();
            for path in [first.as_str(), "/f/100k", "/index.html", "/f/1k", "/f/100k"] {
                let r = c.get(path).expect("keep-alive request");
                let base = path.split('?').next().unwrap().to_string();
                results.push((
                    r.status,
                    r.served_by().map(str::to_string),
                    base,
                    sha256_hex(&r.body),
                    format!("n{}", node_hashed_for(path, 2)),
                ));
            }
            (c.connects(), results)
        })
        .unwrap();
    assert_eq!(connects, 1, "keep-alive requests must share one connection");
    for (status, by, path, sha, node) in results {
        assert_eq!(status, 200);
        assert_eq!(
            by.as_deref(),
            Some(node.as_str()),
            "{path} on the handed-off connection{}",
            why_not_handed_off(&lab)
        );
        assert_eq!(sha, expected_sha256(&path).unwrap(), "{path}");
    }

    // A request head split across segments.
    let (head, body) = split_head_request(
        &lab,
        1,
        &target_hashed_to("/f/100k", 2, 2),
        Duration::from_millis(20),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(served_by(&head), "n2", "{}", why_not_handed_off(&lab));
    assert_eq!(sha256_hex(&body), expected_sha256("/f/100k").unwrap());

    // Handoffs by the datapaths are counted as their agents read their quiet notices (at the
    // next wakeup, within a round of housekeeping).
    let counted = |node, name| common::metric_reaches(&lab, node, name, 5.0, COUNTED_WITHIN);
    assert!(counted(1, "baton_handoffs_out_total") >= 5.0);
    assert!(counted(2, "baton_handoffs_in_total") >= 5.0);
    assert_eq!(
        metric(&lab, 1, "baton_handoff_fallbacks_total"),
        0.0,
        "no request should have fallen back"
    );
    assert_eq!(
        metric(&lab, 2, "baton_handoffs_refused_total"),
        0.0,
        "n2 should have refused nothing"
    );
    assert_tables_drain(&lab);
}

/// Whether node `i`'s server defers accepting a connection until data arrives (TCP_DEFER_ACCEPT):
/// a connection made from inside the node (over loopback, so past the agent) that sends nothing
/// stays SYN-RECV on the server's side, where otherwise it is established at once.
fn server_defers_accept(lab: &Lab, i: usize) -> bool {
    let addr = lab.node_http_addr(i);
    let silent = lab
        .in_node(i, move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect over lo")
        })
        .unwrap();
    let port = silent.local_addr().unwrap().port();
    let filter = format!("( sport = :80 and dport = :{port} )");
    let out = lab
        .exec(&format!("n{i}"), &["ss", "-Htan", &filter])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let states: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        matches!(states[..], ["SYN-RECV"] | ["ESTAB"]),
        "the server's side of a silent connection: {text:?}"
    );
    drop(silent);
    states == ["SYN-RECV"]
}

#[test]
fn static_server_connections_are_handed_off() {
    handoff_suite(ServerKind::Static, "hs");
}

#[test]
fn nginx_connections_are_handed_off() {
    handoff_suite(ServerKind::Nginx, "hn");
}

#[test]
fn deferred_accept_nginx_connections_are_handed_off() {
    // `listen ... deferred`: n2's nginx sees a handed-in connection only when the replayed
    // request arrives, its first segment completing the handshake.
    handoff_suite(ServerKind::NginxDeferred, "hd");
}

#[test]
fn apache_connections_are_handed_off() {
    // Debian's Apache with its default `AcceptFilter http data` (deferred accept too).
    handoff_suite(ServerKind::Apache, "ha");
}

#[test]
fn request_bodies_arrive_whole() {
    // POST spanning many segments (static server echoes it); PUT to nginx read back directly.
    let lab = lab("pb", 2, ServerKind::Static, PolicyKind::Hash);
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let addr = SocketAddr::new(lab.node_address(1).into(), 80);
    let target = target_hashed_to("/echo", 2, 2);
    let sent = body.clone();
    let r = lab
        .in_client(move || {
            HttpClient::connect(addr)
                .unwrap()
                .post(&target, &sent)
                .unwrap()
        })
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.served_by(), Some("n2"), "{}", why_not_handed_off(&lab));
    assert!(
        r.body == body,
        "echoed body differs ({} bytes back)",
        r.body.len()
    );
    drop(lab);

    let lab = lab_nginx_put();
    drop(lab);
}

fn lab_nginx_put() -> Lab {
    let lab = lab("pn", 2, ServerKind::Nginx, PolicyKind::Hash);
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let target = target_hashed_to("/upload/blob", 2, 2);
    let (n1, n2) = (
        SocketAddr::new(lab.node_address(1).into(), 80),
        SocketAddr::new(lab.node_address(2).into(), 80),
    );
    let sent = body.clone();
    let (put, back) = lab
        .in_client(move || {
            let put = HttpClient::connect(n1)
                .unwrap()
                .put(&target, &sent)
                .unwrap();
            let back = HttpClient::connect(n2)
                .unwrap()
                .get("/upload/blob")
                .unwrap();
            (put, back)
        })
        .unwrap();
    assert!(
        put.status == 201 || put.status == 204,
        "PUT status {}",
        put.status
    );
    assert_eq!(put.served_by(), Some("n2"), "{}", why_not_handed_off(&lab));
    assert!(
        back.body == body,
        "the body n2 stored differs from the one sent to n1"
    );
    lab
}

#[test]
fn wrk_round_robin_on_every_node_has_no_errors() {
    let lab = lab("rr", 3, ServerKind::Static, PolicyKind::RoundRobin);
    let runs: Vec<_> = (1..=3)
        .map(|i| {
            let url = url(&lab, i, "/f/1k");
            baton_lab::lab::exec_command(
                lab.name(),
                "client",
                &["wrk", "-t1", "-c8", "-d10s", url.as_str()],
            )
            .unwrap()
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn wrk (is it installed?)")
        })
        .collect();
    for (i, run) in runs.into_iter().enumerate() {
        let out = run.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "wrk against n{}: {text}", i + 1);
        assert!(
            !text.contains("Non-2xx"),
            "wrk against n{} saw non-2xx responses:\n{text}",
            i + 1
        );
        assert!(
            !text.contains("Socket errors"),
            "wrk against n{} saw socket errors:\n{text}",
            i + 1
        );
        assert!(text.contains("requests in"), "{text}");
    }
    let handed: f64 = (1..=3)
        .map(|i| metric(&lab, i, "baton_handoffs_out_total"))
        .sum();
    assert!(handed > 0.0, "round-robin must hand connections off");
    // What every node exposes after that load passes Prometheus's own linter.
    for i in 1..=3 {
        let text = lab.metrics_text(i).expect("scrape metrics");
        assert!(text.contains("baton_build_info{"), "no build_info:\n{text}");
        assert_promtool_accepts(&text, &format!("n{i}"));
    }
    assert_tables_drain(&lab);
}

/// `promtool check metrics` (Debian's `prometheus` package) exits 0 on `text`.
fn assert_promtool_accepts(text: &str, what: &str) {
    use std::process::{Command, Stdio};
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian's prometheus package)");
    promtool
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics on {what}'s metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn what_cannot_be_distributed_is_served_locally() {
    let lab = lab("fb", 2, ServerKind::Static, PolicyKind::Hash);
    let n1 = SocketAddr::new(lab.node_address(1).into(), 80);

    // A head that trickles in slower than the hold limit: n1 serves it after all.
    let (head, body) = split_head_request(
        &lab,
        1,
        &target_hashed_to("/f/1k", 2, 2),
        Duration::from_millis(600),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(served_by(&head), "n1");
    assert_eq!(sha256_hex(&body), expected_sha256("/f/1k").unwrap());
    assert!(metric(&lab, 1, "baton_handoff_fallbacks_total") >= 1.0);

    // Not HTTP: still delivered to n1's server, which answers it.
    let reply = lab
        .in_client(move || {
            let mut s = TcpStream::connect_timeout(&n1, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"HELLO THERE\r\n\r\n").unwrap();
            let mut r = Vec::new();
            let _ = s.read_to_end(&mut r);
            r
        })
        .unwrap();
    assert!(
        reply.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&reply)
    );

    // Options that differ between the nodes: n2 refuses, n1 serves.
    sysctl(&lab, "n2", "net.ipv4.tcp_window_scaling=0");
    let (by, sha) = curl_get(&lab, 1, &target_hashed_to("/f/100k", 2, 2));
    assert_eq!(
        (by.as_str(), sha),
        ("n1", expected_sha256("/f/100k").unwrap())
    );
    // Refused by n2's agent, or by its datapath (a datapath offer: hash decides it there).
    let refused_by_n2 = || {
        metric(&lab, 2, "baton_handoffs_refused_total")
            + metric(&lab, 2, "baton_datapath_offers_refused_total")
    };
    let refused = refused_by_n2();
    assert!(refused >= 1.0, "n2 refused nothing");
    sysctl(&lab, "n2", "net.ipv4.tcp_window_scaling=1");

    // Tuple collision at the BE: the client talks to n2 directly from the port it now uses
    // toward n1, for a target n1 hands to n2. n2's TCP answers the replayed SYN as a duplicate:
    // n2 refuses, n1 serves, both connections stay whole.
    let n2 = SocketAddr::new(lab.node_address(2).into(), 80);
    let (on_n1, on_n2) = (
        target_hashed_to("/f/1k", 1, 2),
        target_hashed_to("/f/1k", 2, 2),
    );
    let (direct_target, via_target) = (on_n2.clone(), on_n2.clone());
    let results = lab
        .in_client(move || {
            let direct = socket_on_port(0);
            let port = direct.local_addr().unwrap().as_socket().unwrap().port();
            direct.connect(&n2.into()).unwrap();
            let mut direct: TcpStream = direct.into();
            let first = exchange(&mut direct, &direct_target);
            let via_n1 = socket_on_port(port);
            via_n1.connect(&n1.into()).unwrap();
            let mut via_n1: TcpStream = via_n1.into();
            let collided = exchange(&mut via_n1, &via_target);
            let again = exchange(&mut direct, &direct_target);
            (first, collided, again)
        })
        .unwrap();
    for (what, (head, body), by) in [
        ("direct", results.0, "n2"),
        ("colliding", results.1, "n1"),
        ("direct again", results.2, "n2"),
    ] {
        assert!(head.starts_with("HTTP/1.1 200"), "{what}: {head}");
        assert_eq!(served_by(&head), by, "{what}");
        assert_eq!(
            sha256_hex(&body),
            expected_sha256("/f/1k").unwrap(),
            "{what}"
        );
    }
    assert!(
        refused_by_n2() > refused,
        "n2 did not refuse the colliding offer"
    );

    // Tuple collision at the FE: while a connection from port P is handed in to n1, a new SYN from
    // P to n1 is dropped (never merged into the handed-in connection); once it closes, P works.
    let (refused, later) = lab
        .in_client(move || {
            let direct = socket_on_port(0);
            let port = direct.local_addr().unwrap().as_socket().unwrap().port();
            direct.connect(&n2.into()).unwrap();
            let mut direct: TcpStream = direct.into();
            let (head, _) = exchange(&mut direct, &on_n1);
            assert_eq!(
                served_by(&head),
                "n1",
                "the direct connection is handed to n1"
            );
            let early = socket_on_port(port);
            let refused = early
                .connect_timeout(&n1.into(), Duration::from_millis(1500))
                .is_err();
            drop(early);
            drop(direct);
            std::thread::sleep(Duration::from_secs(4)); // close linger + GC
            let late = socket_on_port(port);
            late.connect_timeout(&n1.into(), Duration::from_secs(5))
                .expect("the port is free again");
            let mut late: TcpStream = late.into();
            (refused, exchange(&mut late, &on_n1))
        })
        .unwrap();
    assert!(refused, "a SYN on a handed-in tuple must not connect");
    assert!(metric(&lab, 1, "baton_dropped_packets_total") >= 1.0);
    assert_eq!(served_by(&later.0), "n1");
    assert_eq!(sha256_hex(&later.1), expected_sha256("/f/1k").unwrap());

    // A client that resets while held leaves nothing behind.
    lab.in_client(move || {
        let s = TcpStream::connect_timeout(&n1, Duration::from_secs(5)).unwrap();
        (&s).write_all(b"GET /f/1k HTTP/1.1\r\nHo").unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    })
    .unwrap();

    // A forged control frame is rejected and counted; the mesh stays up.
    let control = SocketAddr::new(lab.node_address(1).into(), 7070);
    lab.in_client(move || {
        let mut s = TcpStream::connect_timeout(&control, Duration::from_secs(5)).unwrap();
        let mut forged = b"BT\x01\x01".to_vec();
        forged.extend_from_slice(&20u32.to_be_bytes());
        forged.extend_from_slice(&[0u8; 8 + 20 + 16]);
        let _ = s.write_all(&forged);
        let mut sink = [0u8; 64];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.read(&mut sink);
    })
    .unwrap();
    assert!(metric(&lab, 1, "baton_mesh_rejected_frames_total") >= 1.0);
    assert_eq!(metric(&lab, 1, "baton_mesh_peers_up"), 1.0);
    assert_tables_drain(&lab);
}

/// One keep-alive request on a raw connection; reads exactly the response (Content-Length).
fn exchange(s: &mut TcpStream, target: &str) -> (String, Vec<u8>) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: baton\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = s.read(&mut chunk).expect("read response");
        assert!(n > 0, "connection closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                })
                .map(|(_, v)| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return (head, buf[end + 4..end + 4 + len].to_vec());
            }
        }
    }
}

#[test]
fn demo_runs_and_reports() {
    // Its own name: `baton lab demo` on this machine, or another test's demo, does not collide.
    let name = baton_lab::lab::unique_name("tdemo");
    let out = std::process::Command::new(BATON)
        .args(["lab", "demo", "--name", &name])
        .output()
        .expect("run baton lab demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for word in [
        "accepted",
        "local",
        "handed out",
        "handed in",
        "client bytes",
        "n1",
        "n2",
        "n3",
    ] {
        assert!(text.contains(word), "demo report lacks {word:?}:\n{text}");
    }
}

#[test]
fn peers_that_are_down_are_never_chosen_and_come_back() {
    let mut lab = lab("pd", 2, ServerKind::Static, PolicyKind::Hash);
    let remote = target_hashed_to("/f/1k", 2, 2);
    assert_eq!(curl_get(&lab, 1, &remote).0, "n2");

    // SIGHUP (a reload an operator tries) does not end an agent.
    let pid = lab.agent_pid(1).expect("n1's agent runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP n1's agent");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "SIGHUP ended the agent"
    );
    assert_eq!(curl_get(&lab, 1, &remote).0, "n2", "still handing off");

    // A second agent on the same interface is refused, and says why; the first goes on.
    let config = lab.node_dir(1).join("agent.toml");
    let second = lab
        .exec(
            "n1",
            &[
                "timeout",
                "10",
                BATON,
                "node",
                "--config",
                config.to_str().unwrap(),
            ],
        )
        .expect("run a second agent");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second agent ran: {stderr}");
    assert!(
        stderr.contains("baton programs are attached to eth0"),
        "{stderr}"
    );
    assert_eq!(
        attached_programs(&lab, 1),
        (1, 1),
        "nothing attached beside"
    );
    assert_eq!(
        curl_get(&lab, 1, &remote).0,
        "n2",
        "the first agent goes on"
    );

    assert_eq!(
        attached_programs(&lab, 2),
        (1, 1),
        "a running agent has its programs on eth0"
    );
    lab.stop_agent(2).expect("stop n2's agent");
    // An agent stopped for good leaves no trace: no program on the interface, no qdisc, nothing
    // pinned.
    assert_eq!(attached_programs(&lab, 2), (0, 0));
    let qdiscs = lab
        .exec("n2", &["tc", "qdisc", "show", "dev", "eth0"])
        .unwrap();
    assert!(!String::from_utf8_lossy(&qdiscs.stdout).contains("clsact"));
    let pin_dir = pin_dir(&lab, 2);
    assert!(!pin_dir.exists(), "{} is left", pin_dir.display());
    wait_for(
        || metric(&lab, 1, "baton_mesh_peers_up") == 0.0,
        "n1 to see n2 down",
    );
    let start = Instant::now();
    let (by, sha) = curl_get(&lab, 1, &remote);
    assert_eq!(
        (by.as_str(), sha.as_str()),
        ("n1", expected_sha256("/f/1k").unwrap().as_str())
    );
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "a down peer must not cost a handoff timeout"
    );

    lab.restart_agents(PolicyKind::Hash)
        .expect("restart the agents");
    assert_eq!(
        curl_get(&lab, 1, &remote).0,
        "n2",
        "handoffs resume once the peer is back"
    );
}

#[test]
fn odd_clients_are_served() {
    let lab = lab("oc", 2, ServerKind::Static, PolicyKind::Hash);
    let n1 = SocketAddr::new(lab.node_address(1).into(), 80);

    // HTTP/1.0 client that half-closes right after its request: the FIN is held with the head
    // and handed over with it.
    let target = target_hashed_to("/f/100k", 2, 2);
    let (head, body) = lab
        .in_client(move || {
            let mut s = TcpStream::connect_timeout(&n1, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(format!("GET {target} HTTP/1.0\r\n\r\n").as_bytes())
                .unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut r = Vec::new();
            s.read_to_end(&mut r).unwrap();
            split_response(&r)
        })
        .unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert_eq!(served_by(&head), "n2");
    assert_eq!(sha256_hex(&body), expected_sha256("/f/100k").unwrap());

    // A head over the hold limit (8 KiB): served locally, whole.
    let target = target_hashed_to("/f/1k", 2, 2);
    let (head, body) = lab
        .in_client(move || {
            let mut s = TcpStream::connect_timeout(&n1, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let cookie = "c".repeat(12_000);
            let req = format!("GET {target} HTTP/1.1\r\nHost: baton\r\nCookie: big={cookie}\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).unwrap();
            let mut r = Vec::new();
            s.read_to_end(&mut r).unwrap();
            split_response(&r)
        })
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(served_by(&head), "n1");
    assert_eq!(sha256_hex(&body), expected_sha256("/f/1k").unwrap());
    assert!(metric(&lab, 1, "baton_handoff_fallbacks_total") >= 1.0);
    assert_tables_drain(&lab);
}

/// Programs attached (TCX) to node `i`'s eth0: (ingress, egress).
fn attached_programs(lab: &Lab, i: usize) -> (usize, usize) {
    use aya::programs::{SchedClassifier, TcAttachType};
    lab.in_node(i, || {
        let count = |kind| {
            SchedClassifier::query_tcx("eth0", kind)
                .map(|(_, p)| p.len())
                .expect("query TCX on eth0")
        };
        (count(TcAttachType::Ingress), count(TcAttachType::Egress))
    })
    .unwrap()
}

fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// TCP counters of a node (`/proc/net/netstat`, TcpExt section), read inside its namespace.
fn tcp_ext(lab: &Lab, host: &str, name: &str) -> u64 {
    let out = lab.exec(host, &["cat", "/proc/net/netstat"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn handed_off_transfers_survive_a_lossy_link() {
    // The client's link drops 3% of the HTTP segments both ways: the BE retransmits, the client's
    // SACK blocks (in the FE's sequence space) reach the BE translated, timestamps keep PAWS happy.
    let lab = lab("ls", 2, ServerKind::Static, PolicyKind::Hash);
    common::make_client_link_lossy(&lab);
    let recoveries_before = tcp_ext(&lab, "n2", "TCPSackRecovery");
    let remote = target_hashed_to("/f/10m", 2, 2);
    for _ in 0..3 {
        assert_eq!(
            curl_get(&lab, 1, &remote),
            ("n2".to_string(), expected_sha256("/f/10m").unwrap())
        );
    }
    assert!(
        tcp_ext(&lab, "n2", "TCPSackRecovery") > recoveries_before,
        "the BE recovered losses with SACK (translated SACK blocks)"
    );
    lab.exec("client", &["nft", "delete table inet lossy"])
        .unwrap();
    assert_tables_drain(&lab);
}

#[test]
fn a_forged_reset_does_not_end_a_handed_off_connection() {
    // A RST far outside the window, forged with the client's address and port, passes the FE and
    // reaches the BE's datapath, which sees "a RST". The BE's TCP ignores it (RFC 5961), and so must
    // baton: the connection keeps working after the close linger.
    let lab = lab("fr", 2, ServerKind::Static, PolicyKind::Hash);
    let n1 = SocketAddr::new(lab.node_address(1).into(), 80);
    let target = target_hashed_to("/f/1k", 2, 2);
    let (first, second) = lab
        .in_client(move || {
            let mut s = TcpStream::connect_timeout(&n1, Duration::from_secs(5)).unwrap();
            let first = exchange(&mut s, &target);
            let client = match s.local_addr().unwrap() {
                SocketAddr::V4(a) => a,
                SocketAddr::V6(_) => unreachable!(),
            };
            let mut rst = baton_wire::TcpPacketBuilder::new(
                *client.ip(),
                client.port(),
                Ipv4Addr::new(198, 18, 0, 1),
                80,
            );
            rst.seq = 0x4000_0000; // nowhere near the window
            rst.flags = baton_wire::TcpFlags::RST;
            let raw = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
            )
            .expect("raw socket");
            raw.send_to(
                &rst.build(),
                &SocketAddr::from((Ipv4Addr::new(198, 18, 0, 1), 0)).into(),
            )
            .expect("send the forged RST");
            std::thread::sleep(Duration::from_secs(4)); // past the close linger and a GC
            let second = exchange(&mut s, &target);
            (first, second)
        })
        .unwrap();
    for (what, (head, body)) in [("before", first), ("after the forged RST", second)] {
        assert!(head.starts_with("HTTP/1.1 200"), "{what}: {head}");
        assert_eq!(served_by(&head), "n2", "{what}");
        assert_eq!(
            sha256_hex(&body),
            expected_sha256("/f/1k").unwrap(),
            "{what}"
        );
    }
}

#[test]
fn locality_policies_keep_a_target_on_one_node_while_loads_are_low() {
    // Requests one after another, each once the load reports (every heartbeat, 250 ms) have
    // caught up with the previous one: the cluster is idle, so the target must not move,
    // whichever node the client reaches (LARD: one table at the dispatcher; bounded-hash: one
    // ring everywhere).
    for policy in [PolicyKind::Lard, PolicyKind::BoundedHash] {
        let lab = lab("lp", 3, ServerKind::Static, policy);
        for target in ["/f/1k?obj=a", "/f/100k?obj=b", "/index.html?obj=c"] {
            let servers: std::collections::HashSet<String> = [1, 2, 3, 1, 2, 3]
                .into_iter()
                .map(|entry| {
                    std::thread::sleep(Duration::from_millis(400));
                    curl_get(&lab, entry, target).0
                })
                .collect();
            assert_eq!(
                servers.len(),
                1,
                "{policy}: {target} was served by {servers:?}"
            );
        }
        if policy == PolicyKind::BoundedHash {
            // Plain first requests, low loads: the datapaths decide every one by the agents' ring.
            let by_datapaths: f64 = (1..=3)
                .map(|i| {
                    metric(&lab, i, "baton_datapath_decided_local_total")
                        + metric(&lab, i, "baton_datapath_offers_total")
                })
                .sum();
            assert!(
                by_datapaths >= 18.0,
                "the datapaths decided bounded-hash ({by_datapaths} of 18)"
            );
        }
        if policy == PolicyKind::Lard {
            let answers: f64 = (1..=3)
                .map(|i| metric(&lab, i, "baton_dispatch_answers_total"))
                .sum();
            assert!(
                answers >= 8.0,
                "the dispatcher decided for the others ({answers})"
            );
        }
    }
}

#[test]
fn a_new_lard_dispatcher_takes_over_when_the_first_is_gone() {
    let mut lab = lab("dt", 3, ServerKind::Static, PolicyKind::Lard);
    let target = "/f/1k?obj=takeover";
    assert_eq!(
        curl_get(&lab, 2, target).1,
        expected_sha256("/f/1k").unwrap()
    );
    lab.stop_agent(1).expect("stop n1's agent (the dispatcher)");
    wait_for(
        || {
            metric(&lab, 2, "baton_mesh_peers_up") == 1.0
                && metric(&lab, 3, "baton_mesh_peers_up") == 1.0
        },
        "n2 and n3 to see n1 gone",
    );
    let before = metric(&lab, 2, "baton_dispatch_answers_total");
    let mut servers = std::collections::HashSet::new();
    for entry in [3, 2, 3, 2] {
        std::thread::sleep(Duration::from_millis(200));
        let (by, sha) = curl_get(&lab, entry, target);
        assert_eq!(sha, expected_sha256("/f/1k").unwrap());
        servers.insert(by);
    }
    assert_eq!(servers.len(), 1, "one table again, now at n2: {servers:?}");
    assert!(
        metric(&lab, 2, "baton_dispatch_answers_total") > before,
        "n2 answers for n3 now"
    );
}

#[test]
fn stopping_the_lard_dispatcher_mid_workload_fails_no_request() {
    // wrk, a new connection per request, against n2 and n3 while n1 (the dispatcher, and a
    // serving node) stops: it drains (tells its peers, takes nothing new, finishes what it has),
    // n2 takes over the table, and no request fails.
    let mut lab = lab("df", 3, ServerKind::Static, PolicyKind::Lard);
    let runs: Vec<_> = [2, 3]
        .into_iter()
        .map(|i| {
            let url = url(&lab, i, "/f/1k");
            baton_lab::lab::exec_command(
                lab.name(),
                "client",
                &[
                    "wrk",
                    "-t1",
                    "-c4",
                    "-d6s",
                    "-H",
                    "Connection: close",
                    url.as_str(),
                ],
            )
            .unwrap()
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn wrk")
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let answered_before = metric(&lab, 1, "baton_dispatch_answers_total");
    lab.stop_agent(1).expect("stop n1's agent");
    for (i, run) in runs.into_iter().enumerate() {
        let out = run.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "wrk against n{}: {text}", i + 2);
        assert!(text.contains("requests in"), "{text}");
        assert!(
            !text.contains("Non-2xx"),
            "wrk against n{} saw non-2xx responses:\n{text}",
            i + 2
        );
        assert!(
            !text.contains("Socket errors"),
            "wrk against n{} saw socket errors:\n{text}",
            i + 2
        );
    }
    assert!(
        answered_before > 0.0,
        "n1 was the dispatcher before it stopped"
    );
    assert!(
        metric(&lab, 2, "baton_dispatch_answers_total") > 0.0,
        "n2 took over"
    );
}

/// A packet capture in one host of a lab: `tcpdump -w -` on its eth0, read as it comes.
struct PacketCapture {
    tcpdump: std::process::Child,
    reader: std::thread::JoinHandle<Vec<u8>>,
    messages: std::sync::mpsc::Receiver<String>,
}

/// What a test reads of one captured IPv4/TCP packet.
#[derive(Debug, Clone, Copy)]
struct CapturedSegment {
    /// The ECN field of the IP header: 0 Not-ECT, 1 ECT(1), 2 ECT(0), 3 CE.
    ecn: u8,
    flags: u8,
    seq: u32,
    payload_len: u32,
}

const SNAPLEN: usize = 128; // Ethernet, IPv4 and TCP headers with every option

impl PacketCapture {
    /// Starts capturing what `filter` (pcap syntax) selects; returns once tcpdump listens.
    fn start(lab: &Lab, host: &str, filter: &str) -> PacketCapture {
        use std::io::BufRead;
        let snaplen = SNAPLEN.to_string();
        let mut tcpdump = baton_lab::lab::exec_command(
            lab.name(),
            host,
            &[
                "tcpdump",
                "-i",
                "eth0",
                "-n",
                // Each packet handed over and written at once: none left in a ring block or a
                // buffer when tcpdump is stopped.
                "--immediate-mode",
                "-U",
                "-s",
                &snaplen,
                "-w",
                "-",
                filter,
            ],
        )
        .unwrap()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tcpdump (is it installed?)");
        let mut stdout = tcpdump.stdout.take().unwrap();
        // Drained all along, so that tcpdump never blocks on a full pipe and drops packets.
        let reader = std::thread::spawn(move || {
            let mut pcap = Vec::new();
            stdout
                .read_to_end(&mut pcap)
                .expect("read tcpdump's output");
            pcap
        });
        // Its messages, read until it exits: "listening on" says the filter is in place.
        let (tx, messages) = std::sync::mpsc::channel();
        let stderr = tcpdump.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut said = Vec::new();
        loop {
            match messages.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains("listening on") => break,
                Ok(line) => said.push(line),
                Err(_) => panic!("tcpdump did not start listening: {}", said.join("\n")),
            }
        }
        PacketCapture {
            tcpdump,
            reader,
            messages,
        }
    }

    /// Stops tcpdump (SIGTERM: it writes what it has and exits) and returns the TCP segments it
    /// captured.
    fn stop(mut self) -> Vec<CapturedSegment> {
        // SAFETY: kill(2) takes plain integers; the child is ours and not yet reaped.
        unsafe { libc::kill(self.tcpdump.id() as i32, libc::SIGTERM) };
        let status = self.tcpdump.wait().unwrap();
        let pcap = self.reader.join().unwrap();
        let said: Vec<String> = self.messages.iter().collect();
        assert!(status.success(), "tcpdump: {status}: {}", said.join("\n"));
        parse_pcap(&pcap)
    }
}

/// The TCP segments in a pcap file of Ethernet frames (tcpdump's classic format, native order).
fn parse_pcap(pcap: &[u8]) -> Vec<CapturedSegment> {
    assert!(pcap.len() >= 24, "no pcap header ({} bytes)", pcap.len());
    let magic = u32::from_ne_bytes(pcap[..4].try_into().unwrap());
    assert!(
        magic == 0xa1b2_c3d4 || magic == 0xa1b2_3c4d,
        "not a native-order pcap file: magic {magic:#x}"
    );
    let linktype = u32::from_ne_bytes(pcap[20..24].try_into().unwrap());
    assert_eq!(linktype, 1, "Ethernet frames");
    let be16 = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    let mut segments = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let captured = u32::from_ne_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &pcap[at + 16..(at + 16 + captured).min(pcap.len())];
        at += 16 + captured;
        if frame.len() < 14 + 20 || be16(frame, 12) != 0x0800 {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[9] != 6 || ip.len() < ihl + 20 {
            continue;
        }
        let tcp = &ip[ihl..];
        let doff = u32::from(tcp[12] >> 4) * 4;
        segments.push(CapturedSegment {
            ecn: ip[1] & 0x03,
            flags: tcp[13],
            seq: u32::from_be_bytes(tcp[4..8].try_into().unwrap()),
            payload_len: u32::from(be16(ip, 2)).saturating_sub(ihl as u32 + doff),
        });
    }
    segments
}

/// Fetches `target` from node `node` with curl while capturing what the client receives from
/// port 80 of `node`'s address (the FE's: a BE answers with it too); checks the response came
/// from `expect_served_by`, whole. Returns (SYN-ACKs with ECE, data segments sent for the first
/// time, how many of those were ECN-capable).
fn ecn_of_a_download(
    lab: &Lab,
    node: usize,
    target: &str,
    expect_served_by: &str,
) -> (usize, usize, usize) {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const ECE: u8 = 0x40;
    let filter = format!("src host {} and tcp src port 80", lab.node_address(node));
    let capture = PacketCapture::start(lab, "client", &filter);
    let (by, sha) = curl_get(lab, node, target);
    let segments = capture.stop();
    let path = target.split('?').next().unwrap();
    assert_eq!(by, expect_served_by, "{target} sent to n{node}");
    assert_eq!(
        sha,
        expected_sha256(path).unwrap(),
        "{target}: body differs"
    );

    let syn_acks_with_ece = segments
        .iter()
        .filter(|s| s.flags & (SYN | ACK | ECE) == SYN | ACK | ECE)
        .count();
    // Retransmissions go out Not-ECT (RFC 3168 §6.1.5): only first transmissions count.
    let mut sent_up_to: Option<u32> = None;
    let mut fresh = Vec::new();
    for s in segments.iter().filter(|s| s.payload_len > 0) {
        let end = s.seq.wrapping_add(s.payload_len);
        let is_new = sent_up_to.is_none_or(|upto| (end.wrapping_sub(upto) as i32) > 0);
        if is_new {
            fresh.push(*s);
            sent_up_to = Some(end);
        }
    }
    let ect = fresh.iter().filter(|s| s.ecn != 0).count();
    (syn_acks_with_ece, fresh.len(), ect)
}

#[test]
fn handed_off_connections_keep_ecn() {
    // The client asks for ECN (tcp_ecn=1); the nodes accept it when asked (the kernel default,
    // tcp_ecn=2). The BE's TCP must have agreed on ECN too, so its data segments are ECT.
    let lab = lab("ec", 2, ServerKind::Static, PolicyKind::Hash);
    sysctl(&lab, "client", "net.ipv4.tcp_ecn=1");

    // Served locally first: what ECN looks like in this lab without a handoff.
    let (ece, data, ect) = ecn_of_a_download(&lab, 1, &target_hashed_to("/f/100k", 1, 2), "n1");
    assert_eq!(ece, 1, "n1's SYN-ACK agrees on ECN");
    assert!(
        data > 0 && ect == data,
        "n1 served locally: {ect} of {data} data segments ECT"
    );

    let handed_in = common::settled_metric(&lab, 2, "baton_handoffs_in_total");
    let (ece, data, ect) = ecn_of_a_download(&lab, 1, &target_hashed_to("/f/10m", 2, 2), "n2");
    assert_eq!(
        ece, 1,
        "the client sees one SYN-ACK (the FE's), agreeing on ECN"
    );
    assert!(data >= 100, "10 MB in only {data} data segments?");
    assert_eq!(
        ect, data,
        "data segments the BE sent ECN-capable: {ect} of {data}"
    );
    let handed = common::metric_reaches(
        &lab,
        2,
        "baton_handoffs_in_total",
        handed_in + 1.0,
        COUNTED_WITHIN,
    );
    assert_eq!(handed, handed_in + 1.0, "one more handed in");
    assert_eq!(metric(&lab, 1, "baton_handoff_fallbacks_total"), 0.0);
    assert_eq!(metric(&lab, 2, "baton_handoffs_refused_total"), 0.0);
}

/// How long the cluster may take to learn that a node's server stopped or started listening
/// (its agent looks when its listeners change, at the next 250 ms round, and tells its peers in
/// that round's heartbeat): a generous bound.
const LISTENER_NEWS: Duration = Duration::from_secs(3);

/// One GET on a fresh connection from the client: (status, X-Served-By, body's sha256).
fn get_once(lab: &Lab, node: usize, target: &str) -> (u16, String, String) {
    let addr = lab.node_http_addr(node);
    let target = target.to_string();
    let r = lab
        .in_client(move || {
            baton_lab::http_client::http_get_timeout(addr, &target, Duration::from_secs(10))
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("GET from n{node}: {e}"));
    (
        r.status,
        r.served_by().unwrap_or("?").to_string(),
        sha256_hex(&r.body),
    )
}

#[test]
fn a_node_whose_server_stops_listening_is_not_chosen_until_it_listens_again() {
    const FALLBACKS: &str = "baton_handoff_fallbacks_total";
    const REFUSED: &str = "baton_handoffs_refused_total";
    let mut lab = lab("nl", 2, ServerKind::Static, PolicyKind::Hash);
    let target = target_hashed_to("/f/1k", 2, 2);
    let want = expected_sha256("/f/1k").unwrap();
    // Every request for n2's target, sent to n1, is answered whole: by `by`, if given.
    let request = |lab: &Lab, by: Option<&str>, what: &str| {
        let (status, served_by, sha) = get_once(lab, 1, &target);
        assert_eq!((status, sha.as_str()), (200, want.as_str()), "{what}");
        if let Some(by) = by {
            assert_eq!(served_by, by, "{what}");
        }
        served_by
    };
    // Refused because nothing listens, and counted so on both sides: not a collision. An
    // offer is the agents' or the datapath's; n2's datapath refuses its own with the reason in
    // the offer it turns back, which n1's agent counts when it reads the quiet notice of it, at
    // its next wakeup: waited for.
    let refused_no_listener = |lab: &Lab| {
        let counts = || {
            (
                metric_by_reason(lab, 1, FALLBACKS, "refused_no_listener"),
                metric_by_reason(lab, 2, REFUSED, "no_listener"),
                metric(lab, 2, "baton_datapath_offers_refused_total"),
            )
        };
        common::wait_until(COUNTED_WITHIN, || {
            let (fe, by_agent, by_datapath) = counts();
            fe == by_agent + by_datapath
        });
        let (fe, by_agent, by_datapath) = counts();
        assert_eq!(
            fe,
            by_agent + by_datapath,
            "n1's refused_no_listener fallbacks vs n2's refusals (agent's no_listener, datapath's)"
        );
        assert_eq!(
            metric(lab, 2, REFUSED),
            by_agent,
            "n2's agent refused for no other reason"
        );
        fe
    };
    request(&lab, Some("n2"), "before the stop");

    // n2's server goes, its agent stays. Requests follow at once, one after another, for
    // LISTENER_NEWS and one more second: n1 serves every one; n2 refuses those offered before n1
    // learns (no_listener), then is offered none.
    lab.stop_server(2).expect("stop n2's server");
    let stopped = Instant::now();
    let (mut refusals, mut last_refusal) = (0.0, Duration::ZERO);
    let mut handoffs_at_bound = None;
    let mut requests = 0;
    while stopped.elapsed() < LISTENER_NEWS + Duration::from_secs(1) {
        let sent_at = stopped.elapsed();
        requests += 1;
        request(
            &lab,
            Some("n1"),
            &format!("request {requests}, {sent_at:?} after n2's server stopped"),
        );
        let now_refused = refused_no_listener(&lab);
        if now_refused > refusals {
            (refusals, last_refusal) = (now_refused, sent_at);
        }
        if sent_at >= LISTENER_NEWS && handoffs_at_bound.is_none() {
            handoffs_at_bound = Some(metric(&lab, 1, "baton_handoffs_out_total"));
        }
    }
    assert!(
        refusals >= 1.0,
        "the first of {requests} requests after the stop were offered to n2 and refused"
    );
    assert!(
        last_refusal < LISTENER_NEWS,
        "n2 was still offered connections {last_refusal:?} after its server stopped"
    );
    assert_eq!(
        Some(metric(&lab, 1, "baton_handoffs_out_total")),
        handoffs_at_bound,
        "n1 handed connections out after LISTENER_NEWS"
    );

    // Its server back: n2 is chosen again within LISTENER_NEWS, and nothing fails meanwhile.
    lab.restart_server(2).expect("restart n2's server");
    let restarted = Instant::now();
    while request(&lab, None, "after the restart") != "n2" {
        assert!(
            restarted.elapsed() < LISTENER_NEWS,
            "n2 not chosen {LISTENER_NEWS:?} after its server listens again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        refused_no_listener(&lab),
        refusals,
        "no refusal once it listens"
    );

    // Stopped again, and left alone for LISTENER_NEWS: n2's heartbeats alone tell n1, so the
    // requests that follow are not even offered to n2.
    lab.stop_server(2).expect("stop n2's server again");
    std::thread::sleep(LISTENER_NEWS);
    for k in 0..20 {
        request(
            &lab,
            Some("n1"),
            &format!("request {k} after the second stop"),
        );
    }
    assert_eq!(
        refused_no_listener(&lab),
        refusals,
        "n1 offered n2 connections although n2's heartbeats said it does not listen"
    );
    assert_tables_drain(&lab);
}
