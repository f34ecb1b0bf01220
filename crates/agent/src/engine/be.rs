//! BE: the node serving a connection that a peer accepted.
//!
//! An offer becomes an [`Inbound`], one map entry for its whole life:
//!
//! - **SynSent**: a translating entry is created (a tuple already in use here is refused) and the
//!   client's SYN is replayed into our TCP; the datapath hands its answer to us. Client packets the
//!   FE forwards meanwhile are held by the datapath and join the request.
//! - **Replayed**: our TCP answered with a SYN-ACK whose options match the FE's (else: refused);
//!   the offsets are written to the entry and the request is replayed, its first segment carrying
//!   the handshake ACK. The datapath waits for our TCP to speak.
//! - **Live**: it spoke (the datapath saw it and let it through): the FE is told Accepted. Until
//!   the offer's deadline only: after it, the datapath lets nothing through and we refuse, so the
//!   FE can serve the connection itself. (An abort from the FE ends a connection in any phase.)
//! - **Moving**: the FE follows the connection's requests and wants the next one elsewhere; it
//!   was quiet (every response it owes complete and acknowledged, everything read), so the
//!   datapath now lets nothing our TCP sends leave. The FE then says:
//!   - **Moved** (Release): it lives elsewhere now: our TCP's side is ended (its RST goes
//!     nowhere) and every trace goes after a linger; the close notice that ending brings is not
//!     the FE's business;
//!   - Resume: the move did not happen, it is Live again.
//! - **Closing**: our TCP closed the server's socket (the datapath's close notice says so, and
//!   whether a TIME_WAIT is left, which is ended); the FE is told and every trace goes. Only a
//!   notice that is unsure (the client's FIN raced the socket's close, or a RST that TCP may have
//!   ignored) makes us ask our TCP, again after a linger if it is not done.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use baton_bpf::{CloseCode, Conn, ConnKey, ConnRole, ConnState, Event, conn_flags, watch_flags};
use baton_proto::{BusyReason, HandoffRequest, Message, RefuseReason};
use baton_wire::{
    SynOptions, TcpFlags, TcpPacketBuilder, Translation, rewrite_dst_addr, translate_to_server,
};

use super::fe::LOCAL_CHUNK;
use super::packets;
use super::timers::{ConnId, Timer};
use super::{Engine, monotonic_ns};
use crate::hold::StreamAssembler;
use crate::kernel::Insert;
use crate::sockdiag::tcp_state;

/// How long after the offer's deadline the agent decides, so that the datapath (which checks the
/// deadline itself) has long stopped letting the connection through.
pub(super) const LIVE_MARGIN: Duration = Duration::from_millis(10);

/// A quiesce whose ACK our TCP has not taken is looked at again after 1, 2, 4, 8, 16 and 32 ms
/// (63 ms in all; fewer if a quarter of the FE's wait for the answer is shorter), then answered
/// busy.
const QUIESCE_RECHECK_FIRST: Duration = Duration::from_millis(1);
const QUIESCE_RECHECKS: u32 = 6;

/// The phase of an adopted handed-in connection, as its entry shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AdoptedPhase {
    Live,
    /// Frozen by the previous agent for a move: ends by itself unless the FE says otherwise.
    Moving {
        until: Instant,
    },
    Closing,
    Replaying,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BePhase {
    SynSent,
    Replayed,
    Live,
    Moving,
    Moved,
    Closing,
}

pub(super) struct Inbound {
    peer: usize,
    id: u64,
    client_isn: u32,
    phase: BePhase,
    /// The FE follows its requests: the datapath counts its responses.
    follow: bool,
    /// While Moving: when it ends by itself if the FE says nothing, and the move that froze it
    /// (`None`: frozen by a previous agent, whose move is unknown here).
    frozen_until: Option<Instant>,
    frozen_by: Option<u64>,
    /// The datapath reported its close while it was Moving: handled if it resumes.
    closed_while_moving: Option<CloseNotice>,
    /// A move's quiesce waiting for our TCP to take the client's ACK.
    quiesce: Option<Box<QuiesceAsk>>,
    /// What the replay needs, until the connection is live (then dropped). An adopted
    /// connection has none: it was taken by an agent that is gone.
    replay: Option<Box<Replay>>,
    /// Our server socket's cookie, as the datapath read it from the socket's first packet
    /// (0: unknown): a move ends that socket in one sock_diag round trip.
    sock_cookie: u64,
}

/// The datapath's word on a handed-in connection's close (`EventKind::Closed`).
#[derive(Clone, Copy, Debug)]
pub(super) struct CloseNotice {
    /// What our TCP left on the tuple; `None`: a code this build does not know.
    pub code: Option<CloseCode>,
    /// The server socket's cookie, which its timewait socket has too (0: unknown).
    pub sock_cookie: u64,
    /// The connection it is about ([`Inbound::names`]).
    pub handoff_id: u64,
}

impl CloseNotice {
    pub fn of(event: &Event) -> Self {
        CloseNotice {
            code: CloseCode::from_detail(event.detail),
            sock_cookie: event.sock_cookie,
            handoff_id: event.handoff_id,
        }
    }
}

/// A move's question to us (`MoveQuiesce`), kept while it waits for our TCP.
struct QuiesceAsk {
    peer: usize,
    id: u64,
    attempt: u64,
    requests: u32,
    /// The client's latest ACK, as the FE sent it.
    segment: Vec<u8>,
    /// Times it was looked at again.
    rechecks: u32,
}

/// A handed-in connection's replay: the FE's numbers, the client's headers and bytes.
struct Replay {
    fe_isn: u32,
    fe_tsval: u32,
    fe_options: SynOptions,
    fe_ecn: bool,
    /// The client's segment headers, addressed to this node: the template of the replay.
    template: TcpPacketBuilder,
    /// The request, and whatever the client sent after it before the replay.
    stream: StreamAssembler,
    /// The datapath entry as created (before the replay the datapath writes nothing but its
    /// timestamps, so the agent's copy is the entry).
    entry: Conn,
    /// The offsets, once our TCP answered.
    translation: Option<Translation>,
    /// It must be live by then.
    deadline: Instant,
}

impl Inbound {
    fn conn(&self, key: ConnKey) -> ConnId {
        ConnId {
            key,
            client_isn: self.client_isn,
        }
    }

