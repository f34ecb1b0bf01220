//! Building whole IPv4+TCP packets ([`TcpPacketBuilder`]) and taking them apart again.
//!
//! [`TcpPacketBuilder::build`] makes a packet with a 20-byte IPv4 header (no IP options, DF set,
//! not a fragment), the TCP header with the options emitted by [`emit_options`], the payload,
//! and both checksums computed in full. [`TcpPacketBuilder::parse`] is its inverse: for any
//! builder `b`, `parse(&b.build())` gives `b` back, except that when the options needed padding
//! its `options` end with one [`TcpOption::EndOfList`]; building that again gives the same bytes.
//!
//! Parsing a packet that did not come from the builder drops what the builder cannot express:
//! IP options, the DF bit (always set again), the TCP reserved bits, option padding bytes after
//! End of Option List (re-emitted as zeros), and the checksums (recomputed, so a packet with a
//! bad checksum comes back with a good one; check with the views first if that matters).

use std::net::Ipv4Addr;

use crate::Error;
use crate::ipv4::{self, Ipv4Packet, PROTO_TCP};
use crate::options::{TcpOption, emit_options, emitted_len, parse_options};
use crate::tcp::{self, MAX_OPTIONS_LEN, TcpFlags, TcpSegment};

/// Every field of an IPv4+TCP packet that baton builds or replays.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TcpPacketBuilder {
    /// IPv4 source address.
    pub src: Ipv4Addr,
    /// IPv4 destination address.
    pub dst: Ipv4Addr,
    /// TCP source port.
    pub src_port: u16,
    /// TCP destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Control bits.
    pub flags: TcpFlags,
    /// Receive window, as on the wire (unscaled).
    pub window: u16,
    /// Urgent pointer (meaningful with URG only; 0 by default).
    pub urgent: u16,
    /// TCP options, emitted in order and padded (at most 40 bytes once padded).
    pub options: Vec<TcpOption>,
    /// TCP payload.
    pub payload: Vec<u8>,
    /// IPv4 time to live (64 by default).
    pub ttl: u8,
    /// IPv4 identification.
    pub ident: u16,
    /// IPv4 DSCP and ECN byte (0 by default); kept so that a replayed packet keeps its ECN mark.
    pub dscp_ecn: u8,
}

impl TcpPacketBuilder {
    /// A packet from `src:src_port` to `dst:dst_port` with no flags, seq and ack 0, a window of
    /// 65535, no options, no payload, TTL 64, ident 0.
    pub fn new(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16) -> Self {
        Self {
            src,
            dst,
            src_port,
            dst_port,
            seq: 0,
            ack: 0,
            flags: TcpFlags::empty(),
            window: u16::MAX,
            urgent: 0,
            options: Vec::new(),
            payload: Vec::new(),
            ttl: 64,
            ident: 0,
            dscp_ecn: 0,
        }
    }

    /// Length of the packet [`build`](Self::build) makes.
    pub fn packet_len(&self) -> usize {
        ipv4::HEADER_LEN + tcp::HEADER_LEN + emitted_len(&self.options) + self.payload.len()
    }

