//! `/status` on the node's single-instance socket, so `weft status` finds the weft running
//! in its network namespace without being told a port.
//!
//! The socket is the abstract unix socket the node holds for as long as it runs
//! ([`crate::host::instance`]): one per etcd network per network namespace, so a client in the
//! same namespace reaches exactly that node, and nodes in other namespaces (tests, the demo)
//! never answer for it. The exchange is one-shot: on accept the node writes the HTTP status
//! code of its `/status` answer on the first line, then the body, and closes. The client
//! sends nothing.

use std::io::Read;
use std::os::linux::net::SocketAddrExt;
use std::time::Duration;

use hyper::Method;
use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::{route, OpsState};

/// How long a client waits for the whole answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

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
        let Ok((mut conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let reply = route(&Method::GET, "/status", &state);
        let text = format!("{}\n{}", reply.status.as_u16(), reply.body);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CLIENT_TIMEOUT, conn.write_all(text.as_bytes())).await;
        });
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