    /// Whether a datapath notice naming handoff `id` is about this connection. A notice is read
    /// late, when the tuple may already be the client's next connection's (0: the datapath
    /// named none, any on the tuple).
    fn names(&self, id: u64) -> bool {
        id == 0 || id == self.id
    }
}

#[derive(Default)]
pub(super) struct BeState {
    conns: HashMap<ConnKey, Inbound>,
    by_handoff: HashMap<(usize, u64), ConnKey>,
}

impl BeState {
    pub fn has(&self, key: &ConnKey) -> bool {
        self.conns.contains_key(key)
    }

    /// Whether `key`'s handed-in connection is being replayed: the only phase in which the
    /// datapath holds its client's packets for the agent (BE_SYN_SENT, or just before the
    /// replay and read just after). Once live or closing, a packet the datapath holds on the
    /// tuple is a new connection's: the client reused the port toward this node itself.
    pub fn is_replaying(&self, key: &ConnKey) -> bool {
        self.conns
            .get(key)
            .is_some_and(|i| matches!(i.phase, BePhase::SynSent | BePhase::Replayed))
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Handed-in connections not yet closed: what a drain waits for.
    pub fn open(&self) -> usize {
        self.conns
            .values()
            .filter(|i| !matches!(i.phase, BePhase::Closing | BePhase::Moved))
            .count()
    }

    /// What `key` is to an operator, if it is handed in: the FE and the phase.
    pub fn handed_in(&self, key: &ConnKey) -> Option<(usize, &'static str)> {
        let inbound = self.conns.get(key)?;
        let phase = match inbound.phase {
            BePhase::SynSent | BePhase::Replayed => "replaying",
            BePhase::Live => "live",
            BePhase::Moving => "moving",
            BePhase::Moved => "moved",
            BePhase::Closing => "closing",
        };
        Some((inbound.peer, phase))
    }

    /// Takes on a connection a previous agent took from `peer` as handoff `id`: live (or
    /// closing), or still being replayed (it can only go live or be refused now).
    pub fn adopt(
        &mut self,
        key: ConnKey,
        peer: usize,
        id: u64,
        client_isn: u32,
        phase: AdoptedPhase,
    ) {
        let (phase, frozen_until) = match phase {
            AdoptedPhase::Live => (BePhase::Live, None),
            AdoptedPhase::Moving { until } => (BePhase::Moving, Some(until)),
            AdoptedPhase::Closing => (BePhase::Closing, None),
            AdoptedPhase::Replaying => (BePhase::Replayed, None),
        };
        self.insert(
            key,
            Inbound {
                peer,
                id,
                client_isn,
                phase,
                follow: false,
                frozen_until,
                frozen_by: None,
                closed_while_moving: None,
                quiesce: None,
                replay: None,
                sock_cookie: 0,
            },
        );
    }

    /// A connection this node accepted and serves itself, followed (the FE side moves it): live
    /// here as handoff `id` from this node, its responses counted.
    pub fn serve_here(&mut self, key: ConnKey, me: usize, id: u64, client_isn: u32) {
        self.insert(
            key,
            Inbound {
                peer: me,
                id,
                client_isn,
                phase: BePhase::Live,
                follow: true,
                frozen_until: None,
                frozen_by: None,
                closed_while_moving: None,
                quiesce: None,
                replay: None,
                sock_cookie: 0,
            },
        );
    }

    /// Marks an adopted connection as one whose responses the datapath counts.
    pub fn set_followed(&mut self, key: &ConnKey) {
        if let Some(inbound) = self.conns.get_mut(key) {
            inbound.follow = true;
        }
    }

    /// Handed-in connections not yet live nor refused: what a handover waits for.
    pub fn replaying(&self) -> usize {
        self.conns
            .values()
            .filter(|i| matches!(i.phase, BePhase::SynSent | BePhase::Replayed))
            .count()
    }

    fn get(&self, conn: ConnId) -> Option<&Inbound> {
        self.conns
            .get(&conn.key)
            .filter(|i| i.client_isn == conn.client_isn)
    }

    /// Records `inbound` as `key`'s handed-in connection: an earlier one on the tuple (the
    /// client reused its port) is no longer found by its handoff id either, so a late message
    /// about it cannot act on the new one.
    fn insert(&mut self, key: ConnKey, inbound: Inbound) {
        self.remove(&key);
        self.by_handoff.insert((inbound.peer, inbound.id), key);
        self.conns.insert(key, inbound);
    }

    fn remove(&mut self, key: &ConnKey) -> Option<Inbound> {
        let inbound = self.conns.remove(key)?;
        self.by_handoff.remove(&(inbound.peer, inbound.id));
        Some(inbound)
    }
}

impl Engine {
    pub(super) fn on_handoff_request(&mut self, peer: usize, r: HandoffRequest, now: Instant) {
        let id = r.id;
        if let Err(reason) = self.take_handoff(peer, r, now) {
            self.count_refusal(reason);
            self.tell(peer, Message::HandoffRefused { id, reason });
        }
    }