    /// Build the packet, or say why it cannot be: options longer than 40 bytes once padded
    /// ([`Error::OptionsTooLong`]), or a packet longer than 65535 bytes
    /// ([`Error::PacketTooLong`]).
    pub fn try_build(&self) -> Result<Vec<u8>, Error> {
        let options_len = emitted_len(&self.options);
        if options_len > MAX_OPTIONS_LEN {
            return Err(Error::OptionsTooLong { len: options_len });
        }
        let total_len = self.packet_len();
        let total_len_field =
            u16::try_from(total_len).map_err(|_| Error::PacketTooLong { len: total_len })?;

        let mut pkt = vec![0; ipv4::HEADER_LEN + tcp::HEADER_LEN];
        emit_options(&self.options, &mut pkt);
        pkt.extend_from_slice(&self.payload);

        let mut ip = Ipv4Packet::new_unchecked(&mut pkt[..]);
        ip.set_version(4);
        ip.set_header_len(ipv4::HEADER_LEN);
        ip.set_dscp_ecn(self.dscp_ecn);
        ip.set_total_len(total_len_field);
        ip.set_ident(self.ident);
        // DF: TCP does its own path MTU discovery, and Linux sets DF on TCP for the same reason.
        ip.set_dont_frag(true);
        ip.set_ttl(self.ttl);
        ip.set_protocol(PROTO_TCP);
        ip.set_src_addr(self.src);
        ip.set_dst_addr(self.dst);
        ip.fill_checksum();

        let mut tcp = TcpSegment::new_unchecked(ip.payload_mut());
        tcp.set_src_port(self.src_port);
        tcp.set_dst_port(self.dst_port);
        tcp.set_seq_number(self.seq);
        tcp.set_ack_number(self.ack);
        tcp.set_header_len(tcp::HEADER_LEN + options_len);
        tcp.set_flags(self.flags);
        tcp.set_window(self.window);
        tcp.set_urgent(self.urgent);
        tcp.fill_checksum(self.src, self.dst);
        Ok(pkt)
    }

    /// Build the packet.
    ///
    /// # Panics
    ///
    /// If [`try_build`](Self::try_build) fails: options longer than 40 bytes once padded, or a
    /// packet longer than 65535 bytes. A builder from [`parse`](Self::parse) always builds; use
    /// `try_build` when the fields come from elsewhere.
    pub fn build(&self) -> Vec<u8> {
        match self.try_build() {
            Ok(pkt) => pkt,
            Err(err) => panic!("TcpPacketBuilder::build: {err}"),
        }
    }

    /// Take an IPv4+TCP packet apart (see the module docs for what is dropped). Bytes after
    /// the IPv4 total length are ignored. Options are parsed strictly.
    pub fn parse(pkt: &[u8]) -> Result<Self, Error> {
        let ip = Ipv4Packet::new_checked(pkt)?;
        if ip.protocol() != PROTO_TCP {
            return Err(Error::NotTcp);
        }
        if ip.is_fragment() {
            return Err(Error::Fragmented);
        }
        let tcp = TcpSegment::new_checked(ip.payload())?;
        Ok(Self {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            src_port: tcp.src_port(),
            dst_port: tcp.dst_port(),
            seq: tcp.seq_number(),
            ack: tcp.ack_number(),
            flags: tcp.flags(),
            window: tcp.window(),
            urgent: tcp.urgent(),
            options: parse_options(tcp.options())?,
            payload: tcp.payload().to_vec(),
            ttl: ip.ttl(),
            ident: ip.ident(),
            dscp_ecn: ip.dscp_ecn(),
        })
    }
}

