//! Pure and loopback-only tests: names, generated configurations, `lab.info`, file contents,
//! metrics parsing, the HTTP client, the paced download and the static server (on 127.0.0.1).
//! One test builds a real lab (root, nginx) to kill, start, take over and stop agents: stand-in
//! agents, which this binary itself provides (`stand_in_agent`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use baton_agent::config::NodeConfig;
use baton_lab::cli::{AgentAction, LabCommand, up_spec};
use baton_lab::content::ContentStream;
use baton_lab::http_client::HttpError;
use baton_lab::lab::{
    MAX_CACHE_NODES, ORIGIN_ADDRESS, agent_config, apache_config, cache_nginx_config, down_by_name,
    haproxy_config, lab_info, nginx_config, node_address, ns_name, parse_lab_info, parse_node,
    parse_policy, policy_name, state_dir_of, unique_name, unique_name_under, validate_name,
    write_web_root,
};
use baton_lab::static_server::{
    MAX_OBJECT_SIZE, STATS_PATH, StaticConfig, object_size, parse_stats, safe_relative_path,
};
use baton_lab::{
    HttpClient, LAB_FILES, Lab, LabError, LabSpec, ServerKind, TeardownReport, expected_sha256,
    file_content, metric_sum, paced_get, paced_get_in_background, parse_metrics, sha256_hex,
};
use baton_policy::PolicyKind;
use clap::Parser;

#[test]
fn lab_names() {
    for good in ["a", "abc123", "0123456789", "demo"] {
        assert!(validate_name(good).is_ok(), "{good}");
    }
    for bad in ["", "A", "a-b", "a_b", "12345678901", "a b", "ä", "../x"] {
        assert!(
            matches!(validate_name(bad), Err(LabError::InvalidName(_))),
            "{bad}"
        );
    }
    let names: Vec<String> = (0..50).map(|_| unique_name("test")).collect();
    for n in &names {
        assert!(validate_name(n).is_ok(), "{n}");
    }
    let mut dedup = names.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), names.len());
    assert!(validate_name(&unique_name("a-very-long-prefix")).is_ok());
    // The group (what $BATON_LAB_PREFIX sets) comes first and is kept; the prefix is trimmed.
    let grouped = unique_name_under("cx", "longprefix");
    assert!(validate_name(&grouped).is_ok(), "{grouped}");
    assert!(grouped.starts_with("cxl"), "{grouped}");
    assert_eq!(grouped.len(), 10);
    assert!(unique_name_under("C-x", "t").starts_with("xt"));
    assert!(validate_name(&unique_name_under("abcdefghijkl", "t")).is_ok());
    assert!(matches!(
        LabSpec::new("ok", 0).validate(),
        Err(LabError::InvalidSpec(_))
    ));
    assert!(matches!(
        LabSpec::new("ok", 254).validate(),
        Err(LabError::InvalidSpec(_))
    ));
    assert!(LabSpec::new("ok", 253).validate().is_ok());
}

#[test]
fn addresses_and_namespaces() {
    assert_eq!(node_address(1).to_string(), "198.18.0.1");
    assert_eq!(node_address(253).to_string(), "198.18.0.253");
    assert_eq!(ns_name("lab1", "n3"), "baton-lab1-n3");
    // The longest interface name the lab makes fits IFNAMSIZ - 1.
    assert!(format!("p-n{}", 253).len() <= 15);
    assert!("p-origin".len() <= 15);
}

#[test]
fn policies_parse_and_print() {
    for (name, kind) in [
        ("local", PolicyKind::Local),
        ("round-robin", PolicyKind::RoundRobin),
        ("hash", PolicyKind::Hash),
    ] {
        assert_eq!(parse_policy(name).unwrap(), kind);
        assert_eq!(policy_name(kind), name);
    }
    assert!(parse_policy("nope").is_err());
    for kind in ServerKind::ALL {
        assert_eq!(kind.to_string().parse::<ServerKind>().unwrap(), kind);
        // The CLI (clap) spells it the same way.
        let value = clap::ValueEnum::to_possible_value(&kind).unwrap();
        assert_eq!(value.get_name(), kind.to_string());
    }
    assert_eq!("nginx".parse::<ServerKind>().unwrap(), ServerKind::Nginx);
    assert_eq!(
        "nginx-deferred".parse::<ServerKind>().unwrap(),
        ServerKind::NginxDeferred
    );
    assert_eq!("apache".parse::<ServerKind>().unwrap(), ServerKind::Apache);
    assert_eq!(ServerKind::Static.to_string(), "static");
    assert!("lighttpd".parse::<ServerKind>().is_err());
}

