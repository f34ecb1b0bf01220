//! baton's eBPF datapath, from Rust: the compiled object, the loader ([`datapath`]), where it is
//! pinned to outlive its agent ([`pins`]), mirrors of the maps' layouts and of the reason codes,
//! and the packet tables ([`cases`]).
//!
//! The C sources are in `c/` (entry file `c/baton.c`, logic split by concern in `c/lib/`); the
//! object `baton.bpf.o` is compiled by `build-bpf.sh` and committed, so building baton needs no
//! clang. `build-bpf.sh --check` (run by the test suite) fails when the object is stale.
//!
//! Everything `#[repr(C)]` here is ABI with `c/lib/*.h`: append only, never reorder or renumber.

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::Pod;

pub mod cases;
pub mod datapath;
pub mod pins;

pub use datapath::{Datapath, DatapathError};

/// The compiled programs (`c/baton.c`), 8-byte aligned as ELF loading requires.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../baton.bpf.o");

/// Program names in the object.
pub const INGRESS_PROGRAM: &str = "baton_ingress";
pub const EGRESS_PROGRAM: &str = "baton_egress";
/// The TCP state-change tracepoint: this node's load, and handed-in connections' closes.
pub const TCP_STATE_PROGRAM: &str = "baton_tcp_state";

/// Map names in the object.
pub const CONNS_MAP: &str = "conns";
pub const AGENT_MAP: &str = "agent";
pub const HEAD_SCRATCH_MAP: &str = "head_scratch";
pub const CONFIG_MAP: &str = "config";
pub const EVENTS_MAP: &str = "events";
/// Notices that wake no one (datapath offers' bookkeeping), read before every input.
pub const QUIET_EVENTS_MAP: &str = "quiet_events";
pub const STATS_MAP: &str = "stats";
pub const DROPS_MAP: &str = "drops";
/// What the agent asks of the datapath about a placed connection ([`Watch`]).
pub const WATCH_MAP: &str = "watch";
/// Where the local server's responses stand ([`Responses`]).
pub const RESPONSES_MAP: &str = "responses";
pub const RESPONSE_SCRATCH_MAP: &str = "response_scratch";
/// Datapath offers refused here, remembered so that no copy of one is taken later.
pub const REFUSED_OFFERS_MAP: &str = "refused_offers";
/// The ring and loads the datapath's bounded-load hashing decides by ([`BoundedView`]).
pub const BOUNDED_MAP: &str = "bounded";
/// What the datapath decided by bounded loads, per member ([`BoundedCounts`]).
pub const BOUNDED_COUNTS_MAP: &str = "bounded_counts";

/// Mirrors `struct conn_key`: a connection as this node's TCP sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub client_addr: [u8; 4],
    pub local_addr: [u8; 4],
    pub client_port: [u8; 2],
    pub local_port: [u8; 2],
}

// SAFETY: plain bytes, no padding (12 bytes, all u8 arrays).
unsafe impl Pod for ConnKey {}

impl ConnKey {
    pub fn new(client: SocketAddrV4, local: SocketAddrV4) -> Self {
        ConnKey {
            client_addr: client.ip().octets(),
            local_addr: local.ip().octets(),
            client_port: client.port().to_be_bytes(),
            local_port: local.port().to_be_bytes(),
        }
    }
    pub fn client(&self) -> SocketAddrV4 {
        SocketAddrV4::new(
            Ipv4Addr::from(self.client_addr),
            u16::from_be_bytes(self.client_port),
        )
    }
    pub fn local(&self) -> SocketAddrV4 {
        SocketAddrV4::new(
            Ipv4Addr::from(self.local_addr),
            u16::from_be_bytes(self.local_port),
        )
    }
}

impl std::fmt::Display for ConnKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}->{}", self.client(), self.local())
    }
}

/// Mirrors `enum conn_role`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnRole {
    Fe = 1,
    Be = 2,
}

/// Mirrors `enum conn_state`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    FeSyn = 1,
    FeHold = 2,
    FeForward = 3,
    BeSynSent = 10,
    BeReplayed = 11,
    BeEstablished = 12,
}

impl ConnState {
    pub fn from_u8(v: u8) -> Option<Self> {
        use ConnState::*;
        [
            FeSyn,
            FeHold,
            FeForward,
            BeSynSent,
            BeReplayed,
            BeEstablished,
        ]
        .into_iter()
        .find(|s| *s as u8 == v)
    }
}

