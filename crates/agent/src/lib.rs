//! The baton node agent (`baton node`): it attaches the eBPF datapath to the cluster interface,
//! joins the control mesh, and runs the handoff engine and the metrics endpoint until shutdown.
//!
//! Layout:
//! - [`engine`]: the single owner of connection state, laid out by phase (`engine::fe`,
//!   `engine::be`), with the cluster view and every deadline;
//! - [`mesh`]: the control connections to the peers, passing messages both ways;
//! - [`kernel`]: what the engine asks of the kernel, as traits; [`inject`] and [`sockdiag`] are
//!   the real packet injection and TCP lookups, [`hold`] reassembles held streams;
//! - [`metrics`]: the Prometheus endpoint; [`config`]: the configuration file; [`alarm`]: the
//!   event loop's timer.
//!
//! One task, the event loop of [`run`], owns the engine and feeds it everything it waits for:
//! datapath events as soon as the ring wakes it (and again right after each input, since a
//! replayed packet's answer is often on the ring before the injecting call returns), control
//! messages, and its next deadline. Nothing on a connection's path waits for a tick.
//!
//! Shutdown is a `watch` channel passed in, so every task can be stopped from a test. It starts a
//! drain: peers are told to choose this node for nothing new, the datapath stops holding new
//! connections, and what is in flight (held, handed in, forwarded) finishes, up to
//! `limits.drain_timeout_ms`. Then held connections are served locally and the datapath is
//! detached (its TCX links are owned by this process and go with it).

pub mod alarm;
pub mod config;
pub mod engine;
pub mod hold;
pub mod inject;
pub mod kernel;
pub mod mesh;
pub mod metrics;
pub mod sockdiag;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
        "another baton agent's programs are attached to {interface} (ingress program id \
         {program_id}): stop that agent first"
    )]
    AlreadyAttached { interface: String, program_id: u32 },
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
    #[error("the event loop's timer: {0}")]
    Alarm(#[from] AlarmError),
    #[error("epoll registration of the event ring (AsyncFd::new): {0}")]
    Ring(std::io::Error),
    #[error("reading this network namespace (stat /proc/self/ns/net): {0}")]
    Netns(std::io::Error),
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

/// Runs the agent until SIGINT or SIGTERM. SIGHUP, which would end the process, is caught: the
/// agent cannot reload its configuration yet, and says so instead of dropping its connections.
pub fn run_until_signal(config: NodeConfig) -> Result<(), AgentError> {
    // One thread: the engine's loop and the mesh's tasks hand each other messages without
    // crossing CPUs, and an idle agent has one thread to wake.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
        let mut hangup = signal(SignalKind::hangup()).map_err(AgentError::Signal)?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = tokio::signal::ctrl_c() => break,
                    _ = hangup.recv() => tracing::warn!(
                        "SIGHUP: reloading the configuration is not supported yet; restart the \
                         agent to apply a new one (this one keeps running)"
                    ),
                }
            }
            let _ = stop_tx.send(true);
        });
        run(config, stop_rx).await
    })
}

