//! The engine's decisions, driven by hand: datapath events, control messages and time go in; the
//! conn table, the datapath's configuration, the injected packets and the messages to peers are
//! checked. The kernel is replaced by in-memory tables (the real one is exercised end to end in
//! `crates/cli/tests`); time is passed in, so nothing here sleeps.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_bpf::{
    CloseCode, Conn, ConnKey, ConnRole, ConnState, DecideMode, Event, EventKind, Responses, Watch,
};
use baton_policy::PolicyKind;
use baton_proto::{BusyReason, HandoffRequest, Message, RefuseReason};
use baton_wire::{
    Ipv4Packet, SynOptions, TcpFlags, TcpOption, TcpPacketBuilder, TcpSegment, emit_options,
};
use tokio::sync::mpsc;

use super::Engine;
use crate::config::NodeConfig;
use crate::inject::InjectError;
use crate::kernel::{
    ConnTableOps, DatapathControl, FollowTables, Insert, Kernel, PacketSink, ServiceChanges,
    TcpStates,
};
use crate::mesh::{MeshEvent, MeshSender};
use crate::metrics::Metrics;
use crate::sockdiag::{SockDiagError, TcpQueues, tcp_state};

const N1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const N2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
const CLIENT_PORT: u16 = 40000;
const CLIENT_ISN: u32 = 0xffff_fff0;
const FE_ISN: u32 = 0x1000_0000;
const FE_TSVAL: u32 = 5_000;
const BE_ISN: u32 = 0x2000_0000;
const BE_TSVAL: u32 = 9_000_000;
/// The test configuration's `handoff_timeout_ms`, `hold_ms`, `close_linger_ms`.
const HANDOFF_TIMEOUT: Duration = Duration::from_millis(40);
const HOLD: Duration = Duration::from_millis(40);
const LINGER: Duration = Duration::from_millis(10);

/// The datapath's connection table, and how often the agent looked through all of it.
#[derive(Clone, Default)]
struct Table(
    Arc<Mutex<HashMap<ConnKey, Conn>>>,
    Arc<std::sync::atomic::AtomicUsize>,
);

impl ConnTableOps for Table {
    fn get(&self, key: &ConnKey) -> Option<Conn> {
        self.0.lock().unwrap().get(key).copied()
    }
    fn insert(&mut self, key: ConnKey, conn: Conn, mode: Insert) -> Result<(), String> {
        let mut t = self.0.lock().unwrap();
        match (mode, t.contains_key(&key)) {
            (Insert::New, true) => Err("exists".into()),
            (Insert::Existing, false) => Err("gone".into()),
            _ => {
                t.insert(key, conn);
                Ok(())
            }
        }
    }
    fn remove(&mut self, key: &ConnKey) {
        self.0.lock().unwrap().remove(key);
    }
    fn entries(&self) -> Vec<(ConnKey, Conn)> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }
}

/// The per-request maps: the agent's watches and the datapath's response counts.
#[derive(Clone, Default)]
struct Follow(Arc<Mutex<FollowMaps>>);

#[derive(Default)]
struct FollowMaps {
    watches: HashMap<ConnKey, Watch>,
    responses: HashMap<ConnKey, Responses>,
}

impl FollowTables for Follow {
    fn set_watch(&mut self, key: ConnKey, watch: Watch) -> Result<(), String> {
        self.0.lock().unwrap().watches.insert(key, watch);
        Ok(())
    }
    fn watch(&self, key: &ConnKey) -> Option<Watch> {
        self.0.lock().unwrap().watches.get(key).copied()
    }
    fn remove_watch(&mut self, key: &ConnKey) {
        self.0.lock().unwrap().watches.remove(key);
    }
    fn start_responses(&mut self, key: ConnKey, first_seq: u32) -> Result<(), String> {
        let start = Responses {
            next_head: first_seq,
            ..Responses::default()
        };
        self.0.lock().unwrap().responses.insert(key, start);
        Ok(())
    }
    fn responses(&self, key: &ConnKey) -> Option<Responses> {
        self.0.lock().unwrap().responses.get(key).copied()
    }
    fn remove_responses(&mut self, key: &ConnKey) {
        self.0.lock().unwrap().responses.remove(key);
    }
}

impl Follow {
    /// The datapath saw a complete response of `len` bytes on `key`.
    fn responded(&self, key: &ConnKey, len: u32) {
        let mut maps = self.0.lock().unwrap();
        let r = maps.responses.get_mut(key).expect("responses counted");
        r.next_head = r.next_head.wrapping_add(len);
        r.count += 1;
    }
}

#[derive(Clone, Default)]
struct Sent(Arc<Mutex<Vec<Vec<u8>>>>);

impl PacketSink for Sent {
    fn send(&self, packet: &[u8]) -> Result<(), InjectError> {
        self.0.lock().unwrap().push(packet.to_vec());
        Ok(())
    }
}

impl Sent {
    /// Every packet injected so far, parsed, after checking both checksums are whole.
    fn take(&self) -> Vec<TcpPacketBuilder> {
        let packets = std::mem::take(&mut *self.0.lock().unwrap());
        packets
            .iter()
            .map(|p| {
                let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
                assert!(ip.verify_checksum(), "IPv4 checksum of an injected packet");
                let tcp = TcpSegment::new_checked(ip.payload()).unwrap();
                assert!(
                    tcp.verify_checksum(ip.src_addr(), ip.dst_addr()),
                    "TCP checksum of an injected packet"
                );
                TcpPacketBuilder::parse(p).unwrap()
            })
            .collect()
    }
}

/// The local TCP: connection states by (local, remote), and whether the server listens.
struct LocalTcp {
    states: HashMap<(SocketAddrV4, SocketAddrV4), u8>,
    /// Unread and unacknowledged bytes, where not zero.
    queues: HashMap<(SocketAddrV4, SocketAddrV4), (u32, u32)>,
    listening: bool,
    /// Questions about one connection (state, queues) asked so far.
    questions: u32,
}

#[derive(Clone)]
struct Tcp(Arc<Mutex<LocalTcp>>);

impl Default for Tcp {
    fn default() -> Self {
        Tcp(Arc::new(Mutex::new(LocalTcp {
            states: HashMap::new(),
            queues: HashMap::new(),
            listening: true,
            questions: 0,
        })))
    }
}

impl Tcp {
    /// The local TCP's state of `key`'s connection, if it has one.
    fn state(&self, key: &ConnKey) -> Option<u8> {
        self.0
            .lock()
            .unwrap()
            .states
            .get(&(key.local(), key.client()))
            .copied()
    }
    fn questions(&self) -> u32 {
        self.0.lock().unwrap().questions
    }
    fn set(&self, key: &ConnKey, state: u8) {
        self.0
            .lock()
            .unwrap()
            .states
            .insert((key.local(), key.client()), state);
    }
}

