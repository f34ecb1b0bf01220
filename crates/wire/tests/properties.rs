//! Property tests: round trips, incremental checksums against full recomputation, and
//! translation against an independent model built from `TcpPacketBuilder`.

mod common;

use std::net::Ipv4Addr;

use baton_wire::{
    Ipv4Packet, SackBlocks, TcpFlags, TcpOption, TcpPacketBuilder, Translation, emit_options,
    find_sack, find_timestamps, parse_options, rewrite_dst_addr, rewrite_src_addr,
    translate_to_client, translate_to_server,
};
use common::*;
use proptest::prelude::*;

/// A valid packet as it may arrive: maybe with IP options, maybe with link-layer padding after
/// the IPv4 total length.
#[derive(Debug, Clone)]
struct PacketCase {
    builder: TcpPacketBuilder,
    ip_option_words: usize,
    trailer: Vec<u8>,
}

impl PacketCase {
    /// The packet bytes for `b` in this case's framing.
    fn bytes_for(&self, b: &TcpPacketBuilder) -> Vec<u8> {
        let mut pkt = with_ip_options(&b.build(), self.ip_option_words);
        pkt.extend_from_slice(&self.trailer);
        pkt
    }

    fn bytes(&self) -> Vec<u8> {
        self.bytes_for(&self.builder)
    }

    /// End of the IPv4 packet proper (before the trailer).
    fn total_len(&self) -> usize {
        self.builder.packet_len() + self.ip_option_words * 4
    }
}

fn arb_case() -> impl Strategy<Value = PacketCase> {
    (
        arb_builder(),
        prop_oneof![3 => Just(0usize), 1 => 1usize..=3],
        proptest::collection::vec(any::<u8>(), 0..4),
    )
        .prop_map(|(builder, ip_option_words, trailer)| PacketCase {
            builder,
            ip_option_words,
            trailer,
        })
}

fn arb_translation() -> impl Strategy<Value = Translation> {
    (near_wrap_u32(), near_wrap_u32()).prop_map(|(seq, ts)| Translation::new(seq, ts))
}

/// Independent model of `translate_to_server`, on the builder's fields.
fn model_to_server(b: &TcpPacketBuilder, t: &Translation) -> TcpPacketBuilder {
    let mut m = b.clone();
    if m.flags.contains(TcpFlags::ACK) {
        m.ack = m.ack.wrapping_add(t.seq_delta);
    }
    if let Some(TcpOption::Sack(blocks)) = m
        .options
        .iter_mut()
        .rfind(|o| matches!(o, TcpOption::Sack(_)))
    {
        let shifted: Vec<(u32, u32)> = blocks
            .as_slice()
            .iter()
            .map(|(l, r)| (l.wrapping_add(t.seq_delta), r.wrapping_add(t.seq_delta)))
            .collect();
        *blocks = SackBlocks::new(&shifted).unwrap();
    }
    if let Some(TcpOption::Timestamps { tsecr, .. }) = m
        .options
        .iter_mut()
        .rfind(|o| matches!(o, TcpOption::Timestamps { .. }))
    {
        *tsecr = tsecr.wrapping_add(t.ts_delta);
    }
    m
}

/// Independent model of `translate_to_client`.
fn model_to_client(b: &TcpPacketBuilder, t: &Translation) -> TcpPacketBuilder {
    let mut m = b.clone();
    m.seq = m.seq.wrapping_sub(t.seq_delta);
    if let Some(TcpOption::Timestamps { tsval, .. }) = m
        .options
        .iter_mut()
        .rfind(|o| matches!(o, TcpOption::Timestamps { .. }))
    {
        *tsval = tsval.wrapping_sub(t.ts_delta);
    }
    m
}

