//! End to end: `baton bench cache` on a small cache lab runs every variant without an error,
//! prints every column (the warm-up's requests not counted), and shows the effect it exists to show: with a connection per request,
//! URI hashing (`hash`) hits the caches more than `round-robin` does; and it draws its plot.
//! Needs root, nginx, haproxy.

use std::process::Command;

const BATON: &str = env!("CARGO_BIN_EXE_baton");

#[test]
fn a_short_cache_bench_runs_every_variant_and_hashing_hits_more_than_round_robin() {
    let name = baton_lab::lab::unique_name("bnch");
    let csv = std::env::temp_dir().join(format!("{name}.csv"));
    let plot = std::env::temp_dir().join(format!("{name}.svg"));
    let out = Command::new(BATON)
        .args(["bench", "cache", "--name", &name])
        .args([
            "--objects",
            "400",
            "--requests",
            "2000",
            "--warmup",
            "1000",
            "--connections",
            "8",
        ])
        .args([
            "--k",
            "1,10",
            "--origin-delay-ms",
            "5",
            "--max-seconds",
            "120",
        ])
        .arg("--csv")
        .arg(&csv)
        .arg("--plot")
        .arg(&plot)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run baton bench cache");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for column in [
        "req/s",
        "x rr",
        "sim x rr",
        "x proxy",
        "hit %",
        "sim hit%",
        "origin",
        "p50 ms",
        "p99 ms",
        "cpu us/r",
        "host us/r",
        "acc KB",
        "wire KB",
        "drops",
        "errors",
    ] {
        assert!(stdout.contains(column), "no column {column:?}:\n{stdout}");
    }
    let svg = std::fs::read_to_string(&plot).expect("the plot");
    let _ = std::fs::remove_file(&plot);
    for label in ["local K=1", "haproxy-every K=10", "requests/s", "hit ratio"] {
        assert!(svg.contains(label), "no {label:?} in the plot");
    }
    let text = std::fs::read_to_string(&csv).expect("the CSV");
    let _ = std::fs::remove_file(&csv);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 16, "8 variants x 2 values of K:\n{text}");
    for row in &rows {
        assert_eq!(row[col("errors")], "0", "errors in {row:?}");
        // The warm-up's requests are not counted.
        assert_eq!(row[col("requests")], "2000", "requests in {row:?}");
    }
    let hits = |variant: &str| -> f64 {
        rows.iter()
            .find(|r| r[col("variant")] == variant && r[col("k")] == "1")
            .unwrap_or_else(|| panic!("no {variant} row"))[col("hit_percent")]
        .parse()
        .unwrap()
    };
    // The simulator's prediction for every baton variant at K = 1, none for the proxies or K > 1;
    // round-robin against itself is 1.
    for row in &rows {
        let baton = !row[col("variant")].starts_with("haproxy");
        let predicted = row[col("sim_x_rr")];
        assert_eq!(
            !predicted.is_empty(),
            baton && row[col("k")] == "1",
            "sim_x_rr in {row:?}"
        );
        if row[col("variant")] == "round-robin" && row[col("k")] == "1" {
            assert_eq!(predicted, "1.000");
        }
    }
    assert!(
        hits("hash") > hits("round-robin"),
        "hash {} % vs round-robin {} %:\n{stdout}",
        hits("hash"),
        hits("round-robin")
    );
    assert!(
        baton_lab::lab::list_labs().iter().all(|l| *l != name),
        "the bench removes its lab"
    );
}
