//! `baton serve-static`: the lab's plain HTTP/1.1 file server (hyper).
//!
//! - `GET` and `HEAD` of files under the root (a directory serves its `index.html`); a path that
//!   would leave the root (`..`, or a symlink pointing out) is refused with 403, a missing file is
//!   404. Files are streamed in 128 KiB chunks with an exact `Content-Length`.
//! - `POST /echo` reads the whole request body (up to 64 MiB) and answers 200 with the same bytes.
//! - `GET` and `HEAD` of `/o/<id>/<size>` (a generated object; `id` and `size` decimal, `size` at
//!   most [`MAX_OBJECT_SIZE`]): 200 with exactly `size` bytes of
//!   [`file_content`](crate::content::file_content)`(path, size)`, `path` being the whole URL
//!   path, and `Cache-Control: max-age=3600`; no file on disk. Any other `/o/...` path is 404.
//! - With `--delay-ms D`, every response but `/_stats`'s waits D ms before its head: a distant
//!   origin, for the lab's cache tier.
//! - `GET /_stats`: `requests N\n` in plain text, N being how many responses the server has
//!   answered (all but `/_stats`'s own), never delayed, `Cache-Control: no-store`.
//! - Every response carries `X-Served-By: <served-by>`; connections are kept alive.
//! - SIGTERM or SIGINT: stop accepting, let in-flight responses finish (at most 2 s), exit 0.

use std::convert::Infallible;
use std::ffi::OsStr;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::content::ContentStream;

/// Largest `POST /echo` body.
pub const MAX_ECHO_BODY: usize = 64 * 1024 * 1024;
/// Largest generated object (`/o/<id>/<size>`): 16 MiB.
pub const MAX_OBJECT_SIZE: usize = 16 * 1024 * 1024;
/// Where generated objects live: `/o/<id>/<size>`.
pub const OBJECT_PREFIX: &str = "/o/";
/// The path of the request counter (see [`parse_stats`]).
pub const STATS_PATH: &str = "/_stats";
const CHUNK: usize = 128 * 1024;
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// `baton serve-static` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Directory to serve.
    #[arg(long)]
    pub root: PathBuf,
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Value of the `X-Served-By` header on every response.
    #[arg(long, default_value = "static")]
    pub served_by: String,
    /// Delay every response (but `/_stats`) this many milliseconds before its head, as a
    /// distant origin would.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("web root {}: {source}", path.display())]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid --served-by value {0:?} (must be a valid header value)")]
    ServedBy(String),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("starting the tokio runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("installing signal handlers: {0}")]
    Signal(#[source] io::Error),
}

/// What the server serves and how it names itself, and its request counter. Clones share the
/// counter.
#[derive(Debug, Clone)]
pub struct StaticConfig {
    /// Canonical web root.
    pub root: PathBuf,
    pub served_by: HeaderValue,
    /// How long every response but `/_stats`'s waits before its head.
    pub delay: Duration,
    /// Responses answered so far, `/_stats`'s excepted.
    requests: Arc<AtomicU64>,
}

impl StaticConfig {
    /// Serving `root` (which must be a directory) as `served_by`, without delay.
    pub fn new(root: &Path, served_by: &str) -> Result<Self, ServeError> {
        let root = std::fs::canonicalize(root).map_err(|source| ServeError::Root {
            path: root.to_path_buf(),
            source,
        })?;
        if !root.is_dir() {
            let source = io::Error::new(io::ErrorKind::NotADirectory, "not a directory");
            return Err(ServeError::Root { path: root, source });
        }
        let served_by = HeaderValue::from_str(served_by)
            .map_err(|_| ServeError::ServedBy(served_by.to_string()))?;
        Ok(StaticConfig {
            root,
            served_by,
            delay: Duration::ZERO,
            requests: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The same, every response but `/_stats`'s delayed by `delay` before its head.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// How many responses the server has answered, `/_stats`'s excepted (what `/_stats` says).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(args: ServeArgs) -> Result<(), ServeError> {
    let config = Arc::new(
        StaticConfig::new(&args.root, &args.served_by)?
            .with_delay(Duration::from_millis(args.delay_ms)),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signal)?;
        let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signal)?;
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|source| ServeError::Bind { addr: args.listen, source })?;
        tracing::info!(listen = %args.listen, root = %config.root.display(), served_by = %args.served_by, delay_ms = args.delay_ms, "serving");
        serve(listener, config, async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        })
        .await;
        Ok(())
    })
}

