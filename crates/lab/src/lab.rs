//! The lab: a real cluster on one machine, made of network namespaces (docs/design.md §8).
//!
//! Topology of lab `NAME` with N nodes:
//!
//! ```text
//!   baton-NAME-client  eth0 198.18.0.254/24 ──┐
//!   baton-NAME-n1      eth0 198.18.0.1/24   ──┤ p-HOST ports of bridge br0
//!   ...                                       │ in baton-NAME-sw
//!   baton-NAME-nN      eth0 198.18.0.N/24   ──┤
//!   baton-NAME-origin  eth0 198.18.0.250/24 ──┘ (cache labs only)
//! ```
//!
//! Every veth pair is created directly inside the lab's namespaces, so nothing appears in the root
//! namespace. Each node runs an HTTP server on 198.18.0.i:80 (the `static` server, nginx, Apache,
//! or an nginx cache in front of the host `origin`; see [`ServerKind`]) and, unless disabled, a
//! baton agent (`baton node`), all as daemons (own session, output to log files under the state
//! directory `/run/baton/labs/NAME/`). A test may stop and restart one node's server or agent
//! while the rest runs, and start HAProxy on a node ([`Lab::start_haproxy`]), the L7 balancer
//! baton is compared with.
//!
//! An agent can also be killed, started again, taken over by a new agent (the upgrade path) or
//! stopped while the rest runs, by the [`Lab`] that built the lab or by a handle that
//! [`Lab::open`] makes for a lab another process built (`baton lab agent`).
//!
//! `down` kills every process living in the lab's namespaces (and any process recorded in a pid
//! file whose command line names the lab's state directory), removes the datapath pins the agents
//! left in bpffs for the lab's namespaces, deletes the namespaces and removes the state directory.
//! It works on a half-made lab, so `up` cleans up after itself on failure.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::OpenOptions;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use baton_agent::config::{HealthSection, NodeConfig};
use baton_policy::PolicyKind;
use nix::sys::signal::Signal;

use crate::content::{LAB_FILES, lab_file};
use crate::error::LabError;
use crate::http_client::{HttpResponse, http_get_timeout};
use crate::metrics::{metric_sum, parse_metrics};
use crate::netns::{
    enter_netns_before_exec, in_netns, ip, list_netns, netns_exists, netns_path, ns_identity,
    pids_in_namespaces, process_alive, run_checked,
};
use crate::static_server::{STATS_PATH, parse_stats};

/// Where labs keep their state: `LABS_DIR/NAME/`.
pub const LABS_DIR: &str = "/run/baton/labs";
/// The port every node's HTTP server listens on.
pub const HTTP_PORT: u16 = 80;
/// The port of every agent's Prometheus endpoint.
pub const METRICS_PORT: u16 = 9100;
/// The client's address.
pub const CLIENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// The most nodes a lab can have (198.18.0.1 ..= 198.18.0.253).
pub const MAX_NODES: usize = 253;
/// How long `up` waits for the servers and agents to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The nginx binary the `nginx` server kinds run (Debian's, unmodified).
pub const NGINX: &str = "/usr/sbin/nginx";
/// The HAProxy binary [`Lab::start_haproxy`] runs (Debian's, unmodified).
pub const HAPROXY: &str = "/usr/sbin/haproxy";
/// The address of a cache lab's origin (host `origin`, namespace `baton-NAME-origin`), on the
/// lab's bridge: above the nodes a cache lab may have ([`MAX_CACHE_NODES`]), below the client.
pub const ORIGIN_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 250);
/// The most nodes a cache lab can have: the origin has the next address.
pub const MAX_CACHE_NODES: usize = 249;
/// A cache lab's default cache size per node, in MiB (`--cache-mb`).
pub const DEFAULT_CACHE_MB: u64 = 64;
/// A cache lab's default origin delay, in milliseconds (`--origin-delay-ms`).
pub const DEFAULT_ORIGIN_DELAY_MS: u64 = 20;
/// The longest origin delay a cache lab accepts: well below nginx's `proxy_read_timeout` (60 s),
/// past which the caches would give up on the origin.
pub const MAX_ORIGIN_DELAY_MS: u64 = 30_000;
/// The Apache binary the `apache` server kind runs (Debian's, unmodified).
pub const APACHE: &str = "/usr/sbin/apache2";
/// Where Debian keeps Apache's modules.
pub const APACHE_MODULES: &str = "/usr/lib/apache2/modules";
/// How long `down` and [`Lab::stop_agent`] wait after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long [`Lab::restart_agent`] waits for the old agent to exit once the new one started.
pub const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a SIGKILLed process may take to disappear before that counts as a failure.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(50);
const MAX_NAME_LEN: usize = 10;
/// A cache lab node's cache, in its directory.
const CACHE_DIR: &str = "cache";

/// Which unmodified HTTP server the nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ServerKind {
    /// `baton serve-static` (hyper): also answers `POST /echo`.
    Static,
    /// Debian's nginx: also accepts `PUT /upload/...` (WebDAV).
    Nginx,
    /// Debian's nginx listening with `deferred` (TCP_DEFER_ACCEPT): its TCP hands it a connection
    /// only once the first data arrives, never on the bare handshake ACK.
    NginxDeferred,
    /// Debian's Apache (mpm_event), with `AcceptFilter http data`, Debian's default on Linux
    /// (TCP_DEFER_ACCEPT, as `NginxDeferred`).
    Apache,
    /// A cache tier: Debian's nginx as a caching reverse proxy (`proxy_cache`, see
    /// [`cache_nginx_config`]) of the generated objects `/o/<id>/<size>` in front of a distant
    /// origin, `baton serve-static --delay-ms D` on the extra host `origin` at
    /// [`ORIGIN_ADDRESS`]; every other path is served from the web root, as by `Nginx`.
    Cache,
}

impl ServerKind {
    /// Every kind, in the order the CLI lists them.
    pub const ALL: [ServerKind; 5] = [
        ServerKind::Static,
        ServerKind::Nginx,
        ServerKind::NginxDeferred,
        ServerKind::Apache,
        ServerKind::Cache,
    ];

    /// The name used on the command line and in `lab.info`.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Static => "static",
            ServerKind::Nginx => "nginx",
            ServerKind::NginxDeferred => "nginx-deferred",
            ServerKind::Apache => "apache",
            ServerKind::Cache => "cache",
        }
    }

    /// Whether the lab has an origin host behind the nodes' servers.
    pub fn has_origin(self) -> bool {
        self == ServerKind::Cache
    }

    /// Whether the server's listener defers accepting until data arrives (TCP_DEFER_ACCEPT).
    pub fn defers_accept(self) -> bool {
        matches!(self, ServerKind::NginxDeferred | ServerKind::Apache)
    }
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ServerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ServerKind::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = ServerKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown server kind {s:?} ({})", names.join(", "))
            })
    }
}

/// Parses a policy name as used in configuration files (`local`, `round-robin`, `hash`, ...).
pub fn parse_policy(s: &str) -> Result<PolicyKind, String> {
    s.parse::<PolicyKind>().map_err(|e| e.to_string())
}

/// The configuration-file name of a policy.
pub fn policy_name(kind: PolicyKind) -> String {
    kind.to_string()
}

/// Checks a lab name: 1 to 10 characters from `[a-z0-9]` (interface and namespace names derive
/// from it).
pub fn validate_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(LabError::InvalidName(name.to_string()))
    }
}

/// The environment variable whose value [`unique_name`] puts before every name it makes.
pub const LAB_PREFIX_ENV: &str = "BATON_LAB_PREFIX";

/// A lab name unique within this machine's running processes: `$BATON_LAB_PREFIX` (if set) and
/// `prefix`, trimmed to fit, followed by this process's id and a per-process counter, in base
/// 36. For tests that run labs in parallel; the environment's prefix lets people who share a
/// machine tell their test labs apart (see [`unique_name_under`]).
pub fn unique_name(prefix: &str) -> String {
    let group = std::env::var(LAB_PREFIX_ENV).unwrap_or_default();
    unique_name_under(&group, prefix)
}

/// [`unique_name`] with `group` in place of `$BATON_LAB_PREFIX`: `group` then `prefix`, only
/// their characters from `[a-z0-9]`, trimmed from the end to fit (so `group` is kept whole
/// unless it alone is too long), then the unique suffix.
pub fn unique_name_under(group: &str, prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) % (36 * 36);
    let suffix = format!("{}{:0>2}", base36(std::process::id()), base36(n));
    let prefix: String = group
        .chars()
        .chain(prefix.chars())
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(MAX_NAME_LEN.saturating_sub(suffix.len()))
        .collect();
    format!("{prefix}{suffix}")
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// The address of node `i` (1-based): 198.18.0.i.
pub fn node_address(i: usize) -> Ipv4Addr {
    assert!(
        (1..=MAX_NODES).contains(&i),
        "node index {i} out of 1..={MAX_NODES}"
    );
    Ipv4Addr::new(198, 18, 0, i as u8)
}

