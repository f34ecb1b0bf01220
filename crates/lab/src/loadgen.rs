//! A closed-loop HTTP/1.1 load generator, for benches on the lab (`baton bench cache`).
//!
//! # Contract
//!
//! - **Closed loop.** [`LoadSpec::connections`] client threads each hold at most one connection
//!   and at most one request in flight: a thread sends its next request only after the previous
//!   one has completed or failed. The offered load is therefore whatever the servers sustain at
//!   that concurrency; nothing queues inside the generator.
//! - **Targets in order, first come first served.** [`LoadSpec::targets`] is consumed in order
//!   through one shared atomic index: the order in which targets are *claimed* is fixed, which
//!   thread (connection) claims which depends only on timing. Every claimed target is attempted
//!   exactly once, never retried. The run ends when the sequence is consumed or
//!   [`LoadSpec::max_duration`] has passed, whichever is first.
//! - **Connections.** A connection is opened when a thread has claimed a target and holds none,
//!   to the next of [`LoadSpec::entries`] in round-robin order across all threads (as clients of
//!   round-robin DNS would). It carries up to [`LoadSpec::per_connection`] requests (keep-alive);
//!   the last of them says `Connection: close` and the client closes it afterwards whatever the
//!   server does. It is also closed, and the next target gets a new one, when the server says so
//!   (`Connection: close`, HTTP/1.0 without keep-alive, a body delimited by close) or when a
//!   request on it fails.
//! - **Latency sample** ([`LoadReport::latency`]): for a request answered 2xx, the time from just
//!   before the request is written (on an established connection: connecting is not included; see
//!   [`LoadReport::connect_latency`]) to when the last byte of the response body has been read, in
//!   microseconds. Failed and non-2xx requests leave no latency sample, so fast errors cannot make
//!   a slow tier look quick.
//! - **What counts as an error** ([`LoadReport::errors`], by [`FailureKind::name`]): a connect that
//!   fails or times out, a reset, the server closing before the whole response, no whole response
//!   within [`LoadSpec::timeout`], a response that does not parse as HTTP/1.x, a non-2xx status
//!   (by class), a request still in flight when `max_duration` ends the run, and other socket
//!   errors. Each claimed target is either one of [`LoadReport::requests`] or one error, so
//!   `requests + error_count() + unsent == targets.len()`. Nothing here panics on what a server
//!   sends.
//! - **Rate** ([`LoadReport::requests_per_sec`]): the 2xx responses completed before the targets
//!   ran out (a thread found none left to claim), per second until then. What comes after is the
//!   loop draining, fewer connections busy than the loop has, and one request stalled there (a
//!   SYN retransmitted after a second) would stretch the whole run's time by it: the rate of the
//!   loop is what it sustained, not when its last straggler ended ([`LoadReport::elapsed`]). A
//!   run that `max_duration` ended is rated over all of it.
//! - **Counted per 2xx response:** `X-Cache-Status` values ([`LoadReport::cache`], `"none"` when
//!   absent), `X-Served-By` values ([`LoadReport::served_by`], `"none"` when absent) and decoded
//!   body bytes ([`LoadReport::body_bytes`]: chunk framing and trailers not included). Each map
//!   therefore sums to `requests`.
//! - **Bounded.** Every blocking socket operation has a timeout no later than both the request's
//!   deadline (`timeout` after it was claimed) and the run's (`max_duration` after start), so
//!   [`run`] returns shortly after `max_duration` whatever the servers do.
//!
//! The request is `GET <target> HTTP/1.1` with `Host: `[`HOST`] on every connection: clients of
//! round-robin DNS send the one name they resolved, whichever address they connected to, so a
//! cache key that includes the host does not differ by entry.
//!
//! Responses are read here rather than with [`crate::http_client::HttpClient`]: a load generator
//! must not keep bodies (only count them), needs a deadline per request rather than per read, and
//! must classify failures; the framing rules are the same (heads and chunk sizes by `httparse`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::LabError;
use crate::netns::in_netns;

/// The `Host` header of every request.
pub const HOST: &str = "baton-lab";

