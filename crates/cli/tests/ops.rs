//! End to end: operating a running cluster. `baton ctl` against real labs (nginx, `hash`, targets
//! picked so that n1 hands them to n2): the connections listed where they are, a drain and an
//! undrain under wrk, a reload (and SIGHUP) that changes the policy under wrk and a bad one that
//! changes nothing, health checks that take a failing server out and bring it back; and
//! `baton node --check`. Needs root, eBPF, nginx and wrk.

use std::process::Command;
use std::time::{Duration, Instant};

use baton_agent::config::HealthSection;
use baton_agent::ctl::{ConnRow, PeerRow, Reply, Status};
use baton_lab::download::paced_get_in_background;
use baton_lab::http_client::http_get_timeout;
use baton_lab::lab::target_hashed_to;
use baton_lab::{Lab, LabSpec, ServerKind};
use baton_policy::PolicyKind;

mod common;
use common::{assert_no_errors, metric, spawn_in_client};

const BATON: &str = env!("CARGO_BIN_EXE_baton");

fn lab(prefix: &str, health: Option<HealthSection>) -> Lab {
    let mut spec = LabSpec::new(baton_lab::lab::unique_name(prefix), 3)
        .server(ServerKind::Nginx)
        .policy(PolicyKind::Hash)
        .exe(BATON);
    if let Some(health) = health {
        spec = spec.health(health);
    }
    Lab::up(spec).expect("lab up (needs root, iproute2, nginx)")
}

/// `baton ctl -o json ARGS` against node `i`: the reply, and whether the command succeeded.
fn ctl(lab: &Lab, i: usize, args: &[&str]) -> (Reply, bool) {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let out = lab.ctl(i, &all).expect("run baton ctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let reply = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "n{i} ctl {args:?}: {e}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (reply, out.status.success())
}

fn conns(lab: &Lab, i: usize) -> Vec<ConnRow> {
    match ctl(lab, i, &["conns"]).0 {
        Reply::Conns { conns } => conns,
        other => panic!("n{i} conns: {other:?}"),
    }
}

fn status(lab: &Lab, i: usize) -> Status {
    match ctl(lab, i, &["status"]).0 {
        Reply::Status(status) => *status,
        other => panic!("n{i} status: {other:?}"),
    }
}

fn peer(lab: &Lab, i: usize, name: &str) -> PeerRow {
    status(lab, i)
        .peers
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("n{i} has no peer {name}"))
}