/// `conn.flags` bits. The datapath alone writes them.
pub mod conn_flags {
    pub const CLIENT_FIN: u32 = 0x01;
    pub const SERVER_FIN: u32 = 0x02;
    pub const RST: u32 = 0x04;
    pub const CLOSE_REPORTED: u32 = 0x08;
    pub const SYNACK_SEEN: u32 = 0x10;
    pub const AGENT_HOLDS: u32 = 0x20;
    pub const LIVE_REPORTED: u32 = 0x40;
    /// Handed off by the datapaths alone (a datapath offer).
    pub const DP_OFFER: u32 = 0x80;
    pub const DP_TAKEN: u32 = 0x100;
    /// FE of a datapath offer: the client acknowledged data the BE sent (the BE has it).
    pub const DP_LIVE: u32 = 0x200;
    /// BE: the server's socket closed; what our TCP sends now is its timewait socket's, or no one's.
    pub const TCP_CLOSED: u32 = 0x400;
    /// Placed by the datapath and followed: a followed datapath offer (FE: it wrote the watch;
    /// BE: it counts the responses), or a connection it serves where it was accepted. Its
    /// notices are quiet.
    pub const FOLLOWED: u32 = 0x800;
}

/// Mirrors `struct watch`: what the agent asks of the datapath about a placed connection, in the
/// `watch` map. The agent writes the whole value; the datapath writes in place only
/// [`watch_flags::AGENT_HEAD`], and `next_head_seq` past a request it let stay (never while the
/// agent holds a head of the connection).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch {
    /// [`watch_flags`].
    pub flags: u32,
    /// The client seq where the next request head starts.
    pub next_head_seq: u32,
    /// The node the connection is on (its index in the datapath's node list), or
    /// [`Watch::NO_NODE`]: the datapath lets no request stay by itself.
    pub node: u8,
    pub pad: [u8; 3],
}

// SAFETY: repr(C), two u32 and four u8, no padding.
unsafe impl Pod for Watch {}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            flags: 0,
            next_head_seq: 0,
            node: Watch::NO_NODE,
            pad: [0; 3],
        }
    }
}

/// `watch.flags` bits.
pub mod watch_flags {
    /// Ingress (FE_FORWARD, or BE_ESTABLISHED at the FE): client data at or after
    /// `next_head_seq` is held (copied as [`crate::EventKind::NextHead`], dropped).
    pub const HEADS: u32 = 0x01;
    /// Egress (BE_ESTABLISHED): the connection is moving away; nothing the local TCP sends
    /// leaves ([`crate::DropReason::Moving`]).
    pub const FROZEN: u32 = 0x02;
    /// Set by the datapath as it holds a head: the agent has it, and the datapath lets no request
    /// stay by itself until the agent writes the watch again.
    pub const AGENT_HEAD: u32 = 0x04;
}

impl Watch {
    /// Mirrors `WATCH_NO_NODE`.
    pub const NO_NODE: u8 = 0xff;

    /// Hold client data from `next_head_seq` on.
    pub fn heads(next_head_seq: u32) -> Self {
        Watch {
            flags: watch_flags::HEADS,
            next_head_seq,
            ..Watch::default()
        }
    }

    /// As [`Watch::heads`], on the node with `index` in the datapath's node list: a request the
    /// hash policy gives to it stays there without the agent ([`DecideMode::HashStays`]).
    pub fn heads_at(next_head_seq: u32, index: usize) -> Self {
        Watch {
            node: u8::try_from(index).unwrap_or(Watch::NO_NODE),
            ..Watch::heads(next_head_seq)
        }
    }
}

/// Mirrors `struct responses`: where the local server's responses stand, in the `responses` map.
/// Created by the agent with the first `next_head`; then the datapath alone writes it (`next_head`
/// and `count` in one 8-byte store) and the agent only reads and deletes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Responses {
    /// The server seq (the local TCP's own space, before translation) where the next response
    /// head starts.
    pub next_head: u32,
    /// Final (non-1xx) responses whose head was seen.
    pub count: u32,
    /// [`responses_flags`].
    pub flags: u32,
    pub pad: u32,
}

// SAFETY: repr(C), four u32, no padding.
unsafe impl Pod for Responses {}

