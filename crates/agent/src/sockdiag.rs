//! What the local TCP stack says, by `sock_diag` (INET_DIAG): about one connection, by an exact
//! lookup (the BE asks before replaying a handshake: is the tuple in use? and before forgetting a
//! closed or idle entry: is it over?), and about the service ports, by a dump (how many
//! connections this node serves, and whether its server listens); and ends one connection
//! (SOCK_DESTROY: an orphan, or the TIME_WAIT of a handed-in connection).

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, IPPROTO_TCP, SOCK_DIAG_BY_FAMILY};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags,
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_RECV: u8 = 3;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const LISTEN: u8 = 10;
}

#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    #[error("socket(AF_NETLINK, NETLINK_SOCK_DIAG): {0}")]
    Socket(std::io::Error),
    #[error("send/recv on the sock_diag socket: {0}")]
    Io(std::io::Error),
    #[error("sock_diag answer: {0}")]
    Answer(String),
}

pub struct SockDiag {
    socket: Socket,
    buf: Vec<u8>,
}

impl SockDiag {
    pub fn new() -> Result<Self, SockDiagError> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(SockDiagError::Socket)?;
        socket.bind_auto().map_err(SockDiagError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(SockDiagError::Socket)?;
        Ok(SockDiag {
            socket,
            buf: vec![0; 8192],
        })
    }

    /// The state of the TCP connection `local` <-> `remote`, or `None` when there is none (the
    /// kernel's exact lookup falls back to a listener on `local`: that is no connection).
    pub fn tcp_state(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<Option<u8>, SockDiagError> {
        Ok(self.lookup(local, remote)?.map(|h| h.state))
    }

    /// The state and queues of the connection `local` <-> `remote`, `None` if the local TCP has
    /// none.
    pub fn queues(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<Option<TcpQueues>, SockDiagError> {
        Ok(self.lookup(local, remote)?.map(|h| TcpQueues {
            state: h.state,
            unread: h.recv_queue,
            unacked: h.send_queue,
        }))
    }

    /// What sock_diag says of the connection `local` <-> `remote` (state, queues, cookie). The
    /// kernel's exact lookup falls back to a listener on `local`: that is no connection, `None`.
    fn lookup(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<Option<InetResponseHeader>, SockDiagError> {
        // No DUMP flag: an exact lookup.
        self.send_request(
            NLM_F_REQUEST,
            StateFlags::all(),
            exact_id(local, remote, None),
        )?;
        match self.answer()?.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                Ok((response.header.state != tcp_state::LISTEN).then_some(response.header))
            }
            NetlinkPayload::Error(e) if e.raw_code() == -libc::ENOENT => Ok(None),
            NetlinkPayload::Error(e) => Err(SockDiagError::Io(e.to_io())),
            other => Err(SockDiagError::Answer(format!("unexpected {other:?}"))),
        }
    }
}

/// A connection's state and queues, as sock_diag tells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpQueues {
    pub state: u8,
    /// Bytes received that the server has not read (for an established socket).
    pub unread: u32,
    /// Bytes the server wrote that the peer has not acknowledged, sent or not (a FIN counts one).
    pub unacked: u32,
}

/// The netlink message type that asks the kernel to close a socket (linux/sock_diag.h).
const SOCK_DESTROY: u16 = 21;

fn exact_id(local: SocketAddrV4, remote: SocketAddrV4, cookie: Option<[u8; 8]>) -> SocketId {
    let mut socket_id = SocketId::new_v4();
    socket_id.source_address = IpAddr::V4(*local.ip());
    socket_id.source_port = local.port();
    socket_id.destination_address = IpAddr::V4(*remote.ip());
    socket_id.destination_port = remote.port();
    // INET_DIAG_NOCOOKIE matches on the tuple alone.
    socket_id.cookie = cookie.unwrap_or([0xff; 8]);
    socket_id
}

