//! What the engine asks of the kernel, as four small traits: the datapath's conn table and its
//! configuration, packet injection, and the local TCP's view of connections. The agent runs with
//! the real ones ([`ConnTable`], [`ConfigMap`], [`Injector`], [`SockDiag`]); the engine's unit
//! tests run with in-memory ones.

use std::net::SocketAddrV4;

use std::net::Ipv4Addr;

use baton_bpf::datapath::{ConfigMap, ConnTable};
use baton_bpf::{Conn, ConnKey, NodeConfig};

use crate::inject::{InjectError, Injector};
use crate::sockdiag::{ServiceSockets, SockDiag, SockDiagError};

/// How an insertion treats an existing entry (BPF_ANY, BPF_NOEXIST, BPF_EXIST).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// Create or replace.
    Any,
    /// Only if the key is free: an existing entry is a collision.
    New,
    /// Only if the key is still there: a concurrent removal wins.
    Existing,
}

impl Insert {
    fn bpf_flags(self) -> u64 {
        match self {
            Insert::Any => 0,
            Insert::New => 1,
            Insert::Existing => 2,
        }
    }
}

pub trait ConnTableOps: Send {
    fn get(&self, key: &ConnKey) -> Option<Conn>;
    fn insert(&mut self, key: ConnKey, conn: Conn, mode: Insert) -> Result<(), String>;
    fn remove(&mut self, key: &ConnKey);
    fn entries(&self) -> Vec<(ConnKey, Conn)>;
}

pub trait PacketSink: Send {
    /// Hands one complete IPv4 packet to the node's IP layer.
    fn send(&self, packet: &[u8]) -> Result<(), InjectError>;
}

pub trait TcpStates: Send {
    /// The local TCP's state of the connection `local` <-> `remote`, `None` if it has none.
    fn tcp_state(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<Option<u8>, SockDiagError>;
    /// The established connections on `addr`'s `ports` (the node's load), and whether each of
    /// them has a listener.
    fn service_sockets(
        &mut self,
        addr: Ipv4Addr,
        ports: &[u16],
    ) -> Result<ServiceSockets, SockDiagError>;
}

pub trait DatapathConfig: Send {
    /// Replaces the datapath's node configuration.
    fn write(&mut self, config: &NodeConfig) -> Result<(), String>;
}

impl ConnTableOps for ConnTable {
    fn get(&self, key: &ConnKey) -> Option<Conn> {
        ConnTable::get(self, key, 0).ok()
    }
    fn insert(&mut self, key: ConnKey, conn: Conn, mode: Insert) -> Result<(), String> {
        ConnTable::insert(self, key, conn, mode.bpf_flags()).map_err(|e| e.to_string())
    }
    fn remove(&mut self, key: &ConnKey) {
        let _ = ConnTable::remove(self, key);
    }
    fn entries(&self) -> Vec<(ConnKey, Conn)> {
        self.iter().filter_map(Result::ok).collect()
    }
}

impl PacketSink for Injector {
    fn send(&self, packet: &[u8]) -> Result<(), InjectError> {
        Injector::send(self, packet)
    }
}

impl TcpStates for SockDiag {
    fn tcp_state(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<Option<u8>, SockDiagError> {
        SockDiag::tcp_state(self, local, remote)
    }
    fn service_sockets(
        &mut self,
        addr: Ipv4Addr,
        ports: &[u16],
    ) -> Result<ServiceSockets, SockDiagError> {
        SockDiag::service_sockets(self, addr, ports)
    }
}

impl DatapathConfig for ConfigMap {
    fn write(&mut self, config: &NodeConfig) -> Result<(), String> {
        self.set(0, config, 0).map_err(|e| e.to_string())
    }
}

/// The kernel as the engine sees it.
pub struct Kernel {
    pub conns: Box<dyn ConnTableOps>,
    pub datapath: Box<dyn DatapathConfig>,
    pub inject: Box<dyn PacketSink>,
    pub tcp: Box<dyn TcpStates>,
}