/// `responses.flags` bits.
pub mod responses_flags {
    /// Tracking stopped: a head the datapath could not read where one had to be. The entry no
    /// longer changes.
    pub const OPAQUE: u32 = 0x01;
}

/// [`responses_flags::OPAQUE`].
pub const RESP_OPAQUE: u32 = responses_flags::OPAQUE;

impl Responses {
    /// An entry as the agent creates it: the next response head starts at server seq `next_head`.
    pub fn new(next_head: u32) -> Self {
        Responses {
            next_head,
            ..Responses::default()
        }
    }
    pub fn is_opaque(&self) -> bool {
        self.flags & responses_flags::OPAQUE != 0
    }
}

/// The datapath's sizes (`c/lib/sizes.h`).
pub mod sizes {
    pub const CONNS_MAX: u32 = 65536;
    pub const SERVICE_PORTS_MAX: usize = 8;
    pub const DP_NODES_MAX: usize = 16;
    pub const EVENT_CAPTURE_MAX: usize = 10240;
    pub const EVENTS_RING_BYTES: u32 = 4 << 20;
    pub const QUIET_RING_BYTES: u32 = 1 << 20;
    pub const HEAD_SCAN_MAX: usize = 512;
    pub const METHOD_MAX: usize = 16;
    pub const RESPONSE_SCAN_MAX: usize = 1024;
    pub const OFFER_KEY_LEN: usize = 16;
    pub const REFUSED_OFFERS_MAX: u32 = 8192;
    pub const BOUNDED_VNODES: usize = 160;
    pub const BOUNDED_RING_MAX: usize = DP_NODES_MAX * BOUNDED_VNODES;
    pub const BOUNDED_SEARCH_STEPS: usize = 13;
}

pub use sizes::{DP_NODES_MAX, OFFER_KEY_LEN, SERVICE_PORTS_MAX};

/// The version of the pinned maps' layouts (`struct conn`, `struct node_config`, the event
/// header, `struct watch`, `struct responses`, the set of pinned maps and their sizes): it changes
/// whenever one of them does.
pub const LAYOUT_VERSION: u32 = 7;

/// Longest TCP options area.
pub const TCP_OPTS_MAX: usize = 40;

/// Mirrors `struct conn`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    pub role: u8,
    pub state: u8,
    pub syn_opts_len: u8,
    pub synack_opts_len: u8,
    pub flags: u32,
    pub client_isn: u32,
    pub local_isn: u32,
    pub synack_tsval: u32,
    pub syn_window: u16,
    pub syn_tcp_flags: u8,
    pub synack_tcp_flags: u8,
    pub peer_addr: [u8; 4],
    pub seq_delta: u32,
    pub ts_delta: u32,
    /// FE: what our SYN-ACK negotiated; BE of a datapath offer: what the FE's did.
    pub synack_digest: SynDigest,
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub live_deadline_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub syn_opts: [u8; TCP_OPTS_MAX],
    pub synack_opts: [u8; TCP_OPTS_MAX],
    /// The handoff's id at both ends (written by the agent), for an agent that adopts the table.
    pub handoff_id: u64,
    /// The last packet from the client.
    pub client_seen_ns: u64,
    /// BE of a datapath offer: ISN of the FE's SYN-ACK.
    pub fe_isn: u32,
    /// BE of a datapath offer: why our TCP did not take its SYN (a [`RefuseCode`]), 0 while it may.
    pub refuse_reason: u8,
    pub pad: [u8; 3],
    /// FE of a datapath offer: when it was first offered (UTC ns, the datapath's offer clock).
    pub offered_ns: u64,
    /// BE: the client's seq after its FIN, once [`conn_flags::CLIENT_FIN`].
    pub client_fin_end: u32,
    pub pad2: u32,
    /// BE: the server socket's cookie (its timewait socket inherits it).
    pub sock_cookie: u64,
}

/// Mirrors `struct refused_offer_key`: a refused datapath offer, by the FE's id and address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RefusedOfferKey {
    pub handoff_id: u64,
    pub fe_addr: [u8; 4],
    pub pad: u32,
}

// SAFETY: repr(C), explicit padding, integers only.
unsafe impl Pod for RefusedOfferKey {}

/// Mirrors `struct refused_offer`: until when (CLOCK_MONOTONIC ns) and why.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefusedOffer {
    pub until_ns: u64,
    pub reason: u32,
    pub pad: u32,
}

