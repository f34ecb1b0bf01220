//! `baton ctl`: talks to a running agent over its control socket and prints the answer, as
//! tables in the manner of `ipvsadm -Ln` or as the agent's JSON (`-o json`).

use std::path::PathBuf;

use anyhow::Context;
use baton_agent::ctl::{self, ConnRow, PeerRow, Reply, Request, Status};

#[derive(clap::Args)]
pub struct CtlArgs {
    /// The agent's control socket (its `node.control_socket`).
    #[arg(long, conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Or the agent's configuration file, which names the socket.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output: tables for people, or the agent's JSON.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Request,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

pub fn run(args: CtlArgs) -> anyhow::Result<()> {
    let socket = match (&args.socket, &args.config) {
        (Some(socket), _) => socket.clone(),
        (None, Some(config)) => crate::load_config(config)?.node.control_socket,
        (None, None) => PathBuf::from(baton_agent::config::DEFAULT_CONTROL_SOCKET),
    };
    let reply = ctl::call(&socket, &args.command)?;
    if let Output::Json = args.output {
        println!(
            "{}",
            serde_json::to_string_pretty(&reply).context("encoding the reply")?
        );
        if let Reply::Error { .. } = reply {
            std::process::exit(1);
        }
        return Ok(());
    }
    match reply {
        Reply::Status(status) => print!("{}", status_text(&status)),
        Reply::Conns { conns } => print!("{}", conns_text(&conns)),
        Reply::Peers { peers } => print!("{}", peers_text(&peers)),
        Reply::Done { message } => println!("{message}"),
        Reply::Error { message } => anyhow::bail!("{message}"),
    }
    Ok(())
}

fn status_text(s: &Status) -> String {
    let health = match s.healthy {
        None => "no check".to_string(),
        Some(true) => "passing".to_string(),
        Some(false) => "FAILING".to_string(),
    };
    let mut out = format!(
        "baton {} node {} ({}) on {}, pid {}, up {}s\n\
         policy {}  state {}  serving {}  (listener {}, health check {})\n\
         load {}  held {}  handed out {}  handed in {}\n\
         config digest {}{}\n\n",
        s.version,
        s.node,
        s.address,
        s.interface,
        s.pid,
        s.uptime_s,
        s.policy,
        s.state,
        yes_no(s.serving),
        if s.listening { "up" } else { "DOWN" },
        health,
        s.load,
        s.held,
        s.handed_out,
        s.handed_in,
        s.config_digest,
        s.config_file
            .as_ref()
            .map(|p| format!("  (from {})", p.display()))
            .unwrap_or_default(),
    );
    out.push_str(&peers_text(&s.peers));
    out
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

fn peers_text(peers: &[PeerRow]) -> String {
    let mut out = format!(
        "{:<12} {:<16} {:<12} {:>6} {:>9} {:>11} {}\n",
        "Peer", "Address", "State", "Load", "RTT", "LastHeard", "Config"
    );
    for p in peers {
        let rtt = p.rtt_us.map_or_else(
            || "-".to_string(),
            |us| format!("{:.2}ms", f64::from(us) / 1000.0),
        );
        let heard = p
            .last_heard_ms
            .map_or_else(|| "never".to_string(), |ms| format!("{ms}ms ago"));
        let config = match p.config_agrees {
            None => "unknown",
            Some(true) => "same",
            Some(false) => "DIFFERS",
        };
        out.push_str(&format!(
            "{:<12} {:<16} {:<12} {:>6} {:>9} {:>11} {}\n",
            p.name, p.address, p.state, p.load, rtt, heard, config
        ));
    }
    out
}

fn conns_text(conns: &[ConnRow]) -> String {
    let mut out = format!(
        "{:<22} {:<4} {:<8} {:<8} {:<10} {:>9} {:>9} {:>8} {:>12}\n",
        "Client", "Dir", "FE", "BE", "Phase", "Age", "Idle", "Packets", "Bytes"
    );
    for c in conns {
        out.push_str(&format!(
            "{:<22} {:<4} {:<8} {:<8} {:<10} {:>9} {:>9} {:>8} {:>12}\n",
            c.client.to_string(),
            c.direction,
            c.fe,
            c.be,
            c.phase,
            duration(c.age_ms),
            duration(c.idle_ms),
            c.packets,
            c.bytes
        ));
    }
    out.push_str(&format!("{} connections\n", conns.len()));
    out
}

fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
    }
}

/// `baton node --check`: parses and validates `path`; prints each problem with its line.
/// Returns whether the file is good.
pub fn check_config(path: &std::path::Path) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    match baton_agent::config::NodeConfig::from_toml(&text) {
        Ok(config) => {
            println!(
                "{}: ok (node {}, {} members, policy {}, digest {:016x})",
                path.display(),
                config.node.name,
                config.cluster.members.len(),
                config.policy.kind.as_str(),
                config.cluster_digest()
            );
            Ok(true)
        }
        Err(e) => {
            for (line, message) in e.located(&text) {
                match line {
                    Some(line) => eprintln!("{}:{line}: {message}", path.display()),
                    None => eprintln!("{}: {message}", path.display()),
                }
            }
            Ok(false)
        }
    }
}
