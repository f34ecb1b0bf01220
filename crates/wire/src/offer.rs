//! The datapath offer header ([`OfferRepr`]): what a node's eBPF datapath puts between the IPv4
//! and TCP headers of a client's first data segment when it hands the connection to another node
//! by itself, and what comes back on the same segment when that node refuses
//! (`struct offer` in `crates/bpf/c/lib/conn.h`, the flow in `crates/bpf/c/lib/offer.h`).
//!
//! The header is [`OFFER_LEN`] bytes right after an option-less IPv4 header; the packet's IPv4
//! protocol is [`OFFER_IPPROTO`] and its total length counts the header. Every field is in
//! network byte order but `mac`: SipHash-2-4 ([`siphash24`]) of the [`MAC_COVERS`] bytes before
//! it, keyed with the cluster's 16-byte key, stored as the datapath stores a `__u64` (little
//! endian, the byte order of the eBPF targets baton runs on). The key is read as two
//! little-endian words and the message as 12, exactly as the reference implementation reads
//! its inputs, so the `siphasher` crate gives the datapath's value.
//!
//! A [`kind::REPLAY`] copy (the BE's own copy of an offer, never sent between nodes) is sealed
//! again as a REPLAY: a host that captured the offer cannot make one.
//!
//! [`OfferRepr::parse`] checks the length and the version and nothing else: authenticity is
//! [`OfferRepr::verify`], freshness and what the kind means are the taker's business. Every
//! byte of a parsed header is kept (the option bytes past `syn_opts_len` too, which the MAC
//! covers), so `emit(parse(b)) == b` for any `b` of [`OFFER_VERSION`].

use std::hash::Hasher;
use std::net::Ipv4Addr;

use siphasher::sip::SipHasher24;

use crate::ipv4::{self, Ipv4Packet, PROTO_TCP};
use crate::tcp::{MAX_OPTIONS_LEN, TcpFlags};
use crate::{Error, read_u16, read_u32, write_u16, write_u32};

/// Byte offsets of the offer header's fields (`struct offer`).
pub mod field {
    /// A byte range within the header.
    pub type Field = core::ops::Range<usize>;

    /// [`OFFER_VERSION`](super::OFFER_VERSION).
    pub const VERSION: usize = 0;
    /// A [`kind`](super::kind).
    pub const KIND: usize = 1;
    /// Why a [`REFUSED`](super::kind::REFUSED) offer was refused (the mesh's refuse codes); else 0.
    pub const REASON: usize = 2;
    /// Bytes of the client's SYN options in [`SYN_OPTS`].
    pub const SYN_OPTS_LEN: usize = 3;
    /// The client SYN's flag byte (ECE|CWR: it asks for ECN).
    pub const SYN_TCP_FLAGS: usize = 4;
    /// The FE's SYN-ACK flag byte (ECE: it agreed to ECN).
    pub const SYNACK_TCP_FLAGS: usize = 5;
    /// The client SYN's window.
    pub const SYN_WINDOW: Field = 6..8;
    /// The client's address.
    pub const CLIENT_ADDR: Field = 8..12;
    /// The FE's service address: the client's peer.
    pub const FE_ADDR: Field = 12..16;
    /// The BE's service address.
    pub const BE_ADDR: Field = 16..20;
    /// The client's port.
    pub const CLIENT_PORT: Field = 20..22;
    /// The service port.
    pub const SERVICE_PORT: Field = 22..24;
    /// The client's ISN.
    pub const CLIENT_ISN: Field = 24..28;
    /// The ISN of the FE's SYN-ACK.
    pub const FE_ISN: Field = 28..32;
    /// The TSval of the FE's SYN-ACK (the client echoes it).
    pub const FE_TSVAL: Field = 32..36;
    /// The MSS the FE's SYN-ACK negotiated (0: none).
    pub const SYNACK_MSS: Field = 36..38;
    /// The window scale the FE's SYN-ACK negotiated (0xff: none).
    pub const SYNACK_WSCALE: usize = 38;
    /// SACK (0x01) and timestamps (0x02) as the FE's SYN-ACK negotiated them.
    pub const SYNACK_BITS: usize = 39;
    /// The FE's id for the handoff (high bit set).
    pub const HANDOFF_ID: Field = 40..48;
    /// CLOCK_TAI, in nanoseconds, when the FE sent it.
    pub const OFFERED_NS: Field = 48..56;
    /// The client's SYN options, padded to 40 bytes.
    pub const SYN_OPTS: Field = 56..96;
    /// The MAC of everything before it (little endian).
    pub const MAC: Field = 96..104;
}

