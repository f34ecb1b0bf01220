//! Mesh messages and their payload encodings (big-endian, no padding, no trailing bytes).
//!
//! ```text
//! HandoffRequest (kind 0x10)
//!   0   8  id
//!   8   4  client IPv4 address       12  2  client port
//!   14  4  FE service IPv4 address   18  2  FE service port
//!   20  4  fe_isn                    24  4  fe_tsval
//!   28  1  n = options length (<= 40), then n bytes of raw TCP options
//!   ..  1  flags: 0x01 the FE's SYN-ACK agreed to ECN, 0x02 the client's FIN follows the data,
//!          0x04 the FE follows the connection's requests (the BE tracks its responses)
//!   ..  2  m = SYN length, then m bytes: the client's SYN, a whole IPv4 packet
//!   ..  2  k = segment length, then k bytes: the client's latest segment headers, a whole IPv4
//!          packet without payload (the template of what the BE replays)
//!   ..  4  d = data length, then d bytes: the client's stream from its first byte
//! HandoffAccepted (0x11), HandoffAbort (0x13), ConnClosed (0x14)
//!   0   8  id
//! HandoffRefused (0x12)
//!   0   8  id
//!   8   1  reason code (RefuseReason)
//! DispatchQuery (0x15)
//!   0   8  id
//!   8   2  n = target length, then n bytes: the request target (UTF-8)
//! DispatchAnswer (0x16)
//!   0   8  id
//!   8   2  the chosen node's index in the cluster's member list
//! Draining (0x17)
//!   (empty)
//! NodeStatus (0x18)
//!   0   1  flags: 0x01 the sender is drained by its operator (choose it for nothing new)
//!   1   8  the digest of the sender's cluster configuration (members, ports, policy)
//! MoveQuiesce (0x19)
//!   0   8  id (the handoff the serving node has the connection by)
//!   8   8  attempt (the move's own id: every answer and word about the move repeats it)
//!   16  4  requests the serving node has been given on the connection
//!   20  2  k = segment length, then k bytes: the client's latest ACK, a whole IPv4 packet
//!          without payload addressed to the FE's service address
//! MoveQuiet (0x1a), MoveRelease (0x1c)
//!   0   8  id                        8   8  attempt
//! MoveBusy (0x1b)
//!   0   8  id                        8   8  attempt
//!   16  1  reason code (BusyReason)
//! MoveResume (0x1d)
//!   0   8  id                        8   8  attempt
//!   16  2  k = segment length, then k bytes: the headers of the client's latest segment, a whole
//!          IPv4 packet without payload (0: nothing to replay)
//!   ..  4  d = data length, then d bytes: the client's held request, from the segment's seq
//! Capabilities (0x1e)
//!   0   1  flags: 0x01 the sender takes datapath offers (its programs replay an offer header's
//!          handshake themselves); 0x02 it takes followed datapath offers (it counts their
//!          responses); unknown flags are a newer sender's and ignored
//! Heartbeat (0x20)
//!   0   4  load
//!   4   8  sent_at_ms
//!   12  1  flags: 0x01 the sender's server listens on every service port
//! ```
//!
//! Decoding is strict (every byte accounted for), so each message has exactly one encoding.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::ProtoError;
use crate::frame::kind;

/// Longest TCP option block (a TCP header carries at most 40 bytes of options).
pub const MAX_TCP_OPTIONS_LEN: usize = 40;
/// Longest packet carried in a HandoffRequest (the IPv4 total-length limit).
pub const MAX_PACKET_LEN: usize = u16::MAX as usize;
/// Longest client stream carried in a HandoffRequest (what fits a frame with the rest).
pub const MAX_HANDOFF_DATA_LEN: usize = 64 * 1024;

const HANDOFF_FE_ECN: u8 = 0x01;
const HANDOFF_CLIENT_FIN: u8 = 0x02;
const HANDOFF_FOLLOW: u8 = 0x04;
const HEARTBEAT_SERVING: u8 = 0x01;
const NODE_STATUS_DRAINED: u8 = 0x01;
const CAPABILITY_DATAPATH_OFFERS: u8 = 0x01;
const CAPABILITY_FOLLOWED_OFFERS: u8 = 0x02;