impl TcpStates for Tcp {
    fn tcp_state(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<Option<u8>, SockDiagError> {
        let mut tcp = self.0.lock().unwrap();
        tcp.questions += 1;
        Ok(tcp.states.get(&(local, remote)).copied())
    }
    fn established(&mut self, addr: Ipv4Addr, ports: &[u16]) -> Result<u32, SockDiagError> {
        let tcp = self.0.lock().unwrap();
        let established = tcp.states.iter().filter(|((local, _), state)| {
            **state == tcp_state::ESTABLISHED
                && *local.ip() == addr
                && ports.contains(&local.port())
        });
        Ok(established.count() as u32)
    }
    fn listening(&mut self, _addr: Ipv4Addr, _ports: &[u16]) -> Result<bool, SockDiagError> {
        Ok(self.0.lock().unwrap().listening)
    }
    fn queues(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<Option<TcpQueues>, SockDiagError> {
        let mut tcp = self.0.lock().unwrap();
        tcp.questions += 1;
        let (unread, unacked) = tcp.queues.get(&(local, remote)).copied().unwrap_or((0, 0));
        Ok(tcp.states.get(&(local, remote)).map(|&state| TcpQueues {
            state,
            unread,
            unacked,
        }))
    }
    /// A question first, as sock_diag's destroy looks the socket's cookie up.
    fn destroy(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<bool, SockDiagError> {
        let mut tcp = self.0.lock().unwrap();
        tcp.questions += 1;
        Ok(tcp.states.remove(&(local, remote)).is_some())
    }
    fn destroy_time_wait(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<bool, SockDiagError> {
        let mut tcp = self.0.lock().unwrap();
        tcp.questions += 1;
        if tcp.states.get(&(local, remote)) != Some(&tcp_state::TIME_WAIT) {
            return Ok(false);
        }
        Ok(tcp.states.remove(&(local, remote)).is_some())
    }
    fn destroy_by_cookie(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        _cookie: u64,
    ) -> Result<bool, SockDiagError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .states
            .remove(&(local, remote))
            .is_some())
    }
}

/// The datapath: its configuration and bounded-load view as last written, its counters, and
/// until when the agent said it is alive.
#[derive(Clone, Default)]
struct Written(Arc<Mutex<DatapathState>>);

#[derive(Default)]
struct DatapathState {
    config: Option<baton_bpf::NodeConfig>,
    changes: ServiceChanges,
    alive_until_ns: u64,
    bounded: Option<Box<baton_bpf::BoundedView>>,
    bounded_decided: baton_bpf::BoundedCounts,
}

impl DatapathControl for Written {
    fn write(&mut self, config: &baton_bpf::NodeConfig) -> Result<(), String> {
        self.0.lock().unwrap().config = Some(*config);
        Ok(())
    }
    fn service_changes(&self) -> Result<ServiceChanges, String> {
        Ok(self.0.lock().unwrap().changes)
    }
    fn write_bounded(&mut self, view: &baton_bpf::BoundedView) -> Result<(), String> {
        self.0.lock().unwrap().bounded = Some(Box::new(*view));
        Ok(())
    }
    fn bounded_decided(&self) -> Result<baton_bpf::BoundedCounts, String> {
        Ok(self.0.lock().unwrap().bounded_decided)
    }
    fn heartbeat(&self, alive_until_ns: u64) {
        self.0.lock().unwrap().alive_until_ns = alive_until_ns;
    }
    fn stand_down(&self) {
        self.0.lock().unwrap().alive_until_ns = 0;
    }
}

impl Written {
    /// Whether the datapath counts the agent alive now.
    fn agent_alive(&self) -> bool {
        self.0.lock().unwrap().alive_until_ns > super::monotonic_ns()
    }
    fn get(&self) -> baton_bpf::NodeConfig {
        self.0.lock().unwrap().config.expect("written at start")
    }
    /// The datapath counts `n` more connections opened.
    fn opened(&self, n: u64) {
        self.0.lock().unwrap().changes.opened += n;
    }
    /// The datapath counts a listener closing.
    fn listener_closed(&self) {
        self.0.lock().unwrap().changes.listeners_closed += 1;
    }
    /// The bounded-load view as last written.
    fn bounded(&self) -> Box<baton_bpf::BoundedView> {
        self.0
            .lock()
            .unwrap()
            .bounded
            .clone()
            .expect("a bounded-load view written")
    }
    /// The datapath decides `n` more connections for member `member` by bounded loads.
    fn decided_bounded(&self, member: usize, n: u64) {
        self.0.lock().unwrap().bounded_decided.decided[member] += n;
    }
}

struct Node {
    engine: Engine,
    table: Table,
    follow: Follow,
    sent: Sent,
    tcp: Tcp,
    written: Written,
    to_peer: mpsc::Receiver<(Instant, Message)>,
    metrics: Metrics,
    /// The engine's clock: tests move it forward by hand.
    now: Instant,
}

impl Node {
    fn datapath(&mut self, event: Event) {
        self.engine.on_datapath(event, self.now);
    }
    fn hear(&mut self, message: Message) {
        let peer = 1 - self.engine.cluster.me;
        self.engine
            .on_mesh(MeshEvent::Message { peer, message }, self.now);
    }
    fn mesh(&mut self, event: MeshEvent) {
        self.engine.on_mesh(event, self.now);
    }
    /// Moves the clock on by `by` and runs what is due.
    fn wait(&mut self, by: Duration) {
        self.now += by;
        self.engine.on_timers(self.now);
    }
    fn sent_to_peer(&mut self) -> Option<Message> {
        self.to_peer.try_recv().ok().map(|(_, m)| m)
    }
    /// The loads reported to the peer in the heartbeats sent so far.
    fn reported_loads(&mut self) -> Vec<u32> {
        std::iter::from_fn(|| self.sent_to_peer())
            .filter_map(|m| match m {
                Message::Heartbeat { load, .. } => Some(load),
                _ => None,
            })
            .collect()
    }

    /// The next message to the peer that is not a heartbeat.
    fn next_to_peer(&mut self) -> Option<Message> {
        loop {
            match self.sent_to_peer()? {
                // Periodic and state reports, not part of a connection's exchange.
                Message::Heartbeat { .. }
                | Message::NodeStatus { .. }
                | Message::Capabilities { .. } => continue,
                m => return Some(m),
            }
        }
    }
}

/// Node `me`'s configuration. Connections are not followed past their first request unless
/// `extra` says `per_request = true` (the tests of first placement see it alone).
fn config_text(me: usize, policy: PolicyKind, extra: &str) -> String {
    let name = format!("n{}", me + 1);
    let extra = if extra.contains("per_request") {
        extra.to_string()
    } else {
        format!("per_request = false\n{extra}")
    };
    let address = [N1, N2][me];
    format!(
        r#"
[node]
name = "{name}"
address = "{address}"
interface = "eth0"
[cluster]
key = "0123456789abcdef0123456789abcdef"
members = [{{ name = "n1", address = "198.18.0.1" }}, {{ name = "n2", address = "198.18.0.2" }}]
[policy]
kind = "{policy}"
{extra}
[limits]
hold_ms = 40
handoff_timeout_ms = 40
dispatch_timeout_ms = 30
close_linger_ms = 10
heartbeat_ms = 100
timer_slack_ms = 0
"#
    )
}

/// Node `me` (0 = n1, 1 = n2) of a two-node cluster whose peer is up.
fn node(me: usize, policy: PolicyKind) -> Node {
    node_with(me, policy, "")
}

fn node_with(me: usize, policy: PolicyKind, extra: &str) -> Node {
    node_from(
        me,
        NodeConfig::from_toml(&config_text(me, policy, extra)).unwrap(),
    )
}

fn node_from(me: usize, config: NodeConfig) -> Node {
    let (table, sent, tcp, written, follow) = (
        Table::default(),
        Sent::default(),
        Tcp::default(),
        Written::default(),
        Follow::default(),
    );
    let (tx, to_peer) = mpsc::channel(64);
    let mut outbound = vec![None, None];
    outbound[1 - me] = Some(tx);
    let metrics = Metrics::default();
    let kernel = Kernel {
        conns: Box::new(table.clone()),
        follow: Box::new(follow.clone()),
        datapath: Box::new(written.clone()),
        inject: Box::new(sent.clone()),
        tcp: Box::new(tcp.clone()),
    };
    let now = Instant::now();
    let engine = Engine::new(
        config,
        kernel,
        MeshSender::new(outbound),
        metrics.clone(),
        now,
    );
    let mut node = Node {
        engine,
        table,
        follow,
        sent,
        tcp,
        written,
        to_peer,
        metrics,
        now,
    };
    node.mesh(MeshEvent::PeerUp { peer: 1 - me });
    node.hear(Message::Heartbeat {
        load: 0,
        sent_at_ms: 0,
        serving: true,
    });
    node
}

fn key_at(node: Ipv4Addr) -> ConnKey {
    key_at_port(node, CLIENT_PORT)
}

/// The client's connection from `port` to `node`.
fn key_at_port(node: Ipv4Addr, port: u16) -> ConnKey {
    ConnKey::new(SocketAddrV4::new(CLIENT, port), SocketAddrV4::new(node, 80))
}

fn options(list: &[TcpOption]) -> ([u8; 40], u8) {
    let mut bytes = Vec::new();
    emit_options(list, &mut bytes);
    let mut out = [0u8; 40];
    out[..bytes.len()].copy_from_slice(&bytes);
    (out, bytes.len() as u8)
}

fn syn_options(tsval: u32, tsecr: u32) -> Vec<TcpOption> {
    // MSS, SACK permitted, timestamps, window scale: what Linux puts in a SYN.
    SynOptions {
        mss: Some(1460),
        window_scale: Some(7),
        sack_permitted: true,
        timestamps: Some((tsval, tsecr)),
    }
    .to_options()
}

/// The FE's entry for a connection whose handshake the datapath is holding (the client asked for
/// ECN, and we agreed).
fn held_entry() -> Conn {
    let (syn_opts, syn_opts_len) = options(&syn_options(100, 0));
    let (synack_opts, synack_opts_len) = options(&syn_options(FE_TSVAL, 100));
    Conn {
        role: ConnRole::Fe as u8,
        state: ConnState::FeHold as u8,
        client_isn: CLIENT_ISN,
        local_isn: FE_ISN,
        synack_tsval: FE_TSVAL,
        syn_window: 64240,
        syn_tcp_flags: (TcpFlags::SYN | TcpFlags::ECE | TcpFlags::CWR).bits(),
        synack_tcp_flags: (TcpFlags::SYN | TcpFlags::ACK | TcpFlags::ECE).bits(),
        syn_opts,
        syn_opts_len,
        synack_opts,
        synack_opts_len,
        created_ns: super::monotonic_ns(),
        last_seen_ns: super::monotonic_ns(),
        ..Conn::default()
    }
}

fn client_segment(to: Ipv4Addr, offset: u32, flags: TcpFlags, payload: &[u8]) -> TcpPacketBuilder {
    let mut p = TcpPacketBuilder::new(CLIENT, CLIENT_PORT, to, 80);
    p.seq = CLIENT_ISN.wrapping_add(1 + offset);
    p.ack = FE_ISN.wrapping_add(1);
    p.flags = flags;
    p.window = 502;
    p.options = vec![
        TcpOption::NoOp,
        TcpOption::NoOp,
        TcpOption::Timestamps {
            tsval: 101,
            tsecr: FE_TSVAL,
        },
    ];
    p.payload = payload.to_vec();
    p
}

fn event(kind: EventKind, key: ConnKey, packet: &TcpPacketBuilder) -> Event {
    let bytes = packet.build();
    Event {
        kind,
        key,
        pkt_len: bytes.len() as u32,
        ts_ns: 0,
        detail: 0,
        peer: Ipv4Addr::UNSPECIFIED,
        sock_cookie: 0,
        handoff_id: 0,
        packet: bytes,
    }
}

/// The datapath's close notice of `key`, naming the server socket.
fn closed(key: ConnKey, code: CloseCode) -> Event {
    Event {
        detail: code as u32,
        sock_cookie: 0x1234_5678_9abc,
        ..notice(EventKind::Closed, key)
    }
}

fn notice(kind: EventKind, key: ConnKey) -> Event {
    Event {
        kind,
        key,
        pkt_len: 0,
        ts_ns: 0,
        detail: 0,
        peer: Ipv4Addr::UNSPECIFIED,
        sock_cookie: 0,
        handoff_id: 0,
        packet: Vec::new(),
    }
}

/// A target the hash policy gives to node `want` (0-based) of n1, n2.
fn target_for(want: usize) -> String {
    baton_policy::Hash::target_for("/f/1k", &["n1", "n2"], want).unwrap()
}

/// A target that `bounded-hash` gives to node `want` of n1 and n2, both idle.
fn bounded_target_for(want: usize) -> String {
    (0..)
        .map(|i| format!("/f/1k?{i}"))
        .find(|target| baton_bpf::cases::bounded_choice(target, &[0, 0]) == want)
        .unwrap()
}

fn request(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: baton\r\n\r\n").into_bytes()
}

/// `node` holds a connection to `address` (the datapath absorbed the bare ACK) and gets `head`.
fn hold_at(node: &mut Node, address: Ipv4Addr, head: &[u8]) -> ConnKey {
    hold_from(node, CLIENT_PORT, address, head)
}

/// The same from another client port.
fn hold_from(node: &mut Node, port: u16, address: Ipv4Addr, head: &[u8]) -> ConnKey {
    let key = ConnKey::new(
        SocketAddrV4::new(CLIENT, port),
        SocketAddrV4::new(address, 80),
    );
    node.table.0.lock().unwrap().insert(key, held_entry());
    let mut data = client_segment(address, 0, TcpFlags::ACK | TcpFlags::PSH, head);
    data.src_port = port;
    node.datapath(event(EventKind::HeldPacket, key, &data));
    key
}

fn hold(n1: &mut Node, head: &[u8]) -> ConnKey {
    hold_at(n1, N1, head)
}

fn fallbacks(m: &Metrics, reason: &str) -> u64 {
    m.fallbacks.get(reason)
}

fn refused(m: &Metrics, reason: &str) -> u64 {
    m.refused.get(reason)
}

#[test]
fn a_local_decision_replays_the_request_into_the_local_tcp() {
    let mut n1 = node(0, PolicyKind::RoundRobin);
    n1.engine.cluster.peers[1].serving = false; // round-robin: only n1 is left to choose
    let head = request("/f/1k");
    let key = hold(&mut n1, &head);
    assert!(
        n1.table.get(&key).is_none(),
        "a local connection leaves the table"
    );
    let sent = n1.sent.take();
    assert_eq!(sent.len(), 1, "one segment: {sent:?}");
    let data = &sent[0];
    assert_eq!(
        (data.dst, data.seq, data.ack),
        (N1, CLIENT_ISN.wrapping_add(1), FE_ISN + 1)
    );
    assert!(
        data.flags.contains(TcpFlags::ACK),
        "the data segment completes the handshake itself"
    );
    assert_eq!(data.payload, head);
    assert_eq!(n1.metrics.local.get(), 1);
    assert!(n1.next_to_peer().is_none(), "nothing goes to the peer");
}

#[test]
fn a_remote_decision_forwards_at_once_and_offers_the_request() {
    let mut n1 = node(0, PolicyKind::Hash);
    let head = request(&target_for(1));
    let key = hold(&mut n1, &head);
    let entry = n1.table.get(&key).unwrap();
    assert_eq!(
        (entry.state(), entry.peer_addr),
        (Some(ConnState::FeForward), N2.octets()),
        "the client's packets follow the offer"
    );
    assert!(n1.sent.take().is_empty(), "nothing is released locally");
    assert_eq!(
        (
            n1.metrics.hold_duration.count(),
            n1.metrics.decision_duration.count()
        ),
        (1, 1),
        "held and decided once"
    );
    let Some(Message::HandoffRequest(r)) = n1.next_to_peer() else {
        panic!("no handoff request")
    };
    assert_eq!((r.client, r.fe_service), (key.client(), key.local()));
    assert_eq!(
        (r.fe_isn, r.fe_tsval),
        (FE_ISN, FE_TSVAL),
        "fe_tsval is the TSval the client echoed"
    );
    assert_eq!(r.data, head, "the request travels with the offer");
    assert!(!r.fin && r.fe_ecn);
    let syn = TcpPacketBuilder::parse(&r.syn).unwrap();
    assert_eq!(
        (syn.seq, syn.flags, syn.window),
        (
            CLIENT_ISN,
            TcpFlags::SYN | TcpFlags::ECE | TcpFlags::CWR,
            64240
        ),
        "the SYN asks for ECN as the client's did"
    );
    assert_eq!(
        SynOptions::from_options(&syn.options),
        SynOptions::from_options(&syn_options(100, 0))
    );
    let segment = TcpPacketBuilder::parse(&r.segment).unwrap();
    assert_eq!(
        (segment.seq, segment.ack, segment.payload.len()),
        (CLIENT_ISN.wrapping_add(1), FE_ISN + 1, 0)
    );

    n1.hear(Message::HandoffAccepted { id: r.id });
    let sent = n1.sent.take();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        (sent[0].dst, sent[0].flags, sent[0].seq),
        (N1, TcpFlags::RST, CLIENT_ISN.wrapping_add(1)),
        "our half-open side is reset"
    );
    assert!(
        sent[0].options.is_empty(),
        "a RST without timestamps skips PAWS"
    );
    assert_eq!(n1.metrics.handoffs_out.get(), 1);

    // A late copy of a held segment follows the connection to the BE.
    let late = client_segment(N1, 0, TcpFlags::ACK | TcpFlags::PSH, &head);
    n1.datapath(event(EventKind::HeldPacket, key, &late));
    assert_eq!(n1.sent.take()[0].dst, N2);

    // The BE reports the close: nothing is in flight, the entry goes after the linger.
    assert!(!n1.engine.drained());
    n1.hear(Message::ConnClosed { id: r.id });
    assert!(n1.engine.drained());
    assert!(n1.table.get(&key).is_some());
    n1.wait(LINGER);
    assert!(n1.table.get(&key).is_none());
}

#[test]
fn refused_and_unanswered_offers_are_served_locally() {
    let mut n1 = node(0, PolicyKind::Hash);
    let head = request(&target_for(1));
    let key = hold(&mut n1, &head);
    let Some(Message::HandoffRequest(r)) = n1.next_to_peer() else {
        panic!()
    };
    // A refusal from the wrong peer is ignored; from the right one it means local service.
    n1.engine.on_mesh(
        MeshEvent::Message {
            peer: 0,
            message: Message::HandoffRefused {
                id: r.id,
                reason: RefuseReason::Collision,
            },
        },
        n1.now,
    );
    assert!(n1.sent.take().is_empty());
    n1.hear(Message::HandoffRefused {
        id: r.id,
        reason: RefuseReason::Collision,
    });
    let sent = n1.sent.take();
    assert_eq!((sent.len(), &sent[0].payload), (1, &head));
    assert!(n1.table.get(&key).is_none(), "forwarding stops");
    assert_eq!(fallbacks(&n1.metrics, "refused_collision"), 1);

    // No answer within handoff_timeout_ms: served here, and the peer is told to drop its side.
    let mut n1 = node(0, PolicyKind::Hash);
    hold(&mut n1, &head);
    let Some(Message::HandoffRequest(r)) = n1.next_to_peer() else {
        panic!()
    };
    n1.wait(HANDOFF_TIMEOUT / 2);
    assert!(
        n1.sent.take().is_empty(),
        "the peer may still be going live"
    );
    n1.wait(HANDOFF_TIMEOUT / 2);
    assert!(matches!(n1.next_to_peer(), Some(Message::HandoffAbort { id }) if id == r.id));
    assert_eq!(n1.sent.take()[0].payload, head);
    assert_eq!(fallbacks(&n1.metrics, "timeout"), 1);
    // Too late: the answer gets another abort, nothing else happens.
    n1.hear(Message::HandoffAccepted { id: r.id });
    assert!(matches!(
        n1.next_to_peer(),
        Some(Message::HandoffAbort { .. })
    ));
    assert!(n1.sent.take().is_empty());

    // A head that does not complete in time: what arrived is replayed, the client sends the rest.
    let mut n1 = node(0, PolicyKind::Hash);
    let partial = &head[..10];
    hold(&mut n1, partial);
    n1.wait(HOLD);
    assert_eq!(n1.sent.take()[0].payload, partial);
    assert_eq!(fallbacks(&n1.metrics, "hold_timeout"), 1);
}

#[test]
fn a_peer_that_is_down_or_has_no_server_is_not_chosen() {
    let head = request(&target_for(1));
    let mut n1 = node(0, PolicyKind::Hash);
    n1.mesh(MeshEvent::PeerDown { peer: 1 });
    hold(&mut n1, &head);
    assert!(n1.next_to_peer().is_none());
    assert_eq!(n1.sent.take().len(), 1, "served here");
    assert_eq!(n1.written.get().nodes[1].eligible, 0, "nor by the datapath");

    // A refusal for want of a listener: not chosen again until its heartbeat says it listens.
    let mut n1 = node(0, PolicyKind::Hash);
    hold(&mut n1, &head);
    let Some(Message::HandoffRequest(r)) = n1.next_to_peer() else {
        panic!()
    };
    n1.hear(Message::HandoffRefused {
        id: r.id,
        reason: RefuseReason::NoListener,
    });
    assert_eq!(fallbacks(&n1.metrics, "refused_no_listener"), 1);
    assert_eq!(n1.written.get().nodes[1].eligible, 0);
    n1.sent.take();
    let key = hold_from(&mut n1, CLIENT_PORT + 1, N1, &head);
    assert!(n1.next_to_peer().is_none(), "not offered again");
    assert!(n1.table.get(&key).is_none());
    n1.hear(Message::Heartbeat {
        load: 0,
        sent_at_ms: 1,
        serving: true,
    });
    assert_eq!(n1.written.get().nodes[1].eligible, 1, "back");
}

#[test]
fn the_datapath_runs_the_hash_policy_only_where_it_decides_alike() {
    let n1 = node(0, PolicyKind::Hash);
    let config = n1.written.get();
    assert_eq!(config.decide, DecideMode::Hash as u8);
    assert_eq!(
        (config.self_index, config.nnodes, config.distribute),
        (0, 2, 1)
    );
    assert_eq!(
        config.nodes[1].hash_seed,
        baton_policy::rendezvous_seed("n2")
    );
    assert_eq!(
        node(0, PolicyKind::RoundRobin).written.get().decide,
        DecideMode::RoundRobin as u8
    );
    for (policy, extra) in [
        (PolicyKind::LeastConn, ""),
        (PolicyKind::RoundRobin, "affinity_cookie = \"SRV\""),
        (PolicyKind::Hash, "affinity_cookie = \"SRV\""),
        (
            PolicyKind::Hash,
            "[[policy.rules]]\npath_prefix = \"/s/\"\ngroup = [\"n2\"]",
        ),
    ] {
        let n1 = node_with(0, policy, extra);
        assert_eq!(
            n1.written.get().decide,
            DecideMode::Agent as u8,
            "{policy} {extra}"
        );
    }
    let n1 = node(0, PolicyKind::Local);
    assert_eq!(n1.written.get().distribute, 0);
}

#[test]
fn the_datapath_runs_bounded_loads_by_the_agents_ring_and_loads() {
    let mut n1 = node(0, PolicyKind::BoundedHash);
    let config = n1.written.get();
    assert_eq!(
        (config.decide, config.hash_kind),
        (DecideMode::Hash as u8, baton_bpf::HashKind::Bounded as u8)
    );
    let view = n1.written.bounded();
    let ring = baton_policy::BoundedHash::ring(&["n1", "n2"]);
    assert_eq!(view.ring_len as usize, ring.len());
    assert!(
        ring.iter()
            .zip(view.ring.iter())
            .all(|(&(point, first), p)| {
                p.point == point
                    && (p.order & 0xf) as usize == first
                    && (p.order >> 4) as usize == 1 - first
            })
    );
    assert_eq!(view.factor, 125);
    assert_eq!(view.nodes[1].load, 0);

    // A connection the agent assigns to the peer counts there until its next report.
    hold(&mut n1, &request(&bounded_target_for(1)));
    assert!(matches!(
        n1.next_to_peer(),
        Some(Message::HandoffRequest(_))
    ));
    n1.wait(Duration::from_millis(100));
    assert_eq!(n1.written.bounded().nodes[1].assigned, 1);

    // The peer's report, and what the datapath decided since the last view: the next view has
    // the one and counts on from the other.
    n1.hear(Message::Heartbeat {
        load: 7,
        sent_at_ms: 1,
        serving: true,
    });
    n1.written.decided_bounded(1, 3);
    n1.wait(Duration::from_millis(100));
    let view = n1.written.bounded();
    assert_eq!(
        (
            view.nodes[1].load,
            view.nodes[1].assigned,
            view.nodes[1].counted_from
        ),
        (7, 0, 3)
    );
    assert_eq!(view.nodes[0].counted_from, 0);

    // Followed requests: the datapath decides first requests and lets later ones stay, by the
    // same bounded loads.
    let n1 = node_with(0, PolicyKind::BoundedHash, "per_request = true");
    let config = n1.written.get();
    assert_eq!(
        (config.decide, config.hash_kind),
        (
            DecideMode::HashStays as u8,
            baton_bpf::HashKind::Bounded as u8
        )
    );
}

/// What n1 sends n2 for the held connection above.
fn handoff_request(id: u64) -> HandoffRequest {
    let mut syn = TcpPacketBuilder::new(CLIENT, CLIENT_PORT, N1, 80);
    syn.seq = CLIENT_ISN;
    syn.flags = TcpFlags::SYN;
    syn.options = syn_options(100, 0);
    let (opts, len) = options(&syn_options(FE_TSVAL, 100));
    HandoffRequest {
        id,
        client: SocketAddrV4::new(CLIENT, CLIENT_PORT),
        fe_service: SocketAddrV4::new(N1, 80),
        fe_isn: FE_ISN,
        fe_tsval: FE_TSVAL,
        fe_synack_options: opts[..usize::from(len)].to_vec(),
        fe_ecn: false,
        syn: syn.build(),
        segment: client_segment(N1, 0, TcpFlags::ACK, b"").build(),
        data: request("/f/1k"),
        fin: false,
        follow: false,
    }
}

fn be_answer(flags: TcpFlags, options: Vec<TcpOption>) -> Event {
    let mut p = TcpPacketBuilder::new(N2, 80, CLIENT, CLIENT_PORT);
    p.seq = BE_ISN;
    p.ack = CLIENT_ISN.wrapping_add(1);
    p.flags = flags;
    p.options = options;
    event(EventKind::BeSynAck, key_at(N2), &p)
}

fn be_synack() -> Event {
    be_answer(TcpFlags::SYN | TcpFlags::ACK, syn_options(BE_TSVAL, 100))
}

/// n2 with the offer of [`handoff_request`] (id `id`) replayed up to its SYN.
fn offered(id: u64) -> Node {
    let mut n2 = node(1, PolicyKind::Hash);
    n2.hear(Message::HandoffRequest(handoff_request(id)));
    n2
}

/// n2 with handoff `id` from n1 live (replayed, its TCP spoke, Accepted sent and read), and the
/// connection's key there.
fn live(id: u64) -> (Node, ConnKey) {
    let mut n2 = offered(id);
    let key = key_at(N2);
    n2.datapath(be_synack());
    n2.datapath(notice(EventKind::BeLive, key));
    n2.next_to_peer();
    (n2, key)
}

#[test]
fn the_be_replays_syn_then_request_and_accepts_once_live() {
    let mut n2 = offered(7);
    let key = key_at(N2);
    let entry = n2.table.get(&key).expect("a BE entry before the replay");
    assert_eq!(
        (entry.role(), entry.state(), entry.peer_addr),
        (Some(ConnRole::Be), Some(ConnState::BeSynSent), N1.octets())
    );
    let sent = n2.sent.take();
    assert_eq!(
        (sent.len(), sent[0].dst, sent[0].flags, sent[0].seq),
        (1, N2, TcpFlags::SYN, CLIENT_ISN),
        "the SYN, readdressed to this node"
    );

    n2.datapath(be_synack());
    let entry = n2.table.get(&key).unwrap();
    assert_eq!(entry.state(), Some(ConnState::BeReplayed));
    assert_eq!(
        (entry.seq_delta, entry.ts_delta),
        (BE_ISN.wrapping_sub(FE_ISN), BE_TSVAL.wrapping_sub(FE_TSVAL))
    );
    assert!(entry.live_deadline_ns > super::monotonic_ns());
    let sent = n2.sent.take();
    assert_eq!(sent.len(), 1, "one pass: the request goes in with the ACK");
    let data = &sent[0];
    assert_eq!(
        (data.dst, data.seq, data.ack, data.flags),
        (
            N2,
            CLIENT_ISN.wrapping_add(1),
            BE_ISN + 1,
            TcpFlags::ACK | TcpFlags::PSH
        ),
        "it acknowledges our own SYN-ACK"
    );
    assert_eq!(data.payload, request("/f/1k"));
    let echoed = data.options.iter().find_map(|o| match o {
        TcpOption::Timestamps { tsecr, .. } => Some(*tsecr),
        _ => None,
    });
    assert_eq!(echoed, Some(BE_TSVAL), "and echoes our own SYN-ACK's TSval");
    assert!(
        n2.next_to_peer().is_none(),
        "not accepted before it is live"
    );

    // Our TCP asks again (the request did not take): it is replayed again.
    n2.datapath(be_synack());
    assert_eq!(n2.sent.take().len(), 1);

    n2.datapath(notice(EventKind::BeLive, key));
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::HandoffAccepted { id: 7 })
    ));
    assert_eq!(n2.metrics.handoffs_in.get(), 1);
    // Its deadline passes: nothing changes for a live connection.
    n2.wait(HANDOFF_TIMEOUT);
    assert!(n2.table.get(&key).is_some() && n2.next_to_peer().is_none());
}