/// A server running on a background thread (for tests): see [`start`].
pub struct StaticServerHandle {
    addr: SocketAddr,
    config: Arc<StaticConfig>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StaticServerHandle {
    /// The address it listens on (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many responses it has answered, `/_stats`'s excepted.
    pub fn requests(&self) -> u64 {
        self.config.requests()
    }

    /// Stops it gracefully and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StaticServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts a server on `listen` (port 0 picks one) on a background thread with its own runtime.
pub fn start(
    listen: SocketAddr,
    root: &Path,
    served_by: &str,
) -> Result<StaticServerHandle, ServeError> {
    start_with(listen, StaticConfig::new(root, served_by)?)
}

/// [`start`] with a configuration of its own (a delay, say).
pub fn start_with(
    listen: SocketAddr,
    config: StaticConfig,
) -> Result<StaticServerHandle, ServeError> {
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind(listen).map_err(|source| ServeError::Bind {
        addr: listen,
        source,
    })?;
    let bind_err = |source| ServeError::Bind {
        addr: listen,
        source,
    };
    let addr = listener.local_addr().map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle_config = config.clone();
    let thread = std::thread::spawn(move || {
        runtime.block_on(async move {
            let listener =
                TcpListener::from_std(listener).expect("a non-blocking std listener converts");
            serve(listener, config, async move {
                let _ = stop_rx.await;
            })
            .await;
        });
    });
    Ok(StaticServerHandle {
        addr,
        config: handle_config,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// Serves connections from `listener` until `shutdown` completes; then stops accepting, asks every
/// connection to finish its current response and close, and waits for them (at most 2 s).
pub async fn serve(
    listener: TcpListener,
    config: Arc<StaticConfig>,
    shutdown: impl Future<Output = ()>,
) {
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let config = config.clone();
                let mut closing = closing_rx.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(config.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .keep_alive(true)
                        // A client may half-close after its request (HTTP/1.0 style); answer it.
                        .half_close(true)
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        result = conn.as_mut() => {
                            if let Err(e) = result {
                                tracing::debug!("connection: {e}");
                            }
                        }
                        _ = closing.changed() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
}

async fn handle(
    config: Arc<StaticConfig>,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, Infallible> {
    let mut resp = if req.uri().path() == STATS_PATH {
        // Neither delayed nor counted: it measures the server, it is not content.
        stats(&config, req.method())
    } else {
        if !config.delay.is_zero() {
            tokio::time::sleep(config.delay).await;
        }
        let resp = route(&config, req).await;
        config.requests.fetch_add(1, Ordering::Relaxed);
        resp
    };
    resp.headers_mut()
        .insert("x-served-by", config.served_by.clone());
    Ok(resp)
}

async fn route(config: &StaticConfig, req: Request<Incoming>) -> Response<ResBody> {
    let method = req.method().clone();
    if req.uri().path() == "/echo" {
        return if method == Method::POST {
            echo(req).await
        } else {
            with_allow(text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"), "POST")
        };
    }
    match method {
        Method::GET | Method::HEAD if req.uri().path().starts_with(OBJECT_PREFIX) => {
            generated_object(req.uri().path(), method == Method::HEAD)
        }
        Method::GET | Method::HEAD => {
            serve_file(config, req.uri().path(), method == Method::HEAD).await
        }
        _ => with_allow(
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            "GET, HEAD",
        ),
    }
}

fn stats(config: &StaticConfig, method: &Method) -> Response<ResBody> {
    if method != Method::GET {
        return with_allow(text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"), "GET");
    }
    let mut resp = text(StatusCode::OK, &format!("requests {}\n", config.requests()));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Parses the body of `GET /_stats` (`requests N`) into N.
pub fn parse_stats(body: &str) -> Option<u64> {
    body.lines()
        .find_map(|line| line.strip_prefix("requests "))
        .and_then(|n| n.trim().parse().ok())
}

/// The size of the generated object at URL path `path`: `Some(size)` for `/o/<id>/<size>` with
/// `id` and `size` non-empty runs of ASCII digits and `size` at most [`MAX_OBJECT_SIZE`]; `None`
/// for any other path (the server answers it 404).
pub fn object_size(path: &str) -> Option<usize> {
    let (id, size) = path.strip_prefix(OBJECT_PREFIX)?.split_once('/')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(id) || !digits(size) {
        return None;
    }
    size.parse::<usize>()
        .ok()
        .filter(|&size| size <= MAX_OBJECT_SIZE)
}

fn generated_object(path: &str, head: bool) -> Response<ResBody> {
    let Some(size) = object_size(path) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let body = if head || size == 0 {
        ResBody::empty()
    } else {
        ResBody::Generated(GeneratedBody {
            content: ContentStream::new(path),
            remaining: size,
        })
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, size)
        .header(CACHE_CONTROL, "max-age=3600")
        .body(body)
        .expect("valid response")
}

async fn echo(req: Request<Incoming>) -> Response<ResBody> {
    match Limited::new(req.into_body(), MAX_ECHO_BODY).collect().await {
        Ok(collected) => {
            let body = collected.to_bytes();
            Response::builder()
                .status(StatusCode::OK)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, body.len())
                .body(ResBody::bytes(body))
                .expect("valid response")
        }
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            text(StatusCode::PAYLOAD_TOO_LARGE, "body larger than 64 MiB\n")
        }
        Err(e) => text(StatusCode::BAD_REQUEST, &format!("reading body: {e}\n")),
    }
}

async fn serve_file(config: &StaticConfig, path: &str, head: bool) -> Response<ResBody> {
    let Some(relative) = safe_relative_path(path) else {
        return text(StatusCode::FORBIDDEN, "forbidden\n");
    };
    let mut full = config.root.join(relative);
    if tokio::fs::metadata(&full).await.is_ok_and(|m| m.is_dir()) {
        full.push("index.html");
    }
    let canonical = match tokio::fs::canonicalize(&full).await {
        Ok(p) => p,
        Err(_) => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    if !canonical.starts_with(&config.root) {
        return text(StatusCode::FORBIDDEN, "forbidden\n");
    }
    let file = match tokio::fs::File::open(&canonical).await {
        Ok(f) => f,
        Err(_) => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let len = match file.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let content_type = match canonical.extension().and_then(OsStr::to_str) {
        Some("html" | "htm") => "text/html",
        _ => "application/octet-stream",
    };
    let body = if head {
        ResBody::empty()
    } else {
        ResBody::File(FileBody {
            file,
            remaining: len,
        })
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, content_type)
        .header(CONTENT_LENGTH, len)
        .body(body)
        .expect("valid response")
}

/// The root-relative file path for a URL path, or `None` if it would leave the root (`..`) or
/// is malformed (no leading `/`, bad percent escape, NUL).
pub fn safe_relative_path(url_path: &str) -> Option<PathBuf> {
    if !url_path.starts_with('/') {
        return None;
    }
    let mut out = PathBuf::new();
    for segment in url_path.split('/') {
        let decoded = percent_decode(segment)?;
        match decoded.as_slice() {
            b"" | b"." => {}
            b".." => return None,
            bytes if bytes.contains(&0) || bytes.contains(&b'/') => return None,
            bytes => out.push(OsStr::from_bytes(bytes)),
        }
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn text(status: StatusCode, body: &str) -> Response<ResBody> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain")
        .header(CONTENT_LENGTH, body.len())
        .body(ResBody::bytes(Bytes::copy_from_slice(body.as_bytes())))
        .expect("valid response")
}

fn with_allow(mut resp: Response<ResBody>, allow: &'static str) -> Response<ResBody> {
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

/// A response body: bytes in memory, a file streamed in chunks, or a generated object.
pub enum ResBody {
    Bytes(Option<Bytes>),
    File(FileBody),
    Generated(GeneratedBody),
}

impl ResBody {
    fn bytes(b: Bytes) -> Self {
        ResBody::Bytes(if b.is_empty() { None } else { Some(b) })
    }

    fn empty() -> Self {
        ResBody::Bytes(None)
    }
}

/// The rest of a generated object, produced in 128 KiB frames.
pub struct GeneratedBody {
    content: ContentStream,
    remaining: usize,
}

/// The rest of a file, read in 128 KiB frames.
pub struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ResBody::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResBody::Generated(g) => {
                if g.remaining == 0 {
                    return Poll::Ready(None);
                }
                let n = g.remaining.min(CHUNK);
                let mut buf = Vec::with_capacity(n);
                g.content.fill(&mut buf, n);
                g.remaining -= n;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
            }
            ResBody::File(f) => {
                if f.remaining == 0 {
                    return Poll::Ready(None);
                }
                let want = f.remaining.min(CHUNK as u64) as usize;
                let mut buf = vec![0u8; want];
                let mut read_buf = ReadBuf::new(&mut buf);
                match Pin::new(&mut f.file).poll_read(cx, &mut read_buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(Ok(())) => {
                        let n = read_buf.filled().len();
                        if n == 0 {
                            let e = io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "file shrank while being sent",
                            );
                            return Poll::Ready(Some(Err(e)));
                        }
                        f.remaining -= n as u64;
                        buf.truncate(n);
                        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResBody::Bytes(b) => b.is_none(),
            ResBody::File(f) => f.remaining == 0,
            ResBody::Generated(g) => g.remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResBody::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ResBody::File(f) => SizeHint::with_exact(f.remaining),
            ResBody::Generated(g) => SizeHint::with_exact(g.remaining as u64),
        }
    }
}