#[test]
fn agent_config_round_trips() {
    let key = "0123456789abcdef0123456789abcdef";
    let spec = LabSpec::new("cfg", 3).policy(PolicyKind::Hash);
    for i in 1..=3 {
        let config = agent_config(&spec, key, i).unwrap();
        let text = config.to_toml();
        let back = NodeConfig::from_toml(&text).unwrap();
        assert_eq!(back, config);
        assert_eq!(config.node.name, format!("n{i}"));
        assert_eq!(config.node.address, node_address(i));
        assert_eq!(config.node.interface, "eth0");
        assert_eq!(config.cluster.key, key);
        assert_eq!(config.cluster.service_ports, vec![80]);
        assert_eq!(config.cluster.members.len(), 3);
        assert_eq!(config.policy.kind, PolicyKind::Hash);
        assert_eq!(
            config.metrics.listen,
            Some(SocketAddr::new(node_address(i).into(), 9100))
        );
        assert_eq!(config.self_index(), i - 1);
        // The control port is the agent's default.
        assert!(
            !config
                .cluster
                .service_ports
                .contains(&config.cluster.control_port)
        );
    }
    let single = agent_config(&LabSpec::new("one", 1).policy(PolicyKind::Local), key, 1).unwrap();
    assert_eq!(single.cluster.members.len(), 1);
    assert_eq!(single.policy.kind, PolicyKind::Local);
    // A short key is the agent's business to refuse, and the error says which node.
    match agent_config(&spec, "short", 2) {
        Err(LabError::Config { node, .. }) => assert_eq!(node, "n2"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn nginx_config_has_what_the_lab_needs() {
    let conf = nginx_config(
        &PathBuf::from("/run/baton/labs/x/n2"),
        &PathBuf::from("/run/baton/labs/x/www"),
        2,
        false,
    );
    for needle in [
        "daemon off;",
        "master_process on;",
        "worker_processes 1;",
        "user root;",
        "pid /run/baton/labs/x/n2/nginx.pid;",
        "error_log /run/baton/labs/x/n2/server.log",
        "listen 198.18.0.2:80",
        "root /run/baton/labs/x/www;",
        "add_header X-Served-By n2 always;",
        "access_log off;",
        "sendfile on;",
        "keepalive_requests 10000;",
        "client_max_body_size 64m;",
        "location /upload/",
        "dav_methods PUT",
        "create_full_put_path on;",
        "root /run/baton/labs/x/n2/dav;",
    ] {
        assert!(
            conf.contains(needle),
            "nginx.conf lacks {needle:?}:\n{conf}"
        );
    }
}

#[test]
fn deferred_nginx_listens_with_deferred() {
    let dir = PathBuf::from("/run/baton/labs/x/n2");
    let www = PathBuf::from("/run/baton/labs/x/www");
    let plain = "listen 198.18.0.2:80 backlog=4096;";
    let deferred = "listen 198.18.0.2:80 deferred backlog=4096;";
    assert!(nginx_config(&dir, &www, 2, false).contains(plain));
    assert!(nginx_config(&dir, &www, 2, true).contains(deferred));
    assert!(!ServerKind::Nginx.defers_accept() && !ServerKind::Static.defers_accept());
    assert!(ServerKind::NginxDeferred.defers_accept() && ServerKind::Apache.defers_accept());
}

#[test]
fn apache_config_has_what_the_lab_needs() {
    let conf = apache_config(
        &PathBuf::from("/run/baton/labs/x/n2"),
        &PathBuf::from("/run/baton/labs/x/www"),
        2,
    );
    for needle in [
        "LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so",
        "LoadModule headers_module /usr/lib/apache2/modules/mod_headers.so",
        "PidFile /run/baton/labs/x/n2/apache2.pid",
        "ErrorLog /run/baton/labs/x/n2/server.log",
        "DefaultRuntimeDir /run/baton/labs/x/n2/apache-run",
        "Listen 198.18.0.2:80",
        "AcceptFilter http data",
        "DocumentRoot /run/baton/labs/x/www",
        "<Directory /run/baton/labs/x/www>",
        "Header always set X-Served-By n2",
        "MaxKeepAliveRequests 10000",
    ] {
        assert!(
            conf.contains(needle),
            "apache2.conf lacks {needle:?}:\n{conf}"
        );
    }
    // Every module it loads is one Debian ships.
    for line in conf.lines().filter(|l| l.starts_with("LoadModule ")) {
        let path = line.split_whitespace().nth(2).unwrap();
        assert!(path.starts_with(baton_lab::lab::APACHE_MODULES), "{line}");
    }
}

#[test]
fn cache_nginx_config_has_what_the_cache_tier_needs() {
    let dir = PathBuf::from("/run/baton/labs/x/n2");
    let www = PathBuf::from("/run/baton/labs/x/www");
    let conf = cache_nginx_config(&dir, &www, 2, 48, false);
    for needle in [
        "proxy_cache_path /run/baton/labs/x/n2/cache levels=1:2 keys_zone=baton:16m \
         max_size=48m inactive=1h use_temp_path=off;",
        "upstream origin {",
        "server 198.18.0.250:80;",
        "keepalive 32;",
        "location /o/ {",
        "proxy_pass http://origin;",
        "proxy_http_version 1.1;",
        "proxy_set_header Connection \"\";",
        "proxy_cache baton;",
        "proxy_cache_valid 200 1h;",
        "proxy_cache_lock off;",
        "proxy_hide_header X-Served-By;",
        "add_header X-Cache-Status $upstream_cache_status always;",
        // What every nginx node has: the web root, uploads, the node's name on every response.
        "listen 198.18.0.2:80 backlog=4096;",
        "root /run/baton/labs/x/www;",
        "location /upload/",
    ] {
        assert!(
            conf.contains(needle),
            "cache nginx.conf lacks {needle:?}:\n{conf}"
        );
    }
    // The /o/ location names the node itself: its add_header replaces the server's.
    let location = &conf[conf.find("location /o/").unwrap()..];
    assert!(location.contains("add_header X-Served-By n2 always;"));
    // With the lock on (`--cache-lock`).
    let locked = cache_nginx_config(&dir, &www, 2, 48, true);
    assert!(locked.contains("proxy_cache_lock on;") && !locked.contains("proxy_cache_lock off;"));
    // The plain nginx configuration has none of it.
    let plain = nginx_config(&dir, &www, 2, false);
    assert!(!plain.contains("proxy_cache") && !plain.contains("location /o/"));
    assert_eq!(ORIGIN_ADDRESS.octets()[3] as usize, MAX_CACHE_NODES + 1);
}

#[test]
fn cache_lab_specs() {
    let spec = LabSpec::new("c1", 3).server(ServerKind::Cache);
    assert_eq!((spec.cache_mb, spec.origin_delay_ms), (64, 20));
    assert!(spec.validate().is_ok());
    assert!(ServerKind::Cache.has_origin() && !ServerKind::Nginx.has_origin());
    assert_eq!("cache".parse::<ServerKind>().unwrap(), ServerKind::Cache);
    for bad in [
        spec.clone().cache_mb(0),
        spec.clone().origin_delay_ms(30_001),
        LabSpec::new("c1", 250).server(ServerKind::Cache),
    ] {
        assert!(
            matches!(bad.validate(), Err(LabError::InvalidSpec(_))),
            "{bad:?}"
        );
    }
    assert!(
        LabSpec::new("c1", 249)
            .server(ServerKind::Cache)
            .validate()
            .is_ok()
    );
    assert!(spec.clone().origin_delay_ms(0).validate().is_ok());
    // Other kinds ignore the cache settings, and keep all 253 nodes.
    assert!(LabSpec::new("c1", 253).cache_mb(0).validate().is_ok());
}

#[test]
fn haproxy_config_balances_by_uri_over_every_node() {
    let conf = haproxy_config(2, 8080, 3);
    for needle in [
        "mode http",
        "bind 198.18.0.2:8080",
        "balance uri",
        "hash-type consistent",
        "http-reuse safe",
        "timeout connect",
        "timeout client",
        "timeout server",
        "log stdout",
        "server n1 198.18.0.1:80",
        "server n2 198.18.0.2:80",
        "server n3 198.18.0.3:80",
    ] {
        assert!(
            conf.contains(needle),
            "haproxy.cfg lacks {needle:?}:\n{conf}"
        );
    }
    assert!(!conf.contains("server n4"));
    // HAProxy itself accepts it, without a warning.
    let file =
        std::env::temp_dir().join(format!("baton-lab-unit-{}-haproxy.cfg", std::process::id()));
    std::fs::write(&file, &conf).unwrap();
    let out = std::process::Command::new(baton_lab::lab::HAPROXY)
        .arg("-c")
        .arg("-f")
        .arg(&file)
        .output()
        .expect("Debian's haproxy is required");
    std::fs::remove_file(&file).unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "haproxy -c: {said}");
    assert!(
        !said.contains("WARNING") && !said.contains("ALERT"),
        "haproxy -c: {said}"
    );
}

#[test]
fn file_contents_are_deterministic() {
    for (path, len) in LAB_FILES {
        let a = file_content(path, *len);
        assert_eq!(a.len(), *len);
        assert_eq!(a, file_content(path, *len));
        assert_eq!(expected_sha256(path).unwrap(), sha256_hex(&a));
        assert!(a.iter().all(|&b| b.is_ascii_graphic() || b == b'\n'));
    }
    assert_eq!(
        LAB_FILES.iter().find(|(p, _)| *p == "/f/1k").unwrap().1,
        1024
    );
    assert_eq!(
        LAB_FILES.iter().find(|(p, _)| *p == "/f/100k").unwrap().1,
        102_400
    );
    assert_eq!(
        LAB_FILES.iter().find(|(p, _)| *p == "/f/10m").unwrap().1,
        10_485_760
    );
    assert!(LAB_FILES.iter().any(|(p, _)| *p == "/index.html"));
    // A shorter file is a prefix of a longer one; different paths differ.
    assert_eq!(file_content("/x", 100), file_content("/x", 1000)[..100]);
    assert_ne!(file_content("/f/1k", 1024), file_content("/f/100k", 1024));
    // Not a repeating pattern: every 64-byte line of 100 KiB is distinct.
    let big = file_content("/f/100k", 102_400);
    let mut lines: Vec<&[u8]> = big.chunks(64).collect();
    let n = lines.len();
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), n);
    assert_eq!(expected_sha256("/nope"), None);
}