/// A request target for `path` (with a `?k=N` query) that the `hash` policy assigns to node `node`
/// (1-based) of a lab of `nodes` nodes: how tests and benchmarks pick requests that must be
/// handed off, or must not. Asks the policy itself, so it cannot drift from what the agents do.
pub fn target_hashed_to(path: &str, node: usize, nodes: usize) -> String {
    let names: Vec<String> = (1..=nodes).map(|i| format!("n{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    baton_policy::Hash::target_for(path, &names, node.wrapping_sub(1))
        .expect("some query string hashes to every node")
}

/// The node (1-based) of a lab of `nodes` nodes that the `hash` policy gives `target`.
pub fn node_hashed_for(target: &str, nodes: usize) -> usize {
    let names: Vec<String> = (1..=nodes).map(|i| format!("n{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    baton_policy::Hash::node_for(target, &names) + 1
}

/// The network namespace of `host` (`sw`, `client`, `n1`, ...) in lab `lab`.
pub fn ns_name(lab: &str, host: &str) -> String {
    format!("baton-{lab}-{host}")
}

/// The state directory of lab `lab`.
pub fn state_dir_of(lab: &str) -> PathBuf {
    PathBuf::from(LABS_DIR).join(lab)
}

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// `[a-z0-9]{1,10}`; see [`unique_name`].
    pub name: String,
    /// 1 ..= [`MAX_NODES`].
    pub nodes: usize,
    pub server: ServerKind,
    /// The policy written into every agent's configuration.
    pub policy: PolicyKind,
    /// Whether every node also runs a baton agent.
    pub agents: bool,
    /// The `baton` executable that runs `serve-static` and `node`. `None`: `$BATON_EXE` if set,
    /// else the current executable (right when the lab is driven by `baton lab`; a test in another
    /// crate passes `env!("CARGO_BIN_EXE_baton")`).
    pub exe: Option<PathBuf>,
    /// [`ServerKind::Cache`]: each node's cache size (nginx's `max_size`), in MiB, at least 1.
    /// Other kinds ignore it.
    pub cache_mb: u64,
    /// [`ServerKind::Cache`]: how long the origin waits before every response's head, in
    /// milliseconds, at most [`MAX_ORIGIN_DELAY_MS`]. Other kinds ignore it.
    pub origin_delay_ms: u64,
    /// [`ServerKind::Cache`]: nginx's `proxy_cache_lock` (off by default, as in nginx). Other
    /// kinds ignore it.
    pub cache_lock: bool,
    /// The agents' `[health]` section (an HTTP check of their own server), written into their
    /// configurations when they are launched; `None`: the agent's default (no HTTP check). Not
    /// recorded in `lab.info`: a lab opened later keeps the configurations it has.
    pub health: Option<HealthSection>,
    /// The last `late_nodes` nodes are built (namespace, server) but join the cluster only at
    /// [`Lab::admit_late_nodes`]: until then the others' agents list only each other, and the
    /// late nodes run no agent. Not recorded in `lab.info` either.
    pub late_nodes: usize,
    /// The agents' `[policy] per_request` (follow every request of a keep-alive connection);
    /// `None`: the policy's default. Not recorded in `lab.info` either.
    pub per_request: Option<bool>,
    /// The agents' `[limits] datapath_offers` (handoffs made by the datapaths alone where they
    /// decide); `None`: the agent's default (on). Not recorded in `lab.info` either.
    pub datapath_offers: Option<bool>,
    /// The agents' `[limits] moves_per_connection`; `None`: the agent's default. Not recorded in
    /// `lab.info` either.
    pub moves_per_connection: Option<u32>,
}

impl LabSpec {
    /// `nodes` nodes, static server, round-robin policy, agents on.
    pub fn new(name: impl Into<String>, nodes: usize) -> Self {
        LabSpec {
            name: name.into(),
            nodes,
            server: ServerKind::Static,
            policy: PolicyKind::RoundRobin,
            agents: true,
            exe: None,
            cache_mb: DEFAULT_CACHE_MB,
            origin_delay_ms: DEFAULT_ORIGIN_DELAY_MS,
            cache_lock: false,
            health: None,
            late_nodes: 0,
            per_request: None,
            datapath_offers: None,
            moves_per_connection: None,
        }
    }

    pub fn server(mut self, server: ServerKind) -> Self {
        self.server = server;
        self
    }

    pub fn policy(mut self, policy: PolicyKind) -> Self {
        self.policy = policy;
        self
    }

    pub fn agents(mut self, agents: bool) -> Self {
        self.agents = agents;
        self
    }

    pub fn exe(mut self, exe: impl Into<PathBuf>) -> Self {
        self.exe = Some(exe.into());
        self
    }

    /// Each node's cache size in MiB ([`ServerKind::Cache`]).
    pub fn cache_mb(mut self, cache_mb: u64) -> Self {
        self.cache_mb = cache_mb;
        self
    }

    /// The origin's delay in milliseconds ([`ServerKind::Cache`]).
    pub fn origin_delay_ms(mut self, origin_delay_ms: u64) -> Self {
        self.origin_delay_ms = origin_delay_ms;
        self
    }

    /// nginx's `proxy_cache_lock` ([`ServerKind::Cache`]).
    pub fn cache_lock(mut self, cache_lock: bool) -> Self {
        self.cache_lock = cache_lock;
        self
    }

    /// Nodes that join later ([`LabSpec::late_nodes`]).
    pub fn late_nodes(mut self, late_nodes: usize) -> Self {
        self.late_nodes = late_nodes;
        self
    }

    /// Whether the datapaths hand off by themselves ([`LabSpec::datapath_offers`]).
    pub fn datapath_offers(mut self, on: bool) -> Self {
        self.datapath_offers = Some(on);
        self
    }

    /// Whether the agents follow every request ([`LabSpec::per_request`]).
    pub fn per_request(mut self, per_request: bool) -> Self {
        self.per_request = Some(per_request);
        self
    }

    /// The agents' health check ([`LabSpec::health`]).
    pub fn health(mut self, health: HealthSection) -> Self {
        self.health = Some(health);
        self
    }

    /// Checks the name, the number of nodes (1 ..= [`MAX_NODES`], or [`MAX_CACHE_NODES`] with an
    /// origin) and, for a cache lab, `cache_mb` and `origin_delay_ms`.
    pub fn validate(&self) -> Result<(), LabError> {
        validate_name(&self.name)?;
        let max = if self.server.has_origin() {
            MAX_CACHE_NODES
        } else {
            MAX_NODES
        };
        if !(1..=max).contains(&self.nodes) {
            return Err(LabError::InvalidSpec(format!(
                "nodes must be 1..={max} with the {} server, not {}",
                self.server, self.nodes
            )));
        }
        if self.late_nodes > 0 && (self.late_nodes >= self.nodes || !self.agents) {
            return Err(LabError::InvalidSpec(format!(
                "late_nodes ({}) needs agents and at least one node that is not late",
                self.late_nodes
            )));
        }
        if self.server == ServerKind::Cache {
            if self.cache_mb == 0 {
                return Err(LabError::InvalidSpec(
                    "cache_mb must be at least 1".to_string(),
                ));
            }
            if self.origin_delay_ms > MAX_ORIGIN_DELAY_MS {
                return Err(LabError::InvalidSpec(format!(
                    "origin_delay_ms must be at most {MAX_ORIGIN_DELAY_MS}, not {}",
                    self.origin_delay_ms
                )));
            }
        }
        Ok(())
    }

    fn resolve_exe(&self) -> Result<PathBuf, LabError> {
        if let Some(exe) = &self.exe {
            return Ok(exe.clone());
        }
        if let Some(exe) = std::env::var_os("BATON_EXE") {
            return Ok(exe.into());
        }
        std::env::current_exe().map_err(|e| LabError::io("finding the current executable", e))
    }
}

/// How many nodes are members when `spec`'s lab comes up.
fn spec_members_at_start(spec: &LabSpec) -> usize {
    spec.nodes - spec.late_nodes.min(spec.nodes)
}

/// The file whose presence makes a lab nginx answer 503 ([`Lab::set_maintenance`]).
const MAINTENANCE_FILE: &str = "maintenance";

/// The agent configuration of node `i` (1-based) in a lab built from `spec` with cluster key
/// `key`: every field the lab does not set keeps the agent's default.
pub fn agent_config(spec: &LabSpec, key: &str, i: usize) -> Result<NodeConfig, LabError> {
    let mut text = format!(
        "[node]\nname = \"n{i}\"\naddress = \"{}\"\ninterface = \"eth0\"\n\n\
         [cluster]\nkey = \"{key}\"\nservice_ports = [{HTTP_PORT}]\nmembers = [\n",
        node_address(i)
    );
    for j in 1..=spec.nodes {
        text.push_str(&format!(
            "  {{ name = \"n{j}\", address = \"{}\" }},\n",
            node_address(j)
        ));
    }
    let per_request = match spec.per_request {
        Some(on) => format!("per_request = {on}\n"),
        None => String::new(),
    };
    let mut limits = String::new();
    if let Some(on) = spec.datapath_offers {
        limits.push_str(&format!("datapath_offers = {on}\n"));
    }
    if let Some(moves) = spec.moves_per_connection {
        limits.push_str(&format!("moves_per_connection = {moves}\n"));
    }
    if !limits.is_empty() {
        limits = format!("[limits]\n{limits}\n");
    }
    text.push_str(&format!(
        "]\n\n[policy]\nkind = \"{}\"\n{per_request}\n{limits}[metrics]\nlisten = \"{}:{METRICS_PORT}\"\n",
        policy_name(spec.policy),
        node_address(i)
    ));
    NodeConfig::from_toml(&text).map_err(|source| LabError::Config {
        node: format!("n{i}"),
        source,
    })
}

/// The nginx configuration of node `i` whose directory is `node_dir`, serving `www`; with
/// `deferred_accept`, its listener has `deferred` (TCP_DEFER_ACCEPT).
pub fn nginx_config(node_dir: &Path, www: &Path, i: usize, deferred_accept: bool) -> String {
    nginx_conf(node_dir, www, i, deferred_accept, None)
}

/// The nginx configuration of node `i` of a cache lab ([`ServerKind::Cache`]): that of
/// [`nginx_config`] (non-`/o/` paths served from `www`, `/upload/` WebDAV), and `/o/...`
/// proxied to the origin at [`ORIGIN_ADDRESS`] through a disk cache in `node_dir/cache` of at
/// most `cache_mb` MiB (`proxy_cache_path ... keys_zone=baton:16m ... inactive=1h
/// use_temp_path=off`, 200s kept an hour, `proxy_cache_lock on`) over HTTP/1.1 connections kept
/// alive to the origin (`keepalive 32`). Every `/o/` response says `X-Served-By: nI` (the
/// origin's own is hidden) and `X-Cache-Status: $upstream_cache_status` (`MISS`, `HIT`, ...).
pub fn cache_nginx_config(
    node_dir: &Path,
    www: &Path,
    i: usize,
    cache_mb: u64,
    cache_lock: bool,
) -> String {
    nginx_conf(node_dir, www, i, false, Some((cache_mb, cache_lock)))
}

/// [`nginx_config`], and with `cache` (its size in MiB, its lock) the cache tier of
/// [`cache_nginx_config`].
fn nginx_conf(
    node_dir: &Path,
    www: &Path,
    i: usize,
    deferred_accept: bool,
    cache: Option<(u64, bool)>,
) -> String {
    let d = node_dir.display();
    let www = www.display();
    let addr = node_address(i);
    let deferred = if deferred_accept { " deferred" } else { "" };
    let (cache_http, cache_location) = match cache {
        None => (String::new(), String::new()),
        Some((mb, lock)) => {
            let lock = if lock { "on" } else { "off" };
            (
                format!(
                    r#"
    # The cache tier: /o/ comes from the origin, through this disk cache.
    proxy_cache_path {d}/{CACHE_DIR} levels=1:2 keys_zone=baton:16m max_size={mb}m inactive=1h use_temp_path=off;

    upstream origin {{
        server {ORIGIN_ADDRESS}:{HTTP_PORT};
        keepalive 32;
        # The origin (hyper) closes a connection idle for 30 s; nginx lets go of it first, so it
        # never sends a request on a connection that is being closed.
        keepalive_timeout 20s;
    }}
"#
                ),
                format!(
                    r#"
        location /o/ {{
            proxy_pass http://origin;
            # Keep-alive to the origin needs HTTP/1.1 and no `Connection: close` from nginx.
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache baton;
            proxy_cache_valid 200 1h;
            # On: concurrent misses of one object make one origin request, not one each; the
            # others look again every 500 ms (nginx's step), however soon the object comes.
            proxy_cache_lock {lock};
            # The node is the one that served; the origin's own X-Served-By stays behind.
            proxy_hide_header X-Served-By;
            # An add_header here drops the server's, so X-Served-By is repeated.
            add_header X-Served-By n{i} always;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
"#
                ),
            )
        }
    };
    format!(
        r#"# Written by baton lab for node n{i}.
daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/server.log notice;

events {{
    worker_connections 4096;
}}

http {{
    types {{
        text/html html htm;
        text/plain txt;
    }}
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 10000;
    client_max_body_size 64m;
    client_body_temp_path {d}/nginx-tmp/body;
    proxy_temp_path {d}/nginx-tmp/proxy;
    fastcgi_temp_path {d}/nginx-tmp/fastcgi;
    uwsgi_temp_path {d}/nginx-tmp/uwsgi;
    scgi_temp_path {d}/nginx-tmp/scgi;
{cache_http}
    server {{
        listen {addr}:{HTTP_PORT}{deferred} backlog=4096;
        server_name _;
        root {www};
        index index.html;
        add_header X-Served-By n{i} always;
        # Lab::set_maintenance: the node's server answers 503 to everything.
        if (-f {d}/{MAINTENANCE_FILE}) {{
            return 503;
        }}

        location / {{
        }}

        location /upload/ {{
            root {d}/dav;
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
{cache_location}    }}
}}
"#
    )
}

/// The Apache configuration of node `i` whose directory is `node_dir`, serving `www`: complete
/// in itself (none of Debian's `/etc/apache2` is read), run with `apache2 -f CONF -DFOREGROUND`.
/// Apache refuses to serve as root, so its children run as Debian's `www-data` (the web root is
/// world-readable).
pub fn apache_config(node_dir: &Path, www: &Path, i: usize) -> String {
    let d = node_dir.display();
    let www = www.display();
    let addr = node_address(i);
    let modules = ["mpm_event", "authz_core", "dir", "mime", "headers"]
        .map(|m| format!("LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so\n"))
        .concat();
    format!(
        r#"# Written by baton lab for node n{i}.
{modules}
ServerRoot {d}
ServerName n{i}
DefaultRuntimeDir {d}/apache-run
PidFile {d}/apache2.pid
ErrorLog {d}/server.log
LogLevel warn
User www-data
Group www-data

Listen {addr}:{HTTP_PORT}
ListenBacklog 4096
# Debian's default on Linux, stated so that the lab does not depend on it: TCP_DEFER_ACCEPT.
AcceptFilter http data

StartServers 1
ServerLimit 4
ThreadsPerChild 25
MaxRequestWorkers 100
MinSpareThreads 25
MaxSpareThreads 75

Timeout 60
KeepAlive On
KeepAliveTimeout 65
MaxKeepAliveRequests 10000
EnableSendfile On

TypesConfig /dev/null
AddType text/html .html .htm
AddType text/plain .txt

DocumentRoot {www}
DirectoryIndex index.html
Header always set X-Served-By n{i}

<Directory />
    AllowOverride None
    Require all denied
</Directory>
<Directory {www}>
    Require all granted
</Directory>
"#
    )
}

/// The HAProxy configuration for node `i` of a lab of `nodes` nodes, listening on
/// `<node address>:port`: `mode http`, `balance uri` (the path, not the query, picks the node)
/// with `hash-type consistent` over every node's HTTP server at `<node address>:80` (`http-reuse
/// safe`: idle server connections are shared between client connections), logs (warnings and
/// up) on its standard output, which the lab sends to `haproxy.log`. Complete in itself: run with
/// `haproxy -db -f CONF`.
pub fn haproxy_config(i: usize, port: u16, nodes: usize) -> String {
    let addr = node_address(i);
    let servers: String = (1..=nodes)
        .map(|j| format!("    server n{j} {}:{HTTP_PORT}\n", node_address(j)))
        .collect();
    format!(
        r#"# Written by baton lab for node n{i}.
global
    # Not every request: a log line each would weigh on the benchmarks HAProxy takes part in.
    log stdout format raw local0 notice
    # As many as one nginx worker takes (worker_connections), and within the lab's descriptor
    # limit: HAProxy needs two per connection.
    maxconn 4096

defaults
    mode http
    log global
    option dontlognull
    timeout connect 5s
    timeout client 65s
    timeout server 65s
    timeout http-request 10s
    timeout http-keep-alive 65s
    timeout queue 10s

frontend baton
    bind {addr}:{port}
    default_backend nodes

backend nodes
    balance uri
    hash-type consistent
    http-reuse safe
    # No health checks: their connections would show in the nodes' (and agents') counts, and a
    # lab node's server runs unless a test stops it.
{servers}"#
    )
}

/// Writes the lab's web root ([`LAB_FILES`]) under `www`.
pub fn write_web_root(www: &Path) -> Result<(), LabError> {
    for (path, len) in LAB_FILES {
        let file = www.join(path.trim_start_matches('/'));
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| LabError::io(format!("creating {}", parent.display()), e))?;
        }
        let content = lab_file(path).expect("LAB_FILES entries are lab files");
        debug_assert_eq!(content.len(), *len);
        std::fs::write(&file, content)
            .map_err(|e| LabError::io(format!("writing {}", file.display()), e))?;
    }
    Ok(())
}

/// What a daemon of the lab is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A node's HTTP server, or the origin of a cache lab.
    Server,
    Agent,
    /// HAProxy on a node ([`Lab::start_haproxy`]).
    Haproxy,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
            Role::Haproxy => "haproxy",
        }
    }

    /// Where the lab records the daemon's pid, in its host's directory.
    fn pid_file(self) -> &'static str {
        match self {
            Role::Server => "server.pid",
            Role::Agent => "agent.pid",
            Role::Haproxy => "haproxy.pid",
        }
    }
}

/// A host of the lab that runs daemons: a node, or a cache lab's origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Host {
    /// Node `i`, 1-based.
    Node(usize),
    Origin,
}

