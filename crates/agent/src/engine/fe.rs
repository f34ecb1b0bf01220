//! FE: the node that accepted the client's connection.
//!
//! A connection the datapath could not decide alone reaches the agent as held packets. Its
//! [`FeConn`] then goes through these phases, one map entry for its whole life:
//!
//! - **Held**: the client's bytes are reassembled until the request head is complete; the router
//!   decides (the LARD dispatcher may be asked first). A slow, malformed, oversized or
//!   over-segmented head is served here.
//! - **Offered** to a peer: the datapath forwards the client's packets to it from now on; the
//!   offer carries the request. The peer answers Accepted or Refused; a refused connection, or one
//!   unanswered after `handoff_timeout_ms`, is served here from the held bytes (our TCP still has
//!   its half-open side).
//! - **Forwarded**: the peer has it; our half-open side is reset; the entry goes a linger after
//!   the peer reports the close.
//! - **Local**: served here (entry deleted, held bytes replayed into our TCP); packets the ring
//!   still delivers follow it for a while.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use baton_bpf::{Conn, ConnKey, ConnRole, ConnState, Event};
use baton_http::{InvalidReason, Sniff};
use baton_policy::{ClusterView, Policy, RequestInfo, RoutedRequest};
use baton_proto::{HandoffRequest, Message, RefuseReason};
use baton_wire::{SeqNumber, TcpFlags, TcpPacketBuilder, rewrite_dst_addr};

use super::follow::Following;
use super::packets;
use super::timers::{ConnId, Timer};
use super::{Decision, Engine, monotonic_ns};
use crate::hold::StreamAssembler;
use crate::kernel::Insert;

/// How much of a held connection's stream the FE keeps (bytes beyond are retransmitted by the
/// client); it all fits one handoff request.
const STREAM_CAPACITY: usize = baton_proto::MAX_HANDOFF_DATA_LEN;
/// Largest payload of one replayed packet into the local stack (the loopback MTU is 64 KiB).
pub(super) const LOCAL_CHUNK: usize = 32 * 1024;
/// How long late held packets keep following a connection served here.
const LOCAL_MEMORY: Duration = Duration::from_secs(5);

/// Why a connection was served here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalReason {
    /// The policy chose this node: not a fallback.
    Policy,
    /// The chosen peer is down, or its control connection would not take the offer.
    PeerDown,
    /// The peer did not answer the offer in time.
    Timeout,
    Refused(RefuseReason),
    /// The request head did not complete within `hold_ms`.
    HoldTimeout,
    TooManySegments,
    /// The client closed before its request head was complete.
    IncompleteHead,
    BadHead(InvalidReason),
    Internal,
    Shutdown,
}

impl LocalReason {
    /// The metric label (`baton_handoff_fallbacks_total{reason}`).
    pub fn label(self) -> &'static str {
        match self {
            LocalReason::Policy => "policy",
            LocalReason::PeerDown => "peer_down",
            LocalReason::Timeout => "timeout",
            LocalReason::Refused(r) => match r {
                RefuseReason::Collision => "refused_collision",
                RefuseReason::OptionMismatch => "refused_option_mismatch",
                RefuseReason::Overloaded => "refused_overloaded",
                RefuseReason::Timeout => "refused_timeout",
                RefuseReason::Internal => "refused_internal",
                RefuseReason::Malformed => "refused_malformed",
                RefuseReason::NoListener => "refused_no_listener",
            },
            LocalReason::HoldTimeout => "hold_timeout",
            LocalReason::TooManySegments => "too_many_segments",
            LocalReason::IncompleteHead => "incomplete_head",
            LocalReason::BadHead(r) => r.as_str(),
            LocalReason::Internal => "internal",
            LocalReason::Shutdown => "shutdown",
        }
    }
}

/// What the FE keeps of a connection it has not yet placed.
pub(super) struct Held {
    /// The datapath's entry when holding began: ISNs, the SYN's and SYN-ACK's options and flags.
    entry: Conn,
    stream: StreamAssembler,
    /// Headers of the latest client segment: the template of every segment replayed from it.
    template: Option<TcpPacketBuilder>,
    segments: usize,
    /// A question to the LARD dispatcher, while it is out: its id and the target.
    asking: Option<(u64, String)>,
    /// When its first segment reached the agent, and when its head was complete.
    since: Instant,
    head_complete: Option<Instant>,
}

impl Held {
    /// Nothing held yet of the connection whose datapath entry is `entry`.
    fn new(entry: Conn, now: Instant) -> Self {
        Held {
            entry,
            stream: StreamAssembler::new(entry.client_isn.wrapping_add(1), STREAM_CAPACITY),
            template: None,
            segments: 0,
            asking: None,
            since: now,
            head_complete: None,
        }
    }
}

pub(super) enum FePhase {
    Held(Held),
    Offered {
        held: Held,
        peer: usize,
        id: u64,
        since: Instant,
        /// Its later requests are followed (`[policy] per_request`).
        follow: Option<Box<Following>>,
    },
    Forwarded {
        peer: usize,
        id: u64,
        /// The peer reported it closed: only its linger is left.
        closed: bool,
        follow: Option<Box<Following>>,
    },
    Local,
}

pub(super) struct FeConn {
    pub(super) client_isn: u32,
    pub(super) phase: FePhase,
}

#[derive(Default)]
pub(super) struct FeState {
    pub(super) conns: HashMap<ConnKey, FeConn>,
    /// Offered and forwarded connections by handoff id.
    pub(super) handoffs: HashMap<u64, ConnKey>,
    /// Questions out to the LARD dispatcher by id (first requests, and followed ones').
    pub(super) asks: HashMap<u64, ConnKey>,
    /// Moves of followed connections under way, by the new node's handoff id.
    pub(super) moves: HashMap<u64, ConnKey>,
    /// Datapath offers given up on before their answer (unanswered in time, or the client's
    /// next connection on the tuple came first): the peer's agent may still say Accepted, late
    /// (it learns of them off the path, in batches), and is told to drop its side without a
    /// look through the datapath's table.
    pub(super) given_up: GivenUp,
}