#[test]
fn metrics_text_parses() {
    let text = "\
# HELP baton_mesh_peers_up Peers whose control connection is up.
# TYPE baton_mesh_peers_up gauge
baton_mesh_peers_up 2
baton_connections_accepted_total 17
baton_handoffs_out_total{peer=\"n2\"} 3
baton_handoffs_out_total{peer=\"n3\",note=\"a }b\"} 4 1700000000
weird_value +Inf

garbage line without value
baton_latency_seconds_sum 0.25
# EOF
";
    let m = parse_metrics(text);
    assert_eq!(m["baton_mesh_peers_up"], 2.0);
    assert_eq!(m["baton_connections_accepted_total"], 17.0);
    assert_eq!(m["baton_handoffs_out_total{peer=\"n2\"}"], 3.0);
    assert_eq!(
        m["baton_handoffs_out_total{peer=\"n3\",note=\"a }b\"}"],
        4.0
    );
    assert_eq!(m["weird_value"], f64::INFINITY);
    assert_eq!(m["baton_latency_seconds_sum"], 0.25);
    assert_eq!(m.len(), 6);
    assert_eq!(metric_sum(&m, "baton_handoffs_out_total"), Some(7.0));
    assert_eq!(metric_sum(&m, "baton_mesh_peers_up"), Some(2.0));
    assert_eq!(metric_sum(&m, "baton_handoffs_out"), None);
    assert_eq!(metric_sum(&m, "absent"), None);
}

#[test]
fn url_paths_stay_inside_the_root() {
    assert_eq!(safe_relative_path("/f/1k"), Some(PathBuf::from("f/1k")));
    assert_eq!(safe_relative_path("/"), Some(PathBuf::new()));
    assert_eq!(safe_relative_path("/a//./b"), Some(PathBuf::from("a/b")));
    assert_eq!(safe_relative_path("/a%20b"), Some(PathBuf::from("a b")));
    for bad in [
        "/../etc/passwd",
        "/a/../../x",
        "/%2e%2e/x",
        "/a%2f..%2fb",
        "/%00",
        "/%zz",
        "relative",
    ] {
        assert_eq!(safe_relative_path(bad), None, "{bad}");
    }
}

fn temp_root() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "baton-lab-unit-{}-{}",
        std::process::id(),
        unique_name("r")
    ));
    write_web_root(&dir).unwrap();
    dir
}

#[test]
fn static_server_on_loopback() {
    let root = temp_root();
    let server =
        baton_lab::static_server::start("127.0.0.1:0".parse().unwrap(), &root, "unit").unwrap();
    let mut client = HttpClient::connect(server.addr()).unwrap();
    for (path, len) in LAB_FILES {
        let resp = client.get(path).unwrap();
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.served_by(), Some("unit"));
        assert_eq!(
            resp.header("content-length"),
            Some(len.to_string().as_str())
        );
        assert_eq!(
            sha256_hex(&resp.body),
            expected_sha256(path).unwrap(),
            "{path}"
        );
    }
    let index = client.get("/").unwrap();
    assert_eq!(index.header("content-type"), Some("text/html"));
    assert_eq!(index.body, file_content("/index.html", 4096));
    let head = client.head("/f/100k").unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("102400"));
    assert!(head.body.is_empty());
    let missing = client.get("/nope").unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(missing.served_by(), Some("unit"));
    assert_eq!(client.get("/../etc/passwd").unwrap().status, 403);
    assert_eq!(client.get("/%2e%2e/%2e%2e/etc/passwd").unwrap().status, 403);
    assert_eq!(client.put("/f/1k", b"x").unwrap().status, 405);
    let body = file_content("/echo", 300 * 1024);
    let echo = client.post("/echo", &body).unwrap();
    assert_eq!(echo.status, 200);
    assert_eq!(echo.body, body);
    assert_eq!(client.post("/echo", b"").unwrap().body, b"");
    assert_eq!(client.get("/echo").unwrap().status, 405);
    // All of it over one keep-alive connection.
    assert_eq!(client.connects(), 1);
    assert_eq!(client.requests(), LAB_FILES.len() + 9);
    // A symlink out of the root is refused.
    std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
    assert_eq!(client.get("/etc/hostname").unwrap().status, 403);
    drop(client);
    server.stop();
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn static_server_stops_with_idle_keep_alive_connections() {
    let root = temp_root();
    let server =
        baton_lab::static_server::start("127.0.0.1:0".parse().unwrap(), &root, "unit").unwrap();
    let mut client = HttpClient::connect(server.addr()).unwrap();
    assert_eq!(client.get("/f/1k").unwrap().status, 200);
    let started = Instant::now();
    server.stop();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stop waited for an idle connection"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn content_streams_piecewise_as_file_content() {
    // Pinned by an independent implementation of the generator: the lab's expected bytes (and
    // every cache that stored them) must not drift.
    assert_eq!(
        sha256_hex(&file_content("/f/1k", 1024)),
        "9f5d251ce610031fb3cf5ccf5bae077e892e17e44d78696cf34ce7bce6f5b9e1"
    );
    assert_eq!(
        sha256_hex(&file_content("/o/7/1000", 1000)),
        "71d2acdf828f50d2a9752e26f53a5a60c5ffdf713fc17833c22fbd8e382270ed"
    );
    let whole = file_content("/o/3/5000", 5000);
    let mut stream = ContentStream::new("/o/3/5000");
    let mut pieces = Vec::new();
    for n in [0, 1, 7, 8, 63, 64, 65, 1000, 3792] {
        stream.fill(&mut pieces, n);
    }
    assert_eq!(stream.position(), 5000);
    assert!(pieces == whole, "a stream filled in pieces differs");
}

