//! Frame layout and authentication: header parsing, sealing and tag checking.
//!
//! ```text
//! offset  size  field
//! 0       2     magic "BT"
//! 2       1     version (2)
//! 3       1     kind (see [`kind`])
//! 4       4     payload length, at most MAX_PAYLOAD_LEN
//! 8       8     counter
//! 16      len   payload
//! 16+len  16    tag = HMAC-SHA256(key, header || payload [|| bound])[..16]
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ProtoError;

pub(crate) type HmacSha256 = Hmac<Sha256>;

pub const MAGIC: [u8; 2] = *b"BT";
/// The frame format and protocol version this crate speaks.
pub const VERSION: u8 = 2;

pub const MAGIC_OFFSET: usize = 0;
pub const VERSION_OFFSET: usize = 2;
pub const KIND_OFFSET: usize = 3;
pub const LENGTH_OFFSET: usize = 4;
pub const COUNTER_OFFSET: usize = 8;
pub const HEADER_LEN: usize = 16;
pub const TAG_LEN: usize = 16;
/// Largest payload accepted or sent: 256 KiB, room for two full IPv4 packets and more.
pub const MAX_PAYLOAD_LEN: usize = 256 * 1024;

/// Frame kind codes. Assigned once and never renumbered: a peer of another version must read
/// them the same way. Handshake kinds are below 0x10, messages from 0x10 on.
pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const HELLO_ACK: u8 = 0x02;
    pub const HANDOFF_REQUEST: u8 = 0x10;
    pub const HANDOFF_ACCEPTED: u8 = 0x11;
    pub const HANDOFF_REFUSED: u8 = 0x12;
    pub const HANDOFF_ABORT: u8 = 0x13;
    pub const CONN_CLOSED: u8 = 0x14;
    pub const DISPATCH_QUERY: u8 = 0x15;
    pub const DISPATCH_ANSWER: u8 = 0x16;
    pub const DRAINING: u8 = 0x17;
    pub const NODE_STATUS: u8 = 0x18;
    pub const MOVE_QUIESCE: u8 = 0x19;
    pub const MOVE_QUIET: u8 = 0x1a;
    pub const MOVE_BUSY: u8 = 0x1b;
    pub const MOVE_RELEASE: u8 = 0x1c;
    pub const MOVE_RESUME: u8 = 0x1d;
    pub const CAPABILITIES: u8 = 0x1e;
    pub const HEARTBEAT: u8 = 0x20;
}

/// A complete, not yet authenticated frame, borrowed from the input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawFrame<'a> {
    pub kind: u8,
    pub counter: u64,
    pub header: &'a [u8],
    pub payload: &'a [u8],
    pub tag: &'a [u8],
}

impl RawFrame<'_> {
    pub fn len(&self) -> usize {
        self.header.len() + self.payload.len() + self.tag.len()
    }

    /// Checks the tag in constant time; `bound` is authenticated data that is not sent.
    pub fn verify(&self, mac: &HmacSha256, bound: &[u8]) -> Result<(), ProtoError> {
        let mut mac = mac.clone();
        mac.update(self.header);
        mac.update(self.payload);
        mac.update(bound);
        mac.verify_truncated_left(self.tag)
            .map_err(|_| ProtoError::Forged)
    }
}

/// Finds the first frame in `input`. `Ok(None)`: not enough bytes yet. Rejects a bad magic,
/// version or length as soon as those bytes are present, so junk never gets buffered.
pub(crate) fn split_frame(input: &[u8]) -> Result<Option<RawFrame<'_>>, ProtoError> {
    let magic_seen = input.len().min(MAGIC.len());
    if input[..magic_seen] != MAGIC[..magic_seen] {
        return Err(ProtoError::BadMagic);
    }
    if let Some(&version) = input.get(VERSION_OFFSET)
        && version != VERSION
    {
        return Err(ProtoError::Version(version));
    }
    let Some(length) = input.get(LENGTH_OFFSET..COUNTER_OFFSET) else {
        return Ok(None);
    };
    let payload_len = u32::from_be_bytes([length[0], length[1], length[2], length[3]]);
    let payload_len = usize::try_from(payload_len)
        .ok()
        .filter(|&len| len <= MAX_PAYLOAD_LEN)
        .ok_or(ProtoError::TooLarge {
            len: u64::from(payload_len),
        })?;
    let payload_end = HEADER_LEN + payload_len;
    let Some(frame) = input.get(..payload_end + TAG_LEN) else {
        return Ok(None);
    };
    let counter = frame[COUNTER_OFFSET..HEADER_LEN]
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    Ok(Some(RawFrame {
        kind: frame[KIND_OFFSET],
        counter,
        header: &frame[..HEADER_LEN],
        payload: &frame[HEADER_LEN..payload_end],
        tag: &frame[payload_end..],
    }))
}

/// Builds a complete frame; `bound` is authenticated along but not sent.
pub(crate) fn seal(
    mac: &HmacSha256,
    kind: u8,
    counter: u64,
    payload: &[u8],
    bound: &[u8],
) -> Result<Vec<u8>, ProtoError> {
    let too_large = ProtoError::TooLarge {
        len: u64::try_from(payload.len()).unwrap_or(u64::MAX),
    };
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(too_large);
    }
    let payload_len = u32::try_from(payload.len()).map_err(|_| too_large)?;

    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
    frame.extend_from_slice(&MAGIC);
    frame.push(VERSION);
    frame.push(kind);
    frame.extend_from_slice(&payload_len.to_be_bytes());
    frame.extend_from_slice(&counter.to_be_bytes());
    frame.extend_from_slice(payload);

    let mut mac = mac.clone();
    mac.update(&frame);
    mac.update(bound);
    let full_tag = mac.finalize().into_bytes();
    frame.extend_from_slice(&full_tag[..TAG_LEN]);
    Ok(frame)
}
