//! The discrete-event simulation of one cluster running one policy over one trace.
//!
//! # The model
//!
//! - **Nodes.** Each has an LRU cache of whole files ([`LruCache`], `cache_bytes_per_node`), one
//!   CPU and one disk, each a FIFO server, and a limit on concurrent connections
//!   (`max_connections_per_node`, like a server's worker count): a request handed to a node that
//!   is at its limit waits in that node's FIFO accept queue.
//! - **Serving a request** (costs from [`CostModel`]). When a connection starts, the cache is
//!   looked up. A hit is one CPU burst: connect + transmit + teardown. A miss is a CPU burst for
//!   the connect, then a disk read of the whole file (after which the file is cached, evicting
//!   least recently used files; a file larger than the cache is never cached), then a CPU burst
//!   for transmit + teardown. Two misses of one file at once both read it: the cache learns of a
//!   file only once it is read. With an origin (`origin_latency_ns`, a cache tier) a miss first
//!   waits that long, using nothing of the node's, before its disk read.
//! - **Distribution.** One policy instance makes every decision, as the LARD paper's front end
//!   with a global view. It is the same code a live node runs ([`baton_policy`]). The view it
//!   sees: every node up, named `node-0`, `node-1`, ...; `load` = connections handed to the node
//!   and not yet closed (served or waiting in its accept queue: what a front end that counts its
//!   handoffs knows); `now_ms` = simulated time. Every request arrives at a uniformly random node
//!   (round-robin DNS, drawn from the seed), which is `self_index`: `local` then serves it there,
//!   and the policies' tie-break in favour of the deciding node spreads ties instead of sending
//!   them all to one node. A request the policy sends away from the node it arrived at costs that
//!   node `handoff_ns` of CPU first (the distributor's own work; 0 by default).
//! - **Clients.** Closed loop, as in the LARD paper: a fixed number of clients, each issuing the
//!   next request of the trace as soon as its previous one completes, with no think time, so
//!   throughput is what the cluster can serve. Or open loop: Poisson arrivals at a fixed rate
//!   (an overloaded cluster then queues without bound). The distributor and the network take no
//!   time.
//!
//! # The report
//!
//! The first `warmup_requests` of the trace run (to fill the caches) but are not measured.
//! Over the measured requests: throughput = measured requests / (last measured completion − issue
//! of the first measured request), in requests per second of simulated time; hit ratio = cache
//! hits / measured requests; imbalance = max / mean of the per-node count of measured requests
//! served (1 = perfectly even); response time = completion − issue (queueing included), mean and
//! 99th percentile. CPU and disk utilization are busy time over the whole run / (nodes × simulated
//! end time).
//!
//! Times are integer nanoseconds and events at the same time run in the order they were
//! scheduled, so a run is a pure function of its inputs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use baton_policy::{ClusterView, NodeState, Policy, PolicyKind, PolicyParams, RequestInfo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thiserror::Error;

use crate::cost::CostModel;
use crate::lru::LruCache;
use crate::workload::Workload;

/// The simulated cluster's hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterConfig {
    pub nodes: usize,
    pub cache_bytes_per_node: u64,
    /// Connections a node serves at once; more wait in its accept queue.
    pub max_connections_per_node: u32,
    pub cost: CostModel,
}

/// How requests are issued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClientModel {
    /// Closed loop with this many clients per node (the total grows with the cluster).
    ClosedPerNode(u32),
    /// Closed loop with this many clients in all.
    ClosedTotal(u32),
    /// Open loop: Poisson arrivals at this rate (requests per simulated second).
    Open { requests_per_second: f64 },
}

/// Everything a run depends on besides the trace and the policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    pub cluster: ClusterConfig,
    pub clients: ClientModel,
    /// Requests at the start of the trace that run but are not measured.
    pub warmup_requests: usize,
    /// Seeds the random draws: arrival times (open loop) and arrival nodes (`local`).
    pub seed: u64,
    pub policy_params: PolicyParams,
}

