//! The handoff engine: the single owner of every connection's agent-side state.
//!
//! It owns the datapath's conn table, the held connections (FE), the handed-in connections (BE),
//! the router (content rules and policy) and the view of the cluster, and reacts to three inputs: datapath events (held
//! packets, the BE server's SYN-ACK, closes), control messages from peers, and a clock tick.
//!
//! FE (DESIGN §3 steps 2-5, 7): held packets are reassembled into the client's byte stream until
//! the request head is complete; the policy picks a node; the connection is either released
//! locally (entry deleted, held packets replayed into the local TCP) or offered to the chosen peer.
//! On acceptance the entry turns to forwarding, the local half-open connection is reset, and the
//! held bytes are sent on to the BE. Refusal, timeout, a peer going down, a malformed or oversized
//! head, too many segments or too long a hold all end in local release: nothing is lost.
//!
//! BE (steps 6, 8, 9): a handoff request becomes a translating entry and a replayed SYN; the local
//! server's SYN-ACK (caught by the datapath) gives the sequence and timestamp offsets, the options
//! are checked against the FE's, the ACK is replayed translated, and once the local TCP reports the
//! connection established the FE is told. Closes the datapath sees are confirmed with the local
//! TCP, then reported to the FE; every entry is removed after a linger (or, at the FE, an idle
//! timeout).

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use baton_bpf::{Conn, ConnKey, ConnRole, ConnState, Event, EventKind, conn_flags};
use baton_http::{Limits as HeadLimits, Sniff};
use baton_policy::{
    BoundedHash, ClusterView, NodeState, Policy, PolicyKind, RequestInfo, RoutedRequest, Router,
};
use baton_proto::{HandoffRequest, Message, RefuseReason};
use baton_wire::{
    SynOptions, TcpFlags, TcpPacketBuilder, Translation, parse_options, rewrite_dst_addr,
    translate_to_server,
};

use crate::config::NodeConfig;
use crate::hold::StreamAssembler;
use crate::kernel::{ConnTableOps, Insert, Kernel, PacketSink, TcpStates};
use crate::mesh::{MeshEvent, MeshSender};
use crate::metrics::{Metrics, Reason};
use crate::sockdiag;

/// How much of a held connection's stream the FE keeps (bytes beyond are retransmitted by the client).
const STREAM_CAPACITY: usize = 64 * 1024;
/// Largest payload of one replayed packet into the local stack (the loopback MTU is 64 KiB).
const LOCAL_CHUNK: usize = 32 * 1024;
/// Largest IPv4 packet sent on the cluster network.
const WIRE_MTU: usize = 1500;
/// How long late held packets keep following a released connection.
const RELEASED_MEMORY: Duration = Duration::from_secs(5);
/// How often this node counts its load (and so how fresh its heartbeats are).
const LOAD_REFRESH: Duration = Duration::from_millis(100);
/// A load change larger than this (or a quarter of the last report) is reported at once.
const BIG_LOAD_CHANGE: u32 = 8;
/// How long the BE waits for its TCP to establish a replayed handshake.
const CONFIRM_WAIT: Duration = Duration::from_millis(200);
/// A BE connection idle this long is checked against the local TCP (is it still there?).
const BE_LIVENESS_CHECK_NS: u64 = 5_000_000_000;
/// An FE entry whose handshake never completed (SYN flood, lost ACK) goes after this.
const SYN_ENTRY_TTL_NS: u64 = 10_000_000_000;

/// Monotonic clock in ns, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Peer {
    name: String,
    addr: Ipv4Addr,
    outbound_up: bool,
    last_heard: Option<Instant>,
    load: u32,
    /// It said it is stopping: it takes nothing new.
    draining: bool,
}

/// FE: a connection held while the agent decides.
struct Held {
    entry: Conn,
    stream: StreamAssembler,
    /// The client's pure handshake ACK, replayed first.
    handshake_ack: Option<Vec<u8>>,
    /// Headers of the latest client segment: the template for replayed data segments.
    template: Option<TcpPacketBuilder>,
    segments: usize,
    deadline: Instant,
    /// A question to the LARD dispatcher, while it is out.
    dispatch: Option<Dispatch>,
    awaiting: Option<Awaiting>,
}

struct Dispatch {
    id: u64,
    target: String,
    deadline: Instant,
}

struct Awaiting {
    peer: usize,
    id: u64,
    deadline: Instant,
}

/// Where late held packets of a connection already decided go.
enum Released {
    Local,
    Remote(Ipv4Addr),
}

/// A connection's identity over time: a client that reuses its port makes a new connection on the
/// same key, told apart by its ISN. Deferred work (lingers, late packets) names both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ConnId {
    key: ConnKey,
    client_isn: u32,
}

/// BE: a connection handed in by a peer.
struct Inbound {
    key: ConnKey,
    peer: usize,
    id: u64,
    client_isn: u32,
    fe_isn: u32,
    fe_tsval: u32,
    fe_options: SynOptions,
    ack: Vec<u8>,
    phase: InboundPhase,
}

enum InboundPhase {
    /// The SYN is replayed; the local server's SYN-ACK is awaited.
    AwaitingSynAck { deadline: Instant },
    /// The ACK is replayed; the local TCP must report the connection established before the FE
    /// is told to commit (a failed replay then ends in a refusal, not in a lost request).
    Confirming { deadline: Instant },
    /// The FE was told; the datapath translates.
    Accepted,
}

