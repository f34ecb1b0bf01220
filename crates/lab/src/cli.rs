//! `baton lab ...`: the command-line face of [`crate::lab`].

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use baton_policy::PolicyKind;
use clap::{Args, Subcommand};

use crate::lab::{self, Lab, LabSpec, ServerKind};
use crate::{demo, prerequisites};

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build a lab: network namespaces, a bridge, a server (and an agent) on every node.
    Up(UpArgs),
    /// Run a command in one host of a lab (client, sw, n1..nN, origin in a cache lab), with this
    /// terminal; exits with the command's exit code.
    Exec(ExecArgs),
    /// Start, stop, kill or restart (take over) one node's agent in a running lab.
    Agent(AgentArgs),
    /// Run `baton ctl` against one node's agent (its control socket is in the lab's state
    /// directory): `baton lab ctl --name NAME n2 -- conns`.
    Ctl(CtlArgs),
    /// Remove a lab: its processes, datapath pins, namespaces and state directory (also a
    /// half-made one).
    Down(NameArg),
    /// List the labs on this machine.
    List,
    /// Build a 3-node lab (named `demo` unless --name says otherwise), run a short workload from
    /// its client, print per-node statistics, and remove it.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// Lab name: 1 to 10 characters from [a-z0-9].
    #[arg(long, default_value = "lab")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Number of nodes (n1..nN at 198.18.0.1..N).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// HTTP server on every node.
    #[arg(long, value_enum, default_value_t = ServerKind::Static)]
    pub server: ServerKind,
    /// Distribution policy of the agents (local, round-robin, hash, ...).
    #[arg(long, value_parser = lab::parse_policy, default_value = "round-robin")]
    pub policy: PolicyKind,
    /// Do not start baton agents (plain servers only).
    #[arg(long)]
    pub no_agent: bool,
    /// `--server cache`: each node's cache size in MiB [default: 64].
    #[arg(long)]
    pub cache_mb: Option<u64>,
    /// `--server cache`: how long the origin (198.18.0.250) waits before every response, in
    /// milliseconds [default: 20].
    #[arg(long)]
    pub origin_delay_ms: Option<u64>,
    /// `--server cache`: nginx's `proxy_cache_lock` on (concurrent misses of an object wait for
    /// one origin fetch, looking again every 500 ms) [default: off, as in nginx].
    #[arg(long)]
    pub cache_lock: bool,
    /// The agents check their own server with `GET PATH` every 500 ms (rise 2, fall 2) and are
    /// not chosen while it fails.
    #[arg(long)]
    pub health_path: Option<String>,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// The node: n1..nN, or its number.
    pub node: String,
    /// `baton ctl`'s arguments, after `--` (e.g. `-- -o json conns`).
    #[arg(last = true, required = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// client, sw, n1..nN, or origin (cache labs).
    pub host: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// The node: n1..nN, or its number.
    pub node: String,
    #[arg(value_enum)]
    pub action: AgentAction,
    /// `stop`: how many seconds to wait for the agent to exit by itself (it drains its handed-off
    /// connections first) before SIGKILL.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// What `baton lab agent` does to the node's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentAction {
    /// Start it (it must not be running) and wait until it reports all peers up.
    Start,
    /// SIGTERM: stop for good; wait up to --timeout for it to exit, then SIGKILL.
    Stop,
    /// SIGKILL: its datapath stays and keeps forwarding without an agent.
    Kill,
    /// Start a new agent that takes over from the running one (the upgrade path).
    Restart,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Lab name (1 to 10 characters from [a-z0-9]): two users of one machine pick two names.
    #[arg(long, default_value = "demo")]
    pub name: String,
    /// Distribution policy of the agents.
    #[arg(long, value_parser = lab::parse_policy, default_value = "round-robin")]
    pub policy: PolicyKind,
    /// HTTP server on every node.
    #[arg(long, value_enum, default_value_t = ServerKind::Static)]
    pub server: ServerKind,
}

