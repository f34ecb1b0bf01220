//! The datapath's packet tables: for each entry state and packet kind, the map setup, the input
//! frame, and the expected verdict, output bytes, entry state and event. The expected bytes come
//! from `baton_wire` (the user-space twin of the rewrites), an oracle independent of the C code.
//!
//! [`Runner`] runs a case through `BPF_PROG_TEST_RUN`; the test suite checks every case
//! (`tests/prog_tables.rs`) and the `prog_run` bench reruns them with `repeat` for per-packet cost.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};
use baton_wire::offer::kind as offer_kind;
use baton_wire::{
    Ipv4Packet, OFFER_IPPROTO, OFFER_LEN, OfferRepr, PROTO_TCP, SackBlocks, SynOptions, TcpFlags,
    TcpOption, TcpPacketBuilder, TcpSegment, Translation, insert_offer, remove_offer,
    rewrite_dst_addr, rewrite_src_addr, translate_to_client, translate_to_server,
};

use crate::datapath::{
    AgentMap, ConnTable, Counters, EventRing, RefusedOffers, ResponsesTable, WatchTable,
};
use crate::{
    CloseCode, Conn, ConnKey, ConnRole, ConnState, Datapath, DatapathError, DpNode, DropReason,
    EGRESS_PROGRAM, Event, EventKind, INGRESS_PROGRAM, NodeConfig, RefuseCode, Responses, Stat,
    SynDigest, Watch, conn_flags, responses_flags, watch_flags,
};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
pub const FE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const BE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const CLIENT_PORT: u16 = 40000;
pub const SERVICE_PORT: u16 = 80;

/// Client ISN close to the wrap so that translated numbers cross 2^32.
pub const CLIENT_ISN: u32 = 0xffff_fff0;
pub const FE_ISN: u32 = 0x1000_0000;
pub const BE_ISN: u32 = 0x0000_0100;
pub const FE_TSVAL: u32 = 0xffff_ff00;
pub const BE_TSVAL: u32 = 0x0000_1000;
pub const CLIENT_TSVAL: u32 = 777_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

type EntryCheck = Box<dyn Fn(Option<&Conn>) -> Result<(), String>>;

pub struct Case {
    pub name: &'static str,
    pub hook: Hook,
    /// Whether the agent's heartbeat is fresh (else the datapath fails open).
    pub agent_alive: bool,
    /// The node's configuration (config map); its service address is the case's node.
    pub config: NodeConfig,
    /// Conn table content before the packet.
    pub entry: Option<Conn>,
    /// Ethernet frame in.
    pub input: Vec<u8>,
    pub verdict: u32,
    /// Ethernet frame expected out.
    pub output: Vec<u8>,
    /// The conn entry of the case's connection after the packet.
    pub entry_after: EntryCheck,
    /// The event expected on the ring (packet events carry the packet as the program left it, the
    /// output, from its IPv4 header), after `follow.notice` if any.
    pub event: Option<EventKind>,
    /// The tables that follow a placed connection, and what the packet counts.
    pub follow: Follow,
}

/// A case's watch and responses entries before the packet and the responses entry expected after
/// it (the watch entry must come out unchanged: the datapath never writes it), the counters the
/// packet moves, and what a datapath offer's case adds (its input's clock, a notice).
/// [`Follow::NONE`]: no entries before, none after, counters not checked, no offer.
#[derive(Clone, Copy, Debug)]
pub struct Follow {
    pub watch: Option<Watch>,
    /// The watch entry after the packet, where the datapath writes it (`None`: as before).
    pub watch_after: Option<Watch>,
    /// The datapath removes the watch entry (`watch_after` is then not looked at).
    pub watch_gone: bool,
    pub responses: Option<Responses>,
    pub responses_after: Option<Responses>,
    /// The one drop reason the packet counts, once (no other reason counts).
    pub dropped: Option<DropReason>,
    /// Stats and by how much the packet moves them.
    pub counted: &'static [(Stat, u64)],
    /// The input carries an offer header, stamped at the run ([`Stamp`]).
    pub stamp: Option<Stamp>,
    /// A notice (an event without a packet) and its detail, expected before `Case::event`.
    pub notice: Option<(EventKind, u32)>,
    /// Whether that notice goes to the quiet ring (`Some(true)`) or the one that wakes the agent
    /// (`Some(false)`); `None`: not looked at.
    pub notice_quiet: Option<bool>,
    /// The input's offer was refused here before, for this reason (a tombstone in
    /// `refused_offers`).
    pub refused_before: Option<u32>,
    /// The bounded-load view before the packet and what the datapath decided by it after
    /// (`None`: no view, ring empty).
    pub bounded: Option<BoundedLoads>,
}

/// A bounded-load case's view: the ring of the configuration's members (named n1, n2, ... in
/// order, as [`bounding_fe`] names them), each one's load, and how many connections the datapath
/// gives each by it in the run.
#[derive(Clone, Copy, Debug)]
pub struct BoundedLoads {
    pub loads: [u32; BOUNDED_MEMBERS_MAX],
    /// The datapath's counts before the run (the view counts from 0).
    pub decided_before: [u64; BOUNDED_MEMBERS_MAX],
    pub decided_after: [u64; BOUNDED_MEMBERS_MAX],
}

/// Members of the bounded-load cases' clusters at most.
pub const BOUNDED_MEMBERS_MAX: usize = 4;
/// The bounded-load cases' balance factor (the policy's default).
pub const BOUNDED_FACTOR: u32 = 125;

impl Follow {
    pub const NONE: Follow = Follow {
        watch: None,
        watch_after: None,
        watch_gone: false,
        responses: None,
        responses_after: None,
        dropped: None,
        counted: &[],
        stamp: None,
        notice: None,
        notice_quiet: None,
        refused_before: None,
        bounded: None,
    };
}

/// A datapath offer (offer.h) is good only from a quarter of the live window ahead of the taker's
/// clock to the live window behind it: the runner stamps the offer header of the case's input when it runs it, `offered_ns` = now -
/// `age_ns`, and seals it again with the case's key if `sealed` (else its MAC stays as built: a
/// forgery). An offer header in the expected output gets the same clock, and the same seal.
#[derive(Clone, Copy, Debug)]
pub struct Stamp {
    pub age_ns: i64,
    pub sealed: bool,
}

/// How far from the test's clock an offer the FE's datapath stamped itself may be.
pub const OFFER_CLOCK_SKEW_NS: u64 = 1_000_000_000;

/// CLOCK_TAI in nanoseconds: the datapath's `bpf_ktime_get_tai_ns()`.
pub fn tai_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_TAI, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_TAI)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Where the offer header starts in a frame: after Ethernet and an option-less IPv4 header.
const OFFER_AT: usize = 14 + 20;

/// The offer header of Ethernet frame `f`, if it is an IPv4 packet of [`OFFER_IPPROTO`] that
/// carries one.
pub fn offer_in(f: &[u8]) -> Option<OfferRepr> {
    let ip = Ipv4Packet::new_checked(f.get(14..)?).ok()?;
    if ip.protocol() != OFFER_IPPROTO || ip.header_len() != 20 {
        return None;
    }
    OfferRepr::parse(ip.payload()).ok()
}

/// `f` with offer header `o` in place of the one it carries.
fn with_offer(f: &[u8], o: &OfferRepr) -> Vec<u8> {
    let mut f = f.to_vec();
    o.emit(&mut f[OFFER_AT..])
        .expect("a frame with an offer header");
    f
}

/// The case's input as the run sends it: its offer header stamped (see [`Stamp`]).
fn stamped_input(case: &Case) -> Result<Vec<u8>, String> {
    let Some(stamp) = case.follow.stamp else {
        return Ok(case.input.clone());
    };
    let mut o = offer_in(&case.input).ok_or("a stamped input without an offer header")?;
    o.offered_ns = tai_now_ns().wrapping_add_signed(-stamp.age_ns);
    if stamp.sealed {
        o.seal(&case.config.offer_key);
    }
    Ok(with_offer(&case.input, &o))
}

/// The output `case` expects of the run `outcome`. An offer header in it gets what the table
/// cannot know: the clock of the input as run (see [`Stamp`]); or, for an offer the datapath
/// made itself, its clock (within the skew of ours) and, where the table left it 0, its new
/// handoff id (high bit set, and the one its entry keeps). Then it is sealed with the case's
/// key, so that the output's MAC must be what the `siphasher` crate computes.
fn expected_output(case: &Case, outcome: &Outcome) -> Result<Vec<u8>, String> {
    let Some(mut want) = offer_in(&case.output) else {
        return Ok(case.output.clone());
    };
    let key = case.config.offer_key;
    if let Some(stamp) = case.follow.stamp {
        let sent = offer_in(&outcome.input).ok_or("the input lost its offer header")?;
        want.offered_ns = sent.offered_ns;
        if stamp.sealed {
            want.seal(&key);
        }
        return Ok(with_offer(&case.output, &want));
    }
    let got = offer_in(&outcome.output).ok_or("the output carries no offer header")?;
    let now = tai_now_ns();
    if got.offered_ns.abs_diff(now) > OFFER_CLOCK_SKEW_NS {
        return Err(format!(
            "offer sent at TAI {} ns, {} ns from now",
            got.offered_ns,
            got.offered_ns.abs_diff(now)
        ));
    }
    want.offered_ns = got.offered_ns;
    if want.handoff_id == 0 {
        let kept = outcome.entry_after.map(|c| c.handoff_id);
        if got.handoff_id >> 63 != 1 || kept != Some(got.handoff_id) {
            return Err(format!(
                "offer's handoff id {:#x}, the entry's {kept:x?}: want the same, high bit set",
                got.handoff_id
            ));
        }
        want.handoff_id = got.handoff_id;
    }
    want.seal(&key);
    Ok(with_offer(&case.output, &want))
}

impl Case {
    pub fn node(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.config.service_addr)
    }

    pub fn key(&self) -> ConnKey {
        ConnKey::new(
            SocketAddrV4::new(CLIENT, CLIENT_PORT),
            SocketAddrV4::new(self.node(), SERVICE_PORT),
        )
    }
}

/// The cases of one concern of the datapath.
pub struct Table {
    pub name: &'static str,
    pub cases: Vec<Case>,
}

/// A node that distributes, deciding nothing alone.
fn distributing(node: Ipv4Addr) -> NodeConfig {
    NodeConfig::new(node, &[SERVICE_PORT], true)
}

/// The FE of a two-node cluster (n1 = FE, n2 = BE) whose datapath runs the hash policy.
pub fn hashing_fe() -> NodeConfig {
    let mut config = distributing(FE);
    let names = ["n1", "n2"];
    let ranks = baton_policy::name_ranks(&names);
    let nodes: Vec<DpNode> = names
        .iter()
        .zip(ranks)
        .map(|(name, rank)| DpNode {
            hash_seed: baton_policy::rendezvous_seed(name),
            eligible: 1,
            rank: rank as u8,
            ..DpNode::default()
        })
        .collect();
    config.set_hash_nodes(0, &nodes);
    config
}

/// A target that the agent's hash policy, in the cluster of [`hashing_fe`], gives to `node`
/// (0 = n1, 1 = n2): the oracle for the datapath's own decision.
pub fn target_hashed_to(node: usize) -> String {
    baton_policy::Hash::target_for("/f/1k", &["n1", "n2"], node).expect("a target for each node")
}

/// The FE (n1) of a cluster of `members` nodes n1, n2, ... (every one up) whose datapath runs
/// bounded-load hashing.
pub fn bounding_fe(members: usize) -> NodeConfig {
    let mut config = distributing(FE);
    let nodes = vec![
        DpNode {
            eligible: 1,
            ..DpNode::default()
        };
        members
    ];
    config.set_decide(crate::DecideMode::Hash, 0, &nodes);
    config.hash_kind = crate::HashKind::Bounded as u8;
    config
}

/// The names of the bounded-load cases' members.
pub fn bounded_names(members: usize) -> Vec<String> {
    (1..=members).map(|i| format!("n{i}")).collect()
}

/// The view the bounded-load cases write: the ring of `members` members and their `loads`.
pub fn bounded_view(members: usize, loads: &[u32]) -> Box<crate::BoundedView> {
    let names = bounded_names(members);
    let ring = baton_policy::BoundedHash::ring(&names);
    let mut view = crate::BoundedView::new(&ring, members, BOUNDED_FACTOR);
    for (node, &load) in view.nodes.iter_mut().zip(loads) {
        node.load = load;
    }
    view
}

/// The member the agent's `BoundedHash`, from n1, gives `target` to, with every member up and
/// carrying `loads`: the oracle for the datapath's bounded-load decisions.
pub fn bounded_choice(target: &str, loads: &[u32]) -> usize {
    let nodes: Vec<baton_policy::NodeState> = bounded_names(loads.len())
        .into_iter()
        .zip(loads)
        .map(|(name, &load)| baton_policy::NodeState {
            name,
            up: true,
            load,
        })
        .collect();
    let view = baton_policy::ClusterView {
        self_index: 0,
        nodes: &nodes,
        now_ms: 0,
    };
    let request = baton_policy::RequestInfo {
        method: "GET",
        target,
        host: None,
    };
    baton_policy::Policy::choose(
        &mut baton_policy::BoundedHash::new(BOUNDED_FACTOR),
        &request,
        &view,
    )
}

/// A target whose ring walk (two members) meets `first` first, and that bounded-load hashing
/// gives to `to` with the members carrying `loads`.
fn bounded_target(first: usize, loads: [u32; 2], to: usize) -> String {
    (0..)
        .map(|i| format!("/o/{i}"))
        .find(|t| bounded_choice(t, &[0, 0]) == first && bounded_choice(t, &loads) == to)
        .expect("a target")
}

fn frame(ip: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00];
    f.extend_from_slice(ip);
    f
}