    fn take_handoff(
        &mut self,
        peer: usize,
        r: HandoffRequest,
        now: Instant,
    ) -> Result<(), RefuseReason> {
        if self.cluster.draining {
            return Err(RefuseReason::Overloaded);
        }
        if !self.cluster.serving() {
            return Err(RefuseReason::NoListener);
        }
        if *r.fe_service.ip() != self.cluster.peers[peer].addr
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
        let mut template =
            TcpPacketBuilder::parse(&r.segment).map_err(|_| RefuseReason::Malformed)?;
        let from_client =
            |p: &TcpPacketBuilder| p.src == *r.client.ip() && p.src_port == r.client.port();
        if !syn_fields.flags.contains(TcpFlags::SYN)
            || !from_client(&syn_fields)
            || !from_client(&template)
        {
            return Err(RefuseReason::Malformed);
        }
        let key = ConnKey::new(
            r.client,
            SocketAddrV4::new(self.my_addr, r.fe_service.port()),
        );
        if let Some(old) = self.be.conns.get(&key) {
            // The client reused its port: the old connection may still linger. Replace it only if
            // that connection is over; a live one is a true collision. Over is what the datapath
            // heard from our TCP, even if its notice is still on the ring: the next offer on the
            // port may overtake it.
            let closed_in_datapath = self.conns.get(&key).is_some_and(|e| {
                e.client_isn == old.client_isn && e.flags & conn_flags::CLOSE_REPORTED != 0
            });
            if !matches!(old.phase, BePhase::Closing | BePhase::Moved) && !closed_in_datapath {
                return Err(RefuseReason::Collision);
            }
            let old = old.conn(key);
            self.forget_inbound(old);
        }
        // This node accepted a connection on the same tuple (the client's ports toward us and
        // toward the FE are independent) and handed it off; it is closed at both ends and its
        // entry only lingers: the new connection takes the tuple.
        if let Some(e) = self
            .conns
            .get(&key)
            .filter(|e| e.role() == Some(ConnRole::Fe))
        {
            let conn = ConnId {
                key,
                client_isn: e.client_isn,
            };
            if self.fe.is_lingering(conn) {
                self.remove_entry(conn);
                self.fe.forget(conn);
            }
        }
        // A connection of the local TCP on this tuple (other than one in TIME_WAIT, which the
        // replay ends) is a collision: refuse before touching it.
        let time_wait = match self.tcp.tcp_state(key.local(), r.client) {
            Ok(None) => false,
            Ok(Some(tcp_state::TIME_WAIT)) => true,
            Ok(Some(state)) => {
                tracing::debug!(%key, state, "collision: the local TCP has the tuple");
                return Err(RefuseReason::Collision);
            }
            Err(e) => {
                tracing::warn!("sock_diag: {e}");
                return Err(RefuseReason::Internal);
            }
        };
        let mut entry = Conn::new_be(*r.fe_service.ip(), syn_fields.seq, monotonic_ns());
        entry.handoff_id = r.id;
        // NOEXIST: a tuple this node already tracks (as FE or BE) is a collision, never merged.
        // But for a connection this node accepted and moves back to itself: its forwarding
        // entry (to the frozen node it leaves) becomes the translating one in one write.
        let mode = if peer == self.cluster.me {
            Insert::Existing
        } else {
            Insert::New
        };
        if self.conns.insert(key, entry, mode).is_err() {
            tracing::debug!(%key, "collision: the datapath tracks the tuple");
            return Err(RefuseReason::Collision);
        }
        if mode == Insert::New {
            // Nothing else is on the tuple here: what a connection before it left in the follow
            // maps (a watch that froze it as it moved away: it would silence this one) goes.
            self.follow.remove_watch(&key);
            if !r.follow {
                self.follow.remove_responses(&key);
            }
        }
        let mut syn = r.syn;
        if rewrite_dst_addr(&mut syn, self.my_addr).is_err() {
            self.conns.remove(&key);
            return Err(RefuseReason::Malformed);
        }
        template.dst = self.my_addr;
        template.payload.clear();
        let base = syn_fields.seq.wrapping_add(1);
        let mut stream = StreamAssembler::new(base, baton_proto::MAX_HANDOFF_DATA_LEN);
        stream.add(base, &r.data, r.fin);
        let deadline = now + Duration::from_millis(self.config.limits.handoff_timeout_ms / 2);
        let inbound = Inbound {
            peer,
            id: r.id,
            client_isn: syn_fields.seq,
            phase: BePhase::SynSent,
            follow: r.follow,
            frozen_until: None,
            frozen_by: None,
            closed_while_moving: None,
            quiesce: None,
            replay: Some(Box::new(Replay {
                fe_isn: r.fe_isn,
                fe_tsval: r.fe_tsval,
                fe_options,
                fe_ecn: r.fe_ecn,
                template,
                stream,
                entry,
                translation: None,
                deadline,
            })),
            sock_cookie: 0,
        };
        self.timers
            .at(deadline + LIVE_MARGIN, Timer::Live(inbound.conn(key)));
        self.be.insert(key, inbound);
        if time_wait {
            // The client's earlier connection to this node on the tuple, over at both ends. Our
            // TCP would reuse it only for a SYN whose timestamp is newer than that connection's
            // last one, but the replayed SYN carries the client's clock toward the FE, unrelated
            // to its clock toward us: half the time the TIME_WAIT would answer with an ACK and
            // the offer be refused as a collision. Ended, as our TCP ends it for a SYN that
            // passes.
            let old = ConnId {
                key,
                client_isn: syn_fields.seq,
            };
            self.end_time_wait(old, 0);
        }
        self.send(&syn);
        Ok(())
    }

    /// Our TCP's answer to the replayed SYN (or, after the replay, a SYN-ACK again or a RST).
    pub(super) fn on_be_answer(&mut self, event: Event, now: Instant) {
        let key = event.key;
        let Some(inbound) = self.be.conns.get(&key) else {
            return;
        };
        let answer = packets::parse_captured(&event.packet, event.pkt_len);
        let answers_our_syn = |s: &TcpPacketBuilder| {
            s.flags.contains(TcpFlags::ACK) && s.ack == inbound.client_isn.wrapping_add(1)
        };
        let synack = answer
            .as_ref()
            .filter(|s| answers_our_syn(s) && s.flags.contains(TcpFlags::SYN));
        match inbound.phase {
            BePhase::SynSent => {}
            // It asks again: the request did not take (a full accept queue): replay it again.
            BePhase::Replayed if synack.is_some() => return self.replay_request(key),
            // Our TCP has the request and ended it: its side is ended for good.
            BePhase::Replayed => return self.refuse_inbound(key, RefuseReason::Internal, true),
            BePhase::Live | BePhase::Moving | BePhase::Moved | BePhase::Closing => return,
        }
        let follow = inbound.follow;
        let Some(replay) = inbound.replay.as_deref() else {
            // Adopted before its replay: the request went with the agent that took it.
            return self.refuse_inbound(key, RefuseReason::Internal, true);
        };
        let Some(synack) = synack else {
            let no_listener = answer
                .as_ref()
                .is_some_and(|s| answers_our_syn(s) && s.flags.contains(TcpFlags::RST));
            if no_listener {
                // Nothing listens here: say so in heartbeats from now on.
                self.cluster.set_listening(false);
                return self.refuse_inbound(key, RefuseReason::NoListener, false);
            }
            // Our TCP answered the SYN with something else: the tuple is in use here.
            let flags = answer.as_ref().map(|s| s.flags);
            tracing::debug!(%key, ?flags, "collision: the replayed SYN was not answered by a SYN-ACK");
            return self.refuse_inbound(key, RefuseReason::Collision, false);
        };
        let Some(be_options) = packets::syn_options(&event.packet) else {
            return self.refuse_inbound(key, RefuseReason::Malformed, true);
        };
        if let Some(mismatch) = replay.fe_options.negotiated_mismatch(&be_options) {
            tracing::info!(%key, "refusing handoff: {mismatch}");
            return self.refuse_inbound(key, RefuseReason::OptionMismatch, true);
        }
        if synack.flags.contains(TcpFlags::ECE) != replay.fe_ecn {
            tracing::info!(%key, fe_ecn = replay.fe_ecn, "refusing handoff: ECN differs");
            return self.refuse_inbound(key, RefuseReason::OptionMismatch, true);
        }
        let translation = Translation {
            seq_delta: synack.seq.wrapping_sub(replay.fe_isn),
            ts_delta: match be_options.timestamps {
                Some((be_tsval, _)) => be_tsval.wrapping_sub(replay.fe_tsval),
                None => 0,
            },
        };
        let mut entry = replay.entry;
        entry.state = ConnState::BeReplayed as u8;
        entry.local_isn = synack.seq;
        entry.seq_delta = translation.seq_delta;
        entry.ts_delta = translation.ts_delta;
        let left = replay.deadline.saturating_duration_since(now);
        entry.live_deadline_ns = monotonic_ns() + left.as_nanos() as u64;
        // The responses are counted from the first byte our server sends, so the FE can move
        // the connection once every one it owes is complete.
        if follow && let Err(e) = self.follow.start_responses(key, synack.seq.wrapping_add(1)) {
            tracing::debug!(%key, "responses: {e}");
            if let Some(inbound) = self.be.conns.get_mut(&key) {
                inbound.follow = false;
            }
        }
        // Before the replay the datapath writes nothing but last_seen_ns: the whole entry is ours.
        if self.conns.insert(key, entry, Insert::Existing).is_err() {
            return self.refuse_inbound(key, RefuseReason::Internal, true);
        }
        if let Some(inbound) = self.be.conns.get_mut(&key)
            && let Some(replay) = inbound.replay.as_deref_mut()
        {
            replay.translation = Some(translation);
            inbound.phase = BePhase::Replayed;
        }
        self.replay_request(key);
    }

