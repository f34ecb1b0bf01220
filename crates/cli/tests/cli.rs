//! The `baton` binary's edge, without a lab: `--version`, completions, the man page, how errors
//! and log lines are printed, and the sample configuration shipped in `packaging/`.

use std::process::{Command, Output};

const BATON: &str = env!("CARGO_BIN_EXE_baton");

fn baton(args: &[&str]) -> Output {
    Command::new(BATON)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run baton")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A valid configuration whose interface does not exist: `baton node` logs its start, then fails
/// at the attach without touching anything.
fn config_with_missing_interface() -> TempFile {
    TempFile::with_text(
        "missing-if.toml",
        r#"
[node]
name = "n1"
address = "198.18.0.1"
interface = "batonnone0"

[cluster]
key = "0123456789abcdef0123456789abcdef"
members = [{ name = "n1", address = "198.18.0.1" }]
"#,
    )
}

/// A file under the target directory, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn with_text(name: &str, text: &str) -> Self {
        // Tests run in parallel threads: the thread's name keeps their files apart.
        let thread = std::thread::current();
        let tag = thread.name().unwrap_or("main").replace("::", "-");
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{name}"));
        std::fs::write(&path, text).expect("write the test's config file");
        TempFile(path)
    }

    fn as_str(&self) -> &str {
        self.0.to_str().expect("a UTF-8 path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn version_names_the_commit() {
    let out = baton(&["--version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let expected = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    assert_eq!(
        text.trim(),
        format!("baton {} (commit {expected})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn completions_cover_the_commands() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef baton"),
        ("fish", "complete -c baton"),
    ] {
        let out = baton(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(script.contains(marker), "{shell} script lacks {marker:?}");
        for command in ["node", "lab", "cleanup", "log-format"] {
            assert!(script.contains(command), "{shell} script lacks {command}");
        }
    }
}

#[test]
fn man_page_is_roff_with_the_commands() {
    let out = baton(&["man"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = stdout(&out);
    assert!(page.contains(".TH baton 1"), "no title line:\n{page}");
    for word in ["node", "lab", "RUST_LOG", "log\\-format"] {
        assert!(page.contains(word), "the man page lacks {word}:\n{page}");
    }
}

#[test]
fn man_dir_writes_a_page_per_command() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("man-pages");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = baton(&["man", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for page in [
        "baton.1",
        "baton-node.1",
        "baton-node-stop.1",
        "baton-lab-demo.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH baton"), "{page}:\n{text}");
    }
    let demo = std::fs::read_to_string(dir.join("baton-lab-demo.1")).unwrap();
    assert!(demo.contains("name"), "{demo}");
}

#[test]
fn help_documents_rust_log() {
    for args in [&["--help"][..], &["node", "--help"][..]] {
        let out = baton(args);
        assert!(out.status.success());
        let help = stdout(&out);
        assert!(help.contains("RUST_LOG"), "{args:?}:\n{help}");
        assert!(help.contains("--log-format"), "{args:?}:\n{help}");
    }
}

#[test]
fn an_error_prints_each_cause_once() {
    let config = config_with_missing_interface();
    let out = baton(&["node", "--config", config.as_str()]);
    assert!(!out.status.success());
    let text = stderr(&out);
    let report: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("error: "))
        .collect();
    assert_eq!(report.first(), Some(&"error: baton node"), "{text}");
    assert_eq!(
        text.matches("No such device").count(),
        1,
        "a cause repeated:\n{text}"
    );
    assert!(
        report
            .iter()
            .any(|l| l.starts_with("  caused by: attaching to interface batonnone0")),
        "{text}"
    );
}

#[test]
fn logs_are_plain_text_off_a_terminal_and_json_on_request() {
    let config = config_with_missing_interface();
    let text = baton(&["node", "--config", config.as_str()]);
    let log = stderr(&text);
    assert!(log.contains("baton node starting"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes off a terminal:\n{log}"
    );

    let json = baton(&["node", "--log-format", "json", "--config", config.as_str()]);
    let log = stderr(&json);
    let first = log.lines().next().expect("a log line");
    let line: serde_json::Value = serde_json::from_str(first)
        .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {first}"));
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["fields"]["message"], "baton node starting", "{line}");
    assert_eq!(line["fields"]["config"], config.as_str(), "{line}");
}

#[test]
fn an_invalid_rust_log_is_an_error() {
    let out = Command::new(BATON)
        .args(["node", "cleanup", "--interface", "batonnone0"])
        .env("RUST_LOG", "info,[")
        .output()
        .expect("run baton");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("RUST_LOG=\"info,[\" does not parse"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn lab_demo_names_what_is_missing_before_building_anything() {
    // As nobody, with no `ip` on PATH: both are named, in the first line, and nothing is built.
    // By its path: PATH is emptied for the child.
    let out = Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BATON])
        .args(["lab", "demo", "--name", "tnoprereq"])
        .env("PATH", "/nonexistent")
        .output()
        .expect("run setpriv (util-linux)");
    let text = stderr(&out);
    assert!(!out.status.success(), "{text}");
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error: this machine lacks what the lab needs"),
        "{text}"
    );
    assert!(first.contains("root"), "{text}");
    assert!(first.contains("Debian package iproute2"), "{text}");
    assert!(text.contains("hint: baton needs root"), "{text}");
    assert!(
        !std::path::Path::new("/var/run/netns/baton-tnoprereq-n1").exists(),
        "a namespace was made"
    );
}

mod sample_config {
    //! `packaging/baton.toml`, installed as /etc/baton/baton.toml, against the agent's own parser:
    //! it parses, it names every field the agent reads, and the values it calls defaults are.

    use std::collections::BTreeSet;

    use baton_agent::config::{Limits, NodeConfig};
    use baton_policy::PolicyParams;

    const SAMPLE: &str = include_str!("../../../packaging/baton.toml");

    /// The sample with its optional settings (`#name = ...`, `#[[table]]`) uncommented.
    fn uncommented() -> String {
        SAMPLE
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest)
                    if rest
                        .starts_with(|c: char| c.is_ascii_lowercase() || c == '[' || c == '{') =>
                {
                    rest
                }
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every key path of a document: `limits.hold_ms`, `cluster.members[].name`, ...
    fn key_paths(value: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(table) => {
                for (key, value) in table {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    out.insert(path.clone());
                    key_paths(value, &path, out);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    key_paths(item, &format!("{prefix}[]"), out);
                }
            }
            _ => {}
        }
    }

    fn keys_of(text: &str) -> BTreeSet<String> {
        let value: serde_json::Value = toml::from_str(text).expect("TOML");
        let mut keys = BTreeSet::new();
        key_paths(&value, "", &mut keys);
        keys
    }

    #[test]
    fn the_sample_is_a_valid_configuration_as_shipped_and_with_every_option() {
        let shipped = NodeConfig::from_toml(SAMPLE).expect("packaging/baton.toml as shipped");
        assert!(shipped.policy.rules.is_empty() && shipped.policy.affinity_cookie.is_none());
        let full = NodeConfig::from_toml(&uncommented())
            .expect("packaging/baton.toml with its optional settings uncommented");
        assert_eq!(full.policy.rules.len(), 3);
        assert_eq!(full.cluster.members.len(), 4);
        assert_eq!(full.health.path.as_deref(), Some("/healthz"));
        assert_eq!(full.policy.affinity_cookie.as_deref(), Some("SRV"));
    }

    #[test]
    fn the_sample_names_every_field_of_the_configuration() {
        let full = NodeConfig::from_toml(&uncommented()).expect("the uncommented sample");
        // Serializing writes every field the agent has, defaults included, and unset options as
        // null (JSON has null, TOML has not): a field added to the configuration and not to the
        // sample shows up here.
        let mut fields = BTreeSet::new();
        key_paths(
            &serde_json::to_value(&full).expect("the configuration serializes"),
            "",
            &mut fields,
        );
        let sample = keys_of(&uncommented());
        let undocumented: Vec<_> = fields.difference(&sample).collect();
        assert!(
            undocumented.is_empty(),
            "fields missing from packaging/baton.toml: {undocumented:?}"
        );
        // And each one has a comment: the line above every `name = value` is a comment or another
        // setting of the same group.
        let lines: Vec<&str> = SAMPLE.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let setting = line.trim_start_matches('#');
            let is_setting = setting.contains(" = ") && !line.starts_with("# ");
            if is_setting && i > 0 {
                let above = lines[i - 1];
                assert!(
                    above.starts_with('#') || above.contains(" = "),
                    "no comment above {line:?}"
                );
            }
        }
    }

    #[test]
    fn the_values_the_sample_calls_defaults_are_the_defaults() {
        let shipped = NodeConfig::from_toml(SAMPLE).expect("packaging/baton.toml");
        assert_eq!(shipped.limits, Limits::default());
        assert_eq!(shipped.policy.params, PolicyParams::default());
        assert_eq!(shipped.policy.kind, baton_policy::PolicyKind::default());
        assert_eq!(
            shipped.health,
            baton_agent::config::HealthSection::default()
        );
        let minimal = NodeConfig::from_toml(
            r#"
[node]
name = "n1"
address = "192.0.2.1"
interface = "eth0"
[cluster]
key = "0123456789abcdef"
members = [{ name = "n1", address = "192.0.2.1" }]
"#,
        )
        .expect("a minimal configuration");
        assert_eq!(shipped.cluster.service_ports, minimal.cluster.service_ports);
        assert_eq!(shipped.cluster.control_port, minimal.cluster.control_port);
        assert_eq!(shipped.node.control_socket, minimal.node.control_socket);
    }
}

