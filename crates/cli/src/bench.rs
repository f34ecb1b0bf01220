//! `baton bench cache`: what content-aware distribution buys a cache tier, measured on a lab.
//!
//! One lab (`--server cache`: nginx `proxy_cache` nodes in front of a slow origin), one workload
//! (the simulator's Zipf/SPECweb99 trace, mapped to the origin's generated objects
//! `/o/<id>/<size>`), and for each variant and each K the caches emptied and the same trace
//! replayed by a closed-loop client (`baton_lab::loadgen`): `--connections` at once, each making
//! K requests, connections spread over the nodes round-robin as round-robin DNS would. Each run
//! begins with `--warmup` requests of the same trace, not measured: a cache tier runs warm, and in
//! a cold run most misses are objects' first requests, which no placement saves.
//!
//! Variants: baton's policies (`local`, `round-robin`, `hash`, `bounded-hash`, `lard`, `lard-r`),
//! and the L7 proxy alternative, Debian's HAProxy with `balance uri` + `hash-type consistent`
//! (baton's agents at `local`, so they hold nothing): `haproxy-front` on n1 as the cluster's one
//! front end (every connection goes to it), `haproxy-every` on every node, each proxying what it
//! accepts.
//!
//! Each row: requests/s; hit % (`X-Cache-Status`); origin fetches (the origin's own count);
//! latency p50/p99; CPU per request of the processes of the nodes that accepted connections
//! (agents, nginx, HAProxy: time on CPU from `/proc/PID/task/*/schedstat`; softirq work, where
//! TC programs run, is not a process's and shows only in the host column), and of the whole
//! host; the bytes the accepting nodes sent on the connections they accepted (baton: what they
//! served themselves plus what they forwarded, from the agents' counters; a proxy sends every
//! response byte), and all bytes the nodes put on the wire (eth0 tx); errors. Ratios of
//! requests/s to `round-robin` and to `haproxy-front` of the same K. For K = 1 the simulator's
//! hit ratio for the same trace, cluster and cache size is printed beside the measured one, and
//! its requests/s relative to round-robin (`sim x rr`) beside the measured ratio, from the cache
//! tier's cost model with the origin's delay and two costs the run measured (see
//! [`predict_ratios`]); the simulator decides per request, so K > 1 has no prediction.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use baton_lab::loadgen::{self, LoadSpec};
use baton_lab::{Lab, LabSpec, ServerKind};
use baton_policy::PolicyKind;
use baton_sim::{ClientModel, ClusterConfig, CostModel, SimConfig, SyntheticSpec, Workload};

/// Where HAProxy listens on a node in the proxy variants.
const HAPROXY_PORT: u16 = 8080;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// A cache tier (nginx proxy_cache before a slow origin) under baton's policies and under
    /// HAProxy's URI hashing, on one lab, one trace: throughput, hit ratio, cost per request.
    Cache(CacheArgs),
}

#[derive(Debug, clap::Args)]
pub struct CacheArgs {
    /// Lab name (removed first if it exists).
    #[arg(long, default_value = "bench")]
    pub name: String,
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Distinct objects at the origin.
    #[arg(long, default_value_t = 20_000)]
    pub objects: usize,
    /// Zipf exponent of the objects' popularity.
    #[arg(long, default_value_t = 0.9)]
    pub alpha: f64,
    /// Requests measured per run.
    #[arg(long, default_value_t = 30_000)]
    pub requests: usize,
    /// Requests of the trace replayed first in every run, with the same variant and K, to warm
    /// the caches; not measured (0: every run starts cold).
    #[arg(long, default_value_t = 30_000)]
    pub warmup: usize,
    /// Concurrent connections of the closed-loop client.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Requests per connection; a comma-separated list runs each.
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    pub k: Vec<usize>,
    /// Each node's cache, in MiB (default: a third of the trace's working set).
    #[arg(long)]
    pub cache_mb: Option<u64>,
    /// The origin's delay per request, in ms.
    #[arg(long, default_value_t = 20)]
    pub origin_delay_ms: u64,
    /// nginx's `proxy_cache_lock` on at every node: concurrent misses of an object wait for one
    /// origin fetch, looking again every 500 ms (nginx's step) [default: off, as in nginx].
    #[arg(long)]
    pub cache_lock: bool,
    /// Variants to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Runs of every variant, interleaved (round 1 runs each variant once, then round 2, ...);
    /// each row is the median of its runs, errors are their sum.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Longest run of one variant, in seconds.
    #[arg(long, default_value_t = 300)]
    pub max_seconds: u64,
    /// Also write the rows as CSV to this file.
    #[arg(long)]
    pub csv: Option<std::path::PathBuf>,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Also draw requests/s and hit ratio per variant to this file: PNG, or SVG if the name ends
    /// in .svg.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// Leave the lab up afterwards (as the last variant left it), to look at its nodes.
    #[arg(long)]
    pub keep_lab: bool,
    /// The agents' `[policy] per_request` for every baton variant: on, off, or each policy's
    /// default (on for hash and bounded-hash, off for lard and lard-r).
    #[arg(long, value_enum, default_value_t = PerRequest::Default)]
    pub per_request: PerRequest,
}

