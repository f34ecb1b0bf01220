//! The committed object loads and passes the kernel verifier, and matches its C source.

use std::process::Command;

#[test]
fn object_passes_the_verifier() {
    let dp = baton_bpf::Datapath::load().expect("load baton.bpf.o (needs root and eBPF)");
    dp.program(baton_bpf::INGRESS_PROGRAM).unwrap();
    dp.program(baton_bpf::EGRESS_PROGRAM).unwrap();
}

#[test]
fn committed_object_matches_source() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/build-bpf.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg("--check")
        .output()
        .expect("run build-bpf.sh (needs clang)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
