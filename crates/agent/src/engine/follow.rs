//! FE: a placed keep-alive connection followed request by request (`[policy] per_request`).
//!
//! Once a connection is offered to a peer, the FE's datapath holds the client's data from where
//! the next request head starts (`watch`): the agent reads that head, decides it on its own and
//! either lets it go where the connection is (**stays**) or **moves** the connection there:
//!
//! 1. **Quiescing**: the serving node is given the client's latest ACK and asked whether the
//!    connection is quiet: every response it owes complete, sent, acknowledged, and everything
//!    the client sent read (`MoveQuiesce`). If it is, it freezes: nothing its TCP sends leaves
//!    (`MoveQuiet`); otherwise the request stays (`MoveBusy`).
//! 2. **Offered**: the new node gets a handoff whose replayed handshake continues the client's
//!    stream: the SYN's sequence number is the next request's minus one, the server's side is
//!    offset to continue at the client's ACK and its clock at the TSval the client last echoed, the
//!    client's original SYN options; then the held request. The datapath forwards the client's
//!    packets to the new node from now on.
//! 3. The new node accepts: the old one is told to end its TCP's side quietly (`MoveRelease`).
//!    It refuses, or does not answer: the datapath forwards to the old node again, which is told
//!    to go on (`MoveResume`), and the request goes there.
//!
//! Nothing is lost: until the new node accepts, the old one keeps the connection, frozen; every
//! failure serves the request where the connection was (its request rides on the resume). Every
//! word about a move names it (its id is the new node's handoff id), so a late answer to an
//! attempt given up is not taken for the next one's; a move whose offer is out is never cut
//! short. This node is a node like any other: a connection it serves itself is followed through
//! a translating entry at offset zero, and moves back to it by a replay into its own TCP.
//!
//! With LARD (when `per_request = true`) each followed request asks the cluster's dispatcher, as a
//! first request does.
//!
//! After a request with a chunked body, a HEAD, a last request (`Connection: close`, HTTP/1.0),
//! following ends (that request may still move); Upgrade and CONNECT never move; a head that
//! does not parse or complete, or pipelined requests, end following where the connection is.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use baton_bpf::{Conn, ConnKey, ConnRole, ConnState, Event, Watch, conn_flags};
use baton_http::{Framing, Persistence, RequestHead, Sniff};
use baton_policy::{RequestInfo, RoutedRequest};
use baton_proto::{BusyReason, HandoffRequest, Message, RefuseReason};
use baton_wire::{
    SeqNumber, TcpFlags, TcpPacketBuilder, Translation, rewrite_dst_addr, translate_to_server,
};

use super::fe::FePhase;
use super::packets;
use super::timers::{ConnId, Timer};
use super::{Decision, Engine};
use crate::hold::StreamAssembler;
use crate::kernel::Insert;

/// Largest packet the FE sends toward a peer on a client's behalf (the lab's and most cluster
/// networks' MTU).
const PEER_MTU: usize = 1500;

/// What the FE keeps of a connection it follows.
pub(super) struct Following {
    /// The datapath's entry when the connection was first held: the client's SYN options and
    /// ours, replayed at every move.
    entry: Conn,
    /// Client sequence number where the next request head starts.
    next_head: u32,
    /// Requests the serving node has been given since it took the connection.
    requests: u32,
    moves: u32,
    /// The next request, once its first bytes are held.
    next: Option<Box<NextRequest>>,
}

impl Following {
    pub fn new(entry: Conn, next_head: u32) -> Box<Self> {
        Box::new(Following {
            entry,
            next_head,
            requests: 1,
            moves: 0,
            next: None,
        })
    }

    /// The next request's bytes held so far, and its headers, for whoever serves it.
    pub fn held_next(&self) -> Option<(&StreamAssembler, &TcpPacketBuilder)> {
        let next = self.next.as_deref()?;
        Some((&next.stream, next.template.as_ref()?))
    }

    pub fn is_moving(&self) -> bool {
        self.move_id().is_some()
    }

    /// The new node's handoff id, while the connection moves.
    pub fn move_id(&self) -> Option<u64> {
        Some(self.next.as_ref()?.moving.as_ref()?.id)
    }
}

pub(super) struct NextRequest {
    stream: StreamAssembler,
    template: Option<TcpPacketBuilder>,
    segments: usize,
    moving: Option<Move>,
    /// When its first bytes were held: its head must be complete within `hold_ms`.
    since: Instant,
    /// A question to the LARD dispatcher about it, while out: its id, the target, the head's
    /// framing.
    asking: Option<(u64, String, After)>,
}

impl NextRequest {
    fn new(base: u32, since: Instant) -> Box<Self> {
        Box::new(NextRequest {
            stream: StreamAssembler::new(base, baton_proto::MAX_HANDOFF_DATA_LEN),
            template: None,
            segments: 0,
            moving: None,
            since,
            asking: None,
        })
    }

    /// Adds a held client segment; its headers become the template.
    fn add(&mut self, segment: TcpPacketBuilder) {
        self.stream.add(
            segment.seq,
            &segment.payload,
            segment.flags.contains(TcpFlags::FIN),
        );
        self.segments += 1;
        let mut template = segment;
        template.payload.clear();
        self.template = Some(template);
    }
}

