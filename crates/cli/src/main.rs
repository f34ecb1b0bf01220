//! The `baton` command: the node agent, the lab, the static file server the lab runs, and the
//! cluster simulator.
//! `anyhow` lives only here, at the binary's edge; the libraries return typed errors.

mod bench;
mod ctl;
mod logging;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

/// `baton --version`: the package version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BATON_GIT_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "baton",
    version = VERSION,
    about = "Content-aware request distribution by TCP connection handoff",
    after_help = logging::HELP
)]
struct Cli {
    /// How log lines on stderr look.
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent (attaches the eBPF programs, joins the control mesh), or stop it.
    ///
    /// Started while an agent runs for the same node and interface, it takes over from it: the
    /// running one hands over and exits, the datapath and its connections stay.
    #[command(args_conflicts_with_subcommands = true, after_help = logging::HELP)]
    Node {
        /// The node's TOML configuration file.
        #[arg(long, required = true)]
        config: Option<PathBuf>,
        /// Only check the configuration file: print each problem with its line, exit 0 if
        /// it is good and 1 if not (as `nginx -t`, `haproxy -c`).
        #[arg(long)]
        check: bool,
        #[command(subcommand)]
        action: Option<NodeAction>,
    },
    /// Talk to a running agent over its control socket: status, connections, peers, drain,
    /// reload.
    Ctl(ctl::CtlArgs),
    /// Build, use and remove a lab cluster of network namespaces on this machine.
    #[command(subcommand)]
    Lab(baton_lab::cli::LabCommand),
    /// Serve a directory over HTTP/1.1 (the lab's `static` server).
    ServeStatic(baton_lab::static_server::ServeArgs),
    /// Simulate a cluster under a trace with the real policies: throughput, hit ratio, imbalance.
    Sim(baton_sim::cli::SimArgs),
    /// Measure distribution on a lab: `baton bench cache` (a cache tier against round-robin and
    /// an L7 proxy).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Print a shell completion script: `baton completions bash > /etc/bash_completion.d/baton`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `baton man | man -l -`; or write one page per command.
    Man {
        /// Write baton.1 and a page for every subcommand (baton-node.1, baton-lab-up.1, ...)
        /// into this directory instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum NodeAction {
    /// Stop the agent for good: it drains, keeps the datapath until the last connection that
    /// needs it has closed (up to its drain_timeout_ms), then removes it; waits for it to exit.
    Stop {
        #[command(flatten)]
        interface: InterfaceArg,
        /// Longest wait for the agent to exit, in seconds (its default drain is an hour).
        #[arg(long, default_value_t = 3660)]
        timeout: u64,
    },
    /// Remove everything of baton on an interface at once: the agent (killed), its pinned links
    /// and maps. Connections that still need the datapath are cut.
    Cleanup {
        #[command(flatten)]
        interface: InterfaceArg,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct InterfaceArg {
    /// The interface the datapath is attached to.
    #[arg(long)]
    interface: Option<String>,
    /// Or the node's configuration file, which names it.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl InterfaceArg {
    fn resolve(&self) -> anyhow::Result<String> {
        match (&self.interface, &self.config) {
            (Some(interface), _) => Ok(interface.clone()),
            (None, Some(path)) => Ok(load_config(path)?.node.interface),
            (None, None) => anyhow::bail!("--interface or --config is required"),
        }
    }
}

fn load_config(path: &std::path::Path) -> anyhow::Result<baton_agent::config::NodeConfig> {
    baton_agent::config::NodeConfig::from_file(path)
        .with_context(|| format!("loading {}", path.display()))
}

fn node_action(action: NodeAction) -> anyhow::Result<()> {
    use baton_agent::lifecycle;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match action {
        NodeAction::Stop { interface, timeout } => {
            let interface = interface.resolve()?;
            let wait = std::time::Duration::from_secs(timeout);
            match runtime.block_on(lifecycle::stop(&interface, wait))? {
                lifecycle::Stopped::NotRunning => println!("no baton agent runs on {interface}"),
                lifecycle::Stopped::Exited(pid) => {
                    println!("the agent on {interface} (pid {pid}) drained and exited")
                }
            }
        }
        NodeAction::Cleanup { interface } => {
            let interface = interface.resolve()?;
            let cleaned = runtime.block_on(lifecycle::cleanup(&interface))?;
            if let Some(pid) = cleaned.killed {
                println!("killed the agent on {interface} (pid {pid})");
            }
            println!(
                "removed {} pins{}",
                cleaned.pins,
                cleaned
                    .dirs
                    .iter()
                    .map(|d| format!(" {}", d.display()))
                    .collect::<String>()
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The commands that load eBPF programs or build namespaces: run by anyone but root, their
    // failure gets the privileges hint even when no errno says so. (`ctl` needs root for its
    // socket only: an EACCES says so.)
    let privileged = matches!(
        cli.command,
        Command::Node { .. } | Command::Lab(_) | Command::Bench(_)
    );
    let result = logging::init(cli.log_format).and_then(|()| run(cli.command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // SAFETY: geteuid(2) has no preconditions and cannot fail.
            let as_user = privileged && unsafe { libc::geteuid() } != 0;
            eprint!("{}", report::render(&error, as_user));
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Node {
            action: Some(action),
            ..
        } => node_action(action),
        Command::Node {
            config,
            check: true,
            ..
        } => {
            let path = config.context("--config is required")?;
            if !ctl::check_config(&path)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Node { config, .. } => {
            let path = config.context("--config is required")?;
            // The version in the log: after an upgrade, which binary took over is on record.
            tracing::info!(version = VERSION, config = %path.display(), "baton node starting");
            baton_agent::run_until_signal(load_config(&path)?, Some(path)).context("baton node")
        }
        Command::Ctl(args) => ctl::run(args),
        Command::Lab(cmd) => baton_lab::cli::run(cmd),
        Command::ServeStatic(args) => baton_lab::static_server::run(args).context("serve-static"),
        Command::Sim(args) => baton_sim::cli::run(args),
        Command::Bench(command) => bench::run(command),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "baton", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir: None } => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .context("writing the man page"),
        Command::Man { dir: Some(dir) } => clap_mangen::generate_to(Cli::command(), &dir)
            .with_context(|| format!("writing the man pages into {}", dir.display())),
    }
}
