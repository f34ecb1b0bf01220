//! The per-packet rewrites of a handed-off connection: the user-space twin of the eBPF programs.
//!
//! After a handoff, the client talks to the FE's address and sequence space, while the BE's TCP
//! has its own initial sequence number and timestamp clock. With a [`Translation`] `t`:
//!
//! - client → server ([`translate_to_server`]): the ACK number (when ACK is set) and every SACK
//!   edge are sequence numbers of the server's stream: `+= t.seq_delta`. TSecr echoes the
//!   server's clock: `+= t.ts_delta`. The client's own seq and TSval are left alone.
//! - server → client ([`translate_to_client`]): seq `-= t.seq_delta`, TSval `-= t.ts_delta`. The
//!   ACK number, SACK edges and TSecr are in the client's spaces and are left alone.
//! - addresses ([`rewrite_src_addr`], [`rewrite_dst_addr`]): F → B on the way in, B → F on the
//!   way out.
//!
//! Every function takes a whole IPv4 packet, validates it first (IPv4, not a fragment, TCP,
//! lengths; see [`Ipv4Packet`] and [`TcpSegment`]) and on error leaves it untouched. Checksums
//! are patched incrementally (RFC 1624 eqn. 3) as each field changes, never recomputed, exactly
//! as the kernel has to do it; an invalid checksum therefore stays invalid by the same amount.
//! Option fields may sit at odd offsets, which the update takes into account
//! ([`checksum::update_bytes_at`]).
//!
//! TSecr is translated whenever a Timestamps option is present, even without ACK (where it
//! should be zero and the receiver ignores it, RFC 7323 §3.2): one rule per field keeps this
//! code and the eBPF code identical, and translating back restores it.
//!
//! Options are found with [`find_timestamps`] and [`find_sack`], which find what the kernel's
//! TCP reads: if an option appears twice, only the last one (the one TCP uses) is rewritten.
//! This is the same lookup as the eBPF programs' `find_opts`.

use std::net::Ipv4Addr;

use crate::ipv4::{self, Ipv4Packet, PROTO_TCP};
use crate::options::{find_sack, find_timestamps};
use crate::tcp::{self, OPTIONS_OFFSET, TcpFlags, TcpSegment};
use crate::{Error, checksum, read_u16, read_u32, write_u16, write_u32};

/// How the BE's sequence and timestamp spaces relate to the ones the client sees (the FE's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Translation {
    /// BE sequence number = FE (client-visible) sequence number + `seq_delta`, wrapping.
    pub seq_delta: u32,
    /// BE timestamp clock = FE (client-visible) timestamp clock + `ts_delta`, wrapping.
    pub ts_delta: u32,
}

impl Translation {
    /// A translation with the given deltas.
    pub const fn new(seq_delta: u32, ts_delta: u32) -> Self {
        Self {
            seq_delta,
            ts_delta,
        }
    }

    /// The translation between two handshakes: the FE's and the BE's initial sequence numbers
    /// (from their SYN-ACKs) and the TSval of those SYN-ACKs. Since the BE answered later, its
    /// translated TSvals start at the FE's and go forward, as PAWS requires.
    pub const fn from_handshakes(fe_isn: u32, be_isn: u32, fe_tsval: u32, be_tsval: u32) -> Self {
        Self::new(be_isn.wrapping_sub(fe_isn), be_tsval.wrapping_sub(fe_tsval))
    }

    /// The translation that undoes this one (both deltas negated).
    pub const fn inverse(self) -> Self {
        Self::new(self.seq_delta.wrapping_neg(), self.ts_delta.wrapping_neg())
    }
}

/// Rewrite the source address, patching the IPv4 header checksum and the TCP checksum (whose
/// pseudo header covers the address).
pub fn rewrite_src_addr(pkt: &mut [u8], new: Ipv4Addr) -> Result<(), Error> {
    rewrite_addr(pkt, ipv4::field::SRC_ADDR.start, new)
}

/// Rewrite the destination address, patching the IPv4 header checksum and the TCP checksum.
pub fn rewrite_dst_addr(pkt: &mut [u8], new: Ipv4Addr) -> Result<(), Error> {
    rewrite_addr(pkt, ipv4::field::DST_ADDR.start, new)
}

