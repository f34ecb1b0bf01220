//! Lab figures, side by side in one run on one lab (2 nodes, static server):
//! - time to first byte over fresh connections to n1, for a target n1 serves itself and for one
//!   it hands to n2 (policy `hash`), interleaved;
//! - wrk throughput against n1 with no agent, with policy `local`, and with `round-robin`, both
//!   with keep-alive and with a new connection per request.
//!
//! `cargo bench -p baton --bench lab` (root). BATON_BENCH_TTFB_SAMPLES (500) and
//! BATON_BENCH_WRK_SECONDS (8) size it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use baton_lab::lab::target_hashed_to;
use baton_lab::{Lab, LabSpec, ServerKind};
use baton_policy::PolicyKind;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Connect, send, wait for the first response byte; then drain the response.
fn ttfb(addr: SocketAddr, target: &str) -> Duration {
    let request = format!("GET {target} HTTP/1.1\r\nHost: baton\r\nConnection: close\r\n\r\n");
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).expect("first byte");
    let elapsed = start.elapsed();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    elapsed
}

fn quantiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

fn wrk(lab: &Lab, seconds: u64, close: bool) -> f64 {
    let url = format!("http://{}/f/1k", lab.node_address(1));
    let duration = format!("-d{seconds}s");
    let mut args = vec!["wrk", "-t2", "-c32", duration.as_str()];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(&url);
    let out = lab.exec("client", &args).expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("wrk reported errors:\n{text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

fn main() {
    let samples = env_or("BATON_BENCH_TTFB_SAMPLES", 500) as usize;
    let seconds = env_or("BATON_BENCH_WRK_SECONDS", 8);
    let spec = LabSpec::new(baton_lab::lab::unique_name("bench"), 2)
        .server(ServerKind::Static)
        .policy(PolicyKind::Hash)
        .exe(env!("CARGO_BIN_EXE_baton"));
    let mut lab = Lab::up(spec).expect("lab up (root)");

    let n1 = SocketAddr::new(lab.node_address(1).into(), 80);
    let (local, remote) = (
        target_hashed_to("/f/1k", 1, 2),
        target_hashed_to("/f/1k", 2, 2),
    );
    let (local_t, remote_t) = lab
        .in_client(move || {
            for _ in 0..20 {
                ttfb(n1, &local);
                ttfb(n1, &remote);
            }
            let (mut l, mut r) = (Vec::new(), Vec::new());
            for _ in 0..samples {
                l.push(ttfb(n1, &local));
                r.push(ttfb(n1, &remote));
            }
            (l, r)
        })
        .unwrap();
    let (l50, l99) = quantiles(local_t);
    let (r50, r99) = quantiles(remote_t);
    println!("time to first byte, fresh connection to n1, {samples} requests each (policy hash)");
    println!("  {:<28} {:>10} {:>10}", "", "p50 us", "p99 us");
    println!(
        "  {:<28} {:>10.0} {:>10.0}",
        "served by n1 (local)", l50, l99
    );
    println!("  {:<28} {:>10.0} {:>10.0}", "handed off to n2", r50, r99);

    // A load generator that opens thousands of connections a second runs out of ephemeral ports
    // to its own TIME_WAIT sockets within seconds; then connect() itself is the bottleneck, whatever
    // the servers do. Let the client reuse them, as load generators are set up to.
    for setting in [
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=1024 65535",
    ] {
        let out = lab
            .exec("client", &["sysctl", "-qw", setting])
            .expect("sysctl in the client namespace");
        assert!(out.status.success(), "sysctl -w {setting}");
    }
    println!("wrk -t2 -c32 {seconds}s against n1, GET /f/1k (requests/s; client: tcp_tw_reuse=1)");
    println!("  {:<28} {:>12} {:>16}", "", "keep-alive", "conn. per req.");
    let row = |name: &str, lab: &Lab| {
        let ka = wrk(lab, seconds, false);
        let close = wrk(lab, seconds, true);
        println!("  {name:<28} {ka:>12.0} {close:>16.0}");
        if std::env::var_os("BATON_BENCH_VERBOSE").is_some() {
            for i in 1..=lab.nodes() {
                let m = lab.scrape_metrics(i).unwrap_or_default();
                let mut lines: Vec<String> = m
                    .iter()
                    .filter(|(k, v)| {
                        **v != 0.0
                            && (k.contains("fallback")
                                || k.contains("refused")
                                || k.contains("dropped")
                                || k.contains("handoffs"))
                    })
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                lines.sort();
                println!("    n{i}: {}", lines.join(" "));
            }
        }
    };
    for i in 1..=2 {
        lab.stop_agent(i).unwrap();
    }
    row("no agent (plain servers)", &lab);
    lab.restart_agents(PolicyKind::Local).unwrap();
    row("policy local", &lab);
    lab.restart_agents(PolicyKind::RoundRobin).unwrap();
    row("policy round-robin", &lab);
    lab.restart_agents(PolicyKind::LeastConn).unwrap();
    row("policy least-conn", &lab);
    lab.down().unwrap();
}
