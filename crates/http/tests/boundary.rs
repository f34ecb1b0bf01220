//! Behaviour of `BoundaryTracker`: framing from heads, chunked bodies, limits and offsets on
//! hand-written streams (split at every position), and properties of generated and arbitrary
//! streams.

use baton_http::{
    Boundary, BoundaryLimits, BoundaryTracker, Framing, InvalidReason, Limits, Need, Opaque,
    OpaqueReason, Persistence, Progress, SegmentGap,
};
use proptest::prelude::*;

/// A boundary without the parsed head, for comparing with expectations.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Request {
        index: u64,
        target: String,
        framing: Framing,
        persistence: Persistence,
        head_start: u64,
        head_end: u64,
    },
    End {
        index: u64,
        body_end: u64,
    },
    Opaque(Opaque),
}

impl Seen {
    fn of(boundary: &Boundary) -> Seen {
        match boundary {
            Boundary::Request(request) => Seen::Request {
                index: request.index,
                target: request.head.target.clone(),
                framing: request.framing,
                persistence: request.persistence,
                head_start: request.head_start,
                head_end: request.head_end,
            },
            Boundary::End { index, body_end } => Seen::End {
                index: *index,
                body_end: *body_end,
            },
            Boundary::Opaque(opaque) => Seen::Opaque(*opaque),
        }
    }

    /// The offset up to which the tracker must have read to report it.
    fn position(&self) -> u64 {
        match self {
            Seen::Request { head_end, .. } => *head_end,
            Seen::End { body_end, .. } => *body_end,
            Seen::Opaque(opaque) => opaque.at,
        }
    }
}

/// How a test caller hands the stream over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// Every byte goes to `feed`, bodies included.
    Feeds,
    /// Body bytes go to `skip` (never shown), like the datapath passing them on.
    Skips,
}

/// Hands `segment` to the tracker until all of it is taken or the tracker is opaque, appending
/// the boundaries, and checks the accounting of every call on the way.
fn drive(tracker: &mut BoundaryTracker, caller: Caller, segment: &[u8], out: &mut Vec<Boundary>) {
    let mut rest = segment;
    loop {
        let before = tracker.offset();
        let skipping = caller == Caller::Skips && matches!(tracker.need(), Need::Skip(_));
        let progress = if skipping {
            let Need::Skip(body_left) = tracker.need() else {
                unreachable!()
            };
            let progress = tracker.skip(rest.len());
            assert_eq!(progress.shown, 0, "a skip shows nothing");
            assert!(
                progress.skipped as u64 <= body_left,
                "a skip never passes the body"
            );
            progress
        } else {
            tracker.feed(rest)
        };
        assert_eq!(progress.duplicate, 0);
        assert!(
            progress.taken() <= rest.len(),
            "{progress:?} of {}",
            rest.len()
        );
        assert_eq!(
            tracker.offset() - before,
            progress.taken() as u64,
            "the offset moves by what was taken"
        );
        let limits = tracker.limits();
        let largest = limits
            .head
            .max_head_bytes
            .max(limits.max_chunk_line_bytes)
            .max(limits.max_trailer_bytes);
        assert!(tracker.buffered() <= largest, "buffering is bounded");
        rest = &rest[progress.taken()..];
        let opaque = matches!(tracker.need(), Need::Opaque(_));
        match progress.boundary {
            Some(boundary) => out.push(boundary),
            None if !skipping => {
                assert!(
                    rest.is_empty() || opaque,
                    "a feed without a boundary takes everything"
                );
                return;
            }
            // A skip stops where the tracker needs to see bytes again.
            None if progress.taken() > 0 => {}
            None => {
                assert!(rest.is_empty() || opaque);
                return;
            }
        }
    }
}

/// Feeds `stream` cut at `cuts` (sorted offsets), returning the boundaries and the tracker.
fn run(
    limits: BoundaryLimits,
    caller: Caller,
    stream: &[u8],
    cuts: &[usize],
) -> (Vec<Boundary>, BoundaryTracker) {
    let mut tracker = BoundaryTracker::new(limits);
    let mut boundaries = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        let cut = cut.clamp(from, stream.len());
        drive(&mut tracker, caller, &stream[from..cut], &mut boundaries);
        from = cut;
    }
    check_sequence(&boundaries);
    (boundaries, tracker)
}

fn run_whole(stream: &[u8]) -> (Vec<Boundary>, BoundaryTracker) {
    run(BoundaryLimits::default(), Caller::Feeds, stream, &[])
}

fn seen(boundaries: &[Boundary]) -> Vec<Seen> {
    boundaries.iter().map(Seen::of).collect()
}

/// The order and offsets every boundary sequence obeys: per request, `Request` then `End` or
/// `Opaque`; indexes 0, 1, 2…; each head starts where the previous body ended; offsets never go
/// back; nothing after `Opaque`.
fn check_sequence(boundaries: &[Boundary]) {
    let mut expect_request = true;
    let mut next_index = 0;
    let mut position = 0u64;
    for (at, boundary) in boundaries.iter().enumerate() {
        match boundary {
            Boundary::Request(request) => {
                assert!(expect_request, "{boundaries:?}");
                assert_eq!(request.index, next_index, "{boundaries:?}");
                assert_eq!(request.head_start, position, "{boundaries:?}");
                assert!(request.head_end > request.head_start, "{boundaries:?}");
                assert_eq!(
                    request.head_end - request.head_start,
                    request.head.head_len as u64
                );
                position = request.head_end;
                expect_request = false;
            }
            Boundary::End { index, body_end } => {
                assert!(!expect_request, "{boundaries:?}");
                assert_eq!(*index, next_index, "{boundaries:?}");
                assert!(*body_end >= position, "{boundaries:?}");
                position = *body_end;
                next_index += 1;
                expect_request = true;
            }
            Boundary::Opaque(opaque) => {
                assert!(opaque.at >= position, "{boundaries:?}");
                assert_eq!(at, boundaries.len() - 1, "Opaque is the last boundary");
            }
        }
    }
}