impl SockDiag {
    /// Closes the TCP connection `local` <-> `remote` as a RST would (SOCK_DESTROY, which needs
    /// CONFIG_INET_DIAG_DESTROY). False when there is no such connection. The destroy names the
    /// socket by the cookie its lookup found: the kernel's lookup would fall back to the
    /// listener if the connection went meanwhile, and a cookie that does not match refuses.
    pub fn destroy(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<bool, SockDiagError> {
        let Some(cookie) = self.lookup(local, remote)?.map(|h| h.socket_id.cookie) else {
            return Ok(false);
        };
        self.destroy_exact(local, remote, cookie)
    }

    /// Ends the TIME_WAIT on `local` <-> `remote`, and nothing else: a connection on the tuple
    /// that is not in TIME_WAIT (the client's next one) stays. False when there was none.
    pub fn destroy_time_wait(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<bool, SockDiagError> {
        match self.lookup(local, remote)? {
            Some(h) if h.state == tcp_state::TIME_WAIT => {
                self.destroy_exact(local, remote, h.socket_id.cookie)
            }
            _ => Ok(false),
        }
    }

    /// Closes the socket `local` <-> `remote` whose cookie is `cookie` (`SO_COOKIE`, the
    /// datapath's `bpf_get_socket_cookie`; a timewait socket has its connection's) in one round
    /// trip. False when there is no such socket: none on the tuple, or another one.
    pub fn destroy_by_cookie(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        cookie: u64,
    ) -> Result<bool, SockDiagError> {
        // The kernel compares it as two host-order u32, low half first.
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&(cookie as u32).to_ne_bytes());
        bytes[4..].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        self.destroy_exact(local, remote, bytes)
    }

    fn destroy_exact(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        cookie: [u8; 8],
    ) -> Result<bool, SockDiagError> {
        let states = StateFlags::all() - StateFlags::LISTEN;
        self.send(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            states,
            exact_id(local, remote, Some(cookie)),
        )?;
        match self.answer()?.payload {
            NetlinkPayload::Error(e) if e.code.is_none() => Ok(true),
            // Gone meanwhile (or another socket on the tuple now).
            NetlinkPayload::Error(e)
                if e.raw_code() == -libc::ENOENT || e.raw_code() == -libc::ESTALE =>
            {
                Ok(false)
            }
            NetlinkPayload::Error(e) => Err(SockDiagError::Io(e.to_io())),
            other => Err(SockDiagError::Answer(format!("unexpected {other:?}"))),
        }
    }

    /// Reads the one answer to a request that is not a dump.
    fn answer(&mut self) -> Result<NetlinkMessage<SockDiagMessage>, SockDiagError> {
        let n = self
            .socket
            .recv(&mut &mut self.buf[..], 0)
            .map_err(SockDiagError::Io)?;
        NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[..n])
            .map_err(|e| SockDiagError::Answer(e.to_string()))
    }

    /// Sends one INET_DIAG request about TCP over IPv4.
    fn send_request(
        &mut self,
        flags: u16,
        states: StateFlags,
        socket_id: SocketId,
    ) -> Result<(), SockDiagError> {
        self.send(SOCK_DIAG_BY_FAMILY, flags, states, socket_id)
    }