#[test]
fn client_data_forwarded_before_the_replay_joins_the_request() {
    let mut n2 = offered(9);
    let key = key_at(N2);
    n2.sent.take();
    let head = request("/f/1k");
    let mut body = client_segment(N2, head.len() as u32, TcpFlags::ACK, b"more bytes");
    body.ack = FE_ISN + 1;
    n2.datapath(event(EventKind::HeldPacket, key, &body));
    assert!(n2.sent.take().is_empty(), "held until the replay");
    n2.datapath(be_synack());
    let sent = n2.sent.take();
    let replayed: Vec<u8> = sent.iter().flat_map(|s| s.payload.clone()).collect();
    assert_eq!(replayed, [head.as_slice(), b"more bytes"].concat());
    // One held just before the replay and read just after goes in on its own, translated.
    n2.datapath(event(EventKind::HeldPacket, key, &body));
    let late = n2.sent.take();
    assert_eq!((late.len(), late[0].ack), (1, BE_ISN + 1));
}

#[test]
fn the_be_refuses_what_it_cannot_take_and_cleans_up() {
    let key = key_at(N2);
    // Not live by the deadline: refused, reset, forgotten, and the datapath stops it too.
    let mut n2 = offered(1);
    n2.datapath(be_synack());
    n2.sent.take();
    n2.wait(HANDOFF_TIMEOUT / 2 + Duration::from_millis(10));
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::HandoffRefused {
            id: 1,
            reason: RefuseReason::Timeout
        })
    ));
    assert!(n2.table.get(&key).is_none());
    assert!(
        n2.sent
            .take()
            .iter()
            .any(|p| p.flags == TcpFlags::RST && p.dst == N2)
    );

    // Options that differ from the FE's: refused at once.
    let mut n2 = offered(2);
    let mut other = syn_options(BE_TSVAL, 100);
    other[4] = TcpOption::WindowScale(9);
    n2.datapath(be_answer(TcpFlags::SYN | TcpFlags::ACK, other));
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::HandoffRefused {
            id: 2,
            reason: RefuseReason::OptionMismatch
        })
    ));
    assert!(n2.table.get(&key).is_none());

    // ECN agreed by our TCP but not by the FE's: refused the same way.
    let mut n2 = offered(3);
    n2.datapath(be_answer(
        TcpFlags::SYN | TcpFlags::ACK | TcpFlags::ECE,
        syn_options(BE_TSVAL, 100),
    ));
    assert_eq!(refused(&n2.metrics, "option_mismatch"), 1);

    // The SYN is answered by a RST: nothing listens here, and the heartbeats say so at once.
    let mut n2 = offered(4);
    n2.datapath(be_answer(TcpFlags::RST | TcpFlags::ACK, vec![]));
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::HandoffRefused {
            id: 4,
            reason: RefuseReason::NoListener
        })
    ));
    assert!(!n2.engine.cluster.serving());
    assert!(n2.table.get(&key).is_none());

    // Anything else answering the SYN means the tuple is in use here.
    let mut n2 = offered(5);
    n2.datapath(be_answer(TcpFlags::ACK, vec![]));
    assert_eq!(refused(&n2.metrics, "collision"), 1);

    // The tuple is in use by the local TCP: refused before anything is replayed.
    let mut n2 = node(1, PolicyKind::Hash);
    n2.tcp.set(&key, tcp_state::ESTABLISHED);
    n2.hear(Message::HandoffRequest(handoff_request(6)));
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::HandoffRefused {
            id: 6,
            reason: RefuseReason::Collision
        })
    ));
    assert!(n2.sent.take().is_empty() && n2.table.get(&key).is_none());

    // The FE withdraws its offer: whatever the phase, our side is reset and forgotten.
    let mut n2 = offered(8);
    n2.datapath(be_synack());
    n2.datapath(notice(EventKind::BeLive, key));
    n2.sent.take();
    n2.hear(Message::HandoffAbort { id: 8 });
    assert!(n2.table.get(&key).is_none());
    assert_eq!(n2.sent.take()[0].flags, TcpFlags::RST);
    assert!(n2.engine.drained());
}

/// The close notice carries our TCP's own word: over at once without a question to it, and only
/// a TIME_WAIT it names is ended.
#[test]
fn a_close_our_tcp_reported_is_over_without_a_question() {
    for (code, left) in [
        (CloseCode::Gone, None),
        (CloseCode::TimeWait, Some(tcp_state::TIME_WAIT)),
    ] {
        let (mut n2, key) = live(4);
        n2.tcp.0.lock().unwrap().states.clear();
        if let Some(state) = left {
            n2.tcp.set(&key, state);
        }
        let asked = n2.tcp.questions();
        n2.datapath(closed(key, code));
        assert!(
            matches!(n2.next_to_peer(), Some(Message::ConnClosed { id: 4 })),
            "{code:?}: the FE is told at once"
        );
        assert!(n2.table.get(&key).is_none(), "{code:?}: the entry goes");
        assert_eq!(
            n2.tcp.state(&key),
            None,
            "{code:?}: nothing left on the tuple"
        );
        assert_eq!(
            n2.tcp.questions(),
            asked,
            "{code:?}: no question to our TCP"
        );
        assert!(n2.engine.drained());
    }
}

/// A close notice our TCP was unsure of (the client's FIN raced the socket's close), or of a
/// code this build does not know: our TCP is asked, as after a linger.
#[test]
fn a_close_counts_only_once_the_local_tcp_agrees() {
    let mut n2 = offered(4);
    let key = key_at(N2);
    n2.datapath(be_synack());
    n2.datapath(notice(EventKind::BeLive, key));
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::HandoffAccepted { id: 4 })
    ));
    n2.tcp.set(&key, tcp_state::ESTABLISHED);

    // Still open after all: nothing is torn down.
    n2.datapath(closed(key, CloseCode::Unsure));
    n2.wait(LINGER);
    assert!(n2.table.get(&key).is_some());
    assert!(n2.next_to_peer().is_none());

    // A real close: the FE is told and the entry goes (the drain waits for it no more).
    n2.tcp.set(&key, tcp_state::TIME_WAIT);
    n2.datapath(notice(EventKind::Closed, key));
    assert!(n2.engine.drained());
    n2.wait(LINGER);
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::ConnClosed { id: 4 })
    ));
    assert!(n2.table.get(&key).is_none());
    assert!(n2.engine.drained());
    assert_eq!(
        n2.tcp.state(&key),
        None,
        "its TIME_WAIT is ended: it would only get in the way of the client's next connection"
    );
}

#[test]
fn a_closed_tuple_the_client_reuses_is_not_taken_for_the_old_connection() {
    let (mut n2, key) = live(4);
    n2.datapath(notice(EventKind::Closed, key));
    // Before the linger ends, the client connects to n2 itself on the same tuple: the datapath
    // starts a new entry (another ISN), and the local TCP has that new connection.
    let mut fresh = held_entry();
    fresh.state = ConnState::FeSyn as u8;
    fresh.client_isn = CLIENT_ISN.wrapping_add(99_999);
    n2.table.0.lock().unwrap().insert(key, fresh);
    n2.tcp.set(&key, tcp_state::ESTABLISHED);
    n2.wait(LINGER);
    assert!(
        matches!(n2.next_to_peer(), Some(Message::ConnClosed { id: 4 })),
        "the old connection is over"
    );
    assert_eq!(n2.metrics.handed_in_active.get(), 0);
    assert_eq!(
        n2.table.get(&key).map(|e| e.client_isn),
        Some(CLIENT_ISN.wrapping_add(99_999)),
        "the new connection's entry stays"
    );
    assert!(n2.engine.drained());
}

#[test]
fn a_late_message_about_an_earlier_connection_on_a_tuple_leaves_the_new_one_alone() {
    let mut n1 = node_with(0, PolicyKind::Hash, FOLLOW);
    let key = key_at(N1);
    let head = request(&target_for(0));
    // The datapath serves and follows here a first connection (handoff id 77), then the
    // client's next one on the same port (another ISN, id 78).
    let (old, new) = ((1 << 63) | 77, (1 << 63) | 78);
    for (isn, id) in [(CLIENT_ISN, old), (CLIENT_ISN.wrapping_add(99_999), new)] {
        let mut entry = held_entry();
        entry.client_isn = isn;
        let notice = served_here_by_datapath(&mut n1, key, entry, id, head.len());
        n1.datapath(notice);
    }
    n1.tcp.set(&key, tcp_state::ESTABLISHED);
    assert_eq!(n1.engine.be.handed_in(&key).map(|(_, p)| p), Some("live"));
    // A late word about the first connection (a withdrawal of it, as a move back here that
    // this node gave up sends itself) is about nothing this node still has.
    n1.mesh(MeshEvent::Message {
        peer: 0,
        message: Message::HandoffAbort { id: old },
    });
    assert_eq!(
        n1.engine.be.handed_in(&key).map(|(_, p)| p),
        Some("live"),
        "the second connection was ended for the first"
    );
    assert_eq!(n1.tcp.state(&key), Some(tcp_state::ESTABLISHED));
}

#[test]
fn a_new_connection_on_a_closed_handed_in_tuple_is_decided_at_once() {
    // A connection handed in from n1 closes; before its linger ends the client connects to n2
    // itself from the same port (its ports toward n1 and n2 are independent), and the datapath
    // holds that new connection as an FE. Its request must be decided now: taken for the old
    // connection's, it was ignored, and each retransmission with it, until the linger ended
    // (a stall of the client's RTO backoff, 1.7 s or 3.4 s in the cache bench).
    let (mut n2, key) = live(4);
    n2.tcp.set(&key, tcp_state::TIME_WAIT);
    n2.datapath(notice(EventKind::Closed, key));
    n2.sent.take();

    let isn = CLIENT_ISN.wrapping_add(99_999);
    let mut fresh = held_entry();
    fresh.client_isn = isn;
    n2.table.0.lock().unwrap().insert(key, fresh);
    n2.tcp.set(&key, tcp_state::SYN_RECV);
    let head = request(&target_for(1));
    let mut data = client_segment(N2, 0, TcpFlags::ACK | TcpFlags::PSH, &head);
    data.seq = isn.wrapping_add(1);
    n2.datapath(event(EventKind::HeldPacket, key, &data));

    let sent = n2.sent.take();
    assert_eq!(
        sent.len(),
        1,
        "the request goes into the local TCP: {sent:?}"
    );
    assert_eq!(
        (sent[0].dst, sent[0].seq, sent[0].payload.as_slice()),
        (N2, isn.wrapping_add(1), head.as_slice())
    );
    assert_eq!(n2.metrics.local.get(), 1);
    assert!(n2.table.get(&key).is_none(), "served here: the entry goes");
    n2.wait(LINGER);
    assert!(
        matches!(n2.next_to_peer(), Some(Message::ConnClosed { id: 4 })),
        "the old connection is still reported over"
    );
}

#[test]
fn an_offer_ends_the_time_wait_of_the_clients_own_earlier_connection() {
    // The client's own earlier connection to n2 from this port is over and in TIME_WAIT at n2.
    // The replayed SYN carries the client's timestamps toward n1, unrelated to those n2 saw:
    // our TCP's PAWS check would fail half the time and the TIME_WAIT answer with an ACK (a
    // refusal as a collision in ~2 % of the cache bench's handoffs). The offer ends it first.
    let mut n2 = node(1, PolicyKind::Hash);
    let key = key_at(N2);
    n2.tcp.set(&key, tcp_state::TIME_WAIT);
    n2.hear(Message::HandoffRequest(handoff_request(3)));
    assert_eq!(n2.tcp.state(&key), None, "the TIME_WAIT is ended");
    let sent = n2.sent.take();
    assert_eq!(
        (sent.len(), sent[0].flags, sent[0].seq),
        (1, TcpFlags::SYN, CLIENT_ISN),
        "and the SYN replayed"
    );
    n2.datapath(be_synack());
    n2.datapath(notice(EventKind::BeLive, key));
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::HandoffAccepted { id: 3 })
    ));

    // Any other state on the tuple is the client's live connection: refused, left alone.
    let mut n2 = node(1, PolicyKind::Hash);
    n2.tcp.set(&key, tcp_state::ESTABLISHED);
    n2.hear(Message::HandoffRequest(handoff_request(4)));
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::HandoffRefused {
            id: 4,
            reason: RefuseReason::Collision
        })
    ));
    assert_eq!(n2.tcp.state(&key), Some(tcp_state::ESTABLISHED));
}