/// Handoff ids kept for one to two rounds of garbage collection (10 to 20 s).
#[derive(Default)]
pub(super) struct GivenUp {
    recent: HashSet<u64>,
    older: HashSet<u64>,
}

impl GivenUp {
    pub fn insert(&mut self, id: u64) {
        self.recent.insert(id);
    }

    pub fn contains(&self, id: u64) -> bool {
        self.recent.contains(&id) || self.older.contains(&id)
    }

    /// A round of garbage collection: the older ids go.
    pub fn age(&mut self) {
        self.older = std::mem::take(&mut self.recent);
    }
}

impl FeState {
    /// Whether `id` is a move of a followed connection, under way.
    pub fn is_move(&self, id: u64) -> bool {
        self.moves.contains_key(&id)
    }

    /// A followed connection (offered or forwarded, open): its serving node and what is followed.
    pub fn following_mut(&mut self, key: &ConnKey) -> Option<(usize, &mut Following)> {
        match &mut self.conns.get_mut(key)?.phase {
            FePhase::Offered {
                peer,
                follow: Some(f),
                ..
            }
            | FePhase::Forwarded {
                peer,
                follow: Some(f),
                closed: false,
                ..
            } => Some((*peer, f)),
            _ => None,
        }
    }

    /// Connections followed now.
    pub fn followed(&self) -> Vec<ConnKey> {
        self.conns
            .iter()
            .filter(|(_, c)| {
                matches!(
                    c.phase,
                    FePhase::Offered {
                        follow: Some(_),
                        ..
                    } | FePhase::Forwarded {
                        follow: Some(_),
                        ..
                    }
                )
            })
            .map(|(k, _)| *k)
            .collect()
    }

    /// Whether the agent has a record of `key` (held, offered, forwarded or recently local).
    pub fn knows(&self, key: &ConnKey) -> bool {
        self.conns.contains_key(key)
    }

    /// Connections held, offered or forwarded and open: what a drain waits for.
    pub fn in_flight(&self) -> usize {
        self.conns
            .values()
            .filter(|c| {
                !matches!(
                    c.phase,
                    FePhase::Local | FePhase::Forwarded { closed: true, .. }
                )
            })
            .count()
    }

    /// Whether `key` is held or offered.
    pub fn is_undecided(&self, key: &ConnKey) -> bool {
        self.conns
            .get(key)
            .is_some_and(|c| matches!(c.phase, FePhase::Held(_) | FePhase::Offered { .. }))
    }

    /// Connections not yet placed (held or offered).
    pub fn undecided(&self) -> Vec<ConnKey> {
        self.conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, FePhase::Held(_) | FePhase::Offered { .. }))
            .map(|(k, _)| *k)
            .collect()
    }

    fn get(&self, conn: ConnId) -> Option<&FeConn> {
        self.conns
            .get(&conn.key)
            .filter(|c| c.client_isn == conn.client_isn)
    }

    /// Forgets `conn` (whatever its phase) and its indexes.
    pub fn forget(&mut self, conn: ConnId) -> Option<FePhase> {
        self.get(conn)?;
        let FeConn { phase, .. } = self.conns.remove(&conn.key)?;
        match &phase {
            FePhase::Held(held) => {
                if let Some((id, _)) = &held.asking {
                    self.asks.remove(id);
                }
            }
            FePhase::Offered { id, follow, .. } | FePhase::Forwarded { id, follow, .. } => {
                if matches!(phase, FePhase::Offered { .. }) && is_datapath_offer(*id) {
                    self.given_up.insert(*id);
                }
                self.handoffs.remove(id);
                if let Some(m) = follow.as_ref().and_then(|f| f.move_id()) {
                    self.moves.remove(&m);
                }
            }
            FePhase::Local => {}
        }
        Some(phase)
    }

    pub fn forget_local(&mut self, conn: ConnId) {
        if matches!(self.get(conn).map(|c| &c.phase), Some(FePhase::Local)) {
            self.conns.remove(&conn.key);
        }
    }

    fn held_mut(&mut self, key: &ConnKey) -> Option<&mut Held> {
        match &mut self.conns.get_mut(key)?.phase {
            FePhase::Held(held) => Some(held),
            _ => None,
        }
    }

    /// Takes on a connection a previous agent handed off to `peer` as handoff `id` (its entry is
    /// forwarding). `closed`: the client already closed or reset it; only a linger is left.
    pub fn adopt_forwarded(
        &mut self,
        key: ConnKey,
        client_isn: u32,
        peer: usize,
        id: u64,
        closed: bool,
    ) {
        self.conns.insert(
            key,
            FeConn {
                client_isn,
                phase: FePhase::Forwarded {
                    peer,
                    id,
                    closed,
                    follow: None,
                },
            },
        );
        self.handoffs.insert(id, key);
    }

    /// Whether `key` is handed off as `id` to `peer` already.
    fn is_forwarded(&self, id: u64, peer: usize) -> bool {
        self.handoffs.get(&id).is_some_and(|key| {
            matches!(
                self.conns.get(key).map(|c| &c.phase),
                Some(FePhase::Forwarded { peer: p, id: i, .. }) if *p == peer && *i == id
            )
        })
    }

    /// Whether `conn` was handed off and its close reported: its entry only lingers.
    pub fn is_lingering(&self, conn: ConnId) -> bool {
        matches!(
            self.get(conn).map(|c| &c.phase),
            Some(FePhase::Forwarded { closed: true, .. })
        )
    }

    /// Offers out to peers, not yet answered.
    pub fn offers_out(&self) -> usize {
        self.handoffs
            .values()
            .filter(|k| {
                matches!(
                    self.conns.get(k).map(|c| &c.phase),
                    Some(FePhase::Offered { .. })
                )
            })
            .count()
    }

    /// What `key` is to an operator, if it is handed out or offered: its peer and phase.
    pub fn handed_out(&self, key: &ConnKey) -> Option<(usize, &'static str)> {
        match self.conns.get(key)?.phase {
            FePhase::Offered { peer, .. } => Some((peer, "offered")),
            FePhase::Forwarded { peer, closed, .. } => {
                Some((peer, if closed { "closed" } else { "live" }))
            }
            FePhase::Held(_) | FePhase::Local => None,
        }
    }

    /// Connections handed out (or offered) and still open.
    pub fn handed_out_open(&self) -> usize {
        self.conns
            .values()
            .filter(|c| {
                matches!(
                    c.phase,
                    FePhase::Offered { .. } | FePhase::Forwarded { closed: false, .. }
                )
            })
            .count()
    }

    /// Connections held (not yet offered): each can be served here at once.
    pub fn held(&self) -> Vec<ConnKey> {
        self.conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, FePhase::Held(_)))
            .map(|(k, _)| *k)
            .collect()
    }

    /// The offer `id`, if it is still out to `peer`.
    fn offer(&self, id: u64, peer: usize) -> Option<ConnKey> {
        let key = *self.handoffs.get(&id)?;
        match self.conns.get(&key)?.phase {
            FePhase::Offered { peer: p, id: i, .. } if p == peer && i == id => Some(key),
            _ => None,
        }
    }
}

