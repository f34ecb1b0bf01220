//! The `sim` command: options ([`SimArgs`]) and what it does ([`run`]).
//!
//! It builds one trace (synthetic, or an access log), sweeps the policies over the cluster
//! sizes, prints a table to stdout, and writes a plot (PNG, or SVG for a `.svg` path) and
//! optionally a CSV. Progress goes to stderr.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use baton_policy::{PolicyKind, PolicyParams};

use crate::cost::CostModel;
use crate::engine::{ClientModel, ClusterConfig, SimConfig};
use crate::plot::write_plot;
use crate::sweep::{SweepSpec, format_table, sweep, write_csv};
use crate::workload::{SyntheticSpec, Workload, load_clf, synthetic};

/// Options of `baton sim`.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct SimArgs {
    /// `synthetic` (Zipf popularity over SPECweb99-sized files), or the path of an access log in
    /// Common Log Format.
    #[arg(long, default_value = "synthetic", value_name = "synthetic|FILE.log")]
    pub workload: String,
    /// Requests to simulate (a log is read up to this many usable lines).
    #[arg(long, default_value_t = 1_000_000)]
    pub requests: usize,
    /// Synthetic: Zipf exponent of file popularity.
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f64,
    /// Synthetic: number of distinct files (about 14.7 KB each on average).
    #[arg(long, default_value_t = 20_000)]
    pub files: usize,
    /// Synthetic: seed of file sizes and of the request sequence; also seeds the simulation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Cache per node, in MiB.
    #[arg(long, default_value_t = 32.0)]
    pub cache_mb: f64,
    /// Cluster sizes to simulate.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    pub nodes: Vec<usize>,
    /// Policies to compare (any of: local, round-robin, hash, least-conn, bounded-hash, lard,
    /// lard-r).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "round-robin,least-conn,hash,bounded-hash,lard,lard-r"
    )]
    pub policies: Vec<PolicyKind>,
    /// Closed-loop clients per node (the total grows with the cluster).
    #[arg(long, default_value_t = 64)]
    pub clients_per_node: u32,
    /// Closed-loop clients in all, whatever the cluster size (instead of --clients-per-node).
    #[arg(long, conflicts_with = "rate")]
    pub clients: Option<u32>,
    /// Open loop instead: Poisson arrivals at this many requests per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Connections a node serves at once; more wait in its accept queue.
    #[arg(long, default_value_t = 128)]
    pub max_conns: u32,
    /// Percent of the trace run first to warm the caches, and not measured.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..100))]
    pub warmup_percent: u8,
    /// LARD's T_low (default: the policy crate's).
    #[arg(long)]
    pub lard_low: Option<u32>,
    /// LARD's T_high (default: the policy crate's).
    #[arg(long)]
    pub lard_high: Option<u32>,
    /// bounded-hash's balance factor, percent of the mean load (default: the policy crate's).
    #[arg(long)]
    pub balance_factor: Option<u32>,
    /// Where to write the plot: PNG, or SVG if the name ends in .svg.
    #[arg(long, default_value = "sim.png")]
    pub plot: PathBuf,
    /// Also write the results as CSV here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Simulations run at once (default: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// A cache tier in front of a distant origin (the lab of `baton bench cache`) instead of
    /// the LARD paper's disk-backed servers: a miss waits this long for the origin and nothing
    /// is read from a disk.
    #[arg(long)]
    pub origin_delay_ms: Option<f64>,
    /// With --origin-delay-ms: CPU time of one request at the node that serves it, µs.
    #[arg(long, default_value_t = 300.0, requires = "origin_delay_ms")]
    pub cpu_us_per_request: f64,
    /// With --origin-delay-ms: CPU time at the accepting node to hand a request to another, µs.
    #[arg(long, default_value_t = 0.0, requires = "origin_delay_ms")]
    pub handoff_us: f64,
}

impl SimArgs {
    /// The policy tunables: the policy crate's defaults, overridden by the options given.
    pub fn policy_params(&self) -> PolicyParams {
        let defaults = PolicyParams::default();
        PolicyParams {
            lard_low: self.lard_low.unwrap_or(defaults.lard_low),
            lard_high: self.lard_high.unwrap_or(defaults.lard_high),
            balance_factor: self.balance_factor.unwrap_or(defaults.balance_factor),
            ..defaults
        }
    }

