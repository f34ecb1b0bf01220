//! How `baton` reports the error it exits with.
//!
//! Contract: the error and its causes are printed top down, each cause once: the libraries'
//! errors already embed their source in their own message (`attaching to interface eth9: program
//! baton_ingress: No such device`), so a cause whose text is contained in a line already printed
//! adds nothing and is left out. When the failure is one of privileges (EPERM or EACCES anywhere in
//! the chain, or a privileged command run by a user other than root) a hint names what baton needs;
//! so does one when a kernel filesystem baton needs is not mounted.

use std::fmt::Write as _;

/// What `baton node` needs, and why; the same list as `packaging/baton.service` and
/// `docs/operations.md`.
pub const PRIVILEGES: &str = "baton needs root, or the capabilities CAP_BPF and CAP_PERFMON (load \
the eBPF programs and maps, the TCP state tracepoint), CAP_NET_ADMIN (TCX links, sock_diag's \
SOCK_DESTROY), CAP_NET_RAW (the raw socket that replays packets) and CAP_SYS_ADMIN (only to mount \
bpffs at /sys/fs/bpf when it is not mounted); the lab also creates network namespaces (root)";

/// Causes that name a missing prerequisite, and what to do about it.
const PREREQUISITE_HINTS: &[(&str, &str)] = &[(
    "tracefs not found",
    "the TCP state tracepoint needs tracefs: mount -t tracefs tracefs /sys/kernel/tracing \
     (`ip netns exec` remounts /sys without it; enter a namespace with `nsenter --net=...`)",
)];

/// The lines to print for `error`: the error, then every cause not already said.
pub fn lines(error: &anyhow::Error) -> Vec<String> {
    let mut printed: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.is_empty() || printed.iter().any(|line| line.contains(&text)) {
            continue;
        }
        printed.push(text);
    }
    printed
}

/// Whether anything in `error`'s chain is a refusal for want of privileges.
pub fn is_permission_error(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let io = cause.downcast_ref::<std::io::Error>();
        if io.is_some_and(|io| {
            matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
                || io.kind() == std::io::ErrorKind::PermissionDenied
        }) {
            return true;
        }
        // Errors that carry an errno in their text only (nix's `EPERM: ...`, formatted sources).
        let text = cause.to_string();
        [
            "Operation not permitted",
            "Permission denied",
            "EPERM",
            "EACCES",
        ]
        .iter()
        .any(|needle| text.contains(needle))
    })
}

/// The whole report: `error: ...`, `  caused by: ...` lines, and the privileges hint when it
/// applies. `privileged_command_as_user`: the command needs privileges and the effective user is
/// not root.
pub fn render(error: &anyhow::Error, privileged_command_as_user: bool) -> String {
    let mut out = String::new();
    for (i, line) in lines(error).iter().enumerate() {
        let label = if i == 0 { "error" } else { "  caused by" };
        let _ = writeln!(out, "{label}: {line}");
    }
    if privileged_command_as_user || is_permission_error(error) {
        let _ = writeln!(out, "hint: {PRIVILEGES}");
    }
    for (cause, hint) in PREREQUISITE_HINTS {
        if error.chain().any(|c| c.to_string().contains(cause)) {
            let _ = writeln!(out, "hint: {hint}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Program {
        #[error("program {name}: {source}")]
        Attach {
            name: &'static str,
            source: std::io::Error,
        },
    }

    #[derive(Debug, thiserror::Error)]
    #[error("attaching to interface {interface}: {source}")]
    struct Attach {
        interface: &'static str,
        source: Program,
    }

    fn attach_error(errno: i32) -> anyhow::Error {
        anyhow::Error::new(Attach {
            interface: "eth9",
            source: Program::Attach {
                name: "baton_ingress",
                source: std::io::Error::from_raw_os_error(errno),
            },
        })
        .context("baton node")
    }

    #[test]
    fn each_cause_is_printed_once() {
        let lines = lines(&attach_error(libc::ENODEV));
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert_eq!(lines[0], "baton node");
        assert!(
            lines[1]
                .starts_with("attaching to interface eth9: program baton_ingress: No such device"),
            "{lines:#?}"
        );
    }

    #[test]
    fn a_cause_that_adds_something_is_kept() {
        let error = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOENT))
            .context("reading /etc/baton/baton.toml");
        assert_eq!(
            lines(&error),
            vec![
                "reading /etc/baton/baton.toml".to_string(),
                "No such file or directory (os error 2)".to_string()
            ]
        );
    }

    #[test]
    fn permission_errors_get_the_privileges_hint() {
        let denied = render(&attach_error(libc::EPERM), false);
        assert!(denied.contains("hint: baton needs root"), "{denied}");
        assert!(denied.contains("CAP_BPF"), "{denied}");
        assert_eq!(
            denied.matches("Operation not permitted").count(),
            1,
            "{denied}"
        );
        let no_device = render(&attach_error(libc::ENODEV), false);
        assert!(!no_device.contains("hint:"), "{no_device}");
        let as_user = render(&attach_error(libc::ENODEV), true);
        assert!(as_user.contains("hint: baton needs root"), "{as_user}");
    }

    #[test]
    fn a_missing_tracefs_gets_its_hint() {
        let error =
            anyhow::anyhow!("program baton_tcp_state: tracefs not found").context("baton node");
        assert!(render(&error, false).contains("hint: the TCP state tracepoint needs tracefs"));
    }

    #[test]
    fn errno_only_in_the_text_counts() {
        let error = anyhow::anyhow!(
            "map baton_conns (bpf(BPF_MAP_CREATE)): EPERM: Operation not permitted"
        );
        assert!(is_permission_error(&error));
        assert!(!is_permission_error(&anyhow::anyhow!("No such device")));
    }
}