impl Engine {
    pub(super) fn on_held_packet(&mut self, event: Event, now: Instant) {
        let key = event.key;
        let Some(segment) = packets::parse_captured(&event.packet, event.pkt_len) else {
            self.metrics.malformed_events.inc();
            return;
        };
        let mut packet = event.packet;
        packets::fill_checksums(&mut packet);
        if let Some(conn) = self.fe.conns.get(&key) {
            let late_to = match conn.phase {
                FePhase::Held(_) => None,
                FePhase::Local => Some(self.my_addr),
                FePhase::Offered { peer, .. } | FePhase::Forwarded { peer, .. } => {
                    Some(self.cluster.peers[peer].addr)
                }
            };
            if let Some(to) = late_to {
                // Copied before the connection was placed: it follows it. Unless the datapath now
                // holds another connection on the port (the client reused it).
                let isn = conn.client_isn;
                if self.conns.get(&key).is_none_or(|e| e.client_isn == isn) {
                    if to == self.my_addr || rewrite_dst_addr(&mut packet, to).is_ok() {
                        self.send(&packet);
                    }
                    return;
                }
                self.fe.forget(ConnId {
                    key,
                    client_isn: isn,
                });
                // A watch of the old one would hold the new one's data.
                self.follow.remove_watch(&key);
            }
        }
        if segment.flags.contains(TcpFlags::RST) {
            // The datapath already forgot the entry and let the RST end our half-open side.
            if let Some(isn) = self.fe.conns.get(&key).map(|c| c.client_isn) {
                self.fe.forget(ConnId {
                    key,
                    client_isn: isn,
                });
            }
            return;
        }
        let first = !self.fe.conns.contains_key(&key);
        if first && !self.start_holding(key, now) {
            // No hold on record (entry expired or removed): the local TCP takes it.
            self.send(&packet);
            return;
        }
        let Some(held) = self.fe.held_mut(&key) else {
            return;
        };
        if segment.flags.contains(TcpFlags::SYN) {
            return;
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
        if held.asking.is_none() {
            self.try_decide(key, now);
        }
        // Most heads come in one segment and are decided at once: only a head still being waited
        // for needs a deadline.
        if first && let Some(held) = self.fe.held_mut(&key) {
            let conn = ConnId {
                key,
                client_isn: held.entry.client_isn,
            };
            let hold = Duration::from_millis(self.config.limits.hold_ms);
            self.timers.at(now + hold, Timer::Hold(conn));
        }
    }

    /// Starts holding `key` if the datapath holds it. False if it does not.
    fn start_holding(&mut self, key: ConnKey, now: Instant) -> bool {
        let entry = match self.conns.get(&key) {
            Some(entry) if entry.state() == Some(ConnState::FeHold) => entry,
            _ => return false,
        };
        self.fe.conns.insert(
            key,
            FeConn {
                client_isn: entry.client_isn,
                phase: FePhase::Held(Held::new(entry, now)),
            },
        );
        true
    }

    fn try_decide(&mut self, key: ConnKey, now: Instant) {
        let Some(FePhase::Held(held)) = self.fe.conns.get(&key).map(|c| &c.phase) else {
            return;
        };
        let head = match baton_http::sniff(held.stream.contiguous(), &self.head_limits) {
            Sniff::Complete(head) => {
                if let Some(held) = self.fe.held_mut(&key) {
                    held.head_complete.get_or_insert(now);
                }
                head
            }
            Sniff::Invalid(reason) => {
                return self.release_local(key, LocalReason::BadHead(reason), now);
            }
            Sniff::Incomplete => {
                if held.stream.finished() {
                    return self.release_local(key, LocalReason::IncompleteHead, now);
                }
                if held.segments >= self.config.limits.hold_segments {
                    return self.release_local(key, LocalReason::TooManySegments, now);
                }
                return;
            }
        };
        let nodes = self.cluster.node_states(now);
        let view = self.cluster.view(&nodes, now);
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
            return self.decide(key, self.decision(choice), now);
        }
        if self.dispatching && self.cluster.dispatcher(now) != self.cluster.me {
            // LARD keeps one table for the cluster, at the dispatcher: ask it.
            if let Some(id) = self.ask_dispatcher(key, &head.target, now) {
                if let Some(held) = self.fe.held_mut(&key) {
                    held.asking = Some((id, head.target.clone()));
                }
                return;
            }
            let choice = self.fallback.choose(&request, &view);
            self.metrics.dispatch_fallbacks.inc();
            let decision = self.unless_drained(self.decision(choice), &head.target, now);
            return self.decide(key, decision, now);
        }
        let choice = self.router.choose_default(&request, &view);
        let decision = self.unless_drained(self.decision(choice), &head.target, now);
        self.decide(key, decision, now)
    }