impl Host {
    /// Its name in namespaces, directories and messages: `nI` or `origin`.
    fn name(self) -> String {
        match self {
            Host::Node(i) => format!("n{i}"),
            Host::Origin => "origin".to_string(),
        }
    }

    fn address(self) -> Ipv4Addr {
        match self {
            Host::Node(i) => node_address(i),
            Host::Origin => ORIGIN_ADDRESS,
        }
    }
}

/// A process the lab started.
struct Daemon {
    host: Host,
    role: Role,
    /// The port its readiness probe asks (see [`probe`]).
    port: u16,
    log: PathBuf,
    child: Child,
}

impl Daemon {
    fn what(&self) -> String {
        format!(
            "{} {} (pid {})",
            self.host.name(),
            self.role.name(),
            self.child.id()
        )
    }
}

/// How a [`Lab`] reaches a node's running daemon.
enum Running {
    /// Its own child, `daemons[k]`.
    Child(usize),
    /// A process another process started, known from its pid file.
    Recorded(i32),
}

/// What `down` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TeardownReport {
    /// Processes that were alive in the lab (stopped by SIGTERM, or SIGKILL after [`STOP_GRACE`]).
    pub processes: usize,
    /// baton datapath pins (bpffs files) of the lab's namespaces: what agents that were killed,
    /// or outlived [`STOP_GRACE`] draining, left behind.
    pub pins: usize,
    pub namespaces: usize,
    pub state_dir: bool,
}

impl TeardownReport {
    /// Whether there was nothing to remove.
    pub fn is_empty(&self) -> bool {
        self.processes == 0 && self.pins == 0 && self.namespaces == 0 && !self.state_dir
    }
}

/// A running lab: one this process built ([`Lab::up`]), or a handle to one another process built
/// ([`Lab::open`]).
///
/// A lab this process built is torn down when dropped (unless [`Lab::detach`]ed), so a panicking
/// test leaves nothing behind; a handle is not. Either way, the daemons the value started itself
/// are its children, which it waits for (reaps) when they stop; the others (those of a handle's
/// lab) it reaches through the pid files in the node directories.
pub struct Lab {
    spec: LabSpec,
    key: String,
    state_dir: PathBuf,
    /// The daemons this value started and has not seen stop.
    daemons: Vec<Daemon>,
    /// Whether `down` has run.
    finished: bool,
    /// Whether dropping the value runs `down`.
    tear_down_on_drop: bool,
    /// How many nodes (the first ones) are members now: all but the late ones until they are
    /// admitted.
    members_now: usize,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab")
            .field("spec", &self.spec)
            .field("state_dir", &self.state_dir)
            .field("tear_down_on_drop", &self.tear_down_on_drop)
            .field(
                "pids",
                &self
                    .daemons
                    .iter()
                    .map(|d| d.child.id())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Lab {
    /// Builds the lab and returns when every server answers `GET /` and every agent reports all
    /// its peers up (or fails after [`READY_TIMEOUT`], with the tail of the relevant log). On any
    /// failure, whatever was made is removed again — except when the failure is that the lab
    /// already exists. The new namespaces start without baton pins: any that bpffs holds under
    /// their (reused) inode numbers are stale and removed first.
    pub fn up(spec: LabSpec) -> Result<Lab, LabError> {
        spec.validate()?;
        let name = spec.name.clone();
        let existing = list_netns(&ns_name(&name, ""));
        if !existing.is_empty() {
            return Err(LabError::Exists {
                name,
                detail: format!("namespaces {}", existing.join(", ")),
            });
        }
        std::fs::create_dir_all(LABS_DIR)
            .map_err(|e| LabError::io(format!("creating {LABS_DIR}"), e))?;
        let state_dir = state_dir_of(&name);
        // Creating the state directory is the lock: two `up`s of one name cannot both get here.
        if let Err(e) = std::fs::create_dir(&state_dir) {
            return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                LabError::Exists {
                    name,
                    detail: format!("state directory {}", state_dir.display()),
                }
            } else {
                LabError::io(format!("creating {}", state_dir.display()), e)
            });
        }
        let members_now = spec_members_at_start(&spec);
        let mut lab = Lab {
            spec,
            key: String::new(),
            state_dir,
            daemons: Vec::new(),
            finished: false,
            tear_down_on_drop: true,
            members_now,
        };
        match lab.build() {
            Ok(()) => Ok(lab),
            Err(e) => {
                if let Err(te) = lab.down() {
                    tracing::error!("cleaning up after a failed `lab up`: {te}");
                }
                Err(e)
            }
        }
    }

    fn build(&mut self) -> Result<(), LabError> {
        self.key = random_key()?;
        let sw = self.switch_ns();
        let hosts = self.hosts();
        let mut all = vec![sw.clone()];
        all.extend(hosts.iter().map(|(host, _)| ns_name(&self.spec.name, host)));
        for ns in &all {
            ip(&["netns", "add", ns])?;
        }
        for ns in &all {
            remove_stale_pins(ns)?;
            disable_ipv6(ns)?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for (host, addr) in &hosts {
            let ns = ns_name(&self.spec.name, host);
            let port = format!("p-{host}");
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        write_web_root(&self.www_dir())?;
        self.write_info()?;

        let exe = self.spec.resolve_exe()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        if self.spec.server.has_origin() {
            // Up before the caches, so that their first miss finds it.
            self.start_origin(&exe)?;
            self.wait_ready(Role::Server, deadline, false, Some(Host::Origin))?;
        }
        for i in 1..=self.spec.nodes {
            self.start_server(i, &exe)?;
        }
        self.wait_ready(Role::Server, deadline, false, None)?;
        if self.spec.agents {
            for i in 1..=self.members_now {
                self.launch_agent(i, &exe)?;
            }
            self.wait_ready(Role::Agent, deadline, false, None)?;
            // Once more, now that the agents sit in front of the servers.
            self.wait_ready(Role::Server, deadline, true, None)?;
        }
        Ok(())
    }

    fn hosts(&self) -> Vec<(String, Ipv4Addr)> {
        let mut hosts = vec![("client".to_string(), CLIENT_ADDRESS)];
        hosts.extend((1..=self.spec.nodes).map(|i| (format!("n{i}"), node_address(i))));
        if self.spec.server.has_origin() {
            hosts.push((Host::Origin.name(), ORIGIN_ADDRESS));
        }
        hosts
    }

    fn write_info(&self) -> Result<(), LabError> {
        let info = lab_info(&self.spec, &self.key, &self.spec.resolve_exe()?);
        let path = self.state_dir.join(LAB_INFO);
        std::fs::write(&path, info)
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))
    }

