//! The control mesh: a persistent, authenticated TCP connection from this node to every peer.
//!
//! Each node dials every peer (one *outbound* connection per peer) and accepts every peer's
//! dial (one *inbound* connection per peer). A node sends all its messages — handoff requests and
//! answers, close notices, heartbeats carrying its load — on its outbound connection; it receives
//! on its inbound ones. Every frame is authenticated with the cluster key (`baton_proto`); a
//! forged, replayed or malformed frame is counted and its connection closed.
//!
//! Contract: the mesh tells the engine [`MeshEvent::PeerUp`] / [`MeshEvent::PeerDown`] for its
//! outbound connections and delivers every authenticated message as [`MeshEvent::Message`]. A
//! message handed to [`MeshSender::send`] while the peer is down waits for the connection to come
//! back, except offers and dispatcher questions older than `MeshConfig::offer_ttl`: those are
//! dropped unsent (their FE has moved on; a late offer must never go live). Dialing retries with
//! exponential backoff (100 ms doubling to 2 s).
//!
//! Members change at a reload ([`MeshSender::set_members`]): a new member gets a dialer; a
//! removed one keeps its dialer (what is under way with it still needs answers) but its new
//! dials in are refused. Indices never change meaning: a removed member's index is `None` in the
//! member table.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_proto::{Event as ProtoEvent, Message, ProtoError, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;

#[derive(Debug)]
pub enum MeshEvent {
    PeerUp { peer: usize },
    PeerDown { peer: usize },
    Message { peer: usize, message: Message },
}