/// Why a BE refused a handoff. Codes are part of the wire format and never renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RefuseReason {
    /// The replayed connection's 4-tuple already exists at the BE.
    Collision = 1,
    /// The BE's TCP negotiated options different from the FE's SYN-ACK.
    OptionMismatch = 2,
    Overloaded = 3,
    Timeout = 4,
    Internal = 5,
    /// The request could not be used (e.g. the packets do not parse).
    Malformed = 6,
    /// The BE's server does not serve: nothing listens on the service port (its TCP answered
    /// the SYN with a RST, or the BE knew already), or it fails its health check.
    NoListener = 7,
}

impl RefuseReason {
    pub const ALL: [RefuseReason; 7] = [
        RefuseReason::Collision,
        RefuseReason::OptionMismatch,
        RefuseReason::Overloaded,
        RefuseReason::Timeout,
        RefuseReason::Internal,
        RefuseReason::Malformed,
        RefuseReason::NoListener,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            RefuseReason::Collision => "collision",
            RefuseReason::OptionMismatch => "option_mismatch",
            RefuseReason::Overloaded => "overloaded",
            RefuseReason::Timeout => "timeout",
            RefuseReason::Internal => "internal",
            RefuseReason::Malformed => "malformed",
            RefuseReason::NoListener => "no_listener",
        }
    }
}

impl TryFrom<u8> for RefuseReason {
    type Error = ProtoError;

    fn try_from(code: u8) -> Result<Self, ProtoError> {
        RefuseReason::ALL
            .into_iter()
            .find(|reason| reason.code() == code)
            .ok_or(ProtoError::UnknownRefuseReason(code))
    }
}

/// Why a serving node cannot let a connection move now. Codes are part of the wire format and
/// never renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BusyReason {
    /// Its TCP has bytes the client has not acknowledged (or not yet been sent).
    Unacked = 1,
    /// Its server has not read everything the client sent.
    Unread = 2,
    /// A response is not complete (or more responses are due than were seen).
    Responding = 3,
    /// Its responses could not be followed (framing the datapath cannot read): it stays.
    Untracked = 4,
    /// The connection is closing, or gone.
    Closing = 5,
    /// It has no such connection live.
    Unknown = 6,
    Internal = 7,
}

impl BusyReason {
    pub const ALL: [BusyReason; 7] = [
        BusyReason::Unacked,
        BusyReason::Unread,
        BusyReason::Responding,
        BusyReason::Untracked,
        BusyReason::Closing,
        BusyReason::Unknown,
        BusyReason::Internal,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            BusyReason::Unacked => "unacked",
            BusyReason::Unread => "unread",
            BusyReason::Responding => "responding",
            BusyReason::Untracked => "untracked",
            BusyReason::Closing => "closing",
            BusyReason::Unknown => "unknown",
            BusyReason::Internal => "internal",
        }
    }
}

impl TryFrom<u8> for BusyReason {
    type Error = ProtoError;

    fn try_from(code: u8) -> Result<Self, ProtoError> {
        BusyReason::ALL
            .into_iter()
            .find(|reason| reason.code() == code)
            .ok_or(ProtoError::Malformed("unknown busy reason"))
    }
}

/// FE -> BE: take over this client connection: what the BE needs to replay its handshake and the
/// request in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffRequest {
    pub id: u64,
    pub client: SocketAddrV4,
    pub fe_service: SocketAddrV4,
    /// The FE's initial sequence number.
    pub fe_isn: u32,
    /// The TSval of the FE's SYN-ACK that the client acknowledged (0 without timestamps): the BE's
    /// clock is translated so that it continues from this value.
    pub fe_tsval: u32,
    /// Raw TCP options of the FE's SYN-ACK (at most 40 bytes).
    pub fe_synack_options: Vec<u8>,
    /// The FE's SYN-ACK agreed to ECN (it carried ECE).
    pub fe_ecn: bool,
    /// The client's SYN, a whole IPv4 packet (opaque here).
    pub syn: Vec<u8>,
    /// The headers of the client's latest segment, a whole IPv4 packet without payload (opaque
    /// here): the template of the segments the BE replays.
    pub segment: Vec<u8>,
    /// The client's stream from its first byte: the request head and whatever followed it.
    pub data: Vec<u8>,
    /// The client's FIN follows `data`.
    pub fin: bool,
    /// The FE follows the connection's requests: the BE tracks its responses, and the connection
    /// may move on at a request boundary.
    pub follow: bool,
}