#[test]
fn a_close_our_tcp_confirms_by_time_wait_is_reported_at_once() {
    let (mut n2, key) = live(5);
    // Both FINs, and our TCP went to TIME_WAIT: nothing to linger for. The FE hears at once, so
    // its entry only lingers from now on and the tuple can take an offer from another FE; the
    // TIME_WAIT goes, so the client's own next connection here on the tuple is not answered by
    // it (before: 2 s of both, and ~5 % of the cache bench's offers refused as collisions).
    n2.tcp.set(&key, tcp_state::TIME_WAIT);
    n2.datapath(notice(EventKind::Closed, key));
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::ConnClosed { id: 5 })
    ));
    assert_eq!(n2.tcp.state(&key), None, "the TIME_WAIT is ended");
    assert!(n2.table.get(&key).is_none() && n2.engine.drained());

    // The datapath saw a RST: whatever our TCP's state, only the linger's look decides.
    let mut n2 = offered(6);
    n2.datapath(be_synack());
    n2.datapath(notice(EventKind::BeLive, key));
    n2.next_to_peer();
    let mut entry = n2.table.get(&key).unwrap();
    entry.flags |= baton_bpf::conn_flags::RST;
    n2.table.0.lock().unwrap().insert(key, entry);
    n2.tcp.set(&key, tcp_state::TIME_WAIT);
    n2.datapath(notice(EventKind::Closed, key));
    assert!(n2.next_to_peer().is_none(), "not before the linger");
    n2.wait(LINGER);
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::ConnClosed { id: 6 })
    ));
}

#[test]
fn a_head_in_too_many_pieces_is_served_locally() {
    let mut n1 = node(0, PolicyKind::Hash);
    let key = key_at(N1);
    n1.table.0.lock().unwrap().insert(key, held_entry());
    let head = request(&target_for(1));
    // One byte per segment: the hold limit (32 segments) comes before the end of the head.
    for (i, byte) in head.iter().enumerate().take(40) {
        let segment = client_segment(N1, i as u32, TcpFlags::ACK | TcpFlags::PSH, &[*byte]);
        n1.datapath(event(EventKind::HeldPacket, key, &segment));
    }
    let sent = n1.sent.take();
    assert!(!sent.is_empty(), "released");
    assert_eq!(
        sent[0].payload,
        head[..32].to_vec(),
        "the bytes held so far go to the local TCP"
    );
    assert_eq!(fallbacks(&n1.metrics, "too_many_segments"), 1);
    assert!(n1.next_to_peer().is_none());
    assert!(n1.table.get(&key).is_none());
}

#[test]
fn load_is_counted_from_the_local_tcp_and_changes_are_told_at_once() {
    let mut n1 = node(0, PolicyKind::LeastConn);
    for port in 0..20u16 {
        let remote = SocketAddrV4::new(CLIENT, 50_000 + port);
        n1.tcp.set(
            &ConnKey::new(remote, SocketAddrV4::new(N1, 80)),
            tcp_state::ESTABLISHED,
        );
    }
    n1.wait(Duration::from_millis(100));
    assert_eq!(
        n1.metrics.load.get(),
        20,
        "anchored on a count of the local TCP"
    );
    assert_eq!(n1.reported_loads(), [20], "told as soon as counted");
    // Then it follows the datapath's counter, without counting again.
    n1.written.opened(10);
    n1.wait(Duration::from_millis(100));
    assert_eq!(n1.metrics.load.get(), 30);
    assert_eq!(n1.reported_loads(), [30]);
    // Nothing changes: a heartbeat every other round, for liveness.
    for _ in 0..4 {
        n1.wait(Duration::from_millis(100));
    }
    assert_eq!(n1.reported_loads(), [30, 30]);
    // n1 now looks busier than n2 (load 0, heard just now): least-conn hands the next request
    // over.
    n1.hear(Message::Heartbeat {
        load: 0,
        sent_at_ms: 1,
        serving: true,
    });
    hold(&mut n1, &request("/anything"));
    assert!(matches!(
        n1.next_to_peer(),
        Some(Message::HandoffRequest(_))
    ));
    // Its server stops listening: the next heartbeat says so.
    n1.tcp.0.lock().unwrap().listening = false;
    n1.wait(Duration::from_millis(100));
    assert!(
        n1.engine.cluster.serving(),
        "looked at only when listeners change"
    );
    n1.written.listener_closed();
    n1.wait(Duration::from_millis(100));
    assert!(!n1.engine.cluster.serving());
    let last = std::iter::from_fn(|| n1.sent_to_peer()).last();
    assert!(matches!(
        last,
        Some(Message::Heartbeat { serving: false, .. })
    ));
}

#[test]
fn lard_asks_the_dispatcher_and_follows_its_answer() {
    // n2 is not the dispatcher (n1, the first live member, is): it asks, then does as told.
    let mut n2 = node(1, PolicyKind::Lard);
    hold_at(&mut n2, N2, &request("/hot/item"));
    let Some(Message::DispatchQuery { id, target }) = n2.next_to_peer() else {
        panic!("no question to the dispatcher")
    };
    assert_eq!(target, "/hot/item");
    assert!(
        n2.sent.take().is_empty(),
        "nothing is decided before the answer"
    );
    n2.hear(Message::DispatchAnswer { id, node: 0 });
    assert!(
        matches!(n2.next_to_peer(), Some(Message::HandoffRequest(_))),
        "handed to n1 as the dispatcher said"
    );

    let mut n2 = node(1, PolicyKind::Lard);
    hold_at(&mut n2, N2, &request("/cold/item"));
    let Some(Message::DispatchQuery { id, .. }) = n2.next_to_peer() else {
        panic!()
    };
    n2.hear(Message::DispatchAnswer { id, node: 1 });
    assert_eq!(
        n2.sent.take().len(),
        1,
        "served here as the dispatcher said"
    );
}

#[test]
fn a_silent_dispatcher_leaves_the_decision_to_bounded_hash() {
    let mut n2 = node(1, PolicyKind::Lard);
    hold_at(&mut n2, N2, &request("/x"));
    let Some(Message::DispatchQuery { id, .. }) = n2.next_to_peer() else {
        panic!("no question")
    };
    n2.wait(Duration::from_millis(30));
    assert_eq!(n2.metrics.dispatch_fallbacks.get(), 1);
    let served_here = !n2.sent.take().is_empty();
    let handed = matches!(n2.next_to_peer(), Some(Message::HandoffRequest(_)));
    assert!(
        served_here != handed,
        "the connection is decided, once, without the dispatcher"
    );
    // A late answer changes nothing.
    n2.hear(Message::DispatchAnswer { id, node: 0 });
    assert!(n2.sent.take().is_empty() && n2.next_to_peer().is_none());

    // With the dispatcher down, the next live member (here n2 itself) keeps the table.
    let mut n2 = node(1, PolicyKind::Lard);
    n2.mesh(MeshEvent::PeerDown { peer: 0 });
    hold_at(&mut n2, N2, &request("/y"));
    assert!(
        n2.next_to_peer().is_none(),
        "no question: n2 is the dispatcher now"
    );
    assert_eq!(n2.sent.take().len(), 1);
}

#[test]
fn the_dispatcher_answers_from_one_table() {
    let mut n1 = node(0, PolicyKind::Lard);
    let mut answers = Vec::new();
    for id in 0..3 {
        n1.hear(Message::DispatchQuery {
            id,
            target: "/same".into(),
        });
        let Some(Message::DispatchAnswer { id: answered, node }) = n1.next_to_peer() else {
            panic!("no answer")
        };
        assert_eq!(answered, id);
        answers.push(node);
    }
    assert!(
        answers.iter().all(|&n| n == answers[0]),
        "one target, one node: {answers:?}"
    );
    assert_eq!(n1.metrics.dispatch_answers.get(), 3);
    // Its own connections need no question, and follow the same table.
    hold_at(&mut n1, N1, &request("/same"));
    match n1.next_to_peer() {
        Some(Message::HandoffRequest(_)) => assert_eq!(answers[0], 1),
        None => assert_eq!((answers[0], n1.sent.take().len()), (0, 1)),
        Some(other) => panic!("the dispatcher asked or sent {other:?}"),
    }
}

#[test]
fn short_connections_assigned_between_reports_do_not_pile_up_into_load() {
    // LARD's dispatcher answering for a stream of short connections (each closed long before
    // the next heartbeat): the target must stay where it is, as with loads counted exactly.
    let mut n1 = node(0, PolicyKind::Lard);
    n1.hear(Message::Heartbeat {
        load: 3,
        sent_at_ms: 1,
        serving: true,
    });
    let mut answers = std::collections::BTreeSet::new();
    for id in 0..300 {
        n1.hear(Message::DispatchQuery {
            id,
            target: "/popular".into(),
        });
        let Some(Message::DispatchAnswer { node, .. }) = n1.next_to_peer() else {
            panic!("no answer")
        };
        answers.insert(node);
    }
    assert_eq!(answers.len(), 1, "one target, one node: {answers:?}");
    // What counts on top of a report: in full up to it (or a small burst allowance), then
    // slowly, so that it still grows.
    let chosen = usize::from(*answers.first().unwrap());
    let p = &n1.engine.cluster.peers[chosen];
    let reported = p.load;
    let assigned = p.assigned;
    assert!(assigned > 100, "{assigned}");
    let in_full = reported.max(8);
    assert_eq!(
        p.effective_load(),
        reported + in_full + (assigned - in_full) / 16
    );
}

#[test]
fn a_draining_node_takes_nothing_new_and_says_so() {
    // n1 drains: it tells n2, stops holding, refuses handoffs, and stops being the dispatcher.
    let mut n1 = node(0, PolicyKind::Lard);
    assert!(n1.engine.drained());
    n1.engine.begin_drain(n1.now);
    assert!(matches!(n1.next_to_peer(), Some(Message::Draining)));
    assert_eq!(n1.written.get().distribute, 0);
    n1.hear(Message::HandoffRequest(handoff_request(8)));
    assert!(matches!(
        n1.next_to_peer(),
        Some(Message::HandoffRefused {
            id: 8,
            reason: RefuseReason::Overloaded
        })
    ));

    // n2 hears it: n1 is neither chosen nor asked any more; n2 keeps the table itself.
    let mut n2 = node(1, PolicyKind::Lard);
    n2.hear(Message::Draining);
    assert_eq!(n2.engine.cluster.dispatcher(n2.now), 1);
    hold_at(&mut n2, N2, &request("/z"));
    assert!(
        n2.next_to_peer().is_none(),
        "no question to a draining dispatcher, no handoff to it"
    );
    assert_eq!(n2.sent.take().len(), 1, "served here");
    // Until it comes back as a new agent.
    n2.mesh(MeshEvent::PeerUp { peer: 0 });
    assert_eq!(n2.engine.cluster.dispatcher(n2.now), 0);
}

#[test]
fn connections_that_never_sent_data_are_let_go_to_the_local_tcp() {
    // The datapath absorbed the handshake ACK and nothing followed: after hold_ms, garbage
    // collection forgets the entry, so the client's next packet completes the handshake locally.
    let mut n1 = node(0, PolicyKind::Hash);
    let key = key_at(N1);
    let mut entry = held_entry();
    entry.last_seen_ns = super::monotonic_ns() - 2 * HOLD.as_nanos() as u64;
    n1.table.0.lock().unwrap().insert(key, entry);
    for _ in 0..100 {
        n1.wait(Duration::from_millis(100));
    }
    assert!(n1.table.get(&key).is_none());
}

/// A datapath entry another agent left behind: forwarding to (FE) or translating from (BE)
/// `peer`, as handoff `id`.
fn left_behind(role: ConnRole, state: ConnState, peer: Ipv4Addr, id: u64) -> Conn {
    let now = super::monotonic_ns();
    Conn {
        role: role as u8,
        state: state as u8,
        client_isn: CLIENT_ISN,
        peer_addr: peer.octets(),
        handoff_id: id,
        created_ns: now,
        last_seen_ns: now,
        client_seen_ns: now,
        ..Conn::default()
    }
}

#[test]
fn a_new_agent_adopts_forwarded_and_handed_in_connections() {
    // n1 had handed a connection off to n2 as handoff 21, and n2 served it; both agents are gone,
    // new ones find only their tables.
    let mut n1 = node(0, PolicyKind::Hash);
    let key1 = key_at(N1);
    let forwarded = left_behind(ConnRole::Fe, ConnState::FeForward, N2, 21);
    n1.table.0.lock().unwrap().insert(key1, forwarded);
    let adopted = n1.engine.adopt(n1.now);
    assert_eq!((adopted.forwarded, adopted.handed_in), (1, 0));
    assert!(
        !n1.engine.drained(),
        "a forwarded connection needs the datapath"
    );
    // n2's new agent confirms what it adopted: that is no reason to abort.
    n1.hear(Message::HandoffAccepted { id: 21 });
    assert!(n1.next_to_peer().is_none());
    // Its close report finds the connection by the id in the entry.
    n1.hear(Message::ConnClosed { id: 21 });
    assert!(n1.engine.drained());
    n1.wait(LINGER);
    assert!(n1.table.get(&key1).is_none());

    let mut n2 = node(1, PolicyKind::Hash);
    let key2 = key_at(N2);
    let served = left_behind(ConnRole::Be, ConnState::BeEstablished, N1, 21);
    n2.table.0.lock().unwrap().insert(key2, served);
    n2.tcp.set(&key2, tcp_state::ESTABLISHED);
    let adopted = n2.engine.adopt(n2.now);
    assert_eq!((adopted.forwarded, adopted.handed_in), (0, 1));
    assert_eq!(n2.metrics.handed_in_active.get(), 1);
    assert!(!n2.engine.drained());
    // It closes: the FE hears of it under the id the first agent took it as.
    n2.datapath(notice(EventKind::Closed, key2));
    n2.tcp.set(&key2, tcp_state::TIME_WAIT);
    n2.wait(LINGER);
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::ConnClosed { id: 21 })
    ));
    assert!(n2.table.get(&key2).is_none());
}

#[test]
fn an_adopted_replay_goes_live_or_is_refused_by_its_deadline() {
    let mut n2 = node(1, PolicyKind::Hash);
    let (live, late) = (key_at(N2), key_at_port(N2, CLIENT_PORT + 1));
    let deadline = super::monotonic_ns() + HANDOFF_TIMEOUT.as_nanos() as u64 / 2;
    for (key, id) in [(live, 5), (late, 6)] {
        let mut entry = left_behind(ConnRole::Be, ConnState::BeReplayed, N1, id);
        entry.live_deadline_ns = deadline;
        n2.table.0.lock().unwrap().insert(key, entry);
    }
    assert_eq!(n2.engine.adopt(n2.now).replaying, 2);
    assert!(!n2.engine.settled(), "a hand-over would wait for them");
    n2.datapath(notice(EventKind::BeLive, live));
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::HandoffAccepted { id: 5 })
    ));
    n2.wait(HANDOFF_TIMEOUT);
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::HandoffRefused {
            id: 6,
            reason: RefuseReason::Timeout
        })
    ));
    let sent = n2.sent.take();
    assert!(
        sent.iter()
            .any(|p| p.flags == TcpFlags::RST && p.src_port == CLIENT_PORT + 1),
        "our TCP's half of the refused one is reset: {sent:?}"
    );
    assert!(n2.table.get(&late).is_none() && n2.table.get(&live).is_some());
    assert!(n2.engine.settled());
}

#[test]
fn the_agent_beats_while_it_runs_and_stands_down_to_hand_over() {
    let mut n1 = node(0, PolicyKind::Hash);
    n1.wait(Duration::ZERO);
    assert!(
        n1.written.agent_alive(),
        "the datapath holds for a beating agent"
    );
    let incomplete = hold_from(&mut n1, CLIENT_PORT + 1, N1, b"GET /f/1k HTTP/1.1\r\n");
    let key = hold(&mut n1, &request(&target_for(1)));
    let Some(Message::HandoffRequest(offer)) = n1.next_to_peer() else {
        panic!("no offer")
    };
    n1.sent.take();

    n1.engine.begin_handover(n1.now);
    assert!(!n1.written.agent_alive(), "the datapath fails open at once");
    assert!(matches!(n1.next_to_peer(), Some(Message::Draining)));
    assert!(
        n1.table.get(&incomplete).is_none(),
        "a held connection is served here"
    );
    assert_eq!(n1.sent.take().len(), 1, "its bytes so far, into our TCP");
    assert!(
        !n1.engine.settled(),
        "the offer is out: its answer is awaited"
    );
    n1.hear(Message::HandoffAccepted { id: offer.id });
    assert!(n1.engine.settled());
    assert_eq!(
        n1.table.get(&key).and_then(|e| e.state()),
        Some(ConnState::FeForward),
        "the handed-off connection stays with the datapath"
    );
    n1.wait(Duration::from_secs(2));
    assert!(!n1.written.agent_alive(), "no heartbeat once standing down");
}

