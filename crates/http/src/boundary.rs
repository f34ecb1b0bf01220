//! Request boundaries in a persistent connection's client stream. No I/O.
//!
//! After the first request of a keep-alive connection, the node that accepted it keeps reading
//! the client→server byte stream to decide each later request on its own head. A
//! [`BoundaryTracker`] finds where every request's head starts and ends and where its body ends,
//! while looking at as few bytes as it can: heads, chunk-size lines, the line end after each
//! chunk's data and the trailer section. Body bytes are never shown to it; whoever carries the
//! stream passes them on.
//!
//! # Contract
//!
//! - **In order, from the first byte.** The tracker is fed the stream from the connection's first
//!   byte on, in order, with arbitrary splits: a split may fall anywhere, also inside a CRLF or a
//!   chunk size. Stream offsets are `u64`s counted from that first byte. Deduplicating and
//!   reordering TCP segments is the caller's business: [`BoundaryTracker::feed_at`] only ignores
//!   the part of a segment the tracker already took (a retransmission's overlap, where the bytes
//!   the tracker saw first count, as in the receiver's TCP) and refuses a segment that starts
//!   past its position.
//! - **It says what it needs next** ([`BoundaryTracker::need`]): bytes to look at
//!   ([`Need::Head`], [`Need::ChunkLine`], [`Need::ChunkDataEnd`], [`Need::Trailers`]: give them
//!   to [`BoundaryTracker::feed`]), `n` body bytes it does not look at ([`Need::Skip`]: pass them
//!   on and report them with [`BoundaryTracker::skip`], or hand them to `feed`, which passes over
//!   them unseen), or nothing ([`Need::Opaque`]).
//! - **One boundary per call.** `feed` and `skip` take bytes until they have taken all of them or
//!   reached a [`Boundary`], which they return at once with how many bytes they took
//!   ([`Progress`]); call again with the rest, even if nothing is left, until a call returns no
//!   boundary. (`skip` also stops where the tracker needs to see bytes again.) Boundaries come in this order for every request: [`Boundary::Request`] when its
//!   head is complete, then [`Boundary::End`] when its body is complete (at once if it has none)
//!   or [`Boundary::Opaque`]. After an `End` comes the next `Request` or an `Opaque`.
//! - **Opaque is terminal.** The tracker stops at the first thing it cannot vouch for: a
//!   malformed or oversized head (exactly [`sniff`]'s verdicts), a malformed or oversized chunk
//!   line or trailer section, and the end of a request after which the connection carries no
//!   further request ([`Persistence`]: `Connection: close`, HTTP/1.0 without keep-alive, any
//!   Upgrade header, CONNECT). From then on it takes nothing: the connection stays where it is and the stream
//!   goes on untracked. [`Opaque::at`] is where tracking stopped, the same however the stream was
//!   split; [`BoundaryTracker::offset`] then only says how far the tracker read before deciding.
//! - **Bounded.** It buffers at most one head, chunk-size line or trailer section, each bounded
//!   by [`BoundaryLimits`]; it never copies a body.
//!
//! Never panics, whatever the input and the calls.
//!
//! # Framing (RFC 9112 6)
//!
//! A request has a body only if it says so: `Transfer-Encoding` ending in `chunked` →
//! [`Framing::Chunked`], else `Content-Length: n` → [`Framing::Length`], else
//! [`Framing::NoBody`] (RFC 9112 6.3, rule 7: a request is never delimited by the connection's
//! close). Everything else (both headers, a final coding other than `chunked`, any
//! Transfer-Encoding on HTTP/1.0, bad or conflicting lengths) is an invalid head, as `sniff`
//! decides. `Expect: 100-continue` changes nothing in the stream: the body follows, framed as
//! announced, whenever the client sends it.

use thiserror::Error;

use crate::chunk::parse_chunk_line;
use crate::head::{InvalidReason, Limits, RequestHead, Sniff, sniff};

/// Default bound on a chunk-size line, extensions and line end included.
pub const DEFAULT_MAX_CHUNK_LINE_BYTES: usize = 1024;
/// Default bound on a trailer section, its final empty line included.
pub const DEFAULT_MAX_TRAILER_BYTES: usize = 8192;