// SAFETY: repr(C), explicit padding, integers only.
unsafe impl Pod for RefusedOffer {}

/// Mirrors `struct syn_digest`: what a SYN-ACK negotiated that a handoff needs identical.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynDigest {
    /// 0: none.
    pub mss: u16,
    /// [`SynDigest::NO_WSCALE`]: none.
    pub wscale: u8,
    /// [`SynDigest::SACK_OK`] | [`SynDigest::TS_OK`].
    pub bits: u8,
}

impl SynDigest {
    pub const NO_WSCALE: u8 = 0xff;
    pub const SACK_OK: u8 = 0x01;
    pub const TS_OK: u8 = 0x02;
}

// SAFETY: repr(C) with explicit padding fields; every bit pattern is valid.
unsafe impl Pod for Conn {}

impl Default for Conn {
    fn default() -> Self {
        // SAFETY: all-zero is a valid Conn (integers and byte arrays).
        unsafe { std::mem::zeroed() }
    }
}

impl Conn {
    pub fn state(&self) -> Option<ConnState> {
        ConnState::from_u8(self.state)
    }
    pub fn role(&self) -> Option<ConnRole> {
        match self.role {
            1 => Some(ConnRole::Fe),
            2 => Some(ConnRole::Be),
            _ => None,
        }
    }
    pub fn syn_options(&self) -> &[u8] {
        &self.syn_opts[..usize::from(self.syn_opts_len).min(TCP_OPTS_MAX)]
    }
    pub fn synack_options(&self) -> &[u8] {
        &self.synack_opts[..usize::from(self.synack_opts_len).min(TCP_OPTS_MAX)]
    }
    /// The entry an event carries in place of packet bytes
    /// ([`EventKind::DpFollowedHere`]), if it carries a whole one.
    pub fn from_event(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != size_of::<Conn>() {
            return None;
        }
        // SAFETY: Conn is Pod and the slice holds exactly its size; read_unaligned copes with
        // any alignment.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
    }

    /// A BE entry as the agent creates it before replaying the SYN.
    pub fn new_be(fe_addr: Ipv4Addr, client_isn: u32, now_ns: u64) -> Self {
        Conn {
            role: ConnRole::Be as u8,
            state: ConnState::BeSynSent as u8,
            client_isn,
            peer_addr: fe_addr.octets(),
            created_ns: now_ns,
            last_seen_ns: now_ns,
            client_seen_ns: now_ns,
            ..Conn::default()
        }
    }
}

/// Mirrors `enum decide_mode`: what the datapath may decide without the agent.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecideMode {
    /// Every held connection goes to the agent.
    #[default]
    Agent = 0,
    /// The hash policy: a target that hashes to this node is released to it at once.
    Hash = 1,
    /// Round-robin over the eligible nodes, this one included.
    RoundRobin = 2,
    /// Hash, requests followed: a whole plain first request that hashes here is served and
    /// followed here ([`EventKind::DpFollowedHere`]), any other goes to the agent; a followed
    /// request that hashes to the node its connection is on goes on there
    /// ([`EventKind::NextHeadStayed`]).
    HashStays = 3,
}

/// Mirrors `enum hash_kind`: which hash the datapath's hash modes run.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HashKind {
    /// The agent's `Hash`: rendezvous over the eligible nodes.
    #[default]
    Rendezvous = 0,
    /// The agent's `BoundedHash`, by the [`BoundedView`] the agent writes.
    Bounded = 1,
}

/// Mirrors `struct bounded_node`: one member's load as bounded-load hashing counts it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BoundedNode {
    /// Active connections, as it last reported them.
    pub load: u32,
    /// Connections the agent counted assigned to it since that report.
    pub assigned: u32,
    /// [`BoundedCounts::decided`] for it when the agent wrote the view.
    pub counted_from: u64,
}

/// Mirrors `struct ring_point`: a point of the ring, and the members in the order a walk from it
/// meets them (4 bits each, the first in the low bits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingPoint {
    pub point: u64,
    pub order: u64,
}

/// Mirrors `struct bounded_view`: what the datapath's bounded-load hashing decides by.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundedView {
    /// Points in `ring`; 0: the datapath decides nothing by bounded loads.
    pub ring_len: u32,
    /// Percent of the mean load a member may carry.
    pub factor: u32,
    pub nodes: [BoundedNode; DP_NODES_MAX],
    pub ring: [RingPoint; sizes::BOUNDED_RING_MAX],
}

