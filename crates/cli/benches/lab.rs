//! Lab figures, side by side in one run on one lab: 3 nodes with nginx, the client in its own
//! namespace, every request sent to n1. Each comparison is interleaved in rounds (A B C D A B C D
//! ...), the agents restarted with each configuration in turn, so that drift (other work on the
//! machine, caches) affects all variants alike. "No agent" stops the agents: plain nginx.
//!
//! 1. **Time to first byte**: a fresh TCP connection per request to n1, `GET` of the 1 KB file,
//!    from before `connect` to the first response byte. Variants: no agent; policy `local`; kept
//!    by n1 under `hash` (a target that hashes to n1) and under `round-robin` (n1's turn): the
//!    datapath decides both alone; handed off to n2 under `hash`, by the datapaths alone (a
//!    datapath offer) and by the agents (`[limits] datapath_offers = false`); and, as it comes
//!    with the round-robin batches, handed off under `round-robin` (to n2 or n3, by the
//!    datapaths); kept by n1 and handed off under `bounded-hash`, which the datapaths decide
//!    over the agents' ring and loads, and under `lard`, which the agents decide (n1 is the
//!    dispatcher) (16 targets in turn each, classified as under `round-robin`); and under `hash`
//!    with `per_request`
//!    (the connection kept alive, so followed): kept by n1 (the datapath decides and sets up the
//!    following) and handed off to n2 (the agents decide), against no agent with the same
//!    requests (no `Connection: close`: "no agent, kept alive"). A round takes one batch of
//!    BATON_BENCH_TTFB_BATCH samples per variant under each configuration in turn (none,
//!    `local`, `hash`, `hash` by the agents, `round-robin`, `bounded-hash`, `lard`, `hash`
//!    followed),
//!    after 10 discarded requests; under `hash` the kept requests come first, then the handed-off
//!    ones (a kept request right after a handoff would share the two CPUs with the agents'
//!    bookkeeping of that handoff). Under `round-robin` the policy picks the node of each
//!    connection, so every sample is classified by the response's `X-Served-By` header (kept and
//!    handed-off requests alternate there), and requests go on until the batch has its kept
//!    samples. The other variants check `X-Served-By` too: a sample served by another node than
//!    the variant's (a fallback) is left out and counted. Rounds go on until every variant has
//!    BATON_BENCH_TTFB_SAMPLES samples. Printed: p50 and p99 over all samples, and what each
//!    variant adds to "no agent" (µs, and the ratio of the p50s).
//! 2. **wrk** (`wrk -t2 -c32`, Debian's, in the client namespace) against n1, with a connection
//!    per request (`Connection: close`) and with keep-alive, for the 1 KB and 100 KB files, under
//!    no agent, `local` and `round-robin`: BATON_BENCH_WRK_ROUNDS rounds, each running every load
//!    under each configuration in turn for BATON_BENCH_WRK_SECONDS. Printed: the median of the
//!    rounds in requests/s and its ratio against `local` (goal: connection per request under
//!    `round-robin` ≥ 0.7× `local`); under `round-robin`, the share of connections handed off and
//!    the handoff fallbacks by reason (agents' metrics); wrk's socket errors and non-2xx answers.
//!    The client reuses TIME_WAIT ports (`tcp_tw_reuse=1`) over a wide port range, as load
//!    generators are set up to.
//! 3. **Agent CPU** (time on CPU of the agent processes, `/proc/PID/schedstat`, in ns):
//!    - per handoff: over the `round-robin` connection-per-request 1 KB wrk runs of 2, the CPU
//!      time of all agents (FE and BEs) divided by the handoffs done meanwhile
//!      (`baton_handoffs_out_total` summed over nodes), and per connection
//!      (`baton_connections_accepted_total`) (goal: ≤ 20 µs per handoff);
//!    - idle: measured first, right after the lab is up (agents under `round-robin`, no traffic
//!      yet), over BATON_BENCH_IDLE_SECONDS, as % of one core per agent and the max (goal:
//!      ≤ 0.2 %).
//!
//! 4. **Per-request placement** (`[policy] per_request`): one keep-alive connection to n1 per
//!    batch asking for 1 KB targets of n2, n2, n2, n3, n3, n3, n1, ... (every third request
//!    moves the connection), under `hash` with `per_request` off (every request served where the
//!    first went) and on, interleaved in rounds: from each request's write to its first byte,
//!    p50 and p99 of the requests that stay on their node, by the datapath and (right after a
//!    move) by the agent (against per_request off), and of those that move (against those the
//!    datapath keeps; goal: a move adds ≤ 100 µs), and the moves by route: between two peers
//!    of n1 (n2 -> n3), from n1 (n1 -> n2) and back to n1 (n3 -> n1). Then wrk keep-alive
//!    (`-s` a script cycling through 30 targets spread over the nodes), per_request off and on:
//!    requests/s, their ratio, moves per second, and the share of requests followed (moved or
//!    stayed). The agents' bound on moves per connection is lifted for the whole bench: wrk's
//!    connections would reach the default (1000) within seconds.
//!
//! Sections 1-3 run the policies with `per_request = false` (connections placed by their first
//! request, as the issue of the fast handoff measures them).
//!
//! `cargo bench -p baton --bench lab` (as root). Environment, defaults in parentheses:
//! BATON_BENCH_TTFB_SAMPLES (500), BATON_BENCH_TTFB_BATCH (50), BATON_BENCH_WRK_SECONDS (5),
//! BATON_BENCH_WRK_ROUNDS (3), BATON_BENCH_IDLE_SECONDS (10), BATON_BENCH_SECTIONS (all: the
//! sections to run, from `ttfb`, `wrk` (with the agent CPU of 3) and `follow`, comma-separated).
//! A default run takes about six minutes, most of it wrk (42 runs) and agent restarts (75).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use baton_lab::lab::{target_hashed_to, unique_name};
use baton_lab::metrics::metric_sum;
use baton_lab::{Lab, LabSpec, ServerKind};
use baton_policy::PolicyKind;