    /// A node its operator drained takes nothing new: what the policy would keep here goes to a
    /// peer instead (the one that hashing the target picks among the live peers), as long as one
    /// is up. Content rules and cookies are obeyed as they are (they may name this node only).
    pub(super) fn unless_drained(
        &self,
        decision: Decision,
        target: &str,
        now: Instant,
    ) -> Decision {
        let drained = self.cluster.peers[self.cluster.me].drained;
        if decision != Decision::Local || !drained || self.cluster.draining {
            return decision;
        }
        let mut nodes = self.cluster.node_states(now);
        nodes[self.cluster.me].up = false;
        // The policy's "self" must be a live node: the first live peer stands in.
        let Some(stand_in) = nodes.iter().position(|n| n.up) else {
            return decision;
        };
        let view = ClusterView {
            self_index: stand_in,
            ..self.cluster.view(&nodes, now)
        };
        let request = RequestInfo {
            method: "GET",
            target,
            host: None,
        };
        self.decision(baton_policy::Hash.choose(&request, &view))
    }

    /// A policy's answer (an index into the member list) as a decision.
    pub(super) fn decision(&self, choice: usize) -> Decision {
        if choice == self.cluster.me || choice >= self.cluster.peers.len() {
            Decision::Local
        } else {
            Decision::Node(choice)
        }
    }

    /// Places a held connection: served here, or offered to a peer.
    fn decide(&mut self, key: ConnKey, decision: Decision, now: Instant) {
        if let Some(held) = self.fe.held_mut(&key) {
            let since = |t: Instant| now.saturating_duration_since(t).as_secs_f64();
            self.metrics.hold_duration.observe(since(held.since));
            if let Some(complete) = held.head_complete {
                self.metrics.decision_duration.observe(since(complete));
            }
        }
        let Decision::Node(peer) = decision else {
            if self.serve_here_followed(key) {
                return;
            }
            return self.release_local(key, LocalReason::Policy, now);
        };
        if self.standing_down {
            // Another agent takes over: nothing new goes out from this one.
            return self.release_local(key, LocalReason::Shutdown, now);
        }
        if !self.cluster.is_up(peer, now) {
            return self.release_local(key, LocalReason::PeerDown, now);
        }
        let id = self.new_id();
        let Some(FePhase::Held(held)) = self.fe.conns.get(&key).map(|c| &c.phase) else {
            return;
        };
        // Followed from the end of the first request, if it can be: the datapath holds the next
        // head from the moment the client's packets follow the offer.
        let next_head = self.first_follow(held.stream.contiguous(), held.entry.client_isn);
        let Some(request) = handoff_request(id, &key, held, next_head.is_some()) else {
            return self.release_local(key, LocalReason::Internal, now);
        };
        // The client's packets follow the offer: from now on the datapath forwards them. Only a
        // connection still held may switch (a client RST may have just removed it). In FE_HOLD
        // the datapath writes nothing but last_seen_ns, so writing the whole entry loses nothing.
        let client_isn = held.entry.client_isn;
        let entry = self
            .conns
            .get(&key)
            .filter(|e| e.state() == Some(ConnState::FeHold) && e.client_isn == client_isn);
        let Some(mut entry) = entry else {
            self.fe.forget(ConnId { key, client_isn });
            return;
        };
        entry.state = ConnState::FeForward as u8;
        entry.peer_addr = self.cluster.peers[peer].addr.octets();
        entry.handoff_id = id;
        let follow = match next_head {
            Some(next_head) if self.watch_heads(key, next_head, peer, false) => {
                Some(Following::new(entry, next_head))
            }
            _ => None,
        };
        if let Err(e) = self.conns.insert(key, entry, Insert::Existing) {
            tracing::debug!(%key, "connection gone before it was offered: {e}");
            if follow.is_some() {
                self.follow.remove_watch(&key);
            }
            self.fe.forget(ConnId { key, client_isn });
            return;
        }
        if !self.mesh.send(peer, Message::HandoffRequest(request)) {
            if follow.is_some() {
                self.follow.remove_watch(&key);
            }
            return self.release_local(key, LocalReason::PeerDown, now);
        }
        let Some(conn) = self.fe.conns.get_mut(&key) else {
            return;
        };
        let FePhase::Held(held) = std::mem::replace(&mut conn.phase, FePhase::Local) else {
            return;
        };
        conn.phase = FePhase::Offered {
            held,
            peer,
            id,
            since: now,
            follow,
        };
        self.fe.handoffs.insert(id, key);
        let wait = Duration::from_millis(self.config.limits.handoff_timeout_ms);
        self.timers.at(now + wait, Timer::Offer(id));
        self.cluster.assign(peer);
    }

    /// Asks the LARD dispatcher where `target` (of `key`) goes: the question's id, or `None` if
    /// it could not be asked (its configuration differs from ours, or it cannot be reached):
    /// then bounded-hash decides here.
    pub(super) fn ask_dispatcher(
        &mut self,
        key: ConnKey,
        target: &str,
        now: Instant,
    ) -> Option<u64> {
        let dispatcher = self.cluster.dispatcher(now);
        // A dispatcher with another member list would name members by other positions: while
        // a change rolls out, bounded-hash decides here instead of asking it.
        let agrees = self.cluster.peers[dispatcher]
            .config_digest
            .is_none_or(|d| d == self.config_digest);
        let id = self.new_id();
        let query = Message::DispatchQuery {
            id,
            target: target.to_string(),
        };
        if !agrees || !self.mesh.send(dispatcher, query) {
            return None;
        }
        self.fe.asks.insert(id, key);
        let wait = Duration::from_millis(self.config.limits.dispatch_timeout_ms);
        self.timers.at(now + wait, Timer::Dispatch(id));
        Some(id)
    }

