//! The load generator against servers written here, on 127.0.0.1 (one test also in a network
//! namespace of its own when run as root). Counts are asserted exactly; times only by generous
//! bounds.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use baton_lab::loadgen::{FailureKind, HOST, Latency, LoadError, LoadReport, LoadSpec, run};

/// A request as the test server saw it.
#[derive(Debug, Clone)]
struct Seen {
    /// Which accepted connection (0-based, in accept order).
    conn: usize,
    /// Its position on that connection (1-based).
    nth: usize,
    target: String,
    host: String,
    /// Whether it said `Connection: close`.
    close: bool,
}

/// What the test server does with a request.
enum Reply {
    /// Writes `wire` (in pieces of `piece` bytes with a pause between, when `piece > 0`), then
    /// closes if `close`. Otherwise it keeps the connection whatever the request said, so a
    /// client that waited for the server to close would hang.
    Send {
        wire: Vec<u8>,
        close: bool,
        piece: usize,
    },
    /// Resets the connection (SO_LINGER 0, close).
    Reset,
    /// Never answers (until the client goes or the server stops).
    Hang,
    /// Writes `wire` one byte at a time with `pause` between (until the client goes).
    Trickle { wire: Vec<u8>, pause: Duration },
    /// Closes without answering.
    Close,
}

