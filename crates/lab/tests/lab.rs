//! End-to-end lab tests: real namespaces, real servers, `curl` from the client namespace.
//!
//! This test binary has its own `main` (`harness = false`) because the lab starts the `static`
//! server as `<current executable> serve-static ...`: when called that way, this binary *is* the
//! static server. Called as `<exe> node --config FILE` it is a stand-in agent that only serves
//! `/metrics` (so the lab's agent plumbing — configs, daemons, readiness, scraping — is tested
//! without the real agent). Otherwise it runs the tests below, one after another; a test that
//! cannot run (not root, no `ip`, no nginx, no haproxy for the HAProxy test) fails.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::{Duration, Instant};

use baton_agent::config::NodeConfig;
use baton_lab::lab::{
    HAPROXY, LABS_DIR, ORIGIN_ADDRESS, down_by_name, ns_name, state_dir_of, unique_name,
};
use baton_lab::netns::list_netns;
use baton_lab::{
    HttpClient, LAB_FILES, Lab, LabError, LabSpec, ServerKind, expected_sha256, file_content,
    sha256_hex,
};
use baton_policy::PolicyKind;
use clap::Parser;

#[derive(Parser)]
struct ServeStatic {
    #[command(flatten)]
    args: baton_lab::static_server::ServeArgs,
}

const TESTS: &[(&str, fn())] = &[
    (
        "static_and_nginx_labs_coexist",
        static_and_nginx_labs_coexist,
    ),
    (
        "failed_up_cleans_up_and_down_handles_half_made_labs",
        failed_up_cleans_up_and_down_handles_half_made_labs,
    ),
    ("dropping_a_lab_tears_it_down", dropping_a_lab_tears_it_down),
    (
        "apache_lab_serves_and_a_server_stops_and_restarts",
        apache_lab_serves_and_a_server_stops_and_restarts,
    ),
    (
        "agents_are_configured_started_and_scraped",
        agents_are_configured_started_and_scraped,
    ),
    (
        "demo_runs_against_stand_in_agents",
        demo_runs_against_stand_in_agents,
    ),
    (
        "cache_lab_misses_hits_clears_and_goes_down",
        cache_lab_misses_hits_clears_and_goes_down,
    ),
    (
        "cache_lab_with_agents_comes_up_and_goes_down",
        cache_lab_with_agents_comes_up_and_goes_down,
    ),
    (
        "haproxy_balances_by_uri_and_stops",
        haproxy_balances_by_uri_and_stops,
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve-static") => {
            let serve = ServeStatic::parse_from(&args[1..]);
            if let Err(e) = baton_lab::static_server::run(serve.args) {
                eprintln!("serve-static: {e}");
                std::process::exit(1);
            }
            return;
        }
        Some("node") => return stand_in_agent(&args[2..]),
        _ => {}
    }
    if args.iter().any(|a| a == "--list") {
        for (name, _) in TESTS {
            println!("{name}: test");
        }
        return;
    }
    let filters: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<_> = TESTS
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    println!("\nrunning {} lab tests", selected.len());
    let mut failed = Vec::new();
    for (name, test) in &selected {
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            preconditions();
            test()
        }));
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(()) => println!("test {name} ... ok ({secs:.2} s)"),
            Err(_) => {
                println!("test {name} ... FAILED ({secs:.2} s)");
                failed.push(*name);
            }
        }
    }
    if failed.is_empty() {
        println!("\ntest result: ok. {} passed\n", selected.len());
    } else {
        println!(
            "\ntest result: FAILED. {} passed; {} failed: {}\n",
            selected.len() - failed.len(),
            failed.len(),
            failed.join(", ")
        );
        std::process::exit(101);
    }
}

/// The lab needs root, iproute2 and nginx: without them these tests fail, loudly.
fn preconditions() {
    assert!(
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        unsafe { libc::geteuid() } == 0,
        "the lab tests must run as root (they create network namespaces)"
    );
    assert!(
        std::process::Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the `ip` command (iproute2) is required"
    );
    assert!(
        Path::new(baton_lab::lab::NGINX).exists(),
        "{} is required",
        baton_lab::lab::NGINX
    );
    assert!(
        Path::new("/usr/bin/curl").exists() || Path::new("/bin/curl").exists(),
        "curl is required"
    );
}

