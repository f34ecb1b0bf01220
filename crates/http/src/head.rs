//! The request-head sniffer: one strict HTTP/1.x request head, for a routing decision.
//!
//! The node that accepted a client connection holds the client's first bytes until the request
//! head is complete, then routes on it. [`sniff`] is called with *all* bytes received so far,
//! from the first byte of the connection, and answers one of:
//!
//! - [`Sniff::Incomplete`]: the bytes are a valid prefix of a request head that may still
//!   complete within [`Limits::max_head_bytes`]; wait for more.
//! - [`Sniff::Complete`]: the head is complete, valid and at most `max_head_bytes` long. Bytes
//!   after [`RequestHead::head_len`] (a body, a pipelined request) are never looked at.
//! - [`Sniff::Invalid`]: the bytes can never become a valid head within the limits. The caller
//!   does not route on it (baton serves such a connection locally and lets the server answer).
//!
//! The result only depends on the first `max_head_bytes` bytes of `buf`, so once a buffer has
//! reached that length the answer is final.
//!
//! Strictness: the request line and header syntax are exactly [`httparse`]'s defaults (single
//! spaces in the request line, no obs-fold, no whitespace before a colon, only `HTTP/1.0` and
//! `HTTP/1.1`; like httparse, empty lines before the request line and bare-LF line ends are
//! accepted). On top of that the framing headers are checked as RFC 9112 asks of a server, so
//! that baton and the server that finally reads the bytes can never disagree on where the head
//! and the body end: see [`InvalidReason`] for what is rejected.
//!
//! Never panics, whatever the input.

use thiserror::Error;

/// Bounds on what the sniffer accepts. Both are hard limits: a longer head or more header lines
/// make the head [`InvalidReason::TooLarge`] / [`InvalidReason::TooManyHeaders`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest head accepted, counting every byte up to and including the blank line.
    pub max_head_bytes: usize,
    /// Largest number of header lines accepted.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 8192,
            max_headers: 64,
        }
    }
}

/// The outcome of [`sniff`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniff {
    /// A valid prefix of a head that may still complete within the limits.
    Incomplete,
    /// A complete, valid head.
    Complete(RequestHead),
    /// Not a valid head, and no more bytes can make it one.
    Invalid(InvalidReason),
}

/// The HTTP versions a request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    Http10,
    Http11,
}

/// The parts of a request head that routing and connection handling need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Method token, as sent (case-sensitive, e.g. `GET`).
    pub method: String,
    /// Request target, as sent (origin form `/path?query`, absolute form, `*`, or authority).
    pub target: String,
    pub version: HttpVersion,
    /// The Host header value, as sent minus surrounding whitespace (host names are
    /// case-insensitive: compare accordingly). `None` only on HTTP/1.0 without a Host header.
    pub host: Option<String>,
    /// Every `name=value` pair of every Cookie header, in order of appearance. Values are kept
    /// verbatim (including any double quotes); pieces without `=`, with an empty name, or that are
    /// not UTF-8 are skipped, because a cookie a router cannot read is no reason to reject a
    /// request.
    pub cookies: Vec<(String, String)>,
    /// The body length announced by Content-Length, if any.
    pub content_length: Option<u64>,
    /// Whether the body is chunked (Transfer-Encoding with `chunked` as final coding).
    pub chunked: bool,
    /// Whether the client wants the connection kept open after this request: the version default
    /// (1.1 yes, 1.0 no) overridden by a `close` or `keep-alive` Connection option; `close` wins.
    pub keep_alive: bool,
    /// Whether an Upgrade header field is present, whatever its value and whether or not
    /// Connection lists `upgrade`: a lenient server may then switch protocols after this request,
    /// so nothing after it can be relied on to be HTTP/1.x.
    pub upgrade: bool,
    /// Length of the head in bytes, up to and including the blank line that ends it.
    pub head_len: usize,
}