#[test]
fn handed_in_connections_whose_client_or_fe_is_gone_are_freed() {
    let mut n2 = offered(4);
    n2.engine.config.limits.orphan_timeout_s = 1;
    let key = key_at(N2);
    n2.datapath(be_synack());
    n2.datapath(notice(EventKind::BeLive, key));
    n2.tcp.set(&key, tcp_state::ESTABLISHED);
    let silent_since = super::monotonic_ns() - 5_000_000_000;
    let quiet = |n2: &mut Node, server_sent_since: bool| {
        let mut t = n2.table.0.lock().unwrap();
        let e = t.get_mut(&key).unwrap();
        e.state = ConnState::BeEstablished as u8; // as the datapath made it, going live
        e.client_seen_ns = silent_since;
        e.last_seen_ns = silent_since + if server_sent_since { 3_000_000_000 } else { 0 };
    };
    let heartbeat = Message::Heartbeat {
        load: 0,
        sent_at_ms: 0,
        serving: true,
    };
    // An idle connection whose FE is up is left alone, however long it idles.
    quiet(&mut n2, false);
    for _ in 0..101 {
        n2.hear(heartbeat.clone());
        n2.wait(Duration::from_millis(100));
    }
    assert!(n2.table.get(&key).is_some(), "idle is not orphaned");
    // The FE goes silent for longer than the bound: nothing can reach us from the client.
    for _ in 0..101 {
        n2.wait(Duration::from_millis(100));
    }
    assert!(n2.table.get(&key).is_none(), "freed");
    assert_eq!(n2.tcp.state(&key), None);
    assert_eq!(n2.metrics.orphans_freed.get(), 1);
    assert_eq!(n2.metrics.handed_in_active.get(), 0);

    // With the FE up, a server still sending to a client that went silent is talking to nobody.
    let mut n2 = offered(5);
    n2.engine.config.limits.orphan_timeout_s = 1;
    n2.datapath(be_synack());
    n2.datapath(notice(EventKind::BeLive, key));
    n2.tcp.set(&key, tcp_state::ESTABLISHED);
    quiet(&mut n2, true);
    for _ in 0..101 {
        n2.hear(heartbeat.clone());
        n2.wait(Duration::from_millis(100));
    }
    assert!(n2.table.get(&key).is_none(), "freed");
    assert_eq!(n2.metrics.orphans_freed.get(), 1);
}

#[test]
fn an_offer_takes_a_tuple_whose_own_handed_off_connection_only_lingers() {
    // n2 accepted a connection from the client's port itself and handed it off (to n1 here); it
    // is closed at both ends and its entry lingers. The client then uses that port toward n1,
    // which offers the new connection to n2: the same tuple at n2, and no collision.
    let mut n2 = node(1, PolicyKind::Hash);
    let key = key_at(N2);
    let old_isn = CLIENT_ISN.wrapping_sub(1_000_000);
    let mut lingering = left_behind(ConnRole::Fe, ConnState::FeForward, N1, 77);
    lingering.client_isn = old_isn;
    n2.table.0.lock().unwrap().insert(key, lingering);
    n2.engine.fe.adopt_forwarded(key, old_isn, 0, 77, true);
    n2.hear(Message::HandoffRequest(handoff_request(8)));
    assert!(
        n2.next_to_peer().is_none(),
        "not refused: {:?}",
        n2.sent_to_peer()
    );
    let entry = n2.table.get(&key).unwrap();
    assert_eq!(
        (entry.role(), entry.client_isn),
        (Some(ConnRole::Be), CLIENT_ISN)
    );

    // One still open is a true collision.
    let mut n2 = node(1, PolicyKind::Hash);
    let mut open = left_behind(ConnRole::Fe, ConnState::FeForward, N1, 78);
    open.client_isn = old_isn;
    n2.table.0.lock().unwrap().insert(key, open);
    n2.engine.fe.adopt_forwarded(key, old_isn, 0, 78, false);
    n2.hear(Message::HandoffRequest(handoff_request(9)));
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::HandoffRefused {
            id: 9,
            reason: RefuseReason::Collision
        })
    ));
}

#[test]
fn an_operator_drained_peer_is_not_chosen_until_undrained() {
    let head = request(&target_for(1));
    let mut n1 = node(0, PolicyKind::Hash);
    let digest = n1.engine.config_digest;
    n1.hear(Message::NodeStatus {
        drained: true,
        config_digest: digest,
    });
    assert_eq!(n1.written.get().nodes[1].eligible, 0, "nor by the datapath");
    hold(&mut n1, &head);
    assert!(n1.next_to_peer().is_none(), "not offered");
    assert_eq!(n1.sent.take().len(), 1, "served here");
    let peers = n1.engine.peer_rows(n1.now);
    assert_eq!(peers[0].state, "drained");
    assert_eq!(peers[0].config_agrees, Some(true));
    n1.hear(Message::NodeStatus {
        drained: false,
        config_digest: digest,
    });
    assert_eq!(n1.written.get().nodes[1].eligible, 1, "back");
    hold_from(&mut n1, CLIENT_PORT + 1, N1, &head);
    assert!(matches!(
        n1.next_to_peer(),
        Some(Message::HandoffRequest(_))
    ));
}

#[test]
fn draining_by_the_operator_tells_peers_and_keeps_distributing() {
    let mut n2 = node(1, PolicyKind::Hash);
    while n2.sent_to_peer().is_some() {}
    let said = n2.engine.set_drained(true, n2.now);
    assert!(said.contains("drained"), "{said}");
    assert!(matches!(
        n2.sent_to_peer(),
        Some(Message::NodeStatus { drained: true, .. })
    ));
    assert_eq!(n2.engine.status(n2.now).state, "drained");
    assert_eq!(
        n2.written.get().distribute,
        1,
        "it still places what it accepts"
    );
    assert_eq!(
        n2.written.get().decide,
        DecideMode::Agent as u8,
        "but the datapath keeps nothing here itself"
    );
    // A target hash keeps on n2 goes to n1 while n2 is drained.
    while n2.sent_to_peer().is_some() {}
    hold_at(&mut n2, N2, &request(&target_for(1)));
    assert!(
        matches!(n2.next_to_peer(), Some(Message::HandoffRequest(_))),
        "handed to the live peer"
    );
    assert!(n2.sent.take().is_empty(), "nothing released here");
    assert_eq!(n2.metrics.drained.get(), 1);
    // Drained again: nothing to tell.
    n2.engine.set_drained(true, n2.now);
    assert!(n2.sent_to_peer().is_none());
    n2.engine.set_drained(false, n2.now);
    assert!(matches!(
        n2.sent_to_peer(),
        Some(Message::NodeStatus { drained: false, .. })
    ));
    // A peer whose control connection comes back hears the state at once.
    n2.mesh(MeshEvent::PeerUp { peer: 0 });
    assert!(matches!(
        n2.sent_to_peer(),
        Some(Message::NodeStatus { drained: false, .. })
    ));
}

#[test]
fn a_failing_health_check_is_told_to_peers_at_once() {
    let mut n2 = node(1, PolicyKind::Hash);
    while n2.sent_to_peer().is_some() {}
    n2.engine.on_health(Some(false), n2.now);
    assert!(matches!(
        n2.sent_to_peer(),
        Some(Message::Heartbeat { serving: false, .. })
    ));
    assert_eq!(n2.engine.status(n2.now).healthy, Some(false));
    assert!(!n2.engine.cluster.serving());
    n2.engine.on_health(Some(true), n2.now);
    assert!(matches!(
        n2.sent_to_peer(),
        Some(Message::Heartbeat { serving: true, .. })
    ));
    assert!(n2.engine.cluster.serving());
}

#[test]
fn a_peer_with_another_cluster_configuration_is_counted_and_still_used() {
    let mut n1 = node(0, PolicyKind::Hash);
    n1.hear(Message::NodeStatus {
        drained: false,
        config_digest: n1.engine.config_digest ^ 1,
    });
    assert_eq!(n1.metrics.config_mismatched_peers.get(), 1);
    assert_eq!(n1.engine.peer_rows(n1.now)[0].config_agrees, Some(false));
    assert_eq!(n1.written.get().nodes[1].eligible, 1);
}

#[test]
fn a_reload_applies_policy_and_limits_and_refuses_what_cannot_change() {
    let mut n1 = node(0, PolicyKind::Hash);
    assert_eq!(n1.written.get().decide, DecideMode::Hash as u8);
    let before = n1.engine.config().clone();
    let digest = n1.engine.config_digest;
    while n1.sent_to_peer().is_some() {}

    // The interface cannot change in place: refused, nothing changes.
    let mut moved = before.clone();
    moved.node.interface = "eth1".into();
    let refused = n1.engine.reload(moved, n1.now).unwrap_err();
    assert!(refused.contains("node"), "{refused}");
    let mut readdressed = before.clone();
    readdressed.cluster.members[1].address = "198.18.0.9".parse().unwrap();
    assert!(
        n1.engine
            .reload(readdressed, n1.now)
            .unwrap_err()
            .contains("cluster.members")
    );
    assert_eq!(n1.engine.config(), &before);

    let mut new = before.clone();
    new.policy.kind = PolicyKind::LeastConn;
    new.limits.hold_ms = 77;
    let said = n1.engine.reload(new, n1.now).unwrap();
    assert!(said.contains("hash -> least-conn"), "{said}");
    assert!(said.contains("limits"), "{said}");
    assert_eq!(n1.engine.config().limits.hold_ms, 77);
    assert_eq!(
        n1.written.get().decide,
        DecideMode::Agent as u8,
        "the datapath no longer decides for least-conn"
    );
    assert_ne!(
        n1.engine.config_digest, digest,
        "the policy is in the digest"
    );
    assert!(matches!(
        n1.sent_to_peer(),
        Some(Message::NodeStatus { config_digest, .. }) if config_digest == n1.engine.config_digest
    ));
    assert_eq!(
        n1.engine
            .reload(n1.engine.config().clone(), n1.now)
            .unwrap(),
        "nothing changed"
    );
}

#[test]
fn a_reload_adds_and_removes_members_keeping_every_index() {
    let mut n1 = node(0, PolicyKind::Hash);
    let base = n1.engine.config().clone();
    let mut three = base.clone();
    three.cluster.members.push(crate::config::Member {
        name: "n3".into(),
        address: "198.18.0.3".parse().unwrap(),
        control_address: None,
    });
    let said = n1.engine.reload(three.clone(), n1.now).unwrap();
    assert!(said.contains("members added: n3"), "{said}");
    assert_eq!(n1.engine.cluster.peers.len(), 3);
    assert_eq!(n1.written.get().nnodes, 3, "the datapath hashes over three");
    // n3 is not up until its control connection is and it is heard.
    assert!(!n1.engine.cluster.is_up(2, n1.now));
    n1.mesh(MeshEvent::PeerUp { peer: 2 });
    n1.engine.on_mesh(
        MeshEvent::Message {
            peer: 2,
            message: Message::Heartbeat {
                load: 0,
                sent_at_ms: 1,
                serving: true,
            },
        },
        n1.now,
    );
    assert!(n1.engine.cluster.is_up(2, n1.now));
    assert_eq!(n1.written.get().nodes[2].eligible, 1);

    // n2 goes: its index stays, unused; the dispatcher's wire positions follow the new list.
    let mut without_n2 = three.clone();
    without_n2.cluster.members.remove(1);
    let said = n1.engine.reload(without_n2, n1.now).unwrap();
    assert!(said.contains("members removed: n2"), "{said}");
    assert!(!n1.engine.cluster.is_up(1, n1.now));
    assert_eq!(n1.written.get().nodes[1].eligible, 0);
    assert_eq!(n1.engine.cluster.wire_index(2), Some(1));
    assert_eq!(n1.engine.cluster.member_at_wire(1), Some(2));
    assert_eq!(n1.engine.cluster.wire_index(1), None);
    assert!(
        n1.engine.peer_rows(n1.now).iter().all(|p| p.name != "n2"),
        "a removed member is not listed"
    );
    // And back: the same index again.
    let said = n1.engine.reload(three, n1.now).unwrap();
    assert!(said.contains("members added: n2"), "{said}");
    assert_eq!(n1.engine.cluster.peers.len(), 3);
    assert_eq!(n1.engine.cluster.wire_index(1), Some(1));
}

#[test]
fn a_removed_member_gets_nothing_new_but_answers_about_what_is_under_way() {
    let mut n1 = node(0, PolicyKind::Lard);
    let mut alone = n1.engine.config().clone();
    alone.cluster.members.truncate(1);
    n1.engine.reload(alone, n1.now).unwrap();
    while n1.sent_to_peer().is_some() {}
    // Its offers are refused (its FE serves them), its questions ignored.
    n1.hear(Message::HandoffRequest(handoff_request(3)));
    assert!(matches!(
        n1.next_to_peer(),
        Some(Message::HandoffRefused {
            id: 3,
            reason: RefuseReason::Overloaded
        })
    ));
    assert!(n1.table.get(&key_at(N1)).is_none(), "nothing replayed");
    n1.hear(Message::DispatchQuery {
        id: 4,
        target: "/x".into(),
    });
    assert!(n1.next_to_peer().is_none());
}

#[test]
fn a_dispatcher_with_another_configuration_is_not_asked() {
    // n2 asks n1 (the dispatcher) only while their configurations agree.
    let mut n2 = node(1, PolicyKind::Lard);
    n2.hear(Message::NodeStatus {
        drained: false,
        config_digest: n2.engine.config_digest ^ 1,
    });
    while n2.sent_to_peer().is_some() {}
    hold_at(&mut n2, N2, &request("/elsewhere"));
    assert!(
        !matches!(n2.next_to_peer(), Some(Message::DispatchQuery { .. })),
        "decided without asking"
    );
    assert_eq!(n2.metrics.dispatch_fallbacks.get(), 1);
}

// ----- per-request following ----------------------------------------------------------------

const FOLLOW: &str = "per_request = true";

/// The first request of a followed connection, offered by n1 to n2 and accepted: n1, the key,
/// the handoff id and where the next head starts.
fn followed_at_n2() -> (Node, ConnKey, u64, u32) {
    let mut n1 = node_with(0, PolicyKind::Hash, FOLLOW);
    let head = request(&target_for(1));
    let key = hold(&mut n1, &head);
    let Some(Message::HandoffRequest(r)) = n1.next_to_peer() else {
        panic!("no offer")
    };
    assert!(r.follow, "the BE is told to count responses");
    let next_head = CLIENT_ISN.wrapping_add(1 + head.len() as u32);
    assert_eq!(
        n1.follow.watch(&key),
        Some(Watch::heads_at(next_head, 1)),
        "the datapath holds from the next head on, from the offer on"
    );
    n1.hear(Message::HandoffAccepted { id: r.id });
    n1.sent.take();
    (n1, key, r.id, next_head)
}

#[test]
fn a_next_request_for_the_same_node_goes_there_and_the_watch_moves_on() {
    let (mut n1, key, _, next_head) = followed_at_n2();
    let offset = next_head.wrapping_sub(CLIENT_ISN + 1);
    let head = request(&target_for(1));
    let mut segment = client_segment(N1, offset, TcpFlags::ACK | TcpFlags::PSH, &head);
    segment.ack = FE_ISN + 1 + 1200;
    n1.datapath(event(EventKind::NextHead, key, &segment));
    let sent = n1.sent.take();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        (
            sent[0].dst,
            sent[0].seq,
            sent[0].ack,
            sent[0].payload.as_slice()
        ),
        (N2, next_head, FE_ISN + 1 + 1200, head.as_slice()),
        "the held request goes to the node that has the connection"
    );
    assert_eq!(
        n1.follow.watch(&key),
        Some(Watch::heads_at(
            next_head.wrapping_add(head.len() as u32),
            1
        ))
    );
    assert_eq!(n1.metrics.requests_stayed.get(), 1);
    assert!(n1.next_to_peer().is_none(), "no move");
}

