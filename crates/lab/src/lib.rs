//! The baton lab: a real cluster of network namespaces on one machine (docs/design.md §8), and the
//! small static file server it runs.
//!
//! - [`lab`]: [`Lab::up`] / [`Lab::down`] build and remove a named lab; [`LabSpec`] says what.
//! - [`netns`]: [`in_netns`] runs Rust code inside a namespace.
//! - [`http_client`]: a blocking keep-alive HTTP/1.1 client for tests and probes.
//! - [`download`]: a paced GET for tests of long transfers, that reports cut connections.
//! - [`content`]: the lab's web root, whose bytes are a pure function of the path.
//! - [`metrics`]: parsing the agents' Prometheus text.
//! - [`static_server`]: `baton serve-static`.
//! - [`demo`]: `baton lab demo`.
//! - [`prerequisites`]: what a lab needs of the machine, checked first.
//! - [`cli`]: `baton lab up|exec|agent|down|list|demo`.

pub mod cli;
pub mod content;
pub mod demo;
pub mod download;
pub mod error;
pub mod http_client;
pub mod lab;
pub mod loadgen;
pub mod metrics;
pub mod netns;
pub mod prerequisites;
pub mod static_server;

pub use content::{LAB_FILES, expected_sha256, file_content, lab_file, sha256_hex};
pub use download::{BackgroundDownload, Download, paced_get, paced_get_in_background};
pub use error::LabError;
pub use http_client::{HttpClient, HttpError, HttpResponse, http_get};
pub use lab::{Lab, LabSpec, ServerKind, TeardownReport};
pub use metrics::{metric_sum, parse_metrics};
pub use netns::in_netns;