/// The tracker takes nothing more once it is opaque, however it is called.
fn check_terminal(tracker: &mut BoundaryTracker) {
    let Need::Opaque(opaque) = tracker.need() else {
        panic!("not opaque: {:?}", tracker.need());
    };
    let offset = tracker.offset();
    assert_eq!(
        tracker.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
        Progress::default()
    );
    assert_eq!(tracker.skip(100), Progress::default());
    let progress = tracker.feed_at(offset, b"0\r\n\r\n").expect("no gap");
    assert_eq!(progress, Progress::default());
    assert_eq!(tracker.need(), Need::Opaque(opaque));
    assert_eq!(tracker.offset(), offset);
    assert_eq!(tracker.buffered(), 0);
}

fn request(
    index: u64,
    target: &str,
    framing: Framing,
    persistence: Persistence,
    head_start: usize,
    head_end: usize,
) -> Seen {
    Seen::Request {
        index,
        target: target.to_owned(),
        framing,
        persistence,
        head_start: head_start as u64,
        head_end: head_end as u64,
    }
}

fn end(index: u64, body_end: usize) -> Seen {
    Seen::End {
        index,
        body_end: body_end as u64,
    }
}

fn opaque(reason: OpaqueReason, at: usize) -> Seen {
    Seen::Opaque(Opaque {
        reason,
        at: at as u64,
    })
}

/// GET, POST with Content-Length, POST chunked with extensions and trailers, GET: the pipelined
/// stream of the split tests, and its boundaries.
fn pipelined() -> (Vec<u8>, Vec<Seen>) {
    let get_a = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
    let post_b_head = "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n";
    let post_b_body = "hello\r\n\r\nld";
    let post_c_head = "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    let post_c_body = concat!(
        "5;name=value;q=\"a; b\"\r\nhello\r\n",
        "1A\r\nabcdefghijklmnopqrstuvwxyz\r\n",
        // Data that looks like line ends: "\r\n\r".
        "0003 ; last\r\n\r\n\r\r\n",
        "0;end\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n",
    );
    let get_d = "GET /d HTTP/1.1\r\nHost: h\r\n\r\n";
    let stream = [
        get_a,
        post_b_head,
        post_b_body,
        post_c_head,
        post_c_body,
        get_d,
    ]
    .concat();

    let b = get_a.len();
    let b_body = b + post_b_head.len();
    let c = b_body + post_b_body.len();
    let c_body = c + post_c_head.len();
    let d = c_body + post_c_body.len();
    let expected = vec![
        request(0, "/a", Framing::NoBody, Persistence::KeepAlive, 0, b),
        end(0, b),
        request(
            1,
            "/b",
            Framing::Length(11),
            Persistence::KeepAlive,
            b,
            b_body,
        ),
        end(1, c),
        request(2, "/c", Framing::Chunked, Persistence::KeepAlive, c, c_body),
        end(2, d),
        request(
            3,
            "/d",
            Framing::NoBody,
            Persistence::KeepAlive,
            d,
            stream.len(),
        ),
        end(3, stream.len()),
    ];
    (stream.into_bytes(), expected)
}

/// The same kinds of requests with bare LF line ends, empty lines before a request line, an
/// HTTP/1.0 keep-alive request and a last request that closes.
fn pipelined_bare_lf() -> (Vec<u8>, Vec<Seen>) {
    let get_a = "GET /a HTTP/1.0\nConnection: keep-alive\n\n";
    let post_b_head = "\r\n\nPOST /b HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n";
    let post_b_body = "2;x\nhi\n0\n\n";
    let post_c_head = "POST /c HTTP/1.1\nHost: h\nContent-Length: 3\nConnection: close\n\n";
    let post_c_body = "abc";
    let after_close = "GET /never HTTP/1.1\nHost: h\n\n";
    let stream = [
        get_a,
        post_b_head,
        post_b_body,
        post_c_head,
        post_c_body,
        after_close,
    ]
    .concat();

    let b = get_a.len();
    let b_body = b + post_b_head.len();
    let c = b_body + post_b_body.len();
    let c_body = c + post_c_head.len();
    let c_end = c_body + post_c_body.len();
    let expected = vec![
        request(0, "/a", Framing::NoBody, Persistence::KeepAlive, 0, b),
        end(0, b),
        request(1, "/b", Framing::Chunked, Persistence::KeepAlive, b, b_body),
        end(1, c),
        request(2, "/c", Framing::Length(3), Persistence::Close, c, c_body),
        end(2, c_end),
        opaque(OpaqueReason::LastRequest, c_end),
    ];
    (stream.into_bytes(), expected)
}

#[test]
fn pipelined_streams_whole() {
    for (stream, expected) in [pipelined(), pipelined_bare_lf()] {
        let (boundaries, tracker) = run_whole(&stream);
        assert_eq!(seen(&boundaries), expected);
        if !matches!(tracker.need(), Need::Opaque(_)) {
            assert_eq!(tracker.need(), Need::Head);
            assert_eq!(tracker.offset(), stream.len() as u64);
        }
    }
}