    /// The dispatcher's answer for a held connection.
    pub(super) fn on_dispatch_answer(&mut self, peer: usize, id: u64, node: u16, now: Instant) {
        if peer != self.cluster.dispatcher(now) {
            return;
        }
        let Some(key) = self.fe.asks.remove(&id) else {
            return; // too late: the fallback decided already
        };
        if let Some((target, after)) = self.asked_for_next(&key, id) {
            let decision = match self.cluster.member_at_wire(node) {
                Some(index) => self.decision(index),
                None => Decision::Local,
            };
            let decision = self.unless_drained(decision, &target, now);
            return self.place_next(key, decision, after, now);
        }
        let target = self
            .fe
            .held_mut(&key)
            .and_then(|held| held.asking.take())
            .map(|(_, target)| target)
            .unwrap_or_default();
        // By position in the configured list: a member the dispatcher knows and we do not is
        // served here.
        let decision = match self.cluster.member_at_wire(node) {
            Some(index) => self.decision(index),
            None => Decision::Local,
        };
        let decision = self.unless_drained(decision, &target, now);
        self.decide(key, decision, now);
    }

    /// As the dispatcher: decide for a peer with the cluster's one LARD table.
    pub(super) fn on_dispatch_query(&mut self, peer: usize, id: u64, target: &str, now: Instant) {
        let nodes = self.cluster.node_states(now);
        let view = self.cluster.view(&nodes, now);
        let request = RequestInfo {
            method: "GET",
            target,
            host: None,
        };
        let choice = self.router.choose_default(&request, &view);
        self.cluster.assign(choice);
        self.metrics.dispatch_answers.inc();
        let node = self.cluster.wire_index(choice).unwrap_or(u16::MAX);
        self.mesh.send(peer, Message::DispatchAnswer { id, node });
    }

    /// A dispatcher that did not answer in time: decide with bounded-load hashing instead.
    pub(super) fn dispatch_timed_out(&mut self, id: u64, now: Instant) {
        let Some(key) = self.fe.asks.remove(&id) else {
            return;
        };
        let followed = self.asked_for_next(&key, id);
        let target = match &followed {
            Some((target, _)) => Some(target.clone()),
            None => self
                .fe
                .held_mut(&key)
                .and_then(|h| h.asking.take())
                .map(|(_, t)| t),
        };
        let Some(target) = target else {
            return;
        };
        let nodes = self.cluster.node_states(now);
        let view = self.cluster.view(&nodes, now);
        let request = RequestInfo {
            method: "GET",
            target: &target,
            host: None,
        };
        let choice = self.fallback.choose(&request, &view);
        self.metrics.dispatch_fallbacks.inc();
        let decision = self.unless_drained(self.decision(choice), &target, now);
        match followed {
            Some((_, after)) => self.place_next(key, decision, after, now),
            None => self.decide(key, decision, now),
        }
    }

    pub(super) fn hold_expired(&mut self, conn: ConnId, now: Instant) {
        if let Some(FeConn {
            phase: FePhase::Held(held),
            ..
        }) = self.fe.get(conn)
            && held.asking.is_none()
        {
            self.release_local(conn.key, LocalReason::HoldTimeout, now);
        }
    }

    pub(super) fn on_accepted(&mut self, peer: usize, id: u64, now: Instant) {
        if self.fe.is_forwarded(id, peer) {
            return; // said again (a peer's new agent confirming what it adopted)
        }
        let Some(key) = self
            .fe
            .offer(id, peer)
            .or_else(|| self.unread_dp_offer(id, peer, now))
        else {
            // We gave up on it already, or it is not this peer's to accept: it must drop its side.
            self.mesh.send(peer, Message::HandoffAbort { id });
            return;
        };
        let Some(conn) = self.fe.conns.get_mut(&key) else {
            return;
        };
        let follow = match std::mem::replace(&mut conn.phase, FePhase::Local) {
            FePhase::Offered { since, follow, .. } => {
                let took = now.saturating_duration_since(since);
                self.metrics.handoff_duration.observe(took.as_secs_f64());
                follow
            }
            _ => None,
        };
        let next_waits = follow.as_ref().is_some_and(|f| f.held_next().is_some());
        conn.phase = FePhase::Forwarded {
            peer,
            id,
            closed: false,
            follow,
        };
        // Our own TCP still has the half-open connection: a RST only it sees ends it quietly. A
        // datapath offer's is ended by the datapath, as the client acknowledges the BE's bytes
        // (fe_reset_local), or at its expiry if it never did.
        let conn = ConnId {
            key,
            client_isn: conn.client_isn,
        };
        if !is_datapath_offer(id) {
            self.reset_local(conn);
        }
        self.metrics.handoffs_out.inc();
        self.count_for_peer(&self.metrics.peer.handoffs_to, peer);
        // The client's next request came before the answer: decided now.
        if next_waits {
            self.decide_next(conn.key, now);
        }
    }

    pub(super) fn on_refused(&mut self, peer: usize, id: u64, reason: RefuseReason, now: Instant) {
        let Some(key) = self.fe.offer(id, peer) else {
            return;
        };
        self.peer_refused(peer, reason, now);
        self.release_local(key, LocalReason::Refused(reason), now);
    }

    /// A peer refused an offer (a first one or a move's): counted; one without a listener is
    /// not chosen again until its own agent reports one.
    pub(super) fn peer_refused(&mut self, peer: usize, reason: RefuseReason, now: Instant) {
        self.count_for_peer(&self.metrics.peer.refusals, peer);
        if reason == RefuseReason::NoListener {
            self.cluster.peers[peer].serving = false;
            self.write_datapath_config(now);
        }
    }