/// Whether the bench's agents follow every request ([`CacheArgs::per_request`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PerRequest {
    Default,
    On,
    Off,
}

impl PerRequest {
    fn setting(self) -> Option<bool> {
        match self {
            PerRequest::Default => None,
            PerRequest::On => Some(true),
            PerRequest::Off => Some(false),
        }
    }
}

/// One way of distributing the cluster's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Baton(PolicyKind),
    HaproxyFront,
    HaproxyEvery,
}

impl Variant {
    const ALL: [Variant; 8] = [
        Variant::Baton(PolicyKind::Local),
        Variant::Baton(PolicyKind::RoundRobin),
        Variant::Baton(PolicyKind::Hash),
        Variant::Baton(PolicyKind::BoundedHash),
        Variant::Baton(PolicyKind::Lard),
        Variant::Baton(PolicyKind::LardR),
        Variant::HaproxyFront,
        Variant::HaproxyEvery,
    ];

    fn name(self) -> String {
        match self {
            Variant::Baton(kind) => baton_lab::lab::policy_name(kind),
            Variant::HaproxyFront => "haproxy-front".into(),
            Variant::HaproxyEvery => "haproxy-every".into(),
        }
    }

    fn parse(name: &str) -> anyhow::Result<Self> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == name)
            .with_context(|| {
                let names: Vec<String> = Variant::ALL.iter().map(|v| v.name()).collect();
                format!("unknown variant {name:?} (one of {})", names.join(", "))
            })
    }
}

/// What one run measured.
#[derive(Clone, Debug, serde::Serialize)]
struct Row {
    variant: String,
    k: usize,
    requests: u64,
    requests_per_sec: f64,
    hit_percent: f64,
    origin_fetches: u64,
    p50_ms: f64,
    p99_ms: f64,
    /// The tail the table leaves out (JSON only): what a few slow requests cost a closed loop.
    mean_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// Connect latency (the entry node's handshake), JSON only.
    connect_p50_ms: f64,
    connect_max_ms: f64,
    /// Client SYNs the nodes dropped as tuple collisions: each costs its connection a SYN
    /// retransmission, a second, which no request latency shows.
    tuple_collisions: u64,
    /// From when the targets ran out to the run's end (JSON only): the closed loop draining,
    /// which the rate leaves out; a second or more is a stalled request's.
    drain_ms: f64,
    accepting_cpu_us_per_request: f64,
    host_cpu_us_per_request: f64,
    accepting_bytes_per_request: f64,
    wire_bytes_per_request: f64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    /// The first failures, described (the load generator's [`LoadReport::failures`]).
    failures: Vec<String>,
    /// Requests/s of each round, in order (JSON only): the spread the median hides.
    rounds_requests_per_sec: Vec<f64>,
    sim_hit_percent: Option<f64>,
    /// The simulator's requests/s for this variant over its requests/s for round-robin, with
    /// the costs this run measured ([`predict_ratios`]).
    sim_x_rr: Option<f64>,
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Cache(args) => cache(&args),
    }
}

