//! TCP options: parsing, emitting, handshake negotiation, and per-packet lookups.
//!
//! Two ways to read an options area, for two jobs:
//!
//! - [`parse_options`] is strict, for packets the agent takes apart: every option must have a
//!   valid length for its kind and fit the area, or it is an [`Error::BadOption`]. Parsing stops
//!   at End of Option List (which is included in the result); bytes after it are padding.
//! - [`find_timestamps`] and [`find_sack`] are lenient, like Linux's `tcp_parse_options` and
//!   like the eBPF programs that call the same lookups per packet: the walk stops quietly at a
//!   malformed option, and an option of a known kind with the wrong length is skipped. When an
//!   option appears twice the last one counts, since Linux's parser overwrites as it walks (and
//!   the eBPF walk does the same). Whatever the kernel's TCP reads in a packet, they find, so a
//!   translated packet never carries an untranslated timestamp or SACK edge that TCP would use.
//!
//! [`emit_options`] writes options in order and pads with zero bytes (End of Option List, then
//! zero padding) to a multiple of 4, so `parse_options(emit(opts))` gives back `opts`, followed
//! by one [`TcpOption::EndOfList`] when padding was needed.

use crate::Error;

/// Option kinds (IANA "TCP Option Kind Numbers").
pub mod kind {
    /// End of Option List (RFC 9293).
    pub const END_OF_LIST: u8 = 0;
    /// No-Operation (RFC 9293).
    pub const NOP: u8 = 1;
    /// Maximum Segment Size (RFC 9293).
    pub const MSS: u8 = 2;
    /// Window Scale (RFC 7323).
    pub const WINDOW_SCALE: u8 = 3;
    /// SACK Permitted (RFC 2018).
    pub const SACK_PERMITTED: u8 = 4;
    /// SACK (RFC 2018).
    pub const SACK: u8 = 5;
    /// Timestamps (RFC 7323).
    pub const TIMESTAMPS: u8 = 8;
}

/// Option lengths in bytes, kind and length bytes included.
pub mod len {
    /// Maximum Segment Size.
    pub const MSS: usize = 4;
    /// Window Scale.
    pub const WINDOW_SCALE: usize = 3;
    /// SACK Permitted.
    pub const SACK_PERMITTED: usize = 2;
    /// Timestamps.
    pub const TIMESTAMPS: usize = 10;
    /// SACK: kind and length bytes, before the blocks.
    pub const SACK_BASE: usize = 2;
    /// SACK: each block (left and right edge).
    pub const SACK_PER_BLOCK: usize = 8;
}

/// Most blocks a SACK option can carry in 40 bytes of options (2 + 4 × 8 = 34).
pub const MAX_SACK_BLOCKS: usize = 4;

/// Longest data an option can carry: its length byte counts kind and length too.
const MAX_OPTION_DATA: usize = u8::MAX as usize - 2;

/// The 1 to 4 blocks of a SACK option, each `(left edge, right edge)`. The edges are sequence
/// numbers of the data receiver's peer, which is why a handoff must translate them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SackBlocks {
    // Invariant: 1 <= len <= 4 and unused entries are (0, 0), so derived equality is by content.
    edges: [(u32, u32); MAX_SACK_BLOCKS],
    len: u8,
}

impl SackBlocks {
    /// Blocks from a slice of 1 to 4 `(left, right)` pairs; `None` for 0 or more than 4.
    pub fn new(blocks: &[(u32, u32)]) -> Option<Self> {
        if blocks.is_empty() || blocks.len() > MAX_SACK_BLOCKS {
            return None;
        }
        let mut edges = [(0, 0); MAX_SACK_BLOCKS];
        edges[..blocks.len()].copy_from_slice(blocks);
        Some(Self {
            edges,
            len: blocks.len() as u8,
        })
    }