// SAFETY: repr(C), no implicit padding (u32 pair, then 8-byte aligned arrays), all integers.
unsafe impl Pod for BoundedView {}

impl BoundedView {
    /// The view of `ring` (as `baton_policy::BoundedHash::ring` makes it: sorted by point, over
    /// `members` members) with every load 0. A ring the datapath cannot hold (more than
    /// [`DP_NODES_MAX`] members) is left empty: the agent decides.
    pub fn new(ring: &[(u64, usize)], members: usize, factor: u32) -> Box<Self> {
        let mut view = Box::new(BoundedView {
            ring_len: 0,
            factor,
            nodes: [BoundedNode::default(); DP_NODES_MAX],
            ring: [RingPoint::default(); sizes::BOUNDED_RING_MAX],
        });
        if members > DP_NODES_MAX
            || ring.len() > sizes::BOUNDED_RING_MAX
            || ring.iter().any(|&(_, n)| n >= members)
        {
            return view;
        }
        let distinct = {
            let mut seen = [false; DP_NODES_MAX];
            ring.iter().for_each(|&(_, n)| seen[n] = true);
            seen.iter().filter(|&&s| s).count()
        };
        for (start, (slot, &(point, _))) in view.ring.iter_mut().zip(ring).enumerate() {
            let (mut order, mut met, mut seen) = (0u64, 0, [false; DP_NODES_MAX]);
            for step in 0..ring.len() {
                let n = ring[(start + step) % ring.len()].1;
                if !seen[n] {
                    seen[n] = true;
                    order |= (n as u64) << (4 * met);
                    met += 1;
                    if met == distinct {
                        break;
                    }
                }
            }
            *slot = RingPoint { point, order };
        }
        view.ring_len = ring.len() as u32;
        view
    }
}

/// Mirrors `struct bounded_counts`: the connections the datapath gave each member by bounded
/// loads (they only grow).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BoundedCounts {
    pub decided: [u64; DP_NODES_MAX],
}

// SAFETY: repr(C), all u64.
unsafe impl Pod for BoundedCounts {}

/// Mirrors `struct dp_node`: one member as the datapath's hash policy sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DpNode {
    /// FNV-1a 64 state after the node's name and the 0xff separator.
    pub hash_seed: u64,
    pub eligible: u8,
    /// The name's place among the members' names, sorted: ties go to the greatest.
    pub rank: u8,
    /// Its agent takes followed datapath offers (1), so the datapath may make them to it.
    pub follows: u8,
    pub pad: u8,
    /// Its service address, where a datapath offer goes; 0: offers to it go by the agent.
    pub addr: [u8; 4],
}

/// Mirrors `struct node_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    pub service_addr: [u8; 4],
    pub distribute: u8,
    pub nports: u8,
    pub decide: u8,
    pub self_index: u8,
    pub ports: [[u8; 2]; SERVICE_PORTS_MAX],
    pub nnodes: u8,
    /// Which hash the hash modes run ([`HashKind`]). Padding (zero) before: what an older agent
    /// wrote reads as rendezvous, and the pinned layout is unchanged.
    pub hash_kind: u8,
    pub pad: [u8; 2],
    /// The agent's network namespace (its inode number): only its sockets count as load.
    pub netns_inum: u32,
    pub nodes: [DpNode; DP_NODES_MAX],
    /// How long after a datapath offer the server's TCP may still go live.
    pub live_window_ns: u64,
    /// SipHash-2-4 key that authenticates datapath offers between nodes.
    pub offer_key: [u8; OFFER_KEY_LEN],
    /// The interface's MTU: an offer that would not fit goes by the agent.
    pub mtu: u16,
    /// 1: this node makes datapath offers and takes them.
    pub offers: u8,
    pub pad2: [u8; 5],
    /// CLOCK_TAI − UTC on this node, in ns (adjtimex): offers are stamped in UTC.
    pub tai_offset_ns: i64,
}

// SAFETY: repr(C), explicit padding, all integers.
unsafe impl Pod for NodeConfig {}