fn cache(args: &CacheArgs) -> anyhow::Result<()> {
    let variants = if args.variants.is_empty() {
        Variant::ALL.to_vec()
    } else {
        args.variants
            .iter()
            .map(|v| Variant::parse(v))
            .collect::<anyhow::Result<_>>()?
    };
    if args.k.is_empty() || args.k.contains(&0) {
        bail!("--k takes requests per connection, each at least 1");
    }
    if args.rounds == 0 {
        bail!("--rounds takes at least 1");
    }
    let workload = baton_sim::synthetic(&SyntheticSpec {
        files: args.objects,
        alpha: args.alpha,
        requests: args.warmup + args.requests,
        seed: args.seed,
    })?;
    let targets: Vec<String> = workload
        .requests
        .iter()
        .map(|r| format!("/o/{}/{}", r.file, workload.files.size(r.file)))
        .collect();
    let working_set = workload.working_set_bytes();
    let cache_mb = args
        .cache_mb
        .unwrap_or_else(|| (working_set / 3 / (1 << 20)).max(1));
    // The run's description, printed first and drawn as the plot's title.
    let trace = format!(
        "baton bench cache: {} nodes, {} objects (Zipf {}), {} requests after {} of warm-up",
        args.nodes, args.objects, args.alpha, args.requests, args.warmup
    );
    println!(
        "{trace}, working set {:.1} MiB, cache {cache_mb} MiB per node (lock {}), origin delay {} \
         ms, {} connections",
        working_set as f64 / f64::from(1 << 20),
        if args.cache_lock { "on" } else { "off" },
        args.origin_delay_ms,
        args.connections
    );

    let _ = baton_lab::lab::down_by_name(&args.name);
    let spec = LabSpec::new(&args.name, args.nodes)
        .server(ServerKind::Cache)
        .cache_mb(cache_mb)
        .origin_delay_ms(args.origin_delay_ms)
        .cache_lock(args.cache_lock)
        .policy(PolicyKind::Local);
    let mut lab = Lab::up(spec).context("bringing the cache lab up")?;

    let mut rows = Vec::new();
    for &k in &args.k {
        let mut runs: Vec<Vec<Row>> = vec![Vec::new(); variants.len()];
        for round in 1..=args.rounds {
            for (runs, &variant) in runs.iter_mut().zip(&variants) {
                let row = run_variant(&mut lab, variant, k, &targets, &workload, cache_mb, args)
                    .with_context(|| format!("variant {} with K = {k}", variant.name()))?;
                eprintln!(
                    "  {} K={k} (round {round} of {}): {:.0} req/s, {:.1} % hits, {} errors",
                    row.variant, args.rounds, row.requests_per_sec, row.hit_percent, row.errors
                );
                runs.push(row);
            }
        }
        rows.extend(runs.into_iter().map(median_row));
    }
    if args.keep_lab {
        println!(
            "lab {} left up: baton lab down --name {}",
            args.name, args.name
        );
        lab.detach();
    } else {
        lab.down().context("removing the lab")?;
    }

    predict_ratios(&mut rows, &workload, args.nodes, cache_mb, args);
    print!("{}", table(&rows));
    if let Some(path) = &args.csv {
        std::fs::write(path, csv(&rows)).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&rows)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let title = format!("{trace}, {} connections", args.connections);
        baton_sim::write_bench_plot(path, &bars(&rows), &title)?;
    }
    Ok(())
}

/// What the plot shows of each row, in the table's order.
fn bars(rows: &[Row]) -> Vec<baton_sim::BenchBar> {
    rows.iter()
        .map(|r| baton_sim::BenchBar {
            variant: r.variant.clone(),
            k: r.k,
            requests_per_sec: r.requests_per_sec,
            hit_percent: r.hit_percent,
        })
        .collect()
}

