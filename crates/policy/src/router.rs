//! Content rules and cookie affinity in front of the policies.
//!
//! A [`Router`] decides in this order: a request matching a [`Rule`] (path prefix, file extension
//! or Host) stays within the rule's group of nodes, everything else may go to any node; among
//! those, a request carrying the affinity cookie goes to the node the cookie's value names (or, if
//! it names none of them, to the one the value hashes to, so a session stays put), and any other
//! request is decided by the rule's policy, or the default policy. Rules are tried in order; the first match wins. A group with no
//! eligible node sends the request to this node (local service is always the fallback).

use serde::{Deserialize, Serialize};

use crate::{
    ClusterView, NodeState, Policy, PolicyKind, PolicyParams, RequestInfo, build, rendezvous_score,
};

/// One content rule, as configured: exactly one of `path_prefix`, `extension`, `host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Matches targets whose path starts with this (e.g. "/static/").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Matches targets whose path ends in ".<extension>" (case-insensitive, e.g. "jpg").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
    /// Matches requests for this Host (case-insensitive, port ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The node names that serve matching requests.
    pub group: Vec<String>,
    /// The policy within the group; the default policy if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyKind>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("rule {0}: give exactly one of path_prefix, extension, host")]
    Matchers(usize),
    #[error("rule {0}: the group is empty")]
    EmptyGroup(usize),
    #[error("rule {0}: {1} is not a cluster member")]
    UnknownNode(usize, String),
}

impl Rule {
    /// Checks the rule against the cluster's member names.
    pub fn validate(&self, position: usize, members: &[String]) -> Result<(), RuleError> {
        let matchers = [
            self.path_prefix.is_some(),
            self.extension.is_some(),
            self.host.is_some(),
        ];
        if matchers.iter().filter(|m| **m).count() != 1 {
            return Err(RuleError::Matchers(position));
        }
        if self.group.is_empty() {
            return Err(RuleError::EmptyGroup(position));
        }
        match self.group.iter().find(|name| !members.contains(name)) {
            Some(name) => Err(RuleError::UnknownNode(position, name.clone())),
            None => Ok(()),
        }
    }

    fn matches(&self, request: &RequestInfo) -> bool {
        let path = request.target.split(['?', '#']).next().unwrap_or("");
        if let Some(prefix) = &self.path_prefix {
            return path.starts_with(prefix.as_str());
        }
        if let Some(extension) = &self.extension {
            let last = path.rsplit('/').next().unwrap_or("");
            return last
                .rsplit_once('.')
                .is_some_and(|(_, ext)| ext.eq_ignore_ascii_case(extension));
        }
        if let Some(host) = &self.host {
            let asked = request.host.unwrap_or("");
            let asked = asked.rsplit_once(':').map_or(asked, |(name, port)| {
                if port.chars().all(|c| c.is_ascii_digit()) {
                    name
                } else {
                    asked
                }
            });
            return asked.eq_ignore_ascii_case(host);
        }
        false
    }
}

/// What the router needs of a request: what policies see, and its cookies.
#[derive(Debug, Clone, Copy)]
pub struct RoutedRequest<'a> {
    pub info: RequestInfo<'a>,
    pub cookies: &'a [(String, String)],
}

struct GroupRoute {
    rule: Rule,
    policy: Box<dyn Policy>,
}

pub struct Router {
    default: Box<dyn Policy>,
    groups: Vec<GroupRoute>,
    affinity_cookie: Option<String>,
}

impl Router {
    /// `rules` are assumed valid ([`Rule::validate`]); unknown names in a group are ignored.
    pub fn new(
        kind: PolicyKind,
        params: &PolicyParams,
        rules: &[Rule],
        affinity_cookie: Option<String>,
    ) -> Self {
        Router {
            default: build(kind, params),
            groups: rules
                .iter()
                .map(|rule| GroupRoute {
                    rule: rule.clone(),
                    policy: build(rule.policy.unwrap_or(kind), params),
                })
                .collect(),
            affinity_cookie,
        }
    }

    /// The index in `view.nodes` of the node that should serve `request`.
    pub fn route(&mut self, request: &RoutedRequest, view: &ClusterView) -> usize {
        self.route_fixed(request, view)
            .unwrap_or_else(|| self.choose_default(&request.info, view))
    }

    /// The node a rule or the affinity cookie decides, or `None` when the default policy does
    /// (a caller may then ask a cluster-wide decision maker instead: the LARD dispatcher).
    pub fn route_fixed(&mut self, request: &RoutedRequest, view: &ClusterView) -> Option<usize> {
        if view.self_index >= view.nodes.len() {
            return Some(view.self_index);
        }
        let cookie = self.affinity_cookie.as_deref().and_then(|name| {
            request
                .cookies
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        });
        match self
            .groups
            .iter_mut()
            .find(|g| g.rule.matches(&request.info))
        {
            Some(group) => Some(
                cookie
                    .and_then(|value| by_cookie(value, view, Some(&group.rule.group)))
                    .unwrap_or_else(|| within_group(group, &request.info, view)),
            ),
            None => cookie.and_then(|value| by_cookie(value, view, None)),
        }
    }

    /// The default policy's choice over the whole cluster.
    pub fn choose_default(&mut self, request: &RequestInfo, view: &ClusterView) -> usize {
        self.default.choose(request, view)
    }
}

/// The node an affinity cookie's value picks among the eligible nodes (of `group`, if given): the
/// node it names, or else the one it hashes to, so a session stays put.
fn by_cookie(value: &str, view: &ClusterView, group: Option<&[String]>) -> Option<usize> {
    let in_group = |name: &String| group.is_none_or(|g| g.contains(name));
    let candidates = || view.eligible().filter(|(_, node)| in_group(&node.name));
    if let Some((index, _)) = candidates().find(|(_, node)| node.name == value) {
        return Some(index);
    }
    candidates()
        .max_by_key(|(_, node)| (rendezvous_score(&node.name, value), &node.name))
        .map(|(index, _)| index)
}

/// Runs the group's policy on a view of the group's members only, and maps its answer back.
fn within_group(group: &mut GroupRoute, request: &RequestInfo, view: &ClusterView) -> usize {
    let members: Vec<usize> = view
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| group.rule.group.contains(&n.name))
        .map(|(i, _)| i)
        .collect();
    // The group's policy asks "as" this node if it is a member, else as the first member that is up.
    let asking = members
        .iter()
        .position(|&i| i == view.self_index)
        .or_else(|| members.iter().position(|&i| view.nodes[i].up));
    let Some(asking) = asking else {
        return view.self_index;
    };
    let nodes: Vec<NodeState> = members.iter().map(|&i| view.nodes[i].clone()).collect();
    let sub = ClusterView {
        self_index: asking,
        nodes: &nodes,
        now_ms: view.now_ms,
    };
    members
        .get(group.policy.choose(request, &sub))
        .copied()
        .unwrap_or(view.self_index)
}