const NODES: usize = 3;
/// Requests sent and discarded after each reconfiguration, before a batch.
const WARMUP: usize = 10;
/// A batch gives up after this long (the samples it has are kept).
const BATCH_TIME_LIMIT: Duration = Duration::from_secs(60);
/// Where the policy picks the node (`round-robin`, `bounded-hash`), a batch sends at most this
/// many times its size to get its kept samples.
const BY_NODE_MAX_FACTOR: usize = 6;
const WRK_ARGS: [&str; 2] = ["-t2", "-c32"];
/// The agents' `[limits] moves_per_connection` in the bench: never reached.
const MOVES_PER_CONNECTION: u32 = 1_000_000_000;

/// The connections `-cN` of [`WRK_ARGS`] open.
fn wrk_connections() -> f64 {
    WRK_ARGS[1]
        .strip_prefix("-c")
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN)
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the agents run: nothing, or a policy (connections placed by their first request only,
/// as sections 1-3 measure), or a policy following every request (section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    NoAgent,
    Agents(PolicyKind),
    /// A policy with every handoff made by the agents (`[limits] datapath_offers = false`).
    AgentsOnly(PolicyKind),
    Following(PolicyKind),
}

impl Config {
    fn apply(self, lab: &mut Lab) {
        match self {
            Config::NoAgent => {
                for i in 1..=lab.nodes() {
                    lab.stop_agent(i).expect("stop agent");
                }
            }
            Config::Agents(policy) | Config::AgentsOnly(policy) | Config::Following(policy) => {
                lab.set_per_request(Some(matches!(self, Config::Following(_))));
                lab.set_datapath_offers(Some(!matches!(self, Config::AgentsOnly(_))));
                lab.restart_agents(policy).expect("restart agents");
            }
        }
    }
}

// ----- time to first byte ------------------------------------------------------------------------

/// The TTFB variants, in the order printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Variant {
    NoAgent,
    NoAgentKeptAlive,
    Local,
    HashKept,
    RrKept,
    HashHandedOff,
    HashHandedOffByAgents,
    RrHandedOff,
    BhKept,
    BhHandedOff,
    LardKept,
    LardHandedOff,
    FollowedKept,
    FollowedHandedOff,
}

impl Variant {
    const ALL: [Variant; 14] = [
        Variant::NoAgent,
        Variant::NoAgentKeptAlive,
        Variant::Local,
        Variant::HashKept,
        Variant::RrKept,
        Variant::FollowedKept,
        Variant::BhKept,
        Variant::LardKept,
        Variant::HashHandedOff,
        Variant::HashHandedOffByAgents,
        Variant::RrHandedOff,
        Variant::FollowedHandedOff,
        Variant::BhHandedOff,
        Variant::LardHandedOff,
    ];

    fn label(self) -> &'static str {
        match self {
            Variant::NoAgent => "no agent (plain nginx)",
            Variant::NoAgentKeptAlive => "no agent, kept alive",
            Variant::Local => "local",
            Variant::HashKept => "hash, kept by n1 (datapath)",
            Variant::RrKept => "round-robin, kept by n1 (datapath)",
            Variant::HashHandedOff => "hash, handed off to n2 (datapaths)",
            Variant::HashHandedOffByAgents => "hash, handed off to n2 (agents)",
            Variant::RrHandedOff => "round-robin, handed off (datapaths)",
            Variant::BhKept => "bounded-hash, kept by n1 (datapath)",
            Variant::BhHandedOff => "bounded-hash, handed off (datapaths)",
            Variant::LardKept => "lard, kept by n1 (agent)",
            Variant::LardHandedOff => "lard, handed off (agents)",
            Variant::FollowedKept => "hash per_request, kept (datapath)",
            Variant::FollowedHandedOff => "hash per_request, handed off (datapaths)",
        }
    }
}

/// One request over a fresh connection: the time from before `connect` to the first response
/// byte, and the node named by the response's `X-Served-By` header.
fn ttfb(addr: SocketAddr, target: &str) -> Result<(Duration, Option<usize>), String> {
    let request = format!("GET {target} HTTP/1.1\r\nHost: baton\r\nConnection: close\r\n\r\n");
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut response = vec![0u8; 1];
    s.read_exact(&mut response)
        .map_err(|e| format!("first byte: {e}"))?;
    let elapsed = start.elapsed();
    s.read_to_end(&mut response)
        .map_err(|e| format!("reading the response: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "answered {:?}",
            head.lines().next().unwrap_or_default()
        ));
    }
    let served_by = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("x-served-by")
            .then(|| value.trim().strip_prefix('n')?.parse().ok())?
    });
    Ok((elapsed, served_by))
}

/// As [`ttfb`], on a connection kept alive (no `Connection: close`, so that it is followed under
/// `per_request`): from before `connect` to the first response byte.
fn ttfb_kept_alive(addr: SocketAddr, target: &str) -> Result<(Duration, Option<usize>), String> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    let connected = start.elapsed();
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let (first, served_by) = keep_alive_request(&mut s, target)?;
    Ok((connected + first, served_by))
}

#[derive(Default)]
struct Batch {
    samples: Vec<(Variant, Duration)>,
    /// Samples left out: served by another node than the variant's.
    misplaced: Vec<(Variant, Option<usize>)>,
    errors: Vec<String>,
}