#[test]
fn generated_object_paths() {
    assert_eq!(object_size("/o/1/1024"), Some(1024));
    assert_eq!(object_size("/o/0/0"), Some(0));
    assert_eq!(
        object_size("/o/18446744073709551616123/16777216"),
        Some(MAX_OBJECT_SIZE)
    );
    for bad in [
        "/o/1/16777217",
        "/o/1/99999999999999999999999",
        "/o/x/10",
        "/o//10",
        "/o/1/",
        "/o/1",
        "/o/1/10/",
        "/o/1/10/x",
        "/o/1/+10",
        "/o/-1/10",
        "/o/1/1k",
        "/f/1/10",
        "/o/1/%31",
    ] {
        assert_eq!(object_size(bad), None, "{bad}");
    }
    assert_eq!(parse_stats("requests 42\n"), Some(42));
    assert_eq!(parse_stats("requests 0"), Some(0));
    assert_eq!(parse_stats("requests x\n"), None);
    assert_eq!(parse_stats(""), None);
}

#[test]
fn static_server_generates_objects() {
    let root = temp_root();
    let server =
        baton_lab::static_server::start("127.0.0.1:0".parse().unwrap(), &root, "unit").unwrap();
    let mut client = HttpClient::connect(server.addr()).unwrap();
    for (path, size) in [
        ("/o/7/1000", 1000),
        ("/o/8/1000", 1000),
        ("/o/1/300000", 300_000),
    ] {
        let resp = client.get(path).unwrap();
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.served_by(), Some("unit"));
        assert_eq!(
            resp.header("content-length"),
            Some(size.to_string().as_str())
        );
        assert_eq!(resp.header("cache-control"), Some("max-age=3600"), "{path}");
        assert!(
            resp.body == file_content(path, size),
            "{path}: body differs"
        );
    }
    // The largest object, streamed in frames, is exactly its content.
    let path = format!("/o/99/{MAX_OBJECT_SIZE}");
    let big = client.get(&path).unwrap();
    assert_eq!(big.status, 200);
    assert_eq!(big.body.len(), MAX_OBJECT_SIZE);
    assert_eq!(
        sha256_hex(&big.body),
        sha256_hex(&file_content(&path, MAX_OBJECT_SIZE))
    );
    let head = client.head("/o/5/4096").unwrap();
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("4096"))
    );
    assert!(head.body.is_empty());
    let empty = client.get("/o/5/0").unwrap();
    assert_eq!((empty.status, empty.body.len()), (200, 0));
    for missing in [
        format!("/o/1/{}", MAX_OBJECT_SIZE + 1),
        "/o/x/10".to_string(),
        "/o/1".to_string(),
        "/o/1/10/".to_string(),
    ] {
        let resp = client.get(&missing).unwrap();
        assert_eq!(resp.status, 404, "{missing}");
        assert_eq!(resp.served_by(), Some("unit"));
    }
    assert_eq!(client.post("/o/1/10", b"x").unwrap().status, 405);
    // No file on disk was made for them.
    assert!(!root.join("o").exists());
    assert_eq!(client.connects(), 1);
    drop(client);
    server.stop();
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn static_server_delays_responses_and_counts_them() {
    let root = temp_root();
    let delay = Duration::from_millis(300);
    let config = StaticConfig::new(&root, "slow").unwrap().with_delay(delay);
    let server =
        baton_lab::static_server::start_with("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let mut client = HttpClient::connect(server.addr()).unwrap();
    let stats = |client: &mut HttpClient| {
        let started = Instant::now();
        let resp = client.get(STATS_PATH).unwrap();
        let elapsed = started.elapsed();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("cache-control"), Some("no-store"));
        assert_eq!(resp.served_by(), Some("slow"));
        assert!(
            elapsed < delay,
            "/_stats took {elapsed:?}: it must not wait"
        );
        parse_stats(&String::from_utf8_lossy(&resp.body)).expect("requests N")
    };
    assert_eq!(stats(&mut client), 0);
    for (k, path) in ["/o/1/100", "/f/1k", "/nope", "/o/1/100"]
        .iter()
        .enumerate()
    {
        let started = Instant::now();
        let resp = client.get(path).unwrap();
        let elapsed = started.elapsed();
        assert!(elapsed >= delay, "{path} answered after {elapsed:?}");
        assert!(resp.status == 200 || *path == "/nope", "{path}");
        // Each response counts once; asking for the count does not count.
        assert_eq!(stats(&mut client), k as u64 + 1);
        assert_eq!(stats(&mut client), k as u64 + 1);
    }
    assert_eq!(server.requests(), 4);
    assert_eq!(client.post(STATS_PATH, b"").unwrap().status, 405);
    drop(client);
    server.stop();
    std::fs::remove_dir_all(&root).unwrap();
}

