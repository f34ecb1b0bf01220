//! A paced HTTP/1.1 GET, for tests of long transfers: a download that lasts as long as the test
//! needs (to kill or replace an agent in the middle of it), and that reports how it ended instead
//! of failing when the connection is cut.
//!
//! The client reads at a set rate through a small receive buffer, so the server (and any node in
//! between) really holds the connection open for the whole transfer: TCP's flow control makes the
//! sender wait for the reader. [`paced_get`] runs in the calling thread's network namespace (wrap
//! it in [`crate::Lab::in_client`]); [`paced_get_in_background`] runs it on a thread of its own,
//! in a namespace, and lets the test follow the bytes received.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::LabError;
use crate::http_client::HttpError;
use crate::netns::in_netns;

/// The receive buffer the client asks for (`SO_RCVBUF`; Linux doubles it for its bookkeeping).
/// Small, so that the reader's pace reaches the sender within a few tens of KiB.
pub const RECEIVE_BUFFER: usize = 64 * 1024;
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
const MAX_READ: usize = 64 * 1024;
const MIN_READ: usize = 1024;

/// How a paced download went: the response as far as it came, and how it ended.
#[derive(Debug, Clone)]
pub struct Download {
    /// The response status; `None` if the connection ended before a complete head.
    pub status: Option<u16>,
    /// The response head as received: status line and headers, through the empty line. Empty
    /// without a complete head.
    pub head: String,
    /// The `Content-Length` of the response, if it had one.
    pub content_length: Option<u64>,
    /// The body received: a chunked body decoded (as far as it came), any other as sent.
    pub body: Vec<u8>,
    /// Every byte read from the connection, the head included: what the pace applies to.
    pub received: u64,
    /// From the start of the connect to the end of the transfer.
    pub elapsed: Duration,
    /// The connection ended with a reset (`ECONNRESET`).
    pub reset: bool,
    /// No byte arrived for the timeout.
    pub timed_out: bool,
    /// The response is incomplete: no complete head, fewer body bytes than `Content-Length`, no
    /// last chunk, or (without either) the connection did not end with a clean close.
    pub truncated: bool,
}

impl Download {
    /// Whether the whole response arrived.
    pub fn is_complete(&self) -> bool {
        self.status.is_some() && !self.truncated
    }
}

impl fmt::Display for Download {
    /// One line, for test output: `200: 4.90 MB of 10.49 MB in 2.45 s, reset`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mb = |n: u64| n as f64 / 1e6;
        match self.status {
            Some(status) => write!(f, "{status}: {:.2} MB", mb(self.body.len() as u64))?,
            None => write!(f, "no response head: {} bytes", self.received)?,
        }
        if let Some(len) = self.content_length {
            write!(f, " of {:.2} MB", mb(len))?;
        }
        write!(f, " in {:.2} s", self.elapsed.as_secs_f64())?;
        if self.reset {
            f.write_str(", reset")?;
        }
        if self.timed_out {
            f.write_str(", timed out")?;
        }
        if self.truncated && !self.reset && !self.timed_out {
            f.write_str(", cut short")?;
        }
        Ok(())
    }
}

/// GETs `path` from `addr` over a fresh connection (`Connection: close`), reading the response at
/// about `bytes_per_sec` (0: as fast as it comes), in the calling thread's network namespace.
///
/// `timeout` bounds the connect, the sending of the request, and every wait for data: a transfer
/// that makes no progress for `timeout` ends with [`Download::timed_out`]. A reset, an early
/// close or a timeout is reported in the [`Download`], with what arrived until then; an error is
/// only a failed connect or send, a read error other than those, or a malformed response head.
/// Interim (1xx) responses are not expected for a GET and not skipped.
pub fn paced_get(
    addr: SocketAddr,
    path: &str,
    bytes_per_sec: u64,
    timeout: Duration,
) -> Result<Download, HttpError> {
    paced_get_with_progress(addr, path, bytes_per_sec, timeout, &AtomicU64::new(0))
}

