//! The local server's HTTP health check (`[health] path`), as HAProxy's `check inter rise fall`.
//!
//! Every `interval_ms` the task sends `GET path` to the node's own service address (over
//! loopback routing: the datapath on the cluster interface never sees it) and reads the status
//! line; a 2xx or 3xx within `timeout_ms` passes, anything else (refused, timeout, 5xx, junk)
//! fails. [`Verdict`] turns the results into a state: healthy until `fall` failures in a row,
//! then unhealthy until `rise` passes in a row. The task tells the event loop the state at start
//! (healthy) and on every change, nothing else: an idle agent wakes once per interval for it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::config::HealthSection;

/// The largest answer head read before giving up on finding its status line.
const MAX_STATUS_BYTES: usize = 4096;

/// Health from a run of check results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    rise: u32,
    fall: u32,
    healthy: bool,
    /// Results in a row that disagree with `healthy`.
    against: u32,
}

impl Verdict {
    /// Starts as `healthy` (a new server is given the benefit of the doubt until `fall`
    /// failures; a check replaced by a reload goes on from the verdict it had).
    pub fn new(rise: u32, fall: u32, healthy: bool) -> Self {
        Verdict {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy,
            against: 0,
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Records one check; returns the new state if it changed.
    pub fn record(&mut self, passed: bool) -> Option<bool> {
        if passed == self.healthy {
            self.against = 0;
            return None;
        }
        self.against += 1;
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.against < needed {
            return None;
        }
        self.healthy = passed;
        self.against = 0;
        Some(passed)
    }
}

/// What the check sends, and where.
#[derive(Clone, Debug)]
pub struct Check {
    pub target: SocketAddr,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

impl Check {
    /// The check `health` configures against `address`, if it configures one.
    pub fn from_config(
        health: &HealthSection,
        address: std::net::Ipv4Addr,
        service_ports: &[u16],
    ) -> Option<Check> {
        let path = health.path.clone()?;
        let port = health.port.or_else(|| service_ports.first().copied())?;
        Some(Check {
            target: SocketAddr::new(address.into(), port),
            path,
            interval: Duration::from_millis(health.interval_ms),
            timeout: Duration::from_millis(health.timeout_ms),
            rise: health.rise,
            fall: health.fall,
        })
    }
}

/// Runs `check` until `shutdown`, starting from `healthy`, sending the state on `verdicts` at
/// start and on each change.
pub async fn watch(
    check: Check,
    healthy: bool,
    verdicts: mpsc::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut verdict = Verdict::new(check.rise, check.fall, healthy);
    if verdicts.send(verdict.healthy()).await.is_err() {
        return;
    }
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticks.tick() => {}
        }
        let passed = match tokio::time::timeout(check.timeout, probe(&check)).await {
            Ok(Ok(status)) => (200..400).contains(&status),
            Ok(Err(e)) => {
                tracing::debug!("health check {}{}: {e}", check.target, check.path);
                false
            }
            Err(_) => false,
        };
        if let Some(healthy) = verdict.record(passed)
            && verdicts.send(healthy).await.is_err()
        {
            return;
        }
    }
}

/// One `GET`: the answer's status code.
async fn probe(check: &Check) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(check.target).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: baton-health-check\r\nConnection: close\r\n\r\n",
        check.path,
        check.target.ip()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before a status line",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            // The status line is all a check needs; headers may still be arriving.
            Ok(_) | Err(httparse::Error::TooManyHeaders) if response.code.is_some() => {
                return Ok(response.code.unwrap_or(0));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_STATUS_BYTES => {}
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not an HTTP answer",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_failures_in_a_row_and_rises_after_rise_passes() {
        let mut v = Verdict::new(2, 3, true);
        assert!(v.healthy());
        assert_eq!(v.record(false), None);
        assert_eq!(v.record(false), None);
        // A pass in between starts the count again.
        assert_eq!(v.record(true), None);
        assert_eq!(v.record(false), None);
        assert_eq!(v.record(false), None);
        assert_eq!(v.record(false), Some(false));
        assert!(!v.healthy());
        assert_eq!(v.record(false), None);
        assert_eq!(v.record(true), None);
        assert_eq!(v.record(false), None);
        assert_eq!(v.record(true), None);
        assert_eq!(v.record(true), Some(true));
        assert!(v.healthy());
    }

    async fn serve_once(answer: &'static [u8]) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(answer).await;
        });
        addr
    }

    fn check(target: SocketAddr) -> Check {
        Check {
            target,
            path: "/healthz".into(),
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(500),
            rise: 1,
            fall: 1,
        }
    }

    #[tokio::test]
    async fn a_probe_reads_the_status_code() {
        let ok = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(probe(&check(ok)).await.unwrap(), 200);
        // The status line alone is enough, even split from its headers.
        let unavailable = serve_once(b"HTTP/1.1 503 Service Unavailable\r\nX-A: ").await;
        assert_eq!(probe(&check(unavailable)).await.unwrap(), 503);
        let junk = serve_once(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        assert!(probe(&check(junk)).await.is_err());
    }

    #[tokio::test]
    async fn the_watch_reports_healthy_then_the_change() {
        // Nothing listens on this port: every check fails.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        drop(listener);
        let (tx, mut rx) = mpsc::channel(4);
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(watch(check(target), true, tx, stop));
        assert_eq!(rx.recv().await, Some(true));
        assert_eq!(rx.recv().await, Some(false));
    }
}
