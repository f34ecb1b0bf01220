//! `baton lab demo`: a 3-node lab (agents on), a short bounded workload from the client, per-node statistics.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, bail};
use baton_policy::PolicyKind;

use crate::content::{expected_sha256, sha256_hex};
use crate::http_client::HttpClient;
use crate::lab::{Lab, LabSpec, ServerKind, policy_name};
use crate::metrics::metric_sum;
use crate::prerequisites;

const NODES: usize = 3;
const CONNECTIONS_PER_NODE: usize = 4;
const REQUESTS_PER_CONNECTION: usize = 50;
const PATHS: &[&str] = &["/f/1k", "/f/100k", "/index.html"];

/// What one connection (or all connections to one node) saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub requests: usize,
    pub ok: usize,
    pub errors: usize,
    pub bytes: usize,
    pub served_by: BTreeMap<String, usize>,
    pub first_errors: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.ok += other.ok;
        self.errors += other.errors;
        self.bytes += other.bytes;
        for (node, n) in other.served_by {
            *self.served_by.entry(node).or_default() += n;
        }
        for e in other.first_errors {
            if self.first_errors.len() < 5 {
                self.first_errors.push(e);
            }
        }
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_errors.len() < 5 {
            self.first_errors.push(e);
        }
    }
}

/// Builds lab `name` ({NODES} nodes, agents on), runs the workload, prints the tables, tears the
/// lab down (also on error). Fails if any request failed or returned wrong bytes.
/// First checks what the machine needs ([`prerequisites::check`]) and names all that is missing.
pub fn run(name: &str, server: ServerKind, policy: PolicyKind) -> anyhow::Result<()> {
    crate::lab::validate_name(name)?;
    prerequisites::check(server, true)?;
    let spec = LabSpec::new(name, NODES)
        .server(server)
        .policy(policy)
        .agents(true);
    println!(
        "building lab {name}: {NODES} nodes, {server} server, policy {}",
        policy_name(policy)
    );
    let mut lab = Lab::up(spec).with_context(|| format!("lab up {name}"))?;
    let result = workload_and_report(&lab);
    let down = lab.down().with_context(|| format!("lab down {name}"));
    let failures = result?;
    down?;
    if failures > 0 {
        bail!("{failures} requests failed or returned a wrong body");
    }
    println!("all requests answered with the right bytes");
    Ok(())
}

/// Runs the workload and prints the tables; returns the number of failed requests.
fn workload_and_report(lab: &Lab) -> anyhow::Result<usize> {
    println!(
        "workload: {CONNECTIONS_PER_NODE} keep-alive connections per node x {REQUESTS_PER_CONNECTION} requests over {}",
        PATHS.join(", ")
    );
    let per_node = workload(lab)?;

    println!();
    println!(
        "{:<6} {:>8} {:>8} {:>8} {:>10}  served by",
        "target", "requests", "ok", "errors", "MB"
    );
    for (i, t) in per_node.iter().enumerate() {
        let served: Vec<String> = t
            .served_by
            .iter()
            .map(|(n, c)| format!("{n}:{c}"))
            .collect();
        println!(
            "{:<6} {:>8} {:>8} {:>8} {:>10.1}  {}",
            format!("n{}", i + 1),
            t.requests,
            t.ok,
            t.errors,
            t.bytes as f64 / 1e6,
            served.join(" ")
        );
    }

    println!();
    println!(
        "{:<6} {:>10} {:>8} {:>11} {:>10} {:>14}  {:>8}",
        "node", "accepted", "local", "handed out", "handed in", "client bytes", "served"
    );
    let mut served_total: HashMap<String, usize> = HashMap::new();
    for t in &per_node {
        for (n, c) in &t.served_by {
            *served_total.entry(n.clone()).or_default() += c;
        }
    }
    for i in 1..=lab.nodes() {
        let metrics = lab.scrape_metrics(i);
        let get = |name: &str| match &metrics {
            Ok(m) => metric_sum(m, name).map_or("-".to_string(), |v| format!("{v}")),
            Err(_) => "?".to_string(),
        };
        println!(
            "{:<6} {:>10} {:>8} {:>11} {:>10} {:>14}  {:>8}",
            format!("n{i}"),
            get("baton_connections_accepted_total"),
            get("baton_connections_local_total"),
            get("baton_handoffs_out_total"),
            get("baton_handoffs_in_total"),
            get("baton_client_bytes_sent_total"),
            served_total.get(&format!("n{i}")).copied().unwrap_or(0)
        );
        if let Err(e) = metrics {
            println!("       (metrics of n{i}: {e})");
        }
    }
    let mut failures = 0;
    for (i, t) in per_node.iter().enumerate() {
        failures += t.errors;
        for e in &t.first_errors {
            println!("error (to n{}): {e}", i + 1);
        }
    }
    Ok(failures)
}

/// The workload: per node, [`CONNECTIONS_PER_NODE`] client threads in the client namespace, each
/// with one keep-alive connection and [`REQUESTS_PER_CONNECTION`] requests, every body checked.
fn workload(lab: &Lab) -> anyhow::Result<Vec<Tally>> {
    let expected: HashMap<&str, String> = PATHS
        .iter()
        .map(|p| (*p, expected_sha256(p).expect("demo paths are lab files")))
        .collect();
    let expected = &expected;
    let client_ns = lab.client_ns();
    let results = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for i in 1..=lab.nodes() {
            for c in 0..CONNECTIONS_PER_NODE {
                let addr = lab.node_http_addr(i);
                let ns = client_ns.clone();
                handles.push((
                    i,
                    scope.spawn(move || {
                        crate::netns::in_netns(&ns, || one_connection(addr, c, expected))
                    }),
                ));
            }
        }
        handles
            .into_iter()
            .map(|(i, h)| (i, h.join().expect("workload thread panicked")))
            .collect::<Vec<_>>()
    });
    let mut per_node = vec![Tally::default(); lab.nodes()];
    for (i, result) in results {
        per_node[i - 1].merge(result.context("entering the client namespace")?);
    }
    Ok(per_node)
}

fn one_connection(
    addr: std::net::SocketAddr,
    conn: usize,
    expected: &HashMap<&str, String>,
) -> Tally {
    let mut tally = Tally::default();
    let mut client = match HttpClient::connect(addr) {
        Ok(c) => c,
        Err(e) => {
            tally.requests = REQUESTS_PER_CONNECTION;
            tally.errors = REQUESTS_PER_CONNECTION - 1;
            tally.error(e.to_string());
            return tally;
        }
    };
    for r in 0..REQUESTS_PER_CONNECTION {
        let path = PATHS[(conn + r) % PATHS.len()];
        tally.requests += 1;
        match client.get(path) {
            Ok(resp) => {
                let served = resp.served_by().unwrap_or("(none)").to_string();
                *tally.served_by.entry(served).or_default() += 1;
                tally.bytes += resp.body.len();
                if resp.status != 200 {
                    tally.error(format!("GET {path} from {addr}: status {}", resp.status));
                } else if sha256_hex(&resp.body) != expected[path] {
                    tally.error(format!(
                        "GET {path} from {addr}: body of {} bytes does not match",
                        resp.body.len()
                    ));
                } else {
                    tally.ok += 1;
                }
            }
            Err(e) => tally.error(format!("GET {path} from {addr}: {e}")),
        }
    }
    tally
}
