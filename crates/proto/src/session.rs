//! One side of one mesh connection: the handshake, then authenticated, counted messages.
//!
//! Handshake payloads (kinds HELLO and HELLO_ACK, counter 0, tagged with the cluster key):
//!
//! ```text
//! Hello     0 1 version | 1 16 dialer nonce   | 17 1 n | 18 n dialer name (UTF-8)
//! HelloAck  0 16 acceptor nonce | 16 1 n | 17 n acceptor name (UTF-8)
//!           (its tag also covers the dialer nonce, which is not sent again)
//! ```

use hmac::Mac;

use crate::frame::{self, HmacSha256, RawFrame, VERSION, kind};
use crate::message::Reader;
use crate::{Message, ProtoError};

pub const NONCE_LEN: usize = 16;
/// A per-session random value, chosen by the caller (the agent draws it from the OS).
pub type Nonce = [u8; NONCE_LEN];
/// Longest node name: it travels with a one-byte length.
pub const MAX_NODE_NAME_LEN: usize = 255;
/// Shortest cluster key accepted; 32 random bytes are recommended.
pub const MIN_CLUSTER_KEY_LEN: usize = 16;

const DIALER_TO_ACCEPTOR_LABEL: &[u8] = b"baton/1 d2a";
const ACCEPTOR_TO_DIALER_LABEL: &[u8] = b"baton/1 a2d";

/// What [`Session::feed`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Bytes the caller must send to the peer (the acceptor's HelloAck).
    Send(Vec<u8>),
    /// The handshake completed; messages can now be sent and received.
    Established { peer_name: String },
    /// An authenticated message from the peer.
    Message(Message),
    /// An authenticated frame of a kind this version does not know (from a newer peer); skipped.
    Ignored { kind: u8 },
}

/// Which end of the TCP connection this session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Dialer,
    Acceptor,
}

/// One direction of an established session.
struct Direction {
    mac: HmacSha256,
    /// Counter of the last frame sent or accepted in this direction; 0 = none yet.
    last_counter: u64,
}

impl Direction {
    fn new(
        cluster_mac: &HmacSha256,
        label: &[u8],
        dialer: &Nonce,
        acceptor: &Nonce,
    ) -> Result<Self, ProtoError> {
        let session_key = cluster_mac
            .clone()
            .chain_update(label)
            .chain_update(dialer)
            .chain_update(acceptor)
            .finalize()
            .into_bytes();
        Ok(Direction {
            mac: keyed_mac(&session_key)?,
            last_counter: 0,
        })
    }
}

/// The state of a session after the handshake.
struct Established {
    peer_name: String,
    send: Direction,
    receive: Direction,
}

impl Established {
    fn new(
        role: Role,
        cluster_mac: &HmacSha256,
        dialer_nonce: &Nonce,
        acceptor_nonce: &Nonce,
        peer_name: String,
    ) -> Result<Self, ProtoError> {
        let dialer_to_acceptor = Direction::new(
            cluster_mac,
            DIALER_TO_ACCEPTOR_LABEL,
            dialer_nonce,
            acceptor_nonce,
        )?;
        let acceptor_to_dialer = Direction::new(
            cluster_mac,
            ACCEPTOR_TO_DIALER_LABEL,
            dialer_nonce,
            acceptor_nonce,
        )?;
        let (send, receive) = match role {
            Role::Dialer => (dialer_to_acceptor, acceptor_to_dialer),
            Role::Acceptor => (acceptor_to_dialer, dialer_to_acceptor),
        };
        Ok(Established {
            peer_name,
            send,
            receive,
        })
    }
}

enum State {
    /// Acceptor, waiting for the dialer's Hello.
    AwaitHello,
    /// Dialer, waiting for the acceptor's HelloAck.
    AwaitHelloAck,
    // Boxed: the keyed MACs make it much larger than the other states.
    Established(Box<Established>),
    /// A fatal error happened; nothing more is accepted.
    Dead,
}

/// One side of a control-mesh connection, sans I/O: feed it received bytes, send what it returns.
pub struct Session {
    role: Role,
    state: State,
    cluster_mac: HmacSha256,
    node_name: String,
    nonce: Nonce,
    /// Received bytes of a frame not complete yet (bounded by the maximum frame size).
    partial: Vec<u8>,
}

