//! End to end: keep-alive connections followed request by request (`[policy] per_request`).
//! Real labs, real agents and datapaths, nginx; clients in the lab's client namespace. Needs
//! root, eBPF and nginx; a missing piece fails the test.
//!
//! With `hash`, every target has one node, and a connection to n1 that asks for targets of
//! n2 and n3 in turn must move between them at each request boundary, byte for byte.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use baton_lab::content::lab_file;
use baton_lab::http_client::HttpClient;
use baton_lab::{Lab, LabSpec, ServerKind};
use baton_policy::PolicyKind;

mod common;
use common::{metric, metric_reaches};

const BATON: &str = env!("CARGO_BIN_EXE_baton");

fn lab(prefix: &str) -> Lab {
    let spec = LabSpec::new(baton_lab::lab::unique_name(prefix), 3)
        .server(ServerKind::Nginx)
        .policy(PolicyKind::Hash)
        .per_request(true)
        .exe(BATON);
    Lab::up(spec).expect("lab up (needs root, iproute2, nginx)")
}

/// `count` distinct targets for `path` that `hash` assigns to `node` (1-based) of n1..n3;
/// `salt` keeps the targets of different callers apart.
fn targets_for(path: &str, node: usize, count: usize, salt: &str) -> Vec<String> {
    (0..count)
        .map(|i| {
            let base = format!("{path}?{salt}{i}");
            baton_policy::Hash::target_for(&base, &["n1", "n2", "n3"], node - 1)
                .expect("a target for every node")
        })
        .collect()
}

fn failed(lab: &Lab, what: &str) -> String {
    let mut out = format!("{what}\n");
    for i in 1..=3 {
        for name in [
            "baton_rehandoffs_total",
            "baton_requests_stayed_total",
            "baton_datapath_requests_stayed_total",
            "baton_moved_away_total",
            "baton_quiesce_rechecks_total",
        ] {
            out.push_str(&format!("n{i} {name} = {}\n", metric(lab, i, name)));
        }
        if let Ok(text) = lab.metrics_text(i) {
            for line in text
                .lines()
                .filter(|l| l.starts_with("baton_rehandoff_fallbacks_total"))
            {
                out.push_str(&format!("n{i} {line}\n"));
            }
        }
        let log = std::fs::read_to_string(lab.agent_log(i)).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("WARN")).take(20) {
            out.push_str(&format!("n{i} log: {line}\n"));
        }
    }
    out
}

