//! The agent's Prometheus metrics and the `/metrics` endpoint.
//!
//! Counters the agent itself moves are shared handles (`Metrics` is cheap to clone; each task
//! bumps the ones it owns). Counters the eBPF programs keep per CPU are read at scrape time from
//! the datapath's maps and folded into the same registry, so one scrape shows both.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use baton_bpf::datapath::Counters;
use baton_bpf::{DropReason, Stat};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

impl Reason {
    pub fn new(reason: impl Into<String>) -> Self {
        Reason {
            reason: reason.into(),
        }
    }
}

/// Latency buckets: 10 µs to ~10 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(10e-6, 2.0, 21)
}

/// A latency histogram in seconds.
#[derive(Clone)]
pub struct Latency(pub Histogram);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new(latency_buckets()))
    }
}

impl Latency {
    pub fn observe(&self, seconds: f64) {
        self.0.observe(seconds);
    }
}

/// Every metric the agent exports. Names are part of baton's interface (dashboards, the lab).
#[derive(Clone, Default)]
pub struct Metrics {
    /// New client connections seen by the datapath (`baton_connections_accepted_total`).
    pub accepted: Counter,
    /// Connections this node served itself (`baton_connections_local_total`).
    pub local: Counter,
    /// Connections handed to another node (`baton_handoffs_out_total`).
    pub handoffs_out: Counter,
    /// Connections handed in by another node (`baton_handoffs_in_total`).
    pub handoffs_in: Counter,
    /// Why a connection meant for another node was served locally after all.
    pub fallbacks: Family<Reason, Counter>,
    /// Why this node refused a handoff.
    pub refused: Family<Reason, Counter>,
    /// Control frames rejected (forged, replayed, malformed...).
    pub mesh_rejected: Family<Reason, Counter>,
    /// Ring records or held packets the agent could not parse.
    pub malformed_events: Counter,
    /// Bytes this node sent to clients from its service ports (`baton_client_bytes_sent_total`).
    pub client_bytes_sent: Counter,
    pub forwarded_packets: Counter,
    pub forwarded_bytes: Counter,
    pub translated_to_client_bytes: Counter,
    pub table_full: Counter,
    pub dropped: Family<Reason, Counter>,
    pub peers_up: Gauge,
    pub conn_entries: Gauge,
    pub held: Gauge,
    pub handed_in_active: Gauge,
    /// Established connections on the service ports: what this node reports as its load.
    pub load: Gauge,
    /// As the LARD dispatcher: decisions made for peers.
    pub dispatch_answers: Counter,
    /// Decisions made by the bounded-hash fallback because the dispatcher was silent.
    pub dispatch_fallbacks: Counter,
    /// From a datapath event's capture to the agent reading it (the ring's wakeup).
    pub event_delay: Latency,
    /// FE: from the offer to the peer's acceptance.
    pub handoff_duration: Latency,
}

