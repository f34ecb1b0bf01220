//! What the FE keeps of a held connection while it decides: the client's byte stream from its
//! first byte, reassembled from held segments that may arrive out of order, duplicated or
//! overlapping, and the headers of the latest segment (a template for the segments it replays).
//!
//! Contract: [`StreamAssembler`] is pure. `contiguous()` is always exactly the client's bytes from
//! sequence `base` up to the first gap, whatever order and overlap the segments came in, and it
//! never holds more than `capacity` bytes (later bytes are dropped and the client retransmits them).

use std::collections::BTreeMap;

use baton_wire::SeqNumber;

#[derive(Debug, Clone)]
pub struct StreamAssembler {
    /// Sequence number of the first stream byte (client ISN + 1).
    base: u32,
    capacity: usize,
    contiguous: Vec<u8>,
    /// Out-of-order pieces keyed by offset from `base`.
    pending: BTreeMap<usize, Vec<u8>>,
    /// Offset of the client's FIN, once seen.
    fin_at: Option<usize>,
}

impl StreamAssembler {
    pub fn new(base: u32, capacity: usize) -> Self {
        StreamAssembler {
            base,
            capacity,
            contiguous: Vec::new(),
            pending: BTreeMap::new(),
            fin_at: None,
        }
    }

    pub fn base(&self) -> u32 {
        self.base
    }

    pub fn contiguous(&self) -> &[u8] {
        &self.contiguous
    }

    /// True when the FIN was seen and every byte before it is contiguous.
    pub fn finished(&self) -> bool {
        self.fin_at == Some(self.contiguous.len())
    }

    /// Adds a segment's payload starting at sequence `seq`, and a FIN after it if `fin`.
    pub fn add(&mut self, seq: u32, payload: &[u8], fin: bool) {
        let offset = SeqNumber(seq).distance(SeqNumber(self.base));
        // Bytes before `base` (a retransmitted SYN's phantom byte, or garbage) are cut off.
        let (offset, payload) = if offset < 0 {
            let skip = offset.unsigned_abs() as usize;
            if skip >= payload.len() {
                if fin && skip == payload.len() {
                    self.fin_at.get_or_insert(0);
                }
                return;
            }
            (0usize, &payload[skip..])
        } else {
            (offset as usize, payload)
        };
        if fin {
            self.fin_at.get_or_insert(offset + payload.len());
        }
        if offset >= self.capacity || payload.is_empty() {
            return;
        }
        let end = (offset + payload.len()).min(self.capacity);
        let piece = &payload[..end - offset];
        if offset <= self.contiguous.len() {
            self.extend_from(offset, piece);
            self.drain_pending();
        } else {
            let slot = self.pending.entry(offset).or_default();
            if piece.len() > slot.len() {
                *slot = piece.to_vec();
            }
        }
    }

    fn extend_from(&mut self, offset: usize, piece: &[u8]) {
        let have = self.contiguous.len();
        if offset + piece.len() > have {
            self.contiguous.extend_from_slice(&piece[have - offset..]);
        }
    }

    fn drain_pending(&mut self) {
        while let Some((&offset, _)) = self.pending.first_key_value() {
            if offset > self.contiguous.len() {
                break;
            }
            let piece = self.pending.pop_first().map(|(_, p)| p).unwrap_or_default();
            self.extend_from(offset, &piece);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_out_of_order_and_duplicates() {
        let mut s = StreamAssembler::new(1000, 1 << 16);
        s.add(1005, b"fghij", false);
        assert_eq!(s.contiguous(), b"");
        s.add(1000, b"abcde", false);
        assert_eq!(s.contiguous(), b"abcdefghij");
        s.add(1003, b"dEFg", false); // overlapping retransmission: first copy wins
        assert_eq!(s.contiguous(), b"abcdefghij");
        s.add(1010, b"", true);
        assert!(s.finished());
    }

    #[test]
    fn wraps_around_the_sequence_space() {
        let mut s = StreamAssembler::new(u32::MAX - 2, 100);
        s.add(u32::MAX - 2, b"abc", false);
        s.add(0, b"def", false);
        assert_eq!(s.contiguous(), b"abcdef");
    }

    #[test]
    fn capacity_bounds_the_stream() {
        let mut s = StreamAssembler::new(0, 4);
        s.add(0, b"abcdef", false);
        assert_eq!(s.contiguous(), b"abcd");
        s.add(10, b"zz", false);
        assert_eq!(s.contiguous(), b"abcd");
    }

    #[test]
    fn bytes_before_base_are_cut() {
        let mut s = StreamAssembler::new(100, 64);
        s.add(98, b"xyabc", false);
        assert_eq!(s.contiguous(), b"abc");
    }

    proptest! {
        #[test]
        fn any_segmentation_order_and_duplication_reassembles(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
            base in any::<u32>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
            order in any::<u64>(),
            dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
        ) {
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
            points.push(0);
            points.push(data.len());
            points.sort_unstable();
            points.dedup();
            let mut segs: Vec<(usize, usize)> = points.windows(2).map(|w| (w[0], w[1])).collect();
            for d in &dups {
                if !segs.is_empty() {
                    let s = segs[d.index(segs.len())];
                    segs.push(s);
                }
            }
            // A deterministic shuffle driven by `order`.
            let mut state = order | 1;
            for i in (1..segs.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                segs.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut s = StreamAssembler::new(base, 4096);
            for (a, b) in segs {
                s.add(base.wrapping_add(a as u32), &data[a..b], false);
            }
            prop_assert_eq!(s.contiguous(), &data[..]);
        }
    }
}