pub struct Engine {
    config: NodeConfig,
    me: usize,
    my_addr: Ipv4Addr,
    conns: Box<dyn ConnTableOps>,
    inject: Box<dyn PacketSink>,
    diag: Box<dyn TcpStates>,
    router: Router,
    /// Whether the default policy keeps one table for the cluster at a dispatcher (LARD).
    dispatching: bool,
    /// This node is stopping gracefully.
    draining: bool,
    /// What decides when the dispatcher does not answer in time.
    fallback: BoundedHash,
    /// Dispatcher questions out: id -> held connection.
    dispatching_ids: HashMap<u64, ConnKey>,
    peers: Vec<Peer>,
    mesh: MeshSender,
    load: Arc<AtomicU32>,
    metrics: Metrics,
    head_limits: HeadLimits,
    held: HashMap<ConnKey, Held>,
    released: HashMap<ConnKey, (Released, u32, Instant)>,
    /// FE: handoff id -> connection offered to a peer, until it answers or times out.
    pending: HashMap<u64, ConnKey>,
    /// FE: handoff id -> (BE, connection) for connections handed out, until closed.
    outbound: HashMap<u64, (usize, ConnId)>,
    /// BE: (peer, id) -> connection handed in.
    inbound: HashMap<(usize, u64), Inbound>,
    inbound_by_key: HashMap<ConnKey, (usize, u64)>,
    /// BE: handoffs whose replayed handshake awaits the local TCP (a superset: stale slots are
    /// dropped when next looked at).
    confirming: HashSet<(usize, u64)>,
    /// Entries to remove once their linger ends.
    expiries: Vec<(Instant, ConnId)>,
    /// BE: connections the datapath saw close, to confirm with the local TCP after a linger.
    closing: Vec<(Instant, ConnId)>,
    next_id: u64,
    last_gc: Instant,
    /// The origin of the policies' clock (`ClusterView::now_ms`).
    started: Instant,
    /// When this node's load was last counted.
    load_counted: Instant,
}

impl Engine {
    pub fn new(
        config: NodeConfig,
        kernel: Kernel,
        mesh: MeshSender,
        load: Arc<AtomicU32>,
        metrics: Metrics,
    ) -> Self {
        let me = config.self_index();
        let peers = config
            .cluster
            .members
            .iter()
            .map(|m| Peer {
                name: m.name.clone(),
                addr: m.address,
                outbound_up: false,
                last_heard: None,
                load: 0,
                draining: false,
            })
            .collect();
        let head_limits = HeadLimits {
            max_head_bytes: config.limits.head_bytes,
            ..HeadLimits::default()
        };
        Engine {
            me,
            my_addr: config.node.address,
            router: Router::new(
                config.policy.kind,
                &config.policy.params,
                &config.policy.rules,
                config.policy.affinity_cookie.clone(),
            ),
            dispatching: matches!(config.policy.kind, PolicyKind::Lard | PolicyKind::LardR),
            draining: false,
            fallback: BoundedHash::new(config.policy.params.balance_factor),
            dispatching_ids: HashMap::new(),
            config,
            conns: kernel.conns,
            inject: kernel.inject,
            diag: kernel.tcp,
            peers,
            mesh,
            load,
            metrics,
            head_limits,
            held: HashMap::new(),
            released: HashMap::new(),
            pending: HashMap::new(),
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            inbound_by_key: HashMap::new(),
            confirming: HashSet::new(),
            expiries: Vec::new(),
            closing: Vec::new(),
            // Ids are unique per FE; the high bits keep two restarts of one node apart.
            next_id: (u64::from(rand::random::<u32>()) << 32) | 1,
            last_gc: Instant::now(),
            started: Instant::now(),
            load_counted: Instant::now(),
        }
    }

    fn peer_up(&self, peer: usize, now: Instant) -> bool {
        if peer == self.me {
            return true;
        }
        let p = &self.peers[peer];
        if p.draining {
            return false;
        }
        let fresh = self.config.limits.heartbeat_ms.saturating_mul(5).max(500);
        p.outbound_up
            && p.last_heard
                .is_some_and(|t| now.duration_since(t) < Duration::from_millis(fresh))
    }

    // ----- inputs -------------------------------------------------------------------------

    pub fn on_datapath(&mut self, event: Event) {
        match event.kind {
            EventKind::HeldPacket => self.on_held_packet(event),
            EventKind::BeSynAck => self.on_be_synack(event),
            EventKind::Closed => self.on_closed(event.key),
        }
    }

    pub fn on_mesh(&mut self, event: MeshEvent) {
        let now = Instant::now();
        match event {
            MeshEvent::PeerUp { peer } => {
                // A (re)connected peer is a fresh agent.
                self.peers[peer].outbound_up = true;
                self.peers[peer].draining = false;
            }
            MeshEvent::PeerDown { peer } => {
                self.peers[peer].outbound_up = false;
                let stranded: Vec<ConnKey> = self
                    .held
                    .iter()
                    .filter(|(_, h)| h.awaiting.as_ref().is_some_and(|a| a.peer == peer))
                    .map(|(k, _)| *k)
                    .collect();
                for key in stranded {
                    self.release_local(key, "peer_down");
                }
            }
            MeshEvent::Message { peer, message } => {
                self.peers[peer].last_heard = Some(now);
                self.on_message(peer, message);
            }
        }
        self.metrics.peers_up.set(
            (0..self.peers.len())
                .filter(|&p| p != self.me && self.peer_up(p, now))
                .count() as i64,
        );
    }

