//! The `baton` command: the node agent, the lab, the static file server the lab runs, and the
//! cluster simulator.
//! `anyhow` lives only here, at the binary's edge; the libraries return typed errors.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Content-aware request distribution by TCP connection handoff"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent (attaches the eBPF programs, joins the control mesh).
    Node {
        /// The node's TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Build, use and remove a lab cluster of network namespaces on this machine.
    #[command(subcommand)]
    Lab(baton_lab::cli::LabCommand),
    /// Serve a directory over HTTP/1.1 (the lab's `static` server).
    ServeStatic(baton_lab::static_server::ServeArgs),
    /// Simulate a cluster under a trace with the real policies: throughput, hit ratio, imbalance.
    Sim(baton_sim::cli::SimArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Node { config } => {
            let config = baton_agent::config::NodeConfig::from_file(&config)
                .with_context(|| format!("loading {}", config.display()))?;
            baton_agent::run_until_signal(config).context("baton node")
        }
        Command::Lab(cmd) => baton_lab::cli::run(cmd),
        Command::ServeStatic(args) => baton_lab::static_server::run(args).context("serve-static"),
        Command::Sim(args) => baton_sim::cli::run(args),
    }
}