/// Length of the offer header.
pub const OFFER_LEN: usize = field::MAC.end;

/// Bytes of the header the MAC covers: everything before it.
pub const MAC_COVERS: usize = field::MAC.start;

/// Length of the key that authenticates offers.
pub const OFFER_KEY_LEN: usize = 16;

/// IPv4 protocol of a packet carrying an offer header (RFC 3692: for experimentation; never
/// leaves the cluster's network).
pub const OFFER_IPPROTO: u8 = 253;

/// The one version of the header there is.
pub const OFFER_VERSION: u8 = 1;

/// What an offer header says the segment is (`OFFER_KIND_*`).
pub mod kind {
    /// FE -> BE: take this connection.
    pub const OFFER: u8 = 1;
    /// BE -> FE: the segment comes back; the FE serves it or asks its agent.
    pub const REFUSED: u8 = 2;
    /// BE -> its own ingress: the segment again, after its SYN (never sent between nodes).
    pub const REPLAY: u8 = 3;
    /// FE -> BE: take this connection, whose requests the FE follows: count its responses.
    pub const FOLLOWED: u8 = 4;
}

/// Why bytes could not be read as (or made into) an offer header, or a packet carrying one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum OfferError {
    /// Fewer bytes than the header takes.
    #[error("{len} bytes, shorter than the {OFFER_LEN}-byte offer header")]
    Truncated {
        /// Bytes there were.
        len: usize,
    },
    /// A version other than [`OFFER_VERSION`].
    #[error("offer header version {0}, not {OFFER_VERSION}")]
    BadVersion(u8),
    /// The packet's IPv4 protocol is not the one its operation needs (TCP to put an offer
    /// header in, [`OFFER_IPPROTO`] to take one out).
    #[error("IPv4 protocol {0} is not the one expected")]
    WrongProtocol(u8),
    /// The IPv4 header has options: an offer header follows an option-less one only.
    #[error("IPv4 header with options")]
    IpOptions,
    /// The IPv4 packet itself is malformed, or would be too long with the header.
    #[error(transparent)]
    Ip(#[from] Error),
}

/// Every field of an offer header but its version, which [`parse`](Self::parse) checks and
/// [`emit`](Self::emit) writes. Addresses and numbers are native; `syn_opts` is the raw area,
/// `syn_opts_len` bytes of it meaningful (see [`syn_options`](Self::syn_options)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OfferRepr {
    /// A [`kind`] (unknown kinds are kept as they are).
    pub kind: u8,
    /// [`kind::REFUSED`]: why (the mesh's refuse codes); else 0.
    pub reason: u8,
    /// Bytes of `syn_opts` that are the client's SYN options (as sent: not validated).
    pub syn_opts_len: u8,
    /// The client SYN's flag byte.
    pub syn_tcp_flags: TcpFlags,
    /// The FE's SYN-ACK flag byte.
    pub synack_tcp_flags: TcpFlags,
    /// The client SYN's window.
    pub syn_window: u16,
    /// The client's address.
    pub client_addr: Ipv4Addr,
    /// The FE's service address.
    pub fe_addr: Ipv4Addr,
    /// The BE's service address.
    pub be_addr: Ipv4Addr,
    /// The client's port.
    pub client_port: u16,
    /// The service port.
    pub service_port: u16,
    /// The client's ISN.
    pub client_isn: u32,
    /// The ISN of the FE's SYN-ACK.
    pub fe_isn: u32,
    /// The TSval of the FE's SYN-ACK.
    pub fe_tsval: u32,
    /// The MSS the FE's SYN-ACK negotiated (0: none).
    pub synack_mss: u16,
    /// The window scale it negotiated (0xff: none).
    pub synack_wscale: u8,
    /// SACK (0x01) and timestamps (0x02) as it negotiated them.
    pub synack_bits: u8,
    /// The FE's id for the handoff.
    pub handoff_id: u64,
    /// CLOCK_TAI, in nanoseconds, when the FE sent it.
    pub offered_ns: u64,
    /// The client's SYN options area.
    pub syn_opts: [u8; MAX_OPTIONS_LEN],
    /// SipHash-2-4 of the rest (see [`mac`](Self::mac)).
    pub mac: u64,
}