impl Batch {
    /// Requests for `targets` in turn, where the policy picks the node: each sample classified
    /// by its `X-Served-By` as kept by n1 or handed off (`variants`), until `size` were kept.
    fn take_by_node(
        &mut self,
        (kept, handed): (Variant, Variant),
        n1: SocketAddr,
        targets: &[&str],
        size: usize,
        deadline: Instant,
    ) {
        let mut kept_samples = 0;
        for target in targets.iter().cycle().take(size * BY_NODE_MAX_FACTOR) {
            if kept_samples >= size || Instant::now() >= deadline {
                break;
            }
            match ttfb(n1, target) {
                Ok((t, Some(1))) => {
                    kept_samples += 1;
                    self.samples.push((kept, t));
                }
                Ok((t, Some(node))) if (2..=NODES).contains(&node) => {
                    self.samples.push((handed, t))
                }
                Ok((_, node)) => self.misplaced.push((kept, node)),
                Err(e) => self.errors.push(e),
            }
        }
    }

    /// `size` samples of each (variant, node it expects, target) in turn, until `deadline`.
    fn take_runs(
        &mut self,
        runs: [(Variant, usize, &str); 2],
        n1: SocketAddr,
        size: usize,
        deadline: Instant,
    ) {
        for (variant, node, target) in runs {
            for _ in 0..size {
                if Instant::now() >= deadline {
                    break;
                }
                self.take(variant, node, n1, target);
            }
        }
    }

    fn take(&mut self, variant: Variant, expect: usize, n1: SocketAddr, target: &str) {
        let sample = match variant {
            Variant::NoAgentKeptAlive | Variant::FollowedKept | Variant::FollowedHandedOff => {
                ttfb_kept_alive(n1, target)
            }
            _ => ttfb(n1, target),
        };
        match sample {
            Ok((t, Some(node))) if node == expect => self.samples.push((variant, t)),
            Ok((_, node)) => self.misplaced.push((variant, node)),
            Err(e) => self.errors.push(e),
        }
    }
}

/// One batch of `size` samples per variant of `config` (run in the client namespace).
fn ttfb_batch(config: Config, n1: SocketAddr, kept: &str, handed: &str, size: usize) -> Batch {
    let mut batch = Batch::default();
    let deadline = Instant::now() + BATCH_TIME_LIMIT;
    for _ in 0..WARMUP {
        let _ = ttfb(n1, kept);
    }
    match config {
        Config::NoAgent | Config::Agents(PolicyKind::Local) => {
            let variant = if config == Config::NoAgent {
                Variant::NoAgent
            } else {
                Variant::Local
            };
            for _ in 0..size {
                if Instant::now() >= deadline {
                    break;
                }
                batch.take(variant, 1, n1, kept);
            }
            // The baseline of the rows under per_request, whose connections are kept alive.
            if config == Config::NoAgent {
                for _ in 0..size {
                    if Instant::now() >= deadline {
                        break;
                    }
                    batch.take(Variant::NoAgentKeptAlive, 1, n1, kept);
                }
            }
        }
        // Kept, then handed off: a kept request right after a handoff would share the CPUs with
        // the agents' bookkeeping of it (on 2 cores, tens of µs), which is the handoff's cost.
        Config::Agents(PolicyKind::Hash) => batch.take_runs(
            [
                (Variant::HashKept, 1, kept),
                (Variant::HashHandedOff, 2, handed),
            ],
            n1,
            size,
            deadline,
        ),
        Config::Following(PolicyKind::Hash) => batch.take_runs(
            [
                (Variant::FollowedKept, 1, kept),
                (Variant::FollowedHandedOff, 2, handed),
            ],
            n1,
            size,
            deadline,
        ),
        Config::AgentsOnly(PolicyKind::Hash) => {
            for _ in 0..size {
                if Instant::now() >= deadline {
                    break;
                }
                batch.take(Variant::HashHandedOffByAgents, 2, n1, handed);
            }
        }
        Config::Agents(PolicyKind::RoundRobin) => {
            let by_node = (Variant::RrKept, Variant::RrHandedOff);
            batch.take_by_node(by_node, n1, &[kept], size, deadline);
        }
        // Targets that the policy keeps and that it hands off: bounded-hash decided by the
        // datapaths (over the agents' ring and loads), LARD by the agents (n1 is its
        // dispatcher: no round trip).
        Config::Agents(policy @ (PolicyKind::BoundedHash | PolicyKind::Lard)) => {
            let targets: Vec<String> = (0..16).map(|i| format!("{kept}?b={i}")).collect();
            let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
            let by_node = if policy == PolicyKind::Lard {
                (Variant::LardKept, Variant::LardHandedOff)
            } else {
                (Variant::BhKept, Variant::BhHandedOff)
            };
            batch.take_by_node(by_node, n1, &targets, size, deadline);
        }
        Config::Agents(other) | Config::AgentsOnly(other) | Config::Following(other) => {
            unreachable!("no TTFB variant under {other}")
        }
    }
    batch
}

/// p50 and p99 in µs (nearest rank).
fn quantiles(mut v: Vec<Duration>) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    Some((at(0.5), at(0.99)))
}

