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