/// A message between node agents, after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// FE -> BE: take over this client connection.
    HandoffRequest(HandoffRequest),
    /// BE -> FE: the connection now lives at the BE.
    HandoffAccepted { id: u64 },
    /// BE -> FE: the BE will not take the connection; the FE serves it locally.
    HandoffRefused { id: u64, reason: RefuseReason },
    /// FE -> BE: forget this handoff (e.g. the client went away meanwhile).
    HandoffAbort { id: u64 },
    /// BE -> FE: the handed-off connection is gone; free its entry.
    ConnClosed { id: u64 },
    /// Node -> dispatcher: which node serves this target? (LARD with one table for the cluster)
    DispatchQuery { id: u64, target: String },
    /// Dispatcher -> node: the member (by index in the configured member list) that serves it.
    DispatchAnswer { id: u64, node: u16 },
    /// The sender is stopping: choose it for nothing new (it finishes what it has, then leaves).
    Draining,
    /// The sender's state as its operator set it, sent when a control connection comes up and
    /// whenever it changes: `drained` (by `baton ctl drain`: choose it for nothing new, it serves
    /// what it has) and the digest of its cluster configuration (peers that disagree warn).
    NodeStatus { drained: bool, config_digest: u64 },
    /// Periodic liveness and load report; `serving`: the sender's server listens on every
    /// service port (a node whose server is gone is not chosen).
    Heartbeat {
        load: u32,
        sent_at_ms: u64,
        serving: bool,
    },
    /// FE -> serving node: the client's next request goes elsewhere. Take the client's ACK
    /// (`segment`), then say whether the connection is quiet: everything answered (`requests`
    /// responses complete), sent, acknowledged and read. If it is, nothing its TCP sends leaves
    /// from now on, until a Release or a Resume.
    MoveQuiesce {
        id: u64,
        attempt: u64,
        requests: u32,
        segment: Vec<u8>,
    },
    /// Serving node -> FE: quiet and frozen for `attempt`; the FE may replay the connection
    /// elsewhere.
    MoveQuiet { id: u64, attempt: u64 },
    /// Serving node -> FE: not now; the connection stays and its TCP speaks as before.
    MoveBusy {
        id: u64,
        attempt: u64,
        reason: BusyReason,
    },
    /// FE -> serving node: the connection lives elsewhere now: end your TCP's side quietly and
    /// forget it (no ConnClosed).
    MoveRelease { id: u64, attempt: u64 },
    /// FE -> serving node: the move `attempt` did not happen: the connection stays with you;
    /// once your TCP may speak again, replay the client's held request (`data`, with the headers
    /// of `segment`) into it.
    MoveResume {
        id: u64,
        attempt: u64,
        segment: Vec<u8>,
        data: Vec<u8>,
    },
    /// What the sender can do beyond this protocol's first version, sent when a control
    /// connection comes up. An older peer ignores the kind, so never hears of anything new.
    Capabilities {
        /// It takes datapath offers (`baton_wire::offer`).
        datapath_offers: bool,
        /// It takes followed datapath offers (`kind::FOLLOWED`): it counts their responses.
        followed_offers: bool,
    },
}