/// Most client threads (connections) one run may use: one thread each.
pub const MAX_CONNECTIONS: usize = 4096;

/// Largest response head, and the read buffer of each connection.
const BUF_SIZE: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
/// Interim (1xx) responses tolerated before the final one.
const MAX_INTERIM: usize = 8;
/// Client threads only run this module's code, whose buffers are on the heap.
const THREAD_STACK: usize = 256 * 1024;
/// Socket timeouts are never set below this: a zero timeout would mean "block forever".
const MIN_SOCKET_TIMEOUT: Duration = Duration::from_millis(1);

/// What to run: see the [module documentation](self) for the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSpec {
    /// Where connections go, round-robin per connection (RR-DNS style).
    pub entries: Vec<SocketAddr>,
    /// Concurrent connections (client threads), closed loop.
    pub connections: usize,
    /// Requests per connection, K; then it closes and a new one is opened (1: one per request).
    pub per_connection: usize,
    /// The request targets (`/o/17/4096`), consumed in order across all connections.
    pub targets: Vec<String>,
    /// Hard bound on the whole run.
    pub max_duration: Duration,
    /// Per request: connect (when needed), send and the whole response.
    pub timeout: Duration,
    /// Run the client threads inside this network namespace.
    pub netns: Option<String>,
}

impl LoadSpec {
    /// A spec with one connection, keep-alive for up to 100 requests, a 10 s request timeout and
    /// a 10 min bound, in the current network namespace.
    pub fn new(entries: Vec<SocketAddr>, targets: Vec<String>) -> Self {
        LoadSpec {
            entries,
            connections: 1,
            per_connection: 100,
            targets,
            max_duration: Duration::from_secs(600),
            timeout: Duration::from_secs(10),
            netns: None,
        }
    }

    /// Checks what [`run`] would refuse.
    pub fn validate(&self) -> Result<(), LoadError> {
        let invalid = |msg: String| Err(LoadError::InvalidSpec(msg));
        if self.entries.is_empty() {
            return invalid("no entries to connect to".into());
        }
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            return invalid(format!(
                "connections must be 1 to {MAX_CONNECTIONS}, not {}",
                self.connections
            ));
        }
        if self.per_connection == 0 {
            return invalid("per_connection must be at least 1".into());
        }
        if self.timeout.is_zero() || self.max_duration.is_zero() {
            return invalid("timeout and max_duration must be positive".into());
        }
        // A target is written into the request line as is: whitespace or control characters
        // would make another request (or none) of it.
        if let Some((i, t)) = self.targets.iter().enumerate().find(|(_, t)| {
            t.is_empty()
                || t.bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        }) {
            return invalid(format!(
                "target {i} ({t:?}) is empty or has whitespace or control characters"
            ));
        }
        Ok(())
    }
}

/// Why a run could not be made (what servers do is never one of these: it is in the report).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid load spec: {0}")]
    InvalidSpec(String),
    #[error("running the load generator in network namespace {ns}: {source}")]
    Netns {
        ns: String,
        #[source]
        source: Box<LabError>,
    },
    #[error("starting load generator thread {index}: {source}")]
    Spawn {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("load generator thread {index} panicked: {message}")]
    WorkerPanicked { index: usize, message: String },
}

/// The kinds of failed request, the keys of [`LoadReport::errors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// The connect failed (refused, unreachable, ...).
    Connect,
    /// The connect did not complete within the request timeout.
    ConnectTimeout,
    /// The connection was reset (or the peer had gone: broken pipe) while sending or reading.
    Reset,
    /// The server closed the connection before the whole response had arrived.
    Closed,
    /// No whole response within the request timeout.
    Timeout,
    /// Still in flight when `max_duration` ended the run.
    Aborted,
    /// The response is not HTTP/1.x as RFC 9112 frames it (head, length, chunks, status code).
    Malformed,
    /// Another socket error.
    Io,
    Status1xx,
    Status3xx,
    Status4xx,
    Status5xx,
}