#[test]
fn pipelined_streams_split_at_every_position_and_pair_of_positions() {
    for (stream, expected) in [pipelined(), pipelined_bare_lf()] {
        let (whole, whole_tracker) = run_whole(&stream);
        assert_eq!(seen(&whole), expected);
        for caller in [Caller::Feeds, Caller::Skips] {
            for first in 0..=stream.len() {
                let (split, tracker) = run(BoundaryLimits::default(), caller, &stream, &[first]);
                assert_eq!(split, whole, "{caller:?} split at {first}");
                assert_eq!(tracker.need(), whole_tracker.need());
                for second in first..=stream.len() {
                    let (split, _) =
                        run(BoundaryLimits::default(), caller, &stream, &[first, second]);
                    assert_eq!(split, whole, "{caller:?} split at {first} and {second}");
                }
            }
        }
    }
}

#[test]
fn pipelined_streams_byte_by_byte() {
    for (stream, expected) in [pipelined(), pipelined_bare_lf()] {
        let every: Vec<usize> = (0..stream.len()).collect();
        for caller in [Caller::Feeds, Caller::Skips] {
            let (boundaries, _) = run(BoundaryLimits::default(), caller, &stream, &every);
            assert_eq!(seen(&boundaries), expected, "{caller:?}");
        }
    }
}

#[test]
fn need_follows_a_chunked_body() {
    let mut tracker = BoundaryTracker::default();
    let head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    let progress = tracker.feed(head);
    assert_eq!(progress.shown, head.len());
    assert!(matches!(progress.boundary, Some(Boundary::Request(_))));
    assert_eq!(tracker.need(), Need::ChunkLine);
    assert!(tracker.need().shows_bytes());

    // A line split inside its CRLF.
    assert_eq!(tracker.feed(b"a;x=y\r").shown, 6);
    assert_eq!(tracker.need(), Need::ChunkLine);
    assert_eq!(tracker.buffered(), 6);
    assert_eq!(tracker.feed(b"\n").shown, 1);
    assert_eq!(tracker.need(), Need::Skip(10));
    assert!(!tracker.need().shows_bytes());
    assert_eq!(tracker.buffered(), 0, "nothing of a body is held");

    let progress = tracker.skip(4);
    assert_eq!((progress.skipped, progress.boundary), (4, None));
    assert_eq!(tracker.need(), Need::Skip(6));
    // A skip takes no more than the chunk: the line end after it has to be seen.
    assert_eq!(tracker.skip(100).skipped, 6);
    assert_eq!(tracker.need(), Need::ChunkDataEnd);
    assert_eq!(tracker.skip(100), Progress::default());
    assert_eq!(tracker.feed(b"\r").shown, 1);
    assert_eq!(tracker.need(), Need::ChunkDataEnd);
    assert_eq!(tracker.feed(b"\n").shown, 1);
    assert_eq!(tracker.need(), Need::ChunkLine);
    assert_eq!(tracker.feed(b"0\r\n").shown, 3);
    assert_eq!(tracker.need(), Need::Trailers);
    assert_eq!(tracker.feed(b"T: 1\r\n").shown, 6);
    assert_eq!(tracker.need(), Need::Trailers);
    let end = head.len() as u64 + 6 + 1 + 10 + 2 + 3 + 6 + 2;
    let progress = tracker.feed(b"\r\nGET");
    assert_eq!(progress.shown, 2, "the next head is left for the next call");
    assert_eq!(
        progress.boundary,
        Some(Boundary::End {
            index: 0,
            body_end: end
        })
    );
    assert_eq!(tracker.need(), Need::Head);
    assert_eq!(tracker.offset(), end);
}

#[test]
fn a_request_without_body_ends_at_its_head_end_in_the_next_call() {
    let mut tracker = BoundaryTracker::default();
    let head = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    let progress = tracker.feed(head);
    assert!(matches!(progress.boundary, Some(Boundary::Request(_))));
    // The End needs no more bytes: `need` already looks past it, the next call returns it.
    assert_eq!(tracker.need(), Need::Head);
    let progress = tracker.feed(&[]);
    assert_eq!(
        progress.boundary,
        Some(Boundary::End {
            index: 0,
            body_end: head.len() as u64
        })
    );
    assert_eq!(tracker.feed(&[]), Progress::default());
}

/// The framing, persistence and boundaries of one request head followed by `after`.
fn track_one(head: &str, after: &str) -> Vec<Seen> {
    let stream = [head, after].concat();
    let (boundaries, mut tracker) = run_whole(stream.as_bytes());
    if matches!(tracker.need(), Need::Opaque(_)) {
        check_terminal(&mut tracker);
    }
    seen(&boundaries)
}