/// Translate a client → server packet into the BE's spaces: ack (if ACK) and SACK edges
/// `+= seq_delta`, TSecr `+= ts_delta`.
pub fn translate_to_server(pkt: &mut [u8], t: &Translation) -> Result<(), Error> {
    let mut segment = SegmentRewrite::locate(pkt)?;
    if segment.flags().contains(TcpFlags::ACK) {
        segment.map_u32(tcp::field::ACK_NUM.start, |ack| {
            ack.wrapping_add(t.seq_delta)
        });
    }
    if let Some((first_edge, blocks)) = find_sack(segment.options()) {
        // Each block is a left and a right edge, 4 bytes each.
        for edge in 0..blocks * 2 {
            let at = OPTIONS_OFFSET + first_edge + edge * 4;
            segment.map_u32(at, |edge| edge.wrapping_add(t.seq_delta));
        }
    }
    if let Some(tsval) = find_timestamps(segment.options()) {
        let tsecr = OPTIONS_OFFSET + tsval + 4;
        segment.map_u32(tsecr, |tsecr| tsecr.wrapping_add(t.ts_delta));
    }
    segment.finish();
    Ok(())
}

/// Translate a server → client packet into the FE's spaces: seq `-= seq_delta`,
/// TSval `-= ts_delta`.
pub fn translate_to_client(pkt: &mut [u8], t: &Translation) -> Result<(), Error> {
    let mut segment = SegmentRewrite::locate(pkt)?;
    segment.map_u32(tcp::field::SEQ_NUM.start, |seq| {
        seq.wrapping_sub(t.seq_delta)
    });
    if let Some(tsval) = find_timestamps(segment.options()) {
        let tsval = OPTIONS_OFFSET + tsval;
        segment.map_u32(tsval, |tsval| tsval.wrapping_sub(t.ts_delta));
    }
    segment.finish();
    Ok(())
}

/// Where the TCP segment of a valid, unfragmented IPv4/TCP packet lies.
struct TcpLocation {
    /// Offset of the TCP header in the packet (the IPv4 header length).
    start: usize,
    /// End of the segment (the IPv4 total length).
    end: usize,
    /// TCP header length, options included.
    header_len: usize,
}

fn locate_tcp(pkt: &[u8]) -> Result<TcpLocation, Error> {
    let ip = Ipv4Packet::new_checked(pkt)?;
    if ip.protocol() != PROTO_TCP {
        return Err(Error::NotTcp);
    }
    // A fragment does not carry the whole segment (a later one has no TCP header at all).
    if ip.is_fragment() {
        return Err(Error::Fragmented);
    }
    let tcp = TcpSegment::new_checked(ip.payload())?;
    Ok(TcpLocation {
        start: ip.header_len(),
        end: usize::from(ip.total_len()),
        header_len: tcp.header_len(),
    })
}

fn rewrite_addr(pkt: &mut [u8], field_start: usize, new: Ipv4Addr) -> Result<(), Error> {
    let tcp = locate_tcp(pkt)?;
    let old = read_u32(pkt, field_start);
    let new = u32::from(new);

    let ip_checksum_at = ipv4::field::CHECKSUM.start;
    let ip_checksum = read_u16(pkt, ip_checksum_at);
    write_u16(
        pkt,
        ip_checksum_at,
        checksum::update_u32(ip_checksum, old, new),
    );

    // The pseudo header holds the address as two aligned 16-bit words, like the IPv4 header.
    let tcp_checksum_at = tcp.start + tcp::field::CHECKSUM.start;
    let tcp_checksum = read_u16(pkt, tcp_checksum_at);
    write_u16(
        pkt,
        tcp_checksum_at,
        checksum::update_u32(tcp_checksum, old, new),
    );

    write_u32(pkt, field_start, new);
    Ok(())
}

/// A validated TCP segment being rewritten field by field, its checksum patched along.
struct SegmentRewrite<'a> {
    segment: &'a mut [u8],
    header_len: usize,
    checksum: u16,
}