/// Bounds on what the tracker buffers. Each is a hard limit: reaching it without the end of the
/// unit makes the tracker [`Need::Opaque`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundaryLimits {
    /// Every request head, as for [`sniff`]. `max_headers` also bounds a trailer section's fields.
    pub head: Limits,
    /// Largest chunk-size line, counting every byte up to and including its LF.
    pub max_chunk_line_bytes: usize,
    /// Largest trailer section, counting every byte after the last chunk's line up to and
    /// including the empty line that ends the body.
    pub max_trailer_bytes: usize,
}

impl Default for BoundaryLimits {
    fn default() -> Self {
        BoundaryLimits {
            head: Limits::default(),
            max_chunk_line_bytes: DEFAULT_MAX_CHUNK_LINE_BYTES,
            max_trailer_bytes: DEFAULT_MAX_TRAILER_BYTES,
        }
    }
}

/// How a request's body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framing {
    /// Neither Content-Length nor Transfer-Encoding: the body is empty.
    NoBody,
    /// `Content-Length: n`: exactly `n` body bytes (possibly 0).
    Length(u64),
    /// `Transfer-Encoding: …, chunked`: chunks up to the last (size 0) chunk and the trailers.
    Chunked,
}

impl Framing {
    /// The framing a valid head (one [`sniff`] accepted) announces.
    pub fn of(head: &RequestHead) -> Framing {
        match (head.chunked, head.content_length) {
            (true, _) => Framing::Chunked,
            (false, Some(length)) => Framing::Length(length),
            (false, None) => Framing::NoBody,
        }
    }
}

/// What may follow a request on its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Persistence {
    /// Another request may follow the body: HTTP/1.1 without `Connection: close`, HTTP/1.0 with
    /// `Connection: keep-alive`.
    KeepAlive,
    /// The request is the connection's last: `Connection: close`, or HTTP/1.0 without
    /// `Connection: keep-alive`.
    Close,
    /// An Upgrade header: the server may switch protocols once it has read the body.
    Upgrade,
    /// The CONNECT method: if the server accepts, the bytes after the head are a tunnel's.
    Connect,
}

impl Persistence {
    /// The persistence a valid head announces. CONNECT and Upgrade win over `Connection: close`
    /// because they say more about the bytes that follow.
    pub fn of(head: &RequestHead) -> Persistence {
        if head.method == "CONNECT" {
            Persistence::Connect
        } else if head.upgrade {
            Persistence::Upgrade
        } else if head.keep_alive {
            Persistence::KeepAlive
        } else {
            Persistence::Close
        }
    }

    /// Whether the connection may carry a next request after this one.
    pub fn carries_next_request(self) -> bool {
        self == Persistence::KeepAlive
    }

    /// Why tracking stops after a request of this persistence, if it does.
    fn stop_reason(self) -> Option<OpaqueReason> {
        match self {
            Persistence::KeepAlive => None,
            Persistence::Close => Some(OpaqueReason::LastRequest),
            Persistence::Upgrade => Some(OpaqueReason::Upgrade),
            Persistence::Connect => Some(OpaqueReason::Connect),
        }
    }
}

/// A request whose head is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// 0 for the connection's first request, then 1, 2, …
    pub index: u64,
    /// The head, for routing.
    pub head: RequestHead,
    pub framing: Framing,
    pub persistence: Persistence,
    /// Stream offset of the head's first byte: the end of the previous request's body (any empty
    /// lines before the request line belong to the head, as `sniff` reads them).
    pub head_start: u64,
    /// Stream offset just past the head's empty line: where the body starts.
    pub head_end: u64,
}

/// A place in the stream the tracker reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boundary {
    /// A request head is complete.
    Request(Request),
    /// The body of request `index` is complete: the next head starts at `body_end`.
    End { index: u64, body_end: u64 },
    /// Tracking stopped; nothing follows.
    Opaque(Opaque),
}

/// Where and why tracking stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Opaque {
    pub reason: OpaqueReason,
    /// Stream offset from which the stream is not tracked: the start of the head, chunk line,
    /// line end or trailer section that failed, the body end of a request after which no
    /// request can follow, the head end of a CONNECT.
    pub at: u64,
}