impl Message {
    /// The frame kind code of this message.
    pub fn kind(&self) -> u8 {
        match self {
            Message::HandoffRequest(_) => kind::HANDOFF_REQUEST,
            Message::HandoffAccepted { .. } => kind::HANDOFF_ACCEPTED,
            Message::HandoffRefused { .. } => kind::HANDOFF_REFUSED,
            Message::HandoffAbort { .. } => kind::HANDOFF_ABORT,
            Message::ConnClosed { .. } => kind::CONN_CLOSED,
            Message::DispatchQuery { .. } => kind::DISPATCH_QUERY,
            Message::DispatchAnswer { .. } => kind::DISPATCH_ANSWER,
            Message::Draining => kind::DRAINING,
            Message::NodeStatus { .. } => kind::NODE_STATUS,
            Message::Heartbeat { .. } => kind::HEARTBEAT,
            Message::MoveQuiesce { .. } => kind::MOVE_QUIESCE,
            Message::MoveQuiet { .. } => kind::MOVE_QUIET,
            Message::MoveBusy { .. } => kind::MOVE_BUSY,
            Message::MoveRelease { .. } => kind::MOVE_RELEASE,
            Message::MoveResume { .. } => kind::MOVE_RESUME,
            Message::Capabilities { .. } => kind::CAPABILITIES,
        }
    }