/// The stand-in agent: reads its config, serves `/metrics` on the configured address with all
/// peers up and a few counters, until killed.
fn stand_in_agent(args: &[String]) {
    assert_eq!(
        args.first().map(String::as_str),
        Some("--config"),
        "usage: node --config FILE"
    );
    let config = NodeConfig::from_file(Path::new(&args[1])).expect("stand-in agent: config");
    let listen = config
        .metrics
        .listen
        .expect("stand-in agent: metrics.listen");
    let listener = TcpListener::bind(listen).expect("stand-in agent: bind");
    eprintln!("stand-in agent {} listening on {listen}", config.node.name);
    let peers = config.cluster.members.len() - 1;
    let index = config.self_index();
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = format!(
            "# TYPE baton_mesh_peers_up gauge\nbaton_mesh_peers_up {peers}\n\
             baton_connections_accepted_total {}\nbaton_handoffs_out_total{{peer=\"x\"}} 0\n# EOF\n",
            100 + index
        );
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

fn lab_is_gone(name: &str) {
    let left = list_netns(&ns_name(name, ""));
    assert!(left.is_empty(), "lab {name}: namespaces left: {left:?}");
    assert!(
        !state_dir_of(name).exists(),
        "lab {name}: state directory left"
    );
}

fn pid_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')')
        .is_some_and(|i| !stat[i + 1..].trim_start().starts_with(['Z', 'X']))
}