#[test]
fn every_request_of_a_keep_alive_connection_is_served_by_its_targets_node() {
    let mut lab = lab("preq");
    let n1: SocketAddr = lab.node_http_addr(1);
    // Six browser-like connections, each fetching 20 targets of n1, n2 and n3 in turn, so that
    // each connection moves away from the node that accepted it and back, at every request.
    let plan: Vec<Vec<(String, usize)>> = (0..6)
        .map(|c| {
            (0..20)
                .map(|r| {
                    // Offset per connection so the connections do not move in step.
                    let node = (r + c) % 3 + 1;
                    let target = targets_for("/f/1k", node, 1, &format!("c{c}r{r}-")).remove(0);
                    (target, node)
                })
                .collect()
        })
        .collect();
    let results = lab
        .in_client(move || {
            let mut out = Vec::new();
            for requests in plan {
                let mut client = HttpClient::connect(n1).expect("connect to n1");
                for (target, node) in requests {
                    let response = client
                        .get(&target)
                        .expect("GET on the kept-alive connection");
                    out.push((
                        target,
                        node,
                        response.status,
                        response.served_by().unwrap_or("?").to_string(),
                        response.body == lab_file("/f/1k").unwrap(),
                    ));
                }
                assert_eq!(client.connects(), 1, "the connection was kept alive");
            }
            out
        })
        .expect("run in the client namespace");
    let mut wrong = Vec::new();
    for (target, node, status, served_by, body_ok) in &results {
        if *status != 200 || !body_ok || served_by != &format!("n{node}") {
            wrong.push(format!(
                "{target}: {status} from {served_by}, body ok {body_ok}, want n{node}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{}",
        failed(
            &lab,
            &format!(
                "{} of {} requests wrong:\n{}",
                wrong.len(),
                results.len(),
                wrong.join("\n")
            )
        )
    );
    assert!(
        metric(&lab, 1, "baton_rehandoffs_total") >= 6.0 * 19.0,
        "{}",
        failed(&lab, "every request after the first moved")
    );
    lab.down().expect("lab down");
}

/// A request the serving node has not answered in full cannot move: with two requests in one
/// segment (pipelined), both are answered by the node that has the connection, in order.
#[test]
fn pipelined_requests_stay_where_they_are_and_are_answered_in_order() {
    let mut lab = lab("ppipe");
    let n1: SocketAddr = lab.node_http_addr(1);
    let first = targets_for("/f/1k", 2, 1, "first").remove(0);
    let then: Vec<String> = targets_for("/f/100k", 3, 2, "then");
    let (a, b) = (then[0].clone(), then[1].clone());
    let text = lab
        .in_client(move || {
            let mut s = TcpStream::connect(n1).expect("connect");
            let get = |t: &str| format!("GET {t} HTTP/1.1\r\nHost: lab\r\n\r\n");
            // Everything that arrives until the connection has been silent for a second.
            let read_all = |s: &mut TcpStream, got: &mut Vec<u8>, want: usize| {
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(_) if got.len() >= want => break,
                        Err(e) => panic!("read: {e} after {} bytes", got.len()),
                    }
                }
            };
            // The first request places the connection on n2; then two at once.
            s.write_all(get(&first).as_bytes()).unwrap();
            let mut got = Vec::new();
            read_all(&mut s, &mut got, 1024);
            s.write_all(format!("{}{}", get(&a), get(&b)).as_bytes())
                .unwrap();
            let want = got.len() + 2 * 102_400;
            read_all(&mut s, &mut got, want);
            String::from_utf8_lossy(&got).to_string()
        })
        .expect("run in the client namespace");
    let served: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("X-Served-By: ")
                .or_else(|| l.strip_prefix("x-served-by: "))
        })
        .collect();
    assert_eq!(served.len(), 3, "three responses: {served:?}");
    assert!(served.iter().all(|s| s.trim() == "n2"), "{served:?}");
    lab.down().expect("lab down");
}

/// One keep-alive connection to n1 asking for `plan` (target, node), in order: every response
/// from its node, byte for byte (`/f/…` lab files).
fn run_plan(lab: &Lab, plan: Vec<(String, usize)>) {
    let n1: SocketAddr = lab.node_http_addr(1);
    let results = lab
        .in_client(move || {
            let mut client = HttpClient::connect(n1).expect("connect to n1");
            let mut out = Vec::new();
            for (target, node) in plan {
                let response = client
                    .get(&target)
                    .expect("GET on the kept-alive connection");
                let path = target.split('?').next().unwrap().to_string();
                let body_ok = Some(response.body.as_slice()) == lab_file(&path);
                out.push((
                    target,
                    node,
                    response.status,
                    response.served_by().unwrap_or("?").to_string(),
                    body_ok,
                ));
            }
            (client.connects(), out)
        })
        .expect("run in the client namespace");
    let (connects, results) = results;
    assert_eq!(connects, 1, "the connection was kept alive");
    let wrong: Vec<String> = results
        .iter()
        .filter(|(_, node, status, by, ok)| *status != 200 || !ok || by != &format!("n{node}"))
        .map(|(t, node, status, by, ok)| {
            format!("{t}: {status} from {by}, body ok {ok}, want n{node}")
        })
        .collect();
    assert!(wrong.is_empty(), "{}", failed(lab, &wrong.join("\n")));
}

