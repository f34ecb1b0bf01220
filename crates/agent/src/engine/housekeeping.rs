//! Periodic work, one round every `heartbeat_ms`: this node's load (the datapath's counter,
//! anchored now and then on a count of the local TCP's connections) and listeners, heartbeats to
//! every peer, the datapath's view of the cluster; and every ten seconds, garbage collection of
//! entries no phase waits on. One wakeup of an idle agent does it all.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baton_bpf::{ConnRole, ConnState, DecideMode, HashKind, conn_flags};
use baton_policy::PolicyKind;

use super::timers::{ConnId, Timer};
use super::{Engine, monotonic_ns};
use crate::kernel::ServiceChanges;
use crate::sockdiag::tcp_state;

/// How often garbage is collected (rounds of housekeeping in between, every `heartbeat_ms`, count
/// the load and send heartbeats). Only entries no phase waits on are garbage.
const GARBAGE_EVERY: Duration = Duration::from_secs(10);
/// With nothing new to tell, a heartbeat goes every this many rounds (peers count a node down
/// after five silent rounds).
const QUIET_HEARTBEAT_ROUNDS: u32 = 2;
/// How often the load the datapath counts is anchored again on a count of the local TCP's
/// connections (an expensive dump: it heals whatever the counter missed at start).
const LOAD_ANCHOR_EVERY: Duration = Duration::from_secs(60);
/// The datapath counts this agent alive for this many rounds of housekeeping after each, and at
/// least `ALIVE_AT_LEAST`. Short, so that a dead agent's node fails open before its clients'
/// second retransmission (0.6 s after the first send): what the dead agent held is then served
/// within about a second. Too short costs little: a late round only serves new connections
/// locally for a moment.
const ALIVE_ROUNDS: u32 = 2;
const ALIVE_AT_LEAST: Duration = Duration::from_millis(300);
/// An FE entry whose handshake never completed (SYN flood, lost ACK) goes after this.
const SYN_ENTRY_TTL_NS: u64 = 10_000_000_000;
/// A server still sending this long after the client's last packet is talking to nobody.
const ORPHAN_SERVER_SLACK_NS: u64 = 1_000_000_000;
/// A BE connection idle this long is checked against the local TCP (is it still there?).
const BE_LIVENESS_CHECK_NS: u64 = 5_000_000_000;

/// The counts the last summary log line was taken from.
#[derive(Clone, Debug, Default)]
pub(super) struct Summary {
    handed_out: u64,
    handed_in: u64,
    fallbacks: BTreeMap<String, u64>,
    refused: BTreeMap<String, u64>,
}

impl Summary {
    /// What happened between `last` and `self`, as a log line; `None` if no connection fell
    /// back and no handoff was refused.
    fn since(&self, last: &Summary) -> Option<String> {
        let by_reason = |now: &BTreeMap<String, u64>, last: &BTreeMap<String, u64>| {
            now.iter()
                .filter_map(|(reason, &n)| {
                    let n = n.saturating_sub(last.get(reason).copied().unwrap_or(0));
                    (n > 0).then(|| format!("{reason}={n}"))
                })
                .collect::<Vec<_>>()
        };
        let fallbacks = by_reason(&self.fallbacks, &last.fallbacks);
        let refused = by_reason(&self.refused, &last.refused);
        if fallbacks.is_empty() && refused.is_empty() {
            return None;
        }
        let list = |v: Vec<String>| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(" ")
            }
        };
        Some(format!(
            "{} handed out, {} handed in; fallbacks: {}; refused: {}",
            self.handed_out.saturating_sub(last.handed_out),
            self.handed_in.saturating_sub(last.handed_in),
            list(fallbacks),
            list(refused)
        ))
    }
}

/// A count of the local TCP's connections, and the datapath's counters when it was taken: the
/// load is the count moved on by what the counters moved since.
#[derive(Clone, Copy, Debug)]
pub(super) struct LoadAnchor {
    at: Instant,
    established: u32,
    opened: u64,
    closed: u64,
}

