//! `baton sim` as a standalone program, until the `baton` binary wires it in:
//! `cargo run --release -p baton-sim --example sim -- --help`.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "sim",
    about = "Simulate request distribution policies on a web cluster"
)]
struct Command {
    #[command(flatten)]
    args: baton_sim::cli::SimArgs,
}

fn main() -> anyhow::Result<()> {
    baton_sim::cli::run(Command::parse().args)
}