impl Default for OfferRepr {
    /// An OFFER with every other field zero, unsealed.
    fn default() -> Self {
        Self {
            kind: kind::OFFER,
            reason: 0,
            syn_opts_len: 0,
            syn_tcp_flags: TcpFlags::empty(),
            synack_tcp_flags: TcpFlags::empty(),
            syn_window: 0,
            client_addr: Ipv4Addr::UNSPECIFIED,
            fe_addr: Ipv4Addr::UNSPECIFIED,
            be_addr: Ipv4Addr::UNSPECIFIED,
            client_port: 0,
            service_port: 0,
            client_isn: 0,
            fe_isn: 0,
            fe_tsval: 0,
            synack_mss: 0,
            synack_wscale: 0,
            synack_bits: 0,
            handoff_id: 0,
            offered_ns: 0,
            syn_opts: [0; MAX_OPTIONS_LEN],
            mac: 0,
        }
    }
}

fn read_addr(data: &[u8], at: field::Field) -> Ipv4Addr {
    Ipv4Addr::new(
        data[at.start],
        data[at.start + 1],
        data[at.start + 2],
        data[at.start + 3],
    )
}

fn read_u64(data: &[u8], at: field::Field) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&data[at]);
    u64::from_be_bytes(b)
}

impl OfferRepr {
    /// Reads the header at the start of `buf` (what follows it, the TCP segment, is not read).
    pub fn parse(buf: &[u8]) -> Result<Self, OfferError> {
        if buf.len() < OFFER_LEN {
            return Err(OfferError::Truncated { len: buf.len() });
        }
        let d = &buf[..OFFER_LEN];
        if d[field::VERSION] != OFFER_VERSION {
            return Err(OfferError::BadVersion(d[field::VERSION]));
        }
        let mut syn_opts = [0; MAX_OPTIONS_LEN];
        syn_opts.copy_from_slice(&d[field::SYN_OPTS]);
        let mut mac = [0; 8];
        mac.copy_from_slice(&d[field::MAC]);
        Ok(Self {
            kind: d[field::KIND],
            reason: d[field::REASON],
            syn_opts_len: d[field::SYN_OPTS_LEN],
            syn_tcp_flags: TcpFlags(d[field::SYN_TCP_FLAGS]),
            synack_tcp_flags: TcpFlags(d[field::SYNACK_TCP_FLAGS]),
            syn_window: read_u16(d, field::SYN_WINDOW.start),
            client_addr: read_addr(d, field::CLIENT_ADDR),
            fe_addr: read_addr(d, field::FE_ADDR),
            be_addr: read_addr(d, field::BE_ADDR),
            client_port: read_u16(d, field::CLIENT_PORT.start),
            service_port: read_u16(d, field::SERVICE_PORT.start),
            client_isn: read_u32(d, field::CLIENT_ISN.start),
            fe_isn: read_u32(d, field::FE_ISN.start),
            fe_tsval: read_u32(d, field::FE_TSVAL.start),
            synack_mss: read_u16(d, field::SYNACK_MSS.start),
            synack_wscale: d[field::SYNACK_WSCALE],
            synack_bits: d[field::SYNACK_BITS],
            handoff_id: read_u64(d, field::HANDOFF_ID),
            offered_ns: read_u64(d, field::OFFERED_NS),
            syn_opts,
            mac: u64::from_le_bytes(mac),
        })
    }