impl std::fmt::Debug for Session {
    // Manual so that key material never ends up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("node_name", &self.node_name)
            .field("established", &self.is_established())
            .field("dead", &self.is_dead())
            .field("peer_name", &self.peer_name())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Starts the dialing side; returns the session and the Hello to send first.
    pub fn dialer(
        cluster_key: &[u8],
        node_name: &str,
        nonce: Nonce,
    ) -> Result<(Session, Vec<u8>), ProtoError> {
        let session = Session::new(Role::Dialer, cluster_key, node_name, nonce)?;
        let mut payload = Vec::with_capacity(2 + NONCE_LEN + node_name.len());
        payload.push(VERSION);
        payload.extend_from_slice(&nonce);
        put_name(&mut payload, node_name)?;
        let hello = frame::seal(&session.cluster_mac, kind::HELLO, 0, &payload, &[])?;
        Ok((session, hello))
    }

    /// Starts the accepting side; it answers the dialer's Hello through [`Event::Send`].
    pub fn acceptor(
        cluster_key: &[u8],
        node_name: &str,
        nonce: Nonce,
    ) -> Result<Session, ProtoError> {
        Session::new(Role::Acceptor, cluster_key, node_name, nonce)
    }

    fn new(
        role: Role,
        cluster_key: &[u8],
        node_name: &str,
        nonce: Nonce,
    ) -> Result<Self, ProtoError> {
        if cluster_key.len() < MIN_CLUSTER_KEY_LEN {
            return Err(ProtoError::InvalidKey);
        }
        check_name_len(node_name.len())?;
        Ok(Session {
            role,
            state: match role {
                Role::Dialer => State::AwaitHelloAck,
                Role::Acceptor => State::AwaitHello,
            },
            cluster_mac: keyed_mac(cluster_key)?,
            node_name: node_name.to_owned(),
            nonce,
            partial: Vec::new(),
        })
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established(_))
    }

    /// True after a fatal error.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, State::Dead)
    }

    /// The peer's node name, once established.
    pub fn peer_name(&self) -> Option<&str> {
        match &self.state {
            State::Established(established) => Some(&established.peer_name),
            _ => None,
        }
    }

    /// Consumes received bytes, in any split, and returns what they completed, in order.
    ///
    /// Any error is fatal: the session is dead, events completed earlier in the same call are
    /// dropped with it, and the caller must close the connection.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Event>, ProtoError> {
        if self.is_dead() {
            return Err(ProtoError::Closed);
        }
        // Work on the caller's slice directly when nothing is pending, to avoid a copy.
        let mut pending = std::mem::take(&mut self.partial);
        let input: &[u8] = if pending.is_empty() {
            bytes
        } else {
            pending.extend_from_slice(bytes);
            &pending
        };

        let mut events = Vec::new();
        let mut consumed = 0;
        let outcome = loop {
            match frame::split_frame(&input[consumed..]) {
                Ok(Some(raw)) => {
                    if let Err(error) = self.handle(&raw, &mut events) {
                        break Err(error);
                    }
                    consumed += raw.len();
                }
                Ok(None) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        match outcome {
            Ok(()) => {
                self.partial = input[consumed..].to_vec();
                Ok(events)
            }
            Err(error) => {
                self.state = State::Dead;
                Err(error)
            }
        }
    }

    /// Frames `message` for the peer. Fails without side effects (nothing is sent, the counter
    /// does not advance) if the session is not established or the message cannot be encoded.
    pub fn encode(&mut self, message: &Message) -> Result<Vec<u8>, ProtoError> {
        let send = match &mut self.state {
            State::Established(established) => &mut established.send,
            State::Dead => return Err(ProtoError::Closed),
            State::AwaitHello | State::AwaitHelloAck => return Err(ProtoError::NotEstablished),
        };
        let counter = send
            .last_counter
            .checked_add(1)
            .ok_or(ProtoError::CounterExhausted)?;
        let payload = message.encode_payload()?;
        let bytes = frame::seal(&send.mac, message.kind(), counter, &payload, &[])?;
        send.last_counter = counter;
        Ok(bytes)
    }

    fn handle(&mut self, raw: &RawFrame<'_>, events: &mut Vec<Event>) -> Result<(), ProtoError> {
        match &mut self.state {
            State::AwaitHello => {
                raw.verify(&self.cluster_mac, &[])?;
                expect_handshake_frame(raw, kind::HELLO)?;
                let mut reader = Reader::new(raw.payload);
                let version = reader.u8()?;
                let dialer_nonce: Nonce = reader.array()?;
                let peer_name = read_name(&mut reader)?;
                reader.finish()?;
                if version != VERSION {
                    return Err(ProtoError::Version(version));
                }

                let mut payload = Vec::with_capacity(1 + NONCE_LEN + self.node_name.len());
                payload.extend_from_slice(&self.nonce);
                put_name(&mut payload, &self.node_name)?;
                // Binding the dialer's nonce makes this HelloAck useless for any other Hello.
                let hello_ack = frame::seal(
                    &self.cluster_mac,
                    kind::HELLO_ACK,
                    0,
                    &payload,
                    &dialer_nonce,
                )?;

                let established = Established::new(
                    self.role,
                    &self.cluster_mac,
                    &dialer_nonce,
                    &self.nonce,
                    peer_name.clone(),
                )?;
                self.state = State::Established(Box::new(established));
                events.push(Event::Send(hello_ack));
                events.push(Event::Established { peer_name });
            }
            State::AwaitHelloAck => {
                raw.verify(&self.cluster_mac, &self.nonce)?;
                expect_handshake_frame(raw, kind::HELLO_ACK)?;
                let mut reader = Reader::new(raw.payload);
                let acceptor_nonce: Nonce = reader.array()?;
                let peer_name = read_name(&mut reader)?;
                reader.finish()?;

                let established = Established::new(
                    self.role,
                    &self.cluster_mac,
                    &self.nonce,
                    &acceptor_nonce,
                    peer_name.clone(),
                )?;
                self.state = State::Established(Box::new(established));
                events.push(Event::Established { peer_name });
            }
            State::Established(established) => {
                let receive = &mut established.receive;
                // Authenticate before trusting the counter or the kind.
                raw.verify(&receive.mac, &[])?;
                let expected = receive.last_counter.checked_add(1);
                match expected {
                    Some(expected) if raw.counter == expected => {}
                    Some(expected) if raw.counter > expected => {
                        return Err(ProtoError::BadCounter {
                            expected,
                            got: raw.counter,
                        });
                    }
                    // At or below the last accepted counter (or after the very last one).
                    _ => {
                        return Err(ProtoError::Replay {
                            expected: expected.unwrap_or(u64::MAX),
                            got: raw.counter,
                        });
                    }
                }
                receive.last_counter = raw.counter;
                if raw.kind == kind::HELLO || raw.kind == kind::HELLO_ACK {
                    return Err(ProtoError::UnexpectedKind(raw.kind));
                }
                match Message::decode(raw.kind, raw.payload) {
                    Ok(message) => events.push(Event::Message(message)),
                    // A newer peer's message: skipping it keeps mixed-version clusters working.
                    Err(ProtoError::UnknownKind(kind)) => events.push(Event::Ignored { kind }),
                    Err(error) => return Err(error),
                }
            }
            State::Dead => return Err(ProtoError::Closed),
        }
        Ok(())
    }
}