fn run_variant(
    lab: &mut Lab,
    variant: Variant,
    k: usize,
    targets: &[String],
    workload: &Workload,
    cache_mb: u64,
    args: &CacheArgs,
) -> anyhow::Result<Row> {
    let nodes: Vec<usize> = (1..=lab.nodes()).collect();
    for &i in &nodes {
        lab.stop_haproxy(i)?;
    }
    let policy = match variant {
        Variant::Baton(kind) => kind,
        Variant::HaproxyFront | Variant::HaproxyEvery => PolicyKind::Local,
    };
    lab.set_per_request(args.per_request.setting());
    lab.restart_agents(policy)?;
    let (entries, accepting): (Vec<SocketAddr>, Vec<usize>) = match variant {
        Variant::Baton(_) => (
            nodes.iter().map(|&i| lab.node_http_addr(i)).collect(),
            nodes.clone(),
        ),
        Variant::HaproxyFront => {
            lab.start_haproxy(1, HAPROXY_PORT)?;
            (vec![haproxy_addr(lab, 1)], vec![1])
        }
        Variant::HaproxyEvery => {
            for &i in &nodes {
                lab.start_haproxy(i, HAPROXY_PORT)?;
            }
            (
                nodes.iter().map(|&i| haproxy_addr(lab, i)).collect(),
                nodes.clone(),
            )
        }
    };
    lab.clear_caches()?;

    let (warm, measured) = targets.split_at(args.warmup.min(targets.len()));
    let load = |targets: &[String]| {
        loadgen::run(&LoadSpec {
            entries: entries.clone(),
            connections: args.connections,
            per_connection: k,
            targets: targets.to_vec(),
            max_duration: Duration::from_secs(args.max_seconds),
            timeout: Duration::from_secs(10),
            netns: Some(lab.client_ns()),
        })
    };
    // A failure while warming up is one of the variant's too.
    let warmup = if warm.is_empty() {
        None
    } else {
        Some(load(warm)?)
    };
    let before = Sample::take(lab, &accepting)?;
    let mut report = load(measured)?;
    let after = Sample::take(lab, &accepting)?;
    if let Some(warmup) = warmup {
        for (kind, n) in warmup.errors {
            *report
                .errors
                .entry(format!("{kind} (warm-up)"))
                .or_default() += n;
        }
        let described = warmup.failures.into_iter().map(|f| format!("warm-up: {f}"));
        report.failures.extend(described);
    }

    let requests = report.requests.max(1) as f64;
    let accepting_bytes = match variant {
        // Every response byte goes out through the proxy that accepted the connection.
        Variant::HaproxyFront | Variant::HaproxyEvery => report.body_bytes as f64,
        Variant::Baton(_) => after.accepted_bytes.saturating_sub(before.accepted_bytes) as f64,
    };
    let sim_hit_percent = (k == 1)
        .then(|| simulated_hit_ratio(workload, policy_of(variant), lab.nodes(), cache_mb, args))
        .flatten()
        .map(|r| r * 100.0);
    Ok(Row {
        variant: variant.name(),
        k,
        requests: report.requests,
        requests_per_sec: report.requests_per_sec(),
        hit_percent: report.hit_ratio().unwrap_or(0.0) * 100.0,
        origin_fetches: after.origin.saturating_sub(before.origin),
        p50_ms: ms(report.p50()),
        p99_ms: ms(report.p99()),
        mean_ms: ms(report.latency.mean()),
        p999_ms: ms(report.latency.quantile(0.999)),
        max_ms: ms(report.latency.max()),
        connect_p50_ms: ms(report.connect_latency.p50()),
        connect_max_ms: ms(report.connect_latency.max()),
        tuple_collisions: after
            .tuple_collisions
            .saturating_sub(before.tuple_collisions),
        drain_ms: report
            .ran_out
            .map_or(0.0, |(at, _)| ms(Some(report.elapsed.saturating_sub(at)))),
        accepting_cpu_us_per_request: after.cpu_ns.saturating_sub(before.cpu_ns) as f64
            / 1e3
            / requests,
        host_cpu_us_per_request: after.host_busy_ns.saturating_sub(before.host_busy_ns) as f64
            / 1e3
            / requests,
        accepting_bytes_per_request: accepting_bytes / requests,
        wire_bytes_per_request: after.wire_bytes.saturating_sub(before.wire_bytes) as f64
            / requests,
        errors: report.error_count(),
        error_kinds: report.errors.clone(),
        failures: report.failures.clone(),
        rounds_requests_per_sec: vec![report.requests_per_sec()],
        sim_hit_percent,
        sim_x_rr: None,
    })
}

/// One variant's row from its rounds' rows: each figure their median (of an even number, the
/// mean of the middle two), errors and their kinds summed, failures of every round.
fn median_row(runs: Vec<Row>) -> Row {
    let median = |f: fn(&Row) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let mut error_kinds = BTreeMap::new();
    for (kind, count) in runs.iter().flat_map(|r| &r.error_kinds) {
        *error_kinds.entry(kind.clone()).or_insert(0) += count;
    }
    Row {
        variant: runs[0].variant.clone(),
        k: runs[0].k,
        requests: runs[0].requests,
        requests_per_sec: median(|r| r.requests_per_sec),
        hit_percent: median(|r| r.hit_percent),
        origin_fetches: median(|r| r.origin_fetches as f64).round() as u64,
        p50_ms: median(|r| r.p50_ms),
        p99_ms: median(|r| r.p99_ms),
        mean_ms: median(|r| r.mean_ms),
        p999_ms: median(|r| r.p999_ms),
        max_ms: median(|r| r.max_ms),
        connect_p50_ms: median(|r| r.connect_p50_ms),
        connect_max_ms: median(|r| r.connect_max_ms),
        tuple_collisions: median(|r| r.tuple_collisions as f64).round() as u64,
        drain_ms: median(|r| r.drain_ms),
        accepting_cpu_us_per_request: median(|r| r.accepting_cpu_us_per_request),
        host_cpu_us_per_request: median(|r| r.host_cpu_us_per_request),
        accepting_bytes_per_request: median(|r| r.accepting_bytes_per_request),
        wire_bytes_per_request: median(|r| r.wire_bytes_per_request),
        errors: runs.iter().map(|r| r.errors).sum(),
        error_kinds,
        failures: runs.iter().flat_map(|r| r.failures.clone()).collect(),
        rounds_requests_per_sec: runs.iter().map(|r| r.requests_per_sec).collect(),
        sim_hit_percent: runs[0].sim_hit_percent,
        sim_x_rr: None,
    }
}

