//! The agent's Prometheus metrics and the `/metrics` endpoint (Prometheus text format 0.0.4, as
//! `promtool check metrics` reads it).
//!
//! Counters the agent itself moves are shared handles (`Metrics` is cheap to clone; each task
//! bumps the ones it owns). Counters the eBPF programs keep per CPU are read at scrape time from
//! the datapath's maps and folded into the same registry, so one scrape shows both. The datapath's
//! normal work (packets held for the agent, SYN-ACKs captured, handshake ACKs absorbed,
//! connections it released itself) has its own counters; `baton_dropped_packets_total` counts only
//! real drops.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use baton_bpf::datapath::Counters;
use baton_bpf::{DropReason, Stat};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A counter by `reason`.
#[derive(Clone)]
pub struct ByReason(IntCounterVec);

impl ByReason {
    pub fn count(&self, reason: &str) {
        self.0.with_label_values(&[reason]).inc();
    }
    pub fn count_by(&self, reason: &str, n: u64) {
        self.0.with_label_values(&[reason]).inc_by(n);
    }
    pub fn get(&self, reason: &str) -> u64 {
        self.0.with_label_values(&[reason]).get()
    }
    /// Every reason counted so far, with its count.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        use prometheus::core::Collector;
        self.0
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .filter_map(|m| {
                let reason = m.get_label().first()?.value().to_string();
                Some((reason, m.get_counter().get_value() as u64))
            })
            .collect()
    }
}

/// A latency histogram in seconds (10 µs to ~10 s, doubling).
#[derive(Clone)]
pub struct Latency(Histogram);

impl Latency {
    pub fn observe(&self, seconds: f64) {
        self.0.observe(seconds);
    }
    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.get_sample_count()
    }
}

/// Every metric the agent exports, and the registry that holds them. Names are part of baton's
/// interface (dashboards, the lab).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// New client connections seen by the datapath.
    pub accepted: IntCounter,
    /// Connections this node served itself.
    pub local: IntCounter,
    pub handoffs_out: IntCounter,
    pub handoffs_in: IntCounter,
    /// Why a connection meant for another node was served locally after all.
    pub fallbacks: ByReason,
    /// Why this node refused a handoff.
    pub refused: ByReason,
    /// Control frames rejected (forged, replayed, malformed...).
    pub mesh_rejected: ByReason,
    /// Ring records or held packets the agent could not parse.
    pub malformed_events: IntCounter,
    pub client_bytes_sent: IntCounter,
    pub forwarded_packets: IntCounter,
    pub forwarded_bytes: IntCounter,
    pub translated_to_client_bytes: IntCounter,
    pub table_full: IntCounter,
    /// The datapath's real drops, by reason.
    pub dropped: ByReason,
    /// The datapath's normal work: packets held for the agent, SYN-ACKs of replays captured,
    /// handshake ACKs absorbed, connections it released to the local server itself.
    pub held_packets: IntCounter,
    pub captured_synacks: IntCounter,
    pub absorbed_acks: IntCounter,
    pub decided_in_datapath: IntCounter,
    /// Connections the datapath passed to the local server because no agent ran.
    pub failed_open: IntCounter,
    /// Datapath offers (handoffs made by the programs alone): made (FE), taken (BE), refused
    /// and sent back (BE), come back (FE).
    pub datapath_offers: IntCounter,
    pub datapath_offers_taken: IntCounter,
    pub datapath_offers_refused: IntCounter,
    pub datapath_offers_returned: IntCounter,
    /// Followed requests the datapath let stay on their connection's node itself (`hash`).
    pub datapath_requests_stayed: IntCounter,
    /// Connections taken on from a previous agent's datapath at start.
    pub adopted: IntCounter,
    /// Handed-in connections freed because their client or FE was gone.
    pub orphans_freed: IntCounter,
    pub peers_up: IntGauge,
    pub conn_entries: IntGauge,
    pub held: IntGauge,
    pub handed_in_active: IntGauge,
    /// Established connections on the service ports: what this node reports as its load.
    pub load: IntGauge,
    /// As the LARD dispatcher: decisions made for peers.
    pub dispatch_answers: IntCounter,
    /// Decisions made by the bounded-hash fallback because the dispatcher was silent.
    pub dispatch_fallbacks: IntCounter,
    /// From a datapath event's capture to the agent reading it (the ring's wakeup).
    pub event_delay: Latency,
    /// FE: from the offer to the peer's acceptance.
    pub handoff_duration: Latency,
    /// FE: from a connection's first segment reaching the agent to its placement by the policy.
    pub hold_duration: Latency,
    /// FE: from a complete request head to its placement (the LARD dispatcher's round trip).
    pub decision_duration: Latency,
    /// FE, per-request placement: requests after a connection's first, decided on their own
    /// and served where the connection was; moves of a connection to another node; why a move
    /// the policy wanted did not happen; from a move's decision to the new node's acceptance.
    pub requests_stayed: IntCounter,
    pub rehandoffs: IntCounter,
    pub rehandoff_fallbacks: ByReason,
    pub rehandoff_duration: Latency,
    /// Serving node: connections that moved away from it (its TCP's side ended quietly); moves'
    /// quiesces that waited for its TCP to take the client's ACK.
    pub moved_away: IntCounter,
    pub quiesce_rechecks: IntCounter,
    /// 1 while the operator has this node drained (`baton ctl drain`).
    pub drained: IntGauge,
    /// The HTTP health check's verdict (1 passing, 0 failing; 1 without a check).
    pub healthy: IntGauge,
    /// Peers whose cluster configuration digest is not ours.
    pub config_mismatched_peers: IntGauge,
    /// Per peer (`{peer="n2"}`): whether it may be chosen, its reported load, the control
    /// connection's round-trip time, handoffs to it and from it, its refusals of ours.
    pub peer: PeerMetrics,
}