    fn start_server(&mut self, i: usize, exe: &Path) -> Result<(), LabError> {
        let dir = self.node_dir(i);
        let subdirs: &[&str] = match self.spec.server {
            ServerKind::Static => &[],
            ServerKind::Nginx | ServerKind::NginxDeferred => &["dav", "nginx-tmp"],
            ServerKind::Apache => &["apache-run"],
            ServerKind::Cache => &["dav", "nginx-tmp", CACHE_DIR],
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        for sub in subdirs {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d)
                .map_err(|e| LabError::io(format!("creating {}", d.display()), e))?;
        }
        let log = dir.join("server.log");
        let listen = SocketAddr::new(node_address(i).into(), HTTP_PORT).to_string();
        let www = self.www_dir();
        let write_config = |file: &str, text: String| {
            let conf = dir.join(file);
            std::fs::write(&conf, text)
                .map_err(|e| LabError::io(format!("writing {}", conf.display()), e))?;
            Ok::<_, LabError>(conf)
        };
        // A configuration test first (`nginx -t`, `apache2 -t`): a bad configuration fails here,
        // with the server's own message.
        let config_test = |mut test: Command| {
            let _ns = enter_netns_before_exec(&mut test, &self.node_ns(i), false)?;
            run_checked(&mut test).map(|_| ())
        };
        let cmd = match self.spec.server {
            ServerKind::Static => {
                let mut cmd = Command::new(exe);
                cmd.arg("serve-static").arg("--root").arg(&www).args([
                    "--listen",
                    &listen,
                    "--served-by",
                    &format!("n{i}"),
                ]);
                cmd
            }
            ServerKind::Nginx | ServerKind::NginxDeferred | ServerKind::Cache => {
                let text = if self.spec.server == ServerKind::Cache {
                    cache_nginx_config(&dir, &www, i, self.spec.cache_mb, self.spec.cache_lock)
                } else {
                    let deferred = self.spec.server == ServerKind::NginxDeferred;
                    nginx_config(&dir, &www, i, deferred)
                };
                let conf = write_config("nginx.conf", text)?;
                let mut test = Command::new(NGINX);
                test.args(["-t", "-q", "-e"]).arg(&log).arg("-c").arg(&conf);
                config_test(test)?;
                let mut cmd = Command::new(NGINX);
                cmd.arg("-e").arg(&log).arg("-c").arg(&conf);
                cmd
            }
            ServerKind::Apache => {
                let conf = write_config("apache2.conf", apache_config(&dir, &www, i))?;
                let mut test = Command::new(APACHE);
                test.arg("-t").arg("-f").arg(&conf);
                config_test(test)?;
                let mut cmd = Command::new(APACHE);
                cmd.arg("-f").arg(&conf).arg("-DFOREGROUND");
                cmd
            }
        };
        self.spawn_daemon(Host::Node(i), Role::Server, HTTP_PORT, cmd, log)
            .map(|_| ())
    }

    /// Starts the origin of a cache lab, `EXE serve-static` on [`ORIGIN_ADDRESS`]:80 with the
    /// spec's delay, serving the web root as `origin`, without waiting for it.
    fn start_origin(&mut self, exe: &Path) -> Result<(), LabError> {
        let dir = self.origin_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        let listen = SocketAddr::new(ORIGIN_ADDRESS.into(), HTTP_PORT).to_string();
        let mut cmd = Command::new(exe);
        // The web root names the state directory on the command line (how `down` knows it).
        cmd.arg("serve-static")
            .arg("--root")
            .arg(self.www_dir())
            .args([
                "--listen",
                &listen,
                "--served-by",
                "origin",
                "--delay-ms",
                &self.spec.origin_delay_ms.to_string(),
            ]);
        let log = self.origin_log();
        self.spawn_daemon(Host::Origin, Role::Server, HTTP_PORT, cmd, log)
            .map(|_| ())
    }

    /// Writes node `i`'s agent configuration (from the spec and key) and starts its agent, without
    /// waiting for it.
    fn launch_agent(&mut self, i: usize, exe: &Path) -> Result<u32, LabError> {
        let mut config = agent_config(&self.spec, &self.key, i)?;
        config.cluster.members.truncate(self.members_of(i));
        config.node.control_socket = self.control_socket(i);
        if let Some(health) = &self.spec.health {
            config.health = health.clone();
        }
        let path = self.agent_config_path(i);
        std::fs::write(&path, config.to_toml())
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
        self.spawn_daemon(
            Host::Node(i),
            Role::Agent,
            METRICS_PORT,
            self.agent_command(i, exe),
            self.agent_log(i),
        )
    }

    /// `EXE node --config NODE_DIR/agent.toml`: the configuration file is named by its full path,
    /// so the agent's command line names the state directory (how `down` recognises it).
    fn agent_command(&self, i: usize, exe: &Path) -> Command {
        let mut cmd = Command::new(exe);
        cmd.arg("node")
            .arg("--config")
            .arg(self.agent_config_path(i));
        cmd
    }

    /// Starts `cmd` as a daemon in `host`'s namespace ([`Lab::spawn_in`]), records it as this
    /// value's child (probed on `port`) and writes its pid into the role's pid file. Returns the
    /// pid.
    fn spawn_daemon(
        &mut self,
        host: Host,
        role: Role,
        port: u16,
        cmd: Command,
        log: PathBuf,
    ) -> Result<u32, LabError> {
        let child = self.spawn_in(host, cmd, &log)?;
        let pid = child.id();
        self.daemons.push(Daemon {
            host,
            role,
            port,
            log,
            child,
        });
        self.write_pid_file(host, role, pid)?;
        Ok(pid)
    }

    /// Starts `cmd` in `host`'s namespace as a daemon: new session, stdin from /dev/null, stdout
    /// and stderr appended to `log`, working directory the host's directory. Records nothing.
    fn spawn_in(&self, host: Host, mut cmd: Command, log: &Path) -> Result<Child, LabError> {
        let dir = self.host_dir(host);
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| LabError::io(format!("opening {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| LabError::io(format!("opening {}", log.display()), e))?;
        // Plain text in log files (tracing-subscriber honours NO_COLOR).
        cmd.current_dir(&dir)
            .env("NO_COLOR", "1")
            // An error is one line in the log, not pushed out of its tail by a backtrace.
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let ns_file = enter_netns_before_exec(&mut cmd, &self.host_ns(host), true)?;
        let child = cmd.spawn().map_err(|source| LabError::Spawn {
            cmd: crate::netns::describe(&cmd),
            source,
        })?;
        drop(ns_file);
        Ok(child)
    }

    fn write_pid_file(&self, host: Host, role: Role, pid: u32) -> Result<(), LabError> {
        let path = self.host_dir(host).join(role.pid_file());
        std::fs::write(&path, format!("{pid}\n"))
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))
    }