impl<'a> SegmentRewrite<'a> {
    fn locate(pkt: &'a mut [u8]) -> Result<Self, Error> {
        let tcp = locate_tcp(pkt)?;
        let segment = pkt.get_mut(tcp.start..tcp.end).ok_or(Error::Truncated)?;
        let checksum = read_u16(segment, tcp::field::CHECKSUM.start);
        Ok(Self {
            segment,
            header_len: tcp.header_len,
            checksum,
        })
    }

    fn flags(&self) -> TcpFlags {
        TcpFlags(self.segment[tcp::field::FLAGS])
    }

    fn options(&self) -> &[u8] {
        self.segment
            .get(OPTIONS_OFFSET..self.header_len)
            .unwrap_or_default()
    }

    /// Replace the 32-bit field at `at` (from the start of the segment, any alignment) by
    /// `f(old)`, patching the checksum.
    fn map_u32(&mut self, at: usize, f: impl FnOnce(u32) -> u32) {
        // Offsets come from the validated header and the options lookups, which only return
        // fields inside the options area; a miss cannot happen, and is skipped rather than
        // allowed to panic.
        let Some(field) = self.segment.get_mut(at..at + 4) else {
            return;
        };
        let mut old = [0; 4];
        old.copy_from_slice(field);
        let new = f(u32::from_be_bytes(old)).to_be_bytes();
        self.checksum = checksum::update_bytes_at(self.checksum, at, &old, &new);
        field.copy_from_slice(&new);
    }