    /// An offer without an answer: the peer may still go live, but only within half the wait
    /// (its own deadline), so serving it here is safe now; the peer is told to drop its side.
    pub(super) fn offer_unanswered(&mut self, id: u64, now: Instant) {
        let Some(&key) = self.fe.handoffs.get(&id) else {
            return;
        };
        let Some(FePhase::Offered { peer, id: i, .. }) = self.fe.conns.get(&key).map(|c| &c.phase)
        else {
            return;
        };
        if *i != id {
            return;
        }
        let peer = *peer;
        // A datapath offer goes live at the peer without its agent: if the client has
        // acknowledged the peer's data, the peer has it, whatever its agent says (or does not);
        // if the entry is gone or another connection's (the client reused the port), this one
        // ended where it was: the client closed it only after its answer.
        if is_datapath_offer(id) {
            let live = baton_bpf::conn_flags::DP_LIVE;
            let entry = self.conns.get(&key).filter(|e| e.handoff_id == id);
            if entry.is_none_or(|e| e.flags & live != 0) {
                tracing::debug!(%key, peer, "datapath offer unanswered, but the peer has it: handed off");
                return self.on_accepted(peer, id, now);
            }
        }
        if is_datapath_offer(id) {
            self.fe.given_up.insert(id);
        }
        self.mesh.send(peer, Message::HandoffAbort { id });
        self.release_local(key, LocalReason::Timeout, now);
    }

    /// The BE reports the handed-off connection closed: its entry goes after a linger.
    pub(super) fn on_conn_closed(&mut self, peer: usize, id: u64, now: Instant) {
        let Some(&key) = self.fe.handoffs.get(&id) else {
            return;
        };
        // Closed with a request held or a move under way: it goes to the node that had it.
        tracing::debug!(%key, peer, id, "the serving node reports the connection closed");
        self.end_following(key, now);
        let Some(conn) = self.fe.conns.get_mut(&key) else {
            return;
        };
        if let FePhase::Forwarded {
            peer: p, closed, ..
        } = &mut conn.phase
            && *p == peer
        {
            *closed = true;
            let conn = ConnId {
                key,
                client_isn: conn.client_isn,
            };
            let linger = Duration::from_millis(self.config.limits.close_linger_ms);
            self.timers.at(now + linger, Timer::Expire(conn));
        }
    }

    pub(super) fn expire_forwarded(&mut self, conn: ConnId) {
        if let Some(FePhase::Forwarded { follow, .. }) = self.fe.get(conn).map(|c| &c.phase) {
            let current = self.conns.get(&conn.key);
            // The client may have reused its port meanwhile: the tuple's entry and watch are then
            // its new connection's (the datapath writes a followed one's watch itself).
            let reused = current.is_some_and(|e| e.client_isn != conn.client_isn);
            if follow.is_some() && !reused {
                self.follow.remove_watch(&conn.key);
            }
            if let Some(entry) = current.filter(|_| !reused) {
                self.conns.remove(&conn.key);
                self.reset_half_open_offer(conn, &entry);
            }
            self.fe.forget(conn);
        }
    }

    /// A datapath offer whose client never acknowledged the BE's bytes kept our TCP's half-open
    /// side (the datapath ends it only then): ended now, as the entry goes.
    pub(super) fn reset_half_open_offer(&self, conn: ConnId, entry: &Conn) {
        let dp = baton_bpf::conn_flags::DP_OFFER | baton_bpf::conn_flags::DP_LIVE;
        if entry.role() == Some(ConnRole::Fe) && entry.flags & dp == baton_bpf::conn_flags::DP_OFFER
        {
            self.reset_local(conn);
        }
    }

    /// Serves a held or offered connection here: the datapath forgets it, the held bytes are
    /// replayed into our TCP (their first segment completes the handshake).
    pub(super) fn release_local(&mut self, key: ConnKey, reason: LocalReason, now: Instant) {
        let Some(conn) = self.fe.conns.get_mut(&key) else {
            return;
        };
        let client_isn = conn.client_isn;
        let (held, offered_to, follow) = match std::mem::replace(&mut conn.phase, FePhase::Local) {
            FePhase::Held(held) => (held, None, None),
            FePhase::Offered {
                held,
                peer,
                id,
                follow,
                ..
            } => {
                self.fe.handoffs.remove(&id);
                (held, Some(peer), follow)
            }
            other => {
                conn.phase = other;
                return;
            }
        };
        if let Some((id, _)) = &held.asking {
            self.fe.asks.remove(id);
        }
        match offered_to {
            Some(peer) => self.cluster.unassign(peer),
            None => self.cluster.assign(self.cluster.me),
        }
        // Only this connection's entry: the client may have reused the port by now.
        self.remove_entry(ConnId { key, client_isn });
        if let Some(template) = &held.template {
            let segments = packets::client_segments(
                template,
                *key.local().ip(),
                held.stream.base(),
                held.entry.local_isn.wrapping_add(1),
                held.stream.contiguous(),
                held.stream.finished(),
                LOCAL_CHUNK + 100,
            );
            for packet in segments {
                self.send(&packet);
            }
            // What the client sent after its first request, held for following: it comes next.
            if let Some((stream, next_template)) = follow.as_ref().and_then(|f| f.held_next()) {
                let segments = packets::client_segments(
                    next_template,
                    *key.local().ip(),
                    stream.base(),
                    held.entry.local_isn.wrapping_add(1),
                    stream.contiguous(),
                    stream.finished(),
                    LOCAL_CHUNK + 100,
                );
                for packet in segments {
                    self.send(&packet);
                }
            }
        }
        if follow.is_some() {
            self.follow.remove_watch(&key);
        }
        let conn = ConnId { key, client_isn };
        self.timers.at(now + LOCAL_MEMORY, Timer::ForgetLocal(conn));
        self.metrics.local.inc();
        if reason != LocalReason::Policy {
            let label = reason.label();
            self.metrics.fallbacks.count(label);
            tracing::debug!(%key, reason = label, "served locally");
        }
    }
}

