//! `baton node` configuration: one TOML file per node.
//!
//! Contract: [`NodeConfig::from_toml`] either returns a configuration that [`NodeConfig::validate`]
//! accepted (this node is a member, names and addresses are unique, the key is long enough) or a
//! [`ConfigError`] that says which field is wrong. Every field except the identity, the members and
//! the key has a default, so a minimal file is short:
//!
//! ```toml
//! [node]
//! name = "n1"
//! address = "198.18.0.1"
//! interface = "eth0"
//!
//! [cluster]
//! key = "0123456789abcdef0123456789abcdef"
//! members = [
//!   { name = "n1", address = "198.18.0.1" },
//!   { name = "n2", address = "198.18.0.2" },
//! ]
//!
//! [policy]
//! kind = "hash"
//! ```

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use baton_policy::{PolicyKind, PolicyParams, Rule};
use serde::{Deserialize, Serialize};

/// The smallest cluster key accepted, in bytes: the key authenticates every control message.
pub const MIN_KEY_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing config: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid config: {}", problems_text(.0))]
    Invalid(Vec<Problem>),
}

/// One thing wrong with a configuration that parsed: the field (`section.key`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

fn problems_text(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

impl ConfigError {
    /// Every problem with the line of `text` (1-based) that holds its field, where that can be
    /// told: what `baton node --check` prints. A parse error's line is in its own message.
    pub fn located(&self, text: &str) -> Vec<(Option<usize>, String)> {
        match self {
            ConfigError::Invalid(problems) => problems
                .iter()
                .map(|p| (line_of_field(text, &p.field), p.message.clone()))
                .collect(),
            ConfigError::Parse(e) => {
                let line = e
                    .span()
                    .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
                vec![(line, e.message().to_string())]
            }
            other => vec![(None, other.to_string())],
        }
    }
}

/// The line (1-based) where `field` (`section.key`, or a section) is set in `text`.
fn line_of_field(text: &str, field: &str) -> Option<usize> {
    // The key under its section's header (`[section]`, `[section.sub]`, `[[section.sub]]`).
    let (section, key) = field.split_once('.')?;
    let key = key.split('.').next_back()?;
    let mut in_section = false;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_start_matches('[').trim_end_matches(']').trim();
            in_section = header == section || header.starts_with(&format!("{section}."));
            if in_section && (header == field || field == section) {
                return Some(number + 1);
            }
            continue;
        }
        if in_section
            && let Some((name, _)) = line.split_once('=')
            && name.trim() == key
        {
            return Some(number + 1);
        }
    }
    None
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub cluster: ClusterSection,
    #[serde(default)]
    pub policy: PolicySection,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub health: HealthSection,
}

/// Who this node is and where it attaches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub name: String,
    /// The node's service address: clients connect to it, peers forward to it.
    pub address: Ipv4Addr,
    /// The cluster interface the eBPF programs attach to (TC ingress and egress).
    pub interface: String,
    /// The agent's local control socket (`baton ctl`): a unix socket only root may use.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Shared secret that authenticates control messages (at least [`MIN_KEY_LEN`] bytes).
    pub key: String,
    pub members: Vec<Member>,
    /// TCP ports whose connections baton distributes.
    #[serde(default = "default_service_ports")]
    pub service_ports: Vec<u16>,
    /// TCP port of the control mesh, on every member's address.
    #[serde(default = "default_control_port")]
    pub control_port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub name: String,
    /// Its service address.
    pub address: Ipv4Addr,
    /// Where its control mesh listens (a management network), if not on its service address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_address: Option<Ipv4Addr>,
}

