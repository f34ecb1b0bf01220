//! Content rules and cookie affinity in front of the policies.

use baton_policy::router::RuleError;
use baton_policy::{
    ClusterView, NodeState, PolicyKind, PolicyParams, RequestInfo, RoutedRequest, Router, Rule,
};

fn cluster(up: &[bool]) -> Vec<NodeState> {
    up.iter()
        .enumerate()
        .map(|(i, &up)| NodeState {
            name: format!("n{}", i + 1),
            up,
            load: 0,
        })
        .collect()
}

fn rule(matcher: &str, value: &str, group: &[&str]) -> Rule {
    Rule {
        path_prefix: (matcher == "prefix").then(|| value.to_string()),
        extension: (matcher == "ext").then(|| value.to_string()),
        host: (matcher == "host").then(|| value.to_string()),
        group: group.iter().map(|s| s.to_string()).collect(),
        policy: None,
    }
}

fn route(
    router: &mut Router,
    target: &str,
    host: Option<&str>,
    cookies: &[(String, String)],
    nodes: &[NodeState],
) -> usize {
    let request = RoutedRequest {
        info: RequestInfo {
            method: "GET",
            target,
            host,
        },
        cookies,
    };
    router.route(
        &request,
        &ClusterView {
            self_index: 0,
            nodes,
            now_ms: 0,
        },
    )
}

#[test]
fn rules_send_matching_requests_to_their_group_only() {
    let rules = [
        rule("prefix", "/static/", &["n3", "n4"]),
        rule("ext", "JPG", &["n2"]),
        rule("host", "api.example.com", &["n4"]),
    ];
    let mut router = Router::new(PolicyKind::Hash, &PolicyParams::default(), &rules, None);
    let nodes = cluster(&[true; 4]);
    for i in 0..200 {
        let chosen = route(&mut router, &format!("/static/{i}.css"), None, &[], &nodes);
        assert!(
            chosen == 2 || chosen == 3,
            "/static/ went to n{}",
            chosen + 1
        );
    }
    assert_eq!(
        route(&mut router, "/img/a.jpg?size=2", None, &[], &nodes),
        1,
        "extension, any case, query ignored"
    );
    assert_eq!(
        route(&mut router, "/static/a.jpg", None, &[], &nodes) / 2,
        1,
        "first matching rule wins"
    );
    assert_eq!(
        route(
            &mut router,
            "/v1/items",
            Some("API.example.com:8080"),
            &[],
            &nodes
        ),
        3,
        "host, port ignored"
    );
    // Everything else: the default policy over the whole cluster.
    let all: std::collections::HashSet<usize> = (0..200)
        .map(|i| route(&mut router, &format!("/p/{i}"), None, &[], &nodes))
        .collect();
    assert_eq!(all.len(), 4);
}

#[test]
fn a_group_that_is_down_falls_back_to_this_node() {
    let mut router = Router::new(
        PolicyKind::Hash,
        &PolicyParams::default(),
        &[rule("prefix", "/x/", &["n2", "n3"])],
        None,
    );
    let nodes = cluster(&[true, false, true]);
    for i in 0..50 {
        assert_eq!(
            route(&mut router, &format!("/x/{i}"), None, &[], &nodes),
            2,
            "only n3 of the group is up"
        );
    }
    let nodes = cluster(&[true, false, false]);
    assert_eq!(
        route(&mut router, "/x/1", None, &[], &nodes),
        0,
        "no member up: served here"
    );
}

#[test]
fn the_affinity_cookie_decides_and_stays_put() {
    let mut router = Router::new(
        PolicyKind::RoundRobin,
        &PolicyParams::default(),
        &[],
        Some("SRV".into()),
    );
    let nodes = cluster(&[true, true, true]);
    let named = [("SRV".to_string(), "n3".to_string())];
    for _ in 0..5 {
        assert_eq!(route(&mut router, "/", None, &named, &nodes), 2);
    }
    let session = [
        ("other".to_string(), "x".to_string()),
        ("SRV".to_string(), "s-1234".to_string()),
    ];
    let first = route(&mut router, "/", None, &session, &nodes);
    for _ in 0..5 {
        assert_eq!(
            route(&mut router, "/a", None, &session, &nodes),
            first,
            "a session value keeps its node"
        );
    }
    // The named node is down: the value hashes to one that is up.
    let down = cluster(&[true, true, false]);
    assert_ne!(route(&mut router, "/", None, &named, &down), 2);
}

#[test]
fn rules_are_validated_against_the_members() {
    let members: Vec<String> = ["n1", "n2"].iter().map(|s| s.to_string()).collect();
    assert_eq!(rule("prefix", "/a", &["n1"]).validate(0, &members), Ok(()));
    assert_eq!(
        rule("prefix", "/a", &["n9"]).validate(1, &members),
        Err(RuleError::UnknownNode(1, "n9".into()))
    );
    assert_eq!(
        rule("prefix", "/a", &[]).validate(2, &members),
        Err(RuleError::EmptyGroup(2))
    );
    let mut two = rule("prefix", "/a", &["n1"]);
    two.host = Some("h".into());
    assert_eq!(two.validate(3, &members), Err(RuleError::Matchers(3)));
}

#[test]
fn the_affinity_cookie_stays_within_a_rules_group() {
    let rules = [rule("prefix", "/cgi/", &["n2", "n3"])];
    let mut router = Router::new(
        PolicyKind::Hash,
        &PolicyParams::default(),
        &rules,
        Some("SRV".into()),
    );
    let nodes = cluster(&[true, true, true]);
    let to_n1 = [("SRV".to_string(), "n1".to_string())];
    let chosen = route(&mut router, "/cgi/run", None, &to_n1, &nodes);
    assert!(
        chosen == 1 || chosen == 2,
        "a cookie cannot take /cgi/ out of its group (got n{})",
        chosen + 1
    );
    assert_eq!(
        route(&mut router, "/cgi/run", None, &to_n1, &nodes),
        chosen,
        "and it stays put"
    );
    let to_n3 = [("SRV".to_string(), "n3".to_string())];
    assert_eq!(
        route(&mut router, "/cgi/run", None, &to_n3, &nodes),
        2,
        "a member it names is honoured"
    );
    assert_eq!(
        route(&mut router, "/other", None, &to_n1, &nodes),
        0,
        "outside rules it names any node"
    );
}
