//! The cluster as this node sees it: every member, whether it may be chosen, its load. The engine
//! is its one writer (mesh events, heartbeats, this node's own count); the policies read it as a
//! [`ClusterView`], the datapath as the hash table of [`Cluster::datapath_nodes`].
//!
//! A member's index (into `peers`) never changes meaning while the agent runs: connections and
//! the mesh name peers by it. A member a reload removes stays, marked removed (never chosen, sent
//! nothing); one it adds is appended. Messages that name members by index (the LARD dispatcher's
//! answers) use the position in the configured member list instead ([`Cluster::wire_index`]),
//! which every member with the same configuration agrees on.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use baton_bpf::{BoundedView, DpNode};
use baton_policy::{ClusterView, NodeState};
use baton_proto::Message;

use crate::config::NodeConfig;

/// One member of the cluster.
pub(super) struct Peer {
    pub name: String,
    /// Its service address, and where its control mesh listens.
    pub addr: Ipv4Addr,
    pub control_addr: Ipv4Addr,
    /// Our control connection to it is up.
    pub outbound_up: bool,
    pub last_heard: Option<Instant>,
    /// Active connections it serves, as it last reported them (this node's own: as last counted).
    pub load: u32,
    /// Connections this node assigned it since that report.
    pub assigned: u32,
    /// It said it is stopping: it takes nothing new.
    pub draining: bool,
    /// Its server serves: it listens and passes its health check (its heartbeats say so; a
    /// refusal for want of a listener says not).
    pub serving: bool,
    /// Its operator drained it (`baton ctl drain`): it takes nothing new, and serves what it has.
    pub drained: bool,
    /// The digest of its cluster configuration, once it told.
    pub config_digest: Option<u64>,
    /// A reload took it out of the cluster.
    pub removed: bool,
    /// Its agent said it takes datapath offers (`Capabilities`): our datapath may offer it
    /// connections itself.
    pub takes_offers: bool,
    /// Its agent said it takes followed datapath offers (it counts their responses).
    pub takes_followed_offers: bool,
}

/// Assignments since a node's last report that count in full on top of it, at least: see
/// [`Peer::effective_load`].
const BURST_ALLOWANCE: u32 = 8;
/// Beyond what counts in full, one in this many assignments still counts.
const BEYOND_ALLOWANCE_WEIGHT: u32 = 16;

impl Peer {
    /// Its load as the policies see it: what it reported, plus the connections assigned to it
    /// since: in full up to as many as it reported (at least [`BURST_ALLOWANCE`]), then one in
    /// [`BEYOND_ALLOWANCE_WEIGHT`]. Between two reports (a heartbeat period) connections also
    /// close: of λ·t assigned in time t, about λ·min(t, W) are still open, W the connections'
    /// lifetime, and λ·W is the reported load (Little's law). Counting all of them made a node
    /// that serves short connections look hundreds of connections busy a heartbeat after its
    /// report (LARD then moved targets that should have stayed); counting none would let a burst
    /// land on the node that looked idlest. Beyond the allowance it still grows, slowly, so that
    /// least-connections keeps spreading a long burst and ties do not freeze.
    pub fn effective_load(&self) -> u32 {
        let in_full = self.load.max(BURST_ALLOWANCE);
        let counted = self.assigned.min(in_full)
            + self.assigned.saturating_sub(in_full) / BEYOND_ALLOWANCE_WEIGHT;
        self.load.saturating_add(counted)
    }

    /// A new report (or count) of its load: the assignments since the last are in it.
    pub fn reported(&mut self, load: u32) {
        self.load = load;
        self.assigned = 0;
    }

    fn new(member: &crate::config::Member) -> Self {
        Peer {
            name: member.name.clone(),
            addr: member.address,
            control_addr: member.control_addr(),
            outbound_up: false,
            last_heard: None,
            load: 0,
            assigned: 0,
            draining: false,
            serving: true,
            drained: false,
            config_digest: None,
            removed: false,
            takes_offers: false,
            takes_followed_offers: false,
        }
    }
}

/// What a new member list changed ([`Cluster::set_members`]), by index.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct MemberChanges {
    pub added: Vec<usize>,
    pub removed: Vec<usize>,
}

pub(super) struct Cluster {
    pub peers: Vec<Peer>,
    /// Every member as the datapath's hash policy knows it, but for eligibility (which
    /// [`Cluster::datapath_nodes`] fills in): computed when the members change.
    hash_nodes: Vec<DpNode>,
    /// The ring of bounded-load hashing over every member, as the datapath decides by it
    /// ([`Cluster::bounded_view`] adds the loads): computed when the members change.
    bounded_ring: Box<BoundedView>,
    /// This node's index in `peers`.
    pub me: usize,
    /// The members' indices in configuration order (removed ones are not in it).
    order: Vec<usize>,
    /// How long a peer stays up without being heard.
    pub fresh_for: Duration,
    /// The origin of the policies' clock (`ClusterView::now_ms`).
    started: Instant,
    /// This node is stopping (what it counts of itself is in `peers[me]`).
    pub draining: bool,
    /// This node's server listens on every service port, and what its HTTP health check says
    /// (`None`: no check configured); together they make `peers[me].serving`.
    pub listening: bool,
    pub healthy: Option<bool>,
    /// When this node last told its peers its load and listeners, and what it said.
    pub reported: Option<(Instant, u32, bool)>,
}

