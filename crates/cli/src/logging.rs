//! Where `baton`'s log lines go and how they look.
//!
//! Contract: every log line goes to stderr, as text (colour only when stderr is a terminal, so
//! journald and log files get plain text) or as one JSON object per line. `RUST_LOG` selects what
//! is logged, in `tracing_subscriber::EnvFilter` syntax; unset, it is `info`. A `RUST_LOG` that does
//! not parse is an error, not silently replaced by the default.

use std::io::IsTerminal;

use anyhow::Context;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// The help text on logging, shown by `baton --help` and `baton node --help`.
pub const HELP: &str = "\
Logging: to stderr, at level info unless RUST_LOG says otherwise (tracing's EnvFilter syntax: \
RUST_LOG=debug, RUST_LOG=info,baton_agent::mesh=debug, RUST_LOG=warn). Colour only when stderr \
is a terminal. --log-format json writes one JSON object per line.";

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields), for log collectors.
    Json,
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env()
        .with_context(|| {
            let value = std::env::var("RUST_LOG").unwrap_or_default();
            format!("RUST_LOG={value:?} does not parse as a tracing filter")
        })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}