    /// The request (and what followed it) into our TCP, translated into its sequence space.
    fn replay_request(&mut self, key: ConnKey) {
        let Some(replay) = self.be.conns.get(&key).and_then(|i| i.replay.as_deref()) else {
            return;
        };
        let Some(translation) = replay.translation else {
            return;
        };
        let segments = packets::client_segments(
            &replay.template,
            self.my_addr,
            replay.stream.base(),
            replay.fe_isn.wrapping_add(1),
            replay.stream.contiguous(),
            replay.stream.finished(),
            LOCAL_CHUNK + 100,
        );
        for mut packet in segments {
            if translate_to_server(&mut packet, &translation).is_ok() {
                self.send(&packet);
            }
        }
    }

    /// A client packet the FE forwarded before our TCP could read it: the datapath held it.
    pub(super) fn on_be_held_packet(&mut self, event: Event) {
        let Some(replay) = self
            .be
            .conns
            .get_mut(&event.key)
            .and_then(|i| i.replay.as_deref_mut())
        else {
            return;
        };
        match replay.translation {
            // Before the replay it joins the request.
            None => {
                if let Some(s) = packets::parse_captured(&event.packet, event.pkt_len) {
                    let fin = s.flags.contains(TcpFlags::FIN);
                    replay.stream.add(s.seq, &s.payload, fin);
                }
            }
            // Held just before the replay, read just after: it goes in on its own.
            Some(translation) => {
                let mut packet = event.packet;
                if packet.len() == event.pkt_len as usize
                    && rewrite_dst_addr(&mut packet, self.my_addr).is_ok()
                    && translate_to_server(&mut packet, &translation).is_ok()
                {
                    self.send(&packet);
                }
            }
        }
    }

    /// The datapath let the replayed connection through: it is ours.
    /// Our TCP spoke on a replayed connection (`sock_cookie`: its socket's, 0 if unknown): live.
    /// `id`: the connection the notice names (0: any on the tuple).
    pub(super) fn on_be_live(&mut self, key: ConnKey, id: u64, sock_cookie: u64) {
        let Some(inbound) = self.be.conns.get_mut(&key) else {
            return;
        };
        if inbound.phase != BePhase::Replayed || !inbound.names(id) {
            return;
        }
        inbound.phase = BePhase::Live;
        inbound.sock_cookie = sock_cookie;
        // Live: the replay is done, its bytes are no longer needed.
        inbound.replay = None;
        let (peer, id) = (inbound.peer, inbound.id);
        self.accepted_here(peer, id);
    }

    /// Handoff `id` from `peer` is ours: its FE hears so, and it counts.
    fn accepted_here(&mut self, peer: usize, id: u64) {
        self.tell(peer, Message::HandoffAccepted { id });
        self.metrics.handoffs_in.inc();
        self.count_for_peer(&self.metrics.peer.handoffs_from, peer);
    }

    /// The offer's deadline (and a margin) passed: live by now, or refused for good.
    pub(super) fn live_deadline(&mut self, conn: ConnId) {
        let Some(inbound) = self.be.get(conn) else {
            return;
        };
        if !matches!(inbound.phase, BePhase::SynSent | BePhase::Replayed) {
            return;
        }
        // The notice may still be on its way through the ring.
        if let Some(e) = self
            .conns
            .get(&conn.key)
            .filter(|e| e.state() == Some(ConnState::BeEstablished))
        {
            return self.on_be_live(conn.key, e.handoff_id, e.sock_cookie);
        }
        tracing::info!(key = %conn.key, phase = ?inbound.phase, "replayed connection not live in time");
        self.refuse_inbound(conn.key, RefuseReason::Timeout, true);
    }

    /// The FE withdrew its offer (it serves the connection itself, or gave up on it).
    pub(super) fn on_abort(&mut self, peer: usize, id: u64) {
        if let Some(key) = self.be.by_handoff.get(&(peer, id)).copied()
            && let Some(inbound) = self.be.remove(&key)
        {
            let conn = inbound.conn(key);
            self.end_replayed(inbound.peer, conn);
            self.remove_be_entry(conn);
            if inbound.follow {
                self.follow.remove_responses(&key);
            }
            return;
        }
        // A datapath offer this agent has not heard of yet (its notice still on the ring, or
        // lost): the datapath's table has it, and it ends here as well.
        let addr = self.cluster.peers[peer].addr.octets();
        let taken = self.conns.entries().into_iter().find(|(_, e)| {
            e.handoff_id == id
                && e.peer_addr == addr
                && e.role() == Some(ConnRole::Be)
                && e.flags & conn_flags::DP_OFFER != 0
        });
        if let Some((key, e)) = taken {
            let conn = ConnId {
                key,
                client_isn: e.client_isn,
            };
            self.end_replayed(peer, conn);
            self.remove_be_entry(conn);
        }
    }