    /// Blocks from a SACK option's data (after kind and length): a multiple of 8 bytes,
    /// 1 to 4 blocks.
    fn from_bytes(data: &[u8]) -> Option<Self> {
        if !data.len().is_multiple_of(len::SACK_PER_BLOCK) {
            return None;
        }
        let count = data.len() / len::SACK_PER_BLOCK;
        if count == 0 || count > MAX_SACK_BLOCKS {
            return None;
        }
        let mut edges = [(0, 0); MAX_SACK_BLOCKS];
        for (edge, block) in edges.iter_mut().zip(data.chunks_exact(len::SACK_PER_BLOCK)) {
            let left = u32::from_be_bytes([block[0], block[1], block[2], block[3]]);
            let right = u32::from_be_bytes([block[4], block[5], block[6], block[7]]);
            *edge = (left, right);
        }
        Some(Self {
            edges,
            len: count as u8,
        })
    }

    /// The blocks, in wire order.
    pub fn as_slice(&self) -> &[(u32, u32)] {
        &self.edges[..usize::from(self.len)]
    }

    /// Number of blocks, 1 to 4.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Always false: a SACK option carries at least one block.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for SackBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// One TCP option.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TcpOption {
    /// End of Option List (kind 0): the rest of the area is padding.
    EndOfList,
    /// No-Operation (kind 1), used to align the next option.
    NoOp,
    /// Maximum Segment Size (kind 2).
    Mss(u16),
    /// Window Scale shift count (kind 3). Kept as sent; RFC 7323 treats values above 14 as 14.
    WindowScale(u8),
    /// SACK Permitted (kind 4).
    SackPermitted,
    /// SACK blocks (kind 5).
    Sack(SackBlocks),
    /// Timestamps (kind 8): the sender's clock and the echo of the peer's.
    Timestamps {
        /// Timestamp value: the sender's clock.
        tsval: u32,
        /// Timestamp echo reply: the latest TSval received from the peer (valid with ACK).
        tsecr: u32,
    },
    /// Any other kind, with its data (after kind and length). Not for the kinds named above:
    /// one of those with other data would not parse back. At most 253 bytes of data can be
    /// expressed; [`emit`](Self::emit) truncates longer data.
    Unknown {
        /// Option kind.
        kind: u8,
        /// Option data, without kind and length bytes.
        data: Vec<u8>,
    },
}

impl TcpOption {
    /// The option's kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Self::EndOfList => kind::END_OF_LIST,
            Self::NoOp => kind::NOP,
            Self::Mss(_) => kind::MSS,
            Self::WindowScale(_) => kind::WINDOW_SCALE,
            Self::SackPermitted => kind::SACK_PERMITTED,
            Self::Sack(_) => kind::SACK,
            Self::Timestamps { .. } => kind::TIMESTAMPS,
            Self::Unknown { kind, .. } => *kind,
        }
    }

    /// Bytes the option takes on the wire.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::EndOfList | Self::NoOp => 1,
            Self::Mss(_) => len::MSS,
            Self::WindowScale(_) => len::WINDOW_SCALE,
            Self::SackPermitted => len::SACK_PERMITTED,
            Self::Sack(blocks) => len::SACK_BASE + len::SACK_PER_BLOCK * blocks.len(),
            Self::Timestamps { .. } => len::TIMESTAMPS,
            Self::Unknown { data, .. } => 2 + data.len().min(MAX_OPTION_DATA),
        }
    }

    /// Append the option's wire form to `out` (no padding).
    pub fn emit(&self, out: &mut Vec<u8>) {
        let kind = self.kind();
        match self {
            Self::EndOfList | Self::NoOp => out.push(kind),
            Self::Mss(mss) => {
                out.extend_from_slice(&[kind, len::MSS as u8]);
                out.extend_from_slice(&mss.to_be_bytes());
            }
            Self::WindowScale(shift) => {
                out.extend_from_slice(&[kind, len::WINDOW_SCALE as u8, *shift]);
            }
            Self::SackPermitted => out.extend_from_slice(&[kind, len::SACK_PERMITTED as u8]),
            Self::Sack(blocks) => {
                out.extend_from_slice(&[kind, self.encoded_len() as u8]);
                for (left, right) in blocks.as_slice() {
                    out.extend_from_slice(&left.to_be_bytes());
                    out.extend_from_slice(&right.to_be_bytes());
                }
            }
            Self::Timestamps { tsval, tsecr } => {
                out.extend_from_slice(&[kind, len::TIMESTAMPS as u8]);
                out.extend_from_slice(&tsval.to_be_bytes());
                out.extend_from_slice(&tsecr.to_be_bytes());
            }
            Self::Unknown { data, .. } => {
                let data = &data[..data.len().min(MAX_OPTION_DATA)];
                out.extend_from_slice(&[kind, self.encoded_len() as u8]);
                out.extend_from_slice(data);
            }
        }
    }
}