impl RequestHead {
    /// The value of the first cookie called `name` (names are case-sensitive, per RFC 6265).
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(cookie_name, _)| cookie_name == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Why a head is invalid. Variants are stable names, also usable as metric labels via
/// [`InvalidReason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum InvalidReason {
    /// The head is not complete within `max_head_bytes`.
    #[error("request head larger than the limit")]
    TooLarge,
    /// More than `max_headers` header lines.
    #[error("more header lines than the limit")]
    TooManyHeaders,
    /// Bad method or target token, or bad delimiters in the request line.
    #[error("malformed request line")]
    RequestLine,
    /// A protocol other than HTTP/1.0 or HTTP/1.1.
    #[error("unsupported HTTP version")]
    Version,
    /// A header name with a forbidden byte (also obs-fold and whitespace before the colon).
    #[error("invalid header name")]
    HeaderName,
    /// A header value with a forbidden byte.
    #[error("invalid header value")]
    HeaderValue,
    /// A CR not followed by LF.
    #[error("invalid line ending")]
    NewLine,
    /// A Content-Length that is not a decimal number fitting in 64 bits.
    #[error("invalid Content-Length")]
    InvalidContentLength,
    /// Content-Length values that disagree.
    #[error("conflicting Content-Length values")]
    ConflictingContentLength,
    /// Both Content-Length and Transfer-Encoding: a classic request-smuggling vector.
    #[error("Content-Length together with Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    /// A Transfer-Encoding whose final coding is not a single `chunked`, or any
    /// Transfer-Encoding on HTTP/1.0 (RFC 9112 6.1: the framing is then faulty).
    #[error("unsupported Transfer-Encoding")]
    UnsupportedTransferEncoding,
    /// HTTP/1.1 without a Host header (RFC 9112 3.2).
    #[error("missing Host header")]
    MissingHost,
    /// More than one Host header (RFC 9112 3.2).
    #[error("more than one Host header")]
    DuplicateHost,
    /// A Host value that is not a syntactically valid authority.
    #[error("invalid Host header")]
    InvalidHost,
}

impl InvalidReason {
    /// A short snake_case label, for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            InvalidReason::TooLarge => "too_large",
            InvalidReason::TooManyHeaders => "too_many_headers",
            InvalidReason::RequestLine => "request_line",
            InvalidReason::Version => "version",
            InvalidReason::HeaderName => "header_name",
            InvalidReason::HeaderValue => "header_value",
            InvalidReason::NewLine => "new_line",
            InvalidReason::InvalidContentLength => "invalid_content_length",
            InvalidReason::ConflictingContentLength => "conflicting_content_length",
            InvalidReason::ContentLengthWithTransferEncoding => {
                "content_length_with_transfer_encoding"
            }
            InvalidReason::UnsupportedTransferEncoding => "unsupported_transfer_encoding",
            InvalidReason::MissingHost => "missing_host",
            InvalidReason::DuplicateHost => "duplicate_host",
            InvalidReason::InvalidHost => "invalid_host",
        }
    }
}

impl From<httparse::Error> for InvalidReason {
    fn from(error: httparse::Error) -> Self {
        match error {
            httparse::Error::HeaderName => InvalidReason::HeaderName,
            httparse::Error::HeaderValue => InvalidReason::HeaderValue,
            httparse::Error::NewLine => InvalidReason::NewLine,
            httparse::Error::TooManyHeaders => InvalidReason::TooManyHeaders,
            httparse::Error::Version => InvalidReason::Version,
            // `Status` is only produced for responses; `Token` is a bad method or target.
            httparse::Error::Token | httparse::Error::Status => InvalidReason::RequestLine,
        }
    }
}

/// Sniffs the request head at the start of `buf` (the client's bytes from the first one on).
/// See the crate documentation for the contract.
pub fn sniff(buf: &[u8], limits: &Limits) -> Sniff {
    // Looking at no more than the limit makes the answer independent of later bytes and bounds
    // the work per call.
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    // A header line takes at least 3 bytes ("a:\n"), so more slots than that could never be
    // filled; capping keeps a huge configured `max_headers` from allocating a huge table.
    let header_slots = limits.max_headers.min(window.len() / 3 + 1);
    let mut headers = vec![httparse::EMPTY_HEADER; header_slots];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(window) {
        Err(error) => Sniff::Invalid(error.into()),
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_head_bytes => {
            Sniff::Invalid(InvalidReason::TooLarge)
        }
        Ok(httparse::Status::Partial) => Sniff::Incomplete,
        Ok(httparse::Status::Complete(head_len)) => match interpret(&request, head_len) {
            Ok(head) => Sniff::Complete(head),
            Err(reason) => Sniff::Invalid(reason),
        },
    }
}