impl NodeConfig {
    /// At most [`SERVICE_PORTS_MAX`] ports are taken; the caller validates the count. The
    /// datapath decides nothing alone until [`NodeConfig::set_hash_nodes`], and counts load in
    /// no namespace until `netns_inum` is set ([`current_netns_inum`]).
    pub fn new(service_addr: Ipv4Addr, ports: &[u16], distribute: bool) -> Self {
        let mut c = NodeConfig {
            service_addr: service_addr.octets(),
            distribute: u8::from(distribute),
            nports: ports.len().min(SERVICE_PORTS_MAX) as u8,
            ..Default::default()
        };
        for (slot, port) in c.ports.iter_mut().zip(ports) {
            *slot = port.to_be_bytes();
        }
        c
    }

    /// Lets the datapath take offers from other nodes' datapaths (if `takes`) and authenticate
    /// them, and its own offers' SYN-ACK go live within `live_window_ns`. It makes offers only to
    /// nodes of [`NodeConfig::set_hash_nodes`] with an address.
    pub fn set_offers(&mut self, takes: bool, key: [u8; OFFER_KEY_LEN], live_window_ns: u64) {
        self.offers = u8::from(takes);
        self.offer_key = key;
        self.live_window_ns = live_window_ns;
    }

    /// Lets the datapath run the hash policy over `nodes` (at most [`DP_NODES_MAX`], else it
    /// decides nothing), this node being `self_index`.
    pub fn set_hash_nodes(&mut self, self_index: usize, nodes: &[DpNode]) {
        self.set_decide(DecideMode::Hash, self_index, nodes);
    }

    /// Lets the datapath decide first requests by `mode` over `nodes` (at most
    /// [`DP_NODES_MAX`], else it decides nothing), this node being `self_index`.
    pub fn set_decide(&mut self, mode: DecideMode, self_index: usize, nodes: &[DpNode]) {
        if nodes.len() > DP_NODES_MAX || self_index >= nodes.len() {
            self.decide = DecideMode::Agent as u8;
            self.nnodes = 0;
            return;
        }
        self.decide = mode as u8;
        self.self_index = self_index as u8;
        self.nnodes = nodes.len() as u8;
        self.nodes = [DpNode::default(); DP_NODES_MAX];
        self.nodes[..nodes.len()].copy_from_slice(nodes);
    }
}

/// The inode number of the calling thread's network namespace (what the kernel calls
/// `ns.inum`): a thread may have entered another namespace than its process's.
pub fn current_netns_inum() -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    u32::try_from(ino).map_err(|_| std::io::Error::other("namespace inode above 2^32"))
}

/// Mirrors `enum event_kind`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    HeldPacket = 1,
    BeSynAck = 2,
    Closed = 3,
    BeLive = 4,
    /// A held client packet of a placed connection at or past its next request head (watch).
    NextHead = 5,
    /// FE: the datapath offered the connection to the entry's peer itself.
    DpOffered = 6,
    /// BE: our TCP took a datapath offer's replay (`peer`, `handoff_id`: whose).
    DpTaken = 7,
    /// FE: a datapath offer came back refused (`detail`: a [`RefuseCode`]).
    DpReturned = 8,
    /// FE, quiet: a followed request went on to its connection's node, decided by the datapath
    /// (`detail`: where the next request head starts).
    NextHeadStayed = 9,
    /// FE, quiet: a first request served here and followed, decided by the datapath (`detail`:
    /// where the next request head starts; `handoff_id`: its id; the packet bytes: the FE entry
    /// as it was, [`Conn::from_event`]).
    DpFollowedHere = 10,
}

/// Mirrors `enum close_code`: with [`EventKind::Closed`], what holds the tuple in our TCP now.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCode {
    /// Nothing: the connection is over.
    Gone = 1,
    /// A timewait socket in TIME_WAIT: both FINs went through our TCP.
    TimeWait = 2,
    /// The server's socket closed as the client's FIN came in: its timewait socket may not have
    /// taken that FIN yet.
    Unsure = 3,
}

impl CloseCode {
    /// The code of an event's detail; `None` for one this build does not know.
    pub fn from_detail(detail: u32) -> Option<Self> {
        match detail {
            1 => Some(Self::Gone),
            2 => Some(Self::TimeWait),
            3 => Some(Self::Unsure),
            _ => None,
        }
    }
}