/// Bytes that [`emit_options`] writes for `opts`: their lengths, rounded up to a multiple of 4.
pub fn emitted_len(opts: &[TcpOption]) -> usize {
    opts.iter()
        .map(TcpOption::encoded_len)
        .sum::<usize>()
        .next_multiple_of(4)
}

/// Append `opts` to `out` in order, then zero bytes (End of Option List and padding) up to a
/// multiple of 4 bytes from where `out` ended. A TCP header holds at most 40 option bytes; this
/// function does not check that ([`TcpPacketBuilder`](crate::TcpPacketBuilder) does).
pub fn emit_options(opts: &[TcpOption], out: &mut Vec<u8>) {
    let start = out.len();
    for opt in opts {
        opt.emit(out);
    }
    let padded = start + (out.len() - start).next_multiple_of(4);
    out.resize(padded, kind::END_OF_LIST);
}

/// Parse an options area strictly (see the module docs). The result ends with
/// [`TcpOption::EndOfList`] if the area had one; nothing after it is read.
pub fn parse_options(bytes: &[u8]) -> Result<Vec<TcpOption>, Error> {
    RawOptions::new(bytes)
        .map(|raw| raw.and_then(decode))
        .collect()
}

/// Byte offset, within the options area, of the TSval field of the well-formed Timestamps option
/// that TCP uses (the last one; TSecr follows at +4). Lenient walk, see the module docs.
pub fn find_timestamps(option_bytes: &[u8]) -> Option<usize> {
    RawOptions::new(option_bytes)
        .map_while(Result::ok)
        .filter(|raw| raw.kind == kind::TIMESTAMPS && raw.data.len() == 8)
        .last()
        .map(|raw| raw.offset + 2)
}

/// Byte offset, within the options area, of the first edge of the well-formed SACK option (1 to
/// 4 blocks of 8 bytes) that TCP uses (the last one), and its number of blocks. Lenient walk,
/// see the module docs.
pub fn find_sack(option_bytes: &[u8]) -> Option<(usize, usize)> {
    RawOptions::new(option_bytes)
        .map_while(Result::ok)
        .filter(|raw| raw.kind == kind::SACK && SackBlocks::from_bytes(raw.data).is_some())
        .last()
        .map(|raw| (raw.offset + 2, raw.data.len() / len::SACK_PER_BLOCK))
}

/// One option as framed on the wire, before its data is interpreted.
#[derive(Debug, Clone, Copy)]
struct RawOption<'a> {
    /// Offset of the kind byte within the options area.
    offset: usize,
    kind: u8,
    /// Data after kind and length (empty for End of Option List and No-Operation).
    data: &'a [u8],
}

/// Walks the framing of an options area: yields each option, or one error for a bad length or
/// an option running past the end, after which it stops. Also stops after End of Option List.
struct RawOptions<'a> {
    bytes: &'a [u8],
    offset: usize,
    done: bool,
}

impl<'a> RawOptions<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            offset: 0,
            done: false,
        }
    }
}

impl<'a> Iterator for RawOptions<'a> {
    type Item = Result<RawOption<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let offset = self.offset;
        let kind = *self.bytes.get(offset)?;
        let (option_len, data): (usize, &[u8]) = match kind {
            kind::END_OF_LIST => {
                self.done = true;
                (1, &[])
            }
            kind::NOP => (1, &[]),
            _ => {
                // Length counts kind and length bytes, so below 2 it cannot even frame itself.
                let framed = match self.bytes.get(offset + 1) {
                    Some(&option_len) if option_len >= 2 => {
                        let option_len = usize::from(option_len);
                        self.bytes
                            .get(offset + 2..offset + option_len)
                            .map(|data| (option_len, data))
                    }
                    _ => None,
                };
                match framed {
                    Some(framed) => framed,
                    None => {
                        self.done = true;
                        return Some(Err(Error::BadOption { offset }));
                    }
                }
            }
        };
        self.offset += option_len;
        Some(Ok(RawOption { offset, kind, data }))
    }
}

