//! Checked views and emitters for IPv4 and TCP, in the style of smoltcp's `wire` module. No I/O.
//!
//! baton hands TCP connections from one node to another by rewriting packets below the kernel's
//! TCP stack. The eBPF programs do that rewriting in the kernel; this crate is its user-space
//! twin, used by the agent (which builds and replays packets) and by the tests of the eBPF
//! programs (which need an independent oracle for the bytes they should produce).
//!
//! - [`checksum`]: the Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//! - [`ipv4`]: [`Ipv4Packet`], a checked view over an IPv4 header and its payload.
//! - [`tcp`]: [`TcpSegment`], a checked view over a TCP header and its payload, and [`TcpFlags`].
//! - [`options`]: TCP options ([`TcpOption`]), the options a handshake negotiates
//!   ([`SynOptions`]), and the per-packet lookups the eBPF code does ([`find_timestamps`],
//!   [`find_sack`]).
//! - [`seq`]: [`SeqNumber`], sequence-number arithmetic modulo 2^32.
//! - [`translate`]: the rewrites of a handed-off connection's packets (addresses, seq/ack, SACK
//!   edges, timestamps) with checksums updated incrementally, as the eBPF programs do.
//! - [`build`]: [`TcpPacketBuilder`], which builds a complete IPv4+TCP packet and parses one back.
//!
//! # Contract
//!
//! Views are built with `new_checked`, which validates every length field against the buffer;
//! after that, getters never panic. `new_unchecked` skips validation, and its getters may then
//! panic on a short buffer, exactly as smoltcp's do. Every function that takes packet bytes
//! (`new_checked`, the parsers, the `find_*` lookups, the `translate` functions) returns an
//! [`Error`] or `None` for malformed input and never panics, whatever the bytes.
//!
//! Multi-byte fields are big-endian (network order) on the wire and native integers in the API.
//!
//! # Example
//!
//! A client's ACK arriving at the FE is forwarded to the BE and translated into the BE's
//! sequence and timestamp spaces; the checksums stay valid without being recomputed.
//!
//! ```
//! use std::net::Ipv4Addr;
//! use baton_wire::{Ipv4Packet, TcpFlags, TcpOption, TcpPacketBuilder, TcpSegment, Translation};
//!
//! let (client, fe, be) = (
//!     Ipv4Addr::new(198, 18, 0, 10),
//!     Ipv4Addr::new(198, 18, 0, 1),
//!     Ipv4Addr::new(198, 18, 0, 2),
//! );
//! let mut ack = TcpPacketBuilder::new(client, 40000, fe, 80);
//! ack.seq = 1001;
//! ack.ack = 5001;
//! ack.flags = TcpFlags::ACK;
//! let timestamps = TcpOption::Timestamps { tsval: 7, tsecr: 70 };
//! ack.options = vec![TcpOption::NoOp, TcpOption::NoOp, timestamps];
//! let mut pkt = ack.build();
//!
//! let t = Translation::from_handshakes(5000, 9000, 60, 1060); // FE/BE ISNs and TSvals
//! baton_wire::rewrite_dst_addr(&mut pkt, be)?;
//! baton_wire::translate_to_server(&mut pkt, &t)?;
//!
//! let ip = Ipv4Packet::new_checked(&pkt[..])?;
//! let tcp = TcpSegment::new_checked(ip.payload())?;
//! assert_eq!(ip.dst_addr(), be);
//! assert_eq!(tcp.ack_number(), 9001);
//! let tsval_at = baton_wire::find_timestamps(tcp.options()).unwrap();
//! assert_eq!(tcp.options()[tsval_at + 4..tsval_at + 8], 1070u32.to_be_bytes()); // TSecr
//! assert!(ip.verify_checksum() && tcp.verify_checksum(client, be));
//! # Ok::<(), baton_wire::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod build;
pub mod checksum;
pub mod ipv4;
pub mod offer;
pub mod options;
pub mod seq;
pub mod tcp;
pub mod translate;

pub use build::TcpPacketBuilder;
pub use ipv4::{Ipv4Packet, PROTO_TCP};
pub use offer::{OFFER_IPPROTO, OFFER_LEN, OfferError, OfferRepr, insert_offer, remove_offer};
pub use options::{
    OptionMismatch, SackBlocks, SynOptions, TcpOption, emit_options, find_sack, find_timestamps,
    parse_options,
};
pub use seq::SeqNumber;
pub use tcp::{TcpFlags, TcpSegment};
pub use translate::{
    Translation, rewrite_dst_addr, rewrite_src_addr, translate_to_client, translate_to_server,
};

/// Why bytes could not be read as (or made into) an IPv4 packet or a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than a fixed header, or than a length field says it should be.
    #[error("buffer too short for the header or for a length it declares")]
    Truncated,
    /// The IP version field is not 4.
    #[error("IP version is not 4")]
    BadVersion,
    /// A header length field (IPv4 IHL or TCP data offset) is below its minimum of 20 bytes.
    #[error("header length field below the 20-byte minimum")]
    BadHeaderLen,
    /// The IPv4 total length is smaller than the IPv4 header.
    #[error("IPv4 total length smaller than the header")]
    BadTotalLen,
    /// The IPv4 payload is not TCP.
    #[error("IPv4 payload is not TCP")]
    NotTcp,
    /// The IPv4 packet is a fragment, so it does not carry a whole TCP segment.
    #[error("IPv4 packet is a fragment")]
    Fragmented,
    /// A TCP option has a bad length or runs past the end of the options area.
    /// `offset` is the position of the option's kind byte within the options area.
    #[error("malformed TCP option at byte {offset} of the options area")]
    BadOption {
        /// Offset of the offending option's kind byte, from the start of the options area.
        offset: usize,
    },
    /// Emitted TCP options would take more than the 40 bytes a TCP header can hold.
    #[error("TCP options take {len} bytes, more than the 40 a header can hold")]
    OptionsTooLong {
        /// Length the options would take once padded.
        len: usize,
    },
    /// The packet would be longer than the 65535 bytes an IPv4 total length can express.
    #[error("packet would be {len} bytes, more than 65535")]
    PacketTooLong {
        /// Length the packet would take.
        len: usize,
    },
}

/// Read a big-endian u16 at `at`. Panics if out of bounds: only for offsets already validated
/// (or for the documented `new_unchecked` contract).
fn read_u16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

/// Read a big-endian u32 at `at`. Same bounds contract as [`read_u16`].
fn read_u32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

fn write_u16(data: &mut [u8], at: usize, value: u16) {
    data[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

fn write_u32(data: &mut [u8], at: usize, value: u32) {
    data[at..at + 4].copy_from_slice(&value.to_be_bytes());
}