    /// The payload bytes of this message (see the module docs for layouts).
    pub fn encode_payload(&self) -> Result<Vec<u8>, ProtoError> {
        let mut out = Vec::new();
        match self {
            Message::HandoffRequest(HandoffRequest {
                id,
                client,
                fe_service,
                fe_isn,
                fe_tsval,
                fe_synack_options,
                fe_ecn,
                syn,
                segment,
                data,
                fin,
                follow,
            }) => {
                let options_len: u8 =
                    checked_len("fe_synack_options", fe_synack_options, MAX_TCP_OPTIONS_LEN)?;
                let syn_len: u16 = checked_len("syn", syn, MAX_PACKET_LEN)?;
                let segment_len: u16 = checked_len("segment", segment, MAX_PACKET_LEN)?;
                let data_len: u32 = checked_len("data", data, MAX_HANDOFF_DATA_LEN)?;
                out.reserve(40 + fe_synack_options.len() + syn.len() + segment.len() + data.len());
                out.extend_from_slice(&id.to_be_bytes());
                put_addr(&mut out, client);
                put_addr(&mut out, fe_service);
                out.extend_from_slice(&fe_isn.to_be_bytes());
                out.extend_from_slice(&fe_tsval.to_be_bytes());
                out.push(options_len);
                out.extend_from_slice(fe_synack_options);
                let mut flags = 0;
                if *fe_ecn {
                    flags |= HANDOFF_FE_ECN;
                }
                if *fin {
                    flags |= HANDOFF_CLIENT_FIN;
                }
                if *follow {
                    flags |= HANDOFF_FOLLOW;
                }
                out.push(flags);
                out.extend_from_slice(&syn_len.to_be_bytes());
                out.extend_from_slice(syn);
                out.extend_from_slice(&segment_len.to_be_bytes());
                out.extend_from_slice(segment);
                out.extend_from_slice(&data_len.to_be_bytes());
                out.extend_from_slice(data);
            }
            Message::HandoffAccepted { id }
            | Message::HandoffAbort { id }
            | Message::ConnClosed { id } => out.extend_from_slice(&id.to_be_bytes()),
            Message::MoveQuiet { id, attempt } | Message::MoveRelease { id, attempt } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&attempt.to_be_bytes());
            }
            Message::MoveBusy {
                id,
                attempt,
                reason,
            } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&attempt.to_be_bytes());
                out.push(reason.code());
            }
            Message::MoveQuiesce {
                id,
                attempt,
                requests,
                segment,
            } => {
                let segment_len: u16 = checked_len("segment", segment, MAX_PACKET_LEN)?;
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&attempt.to_be_bytes());
                out.extend_from_slice(&requests.to_be_bytes());
                out.extend_from_slice(&segment_len.to_be_bytes());
                out.extend_from_slice(segment);
            }
            Message::Capabilities {
                datapath_offers,
                followed_offers,
            } => {
                let mut bits = 0;
                if *datapath_offers {
                    bits |= CAPABILITY_DATAPATH_OFFERS;
                }
                if *followed_offers {
                    bits |= CAPABILITY_FOLLOWED_OFFERS;
                }
                out.push(bits);
            }
            Message::MoveResume {
                id,
                attempt,
                segment,
                data,
            } => {
                let segment_len: u16 = checked_len("segment", segment, MAX_PACKET_LEN)?;
                let data_len: u32 = checked_len("data", data, MAX_HANDOFF_DATA_LEN)?;
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&attempt.to_be_bytes());
                out.extend_from_slice(&segment_len.to_be_bytes());
                out.extend_from_slice(segment);
                out.extend_from_slice(&data_len.to_be_bytes());
                out.extend_from_slice(data);
            }
            Message::HandoffRefused { id, reason } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.push(reason.code());
            }
            Message::DispatchQuery { id, target } => {
                let len: u16 = checked_len("target", target.as_bytes(), MAX_PACKET_LEN)?;
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(target.as_bytes());
            }
            Message::DispatchAnswer { id, node } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&node.to_be_bytes());
            }
            Message::Draining => {}
            Message::NodeStatus {
                drained,
                config_digest,
            } => {
                out.push(if *drained { NODE_STATUS_DRAINED } else { 0 });
                out.extend_from_slice(&config_digest.to_be_bytes());
            }
            Message::Heartbeat {
                load,
                sent_at_ms,
                serving,
            } => {
                out.extend_from_slice(&load.to_be_bytes());
                out.extend_from_slice(&sent_at_ms.to_be_bytes());
                out.push(if *serving { HEARTBEAT_SERVING } else { 0 });
            }
        }
        Ok(out)
    }

    /// Decodes the payload of a frame of kind `kind`. A kind this version does not know is
    /// [`ProtoError::UnknownKind`] (handshake kinds included: they are not messages).
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Message, ProtoError> {
        let mut reader = Reader::new(payload);
        let message = match kind {
            kind::HANDOFF_REQUEST => {
                let id = reader.u64()?;
                let client = reader.addr()?;
                let fe_service = reader.addr()?;
                let fe_isn = reader.u32()?;
                let fe_tsval = reader.u32()?;
                let options_len = usize::from(reader.u8()?);
                if options_len > MAX_TCP_OPTIONS_LEN {
                    return Err(ProtoError::Malformed("TCP options longer than 40 bytes"));
                }
                let fe_synack_options = reader.bytes(options_len)?.to_vec();
                let flags = reader.u8()?;
                if flags & !(HANDOFF_FE_ECN | HANDOFF_CLIENT_FIN | HANDOFF_FOLLOW) != 0 {
                    return Err(ProtoError::Malformed("unknown handoff flags"));
                }
                let syn_len = usize::from(reader.u16()?);
                let syn = reader.bytes(syn_len)?.to_vec();
                let segment_len = usize::from(reader.u16()?);
                let segment = reader.bytes(segment_len)?.to_vec();
                let data_len = reader.u32()? as usize;
                if data_len > MAX_HANDOFF_DATA_LEN {
                    return Err(ProtoError::Malformed("handoff data longer than its limit"));
                }
                let data = reader.bytes(data_len)?.to_vec();
                Message::HandoffRequest(HandoffRequest {
                    id,
                    client,
                    fe_service,
                    fe_isn,
                    fe_tsval,
                    fe_synack_options,
                    fe_ecn: flags & HANDOFF_FE_ECN != 0,
                    syn,
                    segment,
                    data,
                    fin: flags & HANDOFF_CLIENT_FIN != 0,
                    follow: flags & HANDOFF_FOLLOW != 0,
                })
            }
            kind::HANDOFF_ACCEPTED => Message::HandoffAccepted { id: reader.u64()? },
            kind::HANDOFF_REFUSED => Message::HandoffRefused {
                id: reader.u64()?,
                reason: RefuseReason::try_from(reader.u8()?)?,
            },
            kind::HANDOFF_ABORT => Message::HandoffAbort { id: reader.u64()? },
            kind::CONN_CLOSED => Message::ConnClosed { id: reader.u64()? },
            kind::DISPATCH_QUERY => {
                let id = reader.u64()?;
                let len = usize::from(reader.u16()?);
                let target = std::str::from_utf8(reader.bytes(len)?)
                    .map_err(|_| ProtoError::Malformed("target is not UTF-8"))?
                    .to_owned();
                Message::DispatchQuery { id, target }
            }
            kind::DISPATCH_ANSWER => Message::DispatchAnswer {
                id: reader.u64()?,
                node: reader.u16()?,
            },
            kind::DRAINING => Message::Draining,
            kind::NODE_STATUS => {
                let flags = reader.u8()?;
                if flags & !NODE_STATUS_DRAINED != 0 {
                    return Err(ProtoError::Malformed("unknown node status flags"));
                }
                Message::NodeStatus {
                    drained: flags & NODE_STATUS_DRAINED != 0,
                    config_digest: reader.u64()?,
                }
            }
            kind::HEARTBEAT => {
                let load = reader.u32()?;
                let sent_at_ms = reader.u64()?;
                let flags = reader.u8()?;
                if flags & !HEARTBEAT_SERVING != 0 {
                    return Err(ProtoError::Malformed("unknown heartbeat flags"));
                }
                Message::Heartbeat {
                    load,
                    sent_at_ms,
                    serving: flags & HEARTBEAT_SERVING != 0,
                }
            }
            kind::MOVE_QUIESCE => {
                let id = reader.u64()?;
                let attempt = reader.u64()?;
                let requests = reader.u32()?;
                let len = usize::from(reader.u16()?);
                let segment = reader.bytes(len)?.to_vec();
                Message::MoveQuiesce {
                    id,
                    attempt,
                    requests,
                    segment,
                }
            }
            kind::MOVE_QUIET => Message::MoveQuiet {
                id: reader.u64()?,
                attempt: reader.u64()?,
            },
            kind::MOVE_BUSY => Message::MoveBusy {
                id: reader.u64()?,
                attempt: reader.u64()?,
                reason: BusyReason::try_from(reader.u8()?)?,
            },
            kind::MOVE_RELEASE => Message::MoveRelease {
                id: reader.u64()?,
                attempt: reader.u64()?,
            },
            kind::MOVE_RESUME => {
                let id = reader.u64()?;
                let attempt = reader.u64()?;
                let segment_len = usize::from(reader.u16()?);
                let segment = reader.bytes(segment_len)?.to_vec();
                let data_len = reader.u32()? as usize;
                if data_len > MAX_HANDOFF_DATA_LEN {
                    return Err(ProtoError::Malformed("resume data longer than its limit"));
                }
                let data = reader.bytes(data_len)?.to_vec();
                Message::MoveResume {
                    id,
                    attempt,
                    segment,
                    data,
                }
            }
            kind::CAPABILITIES => {
                // Bits this version does not know are a newer peer's: ignored.
                let bits = reader.u8()?;
                Message::Capabilities {
                    datapath_offers: bits & CAPABILITY_DATAPATH_OFFERS != 0,
                    followed_offers: bits & CAPABILITY_FOLLOWED_OFFERS != 0,
                }
            }
            unknown => return Err(ProtoError::UnknownKind(unknown)),
        };
        reader.finish()?;
        Ok(message)
    }
}