/// Interpret a framed option; a known kind with the wrong length is an error.
fn decode(raw: RawOption<'_>) -> Result<TcpOption, Error> {
    let bad = Error::BadOption { offset: raw.offset };
    let option = match (raw.kind, raw.data) {
        (kind::END_OF_LIST, _) => TcpOption::EndOfList,
        (kind::NOP, _) => TcpOption::NoOp,
        (kind::MSS, &[hi, lo]) => TcpOption::Mss(u16::from_be_bytes([hi, lo])),
        (kind::WINDOW_SCALE, &[shift]) => TcpOption::WindowScale(shift),
        (kind::SACK_PERMITTED, &[]) => TcpOption::SackPermitted,
        (kind::SACK, data) => TcpOption::Sack(SackBlocks::from_bytes(data).ok_or(bad)?),
        (kind::TIMESTAMPS, &[v0, v1, v2, v3, e0, e1, e2, e3]) => TcpOption::Timestamps {
            tsval: u32::from_be_bytes([v0, v1, v2, v3]),
            tsecr: u32::from_be_bytes([e0, e1, e2, e3]),
        },
        (kind::MSS | kind::WINDOW_SCALE | kind::SACK_PERMITTED | kind::TIMESTAMPS, _) => {
            return Err(bad);
        }
        (kind, data) => TcpOption::Unknown {
            kind,
            data: data.to_vec(),
        },
    };
    Ok(option)
}

/// What a SYN or SYN-ACK announces, i.e. what a handshake negotiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SynOptions {
    /// Maximum Segment Size announced.
    pub mss: Option<u16>,
    /// Window scale shift count announced (as sent).
    pub window_scale: Option<u8>,
    /// Whether SACK Permitted is present.
    pub sack_permitted: bool,
    /// Timestamps `(tsval, tsecr)` if present.
    pub timestamps: Option<(u32, u32)>,
}

impl SynOptions {
    /// Parse a SYN's or SYN-ACK's options area strictly (see [`parse_options`]). When an option
    /// appears twice the last one counts, as in Linux.
    pub fn parse(option_bytes: &[u8]) -> Result<Self, Error> {
        Ok(Self::from_options(&parse_options(option_bytes)?))
    }

    /// Collect the negotiated options from a parsed list (last occurrence wins).
    pub fn from_options(opts: &[TcpOption]) -> Self {
        let mut syn = Self::default();
        for opt in opts {
            match opt {
                TcpOption::Mss(mss) => syn.mss = Some(*mss),
                TcpOption::WindowScale(shift) => syn.window_scale = Some(*shift),
                TcpOption::SackPermitted => syn.sack_permitted = true,
                TcpOption::Timestamps { tsval, tsecr } => syn.timestamps = Some((*tsval, *tsecr)),
                _ => {}
            }
        }
        syn
    }

    /// The options in Linux's SYN layout, which keeps every 4-byte field aligned:
    /// MSS, then SACK-permitted + timestamps (or NOP NOP + either alone), then NOP + window
    /// scale. Emitted, the Linux SYN's 20 option bytes come out identical.
    pub fn to_options(&self) -> Vec<TcpOption> {
        let mut opts = Vec::new();
        if let Some(mss) = self.mss {
            opts.push(TcpOption::Mss(mss));
        }
        match (self.sack_permitted, self.timestamps) {
            (true, Some((tsval, tsecr))) => {
                opts.push(TcpOption::SackPermitted);
                opts.push(TcpOption::Timestamps { tsval, tsecr });
            }
            (false, Some((tsval, tsecr))) => {
                opts.extend([TcpOption::NoOp, TcpOption::NoOp]);
                opts.push(TcpOption::Timestamps { tsval, tsecr });
            }
            (true, None) => {
                opts.extend([TcpOption::NoOp, TcpOption::NoOp, TcpOption::SackPermitted]);
            }
            (false, None) => {}
        }
        if let Some(shift) = self.window_scale {
            opts.extend([TcpOption::NoOp, TcpOption::WindowScale(shift)]);
        }
        opts
    }

