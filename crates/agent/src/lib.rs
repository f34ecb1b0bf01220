//! The baton node agent (`baton node`): it attaches the eBPF datapath to the cluster interface,
//! joins the control mesh, and runs the handoff engine and the metrics endpoint until shutdown.
//!
//! Layout:
//! - [`engine`]: the single owner of connection state, laid out by phase (`engine::fe`,
//!   `engine::be`), with the cluster view and every deadline;
//! - [`mesh`]: the control connections to the peers, passing messages both ways;
//! - [`kernel`]: what the engine asks of the kernel, as traits; [`inject`] and [`sockdiag`] are
//!   the real packet injection and TCP lookups, [`hold`] reassembles held streams;
//! - [`lifecycle`]: the agents of one interface over time (takeover, stop, cleanup);
//! - [`ctl`]: the local control socket (`baton ctl`: status, connections, drain, reload);
//!   [`health`]: the local server's HTTP health check;
//! - [`metrics`]: the Prometheus endpoint; [`config`]: the configuration file; [`alarm`]: the
//!   event loop's timer.
//!
//! One task, the event loop of [`run`], owns the engine and feeds it everything it waits for:
//! datapath events as soon as the ring wakes it (and again right after each input, since a
//! replayed packet's answer is often on the ring before the injecting call returns), control
//! messages, and its next deadline. Nothing on a connection's path waits for a tick.
//!
//! The datapath outlives the agent: its links and the maps that carry connections are pinned
//! (`baton_bpf::pins`), and the programs fail open while no agent beats. At start the agent takes
//! over from a previous one that still runs ([`lifecycle`]: it is told to hand over and waited
//! for), replaces the pinned links' programs with its own in one step, and adopts the connections
//! in the table (`engine::adopt`).
//!
//! How it ends is a [`Stop`] passed in on a `watch` channel, so every task can be stopped from a
//! test:
//! - [`Stop::ForGood`] (SIGTERM, SIGINT, `baton node stop`): a drain. Peers are told to choose
//!   this node for nothing new, the datapath holds nothing new, and the agent stays until every
//!   connection that needs the datapath (held, handed in, forwarded) has finished, up to
//!   `limits.drain_timeout_ms`. Then held connections are served locally and the datapath is
//!   removed: pins, links, maps.
//! - [`Stop::HandOver`] (SIGUSR2, sent by the agent that takes over): the datapath fails open at
//!   once, held connections are served here, and the agent waits only for offers out and replays
//!   in to resolve (within `limits.handoff_timeout_ms`), then exits, leaving the datapath pinned.

pub mod alarm;
pub mod config;
pub mod ctl;
pub mod engine;
pub mod health;
pub mod hold;
pub mod inject;
pub mod kernel;
pub mod lifecycle;
pub mod mesh;
pub mod metrics;
pub mod sockdiag;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_bpf::datapath::Attachment;
use baton_bpf::datapath::EventRing;
use baton_bpf::{Datapath, DatapathError, Event};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

