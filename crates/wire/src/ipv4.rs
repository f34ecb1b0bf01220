//! IPv4 header view ([`Ipv4Packet`]).
//!
//! [`Ipv4Packet::new_checked`] accepts a buffer holding an IPv4 header and its payload:
//! version 4, a header length (IHL) of at least 20 bytes that fits the buffer, and a total length
//! that is at least the header length and fits the buffer. The buffer may be longer than the
//! total length (link-layer padding); [`Ipv4Packet::payload`] stops at the total length.
//!
//! IP options, if any, are part of the header (`header_len() > 20`) and are not interpreted.

use std::net::Ipv4Addr;

use crate::{Error, checksum, read_u16, write_u16};

/// Byte offsets of the IPv4 header fields (RFC 791 §3.1).
pub mod field {
    /// A byte range within the header.
    pub type Field = core::ops::Range<usize>;

    /// Version (high nibble) and IHL, the header length in 32-bit words (low nibble).
    pub const VER_IHL: usize = 0;
    /// DSCP (high six bits) and ECN (low two bits), formerly the type of service.
    pub const DSCP_ECN: usize = 1;
    /// Total length of the packet, header included.
    pub const LENGTH: Field = 2..4;
    /// Identification, for reassembly.
    pub const IDENT: Field = 4..6;
    /// Flags (reserved, DF, MF) and fragment offset in 8-byte units.
    pub const FLG_OFF: Field = 6..8;
    /// Time to live.
    pub const TTL: usize = 8;
    /// Protocol of the payload.
    pub const PROTOCOL: usize = 9;
    /// Header checksum.
    pub const CHECKSUM: Field = 10..12;
    /// Source address.
    pub const SRC_ADDR: Field = 12..16;
    /// Destination address.
    pub const DST_ADDR: Field = 16..20;
}

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// Protocol number of TCP.
pub const PROTO_TCP: u8 = 6;