    /// The first difference, in what a handoff needs identical, between the options the client
    /// was answered with (`self`, the FE's SYN-ACK) and those the BE negotiated (`other`):
    /// window scale value, MSS value, SACK-permitted presence, timestamps presence. Timestamp
    /// values are expected to differ: translation takes care of them.
    pub fn negotiated_mismatch(&self, other: &SynOptions) -> Option<OptionMismatch> {
        if self.window_scale != other.window_scale {
            return Some(OptionMismatch::WindowScale {
                this: self.window_scale,
                other: other.window_scale,
            });
        }
        if self.mss != other.mss {
            return Some(OptionMismatch::Mss {
                this: self.mss,
                other: other.mss,
            });
        }
        if self.sack_permitted != other.sack_permitted {
            return Some(OptionMismatch::SackPermitted {
                this: self.sack_permitted,
                other: other.sack_permitted,
            });
        }
        let (this_ts, other_ts) = (self.timestamps.is_some(), other.timestamps.is_some());
        if this_ts != other_ts {
            return Some(OptionMismatch::Timestamps {
                this: this_ts,
                other: other_ts,
            });
        }
        None
    }
}

/// Which negotiated option differs between two handshakes, with both sides' values
/// (`this` from the receiver of [`SynOptions::negotiated_mismatch`], `other` from its argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum OptionMismatch {
    /// Window scale presence or shift count.
    #[error("window scale differs: {this:?} vs {other:?}")]
    WindowScale {
        /// Value on this side.
        this: Option<u8>,
        /// Value on the other side.
        other: Option<u8>,
    },
    /// MSS presence or value.
    #[error("MSS differs: {this:?} vs {other:?}")]
    Mss {
        /// Value on this side.
        this: Option<u16>,
        /// Value on the other side.
        other: Option<u16>,
    },
    /// SACK-permitted presence.
    #[error("SACK-permitted differs: {this} vs {other}")]
    SackPermitted {
        /// Presence on this side.
        this: bool,
        /// Presence on the other side.
        other: bool,
    },
    /// Timestamps presence.
    #[error("timestamps presence differs: {this} vs {other}")]
    Timestamps {
        /// Presence on this side.
        this: bool,
        /// Presence on the other side.
        other: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv4::tests::LINUX_SYN;

    fn linux_syn_options() -> &'static [u8] {
        &LINUX_SYN[40..60]
    }

    fn linux_syn_parsed() -> Vec<TcpOption> {
        vec![
            TcpOption::Mss(1460),
            TcpOption::SackPermitted,
            TcpOption::Timestamps {
                tsval: 0xdc65_7696,
                tsecr: 0,
            },
            TcpOption::NoOp,
            TcpOption::WindowScale(10),
        ]
    }

    #[test]
    fn parses_linux_syn_options() {
        assert_eq!(
            parse_options(linux_syn_options()).unwrap(),
            linux_syn_parsed()
        );
    }

    #[test]
    fn emits_linux_syn_options_byte_for_byte() {
        let mut out = vec![0xaa];
        emit_options(&linux_syn_parsed(), &mut out);
        assert_eq!(&out[1..], linux_syn_options());
        assert_eq!(emitted_len(&linux_syn_parsed()), 20);
    }

    #[test]
    fn syn_options_of_linux_syn() {
        let syn = SynOptions::parse(linux_syn_options()).unwrap();
        assert_eq!(
            syn,
            SynOptions {
                mss: Some(1460),
                window_scale: Some(10),
                sack_permitted: true,
                timestamps: Some((0xdc65_7696, 0)),
            }
        );
        assert_eq!(syn.to_options(), linux_syn_parsed());
    }

    #[test]
    fn to_options_layouts_are_aligned_and_parse_back() {
        for mss in [None, Some(536)] {
            for window_scale in [None, Some(7)] {
                for sack_permitted in [false, true] {
                    for timestamps in [None, Some((1, 2))] {
                        let syn = SynOptions {
                            mss,
                            window_scale,
                            sack_permitted,
                            timestamps,
                        };
                        let mut out = Vec::new();
                        emit_options(&syn.to_options(), &mut out);
                        let unpadded: usize =
                            syn.to_options().iter().map(TcpOption::encoded_len).sum();
                        assert_eq!(unpadded % 4, 0, "{syn:?}");
                        assert_eq!(out.len(), unpadded);
                        assert_eq!(SynOptions::parse(&out).unwrap(), syn);
                        if let Some(off) = find_timestamps(&out) {
                            assert_eq!(off % 4, 0, "TSval aligned in {syn:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn finds_timestamps_in_linux_syn() {
        // MSS (4) + SACK-permitted (2) + TS kind and length (2): TSval at byte 8.
        assert_eq!(find_timestamps(linux_syn_options()), Some(8));
        assert_eq!(find_sack(linux_syn_options()), None);
    }

    #[test]
    fn finds_sack_blocks() {
        // NOP NOP TS, NOP NOP SACK(2 blocks): the usual Linux layout of an ACK with SACK.
        let mut opts = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 1, 5, 18];
        opts.extend_from_slice(&[0, 0, 0, 10, 0, 0, 0, 20, 0, 0, 0, 30, 0, 0, 0, 40]);
        assert_eq!(find_timestamps(&opts), Some(4));
        assert_eq!(find_sack(&opts), Some((16, 2)));
        assert_eq!(
            parse_options(&opts).unwrap()[5],
            TcpOption::Sack(SackBlocks::new(&[(10, 20), (30, 40)]).unwrap())
        );
    }

    #[test]
    fn lookups_skip_wrong_length_and_stop_at_malformed() {
        // A TS option with length 6 is skipped (as Linux does), the next one is found.
        let opts = [8, 6, 0, 0, 0, 0, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(find_timestamps(&opts), Some(8));
        assert!(parse_options(&opts).is_err());
        // Twice: the last one counts, as in Linux, if the walk reaches it.
        let twice = [8, 10, 1, 2, 3, 4, 5, 6, 7, 8, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(find_timestamps(&twice), Some(12));
        let mut cut = twice;
        cut[11] = 11; // the second one now runs past the end
        assert_eq!(find_timestamps(&cut), Some(2));
        let mut sacks = vec![5, 10, 0, 0, 0, 1, 0, 0, 0, 2, 5, 18];
        sacks.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0, 6]);
        assert_eq!(find_sack(&sacks), Some((12, 2)));
        // After an option with length 1, nothing is read.
        let opts = [0x22, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(find_timestamps(&opts), None);
        // After End of Option List, nothing is read.
        let opts = [0, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(find_timestamps(&opts), None);
        // A SACK with a partial block or zero blocks is not a SACK.
        assert_eq!(find_sack(&[5, 2]), None);
        assert_eq!(find_sack(&[5, 6, 0, 0, 0, 0]), None);
        // Running past the end.
        assert_eq!(find_timestamps(&[8, 10, 1, 2, 3, 4, 5, 6, 7]), None);
        assert_eq!(find_sack(&[5, 10, 1, 2, 3, 4, 5, 6, 7]), None);
    }

    #[test]
    fn rejects_bad_options_with_offset() {
        let cases: &[(&[u8], usize)] = &[
            (&[2, 3, 5], 0),                          // MSS with length 3
            (&[1, 2, 4, 5], 1),                       // MSS running past the end
            (&[1, 1, 3, 4, 7, 0], 2),                 // window scale with length 4
            (&[4, 3, 0], 0),                          // SACK-permitted with length 3
            (&[8, 9, 0, 0, 0, 0, 0, 0, 0], 0),        // timestamps with length 9
            (&[5, 2], 0),                             // SACK without blocks
            (&[5, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0), // SACK with a partial block
            (&[1, 0x22], 1),                          // kind without a length byte
            (&[0x22, 1], 0),                          // length below 2
            (&[0x22, 0], 0),                          // length 0 (would loop forever if accepted)
        ];
        for (bytes, offset) in cases {
            assert_eq!(
                parse_options(bytes),
                Err(Error::BadOption { offset: *offset }),
                "{bytes:?}"
            );
        }
        // Five SACK blocks do not fit a TCP header; the parser refuses them.
        let mut five = vec![5, 42];
        five.extend_from_slice(&[0; 40]);
        assert_eq!(parse_options(&five), Err(Error::BadOption { offset: 0 }));
    }

    #[test]
    fn stops_at_end_of_list_and_keeps_unknown() {
        let bytes = [0x1e, 4, 0xab, 0xcd, 0, 0xff, 0xff, 0xff];
        assert_eq!(
            parse_options(&bytes).unwrap(),
            vec![
                TcpOption::Unknown {
                    kind: 0x1e,
                    data: vec![0xab, 0xcd]
                },
                TcpOption::EndOfList
            ]
        );
        assert_eq!(parse_options(&[]).unwrap(), vec![]);
    }

    #[test]
    fn emit_pads_with_end_of_list() {
        let mut out = Vec::new();
        emit_options(&[TcpOption::WindowScale(7)], &mut out);
        assert_eq!(out, [3, 3, 7, 0]);
        assert_eq!(
            parse_options(&out).unwrap(),
            vec![TcpOption::WindowScale(7), TcpOption::EndOfList]
        );
        out.clear();
        emit_options(&[], &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn emit_truncates_oversized_unknown() {
        let opt = TcpOption::Unknown {
            kind: 0xfe,
            data: vec![7; 300],
        };
        assert_eq!(opt.encoded_len(), 255);
        let mut out = Vec::new();
        opt.emit(&mut out);
        assert_eq!(out.len(), 255);
        assert_eq!(out[1], 255);
    }

    #[test]
    fn sack_blocks_bounds() {
        assert!(SackBlocks::new(&[]).is_none());
        assert!(SackBlocks::new(&[(1, 2); 5]).is_none());
        let blocks = SackBlocks::new(&[(1, 2), (3, 4)]).unwrap();
        assert_eq!(blocks.len(), 2);
        assert!(!blocks.is_empty());
        assert_eq!(blocks.as_slice(), &[(1, 2), (3, 4)]);
        assert_eq!(format!("{blocks:?}"), "[(1, 2), (3, 4)]");
        assert_ne!(blocks, SackBlocks::new(&[(1, 2)]).unwrap());
    }

    #[test]
    fn duplicate_options_last_wins() {
        let syn = SynOptions::parse(&[2, 4, 0, 100, 2, 4, 0, 200]).unwrap();
        assert_eq!(syn.mss, Some(200));
    }

    #[test]
    fn mismatch_names_the_first_difference() {
        let fe = SynOptions::parse(linux_syn_options()).unwrap();
        let mut be = fe;
        be.timestamps = Some((0x1234, 0xdc65_7696));
        assert_eq!(fe.negotiated_mismatch(&be), None);

        let mut be = fe;
        be.window_scale = Some(7);
        assert_eq!(
            fe.negotiated_mismatch(&be),
            Some(OptionMismatch::WindowScale {
                this: Some(10),
                other: Some(7)
            })
        );
        be.window_scale = None;
        assert!(matches!(
            fe.negotiated_mismatch(&be),
            Some(OptionMismatch::WindowScale { other: None, .. })
        ));

        let mut be = fe;
        be.mss = Some(1400);
        assert_eq!(
            fe.negotiated_mismatch(&be),
            Some(OptionMismatch::Mss {
                this: Some(1460),
                other: Some(1400)
            })
        );

        let mut be = fe;
        be.sack_permitted = false;
        assert_eq!(
            fe.negotiated_mismatch(&be),
            Some(OptionMismatch::SackPermitted {
                this: true,
                other: false
            })
        );

        let mut be = fe;
        be.timestamps = None;
        let mismatch = fe.negotiated_mismatch(&be).unwrap();
        assert_eq!(
            mismatch,
            OptionMismatch::Timestamps {
                this: true,
                other: false
            }
        );
        assert_eq!(
            mismatch.to_string(),
            "timestamps presence differs: true vs false"
        );
    }
}
