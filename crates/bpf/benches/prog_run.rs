//! Per-packet cost of the datapath: every packet-table case run through BPF_PROG_TEST_RUN, each
//! sample on a fresh map setup and input (a repeated run would see its own rewritten packet and
//! take another path), printing the kernel-measured median and p99 per packet.
//! `cargo bench -p baton-bpf`; BATON_BENCH_SAMPLES sets the sample count (default 3000).

fn main() {
    let samples: usize = std::env::var("BATON_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut runner =
        baton_bpf::cases::Runner::new().expect("load the datapath (needs root and eBPF)");
    println!(
        "BPF_PROG_TEST_RUN, {samples} samples per case (each includes ~2 clock reads of overhead)"
    );
    println!("{:<52} {:>8} {:>8}", "case", "p50 ns", "p99 ns");
    for table in baton_bpf::cases::tables() {
        println!("{}", table.name);
        for case in table.cases {
            let mut ns = Vec::with_capacity(samples);
            for _ in 0..samples {
                match runner.run(&case, 1) {
                    Ok(outcome) => ns.push(outcome.duration.as_nanos() as u64),
                    Err(e) => {
                        println!("{:<52} error: {e}", case.name);
                        break;
                    }
                }
            }
            if ns.is_empty() {
                continue;
            }
            ns.sort_unstable();
            let pick = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize];
            println!("  {:<50} {:>8} {:>8}", case.name, pick(0.5), pick(0.99));
        }
    }
}
