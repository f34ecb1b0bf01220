//! What the engine asks of the kernel, as five small traits: the datapath's conn table, its
//! per-request maps, the rest of the datapath (its configuration and the load counter), packet
//! injection, and the local TCP's view of connections. The agent runs with the real ones
//! ([`ConnTable`], [`FollowMaps`], [`DatapathHandles`], [`Injector`], [`SockDiag`]); the engine's
//! unit tests run with in-memory ones.

use std::net::SocketAddrV4;

use std::net::Ipv4Addr;

use std::sync::Arc;

use baton_bpf::datapath::{
    AgentMap, BoundedCountsMap, BoundedViewMap, ConfigMap, ConnTable, Counters, ResponsesTable,
    WatchTable,
};
use baton_bpf::{BoundedCounts, BoundedView, Conn, ConnKey, NodeConfig, Responses, Stat, Watch};

use crate::inject::{InjectError, Injector};
use crate::sockdiag::{SockDiag, SockDiagError, TcpQueues};

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

/// The per-request maps: `watch` (the agent's word on a followed connection: where the next
/// request head starts, whether the serving node's TCP is frozen) and `responses` (the
/// datapath's count of the responses a serving node's server sent).
pub trait FollowTables: Send {
    fn set_watch(&mut self, key: ConnKey, watch: Watch) -> Result<(), String>;
    fn watch(&self, key: &ConnKey) -> Option<Watch>;
    fn remove_watch(&mut self, key: &ConnKey);
    /// Starts counting the responses of `key`, whose first response byte is `first_seq` in the
    /// local TCP's sequence space.
    fn start_responses(&mut self, key: ConnKey, first_seq: u32) -> Result<(), String>;
    fn responses(&self, key: &ConnKey) -> Option<Responses>;
    fn remove_responses(&mut self, key: &ConnKey);
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
    /// The established connections on `addr`'s `ports` (the node's load): an expensive count.
    fn established(&mut self, addr: Ipv4Addr, ports: &[u16]) -> Result<u32, SockDiagError>;
    /// Whether each of `addr`'s `ports` has a listener.
    fn listening(&mut self, addr: Ipv4Addr, ports: &[u16]) -> Result<bool, SockDiagError>;
    /// The state and queues of the connection `local` <-> `remote`, `None` if it has none.
    fn queues(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<Option<TcpQueues>, SockDiagError>;
    /// Ends the local TCP's connection `local` <-> `remote` at once (SOCK_DESTROY: the socket is
    /// closed as by a RST, the server's reads and writes fail). False if there was none.
    fn destroy(&mut self, local: SocketAddrV4, remote: SocketAddrV4)
    -> Result<bool, SockDiagError>;
    /// Ends the TIME_WAIT on `local` <-> `remote`, and no connection that is not in TIME_WAIT.
    /// False if there was none.
    fn destroy_time_wait(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<bool, SockDiagError>;
    /// Ends the socket `local` <-> `remote` whose cookie is `cookie` (a timewait socket has its
    /// connection's), in one round trip. False if there was none, or another socket.
    fn destroy_by_cookie(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        cookie: u64,
    ) -> Result<bool, SockDiagError>;
}

pub trait DatapathControl: Send {
    /// Replaces the datapath's node configuration.
    fn write(&mut self, config: &NodeConfig) -> Result<(), String>;
    /// How the service sockets changed, as the datapath counted.
    fn service_changes(&self) -> Result<ServiceChanges, String>;
    /// Replaces what the datapath's bounded-load hashing decides by.
    fn write_bounded(&mut self, view: &BoundedView) -> Result<(), String>;
    /// What the datapath decided by bounded loads, per member (the counts only grow).
    fn bounded_decided(&self) -> Result<BoundedCounts, String>;
    /// This agent is alive until `alive_until_ns` (CLOCK_MONOTONIC): the datapath holds new
    /// connections for it until then, and fails open after.
    fn heartbeat(&self, alive_until_ns: u64);
    /// The datapath fails open from now on: it holds nothing new for this agent.
    fn stand_down(&self);
}

/// The datapath's running counts of service sockets changing state (they only grow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceChanges {
    /// Connections that entered ESTABLISHED, and that left it.
    pub opened: u64,
    pub closed: u64,
    /// Listeners that opened, and that closed.
    pub listeners_opened: u64,
    pub listeners_closed: u64,
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
    fn established(&mut self, addr: Ipv4Addr, ports: &[u16]) -> Result<u32, SockDiagError> {
        SockDiag::established(self, addr, ports)
    }
    fn queues(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<Option<TcpQueues>, SockDiagError> {
        SockDiag::queues(self, local, remote)
    }
    fn listening(&mut self, addr: Ipv4Addr, ports: &[u16]) -> Result<bool, SockDiagError> {
        SockDiag::listening(self, addr, ports)
    }
    fn destroy(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<bool, SockDiagError> {
        SockDiag::destroy(self, local, remote)
    }
    fn destroy_time_wait(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<bool, SockDiagError> {
        SockDiag::destroy_time_wait(self, local, remote)
    }
    fn destroy_by_cookie(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        cookie: u64,
    ) -> Result<bool, SockDiagError> {
        SockDiag::destroy_by_cookie(self, local, remote, cookie)
    }
}

/// The datapath's per-request maps.
pub struct FollowMaps {
    pub watch: WatchTable,
    pub responses: ResponsesTable,
}

impl FollowTables for FollowMaps {
    fn set_watch(&mut self, key: ConnKey, watch: Watch) -> Result<(), String> {
        self.watch.insert(key, watch, 0).map_err(|e| e.to_string())
    }
    fn watch(&self, key: &ConnKey) -> Option<Watch> {
        self.watch.get(key, 0).ok()
    }
    fn remove_watch(&mut self, key: &ConnKey) {
        let _ = self.watch.remove(key);
    }
    fn start_responses(&mut self, key: ConnKey, first_seq: u32) -> Result<(), String> {
        let start = Responses {
            next_head: first_seq,
            ..Responses::default()
        };
        self.responses
            .insert(key, start, 0)
            .map_err(|e| e.to_string())
    }
    fn responses(&self, key: &ConnKey) -> Option<Responses> {
        self.responses.get(key, 0).ok()
    }
    fn remove_responses(&mut self, key: &ConnKey) {
        let _ = self.responses.remove(key);
    }
}

/// The datapath's configuration map, counters and agent word, and the namespace whose sockets
/// it counts.
pub struct DatapathHandles {
    pub config: ConfigMap,
    pub bounded: BoundedViewMap,
    pub bounded_counts: BoundedCountsMap,
    pub counters: Arc<Counters>,
    pub agent: Arc<AgentMap>,
    pub netns_inum: u32,
    /// The cluster interface's MTU: a datapath offer must fit it.
    pub mtu: u16,
}

impl DatapathControl for DatapathHandles {
    fn write(&mut self, config: &NodeConfig) -> Result<(), String> {
        let config = NodeConfig {
            netns_inum: self.netns_inum,
            mtu: self.mtu,
            tai_offset_ns: tai_offset_ns(),
            ..*config
        };
        self.config.set(0, config, 0).map_err(|e| e.to_string())
    }
    fn service_changes(&self) -> Result<ServiceChanges, String> {
        let read = |stat| self.counters.stat(stat).map_err(|e| e.to_string());
        Ok(ServiceChanges {
            opened: read(Stat::ServingOpened)?,
            closed: read(Stat::ServingClosed)?,
            listeners_opened: read(Stat::ListenOpened)?,
            listeners_closed: read(Stat::ListenClosed)?,
        })
    }
    fn write_bounded(&mut self, view: &BoundedView) -> Result<(), String> {
        self.bounded.set(0, view, 0).map_err(|e| e.to_string())
    }
    fn bounded_decided(&self) -> Result<BoundedCounts, String> {
        self.bounded_counts.get(&0, 0).map_err(|e| e.to_string())
    }
    fn heartbeat(&self, alive_until_ns: u64) {
        self.agent.heartbeat(alive_until_ns);
    }
    fn stand_down(&self) {
        self.agent.stand_down();
    }
}

/// The kernel as the engine sees it.
pub struct Kernel {
    pub conns: Box<dyn ConnTableOps>,
    pub follow: Box<dyn FollowTables>,
    pub datapath: Box<dyn DatapathControl>,
    pub inject: Box<dyn PacketSink>,
    pub tcp: Box<dyn TcpStates>,
}

/// The MTU of `interface` in the calling thread's network namespace (`SIOCGIFMTU`).
pub fn interface_mtu(interface: &str) -> std::io::Result<u16> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let name = interface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::other("interface name too long"));
    }
    // SAFETY: plain socket(2); the result is checked before it is wrapped.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, b) in req.ifr_name.iter_mut().zip(name) {
        *slot = *b as libc::c_char;
    }
    // SAFETY: the request and its buffer are valid for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFMTU filled the mtu member of the union.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(u16::try_from(mtu).unwrap_or(u16::MAX))
}

/// CLOCK_TAI − UTC as the kernel keeps it (`adjtimex`, read only), in ns; 0 if it cannot tell.
/// NTP daemons that know the leap seconds set it (37 s since 2017); many leave it at 0. The
/// datapath subtracts it so that every node stamps its offers in UTC.
fn tai_offset_ns() -> i64 {
    // SAFETY: timex is plain data; all-zero (modes 0) asks adjtimex to read only.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: a valid timex for the duration of the call.
    if unsafe { libc::adjtimex(&mut tx) } < 0 {
        return 0;
    }
    i64::from(tx.tai) * 1_000_000_000
}
