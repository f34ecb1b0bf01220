//! Every packet table case through BPF_PROG_TEST_RUN: verdict, exact output bytes (checked
//! against `baton_wire` and for valid checksums), the conn entry afterwards, and the event.

#[test]
fn every_case_matches_its_table_row() {
    // In a network namespace of its own: what a case sends back in through ingress (a RST for
    // our own TCP, a datapath offer's copy) reaches no socket of the host's.
    std::thread::spawn(every_case_in_this_thread)
        .join()
        .expect("every case matches its row");
}

fn every_case_in_this_thread() {
    baton_bpf::cases::own_network_namespace().expect("a network namespace of its own");
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

#[test]
fn a_listening_be_takes_datapath_offers() {
    // The tables' offers find no listener; these need one, and their clones really leave the
    // program. In a network namespace of their own (the thread's), so that no case of another
    // test finds the listener and nothing reaches the host's network, with its loopback up: the
    // clones go out of and into the interface of the run, loopback.
    std::thread::spawn(|| {
        baton_bpf::cases::own_network_namespace().expect("a network namespace of its own");
        let _listener = std::net::TcpListener::bind(("0.0.0.0", baton_bpf::cases::SERVICE_PORT))
            .expect("listen on the service port");
        let mut runner =
            baton_bpf::cases::Runner::new().expect("load the datapath (needs root and eBPF)");
        let table = baton_bpf::cases::listening_be();
        let failures: Vec<String> = table
            .cases
            .iter()
            .filter_map(|case| {
                let outcome = runner.run(case, 1);
                let checked = outcome.and_then(|o| baton_bpf::cases::check(case, &o));
                checked
                    .err()
                    .map(|e| format!("{}/{}: {e}", table.name, case.name))
            })
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
    .join()
    .expect("every case matches its row");
}