/// Don't Fragment flag, in the `FLG_OFF` word.
const FLAG_DF: u16 = 0x4000;
/// More Fragments flag, in the `FLG_OFF` word.
const FLAG_MF: u16 = 0x2000;
/// Fragment offset bits, in the `FLG_OFF` word.
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// A view over a buffer holding an IPv4 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wrap a buffer without validating it. Getters may panic if the buffer is too short.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wrap a buffer after [`check_len`](Self::check_len); getters of the result never panic.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Validate the version and the length fields against the buffer.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 {
            return Err(Error::BadVersion);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(Error::BadHeaderLen);
        }
        if header_len > len {
            return Err(Error::Truncated);
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return Err(Error::BadTotalLen);
        }
        if total_len > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Give back the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// IP version (4 for a valid packet).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// DSCP and ECN byte (formerly the type of service).
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// Total length of the packet in bytes, header included.
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// Identification field.
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT.start)
    }

    /// Don't Fragment flag.
    pub fn dont_frag(&self) -> bool {
        self.flags_and_offset() & FLAG_DF != 0
    }

    /// More Fragments flag.
    pub fn more_frags(&self) -> bool {
        self.flags_and_offset() & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    pub fn frag_offset(&self) -> u16 {
        (self.flags_and_offset() & FRAG_OFFSET_MASK) * 8
    }

    /// Whether this packet is a fragment (first, middle or last) rather than a whole datagram.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    fn flags_and_offset(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FLG_OFF.start)
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol of the payload ([`PROTO_TCP`] for TCP).
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        let d = self.buffer.as_ref();
        Ipv4Addr::new(d[12], d[13], d[14], d[15])
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        let d = self.buffer.as_ref();
        Ipv4Addr::new(d[16], d[17], d[18], d[19])
    }

    /// The header bytes, options included. Clamped to the buffer so that it cannot panic even
    /// after a setter made the header length inconsistent.
    pub fn header(&self) -> &[u8] {
        let d = self.buffer.as_ref();
        &d[..self.header_len().min(d.len())]
    }

    /// Whether the header checksum is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(self.header()) == 0
    }

    /// The payload: from the end of the header to the total length (link-layer padding after
    /// the total length is excluded). Clamped to the buffer, never panics.
    pub fn payload(&self) -> &[u8] {
        let d = self.buffer.as_ref();
        let (start, end) = self.payload_bounds();
        &d[start..end]
    }

    fn payload_bounds(&self) -> (usize, usize) {
        let len = self.buffer.as_ref().len();
        let end = usize::from(self.total_len()).min(len);
        let start = self.header_len().min(end);
        (start, end)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Set the IP version.
    pub fn set_version(&mut self, version: u8) {
        let d = self.buffer.as_mut();
        d[field::VER_IHL] = (d[field::VER_IHL] & 0x0f) | (version << 4);
    }

    /// Set the header length in bytes; it is stored in 32-bit words, so `len` is rounded down
    /// to a multiple of 4 (and must be at most 60 to be representable).
    pub fn set_header_len(&mut self, len: usize) {
        let d = self.buffer.as_mut();
        let words = ((len / 4) & 0x0f) as u8;
        d[field::VER_IHL] = (d[field::VER_IHL] & 0xf0) | words;
    }

    /// Set the DSCP and ECN byte.
    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = value;
    }

    /// Set the total length.
    pub fn set_total_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH.start, len);
    }

    /// Set the identification field.
    pub fn set_ident(&mut self, ident: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT.start, ident);
    }

    /// Set or clear the Don't Fragment flag.
    pub fn set_dont_frag(&mut self, value: bool) {
        self.set_flag(FLAG_DF, value);
    }

    /// Set or clear the More Fragments flag.
    pub fn set_more_frags(&mut self, value: bool) {
        self.set_flag(FLAG_MF, value);
    }

    /// Set the fragment offset in bytes (rounded down to a multiple of 8).
    pub fn set_frag_offset(&mut self, offset: u16) {
        let word = (self.flags_and_offset() & !FRAG_OFFSET_MASK) | (offset / 8);
        write_u16(self.buffer.as_mut(), field::FLG_OFF.start, word);
    }

    fn set_flag(&mut self, flag: u16, value: bool) {
        let word = self.flags_and_offset();
        let word = if value { word | flag } else { word & !flag };
        write_u16(self.buffer.as_mut(), field::FLG_OFF.start, word);
    }

    /// Set the time to live.
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Set the payload protocol.
    pub fn set_protocol(&mut self, protocol: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol;
    }

    /// Set the header checksum field (see [`fill_checksum`](Self::fill_checksum)).
    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, checksum);
    }

    /// Set the source address.
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    /// Set the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// Compute the header checksum from scratch and store it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let csum = checksum::checksum(self.header());
        self.set_checksum(csum);
    }

    /// The payload, mutable (same bounds as [`payload`](Ipv4Packet::payload)).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = self.payload_bounds();
        &mut self.buffer.as_mut()[start..end]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A SYN that Linux 6.18 sent through a TUN device (no checksum offload, so both checksums
    /// were computed by the kernel): 198.18.0.1:40000 -> 198.18.0.2:80, options MSS 1460,
    /// SACK-permitted, timestamps (TSval 0xdc657696, TSecr 0), NOP, window scale 10.
    pub(crate) const LINUX_SYN: [u8; 60] = [
        0x45, 0x00, 0x00, 0x3c, 0x4e, 0x05, 0x40, 0x00, 0x40, 0x06, 0x60, 0x8f, 0xc6, 0x12, 0x00,
        0x01, 0xc6, 0x12, 0x00, 0x02, // IPv4
        0x9c, 0x40, 0x00, 0x50, 0xc2, 0xc7, 0x3c, 0xf2, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa,
        0xf0, 0xd1, 0x9d, 0x00, 0x00, // TCP
        0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0xdc, 0x65, 0x76, 0x96, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x03, 0x03, 0x0a, // options
    ];

    #[test]
    fn reads_linux_syn() {
        let ip = Ipv4Packet::new_checked(&LINUX_SYN[..]).unwrap();
        assert_eq!(ip.version(), 4);
        assert_eq!(ip.header_len(), 20);
        assert_eq!(ip.dscp_ecn(), 0);
        assert_eq!(ip.total_len(), 60);
        assert_eq!(ip.ident(), 0x4e05);
        assert!(ip.dont_frag());
        assert!(!ip.more_frags());
        assert_eq!(ip.frag_offset(), 0);
        assert!(!ip.is_fragment());
        assert_eq!(ip.ttl(), 64);
        assert_eq!(ip.protocol(), PROTO_TCP);
        assert_eq!(ip.checksum(), 0x608f);
        assert_eq!(ip.src_addr(), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(ip.payload(), &LINUX_SYN[20..]);
        assert!(ip.verify_checksum());
    }

    #[test]
    fn fill_checksum_reproduces_kernel_value() {
        let mut bytes = LINUX_SYN;
        let mut ip = Ipv4Packet::new_checked(&mut bytes[..]).unwrap();
        ip.set_checksum(0);
        assert!(!ip.verify_checksum());
        ip.fill_checksum();
        assert_eq!(ip.checksum(), 0x608f);
        assert!(ip.verify_checksum());
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = [0u8; 28];
        let mut ip = Ipv4Packet::new_unchecked(&mut bytes[..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_dscp_ecn(0x02);
        ip.set_total_len(28);
        ip.set_ident(0xbeef);
        ip.set_dont_frag(true);
        ip.set_more_frags(true);
        ip.set_frag_offset(1480);
        ip.set_ttl(7);
        ip.set_protocol(17);
        ip.set_src_addr(Ipv4Addr::new(10, 0, 0, 1));
        ip.set_dst_addr(Ipv4Addr::new(10, 0, 0, 2));
        ip.fill_checksum();
        ip.payload_mut().copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let ip = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(ip.version(), 4);
        assert_eq!(ip.header_len(), 20);
        assert_eq!(ip.dscp_ecn(), 0x02);
        assert_eq!(ip.total_len(), 28);
        assert_eq!(ip.ident(), 0xbeef);
        assert!(ip.dont_frag() && ip.more_frags() && ip.is_fragment());
        assert_eq!(ip.frag_offset(), 1480);
        assert_eq!(ip.ttl(), 7);
        assert_eq!(ip.protocol(), 17);
        assert_eq!(ip.src_addr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(ip.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(ip.verify_checksum());

        let mut ip = Ipv4Packet::new_unchecked(&mut bytes[..]);
        ip.set_dont_frag(false);
        ip.set_more_frags(false);
        ip.set_frag_offset(0);
        assert!(!ip.dont_frag() && !ip.is_fragment());
        assert_eq!(ip.into_inner()[field::FLG_OFF], [0, 0]);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(
            Ipv4Packet::new_checked(&LINUX_SYN[..19]).unwrap_err(),
            Error::Truncated
        );

        let mut bad = LINUX_SYN;
        bad[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            Error::BadVersion
        );

        let mut bad = LINUX_SYN;
        bad[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            Error::BadHeaderLen
        );

        let mut bad = LINUX_SYN;
        bad[0] = 0x4f; // IHL 15: a 60-byte header, which fits this 60-byte buffer
        assert!(Ipv4Packet::new_checked(&bad[..]).is_ok());
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..59]).unwrap_err(),
            Error::Truncated
        );

        let mut bad = LINUX_SYN;
        bad[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            Error::BadTotalLen
        );

        let mut bad = LINUX_SYN;
        bad[2..4].copy_from_slice(&61u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn payload_stops_at_total_len() {
        let mut padded = LINUX_SYN.to_vec();
        padded.extend_from_slice(&[0xee; 6]);
        let ip = Ipv4Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(ip.payload(), &LINUX_SYN[20..]);
    }

    #[test]
    fn payload_never_panics_after_bad_setter() {
        let mut bytes = LINUX_SYN;
        let mut ip = Ipv4Packet::new_checked(&mut bytes[..]).unwrap();
        ip.set_total_len(u16::MAX);
        ip.set_header_len(60);
        assert_eq!(ip.payload().len(), 0);
        ip.set_total_len(10);
        assert_eq!(ip.payload().len(), 0);
        assert_eq!(ip.header().len(), 60);
    }
}
