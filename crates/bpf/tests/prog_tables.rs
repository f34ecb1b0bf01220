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

#[test]
fn bounded_loads_decide_as_the_agents_policy() {
    // The datapath's bounded-load decision for many targets and loads, against the agent's
    // `BoundedHash` with the same view: released here (member 0) or offered to the member whose
    // address the offer goes to.
    std::thread::spawn(|| {
        baton_bpf::cases::own_network_namespace().expect("a network namespace of its own");
        let mut runner =
            baton_bpf::cases::Runner::new().expect("load the datapath (needs root and eBPF)");
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below) as u32
        };
        let mut differences = Vec::new();
        let mut chosen = [0usize; baton_bpf::cases::BOUNDED_MEMBERS_MAX];
        for i in 0..400 {
            let members = 2 + (i % 3);
            let loads: Vec<u32> = (0..members).map(|_| next(12)).collect();
            let target = format!("/o/{}", next(1_000_000));
            let want = baton_bpf::cases::bounded_choice(&target, &loads);
            let case = baton_bpf::cases::bounded_decision(&target, &loads);
            let outcome = runner.run(&case, 1).expect("run");
            let got = match outcome.verdict {
                baton_bpf::cases::TC_ACT_OK if outcome.entry_after.is_none() => Some(0),
                baton_bpf::cases::TC_ACT_REDIRECT => outcome
                    .output
                    .get(14 + 16..14 + 20)
                    .map(|dst| usize::from(dst[3]) - 1),
                _ => None,
            };
            if got != Some(want) {
                differences.push(format!("{target} loads {loads:?}: {got:?}, want {want}"));
            }
            chosen[want] += 1;
        }
        assert!(
            differences.is_empty(),
            "{} of 400 differ:\n{}",
            differences.len(),
            differences.join("\n")
        );
        // The loads moved targets off their ring members, to every member.
        assert!(chosen.iter().all(|&n| n > 0), "{chosen:?}");
    })
    .join()
    .expect("the datapath decides as the agent");
}