    fn on_message(&mut self, peer: usize, message: Message) {
        match message {
            Message::Heartbeat { load, .. } => self.peers[peer].load = load,
            Message::HandoffRequest(request) => {
                let id = request.id;
                if let Err(reason) = self.on_handoff_request(peer, request) {
                    self.metrics
                        .refused
                        .get_or_create(&Reason::new(refuse_label(reason)))
                        .inc();
                    self.mesh.send(peer, Message::HandoffRefused { id, reason });
                }
            }
            Message::HandoffAccepted { id } => self.on_accepted(peer, id),
            Message::DispatchQuery { id, target } => self.on_dispatch_query(peer, id, &target),
            Message::Draining => {
                self.peers[peer].draining = true;
                tracing::info!(peer = %self.peers[peer].name, "peer is draining");
            }
            Message::DispatchAnswer { id, node } => self.on_dispatch_answer(peer, id, node),
            Message::HandoffRefused { id, reason } => {
                if self.awaiting_peer(id) == Some(peer)
                    && let Some(key) = self.pending.remove(&id)
                {
                    self.release_local(key, &format!("refused_{}", refuse_label(reason)));
                }
            }
            Message::HandoffAbort { id } => {
                if let Some(inbound) = self.inbound.remove(&(peer, id)) {
                    self.inbound_by_key.remove(&inbound.key);
                    self.reset_local(&inbound.key, inbound.client_isn);
                    self.conns.remove(&inbound.key);
                }
            }
            Message::ConnClosed { id } => {
                if self.outbound.get(&id).is_some_and(|(to, _)| *to == peer)
                    && let Some((_, conn)) = self.outbound.remove(&id)
                {
                    self.expire_later(conn);
                }
            }
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Whether a replayed handshake awaits confirmation (the caller then ticks faster).
    pub fn confirming(&self) -> bool {
        !self.confirming.is_empty()
    }

    /// Called every millisecond while [`Engine::confirming`]: the local TCP usually takes the
    /// replayed ACK within the injecting call, but under load the kernel defers it to ksoftirqd.
    pub fn on_confirm_tick(&mut self) {
        let confirming: Vec<(usize, u64)> = self.confirming.iter().copied().collect();
        for slot in confirming {
            self.confirm_inbound(slot);
        }
    }

    /// Called on every tick (tens of ms): hold and handoff deadlines, lingers, periodic GC.
    pub fn on_tick(&mut self) {
        let now = Instant::now();
        let mut timed_out = Vec::new();
        let mut hold_expired = Vec::new();
        let mut dispatch_late = Vec::new();
        for (key, held) in &self.held {
            match (&held.awaiting, &held.dispatch) {
                (Some(a), _) if a.deadline <= now => timed_out.push((*key, a.peer, a.id)),
                (None, Some(d)) if d.deadline <= now => dispatch_late.push(*key),
                (None, None) if held.deadline <= now => hold_expired.push(*key),
                _ => {}
            }
        }
        for key in dispatch_late {
            self.dispatch_timed_out(key);
        }
        for (key, peer, id) in timed_out {
            self.mesh.send(peer, Message::HandoffAbort { id });
            self.pending.remove(&id);
            self.release_local(key, "timeout");
        }
        for key in hold_expired {
            self.release_local(key, "hold_timeout");
        }
        self.on_confirm_tick();
        let stale: Vec<(usize, u64)> = self
            .inbound
            .iter()
            .filter(|(_, i)| matches!(i.phase, InboundPhase::AwaitingSynAck { deadline } if deadline <= now))
            .map(|(k, _)| *k)
            .collect();
        for slot in stale {
            self.refuse_inbound(slot, RefuseReason::Timeout, true);
        }
        for conn in take_due(&mut self.expiries, now) {
            self.forget(conn);
        }
        for conn in take_due(&mut self.closing, now) {
            self.confirm_closed(conn);
        }
        self.released.retain(|_, (_, _, until)| *until > now);
        if now.duration_since(self.last_gc) >= Duration::from_secs(1) {
            self.last_gc = now;
            self.collect_garbage();
        }
        if now.duration_since(self.load_counted) >= LOAD_REFRESH {
            self.load_counted = now;
            self.count_load();
        }
        self.metrics.held.set(self.held.len() as i64);
        self.metrics.handed_in_active.set(self.inbound.len() as i64);
    }

    /// This node's load: the connections its TCP serves (local and handed in), as the policies
    /// see it here and as the heartbeats report it to the peers.
    fn count_load(&mut self) {
        match self.diag.established(&self.config.cluster.service_ports) {
            Ok(count) => {
                self.peers[self.me].load = count;
                let reported = self.load.swap(count, Ordering::Relaxed);
                self.metrics.load.set(i64::from(count));
                // A big change is told at once rather than at the next heartbeat.
                if count.abs_diff(reported) > BIG_LOAD_CHANGE.max(reported / 4) {
                    let sent_at_ms = crate::mesh::now_ms();
                    for peer in (0..self.peers.len()).filter(|&p| p != self.me) {
                        self.mesh.send(
                            peer,
                            Message::Heartbeat {
                                load: count,
                                sent_at_ms,
                            },
                        );
                    }
                }
            }
            Err(e) => {
                // No fresh count: fall back to the last one rather than let the bumps pile up.
                self.peers[self.me].load = self.load.load(Ordering::Relaxed);
                tracing::warn!("sock_diag: {e}");
            }
        }
    }

    /// Shutdown: every held connection is served locally, so none is lost.
    pub fn release_all(&mut self) {
        let keys: Vec<ConnKey> = self.held.keys().copied().collect();
        for key in keys {
            if let Some(a) = self.held.get(&key).and_then(|h| h.awaiting.as_ref()) {
                self.mesh.send(a.peer, Message::HandoffAbort { id: a.id });
            }
            self.release_local(key, "shutdown");
        }
    }

    // ----- FE -----------------------------------------------------------------------------

    fn on_held_packet(&mut self, event: Event) {
        let key = event.key;
        if let Some((released, isn, _)) = self.released.get(&key) {
            // A held entry with another ISN is a new connection on a reused port, not a late packet.
            let new_connection = self.conns.get(&key).is_some_and(|e| e.client_isn != *isn);
            if !new_connection {
                let mut packet = event.packet;
                fill_checksums(&mut packet);
                if let Released::Remote(be) = released
                    && rewrite_dst_addr(&mut packet, *be).is_err()
                {
                    return;
                }
                self.send(&packet);
                return;
            }
            self.released.remove(&key);
        }
        let Some(segment) = parse_captured(&event.packet, event.pkt_len) else {
            self.metrics.malformed_events.inc();
            return;
        };
        // Captured below the stack, a packet may carry a partial (offload) checksum: whatever is
        // replayed from it must carry a full one.
        let mut event = event;
        fill_checksums(&mut event.packet);
        if segment.flags.contains(TcpFlags::RST) {
            // The datapath already forgot the entry and let the RST end our half-open side.
            if let Some(held) = self.held.remove(&key)
                && let Some(a) = held.awaiting
            {
                self.pending.remove(&a.id);
                self.mesh.send(a.peer, Message::HandoffAbort { id: a.id });
            }
            return;
        }
        if !self.held.contains_key(&key) {
            let entry = match self.conns.get(&key) {
                Some(entry) if entry.state() == Some(ConnState::FeHold) => entry,
                _ => {
                    // No hold on record (entry expired or removed): the local TCP takes it.
                    self.send(&event.packet);
                    return;
                }
            };
            let stream = StreamAssembler::new(entry.client_isn.wrapping_add(1), STREAM_CAPACITY);
            let deadline = Instant::now() + Duration::from_millis(self.config.limits.hold_ms);
            self.held.insert(
                key,
                Held {
                    entry,
                    stream,
                    handshake_ack: None,
                    template: None,
                    segments: 0,
                    deadline,
                    dispatch: None,
                    awaiting: None,
                },
            );
        }
        let Some(held) = self.held.get_mut(&key) else {
            return;
        };
        if segment.flags.contains(TcpFlags::SYN) {
            return;
        }
        let is_handshake_ack = segment.payload.is_empty()
            && !segment.flags.contains(TcpFlags::FIN)
            && segment.seq == held.entry.client_isn.wrapping_add(1)
            && segment.ack == held.entry.local_isn.wrapping_add(1);
        if is_handshake_ack
            && held.handshake_ack.is_none()
            && event.packet.len() == event.pkt_len as usize
        {
            held.handshake_ack = Some(event.packet.clone());
        }
        held.stream.add(
            segment.seq,
            &segment.payload,
            segment.flags.contains(TcpFlags::FIN),
        );
        held.segments += 1;
        let mut template = segment;
        template.payload.clear();
        held.template = Some(template);
        if held.awaiting.is_none() && held.dispatch.is_none() {
            self.try_decide(key);
        }
    }

    fn try_decide(&mut self, key: ConnKey) {
        let Some(held) = self.held.get(&key) else {
            return;
        };
        let head = match baton_http::sniff(held.stream.contiguous(), &self.head_limits) {
            Sniff::Complete(head) => head,
            Sniff::Invalid(reason) => return self.release_local(key, reason.as_str()),
            Sniff::Incomplete => {
                if held.stream.finished() {
                    return self.release_local(key, "incomplete_head");
                }
                if held.segments >= self.config.limits.hold_segments {
                    return self.release_local(key, "too_many_segments");
                }
                return;
            }
        };
        let nodes = self.node_states();
        let view = self.view(&nodes);
        let request = RequestInfo {
            method: &head.method,
            target: &head.target,
            host: head.host.as_deref(),
        };
        let routed = RoutedRequest {
            info: request,
            cookies: &head.cookies,
        };
        if let Some(choice) = self.router.route_fixed(&routed, &view) {
            return self.decide(key, choice);
        }
        let dispatcher = self.dispatcher();
        if self.dispatching && dispatcher != self.me {
            // LARD keeps one table for the cluster, at the dispatcher: ask it.
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            let query = Message::DispatchQuery {
                id,
                target: head.target.clone(),
            };
            if self.mesh.send(dispatcher, query) {
                let deadline =
                    Instant::now() + Duration::from_millis(self.config.limits.dispatch_timeout_ms);
                if let Some(held) = self.held.get_mut(&key) {
                    held.dispatch = Some(Dispatch {
                        id,
                        target: head.target.clone(),
                        deadline,
                    });
                }
                self.dispatching_ids.insert(id, key);
                return;
            }
            let choice = self.fallback.choose(&request, &view);
            self.metrics.dispatch_fallbacks.inc();
            return self.decide(key, choice);
        }
        let choice = self.router.choose_default(&request, &view);
        self.decide(key, choice)
    }

    /// The cluster as the policies see it from here, now.
    fn node_states(&self) -> Vec<NodeState> {
        let now = Instant::now();
        (0..self.peers.len())
            .map(|i| NodeState {
                name: self.peers[i].name.clone(),
                up: self.peer_up(i, now),
                load: self.peers[i].load,
            })
            .collect()
    }

    fn view<'a>(&self, nodes: &'a [NodeState]) -> ClusterView<'a> {
        ClusterView {
            self_index: self.me,
            nodes,
            now_ms: self.started.elapsed().as_millis() as u64,
        }
    }