/// Why tracking stopped. Variants are stable names, also usable as metric labels via
/// [`OpaqueReason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum OpaqueReason {
    /// The previous request was the connection's last ([`Persistence::Close`]).
    #[error("the previous request was the connection's last")]
    LastRequest,
    /// The previous request carried Upgrade ([`Persistence::Upgrade`]).
    #[error("the previous request asked for a protocol upgrade")]
    Upgrade,
    /// The previous request was a CONNECT ([`Persistence::Connect`]).
    #[error("the previous request was a CONNECT")]
    Connect,
    /// A request head that [`sniff`] calls invalid (also: too large).
    #[error("invalid request head: {0}")]
    Head(InvalidReason),
    /// A chunk size that is missing, not hexadecimal, or does not fit in 64 bits.
    #[error("invalid chunk size")]
    ChunkSize,
    /// Chunk extensions that do not follow RFC 9112 7.1.1.
    #[error("invalid chunk extension")]
    ChunkExtension,
    /// A CR not followed by LF in a chunk-size line.
    #[error("invalid line ending in a chunk-size line")]
    ChunkNewLine,
    /// A chunk-size line without its LF within `max_chunk_line_bytes`.
    #[error("chunk-size line longer than the limit")]
    ChunkLineTooLong,
    /// Chunk data not followed by CRLF (or LF).
    #[error("chunk data not followed by a line end")]
    ChunkDataEnd,
    /// A trailer section that is malformed (the same field syntax as a head's), has more than
    /// `max_headers` fields, or is not complete within `max_trailer_bytes` (`TooLarge`).
    #[error("invalid trailer section: {0}")]
    Trailers(InvalidReason),
    /// The stream would run past offset 2^64 − 1.
    #[error("stream longer than 2^64 - 1 bytes")]
    StreamTooLong,
}

impl OpaqueReason {
    /// A short snake_case label, for logs and metrics (the inner reason of `Head` and `Trailers`
    /// is not part of it: see [`InvalidReason::as_str`]).
    pub fn as_str(&self) -> &'static str {
        match self {
            OpaqueReason::LastRequest => "last_request",
            OpaqueReason::Upgrade => "upgrade",
            OpaqueReason::Connect => "connect",
            OpaqueReason::Head(_) => "head",
            OpaqueReason::ChunkSize => "chunk_size",
            OpaqueReason::ChunkExtension => "chunk_extension",
            OpaqueReason::ChunkNewLine => "chunk_new_line",
            OpaqueReason::ChunkLineTooLong => "chunk_line_too_long",
            OpaqueReason::ChunkDataEnd => "chunk_data_end",
            OpaqueReason::Trailers(_) => "trailers",
            OpaqueReason::StreamTooLong => "stream_too_long",
        }
    }
}

/// What the tracker needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Bytes to look at until a request head is complete (the next request's, or the first).
    Head,
    /// The next `n` bytes are body (Content-Length body or chunk data): pass them on without
    /// showing them, and report them with [`BoundaryTracker::skip`].
    Skip(u64),
    /// Bytes to look at until a chunk-size line is complete.
    ChunkLine,
    /// The CRLF (or LF) that ends a chunk's data.
    ChunkDataEnd,
    /// Bytes to look at until the trailer section (and with it the body) is complete.
    Trailers,
    /// Nothing: tracking stopped.
    Opaque(Opaque),
}

impl Need {
    /// Whether the tracker wants to see the next bytes (`false` for skipped body and opaque).
    pub fn shows_bytes(&self) -> bool {
        matches!(
            self,
            Need::Head | Need::ChunkLine | Need::ChunkDataEnd | Need::Trailers
        )
    }
}

/// What one [`BoundaryTracker::feed`], [`BoundaryTracker::feed_at`] or [`BoundaryTracker::skip`]
/// call took. Bytes taken are `duplicate + shown + skipped`, from the front of the input; the
/// rest is for the next call. All of it is taken unless a boundary is returned or the tracker is
/// opaque.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes at the front of a `feed_at` segment that the tracker had already taken.
    pub duplicate: usize,
    /// Bytes looked at: head, chunk-size line, line end after chunk data, trailers.
    pub shown: usize,
    /// Body bytes passed over unseen.
    pub skipped: usize,
    /// The boundary this call reached, if any.
    pub boundary: Option<Boundary>,
}

impl Progress {
    /// Bytes taken from the front of the input.
    pub fn taken(&self) -> usize {
        self.duplicate + self.shown + self.skipped
    }
}