/// Mirrors `struct event_hdr`; the captured packet bytes follow it in the ring record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    pub pkt_len: u32,
    pub cap_len: u32,
    /// [`EventKind::DpReturned`]: the refusal's code; [`EventKind::Closed`]: a [`CloseCode`];
    /// else 0.
    pub detail: u32,
    pub ts_ns: u64,
    pub key: ConnKey,
    /// [`EventKind::DpReturned`]: the address of the BE that refused; BE notices: the FE's
    /// ([`Conn::peer_addr`]); else 0.
    pub peer: [u8; 4],
    /// BE notices: the server socket's cookie ([`Conn::sock_cookie`]); else 0.
    pub sock_cookie: u64,
    /// [`EventKind::DpOffered`] and BE notices: the handoff's id ([`Conn::handoff_id`]), which
    /// names the connection when the tuple is already another's; else 0.
    pub handoff_id: u64,
}

/// An event as read from the ring: header fields and the captured packet (from its IPv4 header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: ConnKey,
    /// The packet's true length; `packet` may be shorter (capture limit).
    pub pkt_len: u32,
    pub ts_ns: u64,
    /// [`EventKind::DpReturned`]: the refusal's code; [`EventKind::Closed`]: a [`CloseCode`];
    /// else 0.
    pub detail: u32,
    /// [`EventKind::DpReturned`]: the BE that refused; BE notices: the FE; else unspecified
    /// (0.0.0.0).
    pub peer: Ipv4Addr,
    /// BE notices: the server socket's cookie, 0 if unknown.
    pub sock_cookie: u64,
    /// [`EventKind::DpOffered`] and BE notices: the handoff's id; else 0.
    pub handoff_id: u64,
    pub packet: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("event record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("event claims {claimed} captured bytes but carries {carried}")]
    BadCaptureLength { claimed: u32, carried: usize },
}

impl Event {
    /// Parses one ring record. Malformed records are errors, never panics.
    pub fn parse(record: &[u8]) -> Result<Event, EventError> {
        const HDR: usize = size_of::<EventHeader>();
        if record.len() < HDR {
            return Err(EventError::Short(record.len()));
        }
        // SAFETY: EventHeader is Pod and the slice holds at least HDR bytes; read_unaligned
        // copes with the ring's 8-byte alignment not being guaranteed by the slice type.
        let hdr: EventHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
        let kind = match hdr.kind {
            1 => EventKind::HeldPacket,
            2 => EventKind::BeSynAck,
            3 => EventKind::Closed,
            4 => EventKind::BeLive,
            5 => EventKind::NextHead,
            6 => EventKind::DpOffered,
            7 => EventKind::DpTaken,
            8 => EventKind::DpReturned,
            9 => EventKind::NextHeadStayed,
            10 => EventKind::DpFollowedHere,
            k => return Err(EventError::UnknownKind(k)),
        };
        let body = &record[HDR..];
        let cap = hdr.cap_len as usize;
        if cap > body.len() {
            return Err(EventError::BadCaptureLength {
                claimed: hdr.cap_len,
                carried: body.len(),
            });
        }
        Ok(Event {
            kind,
            key: hdr.key,
            pkt_len: hdr.pkt_len,
            ts_ns: hdr.ts_ns,
            detail: hdr.detail,
            peer: Ipv4Addr::from(hdr.peer),
            sock_cookie: hdr.sock_cookie,
            handoff_id: hdr.handoff_id,
            packet: body[..cap].to_vec(),
        })
    }
}

/// Mirrors `enum drop_reason`: why the programs dropped a packet. Metric label = `label()`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    Held = 1,
    SynAckHidden = 2,
    FeSilenced = 3,
    BeSynAck = 4,
    BeNotReady = 5,
    TupleCollision = 6,
    EventLost = 7,
    RedirectFailed = 8,
    BeLate = 9,
    Moving = 10,
    OfferRejected = 11,
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        DropReason::Held,
        DropReason::SynAckHidden,
        DropReason::FeSilenced,
        DropReason::BeSynAck,
        DropReason::BeNotReady,
        DropReason::TupleCollision,
        DropReason::EventLost,
        DropReason::RedirectFailed,
        DropReason::BeLate,
        DropReason::Moving,
        DropReason::OfferRejected,
    ];
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Held => "held",
            DropReason::SynAckHidden => "synack_hidden",
            DropReason::FeSilenced => "fe_silenced",
            DropReason::BeSynAck => "be_synack",
            DropReason::BeNotReady => "be_not_ready",
            DropReason::TupleCollision => "tuple_collision",
            DropReason::EventLost => "event_lost",
            DropReason::RedirectFailed => "redirect_failed",
            DropReason::BeLate => "be_late",
            DropReason::Moving => "moving",
            DropReason::OfferRejected => "offer_rejected",
        }
    }
}