struct Move {
    to: usize,
    /// The new node's handoff id, and the move's own in every word about it: an answer to an
    /// earlier attempt is told apart.
    id: u64,
    /// The client's ACK and echoed TSval the serving node was quiesced with: where the new
    /// node's side starts.
    ack: u32,
    tsecr: u32,
    /// Following ends with this move (the connection closes or the agent stops): its answer is
    /// still awaited, never cut short once the offer is out (the new node may be live).
    ending: bool,
    /// The offer went out (the datapath forwards to `to`).
    offered: bool,
    /// Where the request after this one starts, relative to this one's head (None: following
    /// ends with this request).
    after: Option<u32>,
    /// The translating entry the move replaced (this node served the connection): put back if
    /// the move does not happen.
    restore: Option<Conn>,
    /// The request after this one, arrived before the new node's answer (its response already
    /// came from the new node): decided once the move is over.
    later: Option<Box<NextRequest>>,
    decided: Instant,
    /// The current stage ends by then: the serving node's answer, then the new node's (armed
    /// when the offer goes, so the new node's own deadline, half the wait, is always over first).
    deadline: Instant,
}

/// What a request's head says for following: whether the connection may move for it, and where
/// the next request starts, counted from this head's first byte (None: nothing can be followed
/// after it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct After {
    pub movable: bool,
    pub next: Option<u32>,
}

pub(super) fn after(head: &RequestHead) -> After {
    let persistence = Persistence::of(head);
    let movable = !matches!(persistence, Persistence::Upgrade | Persistence::Connect);
    // A response to HEAD announces a length it does not carry: the serving node could not find
    // the next response, so nothing after a HEAD is followed.
    let continues = persistence.carries_next_request() && head.method != "HEAD";
    let next = match Framing::of(head) {
        Framing::NoBody => u32::try_from(head.head_len).ok(),
        Framing::Length(n) => u64::try_from(head.head_len)
            .ok()
            .and_then(|h| h.checked_add(n))
            .filter(|len| *len < 1 << 30)
            .map(|len| len as u32),
        Framing::Chunked => None,
    };
    After {
        movable,
        next: next.filter(|_| continues),
    }
}

/// Why a request the policy wanted elsewhere was served where its connection was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StayReason {
    Busy(BusyReason),
    Refused(RefuseReason),
    Timeout,
    PeerDown,
    MoveLimit,
    NotMovable,
    /// The request after it came before it was answered.
    Pipelined,
    Internal,
}

impl StayReason {
    fn label(self) -> String {
        match self {
            StayReason::Busy(r) => format!("busy_{}", r.label()),
            StayReason::Refused(r) => format!("refused_{}", r.label()),
            StayReason::Timeout => "timeout".into(),
            StayReason::PeerDown => "peer_down".into(),
            StayReason::MoveLimit => "move_limit".into(),
            StayReason::NotMovable => "not_movable".into(),
            StayReason::Pipelined => "pipelined".into(),
            StayReason::Internal => "internal".into(),
        }
    }
}

impl Engine {
    /// Where a placed connection's next request head starts, if it may be followed: the first
    /// request's head is complete in `data` and nothing beyond it came (pipelined bytes are not
    /// followed).
    pub(super) fn first_follow(&self, data: &[u8], client_isn: u32) -> Option<u32> {
        if !self.follows_requests {
            return None;
        }
        let Sniff::Complete(head) = baton_http::sniff(data, &self.head_limits) else {
            return None;
        };
        let len = after(&head).next?;
        if data.len() > len as usize {
            return None;
        }
        Some(client_isn.wrapping_add(1).wrapping_add(len))
    }