impl Member {
    /// The address its control mesh listens on and is dialed at.
    pub fn control_addr(&self) -> Ipv4Addr {
        self.control_address.unwrap_or(self.address)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    #[serde(default)]
    pub kind: PolicyKind,
    /// Tunables of `bounded-hash`, `lard` and `lard-r` (`[policy.params]`), with defaults.
    #[serde(default)]
    pub params: PolicyParams,
    /// Content rules (`[[policy.rules]]`): path prefix, extension or Host -> a group of nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// The cookie whose value picks the node (session affinity); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_cookie: Option<String>,
    /// Whether every request of a keep-alive connection is decided on its own (the connection
    /// moves between nodes at request boundaries), or only its first. Unset: the policy's
    /// default ([`PolicySection::follows_requests`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_request: Option<bool>,
}

impl PolicySection {
    /// Whether connections follow their requests: only where the decision depends on the
    /// request (a content-blind policy would move connections for nothing). The default is the
    /// policy's: on for `hash` and `bounded-hash`, off for `lard` and `lard-r` (each followed
    /// request costs a round trip to the dispatcher).
    pub fn follows_requests(&self) -> bool {
        let content_aware = !matches!(
            self.kind,
            PolicyKind::Local | PolicyKind::RoundRobin | PolicyKind::LeastConn
        ) || !self.rules.is_empty()
            || self.affinity_cookie.is_some();
        // LARD asks its dispatcher for every request it follows (a round trip each): only
        // when asked for.
        content_aware
            && self.per_request.unwrap_or(matches!(
                self.kind,
                PolicyKind::Hash | PolicyKind::BoundedHash
            ))
    }
}

/// Bounds on what a node holds while it decides, and on how long state may live.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head held before deciding; a larger head is served locally.
    pub head_bytes: usize,
    /// Most client segments held for one connection before deciding.
    pub hold_segments: usize,
    /// Longest time a connection is held waiting for its request head.
    pub hold_ms: u64,
    /// Longest wait for a peer's answer to a handoff request before serving locally.
    pub handoff_timeout_ms: u64,
    /// Longest wait for the LARD dispatcher's decision before bounded-hash decides instead.
    pub dispatch_timeout_ms: u64,
    /// On stop, longest wait for the connections that need the datapath (held, handed in,
    /// forwarded) to finish before it is removed.
    pub drain_timeout_ms: u64,
    /// A forwarding or translating entry with no packet for this long is removed.
    pub idle_timeout_s: u64,
    /// How long an entry lingers after both sides closed (late retransmissions still translate).
    pub close_linger_ms: u64,
    /// Interval between heartbeats (load and liveness reports) on the control mesh; a peer not
    /// heard for five of them is down.
    pub heartbeat_ms: u64,
    /// A handed-in connection whose client has sent nothing for this long is freed (the server's
    /// socket closed) when its FE's agent has been unheard as long, or when the server is sending
    /// to a client that no longer answers. An FE whose agent is down keeps forwarding (its
    /// datapath outlives it): set this above how long an FE's agent may stay down while idle
    /// connections through it must survive.
    pub orphan_timeout_s: u64,
    /// Most times one connection moves between nodes (`[policy] per_request`); after that its
    /// requests are served where it is.
    pub moves_per_connection: u32,
    /// Whether this node's datapath hands connections off by itself where it decides them
    /// (`hash`, first requests): it offers them to peers' datapaths and takes theirs, with no
    /// agent on the handoff's path. Off: every handoff goes by the agents' control mesh.
    pub datapath_offers: bool,
    /// How late a deadline that bounds a failure (an offer unanswered, a linger over) may fire,
    /// so that at thousands of connections a second their timers share the agent's wakeups.
    /// Deadlines on a request's path are exact. At most an eighth of `handoff_timeout_ms`.
    pub timer_slack_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_bytes: 8192,
            hold_segments: 32,
            hold_ms: 2000,
            handoff_timeout_ms: 1000,
            dispatch_timeout_ms: 50,
            drain_timeout_ms: 3_600_000,
            idle_timeout_s: 600,
            close_linger_ms: 2000,
            heartbeat_ms: 250,
            orphan_timeout_s: 60,
            moves_per_connection: 1000,
            datapath_offers: true,
            timer_slack_ms: 8,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[derive(Default)]
pub struct MetricsSection {
    /// Where the Prometheus text endpoint (`/metrics`) listens; `None` disables it.
    pub listen: Option<SocketAddr>,
}

/// How the node watches its own server, besides its listener (which is always watched): an HTTP
/// check as HAProxy's `check inter 2s rise 2 fall 3`. A node whose server fails `fall` checks in
/// a row tells its peers it is not serving (they choose it for nothing new) until it passes
/// `rise` in a row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    /// The path of the HTTP check (`GET path` on the node's service address); none: no HTTP
    /// check. A 2xx or 3xx answer within `timeout_ms` passes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The port checked; by default the first service port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
}

impl Default for HealthSection {
    fn default() -> Self {
        HealthSection {
            path: None,
            port: None,
            interval_ms: 2000,
            timeout_ms: 1000,
            rise: 2,
            fall: 3,
        }
    }
}

/// Where `baton node` listens for `baton ctl` unless configured otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/baton/baton.sock";

fn default_control_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}

fn default_service_ports() -> Vec<u16> {
    vec![80]
}

fn default_control_port() -> u16 {
    7070
}