/// The per-peer series, labelled `peer`.
#[derive(Clone)]
pub struct PeerMetrics {
    pub up: IntGaugeVec,
    pub load: IntGaugeVec,
    pub rtt: GaugeVec,
    pub handoffs_to: IntCounterVec,
    pub handoffs_from: IntCounterVec,
    pub refusals: IntCounterVec,
}

impl PeerMetrics {
    /// Drops the gauges of a peer that is no longer a member (its counters stay: they counted
    /// what happened).
    pub fn forget(&self, peer: &str) {
        let _ = self.up.remove_label_values(&[peer]);
        let _ = self.load.remove_label_values(&[peer]);
        let _ = self.rtt.remove_label_values(&[peer]);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("baton".into()), None).expect("a constant, valid prefix");
        // Every name and help text is a constant: registering them cannot fail.
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("a valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("a valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let by_reason = |name: &str, help: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), &["reason"]).expect("a valid family");
            registry
                .register(Box::new(v.clone()))
                .expect("registered once");
            ByReason(v)
        };
        let latency = |name: &str, help: &str| {
            let buckets = prometheus::exponential_buckets(10e-6, 2.0, 21).expect("valid buckets");
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("a valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            Latency(h)
        };
        let per_peer_gauge = |name: &str, help: &str| {
            let v = IntGaugeVec::new(Opts::new(name, help), &["peer"]).expect("a valid family");
            registry
                .register(Box::new(v.clone()))
                .expect("registered once");
            v
        };
        let per_peer_counter = |name: &str, help: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), &["peer"]).expect("a valid family");
            registry
                .register(Box::new(v.clone()))
                .expect("registered once");
            v
        };
        let rtt = GaugeVec::new(
            Opts::new(
                "peer_rtt_seconds",
                "Smoothed round-trip time of the control connection to the peer",
            ),
            &["peer"],
        )
        .expect("a valid family");
        registry
            .register(Box::new(rtt.clone()))
            .expect("registered once");
        let build_info = BuildInfo::new(&registry);
        build_info.set();
        Metrics {
            accepted: counter("connections_accepted_total", "New client connections seen"),
            local: counter(
                "connections_local_total",
                "Connections served by this node itself",
            ),
            handoffs_out: counter(
                "handoffs_out_total",
                "Connections handed off to another node",
            ),
            handoffs_in: counter("handoffs_in_total", "Connections handed in by another node"),
            fallbacks: by_reason(
                "handoff_fallbacks_total",
                "Connections meant for distribution served locally, by reason",
            ),
            refused: by_reason(
                "handoffs_refused_total",
                "Handoffs this node refused, by reason",
            ),
            mesh_rejected: by_reason(
                "mesh_rejected_frames_total",
                "Control frames rejected, by reason",
            ),
            malformed_events: counter(
                "malformed_events_total",
                "Datapath events the agent could not parse",
            ),
            client_bytes_sent: counter(
                "client_bytes_sent_total",
                "Bytes sent to clients from service ports",
            ),
            forwarded_packets: counter(
                "forwarded_packets_total",
                "Client packets forwarded to a serving node",
            ),
            forwarded_bytes: counter(
                "forwarded_bytes_total",
                "Client bytes forwarded to a serving node",
            ),
            translated_to_client_bytes: counter(
                "translated_to_client_bytes_total",
                "Bytes of handed-in connections sent directly to clients",
            ),
            table_full: counter(
                "conn_table_full_total",
                "Connections passed untracked because the conn table was full",
            ),
            dropped: by_reason(
                "dropped_packets_total",
                "Packets the datapath dropped, by reason (held or captured packets not included)",
            ),
            held_packets: counter(
                "datapath_held_packets_total",
                "Client packets the datapath held and gave to the agent",
            ),
            captured_synacks: counter(
                "datapath_captured_synacks_total",
                "Answers of this node's TCP to replayed handshakes, captured for the agent",
            ),
            absorbed_acks: counter(
                "datapath_absorbed_acks_total",
                "Bare handshake ACKs kept from this node's TCP (the data segment completes it)",
            ),
            decided_in_datapath: counter(
                "datapath_decided_local_total",
                "Connections the datapath released to the local server itself",
            ),
            failed_open: counter(
                "datapath_failed_open_total",
                "Connections the datapath served locally because no agent was running",
            ),
            datapath_offers: counter(
                "datapath_offers_total",
                "Connections this node's datapath offered to another node itself (no agent asked)",
            ),
            datapath_offers_taken: counter(
                "datapath_offers_taken_total",
                "Peers' datapath offers whose replayed handshake this node's TCP took",
            ),
            datapath_offers_refused: counter(
                "datapath_offers_refused_total",
                "Peers' datapath offers this node's datapath sent back refused",
            ),
            datapath_offers_returned: counter(
                "datapath_offers_returned_total",
                "This node's datapath offers that came back refused (served here, or by the agent's offer)",
            ),
            datapath_requests_stayed: counter(
                "datapath_requests_stayed_total",
                "Followed requests the datapath itself let go on to the node their connection is on",
            ),
            adopted: counter(
                "connections_adopted_total",
                "Forwarded and handed-in connections taken on from a previous agent",
            ),
            orphans_freed: counter(
                "orphans_freed_total",
                "Handed-in connections freed because their client or FE was gone",
            ),
            peers_up: gauge("mesh_peers_up", "Peers with a live control connection"),
            conn_entries: gauge("conn_table_entries", "Entries in the datapath's conn table"),
            held: gauge("held_connections", "Connections held, offered or forwarded"),
            handed_in_active: gauge("handed_in_active", "Handed-in connections being served"),
            load: gauge(
                "load",
                "Established connections on the service ports (this node's load)",
            ),
            dispatch_answers: counter(
                "dispatch_answers_total",
                "LARD decisions this node made for peers as the dispatcher",
            ),
            dispatch_fallbacks: counter(
                "dispatch_fallbacks_total",
                "Decisions made by bounded-hash because the LARD dispatcher did not answer in time",
            ),
            event_delay: latency(
                "event_delay_seconds",
                "From a datapath event's capture to the agent reading it",
            ),
            handoff_duration: latency(
                "handoff_duration_seconds",
                "From an offer to a peer to its acceptance (FE)",
            ),
            hold_duration: latency(
                "hold_duration_seconds",
                "From a connection's first segment reaching the agent to its placement (FE)",
            ),
            requests_stayed: counter(
                "requests_stayed_total",
                "Later requests of followed connections served where the connection was (FE)",
            ),
            rehandoffs: counter(
                "rehandoffs_total",
                "Connections moved to another node at a request boundary (FE)",
            ),
            rehandoff_fallbacks: by_reason(
                "rehandoff_fallbacks_total",
                "Requests meant for another node served where their connection was, by reason (FE)",
            ),
            rehandoff_duration: latency(
                "rehandoff_duration_seconds",
                "From a request's decision to move to the new node's acceptance (FE)",
            ),
            moved_away: counter(
                "moved_away_total",
                "Connections that moved from this node to another at a request boundary",
            ),
            quiesce_rechecks: counter(
                "quiesce_rechecks_total",
                "Times a move's quiesce looked at the serving TCP again: it had not taken the client's ACK yet",
            ),
            decision_duration: latency(
                "decision_duration_seconds",
                "From a complete request head to the policy's decision (FE)",
            ),
            drained: gauge(
                "drained",
                "1 while the operator has drained this node (peers choose it for nothing new)",
            ),
            healthy: gauge(
                "server_healthy",
                "1 while the local server passes its HTTP health check (or none is configured)",
            ),
            config_mismatched_peers: gauge(
                "config_mismatched_peers",
                "Peers whose cluster configuration (members, ports, policy) differs from ours",
            ),
            peer: PeerMetrics {
                up: per_peer_gauge("peer_up", "1 while the peer may be chosen"),
                load: per_peer_gauge("peer_load", "The peer's load as it last reported it"),
                rtt,
                handoffs_to: per_peer_counter(
                    "peer_handoffs_out_total",
                    "Connections this node handed off to the peer",
                ),
                handoffs_from: per_peer_counter(
                    "peer_handoffs_in_total",
                    "Connections the peer handed off to this node",
                ),
                refusals: per_peer_counter(
                    "peer_refusals_total",
                    "Handoffs of this node's that the peer refused",
                ),
            },
            registry,
        }
    }

    /// The exposition of every metric, in the Prometheus text format.
    pub fn encode(&self) -> (Vec<u8>, String) {
        let encoder = TextEncoder::new();
        let mut out = Vec::new();
        // Encoding metrics this module registered cannot fail.
        let _ = encoder.encode(&self.registry.gather(), &mut out);
        (out, encoder.format_type().to_string())
    }
}