#[test]
fn a_next_request_for_this_node_moves_the_connection_back_by_replay() {
    let (mut n1, key, id, next_head) = followed_at_n2();
    let offset = next_head.wrapping_sub(CLIENT_ISN + 1);
    let head = request(&target_for(0));
    let server_next = FE_ISN + 1 + 1200;
    let mut segment = client_segment(N1, offset, TcpFlags::ACK | TcpFlags::PSH, &head);
    segment.ack = server_next;
    n1.datapath(event(EventKind::NextHead, key, &segment));
    let Some(Message::MoveQuiesce {
        id: asked,
        attempt,
        requests,
        segment: ack,
    }) = n1.next_to_peer()
    else {
        panic!("the serving node is asked first")
    };
    assert_eq!((asked, requests), (id, 1));
    let ack = TcpPacketBuilder::parse(&ack).unwrap();
    assert_eq!(
        (ack.seq, ack.ack, ack.flags, ack.payload.len()),
        (next_head, server_next, TcpFlags::ACK, 0),
        "the client's ACK without its request"
    );
    assert!(n1.sent.take().is_empty(), "nothing goes anywhere meanwhile");

    // An answer to another attempt is not this move's.
    n1.hear(Message::MoveQuiet {
        id,
        attempt: attempt + 1,
    });
    assert!(matches!(
        n1.next_to_peer(),
        Some(Message::MoveResume { data, .. }) if data.is_empty()
    ));
    assert!(n1.sent.take().is_empty());
    // Quiet: n1 replays the connection into its own TCP, continuing the client's stream.
    n1.hear(Message::MoveQuiet { id, attempt });
    let entry = n1.table.get(&key).unwrap();
    assert_eq!(
        (entry.role(), entry.state(), entry.client_isn),
        (
            Some(ConnRole::Be),
            Some(ConnState::BeSynSent),
            next_head.wrapping_sub(1)
        )
    );
    let sent = n1.sent.take();
    assert_eq!(
        (
            sent.len(),
            sent[0].flags & TcpFlags::SYN,
            sent[0].seq,
            sent[0].dst
        ),
        (1, TcpFlags::SYN, next_head.wrapping_sub(1), N1),
        "the SYN starts where the request does"
    );
    let mut synack = TcpPacketBuilder::new(N1, 80, CLIENT, CLIENT_PORT);
    synack.seq = BE_ISN;
    synack.ack = next_head;
    synack.flags = TcpFlags::SYN | TcpFlags::ACK | TcpFlags::ECE;
    synack.options = syn_options(BE_TSVAL, 100);
    n1.datapath(event(EventKind::BeSynAck, key, &synack));
    let entry = n1.table.get(&key).unwrap();
    assert_eq!(
        entry.seq_delta,
        BE_ISN.wrapping_sub(server_next.wrapping_sub(1)),
        "the server's side continues at the client's ACK"
    );
    assert_eq!(
        entry.ts_delta,
        BE_TSVAL.wrapping_sub(FE_TSVAL),
        "and its clock at the client's echo"
    );
    let replay = n1.sent.take();
    assert_eq!(replay.len(), 1);
    assert_eq!(
        (replay[0].seq, replay[0].ack, replay[0].payload.as_slice()),
        (next_head, BE_ISN + 1, head.as_slice())
    );
    n1.datapath(notice(EventKind::BeLive, key));
    assert!(
        matches!(n1.next_to_peer(), Some(Message::MoveRelease { id: released, attempt: a }) if released == id && a == attempt),
        "the old node ends its side"
    );
    assert_eq!(n1.metrics.rehandoffs.get(), 1);
    assert_eq!(
        n1.follow.watch(&key),
        Some(Watch::heads_at(
            next_head.wrapping_add(head.len() as u32),
            0
        ))
    );
}

/// What n1's datapath writes as it serves a first request of `len` bytes here and follows it
/// (`fe_follow_here`): `key`'s entry translating at offset zero and the watch of the next head;
/// and its quiet notice, which carries the FE entry `held` as it was.
fn served_here_by_datapath(n1: &mut Node, key: ConnKey, held: Conn, id: u64, len: usize) -> Event {
    let next_head = held.client_isn.wrapping_add(1 + len as u32);
    let mut served = Conn::new_be(N1, held.client_isn, super::monotonic_ns());
    served.state = ConnState::BeEstablished as u8;
    served.local_isn = FE_ISN;
    served.handoff_id = id;
    served.flags = baton_bpf::conn_flags::FOLLOWED;
    n1.table.0.lock().unwrap().insert(key, served);
    n1.follow
        .0
        .lock()
        .unwrap()
        .watches
        .insert(key, Watch::heads_at(next_head, 0));
    // SAFETY: Conn is plain old data (repr(C), no padding); its bytes are what the datapath
    // copies.
    let bytes = unsafe {
        std::slice::from_raw_parts((&held as *const Conn).cast::<u8>(), size_of::<Conn>())
    };
    Event {
        detail: next_head,
        handoff_id: id,
        pkt_len: bytes.len() as u32,
        packet: bytes.to_vec(),
        ..notice(EventKind::DpFollowedHere, key)
    }
}

#[test]
fn a_first_request_the_datapath_served_here_is_followed_from_its_notice() {
    let mut n1 = node_with(0, PolicyKind::Hash, FOLLOW);
    let head = request(&target_for(0));
    // The datapath's FE entry as it held the connection, which the notice carries.
    let key = key_at(N1);
    let id = (1 << 63) | 77;
    let served = served_here_by_datapath(&mut n1, key, held_entry(), id, head.len());
    n1.datapath(served.clone());
    assert_eq!(n1.metrics.local.get(), 1);
    assert!(
        n1.sent.take().is_empty(),
        "the datapath gave our TCP the request"
    );
    let Some((serving, _)) = n1.engine.fe.following_mut(&key) else {
        panic!("not followed")
    };
    assert_eq!(serving, 0, "served here");
    // A malformed notice is counted and changes nothing.
    n1.datapath(Event {
        packet: vec![0; 7],
        ..notice(EventKind::DpFollowedHere, key_at_port(N1, CLIENT_PORT + 1))
    });
    assert_eq!(n1.metrics.malformed_events.get(), 1);
    assert!(
        n1.engine
            .fe
            .following_mut(&key_at_port(N1, CLIENT_PORT + 1))
            .is_none()
    );
    // A notice read after its connection's entry went (a late reader) takes nothing on.
    let gone = key_at_port(N1, CLIENT_PORT + 2);
    n1.datapath(Event {
        handoff_id: id + 1,
        key: gone,
        ..served
    });
    assert!(n1.engine.fe.following_mut(&gone).is_none());
    assert_eq!(n1.metrics.local.get(), 1);
}

#[test]
fn a_first_request_the_datapath_offered_followed_is_followed_from_its_notice() {
    let mut n1 = node_with(0, PolicyKind::Hash, FOLLOW);
    let head = request(&target_for(1));
    let next_head = CLIENT_ISN.wrapping_add(1 + head.len() as u32);
    // What the datapath wrote: the entry offered to n2, followed, and the watch of the next head,
    // which it already moved past a request it let stay on n2 before this agent read a word.
    let offered = |key: ConnKey, id: u64, flags: u32| {
        let mut entry = held_entry();
        entry.state = ConnState::FeForward as u8;
        entry.flags = baton_bpf::conn_flags::SYNACK_SEEN | baton_bpf::conn_flags::DP_OFFER | flags;
        entry.peer_addr = N2.octets();
        entry.handoff_id = id;
        (key, entry)
    };
    let stayed = next_head.wrapping_add(head.len() as u32);
    let (key, entry) = offered(key_at(N1), DP_ID, baton_bpf::conn_flags::FOLLOWED);
    n1.table.0.lock().unwrap().insert(key, entry);
    n1.follow
        .0
        .lock()
        .unwrap()
        .watches
        .insert(key, Watch::heads_at(stayed, 1));
    n1.datapath(Event {
        detail: next_head,
        ..dp_offered_notice(key, DP_ID)
    });
    n1.datapath(Event {
        detail: stayed,
        ..notice(EventKind::NextHeadStayed, key)
    });
    let Some((serving, _)) = n1.engine.fe.following_mut(&key) else {
        panic!("not followed")
    };
    assert_eq!(serving, 1, "on n2");
    // n2's agent has not said Accepted yet (it hears of the offer quietly), but the client
    // acknowledged n2's bytes: n2 has the connection.
    let mut live = n1.table.get(&key).unwrap();
    live.flags |= baton_bpf::conn_flags::DP_LIVE;
    n1.table.0.lock().unwrap().insert(key, live);
    // The next request is for n1: n2 is asked for both responses, from where the stay left the
    // next head.
    let next = request(&target_for(0));
    let segment = client_segment(
        N1,
        stayed.wrapping_sub(CLIENT_ISN + 1),
        TcpFlags::ACK | TcpFlags::PSH,
        &next,
    );
    n1.datapath(event(EventKind::NextHead, key, &segment));
    let Some(Message::MoveQuiesce { requests, id, .. }) = n1.next_to_peer() else {
        panic!("no quiesce: the held head was not read at the next head")
    };
    assert_eq!((requests, id), (2, DP_ID));
    assert_eq!(n1.metrics.handoffs_out.get(), 1, "taken as accepted");
    n1.hear(Message::HandoffAccepted { id: DP_ID });
    assert_eq!(n1.metrics.handoffs_out.get(), 1, "said again");

    // Not followed: the offer's entry does not say so, or the watch is gone (a new agent
    // adopting the table removed the watches).
    for (port, flags, watched) in [
        (CLIENT_PORT + 1, 0, true),
        (CLIENT_PORT + 2, baton_bpf::conn_flags::FOLLOWED, false),
    ] {
        let (key, entry) = offered(key_at_port(N1, port), DP_ID + u64::from(port), flags);
        n1.table.0.lock().unwrap().insert(key, entry);
        if watched {
            let w = Watch::heads_at(next_head, 1);
            n1.follow.0.lock().unwrap().watches.insert(key, w);
        }
        n1.datapath(Event {
            detail: next_head,
            ..dp_offered_notice(key, DP_ID + u64::from(port))
        });
        assert!(n1.engine.fe.knows(&key), "an offer out");
        assert!(n1.engine.fe.following_mut(&key).is_none(), "port {port}");
    }
}

#[test]
fn a_next_request_before_the_bes_bytes_are_acknowledged_waits_for_its_acceptance() {
    let mut n1 = node_with(0, PolicyKind::Hash, FOLLOW);
    let head = request(&target_for(1));
    let next_head = CLIENT_ISN.wrapping_add(1 + head.len() as u32);
    let key = key_at(N1);
    let mut entry = held_entry();
    entry.state = ConnState::FeForward as u8;
    entry.flags = baton_bpf::conn_flags::SYNACK_SEEN
        | baton_bpf::conn_flags::DP_OFFER
        | baton_bpf::conn_flags::FOLLOWED;
    entry.peer_addr = N2.octets();
    entry.handoff_id = DP_ID;
    n1.table.0.lock().unwrap().insert(key, entry);
    let w = Watch::heads_at(next_head, 1);
    n1.follow.0.lock().unwrap().watches.insert(key, w);
    n1.datapath(Event {
        detail: next_head,
        ..dp_offered_notice(key, DP_ID)
    });
    // A pipelining client: its next request before any of n2's bytes reached it. Nothing proves
    // n2 has the connection yet: the request waits for n2's answer.
    let next = request(&target_for(0));
    let offset = next_head.wrapping_sub(CLIENT_ISN + 1);
    let segment = client_segment(N1, offset, TcpFlags::ACK | TcpFlags::PSH, &next);
    n1.datapath(event(EventKind::NextHead, key, &segment));
    assert_eq!(
        n1.next_to_peer(),
        None,
        "decided before the offer is answered"
    );
    assert_eq!(n1.metrics.handoffs_out.get(), 0);
    n1.hear(Message::HandoffAccepted { id: DP_ID });
    assert!(matches!(
        n1.next_to_peer(),
        Some(Message::MoveQuiesce { requests: 1, .. })
    ));
}

#[test]
fn a_handoff_onto_a_tuple_a_moved_connection_left_frozen_is_not_silenced() {
    // A connection on the tuple moved away from here earlier and left its watch frozen and its
    // count of responses (its entry gone with it).
    let mut n2 = node_with(1, PolicyKind::Hash, FOLLOW);
    let key = key_at(N2);
    let frozen = Watch {
        flags: baton_bpf::watch_flags::FROZEN,
        next_head_seq: 0,
        ..Watch::default()
    };
    n2.follow.0.lock().unwrap().watches.insert(key, frozen);
    n2.follow
        .0
        .lock()
        .unwrap()
        .responses
        .insert(key, Responses::default());
    n2.hear(Message::HandoffRequest(handoff_request(7)));
    assert_eq!(
        n2.follow.watch(&key),
        None,
        "the new connection would be silenced"
    );
    assert!(n2.follow.responses(&key).is_none(), "not the new one's");
}

#[test]
fn a_reused_tuple_keeps_the_new_followed_offers_responses() {
    let mut n2 = node_with(1, PolicyKind::Hash, FOLLOW);
    let deadline = super::monotonic_ns() + HANDOFF_TIMEOUT.as_nanos() as u64 / 2;
    let key = key_at(N2);
    let taken = |isn: u32, id: u64| {
        let mut entry = left_behind(ConnRole::Be, ConnState::BeEstablished, N1, id);
        entry.client_isn = isn;
        entry.flags = baton_bpf::conn_flags::DP_OFFER
            | baton_bpf::conn_flags::DP_TAKEN
            | baton_bpf::conn_flags::FOLLOWED;
        entry.live_deadline_ns = deadline;
        entry
    };
    // The old followed connection, taken and live.
    n2.table
        .0
        .lock()
        .unwrap()
        .insert(key, taken(CLIENT_ISN, DP_ID));
    n2.tcp.set(&key, tcp_state::ESTABLISHED);
    n2.datapath(notice(EventKind::DpTaken, key));
    n2.next_to_peer();
    // The client reuses its port: the datapath took a new followed offer, whose server's
    // SYN-ACK began its responses, before the agent read of it.
    let new = taken(CLIENT_ISN.wrapping_add(100_000), DP_ID + 1);
    n2.table.0.lock().unwrap().insert(key, new);
    n2.follow
        .0
        .lock()
        .unwrap()
        .responses
        .insert(key, Responses::default());
    n2.datapath(notice(EventKind::DpTaken, key));
    assert!(
        n2.follow.responses(&key).is_some(),
        "the new connection's responses entry was removed with the old one"
    );
}

/// A BE notice of the connection `entry` is (the datapath names it by its handoff id and FE).
fn notice_of(kind: EventKind, key: ConnKey, entry: &Conn) -> Event {
    Event {
        handoff_id: entry.handoff_id,
        peer: Ipv4Addr::from(entry.peer_addr),
        ..notice(kind, key)
    }
}

/// What the FE heard of two datapath offers on one tuple, `DP_ID` then `DP_ID + 1`: the first
/// was taken and is over, the second is live.
fn first_over_second_live(n2: &mut Node) {
    let told: Vec<_> = std::iter::from_fn(|| n2.next_to_peer()).collect();
    assert!(
        matches!(
            told.as_slice(),
            [
                Message::HandoffAccepted { id: a },
                Message::ConnClosed { id: b },
                Message::HandoffAccepted { id: c },
            ] if (*a, *b, *c) == (DP_ID, DP_ID, DP_ID + 1)
        ),
        "the first connection's FE hears it was taken and is over, the second's that it is live: {told:?}"
    );
}

#[test]
fn notices_read_after_the_client_reused_its_port_act_on_the_connection_they_name() {
    let mut n2 = node(1, PolicyKind::Hash);
    let key = key_at(N2);
    let deadline = super::monotonic_ns() + HANDOFF_TIMEOUT.as_nanos() as u64 / 2;
    let taken = |isn: u32, id: u64| {
        let mut entry = left_behind(ConnRole::Be, ConnState::BeEstablished, N1, id);
        entry.client_isn = isn;
        entry.flags = baton_bpf::conn_flags::DP_OFFER | baton_bpf::conn_flags::DP_TAKEN;
        entry.live_deadline_ns = deadline;
        entry
    };
    let (first, second) = (
        taken(CLIENT_ISN, DP_ID),
        taken(CLIENT_ISN.wrapping_add(100_000), DP_ID + 1),
    );
    // The first connection was taken, served and closed, and the client's next one on the
    // tuple taken in its place, all before the agent read a notice: the table has the second.
    n2.table.0.lock().unwrap().insert(key, second);
    n2.tcp.set(&key, tcp_state::ESTABLISHED);
    for kind in [EventKind::DpTaken, EventKind::BeLive] {
        n2.datapath(notice_of(kind, key, &first));
    }
    n2.datapath(Event {
        detail: CloseCode::Gone as u32,
        ..notice_of(EventKind::Closed, key, &first)
    });
    for kind in [EventKind::DpTaken, EventKind::BeLive] {
        n2.datapath(notice_of(kind, key, &second));
    }
    first_over_second_live(&mut n2);
    assert_eq!(
        n2.table.get(&key).map(|e| e.handoff_id),
        Some(DP_ID + 1),
        "the second connection keeps its entry"
    );
    assert_eq!(n2.metrics.handoffs_in.get(), 2);

    // Read the other way round: the first was taken on, then the second replaced it before
    // the first's close was read. The first is over (its FE told so once), the second lives.
    let mut n2 = node(1, PolicyKind::Hash);
    n2.table.0.lock().unwrap().insert(key, first);
    n2.tcp.set(&key, tcp_state::ESTABLISHED);
    n2.datapath(notice_of(EventKind::DpTaken, key, &first));
    n2.table.0.lock().unwrap().insert(key, second);
    n2.datapath(notice_of(EventKind::DpTaken, key, &second));
    n2.datapath(Event {
        detail: CloseCode::Gone as u32,
        ..notice_of(EventKind::Closed, key, &first)
    });
    first_over_second_live(&mut n2);
    assert!(
        n2.table.get(&key).is_some(),
        "the second connection's entry stays"
    );
}

