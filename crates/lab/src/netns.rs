//! Network namespaces: running Rust code and processes inside them, and the `ip` command.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use nix::sched::CloneFlags;

use crate::error::LabError;

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// The file that names network namespace `ns`.
pub fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(ns)
}

/// Whether the named network namespace exists.
pub fn netns_exists(ns: &str) -> bool {
    netns_path(ns).exists()
}

/// The named network namespaces whose names start with `prefix`, sorted.
pub fn list_netns(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(NETNS_DIR) {
        Ok(dir) => dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn open_netns(ns: &str) -> Result<File, LabError> {
    let path = netns_path(ns);
    File::open(&path).map_err(|source| {
        LabError::io(
            format!("opening network namespace {}", path.display()),
            source,
        )
    })
}

/// Runs `f` on a fresh thread that has entered network namespace `ns` (`setns(CLONE_NEWNET)`),
/// and returns its result. Sockets that `f` creates belong to `ns` (and stay there if returned).
/// A panic in `f` is resumed on the calling thread.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
    let file = open_netns(ns)?;
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| {
                LabError::Netns {
                    ns: ns.to_string(),
                    source,
                }
            })?;
            drop(file);
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Makes `cmd` enter network namespace `ns` between fork and exec, and, if `new_session`, start a
/// new session (a daemon: no controlling terminal, its own process group). The returned file must be
/// kept open until `cmd` has been spawned.
pub(crate) fn enter_netns_before_exec(
    cmd: &mut Command,
    ns: &str,
    new_session: bool,
) -> Result<File, LabError> {
    let file = open_netns(ns)?;
    let fd = file.as_raw_fd();
    // SAFETY: the closure only makes async-signal-safe system calls (setns, setsid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if new_session && libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(file)
}

/// `cmd` as a shell-like string, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion with captured output; a non-zero exit is a [`LabError::Command`] that
/// names the command and carries its stderr.
pub(crate) fn run_checked(cmd: &mut Command) -> Result<Output, LabError> {
    let out = cmd.output().map_err(|source| LabError::Spawn {
        cmd: describe(cmd),
        source,
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: describe(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// Runs `ip ARGS...`, failing with the command and its stderr.
pub fn ip(args: &[&str]) -> Result<(), LabError> {
    run_checked(Command::new("ip").args(args)).map(|_| ())
}

/// The (device, inode) identity of a network namespace file or `/proc/PID/ns/net`.
pub(crate) fn ns_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Processes whose network namespace is one of `namespaces` (by identity), except this process.
pub(crate) fn pids_in_namespaces(namespaces: &[(u64, u64)]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = proc_dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|&pid| pid != me)
        .filter(|pid| {
            ns_identity(&PathBuf::from(format!("/proc/{pid}/ns/net")))
                .is_some_and(|id| namespaces.contains(&id))
        })
        .collect();
    pids.sort();
    pids
}

/// Whether process `pid` is still running (exists and is not a zombie).
pub(crate) fn process_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state is the first field after the command name, which is in parentheses.
    match stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
    {
        Some(state) => state != "Z" && state != "X",
        None => false,
    }
}