mod metrics_reference {
    //! docs/metrics.md lists exactly the metrics the agent exports.

    use std::collections::BTreeSet;

    const REFERENCE: &str = include_str!("../../../docs/metrics.md");

    /// The metric names of the agent's registry, as a scrape shows them.
    fn exported() -> BTreeSet<String> {
        let metrics = baton_agent::metrics::Metrics::new();
        // A labelled family shows in a scrape once it has a child.
        for family in [
            &metrics.fallbacks,
            &metrics.refused,
            &metrics.mesh_rejected,
            &metrics.dropped,
            &metrics.rehandoff_fallbacks,
        ] {
            family.count("any");
        }
        let peer = &metrics.peer;
        peer.up.with_label_values(&["n2"]).set(1);
        peer.load.with_label_values(&["n2"]).set(1);
        peer.rtt.with_label_values(&["n2"]).set(0.001);
        for family in [&peer.handoffs_to, &peer.handoffs_from, &peer.refusals] {
            family.with_label_values(&["n2"]).inc();
        }
        let (text, _) = metrics.encode();
        String::from_utf8(text)
            .expect("UTF-8 exposition")
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .map(|rest| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    /// The names in the first column of the reference's tables.
    fn documented() -> BTreeSet<String> {
        REFERENCE
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split('`').next())
            .filter(|name| name.starts_with("baton_"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_exported_metric_is_documented_and_nothing_else() {
        let (exported, documented) = (exported(), documented());
        assert!(exported.len() > 20, "{exported:?}");
        let undocumented: Vec<_> = exported.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&exported).collect();
        assert!(
            undocumented.is_empty() && stale.is_empty(),
            "docs/metrics.md lacks {undocumented:?} and lists {stale:?}, which the agent does not export"
        );
    }
}