impl FailureKind {
    /// The name in [`LoadReport::errors`].
    pub const fn name(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::ConnectTimeout => "connect_timeout",
            FailureKind::Reset => "reset",
            FailureKind::Closed => "closed",
            FailureKind::Timeout => "timeout",
            FailureKind::Aborted => "aborted",
            FailureKind::Malformed => "malformed",
            FailureKind::Io => "io",
            FailureKind::Status1xx => "status_1xx",
            FailureKind::Status3xx => "status_3xx",
            FailureKind::Status4xx => "status_4xx",
            FailureKind::Status5xx => "status_5xx",
        }
    }

    /// The kind of a final response with `status` that is not 2xx; `None` for 2xx.
    fn of_status(status: u16) -> Option<FailureKind> {
        match status {
            200..=299 => None,
            100..=199 => Some(FailureKind::Status1xx),
            300..=399 => Some(FailureKind::Status3xx),
            400..=499 => Some(FailureKind::Status4xx),
            500..=599 => Some(FailureKind::Status5xx),
            _ => Some(FailureKind::Malformed),
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Latency samples in microseconds, sorted; exact quantiles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latency {
    sorted_us: Vec<u64>,
}

impl Latency {
    /// From samples in microseconds, in any order.
    pub fn from_micros(mut samples: Vec<u64>) -> Self {
        samples.sort_unstable();
        Latency { sorted_us: samples }
    }

    pub fn len(&self) -> usize {
        self.sorted_us.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted_us.is_empty()
    }

    /// The samples in microseconds, ascending.
    pub fn samples_us(&self) -> &[u64] {
        &self.sorted_us
    }

    /// The `q` quantile (0 to 1) by nearest rank: the smallest sample that at least a share `q`
    /// of the samples do not exceed. `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let n = self.sorted_us.len();
        if n == 0 {
            return None;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        // Ranks are 1-based; the float product of a share and a count is exact enough here, as
        // counts stay far below 2^52.
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        Some(Duration::from_micros(self.sorted_us[rank - 1]))
    }

    pub fn p50(&self) -> Option<Duration> {
        self.quantile(0.50)
    }

    pub fn p90(&self) -> Option<Duration> {
        self.quantile(0.90)
    }

    pub fn p99(&self) -> Option<Duration> {
        self.quantile(0.99)
    }

    pub fn min(&self) -> Option<Duration> {
        self.sorted_us.first().map(|&us| Duration::from_micros(us))
    }

    pub fn max(&self) -> Option<Duration> {
        self.sorted_us.last().map(|&us| Duration::from_micros(us))
    }

    pub fn mean(&self) -> Option<Duration> {
        if self.sorted_us.is_empty() {
            return None;
        }
        let sum: u128 = self.sorted_us.iter().map(|&us| u128::from(us)).sum();
        let mean = sum / self.sorted_us.len() as u128;
        Some(Duration::from_micros(
            u64::try_from(mean).unwrap_or(u64::MAX),
        ))
    }
}

/// What a run did: see the [module documentation](self) for what each count means.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Requests completed with a 2xx response.
    pub requests: u64,
    /// Failed requests by [`FailureKind::name`].
    pub errors: BTreeMap<String, u64>,
    /// From the start of the run to when the last client thread finished.
    pub elapsed: Duration,
    /// When the targets ran out (see the rate in the [module documentation](self)), and the 2xx
    /// responses completed before; `None` if they never did (`max_duration` ended the run).
    pub ran_out: Option<(Duration, u64)>,
    /// Request written → whole response read, of the 2xx responses.
    pub latency: Latency,
    /// Connect latency of every connection opened.
    pub connect_latency: Latency,
    /// `X-Cache-Status` values of the 2xx responses (`"none"` when absent).
    pub cache: BTreeMap<String, u64>,
    /// `X-Served-By` values of the 2xx responses (`"none"` when absent).
    pub served_by: BTreeMap<String, u64>,
    /// Decoded body bytes of the 2xx responses.
    pub body_bytes: u64,
    /// Connections established.
    pub connections_opened: u64,
    /// Targets never claimed because `max_duration` ended the run first.
    pub unsent: u64,
    /// Whether `max_duration` ended the run (targets unsent, or requests aborted in flight).
    pub stopped_by_deadline: bool,
    /// The first failures (at most [`FAILURES_KEPT`] per client thread), each saying what failed
    /// where: enough to find it in a packet capture or the agents' logs.
    pub failures: Vec<String>,
}

/// Failures described in [`LoadReport::failures`], per client thread.
pub const FAILURES_KEPT: usize = 4;

impl LoadReport {
    /// 2xx responses per second the loop sustained: until the targets ran out, or over
    /// [`elapsed`](Self::elapsed) if they never did (or nothing had completed by then); 0 for an
    /// empty run.
    pub fn requests_per_sec(&self) -> f64 {
        let (secs, requests) = match self.ran_out {
            Some((at, requests)) if requests > 0 && !at.is_zero() => (at.as_secs_f64(), requests),
            _ => (self.elapsed.as_secs_f64(), self.requests),
        };
        if secs > 0.0 {
            requests as f64 / secs
        } else {
            0.0
        }
    }

    /// `HIT` responses over the 2xx responses that had an `X-Cache-Status`; `None` when none had.
    pub fn hit_ratio(&self) -> Option<f64> {
        let with_status: u64 = self
            .cache
            .iter()
            .filter(|(k, _)| k.as_str() != "none")
            .map(|(_, n)| n)
            .sum();
        (with_status > 0).then(|| self.cache_count("HIT") as f64 / with_status as f64)
    }

    /// How many 2xx responses had `X-Cache-Status: value`.
    pub fn cache_count(&self, value: &str) -> u64 {
        self.cache.get(value).copied().unwrap_or(0)
    }

    pub fn p50(&self) -> Option<Duration> {
        self.latency.p50()
    }

    pub fn p99(&self) -> Option<Duration> {
        self.latency.p99()
    }

    /// All failed requests.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Failed requests of one kind.
    pub fn errors_of(&self, kind: FailureKind) -> u64 {
        self.errors.get(kind.name()).copied().unwrap_or(0)
    }
}

/// Runs the load: see the [module documentation](self) for the contract. `Err` only when the run
/// could not be made (invalid spec, namespace, threads); what servers do is in the report.
pub fn run(spec: &LoadSpec) -> Result<LoadReport, LoadError> {
    spec.validate()?;
    match &spec.netns {
        // Threads inherit the network namespace of the thread that creates them, so running the
        // whole run on `in_netns`'s thread puts every client socket in `ns`.
        Some(ns) => in_netns(ns, || run_here(spec)).map_err(|source| LoadError::Netns {
            ns: ns.clone(),
            source: Box::new(source),
        })?,
        None => run_here(spec),
    }
}

/// What the client threads share.
struct Shared<'a> {
    spec: &'a LoadSpec,
    /// The next target to claim.
    next_target: AtomicUsize,
    /// Connection attempts so far: picks the entry.
    next_entry: AtomicUsize,
    /// Set when the run is given up (a thread could not be started).
    stop: AtomicBool,
    run_deadline: Instant,
    started: Instant,
    /// When a thread first found no target left to claim, in ns since `started` (0: not yet).
    ran_out_ns: AtomicU64,
}