impl Engine {
    /// Serves a held connection here and follows its later requests (they may move it away):
    /// the datapath's entry becomes a translating one at offset zero (what our TCP sends goes
    /// through the response count), and the held bytes are replayed into our TCP. False if the
    /// connection cannot be followed (then it is served here unfollowed).
    fn serve_here_followed(&mut self, key: ConnKey) -> bool {
        let Some(FePhase::Held(held)) = self.fe.conns.get(&key).map(|c| &c.phase) else {
            return false;
        };
        if self.standing_down {
            return false;
        }
        let Some(next_head) = self.first_follow(held.stream.contiguous(), held.entry.client_isn)
        else {
            return false;
        };
        let (client_isn, local_isn) = (held.entry.client_isn, held.entry.local_isn);
        let still_held = self
            .conns
            .get(&key)
            .is_some_and(|e| e.state() == Some(ConnState::FeHold) && e.client_isn == client_isn);
        if !still_held {
            return false;
        }
        let id = self.new_id();
        let mut entry = Conn::new_be(self.my_addr, client_isn, monotonic_ns());
        entry.state = ConnState::BeEstablished as u8;
        entry.local_isn = local_isn;
        entry.handoff_id = id;
        if self
            .follow
            .start_responses(key, local_isn.wrapping_add(1))
            .is_err()
        {
            return false;
        }
        // In FE_HOLD the datapath writes nothing but last_seen_ns: the whole entry is ours.
        if !self.watch_heads(key, next_head, self.cluster.me, false)
            || self.conns.insert(key, entry, Insert::Existing).is_err()
        {
            self.follow.remove_responses(&key);
            self.follow.remove_watch(&key);
            return false;
        }
        let me = self.cluster.me;
        let Some(conn) = self.fe.conns.get_mut(&key) else {
            return false;
        };
        let FePhase::Held(held) = std::mem::replace(&mut conn.phase, FePhase::Local) else {
            return false;
        };
        conn.phase = FePhase::Forwarded {
            peer: me,
            id,
            closed: false,
            follow: Some(Following::new(held.entry, next_head)),
        };
        self.fe.handoffs.insert(id, key);
        self.be.serve_here(key, me, id, client_isn);
        if let Some(template) = &held.template {
            let segments = packets::client_segments(
                template,
                *key.local().ip(),
                held.stream.base(),
                local_isn.wrapping_add(1),
                held.stream.contiguous(),
                held.stream.finished(),
                LOCAL_CHUNK + 100,
            );
            for packet in segments {
                self.send(&packet);
            }
        }
        self.cluster.assign(me);
        self.metrics.local.inc();
        true
    }
}

impl Engine {
    /// The datapath served a first request here and follows the connection (hash, the request
    /// hashed here: `DecideMode::HashStays`), as [`Engine::serve_here_followed`] would have: the
    /// agent's side of it, from the FE entry the notice carries.
    pub(super) fn on_dp_followed_here(&mut self, event: &Event) {
        let Some(entry) = Conn::from_event(&event.packet) else {
            self.metrics.malformed_events.inc();
            return;
        };
        let (key, id, me) = (event.key, event.handoff_id, self.cluster.me);
        // Read late (a notice outlives its connection, or an agent): only the connection the
        // table still has is taken on, as the datapath turned it (or is turning it) into ours.
        let current = self.conns.get(&key);
        let ours = current.is_some_and(|e| {
            e.client_isn == entry.client_isn
                && match (e.role(), e.state()) {
                    (Some(ConnRole::Be), Some(ConnState::BeEstablished)) => e.handoff_id == id,
                    (Some(ConnRole::Fe), Some(ConnState::FeHold)) => {
                        e.flags & baton_bpf::conn_flags::AGENT_HOLDS == 0
                    }
                    _ => false,
                }
        });
        if !ours {
            if current.is_none() {
                self.follow.remove_responses(&key);
                self.follow.remove_watch(&key);
            }
            return;
        }
        let watched = self.datapath_watches(&key, event.detail);
        // Whatever was known of an earlier connection on the tuple is over.
        if let Some(old) = self.fe.conns.get(&key).map(|c| c.client_isn) {
            self.fe.forget(ConnId {
                key,
                client_isn: old,
            });
        }
        self.fe.conns.insert(
            key,
            FeConn {
                client_isn: entry.client_isn,
                phase: FePhase::Forwarded {
                    peer: me,
                    id,
                    closed: false,
                    follow: watched.then(|| Following::new(entry, event.detail)),
                },
            },
        );
        self.fe.handoffs.insert(id, key);
        self.be.serve_here(key, me, id, entry.client_isn);
        self.cluster.assign(me);
        self.metrics.local.inc();
    }
}

/// The offer for a held connection: its SYN rebuilt from what the datapath recorded, our ISN,
/// SYN-ACK options and ECN, the client's latest segment headers and its bytes so far.
fn handoff_request(id: u64, key: &ConnKey, held: &Held, follow: bool) -> Option<HandoffRequest> {
    let e = &held.entry;
    let template = held.template.as_ref()?;
    let mut segment = template.clone();
    segment.seq = held.stream.base();
    segment.ack = e.local_isn.wrapping_add(1);
    segment.flags = TcpFlags::ACK;
    // The client echoes the TSval of the SYN-ACK it accepted: the BE's clock is translated to
    // continue from there, so the client's PAWS check never sees time run backwards and the BE
    // sees its own SYN-ACK's TSval echoed (Linux rejects a handshake ACK whose TSecr is outside
    // the TSvals its SYN-ACKs carried).
    let fe_tsval = packets::echoed_tsval(template).unwrap_or(0);
    Some(HandoffRequest {
        id,
        client: key.client(),
        fe_service: key.local(),
        fe_isn: e.local_isn,
        fe_tsval,
        fe_synack_options: e.synack_options().to_vec(),
        fe_ecn: TcpFlags(e.synack_tcp_flags).contains(TcpFlags::ECE),
        syn: packets::client_syn(key, e)?,
        segment: segment.try_build().ok()?,
        data: held.stream.contiguous().to_vec(),
        fin: held.stream.finished(),
        follow,
    })
}

/// Whether `id` is a datapath offer's (`lib/offer.h` sets its high bit; the agents' have it clear).
fn is_datapath_offer(id: u64) -> bool {
    id >> 63 == 1
}

