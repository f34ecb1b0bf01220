//! The `sim` command as the `baton` binary will expose it: options parsed by clap, then `run`.

use std::path::PathBuf;

use baton_policy::PolicyKind;
use baton_sim::ClientModel;
use baton_sim::cli::{SimArgs, run};
use clap::Parser;

#[derive(Parser)]
struct Command {
    #[command(flatten)]
    args: SimArgs,
}

fn parse(args: &[&str]) -> Result<SimArgs, clap::Error> {
    Command::try_parse_from(std::iter::once("sim").chain(args.iter().copied())).map(|c| c.args)
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("baton-sim-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn defaults_are_the_documented_ones() {
    let args = parse(&[]).unwrap();
    assert_eq!(args.workload, "synthetic");
    assert_eq!(args.requests, 1_000_000);
    assert_eq!(args.nodes, [1, 2, 4, 8, 16]);
    assert_eq!(
        args.policies,
        [
            PolicyKind::RoundRobin,
            PolicyKind::LeastConn,
            PolicyKind::Hash,
            PolicyKind::BoundedHash,
            PolicyKind::Lard,
            PolicyKind::LardR
        ]
    );
    assert_eq!(args.plot, PathBuf::from("sim.png"));
    assert_eq!(args.client_model(), ClientModel::ClosedPerNode(64));
    assert_eq!(args.policy_params(), baton_policy::PolicyParams::default());
    assert_eq!(args.cost_model().unwrap(), baton_sim::CostModel::default());
}

#[test]
fn a_cache_tier_cost_model_is_chosen_by_its_origin_delay() {
    let args = parse(&[
        "--origin-delay-ms",
        "20",
        "--cpu-us-per-request",
        "150",
        "--handoff-us",
        "40",
    ])
    .unwrap();
    assert_eq!(
        args.cost_model().unwrap(),
        baton_sim::CostModel::cache_tier(20_000_000, 150_000, 40_000)
    );
    assert!(
        parse(&["--handoff-us", "40"]).is_err(),
        "only with an origin"
    );
    let negative = parse(&["--origin-delay-ms=-1"]).unwrap();
    assert!(negative.cost_model().is_err());
}

#[test]
fn options_parse_and_bad_ones_are_refused() {
    let args = parse(&[
        "--nodes",
        "2,4",
        "--policies",
        "lard,hash",
        "--clients",
        "10",
        "--lard-high",
        "40",
    ])
    .unwrap();
    assert_eq!(args.nodes, [2, 4]);
    assert_eq!(args.policies, [PolicyKind::Lard, PolicyKind::Hash]);
    assert_eq!(args.client_model(), ClientModel::ClosedTotal(10));
    assert_eq!(args.policy_params().lard_high, 40);
    let open = parse(&["--rate", "500"]).unwrap();
    assert_eq!(
        open.client_model(),
        ClientModel::Open {
            requests_per_second: 500.0
        }
    );
    assert!(parse(&["--policies", "lard,fastest"]).is_err());
    assert!(parse(&["--nodes", "two"]).is_err());
    assert!(parse(&["--clients", "5", "--rate", "5"]).is_err());
    assert!(parse(&["--warmup-percent", "100"]).is_err());
}

#[test]
fn run_writes_png_and_csv_for_a_synthetic_sweep() {
    let dir = scratch("png");
    let (plot, csv) = (dir.join("sim.png"), dir.join("sim.csv"));
    let mut args = parse(&[
        "--requests",
        "20000",
        "--files",
        "400",
        "--cache-mb",
        "1",
        "--nodes",
        "1,2,4",
        "--policies",
        "round-robin,lard-r",
        "--clients-per-node",
        "8",
    ])
    .unwrap();
    args.plot = plot.clone();
    args.out = Some(csv.clone());
    run(args).unwrap();
    let png = std::fs::read(&plot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let csv = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 6);
    assert!(rows[0].starts_with("round-robin,1,8,18000,"));
    assert!(rows[5].starts_with("lard-r,4,32,18000,"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn run_replays_a_common_log_format_file_and_writes_svg() {
    let dir = scratch("log");
    let log = dir.join("access.log");
    let mut text = String::new();
    for i in 0..3000 {
        let path = format!("/page{}.html", (i * 7) % 50);
        text.push_str(&format!(
            "10.0.0.{} - - [01/Jul/1995:00:00:{:02} -0400] \"GET {path} HTTP/1.0\" 200 {}\n",
            i % 200,
            i % 60,
            1000 + (i * 7) % 50 * 300
        ));
        if i % 100 == 0 {
            text.push_str("garbage line\n");
        }
    }
    std::fs::write(&log, text).unwrap();
    let plot = dir.join("sim.svg");
    let mut args = parse(&["--nodes", "1,2", "--policies", "hash,local"]).unwrap();
    args.workload = log.display().to_string();
    args.plot = plot.clone();
    let workload = args.workload().unwrap();
    assert_eq!(workload.requests.len(), 3000);
    assert_eq!(workload.files.len(), 50);
    run(args).unwrap();
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg"));
    assert!(svg.contains("hash") && svg.contains("local"));

    let mut missing = parse(&[]).unwrap();
    missing.workload = dir.join("nope.log").display().to_string();
    assert!(run(missing).is_err());
    std::fs::remove_dir_all(dir).unwrap();
}
