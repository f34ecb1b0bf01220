//! The agents of one interface over time: the pinned datapath says which agent beat last (its
//! `agent` map), so a new agent can take over from it, and an operator can stop it or remove
//! everything.
//!
//! - **Takeover** ([`take_over`]): a previous agent that still runs is sent `SIGUSR2` (hand over:
//!   settle what is in flight, leave the datapath pinned, exit) and waited for; one that is gone
//!   is simply succeeded. Only a process that is a `baton node` of this network namespace is
//!   signalled, through a pidfd opened before it was checked.
//! - **Stop** ([`stop`]): `SIGTERM` to the running agent (drain, wait for the connections that
//!   need the datapath, remove it), and a wait for it to exit.
//! - **Cleanup** ([`cleanup`]): the running agent, if any, is killed, and every pin of the
//!   interface removed: links detach, maps are freed, connections that needed them are cut.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_bpf::datapath::{AgentMap, AgentRecord};
use baton_bpf::{AGENT_MAP, pins};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("reading this network namespace (stat /proc/thread-self/ns/net): {0}")]
    Netns(std::io::Error),
    #[error("mounting bpffs at /sys/fs/bpf: {0}")]
    Bpffs(std::io::Error),
    #[error("the previous agent's record in {path}: {source}")]
    Record {
        path: String,
        source: Box<baton_bpf::DatapathError>,
    },
    #[error("pidfd_open({pid}): {source}")]
    PidFd { pid: u32, source: std::io::Error },
    #[error("pidfd_send_signal({pid}, {signal}): {source}")]
    Signal {
        pid: u32,
        signal: &'static str,
        source: std::io::Error,
    },
    #[error("the previous agent (pid {pid}) did not exit within {waited:?} of being told to")]
    StillRunning { pid: u32, waited: Duration },
    #[error("removing the pins in {path}: {source}")]
    Remove {
        path: String,
        source: std::io::Error,
    },
}

/// The agent that last beat on a pinned datapath, if its process still runs and is a baton
/// agent of this network namespace (the pid may have been recycled meanwhile).
pub fn running_agent(pin_dir: &Path) -> Result<Option<RunningAgent>, LifecycleError> {
    let path = pin_dir.join(AGENT_MAP);
    if !path.exists() {
        return Ok(None);
    }
    let record: AgentRecord = AgentMap::from_pin(&path)
        .map_err(|source| LifecycleError::Record {
            path: path.display().to_string(),
            source: Box::new(source),
        })?
        .record();
    if record.pid == 0 || record.pid == std::process::id() {
        return Ok(None);
    }
    // The process is pinned down first (a pidfd names that process and no later one), then
    // checked: what is signalled is what was checked.
    let Ok(exit) = PidFd::open(record.pid) else {
        return Ok(None); // gone
    };
    if !is_agent(record.pid) || !in_our_netns(record.pid) {
        return Ok(None);
    }
    Ok(Some(RunningAgent {
        pid: record.pid,
        exit,
    }))
}

/// A running agent, held by a pidfd.
pub struct RunningAgent {
    pub pid: u32,
    exit: PidFd,
}

impl RunningAgent {
    /// Sends it `signal` (through its pidfd) and waits up to `wait` for it to exit.
    async fn signal_and_wait(
        self,
        signal: i32,
        name: &'static str,
        wait: Duration,
    ) -> Result<u32, LifecycleError> {
        self.exit.send(signal, name)?;
        self.exit.wait(wait).await?;
        Ok(self.pid)
    }
}

/// Whether `pid` lives in this process's network namespace (an agent of another node on this
/// machine has its own).
fn in_our_netns(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = |path: String| std::fs::metadata(path).map(|m| m.ino()).ok();
    let ours = ino("/proc/thread-self/ns/net".into());
    ours.is_some() && ino(format!("/proc/{pid}/ns/net")) == ours
}

/// Whether `pid` is a running `baton node` (a recycled pid may be anything).
fn is_agent(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|&b| b == 0);
    let exe_is_baton = args
        .next()
        .and_then(|a| std::str::from_utf8(a).ok())
        .is_some_and(|a| a.rsplit('/').next().is_some_and(|n| n.starts_with("baton")));
    exe_is_baton && args.any(|a| a == b"node")
}