fn ttfb_section(lab: &mut Lab, samples: usize, batch_size: usize) {
    let n1 = lab.node_http_addr(1);
    let kept = target_hashed_to("/f/1k", 1, NODES);
    let handed = target_hashed_to("/f/1k", 2, NODES);
    let configs = [
        Config::NoAgent,
        Config::Agents(PolicyKind::Local),
        Config::Agents(PolicyKind::Hash),
        Config::AgentsOnly(PolicyKind::Hash),
        Config::Agents(PolicyKind::RoundRobin),
        Config::Agents(PolicyKind::BoundedHash),
        Config::Agents(PolicyKind::Lard),
        Config::Following(PolicyKind::Hash),
    ];
    let mut all: HashMap<Variant, Vec<Duration>> = HashMap::new();
    let mut misplaced: HashMap<(Variant, Option<usize>), usize> = HashMap::new();
    let mut errors: Vec<String> = Vec::new();
    let started = Instant::now();
    // Enough rounds for every variant; a variant that keeps coming up short (errors, fallbacks)
    // gets a few more rounds at most.
    let rounds_wanted = samples.div_ceil(batch_size.max(1));
    let mut rounds = 0;
    while rounds < rounds_wanted + 3 {
        let short = Variant::ALL
            .iter()
            .any(|v| all.get(v).map_or(0, Vec::len) < samples);
        if !short {
            break;
        }
        rounds += 1;
        for config in configs {
            config.apply(lab);
            let (kept, handed) = (kept.clone(), handed.clone());
            let batch = lab
                .in_client(move || ttfb_batch(config, n1, &kept, &handed, batch_size))
                .expect("client namespace");
            for (v, t) in batch.samples {
                all.entry(v).or_default().push(t);
            }
            for key in batch.misplaced {
                *misplaced.entry(key).or_default() += 1;
            }
            errors.extend(batch.errors);
        }
    }

    println!(
        "time to first byte, fresh connection per request to n1, GET 1 KB; {rounds} rounds of \
         {batch_size} per variant ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  {:<40} {:>5} {:>8} {:>9} {:>7} {:>8} {:>9}",
        "", "n", "p50 us", "+us", "x none", "p99 us", "+us"
    );
    let plain = quantiles(all.get(&Variant::NoAgent).cloned().unwrap_or_default());
    let kept_alive = quantiles(
        all.get(&Variant::NoAgentKeptAlive)
            .cloned()
            .unwrap_or_default(),
    );
    for v in Variant::ALL {
        let samples = all.get(&v).cloned().unwrap_or_default();
        let n = samples.len();
        // Requests on connections kept alive against no agent with the same requests.
        let base = match v {
            Variant::FollowedKept | Variant::FollowedHandedOff => kept_alive,
            _ => plain,
        };
        match (quantiles(samples), base) {
            (Some((p50, p99)), Some((b50, b99)))
                if !matches!(v, Variant::NoAgent | Variant::NoAgentKeptAlive) =>
            {
                println!(
                    "  {:<40} {n:>5} {p50:>8.0} {:>+9.0} {:>6.2}x {p99:>8.0} {:>+9.0}",
                    v.label(),
                    p50 - b50,
                    p50 / b50,
                    p99 - b99,
                )
            }
            (Some((p50, p99)), _) => println!(
                "  {:<40} {n:>5} {p50:>8.0} {:>9} {:>7} {p99:>8.0} {:>9}",
                v.label(),
                "-",
                "-",
                "-"
            ),
            (None, _) => println!("  {:<40} {n:>5} (no samples)", v.label()),
        }
    }
    let mut notes: Vec<String> = misplaced
        .iter()
        .map(|((v, node), count)| {
            let by = node.map_or("no X-Served-By".to_string(), |n| format!("served by n{n}"));
            format!("{}: {count} samples {by}, left out", v.label())
        })
        .collect();
    notes.sort();
    if !errors.is_empty() {
        notes.push(format!(
            "{} requests failed, e.g. {}",
            errors.len(),
            errors[0]
        ));
    }
    for note in notes {
        println!("  ! {note}");
    }
}

// ----- wrk ---------------------------------------------------------------------------------------

/// A wrk column: connection per request or keep-alive, and the file.
#[derive(Debug, Clone, Copy)]
struct Load {
    close: bool,
    path: &'static str,
}

impl Load {
    fn label(self) -> String {
        let size = self.path.trim_start_matches("/f/");
        if self.close {
            format!("conn/req {size}")
        } else {
            format!("keep-alive {size}")
        }
    }
}

const LOADS: [Load; 4] = [
    Load {
        close: true,
        path: "/f/1k",
    },
    Load {
        close: true,
        path: "/f/100k",
    },
    Load {
        close: false,
        path: "/f/1k",
    },
    Load {
        close: false,
        path: "/f/100k",
    },
];

struct WrkRun {
    rps: f64,
    /// Socket errors, non-2xx answers or a failed wrk, as wrk words them.
    problems: Vec<String>,
}