    fn refuse_inbound(&mut self, key: ConnKey, reason: RefuseReason, reset: bool) {
        let Some(inbound) = self.be.remove(&key) else {
            return;
        };
        if inbound.follow {
            self.follow.remove_responses(&key);
        }
        if reset {
            self.end_replayed(inbound.peer, inbound.conn(key));
        }
        // Moving back here: the FE side points the entry at the node the connection stays with.
        if inbound.peer != self.cluster.me {
            self.conns.remove(&key);
        }
        self.count_refusal(reason);
        self.tell(
            inbound.peer,
            Message::HandoffRefused {
                id: inbound.id,
                reason,
            },
        );
    }

    fn count_refusal(&self, reason: RefuseReason) {
        self.metrics.refused.count(reason.label());
    }

    /// Removes `conn`'s entry, if the tuple's entry is still its own (with the responses the
    /// datapath counted for a connection it placed and follows). Returns whether the tuple has
    /// another handed-in connection's entry now (the client reused its port), whose maps are not
    /// ours. (A forwarding entry of this node's is the same connection moved away from here: its
    /// ISN is the client's first, ours the one its move back here replayed.)
    fn remove_be_entry(&mut self, conn: ConnId) -> bool {
        let Some(e) = self.conns.get(&conn.key) else {
            return false;
        };
        if e.role() != Some(ConnRole::Be) || e.client_isn != conn.client_isn {
            return e.role() == Some(ConnRole::Be) && e.client_isn != conn.client_isn;
        }
        self.conns.remove(&conn.key);
        if e.flags & conn_flags::FOLLOWED != 0 {
            self.follow.remove_responses(&conn.key);
        }
        false
    }

    /// Ends a replayed connection our TCP may have taken. For a connection this node accepted
    /// (moving back here), whose datapath entry the FE side rewrites at once, the socket is
    /// destroyed (its RST goes nowhere: the entry forwards); elsewhere a RST only our TCP sees.
    fn end_replayed(&mut self, peer: usize, conn: ConnId) {
        if peer == self.cluster.me {
            if let Err(e) = self.tcp.destroy(conn.key.local(), conn.key.client()) {
                tracing::debug!(key = %conn.key, "sock_diag destroy: {e}");
            }
        } else {
            self.reset_local(conn);
        }
    }

    /// Lets `key`'s TCP speak again: the FROZEN bit of its watch goes (the FE's own watch of
    /// the key, on a connection this node accepted, stays).
    pub(super) fn unfreeze(&mut self, key: ConnKey) {
        // Not frozen: nothing to undo, and a write could undo what the datapath wrote in place.
        let Some(mut watch) = self
            .follow
            .watch(&key)
            .filter(|w| w.flags & watch_flags::FROZEN != 0)
        else {
            return;
        };
        watch.flags &= !watch_flags::FROZEN;
        if watch.flags == 0 {
            self.follow.remove_watch(&key);
        } else if let Err(e) = self.follow.set_watch(key, watch) {
            tracing::warn!(%key, "watch: {e}");
        }
    }

    /// Stops everything `key`'s TCP sends from leaving (see [`Engine::unfreeze`]).
    fn freeze(&mut self, key: ConnKey) -> Result<(), String> {
        let mut watch = self.follow.watch(&key).unwrap_or_default();
        watch.flags |= watch_flags::FROZEN;
        self.follow.set_watch(key, watch)
    }

    /// Our TCP closed the server's socket of a handed-in connection (the datapath's
    /// `be_socket_closed`), and the notice says what is left on the tuple. Over at once unless
    /// unsure (or a code this build does not know): then our TCP is asked, as after a linger.
    pub(super) fn on_closed(&mut self, key: ConnKey, notice: CloseNotice, now: Instant) {
        let Some(inbound) = self
            .be
            .conns
            .get_mut(&key)
            .filter(|i| i.names(notice.handoff_id))
        else {
            return;
        };
        if inbound.phase == BePhase::Moving {
            // The datapath reports a close once: kept for a resume (a release ends it anyway).
            inbound.closed_while_moving = Some(notice);
            return;
        }
        if inbound.phase != BePhase::Live {
            return;
        }
        inbound.phase = BePhase::Closing;
        let conn = inbound.conn(key);
        match notice.code {
            Some(CloseCode::Gone) => return self.closed_at_be(conn),
            Some(CloseCode::TimeWait) => {
                // Ended now, the tuple is free at once: the client may reuse its port toward
                // this node itself (the TIME_WAIT would answer its SYN, whose timestamps are
                // unrelated, with an ACK: a RST and a SYN retransmission), and the FE's entry
                // only lingers from our notice on, so until then an offer of the tuple from
                // another FE would be refused as a collision.
                self.end_time_wait(conn, notice.sock_cookie);
                return self.closed_at_be(conn);
            }
            Some(CloseCode::Unsure) | None => {}
        }
        if self.closed_by_fins(conn) {
            self.end_time_wait(conn, notice.sock_cookie);
            return self.closed_at_be(conn);
        }
        let linger = Duration::from_millis(self.config.limits.close_linger_ms);
        self.timers.at(now + linger, Timer::Closed(conn));
    }

    /// Whether `conn` ended by both FINs and our TCP is in TIME_WAIT. Only a FIN of ours that the
    /// client acknowledged and a FIN of the client's that our TCP took put it there; a RST,
    /// forged or not, never does.
    fn closed_by_fins(&mut self, conn: ConnId) -> bool {
        let by_fins = self
            .conns
            .get(&conn.key)
            .is_some_and(|e| e.client_isn == conn.client_isn && e.flags & conn_flags::RST == 0);
        by_fins
            && matches!(
                self.tcp.tcp_state(conn.key.local(), conn.key.client()),
                Ok(Some(tcp_state::TIME_WAIT))
            )
    }