impl NodeConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: NodeConfig = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config always serializes")
    }

    /// Checks what the types cannot: every problem found, each with its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push(Problem {
                field: field.to_string(),
                message,
            })
        };
        if self.cluster.key.len() < MIN_KEY_LEN {
            problem(
                "cluster.key",
                format!("cluster.key must be at least {MIN_KEY_LEN} bytes"),
            );
        }
        if self.limits.timer_slack_ms > self.limits.handoff_timeout_ms / 8 {
            problem(
                "limits.timer_slack_ms",
                format!(
                    "limits.timer_slack_ms ({}) must be at most an eighth of limits.handoff_timeout_ms ({})",
                    self.limits.timer_slack_ms, self.limits.handoff_timeout_ms
                ),
            );
        }
        if self.cluster.members.is_empty() {
            problem("cluster.members", "cluster.members is empty".into());
        }
        if self.cluster.service_ports.is_empty() {
            problem(
                "cluster.service_ports",
                "cluster.service_ports is empty".into(),
            );
        }
        if self
            .cluster
            .service_ports
            .contains(&self.cluster.control_port)
        {
            problem(
                "cluster.control_port",
                "cluster.control_port is also a service port".into(),
            );
        }
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        for m in &self.cluster.members {
            if !names.insert(m.name.as_str()) {
                problem(
                    "cluster.members",
                    format!("cluster.members: name {} appears twice", m.name),
                );
            }
            if !addresses.insert(m.address) {
                problem(
                    "cluster.members",
                    format!("cluster.members: address {} appears twice", m.address),
                );
            }
        }
        let is_me = |m: &Member| m.name == self.node.name && m.address == self.node.address;
        if !self.cluster.members.iter().any(is_me) {
            problem(
                "node.name",
                format!(
                    "node {} ({}) is not among cluster.members",
                    self.node.name, self.node.address
                ),
            );
        }
        let names: Vec<String> = self
            .cluster
            .members
            .iter()
            .map(|m| m.name.clone())
            .collect();
        for (position, rule) in self.policy.rules.iter().enumerate() {
            if let Err(e) = rule.validate(position, &names) {
                problem("policy.rules", format!("policy.rules: {e}"));
            }
        }
        let params = &self.policy.params;
        if !(100..=10_000).contains(&params.balance_factor) {
            problem(
                "policy.params.balance_factor",
                "policy.params.balance_factor must be 100..=10000 (percent of the mean load)"
                    .into(),
            );
        }
        if params.lard_low >= params.lard_high {
            problem(
                "policy.params.lard_low",
                "policy.params.lard_low must be below lard_high".into(),
            );
        }
        if self.limits.head_bytes == 0 {
            problem(
                "limits.head_bytes",
                "limits.head_bytes must be positive".into(),
            );
        }
        if self.limits.hold_segments == 0 {
            problem(
                "limits.hold_segments",
                "limits.hold_segments must be positive".into(),
            );
        }
        let health = &self.health;
        if let Some(path) = &health.path
            && (!path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f))
        {
            problem(
                "health.path",
                format!(
                    "health.path {path:?} must start with / and hold no spaces or control \
                     characters"
                ),
            );
        }
        for (field, value) in [
            ("health.interval_ms", health.interval_ms),
            ("health.timeout_ms", health.timeout_ms),
            ("health.rise", u64::from(health.rise)),
            ("health.fall", u64::from(health.fall)),
        ] {
            if value == 0 {
                problem(field, format!("{field} must be positive"));
            }
        }
        problems
    }

    /// A digest of what every member must agree on: the members (in order: LARD's dispatcher
    /// answers name members by index), the ports and the policy. Members exchange it; a
    /// disagreement is a warning, not an error (it is normal while a change rolls out).
    pub fn cluster_digest(&self) -> u64 {
        use sha2::{Digest, Sha256};
        #[derive(Serialize)]
        struct Agreed<'a> {
            members: &'a [Member],
            service_ports: &'a [u16],
            control_port: u16,
            policy: &'a PolicySection,
        }
        let agreed = Agreed {
            members: &self.cluster.members,
            service_ports: &self.cluster.service_ports,
            control_port: self.cluster.control_port,
            policy: &self.policy,
        };
        let text = toml::to_string(&agreed).expect("the agreed fields always serialize");
        let hash = Sha256::digest(text.as_bytes());
        u64::from_be_bytes(hash[..8].try_into().expect("a SHA-256 has 8 bytes"))
    }

    /// This node's member entry (validated to exist).
    pub fn me(&self) -> &Member {
        &self.cluster.members[self.self_index()]
    }

    /// This node's index in `cluster.members` (validated to exist).
    pub fn self_index(&self) -> usize {
        self.cluster
            .members
            .iter()
            .position(|m| m.name == self.node.name)
            .expect("validate() checked membership")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[node]
name = "n1"
address = "198.18.0.1"
interface = "eth0"

[cluster]
key = "0123456789abcdef0123456789abcdef"
members = [
  { name = "n1", address = "198.18.0.1" },
  { name = "n2", address = "198.18.0.2" },
]

[policy]
kind = "hash"
"#;

    #[test]
    fn minimal_file_gets_defaults() {
        let c = NodeConfig::from_toml(MINIMAL).unwrap();
        assert_eq!(c.cluster.service_ports, vec![80]);
        assert_eq!(c.cluster.control_port, 7070);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.policy.kind, PolicyKind::Hash);
        assert_eq!(c.self_index(), 0);
    }

    #[test]
    fn round_trips_through_toml() {
        let c = NodeConfig::from_toml(MINIMAL).unwrap();
        assert_eq!(NodeConfig::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn the_readme_example_is_a_valid_configuration() {
        let readme = include_str!("../../../README.md");
        let start =
            readme.find("```toml\n").expect("README has a TOML example") + "```toml\n".len();
        let end = start + readme[start..].find("```").expect("the example ends");
        let config = NodeConfig::from_toml(&readme[start..end])
            .expect("the README's example parses and validates");
        assert_eq!(config.node.name, "n1");
        assert_eq!(config.policy.rules.len(), 1);
    }

    #[test]
    fn rules_and_affinity_parse_and_are_checked() {
        let with_rules = format!(
            "{MINIMAL}\naffinity_cookie = \"SRV\"\n[[policy.rules]]\npath_prefix = \"/static/\"\ngroup = [\"n2\"]\npolicy = \"round-robin\"\n"
        );
        let c = NodeConfig::from_toml(&with_rules).unwrap();
        assert_eq!(c.policy.rules.len(), 1);
        assert_eq!(c.policy.affinity_cookie.as_deref(), Some("SRV"));
        assert_eq!(NodeConfig::from_toml(&c.to_toml()).unwrap(), c);
        let bad = with_rules.replace("group = [\"n2\"]", "group = [\"n7\"]");
        assert!(matches!(
            NodeConfig::from_toml(&bad),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn the_control_mesh_may_use_a_management_address() {
        let text = MINIMAL.replace(
            "{ name = \"n2\", address = \"198.18.0.2\" }",
            "{ name = \"n2\", address = \"198.18.0.2\", control_address = \"198.19.0.2\" }",
        );
        let c = NodeConfig::from_toml(&text).unwrap();
        assert_eq!(
            c.me().control_addr(),
            "198.18.0.1".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            c.cluster.members[1].control_addr(),
            "198.19.0.2".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(NodeConfig::from_toml(&c.to_toml()).unwrap(), c);
        assert_ne!(
            c.cluster_digest(),
            NodeConfig::from_toml(MINIMAL).unwrap().cluster_digest(),
            "where peers are dialed is part of what members agree on"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_field_and_line() {
        let broken = MINIMAL
            .replace("0123456789abcdef0123456789abcdef", "short")
            .replace(
                "kind = \"hash\"",
                "kind = \"hash\"\n[health]\npath = \"no-slash\"\nfall = 0",
            );
        let text = broken.as_str();
        let e = NodeConfig::from_toml(text).unwrap_err();
        let located = e.located(text);
        let line = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        assert_eq!(
            located,
            vec![
                (
                    Some(line("key = \"short\"")),
                    "cluster.key must be at least 16 bytes".to_string()
                ),
                (
                    Some(line("path = ")),
                    "health.path \"no-slash\" must start with / and hold no spaces or control \
                     characters"
                        .to_string()
                ),
                (
                    Some(line("fall = 0")),
                    "health.fall must be positive".to_string()
                ),
            ]
        );
        let unparsable = MINIMAL.replace("interface = \"eth0\"", "interface = eth0");
        let e = NodeConfig::from_toml(&unparsable).unwrap_err();
        let located = e.located(&unparsable);
        assert_eq!(located.len(), 1);
        assert_eq!(located[0].0, Some(line_in(&unparsable, "interface = eth0")));
    }

    fn line_in(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).unwrap() + 1
    }

    #[test]
    fn rejects_non_member_short_key_and_duplicates() {
        let not_member = MINIMAL.replace("name = \"n1\"\naddress", "name = \"n9\"\naddress");
        assert!(matches!(
            NodeConfig::from_toml(&not_member),
            Err(ConfigError::Invalid(_))
        ));
        let short_key = MINIMAL.replace("0123456789abcdef0123456789abcdef", "short");
        assert!(matches!(
            NodeConfig::from_toml(&short_key),
            Err(ConfigError::Invalid(_))
        ));
        let dup = MINIMAL.replace(
            "name = \"n2\", address = \"198.18.0.2\"",
            "name = \"n2\", address = \"198.18.0.1\"",
        );
        assert!(matches!(
            NodeConfig::from_toml(&dup),
            Err(ConfigError::Invalid(_))
        ));
        let unknown = format!("{MINIMAL}\n[bogus]\nx = 1\n");
        assert!(matches!(
            NodeConfig::from_toml(&unknown),
            Err(ConfigError::Parse(_))
        ));
    }
}