impl Engine {
    /// Whether the datapath follows `key`'s requests with the watch it wrote when it placed the
    /// connection with the next head at `next_head` (told in its notice): the watch is there, at
    /// that head or past it (requests it let stay since, whose notices come next). A new agent
    /// adopting the table removed the watches: then the connection is not followed.
    fn datapath_watches(&self, key: &ConnKey, next_head: u32) -> bool {
        self.follow.watch(key).is_some_and(|w| {
            w.flags & baton_bpf::watch_flags::HEADS != 0
                && SeqNumber(w.next_head_seq).ge(SeqNumber(next_head))
        })
    }
}

/// Handoffs the datapath offered itself (`lib/offer.h`): the agent learns of them after the fact
/// and keeps them as offers of its own, with nothing held to replay (the client still owes the
/// FE its request: its retransmission reaches our TCP once the entry is gone).
impl Engine {
    /// The datapath offered `key` to a peer: an offer out, answered by the peer's agent or timed
    /// out, like any other.
    pub(super) fn on_dp_offered(&mut self, key: ConnKey, id: u64, next_head: u32, now: Instant) {
        let entry = self.conns.get(&key).filter(|e| {
            e.state() == Some(ConnState::FeForward)
                && e.flags & baton_bpf::conn_flags::DP_OFFER != 0
                && (id == 0 || e.handoff_id == id)
        });
        let Some(entry) = entry else {
            // Read late, after the client's next connection on the tuple took the entry (or
            // after it went): its answer, when it comes, is for an offer given up. Unknown, it
            // would cost a walk through the whole table (a notice lost), which made a slowed
            // agent slower until it fell behind for good.
            if is_datapath_offer(id) {
                self.fe.given_up.insert(id);
            }
            return;
        };
        let addr = std::net::Ipv4Addr::from(entry.peer_addr);
        let Some(peer) = self.cluster.peers.iter().position(|p| p.addr == addr) else {
            return;
        };
        if let Some(known) = self.fe.conns.get(&key).map(|c| c.client_isn) {
            // The client's earlier connection on the tuple is over.
            self.fe.forget(ConnId {
                key,
                client_isn: known,
            });
        }
        let id = entry.handoff_id;
        let followed = entry.flags & baton_bpf::conn_flags::FOLLOWED != 0
            && self.datapath_watches(&key, next_head);
        let held = Held::new(entry, now);
        self.fe.conns.insert(
            key,
            FeConn {
                client_isn: entry.client_isn,
                phase: FePhase::Offered {
                    held,
                    peer,
                    id,
                    since: now,
                    follow: followed.then(|| Following::new(entry, next_head)),
                },
            },
        );
        self.fe.handoffs.insert(id, key);
        let wait = Duration::from_millis(self.config.limits.handoff_timeout_ms);
        self.timers.at(now + wait, Timer::Offer(id));
        self.cluster.assign(peer);
    }

    /// A datapath offer whose client acknowledged bytes only the BE can have sent (`DP_LIVE`) is
    /// the BE's, whatever its agent has said yet (it hears of it quietly, and answers at its next
    /// wakeup): taken as accepted, so that the followed connection's next request is decided
    /// now. The BE's Accepted, when it comes, says it again.
    pub(super) fn accept_if_proven_live(&mut self, key: ConnKey, now: Instant) {
        let Some(&FePhase::Offered { peer, id, .. }) = self.fe.conns.get(&key).map(|c| &c.phase)
        else {
            return;
        };
        let live = baton_bpf::conn_flags::DP_LIVE;
        if is_datapath_offer(id)
            && self
                .conns
                .get(&key)
                .is_some_and(|e| e.handoff_id == id && e.flags & live != 0)
        {
            self.on_accepted(peer, id, now);
        }
    }

    /// An Accepted for an id this agent does not know may be for a datapath offer whose notice
    /// it never read (its ring was full): the datapath's table knows it. Taken on as offered.
    /// Not one given up on: a look through the whole table is for notices lost, rare; late
    /// answers come in bursts when the agents are slow, and must not make them slower.
    fn unread_dp_offer(&mut self, id: u64, peer: usize, now: Instant) -> Option<ConnKey> {
        if !is_datapath_offer(id) || self.fe.given_up.contains(id) {
            return None;
        }
        let addr = self.cluster.peers.get(peer)?.addr.octets();
        let (key, _) = self.conns.entries().into_iter().find(|(_, e)| {
            e.handoff_id == id
                && e.peer_addr == addr
                && e.state() == Some(ConnState::FeForward)
                && e.flags & baton_bpf::conn_flags::DP_OFFER != 0
        })?;
        let next_head = self.follow.watch(&key).map_or(0, |w| w.next_head_seq);
        self.on_dp_offered(key, id, next_head, now);
        self.fe.offer(id, peer)
    }

    /// A datapath offer came back refused by `from` (`code`: its reason). The datapath served it
    /// here already, or, for a tuple in use at the peer, holds it for this agent: then its held
    /// packet follows this notice and it is decided afresh. The refusal can come back before this
    /// agent has read the offer's own notice (whose entry is then gone): it counts all the same.
    pub(super) fn on_dp_returned(
        &mut self,
        key: ConnKey,
        code: u32,
        from: std::net::Ipv4Addr,
        now: Instant,
    ) {
        let Some(peer) = self.cluster.peers.iter().position(|p| p.addr == from) else {
            return;
        };
        let reason = u8::try_from(code)
            .ok()
            .and_then(|c| RefuseReason::try_from(c).ok())
            .unwrap_or(RefuseReason::Internal);
        if let Some(FePhase::Offered { peer: p, id, .. }) =
            self.fe.conns.get(&key).map(|c| &c.phase)
            && *p == peer
        {
            let id = *id;
            self.fe.handoffs.remove(&id);
            self.fe.conns.remove(&key);
            self.cluster.unassign(peer);
        }
        self.peer_refused(peer, reason, now);
        tracing::debug!(%key, peer, reason = reason.label(), "datapath offer refused");
        if reason != RefuseReason::Collision {
            self.metrics.local.inc();
            self.metrics
                .fallbacks
                .count(LocalReason::Refused(reason).label());
        }
    }
}
