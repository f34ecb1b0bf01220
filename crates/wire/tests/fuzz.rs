//! Fuzz-style properties: every parser, view and rewrite, fed arbitrary or damaged bytes,
//! returns `Ok`/`Err`/`None` without panicking, and keeps its contract on what it returns.

mod common;

use std::net::Ipv4Addr;

use baton_wire::{
    Error, Ipv4Packet, SynOptions, TcpOption, TcpPacketBuilder, TcpSegment, Translation, find_sack,
    find_timestamps, parse_options, rewrite_dst_addr, rewrite_src_addr, translate_to_client,
    translate_to_server,
};
use common::*;
use proptest::prelude::*;

/// Read every field of a checked TCP view, and its options every way.
fn exercise_tcp(tcp: TcpSegment<&[u8]>) {
    let _ = (
        tcp.src_port(),
        tcp.dst_port(),
        tcp.seq_number(),
        tcp.ack_number(),
    );
    let _ = (tcp.flags(), tcp.window(), tcp.checksum(), tcp.urgent());
    assert!(tcp.header_len() >= 20);
    let _ = tcp.verify_checksum(Ipv4Addr::LOCALHOST, Ipv4Addr::BROADCAST);
    exercise_options(tcp.options());
    let len = tcp.options().len() + 20 + tcp.payload().len();
    assert_eq!(len, tcp.into_inner().len());
}

/// The lenient lookups agree with the strict parser whenever the latter accepts the bytes.
fn exercise_options(bytes: &[u8]) {
    let ts = find_timestamps(bytes);
    let sack = find_sack(bytes);
    if let Some(at) = ts {
        assert!(at + 8 <= bytes.len());
        assert_eq!(bytes[at - 2], 8);
    }
    if let Some((at, blocks)) = sack {
        assert!((1..=4).contains(&blocks));
        assert!(at + blocks * 8 <= bytes.len());
        assert_eq!(bytes[at - 2], 5);
    }
    let syn = SynOptions::parse(bytes);
    match parse_options(bytes) {
        Ok(opts) => {
            assert_eq!(syn, Ok(SynOptions::from_options(&opts)));
            let last_ts = opts.iter().rev().find_map(|o| match o {
                TcpOption::Timestamps { tsval, .. } => Some(*tsval),
                _ => None,
            });
            let found = ts.map(|at| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()));
            assert_eq!(found, last_ts);
            let last_sack = opts.iter().rev().find_map(|o| match o {
                TcpOption::Sack(blocks) => Some(blocks.len()),
                _ => None,
            });
            assert_eq!(sack.map(|(_, n)| n), last_sack);
            // What was parsed emits back to the same bytes, up to End of Option List.
            let mut out = Vec::new();
            baton_wire::emit_options(&opts, &mut out);
            let consumed: usize = opts.iter().map(TcpOption::encoded_len).sum();
            assert_eq!(&out[..consumed], &bytes[..consumed]);
        }
        Err(Error::BadOption { offset }) => {
            assert!(offset < bytes.len());
            assert!(syn.is_err());
        }
        Err(other) => panic!("parse_options returned {other:?}"),
    }
}

/// A rewrite of a packet in place.
type Rewrite<'a> = dyn Fn(&mut [u8]) -> Result<(), Error> + 'a;