fn wrk(lab: &Lab, seconds: u64, load: Load) -> WrkRun {
    let url = format!("http://{}{}", lab.node_address(1), load.path);
    let duration = format!("-d{seconds}s");
    let mut args = vec!["wrk", WRK_ARGS[0], WRK_ARGS[1], duration.as_str()];
    if load.close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(&url);
    let out = lab.exec("client", &args).expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut problems: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Non-2xx") || l.starts_with("Socket errors"))
        .map(str::to_string)
        .collect();
    if !out.status.success() {
        problems.push(format!(
            "wrk failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    WrkRun { rps, problems }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Counters summed over the cluster, read before and after a run.
#[derive(Clone, Default)]
struct Counters {
    accepted: f64,
    handoffs: f64,
    /// `baton_handoff_fallbacks_total` by reason.
    fallbacks: BTreeMap<String, f64>,
    /// Time on CPU of all agents, in ns.
    cpu_ns: u64,
}

impl Counters {
    /// Scrapes every agent's metrics, and reads the agents' CPU time before the scrapes
    /// (`cpu_first`, at the end of a run) or after them (at its start): the agents' work of
    /// answering the scrapes stays out of the CPU time.
    fn read(lab: &Lab, cpu_first: bool) -> Counters {
        let cpu = || agent_cpu_ns(lab).iter().sum();
        let mut c = Counters::default();
        if cpu_first {
            c.cpu_ns = cpu();
        }
        for i in 1..=lab.nodes() {
            let m = lab.scrape_metrics(i).expect("scrape metrics");
            c.accepted += metric_sum(&m, "baton_connections_accepted_total").unwrap_or(0.0);
            c.handoffs += metric_sum(&m, "baton_handoffs_out_total").unwrap_or(0.0);
            for (series, value) in &m {
                if let Some(labels) = series.strip_prefix("baton_handoff_fallbacks_total{") {
                    let reason = labels
                        .split_once("reason=\"")
                        .and_then(|(_, r)| r.split_once('"'))
                        .map_or(labels, |(r, _)| r);
                    *c.fallbacks.entry(reason.to_string()).or_default() += value;
                }
            }
        }
        if !cpu_first {
            c.cpu_ns = cpu();
        }
        c
    }

    fn since(&self, before: &Counters) -> Counters {
        let mut fallbacks = self.fallbacks.clone();
        for (reason, v) in &before.fallbacks {
            *fallbacks.entry(reason.clone()).or_default() -= v;
        }
        fallbacks.retain(|_, v| *v != 0.0);
        Counters {
            accepted: self.accepted - before.accepted,
            handoffs: self.handoffs - before.handoffs,
            fallbacks,
            cpu_ns: self.cpu_ns - before.cpu_ns,
        }
    }

    fn add(&mut self, other: &Counters) {
        self.accepted += other.accepted;
        self.handoffs += other.handoffs;
        for (reason, v) in &other.fallbacks {
            *self.fallbacks.entry(reason.clone()).or_default() += v;
        }
        self.cpu_ns += other.cpu_ns;
    }
}

/// wrk rounds of (no agent, `local`, `round-robin`), each running every load; prints the table.
/// Returns the counters of the `round-robin` connection-per-request 1 KB runs, summed.
fn wrk_section(lab: &mut Lab, seconds: u64, wrk_rounds: u64) -> Counters {
    let configs = [
        ("no agent", Config::NoAgent),
        ("local", Config::Agents(PolicyKind::Local)),
        ("round-robin", Config::Agents(PolicyKind::RoundRobin)),
    ];
    let wrk_started = Instant::now();
    let mut rps = vec![vec![Vec::new(); LOADS.len()]; configs.len()];
    let mut problems: Vec<String> = Vec::new();
    // Under round-robin, per load: counters summed over rounds.
    let mut rr_counters: Vec<Counters> = vec![Counters::default(); LOADS.len()];
    for round in 1..=wrk_rounds {
        for (c, (name, config)) in configs.iter().enumerate() {
            config.apply(lab);
            for (l, load) in LOADS.iter().enumerate() {
                let rr = *config == Config::Agents(PolicyKind::RoundRobin);
                let before = rr.then(|| Counters::read(lab, false));
                let run = wrk(lab, seconds, *load);
                if let Some(before) = before {
                    rr_counters[l].add(&Counters::read(lab, true).since(&before));
                }
                rps[c][l].push(run.rps);
                for p in run.problems {
                    problems.push(format!("round {round}, {name}, {}: {p}", load.label()));
                }
            }
        }
    }
    println!(
        "wrk {} against n1, {seconds} s per run, median of {wrk_rounds} rounds ({:.0} s): \
         requests/s, x local",
        WRK_ARGS.join(" "),
        wrk_started.elapsed().as_secs_f64()
    );
    print!("  {:<12}", "");
    for load in LOADS {
        print!(" {:>18}", load.label());
    }
    println!();
    let medians: Vec<Vec<f64>> = rps
        .iter()
        .map(|per_load| per_load.iter().cloned().map(median).collect())
        .collect();
    for ((name, _), row) in configs.iter().zip(&medians) {
        print!("  {name:<12}");
        for (value, local) in row.iter().zip(&medians[1]) {
            print!(" {value:>10.0} {:>6.2}x", value / local);
        }
        println!();
    }
    let rr = configs.len() - 1;
    println!(
        "  goal: round-robin conn/req >= 0.70x local: 1k {:.2}x, 100k {:.2}x",
        medians[rr][0] / medians[1][0],
        medians[rr][1] / medians[1][1]
    );
    let shares: Vec<String> = LOADS
        .iter()
        .zip(&rr_counters)
        .map(|(load, c)| {
            format!(
                "{} {:.1}%",
                load.label(),
                100.0 * c.handoffs / c.accepted.max(1.0)
            )
        })
        .collect();
    let fallback_counts: Vec<String> = LOADS
        .iter()
        .zip(&rr_counters)
        .map(|(load, c)| format!("{} {:.0}", load.label(), c.fallbacks.values().sum::<f64>()))
        .collect();
    let mut all = Counters::default();
    for c in &rr_counters {
        all.add(c);
    }
    let reasons: Vec<String> = all
        .fallbacks
        .iter()
        .map(|(reason, v)| format!("{reason} {v:.0}"))
        .collect();
    println!("  round-robin, handed off: {}", shares.join(", "));
    println!(
        "  round-robin, fallbacks (served by n1 after all): {}; by reason: {}",
        fallback_counts.join(", "),
        if reasons.is_empty() {
            "-".to_string()
        } else {
            reasons.join(", ")
        }
    );
    if problems.is_empty() {
        println!("  wrk: no socket errors, no non-2xx answers");
    }
    for p in problems {
        println!("  ! {p}");
    }
    rr_counters.swap_remove(0)
}

// ----- agent CPU ---------------------------------------------------------------------------------

/// Time a process (all its threads) has spent on a CPU, in ns (`/proc/PID/schedstat`, first
/// field): exact, where utime+stime count whole clock ticks.
fn process_cpu_ns(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/schedstat");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    text.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .unwrap_or_else(|| panic!("{path}: {text:?}"))
}

/// Time on CPU of each node's agent, in ns.
fn agent_cpu_ns(lab: &Lab) -> Vec<u64> {
    (1..=lab.nodes())
        .map(|i| process_cpu_ns(lab.agent_pid(i).expect("agent running")))
        .collect()
}

/// Agent CPU with no traffic, as % of one core per agent, over `seconds`: a line to print.
fn idle_cpu(lab: &Lab, seconds: u64) -> String {
    // Whatever the agents did starting up is over by now.
    std::thread::sleep(Duration::from_secs(1));
    let before = agent_cpu_ns(lab);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let after = agent_cpu_ns(lab);
    let elapsed = start.elapsed().as_secs_f64();
    let percent: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a - b) as f64 / 1e9 / elapsed * 100.0)
        .collect();
    let max = percent.iter().copied().fold(0.0, f64::max);
    let per_agent: Vec<String> = percent
        .iter()
        .enumerate()
        .map(|(i, p)| format!("n{} {p:.3}%", i + 1))
        .collect();
    format!(
        "  idle ({elapsed:.0} s, no traffic yet): {}; max {max:.3}% of a core (goal <= 0.2%)",
        per_agent.join(", ")
    )
}

// ----- per request: keep-alive connections following their requests -----------------------------

/// One request on an open keep-alive connection: from its write to the first response byte, and
/// the node named by `X-Served-By`. The whole response is read (Content-Length).
fn keep_alive_request(
    s: &mut TcpStream,
    target: &str,
) -> Result<(Duration, Option<usize>), String> {
    let request = format!("GET {target} HTTP/1.1\r\nHost: baton\r\n\r\n");
    let start = Instant::now();
    s.write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = vec![0u8; 8192];
    let mut got = Vec::new();
    let mut first = None;
    let head_end = loop {
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed".into());
        }
        first.get_or_insert_with(|| start.elapsed());
        got.extend_from_slice(&buf[..n]);
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .ok_or("no Content-Length")?;
    while got.len() < head_end + length {
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed mid-body".into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "answered {:?}",
            head.lines().next().unwrap_or_default()
        ));
    }
    let served_by = header("x-served-by").and_then(|v| v.strip_prefix('n')?.parse().ok());
    Ok((first.unwrap_or_default(), served_by))
}