    /// Sends one INET_DIAG request of netlink message type `message_type`.
    fn send(
        &mut self,
        message_type: u16,
        flags: u16,
        states: StateFlags,
        socket_id: SocketId,
    ) -> Result<(), SockDiagError> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family: AF_INET,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states,
                socket_id,
            })
            .into(),
        );
        request.finalize();
        request.header.message_type = message_type;
        let mut out = vec![0; request.buffer_len()];
        request.serialize(&mut out);
        self.socket.send(&out, 0).map_err(SockDiagError::Io)?;
        Ok(())
    }

    /// How many established connections the local TCP has on `addr`'s `ports`: the connections
    /// this node serves, local and handed in (its load). A dump of established sockets walks the
    /// kernel's whole established hash table (milliseconds): the agent anchors its count on one
    /// now and then, and follows the datapath's counter in between.
    pub fn established(&mut self, addr: Ipv4Addr, ports: &[u16]) -> Result<u32, SockDiagError> {
        let mut count = 0;
        self.dump(StateFlags::ESTABLISHED, |state, local, port| {
            if state == tcp_state::ESTABLISHED && local == addr && ports.contains(&port) {
                count += 1;
            }
        })?;
        Ok(count)
    }

    /// Whether every one of `ports` has a listener on `addr` (or on every address). A dump of
    /// listeners alone is cheap: the kernel walks only its listening hash table.
    pub fn listening(&mut self, addr: Ipv4Addr, ports: &[u16]) -> Result<bool, SockDiagError> {
        let mut found = vec![false; ports.len()];
        self.dump(StateFlags::LISTEN, |state, local, port| {
            let on_addr = local == addr || local == Ipv4Addr::UNSPECIFIED;
            if let Some(i) = ports.iter().position(|&p| p == port)
                && state == tcp_state::LISTEN
                && on_addr
            {
                found[i] = true;
            }
        })?;
        Ok(found.iter().all(|&f| f))
    }

    /// Dumps the IPv4 TCP sockets in `states`, calling `each(state, local address, local port)`.
    fn dump(
        &mut self,
        states: StateFlags,
        mut each: impl FnMut(u8, Ipv4Addr, u16),
    ) -> Result<(), SockDiagError> {
        self.send_request(NLM_F_REQUEST | NLM_F_DUMP, states, SocketId::new_v4())?;
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(SockDiagError::Io)?;
            let mut offset = 0;
            while offset < n {
                let message = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[offset..n])
                    .map_err(|e| SockDiagError::Answer(e.to_string()))?;
                let len = message.header.length as usize;
                match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        let id = &r.header.socket_id;
                        if let IpAddr::V4(local) = id.source_address {
                            each(r.header.state, local, id.source_port);
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => return Err(SockDiagError::Io(e.to_io())),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{Ipv4Addr, TcpListener, TcpStream};

    fn v4(addr: std::net::SocketAddr) -> SocketAddrV4 {
        match addr {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!("bound to 127.0.0.1"),
        }
    }

    /// A listener on loopback, a client connected to it, the server's side, and the server's
    /// (local, remote) addresses.
    fn connected() -> (
        TcpListener,
        TcpStream,
        TcpStream,
        SocketAddrV4,
        SocketAddrV4,
    ) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (local, remote) = (
            v4(server.local_addr().unwrap()),
            v4(server.peer_addr().unwrap()),
        );
        (listener, client, server, local, remote)
    }

    #[test]
    fn finds_an_established_connection_and_not_a_missing_one() {
        let (listener, client, _server, local, remote) = connected();
        let mut diag = SockDiag::new().unwrap();
        assert_eq!(
            diag.tcp_state(local, remote).unwrap(),
            Some(tcp_state::ESTABLISHED)
        );
        let nobody = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1);
        assert_eq!(diag.tcp_state(local, nobody).unwrap(), None);
        assert!(diag.established(*local.ip(), &[local.port()]).unwrap() >= 1);
        assert!(diag.listening(*local.ip(), &[local.port()]).unwrap());
        drop(listener);
        assert!(
            !diag.listening(*local.ip(), &[local.port()]).unwrap(),
            "the listener is gone"
        );
        drop(client);
    }

    #[test]
    fn destroys_a_connection_and_says_when_there_is_none() {
        let (_listener, mut client, server, local, remote) = connected();
        let mut diag = SockDiag::new().unwrap();
        assert!(diag.destroy(local, remote).unwrap(), "destroyed");
        assert_ne!(
            diag.tcp_state(local, remote).unwrap(),
            Some(tcp_state::ESTABLISHED),
            "the server's side is closed"
        );
        // The destroyed side sent a RST: the client's read fails or ends.
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert!(matches!(client.read(&mut buf), Ok(0) | Err(_)));
        // A tuple with no connection finds the listener in the kernel's lookup: never destroyed.
        let nobody = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1);
        assert!(!diag.destroy(local, nobody).unwrap(), "no such connection");
        assert!(
            diag.listening(*local.ip(), &[local.port()]).unwrap(),
            "the listener is untouched"
        );
        drop(server);
    }

    /// A connection the server closed first, over at both ends: the server's side in TIME_WAIT.
    /// With the listener (kept), and the cookie of the server's socket.
    fn in_time_wait() -> (TcpListener, SockDiag, SocketAddrV4, SocketAddrV4, u64) {
        let (listener, mut client, server, local, remote) = connected();
        let cookie = baton_bpf::cases::socket_cookie(&server).unwrap();
        drop(server);
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap(), 0);
        drop(client);
        let mut diag = SockDiag::new().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while diag.tcp_state(local, remote).unwrap() != Some(tcp_state::TIME_WAIT) {
            assert!(std::time::Instant::now() < deadline, "no TIME_WAIT");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        (listener, diag, local, remote, cookie)
    }

    #[test]
    fn a_time_wait_socket_can_be_destroyed() {
        let (_listener, mut diag, local, remote, _) = in_time_wait();
        assert!(diag.destroy_time_wait(local, remote).unwrap());
        assert_eq!(diag.tcp_state(local, remote).unwrap(), None);
    }

    #[test]
    fn only_a_time_wait_is_ended_as_one() {
        let (_listener, _client, _server, local, remote) = connected();
        let mut diag = SockDiag::new().unwrap();
        assert!(!diag.destroy_time_wait(local, remote).unwrap());
        assert_eq!(
            diag.tcp_state(local, remote).unwrap(),
            Some(tcp_state::ESTABLISHED)
        );
    }

    #[test]
    fn a_time_wait_socket_is_destroyed_by_its_connections_cookie_and_no_other() {
        let (_listener, mut diag, local, remote, cookie) = in_time_wait();
        assert!(!diag.destroy_by_cookie(local, remote, cookie ^ 1).unwrap());
        assert_eq!(
            diag.tcp_state(local, remote).unwrap(),
            Some(tcp_state::TIME_WAIT),
            "another cookie ends nothing"
        );
        assert!(diag.destroy_by_cookie(local, remote, cookie).unwrap());
        assert_eq!(diag.tcp_state(local, remote).unwrap(), None);
        // With the tuple empty, the kernel's lookup finds the listener: its cookie is not ours.
        assert!(!diag.destroy_by_cookie(local, remote, cookie).unwrap());
        assert!(diag.listening(*local.ip(), &[local.port()]).unwrap());
    }
}