fn haproxy_addr(lab: &Lab, i: usize) -> SocketAddr {
    SocketAddr::new(lab.node_address(i).into(), HAPROXY_PORT)
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// The policy the simulator runs for a variant: HAProxy's URI hashing is consistent hashing of
/// the target, as `hash` is.
fn policy_of(variant: Variant) -> PolicyKind {
    match variant {
        Variant::Baton(kind) => kind,
        Variant::HaproxyFront | Variant::HaproxyEvery => PolicyKind::Hash,
    }
}

/// The simulator's run of the same trace, cluster and cache size (closed loop, the same number of
/// clients, decisions per request) under `cost`.
fn simulated(
    workload: &Workload,
    kind: PolicyKind,
    nodes: usize,
    cache_mb: u64,
    args: &CacheArgs,
    cost: CostModel,
) -> Option<baton_sim::RunReport> {
    let config = SimConfig {
        cluster: ClusterConfig {
            nodes,
            cache_bytes_per_node: cache_mb << 20,
            max_connections_per_node: 512,
            cost,
        },
        clients: ClientModel::ClosedTotal(u32::try_from(args.connections).unwrap_or(u32::MAX)),
        warmup_requests: args.warmup,
        seed: args.seed,
        policy_params: Default::default(),
    };
    baton_sim::simulate(workload, kind, &config).ok()
}

/// The simulator's hit ratio for the same trace, cluster and cache size.
fn simulated_hit_ratio(
    workload: &Workload,
    kind: PolicyKind,
    nodes: usize,
    cache_mb: u64,
    args: &CacheArgs,
) -> Option<f64> {
    simulated(workload, kind, nodes, cache_mb, args, CostModel::default()).map(|r| r.hit_ratio)
}

/// For K = 1, the simulator's prediction of each baton variant's requests/s relative to
/// round-robin, from the cache tier's cost model with two costs this run measured: the CPU per
/// request of the nodes under `local` (nothing distributed), and what a handoff adds to it (the
/// extra CPU per request under `round-robin`, which hands off (N-1)/N of its requests), with the
/// origin's delay. Ratios, not requests/s: the simulated nodes each have a CPU of their own, the
/// lab's share the host's cores with the client and the origin.
fn predict_ratios(
    rows: &mut [Row],
    workload: &Workload,
    nodes: usize,
    cache_mb: u64,
    args: &CacheArgs,
) {
    let cpu_of = |name: &str| {
        rows.iter()
            .find(|r| r.k == 1 && r.variant == name)
            .map(|r| r.accepting_cpu_us_per_request)
    };
    let (Some(local), Some(rr)) = (cpu_of("local"), cpu_of("round-robin")) else {
        return;
    };
    let handed_off = (nodes.saturating_sub(1)) as f64 / nodes.max(1) as f64;
    let handoff_us = if handed_off > 0.0 {
        ((rr - local) / handed_off).max(0.0)
    } else {
        0.0
    };
    let cost = CostModel::cache_tier(
        args.origin_delay_ms * 1_000_000,
        (local * 1e3) as u64,
        (handoff_us * 1e3) as u64,
    );
    let rate =
        |kind| simulated(workload, kind, nodes, cache_mb, args, cost).map(|r| r.throughput_rps);
    let Some(rr_rate) = rate(PolicyKind::RoundRobin).filter(|r| *r > 0.0) else {
        return;
    };
    for row in rows.iter_mut().filter(|r| r.k == 1) {
        let kind = Variant::parse(&row.variant).ok().and_then(|v| match v {
            Variant::Baton(kind) => Some(kind),
            _ => None,
        });
        if let Some(kind) = kind {
            row.sim_x_rr = rate(kind).map(|r| r / rr_rate);
        }
    }
}

/// Counters read before and after a run.
struct Sample {
    origin: u64,
    /// Time on CPU of every process in the accepting nodes' namespaces.
    cpu_ns: u64,
    /// Busy time of the whole host (every CPU, softirq included).
    host_busy_ns: u64,
    /// Bytes the accepting nodes' agents counted on connections they accepted: sent to clients,
    /// minus what they sent for connections handed in, plus what they forwarded.
    accepted_bytes: u64,
    /// Bytes every node sent on its eth0.
    wire_bytes: u64,
    /// Client SYNs every node's datapath dropped for a tuple a handed-in connection uses.
    tuple_collisions: u64,
}

impl Sample {
    fn take(lab: &Lab, accepting: &[usize]) -> anyhow::Result<Sample> {
        let mut cpu_ns = 0;
        let mut accepted_bytes = 0.0;
        for &i in accepting {
            cpu_ns += node_cpu_ns(lab, i)?;
            let m = lab.scrape_metrics(i).unwrap_or_default();
            let get = |name: &str| m.get(name).copied().unwrap_or(0.0);
            accepted_bytes += get("baton_client_bytes_sent_total")
                - get("baton_translated_to_client_bytes_total")
                + get("baton_forwarded_bytes_total");
        }
        let (mut wire_bytes, mut tuple_collisions) = (0, 0.0);
        for i in 1..=lab.nodes() {
            wire_bytes += tx_bytes(lab, i)?;
            let m = lab.scrape_metrics(i).unwrap_or_default();
            tuple_collisions += m
                .get("baton_dropped_packets_total{reason=\"tuple_collision\"}")
                .copied()
                .unwrap_or(0.0);
        }
        Ok(Sample {
            origin: lab.origin_requests()?,
            cpu_ns,
            host_busy_ns: host_busy_ns()?,
            accepted_bytes: accepted_bytes.max(0.0) as u64,
            wire_bytes,
            tuple_collisions: tuple_collisions as u64,
        })
    }
}

/// Time on CPU of every thread of every process in node `i`'s network namespace, in ns.
fn node_cpu_ns(lab: &Lab, i: usize) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata(format!("/var/run/netns/{}", lab.node_ns(i)))
        .with_context(|| format!("n{i}'s namespace"))?
        .ino();
    let mut total = 0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let in_node = std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == ns);
        if !in_node {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

/// Busy time of every CPU of the host (user, nice, system, irq, softirq, steal), in ns.
fn host_busy_ns() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(busy * 1_000_000_000 / hz)
}