use crate::alarm::{Alarm, AlarmError};
use crate::config::NodeConfig;
use crate::engine::Engine;
use crate::inject::{InjectError, Injector};
use crate::mesh::{MeshConfig, MeshError, PeerAddr};
use crate::metrics::{DatapathCounters, Metrics, MetricsError};
use crate::sockdiag::{SockDiag, SockDiagError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("datapath: {0}")]
    Datapath(Box<DatapathError>),
    #[error(
        "baton programs are attached to {interface} (ingress program id {program_id}) without \
         this build's pins{others}: another agent runs there; stop it (baton node stop) or \
         remove it (baton node cleanup --interface {interface})"
    )]
    AlreadyAttached {
        interface: String,
        program_id: u32,
        others: String,
    },
    #[error(
        "{interface} carries the datapath of the node with service address {found}, not this \
         node's ({ours}): refusing to take it over"
    )]
    OtherNode {
        interface: String,
        found: std::net::Ipv4Addr,
        ours: std::net::Ipv4Addr,
    },
    #[error(transparent)]
    Lifecycle(#[from] lifecycle::LifecycleError),
    #[error("attaching to interface {interface}: {source}")]
    Attach {
        interface: String,
        source: Box<DatapathError>,
    },
    #[error(transparent)]
    Inject(#[from] InjectError),
    #[error(transparent)]
    SockDiag(#[from] SockDiagError),
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Ctl(#[from] ctl::CtlError),
    #[error("the event loop's timer: {0}")]
    Alarm(#[from] AlarmError),
    #[error("epoll registration of the event ring (AsyncFd::new): {0}")]
    Ring(std::io::Error),
    #[error("reading this network namespace (stat /proc/thread-self/ns/net): {0}")]
    Netns(std::io::Error),
    #[error("ioctl(SIOCGIFMTU) of {interface}: {source}")]
    Mtu {
        interface: String,
        source: std::io::Error,
    },
    #[error("starting the tokio runtime: {0}")]
    Runtime(std::io::Error),
    #[error("installing signal handlers (sigaction): {0}")]
    Signal(std::io::Error),
    #[error("{0} service ports configured; the datapath takes at most {max}", max = baton_bpf::SERVICE_PORTS_MAX)]
    TooManyPorts(usize),
}

impl From<DatapathError> for AgentError {
    fn from(e: DatapathError) -> Self {
        AgentError::Datapath(Box::new(e))
    }
}

/// How the agent is asked to end (see the crate's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Running,
    /// Drain, wait for the connections that need the datapath, remove it.
    ForGood,
    /// Another agent takes over: settle what is in flight, leave the datapath pinned, exit.
    HandOver,
}

/// Runs the agent until SIGINT or SIGTERM (stop for good) or SIGUSR2 (hand over); SIGHUP reloads
/// `config_file` (as `baton ctl reload` does).
pub fn run_until_signal(
    config: NodeConfig,
    config_file: Option<std::path::PathBuf>,
) -> Result<(), AgentError> {
    // One thread: the engine's loop and the mesh's tasks hand each other messages without
    // crossing CPUs, and an idle agent has one thread to wake.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(Stop::Running);
        let (reload_tx, reload_rx) = mpsc::channel(4);
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
        let mut hangup = signal(SignalKind::hangup()).map_err(AgentError::Signal)?;
        let mut hand_over = signal(SignalKind::user_defined2()).map_err(AgentError::Signal)?;
        // Every signal is passed on, also after the first: an agent draining for good can still
        // be told to hand over to a new one.
        tokio::spawn(async move {
            loop {
                let stop = tokio::select! {
                    _ = term.recv() => Stop::ForGood,
                    _ = tokio::signal::ctrl_c() => Stop::ForGood,
                    _ = hand_over.recv() => Stop::HandOver,
                    _ = hangup.recv() => {
                        // Full: a reload is pending already, and reads the file as it is then.
                        let _ = reload_tx.try_send(());
                        continue;
                    }
                };
                if stop_tx.send(stop).is_err() {
                    break;
                }
            }
        });
        run(
            Launch {
                config,
                config_file,
                reloads: Some(reload_rx),
            },
            stop_rx,
        )
        .await
    })
}

/// What an agent starts from.
pub struct Launch {
    pub config: NodeConfig,
    /// The file `config` was read from: what a reload reads again.
    pub config_file: Option<std::path::PathBuf>,
    /// Reload requests (SIGHUP).
    pub reloads: Option<mpsc::Receiver<()>>,
}

/// How long a new agent waits for the one it takes over from: the offers and replays that one
/// settles take up to `handoff_timeout_ms`; this leaves room for its exit.
fn takeover_wait(config: &NodeConfig) -> Duration {
    Duration::from_millis(config.limits.handoff_timeout_ms) + Duration::from_secs(5)
}

/// The attached programs, the pins and the previous agent of this node's interface: what is found
/// before anything is touched, refused when it is not this node's.
/// Also returns when the previous agent, if one ran, was told to hand over (and stood down).
async fn open_datapath(
    config: &NodeConfig,
    netns_inum: u32,
) -> Result<(Datapath, Option<Instant>), AgentError> {
    let interface = &config.node.interface;
    baton_bpf::pins::ensure_bpffs().map_err(lifecycle::LifecycleError::Bpffs)?;
    let pin_dir = baton_bpf::pins::dir(netns_inum, interface);
    let mut pinned = pin_dir.join(baton_bpf::pins::LINK_INGRESS).exists();
    let attach_error = |source| AgentError::Attach {
        interface: interface.clone(),
        source: Box::new(source),
    };
    if pinned && !Datapath::pinned_link_is_attached(interface, &pin_dir).map_err(attach_error)? {
        // Left by a datapath whose interface is gone: nothing in it is this interface's.
        tracing::warn!(pins = %pin_dir.display(), "removing stale pins of a deleted interface");
        baton_bpf::pins::remove_dir(&pin_dir).map_err(|source| {
            lifecycle::LifecycleError::Remove {
                path: pin_dir.display().to_string(),
                source,
            }
        })?;
        pinned = false;
    }
    if !pinned {
        let attached = Datapath::attached_elsewhere(interface).map_err(attach_error)?;
        if let Some(program_id) = attached {
            let others = baton_bpf::pins::other_layouts(netns_inum, interface);
            return Err(AgentError::AlreadyAttached {
                interface: interface.clone(),
                program_id,
                others: if others.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (pins of another map layout: {})",
                        others
                            .iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
            });
        }
    }
    // Loaded (verified) before the previous agent is told to go: the gap is shorter.
    let datapath = Datapath::load_pinned(&pin_dir)?;
    let found = datapath.node_config()?.service_addr;
    let found = std::net::Ipv4Addr::from(found);
    if !found.is_unspecified() && found != config.node.address {
        return Err(AgentError::OtherNode {
            interface: interface.clone(),
            found,
            ours: config.node.address,
        });
    }
    let asked = Instant::now();
    let took_over = lifecycle::take_over(&pin_dir, takeover_wait(config))
        .await?
        .map(|pid| {
            tracing::info!(pid, waited = ?asked.elapsed(), "the previous agent handed over");
            asked
        });
    Ok((datapath, took_over))
}

/// Runs the agent until `stop` says how to end.
pub async fn run(launch: Launch, mut stop: watch::Receiver<Stop>) -> Result<(), AgentError> {
    let Launch {
        config,
        config_file,
        reloads,
    } = launch;
    let mut reloads = reloads.unwrap_or_else(|| mpsc::channel(1).1);
    // The tasks stop on `tasks_stop`, after the drain or hand-over that `stop` starts.
    let (tasks_stop_tx, tasks_stop) = watch::channel(false);
    let ports = &config.cluster.service_ports;
    if ports.len() > baton_bpf::SERVICE_PORTS_MAX {
        return Err(AgentError::TooManyPorts(ports.len()));
    }
    let interface = config.node.interface.clone();
    let netns_inum = baton_bpf::current_netns_inum().map_err(AgentError::Netns)?;
    let pin_dir = baton_bpf::pins::dir(netns_inum, &interface);
    let (mut datapath, took_over) = open_datapath(&config, netns_inum).await?;
    let conns = datapath.take_conns()?;
    let datapath_config = datapath.take_config()?;
    let (bounded, bounded_counts) = datapath.take_bounded()?;
    let ring = datapath.take_events()?;
    let mut quiet = datapath.take_quiet_events()?;
    let counters = Arc::new(datapath.take_counters()?);
    let agent = Arc::new(datapath.take_agent_map()?);
    let inject = Injector::new(agent.clone())?;
    let diag = SockDiag::new()?;
    let metrics = Metrics::default();

    let (mesh_tx, mut mesh_rx) = mpsc::channel(4096);
    let members = mesh_members(&config.cluster.members, config.cluster.control_port);
    let mesh = mesh::start(
        MeshConfig {
            self_index: config.self_index(),
            self_name: config.node.name.clone(),
            listen: SocketAddr::new(
                config.me().control_addr().into(),
                config.cluster.control_port,
            ),
            members: std::sync::RwLock::new(members),
            key: config.cluster.key.as_bytes().to_vec(),
            offer_ttl: Duration::from_millis(config.limits.handoff_timeout_ms / 4),
            unknown_dialers: Default::default(),
        },
        mesh_tx,
        metrics.clone(),
        tasks_stop.clone(),
    )
    .await?;

    if let Some(addr) = config.metrics.listen {
        let server = metrics::serve(
            metrics::bind(addr).await?,
            metrics.clone(),
            DatapathCounters::new(counters.clone()),
            tasks_stop.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!("metrics endpoint: {e}");
            }
        });
    }

    let (ctl_tx, mut ctl_rx) = mpsc::channel(16);
    ctl::serve(&config.node.control_socket, ctl_tx, tasks_stop.clone())?;
    let mut health = HealthTask::start(&config, true, &tasks_stop);

    // SAFETY: the ring's fd is owned by `ring`, which the AsyncFd owns until it is dropped, so
    // the descriptor stays valid and is not reused while registered.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| AgentError::Ring(e.into()))?;
    let (name, policy) = (config.node.name.clone(), config.policy.kind);
    let kernel = kernel::Kernel {
        conns: Box::new(conns),
        follow: Box::new(kernel::FollowMaps {
            watch: datapath.take_watch()?,
            responses: datapath.take_responses()?,
        }),
        datapath: Box::new(kernel::DatapathHandles {
            config: datapath_config,
            bounded,
            bounded_counts,
            counters,
            agent: agent.clone(),
            netns_inum,
            mtu: kernel::interface_mtu(&interface).map_err(|source| AgentError::Mtu {
                interface: interface.clone(),
                source,
            })?,
        }),
        inject: Box::new(inject),
        tcp: Box::new(diag),
    };
    // The engine writes the datapath's configuration before anything is attached.
    let drain_mark = drain_mark(&config);
    let mut engine = Engine::new(config, kernel, mesh, metrics.clone(), Instant::now());
    if drain_mark.exists() {
        // Drained by the operator under the previous agent: an upgrade keeps it so.
        engine.set_drained(true, Instant::now());
    }

    // Attach last: from here on connections are held (once the engine beats), and the engine is
    // ready for them.
    let attachment = datapath
        .attach_pinned(&interface, &pin_dir)
        .map_err(|source| AgentError::Attach {
            interface: interface.clone(),
            source: Box::new(source),
        })?;
    if attachment == Attachment::Adopted {
        let adopted = engine.adopt(Instant::now());
        metrics
            .adopted
            .inc_by((adopted.forwarded + adopted.handed_in + adopted.replaying) as u64);
        tracing::info!(
            forwarded = adopted.forwarded,
            handed_in = adopted.handed_in,
            replaying = adopted.replaying,
            unknown_peer = adopted.unknown_peer,
            "adopted the pinned datapath"
        );
    }
    if let Some(asked) = took_over {
        // From the previous agent's stand-down to our first heartbeat (the engine's first
        // round, next): new connections were served here, undistributed, meanwhile.
        tracing::info!(undistributed = ?asked.elapsed(), "took over");
    }
    tracing::info!(node = %name, %interface, %policy, pins = %pin_dir.display(), "baton node running");

    let mut alarm = Alarm::new()?;
    let mut ending: Option<(Stop, Instant)> = None;
    let mut stop_open = true;
    loop {
        alarm.set(engine.next_deadline())?;
        tokio::select! {
            // A first stop; or a hand-over while draining for good (an upgrade during a long
            // drain: the new agent keeps what the drain waits for).
            changed = stop.changed(), if stop_open && !matches!(ending, Some((Stop::HandOver, _))) => {
                let now = Instant::now();
                // Whoever could stop us is gone: a stop for good, once.
                let how = match changed {
                    Ok(()) => *stop.borrow(),
                    Err(_) => {
                        stop_open = false;
                        Stop::ForGood
                    }
                };
                if ending.is_some() && how != Stop::HandOver {
                    continue;
                }
                let limits = &engine.config().limits;
                let wait = match how {
                    Stop::Running => continue,
                    Stop::ForGood => Duration::from_millis(limits.drain_timeout_ms),
                    Stop::HandOver => Duration::from_millis(limits.handoff_timeout_ms)
                        + Duration::from_millis(100),
                };
                match how {
                    Stop::HandOver => {
                        engine.begin_handover(now);
                        tracing::info!("handing over to a new agent");
                    }
                    _ => {
                        // Graceful stop: nothing new is held or offered here; what is in flight
                        // finishes.
                        engine.begin_drain(now);
                        tracing::info!("draining");
                    }
                }
                ending = Some((how, now + wait));
            }
            ready = ring.readable_mut() => match ready {
                Ok(mut guard) => guard.clear_ready(),
                Err(e) => tracing::warn!("event ring: {e}"),
            },
            Some(event) = mesh_rx.recv() => {
                // What the datapath noted quietly comes first: an answer may be about it.
                read_quiet(&mut quiet, &mut engine, &metrics);
                engine.on_mesh(event, Instant::now())
            }
            _ = alarm.fired() => {
                read_quiet(&mut quiet, &mut engine, &metrics);
                engine.on_timers(Instant::now())
            }
            Some(call) = ctl_rx.recv() => {
                let reply = match call.request {
                    ctl::Request::Reload => match reload(&mut engine, config_file.as_deref(), &mut health, &tasks_stop) {
                        Ok(message) => ctl::Reply::Done { message },
                        Err(message) => ctl::Reply::Error { message },
                    },
                    request => answer(&mut engine, request, config_file.as_deref(), &drain_mark),
                };
                let _ = call.reply.send(reply);
            }
            Some(()) = reloads.recv() => {
                if let Err(e) = reload(&mut engine, config_file.as_deref(), &mut health, &tasks_stop) {
                    tracing::error!("SIGHUP: {e}");
                }
            }
            Some(healthy) = health.verdict() => engine.on_health(Some(healthy), Instant::now()),
            _ = sleep_until(ending.map(|(_, at)| at)) => break,
        }
        read_quiet(&mut quiet, &mut engine, &metrics);
        read_events(ring.get_mut(), &mut quiet, &mut engine, &metrics);
        match ending {
            Some((Stop::ForGood, _)) if engine.drained() => break,
            Some((Stop::HandOver, _)) if engine.settled() => break,
            _ => {}
        }
    }
    let _ = tasks_stop_tx.send(true);
    // Nothing new is held from here; what is held is served locally.
    agent.stand_down();
    read_quiet(&mut quiet, &mut engine, &metrics);
    read_events(ring.get_mut(), &mut quiet, &mut engine, &metrics);
    engine.release_all(Instant::now());
    if matches!(ending, Some((Stop::HandOver, _))) {
        tracing::info!("handed over: the datapath stays for the next agent");
        return Ok(());
    }
    // For good: the pins go, and with our descriptors the links and maps; a drain ends with it.
    remove_drain_mark(&drain_mark);
    match baton_bpf::pins::remove_dir(&pin_dir) {
        Ok(n) => tracing::info!(pins = n, "removed the datapath"),
        Err(e) => tracing::warn!("removing the pins in {}: {e}", pin_dir.display()),
    }
    drop(datapath);
    tracing::info!("baton node stopped");
    Ok(())
}

