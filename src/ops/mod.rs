//! Operations endpoints: what an operator, Prometheus or kubelet asks the node. Reads state,
//! changes nothing. Served on `--healthz-ip:--healthz-port`: `/healthz` (as flanneld) and
//! `/metrics` (Prometheus text format).

pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::dataplane::Counters;
use crate::table::SharedTable;

/// What the endpoints read.
#[derive(Debug, Clone)]
pub struct OpsState {
    /// The data path's counters.
    pub counters: Arc<Counters>,
    /// The published lease table.
    pub table: SharedTable,
}

fn respond(path: &str, state: &OpsState) -> (&'static str, &'static str, String) {
    match path {
        "/healthz" => ("200 OK", "text/plain", "weft is running\n".to_string()),
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4",
            metrics::render(&state.counters, state.table.load_full().len()),
        ),
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
    info!(%addr, "serving /healthz and /metrics");
    Ok(l)
}