/// Bytes node `i` sent on its eth0.
fn tx_bytes(lab: &Lab, i: usize) -> anyhow::Result<u64> {
    // `ip netns exec` mounts the node's own sysfs, where eth0 is the node's.
    let out = lab.exec(
        &format!("n{i}"),
        &["cat", "/sys/class/net/eth0/statistics/tx_bytes"],
    )?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("n{i}'s tx_bytes"))
}

/// The rows as the terminal table, with the ratios.
fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<14} {:>3} {:>9} {:>7} {:>8} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>6} {:>7} {:>5} {:>6}",
        "variant",
        "K",
        "req/s",
        "x rr",
        "sim x rr",
        "x proxy",
        "hit %",
        "sim hit%",
        "origin",
        "p50 ms",
        "p99 ms",
        "cpu us/r",
        "host us/r",
        "acc KB",
        "wire KB",
        "drops",
        "errors",
    );
    for row in rows {
        let rate_of = |name: &str| {
            rows.iter()
                .find(|r| r.variant == name && r.k == row.k)
                .map(|r| r.requests_per_sec)
        };
        let ratio = |base: Option<f64>| match base {
            Some(b) if b > 0.0 => format!("{:.2}", row.requests_per_sec / b),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<14} {:>3} {:>9.0} {:>7} {:>8} {:>7} {:>6.1} {:>8} {:>8} {:>8.2} {:>8.2} {:>8.0} {:>9.0} {:>6.1} {:>7.1} {:>5} {:>6}",
            row.variant,
            row.k,
            row.requests_per_sec,
            ratio(rate_of("round-robin")),
            row.sim_x_rr.map_or("-".to_string(), |x| format!("{x:.2}")),
            ratio(rate_of("haproxy-front")),
            row.hit_percent,
            row.sim_hit_percent
                .map_or("-".to_string(), |h| format!("{h:.1}")),
            row.origin_fetches,
            row.p50_ms,
            row.p99_ms,
            row.accepting_cpu_us_per_request,
            row.host_cpu_us_per_request,
            row.accepting_bytes_per_request / 1024.0,
            row.wire_bytes_per_request / 1024.0,
            row.tuple_collisions,
            row.errors,
        );
    }
    // What went wrong, where anything did: a failed run must say how without a rerun.
    for row in rows.iter().filter(|r| !r.error_kinds.is_empty()) {
        let kinds: Vec<String> = row
            .error_kinds
            .iter()
            .map(|(kind, n)| format!("{n} x {kind}"))
            .collect();
        let _ = writeln!(
            out,
            "errors of {} K={}: {}",
            row.variant,
            row.k,
            kinds.join(", ")
        );
        for failure in &row.failures {
            let _ = writeln!(out, "  {failure}");
        }
    }
    out
}