impl Shared<'_> {
    fn since_start(&self) -> Duration {
        self.started.elapsed()
    }

    fn targets_ran_out(&self) -> bool {
        self.ran_out_ns.load(Ordering::Relaxed) != 0
    }

    /// Notes the first moment a thread found nothing to claim.
    fn note_ran_out(&self) {
        let ns = u64::try_from(self.since_start().as_nanos()).unwrap_or(u64::MAX);
        let _ =
            self.ran_out_ns
                .compare_exchange(0, ns.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }
}

fn run_here(spec: &LoadSpec) -> Result<LoadReport, LoadError> {
    let start = Instant::now();
    let shared = Shared {
        spec,
        next_target: AtomicUsize::new(0),
        next_entry: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        run_deadline: start + spec.max_duration,
        started: start,
        ran_out_ns: AtomicU64::new(0),
    };
    // More threads than targets would only find nothing to claim.
    let threads = spec.connections.min(spec.targets.len());
    let mut tallies = Vec::with_capacity(threads);
    let mut failure = None;
    std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(threads);
        for index in 0..threads {
            let shared = &shared;
            let spawned = std::thread::Builder::new()
                .name(format!("loadgen-{index}"))
                .stack_size(THREAD_STACK)
                .spawn_scoped(scope, move || client_thread(shared));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(source) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    failure = Some(LoadError::Spawn { index, source });
                    break;
                }
            }
        }
        // Every handle is joined, so a panicking thread cannot make the scope panic.
        for (index, handle) in handles.into_iter().enumerate() {
            match handle.join() {
                Ok(tally) => tallies.push(tally),
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(not a string)".into());
                    failure.get_or_insert(LoadError::WorkerPanicked { index, message });
                }
            }
        }
    });
    if let Some(err) = failure {
        return Err(err);
    }
    let elapsed = start.elapsed();

    let claimed = shared
        .next_target
        .load(Ordering::Relaxed)
        .min(spec.targets.len());
    let mut report = LoadReport {
        elapsed,
        unsent: (spec.targets.len() - claimed) as u64,
        ..LoadReport::default()
    };
    let mut latency = Vec::new();
    let mut connect_latency = Vec::new();
    let mut before_ran_out = 0;
    for tally in tallies {
        report.requests += tally.requests;
        before_ran_out += tally.requests_before_ran_out;
        report.body_bytes += tally.body_bytes;
        report.connections_opened += tally.connections_opened;
        for (kind, n) in tally.errors {
            *report.errors.entry(kind.name().to_string()).or_default() += n;
        }
        report.failures.extend(tally.failures);
        merge_counts(&mut report.cache, tally.cache);
        merge_counts(&mut report.served_by, tally.served_by);
        latency.extend(tally.latency_us);
        connect_latency.extend(tally.connect_us);
    }
    report.latency = Latency::from_micros(latency);
    report.connect_latency = Latency::from_micros(connect_latency);
    report.ran_out = match shared.ran_out_ns.load(Ordering::Relaxed) {
        0 => None,
        ns => Some((Duration::from_nanos(ns), before_ran_out)),
    };
    report.stopped_by_deadline = report.unsent > 0 || report.errors_of(FailureKind::Aborted) > 0;
    Ok(report)
}