#[test]
fn a_followed_datapath_offer_taken_here_is_quiesced_by_its_responses() {
    let mut n2 = node_with(1, PolicyKind::Hash, FOLLOW);
    let deadline = super::monotonic_ns() + HANDOFF_TIMEOUT.as_nanos() as u64 / 2;
    let (followed, plain) = (key_at(N2), key_at_port(N2, CLIENT_PORT + 1));
    for (key, id, flags) in [
        (followed, DP_ID, baton_bpf::conn_flags::FOLLOWED),
        (plain, DP_ID + 1, 0),
    ] {
        let mut entry = left_behind(ConnRole::Be, ConnState::BeEstablished, N1, id);
        entry.flags = baton_bpf::conn_flags::DP_OFFER | baton_bpf::conn_flags::DP_TAKEN | flags;
        entry.live_deadline_ns = deadline;
        n2.table.0.lock().unwrap().insert(key, entry);
        n2.tcp.set(&key, tcp_state::ESTABLISHED);
        n2.datapath(notice(EventKind::DpTaken, key));
        assert!(matches!(
            n2.next_to_peer(),
            Some(Message::HandoffAccepted { .. })
        ));
    }
    // The datapath counted the followed one's responses from the server's SYN-ACK on: one,
    // 1000 bytes.
    let counted = Responses {
        next_head: 1000,
        count: 1,
        ..Responses::default()
    };
    n2.follow
        .0
        .lock()
        .unwrap()
        .responses
        .insert(followed, counted);
    for (id, port, answer) in [
        (DP_ID, CLIENT_PORT, None),
        (DP_ID + 1, CLIENT_PORT + 1, Some(BusyReason::Untracked)),
    ] {
        let mut ack = client_segment(N1, 40, TcpFlags::ACK, b"");
        ack.src_port = port;
        ack.ack = 1000;
        n2.hear(Message::MoveQuiesce {
            id,
            attempt: 7,
            requests: 1,
            segment: ack.build(),
        });
        match (n2.next_to_peer(), answer) {
            (Some(Message::MoveQuiet { id: i, .. }), None) => assert_eq!(i, id),
            (Some(Message::MoveBusy { reason, .. }), Some(want)) => assert_eq!(reason, want),
            (other, want) => panic!("port {port}: {other:?}, want busy {want:?}"),
        }
    }
}

#[test]
fn requests_the_datapath_let_stay_are_counted_for_the_next_move() {
    let (mut n1, key, _, next_head) = followed_at_n2();
    assert_eq!(
        n1.written.get().decide,
        DecideMode::HashStays as u8,
        "the datapath keeps followed requests where they hash"
    );
    // Two requests hashed to n2 went on there, decided by n1's datapath.
    let head = request(&target_for(1));
    let mut at = next_head;
    for _ in 0..2 {
        at = at.wrapping_add(head.len() as u32);
        n1.datapath(Event {
            detail: at,
            ..notice(EventKind::NextHeadStayed, key)
        });
    }
    assert_eq!(n1.metrics.requests_stayed.get(), 2);
    assert!(
        n1.sent.take().is_empty(),
        "the agent sends nothing for them"
    );
    // The next one, for n1, is held where the datapath said the next head starts: n2 is asked
    // for all three responses.
    let next = request(&target_for(0));
    let segment = client_segment(
        N1,
        at.wrapping_sub(CLIENT_ISN + 1),
        TcpFlags::ACK | TcpFlags::PSH,
        &next,
    );
    n1.datapath(event(EventKind::NextHead, key, &segment));
    let Some(Message::MoveQuiesce { requests, .. }) = n1.next_to_peer() else {
        panic!("no quiesce: the held head was not read at the next head")
    };
    assert_eq!(requests, 3);
}

#[test]
fn a_serving_node_that_is_not_quiet_keeps_the_request() {
    let (mut n1, key, id, next_head) = followed_at_n2();
    let offset = next_head.wrapping_sub(CLIENT_ISN + 1);
    let head = request(&target_for(0));
    let segment = client_segment(N1, offset, TcpFlags::ACK | TcpFlags::PSH, &head);
    n1.datapath(event(EventKind::NextHead, key, &segment));
    let Some(Message::MoveQuiesce { attempt, .. }) = n1.next_to_peer() else {
        panic!("no quiesce")
    };
    n1.hear(Message::MoveBusy {
        id,
        attempt,
        reason: BusyReason::Responding,
    });
    let sent = n1.sent.take();
    assert_eq!(
        (sent.len(), sent[0].dst),
        (1, N2),
        "the request goes where the connection is"
    );
    assert_eq!(n1.metrics.rehandoff_fallbacks.get("busy_responding"), 1);
    assert_eq!(n1.table.get(&key).unwrap().peer_addr, N2.octets());
}

#[test]
fn a_quiesce_waits_for_our_tcp_to_take_the_clients_ack() {
    let (mut n2, key) = live_followed(5);
    n2.follow.responded(&key, 1000);
    let queues = (key.local(), key.client());
    n2.tcp.0.lock().unwrap().queues.insert(queues, (0, 1000));
    n2.hear(Message::MoveQuiesce {
        id: 5,
        attempt: 50,
        requests: 1,
        segment: client_ack(FE_ISN + 1 + 1000),
    });
    assert_eq!(n2.next_to_peer(), None);
    n2.wait(Duration::from_millis(1));
    assert_eq!(n2.next_to_peer(), None, "still not taken");
    // Taken (its server let go of the socket): quiet at the next look.
    n2.tcp.0.lock().unwrap().queues.clear();
    n2.wait(Duration::from_millis(2));
    assert_eq!(
        n2.next_to_peer(),
        Some(Message::MoveQuiet { id: 5, attempt: 50 })
    );
    assert_eq!(n2.metrics.quiesce_rechecks.get(), 2);
    n2.wait(Duration::from_millis(100));
    assert_eq!(n2.next_to_peer(), None, "answered once");
}

/// n2 with a followed connection from n1 live, its TCP established.
fn live_followed(id: u64) -> (Node, ConnKey) {
    let mut n2 = node_with(1, PolicyKind::Hash, FOLLOW);
    n2.hear(Message::HandoffRequest(HandoffRequest {
        follow: true,
        ..handoff_request(id)
    }));
    let key = key_at(N2);
    n2.datapath(be_synack());
    // The datapath names our server's socket by its first packet.
    n2.datapath(Event {
        sock_cookie: SERVER_SOCKET_COOKIE,
        ..notice(EventKind::BeLive, key)
    });
    n2.next_to_peer();
    n2.tcp.set(&key, tcp_state::ESTABLISHED);
    n2.sent.take();
    (n2, key)
}

/// The cookie of the server socket of [`live_followed`]'s connection.
const SERVER_SOCKET_COOKIE: u64 = 0x5eed_c00c;

fn client_ack(acked: u32) -> Vec<u8> {
    let mut ack = client_segment(N1, 40, TcpFlags::ACK, b"");
    ack.ack = acked;
    ack.build()
}

#[test]
fn a_serving_node_freezes_only_when_every_response_is_out_and_acknowledged() {
    let (mut n2, key) = live_followed(5);
    assert_eq!(
        n2.follow.responses(&key).map(|r| r.next_head),
        Some(BE_ISN + 1),
        "responses are counted from the first byte our server sends"
    );
    let quiesce = |acked| Message::MoveQuiesce {
        id: 5,
        attempt: 50,
        requests: 1,
        segment: client_ack(acked),
    };
    n2.hear(quiesce(FE_ISN + 1 + 1000));
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::MoveBusy {
            reason: BusyReason::Responding,
            ..
        })
    ));
    let sent = n2.sent.take();
    assert_eq!(
        (sent.len(), sent[0].dst, sent[0].ack),
        (1, N2, BE_ISN + 1 + 1000),
        "the client's ACK is given to our TCP, translated"
    );
    n2.follow.responded(&key, 1000);
    n2.tcp
        .0
        .lock()
        .unwrap()
        .queues
        .insert((key.local(), key.client()), (0, 20));
    n2.sent.take();
    n2.hear(quiesce(FE_ISN + 1 + 1000));
    assert_eq!(
        n2.next_to_peer(),
        None,
        "no answer yet: our TCP may not have taken the ACK"
    );
    // It never does: busy after the rechecks (1, 2 and 4 ms: within a quarter of the 40 ms
    // handoff timeout), the ACK given again each time.
    for _ in 0..3 {
        n2.wait(Duration::from_millis(4));
    }
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::MoveBusy {
            reason: BusyReason::Unacked,
            ..
        })
    ));
    assert_eq!(n2.metrics.quiesce_rechecks.get(), 3);
    assert_eq!(n2.sent.take().len(), 4);
    n2.tcp.0.lock().unwrap().queues.clear();
    n2.hear(quiesce(FE_ISN + 1 + 900));
    assert!(
        matches!(
            n2.next_to_peer(),
            Some(Message::MoveBusy {
                reason: BusyReason::Responding,
                ..
            })
        ),
        "the client has not acknowledged the whole response"
    );
    assert_eq!(n2.follow.watch(&key), None);
    let questions = n2.tcp.0.lock().unwrap().questions;
    n2.hear(quiesce(FE_ISN + 1 + 1000));
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::MoveQuiet { id: 5, attempt: 50 })
    ));
    assert_eq!(
        n2.tcp.0.lock().unwrap().questions,
        questions + 1,
        "one look at our TCP's queues, once frozen"
    );
    assert!(
        n2.follow
            .watch(&key)
            .is_some_and(|w| w.flags & baton_bpf::watch_flags::FROZEN != 0),
        "frozen: nothing our TCP sends leaves"
    );

    // Released: our side ends, without a close notice; its traces go after the linger.
    n2.hear(Message::MoveRelease { id: 5, attempt: 49 });
    assert_eq!(
        n2.tcp.state(&key),
        Some(tcp_state::ESTABLISHED),
        "not by another attempt's word"
    );
    let questions = n2.tcp.0.lock().unwrap().questions;
    n2.hear(Message::MoveRelease { id: 5, attempt: 50 });
    assert_eq!(n2.tcp.state(&key), None, "the socket is destroyed");
    assert_eq!(
        n2.tcp.0.lock().unwrap().questions,
        questions,
        "by its cookie, with no lookup first"
    );
    assert_eq!(n2.metrics.moved_away.get(), 1);
    n2.wait(LINGER);
    assert!(n2.table.get(&key).is_none());
    assert_eq!(n2.follow.watch(&key), None);
    assert!(n2.follow.responses(&key).is_none());
    assert!(
        n2.next_to_peer().is_none(),
        "no ConnClosed for a connection that moved"
    );
}

#[test]
fn a_resumed_connection_speaks_again_and_a_forgotten_one_ends() {
    let (mut n2, key) = live_followed(6);
    n2.follow.responded(&key, 500);
    let quiesce = Message::MoveQuiesce {
        id: 6,
        attempt: 60,
        requests: 1,
        segment: client_ack(FE_ISN + 1 + 500),
    };
    n2.hear(quiesce.clone());
    assert!(matches!(n2.next_to_peer(), Some(Message::MoveQuiet { .. })));
    n2.sent.take();
    // The request the FE held comes with the resume, and goes in once our TCP may speak.
    let head = request("/f/1k");
    let mut held = client_segment(N1, 40, TcpFlags::ACK | TcpFlags::PSH, b"");
    held.ack = FE_ISN + 1 + 500;
    n2.hear(Message::MoveResume {
        id: 6,
        attempt: 60,
        segment: held.build(),
        data: head.clone(),
    });
    assert_eq!(n2.follow.watch(&key), None, "unfrozen");
    assert_eq!(n2.tcp.state(&key), Some(tcp_state::ESTABLISHED));
    let sent = n2.sent.take();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        (
            sent[0].dst,
            sent[0].seq,
            sent[0].ack,
            sent[0].payload.as_slice()
        ),
        (
            N2,
            CLIENT_ISN.wrapping_add(41),
            BE_ISN + 1 + 500,
            head.as_slice()
        ),
        "translated into our TCP's space"
    );

    // Frozen again, and the FE never says: the side ends after twice the handoff wait.
    n2.hear(quiesce);
    assert!(matches!(n2.next_to_peer(), Some(Message::MoveQuiet { .. })));
    n2.wait(HANDOFF_TIMEOUT);
    assert_eq!(n2.tcp.state(&key), Some(tcp_state::ESTABLISHED));
    n2.wait(HANDOFF_TIMEOUT);
    assert_eq!(n2.tcp.state(&key), None);
}

#[test]
fn a_refused_move_resumes_the_serving_node_with_the_request_and_an_offered_one_is_awaited() {
    let (mut n1, key, id, next_head) = followed_at_n2();
    let offset = next_head.wrapping_sub(CLIENT_ISN + 1);
    let head = request(&target_for(0));
    let segment = client_segment(N1, offset, TcpFlags::ACK | TcpFlags::PSH, &head);
    n1.datapath(event(EventKind::NextHead, key, &segment));
    let Some(Message::MoveQuiesce { attempt, .. }) = n1.next_to_peer() else {
        panic!("no quiesce")
    };
    n1.hear(Message::MoveQuiet { id, attempt });
    n1.sent.take();
    // The offer (to this node itself) is out: a stop must wait for it, never cut it short.
    assert!(!n1.engine.settled(), "a hand-over waits for the move");
    n1.engine.stop_following_all(n1.now);
    assert!(
        n1.next_to_peer().is_none(),
        "no resume while the new node may be live"
    );
    // Refused (here: our TCP answered the replayed SYN with a RST): the entry forwards to n2
    // again, and n2 gets the request with its resume.
    let mut rst = TcpPacketBuilder::new(N1, 80, CLIENT, CLIENT_PORT);
    rst.seq = 0;
    rst.ack = next_head;
    rst.flags = TcpFlags::RST | TcpFlags::ACK;
    n1.datapath(event(EventKind::BeSynAck, key, &rst));
    let entry = n1.table.get(&key).unwrap();
    assert_eq!(
        (entry.state(), entry.peer_addr),
        (Some(ConnState::FeForward), N2.octets())
    );
    let Some(Message::MoveResume {
        id: resumed,
        attempt: a,
        data,
        ..
    }) = n1.next_to_peer()
    else {
        panic!("no resume")
    };
    assert_eq!((resumed, a, data), (id, attempt, head));
    assert!(
        n1.sent.take().iter().all(|p| p.dst != N2),
        "the request is not sent on its own to a TCP that may still be frozen"
    );
    assert!(n1.engine.settled());
    assert_eq!(n1.follow.watch(&key), None, "following ended with the stop");
}

#[test]
fn lard_asks_its_dispatcher_for_every_followed_request() {
    // n1 is the dispatcher (the first live member); n2 accepts and follows.
    let mut n2 = node_with(1, PolicyKind::Lard, FOLLOW);
    let head = request("/a");
    let key = hold_at(&mut n2, N2, &head);
    let Some(Message::DispatchQuery { id, .. }) = n2.next_to_peer() else {
        panic!("the first request asks the dispatcher")
    };
    // Its answer names n2 (position 1): served here, followed.
    n2.hear(Message::DispatchAnswer { id, node: 1 });
    let next_head = CLIENT_ISN.wrapping_add(1 + head.len() as u32);
    assert_eq!(n2.follow.watch(&key), Some(Watch::heads_at(next_head, 1)));
    n2.sent.take();
    let second = request("/b");
    let segment = client_segment(
        N2,
        head.len() as u32,
        TcpFlags::ACK | TcpFlags::PSH,
        &second,
    );
    n2.datapath(event(EventKind::NextHead, key, &segment));
    let Some(Message::DispatchQuery { id, target }) = n2.next_to_peer() else {
        panic!("the next request asks the dispatcher too")
    };
    assert_eq!(target, "/b");
    assert!(
        n2.sent.take().is_empty(),
        "held while the dispatcher decides"
    );
    n2.hear(Message::DispatchAnswer { id, node: 1 });
    let sent = n2.sent.take();
    assert_eq!(
        (sent.len(), sent[0].dst, sent[0].payload.as_slice()),
        (1, N2, second.as_slice()),
        "it stays: into our own TCP"
    );
    assert_eq!(n2.metrics.requests_stayed.get(), 1);

    // A silent dispatcher: bounded-load hashing decides, as for a first request.
    let third = request("/c");
    let offset = (head.len() + second.len()) as u32;
    let segment = client_segment(N2, offset, TcpFlags::ACK | TcpFlags::PSH, &third);
    n2.datapath(event(EventKind::NextHead, key, &segment));
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::DispatchQuery { .. })
    ));
    n2.wait(Duration::from_millis(30));
    assert_eq!(n2.metrics.dispatch_fallbacks.get(), 1);
    let placed = n2.metrics.requests_stayed.get() == 2
        || matches!(n2.next_to_peer(), Some(Message::MoveQuiesce { .. }));
    assert!(placed, "placed by the fallback");
}