/// Why a run cannot start.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SimError {
    #[error("a cluster needs at least one node")]
    NoNodes,
    #[error("a node needs a connection limit of at least one")]
    NoConnections,
    #[error("a closed loop needs at least one client")]
    NoClients,
    #[error("the arrival rate must be finite and positive, not {0}")]
    BadRate(f64),
    #[error("the trace has {requests} requests: none left to measure after {warmup} of warm-up")]
    NothingToMeasure { requests: usize, warmup: usize },
}

/// One node's share of a run (measured requests only, busy times over the whole run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    pub name: String,
    pub requests: u64,
    pub hits: u64,
    pub bytes_sent: u64,
    pub cpu_busy_ns: u64,
    pub disk_busy_ns: u64,
}

/// The outcome of one run; see the module documentation for the definitions.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    pub policy: String,
    pub nodes: usize,
    /// Closed-loop clients in all; `None` for open loop.
    pub clients: Option<u32>,
    pub measured_requests: u64,
    /// Simulated time from the start to the last completion.
    pub simulated_seconds: f64,
    pub throughput_rps: f64,
    pub hit_ratio: f64,
    /// Max / mean of per-node measured requests served.
    pub imbalance: f64,
    pub mean_response_ms: f64,
    pub p99_response_ms: f64,
    pub cpu_utilization: f64,
    pub disk_utilization: f64,
    pub per_node: Vec<NodeReport>,
}

/// Runs `workload` on a cluster whose front end runs the policy `kind`, built afresh.
pub fn simulate(
    workload: &Workload,
    kind: PolicyKind,
    config: &SimConfig,
) -> Result<RunReport, SimError> {
    let mut policy = baton_policy::build(kind, &config.policy_params);
    simulate_policy(workload, policy.as_mut(), config)
}

/// Runs `workload` with a given policy instance (in whatever state it is).
pub fn simulate_policy(
    workload: &Workload,
    policy: &mut dyn Policy,
    config: &SimConfig,
) -> Result<RunReport, SimError> {
    let cluster = &config.cluster;
    if cluster.nodes == 0 {
        return Err(SimError::NoNodes);
    }
    if cluster.max_connections_per_node == 0 {
        return Err(SimError::NoConnections);
    }
    let clients = match config.clients {
        ClientModel::ClosedPerNode(per_node) => {
            let nodes = u32::try_from(cluster.nodes).unwrap_or(u32::MAX);
            Some(per_node.saturating_mul(nodes))
        }
        ClientModel::ClosedTotal(total) => Some(total),
        ClientModel::Open {
            requests_per_second,
        } => {
            if !(requests_per_second.is_finite() && requests_per_second > 0.0) {
                return Err(SimError::BadRate(requests_per_second));
            }
            None
        }
    };
    if clients == Some(0) {
        return Err(SimError::NoClients);
    }
    if config.warmup_requests >= workload.requests.len() {
        return Err(SimError::NothingToMeasure {
            requests: workload.requests.len(),
            warmup: config.warmup_requests,
        });
    }
    let mut sim = Simulation::new(workload, policy, config);
    match clients {
        Some(clients) => {
            for _ in 0..clients.min(u32::try_from(workload.requests.len()).unwrap_or(u32::MAX)) {
                sim.issue_next(0);
            }
        }
        None => sim.schedule(0, Step::Arrival, 0),
    }
    sim.run();
    Ok(sim.report(clients))
}

/// What happens when an event fires. The order of variants breaks no ties (the sequence number
/// does); it is only there so that events can live in a heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// The accepting node handed the connection on: the chosen node starts serving it.
    HandedOff,
    /// A miss's connect burst is done: read the file.
    ConnectDone,
    /// The file is read: cache it, then transmit and tear down.
    DiskDone,
    /// The connection is closed.
    Finished,
    /// Open loop: the next request arrives.
    Arrival,
}