/// The configured members as the mesh dials them.
fn mesh_members(members: &[config::Member], control_port: u16) -> Vec<Option<PeerAddr>> {
    members
        .iter()
        .map(|m| {
            Some(PeerAddr {
                name: m.name.clone(),
                addr: SocketAddr::new(m.control_addr().into(), control_port),
            })
        })
        .collect()
}

/// The file that says the operator drained this node, so that the agent that takes over (or
/// restarts) starts drained: next to the control socket, `SOCKET.drained`.
fn drain_mark(config: &NodeConfig) -> std::path::PathBuf {
    let mut path = config.node.control_socket.clone().into_os_string();
    path.push(".drained");
    path.into()
}

fn remove_drain_mark(path: &std::path::Path) {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("removing {}: {e}", path.display())
        }
        _ => {}
    }
}

/// Answers an operator's request from the engine's state.
fn answer(
    engine: &mut Engine,
    request: ctl::Request,
    config_file: Option<&std::path::Path>,
    drain_mark: &std::path::Path,
) -> ctl::Reply {
    let now = Instant::now();
    match request {
        ctl::Request::Status => {
            let mut status = engine.status(now);
            status.config_file = config_file.map(|p| p.to_path_buf());
            ctl::Reply::Status(Box::new(status))
        }
        ctl::Request::Conns => ctl::Reply::Conns {
            conns: engine.conn_rows(),
        },
        ctl::Request::Peers => ctl::Reply::Peers {
            peers: engine.peer_rows(now),
        },
        ctl::Request::Drain => {
            if let Err(e) = std::fs::write(drain_mark, b"drained by the operator\n") {
                tracing::warn!(
                    "writing {}: {e}: a restart will start undrained",
                    drain_mark.display()
                );
            }
            ctl::Reply::Done {
                message: engine.set_drained(true, now),
            }
        }
        ctl::Request::Undrain => {
            remove_drain_mark(drain_mark);
            ctl::Reply::Done {
                message: engine.set_drained(false, now),
            }
        }
        ctl::Request::Reload => ctl::Reply::Error {
            message: "reload is answered by the event loop".into(),
        },
    }
}

