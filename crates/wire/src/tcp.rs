//! TCP segment view ([`TcpSegment`]) and flags ([`TcpFlags`]).
//!
//! The view covers exactly one TCP segment: header, options and payload, nothing after. Over an
//! IPv4 packet that is [`Ipv4Packet::payload`](crate::Ipv4Packet::payload), which ends at the
//! IPv4 total length. [`TcpSegment::new_checked`] accepts a buffer of at least 20 bytes whose
//! data offset is at least 20 bytes and fits the buffer.
//!
//! The checksum covers the IPv4 pseudo header, whose TCP length is the whole buffer's length.
//! Options are returned as raw bytes; [`crate::options`] interprets them.

use std::fmt;
use std::net::Ipv4Addr;
use std::ops::{BitAnd, BitOr, BitOrAssign};

use crate::ipv4::PROTO_TCP;
use crate::{Error, checksum, read_u16, read_u32, write_u16, write_u32};

/// Byte offsets of the TCP header fields (RFC 9293 §3.1).
pub mod field {
    /// A byte range within the header.
    pub type Field = core::ops::Range<usize>;

    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// Sequence number.
    pub const SEQ_NUM: Field = 4..8;
    /// Acknowledgment number.
    pub const ACK_NUM: Field = 8..12;
    /// Data offset in 32-bit words (high nibble); the low nibble is reserved.
    pub const DATA_OFF: usize = 12;
    /// Control bits (CWR ECE URG ACK PSH RST SYN FIN).
    pub const FLAGS: usize = 13;
    /// Receive window.
    pub const WIN_SIZE: Field = 14..16;
    /// Checksum.
    pub const CHECKSUM: Field = 16..18;
    /// Urgent pointer.
    pub const URGENT: Field = 18..20;
    /// Start of the options (and of the payload when there are none).
    pub const OPTIONS: usize = super::OPTIONS_OFFSET;
}

/// Offset of the options area from the start of the TCP header.
pub const OPTIONS_OFFSET: usize = 20;

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = OPTIONS_OFFSET;

/// Most option bytes a header can carry (data offset at most 15 words = 60 bytes).
pub const MAX_OPTIONS_LEN: usize = 40;

/// The TCP control bits, as in the header's 14th byte.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// No more data from sender.
    pub const FIN: Self = Self(0x01);
    /// Synchronize sequence numbers.
    pub const SYN: Self = Self(0x02);
    /// Reset the connection.
    pub const RST: Self = Self(0x04);
    /// Push function.
    pub const PSH: Self = Self(0x08);
    /// Acknowledgment field is significant.
    pub const ACK: Self = Self(0x10);
    /// Urgent pointer field is significant.
    pub const URG: Self = Self(0x20);
    /// ECN-Echo.
    pub const ECE: Self = Self(0x40);
    /// Congestion Window Reduced.
    pub const CWR: Self = Self(0x80);

    /// No flag set.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every flag of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any flag of `other` is set in `self`.
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Set the flags of `other`.
    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    /// Clear the flags of `other`.
    pub fn remove(&mut self, other: Self) {
        self.0 &= !other.0;
    }
}

impl BitOr for TcpFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for TcpFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for TcpFlags {
    type Output = Self;
    fn bitand(self, rhs: Self) -> Self {
        Self(self.0 & rhs.0)
    }
}

