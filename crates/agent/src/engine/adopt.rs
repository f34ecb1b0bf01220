//! An agent's start on a datapath that outlived the previous one, and its own hand-over.
//!
//! **Adoption.** A new agent (after a crash, a restart, an upgrade) finds the pinned conn table
//! still forwarding and translating. It takes on what is there:
//! - FE entries forwarding to a peer become forwarded connections (the handoff id is in the
//!   entry, so the BE's close report finds them); those the client already closed only linger;
//! - BE entries translating become live handed-in connections (closing if the datapath reported
//!   their close); BE entries still being replayed can only go live within their deadline or be
//!   refused, as for any replay;
//! - entries the datapath holds for an agent (FE_SYN, FE_HOLD) need nothing: their next packet
//!   reaches this agent as a held packet, and the client retransmits what the previous one had;
//! - followed connections are followed no more (their watches go): their later requests are
//!   served where they are.
//!
//! **Hand-over.** An agent told that another takes over stops beating (the datapath fails open
//! at once: new connections are served here by the local server), tells its peers it takes
//! nothing new, serves its held connections here, and waits only for what cannot be cut short:
//! offers out to peers (answered or timed out within `handoff_timeout_ms`) and replays in (live or
//! refused within half of it). Then it exits, leaving the datapath pinned.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use baton_bpf::{ConnRole, ConnState, conn_flags};
use baton_proto::Message;

use super::be::AdoptedPhase;
use super::fe::LocalReason;
use super::timers::{ConnId, Timer};
use super::{Engine, monotonic_ns};

/// What an agent found in the conn table at its start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    /// FE connections forwarded to a peer.
    pub forwarded: usize,
    /// BE connections live (or closing).
    pub handed_in: usize,
    /// BE connections a previous agent was replaying: live or refused soon.
    pub replaying: usize,
    /// Entries that name no member of this cluster (a changed configuration): left to expire.
    pub unknown_peer: usize,
}

impl Engine {
    /// Takes on the connections of a datapath that a previous agent left running.
    pub fn adopt(&mut self, now: Instant) -> Adopted {
        let mut adopted = Adopted::default();
        let now_ns = monotonic_ns();
        let linger = Duration::from_millis(self.config.limits.close_linger_ms);
        for (key, entry) in self.conns.entries() {
            let conn = ConnId {
                key,
                client_isn: entry.client_isn,
            };
            let peer_addr = Ipv4Addr::from(entry.peer_addr);
            let peer = self
                .cluster
                .peers
                .iter()
                .position(|p| p.addr == peer_addr)
                // A translating entry may name this node: a connection it accepted and serves
                // itself, followed. A forwarding one never does.
                .filter(|&p| p != self.cluster.me || entry.role() == Some(ConnRole::Be));
            let (role, state) = (entry.role(), entry.state());
            let tracked = matches!(
                (role, state),
                (Some(ConnRole::Fe), Some(ConnState::FeForward)) | (Some(ConnRole::Be), _)
            );
            if !tracked {
                continue;
            }
            let Some(peer) = peer else {
                adopted.unknown_peer += 1;
                continue;
            };
            let id = entry.handoff_id;
            // What the previous agent followed is not known here: the datapath holds no more
            // request heads for it. A connection it froze for a move stays frozen (the move may
            // have happened: the new node may serve it), until the FE's word or its bound.
            let frozen = self
                .follow
                .watch(&key)
                .is_some_and(|w| w.flags & baton_bpf::watch_flags::FROZEN != 0)
                && role == Some(ConnRole::Be);
            if frozen {
                let only_frozen = baton_bpf::Watch {
                    flags: baton_bpf::watch_flags::FROZEN,
                    next_head_seq: 0,
                    ..baton_bpf::Watch::default()
                };
                if let Err(e) = self.follow.set_watch(key, only_frozen) {
                    tracing::warn!(%key, "watch: {e}");
                }
            } else {
                self.follow.remove_watch(&key);
            }
            match (role, state) {
                (Some(ConnRole::Fe), _) => {
                    let closed = entry.flags & (conn_flags::CLIENT_FIN | conn_flags::RST) != 0;
                    self.fe
                        .adopt_forwarded(key, entry.client_isn, peer, id, closed);
                    if closed {
                        self.timers.at(now + linger, Timer::Expire(conn));
                    }
                    adopted.forwarded += 1;
                }
                (_, Some(ConnState::BeEstablished)) => {
                    let closing = entry.flags & conn_flags::CLOSE_REPORTED != 0;
                    let phase = if closing {
                        self.timers.at(now + linger, Timer::Closed(conn));
                        AdoptedPhase::Closing
                    } else if frozen {
                        let bound =
                            Duration::from_millis(2 * self.config.limits.handoff_timeout_ms);
                        self.timers.at(now + bound, Timer::Frozen(conn));
                        AdoptedPhase::Moving { until: now + bound }
                    } else {
                        AdoptedPhase::Live
                    };
                    self.be.adopt(key, peer, id, entry.client_isn, phase);
                    if peer == self.cluster.me {
                        // Its FE side too, for the close it reports to itself.
                        self.fe
                            .adopt_forwarded(key, entry.client_isn, peer, id, closing);
                    }
                    if self.follow.responses(&key).is_some() {
                        // Its responses are still counted: a move can still be answered.
                        self.be.set_followed(&key);
                    }
                    adopted.handed_in += 1;
                }
                _ => {
                    // Live by its deadline (the datapath tells), or refused a margin after it.
                    self.be
                        .adopt(key, peer, id, entry.client_isn, AdoptedPhase::Replaying);
                    if entry.flags & conn_flags::FOLLOWED != 0 {
                        // A followed datapath offer: its datapath counts the responses.
                        self.be.set_followed(&key);
                    }
                    let left = Duration::from_nanos(entry.live_deadline_ns.saturating_sub(now_ns));
                    self.timers
                        .at(now + left + super::be::LIVE_MARGIN, Timer::Live(conn));
                    adopted.replaying += 1;
                }
            }
        }
        self.metrics.handed_in_active.set(self.be.len() as i64);
        adopted
    }

    /// Another agent takes over: from now on nothing new is held here (the datapath fails open)
    /// or taken from peers; held connections are served here at once.
    pub fn begin_handover(&mut self, now: Instant) {
        self.standing_down = true;
        self.datapath.stand_down();
        self.cluster.draining = true;
        for peer in self.cluster.others() {
            self.mesh.send(peer, Message::Draining);
        }
        for key in self.fe.held() {
            self.release_local(key, LocalReason::Shutdown, now);
        }
        // The next agent does not know what this one followed: nothing more is held for it.
        self.stop_following_all(now);
    }

    /// Whether nothing is in flight that a hand-over must wait for: no offer out, no move under
    /// way (a move's offer is never cut short), no replay in.
    /// (Held connections are served here when it ends: [`Engine::release_all`].)
    pub fn settled(&self) -> bool {
        self.fe.offers_out() == 0 && self.fe.moves.is_empty() && self.be.replaying() == 0
    }
}