impl Default for TcpPacketBuilder {
    /// [`TcpPacketBuilder::new`] with unspecified (0.0.0.0:0) endpoints.
    fn default() -> Self {
        Self::new(Ipv4Addr::UNSPECIFIED, 0, Ipv4Addr::UNSPECIFIED, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv4::tests::LINUX_SYN;
    use crate::options::SackBlocks;

    fn linux_syn_builder() -> TcpPacketBuilder {
        let mut b = TcpPacketBuilder::new(
            Ipv4Addr::new(198, 18, 0, 1),
            40000,
            Ipv4Addr::new(198, 18, 0, 2),
            80,
        );
        b.seq = 0xc2c7_3cf2;
        b.flags = TcpFlags::SYN;
        b.window = 64240;
        b.ident = 0x4e05;
        b.options = vec![
            TcpOption::Mss(1460),
            TcpOption::SackPermitted,
            TcpOption::Timestamps {
                tsval: 0xdc65_7696,
                tsecr: 0,
            },
            TcpOption::NoOp,
            TcpOption::WindowScale(10),
        ];
        b
    }

    #[test]
    fn builds_the_linux_syn_byte_for_byte() {
        // Both checksums in LINUX_SYN were computed by the kernel.
        assert_eq!(linux_syn_builder().build(), LINUX_SYN);
        assert_eq!(linux_syn_builder().packet_len(), LINUX_SYN.len());
    }

    #[test]
    fn parses_the_linux_syn() {
        assert_eq!(
            TcpPacketBuilder::parse(&LINUX_SYN).unwrap(),
            linux_syn_builder()
        );
    }

    #[test]
    fn parse_then_build_normalises_padding() {
        let mut b = linux_syn_builder();
        b.options = vec![TcpOption::Mss(1400)];
        b.payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        b.flags = TcpFlags::ACK | TcpFlags::PSH;
        b.dscp_ecn = 0x02;
        let pkt = b.build();
        let parsed = TcpPacketBuilder::parse(&pkt).unwrap();
        assert_eq!(parsed.options, vec![TcpOption::Mss(1400)]);
        assert_eq!(parsed, b);

        b.options = vec![TcpOption::WindowScale(3)];
        let pkt = b.build();
        let parsed = TcpPacketBuilder::parse(&pkt).unwrap();
        assert_eq!(
            parsed.options,
            vec![TcpOption::WindowScale(3), TcpOption::EndOfList]
        );
        assert_eq!(parsed.build(), pkt);
    }

    #[test]
    fn refuses_oversized() {
        let mut b = TcpPacketBuilder::default();
        let sack = TcpOption::Sack(SackBlocks::new(&[(1, 2); 4]).unwrap());
        let ts = TcpOption::Timestamps { tsval: 1, tsecr: 2 };
        b.options = vec![sack.clone(), ts];
        assert_eq!(b.try_build(), Err(Error::OptionsTooLong { len: 44 }));
        b.options = vec![sack, TcpOption::NoOp, TcpOption::NoOp, TcpOption::NoOp];
        assert_eq!(b.try_build().unwrap().len(), 80);
        b.options.clear();
        b.payload = vec![0; 65535 - 40];
        assert_eq!(b.try_build().unwrap().len(), 65535);
        b.payload.push(0);
        assert_eq!(b.try_build(), Err(Error::PacketTooLong { len: 65536 }));
    }

    #[test]
    #[should_panic(expected = "more than 65535")]
    fn build_panics_only_on_oversized() {
        let b = TcpPacketBuilder {
            payload: vec![0; 70000],
            ..TcpPacketBuilder::default()
        };
        let _ = b.build();
    }

    #[test]
    fn parse_rejects_what_it_cannot_represent() {
        let mut udp = LINUX_SYN;
        udp[ipv4::field::PROTOCOL] = 17;
        assert_eq!(TcpPacketBuilder::parse(&udp), Err(Error::NotTcp));
        let mut frag = LINUX_SYN;
        frag[ipv4::field::FLG_OFF.start] = 0x00;
        frag[ipv4::field::FLG_OFF.start + 1] = 0x01;
        assert_eq!(TcpPacketBuilder::parse(&frag), Err(Error::Fragmented));
        let mut bad_option = LINUX_SYN;
        bad_option[41] = 3; // MSS length 3
        assert_eq!(
            TcpPacketBuilder::parse(&bad_option),
            Err(Error::BadOption { offset: 0 })
        );
    }

    #[test]
    fn parse_skips_ip_options() {
        // The Linux SYN with a 4-byte IP option (NOP NOP NOP EOL) inserted.
        let mut pkt = LINUX_SYN[..20].to_vec();
        pkt.extend_from_slice(&[1, 1, 1, 0]);
        pkt.extend_from_slice(&LINUX_SYN[20..]);
        pkt[0] = 0x46;
        pkt[ipv4::field::LENGTH].copy_from_slice(&64u16.to_be_bytes());
        assert_eq!(TcpPacketBuilder::parse(&pkt).unwrap(), linux_syn_builder());
    }
}
