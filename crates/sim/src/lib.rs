//! A trace-driven discrete-event simulator of a web cluster, to compare baton's request
//! distribution policies the way the LARD paper did (Pai et al., "Locality-Aware Request
//! Distribution in Cluster-based Network Servers", ASPLOS 1998, section 4).
//!
//! It calls the same policy code that a live node runs ([`baton_policy`]), through
//! [`Policy::choose`](baton_policy::Policy::choose), with a [`ClusterView`](baton_policy::ClusterView)
//! made from simulated loads and simulated time.
//!
//! - [`workload`]: traces, synthetic (Zipf popularity over SPECweb99-sized files, seeded) or read
//!   from an access log in Common Log Format.
//! - [`cost`]: the per-request CPU and disk costs, Pai et al.'s by default.
//! - [`lru`]: each node's file cache, LRU bounded in bytes.
//! - [`engine`]: one run (a cluster size, a policy, a trace) and its [`RunReport`]; the module
//!   documentation states the model and the definitions of the reported numbers.
//! - [`sweep`](mod@sweep): policies × cluster sizes, as a table or CSV; [`plot`]: the same as a
//!   picture.
//! - [`cli`]: the `baton sim` command's options and entry point.
//!
//! Everything is deterministic: the same trace, configuration and seed give the same report.

pub mod cli;
pub mod cost;
pub mod engine;
pub mod lru;
pub mod plot;
pub mod sweep;
pub mod workload;

pub use cost::CostModel;
pub use engine::{
    ClientModel, ClusterConfig, NodeReport, RunReport, SimConfig, SimError, simulate,
    simulate_policy,
};
pub use lru::LruCache;
pub use plot::{BenchBar, PlotError, write_bench_plot, write_plot};
pub use sweep::{SweepSpec, format_table, sweep, write_csv};
pub use workload::{
    ClfError, ClfStats, FileTable, LogEntry, Request, SPECWEB99_CLASSES, SizeClass, SyntheticError,
    SyntheticSpec, Workload, load_clf, parse_clf_line, synthetic,
};