/// [`paced_get`], storing into `progress` the number of bytes received so far (head included,
/// as [`Download::received`]) after every read.
pub fn paced_get_with_progress(
    addr: SocketAddr,
    path: &str,
    bytes_per_sec: u64,
    timeout: Duration,
    progress: &AtomicU64,
) -> Result<Download, HttpError> {
    let started = Instant::now();
    let mut stream = connect(addr, timeout)?;
    let io = |op: &'static str| move |source| HttpError::Io { op, addr, source };
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io("configuring socket to"))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(io("configuring socket to"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(io("sending request to"))?;
    // The pace is kept from here: after every read, the reader sleeps until the bytes so far are
    // due at the rate, so the running average never exceeds it.
    let sent = Instant::now();
    // About 20 ms of data per read keeps the sleeps short and the pace even.
    let read_len = if bytes_per_sec == 0 {
        MAX_READ
    } else {
        usize::try_from(bytes_per_sec / 50)
            .unwrap_or(MAX_READ)
            .clamp(MIN_READ, MAX_READ)
    };
    let mut raw: Vec<u8> = Vec::new();
    let mut head: Option<Head> = None;
    let mut chunk = vec![0u8; read_len];
    let (mut reset, mut timed_out, mut closed) = (false, false, false);
    loop {
        if let Some(head) = &head
            && head.expected_end().is_some_and(|end| raw.len() >= end)
        {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => {
                raw.extend_from_slice(&chunk[..n]);
                progress.store(raw.len() as u64, Ordering::Relaxed);
                if head.is_none() {
                    head = parse_head(&raw, addr)?;
                }
                if bytes_per_sec > 0 {
                    let due =
                        sent + Duration::from_secs_f64(raw.len() as f64 / bytes_per_sec as f64);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                reset = true;
                break;
            }
            // A read timeout shows as EAGAIN; the kernel giving up on the connection as ETIMEDOUT.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                timed_out = true;
                break;
            }
            Err(source) => {
                return Err(HttpError::Io {
                    op: "reading response from",
                    addr,
                    source,
                });
            }
        }
    }
    let elapsed = started.elapsed();
    let received = raw.len() as u64;
    let Some(head) = head else {
        return Ok(Download {
            status: None,
            head: String::new(),
            content_length: None,
            body: Vec::new(),
            received,
            elapsed,
            reset,
            timed_out,
            truncated: true,
        });
    };
    let rest = &raw[head.len..];
    let (body, complete) = match head.body_len() {
        Some(len) => {
            let body = rest[..rest.len().min(len)].to_vec();
            let complete = body.len() == len;
            (body, complete)
        }
        None if head.chunked => decode_chunked(rest, addr)?,
        // Delimited by the close: complete if it was a clean one.
        None => (rest.to_vec(), closed),
    };
    Ok(Download {
        status: Some(head.status),
        head: String::from_utf8_lossy(&raw[..head.len]).into_owned(),
        content_length: head.content_length.map(|len| len as u64),
        body,
        received,
        elapsed,
        reset,
        timed_out,
        truncated: !complete,
    })
}

/// Connects with a [`RECEIVE_BUFFER`] receive buffer, set before the connect: the window scale
/// the SYN announces is chosen from the buffer as it is then, and a size set by hand also keeps
/// the kernel from growing the buffer later (autotuning), which would undo the pacing.
fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, HttpError> {
    use nix::errno::Errno;
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage, sockopt};
    let fail = |source: std::io::Error| HttpError::Connect { addr, source };
    if timeout.is_zero() {
        return Err(fail(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a zero timeout",
        )));
    }
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| fail(e.into()))?;
    socket::setsockopt(&fd, sockopt::RcvBuf, &RECEIVE_BUFFER).map_err(|e| fail(e.into()))?;
    // Linux bounds a blocking connect by SO_SNDTIMEO: it fails with EINPROGRESS when it expires.
    let micros = timeout.as_micros().min(i64::MAX as u128) as i64;
    let send_timeout = nix::sys::time::TimeVal::new(
        (micros / 1_000_000) as libc::time_t,
        (micros % 1_000_000) as libc::suseconds_t,
    );
    socket::setsockopt(&fd, sockopt::SendTimeout, &send_timeout).map_err(|e| fail(e.into()))?;
    let target = SockaddrStorage::from(addr);
    let deadline = Instant::now() + timeout;
    loop {
        match socket::connect(fd.as_raw_fd(), &target) {
            Ok(()) | Err(Errno::EISCONN) => break,
            // Interrupted by a signal, the connect goes on in the background: asking again says
            // how it is going (EALREADY while it is, EISCONN or the error once it is done).
            Err(Errno::EINTR | Errno::EALREADY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(Errno::EINTR | Errno::EALREADY | Errno::EINPROGRESS) => {
                return Err(fail(std::io::ErrorKind::TimedOut.into()));
            }
            Err(e) => return Err(fail(e.into())),
        }
    }
    let stream = TcpStream::from(fd);
    stream.set_nodelay(true).map_err(fail)?;
    Ok(stream)
}

/// What the client needs of a response head.
struct Head {
    /// Its length in bytes, through the empty line.
    len: usize,
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
}

impl Head {
    /// The body length the head announces, if it does: `Content-Length`, or none for the
    /// statuses that have no body. `None` for chunked and close-delimited bodies.
    fn body_len(&self) -> Option<usize> {
        if self.status == 204 || self.status == 304 {
            Some(0)
        } else if self.chunked {
            None
        } else {
            self.content_length
        }
    }

