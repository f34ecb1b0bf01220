//! The agent's local control socket, what `baton ctl` talks to.
//!
//! A unix stream socket (`node.control_socket`, default `/run/baton/baton.sock`), mode 0600 (its
//! directory, if the agent creates it, 0700), and a peer-credential check: only root (or the agent's own user) may
//! use it. One request per connection: the client writes one JSON [`Request`] line, the agent
//! answers one JSON [`Reply`] line and closes. [`serve`] passes each request to the event loop as
//! a [`CtlCall`], so the engine, the one owner of connection state, answers from its own state;
//! [`call`] is the client side.
//!
//! The types are the wire format: `baton ctl -o json` prints them as they come, and fields are
//! only ever added.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddrV4;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

/// Longest request line accepted.
const MAX_REQUEST_BYTES: u64 = 4096;
/// How long a client may take to send its request, and `call` to get its answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What `baton ctl` asks (also its subcommands).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Subcommand)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// The node: policy, state, health, load, configuration digest, and its peers.
    Status,
    /// Every distributed connection (handed out or handed in): client, FE, BE, phase, age,
    /// traffic.
    Conns,
    /// The peers: state, load, control RTT, last heard, configuration agreement.
    Peers,
    /// The node's server takes nothing new (peers choose it for nothing, what it accepts goes to
    /// a peer); it serves what it has (not a stop).
    Drain,
    /// Peers may choose this node again.
    Undrain,
    /// Read the configuration file again and apply it (as SIGHUP does); a bad one is refused
    /// and the running one kept.
    Reload,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    Status(Box<Status>),
    Conns {
        conns: Vec<ConnRow>,
    },
    Peers {
        peers: Vec<PeerRow>,
    },
    /// A command was carried out; what it did.
    Done {
        message: String,
    },
    /// A command was refused; why. Nothing changed.
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub address: std::net::Ipv4Addr,
    pub interface: String,
    pub pid: u32,
    pub version: String,
    pub policy: String,
    pub uptime_s: u64,
    /// `running`, `drained` (by the operator), `stopping` (draining to stop) or `handing-over`.
    pub state: String,
    /// The local server listens on every service port and passes its health check.
    pub serving: bool,
    /// The listener is there; the HTTP check's verdict (`None` without a check).
    pub listening: bool,
    pub healthy: Option<bool>,
    /// The digest of the cluster configuration (members, ports, policy), hex.
    pub config_digest: String,
    /// The configuration file that `reload` reads, if the agent was started from one.
    pub config_file: Option<PathBuf>,
    /// Active connections this node serves (what it reports to its peers).
    pub load: u32,
    /// Connections held or offered (not yet placed), handed out and open, handed in and open.
    pub held: usize,
    pub handed_out: usize,
    pub handed_in: usize,
    pub peers: Vec<PeerRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRow {
    pub name: String,
    pub address: std::net::Ipv4Addr,
    /// `self`, `up`, `down` (not heard or no control connection), `drained`, `stopping` or
    /// `not-serving` (its server's listener is gone or it fails its health check).
    pub state: String,
    /// Its load as last reported.
    pub load: u32,
    /// The smoothed round-trip time of the control connection to it (the kernel's TCP_INFO).
    pub rtt_us: Option<u32>,
    /// Milliseconds since it was last heard from.
    pub last_heard_ms: Option<u64>,
    /// Its cluster configuration digest (hex), once it told, and whether it is ours.
    pub config_digest: Option<String>,
    pub config_agrees: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnRow {
    pub client: SocketAddrV4,
    /// The node that accepted the connection (FE) and the one whose server has it (BE).
    pub fe: String,
    pub be: String,
    /// `out` (this node handed it out: its datapath forwards the client's packets) or `in`
    /// (handed in: its datapath translates for its server).
    pub direction: String,
    /// `offered`, `replaying`, `live`, `closing`, `closed`.
    pub phase: String,
    pub age_ms: u64,
    /// Since the datapath last saw a packet of it.
    pub idle_ms: u64,
    /// Out: packets and bytes forwarded from the client. In: packets from the client, and bytes
    /// the server sent to the client.
    pub packets: u64,
    pub bytes: u64,
    pub handoff_id: u64,
}

/// One request from the control socket, for the event loop to answer.
pub struct CtlCall {
    pub request: Request,
    pub reply: oneshot::Sender<Reply>,
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("creating the control socket's directory {path} (mkdir): {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another agent answers on the control socket {0}: is this node's agent running twice?")]
    InUse(PathBuf),
    #[error("node.control_socket {0} exists and is not a socket: refusing to replace it")]
    NotASocket(PathBuf),
    #[error("bind({path}) for the control socket: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("chmod({path}) of the control socket: {source}")]
    Chmod {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "connect({path}): {source}{hint}",
        hint = if source.kind() == std::io::ErrorKind::NotFound
            || source.kind() == std::io::ErrorKind::ConnectionRefused
        {
            " (is the agent running? its socket is node.control_socket in its configuration)"
        } else if source.kind() == std::io::ErrorKind::PermissionDenied {
            " (the control socket is root's)"
        } else {
            ""
        }
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the agent on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent's answer on {path} is not a reply: {source}")]
    Answer {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Binds the control socket at `path` and answers on it until `shutdown`: each request goes to
/// the event loop on `calls`. A socket file left by an agent that is gone is replaced; one that
/// still answers is an error (two agents of one node).
pub fn serve(
    path: &Path,
    calls: mpsc::Sender<CtlCall>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), CtlError> {
    let listener = bind(path)?;
    tokio::spawn(accept_loop(listener, path.to_path_buf(), calls, shutdown));
    Ok(())
}

fn bind(path: &Path) -> Result<UnixListener, CtlError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|source| CtlError::Directory {
            path: dir.to_path_buf(),
            source,
        })?;
        // Only root (the agent's user) goes through.
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            // Never remove what is not a socket (a mistyped path could name the config file).
            return Err(CtlError::NotASocket(path.to_path_buf()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(CtlError::InUse(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| CtlError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        CtlError::Chmod {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

async fn accept_loop(
    listener: UnixListener,
    path: PathBuf,
    calls: mpsc::Sender<CtlCall>,
    mut shutdown: watch::Receiver<bool>,
) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own_uid = unsafe { libc::geteuid() };
    loop {
        let stream = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("accept on the control socket: {e}");
                    continue;
                }
            },
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == 0 || cred.uid() == own_uid => {}
            Ok(cred) => {
                tracing::warn!(
                    uid = cred.uid(),
                    "control socket: refused a user that is not root"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!("control socket: reading the peer's credentials: {e}");
                continue;
            }
        }
        tokio::spawn(answer(stream, calls.clone()));
    }
    // Ours, unless a newer agent replaced it (it binds only after we exit).
    let _ = std::fs::remove_file(&path);
}

/// Reads one request from `stream`, has the event loop answer it, writes the answer.
async fn answer(stream: UnixStream, calls: mpsc::Sender<CtlCall>) {
    use tokio::io::AsyncReadExt;
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST_BYTES));
    let read = tokio::time::timeout(CALL_TIMEOUT, reader.read_line(&mut line)).await;
    let reply = match read {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if calls.send(CtlCall { request, reply: tx }).await.is_err() {
                    Reply::Error {
                        message: "the agent is stopping".into(),
                    }
                } else {
                    rx.await.unwrap_or(Reply::Error {
                        message: "the agent is stopping".into(),
                    })
                }
            }
            Err(e) => Reply::Error {
                message: format!("not a request: {e}"),
            },
        },
        Ok(Err(e)) => Reply::Error {
            message: format!("reading the request: {e}"),
        },
        Err(_) => return,
    };
    let mut text = serde_json::to_string(&reply)
        .unwrap_or_else(|e| format!(r#"{{"reply":"error","message":"encoding the answer: {e}"}}"#));
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}

/// Sends `request` to the agent whose control socket is `path` and returns its reply (blocking:
/// the `baton ctl` client has nothing else to do).
pub fn call(path: &Path, request: &Request) -> Result<Reply, CtlError> {
    let io = |source| CtlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| CtlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    stream.set_read_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
    let mut text = serde_json::to_string(request).expect("a request always encodes");
    text.push('\n');
    stream.write_all(text.as_bytes()).map_err(io)?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(io)?;
    serde_json::from_str(line.trim()).map_err(|source| CtlError::Answer {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_as_json() {
        for request in [
            Request::Status,
            Request::Conns,
            Request::Peers,
            Request::Drain,
            Request::Undrain,
            Request::Reload,
        ] {
            let text = serde_json::to_string(&request).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        }
        assert_eq!(
            serde_json::to_string(&Request::Undrain).unwrap(),
            r#"{"command":"undrain"}"#
        );
        let reply = Reply::Conns {
            conns: vec![ConnRow {
                client: "198.18.1.1:40000".parse().unwrap(),
                fe: "n1".into(),
                be: "n2".into(),
                direction: "out".into(),
                phase: "live".into(),
                age_ms: 5,
                idle_ms: 1,
                packets: 3,
                bytes: 200,
                handoff_id: 7,
            }],
        };
        let text = serde_json::to_string(&reply).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), reply);
    }

    #[tokio::test]
    async fn a_request_reaches_the_event_loop_and_its_answer_the_client() {
        let dir = std::env::temp_dir().join(format!("baton-ctl-test-{}", std::process::id()));
        let path = dir.join("sub").join("ctl.sock");
        let (calls_tx, mut calls) = mpsc::channel(4);
        let (_stop_tx, stop) = watch::channel(false);
        serve(&path, calls_tx.clone(), stop.clone()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only root may use the socket");
        // A second agent on the same socket is refused while the first answers.
        assert!(matches!(
            serve(&path, calls_tx.clone(), stop.clone()),
            Err(CtlError::InUse(_))
        ));
        // A path that is not a socket is never replaced.
        let file = dir.join("not-a-socket");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(matches!(
            serve(&file, calls_tx, stop),
            Err(CtlError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        let loop_side = tokio::spawn(async move {
            let call = calls.recv().await.unwrap();
            assert_eq!(call.request, Request::Drain);
            call.reply
                .send(Reply::Done {
                    message: "drained".into(),
                })
                .unwrap();
        });
        let client_path = path.clone();
        let reply = tokio::task::spawn_blocking(move || call(&client_path, &Request::Drain))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            reply,
            Reply::Done {
                message: "drained".into()
            }
        );
        loop_side.await.unwrap();
        // Junk gets an error reply, not silence.
        let mut raw = std::os::unix::net::UnixStream::connect(&path).unwrap();
        raw.write_all(b"{\"command\":\"explode\"}\n").unwrap();
        let mut line = String::new();
        let join = tokio::task::spawn_blocking(move || {
            BufReader::new(raw).read_line(&mut line).unwrap();
            line
        });
        let line = join.await.unwrap();
        assert!(
            matches!(
                serde_json::from_str::<Reply>(&line).unwrap(),
                Reply::Error { .. }
            ),
            "{line}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