fn csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "variant,k,requests,requests_per_sec,sim_x_rr,hit_percent,sim_hit_percent,origin_fetches,\
         p50_ms,p99_ms,accepting_cpu_us_per_request,host_cpu_us_per_request,accepting_bytes_per_request,\
         wire_bytes_per_request,tuple_collisions,errors\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{},{:.1},{},{:.2},{},{},{:.3},{:.3},{:.1},{:.1},{:.0},{:.0},{},{}",
            r.variant,
            r.k,
            r.requests,
            r.requests_per_sec,
            r.sim_x_rr.map_or(String::new(), |x| format!("{x:.3}")),
            r.hit_percent,
            r.sim_hit_percent
                .map_or(String::new(), |h| format!("{h:.2}")),
            r.origin_fetches,
            r.p50_ms,
            r.p99_ms,
            r.accepting_cpu_us_per_request,
            r.host_cpu_us_per_request,
            r.accepting_bytes_per_request,
            r.wire_bytes_per_request,
            r.tuple_collisions,
            r.errors
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(requests_per_sec: f64, p99_ms: f64, errors: u64) -> Row {
        Row {
            variant: "hash".into(),
            k: 1,
            requests: 100,
            requests_per_sec,
            hit_percent: 50.0,
            origin_fetches: 7,
            p50_ms: 1.0,
            p99_ms,
            mean_ms: 1.0,
            p999_ms: 1.0,
            max_ms: 1.0,
            connect_p50_ms: 0.1,
            connect_max_ms: 0.1,
            tuple_collisions: 0,
            drain_ms: 0.0,
            accepting_cpu_us_per_request: 10.0,
            host_cpu_us_per_request: 20.0,
            accepting_bytes_per_request: 1000.0,
            wire_bytes_per_request: 2000.0,
            errors,
            error_kinds: (errors > 0)
                .then(|| ("timeout".to_string(), errors))
                .into_iter()
                .collect(),
            failures: (0..errors).map(|i| format!("failure {i}")).collect(),
            rounds_requests_per_sec: vec![requests_per_sec],
            sim_hit_percent: Some(49.0),
            sim_x_rr: None,
        }
    }

    #[test]
    fn a_row_of_rounds_takes_each_figures_median_and_sums_the_errors() {
        let m = median_row(vec![
            row(300.0, 9.0, 1),
            row(100.0, 5.0, 0),
            row(200.0, 7.0, 2),
        ]);
        assert_eq!(m.requests_per_sec, 200.0);
        assert_eq!(m.p99_ms, 7.0);
        assert_eq!(m.rounds_requests_per_sec, [300.0, 100.0, 200.0]);
        assert_eq!(m.errors, 3);
        assert_eq!(m.error_kinds.get("timeout"), Some(&3));
        assert_eq!(m.failures.len(), 3);
        assert_eq!((m.requests, m.origin_fetches), (100, 7));

        let even = median_row(vec![row(100.0, 1.0, 0), row(400.0, 3.0, 0)]);
        assert_eq!((even.requests_per_sec, even.p99_ms), (250.0, 2.0));
        let one = median_row(vec![row(123.0, 4.0, 0)]);
        assert_eq!(one.requests_per_sec, 123.0);
    }
}