    fn remove_pid_file(&self, host: Host, role: Role) -> Result<(), LabError> {
        let path = self.host_dir(host).join(role.pid_file());
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LabError::io(format!("removing {}", path.display()), e)),
        }
    }

    /// Waits until every daemon of `role` this value started (only host `only`'s, if given)
    /// passes its probe, run from the client namespace. Any daemon this value started exiting
    /// meanwhile is a failure. With `through_agents`, the servers are reached through the agents,
    /// so a timeout reports the agent's log.
    fn wait_ready(
        &mut self,
        role: Role,
        deadline: Instant,
        through_agents: bool,
        only: Option<Host>,
    ) -> Result<(), LabError> {
        // An agent is ready when every other member's control connection is up.
        let peers_wanted: Vec<usize> = self
            .daemons
            .iter()
            .map(|d| match d.host {
                Host::Node(i) => self.members_of(i) - 1,
                _ => 0,
            })
            .collect();
        let client = self.client_ns();
        let daemons = &mut self.daemons;
        in_netns(&client, move || {
            let mut pending: Vec<usize> = (0..daemons.len())
                .filter(|&k| daemons[k].role == role && only.is_none_or(|h| daemons[k].host == h))
                .collect();
            let mut last_error: HashMap<usize, String> = HashMap::new();
            loop {
                for d in daemons.iter_mut() {
                    match d.child.try_wait() {
                        Ok(None) => {}
                        Ok(Some(status)) => {
                            return Err(not_ready(d.what(), d, format!("exited ({status})")));
                        }
                        Err(e) => return Err(not_ready(d.what(), d, format!("waitpid: {e}"))),
                    }
                }
                pending.retain(|&k| match probe(&daemons[k], peers_wanted[k]) {
                    Ok(()) => false,
                    Err(e) => {
                        last_error.insert(k, e);
                        true
                    }
                });
                let Some(&k) = pending.first() else {
                    return Ok(());
                };
                if Instant::now() >= deadline {
                    let d = &daemons[k];
                    let reason = format!(
                        "no success within {} s; last probe: {}",
                        READY_TIMEOUT.as_secs(),
                        last_error.get(&k).map_or("none", String::as_str)
                    );
                    let agent = daemons
                        .iter()
                        .find(|a| a.host == d.host && a.role == Role::Agent);
                    return Err(match agent {
                        Some(agent) if through_agents => not_ready(
                            format!("{} through {}", d.what(), agent.what()),
                            agent,
                            reason,
                        ),
                        _ => not_ready(d.what(), d, reason),
                    });
                }
                std::thread::sleep(POLL);
            }
        })?
    }

    /// Stops node `i`'s agent, if it runs: SIGTERM, up to [`STOP_GRACE`] for it to exit by
    /// itself, then SIGKILL; returns once it is gone and its pid file removed. Its peers see it
    /// go down. An agent that exits by itself takes its datapath with it; one that is still
    /// draining handed-off connections when the grace ends is killed, which leaves its datapath
    /// pinned and forwarding (`down` removes the pins). To wait longer, or to learn which of the
    /// two happened, use [`Lab::stop_agent_wait`]. No agent running is not an error.
    pub fn stop_agent(&mut self, i: usize) -> Result<(), LabError> {
        self.stop_daemon(Host::Node(i), Role::Agent, STOP_GRACE)
            .map(|_| ())
    }

    /// Stops node `i`'s agent for good: SIGTERM, then waits up to `timeout` for it to exit by
    /// itself (an agent drains first: it may run until its last handed-off connection closes).
    /// Returns `true` if it exited by itself; otherwise SIGKILLs it and returns `false` once it is
    /// gone. Either way its pid file is removed. Fails if node `i` has no running agent, or if the
    /// agent is still there [`KILL_TIMEOUT`] (5 s) after SIGKILL.
    pub fn stop_agent_wait(&mut self, i: usize, timeout: Duration) -> Result<bool, LabError> {
        self.check_node(i);
        match self.stop_daemon(Host::Node(i), Role::Agent, timeout)? {
            Some(exited) => Ok(exited),
            None => Err(no_agent(i)),
        }
    }

    /// SIGKILLs node `i`'s agent, waits until it is gone (reaped, if it is this value's child;
    /// else until `/proc/PID` no longer shows a running process) and removes its pid file.
    /// Returns the pid killed. The agent gets no chance to clean up: its datapath stays pinned and
    /// keeps forwarding the connections it carries, with no agent, until an agent starts again
    /// ([`Lab::start_agent`]) or the lab goes down. Fails if node `i` has no running agent, or if
    /// the agent is still there [`KILL_TIMEOUT`] (5 s) later.
    pub fn kill_agent(&mut self, i: usize) -> Result<u32, LabError> {
        self.check_node(i);
        let running = self
            .running(Host::Node(i), Role::Agent)
            .ok_or_else(|| no_agent(i))?;
        let pid = match running {
            Running::Child(k) => {
                let mut daemon = self.daemons.remove(k);
                // SIGKILL; waiting reaps the child, so it leaves no zombie behind.
                let _ = daemon.child.kill();
                daemon
                    .child
                    .wait()
                    .map_err(|e| LabError::io(format!("waiting for {}", daemon.what()), e))?;
                daemon.child.id()
            }
            Running::Recorded(pid) => {
                send_signal(pid, Signal::SIGKILL, || format!("n{i}'s agent"))?;
                wait_gone_or_fail(pid, KILL_TIMEOUT, || format!("n{i}'s agent"), "SIGKILL")?;
                pid as u32
            }
        };
        self.remove_pid_file(Host::Node(i), Role::Agent)?;
        Ok(pid)
    }

    /// Starts node `i`'s agent with its configuration file (`agent.toml` in the node directory,
    /// as `up` wrote it) and waits until it is ready: its metrics endpoint answers and reports
    /// every peer up. Returns its pid (also in its pid file). The new agent is this value's child.
    ///
    /// Fails if the lab runs no agents, if node `i`'s agent already runs ([`Lab::restart_agent`]
    /// replaces a running one), or with [`LabError::NotReady`] and the tail of the agent's log if
    /// the agent (or any daemon this value started) exits or it is not ready within
    /// [`READY_TIMEOUT`]; an agent that is merely not ready is left running and recorded.
    pub fn start_agent(&mut self, i: usize) -> Result<u32, LabError> {
        self.check_node(i);
        self.require_agents()?;
        if let Some(running) = self.running(Host::Node(i), Role::Agent) {
            return Err(LabError::InvalidSpec(format!(
                "n{i}'s agent is running (pid {}); restart replaces a running agent",
                self.running_pid(&running)
            )));
        }
        let exe = self.spec.resolve_exe()?;
        let pid = self.spawn_daemon(
            Host::Node(i),
            Role::Agent,
            METRICS_PORT,
            self.agent_command(i, &exe),
            self.agent_log(i),
        )?;
        let deadline = Instant::now() + READY_TIMEOUT;
        self.wait_ready(Role::Agent, deadline, false, Some(Host::Node(i)))?;
        Ok(pid)
    }

    /// The upgrade path: starts a new agent for node `i` (same configuration file) while the old
    /// one still runs, so that the new one takes over (it tells the old one to exit and adopts
    /// the datapath); waits up to [`TAKEOVER_TIMEOUT`] for the old agent to exit by itself, then
    /// until the new one is ready as for [`Lab::start_agent`]. Returns `(old pid, new pid)`; the
    /// new agent replaces the old one as this value's child and in the pid file.
    ///
    /// Fails, leaving the old agent running and recorded, if node `i` has no running agent, if
    /// the new agent exits before the old one did ([`LabError::NotReady`] with the log tail), or
    /// if the old one is still running after [`TAKEOVER_TIMEOUT`] (then the new one is
    /// SIGKILLed). Fails with [`LabError::NotReady`] if the old agent exited but the new one is
    /// not ready within [`READY_TIMEOUT`]; the new one then stays recorded.
    pub fn restart_agent(&mut self, i: usize) -> Result<(u32, u32), LabError> {
        self.check_node(i);
        self.require_agents()?;
        let old = self
            .running(Host::Node(i), Role::Agent)
            .ok_or_else(|| no_agent(i))?;
        let old_pid = self.running_pid(&old);
        let exe = self.spec.resolve_exe()?;
        let log = self.agent_log(i);
        let child = self.spawn_in(Host::Node(i), self.agent_command(i, &exe), &log)?;
        let mut new = Daemon {
            host: Host::Node(i),
            role: Role::Agent,
            port: METRICS_PORT,
            log,
            child,
        };
        let new_pid = new.child.id();
        let deadline = Instant::now() + TAKEOVER_TIMEOUT;
        loop {
            match new.child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    let reason = format!("exited ({status}) instead of taking over from {old_pid}");
                    return Err(not_ready(new.what(), &new, reason));
                }
                Err(e) => return Err(not_ready(new.what(), &new, format!("waitpid: {e}"))),
            }
            let old_gone = match old {
                // try_wait reaps it once it has exited.
                Running::Child(k) => !matches!(self.daemons[k].child.try_wait(), Ok(None)),
                Running::Recorded(pid) => !process_alive(pid),
            };
            if old_gone {
                break;
            }
            if Instant::now() >= deadline {
                // SIGKILL rather than SIGTERM: an agent told to stop for good removes the
                // datapath's pins on its way out, and the old agent still uses them.
                let _ = new.child.kill();
                let _ = new.child.wait();
                let reason = format!(
                    "the old agent (pid {old_pid}) still runs {} s after it; killed it",
                    TAKEOVER_TIMEOUT.as_secs()
                );
                return Err(not_ready(
                    format!("n{i} agent (pid {new_pid}) taking over"),
                    &new,
                    reason,
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Running::Child(k) = old {
            self.daemons.remove(k);
        }
        self.daemons.push(new);
        self.write_pid_file(Host::Node(i), Role::Agent, new_pid)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        self.wait_ready(Role::Agent, deadline, false, Some(Host::Node(i)))?;
        Ok((old_pid, new_pid))
    }

    /// Node `i` by the name a command line gives it (`n2` or `2`; see [`parse_node`]); fails
    /// with [`LabError::UnknownHost`] if this lab has no such node.
    pub fn node_named(&self, node: &str) -> Result<usize, LabError> {
        parse_node(node)
            .filter(|i| (1..=self.spec.nodes).contains(i))
            .ok_or_else(|| LabError::UnknownHost {
                name: self.spec.name.clone(),
                host: node.to_string(),
            })
    }

    fn require_agents(&self) -> Result<(), LabError> {
        if self.spec.agents {
            Ok(())
        } else {
            Err(LabError::InvalidSpec(format!(
                "lab {} runs no agents (it was built without)",
                self.spec.name
            )))
        }
    }

    /// Stops node `i`'s server (SIGTERM, up to 5 s, then SIGKILL) and waits for it to exit; its
    /// agent keeps running, and finds the service ports without a listener.
    pub fn stop_server(&mut self, i: usize) -> Result<(), LabError> {
        self.stop_daemon(Host::Node(i), Role::Server, STOP_GRACE)
            .map(|_| ())
    }

    /// Starts node `i`'s server again after [`Lab::stop_server`] and waits until it answers
    /// `GET /` itself: probed from inside the node, so not through any agent.
    pub fn restart_server(&mut self, i: usize) -> Result<(), LabError> {
        self.check_node(i);
        if self.pid_of(Host::Node(i), Role::Server).is_some() {
            return Err(LabError::InvalidSpec(format!(
                "n{i}'s server is running; stop it first"
            )));
        }
        let exe = self.spec.resolve_exe()?;
        self.start_server(i, &exe)?;
        self.wait_last_ready(&self.node_ns(i))
    }

    /// Empties every node's cache in a cache lab (between benchmark variants): node by node,
    /// stops its nginx, removes what its cache directory holds, starts it again and waits until
    /// it answers (as [`Lab::restart_server`]). nginx keeps an index of its cache in memory, so
    /// the files only go while it is stopped. A node whose server was not running has its cache
    /// emptied and stays stopped. The next request for any object is a `MISS` on every node.
    ///
    /// Fails with [`LabError::InvalidSpec`] if the lab is not a cache lab, and as
    /// [`Lab::restart_server`] does if a server does not come back.
    pub fn clear_caches(&mut self) -> Result<(), LabError> {
        self.require_origin()?;
        for i in 1..=self.spec.nodes {
            let was_running = self.running(Host::Node(i), Role::Server).is_some();
            self.stop_server(i)?;
            let cache = self.node_dir(i).join(CACHE_DIR);
            let entries = std::fs::read_dir(&cache)
                .map_err(|e| LabError::io(format!("reading {}", cache.display()), e))?;
            for entry in entries {
                let path = entry
                    .map_err(|e| LabError::io(format!("reading {}", cache.display()), e))?
                    .path();
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.map_err(|e| LabError::io(format!("removing {}", path.display()), e))?;
            }
            if was_running {
                self.restart_server(i)?;
            }
        }
        Ok(())
    }

    /// Starts HAProxy (Debian's, [`HAPROXY`]) on node `i`, listening on `<node address>:port`
    /// and balancing over every node's HTTP server at `<node address>:80` as an L7 content
    /// switch would ([`haproxy_config`]: `balance uri`, `hash-type consistent`): the alternative
    /// baton is compared with. Its configuration (`haproxy.cfg`) and log (`haproxy.log`) are in
    /// the node directory; it is this value's child, recorded in `haproxy.pid`, and stopped by
    /// [`Lab::stop_haproxy`] or `down`. Returns its pid once it answers `GET /` (asked from
    /// inside node `i`).
    ///
    /// The nodes' agents, if any, also see HAProxy's connections to port 80 and distribute them
    /// by their policy: measure HAProxy alone in a lab without agents (or with `local`).
    ///
    /// Fails with [`LabError::InvalidSpec`] if `port` is 0, [`HTTP_PORT`] or [`METRICS_PORT`]
    /// or HAProxy already runs on node `i`; with [`LabError::Command`] if HAProxy rejects the
    /// configuration (`haproxy -c`); with [`LabError::NotReady`] and its log's tail if it exits
    /// (say, the port is taken) or does not answer within [`READY_TIMEOUT`] (it then stays
    /// running and recorded).
    pub fn start_haproxy(&mut self, i: usize, port: u16) -> Result<u32, LabError> {
        self.check_node(i);
        if [0, HTTP_PORT, METRICS_PORT].contains(&port) {
            return Err(LabError::InvalidSpec(format!(
                "HAProxy cannot listen on port {port} (0, the HTTP port and the metrics port are \
                 not free)"
            )));
        }
        // `running`, not `pid_of`: a HAProxy that exited (a failed start) is forgotten here.
        if let Some(running) = self.running(Host::Node(i), Role::Haproxy) {
            return Err(LabError::InvalidSpec(format!(
                "HAProxy already runs on n{i} (pid {})",
                self.running_pid(&running)
            )));
        }
        let conf = self.node_dir(i).join("haproxy.cfg");
        let text = haproxy_config(i, port, self.spec.nodes);
        std::fs::write(&conf, text)
            .map_err(|e| LabError::io(format!("writing {}", conf.display()), e))?;
        // A configuration check first: a bad one fails here, with HAProxy's own message.
        let mut check = Command::new(HAPROXY);
        check.args(["-c", "-q", "-f"]).arg(&conf);
        let _ns = enter_netns_before_exec(&mut check, &self.node_ns(i), false)?;
        run_checked(&mut check)?;
        // -db: in the foreground, so that the process the lab records is HAProxy itself.
        let mut cmd = Command::new(HAPROXY);
        cmd.arg("-db").arg("-f").arg(&conf);
        let log = self.haproxy_log(i);
        let pid = self.spawn_daemon(Host::Node(i), Role::Haproxy, port, cmd, log)?;
        self.wait_last_ready(&self.node_ns(i))?;
        Ok(pid)
    }

    /// Stops node `i`'s HAProxy, if it runs (SIGTERM, up to 5 s, then SIGKILL), and waits until
    /// it is gone; its pid file is removed. None running is not an error.
    pub fn stop_haproxy(&mut self, i: usize) -> Result<(), LabError> {
        self.check_node(i);
        self.stop_daemon(Host::Node(i), Role::Haproxy, STOP_GRACE)
            .map(|_| ())
    }

    /// Waits until the daemon this value started last passes its probe, run in namespace `ns`
    /// (its own host's, so that no agent stands between), failing at once if it (or it alone:
    /// the others are not watched) exits, or after [`READY_TIMEOUT`], when it stays running and
    /// recorded.
    fn wait_last_ready(&mut self, ns: &str) -> Result<(), LabError> {
        let nodes = self.spec.nodes;
        let daemon = self.daemons.last_mut().expect("a daemon was just started");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match daemon.child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    return Err(not_ready(
                        daemon.what(),
                        daemon,
                        format!("exited ({status})"),
                    ));
                }
                Err(e) => return Err(not_ready(daemon.what(), daemon, format!("waitpid: {e}"))),
            }
            let last_error = match in_netns(ns, || probe(daemon, nodes))? {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                let reason = format!(
                    "no success within {} s; last probe: {last_error}",
                    READY_TIMEOUT.as_secs()
                );
                return Err(not_ready(daemon.what(), daemon, reason));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Stops `host`'s daemon of `role`, if running: SIGTERM, up to `timeout` for it to exit,
    /// then SIGKILL; removes its pid file. `None` if it was not running, else whether it exited
    /// by itself.
    fn stop_daemon(
        &mut self,
        host: Host,
        role: Role,
        timeout: Duration,
    ) -> Result<Option<bool>, LabError> {
        let Some(running) = self.running(host, role) else {
            return Ok(None);
        };
        let exited = match running {
            Running::Child(k) => {
                let mut daemon = self.daemons.remove(k);
                let what = daemon.what();
                send_signal(daemon.child.id() as i32, Signal::SIGTERM, || what.clone())?;
                let deadline = Instant::now() + timeout;
                loop {
                    match daemon.child.try_wait() {
                        Ok(Some(_)) => break true,
                        Ok(None) if Instant::now() >= deadline => {
                            let _ = daemon.child.kill();
                            daemon
                                .child
                                .wait()
                                .map_err(|e| LabError::io(format!("waiting for {what}"), e))?;
                            break false;
                        }
                        // Polled finely: a test may act the moment the daemon is gone.
                        Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                        Err(e) => return Err(LabError::io(format!("waiting for {what}"), e)),
                    }
                }
            }
            Running::Recorded(pid) => {
                let what = || format!("{}'s {}", host.name(), role.name());
                send_signal(pid, Signal::SIGTERM, what)?;
                if wait_gone(&[pid], timeout) {
                    true
                } else {
                    send_signal(pid, Signal::SIGKILL, what)?;
                    wait_gone_or_fail(pid, KILL_TIMEOUT, what, "SIGKILL")?;
                    false
                }
            }
        };
        self.remove_pid_file(host, role)?;
        Ok(Some(exited))
    }

    /// `host`'s running daemon of `role`: this value's child, or else the live process its pid
    /// file names (if that process's command line names this lab's state directory, so that a
    /// stale pid file never points at an unrelated process). Children that have exited are
    /// reaped and forgotten first.
    fn running(&mut self, host: Host, role: Role) -> Option<Running> {
        self.daemons.retain_mut(|d| {
            d.host != host || d.role != role || matches!(d.child.try_wait(), Ok(None))
        });
        if let Some(k) = self
            .daemons
            .iter()
            .position(|d| d.host == host && d.role == role)
        {
            return Some(Running::Child(k));
        }
        self.recorded_pid(host, role).map(Running::Recorded)
    }

    fn running_pid(&self, running: &Running) -> u32 {
        match *running {
            Running::Child(k) => self.daemons[k].child.id(),
            Running::Recorded(pid) => pid as u32,
        }
    }

    fn recorded_pid(&self, host: Host, role: Role) -> Option<i32> {
        let pid = recorded_pid(
            &self.host_dir(host).join(role.pid_file()),
            &state_dir_marker(&self.state_dir),
        )?;
        process_alive(pid).then_some(pid)
    }

    /// The agents' `[limits] datapath_offers` from their next start on
    /// ([`LabSpec::datapath_offers`]).
    pub fn set_datapath_offers(&mut self, on: Option<bool>) {
        self.spec.datapath_offers = on;
    }

    /// The agents' `[policy] per_request` from their next start on ([`LabSpec::per_request`]).
    pub fn set_per_request(&mut self, per_request: Option<bool>) {
        self.spec.per_request = per_request;
    }

    /// The agents' `[limits] moves_per_connection` from their next start on
    /// ([`LabSpec::moves_per_connection`]).
    pub fn set_moves_per_connection(&mut self, moves: Option<u32>) {
        self.spec.moves_per_connection = moves;
    }

    /// Restarts every agent with `policy` and waits until they are ready again: the same lab,
    /// servers and addresses under another policy (benchmarks compare policies this way).
    pub fn restart_agents(&mut self, policy: PolicyKind) -> Result<(), LabError> {
        if !self.spec.agents {
            return Ok(());
        }
        for i in 1..=self.spec.nodes {
            self.stop_agent(i)?;
        }
        self.spec.policy = policy;
        self.write_info()?;
        let exe = self.spec.resolve_exe()?;
        for i in 1..=self.spec.nodes {
            self.launch_agent(i, &exe)?;
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        self.wait_ready(Role::Agent, deadline, false, None)?;
        self.wait_ready(Role::Server, deadline, true, None)
    }

    /// Tears the lab down: stops its processes, removes its agents' datapath pins, deletes its
    /// namespaces and its state directory; says what it removed. Idempotent: a second call does
    /// nothing and reports nothing. Works on a handle ([`Lab::open`]) too.
    pub fn down(&mut self) -> Result<TeardownReport, LabError> {
        if self.finished {
            return Ok(TeardownReport::default());
        }
        self.finished = true;
        teardown(&self.spec.name, &mut self.daemons)
    }

    /// Leaves the lab running (dropping it no longer tears it down); `baton lab down` removes it.
    /// The daemons keep running (no longer this process's business: nothing waits for them).
    pub fn detach(mut self) {
        self.tear_down_on_drop = false;
    }

    /// A handle to lab `name`, built by another process (`baton lab up`) or by a [`Lab`] that was
    /// [`detach`](Lab::detach)ed: its spec, cluster key and `baton` executable come from the
    /// state directory's `lab.info`. The handle owns no process at first; it reaches the lab's
    /// daemons through their pid files, and the agents it starts become its children. Dropping
    /// it leaves the lab running; [`Lab::down`] removes the lab.
    ///
    /// Fails with [`LabError::NotFound`] if the lab has no namespaces, [`LabError::Io`] if it has
    /// no readable `lab.info` (a half-made lab: remove it with `down`), and
    /// [`LabError::InvalidSpec`] if `lab.info` does not describe lab `name`.
    pub fn open(name: &str) -> Result<Lab, LabError> {
        validate_name(name)?;
        if list_netns(&ns_name(name, "")).is_empty() {
            return Err(LabError::NotFound(name.to_string()));
        }
        let state_dir = state_dir_of(name);
        let path = state_dir.join(LAB_INFO);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| LabError::io(format!("reading {}", path.display()), e))?;
        let (spec, key) = parse_lab_info(&text)
            .map_err(|detail| LabError::InvalidSpec(format!("{}: {detail}", path.display())))?;
        if spec.name != name {
            return Err(LabError::InvalidSpec(format!(
                "{} describes lab {:?}, not {name:?}",
                path.display(),
                spec.name
            )));
        }
        spec.validate()?;
        let nodes = spec.nodes;
        Ok(Lab {
            spec,
            key,
            state_dir,
            daemons: Vec::new(),
            finished: false,
            tear_down_on_drop: false,
            members_now: nodes,
        })
    }

    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn nodes(&self) -> usize {
        self.spec.nodes
    }

    /// The cluster key written into the agents' configurations.
    pub fn cluster_key(&self) -> &str {
        &self.key
    }

    /// The address of node `i` (1-based).
    pub fn node_address(&self, i: usize) -> Ipv4Addr {
        self.check_node(i);
        node_address(i)
    }

    /// The HTTP service address of node `i`: 198.18.0.i:80.
    pub fn node_http_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.node_address(i).into(), HTTP_PORT)
    }

    /// The metrics address of node `i`'s agent: 198.18.0.i:9100.
    pub fn node_metrics_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.node_address(i).into(), METRICS_PORT)
    }

    pub fn client_ns(&self) -> String {
        ns_name(&self.spec.name, "client")
    }

    pub fn switch_ns(&self) -> String {
        ns_name(&self.spec.name, "sw")
    }

    pub fn node_ns(&self, i: usize) -> String {
        self.check_node(i);
        ns_name(&self.spec.name, &format!("n{i}"))
    }

    /// The namespace of a cache lab's origin, `baton-NAME-origin` (only cache labs have it).
    pub fn origin_ns(&self) -> String {
        ns_name(&self.spec.name, &Host::Origin.name())
    }

    /// `/run/baton/labs/NAME`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The web root shared by all nodes.
    pub fn www_dir(&self) -> PathBuf {
        self.state_dir.join("www")
    }

    /// Node `i`'s directory: configurations, logs, pid files; `dav/` is nginx's upload root,
    /// `apache-run/` Apache's runtime directory, `cache/` a cache lab's nginx cache.
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.check_node(i);
        self.state_dir.join(format!("n{i}"))
    }

    pub fn server_log(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("server.log")
    }

    /// A cache lab's origin directory (its log and pid file): `STATE_DIR/origin`.
    pub fn origin_dir(&self) -> PathBuf {
        self.state_dir.join(Host::Origin.name())
    }

    /// The origin's log.
    pub fn origin_log(&self) -> PathBuf {
        self.origin_dir().join("server.log")
    }

    pub fn agent_log(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("agent.log")
    }

    /// The pid of node `i`'s server: the one this value started, or else the live process its
    /// pid file names (a handle's lab).
    pub fn server_pid(&self, i: usize) -> Option<u32> {
        self.pid_of(Host::Node(i), Role::Server)
    }

    /// The pid of node `i`'s agent, as [`Lab::server_pid`].
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        self.pid_of(Host::Node(i), Role::Agent)
    }

    /// The pid of node `i`'s HAProxy ([`Lab::start_haproxy`]), as [`Lab::server_pid`].
    pub fn haproxy_pid(&self, i: usize) -> Option<u32> {
        self.pid_of(Host::Node(i), Role::Haproxy)
    }

    /// Node `i`'s HAProxy log (its stdout and stderr).
    pub fn haproxy_log(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("haproxy.log")
    }

    /// The pid of a cache lab's origin, as [`Lab::server_pid`]; `None` in other labs.
    pub fn origin_pid(&self) -> Option<u32> {
        if !self.spec.server.has_origin() {
            return None;
        }
        self.pid_of(Host::Origin, Role::Server)
    }

    /// The origin's HTTP address in a cache lab: [`ORIGIN_ADDRESS`]:80, reachable from every
    /// host of the lab. Panics if the lab is not a cache lab (it has no origin), as
    /// [`Lab::node_address`] does for a node the lab lacks.
    pub fn origin_addr(&self) -> SocketAddr {
        assert!(
            self.spec.server.has_origin(),
            "lab {} has no origin (its server is {})",
            self.spec.name,
            self.spec.server
        );
        SocketAddr::new(ORIGIN_ADDRESS.into(), HTTP_PORT)
    }

    /// How many responses a cache lab's origin has answered since it started: every request that
    /// reached it (the caches' misses, and anything sent to it directly), asked of its
    /// `GET /_stats` from the client namespace (which the count leaves out). Fails with
    /// [`LabError::InvalidSpec`] in a lab without origin and [`LabError::Http`] if the origin
    /// does not answer as it should.
    pub fn origin_requests(&self) -> Result<u64, LabError> {
        self.require_origin()?;
        let addr = self.origin_addr();
        let resp =
            self.in_client(|| http_get_timeout(addr, STATS_PATH, Duration::from_secs(5)))??;
        let body = String::from_utf8_lossy(&resp.body);
        match parse_stats(&body) {
            Some(n) if resp.status == 200 => Ok(n),
            _ => Err(LabError::Http(crate::http_client::HttpError::Malformed {
                addr,
                detail: format!("GET {STATS_PATH} answered {}: {body:?}", resp.status),
            })),
        }
    }

    /// How many members node `i`'s agent knows (the first ones): a late node knows every node,
    /// the others only the members of now.
    fn members_of(&self, i: usize) -> usize {
        if i > self.members_now {
            self.spec.nodes
        } else {
            self.members_now
        }
    }

    /// Makes the late nodes ([`LabSpec::late_nodes`]) members, as an operator adds nodes to a
    /// running cluster: every running agent's configuration file gets every node, and is reloaded
    /// (`baton ctl reload`); then the late nodes' agents start, and this returns once they are
    /// ready (every peer up).
    pub fn admit_late_nodes(&mut self) -> Result<(), LabError> {
        let early = self.members_now;
        if early == self.spec.nodes {
            return Ok(());
        }
        for i in 1..=early {
            let path = self.agent_config_path(i);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| LabError::io(format!("reading {}", path.display()), e))?;
            let mut config = NodeConfig::from_toml(&text).map_err(|source| LabError::Config {
                node: format!("n{i}"),
                source,
            })?;
            config.cluster.members = agent_config(&self.spec, &self.key, i)?.cluster.members;
            std::fs::write(&path, config.to_toml())
                .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
            let out = self.ctl(i, &["reload"])?;
            if !out.status.success() {
                return Err(LabError::InvalidSpec(format!(
                    "n{i}'s agent refused the reload: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        // Every running agent has every node now.
        self.members_now = self.spec.nodes;
        let exe = self.spec.resolve_exe()?;
        for i in early + 1..=self.spec.nodes {
            self.launch_agent(i, &exe)?;
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        self.wait_ready(Role::Agent, deadline, false, None)
    }

    /// Node `i`'s agent's control socket (`baton ctl --socket`): `NODE_DIR/ctl.sock`.
    pub fn control_socket(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("ctl.sock")
    }

    /// Runs `baton ctl --socket SOCKET ARGS...` against node `i`'s agent (the socket is a file:
    /// no namespace needs entering).
    pub fn ctl<S: AsRef<OsStr>>(&self, i: usize, args: &[S]) -> Result<Output, LabError> {
        let exe = self.spec.resolve_exe()?;
        Command::new(&exe)
            .arg("ctl")
            .arg("--socket")
            .arg(self.control_socket(i))
            .args(args)
            .output()
            .map_err(|e| LabError::io(format!("running {} ctl", exe.display()), e))
    }

    /// Puts node `i`'s nginx in maintenance (it answers 503 to every request) or takes it out:
    /// how tests make a server unhealthy while it still listens.
    pub fn set_maintenance(&self, i: usize, on: bool) -> Result<(), LabError> {
        if !matches!(
            self.spec.server,
            ServerKind::Nginx | ServerKind::NginxDeferred | ServerKind::Cache
        ) {
            return Err(LabError::InvalidSpec(
                "maintenance (503s) is built into the lab's nginx configuration only".into(),
            ));
        }
        let path = self.node_dir(i).join(MAINTENANCE_FILE);
        let done = if on {
            std::fs::write(&path, b"503\n")
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        };
        done.map_err(|e| LabError::io(format!("writing {}", path.display()), e))
    }

    /// Node `i`'s agent configuration file.
    pub fn agent_config_path(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("agent.toml")
    }

    /// The pid of `host`'s daemon of `role`: the one this value started, or else the live
    /// process its pid file names.
    fn pid_of(&self, host: Host, role: Role) -> Option<u32> {
        if let Host::Node(i) = host {
            self.check_node(i);
        }
        self.daemons
            .iter()
            .find(|d| d.host == host && d.role == role)
            .map(|d| d.child.id())
            .or_else(|| self.recorded_pid(host, role).map(|pid| pid as u32))
    }

    /// The directory of `host`: [`Lab::node_dir`] or [`Lab::origin_dir`].
    fn host_dir(&self, host: Host) -> PathBuf {
        match host {
            Host::Node(i) => self.node_dir(i),
            Host::Origin => self.origin_dir(),
        }
    }

    /// The network namespace of `host`.
    fn host_ns(&self, host: Host) -> String {
        match host {
            Host::Node(i) => self.node_ns(i),
            Host::Origin => self.origin_ns(),
        }
    }

    fn require_origin(&self) -> Result<(), LabError> {
        if self.spec.server.has_origin() {
            Ok(())
        } else {
            Err(LabError::InvalidSpec(format!(
                "lab {} has no origin and no caches (its server is {}, not {})",
                self.spec.name,
                self.spec.server,
                ServerKind::Cache
            )))
        }
    }

    fn check_node(&self, i: usize) {
        assert!(
            (1..=self.spec.nodes).contains(&i),
            "lab {} has nodes 1..={}, not {i}",
            self.spec.name,
            self.spec.nodes
        );
    }

    /// Runs `args` in `host`'s namespace (`client`, `sw`, `n1`.., `origin`) via `ip netns exec`,
    /// with captured output. A non-zero exit is not an error here: check `output.status`.
    pub fn exec<S: AsRef<OsStr>>(&self, host: &str, args: &[S]) -> Result<Output, LabError> {
        let mut cmd = exec_command(&self.spec.name, host, args)?;
        cmd.stdin(Stdio::null());
        cmd.output().map_err(|source| LabError::Spawn {
            cmd: crate::netns::describe(&cmd),
            source,
        })
    }

    /// Runs `f` in the client namespace.
    pub fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
        in_netns(&self.client_ns(), f)
    }

    /// Runs `f` in node `i`'s namespace.
    pub fn in_node<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
        in_netns(&self.node_ns(i), f)
    }

    /// Fetches node `i`'s agent metrics (from the client namespace) and parses them.
    pub fn scrape_metrics(&self, i: usize) -> Result<HashMap<String, f64>, LabError> {
        Ok(parse_metrics(&self.metrics_text(i)?))
    }

    /// Node `i`'s metrics exposition as its agent serves it.
    pub fn metrics_text(&self, i: usize) -> Result<String, LabError> {
        let addr = self.node_metrics_addr(i);
        self.in_client(|| scrape(addr))?.map_err(LabError::from)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.tear_down_on_drop {
            return;
        }
        if let Err(e) = self.down() {
            eprintln!("baton-lab: {e}");
        }
    }
}

/// The file in a lab's state directory that describes it (see [`lab_info`]).
pub const LAB_INFO: &str = "lab.info";

/// The text of `lab.info` for a lab built from `spec` with cluster key `key`, running `exe`:
/// one `field = value` line each for name, nodes, server, policy, agents, key, exe, cache_mb,
/// origin_delay_ms and cache_lock (`baton lab list` shows it; [`Lab::open`] reads it back with
/// [`parse_lab_info`]). A non-UTF-8 `exe` is written lossily and so will not be found again.
pub fn lab_info(spec: &LabSpec, key: &str, exe: &Path) -> String {
    format!(
        "name = {}\nnodes = {}\nserver = {}\npolicy = {}\nagents = {}\nkey = {}\nexe = {}\n\
         cache_mb = {}\norigin_delay_ms = {}\ncache_lock = {}\n",
        spec.name,
        spec.nodes,
        spec.server,
        policy_name(spec.policy),
        spec.agents,
        key,
        exe.display(),
        spec.cache_mb,
        spec.origin_delay_ms,
        spec.cache_lock
    )
}

/// Parses the text of `lab.info` ([`lab_info`]) into the lab's spec and cluster key. Every field
/// but `exe`, `cache_mb`, `origin_delay_ms` and `cache_lock` is required (labs built before those were
/// recorded have none: [`LabSpec::exe`] stays `None`, the others keep [`LabSpec::new`]'s
/// defaults, which is what such a lab, never a cache lab, ran with); unknown fields are ignored.
/// The error says which field is missing or bad.
pub fn parse_lab_info(text: &str) -> Result<(LabSpec, String), String> {
    let fields: HashMap<&str, &str> = text
        .lines()
        .filter_map(|line| line.split_once(" = "))
        .collect();
    let get = |field: &str| {
        fields
            .get(field)
            .copied()
            .ok_or_else(|| format!("no {field} field"))
    };
    let bad = |field: &str, value: &str| format!("bad {field} {value:?}");
    let name = get("name")?.to_string();
    let nodes = get("nodes")?;
    let nodes = nodes.parse::<usize>().map_err(|_| bad("nodes", nodes))?;
    let server = get("server")?.parse::<ServerKind>()?;
    let policy = parse_policy(get("policy")?)?;
    let agents = get("agents")?;
    let agents = agents.parse::<bool>().map_err(|_| bad("agents", agents))?;
    let key = get("key")?.to_string();
    let exe = fields.get("exe").map(PathBuf::from);
    let number = |field: &str, default: u64| match fields.get(field) {
        None => Ok(default),
        Some(value) => value.parse::<u64>().map_err(|_| bad(field, value)),
    };
    let cache_mb = number("cache_mb", DEFAULT_CACHE_MB)?;
    let origin_delay_ms = number("origin_delay_ms", DEFAULT_ORIGIN_DELAY_MS)?;
    let cache_lock = match fields.get("cache_lock") {
        // A cache lab of before it was recorded ran with it on.
        None => server == ServerKind::Cache,
        Some(value) => value
            .parse::<bool>()
            .map_err(|_| bad("cache_lock", value))?,
    };
    let spec = LabSpec {
        name,
        nodes,
        server,
        policy,
        agents,
        exe,
        cache_mb,
        origin_delay_ms,
        cache_lock,
        health: None,
        late_nodes: 0,
        per_request: None,
        datapath_offers: None,
        moves_per_connection: None,
    };
    Ok((spec, key))
}

/// The node a command line names: `nI` or `I`, with I from 1 (no leading zeros), as in `baton
/// lab agent ... n2 kill`. Whether the lab has that node is for [`Lab::node_named`] to say.
pub fn parse_node(s: &str) -> Option<usize> {
    let digits = s.strip_prefix('n').unwrap_or(s);
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|i| (1..=MAX_NODES).contains(i))
}

fn scrape(addr: SocketAddr) -> Result<String, crate::http_client::HttpError> {
    let resp = http_get_timeout(addr, "/metrics", Duration::from_secs(5))?;
    if resp.status != 200 {
        return Err(crate::http_client::HttpError::Malformed {
            addr,
            detail: format!("GET /metrics answered {}", resp.status),
        });
    }
    Ok(String::from_utf8_lossy(&resp.body).into_owned())
}

/// One readiness probe of daemon `d`, from the namespace the caller is in: a 200 to `GET /` on
/// its host and port (a node's server, HAProxy), to `GET /_stats` (the origin: it serves no
/// web root worth asking, and `/_stats` is not counted), or an agent's metrics showing all
/// `peers_wanted` peers up (every other member it knows).
fn probe(d: &Daemon, peers_wanted: usize) -> Result<(), String> {
    let addr = SocketAddr::new(d.host.address().into(), d.port);
    match d.role {
        Role::Server | Role::Haproxy => {
            let path = if d.host == Host::Origin {
                STATS_PATH
            } else {
                "/"
            };
            let resp: HttpResponse =
                http_get_timeout(addr, path, PROBE_TIMEOUT).map_err(|e| e.to_string())?;
            if resp.status == 200 {
                Ok(())
            } else {
                Err(format!("GET {path} answered {}", resp.status))
            }
        }
        Role::Agent => {
            let resp =
                http_get_timeout(addr, "/metrics", PROBE_TIMEOUT).map_err(|e| e.to_string())?;
            if resp.status != 200 {
                return Err(format!("GET /metrics answered {}", resp.status));
            }
            let metrics = parse_metrics(&String::from_utf8_lossy(&resp.body));
            let want = peers_wanted as f64;
            match metric_sum(&metrics, "baton_mesh_peers_up") {
                Some(v) if v == want => Ok(()),
                Some(v) => Err(format!("baton_mesh_peers_up is {v}, want {want}")),
                None => Err("no baton_mesh_peers_up in /metrics".to_string()),
            }
        }
    }
}

/// A readiness failure of `what`, with the tail of `log_of`'s log.
fn not_ready(what: String, log_of: &Daemon, reason: String) -> LabError {
    LabError::NotReady {
        what,
        reason,
        log: log_of.log.clone(),
        tail: log_tail(&log_of.log, 20),
    }
}

/// The last `lines` lines of a log file (at most 64 KiB read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return "(no log)".to_string();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let mut text = Vec::new();
    use std::io::Seek;
    if file.seek(std::io::SeekFrom::Start(start)).is_err() || file.read_to_end(&mut text).is_err() {
        return "(unreadable log)".to_string();
    }
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn random_key() -> Result<String, LabError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| LabError::io("reading /dev/urandom", e))?;
    Ok(hex::encode(bytes))
}