pub fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Up(args) => up(args),
        LabCommand::Exec(args) => exec(args),
        LabCommand::Agent(args) => {
            let line = agent(&args)
                .with_context(|| format!("lab agent {} {}", args.name.name, args.node))?;
            println!("{line}");
            Ok(())
        }
        LabCommand::Ctl(args) => {
            let lab = Lab::open(&args.name.name)
                .with_context(|| format!("lab ctl {}", args.name.name))?;
            let i = lab.node_named(&args.node)?;
            let output = lab.ctl(i, &args.args)?;
            std::io::Write::write_all(&mut std::io::stdout(), &output.stdout)?;
            std::io::Write::write_all(&mut std::io::stderr(), &output.stderr)?;
            std::process::exit(output.status.code().unwrap_or(1));
        }
        LabCommand::Down(args) => {
            let report =
                lab::down_by_name(&args.name).with_context(|| format!("lab down {}", args.name))?;
            if report.is_empty() {
                println!("lab {}: nothing to remove", args.name);
            } else {
                println!(
                    "lab {}: stopped {} processes, removed {} datapath pins, deleted {} namespaces{}",
                    args.name,
                    report.processes,
                    report.pins,
                    report.namespaces,
                    if report.state_dir {
                        ", removed its state directory"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
        LabCommand::List => {
            for name in lab::list_labs() {
                let info = std::fs::read_to_string(lab::state_dir_of(&name).join("lab.info"))
                    .unwrap_or_default();
                let fields: BTreeMap<&str, &str> =
                    info.lines().filter_map(|l| l.split_once(" = ")).collect();
                let get = |k| fields.get(k).copied().unwrap_or("?");
                let cache = if get("server") == ServerKind::Cache.name() {
                    format!(
                        " cache_mb={} origin_delay_ms={} cache_lock={}",
                        get("cache_mb"),
                        get("origin_delay_ms"),
                        get("cache_lock")
                    )
                } else {
                    String::new()
                };
                println!(
                    "{name}: nodes={} server={} policy={} agents={}{cache}",
                    get("nodes"),
                    get("server"),
                    get("policy"),
                    get("agents")
                );
            }
            Ok(())
        }
        LabCommand::Demo(args) => demo::run(&args.name, args.server, args.policy),
    }
}

/// The spec `baton lab up` builds. Fails if `--cache-mb`, `--origin-delay-ms` or
/// `--cache-lock` is given for a server other than `cache` (they would be silently ignored).
pub fn up_spec(args: &UpArgs) -> anyhow::Result<LabSpec> {
    if args.server != ServerKind::Cache
        && (args.cache_mb.is_some() || args.origin_delay_ms.is_some() || args.cache_lock)
    {
        anyhow::bail!(
            "--cache-mb, --origin-delay-ms and --cache-lock apply to --server cache only, not {}",
            args.server
        );
    }
    let mut spec = LabSpec::new(args.name.name.clone(), args.nodes)
        .server(args.server)
        .policy(args.policy)
        .agents(!args.no_agent);
    if let Some(mb) = args.cache_mb {
        spec = spec.cache_mb(mb);
    }
    if let Some(ms) = args.origin_delay_ms {
        spec = spec.origin_delay_ms(ms);
    }
    spec = spec.cache_lock(args.cache_lock);
    if let Some(path) = &args.health_path {
        spec = spec.health(baton_agent::config::HealthSection {
            path: Some(path.clone()),
            interval_ms: 500,
            rise: 2,
            fall: 2,
            ..Default::default()
        });
    }
    Ok(spec)
}

fn up(args: UpArgs) -> anyhow::Result<()> {
    let spec = up_spec(&args)?;
    prerequisites::check(args.server, !args.no_agent)?;
    let lab = Lab::up(spec).with_context(|| format!("lab up {}", args.name.name))?;
    let name = lab.name().to_string();
    println!(
        "lab {name} is up: {} nodes, {} server, {}",
        lab.nodes(),
        lab.spec().server,
        if lab.spec().agents {
            format!("agents with policy {}", lab::policy_name(lab.spec().policy))
        } else {
            "no agents".to_string()
        }
    );
    println!("  client  {:<12} 198.18.0.254", lab.client_ns());
    for i in 1..=lab.nodes() {
        println!("  n{i:<6} {:<12} {}", lab.node_ns(i), lab.node_address(i));
    }
    if lab.spec().server == ServerKind::Cache {
        println!(
            "  origin  {:<12} {} (delay {} ms; caches of {} MiB)",
            lab.origin_ns(),
            lab.origin_addr().ip(),
            lab.spec().origin_delay_ms,
            lab.spec().cache_mb
        );
    }
    println!("  state   {}", lab.state_dir().display());
    println!("try:   baton lab exec --name {name} client -- curl -si http://198.18.0.1/index.html");
    if lab.spec().server == ServerKind::Cache {
        println!(
            "       baton lab exec --name {name} client -- curl -si http://198.18.0.1/o/1/4096"
        );
    }
    println!("clean: baton lab down --name {name}");
    lab.detach();
    Ok(())
}

/// Does `args.action` to the agent through a handle to the lab, and says what happened in one
/// line.
fn agent(args: &AgentArgs) -> anyhow::Result<String> {
    let mut lab = Lab::open(&args.name.name)?;
    let i = lab.node_named(&args.node)?;
    let who = format!("lab {} n{i} agent", lab.name());
    Ok(match args.action {
        AgentAction::Start => {
            let pid = lab.start_agent(i)?;
            format!("{who}: started, pid {pid}; ready (all peers up)")
        }
        AgentAction::Kill => {
            let pid = lab.kill_agent(i)?;
            format!("{who}: killed (SIGKILL), pid {pid} gone; its datapath stays")
        }
        AgentAction::Restart => {
            let (old, new) = lab.restart_agent(i)?;
            format!("{who}: taken over, pid {old} → {new}; ready (all peers up)")
        }
        AgentAction::Stop => {
            let timeout = Duration::from_secs(args.timeout);
            // Read before stopping: stop_agent_wait removes the pid file.
            let pid = lab
                .agent_pid(i)
                .with_context(|| format!("n{i} has no running agent"))?;
            if lab.stop_agent_wait(i, timeout)? {
                format!("{who}: stopped, pid {pid} exited after SIGTERM")
            } else {
                format!(
                    "{who}: pid {pid} did not exit within {} s of SIGTERM; killed it (SIGKILL)",
                    args.timeout
                )
            }
        }
    })
}

fn exec(args: ExecArgs) -> anyhow::Result<()> {
    let mut cmd = lab::exec_command(&args.name.name, &args.host, &args.command)?;
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", args.command))?;
    let code = match status.code() {
        Some(code) => code,
        None => {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        }
    };
    std::process::exit(code);
}