#[test]
fn framing_and_persistence_from_heads() {
    use Framing::*;
    use Persistence::*;
    let cases: &[(&str, Framing, Persistence)] = &[
        ("GET / HTTP/1.1\r\nHost: h\r\n\r\n", NoBody, KeepAlive),
        // A request is never delimited by the close: without framing headers it has no body.
        ("POST / HTTP/1.1\r\nHost: h\r\n\r\n", NoBody, KeepAlive),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
            Length(0),
            KeepAlive,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n",
            Length(3),
            KeepAlive,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\n",
            Length(3),
            KeepAlive,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            Chunked,
            KeepAlive,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n",
            Chunked,
            KeepAlive,
        ),
        (
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            NoBody,
            Close,
        ),
        (
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, close\r\n\r\n",
            NoBody,
            Close,
        ),
        ("GET / HTTP/1.0\r\n\r\n", NoBody, Close),
        (
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            NoBody,
            KeepAlive,
        ),
        (
            "POST / HTTP/1.0\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\n",
            Length(2),
            KeepAlive,
        ),
        (
            "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            NoBody,
            Upgrade,
        ),
        (
            "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: close\r\n\r\n",
            NoBody,
            Upgrade,
        ),
        (
            "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
            NoBody,
            Connect,
        ),
        (
            "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\nContent-Length: 5\r\n\r\n",
            Length(5),
            Connect,
        ),
        // Method names are case-sensitive: this is not CONNECT.
        (
            "connect h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
            NoBody,
            KeepAlive,
        ),
    ];
    for &(head, framing, persistence) in cases {
        let seen = track_one(head, "");
        let Some(Seen::Request {
            framing: got_framing,
            persistence: got_persistence,
            head_start: 0,
            head_end,
            ..
        }) = seen.first()
        else {
            panic!("{head:?}: {seen:?}");
        };
        assert_eq!(
            (*got_framing, *got_persistence),
            (framing, persistence),
            "{head:?}"
        );
        assert_eq!(*head_end, head.len() as u64, "{head:?}");
        assert_eq!(persistence.carries_next_request(), persistence == KeepAlive);
    }
}

#[test]
fn invalid_framing_is_opaque_at_the_head_start() {
    use InvalidReason::*;
    let first = "GET /first HTTP/1.1\r\nHost: h\r\n\r\n";
    let cases: &[(&str, InvalidReason)] = &[
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            ContentLengthWithTransferEncoding,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
            UnsupportedTransferEncoding,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            UnsupportedTransferEncoding,
        ),
        (
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            UnsupportedTransferEncoding,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            ConflictingContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n",
            InvalidContentLength,
        ),
        ("GET / HTTP/1.1\rHost: h\r\n\r\n", NewLine),
        ("GET / HTTP/2.0\r\nHost: h\r\n\r\n", Version),
        ("GET / HTTP/1.1\r\n\r\n", MissingHost),
    ];
    for &(head, reason) in cases {
        assert_eq!(
            track_one(head, "0\r\n\r\n"),
            [opaque(OpaqueReason::Head(reason), 0)],
            "{head:?}"
        );
        // The same head as a connection's second request: tracking stops where it starts.
        let second = track_one(first, head);
        assert_eq!(
            second[2..],
            [opaque(OpaqueReason::Head(reason), first.len())],
            "{head:?}"
        );
    }
}

#[test]
fn requests_after_which_nothing_is_tracked() {
    let close = "POST / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 2\r\n\r\n";
    let next = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    let body_end = close.len() + 2;
    assert_eq!(
        track_one(close, &format!("ok{next}")),
        [
            request(
                0,
                "/",
                Framing::Length(2),
                Persistence::Close,
                0,
                close.len()
            ),
            end(0, body_end),
            opaque(OpaqueReason::LastRequest, body_end),
        ]
    );

    let http10 = "GET /old HTTP/1.0\r\n\r\n";
    assert_eq!(
        track_one(http10, next),
        [
            request(
                0,
                "/old",
                Framing::NoBody,
                Persistence::Close,
                0,
                http10.len()
            ),
            end(0, http10.len()),
            opaque(OpaqueReason::LastRequest, http10.len()),
        ]
    );

    // An upgrade happens once the server has read the body: the body is still followed.
    let upgrade = "POST /u HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nTransfer-Encoding: chunked\r\n\r\n";
    let body = "1\r\nx\r\n0\r\n\r\n";
    let body_end = upgrade.len() + body.len();
    assert_eq!(
        track_one(upgrade, &format!("{body}PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")),
        [
            request(
                0,
                "/u",
                Framing::Chunked,
                Persistence::Upgrade,
                0,
                upgrade.len()
            ),
            end(0, body_end),
            opaque(OpaqueReason::Upgrade, body_end),
        ]
    );

    // A CONNECT's bytes after the head are the tunnel's, whatever the head announces.
    let connect = "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\nContent-Length: 4\r\n\r\n";
    assert_eq!(
        track_one(connect, "\x16\x03\x01\x02\x00"),
        [
            request(
                0,
                "h:443",
                Framing::Length(4),
                Persistence::Connect,
                0,
                connect.len()
            ),
            opaque(OpaqueReason::Connect, connect.len()),
        ]
    );
}

const CHUNKED_HEAD: &str = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";

#[test]
fn malformed_chunked_bodies_are_opaque_where_the_bad_unit_starts() {
    let at = CHUNKED_HEAD.len();
    let cases: &[(&str, OpaqueReason, usize)] = &[
        ("x\r\n", OpaqueReason::ChunkSize, at),
        ("\r\n", OpaqueReason::ChunkSize, at),
        ("10000000000000000\r\n", OpaqueReason::ChunkSize, at),
        ("5 \r\n", OpaqueReason::ChunkExtension, at),
        ("5;a=\"b\r\n", OpaqueReason::ChunkExtension, at),
        ("5\r\r\n", OpaqueReason::ChunkNewLine, at),
        (
            "5\r\nhelloX\r\n0\r\n\r\n",
            OpaqueReason::ChunkDataEnd,
            at + 8,
        ),
        (
            "5\r\nhello\rX\n0\r\n\r\n",
            OpaqueReason::ChunkDataEnd,
            at + 8,
        ),
        ("5\r\nhello\r\nz\r\n", OpaqueReason::ChunkSize, at + 10),
        (
            "0\r\nBad Name: x\r\n\r\n",
            OpaqueReason::Trailers(InvalidReason::HeaderName),
            at + 3,
        ),
        (
            "0\r\nX: a\0b\r\n\r\n",
            OpaqueReason::Trailers(InvalidReason::HeaderValue),
            at + 3,
        ),
        (
            "0\r\nX: 1\r\r\n\r\n",
            OpaqueReason::Trailers(InvalidReason::HeaderValue),
            at + 3,
        ),
    ];
    for &(body, reason, at) in cases {
        let seen = track_one(CHUNKED_HEAD, body);
        assert_eq!(seen[1..], [opaque(reason, at)], "{body:?}");
    }
}