/// A request handed to a node and not yet finished.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// Index into the trace.
    request: usize,
    node: usize,
    issued_at_ns: u64,
}

#[derive(Debug)]
struct NodeSim {
    cache: LruCache,
    cpu_free_at_ns: u64,
    disk_free_at_ns: u64,
    /// Connections being served (at most the limit).
    active: u32,
    /// Slots waiting for a connection.
    accept_queue: VecDeque<u32>,
    requests: u64,
    hits: u64,
    bytes_sent: u64,
    cpu_busy_ns: u64,
    disk_busy_ns: u64,
}

impl NodeSim {
    /// Queues `demand_ns` of CPU work at `now`; returns when it completes.
    fn run_cpu(&mut self, now_ns: u64, demand_ns: u64) -> u64 {
        // FIFO: work arrives in time order (events are processed in time order), so the CPU is
        // fully described by when it next falls idle.
        let done = self.cpu_free_at_ns.max(now_ns) + demand_ns;
        self.cpu_free_at_ns = done;
        self.cpu_busy_ns += demand_ns;
        done
    }

    fn run_disk(&mut self, now_ns: u64, demand_ns: u64) -> u64 {
        let done = self.disk_free_at_ns.max(now_ns) + demand_ns;
        self.disk_free_at_ns = done;
        self.disk_busy_ns += demand_ns;
        done
    }
}

struct Simulation<'a> {
    workload: &'a Workload,
    policy: &'a mut dyn Policy,
    cost: CostModel,
    max_connections: u32,
    open_loop_rate: Option<f64>,
    warmup: usize,
    rng: StdRng,
    nodes: Vec<NodeSim>,
    /// What the policy sees; `load` kept equal to the connections handed to each node.
    view: Vec<NodeState>,
    /// (time, sequence, step, slot): the sequence number makes equal times first-come first-run.
    events: BinaryHeap<Reverse<(u64, u64, Step, u32)>>,
    sequence: u64,
    in_flight: Vec<InFlight>,
    free_slots: Vec<u32>,
    next_request: usize,
    measure_from_ns: u64,
    last_measured_done_ns: u64,
    end_ns: u64,
    response_times_ns: Vec<u64>,
}

impl<'a> Simulation<'a> {
    fn new(workload: &'a Workload, policy: &'a mut dyn Policy, config: &SimConfig) -> Self {
        let cluster = &config.cluster;
        let open_loop_rate = match config.clients {
            ClientModel::Open {
                requests_per_second,
            } => Some(requests_per_second),
            _ => None,
        };
        Simulation {
            workload,
            policy,
            cost: cluster.cost,
            max_connections: cluster.max_connections_per_node,
            open_loop_rate,
            warmup: config.warmup_requests,
            rng: StdRng::seed_from_u64(config.seed),
            nodes: (0..cluster.nodes)
                .map(|_| NodeSim {
                    cache: LruCache::new(cluster.cache_bytes_per_node),
                    cpu_free_at_ns: 0,
                    disk_free_at_ns: 0,
                    active: 0,
                    accept_queue: VecDeque::new(),
                    requests: 0,
                    hits: 0,
                    bytes_sent: 0,
                    cpu_busy_ns: 0,
                    disk_busy_ns: 0,
                })
                .collect(),
            view: (0..cluster.nodes)
                .map(|index| NodeState {
                    name: format!("node-{index}"),
                    up: true,
                    load: 0,
                })
                .collect(),
            events: BinaryHeap::new(),
            sequence: 0,
            in_flight: Vec::new(),
            free_slots: Vec::new(),
            next_request: 0,
            measure_from_ns: 0,
            last_measured_done_ns: 0,
            end_ns: 0,
            response_times_ns: Vec::with_capacity(workload.requests.len() - config.warmup_requests),
        }
    }

    fn schedule(&mut self, at_ns: u64, step: Step, slot: u32) {
        self.events
            .push(Reverse((at_ns, self.sequence, step, slot)));
        self.sequence += 1;
    }