/// The per-request variants, in the order printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Follow {
    /// `per_request = false`: every request where the first went.
    FirstOnly,
    /// `per_request = true`, the request's node is the one the two before it had: the datapath
    /// lets it stay.
    Stays,
    /// `per_request = true`, the request right after a move, for the same node: the agent lets it
    /// stay (the datapath decides from the move's acceptance on, which the client may outrun).
    StaysAfterMove,
    /// `per_request = true`, another node: the connection moves.
    Moves,
    /// The moves by where they go: from n2 to n3 (the FE, n1, asks one peer and offers to
    /// the other), from n1 (its own server quiesced), back to n1 (a replay into its own TCP).
    MovesAmongPeers,
    MovesFromFe,
    MovesToFe,
}

impl Follow {
    const ALL: [Follow; 7] = [
        Follow::FirstOnly,
        Follow::Stays,
        Follow::StaysAfterMove,
        Follow::Moves,
        Follow::MovesAmongPeers,
        Follow::MovesFromFe,
        Follow::MovesToFe,
    ];

    fn label(self) -> &'static str {
        match self {
            Follow::FirstOnly => "hash, first request only (per_request off)",
            Follow::Stays => "hash per_request, stays (datapath)",
            Follow::StaysAfterMove => "hash per_request, stays after a move (agent)",
            Follow::Moves => "hash per_request, moves to another node",
            Follow::MovesAmongPeers => "  of which n2 -> n3",
            Follow::MovesFromFe => "  of which n1 -> n2",
            Follow::MovesToFe => "  of which n3 -> n1",
        }
    }
}