impl LoadAnchor {
    fn load(&self, opened: u64, closed: u64) -> u32 {
        let now = i64::from(self.established) + opened.saturating_sub(self.opened) as i64
            - closed.saturating_sub(self.closed) as i64;
        now.clamp(0, i64::from(u32::MAX)) as u32
    }
}

impl Engine {
    /// Writes the datapath's configuration if it changed: distribute or not, and the cluster as
    /// the datapath's hash policy sees it.
    pub(super) fn write_datapath_config(&mut self, now: Instant) {
        let distribute = self.config.policy.kind != PolicyKind::Local
            && self.config.cluster.members.len() > 1
            && !self.cluster.draining;
        let mut config = baton_bpf::NodeConfig::new(
            self.my_addr,
            &self.config.cluster.service_ports,
            distribute,
        );
        let drained = self.cluster.peers[self.cluster.me].drained;
        // A drained node keeps nothing new here: the agent places every connection.
        if let Some(mode) = self.datapath_decides
            && !drained
        {
            let offers = self.config.limits.datapath_offers;
            config.set_decide(
                mode,
                self.cluster.me,
                &self.cluster.datapath_nodes(now, offers),
            );
            if self.config.policy.kind == PolicyKind::BoundedHash {
                if self.write_bounded_view() {
                    config.hash_kind = HashKind::Bounded as u8;
                } else {
                    config.decide = DecideMode::Agent as u8;
                }
            }
        }
        // Offers from peers' datapaths are taken while this node takes handoffs at all; they may
        // go live within the same deadline as the agent's own replays.
        let takes = self.config.limits.datapath_offers
            && !self.cluster.draining
            && !drained
            && !self.standing_down;
        let live_window = Duration::from_millis(self.config.limits.handoff_timeout_ms / 2);
        config.set_offers(takes, self.offer_key, live_window.as_nanos() as u64);
        if self.written == Some(config) {
            return;
        }
        match self.datapath.write(&config) {
            Ok(()) => self.written = Some(config),
            Err(e) => tracing::warn!("writing the datapath's configuration: {e}"),
        }
    }

    /// Writes what the datapath's bounded-load hashing decides by, if it changed: the ring, each
    /// member's load as the policy sees it now, and what the datapath had decided for each when
    /// it was read (it counts on from there). Whether the datapath has a view to decide by.
    fn write_bounded_view(&mut self) -> bool {
        let decided = match self.datapath.bounded_decided() {
            Ok(counts) => counts.decided,
            Err(e) => {
                tracing::warn!("reading the datapath's bounded-load counts: {e}");
                return false;
            }
        };
        let mut view = self
            .cluster
            .bounded_view(self.config.policy.params.balance_factor);
        for (node, from) in view.nodes.iter_mut().zip(decided) {
            node.counted_from = from;
        }
        if self.bounded_written.as_deref() == Some(&*view) {
            return true;
        }
        match self.datapath.write_bounded(&view) {
            Ok(()) => {
                self.bounded_written = Some(view);
                true
            }
            Err(e) => {
                tracing::warn!("writing the datapath's bounded-load view: {e}");
                self.bounded_written = None;
                false
            }
        }
    }

