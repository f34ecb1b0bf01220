//! A small blocking HTTP/1.1 client over `std::net::TcpStream`, for tests and the lab's probes.
//!
//! [`HttpClient`] sends requests one at a time over one keep-alive connection (it reconnects only
//! when the server closed it, and counts connections so a test can check reuse). Response heads are
//! parsed with `httparse`; bodies by `Content-Length`, chunked encoding, or until close.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Default connect, read and write timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {addr}: {source}")]
    Io {
        op: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed response from {addr}: {detail}")]
    Malformed { addr: SocketAddr, detail: String },
    #[error("{addr} closed the connection before a complete response")]
    Closed { addr: SocketAddr },
}

/// One response: status, headers in order, and the whole body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub reason: String,
    /// Minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `X-Served-By` header: which lab node produced the response.
    pub fn served_by(&self) -> Option<&str> {
        self.header("x-served-by")
    }
}

/// A keep-alive HTTP/1.1 connection to one server.
pub struct HttpClient {
    addr: SocketAddr,
    host: String,
    timeout: Duration,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    connects: usize,
    requests: usize,
}

impl HttpClient {
    /// Connects to `addr` with [`DEFAULT_TIMEOUT`].
    pub fn connect(addr: SocketAddr) -> Result<Self, HttpError> {
        Self::connect_timeout(addr, DEFAULT_TIMEOUT)
    }

    /// Connects to `addr`; `timeout` bounds the connect and every later read and write.
    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> Result<Self, HttpError> {
        let mut client = HttpClient {
            addr,
            host: addr.to_string(),
            timeout,
            stream: None,
            buf: Vec::new(),
            connects: 0,
            requests: 0,
        };
        client.ensure_connected()?;
        Ok(client)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many TCP connections this client has opened (1 while keep-alive held).
    pub fn connects(&self) -> usize {
        self.connects
    }

    /// How many requests this client has sent.
    pub fn requests(&self) -> usize {
        self.requests
    }

    /// Whether the current connection is still usable for another request.
    pub fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    /// The local address of the current connection.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.stream.as_ref().and_then(|s| s.local_addr().ok())
    }

    pub fn get(&mut self, path: &str) -> Result<HttpResponse, HttpError> {
        self.request("GET", path, &[], &[])
    }

    pub fn head(&mut self, path: &str) -> Result<HttpResponse, HttpError> {
        self.request("HEAD", path, &[], &[])
    }

    pub fn post(&mut self, path: &str, body: &[u8]) -> Result<HttpResponse, HttpError> {
        self.request("POST", path, &[], body)
    }

    pub fn put(&mut self, path: &str, body: &[u8]) -> Result<HttpResponse, HttpError> {
        self.request("PUT", path, &[], body)
    }

