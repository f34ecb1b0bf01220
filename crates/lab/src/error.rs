//! The lab's error type: every variant names what failed (the command, the file, the namespace).

use std::path::PathBuf;

use crate::http_client::HttpError;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("invalid lab name {0:?}: use 1 to 10 characters from [a-z0-9]")]
    InvalidName(String),
    #[error("invalid lab spec: {0}")]
    InvalidSpec(String),
    #[error(
        "lab {name:?} already exists ({detail}); remove it with `baton lab down --name {name}`"
    )]
    Exists { name: String, detail: String },
    #[error("lab {0:?} does not exist (no namespaces baton-{0}-*)")]
    NotFound(String),
    #[error(
        "lab {name:?} has no host {host:?} (hosts: client, sw, n1..nN, origin in a cache lab, and the namespace must exist)"
    )]
    UnknownHost { name: String, host: String },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("starting `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {ns} (setns): {source}")]
    Netns {
        ns: String,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("{what} not ready: {reason}\n--- last lines of {} ---\n{tail}", log.display())]
    NotReady {
        what: String,
        reason: String,
        log: PathBuf,
        tail: String,
    },
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("agent configuration for {node}: {source}")]
    Config {
        node: String,
        #[source]
        source: baton_agent::config::ConfigError,
    },
    #[error("this machine lacks what the lab needs: {}", .0.join("; "))]
    Prerequisites(Vec<String>),
    #[error("tearing down lab {name:?}: {}", problems.join("; "))]
    Teardown { name: String, problems: Vec<String> },
}

impl LabError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            what: what.into(),
            source,
        }
    }
}