    /// The node that keeps the cluster's LARD table: the first live member in configuration
    /// order, so every node agrees without an election, and the next one takes over when it dies
    /// or drains.
    fn dispatcher(&self) -> usize {
        let now = Instant::now();
        (0..self.peers.len())
            .find(|&i| self.peer_up(i, now) && !(i == self.me && self.draining))
            .unwrap_or(self.me)
    }

    /// Starts a graceful stop: peers are told to choose this node for nothing new (the caller
    /// also stops the datapath from holding new connections). What is in flight goes on.
    pub fn begin_drain(&mut self) {
        self.draining = true;
        for peer in (0..self.peers.len()).filter(|&p| p != self.me) {
            self.mesh.send(peer, Message::Draining);
        }
    }

    /// Whether nothing of this node's is in flight any more: no held connection, no handoff
    /// pending, no connection handed in or forwarded out still open.
    pub fn drained(&self) -> bool {
        self.held.is_empty()
            && self.pending.is_empty()
            && self.inbound.is_empty()
            && self.outbound.is_empty()
    }

    /// Serves a held connection at `choice`: locally, or offered to that peer.
    fn decide(&mut self, key: ConnKey, choice: usize) {
        let now = Instant::now();
        if choice == self.me || choice >= self.peers.len() {
            return self.release_local(key, "policy");
        }
        if !self.peer_up(choice, now) {
            return self.release_local(key, "peer_down");
        }
        let Some(request) = self.handoff_request(&key) else {
            return self.release_local(key, "internal");
        };
        let id = request.id;
        if !self.mesh.send(choice, Message::HandoffRequest(request)) {
            return self.release_local(key, "peer_down");
        }
        let timeout = Duration::from_millis(self.config.limits.handoff_timeout_ms);
        if let Some(held) = self.held.get_mut(&key) {
            held.awaiting = Some(Awaiting {
                peer: choice,
                id,
                deadline: now + timeout,
            });
        }
        self.pending.insert(id, key);
        // Count the assignment at once: until the next report, a burst must not all land on the
        // node that looked idlest. (A handoff that fails moves the count to this node.)
        self.peers[choice].load = self.peers[choice].load.saturating_add(1);
    }

    /// The dispatcher's answer for a held connection.
    fn on_dispatch_answer(&mut self, peer: usize, id: u64, node: u16) {
        let Some(key) = self.dispatching_ids.get(&id).copied() else {
            return; // too late: the fallback decided already
        };
        if peer != self.dispatcher() {
            return;
        }
        self.dispatching_ids.remove(&id);
        if let Some(held) = self.held.get_mut(&key) {
            held.dispatch = None;
        }
        self.decide(key, usize::from(node));
    }