    /// The cost model the options select: Pai et al.'s, or a cache tier's.
    pub fn cost_model(&self) -> anyhow::Result<CostModel> {
        let Some(delay_ms) = self.origin_delay_ms else {
            return Ok(CostModel::default());
        };
        let ns = |what: &str, v: f64, per: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok((v * per) as u64)
            } else {
                Err(anyhow::anyhow!(
                    "{what} must be a non-negative time, not {v}"
                ))
            }
        };
        Ok(CostModel::cache_tier(
            ns("--origin-delay-ms", delay_ms, 1e6)?,
            ns("--cpu-us-per-request", self.cpu_us_per_request, 1e3)?,
            ns("--handoff-us", self.handoff_us, 1e3)?,
        ))
    }

    /// The client model the options select.
    pub fn client_model(&self) -> ClientModel {
        match (self.rate, self.clients) {
            (Some(rate), _) => ClientModel::Open {
                requests_per_second: rate,
            },
            (None, Some(total)) => ClientModel::ClosedTotal(total),
            (None, None) => ClientModel::ClosedPerNode(self.clients_per_node),
        }
    }

    /// Loads or generates the trace the options describe.
    pub fn workload(&self) -> anyhow::Result<Workload> {
        if self.workload == "synthetic" {
            return Ok(synthetic(&SyntheticSpec {
                files: self.files,
                alpha: self.alpha,
                requests: self.requests,
                seed: self.seed,
            })?);
        }
        let file = File::open(&self.workload)
            .with_context(|| format!("opening access log {}", self.workload))?;
        let (workload, _stats) = load_clf(BufReader::new(file), self.requests, &self.workload)
            .with_context(|| format!("reading access log {}", self.workload))?;
        if workload.requests.is_empty() {
            bail!("{}: no replayable requests", workload.description);
        }
        Ok(workload)
    }

    /// The sweep the options describe (cluster sizes and policies checked).
    pub fn sweep_spec(&self, workload: &Workload) -> anyhow::Result<SweepSpec> {
        if self.nodes.is_empty() || self.nodes.contains(&0) {
            bail!("--nodes needs cluster sizes of at least 1");
        }
        if self.policies.is_empty() {
            bail!("--policies needs at least one policy");
        }
        if !(self.cache_mb.is_finite() && self.cache_mb >= 0.0) {
            bail!("--cache-mb must be a size in MiB, not {}", self.cache_mb);
        }
        let warmup_requests = workload.requests.len() * usize::from(self.warmup_percent) / 100;
        Ok(SweepSpec {
            policies: self.policies.clone(),
            node_counts: self.nodes.clone(),
            config: SimConfig {
                cluster: ClusterConfig {
                    nodes: 1,
                    cache_bytes_per_node: (self.cache_mb * 1024.0 * 1024.0) as u64,
                    max_connections_per_node: self.max_conns,
                    cost: self.cost_model()?,
                },
                clients: self.client_model(),
                warmup_requests,
                seed: self.seed,
                policy_params: self.policy_params(),
            },
            threads: self.threads,
        })
    }
}

/// Runs `baton sim`: prints the table, writes the plot (and the CSV).
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let workload = args.workload()?;
    let spec = args.sweep_spec(&workload)?;
    let cache_bytes = spec.config.cluster.cache_bytes_per_node;
    let working_set = workload.working_set_bytes();
    eprintln!("{}", workload.description);
    eprintln!(
        "working set {:.1} MB = {:.1} x one node's {:.1} MB cache; {} runs on {} threads",
        working_set as f64 / MIB,
        working_set as f64 / (cache_bytes.max(1)) as f64,
        cache_bytes as f64 / MIB,
        spec.policies.len() * spec.node_counts.len(),
        match spec.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    );
    let reports = sweep(&workload, &spec)?;
    let table = format_table(&reports);
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(table.as_bytes())?;
    stdout.flush()?;
    let title = format!(
        "{} requests, {:.0} MB working set, {:.0} MB cache/node, {}",
        workload.requests.len(),
        working_set as f64 / MIB,
        cache_bytes as f64 / MIB,
        match spec.config.clients {
            ClientModel::ClosedPerNode(n) => format!("{n} clients/node"),
            ClientModel::ClosedTotal(n) => format!("{n} clients"),
            ClientModel::Open {
                requests_per_second,
            } => format!("{requests_per_second} req/s open loop"),
        }
    );
    write_plot(&args.plot, &reports, &title)?;
    eprintln!("plot written to {}", args.plot.display());
    if let Some(path) = &args.out {
        let file =
            File::create(path).with_context(|| format!("creating CSV {}", path.display()))?;
        let mut out = BufWriter::new(file);
        write_csv(&reports, &mut out)?;
        out.flush()
            .with_context(|| format!("writing CSV {}", path.display()))?;
        eprintln!("CSV written to {}", path.display());
    }
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;