/// A segment given to [`BoundaryTracker::feed_at`] starts past the tracker's position: bytes in
/// between are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("segment at offset {offset} leaves a gap: the tracker is at {expected}")]
pub struct SegmentGap {
    /// The tracker's position ([`BoundaryTracker::offset`]).
    pub expected: u64,
    /// Where the segment started.
    pub offset: u64,
}

/// The request-boundary state machine over one connection's client stream. See the module
/// documentation for the contract.
#[derive(Debug, Clone)]
pub struct BoundaryTracker {
    limits: BoundaryLimits,
    state: State,
    /// Stream offset of the next byte to take.
    offset: u64,
    /// The unit being read (head, chunk-size line, line end, trailers), from `unit_start`.
    buf: Vec<u8>,
    unit_start: u64,
    /// The current request's index: the one being read, or the next one while reading its head.
    index: u64,
    /// The current request's persistence (meaningless while reading a head).
    persistence: Persistence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    /// A Content-Length body; `remaining` > 0.
    Body {
        remaining: u64,
    },
    ChunkLine,
    /// A chunk's data; `remaining` > 0.
    ChunkData {
        remaining: u64,
    },
    ChunkDataEnd,
    Trailers,
    /// The body ended at `offset`; `Boundary::End` is the next thing to report.
    EndPending,
    /// `Boundary::Opaque` is the next thing to report.
    OpaquePending(Opaque),
    Opaque(Opaque),
}

/// What a call gives the tracker.
#[derive(Clone, Copy)]
enum Input<'a> {
    Shown(&'a [u8]),
    /// Body bytes the caller passed on without showing them.
    Unseen(usize),
}

impl Input<'_> {
    fn len(&self) -> usize {
        match self {
            Input::Shown(bytes) => bytes.len(),
            Input::Unseen(count) => *count,
        }
    }

    fn advance(&mut self, count: usize) {
        match self {
            Input::Shown(bytes) => *bytes = bytes.get(count..).unwrap_or_default(),
            Input::Unseen(remaining) => *remaining = remaining.saturating_sub(count),
        }
    }
}

impl Default for BoundaryTracker {
    fn default() -> Self {
        BoundaryTracker::new(BoundaryLimits::default())
    }
}

impl BoundaryTracker {
    /// A tracker at the connection's first byte, waiting for the first head.
    pub fn new(limits: BoundaryLimits) -> Self {
        BoundaryTracker {
            limits,
            state: State::Head,
            offset: 0,
            buf: Vec::new(),
            unit_start: 0,
            index: 0,
            persistence: Persistence::KeepAlive,
        }
    }

    pub fn limits(&self) -> &BoundaryLimits {
        &self.limits
    }

    /// What the tracker needs next. A boundary the tracker has reached but not yet returned (one
    /// that needs no more bytes) does not show here: the next call returns it.
    pub fn need(&self) -> Need {
        match self.state {
            State::Head => Need::Head,
            State::Body { remaining } | State::ChunkData { remaining } => Need::Skip(remaining),
            State::ChunkLine => Need::ChunkLine,
            State::ChunkDataEnd => Need::ChunkDataEnd,
            State::Trailers => Need::Trailers,
            State::EndPending => match self.persistence.stop_reason() {
                None => Need::Head,
                Some(reason) => Need::Opaque(Opaque {
                    reason,
                    at: self.offset,
                }),
            },
            State::OpaquePending(opaque) | State::Opaque(opaque) => Need::Opaque(opaque),
        }
    }

    /// Stream offset of the next byte the tracker takes: every byte taken so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes of the current head, chunk-size line or trailer section taken and held so far:
    /// never more than the matching limit.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes bytes that start at [`offset`](Self::offset), up to the next boundary.
    pub fn feed(&mut self, bytes: &[u8]) -> Progress {
        self.advance(Input::Shown(bytes))
    }