/// A one-shot server on loopback that answers every request with `response`.
fn canned_server(responses: Vec<&'static [u8]>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        for response in responses {
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                let n = stream.read(&mut chunk).unwrap();
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            buf.drain(..end);
            // Dribble the response out in small pieces.
            for piece in response.chunks(7) {
                stream.write_all(piece).unwrap();
            }
        }
    });
    addr
}

#[test]
fn http_client_reads_chunked_close_delimited_and_interim_responses() {
    let addr = canned_server(vec![
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Served-By: c\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    ]);
    let mut client = HttpClient::connect(addr).unwrap();
    let r = client.get("/a").unwrap();
    assert_eq!(
        (r.status, r.body.as_slice(), r.served_by()),
        (200, &b"hello world"[..], Some("c"))
    );
    assert_eq!(client.get("/b").unwrap().status, 204);
    assert_eq!(client.get("/c").unwrap().body, b"abc");
    assert!(client.is_open());
    let r = client.get("/d").unwrap();
    assert_eq!((r.version, r.body.as_slice()), (0, &b"until close"[..]));
    assert!(!client.is_open());
    assert_eq!(client.connects(), 1);
}

#[test]
fn http_client_reports_truncated_responses() {
    let addr = canned_server(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"]);
    let mut client = HttpClient::connect(addr).unwrap();
    let err = client.get("/").unwrap_err();
    assert!(err.to_string().contains("closed the connection"), "{err}");
}

#[test]
fn lab_info_round_trips() {
    let spec = LabSpec::new("hx1", 3)
        .server(ServerKind::NginxDeferred)
        .policy(PolicyKind::Hash)
        .agents(false)
        .cache_mb(128)
        .origin_delay_ms(5)
        .cache_lock(true);
    let text = lab_info(&spec, "00ff", Path::new("/opt/baton/bin/baton"));
    let (back, key) = parse_lab_info(&text).unwrap();
    assert_eq!(key, "00ff");
    assert_eq!(
        (
            back.name.as_str(),
            back.nodes,
            back.server,
            back.policy,
            back.agents
        ),
        ("hx1", 3, ServerKind::NginxDeferred, PolicyKind::Hash, false)
    );
    assert_eq!(back.exe.as_deref(), Some(Path::new("/opt/baton/bin/baton")));
    assert_eq!(
        (back.cache_mb, back.origin_delay_ms, back.cache_lock),
        (128, 5, true)
    );
    // Labs made before the executable and the cache settings were recorded: the current
    // executable is used, and the default settings.
    let old: String = text
        .lines()
        .filter(|l| !l.starts_with("exe") && !l.starts_with("cache_") && !l.starts_with("origin"))
        .map(|l| format!("{l}\n"))
        .collect();
    let (back, _) = parse_lab_info(&old).unwrap();
    assert_eq!(
        (
            back.exe,
            back.cache_mb,
            back.origin_delay_ms,
            back.cache_lock
        ),
        (None, 64, 20, false)
    );
    // A cache lab of before the lock was recorded ran with it on.
    let old_cache = old.replace("server = nginx-deferred", "server = cache");
    assert!(parse_lab_info(&old_cache).unwrap().0.cache_lock);
    let bad = text.replace("cache_mb = 128", "cache_mb = lots");
    assert_eq!(parse_lab_info(&bad).unwrap_err(), "bad cache_mb \"lots\"");
    let no_key: String = text
        .lines()
        .filter(|l| !l.starts_with("key"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(parse_lab_info(&no_key).unwrap_err(), "no key field");
    let bad = text.replace("nodes = 3", "nodes = three");
    assert_eq!(parse_lab_info(&bad).unwrap_err(), "bad nodes \"three\"");
    assert!(parse_lab_info(&text.replace("= hash", "= nope")).is_err());
}

#[test]
fn node_names_on_the_command_line() {
    for (s, i) in [("n1", 1), ("2", 2), ("n253", 253), ("n10", 10)] {
        assert_eq!(parse_node(s), Some(i), "{s}");
    }
    for s in [
        "", "n", "n0", "0", "n02", "x2", "n-1", "n254", "n 1", "nn1", "+1",
    ] {
        assert_eq!(parse_node(s), None, "{s:?}");
    }
}

#[derive(Parser)]
struct LabCli {
    #[command(subcommand)]
    cmd: LabCommand,
}

#[test]
fn lab_agent_command_line() {
    let parse = |args: &[&str]| {
        LabCli::try_parse_from(std::iter::once("lab").chain(args.iter().copied())).map(|c| c.cmd)
    };
    match parse(&["agent", "--name", "hx1", "n2", "stop", "--timeout", "5"]).unwrap() {
        LabCommand::Agent(a) => {
            assert_eq!(
                (a.name.name.as_str(), a.node.as_str(), a.action, a.timeout),
                ("hx1", "n2", AgentAction::Stop, 5)
            );
        }
        other => panic!("{other:?}"),
    }
    for (word, action) in [
        ("start", AgentAction::Start),
        ("kill", AgentAction::Kill),
        ("restart", AgentAction::Restart),
    ] {
        match parse(&["agent", "--name", "hx1", "1", word]).unwrap() {
            LabCommand::Agent(a) => assert_eq!((a.action, a.timeout), (action, 60)),
            other => panic!("{other:?}"),
        }
    }
    assert!(parse(&["agent", "--name", "hx1", "n2", "pause"]).is_err());
    assert!(parse(&["agent", "--name", "hx1", "n2"]).is_err());
}

#[test]
fn lab_up_command_line_for_a_cache_lab() {
    let up = |args: &[&str]| match LabCli::try_parse_from(
        ["lab", "up"].into_iter().chain(args.iter().copied()),
    )
    .map(|c| c.cmd)
    {
        Ok(LabCommand::Up(up)) => up,
        other => panic!("{args:?}: {other:?}"),
    };
    let spec = up_spec(&up(&[
        "--name",
        "cx1",
        "--server",
        "cache",
        "--cache-mb",
        "8",
        "--origin-delay-ms",
        "100",
    ]))
    .unwrap();
    assert_eq!(
        (
            spec.server,
            spec.cache_mb,
            spec.origin_delay_ms,
            spec.agents
        ),
        (ServerKind::Cache, 8, 100, true)
    );
    let defaults = up_spec(&up(&["--server", "cache", "--no-agent"])).unwrap();
    assert_eq!(
        (defaults.cache_mb, defaults.origin_delay_ms, defaults.agents),
        (64, 20, false)
    );
    // Not silently ignored by the other servers.
    for flag in ["--cache-mb", "--origin-delay-ms"] {
        let err = up_spec(&up(&["--server", "nginx", flag, "1"])).unwrap_err();
        assert!(err.to_string().contains("--server cache only"), "{err}");
    }
    assert!(up_spec(&up(&[])).is_ok());
}

#[test]
fn teardown_reports_count_pins() {
    assert!(TeardownReport::default().is_empty());
    let pins = TeardownReport {
        pins: 3,
        ..TeardownReport::default()
    };
    assert!(!pins.is_empty());
}

/// How a download test server ends its response.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// A normal close (FIN).
    Close,
    /// A reset: SO_LINGER 0, then close.
    Reset,
    /// Keeps the connection open, silent, this long.
    Hold(Duration),
}

/// A one-connection server on 127.0.0.1: reads one request head (sent back on the channel),
/// writes `head` and `body` (as the client's pace allows), waits until the client's kernel has
/// acknowledged all of it — a reset discards whatever is still queued, and the tests count the
/// bytes — and ends as `ending` says.
fn download_server(
    head: String,
    body: Vec<u8>,
    ending: Ending,
) -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut chunk = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&chunk[..n]),
            }
        }
        tx.send(String::from_utf8_lossy(&request).into_owned())
            .unwrap();
        if stream.write_all(head.as_bytes()).is_err() || stream.write_all(&body).is_err() {
            return;
        }
        wait_acknowledged(&stream);
        match ending {
            Ending::Close => {}
            Ending::Reset => nix::sys::socket::setsockopt(
                &stream,
                nix::sys::socket::sockopt::Linger,
                &libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            )
            .unwrap(),
            Ending::Hold(time) => std::thread::sleep(time),
        }
    });
    (addr, rx)
}