#[test]
fn bare_lf_ends_chunked_framing_lines_as_it_ends_head_lines() {
    let body = "3\nabc\n0\nT: 1\n\n";
    let seen = track_one(CHUNKED_HEAD, body);
    assert_eq!(seen[1..], [end(0, CHUNKED_HEAD.len() + body.len())]);
}

fn limits_with(max_chunk_line_bytes: usize, max_trailer_bytes: usize) -> BoundaryLimits {
    BoundaryLimits {
        max_chunk_line_bytes,
        max_trailer_bytes,
        ..BoundaryLimits::default()
    }
}

#[test]
fn chunk_line_limit_is_exact() {
    let line = "5;name=value\r\n";
    let stream = format!("{CHUNKED_HEAD}{line}hello\r\n0\r\n\r\n");
    let exact = limits_with(line.len(), 8192);
    let (boundaries, _) = run(exact, Caller::Feeds, stream.as_bytes(), &[]);
    assert!(matches!(boundaries.last(), Some(Boundary::End { .. })));

    let short = limits_with(line.len() - 1, 8192);
    for cuts in [vec![], (0..stream.len()).collect()] {
        let (boundaries, tracker) = run(short, Caller::Feeds, stream.as_bytes(), &cuts);
        assert_eq!(
            seen(&boundaries[1..]),
            [opaque(OpaqueReason::ChunkLineTooLong, CHUNKED_HEAD.len())]
        );
        assert!(tracker.offset() <= (CHUNKED_HEAD.len() + line.len()) as u64);
    }
}

#[test]
fn trailer_limits_are_exact() {
    let trailers = "A: 1\r\nB: 2\r\n\r\n";
    let stream = format!("{CHUNKED_HEAD}0\r\n{trailers}");
    let trailers_at = CHUNKED_HEAD.len() + 3;
    let exact = limits_with(1024, trailers.len());
    let (boundaries, _) = run(exact, Caller::Feeds, stream.as_bytes(), &[]);
    assert_eq!(seen(&boundaries[1..]), [end(0, stream.len())]);

    let short = limits_with(1024, trailers.len() - 1);
    let (boundaries, _) = run(short, Caller::Feeds, stream.as_bytes(), &[]);
    assert_eq!(
        seen(&boundaries[1..]),
        [opaque(
            OpaqueReason::Trailers(InvalidReason::TooLarge),
            trailers_at
        )]
    );

    let two_fields = BoundaryLimits {
        head: Limits {
            max_headers: 2,
            ..Limits::default()
        },
        ..BoundaryLimits::default()
    };
    let (boundaries, _) = run(two_fields, Caller::Feeds, stream.as_bytes(), &[]);
    assert_eq!(seen(&boundaries[1..]), [end(0, stream.len())]);
    let three = format!("{CHUNKED_HEAD}0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n");
    let (boundaries, _) = run(two_fields, Caller::Feeds, three.as_bytes(), &[]);
    assert_eq!(
        seen(&boundaries[1..]),
        [opaque(
            OpaqueReason::Trailers(InvalidReason::TooManyHeaders),
            trailers_at
        )]
    );
}

#[test]
fn a_later_head_over_the_limit_is_opaque_and_bounded() {
    let first = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    let limits = BoundaryLimits {
        head: Limits {
            max_head_bytes: 64,
            ..Limits::default()
        },
        ..BoundaryLimits::default()
    };
    let stream = format!(
        "{first}GET /{} HTTP/1.1\r\nHost: h\r\n\r\n",
        "x".repeat(100)
    );
    for cuts in [vec![], (0..stream.len()).collect()] {
        let (boundaries, mut tracker) = run(limits, Caller::Feeds, stream.as_bytes(), &cuts);
        assert_eq!(
            seen(&boundaries[2..]),
            [opaque(
                OpaqueReason::Head(InvalidReason::TooLarge),
                first.len()
            )]
        );
        assert_eq!(
            tracker.offset(),
            (first.len() + 64) as u64,
            "read up to the limit"
        );
        check_terminal(&mut tracker);
    }
}