/// Polls `what` every 50 ms until it holds or `within` passes; returns how long it took.
fn wait_for(within: Duration, what: &str, mut holds: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !holds() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// wrk from the client to n1 for `seconds`, a connection per request, on `target`.
fn wrk_on_n1(lab: &Lab, target: &str, seconds: u32) -> Vec<(String, std::process::Child)> {
    let url = format!("http://{}{target}", lab.node_address(1));
    let duration = format!("-d{seconds}s");
    let args = [
        "wrk",
        "-t1",
        "-c4",
        &duration,
        "-H",
        "Connection: close",
        &url,
    ];
    vec![(
        "n1 connection per request".into(),
        spawn_in_client(lab, &args),
    )]
}

#[test]
fn ctl_lists_connections_where_they_are_and_drains_under_load() {
    let mut lab = lab("ctl", None);
    // A slow 10 MB download through n1 that n2 serves.
    let target = target_hashed_to("/f/10m", 2, 3);
    let download = paced_get_in_background(
        Some(&lab.client_ns()),
        lab.node_http_addr(1),
        &target,
        2_000_000,
        Duration::from_secs(30),
    )
    .expect("start a download");
    let mut client = None;
    wait_for(Duration::from_secs(3), "n1 lists the download", || {
        client = conns(&lab, 1)
            .into_iter()
            .find(|c| c.direction == "out" && c.phase == "live")
            .map(|c| {
                assert_eq!((c.fe.as_str(), c.be.as_str()), ("n1", "n2"), "{c:?}");
                c.client
            });
        client.is_some()
    });
    let client = client.unwrap();
    let at_n2: Vec<ConnRow> = conns(&lab, 2)
        .into_iter()
        .filter(|c| c.client == client)
        .collect();
    assert_eq!(at_n2.len(), 1, "n2 has it handed in: {at_n2:?}");
    assert_eq!(
        (
            at_n2[0].direction.as_str(),
            at_n2[0].fe.as_str(),
            at_n2[0].be.as_str()
        ),
        ("in", "n1", "n2")
    );
    assert!(
        conns(&lab, 3).iter().all(|c| c.client != client),
        "n3 has nothing of it"
    );
    let done = download.join().expect("the download");
    assert!(done.is_complete() && done.status == Some(200), "{done:?}");
    // Gone from both ends once closed (the entries linger for close_linger_ms, then go at the
    // next collection, every 10 s).
    wait_for(
        Duration::from_secs(15),
        "the closed download is unlisted",
        || {
            conns(&lab, 1).iter().all(|c| c.client != client)
                && conns(&lab, 2).iter().all(|c| c.client != client)
        },
    );

    // Drain n2 under load: n1 stops handing it connections, then hands them again.
    let small = target_hashed_to("/f/1k", 2, 3);
    let runs = wrk_on_n1(&lab, &small, 9);
    std::thread::sleep(Duration::from_secs(2));
    let handed_in = |lab: &Lab| metric(lab, 2, "baton_handoffs_in_total");
    assert!(handed_in(&lab) > 0.0, "n2 takes handoffs before the drain");
    let (reply, ok) = ctl(&lab, 2, &["drain"]);
    assert!(ok, "{reply:?}");
    assert_eq!(status(&lab, 2).state, "drained");
    wait_for(Duration::from_secs(2), "n1 sees n2 drained", || {
        peer(&lab, 1, "n2").state == "drained"
    });
    // A drained node takes nothing new itself either: what it accepts goes to a peer.
    let addr = lab.node_http_addr(2);
    let via_n2 = {
        let small = small.clone();
        lab.in_client(move || http_get_timeout(addr, &small, Duration::from_secs(5)))
            .unwrap()
            .expect("GET through n2")
    };
    assert_eq!(via_n2.status, 200);
    assert_ne!(
        via_n2.served_by(),
        Some("n2"),
        "a drained node keeps nothing new"
    );
    // What was offered before n1 heard has settled within a handoff timeout.
    std::thread::sleep(Duration::from_millis(1200));
    let before = handed_in(&lab);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        handed_in(&lab),
        before,
        "n2 was handed nothing while drained"
    );
    // An upgrade (a new agent taking over) keeps the drain.
    lab.restart_agent(2).expect("n2's agent taken over");
    assert_eq!(
        status(&lab, 2).state,
        "drained",
        "still drained after a takeover"
    );
    wait_for(Duration::from_secs(2), "n1 still sees n2 drained", || {
        peer(&lab, 1, "n2").state == "drained"
    });
    let before = handed_in(&lab);
    let (reply, ok) = ctl(&lab, 2, &["undrain"]);
    assert!(ok, "{reply:?}");
    // A GET of our own at each look: on a slow machine the load may be over by now.
    let n1 = lab.node_http_addr(1);
    wait_for(
        Duration::from_secs(5),
        "n2 is handed connections again",
        || {
            let small = small.clone();
            let got = lab
                .in_client(move || http_get_timeout(n1, &small, Duration::from_secs(5)))
                .unwrap();
            got.is_ok_and(|r| r.served_by() == Some("n2")) && handed_in(&lab) > before
        },
    );
    assert_no_errors(runs);
    lab.down().expect("lab down");
}

#[test]
fn reload_changes_the_policy_under_load_and_a_bad_config_changes_nothing() {
    let mut lab = lab("reload", None);
    let small = target_hashed_to("/f/1k", 2, 3);
    let runs = wrk_on_n1(&lab, &small, 8);
    std::thread::sleep(Duration::from_secs(2));
    let handed_out = || metric(&lab, 1, "baton_handoffs_out_total");
    assert!(handed_out() > 0.0);
    let path = lab.agent_config_path(1);
    let original = std::fs::read_to_string(&path).unwrap();
    assert!(original.contains("kind = \"hash\""), "{original}");
    std::fs::write(
        &path,
        original.replace("kind = \"hash\"", "kind = \"local\""),
    )
    .unwrap();
    let (reply, ok) = ctl(&lab, 1, &["reload"]);
    assert!(ok, "{reply:?}");
    assert_eq!(status(&lab, 1).policy, "local");
    // n2 sees n1's configuration differ (the policy is part of what members agree on).
    wait_for(Duration::from_secs(2), "n2 notices the difference", || {
        peer(&lab, 2, "n1").config_agrees == Some(false)
    });
    std::thread::sleep(Duration::from_millis(1200));
    let before = handed_out();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(handed_out(), before, "local: n1 hands nothing out");

    // A configuration that cannot be applied in place, and one that does not parse: refused,
    // the running one stays.
    std::fs::write(
        &path,
        original
            .replace("kind = \"hash\"", "kind = \"round-robin\"")
            .replace("interface = \"eth0\"", "interface = \"eth9\""),
    )
    .unwrap();
    let (reply, ok) = ctl(&lab, 1, &["reload"]);
    assert!(!ok, "{reply:?}");
    let Reply::Error { message } = reply else {
        panic!("{reply:?}")
    };
    assert!(message.contains("node"), "{message}");
    std::fs::write(&path, "[node\n").unwrap();
    let (reply, ok) = ctl(&lab, 1, &["reload"]);
    assert!(!ok, "{reply:?}");
    assert_eq!(status(&lab, 1).policy, "local");

    // SIGHUP reloads as well: back to hash, and n1 hands out again.
    std::fs::write(&path, &original).unwrap();
    let pid = status(&lab, 1).pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP n1's agent");
    wait_for(Duration::from_secs(2), "SIGHUP reloads", || {
        status(&lab, 1).policy == "hash"
    });
    assert_eq!(status(&lab, 1).pid, pid, "the same agent");
    let before = handed_out();
    wait_for(Duration::from_secs(3), "n1 hands out again", || {
        handed_out() > before
    });
    assert_no_errors(runs);
    lab.down().expect("lab down");
}