    /// A linger after an unsure close: if the local TCP is done with the connection, tell the FE
    /// and forget it; if it is not yet (a timewait socket still waiting for the client's FIN),
    /// look again later.
    pub(super) fn confirm_closed(&mut self, conn: ConnId, now: Instant) {
        if self.be.get(conn).map(|i| i.phase) != Some(BePhase::Closing) {
            return;
        }
        // The datapath started afresh on the tuple (the client's own new connection to this
        // node): ours is over, and the local TCP's state is the new one's.
        if self
            .conns
            .get(&conn.key)
            .is_none_or(|e| e.client_isn != conn.client_isn)
        {
            return self.closed_at_be(conn);
        }
        match self.tcp.tcp_state(conn.key.local(), conn.key.client()) {
            Ok(None | Some(tcp_state::CLOSE)) => self.closed_at_be(conn),
            Ok(Some(tcp_state::TIME_WAIT)) => {
                self.end_time_wait(conn, 0);
                self.closed_at_be(conn);
            }
            Ok(Some(tcp_state::ESTABLISHED)) => {
                // Not closed after all (an adopted entry's close, reported by an older agent's
                // datapath from the FINs it saw). The datapath reports a close once, so the real
                // one is found by the idle check (garbage collection) instead.
                if let Some(inbound) = self.be.conns.get_mut(&conn.key) {
                    inbound.phase = BePhase::Live;
                }
            }
            Ok(Some(_)) => {
                let linger = Duration::from_millis(self.config.limits.close_linger_ms);
                self.timers.at(now + linger, Timer::Closed(conn));
            }
            Err(e) => tracing::warn!("sock_diag: {e}"),
        }
    }

    /// Ends the local TCP's TIME_WAIT of a handed-in connection. It guards nothing: after the FE's
    /// linger no packet of the old connection can reach this node, and it would answer the
    /// client's own next connection to this node on the same tuple (its ports toward the FE and
    /// toward us are independent, and so are its timestamps) with an ACK that costs that
    /// connection a RST and a SYN retransmission.
    /// `sock_cookie` names the timewait socket in one round trip; without it (0) the tuple's
    /// socket is looked up first and ended only if it is a TIME_WAIT: by then it may be the
    /// client's next connection.
    pub(super) fn end_time_wait(&mut self, conn: ConnId, sock_cookie: u64) {
        let (local, client) = (conn.key.local(), conn.key.client());
        let ended = match sock_cookie {
            0 => self.tcp.destroy_time_wait(local, client),
            cookie => self.tcp.destroy_by_cookie(local, client, cookie),
        };
        if let Err(e) = ended {
            tracing::debug!(key = %conn.key, "sock_diag destroy of a TIME_WAIT: {e}");
        }
    }

    /// The local TCP is done with a handed-in connection: the FE is told, every trace goes.
    pub(super) fn closed_at_be(&mut self, conn: ConnId) {
        if let Some(inbound) = self.be.get(conn) {
            let (peer, id) = (inbound.peer, inbound.id);
            self.tell(peer, Message::ConnClosed { id });
        }
        self.forget_inbound(conn);
    }

    /// Removes every trace of a handed-in connection, and only of that one.
    fn forget_inbound(&mut self, conn: ConnId) {
        let reused = self.remove_be_entry(conn);
        if let Some(inbound) = self.be.get(conn) {
            // A new connection on the tuple has maps of its own already (a followed datapath
            // offer's responses begin at its server's SYN-ACK, before we hear of it).
            if inbound.follow && !reused {
                self.follow.remove_responses(&conn.key);
                self.unfreeze(conn.key);
            }
            self.be.remove(&conn.key);
        }
        self.metrics.handed_in_active.set(self.be.len() as i64);
    }
}

// ----- moves: the FE follows the connection's requests --------------------------------------

impl Engine {
    /// The FE wants the connection's next request elsewhere: is it quiet here? If so it is
    /// frozen (nothing our TCP sends leaves) until the FE releases or resumes it.
    pub(super) fn on_move_quiesce(
        &mut self,
        peer: usize,
        (id, attempt): (u64, u64),
        requests: u32,
        segment: &[u8],
        now: Instant,
    ) {
        // A newer question replaces one still waiting (the FE gave that attempt up).
        if let Some(inbound) = self
            .be
            .by_handoff
            .get(&(peer, id))
            .and_then(|key| self.be.conns.get_mut(key))
        {
            inbound.quiesce = None;
        }
        let ask = QuiesceAsk {
            peer,
            id,
            attempt,
            requests,
            segment: segment.to_vec(),
            rechecks: 0,
        };
        self.answer_quiesce(ask, now);
    }

    /// A quiesce that waited for our TCP to take the client's ACK: looked at again.
    pub(super) fn quiesce_recheck(&mut self, conn: ConnId, now: Instant) {
        let Some(inbound) = self
            .be
            .conns
            .get_mut(&conn.key)
            .filter(|i| i.client_isn == conn.client_isn)
        else {
            return;
        };
        if let Some(ask) = inbound.quiesce.take() {
            self.answer_quiesce(*ask, now);
        }
    }

    fn answer_quiesce(&mut self, ask: QuiesceAsk, now: Instant) {
        let (peer, id, attempt) = (ask.peer, ask.id, ask.attempt);
        let answer = match self.quiesce(peer, id, attempt, ask.requests, &ask.segment) {
            Ok(conn) => {
                // The FE's move ends within its wait for us and its wait for the new node; a
                // word that never comes (the FE or the mesh broke meanwhile) ends our side: the
                // connection may live elsewhere now, and two servers must never answer it.
                let until = now + Duration::from_millis(2 * self.config.limits.handoff_timeout_ms);
                if let Some(inbound) = self.be.conns.get_mut(&conn.key) {
                    inbound.frozen_until = Some(until);
                }
                self.timers.at(until, Timer::Frozen(conn));
                Message::MoveQuiet { id, attempt }
            }
            Err(BusyReason::Unacked) if ask.rechecks < self.quiesce_rechecks() => {
                // Every response is out and the client acknowledged it, but our TCP has not
                // taken that ACK yet: the socket was busy (its server in a call on it: the ACK
                // waits in its backlog) or the softirq was deferred. Looked at again shortly
                // (each time with the ACK again, in case it was dropped).
                let Some(key) = self.be.by_handoff.get(&(peer, id)).copied() else {
                    return;
                };
                let Some(inbound) = self.be.conns.get_mut(&key) else {
                    return;
                };
                let conn = inbound.conn(key);
                let delay = QUIESCE_RECHECK_FIRST * (1 << ask.rechecks);
                inbound.quiesce = Some(Box::new(QuiesceAsk {
                    rechecks: ask.rechecks + 1,
                    ..ask
                }));
                self.metrics.quiesce_rechecks.inc();
                self.timers.at(now + delay, Timer::Quiesce(conn));
                return;
            }
            Err(reason) => {
                if reason == BusyReason::Unacked {
                    tracing::warn!(
                        rechecks = ask.rechecks,
                        "a move's quiesce gave up: our TCP did not take the client's ACK"
                    );
                }
                Message::MoveBusy {
                    id,
                    attempt,
                    reason,
                }
            }
        };
        self.tell(peer, answer);
    }

