//! What an operator asks of a running node (`baton ctl`, SIGHUP): its state, its distributed
//! connections, a drain that is not a stop, and a new configuration applied in place.
//!
//! Answers come from the engine's own state and the datapath's table, on demand: nothing here
//! runs unless asked. A drain by the operator gives the node's server nothing new: peers choose
//! it for nothing, and what it accepts itself goes to a live peer (content rules excepted); it
//! serves what it has and stays a member. A stop's drain (`begin_drain`) instead stops
//! distributing and ends in the agent's exit. A reload applies what can change without touching a
//! connection (policy, rules, limits, health, members) and refuses the rest with the reason,
//! keeping the running configuration. A removed member is chosen for nothing new, its new offers
//! are refused and its new control connections too; the ones it has stay for what is under way,
//! whose connections go on in the datapaths.

use std::time::{Duration, Instant};

use baton_bpf::{ConnRole, ConnState};
use baton_policy::{BoundedHash, PolicyKind, Router};
use baton_proto::Message;

use super::{Engine, monotonic_ns};
use crate::config::NodeConfig;
use crate::ctl::{ConnRow, PeerRow, Status};
use baton_bpf::DecideMode;

impl Engine {
    /// This node and its peers as an operator sees them. The caller adds what only it knows
    /// (pid, version, configuration file).
    pub fn status(&self, now: Instant) -> Status {
        let me = &self.cluster.peers[self.cluster.me];
        let state = if self.standing_down {
            "handing-over"
        } else if self.cluster.draining {
            "stopping"
        } else if me.drained {
            "drained"
        } else {
            "running"
        };
        Status {
            node: self.config.node.name.clone(),
            address: self.my_addr,
            interface: self.config.node.interface.clone(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            policy: self.config.policy.kind.as_str().to_string(),
            uptime_s: self.cluster.age(now).as_secs(),
            state: state.to_string(),
            serving: me.serving,
            listening: self.cluster.listening,
            healthy: self.cluster.healthy,
            config_digest: format!("{:016x}", self.config_digest),
            config_file: None,
            load: me.load,
            held: self.fe.undecided().len(),
            handed_out: self.fe.handed_out_open(),
            handed_in: self.be.open(),
            peers: self.peer_rows(now),
        }
    }

    /// Every member but this node, in configuration order.
    pub fn peer_rows(&self, now: Instant) -> Vec<PeerRow> {
        self.cluster
            .others()
            .map(|i| {
                let p = &self.cluster.peers[i];
                let state = if self.cluster.is_up(i, now) {
                    "up"
                } else if !p.outbound_up || self.cluster.down_for(i, now) >= self.cluster.fresh_for
                {
                    "down"
                } else if p.draining {
                    "stopping"
                } else if p.drained {
                    "drained"
                } else {
                    "not-serving"
                };
                PeerRow {
                    name: p.name.clone(),
                    address: p.addr,
                    state: state.to_string(),
                    load: p.load,
                    rtt_us: self.mesh.rtt_us(i),
                    last_heard_ms: p
                        .last_heard
                        .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                    config_digest: p.config_digest.map(|d| format!("{d:016x}")),
                    config_agrees: p.config_digest.map(|d| d == self.config_digest),
                }
            })
            .collect()
    }

    /// Every connection this node carries for another (handed out, as FE) or from another
    /// (handed in, as BE), from the datapath's table and the engine's phases.
    pub fn conn_rows(&self) -> Vec<ConnRow> {
        let now_ns = monotonic_ns();
        let ms = |ns: u64| now_ns.saturating_sub(ns) / 1_000_000;
        let me = self.config.node.name.clone();
        let name = |peer: usize| {
            self.cluster
                .peers
                .get(peer)
                .map_or_else(|| format!("#{peer}"), |p| p.name.clone())
        };
        let mut rows: Vec<ConnRow> = self
            .conns
            .entries()
            .into_iter()
            .filter_map(|(key, entry)| {
                let (direction, fe, be, phase) = match entry.role()? {
                    ConnRole::Fe if entry.state() == Some(ConnState::FeForward) => {
                        let (peer, phase) = self.fe.handed_out(&key)?;
                        ("out", me.clone(), name(peer), phase)
                    }
                    ConnRole::Fe => return None,
                    ConnRole::Be => {
                        let (peer, phase) = self.be.handed_in(&key)?;
                        ("in", name(peer), me.clone(), phase)
                    }
                };
                Some(ConnRow {
                    client: key.client(),
                    fe,
                    be,
                    direction: direction.to_string(),
                    phase: phase.to_string(),
                    age_ms: ms(entry.created_ns),
                    idle_ms: ms(entry.last_seen_ns),
                    packets: entry.packets,
                    bytes: entry.bytes,
                    handoff_id: entry.handoff_id,
                })
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.age_ms));
        rows
    }

    /// The operator drains this node (`drained`) or brings it back: peers are told at once and
    /// choose it for nothing new while drained, and what it accepts goes to a peer
    /// (`unless_drained`); what it has it serves.
    /// Returns what changed, for the operator.
    pub fn set_drained(&mut self, drained: bool, now: Instant) -> String {
        let me = self.cluster.me;
        if self.cluster.peers[me].drained == drained {
            return format!(
                "{} is {}",
                self.config.node.name,
                if drained {
                    "drained already"
                } else {
                    "not drained"
                }
            );
        }
        self.cluster.peers[me].drained = drained;
        self.metrics.drained.set(i64::from(drained));
        self.send_node_status_to_all();
        self.write_datapath_config(now);
        let verb = if drained { "drained" } else { "undrained" };
        tracing::info!(
            handed_in = self.be.open(),
            "{verb} by the operator: peers {} choose this node",
            if drained { "no longer" } else { "again" }
        );
        format!(
            "{} {verb}: peers {} choose it ({} connections handed in are open)",
            self.config.node.name,
            if drained { "no longer" } else { "again" },
            self.be.open()
        )
    }

    /// Tells `peer` this node's operator state and configuration digest.
    pub(super) fn send_node_status(&self, peer: usize) {
        self.mesh.send(peer, self.node_status());
    }

    fn send_node_status_to_all(&self) {
        let status = self.node_status();
        for peer in self.cluster.others() {
            self.mesh.send(peer, status.clone());
        }
    }

    fn node_status(&self) -> Message {
        Message::NodeStatus {
            drained: self.cluster.peers[self.cluster.me].drained,
            config_digest: self.config_digest,
        }
    }

    /// A peer's operator state and configuration digest arrived.
    pub(super) fn on_node_status(&mut self, peer: usize, drained: bool, digest: u64) {
        let ours = self.config_digest;
        let p = &mut self.cluster.peers[peer];
        if p.drained != drained {
            tracing::info!(peer = %p.name, "peer {}", if drained { "drained by its operator" } else { "undrained" });
        }
        p.drained = drained;
        if p.config_digest != Some(digest) && digest != ours {
            tracing::warn!(
                peer = %p.name,
                theirs = format_args!("{digest:016x}"),
                ours = format_args!("{ours:016x}"),
                "the peer's cluster configuration (members, ports, policy) differs from ours"
            );
        }
        p.config_digest = Some(digest);
        self.count_config_disagreements();
    }

    fn count_config_disagreements(&self) {
        let ours = self.config_digest;
        let disagree = self
            .cluster
            .peers
            .iter()
            .filter(|p| !p.removed && p.config_digest.is_some_and(|d| d != ours))
            .count();
        self.metrics.config_mismatched_peers.set(disagree as i64);
    }

    /// The local server's health check changed its verdict (`None`: no check any more).
    pub fn on_health(&mut self, healthy: Option<bool>, now: Instant) {
        let was = self.cluster.healthy;
        match healthy {
            Some(true) if was == Some(false) => tracing::info!(
                "the local server passes its health check again: peers may choose this node"
            ),
            Some(false) => tracing::warn!(
                "the local server fails its health check: peers no longer choose this node"
            ),
            _ => {}
        }
        self.cluster.set_healthy(healthy);
        self.metrics.healthy.set(i64::from(healthy != Some(false)));
        // Peers hear it now, not at the next quiet heartbeat.
        self.cluster.reported = None;
        self.housekeeping_heartbeat(now);
    }

    /// Applies `new` in place if only what can change while running changed: the policy, its
    /// rules and parameters, the limits, the health check, the members. Anything else is refused with the
    /// field and the running configuration is kept. Returns what changed.
    pub fn reload(&mut self, new: NodeConfig, now: Instant) -> Result<String, String> {
        let old = &self.config;
        let fixed = |field: &str| {
            Err(format!(
                "{field} cannot change while the agent runs (restart it: a new agent takes over \
                 without dropping connections); the running configuration is kept"
            ))
        };
        if new.node != old.node {
            return fixed("node");
        }
        if new.cluster.key != old.cluster.key {
            return fixed("cluster.key");
        }
        if new.cluster.service_ports != old.cluster.service_ports {
            return fixed("cluster.service_ports");
        }
        if new.cluster.control_port != old.cluster.control_port {
            return fixed("cluster.control_port");
        }
        if new.metrics != old.metrics {
            return fixed("metrics");
        }
        let mut changed = Vec::new();
        if new.cluster.members != old.cluster.members {
            let changes = self.cluster.set_members(&new.cluster.members)?;
            self.mesh
                .set_members(self.cluster.mesh_members(new.cluster.control_port));
            let names = |indices: &[usize]| {
                indices
                    .iter()
                    .map(|&i| self.cluster.peers[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            if !changes.added.is_empty() {
                changed.push(format!("members added: {}", names(&changes.added)));
            }
            if !changes.removed.is_empty() {
                changed.push(format!("members removed: {}", names(&changes.removed)));
            }
            for &i in &changes.removed {
                self.metrics.peer.forget(&self.cluster.peers[i].name);
            }
            if changes.added.is_empty() && changes.removed.is_empty() {
                changed.push("members reordered".to_string());
            }
        }
        if new.policy.kind != old.policy.kind {
            changed.push(format!(
                "policy {} -> {}",
                old.policy.kind.as_str(),
                new.policy.kind.as_str()
            ));
        } else if new.policy != old.policy {
            changed.push("policy rules/parameters".to_string());
        }
        if new.limits != old.limits {
            changed.push("limits".to_string());
        }
        if new.health != old.health {
            changed.push("health".to_string());
        }
        if changed.is_empty() {
            return Ok("nothing changed".to_string());
        }
        self.metrics.peers_up.set(self.cluster.up_count(now) as i64);
        let policy = &new.policy;
        // Only a new policy starts afresh: its state (LARD's tables, round-robin's position) is
        // where the targets live.
        if *policy != self.config.policy {
            self.router = Router::new(
                policy.kind,
                &policy.params,
                &policy.rules,
                policy.affinity_cookie.clone(),
            );
        }
        self.fallback = BoundedHash::new(policy.params.balance_factor);
        self.dispatching = matches!(policy.kind, PolicyKind::Lard | PolicyKind::LardR);
        self.datapath_decides = datapath_may_decide(&new);
        self.follows_requests = new.policy.follows_requests();
        self.head_limits.max_head_bytes = new.limits.head_bytes;
        self.cluster.fresh_for = Duration::from_millis(new.limits.heartbeat_ms.saturating_mul(5));
        self.config_digest = new.cluster_digest();
        self.timers
            .set_slack(Duration::from_millis(new.limits.timer_slack_ms));
        self.config = new;
        self.write_datapath_config(now);
        self.send_node_status_to_all();
        self.count_config_disagreements();
        let summary = changed.join(", ");
        tracing::info!(changed = %summary, digest = format_args!("{:016x}", self.config_digest), "configuration reloaded");
        Ok(format!("reloaded: {summary}"))
    }
}

/// What the datapath may decide itself: with plain `hash` or `bounded-hash` (no rules, no
/// cookie) first requests, or, when requests are followed, the later requests that stay where
/// their connection is; with plain `round-robin` first requests; `None`: the agent decides.
/// (`bounded-hash` runs the same modes over its own ring: `Engine::write_bounded_view`.)
pub(super) fn datapath_may_decide(config: &NodeConfig) -> Option<DecideMode> {
    let policy = &config.policy;
    if !policy.rules.is_empty() || policy.affinity_cookie.is_some() {
        return None;
    }
    match policy.kind {
        // With per-request placement the datapath serves and follows a first request here, and
        // keeps later ones where they are; the agent places the rest.
        PolicyKind::Hash | PolicyKind::BoundedHash if policy.follows_requests() => {
            Some(DecideMode::HashStays)
        }
        PolicyKind::Hash | PolicyKind::BoundedHash => Some(DecideMode::Hash),
        PolicyKind::RoundRobin => Some(DecideMode::RoundRobin),
        _ => None,
    }
}