fn segment(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> TcpPacketBuilder {
    TcpPacketBuilder::new(src, sport, dst, dport)
}

fn from_client(to: Ipv4Addr) -> TcpPacketBuilder {
    segment(CLIENT, CLIENT_PORT, to, SERVICE_PORT)
}

fn to_client(from: Ipv4Addr) -> TcpPacketBuilder {
    segment(from, SERVICE_PORT, CLIENT, CLIENT_PORT)
}

fn ts(tsval: u32, tsecr: u32) -> Vec<TcpOption> {
    vec![
        TcpOption::NoOp,
        TcpOption::NoOp,
        TcpOption::Timestamps { tsval, tsecr },
    ]
}

fn linux_syn_options(tsval: u32, tsecr: u32) -> Vec<TcpOption> {
    // MSS, SACK permitted, timestamps, window scale: what Linux puts in a SYN.
    SynOptions {
        mss: Some(1460),
        window_scale: Some(7),
        sack_permitted: true,
        timestamps: Some((tsval, tsecr)),
    }
    .to_options()
}

fn fe_entry(state: ConnState) -> Conn {
    let syn = linux_syn_options(CLIENT_TSVAL, 0);
    let synack = linux_syn_options(FE_TSVAL, CLIENT_TSVAL);
    let mut c = Conn {
        role: ConnRole::Fe as u8,
        state: state as u8,
        flags: conn_flags::SYNACK_SEEN,
        client_isn: CLIENT_ISN,
        local_isn: FE_ISN,
        synack_tsval: FE_TSVAL,
        syn_window: 64240,
        peer_addr: BE.octets(),
        ..Conn::default()
    };
    let mut bytes = Vec::new();
    baton_wire::emit_options(&syn, &mut bytes);
    c.syn_opts[..bytes.len()].copy_from_slice(&bytes);
    c.syn_opts_len = bytes.len() as u8;
    bytes.clear();
    baton_wire::emit_options(&synack, &mut bytes);
    c.synack_opts[..bytes.len()].copy_from_slice(&bytes);
    c.synack_opts_len = bytes.len() as u8;
    c
}

fn translation() -> Translation {
    Translation {
        seq_delta: BE_ISN.wrapping_sub(FE_ISN),
        ts_delta: BE_TSVAL.wrapping_sub(FE_TSVAL),
    }
}

fn be_entry(state: ConnState) -> Conn {
    let t = translation();
    Conn {
        role: ConnRole::Be as u8,
        state: state as u8,
        client_isn: CLIENT_ISN,
        local_isn: BE_ISN,
        peer_addr: FE.octets(),
        seq_delta: t.seq_delta,
        ts_delta: t.ts_delta,
        ..Conn::default()
    }
}

fn expect_absent() -> EntryCheck {
    Box::new(|c| match c {
        None => Ok(()),
        Some(c) => Err(format!("expected no entry, found {c:?}")),
    })
}

fn expect_state(state: ConnState) -> EntryCheck {
    Box::new(move |c| match c {
        Some(c) if c.state() == Some(state) => Ok(()),
        other => Err(format!("expected entry in {state:?}, found {other:?}")),
    })
}

/// A client data segment from the FE-side view: ack in the FE's space, echoing the FE's clock.
fn client_request(to: Ipv4Addr) -> TcpPacketBuilder {
    client_request_for(to, "/f/1k")
}

fn client_request_for(to: Ipv4Addr, target: &str) -> TcpPacketBuilder {
    let mut p = from_client(to);
    p.seq = CLIENT_ISN.wrapping_add(1);
    p.ack = FE_ISN.wrapping_add(1);
    p.flags = TcpFlags::ACK | TcpFlags::PSH;
    p.window = 502;
    p.options = ts(CLIENT_TSVAL + 5, FE_TSVAL.wrapping_add(40));
    p.payload = format!("GET {target} HTTP/1.1\r\nHost: baton\r\n\r\n").into_bytes();
    p
}

fn rewritten(input: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut ip = input[14..].to_vec();
    f(&mut ip);
    frame(&ip)
}

/// Every table, in the order the datapath meets them in one connection's life.
pub fn tables() -> Vec<Table> {
    vec![
        Table {
            name: "fe_handshake",
            cases: fe_handshake(),
        },
        Table {
            name: "fe_hold",
            cases: fe_hold(),
        },
        Table {
            name: "fe_decide",
            cases: fe_decide(),
        },
        Table {
            name: "fe_bounded",
            cases: fe_bounded(),
        },
        Table {
            name: "datapath_offers",
            cases: datapath_offers(),
        },
        Table {
            name: "followed_offers",
            cases: followed_offers(),
        },
        Table {
            name: "fe_forward",
            cases: fe_forward(),
        },
        Table {
            name: "be_replay",
            cases: be_replay(),
        },
        Table {
            name: "be_translate",
            cases: be_translate(),
        },
        Table {
            name: "follow_heads",
            cases: follow_heads(),
        },
        Table {
            name: "follow_stays",
            cases: follow_stays(),
        },
        Table {
            name: "follow_responses",
            cases: follow_responses(),
        },
        Table {
            name: "be_close",
            cases: be_close(),
        },
        Table {
            name: "fail_open",
            cases: fail_open(),
        },
        Table {
            name: "not_ours",
            cases: not_ours(),
        },
    ]
}

/// Every case of every table.
pub fn all() -> Vec<Case> {
    tables().into_iter().flat_map(|t| t.cases).collect()
}

fn client_syn() -> Vec<u8> {
    let mut syn = from_client(FE);
    syn.seq = CLIENT_ISN;
    syn.flags = TcpFlags::SYN | TcpFlags::ECE | TcpFlags::CWR;
    syn.window = 64240;
    syn.options = linux_syn_options(CLIENT_TSVAL, 0);
    frame(&syn.build())
}

fn fe_synack() -> Vec<u8> {
    let mut synack = to_client(FE);
    synack.seq = FE_ISN;
    synack.ack = CLIENT_ISN.wrapping_add(1);
    synack.flags = TcpFlags::SYN | TcpFlags::ACK | TcpFlags::ECE;
    synack.window = 65160;
    synack.options = linux_syn_options(FE_TSVAL, CLIENT_TSVAL);
    frame(&synack.build())
}

fn handshake_ack() -> Vec<u8> {
    let mut hs_ack = from_client(FE);
    hs_ack.seq = CLIENT_ISN.wrapping_add(1);
    hs_ack.ack = FE_ISN.wrapping_add(1);
    hs_ack.flags = TcpFlags::ACK;
    hs_ack.window = 502;
    hs_ack.options = ts(CLIENT_TSVAL + 1, FE_TSVAL);
    frame(&hs_ack.build())
}

/// An FE entry whose first held packet already went to the agent.
fn agent_holds() -> Conn {
    let mut c = fe_entry(ConnState::FeHold);
    c.flags |= conn_flags::AGENT_HOLDS;
    c
}

fn expect_flags(state: ConnState, flags: u32) -> EntryCheck {
    Box::new(move |c| match c {
        Some(c) if c.state() == Some(state) && c.flags & flags == flags => Ok(()),
        other => Err(format!(
            "expected entry in {state:?} with flags {flags:#x}, found {other:?}"
        )),
    })
}

fn fe_handshake() -> Vec<Case> {
    let syn = client_syn();
    let synack = fe_synack();
    let hs_ack = handshake_ack();
    let mut fresh = fe_entry(ConnState::FeSyn);
    fresh.flags = 0;
    fresh.local_isn = 0;
    fresh.synack_tsval = 0;
    fresh.synack_opts_len = 0;
    let mut wrong_ack = TcpPacketBuilder::parse(&hs_ack[14..]).unwrap();
    wrong_ack.ack = FE_ISN.wrapping_add(7);
    let wrong_ack = frame(&wrong_ack.build());
    let request = frame(&client_request(FE).build());
    vec![
        Case {
            name: "fe_syn_creates_entry",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: None,
            input: syn.clone(),
            verdict: TC_ACT_OK,
            output: syn.clone(),
            entry_after: Box::new(|c| {
                let c = c.ok_or("no entry created")?;
                let mut want = Vec::new();
                baton_wire::emit_options(&linux_syn_options(CLIENT_TSVAL, 0), &mut want);
                let ecn = TcpFlags::ECE.bits() | TcpFlags::CWR.bits();
                if c.state() != Some(ConnState::FeSyn)
                    || c.client_isn != CLIENT_ISN
                    || c.syn_window != 64240
                    || c.syn_tcp_flags & ecn != ecn
                {
                    return Err(format!("bad SYN entry {c:?}"));
                }
                if c.syn_options() != want.as_slice() {
                    return Err(format!("SYN options {:?} != {want:?}", c.syn_options()));
                }
                Ok(())
            }),
            event: None,
            follow: Follow::NONE,
        },
        Case {
            name: "fe_syn_not_distributing_passes_untracked",
            hook: Hook::Ingress,
            agent_alive: true,
            config: NodeConfig::new(FE, &[SERVICE_PORT], false),
            entry: None,
            input: syn.clone(),
            verdict: TC_ACT_OK,
            output: syn,
            entry_after: expect_absent(),
            event: None,
            follow: Follow::NONE,
        },
        Case {
            name: "fe_synack_recorded",
            hook: Hook::Egress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(fresh),
            input: synack.clone(),
            verdict: TC_ACT_OK,
            output: synack,
            entry_after: Box::new(|c| {
                let c = c.ok_or("entry vanished")?;
                let want = fe_entry(ConnState::FeSyn);
                if c.local_isn != FE_ISN
                    || c.synack_tsval != FE_TSVAL
                    || c.flags & conn_flags::SYNACK_SEEN == 0
                    || c.synack_tcp_flags & TcpFlags::ECE.bits() == 0
                {
                    return Err(format!("SYN-ACK not recorded: {c:?}"));
                }
                if c.synack_options() != want.synack_options() {
                    return Err("SYN-ACK options not recorded".into());
                }
                Ok(())
            }),
            event: None,
            follow: Follow::NONE,
        },
        // The bare ACK never reaches our TCP, nor the agent: the data segment completes it.
        Case {
            name: "fe_handshake_ack_absorbed",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(fe_entry(ConnState::FeSyn)),
            input: hs_ack.clone(),
            verdict: TC_ACT_SHOT,
            output: hs_ack,
            entry_after: expect_state(ConnState::FeHold),
            event: None,
            follow: Follow::NONE,
        },
        // The bare ACK was lost: the first data segment carries the ACK, and is held.
        Case {
            name: "fe_data_completing_the_handshake_held",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(fe_entry(ConnState::FeSyn)),
            input: request.clone(),
            verdict: TC_ACT_SHOT,
            output: request,
            entry_after: expect_flags(ConnState::FeHold, conn_flags::AGENT_HOLDS),
            event: Some(EventKind::HeldPacket),
            follow: Follow::NONE,
        },
        Case {
            name: "fe_ack_of_something_else_passes",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(fe_entry(ConnState::FeSyn)),
            input: wrong_ack.clone(),
            verdict: TC_ACT_OK,
            output: wrong_ack,
            entry_after: expect_state(ConnState::FeSyn),
            event: None,
            follow: Follow::NONE,
        },
    ]
}

fn fe_hold() -> Vec<Case> {
    let request = frame(&client_request(FE).build());
    let hs_ack = handshake_ack();
    let mut rst = from_client(FE);
    rst.seq = CLIENT_ISN.wrapping_add(1);
    rst.flags = TcpFlags::RST;
    let rst = frame(&rst.build());
    let synack = fe_synack();
    vec![
        Case {
            name: "fe_first_data_held",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(fe_entry(ConnState::FeHold)),
            input: request.clone(),
            verdict: TC_ACT_SHOT,
            output: request,
            entry_after: expect_flags(ConnState::FeHold, conn_flags::AGENT_HOLDS),
            event: Some(EventKind::HeldPacket),
            follow: Follow::NONE,
        },
        Case {
            name: "fe_duplicate_handshake_ack_absorbed",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(fe_entry(ConnState::FeHold)),
            input: hs_ack.clone(),
            verdict: TC_ACT_SHOT,
            output: hs_ack.clone(),
            entry_after: expect_state(ConnState::FeHold),
            event: None,
            follow: Follow::NONE,
        },
        // Once the agent holds the connection, it sees every packet.
        Case {
            name: "fe_ack_held_once_the_agent_holds",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(agent_holds()),
            input: hs_ack.clone(),
            verdict: TC_ACT_SHOT,
            output: hs_ack,
            entry_after: expect_state(ConnState::FeHold),
            event: Some(EventKind::HeldPacket),
            follow: Follow::NONE,
        },
        Case {
            name: "fe_client_rst_while_held_forgets_and_passes",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(agent_holds()),
            input: rst.clone(),
            verdict: TC_ACT_OK,
            output: rst.clone(),
            entry_after: expect_absent(),
            event: Some(EventKind::HeldPacket),
            follow: Follow::NONE,
        },
        Case {
            name: "fe_client_rst_before_any_data_forgets_quietly",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(fe_entry(ConnState::FeHold)),
            input: rst.clone(),
            verdict: TC_ACT_OK,
            output: rst,
            entry_after: expect_absent(),
            event: None,
            follow: Follow::NONE,
        },
        Case {
            name: "fe_synack_retransmit_passes_while_held",
            hook: Hook::Egress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(agent_holds()),
            input: synack.clone(),
            verdict: TC_ACT_OK,
            output: synack,
            entry_after: expect_state(ConnState::FeHold),
            event: None,
            follow: Follow::NONE,
        },
    ]
}

fn fe_decide() -> Vec<Case> {
    let here = frame(&client_request_for(FE, &target_hashed_to(0)).build());
    let there = frame(&client_request_for(FE, &target_hashed_to(1)).build());
    let mut no_line = client_request(FE);
    no_line.payload = b"GET /a-request-line-cut-short".to_vec();
    let no_line = frame(&no_line.build());
    let mut only_n1 = hashing_fe();
    only_n1.nodes[1].eligible = 0;
    let here_next = followed_next_head(&here);
    let mut closing_here = client_request_for(FE, &target_hashed_to(0));
    closing_here.payload = format!(
        "GET {} HTTP/1.1\r\nHost: baton\r\nConnection: close\r\n\r\n",
        target_hashed_to(0)
    )
    .into_bytes();
    let closing_here = frame(&closing_here.build());
    let mut lone_cr_here = client_request_for(FE, &target_hashed_to(0));
    lone_cr_here.payload = format!(
        "GET {} HTTP/1.1\r\nHost: baton\rX-Odd: 1\r\n\r\n",
        target_hashed_to(0)
    )
    .into_bytes();
    let lone_cr_here = frame(&lone_cr_here.build());
    vec![
        // The hash policy gives the target to this node: our TCP gets the segment, which completes
        // the handshake, and the connection is forgotten. No agent, no copy.
        Case {
            name: "fe_hash_local_target_released_at_once",
            hook: Hook::Ingress,
            agent_alive: true,
            config: hashing_fe(),
            entry: Some(fe_entry(ConnState::FeHold)),
            input: here.clone(),
            verdict: TC_ACT_OK,
            output: here.clone(),
            entry_after: expect_absent(),
            event: None,
            follow: Follow::NONE,
        },
        // Requests followed: served here as well, and followed (the agent hears of it quietly):
        // the entry translates at offset zero, the responses are counted, the next head watched.
        Case {
            name: "fe_hash_followed_local_target_served_and_followed",
            hook: Hook::Ingress,
            agent_alive: true,
            config: hashing_followed_fe(),
            entry: Some(fe_entry(ConnState::FeHold)),
            output: here.clone(),
            input: here,
            verdict: TC_ACT_OK,
            entry_after: Box::new(|c| match c {
                Some(c)
                    if c.role() == Some(ConnRole::Be)
                        && c.state() == Some(ConnState::BeEstablished)
                        && (c.seq_delta, c.ts_delta, c.flags) == (0, 0, conn_flags::FOLLOWED)
                        && c.local_isn == FE_ISN
                        && c.client_isn == CLIENT_ISN
                        && c.peer_addr == FE.octets()
                        && c.handoff_id >> 63 == 1 =>
                {
                    Ok(())
                }
                other => Err(format!(
                    "expected a translating entry at offset zero, found {other:?}"
                )),
            }),
            event: None,
            follow: Follow {
                watch_after: Some(Watch::heads_at(here_next, 0)),
                responses_after: Some(Responses {
                    next_head: FE_ISN.wrapping_add(1),
                    ..Responses::default()
                }),
                counted: &[(Stat::DecidedLocal, 1)],
                notice: Some((EventKind::DpFollowedHere, here_next)),
                ..Follow::NONE
            },
        },
        // A head the datapath cannot follow (the connection's last request) is the agent's.
        Case {
            name: "fe_hash_followed_local_target_not_plain_held",
            hook: Hook::Ingress,
            agent_alive: true,
            config: hashing_followed_fe(),
            entry: Some(fe_entry(ConnState::FeHold)),
            input: closing_here.clone(),
            verdict: TC_ACT_SHOT,
            output: closing_here,
            entry_after: expect_flags(ConnState::FeHold, conn_flags::AGENT_HOLDS),
            event: Some(EventKind::HeldPacket),
            follow: Follow::NONE,
        },
        // A CR without its LF: not a line end, and the agent's parser would refuse the head.
        Case {
            name: "fe_hash_followed_head_with_a_lone_cr_held",
            hook: Hook::Ingress,
            agent_alive: true,
            config: hashing_followed_fe(),
            entry: Some(fe_entry(ConnState::FeHold)),
            input: lone_cr_here.clone(),
            verdict: TC_ACT_SHOT,
            output: lone_cr_here,
            entry_after: expect_flags(ConnState::FeHold, conn_flags::AGENT_HOLDS),
            event: Some(EventKind::HeldPacket),
            follow: Follow::NONE,
        },
        Case {
            name: "fe_hash_followed_remote_target_held",
            hook: Hook::Ingress,
            agent_alive: true,
            config: hashing_followed_fe(),
            entry: Some(fe_entry(ConnState::FeHold)),
            input: there.clone(),
            verdict: TC_ACT_SHOT,
            output: there.clone(),
            entry_after: expect_flags(ConnState::FeHold, conn_flags::AGENT_HOLDS),
            event: Some(EventKind::HeldPacket),
            follow: Follow::NONE,
        },
        Case {
            name: "fe_hash_remote_target_held",
            hook: Hook::Ingress,
            agent_alive: true,
            config: hashing_fe(),
            entry: Some(fe_entry(ConnState::FeHold)),
            input: there.clone(),
            verdict: TC_ACT_SHOT,
            output: there.clone(),
            entry_after: expect_flags(ConnState::FeHold, conn_flags::AGENT_HOLDS),
            event: Some(EventKind::HeldPacket),
            follow: Follow::NONE,
        },
        // With the peer down, every target is this node's.
        Case {
            name: "fe_hash_peer_down_released_at_once",
            hook: Hook::Ingress,
            agent_alive: true,
            config: only_n1,
            entry: Some(fe_entry(ConnState::FeHold)),
            input: there.clone(),
            verdict: TC_ACT_OK,
            output: there,
            entry_after: expect_absent(),
            event: None,
            follow: Follow::NONE,
        },
        Case {
            name: "fe_hash_without_a_request_line_held",
            hook: Hook::Ingress,
            agent_alive: true,
            config: hashing_fe(),
            entry: Some(fe_entry(ConnState::FeHold)),
            input: no_line.clone(),
            verdict: TC_ACT_SHOT,
            output: no_line,
            entry_after: expect_flags(ConnState::FeHold, conn_flags::AGENT_HOLDS),
            event: Some(EventKind::HeldPacket),
            follow: Follow::NONE,
        },
    ]
}

fn fe_bounded() -> Vec<Case> {
    let view = |loads: [u32; 2], before: [u64; 2], after: [u64; 2]| {
        Some(BoundedLoads {
            loads: [loads[0], loads[1], 0, 0],
            decided_before: [before[0], before[1], 0, 0],
            decided_after: [after[0], after[1], 0, 0],
        })
    };
    let request = |target: String| frame(&client_request_for(FE, &target).build());
    let released = |name, config, input: Vec<u8>, bounded| Case {
        name,
        hook: Hook::Ingress,
        agent_alive: true,
        config,
        entry: Some(fe_entry(ConnState::FeHold)),
        output: input.clone(),
        input,
        verdict: TC_ACT_OK,
        entry_after: expect_absent(),
        event: None,
        follow: Follow {
            counted: &[(Stat::DecidedLocal, 1)],
            bounded,
            ..Follow::NONE
        },
    };
    let held = |name, config, input: Vec<u8>, bounded| Case {
        name,
        hook: Hook::Ingress,
        agent_alive: true,
        config,
        entry: Some(held_for_offer()),
        output: input.clone(),
        input,
        verdict: TC_ACT_SHOT,
        entry_after: expect_flags(ConnState::FeHold, conn_flags::AGENT_HOLDS),
        event: Some(EventKind::HeldPacket),
        follow: Follow {
            counted: &[(Stat::DecidedLocal, 0)],
            bounded,
            ..Follow::NONE
        },
    };
    let mut offering = bounding_fe(2);
    offering.nodes[0].addr = FE.octets();
    offering.nodes[1].addr = BE.octets();
    offering.set_offers(true, OFFER_KEY, LIVE_WINDOW_NS);
    offering.mtu = MTU;
    let mut peer_down = bounding_fe(2);
    peer_down.nodes[1].eligible = 0;
    let there = request(bounded_target(1, [0, 0], 1));
    vec![
        // Below the cap, a target stays on the node its ring point falls to: this one's is
        // released at once, and counted for the caps that follow.
        released(
            "fe_bounded_ring_target_here_released_at_once",
            bounding_fe(2),
            request(bounded_target(0, [0, 0], 0)),
            view([0, 0], [0, 0], [1, 0]),
        ),
        // The peer's, with no offers: the agent hands it off.
        held(
            "fe_bounded_ring_target_there_held",
            bounding_fe(2),
            there.clone(),
            view([0, 0], [0, 0], [0, 0]),
        ),
        // With offers, the datapath offers it to the peer itself, and counts it there.
        Case {
            name: "fe_bounded_ring_target_there_offered",
            hook: Hook::Ingress,
            agent_alive: true,
            config: offering,
            entry: Some(held_for_offer()),
            input: there.clone(),
            verdict: TC_ACT_REDIRECT,
            output: offered(&there, &offer_of(&held_for_offer())),
            entry_after: expect_offered(None),
            event: None,
            follow: Follow {
                counted: &[(Stat::DpOffers, 1), (Stat::ForwardPackets, 1)],
                notice: Some((EventKind::DpOffered, 0)),
                bounded: view([0, 0], [0, 0], [0, 1]),
                ..Follow::NONE
            },
        },
        // At the cap (ceil(1.25 * 11 / 2) = 7), a node passes its targets on along the ring.
        held(
            "fe_bounded_target_of_a_full_node_passes_to_the_peer",
            bounding_fe(2),
            request(bounded_target(0, [10, 0], 1)),
            view([10, 0], [0, 0], [0, 0]),
        ),
        released(
            "fe_bounded_target_of_a_full_peer_released_here",
            bounding_fe(2),
            request(bounded_target(1, [0, 10], 0)),
            view([0, 10], [0, 0], [1, 0]),
        ),
        // What the datapath decided since the agent's view counts as the agent would count
        // assignments: 10 here make 8 + 2/16 = 8, over the cap of ceil(1.25 * 9 / 2) = 6.
        held(
            "fe_bounded_counts_what_it_decided_since_the_view",
            bounding_fe(2),
            request(bounded_target(0, [8, 0], 1)),
            view([0, 0], [10, 0], [10, 0]),
        ),
        // A peer that is down is passed over on the ring.
        released(
            "fe_bounded_peer_down_released_here",
            peer_down,
            there.clone(),
            view([0, 0], [0, 0], [1, 0]),
        ),
        // No view written (an agent that has not written one yet): the agent decides.
        held(
            "fe_bounded_without_a_view_held",
            bounding_fe(2),
            there,
            None,
        ),
    ]
}

/// A first request for `target` at n1 of a cluster of `loads.len()` members (n1, n2, ...: at
/// most [`BOUNDED_MEMBERS_MAX`], addresses 198.18.0.1, .2, ...) carrying `loads`, whose datapath
/// decides by bounded loads and offers to every peer: released here (verdict OK, no entry after)
/// or offered to a member (the output's destination is its address). For comparing the
/// datapath's decisions with the agent's ([`bounded_choice`]); the case's expectations are
/// those of a release here.
pub fn bounded_decision(target: &str, loads: &[u32]) -> Case {
    let members = loads.len().min(BOUNDED_MEMBERS_MAX);
    let mut config = bounding_fe(members);
    for (i, node) in config.nodes[..members].iter_mut().enumerate() {
        node.addr = [198, 18, 0, i as u8 + 1];
    }
    config.set_offers(true, OFFER_KEY, LIVE_WINDOW_NS);
    config.mtu = MTU;
    let mut all = [0; BOUNDED_MEMBERS_MAX];
    all[..members].copy_from_slice(&loads[..members]);
    let input = frame(&client_request_for(FE, target).build());
    Case {
        name: "bounded_decision",
        hook: Hook::Ingress,
        agent_alive: true,
        config,
        entry: Some(held_for_offer()),
        output: input.clone(),
        input,
        verdict: TC_ACT_OK,
        entry_after: expect_absent(),
        event: None,
        follow: Follow {
            bounded: Some(BoundedLoads {
                loads: all,
                decided_before: [0; BOUNDED_MEMBERS_MAX],
                decided_after: [0; BOUNDED_MEMBERS_MAX],
            }),
            ..Follow::NONE
        },
    }
}

/// The cluster's key for datapath offers, in every offering node's configuration.
pub const OFFER_KEY: [u8; 16] = *b"baton tables key";
/// The interface MTU of the offering nodes.
const MTU: u16 = 1500;
/// How long a BE's TCP may take a datapath offer to go live.
const LIVE_WINDOW_NS: u64 = 2_000_000_000;
/// The FE's id of the handoff of [`dp_offered`]: high bit set, as the datapath makes them.
const HANDOFF_ID: u64 = 0x8000_0000_0000_0000 | 0x0123_4567_89ab_cdef;

/// Why a datapath offer was refused (`enum refuse_reason`, the mesh's codes).
mod refuse {
    use crate::RefuseCode;
    pub const COLLISION: RefuseCode = 1;
    pub const OPTION_MISMATCH: RefuseCode = 2;
    pub const OVERLOADED: RefuseCode = 3;
    pub const NO_LISTENER: RefuseCode = 7;
}

/// The FE of [`hashing_fe`] making datapath offers to the BE (n2), which has an address.
pub fn offering_fe() -> NodeConfig {
    let mut config = hashing_fe();
    config.nodes[0].addr = FE.octets();
    config.nodes[1].addr = BE.octets();
    config.set_offers(true, OFFER_KEY, LIVE_WINDOW_NS);
    config.mtu = MTU;
    config
}

/// The BE taking datapath offers.
pub fn taking_be() -> NodeConfig {
    let mut config = distributing(BE);
    config.set_offers(true, OFFER_KEY, LIVE_WINDOW_NS);
    config.mtu = MTU;
    config
}

/// A held FE entry as the datapath has it when the first data segment comes: the SYN's and the
/// SYN-ACK's flags (both sides asked for ECN) and what the SYN-ACK negotiated.
fn held_for_offer() -> Conn {
    let mut c = fe_entry(ConnState::FeHold);
    c.peer_addr = [0; 4];
    c.syn_tcp_flags = (TcpFlags::SYN | TcpFlags::ECE | TcpFlags::CWR).bits();
    c.synack_tcp_flags = (TcpFlags::SYN | TcpFlags::ACK | TcpFlags::ECE).bits();
    c.synack_digest = SynDigest {
        mss: 1460,
        wscale: 7,
        bits: SynDigest::SACK_OK | SynDigest::TS_OK,
    };
    c
}

/// The FE entry of a connection its datapath offered to the BE.
fn dp_offered() -> Conn {
    let mut c = held_for_offer();
    c.state = ConnState::FeForward as u8;
    c.flags |= conn_flags::DP_OFFER;
    c.peer_addr = BE.octets();
    c.handoff_id = HANDOFF_ID;
    // Just offered (the node config's TAI offset is 0): the FE offers it again.
    c.offered_ns = tai_now_ns();
    c
}

/// The offer header the FE's datapath makes of entry `c` (sent to the BE): its clock 0, and its
/// handoff id that of the entry, 0 for one the datapath picks (see [`expected_output`]).
fn offer_of(c: &Conn) -> OfferRepr {
    OfferRepr {
        kind: offer_kind::OFFER,
        reason: 0,
        syn_opts_len: c.syn_opts_len,
        syn_tcp_flags: TcpFlags(c.syn_tcp_flags),
        synack_tcp_flags: TcpFlags(c.synack_tcp_flags),
        syn_window: c.syn_window,
        client_addr: CLIENT,
        fe_addr: FE,
        be_addr: BE,
        client_port: CLIENT_PORT,
        service_port: SERVICE_PORT,
        client_isn: c.client_isn,
        fe_isn: c.local_isn,
        fe_tsval: c.synack_tsval,
        synack_mss: c.synack_digest.mss,
        synack_wscale: c.synack_digest.wscale,
        synack_bits: c.synack_digest.bits,
        handoff_id: c.handoff_id,
        offered_ns: 0,
        syn_opts: c.syn_opts,
        mac: 0,
    }
}

/// The client's first data segment, to the FE, for a target that n2 (the BE) serves.
fn request_for_the_be() -> Vec<u8> {
    frame(&client_request_for(FE, &target_hashed_to(1)).build())
}

/// `segment` (a client segment to the FE) as the FE's datapath offers it: daddr := BE, then
/// header `o`.
fn offered(segment: &[u8], o: &OfferRepr) -> Vec<u8> {
    let mut ip = segment[14..].to_vec();
    rewrite_dst_addr(&mut ip, BE).unwrap();
    frame(&insert_offer(&ip, o).unwrap())
}

/// The offer of [`dp_offered`]'s connection as it reaches the BE, of `kind` (its clock and seal
/// are the run's: [`Stamp`]).
fn offer_to_the_be(kind: u8) -> Vec<u8> {
    let mut o = offer_of(&dp_offered());
    o.kind = kind;
    offered(&request_for_the_be(), &o)
}

fn swap_macs(f: &mut [u8]) {
    let (dst, src) = f[..12].split_at_mut(6);
    dst.swap_with_slice(src);
}

/// Offer packet `f` as the BE turns it back (offer.h, offer_turn_back): REFUSED for `reason`,
/// from the BE to the FE, the TCP segment as it was (sealed at the run: [`Stamp`]).
fn turned_back(f: &[u8], reason: RefuseCode) -> Vec<u8> {
    let mut o = offer_in(f).expect("an offer packet");
    o.kind = offer_kind::REFUSED;
    o.reason = reason;
    let mut f = with_offer(f, &o);
    swap_macs(&mut f);
    let mut ip = Ipv4Packet::new_checked(&mut f[14..]).unwrap();
    ip.set_src_addr(BE);
    ip.set_dst_addr(FE);
    ip.fill_checksum();
    f
}

/// An offer header stamped now and sealed with the case's key.
const FRESH: Option<Stamp> = Some(Stamp {
    age_ns: 0,
    sealed: true,
});

/// An offer (or refusal) that authenticates no more, or never did: dropped, counted.
const REJECTED: Follow = Follow {
    dropped: Some(DropReason::OfferRejected),
    counted: &[(Stat::DpRefused, 0), (Stat::DpReturned, 0)],
    stamp: FRESH,
    ..Follow::NONE
};

/// An offer the BE refuses: back to the FE.
const REFUSED: Follow = Follow {
    counted: &[(Stat::DpRefused, 1)],
    stamp: FRESH,
    ..Follow::NONE
};

fn expect_offered(handoff_id: Option<u64>) -> EntryCheck {
    Box::new(move |c| match c {
        Some(c)
            if c.state() == Some(ConnState::FeForward)
                && c.flags & conn_flags::DP_OFFER != 0
                && c.flags & conn_flags::AGENT_HOLDS == 0
                && c.peer_addr == BE.octets()
                && c.handoff_id >> 63 == 1
                && handoff_id.is_none_or(|id| c.handoff_id == id) =>
        {
            Ok(())
        }
        other => Err(format!(
            "expected FE_FORWARD, DP_OFFER to {BE}, handoff id {handoff_id:x?}, found {other:?}"
        )),
    })
}

fn expect_held_not_offered() -> EntryCheck {
    Box::new(|c| match c {
        Some(c)
            if c.state() == Some(ConnState::FeHold)
                && c.flags & conn_flags::AGENT_HOLDS != 0
                && c.flags & conn_flags::DP_OFFER == 0 =>
        {
            Ok(())
        }
        other => Err(format!(
            "expected FE_HOLD, AGENT_HOLDS, no DP_OFFER, found {other:?}"
        )),
    })
}

/// The BE entry of a datapath offer whose SYN our TCP has (BE_SYN_SENT, as be_take_offer makes it).
fn dp_taking() -> Conn {
    let fe = dp_offered();
    Conn {
        role: ConnRole::Be as u8,
        state: ConnState::BeSynSent as u8,
        flags: conn_flags::DP_OFFER,
        client_isn: CLIENT_ISN,
        fe_isn: FE_ISN,
        synack_tsval: FE_TSVAL,
        synack_digest: SynDigest {
            mss: 1460,
            wscale: 7,
            bits: SynDigest::SACK_OK | SynDigest::TS_OK,
        },
        // The server's SYN-ACK of `be_synack` does not agree to ECN: neither did the FE's here.
        synack_tcp_flags: (TcpFlags::SYN | TcpFlags::ACK).bits(),
        syn_tcp_flags: fe.syn_tcp_flags,
        syn_window: fe.syn_window,
        peer_addr: FE.octets(),
        handoff_id: HANDOFF_ID,
        live_deadline_ns: u64::MAX,
        ..Conn::default()
    }
}

/// Handoffs by the datapaths alone (offer.h): the FE's offer of a connection its hash policy
/// gives to the BE, the BE's checks of it and its refusals, its TCP's answer to the replayed SYN,
/// the replayed segment, and the refusal back at the FE.
fn datapath_offers() -> Vec<Case> {
    let request = request_for_the_be();
    let held = held_for_offer();
    let offer_out = offered(&request, &offer_of(&held));
    let resent_out = offered(&request, &offer_of(&dp_offered()));
    // Pure ACKs of the client: of 1000 bytes the BE sent, and of our SYN-ACK alone.
    let client_ack = |acked: u32| {
        let mut p = client_request(FE);
        p.seq = CLIENT_ISN.wrapping_add(1 + 40);
        p.ack = FE_ISN.wrapping_add(1 + acked);
        p.flags = TcpFlags::ACK;
        p.payload.clear();
        frame(&p.build())
    };
    let (acked_be_data, acked_synack) = (client_ack(1000), client_ack(0));
    let ip_len = request.len() - 14;
    let mut offers_off = offering_fe();
    offers_off.offers = 0;
    let mut no_address = offering_fe();
    no_address.nodes[1].addr = [0; 4];
    let mut too_small = offering_fe();
    too_small.mtu = (ip_len + OFFER_LEN - 1) as u16;
    let mut just_fits = offering_fe();
    just_fits.mtu = (ip_len + OFFER_LEN) as u16;
    let fe_offers = Follow {
        counted: &[(Stat::DpOffers, 1), (Stat::ForwardPackets, 1)],
        notice: Some((EventKind::DpOffered, 0)),
        ..Follow::NONE
    };
    let fe_holds = Follow {
        dropped: Some(DropReason::Held),
        counted: &[(Stat::DpOffers, 0)],
        ..Follow::NONE
    };
    let offer = offer_to_the_be(offer_kind::OFFER);
    let replay = offer_to_the_be(offer_kind::REPLAY);
    let mut forged = offer_in(&offer).unwrap();
    forged.mac = 0x0bad_0bad_0bad_0bad;
    let forged = with_offer(&offer, &forged);
    // An offer for a third node that reached this one.
    let third = Ipv4Addr::new(198, 18, 0, 3);
    let mut elsewhere = request.clone();
    rewrite_dst_addr(&mut elsewhere[14..], third).unwrap();
    let mut o = offer_of(&dp_offered());
    o.be_addr = third;
    let mut elsewhere = frame(&insert_offer(&elsewhere[14..], &o).unwrap());
    let mut ip = Ipv4Packet::new_checked(&mut elsewhere[14..]).unwrap();
    ip.set_dst_addr(BE);
    ip.fill_checksum();
    let mut version_2 = offer.clone();
    version_2[OFFER_AT] = 2;
    let mut not_for_us = offer.clone();
    let mut ip = Ipv4Packet::new_checked(&mut not_for_us[14..]).unwrap();
    ip.set_dst_addr(Ipv4Addr::new(198, 18, 0, 3));
    ip.fill_checksum();
    let mut be_off = taking_be();
    be_off.offers = 0;
    let mut in_use = be_entry(ConnState::BeEstablished);
    in_use.handoff_id = 42;
    // The server's answers to the replayed SYN (in its own spaces).
    let synack = be_synack();
    let mut other_digest = dp_taking();
    other_digest.synack_digest.mss = 1400;
    let mut rst = to_client(BE);
    rst.ack = CLIENT_ISN.wrapping_add(1);
    rst.flags = TcpFlags::RST | TcpFlags::ACK;
    let rst = frame(&rst.build());
    // The replayed segment once the SYN-ACK gave the offsets, and once it refused.
    let mut replayed = dp_taking();
    replayed.state = ConnState::BeReplayed as u8;
    let t = translation();
    replayed.local_isn = BE_ISN;
    replayed.seq_delta = t.seq_delta;
    replayed.ts_delta = t.ts_delta;
    let (_, replayed_segment) = remove_offer(&replay[14..]).unwrap();
    let mut to_server = replayed_segment.clone();
    translate_to_server(&mut to_server, &t).unwrap();
    let mut no_listener = dp_taking();
    no_listener.refuse_reason = refuse::NO_LISTENER;
    // Back at the FE.
    let mut served = request.clone();
    swap_macs(&mut served);
    let mut another = dp_offered();
    another.handoff_id = HANDOFF_ID ^ 1;
    let returned = |reason| Follow {
        counted: &[(Stat::DpReturned, 1)],
        stamp: FRESH,
        notice: Some((EventKind::DpReturned, u32::from(reason))),
        ..Follow::NONE
    };
    let fe_case = |name, config, entry, input: &Vec<u8>| Case {
        name,
        hook: Hook::Ingress,
        agent_alive: true,
        config,
        entry: Some(entry),
        input: input.clone(),
        verdict: TC_ACT_SHOT,
        output: input.clone(),
        entry_after: expect_flags(ConnState::FeHold, conn_flags::AGENT_HOLDS),
        event: Some(EventKind::HeldPacket),
        follow: fe_holds,
    };
    let be_case = |name, input: &Vec<u8>, follow| Case {
        name,
        hook: Hook::Ingress,
        agent_alive: true,
        config: taking_be(),
        entry: None,
        input: input.clone(),
        verdict: TC_ACT_SHOT,
        output: input.clone(),
        entry_after: expect_absent(),
        event: None,
        follow,
    };
    let refusal = |name, agent_alive, config, input: &Vec<u8>, reason| Case {
        name,
        hook: Hook::Ingress,
        agent_alive,
        config,
        entry: None,
        input: input.clone(),
        verdict: TC_ACT_REDIRECT,
        output: turned_back(input, reason),
        entry_after: expect_absent(),
        event: None,
        follow: REFUSED,
    };
    let answer = |name, entry, input: &Vec<u8>, entry_after| Case {
        name,
        hook: Hook::Egress,
        agent_alive: true,
        config: taking_be(),
        entry: Some(entry),
        input: input.clone(),
        verdict: TC_ACT_SHOT,
        output: input.clone(),
        entry_after,
        event: None,
        follow: Follow {
            dropped: Some(DropReason::BeSynAck),
            ..Follow::NONE
        },
    };
    let refused_back = turned_back(&offer_to_the_be(offer_kind::OFFER), refuse::NO_LISTENER);
    let collision_back = turned_back(&offer_to_the_be(offer_kind::OFFER), refuse::COLLISION);
    let mut forged_back = offer_in(&refused_back).unwrap();
    forged_back.mac ^= 1;
    let forged_back = with_offer(&refused_back, &forged_back);
    vec![
        // The hash policy gives the request to the BE, whose address the FE knows: the datapath
        // offers it there, the client's segment behind an offer header sealed with the key.
        Case {
            name: "fe_dp_offer_sent_to_the_be",
            hook: Hook::Ingress,
            agent_alive: true,
            config: offering_fe(),
            entry: Some(held),
            input: request.clone(),
            verdict: TC_ACT_REDIRECT,
            output: offer_out.clone(),
            entry_after: expect_offered(None),
            event: None,
            follow: fe_offers,
        },
        // The client retransmits its segment: offered again, under the same id.
        Case {
            name: "fe_dp_offer_retransmission_offered_again",
            hook: Hook::Ingress,
            agent_alive: true,
            config: offering_fe(),
            entry: Some(dp_offered()),
            input: request.clone(),
            verdict: TC_ACT_REDIRECT,
            output: resent_out,
            entry_after: expect_offered(Some(HANDOFF_ID)),
            event: None,
            follow: Follow {
                counted: &[(Stat::DpOffers, 0), (Stat::ForwardPackets, 1)],
                ..Follow::NONE
            },
        },
        // The client acknowledges bytes only the BE can have sent: the BE has the connection.
        Case {
            name: "fe_dp_client_ack_of_the_bes_data_marks_it_live",
            hook: Hook::Ingress,
            agent_alive: true,
            config: offering_fe(),
            entry: Some(dp_offered()),
            input: acked_be_data.clone(),
            verdict: TC_ACT_REDIRECT,
            output: rewritten(&acked_be_data, |ip| rewrite_dst_addr(ip, BE).unwrap()),
            entry_after: expect_flags(
                ConnState::FeForward,
                conn_flags::DP_OFFER | conn_flags::DP_LIVE,
            ),
            event: None,
            follow: Follow::NONE,
        },
        Case {
            name: "fe_dp_client_ack_of_our_synack_only_is_no_proof",
            hook: Hook::Ingress,
            agent_alive: true,
            config: offering_fe(),
            entry: Some(dp_offered()),
            input: acked_synack.clone(),
            verdict: TC_ACT_REDIRECT,
            output: rewritten(&acked_synack, |ip| rewrite_dst_addr(ip, BE).unwrap()),
            entry_after: Box::new(|c| match c {
                Some(c) if c.flags & conn_flags::DP_LIVE == 0 => Ok(()),
                other => Err(format!("expected no DP_LIVE, found {other:?}")),
            }),
            event: None,
            follow: Follow::NONE,
        },
        fe_case("fe_dp_offers_off_held", offers_off, held, &request),
        fe_case(
            "fe_dp_peer_without_an_address_held",
            no_address,
            held,
            &request,
        ),
        fe_case(
            "fe_dp_segment_too_big_for_the_mtu_held",
            too_small,
            held,
            &request,
        ),
        Case {
            name: "fe_dp_segment_just_fitting_the_mtu_offered",
            hook: Hook::Ingress,
            agent_alive: true,
            config: just_fits,
            entry: Some(held),
            input: request.clone(),
            verdict: TC_ACT_REDIRECT,
            output: offer_out,
            entry_after: expect_offered(None),
            event: None,
            follow: fe_offers,
        },
        be_case(
            "be_dp_offer_with_a_forged_mac_dropped",
            &forged,
            Follow {
                stamp: Some(Stamp {
                    age_ns: 0,
                    sealed: false,
                }),
                ..REJECTED
            },
        ),
        be_case(
            "be_dp_stale_offer_dropped",
            &offer,
            Follow {
                stamp: Some(Stamp {
                    age_ns: 5_000_000_000,
                    sealed: true,
                }),
                ..REJECTED
            },
        ),
        be_case(
            "be_dp_offer_from_the_future_dropped",
            &offer,
            Follow {
                stamp: Some(Stamp {
                    age_ns: -5_000_000_000,
                    sealed: true,
                }),
                ..REJECTED
            },
        ),
        be_case("be_dp_replay_without_an_entry_dropped", &replay, REJECTED),
        be_case("be_dp_offer_for_another_node_dropped", &elsewhere, REJECTED),
        be_case(
            "be_dp_offer_of_another_version_dropped",
            &version_2,
            Follow {
                stamp: None,
                ..REJECTED
            },
        ),
        Case {
            verdict: TC_ACT_OK,
            ..be_case(
                "be_dp_offer_to_another_address_untouched",
                &not_for_us,
                Follow {
                    counted: &[(Stat::DpRefused, 0)],
                    stamp: FRESH,
                    ..Follow::NONE
                },
            )
        },
        // Nothing listens under BPF_PROG_TEST_RUN: bpf_skc_lookup_tcp() finds no socket.
        refusal(
            "be_dp_offer_without_a_listener_refused",
            true,
            taking_be(),
            &offer,
            refuse::NO_LISTENER,
        ),
        // Refused before (overloaded): a copy of it is refused again for that, before anything
        // else is looked at (here it would be for want of a listener).
        Case {
            follow: Follow {
                refused_before: Some(u32::from(refuse::OVERLOADED)),
                ..REFUSED
            },
            ..refusal(
                "be_dp_offer_refused_before_is_refused_again",
                true,
                taking_be(),
                &offer,
                refuse::OVERLOADED,
            )
        },
        refusal(
            "be_dp_offer_without_an_agent_refused_overloaded",
            false,
            taking_be(),
            &offer,
            refuse::OVERLOADED,
        ),
        refusal(
            "be_dp_offers_off_refused_overloaded",
            true,
            be_off,
            &offer,
            refuse::OVERLOADED,
        ),
        Case {
            entry: Some(in_use),
            entry_after: expect_state(ConnState::BeEstablished),
            ..refusal(
                "be_dp_offer_for_a_tuple_in_use_refused_collision",
                true,
                taking_be(),
                &offer,
                refuse::COLLISION,
            )
        },
        // The server's TCP answers the SYN the offer became: a SYN-ACK that negotiated what the
        // FE's did gives the offsets; anything else names the refusal its copy carries back.
        answer(
            "be_dp_synack_agreeing_gives_the_offsets",
            dp_taking(),
            &synack,
            Box::new(move |c| match c {
                Some(c)
                    if c.state() == Some(ConnState::BeReplayed)
                        && c.local_isn == BE_ISN
                        && c.seq_delta == t.seq_delta
                        && c.ts_delta == t.ts_delta
                        && c.refuse_reason == 0 =>
                {
                    Ok(())
                }
                other => Err(format!("expected BE_REPLAYED with {t:?}, found {other:?}")),
            }),
        ),
        answer(
            "be_dp_synack_of_other_options_refuses",
            other_digest,
            &synack,
            expect_refusing(refuse::OPTION_MISMATCH),
        ),
        answer(
            "be_dp_rst_answer_refuses_no_listener",
            dp_taking(),
            &rst,
            expect_refusing(refuse::NO_LISTENER),
        ),
        Case {
            name: "be_dp_replay_taken_translated",
            hook: Hook::Ingress,
            agent_alive: true,
            config: taking_be(),
            entry: Some(replayed),
            input: replay.clone(),
            verdict: TC_ACT_OK,
            output: frame(&to_server),
            entry_after: expect_flags(ConnState::BeReplayed, conn_flags::DP_TAKEN),
            event: None,
            follow: Follow {
                counted: &[(Stat::DpTaken, 1), (Stat::ToServerPackets, 1)],
                stamp: FRESH,
                notice: Some((EventKind::DpTaken, 0)),
                ..Follow::NONE
            },
        },
        Case {
            entry: Some(no_listener),
            ..refusal(
                "be_dp_replay_of_a_refused_syn_goes_back",
                true,
                taking_be(),
                &replay,
                refuse::NO_LISTENER,
            )
        },
        // Back at the FE: the client's segment again, for our TCP's half-open connection.
        Case {
            name: "fe_dp_refused_offer_served_here",
            hook: Hook::Ingress,
            agent_alive: true,
            config: offering_fe(),
            entry: Some(dp_offered()),
            input: refused_back.clone(),
            verdict: TC_ACT_OK,
            output: served.clone(),
            entry_after: expect_absent(),
            event: None,
            follow: returned(refuse::NO_LISTENER),
        },
        // The tuple is in use at the BE: the agent's offer may end what holds it there.
        Case {
            name: "fe_dp_refused_for_a_collision_held_for_the_agent",
            hook: Hook::Ingress,
            agent_alive: true,
            config: offering_fe(),
            entry: Some(dp_offered()),
            input: collision_back.clone(),
            verdict: TC_ACT_SHOT,
            output: served.clone(),
            entry_after: expect_held_not_offered(),
            event: Some(EventKind::HeldPacket),
            follow: Follow {
                dropped: Some(DropReason::Held),
                ..returned(refuse::COLLISION)
            },
        },
        Case {
            name: "fe_dp_refused_for_a_collision_without_an_agent_served_here",
            hook: Hook::Ingress,
            agent_alive: false,
            config: offering_fe(),
            entry: Some(dp_offered()),
            input: collision_back,
            verdict: TC_ACT_OK,
            output: served,
            entry_after: expect_absent(),
            event: None,
            follow: returned(refuse::COLLISION),
        },
        Case {
            name: "fe_dp_refusal_of_another_handoff_dropped",
            hook: Hook::Ingress,
            agent_alive: true,
            config: offering_fe(),
            entry: Some(another),
            input: refused_back.clone(),
            verdict: TC_ACT_SHOT,
            output: refused_back.clone(),
            entry_after: expect_offered(Some(HANDOFF_ID ^ 1)),
            event: None,
            follow: REJECTED,
        },
        Case {
            name: "fe_dp_forged_refusal_dropped",
            hook: Hook::Ingress,
            agent_alive: true,
            config: offering_fe(),
            entry: Some(dp_offered()),
            input: forged_back.clone(),
            verdict: TC_ACT_SHOT,
            output: forged_back,
            entry_after: expect_offered(Some(HANDOFF_ID)),
            event: None,
            follow: Follow {
                stamp: Some(Stamp {
                    age_ns: 0,
                    sealed: false,
                }),
                ..REJECTED
            },
        },
    ]
}

/// The BE's datapath offers that need a listener on the service port (which [`tables`] must not
/// have) and whose packets really leave the program: under BPF_PROG_TEST_RUN,
/// bpf_clone_redirect() transmits its clone, out of or into the interface of the run (loopback).
/// Not in [`tables`]: for a network namespace of their own, its loopback up, with a listener on
/// the service port (`tests/prog_tables.rs`).
pub fn listening_be() -> Table {
    let replay = offer_to_the_be(offer_kind::REPLAY);
    let mut mismatched = dp_taking();
    mismatched.refuse_reason = refuse::OPTION_MISMATCH;
    // What ends the half-open connection a mismatched SYN-ACK left in our TCP: the turned-back
    // copy goes to the FE as a clone, this packet becomes the client's RST (its MACs as turned).
    let mut reset = from_client(BE);
    reset.seq = CLIENT_ISN.wrapping_add(1);
    reset.flags = TcpFlags::RST;
    reset.window = 0;
    let mut reset = frame(&reset.build());
    swap_macs(&mut reset);
    let mismatch = Case {
        name: "be_dp_replay_of_a_mismatched_synack_resets_our_side",
        hook: Hook::Ingress,
        agent_alive: true,
        config: taking_be(),
        entry: Some(mismatched),
        input: replay,
        verdict: TC_ACT_OK,
        output: reset,
        entry_after: expect_absent(),
        event: None,
        follow: REFUSED,
    };
    Table {
        name: "listening_be",
        cases: vec![
            offer_taken(),
            // Followed by the FE: the entry says so, for its SYN-ACK to start the responses.
            offer_taken_as(
                "be_dp_followed_offer_taken_by_a_listener",
                offer_kind::FOLLOWED,
                conn_flags::FOLLOWED,
            ),
            // The tuple's earlier connection moved away from here (its watch froze it): the
            // new one is not silenced by what is left of it.
            Case {
                follow: Follow {
                    watch: Some(stale_frozen_watch()),
                    watch_gone: true,
                    ..offer_taken().follow
                },
                ..offer_taken_as(
                    "be_dp_offer_taken_over_a_stale_frozen_watch",
                    offer_kind::OFFER,
                    0,
                )
            },
            mismatch,
        ],
    }
}

/// The BE takes a datapath offer: a BE_SYN_SENT entry from the offer's fields, the REPLAY copy
/// queued to our ingress, and the segment rebuilt into the client's SYN for our TCP: its ISN,
/// window, options and ECN request, checksums whole, no ECN codepoint.
fn offer_taken() -> Case {
    offer_taken_as("be_dp_offer_taken_by_a_listener", offer_kind::OFFER, 0)
}

/// [`offer_taken`] for an offer of `kind`, whose entry gets `flags` beside DP_OFFER.
fn offer_taken_as(name: &'static str, kind: u8, flags: u32) -> Case {
    let mut syn = from_client(BE);
    syn.seq = CLIENT_ISN;
    syn.flags = TcpFlags::SYN | TcpFlags::ECE | TcpFlags::CWR;
    syn.window = 64240;
    syn.options = linux_syn_options(CLIENT_TSVAL, 0);
    let want = dp_taking();
    let want = Conn {
        synack_tcp_flags: held_for_offer().synack_tcp_flags,
        ..want
    };
    Case {
        name,
        hook: Hook::Ingress,
        agent_alive: true,
        config: taking_be(),
        entry: None,
        input: offer_to_the_be(kind),
        verdict: TC_ACT_OK,
        output: frame(&syn.build()),
        entry_after: Box::new(move |c| {
            let c = c.ok_or("no entry")?;
            let took = c.role() == Some(ConnRole::Be)
                && c.state() == Some(ConnState::BeSynSent)
                && c.flags == conn_flags::DP_OFFER | flags
                && (c.client_isn, c.fe_isn, c.synack_tsval) == (CLIENT_ISN, FE_ISN, FE_TSVAL)
                && c.synack_digest == want.synack_digest
                && (c.syn_tcp_flags, c.synack_tcp_flags)
                    == (want.syn_tcp_flags, want.synack_tcp_flags)
                && c.syn_window == want.syn_window
                && c.peer_addr == FE.octets()
                && c.handoff_id == HANDOFF_ID
                && c.refuse_reason == 0
                // Live within the window from the first offer (just now).
                && c.live_deadline_ns <= c.created_ns + LIVE_WINDOW_NS
                && c.live_deadline_ns + LIVE_WINDOW_NS / 4 > c.created_ns + LIVE_WINDOW_NS;
            if took {
                Ok(())
            } else {
                Err(format!(
                    "expected the offer's BE_SYN_SENT entry, found {c:?}"
                ))
            }
        }),
        event: None,
        follow: Follow {
            counted: &[(Stat::DpRefused, 0), (Stat::DpTaken, 0)],
            stamp: FRESH,
            ..Follow::NONE
        },
    }
}

/// The watch a move away left on a tuple (the connection froze, then was released).
fn stale_frozen_watch() -> Watch {
    Watch {
        flags: watch_flags::FROZEN,
        next_head_seq: 0,
        ..Watch::default()
    }
}

/// A BE entry of a datapath offer that our TCP did not take, for `reason`.
fn expect_refusing(reason: RefuseCode) -> EntryCheck {
    Box::new(move |c| match c {
        Some(c) if c.state() == Some(ConnState::BeSynSent) && c.refuse_reason == reason => Ok(()),
        other => Err(format!(
            "expected BE_SYN_SENT refusing for {reason}, found {other:?}"
        )),
    })
}

/// The FE of [`offering_fe`] with requests followed, its peer taking followed offers.
fn offering_followed_fe() -> NodeConfig {
    let mut config = offering_fe();
    config.decide = crate::DecideMode::HashStays as u8;
    config.nodes[1].follows = 1;
    config
}

/// [`dp_offered`], followed.
fn dp_offered_followed() -> Conn {
    let mut c = dp_offered();
    c.flags |= conn_flags::FOLLOWED;
    c
}

/// Followed datapath offers (hash with requests followed): a whole plain first request for a
/// peer that takes them is offered followed (the watch written at the FE, the responses counted
/// from the server's SYN-ACK at the BE); anything else is the agent's.
fn followed_offers() -> Vec<Case> {
    let request = request_for_the_be();
    let next = followed_next_head(&request);
    let mut followed = offer_of(&held_for_offer());
    followed.kind = offer_kind::FOLLOWED;
    let offer_out = offered(&request, &followed);
    let mut resent = offer_of(&dp_offered_followed());
    resent.kind = offer_kind::FOLLOWED;
    let resent_out = offered(&request, &resent);
    let mut with_fin = client_request_for(FE, &target_hashed_to(1));
    with_fin.flags |= TcpFlags::FIN;
    let with_fin = frame(&with_fin.build());
    let mut not_following_peer = offering_followed_fe();
    not_following_peer.nodes[1].follows = 0;
    let mut taking = dp_taking();
    taking.flags |= conn_flags::FOLLOWED;
    let t = translation();
    let mut served = request.clone();
    swap_macs(&mut served);
    let watched = Some(Watch::heads_at(next, 1));
    let short_head = Some(Watch::heads_at(next.wrapping_sub(5), 1));
    let mut live_followed = dp_offered_followed();
    live_followed.flags |= conn_flags::DP_LIVE;
    let held = |name, config, input: &Vec<u8>| Case {
        name,
        hook: Hook::Ingress,
        agent_alive: true,
        config,
        entry: Some(held_for_offer()),
        input: input.clone(),
        verdict: TC_ACT_SHOT,
        output: input.clone(),
        entry_after: expect_held_not_offered(),
        event: Some(EventKind::HeldPacket),
        follow: Follow {
            dropped: Some(DropReason::Held),
            counted: &[(Stat::DpOffers, 0)],
            ..Follow::NONE
        },
    };
    let expect_followed = |c: Option<&Conn>| {
        let flags = c.map(|c| c.flags).unwrap_or_default();
        if flags & conn_flags::FOLLOWED == 0 {
            return Err(format!("expected FOLLOWED, flags {flags:#x}"));
        }
        Ok(())
    };
    vec![
        Case {
            name: "fe_dp_followed_offer_sent_with_the_watch",
            hook: Hook::Ingress,
            agent_alive: true,
            config: offering_followed_fe(),
            entry: Some(held_for_offer()),
            input: request.clone(),
            verdict: TC_ACT_REDIRECT,
            output: offer_out,
            entry_after: Box::new(move |c| {
                expect_offered(None)(c)?;
                expect_followed(c)
            }),
            event: None,
            follow: Follow {
                watch_after: watched,
                counted: &[(Stat::DpOffers, 1), (Stat::ForwardPackets, 1)],
                notice: Some((EventKind::DpOffered, next)),
                ..Follow::NONE
            },
        },
        Case {
            name: "fe_dp_followed_offer_retransmission_offered_followed_again",
            hook: Hook::Ingress,
            agent_alive: true,
            config: offering_followed_fe(),
            entry: Some(dp_offered_followed()),
            input: request.clone(),
            verdict: TC_ACT_REDIRECT,
            output: resent_out,
            entry_after: expect_offered(Some(HANDOFF_ID)),
            event: None,
            follow: Follow {
                watch: watched,
                counted: &[(Stat::DpOffers, 0), (Stat::ForwardPackets, 1)],
                ..Follow::NONE
            },
        },
        // A peer whose agent does not say it takes followed offers (an older one) gets the
        // agent's offer.
        held(
            "fe_dp_followed_offer_to_a_peer_that_does_not_take_them_held",
            not_following_peer,
            &request,
        ),
        // The connection ends with this request: nothing to follow, the agent decides.
        held(
            "fe_dp_followed_offer_with_a_fin_held",
            offering_followed_fe(),
            &with_fin,
        ),
        Case {
            name: "be_dp_followed_synack_starts_the_responses",
            hook: Hook::Egress,
            agent_alive: true,
            config: taking_be(),
            entry: Some(taking),
            input: be_synack(),
            verdict: TC_ACT_SHOT,
            output: be_synack(),
            entry_after: Box::new(move |c| match c {
                Some(c)
                    if c.state() == Some(ConnState::BeReplayed)
                        && c.seq_delta == t.seq_delta
                        && c.flags & conn_flags::FOLLOWED != 0 =>
                {
                    Ok(())
                }
                other => Err(format!("expected BE_REPLAYED, FOLLOWED, found {other:?}")),
            }),
            event: None,
            follow: Follow {
                dropped: Some(DropReason::BeSynAck),
                responses_after: Some(Responses {
                    next_head: BE_ISN.wrapping_add(1),
                    ..Responses::default()
                }),
                ..Follow::NONE
            },
        },
        // The client acknowledged the BE's bytes: the BE has the connection (it may have moved
        // on since), so a copy of the first segment is data like any other, not an offer.
        Case {
            name: "fe_dp_followed_first_segment_after_the_bes_bytes_not_offered_again",
            hook: Hook::Ingress,
            agent_alive: true,
            config: offering_followed_fe(),
            entry: Some(live_followed),
            input: request.clone(),
            verdict: TC_ACT_REDIRECT,
            output: rewritten(&request, |ip| rewrite_dst_addr(ip, BE).unwrap()),
            entry_after: expect_flags(
                ConnState::FeForward,
                conn_flags::DP_OFFER | conn_flags::DP_LIVE | conn_flags::FOLLOWED,
            ),
            event: None,
            follow: Follow {
                watch: watched,
                counted: &[(Stat::DpOffers, 0), (Stat::ForwardPackets, 1)],
                ..Follow::NONE
            },
        },
        // A copy that runs past the next head (a pipelining client's retransmission joined to
        // its next request) is the watch's: held for the agent, not offered with a request the
        // FE would not count.
        Case {
            name: "fe_dp_followed_resend_past_the_next_head_held",
            hook: Hook::Ingress,
            agent_alive: true,
            config: offering_followed_fe(),
            entry: Some(dp_offered_followed()),
            input: request.clone(),
            verdict: TC_ACT_SHOT,
            output: request.clone(),
            entry_after: expect_offered(Some(HANDOFF_ID)),
            event: Some(EventKind::NextHead),
            follow: Follow {
                watch: short_head,
                watch_after: short_head.map(|w| Watch {
                    flags: w.flags | watch_flags::AGENT_HEAD,
                    ..w
                }),
                dropped: Some(DropReason::Held),
                counted: &[(Stat::DpOffers, 0)],
                ..Follow::NONE
            },
        },
        // Refused for a tuple in use at the BE: the agent decides it afresh, unfollowed.
        Case {
            name: "fe_dp_followed_offer_back_for_a_collision_held_unfollowed",
            hook: Hook::Ingress,
            agent_alive: true,
            config: offering_followed_fe(),
            entry: Some(dp_offered_followed()),
            input: turned_back(&offer_to_the_be(offer_kind::FOLLOWED), refuse::COLLISION),
            verdict: TC_ACT_SHOT,
            output: served.clone(),
            entry_after: Box::new(|c| {
                expect_held_not_offered()(c)?;
                match c.map(|c| c.flags & conn_flags::FOLLOWED) {
                    Some(0) => Ok(()),
                    _ => Err("FOLLOWED left on the held entry".into()),
                }
            }),
            event: Some(EventKind::HeldPacket),
            follow: Follow {
                watch: watched,
                watch_gone: true,
                dropped: Some(DropReason::Held),
                counted: &[(Stat::DpReturned, 1)],
                stamp: FRESH,
                notice: Some((EventKind::DpReturned, u32::from(refuse::COLLISION))),
                ..Follow::NONE
            },
        },
        // Refused: served here, followed nowhere.
        Case {
            name: "fe_dp_refused_followed_offer_served_here_unwatched",
            hook: Hook::Ingress,
            agent_alive: true,
            config: offering_followed_fe(),
            entry: Some(dp_offered_followed()),
            input: turned_back(&offer_to_the_be(offer_kind::FOLLOWED), refuse::NO_LISTENER),
            verdict: TC_ACT_OK,
            output: served,
            entry_after: expect_absent(),
            event: None,
            follow: Follow {
                watch: watched,
                watch_gone: true,
                counted: &[(Stat::DpReturned, 1)],
                stamp: FRESH,
                notice: Some((EventKind::DpReturned, u32::from(refuse::NO_LISTENER))),
                ..Follow::NONE
            },
        },
    ]
}

fn fe_forward() -> Vec<Case> {
    let request = frame(&client_request(FE).build());
    let fwd_out = rewritten(&request, |ip| rewrite_dst_addr(ip, BE).unwrap());
    let mut fe_own = to_client(FE);
    fe_own.seq = FE_ISN.wrapping_add(1);
    fe_own.flags = TcpFlags::RST;
    let fe_own = frame(&fe_own.build());
    let synack = fe_synack();
    vec![
        Case {
            name: "fe_forward_rewrites_daddr_and_redirects",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(fe_entry(ConnState::FeForward)),
            input: request,
            verdict: TC_ACT_REDIRECT,
            output: fwd_out,
            entry_after: expect_state(ConnState::FeForward),
            event: None,
            follow: Follow::NONE,
        },
        Case {
            name: "fe_own_tcp_silenced_when_forwarding",
            hook: Hook::Egress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(fe_entry(ConnState::FeForward)),
            input: fe_own.clone(),
            verdict: TC_ACT_SHOT,
            output: fe_own,
            entry_after: expect_state(ConnState::FeForward),
            event: None,
            follow: Follow::NONE,
        },
        // The client reuses the tuple of a connection that is over: a new one, tracked afresh,
        // and what the old one left in the follow maps goes (it would hold the new one's data
        // as a next request).
        Case {
            name: "fe_forward_closed_tuple_reused_starts_afresh",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(Conn {
                flags: conn_flags::CLIENT_FIN | conn_flags::SERVER_FIN,
                ..fe_entry(ConnState::FeForward)
            }),
            input: client_syn(),
            verdict: TC_ACT_OK,
            output: client_syn(),
            entry_after: expect_state(ConnState::FeSyn),
            event: None,
            follow: Follow {
                watch: Some(Watch::heads(CLIENT_ISN.wrapping_add(40))),
                watch_gone: true,
                responses: Some(Responses::default()),
                ..Follow::NONE
            },
        },
        // While the offer is out our TCP keeps its half-open side, for a refusal to fall back to.
        Case {
            name: "fe_synack_retransmit_passes_while_offered",
            hook: Hook::Egress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(fe_entry(ConnState::FeForward)),
            input: synack.clone(),
            verdict: TC_ACT_OK,
            output: synack,
            entry_after: expect_state(ConnState::FeForward),
            event: None,
            follow: Follow::NONE,
        },
    ]
}

/// A BE entry whose request is replayed, allowed to go live until `deadline_ns`.
fn replayed(deadline_ns: u64) -> Conn {
    let mut c = be_entry(ConnState::BeReplayed);
    c.live_deadline_ns = deadline_ns;
    c
}

/// The server's answer to the replayed request: its ACK, in its own spaces.
fn server_ack() -> Vec<u8> {
    let mut ack = to_client(BE);
    ack.seq = BE_ISN.wrapping_add(1);
    ack.ack = CLIENT_ISN.wrapping_add(1 + 35);
    ack.flags = TcpFlags::ACK;
    ack.window = 509;
    ack.options = ts(BE_TSVAL + 2, CLIENT_TSVAL + 5);
    frame(&ack.build())
}

fn be_synack() -> Vec<u8> {
    let mut be_synack = to_client(BE);
    be_synack.seq = BE_ISN;
    be_synack.ack = CLIENT_ISN.wrapping_add(1);
    be_synack.flags = TcpFlags::SYN | TcpFlags::ACK;
    be_synack.options = linux_syn_options(BE_TSVAL, CLIENT_TSVAL);
    frame(&be_synack.build())
}

fn to_client_translated(input: &[u8]) -> Vec<u8> {
    let t = translation();
    rewritten(input, |ip| {
        translate_to_client(ip, &t).unwrap();
        rewrite_src_addr(ip, FE).unwrap();
    })
}

fn be_replay() -> Vec<Case> {
    let t = translation();
    let synack = be_synack();
    let be_request = frame(&client_request(BE).build());
    let mut be_ack = client_request(BE);
    be_ack.flags = TcpFlags::ACK;
    be_ack.payload.clear();
    let be_ack = frame(&be_ack.build());
    let ack = server_ack();
    vec![
        Case {
            name: "be_synack_to_agent_and_dropped",
            hook: Hook::Egress,
            agent_alive: true,
            config: distributing(BE),
            entry: Some(be_entry(ConnState::BeSynSent)),
            input: synack.clone(),
            verdict: TC_ACT_SHOT,
            output: synack.clone(),
            entry_after: expect_state(ConnState::BeSynSent),
            event: Some(EventKind::BeSynAck),
            follow: Follow::NONE,
        },
        // The FE forwards from the moment it offers; before the replay our TCP cannot read it:
        // data goes to the agent, which adds it to the request; a bare ACK is dropped.
        Case {
            name: "be_client_data_before_the_replay_held",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(BE),
            entry: Some(be_entry(ConnState::BeSynSent)),
            input: be_request.clone(),
            verdict: TC_ACT_SHOT,
            output: be_request.clone(),
            entry_after: expect_state(ConnState::BeSynSent),
            event: Some(EventKind::HeldPacket),
            follow: Follow::NONE,
        },
        Case {
            name: "be_client_ack_before_the_replay_dropped",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(BE),
            entry: Some(be_entry(ConnState::BeSynSent)),
            input: be_ack.clone(),
            verdict: TC_ACT_SHOT,
            output: be_ack,
            entry_after: expect_state(ConnState::BeSynSent),
            event: None,
            follow: Follow::NONE,
        },
        Case {
            name: "be_client_packet_after_the_replay_translated",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(BE),
            entry: Some(replayed(u64::MAX)),
            input: be_request.clone(),
            verdict: TC_ACT_OK,
            output: rewritten(&be_request, |ip| translate_to_server(ip, &t).unwrap()),
            entry_after: expect_state(ConnState::BeReplayed),
            event: None,
            follow: Follow::NONE,
        },
        // What the server's TCP says first proves it took the connection: it goes to the client.
        Case {
            name: "be_server_speaks_the_connection_goes_live",
            hook: Hook::Egress,
            agent_alive: true,
            config: distributing(BE),
            entry: Some(replayed(u64::MAX)),
            input: ack.clone(),
            verdict: TC_ACT_OK,
            output: to_client_translated(&ack),
            entry_after: expect_flags(ConnState::BeEstablished, conn_flags::LIVE_REPORTED),
            event: Some(EventKind::BeLive),
            follow: Follow::NONE,
        },
        // After its deadline the agent has refused the handoff: nothing may reach the client.
        Case {
            name: "be_server_after_the_deadline_dropped",
            hook: Hook::Egress,
            agent_alive: true,
            config: distributing(BE),
            entry: Some(replayed(1)),
            input: ack.clone(),
            verdict: TC_ACT_SHOT,
            output: ack,
            entry_after: expect_state(ConnState::BeReplayed),
            event: None,
            follow: Follow::NONE,
        },
        // The server's TCP did not take the replayed request: it asks again, the agent replays again.
        Case {
            name: "be_synack_retransmit_after_the_replay_to_agent",
            hook: Hook::Egress,
            agent_alive: true,
            config: distributing(BE),
            entry: Some(replayed(u64::MAX)),
            input: synack.clone(),
            verdict: TC_ACT_SHOT,
            output: synack,
            entry_after: expect_state(ConnState::BeReplayed),
            event: Some(EventKind::BeSynAck),
            follow: Follow::NONE,
        },
    ]
}

fn be_translate() -> Vec<Case> {
    let t = translation();
    // Client -> BE with SACK: ack, both edges of every block, TSecr move into the BE's spaces.
    let mut sack = client_request(BE);
    sack.payload.clear();
    sack.flags = TcpFlags::ACK;
    sack.options = vec![
        TcpOption::NoOp,
        TcpOption::NoOp,
        TcpOption::Timestamps {
            tsval: CLIENT_TSVAL + 9,
            tsecr: FE_TSVAL.wrapping_add(300),
        },
        TcpOption::NoOp,
        TcpOption::NoOp,
        TcpOption::Sack(
            SackBlocks::new(&[
                (FE_ISN.wrapping_add(3000), FE_ISN.wrapping_add(4448)),
                (FE_ISN.wrapping_add(6000), FE_ISN.wrapping_add(7448)),
                (FE_ISN.wrapping_add(9000), FE_ISN.wrapping_add(9100)),
            ])
            .unwrap(),
        ),
    ];
    let sack = frame(&sack.build());
    // Options laid out without padding put TSecr at an odd offset: the checksum must still hold.
    let mut odd = client_request(BE);
    odd.options = vec![
        TcpOption::WindowScale(7),
        TcpOption::Timestamps {
            tsval: CLIENT_TSVAL + 11,
            tsecr: FE_TSVAL.wrapping_add(500),
        },
    ];
    let odd = frame(&odd.build());
    let response = frame(&server_response().build());
    let be_syn = direct_syn_to_be();
    vec![
        Case {
            name: "be_to_server_translates_ack_sack_tsecr",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(BE),
            entry: Some(be_entry(ConnState::BeEstablished)),
            input: sack.clone(),
            verdict: TC_ACT_OK,
            output: rewritten(&sack, |ip| translate_to_server(ip, &t).unwrap()),
            entry_after: expect_state(ConnState::BeEstablished),
            event: None,
            follow: Follow::NONE,
        },
        Case {
            name: "be_to_server_odd_offset_timestamps",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(BE),
            entry: Some(be_entry(ConnState::BeEstablished)),
            input: odd.clone(),
            verdict: TC_ACT_OK,
            output: rewritten(&odd, |ip| translate_to_server(ip, &t).unwrap()),
            entry_after: expect_state(ConnState::BeEstablished),
            event: None,
            follow: Follow::NONE,
        },
        Case {
            name: "be_to_client_translates_saddr_seq_tsval",
            hook: Hook::Egress,
            agent_alive: true,
            config: distributing(BE),
            entry: Some(be_entry(ConnState::BeEstablished)),
            input: response.clone(),
            verdict: TC_ACT_OK,
            output: to_client_translated(&response),
            entry_after: expect_state(ConnState::BeEstablished),
            event: None,
            follow: Follow::NONE,
        },
        Case {
            name: "be_tuple_collision_syn_dropped",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(BE),
            entry: Some(be_entry(ConnState::BeEstablished)),
            input: be_syn.clone(),
            verdict: TC_ACT_SHOT,
            output: be_syn,
            entry_after: expect_state(ConnState::BeEstablished),
            event: None,
            follow: Follow::NONE,
        },
    ]
}

fn server_response() -> TcpPacketBuilder {
    let mut response = to_client(BE);
    response.seq = BE_ISN.wrapping_add(1);
    response.ack = CLIENT_ISN.wrapping_add(1 + 35);
    response.flags = TcpFlags::ACK | TcpFlags::PSH;
    response.window = 509;
    response.options = ts(BE_TSVAL + 30, CLIENT_TSVAL + 5);
    response.payload = vec![0x5a; 1200];
    response
}

/// The client's SYN straight to the BE, from the port of a connection handed in there.
fn direct_syn_to_be() -> Vec<u8> {
    let mut syn = from_client(BE);
    syn.seq = 12345;
    syn.flags = TcpFlags::SYN;
    syn.options = linux_syn_options(CLIENT_TSVAL + 100, 0);
    frame(&syn.build())
}

/// The close of a handed-in connection: the datapath notes the FINs and RSTs that pass, and only
/// our TCP reports the close (its socket closing, heard by the tracepoint; tested with real
/// sockets in `tests/close_notice.rs`) or, once that socket is gone, its timewait socket's ACK of
/// the client's FIN.
fn be_close() -> Vec<Case> {
    let t = translation();
    let mut server_fin = server_response();
    server_fin.flags = TcpFlags::ACK | TcpFlags::FIN;
    server_fin.payload.clear();
    let server_fin = frame(&server_fin.build());
    // The client's FIN after the request, and our TCP's ACK of it.
    let fin_seq = CLIENT_ISN.wrapping_add(1 + 35);
    let mut client_fin = from_client(BE);
    client_fin.seq = fin_seq;
    client_fin.ack = BE_ISN.wrapping_add(1 + 1200 + 1).wrapping_sub(t.seq_delta);
    client_fin.flags = TcpFlags::ACK | TcpFlags::FIN;
    client_fin.options = ts(CLIENT_TSVAL + 9, FE_TSVAL.wrapping_add(40));
    let client_fin = frame(&client_fin.build());
    let ack_of = |ack: u32, flags: TcpFlags| {
        let mut p = server_response();
        p.seq = BE_ISN.wrapping_add(1 + 1200 + 1);
        p.ack = ack;
        p.flags = flags;
        p.payload.clear();
        frame(&p.build())
    };
    let fin_acked = ack_of(fin_seq.wrapping_add(1), TcpFlags::ACK);
    let other_ack = ack_of(fin_seq, TcpFlags::ACK);
    let rst = ack_of(fin_seq, TcpFlags::RST);
    let mut half_closed = be_entry(ConnState::BeEstablished);
    half_closed.flags = conn_flags::CLIENT_FIN;
    half_closed.client_fin_end = fin_seq.wrapping_add(1);
    let both_fins = conn_flags::CLIENT_FIN | conn_flags::SERVER_FIN;
    let mut fins = half_closed;
    fins.flags = both_fins;
    let mut socket_closed = fins;
    socket_closed.flags |= conn_flags::TCP_CLOSED;
    let mut closed = be_entry(ConnState::BeEstablished);
    closed.flags = both_fins | conn_flags::CLOSE_REPORTED;
    let reuse = direct_syn_to_be();
    let reported = |code: CloseCode| Follow {
        notice: Some((EventKind::Closed, code as u32)),
        ..Follow::NONE
    };
    let case = |name, hook, entry, input: &Vec<u8>, entry_after, follow| Case {
        name,
        hook,
        agent_alive: true,
        config: distributing(BE),
        entry: Some(entry),
        input: input.clone(),
        verdict: TC_ACT_OK,
        output: match hook {
            Hook::Ingress => rewritten(input, |ip| translate_to_server(ip, &t).unwrap()),
            Hook::Egress => to_client_translated(input),
        },
        entry_after,
        event: None,
        follow,
    };
    vec![
        // The handed-in connection is over and the client opens one of its own to this node on the
        // same tuple (its ports toward the FE and toward us are independent): a new connection, not a
        // collision. Dropped, it would wait a SYN retransmission (1 s).
        // What the old one left by tuple goes with it: a watch that froze it as it moved away
        // would hold the new one's packets, its count of responses is not the new one's.
        Case {
            name: "be_closed_tuple_reused_by_a_new_connection",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(BE),
            entry: Some(closed),
            input: reuse.clone(),
            verdict: TC_ACT_OK,
            output: reuse,
            entry_after: Box::new(|c| match c {
                Some(c)
                    if c.role() == Some(ConnRole::Fe) && c.state() == Some(ConnState::FeSyn) =>
                {
                    Ok(())
                }
                other => Err(format!("expected a fresh FE entry, found {other:?}")),
            }),
            event: None,
            follow: Follow {
                watch: Some(stale_frozen_watch()),
                watch_gone: true,
                responses: Some(Responses {
                    next_head: 1,
                    count: 3,
                    ..Responses::default()
                }),
                ..Follow::NONE
            },
        },
        case(
            "be_client_fin_noted_with_its_end",
            Hook::Ingress,
            be_entry(ConnState::BeEstablished),
            &client_fin,
            Box::new(move |c| match c {
                Some(c)
                    if c.flags == conn_flags::CLIENT_FIN
                        && c.client_fin_end == fin_seq.wrapping_add(1) =>
                {
                    Ok(())
                }
                other => Err(format!(
                    "expected CLIENT_FIN ending at FIN + 1, found {other:?}"
                )),
            }),
            Follow::NONE,
        ),
        // Both FINs passed, but our TCP may not have taken them: nothing is reported yet.
        case(
            "be_second_fin_reports_nothing",
            Hook::Egress,
            half_closed,
            &server_fin,
            exact_flags(both_fins),
            Follow::NONE,
        ),
        // The open socket's ACK of the client's FIN: it becomes a timewait socket only after this
        // leaves (tcp_fin), and its own close reports.
        case(
            "be_open_socket_ack_of_client_fin_reports_nothing",
            Hook::Egress,
            fins,
            &fin_acked,
            exact_flags(both_fins),
            Follow::NONE,
        ),
        case(
            "be_timewait_ack_of_client_fin_reports_time_wait",
            Hook::Egress,
            socket_closed,
            &fin_acked,
            exact_flags(both_fins | conn_flags::TCP_CLOSED | conn_flags::CLOSE_REPORTED),
            Follow {
                notice_quiet: Some(false),
                ..reported(CloseCode::TimeWait)
            },
        ),
        // A connection the datapath placed and follows (served where it was accepted, or a
        // followed datapath offer): its close is told quietly.
        case(
            "be_followed_close_reported_quietly",
            Hook::Egress,
            Conn {
                flags: socket_closed.flags | conn_flags::FOLLOWED,
                ..socket_closed
            },
            &fin_acked,
            exact_flags(
                both_fins
                    | conn_flags::TCP_CLOSED
                    | conn_flags::CLOSE_REPORTED
                    | conn_flags::FOLLOWED,
            ),
            Follow {
                notice_quiet: Some(true),
                ..reported(CloseCode::TimeWait)
            },
        ),
        // An ACK of something else (a segment out of its window) says nothing of the FIN.
        case(
            "be_timewait_other_ack_reports_nothing",
            Hook::Egress,
            socket_closed,
            &other_ack,
            exact_flags(both_fins | conn_flags::TCP_CLOSED),
            Follow::NONE,
        ),
        case(
            "be_rst_after_the_socket_closed_reports_gone",
            Hook::Egress,
            socket_closed,
            &rst,
            exact_flags(
                both_fins | conn_flags::TCP_CLOSED | conn_flags::RST | conn_flags::CLOSE_REPORTED,
            ),
            reported(CloseCode::Gone),
        ),
    ]
}

fn exact_flags(flags: u32) -> EntryCheck {
    Box::new(move |c| match c {
        Some(c) if c.state() == Some(ConnState::BeEstablished) && c.flags == flags => Ok(()),
        other => Err(format!(
            "expected an established entry with flags {flags:#x}, found {other:?}"
        )),
    })
}

/// The client seq where the second request of the connection starts (after `client_request`).
const NEXT_REQUEST: u32 = CLIENT_ISN.wrapping_add(1 + 35);
const SECOND_REQUEST: &[u8] = b"GET /f/2k HTTP/1.1\r\nHost: baton\r\n\r\n";

/// A client segment of a placed connection at `seq`, in the FE's view, to `to`.
fn client_segment(to: Ipv4Addr, seq: u32, flags: TcpFlags, payload: &[u8]) -> TcpPacketBuilder {
    let mut p = client_request(to);
    p.seq = seq;
    p.ack = FE_ISN.wrapping_add(1 + 1200);
    p.flags = flags;
    p.options = ts(CLIENT_TSVAL + 20, FE_TSVAL.wrapping_add(90));
    p.payload = payload.to_vec();
    p
}

/// The FE holds the next request for the agent: the watch asks for heads from `NEXT_REQUEST`.
fn watch_heads() -> Option<Watch> {
    Some(Watch::heads(NEXT_REQUEST))
}

/// A packet that goes on, with no hold counted.
fn not_held(watch: Option<Watch>) -> Follow {
    Follow {
        watch,
        counted: &[(Stat::NextHeadsHeld, 0)],
        ..Follow::NONE
    }
}

/// A packet held for the agent as the next request head: the watch says the agent has it.
fn held(watch: Option<Watch>) -> Follow {
    Follow {
        watch,
        watch_after: watch.map(|w| Watch {
            flags: w.flags | watch_flags::AGENT_HEAD,
            ..w
        }),
        dropped: Some(DropReason::Held),
        counted: &[(Stat::NextHeadsHeld, 1)],
        ..Follow::NONE
    }
}

/// The FE keeps deciding a placed connection's requests: what carries the next request head is
/// held for the agent, everything else goes on to where the connection is (forwarded from an
/// FE_FORWARD entry; translated from a BE_ESTABLISHED entry at the FE, a connection moved back).
fn follow_heads() -> Vec<Case> {
    let t = translation();
    let frame_of = |p: TcpPacketBuilder| frame(&p.build());
    let forwarded = |input: &[u8]| rewritten(input, |ip| rewrite_dst_addr(ip, BE).unwrap());
    let to_server = |input: &[u8]| rewritten(input, |ip| translate_to_server(ip, &t).unwrap());
    let psh = TcpFlags::ACK | TcpFlags::PSH;
    let at_next = frame_of(client_segment(FE, NEXT_REQUEST, psh, SECOND_REQUEST));
    // The first request again: it ends where the next one starts (and crosses 2^32 on the way).
    let first = frame_of(client_segment(
        FE,
        CLIENT_ISN.wrapping_add(1),
        psh,
        &client_request(FE).payload,
    ));
    let mut straddling_bytes = b"\r\n".to_vec();
    straddling_bytes.extend_from_slice(SECOND_REQUEST);
    let straddling = frame_of(client_segment(
        FE,
        NEXT_REQUEST.wrapping_sub(2),
        psh,
        &straddling_bytes,
    ));
    let ack = frame_of(client_segment(FE, NEXT_REQUEST, TcpFlags::ACK, &[]));
    // Without options a pure ACK is 54 bytes: a NIC pads it to the 60-byte minimum, and the skb
    // is 6 bytes longer than the packet.
    let mut padded = client_segment(FE, NEXT_REQUEST, TcpFlags::ACK, &[]);
    padded.options.clear();
    let mut padded = frame_of(padded);
    padded.resize(60, 0);
    let fin = frame_of(client_segment(
        FE,
        NEXT_REQUEST,
        TcpFlags::ACK | TcpFlags::FIN,
        &[],
    ));
    let mut rst = client_segment(FE, NEXT_REQUEST, TcpFlags::RST, &[]);
    rst.options.clear();
    let rst = frame_of(rst);
    let be_at_next = frame_of(client_segment(FE, NEXT_REQUEST, psh, SECOND_REQUEST));
    let be_first = first.clone();
    let be_ack = ack.clone();
    // A connection moved back to the FE: its server is the FE's own TCP, the entry translates.
    let moved_back = be_entry(ConnState::BeEstablished);
    let mut replayed_back = be_entry(ConnState::BeReplayed);
    replayed_back.live_deadline_ns = u64::MAX;
    let forward_case = |name, input: &Vec<u8>, follow| Case {
        name,
        hook: Hook::Ingress,
        agent_alive: true,
        config: distributing(FE),
        entry: Some(fe_entry(ConnState::FeForward)),
        input: input.clone(),
        verdict: TC_ACT_REDIRECT,
        output: forwarded(input),
        entry_after: expect_state(ConnState::FeForward),
        event: None,
        follow,
    };
    vec![
        forward_case(
            "fe_watch_data_before_next_head_forwarded",
            &first,
            not_held(watch_heads()),
        ),
        Case {
            name: "fe_watch_data_at_next_head_held",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(fe_entry(ConnState::FeForward)),
            input: at_next.clone(),
            verdict: TC_ACT_SHOT,
            output: at_next.clone(),
            entry_after: expect_state(ConnState::FeForward),
            event: Some(EventKind::NextHead),
            follow: held(watch_heads()),
        },
        Case {
            name: "fe_watch_segment_straddling_next_head_held",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(fe_entry(ConnState::FeForward)),
            input: straddling.clone(),
            verdict: TC_ACT_SHOT,
            output: straddling,
            entry_after: expect_state(ConnState::FeForward),
            event: Some(EventKind::NextHead),
            follow: held(watch_heads()),
        },
        // The current server must keep hearing the client while the agent decides.
        forward_case(
            "fe_watch_pure_ack_at_next_head_forwarded",
            &ack,
            not_held(watch_heads()),
        ),
        forward_case(
            "fe_watch_padded_pure_ack_forwarded",
            &padded,
            not_held(watch_heads()),
        ),
        Case {
            name: "fe_watch_fin_at_next_head_forwarded",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(fe_entry(ConnState::FeForward)),
            input: fin.clone(),
            verdict: TC_ACT_REDIRECT,
            output: forwarded(&fin),
            entry_after: expect_flags(ConnState::FeForward, conn_flags::CLIENT_FIN),
            event: None,
            follow: not_held(watch_heads()),
        },
        Case {
            name: "fe_watch_rst_at_next_head_forwarded",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(fe_entry(ConnState::FeForward)),
            input: rst.clone(),
            verdict: TC_ACT_REDIRECT,
            output: forwarded(&rst),
            entry_after: expect_flags(ConnState::FeForward, conn_flags::RST),
            event: None,
            follow: not_held(watch_heads()),
        },
        forward_case(
            "fe_no_watch_next_request_forwarded",
            &at_next,
            not_held(None),
        ),
        // FROZEN is the serving node's business: the FE's ingress holds only for HEADS.
        forward_case(
            "fe_watch_without_heads_forwarded",
            &at_next,
            not_held(Some(Watch {
                flags: watch_flags::FROZEN,
                next_head_seq: NEXT_REQUEST,
                ..Watch::default()
            })),
        ),
        // A hold would reach no agent: the request goes on to the connection's server.
        Case {
            agent_alive: false,
            ..forward_case(
                "fe_watch_no_agent_next_head_forwarded",
                &at_next,
                not_held(watch_heads()),
            )
        },
        Case {
            name: "fe_moved_back_next_head_held",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(moved_back),
            input: be_at_next.clone(),
            verdict: TC_ACT_SHOT,
            output: be_at_next,
            entry_after: expect_state(ConnState::BeEstablished),
            event: Some(EventKind::NextHead),
            follow: held(watch_heads()),
        },
        Case {
            name: "fe_moved_back_data_before_next_head_translated",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(moved_back),
            input: be_first.clone(),
            verdict: TC_ACT_OK,
            output: to_server(&be_first),
            entry_after: expect_state(ConnState::BeEstablished),
            event: None,
            follow: not_held(watch_heads()),
        },
        Case {
            name: "fe_moved_back_pure_ack_translated",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(moved_back),
            input: be_ack.clone(),
            verdict: TC_ACT_OK,
            output: to_server(&be_ack),
            entry_after: expect_state(ConnState::BeEstablished),
            event: None,
            follow: not_held(watch_heads()),
        },
        // Only an established connection is followed; a replay in progress is translated.
        Case {
            name: "be_replayed_ignores_the_watch",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: Some(replayed_back),
            input: at_next.clone(),
            verdict: TC_ACT_OK,
            output: to_server(&at_next),
            entry_after: expect_state(ConnState::BeReplayed),
            event: None,
            follow: not_held(watch_heads()),
        },
    ]
}

/// Where the request after the first one in `frame` starts (the client's seq).
fn followed_next_head(frame: &[u8]) -> u32 {
    let ip = Ipv4Packet::new_checked(&frame[14..]).expect("an IPv4 frame");
    let tcp = TcpSegment::new_checked(ip.payload()).expect("a TCP segment");
    CLIENT_ISN.wrapping_add(1 + tcp.payload().len() as u32)
}

/// The FE of [`hashing_fe`]'s cluster with requests followed: the datapath lets a followed
/// request stay where its connection is when the hash policy gives it to that node.
fn hashing_followed_fe() -> NodeConfig {
    let mut config = hashing_fe();
    config.decide = crate::DecideMode::HashStays as u8;
    config
}

/// A followed request the datapath places itself or holds for the agent: only a whole plain head
/// (GET, HTTP/1.1, nothing that frames a body or ends the connection, nothing after it) that
/// starts at the next head and hashes to the connection's node goes on, while the agent holds no
/// head of it; the watch then moves past it and a quiet notice tells the agent.
fn follow_stays() -> Vec<Case> {
    let t = translation();
    let frame_of = |p: TcpPacketBuilder| frame(&p.build());
    let psh = TcpFlags::ACK | TcpFlags::PSH;
    let request = |target: &str, headers: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: baton\r\n{headers}\r\n").into_bytes()
    };
    let to_n2 = target_hashed_to(1);
    let to_n1 = target_hashed_to(0);
    let at_next = |payload: &[u8]| frame_of(client_segment(FE, NEXT_REQUEST, psh, payload));
    let forwarded = |input: &[u8]| rewritten(input, |ip| rewrite_dst_addr(ip, BE).unwrap());
    let to_server = |input: &[u8]| rewritten(input, |ip| translate_to_server(ip, &t).unwrap());
    // The connection is on n2 (index 1), forwarded there.
    let on_n2 = Some(Watch::heads_at(NEXT_REQUEST, 1));
    let stays = |name, payload: Vec<u8>| {
        let input = at_next(&payload);
        let next = NEXT_REQUEST.wrapping_add(payload.len() as u32);
        Case {
            name,
            hook: Hook::Ingress,
            agent_alive: true,
            config: hashing_followed_fe(),
            entry: Some(fe_entry(ConnState::FeForward)),
            output: forwarded(&input),
            input,
            verdict: TC_ACT_REDIRECT,
            entry_after: expect_state(ConnState::FeForward),
            event: None,
            follow: Follow {
                watch: on_n2,
                watch_after: Some(Watch::heads_at(next, 1)),
                counted: &[(Stat::NextHeadsStayed, 1), (Stat::NextHeadsHeld, 0)],
                notice: Some((EventKind::NextHeadStayed, next)),
                ..Follow::NONE
            },
        }
    };
    let held_with = |name, payload: Vec<u8>, config: NodeConfig, watch: Option<Watch>| {
        let input = at_next(&payload);
        Case {
            name,
            hook: Hook::Ingress,
            agent_alive: true,
            config,
            entry: Some(fe_entry(ConnState::FeForward)),
            output: input.clone(),
            input,
            verdict: TC_ACT_SHOT,
            entry_after: expect_state(ConnState::FeForward),
            event: Some(EventKind::NextHead),
            follow: Follow {
                counted: &[(Stat::NextHeadsStayed, 0), (Stat::NextHeadsHeld, 1)],
                ..held(watch)
            },
        }
    };
    let held_here = |name, payload: Vec<u8>| held_with(name, payload, hashing_followed_fe(), on_n2);
    let mut pipelined = request(&to_n2, "");
    pipelined.extend_from_slice(&request(&to_n2, ""));
    let mut agent_holds = Watch::heads_at(NEXT_REQUEST, 1);
    agent_holds.flags |= watch_flags::AGENT_HEAD;
    let mut straddling = b"\r\n".to_vec();
    straddling.extend_from_slice(&request(&to_n2, ""));
    let straddling_input = frame_of(client_segment(
        FE,
        NEXT_REQUEST.wrapping_sub(2),
        psh,
        &straddling,
    ));
    // A connection moved back to the FE (index 0): its requests that hash here go into our TCP.
    let back = request(&to_n1, "");
    let back_input = at_next(&back);
    let back_next = NEXT_REQUEST.wrapping_add(back.len() as u32);
    vec![
        stays(
            "fe_follow_request_hashed_to_its_node_stays",
            request(&to_n2, ""),
        ),
        stays(
            "fe_follow_keep_alive_request_stays",
            request(&to_n2, "Connection: Keep-Alive\r\nAccept: */*\r\n"),
        ),
        held_here(
            "fe_follow_request_hashed_elsewhere_held",
            request(&to_n1, ""),
        ),
        held_with(
            "fe_follow_agent_holding_a_head_decides",
            request(&to_n2, ""),
            hashing_followed_fe(),
            Some(agent_holds),
        ),
        held_with(
            "fe_follow_no_node_decides_in_the_agent",
            request(&to_n2, ""),
            hashing_followed_fe(),
            Some(Watch::heads(NEXT_REQUEST)),
        ),
        held_with(
            "fe_follow_first_requests_hashed_decide_nothing_followed",
            request(&to_n2, ""),
            hashing_fe(),
            on_n2,
        ),
        held_here(
            "fe_follow_body_length_held",
            request(&to_n2, "Content-Length: 0\r\n"),
        ),
        held_here(
            "fe_follow_chunked_held",
            request(&to_n2, "Transfer-Encoding: chunked\r\n"),
        ),
        held_here(
            "fe_follow_connection_close_held",
            request(&to_n2, "connection: close\r\n"),
        ),
        held_here(
            "fe_follow_upgrade_held",
            request(&to_n2, "Upgrade: websocket\r\nConnection: Upgrade\r\n"),
        ),
        held_here(
            "fe_follow_http_1_0_held",
            format!("GET {to_n2} HTTP/1.0\r\nHost: baton\r\n\r\n").into_bytes(),
        ),
        held_here(
            "fe_follow_post_held",
            format!("POST {to_n2} HTTP/1.1\r\nHost: baton\r\n\r\n").into_bytes(),
        ),
        held_here(
            "fe_follow_bare_lf_held",
            format!("GET {to_n2} HTTP/1.1\nHost: baton\n\n").into_bytes(),
        ),
        held_here(
            "fe_follow_incomplete_head_held",
            format!("GET {to_n2} HTTP/1.1\r\nHost: ba").into_bytes(),
        ),
        held_here("fe_follow_pipelined_pair_held", pipelined),
        held_here(
            "fe_follow_lowercase_version_held",
            format!("GET {to_n2} http/1.1\r\nHost: baton\r\n\r\n").into_bytes(),
        ),
        held_here(
            "fe_follow_space_in_target_held",
            format!("GET {to_n2} x HTTP/1.1\r\nHost: baton\r\n\r\n").into_bytes(),
        ),
        held_here(
            "fe_follow_folded_header_held",
            request(&to_n2, "X-A: 1\r\n Content-Length: 5\r\n"),
        ),
        held_here(
            "fe_follow_keep_alive_then_close_held",
            request(&to_n2, "Connection: keep-alive, close\r\n"),
        ),
        Case {
            name: "fe_follow_head_not_at_the_boundary_held",
            hook: Hook::Ingress,
            agent_alive: true,
            config: hashing_followed_fe(),
            entry: Some(fe_entry(ConnState::FeForward)),
            output: straddling_input.clone(),
            input: straddling_input,
            verdict: TC_ACT_SHOT,
            entry_after: expect_state(ConnState::FeForward),
            event: Some(EventKind::NextHead),
            follow: held(on_n2),
        },
        Case {
            name: "fe_moved_back_request_hashed_here_stays",
            hook: Hook::Ingress,
            agent_alive: true,
            config: hashing_followed_fe(),
            entry: Some(be_entry(ConnState::BeEstablished)),
            output: to_server(&back_input),
            input: back_input,
            verdict: TC_ACT_OK,
            entry_after: expect_state(ConnState::BeEstablished),
            event: None,
            follow: Follow {
                watch: Some(Watch::heads_at(NEXT_REQUEST, 0)),
                watch_after: Some(Watch::heads_at(back_next, 0)),
                counted: &[(Stat::NextHeadsStayed, 1), (Stat::NextHeadsHeld, 0)],
                notice: Some((EventKind::NextHeadStayed, back_next)),
                ..Follow::NONE
            },
        },
    ]
}