/// Runs of requests for one node (n2, n1, n3, n2), 1 KB and 100 KB in turn: each run's first
/// request moves the connection there and the rest stay, the last two of each run decided by
/// n1's datapath (plain GETs hashed where the connection is; the one right after a move may be
/// the agent's, if it comes before the move's acceptance); the move after a run asks for every
/// response of it.
#[test]
fn requests_that_stay_are_kept_there_by_the_datapath_and_the_next_move_waits_for_them() {
    let mut lab = lab("pstay");
    let plan: Vec<(String, usize)> = [2, 1, 3, 2]
        .into_iter()
        .enumerate()
        .flat_map(|(run, node)| {
            (0..4).map(move |r| {
                let path = if r % 2 == 0 { "/f/1k" } else { "/f/100k" };
                let salt = format!("s{run}r{r}-");
                (targets_for(path, node, 1, &salt).remove(0), node)
            })
        })
        .collect();
    // Counted from here: the lab's readiness probes may have made offers before.
    let offers = || {
        (
            metric(&lab, 1, "baton_datapath_offers_total"),
            metric(&lab, 2, "baton_datapath_offers_taken_total"),
        )
    };
    let before = offers();
    run_plan(&lab, plan);
    // The first request, n2's, was offered followed by n1's datapath and taken by n2's.
    let after = offers();
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1.0, 1.0),
        "{}",
        failed(&lab, "the first request went by a followed datapath offer")
    );
    assert!(
        metric(&lab, 1, "baton_datapath_requests_stayed_total") >= 8.0,
        "{}",
        failed(&lab, "the datapath kept the last two requests of every run")
    );
    assert_eq!(
        metric(&lab, 1, "baton_requests_stayed_total"),
        12.0,
        "{}",
        failed(&lab, "every request after a run's first stayed")
    );
    assert!(
        metric(&lab, 1, "baton_rehandoffs_total") >= 3.0,
        "{}",
        failed(&lab, "each run after the first moved the connection")
    );
    lab.down().expect("lab down");
}

/// 10 MB responses and 1 KB ones in turn, each from its own node, on one connection.
fn large_and_small_plan(salt: &str) -> Vec<(String, usize)> {
    (0..6)
        .map(|r| {
            let node = r % 3 + 1;
            let path = if r % 2 == 0 { "/f/10m" } else { "/f/1k" };
            let target = targets_for(path, node, 1, &format!("{salt}{r}-")).remove(0);
            (target, node)
        })
        .collect()
}

#[test]
fn large_and_small_responses_move_byte_for_byte_also_across_a_lossy_link() {
    let mut lab = lab("plarge");
    run_plan(&lab, large_and_small_plan("a"));
    // The client's link drops 3% of the HTTP segments both ways: moves wait for the losses to
    // be repaired (a response is not complete before the client acknowledged all of it).
    common::make_client_link_lossy(&lab);
    run_plan(&lab, large_and_small_plan("b"));
    lab.exec("client", &["nft", "delete table inet lossy"])
        .unwrap();
    assert!(
        metric(&lab, 1, "baton_rehandoffs_total") >= 8.0,
        "{}",
        failed(&lab, "the connections moved")
    );
    lab.down().expect("lab down");
}

#[test]
fn a_request_body_between_two_gets_arrives_whole_where_it_is_served() {
    let mut lab = lab("pbody");
    let n1: SocketAddr = lab.node_http_addr(1);
    let upload = targets_for("/upload/pr", 3, 1, "u").remove(0);
    let upload_node = 3;
    let before = targets_for("/f/1k", 2, 1, "before").remove(0);
    let after = targets_for("/f/1k", 1, 1, "after").remove(0);
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sent = body.clone();
    let up = upload.clone();
    let n3: SocketAddr = lab.node_http_addr(upload_node);
    let (responses, stored) = lab
        .in_client(move || {
            let mut client = HttpClient::connect(n1).expect("connect");
            let a = client.get(&before).expect("GET before");
            let put = client.put(&up, &sent).expect("PUT");
            let b = client.get(&after).expect("GET after");
            assert_eq!(client.connects(), 1, "kept alive");
            // The body as the node that served the PUT stored it.
            let stored = HttpClient::connect(n3).unwrap().get(&up).unwrap();
            (vec![a, put, b], stored)
        })
        .expect("run in the client namespace");
    let by: Vec<&str> = responses
        .iter()
        .map(|r| r.served_by().unwrap_or("?"))
        .collect();
    assert!(
        matches!(responses[1].status, 201 | 204),
        "PUT status {}",
        responses[1].status
    );
    assert_eq!(
        by,
        ["n2", "n3", "n1"],
        "{}",
        failed(&lab, "each request by its node")
    );
    assert!(
        stored.body == body,
        "the stored body differs from the one sent"
    );
    assert_eq!(responses[2].body, lab_file("/f/1k").unwrap());
    lab.down().expect("lab down");
}