impl Cluster {
    pub fn new(config: &NodeConfig, now: Instant) -> Self {
        let peers = config
            .cluster
            .members
            .iter()
            .map(Peer::new)
            .collect::<Vec<Peer>>();
        Cluster {
            hash_nodes: hash_nodes(&peers),
            bounded_ring: bounded_ring(&peers),
            order: (0..peers.len()).collect(),
            peers,
            me: config.self_index(),
            fresh_for: Duration::from_millis(config.limits.heartbeat_ms.saturating_mul(5)),
            started: now,
            draining: false,
            listening: true,
            healthy: None,
            reported: None,
        }
    }

    /// Whether this node's server serves: it listens on every service port and does not fail
    /// its health check.
    pub fn serving(&self) -> bool {
        self.peers[self.me].serving
    }

    pub fn set_listening(&mut self, listening: bool) {
        if self.listening != listening {
            if listening {
                tracing::info!("the local server listens again on every service port");
            } else {
                tracing::warn!("the local server stopped listening on a service port");
            }
        }
        self.listening = listening;
        self.update_serving();
    }

    pub fn set_healthy(&mut self, healthy: Option<bool>) {
        self.healthy = healthy;
        self.update_serving();
    }

    fn update_serving(&mut self) {
        self.peers[self.me].serving = self.listening && self.healthy != Some(false);
    }

    /// What this node tells its peers of itself.
    pub fn heartbeat(&self) -> Message {
        let me = &self.peers[self.me];
        Message::Heartbeat {
            load: me.load,
            sent_at_ms: crate::mesh::now_ms(),
            serving: me.serving,
        }
    }

    /// Whether `peer` may be chosen now (this node always may: it is the fallback).
    pub fn is_up(&self, peer: usize, now: Instant) -> bool {
        if peer == self.me {
            return true;
        }
        let Some(p) = self.peers.get(peer) else {
            return false;
        };
        !p.removed
            && p.outbound_up
            && !p.draining
            && !p.drained
            && p.serving
            && p.last_heard
                .is_some_and(|t| now.saturating_duration_since(t) < self.fresh_for)
    }

    /// How long `peer` has not been heard from (since this agent started, if never).
    pub fn down_for(&self, peer: usize, now: Instant) -> Duration {
        let heard = self.peers.get(peer).and_then(|p| p.last_heard);
        now.saturating_duration_since(heard.unwrap_or(self.started))
    }

    /// How long this agent has run.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Every current member but this node, in configuration order.
    pub fn others(&self) -> impl Iterator<Item = usize> + use<> {
        let me = self.me;
        self.order.clone().into_iter().filter(move |&p| p != me)
    }

    /// Applies a new member list (validated: this node is in it). Kept members keep their index
    /// and state, new ones are appended, missing ones marked removed. Fails, changing nothing,
    /// if a kept name comes with another address (remove it, reload, add it back) or if the
    /// datapath could not hold that many members.
    pub fn set_members(
        &mut self,
        members: &[crate::config::Member],
    ) -> Result<MemberChanges, String> {
        let mut order = Vec::with_capacity(members.len());
        let mut appended = Vec::new();
        for m in members {
            match self.peers.iter().position(|p| p.name == m.name) {
                Some(i)
                    if self.peers[i].addr != m.address
                        || self.peers[i].control_addr != m.control_addr() =>
                {
                    // Its index would name two addresses (connections under way, its dialer).
                    return Err(format!(
                        "cluster.members: {}'s address changes: a member keeps its addresses \
                         while the agent runs (also once removed); restart the agent to apply it",
                        m.name
                    ));
                }
                Some(i) => order.push(i),
                None => {
                    order.push(self.peers.len() + appended.len());
                    appended.push(Peer::new(m));
                }
            }
        }
        if self.peers.len() + appended.len() > baton_bpf::DP_NODES_MAX {
            return Err(format!(
                "cluster.members: at most {} members over the agent's life (removed ones \
                 count until a restart)",
                baton_bpf::DP_NODES_MAX
            ));
        }
        let mut changes = MemberChanges::default();
        for (i, p) in self.peers.iter_mut().enumerate() {
            let member = order.contains(&i);
            if p.removed == member {
                if member {
                    changes.added.push(i);
                } else {
                    changes.removed.push(i);
                }
            }
            p.removed = !member;
            if !member {
                p.outbound_up = false;
            }
        }
        changes
            .added
            .extend(self.peers.len()..self.peers.len() + appended.len());
        self.peers.extend(appended);
        self.order = order;
        self.hash_nodes = hash_nodes(&self.peers);
        self.bounded_ring = bounded_ring(&self.peers);
        Ok(changes)
    }