// ----- datapath offers ---------------------------------------------------------------------

const DP_ID: u64 = (1 << 63) | 77;

/// n1's entry for a connection its datapath offered n2 itself, with the notice it sends.
fn dp_offered(n1: &mut Node) -> ConnKey {
    let key = key_at(N1);
    let mut entry = held_entry();
    entry.state = ConnState::FeForward as u8;
    entry.flags = baton_bpf::conn_flags::SYNACK_SEEN | baton_bpf::conn_flags::DP_OFFER;
    entry.peer_addr = N2.octets();
    entry.handoff_id = DP_ID;
    n1.table.0.lock().unwrap().insert(key, entry);
    n1.datapath(dp_offered_notice(key, DP_ID));
    key
}

/// The datapath's notice that it offered `key`'s connection under `id`.
fn dp_offered_notice(key: ConnKey, id: u64) -> Event {
    Event {
        handoff_id: id,
        ..notice(EventKind::DpOffered, key)
    }
}

fn dp_returned(key: ConnKey, reason: RefuseReason) -> Event {
    Event {
        detail: u32::from(reason.code()),
        peer: N2,
        sock_cookie: 0,
        handoff_id: 0,
        ..notice(EventKind::DpReturned, key)
    }
}

#[test]
fn the_datapath_offers_only_to_peers_that_take_them() {
    let mut n1 = node(0, PolicyKind::Hash);
    let config = n1.written.get();
    assert_eq!(config.offers, 1, "it takes peers' offers");
    assert_eq!(
        config.offer_key,
        baton_proto::datapath_offer_key(b"0123456789abcdef0123456789abcdef")
    );
    assert_eq!(config.live_window_ns, HANDOFF_TIMEOUT.as_nanos() as u64 / 2);
    assert_eq!(
        config.nodes[1].addr, [0; 4],
        "n2 has not said it takes them"
    );
    n1.hear(Message::Capabilities {
        datapath_offers: true,
        followed_offers: false,
    });
    let config = n1.written.get();
    assert_eq!(
        (config.nodes[1].addr, config.nodes[0].addr),
        (N2.octets(), [0; 4])
    );
    assert_eq!(config.nodes[1].follows, 0, "n2 takes no followed offers");
    n1.hear(Message::Capabilities {
        datapath_offers: true,
        followed_offers: true,
    });
    assert_eq!(n1.written.get().nodes[1].follows, 1);
    // Its agent goes: the next one says again what it can do.
    n1.mesh(MeshEvent::PeerDown { peer: 1 });
    let config = n1.written.get();
    assert_eq!((config.nodes[1].addr, config.nodes[1].follows), ([0; 4], 0));

    // Switched off: nothing offered, nothing taken, and peers are told so.
    let mut config = NodeConfig::from_toml(&config_text(0, PolicyKind::Hash, "")).unwrap();
    config.limits.datapath_offers = false;
    let mut n1 = node_from(0, config);
    let told = std::iter::from_fn(|| n1.sent_to_peer()).find_map(|m| match m {
        Message::Capabilities {
            datapath_offers,
            followed_offers,
        } => Some((datapath_offers, followed_offers)),
        _ => None,
    });
    assert_eq!(told, Some((false, false)));
    n1.hear(Message::Capabilities {
        datapath_offers: true,
        followed_offers: true,
    });
    let config = n1.written.get();
    assert_eq!((config.offers, config.nodes[1].addr), (0, [0; 4]));
}

#[test]
fn a_datapath_offer_is_answered_like_the_agents_own() {
    // Accepted: forwarded. Our TCP's half-open side is the datapath's to end, as the client
    // acknowledges the BE's bytes (fe_reset_local).
    let mut n1 = node(0, PolicyKind::Hash);
    let key = dp_offered(&mut n1);
    assert!(!n1.engine.settled(), "an offer is out");
    n1.hear(Message::HandoffAccepted { id: DP_ID });
    assert_eq!(n1.sent.take(), [], "no RST of ours");
    assert_eq!(n1.metrics.handoffs_out.get(), 1);
    assert!(n1.engine.settled());
    let mut live = n1.table.get(&key).unwrap();
    live.flags |= baton_bpf::conn_flags::DP_LIVE;
    n1.table.0.lock().unwrap().insert(key, live);
    n1.hear(Message::ConnClosed { id: DP_ID });
    n1.wait(LINGER);
    assert!(n1.table.get(&key).is_none(), "gone after its linger");
    assert_eq!(n1.sent.take(), [], "the datapath ended our half-open side");

    // One whose client never acknowledged the BE's bytes: its half-open side ends with the
    // entry.
    let mut n1 = node(0, PolicyKind::Hash);
    let key = dp_offered(&mut n1);
    n1.hear(Message::HandoffAccepted { id: DP_ID });
    n1.hear(Message::ConnClosed { id: DP_ID });
    n1.wait(LINGER);
    assert!(n1.table.get(&key).is_none());
    let sent = n1.sent.take();
    assert!(
        sent.len() == 1 && sent[0].flags == TcpFlags::RST,
        "{sent:?}"
    );

    // Accepted for an offer whose notice this agent never read (a full ring): found in the
    // datapath's table, not aborted.
    let mut n1 = node(0, PolicyKind::Hash);
    let key = dp_offered(&mut n1);
    n1.engine.fe.conns.remove(&key);
    n1.engine.fe.handoffs.remove(&DP_ID);
    n1.hear(Message::HandoffAccepted { id: DP_ID });
    assert!(n1.next_to_peer().is_none(), "no abort");
    assert_eq!(n1.metrics.handoffs_out.get(), 1);

    // The client's next connection on the tuple came before the answer (the peer's agent reads
    // its notices in batches): the late Accepted is for an offer given up, and told so at
    // once, without a look through the whole table.
    let mut n1 = node(0, PolicyKind::Hash);
    let key = dp_offered(&mut n1);
    let mut next = n1.table.get(&key).unwrap();
    next.client_isn = CLIENT_ISN.wrapping_add(1 << 20);
    next.handoff_id = DP_ID + 1;
    n1.table.0.lock().unwrap().insert(key, next);
    n1.datapath(dp_offered_notice(key, DP_ID + 1));
    let scans = n1.table.1.load(std::sync::atomic::Ordering::Relaxed);
    n1.hear(Message::HandoffAccepted { id: DP_ID });
    assert!(matches!(n1.next_to_peer(), Some(Message::HandoffAbort { id }) if id == DP_ID));
    assert_eq!(n1.table.1.load(std::sync::atomic::Ordering::Relaxed), scans);
    n1.hear(Message::HandoffAccepted { id: DP_ID + 1 });
    assert!(n1.next_to_peer().is_none(), "the newer one is handed off");
    assert_eq!(n1.metrics.handoffs_out.get(), 1);

    // The agent so far behind that it reads the offer's notice only after the client's next
    // connection on the tuple took the entry: that offer is given up as well.
    let mut n1 = node(0, PolicyKind::Hash);
    let key = key_at(N1);
    let mut next = held_entry();
    next.state = ConnState::FeForward as u8;
    next.flags = baton_bpf::conn_flags::SYNACK_SEEN | baton_bpf::conn_flags::DP_OFFER;
    next.peer_addr = N2.octets();
    next.handoff_id = DP_ID + 1;
    n1.table.0.lock().unwrap().insert(key, next);
    n1.datapath(dp_offered_notice(key, DP_ID));
    n1.datapath(dp_offered_notice(key, DP_ID + 1));
    let scans = n1.table.1.load(std::sync::atomic::Ordering::Relaxed);
    n1.hear(Message::HandoffAccepted { id: DP_ID });
    assert!(matches!(n1.next_to_peer(), Some(Message::HandoffAbort { id }) if id == DP_ID));
    assert_eq!(
        n1.table.1.load(std::sync::atomic::Ordering::Relaxed),
        scans,
        "no walk through the table"
    );
    n1.hear(Message::HandoffAccepted { id: DP_ID + 1 });
    assert!(n1.next_to_peer().is_none());
    assert_eq!(n1.metrics.handoffs_out.get(), 1);

    // No answer: the entry goes (the client's retransmission reaches our TCP), nothing is
    // replayed (the agent has no bytes of it), and the peer is told to drop its side.
    let mut n1 = node(0, PolicyKind::Hash);
    let key = dp_offered(&mut n1);
    n1.wait(HANDOFF_TIMEOUT);
    assert!(matches!(n1.next_to_peer(), Some(Message::HandoffAbort { id }) if id == DP_ID));
    assert!(n1.table.get(&key).is_none());
    assert!(n1.sent.take().is_empty());
    assert_eq!(fallbacks(&n1.metrics, "timeout"), 1);

    // No answer, but the client acknowledged the peer's data (its datapath took it while its
    // agent stalls): handed off, never served here.
    let mut n1 = node(0, PolicyKind::Hash);
    let key = dp_offered(&mut n1);
    let mut entry = n1.table.get(&key).unwrap();
    entry.flags |= baton_bpf::conn_flags::DP_LIVE;
    n1.table.0.lock().unwrap().insert(key, entry);
    n1.wait(HANDOFF_TIMEOUT);
    assert!(n1.next_to_peer().is_none(), "no abort");
    assert_eq!(n1.sent.take(), [], "the datapath ended our half-open side");
    assert!(n1.table.get(&key).is_some(), "still forwarded");
    assert_eq!(fallbacks(&n1.metrics, "timeout"), 0);

    // No answer, and the client reused the port for a new connection (the old one ended where
    // it was): not served here, and the new connection's entry is left alone.
    let mut n1 = node(0, PolicyKind::Hash);
    let key = dp_offered(&mut n1);
    let mut newer = held_entry();
    newer.client_isn = CLIENT_ISN.wrapping_add(1 << 20);
    n1.table.0.lock().unwrap().insert(key, newer);
    n1.wait(HANDOFF_TIMEOUT);
    assert!(n1.next_to_peer().is_none(), "no abort");
    assert_eq!(
        n1.table.get(&key).map(|e| e.client_isn),
        Some(newer.client_isn)
    );
    assert_eq!(fallbacks(&n1.metrics, "timeout"), 0);

    // Refused by the peer's agent (its deadline passed): the same.
    let mut n1 = node(0, PolicyKind::Hash);
    let key = dp_offered(&mut n1);
    n1.hear(Message::HandoffRefused {
        id: DP_ID,
        reason: RefuseReason::Timeout,
    });
    assert!(n1.table.get(&key).is_none());
    assert_eq!(fallbacks(&n1.metrics, "refused_timeout"), 1);
}

#[test]
fn a_datapath_offer_refused_by_the_peers_datapath_is_served_here_or_offered_again() {
    // No listener there: the datapath served it here; the agent counts it and stops choosing n2.
    let mut n1 = node(0, PolicyKind::Hash);
    let key = dp_offered(&mut n1);
    n1.table.0.lock().unwrap().remove(&key);
    n1.datapath(dp_returned(key, RefuseReason::NoListener));
    assert_eq!(fallbacks(&n1.metrics, "refused_no_listener"), 1);
    assert_eq!(n1.written.get().nodes[1].eligible, 0);
    assert!(n1.engine.settled());
    // A late Accepted is for an offer given up: n2 must drop its side.
    n1.hear(Message::HandoffAccepted { id: DP_ID });
    assert!(matches!(n1.next_to_peer(), Some(Message::HandoffAbort { id }) if id == DP_ID));

    // Back before this agent read the offer's notice (its entry already gone): counted all the
    // same.
    let mut n1 = node(0, PolicyKind::Hash);
    n1.datapath(dp_returned(key_at(N1), RefuseReason::NoListener));
    assert_eq!(fallbacks(&n1.metrics, "refused_no_listener"), 1);
    assert_eq!(n1.written.get().nodes[1].eligible, 0);

    // The tuple in use there: the datapath holds the segment for this agent, whose own offer
    // (by the mesh) may end what holds it.
    let mut n1 = node(0, PolicyKind::Hash);
    let key = dp_offered(&mut n1);
    let mut entry = n1.table.get(&key).unwrap();
    entry.state = ConnState::FeHold as u8;
    entry.flags = baton_bpf::conn_flags::SYNACK_SEEN | baton_bpf::conn_flags::AGENT_HOLDS;
    n1.table.0.lock().unwrap().insert(key, entry);
    n1.datapath(dp_returned(key, RefuseReason::Collision));
    let head = request(&target_for(1));
    n1.datapath(event(
        EventKind::HeldPacket,
        key,
        &client_segment(N1, 0, TcpFlags::ACK | TcpFlags::PSH, &head),
    ));
    let Some(Message::HandoffRequest(r)) = n1.next_to_peer() else {
        panic!("offered by the agent")
    };
    assert_eq!(r.data, head);
    assert_ne!(r.id, DP_ID);
    assert_eq!(fallbacks(&n1.metrics, "refused_collision"), 0);
}

#[test]
fn a_peers_datapath_offer_is_handed_in_once_live_or_refused_by_its_deadline() {
    let mut n2 = node(1, PolicyKind::Hash);
    let (live, late) = (key_at(N2), key_at_port(N2, CLIENT_PORT + 1));
    let deadline = super::monotonic_ns() + HANDOFF_TIMEOUT.as_nanos() as u64 / 2;
    for (key, id) in [(live, DP_ID), (late, DP_ID + 1)] {
        let mut entry = left_behind(ConnRole::Be, ConnState::BeReplayed, N1, id);
        entry.flags = baton_bpf::conn_flags::DP_OFFER | baton_bpf::conn_flags::DP_TAKEN;
        entry.live_deadline_ns = deadline;
        n2.table.0.lock().unwrap().insert(key, entry);
        n2.datapath(notice(EventKind::DpTaken, key));
    }
    assert!(!n2.engine.settled(), "a hand-over would wait for them");
    n2.datapath(notice(EventKind::BeLive, live));
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::HandoffAccepted { id: DP_ID })
    ));
    assert_eq!(n2.metrics.handoffs_in.get(), 1);
    n2.wait(HANDOFF_TIMEOUT);
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::HandoffRefused {
            id,
            reason: RefuseReason::Timeout
        }) if id == DP_ID + 1
    ));
    assert!(
        n2.sent
            .take()
            .iter()
            .any(|p| p.flags == TcpFlags::RST && p.src_port == CLIENT_PORT + 1),
        "our TCP's half of the late one is reset"
    );
    assert!(n2.table.get(&late).is_none() && n2.table.get(&live).is_some());
    // An abort for a datapath offer this agent has not heard of: its side ends all the same.
    let other = key_at_port(N2, CLIENT_PORT + 2);
    let mut entry = left_behind(ConnRole::Be, ConnState::BeEstablished, N1, DP_ID + 2);
    entry.flags = baton_bpf::conn_flags::DP_OFFER;
    n2.table.0.lock().unwrap().insert(other, entry);
    n2.hear(Message::HandoffAbort { id: DP_ID + 2 });
    assert!(n2.table.get(&other).is_none());
    assert!(
        n2.sent
            .take()
            .iter()
            .any(|p| p.flags == TcpFlags::RST && p.src_port == CLIENT_PORT + 2)
    );

    // Closed: the FE hears of it by the datapath's id.
    n2.datapath(notice(EventKind::Closed, live));
    n2.tcp.set(&live, tcp_state::TIME_WAIT);
    n2.wait(LINGER);
    assert!(matches!(
        n2.next_to_peer(),
        Some(Message::ConnClosed { id: DP_ID })
    ));
}