/// Mirrors `enum stat`: the programs' per-CPU counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    Syn = 0,
    SynUntracked = 1,
    TableFull = 2,
    ForwardPackets = 3,
    ForwardBytes = 4,
    ToServerPackets = 5,
    ToClientPackets = 6,
    ToClientBytes = 7,
    ClientBytesSent = 8,
    Events = 9,
    Malformed = 10,
    HandshakeAbsorbed = 11,
    DecidedLocal = 12,
    BeLive = 13,
    ServingOpened = 14,
    ServingClosed = 15,
    ListenOpened = 16,
    ListenClosed = 17,
    FailOpen = 18,
    NextHeadsHeld = 19,
    ResponseHeads = 20,
    ResponsesOpaque = 21,
    DpOffers = 22,
    DpTaken = 23,
    DpRefused = 24,
    DpReturned = 25,
    NextHeadsStayed = 26,
}

impl Stat {
    pub const COUNT: u32 = 27;
}

/// Mirrors `enum refuse_reason`: why a datapath offer was refused, in the mesh's `RefuseReason`
/// codes.
pub type RefuseCode = u8;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!(size_of::<ConnKey>(), 12);
        assert_eq!(size_of::<Conn>(), 208);
        assert_eq!(size_of::<NodeConfig>(), 32 + 16 * DP_NODES_MAX + 40);
        assert_eq!(size_of::<EventHeader>(), 56);
        assert_eq!(size_of::<Watch>(), 12);
        assert_eq!(size_of::<Responses>(), 16);
        assert_eq!(
            size_of::<BoundedView>(),
            8 + 16 * DP_NODES_MAX + 16 * sizes::BOUNDED_RING_MAX
        );
        assert_eq!(size_of::<BoundedCounts>(), 8 * DP_NODES_MAX);
    }

    #[test]
    fn event_parse_rejects_bad_records() {
        assert_eq!(Event::parse(&[0; 10]), Err(EventError::Short(10)));
        let mut rec = vec![0u8; size_of::<EventHeader>()];
        rec[0] = 11;
        assert_eq!(Event::parse(&rec), Err(EventError::UnknownKind(11)));
        rec[0] = 1;
        rec[8] = 5; // cap_len 5, nothing follows
        assert_eq!(
            Event::parse(&rec),
            Err(EventError::BadCaptureLength {
                claimed: 5,
                carried: 0
            })
        );
        rec.extend_from_slice(&[1, 2, 3, 4, 5]);
        let ev = Event::parse(&rec).unwrap();
        assert_eq!(ev.kind, EventKind::HeldPacket);
        assert_eq!(ev.packet, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn conn_key_round_trips_addresses() {
        let c = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 254), 40000);
        let l = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 80);
        let k = ConnKey::new(c, l);
        assert_eq!(k.client(), c);
        assert_eq!(k.local(), l);
        assert_eq!(k.client_port, [0x9c, 0x40]);
    }

    #[test]
    fn a_bounded_view_lists_the_members_as_a_walk_from_each_point_meets_them() {
        let names = ["n1", "n2", "n3"];
        let ring = baton_policy::BoundedHash::ring(&names);
        let view = BoundedView::new(&ring, names.len(), 125);
        assert_eq!(view.ring_len as usize, ring.len());
        for (at, point) in view.ring[..ring.len()].iter().enumerate() {
            let mut walk: Vec<usize> = Vec::new();
            for step in 0..ring.len() {
                let n = ring[(at + step) % ring.len()].1;
                if !walk.contains(&n) {
                    walk.push(n);
                }
            }
            let order: Vec<usize> = (0..3)
                .map(|j| (point.order >> (4 * j) & 0xf) as usize)
                .collect();
            assert_eq!((point.point, order), (ring[at].0, walk), "at {at}");
        }
        // More members than the datapath knows: an empty ring, the agent decides.
        let many: Vec<String> = (0..=DP_NODES_MAX).map(|i| format!("n{i}")).collect();
        let ring = baton_policy::BoundedHash::ring(&many);
        assert_eq!(BoundedView::new(&ring, many.len(), 125).ring_len, 0);
    }
}
