//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! The checksum is the ones' complement of the ones' complement sum of the data taken as
//! big-endian 16-bit words. [`sum`] accumulates without folding (a `u32` whose value is
//! congruent to the ones' complement sum modulo 0xffff), [`combine`] adds two such sums, [`fold`]
//! reduces one to 16 bits, and [`checksum`] is `!fold(sum(data))`.
//!
//! A slice given to [`sum`] is taken to start at an even offset of the checksummed data: an odd
//! trailing byte is the high byte of a word padded with zero (RFC 1071 §4.1).
//!
//! The `update_*` functions patch a checksum after a field changed, without reading the rest of
//! the data, using RFC 1624 equation 3: `HC' = ~(~HC + ~m + m')`. Equation 3 (unlike equation 2)
//! never produces the wrong zero: if `csum` was computed by [`checksum`] over data whose sum is
//! not zero (always true of an IPv4 header, and of a TCP segment with its pseudo header), the
//! result is bit-for-bit what a full recomputation over the changed data gives.

use std::net::Ipv4Addr;

/// Ones' complement accumulation of `data` as big-endian 16-bit words, an odd trailing byte
/// padded with a zero low byte. The result is not folded; combine sums with [`combine`] and
/// finish with [`fold`] or [`checksum`].
pub fn sum(data: &[u8]) -> u32 {
    // A u64 accumulator cannot overflow for any slice that fits in memory (2^48 words).
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(2);
    for word in &mut words {
        acc += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    // End-around carry into 32 bits keeps the value congruent modulo 0xffff (2^32 = 1 mod 0xffff).
    while acc > u64::from(u32::MAX) {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    acc as u32
}

/// Ones' complement addition of two unfolded sums (end-around carry on overflow), so that
/// sums of separate pieces (pseudo header, header, payload) can be added without overflow.
pub fn combine(a: u32, b: u32) -> u32 {
    let (total, carry) = a.overflowing_add(b);
    // With a carry, total <= u32::MAX - 1, so adding it back cannot overflow again.
    total + u32::from(carry)
}

/// Fold a 32-bit accumulation into a 16-bit ones' complement sum (end-around carries).
/// The result is 0 only if `sum` is 0.
pub fn fold(sum: u32) -> u16 {
    let mut folded = sum;
    while folded > 0xffff {
        folded = (folded & 0xffff) + (folded >> 16);
    }
    folded as u16
}

/// The Internet checksum of `data` (RFC 1071): `!fold(sum(data))`.
///
/// Computed over data that includes a correct checksum field, the result is 0.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// Unfolded sum of the IPv4 pseudo header that TCP and UDP checksums cover: source and
/// destination addresses, a zero byte, the protocol, and the transport length (header + data).
pub fn pseudo_header_ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u32 {
    let [s0, s1, s2, s3] = src.octets();
    let [d0, d1, d2, d3] = dst.octets();
    u32::from(u16::from_be_bytes([s0, s1]))
        + u32::from(u16::from_be_bytes([s2, s3]))
        + u32::from(u16::from_be_bytes([d0, d1]))
        + u32::from(u16::from_be_bytes([d2, d3]))
        + u32::from(protocol)
        + u32::from(length)
}

/// Update checksum `csum` after a 16-bit word at an even offset changed from `old` to `new`
/// (RFC 1624 eqn. 3).
pub fn update_u16(csum: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!csum) + u32::from(!old) + u32::from(new))
}

/// Update checksum `csum` after a 32-bit field at an even offset changed from `old` to `new`.
/// Both halves are handled in one equation-3 step.
pub fn update_u32(csum: u16, old: u32, new: u32) -> u16 {
    let (old_hi, old_lo) = ((old >> 16) as u16, old as u16);
    let (new_hi, new_lo) = ((new >> 16) as u16, new as u16);
    !fold(
        u32::from(!csum)
            + u32::from(!old_hi)
            + u32::from(!old_lo)
            + u32::from(new_hi)
            + u32::from(new_lo),
    )
}

/// Update checksum `csum` after the bytes `old`, at an even offset of the checksummed data, were
/// replaced in place by `new` (same length; an even length is the usual case, an odd trailing
/// byte is handled as in [`sum`], which is right because the byte after it did not change).
///
/// Strictly, this removes `old`'s sum and adds `new`'s, so it never panics whatever the lengths;
/// it is only meaningful for an in-place replacement.
pub fn update_bytes(csum: u16, old: &[u8], new: &[u8]) -> u16 {
    !fold(u32::from(!csum) + u32::from(!fold(sum(old))) + u32::from(fold(sum(new))))
}