    /// As the dispatcher: decide for a peer with the cluster's one LARD table.
    fn on_dispatch_query(&mut self, peer: usize, id: u64, target: &str) {
        let nodes = self.node_states();
        let view = self.view(&nodes);
        let request = RequestInfo {
            method: "GET",
            target,
            host: None,
        };
        let choice = self.router.choose_default(&request, &view);
        if let Some(chosen) = self.peers.get_mut(choice) {
            chosen.load = chosen.load.saturating_add(1);
        }
        self.metrics.dispatch_answers.inc();
        let node = u16::try_from(choice).unwrap_or(u16::MAX);
        self.mesh.send(peer, Message::DispatchAnswer { id, node });
    }

    /// A dispatcher that did not answer in time: decide with bounded-load hashing instead.
    fn dispatch_timed_out(&mut self, key: ConnKey) {
        let Some(dispatch) = self.held.get_mut(&key).and_then(|h| h.dispatch.take()) else {
            return;
        };
        self.dispatching_ids.remove(&dispatch.id);
        let nodes = self.node_states();
        let view = self.view(&nodes);
        let request = RequestInfo {
            method: "GET",
            target: &dispatch.target,
            host: None,
        };
        let choice = self.fallback.choose(&request, &view);
        self.metrics.dispatch_fallbacks.inc();
        self.decide(key, choice);
    }

    /// The handoff request for a held connection: its SYN and handshake ACK rebuilt from what the
    /// datapath recorded, our ISN, SYN-ACK options and current timestamp clock.
    fn handoff_request(&mut self, key: &ConnKey) -> Option<HandoffRequest> {
        let held = self.held.get(key)?;
        let e = &held.entry;
        let (client, local) = (key.client(), key.local());
        let mut syn = TcpPacketBuilder::new(*client.ip(), client.port(), *local.ip(), local.port());
        syn.seq = e.client_isn;
        syn.flags = TcpFlags::SYN;
        syn.window = e.syn_window;
        syn.options = parse_options(e.syn_options()).ok()?;
        let ack = match &held.handshake_ack {
            Some(ack) => ack.clone(),
            None => {
                let mut ack = held.template.clone()?;
                ack.seq = e.client_isn.wrapping_add(1);
                ack.ack = e.local_isn.wrapping_add(1);
                ack.flags = TcpFlags::ACK;
                ack.payload.clear();
                ack.try_build().ok()?
            }
        };
        // The client echoes the TSval of the SYN-ACK it accepted: the BE's clock is translated to
        // continue from there, so the client's PAWS check never sees time run backwards and the
        // BE sees its own SYN-ACK's TSval echoed (Linux rejects a handshake ACK whose TSecr is
        // outside the TSvals its SYN-ACKs carried).
        let fe_tsval = TcpPacketBuilder::parse(&ack)
            .ok()
            .and_then(|a| echoed_tsval(&a))
            .unwrap_or(0);
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        Some(HandoffRequest {
            id,
            client,
            fe_service: local,
            fe_isn: e.local_isn,
            fe_tsval,
            fe_synack_options: e.synack_options().to_vec(),
            syn: syn.try_build().ok()?,
            ack,
        })
    }

    /// The peer a pending handoff was offered to.
    fn awaiting_peer(&self, id: u64) -> Option<usize> {
        let held = self.held.get(self.pending.get(&id)?)?;
        held.awaiting
            .as_ref()
            .filter(|a| a.id == id)
            .map(|a| a.peer)
    }

    fn on_accepted(&mut self, peer: usize, id: u64) {
        if self.awaiting_peer(id) != Some(peer) {
            // We gave up on it already (timeout, client reset), or it is not this peer's to
            // accept: the sender must drop its side.
            self.mesh.send(peer, Message::HandoffAbort { id });
            return;
        }
        let Some(key) = self.pending.remove(&id) else {
            return;
        };
        let Some(held) = self.held.remove(&key) else {
            return;
        };
        let be = self.peers[peer].addr;
        // Only a connection still held may switch; a client RST may have just removed it. BPF_EXIST
        // makes a removal that races with this update win.
        let entry = self.conns.get(&key).filter(|e| {
            e.state() == Some(ConnState::FeHold) && e.client_isn == held.entry.client_isn
        });
        let Some(mut entry) = entry else {
            self.mesh.send(peer, Message::HandoffAbort { id });
            return;
        };
        entry.state = ConnState::FeForward as u8;
        entry.peer_addr = be.octets();
        if let Err(e) = self.conns.insert(key, entry, Insert::Existing) {
            tracing::info!(%key, "connection gone before forwarding: {e}");
            self.mesh.send(peer, Message::HandoffAbort { id });
            return;
        }
        // Our own TCP still has the half-open connection: a RST only it sees ends it quietly.
        self.reset_local(&key, held.entry.client_isn);
        // The BE has the handshake; the request bytes follow as the client's own segments.
        for packet in replay_segments(&held, be, WIRE_MTU) {
            self.send(&packet);
        }
        let client_isn = held.entry.client_isn;
        self.released.insert(
            key,
            (
                Released::Remote(be),
                client_isn,
                Instant::now() + RELEASED_MEMORY,
            ),
        );
        self.outbound.insert(id, (peer, ConnId { key, client_isn }));
        self.metrics.handoffs_out.inc();
    }

    /// Serves a held connection locally: forget the entry, replay what was held into our TCP.
    fn release_local(&mut self, key: ConnKey, reason: &str) {
        let Some(held) = self.held.remove(&key) else {
            return;
        };
        if let Some(a) = &held.awaiting {
            self.pending.remove(&a.id);
            self.peers[a.peer].load = self.peers[a.peer].load.saturating_sub(1);
        }
        if let Some(d) = &held.dispatch {
            self.dispatching_ids.remove(&d.id);
        }
        self.peers[self.me].load = self.peers[self.me].load.saturating_add(1);
        self.conns.remove(&key);
        if let Some(ack) = &held.handshake_ack {
            self.send(ack);
        }
        for packet in replay_segments(&held, *key.local().ip(), LOCAL_CHUNK + 100) {
            self.send(&packet);
        }
        self.released.insert(
            key,
            (
                Released::Local,
                held.entry.client_isn,
                Instant::now() + RELEASED_MEMORY,
            ),
        );
        self.metrics.local.inc();
        if reason != "policy" {
            self.metrics
                .fallbacks
                .get_or_create(&Reason::new(reason))
                .inc();
            tracing::debug!(%key, reason, "served locally");
        }
    }