    /// Writes the header into the first [`OFFER_LEN`] bytes of `buf`, as it is (sealed or not).
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), OfferError> {
        let len = buf.len();
        let d = buf
            .get_mut(..OFFER_LEN)
            .ok_or(OfferError::Truncated { len })?;
        d[field::VERSION] = OFFER_VERSION;
        d[field::KIND] = self.kind;
        d[field::REASON] = self.reason;
        d[field::SYN_OPTS_LEN] = self.syn_opts_len;
        d[field::SYN_TCP_FLAGS] = self.syn_tcp_flags.bits();
        d[field::SYNACK_TCP_FLAGS] = self.synack_tcp_flags.bits();
        write_u16(d, field::SYN_WINDOW.start, self.syn_window);
        d[field::CLIENT_ADDR].copy_from_slice(&self.client_addr.octets());
        d[field::FE_ADDR].copy_from_slice(&self.fe_addr.octets());
        d[field::BE_ADDR].copy_from_slice(&self.be_addr.octets());
        write_u16(d, field::CLIENT_PORT.start, self.client_port);
        write_u16(d, field::SERVICE_PORT.start, self.service_port);
        write_u32(d, field::CLIENT_ISN.start, self.client_isn);
        write_u32(d, field::FE_ISN.start, self.fe_isn);
        write_u32(d, field::FE_TSVAL.start, self.fe_tsval);
        write_u16(d, field::SYNACK_MSS.start, self.synack_mss);
        d[field::SYNACK_WSCALE] = self.synack_wscale;
        d[field::SYNACK_BITS] = self.synack_bits;
        d[field::HANDOFF_ID].copy_from_slice(&self.handoff_id.to_be_bytes());
        d[field::OFFERED_NS].copy_from_slice(&self.offered_ns.to_be_bytes());
        d[field::SYN_OPTS].copy_from_slice(&self.syn_opts);
        d[field::MAC].copy_from_slice(&self.mac.to_le_bytes());
        Ok(())
    }

    /// The header's bytes, as [`emit`](Self::emit) writes them.
    pub fn to_bytes(&self) -> [u8; OFFER_LEN] {
        let mut b = [0; OFFER_LEN];
        self.emit(&mut b)
            .expect("the array is as long as the header");
        b
    }

    /// The client's SYN options: the first `syn_opts_len` bytes of the area (all of it if the
    /// length is beyond it).
    pub fn syn_options(&self) -> &[u8] {
        &self.syn_opts[..usize::from(self.syn_opts_len).min(MAX_OPTIONS_LEN)]
    }

    /// Sets the client's SYN options (the area is zero past them); at most 40 bytes are taken.
    pub fn set_syn_options(&mut self, options: &[u8]) {
        let len = options.len().min(MAX_OPTIONS_LEN);
        self.syn_opts = [0; MAX_OPTIONS_LEN];
        self.syn_opts[..len].copy_from_slice(&options[..len]);
        self.syn_opts_len = len as u8;
    }

    /// The MAC this header must carry under `key`: SipHash-2-4 of its first [`MAC_COVERS`]
    /// bytes.
    pub fn mac(&self, key: &[u8; OFFER_KEY_LEN]) -> u64 {
        siphash24(key, &self.to_bytes()[..MAC_COVERS])
    }

    /// Sets `mac` to [`mac`](Self::mac) under `key`.
    pub fn seal(&mut self, key: &[u8; OFFER_KEY_LEN]) {
        self.mac = self.mac(key);
    }

    /// Whether `mac` is what `key` gives (the header is authentic and intact).
    pub fn verify(&self, key: &[u8; OFFER_KEY_LEN]) -> bool {
        self.mac == self.mac(key)
    }
}

/// SipHash-2-4 of `msg` under `key`, as the reference implementation computes it (the datapath's
/// `siphash24()` over an offer header's first [`MAC_COVERS`] bytes).
pub fn siphash24(key: &[u8; OFFER_KEY_LEN], msg: &[u8]) -> u64 {
    let mut h = SipHasher24::new_with_key(key);
    h.write(msg);
    h.finish()
}

/// The IPv4 packet `pkt` (an option-less header and a TCP segment) with `offer` between its
/// IPv4 and TCP headers, as the FE's datapath sends it: total length counting the header,
/// protocol [`OFFER_IPPROTO`], header checksum updated, the TCP segment untouched.
pub fn insert_offer(pkt: &[u8], offer: &OfferRepr) -> Result<Vec<u8>, OfferError> {
    let ip = Ipv4Packet::new_checked(pkt)?;
    if ip.header_len() != ipv4::HEADER_LEN {
        return Err(OfferError::IpOptions);
    }
    if ip.protocol() != PROTO_TCP {
        return Err(OfferError::WrongProtocol(ip.protocol()));
    }
    let total = usize::from(ip.total_len()) + OFFER_LEN;
    let total = u16::try_from(total).map_err(|_| Error::PacketTooLong { len: total })?;
    let mut out = Vec::with_capacity(pkt.len() + OFFER_LEN);
    out.extend_from_slice(&pkt[..ipv4::HEADER_LEN]);
    out.extend_from_slice(&offer.to_bytes());
    out.extend_from_slice(&pkt[ipv4::HEADER_LEN..]);
    let mut ip = Ipv4Packet::new_unchecked(&mut out[..]);
    ip.set_total_len(total);
    ip.set_protocol(OFFER_IPPROTO);
    ip.fill_checksum();
    Ok(out)
}

