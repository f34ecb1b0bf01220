//! Packet injection: hands whole IPv4 packets to this node's IP layer through a raw socket.
//!
//! A packet addressed to one of this node's own addresses is delivered to the local TCP over the
//! loopback path, below no TC hook of the cluster interface: that is how the agent replays a held
//! handshake to the local server (local release, BE replay) and resets a half-open connection.
//! A packet addressed elsewhere leaves through the routing table (the FE sends held bytes to the
//! BE this way). The caller builds complete packets with valid checksums (`baton_wire`).
//!
//! The local TCP usually handles an injected packet within the `sendto` call, so its answers (a
//! replayed SYN's SYN-ACK) are on the event ring when the call returns. Not always: a socket its
//! server is in a call on takes the packet from its backlog when the call ends, and a busy CPU
//! defers softirqs to ksoftirqd. What is read from the kernel after an injection must allow for
//! that (a move's quiesce looks again). Each injection is marked
//! (`AgentMap::around`) so that the datapath does not wake the agent for them: the contract is that
//! the caller reads the ring after injecting.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use std::sync::Arc;

use baton_bpf::datapath::AgentMap;

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("socket(AF_INET, SOCK_RAW, IPPROTO_RAW): {0}")]
    Socket(io::Error),
    #[error("sendto({dst}) of a {len}-byte packet: {source}")]
    Send {
        dst: Ipv4Addr,
        len: usize,
        source: io::Error,
    },
    #[error("packet of {0} bytes is not an IPv4 packet")]
    NotIpv4(usize),
}

pub struct Injector {
    fd: OwnedFd,
    mark: Arc<AgentMap>,
}

impl Injector {
    pub fn new(mark: Arc<AgentMap>) -> Result<Self, InjectError> {
        // SAFETY: plain socket(2) call; the result is checked before it is wrapped.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        };
        if fd < 0 {
            return Err(InjectError::Socket(io::Error::last_os_error()));
        }
        Ok(Injector {
            // SAFETY: fd is a fresh descriptor we own.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            mark,
        })
    }

    /// Sends one complete IPv4 packet (IP_HDRINCL) to its destination address.
    pub fn send(&self, packet: &[u8]) -> Result<(), InjectError> {
        if packet.len() < 20 || packet[0] >> 4 != 4 {
            return Err(InjectError::NotIpv4(packet.len()));
        }
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: buffer and address are valid for the duration of the call.
        let n = self.mark.around(|| unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        });
        if n < 0 {
            return Err(InjectError::Send {
                dst,
                len: packet.len(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}