/// `curl` from the client to node `i`: status line, headers and body, split.
fn curl(lab: &Lab, args: &[&str]) -> (String, Vec<u8>) {
    let mut full = vec!["curl", "-sS", "--max-time", "20", "-D", "-"];
    full.extend_from_slice(args);
    let out = lab.exec("client", &full).unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = out.stdout;
    // With `-D -`, interim heads (100 Continue) come first; the body follows the last head.
    let mut start = 0;
    loop {
        let end = stdout[start..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head")
            + start
            + 4;
        let head = String::from_utf8_lossy(&stdout[start..end]).into_owned();
        if head.starts_with("HTTP/1.1 100") {
            start = end;
            continue;
        }
        return (head, stdout[end..].to_vec());
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// GETs every lab file from every node with curl, a keep-alive series with our client.
fn check_files(lab: &Lab) {
    for i in 1..=lab.nodes() {
        for path in ["/f/1k", "/f/100k", "/f/10m"] {
            let url = format!("http://{}{path}", lab.node_address(i));
            let (head, body) = curl(lab, &[&url]);
            assert!(head.starts_with("HTTP/1.1 200"), "{url}: {head}");
            assert_eq!(
                header(&head, "x-served-by"),
                Some(format!("n{i}").as_str()),
                "{url}: {head}"
            );
            assert_eq!(
                sha256_hex(&body),
                expected_sha256(path).unwrap(),
                "{url}: body differs"
            );
        }
    }
    let addr = lab.node_http_addr(lab.nodes());
    let served = format!("n{}", lab.nodes());
    lab.in_client(|| {
        let mut client = HttpClient::connect(addr).unwrap();
        for round in 0..10 {
            for (path, len) in LAB_FILES.iter().filter(|(p, _)| *p != "/f/10m") {
                let resp = client.get(path).unwrap();
                assert_eq!(resp.status, 200, "round {round} {path}");
                assert_eq!(resp.served_by(), Some(served.as_str()));
                assert_eq!(resp.body, file_content(path, *len), "round {round} {path}");
            }
        }
        let resp = client.get("/f/10m").unwrap();
        assert_eq!(sha256_hex(&resp.body), expected_sha256("/f/10m").unwrap());
        assert_eq!(client.get("/missing").unwrap().status, 404);
        assert_eq!(
            client.connects(),
            1,
            "the series must stay on one keep-alive connection"
        );
        assert_eq!(client.requests(), 32);
    })
    .unwrap();
}

fn check_static_echo(lab: &Lab) {
    let body = file_content("/echo-test", 300 * 1024);
    let addr = lab.node_http_addr(1);
    let echoed = lab
        .in_client(|| {
            let mut client = HttpClient::connect(addr).unwrap();
            let resp = client.post("/echo", &body).unwrap();
            assert_eq!(resp.status, 200);
            assert_eq!(resp.served_by(), Some("n1"));
            resp.body
        })
        .unwrap();
    assert!(
        echoed == body,
        "POST /echo: {} bytes came back, not the 300 KiB sent",
        echoed.len()
    );
    // And with curl, whose body certainly spans many segments.
    let file = lab.state_dir().join("echo-body");
    std::fs::write(&file, &body).unwrap();
    let url = format!("http://{}/echo", lab.node_address(2));
    let (head, back) = curl(
        lab,
        &["--data-binary", &format!("@{}", file.display()), &url],
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(header(&head, "x-served-by"), Some("n2"));
    assert!(
        back == body,
        "curl POST /echo: {} bytes came back",
        back.len()
    );
}

fn check_nginx_upload(lab: &Lab) {
    let body = file_content("/upload-test", 300 * 1024);
    let (a1, a2) = (lab.node_http_addr(1), lab.node_http_addr(2));
    lab.in_client(|| {
        let mut client = HttpClient::connect(a1).unwrap();
        let put = client.put("/upload/t/x.bin", &body).unwrap();
        assert!(
            put.status == 201 || put.status == 204,
            "PUT answered {}",
            put.status
        );
        assert_eq!(put.served_by(), Some("n1"));
        let get = client.get("/upload/t/x.bin").unwrap();
        assert_eq!(get.status, 200);
        assert!(get.body == body, "GET after PUT: {} bytes", get.body.len());
        // Uploads are per node.
        let other = HttpClient::connect(a2)
            .unwrap()
            .get("/upload/t/x.bin")
            .unwrap();
        assert_eq!(other.status, 404);
        assert_eq!(other.served_by(), Some("n2"));
    })
    .unwrap();
    assert!(lab.node_dir(1).join("dav/upload/t/x.bin").exists());
}

fn static_and_nginx_labs_coexist() {
    let (sa, nb) = (unique_name("ts"), unique_name("tn"));
    let started = Instant::now();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            Lab::up(
                LabSpec::new(&sa, 2)
                    .server(ServerKind::Static)
                    .agents(false),
            )
        });
        let b = s.spawn(|| Lab::up(LabSpec::new(&nb, 2).server(ServerKind::Nginx).agents(false)));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    println!("  two labs up in {:.2} s", started.elapsed().as_secs_f64());

    // The same addresses, in two separate labs.
    let (head_a, _) = curl(&a, &["http://198.18.0.1/index.html"]);
    let (head_b, _) = curl(&b, &["http://198.18.0.1/index.html"]);
    assert_eq!(
        header(&head_a, "server"),
        None,
        "lab a runs the static server: {head_a}"
    );
    assert!(
        header(&head_b, "server").unwrap_or("").starts_with("nginx"),
        "lab b runs nginx: {head_b}"
    );

    // A second `up` of a live lab fails and leaves it alone.
    match Lab::up(LabSpec::new(&sa, 2).agents(false)) {
        Err(LabError::Exists { .. }) => {}
        other => panic!("up of an existing lab: {other:?}"),
    }

    // exec: exit codes, hosts.
    assert_eq!(
        a.exec("n1", &["sh", "-c", "exit 3"]).unwrap().status.code(),
        Some(3)
    );
    let addr = a
        .exec("n2", &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(String::from_utf8_lossy(&addr.stdout).contains("198.18.0.2/24"));
    assert!(matches!(
        a.exec("n3", &["true"]),
        Err(LabError::UnknownHost { .. })
    ));
    assert!(matches!(
        a.exec("root", &["true"]),
        Err(LabError::UnknownHost { .. })
    ));
    // Nothing of the lab shows in the root namespace.
    let links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains("p-client") && !links.contains("br0"),
        "lab links in the root namespace:\n{links}"
    );

    check_files(&a);
    check_static_echo(&a);
    check_files(&b);
    check_nginx_upload(&b);

    let pids_a: Vec<u32> = (1..=2).filter_map(|i| a.server_pid(i)).collect();
    assert_eq!(pids_a.len(), 2);
    let started = Instant::now();
    a.down().unwrap();
    println!("  lab down in {:.2} s", started.elapsed().as_secs_f64());
    lab_is_gone(&sa);
    for pid in pids_a {
        assert!(!pid_alive(pid), "server {pid} survived down");
    }
    // The other lab is untouched.
    let (head, _) = curl(&b, &["http://198.18.0.2/f/1k"]);
    assert!(head.starts_with("HTTP/1.1 200"));
    b.down().unwrap();
    lab_is_gone(&nb);
    b.down().unwrap(); // idempotent
}

fn failed_up_cleans_up_and_down_handles_half_made_labs() {
    // A server that exits at once: `up` fails fast, with the log, and removes what it made.
    let name = unique_name("tf");
    let started = Instant::now();
    let err = Lab::up(LabSpec::new(&name, 2).agents(false).exe("/bin/false")).unwrap_err();
    assert!(
        started.elapsed().as_secs() < 10,
        "a dead server must not wait for the timeout"
    );
    match &err {
        LabError::NotReady { what, reason, .. } => {
            assert!(what.starts_with("n1 server"), "{err}");
            assert!(reason.contains("exited"), "{err}");
        }
        other => panic!("expected NotReady, got {other}"),
    }
    lab_is_gone(&name);

    // A half-made lab: one namespace and a state directory with a stale pid file.
    let name = unique_name("th");
    baton_lab::netns::ip(&["netns", "add", &ns_name(&name, "sw")]).unwrap();
    std::fs::create_dir_all(state_dir_of(&name).join("n1")).unwrap();
    std::fs::write(state_dir_of(&name).join("n1/server.pid"), "1\n").unwrap();
    match Lab::up(LabSpec::new(&name, 1).agents(false)) {
        Err(LabError::Exists { .. }) => {}
        other => panic!("up over a half-made lab: {other:?}"),
    }
    assert!(
        state_dir_of(&name).exists(),
        "a refused up must not remove the existing lab"
    );
    let report = down_by_name(&name).unwrap();
    assert_eq!(report.namespaces, 1);
    assert!(report.state_dir);
    assert_eq!(report.processes, 0, "pid 1 must not be touched");
    lab_is_gone(&name);
    assert!(down_by_name(&name).unwrap().is_empty());
    assert!(matches!(
        down_by_name("../etc"),
        Err(LabError::InvalidName(_))
    ));
    assert!(Path::new(LABS_DIR).exists());

    // A process started in a lab namespace by someone else is stopped by down too.
    let name = unique_name("tp");
    let lab = Lab::up(
        LabSpec::new(&name, 1)
            .server(ServerKind::Nginx)
            .agents(false),
    )
    .unwrap();
    let mut sleeper = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.node_ns(1), "sleep", "60"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    lab.detach();
    let report = down_by_name(&name).unwrap();
    assert!(
        report.processes >= 3,
        "nginx master, worker and sleep: {report:?}"
    );
    assert!(!sleeper.wait().unwrap().success());
    lab_is_gone(&name);
}

fn dropping_a_lab_tears_it_down() {
    let name = unique_name("td");
    // Silence the expected panic's message.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::up(
            LabSpec::new(&name, 1)
                .server(ServerKind::Nginx)
                .agents(false),
        )
        .unwrap();
        assert!(state_dir_of(&name).exists());
        let _ = &lab;
        panic!("a test failing with a lab up");
    });
    std::panic::set_hook(hook);
    assert!(result.is_err());
    lab_is_gone(&name);
}