/// Reads the configuration file again and applies it; on any error the running configuration
/// stays and the error says why.
fn reload(
    engine: &mut Engine,
    config_file: Option<&std::path::Path>,
    health: &mut HealthTask,
    stop: &watch::Receiver<bool>,
) -> Result<String, String> {
    let Some(path) = config_file else {
        return Err("the agent was not started from a configuration file".into());
    };
    let new = NodeConfig::from_file(path).map_err(|e| {
        let e = format!("{}: {e}; the running configuration is kept", path.display());
        tracing::error!("reload refused: {e}");
        e
    })?;
    let health_changed = new.health != engine.config().health;
    let done = engine.reload(new, Instant::now()).inspect_err(|e| {
        tracing::error!("reload refused: {e}");
    })?;
    if health_changed {
        health.stop();
        // Verdicts of the check replaced go with its channel; the new one goes on from ours.
        let healthy = engine.status(Instant::now()).healthy.unwrap_or(true);
        *health = HealthTask::start(engine.config(), healthy, stop);
        if health.task.is_none() {
            engine.on_health(None, Instant::now());
        }
    }
    Ok(done)
}

/// The running health check, if one is configured, and its verdicts.
struct HealthTask {
    task: Option<tokio::task::JoinHandle<()>>,
    verdicts: Option<mpsc::Receiver<bool>>,
}