    fn finish(self) {
        write_u16(self.segment, tcp::field::CHECKSUM.start, self.checksum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::TcpPacketBuilder;
    use crate::ipv4::tests::LINUX_SYN;
    use crate::options::{SackBlocks, TcpOption};

    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    const FE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const BE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    /// Both checksums equal a full recomputation, not just "verify".
    fn assert_checksums_recomputed(pkt: &[u8]) {
        let ip = Ipv4Packet::new_checked(pkt).unwrap();
        let mut copy = pkt.to_vec();
        let mut recomputed = Ipv4Packet::new_checked(&mut copy[..]).unwrap();
        recomputed.fill_checksum();
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        TcpSegment::new_checked(recomputed.payload_mut())
            .unwrap()
            .fill_checksum(src, dst);
        assert_eq!(pkt, &copy[..]);
        assert!(ip.verify_checksum());
        assert!(
            TcpSegment::new_checked(ip.payload())
                .unwrap()
                .verify_checksum(src, dst)
        );
    }

    /// A client ACK with timestamps behind a single NOP (odd offsets) and two SACK blocks.
    fn client_ack() -> TcpPacketBuilder {
        let mut b = TcpPacketBuilder::new(CLIENT, 40000, FE, 80);
        b.seq = 0x1000;
        b.ack = 0xffff_fff0;
        b.flags = TcpFlags::ACK;
        b.options = vec![
            TcpOption::NoOp,
            TcpOption::Timestamps {
                tsval: 0x0102_0304,
                tsecr: 0xffff_ff00,
            },
            TcpOption::NoOp,
            TcpOption::Sack(SackBlocks::new(&[(0xffff_fff8, 0x10), (0x20, 0x30)]).unwrap()),
        ];
        b.payload = b"x".to_vec();
        b
    }

    #[test]
    fn to_server_translates_ack_sack_tsecr() {
        let b = client_ack();
        let mut pkt = b.build();
        let t = Translation::new(0x100, 0x1000);
        translate_to_server(&mut pkt, &t).unwrap();
        assert_checksums_recomputed(&pkt);

        let mut expected = b.clone();
        expected.ack = 0xf0;
        expected.options[1] = TcpOption::Timestamps {
            tsval: 0x0102_0304,
            tsecr: 0x0000_0f00,
        };
        expected.options[3] =
            TcpOption::Sack(SackBlocks::new(&[(0xf8, 0x110), (0x120, 0x130)]).unwrap());
        assert_eq!(pkt, expected.build());

        translate_to_server(&mut pkt, &t.inverse()).unwrap();
        assert_eq!(pkt, b.build());
    }

    #[test]
    fn to_server_leaves_ack_alone_without_ack_flag() {
        let mut b = client_ack();
        b.flags = TcpFlags::SYN;
        b.options.truncate(2);
        let mut pkt = b.build();
        translate_to_server(&mut pkt, &Translation::new(5, 7)).unwrap();
        let parsed = TcpPacketBuilder::parse(&pkt).unwrap();
        assert_eq!(parsed.ack, b.ack);
        assert_eq!(
            parsed.options[1],
            TcpOption::Timestamps {
                tsval: 0x0102_0304,
                tsecr: 0xffff_ff07
            }
        );
        assert_checksums_recomputed(&pkt);
    }

    #[test]
    fn to_client_translates_seq_and_tsval_of_linux_syn() {
        let mut pkt = LINUX_SYN;
        let t = Translation::new(0xc2c7_3cf3, 0xdc65_7697);
        translate_to_client(&mut pkt, &t).unwrap();
        assert_checksums_recomputed(&pkt);
        let parsed = TcpPacketBuilder::parse(&pkt).unwrap();
        assert_eq!(parsed.seq, u32::MAX);
        assert_eq!(
            parsed.options[2],
            TcpOption::Timestamps {
                tsval: u32::MAX,
                tsecr: 0
            }
        );
        assert_eq!(parsed.ack, 0);
        translate_to_client(&mut pkt, &t.inverse()).unwrap();
        assert_eq!(pkt, LINUX_SYN);
    }

    #[test]
    fn rewrites_addresses_of_linux_syn() {
        let mut pkt = LINUX_SYN;
        rewrite_dst_addr(&mut pkt, Ipv4Addr::new(198, 19, 255, 254)).unwrap();
        assert_checksums_recomputed(&pkt);
        rewrite_src_addr(&mut pkt, Ipv4Addr::new(10, 1, 2, 3)).unwrap();
        assert_checksums_recomputed(&pkt);
        let ip = Ipv4Packet::new_checked(&pkt[..]).unwrap();
        assert_eq!(ip.src_addr(), Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(198, 19, 255, 254));
        rewrite_src_addr(&mut pkt, FE).unwrap();
        rewrite_dst_addr(&mut pkt, BE).unwrap();
        assert_eq!(pkt, LINUX_SYN);
    }

    #[test]
    fn handshake_deltas() {
        let t = Translation::from_handshakes(0xffff_fff0, 0x10, 1000, 500);
        assert_eq!(t.seq_delta, 0x20);
        assert_eq!(t.ts_delta, 500u32.wrapping_sub(1000));
        assert_eq!(t.inverse().inverse(), t);
        assert_eq!(t.seq_delta.wrapping_add(t.inverse().seq_delta), 0);
    }

    #[test]
    fn rejects_without_touching() {
        let t = Translation::new(1, 1);
        let run_all = |pkt: &mut [u8]| -> [Result<(), Error>; 4] {
            [
                translate_to_server(pkt, &t),
                translate_to_client(pkt, &t),
                rewrite_src_addr(pkt, BE),
                rewrite_dst_addr(pkt, BE),
            ]
        };

        let mut udp = LINUX_SYN;
        udp[ipv4::field::PROTOCOL] = 17;
        let before = udp;
        assert_eq!(run_all(&mut udp), [Err(Error::NotTcp); 4]);
        assert_eq!(udp, before);

        let mut fragment = LINUX_SYN;
        fragment[ipv4::field::FLG_OFF.start] = 0x20; // MF
        let before = fragment;
        assert_eq!(run_all(&mut fragment), [Err(Error::Fragmented); 4]);
        assert_eq!(fragment, before);

        let mut short = LINUX_SYN[..50].to_vec();
        assert_eq!(run_all(&mut short), [Err(Error::Truncated); 4]);
        assert_eq!(short, &LINUX_SYN[..50]);

        // The IPv4 total length cuts the TCP header short.
        let mut cut = LINUX_SYN;
        cut[ipv4::field::LENGTH].copy_from_slice(&50u16.to_be_bytes());
        let before = cut;
        assert_eq!(run_all(&mut cut), [Err(Error::Truncated); 4]);
        assert_eq!(cut, before);
    }

    #[test]
    fn ignores_bytes_after_total_len() {
        let mut padded = LINUX_SYN.to_vec();
        padded.extend_from_slice(&[0xee; 6]);
        translate_to_client(&mut padded, &Translation::new(1, 1)).unwrap();
        assert_eq!(&padded[60..], &[0xee; 6]);
        assert_checksums_recomputed(&padded[..60]);
    }
}