    /// Where the response ends in the stream, if the head says.
    fn expected_end(&self) -> Option<usize> {
        self.body_len().map(|len| self.len + len)
    }
}

/// Parses the response head at the start of `raw`; `None` while it is incomplete.
fn parse_head(raw: &[u8], addr: SocketAddr) -> Result<Option<Head>, HttpError> {
    let malformed = |detail: String| HttpError::Malformed { addr, detail };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(raw) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if raw.len() > MAX_HEAD => {
            return Err(malformed("response head larger than 64 KiB".to_string()));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(malformed(format!("response head: {e}"))),
    };
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let content_length = match header("content-length") {
        Some(v) => Some(
            v.parse::<usize>()
                .map_err(|_| malformed(format!("bad Content-Length {v:?}")))?,
        ),
        None => None,
    };
    let chunked =
        header("transfer-encoding").is_some_and(|te| te.to_lowercase().contains("chunked"));
    Ok(Some(Head {
        len,
        status: parsed.code.unwrap_or(0),
        content_length,
        chunked,
    }))
}

/// Decodes a chunked body as far as it came: the data, and whether the last chunk (and the end of
/// any trailers) arrived. A framing error is malformed; a body that stops short is not.
fn decode_chunked(mut rest: &[u8], addr: SocketAddr) -> Result<(Vec<u8>, bool), HttpError> {
    let malformed = |detail: &str| HttpError::Malformed {
        addr,
        detail: detail.to_string(),
    };
    let mut body = Vec::new();
    loop {
        let (size_len, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete((len, size))) => (len, size),
            Ok(httparse::Status::Partial) => return Ok((body, false)),
            Err(_) => return Err(malformed("bad chunk size line")),
        };
        rest = &rest[size_len..];
        if size == 0 {
            // Trailers (if any), then an empty line.
            let complete = rest.starts_with(b"\r\n") || rest.windows(4).any(|w| w == b"\r\n\r\n");
            return Ok((body, complete));
        }
        let size = usize::try_from(size).map_err(|_| malformed("chunk larger than memory"))?;
        if rest.len() < size {
            body.extend_from_slice(rest);
            return Ok((body, false));
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
        match rest.get(..2) {
            Some(b"\r\n") => rest = &rest[2..],
            Some(_) => return Err(malformed("chunk not followed by CRLF")),
            // The CRLF did not come (or only its CR).
            None if rest.is_empty() || rest == b"\r" => return Ok((body, false)),
            None => return Err(malformed("chunk not followed by CRLF")),
        }
    }
}

/// A [`paced_get`] running on a thread of its own; the test follows its progress and collects
/// its result.
pub struct BackgroundDownload {
    progress: Arc<AtomicU64>,
    started: Instant,
    handle: JoinHandle<Result<Download, LabError>>,
}

impl BackgroundDownload {
    /// Bytes received so far, the head included (as [`Download::received`]).
    pub fn received(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// The shared counter behind [`BackgroundDownload::received`].
    pub fn progress(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.progress)
    }

    /// How long since the download was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether the download has ended (its result is ready for [`BackgroundDownload::join`]).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits until at least `bytes` have been received, the download has ended, or `timeout` has
    /// passed, whichever comes first; returns the bytes received then.
    pub fn wait_for_bytes(&self, bytes: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received();
            if received >= bytes || self.is_finished() || Instant::now() >= deadline {
                return received;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for the download to end and returns its result. A panic on its thread is resumed
    /// here.
    pub fn join(self) -> Result<Download, LabError> {
        match self.handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Starts [`paced_get`] on a new thread: in network namespace `netns` (e.g.
/// [`crate::Lab::client_ns`]), or in the caller's with `None`. Fails only if the thread cannot
/// be started; the download's own errors (including entering the namespace) come from
/// [`BackgroundDownload::join`].
pub fn paced_get_in_background(
    netns: Option<&str>,
    addr: SocketAddr,
    path: &str,
    bytes_per_sec: u64,
    timeout: Duration,
) -> Result<BackgroundDownload, LabError> {
    let progress = Arc::new(AtomicU64::new(0));
    let (counter, netns, path) = (
        Arc::clone(&progress),
        netns.map(str::to_string),
        path.to_string(),
    );
    let handle = std::thread::Builder::new()
        .name("paced-get".to_string())
        .spawn(move || {
            let get = || paced_get_with_progress(addr, &path, bytes_per_sec, timeout, &counter);
            match &netns {
                Some(ns) => Ok(in_netns(ns, get)??),
                None => Ok(get()?),
            }
        })
        .map_err(|e| LabError::io("starting a paced download thread", e))?;
    Ok(BackgroundDownload {
        progress,
        started: Instant::now(),
        handle,
    })
}
