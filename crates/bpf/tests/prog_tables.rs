//! Every packet table case through BPF_PROG_TEST_RUN: verdict, exact output bytes (checked
//! against `baton_wire` and for valid checksums), the conn entry afterwards, and the event.

#[test]
fn every_case_matches_its_table_row() {
    let mut runner =
        baton_bpf::cases::Runner::new().expect("load the datapath (needs root and eBPF)");
    let tables = baton_bpf::cases::tables();
    let mut failures = Vec::new();
    let mut count = 0;
    for table in &tables {
        assert!(!table.cases.is_empty(), "table {} is empty", table.name);
        for case in &table.cases {
            count += 1;
            match runner
                .run(case, 1)
                .and_then(|outcome| baton_bpf::cases::check(case, &outcome))
            {
                Ok(()) => {}
                Err(e) => failures.push(format!("{}/{}: {e}", table.name, case.name)),
            }
        }
    }
    assert!(count >= 30, "{count} cases");
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_full_table_lets_new_connections_pass_untracked() {
    // After a SYN flood fills the table, a new connection is not held: it passes to the local TCP
    // and is served there, instead of being dropped.
    let mut runner =
        baton_bpf::cases::Runner::new().expect("load the datapath (needs root and eBPF)");
    let cases = baton_bpf::cases::all();
    let syn = cases
        .iter()
        .find(|c| c.name == "fe_syn_creates_entry")
        .expect("the SYN case");
    runner.prepare(syn).unwrap();
    runner
        .fill_table(65536)
        .expect("fill the conn table to its max_entries");
    let outcome = runner.execute(syn, 1).unwrap();
    assert_eq!(outcome.verdict, baton_bpf::cases::TC_ACT_OK);
    assert_eq!(outcome.output, syn.input, "passed untouched");
    assert!(outcome.entry_after.is_none(), "no entry: the table is full");
}
