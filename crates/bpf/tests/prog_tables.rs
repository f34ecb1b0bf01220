//! Every packet table case through BPF_PROG_TEST_RUN: verdict, exact output bytes (checked
//! against `baton_wire` and for valid checksums), the conn entry afterwards, and the event.

#[test]
fn every_case_matches_its_table_row() {
    let mut runner =
        baton_bpf::cases::Runner::new().expect("load the datapath (needs root and eBPF)");
    let cases = baton_bpf::cases::all();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for case in &cases {
        match runner
            .run(case, 1)
            .and_then(|outcome| baton_bpf::cases::check(case, &outcome))
        {
            Ok(()) => {}
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