/// Feed `bytes` to everything; check the contracts that hold for any input.
fn exercise_everything(bytes: &[u8]) {
    if let Ok(ip) = Ipv4Packet::new_checked(bytes) {
        let _ = (
            ip.version(),
            ip.dscp_ecn(),
            ip.ident(),
            ip.dont_frag(),
            ip.ttl(),
        );
        let _ = (ip.protocol(), ip.checksum(), ip.src_addr(), ip.dst_addr());
        let _ = (ip.frag_offset(), ip.is_fragment(), ip.verify_checksum());
        assert!(ip.header_len() >= 20 && ip.header().len() == ip.header_len());
        assert_eq!(
            ip.header_len() + ip.payload().len(),
            usize::from(ip.total_len())
        );
        if let Ok(tcp) = TcpSegment::new_checked(ip.payload()) {
            exercise_tcp(tcp);
        }
    }
    if let Ok(tcp) = TcpSegment::new_checked(bytes) {
        exercise_tcp(tcp);
    }
    exercise_options(bytes);

    if let Ok(parsed) = TcpPacketBuilder::parse(bytes) {
        // Whatever parses, builds; and parsing that gives the same fields back.
        let rebuilt = parsed.try_build().expect("a parsed packet always builds");
        assert_eq!(TcpPacketBuilder::parse(&rebuilt), Ok(parsed));
    }

    let t = Translation::new(0x8000_0001, 0xffff_fffe);
    let rewrites: [&Rewrite<'_>; 4] = [
        &|p| translate_to_server(p, &t),
        &|p| translate_to_client(p, &t),
        &|p| rewrite_src_addr(p, Ipv4Addr::new(10, 0, 0, 1)),
        &|p| rewrite_dst_addr(p, Ipv4Addr::new(10, 0, 0, 2)),
    ];
    let verified_before = checksums_verify(bytes);
    for rewrite in rewrites {
        let mut pkt = bytes.to_vec();
        match rewrite(&mut pkt) {
            Err(_) => assert_eq!(pkt, bytes, "an error must leave the packet untouched"),
            Ok(()) => {
                let end = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
                assert_eq!(
                    &pkt[end..],
                    &bytes[end..],
                    "bytes after the packet untouched"
                );
                // Incremental updates keep a valid checksum valid, whatever the packet.
                if verified_before {
                    assert!(checksums_verify(&pkt));
                }
            }
        }
    }
}

fn checksums_verify(bytes: &[u8]) -> bool {
    let Ok(ip) = Ipv4Packet::new_checked(bytes) else {
        return false;
    };
    let Ok(tcp) = TcpSegment::new_checked(ip.payload()) else {
        return false;
    };
    ip.verify_checksum() && tcp.verify_checksum(ip.src_addr(), ip.dst_addr())
}

/// A valid packet with a few bytes overwritten, so that inputs get past the first checks.
fn arb_damaged_packet() -> impl Strategy<Value = Vec<u8>> {
    (
        arb_builder(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        0usize..3,
        any::<bool>(),
    )
        .prop_map(|(b, damage, ip_option_words, cut)| {
            let mut pkt = with_ip_options(&b.build(), ip_option_words);
            for (at, byte) in damage {
                let at = at % pkt.len();
                pkt[at] = byte;
            }
            if cut {
                pkt.pop();
            }
            pkt
        })
}

/// Option areas built from plausible pieces, with damage.
fn arb_damaged_options() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(arb_option(), 0..6),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
    )
        .prop_map(|(opts, damage)| {
            let mut out = Vec::new();
            baton_wire::emit_options(&opts, &mut out);
            for (at, byte) in damage {
                if !out.is_empty() {
                    let at = at % out.len();
                    out[at] = byte;
                }
            }
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// (5) Arbitrary bytes.
    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        exercise_everything(&bytes);
    }

    /// (5) Bytes that look like IPv4 with no options, so the deeper checks are reached.
    #[test]
    fn ipv4_looking_bytes(
        rest in proptest::collection::vec(any::<u8>(), 19..100),
        tcp in any::<bool>(),
    ) {
        let mut bytes = vec![0x45];
        bytes.extend_from_slice(&rest);
        if tcp {
            bytes[9] = 6;
            bytes[6] &= 0x40; // keep DF, no MF, offset 0
            bytes[7] = 0;
        }
        let len = bytes.len() as u16;
        if u16::from_be_bytes([bytes[2], bytes[3]]) > len {
            bytes[2..4].copy_from_slice(&len.to_be_bytes());
        }
        exercise_everything(&bytes);
    }

    /// (5) Valid packets with damage.
    #[test]
    fn damaged_packets(pkt in arb_damaged_packet()) {
        exercise_everything(&pkt);
    }

    /// (5) Options areas, arbitrary and damaged.
    #[test]
    fn option_bytes(
        arbitrary in proptest::collection::vec(any::<u8>(), 0..48),
        damaged in arb_damaged_options(),
    ) {
        exercise_options(&arbitrary);
        exercise_options(&damaged);
    }
}