    /// Tells the datapath to hold `key`'s client data from `next_head` on, the connection being
    /// on the member `node` (the datapath may let a request that the policy gives to it stay
    /// there: `DecideMode::HashStays`, unless `agent_holds`: bytes from there on are held here
    /// already, and only the agent decides them); false if it would not.
    pub(super) fn watch_heads(
        &mut self,
        key: ConnKey,
        next_head: u32,
        node: usize,
        agent_holds: bool,
    ) -> bool {
        let mut watch = Watch::heads_at(next_head, node);
        if agent_holds {
            watch.flags |= baton_bpf::watch_flags::AGENT_HEAD;
        }
        match self.follow.set_watch(key, watch) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(%key, "watch: {e}");
                false
            }
        }
    }

    /// A followed request that the datapath let go on to where its connection is (its head
    /// hashed there: `DecideMode::HashStays`): the serving node has one more request to answer,
    /// and the next head starts at `next_head`. The datapath decides none while the agent holds
    /// a head of the connection, and its notice is read before the next hold.
    pub(super) fn on_next_head_stayed(&mut self, key: ConnKey, next_head: u32) {
        let Some((_, f)) = self.fe.following_mut(&key) else {
            return;
        };
        f.requests += 1;
        if f.next.is_none() {
            f.next_head = next_head;
        }
        self.metrics.requests_stayed.inc();
    }

    /// A client segment the datapath held because it carries a followed connection's next
    /// request head (or what follows it).
    pub(super) fn on_next_head(&mut self, event: Event, now: Instant) {
        let key = event.key;
        let Some(segment) = packets::parse_captured(&event.packet, event.pkt_len) else {
            self.metrics.malformed_events.inc();
            return;
        };
        let mut packet = event.packet;
        packets::fill_checksums(&mut packet);
        let Some(conn) = self.fe.conns.get_mut(&key) else {
            // Nothing followed here (a watch left behind): it goes where the connection is.
            tracing::debug!(%key, "a next head for a connection this agent does not know");
            self.follow.remove_watch(&key);
            self.send_unknown(key, &mut packet);
            return;
        };
        let client_isn = conn.client_isn;
        let (peer, follow) = match &mut conn.phase {
            FePhase::Offered { peer, follow, .. } => (*peer, follow),
            FePhase::Forwarded {
                peer,
                follow,
                closed: false,
                ..
            } => (*peer, follow),
            _ => {
                // Not followed any more: the packet goes where the connection is.
                tracing::debug!(%key, "a next head for a connection no longer followed");
                self.follow.remove_watch(&key);
                self.send_unknown(key, &mut packet);
                return;
            }
        };
        let Some(f) = follow.as_deref_mut() else {
            tracing::debug!(%key, "a next head for a connection not followed");
            self.follow.remove_watch(&key);
            let to = self.cluster.peers[peer].addr;
            self.send_to(key, &mut packet, to);
            return;
        };
        let end = segment
            .seq
            .wrapping_add(segment.payload.len() as u32)
            .wrapping_add(u32::from(segment.flags.contains(TcpFlags::FIN)));
        // Entirely before the next head: held before the datapath learned the new boundary.
        if SeqNumber(end).distance(SeqNumber(f.next_head)) <= 0 {
            let to = self.cluster.peers[peer].addr;
            self.send_to(key, &mut packet, to);
            return;
        }
        let next_head = f.next_head;
        if let Some(m) = f.next.as_mut().and_then(|n| n.moving.as_mut())
            && m.offered
        {
            let end = m.after.map(|len| next_head.wrapping_add(len));
            match end {
                // The next request already: the new node answered this one before its
                // acceptance reached us. Held until the move is over, then decided.
                Some(end) if SeqNumber(segment.seq).distance(SeqNumber(end)) >= 0 => {
                    m.later
                        .get_or_insert_with(|| NextRequest::new(end, now))
                        .add(segment);
                }
                _ => {
                    // This request's bytes (a body), or its end and more in one segment
                    // (following ends after the move): the new node joins them to the replay.
                    if end.is_some_and(|end| {
                        SeqNumber(end).distance(SeqNumber(segment.seq)) > 0
                            && SeqNumber(segment.seq.wrapping_add(segment.payload.len() as u32))
                                .distance(SeqNumber(end))
                                > 0
                    }) {
                        m.after = None;
                    }
                    let to = self.cluster.peers[m.to].addr;
                    // Kept too: should the move not happen, the serving node gets it all.
                    if let Some(next) = f.next.as_mut() {
                        next.add(segment);
                    }
                    self.send_to(key, &mut packet, to);
                }
            }
            return;
        }
        if SeqNumber(segment.seq).distance(SeqNumber(f.next_head)) < 0 {
            // The previous request's bytes and the next head in one segment: pipelined, or a
            // body longer than announced. It stays where it is, unfollowed from now on.
            let to = self.cluster.peers[peer].addr;
            if f.is_moving() {
                // Still quiescing (an offered move returned above): called off.
                self.call_off_move(key, StayReason::Pipelined);
            } else {
                self.stay_instead(key, None, StayReason::Pipelined);
            }
            self.unfollow(key);
            self.send_to(key, &mut packet, to);
            return;
        }
        let first = f.next.is_none();
        let next = f
            .next
            .get_or_insert_with(|| NextRequest::new(next_head, now));
        next.add(segment);
        let deciding = next.moving.is_none() && next.asking.is_none();
        let placed = matches!(conn.phase, FePhase::Forwarded { .. });
        if first {
            self.arm_next_hold(ConnId { key, client_isn }, now);
        }
        // While the first offer (or the dispatcher's answer) is out, the next request waits;
        // but a datapath offer the client's ACKs prove live is placed already.
        if deciding && placed {
            self.decide_next(key, now);
        } else if deciding {
            self.accept_if_proven_live(key, now);
        }
    }

    /// The followed connection's next request, if its head is complete: where it goes.
    pub(super) fn decide_next(&mut self, key: ConnKey, now: Instant) {
        let Some((_, f)) = self.fe.following_mut(&key) else {
            return;
        };
        let Some(next) = f.next.as_deref() else {
            return;
        };
        let head = match baton_http::sniff(next.stream.contiguous(), &self.head_limits) {
            Sniff::Complete(head) => head,
            Sniff::Invalid(reason) => return self.stay(key, None, Some(reason.as_str())),
            Sniff::Incomplete => {
                if next.stream.finished() || next.segments >= self.config.limits.hold_segments {
                    return self.stay(key, None, Some("incomplete_head"));
                }
                return;
            }
        };
        let after = after(&head);
        if let Some(len) = after.next
            && next.stream.contiguous().len() > len as usize
        {
            // The request after it is already here: pipelined, not followed.
            return self.stay(key, None, Some("pipelined"));
        }
        // `None` (LARD): the dispatcher's answer, or its silence, places it.
        if let Some(decision) = self.decide_request(key, &head, after, now) {
            self.place_next(key, decision, after, now);
        }
    }

    /// Where the followed connection's next request goes, decided: it stays or moves.
    pub(super) fn place_next(
        &mut self,
        key: ConnKey,
        decision: Decision,
        after: After,
        now: Instant,
    ) {
        let Some((peer, f)) = self.fe.following_mut(&key) else {
            return;
        };
        if f.next.as_ref().is_none_or(|n| n.moving.is_some()) {
            return;
        }
        if let Some(next) = f.next.as_mut() {
            next.asking = None;
        }
        let moves = f.moves;
        let to = match decision {
            Decision::Node(to) => to,
            Decision::Local => self.cluster.me,
        };
        if to == peer {
            return self.stay(key, after.next, None);
        }
        if !after.movable {
            return self.stay_instead(key, None, StayReason::NotMovable);
        }
        if moves >= self.config.limits.moves_per_connection {
            return self.stay_instead(key, after.next, StayReason::MoveLimit);
        }
        if !self.cluster.is_up(to, now) || self.standing_down {
            return self.stay_instead(key, after.next, StayReason::PeerDown);
        }
        self.start_move(key, to, after.next, now);
    }

    /// The policy's decision for a later request of a followed connection: content rules and
    /// cookies first, then the default policy; with LARD the cluster's dispatcher is asked, as for
    /// a first request (`None`: the question is out, its answer or its timeout goes on).
    fn decide_request(
        &mut self,
        key: ConnKey,
        head: &RequestHead,
        after: After,
        now: Instant,
    ) -> Option<Decision> {
        let nodes = self.cluster.node_states(now);
        let view = self.cluster.view(&nodes, now);
        let info = RequestInfo {
            method: &head.method,
            target: &head.target,
            host: head.host.as_deref(),
        };
        let routed = RoutedRequest {
            info,
            cookies: &head.cookies,
        };
        if let Some(choice) = self.router.route_fixed(&routed, &view) {
            return Some(self.decision(choice));
        }
        if self.dispatching && self.cluster.dispatcher(now) != self.cluster.me {
            if let Some(id) = self.ask_dispatcher(key, &head.target, now) {
                if let Some(next) = self
                    .fe
                    .following_mut(&key)
                    .and_then(|(_, f)| f.next.as_deref_mut())
                {
                    next.asking = Some((id, head.target.clone(), after));
                }
                return None;
            }
            let choice = baton_policy::Policy::choose(&mut self.fallback, &info, &view);
            self.metrics.dispatch_fallbacks.inc();
            return Some(self.unless_drained(self.decision(choice), &head.target, now));
        }
        let choice = self.router.choose_default(&info, &view);
        Some(self.unless_drained(self.decision(choice), &head.target, now))
    }

    /// The LARD dispatcher's question `id` for a followed connection's next request, if it is
    /// one: the request's target and what its head said.
    pub(super) fn asked_for_next(&mut self, key: &ConnKey, id: u64) -> Option<(String, After)> {
        let (_, f) = self.fe.following_mut(key)?;
        let next = f.next.as_deref_mut()?;
        match next.asking.take() {
            Some((asked, target, after)) if asked == id => Some((target, after)),
            other => {
                next.asking = other;
                None
            }
        }
    }

    fn stay_instead(&mut self, key: ConnKey, after: Option<u32>, reason: StayReason) {
        self.metrics.rehandoff_fallbacks.count(&reason.label());
        self.stay(key, after, None);
    }

    /// The held next request goes where the connection is; following goes on after it (from
    /// `after` bytes past its head) or ends (`None`, and `stop` says why, for the log).
    fn stay(&mut self, key: ConnKey, after: Option<u32>, stop: Option<&str>) {
        self.stay_by(key, after, stop, None, false);
    }

    /// As [`Engine::stay`]; with `resume` (the serving node's handoff id and the move's), the
    /// request goes in the serving node's MoveResume instead, which replays it once its TCP may
    /// speak again (sent on its own, it would reach a TCP still frozen, whose answer would wait
    /// for a retransmission).
    /// `holds_later`: the agent holds what the client sent after the request too.
    fn stay_by(
        &mut self,
        key: ConnKey,
        after: Option<u32>,
        stop: Option<&str>,
        resume: Option<(u64, u64)>,
        holds_later: bool,
    ) {
        let Some((peer, f)) = self.fe.following_mut(&key) else {
            return;
        };
        let Some(next) = f.next.take() else {
            if let Some((id, attempt)) = resume {
                self.tell(peer, resume_message(id, attempt, None));
            }
            return;
        };
        f.requests += 1;
        let next_head = after.map(|len| f.next_head.wrapping_add(len));
        if let Some(next_head) = next_head {
            f.next_head = next_head;
        }
        if let Some(reason) = stop {
            tracing::debug!(%key, reason, "request not followed: the connection stays");
        }
        match next_head {
            Some(next_head) if self.watch_heads(key, next_head, peer, holds_later) => {}
            _ => self.unfollow(key),
        }
        self.metrics.requests_stayed.inc();
        if let Some((id, attempt)) = resume {
            self.tell(peer, resume_message(id, attempt, Some(&next)));
        } else if let Some(template) = &next.template {
            let to = self.cluster.peers[peer].addr;
            self.send_stream(key, template, to, &next.stream);
        }
    }

    /// Ends following `key`: the datapath holds nothing more of it.
    fn unfollow(&mut self, key: ConnKey) {
        self.follow.remove_watch(&key);
        if let Some(conn) = self.fe.conns.get_mut(&key)
            && let FePhase::Offered { follow, .. } | FePhase::Forwarded { follow, .. } =
                &mut conn.phase
        {
            *follow = None;
        }
    }

    /// The client's held bytes `stream`, rebuilt as its segments (headers of `template`), to
    /// the node at `to`, whose datapath translates them.
    fn send_stream(
        &mut self,
        key: ConnKey,
        template: &TcpPacketBuilder,
        to: Ipv4Addr,
        stream: &StreamAssembler,
    ) {
        for mut packet in packets::client_segments(
            template,
            to,
            stream.base(),
            template.ack,
            stream.contiguous(),
            stream.finished(),
            PEER_MTU,
        ) {
            self.send_to(key, &mut packet, to);
        }
    }

    /// A client packet of `key`, sent on to the node at `to`, whose datapath translates it; to
    /// this node itself, into our own TCP, translated here (injected packets pass no datapath),
    /// or, while our TCP is being given the connection (a move back here), to its replay.
    fn send_to(&mut self, key: ConnKey, packet: &mut [u8], to: Ipv4Addr) {
        if to != self.my_addr {
            if rewrite_dst_addr(packet, to).is_ok() {
                self.send(packet);
            }
            return;
        }
        if self.be.is_replaying(&key) {
            let event = Event {
                kind: baton_bpf::EventKind::HeldPacket,
                key,
                pkt_len: packet.len() as u32,
                ts_ns: 0,
                detail: 0,
                peer: Ipv4Addr::UNSPECIFIED,
                sock_cookie: 0,
                handoff_id: 0,
                packet: packet.to_vec(),
            };
            return self.on_be_held_packet(event);
        }
        if let Some(e) = self
            .conns
            .get(&key)
            .filter(|e| e.role() == Some(ConnRole::Be))
        {
            let translation = Translation {
                seq_delta: e.seq_delta,
                ts_delta: e.ts_delta,
            };
            if translate_to_server(packet, &translation).is_err() {
                return;
            }
        }
        self.send(packet);
    }

    /// A held client packet of a connection not followed (any more): to the node the
    /// datapath's entry forwards to, or into our own TCP (translating entry, or none: served
    /// here).
    fn send_unknown(&mut self, key: ConnKey, packet: &mut [u8]) {
        let to = match self.conns.get(&key) {
            Some(e) if e.role() == Some(ConnRole::Fe) => Ipv4Addr::from(e.peer_addr),
            _ => self.my_addr,
        };
        self.send_to(key, packet, to);
    }

    /// Asks the serving node whether the connection may leave it now.
    fn start_move(&mut self, key: ConnKey, to: usize, after: Option<u32>, now: Instant) {
        let id = self.new_id();
        let Some(conn) = self.fe.conns.get(&key) else {
            return;
        };
        let FePhase::Forwarded {
            peer, id: serving, ..
        } = conn.phase
        else {
            return;
        };
        let Some((_, f)) = self.fe.following_mut(&key) else {
            return;
        };
        let requests = f.requests;
        let next_head = f.next_head;
        let Some(next) = f.next.as_deref_mut() else {
            return;
        };
        // The client's latest ACK, without the request it came with: the serving node cannot be
        // quiet before it has it, and it usually rides on the request the datapath holds.
        let segment = next.template.as_ref().and_then(|t| {
            let mut ack = t.clone();
            ack.seq = next_head;
            ack.flags = TcpFlags::ACK;
            ack.payload.clear();
            ack.try_build().ok()
        });
        let Some(segment) = segment else {
            return self.stay_instead(key, after, StayReason::Internal);
        };
        let Some(template) = next.template.as_ref() else {
            return;
        };
        let (ack, tsecr) = (template.ack, packets::echoed_tsval(template).unwrap_or(0));
        let wait = Duration::from_millis(self.config.limits.handoff_timeout_ms);
        next.moving = Some(Move {
            to,
            id,
            ack,
            tsecr,
            ending: false,
            offered: false,
            after,
            restore: None,
            later: None,
            decided: now,
            deadline: now + wait,
        });
        self.fe.moves.insert(id, key);
        let quiesce = Message::MoveQuiesce {
            id: serving,
            attempt: id,
            requests,
            segment,
        };
        if !self.tell(peer, quiesce) {
            self.fe.moves.remove(&id);
            if let Some(next) = self
                .fe
                .following_mut(&key)
                .and_then(|(_, f)| f.next.as_deref_mut())
            {
                next.moving = None;
            }
            return self.stay_instead(key, after, StayReason::PeerDown);
        }
        self.timers.at(now + wait, Timer::Move(id));
    }

    /// The connection `id` of ours whose move the serving node `peer` answered, with its move.
    fn answered_move(&mut self, peer: usize, id: u64, attempt: u64) -> Option<ConnKey> {
        let key = *self.fe.moves.get(&attempt)?;
        let conn = self.fe.conns.get(&key)?;
        let FePhase::Forwarded {
            peer: p,
            id: i,
            follow: Some(f),
            ..
        } = &conn.phase
        else {
            return None;
        };
        let m = f.next.as_ref()?.moving.as_ref()?;
        (*p == peer && *i == id && m.id == attempt && !m.offered).then_some(key)
    }

    /// The serving node is quiet and frozen: the connection is offered to its new node.
    pub(super) fn on_move_quiet(&mut self, peer: usize, id: u64, attempt: u64, now: Instant) {
        let Some(key) = self.answered_move(peer, id, attempt) else {
            // A move we gave up (its resume, with the request, went already), or an answer
            // to nothing: whatever that attempt froze speaks again.
            self.tell(peer, resume_message(id, attempt, None));
            return;
        };
        let move_id = attempt;
        let pipelined = self.fe.following_mut(&key).is_some_and(|(_, f)| {
            f.next.as_ref().is_some_and(|n| {
                let after = n.moving.as_ref().and_then(|m| m.after);
                after.is_some_and(|len| n.stream.contiguous().len() > len as usize)
            })
        });
        if pipelined {
            // The request after it came while the serving node was asked: pipelined.
            return self.cancel_move(key, StayReason::Pipelined, now);
        }
        let Some(request) = self.move_request(key, move_id) else {
            return self.cancel_move(key, StayReason::Internal, now);
        };
        let Some((_, f)) = self.fe.following_mut(&key) else {
            return;
        };
        let Some(m) = f.next.as_mut().and_then(|n| n.moving.as_mut()) else {
            return;
        };
        let to = m.to;
        // Back to this node: its replay turns the forwarding entry into a translating one.
        let restore = if to == self.cluster.me {
            None
        } else {
            match self.forward_to(key, to, move_id) {
                Ok(replaced) => replaced,
                Err(()) => return self.cancel_move(key, StayReason::Internal, now),
            }
        };
        let wait = Duration::from_millis(self.config.limits.handoff_timeout_ms);
        if let Some(m) = self
            .fe
            .following_mut(&key)
            .and_then(|(_, f)| f.next.as_mut())
            .and_then(|n| n.moving.as_mut())
        {
            m.offered = true;
            m.deadline = now + wait;
            m.restore = restore;
        }
        self.timers.at(now + wait, Timer::Move(move_id));
        // Counted before it goes: a failed send is called off, which counts it out again.
        self.cluster.assign(to);
        if !self.tell(to, Message::HandoffRequest(request)) {
            self.cancel_move(key, StayReason::PeerDown, now);
        }
    }

    /// The serving node cannot let the connection go now: the request stays there.
    pub(super) fn on_move_busy(&mut self, peer: usize, id: u64, attempt: u64, reason: BusyReason) {
        let Some(key) = self.answered_move(peer, id, attempt) else {
            return;
        };
        self.fe.moves.remove(&attempt);
        let after = self.take_move(key).and_then(|m| m.after);
        let stop = reason == BusyReason::Untracked;
        self.metrics
            .rehandoff_fallbacks
            .count(&StayReason::Busy(reason).label());
        if stop {
            self.stay(key, None, Some("responses not followed"));
        } else {
            self.stay(key, after, None);
        }
    }

    /// The offer for a move: the replayed handshake continues the client's stream where it is.
    fn move_request(&self, key: ConnKey, id: u64) -> Option<HandoffRequest> {
        let conn = self.fe.conns.get(&key)?;
        let FePhase::Forwarded {
            follow: Some(f), ..
        } = &conn.phase
        else {
            return None;
        };
        let next = f.next.as_deref()?;
        let template = next.template.as_ref()?;
        let m = next.moving.as_ref()?;
        let e = &f.entry;
        // The SYN says the client's stream starts with the held request; the server's side
        // starts where the client's ACK is, its clock where the client's echo is.
        let mut syn_entry = *e;
        syn_entry.client_isn = f.next_head.wrapping_sub(1);
        let mut segment = template.clone();
        segment.seq = f.next_head;
        segment.ack = m.ack;
        segment.flags = TcpFlags::ACK;
        segment.payload.clear();
        Some(HandoffRequest {
            id,
            client: key.client(),
            fe_service: key.local(),
            fe_isn: m.ack.wrapping_sub(1),
            fe_tsval: m.tsecr,
            fe_synack_options: e.synack_options().to_vec(),
            fe_ecn: TcpFlags(e.synack_tcp_flags).contains(TcpFlags::ECE),
            syn: packets::client_syn(&key, &syn_entry)?,
            segment: segment.try_build().ok()?,
            data: next.stream.contiguous().to_vec(),
            fin: next.stream.finished(),
            follow: m.after.is_some(),
        })
    }

    /// Points the datapath's entry of `key` at `to` (handoff `id`): its client packets go there.
    /// The client's request is held and the serving node frozen, so the datapath changes
    /// nothing of the entry meanwhile but its timestamps and counters (a client FIN or RST in
    /// that instant is retransmitted or was the end anyway). Returns the translating entry it
    /// replaced, when this node served the connection itself. `Err` if there is no entry.
    fn forward_to(&mut self, key: ConnKey, to: usize, id: u64) -> Result<Option<Conn>, ()> {
        let current = self.conns.get(&key).ok_or(())?;
        let (mut entry, replaced) = if current.state() == Some(ConnState::FeForward) {
            (current, None)
        } else {
            // Served here (translating) or being replayed here: forwarding starts again from
            // the connection's own record.
            let (_, f) = self.fe.following_mut(&key).ok_or(())?;
            let mut entry = f.entry;
            entry.role = ConnRole::Fe as u8;
            entry.state = ConnState::FeForward as u8;
            // Live now (the record is from the first hold): idle collection must not take it,
            // and a close the client began is kept.
            let now_ns = super::monotonic_ns();
            entry.last_seen_ns = now_ns;
            entry.client_seen_ns = now_ns;
            entry.flags |= current.flags & (conn_flags::CLIENT_FIN | conn_flags::RST);
            // Forwarding of the agent's now: no datapath offer of it is left to resend, and our
            // TCP has no half-open side of it to end (it had the connection).
            entry.flags &= !(conn_flags::DP_OFFER | conn_flags::DP_LIVE | conn_flags::FOLLOWED);
            let served_here = current.role() == Some(ConnRole::Be)
                && current.state() == Some(ConnState::BeEstablished);
            (entry, served_here.then_some(current))
        };
        entry.peer_addr = self.cluster.peers[to].addr.octets();
        entry.handoff_id = id;
        self.conns
            .insert(key, entry, Insert::Existing)
            .map_err(|_| ())?;
        Ok(replaced)
    }

    fn take_move(&mut self, key: ConnKey) -> Option<Move> {
        let (_, f) = self.fe.following_mut(&key)?;
        f.next.as_mut()?.moving.take()
    }

    /// A move that did not happen: the connection stays with its serving node, which speaks
    /// again, and gets the request.
    /// A move that did not happen, and the requests after it decided.
    fn cancel_move(&mut self, key: ConnKey, reason: StayReason, now: Instant) {
        let later = self.call_off_move(key, reason);
        self.decide_later(key, later, now);
    }

    /// Calls off a move (see [`Engine::cancel_move`]); the request that came after the moving
    /// one, if any, is returned undecided.
    fn call_off_move(&mut self, key: ConnKey, reason: StayReason) -> Option<Box<NextRequest>> {
        let conn = self.fe.conns.get(&key)?;
        let FePhase::Forwarded { peer, id, .. } = conn.phase else {
            return None;
        };
        let m = self.take_move(key)?;
        self.fe.moves.remove(&m.id);
        if m.offered {
            // The new node may still go live within its deadline: it must drop its side.
            self.tell(m.to, Message::HandoffAbort { id: m.id });
            self.cluster.unassign(m.to);
            let back = match m.restore {
                Some(entry) => self.conns.insert(key, entry, Insert::Any).is_ok(),
                None => self.forward_to(key, peer, id).is_ok(),
            };
            if !back {
                tracing::warn!(%key, "a cancelled move could not point the datapath back");
            }
        }
        // Pipelined: the bytes after this request go with it, and following ends; so it does if
        // it was to end with this move.
        let after = m
            .after
            .filter(|_| !m.ending && reason != StayReason::Pipelined);
        self.metrics.rehandoff_fallbacks.count(&reason.label());
        self.stay_by(key, after, None, Some((id, m.id)), m.later.is_some());
        m.later
    }

    /// The request that came while the one before it moved, now that the move is over.
    fn decide_later(&mut self, key: ConnKey, later: Option<Box<NextRequest>>, now: Instant) {
        let Some(later) = later else {
            return;
        };
        match self.fe.following_mut(&key) {
            Some((_, f)) if f.next_head == later.stream.base() => {
                let since = later.since;
                f.next = Some(later);
                if let Some(conn) = self.fe.conns.get(&key) {
                    let conn = ConnId {
                        key,
                        client_isn: conn.client_isn,
                    };
                    self.arm_next_hold(conn, since);
                }
                self.decide_next(key, now);
            }
            // Not followed on (or at another boundary): it goes where the connection is.
            Some((peer, _)) => self.send_unfollowed(key, peer, &later),
            None => {
                if let Some(FePhase::Forwarded { peer, .. }) =
                    self.fe.conns.get(&key).map(|c| &c.phase)
                {
                    let peer = *peer;
                    self.send_unfollowed(key, peer, &later);
                }
            }
        }
    }

    fn send_unfollowed(&mut self, key: ConnKey, peer: usize, held: &NextRequest) {
        self.unfollow(key);
        if let Some(template) = &held.template {
            let to = self.cluster.peers[peer].addr;
            self.send_stream(key, template, to, &held.stream);
        }
    }

    /// The new node has the connection: the old one ends its side, following goes on there.
    pub(super) fn on_move_accepted(&mut self, peer: usize, id: u64, now: Instant) {
        let Some(key) = self.fe.moves.get(&id).copied() else {
            return;
        };
        let Some(conn) = self.fe.conns.get_mut(&key) else {
            return;
        };
        let FePhase::Forwarded {
            peer: old_peer,
            id: old_id,
            follow: Some(f),
            ..
        } = &mut conn.phase
        else {
            return;
        };
        let Some(m) = f.next.as_ref().and_then(|n| n.moving.as_ref()) else {
            return;
        };
        if m.to != peer || m.id != id || !m.offered {
            return;
        }
        let (from, from_id) = (*old_peer, *old_id);
        let after = m.after.filter(|_| !m.ending);
        let took = now.saturating_duration_since(m.decided);
        let later = f
            .next
            .as_mut()
            .and_then(|n| n.moving.as_mut())
            .and_then(|m| m.later.take());
        *old_peer = peer;
        *old_id = id;
        f.next = None;
        f.requests = 1;
        f.moves += 1;
        let next_head = after.map(|len| f.next_head.wrapping_add(len));
        if let Some(next_head) = next_head {
            f.next_head = next_head;
        }
        self.fe.moves.remove(&id);
        self.fe.handoffs.remove(&from_id);
        self.fe.handoffs.insert(id, key);
        match next_head {
            Some(next_head) if self.watch_heads(key, next_head, peer, later.is_some()) => {}
            _ => self.unfollow(key),
        }
        self.tell(
            from,
            Message::MoveRelease {
                id: from_id,
                attempt: id,
            },
        );
        self.cluster.unassign(from);
        self.metrics.rehandoffs.inc();
        self.metrics.rehandoff_duration.observe(took.as_secs_f64());
        self.count_for_peer(&self.metrics.peer.handoffs_to, peer);
        self.decide_later(key, later, now);
    }

    pub(super) fn on_move_refused(
        &mut self,
        peer: usize,
        id: u64,
        reason: RefuseReason,
        now: Instant,
    ) {
        let Some(key) = self.fe.moves.get(&id).copied() else {
            return;
        };
        self.peer_refused(peer, reason, now);
        self.cancel_move(key, StayReason::Refused(reason), now);
    }

    pub(super) fn move_timed_out(&mut self, id: u64, now: Instant) {
        let Some(key) = self.fe.moves.get(&id).copied() else {
            return;
        };
        let due = self
            .fe
            .following_mut(&key)
            .and_then(|(_, f)| f.next.as_ref()?.moving.as_ref())
            .is_some_and(|m| m.id == id && m.deadline <= now);
        if due {
            self.cancel_move(key, StayReason::Timeout, now);
        }
    }

    /// The next request's head did not complete in time: it goes where the connection is.
    pub(super) fn next_hold_expired(&mut self, conn: ConnId, now: Instant) {
        if self.fe.conns.get(&conn.key).map(|c| c.client_isn) != Some(conn.client_isn) {
            return;
        }
        let hold = Duration::from_millis(self.config.limits.hold_ms);
        let Some((_, f)) = self.fe.following_mut(&conn.key) else {
            return;
        };
        // The request held now, if it is the one this timer was armed for (or older).
        if f.next
            .as_ref()
            .is_some_and(|n| n.moving.is_none() && n.since + hold <= now)
        {
            self.stay(conn.key, None, Some("hold_timeout"));
        }
    }

    fn arm_next_hold(&mut self, conn: ConnId, since: Instant) {
        let hold = Duration::from_millis(self.config.limits.hold_ms);
        self.timers.at(since + hold, Timer::NextHold(conn));
    }

    /// Following `key` ends: a move still asking the serving node is called off, one offered to
    /// its new node ends as it ends (the new node may be live already: it is never cut short)
    /// and following with it; a held request goes where the connection is.
    pub(super) fn end_following(&mut self, key: ConnKey, _now: Instant) {
        if self.fe.following_mut(&key).is_none() {
            return; // never followed, or no more: nothing to end (and no watch to remove)
        }
        let offered = self.fe.following_mut(&key).and_then(|(_, f)| {
            let m = f.next.as_mut()?.moving.as_mut()?;
            m.offered.then(|| {
                m.ending = true;
            })
        });
        if offered.is_some() {
            return;
        }
        let moving = self
            .fe
            .following_mut(&key)
            .is_some_and(|(_, f)| f.is_moving());
        let later = if moving {
            self.call_off_move(key, StayReason::Internal)
        } else {
            None
        };
        self.stay(key, None, Some("following ends"));
        if let Some(later) = later
            && let Some(FePhase::Forwarded { peer, .. }) = self.fe.conns.get(&key).map(|c| &c.phase)
        {
            let peer = *peer;
            self.send_unfollowed(key, peer, &later);
        }
        self.unfollow(key);
    }

    /// Shutdown: every held next request goes where its connection is; nothing is followed.
    pub(super) fn stop_following_all(&mut self, now: Instant) {
        for key in self.fe.followed() {
            self.end_following(key, now);
        }
    }
}