/// The server's seq where its first response starts.
const FIRST_RESPONSE: u32 = BE_ISN.wrapping_add(1);

/// A server segment at `seq` (its own space) carrying `payload`.
fn server_segment(seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = server_response();
    p.seq = seq;
    p.payload = payload.to_vec();
    frame(&p.build())
}

/// A response head, then `body` bytes of its body.
fn response(head: &str, body: usize) -> Vec<u8> {
    let mut bytes = head.as_bytes().to_vec();
    bytes.resize(head.len() + body, b'b');
    bytes
}

/// The responses entry `r` after a packet that left it alone.
fn unchanged(r: Responses) -> Follow {
    Follow {
        responses: Some(r),
        responses_after: Some(r),
        counted: &[(Stat::ResponseHeads, 0), (Stat::ResponsesOpaque, 0)],
        ..Follow::NONE
    }
}

/// From `before`, the entry after a head was read: `next_head` and `count`.
fn advanced(before: Responses, next_head: u32, count: u32) -> Follow {
    Follow {
        responses: Some(before),
        responses_after: Some(Responses {
            next_head,
            count,
            ..before
        }),
        counted: &[(Stat::ResponseHeads, 1), (Stat::ResponsesOpaque, 0)],
        ..Follow::NONE
    }
}

/// From `before`, the entry after its responses could no longer be followed.
fn opaque(before: Responses) -> Follow {
    Follow {
        responses: Some(before),
        responses_after: Some(Responses {
            flags: before.flags | responses_flags::OPAQUE,
            ..before
        }),
        counted: &[(Stat::ResponseHeads, 0), (Stat::ResponsesOpaque, 1)],
        ..Follow::NONE
    }
}