impl Metrics {
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("baton");
        r.register(
            "connections_accepted",
            "New client connections seen",
            self.accepted.clone(),
        );
        r.register(
            "connections_local",
            "Connections served by this node itself",
            self.local.clone(),
        );
        r.register(
            "handoffs_out",
            "Connections handed off to another node",
            self.handoffs_out.clone(),
        );
        r.register(
            "handoffs_in",
            "Connections handed in by another node",
            self.handoffs_in.clone(),
        );
        r.register(
            "handoff_fallbacks",
            "Connections meant for distribution served locally, by reason",
            self.fallbacks.clone(),
        );
        r.register(
            "handoffs_refused",
            "Handoffs this node refused, by reason",
            self.refused.clone(),
        );
        r.register(
            "mesh_rejected_frames",
            "Control frames rejected, by reason",
            self.mesh_rejected.clone(),
        );
        r.register(
            "malformed_events",
            "Datapath events the agent could not parse",
            self.malformed_events.clone(),
        );
        r.register(
            "client_bytes_sent",
            "Bytes sent to clients from service ports",
            self.client_bytes_sent.clone(),
        );
        r.register(
            "forwarded_packets",
            "Client packets forwarded to a serving node",
            self.forwarded_packets.clone(),
        );
        r.register(
            "forwarded_bytes",
            "Client bytes forwarded to a serving node",
            self.forwarded_bytes.clone(),
        );
        r.register(
            "translated_to_client_bytes",
            "Bytes of handed-in connections sent directly to clients",
            self.translated_to_client_bytes.clone(),
        );
        r.register(
            "conn_table_full",
            "Connections passed untracked because the conn table was full",
            self.table_full.clone(),
        );
        r.register(
            "dropped_packets",
            "Packets the datapath dropped, by reason",
            self.dropped.clone(),
        );
        r.register(
            "mesh_peers_up",
            "Peers with a live control connection",
            self.peers_up.clone(),
        );
        r.register(
            "conn_table_entries",
            "Entries in the datapath's conn table",
            self.conn_entries.clone(),
        );
        r.register(
            "held_connections",
            "Connections held while deciding",
            self.held.clone(),
        );
        r.register(
            "handed_in_active",
            "Handed-in connections being served",
            self.handed_in_active.clone(),
        );
        r.register(
            "load",
            "Established connections on the service ports (this node's load)",
            self.load.clone(),
        );
        r.register(
            "dispatch_answers",
            "LARD decisions this node made for peers as the dispatcher",
            self.dispatch_answers.clone(),
        );
        r.register(
            "dispatch_fallbacks",
            "Decisions made by bounded-hash because the LARD dispatcher did not answer in time",
            self.dispatch_fallbacks.clone(),
        );
        r.register(
            "event_delay_seconds",
            "From a datapath event's capture to the agent reading it",
            self.event_delay.0.clone(),
        );
        r.register(
            "handoff_duration_seconds",
            "From an offer to a peer to its acceptance (FE)",
            self.handoff_duration.0.clone(),
        );
        r
    }
}

/// Folds the datapath's per-CPU counters into [`Metrics`] (counters only move forward).
pub struct DatapathCounters {
    counters: Arc<Counters>,
    last: std::collections::HashMap<&'static str, u64>,
}

impl DatapathCounters {
    pub fn new(counters: Arc<Counters>) -> Self {
        DatapathCounters {
            counters,
            last: Default::default(),
        }
    }

    fn advance(&mut self, name: &'static str, now: u64, counter: &Counter) {
        let last = self.last.entry(name).or_insert(0);
        if now > *last {
            counter.inc_by(now - *last);
            *last = now;
        }
    }

    pub fn sync(&mut self, m: &Metrics) {
        let stats = [
            (Stat::Syn, "syn", &m.accepted),
            (Stat::SynUntracked, "untracked", &m.local),
            (Stat::ClientBytesSent, "client_bytes", &m.client_bytes_sent),
            (Stat::ForwardPackets, "fwd_packets", &m.forwarded_packets),
            (Stat::ForwardBytes, "fwd_bytes", &m.forwarded_bytes),
            (
                Stat::ToClientBytes,
                "to_client_bytes",
                &m.translated_to_client_bytes,
            ),
            (Stat::TableFull, "table_full", &m.table_full),
        ];
        for (stat, name, counter) in stats {
            if let Ok(v) = self.counters.stat(stat) {
                self.advance(name, v, counter);
            }
        }
        for reason in DropReason::ALL {
            if let Ok(v) = self.counters.dropped(reason) {
                let counter = m
                    .dropped
                    .get_or_create(&Reason::new(reason.label()))
                    .clone();
                self.advance(reason.label(), v, &counter);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("bind({addr}) for /metrics: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Serves `GET /metrics` until `shutdown` turns true.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    datapath: DatapathCounters,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let registry = Arc::new(metrics.registry());
    let datapath = Arc::new(Mutex::new(datapath));
    loop {
        let stream = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => { tracing::warn!("accept on /metrics: {e}"); continue; }
            },
        };
        let (registry, datapath, metrics) = (registry.clone(), datapath.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (registry, datapath, metrics) =
                    (registry.clone(), datapath.clone(), metrics.clone());
                async move {
                    if req.uri().path() != "/metrics" {
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"not found\n")));
                        *resp.status_mut() = StatusCode::NOT_FOUND;
                        return Ok::<_, std::convert::Infallible>(resp);
                    }
                    if let Ok(mut dp) = datapath.lock() {
                        dp.sync(&metrics);
                    }
                    let mut text = String::new();
                    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
                    let mut resp = Response::new(Full::new(Bytes::from(text)));
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    Ok(resp)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}