    /// Every `heartbeat_ms`: the load is counted and, if it or the listeners changed, told to
    /// every peer (with nothing new, every other round, for liveness); the listeners are looked at
    /// if they changed, the datapath's view of the cluster refreshed; every ten seconds garbage is
    /// collected. One wakeup of an idle agent does it all.
    pub(super) fn housekeeping(&mut self, now: Instant) {
        let period = Duration::from_millis(self.config.limits.heartbeat_ms.max(1));
        self.timers.at(now + period, Timer::Housekeeping);
        let garbage_every = (GARBAGE_EVERY.as_millis() / period.as_millis()).max(1) as u64;
        if self.housekeeping_rounds.is_multiple_of(garbage_every) {
            self.collect_garbage(now);
            self.log_summary();
        }
        self.housekeeping_rounds += 1;
        match self.datapath.service_changes() {
            Ok(changes) => {
                self.check_listeners(changes);
                self.count_load(now, changes);
            }
            Err(e) => tracing::warn!("reading the datapath's counters: {e}"),
        }
        if !self.standing_down {
            // The datapath holds connections for this agent only while it beats.
            let alive_for = (period * ALIVE_ROUNDS).max(ALIVE_AT_LEAST);
            self.datapath
                .heartbeat(monotonic_ns() + alive_for.as_nanos() as u64);
        }
        self.send_heartbeats(now, period);
        self.write_datapath_config(now);
        self.metrics.peers_up.set(self.cluster.up_count(now) as i64);
        self.export_peers(now);
        self.metrics.held.set(self.fe.in_flight() as i64);
        self.metrics.handed_in_active.set(self.be.len() as i64);
    }

    /// The per-peer gauges, as of this round.
    fn export_peers(&self, now: Instant) {
        let peer = &self.metrics.peer;
        for i in self.cluster.others() {
            let p = &self.cluster.peers[i];
            let name = [p.name.as_str()];
            peer.up
                .with_label_values(&name)
                .set(i64::from(self.cluster.is_up(i, now)));
            peer.load.with_label_values(&name).set(i64::from(p.load));
            if let Some(rtt) = self.mesh.rtt_us(i) {
                peer.rtt.with_label_values(&name).set(f64::from(rtt) * 1e-6);
            }
        }
    }

    /// Every ten seconds, at info, what went other than planned since the last summary: the
    /// connections meant for a peer but served here and the handoffs this node refused, by
    /// reason, with the handoffs made. Nothing when nothing went wrong (an operator reads one
    /// line per ten seconds at most, never one per connection).
    fn log_summary(&mut self) {
        let now = Summary {
            handed_out: self.metrics.handoffs_out.get(),
            handed_in: self.metrics.handoffs_in.get(),
            fallbacks: self.metrics.fallbacks.snapshot(),
            refused: self.metrics.refused.snapshot(),
        };
        let last = self.last_summary.replace(now.clone()).unwrap_or_default();
        let Some(line) = now.since(&last) else {
            return;
        };
        tracing::info!(
            "in the last {}s: {line} (served here instead of a peer, by reason; refused, by reason)",
            GARBAGE_EVERY.as_secs()
        );
    }

    /// Sends the heartbeat now if anything in it changed (outside the round).
    pub(super) fn housekeeping_heartbeat(&mut self, now: Instant) {
        let period = Duration::from_millis(self.config.limits.heartbeat_ms.max(1));
        self.send_heartbeats(now, period);
    }

    /// Tells the peers this node's load and listeners if they changed since the last heartbeat,
    /// or if that is `QUIET_HEARTBEAT_ROUNDS` rounds old. (Each message sent drives the peer's TCP
    /// and wakes its agent: an idle cluster should send few.)
    fn send_heartbeats(&mut self, now: Instant, period: Duration) {
        let me = &self.cluster.peers[self.cluster.me];
        let (load, serving) = (me.load, me.serving);
        let quiet = period * QUIET_HEARTBEAT_ROUNDS;
        let due = self.cluster.reported.is_none_or(|(at, l, s)| {
            (l, s) != (load, serving) || now.saturating_duration_since(at) + period / 2 >= quiet
        });
        if !due {
            return;
        }
        let heartbeat = self.cluster.heartbeat();
        for peer in self.cluster.others() {
            self.mesh.send(peer, heartbeat.clone());
        }
        self.cluster.reported = Some((now, load, serving));
    }

    /// Whether the local server listens on every service port: looked at when a listener opened
    /// or closed (a replayed SYN's RST also tells at once).
    fn check_listeners(&mut self, changes: ServiceChanges) {
        let counts = (changes.listeners_opened, changes.listeners_closed);
        if self.listeners_seen == Some(counts) {
            return;
        }
        let ports = self.config.cluster.service_ports.clone();
        match self.tcp.listening(self.my_addr, &ports) {
            Ok(listening) => {
                self.cluster.set_listening(listening);
                self.listeners_seen = Some(counts);
            }
            Err(e) => tracing::warn!("sock_diag: {e}"),
        }
    }