    // ----- BE -----------------------------------------------------------------------------

    fn on_handoff_request(&mut self, peer: usize, r: HandoffRequest) -> Result<(), RefuseReason> {
        if self.draining {
            return Err(RefuseReason::Overloaded);
        }
        if *r.fe_service.ip() != self.peers[peer].addr
            || !self
                .config
                .cluster
                .service_ports
                .contains(&r.fe_service.port())
        {
            return Err(RefuseReason::Malformed);
        }
        let fe_options =
            SynOptions::parse(&r.fe_synack_options).map_err(|_| RefuseReason::Malformed)?;
        let syn_fields = TcpPacketBuilder::parse(&r.syn).map_err(|_| RefuseReason::Malformed)?;
        if !syn_fields.flags.contains(TcpFlags::SYN)
            || syn_fields.src != *r.client.ip()
            || syn_fields.src_port != r.client.port()
        {
            return Err(RefuseReason::Malformed);
        }
        let key = ConnKey::new(
            r.client,
            SocketAddrV4::new(self.my_addr, r.fe_service.port()),
        );
        if let Some(slot) = self.inbound_by_key.get(&key).copied() {
            // The client reused its port: the old connection's entry may still linger. Replace it
            // only if that connection is over; a live one is a true collision.
            let closed = self
                .conns
                .get(&key)
                .is_some_and(|e| e.flags & conn_flags::CLOSE_REPORTED != 0);
            let old = self.inbound.get(&slot).map(|i| i.client_isn);
            match old {
                Some(client_isn) if closed => self.forget(ConnId { key, client_isn }),
                _ => return Err(RefuseReason::Collision),
            }
        }
        // A connection of the local TCP on this tuple (other than one in TIME_WAIT, which a new
        // SYN may legitimately reuse) is a collision: refuse before touching it.
        match self.diag.tcp_state(key.local(), r.client) {
            Ok(None | Some(sockdiag::tcp_state::TIME_WAIT)) => {}
            Ok(Some(_)) => return Err(RefuseReason::Collision),
            Err(e) => {
                tracing::warn!("sock_diag: {e}");
                return Err(RefuseReason::Internal);
            }
        }
        let entry = Conn::new_be(*r.fe_service.ip(), syn_fields.seq, monotonic_ns());
        // NOEXIST: a tuple this node already tracks (as FE or BE) is a collision, never merged.
        if self.conns.insert(key, entry, Insert::New).is_err() {
            return Err(RefuseReason::Collision);
        }
        let mut syn = r.syn;
        if rewrite_dst_addr(&mut syn, self.my_addr).is_err() {
            self.conns.remove(&key);
            return Err(RefuseReason::Malformed);
        }
        let deadline =
            Instant::now() + Duration::from_millis(self.config.limits.handoff_timeout_ms / 2);
        self.inbound.insert(
            (peer, r.id),
            Inbound {
                key,
                peer,
                id: r.id,
                client_isn: syn_fields.seq,
                fe_isn: r.fe_isn,
                fe_tsval: r.fe_tsval,
                fe_options,
                ack: r.ack,
                phase: InboundPhase::AwaitingSynAck { deadline },
            },
        );
        self.inbound_by_key.insert(key, (peer, r.id));
        self.send(&syn);
        Ok(())
    }

    fn on_be_synack(&mut self, event: Event) {
        let Some(&slot) = self.inbound_by_key.get(&event.key) else {
            return;
        };
        let Some(inbound) = self.inbound.get(&slot) else {
            return;
        };
        if !matches!(inbound.phase, InboundPhase::AwaitingSynAck { .. }) {
            return; // a retransmitted SYN-ACK after we already answered
        }
        let key = inbound.key;
        let answer = parse_captured(&event.packet, event.pkt_len);
        let is_synack = answer.as_ref().is_some_and(|s| {
            s.flags.contains(TcpFlags::SYN | TcpFlags::ACK)
                && s.ack == inbound.client_isn.wrapping_add(1)
        });
        let Some(synack) = answer.filter(|_| is_synack) else {
            // Our TCP answered the SYN with something else: the tuple is in use here.
            return self.refuse_inbound(slot, RefuseReason::Collision, false);
        };
        let be_options = match baton_wire::ipv4::Ipv4Packet::new_checked(&event.packet[..])
            .ok()
            .and_then(|ip| {
                baton_wire::TcpSegment::new_checked(ip.payload())
                    .ok()
                    .map(|t| SynOptions::parse(t.options()))
            }) {
            Some(Ok(options)) => options,
            _ => return self.refuse_inbound(slot, RefuseReason::Malformed, true),
        };
        if let Some(mismatch) = inbound.fe_options.negotiated_mismatch(&be_options) {
            tracing::info!(%key, "refusing handoff: {mismatch}");
            return self.refuse_inbound(slot, RefuseReason::OptionMismatch, true);
        }
        let seq_delta = synack.seq.wrapping_sub(inbound.fe_isn);
        let ts_delta = match be_options.timestamps {
            Some((be_tsval, _)) => be_tsval.wrapping_sub(inbound.fe_tsval),
            None => 0,
        };
        let mut entry = match self.conns.get(&key) {
            Some(entry) => entry,
            None => return self.refuse_inbound(slot, RefuseReason::Internal, true),
        };
        entry.state = ConnState::BeReplayed as u8;
        entry.local_isn = synack.seq;
        entry.seq_delta = seq_delta;
        entry.ts_delta = ts_delta;
        if self.conns.insert(key, entry, Insert::Any).is_err() {
            return self.refuse_inbound(slot, RefuseReason::Internal, true);
        }
        let translation = Translation {
            seq_delta,
            ts_delta,
        };
        let mut ack = inbound.ack.clone();
        if rewrite_dst_addr(&mut ack, self.my_addr).is_err()
            || translate_to_server(&mut ack, &translation).is_err()
        {
            return self.refuse_inbound(slot, RefuseReason::Malformed, true);
        }
        self.send(&ack);
        if let Some(inbound) = self.inbound.get_mut(&slot) {
            inbound.phase = InboundPhase::Confirming {
                deadline: Instant::now() + CONFIRM_WAIT,
            };
            self.confirming.insert(slot);
        }
        self.confirm_inbound(slot);
    }