/// Every node's datapath holds no connection any more (`baton ctl conns`, read from the tables
/// themselves), within `within`.
fn assert_tables_drain(lab: &Lab, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left: Vec<String> = (1..=3)
            .map(|i| {
                let out = lab.ctl(i, &["conns"]).expect("baton ctl conns");
                String::from_utf8_lossy(&out.stdout).to_string()
            })
            .filter(|text| !text.contains("\n0 connections"))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            failed(lab, &format!("connections left:\n{}", left.join("\n")))
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Node `node`'s words on the control mesh wait (TCP retransmits them) while `on`: a move away
/// from it stays at its first step, the node frozen, for as long.
fn hold_back(lab: &Lab, node: usize, on: bool) {
    let rules = if on {
        "table inet slowmesh {
            chain out { type filter hook output priority 0; tcp dport 7070 drop; }
        }"
    } else {
        "delete table inet slowmesh"
    };
    let out = lab
        .exec(&format!("n{node}"), &["nft", rules])
        .expect("run nft in the node");
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A keep-alive connection to n1 whose first request (`target`) was answered.
fn placed_connection(lab: &Lab, target: String) -> TcpStream {
    let n1: SocketAddr = lab.node_http_addr(1);
    lab.in_client(move || {
        let mut s = TcpStream::connect(n1).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("GET {target} HTTP/1.1\r\nHost: lab\r\n\r\n").as_bytes())
            .unwrap();
        read_response(&mut s);
        s
    })
    .expect("run in the client namespace")
}

/// One whole response (Content-Length): its X-Served-By and body.
fn read_response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let head_end = loop {
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = s.read(&mut buf).expect("a response");
        assert!(n > 0, "closed before a response");
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    let field = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let length: usize = field("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while got.len() < head_end + length {
        let n = s.read(&mut buf).expect("the body");
        assert!(n > 0, "closed mid-body");
        got.extend_from_slice(&buf[..n]);
    }
    (
        field("x-served-by").unwrap_or_default(),
        got[head_end..head_end + length].to_vec(),
    )
}