    /// This node's load (the connections its TCP serves, local and handed in) and whether its
    /// server listens: what the policies see here and the heartbeats report to the peers.
    fn count_load(&mut self, now: Instant, changes: ServiceChanges) {
        let ports = self.config.cluster.service_ports.clone();
        let me = self.cluster.me;
        match self.current_load(now, &ports, changes) {
            Ok(load) => {
                self.cluster.peers[me].reported(load);
                self.metrics.load.set(i64::from(load));
            }
            // No fresh count: the last one stays, rather than the bumps piling up.
            Err(e) => tracing::warn!("counting the load: {e}"),
        }
    }

    fn current_load(
        &mut self,
        now: Instant,
        ports: &[u16],
        changes: ServiceChanges,
    ) -> Result<u32, String> {
        let ServiceChanges { opened, closed, .. } = changes;
        let stale = self
            .load_anchor
            .is_none_or(|a| now.saturating_duration_since(a.at) >= LOAD_ANCHOR_EVERY);
        if stale {
            let established = self
                .tcp
                .established(self.my_addr, ports)
                .map_err(|e| format!("sock_diag: {e}"))?;
            self.load_anchor = Some(LoadAnchor {
                at: now,
                established,
                opened,
                closed,
            });
        }
        Ok(self
            .load_anchor
            .map_or(0, |anchor| anchor.load(opened, closed)))
    }

    /// A handed-in connection nobody can finish: its client has sent nothing for the orphan
    /// timeout, and either its FE has been down as long (nothing can reach us from the client) or
    /// our server kept sending since (to a client that no longer answers).
    fn is_orphan(&self, entry: &baton_bpf::Conn, now: Instant, now_ns: u64) -> bool {
        let bound = Duration::from_secs(self.config.limits.orphan_timeout_s);
        let bound_ns = bound.as_nanos() as u64;
        if now_ns.saturating_sub(entry.client_seen_ns) < bound_ns {
            return false;
        }
        let unanswered = entry.last_seen_ns > entry.client_seen_ns + ORPHAN_SERVER_SLACK_NS;
        let fe = self
            .cluster
            .peers
            .iter()
            .position(|p| !p.removed && p.addr.octets() == entry.peer_addr);
        let fe_gone =
            fe.is_some_and(|fe| fe != self.cluster.me && self.cluster.down_for(fe, now) >= bound);
        unanswered || fe_gone
    }

