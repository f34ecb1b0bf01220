//! End to end: datapath offers. Where the FE's datapath decides a request itself (`hash`, no
//! rules, no cookie, `[policy] per_request = false`), it hands the connection to the chosen node
//! with no agent on the path: the first data segment goes to the BE with an offer header, the
//! BE's datapath replays the SYN into its own TCP and then the segment (crates/bpf/c/lib/offer.h).
//! Real labs of three nodes, real agents and datapaths, nginx (also with deferred accept) and
//! Debian's Apache; clients in the lab's client namespace, every request on a fresh connection
//! to n1. Needs root, eBPF, nginx, apache2 and nftables; a missing piece fails the test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use baton_lab::content::lab_file;
use baton_lab::http_client::http_get_timeout;
use baton_lab::{Lab, LabSpec, ServerKind};
use baton_policy::PolicyKind;

mod common;
use common::{socket_on_port, wait_until};

const BATON: &str = env!("CARGO_BIN_EXE_baton");
const NAMES: [&str; 3] = ["n1", "n2", "n3"];

const OFFERS: &str = "baton_datapath_offers_total";
const TAKEN: &str = "baton_datapath_offers_taken_total";
const REFUSED: &str = "baton_datapath_offers_refused_total";
const RETURNED: &str = "baton_datapath_offers_returned_total";
const HANDOFFS_OUT: &str = "baton_handoffs_out_total";
const HANDOFFS_IN: &str = "baton_handoffs_in_total";
const FALLBACKS: &str = "baton_handoff_fallbacks_total";
const DECIDED_LOCAL: &str = "baton_datapath_decided_local_total";

/// How long the cluster may take to learn that a node's server stopped or started listening
/// (as handoff.rs: the agent looks every 250 ms round and tells its peers in that round's
/// heartbeat): a generous bound.
const LISTENER_NEWS: Duration = Duration::from_secs(3);
/// How long a response may take on a lossless link: a fresh connection, one request, no
/// retransmission expected (a lost packet would cost at least the 200 ms minimum RTO, a dropped
/// SYN a second).
const PROMPT: Duration = Duration::from_secs(3);

/// A lab of three nodes with `server`, `hash`, no request following; `offers`: the agents'
/// `[limits] datapath_offers` (`None`: their default). Its name starts with `prefix` (`dpo…`)
/// whatever `$BATON_LAB_PREFIX` says; dropping it tears it down.
fn lab(prefix: &str, server: ServerKind, offers: Option<bool>) -> Lab {
    let mut spec = LabSpec::new(baton_lab::lab::unique_name_under("", prefix), 3)
        .server(server)
        .policy(PolicyKind::Hash)
        .per_request(false)
        .exe(BATON);
    if let Some(on) = offers {
        spec = spec.datapath_offers(on);
    }
    Lab::up(spec).expect("lab up (needs root, iproute2, the server binary)")
}

/// `count` distinct targets for `path` that `hash` gives to `node` (1-based) of n1..n3.
fn targets(path: &str, node: usize, count: usize, salt: &str) -> Vec<String> {
    (0..)
        .map(|k| format!("{path}?{salt}={k}"))
        .filter(|t| baton_policy::Hash::node_for(t, &NAMES) == node - 1)
        .take(count)
        .collect()
}

/// The node (1-based) `hash` gives `target` while `absent` is not chosen.
fn node_without(target: &str, absent: usize) -> usize {
    let names: Vec<&str> = (1..=3)
        .filter(|&i| i != absent)
        .map(|i| NAMES[i - 1])
        .collect();
    let at = baton_policy::Hash::node_for(target, &names);
    names[at][1..].parse().unwrap()
}

/// Every node's metrics at one moment.
struct Counts(Vec<HashMap<String, f64>>);

impl Counts {
    fn take(lab: &Lab) -> Counts {
        Counts(
            (1..=lab.nodes())
                .map(|i| lab.scrape_metrics(i).expect("scrape metrics"))
                .collect(),
        )
    }

    /// Node `node`'s `name`: every series of it summed, or exactly the series `name{…}` names.
    fn get(&self, node: usize, name: &str) -> f64 {
        baton_lab::metrics::metric_sum(&self.0[node - 1], name).unwrap_or(0.0)
    }
}

fn metric(lab: &Lab, node: usize, name: &str) -> f64 {
    let m = lab.scrape_metrics(node).expect("scrape metrics");
    baton_lab::metrics::metric_sum(&m, name).unwrap_or(0.0)
}

/// How much node `node`'s `name` moved since `before`.
fn delta(lab: &Lab, before: &Counts, node: usize, name: &str) -> f64 {
    metric(lab, node, name) - before.get(node, name)
}

fn fallback(reason: &str) -> String {
    format!("{FALLBACKS}{{reason=\"{reason}\"}}")
}