#[test]
fn a_server_that_closes_the_connection_during_a_move_is_not_heard() {
    let mut lab = lab("pclose");
    let first = targets_for("/f/1k", 2, 1, "first").remove(0);
    let second = targets_for("/f/1k", 3, 1, "second").remove(0);
    let third = targets_for("/f/1k", 1, 1, "third").remove(0);
    let mut s = placed_connection(&lab, first);
    hold_back(&lab, 2, true);
    s.write_all(format!("GET {second} HTTP/1.1\r\nHost: lab\r\n\r\n").as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // n2's nginx reloads: its old worker closes the idle keep-alive connection (a FIN the
    // frozen datapath keeps from the client).
    let conf = lab.node_dir(2).join("nginx.conf");
    let conf = conf.to_str().unwrap();
    let out = lab
        .exec(
            "n2",
            &["nginx", "-e", "/dev/null", "-c", conf, "-s", "reload"],
        )
        .expect("nginx -s reload");
    assert!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    hold_back(&lab, 2, false);
    // The move goes on: the request is n3's, and the connection lives on.
    let (by, body) = read_response(&mut s);
    assert_eq!(
        by,
        "n3",
        "{}",
        failed(&lab, "the held request after the move")
    );
    assert_eq!(body, lab_file("/f/1k").unwrap());
    s.write_all(format!("GET {third} HTTP/1.1\r\nHost: lab\r\n\r\n").as_bytes())
        .unwrap();
    let (by, body) = read_response(&mut s);
    assert_eq!(by, "n1", "{}", failed(&lab, "the next request"));
    assert_eq!(body, lab_file("/f/1k").unwrap());
    // n2 hears of the move's end over a mesh connection that its held-back words put into
    // retransmission backoff: it may take a while.
    let moved_away = metric_reaches(
        &lab,
        2,
        "baton_moved_away_total",
        1.0,
        Duration::from_secs(5),
    );
    assert!(moved_away >= 1.0, "{}", failed(&lab, "n2 heard no release"));
    // n2's FIN and the RST of its socket's end, both kept from the client.
    let kept = lab
        .scrape_metrics(2)
        .unwrap_or_default()
        .get("baton_dropped_packets_total{reason=\"moving\"}")
        .copied()
        .unwrap_or(0.0);
    assert!(
        kept >= 2.0,
        "{}",
        failed(&lab, &format!("n2 kept {kept} packets"))
    );
    lab.down().expect("lab down");
}

#[test]
fn a_client_that_resets_during_a_move_leaves_nothing_behind() {
    let mut lab = lab("prst");
    let first = targets_for("/f/1k", 2, 1, "first").remove(0);
    let second = targets_for("/f/1k", 3, 1, "second").remove(0);
    let mut s = placed_connection(&lab, first);
    hold_back(&lab, 2, true);
    s.write_all(format!("GET {second} HTTP/1.1\r\nHost: lab\r\n\r\n").as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The client gives up on the connection with a RST (SO_LINGER 0), mid-move.
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    hold_back(&lab, 2, false);
    // The move went on (n2 answered late) or was called off, and every node lets go of the
    // connection; the cluster serves on.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&lab, 2, "baton_moved_away_total") + metric(&lab, 1, "baton_requests_stayed_total")
        < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            failed(&lab, "the move neither happened nor was called off")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_tables_drain(&lab, Duration::from_secs(30));
    run_plan(&lab, large_and_small_plan("after-rst"));
    lab.down().expect("lab down");
}

/// LARD, following: each request of a keep-alive connection goes where the dispatcher's table
/// has its target, which is where a fresh connection for it goes.
#[test]
fn lard_followed_requests_go_where_the_dispatcher_keeps_their_targets() {
    let spec = LabSpec::new(baton_lab::lab::unique_name("plard"), 3)
        .server(ServerKind::Nginx)
        .policy(PolicyKind::Lard)
        .per_request(true)
        .exe(BATON);
    let mut lab = Lab::up(spec).expect("lab up");
    let n1: SocketAddr = lab.node_http_addr(1);
    let targets: Vec<String> = (0..6).map(|i| format!("/f/1k?lard={i}")).collect();
    let placed = targets.clone();
    let (homes, followed) = lab
        .in_client(move || {
            // Where each target lives: a fresh connection each (loads stay low: LARD keeps a
            // target on its node).
            let homes: Vec<String> = placed
                .iter()
                .map(|t| {
                    let mut c = HttpClient::connect(n1).expect("connect");
                    c.get(t)
                        .expect("GET")
                        .served_by()
                        .unwrap_or("?")
                        .to_string()
                })
                .collect();
            let mut c = HttpClient::connect(n1).expect("connect");
            let followed: Vec<(String, bool)> = placed
                .iter()
                .chain(placed.iter().rev())
                .map(|t| {
                    let r = c.get(t).expect("GET on the kept-alive connection");
                    let ok = r.status == 200 && r.body == lab_file("/f/1k").unwrap();
                    (r.served_by().unwrap_or("?").to_string(), ok)
                })
                .collect();
            assert_eq!(c.connects(), 1, "kept alive");
            (homes, followed)
        })
        .expect("run in the client namespace");
    let want: Vec<&String> = homes.iter().chain(homes.iter().rev()).collect();
    let got: Vec<&String> = followed.iter().map(|(by, _)| by).collect();
    assert_eq!(
        got,
        want,
        "{}",
        failed(&lab, "each request at its target's node")
    );
    assert!(followed.iter().all(|(_, ok)| *ok), "bodies");
    let distinct: std::collections::BTreeSet<&String> = homes.iter().collect();
    assert!(
        distinct.len() > 1,
        "the targets live on more than one node: {homes:?}"
    );
    lab.down().expect("lab down");
}
