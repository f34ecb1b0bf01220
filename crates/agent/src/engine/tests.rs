//! The engine's decisions, driven by hand: datapath events, control messages and ticks go in; the
//! conn table, the injected packets and the messages to peers are checked. The kernel is replaced
//! by in-memory tables (the real one is exercised end to end in `crates/cli/tests`).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_bpf::{Conn, ConnKey, ConnRole, ConnState, Event, EventKind};
use baton_policy::PolicyKind;
use baton_proto::{HandoffRequest, Message, RefuseReason};
use baton_wire::{
    Ipv4Packet, SynOptions, TcpFlags, TcpOption, TcpPacketBuilder, TcpSegment, emit_options,
};
use tokio::sync::mpsc;

use super::Engine;
use crate::config::NodeConfig;
use crate::inject::InjectError;
use crate::kernel::{ConnTableOps, Insert, Kernel, PacketSink, TcpStates};
use crate::mesh::{MeshEvent, MeshSender};
use crate::metrics::Metrics;
use crate::sockdiag::{SockDiagError, tcp_state};

const N1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const N2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
const CLIENT_PORT: u16 = 40000;
const CLIENT_ISN: u32 = 0xffff_fff0;
const FE_ISN: u32 = 0x1000_0000;
const FE_TSVAL: u32 = 5_000;
const BE_ISN: u32 = 0x2000_0000;
const BE_TSVAL: u32 = 9_000_000;

#[derive(Clone, Default)]
struct Table(Arc<Mutex<HashMap<ConnKey, Conn>>>);

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
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
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

#[derive(Clone, Default)]
struct Tcp(Arc<Mutex<HashMap<(SocketAddrV4, SocketAddrV4), u8>>>);

