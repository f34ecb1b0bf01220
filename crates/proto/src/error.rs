//! The one error type of the crate.

use thiserror::Error;

/// Everything that can go wrong while decoding or encoding. Errors returned by
/// [`Session::feed`](crate::Session::feed) are fatal for the session.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    /// The frame does not start with the magic bytes: not a baton peer, or a desynchronised stream.
    #[error("bad frame magic")]
    BadMagic,
    /// A frame or Hello of a protocol version this node does not speak.
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// A payload longer than the maximum (announced in a received header, or to be sent).
    #[error("payload of {len} bytes exceeds the maximum")]
    TooLarge { len: u64 },
    /// The tag does not match: the frame was not made with this session's key.
    #[error("frame authentication failed")]
    Forged,
    /// An authentic frame whose counter was already seen.
    #[error("replayed frame: expected counter {expected}, got {got}")]
    Replay { expected: u64, got: u64 },
    /// An authentic frame whose counter skips ahead (or is non-zero during the handshake).
    #[error("unexpected frame counter: expected {expected}, got {got}")]
    BadCounter { expected: u64, got: u64 },
    /// An authentic frame whose payload does not decode.
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
    /// A HandoffRefused with a reason code this version does not know.
    #[error("unknown refuse reason {0}")]
    UnknownRefuseReason(u8),
    /// A message kind this version does not know. Never returned by `feed` (which reports it as
    /// [`Event::Ignored`](crate::Event::Ignored)), only by [`Message::decode`](crate::Message::decode).
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// A known kind at the wrong time: a message before the handshake, or a second handshake.
    #[error("unexpected frame kind {0} in this session state")]
    UnexpectedKind(u8),
    /// `encode` called before the handshake completed.
    #[error("session not established")]
    NotEstablished,
    /// The session already failed; the connection must be closed.
    #[error("session closed after an earlier error")]
    Closed,
    /// A node name that is empty or longer than [`MAX_NODE_NAME_LEN`](crate::MAX_NODE_NAME_LEN) bytes.
    #[error("node name must be 1 to 255 bytes")]
    InvalidNodeName,
    /// A cluster key shorter than [`MIN_CLUSTER_KEY_LEN`](crate::MIN_CLUSTER_KEY_LEN) bytes.
    #[error("cluster key too short")]
    InvalidKey,
    /// A message field too long for its encoding (e.g. more than 40 bytes of TCP options).
    #[error("{field} is {len} bytes, at most {max} allowed")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// 2^64 - 1 frames were sent on this session; it must be re-established.
    #[error("send counter exhausted")]
    CounterExhausted,
}

impl ProtoError {
    /// A stable snake_case label for metrics (e.g. `baton_mesh_errors_total{kind="forged"}`).
    pub fn kind(&self) -> &'static str {
        match self {
            ProtoError::BadMagic
            | ProtoError::Malformed(_)
            | ProtoError::UnknownRefuseReason(_) => "malformed",
            ProtoError::Version(_) => "version",
            ProtoError::TooLarge { .. } => "too_large",
            ProtoError::Forged => "forged",
            ProtoError::Replay { .. } => "replay",
            ProtoError::BadCounter { .. } => "bad_counter",
            ProtoError::UnknownKind(_) => "unknown_kind",
            ProtoError::UnexpectedKind(_) => "unexpected_kind",
            ProtoError::NotEstablished => "not_established",
            ProtoError::Closed => "closed",
            ProtoError::InvalidNodeName | ProtoError::InvalidKey => "config",
            ProtoError::FieldTooLong { .. } => "field_too_long",
            ProtoError::CounterExhausted => "counter_exhausted",
        }
    }
}