#[test]
fn reload_adds_a_member_brought_up_later_under_load() {
    let spec = LabSpec::new(baton_lab::lab::unique_name("join"), 4)
        .server(ServerKind::Nginx)
        .policy(PolicyKind::Hash)
        .late_nodes(1)
        .exe(BATON);
    let mut lab = Lab::up(spec).expect("lab up (needs root, iproute2, nginx)");
    assert_eq!(status(&lab, 1).peers.len(), 2, "n4 is not a member yet");
    // A target that hash gives to n4 once it is a member.
    let target = target_hashed_to("/f/1k", 4, 4);
    let runs = wrk_on_n1(&lab, &target, 10);
    std::thread::sleep(Duration::from_secs(2));
    lab.admit_late_nodes()
        .expect("reload n1..n3 with n4, start n4");
    let n4 = peer(&lab, 1, "n4");
    assert_eq!(n4.state, "up", "{n4:?}");
    wait_for(Duration::from_secs(3), "every member agrees", || {
        (1..=4).all(|i| {
            status(&lab, i)
                .peers
                .iter()
                .all(|p| p.config_agrees == Some(true))
        })
    });
    wait_for(Duration::from_secs(3), "n1 hands n4 its target", || {
        metric(&lab, 4, "baton_handoffs_in_total") > 0.0
    });
    assert_no_errors(runs);
    lab.down().expect("lab down");
}

#[test]
fn a_server_failing_its_health_check_is_not_chosen_and_comes_back() {
    let health = HealthSection {
        path: Some("/f/1k".into()),
        interval_ms: 200,
        timeout_ms: 500,
        rise: 2,
        fall: 2,
        ..HealthSection::default()
    };
    let mut lab = lab("health", Some(health));
    let target = target_hashed_to("/f/1k", 2, 3);
    let get = |lab: &Lab| {
        let addr = lab.node_http_addr(1);
        let target = target.clone();
        lab.in_client(move || http_get_timeout(addr, &target, Duration::from_secs(5)))
            .unwrap()
            .expect("GET through n1")
    };
    assert_eq!(
        get(&lab).served_by(),
        Some("n2"),
        "n2 serves it while healthy"
    );
    assert_eq!(status(&lab, 2).healthy, Some(true));

    lab.set_maintenance(2, true).unwrap();
    // Two failed checks 200 ms apart, then the heartbeat that says so.
    let took = wait_for(Duration::from_secs(3), "n1 stops choosing n2", || {
        peer(&lab, 1, "n2").state == "not-serving"
    });
    eprintln!("n2 out of rotation {took:?} after its server started failing");
    assert_eq!(status(&lab, 2).healthy, Some(false));
    for _ in 0..30 {
        let response = get(&lab);
        assert_eq!(response.status, 200, "no 503 reaches a client through n1");
        assert_ne!(response.served_by(), Some("n2"));
    }

    lab.set_maintenance(2, false).unwrap();
    wait_for(Duration::from_secs(3), "n2 comes back", || {
        peer(&lab, 1, "n2").state == "up"
    });
    assert_eq!(get(&lab).served_by(), Some("n2"));
    lab.down().expect("lab down");
}

#[test]
fn node_check_reports_each_problem_with_its_line() {
    let dir = std::env::temp_dir().join(format!("baton-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = "[node]\nname = \"n1\"\naddress = \"198.18.0.1\"\ninterface = \"eth0\"\n\n\
                [cluster]\nkey = \"0123456789abcdef0123456789abcdef\"\n\
                members = [{ name = \"n1\", address = \"198.18.0.1\" }]\n";
    let check = |text: &str| {
        let path = dir.join("node.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BATON)
            .args(["node", "--check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = check(good);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("ok"), "{stdout}");

    let broken = good
        .replace("0123456789abcdef0123456789abcdef", "short")
        .replace("name = \"n1\"\naddress", "name = \"n7\"\naddress");
    let (code, _, stderr) = check(&broken);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("node.toml:7: cluster.key must be at least 16 bytes"),
        "{stderr}"
    );
    assert!(
        stderr.contains("node.toml:2: node n7 (198.18.0.1) is not among cluster.members"),
        "{stderr}"
    );
    let (code, _, stderr) = check(&good.replace("interface = \"eth0\"", "interface = eth0"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("node.toml:4:"), "{stderr}");
    let (code, _, stderr) = check(&format!("{good}\n[limits]\nhold_msec = 3\n"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("hold_msec"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