#[derive(Debug, Clone)]
pub struct PeerAddr {
    pub name: String,
    pub addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("bind({addr}) for the control mesh: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A message waiting for its peer's connection, and since when.
type Queued = (Instant, Message);

/// The engine's handle for sending to peers (index = member index; own index unused).
#[derive(Clone)]
pub struct MeshSender {
    outbound: Vec<Option<mpsc::Sender<Queued>>>,
    /// Per peer: the smoothed RTT of the outbound connection in µs as the kernel last said
    /// (TCP_INFO after a write), 0 while unknown.
    rtt_us: Vec<Arc<AtomicU32>>,
    /// What starts a dialer for a member added later (`None` in tests: no tasks).
    dialers: Option<Arc<Dialers>>,
}

/// Everything a dialer task needs, kept to start one for a member added at a reload.
struct Dialers {
    config: Arc<MeshConfig>,
    events: mpsc::Sender<MeshEvent>,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
}

impl Dialers {
    fn spawn(&self, peer: usize, rtt_us: Arc<AtomicU32>) -> mpsc::Sender<Queued> {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(dial_loop(
            peer,
            self.config.clone(),
            rx,
            rtt_us,
            self.events.clone(),
            self.metrics.clone(),
            self.shutdown.clone(),
        ));
        tx
    }
}

impl MeshSender {
    /// A sender over the given per-peer queues (`None` for this node itself); `start` builds the
    /// real one, tests read the queues directly.
    pub fn new(outbound: Vec<Option<mpsc::Sender<Queued>>>) -> Self {
        let rtt_us = outbound.iter().map(|_| Arc::default()).collect();
        MeshSender {
            outbound,
            rtt_us,
            dialers: None,
        }
    }

    /// The members from now on, by index (`None`: not, or no longer, a member; this node's own
    /// index is ignored). New members are dialed; removed ones are let go.
    pub fn set_members(&mut self, members: Vec<Option<PeerAddr>>) {
        let own = self.dialers.as_ref().map(|d| d.config.self_index);
        if let Some(dialers) = &self.dialers {
            *dialers
                .config
                .members
                .write()
                .unwrap_or_else(|e| e.into_inner()) = members.clone();
        }
        for (peer, member) in members.iter().enumerate() {
            if self.outbound.len() <= peer {
                self.outbound.push(None);
                self.rtt_us.push(Arc::default());
            }
            if Some(peer) == own {
                continue;
            }
            // A member without a dialer gets one. A removed member keeps its dialer (until the
            // agent restarts): answers, aborts and close notices about work under way with it
            // must still reach it. The engine sends it nothing new, and its dials in are refused.
            if member.is_some()
                && self.outbound[peer].is_none()
                && let Some(dialers) = &self.dialers
            {
                self.outbound[peer] = Some(dialers.spawn(peer, self.rtt_us[peer].clone()));
            }
        }
    }

    /// The control connection's round-trip time to `peer`, if measured.
    pub fn rtt_us(&self, peer: usize) -> Option<u32> {
        let rtt = self.rtt_us.get(peer)?.load(Ordering::Relaxed);
        (rtt != 0).then_some(rtt)
    }

    /// Queues `message` for `peer`'s outbound connection; false if it had to be dropped.
    pub fn send(&self, peer: usize, message: Message) -> bool {
        match self.outbound.get(peer).and_then(|s| s.as_ref()) {
            Some(tx) => tx.try_send((Instant::now(), message)).is_ok(),
            None => false,
        }
    }
}

pub struct MeshConfig {
    pub self_index: usize,
    pub self_name: String,
    pub listen: SocketAddr,
    /// By index; `None`: removed (see [`MeshSender::set_members`]).
    pub members: std::sync::RwLock<Vec<Option<PeerAddr>>>,
    pub key: Vec<u8>,
    /// Offers and dispatcher questions older than this are dropped unsent.
    pub offer_ttl: Duration,
    /// Dialers refused as unknown, each warned about once.
    pub unknown_dialers: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Longest wait for the peer's side of the session handshake, either way.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

fn nonce() -> [u8; 16] {
    rand::random()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts the listener and one dialer per peer. Returns the sender the engine uses.
pub async fn start(
    config: MeshConfig,
    events: mpsc::Sender<MeshEvent>,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
) -> Result<MeshSender, MeshError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| MeshError::Bind {
            addr: config.listen,
            source,
        })?;
    let config = Arc::new(config);
    tokio::spawn(accept_loop(
        listener,
        config.clone(),
        events.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let members = config
        .members
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut sender = MeshSender::new(Vec::new());
    sender.dialers = Some(Arc::new(Dialers {
        config,
        events,
        metrics,
        shutdown,
    }));
    sender.set_members(members);
    Ok(sender)
}

fn reject(metrics: &Metrics, e: &ProtoError) {
    metrics.mesh_rejected.count(e.kind());
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<MeshConfig>,
    events: mpsc::Sender<MeshEvent>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => { tracing::warn!("accept on the control port: {e}"); continue; }
            },
        };
        tokio::spawn(inbound(
            stream,
            config.clone(),
            events.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }
}

/// One inbound connection: authenticate, then deliver the peer's messages to the engine.
async fn inbound(
    mut stream: TcpStream,
    config: Arc<MeshConfig>,
    events: mpsc::Sender<MeshEvent>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let Ok(mut session) = Session::acceptor(&config.key, &config.self_name, nonce()) else {
        return;
    };
    let mut peer: Option<usize> = None;
    let mut buf = vec![0u8; 64 * 1024];
    // An unauthenticated connection gets as long as a dialer would wait for it, no longer.
    let handshake_deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        let n = tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep_until(handshake_deadline), if peer.is_none() => {
                metrics.mesh_rejected.count("handshake_timeout");
                return;
            }
            read = stream.read(&mut buf) => match read { Ok(0) | Err(_) => return, Ok(n) => n },
        };
        let decoded = match session.feed(&buf[..n]) {
            Ok(decoded) => decoded,
            Err(e) => {
                reject(&metrics, &e);
                tracing::warn!(peer = ?peer, "control connection closed: {e}");
                return;
            }
        };
        for event in decoded {
            match event {
                ProtoEvent::Send(bytes) => {
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                ProtoEvent::Established { peer_name } => {
                    let index = config
                        .members
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .position(|m| m.as_ref().is_some_and(|m| m.name == peer_name));
                    match index {
                        Some(i) if i != config.self_index => peer = Some(i),
                        _ => {
                            metrics.mesh_rejected.count("unknown_peer");
                            // Once per name: it redials every 2 s.
                            let first = config
                                .unknown_dialers
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(peer_name.clone());
                            if first {
                                tracing::warn!(
                                    "control connection from {peer_name:?}, which is not among \
                                     cluster.members here: refused (add it here and reload, or \
                                     remove it there)"
                                );
                            }
                            return;
                        }
                    }
                }
                ProtoEvent::Message(message) => {
                    let Some(peer) = peer else { return };
                    if events
                        .send(MeshEvent::Message { peer, message })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                ProtoEvent::Ignored { kind } => {
                    tracing::debug!("ignoring control message kind {kind}")
                }
            }
        }
    }
}

/// Keeps one outbound connection to `peer` alive and writes the engine's messages to it.
async fn dial_loop(
    peer: usize,
    config: Arc<MeshConfig>,
    mut outgoing: mpsc::Receiver<Queued>,
    rtt_us: Arc<AtomicU32>,
    events: mpsc::Sender<MeshEvent>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let member = |config: &MeshConfig| {
        config
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .cloned()
            .flatten()
    };
    let Some(PeerAddr { name, addr: target }) = member(&config) else {
        return;
    };
    let mut backoff = Duration::from_millis(100);
    // Said at warn when it first happens or changes, then at debug: a peer that is down is
    // redialed every 2 s.
    let mut last_failure: Option<String> = None;
    loop {
        // Removed from the cluster: the engine dropped our queue.
        if *shutdown.borrow() || outgoing.is_closed() {
            return;
        }
        match connect(&config, target).await {
            Ok((stream, session)) => {
                backoff = Duration::from_millis(100);
                last_failure = None;
                let _ = events.send(MeshEvent::PeerUp { peer }).await;
                let why = serve_outbound(
                    stream,
                    session,
                    &config,
                    &mut outgoing,
                    &rtt_us,
                    &metrics,
                    &mut shutdown,
                )
                .await;
                let _ = events.send(MeshEvent::PeerDown { peer }).await;
                tracing::info!(peer = %name, "control connection down: {why}");
            }
            Err(e) if last_failure.as_deref() == Some(e.as_str()) => {
                tracing::debug!(peer = %name, "dial failed: {e}")
            }
            Err(e) => {
                let hint = if e.contains("handshake") || e.contains("closed") {
                    " (is this node among its cluster.members, with the same key?)"
                } else {
                    ""
                };
                tracing::warn!(peer = %name, "control connection: dial failed: {e}{hint}; retrying");
                last_failure = Some(e);
            }
        }
        // What was queued while down stays queued: aborts and close notices are still due, and a
        // late answer to a handoff the FE gave up on is answered with an abort.
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn connect(config: &MeshConfig, target: SocketAddr) -> Result<(TcpStream, Session), String> {
    let mut stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(target))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut session, hello) =
        Session::dialer(&config.key, &config.self_name, nonce()).map_err(|e| e.to_string())?;
    stream
        .write_all(&hello)
        .await
        .map_err(|e| format!("write hello: {e}"))?;
    let mut buf = vec![0u8; 4096];
    let handshake = async {
        loop {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed during handshake".to_string());
            }
            for event in session.feed(&buf[..n]).map_err(|e| e.to_string())? {
                if let ProtoEvent::Established { .. } = event {
                    return Ok(());
                }
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| "handshake timed out".to_string())??;
    Ok((stream, session))
}

async fn serve_outbound(
    mut stream: TcpStream,
    mut session: Session,
    config: &MeshConfig,
    outgoing: &mut mpsc::Receiver<Queued>,
    rtt_us: &AtomicU32,
    metrics: &Metrics,
    shutdown: &mut watch::Receiver<bool>,
) -> String {
    let mut buf = vec![0u8; 4096];
    let mut frames = Vec::new();
    let mut rtt_sampled: Option<Instant> = None;
    loop {
        let first = tokio::select! {
            _ = shutdown.changed() => return "shutdown".into(),
            m = outgoing.recv() => match m {
                Some(queued) => queued,
                None => return "engine gone".into(),
            },
            read = stream.read(&mut buf) => match read {
                Ok(0) => return "closed by peer".into(),
                Err(e) => return format!("read: {e}"),
                // The acceptor side sends nothing after its HelloAck; anything else is suspect.
                Ok(n) => match session.feed(&buf[..n]) {
                    Ok(_) => continue,
                    Err(e) => { reject(metrics, &e); return format!("rejected frame: {e}"); }
                },
            },
        };
        // Whatever else is queued goes in the same write: one syscall (and one wakeup of the
        // peer) for a burst of messages.
        frames.clear();
        let mut next = Some(first);
        while let Some((queued, message)) = next {
            if !(is_offer(&message) && queued.elapsed() > config.offer_ttl) {
                match session.encode(&message) {
                    Ok(frame) => frames.extend_from_slice(&frame),
                    Err(e) => return format!("encode: {e}"),
                }
            }
            next = outgoing.try_recv().ok();
        }
        if let Err(e) = stream.write_all(&frames).await {
            return format!("write: {e}");
        }
        // The RTT is a gauge read every heartbeat: sampled now and then, not at every write.
        if rtt_sampled.is_none_or(|at| at.elapsed() >= RTT_SAMPLE_EVERY)
            && let Some(rtt) = smoothed_rtt_us(&stream)
        {
            rtt_us.store(rtt.max(1), Ordering::Relaxed);
            rtt_sampled = Some(Instant::now());
        }
    }
}

/// How often a control connection's RTT is read from the kernel (it is exported every
/// heartbeat; a `getsockopt` after every write would cost a syscall per burst of messages).
const RTT_SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The kernel's smoothed RTT of `stream` (`tcpi_rtt` of TCP_INFO), in µs.
fn smoothed_rtt_us(stream: &TcpStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: all-zero is a valid tcp_info (integers only).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which we own; the fd is the
    // stream's, open for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info.tcpi_rtt)
}

/// Messages that must not arrive late: an offer could go live after its FE served the connection
/// itself, a dispatcher's answer would come after the fallback decided.
fn is_offer(message: &Message) -> bool {
    matches!(
        message,
        Message::HandoffRequest(_) | Message::DispatchQuery { .. }
    )
}

/// The member list as mesh addresses.
pub fn peer_addrs(members: &[(String, Ipv4Addr)], port: u16) -> Vec<PeerAddr> {
    members
        .iter()
        .map(|(name, ip)| PeerAddr {
            name: name.clone(),
            addr: SocketAddr::new((*ip).into(), port),
        })
        .collect()
}