fn apache_lab_serves_and_a_server_stops_and_restarts() {
    assert!(
        Path::new(baton_lab::lab::APACHE).exists(),
        "{} is required (Debian's apache2)",
        baton_lab::lab::APACHE
    );
    let name = unique_name("tap");
    let mut lab = Lab::up(
        LabSpec::new(&name, 2)
            .server(ServerKind::Apache)
            .agents(false),
    )
    .unwrap();
    let (head, _) = curl(&lab, &["http://198.18.0.1/index.html"]);
    assert!(
        header(&head, "server").unwrap_or("").starts_with("Apache"),
        "{head}"
    );
    check_files(&lab);
    assert!(lab.node_dir(1).join("apache2.pid").exists());

    // Stopped: nothing listens on n1 any more (Apache's children went with it); restarted: it
    // serves again.
    let listeners = |lab: &Lab| {
        let out = lab.exec("n1", &["ss", "-Htln", "sport = :80"]).unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert_eq!(listeners(&lab), 1);
    lab.stop_server(1).unwrap();
    assert_eq!(lab.server_pid(1), None);
    assert_eq!(listeners(&lab), 0, "n1's server stopped");
    let refused = lab
        .exec("client", &["curl", "-sS", "-m", "5", "http://198.18.0.1/"])
        .unwrap();
    assert!(
        !refused.status.success(),
        "n1 answered with its server stopped"
    );
    lab.restart_server(1).unwrap();
    let (head, body) = curl(&lab, &["http://198.18.0.1/f/100k"]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(header(&head, "x-served-by"), Some("n1"));
    assert_eq!(sha256_hex(&body), expected_sha256("/f/100k").unwrap());
    assert!(
        lab.restart_server(1).is_err(),
        "a running server is not started twice"
    );

    let pids: Vec<u32> = (1..=2).filter_map(|i| lab.server_pid(i)).collect();
    lab.down().unwrap();
    lab_is_gone(&name);
    for pid in pids {
        assert!(!pid_alive(pid), "server {pid} survived down");
    }
}

fn agents_are_configured_started_and_scraped() {
    let name = unique_name("ta");
    let mut lab = Lab::up(LabSpec::new(&name, 3).policy(PolicyKind::Hash)).unwrap();
    assert_eq!(lab.cluster_key().len(), 32);
    for i in 1..=3 {
        let config = NodeConfig::from_file(&lab.node_dir(i).join("agent.toml")).unwrap();
        assert_eq!(config.node.name, format!("n{i}"));
        assert_eq!(config.cluster.key, lab.cluster_key());
        assert_eq!(config.policy.kind, PolicyKind::Hash);
        let metrics = lab.scrape_metrics(i).unwrap();
        assert_eq!(metrics["baton_mesh_peers_up"], 2.0);
        assert_eq!(
            metrics["baton_connections_accepted_total"],
            (100 + i - 1) as f64
        );
        assert!(lab.agent_pid(i).is_some());
        let log = std::fs::read_to_string(lab.agent_log(i)).unwrap();
        assert!(log.contains("stand-in agent"), "{log}");
    }
    lab.down().unwrap();
    lab_is_gone(&name);
}

fn demo_runs_against_stand_in_agents() {
    let name = unique_name("tdemo");
    baton_lab::demo::run(&name, ServerKind::Static, PolicyKind::RoundRobin).unwrap();
    lab_is_gone(&name);
}

/// What one GET through a cache node saw.
struct Fetch {
    status: u16,
    cache: String,
    served_by: String,
    elapsed: Duration,
}

/// GETs `path` from `addr` (a node's cache, or HAProxy) on a new connection from the client, and
/// checks that a 200's body is the object's content.
fn fetch(lab: &Lab, addr: std::net::SocketAddr, path: &str) -> Fetch {
    lab.in_client(|| {
        let mut client = HttpClient::connect(addr).unwrap();
        let started = Instant::now();
        let resp = client.get(path).unwrap();
        let elapsed = started.elapsed();
        if resp.status == 200 {
            let size: usize = path.rsplit('/').next().unwrap().parse().unwrap();
            assert!(
                resp.body == file_content(path, size),
                "{path} from {addr}: body differs"
            );
        }
        let served: Vec<&str> = resp
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("x-served-by"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(served.len(), 1, "{path}: one X-Served-By, not {served:?}");
        Fetch {
            status: resp.status,
            cache: resp.header("x-cache-status").unwrap_or("").to_string(),
            served_by: served[0].to_string(),
            elapsed,
        }
    })
    .unwrap()
}

/// Lab `name`'s origin is gone: no namespace, no process, no directory.
fn origin_is_gone(name: &str, origin_pid: u32) {
    assert!(
        list_netns(&ns_name(name, "origin")).is_empty(),
        "lab {name}: the origin's namespace is left"
    );
    assert!(
        !pid_alive(origin_pid),
        "lab {name}: the origin {origin_pid} survived down"
    );
    lab_is_gone(name);
}

fn cache_lab_misses_hits_clears_and_goes_down() {
    // An origin that does not come up fails `up` before any node starts, and leaves nothing.
    let name = unique_name("cf");
    let err = Lab::up(
        LabSpec::new(&name, 1)
            .server(ServerKind::Cache)
            .agents(false)
            .exe("/bin/false"),
    )
    .unwrap_err();
    match &err {
        LabError::NotReady { what, reason, .. } => {
            assert!(what.starts_with("origin server"), "{err}");
            assert!(reason.contains("exited"), "{err}");
        }
        other => panic!("expected NotReady, got {other}"),
    }
    lab_is_gone(&name);
    assert!(list_netns(&ns_name(&name, "origin")).is_empty());

    let name = unique_name("ch");
    let delay = Duration::from_millis(150);
    let mut lab = Lab::up(
        LabSpec::new(&name, 2)
            .server(ServerKind::Cache)
            .agents(false)
            .cache_mb(32)
            .origin_delay_ms(delay.as_millis() as u64),
    )
    .unwrap();

    // The origin: its own host on the bridge, up, counting nothing yet (the readiness probes
    // ask the nodes for `/`, which they serve themselves, and the origin for `/_stats`).
    let origin_pid = lab.origin_pid().expect("the origin runs");
    assert_eq!(lab.origin_addr().ip(), ORIGIN_ADDRESS);
    assert_eq!(lab.origin_ns(), ns_name(&name, "origin"));
    let addr = lab
        .exec("origin", &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(String::from_utf8_lossy(&addr.stdout).contains("198.18.0.250/24"));
    assert!(lab.origin_log().exists());
    assert_eq!(lab.origin_requests().unwrap(), 0);
    let conf = std::fs::read_to_string(lab.node_dir(1).join("nginx.conf")).unwrap();
    assert!(conf.contains("max_size=32m"), "{conf}");
    let (head, _) = curl(&lab, &["http://198.18.0.1/index.html"]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(header(&head, "x-cache-status"), None, "{head}");
    assert_eq!(lab.origin_requests().unwrap(), 0, "/index.html is local");

    // A miss goes to the distant origin, once; a hit does not.
    let (n1, n2) = (lab.node_http_addr(1), lab.node_http_addr(2));
    let path = "/o/1/100000";
    let miss = fetch(&lab, n1, path);
    assert_eq!(
        (miss.status, miss.cache.as_str(), miss.served_by.as_str()),
        (200, "MISS", "n1")
    );
    assert!(
        miss.elapsed >= delay,
        "a miss took {:?}, less than the origin's delay",
        miss.elapsed
    );
    assert_eq!(lab.origin_requests().unwrap(), 1);
    let hit = fetch(&lab, n1, path);
    assert_eq!((hit.status, hit.cache.as_str()), (200, "HIT"));
    assert!(
        hit.elapsed < delay,
        "a hit took {:?}: it waited for the origin",
        hit.elapsed
    );
    assert_eq!(
        lab.origin_requests().unwrap(),
        1,
        "a hit reached the origin"
    );
    println!(
        "  miss {:.1} ms, hit {:.1} ms (origin delay {} ms)",
        miss.elapsed.as_secs_f64() * 1e3,
        hit.elapsed.as_secs_f64() * 1e3,
        delay.as_millis()
    );
    // Every node has its own cache.
    assert_eq!(fetch(&lab, n2, path).cache, "MISS");
    assert_eq!(fetch(&lab, n2, path).cache, "HIT");
    assert_eq!(lab.origin_requests().unwrap(), 2);
    // What the origin does not have is not cached, and says so each time.
    let missing = format!("/o/1/{}", 16 * 1024 * 1024 + 1);
    for _ in 0..2 {
        let f = fetch(&lab, n1, &missing);
        assert_eq!((f.status, f.cache.as_str()), (404, "MISS"));
    }
    assert_eq!(lab.origin_requests().unwrap(), 4);

    // Emptied caches miss again; the servers are new processes that answer.
    let before: Vec<u32> = (1..=2).map(|i| lab.server_pid(i).unwrap()).collect();
    let started = Instant::now();
    lab.clear_caches().unwrap();
    println!(
        "  caches cleared in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    for (i, old) in before.iter().enumerate() {
        let new = lab.server_pid(i + 1).unwrap();
        assert_ne!(new, *old, "n{}'s nginx was not restarted", i + 1);
        assert!(!pid_alive(*old));
    }
    let again = fetch(&lab, n1, path);
    assert_eq!(again.cache, "MISS");
    assert!(again.elapsed >= delay);
    assert_eq!(lab.origin_requests().unwrap(), 5);
    assert_eq!(fetch(&lab, n1, path).cache, "HIT");
    assert_eq!(fetch(&lab, n2, path).cache, "MISS");
    assert_eq!(lab.origin_requests().unwrap(), 6);

    // Another process's handle: the cache settings come back from lab.info, and it clears the
    // caches through the recorded pids.
    let mut handle = Lab::open(&name).unwrap();
    assert_eq!(
        (
            handle.spec().server,
            handle.spec().cache_mb,
            handle.spec().origin_delay_ms
        ),
        (ServerKind::Cache, 32, 150)
    );
    assert_eq!(handle.origin_pid(), Some(origin_pid));
    assert_eq!(handle.origin_requests().unwrap(), 6);
    handle.clear_caches().unwrap();
    drop(handle);
    assert_eq!(fetch(&lab, n2, path).cache, "MISS");
    assert_eq!(lab.origin_requests().unwrap(), 7);

    // A lab without origin has no caches to clear.
    let other = unique_name("np");
    let mut plain = Lab::up(
        LabSpec::new(&other, 1)
            .server(ServerKind::Nginx)
            .agents(false),
    )
    .unwrap();
    assert!(matches!(
        plain.clear_caches(),
        Err(LabError::InvalidSpec(_))
    ));
    assert!(matches!(
        plain.origin_requests(),
        Err(LabError::InvalidSpec(_))
    ));
    assert_eq!(plain.origin_pid(), None);
    assert!(list_netns(&ns_name(&other, "origin")).is_empty());
    plain.down().unwrap();
    lab_is_gone(&other);

    let report = lab.down().unwrap();
    assert_eq!(
        report.namespaces, 5,
        "sw, client, n1, n2, origin: {report:?}"
    );
    origin_is_gone(&name, origin_pid);
}

fn cache_lab_with_agents_comes_up_and_goes_down() {
    let name = unique_name("ca");
    let lab = Lab::up(
        LabSpec::new(&name, 2)
            .server(ServerKind::Cache)
            .policy(PolicyKind::Hash),
    )
    .unwrap();
    assert!(lab.agent_pid(1).is_some() && lab.agent_pid(2).is_some());
    assert_eq!(lab.spec().origin_delay_ms, 20, "the default delay");
    let conf = std::fs::read_to_string(lab.node_dir(2).join("nginx.conf")).unwrap();
    assert!(conf.contains("max_size=64m"), "the default size:\n{conf}");
    let path = "/o/77/4096";
    assert_eq!(fetch(&lab, lab.node_http_addr(2), path).cache, "MISS");
    assert_eq!(fetch(&lab, lab.node_http_addr(2), path).cache, "HIT");
    assert_eq!(lab.origin_requests().unwrap(), 1);
    let origin_pid = lab.origin_pid().unwrap();
    // Dropping the lab tears it down, origin included.
    drop(lab);
    origin_is_gone(&name, origin_pid);
}

fn haproxy_balances_by_uri_and_stops() {
    assert!(
        Path::new(HAPROXY).exists(),
        "{HAPROXY} is required (Debian's haproxy)"
    );
    let name = unique_name("hp");
    let mut lab = Lab::up(
        LabSpec::new(&name, 3)
            .server(ServerKind::Cache)
            .agents(false)
            .origin_delay_ms(0),
    )
    .unwrap();
    let port = 8080;
    let pid = lab.start_haproxy(1, port).unwrap();
    assert_eq!(lab.haproxy_pid(1), Some(pid));
    assert!(lab.node_dir(1).join("haproxy.cfg").exists());
    assert!(matches!(
        lab.start_haproxy(1, port),
        Err(LabError::InvalidSpec(_))
    ));
    assert!(matches!(
        lab.start_haproxy(2, 80),
        Err(LabError::InvalidSpec(_))
    ));
    let front = std::net::SocketAddr::new(lab.node_address(1).into(), port);

    // The same URI always goes to the same node (whose cache then has it); different URIs
    // spread over every node.
    let mut by_node = std::collections::BTreeMap::<String, usize>::new();
    for id in 0..30 {
        let path = format!("/o/{id}/2000");
        let first = fetch(&lab, front, &path);
        assert_eq!(
            (first.status, first.cache.as_str()),
            (200, "MISS"),
            "{path}"
        );
        for _ in 0..2 {
            let again = fetch(&lab, front, &path);
            assert_eq!(again.served_by, first.served_by, "{path} moved");
            assert_eq!(again.cache, "HIT", "{path}");
        }
        *by_node.entry(first.served_by).or_default() += 1;
    }
    println!("  30 URIs through HAProxy: {by_node:?}");
    assert_eq!(
        by_node.keys().collect::<Vec<_>>(),
        ["n1", "n2", "n3"],
        "URIs did not spread: {by_node:?}"
    );
    assert_eq!(lab.origin_requests().unwrap(), 30, "one miss per URI");

    // Stopped: gone, nothing listens on the port; started again; `down` stops it too.
    lab.stop_haproxy(1).unwrap();
    assert!(!pid_alive(pid));
    assert_eq!(lab.haproxy_pid(1), None);
    assert!(!lab.node_dir(1).join("haproxy.pid").exists());
    let listening = lab
        .exec("n1", &["ss", "-Htln", &format!("sport = :{port}")])
        .unwrap();
    assert!(listening.stdout.is_empty(), "HAProxy still listens");
    lab.stop_haproxy(1).unwrap(); // none running: no error
    // A port already taken: HAProxy exits and says why; once the port is free it starts.
    let taken = lab
        .in_node(1, || TcpListener::bind(front).unwrap())
        .unwrap();
    match lab.start_haproxy(1, port).unwrap_err() {
        LabError::NotReady { reason, tail, .. } => {
            assert!(reason.contains("exited"), "{reason}");
            assert!(
                tail.contains("8080"),
                "the log says which bind failed: {tail}"
            );
        }
        other => panic!("expected NotReady, got {other}"),
    }
    drop(taken);
    let again = lab.start_haproxy(1, port).unwrap();
    assert_ne!(again, pid);
    assert_eq!(fetch(&lab, front, "/o/3/2000").cache, "HIT");
    lab.down().unwrap();
    assert!(!pid_alive(again), "HAProxy survived down");
    lab_is_gone(&name);
}