/// Runs the agent until `shutdown` turns true.
pub async fn run(
    config: NodeConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    // The tasks stop on `tasks_stop`, after the drain that `shutdown` starts.
    let (tasks_stop_tx, tasks_stop) = watch::channel(false);
    let ports = &config.cluster.service_ports;
    if ports.len() > baton_bpf::SERVICE_PORTS_MAX {
        return Err(AgentError::TooManyPorts(ports.len()));
    }
    let interface = config.node.interface.clone();
    let attached =
        Datapath::attached_elsewhere(&interface).map_err(|source| AgentError::Attach {
            interface: interface.clone(),
            source: Box::new(source),
        })?;
    if let Some(program_id) = attached {
        return Err(AgentError::AlreadyAttached {
            interface,
            program_id,
        });
    }
    let mut datapath = Datapath::load()?;
    let conns = datapath.take_conns()?;
    let datapath_config = datapath.take_config()?;
    let ring = datapath.take_events()?;
    let counters = Arc::new(datapath.take_counters()?);
    let netns_inum = baton_bpf::current_netns_inum().map_err(AgentError::Netns)?;
    let inject = Injector::new(datapath.take_injecting_mark()?)?;
    let diag = SockDiag::new()?;
    let metrics = Metrics::default();

    let (mesh_tx, mut mesh_rx) = mpsc::channel(4096);
    let members: Vec<PeerAddr> = config
        .cluster
        .members
        .iter()
        .map(|m| PeerAddr {
            name: m.name.clone(),
            addr: SocketAddr::new(m.address.into(), config.cluster.control_port),
        })
        .collect();
    let mesh = mesh::start(
        MeshConfig {
            self_index: config.self_index(),
            self_name: config.node.name.clone(),
            listen: SocketAddr::new(config.node.address.into(), config.cluster.control_port),
            members,
            key: config.cluster.key.as_bytes().to_vec(),
            offer_ttl: Duration::from_millis(config.limits.handoff_timeout_ms / 4),
        },
        mesh_tx,
        metrics.clone(),
        tasks_stop.clone(),
    )
    .await?;

    if let Some(addr) = config.metrics.listen {
        let server = metrics::serve(
            addr,
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

    // SAFETY: the ring's fd is owned by `ring`, which the AsyncFd owns until it is dropped, so
    // the descriptor stays valid and is not reused while registered.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| AgentError::Ring(e.into()))?;
    let (name, policy) = (config.node.name.clone(), config.policy.kind);
    let kernel = kernel::Kernel {
        conns: Box::new(conns),
        datapath: Box::new(kernel::DatapathHandles {
            config: datapath_config,
            counters,
            netns_inum,
        }),
        inject: Box::new(inject),
        tcp: Box::new(diag),
    };
    // The engine writes the datapath's configuration before anything is attached.
    let mut engine = Engine::new(config, kernel, mesh, metrics.clone(), Instant::now());

    // Attach last: from here on connections are held, and the engine is ready for them.
    datapath
        .attach(&interface)
        .map_err(|source| AgentError::Attach {
            interface: interface.clone(),
            source: Box::new(source),
        })?;
    tracing::info!(node = %name, %interface, %policy, "baton node running");

    let mut alarm = Alarm::new()?;
    let mut drain_deadline: Option<Instant> = None;
    loop {
        alarm.set(engine.next_deadline())?;
        tokio::select! {
            _ = shutdown.changed(), if drain_deadline.is_none() => {
                // Graceful stop: nothing new is held or offered here; what is in flight finishes.
                let now = Instant::now();
                engine.begin_drain(now);
                let timeout = Duration::from_millis(engine.config().limits.drain_timeout_ms);
                drain_deadline = Some(now + timeout);
                tracing::info!("draining");
            }
            ready = ring.readable_mut() => match ready {
                Ok(mut guard) => guard.clear_ready(),
                Err(e) => tracing::warn!("event ring: {e}"),
            },
            Some(event) = mesh_rx.recv() => engine.on_mesh(event, Instant::now()),
            _ = alarm.fired() => engine.on_timers(Instant::now()),
            _ = sleep_until(drain_deadline) => break,
        }
        read_ring(ring.get_mut(), &mut engine, &metrics);
        if drain_deadline.is_some() && engine.drained() {
            break;
        }
    }
    let _ = tasks_stop_tx.send(true);
    // Detach first so nothing new is held, then serve what is held locally.
    drop(datapath);
    read_ring(ring.get_mut(), &mut engine, &metrics);
    engine.release_all(Instant::now());
    tracing::info!("baton node stopped");
    Ok(())
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Feeds the engine every event on the ring.
fn read_ring(ring: &mut EventRing, engine: &mut Engine, metrics: &Metrics) {
    while let Some(record) = ring.next() {
        let event = Event::parse(&record);
        drop(record);
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