impl fmt::Debug for TcpFlags {
    /// Names joined by `|` (`SYN|ACK`), as tcpdump would list them; `(empty)` for none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(TcpFlags, &str); 8] = [
            (TcpFlags::FIN, "FIN"),
            (TcpFlags::SYN, "SYN"),
            (TcpFlags::RST, "RST"),
            (TcpFlags::PSH, "PSH"),
            (TcpFlags::ACK, "ACK"),
            (TcpFlags::URG, "URG"),
            (TcpFlags::ECE, "ECE"),
            (TcpFlags::CWR, "CWR"),
        ];
        if self.is_empty() {
            return f.write_str("(empty)");
        }
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// A view over a buffer holding one TCP segment (header, options, payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSegment<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpSegment<T> {
    /// Wrap a buffer without validating it. Getters may panic if the buffer is too short.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wrap a buffer after [`check_len`](Self::check_len); getters of the result never panic.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let segment = Self::new_unchecked(buffer);
        segment.check_len()?;
        Ok(segment)
    }

    /// Validate the data offset against the buffer.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(Error::BadHeaderLen);
        }
        if header_len > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Give back the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ_NUM.start)
    }

    /// Acknowledgment number (meaningful only with [`TcpFlags::ACK`]).
    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK_NUM.start)
    }

    /// Header length in bytes (data offset × 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// Control bits.
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.buffer.as_ref()[field::FLAGS])
    }

    /// Receive window (unscaled, as on the wire).
    pub fn window(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WIN_SIZE.start)
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Urgent pointer.
    pub fn urgent(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT.start)
    }

    /// The raw options area (bytes 20 to the header length). Clamped to the buffer.
    pub fn options(&self) -> &[u8] {
        let d = self.buffer.as_ref();
        let (start, end) = self.options_bounds();
        &d[start..end]
    }

    /// The payload, after the header. Clamped to the buffer.
    pub fn payload(&self) -> &[u8] {
        let d = self.buffer.as_ref();
        let (_, start) = self.options_bounds();
        &d[start..]
    }

    // Bounds of the options area, clamped so that slicing cannot panic even after a setter
    // made the data offset inconsistent with the buffer.
    fn options_bounds(&self) -> (usize, usize) {
        let len = self.buffer.as_ref().len();
        let end = self.header_len().min(len);
        (OPTIONS_OFFSET.min(end), end)
    }

    /// Unfolded sum of the segment and its IPv4 pseudo header; the checksum is correct iff it
    /// folds to 0xffff.
    fn sum_with_pseudo_header(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
        let data = self.buffer.as_ref();
        // An IPv4 datagram cannot carry more than 65535 bytes, so the length fits; a longer
        // buffer (not a valid segment) gets a truncated length rather than a panic.
        let pseudo = checksum::pseudo_header_ipv4(src, dst, PROTO_TCP, data.len() as u16);
        checksum::combine(pseudo, checksum::sum(data))
    }

    /// Whether the checksum is correct for a segment carried from `src` to `dst`.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        checksum::fold(self.sum_with_pseudo_header(src, dst)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpSegment<T> {
    /// Set the source port.
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT.start, port);
    }

    /// Set the destination port.
    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT.start, port);
    }

    /// Set the sequence number.
    pub fn set_seq_number(&mut self, seq: u32) {
        write_u32(self.buffer.as_mut(), field::SEQ_NUM.start, seq);
    }

    /// Set the acknowledgment number.
    pub fn set_ack_number(&mut self, ack: u32) {
        write_u32(self.buffer.as_mut(), field::ACK_NUM.start, ack);
    }

    /// Set the header length in bytes; stored in 32-bit words, so `len` is rounded down to a
    /// multiple of 4 (and must be at most 60 to be representable). The reserved bits are kept.
    pub fn set_header_len(&mut self, len: usize) {
        let d = self.buffer.as_mut();
        let words = ((len / 4) & 0x0f) as u8;
        d[field::DATA_OFF] = (d[field::DATA_OFF] & 0x0f) | (words << 4);
    }

    /// Set the control bits.
    pub fn set_flags(&mut self, flags: TcpFlags) {
        self.buffer.as_mut()[field::FLAGS] = flags.0;
    }

    /// Set the receive window.
    pub fn set_window(&mut self, window: u16) {
        write_u16(self.buffer.as_mut(), field::WIN_SIZE.start, window);
    }

    /// Set the checksum field (see [`fill_checksum`](Self::fill_checksum)).
    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, checksum);
    }

    /// Set the urgent pointer.
    pub fn set_urgent(&mut self, urgent: u16) {
        write_u16(self.buffer.as_mut(), field::URGENT.start, urgent);
    }

    /// The options area, mutable (same bounds as [`options`](TcpSegment::options)).
    pub fn options_mut(&mut self) -> &mut [u8] {
        let (start, end) = self.options_bounds();
        &mut self.buffer.as_mut()[start..end]
    }

    /// The payload, mutable (same bounds as [`payload`](TcpSegment::payload)).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (_, start) = self.options_bounds();
        &mut self.buffer.as_mut()[start..]
    }

    /// Compute the checksum from scratch, for a segment carried from `src` to `dst`, and store it.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let csum = !checksum::fold(self.sum_with_pseudo_header(src, dst));
        self.set_checksum(csum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv4::tests::LINUX_SYN;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    #[test]
    fn reads_linux_syn() {
        let tcp = TcpSegment::new_checked(&LINUX_SYN[20..]).unwrap();
        assert_eq!(tcp.src_port(), 40000);
        assert_eq!(tcp.dst_port(), 80);
        assert_eq!(tcp.seq_number(), 0xc2c7_3cf2);
        assert_eq!(tcp.ack_number(), 0);
        assert_eq!(tcp.header_len(), 40);
        assert_eq!(tcp.flags(), TcpFlags::SYN);
        assert_eq!(tcp.window(), 64240);
        assert_eq!(tcp.checksum(), 0xd19d);
        assert_eq!(tcp.urgent(), 0);
        assert_eq!(tcp.options(), &LINUX_SYN[40..60]);
        assert!(tcp.payload().is_empty());
        assert!(tcp.verify_checksum(SRC, DST));
        // The pseudo header is covered: another address fails.
        assert!(!tcp.verify_checksum(SRC, Ipv4Addr::new(198, 18, 0, 3)));
    }

    #[test]
    fn fill_checksum_reproduces_kernel_value() {
        let mut bytes = LINUX_SYN;
        let mut tcp = TcpSegment::new_checked(&mut bytes[20..]).unwrap();
        tcp.set_checksum(0xffff);
        assert!(!tcp.verify_checksum(SRC, DST));
        tcp.fill_checksum(SRC, DST);
        assert_eq!(tcp.checksum(), 0xd19d);
        assert_eq!(bytes, LINUX_SYN);
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = [0u8; 27];
        let mut tcp = TcpSegment::new_unchecked(&mut bytes[..]);
        tcp.set_src_port(1);
        tcp.set_dst_port(2);
        tcp.set_seq_number(0xdead_beef);
        tcp.set_ack_number(0xffff_ffff);
        tcp.set_header_len(24);
        tcp.set_flags(TcpFlags::ACK | TcpFlags::PSH);
        tcp.set_window(1234);
        tcp.set_urgent(9);
        tcp.options_mut().copy_from_slice(&[1, 1, 1, 0]);
        tcp.payload_mut().copy_from_slice(b"abc");
        tcp.fill_checksum(SRC, DST);
        let tcp = TcpSegment::new_checked(&bytes[..]).unwrap();
        assert_eq!(tcp.src_port(), 1);
        assert_eq!(tcp.dst_port(), 2);
        assert_eq!(tcp.seq_number(), 0xdead_beef);
        assert_eq!(tcp.ack_number(), 0xffff_ffff);
        assert_eq!(tcp.header_len(), 24);
        assert_eq!(tcp.flags(), TcpFlags::ACK | TcpFlags::PSH);
        assert_eq!(tcp.window(), 1234);
        assert_eq!(tcp.urgent(), 9);
        assert_eq!(tcp.options(), &[1, 1, 1, 0]);
        assert_eq!(tcp.payload(), b"abc");
        // Odd total length: the last payload byte is padded for the checksum.
        assert!(tcp.verify_checksum(SRC, DST));
        assert_eq!(tcp.into_inner().len(), 27);
    }

    #[test]
    fn set_header_len_keeps_reserved_bits() {
        let mut bytes = [0u8; 20];
        bytes[field::DATA_OFF] = 0x0f;
        let mut tcp = TcpSegment::new_unchecked(&mut bytes[..]);
        tcp.set_header_len(20);
        assert_eq!(bytes[field::DATA_OFF], 0x5f);
    }

    #[test]
    fn rejects_malformed() {
        let seg = &LINUX_SYN[20..];
        assert_eq!(
            TcpSegment::new_checked(&seg[..19]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            TcpSegment::new_checked(&seg[..39]).unwrap_err(),
            Error::Truncated
        );
        let mut bad = seg.to_vec();
        bad[field::DATA_OFF] = 0x40;
        assert_eq!(
            TcpSegment::new_checked(&bad[..]).unwrap_err(),
            Error::BadHeaderLen
        );
        bad[field::DATA_OFF] = 0xf0;
        assert_eq!(
            TcpSegment::new_checked(&bad[..]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn flags_ops_and_debug() {
        let mut flags = TcpFlags::SYN | TcpFlags::ACK;
        assert!(flags.contains(TcpFlags::SYN));
        assert!(flags.contains(TcpFlags::SYN | TcpFlags::ACK));
        assert!(!flags.contains(TcpFlags::SYN | TcpFlags::FIN));
        assert!(flags.intersects(TcpFlags::SYN | TcpFlags::FIN));
        assert_eq!(flags & TcpFlags::ACK, TcpFlags::ACK);
        assert_eq!(format!("{flags:?}"), "SYN|ACK");
        flags.remove(TcpFlags::SYN);
        flags |= TcpFlags::FIN;
        flags.insert(TcpFlags::CWR);
        assert_eq!(flags.bits(), 0x91);
        assert_eq!(format!("{:?}", TcpFlags::empty()), "(empty)");
        assert!(TcpFlags::default().is_empty());
        let all = [
            TcpFlags::FIN,
            TcpFlags::SYN,
            TcpFlags::RST,
            TcpFlags::PSH,
            TcpFlags::ACK,
            TcpFlags::URG,
            TcpFlags::ECE,
            TcpFlags::CWR,
        ];
        let mut union = TcpFlags::empty();
        for f in all {
            assert_eq!(f.bits().count_ones(), 1);
            assert!(!union.intersects(f));
            union |= f;
        }
        assert_eq!(union.bits(), 0xff);
    }
}