/// The serving node follows its server's responses (where the next head starts, how many final
/// responses began) and, once the connection is moving away, keeps its TCP quiet.
fn follow_responses() -> Vec<Case> {
    let start = Responses::new(FIRST_RESPONSE);
    let ok_head = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n";
    let ok = server_segment(FIRST_RESPONSE, &response(ok_head, 200));
    let after_ok = FIRST_RESPONSE.wrapping_add(ok_head.len() as u32 + 1000);
    let no_content_head = "HTTP/1.1 204 No Content\r\nDate: Tue, 01 Dec 2026 13:00:00 GMT\r\n\r\n";
    let no_content = server_segment(FIRST_RESPONSE, no_content_head.as_bytes());
    let not_modified_head = "HTTP/1.1 304 Not Modified\r\nContent-Length: 512\r\n\r\n";
    let not_modified = server_segment(FIRST_RESPONSE, not_modified_head.as_bytes());
    let continue_head = "HTTP/1.1 100 Continue\r\n\r\n";
    let continue_ = server_segment(FIRST_RESPONSE, continue_head.as_bytes());
    let chunked = server_segment(
        FIRST_RESPONSE,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    let no_length = server_segment(
        FIRST_RESPONSE,
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    );
    let unfinished = server_segment(
        FIRST_RESPONSE,
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Cut: the segment ends in the head",
    );
    let lower_head = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
    let lower = server_segment(FIRST_RESPONSE, &response(lower_head, 5));
    let spaced_head = "HTTP/1.0 404 Not Found\r\nCONTENT-LENGTH:\t 42 \t\r\n\r\n";
    let spaced = server_segment(FIRST_RESPONSE, &response(spaced_head, 10));
    let largest_head = "HTTP/1.1 200 OK\r\nContent-Length: 2147483648\r\n\r\n";
    let largest = server_segment(FIRST_RESPONSE, &response(largest_head, 100));
    let too_long = server_segment(
        FIRST_RESPONSE,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2147483649\r\n\r\n",
    );
    let two_lengths = server_segment(
        FIRST_RESPONSE,
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    );
    let not_digits = server_segment(
        FIRST_RESPONSE,
        b"HTTP/1.1 200 OK\r\nContent-Length: 3x\r\n\r\nabc",
    );
    let pipelined = server_segment(
        FIRST_RESPONSE,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nho",
    );
    let switching = server_segment(
        FIRST_RESPONSE,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    let bad_status = server_segment(
        FIRST_RESPONSE,
        b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    );
    let mut big_head = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Filler: ".to_string();
    big_head.push_str(&"f".repeat(crate::sizes::RESPONSE_SCAN_MAX));
    big_head.push_str("\r\n\r\n");
    let big = server_segment(FIRST_RESPONSE, big_head.as_bytes());
    // Body bytes of a response whose head was read: its next head is 3000 bytes on.
    let in_body = Responses {
        next_head: FIRST_RESPONSE.wrapping_add(3000),
        count: 1,
        ..start
    };
    let body = server_segment(FIRST_RESPONSE.wrapping_add(1000), &[0x5a; 1200]);
    let past = server_segment(FIRST_RESPONSE.wrapping_add(100), &response(ok_head, 10));
    let covering = Responses {
        next_head: FIRST_RESPONSE.wrapping_add(100),
        ..start
    };
    let parsed = Responses {
        next_head: after_ok,
        count: 1,
        ..start
    };
    let gone_opaque = Responses {
        flags: responses_flags::OPAQUE,
        ..start
    };
    let server_ack = server_ack();
    let frozen = Some(Watch {
        flags: watch_flags::FROZEN,
        next_head_seq: 0,
        ..Watch::default()
    });
    let head_len = |h: &str| h.len() as u32;
    let translated = |name, input: &Vec<u8>, follow| Case {
        name,
        hook: Hook::Egress,
        agent_alive: true,
        config: distributing(BE),
        entry: Some(be_entry(ConnState::BeEstablished)),
        input: input.clone(),
        verdict: TC_ACT_OK,
        output: to_client_translated(input),
        entry_after: expect_state(ConnState::BeEstablished),
        event: None,
        follow,
    };
    vec![
        Case {
            name: "be_frozen_server_data_dropped",
            hook: Hook::Egress,
            agent_alive: true,
            config: distributing(BE),
            entry: Some(be_entry(ConnState::BeEstablished)),
            input: ok.clone(),
            verdict: TC_ACT_SHOT,
            output: ok.clone(),
            entry_after: expect_state(ConnState::BeEstablished),
            event: None,
            // What never leaves is no response: the entry stays as it was.
            follow: Follow {
                watch: frozen,
                dropped: Some(DropReason::Moving),
                ..unchanged(start)
            },
        },
        Case {
            name: "be_frozen_server_ack_dropped",
            hook: Hook::Egress,
            agent_alive: true,
            config: distributing(BE),
            entry: Some(be_entry(ConnState::BeEstablished)),
            input: server_ack.clone(),
            verdict: TC_ACT_SHOT,
            output: server_ack.clone(),
            entry_after: expect_state(ConnState::BeEstablished),
            event: None,
            follow: Follow {
                watch: frozen,
                dropped: Some(DropReason::Moving),
                ..Follow::NONE
            },
        },
        // HEADS is the accepting node's business: the server's packets go out.
        translated(
            "be_watch_heads_only_server_data_sent",
            &ok,
            Follow {
                watch: watch_heads(),
                ..advanced(start, after_ok, 1)
            },
        ),
        translated(
            "be_response_content_length_advances_next_head",
            &ok,
            advanced(start, after_ok, 1),
        ),
        translated(
            "be_response_204_is_its_head",
            &no_content,
            advanced(
                start,
                FIRST_RESPONSE.wrapping_add(head_len(no_content_head)),
                1,
            ),
        ),
        translated(
            "be_response_304_is_its_head_whatever_its_length",
            &not_modified,
            advanced(
                start,
                FIRST_RESPONSE.wrapping_add(head_len(not_modified_head)),
                1,
            ),
        ),
        translated(
            "be_response_100_continue_is_not_counted",
            &continue_,
            advanced(
                start,
                FIRST_RESPONSE.wrapping_add(head_len(continue_head)),
                0,
            ),
        ),
        translated(
            "be_response_lowercase_content_length",
            &lower,
            advanced(
                start,
                FIRST_RESPONSE.wrapping_add(head_len(lower_head) + 5),
                1,
            ),
        ),
        translated(
            "be_response_content_length_in_whitespace",
            &spaced,
            advanced(
                start,
                FIRST_RESPONSE.wrapping_add(head_len(spaced_head) + 42),
                1,
            ),
        ),
        translated(
            "be_response_content_length_2_pow_31",
            &largest,
            advanced(
                start,
                FIRST_RESPONSE.wrapping_add(head_len(largest_head) + (1 << 31)),
                1,
            ),
        ),
        // Where the next head starts is the datapath's to know; one it cannot tell stops it.
        translated("be_response_chunked_goes_opaque", &chunked, opaque(start)),
        translated(
            "be_response_without_length_goes_opaque",
            &no_length,
            opaque(start),
        ),
        translated(
            "be_response_head_unfinished_in_segment_goes_opaque",
            &unfinished,
            opaque(start),
        ),
        translated(
            "be_response_head_beyond_the_scan_goes_opaque",
            &big,
            opaque(start),
        ),
        translated(
            "be_response_content_length_over_2_pow_31_goes_opaque",
            &too_long,
            opaque(start),
        ),
        translated(
            "be_response_two_content_lengths_go_opaque",
            &two_lengths,
            opaque(start),
        ),
        translated(
            "be_response_content_length_not_digits_goes_opaque",
            &not_digits,
            opaque(start),
        ),
        translated(
            "be_response_next_head_in_the_same_segment_goes_opaque",
            &pipelined,
            opaque(start),
        ),
        translated(
            "be_response_101_switching_protocols_goes_opaque",
            &switching,
            opaque(start),
        ),
        translated(
            "be_response_malformed_status_line_goes_opaque",
            &bad_status,
            opaque(start),
        ),
        translated(
            "be_response_body_before_next_head_unchanged",
            &body,
            unchanged(in_body),
        ),
        translated(
            "be_response_head_retransmitted_unchanged",
            &ok,
            unchanged(parsed),
        ),
        translated(
            "be_response_pure_ack_unchanged",
            &server_ack,
            unchanged(start),
        ),
        translated(
            "be_response_segment_past_next_head_goes_opaque",
            &past,
            opaque(start),
        ),
        translated(
            "be_response_segment_covering_next_head_goes_opaque",
            &body_from(FIRST_RESPONSE),
            opaque(covering),
        ),
        translated(
            "be_response_opaque_stays_opaque",
            &ok,
            unchanged(gone_opaque),
        ),
        translated("be_response_without_an_entry_untracked", &ok, Follow::NONE),
        // The server's first packet is the response: live, then followed, then translated.
        Case {
            name: "be_response_of_a_connection_going_live_followed",
            hook: Hook::Egress,
            agent_alive: true,
            config: distributing(BE),
            entry: Some(replayed(u64::MAX)),
            input: ok.clone(),
            verdict: TC_ACT_OK,
            output: to_client_translated(&ok),
            entry_after: expect_flags(ConnState::BeEstablished, conn_flags::LIVE_REPORTED),
            event: Some(EventKind::BeLive),
            follow: advanced(start, after_ok, 1),
        },
    ]
}

/// 1200 body bytes from server seq `seq`.
fn body_from(seq: u32) -> Vec<u8> {
    server_segment(seq, &[0x5a; 1200])
}

/// No agent runs (its heartbeat is stale): nothing new is held, what was held is passed up and
/// forgotten, and connections already forwarded or translated carry on exactly as before.
fn fail_open() -> Vec<Case> {
    let syn = client_syn();
    let hs_ack = handshake_ack();
    let request = frame(&client_request(FE).build());
    let mut cases = vec![
        Case {
            name: "no_agent_syn_passes_untracked",
            hook: Hook::Ingress,
            agent_alive: false,
            config: distributing(FE),
            entry: None,
            input: syn.clone(),
            verdict: TC_ACT_OK,
            output: syn,
            entry_after: expect_absent(),
            event: None,
            follow: Follow::NONE,
        },
        // Our TCP gets the handshake ACK and completes the connection itself.
        Case {
            name: "no_agent_handshake_ack_passes_and_forgets",
            hook: Hook::Ingress,
            agent_alive: false,
            config: distributing(FE),
            entry: Some(fe_entry(ConnState::FeSyn)),
            input: hs_ack.clone(),
            verdict: TC_ACT_OK,
            output: hs_ack,
            entry_after: expect_absent(),
            event: None,
            follow: Follow::NONE,
        },
        // The dead agent had the first bytes: the client's retransmission completes the handshake
        // with our TCP, which still has the half-open connection.
        Case {
            name: "no_agent_held_connection_passes_and_forgets",
            hook: Hook::Ingress,
            agent_alive: false,
            config: distributing(FE),
            entry: Some(agent_holds()),
            input: request.clone(),
            verdict: TC_ACT_OK,
            output: request,
            entry_after: expect_absent(),
            event: None,
            follow: Follow::NONE,
        },
    ];
    // Forwarding and translating do not need the agent.
    let carry_on = fe_forward()
        .into_iter()
        .chain(be_translate())
        .map(|case| Case {
            agent_alive: false,
            ..case
        });
    cases.extend(carry_on);
    cases
}

fn not_ours() -> Vec<Case> {
    let mut other_port = from_client(FE);
    other_port.dst_port = 8080;
    other_port.flags = TcpFlags::SYN;
    let other_port = frame(&other_port.build());
    let mut truncated = client_syn();
    truncated.truncate(14 + 20 + 10);
    truncated[16..18].copy_from_slice(&30u16.to_be_bytes());
    Ipv4Packet::new_checked(&mut truncated[14..])
        .expect("30-byte IPv4 packet")
        .fill_checksum();
    vec![
        Case {
            name: "other_port_untouched",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: None,
            input: other_port.clone(),
            verdict: TC_ACT_OK,
            output: other_port,
            entry_after: expect_absent(),
            event: None,
            follow: Follow::NONE,
        },
        Case {
            name: "truncated_tcp_header_untouched",
            hook: Hook::Ingress,
            agent_alive: true,
            config: distributing(FE),
            entry: None,
            input: truncated.clone(),
            verdict: TC_ACT_OK,
            output: truncated,
            entry_after: expect_absent(),
            event: None,
            follow: Follow::NONE,
        },
    ]
}

/// A loaded datapath with its maps at hand, for running cases.
pub struct Runner {
    datapath: Datapath,
    conns: ConnTable,
    watch: WatchTable,
    responses: ResponsesTable,
    refused: RefusedOffers,
    events: EventRing,
    quiet: EventRing,
    agent: AgentMap,
    counters: Counters,
    bounded: crate::datapath::BoundedViewMap,
    bounded_counts: crate::datapath::BoundedCountsMap,
}

pub struct Outcome {
    /// The input as run (an offer header stamped, see [`Stamp`]).
    pub input: Vec<u8>,
    pub verdict: u32,
    pub output: Vec<u8>,
    pub entry_after: Option<Conn>,
    pub watch_after: Option<Watch>,
    pub responses_after: Option<Responses>,
    pub events: Vec<Event>,
    /// How many of `events` (the first ones) came from the quiet ring.
    pub quiet_events: usize,
    /// Drop reasons the run counted, with how often (read only when the case checks them).
    pub dropped: Vec<(DropReason, u64)>,
    /// How far the run moved each stat of the case's `follow.counted`.
    pub counted: Vec<(Stat, u64)>,
    /// The datapath's bounded-load counts after the run.
    pub bounded_decided: [u64; crate::DP_NODES_MAX],
    /// Mean time per run as the kernel measured it.
    pub duration: Duration,
}

impl Runner {
    pub fn new() -> Result<Self, DatapathError> {
        let mut datapath = Datapath::load()?;
        let conns = datapath.take_conns()?;
        let watch = datapath.take_watch()?;
        let responses = datapath.take_responses()?;
        let refused = datapath.take_refused_offers()?;
        let events = datapath.take_events()?;
        let quiet = datapath.take_quiet_events()?;
        let agent = datapath.take_agent_map()?;
        let counters = datapath.take_counters()?;
        let (bounded, bounded_counts) = datapath.take_bounded()?;
        Ok(Runner {
            datapath,
            conns,
            watch,
            responses,
            refused,
            events,
            quiet,
            agent,
            counters,
            bounded,
            bounded_counts,
        })
    }

    /// Sets up the maps for `case`, runs it `repeat` times, returns what the last run did.
    pub fn run(&mut self, case: &Case, repeat: u32) -> Result<Outcome, String> {
        self.prepare(case)?;
        self.execute(case, repeat)
    }

    /// The maps as `case` wants them: node config, empty tables but for its entries, no events.
    pub fn prepare(&mut self, case: &Case) -> Result<(), String> {
        self.datapath
            .set_node_config(&case.config)
            .map_err(|e| e.to_string())?;
        let keys: Vec<ConnKey> = self.conns.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.conns.remove(&k);
        }
        let keys: Vec<ConnKey> = self.watch.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.watch.remove(&k);
        }
        let keys: Vec<_> = self.refused.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.refused.remove(&k);
        }
        if let Some(reason) = case.follow.refused_before {
            let o = offer_in(&case.input).ok_or("refused before, but no offer in the input")?;
            let key = crate::RefusedOfferKey {
                handoff_id: o.handoff_id.to_be(),
                fe_addr: o.fe_addr.octets(),
                pad: 0,
            };
            let until_ns = u64::MAX; // never expires during the run
            self.refused
                .insert(
                    key,
                    crate::RefusedOffer {
                        until_ns,
                        reason,
                        pad: 0,
                    },
                    0,
                )
                .map_err(|e| e.to_string())?;
        }
        let keys: Vec<ConnKey> = self.responses.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.responses.remove(&k);
        }
        while self.events.next().is_some() {}
        while self.quiet.next().is_some() {}
        if case.agent_alive {
            self.agent.heartbeat(u64::MAX);
        } else {
            self.agent.stand_down();
        }
        let (view, mut counts) = match case.follow.bounded {
            Some(b) => (
                bounded_view(case.config.nnodes.into(), &b.loads),
                crate::BoundedCounts::default(),
            ),
            None => (
                crate::BoundedView::new(&[], 0, BOUNDED_FACTOR),
                crate::BoundedCounts::default(),
            ),
        };
        if let Some(b) = case.follow.bounded {
            counts.decided[..BOUNDED_MEMBERS_MAX].copy_from_slice(&b.decided_before);
        }
        self.bounded.set(0, view, 0).map_err(|e| e.to_string())?;
        self.bounded_counts
            .set(0, counts, 0)
            .map_err(|e| e.to_string())?;
        if let Some(entry) = case.entry {
            self.conns
                .insert(case.key(), entry, 0)
                .map_err(|e| e.to_string())?;
        }
        if let Some(watch) = case.follow.watch {
            self.watch
                .insert(case.key(), watch, 0)
                .map_err(|e| e.to_string())?;
        }
        if let Some(responses) = case.follow.responses {
            self.responses
                .insert(case.key(), responses, 0)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Every drop reason's count, and the stats of `case.follow.counted`, if the case checks them.
    fn read_counters(&self, case: &Case) -> Result<(Vec<u64>, Vec<u64>), String> {
        let drops = match case.follow.dropped {
            None => Vec::new(),
            Some(_) => DropReason::ALL
                .iter()
                .map(|r| self.counters.dropped(*r))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?,
        };
        let stats = case
            .follow
            .counted
            .iter()
            .map(|(stat, _)| self.counters.stat(*stat))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        Ok((drops, stats))
    }

    /// Fills the conn table with `n` entries of other connections (a SYN flood's aftermath).
    pub fn fill_table(&mut self, n: u32) -> Result<(), String> {
        for i in 0..n {
            let client = SocketAddrV4::new(Ipv4Addr::from(0xc612_0000 | (i >> 16)), i as u16);
            let key = ConnKey::new(client, SocketAddrV4::new(FE, SERVICE_PORT));
            self.conns
                .insert(key, fe_entry(ConnState::FeSyn), 0)
                .map_err(|e| format!("entry {i}: {e}"))?;
        }
        Ok(())
    }

    /// Runs `case` on the maps as they are.
    pub fn execute(&mut self, case: &Case, repeat: u32) -> Result<Outcome, String> {
        let name = match case.hook {
            Hook::Ingress => INGRESS_PROGRAM,
            Hook::Egress => EGRESS_PROGRAM,
        };
        let (drops_before, stats_before) = self.read_counters(case)?;
        let program = self.datapath.program(name).map_err(|e| e.to_string())?;
        let input = stamped_input(case)?;
        let mut out = vec![0u8; input.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(&input),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(|e| format!("BPF_PROG_TEST_RUN: {e}"))?;
        out.truncate(result.data_size_out as usize);
        let entry_after = self.conns.get(&case.key(), 0).ok();
        let watch_after = self.watch.get(&case.key(), 0).ok();
        let responses_after = self.responses.get(&case.key(), 0).ok();
        // Quiet notices first, as the agent reads them.
        let mut events = Vec::new();
        while let Some(record) = self.quiet.next() {
            events.push(Event::parse(&record).map_err(|e| e.to_string())?);
        }
        let quiet_events = events.len();
        while let Some(record) = self.events.next() {
            events.push(Event::parse(&record).map_err(|e| e.to_string())?);
        }
        let (drops_after, stats_after) = self.read_counters(case)?;
        let dropped = DropReason::ALL
            .iter()
            .zip(drops_after.iter().zip(&drops_before))
            .map(|(r, (after, before))| (*r, after - before))
            .filter(|(_, n)| *n != 0)
            .collect();
        let counted = case
            .follow
            .counted
            .iter()
            .zip(stats_after.iter().zip(&stats_before))
            .map(|((stat, _), (after, before))| (*stat, after - before))
            .collect();
        let bounded_decided = self
            .bounded_counts
            .get(&0, 0)
            .map_err(|e| e.to_string())?
            .decided;
        Ok(Outcome {
            input,
            verdict: result.return_value,
            output: out,
            entry_after,
            watch_after,
            responses_after,
            events,
            quiet_events,
            dropped,
            counted,
            bounded_decided,
            duration: result.duration,
        })
    }
}

/// Checks one outcome against its case; the error names every difference found.
pub fn check(case: &Case, outcome: &Outcome) -> Result<(), String> {
    let mut problems = Vec::new();
    if outcome.verdict != case.verdict {
        problems.push(format!("verdict {} != {}", outcome.verdict, case.verdict));
    }
    let want = expected_output(case, outcome).unwrap_or_else(|e| {
        problems.push(e);
        case.output.clone()
    });
    if outcome.output != want {
        problems.push(format!(
            "output differs\n  got  {:02x?}\n  want {:02x?}",
            outcome.output, want
        ));
    }
    if let Some(ip) = outcome.output.get(14..)
        && let Ok(p) = Ipv4Packet::new_checked(ip)
    {
        if !p.verify_checksum() {
            problems.push("output IPv4 checksum invalid".into());
        }
        // The TCP segment of an offer packet keeps the checksum it has from client to BE.
        let segment = match p.protocol() {
            PROTO_TCP => Some((p.payload(), p.src_addr(), p.dst_addr())),
            OFFER_IPPROTO => OfferRepr::parse(p.payload())
                .ok()
                .map(|o| (&p.payload()[OFFER_LEN..], o.client_addr, o.be_addr)),
            _ => None,
        };
        if let Some((segment, src, dst)) = segment
            && let Ok(t) = TcpSegment::new_checked(segment)
            && !t.verify_checksum(src, dst)
        {
            problems.push("output TCP checksum invalid".into());
        }
    }
    if let Err(e) = (case.entry_after)(outcome.entry_after.as_ref()) {
        problems.push(e);
    }
    let watch_wanted = if case.follow.watch_gone {
        None
    } else {
        case.follow.watch_after.or(case.follow.watch)
    };
    if outcome.watch_after != watch_wanted {
        problems.push(format!(
            "watch entry {:?} after, want {:?}",
            outcome.watch_after, watch_wanted
        ));
    }
    if outcome.responses_after != case.follow.responses_after {
        problems.push(format!(
            "responses entry {:?}, want {:?}",
            outcome.responses_after, case.follow.responses_after
        ));
    }
    if let Some(reason) = case.follow.dropped
        && outcome.dropped != [(reason, 1)]
    {
        problems.push(format!(
            "drops counted {:?}, want {reason:?} once",
            outcome.dropped
        ));
    }
    if let Some(b) = case.follow.bounded
        && outcome.bounded_decided[..BOUNDED_MEMBERS_MAX] != b.decided_after
    {
        problems.push(format!(
            "bounded-load counts {:?} after, want {:?}",
            &outcome.bounded_decided[..BOUNDED_MEMBERS_MAX],
            b.decided_after
        ));
    }
    let want: Vec<(Stat, u64)> = case.follow.counted.to_vec();
    if outcome.counted != want {
        problems.push(format!("stats moved {:?}, want {want:?}", outcome.counted));
    }
    let want: Vec<(EventKind, Option<u32>)> = case
        .follow
        .notice
        .map(|(kind, detail)| (kind, Some(detail)))
        .into_iter()
        .chain(case.event.map(|kind| (kind, None)))
        .collect();
    if let Some(quiet) = case.follow.notice_quiet
        && (outcome.quiet_events > 0) != quiet
    {
        problems.push(format!(
            "the notice went to the {} ring, want the {}",
            if quiet { "main" } else { "quiet" },
            if quiet { "quiet" } else { "main" }
        ));
    }
    if outcome.events.len() != want.len() {
        problems.push(format!(
            "events {:?}, want {:?}",
            outcome.events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            want.iter().map(|(kind, _)| *kind).collect::<Vec<_>>()
        ));
    }
    for (event, (kind, detail)) in outcome.events.iter().zip(want) {
        let notice = matches!(
            kind,
            EventKind::Closed
                | EventKind::BeLive
                | EventKind::NextHeadStayed
                | EventKind::DpFollowedHere
                | EventKind::DpOffered
                | EventKind::DpTaken
                | EventKind::DpReturned
        );
        if event.kind != kind || event.key != case.key() {
            problems.push(format!(
                "event {:?} for {}, want {kind:?} for {}",
                event.kind,
                event.key,
                case.key()
            ));
        } else if let Some(detail) = detail
            && event.detail != detail
        {
            problems.push(format!("{kind:?} detail {}, want {detail}", event.detail));
        } else if kind == EventKind::DpFollowedHere
            && Conn::from_event(&event.packet).map(replay_fields) != case.entry.map(replay_fields)
        {
            problems.push(format!("{kind:?} does not carry the entry as it was"));
        } else if !notice && event.packet != outcome.output[14..] {
            problems.push(format!("{kind:?} does not carry the packet"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// What a move replays of a connection's FE entry: it must reach the agent as it was.
type ReplayFields = (
    u8,
    u8,
    u32,
    u32,
    u32,
    [u8; crate::TCP_OPTS_MAX],
    [u8; crate::TCP_OPTS_MAX],
);

fn replay_fields(c: Conn) -> ReplayFields {
    (
        c.role,
        c.state,
        c.client_isn,
        c.local_isn,
        c.synack_tsval,
        c.syn_opts,
        c.synack_opts,
    )
}

/// Moves the calling thread (it alone) into a new network namespace and brings its loopback up:
/// for tests whose packets must really leave a program, or whose sockets must be theirs alone.
pub fn own_network_namespace() -> std::io::Result<()> {
    // SAFETY: unshare() has no memory arguments; it moves this thread alone.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket() has no memory arguments; its result is checked before it is owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write `req`, a valid ifreq, in place.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The cookie of a socket (`SO_COOKIE`), as `bpf_get_socket_cookie` and sock_diag name it.
pub fn socket_cookie(socket: &impl std::os::fd::AsRawFd) -> std::io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: SO_COOKIE writes a u64 into `cookie`, of the length given.
    let got = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if got != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}
