//! Strategies and independent checks shared by the property and fuzz tests.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::Ipv4Addr;

use baton_wire::options::emitted_len;
use baton_wire::{Ipv4Packet, SackBlocks, TcpFlags, TcpOption, TcpPacketBuilder, TcpSegment};
use proptest::prelude::*;

/// Kinds that `TcpOption` names; `Unknown` must use another one.
const NAMED_KINDS: [u8; 7] = [0, 1, 2, 3, 4, 5, 8];

/// A u32 that is often within a few steps of the 2^32 wrap (on either side).
pub fn near_wrap_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        (0u32..16).prop_map(|x| u32::MAX - x),
        0u32..16,
        (0u32..16).prop_map(|x| 0x8000_0000 - 8 + x),
    ]
}

pub fn arb_addr() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

/// Any option except End of Option List (which would end parsing early).
pub fn arb_option() -> impl Strategy<Value = TcpOption> {
    prop_oneof![
        Just(TcpOption::NoOp),
        any::<u16>().prop_map(TcpOption::Mss),
        any::<u8>().prop_map(TcpOption::WindowScale),
        Just(TcpOption::SackPermitted),
        proptest::collection::vec((near_wrap_u32(), near_wrap_u32()), 1..=4)
            .prop_map(|blocks| TcpOption::Sack(SackBlocks::new(&blocks).unwrap())),
        (near_wrap_u32(), near_wrap_u32())
            .prop_map(|(tsval, tsecr)| TcpOption::Timestamps { tsval, tsecr }),
        (
            any::<u8>().prop_filter("named kind", |k| !NAMED_KINDS.contains(k)),
            proptest::collection::vec(any::<u8>(), 0..12),
        )
            .prop_map(|(kind, data)| TcpOption::Unknown { kind, data }),
    ]
}

/// Options that fit a TCP header (at most 40 bytes once padded).
pub fn arb_header_options() -> impl Strategy<Value = Vec<TcpOption>> {
    proptest::collection::vec(arb_option(), 0..8).prop_map(|mut opts| {
        while emitted_len(&opts) > 40 {
            opts.pop();
        }
        opts
    })
}

pub fn arb_flags() -> impl Strategy<Value = TcpFlags> {
    prop_oneof![
        any::<u8>().prop_map(TcpFlags),
        Just(TcpFlags::ACK),
        Just(TcpFlags::ACK | TcpFlags::PSH),
        Just(TcpFlags::SYN),
    ]
}

pub fn arb_builder() -> impl Strategy<Value = TcpPacketBuilder> {
    (
        (arb_addr(), any::<u16>(), arb_addr(), any::<u16>()),
        (
            near_wrap_u32(),
            near_wrap_u32(),
            arb_flags(),
            any::<u16>(),
            any::<u16>(),
        ),
        arb_header_options(),
        proptest::collection::vec(any::<u8>(), 0..64),
        (any::<u8>(), any::<u16>(), any::<u8>()),
    )
        .prop_map(
            |(
                (src, src_port, dst, dst_port),
                (seq, ack, flags, window, urgent),
                options,
                payload,
                (ttl, ident, dscp_ecn),
            )| {
                let mut b = TcpPacketBuilder::new(src, src_port, dst, dst_port);
                b.seq = seq;
                b.ack = ack;
                b.flags = flags;
                b.window = window;
                b.urgent = urgent;
                b.options = options;
                b.payload = payload;
                b.ttl = ttl;
                b.ident = ident;
                b.dscp_ecn = dscp_ecn;
                b
            },
        )
}

/// What `parse(build(b))` gives: `b` with one End of Option List when padding was needed.
pub fn with_padding_marker(b: &TcpPacketBuilder) -> TcpPacketBuilder {
    let mut expected = b.clone();
    let unpadded: usize = b.options.iter().map(TcpOption::encoded_len).sum();
    if !unpadded.is_multiple_of(4) {
        expected.options.push(TcpOption::EndOfList);
    }
    expected
}

/// Insert `words` 4-byte IP options (NOPs) into a valid packet and fix the IPv4 header
/// (length fields and checksum recomputed in full); the TCP checksum does not cover them.
pub fn with_ip_options(pkt: &[u8], words: usize) -> Vec<u8> {
    let header_len = usize::from(pkt[0] & 0x0f) * 4;
    let mut out = pkt[..header_len].to_vec();
    out.extend(std::iter::repeat_n(1u8, words * 4));
    out.extend_from_slice(&pkt[header_len..]);
    let mut ip = Ipv4Packet::new_unchecked(&mut out[..]);
    ip.set_header_len(header_len + words * 4);
    let total = ip.total_len() + (words * 4) as u16;
    ip.set_total_len(total);
    ip.fill_checksum();
    out
}

/// A deliberately naive Internet checksum, independent of `baton_wire::checksum`.
pub fn naive_checksum(data: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    for (i, byte) in data.iter().enumerate() {
        acc += if i % 2 == 0 {
            u64::from(*byte) << 8
        } else {
            u64::from(*byte)
        };
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Check both checksums of an IPv4/TCP packet with [`naive_checksum`] only, building the pseudo
/// header by hand.
pub fn naive_checksums_ok(pkt: &[u8]) -> bool {
    let header_len = usize::from(pkt[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    let segment = &pkt[header_len..total_len];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&pkt[12..20]);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(segment);
    naive_checksum(&pkt[..header_len]) == 0 && naive_checksum(&pseudo) == 0
}

/// The packet with both checksums recomputed in full by the views.
pub fn recomputed(pkt: &[u8]) -> Vec<u8> {
    let mut copy = pkt.to_vec();
    let mut ip = Ipv4Packet::new_checked(&mut copy[..]).unwrap();
    ip.fill_checksum();
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    TcpSegment::new_checked(ip.payload_mut())
        .unwrap()
        .fill_checksum(src, dst);
    copy
}

/// Both checksums verify, and equal a full recomputation bit for bit.
pub fn checksums_are_full_recomputation(pkt: &[u8]) -> bool {
    let ip = Ipv4Packet::new_checked(pkt).unwrap();
    let tcp = TcpSegment::new_checked(ip.payload()).unwrap();
    ip.verify_checksum()
        && tcp.verify_checksum(ip.src_addr(), ip.dst_addr())
        && recomputed(pkt) == pkt
}