#[test]
fn offsets_never_pass_the_last_u64() {
    // A body that would end past the last offset.
    let huge = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551615\r\n\r\n";
    assert_eq!(
        track_one(huge, "x")[1..],
        [opaque(OpaqueReason::StreamTooLong, huge.len())]
    );
    // A chunk that would.
    assert_eq!(
        track_one(CHUNKED_HEAD, "ffffffffffffffff\r\n")[1..],
        [opaque(OpaqueReason::StreamTooLong, CHUNKED_HEAD.len())]
    );

    // A body that ends exactly at the last offset: nothing can follow it.
    let head_len = 66;
    let length = u64::MAX - head_len;
    let head = format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {length}\r\n\r\n");
    assert_eq!(head.len() as u64, head_len);
    let mut tracker = BoundaryTracker::default();
    let progress = tracker.feed(head.as_bytes());
    assert!(matches!(progress.boundary, Some(Boundary::Request(_))));
    assert_eq!(tracker.need(), Need::Skip(length));
    let mut skipped = 0u64;
    let end = loop {
        let progress = tracker.skip(usize::MAX);
        skipped += progress.skipped as u64;
        if let Some(boundary) = progress.boundary {
            break boundary;
        }
    };
    assert_eq!(skipped, length);
    assert_eq!(
        end,
        Boundary::End {
            index: 0,
            body_end: u64::MAX
        }
    );
    let progress = tracker.feed(b"GET");
    assert_eq!(progress.taken(), 0);
    assert_eq!(
        progress.boundary,
        Some(Boundary::Opaque(Opaque {
            reason: OpaqueReason::StreamTooLong,
            at: u64::MAX
        }))
    );
    check_terminal(&mut tracker);
}

#[test]
fn feed_at_trims_what_was_taken_and_refuses_gaps() {
    let (stream, expected) = pipelined();
    let mut tracker = BoundaryTracker::default();
    assert_eq!(
        tracker.feed_at(1, &stream[1..]),
        Err(SegmentGap {
            expected: 0,
            offset: 1
        })
    );
    assert_eq!(tracker.offset(), 0, "a refused segment changes nothing");

    // Segments of 7 bytes, each sent twice, the second time overlapping the next one by 3.
    let mut boundaries = Vec::new();
    let mut segment_start = 0;
    while segment_start < stream.len() {
        let segment_end = (segment_start + 7).min(stream.len());
        for (from, to) in [
            (segment_start, segment_end),
            (segment_start, (segment_end + 3).min(stream.len())),
        ] {
            let mut offset = from;
            loop {
                let progress = tracker
                    .feed_at(offset as u64, &stream[offset..to])
                    .expect("in order");
                offset += progress.taken();
                match progress.boundary {
                    Some(boundary) => boundaries.push(boundary),
                    None => break,
                }
            }
            assert_eq!(offset, to);
        }
        segment_start = segment_end + 3;
    }
    assert_eq!(seen(&boundaries), expected);

    // A segment wholly taken already is a duplicate.
    let progress = tracker.feed_at(0, &stream[..10]).expect("old data");
    assert_eq!(
        progress,
        Progress {
            duplicate: 10,
            ..Progress::default()
        }
    );
}

#[test]
fn skip_takes_nothing_where_bytes_must_be_seen() {
    let mut tracker = BoundaryTracker::default();
    assert_eq!(tracker.skip(10), Progress::default());
    assert_eq!(tracker.need(), Need::Head);
    let head = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n";
    tracker.feed(head.as_bytes());
    let progress = tracker.skip(10);
    assert_eq!(progress.skipped, 4, "no more than the body");
    assert_eq!(
        progress.boundary,
        Some(Boundary::End {
            index: 0,
            body_end: head.len() as u64 + 4
        })
    );
    assert_eq!(tracker.skip(6), Progress::default());
}

#[test]
fn opaque_reason_labels_are_distinct() {
    use OpaqueReason::*;
    let all = [
        LastRequest,
        Upgrade,
        Connect,
        Head(InvalidReason::TooLarge),
        ChunkSize,
        ChunkExtension,
        ChunkNewLine,
        ChunkLineTooLong,
        ChunkDataEnd,
        Trailers(InvalidReason::TooLarge),
        StreamTooLong,
    ];
    let labels: std::collections::HashSet<&str> = all.iter().map(OpaqueReason::as_str).collect();
    assert_eq!(labels.len(), all.len());
}

// ---- Generated streams ----

/// A generated stream of pipelined requests and the boundaries it must give.
#[derive(Debug, Clone)]
struct Generated {
    bytes: Vec<u8>,
    expected: Vec<Seen>,
}

#[derive(Debug, Clone)]
enum Body {
    None,
    Length(Vec<u8>),
    /// Chunks (data, size written with leading zeros / upper case, extension), then trailers.
    Chunked(Vec<(Vec<u8>, bool, Option<String>)>, Vec<String>),
}

#[derive(Debug, Clone)]
struct GeneratedRequest {
    target: String,
    bare_lf: bool,
    empty_lines: usize,
    body: Body,
}

fn generated_request() -> impl Strategy<Value = GeneratedRequest> {
    let data = proptest::collection::vec(any::<u8>(), 1..40);
    let extension = proptest::option::of(prop_oneof![
        "[a-z]{1,5}",
        "[a-z]{1,5}=[a-z0-9]{1,5}",
        "[a-z]{1,5}=\"[ a-z;=]{0,8}\"",
    ]);
    let chunk = (data, any::<bool>(), extension);
    let trailer = "X-[a-z]{1,8}: [a-z0-9]{0,8}";
    let body = prop_oneof![
        Just(Body::None),
        proptest::collection::vec(any::<u8>(), 0..60).prop_map(Body::Length),
        (
            proptest::collection::vec(chunk, 0..4),
            proptest::collection::vec(trailer, 0..3)
        )
            .prop_map(|(chunks, trailers)| Body::Chunked(chunks, trailers)),
    ];
    ("/[a-z0-9]{0,12}", any::<bool>(), 0usize..3, body).prop_map(
        |(target, bare_lf, empty_lines, body)| GeneratedRequest {
            target,
            bare_lf,
            empty_lines,
            body,
        },
    )
}

