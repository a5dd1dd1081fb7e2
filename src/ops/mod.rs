//! Operations endpoints: what an operator, Prometheus or kubelet asks the node. Reads state,
//! changes nothing. Served on `--healthz-ip:--healthz-port`: `/healthz` (alive, as flanneld),
//! `/readyz` (ready to carry traffic, 503 with the reasons otherwise), `/metrics`
//! (Prometheus text format) and `/status` (JSON for `weft status`). Also systemd's
//! readiness notification.

pub mod metrics;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::dataplane::Counters;
use crate::table::SharedTable;

pub use status::NodeStatus;

/// What the endpoints read: the data path's counters, the lease table and the node's status
/// (published by the node once a second).
#[derive(Debug, Clone)]
pub struct OpsState {
    /// The data path's counters.
    pub counters: Arc<Counters>,
    /// The published lease table.
    pub table: SharedTable,
    /// The node's latest status, `None` until the node is up.
    pub status: Arc<ArcSwapOption<NodeStatus>>,
    /// When each current lease was first seen (for its age), kept by the node.
    pub peer_seen:
        Arc<std::sync::Mutex<std::collections::HashMap<crate::wire::Subnet, std::time::Instant>>>,
}

fn respond(path: &str, state: &OpsState) -> (&'static str, &'static str, String) {
    let status = state.status.load_full();
    match path {
        "/healthz" => ("200 OK", "text/plain", "weft is running\n".to_string()),
        "/readyz" => match status.as_deref().map(NodeStatus::not_ready) {
            Some(reasons) if reasons.is_empty() => ("200 OK", "text/plain", "ready\n".into()),
            Some(reasons) => (
                "503 Service Unavailable",
                "text/plain",
                reasons.join("\n") + "\n",
            ),
            None => (
                "503 Service Unavailable",
                "text/plain",
                "starting: no lease yet\n".into(),
            ),
        },
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4",
            metrics::render(&state.counters, &state.table.load_full(), status.as_deref()),
        ),
        "/status" => match status.as_deref() {
            Some(s) => (
                "200 OK",
                "application/json",
                s.to_json(
                    &state.table.load_full(),
                    &state.counters,
                    &state.peer_seen.lock().unwrap_or_else(|e| e.into_inner()),
                ),
            ),
            None => (
                "503 Service Unavailable",
                "text/plain",
                "starting: no lease yet\n".into(),
            ),
        },
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    }
}

/// Serves the endpoints until the task is dropped.
pub async fn serve(listener: TcpListener, state: OpsState) {
    loop {
        let (mut conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "ops accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let (status, ctype, body) = respond(path, &state);
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        });
    }
}

/// Binds the ops listener; logs where it serves.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = TcpListener::bind(addr).await?;
    info!(%addr, "serving /healthz, /readyz, /metrics and /status");
    Ok(l)
}

/// Tells systemd (Type=notify) about the service's state, when `NOTIFY_SOCKET` is set:
/// `READY=1` once ready, `STOPPING=1` on the way out. Errors are logged, never fatal.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let sock = UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(std::path::Path::new(&path))?,
        };
        sock.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    })();
    if let Err(e) = sent {
        warn!(error = %e, "sd_notify failed");
    }
}