    /// Entries no phase is waiting on: half-open floods, connections never decided because they
    /// never sent data, idle forwarding, handed-in connections whose close was missed.
    fn collect_garbage(&mut self, now: Instant) {
        self.fe.given_up.age();
        let now_ns = monotonic_ns();
        let idle_ns = self
            .config
            .limits
            .idle_timeout_s
            .saturating_mul(1_000_000_000);
        let hold_ns = self.config.limits.hold_ms.saturating_mul(1_000_000);
        let linger_ns = self.config.limits.close_linger_ms.saturating_mul(1_000_000);
        let mut count = 0i64;
        let mut doomed = Vec::new();
        let mut gone_at_be = Vec::new();
        let mut orphans = Vec::new();
        for (key, entry) in self.conns.entries() {
            count += 1;
            let conn = ConnId {
                key,
                client_isn: entry.client_isn,
            };
            let age = now_ns.saturating_sub(entry.last_seen_ns);
            let stale = match (entry.role(), entry.state()) {
                (Some(ConnRole::Fe), Some(ConnState::FeSyn)) => age > SYN_ENTRY_TTL_NS,
                // Held without a word to the agent (no data yet): the next client packet goes to
                // our TCP and completes the handshake there.
                (Some(ConnRole::Fe), Some(ConnState::FeHold)) => {
                    !self.fe.knows(&key) && age > hold_ns
                }
                // Held and offered connections have their own deadlines. A forwarded one the client
                // closed whose close report never came (it went to an agent that is gone) goes
                // after its linger.
                (Some(ConnRole::Fe), _) => {
                    let closed = entry.flags & (conn_flags::CLIENT_FIN | conn_flags::RST) != 0;
                    !self.fe.is_undecided(&key)
                        && (age > idle_ns || (closed && age > 2 * linger_ns))
                }
                (Some(ConnRole::Be), Some(ConnState::BeEstablished)) => {
                    if self.is_orphan(&entry, now, now_ns) {
                        orphans.push(conn);
                    } else if age > BE_LIVENESS_CHECK_NS {
                        gone_at_be.push(conn);
                    }
                    false
                }
                (Some(ConnRole::Be), _) => !self.be.has(&key) && age > SYN_ENTRY_TTL_NS,
                _ => age > idle_ns,
            };
            if stale {
                doomed.push((conn, entry));
            }
        }
        // Orphans: the server's socket is closed, every trace goes.
        for conn in orphans {
            match self.tcp.destroy(conn.key.local(), conn.key.client()) {
                Ok(_) => {
                    tracing::info!(key = %conn.key, "freed a handed-in connection whose client or FE is gone");
                    self.metrics.orphans_freed.inc();
                    self.closed_at_be(conn);
                    count -= 1;
                }
                Err(e) => tracing::warn!("sock_diag destroy: {e}"),
            }
        }
        // Idle at the BE: the local TCP says whether it is over; a live connection is never cut.
        for conn in gone_at_be {
            match self.tcp.tcp_state(conn.key.local(), conn.key.client()) {
                Ok(Some(tcp_state::TIME_WAIT)) => {
                    self.end_time_wait(conn, 0);
                    self.closed_at_be(conn);
                    count -= 1;
                }
                Ok(None | Some(tcp_state::CLOSE)) => {
                    self.closed_at_be(conn);
                    count -= 1;
                }
                Ok(Some(_)) => {}
                Err(e) => tracing::warn!("sock_diag: {e}"),
            }
        }
        for (conn, entry) in doomed {
            match entry.role() {
                Some(ConnRole::Be) => {
                    self.reset_local(conn);
                    self.conns.remove(&conn.key);
                    // Counted for a peer that follows it (whatever this node's own policy).
                    self.follow.remove_responses(&conn.key);
                }
                _ => {
                    // Changed since the walk (the datapath may have served it here and followed
                    // it meanwhile): not the one found stale.
                    let now_entry = self.conns.get(&conn.key);
                    if now_entry.is_some_and(|e| {
                        (e.role, e.state, e.client_isn)
                            != (entry.role, entry.state, entry.client_isn)
                    }) {
                        continue;
                    }
                    self.reset_half_open_offer(conn, &entry);
                    self.conns.remove(&conn.key);
                    if self.follows_requests {
                        self.follow.remove_watch(&conn.key);
                    }
                    self.fe.forget(conn);
                }
            }
            count -= 1;
        }
        self.metrics.conn_entries.set(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_says_only_what_changed_and_nothing_when_all_went_well() {
        let at = |out, fallbacks: &[(&str, u64)], refused: &[(&str, u64)]| Summary {
            handed_out: out,
            handed_in: 0,
            fallbacks: fallbacks.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
            refused: refused.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
        };
        let first = at(10, &[("timeout", 2)], &[]);
        assert_eq!(
            first.since(&Summary::default()).as_deref(),
            Some("10 handed out, 0 handed in; fallbacks: timeout=2; refused: none")
        );
        assert_eq!(at(50, &[("timeout", 2)], &[]).since(&first), None);
        assert_eq!(
            at(50, &[("timeout", 2), ("peer_down", 1)], &[("collision", 3)])
                .since(&first)
                .as_deref(),
            Some("40 handed out, 0 handed in; fallbacks: peer_down=1; refused: collision=3")
        );
    }
}