/// Offset (in the options area) of the data of the last option matching `pred` (the one TCP
/// uses), computed from the encoded lengths of the options before it.
fn data_offset_of(opts: &[TcpOption], pred: impl Fn(&TcpOption) -> bool) -> Option<usize> {
    let index = opts.iter().rposition(pred)?;
    Some(
        opts[..index]
            .iter()
            .map(TcpOption::encoded_len)
            .sum::<usize>()
            + 2,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (1) builder -> bytes -> parse -> bytes.
    #[test]
    fn builder_parse_build_round_trip(b in arb_builder()) {
        let pkt = b.build();
        prop_assert_eq!(pkt.len(), b.packet_len());
        prop_assert!(naive_checksums_ok(&pkt), "checksums fail an independent check");
        let ip = Ipv4Packet::new_checked(&pkt[..]).unwrap();
        prop_assert!(ip.dont_frag() && !ip.is_fragment());
        let parsed = TcpPacketBuilder::parse(&pkt).unwrap();
        prop_assert_eq!(&parsed, &with_padding_marker(&b));
        prop_assert_eq!(parsed.build(), pkt);
    }

    /// (2) options -> bytes -> parse, and the lookups point at the right bytes.
    #[test]
    fn options_emit_parse_round_trip(
        opts in proptest::collection::vec(arb_option(), 0..10),
        prefix in proptest::collection::vec(any::<u8>(), 0..3),
    ) {
        let mut out = prefix.clone();
        emit_options(&opts, &mut out);
        let area = &out[prefix.len()..];
        prop_assert_eq!(area.len() % 4, 0);
        prop_assert_eq!(area.len(), baton_wire::options::emitted_len(&opts));

        let parsed = parse_options(area).unwrap();
        let mut expected = opts.clone();
        if !opts.iter().map(TcpOption::encoded_len).sum::<usize>().is_multiple_of(4) {
            expected.push(TcpOption::EndOfList);
        }
        prop_assert_eq!(&parsed, &expected);
        let mut again = Vec::new();
        emit_options(&parsed, &mut again);
        prop_assert_eq!(&again[..], area);

        let ts = data_offset_of(&opts, |o| matches!(o, TcpOption::Timestamps { .. }));
        prop_assert_eq!(find_timestamps(area), ts);
        if let (Some(at), Some(TcpOption::Timestamps { tsval, tsecr })) =
            (ts, opts.iter().rfind(|o| matches!(o, TcpOption::Timestamps { .. })))
        {
            prop_assert_eq!(u32::from_be_bytes(area[at..at + 4].try_into().unwrap()), *tsval);
            prop_assert_eq!(u32::from_be_bytes(area[at + 4..at + 8].try_into().unwrap()), *tsecr);
        }
        let sack = data_offset_of(&opts, |o| matches!(o, TcpOption::Sack(_)));
        let last_sack = opts.iter().rev().find_map(|o| match o {
            TcpOption::Sack(blocks) => Some(*blocks),
            _ => None,
        });
        prop_assert_eq!(find_sack(area), sack.zip(last_sack.map(|b| b.len())));
        if let (Some(at), Some(blocks)) = (sack, last_sack) {
            let left = u32::from_be_bytes(area[at..at + 4].try_into().unwrap());
            prop_assert_eq!(left, blocks.as_slice()[0].0);
        }
    }

    /// (3) Every rewrite patches checksums incrementally to exactly what a full recomputation
    /// gives, and produces what the model (rebuilt from scratch) produces.
    #[test]
    fn incremental_checksums_equal_recomputation(
        case in arb_case(),
        t in arb_translation(),
        addr in arb_addr(),
    ) {
        let original = case.bytes();
        let end = case.total_len();
        prop_assert!(checksums_are_full_recomputation(&original));

        let mut pkt = original.clone();
        translate_to_server(&mut pkt, &t).unwrap();
        prop_assert!(checksums_are_full_recomputation(&pkt));
        prop_assert!(naive_checksums_ok(&pkt));
        prop_assert_eq!(&pkt, &case.bytes_for(&model_to_server(&case.builder, &t)));

        let mut pkt = original.clone();
        translate_to_client(&mut pkt, &t).unwrap();
        prop_assert!(checksums_are_full_recomputation(&pkt));
        prop_assert!(naive_checksums_ok(&pkt));
        prop_assert_eq!(&pkt, &case.bytes_for(&model_to_client(&case.builder, &t)));

        let mut pkt = original.clone();
        rewrite_src_addr(&mut pkt, addr).unwrap();
        prop_assert!(checksums_are_full_recomputation(&pkt));
        let mut model = case.builder.clone();
        model.src = addr;
        prop_assert_eq!(&pkt, &case.bytes_for(&model));

        let mut pkt = original.clone();
        rewrite_dst_addr(&mut pkt, addr).unwrap();
        prop_assert!(checksums_are_full_recomputation(&pkt));
        let mut model = case.builder.clone();
        model.dst = addr;
        prop_assert_eq!(&pkt, &case.bytes_for(&model));

        // The path a handed-off connection's packets take: F->B plus translation, both ways.
        let mut pkt = original.clone();
        rewrite_dst_addr(&mut pkt, addr).unwrap();
        translate_to_server(&mut pkt, &t).unwrap();
        prop_assert!(checksums_are_full_recomputation(&pkt));
        let mut pkt = original.clone();
        translate_to_client(&mut pkt, &t).unwrap();
        rewrite_src_addr(&mut pkt, addr).unwrap();
        prop_assert!(checksums_are_full_recomputation(&pkt));
        prop_assert_eq!(&pkt[end..], &case.trailer[..]);
    }

    /// (4) Translating back with negated deltas restores every byte, across the 2^32 wrap.
    #[test]
    fn translation_inverts(case in arb_case(), t in arb_translation(), addr in arb_addr()) {
        let original = case.bytes();

        let mut pkt = original.clone();
        translate_to_server(&mut pkt, &t).unwrap();
        translate_to_server(&mut pkt, &t.inverse()).unwrap();
        prop_assert_eq!(&pkt, &original);

        let mut pkt = original.clone();
        translate_to_client(&mut pkt, &t).unwrap();
        translate_to_client(&mut pkt, &t.inverse()).unwrap();
        prop_assert_eq!(&pkt, &original);

        // The client's view of its own outgoing packet is the inverse of the server's view.
        let mut pkt = original.clone();
        translate_to_server(&mut pkt, &t).unwrap();
        let mut b = TcpPacketBuilder::parse(&pkt).unwrap();
        if case.builder.flags.contains(TcpFlags::ACK) {
            b.ack = b.ack.wrapping_sub(t.seq_delta);
            prop_assert_eq!(b.ack, case.builder.ack);
        }

        let mut pkt = original.clone();
        rewrite_src_addr(&mut pkt, addr).unwrap();
        rewrite_dst_addr(&mut pkt, addr).unwrap();
        rewrite_src_addr(&mut pkt, case.builder.src).unwrap();
        rewrite_dst_addr(&mut pkt, case.builder.dst).unwrap();
        prop_assert_eq!(&pkt, &original);
    }

    /// A packet whose checksum is wrong stays wrong by the same amount: translation never
    /// "repairs" a corrupt packet (and thereby never launders one).
    #[test]
    fn bad_checksum_stays_bad(case in arb_case(), t in arb_translation(), damage in 1u16..) {
        let mut pkt = case.bytes();
        let tcp_checksum_at = 20 + case.ip_option_words * 4 + 16;
        let good = u16::from_be_bytes([pkt[tcp_checksum_at], pkt[tcp_checksum_at + 1]]);
        // Any change other than 0 <-> 0xffff (the two zeros) breaks the checksum.
        let bad = good.wrapping_add(damage);
        prop_assume!(!matches!((good, bad), (0, 0xffff) | (0xffff, 0)));
        pkt[tcp_checksum_at..tcp_checksum_at + 2].copy_from_slice(&bad.to_be_bytes());
        translate_to_server(&mut pkt, &t).unwrap();
        translate_to_client(&mut pkt, &t).unwrap();
        let ip = Ipv4Packet::new_checked(&pkt[..]).unwrap();
        let tcp = baton_wire::TcpSegment::new_checked(ip.payload()).unwrap();
        prop_assert!(!tcp.verify_checksum(ip.src_addr(), ip.dst_addr()));
    }
}

/// (4) with the extremes spelled out: every field and delta at the wrap.
#[test]
fn wraparound_extremes() {
    let mut b = TcpPacketBuilder::new(
        Ipv4Addr::new(198, 18, 0, 10),
        1,
        Ipv4Addr::new(198, 18, 0, 1),
        2,
    );
    b.flags = TcpFlags::ACK;
    b.options = vec![
        TcpOption::NoOp,
        TcpOption::Timestamps {
            tsval: u32::MAX,
            tsecr: u32::MAX,
        },
        TcpOption::NoOp,
        TcpOption::Sack(
            SackBlocks::new(&[(u32::MAX, 0), (u32::MAX - 1, 1), (0, u32::MAX)]).unwrap(),
        ),
    ];
    for seq_ack in [0, 1, u32::MAX - 1, u32::MAX, 0x7fff_ffff, 0x8000_0000] {
        for delta in [1, u32::MAX, 0x8000_0000, 0x7fff_ffff] {
            b.seq = seq_ack;
            b.ack = seq_ack;
            let original = b.build();
            let t = Translation::new(delta, delta);
            for f in [translate_to_server, translate_to_client] {
                let mut pkt = original.clone();
                f(&mut pkt, &t).unwrap();
                assert!(checksums_are_full_recomputation(&pkt));
                assert_ne!(pkt, original);
                f(&mut pkt, &t.inverse()).unwrap();
                assert_eq!(pkt, original);
            }
        }
    }
}