/// Waits until nothing `stream` sent is unacknowledged (TIOCOUTQ, the send queue, is empty).
fn wait_acknowledged(stream: &TcpStream) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ writes one int into `queued`.
        let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        assert_eq!(rc, 0, "TIOCOUTQ: {}", std::io::Error::last_os_error());
        if queued == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the client stopped reading");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn ok_head(content_length: Option<usize>) -> String {
    match content_length {
        Some(len) => {
            format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
        }
        None => "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_string(),
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn paced_download_keeps_its_rate() {
    let body = file_content("/f/1m", 1_000_000);
    let head = ok_head(Some(body.len()));
    let (addr, request) = download_server(head.clone(), body.clone(), Ending::Close);
    let d = paced_get(addr, "/f/1m", 2_000_000, TIMEOUT).unwrap();
    assert_eq!(
        request.recv().unwrap(),
        format!("GET /f/1m HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
    );
    assert_eq!(d.status, Some(200));
    assert_eq!(d.head, head);
    assert_eq!(d.content_length, Some(1_000_000));
    assert!(d.body == body, "{d}");
    assert_eq!(d.received, (head.len() + body.len()) as u64);
    assert!(
        d.is_complete() && !d.reset && !d.timed_out && !d.truncated,
        "{d}"
    );
    // 1 MB at 2 MB/s: half a second at least; not much more on loopback.
    assert!(d.elapsed >= Duration::from_millis(500), "{d}");
    assert!(d.elapsed < Duration::from_secs(5), "{d}");

    // Unpaced, the same transfer is far quicker: the time above is the pacing's.
    let (addr, _request) = download_server(head, body.clone(), Ending::Close);
    let d = paced_get(addr, "/f/1m", 0, TIMEOUT).unwrap();
    assert!(d.is_complete() && d.body == body, "{d}");
    assert!(d.elapsed < Duration::from_millis(450), "{d}");
}

#[test]
fn paced_download_reports_a_reset_with_the_bytes_before_it() {
    let body = file_content("/f/1m", 1_000_000);
    let (addr, _request) = download_server(
        ok_head(Some(body.len())),
        body[..300_000].to_vec(),
        Ending::Reset,
    );
    let d = paced_get(addr, "/f/1m", 3_000_000, TIMEOUT).unwrap();
    assert_eq!((d.status, d.content_length), (Some(200), Some(1_000_000)));
    assert!(
        d.reset && d.truncated && !d.timed_out && !d.is_complete(),
        "{d}"
    );
    assert_eq!(d.body.len(), 300_000, "{d}");
    assert!(
        d.body == body[..300_000],
        "the bytes before the reset differ"
    );
    assert_eq!(
        d.to_string().split(" in ").next(),
        Some("200: 0.30 MB of 1.00 MB")
    );
    assert!(d.to_string().ends_with(", reset"), "{d}");
}

#[test]
fn paced_download_reports_an_early_close() {
    let body = file_content("/f/1m", 1_000_000);
    let (addr, _request) = download_server(
        ok_head(Some(body.len())),
        body[..300_000].to_vec(),
        Ending::Close,
    );
    let d = paced_get(addr, "/f/1m", 3_000_000, TIMEOUT).unwrap();
    assert!(d.truncated && !d.reset && !d.timed_out, "{d}");
    assert_eq!(d.body.len(), 300_000, "{d}");
    assert!(d.to_string().ends_with(", cut short"), "{d}");
}

#[test]
fn paced_download_of_a_close_delimited_body() {
    let body = file_content("/f/100k", 100_000);
    let (addr, _request) = download_server(ok_head(None), body.clone(), Ending::Close);
    let d = paced_get(addr, "/", 1_000_000, TIMEOUT).unwrap();
    assert!(
        d.is_complete() && d.body == body && d.content_length.is_none(),
        "{d}"
    );
    // Without a length, only a clean close ends the body: a reset cuts it.
    let (addr, _request) = download_server(ok_head(None), body.clone(), Ending::Reset);
    let d = paced_get(addr, "/", 1_000_000, TIMEOUT).unwrap();
    assert!(d.reset && d.truncated && d.body == body, "{d}");
}

#[test]
fn paced_download_decodes_chunked_bodies_and_notices_a_missing_end() {
    let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_string();
    let full = b"5\r\nhello\r\n6;x=1\r\n world\r\n0\r\nTrailer: t\r\n\r\n".to_vec();
    let (addr, _request) = download_server(head.clone(), full.clone(), Ending::Close);
    let d = paced_get(addr, "/", 0, TIMEOUT).unwrap();
    assert!(d.is_complete() && d.body == b"hello world", "{d}");
    for cut in [11, 20, 25, 31] {
        let (addr, _request) = download_server(head.clone(), full[..cut].to_vec(), Ending::Close);
        let d = paced_get(addr, "/", 0, TIMEOUT).unwrap();
        assert!(d.truncated && !d.reset, "cut at {cut}: {d}");
        assert!(
            b"hello world".starts_with(&d.body),
            "cut at {cut}: {:?}",
            d.body
        );
    }
    let (addr, _request) = download_server(head, b"zz\r\nhello\r\n".to_vec(), Ending::Close);
    assert!(matches!(
        paced_get(addr, "/", 0, TIMEOUT),
        Err(HttpError::Malformed { .. })
    ));
}

#[test]
fn paced_download_times_out_on_a_silent_server_and_reports_a_missing_head() {
    let (addr, _request) = download_server(
        ok_head(Some(100_000)),
        vec![7; 10_000],
        Ending::Hold(Duration::from_secs(3)),
    );
    let d = paced_get(addr, "/", 0, Duration::from_millis(300)).unwrap();
    assert!(d.timed_out && d.truncated && !d.reset, "{d}");
    assert_eq!(d.body.len(), 10_000);
    assert!(d.elapsed < Duration::from_secs(2), "{d}");

    let (addr, _request) = download_server(
        "HTTP/1.1 200 OK\r\nContent-".to_string(),
        Vec::new(),
        Ending::Reset,
    );
    let d = paced_get(addr, "/", 0, TIMEOUT).unwrap();
    assert_eq!((d.status, d.received, d.head.as_str()), (None, 25, ""));
    assert!(d.reset && d.truncated, "{d}");

    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(matches!(
        paced_get(closed, "/", 0, TIMEOUT),
        Err(HttpError::Connect { .. })
    ));
}

#[test]
fn paced_download_in_the_background_shows_its_progress() {
    let body = file_content("/f/1m", 1_000_000);
    let head = ok_head(Some(body.len()));
    let total = (head.len() + body.len()) as u64;
    let (addr, _request) = download_server(head, body.clone(), Ending::Close);
    let download = paced_get_in_background(None, addr, "/f/1m", 1_000_000, TIMEOUT).unwrap();
    let received = download.wait_for_bytes(250_000, Duration::from_secs(5));
    // Caught in the middle: at 1 MB/s, a quarter of a megabyte takes about a quarter second.
    assert!(received >= 250_000 && received < total, "{received}");
    assert!(!download.is_finished());
    assert!(
        download.elapsed() >= Duration::from_millis(200),
        "{:?}",
        download.elapsed()
    );
    let progress = download.progress();
    let d = download.join().unwrap();
    assert!(d.is_complete() && d.body == body, "{d}");
    assert_eq!(
        progress.load(std::sync::atomic::Ordering::Relaxed),
        d.received
    );
    assert_eq!(d.received, total);

    // In a namespace that does not exist: the error comes from join.
    let download =
        paced_get_in_background(Some("baton-nonexistent-ns"), addr, "/", 0, TIMEOUT).unwrap();
    assert!(matches!(download.join(), Err(LabError::Io { .. })));
}

/// Not a test: the stand-in agent of `agents_are_killed_started_taken_over_and_stopped`, which
/// its lab starts (through the script of [`stand_in_baton`]) as `<this binary> --exact
/// stand_in_agent --ignored --nocapture --test-threads=1 CONFIG`. It serves `/metrics` with every
/// peer up until it is killed. It takes over as the real agent does: if the node's pid file names
/// another live stand-in agent, it sends it SIGTERM and binds the metrics address once that is
/// free. With a file `ignore-sigterm` in the node directory it ignores SIGTERM, like an agent
/// draining long connections.
#[test]
#[ignore = "the stand-in agent a lab test starts, not a test"]
fn stand_in_agent() {
    let Some(config_path) = std::env::args().find(|a| a.ends_with("/agent.toml")) else {
        eprintln!("stand_in_agent is the stand-in agent that a lab test starts with a config");
        return;
    };
    let config_path = PathBuf::from(config_path);
    let dir = config_path.parent().unwrap();
    let config = NodeConfig::from_file(&config_path).expect("stand-in agent: config");
    let me = std::process::id();
    if dir.join("ignore-sigterm").exists() {
        // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
        unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGTERM,
                nix::sys::signal::SigHandler::SigIgn,
            )
        }
        .unwrap();
    }
    let old = std::fs::read_to_string(dir.join("agent.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            // Only a stand-in agent of this node: never a process that reuses a stale pid.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(config_path.to_str().unwrap())
        });
    if let Some(old) = old {
        eprintln!(
            "stand-in agent {} (pid {me}) taking over from pid {old}",
            config.node.name
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let listen = config
        .metrics
        .listen
        .expect("stand-in agent: metrics.listen");
    let deadline = Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match TcpListener::bind(listen) {
            Ok(listener) => break listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("stand-in agent: binding {listen}: {e}"),
        }
    };
    eprintln!(
        "stand-in agent {} (pid {me}) listening on {listen}",
        config.node.name
    );
    let peers = config.cluster.members.len() - 1;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut request = Vec::new();
        let mut chunk = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&chunk[..n]),
            }
        }
        let body = format!(
            "# TYPE baton_mesh_peers_up gauge\nbaton_mesh_peers_up {peers}\nstand_in_pid {me}\n"
        );
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