/// Turns a complete httparse request into a [`RequestHead`], checking the framing headers.
fn interpret(request: &httparse::Request, head_len: usize) -> Result<RequestHead, InvalidReason> {
    // A complete parse always sets these; treat a missing one as malformed rather than panic.
    let (Some(method), Some(target), Some(minor)) = (request.method, request.path, request.version)
    else {
        return Err(InvalidReason::RequestLine);
    };
    let version = match minor {
        0 => HttpVersion::Http10,
        1 => HttpVersion::Http11,
        _ => return Err(InvalidReason::Version),
    };

    let mut host: Option<String> = None;
    let mut cookies = Vec::new();
    let mut content_length: Option<u64> = None;
    let mut transfer_codings: Option<Vec<Vec<u8>>> = None;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut upgrade = false;

    for header in request.headers.iter() {
        let name = header.name;
        let value = trim_ows(header.value);
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err(InvalidReason::DuplicateHost);
            }
            host = Some(parse_host(value)?);
        } else if name.eq_ignore_ascii_case("cookie") {
            parse_cookies(value, &mut cookies);
        } else if name.eq_ignore_ascii_case("content-length") {
            for item in value.split(|&b| b == b',') {
                let length = parse_content_length(trim_ows(item))?;
                match content_length {
                    Some(previous) if previous != length => {
                        return Err(InvalidReason::ConflictingContentLength);
                    }
                    _ => content_length = Some(length),
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Lowercased because transfer-coding names are case-insensitive.
            let codings = transfer_codings.get_or_insert_with(Vec::new);
            codings.extend(list_items(value).map(<[u8]>::to_ascii_lowercase));
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for option in list_items(value) {
                connection_close |= option.eq_ignore_ascii_case(b"close");
                connection_keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }

    let chunked = match transfer_codings {
        None => false,
        Some(_) if version == HttpVersion::Http10 => {
            return Err(InvalidReason::UnsupportedTransferEncoding);
        }
        Some(codings) => {
            // The body length is only knowable if chunked is applied exactly once, last.
            let chunked_count = codings
                .iter()
                .filter(|c| c.as_slice() == b"chunked")
                .count();
            if codings.last().map(Vec::as_slice) != Some(b"chunked") || chunked_count != 1 {
                return Err(InvalidReason::UnsupportedTransferEncoding);
            }
            true
        }
    };
    if chunked && content_length.is_some() {
        return Err(InvalidReason::ContentLengthWithTransferEncoding);
    }
    if version == HttpVersion::Http11 && host.is_none() {
        return Err(InvalidReason::MissingHost);
    }
    let keep_alive = !connection_close && (version == HttpVersion::Http11 || connection_keep_alive);

    Ok(RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        version,
        host,
        cookies,
        content_length,
        chunked,
        keep_alive,
        upgrade,
        head_len,
    })
}

/// Strips optional whitespace (SP / HTAB) from both ends.
fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// The non-empty elements of a comma-separated header list (RFC 9110 5.6.1).
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|item| !item.is_empty())
}

/// `1*DIGIT`, fitting in a u64. Signs, spaces and empty values are rejected.
fn parse_content_length(value: &[u8]) -> Result<u64, InvalidReason> {
    if value.is_empty() {
        return Err(InvalidReason::InvalidContentLength);
    }
    value.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return Err(InvalidReason::InvalidContentLength);
        }
        acc.checked_mul(10)
            .and_then(|acc| acc.checked_add(u64::from(b - b'0')))
            .ok_or(InvalidReason::InvalidContentLength)
    })
}

/// Accepts the characters of an RFC 3986 `host [ ":" port ]` (reg-name, IPv4, IP-literal).
/// An empty value is allowed (RFC 9112 3.2: for targets without an authority).
fn parse_host(value: &[u8]) -> Result<String, InvalidReason> {
    let is_authority_byte =
        |b: &u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(b);
    if !value.iter().all(is_authority_byte) {
        return Err(InvalidReason::InvalidHost);
    }
    // Only ASCII bytes passed the check above, so this conversion cannot fail.
    String::from_utf8(value.to_vec()).map_err(|_| InvalidReason::InvalidHost)
}

/// Appends the `name=value` pairs of one Cookie header value (RFC 6265 5.4, leniently).
fn parse_cookies(value: &[u8], cookies: &mut Vec<(String, String)>) {
    for piece in value.split(|&b| b == b';') {
        let piece = trim_ows(piece);
        let Some(eq) = piece.iter().position(|&b| b == b'=') else {
            continue;
        };
        let name = trim_ows(&piece[..eq]);
        let value = trim_ows(&piece[eq + 1..]);
        if name.is_empty() {
            continue;
        }
        if let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) {
            cookies.push((name.to_owned(), value.to_owned()));
        }
    }
}