impl HealthTask {
    fn start(config: &NodeConfig, healthy: bool, stop: &watch::Receiver<bool>) -> Self {
        let check = health::Check::from_config(
            &config.health,
            config.node.address,
            &config.cluster.service_ports,
        );
        let Some(check) = check else {
            return HealthTask {
                task: None,
                verdicts: None,
            };
        };
        let (tx, rx) = mpsc::channel(4);
        HealthTask {
            task: Some(tokio::spawn(health::watch(
                check,
                healthy,
                tx,
                stop.clone(),
            ))),
            verdicts: Some(rx),
        }
    }

    /// The next verdict; never, without a check.
    async fn verdict(&mut self) -> Option<bool> {
        match &mut self.verdicts {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.verdicts = None;
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Everything on the events ring, in order, to the engine; before each event, the quiet notices
/// written so far: a quiet notice comes before what follows it (a request the datapath let stay
/// before the next one it holds).
fn read_events(
    ring: &mut EventRing,
    quiet: &mut EventRing,
    engine: &mut Engine,
    metrics: &Metrics,
) {
    while let Some(record) = ring.next() {
        let event = Event::parse(&record);
        drop(record);
        read_quiet(quiet, engine, metrics);
        match event {
            Ok(event) => {
                let delay_ns = engine::monotonic_ns().saturating_sub(event.ts_ns);
                metrics.event_delay.observe(delay_ns as f64 * 1e-9);
                engine.on_datapath(event, Instant::now())
            }
            Err(e) => {
                metrics.malformed_events.inc();
                tracing::warn!("datapath event: {e}");
            }
        }
    }
}

/// Every quiet notice (the ring that wakes no one) to the engine, in order. Read before every
/// input: its notices come before what follows them. Their delay is by design, not a wakeup's.
fn read_quiet(quiet: &mut EventRing, engine: &mut Engine, metrics: &Metrics) {
    while let Some(record) = quiet.next() {
        let event = Event::parse(&record);
        drop(record);
        match event {
            Ok(event) => engine.on_datapath(event, Instant::now()),
            Err(e) => {
                metrics.malformed_events.inc();
                tracing::warn!("datapath notice: {e}");
            }
        }
    }
}
