//! The baton node agent (`baton node`): it attaches the eBPF datapath to the cluster interface,
//! joins the control mesh, and runs the handoff engine and the metrics endpoint until shutdown.
//!
//! Tasks and what each owns:
//! - the **engine** (`engine`): the conn table, held and handed-in connections, the policy, the
//!   view of the peers; it is the only task that changes connection state;
//! - the **event reader**: the datapath's ring buffer; it parses records and passes them on;
//! - the **mesh** (`mesh`): the control connections; it passes messages both ways;
//! - the **metrics server** (`metrics`): the datapath's counters, read at scrape time.
//!
//! Shutdown is a `watch` channel passed in, so every task can be stopped from a test. It starts a
//! drain: peers are told to choose this node for nothing new, the datapath stops holding new
//! connections, and what is in flight (held, handed in, forwarded) finishes, up to
//! `limits.drain_timeout_ms`. Then
//! held connections are served locally and the datapath is detached (its TCX links are owned by
//! this process and go with it).

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
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use baton_bpf::datapath::EventRing;
use baton_bpf::{Datapath, DatapathError, Event};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

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
    #[error("epoll registration of the event ring (AsyncFd::new): {0}")]
    Ring(std::io::Error),
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

/// Runs the agent until SIGINT or SIGTERM.
pub fn run_until_signal(config: NodeConfig) -> Result<(), AgentError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(AgentError::Signal)?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
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
    let mut datapath = Datapath::load()?;
    let distribute =
        config.policy.kind != baton_policy::PolicyKind::Local && config.cluster.members.len() > 1;
    datapath.set_node_config(&baton_bpf::NodeConfig::new(
        config.node.address,
        ports,
        distribute,
    ))?;
    let conns = datapath.take_conns()?;
    let ring = datapath.take_events()?;
    let counters = datapath.take_counters()?;
    let inject = Injector::new()?;
    let diag = SockDiag::new()?;
    let metrics = Metrics::default();
    let load = Arc::new(AtomicU32::new(0));

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
            heartbeat: Duration::from_millis(config.limits.heartbeat_ms),
        },
        mesh_tx,
        load.clone(),
        metrics.clone(),
        tasks_stop.clone(),
    )
    .await?;

    if let Some(addr) = config.metrics.listen {
        let server = metrics::serve(
            addr,
            metrics.clone(),
            DatapathCounters::new(counters),
            tasks_stop.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!("metrics endpoint: {e}");
            }
        });
    }

    let (event_tx, mut event_rx) = mpsc::channel(65536);
    // SAFETY: the ring's fd is owned by `ring`, which the AsyncFd owns until it is dropped, so
    // the descriptor stays valid and is not reused while registered.
    let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| AgentError::Ring(e.into()))?;
    tokio::spawn(read_events(
        ring,
        event_tx,
        metrics.clone(),
        shutdown.clone(),
    ));

    // Attach last: from here on connections are held, and the engine below is ready for them.
    datapath
        .attach(&config.node.interface)
        .map_err(|source| AgentError::Attach {
            interface: config.node.interface.clone(),
            source: Box::new(source),
        })?;
    tracing::info!(node = %config.node.name, interface = %config.node.interface, policy = %config.policy.kind, "baton node running");

    let kernel = kernel::Kernel {
        conns: Box::new(conns),
        inject: Box::new(inject),
        tcp: Box::new(diag),
    };
    let mut engine = Engine::new(config, kernel, mesh, load, metrics);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut confirm_tick = tokio::time::interval(Duration::from_millis(1));
    confirm_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.changed(), if drain_deadline.is_none() => {
                // Graceful stop: nothing new is held or offered here; what is in flight finishes.
                engine.begin_drain();
                let ports = &engine.config().cluster.service_ports;
                let address = engine.config().node.address;
                if let Err(e) = datapath.set_node_config(&baton_bpf::NodeConfig::new(address, ports, false)) {
                    tracing::warn!("stop holding new connections: {e}");
                }
                let timeout = Duration::from_millis(engine.config().limits.drain_timeout_ms);
                drain_deadline = Some(tokio::time::Instant::now() + timeout);
                tracing::info!("draining");
            }
            Some(event) = event_rx.recv() => engine.on_datapath(event),
            Some(event) = mesh_rx.recv() => engine.on_mesh(event),
            _ = confirm_tick.tick(), if engine.confirming() => engine.on_confirm_tick(),
            _ = tick.tick() => {
                engine.on_tick();
                if let Some(deadline) = drain_deadline
                    && (engine.drained() || tokio::time::Instant::now() >= deadline) {
                        break;
                    }
            }
        }
    }
    let _ = tasks_stop_tx.send(true);
    // Detach first so nothing new is held, then serve what is held locally.
    drop(datapath);
    while let Ok(event) = event_rx.try_recv() {
        engine.on_datapath(event);
    }
    engine.release_all();
    tracing::info!("baton node stopped");
    Ok(())
}

async fn read_events(
    mut ring: AsyncFd<EventRing>,
    events: mpsc::Sender<Event>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let mut guard = tokio::select! {
            _ = shutdown.changed() => return,
            ready = ring.readable_mut() => match ready { Ok(g) => g, Err(_) => return },
        };
        let ring = guard.get_inner_mut();
        while let Some(record) = ring.next() {
            match Event::parse(&record) {
                Ok(event) => {
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    metrics.malformed_events.inc();
                    tracing::warn!("datapath event: {e}");
                }
            }
        }
        guard.clear_ready();
    }
}