/// What a failing assertion prints: every node's offer, handoff, fallback, refusal and drop
/// counters that are not zero, and the last lines of its agent's log.
fn report(lab: &Lab, what: &str) -> String {
    let mut out = format!("{what}\n");
    for i in 1..=lab.nodes() {
        let mut series: Vec<String> = lab
            .scrape_metrics(i)
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, v)| {
                *v != 0.0
                    && [
                        "datapath_",
                        "handoff",
                        "fallbacks",
                        "refused",
                        "dropped_packets",
                        "peers_up",
                        "handed_in_active",
                        "connections_local",
                    ]
                    .iter()
                    .any(|word| k.contains(word))
                    && !k.contains("duration")
            })
            .map(|(k, v)| format!("  {k} {v}"))
            .collect();
        series.sort();
        out.push_str(&format!(
            "n{i}:\n{}\n{}\n",
            series.join("\n"),
            baton_lab::lab::log_tail(&lab.agent_log(i), 12)
        ));
    }
    out
}

/// One GET on a fresh connection (`Connection: close`).
struct Got {
    target: String,
    /// (status, X-Served-By, whether the body is the file byte for byte), or the error.
    result: Result<(u16, String, bool), String>,
    took: Duration,
    /// When it was sent, from the start of its batch.
    sent: Duration,
}

fn get_one(addr: SocketAddr, target: &str, timeout: Duration, start: Instant) -> Got {
    let sent = start.elapsed();
    let begun = Instant::now();
    let path = target.split('?').next().unwrap_or(target);
    let result = http_get_timeout(addr, target, timeout)
        .map(|r| {
            let body_ok = lab_file(path).is_some_and(|want| r.body == want);
            (r.status, r.served_by().unwrap_or("?").to_string(), body_ok)
        })
        .map_err(|e| e.to_string());
    Got {
        target: target.to_string(),
        result,
        took: begun.elapsed(),
        sent,
    }
}

/// Each of `targets` from n1 on a fresh connection, `workers` at a time, from the client; each
/// bounded by `timeout`. In the order of `targets`.
fn fetch(lab: &Lab, targets: &[String], workers: usize, timeout: Duration) -> Vec<Got> {
    let addr = lab.node_http_addr(1);
    let targets = targets.to_vec();
    lab.in_client(move || {
        let start = Instant::now();
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Got>>> =
            Mutex::new((0..targets.len()).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(target) = targets.get(i) else { break };
                        let got = get_one(addr, target, timeout, start);
                        results.lock().unwrap()[i] = Some(got);
                    }
                });
            }
        });
        results
            .into_inner()
            .unwrap()
            .into_iter()
            .map(|g| g.expect("every target fetched"))
            .collect()
    })
    .expect("run in the client namespace")
}

