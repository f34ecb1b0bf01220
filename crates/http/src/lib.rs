//! HTTP/1.x request framing for routing decisions, strict, with no I/O.
//!
//! A node that accepted a client's connection routes it on its request heads. This crate reads
//! the client→server byte stream and nothing else; it never sees a response.
//!
//! Layout:
//!
//! - [`head`] (re-exported here): [`sniff`], the strict request-head sniffer. Called with a
//!   connection's bytes so far, it says whether they hold a complete, valid [`RequestHead`] (the
//!   method, target, Host, cookies and framing headers a router needs), may still become one, or
//!   never will ([`InvalidReason`]).
//! - [`boundary`] (re-exported here): [`BoundaryTracker`], the state machine that follows a
//!   persistent connection's stream request after request: where each head starts and ends
//!   ([`Boundary`]), how its body is framed ([`Framing`]: none, Content-Length, chunked), whether
//!   another request may follow ([`Persistence`]), and what it needs next ([`Need`]: a head, a
//!   chunk-size line, body bytes to skip unseen, or nothing once [`Opaque`]). Heads are read with
//!   `sniff`, so both agree on every head.
//! - `chunk` (private): the chunk-size line grammar (RFC 9112 7.1).
//!
//! Nothing here panics, whatever the input.

pub mod boundary;
mod chunk;
pub mod head;

pub use boundary::{
    Boundary, BoundaryLimits, BoundaryTracker, Framing, Need, Opaque, OpaqueReason, Persistence,
    Progress, Request, SegmentGap,
};
pub use head::{HttpVersion, InvalidReason, Limits, RequestHead, Sniff, sniff};
