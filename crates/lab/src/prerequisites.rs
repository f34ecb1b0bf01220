//! What a lab needs of the machine, checked before anything is built.
//!
//! Contract: [`check`] looks at this machine once ([`Facts::of_this_machine`]) and returns
//! [`LabError::Prerequisites`] naming everything missing at once (with the Debian package that
//! provides it), so `baton lab demo` and `baton lab up` fail in their first line rather than deep
//! inside namespace setup or the agent's attach. [`missing`] is the pure rule, on given facts.

use std::path::Path;

use crate::error::LabError;
use crate::lab::{APACHE, NGINX, ServerKind};

/// The oldest kernel with TCX links (`BPF_TCX_INGRESS`/`EGRESS`), which the datapath attaches by.
pub const MIN_KERNEL: (u32, u32) = (6, 6);

/// What the checks observed of a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The effective user is root (namespaces, eBPF, bpffs).
    pub root: bool,
    /// `/proc/sys/kernel/osrelease`, e.g. `6.12.38+deb13-amd64`.
    pub kernel_release: String,
    /// `ip` (iproute2) is on `PATH`.
    pub ip: bool,
    /// Debian's nginx binary is installed.
    pub nginx: bool,
    /// Debian's Apache binary is installed.
    pub apache: bool,
    /// The kernel's BTF (`/sys/kernel/btf/vmlinux`), for the TCP state tracepoint.
    pub btf: bool,
    /// tracefs is mounted in this mount namespace (the tracepoint is attached through it).
    pub tracefs: bool,
}

impl Facts {
    pub fn of_this_machine() -> Facts {
        Facts {
            // SAFETY: geteuid(2) has no preconditions and cannot fail.
            root: unsafe { libc::geteuid() } == 0,
            kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            ip: on_path("ip"),
            nginx: Path::new(NGINX).exists(),
            apache: Path::new(APACHE).exists(),
            btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
            // From the mount table, which anyone may read (/sys/kernel/tracing is root's only).
            tracefs: std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
                mounts
                    .lines()
                    .any(|line| line.split_whitespace().nth(2) == Some("tracefs"))
            }),
        }
    }
}

/// Whether an executable named `command` is in a directory of `$PATH`.
fn on_path(command: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(command))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// `major.minor` of a kernel release string (`6.12.38+deb13-amd64` -> `(6, 12)`).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// What is missing for a lab of `server` nodes, with agents or not, each as one sentence.
pub fn missing(facts: &Facts, server: ServerKind, agents: bool) -> Vec<String> {
    let mut missing = Vec::new();
    if !facts.root {
        missing.push("root: the lab creates network namespaces and loads eBPF programs".into());
    }
    if !facts.ip {
        missing.push("the `ip` command (Debian package iproute2)".into());
    }
    match server {
        ServerKind::Nginx | ServerKind::NginxDeferred | ServerKind::Cache if !facts.nginx => {
            missing.push(format!("{NGINX} (Debian package nginx-light)"))
        }
        ServerKind::Apache if !facts.apache => {
            missing.push(format!("{APACHE} (Debian package apache2)"))
        }
        _ => {}
    }
    if agents {
        match kernel_version(&facts.kernel_release) {
            Some(version) if version >= MIN_KERNEL => {}
            _ => missing.push(format!(
                "Linux {}.{} or later for TCX links (this kernel: {:?})",
                MIN_KERNEL.0, MIN_KERNEL.1, facts.kernel_release
            )),
        }
        if !facts.btf {
            missing.push("kernel BTF at /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)".into());
        }
        if !facts.tracefs {
            missing.push(
                "tracefs at /sys/kernel/tracing (mount -t tracefs tracefs /sys/kernel/tracing)"
                    .into(),
            );
        }
    }
    missing
}

/// Fails with everything missing on this machine for a lab of `server` nodes (with agents or not).
pub fn check(server: ServerKind, agents: bool) -> Result<(), LabError> {
    let missing = missing(&Facts::of_this_machine(), server, agents);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LabError::Prerequisites(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete() -> Facts {
        Facts {
            root: true,
            kernel_release: "6.12.38+deb13-amd64".into(),
            ip: true,
            nginx: true,
            apache: true,
            btf: true,
            tracefs: true,
        }
    }

    #[test]
    fn a_complete_machine_lacks_nothing() {
        for server in ServerKind::ALL {
            assert_eq!(missing(&complete(), server, true), Vec::<String>::new());
        }
    }

    #[test]
    fn everything_missing_is_named_with_its_package() {
        let bare = Facts {
            root: false,
            kernel_release: "6.1.0-28-amd64".into(),
            ip: false,
            nginx: false,
            apache: false,
            btf: false,
            tracefs: false,
        };
        let nginx = missing(&bare, ServerKind::Nginx, true);
        assert_eq!(nginx.len(), 6, "{nginx:#?}");
        for word in [
            "root",
            "iproute2",
            "nginx-light",
            "6.6",
            "6.1.0-28-amd64",
            "BTF",
            "tracefs",
        ] {
            assert!(nginx.iter().any(|m| m.contains(word)), "{word}: {nginx:#?}");
        }
        let apache = missing(&bare, ServerKind::Apache, true);
        assert!(apache.iter().any(|m| m.contains("apache2")), "{apache:#?}");
        assert!(!apache.iter().any(|m| m.contains("nginx")), "{apache:#?}");
        // The static server is baton itself; without agents the kernel does not matter.
        assert_eq!(missing(&bare, ServerKind::Static, false).len(), 2);
    }

    #[test]
    fn kernel_versions_compare_by_major_and_minor() {
        assert_eq!(kernel_version("6.12.38+deb13-amd64"), Some((6, 12)));
        assert_eq!(kernel_version("6.6"), Some((6, 6)));
        assert_eq!(kernel_version("garbage"), None);
        let old = Facts {
            kernel_release: "6.5.13".into(),
            ..complete()
        };
        assert_eq!(missing(&old, ServerKind::Static, true).len(), 1);
        let new = Facts {
            kernel_release: "7.0.1".into(),
            ..complete()
        };
        assert!(missing(&new, ServerKind::Static, true).is_empty());
    }
}