/// Tells the previous agent of this pin directory, if one runs, to hand over, and waits up to
/// `wait` for it to exit. Returns its pid.
pub async fn take_over(pin_dir: &Path, wait: Duration) -> Result<Option<u32>, LifecycleError> {
    let Some(previous) = running_agent(pin_dir)? else {
        return Ok(None);
    };
    Ok(Some(
        previous
            .signal_and_wait(libc::SIGUSR2, "SIGUSR2", wait)
            .await?,
    ))
}

/// What [`stop`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// No agent ran.
    NotRunning,
    /// The agent (pid) drained and exited.
    Exited(u32),
}

/// Stops the agent of `interface` in this network namespace for good (SIGTERM) and waits up to
/// `wait` for it to exit: it drains first, and keeps the datapath until its last connection
/// that needs it closes (up to its `drain_timeout_ms`), then removes it.
pub async fn stop(interface: &str, wait: Duration) -> Result<Stopped, LifecycleError> {
    let dir = pin_dir(interface)?;
    let Some(agent) = running_agent(&dir)? else {
        return Ok(Stopped::NotRunning);
    };
    let pid = agent
        .signal_and_wait(libc::SIGTERM, "SIGTERM", wait)
        .await?;
    Ok(Stopped::Exited(pid))
}

/// What [`cleanup`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// The agent killed, if one ran.
    pub killed: Option<u32>,
    /// Pins removed, in these directories (this layout's and any other's).
    pub pins: usize,
    pub dirs: Vec<PathBuf>,
}

/// Removes everything of baton on `interface` in this network namespace at once: kills a running
/// agent (SIGKILL), removes the pins of every map layout (links detach, maps are freed).
pub async fn cleanup(interface: &str) -> Result<Cleaned, LifecycleError> {
    let dir = pin_dir(interface)?;
    let mut cleaned = Cleaned::default();
    if let Some(agent) = running_agent(&dir)? {
        let pid = agent
            .signal_and_wait(libc::SIGKILL, "SIGKILL", Duration::from_secs(5))
            .await?;
        cleaned.killed = Some(pid);
    }
    let netns = baton_bpf::current_netns_inum().map_err(LifecycleError::Netns)?;
    let mut dirs = vec![dir];
    dirs.extend(pins::other_layouts(netns, interface));
    for dir in dirs {
        let removed = pins::remove_dir(&dir).map_err(|source| LifecycleError::Remove {
            path: dir.display().to_string(),
            source,
        })?;
        if removed > 0 {
            cleaned.pins += removed;
            cleaned.dirs.push(dir);
        }
    }
    Ok(cleaned)
}

/// This build's pin directory for `interface` in this network namespace (bpffs mounted first).
pub fn pin_dir(interface: &str) -> Result<PathBuf, LifecycleError> {
    pins::ensure_bpffs().map_err(LifecycleError::Bpffs)?;
    let netns = baton_bpf::current_netns_inum().map_err(LifecycleError::Netns)?;
    Ok(pins::dir(netns, interface))
}

/// A process's exit, as a file descriptor that becomes readable when it happens (opened before
/// the signal, so a recycled pid cannot be mistaken for it).
struct PidFd {
    pid: u32,
    fd: OwnedFd,
}

impl PidFd {
    fn open(pid: u32) -> Result<Self, LifecycleError> {
        // SAFETY: pidfd_open(2) takes a pid and flags; the result is checked.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(LifecycleError::PidFd {
                pid,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(PidFd { pid, fd })
    }

    /// Sends `signal` to the process (pidfd_send_signal(2)).
    fn send(&self, signal: i32, name: &'static str) -> Result<(), LifecycleError> {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal(2) with our pidfd, no siginfo, no flags; the result is checked.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc != 0 {
            return Err(LifecycleError::Signal {
                pid: self.pid,
                signal: name,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    async fn wait(self, limit: Duration) -> Result<(), LifecycleError> {
        let started = Instant::now();
        // SAFETY: the AsyncFd owns the descriptor until it is dropped: it stays valid and is not
        // reused while registered.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self.fd, tokio::io::Interest::READABLE)
        }
        .map_err(|source| LifecycleError::PidFd {
            pid: self.pid,
            source: source.into(),
        })?;
        match tokio::time::timeout(limit, fd.readable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(LifecycleError::PidFd {
                pid: self.pid,
                source,
            }),
            Err(_) => Err(LifecycleError::StillRunning {
                pid: self.pid,
                waited: started.elapsed(),
            }),
        }
    }
}