    /// The members by index as the mesh dials them (`None`: removed, or this node).
    pub fn mesh_members(&self, control_port: u16) -> Vec<Option<crate::mesh::PeerAddr>> {
        self.peers
            .iter()
            .map(|p| {
                (!p.removed).then(|| crate::mesh::PeerAddr {
                    name: p.name.clone(),
                    addr: std::net::SocketAddr::new(p.control_addr.into(), control_port),
                })
            })
            .collect()
    }

    /// Where member `index` stands in the configured member list (what peers with the same
    /// configuration call it).
    pub fn wire_index(&self, index: usize) -> Option<u16> {
        let position = self.order.iter().position(|&i| i == index)?;
        u16::try_from(position).ok()
    }

    /// The member a peer names by its position in the configured list.
    pub fn member_at_wire(&self, position: u16) -> Option<usize> {
        self.order.get(usize::from(position)).copied()
    }

    pub fn up_count(&self, now: Instant) -> usize {
        self.others().filter(|&p| self.is_up(p, now)).count()
    }

    /// The cluster as the policies see it from here, now.
    pub fn node_states(&self, now: Instant) -> Vec<NodeState> {
        self.peers
            .iter()
            .enumerate()
            .map(|(i, p)| NodeState {
                name: p.name.clone(),
                up: self.is_up(i, now),
                load: p.effective_load(),
            })
            .collect()
    }

    pub fn view<'a>(&self, nodes: &'a [NodeState], now: Instant) -> ClusterView<'a> {
        ClusterView {
            self_index: self.me,
            nodes,
            now_ms: now.saturating_duration_since(self.started).as_millis() as u64,
        }
    }

    /// The node that keeps the cluster's LARD table: the first live member in configuration
    /// order, so every node agrees without an election, and the next one takes over when it dies
    /// or drains.
    pub fn dispatcher(&self, now: Instant) -> usize {
        self.order
            .iter()
            .copied()
            .find(|&i| self.is_up(i, now) && !(i == self.me && self.draining))
            .unwrap_or(self.me)
    }

    /// Counts an assignment to `peer` at once: until its next report, a burst must not all land
    /// on the node that looked idlest.
    pub fn assign(&mut self, peer: usize) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.assigned = p.assigned.saturating_add(1);
        }
    }

    /// A handoff to `peer` failed and the connection is served here: its count moves home.
    pub fn unassign(&mut self, peer: usize) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.assigned = p.assigned.saturating_sub(1);
        }
        self.assign(self.me);
    }

    /// Every member as the datapath's hash policy sees it: the same names, order and
    /// eligibility as [`Cluster::node_states`], so it decides as `baton_policy::Hash` would.
    /// With `offers` (`[limits] datapath_offers`), peers whose agents take datapath offers carry
    /// their address: the datapath offers them what it decides for them itself (followed offers
    /// only to those that take these too).
    pub fn datapath_nodes(&self, now: Instant, offers: bool) -> Vec<DpNode> {
        let mut nodes = self.hash_nodes.clone();
        for (i, node) in nodes.iter_mut().enumerate() {
            node.eligible = u8::from(self.is_up(i, now));
            let peer = &self.peers[i];
            if offers && i != self.me && peer.takes_offers {
                node.addr = peer.addr.octets();
                node.follows = u8::from(peer.takes_followed_offers);
            }
        }
        nodes
    }

    /// What the datapath's bounded-load hashing decides by: the ring `baton_policy::BoundedHash`
    /// builds over every member, and each member's load as [`Cluster::node_states`] counts it
    /// (what it reported and what was assigned to it since, which the datapath counts on from),
    /// with balance `factor`. The datapath's counts the view starts from are the caller's.
    pub fn bounded_view(&self, factor: u32) -> Box<BoundedView> {
        let mut view = self.bounded_ring.clone();
        view.factor = factor.max(100);
        for (node, peer) in view.nodes.iter_mut().zip(&self.peers) {
            node.load = peer.load;
            node.assigned = peer.assigned;
        }
        view
    }
}

/// The bounded-load ring over `peers`, without loads.
fn bounded_ring(peers: &[Peer]) -> Box<BoundedView> {
    let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
    BoundedView::new(&baton_policy::BoundedHash::ring(&names), names.len(), 100)
}

/// Every member as the datapath's hash policy knows it, but for eligibility: the same names and
/// ranks (by name) as `baton_policy::Hash` uses.
fn hash_nodes(peers: &[Peer]) -> Vec<DpNode> {
    let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
    names
        .iter()
        .zip(baton_policy::name_ranks(&names))
        .map(|(name, rank)| DpNode {
            hash_seed: baton_policy::rendezvous_seed(name),
            eligible: 0,
            rank: u8::try_from(rank).unwrap_or(u8::MAX),
            ..DpNode::default()
        })
        .collect()
}