impl TcpStates for Tcp {
    fn tcp_state(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<Option<u8>, SockDiagError> {
        Ok(self.0.lock().unwrap().get(&(local, remote)).copied())
    }
    fn established(&mut self, ports: &[u16]) -> Result<u32, SockDiagError> {
        let states = self.0.lock().unwrap();
        let serving = states.iter().filter(|((local, _), state)| {
            **state == tcp_state::ESTABLISHED && ports.contains(&local.port())
        });
        Ok(serving.count() as u32)
    }
}

struct Node {
    engine: Engine,
    table: Table,
    sent: Sent,
    tcp: Tcp,
    to_peer: mpsc::Receiver<Message>,
    metrics: Metrics,
}

fn config(me: usize, policy: PolicyKind) -> NodeConfig {
    let name = format!("n{}", me + 1);
    let address = [N1, N2][me];
    NodeConfig::from_toml(&format!(
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
[limits]
hold_ms = 40
handoff_timeout_ms = 40
dispatch_timeout_ms = 30
close_linger_ms = 10
"#
    ))
    .unwrap()
}

/// Node `me` (0 = n1, 1 = n2) of a two-node cluster whose peer is up.
fn node(me: usize, policy: PolicyKind) -> Node {
    let (table, sent, tcp) = (Table::default(), Sent::default(), Tcp::default());
    let (tx, to_peer) = mpsc::channel(64);
    let mut outbound = vec![None, None];
    outbound[1 - me] = Some(tx);
    let metrics = Metrics::default();
    let kernel = Kernel {
        conns: Box::new(table.clone()),
        inject: Box::new(sent.clone()),
        tcp: Box::new(tcp.clone()),
    };
    let mut engine = Engine::new(
        config(me, policy),
        kernel,
        MeshSender::new(outbound),
        Arc::new(AtomicU32::new(0)),
        metrics.clone(),
    );
    let peer = 1 - me;
    engine.on_mesh(MeshEvent::PeerUp { peer });
    engine.on_mesh(MeshEvent::Message {
        peer,
        message: Message::Heartbeat {
            load: 0,
            sent_at_ms: 0,
        },
    });
    Node {
        engine,
        table,
        sent,
        tcp,
        to_peer,
        metrics,
    }
}

fn key_at(node: Ipv4Addr) -> ConnKey {
    ConnKey::new(
        SocketAddrV4::new(CLIENT, CLIENT_PORT),
        SocketAddrV4::new(node, 80),
    )
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

/// The FE's entry for a connection whose handshake the datapath is holding.
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
        syn_opts,
        syn_opts_len,
        synack_opts,
        synack_opts_len,
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

fn held(key: ConnKey, packet: &TcpPacketBuilder) -> Event {
    let bytes = packet.build();
    Event {
        kind: EventKind::HeldPacket,
        key,
        pkt_len: bytes.len() as u32,
        ts_ns: 0,
        packet: bytes,
    }
}

/// A target the hash policy gives to node `want` (0-based) of n1, n2.
fn target_for(want: usize) -> String {
    use baton_policy::{ClusterView, NodeState, Policy, RequestInfo};
    let nodes: Vec<NodeState> = ["n1", "n2"]
        .iter()
        .map(|n| NodeState {
            name: n.to_string(),
            up: true,
            load: 0,
        })
        .collect();
    let view = ClusterView {
        self_index: 0,
        nodes: &nodes,
        now_ms: 0,
    };
    (0..10_000)
        .map(|k| format!("/f/1k?k={k}"))
        .find(|t| {
            baton_policy::Hash.choose(
                &RequestInfo {
                    method: "GET",
                    target: t,
                    host: None,
                },
                &view,
            ) == want
        })
        .unwrap()
}

fn request(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: baton\r\n\r\n").into_bytes()
}

/// n1 holds a connection, gets the handshake ACK and `head`.
fn hold(n1: &mut Node, head: &[u8]) -> ConnKey {
    let key = key_at(N1);
    n1.table.0.lock().unwrap().insert(key, held_entry());
    n1.engine
        .on_datapath(held(key, &client_segment(N1, 0, TcpFlags::ACK, b"")));
    n1.engine.on_datapath(held(
        key,
        &client_segment(N1, 0, TcpFlags::ACK | TcpFlags::PSH, head),
    ));
    key
}

fn fallbacks(m: &Metrics, reason: &str) -> u64 {
    m.fallbacks
        .get_or_create(&crate::metrics::Reason::new(reason))
        .get()
}

#[test]
fn local_decision_replays_the_handshake_and_request_into_the_local_tcp() {
    let mut n1 = node(0, PolicyKind::Hash);
    let head = request(&target_for(0));
    let key = hold(&mut n1, &head);
    assert!(
        n1.table.get(&key).is_none(),
        "a local connection leaves the table"
    );
    let sent = n1.sent.take();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let (ack, data) = (&sent[0], &sent[1]);
    assert_eq!(
        (ack.dst, ack.flags, ack.seq, ack.ack),
        (N1, TcpFlags::ACK, CLIENT_ISN.wrapping_add(1), FE_ISN + 1)
    );
    assert_eq!(
        (data.dst, data.seq, data.ack),
        (N1, CLIENT_ISN.wrapping_add(1), FE_ISN + 1)
    );
    assert_eq!(data.payload, head);
    assert_eq!(n1.metrics.local.get(), 1);
    assert!(n1.to_peer.try_recv().is_err(), "nothing goes to the peer");
}

#[test]
fn remote_decision_offers_then_forwards() {
    let mut n1 = node(0, PolicyKind::Hash);
    let head = request(&target_for(1));
    let key = hold(&mut n1, &head);
    assert!(
        n1.sent.take().is_empty(),
        "nothing is released while the peer decides"
    );
    let Ok(Message::HandoffRequest(r)) = n1.to_peer.try_recv() else {
        panic!("no handoff request")
    };
    assert_eq!((r.client, r.fe_service), (key.client(), key.local()));
    assert_eq!(
        (r.fe_isn, r.fe_tsval),
        (FE_ISN, FE_TSVAL),
        "fe_tsval is the TSval the client echoed"
    );
    let syn = TcpPacketBuilder::parse(&r.syn).unwrap();
    assert_eq!(
        (syn.seq, syn.flags, syn.window),
        (CLIENT_ISN, TcpFlags::SYN, 64240)
    );
    assert_eq!(
        SynOptions::from_options(&syn.options),
        SynOptions::from_options(&syn_options(100, 0))
    );
    assert_eq!(TcpPacketBuilder::parse(&r.ack).unwrap().ack, FE_ISN + 1);

    n1.engine.on_mesh(MeshEvent::Message {
        peer: 1,
        message: Message::HandoffAccepted { id: r.id },
    });
    let entry = n1.table.get(&key).unwrap();
    assert_eq!(
        (entry.state(), entry.peer_addr),
        (Some(ConnState::FeForward), N2.octets())
    );
    let sent = n1.sent.take();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(
        (sent[0].dst, sent[0].flags, sent[0].seq),
        (N1, TcpFlags::RST, CLIENT_ISN.wrapping_add(1)),
        "our half-open side is reset"
    );
    assert!(
        sent[0].options.is_empty(),
        "a RST without timestamps skips PAWS"
    );
    assert_eq!(
        (sent[1].dst, &sent[1].payload),
        (N2, &head),
        "the request follows to the BE"
    );
    assert_eq!(n1.metrics.handoffs_out.get(), 1);

    // A late copy of a held segment follows the connection to the BE.
    n1.engine.on_datapath(held(
        key,
        &client_segment(N1, 0, TcpFlags::ACK | TcpFlags::PSH, &head),
    ));
    assert_eq!(n1.sent.take()[0].dst, N2);
}

#[test]
fn refusal_timeout_and_slow_heads_are_served_locally() {
    let mut n1 = node(0, PolicyKind::Hash);
    let head = request(&target_for(1));
    hold(&mut n1, &head);
    let Ok(Message::HandoffRequest(r)) = n1.to_peer.try_recv() else {
        panic!()
    };
    // A refusal from the wrong peer is ignored; from the right one it means local service.
    n1.engine.on_mesh(MeshEvent::Message {
        peer: 0,
        message: Message::HandoffRefused {
            id: r.id,
            reason: RefuseReason::Collision,
        },
    });
    assert!(n1.sent.take().is_empty());
    n1.engine.on_mesh(MeshEvent::Message {
        peer: 1,
        message: Message::HandoffRefused {
            id: r.id,
            reason: RefuseReason::Collision,
        },
    });
    assert_eq!(n1.sent.take()[1].payload, head);
    assert_eq!(fallbacks(&n1.metrics, "refused_collision"), 1);

    let mut n1 = node(0, PolicyKind::Hash);
    hold(&mut n1, &head);
    let Ok(Message::HandoffRequest(r)) = n1.to_peer.try_recv() else {
        panic!()
    };
    std::thread::sleep(Duration::from_millis(60));
    n1.engine.on_tick();
    assert!(matches!(n1.to_peer.try_recv(), Ok(Message::HandoffAbort { id }) if id == r.id));
    assert_eq!(n1.sent.take()[1].payload, head);
    assert_eq!(fallbacks(&n1.metrics, "timeout"), 1);
    // Too late: the answer gets an abort, nothing else happens.
    n1.engine.on_mesh(MeshEvent::Message {
        peer: 1,
        message: Message::HandoffAccepted { id: r.id },
    });
    assert!(matches!(
        n1.to_peer.try_recv(),
        Ok(Message::HandoffAbort { .. })
    ));
    assert!(n1.sent.take().is_empty());

    let mut n1 = node(0, PolicyKind::Hash);
    let partial = &head[..10];
    hold(&mut n1, partial);
    std::thread::sleep(Duration::from_millis(60));
    n1.engine.on_tick();
    assert_eq!(
        n1.sent.take()[1].payload,
        partial,
        "what arrived is replayed; the client sends the rest"
    );
    assert_eq!(fallbacks(&n1.metrics, "hold_timeout"), 1);
}

#[test]
fn a_peer_that_goes_down_is_not_waited_for() {
    let mut n1 = node(0, PolicyKind::Hash);
    let head = request(&target_for(1));
    hold(&mut n1, &head);
    assert!(matches!(
        n1.to_peer.try_recv(),
        Ok(Message::HandoffRequest(_))
    ));
    n1.engine.on_mesh(MeshEvent::PeerDown { peer: 1 });
    assert_eq!(n1.sent.take()[1].payload, head);
    assert_eq!(fallbacks(&n1.metrics, "peer_down"), 1);
    // And it is not chosen while down.
    let mut n1b = node(0, PolicyKind::Hash);
    n1b.engine.on_mesh(MeshEvent::PeerDown { peer: 1 });
    hold(&mut n1b, &head);
    assert!(n1b.to_peer.try_recv().is_err());
    assert_eq!(n1b.sent.take().len(), 2);
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
        syn: syn.build(),
        ack: client_segment(N1, 0, TcpFlags::ACK, b"").build(),
    }
}

fn be_synack(options: Vec<TcpOption>) -> Event {
    let mut p = TcpPacketBuilder::new(N2, 80, CLIENT, CLIENT_PORT);
    p.seq = BE_ISN;
    p.ack = CLIENT_ISN.wrapping_add(1);
    p.flags = TcpFlags::SYN | TcpFlags::ACK;
    p.options = options;
    let bytes = p.build();
    Event {
        kind: EventKind::BeSynAck,
        key: key_at(N2),
        pkt_len: bytes.len() as u32,
        ts_ns: 0,
        packet: bytes,
    }
}

#[test]
fn be_replays_the_handshake_translated_and_accepts_once_established() {
    let mut n2 = node(1, PolicyKind::Hash);
    let key = key_at(N2);
    n2.engine.on_mesh(MeshEvent::Message {
        peer: 0,
        message: Message::HandoffRequest(handoff_request(7)),
    });
    let entry = n2.table.get(&key).expect("a BE entry before the replay");
    assert_eq!(
        (entry.role(), entry.state(), entry.peer_addr),
        (Some(ConnRole::Be), Some(ConnState::BeSynSent), N1.octets())
    );
    let sent = n2.sent.take();
    assert_eq!(
        (sent[0].dst, sent[0].flags, sent[0].seq),
        (N2, TcpFlags::SYN, CLIENT_ISN),
        "the SYN, readdressed to this node"
    );

    n2.tcp
        .0
        .lock()
        .unwrap()
        .insert((key.local(), key.client()), tcp_state::ESTABLISHED);
    n2.engine.on_datapath(be_synack(syn_options(BE_TSVAL, 100)));
    let entry = n2.table.get(&key).unwrap();
    assert_eq!(entry.state(), Some(ConnState::BeReplayed));
    assert_eq!(
        (entry.seq_delta, entry.ts_delta),
        (BE_ISN.wrapping_sub(FE_ISN), BE_TSVAL.wrapping_sub(FE_TSVAL))
    );
    let ack = &n2.sent.take()[0];
    assert_eq!(
        (ack.dst, ack.ack),
        (N2, BE_ISN + 1),
        "the ACK acknowledges our own SYN-ACK"
    );
    let echoed = ack.options.iter().find_map(|o| match o {
        TcpOption::Timestamps { tsecr, .. } => Some(*tsecr),
        _ => None,
    });
    assert_eq!(echoed, Some(BE_TSVAL), "and echoes our own SYN-ACK's TSval");
    assert!(matches!(
        n2.to_peer.try_recv(),
        Ok(Message::HandoffAccepted { id: 7 })
    ));
    assert_eq!(n2.metrics.handoffs_in.get(), 1);
}

#[test]
fn be_refuses_what_it_cannot_take_and_cleans_up() {
    // The local TCP never establishes the replay: refused, reset, forgotten.
    let mut n2 = node(1, PolicyKind::Hash);
    let key = key_at(N2);
    n2.engine.on_mesh(MeshEvent::Message {
        peer: 0,
        message: Message::HandoffRequest(handoff_request(1)),
    });
    n2.engine.on_datapath(be_synack(syn_options(BE_TSVAL, 100)));
    assert!(
        n2.to_peer.try_recv().is_err(),
        "not accepted before the local TCP confirms"
    );
    std::thread::sleep(Duration::from_millis(250));
    n2.engine.on_tick();
    assert!(matches!(
        n2.to_peer.try_recv(),
        Ok(Message::HandoffRefused {
            id: 1,
            reason: RefuseReason::Internal
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
    let mut n2 = node(1, PolicyKind::Hash);
    n2.engine.on_mesh(MeshEvent::Message {
        peer: 0,
        message: Message::HandoffRequest(handoff_request(2)),
    });
    let mut other = syn_options(BE_TSVAL, 100);
    other[4] = TcpOption::WindowScale(9);
    n2.engine.on_datapath(be_synack(other));
    assert!(matches!(
        n2.to_peer.try_recv(),
        Ok(Message::HandoffRefused {
            id: 2,
            reason: RefuseReason::OptionMismatch
        })
    ));
    assert!(n2.table.get(&key).is_none());

    // The tuple is in use by the local TCP: refused before anything is replayed.
    let mut n2 = node(1, PolicyKind::Hash);
    n2.tcp
        .0
        .lock()
        .unwrap()
        .insert((key.local(), key.client()), tcp_state::ESTABLISHED);
    n2.engine.on_mesh(MeshEvent::Message {
        peer: 0,
        message: Message::HandoffRequest(handoff_request(3)),
    });
    assert!(matches!(
        n2.to_peer.try_recv(),
        Ok(Message::HandoffRefused {
            id: 3,
            reason: RefuseReason::Collision
        })
    ));
    assert!(n2.sent.take().is_empty() && n2.table.get(&key).is_none());
}

#[test]
fn a_close_counts_only_once_the_local_tcp_agrees() {
    let mut n2 = node(1, PolicyKind::Hash);
    let key = key_at(N2);
    let established = (key.local(), key.client());
    n2.engine.on_mesh(MeshEvent::Message {
        peer: 0,
        message: Message::HandoffRequest(handoff_request(4)),
    });
    n2.tcp
        .0
        .lock()
        .unwrap()
        .insert(established, tcp_state::ESTABLISHED);
    n2.engine.on_datapath(be_synack(syn_options(BE_TSVAL, 100)));
    assert!(matches!(
        n2.to_peer.try_recv(),
        Ok(Message::HandoffAccepted { id: 4 })
    ));

    // The datapath saw a RST the local TCP ignored (out of window): nothing is torn down.
    let closed = Event {
        kind: EventKind::Closed,
        key,
        pkt_len: 0,
        ts_ns: 0,
        packet: Vec::new(),
    };
    n2.engine.on_datapath(closed.clone());
    std::thread::sleep(Duration::from_millis(20));
    n2.engine.on_tick();
    assert!(n2.table.get(&key).is_some());
    assert!(n2.to_peer.try_recv().is_err());

    // A real close: the FE is told and the entry goes.
    n2.tcp
        .0
        .lock()
        .unwrap()
        .insert(established, tcp_state::TIME_WAIT);
    n2.engine.on_datapath(closed);
    std::thread::sleep(Duration::from_millis(20));
    n2.engine.on_tick();
    assert!(matches!(
        n2.to_peer.try_recv(),
        Ok(Message::ConnClosed { id: 4 })
    ));
    assert!(n2.table.get(&key).is_none());
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
        n1.engine.on_datapath(held(key, &segment));
    }
    let sent = n1.sent.take();
    assert!(!sent.is_empty(), "released");
    assert_eq!(
        sent[0].payload,
        head[..32].to_vec(),
        "the bytes held so far go to the local TCP"
    );
    assert_eq!(fallbacks(&n1.metrics, "too_many_segments"), 1);
    assert!(n1.to_peer.try_recv().is_err());
    assert!(n1.table.get(&key).is_none());
}

#[test]
fn load_is_counted_from_the_local_tcp_and_big_changes_are_told_at_once() {
    let mut n1 = node(0, PolicyKind::LeastConn);
    {
        let mut states = n1.tcp.0.lock().unwrap();
        for port in 0..20u16 {
            let remote = SocketAddrV4::new(CLIENT, 50_000 + port);
            states.insert((SocketAddrV4::new(N1, 80), remote), tcp_state::ESTABLISHED);
        }
    }
    std::thread::sleep(Duration::from_millis(120));
    n1.engine.on_tick();
    assert_eq!(n1.metrics.load.get(), 20);
    assert!(matches!(
        n1.to_peer.try_recv(),
        Ok(Message::Heartbeat { load: 20, .. })
    ));
    // n1 now looks busier than n2 (load 0): least-conn hands the next request over.
    hold(&mut n1, &request("/anything"));
    assert!(matches!(
        n1.to_peer.try_recv(),
        Ok(Message::HandoffRequest(_))
    ));
}

/// Node `me` holds a connection to its own address with `head`.
fn hold_at(node: &mut Node, address: Ipv4Addr, head: &[u8]) -> ConnKey {
    let key = key_at(address);
    node.table.0.lock().unwrap().insert(key, held_entry());
    node.engine
        .on_datapath(held(key, &client_segment(address, 0, TcpFlags::ACK, b"")));
    node.engine.on_datapath(held(
        key,
        &client_segment(address, 0, TcpFlags::ACK | TcpFlags::PSH, head),
    ));
    key
}

#[test]
fn lard_asks_the_dispatcher_and_follows_its_answer() {
    // n2 is not the dispatcher (n1, the first live member, is): it asks, then does as told.
    let mut n2 = node(1, PolicyKind::Lard);
    hold_at(&mut n2, N2, &request("/hot/item"));
    let Ok(Message::DispatchQuery { id, target }) = n2.to_peer.try_recv() else {
        panic!("no question to the dispatcher")
    };
    assert_eq!(target, "/hot/item");
    assert!(
        n2.sent.take().is_empty(),
        "nothing is decided before the answer"
    );
    n2.engine.on_mesh(MeshEvent::Message {
        peer: 0,
        message: Message::DispatchAnswer { id, node: 0 },
    });
    assert!(
        matches!(n2.to_peer.try_recv(), Ok(Message::HandoffRequest(_))),
        "handed to n1 as the dispatcher said"
    );

    let mut n2 = node(1, PolicyKind::Lard);
    hold_at(&mut n2, N2, &request("/cold/item"));
    let Ok(Message::DispatchQuery { id, .. }) = n2.to_peer.try_recv() else {
        panic!()
    };
    n2.engine.on_mesh(MeshEvent::Message {
        peer: 0,
        message: Message::DispatchAnswer { id, node: 1 },
    });
    assert_eq!(
        n2.sent.take().len(),
        2,
        "served here as the dispatcher said"
    );
}

#[test]
fn a_silent_dispatcher_leaves_the_decision_to_bounded_hash() {
    let mut n2 = node(1, PolicyKind::Lard);
    hold_at(&mut n2, N2, &request("/x"));
    let Ok(Message::DispatchQuery { id, .. }) = n2.to_peer.try_recv() else {
        panic!("no question")
    };
    std::thread::sleep(Duration::from_millis(50));
    n2.engine.on_tick();
    assert_eq!(n2.metrics.dispatch_fallbacks.get(), 1);
    let served_here = !n2.sent.take().is_empty();
    let handed = matches!(n2.to_peer.try_recv(), Ok(Message::HandoffRequest(_)));
    assert!(
        served_here != handed,
        "the connection is decided, once, without the dispatcher"
    );
    // A late answer changes nothing.
    n2.engine.on_mesh(MeshEvent::Message {
        peer: 0,
        message: Message::DispatchAnswer { id, node: 0 },
    });
    assert!(n2.sent.take().is_empty() && n2.to_peer.try_recv().is_err());

    // With the dispatcher down, the next live member (here n2 itself) keeps the table.
    let mut n2 = node(1, PolicyKind::Lard);
    n2.engine.on_mesh(MeshEvent::PeerDown { peer: 0 });
    hold_at(&mut n2, N2, &request("/y"));
    assert!(
        n2.to_peer.try_recv().is_err(),
        "no question: n2 is the dispatcher now"
    );
    assert_eq!(n2.sent.take().len(), 2);
}

#[test]
fn the_dispatcher_answers_from_one_table() {
    let mut n1 = node(0, PolicyKind::Lard);
    let mut answers = Vec::new();
    for id in 0..3 {
        n1.engine.on_mesh(MeshEvent::Message {
            peer: 1,
            message: Message::DispatchQuery {
                id,
                target: "/same".into(),
            },
        });
        let Ok(Message::DispatchAnswer { id: answered, node }) = n1.to_peer.try_recv() else {
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
    match n1.to_peer.try_recv() {
        Ok(Message::HandoffRequest(_)) => assert_eq!(answers[0], 1),
        Err(_) => assert_eq!((answers[0], n1.sent.take().len()), (0, 2)),
        Ok(other) => panic!("the dispatcher asked or sent {other:?}"),
    }
}

#[test]
fn a_draining_node_takes_nothing_new_and_says_so() {
    // n1 drains: it tells n2, refuses handoffs, and stops being the dispatcher.
    let mut n1 = node(0, PolicyKind::Lard);
    assert!(n1.engine.drained());
    n1.engine.begin_drain();
    assert!(matches!(n1.to_peer.try_recv(), Ok(Message::Draining)));
    n1.engine.on_mesh(MeshEvent::Message {
        peer: 1,
        message: Message::HandoffRequest(handoff_request(8)),
    });
    assert!(matches!(
        n1.to_peer.try_recv(),
        Ok(Message::HandoffRefused {
            id: 8,
            reason: RefuseReason::Overloaded
        })
    ));

    // n2 hears it: n1 is neither chosen nor asked any more; n2 keeps the table itself.
    let mut n2 = node(1, PolicyKind::Lard);
    n2.engine.on_mesh(MeshEvent::Message {
        peer: 0,
        message: Message::Draining,
    });
    assert_eq!(n2.engine.dispatcher(), 1);
    hold_at(&mut n2, N2, &request("/z"));
    assert!(
        n2.to_peer.try_recv().is_err(),
        "no question to a draining dispatcher, no handoff to it"
    );
    assert_eq!(n2.sent.take().len(), 2, "served here");
    // Until it comes back as a new agent.
    n2.engine.on_mesh(MeshEvent::PeerUp { peer: 0 });
    assert_eq!(n2.engine.dispatcher(), 0);
}
