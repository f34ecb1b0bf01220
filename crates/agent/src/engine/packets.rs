//! The packets the engine builds or reads: rebuilt client segments, the replayed SYN, the silent
//! reset, captured packets. Pure functions over `baton_wire`.

use std::net::Ipv4Addr;

use baton_bpf::{Conn, ConnKey};
use baton_wire::{SynOptions, TcpFlags, TcpOption, TcpPacketBuilder, parse_options};

/// The client's stream `data` (from sequence `seq` on, acknowledging `ack`) as the client's own
/// segments toward `dst`, each at most `mtu` bytes long, with the headers of `template` (the
/// client's latest segment: its timestamps, window, ECN bits) and its FIN at the end if `fin`.
/// The first segment carries the ACK that completes a handshake, so servers that defer accept
/// until data arrives take the connection like any other.
pub fn client_segments(
    template: &TcpPacketBuilder,
    dst: Ipv4Addr,
    seq: u32,
    ack: u32,
    data: &[u8],
    fin: bool,
    mtu: usize,
) -> Vec<Vec<u8>> {
    let header = 40 + baton_wire::options::emitted_len(&template.options);
    let chunk = mtu.saturating_sub(header).max(1);
    let mut pieces: Vec<&[u8]> = data.chunks(chunk).collect();
    if pieces.is_empty() && fin {
        pieces.push(&[]);
    }
    let last = pieces.len().saturating_sub(1);
    let mut offset = 0u32;
    pieces
        .iter()
        .enumerate()
        .filter_map(|(i, piece)| {
            let mut seg = template.clone();
            seg.dst = dst;
            seg.seq = seq.wrapping_add(offset);
            seg.ack = ack;
            seg.flags = TcpFlags::ACK;
            if !piece.is_empty() {
                seg.flags |= TcpFlags::PSH;
            }
            if fin && i == last {
                seg.flags |= TcpFlags::FIN;
            }
            seg.payload = piece.to_vec();
            offset = offset.wrapping_add(piece.len() as u32);
            seg.try_build().ok()
        })
        .collect()
}

/// The client's SYN as the FE's datapath recorded it: ISN, window, options, and its ECN request
/// (ECE and CWR), so the BE's TCP negotiates what the FE's did.
pub fn client_syn(key: &ConnKey, entry: &Conn) -> Option<Vec<u8>> {
    let (client, local) = (key.client(), key.local());
    let mut syn = TcpPacketBuilder::new(*client.ip(), client.port(), *local.ip(), local.port());
    syn.seq = entry.client_isn;
    syn.flags = TcpFlags::SYN | (TcpFlags(entry.syn_tcp_flags) & (TcpFlags::ECE | TcpFlags::CWR));
    syn.window = entry.syn_window;
    syn.options = parse_options(entry.syn_options()).ok()?;
    syn.try_build().ok()
}

/// A RST that ends the local TCP's side of `key` (no timestamps: RFC 7323 §5.2 lets a RST skip
/// PAWS only without them). Injected toward a local address, only the local TCP sees it.
pub fn reset(key: &ConnKey, client_isn: u32) -> Option<Vec<u8>> {
    let (client, local) = (key.client(), key.local());
    let mut rst = TcpPacketBuilder::new(*client.ip(), client.port(), *local.ip(), local.port());
    rst.seq = client_isn.wrapping_add(1);
    rst.flags = TcpFlags::RST;
    rst.window = 0;
    rst.try_build().ok()
}

/// Recomputes the IPv4 and TCP checksums of a complete packet in place (no-op on anything else):
/// captured below the stack, a packet may carry a partial (offload) checksum, and whatever is
/// replayed from it must carry a full one.
pub fn fill_checksums(packet: &mut [u8]) {
    let Ok(mut ip) = baton_wire::Ipv4Packet::new_checked(&mut packet[..]) else {
        return;
    };
    ip.fill_checksum();
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if let Ok(mut tcp) = baton_wire::TcpSegment::new_checked(ip.payload_mut()) {
        tcp.fill_checksum(src, dst);
    }
}

/// The options of a captured SYN or SYN-ACK, as negotiated.
pub fn syn_options(packet: &[u8]) -> Option<SynOptions> {
    let ip = baton_wire::Ipv4Packet::new_checked(packet).ok()?;
    let tcp = baton_wire::TcpSegment::new_checked(ip.payload()).ok()?;
    SynOptions::parse(tcp.options()).ok()
}

/// The TSecr of a segment's timestamps option, if it has one.
pub fn echoed_tsval(segment: &TcpPacketBuilder) -> Option<u32> {
    segment.options.iter().find_map(|o| match o {
        TcpOption::Timestamps { tsecr, .. } => Some(*tsecr),
        _ => None,
    })
}

/// Parses a captured packet; a capture cut short by the ring's limit is read as the prefix it is.
pub fn parse_captured(packet: &[u8], pkt_len: u32) -> Option<TcpPacketBuilder> {
    if packet.len() >= pkt_len as usize {
        return TcpPacketBuilder::parse(packet).ok();
    }
    let mut prefix = packet.to_vec();
    let len = u16::try_from(prefix.len()).ok()?;
    if prefix.len() < 4 {
        return None;
    }
    prefix[2..4].copy_from_slice(&len.to_be_bytes());
    TcpPacketBuilder::parse(&prefix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> TcpPacketBuilder {
        let mut t = TcpPacketBuilder::new(
            Ipv4Addr::new(198, 18, 0, 254),
            40000,
            Ipv4Addr::new(198, 18, 0, 1),
            80,
        );
        t.options = vec![
            TcpOption::NoOp,
            TcpOption::NoOp,
            TcpOption::Timestamps { tsval: 1, tsecr: 2 },
        ];
        t
    }

    #[test]
    fn segments_cover_the_stream_in_order_with_the_fin_last() {
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let dst = Ipv4Addr::new(198, 18, 0, 2);
        let packets = client_segments(&template(), dst, u32::MAX - 10, 7, &data, true, 1500);
        let segs: Vec<TcpPacketBuilder> = packets
            .iter()
            .map(|p| TcpPacketBuilder::parse(p).unwrap())
            .collect();
        assert!(packets.iter().all(|p| p.len() <= 1500));
        let mut joined = Vec::new();
        let mut seq = u32::MAX - 10;
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(s.seq, seq);
            assert_eq!(s.ack, 7);
            assert_eq!(s.dst, dst);
            assert!(s.flags.contains(TcpFlags::ACK));
            assert_eq!(s.flags.contains(TcpFlags::FIN), i == segs.len() - 1);
            seq = seq.wrapping_add(s.payload.len() as u32);
            joined.extend_from_slice(&s.payload);
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn a_bare_fin_is_one_segment_and_no_data_no_fin_is_none() {
        let dst = Ipv4Addr::new(198, 18, 0, 1);
        let fin = client_segments(&template(), dst, 5, 6, &[], true, 1500);
        assert_eq!(fin.len(), 1);
        let s = TcpPacketBuilder::parse(&fin[0]).unwrap();
        assert!(s.flags.contains(TcpFlags::FIN) && s.payload.is_empty());
        assert!(client_segments(&template(), dst, 5, 6, &[], false, 1500).is_empty());
    }
}