    /// Sends one request and reads its whole response. `path` is sent as is (no normalisation), so
    /// tests can send odd targets. A `Content-Length` is added when there is a body or the method
    /// usually has one; `Host` is always added.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpResponse, HttpError> {
        self.ensure_connected()?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut wire = req.into_bytes();
        wire.extend_from_slice(body);
        let addr = self.addr;
        let result = (|| {
            let stream = self.stream.as_mut().expect("connected above");
            stream.write_all(&wire).map_err(|source| HttpError::Io {
                op: "sending request to",
                addr,
                source,
            })?;
            self.requests += 1;
            self.read_response(method == "HEAD")
        })();
        if result.is_err() {
            self.close();
        }
        result
    }

    /// Closes the current connection (the next request reconnects).
    pub fn close(&mut self) {
        self.stream = None;
        self.buf.clear();
    }

    fn ensure_connected(&mut self) -> Result<(), HttpError> {
        if self.stream.is_some() {
            return Ok(());
        }
        let addr = self.addr;
        let stream = TcpStream::connect_timeout(&addr, self.timeout)
            .map_err(|source| HttpError::Connect { addr, source })?;
        let io = |source| HttpError::Io {
            op: "configuring socket to",
            addr,
            source,
        };
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        self.stream = Some(stream);
        self.buf.clear();
        self.connects += 1;
        Ok(())
    }

    /// Reads more bytes into `buf`; returns how many (0 at end of stream).
    fn fill(&mut self) -> Result<usize, HttpError> {
        let addr = self.addr;
        let stream = self.stream.as_mut().ok_or(HttpError::Closed { addr })?;
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(HttpError::Io {
                        op: "reading response from",
                        addr,
                        source,
                    });
                }
            }
        }
    }

    fn malformed(&self, detail: impl Into<String>) -> HttpError {
        HttpError::Malformed {
            addr: self.addr,
            detail: detail.into(),
        }
    }

    fn read_response(&mut self, head_request: bool) -> Result<HttpResponse, HttpError> {
        loop {
            let (head_len, mut resp) = self.read_head()?;
            self.buf.drain(..head_len);
            // 1xx interim responses (100 Continue) precede the real one.
            if (100..200).contains(&resp.status) && resp.status != 101 {
                continue;
            }
            let header = |name: &str| resp.header(name).map(str::to_ascii_lowercase);
            let chunked = header("transfer-encoding").is_some_and(|te| te.contains("chunked"));
            let content_length = match resp.header("content-length") {
                Some(v) => Some(
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| self.malformed(format!("bad Content-Length {v:?}")))?,
                ),
                None => None,
            };
            let connection = header("connection").unwrap_or_default();
            let mut keep_alive = if resp.version == 1 {
                !connection.contains("close")
            } else {
                connection.contains("keep-alive")
            };
            let no_body = head_request || resp.status == 204 || resp.status == 304;
            resp.body = if no_body {
                Vec::new()
            } else if chunked {
                self.read_chunked()?
            } else if let Some(len) = content_length {
                while self.buf.len() < len {
                    if self.fill()? == 0 {
                        return Err(HttpError::Closed { addr: self.addr });
                    }
                }
                self.buf.drain(..len).collect()
            } else {
                keep_alive = false;
                while self.fill()? > 0 {}
                std::mem::take(&mut self.buf)
            };
            if !keep_alive {
                self.close();
            }
            return Ok(resp);
        }
    }

    /// Reads until a complete response head is buffered; returns its length and the parsed head.
    fn read_head(&mut self) -> Result<(usize, HttpResponse), HttpError> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let resp = HttpResponse {
                        status: parsed.code.unwrap_or(0),
                        reason: parsed.reason.unwrap_or("").to_string(),
                        version: parsed.version.unwrap_or(1),
                        headers: parsed
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_string(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect(),
                        body: Vec::new(),
                    };
                    return Ok((len, resp));
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > MAX_HEAD {
                        return Err(self.malformed("response head larger than 64 KiB"));
                    }
                }
                Err(e) => return Err(self.malformed(format!("response head: {e}"))),
            }
            if self.fill()? == 0 {
                return Err(HttpError::Closed { addr: self.addr });
            }
        }
    }

    fn read_chunked(&mut self) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        loop {
            let (size_len, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((len, size))) => break (len, size as usize),
                    Ok(httparse::Status::Partial) => {
                        if self.fill()? == 0 {
                            return Err(HttpError::Closed { addr: self.addr });
                        }
                    }
                    Err(_) => return Err(self.malformed("bad chunk size line")),
                }
            };
            self.buf.drain(..size_len);
            if size == 0 {
                // Trailers, then an empty line.
                loop {
                    if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        let line_empty = end == 0;
                        self.buf.drain(..end + 2);
                        if line_empty {
                            return Ok(body);
                        }
                    } else if self.fill()? == 0 {
                        return Err(HttpError::Closed { addr: self.addr });
                    }
                }
            }
            while self.buf.len() < size + 2 {
                if self.fill()? == 0 {
                    return Err(HttpError::Closed { addr: self.addr });
                }
            }
            body.extend_from_slice(&self.buf[..size]);
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(self.malformed("chunk not followed by CRLF"));
            }
            self.buf.drain(..size + 2);
        }
    }
}

/// One GET over a fresh connection (closed afterwards), with [`DEFAULT_TIMEOUT`].
pub fn http_get(addr: SocketAddr, path: &str) -> Result<HttpResponse, HttpError> {
    http_get_timeout(addr, path, DEFAULT_TIMEOUT)
}

/// One GET over a fresh connection (closed afterwards).
pub fn http_get_timeout(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let mut client = HttpClient::connect_timeout(addr, timeout)?;
    client.request("GET", path, &[("Connection", "close")], &[])
}