    /// Accepts a replayed connection once the local TCP has it established; refuses it when that
    /// does not happen in time. (Loopback delivery usually completes within the injecting call.)
    fn confirm_inbound(&mut self, slot: (usize, u64)) {
        let deadline = match self.inbound.get(&slot).map(|i| &i.phase) {
            Some(InboundPhase::Confirming { deadline }) => *deadline,
            _ => {
                self.confirming.remove(&slot);
                return;
            }
        };
        let Some(inbound) = self.inbound.get(&slot) else {
            return;
        };
        let local = inbound.key.local();
        let state = self.diag.tcp_state(local, inbound.key.client());
        match state {
            Ok(Some(sockdiag::tcp_state::ESTABLISHED)) => {
                if let Some(inbound) = self.inbound.get_mut(&slot) {
                    inbound.phase = InboundPhase::Accepted;
                }
                self.confirming.remove(&slot);
                self.mesh
                    .send(slot.0, Message::HandoffAccepted { id: slot.1 });
                self.metrics.handoffs_in.inc();
            }
            Ok(_) if Instant::now() < deadline => {}
            Ok(state) => {
                tracing::info!(key = %inbound.key, ?state, "replayed handshake did not establish");
                self.refuse_inbound(slot, RefuseReason::Internal, true);
            }
            Err(e) => {
                tracing::warn!("sock_diag: {e}");
                self.refuse_inbound(slot, RefuseReason::Internal, true);
            }
        }
    }

    fn refuse_inbound(&mut self, slot: (usize, u64), reason: RefuseReason, reset: bool) {
        let Some(inbound) = self.inbound.remove(&slot) else {
            return;
        };
        self.inbound_by_key.remove(&inbound.key);
        if reset {
            self.reset_local(&inbound.key, inbound.client_isn);
        }
        self.conns.remove(&inbound.key);
        self.metrics
            .refused
            .get_or_create(&Reason::new(refuse_label(reason)))
            .inc();
        self.mesh.send(
            inbound.peer,
            Message::HandoffRefused {
                id: inbound.id,
                reason,
            },
        );
    }

    /// The datapath saw both FINs or a RST. The local TCP has the last word (a RST outside the
    /// window is ignored by TCP but not by the datapath), so the close is confirmed after a linger.
    fn on_closed(&mut self, key: ConnKey) {
        let Some(inbound) = self
            .inbound_by_key
            .get(&key)
            .and_then(|slot| self.inbound.get(slot))
        else {
            return;
        };
        let at = Instant::now() + Duration::from_millis(self.config.limits.close_linger_ms);
        self.closing.push((
            at,
            ConnId {
                key,
                client_isn: inbound.client_isn,
            },
        ));
    }

    /// A linger after a close: if the local TCP is done with the connection, tell the FE and
    /// forget it; if it is still open (a forged RST, a slow close), look again later.
    fn confirm_closed(&mut self, conn: ConnId) {
        let Some(slot) = self.inbound_by_key.get(&conn.key).copied() else {
            return;
        };
        if self
            .inbound
            .get(&slot)
            .is_none_or(|i| i.client_isn != conn.client_isn)
        {
            return;
        }
        match self.diag.tcp_state(conn.key.local(), conn.key.client()) {
            Ok(None | Some(sockdiag::tcp_state::TIME_WAIT | sockdiag::tcp_state::CLOSE)) => {
                self.mesh.send(slot.0, Message::ConnClosed { id: slot.1 });
                self.forget(conn);
            }
            Ok(Some(state)) => {
                if state == sockdiag::tcp_state::ESTABLISHED {
                    // Not closed after all: let a later real close be reported.
                    if let Some(mut entry) = self.conns.get(&conn.key) {
                        entry.flags &= !(conn_flags::RST | conn_flags::CLOSE_REPORTED);
                        let _ = self.conns.insert(conn.key, entry, Insert::Existing);
                    }
                    return;
                }
                let at = Instant::now() + Duration::from_millis(self.config.limits.close_linger_ms);
                self.closing.push((at, conn));
            }
            Err(e) => tracing::warn!("sock_diag: {e}"),
        }
    }

    // ----- shared -------------------------------------------------------------------------

    fn expire_later(&mut self, conn: ConnId) {
        let at = Instant::now() + Duration::from_millis(self.config.limits.close_linger_ms);
        self.expiries.push((at, conn));
    }

    /// Removes every trace of a connection, and only of that one: an entry on the same key with
    /// another ISN belongs to a newer connection and stays.
    fn forget(&mut self, conn: ConnId) {
        let ConnId { key, client_isn } = conn;
        if self
            .conns
            .get(&key)
            .is_some_and(|e| e.client_isn == client_isn)
        {
            self.conns.remove(&key);
        }
        if let Some(slot) = self.inbound_by_key.get(&key).copied()
            && self
                .inbound
                .get(&slot)
                .is_some_and(|i| i.client_isn == client_isn)
        {
            self.inbound_by_key.remove(&key);
            self.inbound.remove(&slot);
        }
    }

    /// Ends our own TCP's side of `key` with a RST only it sees (no timestamps: RFC 7323 §5.2
    /// lets a RST skip PAWS only without them).
    fn reset_local(&self, key: &ConnKey, client_isn: u32) {
        let (client, local) = (key.client(), key.local());
        let mut rst = TcpPacketBuilder::new(*client.ip(), client.port(), *local.ip(), local.port());
        rst.seq = client_isn.wrapping_add(1);
        rst.flags = TcpFlags::RST;
        rst.window = 0;
        if let Ok(packet) = rst.try_build() {
            self.send(&packet);
        }
    }

    fn send(&self, packet: &[u8]) {
        if let Err(e) = self.inject.send(packet) {
            tracing::warn!("inject: {e}");
        }
    }