/// A `baton` executable for a lab of stand-in agents: a script that answers `node --config FILE`
/// with this binary's [`stand_in_agent`] (the nodes run nginx, so nothing else is asked of it).
fn stand_in_baton() -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir().join(format!("baton-lab-unit-{}-agents", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("baton");
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "#!/bin/sh\n\
         [ \"$1\" = node ] && [ \"$2\" = --config ] || {{ echo \"stand-in baton: not $*\" >&2; exit 64; }}\n\
         exec '{}' --exact stand_in_agent --ignored --nocapture --test-threads=1 \"$3\"\n",
        exe.display()
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&path)
        .unwrap();
    file.write_all(script.as_bytes()).unwrap();
    path
}

/// Removes lab `.0` when dropped, however the test ends (a detached lab is not removed by its
/// `Lab`).
struct DownOnDrop(String);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = down_by_name(&self.0);
    }
}

/// Whether `pid` runs (exists and is not a zombie).
fn runs(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')')
        .is_some_and(|i| !stat[i + 1..].trim_start().starts_with(['Z', 'X']))
}

/// Whether `pid` is gone entirely: not running, and reaped (no zombie left).
fn reaped(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn pid_file(lab: &Lab, i: usize) -> Option<u32> {
    std::fs::read_to_string(lab.node_dir(i).join("agent.pid"))
        .ok()
        .map(|s| s.trim().parse().unwrap())
}

/// The pid that node `i`'s metrics endpoint says serves it.
fn serving_pid(lab: &Lab, i: usize) -> Option<u32> {
    let metrics = lab.scrape_metrics(i).ok()?;
    assert_eq!(
        metric_sum(&metrics, "baton_mesh_peers_up"),
        Some((lab.nodes() - 1) as f64)
    );
    metrics.get("stand_in_pid").map(|&p| p as u32)
}

#[test]
fn agents_are_killed_started_taken_over_and_stopped() {
    assert!(
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        unsafe { libc::geteuid() } == 0,
        "this test builds a lab: it must run as root"
    );
    assert!(
        Path::new(baton_lab::lab::NGINX).exists(),
        "nginx is required"
    );
    let exe = stand_in_baton();
    let name = unique_name("hx");
    let _cleanup = DownOnDrop(name.clone());
    let mut lab = Lab::up(LabSpec::new(&name, 2).server(ServerKind::Nginx).exe(&exe)).unwrap();

    // Killed: gone and reaped at once, pid file removed, the node's metrics silent.
    let first = lab.agent_pid(2).unwrap();
    assert_eq!(serving_pid(&lab, 2), Some(first));
    assert_eq!(lab.kill_agent(2).unwrap(), first);
    assert!(reaped(first), "the killed agent {first} is still in /proc");
    assert_eq!((lab.agent_pid(2), pid_file(&lab, 2)), (None, None));
    assert_eq!(serving_pid(&lab, 2), None);
    assert!(matches!(lab.kill_agent(2), Err(LabError::InvalidSpec(_))));
    assert!(matches!(
        lab.restart_agent(2),
        Err(LabError::InvalidSpec(_))
    ));

    // Started again, ready when start_agent returns.
    let second = lab.start_agent(2).unwrap();
    assert_ne!(second, first);
    assert_eq!(
        (pid_file(&lab, 2), serving_pid(&lab, 2)),
        (Some(second), Some(second))
    );
    assert!(
        matches!(lab.start_agent(2), Err(LabError::InvalidSpec(_))),
        "started twice"
    );

    // Taken over: the old agent exits by itself, the new one serves and is recorded.
    let (old, third) = lab.restart_agent(2).unwrap();
    assert_eq!(old, second);
    assert!(reaped(second), "the old agent {second} is still in /proc");
    assert_eq!(
        (lab.agent_pid(2), pid_file(&lab, 2)),
        (Some(third), Some(third))
    );
    assert_eq!(serving_pid(&lab, 2), Some(third));
    let log = std::fs::read_to_string(lab.agent_log(2)).unwrap();
    assert!(
        log.contains(&format!("(pid {third}) taking over from pid {second}")),
        "{log}"
    );

    // Stopped for good: it exits by itself.
    assert!(lab.stop_agent_wait(2, Duration::from_secs(5)).unwrap());
    assert!(reaped(third));
    assert_eq!(pid_file(&lab, 2), None);
    // An agent that does not exit on SIGTERM is killed after the timeout.
    std::fs::write(lab.node_dir(2).join("ignore-sigterm"), "").unwrap();
    let stubborn = lab.start_agent(2).unwrap();
    let started = Instant::now();
    assert!(!lab.stop_agent_wait(2, Duration::from_millis(500)).unwrap());
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(reaped(stubborn));
    std::fs::remove_file(lab.node_dir(2).join("ignore-sigterm")).unwrap();
    let fifth = lab.start_agent(2).unwrap();

    // Another process's view of the lab: a handle from lab.info, reaching the agents through
    // their pid files. (The agents stay this process's children, unreaped: zombies once they
    // die, which counts as gone.)
    lab.detach();
    let mut handle = Lab::open(&name).unwrap();
    assert_eq!(handle.nodes(), 2);
    assert_eq!(handle.spec().server, ServerKind::Nginx);
    assert_eq!(handle.spec().exe.as_deref(), Some(exe.as_path()));
    assert_eq!(handle.node_named("n2").unwrap(), 2);
    assert!(matches!(
        handle.node_named("n3"),
        Err(LabError::UnknownHost { .. })
    ));
    let n1 = handle.agent_pid(1).unwrap();
    assert_eq!(handle.kill_agent(1).unwrap(), n1);
    assert!(!runs(n1));
    assert_eq!((handle.agent_pid(1), pid_file(&handle, 1)), (None, None));
    let n1_new = handle.start_agent(1).unwrap();
    assert_eq!(serving_pid(&handle, 1), Some(n1_new));
    // A takeover from the handle's own child, and one from a recorded agent.
    let (old, n1_newer) = handle.restart_agent(1).unwrap();
    assert_eq!(old, n1_new);
    assert!(reaped(n1_new), "the handle reaps its own children");
    assert_eq!(serving_pid(&handle, 1), Some(n1_newer));
    let (old, n2_new) = handle.restart_agent(2).unwrap();
    assert_eq!(old, fifth);
    assert!(!runs(fifth));
    assert_eq!(
        (pid_file(&handle, 2), serving_pid(&handle, 2)),
        (Some(n2_new), Some(n2_new))
    );
    assert!(handle.stop_agent_wait(2, Duration::from_secs(5)).unwrap());
    assert!(!runs(n2_new));
    // Dropping a handle leaves the lab as it is.
    drop(handle);
    let mut handle = Lab::open(&name).unwrap();
    assert_eq!(handle.agent_pid(1), Some(n1_newer));
    let n2_last = handle.start_agent(2).unwrap();
    assert_eq!(serving_pid(&handle, 2), Some(n2_last));

    let report = handle.down().unwrap();
    assert!(
        report.processes >= 6,
        "2 nginx masters and workers, 2 agents: {report:?}"
    );
    assert_eq!(
        (report.pins, report.namespaces, report.state_dir),
        (0, 4, true),
        "{report:?}"
    );
    assert!(!state_dir_of(&name).exists());
    assert!(baton_lab::netns::list_netns(&ns_name(&name, "")).is_empty());
    assert!(matches!(Lab::open(&name), Err(LabError::NotFound(_))));
    std::fs::remove_dir_all(exe.parent().unwrap()).unwrap();
}
