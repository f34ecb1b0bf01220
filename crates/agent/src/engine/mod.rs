//! The handoff engine: the single owner of every connection's agent-side state.
//!
//! Laid out along a connection's life:
//! - [`fe`]: the accepting node (FE): held connections, the decision, the offer, forwarding;
//! - [`follow`]: the FE again, after placement: each later request of a keep-alive connection
//!   decided on its own, and the connection moved between nodes at request boundaries;
//! - [`be`]: the serving node (BE): the replay, going live, quiescing for a move, closes;
//! - [`cluster`]: the members, their loads and the dispatcher: what decisions are made from;
//! - [`adopt`]: a start on a datapath a previous agent left running, and this agent's hand-over;
//! - [`housekeeping`]: the periodic work (load, listeners, heartbeats to peers and to the
//!   datapath, garbage and orphans);
//! - [`timers`]: every deadline, in one queue (nothing ticks);
//! - [`packets`]: the packets the engine builds and reads.
//!
//! Inputs are datapath events ([`Engine::on_datapath`]), control messages ([`Engine::on_mesh`])
//! and due timers ([`Engine::on_timers`], when [`Engine::next_deadline`] comes); each takes `now`,
//! so the tests drive time. Outputs go through the kernel traits (`crate::kernel`) and the mesh.
//!
//! A handoff is one pass. The FE's datapath forwards the client's packets to the BE from the
//! moment the FE offers the connection, and the offer carries the request bytes. The BE replays
//! the SYN into its own TCP, then the request, whose first segment carries the handshake ACK; the
//! BE's datapath lets the connection reach the client on the first packet the BE's TCP sends, but
//! only before a deadline. The BE answers Accepted (it went live) or Refused (it did not, and now
//! never will); the FE serves a refused or unanswered connection itself. Nothing is lost: every
//! doubt ends in local service.

mod adopt;
mod be;
mod cluster;
mod fe;
mod follow;
mod housekeeping;
mod ops;
mod packets;
mod timers;

#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use baton_bpf::{Event, EventKind};
use baton_http::Limits as HeadLimits;
use baton_policy::{BoundedHash, PolicyKind, Router};
use baton_proto::{Message, RefuseReason};

use crate::config::NodeConfig;
use crate::kernel::{ConnTableOps, DatapathControl, FollowTables, Kernel, PacketSink, TcpStates};
use crate::mesh::{MeshEvent, MeshSender};
use crate::metrics::Metrics;

pub use adopt::Adopted;
pub use fe::LocalReason;

use be::CloseNotice;
use cluster::Cluster;
use timers::{ConnId, Timer, Timers};

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

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// This node serves it.
    Local,
    /// The member with this index in the configured member list serves it.
    Node(usize),
}

pub struct Engine {
    config: NodeConfig,
    my_addr: Ipv4Addr,
    conns: Box<dyn ConnTableOps>,
    follow: Box<dyn FollowTables>,
    inject: Box<dyn PacketSink>,
    tcp: Box<dyn TcpStates>,
    datapath: Box<dyn DatapathControl>,
    mesh: MeshSender,
    metrics: Metrics,
    cluster: Cluster,
    router: Router,
    /// What decides when the LARD dispatcher does not answer in time.
    fallback: BoundedHash,
    /// Whether the default policy keeps one table for the cluster at a dispatcher (LARD).
    dispatching: bool,
    /// How the datapath may decide first requests itself (plain `hash`, `bounded-hash` or
    /// `round-robin`).
    datapath_decides: Option<baton_bpf::DecideMode>,
    /// The key of the datapaths' offers, from the cluster key.
    offer_key: [u8; baton_bpf::OFFER_KEY_LEN],
    /// Whether placed connections are followed request by request (`[policy] per_request`).
    follows_requests: bool,
    head_limits: HeadLimits,
    fe: fe::FeState,
    be: be::BeState,
    timers: Timers,
    next_id: u64,
    housekeeping_rounds: u64,
    /// The datapath configuration last written, to write only changes.
    written: Option<baton_bpf::NodeConfig>,
    /// The bounded-load view last written (`bounded-hash`), likewise.
    bounded_written: Option<Box<baton_bpf::BoundedView>>,
    load_anchor: Option<housekeeping::LoadAnchor>,
    /// The listener counts when the listeners were last looked at.
    listeners_seen: Option<(u64, u64)>,
    /// Another agent takes over: this one no longer beats, holds or offers.
    standing_down: bool,
    /// `config.cluster_digest()`, told to peers.
    config_digest: u64,
    /// What the last summary log line counted from.
    last_summary: Option<housekeeping::Summary>,
    /// Messages from this node to itself (it is the serving node of connections it accepted and
    /// follows), handled when the input that sent them is done.
    to_self: std::collections::VecDeque<Message>,
}