    fn collect_garbage(&mut self) {
        let now_ns = monotonic_ns();
        let idle_ns = self
            .config
            .limits
            .idle_timeout_s
            .saturating_mul(1_000_000_000);
        let abandon_ns = self
            .config
            .limits
            .handoff_timeout_ms
            .saturating_mul(2_000_000);
        let mut count = 0i64;
        let mut doomed = Vec::new();
        let mut to_check = Vec::new();
        for (key, conn) in self.conns.entries() {
            count += 1;
            let age = now_ns.saturating_sub(conn.last_seen_ns);
            let stale = match (conn.role(), conn.state()) {
                (Some(ConnRole::Fe), Some(ConnState::FeSyn)) => age > SYN_ENTRY_TTL_NS,
                (Some(ConnRole::Fe), Some(ConnState::FeHold)) => {
                    !self.held.contains_key(&key) && age > self.config.limits.hold_ms * 2_000_000
                }
                (Some(ConnRole::Be), Some(ConnState::BeSynSent)) => {
                    !self.inbound_by_key.contains_key(&key) && age > SYN_ENTRY_TTL_NS
                }
                // Accepted but the FE never forwarded (it gave up and its abort was lost).
                (Some(ConnRole::Be), Some(ConnState::BeReplayed)) => age > abandon_ns,
                // Idle at the BE: the local TCP says whether it is over (a lost close notice or
                // FIN flag); a live connection is never cut here.
                (Some(ConnRole::Be), Some(ConnState::BeEstablished)) => {
                    if age > BE_LIVENESS_CHECK_NS {
                        to_check.push((key, conn));
                    }
                    false
                }
                _ => age > idle_ns,
            };
            if stale {
                doomed.push((key, conn));
            }
        }
        for (key, conn) in to_check {
            match self.diag.tcp_state(key.local(), key.client()) {
                Ok(None | Some(sockdiag::tcp_state::TIME_WAIT | sockdiag::tcp_state::CLOSE)) => {
                    doomed.push((key, conn))
                }
                Ok(Some(_)) => {}
                Err(e) => tracing::warn!("sock_diag: {e}"),
            }
        }
        let doomed_fe: HashSet<ConnKey> = doomed
            .iter()
            .filter(|(_, c)| c.role() == Some(ConnRole::Fe))
            .map(|(k, _)| *k)
            .collect();
        if !doomed_fe.is_empty() {
            self.outbound
                .retain(|_, (_, c)| !doomed_fe.contains(&c.key));
        }
        for (key, conn) in doomed {
            if conn.role() == Some(ConnRole::Be) {
                if conn.state() == Some(ConnState::BeReplayed) {
                    self.reset_local(&key, conn.client_isn);
                }
                if let Some(slot) = self.inbound_by_key.get(&key).copied() {
                    self.mesh.send(slot.0, Message::ConnClosed { id: slot.1 });
                }
            }
            self.forget(ConnId {
                key,
                client_isn: conn.client_isn,
            });
            count -= 1;
        }
        self.metrics.conn_entries.set(count);
    }
}

fn refuse_label(reason: RefuseReason) -> &'static str {
    match reason {
        RefuseReason::Collision => "collision",
        RefuseReason::OptionMismatch => "option_mismatch",
        RefuseReason::Overloaded => "overloaded",
        RefuseReason::Timeout => "timeout",
        RefuseReason::Internal => "internal",
        RefuseReason::Malformed => "malformed",
    }
}

/// Removes and returns the connections whose time has come.
fn take_due(list: &mut Vec<(Instant, ConnId)>, now: Instant) -> Vec<ConnId> {
    let due = list
        .iter()
        .filter(|(t, _)| *t <= now)
        .map(|(_, c)| *c)
        .collect();
    list.retain(|(t, _)| *t > now);
    due
}

/// Recomputes the IPv4 and TCP checksums of a complete packet in place (no-op on anything else).
fn fill_checksums(packet: &mut [u8]) {
    let Ok(mut ip) = baton_wire::Ipv4Packet::new_checked(&mut packet[..]) else {
        return;
    };
    ip.fill_checksum();
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if let Ok(mut tcp) = baton_wire::TcpSegment::new_checked(ip.payload_mut()) {
        tcp.fill_checksum(src, dst);
    }
}

/// The TSecr of a segment's timestamps option, if it has one.
fn echoed_tsval(segment: &TcpPacketBuilder) -> Option<u32> {
    segment.options.iter().find_map(|o| match o {
        baton_wire::TcpOption::Timestamps { tsecr, .. } => Some(*tsecr),
        _ => None,
    })
}

/// Parses a captured packet; a capture cut short by the ring's limit is read as the prefix it is.
fn parse_captured(packet: &[u8], pkt_len: u32) -> Option<TcpPacketBuilder> {
    if packet.len() >= pkt_len as usize {
        return TcpPacketBuilder::parse(packet).ok();
    }
    let mut prefix = packet.to_vec();
    let len = u16::try_from(prefix.len()).ok()?;
    if prefix.len() < 4 {
        return None;
    }
    prefix[2..4].copy_from_slice(&len.to_be_bytes());
    TcpPacketBuilder::parse(&prefix).ok()
}

/// The held stream as the client's own segments toward `dst`, each at most `mtu` bytes long,
/// with the latest segment's headers (timestamps) and the FIN if the client sent one.
fn replay_segments(held: &Held, dst: Ipv4Addr, mtu: usize) -> Vec<Vec<u8>> {
    let Some(template) = &held.template else {
        return Vec::new();
    };
    let data = held.stream.contiguous();
    let fin = held.stream.finished();
    let mut out = Vec::new();
    let header = 40 + baton_wire::options::emitted_len(&template.options);
    let chunk = mtu.saturating_sub(header).max(1);
    let mut offset = 0;
    while offset < data.len()
        || (fin && offset == data.len() && out.is_empty())
        || (fin && offset < data.len())
    {
        let end = (offset + chunk).min(data.len());
        let mut seg = template.clone();
        seg.dst = dst;
        seg.seq = held.stream.base().wrapping_add(offset as u32);
        seg.ack = held.entry.local_isn.wrapping_add(1);
        seg.flags = TcpFlags::ACK
            | if end > offset {
                TcpFlags::PSH
            } else {
                TcpFlags::empty()
            };
        if fin && end == data.len() {
            seg.flags |= TcpFlags::FIN;
        }
        seg.payload = data[offset..end].to_vec();
        if let Ok(packet) = seg.try_build() {
            out.push(packet);
        }
        if end == offset {
            break;
        }
        offset = end;
        if offset == data.len() {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests;