/// Removes the baton pins that bpffs holds under the inode number of namespace `ns`, which was
/// just created. They can only be stale: the kernel reuses the inode numbers of deleted
/// namespaces, and an agent that was killed in a namespace deleted without removing its pins
/// (not by this lab's `down`) left them under the number this namespace now has. An agent
/// starting here would otherwise find another namespace's datapath.
fn remove_stale_pins(ns: &str) -> Result<(), LabError> {
    use std::os::unix::fs::MetadataExt;
    let path = netns_path(ns);
    let inode = std::fs::metadata(&path)
        .map_err(|e| LabError::io(format!("reading {}", path.display()), e))?
        .ino();
    let inum = u32::try_from(inode).map_err(|_| {
        LabError::InvalidSpec(format!(
            "namespace {ns} has inode {inode}, beyond bpffs pin names"
        ))
    })?;
    let removed = baton_bpf::pins::remove_netns(inum).map_err(|e| {
        LabError::io(
            format!("removing stale baton pins of namespace {ns} (ns{inum})"),
            e,
        )
    })?;
    if removed > 0 {
        tracing::warn!("namespace {ns}: removed {removed} stale baton pins of ns{inum}");
    }
    Ok(())
}

/// Turns IPv6 off in a lab namespace (no router solicitations or MLD noise on the lab links).
fn disable_ipv6(ns: &str) -> Result<(), LabError> {
    in_netns(ns, || {
        for scope in ["all", "default"] {
            let path = format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6");
            match std::fs::write(&path, "1") {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LabError::io(format!("writing {path} in {ns}"), e)),
            }
        }
        Ok(())
    })?
}