/// `baton_build_info{version, proto, layout} 1`: what runs, for dashboards and upgrades.
struct BuildInfo(IntGaugeVec);

impl BuildInfo {
    fn new(registry: &Registry) -> Self {
        let v = IntGaugeVec::new(
            Opts::new(
                "build_info",
                "The running agent: its version, control protocol and map layout",
            ),
            &["version", "proto", "layout"],
        )
        .expect("a valid family");
        registry
            .register(Box::new(v.clone()))
            .expect("registered once");
        BuildInfo(v)
    }

    fn set(&self) {
        let proto = baton_proto::frame::VERSION.to_string();
        let layout = baton_bpf::LAYOUT_VERSION.to_string();
        self.0
            .with_label_values(&[env!("CARGO_PKG_VERSION"), &proto, &layout])
            .set(1);
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

    /// How much `name` moved since the last scrape.
    fn advance(&mut self, name: &'static str, now: u64) -> u64 {
        let last = self.last.entry(name).or_insert(0);
        let moved = now.saturating_sub(*last);
        *last = (*last).max(now);
        moved
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
            (Stat::HandshakeAbsorbed, "absorbed", &m.absorbed_acks),
            (Stat::DecidedLocal, "decided_local", &m.decided_in_datapath),
            (Stat::FailOpen, "fail_open", &m.failed_open),
            (Stat::DpOffers, "dp_offers", &m.datapath_offers),
            (Stat::DpTaken, "dp_taken", &m.datapath_offers_taken),
            (Stat::DpRefused, "dp_refused", &m.datapath_offers_refused),
            (Stat::DpReturned, "dp_returned", &m.datapath_offers_returned),
            (
                Stat::NextHeadsStayed,
                "dp_stayed",
                &m.datapath_requests_stayed,
            ),
        ];
        for (stat, name, counter) in stats {
            if let Ok(v) = self.counters.stat(stat) {
                counter.inc_by(self.advance(name, v));
            }
        }
        for reason in DropReason::ALL {
            let Ok(v) = self.counters.dropped(reason) else {
                continue;
            };
            let moved = self.advance(reason.label(), v);
            match reason {
                // Not drops: the datapath's normal way of handing packets to the agent.
                DropReason::Held => m.held_packets.inc_by(moved),
                DropReason::BeSynAck => m.captured_synacks.inc_by(moved),
                _ => m.dropped.count_by(reason.label(), moved),
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

/// Binds the `/metrics` listener. Done before [`serve`] is spawned, so that an address in use is
/// an error the agent starts with, not a log line it runs on without metrics.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `GET /metrics` on `listener` (from [`bind`]) until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    datapath: DatapathCounters,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), MetricsError> {
    let datapath = Arc::new(Mutex::new(datapath));
    loop {
        let stream = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => { tracing::warn!("accept on /metrics: {e}"); continue; }
            },
        };
        let (datapath, metrics) = (datapath.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (datapath, metrics) = (datapath.clone(), metrics.clone());
                async move {
                    if req.uri().path() != "/metrics" {
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"not found\n")));
                        *resp.status_mut() = StatusCode::NOT_FOUND;
                        return Ok::<_, std::convert::Infallible>(resp);
                    }
                    if let Ok(mut dp) = datapath.lock() {
                        dp.sync(&metrics);
                    }
                    let (text, content_type) = metrics.encode();
                    let mut resp = Response::new(Full::new(Bytes::from(text)));
                    if let Ok(value) = hyper::header::HeaderValue::from_str(&content_type) {
                        resp.headers_mut()
                            .insert(hyper::header::CONTENT_TYPE, value);
                    }
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