/// The length of a length-prefixed field as its prefix type, if it is at most `max`.
fn checked_len<L: TryFrom<usize>>(
    field: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<L, ProtoError> {
    let too_long = ProtoError::FieldTooLong {
        field,
        len: bytes.len(),
        max,
    };
    if bytes.len() > max {
        return Err(too_long);
    }
    L::try_from(bytes.len()).map_err(|_| too_long)
}

fn put_addr(out: &mut Vec<u8>, addr: &SocketAddrV4) {
    out.extend_from_slice(&addr.ip().octets());
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// A cursor over a payload; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    pub fn bytes(&mut self, len: usize) -> Result<&'a [u8], ProtoError> {
        if self.rest.len() < len {
            return Err(ProtoError::Malformed("payload truncated"));
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtoError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.bytes(N)?);
        Ok(array)
    }

    pub fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    pub fn u16(&mut self) -> Result<u16, ProtoError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn addr(&mut self) -> Result<SocketAddrV4, ProtoError> {
        let ip = Ipv4Addr::from(self.array::<4>()?);
        Ok(SocketAddrV4::new(ip, self.u16()?))
    }

    /// Fails if bytes are left: trailing data would make encodings ambiguous.
    pub fn finish(self) -> Result<(), ProtoError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::Malformed("trailing bytes after payload"))
        }
    }
}
