//! `/status` on the node's single-instance socket, so `weft status` finds the weft running
//! in its network namespace without being told a port.
//!
//! The socket is the abstract unix socket the node holds for as long as it runs
//! ([`crate::host::instance`]): one per etcd network per network namespace, so a client in the
//! same namespace reaches exactly that node, and nodes in other namespaces (tests, the demo)
//! never answer for it. The client sends one line, `status` (clients before this one sent
//! nothing; the node answers them after [`FIRST_LINE_WAIT`]): the node writes the HTTP status
//! code of its `/status` answer on the first line, then the body, and closes. A process
//! taking over from the node sends `takeover <protocol>` instead, and the connection goes to
//! the node's handover ([`crate::node::takeover`]).

use std::io::Read;
use std::os::linux::net::SocketAddrExt;
use std::time::Duration;

use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use super::{route, OpsState};

/// How long a client waits for the whole answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the node waits for a client's first line before answering with the status.
pub const FIRST_LINE_WAIT: Duration = Duration::from_millis(300);

/// Why the running node could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum LocalStatusError {
    /// Nothing holds the socket: no weft of this network runs in this namespace.
    #[error("weft is not running in this network namespace (nothing holds @{0}); start it, or pass --etcd-prefix if it runs another network")]
    NotRunning(String),
    /// The socket exists but the exchange failed.
    #[error("asking the node on @{name}")]
    Io {
        /// The abstract socket name.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The node answered, but not 200 (it is still starting, say).
    #[error("the node answered {code}: {body}")]
    Status {
        /// The HTTP status code.
        code: u16,
        /// Its text.
        body: String,
    },
}

/// Serves `/status` on `listener` (the instance socket) until the task is dropped.
pub async fn serve(listener: std::os::unix::net::UnixListener, state: OpsState) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => return debug!(error = %e, "no local status socket"),
    };
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move { answer(conn, state).await });
    }
}

/// Reads the client's first line (bounded in time and length) and answers it.
async fn answer(mut conn: tokio::net::UnixStream, state: OpsState) {
    let mut line = Vec::new();
    let read = tokio::time::timeout(FIRST_LINE_WAIT, async {
        let mut b = [0u8; 1];
        while line.len() < 64 {
            match conn.read(&mut b).await {
                Ok(1) if b[0] != b'\n' => line.push(b[0]),
                _ => break,
            }
        }
    })
    .await;
    let _ = read;
    let line = String::from_utf8_lossy(&line).into_owned();
    if let Some(protocol) = crate::node::takeover::parse_hello(&line) {
        return hand_to_node(conn, protocol, &state);
    }
    let reply = route(&Method::GET, "/status", &state);
    let text = format!("{}\n{}", reply.status.as_u16(), reply.body);
    let _ = tokio::time::timeout(CLIENT_TIMEOUT, conn.write_all(text.as_bytes())).await;
}

/// A takeover request: to the node, if it speaks the protocol and is up to hand over.
fn hand_to_node(conn: tokio::net::UnixStream, protocol: u32, state: &OpsState) {
    use crate::node::takeover::{refuse, PROTOCOL};
    let Ok(conn) = conn
        .into_std()
        .and_then(|c| c.set_nonblocking(false).map(|()| c))
    else {
        return;
    };
    // Abstract sockets carry no permissions: any process in the namespace can connect. Only
    // this node's own user may take its devices (a TUN queue reads every pod's traffic).
    let peer = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials);
    let me = nix::unistd::geteuid().as_raw();
    match peer {
        Ok(c) if c.uid() == me => {}
        Ok(c) => {
            tracing::warn!(
                uid = c.uid(),
                pid = c.pid(),
                "takeover asked by another user; refused"
            );
            return refuse(&conn, &format!("only uid {me} may take this node over"));
        }
        Err(e) => return refuse(&conn, &format!("reading the caller's credentials: {e}")),
    }
    if protocol != PROTOCOL {
        return refuse(
            &conn,
            &format!("it speaks takeover protocol {PROTOCOL}, the new process {protocol}: stop it, then start the new one"),
        );
    }
    let tx = state
        .takeover
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match tx {
        Some(tx) => {
            if let Err(e) = tx.try_send(conn) {
                let conn = match e {
                    tokio::sync::mpsc::error::TrySendError::Full(c)
                    | tokio::sync::mpsc::error::TrySendError::Closed(c) => c,
                };
                refuse(&conn, "another takeover is under way");
            }
        }
        None => refuse(
            &conn,
            "it is not up yet (starting or stopping); try again when it forwards",
        ),
    }
}

/// Asks the weft holding the abstract socket `name` in this network namespace for its
/// `/status` document (JSON).
pub fn fetch(name: &str) -> Result<String, LocalStatusError> {
    let io = |source| LocalStatusError::Io {
        name: name.to_string(),
        source,
    };
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(io)?;
    let mut conn = match std::os::unix::net::UnixStream::connect_addr(&addr) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(LocalStatusError::NotRunning(name.to_string()))
        }
        Err(e) => return Err(io(e)),
    };
    conn.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    // Older nodes write at once and ignore this line; newer ones read it.
    std::io::Write::write_all(&mut conn, b"status\n").map_err(io)?;
    let mut text = String::new();
    conn.read_to_string(&mut text).map_err(io)?;
    let (code, body) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    match code.trim().parse::<u16>() {
        Ok(200) => Ok(body.to_string()),
        Ok(code) => Err(LocalStatusError::Status {
            code,
            body: body.trim().to_string(),
        }),
        Err(_) => Err(LocalStatusError::Status {
            code: 0,
            body: text.trim().to_string(),
        }),
    }
}