impl Engine {
    pub fn new(
        config: NodeConfig,
        kernel: Kernel,
        mesh: MeshSender,
        metrics: Metrics,
        now: Instant,
    ) -> Self {
        let policy = &config.policy;
        let mut engine = Engine {
            my_addr: config.node.address,
            conns: kernel.conns,
            follow: kernel.follow,
            inject: kernel.inject,
            tcp: kernel.tcp,
            datapath: kernel.datapath,
            mesh,
            metrics,
            cluster: Cluster::new(&config, now),
            router: Router::new(
                policy.kind,
                &policy.params,
                &policy.rules,
                policy.affinity_cookie.clone(),
            ),
            fallback: BoundedHash::new(policy.params.balance_factor),
            dispatching: matches!(policy.kind, PolicyKind::Lard | PolicyKind::LardR),
            datapath_decides: ops::datapath_may_decide(&config),
            offer_key: baton_proto::datapath_offer_key(config.cluster.key.as_bytes()),
            follows_requests: config.policy.follows_requests(),
            head_limits: HeadLimits {
                max_head_bytes: config.limits.head_bytes,
                ..HeadLimits::default()
            },
            fe: fe::FeState::default(),
            be: be::BeState::default(),
            timers: Timers::with_slack(Duration::from_millis(config.limits.timer_slack_ms)),
            // Ids are unique per FE; the high bits keep two restarts of one node apart. The top
            // bit is the datapath's (its own offers' ids have it set).
            next_id: (u64::from(rand::random::<u32>() >> 1) << 32) | 1,
            housekeeping_rounds: 0,
            written: None,
            bounded_written: None,
            load_anchor: None,
            listeners_seen: None,
            standing_down: false,
            config_digest: config.cluster_digest(),
            last_summary: None,
            to_self: Default::default(),
            config,
        };
        engine.write_datapath_config(now);
        engine.metrics.healthy.set(1);
        engine.timers.at(now, Timer::Housekeeping);
        engine
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    // ----- inputs -------------------------------------------------------------------------

    pub fn on_datapath(&mut self, event: Event, now: Instant) {
        match event.kind {
            // A closed handed-in connection lingers while the client may already have a new
            // one on the tuple, held by the datapath as this node's own: that one's packets go
            // to the FE side, or they would be ignored until the linger ends.
            EventKind::HeldPacket if self.be.is_replaying(&event.key) => {
                self.on_be_held_packet(event)
            }
            EventKind::HeldPacket => self.on_held_packet(event, now),
            EventKind::NextHead => self.on_next_head(event, now),
            EventKind::BeSynAck => self.on_be_answer(event, now),
            EventKind::BeLive => self.on_be_live(event.key, event.handoff_id, event.sock_cookie),
            EventKind::Closed => self.on_closed(event.key, CloseNotice::of(&event), now),
            EventKind::DpOffered => {
                self.on_dp_offered(event.key, event.handoff_id, event.detail, now)
            }
            EventKind::DpReturned => self.on_dp_returned(event.key, event.detail, event.peer, now),
            EventKind::DpTaken => self.on_dp_taken(event.key, event.handoff_id, event.peer, now),
            EventKind::NextHeadStayed => self.on_next_head_stayed(event.key, event.detail),
            EventKind::DpFollowedHere => self.on_dp_followed_here(&event),
        }
        self.deliver_to_self(now);
    }

    pub fn on_mesh(&mut self, event: MeshEvent, now: Instant) {
        match event {
            MeshEvent::PeerUp { peer } => {
                // A (re)connected peer is a fresh agent.
                let p = &mut self.cluster.peers[peer];
                p.outbound_up = true;
                p.draining = false;
                tracing::info!(peer = %p.name, "control connection up");
                self.send_node_status(peer);
                self.mesh.send(
                    peer,
                    Message::Capabilities {
                        datapath_offers: self.config.limits.datapath_offers,
                        followed_offers: self.config.limits.datapath_offers,
                    },
                );
            }
            // An offer out to it is answered or times out: its BE may have the connection.
            // What it can do is told again by its next agent (an older one never tells).
            MeshEvent::PeerDown { peer } => {
                let p = &mut self.cluster.peers[peer];
                p.outbound_up = false;
                p.takes_offers = false;
                p.takes_followed_offers = false;
            }
            MeshEvent::Message { peer, message } => {
                self.cluster.peers[peer].last_heard = Some(now);
                self.on_message(peer, message, now);
            }
        }
        self.deliver_to_self(now);
        self.write_datapath_config(now);
    }

    fn on_message(&mut self, peer: usize, message: Message, now: Instant) {
        match message {
            Message::Heartbeat { load, serving, .. } => {
                let p = &mut self.cluster.peers[peer];
                p.reported(load);
                if p.serving != serving {
                    tracing::info!(peer = %p.name, serving, "peer's server listening: {serving}");
                }
                p.serving = serving;
            }
            // A member this node removed gets nothing new here, only answers about what is
            // under way.
            Message::HandoffRequest(request) if self.cluster.peers[peer].removed => {
                self.mesh.send(
                    peer,
                    Message::HandoffRefused {
                        id: request.id,
                        reason: RefuseReason::Overloaded,
                    },
                );
            }
            Message::DispatchQuery { .. } if self.cluster.peers[peer].removed => {}
            Message::HandoffRequest(request) => self.on_handoff_request(peer, request, now),
            Message::Capabilities {
                datapath_offers,
                followed_offers,
            } => {
                let p = &mut self.cluster.peers[peer];
                p.takes_offers = datapath_offers;
                p.takes_followed_offers = followed_offers;
            }
            Message::HandoffAccepted { id } if self.fe.is_move(id) => {
                self.on_move_accepted(peer, id, now)
            }
            Message::HandoffRefused { id, reason } if self.fe.is_move(id) => {
                self.on_move_refused(peer, id, reason, now)
            }
            Message::HandoffAccepted { id } => self.on_accepted(peer, id, now),
            Message::HandoffRefused { id, reason } => self.on_refused(peer, id, reason, now),
            Message::HandoffAbort { id } => self.on_abort(peer, id),
            Message::ConnClosed { id } => self.on_conn_closed(peer, id, now),
            Message::DispatchQuery { id, target } => self.on_dispatch_query(peer, id, &target, now),
            Message::DispatchAnswer { id, node } => self.on_dispatch_answer(peer, id, node, now),
            Message::NodeStatus {
                drained,
                config_digest,
            } => self.on_node_status(peer, drained, config_digest),
            Message::MoveQuiesce {
                id,
                attempt,
                requests,
                segment,
            } => self.on_move_quiesce(peer, (id, attempt), requests, &segment, now),
            Message::MoveQuiet { id, attempt } => self.on_move_quiet(peer, id, attempt, now),
            Message::MoveBusy {
                id,
                attempt,
                reason,
            } => self.on_move_busy(peer, id, attempt, reason),
            Message::MoveRelease { id, attempt } => self.on_move_release(peer, id, attempt, now),
            Message::MoveResume {
                id,
                attempt,
                segment,
                data,
            } => self.on_move_resume(peer, (id, attempt), &segment, &data, now),
            Message::Draining => {
                self.cluster.peers[peer].draining = true;
                tracing::info!(peer = %self.cluster.peers[peer].name, "peer is draining");
            }
        }
    }

    /// When [`Engine::on_timers`] next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Runs every timer due at `now`.
    pub fn on_timers(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Hold(conn) => self.hold_expired(conn, now),
                Timer::Dispatch(id) => self.dispatch_timed_out(id, now),
                Timer::Offer(id) => self.offer_unanswered(id, now),
                Timer::ForgetLocal(conn) => self.fe.forget_local(conn),
                Timer::Expire(conn) => self.expire_forwarded(conn),
                Timer::Live(conn) => self.live_deadline(conn),
                Timer::Closed(conn) => self.confirm_closed(conn, now),
                Timer::NextHold(conn) => self.next_hold_expired(conn, now),
                Timer::Move(id) => self.move_timed_out(id, now),
                Timer::Moved(conn) => self.moved_linger_over(conn),
                Timer::Frozen(conn) => self.frozen_too_long(conn, now),
                Timer::Quiesce(conn) => self.quiesce_recheck(conn, now),
                Timer::Housekeeping => self.housekeeping(now),
            }
            self.deliver_to_self(now);
        }
    }

    // ----- stopping -----------------------------------------------------------------------

    /// Starts a graceful stop: the datapath holds nothing new, peers are told to choose this node
    /// for nothing new (and move the dispatcher). What is in flight goes on.
    pub fn begin_drain(&mut self, now: Instant) {
        self.cluster.draining = true;
        self.write_datapath_config(now);
        for peer in self.cluster.others() {
            self.mesh.send(peer, Message::Draining);
        }
    }

    /// Whether nothing of this node's is in flight any more: no connection held or offered, none
    /// handed in or forwarded out still open (closed ones only linger).
    pub fn drained(&self) -> bool {
        self.fe.in_flight() == 0 && self.be.open() == 0
    }

    /// Shutdown: every held or offered connection is served locally, so none is lost.
    pub fn release_all(&mut self, now: Instant) {
        for key in self.fe.undecided() {
            self.release_local(key, LocalReason::Shutdown, now);
        }
        self.stop_following_all(now);
        self.deliver_to_self(now);
    }

    // ----- shared -------------------------------------------------------------------------

    /// Sends `message` to `peer`, or, if that is this node, handles it once the current input is
    /// done. False if it could not be sent.
    fn tell(&mut self, peer: usize, message: Message) -> bool {
        if peer == self.cluster.me {
            self.to_self.push_back(message);
            true
        } else {
            self.mesh.send(peer, message)
        }
    }

    fn deliver_to_self(&mut self, now: Instant) {
        while let Some(message) = self.to_self.pop_front() {
            self.on_message(self.cluster.me, message, now);
        }
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    fn send(&self, packet: &[u8]) {
        if let Err(e) = self.inject.send(packet) {
            tracing::warn!("inject: {e}");
        }
    }

    /// Ends our own TCP's side of a connection with a RST only it sees.
    fn reset_local(&self, conn: ConnId) {
        if let Some(rst) = packets::reset(&conn.key, conn.client_isn) {
            self.send(&rst);
        }
    }

    /// Counts one for `peer` (by name) in a per-peer family.
    fn count_for_peer(&self, family: &prometheus::IntCounterVec, peer: usize) {
        if let Some(p) = self.cluster.peers.get(peer) {
            family.with_label_values(&[p.name.as_str()]).inc();
        }
    }

    /// Removes the datapath's entry of `conn`, and only of that one: an entry on the same key
    /// with another ISN belongs to a newer connection and stays.
    /// Returns the entry removed.
    fn remove_entry(&mut self, conn: ConnId) -> Option<baton_bpf::Conn> {
        let entry = self
            .conns
            .get(&conn.key)
            .filter(|e| e.client_isn == conn.client_isn)?;
        self.conns.remove(&conn.key);
        Some(entry)
    }
}
