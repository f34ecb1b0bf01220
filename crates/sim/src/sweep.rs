//! Runs of several policies × cluster sizes on one trace, and their table and CSV.
//!
//! Runs are independent, so they are spread over threads; the results come back in the order of
//! the sweep (policies outer, cluster sizes inner) whatever the threads did, and each run is
//! deterministic, so a sweep is too.

use std::fmt::Write as _;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use baton_policy::PolicyKind;

use crate::engine::{RunReport, SimConfig, SimError, simulate};
use crate::workload::Workload;

/// What to run: every policy on every cluster size, the rest of the configuration shared.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSpec {
    pub policies: Vec<PolicyKind>,
    pub node_counts: Vec<usize>,
    /// `cluster.nodes` is replaced by each of `node_counts`.
    pub config: SimConfig,
    /// Runs at once; 0 means one per available core.
    pub threads: usize,
}

/// Runs the sweep; reports in the order policies × node counts.
pub fn sweep(workload: &Workload, spec: &SweepSpec) -> Result<Vec<RunReport>, SimError> {
    let jobs: Vec<(PolicyKind, usize)> = spec
        .policies
        .iter()
        .flat_map(|&policy| spec.node_counts.iter().map(move |&nodes| (policy, nodes)))
        .collect();
    let threads = match spec.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(jobs.len())
    .max(1);
    let next_job = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<RunReport, SimError>>>> =
        Mutex::new(vec![None; jobs.len()]);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let index = next_job.fetch_add(1, Ordering::Relaxed);
                    let Some(&(policy, nodes)) = jobs.get(index) else {
                        break;
                    };
                    let mut config = spec.config;
                    config.cluster.nodes = nodes;
                    let result = simulate(workload, policy, &config);
                    results.lock().expect("no worker panics holding the lock")[index] =
                        Some(result);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("no worker panicked holding the lock")
        .into_iter()
        .map(|result| result.expect("every job ran"))
        .collect()
}

/// A fixed-width table: policy, nodes, throughput, hit ratio, imbalance, response times,
/// utilizations.
pub fn format_table(reports: &[RunReport]) -> String {
    let mut table = format!(
        "{:<13} {:>5} {:>11} {:>9} {:>9} {:>10} {:>10} {:>6} {:>6}\n",
        "policy", "nodes", "req/s", "hit%", "imbalance", "mean ms", "p99 ms", "cpu%", "disk%"
    );
    for report in reports {
        let _ = writeln!(
            table,
            "{:<13} {:>5} {:>11.0} {:>9.2} {:>9.2} {:>10.1} {:>10.1} {:>6.1} {:>6.1}",
            report.policy,
            report.nodes,
            report.throughput_rps,
            report.hit_ratio * 100.0,
            report.imbalance,
            report.mean_response_ms,
            report.p99_response_ms,
            report.cpu_utilization * 100.0,
            report.disk_utilization * 100.0,
        );
    }
    table
}

/// One CSV row per run, with a header.
pub fn write_csv(reports: &[RunReport], mut out: impl io::Write) -> io::Result<()> {
    writeln!(
        out,
        "policy,nodes,clients,measured_requests,simulated_seconds,throughput_rps,hit_ratio,imbalance,mean_response_ms,p99_response_ms,cpu_utilization,disk_utilization"
    )?;
    for r in reports {
        writeln!(
            out,
            "{},{},{},{},{:.6},{:.3},{:.6},{:.6},{:.4},{:.4},{:.6},{:.6}",
            r.policy,
            r.nodes,
            r.clients.map_or(String::new(), |c| c.to_string()),
            r.measured_requests,
            r.simulated_seconds,
            r.throughput_rps,
            r.hit_ratio,
            r.imbalance,
            r.mean_response_ms,
            r.p99_response_ms,
            r.cpu_utilization,
            r.disk_utilization
        )?;
    }
    Ok(())
}