/// The MoveResume for `attempt` of the connection the serving node has as `id`, carrying the
/// held request `next` (if any) for it to replay once its TCP may speak.
fn resume_message(id: u64, attempt: u64, next: Option<&NextRequest>) -> Message {
    let replay = next.and_then(|next| {
        let mut segment = next.template.clone()?;
        segment.seq = next.stream.base();
        segment.payload.clear();
        Some((segment.try_build().ok()?, next.stream.contiguous().to_vec()))
    });
    let (segment, data) = replay.unwrap_or_default();
    Message::MoveResume {
        id,
        attempt,
        segment,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> RequestHead {
        match baton_http::sniff(text.as_bytes(), &baton_http::Limits::default()) {
            Sniff::Complete(head) => head,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_get_is_followed_from_the_end_of_its_head() {
        let text = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            after(&head(text)),
            After {
                movable: true,
                next: Some(text.len() as u32)
            }
        );
    }

    #[test]
    fn a_body_with_a_length_is_passed_over() {
        let text = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(after(&head(text)).next, Some(text.len() as u32 + 10));
    }

    #[test]
    fn chunked_head_close_and_upgrade_end_following() {
        let chunked = "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(after(&head(chunked)).next, None);
        assert!(after(&head(chunked)).movable);
        let head_request = "HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(after(&head(head_request)).next, None);
        let close = "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        assert_eq!(after(&head(close)).next, None);
        assert!(after(&head(close)).movable);
        let upgrade =
            "GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        assert_eq!(
            after(&head(upgrade)),
            After {
                movable: false,
                next: None
            }
        );
        let http10 = "GET /a HTTP/1.0\r\n\r\n";
        assert_eq!(after(&head(http10)).next, None);
        let http10_keep = "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        assert!(after(&head(http10_keep)).next.is_some());
    }
}