/// A command that runs `args` in `host`'s namespace of lab `lab` (`ip netns exec NS ARGS...`).
/// Fails if the lab has no such host.
pub fn exec_command<S: AsRef<OsStr>>(
    lab: &str,
    host: &str,
    args: &[S],
) -> Result<Command, LabError> {
    validate_name(lab)?;
    let valid_host = host == "client"
        || host == "sw"
        || host == "origin"
        || host.strip_prefix('n').is_some_and(|n| {
            n.parse::<usize>()
                .is_ok_and(|i| (1..=MAX_NODES).contains(&i))
                && !n.starts_with('0')
        });
    let ns = ns_name(lab, host);
    if list_netns(&ns_name(lab, "")).is_empty() {
        return Err(LabError::NotFound(lab.to_string()));
    }
    if !valid_host || !netns_exists(&ns) {
        return Err(LabError::UnknownHost {
            name: lab.to_string(),
            host: host.to_string(),
        });
    }
    if args.is_empty() {
        return Err(LabError::InvalidSpec("no command to run".to_string()));
    }
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns]).args(args);
    Ok(cmd)
}

/// Tears down lab `name` whether or not this process built it (`baton lab down`). Removing a lab
/// that does not exist succeeds with an empty report.
pub fn down_by_name(name: &str) -> Result<TeardownReport, LabError> {
    validate_name(name)?;
    teardown(name, &mut [])
}

