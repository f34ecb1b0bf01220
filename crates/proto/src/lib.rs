//! baton control-mesh frames: versioned, authenticated messages. No I/O.
//!
//! Node agents keep one TCP connection to every other node (the control mesh). This crate turns
//! the bytes of such a connection into [`Event`]s and [`Message`]s into bytes, and nothing else:
//! the caller owns the socket, the clock and the randomness, which keeps every behaviour here
//! deterministic and testable.
//!
//! # Frames
//!
//! Every message travels in one frame (big-endian, offsets in [`frame`]):
//!
//! ```text
//! 0      2        3     4              8         16           16+len
//! | "BT" | version | kind | payload len | counter | payload ... | tag (16) |
//! ```
//!
//! `tag` is the first 16 bytes of HMAC-SHA256(key, header || payload) (the HelloAck tag also
//! covers the dialer's nonce). A header announcing more than [`frame::MAX_PAYLOAD_LEN`] bytes is
//! rejected as soon as it arrives, before anything is buffered for it.
//!
//! # Sessions
//!
//! A [`Session`] is one side of one connection. The dialer opens with a `Hello` (its name and a
//! fresh nonce), the acceptor answers `HelloAck` (its name and nonce); both are tagged with the
//! cluster key and carry counter 0, and the HelloAck's tag covers the dialer's nonce so it cannot
//! be replayed to answer another Hello. Each direction then has its own session key,
//! HMAC-SHA256(cluster_key, `"baton/1 d2a"` or `"baton/1 a2d"` || nonce_d || nonce_a), and
//! counters that start at 1 and grow by exactly 1 per frame. So a frame is accepted only if it
//! was made by a holder of the cluster key, for this session, this direction, and this position
//! in the stream: forged frames are [`ProtoError::Forged`], replayed ones
//! [`ProtoError::Replay`], and skipped ones [`ProtoError::BadCounter`].
//!
//! Any error from [`Session::feed`] is fatal: the session is dead from then on (every later call
//! fails with [`ProtoError::Closed`]) and the caller closes the connection and counts the error
//! by [`ProtoError::kind`]. The one exception is an authenticated frame of a kind this version
//! does not know, which a newer peer may send: it becomes [`Event::Ignored`].
//!
//! Nothing here panics, whatever the input.

mod error;
pub mod frame;
mod message;
mod session;

pub use error::ProtoError;
pub use message::{
    BusyReason, HandoffRequest, MAX_HANDOFF_DATA_LEN, MAX_PACKET_LEN, MAX_TCP_OPTIONS_LEN, Message,
    RefuseReason,
};
/// The key of the datapaths' offers (SipHash-2-4, 16 bytes), derived from the cluster key:
/// HMAC-SHA256(cluster_key, `"baton/1 datapath offers"`), its first 16 bytes. Every member
/// derives the same one; a holder of it can make offers, so it is as secret as the cluster key.
pub fn datapath_offer_key(cluster_key: &[u8]) -> [u8; 16] {
    use hmac::Mac;
    let mut mac = <frame::HmacSha256 as Mac>::new_from_slice(cluster_key)
        .expect("HMAC takes keys of any length");
    mac.update(b"baton/1 datapath offers");
    let tag = mac.finalize().into_bytes();
    let mut key = [0; 16];
    key.copy_from_slice(&tag[..16]);
    key
}

pub use session::{Event, MAX_NODE_NAME_LEN, MIN_CLUSTER_KEY_LEN, NONCE_LEN, Nonce, Role, Session};