/// How a generated stream ends.
#[derive(Debug, Clone)]
enum Tail {
    /// After the last body: nothing.
    Nothing,
    /// The first bytes of one more head.
    PartialHead(usize),
    /// A last request that stops tracking, then bytes that must not be looked at.
    Stop(Persistence),
}

fn generated_stream() -> impl Strategy<Value = Generated> {
    let tail = prop_oneof![
        Just(Tail::Nothing),
        (1usize..20).prop_map(Tail::PartialHead),
        Just(Tail::Stop(Persistence::Close)),
        Just(Tail::Stop(Persistence::Upgrade)),
        Just(Tail::Stop(Persistence::Connect)),
    ];
    (proptest::collection::vec(generated_request(), 0..5), tail).prop_map(|(requests, tail)| {
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for (index, request) in requests.iter().enumerate() {
            append_request(&mut bytes, &mut expected, index as u64, request, None);
        }
        let index = requests.len() as u64;
        match tail {
            Tail::Nothing => {}
            Tail::PartialHead(len) => {
                let head = b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
                bytes.extend_from_slice(&head[..len.min(head.len() - 1)]);
            }
            Tail::Stop(persistence) => {
                let (method, header, target) = match persistence {
                    Persistence::Close => ("POST", "Connection: close\r\n", "/last"),
                    Persistence::Upgrade => (
                        "POST",
                        "Upgrade: websocket\r\nConnection: upgrade\r\n",
                        "/last",
                    ),
                    _ => ("CONNECT", "", "h:443"),
                };
                let last = GeneratedRequest {
                    target: target.to_owned(),
                    bare_lf: false,
                    empty_lines: 0,
                    body: Body::Length(b"body".to_vec()),
                };
                append_request(
                    &mut bytes,
                    &mut expected,
                    index,
                    &last,
                    Some((method, header, persistence)),
                );
                // Bytes that would be a request, were they tracked.
                bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
            }
        }
        Generated { bytes, expected }
    })
}

/// Appends a request and its expected boundaries. `last` makes it the last tracked request:
/// its method, extra header lines and persistence.
fn append_request(
    bytes: &mut Vec<u8>,
    expected: &mut Vec<Seen>,
    index: u64,
    request: &GeneratedRequest,
    last: Option<(&str, &str, Persistence)>,
) {
    let eol = if request.bare_lf { "\n" } else { "\r\n" };
    let head_start = bytes.len() as u64;
    let (method, framing_header, framing) = match &request.body {
        Body::None => ("GET", String::new(), Framing::NoBody),
        Body::Length(body) => (
            "POST",
            format!("Content-Length: {}{eol}", body.len()),
            Framing::Length(body.len() as u64),
        ),
        Body::Chunked(..) => (
            "POST",
            format!("Transfer-Encoding: chunked{eol}"),
            Framing::Chunked,
        ),
    };
    let (method, extra_headers, persistence) = last.unwrap_or((method, "", Persistence::KeepAlive));
    let mut head = eol.repeat(request.empty_lines);
    head += &format!(
        "{method} {} HTTP/1.1{eol}Host: h{eol}{framing_header}",
        request.target
    );
    head += &extra_headers.replace("\r\n", eol);
    head += eol;
    bytes.extend_from_slice(head.as_bytes());
    let head_end = bytes.len() as u64;
    expected.push(Seen::Request {
        index,
        target: request.target.clone(),
        framing,
        persistence,
        head_start,
        head_end,
    });
    if persistence == Persistence::Connect {
        expected.push(Seen::Opaque(Opaque {
            reason: OpaqueReason::Connect,
            at: head_end,
        }));
        return;
    }
    match &request.body {
        Body::None => {}
        Body::Length(body) => bytes.extend_from_slice(body),
        Body::Chunked(chunks, trailers) => {
            for (data, padded, extension) in chunks {
                let size = if *padded {
                    format!("00{:X}", data.len())
                } else {
                    format!("{:x}", data.len())
                };
                let extension = extension
                    .as_ref()
                    .map(|e| format!(";{e}"))
                    .unwrap_or_default();
                bytes.extend_from_slice(format!("{size}{extension}{eol}").as_bytes());
                bytes.extend_from_slice(data);
                bytes.extend_from_slice(eol.as_bytes());
            }
            bytes.extend_from_slice(format!("0{eol}").as_bytes());
            for trailer in trailers {
                bytes.extend_from_slice(format!("{trailer}{eol}").as_bytes());
            }
            bytes.extend_from_slice(eol.as_bytes());
        }
    }
    let body_end = bytes.len() as u64;
    expected.push(Seen::End { index, body_end });
    let reason = match persistence {
        Persistence::Close => OpaqueReason::LastRequest,
        Persistence::Upgrade => OpaqueReason::Upgrade,
        _ => return,
    };
    expected.push(Seen::Opaque(Opaque {
        reason,
        at: body_end,
    }));
}