/// The names of the labs on this machine (by state directory or namespace).
pub fn list_labs() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(LABS_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    for ns in list_netns("baton-") {
        if let Some((lab, _host)) = ns["baton-".len()..].split_once('-') {
            names.push(lab.to_string());
        }
    }
    names.retain(|n| validate_name(n).is_ok());
    names.sort();
    names.dedup();
    names
}

fn teardown(name: &str, own: &mut [Daemon]) -> Result<TeardownReport, LabError> {
    let mut report = TeardownReport::default();
    let mut problems = Vec::new();
    let state_dir = state_dir_of(name);
    let namespaces = list_netns(&ns_name(name, ""));
    // (name, (device, inode)) of every namespace that can still be opened.
    let named_identities: Vec<(&String, (u64, u64))> = namespaces
        .iter()
        .filter_map(|ns| Some((ns, ns_identity(&netns_path(ns))?)))
        .collect();
    let identities: Vec<(u64, u64)> = named_identities.iter().map(|(_, id)| *id).collect();

    // Every process in the lab's namespaces; our own children; and any process named in a pid file
    // whose command line mentions the state directory (in case its namespace went away).
    let mut pids = pids_in_namespaces(&identities);
    for d in own.iter() {
        pids.push(d.child.id() as i32);
    }
    pids.extend(pids_from_files(&state_dir));
    pids.sort();
    pids.dedup();
    pids.retain(|&pid| process_alive(pid));
    report.processes = pids.len();

    signal_all(&pids, Signal::SIGTERM);
    if !wait_gone(&pids, STOP_GRACE) {
        signal_all(&pids, Signal::SIGKILL);
        if !wait_gone(&pids, Duration::from_secs(2)) {
            let left: Vec<String> = pids
                .iter()
                .filter(|&&p| process_alive(p))
                .map(|p| p.to_string())
                .collect();
            problems.push(format!(
                "processes still alive after SIGKILL: {}",
                left.join(", ")
            ));
        }
    }
    for d in own.iter_mut() {
        if !process_alive(d.child.id() as i32) {
            let _ = d.child.wait();
        }
    }

    // An agent that was SIGKILLed, or was still draining when STOP_GRACE ended, leaves its
    // datapath pinned in bpffs. Deleting the namespace destroys the interface, not the pinned
    // links and maps, which would stay in bpffs for good; they are named by the namespace's
    // inode number, known only while the namespace exists. So they go now, before the
    // namespaces, and not earlier, while an agent could still pin them again.
    for (ns, (_dev, inode)) in &named_identities {
        let removed = u32::try_from(*inode)
            .map_err(|_| format!("namespace {ns} has inode {inode}, beyond bpffs pin names"))
            .and_then(|inum| {
                baton_bpf::pins::remove_netns(inum)
                    .map_err(|e| format!("removing the baton pins of namespace {ns}: {e}"))
            });
        match removed {
            Ok(n) => report.pins += n,
            Err(problem) => problems.push(problem),
        }
    }

    for ns in &namespaces {
        match ip(&["netns", "delete", ns]) {
            Ok(()) => report.namespaces += 1,
            Err(e) => problems.push(e.to_string()),
        }
    }
    if state_dir.exists() {
        match std::fs::remove_dir_all(&state_dir) {
            Ok(()) => report.state_dir = true,
            Err(e) => problems.push(format!("removing {}: {e}", state_dir.display())),
        }
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(LabError::Teardown {
            name: name.to_string(),
            problems,
        })
    }
}

/// What the command line of a process of the lab whose state directory is `state_dir` contains.
/// With the trailing slash, lab `a` does not match lab `ab`'s paths.
fn state_dir_marker(state_dir: &Path) -> String {
    format!("{}/", state_dir.display())
}

/// The pid in pid file `path`, if its process's command line contains `marker` (it is one of
/// the lab's daemons, not a later process that reuses the pid). The process may be a zombie.
fn recorded_pid(path: &Path, marker: &str) -> Option<i32> {
    let pid = std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|&pid| pid > 0)?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains(marker)
        .then_some(pid)
}

fn pids_from_files(state_dir: &Path) -> Vec<i32> {
    let marker = state_dir_marker(state_dir);
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir(state_dir) else {
        return pids;
    };
    for node in dir.filter_map(|e| e.ok()) {
        let Ok(files) = std::fs::read_dir(node.path()) else {
            continue;
        };
        for f in files.filter_map(|e| e.ok()) {
            if f.path().extension() != Some(OsStr::new("pid")) {
                continue;
            }
            pids.extend(recorded_pid(&f.path(), &marker));
        }
    }
    pids
}

/// The error for an agent operation on a node whose agent does not run.
fn no_agent(i: usize) -> LabError {
    LabError::InvalidSpec(format!("n{i} has no running agent"))
}

/// Sends `signal` to `pid` (`what`, for the error). A process that is gone already is no error.
fn send_signal(pid: i32, signal: Signal, what: impl Fn() -> String) -> Result<(), LabError> {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(LabError::io(
            format!("sending {signal} to {} (pid {pid})", what()),
            e.into(),
        )),
    }
}

/// Waits until `pid` (`what`, sent `signal`) no longer runs, failing after `timeout`.
fn wait_gone_or_fail(
    pid: i32,
    timeout: Duration,
    what: impl Fn() -> String,
    signal: &str,
) -> Result<(), LabError> {
    if wait_gone(&[pid], timeout) {
        return Ok(());
    }
    Err(LabError::io(
        format!(
            "{} (pid {pid}) still runs {} s after {signal}",
            what(),
            timeout.as_secs()
        ),
        std::io::ErrorKind::TimedOut.into(),
    ))
}

fn signal_all(pids: &[i32], signal: Signal) {
    for &pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// Waits until none of `pids` is alive (a zombie counts as gone: it no longer runs, and its
/// sockets are closed); false if some still are after `timeout`.
fn wait_gone(pids: &[i32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|&p| !process_alive(p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