fn send(wire: Vec<u8>) -> Reply {
    Reply::Send {
        wire,
        close: false,
        piece: 0,
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

#[derive(Default)]
struct Log {
    connections: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

impl Log {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests per connection, by connection index.
    fn per_connection(&self) -> Vec<usize> {
        let mut counts = vec![0; self.connections()];
        for s in self.seen() {
            counts[s.conn] += 1;
        }
        counts
    }
}

/// A threaded HTTP/1.1 server on 127.0.0.1 whose answers `handler` decides.
struct Server {
    addr: SocketAddr,
    log: Arc<Log>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Log::default());
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Handler = Arc::new(handler);
        let accept = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut conns = Vec::new();
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let conn = log.connections.fetch_add(1, Ordering::SeqCst);
                    let (log, stop, handler) = (log.clone(), stop.clone(), handler.clone());
                    conns.push(std::thread::spawn(move || {
                        serve_connection(stream, conn, &log, &stop, &*handler)
                    }));
                }
                for c in conns {
                    let _ = c.join();
                }
            })
        };
        Server {
            addr,
            log,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept; its connection threads poll `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

const POLL: Duration = Duration::from_millis(50);

fn serve_connection(
    mut stream: TcpStream,
    conn: usize,
    log: &Log,
    stop: &AtomicBool,
    handler: &(dyn Fn(&Seen) -> Reply + Send + Sync),
) {
    stream.set_read_timeout(Some(POLL)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let mut nth = 0;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            let len = match req.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => break,
                Err(_) => return,
            };
            nth += 1;
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let seen = Seen {
                conn,
                nth,
                target: req.path.unwrap_or_default().to_string(),
                host: header("host").unwrap_or_default(),
                close: header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")),
            };
            buf.drain(..len);
            log.seen.lock().unwrap().push(seen.clone());
            match handler(&seen) {
                Reply::Send { wire, close, piece } => {
                    let written = if piece == 0 {
                        stream.write_all(&wire)
                    } else {
                        wire.chunks(piece).try_for_each(|p| {
                            std::thread::sleep(Duration::from_millis(1));
                            stream.write_all(p)
                        })
                    };
                    if written.is_err() || close {
                        return;
                    }
                }
                Reply::Reset => {
                    nix::sys::socket::setsockopt(
                        &stream,
                        nix::sys::socket::sockopt::Linger,
                        &libc::linger {
                            l_onoff: 1,
                            l_linger: 0,
                        },
                    )
                    .unwrap();
                    return;
                }
                Reply::Hang => {
                    while !stop.load(Ordering::SeqCst) {
                        match stream.read(&mut chunk) {
                            Ok(0) => return,
                            Ok(_) => {}
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) => {}
                            Err(_) => return,
                        }
                    }
                    return;
                }
                Reply::Trickle { wire, pause } => {
                    for byte in wire.chunks(1) {
                        if stop.load(Ordering::SeqCst) || stream.write_all(byte).is_err() {
                            return;
                        }
                        std::thread::sleep(pause);
                    }
                }
                Reply::Close => return,
            }
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// `n` bytes of body.
fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A response with `Content-Length`.
fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut wire = format!("HTTP/1.1 {status} Whatever\r\n");
    for (n, v) in headers {
        wire.push_str(&format!("{n}: {v}\r\n"));
    }
    wire.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut wire = wire.into_bytes();
    wire.extend_from_slice(body);
    wire
}

/// A chunked 200 response of `chunks` (a chunk extension on each, and a trailer field).
fn chunked(headers: &[(&str, &str)], chunks: &[usize]) -> Vec<u8> {
    let mut wire = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n".to_string();
    for (n, v) in headers {
        wire.push_str(&format!("{n}: {v}\r\n"));
    }
    wire.push_str("\r\n");
    let mut wire = wire.into_bytes();
    for &size in chunks {
        wire.extend_from_slice(format!("{size:x};ext=1\r\n").as_bytes());
        wire.extend_from_slice(&body(size));
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
    wire
}

/// The size in a target `/<kind>/<id>/<size>`.
fn size_of(target: &str) -> usize {
    target.rsplit('/').next().unwrap().parse().unwrap()
}

/// The id in a target `/<kind>/<id>/<size>`.
fn id_of(target: &str) -> usize {
    target.split('/').nth(2).unwrap().parse().unwrap()
}

fn base_spec(entries: Vec<SocketAddr>, targets: Vec<String>) -> LoadSpec {
    LoadSpec {
        entries,
        connections: 1,
        per_connection: 100,
        targets,
        max_duration: Duration::from_secs(60),
        timeout: Duration::from_secs(10),
        netns: None,
    }
}

/// `/o/<i>/<size>` for i in 0..n, sizes varying from 0 to a few KiB.
fn objects(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("/o/{i}/{}", (i * 37) % 5000))
        .collect()
}

fn total_size(targets: &[String]) -> u64 {
    targets.iter().map(|t| size_of(t) as u64).sum()
}

/// A cache node: 200 with a body of the target's size; HIT for even ids, MISS for odd ones,
/// none for ids divisible by 7.
fn cache_node(name: &'static str) -> Server {
    Server::start(move |seen| {
        let id = id_of(&seen.target);
        let mut headers = vec![("X-Served-By", name)];
        if !id.is_multiple_of(7) {
            headers.push((
                "X-Cache-Status",
                if id.is_multiple_of(2) { "HIT" } else { "MISS" },
            ));
        }
        send(response(200, &headers, &body(size_of(&seen.target))))
    })
}

fn errors(pairs: &[(FailureKind, u64)]) -> BTreeMap<String, u64> {
    pairs
        .iter()
        .map(|(k, n)| (k.name().to_string(), *n))
        .collect()
}

/// What every run must satisfy.
fn check_invariants(report: &LoadReport, spec: &LoadSpec) {
    assert_eq!(
        report.requests + report.error_count() + report.unsent,
        spec.targets.len() as u64,
        "{report:?}"
    );
    assert_eq!(report.latency.len() as u64, report.requests);
    assert_eq!(report.cache.values().sum::<u64>(), report.requests);
    assert_eq!(report.served_by.values().sum::<u64>(), report.requests);
    assert_eq!(
        report.connect_latency.len() as u64,
        report.connections_opened
    );
    assert!(report.elapsed < spec.max_duration + Duration::from_secs(5));
}

#[test]
fn one_connection_is_exact_and_in_order() {
    let server = cache_node("s1");
    let targets = objects(25);
    let spec = LoadSpec {
        per_connection: 4,
        ..base_spec(vec![server.addr], targets.clone())
    };
    let report = run(&spec).unwrap();
    check_invariants(&report, &spec);
    assert_eq!(report.requests, 25);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.connections_opened, 7);
    assert_eq!(report.body_bytes, total_size(&targets));
    assert_eq!(report.unsent, 0);
    assert!(!report.stopped_by_deadline);

    assert_eq!(server.log.per_connection(), vec![4, 4, 4, 4, 4, 4, 1]);
    let seen = server.log.seen();
    // One connection at a time: the server sees the targets in their order.
    let order: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(
        order,
        targets.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for s in &seen {
        // The K-th request says close, the others do not; the last connection's only request
        // is its first.
        assert_eq!(s.close, s.nth == 4, "{s:?}");
        assert_eq!(s.host, HOST);
    }
}

#[test]
fn counts_are_exact_with_many_connections() {
    let server = cache_node("s1");
    let (n, c, k) = (600usize, 8usize, 10usize);
    let targets = objects(n);
    let spec = LoadSpec {
        connections: c,
        per_connection: k,
        ..base_spec(vec![server.addr], targets.clone())
    };
    let report = run(&spec).unwrap();
    check_invariants(&report, &spec);
    assert_eq!(report.requests, n as u64);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.body_bytes, total_size(&targets));

    let ids = || (0..n).filter(|i| i % 7 != 0);
    let hits = ids().filter(|i| i % 2 == 0).count() as u64;
    let misses = ids().filter(|i| i % 2 == 1).count() as u64;
    let none = (n as u64) - hits - misses;
    assert_eq!(report.cache_count("HIT"), hits);
    assert_eq!(report.cache_count("MISS"), misses);
    assert_eq!(report.cache_count("none"), none);
    assert_eq!(report.cache.len(), 3);
    let ratio = report.hit_ratio().unwrap();
    assert!((ratio - hits as f64 / (hits + misses) as f64).abs() < 1e-12);
    assert_eq!(
        report.served_by,
        BTreeMap::from([("s1".to_string(), n as u64)])
    );

    // Each thread's connections are full but its last: between ceil(N/K) and floor(N/K) + C.
    let opened = report.connections_opened as usize;
    assert!((n.div_ceil(k)..=n / k + c).contains(&opened), "{opened}");
    assert_eq!(server.log.connections(), opened);
    let per_conn = server.log.per_connection();
    assert!(
        per_conn.iter().all(|&r| (1..=k).contains(&r)),
        "{per_conn:?}"
    );
    // Every target went exactly once.
    let mut seen: Vec<String> = server.log.seen().into_iter().map(|s| s.target).collect();
    seen.sort();
    let mut expected = targets.clone();
    expected.sort();
    assert_eq!(seen, expected);
    assert!(report.requests_per_sec() > 0.0);
    assert!(report.p50().unwrap() <= report.p99().unwrap());
    assert!(report.p99().unwrap() <= report.latency.max().unwrap());
}

#[test]
fn connection_per_request_and_round_robin_entries() {
    let (s1, s2) = (cache_node("s1"), cache_node("s2"));
    let spec = LoadSpec {
        connections: 3,
        per_connection: 1,
        ..base_spec(vec![s1.addr, s2.addr], objects(30))
    };
    let report = run(&spec).unwrap();
    check_invariants(&report, &spec);
    assert_eq!(report.requests, 30);
    assert_eq!(report.connections_opened, 30);
    // Connections alternate between the entries whichever thread opens them.
    assert_eq!(
        report.served_by,
        BTreeMap::from([("s1".to_string(), 15), ("s2".to_string(), 15)])
    );
    for server in [&s1, &s2] {
        assert_eq!(server.log.connections(), 15);
        assert!(server.log.seen().iter().all(|s| s.close && s.nth == 1));
    }
}

#[test]
fn server_that_closes_early_gets_new_connections() {
    // Like nginx's keepalive_requests: `Connection: close` on every 3rd response, then close.
    let server = Server::start(|seen| Reply::Send {
        wire: response(
            200,
            &[(
                "Connection",
                if seen.nth == 3 { "close" } else { "keep-alive" },
            )],
            &body(size_of(&seen.target)),
        ),
        close: seen.nth == 3,
        piece: 0,
    });
    let targets = objects(20);
    let spec = LoadSpec {
        per_connection: 10,
        ..base_spec(vec![server.addr], targets.clone())
    };
    let report = run(&spec).unwrap();
    check_invariants(&report, &spec);
    assert_eq!(report.requests, 20);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.connections_opened, 7);
    assert_eq!(server.log.per_connection(), vec![3, 3, 3, 3, 3, 3, 2]);
    assert_eq!(report.body_bytes, total_size(&targets));
}

#[test]
fn http10_without_keep_alive_is_not_reused() {
    let server =
        Server::start(|_| send(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec()));
    let spec = LoadSpec {
        per_connection: 10,
        ..base_spec(vec![server.addr], objects(6))
    };
    let report = run(&spec).unwrap();
    check_invariants(&report, &spec);
    assert_eq!(report.requests, 6);
    assert_eq!(report.connections_opened, 6);
    assert_eq!(report.body_bytes, 30);
}

#[test]
fn resets_and_statuses_are_errors_by_kind() {
    // Target kinds: /ok, /503, /404, /reset, /301, each /<kind>/<id>/<size>.
    let server = Server::start(|seen| {
        let size = size_of(&seen.target);
        match seen.target.split('/').nth(1).unwrap() {
            "ok" => send(response(200, &[("X-Cache-Status", "HIT")], &body(size))),
            "503" => send(response(503, &[("X-Cache-Status", "MISS")], &body(size))),
            "404" => send(response(404, &[], &body(size))),
            "301" => send(response(301, &[("Location", "/elsewhere")], &[])),
            "reset" => Reply::Reset,
            other => panic!("{other}"),
        }
    });
    let kinds = [
        "ok", "503", "ok", "404", "reset", "ok", "301", "ok", "503", "reset",
    ];
    let targets: Vec<String> = (0..100)
        .map(|i| format!("/{}/{i}/{}", kinds[i % kinds.len()], 100 + i))
        .collect();
    let ok_bytes: u64 = targets
        .iter()
        .filter(|t| t.starts_with("/ok/"))
        .map(|t| size_of(t) as u64)
        .sum();
    let spec = LoadSpec {
        connections: 3,
        per_connection: 5,
        ..base_spec(vec![server.addr], targets)
    };
    let report = run(&spec).unwrap();
    check_invariants(&report, &spec);
    assert_eq!(report.requests, 40);
    assert_eq!(
        report.errors,
        errors(&[
            (FailureKind::Status5xx, 20),
            (FailureKind::Status4xx, 10),
            (FailureKind::Status3xx, 10),
            (FailureKind::Reset, 20),
        ])
    );
    assert_eq!(report.error_count(), 60);
    assert_eq!(report.errors_of(FailureKind::Reset), 20);
    // Only the 2xx responses are counted: their bytes and cache statuses, not the 503s'.
    assert_eq!(report.body_bytes, ok_bytes);
    assert_eq!(report.cache, BTreeMap::from([("HIT".to_string(), 40)]));
    assert_eq!(report.hit_ratio(), Some(1.0));
    assert_eq!(server.log.seen().len(), 100);
}

/// A socket bound to a port of 127.0.0.1 that does not listen, and its address.
fn bound_not_listening() -> (std::os::fd::OwnedFd, SocketAddr) {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, getsockname, socket,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
    let port = getsockname::<SockaddrIn>(fd.as_raw_fd()).unwrap().port();
    (fd, SocketAddr::from(([127, 0, 0, 1], port)))
}

#[test]
fn refused_connects_are_counted() {
    // Bound but not listening: connects are refused, and no other test can take the port.
    let (_reserved, refused) = bound_not_listening();
    let spec = base_spec(vec![refused], objects(5));
    let report = run(&spec).unwrap();
    check_invariants(&report, &spec);
    assert_eq!(report.requests, 0);
    assert_eq!(report.connections_opened, 0);
    assert_eq!(report.errors, errors(&[(FailureKind::Connect, 5)]));
    assert_eq!(report.hit_ratio(), None);
    assert_eq!(report.p50(), None);

    // One live entry and one refusing: connections alternate, so half the targets fail.
    let server = cache_node("s1");
    let spec = LoadSpec {
        per_connection: 1,
        ..base_spec(vec![server.addr, refused], objects(10))
    };
    let report = run(&spec).unwrap();
    check_invariants(&report, &spec);
    assert_eq!(report.requests, 5);
    assert_eq!(report.errors, errors(&[(FailureKind::Connect, 5)]));
}

#[test]
fn a_server_that_never_answers_is_bounded_by_the_timeout() {
    let server = Server::start(|_| Reply::Hang);
    let timeout = Duration::from_millis(300);
    let spec = LoadSpec {
        timeout,
        ..base_spec(vec![server.addr], objects(3))
    };
    let started = Instant::now();
    let report = run(&spec).unwrap();
    check_invariants(&report, &spec);
    assert_eq!(report.errors, errors(&[(FailureKind::Timeout, 3)]));
    assert_eq!(report.requests, 0);
    // A timed-out request's connection is dropped: each of the three had its own.
    assert_eq!(report.connections_opened, 3);
    assert!(!report.stopped_by_deadline);
    // Timeouts never fire early; the upper bound is only generous.
    assert!(report.elapsed >= timeout * 3, "{:?}", report.elapsed);
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_trickling_response_is_bounded_by_the_request_timeout() {
    // Every read gets a byte well within the timeout; the whole response would take 10 s.
    let server = Server::start(|_| Reply::Trickle {
        wire: response(200, &[], &body(200)),
        pause: Duration::from_millis(40),
    });
    let timeout = Duration::from_millis(400);
    let spec = LoadSpec {
        timeout,
        ..base_spec(vec![server.addr], objects(2))
    };
    let report = run(&spec).unwrap();
    check_invariants(&report, &spec);
    assert_eq!(report.errors, errors(&[(FailureKind::Timeout, 2)]));
    assert!(report.elapsed >= timeout * 2, "{:?}", report.elapsed);
    assert!(
        report.elapsed < Duration::from_secs(8),
        "{:?}",
        report.elapsed
    );
}

#[test]
fn the_rate_is_what_the_loop_sustained_not_when_its_last_straggler_ended() {
    // The last target's response takes about a second to arrive (a connection stalled as a
    // dropped SYN stalls one); every other comes at once.
    let n = 400;
    let straggler = n - 1;
    let server = Server::start(move |seen| {
        let wire = response(200, &[], &body(size_of(&seen.target)));
        if id_of(&seen.target) == straggler {
            let pause = Duration::from_secs(1) / wire.len() as u32;
            Reply::Trickle { wire, pause }
        } else {
            send(wire)
        }
    });
    let spec = LoadSpec {
        connections: 4,
        per_connection: 1,
        ..base_spec(vec![server.addr], objects(n))
    };
    let report = run(&spec).unwrap();
    check_invariants(&report, &spec);
    assert_eq!(report.requests, n as u64, "{:?}", report.errors);
    let (ran_out, before) = report.ran_out.expect("the targets ran out");
    assert!(report.elapsed >= Duration::from_secs(1), "{report:?}");
    assert!(
        ran_out < report.elapsed / 2,
        "{ran_out:?} of {:?}",
        report.elapsed
    );
    // Claimed before the straggler, so answered before the targets ran out, but for the
    // three other threads' last ones.
    assert!((n as u64 - 4..n as u64).contains(&before), "{before}");
    let over_all = report.requests as f64 / report.elapsed.as_secs_f64();
    assert!(
        report.requests_per_sec() > 2.0 * over_all,
        "{} against {over_all} over the whole run",
        report.requests_per_sec()
    );
    assert_eq!(
        report.requests_per_sec(),
        before as f64 / ran_out.as_secs_f64()
    );
}

#[test]
fn a_server_that_never_answers_is_bounded_by_max_duration() {
    let server = Server::start(|_| Reply::Hang);
    let max_duration = Duration::from_secs(1);
    let spec = LoadSpec {
        connections: 4,
        max_duration,
        timeout: Duration::from_secs(120),
        ..base_spec(vec![server.addr], objects(100))
    };
    let started = Instant::now();
    let report = run(&spec).unwrap();
    check_invariants(&report, &spec);
    // Each thread claims one target and waits on it until the end (a thread that started only
    // after the deadline, on a very loaded machine, claims none).
    let aborted = report.errors_of(FailureKind::Aborted);
    assert!((1..=4).contains(&aborted), "{:?}", report.errors);
    assert_eq!(report.error_count(), aborted);
    assert_eq!(report.unsent, 100 - aborted);
    assert_eq!(report.ran_out, None, "the targets never ran out");
    assert!(report.stopped_by_deadline);
    assert!(report.elapsed >= max_duration, "{:?}", report.elapsed);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn chunked_length_and_close_delimited_bodies_are_counted() {
    // /c/<id>/<size>: chunked in chunks of at most 1000 bytes; /l/...: Content-Length;
    // /e/...: delimited by close. Written in small pieces every other request, so that heads,
    // chunk-size lines and bodies arrive split.
    let server = Server::start(|seen| {
        let size = size_of(&seen.target);
        let piece = if id_of(&seen.target).is_multiple_of(2) {
            0
        } else {
            97
        };
        let (wire, close) = match seen.target.split('/').nth(1).unwrap() {
            "c" => {
                let mut chunks = vec![1000; size / 1000];
                if !size.is_multiple_of(1000) {
                    chunks.push(size % 1000);
                }
                (chunked(&[("X-Cache-Status", "HIT")], &chunks), false)
            }
            "l" => (
                response(200, &[("X-Cache-Status", "MISS")], &body(size)),
                false,
            ),
            "e" => {
                let mut wire = b"HTTP/1.1 200 OK\r\nX-Cache-Status: EXPIRED\r\n\r\n".to_vec();
                wire.extend_from_slice(&body(size));
                (wire, true)
            }
            other => panic!("{other}"),
        };
        Reply::Send { wire, close, piece }
    });
    let mut targets = Vec::new();
    for i in 0..30 {
        let size = [0, 1, 999, 1000, 4321, 20_000][i % 6];
        let kind = ["c", "l", "c", "e", "l"][i % 5];
        targets.push(format!("/{kind}/{i}/{size}"));
    }
    let spec = LoadSpec {
        connections: 2,
        per_connection: 5,
        ..base_spec(vec![server.addr], targets.clone())
    };
    let report = run(&spec).unwrap();
    check_invariants(&report, &spec);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.requests, 30);
    assert_eq!(report.body_bytes, total_size(&targets));
    assert_eq!(report.cache_count("HIT"), 12);
    assert_eq!(report.cache_count("MISS"), 12);
    assert_eq!(report.cache_count("EXPIRED"), 6);
    assert_eq!(report.hit_ratio(), Some(0.4));
}

#[test]
fn large_bodies_of_both_framings() {
    const MIB: usize = 1024 * 1024;
    let server = Server::start(|seen| match seen.target.as_str() {
        "/chunked" => send(chunked(&[], &[100_000; 10])),
        "/length" => send(response(200, &[], &body(3 * MIB + 1))),
        other => panic!("{other}"),
    });
    let targets: Vec<String> = ["/chunked", "/length"]
        .iter()
        .cycle()
        .take(6)
        .map(|t| t.to_string())
        .collect();
    let spec = base_spec(vec![server.addr], targets);
    let report = run(&spec).unwrap();
    check_invariants(&report, &spec);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.body_bytes, 3 * 1_000_000 + 3 * (3 * MIB as u64 + 1));
    assert_eq!(report.connections_opened, 1);
}

#[test]
fn malformed_and_cut_responses_are_errors() {
    let server = Server::start(|seen| match seen.target.as_str() {
        "/ok" => send(response(200, &[], b"fine")),
        "/garbage" => send(b"HELLO THERE\r\n\r\n".to_vec()),
        "/badlen" => send(b"HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n".to_vec()),
        "/twolens" => {
            send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec())
        }
        "/badchunk" => {
            send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec())
        }
        "/nocrlf" => send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n".to_vec(),
        ),
        "/status" => send(b"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n".to_vec()),
        "/hugehead" => {
            let mut wire = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
            wire.extend(std::iter::repeat_n(b'x', 70 * 1024));
            wire.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
            send(wire)
        }
        "/cut" => Reply::Send {
            wire: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b".to_vec(),
            close: true,
            piece: 0,
        },
        "/silent" => Reply::Close,
        other => panic!("{other}"),
    });
    let bad = [
        ("/garbage", FailureKind::Malformed),
        ("/badlen", FailureKind::Malformed),
        ("/twolens", FailureKind::Malformed),
        ("/badchunk", FailureKind::Malformed),
        ("/nocrlf", FailureKind::Malformed),
        ("/status", FailureKind::Malformed),
        ("/hugehead", FailureKind::Malformed),
        ("/cut", FailureKind::Closed),
        ("/silent", FailureKind::Closed),
    ];
    let mut targets = Vec::new();
    for (t, _) in &bad {
        targets.push("/ok".to_string());
        targets.push(t.to_string());
    }
    let spec = LoadSpec {
        per_connection: 4,
        ..base_spec(vec![server.addr], targets)
    };
    let report = run(&spec).unwrap();
    check_invariants(&report, &spec);
    assert_eq!(report.requests, bad.len() as u64);
    assert_eq!(report.body_bytes, 4 * bad.len() as u64);
    assert_eq!(
        report.errors,
        errors(&[(FailureKind::Malformed, 7), (FailureKind::Closed, 2)])
    );
    // A failed request's connection is never reused: each /ok after one opened a new one.
    assert_eq!(report.connections_opened, bad.len() as u64);
}

#[test]
fn interim_and_bodiless_responses() {
    let server = Server::start(|seen| match seen.target.as_str() {
        "/continue" => {
            let mut wire =
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                    .to_vec();
            wire.extend(response(200, &[("X-Cache-Status", "HIT")], b"12345"));
            send(wire)
        }
        // No body, though a length is given: 204 and 304 never have one.
        "/204" => send(b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n".to_vec()),
        "/304" => send(b"HTTP/1.1 304 Not Modified\r\n\r\n".to_vec()),
        other => panic!("{other}"),
    });
    let targets: Vec<String> = ["/continue", "/204", "/304"]
        .iter()
        .cycle()
        .take(9)
        .map(|t| t.to_string())
        .collect();
    let spec = base_spec(vec![server.addr], targets);
    let report = run(&spec).unwrap();
    check_invariants(&report, &spec);
    assert_eq!(report.requests, 6);
    assert_eq!(report.errors, errors(&[(FailureKind::Status3xx, 3)]));
    assert_eq!(report.body_bytes, 15);
    assert_eq!(report.cache_count("HIT"), 3);
    assert_eq!(report.cache_count("none"), 3);
    // Interim responses and bodiless ones leave the connection in step: it is kept throughout.
    assert_eq!(report.connections_opened, 1);
}

#[test]
fn invalid_specs_are_refused() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let base = base_spec(vec![addr], objects(3));
    let invalid = [
        LoadSpec {
            entries: vec![],
            ..base.clone()
        },
        LoadSpec {
            connections: 0,
            ..base.clone()
        },
        LoadSpec {
            connections: 100_000,
            ..base.clone()
        },
        LoadSpec {
            per_connection: 0,
            ..base.clone()
        },
        LoadSpec {
            timeout: Duration::ZERO,
            ..base.clone()
        },
        LoadSpec {
            max_duration: Duration::ZERO,
            ..base.clone()
        },
        LoadSpec {
            targets: vec!["/a".into(), "/b HTTP/1.1\r\nX: y".into()],
            ..base.clone()
        },
        LoadSpec {
            targets: vec![String::new()],
            ..base.clone()
        },
    ];
    for spec in invalid {
        assert!(
            matches!(run(&spec), Err(LoadError::InvalidSpec(_))),
            "{spec:?}"
        );
    }
    // Nothing to do is a valid, empty run.
    let report = run(&LoadSpec {
        targets: vec![],
        ..base
    })
    .unwrap();
    assert_eq!(report.requests + report.error_count() + report.unsent, 0);
    assert_eq!(report.connections_opened, 0);
}

#[test]
fn a_missing_network_namespace_is_an_error() {
    let spec = LoadSpec {
        netns: Some("baton-loadgen-test-absent".into()),
        ..base_spec(vec!["127.0.0.1:9".parse().unwrap()], objects(1))
    };
    assert!(matches!(run(&spec), Err(LoadError::Netns { .. })));
}

/// A network namespace of this test's own, removed on drop.
struct TestNetns(String);

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

#[test]
fn client_threads_run_in_the_namespace() {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: creating a network namespace needs root");
        return;
    }
    let ip = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    let ns = TestNetns(format!("lgtest-{}", std::process::id()));
    assert!(ip(&["netns", "add", &ns.0]));
    assert!(ip(&["-n", &ns.0, "link", "set", "lo", "up"]));
    // The listener is made inside the namespace; its accept thread can run anywhere.
    let listener =
        baton_lab::in_netns(&ns.0, || TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = std::thread::spawn(move || {
        for _ in 0..5 {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(&response(200, &[("X-Served-By", "inside")], b"ns"))
                .unwrap();
        }
    });
    let spec = LoadSpec {
        connections: 2,
        per_connection: 1,
        netns: Some(ns.0.clone()),
        timeout: Duration::from_secs(5),
        ..base_spec(vec![addr], objects(5))
    };
    let report = run(&spec).unwrap();
    check_invariants(&report, &spec);
    assert_eq!(report.requests, 5, "{:?}", report.errors);
    assert_eq!(
        report.served_by,
        BTreeMap::from([("inside".to_string(), 5)])
    );
    accept.join().unwrap();
}

#[test]
fn latency_quantiles_by_nearest_rank() {
    let l = Latency::from_micros((1..=100).rev().collect());
    let us = Duration::from_micros;
    assert_eq!(l.len(), 100);
    assert_eq!(l.p50(), Some(us(50)));
    assert_eq!(l.p90(), Some(us(90)));
    assert_eq!(l.p99(), Some(us(99)));
    assert_eq!(l.max(), Some(us(100)));
    assert_eq!(l.min(), Some(us(1)));
    assert_eq!(l.quantile(0.0), Some(us(1)));
    assert_eq!(l.quantile(1.0), Some(us(100)));
    assert_eq!(l.mean(), Some(us(50)));
    assert_eq!(l.samples_us()[0], 1);
    let one = Latency::from_micros(vec![7]);
    assert_eq!(one.p50(), Some(us(7)));
    assert_eq!(one.p99(), Some(us(7)));
    let empty = Latency::default();
    assert!(empty.is_empty());
    assert_eq!(empty.p50(), None);
    assert_eq!(empty.max(), None);
    assert_eq!(empty.mean(), None);
}

#[test]
fn report_helpers() {
    let report = LoadReport {
        requests: 50,
        elapsed: Duration::from_secs(2),
        cache: BTreeMap::from([
            ("HIT".to_string(), 30),
            ("MISS".to_string(), 10),
            ("none".to_string(), 10),
        ]),
        errors: BTreeMap::from([("reset".to_string(), 2), ("timeout".to_string(), 1)]),
        ..LoadReport::default()
    };
    assert_eq!(report.requests_per_sec(), 25.0);
    assert_eq!(report.hit_ratio(), Some(0.75));
    assert_eq!(report.error_count(), 3);
    assert_eq!(report.errors_of(FailureKind::Reset), 2);
    assert_eq!(report.errors_of(FailureKind::Connect), 0);
    assert_eq!(LoadReport::default().requests_per_sec(), 0.0);
    assert_eq!(LoadReport::default().hit_ratio(), None);
}