    /// Takes a segment that starts at stream offset `offset`, ignoring what the tracker already
    /// took (counted as `duplicate`), up to the next boundary. A segment that starts past the
    /// tracker's position is refused whole.
    pub fn feed_at(&mut self, offset: u64, bytes: &[u8]) -> Result<Progress, SegmentGap> {
        if offset > self.offset {
            return Err(SegmentGap {
                expected: self.offset,
                offset,
            });
        }
        let duplicate = usize::try_from(self.offset - offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let mut progress = self.feed(&bytes[duplicate..]);
        progress.duplicate = duplicate;
        Ok(progress)
    }

    /// Reports `count` body bytes passed on unseen. Takes at most what [`Need::Skip`] says, up to
    /// the next boundary; takes nothing when the tracker needs to see bytes.
    pub fn skip(&mut self, count: usize) -> Progress {
        self.advance(Input::Unseen(count))
    }

    fn advance(&mut self, mut input: Input) -> Progress {
        let mut progress = Progress::default();
        loop {
            match self.state {
                State::Opaque(_) => return progress,
                State::OpaquePending(opaque) => {
                    self.state = State::Opaque(opaque);
                    // Nothing is read any more: give the memory back.
                    self.buf = Vec::new();
                    progress.boundary = Some(Boundary::Opaque(opaque));
                    return progress;
                }
                State::EndPending => {
                    let end = Boundary::End {
                        index: self.index,
                        body_end: self.offset,
                    };
                    match self.persistence.stop_reason() {
                        None => {
                            self.index = self.index.saturating_add(1);
                            self.start_unit(State::Head);
                        }
                        Some(reason) => self.stop(reason, self.offset),
                    }
                    progress.boundary = Some(end);
                    return progress;
                }
                State::Body { remaining } | State::ChunkData { remaining } => {
                    let count = remaining.min(input.len() as u64);
                    if count == 0 {
                        return progress;
                    }
                    // `count` is at most the input's length, so it fits a usize; the body's end
                    // was checked to fit the stream, so the offset cannot overflow.
                    input.advance(count as usize);
                    progress.skipped += count as usize;
                    self.offset += count;
                    let remaining = remaining - count;
                    match self.state {
                        State::Body { .. } if remaining == 0 => self.state = State::EndPending,
                        State::Body { .. } => self.state = State::Body { remaining },
                        _ if remaining == 0 => self.start_unit(State::ChunkDataEnd),
                        _ => self.state = State::ChunkData { remaining },
                    }
                }
                State::Head | State::ChunkLine | State::ChunkDataEnd | State::Trailers => {
                    let Input::Shown(bytes) = input else {
                        return progress;
                    };
                    if bytes.is_empty() {
                        return progress;
                    }
                    // Offsets are u64: the stream cannot go past the last one.
                    let room_in_stream =
                        usize::try_from(u64::MAX - self.offset).unwrap_or(usize::MAX);
                    let bytes = &bytes[..bytes.len().min(room_in_stream)];
                    if bytes.is_empty() {
                        self.stop(OpaqueReason::StreamTooLong, self.offset);
                        continue;
                    }
                    let (shown, boundary) = match self.state {
                        State::Head => self.read_head(bytes),
                        State::ChunkLine => (self.read_chunk_line(bytes), None),
                        State::ChunkDataEnd => (self.read_chunk_data_end(bytes), None),
                        _ => (self.read_trailers(bytes), None),
                    };
                    input.advance(shown);
                    progress.shown += shown;
                    if boundary.is_some() {
                        progress.boundary = boundary;
                        return progress;
                    }
                }
            }
        }
    }

    /// Moves the position past `count` bytes looked at.
    fn take(&mut self, count: usize) {
        self.offset += count as u64;
    }

    fn start_unit(&mut self, state: State) {
        self.state = state;
        self.buf.clear();
        self.unit_start = self.offset;
    }

    fn stop(&mut self, reason: OpaqueReason, at: u64) {
        self.state = State::OpaquePending(Opaque { reason, at });
        self.buf.clear();
    }

    /// Reads head bytes; returns how many it took and the request if the head is complete.
    fn read_head(&mut self, bytes: &[u8]) -> (usize, Option<Boundary>) {
        let held = self.buf.len();
        let room = self.limits.head.max_head_bytes.saturating_sub(held);
        let appended = bytes.len().min(room);
        self.buf.extend_from_slice(&bytes[..appended]);
        match sniff(&self.buf, &self.limits.head) {
            Sniff::Incomplete => {
                self.take(appended);
                (appended, None)
            }
            Sniff::Invalid(reason) => {
                self.take(appended);
                self.stop(OpaqueReason::Head(reason), self.unit_start);
                (appended, None)
            }
            Sniff::Complete(head) => {
                // The held bytes were an incomplete head, so the head ends in the new ones.
                let used = head.head_len.saturating_sub(held).min(appended);
                self.take(used);
                let request = Request {
                    index: self.index,
                    framing: Framing::of(&head),
                    persistence: Persistence::of(&head),
                    head,
                    head_start: self.unit_start,
                    head_end: self.offset,
                };
                self.persistence = request.persistence;
                if request.persistence == Persistence::Connect {
                    self.stop(OpaqueReason::Connect, self.offset);
                } else {
                    match request.framing {
                        Framing::NoBody | Framing::Length(0) => self.start_unit(State::EndPending),
                        Framing::Length(length) => match self.offset.checked_add(length) {
                            Some(_) => self.start_unit(State::Body { remaining: length }),
                            None => self.stop(OpaqueReason::StreamTooLong, self.offset),
                        },
                        Framing::Chunked => self.start_unit(State::ChunkLine),
                    }
                }
                (used, Some(Boundary::Request(request)))
            }
        }
    }

    /// Reads chunk-size line bytes; returns how many it took.
    fn read_chunk_line(&mut self, bytes: &[u8]) -> usize {
        let room = self
            .limits
            .max_chunk_line_bytes
            .saturating_sub(self.buf.len());
        let window = &bytes[..bytes.len().min(room)];
        let Some(lf) = window.iter().position(|&b| b == b'\n') else {
            self.buf.extend_from_slice(window);
            self.take(window.len());
            if self.buf.len() >= self.limits.max_chunk_line_bytes {
                self.stop(OpaqueReason::ChunkLineTooLong, self.unit_start);
            }
            return window.len();
        };
        let used = lf + 1;
        self.buf.extend_from_slice(&window[..used]);
        self.take(used);
        match parse_chunk_line(&self.buf) {
            Err(reason) => self.stop(reason, self.unit_start),
            Ok(0) => self.start_unit(State::Trailers),
            Ok(size) => match self.offset.checked_add(size) {
                Some(_) => self.start_unit(State::ChunkData { remaining: size }),
                None => self.stop(OpaqueReason::StreamTooLong, self.unit_start),
            },
        }
        used
    }

    /// Reads the line end after chunk data, one byte at a time; returns how many it took.
    fn read_chunk_data_end(&mut self, bytes: &[u8]) -> usize {
        let Some(&byte) = bytes.first() else {
            return 0;
        };
        self.take(1);
        match (self.buf.as_slice(), byte) {
            ([], b'\r') => self.buf.push(byte),
            ([] | [b'\r'], b'\n') => self.start_unit(State::ChunkLine),
            _ => self.stop(OpaqueReason::ChunkDataEnd, self.unit_start),
        }
        1
    }

    /// Reads trailer section bytes; returns how many it took.
    fn read_trailers(&mut self, bytes: &[u8]) -> usize {
        let held = self.buf.len();
        let room = self.limits.max_trailer_bytes.saturating_sub(held);
        let appended = bytes.len().min(room);
        self.buf.extend_from_slice(&bytes[..appended]);
        // A field line takes at least 3 bytes ("a:\n"), so more slots could never be filled (as
        // in `sniff`).
        let slots = self.limits.head.max_headers.min(self.buf.len() / 3 + 1);
        let mut fields = vec![httparse::EMPTY_HEADER; slots];
        match httparse::parse_headers(&self.buf, &mut fields) {
            Ok(httparse::Status::Complete((section_len, _))) => {
                // The held bytes were an incomplete section, so it ends in the new ones.
                let used = section_len.saturating_sub(held).min(appended);
                self.take(used);
                self.start_unit(State::EndPending);
                used
            }
            Ok(httparse::Status::Partial) => {
                self.take(appended);
                if self.buf.len() >= self.limits.max_trailer_bytes {
                    self.stop(
                        OpaqueReason::Trailers(InvalidReason::TooLarge),
                        self.unit_start,
                    );
                }
                appended
            }
            Err(error) => {
                self.take(appended);
                self.stop(OpaqueReason::Trailers(error.into()), self.unit_start);
                appended
            }
        }
    }
}