/// Every response a 200 with the file's bytes, from a node `allowed` accepts, within `limit`.
fn check(
    lab: &Lab,
    got: &[Got],
    allowed: impl Fn(&Got, usize) -> bool,
    limit: Duration,
    what: &str,
) {
    let wrong: Vec<String> = got
        .iter()
        .filter_map(|g| {
            let t = format!("{} (sent at {:?}, took {:?})", g.target, g.sent, g.took);
            match &g.result {
                Err(e) => Some(format!("{t}: {e}")),
                Ok((status, by, body_ok)) => {
                    let node = by
                        .strip_prefix('n')
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    (*status != 200 || !body_ok || !allowed(g, node) || g.took > limit)
                        .then(|| format!("{t}: {status} from {by}, body ok {body_ok}"))
                }
            }
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{}",
        report(
            lab,
            &format!(
                "{what}: {} of {} requests wrong:\n{}",
                wrong.len(),
                got.len(),
                wrong.join("\n")
            )
        )
    );
}

/// The node that served `g` (0 if unknown or failed).
fn served_by(g: &Got) -> usize {
    match &g.result {
        Ok((_, by, _)) => by
            .strip_prefix('n')
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// Every node's datapath holds no connection any more (`baton ctl conns`, read from the tables
/// themselves) and no agent serves a handed-in one, within `within` (the close linger is 2 s).
fn assert_drained(lab: &Lab, within: Duration) {
    let started = Instant::now();
    let mut left = Vec::new();
    let drained = wait_until(within, || {
        left.clear();
        for i in 1..=lab.nodes() {
            let out = lab.ctl(i, &["conns"]).expect("baton ctl conns");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let empty = text.lines().any(|l| l.trim() == "0 connections");
            let active = metric(lab, i, "baton_handed_in_active");
            if !empty || active != 0.0 {
                left.push(format!("n{i} (handed_in_active {active}):\n{text}"));
            }
        }
        left.is_empty()
    });
    assert!(
        drained,
        "{}",
        report(
            lab,
            &format!("connections left {within:?} after:\n{}", left.join("\n"))
        )
    );
    eprintln!("tables drained in {:?}", started.elapsed());
}

/// Targets for every node, sizes 1 KB, 100 KB and 10 MB, interleaved so that the nodes
/// alternate: (target, its node).
fn spread_plan(salt: &str) -> Vec<(String, usize)> {
    const SIZES: [(&str, usize); 3] = [("/f/1k", 6), ("/f/100k", 5), ("/f/10m", 1)];
    let per_node: Vec<Vec<(String, usize)>> = (1..=3)
        .map(|node| {
            SIZES
                .iter()
                .flat_map(|(path, n)| targets(path, node, *n, salt))
                .map(|t| (t, node))
                .collect()
        })
        .collect();
    let rounds = per_node.iter().map(Vec::len).max().unwrap_or(0);
    (0..rounds)
        .flat_map(|r| per_node.iter().filter_map(move |v| v.get(r).cloned()))
        .collect()
}

/// Fresh connections to n1 for targets of every node: each answered by its target's node, byte
/// for byte; handed off by the datapaths (`offers`) or by the agents; then the tables drain.
fn spread_suite(lab: &Lab, salt: &str, offers: bool) {
    let plan = spread_plan(salt);
    let to = |node: usize| plan.iter().filter(|(_, n)| *n == node).count() as f64;
    let away = to(2) + to(3);
    assert!(plan.len() >= 30 && to(1) > 0.0 && to(2) > 0.0 && to(3) > 0.0);
    end_time_waits(lab);
    settle(lab);
    let before = Counts::take(lab);
    let list: Vec<String> = plan.iter().map(|(t, _)| t.clone()).collect();
    let got = fetch(lab, &list, 1, Duration::from_secs(20));
    let want: HashMap<&str, usize> = plan.iter().map(|(t, n)| (t.as_str(), *n)).collect();
    check(
        lab,
        &got,
        |g, by| want[g.target.as_str()] == by,
        Duration::from_secs(10),
        "each target served by its node",
    );

    // The BE's agent says Accepted through the mesh after the fact.
    let accepted = wait_until(Duration::from_secs(2), || {
        delta(lab, &before, 1, HANDOFFS_OUT) >= away
            && (2..=3).all(|i| delta(lab, &before, i, HANDOFFS_IN) >= to(i))
    });
    let counts =
        |name: &str| -> Vec<f64> { (1..=3).map(|i| delta(lab, &before, i, name)).collect() };
    let summary = format!(
        "{away} of {} handed away ({} to n2, {} to n3); moved: offers {:?}, taken {:?}, \
         refused {:?}, returned {:?}, handoffs out {:?}, in {:?}, fallbacks {:?}, decided local {:?}",
        plan.len(),
        to(2),
        to(3),
        counts(OFFERS),
        counts(TAKEN),
        counts(REFUSED),
        counts(RETURNED),
        counts(HANDOFFS_OUT),
        counts(HANDOFFS_IN),
        counts(FALLBACKS),
        counts(DECIDED_LOCAL),
    );
    eprintln!("{summary}");
    assert!(
        accepted,
        "{}",
        report(
            lab,
            &format!("Accepted did not arrive within 2 s: {summary}")
        )
    );
    let fail = |what: &str| report(lab, &format!("{what}: {summary}"));
    // How far `name` moved at `node` since `before`: `want`, or the report says which.
    let moved = |node: usize, name: &str, want: f64, what: &str| {
        assert_eq!(delta(lab, &before, node, name), want, "{}", fail(what))
    };
    moved(1, HANDOFFS_OUT, away, "n1 handed out");
    for i in 2..=3 {
        moved(i, HANDOFFS_IN, to(i), "handed in");
    }
    moved(1, FALLBACKS, 0.0, "n1 fell back");
    if offers {
        moved(1, OFFERS, away, "n1's datapath offers");
        for i in 2..=3 {
            moved(i, TAKEN, to(i), "offers taken");
        }
        let refused: f64 = (1..=3).map(|i| delta(lab, &before, i, REFUSED)).sum();
        assert_eq!(refused, 0.0, "{}", fail("offers refused"));
        moved(1, RETURNED, 0.0, "offers returned");
        moved(
            1,
            DECIDED_LOCAL,
            to(1),
            "n1's datapath released its own targets itself",
        );
        // n1's TCP keeps no half-open side of what it handed away: its datapath ended each as
        // the client acknowledged the BE's bytes (the agent would only as its entry expires,
        // 2 s after the close).
        let half_open = half_open_at(lab, 1);
        assert_eq!(
            half_open,
            0,
            "{}",
            fail("n1's TCP holds half-open connections")
        );
    } else {
        for i in 1..=3 {
            for name in [OFFERS, TAKEN, REFUSED, RETURNED] {
                assert_eq!(
                    metric(lab, i, name),
                    0.0,
                    "{}",
                    fail(&format!("n{i} {name} with datapath_offers = false"))
                );
            }
        }
    }
    assert_drained(lab, Duration::from_secs(15));
}

#[test]
fn datapath_offers_hand_fresh_connections_to_their_targets_nodes() {
    // The agents' default: datapath offers on.
    let mut lab = lab("dpo1", ServerKind::Nginx, None);
    spread_suite(&lab, "a", true);
    lab.down().expect("lab down");
}

#[test]
fn with_datapath_offers_off_the_agents_hand_off_instead() {
    let mut lab = lab("dpo2", ServerKind::Nginx, Some(false));
    spread_suite(&lab, "b", false);
    lab.down().expect("lab down");
}

#[test]
fn servers_that_defer_accept_take_datapath_offers() {
    // Debian's Apache (`AcceptFilter http data`) and nginx `listen ... deferred`: the replayed
    // SYN is answered, and the replayed data segment completes the handshake the server waits on.
    for (server, prefix) in [
        (ServerKind::Apache, "dpo3a"),
        (ServerKind::NginxDeferred, "dpo3n"),
    ] {
        assert!(server.defers_accept());
        let mut lab = lab(prefix, server, None);
        eprintln!("{server}:");
        spread_suite(&lab, "c", true);
        lab.down().expect("lab down");
    }
}

/// Ends every TIME_WAIT at the nodes. The lab's readiness probes leave the client's ports in
/// TIME_WAIT at each server; a port the client then uses toward n1 collides at the BE it is
/// offered to (refused, as it must be: the agents hand it off instead), which exact counts of
/// offers taken do not allow for.
fn end_time_waits(lab: &Lab) {
    for i in 1..=lab.nodes() {
        let out = lab
            .exec(&format!("n{i}"), &["ss", "-K", "-tn", "state", "time-wait"])
            .unwrap();
        assert!(out.status.success(), "ss -K at n{i}: {out:?}");
        let left = lab
            .exec(&format!("n{i}"), &["ss", "-Htn", "state", "time-wait"])
            .unwrap();
        let left = String::from_utf8_lossy(&left.stdout).lines().count();
        assert_eq!(left, 0, "TIME_WAITs left at n{i} after ss -K");
    }
}

/// The connections in SYN-RECV on node `i`'s service port.
fn half_open_at(lab: &Lab, i: usize) -> usize {
    let out = lab
        .exec(
            &format!("n{i}"),
            &["ss", "-Htan", "state", "syn-recv", "( sport = :80 )"],
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Targets of n2 (1 KB): half of them go to n1 once n2 is not chosen, half to n3. With the node
/// each goes to then.
fn targets_of_n2(salt: &str, each: usize) -> Vec<(String, usize)> {
    let all = targets("/f/1k", 2, 200, salt);
    let to_n1 = all.iter().filter(|t| node_without(t, 2) == 1).take(each);
    let to_n3 = all.iter().filter(|t| node_without(t, 2) == 3).take(each);
    let plan: Vec<(String, usize)> = to_n1
        .zip(to_n3)
        .flat_map(|(a, b)| [(a.clone(), 1), (b.clone(), 3)])
        .collect();
    assert_eq!(plan.len(), 2 * each);
    plan
}

/// Requests for `plan`'s targets in turn, one at a time with `pause` between them, for
/// `duration`: returns them all. Paced, so that the client does not come back to a port of a
/// connection a server still remembers (TIME_WAIT: a collision, which is another test's story).
fn requests_for(
    lab: &Lab,
    plan: &[(String, usize)],
    duration: Duration,
    pause: Duration,
) -> Vec<Got> {
    let addr = lab.node_http_addr(1);
    let list: Vec<String> = plan.iter().map(|(t, _)| t.clone()).collect();
    lab.in_client(move || {
        let start = Instant::now();
        let mut out = Vec::new();
        for target in list.iter().cycle() {
            if start.elapsed() >= duration {
                break;
            }
            out.push(get_one(addr, target, Duration::from_secs(10), start));
            std::thread::sleep(pause);
        }
        out
    })
    .expect("run in the client namespace")
}

/// Waits until what the lab's own start did (its readiness probes, handed off too) is over:
/// every handoff accepted on both sides, every offer taken or refused.
fn settle(lab: &Lab) {
    // The agents learn of datapath offers after the fact, at their next input or round (every
    // 250 ms): settled once the counts agree and stay put over two rounds.
    let sums = || {
        let c = Counts::take(lab);
        let sum = |name: &str| (1..=lab.nodes()).map(|i| c.get(i, name)).sum::<f64>();
        [HANDOFFS_OUT, HANDOFFS_IN, OFFERS, TAKEN, REFUSED].map(sum)
    };
    let settled = wait_until(Duration::from_secs(5), || {
        let before = sums();
        std::thread::sleep(Duration::from_millis(600));
        let [out, inn, offers, taken, refused] = sums();
        before == [out, inn, offers, taken, refused] && out == inn && offers == taken + refused
    });
    assert!(settled, "{}", report(lab, "the lab did not settle"));
}

/// n2's targets, handed off to n2 by datapath offers.
fn assert_n2_takes_offers(lab: &Lab, list: &[String], what: &str) {
    let before = Counts::take(lab);
    let got = fetch(lab, list, 1, Duration::from_secs(10));
    check(lab, &got, |_, by| by == 2, PROMPT, what);
    let n = list.len() as f64;
    let handed = wait_until(Duration::from_secs(2), || {
        delta(lab, &before, 1, HANDOFFS_OUT) >= n
    });
    let summary = format!(
        "{what}: {n} requests; n1 offers {}, handoffs out {}, n2 taken {}",
        delta(lab, &before, 1, OFFERS),
        delta(lab, &before, 1, HANDOFFS_OUT),
        delta(lab, &before, 2, TAKEN),
    );
    assert!(handed, "{}", report(lab, &summary));
    assert_eq!(
        delta(lab, &before, 1, OFFERS),
        n,
        "{}",
        report(lab, &summary)
    );
    assert_eq!(
        delta(lab, &before, 2, TAKEN),
        n,
        "{}",
        report(lab, &summary)
    );
}

/// Fetches `target` until n2 serves it, for up to `within`; every answer must be whole.
/// n2 serves again (`target`, within `within`), and is handed `list` by datapath offers.
fn n2_is_back(lab: &Lab, target: &str, list: &[String], within: Duration, what: &str) {
    until_n2_serves(lab, target, within, what);
    assert_n2_takes_offers(lab, list, what);
}

fn until_n2_serves(lab: &Lab, target: &str, within: Duration, what: &str) {
    let target = target.to_string();
    let back = wait_until(within, || {
        let got = fetch(
            lab,
            std::slice::from_ref(&target),
            1,
            Duration::from_secs(10),
        );
        check(lab, &got, |_, by| by != 0, PROMPT, what);
        served_by(&got[0]) == 2
    });
    assert!(
        back,
        "{}",
        report(
            lab,
            &format!("{what}: n2 not chosen again within {within:?}")
        )
    );
}

#[test]
fn a_node_without_a_listener_sends_the_offer_back_and_nothing_fails() {
    let mut lab = lab("dpo4", ServerKind::Nginx, None);
    let plan = targets_of_n2("gone", 4);
    let later: HashMap<String, usize> = plan.iter().cloned().collect();
    let list: Vec<String> = plan.iter().map(|(t, _)| t.clone()).collect();
    settle(&lab);
    assert_n2_takes_offers(&lab, &list, "before the stop");

    // n2's server goes, its agent stays: offers made before n1 learns come back refused (no
    // listener) and n1 serves them; then n2 is not chosen and its targets go where `hash` puts
    // them without it (n1 itself, or n3 by an offer). First a burst, one request for each
    // target at once (all of them offered to n2 before n1 can know), then one after another.
    let before = Counts::take(&lab);
    lab.stop_server(2).expect("stop n2's server");
    let window = LISTENER_NEWS + Duration::from_secs(1);
    let mut got = fetch(&lab, &list, list.len(), Duration::from_secs(10));
    let burst = got.len();
    got.extend(requests_for(&lab, &plan, window, Duration::from_millis(10)));
    check(
        &lab,
        &got,
        |g, by| {
            let after = later[&g.target];
            if g.sent >= LISTENER_NEWS {
                by == after
            } else {
                by == 1 || by == after
            }
        },
        PROMPT,
        "after n2's server stopped (by n1, or once n2 is not chosen by the target's node \
         without it)",
    );
    let refused = delta(&lab, &before, 2, REFUSED);
    let refused_elsewhere = delta(&lab, &before, 3, REFUSED);
    let returned = delta(&lab, &before, 1, RETURNED);
    let no_listener = delta(&lab, &before, 1, &fallback("refused_no_listener"));
    let fallbacks = delta(&lab, &before, 1, FALLBACKS);
    let local = delta(&lab, &before, 1, "baton_connections_local_total");
    let by_n1_for_n3 = got
        .iter()
        .filter(|g| later[&g.target] == 3 && served_by(g) == 1)
        .map(|g| format!("{:?}", g.sent))
        .collect::<Vec<_>>();
    let summary = format!(
        "{burst} requests at once then {} in {window:?}, by n1 {}, n3 {}; n3's targets served by n1 at {by_n1_for_n3:?}; \
         n2 refused {refused}, n3 refused {refused_elsewhere}, n1 had {returned} back; n1 \
         fallbacks refused_no_listener {no_listener}, all {fallbacks}; n1 connections_local {local}",
        got.len() - burst,
        got.iter().filter(|g| served_by(g) == 1).count(),
        got.iter().filter(|g| served_by(g) == 3).count(),
    );
    eprintln!("{summary}");
    assert!(
        refused >= 1.0 || no_listener >= 1.0,
        "{}",
        report(
            &lab,
            &format!("the first requests after the stop were refused: {summary}")
        )
    );
    assert_eq!(refused_elsewhere, 0.0, "{}", report(&lab, &summary));
    // Every refusal came back to n1 (a lossless link), and n1 served it.
    assert_eq!(returned, refused, "{}", report(&lab, &summary));

    // Its server back: n2 is chosen again within LISTENER_NEWS, by datapath offers.
    lab.restart_server(2).expect("restart n2's server");
    n2_is_back(&lab, &plan[0].0, &list, LISTENER_NEWS, "after the restart");
    assert_drained(&lab, Duration::from_secs(15));

    // n1 counted each of them as served here for want of a listener (`on_dp_returned`), and
    // nothing else fell back.
    assert_eq!(
        no_listener,
        refused,
        "{}",
        report(
            &lab,
            &format!(
                "n1's refused_no_listener fallbacks vs the offers n2 refused for want of a \
                 listener: {summary}"
            )
        )
    );
    assert_eq!(fallbacks, no_listener, "{}", report(&lab, &summary));
    lab.down().expect("lab down");
}

/// SIGCONTs a SIGSTOPped agent when dropped (also when a test fails while it is stopped).
struct Frozen(nix::unistd::Pid);

impl Frozen {
    fn freeze(pid: u32) -> Frozen {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP the agent");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

#[test]
fn a_node_whose_agent_is_gone_is_served_around_and_comes_back() {
    let mut lab = lab("dpo5", ServerKind::Nginx, None);
    let plan = targets_of_n2("agent", 3);
    let list: Vec<String> = plan.iter().map(|(t, _)| t.clone()).collect();
    settle(&lab);
    assert_n2_takes_offers(&lab, &list, "before the kill");

    // n2's agent dies; its datapath stays pinned and fails open. n1 sees its control
    // connection go; requests for n2's targets follow at once, and every one is answered,
    // promptly (by n1, or where `hash` puts them without n2).
    let before = Counts::take(&lab);
    lab.kill_agent(2).expect("kill n2's agent");
    let got = requests_for(
        &lab,
        &plan,
        Duration::from_secs(2),
        Duration::from_millis(10),
    );
    check(
        &lab,
        &got,
        |_, by| by != 0,
        PROMPT,
        "while n2's agent is dead",
    );
    let by = |got: &[Got], n: usize| got.iter().filter(|g| served_by(g) == n).count();
    eprintln!(
        "killed: {} requests, by n1 {}, n2 {}, n3 {}; slowest {:?}; n1 offers {}, returned {}, \
         fallbacks {}",
        got.len(),
        by(&got, 1),
        by(&got, 2),
        by(&got, 3),
        got.iter().map(|g| g.took).max().unwrap_or_default(),
        delta(&lab, &before, 1, OFFERS),
        delta(&lab, &before, 1, RETURNED),
        delta(&lab, &before, 1, FALLBACKS),
    );
    assert_eq!(
        metric(&lab, 1, "baton_mesh_peers_up"),
        1.0,
        "{}",
        report(&lab, "n1 sees n2 down")
    );
    // Back: its new agent adopts the datapath, n1 sees it up and offers it its targets again.
    lab.start_agent(2).expect("start n2's agent again");
    n2_is_back(
        &lab,
        &plan[0].0,
        &list,
        Duration::from_secs(3),
        "after the start",
    );

    // Now n2's agent stops without a word (SIGSTOP): its control connection stays open, its
    // datapath sees no heartbeat after half a second and refuses offers (overloaded), which n1
    // serves, until n1 finds n2 silent and stops choosing it. Every request is answered,
    // promptly.
    let before = Counts::take(&lab);
    let frozen = Frozen::freeze(lab.agent_pid(2).expect("n2's agent runs"));
    let got = requests_for(
        &lab,
        &plan,
        Duration::from_secs(3),
        Duration::from_millis(10),
    );
    let returned = delta(&lab, &before, 1, RETURNED);
    let overloaded = delta(&lab, &before, 1, &fallback("refused_overloaded"));
    let fallbacks = delta(&lab, &before, 1, FALLBACKS);
    let summary = format!(
        "stopped: {} requests, by n1 {}, n2 {}, n3 {}; slowest {:?}; n1 offers {}, returned \
         {returned}, fallbacks refused_overloaded {overloaded}, timeout {}, all {fallbacks}; \
         n1 sees {} peers up",
        got.len(),
        by(&got, 1),
        by(&got, 2),
        by(&got, 3),
        got.iter().map(|g| g.took).max().unwrap_or_default(),
        delta(&lab, &before, 1, OFFERS),
        delta(&lab, &before, 1, &fallback("timeout")),
        metric(&lab, 1, "baton_mesh_peers_up"),
    );
    eprintln!("{summary}");
    check(
        &lab,
        &got,
        |_, by| by != 0,
        PROMPT,
        "while n2's agent is stopped",
    );
    drop(frozen);
    let refused = delta(&lab, &before, 2, REFUSED);
    eprintln!("n2 refused {refused} while stopped");
    assert!(
        returned >= 1.0 && refused == returned,
        "{}",
        report(
            &lab,
            &format!("n2's datapath refused offers while its agent was stopped: {summary}")
        )
    );
    n2_is_back(
        &lab,
        &plan[0].0,
        &list,
        Duration::from_secs(3),
        "after SIGCONT",
    );
    assert_drained(&lab, Duration::from_secs(15));

    // n1 counted each refused offer as served here (`on_dp_returned`: refused_overloaded).
    assert_eq!(
        overloaded,
        returned,
        "{}",
        report(
            &lab,
            &format!("n1's refused_overloaded fallbacks vs the offers that came back: {summary}")
        )
    );
    lab.down().expect("lab down");
}

#[test]
fn datapath_offers_survive_a_lossy_client_link() {
    let mut lab = lab("dpo6", ServerKind::Nginx, None);
    // The client's link drops 3% of the HTTP segments both ways (SYNs, requests, ACKs and
    // responses alike): a lost request is retransmitted by the client and offered again.
    common::make_client_link_lossy(&lab);
    let (to_n2, to_n3) = (
        targets("/f/100k", 2, 50, "lossy"),
        targets("/f/100k", 3, 50, "lossy"),
    );
    let list: Vec<String> = to_n2
        .iter()
        .zip(&to_n3)
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect();
    settle(&lab);
    let before = Counts::take(&lab);
    let started = Instant::now();
    let got = fetch(&lab, &list, 4, Duration::from_secs(30));
    eprintln!(
        "100 downloads in {:?}, slowest {:?}",
        started.elapsed(),
        got.iter().map(|g| g.took).max().unwrap_or_default()
    );
    check(
        &lab,
        &got,
        |g, by| by == baton_lab::lab::node_hashed_for(&g.target, 3),
        Duration::from_secs(30),
        "across the lossy link",
    );
    let n = list.len() as f64;
    let handed = wait_until(Duration::from_secs(2), || {
        delta(&lab, &before, 1, HANDOFFS_OUT) >= n
    });
    let taken = delta(&lab, &before, 2, TAKEN) + delta(&lab, &before, 3, TAKEN);
    let summary = format!(
        "n1 offers {}, handoffs out {}, fallbacks {}, returned {}; taken {taken}, refused {}",
        delta(&lab, &before, 1, OFFERS),
        delta(&lab, &before, 1, HANDOFFS_OUT),
        delta(&lab, &before, 1, FALLBACKS),
        delta(&lab, &before, 1, RETURNED),
        delta(&lab, &before, 2, REFUSED) + delta(&lab, &before, 3, REFUSED),
    );
    eprintln!("{summary}");
    assert!(handed, "{}", report(&lab, &summary));
    assert_eq!(
        delta(&lab, &before, 1, OFFERS),
        n,
        "{}",
        report(&lab, &summary)
    );
    assert_eq!(taken, n, "{}", report(&lab, &summary));
    assert_eq!(
        delta(&lab, &before, 1, FALLBACKS),
        0.0,
        "{}",
        report(&lab, &summary)
    );
    lab.exec("client", &["nft", "delete table inet lossy"])
        .unwrap();
    assert_drained(&lab, Duration::from_secs(15));
    lab.down().expect("lab down");
}

#[test]
fn a_transfer_offered_while_the_bes_agent_stalls_is_not_cut() {
    // n2's agent stops without a word (SIGSTOP) just after a heartbeat of its datapath: for up
    // to half a second more its datapath takes offers, and its TCP answers at once, but no
    // agent tells n1 Accepted until it runs again. A 10 MB download offered to n2 in that
    // half second must still arrive whole: the client has n2's bytes, so the connection is
    // n2's, whatever n1's agent waits for.
    let mut lab = lab("dpo7", ServerKind::Nginx, None);
    settle(&lab);
    let target = targets("/f/10m", 2, 1, "stall").remove(0);
    let offers = metric(&lab, 1, OFFERS);
    let timeouts = metric(&lab, 1, &fallback("timeout"));
    let frozen = Frozen::freeze(lab.agent_pid(2).expect("n2's agent runs"));
    let download = baton_lab::download::paced_get_in_background(
        Some(&lab.client_ns()),
        lab.node_http_addr(1),
        &target,
        4_000_000,
        Duration::from_secs(20),
    )
    .expect("start a download");
    download.wait_for_bytes(8_000_000, Duration::from_secs(4));
    let summary = format!(
        "{} bytes after {:?}; n1 offered {}, fell back for a timeout {} times",
        download.received(),
        download.elapsed(),
        metric(&lab, 1, OFFERS) - offers,
        metric(&lab, 1, &fallback("timeout")) - timeouts,
    );
    drop(frozen);
    let d = download.join().expect("the download thread");
    let by = d
        .head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("x-served-by"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let summary = format!(
        "{summary}; the download: status {:?}, {} bytes, reset {}, timed out {}, after {:?}, \
         served by {by:?}",
        d.status, d.received, d.reset, d.timed_out, d.elapsed
    );
    eprintln!("{summary}");
    assert!(
        d.is_complete() && d.status == Some(200),
        "{}",
        report(&lab, &format!("the download was cut: {summary}"))
    );
    assert!(
        lab_file("/f/10m").is_some_and(|want| d.body == want),
        "{}",
        report(&lab, &format!("the bytes differ: {summary}"))
    );
    assert_drained(&lab, Duration::from_secs(15));
    lab.down().expect("lab down");
}

#[test]
fn an_offer_that_a_silent_time_wait_holds_is_refused_at_once() {
    // n2's TIME_WAIT for the client's port P (a direct connection n2's server closed first)
    // answers a replayed SYN older than what it saw (PAWS) with an ACK: a collision, n2
    // refuses the offer. The kernel sends such an ACK at most once in 500 ms per socket
    // (net.ipv4.tcp_invalid_ratelimit), so a second offer on that tuple within that time gets
    // no answer at all. It must be refused all the same, not left to its FE's handoff timeout
    // (a second here, and then the client's retransmission backoff).
    let mut lab = lab("dpo8", ServerKind::Nginx, None);
    settle(&lab);
    // Timestamps from one clock toward every node (no per-destination offset): the SYNs toward
    // n1 and n3, sent first, are older than what n2's TIME_WAIT saw last.
    let out = lab
        .exec("client", &["sysctl", "-qw", "net.ipv4.tcp_timestamps=2"])
        .expect("sysctl in the client");
    assert!(out.status.success(), "sysctl: {out:?}");
    let target = targets("/f/1k", 2, 1, "tw").remove(0);
    let before = Counts::take(&lab);
    let addrs = [1, 2, 3].map(|i| lab.node_http_addr(i));
    let request = format!("GET {target} HTTP/1.1\r\nHost: baton\r\nConnection: close\r\n\r\n");
    let got = lab
        .in_client(move || {
            let [n1, n2, n3] = addrs;
            let via_n1 = socket_on_port(0);
            let port = via_n1.local_addr().unwrap().as_socket().unwrap().port();
            via_n1.connect(&n1.into()).unwrap();
            let via_n3 = socket_on_port(port);
            via_n3.connect(&n3.into()).unwrap();
            std::thread::sleep(Duration::from_millis(20)); // a later timestamp for n2's
            let direct = socket_on_port(port);
            direct.connect(&n2.into()).unwrap();
            let direct = exchange_to_end(direct.into(), &request);
            std::thread::sleep(Duration::from_millis(20)); // the client's last ACK at n2
            // Both at once: the second offer meets the TIME_WAIT within 500 ms of the first.
            let (mut a, mut b): (std::net::TcpStream, std::net::TcpStream) =
                (via_n1.into(), via_n3.into());
            std::io::Write::write_all(&mut a, request.as_bytes()).unwrap();
            std::io::Write::write_all(&mut b, request.as_bytes()).unwrap();
            let start = Instant::now();
            let [a, b] = [a, b].map(|s| exchange_to_end(s, ""));
            (direct, a, b, start.elapsed())
        })
        .expect("run in the client namespace");
    let want = lab_file("/f/1k").expect("the lab's file");
    let (direct, via_n1, via_n3, took) = got;
    let timeouts: Vec<f64> = [1, 3]
        .map(|i| delta(&lab, &before, i, &fallback("timeout")))
        .into();
    let refused = delta(&lab, &before, 2, REFUSED);
    let by = |head: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix("X-Served-By: "))
            .unwrap_or(head)
            .to_string()
    };
    let summary = format!(
        "direct by {}, via n1 by {}, via n3 by {} (both in {took:?}); n2 refused {refused} \
         offers; timeout fallbacks at n1, n3: {timeouts:?}",
        by(&direct.0),
        by(&via_n1.0),
        by(&via_n3.0)
    );
    eprintln!("{summary}");
    for (what, (head, body)) in [("direct", direct), ("via n1", via_n1), ("via n3", via_n3)] {
        assert!(
            head.starts_with("HTTP/1.1 200") && body == want,
            "{}",
            report(&lab, &format!("{what} wrong: {summary}"))
        );
    }
    assert_eq!(
        timeouts,
        [0.0, 0.0],
        "{}",
        report(&lab, &format!("an offer waited for its timeout: {summary}"))
    );
    assert!(refused >= 2.0, "{}", report(&lab, &summary));
    lab.down().expect("lab down");
}

/// Sends `request` (if not empty) and reads until the server closes: (the head, the body).
fn exchange_to_end(mut s: std::net::TcpStream, request: &str) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut all = Vec::new();
    if let Err(e) = s.read_to_end(&mut all) {
        return (format!("read failed: {e}"), all);
    }
    match all.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => (
            String::from_utf8_lossy(&all[..end]).to_string(),
            all[end + 4..].to_vec(),
        ),
        None => (String::from_utf8_lossy(&all).to_string(), Vec::new()),
    }
}