    fn quiesce(
        &mut self,
        peer: usize,
        id: u64,
        attempt: u64,
        requests: u32,
        segment: &[u8],
    ) -> Result<ConnId, BusyReason> {
        let key = *self
            .be
            .by_handoff
            .get(&(peer, id))
            .ok_or(BusyReason::Unknown)?;
        let inbound = self.be.conns.get(&key).ok_or(BusyReason::Unknown)?;
        match inbound.phase {
            BePhase::Live => {}
            BePhase::Closing | BePhase::Moved => return Err(BusyReason::Closing),
            BePhase::SynSent | BePhase::Replayed | BePhase::Moving => {
                return Err(BusyReason::Unknown);
            }
        }
        if !inbound.follow {
            return Err(BusyReason::Untracked);
        }
        let entry = self
            .conns
            .get(&key)
            .filter(|e| e.client_isn == inbound.client_isn)
            .ok_or(BusyReason::Unknown)?;
        let translation = Translation {
            seq_delta: entry.seq_delta,
            ts_delta: entry.ts_delta,
        };
        // The client's latest ACK first: it usually came with the request the FE holds.
        let ack = TcpPacketBuilder::parse(segment).map_err(|_| BusyReason::Internal)?;
        if ack.src != *key.client().ip() || ack.src_port != key.client().port() {
            return Err(BusyReason::Internal);
        }
        let mut packet = segment.to_vec();
        if rewrite_dst_addr(&mut packet, self.my_addr).is_err()
            || translate_to_server(&mut packet, &translation).is_err()
        {
            return Err(BusyReason::Internal);
        }
        self.send(&packet);
        let acked = ack.ack.wrapping_add(translation.seq_delta);
        // Every response out and acknowledged, by the datapath's count: freezing it now drops
        // nothing our server sends (it has sent all it owes). Then looked at whole, frozen: our
        // TCP's queues (one sock_diag question, not one before freezing too), and the count
        // again (our server may have written in between).
        self.responses_complete(key, requests, acked)?;
        self.freeze(key).map_err(|_| BusyReason::Internal)?;
        if let Err(reason) = self.quiet(key, requests, acked) {
            self.unfreeze(key);
            return Err(reason);
        }
        let inbound = self.be.conns.get_mut(&key).ok_or(BusyReason::Unknown)?;
        inbound.phase = BePhase::Moving;
        inbound.frozen_by = Some(attempt);
        inbound.closed_while_moving = None;
        Ok(inbound.conn(key))
    }

    /// How often a quiesce is looked at again: its waits together within a quarter of the
    /// FE's wait for the answer.
    fn quiesce_rechecks(&self) -> u32 {
        let bound = Duration::from_millis(self.config.limits.handoff_timeout_ms) / 4;
        (0..QUIESCE_RECHECKS)
            .take_while(|n| QUIESCE_RECHECK_FIRST * ((2 << n) - 1) <= bound)
            .count() as u32
    }

    /// Whether the datapath counted exactly `requests` responses of `key` and the client
    /// acknowledged up to the end of the last (`acked`, in our TCP's space).
    fn responses_complete(
        &self,
        key: ConnKey,
        requests: u32,
        acked: u32,
    ) -> Result<(), BusyReason> {
        let responses = self.follow.responses(&key).ok_or(BusyReason::Untracked)?;
        if responses.flags & baton_bpf::RESP_OPAQUE != 0 {
            return Err(BusyReason::Untracked);
        }
        if responses.count != requests || responses.next_head != acked {
            return Err(BusyReason::Responding);
        }
        Ok(())
    }

    /// Whether `key` is quiet: our server has answered all `requests` in full, the client has
    /// acknowledged exactly up to the end of the last answer (`acked`, in our TCP's space), and
    /// nothing is unsent, unacknowledged or unread. The datapath's count first: `Unacked` then
    /// says that our TCP has not taken the client's ACK of every byte it sent.
    fn quiet(&mut self, key: ConnKey, requests: u32, acked: u32) -> Result<(), BusyReason> {
        self.responses_complete(key, requests, acked)?;
        let queues = match self.tcp.queues(key.local(), key.client()) {
            Ok(Some(q)) => q,
            Ok(None) => return Err(BusyReason::Closing),
            Err(e) => {
                tracing::warn!("sock_diag: {e}");
                return Err(BusyReason::Internal);
            }
        };
        if queues.state != tcp_state::ESTABLISHED {
            return Err(BusyReason::Closing);
        }
        if queues.unread > 0 {
            return Err(BusyReason::Unread);
        }
        if queues.unacked > 0 {
            return Err(BusyReason::Unacked);
        }
        Ok(())
    }

    /// The FE moved the connection on: our TCP's side ends (its RST is dropped by the frozen
    /// datapath), the entry lingers for packets still on their way, no close notice.
    pub(super) fn on_move_release(&mut self, peer: usize, id: u64, attempt: u64, now: Instant) {
        let Some(key) = self.be.by_handoff.get(&(peer, id)).copied() else {
            return;
        };
        let Some(inbound) = self.be.conns.get_mut(&key) else {
            return;
        };
        // Only the move that froze it (or any, if a previous agent froze it) releases it.
        if inbound.phase != BePhase::Moving || inbound.frozen_by.is_some_and(|a| a != attempt) {
            return;
        }
        inbound.phase = BePhase::Moved;
        inbound.follow = true;
        let conn = inbound.conn(key);
        // By the socket's cookie when the datapath named it: one round trip, not a lookup first.
        let ended = match inbound.sock_cookie {
            0 => self.tcp.destroy(key.local(), key.client()),
            cookie => self
                .tcp
                .destroy_by_cookie(key.local(), key.client(), cookie),
        };
        if let Err(e) = ended {
            tracing::warn!(%key, "sock_diag destroy of a connection that moved away: {e}");
        }
        self.metrics.moved_away.inc();
        let linger = Duration::from_millis(self.config.limits.close_linger_ms);
        self.timers.at(now + linger, Timer::Moved(conn));
    }