fn merge_counts(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (k, n) in from {
        *into.entry(k).or_default() += n;
    }
}

/// One client thread's counts, merged at the end so threads never contend on them.
#[derive(Default)]
struct Tally {
    requests: u64,
    /// Of them, completed before the targets ran out.
    requests_before_ran_out: u64,
    errors: BTreeMap<FailureKind, u64>,
    latency_us: Vec<u64>,
    connect_us: Vec<u64>,
    cache: BTreeMap<String, u64>,
    served_by: BTreeMap<String, u64>,
    body_bytes: u64,
    connections_opened: u64,
    failures: Vec<String>,
}

impl Tally {
    /// Counts a failure of `kind`; the first ones are described by `what` (called only then).
    fn fail(&mut self, kind: FailureKind, what: impl FnOnce() -> String) {
        *self.errors.entry(kind).or_default() += 1;
        if self.failures.len() < FAILURES_KEPT {
            self.failures.push(format!("{}: {}", kind.name(), what()));
        }
    }
}

fn count(map: &mut BTreeMap<String, u64>, value: Option<&str>) {
    let value = value.unwrap_or("none");
    // Values repeat (a few cache statuses, a few nodes): allocate only for a new one.
    match map.get_mut(value) {
        Some(n) => *n += 1,
        None => {
            map.insert(value.to_string(), 1);
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn client_thread(shared: &Shared) -> Tally {
    let spec = shared.spec;
    let mut tally = Tally::default();
    let mut conn: Option<Conn> = None;
    // The read buffer of a closed connection, for the next: with one request per connection a
    // fresh 64 KiB each time would cost more than the request.
    let mut spare_buf: Option<Box<[u8]>> = None;
    let mut request = String::new();
    loop {
        if shared.stop.load(Ordering::Relaxed) || Instant::now() >= shared.run_deadline {
            break;
        }
        let index = shared.next_target.fetch_add(1, Ordering::Relaxed);
        let Some(target) = spec.targets.get(index) else {
            shared.note_ran_out();
            break;
        };
        let deadlines = Deadlines {
            request: Instant::now() + spec.timeout,
            run: shared.run_deadline,
        };
        let mut c = match conn.take() {
            Some(c) => c,
            None => {
                let n = shared.next_entry.fetch_add(1, Ordering::Relaxed);
                let addr = spec.entries[n % spec.entries.len()];
                let started = Instant::now();
                match Conn::open(addr, &deadlines, &mut spare_buf) {
                    Ok(c) => {
                        tally.connections_opened += 1;
                        tally.connect_us.push(micros(started.elapsed()));
                        c
                    }
                    Err(kind) => {
                        let at = shared.since_start();
                        tally.fail(kind, || {
                            format!("connecting to {addr} for {target}, {at:?} in")
                        });
                        continue;
                    }
                }
            }
        };
        c.sent += 1;
        let last = c.sent >= spec.per_connection;
        request.clear();
        let _ = write!(request, "GET {target} HTTP/1.1\r\nHost: {HOST}\r\n");
        if last {
            request.push_str("Connection: close\r\n");
        }
        request.push_str("\r\n");
        let started = Instant::now();
        match c.exchange(request.as_bytes(), &deadlines) {
            Ok(resp) => {
                match FailureKind::of_status(resp.status) {
                    None => {
                        tally.requests += 1;
                        if !shared.targets_ran_out() {
                            tally.requests_before_ran_out += 1;
                        }
                        tally.latency_us.push(micros(started.elapsed()));
                        tally.body_bytes += resp.body_bytes;
                        count(&mut tally.cache, resp.cache_status.as_deref());
                        count(&mut tally.served_by, resp.served_by.as_deref());
                    }
                    Some(kind) => tally.fail(kind, || c.describe(target, shared)),
                }
                if resp.keep_alive && !last {
                    conn = Some(c);
                } else {
                    spare_buf = Some(c.buf);
                }
            }
            // The connection's state is unknown after a failure: it is dropped (closed).
            Err(kind) => {
                tally.fail(kind, || c.describe(target, shared));
                spare_buf = Some(c.buf);
            }
        }
    }
    tally
}

/// When the current request must be done: its own deadline and the run's.
struct Deadlines {
    request: Instant,
    run: Instant,
}

impl Deadlines {
    /// Time left for a blocking socket operation, or the failure when there is none.
    fn remaining(&self) -> Result<Duration, FailureKind> {
        let now = Instant::now();
        let until = self.request.min(self.run);
        if now >= until {
            Err(self.expired())
        } else {
            Ok((until - now).max(MIN_SOCKET_TIMEOUT))
        }
    }

    /// Which deadline came first, as a failure.
    fn expired(&self) -> FailureKind {
        if self.request <= self.run {
            FailureKind::Timeout
        } else {
            FailureKind::Aborted
        }
    }
}

/// What [`Conn::exchange`] read of a final response.
#[derive(Debug)]
struct Response {
    status: u16,
    cache_status: Option<String>,
    served_by: Option<String>,
    body_bytes: u64,
    /// Whether the connection can carry another request.
    keep_alive: bool,
}

/// How a response body is delimited (RFC 9112 §6.3).
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// One client connection and its read buffer (`buf[start..end]` is received, unconsumed).
struct Conn {
    stream: TcpStream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Requests sent on it.
    sent: usize,
}

fn io_failure(e: &std::io::Error) -> FailureKind {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            FailureKind::Reset
        }
        ErrorKind::UnexpectedEof => FailureKind::Closed,
        _ => FailureKind::Io,
    }
}

impl Conn {
    /// Which request on which connection, for a failure's description.
    fn describe(&self, target: &str, shared: &Shared) -> String {
        let ends = |a: std::io::Result<SocketAddr>| a.map_or("?".to_string(), |a| a.to_string());
        format!(
            "request {} of connection {} -> {} for {target}, {:?} in",
            self.sent,
            ends(self.stream.local_addr()),
            ends(self.stream.peer_addr()),
            shared.since_start()
        )
    }

    /// Connects to `addr`, with `spare_buf` as the read buffer if there is one.
    fn open(
        addr: SocketAddr,
        deadlines: &Deadlines,
        spare_buf: &mut Option<Box<[u8]>>,
    ) -> Result<Conn, FailureKind> {
        let timeout = deadlines.remaining()?;
        let stream = match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => s,
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                return Err(match deadlines.remaining() {
                    // The connect's own timeout can fire just before the deadline it was cut to.
                    Ok(_) | Err(FailureKind::Timeout) => FailureKind::ConnectTimeout,
                    Err(kind) => kind,
                });
            }
            Err(_) => return Err(FailureKind::Connect),
        };
        // Requests are small and latency is measured: do not let Nagle hold them back.
        stream.set_nodelay(true).map_err(|e| io_failure(&e))?;
        Ok(Conn {
            stream,
            buf: spare_buf
                .take()
                .unwrap_or_else(|| vec![0; BUF_SIZE].into_boxed_slice()),
            start: 0,
            end: 0,
            sent: 0,
        })
    }

    /// Sends `request` and reads its whole response.
    fn exchange(&mut self, request: &[u8], deadlines: &Deadlines) -> Result<Response, FailureKind> {
        let timeout = deadlines.remaining()?;
        self.stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| io_failure(&e))?;
        if let Err(e) = self.stream.write_all(request) {
            return Err(match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => deadlines.expired(),
                _ => io_failure(&e),
            });
        }
        self.read_response(deadlines)
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream. A full buffer that nothing
    /// has consumed is a unit (head, chunk-size line, trailers) longer than this client accepts.
    fn fill(&mut self, deadlines: &Deadlines) -> Result<usize, FailureKind> {
        if self.end == self.buf.len() {
            if self.start == 0 {
                return Err(FailureKind::Malformed);
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            let timeout = deadlines.remaining()?;
            self.stream
                .set_read_timeout(Some(timeout))
                .map_err(|e| io_failure(&e))?;
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                // A timed-out read goes round again: `remaining` then says which deadline passed,
                // and a timer that fired a little early just waits the rest.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(io_failure(&e)),
            }
        }
    }

    /// Reads more bytes, failing at end of stream (the response is not complete).
    fn fill_more(&mut self, deadlines: &Deadlines) -> Result<(), FailureKind> {
        match self.fill(deadlines)? {
            0 => Err(FailureKind::Closed),
            _ => Ok(()),
        }
    }

    fn read_response(&mut self, deadlines: &Deadlines) -> Result<Response, FailureKind> {
        for _ in 0..=MAX_INTERIM {
            let (mut resp, framing) = self.read_head(deadlines)?;
            // Interim responses (100 Continue, 103 Early Hints) precede the final one; 101 is
            // final (the connection would change protocol) and counted as a 1xx status.
            if (100..200).contains(&resp.status) && resp.status != 101 {
                continue;
            }
            if resp.status == 101 {
                resp.keep_alive = false;
            }
            match framing {
                Framing::None => {}
                Framing::Length(len) => resp.body_bytes = self.read_length(len, deadlines)?,
                Framing::Chunked => resp.body_bytes = self.read_chunked(deadlines)?,
                Framing::UntilClose => {
                    resp.keep_alive = false;
                    resp.body_bytes = self.read_until_close(deadlines)?;
                }
            }
            return Ok(resp);
        }
        Err(FailureKind::Malformed)
    }

    /// Reads and consumes one response head.
    fn read_head(&mut self, deadlines: &Deadlines) -> Result<(Response, Framing), FailureKind> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(self.buffered()) {
                Ok(httparse::Status::Complete(len)) => {
                    let head = interpret_head(&parsed)?;
                    self.consume(len);
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(FailureKind::Malformed),
            }
            self.fill_more(deadlines)?;
        }
    }

    fn read_length(&mut self, len: u64, deadlines: &Deadlines) -> Result<u64, FailureKind> {
        let mut left = len;
        while left > 0 {
            if self.buffered().is_empty() {
                self.fill_more(deadlines)?;
            }
            let take = left.min(self.buffered().len() as u64);
            self.consume(take as usize);
            left -= take;
        }
        Ok(len)
    }

    fn read_until_close(&mut self, deadlines: &Deadlines) -> Result<u64, FailureKind> {
        let mut total = self.buffered().len() as u64;
        self.consume(self.buffered().len());
        loop {
            match self.fill(deadlines)? {
                0 => return Ok(total),
                n => {
                    total += n as u64;
                    self.consume(n);
                }
            }
        }
    }

    /// Reads a chunked body and its trailers; returns the decoded length.
    fn read_chunked(&mut self, deadlines: &Deadlines) -> Result<u64, FailureKind> {
        let mut total = 0u64;
        loop {
            let size = loop {
                match httparse::parse_chunk_size(self.buffered()) {
                    Ok(httparse::Status::Complete((len, size))) => {
                        self.consume(len);
                        break size;
                    }
                    Ok(httparse::Status::Partial) => self.fill_more(deadlines)?,
                    Err(_) => return Err(FailureKind::Malformed),
                }
            };
            if size == 0 {
                return self.read_trailers(deadlines).map(|()| total);
            }
            self.read_length(size, deadlines)?;
            total = total.checked_add(size).ok_or(FailureKind::Malformed)?;
            while self.buffered().len() < 2 {
                self.fill_more(deadlines)?;
            }
            if &self.buffered()[..2] != b"\r\n" {
                return Err(FailureKind::Malformed);
            }
            self.consume(2);
        }
    }

    /// Trailer fields after the last chunk, up to and including the empty line.
    fn read_trailers(&mut self, deadlines: &Deadlines) -> Result<(), FailureKind> {
        loop {
            match self.buffered().windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.consume(2);
                    return Ok(());
                }
                Some(line) => self.consume(line + 2),
                None => self.fill_more(deadlines)?,
            }
        }
    }
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The counted fields and the body framing of a parsed response head.
fn interpret_head(parsed: &httparse::Response) -> Result<(Response, Framing), FailureKind> {
    let status = parsed.code.ok_or(FailureKind::Malformed)?;
    if !(100..=599).contains(&status) {
        return Err(FailureKind::Malformed);
    }
    let version = parsed.version.ok_or(FailureKind::Malformed)?;
    let text = |v: &[u8]| String::from_utf8_lossy(v).trim().to_string();
    let mut cache_status = None;
    let mut served_by = None;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    for h in parsed.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            close |= has_token(h.value, "close");
            keep_alive_token |= has_token(h.value, "keep-alive");
        } else if name.eq_ignore_ascii_case("content-length") {
            // Several Content-Length fields (or a list) are acceptable only when all agree.
            for part in h.value.split(|&b| b == b',') {
                let part =
                    std::str::from_utf8(part.trim_ascii()).map_err(|_| FailureKind::Malformed)?;
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(FailureKind::Malformed);
                }
                let len: u64 = part.parse().map_err(|_| FailureKind::Malformed)?;
                if content_length.is_some_and(|l| l != len) {
                    return Err(FailureKind::Malformed);
                }
                content_length = Some(len);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The last field's last coding decides; only whether it is chunked matters here.
            transfer_encoding = Some(h.value);
        } else if name.eq_ignore_ascii_case("x-cache-status") && cache_status.is_none() {
            cache_status = Some(text(h.value));
        } else if name.eq_ignore_ascii_case("x-served-by") && served_by.is_none() {
            served_by = Some(text(h.value));
        }
    }
    let mut keep_alive = match version {
        1 => !close,
        _ => keep_alive_token && !close,
    };
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::None
    } else if let Some(te) = transfer_encoding {
        // With both, Transfer-Encoding wins and the connection must not be reused (RFC 9112
        // §6.3): the message may have been smuggled past something that read the length.
        if content_length.is_some() {
            keep_alive = false;
        }
        let last = te.rsplit(|&b| b == b',').next().unwrap_or_default();
        if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(len) = content_length {
        Framing::Length(len)
    } else {
        Framing::UntilClose
    };
    Ok((
        Response {
            status,
            cache_status,
            served_by,
            body_bytes: 0,
            keep_alive,
        },
        framing,
    ))
}