/// The inverse of [`insert_offer`]: the offer header of `pkt`, and the packet without it
/// (protocol TCP again, total length and header checksum updated).
pub fn remove_offer(pkt: &[u8]) -> Result<(OfferRepr, Vec<u8>), OfferError> {
    let ip = Ipv4Packet::new_checked(pkt)?;
    if ip.header_len() != ipv4::HEADER_LEN {
        return Err(OfferError::IpOptions);
    }
    if ip.protocol() != OFFER_IPPROTO {
        return Err(OfferError::WrongProtocol(ip.protocol()));
    }
    let offer = OfferRepr::parse(ip.payload())?;
    let total = ip.total_len() - OFFER_LEN as u16; // the payload held the header
    let mut out = Vec::with_capacity(pkt.len() - OFFER_LEN);
    out.extend_from_slice(&pkt[..ipv4::HEADER_LEN]);
    out.extend_from_slice(&pkt[ipv4::HEADER_LEN + OFFER_LEN..]);
    let mut ip = Ipv4Packet::new_unchecked(&mut out[..]);
    ip.set_total_len(total);
    ip.set_protocol(PROTO_TCP);
    ip.fill_checksum();
    Ok((offer, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TcpPacketBuilder, TcpSegment};
    use proptest::prelude::*;

    const KEY: [u8; OFFER_KEY_LEN] = *b"baton offer key!";

    fn offer() -> OfferRepr {
        let mut o = OfferRepr {
            kind: kind::OFFER,
            syn_tcp_flags: TcpFlags::SYN | TcpFlags::ECE | TcpFlags::CWR,
            synack_tcp_flags: TcpFlags::SYN | TcpFlags::ACK | TcpFlags::ECE,
            syn_window: 64240,
            client_addr: Ipv4Addr::new(198, 18, 0, 254),
            fe_addr: Ipv4Addr::new(198, 18, 0, 1),
            be_addr: Ipv4Addr::new(198, 18, 0, 2),
            client_port: 40000,
            service_port: 80,
            client_isn: 0xffff_fff0,
            fe_isn: 0x1000_0000,
            fe_tsval: 0xffff_ff00,
            synack_mss: 1460,
            synack_wscale: 7,
            synack_bits: 0x03,
            handoff_id: 0x8123_4567_89ab_cdef,
            offered_ns: 1_800_000_000_123_456_789,
            ..OfferRepr::default()
        };
        o.set_syn_options(&[
            2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ]);
        o.seal(&KEY);
        o
    }

    #[test]
    fn layout_is_struct_offer() {
        let b = offer().to_bytes();
        assert_eq!(b.len(), 104);
        assert_eq!(&b[..8], &[1, 1, 0, 20, 0xc2, 0x52, 0xfa, 0xf0]);
        assert_eq!(&b[8..20], &[198, 18, 0, 254, 198, 18, 0, 1, 198, 18, 0, 2]);
        assert_eq!(&b[20..24], &[0x9c, 0x40, 0, 80]);
        assert_eq!(
            &b[24..40],
            &[
                0xff, 0xff, 0xff, 0xf0, 0x10, 0, 0, 0, 0xff, 0xff, 0xff, 0, 0x05, 0xb4, 7, 3
            ]
        );
        assert_eq!(&b[40..48], &0x8123_4567_89ab_cdefu64.to_be_bytes());
        assert_eq!(&b[56..60], &[2, 4, 5, 0xb4]);
        assert_eq!(&b[96..], &offer().mac.to_le_bytes());
    }

    #[test]
    fn round_trips() {
        let o = offer();
        let b = o.to_bytes();
        assert_eq!(OfferRepr::parse(&b), Ok(o));
        // What follows the header is not its business.
        let mut longer = b.to_vec();
        longer.extend_from_slice(&[0xee; 30]);
        assert_eq!(OfferRepr::parse(&longer), Ok(o));
        assert_eq!(o.syn_options().len(), 20);
    }

    #[test]
    fn siphash_reference_vector() {
        // The reference implementation's vectors (SipHash paper, appendix A; vectors.h):
        // key 00..0f, message 00..0e.
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(&key, &msg), 0xa129_ca61_49be_45e5);
        assert_eq!(siphash24(&key, &[]), 0x726f_db47_dd0e_0e31);
    }

    /// `siphash24()` of `crates/bpf/c/lib/siphash.h`, word for word: 12 little-endian words and
    /// no tail, the length in the final block's top byte.
    fn datapath_siphash(key: &[u8; 16], msg: &[u8; MAC_COVERS]) -> u64 {
        fn round(v: &mut [u64; 4]) {
            v[0] = v[0].wrapping_add(v[1]);
            v[1] = v[1].rotate_left(13) ^ v[0];
            v[0] = v[0].rotate_left(32);
            v[2] = v[2].wrapping_add(v[3]);
            v[3] = v[3].rotate_left(16) ^ v[2];
            v[0] = v[0].wrapping_add(v[3]);
            v[3] = v[3].rotate_left(21) ^ v[0];
            v[2] = v[2].wrapping_add(v[1]);
            v[1] = v[1].rotate_left(17) ^ v[2];
            v[2] = v[2].rotate_left(32);
        }
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
        let (k0, k1) = (word(&key[..8]), word(&key[8..]));
        let mut v = [
            k0 ^ 0x736f_6d65_7073_6575,
            k1 ^ 0x646f_7261_6e64_6f6d,
            k0 ^ 0x6c79_6765_6e65_7261,
            k1 ^ 0x7465_6462_7974_6573,
        ];
        for m in msg.chunks_exact(8).map(word) {
            v[3] ^= m;
            round(&mut v);
            round(&mut v);
            v[0] ^= m;
        }
        let b = (MAC_COVERS as u64) << 56;
        v[3] ^= b;
        round(&mut v);
        round(&mut v);
        v[0] ^= b;
        v[2] ^= 0xff;
        for _ in 0..4 {
            round(&mut v);
        }
        v[0] ^ v[1] ^ v[2] ^ v[3]
    }

    #[test]
    fn the_datapath_algorithm_is_siphash() {
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let msg: [u8; MAC_COVERS] = core::array::from_fn(|i| i as u8);
        assert_eq!(datapath_siphash(&key, &msg), siphash24(&key, &msg));
        let o = offer();
        let bytes: [u8; MAC_COVERS] = o.to_bytes()[..MAC_COVERS].try_into().unwrap();
        assert_eq!(datapath_siphash(&KEY, &bytes), o.mac);
    }

    #[test]
    fn seal_then_verify() {
        let o = offer();
        assert!(o.verify(&KEY));
        assert!(!o.verify(b"another key....."));
        let mut unsealed = o;
        unsealed.mac = 0;
        assert!(!unsealed.verify(&KEY));
    }

    #[test]
    fn every_flipped_byte_fails_verify() {
        let b = offer().to_bytes();
        for at in 0..OFFER_LEN {
            let mut flipped = b;
            flipped[at] ^= 0xff;
            match OfferRepr::parse(&flipped) {
                Ok(o) => assert!(!o.verify(&KEY), "byte {at} flipped still verifies"),
                Err(e) => assert_eq!((at, e), (0, OfferError::BadVersion(0xfe))),
            }
        }
    }

    #[test]
    fn a_replay_is_sealed_as_a_replay() {
        let mut replay = offer();
        replay.kind = kind::REPLAY;
        assert!(!replay.verify(&KEY), "an offer's MAC makes no replay");
        replay.seal(&KEY);
        assert!(replay.verify(&KEY));
        let mut refused = offer();
        refused.kind = kind::REFUSED;
        assert!(!refused.verify(&KEY));
        refused.seal(&KEY);
        assert!(refused.verify(&KEY) && refused.mac != offer().mac);
    }

    #[test]
    fn parse_rejects_short_and_other_versions() {
        let b = offer().to_bytes();
        assert_eq!(
            OfferRepr::parse(&b[..103]),
            Err(OfferError::Truncated { len: 103 })
        );
        assert_eq!(OfferRepr::parse(&[]), Err(OfferError::Truncated { len: 0 }));
        let mut v2 = b;
        v2[0] = 2;
        assert_eq!(OfferRepr::parse(&v2), Err(OfferError::BadVersion(2)));
        let mut short = [0; 50];
        assert_eq!(
            offer().emit(&mut short),
            Err(OfferError::Truncated { len: 50 })
        );
    }

    fn request() -> Vec<u8> {
        let mut p = TcpPacketBuilder::new(
            Ipv4Addr::new(198, 18, 0, 254),
            40000,
            Ipv4Addr::new(198, 18, 0, 2),
            80,
        );
        p.seq = 0xffff_fff1;
        p.ack = 0x1000_0001;
        p.flags = TcpFlags::ACK | TcpFlags::PSH;
        p.payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        p.build()
    }

    #[test]
    fn insert_then_remove_gives_the_packet_back() {
        let pkt = request();
        let with = insert_offer(&pkt, &offer()).unwrap();
        assert_eq!(with.len(), pkt.len() + OFFER_LEN);
        let ip = Ipv4Packet::new_checked(&with[..]).unwrap();
        assert_eq!(ip.protocol(), OFFER_IPPROTO);
        assert_eq!(usize::from(ip.total_len()), with.len());
        assert!(ip.verify_checksum());
        assert_eq!(OfferRepr::parse(ip.payload()), Ok(offer()));
        let tcp = TcpSegment::new_checked(&ip.payload()[OFFER_LEN..]).unwrap();
        assert!(tcp.verify_checksum(ip.src_addr(), ip.dst_addr()));
        assert_eq!(remove_offer(&with), Ok((offer(), pkt.clone())));
        assert_eq!(
            remove_offer(&pkt),
            Err(OfferError::WrongProtocol(PROTO_TCP))
        );
        assert_eq!(
            insert_offer(&with, &offer()),
            Err(OfferError::WrongProtocol(OFFER_IPPROTO))
        );
        // An offer packet cut inside its header.
        let mut cut = with[..60].to_vec();
        cut[2..4].copy_from_slice(&60u16.to_be_bytes());
        assert_eq!(remove_offer(&cut), Err(OfferError::Truncated { len: 40 }));
    }

    fn any_offer() -> impl Strategy<Value = OfferRepr> {
        let header = (
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            any::<u16>(),
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<u16>(),
        );
        let rest = (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u16>(),
            any::<u8>(),
            any::<u8>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), MAX_OPTIONS_LEN),
            any::<u64>(),
        );
        (header, rest).prop_map(|(h, r)| OfferRepr {
            kind: h.0,
            reason: h.1,
            syn_opts_len: h.2,
            syn_tcp_flags: TcpFlags(h.3),
            synack_tcp_flags: TcpFlags(h.4),
            syn_window: h.5,
            client_addr: Ipv4Addr::from(h.6),
            fe_addr: Ipv4Addr::from(h.7),
            be_addr: Ipv4Addr::from(h.8),
            client_port: h.9,
            service_port: h.10,
            client_isn: r.0,
            fe_isn: r.1,
            fe_tsval: r.2,
            synack_mss: r.3,
            synack_wscale: r.4,
            synack_bits: r.5,
            handoff_id: r.6,
            offered_ns: r.7,
            syn_opts: r.8.try_into().expect("40 bytes"),
            mac: r.9,
        })
    }

    proptest! {
        #[test]
        fn repr_round_trips(o in any_offer()) {
            prop_assert_eq!(OfferRepr::parse(&o.to_bytes()), Ok(o));
        }

        #[test]
        fn bytes_round_trip(mut b in proptest::collection::vec(any::<u8>(), OFFER_LEN)) {
            b[field::VERSION] = OFFER_VERSION;
            let o = OfferRepr::parse(&b).unwrap();
            prop_assert_eq!(o.to_bytes().to_vec(), b);
        }

        #[test]
        fn siphasher_is_the_datapath_algorithm(
            key in any::<[u8; 16]>(),
            msg in proptest::collection::vec(any::<u8>(), MAC_COVERS),
        ) {
            let msg: [u8; MAC_COVERS] = msg.try_into().unwrap();
            prop_assert_eq!(datapath_siphash(&key, &msg), siphash24(&key, &msg));
        }

        #[test]
        fn sealed_offers_verify(mut o in any_offer(), key in any::<[u8; 16]>()) {
            o.seal(&key);
            prop_assert!(o.verify(&key));
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(o) = OfferRepr::parse(&b) {
                prop_assert_eq!(&o.to_bytes()[..], &b[..OFFER_LEN]);
                let _ = o.verify(&KEY);
                let _ = o.syn_options();
            }
            let _ = remove_offer(&b);
            let _ = insert_offer(&b, &offer());
        }
    }
}
