//! The datapath's packet tables: for each entry state and packet kind, the map setup, the input
//! frame, and the expected verdict, output bytes, entry state and event. The expected bytes come
//! from `baton_wire` (the user-space twin of the rewrites), an oracle independent of the C code.
//!
//! [`Runner`] runs a case through `BPF_PROG_TEST_RUN`; the test suite checks every case
//! (`tests/prog_tables.rs`) and the `prog_run` bench reruns them with `repeat` for per-packet cost.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};
use baton_wire::{
    Ipv4Packet, SackBlocks, SynOptions, TcpFlags, TcpOption, TcpPacketBuilder, TcpSegment,
    Translation, rewrite_dst_addr, rewrite_src_addr, translate_to_client, translate_to_server,
};

use crate::datapath::{AgentMap, ConnTable, EventRing};
use crate::{
    Conn, ConnKey, ConnRole, ConnState, Datapath, DatapathError, DpNode, EGRESS_PROGRAM, Event,
    EventKind, INGRESS_PROGRAM, NodeConfig, conn_flags,
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
    /// The event expected on the ring (packet events carry the input from its IPv4 header).
    pub event: Option<EventKind>,
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
            pad: [0; 6],
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
            output: here,
            entry_after: expect_absent(),
            event: None,
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

fn be_close() -> Vec<Case> {
    let mut server_fin = server_response();
    server_fin.flags = TcpFlags::ACK | TcpFlags::FIN;
    server_fin.payload.clear();
    let server_fin = frame(&server_fin.build());
    let mut half_closed = be_entry(ConnState::BeEstablished);
    half_closed.flags = conn_flags::CLIENT_FIN;
    let mut closed = be_entry(ConnState::BeEstablished);
    closed.flags = conn_flags::CLIENT_FIN | conn_flags::SERVER_FIN | conn_flags::CLOSE_REPORTED;
    let reuse = direct_syn_to_be();
    vec![
        // The handed-in connection is over and the client opens one of its own to this node on the
        // same tuple (its ports toward the FE and toward us are independent): a new connection, not a
        // collision. Dropped, it would wait a SYN retransmission (1 s).
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
        },
        Case {
            name: "be_second_fin_reports_close",
            hook: Hook::Egress,
            agent_alive: true,
            config: distributing(BE),
            entry: Some(half_closed),
            input: server_fin.clone(),
            verdict: TC_ACT_OK,
            output: to_client_translated(&server_fin),
            entry_after: expect_flags(
                ConnState::BeEstablished,
                conn_flags::CLIENT_FIN | conn_flags::SERVER_FIN | conn_flags::CLOSE_REPORTED,
            ),
            event: Some(EventKind::Closed),
        },
    ]
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
        },
    ]
}

/// A loaded datapath with its maps at hand, for running cases.
pub struct Runner {
    datapath: Datapath,
    conns: ConnTable,
    events: EventRing,
    agent: AgentMap,
}

pub struct Outcome {
    pub verdict: u32,
    pub output: Vec<u8>,
    pub entry_after: Option<Conn>,
    pub events: Vec<Event>,
    /// Mean time per run as the kernel measured it.
    pub duration: Duration,
}

impl Runner {
    pub fn new() -> Result<Self, DatapathError> {
        let mut datapath = Datapath::load()?;
        let conns = datapath.take_conns()?;
        let events = datapath.take_events()?;
        let agent = datapath.take_agent_map()?;
        Ok(Runner {
            datapath,
            conns,
            events,
            agent,
        })
    }

    /// Sets up the maps for `case`, runs it `repeat` times, returns what the last run did.
    pub fn run(&mut self, case: &Case, repeat: u32) -> Result<Outcome, String> {
        self.prepare(case)?;
        self.execute(case, repeat)
    }

    /// The maps as `case` wants them: node config, an empty table but for its entry, no events.
    pub fn prepare(&mut self, case: &Case) -> Result<(), String> {
        self.datapath
            .set_node_config(&case.config)
            .map_err(|e| e.to_string())?;
        let keys: Vec<ConnKey> = self.conns.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.conns.remove(&k);
        }
        while self.events.next().is_some() {}
        if case.agent_alive {
            self.agent.heartbeat(u64::MAX);
        } else {
            self.agent.stand_down();
        }
        if let Some(entry) = case.entry {
            self.conns
                .insert(case.key(), entry, 0)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
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
        let program = self.datapath.program(name).map_err(|e| e.to_string())?;
        let mut out = vec![0u8; case.input.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(&case.input),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(|e| format!("BPF_PROG_TEST_RUN: {e}"))?;
        out.truncate(result.data_size_out as usize);
        let entry_after = self.conns.get(&case.key(), 0).ok();
        let mut events = Vec::new();
        while let Some(record) = self.events.next() {
            events.push(Event::parse(&record).map_err(|e| e.to_string())?);
        }
        Ok(Outcome {
            verdict: result.return_value,
            output: out,
            entry_after,
            events,
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
    if outcome.output != case.output {
        problems.push(format!(
            "output differs\n  got  {:02x?}\n  want {:02x?}",
            outcome.output, case.output
        ));
    }
    if let Some(ip) = outcome.output.get(14..)
        && let Ok(p) = Ipv4Packet::new_checked(ip)
    {
        if !p.verify_checksum() {
            problems.push("output IPv4 checksum invalid".into());
        }
        if let Ok(t) = TcpSegment::new_checked(p.payload())
            && !t.verify_checksum(p.src_addr(), p.dst_addr())
        {
            problems.push("output TCP checksum invalid".into());
        }
    }
    if let Err(e) = (case.entry_after)(outcome.entry_after.as_ref()) {
        problems.push(e);
    }
    match (case.event, outcome.events.as_slice()) {
        (None, []) => {}
        (Some(kind), [event]) => {
            if event.kind != kind || event.key != case.key() {
                problems.push(format!(
                    "event {:?} for {}, want {kind:?} for {}",
                    event.kind,
                    event.key,
                    case.key()
                ));
            } else if !matches!(kind, EventKind::Closed | EventKind::BeLive)
                && event.packet != case.input[14..]
            {
                problems.push("event does not carry the input packet".into());
            }
        }
        (want, got) => problems.push(format!(
            "events {:?}, want {want:?}",
            got.iter().map(|e| e.kind).collect::<Vec<_>>()
        )),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