/// [`update_bytes`] for bytes at any `offset` from the start of the checksummed data.
///
/// TCP options need not be aligned (a single NOP shifts everything after it by one), so a
/// timestamp or SACK edge may start at an odd offset. Bytes at an odd offset sit in the low
/// halves of the checksum's words, and the ones' complement sum is byte-order independent
/// (RFC 1071 §2(B)): their contribution is the byte-swapped sum of the same bytes at an even
/// offset.
pub fn update_bytes_at(csum: u16, offset: usize, old: &[u8], new: &[u8]) -> u16 {
    let (mut old_sum, mut new_sum) = (fold(sum(old)), fold(sum(new)));
    if offset % 2 == 1 {
        old_sum = old_sum.swap_bytes();
        new_sum = new_sum.swap_bytes();
    }
    !fold(u32::from(!csum) + u32::from(!old_sum) + u32::from(new_sum))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deliberately naive checksum (one carry fold per word) to check the real one against.
    fn naive_checksum(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        let mut i = 0;
        while i < data.len() {
            let hi = u32::from(data[i]) << 8;
            let lo = data.get(i + 1).map_or(0, |b| u32::from(*b));
            acc += hi | lo;
            if acc > 0xffff {
                acc -= 0xffff;
            }
            i += 2;
        }
        !(acc as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: these bytes sum to ddf2 (in ones' complement), so the checksum is 220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), 0x220d);
    }

    #[test]
    fn odd_length_pads_low_byte() {
        assert_eq!(sum(&[0x12]), 0x1200);
        assert_eq!(sum(&[0x00, 0x01, 0x12]), 0x1201);
        assert_eq!(
            checksum(&[0xab, 0xcd, 0xef]),
            naive_checksum(&[0xab, 0xcd, 0xef])
        );
    }

    #[test]
    fn fold_end_around_carry() {
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xffff), 0xffff);
        assert_eq!(fold(0x1_0000), 0x0001);
        assert_eq!(fold(0x0001_ffff), 0x0001);
        assert_eq!(fold(0xffff_ffff), 0xffff);
    }

    #[test]
    fn combine_carries() {
        assert_eq!(combine(1, 2), 3);
        assert_eq!(combine(u32::MAX, 1), 1);
        assert_eq!(combine(u32::MAX, u32::MAX), u32::MAX);
    }

    #[test]
    fn large_input_does_not_overflow() {
        let data = vec![0xff; 1 << 20];
        assert_eq!(checksum(&data), naive_checksum(&data));
        assert_eq!(fold(sum(&data)), 0xffff);
    }

    #[test]
    fn checksum_over_data_with_its_checksum_is_zero() {
        let mut data = vec![0x45, 0x00, 0x12, 0x34, 0x00, 0x00, 0xab, 0xcd];
        let csum = checksum(&data);
        data[4..6].copy_from_slice(&csum.to_be_bytes());
        assert_eq!(checksum(&data), 0);
    }

    #[test]
    fn rfc1624_example_gives_plus_zero() {
        // RFC 1624 §4: eqn. 2 would give 0xffff here; recomputation and eqn. 3 give 0x0000.
        assert_eq!(update_u16(0xdd2f, 0x5555, 0x3285), 0x0000);
        assert_eq!(update_u32(0xdd2f, 0x0000_5555, 0x0000_3285), 0x0000);
        assert_eq!(update_bytes(0xdd2f, &[0x55, 0x55], &[0x32, 0x85]), 0x0000);
    }

    #[test]
    fn pseudo_header_matches_bytes() {
        let src = Ipv4Addr::new(198, 18, 0, 1);
        let dst = Ipv4Addr::new(198, 18, 0, 2);
        let bytes = [198, 18, 0, 1, 198, 18, 0, 2, 0, 6, 0x01, 0x2c];
        assert_eq!(
            fold(pseudo_header_ipv4(src, dst, 6, 300)),
            fold(sum(&bytes))
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn sum_matches_naive(data in proptest::collection::vec(any::<u8>(), 0..300)) {
                prop_assert_eq!(checksum(&data), naive_checksum(&data));
            }

            #[test]
            fn sum_of_pieces_is_sum_of_whole(
                data in proptest::collection::vec(any::<u8>(), 0..300),
                cut in any::<usize>(),
            ) {
                // Cutting at an even offset keeps the word alignment of the second piece.
                let cut = (cut % (data.len() + 1)) & !1;
                let (a, b) = data.split_at(cut);
                prop_assert_eq!(fold(combine(sum(a), sum(b))), fold(sum(&data)));
            }

            #[test]
            fn incremental_equals_recomputation(
                body in proptest::collection::vec(any::<u8>(), 2..120),
                at in any::<usize>(),
                replacement in proptest::collection::vec(any::<u8>(), 0..9),
            ) {
                // A fixed nonzero first word, as every IPv4 header and TCP pseudo header has,
                // so the full checksum is canonical (never 0xffff).
                let mut data = vec![0x45, 0x00];
                data.extend_from_slice(&body);
                let at = 2 + at % body.len();
                let len = replacement.len().min(data.len() - at);
                let old = data[at..at + len].to_vec();
                let new = &replacement[..len];
                let before = checksum(&data);
                data[at..at + len].copy_from_slice(new);
                let after = checksum(&data);
                prop_assert_eq!(update_bytes_at(before, at, &old, new), after);
                if at % 2 == 0 {
                    prop_assert_eq!(update_bytes(before, &old, new), after);
                }
                if at % 2 == 0 && len == 2 {
                    let o = u16::from_be_bytes([old[0], old[1]]);
                    let n = u16::from_be_bytes([new[0], new[1]]);
                    prop_assert_eq!(update_u16(before, o, n), after);
                }
                if at % 2 == 0 && len == 4 {
                    let o = u32::from_be_bytes([old[0], old[1], old[2], old[3]]);
                    let n = u32::from_be_bytes([new[0], new[1], new[2], new[3]]);
                    prop_assert_eq!(update_u32(before, o, n), after);
                }
            }
        }
    }
}