    /// The move did not happen: the connection is ours again, and so is the request the FE held
    /// for it (`segment`'s headers, `data`), replayed now that our TCP may speak.
    pub(super) fn on_move_resume(
        &mut self,
        peer: usize,
        (id, attempt): (u64, u64),
        segment: &[u8],
        data: &[u8],
        now: Instant,
    ) {
        let Some(key) = self.be.by_handoff.get(&(peer, id)).copied() else {
            return;
        };
        let Some(inbound) = self.be.conns.get_mut(&key) else {
            return;
        };
        let frozen_by_it =
            inbound.phase == BePhase::Moving && inbound.frozen_by.is_none_or(|a| a == attempt);
        if frozen_by_it {
            inbound.phase = BePhase::Live;
            inbound.frozen_by = None;
            let closed = inbound.closed_while_moving.take();
            self.unfreeze(key);
            if let Some(notice) = closed {
                self.on_closed(key, notice, now);
            }
        }
        let live = self
            .be
            .conns
            .get(&key)
            .is_some_and(|i| i.phase == BePhase::Live);
        if live && !data.is_empty() {
            self.replay_resumed(key, segment, data);
        }
    }

    /// The client's request the FE held during a move that did not happen, into our TCP.
    fn replay_resumed(&mut self, key: ConnKey, segment: &[u8], data: &[u8]) {
        let Some(entry) = self
            .conns
            .get(&key)
            .filter(|e| e.role() == Some(ConnRole::Be))
        else {
            return;
        };
        let Ok(template) = TcpPacketBuilder::parse(segment) else {
            self.metrics.malformed_events.inc();
            return;
        };
        if template.src != *key.client().ip() || template.src_port != key.client().port() {
            return;
        }
        let translation = Translation {
            seq_delta: entry.seq_delta,
            ts_delta: entry.ts_delta,
        };
        let segments = packets::client_segments(
            &template,
            self.my_addr,
            template.seq,
            template.ack,
            data,
            false,
            LOCAL_CHUNK + 100,
        );
        for mut packet in segments {
            if translate_to_server(&mut packet, &translation).is_ok() {
                self.send(&packet);
            }
        }
    }

    /// Frozen, and the FE said neither Release nor Resume in time: our side ends.
    pub(super) fn frozen_too_long(&mut self, conn: ConnId, now: Instant) {
        let Some(inbound) = self.be.get(conn) else {
            return;
        };
        if inbound.phase == BePhase::Moving && inbound.frozen_until.is_some_and(|t| t <= now) {
            tracing::warn!(key = %conn.key, "a moving connection heard no release nor resume: ended");
            let (peer, id, attempt) = (inbound.peer, inbound.id, inbound.frozen_by);
            self.on_move_release(peer, id, attempt.unwrap_or_default(), now);
        }
    }

    pub(super) fn moved_linger_over(&mut self, conn: ConnId) {
        if self.be.get(conn).map(|i| i.phase) == Some(BePhase::Moved) {
            self.forget_inbound(conn);
        }
    }
}

impl Engine {
    /// Our TCP took the replay of a peer's datapath offer `id` (from the FE at `from`): a
    /// handed-in connection like one this agent replayed, live when the datapath says so (then
    /// the FE hears Accepted) or refused a margin after its deadline. The notice can be read
    /// after the connection ended and the client's next one on the tuple took its entry: its FE
    /// still hears that it was taken, and that it is over.
    pub(super) fn on_dp_taken(&mut self, key: ConnKey, id: u64, from: Ipv4Addr, now: Instant) {
        let entry = self.conns.get(&key).filter(|e| {
            e.role() == Some(ConnRole::Be)
                && e.flags & conn_flags::DP_OFFER != 0
                && (id == 0 || e.handoff_id == id)
        });
        let Some(entry) = entry else {
            // The datapath takes an offer only on a free tuple or one whose connection closed
            // at both ends: the one named is over.
            if id != 0 && self.be.conns.get(&key).is_none_or(|i| i.id != id) {
                self.taken_and_over(key, from, id);
            }
            return;
        };
        let addr = Ipv4Addr::from(entry.peer_addr);
        let Some(peer) = self.cluster.peers.iter().position(|p| p.addr == addr) else {
            tracing::debug!(%key, %addr, "datapath offer from no member: left to expire");
            return;
        };
        // Told twice (two copies completed at once on two CPUs): taken on once.
        if let Some(old) = self.be.conns.get(&key) {
            if old.client_isn == entry.client_isn {
                return;
            }
            // An earlier connection of the client on the tuple is over, whatever its own
            // notices (read later, they name it) say.
            let (phase, old) = (old.phase, old.conn(key));
            if phase == BePhase::Replayed
                && let Some(inbound) = self.be.get(old)
            {
                let (peer, id) = (inbound.peer, inbound.id);
                self.accepted_here(peer, id);
            }
            // One that moved away is its FE's no more (a release says no ConnClosed).
            if phase == BePhase::Moved {
                self.forget_inbound(old);
            } else {
                self.closed_at_be(old);
            }
        }
        let conn = ConnId {
            key,
            client_isn: entry.client_isn,
        };
        self.be.adopt(
            key,
            peer,
            entry.handoff_id,
            entry.client_isn,
            AdoptedPhase::Replaying,
        );
        // Followed by the FE: our datapath counts its responses (from its SYN-ACK on).
        if entry.flags & conn_flags::FOLLOWED != 0 {
            self.be.set_followed(&key);
        }
        let left = Duration::from_nanos(entry.live_deadline_ns.saturating_sub(monotonic_ns()));
        self.timers.at(now + left + LIVE_MARGIN, Timer::Live(conn));
        self.metrics.handed_in_active.set(self.be.len() as i64);
        // Live already (its notice comes next through the ring, or came first).
        if entry.state() == Some(ConnState::BeEstablished) {
            self.on_be_live(key, entry.handoff_id, entry.sock_cookie);
        }
    }

    /// A datapath offer that came and went before this agent read of it: its FE hears both.
    fn taken_and_over(&mut self, key: ConnKey, from: Ipv4Addr, id: u64) {
        let Some(peer) = self.cluster.peers.iter().position(|p| p.addr == from) else {
            return;
        };
        tracing::debug!(%key, peer, "a datapath offer over before its notice was read");
        self.accepted_here(peer, id);
        self.tell(peer, Message::ConnClosed { id });
    }
}