/// Targets in threes per node, n2 n2 n2 n3 n3 n3 n1 ...: every third request moves the
/// connection, the one after it stays by the agent, the next by the datapath.
fn follow_targets(count: usize, round: usize) -> Vec<(String, usize)> {
    (0..count)
        .map(|i| {
            let node = (i / 3) % NODES + 1;
            let node = node % NODES + 1; // start on n2
            let base = format!("/f/1k?r{round}i{i}");
            let names: Vec<String> = (1..=NODES).map(|n| format!("n{n}")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let target = baton_policy::Hash::target_for(&base, &names, node - 1)
                .expect("a target for every node");
            (target, node)
        })
        .collect()
}

/// One connection's batch: `targets` in turn (the first request, on a fresh connection, is left
/// out), classified for `config`.
fn follow_batch(
    config: Config,
    n1: SocketAddr,
    targets: &[(String, usize)],
) -> (Vec<(Follow, Duration)>, usize, Vec<String>) {
    let mut samples = Vec::new();
    let (mut misplaced, mut errors) = (0, Vec::new());
    let mut s = match TcpStream::connect_timeout(&n1, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return (samples, 0, vec![format!("connect: {e}")]),
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut first_node = None;
    for (i, (target, node)) in targets.iter().enumerate() {
        match keep_alive_request(&mut s, target) {
            Ok((t, served)) => {
                let first = *first_node.get_or_insert(*node);
                let (variant, want) = match config {
                    Config::Following(_) if i >= 2 && targets[i - 2].1 == *node => {
                        (Follow::Stays, *node)
                    }
                    Config::Following(_) if targets[i.saturating_sub(1)].1 == *node => {
                        (Follow::StaysAfterMove, *node)
                    }
                    Config::Following(_) => (Follow::Moves, *node),
                    _ => (Follow::FirstOnly, first),
                };
                if served != Some(want) {
                    misplaced += 1;
                } else if i > 0 {
                    samples.push((variant, t));
                    if variant == Follow::Moves {
                        let by_route = match (targets[i - 1].1, *node) {
                            (_, 1) => Follow::MovesToFe,
                            (1, _) => Follow::MovesFromFe,
                            _ => Follow::MovesAmongPeers,
                        };
                        samples.push((by_route, t));
                    }
                }
            }
            Err(e) => {
                errors.push(e);
                break;
            }
        }
    }
    (samples, misplaced, errors)
}

/// A counter summed over every node's agent.
fn cluster_total(lab: &Lab, name: &str) -> f64 {
    (1..=lab.nodes())
        .filter_map(|i| lab.scrape_metrics(i).ok())
        .filter_map(|m| metric_sum(&m, name))
        .sum()
}

fn follow_section(lab: &mut Lab, samples: usize, batch_size: usize, seconds: u64, rounds: u64) {
    let n1 = lab.node_http_addr(1);
    let configs = [
        Config::Agents(PolicyKind::Hash),
        Config::Following(PolicyKind::Hash),
    ];
    let mut all: HashMap<Follow, Vec<Duration>> = HashMap::new();
    let (mut misplaced, mut errors) = (0usize, Vec::new());
    let started = Instant::now();
    let mut round = 0;
    // Until every kind has its samples (the moves' routes are a third of the moves each).
    while Follow::ALL[..4]
        .iter()
        .any(|v| all.get(v).map_or(0, Vec::len) < samples)
        && round < samples.div_ceil(batch_size.max(1)) * 2 + 3
    {
        round += 1;
        for config in configs {
            config.apply(lab);
            // Three per node and connection: a third of the following run's samples move.
            let targets = follow_targets(3 * batch_size + 1, round);
            let (batch, wrong, failed) = lab
                .in_client(move || follow_batch(config, n1, &targets))
                .expect("client namespace");
            for (v, t) in batch {
                all.entry(v).or_default().push(t);
            }
            misplaced += wrong;
            errors.extend(failed);
        }
    }
    println!(
        "per-request placement: requests on one keep-alive connection to n1, GET 1 KB, from the \
         request's write to its first byte; {round} rounds ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  {:<44} {:>5} {:>8} {:>9} {:>8} {:>9}",
        "", "n", "p50 us", "+us", "p99 us", "+us"
    );
    let stays = quantiles(all.get(&Follow::Stays).cloned().unwrap_or_default());
    let first_only = quantiles(all.get(&Follow::FirstOnly).cloned().unwrap_or_default());
    for v in Follow::ALL {
        let samples = all.get(&v).cloned().unwrap_or_default();
        let n = samples.len();
        let against = match v {
            Follow::FirstOnly => None,
            Follow::Stays | Follow::StaysAfterMove => first_only,
            Follow::Moves | Follow::MovesAmongPeers | Follow::MovesFromFe | Follow::MovesToFe => {
                stays
            }
        };
        match (quantiles(samples), against) {
            (Some((p50, p99)), Some((b50, b99))) => println!(
                "  {:<44} {n:>5} {p50:>8.0} {:>+9.0} {p99:>8.0} {:>+9.0}",
                v.label(),
                p50 - b50,
                p99 - b99
            ),
            (Some((p50, p99)), None) => println!(
                "  {:<44} {n:>5} {p50:>8.0} {:>9} {p99:>8.0} {:>9}",
                v.label(),
                "-",
                "-"
            ),
            (None, _) => println!("  {:<44} {n:>5} (no samples)", v.label()),
        }
    }
    println!(
        "  (stays: against first-request-only; moves: against stays (datapath); goal: a move adds \
         <= 100 us)"
    );
    if misplaced > 0 {
        println!("  ! {misplaced} responses from another node than expected, left out");
    }
    if !errors.is_empty() {
        println!(
            "  ! {} connections failed, e.g. {}",
            errors.len(),
            errors[0]
        );
    }

    // wrk, keep-alive, every connection cycling through 30 targets spread over the nodes.
    let script = lab.state_dir().join("mixed.lua");
    let targets: Vec<String> = (0..30).map(|k| format!("\"/f/1k?m={k}\"")).collect();
    std::fs::write(
        &script,
        format!(
            "local targets = {{ {} }}\nlocal i = math.random(#targets)\n\
             request = function()\n  i = i % #targets + 1\n  \
             return wrk.format(\"GET\", targets[i])\nend\n",
            targets.join(", ")
        ),
    )
    .expect("write the wrk script");
    let url = format!("http://{}/", lab.node_address(1));
    let mut rps: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let (mut moved, mut stayed, mut answered) = (0.0, 0.0, 0.0);
    let mut problems = Vec::new();
    for _ in 0..rounds {
        for (name, config) in [("off", configs[0]), ("on", configs[1])] {
            config.apply(lab);
            let before = cluster_total(lab, "baton_rehandoffs_total");
            let stayed_before = cluster_total(lab, "baton_requests_stayed_total");
            let duration = format!("-d{seconds}s");
            let args = [
                "wrk",
                WRK_ARGS[0],
                WRK_ARGS[1],
                duration.as_str(),
                "-s",
                script.to_str().unwrap_or_default(),
                url.as_str(),
            ];
            let out = lab.exec("client", &args).expect("run wrk");
            let text = String::from_utf8_lossy(&out.stdout);
            problems.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| l.starts_with("Non-2xx") || l.starts_with("Socket errors"))
                    .map(str::to_string),
            );
            let r = text
                .lines()
                .find_map(|l| l.strip_prefix("Requests/sec:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(f64::NAN);
            rps.entry(name).or_default().push(r);
            if name == "on" {
                moved += cluster_total(lab, "baton_rehandoffs_total") - before;
                stayed += cluster_total(lab, "baton_requests_stayed_total") - stayed_before;
                // "N requests in 5.00s, ...": each connection's first request is placed, not
                // followed; every later one moves or stays, unless following ended.
                answered += text
                    .lines()
                    .find_map(|l| l.trim().split_once(" requests in "))
                    .and_then(|(n, _)| n.trim().parse::<f64>().ok())
                    .unwrap_or(f64::NAN)
                    - wrk_connections();
            }
        }
    }
    let (off, on) = (
        median(rps.get("off").cloned().unwrap_or_default()),
        median(rps.get("on").cloned().unwrap_or_default()),
    );
    println!(
        "  wrk {} {} keep-alive, 30 targets over {NODES} nodes, {rounds} x {seconds} s: \
         per_request off {off:.0} req/s, on {on:.0} req/s ({:.2}x); {:.0} moves/s; \
         followed (moved or stayed) {:.1} % of the requests after the first",
        WRK_ARGS[0],
        WRK_ARGS[1],
        on / off,
        moved / (rounds * seconds) as f64,
        100.0 * (moved + stayed) / answered
    );
    for p in problems {
        println!("  ! wrk: {p}");
    }
}

// ----- main --------------------------------------------------------------------------------------

fn main() {
    let samples = env_or("BATON_BENCH_TTFB_SAMPLES", 500) as usize;
    let batch = env_or("BATON_BENCH_TTFB_BATCH", 50).max(1) as usize;
    let seconds = env_or("BATON_BENCH_WRK_SECONDS", 5).max(1);
    let wrk_rounds = env_or("BATON_BENCH_WRK_ROUNDS", 3).max(1);
    let idle_seconds = env_or("BATON_BENCH_IDLE_SECONDS", 10).max(1);
    let sections = Sections::from_env();
    let started = Instant::now();

    let spec = LabSpec::new(unique_name("bench"), NODES)
        .server(ServerKind::Nginx)
        .policy(PolicyKind::RoundRobin)
        .exe(env!("CARGO_BIN_EXE_baton"));
    let mut lab = Lab::up(spec).expect("lab up (root)");
    // wrk's connections live for the whole run: with the agents' default bound on moves per
    // connection (1000) they would stop moving within a few seconds, and the keep-alive figure
    // would measure requests that stay because of the bound.
    lab.set_moves_per_connection(Some(MOVES_PER_CONNECTION));
    println!(
        "baton lab bench: lab {}, {NODES} nodes, nginx; client {} -> n1 {}",
        lab.name(),
        baton_lab::lab::CLIENT_ADDRESS,
        lab.node_address(1)
    );

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

    // Idle first, before any traffic.
    let idle = sections.wrk.then(|| idle_cpu(&lab, idle_seconds));
    if sections.ttfb {
        ttfb_section(&mut lab, samples, batch);
        println!();
    }
    // Agent CPU per handoff, over the round-robin connection-per-request 1 KB runs.
    let cpu = sections.wrk.then(|| {
        let c = wrk_section(&mut lab, seconds, wrk_rounds);
        println!();
        c
    });
    if sections.follow {
        follow_section(&mut lab, samples, batch, seconds, wrk_rounds);
        println!();
    }
    if let (Some(c), Some(idle)) = (cpu, idle) {
        print_agent_cpu(&c, &idle, seconds, wrk_rounds);
    }
    lab.down().expect("lab down");
    println!("\n(bench took {:.0} s)", started.elapsed().as_secs_f64());
}

/// Which sections a run has (`BATON_BENCH_SECTIONS`).
struct Sections {
    ttfb: bool,
    wrk: bool,
    follow: bool,
}

impl Sections {
    fn from_env() -> Sections {
        let Ok(list) = std::env::var("BATON_BENCH_SECTIONS") else {
            return Sections {
                ttfb: true,
                wrk: true,
                follow: true,
            };
        };
        let names: Vec<&str> = list.split(',').map(str::trim).collect();
        for name in &names {
            assert!(
                ["ttfb", "wrk", "follow"].contains(name),
                "BATON_BENCH_SECTIONS: unknown section {name:?} (ttfb, wrk, follow)"
            );
        }
        Sections {
            ttfb: names.contains(&"ttfb"),
            wrk: names.contains(&"wrk"),
            follow: names.contains(&"follow"),
        }
    }
}

/// Section 3: `c` from section 2's runs, `idle` measured before any traffic.
fn print_agent_cpu(c: &Counters, idle: &str, seconds: u64, wrk_rounds: u64) {
    let cpu_us = c.cpu_ns as f64 / 1e3;
    println!("agent CPU, time on CPU of the {NODES} agents (/proc/PID/schedstat)");
    println!(
        "  under round-robin conn/req 1k wrk ({wrk_rounds} x {seconds} s): {:.2} s for {:.0} \
         handoffs, {:.0} connections",
        cpu_us / 1e6,
        c.handoffs,
        c.accepted
    );
    println!(
        "  per handoff {:.1} us (goal <= 20 us), per connection {:.1} us",
        cpu_us / c.handoffs.max(1.0),
        cpu_us / c.accepted.max(1.0)
    );
    println!("{idle}");
}