/// Sorted cut positions inside a stream of `len` bytes.
fn cuts(len: usize, picks: &[prop::sample::Index]) -> Vec<usize> {
    let mut cuts: Vec<usize> = picks.iter().map(|pick| pick.index(len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

fn small_limits() -> impl Strategy<Value = BoundaryLimits> {
    (0usize..200, 0usize..8, 0usize..40, 0usize..60).prop_map(
        |(max_head_bytes, max_headers, max_chunk_line_bytes, max_trailer_bytes)| BoundaryLimits {
            head: Limits {
                max_head_bytes,
                max_headers,
            },
            max_chunk_line_bytes,
            max_trailer_bytes,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn generated_streams_give_their_boundaries_however_split(
        generated in generated_stream(),
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        skips in any::<bool>(),
    ) {
        let caller = if skips { Caller::Skips } else { Caller::Feeds };
        let (whole, whole_tracker) = run_whole(&generated.bytes);
        prop_assert_eq!(seen(&whole), generated.expected.clone());
        let cuts = cuts(generated.bytes.len(), &picks);
        let (split, mut tracker) = run(BoundaryLimits::default(), caller, &generated.bytes, &cuts);
        prop_assert_eq!(&split, &whole);
        prop_assert_eq!(tracker.need(), whole_tracker.need());
        if matches!(tracker.need(), Need::Opaque(_)) {
            check_terminal(&mut tracker);
        } else {
            prop_assert_eq!(tracker.offset(), generated.bytes.len() as u64);
        }
    }

    #[test]
    fn bodies_are_never_looked_at(
        generated in generated_stream(),
        noise in proptest::collection::vec(any::<u8>(), 64),
    ) {
        // Overwrite every byte the tracker was told to skip; the boundaries must not change.
        let mut tracker = BoundaryTracker::default();
        let mut scrambled = generated.bytes.clone();
        let mut at = 0;
        let mut boundaries = Vec::new();
        while at < scrambled.len() {
            // Shown bytes one at a time, so that every skip is announced before its bytes come.
            let len = match tracker.need() {
                Need::Skip(n) => {
                    let n = (n as usize).min(scrambled.len() - at);
                    for (i, byte) in scrambled[at..at + n].iter_mut().enumerate() {
                        *byte = noise[i % noise.len()];
                    }
                    n
                }
                _ => 1,
            };
            let progress = tracker.feed(&scrambled[at..at + len]);
            at += progress.taken();
            match progress.boundary {
                Some(boundary) => boundaries.push(boundary),
                None if progress.taken() == 0 => break,
                None => {}
            }
        }
        drive(&mut tracker, Caller::Feeds, &[], &mut boundaries);
        prop_assert_eq!(seen(&boundaries), generated.expected);
    }

    #[test]
    fn a_changed_byte_changes_no_boundary_before_it(
        generated in generated_stream(),
        pick in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        prop_assume!(!generated.bytes.is_empty());
        let mut bytes = generated.bytes.clone();
        let changed = pick.index(bytes.len());
        bytes[changed] = byte;
        let (boundaries, mut tracker) = run(BoundaryLimits::default(), Caller::Feeds, &bytes, &cuts(bytes.len(), &picks));
        let before: Vec<Seen> = generated
            .expected
            .iter()
            .filter(|seen| seen.position() <= changed as u64)
            .cloned()
            .collect();
        let got = seen(&boundaries);
        prop_assert!(got.len() >= before.len(), "{:?} vs {:?}", got, before);
        prop_assert_eq!(&got[..before.len()], &before[..]);
        if matches!(tracker.need(), Need::Opaque(_)) {
            check_terminal(&mut tracker);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_keep_the_invariants(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        limits in small_limits(),
        skips in any::<bool>(),
    ) {
        let caller = if skips { Caller::Skips } else { Caller::Feeds };
        let (_, mut tracker) = run(limits, caller, &bytes, &cuts(bytes.len(), &picks));
        if matches!(tracker.need(), Need::Opaque(_)) {
            check_terminal(&mut tracker);
        }
    }

    #[test]
    fn arbitrary_heads_and_chunks_never_panic_and_split_the_same(
        pieces in proptest::collection::vec(prop_oneof![
            Just(CHUNKED_HEAD.to_owned()),
            Just("GET / HTTP/1.1\r\nHost: h\r\n\r\n".to_owned()),
            Just("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n".to_owned()),
            "[0-9a-fA-F;= \"\\\\\r\n]{0,12}",
            "[ -~\r\n]{0,30}",
        ], 0..12),
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        limits in small_limits(),
    ) {
        let bytes = pieces.concat().into_bytes();
        let (whole, _) = run(limits, Caller::Feeds, &bytes, &[]);
        let (split, mut tracker) = run(limits, Caller::Feeds, &bytes, &cuts(bytes.len(), &picks));
        prop_assert_eq!(split, whole);
        if matches!(tracker.need(), Need::Opaque(_)) {
            check_terminal(&mut tracker);
        }
    }

    #[test]
    fn arbitrary_calls_never_panic(
        calls in proptest::collection::vec(prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Ok),
            any::<usize>().prop_map(Err),
        ], 0..40),
        limits in small_limits(),
        rewind in any::<u64>(),
    ) {
        let mut tracker = BoundaryTracker::new(limits);
        let mut last_offset = 0;
        for call in calls {
            let progress = match call {
                Ok(bytes) => {
                    let offset = tracker.offset().saturating_sub(rewind % 8);
                    let progress = tracker.feed_at(offset, &bytes).expect("never past the position");
                    prop_assert!(progress.taken() <= bytes.len());
                    progress
                }
                Err(count) => tracker.skip(count),
            };
            prop_assert!(tracker.offset() >= last_offset);
            prop_assert_eq!(tracker.offset() - last_offset, (progress.shown + progress.skipped) as u64);
            last_offset = tracker.offset();
            if let Some(past) = tracker.offset().checked_add(1) {
                tracker.feed_at(past, b"x").expect_err("a gap");
            }
        }
    }
}