fn keyed_mac(key: &[u8]) -> Result<HmacSha256, ProtoError> {
    // HMAC takes keys of any length, so this never fails in practice; never fall back to
    // some other key if it did.
    HmacSha256::new_from_slice(key).map_err(|_| ProtoError::InvalidKey)
}

/// A handshake frame must be of the expected kind and carry counter 0.
fn expect_handshake_frame(raw: &RawFrame<'_>, expected_kind: u8) -> Result<(), ProtoError> {
    if raw.kind != expected_kind {
        return Err(ProtoError::UnexpectedKind(raw.kind));
    }
    if raw.counter != 0 {
        return Err(ProtoError::BadCounter {
            expected: 0,
            got: raw.counter,
        });
    }
    Ok(())
}

fn check_name_len(len: usize) -> Result<u8, ProtoError> {
    u8::try_from(len)
        .ok()
        .filter(|&len| len > 0)
        .ok_or(ProtoError::InvalidNodeName)
}

fn put_name(out: &mut Vec<u8>, name: &str) -> Result<(), ProtoError> {
    out.push(check_name_len(name.len())?);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

fn read_name(reader: &mut Reader<'_>) -> Result<String, ProtoError> {
    let len = usize::from(reader.u8()?);
    if len == 0 {
        return Err(ProtoError::Malformed("empty node name"));
    }
    let name = reader.bytes(len)?;
    String::from_utf8(name.to_vec()).map_err(|_| ProtoError::Malformed("node name is not UTF-8"))
}