    fn run(&mut self) {
        while let Some(Reverse((now, _, step, slot))) = self.events.pop() {
            match step {
                Step::HandedOff => self.admit(now, slot),
                Step::ConnectDone => self.read_file(now, slot),
                Step::DiskDone => self.send_file(now, slot),
                Step::Finished => self.finish(now, slot),
                Step::Arrival => {
                    self.issue_next(now);
                    if let Some(rate) = self.open_loop_rate
                        && self.next_request < self.workload.requests.len()
                    {
                        // Exponential inter-arrival time; 1 - u is in (0, 1], so ln is finite.
                        let gap_s = -(1.0 - self.rng.r#gen::<f64>()).ln() / rate;
                        self.schedule(now + (gap_s * 1e9) as u64, Step::Arrival, 0);
                    }
                }
            }
        }
    }

    /// Issues the next request of the trace at `now`: the policy picks a node, which serves it
    /// at once or queues it.
    fn issue_next(&mut self, now: u64) {
        let request = self.next_request;
        let Some(&trace_entry) = self.workload.requests.get(request) else {
            return;
        };
        self.next_request += 1;
        if request == self.warmup {
            self.measure_from_ns = now;
        }
        let self_index = self.rng.gen_range(0..self.nodes.len());
        let view = ClusterView {
            self_index,
            nodes: &self.view,
            now_ms: now / 1_000_000,
        };
        let info = RequestInfo {
            method: "GET",
            target: self.workload.files.name(trace_entry.file),
            host: None,
        };
        let chosen = self.policy.choose(&info, &view);
        // The policy contract promises an index into the view; guard anyway, as a live node does.
        let node = if chosen < self.nodes.len() {
            chosen
        } else {
            self_index
        };
        self.view[node].load += 1;
        let slot = self.allocate(InFlight {
            request,
            node,
            issued_at_ns: now,
        });
        if node != self_index && self.cost.handoff_ns > 0 {
            let handed = self.nodes[self_index].run_cpu(now, self.cost.handoff_ns);
            self.schedule(handed, Step::HandedOff, slot);
        } else {
            self.admit(now, slot);
        }
    }

    /// The connection reaches its node: served at once, or queued while the node is full.
    fn admit(&mut self, now: u64, slot: u32) {
        let node = self.in_flight[slot as usize].node;
        if self.nodes[node].active < self.max_connections {
            self.start(now, slot);
        } else {
            self.nodes[node].accept_queue.push_back(slot);
        }
    }

    fn allocate(&mut self, flight: InFlight) -> u32 {
        match self.free_slots.pop() {
            Some(slot) => {
                self.in_flight[slot as usize] = flight;
                slot
            }
            None => {
                self.in_flight.push(flight);
                u32::try_from(self.in_flight.len() - 1).expect("fewer than 2^32 in flight")
            }
        }
    }

    /// A connection starts being served: look the file up.
    fn start(&mut self, now: u64, slot: u32) {
        let InFlight { request, node, .. } = self.in_flight[slot as usize];
        let entry = self.workload.requests[request];
        let measured = request >= self.warmup;
        let cost = self.cost;
        let node_sim = &mut self.nodes[node];
        node_sim.active += 1;
        let hit = node_sim.cache.touch(entry.file);
        if measured {
            node_sim.requests += 1;
            node_sim.hits += u64::from(hit);
            node_sim.bytes_sent += entry.bytes;
        }
        if hit {
            let done = node_sim.run_cpu(now, cost.request_cpu_ns(entry.bytes));
            self.schedule(done, Step::Finished, slot);
        } else {
            let done = node_sim.run_cpu(now, cost.connect_ns);
            self.schedule(done, Step::ConnectDone, slot);
        }
    }

    fn read_file(&mut self, now: u64, slot: u32) {
        let InFlight { request, node, .. } = self.in_flight[slot as usize];
        let file = self.workload.requests[request].file;
        let demand = self.cost.disk_read_ns(self.workload.files.size(file));
        let fetched = now + self.cost.origin_latency_ns;
        let done = if demand > 0 {
            self.nodes[node].run_disk(fetched, demand)
        } else {
            fetched
        };
        self.schedule(done, Step::DiskDone, slot);
    }

    fn send_file(&mut self, now: u64, slot: u32) {
        let InFlight { request, node, .. } = self.in_flight[slot as usize];
        let entry = self.workload.requests[request];
        let size = self.workload.files.size(entry.file);
        let demand = self.cost.transmit_cpu_ns(entry.bytes) + self.cost.teardown_ns;
        let node_sim = &mut self.nodes[node];
        node_sim.cache.insert(entry.file, size);
        let done = node_sim.run_cpu(now, demand);
        self.schedule(done, Step::Finished, slot);
    }

    fn finish(&mut self, now: u64, slot: u32) {
        let InFlight {
            request,
            node,
            issued_at_ns,
        } = self.in_flight[slot as usize];
        self.free_slots.push(slot);
        self.end_ns = now;
        if request >= self.warmup {
            self.response_times_ns.push(now - issued_at_ns);
            self.last_measured_done_ns = self.last_measured_done_ns.max(now);
        }
        self.view[node].load -= 1;
        let node_sim = &mut self.nodes[node];
        node_sim.active -= 1;
        if let Some(waiting) = node_sim.accept_queue.pop_front() {
            self.start(now, waiting);
        }
        if self.open_loop_rate.is_none() {
            // The client whose request this was issues its next one.
            self.issue_next(now);
        }
    }

    fn report(mut self, clients: Option<u32>) -> RunReport {
        let measured = self.response_times_ns.len() as u64;
        let window_s = (self.last_measured_done_ns - self.measure_from_ns) as f64 / 1e9;
        let hits: u64 = self.nodes.iter().map(|n| n.hits).sum();
        let max_served = self.nodes.iter().map(|n| n.requests).max().unwrap_or(0);
        let mean_served = measured as f64 / self.nodes.len() as f64;
        let mean_response_ns = self
            .response_times_ns
            .iter()
            .map(|&t| t as f64)
            .sum::<f64>()
            / measured as f64;
        let p99_index = ((measured as f64 * 0.99).ceil() as usize).clamp(1, measured as usize) - 1;
        let (_, &mut p99_ns, _) = self.response_times_ns.select_nth_unstable(p99_index);
        let node_time = self.end_ns as f64 * self.nodes.len() as f64;
        let utilization = |busy: u64| {
            if node_time > 0.0 {
                busy as f64 / node_time
            } else {
                0.0
            }
        };
        RunReport {
            policy: self.policy.name().to_owned(),
            nodes: self.nodes.len(),
            clients,
            measured_requests: measured,
            simulated_seconds: self.end_ns as f64 / 1e9,
            throughput_rps: if window_s > 0.0 {
                measured as f64 / window_s
            } else {
                0.0
            },
            hit_ratio: hits as f64 / measured as f64,
            imbalance: if mean_served > 0.0 {
                max_served as f64 / mean_served
            } else {
                0.0
            },
            mean_response_ms: mean_response_ns / 1e6,
            p99_response_ms: p99_ns as f64 / 1e6,
            cpu_utilization: utilization(self.nodes.iter().map(|n| n.cpu_busy_ns).sum()),
            disk_utilization: utilization(self.nodes.iter().map(|n| n.disk_busy_ns).sum()),
            per_node: self
                .nodes
                .iter()
                .zip(&self.view)
                .map(|(node, state)| NodeReport {
                    name: state.name.clone(),
                    requests: node.requests,
                    hits: node.hits,
                    bytes_sent: node.bytes_sent,
                    cpu_busy_ns: node.cpu_busy_ns,
                    disk_busy_ns: node.disk_busy_ns,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{FileTable, Request, SyntheticSpec, synthetic};

    const KB: u64 = 1024;

    /// A trace over files of the given sizes, requesting them in the order given.
    fn trace(sizes: &[u64], order: &[u32]) -> Workload {
        let mut files = FileTable::default();
        for (index, &size) in sizes.iter().enumerate() {
            files.push(format!("/f{index}"), size);
        }
        let requests = order
            .iter()
            .map(|&file| Request {
                file,
                bytes: files.size(file),
            })
            .collect();
        Workload {
            files,
            requests,
            description: "test".into(),
        }
    }

    fn config(nodes: usize, clients: ClientModel) -> SimConfig {
        SimConfig {
            cluster: ClusterConfig {
                nodes,
                cache_bytes_per_node: 1024 * KB,
                max_connections_per_node: 64,
                cost: CostModel::default(),
            },
            clients,
            warmup_requests: 0,
            seed: 1,
            policy_params: PolicyParams::default(),
        }
    }

    /// 8 KB: a miss is connect + (28 ms + 2 blocks) + 16 transmit units + teardown.
    const MISS_8KB_US: u64 = 145 + 28_000 + 2 * 410 + 16 * 40 + 145;
    const HIT_8KB_US: u64 = 145 + 16 * 40 + 145;

    #[test]
    fn one_miss_then_one_hit_take_exactly_their_costs() {
        let workload = trace(&[8 * KB], &[0, 0]);
        let report = simulate(
            &workload,
            PolicyKind::RoundRobin,
            &config(1, ClientModel::ClosedTotal(1)),
        )
        .unwrap();
        assert_eq!(report.measured_requests, 2);
        assert_eq!(report.hit_ratio, 0.5);
        let end_s = (MISS_8KB_US + HIT_8KB_US) as f64 / 1e6;
        assert!((report.simulated_seconds - end_s).abs() < 1e-12);
        assert!((report.throughput_rps - 2.0 / end_s).abs() < 1e-6);
        assert!((report.p99_response_ms - MISS_8KB_US as f64 / 1e3).abs() < 1e-9);
        let mean_ms = (MISS_8KB_US + HIT_8KB_US) as f64 / 2e3;
        assert!((report.mean_response_ms - mean_ms).abs() < 1e-9);
        let node = &report.per_node[0];
        assert_eq!((node.requests, node.hits, node.bytes_sent), (2, 1, 16 * KB));
        assert_eq!(node.cpu_busy_ns, (2 * HIT_8KB_US) * 1_000);
        assert_eq!(node.disk_busy_ns, (28_000 + 2 * 410) * 1_000);
    }

    #[test]
    fn cpu_and_disk_are_fifo_servers_shared_by_concurrent_connections() {
        // Two misses at once on one node: the second connect waits for the first, the second
        // disk read for the first, and so on.
        let workload = trace(&[8 * KB, 8 * KB], &[0, 1]);
        let report = simulate(
            &workload,
            PolicyKind::RoundRobin,
            &config(1, ClientModel::ClosedTotal(2)),
        )
        .unwrap();
        // connect 0..145 | 145..290; disk 145..28965 | 28965..57785; send 28965..29750 |
        // 57785..58570 (all µs).
        assert!((report.simulated_seconds - 58_570e-6).abs() < 1e-12);
        assert!((report.p99_response_ms - 58.570).abs() < 1e-9);
    }

    #[test]
    fn an_origin_delays_misses_in_parallel_and_a_handoff_costs_the_accepting_node() {
        // A cache tier: 100 µs of CPU per request, 20 ms to the origin, no disk.
        let mut config = config(1, ClientModel::ClosedTotal(2));
        config.cluster.cost = CostModel::cache_tier(20_000_000, 100_000, 0);
        let workload = trace(&[8 * KB, 8 * KB], &[0, 1]);
        let report = simulate(&workload, PolicyKind::RoundRobin, &config).unwrap();
        // CPU 0..100 | 100..200 µs, then both fetches at once: 20.1 and 20.2 ms, not 40.
        assert!(
            (report.simulated_seconds - 20_200e-6).abs() < 1e-12,
            "{report:?}"
        );
        assert_eq!(report.per_node[0].disk_busy_ns, 0);

        // Two nodes, every request sent away from where it arrived by a policy that always
        // picks the other node: each costs the accepting node 50 µs of CPU first.
        let mut config = self::config(2, ClientModel::ClosedTotal(1));
        config.cluster.cost = CostModel::cache_tier(0, 100_000, 50_000);
        let workload = trace(&[8 * KB], &[0, 0, 0, 0]);
        let cpu = |policy: PolicyKind| {
            let report = simulate(&workload, policy, &config).unwrap();
            report.per_node.iter().map(|n| n.cpu_busy_ns).sum::<u64>()
        };
        assert_eq!(
            cpu(PolicyKind::Local),
            4 * 100_000,
            "local hands nothing off"
        );
        let hash = simulate(&workload, PolicyKind::Hash, &config).unwrap();
        let handed = hash.per_node.iter().map(|n| n.cpu_busy_ns).sum::<u64>() - 4 * 100_000;
        assert_eq!(handed % 50_000, 0);
        assert!(
            handed > 0,
            "some arrive at the node hash does not pick: {hash:?}"
        );
    }

    #[test]
    fn connections_beyond_the_limit_wait_for_one_to_close() {
        let workload = trace(&[8 * KB, 8 * KB], &[0, 1]);
        let mut limited = config(1, ClientModel::ClosedTotal(2));
        limited.cluster.max_connections_per_node = 1;
        let report = simulate(&workload, PolicyKind::RoundRobin, &limited).unwrap();
        // The second connection starts only when the first closes.
        assert!((report.simulated_seconds - 2.0 * MISS_8KB_US as f64 / 1e6).abs() < 1e-12);
    }

    #[test]
    fn file_larger_than_the_cache_always_misses() {
        let workload = trace(&[2048 * KB], &[0, 0, 0]);
        let report = simulate(
            &workload,
            PolicyKind::RoundRobin,
            &config(1, ClientModel::ClosedTotal(1)),
        )
        .unwrap();
        assert_eq!(report.hit_ratio, 0.0);
    }

    /// Records what the policy is shown, and sends everything to the last node.
    struct Recorder {
        seen: Vec<(usize, Vec<u32>, u64)>,
    }

    impl Policy for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }

        fn choose(&mut self, _request: &RequestInfo, view: &ClusterView) -> usize {
            assert!(view.nodes.iter().all(|node| node.up));
            self.seen.push((
                view.self_index,
                view.nodes.iter().map(|node| node.load).collect(),
                view.now_ms,
            ));
            view.nodes.len() - 1
        }
    }

    #[test]
    fn policy_sees_handed_off_connections_including_queued_ones_and_sim_time() {
        let workload = trace(&[8 * KB], &[0, 0, 0, 0]);
        let mut config = config(2, ClientModel::ClosedTotal(3));
        config.cluster.max_connections_per_node = 1;
        let mut recorder = Recorder { seen: Vec::new() };
        let report = simulate_policy(&workload, &mut recorder, &config).unwrap();
        assert_eq!(report.policy, "recorder");
        let seen = &recorder.seen;
        // Every request arrives at a random node, which is the deciding one.
        assert!(seen.iter().all(|(self_index, _, _)| *self_index < 2));
        let views: Vec<(Vec<u32>, u64)> = seen
            .iter()
            .map(|(_, loads, t)| (loads.clone(), *t))
            .collect();
        // Three clients start at once; node 1 serves one and queues two, and all three count.
        assert_eq!(views[0], (vec![0, 0], 0));
        assert_eq!(views[1], (vec![0, 1], 0));
        assert_eq!(views[2], (vec![0, 2], 0));
        // The fourth request comes when the first (a miss) is done: two left on node 1.
        assert_eq!(views[3], (vec![0, 2], MISS_8KB_US / 1_000));
        assert_eq!(report.per_node[1].requests, 4);
    }

    #[test]
    fn local_means_each_request_stays_on_a_random_arrival_node() {
        let workload = trace(&[KB], &vec![0; 4000]);
        let report = simulate(
            &workload,
            PolicyKind::Local,
            &config(4, ClientModel::ClosedPerNode(4)),
        )
        .unwrap();
        for node in &report.per_node {
            assert!((850..1150).contains(&node.requests), "{node:?}");
        }
    }

    #[test]
    fn warmup_requests_are_run_but_not_measured() {
        let workload = trace(&[8 * KB], &[0, 0, 0, 0]);
        let mut config = config(1, ClientModel::ClosedTotal(1));
        config.warmup_requests = 1;
        let report = simulate(&workload, PolicyKind::Hash, &config).unwrap();
        assert_eq!(report.measured_requests, 3);
        assert_eq!(report.hit_ratio, 1.0);
        // Measured from the issue of request 1 (when the miss finished) to the end.
        let window_s = 3.0 * HIT_8KB_US as f64 / 1e6;
        assert!((report.throughput_rps - 3.0 / window_s).abs() < 1e-6);
    }

    #[test]
    fn open_loop_at_a_low_rate_sees_bare_service_times() {
        let workload = trace(&[8 * KB], &vec![0; 2001]);
        let mut config = config(
            1,
            ClientModel::Open {
                requests_per_second: 20.0,
            },
        );
        config.warmup_requests = 1;
        let report = simulate(&workload, PolicyKind::RoundRobin, &config).unwrap();
        assert_eq!(report.measured_requests, 2000);
        assert_eq!(report.clients, None);
        // At 2% CPU utilization almost nothing queues.
        assert!(report.mean_response_ms < HIT_8KB_US as f64 / 1e3 * 1.05);
        assert!((report.throughput_rps - 20.0).abs() < 2.0, "{report:?}");
    }

    #[test]
    fn same_inputs_same_report_for_every_policy_and_client_model() {
        let workload = synthetic(&SyntheticSpec {
            files: 500,
            alpha: 0.9,
            requests: 20_000,
            seed: 5,
        })
        .unwrap();
        for clients in [
            ClientModel::ClosedPerNode(8),
            ClientModel::Open {
                requests_per_second: 900.0,
            },
        ] {
            let mut config = config(4, clients);
            config.cluster.cache_bytes_per_node = 512 * KB;
            config.warmup_requests = 2_000;
            for kind in PolicyKind::ALL {
                let first = simulate(&workload, kind, &config).unwrap();
                let second = simulate(&workload, kind, &config).unwrap();
                assert_eq!(first, second, "{kind} {clients:?}");
                assert_eq!(first.measured_requests, 18_000);
            }
        }
    }

    #[test]
    fn rejects_configurations_that_cannot_run() {
        let workload = trace(&[KB], &[0, 0]);
        let run = |config: &SimConfig| simulate(&workload, PolicyKind::Hash, config);
        let good = config(2, ClientModel::ClosedPerNode(1));
        assert!(run(&good).is_ok());
        let mut bad = good;
        bad.cluster.nodes = 0;
        assert_eq!(run(&bad), Err(SimError::NoNodes));
        let mut bad = good;
        bad.cluster.max_connections_per_node = 0;
        assert_eq!(run(&bad), Err(SimError::NoConnections));
        let mut bad = good;
        bad.clients = ClientModel::ClosedTotal(0);
        assert_eq!(run(&bad), Err(SimError::NoClients));
        let mut bad = good;
        bad.clients = ClientModel::Open {
            requests_per_second: 0.0,
        };
        assert_eq!(run(&bad), Err(SimError::BadRate(0.0)));
        let mut bad = good;
        bad.warmup_requests = 2;
        assert_eq!(
            run(&bad),
            Err(SimError::NothingToMeasure {
                requests: 2,
                warmup: 2
            })
        );
    }
}
